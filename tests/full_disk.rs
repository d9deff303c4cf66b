//! A real full disk: the checkpoint lives on a tiny tmpfs that fills up.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says so and
//! returns without asserting anything.

mod common;

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use linemark::{Checkpoint, Durability, Error, Position};

use common::SmallDisk;

/// Fills the disk, leaving about `leave` bytes free.
fn fill(disk: &Path, leave: usize) -> PathBuf {
    let filler = disk.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 512];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::StorageFull => break,
            Err(err) => panic!("filling the disk: {err}"),
        }
    }
    file.sync_all().ok();
    // Give back a little room.
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(leave as u64)).unwrap();
    filler
}

#[test]
fn a_full_disk_is_a_typed_error_and_loses_no_recorded_progress() {
    let Some(disk) = SmallDisk::mount(256 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let path = disk.path().join("job.checkpoint");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .compact_at(1 << 30)
        .open(&path)
        .unwrap();
    let mut position = Position::start();
    position = position.after(b"first line\n");
    checkpoint.commit(position).unwrap();
    let durable = position;

    let filler = fill(disk.path(), 0);
    let mut failure = None;
    let mut last_ok = durable;
    for n in 0..100_000 {
        position = position.after(format!("line {n}\n").as_bytes());
        match checkpoint.commit(position) {
            Ok(()) => last_ok = position,
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let err = failure.expect("the disk never filled up");
    match &err {
        Error::Io {
            path: Some(p),
            source,
            ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), ErrorKind::StorageFull, "{err}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(err.to_string().contains("job.checkpoint"), "{err}");
    // The commit is kept in memory...
    assert_eq!(checkpoint.position(), position);
    // ...and what was durable before is still there for another reader.
    let on_disk = Checkpoint::inspect(&path).unwrap();
    assert_eq!(on_disk.position, last_ok);

    // Retrying while the disk is still full fails again, without damage.
    assert!(checkpoint.sync().is_err());
    assert_eq!(Checkpoint::inspect(&path).unwrap().position, last_ok);

    // Once there is room, one sync makes everything durable.
    fs::remove_file(filler).unwrap();
    checkpoint.sync().unwrap();
    drop(checkpoint);
    assert_eq!(Checkpoint::open(&path).unwrap().position(), position);
}
