//! Helpers shared by the batch tests.

#![allow(dead_code)]

#[path = "../common/lateness.rs"]
pub mod lateness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linemark::{Report, Runner, Task};

/// An input of `lines` lines `item-N`.
pub fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    let text: String = (1..=lines).map(|n| format!("item-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The tests of a binary that use it run one at a time: they load both
/// cores, and some of them measure time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps the thread busy for `d`.
pub fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// After a run: every line the checkpoint calls finished (under the
/// watermark, ours and not failed; or recorded done beyond it) ran Ok.
pub fn assert_finished_lines_ran_ok(
    what: &str,
    checkpoint: &Path,
    ok: &BTreeMap<u64, u32>,
    owned: impl Fn(u64) -> bool,
) {
    let snap = linemark::Checkpoint::inspect(checkpoint).unwrap();
    let failed: BTreeSet<u64> = linemark::Checkpoint::inspect_failed(checkpoint)
        .unwrap()
        .map(|f| f.unwrap().line())
        .collect();
    for l in (1..=snap.position.line()).filter(|&l| owned(l) && !failed.contains(&l)) {
        assert!(
            ok.contains_key(&l),
            "{what}: line {l} under the watermark never ran ok"
        );
    }
    for l in &snap.done_beyond {
        assert!(
            ok.contains_key(l),
            "{what}: line {l} recorded done never ran ok"
        );
    }
}

/// Runs `task` over `input` with `checkpoint`: as a stream read through a
/// buffer of `buffer` bytes (`Some`), or as a file.
pub fn run_file_or_stream<T: Task>(
    runner: Runner,
    input: &Path,
    checkpoint: &Path,
    buffer: Option<usize>,
    task: &T,
) -> Report {
    match buffer {
        Some(buffer) => {
            let file =
                std::io::BufReader::with_capacity(buffer, std::fs::File::open(input).unwrap());
            runner.run_reader_task(file, checkpoint, task).unwrap()
        }
        None => runner
            .checkpoint_path(checkpoint)
            .run_task(input, task)
            .unwrap(),
    }
}
