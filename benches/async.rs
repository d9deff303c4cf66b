//! Benchmark 7: the async runner (`Runner::run_async`, feature `tokio`).
//!
//! - I/O-bound lines: 10,000 lines whose task awaits a 10 ms tokio timer,
//!   with `concurrency(1000)`, against `futures_util`'s
//!   `buffer_unordered(1000)` over the same lines of the same file, each
//!   mapped to the same future, with no checkpoint: what a plain stream does
//!   with as many timers in flight. Both take at least 10 rounds of 10 ms,
//!   100 ms, plus the timer's rounding up to the next millisecond. The goal:
//!   the runner at 0.9 of the stream's speed or better.
//! - A no-op async task over 1,000,000 lines of 60 bytes, with the default
//!   concurrency and with `concurrency(1)`, against the sync runner with one
//!   worker (`Runner::run`) and a raw `read_until` loop: what the async
//!   machinery costs per line when the task costs nothing. No goal; the
//!   honest figure.
//!
//! What awaits runs on a multi-thread tokio runtime (a worker per core) and
//! on a current-thread one, each built once, outside the measured time; a
//! run is one `block_on`. Each run of the runner starts from a fresh
//! checkpoint; the removal of the old one is not measured.
//!
//! After criterion's figures, the pairs that matter are timed alternately
//! (see `common::paired`). Read the printed "median ratio
//! baseline/candidate" as the runner's throughput as a fraction of the
//! baseline's: 1.0 is as fast, 0.9 takes 1/0.9 = 1.11 times as long, above
//! 1.0 is faster.
//!
//! The peak memory of the timer run is measured by `benches/async_memory.sh`,
//! which runs this binary with `LINEMARK_ASYNC_RSS` set: one workload, once,
//! instead of criterion (see `rss_main`).

mod common;

use std::ffi::OsString;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use futures_util::{StreamExt, stream};
use linemark::{BoxError, OwnedLine, Runner};
use tokio::runtime::Runtime;

const SLEEP_LINES: u64 = 10_000;
const SLEEP: Duration = Duration::from_millis(10);
const CONCURRENCY: usize = 1000;

const NO_OP_LINES: u64 = 1_000_000;
const BUFFER: usize = 64 * 1024;

/// The environment variable that makes the binary run one workload for
/// `benches/async_memory.sh`.
const RSS_VAR: &str = "LINEMARK_ASYNC_RSS";

#[derive(Clone, Copy)]
enum Flavor {
    MultiThread,
    CurrentThread,
}

impl Flavor {
    const ALL: [Flavor; 2] = [Flavor::MultiThread, Flavor::CurrentThread];

    fn name(self) -> &'static str {
        match self {
            Flavor::MultiThread => "multi_thread",
            Flavor::CurrentThread => "current_thread",
        }
    }

    fn parse(name: &str) -> Option<Flavor> {
        Flavor::ALL.into_iter().find(|flavor| flavor.name() == name)
    }

    fn build(self) -> Runtime {
        let mut builder = match self {
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        };
        builder.enable_all().build().unwrap()
    }
}

/// The I/O-bound task, for the runner and the stream alike. The line lives
/// in the future until the timer fires, as a real task's request would.
async fn sleep_on<L>(line: L) -> Result<(), BoxError> {
    black_box(&line);
    tokio::time::sleep(SLEEP).await;
    Ok(())
}

fn sleep_runner(rt: &Runtime, input: &Path, checkpoint: &Path) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let report = rt
        .block_on(
            Runner::new()
                .checkpoint_path(checkpoint)
                .concurrency(CONCURRENCY)
                .run_async(input, sleep_on::<OwnedLine>),
        )
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (SLEEP_LINES, 0));
    assert!(report.is_complete());
    elapsed
}

/// The lines of a `BufRead`, each mapped to the task's future, at most
/// `CONCURRENCY` in flight: no checkpoint, lines finish in any order.
fn sleep_buffer_unordered(rt: &Runtime, input: &Path) -> Duration {
    let started = Instant::now();
    let done = rt.block_on(async {
        let reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
        let lines = reader.split(b'\n').map(Result::unwrap);
        let mut finished = stream::iter(lines)
            .map(sleep_on::<Vec<u8>>)
            .buffer_unordered(CONCURRENCY);
        let mut done = 0u64;
        while let Some(result) = finished.next().await {
            result.unwrap();
            done += 1;
        }
        done
    });
    let elapsed = started.elapsed();
    assert_eq!(done, SLEEP_LINES);
    elapsed
}

fn raw_read_until(input: &Path) -> Duration {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut buf = Vec::new();
    let mut lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        black_box(&buf);
        lines += 1;
    }
    assert_eq!(lines, NO_OP_LINES);
    started.elapsed()
}

/// The sync runner, one worker, the plain closure form.
fn no_op_sync(input: &Path, checkpoint: &Path) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(checkpoint)
        .run(input, |_line| Ok(()))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (NO_OP_LINES, 0));
    assert!(report.is_complete());
    elapsed
}

/// The async runner with a no-op task, with the default concurrency or
/// `concurrency`.
fn no_op_async(
    rt: &Runtime,
    input: &Path,
    checkpoint: &Path,
    concurrency: Option<usize>,
) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let mut runner = Runner::new().checkpoint_path(checkpoint);
    if let Some(lines) = concurrency {
        runner = runner.concurrency(lines);
    }
    let report = rt
        .block_on(runner.run_async(input, |_line| async { Ok(()) }))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (NO_OP_LINES, 0));
    assert!(report.is_complete());
    elapsed
}

/// Sums the times of `iters` runs, for `Bencher::iter_custom`.
fn repeat(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn runtimes() -> Vec<(Flavor, Runtime)> {
    Flavor::ALL
        .into_iter()
        .map(|flavor| (flavor, flavor.build()))
        .collect()
}

fn sleep(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, SLEEP_LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");
    let runtimes = runtimes();

    let mut group = c.benchmark_group("sleep_10ms_10k_lines");
    group
        .throughput(Throughput::Elements(SLEEP_LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (flavor, rt) in &runtimes {
        group.bench_function(
            BenchmarkId::new("buffer_unordered_1000", flavor.name()),
            |b| b.iter_custom(|iters| repeat(iters, || sleep_buffer_unordered(rt, &input))),
        );
        group.bench_function(
            BenchmarkId::new("runner_concurrency_1000", flavor.name()),
            |b| b.iter_custom(|iters| repeat(iters, || sleep_runner(rt, &input, &checkpoint))),
        );
    }
    group.finish();

    for (flavor, rt) in &runtimes {
        common::paired(
            &format!(
                "sleep_10ms_10k_lines {}: runner concurrency(1000) against buffer_unordered(1000)",
                flavor.name()
            ),
            21,
            || sleep_buffer_unordered(rt, &input),
            || sleep_runner(rt, &input, &checkpoint),
        );
    }
}

fn no_op(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, NO_OP_LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");
    let runtimes = runtimes();

    let mut group = c.benchmark_group("async_noop_1m_lines");
    group
        .throughput(Throughput::Elements(NO_OP_LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("raw_read_until", |b| {
        b.iter_custom(|iters| repeat(iters, || raw_read_until(&input)));
    });
    group.bench_function("runner_sync_1_worker", |b| {
        b.iter_custom(|iters| repeat(iters, || no_op_sync(&input, &checkpoint)));
    });
    for (flavor, rt) in &runtimes {
        for (name, concurrency) in [("default", None), ("1", Some(1))] {
            group.bench_function(
                BenchmarkId::new(format!("run_async_concurrency_{name}"), flavor.name()),
                |b| {
                    b.iter_custom(|iters| {
                        repeat(iters, || no_op_async(rt, &input, &checkpoint, concurrency))
                    });
                },
            );
        }
    }
    group.finish();

    for (flavor, rt) in &runtimes {
        common::paired(
            &format!(
                "async_noop_1m_lines {}: run_async (default concurrency) against sync run (1 worker)",
                flavor.name()
            ),
            9,
            || no_op_sync(&input, &checkpoint),
            || no_op_async(rt, &input, &checkpoint, None),
        );
        common::paired(
            &format!(
                "async_noop_1m_lines {}: run_async (default concurrency) against raw read_until",
                flavor.name()
            ),
            9,
            || raw_read_until(&input),
            || no_op_async(rt, &input, &checkpoint, None),
        );
    }
}

criterion_group!(benches, sleep, no_op);

fn main() {
    common::main_or_probe(RSS_VAR, rss_main, benches);
}

/// One workload of the timer run, once, for `benches/async_memory.sh` to
/// measure the peak memory of:
///
/// ```text
/// LINEMARK_ASYNC_RSS=<workload> async-<hash> <runtime> <input> <checkpoint>
/// ```
///
/// where `<workload>` is `runner`, `buffer_unordered`, or `runtime` (the
/// runtime alone, awaiting one timer: the floor under both), `<runtime>` is
/// `multi_thread` or `current_thread`, and `<input>` holds 10,000 lines.
fn rss_main(workload: &OsString, args: &[OsString]) {
    let [flavor, input, checkpoint] = args else {
        panic!("usage: {RSS_VAR}=<workload> <bench> <runtime> <input> <checkpoint>");
    };
    let flavor = flavor
        .to_str()
        .and_then(Flavor::parse)
        .unwrap_or_else(|| panic!("unknown runtime {flavor:?}"));
    let (input, checkpoint) = (Path::new(input), Path::new(checkpoint));
    let rt = flavor.build();
    let elapsed = match workload.to_str() {
        Some("runner") => sleep_runner(&rt, input, checkpoint),
        Some("buffer_unordered") => sleep_buffer_unordered(&rt, input),
        Some("runtime") => {
            let started = Instant::now();
            rt.block_on(async { tokio::time::sleep(SLEEP).await });
            started.elapsed()
        }
        _ => panic!("unknown workload {workload:?}"),
    };
    println!(
        "{} {}: {:.1} ms",
        workload.to_string_lossy(),
        flavor.name(),
        elapsed.as_secs_f64() * 1e3
    );
}
