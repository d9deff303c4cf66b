//! Review of the batched parallel runner (a77912e..b6fd4bf): regressions
//! shown as failing tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use linemark::{Line, RetryPolicy, Runner, StopToken};

fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    let text: String = (1..=lines).map(|n| format!("item-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// `StopToken::stop` promises "waits in progress (retry backoff) end at
/// once". A cheap task's batches run inline on the runner's thread with
/// `run_stop` as the backoff sleeper (drive.rs `batch.run(.., &run.shared
/// .run_stop)`), and only the runner's own loop passes the user's stop on to
/// `run_stop`: a stop during that backoff waits out the whole delay.
#[test]
fn a_stop_ends_a_backoff_on_the_runner_thread_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 300_000);
    let main = thread::current().id();
    let stop = StopToken::new();
    let triggered = AtomicBool::new(false);
    let stopped_at = std::sync::Mutex::new(None::<Instant>);
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() > 20_000
            && thread::current().id() == main
            && !triggered.swap(true, Ordering::SeqCst)
        {
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
    assert!(
        triggered.load(Ordering::SeqCst),
        "no line ran on the runner's thread (inline path not taken)"
    );
    let late = Instant::now() - stopped_at.lock().unwrap().unwrap();
    assert!(report.stopped, "{report:?}");
    assert!(
        late < Duration::from_secs(2),
        "the run went on {late:?} after its stop token fired: the backoff was not cut short"
    );
}

/// With `window(16).workers(8)` the sizer's maximum batch is 1 line, so
/// `Sizer::inline` (task * len < 20 us) holds for any task under 20 us a
/// line: the whole run goes to the runner's thread and the 8 workers idle.
#[test]
fn a_5us_task_with_8_workers_runs_on_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 20_000);
    let main = thread::current().id();
    let on_main = AtomicU64::new(0);
    let task = |_: &Line<'_>| -> Result<(), String> {
        if thread::current().id() == main {
            on_main.fetch_add(1, Ordering::Relaxed);
        }
        spin(Duration::from_micros(5));
        Ok(())
    };
    let report = Runner::new()
        .workers(8)
        .window(16)
        .run_task(&input, &task)
        .unwrap();
    assert_eq!(report.done, 20_000);
    let on_main = on_main.load(Ordering::Relaxed);
    assert!(
        on_main < 10_000,
        "{on_main} of 20000 lines ran on the runner's thread, not on the 8 workers"
    );
}

/// Same with the default window and 32 workers: the maximum batch is 16
/// lines, so a 1 us task runs inline, single-threaded.
#[test]
fn a_1us_task_with_32_workers_runs_on_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 100_000);
    let main = thread::current().id();
    let on_main = AtomicU64::new(0);
    let task = |_: &Line<'_>| -> Result<(), String> {
        if thread::current().id() == main {
            on_main.fetch_add(1, Ordering::Relaxed);
        }
        spin(Duration::from_micros(1));
        Ok(())
    };
    let report = Runner::new().workers(32).run_task(&input, &task).unwrap();
    assert_eq!(report.done, 100_000);
    let on_main = on_main.load(Ordering::Relaxed);
    assert!(
        on_main < 50_000,
        "{on_main} of 100000 lines ran on the runner's thread, not on the 32 workers"
    );
}

/// `halt_after_failures(1)`: a batch runs every line to its end after a
/// failure (the halt only applies when the batch is settled), so one halt
/// records a whole batch of failures (up to capacity / (2 * workers) = 256
/// lines here); before the change at most the 2 * workers lines in flight.
#[test]
fn halt_after_one_failure_does_not_record_a_whole_batch_of_failures() {
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
