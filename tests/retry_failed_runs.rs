//! Retry-failed runs and their reports, each test once a bug found by review
//! (it failed before its fix): a line resolved beyond the position, a retry
//! halted by its failures, a halted run with workers, a retry that leaves
//! input never run (`each --retry-failed` after it: tests/each.rs), over a
//! stream too, and a stop while it reads on.

mod common;

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Input, failed_lines, serial};
use linemark::{Checkpoint, Event, FailedLine, Line, RetryPolicy, Runner, StopToken, permanent};

/// Line numbers of the failed lines the checkpoint records.
fn failed_numbers(checkpoint: &std::path::Path) -> Vec<u64> {
    failed_lines(checkpoint).iter().map(|f| f.line()).collect()
}

/// A line that failed beyond the position (a stopped run with several
/// workers) and succeeds in a retry-failed run is finished: a later plain
/// run must skip it, and its result must be in the output once.
///
/// Sequence: 6 lines, 2 workers, an output. Line 1 holds until the stop
/// and then fails an attempt (left unrecorded: the position stays at 0);
/// line 2 fails for good, which fires the stop: line 2 is a `failed`
/// record beyond the position. A `retry_failed` run succeeds on line 2
/// (appending its result). A plain run then goes through the input.
///
/// Observed: the plain run runs line 2 again, and its result is in the
/// output twice.
/// Expected: line 2 is finished ("resolved line=N: line N, failed before,
/// is now finished", Checkpoint docs; outputs get each line's results
/// "exactly once each, even across crashes and reruns", `Runner::output`):
/// the plain run skips it.
///
/// Likely cause: `Checkpoint::commit_resolved` (src/checkpoint/failures.rs)
/// for a line beyond the position only removes it from `state.failed`
/// (and `State::apply` of `Record::Resolved`, src/checkpoint/format.rs,
/// likewise); nothing records it as done beyond the position, so
/// `RunState::triage` (src/runner/drive.rs) finds it unrecorded and runs it.
#[test]
fn a_line_resolved_beyond_the_position_is_not_run_again_by_a_plain_run() {
    let _serial = serial();
    let input = Input::generated(6);
    let checkpoint = input.sibling("job.checkpoint");
    let output = input.sibling("results.txt");
    let stop = StopToken::new();
    let observer_stop = stop.clone();
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .output(&output)
        .workers(2)
        .retry(RetryPolicy::never())
        .stop_token(stop.clone())
        .observer(move |event: &Event<'_>| {
            if let Event::Failed { line: 2, .. } = event {
                observer_stop.stop();
            }
        })
        .map(&input.path, |line: &Line<'_>, out| {
            match line.number() {
                1 => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !stop.is_stopped() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    // An attempt failing after the stop: left unrecorded.
                    Err("interrupted".into())
                }
                2 => Err(permanent("down")),
                n => {
                    writeln!(out, "first run {n}")?;
                    Ok(())
                }
            }
        })
        .unwrap();
    assert!(report.stopped, "{report:?}");
    assert_eq!(report.position.line(), 0, "{report:?}");
    assert_eq!(failed_numbers(&checkpoint), vec![2]);

    let retried = Mutex::new(Vec::new());
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .output(&output)
        .retry_failed(true)
        .map(&input.path, |line: &Line<'_>, out| {
            retried.lock().unwrap().push(line.number());
            writeln!(out, "result {}", line.number())?;
            Ok(())
        })
        .unwrap();
    assert_eq!(*retried.lock().unwrap(), vec![2]);
    assert_eq!((report.done, report.failed_total), (1, 0), "{report:?}");

    let ran = Mutex::new(Vec::new());
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .output(&output)
        .map(&input.path, |line: &Line<'_>, out| {
            ran.lock().unwrap().push(line.number());
            writeln!(out, "result {}", line.number())?;
            Ok(())
        })
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let text = std::fs::read_to_string(&output).unwrap();
    let line_2_results = text.lines().filter(|l| *l == "result 2").count();
    assert!(
        !ran.lock().unwrap().contains(&2),
        "line 2, resolved by the retry, ran again: ran {:?}; output:\n{text}",
        ran.lock().unwrap()
    );
    assert_eq!(line_2_results, 1, "output:\n{text}");
}

/// A retry-failed run with several workers that the halt policy stops
/// must say so.
///
/// Sequence: 3 lines fail in a first run (lines 1, 2, 3, logged in that
/// order). A `retry_failed` run with 2 workers and
/// `halt_after_failures(1)`: line 1 fails again slowly (after 300 ms),
/// line 2 fails again at once.
///
/// Observed: line 2's failure stops the run (the workers' count reaches
/// the limit), line 1's attempt then fails after the stop and is
/// abandoned, and line 2's failure, queued behind it, is never recorded:
/// `report.halted == false`, `report.failed == 0`, no `Event::Failed`.
/// Expected: `halted` ("whether the run stopped because of the halt
/// policy", `Report`). The failure that applied it may stay unrecorded
/// (recorded in the log's order, it waited for line 1): it keeps its
/// earlier record, so nothing is lost.
///
/// Likely cause: `Retry::settle` / `record_ready` (src/runner/drive.rs)
/// record outcomes only in log order and drop everything behind an
/// abandoned line, while `Shared::note_failure` (src/runner/pool.rs) stops
/// the run on the workers' count; `RunState::record_failure`, which sets
/// `halted`, never sees the failure that applied the policy.
#[test]
fn a_retry_halted_by_its_failures_reports_halted() {
    let _serial = serial();
    let input = Input::generated(5);
    let checkpoint = input.sibling("job.checkpoint");
    Runner::new()
        .checkpoint_path(&checkpoint)
        .retry(RetryPolicy::never())
        .run(&input.path, |line: &Line<'_>| {
            if line.number() <= 3 {
                Err(permanent("down"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!(failed_numbers(&checkpoint), vec![1, 2, 3]);

    let events = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&events);
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .retry_failed(true)
        .workers(2)
        .retry(RetryPolicy::never())
        .halt_after_failures(1)
        .observer(move |event: &Event<'_>| {
            if let Event::Failed { line, .. } = event {
                sink.lock().unwrap().push(*line);
            }
        })
        .run(&input.path, |line: &Line<'_>| {
            if line.number() == 1 {
                std::thread::sleep(Duration::from_millis(300));
            }
            Err("still down".into())
        })
        .unwrap();
    assert!(report.stopped, "{report:?}");
    assert!(
        report.halted,
        "stopped by the halt policy, reported otherwise: {report:?}; Failed events: {:?}",
        events.lock().unwrap()
    );
    // The failure that applied the policy was queued behind line 1, which
    // the stop left unfinished: records follow the log's order, so it keeps
    // its earlier record (documented on `Report::halted`). Nothing is lost.
    assert_eq!(failed_numbers(&checkpoint), vec![1, 2, 3]);
    assert_eq!(report.failed_total, 3, "{report:?}");
}

/// The halt policy's report does not depend on the number of workers: a
/// halted run is a stopped one ("stopped: whether the run stopped before
/// the end: its stop token fired, or the halt policy applied"; "halted:
/// whether the run stopped because of the halt policy", `Report`).
///
/// Sequence: (a) a retry-failed run over one failed line (line 2 of 3)
/// that fails again, with `halt_after_failures(1)`; (b) a plain run over
/// 3 lines whose last line fails, with `halt_after_failures(1)`. Each once
/// with 1 worker and once with 2.
///
/// Observed: 1 worker: `halted: true, stopped: true`; 2 workers:
/// `halted: true, stopped: false`, in both (a) and (b). A caller testing
/// `stopped` (as `each` and `download` do for their exit codes) sees a
/// run that ended, while `Display` says "halted at line ...".
/// Expected: `halted` implies `stopped`, whatever the workers.
///
/// Likely cause: `Runner::pump` (src/runner/drive.rs) sets `reached_end`
/// from `exhausted && source.all_settled()` without looking at
/// `run.halted`: with workers the source is exhausted before the result
/// that applies the policy is settled (the in-order path,
/// `drive_lines`, returns `Paused::Asked` and so reports `stopped`).
#[test]
fn a_halted_run_is_stopped_whatever_the_workers() {
    let _serial = serial();
    let mut reports = Vec::new();
    for retry in [true, false] {
        for workers in [1, 2] {
            let input = Input::generated(3);
            let checkpoint = input.sibling("job.checkpoint");
            let failing = if retry { 2 } else { 3 };
            let halting = Runner::new()
                .checkpoint_path(&checkpoint)
                .workers(workers)
                .retry(RetryPolicy::never())
                .halt_after_failures(1);
            if retry {
                Runner::new()
                    .checkpoint_path(&checkpoint)
                    .retry(RetryPolicy::never())
                    .run(&input.path, |line: &Line<'_>| {
                        if line.number() == failing {
                            Err(permanent("down"))
                        } else {
                            Ok(())
                        }
                    })
                    .unwrap();
            }
            let report = halting
                .retry_failed(retry)
                .run(&input.path, |line: &Line<'_>| {
                    if line.number() == failing {
                        Err(permanent("still down"))
                    } else {
                        Ok(())
                    }
                })
                .unwrap();
            assert_eq!(report.failed, 1, "{report:?}");
            reports.push((retry, workers, report.halted, report.stopped));
        }
    }
    assert_eq!(
        reports,
        vec![
            (true, 1, true, true),
            (true, 2, true, true),
            (false, 1, true, true),
            (false, 2, true, true),
        ],
        "(retry_failed, workers, halted, stopped)"
    );
}

/// A retry-failed run goes through the failed lines only: when an earlier
/// run stopped before the end of the input, a retry that fixes every
/// failed line has not made the job complete.
///
/// Sequence: 10 lines, 1 worker; line 2 fails for good, and the run is
/// stopped after line 4 (position at line 4, lines 5 to 10 never ran). A
/// `retry_failed` run then succeeds on line 2.
///
/// Observed: the retry's report has `stopped: false`, `failed_total: 0`,
/// so `is_complete()` is true, with 6 lines never run.
/// Expected: `is_complete()` is "whether every line is done: the run
/// reached the end and no line is recorded as failed" (`Report`): false
/// here, as lines 5 to 10 are not done (the report's own `position` says
/// line 4 of 10).
///
/// Likely cause: `Runner::pump` (src/runner/drive.rs) sets `reached_end`
/// once the retry's source of failed lines is exhausted, and
/// `RunState::finish_run` derives `stopped` from it alone, whatever the
/// checkpoint's position; `Report::is_complete` (src/runner/mod.rs) trusts
/// it. The examples' exit codes (`each`: "0 every line is done";
/// `download`: "0 every line done") follow from it.
#[test]
fn a_retry_after_a_stopped_run_is_not_complete() {
    let _serial = serial();
    let input = Input::generated(10);
    // The file, and its bytes as a stream (read on past the position to
    // tell whether input is left).
    for stream in [false, true] {
        let checkpoint = input.sibling(&format!("job-{stream}.checkpoint"));
        let stop = StopToken::new();
        let report = run_over(
            &input,
            stream,
            &checkpoint,
            Runner::new().stop_token(stop.clone()),
            |line| {
                if line.number() == 4 {
                    stop.stop();
                }
                if line.number() == 2 {
                    return Err(permanent("down"));
                }
                Ok(())
            },
        );
        assert!(report.stopped, "{report:?}");
        assert_eq!(report.position.line(), 4, "{report:?}");

        let retry = || {
            run_over(
                &input,
                stream,
                &checkpoint,
                Runner::new().retry_failed(true),
                |_| Ok(()),
            )
        };
        let report = retry();
        assert_eq!((report.done, report.failed_total), (1, 0), "{report:?}");
        assert_eq!(report.position.line(), 4, "{report:?}");
        assert!(
            !report.is_complete() && report.input_left,
            "stream {stream}: lines 5 to 10 never ran, yet the report is complete: {report:?}"
        );
        assert_eq!(Checkpoint::inspect(&checkpoint).unwrap().position.line(), 4);

        // Once the rest has run, a retry of a line failed again is
        // complete when it succeeds: nothing is left after the position.
        let report = run_over(&input, stream, &checkpoint, Runner::new(), |line| {
            if line.number() == 9 {
                Err(permanent("down"))
            } else {
                Ok(())
            }
        });
        assert_eq!((report.position.line(), report.failed_total), (10, 1));
        let report = retry();
        assert!(
            !report.input_left && report.is_complete(),
            "stream {stream}: {report:?}"
        );
    }
}

/// A run of `task` over `input`, with `runner` (without retries), as a
/// file or as a stream of its bytes.
fn run_over(
    input: &Input,
    stream: bool,
    checkpoint: &std::path::Path,
    runner: Runner,
    task: impl Fn(&Line<'_>) -> Result<(), linemark::BoxError> + Sync,
) -> linemark::Report {
    let runner = runner.retry(RetryPolicy::never());
    if stream {
        runner.run_reader(&input.lines.concat()[..], checkpoint, task)
    } else {
        runner.checkpoint_path(checkpoint).run(&input.path, task)
    }
    .unwrap()
}

/// A retry-failed run over a stream whose last failed line lies beyond
/// the position must report the input left after the position, as the
/// same retry over the file does.
///
/// Sequence: 3 lines; position at line 1, line 3 failed beyond it, line 2
/// never run (what a run with workers leaves when it is stopped while
/// line 2 is in flight and line 3 fails: see the first test of
/// tests/retry_failed_runs.rs; built here with the checkpoint's API). A
/// `retry_failed` run succeeds on line 3, once over the file and once over
/// the file's bytes as a stream (each with its own copy of the checkpoint).
///
/// Observed: over the file, `input_left: true` (bytes after the
/// position); over the stream, `input_left: false` and `is_complete()`,
/// with line 2 never run (`each --retry-failed -` exits 0).
/// Expected: `input_left` ("whether input after position was never read
/// by any run") true for both.
///
/// Cause: `FailedSource::input_after` (src/runner/drive.rs), for `Scan`,
/// reads one item after `max(position, last failed line)`: when the retry
/// already read past the position, the line after the last failed one is
/// asked for instead of the one after the position. A fix: return
/// `Ok(true)` when `lines.lines_before() > position.line()`.
#[test]
fn a_stream_retry_past_the_position_reports_the_input_left() {
    let input = Input::generated(3);
    let ends = input.positions();
    let line3 = Line::new(&input.lines[2], 3, ends[2].offset());
    let mut reports = Vec::new();
    for stream in [false, true] {
        let path = input.sibling(&format!("job-{stream}.checkpoint"));
        let mut checkpoint = Checkpoint::open(&path).unwrap();
        checkpoint.commit(ends[1]).unwrap();
        checkpoint
            .commit_failed(FailedLine::new(&line3, 1, "down"))
            .unwrap();
        checkpoint.close().unwrap();

        let runner = Runner::new().retry(RetryPolicy::never()).retry_failed(true);
        let task = |line: &Line<'_>| {
            assert_eq!(line.number(), 3);
            Ok(())
        };
        let report = if stream {
            runner.run_reader(&input.lines.concat()[..], &path, task)
        } else {
            runner.checkpoint_path(&path).run(&input.path, task)
        }
        .unwrap();
        assert_eq!((report.done, report.failed_total), (1, 0), "{report:?}");
        assert_eq!(report.position.line(), 1, "{report:?}");
        reports.push((stream, report.input_left, report.is_complete()));
    }
    assert_eq!(
        reports,
        vec![(false, true, false), (true, true, false)],
        "(stream, input_left, is_complete): line 2 never ran"
    );
}

/// A stop while an async retry-failed run reads a stream on after its
/// last failed line (to tell whether input is left) must end the run
/// with a report, as a stop while it waits for the stream's next line
/// does.
///
/// Sequence: a stream of 3 lines that stays open (a tokio duplex whose
/// writer is kept); position at line 3, line 2 failed. An async
/// `retry_failed` run whose task, on line 2, fires the stop token and
/// succeeds.
///
/// Observed: the run returns `Err(Io { "the run stopped while waiting for
/// input" })`; the report (line 2 resolved) is lost and the run is not
/// closed as a run (`finish_run` never runs).
/// Expected: `Ok(report)` (stopped, or with `input_left` unknown).
///
/// Cause: `Runner::drive_failed` (src/runner/drive.rs) calls
/// `FailedSource::input_after` after the pump and propagates its error;
/// the async stream reader (`Chunks`, src/runner/async_run.rs) returns
/// `ReadStopped` once the run is stopped, which `Feed::feed` treats as a
/// stop (`is_read_stopped`) but `input_after`'s caller does not. A fix:
/// map `is_read_stopped` there to `run.stopped = true` (or skip the
/// trailing read once the run is stopping).
#[cfg(feature = "tokio")]
#[test]
fn a_stop_during_an_async_retrys_trailing_read_still_gives_a_report() {
    use linemark::{OwnedLine, StopToken};
    use tokio::io::AsyncWriteExt;

    let input = Input::generated(3);
    let ends = input.positions();
    let path = input.sibling("stream.checkpoint");
    let line2 = Line::new(&input.lines[1], 2, ends[1].offset());
    let mut checkpoint = Checkpoint::open(&path).unwrap();
    checkpoint.commit(ends[1]).unwrap();
    checkpoint
        .commit_failed(FailedLine::new(&line2, 1, "down"))
        .unwrap();
    checkpoint.commit(ends[3]).unwrap();
    checkpoint.close().unwrap();
    assert_eq!(failed_numbers(&path), vec![2]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = StopToken::new();
    let bytes = input.lines.concat();
    let result = runtime.block_on(async {
        let (mut writer, reader) = tokio::io::duplex(4096);
        writer.write_all(&bytes).await.unwrap();
        let run = Runner::new()
            .retry(RetryPolicy::never())
            .retry_failed(true)
            .stop_token(stop.clone())
            .run_reader_async(reader, &path, |line: OwnedLine| {
                let stop = stop.clone();
                async move {
                    assert_eq!(line.number(), 2);
                    stop.stop();
                    Ok(())
                }
            });
        let result = tokio::time::timeout(Duration::from_secs(30), run).await;
        // The stream stays open until the run ended.
        drop(writer);
        result
    });
    let result = result.expect("the retry waited for the stream 30 s after the stop");
    match result {
        Ok(report) => assert_eq!(report.failed_total, 0, "{report:?}"),
        Err(err) => panic!("a stopped retry ended with an error, not a report: {err}"),
    }
}

/// A newline appended to a finished last line that had none is not input
/// left: a retry over the file says the job is complete (a later plain
/// run has nothing to do), and so does one over the same bytes as a
/// stream; a line appended after it is input left.
#[test]
fn a_newline_ending_the_last_line_is_not_input_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    for (stream, appended, left) in [
        (false, &b"\n"[..], false),
        (true, b"\n", false),
        (false, b"\nd\n", true),
        (true, b"\nd\n", true),
    ] {
        std::fs::write(&path, "a\nb\nc").unwrap();
        let checkpoint = dir.path().join(format!("job-{stream}-{left}.checkpoint"));
        let fail_b = |line: &Line<'_>| {
            if line.raw() == b"b\n" {
                Err(permanent("down"))
            } else {
                Ok(())
            }
        };
        let runner = Runner::new().retry(RetryPolicy::never());
        let report = if stream {
            runner.run_reader(&b"a\nb\nc"[..], &checkpoint, fail_b)
        } else {
            runner.checkpoint_path(&checkpoint).run(&path, fail_b)
        }
        .unwrap();
        assert_eq!((report.position.line(), report.failed_total), (3, 1));

        let mut bytes = b"a\nb\nc".to_vec();
        bytes.extend_from_slice(appended);
        std::fs::write(&path, &bytes).unwrap();
        let runner = Runner::new().retry_failed(true);
        let report = if stream {
            runner.run_reader(&bytes[..], &checkpoint, |_| Ok(()))
        } else {
            runner.checkpoint_path(&checkpoint).run(&path, |_| Ok(()))
        }
        .unwrap();
        assert_eq!(
            (report.input_left, report.is_complete()),
            (left, !left),
            "stream {stream}, appended {appended:?}: {report:?}"
        );
    }
}
