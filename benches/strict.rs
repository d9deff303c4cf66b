//! Benchmark 2: lines per second of the sequential runner with
//! `Durability::EveryCommit` (a record appended and `fdatasync`ed per line),
//! side by side with a raw loop that appends records of the same size to a
//! new file with `write` + `File::sync_data`.
//!
//! Both run in a directory under the target directory, on the real disk.
//! Each run starts from a fresh checkpoint, or a fresh file for the raw
//! loop; the removal of the old one is not measured. After criterion's
//! figures, the two are also timed alternately (see `common::paired`): the
//! cost of an `fdatasync` swings with whatever else uses the disk, and
//! alternating keeps such swings out of the ratio.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use linemark::{Durability, Runner};

const LINES: u64 = 2_000;

/// The size of the runner's per-line record for this input
/// (`pos offset=… line=… len=60 digest=… crc=…\n`), measured below.
const RECORD_LEN: usize = 64;

fn strict(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    common::generate(&input, LINES);
    let checkpoint = dir.path().join("input.txt.checkpoint");
    let raw_log = dir.path().join("raw.log");
    check_record_len(&input, &checkpoint);

    let mut group = c.benchmark_group("every_commit_2000_lines");
    group
        .throughput(Throughput::Elements(LINES))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));

    group.bench_function("raw_append_fdatasync", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw_append_fdatasync(&raw_log)).sum());
    });
    group.bench_function("runner_every_commit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| runner_every_commit(&input, &checkpoint))
                .sum()
        });
    });
    group.finish();

    common::paired(
        "every_commit_2000_lines: runner_every_commit vs raw_append_fdatasync",
        9,
        || raw_append_fdatasync(&raw_log),
        || runner_every_commit(&input, &checkpoint),
    );
}

fn raw_append_fdatasync(raw_log: &Path) -> Duration {
    let mut record = [b'x'; RECORD_LEN];
    record[RECORD_LEN - 1] = b'\n';
    common::remove_if_present(raw_log);
    let started = Instant::now();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(raw_log)
        .unwrap();
    for _ in 0..LINES {
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
    }
    assert_eq!(file.metadata().unwrap().len(), LINES * RECORD_LEN as u64);
    drop(file);
    started.elapsed()
}

fn runner_every_commit(input: &Path, checkpoint: &Path) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(checkpoint)
        .durability(Durability::EveryCommit)
        .run_task(input, &common::no_op)
        .unwrap();
    assert_eq!((report.done, report.failed), (LINES, 0));
    assert_eq!(report.position, common::position_after(LINES));
    started.elapsed()
}

/// Checks that the raw loop writes records as long as the runner's.
fn check_record_len(input: &Path, checkpoint: &Path) {
    common::remove_if_present(checkpoint);
    Runner::new()
        .checkpoint_path(checkpoint)
        .durability(Durability::EveryCommit)
        .run_task(input, &common::no_op)
        .unwrap();
    let text = std::fs::read_to_string(checkpoint).unwrap();
    let last = text
        .lines()
        .rfind(|record| record.starts_with("pos "))
        .unwrap();
    assert_eq!(last.len() + 1, RECORD_LEN, "{last}");
    // The digest of the finished part is recorded at most once a second and
    // at the end, not with every commit.
    let prefixes = text
        .lines()
        .filter(|record| record.starts_with("prefix "))
        .count();
    assert!(prefixes <= 4, "{prefixes} prefix records:\n{text}");
}

criterion_group!(benches, strict);
criterion_main!(benches);
