//! Benchmark 1: lines per second of the sequential runner with a no-op task
//! and the default group commit, side by side with a raw `read_until` loop
//! over the same file, and with the two layers in between (the line reader
//! alone, and the line reader with `Checkpoint::commit_line` per line and
//! the same group commit), so a gap can be traced to its layer.
//!
//! Every run of a checkpointed variant starts from a fresh checkpoint; the
//! removal of the old one is not measured, its opening and the final sync
//! that makes the run durable are. All variants read through a 64 KiB
//! `BufReader`, the runner's own buffer size, from the page cache.
//!
//! The runner runs twice: with its defaults, which include the checkpoint's
//! writer thread reading the finished lines again for the digest a resume
//! checks (`Runner::verify_prefix`), and without that.
//!
//! After criterion's figures, the runner and the raw loop are also timed
//! alternately (see `common::paired`), for a ratio that drifts in machine
//! load do not skew.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use linemark::{Checkpoint, LineReader, Runner};

const LINES: u64 = 1_000_000;
const BYTES: u64 = LINES * common::LINE_LEN;
const BUFFER: usize = 64 * 1024;

fn raw_read_until(input: &Path) -> Duration {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut buf = Vec::new();
    let (mut lines, mut read) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += 1;
        read += n as u64;
    }
    assert_eq!((lines, read), (LINES, BYTES));
    started.elapsed()
}

fn line_reader(input: &Path) -> Duration {
    let started = Instant::now();
    let reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut lines = LineReader::new(reader);
    let (mut count, mut read) = (0u64, 0u64);
    while let Some(line) = lines.next_line().unwrap() {
        count += 1;
        read += line.raw().len() as u64;
    }
    assert_eq!((count, read), (LINES, BYTES));
    started.elapsed()
}

fn line_reader_commit_line(input: &Path, checkpoint: &Path) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let mut progress = Checkpoint::open(checkpoint).unwrap();
    let reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut lines = LineReader::new(reader);
    while let Some(line) = lines.next_line().unwrap() {
        progress.commit_line(&line).unwrap();
    }
    let reached = progress.position();
    progress.close().unwrap();
    assert_eq!(reached, common::position_after(LINES));
    started.elapsed()
}

/// The runner with its defaults or, if not `verify`, without keeping the
/// digest of the finished part (`Runner::verify_prefix(false)`).
fn runner_sequential(input: &Path, checkpoint: &Path, verify: bool) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(checkpoint)
        .verify_prefix(verify)
        .run_task(input, &common::no_op)
        .unwrap();
    assert_eq!((report.done, report.failed), (LINES, 0));
    assert!(report.is_complete());
    started.elapsed()
}

/// Sums the times of `iters` runs, for `Bencher::iter_custom`.
fn repeat(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn throughput(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");

    let mut group = c.benchmark_group("throughput_1m_lines");
    group
        .throughput(Throughput::Elements(LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    group.bench_function("raw_read_until", |b| {
        b.iter_custom(|iters| repeat(iters, || raw_read_until(&input)));
    });
    group.bench_function("line_reader", |b| {
        b.iter_custom(|iters| repeat(iters, || line_reader(&input)));
    });
    group.bench_function("line_reader_commit_line", |b| {
        b.iter_custom(|iters| repeat(iters, || line_reader_commit_line(&input, &checkpoint)));
    });
    group.bench_function("runner_sequential", |b| {
        b.iter_custom(|iters| repeat(iters, || runner_sequential(&input, &checkpoint, true)));
    });
    group.bench_function("runner_sequential_unverified", |b| {
        b.iter_custom(|iters| repeat(iters, || runner_sequential(&input, &checkpoint, false)));
    });
    group.finish();

    common::paired(
        "throughput_1m_lines: runner_sequential vs raw_read_until",
        41,
        || raw_read_until(&input),
        || runner_sequential(&input, &checkpoint, true),
    );
    common::paired(
        "throughput_1m_lines: runner_sequential_unverified vs raw_read_until",
        41,
        || raw_read_until(&input),
        || runner_sequential(&input, &checkpoint, false),
    );
}

criterion_group!(benches, throughput);
criterion_main!(benches);
