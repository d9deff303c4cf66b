//! Benchmark 4: parallel scaling of the runner with a task that sleeps 1 ms
//! (a stand-in for I/O-bound work such as a download), 8 workers against 1,
//! over 400 lines, with the default group commit. For reference, 8 plain
//! threads sleeping 1 ms per line with no runner at all: the best 8 workers
//! could do.
//!
//! Each run starts from a fresh checkpoint; the removal of the old one is
//! not measured.

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use linemark::{Line, Runner};

const LINES: u64 = 400;
const WORK: Duration = Duration::from_millis(1);

fn sleep_task(_line: &Line<'_>) -> Result<(), Infallible> {
    std::thread::sleep(WORK);
    Ok(())
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

criterion_group!(benches, parallel);
criterion_main!(benches);
