//! The checkpoint's background threads when things go wrong, and the
//! runner's reading back of committed lines: an error waiting to be taken
//! does not stop the syncs of what is already written; `close` and drop
//! still write what was committed once a failure has passed; a group with
//! no time limit is still written within the write delay; a named pipe is
//! not opened a second time; a line edited under the run is not recorded
//! with the digest of bytes the job never saw.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use linemark::{Checkpoint, Durability, Error, Line, Position, Runner};

/// Long enough for several looks of the writer thread (10 ms write delay).
const SETTLE: Duration = Duration::from_millis(200);

/// A checkpoint whose writes fail while `fail` is set (a failing hook takes
/// the path a full disk takes).
fn failing_when(path: &Path, durability: Durability) -> (Checkpoint, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let failing = Arc::clone(&fail);
    let checkpoint = Checkpoint::builder()
        .durability(durability)
        .before_write(move || {
            if failing.load(Ordering::SeqCst) {
                Err(io::Error::other("no space left, say"))
            } else {
                Ok(())
            }
        })
        .open(path)
        .unwrap();
    (checkpoint, fail)
}

const MAX_DELAY: Duration = Duration::from_millis(100);

/// A commit that was written fine is still synced within the group's
/// `max_delay` when a later write fails (a full disk, a failing hook) while
/// the job is busy on a long line: an error waiting to be taken pauses the
/// writes, not the syncs of what is already in the file.
#[test]
fn a_written_commit_is_synced_in_time_although_a_later_write_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let (mut checkpoint, fail) = failing_when(&path, Durability::group(1_000_000, MAX_DELAY));

    let first = Position::start().after(b"first\n");
    checkpoint.commit(first).unwrap();
    let start = Instant::now();
    while Checkpoint::inspect(&path).unwrap().position != first {
        assert!(start.elapsed() < Duration::from_secs(2), "never written");
        thread::sleep(Duration::from_millis(1));
    }
    // Written, not yet synced; the next write will fail.
    fail.store(true, Ordering::SeqCst);
    checkpoint.commit(first.after(b"second\n")).unwrap();

    // The job is now busy on a long line and makes no call.
    thread::sleep(10 * MAX_DELAY);
    assert_eq!(
        checkpoint.durable_position(),
        first,
        "line 1 was in the file {} ms before and is still not synced \
         (sync_count {}): an error waiting to be taken stops the syncs too",
        start.elapsed().as_millis(),
        checkpoint.sync_count()
    );
}

/// Commits line 1 (written), then line 2 while writes fail, then lets the
/// failure pass; returns the position after line 2.
fn commit_through_a_passing_failure(
    checkpoint: &mut Checkpoint,
    fail: &AtomicBool,
    path: &Path,
) -> Position {
    let first = Position::start().after(b"first\n");
    checkpoint.commit(first).unwrap();
    thread::sleep(SETTLE);
    assert_eq!(Checkpoint::inspect(path).unwrap().position, first);
    fail.store(true, Ordering::SeqCst);
    let second = first.after(b"second\n");
    checkpoint.commit(second).unwrap();
    thread::sleep(SETTLE);
    fail.store(false, Ordering::SeqCst);
    second
}

/// `close` after a background write failed and the failure passed (the
/// disk has room again) still writes and syncs what was committed, as
/// dropping the checkpoint does.
#[test]
fn close_after_a_passed_background_failure_still_writes_the_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let (mut checkpoint, fail) = failing_when(
        &path,
        Durability::group(1_000_000, Duration::from_secs(3600)),
    );
    let second = commit_through_a_passing_failure(&mut checkpoint, &fail, &path);

    // `close` reports the failure: fine. But it must not lose the commit.
    let closed = checkpoint.close();
    let on_disk = Checkpoint::open(&path).unwrap().position();
    assert_eq!(
        on_disk,
        second,
        "close returned {closed:?} and left the file at line {} although the \
         disk took writes again: dropping the checkpoint instead would have \
         written line 2",
        on_disk.line()
    );
}

#[test]
fn drop_after_a_passed_background_failure_writes_the_commits() {
    // The same sequence without `close`, for comparison: drop writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let (mut checkpoint, fail) = failing_when(
        &path,
        Durability::group(1_000_000, Duration::from_secs(3600)),
    );
    let second = commit_through_a_passing_failure(&mut checkpoint, &fail, &path);
    drop(checkpoint);
    assert_eq!(Checkpoint::open(&path).unwrap().position(), second);
}

/// With `Durability::NoSync` too, dropping a checkpoint after a failed
/// background write writes the state once the failure has passed.
#[test]
fn drop_rewrites_after_a_failed_background_write_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let (mut checkpoint, fail) = failing_when(&path, Durability::NoSync);
    let first = Position::start().after(b"first\n");
    checkpoint.commit(first).unwrap();
    thread::sleep(SETTLE);
    assert_eq!(Checkpoint::inspect(&path).unwrap().position, first);

    fail.store(true, Ordering::SeqCst);
    let second = first.after(b"second\n");
    checkpoint.commit(second).unwrap();
    thread::sleep(SETTLE);
    fail.store(false, Ordering::SeqCst);

    drop(checkpoint);
    assert_eq!(
        Checkpoint::open(&path).unwrap().position(),
        second,
        "the drop wrote nothing: line 2 is lost although the failure had passed"
    );
}

/// A group whose `max_delay` means "never" (`Duration::MAX`: synced by
/// count only) still gets every commit written within the write delay (no
/// deadline arithmetic overflows in the writer thread).
fn written_within(path: &Path, wanted: Position, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if Checkpoint::inspect(path).unwrap().position == wanted {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_group_synced_only_by_count_is_still_written_within_the_write_delay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::MAX))
        .open(&path)
        .unwrap();
    let mut position = Position::start();
    for n in 0..3 {
        position = position.after(format!("line {n}\n").as_bytes());
        checkpoint.commit(position).unwrap();
        assert!(
            written_within(&path, position, Duration::from_secs(2)),
            "commit {} not written 2 s after it was made (write delay 10 ms)",
            n + 1
        );
    }
}

/// `Runner::run` on a named pipe answers (it cannot seek one, so an error
/// is fine) rather than hang: the input is never opened a second time to
/// be read back unless it is a regular file.
#[test]
fn run_on_a_fifo_returns_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("input.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());

    // A writer that feeds two lines and closes its end, as `cmd > fifo` does.
    let feeding = fifo.clone();
    let feeder = thread::spawn(move || {
        let mut out = OpenOptions::new().write(true).open(&feeding).unwrap();
        // The run may have given up on the pipe already (it cannot seek it).
        let _ = out.write_all(b"a\nb\n");
    });

    let (done, answered) = mpsc::channel();
    let input = fifo.clone();
    let runner = thread::spawn(move || {
        let task = |_: &Line<'_>| -> Result<(), String> { Ok(()) };
        let result = Runner::new()
            .run_task(&input, &task)
            .map(|report| report.done);
        let _ = done.send(format!("{result:?}"));
    });
    feeder.join().unwrap();

    let outcome = answered.recv_timeout(Duration::from_secs(5));
    if outcome.is_err() {
        // Release the hung open so the thread and the directory can go.
        drop(OpenOptions::new().write(true).open(&fifo));
    }
    runner.join().unwrap();
    assert!(
        outcome.is_ok(),
        "Runner::run on a FIFO hung for 5 s (the second open of the input blocks \
         waiting for a writer)"
    );
}

/// `Runner::run` records the digest of a committed line by reading it back
/// from the input, checked against a fingerprint of the bytes the task
/// saw: a line whose middle is rewritten under the run (same length, same
/// first and last eight bytes) is an input change, never recorded with the
/// digest of bytes the job never saw.
#[test]
fn a_line_whose_middle_is_rewritten_under_the_run_is_not_recorded_as_seen() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(
        &input,
        "first line\nsecond line\nhead-of-line: original middle :tail-end\n",
    )
    .unwrap();
    let checkpoint = dir.path().join("input.checkpoint");
    let mut seen = Vec::new();
    let rewrite_middle = |line: &Line<'_>| -> Result<(), std::convert::Infallible> {
        if line.number() == 3 {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&input)
                .unwrap();
            // Same length, same first and last eight bytes.
            file.seek(SeekFrom::Start(line.offset() + 14)).unwrap();
            file.write_all(b"EDITED  middle").unwrap();
        }
        Ok(())
    };
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .durability(Durability::EveryCommit)
        .run_task(&input, &rewrite_middle);
    seen.push(format!("first run: {:?}", report.as_ref().map(|r| r.done)));

    let recorded = Checkpoint::inspect(&checkpoint).unwrap().position;
    let original = linemark::digest(b"head-of-line: original middle :tail-end\n");
    let ok = |_: &Line<'_>| -> Result<(), std::convert::Infallible> { Ok(()) };
    let rerun = Runner::new()
        .checkpoint_path(&checkpoint)
        .run_task(&input, &ok);
    assert!(
        report.is_err() || matches!(rerun, Err(Error::InputChanged { .. })),
        "the middle of line 3 changed under the run; {seen:?}; recorded digest \
         {:08x} (the bytes the task saw: {original:08x}); the rerun gave {:?} \
         instead of InputChanged",
        recorded.last_digest(),
        rerun.map(|r| (r.done, r.is_complete()))
    );
}
