//! A resume verifies the whole finished part of a file input, not only its
//! last line: an edit there that would make a run skip or repeat lines is
//! refused, and `verify_prefix(false)` gives that check up for an O(1)
//! resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use linemark::{Error, Line, Runner, SeekMode, StopToken};

fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    let text: String = (1..=lines).map(|n| format!("item-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// How often each line's text was run.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, u32>>);

impl Seen {
    fn note(&self, line: &Line<'_>) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(line.as_str().unwrap().to_owned())
            .or_default() += 1;
    }
}

/// Runs each of the `shards` of `count` over `input` until it did `first`
/// lines.
fn run_shards_partly(
    input: &Path,
    shards: std::ops::Range<u64>,
    count: u64,
    first: u64,
    seen: &Seen,
) {
    for index in shards {
        let stop = StopToken::new();
        let done = AtomicU64::new(0);
        let task = |line: &Line<'_>| -> Result<(), String> {
            seen.note(line);
            if done.fetch_add(1, Ordering::SeqCst) + 1 == first {
                stop.stop();
            }
            Ok(())
        };
        let report = Runner::new()
            .shard(index, count)
            .stop_token(stop.clone())
            .run_task(input, &task)
            .unwrap();
        assert!(report.stopped && report.done == first, "{report:?}");
    }
}

/// Joins lines 2 and 3 with a space: the same bytes at the same offsets,
/// one line fewer.
fn join_lines_2_and_3(input: &Path) {
    let text = std::fs::read_to_string(input).unwrap();
    let joined = text.replacen("item-2\nitem-3\n", "item-2 item-3\n", 1);
    assert_eq!(joined.len(), text.len());
    std::fs::write(input, joined).unwrap();
}

/// Shards 0/3 and 1/3 run partly; then lines 2 and 3 are joined and shard
/// 2/3 runs whole, over the new numbering; returns the task that runs the
/// rest.
fn partly_then_joined_then_shard_2(input: &Path, seen: &Seen) {
    run_shards_partly(input, 0..2, 3, 5, seen);
    join_lines_2_and_3(input);
    let task = |line: &Line<'_>| -> Result<(), String> {
        seen.note(line);
        Ok(())
    };
    let report = Runner::new().shard(2, 3).run_task(input, &task).unwrap();
    assert!(report.is_complete(), "{report:?}");
}

#[test]
fn joining_two_finished_lines_is_refused_by_every_shard_that_finished_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 60);
    let seen = Seen::default();
    partly_then_joined_then_shard_2(&input, &seen);
    let before = seen.0.lock().unwrap().values().sum::<u32>();
    for index in 0..2 {
        let task = |line: &Line<'_>| -> Result<(), String> {
            seen.note(line);
            Ok(())
        };
        let err = Runner::new()
            .shard(index, 3)
            .run_task(&input, &task)
            .unwrap_err();
        match &err {
            Error::InputChanged {
                path,
                line,
                expected,
                found,
                ..
            } => {
                assert_eq!(path.as_deref(), Some(input.as_path()));
                let before = line - 1;
                assert!(
                    expected.starts_with(&format!("{before} lines before it")),
                    "{err}"
                );
                assert!(
                    found.starts_with(&format!("{} lines in the first", before - 1)),
                    "{err}"
                );
                assert!(found.contains("joined"), "{err}");
            }
            other => panic!("shard {index}: {other}"),
        }
    }
    // Nothing ran after the edit.
    assert_eq!(seen.0.lock().unwrap().values().sum::<u32>(), before);
}

#[test]
fn joining_two_finished_lines_is_refused_without_shards_in_every_seek_mode_that_counts() {
    for mode in [SeekMode::Offset, SeekMode::Lines] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), 20);
        let seen = Seen::default();
        run_shards_partly(&input, 0..1, 1, 8, &seen);
        join_lines_2_and_3(&input);
        let task = |line: &Line<'_>| -> Result<(), String> {
            seen.note(line);
            Ok(())
        };
        let err = Runner::new()
            .seek_mode(mode)
            .run_task(&input, &task)
            .unwrap_err();
        assert!(
            matches!(err, Error::InputChanged { line: 8, .. }),
            "{mode:?}: {err}"
        );
    }
}

#[test]
fn the_opt_out_trusts_the_last_line_and_shards_then_skip_and_repeat_lines() {
    // What `verify_prefix(false)` gives up, shown: the same edit passes,
    // and the shards together run some lines twice or never.
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 60);
    let seen = Seen::default();
    partly_then_joined_then_shard_2(&input, &seen);
    for index in 0..2 {
        let task = |line: &Line<'_>| -> Result<(), String> {
            seen.note(line);
            Ok(())
        };
        let report = Runner::new()
            .shard(index, 3)
            .verify_prefix(false)
            .run_task(&input, &task)
            .unwrap();
        assert!(report.is_complete(), "{report:?}");
    }
    let seen = seen.0.into_inner().unwrap();
    let wrong: Vec<_> = (4..=60)
        .map(|n| format!("item-{n}"))
        .filter(|item| seen.get(item) != Some(&1))
        .collect();
    assert!(!wrong.is_empty(), "every line once: {seen:?}");
}

#[test]
fn a_same_length_edit_of_an_early_finished_line_is_refused() {
    for mode in [SeekMode::Offset, SeekMode::Lines] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), 1000);
        let ok = |_: &Line<'_>| -> Result<(), String> { Ok(()) };
        Runner::new().seek_mode(mode).run_task(&input, &ok).unwrap();
        let text = std::fs::read_to_string(&input).unwrap();
        std::fs::write(&input, text.replacen("item-10\n", "item-1X\n", 1)).unwrap();
        let err = Runner::new()
            .seek_mode(mode)
            .run_task(&input, &ok)
            .unwrap_err();
        match &err {
            Error::InputChanged {
                line,
                expected,
                found,
                ..
            } => {
                assert_eq!(*line, 1000, "{err}");
                let len = text.len();
                assert!(
                    expected.starts_with(&format!("the first {len} bytes as finished")),
                    "{err}"
                );
                assert!(found.contains("a finished line was edited"), "{err}");
            }
            other => panic!("{mode:?}: {other}"),
        }
        // The opt-out does not read the prefix: the edit goes unnoticed.
        let report = Runner::new()
            .seek_mode(mode)
            .verify_prefix(false)
            .run_task(&input, &ok)
            .unwrap();
        assert_eq!(report.done, 0, "{mode:?}");
    }
}

#[test]
fn appending_lines_is_not_a_change_and_the_prefix_follows() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 10);
    let ok = |_: &Line<'_>| -> Result<(), String> { Ok(()) };
    Runner::new().run_task(&input, &ok).unwrap();
    for round in 0..3 {
        let mut text = std::fs::read_to_string(&input).unwrap();
        text.push_str(&format!("more-{round}\n"));
        std::fs::write(&input, &text).unwrap();
        let report = Runner::new().run_task(&input, &ok).unwrap();
        assert_eq!(report.done, 1, "round {round}");
    }
    // The last append is digested too: an edit of it is seen.
    let text = std::fs::read_to_string(&input).unwrap();
    std::fs::write(&input, text.replace("more-1\n", "more-X\n")).unwrap();
    assert!(matches!(
        Runner::new().run_task(&input, &ok),
        Err(Error::InputChanged { .. })
    ));
}

/// Rewrites a checkpoint as version 2 would have written it: no `prefix`
/// records.
fn as_version_2(checkpoint: &Path) {
    let text = std::fs::read_to_string(checkpoint).unwrap();
    let mut out = String::new();
    for record in text.lines() {
        if record.starts_with("prefix ") {
            continue;
        }
        if record.starts_with("linemark-checkpoint ") {
            let body = "linemark-checkpoint version=2";
            out.push_str(&format!(
                "{body} crc={:08x}\n",
                crc32fast::hash(body.as_bytes())
            ));
        } else {
            out.push_str(record);
            out.push('\n');
        }
    }
    std::fs::write(checkpoint, out).unwrap();
}

#[test]
fn a_version_2_checkpoint_still_has_its_lines_counted_and_gains_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 30);
    let checkpoint = dir.path().join("input.txt.checkpoint");
    let seen = Seen::default();
    run_shards_partly(&input, 0..1, 1, 10, &seen);
    as_version_2(&checkpoint);
    let original = std::fs::read_to_string(&input).unwrap();
    join_lines_2_and_3(&input);
    let ok = |_: &Line<'_>| -> Result<(), String> { Ok(()) };
    assert!(matches!(
        Runner::new().run_task(&input, &ok),
        Err(Error::InputChanged { line: 10, .. })
    ));
    // Left as it was by the refused run.
    assert!(
        std::fs::read_to_string(&checkpoint)
            .unwrap()
            .starts_with("linemark-checkpoint version=2 ")
    );
    std::fs::write(&input, &original).unwrap();
    let report = Runner::new().run_task(&input, &ok).unwrap();
    assert_eq!(report.done, 20);
    let written = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(
        written.starts_with("linemark-checkpoint version=5 ") && written.contains("\nprefix "),
        "{written}"
    );
    std::fs::write(&input, original.replacen("item-1\n", "item-X\n", 1)).unwrap();
    assert!(matches!(
        Runner::new().run_task(&input, &ok),
        Err(Error::InputChanged { .. })
    ));
}

#[test]
fn a_content_resume_forgets_the_digest_of_what_it_accepted() {
    // A resume by content accepts an edit before the last finished line
    // (by design). The digest of the bytes as they were finished is then
    // stale: a later default resume of the input, unchanged since, must
    // not be refused because of it.
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 20);
    let seen = Seen::default();
    run_shards_partly(&input, 0..1, 1, 10, &seen);
    let text = std::fs::read_to_string(&input).unwrap();
    std::fs::write(&input, text.replacen("item-3\n", "item-X\n", 1)).unwrap();
    let report = Runner::new()
        .seek_mode(SeekMode::Content)
        .run(&input, |_| Ok(()))
        .unwrap();
    assert!(report.is_complete() && report.done == 10, "{report:?}");
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("item-21\n");
    std::fs::write(&input, &text).unwrap();
    let report = Runner::new().run(&input, |_| Ok(())).unwrap();
    assert_eq!(report.done, 1, "{report:?}");
    // And the digest is whole again: an edit now is seen.
    std::fs::write(&input, text.replacen("item-5\n", "item-Y\n", 1)).unwrap();
    assert!(matches!(
        Runner::new().run(&input, |_| Ok(())),
        Err(Error::InputChanged { .. })
    ));
}
