//! Outputs attached to a checkpoint (`Checkpoint::output`): results written
//! exactly once across crashes (simulated in process by dropping the
//! checkpoint without `close`), the refusal of an output that is not the
//! recorded one (missing, shorter, replaced, with foreign bytes after a
//! clean close, another name, not attached, attached too late or to
//! progress made without it), the files left unchanged by every refusal,
//! an old version-3 file, a torn checkpoint tail at every byte, and
//! snapshots taken while a job runs.
//!
//! SIGKILL tests live elsewhere; a dropped `Checkpoint` writes its pending
//! records, so a drop here is a crash of the job's loop, not of the process.

mod common;

use std::fs;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use linemark::{Checkpoint, Durability, Error, LineReader, Position};

use common::{Input, generated_lines};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The result a job writes for a line: deterministic, and different for
/// every line of the generated inputs.
fn result_of(raw: &[u8]) -> Vec<u8> {
    let content = raw.strip_suffix(b"\n").unwrap_or(raw);
    let mut out = b"R(".to_vec();
    out.extend_from_slice(content);
    out.extend_from_slice(b")\n");
    out
}

/// What a job rejects: every third line, to a second output.
fn is_rejected(number: u64) -> bool {
    number % 3 == 0
}

fn reject_of(raw: &[u8]) -> Vec<u8> {
    let content = raw.strip_suffix(b"\n").unwrap_or(raw);
    let mut out = b"REJECT ".to_vec();
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// The results of the first `count` lines, each once, in order.
fn expected(lines: &[Vec<u8>], count: usize) -> Vec<u8> {
    lines[..count].iter().flat_map(|l| result_of(l)).collect()
}

/// The rejects among the first `count` lines.
fn expected_rejects(lines: &[Vec<u8>], count: usize) -> Vec<u8> {
    lines[..count]
        .iter()
        .enumerate()
        .filter(|(i, _)| is_rejected(*i as u64 + 1))
        .flat_map(|(_, l)| reject_of(l))
        .collect()
}

/// Both outputs hold exactly the results of the first `done` lines.
fn assert_both_outputs(job: &Job, lines: &[Vec<u8>], done: usize) {
    assert_eq!(
        fs::read(&job.output).unwrap(),
        expected_accepted(lines, done)
    );
    assert_eq!(
        fs::read(&job.rejects).unwrap(),
        expected_rejects(lines, done)
    );
}

/// The results only (no rejects) of the first `count` lines, for the
/// two-output job where rejected lines have no result.
fn expected_accepted(lines: &[Vec<u8>], count: usize) -> Vec<u8> {
    lines[..count]
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_rejected(*i as u64 + 1))
        .flat_map(|(_, l)| result_of(l))
        .collect()
}

/// A job's files: its input, checkpoint and output(s).
#[derive(Clone, Debug)]
struct Job {
    input: PathBuf,
    checkpoint: PathBuf,
    output: PathBuf,
    rejects: PathBuf,
}

impl Job {
    fn in_dir(dir: &Path, input: &Path) -> Job {
        Job {
            input: input.to_path_buf(),
            checkpoint: dir.join("input.txt.checkpoint"),
            output: dir.join("results.txt"),
            rejects: dir.join("rejects.txt"),
        }
    }

    fn of(input: &Input) -> Job {
        Job::in_dir(input.dir.path(), &input.path)
    }

    /// The checkpoint and the outputs, byte for byte (`None`: missing).
    fn files(&self) -> [Option<Vec<u8>>; 3] {
        [
            fs::read(&self.checkpoint).ok(),
            fs::read(&self.output).ok(),
            fs::read(&self.rejects).ok(),
        ]
    }
}

/// How a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `close()`.
    Close,
    /// Drop the checkpoint without `close()`.
    Drop,
    /// Read the next line, append its result, write it to the file
    /// (`flush`), and drop without committing it.
    DropAfterUncommitted,
}

fn open(path: &Path, durability: Durability) -> linemark::Result<Checkpoint> {
    Checkpoint::builder().durability(durability).open(path)
}

/// Runs the one-output job: attaches the output, resumes the input from
/// the checkpoint, and for each line appends its result then commits it,
/// at most `limit` lines this run; ends as `end` says. Returns the number
/// of lines done this run.
fn run(
    job: &Job,
    durability: Durability,
    limit: Option<usize>,
    end: End,
) -> linemark::Result<usize> {
    let mut checkpoint = open(&job.checkpoint, durability)?;
    let mut out = checkpoint.output(&job.output)?;
    let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
    let start = checkpoint.position().seek_offset(&mut reader)?;
    let mut lines = LineReader::resume(reader, start);
    let mut done = 0;
    while limit.is_none_or(|limit| done < limit) {
        let Some(line) = lines.next_line()? else {
            break;
        };
        // Half by `append`, half by `write!`.
        if line.number() % 2 == 0 {
            out.append(&result_of(line.raw()))?;
        } else {
            let text = line.as_str()?;
            writeln!(out, "R({})", text.trim_end_matches('\n')).unwrap();
        }
        checkpoint.commit_line(&line)?;
        done += 1;
    }
    match end {
        End::Close => checkpoint.close()?,
        End::Drop => drop(checkpoint),
        End::DropAfterUncommitted => {
            if let Some(line) = lines.next_line()? {
                out.append(&result_of(line.raw()))?;
                out.flush().unwrap();
            }
            drop(checkpoint);
        }
    }
    Ok(done)
}

/// The two-output job: a rejected line goes to the rejects, the others to
/// the results.
fn run_two(
    job: &Job,
    durability: Durability,
    limit: Option<usize>,
    end: End,
) -> linemark::Result<usize> {
    let mut checkpoint = open(&job.checkpoint, durability)?;
    let mut out = checkpoint.output(&job.output)?;
    let mut rejects = checkpoint.output(&job.rejects)?;
    let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
    let start = checkpoint.position().seek_offset(&mut reader)?;
    let mut lines = LineReader::resume(reader, start);
    let mut done = 0;
    while limit.is_none_or(|limit| done < limit) {
        let Some(line) = lines.next_line()? else {
            break;
        };
        if is_rejected(line.number()) {
            rejects.append(&reject_of(line.raw()))?;
        } else {
            out.append(&result_of(line.raw()))?;
        }
        checkpoint.commit_line(&line)?;
        done += 1;
    }
    match end {
        End::Close => checkpoint.close()?,
        End::Drop => drop(checkpoint),
        End::DropAfterUncommitted => {
            if let Some(line) = lines.next_line()? {
                out.append(&result_of(line.raw()))?;
                rejects.append(&reject_of(line.raw()))?;
                out.flush().unwrap();
                rejects.flush().unwrap();
            }
            drop(checkpoint);
        }
    }
    Ok(done)
}

/// The error must be `OutputChanged` naming `output` and `checkpoint`.
#[track_caller]
fn assert_output_changed(
    result: linemark::Result<impl std::fmt::Debug>,
    output: &Path,
    checkpoint: &Path,
) -> String {
    match result {
        Err(Error::OutputChanged {
            path,
            checkpoint: recorded,
            reason,
        }) => {
            assert_eq!(path, output, "the error names another output: {reason}");
            assert_eq!(recorded, checkpoint, "the error names another checkpoint");
            assert!(!reason.is_empty());
            reason
        }
        other => panic!(
            "expected OutputChanged for {}, got {other:?}",
            output.display()
        ),
    }
}

/// The lines finished, by the checkpoint file.
fn recorded_lines(job: &Job) -> usize {
    Checkpoint::inspect(&job.checkpoint)
        .unwrap()
        .position
        .line() as usize
}

/// The lengths the checkpoint file records of its outputs.
fn recorded_outputs(job: &Job) -> Vec<(PathBuf, u64)> {
    Checkpoint::inspect(&job.checkpoint).unwrap().outputs
}

const DURABILITIES: [Durability; 3] = [
    Durability::EveryCommit,
    Durability::DEFAULT_GROUP,
    Durability::NoSync,
];

// ---------------------------------------------------------------------------
// Exactly once across crashes
// ---------------------------------------------------------------------------

#[test]
fn a_clean_run_writes_every_result_once() {
    let input = Input::generated(40);
    let job = Job::of(&input);
    assert_eq!(
        run(&job, Durability::DEFAULT_GROUP, None, End::Close).unwrap(),
        40
    );
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 40));
    assert_eq!(recorded_lines(&job), 40);
    assert_eq!(
        recorded_outputs(&job),
        vec![(job.output.clone(), expected(&input.lines, 40).len() as u64)]
    );
    // A run after the end does nothing and leaves the output as it is.
    assert_eq!(
        run(&job, Durability::DEFAULT_GROUP, None, End::Close).unwrap(),
        0
    );
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 40));
}

#[test]
fn a_crash_at_any_line_then_a_rerun_writes_every_result_once() {
    const N: usize = 24;
    let lines = generated_lines(N);
    for durability in DURABILITIES {
        for end in [End::Drop, End::DropAfterUncommitted] {
            for crash_at in 0..=N {
                let input = Input::new(lines.clone());
                let job = Job::of(&input);
                let done = run(&job, durability, Some(crash_at), end).unwrap();
                assert_eq!(done, crash_at);
                // The dropped checkpoint wrote what was committed.
                assert_eq!(recorded_lines(&job), crash_at, "{durability:?} {end:?}");
                assert_eq!(
                    recorded_outputs(&job),
                    vec![(job.output.clone(), expected(&lines, crash_at).len() as u64)],
                    "{durability:?} {end:?} crash at {crash_at}"
                );
                let rest = run(&job, durability, None, End::Close).unwrap();
                assert_eq!(rest, N - crash_at);
                assert_eq!(
                    fs::read(&job.output).unwrap(),
                    expected(&lines, N),
                    "{durability:?} {end:?} crash at {crash_at}"
                );
            }
        }
    }
}

#[test]
fn several_crashes_in_a_row_write_every_result_once() {
    const N: usize = 30;
    let lines = generated_lines(N);
    // Each run does a few lines then crashes one way or the other; some
    // runs close cleanly in between.
    let plans: [&[(usize, End)]; 4] = [
        &[
            (3, End::DropAfterUncommitted),
            (0, End::DropAfterUncommitted),
            (5, End::Drop),
            (7, End::Close),
        ],
        &[
            (1, End::Close),
            (1, End::DropAfterUncommitted),
            (1, End::Close),
            (0, End::Close),
        ],
        &[
            (0, End::Drop),
            (10, End::DropAfterUncommitted),
            (10, End::DropAfterUncommitted),
        ],
        &[
            (29, End::DropAfterUncommitted),
            (0, End::DropAfterUncommitted),
        ],
    ];
    for durability in DURABILITIES {
        for plan in plans {
            let input = Input::new(lines.clone());
            let job = Job::of(&input);
            let mut total = 0;
            for &(count, end) in plan {
                total += run(&job, durability, Some(count), end).unwrap();
                assert_eq!(recorded_lines(&job), total);
                if end == End::Close {
                    // A clean close leaves exactly the results.
                    assert_eq!(fs::read(&job.output).unwrap(), expected(&lines, total));
                }
            }
            run(&job, durability, None, End::Close).unwrap();
            assert_eq!(
                fs::read(&job.output).unwrap(),
                expected(&lines, N),
                "{durability:?} {plan:?}"
            );
        }
    }
}

#[test]
fn bytes_appended_after_the_recorded_length_by_a_crashed_run_are_cut() {
    let input = Input::generated(20);
    let job = Job::of(&input);
    run(
        &job,
        Durability::EveryCommit,
        Some(7),
        End::DropAfterUncommitted,
    )
    .unwrap();
    let recorded = expected(&input.lines, 7);
    // The uncommitted result reached the file...
    let mut with_extra = recorded.clone();
    with_extra.extend_from_slice(&result_of(&input.lines[7]));
    assert_eq!(fs::read(&job.output).unwrap(), with_extra);
    assert_eq!(
        recorded_outputs(&job),
        vec![(job.output.clone(), recorded.len() as u64)]
    );
    // ...and more bytes of whatever kind after it, as a crash mid-write
    // leaves them.
    fs::OpenOptions::new()
        .append(true)
        .open(&job.output)
        .unwrap()
        .write_all(b"half a resu")
        .unwrap();
    // Attaching cuts them.
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        let out = checkpoint.output(&job.output).unwrap();
        assert_eq!(out.len(), recorded.len() as u64);
        assert_eq!(fs::read(&job.output).unwrap(), recorded);
        checkpoint.close().unwrap();
    }
    assert_eq!(fs::read(&job.output).unwrap(), recorded);
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 20));
}

#[test]
fn close_cuts_bytes_appended_after_the_last_commit() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    {
        let mut checkpoint = open(&job.checkpoint, Durability::DEFAULT_GROUP).unwrap();
        let mut out = checkpoint.output(&job.output).unwrap();
        let mut lines = LineReader::new(BufReader::new(fs::File::open(&job.input).unwrap()));
        for _ in 0..4 {
            let line = lines.next_line().unwrap().unwrap();
            out.append(&result_of(line.raw())).unwrap();
            checkpoint.commit_line(&line).unwrap();
        }
        // The result of line 5, never committed.
        let line = lines.next_line().unwrap().unwrap();
        out.append(&result_of(line.raw())).unwrap();
        out.flush().unwrap();
        checkpoint.close().unwrap();
    }
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 4));
    assert_eq!(recorded_lines(&job), 4);
    // Line 5 is done again, its result written once.
    run(&job, Durability::DEFAULT_GROUP, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 10));
}

#[test]
fn two_outputs_each_hold_their_results_once_after_crashes() {
    const N: usize = 21;
    let lines = generated_lines(N);
    for durability in [Durability::EveryCommit, Durability::DEFAULT_GROUP] {
        for crash_at in 0..=N {
            let input = Input::new(lines.clone());
            let job = Job::of(&input);
            run_two(&job, durability, Some(crash_at), End::DropAfterUncommitted).unwrap();
            assert_eq!(
                recorded_outputs(&job),
                vec![
                    (
                        job.output.clone(),
                        expected_accepted(&lines, crash_at).len() as u64
                    ),
                    (
                        job.rejects.clone(),
                        expected_rejects(&lines, crash_at).len() as u64
                    ),
                ],
                "{durability:?} crash at {crash_at}"
            );
            run_two(&job, durability, Some(crash_at / 2), End::Drop).unwrap();
            run_two(&job, durability, None, End::Close).unwrap();
            assert_eq!(fs::read(&job.output).unwrap(), expected_accepted(&lines, N));
            assert_eq!(fs::read(&job.rejects).unwrap(), expected_rejects(&lines, N));
        }
    }
}

#[test]
fn outputs_attached_in_another_order_are_refused() {
    let input = Input::generated(9);
    let job = Job::of(&input);
    run_two(&job, Durability::EveryCommit, Some(4), End::Drop).unwrap();
    let before = job.files();
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        let result = checkpoint.output(&job.rejects);
        assert_output_changed(result, &job.rejects, &job.checkpoint);
    }
    assert_eq!(job.files(), before);
    run_two(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_both_outputs(&job, &input.lines, 9);
}

#[test]
fn inspect_reports_the_recorded_lengths() {
    let input = Input::generated(12);
    let job = Job::of(&input);
    // Nothing recorded yet.
    assert!(
        Checkpoint::inspect(&job.checkpoint)
            .unwrap()
            .outputs
            .is_empty()
    );
    let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    let mut out = checkpoint.output(&job.output).unwrap();
    let mut rejects = checkpoint.output(&job.rejects).unwrap();
    // Recorded as soon as attached, with their present lengths.
    assert_eq!(
        Checkpoint::inspect(&job.checkpoint).unwrap().outputs,
        vec![(job.output.clone(), 0), (job.rejects.clone(), 0)]
    );
    let mut lines = LineReader::new(BufReader::new(fs::File::open(&job.input).unwrap()));
    let (mut results, mut rejected) = (0u64, 0u64);
    while let Some(line) = lines.next_line().unwrap() {
        if is_rejected(line.number()) {
            rejects.append(&reject_of(line.raw())).unwrap();
            rejected += reject_of(line.raw()).len() as u64;
        } else {
            out.append(&result_of(line.raw())).unwrap();
            results += result_of(line.raw()).len() as u64;
        }
        assert_eq!(out.len(), results);
        assert_eq!(rejects.len(), rejected);
        checkpoint.commit_line(&line).unwrap();
        let snapshot = Checkpoint::inspect(&job.checkpoint).unwrap();
        assert_eq!(snapshot.position.line(), line.number());
        assert_eq!(
            snapshot.outputs,
            vec![
                (job.output.clone(), results),
                (job.rejects.clone(), rejected)
            ]
        );
    }
    checkpoint.close().unwrap();
    assert_eq!(
        Checkpoint::inspect(&job.checkpoint).unwrap().outputs,
        vec![
            (
                job.output.clone(),
                expected_accepted(&input.lines, 12).len() as u64
            ),
            (
                job.rejects.clone(),
                expected_rejects(&input.lines, 12).len() as u64
            ),
        ]
    );
}

#[test]
fn an_existing_output_with_a_fresh_checkpoint_keeps_its_bytes() {
    let input = Input::generated(15);
    let job = Job::of(&input);
    let header = b"# results of an earlier job\nkept as they are\n".to_vec();
    fs::write(&job.output, &header).unwrap();
    // A crash, results appended after the header, a crash with an
    // uncommitted result, and the end.
    run(&job, Durability::EveryCommit, Some(5), End::Drop).unwrap();
    assert_eq!(
        recorded_outputs(&job),
        vec![(
            job.output.clone(),
            (header.len() + expected(&input.lines, 5).len()) as u64
        )]
    );
    run(
        &job,
        Durability::EveryCommit,
        Some(3),
        End::DropAfterUncommitted,
    )
    .unwrap();
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    let mut want = header.clone();
    want.extend_from_slice(&expected(&input.lines, 15));
    assert_eq!(fs::read(&job.output).unwrap(), want);
}

#[test]
fn an_output_created_by_attaching_exists_before_any_result() {
    let input = Input::generated(3);
    let job = Job::of(&input);
    let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    let out = checkpoint.output(&job.output).unwrap();
    assert!(out.is_empty());
    assert_eq!(out.path(), job.output);
    assert_eq!(fs::read(&job.output).unwrap(), b"");
    drop(out);
    checkpoint.close().unwrap();
    // A run with nothing done, closed: an empty output, recorded.
    assert_eq!(recorded_outputs(&job), vec![(job.output.clone(), 0)]);
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 3));
}

#[test]
fn a_job_moved_to_another_directory_resumes_with_its_output() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    run(
        &job,
        Durability::EveryCommit,
        Some(4),
        End::DropAfterUncommitted,
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let moved_input = elsewhere.path().join("input.txt");
    fs::copy(&job.input, &moved_input).unwrap();
    let moved = Job::in_dir(elsewhere.path(), &moved_input);
    fs::copy(&job.checkpoint, &moved.checkpoint).unwrap();
    fs::copy(&job.output, &moved.output).unwrap();
    run(&moved, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&moved.output).unwrap(), expected(&input.lines, 10));
}

// ---------------------------------------------------------------------------
// Refusals: typed, and nothing changed
// ---------------------------------------------------------------------------

/// The setups a refusal is checked after: a crashed run and a closed one.
fn setups() -> Vec<(&'static str, usize, End)> {
    vec![
        ("crashed", 6, End::Drop),
        ("crashed with bytes after", 6, End::DropAfterUncommitted),
        ("closed", 6, End::Close),
        ("finished", usize::MAX, End::Close),
    ]
}

/// Runs the setup, applies `damage` to the output, then checks that
/// attaching it is `OutputChanged` and that neither the checkpoint nor the
/// output changed. Returns the reason.
fn refused_after(setup: (&str, usize, End), damage: impl FnOnce(&Job, &[u8])) -> String {
    let (name, count, end) = setup;
    let input = Input::generated(12);
    let job = Job::of(&input);
    let limit = (count != usize::MAX).then_some(count);
    run(&job, Durability::EveryCommit, limit, end).unwrap();
    let recorded = expected(&input.lines, recorded_lines(&job));
    damage(&job, &recorded);
    let before = job.files();
    let reason = {
        let result = open(&job.checkpoint, Durability::EveryCommit)
            .and_then(|mut checkpoint| checkpoint.output(&job.output).map(drop));
        assert_output_changed(result, &job.output, &job.checkpoint)
    };
    assert_eq!(
        job.files(),
        before,
        "{name}: a refusal changed the files ({reason})"
    );
    // And again, the same way: the refusal is not a one-off.
    let result = run(&job, Durability::EveryCommit, None, End::Close);
    assert_output_changed(result, &job.output, &job.checkpoint);
    assert_eq!(
        job.files(),
        before,
        "{name}: a refused run changed the files"
    );
    reason
}

#[test]
fn a_deleted_output_is_refused_and_not_recreated() {
    for setup in setups() {
        let reason = refused_after(setup, |job, _| fs::remove_file(&job.output).unwrap());
        assert!(reason.contains("missing"), "{reason}");
    }
}

#[test]
fn an_output_shorter_than_recorded_is_refused() {
    for setup in setups() {
        for cut in [1u64, 2, 30, 1_000_000] {
            refused_after(setup, |job, recorded| {
                let len = (recorded.len() as u64).saturating_sub(cut);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&job.output)
                    .unwrap()
                    .set_len(len)
                    .unwrap();
            });
        }
    }
}

#[test]
fn an_output_replaced_with_as_many_bytes_is_refused() {
    for setup in setups() {
        refused_after(setup, |job, recorded| {
            let other: Vec<u8> = recorded
                .iter()
                .map(|b| if *b == b'\n' { b'\n' } else { b'z' })
                .collect();
            assert_eq!(other.len(), recorded.len());
            fs::write(&job.output, other).unwrap();
        });
        // An edit of the last byte before the recorded length only.
        refused_after(setup, |job, recorded| {
            let mut other = recorded.to_vec();
            let last = other.len() - 2;
            other[last] ^= 1;
            fs::write(&job.output, other).unwrap();
        });
    }
}

#[test]
fn an_output_replaced_with_more_bytes_is_refused() {
    for setup in setups() {
        refused_after(setup, |job, recorded| {
            let other = vec![b'q'; recorded.len() + 100];
            fs::write(&job.output, other).unwrap();
        });
        // The recorded results moved by one byte.
        refused_after(setup, |job, recorded| {
            let mut other = b"!".to_vec();
            other.extend_from_slice(recorded);
            fs::write(&job.output, other).unwrap();
        });
    }
}

#[test]
fn an_output_replaced_by_a_new_file_of_the_same_bytes_is_accepted() {
    // Not a change: the content is what the checkpoint recorded (copied
    // back from a backup, say).
    let input = Input::generated(12);
    let job = Job::of(&input);
    run(&job, Durability::EveryCommit, Some(5), End::Drop).unwrap();
    let bytes = fs::read(&job.output).unwrap();
    fs::remove_file(&job.output).unwrap();
    fs::write(&job.output, &bytes).unwrap();
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 12));
}

#[test]
fn foreign_bytes_appended_after_a_clean_close_are_refused() {
    for (name, count) in [
        ("closed", Some(6)),
        ("finished", None),
        ("nothing done", Some(0)),
    ] {
        let input = Input::generated(12);
        let job = Job::of(&input);
        run(&job, Durability::EveryCommit, count, End::Close).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&job.output)
            .unwrap()
            .write_all(b"a note added by hand\n")
            .unwrap();
        let before = job.files();
        let result = open(&job.checkpoint, Durability::EveryCommit)
            .and_then(|mut checkpoint| checkpoint.output(&job.output).map(drop));
        let reason = assert_output_changed(result, &job.output, &job.checkpoint);
        assert_eq!(job.files(), before, "{name}: {reason}");
    }
}

#[test]
fn attaching_a_new_output_to_progress_made_without_one_is_refused() {
    let input = Input::generated(8);
    let job = Job::of(&input);
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        let mut lines = LineReader::new(BufReader::new(fs::File::open(&job.input).unwrap()));
        for _ in 0..3 {
            let line = lines.next_line().unwrap().unwrap();
            checkpoint.commit_line(&line).unwrap();
        }
        checkpoint.close().unwrap();
    }
    // Missing output: not created.
    let before = job.files();
    let result = run(&job, Durability::EveryCommit, None, End::Close);
    assert_output_changed(result, &job.output, &job.checkpoint);
    assert_eq!(job.files(), before);
    assert!(!job.output.exists());
    // Existing output: not touched.
    fs::write(&job.output, b"whatever\n").unwrap();
    let before = job.files();
    let result = run(&job, Durability::EveryCommit, None, End::Close);
    assert_output_changed(result, &job.output, &job.checkpoint);
    assert_eq!(job.files(), before);
    // The checkpoint itself goes on without an output.
    let checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    assert_eq!(checkpoint.position().line(), 3);
}

#[test]
fn progress_recorded_as_done_or_failed_only_also_refuses_a_new_output() {
    let input = Input::generated(8);
    let job = Job::of(&input);
    let positions = input.positions();
    // Only a line done beyond the position.
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        checkpoint.commit_done(positions[3]).unwrap();
        checkpoint.close().unwrap();
    }
    assert!(
        Checkpoint::inspect(&job.checkpoint)
            .unwrap()
            .position
            .is_start()
    );
    let before = job.files();
    let result = open(&job.checkpoint, Durability::EveryCommit)
        .and_then(|mut checkpoint| checkpoint.output(&job.output).map(drop));
    assert_output_changed(result, &job.output, &job.checkpoint);
    assert_eq!(job.files(), before);
}

#[test]
fn a_recorded_output_not_attached_fails_the_first_commit() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    run(&job, Durability::EveryCommit, Some(4), End::Drop).unwrap();
    let before = job.files();
    let positions = input.positions();
    for durability in DURABILITIES {
        // By commit_line.
        {
            let mut checkpoint = open(&job.checkpoint, durability).unwrap();
            let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
            let start = checkpoint.position().seek_offset(&mut reader).unwrap();
            let mut lines = LineReader::resume(reader, start);
            let line = lines.next_line().unwrap().unwrap();
            assert_eq!(line.number(), 5);
            let result = checkpoint.commit_line(&line);
            assert_output_changed(result, &job.output, &job.checkpoint);
            // Still refused, by sync and close.
            let result = checkpoint.sync();
            assert!(
                result.is_err(),
                "{durability:?}: sync after an unattached commit: {result:?}"
            );
            let result = checkpoint.close();
            assert!(
                result.is_err(),
                "{durability:?}: close after an unattached commit: {result:?}"
            );
        }
        assert_eq!(job.files(), before, "{durability:?}");
        // By commit.
        {
            let mut checkpoint = open(&job.checkpoint, durability).unwrap();
            let result = checkpoint.commit(positions[6]);
            assert_output_changed(result, &job.output, &job.checkpoint);
        }
        assert_eq!(job.files(), before, "{durability:?}");
        // By commit_done, then a drop.
        {
            let mut checkpoint = open(&job.checkpoint, durability).unwrap();
            let result = checkpoint.commit_done(positions[7]);
            assert_output_changed(result, &job.output, &job.checkpoint);
        }
        assert_eq!(job.files(), before, "{durability:?}");
    }
    // Opened and closed without a commit: nothing to refuse.
    open(&job.checkpoint, Durability::EveryCommit)
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(
        Checkpoint::inspect(&job.checkpoint)
            .unwrap()
            .position
            .line(),
        4
    );
    // Attached, the job goes on.
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 10));
}

#[test]
fn an_output_of_another_name_is_refused() {
    for end in [End::Drop, End::Close] {
        let input = Input::generated(10);
        let job = Job::of(&input);
        run(&job, Durability::EveryCommit, Some(4), end).unwrap();
        let other = input.sibling("other-results.txt");
        fs::copy(&job.output, &other).unwrap();
        let before = job.files();
        let other_before = fs::read(&other).unwrap();
        let result = open(&job.checkpoint, Durability::EveryCommit)
            .and_then(|mut checkpoint| checkpoint.output(&other).map(drop));
        assert_output_changed(result, &other, &job.checkpoint);
        assert_eq!(job.files(), before);
        assert_eq!(fs::read(&other).unwrap(), other_before);
        // Even a missing one is not created.
        let missing = input.sibling("missing.txt");
        let result = open(&job.checkpoint, Durability::EveryCommit)
            .and_then(|mut checkpoint| checkpoint.output(&missing).map(drop));
        assert_output_changed(result, &missing, &job.checkpoint);
        assert!(!missing.exists());
        assert_eq!(job.files(), before);
    }
}

#[test]
fn an_output_attached_after_the_first_commit_is_refused() {
    let input = Input::generated(5);
    let job = Job::of(&input);
    let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    let mut lines = LineReader::new(BufReader::new(fs::File::open(&job.input).unwrap()));
    let line = lines.next_line().unwrap().unwrap();
    checkpoint.commit_line(&line).unwrap();
    let result = checkpoint.output(&job.output);
    assert_output_changed(result, &job.output, &job.checkpoint);
    assert!(!job.output.exists());
    checkpoint.close().unwrap();
    assert!(recorded_outputs(&job).is_empty());
    // Also a second output after a first one and a commit.
    let input = Input::generated(5);
    let job = Job::of(&input);
    let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    let mut out = checkpoint.output(&job.output).unwrap();
    let mut lines = LineReader::new(BufReader::new(fs::File::open(&job.input).unwrap()));
    let line = lines.next_line().unwrap().unwrap();
    out.append(&result_of(line.raw())).unwrap();
    checkpoint.commit_line(&line).unwrap();
    let result = checkpoint.output(&job.rejects);
    assert_output_changed(result, &job.rejects, &job.checkpoint);
    assert!(!job.rejects.exists());
    checkpoint.close().unwrap();
    assert_eq!(
        recorded_outputs(&job),
        vec![(job.output.clone(), expected(&input.lines, 1).len() as u64)]
    );
}

// ---------------------------------------------------------------------------
// An old file
// ---------------------------------------------------------------------------

fn record(body: &str) -> String {
    format!("{body} crc={:08x}\n", crc32fast::hash(body.as_bytes()))
}

/// A version-3 checkpoint, written by hand, at `position`.
fn version_3_file(position: Position) -> String {
    let mut text = record("linemark-checkpoint version=3");
    text += &record(&format!(
        "pos offset={} line={} len={} digest={:08x}",
        position.offset(),
        position.line(),
        position.last_len(),
        position.last_digest()
    ));
    text += &record(&format!(
        "prefix offset=0 digest={:08x}",
        crc32fast::hash(b"")
    ));
    text
}

#[test]
fn a_version_3_checkpoint_opens_and_runs_without_an_output() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    let positions = input.positions();
    fs::write(&job.checkpoint, version_3_file(positions[4])).unwrap();
    let snapshot = Checkpoint::inspect(&job.checkpoint).unwrap();
    assert_eq!(snapshot.position, positions[4]);
    assert!(snapshot.outputs.is_empty());
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        assert_eq!(checkpoint.position(), positions[4]);
        let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
        let start = checkpoint.position().seek_offset(&mut reader).unwrap();
        let mut lines = LineReader::resume(reader, start);
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            seen.push(line.number());
            checkpoint.commit_line(&line).unwrap();
        }
        assert_eq!(seen, (5..=10).collect::<Vec<u64>>());
        checkpoint.close().unwrap();
    }
    let snapshot = Checkpoint::inspect(&job.checkpoint).unwrap();
    assert_eq!(snapshot.position, positions[10]);
    assert!(snapshot.outputs.is_empty());
    // A progress made without an output: no new output on it.
    let result = run(&job, Durability::EveryCommit, None, End::Close);
    assert_output_changed(result, &job.output, &job.checkpoint);
}

#[test]
fn a_version_3_checkpoint_with_no_progress_takes_an_output() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    fs::write(&job.checkpoint, record("linemark-checkpoint version=3")).unwrap();
    run(&job, Durability::EveryCommit, Some(4), End::Drop).unwrap();
    let text = fs::read_to_string(&job.checkpoint).unwrap();
    assert!(text.starts_with("linemark-checkpoint version=5 "), "{text}");
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 10));
}

#[test]
fn version_1_and_2_checkpoints_still_open() {
    let input = Input::generated(6);
    let job = Job::of(&input);
    let positions = input.positions();
    for version in [1, 2] {
        let mut text = record(&format!("linemark-checkpoint version={version}"));
        if version == 2 {
            text += &record("shard index=0 count=1");
        }
        let p = positions[2];
        text += &record(&format!(
            "pos offset={} line={} len={} digest={:08x}",
            p.offset(),
            p.line(),
            p.last_len(),
            p.last_digest()
        ));
        fs::write(&job.checkpoint, text).unwrap();
        let checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        assert_eq!(checkpoint.position(), p);
        checkpoint.close().unwrap();
    }
}

// ---------------------------------------------------------------------------
// A torn checkpoint tail at every byte
// ---------------------------------------------------------------------------

/// What the complete groups in the first `cut` bytes of a checkpoint file
/// record, by reading the text: the line of the last `pos` and the output
/// lengths and `closed` of the last `out` record whose group is whole;
/// `None` before the first `out` record.
fn oracle(text: &str, cut: usize) -> Option<(u64, Vec<u64>, bool)> {
    let mut found = None;
    let mut group_pos = 0u64;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        if offset > cut {
            break;
        }
        let body = line.trim_end_matches('\n');
        if let Some(rest) = body.strip_prefix("pos ") {
            let n = rest
                .split(' ')
                .find_map(|f| f.strip_prefix("line="))
                .unwrap()
                .parse()
                .unwrap();
            group_pos = n;
        }
        if let Some(rest) = body.strip_prefix("out ") {
            let mut fields = rest.split(' ');
            let lens = fields.next().unwrap().strip_prefix("len=").unwrap();
            let lens = lens.split(',').map(|l| l.parse().unwrap()).collect();
            let _digest = fields.next().unwrap();
            let closed = fields.next().unwrap() == "closed=1";
            found = Some((group_pos, lens, closed));
        }
    }
    found
}

/// The output file as it was when the checkpoint had the records of the
/// cut: the full results of the lines recorded, plus (`extra`) results
/// after them that no record covered yet, unless the run had closed.
fn output_for(lines: &[Vec<u8>], recorded_lines: u64, closed: bool, extra: bool) -> Vec<u8> {
    let count = if extra && !closed {
        lines.len()
    } else {
        recorded_lines as usize
    };
    expected(lines, count)
}

#[test]
fn a_torn_checkpoint_at_every_byte_keeps_the_output_consistent() {
    const N: usize = 12;
    let source = Input::generated(N);
    let job = Job::of(&source);
    // A history with several groups, a crash with bytes after the
    // recorded length, a clean close and a reopen, all in one append-only
    // file.
    run(
        &job,
        Durability::EveryCommit,
        Some(3),
        End::DropAfterUncommitted,
    )
    .unwrap();
    run(&job, Durability::EveryCommit, Some(3), End::Close).unwrap();
    run(&job, Durability::EveryCommit, Some(2), End::Drop).unwrap();
    run(&job, Durability::EveryCommit, None, End::Close).unwrap();
    let full = fs::read(&job.checkpoint).unwrap();
    let text = String::from_utf8(full.clone()).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&source.lines, N));
    // The oracle agrees with the library on the whole file.
    let (line, lens, closed) = oracle(&text, full.len()).unwrap();
    assert_eq!(line, N as u64, "{text}");
    assert_eq!(lens, vec![expected(&source.lines, N).len() as u64]);
    assert!(closed);

    let mut opened = 0;
    for cut in 0..=full.len() {
        let state = oracle(&text, cut);
        for extra in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let input_path = dir.path().join("input.txt");
            fs::copy(&source.path, &input_path).unwrap();
            let copy = Job::in_dir(dir.path(), &input_path);
            fs::write(&copy.checkpoint, &full[..cut]).unwrap();
            let (recorded, output) = match &state {
                Some((line, _, closed)) => {
                    (*line, output_for(&source.lines, *line, *closed, extra))
                }
                // Before the first group: the output was just created.
                None => (0, Vec::new()),
            };
            fs::write(&copy.output, &output).unwrap();
            let context = format!(
                "cut at {cut} of {}, extra {extra}, oracle {state:?}",
                full.len()
            );
            if check_torn_copy(&copy, &source.lines, recorded, &context) {
                opened += 1;
            }
        }
    }
    // Most cuts are whole groups plus a torn record: they all open.
    assert_eq!(opened, 2 * (full.len() + 1), "some cuts were refused");
}

/// Opens the copy, attaches its output and checks it against the
/// position; then finishes the job and checks every result is there once.
/// Returns whether it opened (a typed refusal is `false`).
fn check_torn_copy(copy: &Job, lines: &[Vec<u8>], recorded: u64, context: &str) -> bool {
    let mut checkpoint = match open(&copy.checkpoint, Durability::NoSync) {
        Ok(checkpoint) => checkpoint,
        Err(error @ (Error::Corrupt { .. } | Error::OutputChanged { .. })) => {
            eprintln!("{context}: refused: {error}");
            return false;
        }
        Err(other) => panic!("{context}: unexpected error {other:?}"),
    };
    let position = checkpoint.position().line();
    assert_eq!(
        position, recorded,
        "{context}: another position than the last whole group's"
    );
    let out = match checkpoint.output(&copy.output) {
        Ok(out) => out,
        Err(error @ Error::OutputChanged { .. }) => {
            eprintln!("{context}: refused: {error}");
            return false;
        }
        Err(other) => panic!("{context}: unexpected error {other:?}"),
    };
    let want = expected(lines, position as usize);
    assert_eq!(out.len(), want.len() as u64, "{context}");
    assert_eq!(
        fs::read(&copy.output).unwrap(),
        want,
        "{context}: the output does not match the position"
    );
    drop(out);
    drop(checkpoint);
    run(copy, Durability::NoSync, None, End::Close).unwrap_or_else(|e| panic!("{context}: {e:?}"));
    assert_eq!(
        fs::read(&copy.output).unwrap(),
        expected(lines, lines.len()),
        "{context}"
    );
    true
}

// ---------------------------------------------------------------------------
// Snapshots while a job runs
// ---------------------------------------------------------------------------

/// Copies the checkpoint, then the output (never older than the
/// checkpoint, as the library writes the output first), to a new
/// directory.
fn snapshot(job: &Job) -> (tempfile::TempDir, Job) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    fs::copy(&job.input, &input).unwrap();
    let copy = Job::in_dir(dir.path(), &input);
    if let Ok(bytes) = fs::read(&job.checkpoint) {
        fs::write(&copy.checkpoint, bytes).unwrap();
    }
    if let Ok(bytes) = fs::read(&job.output) {
        fs::write(&copy.output, bytes).unwrap();
    }
    (dir, copy)
}

#[test]
fn snapshots_taken_while_a_job_runs_resume_to_every_result_once() {
    const N: usize = 60;
    for (durability, delay) in [
        (Durability::DEFAULT_GROUP, Duration::from_millis(2)),
        (
            Durability::group(4, Duration::from_millis(5)),
            Duration::from_millis(1),
        ),
        (Durability::NoSync, Duration::ZERO),
        (Durability::EveryCommit, Duration::ZERO),
    ] {
        let input = Input::generated(N);
        let job = Job::of(&input);
        let mut snapshots = Vec::new();
        // Two runs, the first closed half way: the second reopens a
        // cleanly closed output.
        for phase in 0..2 {
            let mut checkpoint = Checkpoint::builder()
                .durability(durability)
                .write_delay(delay)
                .open(&job.checkpoint)
                .unwrap();
            let mut out = checkpoint.output(&job.output).unwrap();
            snapshots.push(snapshot(&job));
            let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
            let start = checkpoint.position().seek_offset(&mut reader).unwrap();
            let mut lines = LineReader::resume(reader, start);
            while let Some(line) = lines.next_line().unwrap() {
                out.append(&result_of(line.raw())).unwrap();
                if line.number() % 5 == 0 {
                    out.flush().unwrap();
                }
                snapshots.push(snapshot(&job));
                checkpoint.commit_line(&line).unwrap();
                snapshots.push(snapshot(&job));
                if line.number() % 7 == 0 {
                    // Let the writer thread write.
                    std::thread::sleep(Duration::from_millis(4));
                    snapshots.push(snapshot(&job));
                }
                if phase == 0 && line.number() == N as u64 / 2 {
                    break;
                }
            }
            checkpoint.close().unwrap();
            snapshots.push(snapshot(&job));
        }
        assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, N));
        let mut positions = Vec::new();
        for (k, (_dir, copy)) in snapshots.iter().enumerate() {
            let context = format!("{durability:?} snapshot {k}");
            let mut checkpoint = open(&copy.checkpoint, Durability::NoSync)
                .unwrap_or_else(|e| panic!("{context}: {e:?}"));
            let out = checkpoint
                .output(&copy.output)
                .unwrap_or_else(|e| panic!("{context}: {e:?}"));
            let position = checkpoint.position().line() as usize;
            positions.push(position);
            assert_eq!(
                fs::read(&copy.output).unwrap(),
                expected(&input.lines, position),
                "{context}: the output does not hold exactly the results up to line {position}"
            );
            assert_eq!(out.len(), expected(&input.lines, position).len() as u64);
            drop(out);
            drop(checkpoint);
            run(copy, Durability::NoSync, None, End::Close)
                .unwrap_or_else(|e| panic!("{context}: {e:?}"));
            assert_eq!(
                fs::read(&copy.output).unwrap(),
                expected(&input.lines, N),
                "{context}"
            );
        }
        // The snapshots saw progress, in order.
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "{durability:?}: {positions:?}"
        );
        if delay == Duration::ZERO {
            assert!(
                positions.iter().any(|&p| p > 0 && p < N),
                "{durability:?}: {positions:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// More shapes of jobs
// ---------------------------------------------------------------------------

#[test]
fn a_crash_at_any_line_with_compaction_writes_every_result_once() {
    // A threshold so low that the file is rewritten every few commits: the
    // snapshot must carry the outputs and their lengths.
    const N: usize = 20;
    let lines = generated_lines(N);
    for durability in DURABILITIES {
        for crash_at in 0..=N {
            let input = Input::new(lines.clone());
            let job = Job::of(&input);
            let open = |limit, end| -> linemark::Result<usize> {
                let mut checkpoint = Checkpoint::builder()
                    .durability(durability)
                    .compact_at(300)
                    .open(&job.checkpoint)?;
                let mut out = checkpoint.output(&job.output)?;
                let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
                let start = checkpoint.position().seek_offset(&mut reader)?;
                let mut lines = LineReader::resume(reader, start);
                let mut done = 0;
                while Some(done) != limit {
                    let Some(line) = lines.next_line()? else {
                        break;
                    };
                    out.append(&result_of(line.raw()))?;
                    checkpoint.commit_line(&line)?;
                    done += 1;
                }
                if end == End::Close {
                    checkpoint.close()?;
                } else if let Some(line) = lines.next_line()? {
                    out.append(&result_of(line.raw()))?;
                    out.flush().unwrap();
                }
                Ok(done)
            };
            open(Some(crash_at), End::DropAfterUncommitted).unwrap();
            assert_eq!(recorded_lines(&job), crash_at, "{durability:?}");
            assert_eq!(
                recorded_outputs(&job),
                vec![(job.output.clone(), expected(&lines, crash_at).len() as u64)],
                "{durability:?} crash at {crash_at}"
            );
            open(Some(N / 3), End::Close).unwrap();
            open(None, End::Close).unwrap();
            assert!(
                fs::metadata(&job.checkpoint).unwrap().len() < 2_000,
                "no compaction happened"
            );
            assert_eq!(
                fs::read(&job.output).unwrap(),
                expected(&lines, N),
                "{durability:?} crash at {crash_at}"
            );
        }
    }
}

#[test]
fn results_larger_than_the_buffer_are_written_once_across_crashes() {
    // Results of 0 to 200 KiB: some fill the 64 KiB buffer, some go past it
    // in one append.
    const N: usize = 12;
    let lines = generated_lines(N);
    let big = |number: u64, raw: &[u8]| -> Vec<u8> {
        let size = [10usize, 70_000, 65_536, 65_535, 200_000, 1][number as usize % 6];
        let mut out = result_of(raw);
        out.extend(std::iter::repeat_n(b'a' + (number % 26) as u8, size));
        out.push(b'\n');
        out
    };
    let want: Vec<u8> = lines
        .iter()
        .enumerate()
        .flat_map(|(i, l)| big(i as u64 + 1, l))
        .collect();
    for durability in [Durability::EveryCommit, Durability::DEFAULT_GROUP] {
        for crash_at in [0, 1, 2, 5, 7, 11] {
            let input = Input::new(lines.clone());
            let job = Job::of(&input);
            let go = |limit: Option<usize>, close: bool| {
                let mut checkpoint = open(&job.checkpoint, durability).unwrap();
                let mut out = checkpoint.output(&job.output).unwrap();
                let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
                let start = checkpoint.position().seek_offset(&mut reader).unwrap();
                let mut lines = LineReader::resume(reader, start);
                let mut done = 0;
                while Some(done) != limit {
                    let Some(line) = lines.next_line().unwrap() else {
                        break;
                    };
                    // In pieces of 1000 bytes, as a writer would.
                    for piece in big(line.number(), line.raw()).chunks(1000) {
                        out.write_all(piece).unwrap();
                    }
                    checkpoint.commit_line(&line).unwrap();
                    done += 1;
                }
                if close {
                    checkpoint.close().unwrap();
                } else if let Some(line) = lines.next_line().unwrap() {
                    // Half a big result, uncommitted.
                    let result = big(line.number(), line.raw());
                    out.append(&result[..result.len() / 2]).unwrap();
                }
            };
            go(Some(crash_at), false);
            let recorded = recorded_lines(&job);
            assert_eq!(recorded, crash_at);
            let len: usize = lines[..crash_at]
                .iter()
                .enumerate()
                .map(|(i, l)| big(i as u64 + 1, l).len())
                .sum();
            assert_eq!(
                recorded_outputs(&job),
                vec![(job.output.clone(), len as u64)]
            );
            go(None, true);
            let found = fs::read(&job.output).unwrap();
            assert!(
                found == want,
                "{durability:?} crash at {crash_at}: {} bytes, want {}",
                found.len(),
                want.len()
            );
        }
    }
}

#[test]
fn lines_finished_out_of_order_have_their_results_once() {
    const N: usize = 40;
    let lines = generated_lines(N);
    let mut want: Vec<Vec<u8>> = lines.iter().map(|l| result_of(l)).collect();
    want.sort();
    for crash_after in [0usize, 1, 3, 7, 12, 20, 33, 39] {
        for durability in [Durability::EveryCommit, Durability::DEFAULT_GROUP] {
            let input = Input::new(lines.clone());
            let job = Job::of(&input);
            // Finishes up to `limit` lines, four in flight, picked in a
            // scrambled order; drops the rest unfinished.
            let go = |limit: Option<usize>| {
                let mut checkpoint = open(&job.checkpoint, durability).unwrap();
                let mut out = checkpoint.output(&job.output).unwrap();
                let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
                let start = checkpoint.position().seek_offset(&mut reader).unwrap();
                let mut lines = LineReader::resume(reader, start);
                {
                    let tracker = linemark::Tracker::with_window(&mut checkpoint, 1000);
                    let mut flight = Vec::new();
                    let mut done = 0;
                    let mut pick = 7usize;
                    loop {
                        let line = lines.next_line().unwrap();
                        let ended = line.is_none();
                        if let Some(line) = line {
                            if let Some(ticket) = tracker.start(&line).unwrap() {
                                flight.push((ticket, line.raw().to_vec()));
                            }
                        }
                        while flight.len() >= 4 || (ended && !flight.is_empty()) {
                            if Some(done) == limit {
                                drop(flight);
                                return;
                            }
                            pick = (pick * 31 + 17) % 101;
                            let (ticket, raw) = flight.remove(pick % flight.len());
                            out.append(&result_of(&raw)).unwrap();
                            ticket.finish().unwrap();
                            done += 1;
                        }
                        if ended {
                            break;
                        }
                    }
                }
                checkpoint.close().unwrap();
            };
            go(Some(crash_after));
            go(Some(crash_after / 2 + 1));
            go(None);
            let text = fs::read(&job.output).unwrap();
            let mut found: Vec<Vec<u8>> = text
                .split_inclusive(|b| *b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            found.sort();
            assert_eq!(found.len(), N, "{durability:?} crash after {crash_after}");
            assert!(found == want, "{durability:?} crash after {crash_after}");
        }
    }
}

#[test]
fn a_second_recorded_output_not_attached_fails_the_first_commit() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    run_two(&job, Durability::EveryCommit, Some(4), End::Drop).unwrap();
    let before = job.files();
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        let _out = checkpoint.output(&job.output).unwrap();
        let positions = input.positions();
        let result = checkpoint.commit(positions[5]);
        assert_output_changed(result, &job.rejects, &job.checkpoint);
    }
    assert_eq!(job.files(), before);
    run_two(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_both_outputs(&job, &input.lines, 10);
}

#[test]
fn a_third_output_on_progress_is_refused() {
    let input = Input::generated(10);
    let job = Job::of(&input);
    run(&job, Durability::EveryCommit, Some(4), End::Drop).unwrap();
    let before = job.files();
    {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
        let _out = checkpoint.output(&job.output).unwrap();
        let result = checkpoint.output(&job.rejects);
        assert_output_changed(result, &job.rejects, &job.checkpoint);
    }
    assert_eq!(job.files(), before);
    assert!(!job.rejects.exists());
}

#[test]
fn the_same_output_attached_twice_is_refused_or_keeps_both_results() {
    // Two handles on one file each record the length of their own
    // appends, in a file that holds both: attaching the same file twice
    // must be refused, or every result must survive a crash and a rerun.
    let input = Input::generated(6);
    let job = Job::of(&input);
    let go = |limit: Option<usize>, close: bool| -> linemark::Result<()> {
        let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit)?;
        let mut first = checkpoint.output(&job.output)?;
        let mut second = checkpoint.output(&job.output)?;
        let mut reader = BufReader::new(fs::File::open(&job.input).unwrap());
        let start = checkpoint.position().seek_offset(&mut reader)?;
        let mut lines = LineReader::resume(reader, start);
        let mut done = 0;
        while Some(done) != limit {
            let Some(line) = lines.next_line()? else {
                break;
            };
            first.append(&result_of(line.raw()))?;
            second.append(&reject_of(line.raw()))?;
            checkpoint.commit_line(&line)?;
            done += 1;
        }
        if close {
            checkpoint.close()?;
        }
        Ok(())
    };
    match go(Some(3), false) {
        Err(error) => {
            // Refused: fine, and nothing recorded of a second output.
            assert!(matches!(error, Error::OutputChanged { .. }), "{error:?}");
            assert!(recorded_outputs(&job).len() <= 1);
        }
        Ok(()) => {
            go(None, true).unwrap();
            let text = fs::read(&job.output).unwrap();
            let mut found: Vec<Vec<u8>> = text
                .split_inclusive(|b| *b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            found.sort();
            let mut want: Vec<Vec<u8>> = input
                .lines
                .iter()
                .flat_map(|l| [result_of(l), reject_of(l)])
                .collect();
            want.sort();
            assert!(
                found == want,
                "the same file attached twice lost or repeated results: {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}

#[test]
fn a_refused_second_output_leaves_the_first_uncut() {
    // A runner checks all its outputs before it attaches the first: when
    // one is refused, the outputs before it keep their bytes after the
    // recorded length too, for a run that attaches everything. (By hand,
    // `Checkpoint::output` attaches, and cuts, one output at a time.)
    let input = Input::generated(9);
    let job = Job::of(&input);
    run_two(
        &job,
        Durability::EveryCommit,
        Some(4),
        End::DropAfterUncommitted,
    )
    .unwrap();
    fs::remove_file(&job.rejects).unwrap();
    let before = job.files();
    let result = linemark::Runner::new()
        .checkpoint_path(&job.checkpoint)
        .output(&job.output)
        .output(&job.rejects)
        .map(&job.input, |_, _| panic!("no line runs"))
        .map(drop);
    assert_output_changed(result, &job.rejects, &job.checkpoint);
    assert_eq!(job.files()[0], before[0], "the checkpoint changed");
    assert!(
        job.files()[1] == before[1],
        "the first output was cut although the run was refused: {} bytes, {} before",
        job.files()[1].as_ref().map_or(0, Vec::len),
        before[1].as_ref().map_or(0, Vec::len)
    );
}

#[test]
fn a_second_output_added_before_any_progress_is_taken() {
    let input = Input::generated(9);
    let job = Job::of(&input);
    // A run with one output that did nothing.
    run(&job, Durability::EveryCommit, Some(0), End::Close).unwrap();
    assert_eq!(recorded_outputs(&job), vec![(job.output.clone(), 0)]);
    run_two(
        &job,
        Durability::EveryCommit,
        Some(4),
        End::DropAfterUncommitted,
    )
    .unwrap();
    run_two(&job, Durability::EveryCommit, None, End::Close).unwrap();
    assert_both_outputs(&job, &input.lines, 9);
}

#[test]
fn close_with_nothing_committed_keeps_the_bytes_before_the_run() {
    let input = Input::generated(3);
    let job = Job::of(&input);
    fs::write(&job.output, b"earlier\n").unwrap();
    let mut checkpoint = open(&job.checkpoint, Durability::EveryCommit).unwrap();
    let mut out = checkpoint.output(&job.output).unwrap();
    out.append(b"never committed\n").unwrap();
    out.flush().unwrap();
    checkpoint.close().unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), b"earlier\n");
    assert_eq!(recorded_outputs(&job), vec![(job.output.clone(), 8)]);
}

#[cfg(unix)]
#[test]
fn an_output_whose_name_is_not_utf8_resumes() {
    use std::os::unix::ffi::OsStrExt;
    let input = Input::generated(8);
    let mut job = Job::of(&input);
    job.output = input
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"results-\xff.txt"));
    run(&job, Durability::EveryCommit, Some(3), End::Drop).unwrap();
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 3));
    run(&job, Durability::EveryCommit, None, End::Close)
        .unwrap_or_else(|e| panic!("a rerun with the same output path was refused: {e}"));
    assert_eq!(fs::read(&job.output).unwrap(), expected(&input.lines, 8));
}
