//! Retry-failed runs and their reports, each test once a bug found by review
//! (it failed before its fix): a line resolved beyond the position, a retry
//! halted by its failures, a halted run with workers, a retry that leaves
//! input never run (and `each --retry-failed` after it).

mod common;

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Input, failed_lines, serial};
use linemark::{Checkpoint, Event, Line, RetryPolicy, Runner, StopToken, permanent};

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
    let checkpoint = input.sibling("job.checkpoint");
    let stop = StopToken::new();
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .retry(RetryPolicy::never())
        .stop_token(stop.clone())
        .run(&input.path, |line: &Line<'_>| {
            if line.number() == 4 {
                stop.stop();
            }
            if line.number() == 2 {
                return Err(permanent("down"));
            }
            Ok(())
        })
        .unwrap();
    assert!(report.stopped, "{report:?}");
    assert_eq!(report.position.line(), 4, "{report:?}");

    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .retry_failed(true)
        .run(&input.path, |_: &Line<'_>| Ok::<(), linemark::BoxError>(()))
        .unwrap();
    assert_eq!((report.done, report.failed_total), (1, 0), "{report:?}");
    assert_eq!(report.position.line(), 4, "{report:?}");
    assert!(
        !report.is_complete(),
        "lines 5 to 10 never ran, yet the report is complete: {report:?}"
    );
    assert_eq!(Checkpoint::inspect(&checkpoint).unwrap().position.line(), 4);
    assert!(report.input_left, "{report:?}");

    // The same over a stream: read on past the position to tell.
    let stream_checkpoint = input.sibling("stream.checkpoint");
    let bytes = input.lines.concat();
    let stop = StopToken::new();
    let report = Runner::new()
        .retry(RetryPolicy::never())
        .stop_token(stop.clone())
        .run_reader(&bytes[..], &stream_checkpoint, |line: &Line<'_>| {
            if line.number() == 4 {
                stop.stop();
            }
            if line.number() == 2 {
                return Err(permanent("down"));
            }
            Ok(())
        })
        .unwrap();
    assert!(report.stopped && report.position.line() == 4, "{report:?}");
    let retry = |checkpoint: &std::path::Path| {
        Runner::new()
            .retry_failed(true)
            .run_reader(&bytes[..], checkpoint, |_: &Line<'_>| {
                Ok::<(), linemark::BoxError>(())
            })
            .unwrap()
    };
    let report = retry(&stream_checkpoint);
    assert_eq!((report.done, report.failed_total), (1, 0), "{report:?}");
    assert!(report.input_left && !report.is_complete(), "{report:?}");

    // Once the rest has run, a retry of a line failed again is complete
    // when it succeeds: nothing is left after the position.
    for path in [&checkpoint, &stream_checkpoint] {
        let fail_9 = |line: &Line<'_>| {
            if line.number() == 9 {
                Err(permanent("down"))
            } else {
                Ok(())
            }
        };
        let report = if path == &checkpoint {
            Runner::new()
                .checkpoint_path(path)
                .retry(RetryPolicy::never())
                .run(&input.path, fail_9)
        } else {
            Runner::new()
                .retry(RetryPolicy::never())
                .run_reader(&bytes[..], path, fail_9)
        }
        .unwrap();
        assert_eq!((report.position.line(), report.failed_total), (10, 1));
        let report = if path == &checkpoint {
            Runner::new()
                .checkpoint_path(path)
                .retry_failed(true)
                .run(&input.path, |_: &Line<'_>| Ok::<(), linemark::BoxError>(()))
                .unwrap()
        } else {
            retry(path)
        };
        assert!(
            !report.input_left && report.is_complete(),
            "{}: {report:?}",
            path.display()
        );
    }
}

/// Runs the `each` example with `args`; returns its exit code and stderr.
fn run_each(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let output = std::process::Command::new(common::example_binary("each"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `each --retry-failed` exits 0 ("0 every line is done", `each` docs)
/// after an interrupted run whose remaining lines never ran.
///
/// Sequence: input `good1, bad, stop, good4, good5`, `--jobs 1`. The
/// command fails on `bad` (recorded as failed) and kills itself with
/// SIGINT on `stop`, which stops `each` (exit 130, position at line 2).
/// `bad` is fixed; `each --retry-failed` reruns it, and it succeeds.
///
/// Observed: exit status 0 and no word of the lines left; lines 3 to 5
/// never ran (`--status` shows the position at line 2 of 5).
/// Expected: not 0: "Exit status: 0 every line is done".
///
/// Likely cause: `examples/each.rs` `run` decides the exit code from
/// `report.stopped` and `report.failed_total` only, and a retry-failed
/// run's report says `stopped: false` once the failed lines ran (see
/// `a_retry_after_a_stopped_run_is_not_complete`; `Runner::pump`,
/// src/runner/drive.rs).
#[test]
fn each_retry_failed_after_an_interrupted_run_does_not_exit_0() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jobs.txt");
    std::fs::write(&input, "good1\nbad\nstop\ngood4\ngood5\n").unwrap();
    let fixed = dir.path().join("fixed");
    let out = dir.path().join("out.txt");
    let script = r#"
        if [ "$1" = stop ] && [ ! -e "$2" ]; then kill -INT $$; fi
        if [ "$1" = bad ] && [ ! -e "$2" ]; then echo "cannot $1" >&2; exit 3; fi
        printf '%s\n' "$1" >> "$3""#;
    let run = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
        args.extend([
            "-q".as_ref(),
            input.as_os_str(),
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            "_".as_ref(),
            "{}".as_ref(),
            fixed.as_os_str(),
            out.as_os_str(),
        ]);
        run_each(&args)
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(130), "{stderr}");
    let checkpoint = dir.path().join("jobs.txt.checkpoint");
    assert_eq!(Checkpoint::inspect(&checkpoint).unwrap().position.line(), 2);
    assert_eq!(failed_numbers(&checkpoint), vec![2]);

    std::fs::write(&fixed, "").unwrap();
    let (code, stderr) = run(&["--retry-failed"]);
    assert_eq!(failed_numbers(&checkpoint), Vec::<u64>::new());
    assert_eq!(Checkpoint::inspect(&checkpoint).unwrap().position.line(), 2);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "good1\nbad\n",
        "lines 3 to 5 never ran"
    );
    assert_ne!(
        code,
        Some(0),
        "exit 0 ('every line is done') with lines 3 to 5 never run; stderr: {stderr}"
    );
    // Its own status, and how to go on, even with --quiet.
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("never ran") && stderr.contains("without --retry-failed"),
        "{stderr}"
    );
    // Run as it says: the rest runs, and all is done.
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "good1\nbad\nstop\ngood4\ngood5\n"
    );
}
