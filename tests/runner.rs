//! The runner across its features: retries, failed lines, retry-failed,
//! graceful stop, sharding, parallel out-of-order completion, events.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linemark::{
    Checkpoint, Durability, Event, FailedLine, Line, Report, RetryPolicy, Runner, StopToken, Task,
};

fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    let text: String = (1..=lines).map(|n| format!("item-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(attempts)
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
}

/// Counts how often each line number ran successfully.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<u64, u32>>);

impl Tally {
    fn note(&self, line: u64) {
        *self.0.lock().unwrap().entry(line).or_default() += 1;
    }
    fn counts(&self) -> BTreeMap<u64, u32> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

#[test]
fn a_task_that_fails_k_times_then_succeeds_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 5);
    let attempts = Mutex::new(HashMap::<u64, u32>::new());
    let task = |line: &Line<'_>| -> Result<(), Failure> {
        let mut attempts = attempts.lock().unwrap();
        let n = attempts.entry(line.number()).or_default();
        *n += 1;
        // Line 3 fails twice, then succeeds.
        if line.number() == 3 && *n <= 2 {
            return Err(Failure(format!("flaky attempt {n}")));
        }
        Ok(())
    };
    let report = Runner::new()
        .retry(fast_retries(3))
        .run_task(&input, &task)
        .unwrap();
    assert_eq!((report.done, report.failed, report.retried), (5, 0, 2));
    assert!(report.is_complete());
    assert_eq!(attempts.lock().unwrap()[&3], 3);
}

struct Permanent<'a> {
    ran: &'a Tally,
}

impl Task for Permanent<'_> {
    type Error = Failure;

    fn run(&self, line: &Line<'_>) -> Result<(), Failure> {
        self.ran.note(line.number());
        match line.as_str().unwrap() {
            "item-2" | "item-7" => Err(Failure(format!("404 for {}", line.as_str().unwrap()))),
            "item-4" => Err(Failure("503, try later".into())),
            _ => Ok(()),
        }
    }

    fn is_retryable(&self, error: &Failure) -> bool {
        error.0.starts_with("503")
    }
}

/// The failed lines recorded for `input`: number, attempts, error.
fn failed_lines(input: &Path) -> Vec<(u64, u32, String)> {
    let checkpoint = Runner::new().checkpoint_for(input);
    let mut failed: Vec<(u64, u32, String)> = Checkpoint::inspect_failed(&checkpoint)
        .unwrap()
        .map(Result::unwrap)
        .map(|f| (f.line(), f.attempts(), f.error().to_string()))
        .collect();
    // By line number, as `Snapshot::failed` listed them.
    failed.sort_by_key(|f| f.0);
    let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
    assert_eq!(snapshot.failed, failed.len() as u64, "{failed:?}");
    failed
}

#[test]
fn permanent_failures_are_recorded_once_and_retry_failed_reruns_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 10);
    let ran = Tally::default();
    let report = Runner::new()
        .retry(fast_retries(3))
        .run_task(&input, &Permanent { ran: &ran })
        .unwrap();
    assert_eq!((report.done, report.failed, report.failed_total), (7, 3, 3));
    assert!(!report.is_complete());
    // Not retryable: one attempt each; retryable: three.
    let counts = ran.counts();
    assert_eq!((counts[&2], counts[&4], counts[&7]), (1, 3, 1));

    assert_eq!(
        failed_lines(&input),
        vec![
            (2, 1, "404 for item-2".to_string()),
            (4, 3, "503, try later".to_string()),
            (7, 1, "404 for item-7".to_string()),
        ]
    );

    // A plain rerun does nothing, and does not redo the failed lines.
    let rerun = Tally::default();
    let report = Runner::new()
        .run_task(&input, &Permanent { ran: &rerun })
        .unwrap();
    assert_eq!((report.done, report.failed, report.failed_total), (0, 0, 3));
    assert!(rerun.counts().is_empty());

    // Retry-failed runs exactly the failed lines; line 4 now succeeds.
    let retried = Tally::default();
    let fixed = |line: &Line<'_>| -> Result<(), Failure> {
        retried.note(line.number());
        if line.number() == 4 {
            Ok(())
        } else {
            Err(Failure("still missing".into()))
        }
    };
    let report = Runner::new()
        .retry_failed(true)
        .retry(RetryPolicy::never())
        .run_task(&input, &fixed)
        .unwrap();
    assert_eq!((report.done, report.failed, report.failed_total), (1, 2, 2));
    assert_eq!(
        retried.counts().keys().copied().collect::<Vec<_>>(),
        vec![2, 4, 7]
    );
    assert_eq!(
        failed_lines(&input),
        vec![
            (2, 2, "still missing".to_string()),
            (7, 2, "still missing".to_string())
        ]
    );
}

#[test]
fn retry_failed_on_a_stream_scans_for_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 6);
    let checkpoint = dir.path().join("stream.checkpoint");
    let text = std::fs::read(&input).unwrap();
    let failing = |line: &Line<'_>| -> Result<(), Failure> {
        if line.number() % 3 == 0 {
            Err(Failure("no".into()))
        } else {
            Ok(())
        }
    };
    let report = Runner::new()
        .retry(RetryPolicy::never())
        .run_reader_task(&text[..], &checkpoint, &failing)
        .unwrap();
    assert_eq!((report.done, report.failed), (4, 2));
    let seen = Tally::default();
    let ok = |line: &Line<'_>| -> Result<(), Failure> {
        seen.note(line.number());
        Ok(())
    };
    let report = Runner::new()
        .retry_failed(true)
        .run_reader_task(&text[..], &checkpoint, &ok)
        .unwrap();
    assert_eq!((report.done, report.failed_total), (2, 0));
    assert_eq!(
        seen.counts().keys().copied().collect::<Vec<_>>(),
        vec![3, 6]
    );
}

#[test]
fn a_changed_failed_line_is_refused_in_retry_failed_mode() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 3);
    let fail_two = |line: &Line<'_>| -> Result<(), Failure> {
        if line.number() == 2 {
            Err(Failure("x".into()))
        } else {
            Ok(())
        }
    };
    Runner::new()
        .retry(RetryPolicy::never())
        .run_task(&input, &fail_two)
        .unwrap();
    std::fs::write(&input, "item-1\nitem-X\nitem-3\n").unwrap();
    let err = Runner::new()
        .retry_failed(true)
        .run_task(&input, &fail_two)
        .unwrap_err();
    assert!(
        matches!(
            err,
            linemark::Error::InputChanged {
                line: 2,
                offset: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("input.txt"), "{err}");
}

/// Stops the run from inside the task once `after` lines ran.
fn stop_after(
    tally: &Tally,
    stop: &StopToken,
    after: u64,
) -> impl Fn(&Line<'_>) -> Result<(), Failure> + Sync {
    let count = AtomicU64::new(0);
    move |line: &Line<'_>| {
        tally.note(line.number());
        if count.fetch_add(1, Ordering::SeqCst) + 1 == after {
            stop.stop();
        }
        Ok(())
    }
}

#[test]
fn graceful_stop_then_rerun_does_every_line_exactly_once() {
    for workers in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), 500);
        let tally = Tally::default();
        let stop = StopToken::new();
        let report = Runner::new()
            .workers(workers)
            .stop_token(stop.clone())
            .run_task(&input, &stop_after(&tally, &stop, 100))
            .unwrap();
        assert!(report.stopped, "workers {workers}");
        assert!(report.done >= 100 && report.done < 500, "{report:?}");
        let report: Report = Runner::new()
            .workers(workers)
            .run_task(&input, &stop_after(&tally, &StopToken::new(), u64::MAX))
            .unwrap();
        assert!(report.is_complete(), "{report:?}");
        let counts = tally.counts();
        assert_eq!(counts.len(), 500, "workers {workers}");
        assert!(
            counts.values().all(|&n| n == 1),
            "workers {workers}: a line ran twice: {:?}",
            counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
        );
    }
}

#[test]
fn shards_together_cover_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 103);
    let tally = Tally::default();
    let record = |line: &Line<'_>| -> Result<(), Failure> {
        tally.note(line.number());
        Ok(())
    };
    for index in 0..4 {
        let report = Runner::new()
            .shard(index, 4)
            .workers(2)
            .run_task(&input, &record)
            .unwrap();
        assert!(report.is_complete());
        assert!(
            report
                .checkpoint
                .to_string_lossy()
                .ends_with(&format!("shard-{index}-of-4.checkpoint"))
        );
    }
    let counts = tally.counts();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=103).collect::<Vec<_>>()
    );
    assert!(counts.values().all(|&n| n == 1));
}

#[test]
fn parallel_lines_finish_out_of_order_and_the_watermark_follows() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 200);
    let tally = Tally::default();
    let max_in_flight = AtomicU64::new(0);
    let in_flight = AtomicU64::new(0);
    let task = |line: &Line<'_>| -> Result<(), Failure> {
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        max_in_flight.fetch_max(now, Ordering::SeqCst);
        // Earlier lines of each group of 8 take longer, so later ones finish first.
        std::thread::sleep(Duration::from_micros(200 * (8 - line.number() % 8)));
        tally.note(line.number());
        in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    };
    let report = Runner::new()
        .workers(8)
        .durability(Durability::EveryCommit)
        .run_task(&input, &task)
        .unwrap();
    assert_eq!(report.done, 200);
    assert_eq!(report.position.line(), 200);
    assert!(
        max_in_flight.load(Ordering::SeqCst) > 1,
        "never ran in parallel"
    );
    assert_eq!(tally.counts().len(), 200);
    let snapshot = Checkpoint::inspect(&report.checkpoint).unwrap();
    assert!(snapshot.done_beyond.is_empty());
}

#[test]
fn halt_policy_stops_after_k_failures() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 50);
    let always = |_: &Line<'_>| -> Result<(), Failure> { Err(Failure("down".into())) };
    let report = Runner::new()
        .retry(RetryPolicy::never())
        .halt_after_failures(3)
        .run_task(&input, &always)
        .unwrap();
    assert!(report.halted && report.stopped);
    assert_eq!(report.failed, 3);
    assert_eq!(report.position.line(), 3);
}

#[test]
fn a_panicking_task_fails_its_line_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 4);
    let task = |line: &Line<'_>| -> Result<(), Failure> {
        if line.number() == 2 {
            panic!("bad line {}", line.number());
        }
        Ok(())
    };
    for workers in [1, 2] {
        let checkpoint = dir.path().join(format!("w{workers}.checkpoint"));
        let report = Runner::new()
            .workers(workers)
            .checkpoint_path(&checkpoint)
            .run_task(&input, &task)
            .unwrap();
        assert_eq!((report.done, report.failed), (3, 1));
        let failed: Vec<FailedLine> = Checkpoint::inspect_failed(&checkpoint)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(failed[0].error(), "task panicked: bad line 2");
    }
}

#[test]
fn events_describe_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 3);
    let events = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&events);
    let attempts = AtomicU64::new(0);
    let task = |line: &Line<'_>| -> Result<(), Failure> {
        if line.number() == 2 && attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Failure("once".into()));
        }
        Ok(())
    };
    let input_len = std::fs::metadata(&input).unwrap().len();
    Runner::new()
        .retry(fast_retries(2))
        .observer(move |event: &Event<'_>| {
            let text = match event {
                Event::Begin { input_len, .. } => format!("begin {input_len:?}"),
                Event::Started { line, .. } => format!("start {line}"),
                Event::Done { line, end_offset } => format!("done {line} {end_offset}"),
                Event::Retrying {
                    line,
                    attempt,
                    error,
                    ..
                } => {
                    format!("retry {line} {attempt} {error}")
                }
                Event::Synced { position } => format!("synced {}", position.line()),
                other => format!("{other:?}"),
            };
            sink.lock().unwrap().push(text);
        })
        .run_task(&input, &task)
        .unwrap();
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            format!("begin {:?}", Some(input_len)),
            "start 1".to_string(),
            "done 1 7".to_string(),
            "start 2".to_string(),
            "retry 2 1 once".to_string(),
            "done 2 14".to_string(),
            "start 3".to_string(),
            "done 3 21".to_string(),
            "synced 3".to_string(),
        ]
    );
}

#[test]
fn a_second_run_on_the_same_checkpoint_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 3);
    let _held = Checkpoint::open(Runner::new().checkpoint_for(&input)).unwrap();
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    assert!(matches!(
        Runner::new().run_task(&input, &ok),
        Err(linemark::Error::Locked { .. })
    ));
}

#[test]
fn an_input_changed_before_the_resume_point_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 5);
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    Runner::new().run_task(&input, &ok).unwrap();
    std::fs::write(&input, "item-1\nitem-2\nitem-3\nitem-4\nitem-five\n").unwrap();
    let err = Runner::new().run_task(&input, &ok).unwrap_err();
    assert!(
        matches!(err, linemark::Error::InputChanged { line: 5, .. }),
        "{err}"
    );
    // Appending is not a change: only the new lines run.
    std::fs::write(&input, "item-1\nitem-2\nitem-3\nitem-4\nitem-5\nitem-6\n").unwrap();
    let report = Runner::new().run_task(&input, &ok).unwrap();
    assert_eq!(report.done, 1);
}

#[test]
fn content_seek_mode_resumes_after_finished_lines_were_removed() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 5);
    let tally = Tally::default();
    let record = |line: &Line<'_>| -> Result<(), Failure> {
        tally.note(line.number());
        Ok(())
    };
    Runner::new().run_task(&input, &record).unwrap();
    // The user trims the finished lines and appends new work.
    std::fs::write(&input, "item-4\nitem-5\nitem-6\nitem-7\n").unwrap();
    let seen = Mutex::new(Vec::new());
    let names = |line: &Line<'_>| -> Result<(), Failure> {
        seen.lock()
            .unwrap()
            .push(line.as_str().unwrap().to_string());
        Ok(())
    };
    // By offset the change is refused...
    assert!(Runner::new().run_task(&input, &names).is_err());
    // ...by content the run continues after "item-5", renumbered.
    let report = Runner::new()
        .seek_mode(linemark::SeekMode::Content)
        .run_task(&input, &names)
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["item-6", "item-7"]);
    assert_eq!((report.resumed_at.line(), report.position.line()), (2, 4));
    // The rebased checkpoint now resumes by offset as usual.
    let report = Runner::new().run_task(&input, &names).unwrap();
    assert_eq!(report.done, 0);
}

#[test]
fn an_impossible_shard_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 3);
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    for (index, count) in [(3, 3), (0, 0), (7, 2)] {
        let err = Runner::new()
            .shard(index, count)
            .run_task(&input, &ok)
            .unwrap_err();
        assert!(
            matches!(err, linemark::Error::InvalidShard { index: i, count: c } if (i, c) == (index, count)),
            "{err}"
        );
    }
}

#[test]
fn the_before_write_hook_runs_before_every_checkpoint_write() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 50);
    // Effects of finished lines become "durable" only in the hook.
    let pending = std::sync::Arc::new(Mutex::new(Vec::new()));
    let durable = std::sync::Arc::new(Mutex::new(Vec::<u64>::new()));
    let task = {
        let pending = std::sync::Arc::clone(&pending);
        move |line: &Line<'_>| -> Result<(), Failure> {
            pending.lock().unwrap().push(line.number());
            Ok(())
        }
    };
    let (from, to) = (
        std::sync::Arc::clone(&pending),
        std::sync::Arc::clone(&durable),
    );
    let checkpoint_path = dir.path().join("hooked.checkpoint");
    let watched = checkpoint_path.clone();
    let report = Runner::new()
        .checkpoint_path(&checkpoint_path)
        .workers(4)
        .durability(Durability::group(7, Duration::from_secs(3600)))
        .before_checkpoint_write(move || {
            // Whatever the file recorded so far must already be durable.
            let recorded = Checkpoint::inspect(&watched).unwrap().position.line();
            let mut made = to.lock().unwrap();
            assert!(
                (1..=recorded).all(|n| made.contains(&n)),
                "the checkpoint recorded line {recorded} before its effect was durable"
            );
            made.append(&mut from.lock().unwrap());
            Ok(())
        })
        .run_task(&input, &task)
        .unwrap();
    assert!(report.is_complete());
    let mut made = durable.lock().unwrap().clone();
    made.sort_unstable();
    assert_eq!(made, (1..=50).collect::<Vec<_>>());
}

#[test]
fn a_failing_before_write_hook_fails_the_run_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 5);
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    let err = Runner::new()
        .durability(Durability::EveryCommit)
        .before_checkpoint_write(|| Err(std::io::Error::other("output directory gone")))
        .run_task(&input, &ok)
        .unwrap_err();
    assert!(err.to_string().contains("output directory gone"), "{err}");
    let snapshot = Checkpoint::inspect(Runner::new().checkpoint_for(&input)).unwrap();
    assert!(snapshot.position.is_start());
}

#[test]
fn after_a_content_seek_failed_records_move_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    let numbered = |range: std::ops::RangeInclusive<u32>| -> String {
        range.map(|n| format!("l{n}\n")).collect()
    };
    std::fs::write(&input, numbered(1..=10)).unwrap();
    let fail_l5 = |line: &Line<'_>| -> Result<(), Failure> {
        if line.as_bytes() == b"l5" {
            Err(Failure("no".into()))
        } else {
            Ok(())
        }
    };
    let report = Runner::new()
        .retry(RetryPolicy::never())
        .run_task(&input, &fail_l5)
        .unwrap();
    assert_eq!(report.failed, 1);
    // The finished lines l1..l6 are removed and new work appended.
    std::fs::write(&input, numbered(7..=14)).unwrap();
    let seen = Mutex::new(Vec::new());
    let record = |line: &Line<'_>| -> Result<(), Failure> {
        seen.lock()
            .unwrap()
            .push(line.as_str().unwrap().to_string());
        Ok(())
    };
    let report = Runner::new()
        .seek_mode(linemark::SeekMode::Content)
        .run_task(&input, &record)
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["l11", "l12", "l13", "l14"]);
    assert_eq!(report.skipped, 0);
}

#[test]
fn a_line_recorded_done_beyond_the_position_is_checked_before_it_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 10);
    let text = std::fs::read(&input).unwrap();
    let ends: Vec<linemark::Position> = text
        .split_inclusive(|&b| b == b'\n')
        .scan(linemark::Position::start(), |pos, line| {
            *pos = pos.after(line);
            Some(*pos)
        })
        .collect();
    // As a parallel run leaves it: lines 1-5 finished, and line 8.
    let mut checkpoint = Checkpoint::open(Runner::new().checkpoint_for(&input)).unwrap();
    checkpoint.commit(ends[4]).unwrap();
    checkpoint.commit_done(ends[7]).unwrap();
    checkpoint.close().unwrap();
    // An unfinished line before it is removed: line 8 is now "item-9".
    let edited: String = (1..=10)
        .filter(|&n| n != 7)
        .map(|n| format!("item-{n}\n"))
        .collect();
    std::fs::write(&input, edited).unwrap();
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    for workers in [1, 3] {
        let err = Runner::new()
            .workers(workers)
            .run_task(&input, &ok)
            .unwrap_err();
        assert!(
            matches!(err, linemark::Error::InputChanged { line: 8, .. }),
            "workers {workers}: {err}"
        );
    }
}

#[test]
fn a_panicking_observer_fails_the_line_instead_of_hanging_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 6);
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    let (done, result) = std::sync::mpsc::channel();
    let run_input = input.clone();
    std::thread::spawn(move || {
        let report = Runner::new()
            .workers(2)
            .observer(|event: &Event<'_>| {
                if let Event::Started { line: 3, .. } = event {
                    panic!("observer bug");
                }
            })
            .run_task(&run_input, &ok);
        let _ = done.send(report.map(|r| (r.done, r.failed)));
    });
    let outcome = result
        .recv_timeout(Duration::from_secs(60))
        .expect("the run hung");
    assert_eq!(outcome.unwrap(), (5, 1));
}

#[test]
fn retry_failed_refuses_an_unterminated_failed_line_that_grew() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "a\nb").unwrap();
    let fail_b = |line: &Line<'_>| -> Result<(), Failure> {
        if line.as_bytes() == b"b" {
            Err(Failure("no".into()))
        } else {
            Ok(())
        }
    };
    Runner::new()
        .retry(RetryPolicy::never())
        .run_task(&input, &fail_b)
        .unwrap();
    std::fs::write(&input, "a\nbc\n").unwrap();
    let err = Runner::new()
        .retry_failed(true)
        .run_task(&input, &fail_b)
        .unwrap_err();
    assert!(
        matches!(err, linemark::Error::InputChanged { line: 2, .. }),
        "{err}"
    );
    // A newline appended to it is growth, not a change.
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let ok = |_: &Line<'_>| -> Result<(), Failure> { Ok(()) };
    let report = Runner::new()
        .retry_failed(true)
        .run_task(&input, &ok)
        .unwrap();
    assert_eq!((report.done, report.failed_total), (1, 0));
}

#[test]
fn a_line_rewritten_under_the_run_before_its_commit_is_written_is_an_input_change() {
    // The runner reads a committed line back from the input for its digest
    // when the checkpoint is written; a line rewritten in between must not
    // be recorded with the digest of bytes the job never saw.
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 6);
    let checkpoint = dir.path().join("input.checkpoint");
    let rewrite = |line: &Line<'_>| -> Result<(), std::convert::Infallible> {
        if line.number() == 3 {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&input)
                .unwrap();
            file.seek(SeekFrom::Start(line.offset())).unwrap();
            let same_length = vec![b'#'; line.raw().len() - 1];
            file.write_all(&same_length).unwrap();
        }
        Ok(())
    };
    let result = Runner::new()
        .checkpoint_path(&checkpoint)
        .durability(Durability::EveryCommit)
        .run_task(&input, &rewrite);
    match result {
        Err(linemark::Error::InputChanged { path, line, .. }) => {
            assert_eq!(path.as_deref(), Some(input.as_path()));
            assert_eq!(line, 3);
        }
        other => panic!("{other:?}"),
    }
    // Lines 1 and 2 were recorded; line 3 never was.
    assert_eq!(Checkpoint::inspect(&checkpoint).unwrap().position.line(), 2);
}

#[test]
fn a_checkpoint_is_refused_by_a_run_over_other_lines_than_it_records() {
    // A checkpoint written by shard 0/2, reused by a run without a shard or
    // with another one, would leave lines undone and exit 0.
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 10);
    let checkpoint = dir.path().join("shared.checkpoint");
    let ok = |_: &Line<'_>| -> Result<(), std::convert::Infallible> { Ok(()) };
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .shard(0, 2)
        .run_task(&input, &ok)
        .unwrap();
    assert_eq!(report.done, 5);
    for (asked, shard) in [
        ((0, 1), None),
        ((0, 4), Some((0, 4))),
        ((1, 2), Some((1, 2))),
    ] {
        let mut runner = Runner::new().checkpoint_path(&checkpoint);
        if let Some((index, count)) = shard {
            runner = runner.shard(index, count);
        }
        match runner.run_task(&input, &ok) {
            Err(linemark::Error::ShardMismatch {
                path,
                recorded,
                asked: got,
            }) => {
                assert_eq!(path, checkpoint);
                assert_eq!(recorded, (0, 2));
                assert_eq!(got, asked);
            }
            other => panic!("{shard:?}: {other:?}"),
        }
    }
    // The same shard resumes; a run over every line claims a new checkpoint.
    let again = Runner::new()
        .checkpoint_path(&checkpoint)
        .shard(0, 2)
        .run_task(&input, &ok)
        .unwrap();
    assert_eq!((again.done, again.is_complete()), (0, true));
    assert_eq!(Checkpoint::open(&checkpoint).unwrap().shard(), Some((0, 2)));
}
