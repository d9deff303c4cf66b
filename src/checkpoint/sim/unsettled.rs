//! Commits behind the position that could not read the failure log when
//! they were made wait in memory (`State::unsettled`), numbered as the
//! input was then: a rebase that renumbers the lines must not apply them
//! to the lines of the new numbering.

use std::path::Path;
use std::time::Duration;

use super::SimFs;
use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability};
use crate::failed::FailedLine;
use crate::line::Line;
use crate::position::Position;

fn lines() -> Vec<Vec<u8>> {
    (1..=10)
        .map(|n| format!("line {n}\n").into_bytes())
        .collect()
}

/// Line `n` (from 1) of `lines`.
fn line(lines: &[Vec<u8>], n: u64) -> Line<'_> {
    let offset = lines[..n as usize - 1].iter().map(Vec::len).sum::<usize>() as u64;
    Line::new(&lines[n as usize - 1], n, offset)
}

fn open(fs: &SimFs, path: &Path) -> Checkpoint {
    // Background threads idle: nothing is written but by the test's calls.
    CheckpointBuilder::new()
        .durability(Durability::group(u32::MAX, Duration::from_secs(3600)))
        .write_delay(Duration::from_secs(3600))
        .file_system(fs.handle())
        .open(path)
        .unwrap()
}

#[test]
fn a_rebase_applies_the_commits_waiting_for_the_log_in_their_own_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let fs = SimFs::new();
    let lines = lines();
    let mut checkpoint = open(&fs, &path);
    for n in 1..=10 {
        if n % 2 == 0 {
            checkpoint
                .commit_failed(FailedLine::new(&line(&lines, n), 1, "boom"))
                .unwrap();
        }
        checkpoint.commit_line(&line(&lines, n)).unwrap();
    }
    checkpoint.sync().unwrap();
    // Line 6 succeeds on a retry while the log cannot be read: the
    // resolution waits, and the call says why.
    fs.fail_reads(true);
    assert!(checkpoint.commit_resolved(6).is_err());
    fs.fail_reads(false);
    // The input got a line in front: every line is one further on.
    let mut moved = Position::start().after(b"new\n");
    for raw in &lines {
        moved = moved.after(raw);
    }
    checkpoint.rebase(moved).unwrap();
    checkpoint.close().unwrap();

    let checkpoint = open(&fs, &path);
    let listed: Vec<u64> = checkpoint
        .failed()
        .unwrap()
        .map(|failed| failed.unwrap().line())
        .collect();
    assert_eq!(
        listed,
        [3, 5, 9, 11],
        "old lines 2, 4, 8 and 10, one further on"
    );
    assert_eq!(checkpoint.failed_count(), 4);
}
