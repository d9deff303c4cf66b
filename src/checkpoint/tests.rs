//! Unit tests of the checkpoint: recovery, compaction, group commit, the
//! writer thread.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::fs::{Fs, FsFile};

use super::format::{Record, parse};
use super::writer::RewriteStep;
use super::*;
use crate::position::Prefix;

fn open_strict(path: &Path) -> Checkpoint {
    Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .open(path)
        .unwrap()
}

/// The position after line `n` of the input `positions` describes.
fn done(n: u64) -> Position {
    positions(n as usize)[n as usize - 1]
}

fn positions(n: usize) -> Vec<Position> {
    let mut pos = Position::start();
    (0..n)
        .map(|i| {
            pos = pos.after(format!("line number {i}\n").as_bytes());
            pos
        })
        .collect()
}

#[test]
fn missing_file_is_a_fresh_start_and_is_created_by_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = open_strict(&path);
    assert!(checkpoint.position().is_start());
    assert!(!path.exists());
    checkpoint.commit(positions(1)[0]).unwrap();
    assert!(path.exists());
    drop(checkpoint);
    assert_eq!(open_strict(&path).position(), positions(1)[0]);
}

#[test]
fn every_truncation_of_the_last_two_records_recovers_an_earlier_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let all = positions(5);
    let mut checkpoint = open_strict(&path);
    let mut ends = Vec::new();
    for pos in &all {
        checkpoint.commit(*pos).unwrap();
        ends.push(fs::metadata(&path).unwrap().len());
    }
    checkpoint.close().unwrap();
    let full = fs::read(&path).unwrap();
    let from = ends[2] as usize; // start of the second-to-last record
    for cut in from..=full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        // The newest record whose bytes all survived is the one in force.
        let expected = ends.iter().rposition(|&end| end as usize <= cut).unwrap();
        let mut reopened = open_strict(&path);
        assert_eq!(reopened.position(), all[expected], "cut at {cut}");
        // The torn tail is cut on the next write, which then reads back.
        reopened.commit(all[4]).unwrap();
        drop(reopened);
        let text = fs::read(&path).unwrap();
        assert_eq!(open_strict(&path).position(), all[4], "cut at {cut}");
        assert!(parse(&path, &text).unwrap().2 == text.len() as u64);
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = open_strict(&path);
    for pos in positions(3) {
        checkpoint.commit(pos).unwrap();
    }
    checkpoint.close().unwrap();
    let good = fs::read(&path).unwrap();
    let second_record = good.iter().position(|&b| b == b'\n').unwrap() + 1;
    let last_record = good[..good.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    for at in second_record..last_record {
        if good[at] == b'\n' {
            continue;
        }
        let mut damaged = good.clone();
        damaged[at] ^= 0x20;
        fs::write(&path, &damaged).unwrap();
        match Checkpoint::open(&path) {
            Err(Error::Corrupt { offset, .. }) => {
                assert!(offset as usize <= at && at - offset as usize <= 80)
            }
            other => panic!("flip at {at}: {other:?}"),
        }
        // The damaged file is left as it was.
        assert_eq!(fs::read(&path).unwrap(), damaged);
    }
}

#[test]
fn a_foreign_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    for content in [&b"hello world\n"[..], b"linemark-checkpointx", b"\0\0\0\0"] {
        fs::write(&path, content).unwrap();
        assert!(
            matches!(Checkpoint::open(&path), Err(Error::NotACheckpoint { .. })),
            "{content:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), content);
    }
}

/// The file at `path`, which must be of the current format version.
fn read_current_version(path: &Path) -> String {
    let written = fs::read_to_string(path).unwrap();
    let header = format!("linemark-checkpoint version={} ", super::format::VERSION);
    assert!(written.starts_with(&header), "{written}");
    written
}

#[test]
fn a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut text = String::new();
    let newer = super::format::VERSION + 1;
    Record::Header { version: newer }.encode(&mut text);
    fs::write(&path, &text).unwrap();
    let err = Checkpoint::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version, supported, .. }
            if version == newer && supported == super::format::VERSION),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), text, "left alone");
}

#[test]
fn an_older_version_is_read_and_rewritten_in_the_current_one_when_a_shard_is_recorded() {
    // Version 2 added the shard record, version 3 the prefix record. A
    // file of version 1 still opens; recording a shard in it rewrites it in
    // the current version, which a linemark that knows only version 1
    // refuses instead of misreading.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut text = String::new();
    Record::Header { version: 1 }.encode(&mut text);
    Record::Position(positions(2)[1]).encode(&mut text);
    fs::write(&path, &text).unwrap();
    let mut checkpoint = open_strict(&path);
    assert_eq!(checkpoint.position(), positions(2)[1]);
    assert_eq!(checkpoint.shard(), None);
    checkpoint.claim_shard((1, 3)).unwrap();
    checkpoint.close().unwrap();
    let written = read_current_version(&path);
    assert!(written.contains("\nshard index=1 count=3 "), "{written}");
    let reopened = open_strict(&path);
    assert_eq!(reopened.shard(), Some((1, 3)));
    assert_eq!(reopened.position(), positions(2)[1]);
}

/// The input `positions` describes, as a file in `dir`.
fn input_file(dir: &Path, lines: usize) -> std::path::PathBuf {
    let path = dir.join("input");
    let text: String = (0..lines).map(|i| format!("line number {i}\n")).collect();
    fs::write(&path, text).unwrap();
    path
}

/// The prefix of the first `len` bytes of `bytes`.
fn prefix_of(bytes: &[u8], len: u64) -> Prefix {
    let mut prefix = Prefix::default();
    prefix.extend(&bytes[..len as usize]);
    prefix
}

#[test]
fn the_writer_digests_the_finished_prefix_of_the_input_it_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), 50);
    let bytes = fs::read(&input).unwrap();
    let path = dir.path().join("c");
    let all = positions(50);
    let mut checkpoint = open_strict(&path);
    checkpoint.read_back_from(&input, true).unwrap();
    for pos in &all[..30] {
        checkpoint.commit(*pos).unwrap();
        // Every write (strict: every commit) brings the prefix to the
        // position.
        assert_eq!(
            checkpoint.prefix(),
            Some(prefix_of(&bytes, pos.offset())),
            "{pos:?}"
        );
    }
    checkpoint.close().unwrap();
    let reopened = open_strict(&path);
    let expected = prefix_of(&bytes, all[29].offset());
    assert_eq!(reopened.prefix(), Some(expected));
}

#[test]
fn a_checkpoint_without_a_prefix_gets_one_and_is_rewritten_in_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), 10);
    let bytes = fs::read(&input).unwrap();
    let path = dir.path().join("c");
    let all = positions(10);
    let mut text = String::new();
    Record::Header { version: 2 }.encode(&mut text);
    Record::Position(all[4]).encode(&mut text);
    fs::write(&path, &text).unwrap();
    let mut checkpoint = open_strict(&path);
    assert_eq!(checkpoint.prefix(), None);
    checkpoint.read_back_from(&input, true).unwrap();
    checkpoint.commit(all[6]).unwrap();
    checkpoint.close().unwrap();
    read_current_version(&path);
    assert_eq!(
        open_strict(&path).prefix(),
        Some(prefix_of(&bytes, all[6].offset()))
    );
}

#[test]
fn a_prefix_is_relied_on_only_up_to_the_position_at_every_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), 6);
    let bytes = fs::read(&input).unwrap();
    let all = positions(6);
    let mut text = String::new();
    Record::Header {
        version: super::format::VERSION,
    }
    .encode(&mut text);
    for pos in &all[..4] {
        Record::Position(*pos).encode(&mut text);
        Record::Prefix(prefix_of(&bytes, pos.offset())).encode(&mut text);
    }
    // A prefix past the position (never written so) is not relied on.
    Record::Prefix(prefix_of(&bytes, all[5].offset())).encode(&mut text);
    let path = dir.path().join("c");
    for len in 0..=text.len() {
        fs::write(&path, &text.as_bytes()[..len]).unwrap();
        let checkpoint = Checkpoint::open(&path).unwrap();
        let position = checkpoint.position();
        match checkpoint.prefix() {
            None => {}
            Some(prefix) => {
                assert!(prefix.offset <= position.offset(), "at {len}");
                assert_eq!(prefix, prefix_of(&bytes, prefix.offset), "at {len}");
            }
        }
        if len == text.len() {
            assert_eq!(
                checkpoint.prefix(),
                Some(prefix_of(&bytes, all[3].offset()))
            );
        }
    }
}

#[test]
fn an_empty_file_or_torn_header_is_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    for content in [
        &b""[..],
        b"linemark-chec",
        b"linemark-checkpoint version=1 crc=12",
    ] {
        fs::write(&path, content).unwrap();
        let mut checkpoint = open_strict(&path);
        assert!(checkpoint.position().is_start());
        checkpoint.commit(positions(1)[0]).unwrap();
        drop(checkpoint);
        assert_eq!(open_strict(&path).position(), positions(1)[0]);
    }
}

#[test]
fn crash_during_compaction_at_each_step_leaves_a_valid_checkpoint() {
    for step in [RewriteStep::TempSynced, RewriteStep::Renamed] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let all = positions(3);
        let mut checkpoint = open_strict(&path);
        checkpoint.commit(all[0]).unwrap();
        checkpoint.commit_done(done(3)).unwrap();
        checkpoint.commit(all[1]).unwrap();
        // The state being compacted is (line 2, done 3).
        checkpoint.compact_until(step).unwrap();
        checkpoint.crash();
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        let reopened = open_strict(&path);
        assert_eq!(reopened.position(), all[1], "{step:?}");
        assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![3]);
        // Temp files left by the crash are removed by the next open.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{step:?}: {names:?} (had {leftovers})");
    }
}

#[test]
fn compaction_bounds_the_file_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .compact_at(2048)
        .open(&path)
        .unwrap();
    let all = positions(500);
    let mut max_len = 0;
    for (i, pos) in all.iter().enumerate() {
        checkpoint.commit(*pos).unwrap();
        if i % 7 == 0 {
            checkpoint.commit_done(done(pos.line() + 2)).unwrap();
        }
        max_len = max_len.max(fs::metadata(&path).unwrap().len());
    }
    checkpoint.commit_done(done(502)).unwrap();
    let failed = FailedLine::from_parts(9, 100, 10, 1, 3, "gone".into());
    checkpoint.commit_failed(failed.clone()).unwrap();
    checkpoint.close().unwrap();
    assert!(max_len <= 2048 + 200, "{max_len}");
    let reopened = open_strict(&path);
    assert_eq!(reopened.position(), all[499]);
    assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![502]);
    assert_eq!(
        reopened
            .failed()
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        vec![failed]
    );
}

#[test]
fn group_commit_writes_only_the_newest_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(100, Duration::from_secs(3600)))
        .open(&path)
        .unwrap();
    let all = positions(250);
    for pos in &all {
        checkpoint.commit(*pos).unwrap();
    }
    // Two groups of 100 were synced: the file holds the header, the first
    // snapshot and one record for the second group.
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    let on_disk = {
        let (state, _, _) = parse(&path, text.as_bytes()).unwrap();
        state.position
    };
    assert_eq!(on_disk, all[199]);
    checkpoint.close().unwrap();
    assert_eq!(open_strict(&path).position(), all[249]);
}

#[test]
fn the_delay_limit_syncs_a_small_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::ZERO))
        .open(&path)
        .unwrap();
    checkpoint.commit(positions(1)[0]).unwrap();
    checkpoint.crash();
    assert_eq!(open_strict(&path).position(), positions(1)[0]);
}

/// Polls `condition` until it holds; only a hang reaches the deadline.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_writer_thread_syncs_a_small_group_without_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::from_millis(20)))
        .write_delay(Duration::from_secs(3600))
        .open(&path)
        .unwrap();
    let line = Line::new(b"first\n", 1, 0);
    checkpoint.commit_line(&line).unwrap();
    // Only getters from here on: the writer thread must act on its own.
    wait_for("the group sync", || checkpoint.sync_count() == 1);
    assert_eq!(checkpoint.durable_position(), line.end_position());
    checkpoint.crash();
    assert_eq!(open_strict(&path).position(), line.end_position());
}

#[test]
fn the_writer_thread_writes_within_the_write_delay_without_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::from_secs(3600)))
        .write_delay(Duration::from_millis(5))
        .open(&path)
        .unwrap();
    let mut lines = crate::LineReader::new(&b"a\nbb\nccc\n"[..]);
    let first = lines.next_line().unwrap().unwrap().end_position();
    checkpoint.commit(first).unwrap();
    // The first write creates the file, synced; the later ones append.
    checkpoint.sync().unwrap();
    let mut expected = first;
    for _ in 0..2 {
        let line = lines.next_line().unwrap().unwrap();
        expected = line.end_position();
        checkpoint.commit_line(&line).unwrap();
    }
    // Written (a kill of the process keeps it), not synced.
    wait_for("the write", || {
        Checkpoint::inspect(&path).is_ok_and(|s| s.position == expected)
    });
    assert_eq!(checkpoint.sync_count(), 1);
    assert_eq!(checkpoint.durable_position(), first);
    checkpoint
        .commit_done(Line::new(b"dddd\n", 4, 9).end_position())
        .unwrap();
    wait_for("the done record", || {
        Checkpoint::inspect(&path).is_ok_and(|s| s.done_beyond == [4])
    });
    checkpoint.crash();
    let reopened = open_strict(&path);
    assert_eq!(reopened.position(), expected);
    assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![4]);
}

#[test]
fn a_committing_thread_that_never_pauses_still_gets_written() {
    // The writer thread cannot read a slot that changes under it all the
    // time; it asks the committing thread to fold the line instead.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::NoSync)
        .write_delay(Duration::from_millis(2))
        .open(&path)
        .unwrap();
    let input: Vec<u8> = (0..2_000_000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();
    let mut lines = crate::LineReader::new(&input[..]);
    let mut written = 0;
    while let Some(line) = lines.next_line().unwrap() {
        checkpoint.commit_line(&line).unwrap();
        if line.number() % 100_000 == 0 {
            written = written.max(Checkpoint::inspect(&path).unwrap().position.line());
            if written > 0 {
                break;
            }
        }
    }
    assert!(written > 0, "nothing was written while committing");
}

#[test]
fn commit_line_is_commit_of_the_end_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let input = b"one\ntwo\r\nthree";
    let mut lines = crate::LineReader::new(&input[..]);
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(2, Duration::from_secs(3600)))
        .open(&path)
        .unwrap();
    checkpoint.commit_done(done(3)).unwrap();
    let mut expected = Position::start();
    while let Some(line) = lines.next_line().unwrap() {
        expected = expected.after(line.raw());
        checkpoint.commit_line(&line).unwrap();
        assert_eq!(checkpoint.position(), expected);
    }
    assert!(checkpoint.done_beyond().next().is_none());
    drop(checkpoint);
    assert_eq!(open_strict(&path).position(), expected);
}

#[test]
fn unsynced_group_is_lost_by_a_crash_but_not_by_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let builder = Checkpoint::builder()
        .durability(Durability::group(1_000, Duration::from_secs(3600)))
        .clone();
    let mut checkpoint = builder.open(&path).unwrap();
    checkpoint.commit(positions(1)[0]).unwrap();
    checkpoint.crash();
    assert!(open_strict(&path).position().is_start());
    let mut checkpoint = builder.open(&path).unwrap();
    checkpoint.commit(positions(1)[0]).unwrap();
    drop(checkpoint);
    assert_eq!(open_strict(&path).position(), positions(1)[0]);
}

#[test]
fn done_and_failed_records_round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let all = positions(6);
    let mut checkpoint = open_strict(&path);
    checkpoint.commit_done(done(3)).unwrap();
    checkpoint.commit_done(done(5)).unwrap();
    checkpoint.commit(all[0]).unwrap();
    checkpoint
        .commit_failed(FailedLine::from_parts(
            2,
            18,
            14,
            7,
            5,
            "bad \"x\"\n".into(),
        ))
        .unwrap();
    checkpoint
        .commit_failed(FailedLine::from_parts(4, 46, 14, 7, 5, "worse".into()))
        .unwrap();
    checkpoint.commit(all[3]).unwrap();
    checkpoint.commit_resolved(4).unwrap();
    drop(checkpoint);
    let reopened = open_strict(&path);
    assert_eq!(reopened.position(), all[3]);
    assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![5]);
    let failed: Vec<_> = reopened
        .failed()
        .unwrap()
        .map(Result::unwrap)
        .map(|f| (f.line(), f.error().to_owned()))
        .collect();
    assert_eq!(failed, vec![(2, "bad \"x\"\n".to_owned())]);
    assert!(
        reopened.is_done(1).unwrap()
            && reopened.is_done(5).unwrap()
            && !reopened.is_done(2).unwrap()
    );
    assert!(reopened.is_failed(2).unwrap() && !reopened.is_done(6).unwrap());
}

#[test]
fn rebase_shifts_done_lines_and_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let all = positions(6);
    let mut checkpoint = open_strict(&path);
    checkpoint.commit(all[3]).unwrap();
    checkpoint.commit_done(done(6)).unwrap();
    // The input lost its first two lines: line 4 is now line 2.
    let moved = Position::from_parts(
        all[3].offset() - all[1].offset(),
        2,
        all[3].last_len(),
        all[3].last_digest(),
    )
    .unwrap();
    checkpoint.rebase(moved).unwrap();
    drop(checkpoint);
    let reopened = open_strict(&path);
    assert_eq!(reopened.position(), moved);
    assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![4]);
}

#[test]
fn impossible_positions_are_refused_before_they_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = open_strict(&path);
    for line in [
        Line::new(b"a\n", 0, 0),
        Line::new(b"", 1, 0),
        Line::new(b"a\n", 9, 0),
    ] {
        assert!(matches!(
            checkpoint.commit_line(&line),
            Err(Error::InvalidPosition { .. })
        ));
    }
    let bad = Position::from_parts_unchecked(1, 0, 1, 0);
    assert!(matches!(
        checkpoint.commit(bad),
        Err(Error::InvalidPosition { .. })
    ));
    assert!(matches!(
        checkpoint.commit_done(bad),
        Err(Error::InvalidPosition { .. })
    ));
    let empty = FailedLine::from_parts(1, 0, 0, 0, 1, "x".into());
    assert!(matches!(
        checkpoint.commit_failed(empty),
        Err(Error::InvalidPosition { .. })
    ));
    checkpoint.commit_line(&Line::new(b"a\n", 1, 0)).unwrap();
    drop(checkpoint);
    assert_eq!(open_strict(&path).position().line(), 1);
}

#[test]
fn opening_leaves_the_temp_files_of_a_similarly_named_checkpoint_alone() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join(".a.b.linemark-tmp.XYZ123.tmp");
    let own = dir.path().join(".a.linemark-tmp.XYZ123.tmp");
    fs::write(&other, "in progress").unwrap();
    fs::write(&own, "left by a crash").unwrap();
    let _checkpoint = open_strict(&dir.path().join("a"));
    assert!(other.exists());
    assert!(!own.exists());
}

#[test]
fn a_second_checkpoint_on_the_same_file_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let first = Checkpoint::open(&path).unwrap();
    match Checkpoint::open(&path) {
        Err(Error::Locked { path: locked }) => assert_eq!(locked, path),
        other => panic!("{other:?}"),
    }
    drop(first);
    Checkpoint::open(&path).unwrap();
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<CheckpointBuilder>();
    assert_send_sync::<Position>();
    assert_send_sync::<FailedLine>();
    assert_send_sync::<crate::LineReader<std::io::Cursor<Vec<u8>>>>();
}

#[test]
fn records_written_during_a_background_compaction_are_never_lost() {
    // The sync thread compacts while the writer thread appends: what was
    // appended after the snapshot must reach the new file before its
    // rename, or a reader (and a kill) would see the position go back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(u32::MAX, Duration::from_secs(3600)))
        .write_delay(Duration::from_millis(1))
        .compact_at(512)
        .open(&path)
        .unwrap();
    let all = positions(10_000);
    checkpoint.commit(all[0]).unwrap();
    checkpoint.sync().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut seen, mut reads) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let snapshot = Checkpoint::inspect(&path).unwrap();
                let line = snapshot.position.line();
                assert!(
                    line >= seen,
                    "the file went back from line {seen} to {line}"
                );
                seen = line;
                reads += 1;
            }
            reads
        });
        for (index, &pos) in all.iter().enumerate().skip(1) {
            if let Some(&beyond) = all.get(index + 3) {
                checkpoint.commit_done(beyond).unwrap();
            }
            checkpoint.commit(pos).unwrap();
            if index % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        wait_for("the last position in the file", || {
            Checkpoint::inspect(&path).is_ok_and(|s| s.position == all[9_999])
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    // Some 20,000 records of about 60 bytes went through a 512-byte file
    // (the last compaction may still be under way on a loaded machine).
    wait_for("a compacted file", || {
        fs::metadata(&path).is_ok_and(|meta| meta.len() < 4_096)
    });
    checkpoint.crash();
    assert_eq!(open_strict(&path).position(), all[9_999]);
}

#[test]
fn an_impossible_record_with_a_valid_crc_is_corruption_even_at_the_end() {
    // A torn write fails its CRC; a record whose CRC matches but whose
    // numbers no input can have was written so: refuse the file rather than
    // drop the record as a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let mut checkpoint = open_strict(&path);
    checkpoint.commit(positions(1)[0]).unwrap();
    checkpoint.close().unwrap();
    let body =
        "failed line=3 offset=10 len=18446744073709551615 digest=00000000 attempts=1 error=\"x\"";
    let record = format!("{body} crc={:08x}\n", crc32fast::hash(body.as_bytes()));
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, record.as_bytes()).unwrap();
    drop(file);
    let before = fs::read(&path).unwrap();
    match Checkpoint::open(&path) {
        Err(Error::Corrupt { path: named, .. }) => assert_eq!(named, path),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), before, "the file is left alone");
}

#[test]
fn a_sync_catches_the_prefix_up_however_far_behind_it_is() {
    // A checkpoint without a prefix, 20 MiB into its input: more than one
    // write of the writer thread reads (16 MiB).
    let dir = tempfile::tempdir().unwrap();
    let lines = 1_300_000;
    let input = input_file(dir.path(), lines);
    let bytes = fs::read(&input).unwrap();
    assert!(bytes.len() > 20 << 20);
    let all = positions(lines);
    let path = dir.path().join("c");
    let mut text = String::new();
    Record::Header { version: 2 }.encode(&mut text);
    Record::Position(all[lines - 2]).encode(&mut text);
    fs::write(&path, &text).unwrap();
    let mut checkpoint = Checkpoint::builder().open(&path).unwrap();
    checkpoint.read_back_from(&input, true).unwrap();
    checkpoint.commit(all[lines - 1]).unwrap();
    checkpoint.sync().unwrap();
    assert_eq!(
        checkpoint.prefix(),
        Some(prefix_of(&bytes, bytes.len() as u64))
    );
    drop(checkpoint);
    assert_eq!(
        open_strict(&path).prefix(),
        Some(prefix_of(&bytes, bytes.len() as u64))
    );
}

#[test]
fn the_prefix_is_recorded_at_most_once_a_second_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), 200);
    let bytes = fs::read(&input).unwrap();
    let path = dir.path().join("c");
    let all = positions(200);
    let mut checkpoint = open_strict(&path);
    checkpoint.read_back_from(&input, true).unwrap();
    let started = Instant::now();
    for pos in &all {
        checkpoint.commit(*pos).unwrap();
    }
    let seconds = started.elapsed().as_secs();
    let records = |text: &str| text.lines().filter(|r| r.starts_with("prefix ")).count() as u64;
    let written = fs::read_to_string(&path).unwrap();
    // The first write records it; then one a second at most.
    assert!(records(&written) <= 1 + seconds, "{written}");
    checkpoint.close().unwrap();
    let written = fs::read_to_string(&path).unwrap();
    assert!(
        written.lines().last().unwrap().starts_with("prefix "),
        "{written}"
    );
    assert_eq!(
        open_strict(&path).prefix(),
        Some(prefix_of(&bytes, bytes.len() as u64))
    );
}

#[derive(Debug)]
/// The real file system, whose renames fail while `fail` is set.
struct NoRename {
    fail: AtomicBool,
}

impl Fs for NoRename {
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn io::Read + Send>>> {
        RealFs.open_read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        RealFs.open_append(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        RealFs.create_new(path)
    }
    fn create_temp(&self, dir: &Path, prefix: &OsStr) -> io::Result<(PathBuf, Box<dyn FsFile>)> {
        RealFs.create_temp(dir, prefix)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("rename refused (test)"));
        }
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        RealFs.list_dir(dir)
    }
}

/// A compaction that fails leaves the old file, of version 2: the first
/// `prefix` record must still rewrite it in the current version, never be
/// appended to it (a linemark that reads only version 2 would call the file
/// corrupt instead of too new).
#[test]
fn a_failed_compaction_lets_a_prefix_record_into_a_version_2_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), 50);
    let all = positions(50);
    let path = dir.path().join("c");
    let mut text = String::new();
    Record::Header { version: 2 }.encode(&mut text);
    Record::Shard { index: 0, count: 1 }.encode(&mut text);
    Record::Position(all[0]).encode(&mut text);
    fs::write(&path, &text).unwrap();

    let fs_ = Arc::new(NoRename {
        fail: AtomicBool::new(true),
    });
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .compact_at(1)
        .file_system(fs_.clone())
        .open(&path)
        .unwrap();
    // The commit is appended and synced; the compaction after it fails.
    assert!(checkpoint.commit(all[1]).is_err());
    checkpoint.read_back_from(&input, true).unwrap();
    let _ = checkpoint.commit(all[2]);
    checkpoint.crash();
    let written = fs::read_to_string(&path).unwrap();
    assert!(
        !(written.starts_with("linemark-checkpoint version=2 ") && written.contains("\nprefix ")),
        "a prefix record in a version-2 file:\n{written}"
    );
}
