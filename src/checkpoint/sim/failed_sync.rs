//! Failed syncs and errors of the background threads: a sync that fails
//! with EIO on the sync thread while the job's own `sync` waits on
//! `sync_lock` must not let the second sync claim durable what the first
//! lost (Linux reports a failed writeback once and calls the pages clean);
//! an error stored while another is taken is never left without its flag.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::SimFs;
use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability};
use crate::position::Position;

#[test]
fn a_sync_after_a_failed_sync_does_not_claim_the_lost_records_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let fs = SimFs::new();
    // Background threads idle (a look every half hour): the test plays
    // the sync thread itself.
    let mut checkpoint: Checkpoint = CheckpointBuilder::new()
        .durability(Durability::group(u32::MAX, Duration::from_secs(3600)))
        .write_delay(Duration::from_secs(3600))
        .file_system(fs.handle())
        .open(&path)
        .unwrap();
    let p0 = Position::start().after(b"zero\n");
    checkpoint.commit(p0).unwrap();
    checkpoint.sync().unwrap();
    let p1 = p0.after(b"one\n");
    checkpoint.commit(p1).unwrap();
    checkpoint
        .write_now(false, super::super::prefix::Catch::Up)
        .unwrap();

    let reached = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    fs.fail_next_sync(Arc::clone(&reached), Arc::clone(&release));
    let inner = Arc::clone(&checkpoint.inner);
    std::thread::scope(|scope| {
        // The sync thread: its fdatasync of line 1's record fails.
        let syncer = scope.spawn(move || inner.sync_to_disk());
        reached.wait();
        // Meanwhile the job commits line 2 and syncs (close, a full group).
        let p2 = p1.after(b"two\n");
        checkpoint.commit(p2).unwrap();
        let job = scope.spawn(|| {
            let result = checkpoint.sync();
            (result, checkpoint.durable_position())
        });
        std::thread::sleep(Duration::from_millis(100));
        release.wait();
        assert!(syncer.join().unwrap().is_err(), "the gated sync fails");
        let (result, durable) = job.join().unwrap();

        // Power loss now.
        let after = fs.power_loss_dropping_unsynced();
        let reopened = crate::checkpoint::format::load(after.handle().as_ref(), &path)
            .map(|loaded| loaded.state.position);
        if result.is_ok() {
            assert_eq!(
                reopened.as_ref().ok(),
                Some(&durable),
                "sync() returned Ok with durable_position line {}, and after a power \
                 loss the checkpoint opens as {reopened:?}",
                durable.line()
            );
        }
    });
}

#[test]
fn an_error_put_while_another_is_taken_is_not_stranded() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = CheckpointBuilder::new()
        .durability(Durability::group(u32::MAX, Duration::from_secs(3600)))
        .write_delay(Duration::from_secs(3600))
        .open(dir.path().join("job.checkpoint"))
        .unwrap();
    let inner = &checkpoint.inner;
    let io_error =
        |n: u32| crate::error::Error::io(None, "test", std::io::Error::other(format!("e{n}")));
    let rounds = 200_000u32;
    let go = AtomicU32::new(0);
    let done = AtomicU32::new(0);
    let mut stranded = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 1..=rounds {
                while go.load(Ordering::Acquire) != round {
                    std::hint::spin_loop();
                }
                // Vary the moment a little.
                for _ in 0..(round % 7) {
                    std::hint::spin_loop();
                }
                inner.put_error(io_error(round));
                done.store(round, Ordering::Release);
            }
        });
        for round in 1..=rounds {
            inner.put_error(io_error(0));
            go.store(round, Ordering::Release);
            let _ = inner.take_error();
            while done.load(Ordering::Acquire) != round {
                std::hint::spin_loop();
            }
            let waiting = inner.error.lock().unwrap().is_some();
            if waiting && !inner.has_error() {
                stranded += 1;
            }
            inner.error.lock().unwrap().take();
            let _ = inner.take_error();
        }
    });
    assert_eq!(
        stranded, 0,
        "rounds (of {rounds}) in which a stored error was left without HAS_ERROR, never to be returned"
    );
}
