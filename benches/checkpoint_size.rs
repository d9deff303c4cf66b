//! Benchmark 5: the size of the checkpoint file after long runs, in each
//! durability mode. Prints, per run, the final size, the largest size seen
//! after any sync during the run, and the run's lines per second; asserts
//! both sizes are under 64 KiB.
//!
//! - Group commit (the default) and `NoSync`: 10,000,000 lines, one worker.
//! - Group commit with 8 workers (lines finish out of order, so `done`
//!   records appear): 1,000,000 lines.
//! - `EveryCommit`: one `fdatasync` per line makes 10,000,000 lines take
//!   most of an hour, so by default it runs over 100,000 lines, which appends
//!   a record per line and so goes through the compaction cycle (append past
//!   32 KiB, rewrite as a snapshot) some two hundred times; the size after
//!   any number of cycles is bounded the same way. Set
//!   `LINEMARK_BENCH_EVERY_COMMIT_LINES=10000000` to run the full length.
//!
//! Not a criterion benchmark: the figure is a size, not a time. Run without
//! `--bench` (as `cargo test --benches` does), it makes a quick smoke run of
//! 10,000 lines per case.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use linemark::{Durability, Event, Runner};

const LIMIT: u64 = 64 * 1024;

struct Case {
    name: &'static str,
    durability: Durability,
    workers: usize,
    lines: u64,
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let every_commit_lines = std::env::var("LINEMARK_BENCH_EVERY_COMMIT_LINES")
        .ok()
        .map(|lines| {
            lines
                .parse()
                .expect("LINEMARK_BENCH_EVERY_COMMIT_LINES is a number")
        })
        .unwrap_or(100_000);
    let cases = [
        Case {
            name: "group (default)",
            durability: Durability::default(),
            workers: 1,
            lines: 10_000_000,
        },
        Case {
            name: "no-sync",
            durability: Durability::NoSync,
            workers: 1,
            lines: 10_000_000,
        },
        Case {
            name: "group (default), 8 workers",
            durability: Durability::default(),
            workers: 8,
            lines: 1_000_000,
        },
        Case {
            name: "every-commit",
            durability: Durability::EveryCommit,
            workers: 1,
            lines: every_commit_lines,
        },
    ];

    let dir = common::bench_dir();
    let input = dir.path().join("input.txt");
    let longest = cases.iter().map(|case| case.lines).max().unwrap_or(0);
    let longest = if full { longest } else { 10_000 };
    common::generate(&input, longest);

    println!(
        "{:<28} {:>12} {:>12} {:>14} {:>14}",
        "durability", "lines", "final bytes", "max bytes", "lines/s"
    );
    for case in &cases {
        let lines = if full { case.lines } else { 10_000 };
        let (final_len, max_len, rate) = measure(case, &input, lines, dir.path());
        println!(
            "{:<28} {:>12} {:>12} {:>14} {:>14.0}",
            case.name, lines, final_len, max_len, rate
        );
        assert!(final_len < LIMIT, "{}: {final_len} bytes", case.name);
        assert!(max_len < LIMIT, "{}: {max_len} bytes", case.name);
    }
}

/// Runs the case over the first `lines` lines of `input` (a prefix of the
/// generated input, written next to it). Returns the final size of the
/// checkpoint, the largest size seen after a sync, and the lines per second.
fn measure(case: &Case, input: &Path, lines: u64, dir: &Path) -> (u64, u64, f64) {
    let prefix = dir.join(format!("input-{lines}.txt"));
    let run_input = if fs::metadata(input).unwrap().len() == lines * common::LINE_LEN {
        input.to_path_buf()
    } else {
        common::generate(&prefix, lines);
        prefix.clone()
    };
    let checkpoint = dir.join("size.checkpoint");
    common::remove_if_present(&checkpoint);
    let max_len = Arc::new(AtomicU64::new(0));
    let observer = {
        let max_len = Arc::clone(&max_len);
        let checkpoint = checkpoint.clone();
        move |event: &Event<'_>| {
            if let Event::Synced { .. } = event {
                if let Ok(meta) = fs::metadata(&checkpoint) {
                    max_len.fetch_max(meta.len(), Ordering::Relaxed);
                }
            }
        }
    };
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .durability(case.durability)
        .workers(case.workers)
        .observer(observer)
        .run_task(&run_input, &common::no_op)
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (lines, 0));
    assert_eq!(report.position, common::position_after(lines));
    let final_len = fs::metadata(&checkpoint).unwrap().len();
    common::remove_if_present(&prefix);
    (
        final_len,
        max_len.load(Ordering::Relaxed).max(final_len),
        lines as f64 / elapsed.as_secs_f64(),
    )
}
