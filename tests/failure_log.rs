//! The failure log (format version 5): failed lines the position passed
//! live in `CHECKPOINT.failures`, once each, whatever order they are
//! resolved or failed again in; files of version 4 and older still open,
//! their failed lines moved to the log at the first write; a rebase moves
//! the logged lines with the input; the checkpoint itself stays small.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use linemark::{
    Checkpoint, Durability, Error, FailedLine, Line, RetryPolicy, Runner, SeekMode, permanent,
};

use common::{Input, failed_lines};

fn log_of(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap().to_os_string();
    name.push(".failures");
    checkpoint.with_file_name(name)
}

/// A record line with its CRC, as the format writes it.
fn record(body: &str) -> String {
    format!("{body} crc={:08x}\n", crc32fast::hash(body.as_bytes()))
}

fn numbers(failed: &[FailedLine]) -> Vec<u64> {
    failed.iter().map(FailedLine::line).collect()
}

/// `(line, attempts)` of the failed lines a checkpoint lists, in its order.
fn listed(checkpoint: &Checkpoint) -> Vec<(u64, u32)> {
    checkpoint
        .failed()
        .unwrap()
        .map(|failed| failed.map(|f| (f.line(), f.attempts())))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Lines of `input` fail (with `attempts`) where `fails` says, the others
/// are committed; the position passes all of them.
fn hand_written_run(
    checkpoint: &mut Checkpoint,
    input: &Input,
    fails: impl Fn(u64) -> bool,
    attempts: u32,
) {
    let positions = input.positions();
    for (index, raw) in input.lines.iter().enumerate() {
        let number = index as u64 + 1;
        let line = Line::new(raw, number, positions[index].offset());
        if fails(number) {
            checkpoint
                .commit_failed(FailedLine::new(&line, attempts, format!("boom {number}")))
                .unwrap();
        }
        checkpoint.commit_line(&line).unwrap();
    }
}

#[test]
fn failed_lines_the_position_passed_go_to_the_log_once() {
    let input = Input::generated(200);
    let path = input.sibling("job.checkpoint");
    {
        let mut checkpoint = Checkpoint::builder().compact_at(4096).open(&path).unwrap();
        hand_written_run(&mut checkpoint, &input, |n| n % 2 == 0, 1);
        checkpoint.close().unwrap();
    }
    let failed = failed_lines(&path);
    assert_eq!(
        numbers(&failed),
        (1..=100).map(|n| n * 2).collect::<Vec<_>>()
    );
    assert_eq!(Checkpoint::inspect(&path).unwrap().failed, 100);
    // The log holds each failed line's record once; the checkpoint none.
    let log = fs::read_to_string(log_of(&path)).unwrap();
    assert_eq!(log.lines().count(), 100, "{log}");
    assert!(log.lines().all(|record| record.starts_with("failed line=")));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("linemark-checkpoint version=5 "), "{text}");
    assert!(!text.contains("\nfailed "), "{text}");
    assert!(text.len() < 4096, "{} bytes", text.len());
}

#[test]
fn resolutions_and_failures_again_in_any_order_keep_each_line_once() {
    let input = Input::generated(30);
    let path = input.sibling("job.checkpoint");
    let positions = input.positions();
    let line = |n: u64| {
        Line::new(
            &input.lines[n as usize - 1],
            n,
            positions[n as usize - 1].offset(),
        )
    };
    let mut checkpoint = Checkpoint::open(&path).unwrap();
    hand_written_run(&mut checkpoint, &input, |n| n % 5 == 0, 1);
    checkpoint.sync().unwrap();
    assert_eq!(
        listed(&checkpoint),
        vec![(5, 1), (10, 1), (15, 1), (20, 1), (25, 1), (30, 1)]
    );
    // In list order: the head of the log.
    checkpoint.commit_resolved(5).unwrap();
    checkpoint
        .commit_failed(FailedLine::new(&line(10), 2, "again"))
        .unwrap();
    // Out of order: a resolution, a failure again, a line never failed.
    checkpoint.commit_resolved(25).unwrap();
    checkpoint
        .commit_failed(FailedLine::new(&line(20), 3, "again"))
        .unwrap();
    checkpoint.commit_resolved(7).unwrap();
    // A line that did not fail before fails now (behind the position).
    checkpoint
        .commit_failed(FailedLine::new(&line(3), 1, "late"))
        .unwrap();
    let expected = vec![(3, 1), (10, 2), (15, 1), (20, 3), (30, 1)];
    let sorted = |mut lines: Vec<(u64, u32)>| {
        lines.sort_unstable();
        lines
    };
    assert_eq!(sorted(listed(&checkpoint)), expected);
    assert_eq!(checkpoint.failed_count(), 5);
    assert!(checkpoint.is_failed(20).unwrap() && !checkpoint.is_failed(25).unwrap());
    assert!(checkpoint.is_done(25).unwrap() && !checkpoint.is_done(20).unwrap());
    drop(checkpoint);
    // The same after a crash (a drop) and a reopen.
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(sorted(listed(&checkpoint)), expected);
    assert_eq!(checkpoint.failed_count(), 5);
    drop(checkpoint);
    // A retry lists them once each, in line order after it: the runner
    // writes the out-of-order log again first, then retries at its head.
    let report = Runner::new()
        .checkpoint_path(&path)
        .retry(RetryPolicy::never())
        .retry_failed(true)
        .run(&input.path, |line: &Line<'_>| {
            if line.number() == 20 {
                Err(permanent("still"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!((report.done, report.failed, report.failed_total), (4, 1, 1));
    let failed = failed_lines(&path);
    assert_eq!(numbers(&failed), vec![20]);
    assert_eq!(failed[0].attempts(), 4);
    assert_eq!(failed[0].error(), "still");
}

#[test]
fn a_retry_in_list_order_appends_only_the_lines_that_fail_again() {
    let input = Input::generated(100);
    let path = input.sibling("job.checkpoint");
    let fail_all = |_: &Line<'_>| -> Result<(), linemark::BoxError> { Err(permanent("no")) };
    Runner::new()
        .checkpoint_path(&path)
        .run(&input.path, fail_all)
        .unwrap();
    let before = fs::metadata(log_of(&path)).unwrap().len();
    // Every third line fails again.
    let report = Runner::new()
        .checkpoint_path(&path)
        .workers(4)
        .retry(RetryPolicy::never())
        .retry_failed(true)
        .run(&input.path, |line: &Line<'_>| {
            if line.number() % 3 == 0 {
                Err(permanent("again"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!((report.done, report.failed), (67, 33));
    let failed = failed_lines(&path);
    assert_eq!(
        numbers(&failed),
        (1..=33).map(|n| n * 3).collect::<Vec<_>>()
    );
    // The log grew by the records of the lines that failed again, and no
    // `resolved` record: the others were passed over at the log's head.
    let log = fs::read_to_string(log_of(&path)).unwrap();
    let grown = &log[before as usize..];
    assert_eq!(grown.lines().count(), 33, "{grown}");
    assert!(!log.contains("resolved"), "{log}");
    // All resolved: the log is let go at the clean end.
    Runner::new()
        .checkpoint_path(&path)
        .retry_failed(true)
        .run(&input.path, |_: &Line<'_>| Ok::<(), linemark::BoxError>(()))
        .unwrap();
    assert!(failed_lines(&path).is_empty());
    assert_eq!(Checkpoint::inspect(&path).unwrap().failed, 0);
    assert!(!log_of(&path).exists());
}

#[test]
fn a_version_4_checkpoint_with_failed_lines_opens_and_moves_them_to_the_log() {
    let input = Input::generated(10);
    let path = input.sibling("job.checkpoint");
    let positions = input.positions();
    let failed_record = |n: usize, attempts: u32| {
        let line = Line::new(&input.lines[n - 1], n as u64, positions[n - 1].offset());
        let failed = FailedLine::new(&line, attempts, "old");
        record(&format!(
            "failed line={n} offset={} len={} digest={:08x} attempts={attempts} error=\"old\"",
            failed.offset(),
            failed.len(),
            failed.digest()
        ))
    };
    let pos = positions[6];
    let text = [
        record("linemark-checkpoint version=4"),
        failed_record(2, 1),
        failed_record(4, 2),
        record(&format!(
            "pos offset={} line={} len={} digest={:08x}",
            pos.offset(),
            pos.line(),
            pos.last_len(),
            pos.last_digest()
        )),
        failed_record(9, 1),
        record("resolved line=4"),
        failed_record(6, 3),
    ]
    .concat();
    fs::write(&path, &text).unwrap();
    // Read as it is, without a failure log.
    assert_eq!(Checkpoint::inspect(&path).unwrap().failed, 3);
    assert_eq!(numbers(&failed_lines(&path)), vec![2, 6, 9]);
    {
        let checkpoint = Checkpoint::open(&path).unwrap();
        assert_eq!(listed(&checkpoint), vec![(2, 1), (6, 3), (9, 1)]);
        // Opening writes nothing.
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert!(!log_of(&path).exists());
    }
    // The first write moves the lines behind the position to a log, in a
    // file of version 5.
    {
        let mut checkpoint = Checkpoint::open(&path).unwrap();
        checkpoint.commit(positions[7]).unwrap();
        checkpoint.close().unwrap();
    }
    let written = fs::read_to_string(&path).unwrap();
    assert!(
        written.starts_with("linemark-checkpoint version=5 "),
        "{written}"
    );
    let log = fs::read_to_string(log_of(&path)).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    let failed = failed_lines(&path);
    assert_eq!(numbers(&failed), vec![2, 6, 9]);
    assert_eq!(failed[1].attempts(), 3);
    assert_eq!(Checkpoint::inspect(&path).unwrap().failed, 3);
}

#[test]
fn a_rebase_moves_the_logged_lines_with_the_input() {
    let input = Input::generated(20);
    let path = input.sibling("job.checkpoint");
    let fails = |line: &Line<'_>| -> Result<(), linemark::BoxError> {
        if line.number() % 4 == 0 {
            Err(permanent("no"))
        } else {
            Ok(())
        }
    };
    Runner::new()
        .checkpoint_path(&path)
        .run(&input.path, fails)
        .unwrap();
    assert_eq!(numbers(&failed_lines(&path)), vec![4, 8, 12, 16, 20]);
    // Three lines come in front of the finished ones, and one after them.
    let mut edited = b"new a\nnew b\nnew c\n".to_vec();
    for line in &input.lines {
        edited.extend_from_slice(line);
    }
    edited.extend_from_slice(b"new d\n");
    fs::write(&input.path, &edited).unwrap();
    let report = Runner::new()
        .checkpoint_path(&path)
        .seek_mode(SeekMode::Content)
        .run(&input.path, |_: &Line<'_>| Ok::<(), linemark::BoxError>(()))
        .unwrap();
    assert_eq!(report.done, 1);
    let failed = failed_lines(&path);
    assert_eq!(numbers(&failed), vec![7, 11, 15, 19, 23]);
    // Each record names its line where it is now: a retry reads and checks
    // every one (a stale offset or digest would be an input change).
    let retried = std::sync::Mutex::new(Vec::new());
    let report = Runner::new()
        .checkpoint_path(&path)
        .retry_failed(true)
        .run(&input.path, |line: &Line<'_>| {
            let text = line.as_str().unwrap().to_owned();
            retried.lock().unwrap().push((line.number(), text));
            Ok::<(), linemark::BoxError>(())
        })
        .unwrap();
    assert_eq!(report.done, 5);
    let expected: Vec<(u64, String)> = [4, 8, 12, 16, 20]
        .iter()
        .map(|&n| {
            let text = String::from_utf8(input.lines[n - 1].clone()).unwrap();
            (n as u64 + 3, text.trim_end().to_owned())
        })
        .collect();
    assert_eq!(retried.into_inner().unwrap(), expected);
    assert!(failed_lines(&path).is_empty());
}

#[test]
fn a_missing_or_edited_failure_log_is_refused_and_left_alone() {
    let input = Input::generated(40);
    let path = input.sibling("job.checkpoint");
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .open(&path)
        .unwrap();
    hand_written_run(&mut checkpoint, &input, |n| n % 3 == 0, 1);
    checkpoint.close().unwrap();
    let log = log_of(&path);
    let bytes = fs::read(&log).unwrap();
    let checkpoint_bytes = fs::read(&path).unwrap();
    let refused = |what: &str| match Checkpoint::open(&path) {
        Err(Error::OutputChanged { path: named, .. }) => assert_eq!(named, log, "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    // Edited: one byte changed near its end.
    let mut edited = bytes.clone();
    let at = edited.len() - 10;
    edited[at] ^= 1;
    fs::write(&log, &edited).unwrap();
    refused("edited");
    assert_eq!(fs::read(&log).unwrap(), edited);
    // Bytes after the recorded length, even after a clean end: a session
    // killed between its first appends and its first record; cut.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"failed line=99 junk\n");
    fs::write(&log, &longer).unwrap();
    drop(Checkpoint::open(&path).unwrap());
    assert_eq!(fs::read(&log).unwrap(), bytes);
    // Missing.
    fs::remove_file(&log).unwrap();
    refused("missing");
    assert_eq!(fs::read(&path).unwrap(), checkpoint_bytes);
    // Put back, it opens.
    fs::write(&log, &bytes).unwrap();
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(checkpoint.failed_count(), 13);
}

#[test]
fn retries_that_fail_again_keep_the_log_the_size_of_its_live_part() {
    let input = Input::generated(3000);
    let path = input.sibling("job.checkpoint");
    let dir = path.parent().unwrap().to_path_buf();
    let logs = || -> Vec<(String, u64)> {
        let mut logs: Vec<(String, u64)> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_name().to_string_lossy().contains(".failures"))
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, entry.metadata().unwrap().len())
            })
            .collect();
        logs.sort();
        logs
    };
    let runner = || {
        Runner::new()
            .checkpoint_path(&path)
            .retry(RetryPolicy::never())
    };
    runner()
        .run(&input.path, |_: &Line<'_>| Err(permanent("down")))
        .unwrap();
    let first = logs();
    assert_eq!(first.len(), 1, "{first:?}");
    let one_pass = first[0].1;
    for pass in 1..=5u32 {
        let report = runner()
            .retry_failed(true)
            .run(&input.path, |_: &Line<'_>| Err(permanent("still down")))
            .unwrap();
        assert_eq!(report.failed, 3000);
        // One log, whichever of its two names it has now, at most twice
        // its live part (a record is at most 16 bytes longer than in the
        // first pass: a longer error, more attempts) and the 64 KiB of dead
        // records a log keeps: a clean end copies the live part once the
        // dead part is as long. Without that, 5 passes make it 6 times.
        let now = logs();
        assert_eq!(now.len(), 1, "pass {pass}: {now:?}");
        let live = one_pass + 3000 * 16;
        assert!(
            now[0].1 <= 2 * live + (64 << 10),
            "pass {pass}: {now:?}, one pass {one_pass}"
        );
        let failed = failed_lines(&path);
        assert_eq!(failed.len(), 3000);
        assert!(
            failed
                .iter()
                .all(|f| f.attempts() == 1 + pass && f.error() == "still down")
        );
    }
}

/// Where a new failure log goes, a file may already be: the log of a
/// checkpoint removed since (or of a session killed before it recorded
/// its log), emptied and used; or a file that is no failure log, which is
/// left alone, byte for byte, with an error naming it, and the failed
/// lines stay with the checkpoint until it is moved away.
#[test]
fn a_file_in_the_failure_log_s_place_is_emptied_only_when_it_is_a_failure_log() {
    let input = Input::generated(30);
    let path = input.sibling("job.checkpoint");
    let log = log_of(&path);

    // A removed checkpoint's log, its last record cut short: emptied.
    let mut old = record("failed line=7 offset=0 len=3 digest=00000000 attempts=1 error=\"old\"");
    old.push_str("fail");
    fs::write(&log, &old).unwrap();
    let mut checkpoint = Checkpoint::open(&path).unwrap();
    hand_written_run(&mut checkpoint, &input, |n| n == 5, 1);
    checkpoint.close().unwrap();
    assert_eq!(numbers(&failed_lines(&path)), [5]);
    assert!(!fs::read_to_string(&log).unwrap().contains("old"));

    // A file that is no failure log: refused, kept, and the failed line
    // is written once it is moved away.
    for foreign in [&b"notes I keep\n"[..], b"fail\n", b"failed to say\n"] {
        fs::remove_file(&path).unwrap();
        fs::write(&log, foreign).unwrap();
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::EveryCommit)
            .open(&path)
            .unwrap();
        let positions = input.positions();
        let line = Line::new(&input.lines[0], 1, 0);
        checkpoint
            .commit_failed(FailedLine::new(&line, 1, "boom 1"))
            .unwrap();
        let second = Line::new(&input.lines[1], 2, positions[1].offset());
        let error = checkpoint
            .commit_line(&line)
            .and_then(|()| checkpoint.commit_line(&second))
            .and_then(|()| checkpoint.sync())
            .expect_err(&format!(
                "{:?} was emptied",
                String::from_utf8_lossy(foreign)
            ));
        let message = error.to_string();
        assert!(
            message.contains("job.checkpoint.failures") && message.contains("not a failure log"),
            "{message}"
        );
        assert_eq!(fs::read(&log).unwrap(), foreign);
        let away = input.sibling("moved-away");
        fs::rename(&log, &away).unwrap();
        checkpoint.sync().unwrap();
        checkpoint.close().unwrap();
        assert_eq!(numbers(&failed_lines(&path)), [1]);
        assert_eq!(fs::read(&away).unwrap(), foreign);
        fs::remove_file(&log).unwrap();
    }
}
