//! Benchmark 4: parallel scaling of the runner.
//!
//! - A task that sleeps 1 ms (a stand-in for I/O-bound work such as a
//!   download), 8 workers against 1, over 400 lines, with the default group
//!   commit. For reference, 8 plain threads sleeping 1 ms per line with no
//!   runner at all: the best 8 workers could do.
//! - Cheap tasks over 1,000,000 lines of 60 bytes: a no-op, and an FNV-1a
//!   hash over the line 20 times (about 1.2 µs, a stand-in for parsing or
//!   validating a record), with 1, 2, 8 and 32 workers, against a raw
//!   `read_until` loop that runs the task inline and rayon's `par_bridge`
//!   over the lines of a `BufRead` (no checkpoint: the best a thread pool
//!   does with the same lines and cores).
//!
//! Each run starts from a fresh checkpoint; the removal of the old one is
//! not measured. After criterion's figures, the goal ratios of the cheap
//! tasks are also timed alternately (see `common::paired`).

mod common;

use std::convert::Infallible;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use linemark::{Line, Runner};
use rayon::iter::{ParallelBridge, ParallelIterator};

const LINES: u64 = 400;
const WORK: Duration = Duration::from_millis(1);

const CHEAP_LINES: u64 = 1_000_000;
const BUFFER: usize = 64 * 1024;

fn sleep_task(_line: &Line<'_>) -> Result<(), Infallible> {
    std::thread::sleep(WORK);
    Ok(())
}

/// FNV-1a over the line, 20 times: about 1.2 µs of CPU for 60 bytes.
fn fnv20(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..20 {
        for &byte in black_box(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A cheap task, as the runner and the baselines call it.
#[derive(Clone, Copy)]
enum Cheap {
    NoOp,
    Fnv,
}

impl Cheap {
    fn name(self) -> &'static str {
        match self {
            Cheap::NoOp => "noop_1m_lines",
            Cheap::Fnv => "fnv20_1m_lines",
        }
    }

    #[inline]
    fn apply(self, bytes: &[u8], sum: &AtomicU64) {
        match self {
            Cheap::NoOp => {
                black_box(bytes);
            }
            Cheap::Fnv => {
                sum.fetch_add(fnv20(bytes) & 1, Ordering::Relaxed);
            }
        }
    }
}

fn parallel(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");

    let mut group = c.benchmark_group("sleep_1ms_400_lines");
    group
        .throughput(Throughput::Elements(LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    for workers in [1, 8] {
        group.bench_with_input(
            BenchmarkId::new("runner_workers", workers),
            &workers,
            |b, &workers| b.iter_custom(|iters| run_many(iters, &input, &checkpoint, workers)),
        );
    }

    group.bench_function("raw_8_threads", |b| {
        b.iter(|| {
            let next = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        while next.fetch_add(1, Ordering::Relaxed) < LINES {
                            std::thread::sleep(WORK);
                        }
                    });
                }
            });
            assert_eq!(next.load(Ordering::Relaxed), LINES + 8);
        });
    });

    group.finish();
}

fn run_many(iters: u64, input: &Path, checkpoint: &Path, workers: usize) -> Duration {
    let mut measured = Duration::ZERO;
    for _ in 0..iters {
        common::remove_if_present(checkpoint);
        let started = Instant::now();
        let report = Runner::new()
            .checkpoint_path(checkpoint)
            .workers(workers)
            .run_task(input, &sleep_task)
            .unwrap();
        assert_eq!((report.done, report.failed), (LINES, 0));
        assert!(report.is_complete());
        measured += started.elapsed();
    }
    measured
}

/// The task inline in a `read_until` loop: no checkpoint, one thread.
fn cheap_raw(input: &Path, task: Cheap) -> Duration {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut buf = Vec::new();
    let sum = AtomicU64::new(0);
    let mut lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        task.apply(&buf, &sum);
        lines += 1;
    }
    assert_eq!(lines, CHEAP_LINES);
    started.elapsed()
}

/// rayon's `par_bridge` over the lines of a `BufRead`, on rayon's global
/// pool (a thread per core): no checkpoint, lines in any order.
fn cheap_rayon(input: &Path, task: Cheap) -> Duration {
    let started = Instant::now();
    let reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let sum = AtomicU64::new(0);
    let lines = AtomicU64::new(0);
    reader.split(b'\n').par_bridge().for_each(|line| {
        task.apply(&line.unwrap(), &sum);
        lines.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(lines.load(Ordering::Relaxed), CHEAP_LINES);
    started.elapsed()
}

/// The runner with `workers` workers, from a fresh checkpoint.
fn cheap_runner(input: &Path, checkpoint: &Path, task: Cheap, workers: usize) -> Duration {
    common::remove_if_present(checkpoint);
    let sum = AtomicU64::new(0);
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(checkpoint)
        .workers(workers)
        .run(input, |line| {
            task.apply(line.raw(), &sum);
            Ok(())
        })
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (CHEAP_LINES, 0));
    assert!(report.is_complete());
    elapsed
}

fn total(iters: u64, mut once: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| once()).sum()
}

fn cheap(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, CHEAP_LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");

    for task in [Cheap::NoOp, Cheap::Fnv] {
        let mut group = c.benchmark_group(task.name());
        group
            .throughput(Throughput::Elements(CHEAP_LINES))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.bench_function("raw_read_until", |b| {
            b.iter_custom(|iters| total(iters, || cheap_raw(&input, task)));
        });
        for workers in [1, 2, 8, 32] {
            group.bench_with_input(
                BenchmarkId::new("runner_workers", workers),
                &workers,
                |b, &workers| {
                    b.iter_custom(|iters| {
                        total(iters, || cheap_runner(&input, &checkpoint, task, workers))
                    });
                },
            );
        }
        group.bench_function("rayon_par_bridge", |b| {
            b.iter_custom(|iters| total(iters, || cheap_rayon(&input, task)));
        });
        group.finish();
    }

    // The goals, timed alternately: each ratio is the candidate's speed as
    // a fraction of the baseline's.
    let (input, checkpoint) = (input.as_path(), checkpoint.as_path());
    let runner = |task, workers| move || cheap_runner(input, checkpoint, task, workers);
    let rounds = 7;
    common::paired(
        "fnv20: workers(2) against workers(1)",
        rounds,
        runner(Cheap::Fnv, 1),
        runner(Cheap::Fnv, 2),
    );
    common::paired(
        "fnv20: workers(2) against rayon par_bridge",
        rounds,
        || cheap_rayon(input, Cheap::Fnv),
        runner(Cheap::Fnv, 2),
    );
    common::paired(
        "fnv20: workers(8) against workers(2)",
        rounds,
        runner(Cheap::Fnv, 2),
        runner(Cheap::Fnv, 8),
    );
    common::paired(
        "fnv20: workers(32) against workers(2)",
        rounds,
        runner(Cheap::Fnv, 2),
        runner(Cheap::Fnv, 32),
    );
    for workers in [2, 8] {
        common::paired(
            &format!("noop: workers({workers}) against workers(1)"),
            rounds,
            runner(Cheap::NoOp, 1),
            runner(Cheap::NoOp, workers),
        );
    }
}

criterion_group!(benches, parallel, cheap);
criterion_main!(benches);
