//! Benchmark 3: resume latency on a 10,000,000-line input, with checkpoints
//! recording positions at 1 %, 50 % and 99 % of it.
//!
//! Measured: `Checkpoint::open` (lock, read, recover) plus
//! `position().seek_offset` on a freshly opened `BufReader<File>`, then the
//! drop of both, which is what a restarted job does before its first line.
//! For contrast, the classic way of resuming, scanning for the content of
//! the last finished line (`Position::seek_content`), at the same points: it
//! costs in proportion to the position, so it gets fewer samples.
//!
//! And what a `Runner` does before its first line (open and lock the
//! checkpoint, open the input, seek it, verify it, start and stop), on
//! checkpoints a run wrote, with the default verification of the whole
//! finished prefix (its lines counted and its CRC-32 checked: the cost grows
//! with the position) and with `verify_prefix(false)` (the last finished
//! line only: flat).
//!
//! The input is in the page cache: this measures the library's work, not the
//! disk's.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use linemark::{Checkpoint, Line, Position, Runner, StopToken};

const LINES: u64 = 10_000_000;

/// (label, finished lines) of each prepared checkpoint.
const POINTS: [(&str, u64); 3] = [
    ("1pct", LINES / 100),
    ("50pct", LINES / 2),
    ("99pct", LINES / 100 * 99),
];

fn resume(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, LINES);
    let checkpoints: Vec<PathBuf> = POINTS
        .iter()
        .map(|&(_, done)| {
            let path = dir.path().join(format!("input.txt.{done}.checkpoint"));
            let mut checkpoint = Checkpoint::open(&path).unwrap();
            checkpoint.commit(common::position_after(done)).unwrap();
            checkpoint.close().unwrap();
            path
        })
        .collect();

    let mut group = c.benchmark_group("resume_seek_offset_10m_lines");
    group
        .sample_size(100)
        .measurement_time(Duration::from_secs(3));
    bench_seek(&mut group, &input, &checkpoints, Position::seek_offset);
    group.finish();

    let mut group = c.benchmark_group("resume_seek_content_10m_lines");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    bench_seek(&mut group, &input, &checkpoints, Position::seek_content);
    group.finish();

    let run_checkpoints: Vec<PathBuf> = POINTS
        .iter()
        .map(|&(_, done)| {
            let path = dir.path().join(format!("input.txt.{done}.run.checkpoint"));
            run_until(&input, &path, done);
            path
        })
        .collect();
    for (name, verify) in [
        ("resume_runner_verified_10m_lines", true),
        ("resume_runner_unverified_10m_lines", false),
    ] {
        let mut group = c.benchmark_group(name);
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for (&(label, done), path) in POINTS.iter().zip(&run_checkpoints) {
            group.throughput(Throughput::Elements(done));
            group.bench_with_input(BenchmarkId::from_parameter(label), path, |b, path| {
                b.iter(|| {
                    // Stopped before it starts: the run resumes, then stops
                    // before the first line.
                    let stop = StopToken::new();
                    stop.stop();
                    let report = Runner::new()
                        .checkpoint_path(path)
                        .verify_prefix(verify)
                        .stop_token(stop)
                        .run_task(&input, &common::no_op)
                        .unwrap();
                    assert!(report.stopped && report.done == 0);
                    assert_eq!(report.resumed_at, common::position_after(done));
                });
            });
        }
        group.finish();
    }
}

/// Runs a no-op task over `input` until `done` lines are done, with the
/// checkpoint at `path`.
fn run_until(input: &Path, path: &Path, done: u64) {
    let stop = StopToken::new();
    let task = |line: &Line<'_>| -> Result<(), std::convert::Infallible> {
        if line.number() == done {
            stop.stop();
        }
        Ok(())
    };
    let report = Runner::new()
        .checkpoint_path(path)
        .stop_token(stop.clone())
        .run_task(input, &task)
        .unwrap();
    assert_eq!(report.position, common::position_after(done));
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("prefix offset={} ", report.position.offset());
    assert!(text.contains(&prefix), "the prefix reaches the position");
}

/// What a restarted job does before its first line, at each point: open the
/// checkpoint, open the input, seek it with `seek`.
fn bench_seek(
    group: &mut BenchmarkGroup<'_, WallTime>,
    input: &Path,
    checkpoints: &[PathBuf],
    seek: fn(&Position, &mut BufReader<File>) -> linemark::Result<Position>,
) {
    for (&(label, done), path) in POINTS.iter().zip(checkpoints) {
        let expected = common::position_after(done);
        group.throughput(Throughput::Elements(done));
        group.bench_with_input(BenchmarkId::from_parameter(label), path, |b, path| {
            b.iter(|| {
                let checkpoint = Checkpoint::open(path).unwrap();
                let mut reader = BufReader::new(File::open(input).unwrap());
                let reached = seek(&checkpoint.position(), &mut reader).unwrap();
                assert_eq!(reached, expected);
            });
        });
    }
}

criterion_group!(benches, resume);
criterion_main!(benches);
