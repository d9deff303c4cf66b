//! The batched runner at its edges: hand-backs of finished lines with
//! shards and tasks that turn slow, halts from a worker, panics after
//! hand-backs, an idle runner's wake-ups, and stress tests of every promise
//! at once (stops, halts, shards, failures, splits, tiny windows).

mod batch_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use linemark::{Event, Line, RetryPolicy, Runner, StopToken};

use batch_common::lateness::LatenessProbe;
use batch_common::{assert_finished_lines_ran_ok, input_with, run_file_or_stream, serial, spin};

/// Runs a task that is cheap (1 µs) up to line `slow_from`, so batches
/// grow to their largest, then 300 µs a line; returns the worst time
/// between a line's task returning and its Done event, that line, and the
/// worst lateness of a thread woken by the scheduler meanwhile (see
/// `LatenessProbe`).
fn worst_lateness(shard: Option<(u64, u64)>) -> (Duration, u64, Duration) {
    worst_lateness_with(shard, Duration::from_micros(300), 1_500)
}

fn worst_lateness_with(
    shard: Option<(u64, u64)>,
    slow: Duration,
    slow_lines: u64,
) -> (Duration, u64, Duration) {
    let probe = LatenessProbe::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 24_000usize;
    let slow_from = 20_000u64;
    let input = input_with(dir.path(), n);
    let finished: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..=n).map(|_| Mutex::new(None)).collect());
    let worst = Arc::new(Mutex::new((Duration::ZERO, 0u64)));
    let (f2, w2) = (finished.clone(), worst.clone());
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() >= slow_from && line.number() < slow_from + slow_lines {
            spin(slow);
        } else {
            spin(Duration::from_micros(1));
        }
        *finished[line.number() as usize].lock().unwrap() = Some(Instant::now());
        Ok(())
    };
    let mut runner = Runner::new().workers(2).observer(move |e: &Event<'_>| {
        if let Event::Done { line, .. } = e {
            let t = f2[*line as usize].lock().unwrap().unwrap();
            let late = t.elapsed();
            let mut w = w2.lock().unwrap();
            if late > w.0 {
                *w = (late, *line);
            }
        }
    });
    if let Some((index, count)) = shard {
        runner = runner.shard(index, count);
    }
    runner.run_task(&input, &task).unwrap();
    let (late, line) = *worst.lock().unwrap();
    (late, line, probe.worst())
}

/// A batch hands back its finished lines, counting only the lines it runs
/// when it decides to read the clock: with `shard(_, 2)`, a batch whose own
/// lines are every other one still hands back when the task turns slow
/// (300 µs a line), and a line is recorded within the write delay. (When
/// the clock was read at line indices that were multiples of 8, counting
/// the other shard's lines, such a batch never handed back: 31 ms.)
#[test]
fn a_sharded_batch_hands_back_its_finished_lines_when_the_task_slows() {
    let _serial = serial();
    let (plain, plain_line, scheduler) = worst_lateness(None);
    assert!(
        plain < Duration::from_millis(10) + scheduler,
        "without shards: line {plain_line} recorded {plain:?} after it finished \
         (a thread woken up to {scheduler:?} late)"
    );
    for index in [0, 1] {
        let (late, line, scheduler) = worst_lateness(Some((index, 2)));
        assert!(
            late < Duration::from_millis(10) + scheduler,
            "shard({index}, 2): line {line} recorded {late:?} after it finished \
             (without shards: {plain:?}; a thread woken up to {scheduler:?} late)"
        );
    }
}

/// README: a batch reads the clock before every line of 10 µs or more and
/// before every eighth cheaper one, so when a cheap task turns slow (2 ms a
/// line) inside a large batch, at most 8 slow lines run before the finished
/// ones are handed back. (Without hand-backs they would wait for the whole
/// batch: up to 120 slow lines here.)
/// Time for the runner's thread to get a core from two busy workers.
const SCHEDULING: Duration = Duration::from_millis(15);

#[test]
fn a_batch_whose_task_turns_slow_hands_back_within_eight_lines() {
    let _serial = serial();
    let (late, line, scheduler) = worst_lateness_with(None, Duration::from_millis(2), 120);
    assert!(
        late < 8 * Duration::from_millis(2) + SCHEDULING + scheduler,
        "line {line} was recorded {late:?} after it finished (2 ms lines; a thread woken up \
         to {scheduler:?} late)"
    );
}

#[derive(Default)]
struct Counts {
    started: u64,
    done: BTreeMap<u64, u32>,
    failed: BTreeMap<u64, u32>,
    retrying: u64,
}

/// Random stops, halts, shards, transient and permanent failures, slow
/// lines (splits), many workers and tiny windows: every promise at once.
fn stress(rounds: std::ops::Range<u64>, n: u64) {
    for round in rounds {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), n as usize);
        let ckpt = dir.path().join("c.ckpt");
        let count = [1, 1, 2, 3][(round % 4) as usize];
        let index = (round / 4) % count;
        let owned = |l: u64| (l - 1) % count == index;
        let permanent = |l: u64| l % 409 == round % 11;
        let transient = |l: u64| l % 97 == round % 5;
        // Single slow lines, or bursts of them after cheap stretches (big
        // batches split many times).
        let burst = round % 2 == 1;
        let slow = |l: u64| {
            if burst {
                (l + round * 37) % 2_000 >= 1_900
            } else {
                l % 151 == round % 3
            }
        };
        let workers = [2usize, 3, 8, 32][(round % 4) as usize];
        let window = [1usize, 2, 3, 16, 64, 1024, 256][(round % 7) as usize];
        let halt = (round % 3 == 0).then_some(1 + round % 4);
        let stream = round % 5 == 1;
        let failed_once = Mutex::new(BTreeSet::<u64>::new());
        let ok_runs = Mutex::new(BTreeMap::<u64, u32>::new());
        let mut all = Counts::default();
        let (mut sum_done, mut sum_failed) = (0, 0);
        let mut runs = 0u64;
        let what = format!(
            "round {round}: workers {workers}, window {window}, shard {index}/{count}, halt {halt:?}, stream {stream}"
        );
        loop {
            runs += 1;
            assert!(runs < 400, "{what}: no end");
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let calls = AtomicU64::new(0);
            let after = 200 + (round * 7919 + runs * 104_729) % 2_500;
            let task = |line: &Line<'_>| -> Result<(), String> {
                let l = line.number();
                assert!(owned(l), "{what}: line {l} not ours");
                calls.fetch_add(1, Ordering::SeqCst);
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == after {
                    stop.stop();
                }
                if slow(l) {
                    thread::sleep(Duration::from_micros(if burst { 400 } else { 1500 }));
                } else {
                    spin(Duration::from_nanos(300));
                }
                if permanent(l) {
                    return Err(linemark::permanent("bad").to_string());
                }
                if transient(l) && failed_once.lock().unwrap().insert(l) {
                    return Err("once".into());
                }
                *ok_runs.lock().unwrap().entry(l).or_default() += 1;
                Ok(())
            };
            let counts = Arc::new(Mutex::new(Counts::default()));
            let c2 = counts.clone();
            let observer = move |e: &Event<'_>| {
                let mut c = c2.lock().unwrap();
                match e {
                    Event::Started { .. } => c.started += 1,
                    Event::Done { line, .. } => *c.done.entry(*line).or_default() += 1,
                    Event::Failed { line, .. } => *c.failed.entry(*line).or_default() += 1,
                    Event::Retrying { .. } => c.retrying += 1,
                    _ => {}
                }
            };
            let mut runner = Runner::new()
                .workers(workers)
                .window(window)
                .retry(
                    RetryPolicy::new()
                        .max_attempts(3)
                        .initial_delay(Duration::from_micros(300))
                        .max_delay(Duration::from_micros(300))
                        .jitter(false),
                )
                .shard(index, count)
                .observer(observer)
                .stop_token(stop.clone());
            if let Some(k) = halt {
                runner = runner.halt_after_failures(k);
            }
            let report = run_file_or_stream(runner, &input, &ckpt, stream.then_some(4096), &task);
            let c = std::mem::take(&mut *counts.lock().unwrap());
            let what = format!("{what}, run {runs}: {report:?}");
            assert_finished_lines_ran_ok(&what, &ckpt, &ok_runs.lock().unwrap(), owned);
            assert_eq!(
                report.done,
                c.done.values().map(|&v| v as u64).sum::<u64>(),
                "{what}: done vs Done events"
            );
            assert_eq!(
                report.failed,
                c.failed.values().map(|&v| v as u64).sum::<u64>(),
                "{what}: failed vs Failed events"
            );
            assert_eq!(
                calls.load(Ordering::SeqCst),
                c.started + report.retried,
                "{what}: task calls vs Started + retried"
            );
            assert!(
                report.retried <= c.retrying,
                "{what}: retried vs Retrying events"
            );
            if let Some(k) = halt {
                assert!(
                    report.failed < k + workers as u64,
                    "{what}: {} failures recorded with halt_after_failures({k})",
                    report.failed
                );
            }
            sum_done += report.done;
            sum_failed += report.failed;
            for (l, v) in c.done {
                *all.done.entry(l).or_default() += v;
            }
            for (l, v) in c.failed {
                *all.failed.entry(l).or_default() += v;
            }
            if !report.stopped {
                break;
            }
        }
        eprintln!("{what}: {runs} runs");
        let expect_ok: Vec<u64> = (1..=n).filter(|&l| owned(l) && !permanent(l)).collect();
        let expect_f: Vec<u64> = (1..=n).filter(|&l| owned(l) && permanent(l)).collect();
        let ok = ok_runs.lock().unwrap();
        assert_eq!(
            ok.keys().copied().collect::<Vec<_>>(),
            expect_ok,
            "{what}: ran ok"
        );
        let twice: Vec<_> = ok.iter().filter(|(_, c)| **c != 1).take(10).collect();
        assert!(twice.is_empty(), "{what}: ran ok more than once: {twice:?}");
        assert_eq!(
            all.done.keys().copied().collect::<Vec<_>>(),
            expect_ok,
            "{what}: Done events"
        );
        assert!(all.done.values().all(|&c| c == 1), "{what}: Done twice");
        assert_eq!(
            all.failed.keys().copied().collect::<Vec<_>>(),
            expect_f,
            "{what}: Failed events"
        );
        assert!(all.failed.values().all(|&c| c == 1), "{what}: Failed twice");
        assert_eq!(
            (sum_done, sum_failed),
            (expect_ok.len() as u64, expect_f.len() as u64),
            "{what}"
        );
        let snap = linemark::Checkpoint::inspect(&ckpt).unwrap();
        assert!(
            snap.done_beyond.is_empty(),
            "{what}: {:?}",
            snap.done_beyond
        );
        assert_eq!(snap.position.line(), n, "{what}");
    }
}

#[test]
fn stress_stops_halts_splits_and_retries_keep_every_promise_a() {
    let _serial = serial();
    stress(0..14, 6_000);
}

#[test]
fn stress_stops_halts_splits_and_retries_keep_every_promise_b() {
    let _serial = serial();
    stress(14..28, 6_000);
}

/// The same, for as many rounds as `LINEMARK_TEST_ROUNDS` says (ignored: long).
#[test]
#[ignore]
fn stress_many_rounds() {
    let _serial = serial();
    let rounds: u64 = std::env::var("LINEMARK_TEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let start: u64 = std::env::var("LINEMARK_TEST_START")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(28);
    stress(start..start + rounds, 12_000);
}

/// `halt_after_failures`: the worker that fails the last line a halt
/// allows stops the run at once, and the halt ends backoff waits at once,
/// on a worker or on the runner's thread (where a task under 30 ns a line
/// runs, in a release build): the run does not go on for the backoff (5 s
/// here), and the line waiting is not retried after the halt.
#[test]
fn a_halt_by_a_worker_ends_a_backoff_at_once_wherever_the_line_runs() {
    let _serial = serial();
    halt_once();
}

/// Line 6000 fails once and waits a 5 s backoff; line 3 then fails for
/// good, which halts the run.
fn halt_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 10_000);
    let main = thread::current().id();
    let b_failed = AtomicBool::new(false);
    let b_on_main = AtomicBool::new(false);
    let b_attempts = AtomicU64::new(0);
    let halted_at = Mutex::new(None::<Instant>);
    let task = |line: &Line<'_>| -> Result<(), linemark::BoxError> {
        match line.number() {
            3 => {
                let start = Instant::now();
                while !b_failed.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(3) {
                    thread::sleep(Duration::from_micros(200));
                }
                *halted_at.lock().unwrap() = Some(Instant::now());
                Err(linemark::permanent(std::io::Error::other("down")))
            }
            6_000 => {
                if b_attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    b_on_main.store(thread::current().id() == main, Ordering::SeqCst);
                    b_failed.store(true, Ordering::SeqCst);
                    return Err(std::io::Error::other("busy").into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    let report = Runner::new()
        .workers(2)
        .window(8_192)
        .halt_after_failures(1)
        .retry(
            RetryPolicy::new()
                .max_attempts(2)
                .initial_delay(Duration::from_secs(5))
                .max_delay(Duration::from_secs(5))
                .jitter(false),
        )
        .run(&input, |line| task(line))
        .unwrap();
    let after_halt = halted_at.lock().unwrap().unwrap().elapsed();
    let on_main = b_on_main.load(Ordering::SeqCst);
    assert!(report.halted, "{report:?}");
    assert!(
        after_halt < Duration::from_secs(1),
        "the run went on {after_halt:?} after a worker halted it; line 6000 ran {} times \
         (on the runner's thread: {on_main}); {report:?}",
        b_attempts.load(Ordering::SeqCst)
    );
}

/// Panics in the observer on a worker (Started, Retrying) and in the task,
/// in batches that split (slow lines, retries), with stops and reruns:
/// each such line fails once, every other line is done once, and no run
/// hangs or loses a result.
#[test]
fn panics_on_workers_after_splits_fail_their_line_once() {
    let _serial = serial();
    for round in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        let n = 8_000u64;
        let input = input_with(dir.path(), n as usize);
        let ckpt = dir.path().join("c.ckpt");
        let observer_started = |l: u64| l % 500 == 7;
        let observer_retrying = |l: u64| l % 500 == 9;
        let task_panics = |l: u64| l % 500 == 11;
        let bad = |l: u64| observer_started(l) || observer_retrying(l) || task_panics(l);
        let ok_runs = Mutex::new(BTreeMap::<u64, u32>::new());
        let failed_once = Mutex::new(BTreeSet::<u64>::new());
        let failed_events = Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
        let mut runs = 0;
        loop {
            runs += 1;
            assert!(runs < 100);
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let after = 500 + (round * 7919 + runs * 104_729) % 3_000;
            let task = |line: &Line<'_>| -> Result<(), String> {
                let l = line.number();
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == after {
                    stop.stop();
                }
                if l % 97 == 3 {
                    thread::sleep(Duration::from_micros(1500));
                } else {
                    spin(Duration::from_nanos(500));
                }
                if task_panics(l) {
                    panic!("task panics on {l}");
                }
                if observer_retrying(l) && failed_once.lock().unwrap().insert(l) {
                    return Err("once".into());
                }
                *ok_runs.lock().unwrap().entry(l).or_default() += 1;
                Ok(())
            };
            let fe = failed_events.clone();
            let observer = move |e: &Event<'_>| match e {
                Event::Started { line, .. } if observer_started(*line) => {
                    panic!("observer on {line}")
                }
                Event::Retrying { line, .. } if observer_retrying(*line) => {
                    panic!("observer on retry of {line}")
                }
                Event::Failed { line, .. } => *fe.lock().unwrap().entry(*line).or_default() += 1,
                _ => {}
            };
            let report = Runner::new()
                .workers([2, 3, 8][(round % 3) as usize])
                .window([64, 1024][(round % 2) as usize])
                .retry(
                    RetryPolicy::new()
                        .max_attempts(3)
                        .initial_delay(Duration::from_micros(200))
                        .jitter(false),
                )
                .observer(observer)
                .stop_token(stop.clone())
                .checkpoint_path(&ckpt)
                .run_task(&input, &task)
                .unwrap();
            assert_finished_lines_ran_ok(
                &format!("round {round}"),
                &ckpt,
                &ok_runs.lock().unwrap(),
                |l| !bad(l),
            );
            if !report.stopped {
                break;
            }
        }
        // A line whose first attempt failed just as a stop came is left
        // unrecorded, with no Retrying event, and its next run succeeds: a
        // line of `observer_retrying` either fails or is done, once.
        let ok = ok_runs.lock().unwrap();
        let fe = failed_events.lock().unwrap();
        let failed_lines = |l: u64| {
            observer_started(l) || task_panics(l) || (observer_retrying(l) && fe.contains_key(&l))
        };
        let expect_ok: Vec<u64> = (1..=n).filter(|&l| !failed_lines(l)).collect();
        let expect_f: Vec<u64> = (1..=n).filter(|&l| failed_lines(l)).collect();
        assert_eq!(
            ok.keys().copied().collect::<Vec<_>>(),
            expect_ok,
            "round {round}"
        );
        assert!(ok.values().all(|&c| c == 1), "round {round}");
        assert_eq!(
            fe.keys().copied().collect::<Vec<_>>(),
            expect_f,
            "round {round}"
        );
        assert!(fe.values().all(|&c| c == 1), "round {round}");
        let snap = linemark::Checkpoint::inspect(&ckpt).unwrap();
        assert_eq!((snap.position.line(), snap.done_beyond.len()), (n, 0));
    }
}

/// `halt_after_failures(k)` with failures in every batch: at most
/// k + (workers - 1) failures are recorded, and reruns lose nothing.
#[test]
fn halts_with_failures_in_every_batch_stay_within_the_bound() {
    let _serial = serial();
    for (round, (workers, window, k)) in [
        (2usize, 1024usize, 1u64),
        (8, 1024, 3),
        (32, 1024, 2),
        (32, 3, 1),
        (8, 64, 5),
        (3, 2, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let n = 6_000u64;
        let input = input_with(dir.path(), n as usize);
        let failing = |l: u64| l > 5_400 && l % 3 == 0;
        let ok_runs = Mutex::new(BTreeMap::<u64, u32>::new());
        let mut total_failed = 0;
        let mut runs = 0;
        loop {
            runs += 1;
            assert!(runs < 2_000);
            let task = |line: &Line<'_>| -> Result<(), linemark::BoxError> {
                let l = line.number();
                if l % 211 == 0 {
                    thread::sleep(Duration::from_micros(700));
                }
                if failing(l) {
                    return Err(linemark::permanent(std::io::Error::other("no")));
                }
                *ok_runs.lock().unwrap().entry(l).or_default() += 1;
                Ok(())
            };
            let report = Runner::new()
                .workers(workers)
                .window(window)
                .halt_after_failures(k)
                .run(&input, |l| task(l))
                .unwrap();
            assert!(
                report.failed < k + workers as u64,
                "round {round}: {} failed with k {k}, {workers} workers",
                report.failed
            );
            total_failed += report.failed;
            if !report.stopped {
                break;
            }
        }
        let ok = ok_runs.lock().unwrap();
        assert_eq!(
            ok.len() as u64,
            (1..=n).filter(|&l| !failing(l)).count() as u64,
            "round {round}"
        );
        assert!(ok.values().all(|&c| c == 1), "round {round}");
        assert_eq!(
            total_failed,
            (1..=n).filter(|&l| failing(l)).count() as u64,
            "round {round}"
        );
    }
}

fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// With a slow task (100 ms a line, 4 workers), the runner's thread has
/// nothing to do between results: it sleeps until one comes (every result
/// of a one-line batch wakes it), instead of waking every millisecond to
/// look for results handed back without a wake-up, which only batches of
/// several lines do.
#[test]
fn an_idle_runner_does_not_poll_every_millisecond() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 16);
    let before = voluntary_switches();
    let started = Instant::now();
    let report = Runner::new()
        .workers(4)
        .run(&input, |_| {
            thread::sleep(Duration::from_millis(100));
            Ok(())
        })
        .unwrap();
    let wall = started.elapsed();
    let wakeups = voluntary_switches() - before;
    assert_eq!(report.done, 16);
    assert!(
        wakeups < 100,
        "the runner's thread woke {wakeups} times in {wall:?} for 16 results"
    );
}

/// Stops, halts and transient failures with a task cheap enough to run on
/// the runner's thread (in a release build): records and counts exact.
/// Ignored: meant for `cargo test --release -- --ignored`.
#[test]
#[ignore]
fn stress_inline_release() {
    let _serial = serial();
    let rounds: u64 = std::env::var("LINEMARK_TEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let n = 200_000u64;
        let input = input_with(dir.path(), n as usize);
        let ckpt = dir.path().join("c.ckpt");
        let ok: Vec<std::sync::atomic::AtomicU32> = (0..=n).map(|_| Default::default()).collect();
        let failed_once: Vec<AtomicBool> = (0..=n).map(|_| Default::default()).collect();
        let permanent = |l: u64| l % 20_011 == round % 7;
        let transient = |l: u64| l % 30_011 == 11 + round % 5;
        let workers = [2usize, 3, 8][(round % 3) as usize];
        let halt = (round % 3 == 1).then_some(1 + round % 2);
        let main = thread::current().id();
        let on_main = AtomicU64::new(0);
        let mut runs = 0u64;
        let (mut sum_done, mut sum_failed) = (0, 0);
        loop {
            runs += 1;
            assert!(runs < 500);
            let stop = StopToken::new();
            let ran = AtomicU64::new(0);
            let after = 20_000 + (round * 7919 + runs * 104_729) % 150_000;
            let task = |line: &Line<'_>| -> Result<(), linemark::BoxError> {
                let l = line.number();
                if ran.fetch_add(1, Ordering::Relaxed) + 1 == after {
                    stop.stop();
                }
                if permanent(l)
                    || (transient(l) && !failed_once[l as usize].swap(true, Ordering::Relaxed))
                {
                    if thread::current().id() == main {
                        on_main.fetch_add(1, Ordering::Relaxed);
                    }
                    if permanent(l) {
                        return Err(linemark::permanent(std::io::Error::other("no")));
                    }
                    return Err(std::io::Error::other("once").into());
                }
                ok[l as usize].fetch_add(1, Ordering::Relaxed);
                Ok(())
            };
            let mut runner = Runner::new()
                .workers(workers)
                .retry(
                    RetryPolicy::new()
                        .max_attempts(3)
                        .initial_delay(Duration::from_micros(300))
                        .jitter(false),
                )
                .stop_token(stop.clone())
                .checkpoint_path(&ckpt);
            if let Some(k) = halt {
                runner = runner.halt_after_failures(k);
            }
            let report = runner.run(&input, |l| task(l)).unwrap();
            if let Some(k) = halt {
                assert!(
                    report.failed < k + workers as u64,
                    "round {round}: {report:?}"
                );
            }
            let snap = linemark::Checkpoint::inspect(&ckpt).unwrap();
            let failed: BTreeSet<u64> = linemark::Checkpoint::inspect_failed(&ckpt)
                .unwrap()
                .map(|f| f.unwrap().line())
                .collect();
            for l in (1..=snap.position.line()).filter(|l| !failed.contains(l)) {
                assert!(
                    ok[l as usize].load(Ordering::Relaxed) > 0,
                    "round {round}: line {l} never ran ok"
                );
            }
            for l in &snap.done_beyond {
                assert!(
                    ok[*l as usize].load(Ordering::Relaxed) > 0,
                    "round {round}: line {l} never ran ok"
                );
            }
            sum_done += report.done;
            sum_failed += report.failed;
            if !report.stopped {
                break;
            }
        }
        let bad: Vec<u64> = (1..=n)
            .filter(|&l| (ok[l as usize].load(Ordering::Relaxed) != 1) != permanent(l))
            .take(10)
            .collect();
        assert!(bad.is_empty(), "round {round}: {bad:?}");
        let expect_f = (1..=n).filter(|&l| permanent(l)).count() as u64;
        assert_eq!(
            (sum_done, sum_failed),
            (n - expect_f, expect_f),
            "round {round}"
        );
        eprintln!(
            "round {round}: {runs} runs, failures on the runner's thread: {}",
            on_main.load(Ordering::Relaxed)
        );
    }
}
