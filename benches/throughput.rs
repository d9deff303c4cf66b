//! Benchmark 1: lines per second of the sequential runner with a no-op task
//! and the default group commit, side by side with a raw `read_until` loop
//! over the same file, and with the two layers in between (the line reader
//! alone, and the line reader with `Checkpoint::commit_line` per line and
//! the same group commit), so a gap can be traced to its layer.
//!
//! Every run of a checkpointed variant starts from a fresh checkpoint; the
//! removal of the old one is not measured. All variants read through a
//! 64 KiB `BufReader`, the runner's own buffer size, from the page cache.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use linemark::{Checkpoint, LineReader, Runner};

const LINES: u64 = 1_000_000;
const BUFFER: usize = 64 * 1024;

fn throughput(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");
    let bytes = LINES * common::LINE_LEN;

    let mut group = c.benchmark_group("throughput_1m_lines");
    group
        .throughput(Throughput::Elements(LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));

    group.bench_function("raw_read_until", |b| {
        b.iter(|| {
            let mut reader = BufReader::with_capacity(BUFFER, File::open(&input).unwrap());
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
            assert_eq!((lines, read), (LINES, bytes));
        });
    });

    group.bench_function("line_reader", |b| {
        b.iter(|| {
            let reader = BufReader::with_capacity(BUFFER, File::open(&input).unwrap());
            let mut lines = LineReader::new(reader);
            let (mut count, mut read) = (0u64, 0u64);
            while let Some(line) = lines.next_line().unwrap() {
                count += 1;
                read += line.raw().len() as u64;
            }
            assert_eq!((count, read), (LINES, bytes));
        });
    });

    group.bench_function("line_reader_commit_line", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                common::remove_if_present(&checkpoint);
                let started = Instant::now();
                let mut progress = Checkpoint::open(&checkpoint).unwrap();
                let reader = BufReader::with_capacity(BUFFER, File::open(&input).unwrap());
                let mut lines = LineReader::new(reader);
                while let Some(line) = lines.next_line().unwrap() {
                    progress.commit_line(&line).unwrap();
                }
                let reached = progress.position();
                progress.close().unwrap();
                assert_eq!(reached, common::position_after(LINES));
                measured += started.elapsed();
            }
            measured
        });
    });

    group.bench_function("runner_sequential", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                common::remove_if_present(&checkpoint);
                let started = Instant::now();
                let report = Runner::new()
                    .checkpoint(&checkpoint)
                    .run(&input, &common::no_op)
                    .unwrap();
                assert_eq!((report.done, report.failed), (LINES, 0));
                assert!(report.is_complete());
                measured += started.elapsed();
            }
            measured
        });
    });

    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
