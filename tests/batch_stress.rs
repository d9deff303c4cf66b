//! The batched parallel runner under stress and at its edges: random stops
//! with shards, streams, failures, long lines and tiny buffers; where cheap
//! tasks run; halts, stops during a backoff, and how soon a finished line
//! is recorded.

mod batch_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use linemark::{Line, RetryPolicy, Runner, StopToken};

use batch_common::lateness::LatenessProbe;
use batch_common::{assert_finished_lines_ran_ok, input_with, run_file_or_stream, serial, spin};

/// At the end: `counts` holds exactly the lines `expected`, once each, and
/// the checkpoint is at the last line with nothing beyond it.
fn assert_once_each(
    round: u64,
    what: &str,
    counts: &BTreeMap<u64, u32>,
    expected: &[u64],
    checkpoint: &Path,
    lines: u64,
) {
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        expected,
        "round {round}: {what}"
    );
    assert!(
        counts.values().all(|&c| c == 1),
        "round {round}: {what} twice"
    );
    let snap = linemark::Checkpoint::inspect(checkpoint).unwrap();
    assert!(snap.done_beyond.is_empty(), "round {round}");
    assert_eq!(snap.position.line(), lines);
}

/// `StopToken::stop` promises that waits in progress (retry backoff) end at
/// once, on a worker or on the runner's own thread, where the cheapest
/// tasks run (a release build runs this no-op task there).
#[test]
fn a_stop_ends_a_retry_backoff_at_once_wherever_the_line_runs() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 300_000);
    let stop = StopToken::new();
    let triggered = AtomicBool::new(false);
    let stopped_at = std::sync::Mutex::new(None::<Instant>);
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() > 5_000 && !triggered.swap(true, Ordering::SeqCst) {
            let stop = stop.clone();
            let at = Instant::now() + Duration::from_millis(100);
            *stopped_at.lock().unwrap() = Some(at);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                stop.stop();
            });
            return Err("transient".into());
        }
        Ok(())
    };
    let report = Runner::new()
        .workers(2)
        .window(256)
        .stop_token(stop.clone())
        .retry(
            RetryPolicy::new()
                .max_attempts(2)
                .initial_delay(Duration::from_secs(5))
                .max_delay(Duration::from_secs(5))
                .jitter(false),
        )
        .run_task(&input, &task)
        .unwrap();
    assert!(triggered.load(Ordering::SeqCst));
    let late = Instant::now() - stopped_at.lock().unwrap().unwrap();
    assert!(report.stopped, "{report:?}");
    assert!(
        late < Duration::from_secs(2),
        "the run went on {late:?} after its stop token fired: the backoff was not cut short"
    );
}

/// Only a task of a few tens of nanoseconds runs on the runner's thread:
/// however small the batches (`window(16)` with 8 workers: one line; the
/// default window with 32 workers: 16 lines), a task of 5 µs or 0.5 µs runs
/// on the workers.
#[test]
fn a_task_of_a_microsecond_runs_on_the_workers_however_small_the_batches() {
    let _serial = serial();
    for (workers, window, work, lines) in [
        (8, 16, Duration::from_micros(5), 20_000),
        (
            32,
            Runner::DEFAULT_WINDOW,
            Duration::from_nanos(500),
            100_000,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), lines);
        let main = thread::current().id();
        let on_main = AtomicU64::new(0);
        let task = |_: &Line<'_>| -> Result<(), String> {
            if thread::current().id() == main {
                on_main.fetch_add(1, Ordering::Relaxed);
            }
            spin(work);
            Ok(())
        };
        let report = Runner::new()
            .workers(workers)
            .window(window)
            .run_task(&input, &task)
            .unwrap();
        assert_eq!(report.done, lines as u64);
        let on_main = on_main.load(Ordering::Relaxed);
        assert!(
            on_main < lines as u64 / 2,
            "{on_main} of {lines} lines ran on the runner's thread, not on the {workers} workers"
        );
    }
}

/// `halt_after_failures(1)`: the worker that fails the line stops the run at
/// once, so the rest of its batch does not fail too (a batch here may hold
/// 256 lines); at most the lines the other workers were running fail.
#[test]
fn halt_after_one_failure_does_not_record_a_whole_batch_of_failures() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 60_000);
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() > 30_000 {
            Err("down".into())
        } else {
            Ok(())
        }
    };
    let report = Runner::new()
        .workers(2)
        .retry(RetryPolicy::never())
        .halt_after_failures(1)
        .run_task(&input, &task)
        .unwrap();
    assert!(report.halted, "{report:?}");
    assert!(
        report.failed <= 4,
        "halt after 1 failure recorded {} failed lines",
        report.failed
    );
}

#[test]
fn stops_at_random_lines_then_reruns_do_every_line_exactly_once() {
    let _serial = serial();
    use std::sync::Mutex;
    for round in 0..30u64 {
        let dir = tempfile::tempdir().unwrap();
        let n = 30_000usize;
        let input = input_with(dir.path(), n);
        let counts = Mutex::new(BTreeMap::<u64, u32>::new());
        let mut stops = 0;
        loop {
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let after = 2_000 + (round * 7919 + stops * 104_729) % 9_000;
            let task = |line: &Line<'_>| -> Result<(), String> {
                *counts.lock().unwrap().entry(line.number()).or_default() += 1;
                if line.number() % 997 == (round % 7) {
                    thread::sleep(Duration::from_micros(1500));
                }
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == after {
                    stop.stop();
                }
                Ok(())
            };
            let workers = [2, 3, 4, 8][(round % 4) as usize];
            let report = Runner::new()
                .workers(workers)
                .window([16, 64, 1024][(round % 3) as usize])
                .stop_token(stop.clone())
                .run_task(&input, &task)
                .unwrap();
            if report.is_complete() {
                break;
            }
            stops += 1;
            assert!(stops < 100);
        }
        let counts = counts.lock().unwrap();
        assert_eq!(counts.len(), n, "round {round}");
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: {:?}",
            &twice[..twice.len().min(10)]
        );
    }
}

#[test]
fn streams_shards_failures_and_stops_keep_records_and_events_exact() {
    let _serial = serial();
    use std::sync::Mutex;
    for round in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let n = 20_000u64;
        let input = input_with(dir.path(), n as usize);
        let ckpt = dir.path().join("c.ckpt");
        let count = 1 + round % 3;
        let index = round % count;
        let owned = |l: u64| (l - 1) % count == index;
        let failing = |l: u64| l % 1013 == 5;
        let ok_runs = Mutex::new(BTreeMap::<u64, u32>::new());
        let done_events = std::sync::Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
        let failed_events = std::sync::Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
        let mut stops = 0u64;
        let mut sum_done = 0;
        let mut sum_failed = 0;
        let stream = round % 2 == 0;
        loop {
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let after = 1_000 + (round * 7919 + stops * 104_729) % 6_000;
            let task = |line: &Line<'_>| -> Result<(), String> {
                assert!(owned(line.number()), "line {} not ours", line.number());
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == after {
                    stop.stop();
                }
                if line.number() % 499 == round % 5 {
                    thread::sleep(Duration::from_micros(1200));
                }
                if failing(line.number()) {
                    return Err("bad".into());
                }
                *ok_runs.lock().unwrap().entry(line.number()).or_default() += 1;
                Ok(())
            };
            let (done_events, failed_events) = (done_events.clone(), failed_events.clone());
            let observer = move |e: &linemark::Event<'_>| match e {
                linemark::Event::Done { line, .. } => {
                    *done_events.lock().unwrap().entry(*line).or_default() += 1
                }
                linemark::Event::Failed { line, .. } => {
                    *failed_events.lock().unwrap().entry(*line).or_default() += 1
                }
                _ => {}
            };
            let workers = [2, 3, 4, 8][(round % 4) as usize];
            let runner = Runner::new()
                .workers(workers)
                .window([16, 64, 1024][(round % 3) as usize])
                .retry(RetryPolicy::never())
                .shard(index, count)
                .observer(observer)
                .stop_token(stop.clone());
            let report = run_file_or_stream(runner, &input, &ckpt, stream.then_some(4096), &task);
            sum_done += report.done;
            sum_failed += report.failed;
            assert_finished_lines_ran_ok(
                &format!("round {round}"),
                &ckpt,
                &ok_runs.lock().unwrap(),
                owned,
            );
            if !report.stopped {
                break;
            }
            stops += 1;
            assert!(stops < 200);
        }
        let expect_ok: Vec<u64> = (1..=n).filter(|&l| owned(l) && !failing(l)).collect();
        let expect_f: Vec<u64> = (1..=n).filter(|&l| owned(l) && failing(l)).collect();
        let ok = ok_runs.lock().unwrap();
        assert_once_each(round, "ran ok", &ok, &expect_ok, &ckpt, n);
        let done = done_events.lock().unwrap();
        assert_once_each(round, "Done events", &done, &expect_ok, &ckpt, n);
        let failed = failed_events.lock().unwrap();
        assert_once_each(round, "Failed events", &failed, &expect_f, &ckpt, n);
        assert_eq!(sum_done, expect_ok.len() as u64);
        assert_eq!(sum_failed, expect_f.len() as u64);
    }
}

#[test]
fn long_lines_and_tiny_buffers_with_stops_keep_records_exact() {
    let _serial = serial();
    use std::sync::Mutex;
    for round in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let n = 8_000u64;
        let path = dir.path().join("input.txt");
        let long = |l: u64| l % 331 == (round % 13) || l % 997 == 1;
        let text: String = (1..=n)
            .map(|l| {
                if long(l) {
                    format!("{}{l}\n", "L".repeat(40))
                } else {
                    format!("i{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        let ckpt = dir.path().join("c.ckpt");
        let count = 1 + round % 2;
        let index = round % count;
        let owned = |l: u64| (l - 1) % count == index;
        let ok_runs = Mutex::new(BTreeMap::<u64, u32>::new());
        let failed_events = std::sync::Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
        let mut stops = 0u64;
        let stream = round % 2 == 0;
        let cap = [7usize, 16, 64, 4096][(round % 4) as usize];
        loop {
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let after = 300 + (round * 7919 + stops * 104_729) % 2_000;
            let task = |line: &Line<'_>| -> Result<(), String> {
                assert!(
                    owned(line.number()) && !long(line.number()),
                    "line {}",
                    line.number()
                );
                assert!(
                    line.raw()
                        .ends_with(format!("{}\n", line.number()).as_bytes()),
                    "bytes of {}",
                    line.number()
                );
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == after {
                    stop.stop();
                }
                if line.number() % 199 == round % 5 {
                    thread::sleep(Duration::from_micros(1200));
                }
                *ok_runs.lock().unwrap().entry(line.number()).or_default() += 1;
                Ok(())
            };
            let fe = failed_events.clone();
            let observer = move |e: &linemark::Event<'_>| {
                if let linemark::Event::Failed { line, .. } = e {
                    *fe.lock().unwrap().entry(*line).or_default() += 1
                }
            };
            let workers = [2, 3, 4, 8][(round % 4) as usize];
            let runner = Runner::new()
                .workers(workers)
                .window([16, 64, 1024][(round % 3) as usize])
                .max_line_len(30)
                .shard(index, count)
                .observer(observer)
                .stop_token(stop.clone());
            let report = run_file_or_stream(runner, &path, &ckpt, stream.then_some(cap), &task);
            assert_finished_lines_ran_ok(
                &format!("round {round}"),
                &ckpt,
                &ok_runs.lock().unwrap(),
                owned,
            );
            if !report.stopped {
                break;
            }
            stops += 1;
            assert!(stops < 300);
        }
        let expect_ok: Vec<u64> = (1..=n).filter(|&l| owned(l) && !long(l)).collect();
        let expect_f: Vec<u64> = (1..=n).filter(|&l| owned(l) && long(l)).collect();
        let ok = ok_runs.lock().unwrap();
        assert_once_each(round, "ran ok", &ok, &expect_ok, &ckpt, n);
        let failed = failed_events.lock().unwrap();
        assert_once_each(round, "Failed events", &failed, &expect_f, &ckpt, n);
    }
}

/// A stream whose writer sends line k+1 only once line k's task ran.
struct Lockstep {
    next: u64,
    n: u64,
    ran: std::sync::Arc<AtomicU64>,
    chunk: u64,
}

impl std::io::Read for Lockstep {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.next > self.n {
            return Ok(0);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ran.load(Ordering::SeqCst) + 1 < self.next {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "writer starved waiting for line {}",
                    self.next - 1
                )));
            }
            thread::yield_now();
        }
        let mut text = String::new();
        for _ in 0..self.chunk {
            if self.next > self.n {
                break;
            }
            text.push_str(&format!("x{}\n", self.next));
            self.next += 1;
        }
        assert!(text.len() <= buf.len());
        buf[..text.len()].copy_from_slice(text.as_bytes());
        Ok(text.len())
    }
}

#[test]
fn a_lockstep_stream_never_waits_with_lines_held() {
    let _serial = serial();
    for workers in [2, 4] {
        for chunk in [1, 2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let ran = std::sync::Arc::new(AtomicU64::new(0));
            let reader = std::io::BufReader::new(Lockstep {
                next: 1,
                n: 3000,
                ran: ran.clone(),
                chunk,
            });
            let task = |line: &Line<'_>| -> Result<(), String> {
                ran.fetch_max(line.number(), Ordering::SeqCst);
                Ok(())
            };
            let report = Runner::new()
                .workers(workers)
                .run_reader_task(reader, dir.path().join("c"), &task)
                .unwrap();
            assert_eq!(report.done, 3000);
        }
    }
}

/// A finished line reaches the runner (its Done event, its commit) within
/// the `write_delay` of 10 ms, even in a batch with a slow line (4 ms): a
/// batch hands back its finished lines once it has run 0.5 ms, so a line
/// waits at most for the next line of its batch, and results handed back
/// without a wake-up are picked up within 1 ms. (Before, a result could
/// wait for the runner's 20 ms tick.)
#[test]
fn finished_lines_are_settled_well_within_the_write_delay() {
    use std::sync::Mutex;
    let _serial = serial();
    for workers in [2usize, 4] {
        let probe = LatenessProbe::start();
        let dir = tempfile::tempdir().unwrap();
        let n = 20_000usize;
        let input = input_with(dir.path(), n);
        let finished: std::sync::Arc<Vec<Mutex<Option<Instant>>>> =
            std::sync::Arc::new((0..=n).map(|_| Mutex::new(None)).collect());
        let worst = std::sync::Arc::new(Mutex::new((Duration::ZERO, 0u64)));
        let (f2, w2) = (finished.clone(), worst.clone());
        let task = |line: &Line<'_>| -> Result<(), String> {
            if line.number() % 40 == 0 {
                thread::sleep(Duration::from_millis(4));
            } else {
                spin(Duration::from_micros(2));
            }
            *finished[line.number() as usize].lock().unwrap() = Some(Instant::now());
            Ok(())
        };
        let report = Runner::new()
            .workers(workers)
            .observer(move |e: &linemark::Event<'_>| {
                if let linemark::Event::Done { line, .. } = e {
                    let t = f2[*line as usize].lock().unwrap().unwrap();
                    let late = t.elapsed();
                    let mut w = w2.lock().unwrap();
                    if late > w.0 {
                        *w = (late, *line);
                    }
                }
            })
            .run_task(&input, &task)
            .unwrap();
        assert_eq!(report.done, n as u64);
        let (late, line) = *worst.lock().unwrap();
        let scheduler = probe.worst();
        assert!(
            late < Duration::from_millis(10) + scheduler,
            "workers {workers}: line {line} finished {late:?} before the runner saw it \
             (a thread woken up to {scheduler:?} late)"
        );
    }
}
