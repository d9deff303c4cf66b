//! The async runner (`--features tokio`): every behaviour of the sync
//! runner, with futures, on both of tokio's runtimes.

#![cfg(feature = "tokio")]

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Input, current_thread, multi_thread};
use linemark::{AsyncTask, Error, Event, OwnedLine, RetryPolicy, Runner, StopToken, permanent};

/// How many times each line ran, by line number.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<u64, u32>>>);

impl Tally {
    fn add(&self, line: &OwnedLine) {
        *self.0.lock().unwrap().entry(line.number()).or_default() += 1;
    }

    fn count(&self, number: u64) -> u32 {
        self.0.lock().unwrap().get(&number).copied().unwrap_or(0)
    }

    fn lines(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all_once(&self, lines: u64) {
        let map = self.0.lock().unwrap();
        for number in 1..=lines {
            assert_eq!(map.get(&number), Some(&1), "line {number}");
        }
        assert_eq!(map.len() as u64, lines);
    }
}

/// The most futures of the task running at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 10,000 lines in flight at once, each awaiting a timer: every line runs
/// exactly once, and the concurrency is what was asked, not less, never
/// more.
fn ten_thousand_in_flight(runtime: tokio::runtime::Runtime) {
    let input = Input::generated(10_000);
    let tally = Tally::default();
    let gauge = Gauge::default();
    let report = runtime
        .block_on(
            Runner::new()
                .concurrency(10_000)
                .run_async(&input.path, |line: OwnedLine| {
                    let (tally, gauge) = (&tally, &gauge);
                    async move {
                        gauge.enter();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        gauge.leave();
                        tally.add(&line);
                        Ok(())
                    }
                }),
        )
        .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.done, 10_000);
    tally.all_once(10_000);
    let peak = gauge.peak.load(Ordering::SeqCst);
    // The lines are read faster than 50 ms of timers end, so most of them
    // wait at once; a runner that ran a few at a time peaks far lower.
    assert!(peak > 2_000 && peak <= 10_000, "peak {peak}");
    // The checkpoint says it: a rerun does nothing.
    let again = runtime
        .block_on(
            Runner::new().run_async(&input.path, |_line: OwnedLine| async {
                panic!("every line is done")
            }),
        )
        .unwrap();
    assert_eq!((again.done, again.skipped), (0, 0));
}

#[test]
fn ten_thousand_lines_in_flight_on_the_multi_thread_runtime() {
    ten_thousand_in_flight(multi_thread());
}

#[test]
fn ten_thousand_lines_in_flight_on_the_current_thread_runtime() {
    ten_thousand_in_flight(current_thread());
}

#[test]
fn concurrency_bounds_the_lines_in_flight() {
    let input = Input::generated(500);
    let gauge = Gauge::default();
    let report = multi_thread()
        .block_on(
            Runner::new()
                .concurrency(7)
                .run_async(&input.path, |_line: OwnedLine| {
                    let gauge = &gauge;
                    async move {
                        gauge.enter();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        gauge.leave();
                        Ok(())
                    }
                }),
        )
        .unwrap();
    assert_eq!(report.done, 500);
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 7);
}

/// The future is `Send`, so it can be spawned on the multi-thread runtime.
#[test]
fn the_run_future_can_be_spawned() {
    let input = Input::generated(100);
    let path = input.path.clone();
    let report = multi_thread()
        .block_on(async move {
            tokio::spawn(async move {
                Runner::new()
                    .run_async(&path, |line: OwnedLine| async move {
                        line.as_str()?;
                        Ok(())
                    })
                    .await
            })
            .await
        })
        .unwrap()
        .unwrap();
    assert_eq!(report.done, 100);
}

#[test]
fn retries_wait_on_the_tokio_timer() {
    // With tokio's clock paused, a backoff of an hour passes at once: only
    // a wait on tokio's timer can, a thread's sleep cannot.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let input = Input::generated(20);
    let attempts = Tally::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let hour = Duration::from_secs(3600);
    let report = runtime
        .block_on(
            Runner::new()
                .concurrency(4)
                .retry(
                    RetryPolicy::new()
                        .max_attempts(3)
                        .initial_delay(hour)
                        .max_delay(hour),
                )
                .observer({
                    let events = Arc::clone(&events);
                    move |event: &Event<'_>| {
                        if let Event::Retrying { line, delay, .. } = event {
                            events.lock().unwrap().push((*line, *delay));
                        }
                    }
                })
                .run_async(&input.path, |line: OwnedLine| {
                    let attempts = &attempts;
                    async move {
                        attempts.add(&line);
                        // Every third line succeeds on its third attempt.
                        if line.number() % 3 == 0 && attempts.count(line.number()) < 3 {
                            return Err("not yet".into());
                        }
                        Ok(())
                    }
                }),
        )
        .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!((report.done, report.retried), (20, 12));
    let retrying = events.lock().unwrap().clone();
    assert_eq!(retrying.len(), 12);
    assert!(
        retrying
            .iter()
            .all(|&(line, delay)| line % 3 == 0 && delay >= hour / 2)
    );
}

/// A task with its own error type: 404s are permanent, 429s carry their
/// own delay.
struct Fetch {
    attempts: Tally,
}

#[derive(Debug)]
enum FetchError {
    NotFound,
    TooMany(Duration),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotFound => f.write_str("404 not found"),
            FetchError::TooMany(_) => f.write_str("429 too many requests"),
        }
    }
}

impl std::error::Error for FetchError {}

impl AsyncTask for Fetch {
    type Error = FetchError;

    async fn run(&self, line: OwnedLine) -> Result<(), FetchError> {
        self.attempts.add(&line);
        tokio::task::yield_now().await;
        match line.as_bytes() {
            b"missing" => Err(FetchError::NotFound),
            b"busy" if self.attempts.count(line.number()) == 1 => {
                Err(FetchError::TooMany(Duration::from_millis(1)))
            }
            _ => Ok(()),
        }
    }

    fn is_retryable(&self, error: &FetchError) -> bool {
        matches!(error, FetchError::TooMany(_))
    }

    fn retry_after(&self, error: &FetchError) -> Option<Duration> {
        match error {
            FetchError::TooMany(after) => Some(*after),
            FetchError::NotFound => None,
        }
    }
}

#[test]
fn an_async_task_type_gets_the_same_error_model_and_retry_failed_reruns_exactly_the_failed() {
    let input = Input::new(
        ["a\n", "missing\n", "busy\n", "b\n", "missing\n"]
            .map(|line| line.as_bytes().to_vec())
            .to_vec(),
    );
    let runtime = current_thread();
    let task = Fetch {
        attempts: Tally::default(),
    };
    let runner = Runner::new().concurrency(3);
    let report = runtime
        .block_on(runner.run_async_task(&input.path, &task))
        .unwrap();
    assert_eq!((report.done, report.failed, report.retried), (3, 2, 1));
    // A 404 is not retried.
    assert_eq!((task.attempts.count(2), task.attempts.count(5)), (1, 1));
    assert_eq!(task.attempts.count(3), 2);
    let failed: Vec<_> = common::failed_lines(&input.sibling("input.txt.checkpoint"))
        .iter()
        .map(|failed| (failed.line(), failed.error().to_string()))
        .collect();
    assert_eq!(
        failed,
        [
            (2, "404 not found".to_string()),
            (5, "404 not found".to_string())
        ]
    );

    // Exactly the failed lines run again; one now succeeds.
    let ran = Tally::default();
    let report =
        runtime
            .block_on(runner.clone().retry_failed(true).run_async(
                &input.path,
                |line: OwnedLine| {
                    let ran = &ran;
                    async move {
                        ran.add(&line);
                        if line.number() == 5 {
                            return Err(permanent("still missing"));
                        }
                        Ok(())
                    }
                },
            ))
            .unwrap();
    assert_eq!((ran.count(2), ran.count(5), ran.lines()), (1, 1, 2));
    assert_eq!((report.done, report.failed, report.failed_total), (1, 1, 1));
}

#[test]
fn a_panic_in_the_task_fails_its_line_only() {
    let input = Input::generated(50);
    let report = multi_thread()
        .block_on(Runner::new().retry(RetryPolicy::never()).run_async(
            &input.path,
            |line: OwnedLine| async move {
                if line.number() == 7 {
                    panic!("boom on seven");
                }
                tokio::task::yield_now().await;
                if line.number() == 9 {
                    panic!("boom on nine, after a wait");
                }
                Ok(())
            },
        ))
        .unwrap();
    assert_eq!((report.done, report.failed), (48, 2));
    let failed = common::failed_lines(&input.sibling("input.txt.checkpoint"));
    assert!(failed[0].error().contains("boom on seven"), "{failed:?}");
    assert!(failed[1].error().contains("boom on nine"), "{failed:?}");
}

#[test]
fn a_stop_token_stops_new_lines_lets_those_in_flight_finish_and_a_rerun_completes() {
    let input = Input::generated(2_000);
    let stop = StopToken::new();
    let tally = Tally::default();
    let runtime = multi_thread();
    let report = runtime
        .block_on(
            Runner::new()
                .concurrency(50)
                .stop_token(stop.clone())
                .run_async(&input.path, |line: OwnedLine| {
                    let (tally, stop) = (&tally, &stop);
                    async move {
                        if line.number() == 300 {
                            stop.stop();
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        tally.add(&line);
                        Ok(())
                    }
                }),
        )
        .unwrap();
    assert!(report.stopped, "{report}");
    // Every line that started finished and was recorded: the rerun does
    // exactly the others.
    assert_eq!(report.done as usize, tally.lines());
    assert!(tally.lines() < 2_000);
    let report = runtime
        .block_on(Runner::new().run_async(&input.path, |line: OwnedLine| {
            let tally = &tally;
            async move {
                tally.add(&line);
                Ok(())
            }
        }))
        .unwrap();
    assert!(report.is_complete());
    tally.all_once(2_000);
}

#[test]
fn a_stop_ends_a_backoff_at_once() {
    let input = Input::generated(10);
    let stop = StopToken::new();
    let report = multi_thread()
        .block_on(async {
            let firing = stop.clone();
            let run = Runner::new()
                .stop_token(stop.clone())
                .retry(RetryPolicy::new().initial_delay(Duration::from_secs(3600)))
                .run_async(&input.path, |line: OwnedLine| {
                    let firing = firing.clone();
                    async move {
                        if line.number() == 4 {
                            // Fired while this line waits out its backoff.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                firing.stop();
                            });
                            return Err("retry me".into());
                        }
                        Ok(())
                    }
                });
            tokio::time::timeout(Duration::from_secs(30), run).await
        })
        .expect("the stop did not end the backoff")
        .unwrap();
    assert!(report.stopped);
    // Line 4 is left unrecorded, to be done again; nothing failed.
    assert_eq!((report.failed, report.position.line()), (0, 3));
}

#[test]
fn halt_after_failures_stops_the_run() {
    let input = Input::generated(1_000);
    let report = current_thread()
        .block_on(
            Runner::new()
                .concurrency(8)
                .halt_after_failures(5)
                .run_async(&input.path, |line: OwnedLine| async move {
                    if line.number() % 10 == 0 {
                        return Err(permanent("bad"));
                    }
                    Ok(())
                }),
        )
        .unwrap();
    assert!(report.halted && report.stopped, "{report}");
    assert!((5..5 + 8).contains(&report.failed), "{report}");
    assert!(report.position.line() < 1_000);
}

#[test]
fn dropping_the_future_keeps_the_checkpoint_and_the_lines_in_progress_run_again() {
    let input = Input::generated(1_000);
    let runtime = multi_thread();
    let tally = Tally::default();
    // The lines the run recorded as done (the driver's events).
    let recorded = Arc::new(AtomicU64::new(0));
    // Lines 500 to 515 never finish, and hold up the rest; the run is
    // dropped once every line before them is recorded.
    let outcome = runtime.block_on(async {
        let run = Runner::new()
            .concurrency(16)
            .observer({
                let recorded = Arc::clone(&recorded);
                move |event: &Event<'_>| {
                    if let Event::Done { .. } = event {
                        recorded.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .run_async(&input.path, |line: OwnedLine| {
                let tally = &tally;
                async move {
                    // A millisecond a line: batches of one line, each
                    // recorded as it finishes.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if line.number() >= 500 {
                        std::future::pending::<()>().await;
                    }
                    tally.add(&line);
                    Ok(())
                }
            });
        let mut run = std::pin::pin!(run);
        loop {
            tokio::select! {
                report = &mut run => return Some(report),
                () = tokio::time::sleep(Duration::from_millis(2)) => {
                    if recorded.load(Ordering::SeqCst) == 499 {
                        return None;
                    }
                }
            }
        }
    });
    assert!(outcome.is_none(), "the run ended: {outcome:?}");
    // At once: the dropped run's thread may still be closing the
    // checkpoint, and the new run waits for it rather than find it locked.
    let report = runtime
        .block_on(Runner::new().run_async(&input.path, |line: OwnedLine| {
            let tally = &tally;
            async move {
                tally.add(&line);
                Ok(())
            }
        }))
        .unwrap();
    assert!(report.is_complete(), "{report}");
    // Everything recorded was kept, and the lines in progress were done by
    // the second run: every line exactly once.
    assert_eq!(report.resumed_at.line(), 499);
    assert_eq!(report.done, 501);
    tally.all_once(1_000);
}

#[test]
fn shards_cover_every_line_once() {
    let input = Input::generated(3_001);
    let tally = Tally::default();
    let runtime = multi_thread();
    for index in 0..3 {
        let report = runtime
            .block_on(Runner::new().shard(index, 3).concurrency(32).run_async(
                &input.path,
                |line: OwnedLine| {
                    let tally = &tally;
                    async move {
                        assert_eq!((line.number() - 1) % 3, index);
                        tally.add(&line);
                        Ok(())
                    }
                },
            ))
            .unwrap();
        assert!(report.is_complete());
    }
    tally.all_once(3_001);
}

#[test]
fn an_edited_input_is_refused_on_resume() {
    let input = Input::generated(100);
    let runtime = current_thread();
    let stop = StopToken::new();
    let report = runtime
        .block_on(
            Runner::new()
                .concurrency(1)
                .stop_token(stop.clone())
                .run_async(&input.path, |line: OwnedLine| {
                    let stop = stop.clone();
                    async move {
                        if line.number() == 50 {
                            stop.stop();
                        }
                        Ok(())
                    }
                }),
        )
        .unwrap();
    assert!(report.stopped);
    let mut text = std::fs::read(&input.path).unwrap();
    text[3] ^= 1;
    std::fs::write(&input.path, text).unwrap();
    let err = runtime
        .block_on(
            Runner::new().run_async(&input.path, |_line: OwnedLine| async {
                unreachable!("the input changed")
            }),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InputChanged { .. }), "{err}");
}

#[test]
fn events_reach_the_observer() {
    let input = Input::generated(300);
    let counts = Arc::new(Mutex::new(HashMap::<&'static str, u64>::new()));
    let report = multi_thread()
        .block_on(
            Runner::new()
                .concurrency(10)
                .retry(RetryPolicy::never())
                .observer({
                    let counts = Arc::clone(&counts);
                    move |event: &Event<'_>| {
                        let kind = match event {
                            Event::Begin { .. } => "begin",
                            Event::Started { .. } => "started",
                            Event::Done { .. } => "done",
                            Event::Failed { .. } => "failed",
                            Event::Synced { .. } => "synced",
                            _ => "other",
                        };
                        *counts.lock().unwrap().entry(kind).or_default() += 1;
                    }
                })
                .run_async(&input.path, |line: OwnedLine| async move {
                    if line.number() == 100 {
                        return Err("no".into());
                    }
                    Ok(())
                }),
        )
        .unwrap();
    assert_eq!((report.done, report.failed), (299, 1));
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts["begin"], 1);
    assert_eq!(counts["started"], 300);
    assert_eq!(counts["done"], 299);
    assert_eq!(counts["failed"], 1);
    assert!(counts["synced"] >= 1);
}

#[test]
fn the_checkpoint_is_written_and_synced_off_the_runtime_threads() {
    let input = Input::generated(2_000);
    let writes = Arc::new(AtomicU64::new(0));
    let on_runtime = Arc::new(AtomicU64::new(0));
    let hook = {
        let (writes, on_runtime) = (Arc::clone(&writes), Arc::clone(&on_runtime));
        move || {
            writes.fetch_add(1, Ordering::SeqCst);
            // The hook runs where the write is made, before it.
            if tokio::runtime::Handle::try_current().is_ok() {
                on_runtime.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    };
    let report = current_thread()
        .block_on(Runner::new().before_checkpoint_write(hook).run_async(
            &input.path,
            |_line: OwnedLine| async {
                tokio::time::sleep(Duration::from_micros(100)).await;
                Ok(())
            },
        ))
        .unwrap();
    assert_eq!(report.done, 2_000);
    assert!(writes.load(Ordering::SeqCst) >= 1);
    assert_eq!(on_runtime.load(Ordering::SeqCst), 0);
}

#[test]
fn a_stream_is_read_by_the_runtime_and_resumed_by_counting_lines() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("stream.checkpoint");
    let text: Vec<u8> = (1..=5_000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();
    let runtime = multi_thread();
    let tally = Tally::default();
    let stop = StopToken::new();
    let report = runtime
        .block_on(Runner::new().stop_token(stop.clone()).run_reader_async(
            &text[..],
            &checkpoint,
            |line: OwnedLine| {
                let (tally, stop) = (&tally, &stop);
                async move {
                    assert_eq!(line.as_str()?.parse::<u64>()?, line.number());
                    if line.number() == 2_500 {
                        stop.stop();
                    }
                    tally.add(&line);
                    Ok(())
                }
            },
        ))
        .unwrap();
    assert!(report.stopped);
    let report = runtime
        .block_on(
            Runner::new().run_reader_async(&text[..], &checkpoint, |line: OwnedLine| {
                let tally = &tally;
                async move {
                    tally.add(&line);
                    Ok(())
                }
            }),
        )
        .unwrap();
    assert!(report.is_complete(), "{report}");
    tally.all_once(5_000);
}

/// A stream whose writer sends the next line only once the last one's
/// task ran: the runner must hand a line to its task without waiting for
/// more input.
#[test]
fn a_conversational_stream_completes() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("chat.checkpoint");
    let (mut writer, reader) = tokio::io::duplex(64);
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let report = multi_thread()
        .block_on(async {
            let feeding = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for n in 1..=200u64 {
                    writer.write_all(format!("{n}\n").as_bytes()).await?;
                    if answers.recv().await != Some(n) {
                        return Err(io::Error::other("out of order"));
                    }
                }
                Ok::<_, io::Error>(())
            });
            let run = Runner::new().concurrency(4).run_reader_async(
                reader,
                &checkpoint,
                |line: OwnedLine| {
                    let answered = answered.clone();
                    async move {
                        answered.send(line.number())?;
                        Ok(())
                    }
                },
            );
            let report = tokio::time::timeout(Duration::from_secs(30), run).await;
            feeding.await.unwrap().unwrap();
            report
        })
        .expect("the runner waited for input before running the lines it had")
        .unwrap();
    assert_eq!(report.done, 200);
}

#[test]
fn two_runs_at_once_on_one_checkpoint_are_refused() {
    let input = Input::generated(100);
    let runtime = multi_thread();
    let result = runtime.block_on(async {
        let released = AtomicBool::new(false);
        let first = Runner::new().run_async(&input.path, |_line: OwnedLine| {
            let released = &released;
            async move {
                while !released.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(())
            }
        });
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let result = Runner::new()
                .run_async(&input.path, |_line: OwnedLine| async { Ok(()) })
                .await;
            released.store(true, Ordering::SeqCst);
            result
        };
        let (first, second) = tokio::join!(first, second);
        (
            first.map(|report| report.done),
            second.map(|report| report.done),
        )
    });
    // Which of them gets the lock is up to the scheduler; the other is
    // refused, and nothing is done twice.
    match result {
        (Ok(_), Err(Error::Locked { .. })) | (Err(Error::Locked { .. }), Ok(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_that_awaits_the_stop_token_gives_up_its_wait() {
    let input = Input::generated(5);
    let stop = StopToken::new();
    let report = multi_thread()
        .block_on(Runner::new().stop_token(stop.clone()).run_async(
            &input.path,
            |line: OwnedLine| {
                let stop = stop.clone();
                async move {
                    if line.number() == 3 {
                        stop.stop();
                        stop.stopped().await;
                        return Err("gave up".into());
                    }
                    Ok(())
                }
            },
        ))
        .unwrap();
    assert!(report.stopped);
    assert_eq!(
        report.failed, 0,
        "a line failing after the stop is left to redo"
    );
}

#[test]
fn retry_failed_on_a_stream_scans_for_the_failed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("stream.checkpoint");
    let text: Vec<u8> = (1..=1_000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();
    let runtime = current_thread();
    let report = runtime
        .block_on(Runner::new().concurrency(16).run_reader_async(
            &text[..],
            &checkpoint,
            |line: OwnedLine| async move {
                if line.number() % 250 == 0 {
                    return Err(permanent("not now"));
                }
                Ok(())
            },
        ))
        .unwrap();
    assert_eq!((report.done, report.failed), (996, 4));
    let ran = Tally::default();
    let report = runtime
        .block_on(Runner::new().retry_failed(true).run_reader_async(
            &text[..],
            &checkpoint,
            |line: OwnedLine| {
                let ran = &ran;
                async move {
                    assert_eq!(line.as_str()?.parse::<u64>()?, line.number());
                    ran.add(&line);
                    Ok(())
                }
            },
        ))
        .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(ran.lines(), 4);
    assert!((1..=4).all(|n| ran.count(n * 250) == 1));
}

#[test]
fn a_run_refused_while_another_holds_the_checkpoint_does_not_make_the_next_one_refused() {
    let input = Input::generated(100);
    let runtime = multi_thread();
    // Line 1 ends when released; its `Done` event then keeps the first
    // run's thread (and its lock) busy for 300 ms, past its future's drop.
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let first = Runner::new()
            .observer(|event: &Event<'_>| {
                if let Event::Done { .. } = event {
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
            .run_async(input.path.clone(), {
                let (started, release) = (Arc::clone(&started), Arc::clone(&release));
                move |line: OwnedLine| {
                    let (started, release) = (Arc::clone(&started), Arc::clone(&release));
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        if line.number() > 1 {
                            std::future::pending::<()>().await;
                        }
                        while !release.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Ok(())
                    }
                }
            });
        let mut first = Box::pin(first);
        while started.load(Ordering::SeqCst) == 0 {
            tokio::select! {
                report = &mut first => panic!("the first run ended: {report:?}"),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let refused = Runner::new()
            .run_async(&input.path, |_line: OwnedLine| async { Ok(()) })
            .await;
        assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
        release.store(true, Ordering::SeqCst);
        // Line 1 ends and its result goes to the first run's thread.
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut first).await;
        drop(first);
        // The dropped run is still closing: this one waits for it.
        let report = Runner::new()
            .run_async(&input.path, |_line: OwnedLine| async { Ok(()) })
            .await
            .unwrap();
        assert!(report.is_complete(), "{report}");
    });
}

#[test]
fn a_stop_ends_a_run_whose_stream_has_gone_quiet() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("quiet.checkpoint");
    let stop = StopToken::new();
    let runtime = multi_thread();
    let report = runtime
        .block_on(async {
            let (mut writer, reader) = tokio::io::duplex(64);
            writer.write_all(b"1\n2\n3\n").await.unwrap();
            // The writer stays open and silent.
            let run = Runner::new().stop_token(stop.clone()).run_reader_async(
                reader,
                &checkpoint,
                |line: OwnedLine| {
                    let stop = stop.clone();
                    async move {
                        if line.number() == 3 {
                            stop.stop();
                        }
                        Ok(())
                    }
                },
            );
            let report = tokio::time::timeout(Duration::from_secs(30), run).await;
            drop(writer);
            report
        })
        .expect("the stop did not end the wait for input")
        .unwrap();
    assert!(report.stopped, "{report}");
    assert_eq!((report.done, report.position.line()), (3, 3));
    // The rerun counts the three lines and goes on.
    let text: &[u8] = b"1\n2\n3\n4\n5\n";
    let report = runtime
        .block_on(
            Runner::new().run_reader_async(text, &checkpoint, |line: OwnedLine| async move {
                assert!(line.number() > 3);
                Ok(())
            }),
        )
        .unwrap();
    assert!(report.is_complete());
    assert_eq!(report.done, 2);
}

/// Instant lines go in batches of many; a line whose future waits hands
/// back the lines its batch finished before it, so they are recorded while
/// it waits (here: forever).
#[test]
fn a_line_that_waits_does_not_hold_back_the_finished_lines_of_its_batch() {
    let input = Input::generated(5_000);
    let recorded = Arc::new(AtomicU64::new(0));
    let largest_batch = Arc::new(AtomicU64::new(0));
    let runtime = multi_thread();
    let outcome = runtime.block_on(async {
        let run = Runner::new()
            .concurrency(4)
            .observer({
                let recorded = Arc::clone(&recorded);
                move |event: &Event<'_>| {
                    if let Event::Done { line, .. } = event {
                        if *line < 4_000 {
                            recorded.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
            .run_async(&input.path, {
                let largest_batch = Arc::clone(&largest_batch);
                move |line: OwnedLine| {
                    let largest_batch = Arc::clone(&largest_batch);
                    async move {
                        // How far this line is past the last one started.
                        largest_batch.fetch_max(line.number(), Ordering::SeqCst);
                        if line.number() == 4_000 {
                            std::future::pending::<()>().await;
                        }
                        Ok(())
                    }
                }
            });
        let mut run = std::pin::pin!(run);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                report = &mut run => return Err(format!("the run ended: {report:?}")),
                () = tokio::time::sleep(Duration::from_millis(2)) => {
                    let started = largest_batch.load(Ordering::SeqCst);
                    if recorded.load(Ordering::SeqCst) == 3_999 && started >= 4_000 {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "{} of the 3,999 lines before the waiting one recorded",
                            recorded.load(Ordering::SeqCst)
                        ));
                    }
                }
            }
        }
    });
    outcome.unwrap();
}
