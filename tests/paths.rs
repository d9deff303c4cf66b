//! What a checkpoint path names: a symbolic link to a checkpoint is
//! followed (the real file is locked, written and compacted, the link left
//! alone), so two links to one checkpoint exclude each other.

#![cfg(unix)]

use std::fs;
use std::os::unix::fs::symlink;

use linemark::{Checkpoint, Durability, Error, Position};

fn strict(path: &std::path::Path) -> Result<Checkpoint, Error> {
    Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .compact_at(256)
        .open(path)
}

#[test]
fn a_symlinked_checkpoint_is_written_through_the_link_and_the_link_stays() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.checkpoint");
    let link = dir.path().join("link.checkpoint");
    // A dangling link first: the first write creates its target.
    symlink("real.checkpoint", &link).unwrap();
    let mut position = Position::start();
    let mut checkpoint = strict(&link).unwrap();
    assert_eq!(checkpoint.path(), link, "the path as given");
    // Enough commits for several compactions (rewrites by rename).
    for n in 0..100 {
        position = position.after(format!("line {n}\n").as_bytes());
        checkpoint.commit(position).unwrap();
    }
    checkpoint.close().unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced by a regular file"
    );
    assert_eq!(Checkpoint::inspect(&real).unwrap().position, position);
    assert_eq!(strict(&link).unwrap().position(), position);
    // No lock or temporary file next to the link's name.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["link.checkpoint", "real.checkpoint", "real.checkpoint.lock"]
    );
}

#[test]
fn two_links_to_one_checkpoint_lock_each_other_out() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("jobs")).unwrap();
    let real = dir.path().join("jobs/real.checkpoint");
    let first = dir.path().join("first.checkpoint");
    let second = dir.path().join("second.checkpoint");
    symlink(&real, &first).unwrap();
    symlink("jobs/real.checkpoint", &second).unwrap();
    let held = strict(&first).unwrap();
    match strict(&second) {
        Err(Error::Locked { path }) => assert_eq!(path, second),
        other => panic!("{other:?}"),
    }
    // And the real path too, and another spelling of its directory.
    assert!(matches!(strict(&real), Err(Error::Locked { .. })));
    let spelled = dir.path().join("jobs/../jobs/real.checkpoint");
    assert!(matches!(strict(&spelled), Err(Error::Locked { .. })));
    drop(held);
    strict(&second).unwrap();
}

#[test]
fn a_run_whose_lock_file_was_deleted_stops_and_writes_nothing_more() {
    // Deleting `PATH.lock` during a run lets a second run take a new lock:
    // the first must notice at its next write or sync, stop with an error,
    // and never write over the second run's progress.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let mut first = Checkpoint::builder()
        .durability(Durability::group(
            1_000_000,
            std::time::Duration::from_millis(50),
        ))
        .open(&path)
        .unwrap();
    let mut position = Position::start();
    for n in 0..3 {
        position = position.after(format!("first {n}\n").as_bytes());
        first.commit(position).unwrap();
    }
    first.sync().unwrap();
    fs::remove_file(dir.path().join("job.checkpoint.lock")).unwrap();
    let mut second = Checkpoint::open(&path).unwrap();
    second.commit(Position::start().after(b"x\n")).unwrap();
    second.sync().unwrap();
    let theirs = fs::read(&path).unwrap();

    // The first run's next commits: its writer thread notices within the
    // write delay, and a sync at the latest.
    let mut noticed = None;
    for n in 3..1_000 {
        position = position.after(format!("first {n}\n").as_bytes());
        if let Err(err) = first.commit(position) {
            noticed = Some(err);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    match noticed {
        Some(Error::LockLost { path: lock }) => {
            assert_eq!(lock, dir.path().join("job.checkpoint.lock"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(first.sync(), Err(Error::LockLost { .. })));
    drop(first);
    assert_eq!(fs::read(&path).unwrap(), theirs, "the first run wrote on");
    second.close().unwrap();
}
