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
