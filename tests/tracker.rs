//! `Tracker`: lines that finish out of order in a hand-written parallel
//! loop are committed as a low watermark plus the lines finished beyond it,
//! so a crash neither skips an unfinished line nor redoes a finished one
//! (issue 11, item 6).
//!
//! First the trap it exists for: `commit_line` from several threads out of
//! order records unfinished lines as finished. Then what the tracker commits
//! after each finish, a crash with lines unfinished and the resume after
//! it, failed lines, the checks on resume, and SIGKILL at arbitrary moments
//! of a four-thread job, in a child process (see `common::spawn_self`).

#![cfg(unix)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use linemark::{Checkpoint, Durability, Error, Line, LineReader, Position, Ticket, Tracker};

use common::{
    DEADLINE, Input, child_role, counts_by_line, env_path, file_len, serial, spawn_self, wait_until,
};

const INPUT_VAR: &str = "LINEMARK_TEST_INPUT";
const OUTPUT_VAR: &str = "LINEMARK_TEST_OUTPUT";
const CHECKPOINT_VAR: &str = "LINEMARK_TEST_CHECKPOINT";

const SIGKILL: i32 = 9;

/// Every commit on disk when it returns, so `Checkpoint::inspect` sees it.
fn open_strict(path: &Path) -> Checkpoint {
    Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .open(path)
        .unwrap()
}

/// Line `number` (1-based) of `input`, as a `LineReader` would give it.
fn line(input: &Input, number: u64) -> Line<'_> {
    let index = usize::try_from(number - 1).unwrap();
    let offset = input.positions()[index].offset();
    Line::new(&input.lines[index], number, offset)
}

/// What the checkpoint file holds now: the watermark's line number and the
/// lines done beyond it.
fn on_disk(path: &Path) -> (u64, Vec<u64>) {
    let snapshot = Checkpoint::inspect(path).unwrap();
    (snapshot.position.line(), snapshot.done_beyond)
}

/// Resumes a job over `input` from `position` (the checkpoint's, read
/// before the tracker borrowed it) as the `Tracker` docs say, and returns
/// the tickets of the lines still to do, all lines read.
fn resume<'t>(input: &Input, position: Position, tracker: &'t Tracker<'_>) -> Vec<Ticket<'t>> {
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    let resumed = position.seek_offset(&mut reader).unwrap();
    let mut lines = LineReader::resume(reader, resumed);
    let mut tickets = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        tickets.extend(tracker.start(&line).unwrap());
    }
    tickets
}

fn numbers(tickets: &[Ticket<'_>]) -> Vec<u64> {
    tickets.iter().map(Ticket::line).collect()
}

#[test]
fn tracker_and_ticket_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Tracker<'static>>();
    assert_send::<Ticket<'static>>();
}

/// The trap: a worker that commits its own line with `commit_line` says
/// "everything up to here is done" while an earlier line still runs. After
/// a crash the resume starts past the unfinished line, which is never done.
#[test]
fn out_of_order_commit_line_skips_an_unfinished_line_after_a_crash() {
    let _serial = serial();
    let input = Input::generated(3);
    let path = input.sibling("input.txt.checkpoint");
    {
        let mut checkpoint = open_strict(&path);
        // Line 2 finished first; line 1 is still running when the process
        // dies.
        checkpoint.commit_line(&line(&input, 2)).unwrap();
    }
    let checkpoint = open_strict(&path);
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    let resumed = checkpoint.position().seek_offset(&mut reader).unwrap();
    let mut lines = LineReader::resume(reader, resumed);
    let next = lines.next_line().unwrap().unwrap();
    assert_eq!(next.number(), 3, "the resume skips line 1, never done");
    assert!(checkpoint.is_done(1).unwrap(), "line 1 counts as done");
}

#[test]
fn out_of_order_finishes_commit_only_the_watermark() {
    let _serial = serial();
    let input = Input::generated(6);
    let path = input.sibling("input.txt.checkpoint");
    let positions = input.positions();
    let mut checkpoint = open_strict(&path);
    let tracker = Tracker::new(&mut checkpoint);
    let mut tickets: HashMap<u64, Ticket<'_>> = (1..=6)
        .map(|n| (n, tracker.start(&line(&input, n)).unwrap().unwrap()))
        .collect();
    let mut finish = |n: u64| tickets.remove(&n).unwrap().finish().unwrap();

    finish(3);
    finish(5);
    finish(2);
    assert_eq!(on_disk(&path), (0, vec![2, 3, 5]), "line 1 still runs");
    finish(1);
    assert_eq!(on_disk(&path), (3, vec![5]));
    finish(6);
    assert_eq!(on_disk(&path), (3, vec![5, 6]), "line 4 still runs");
    finish(4);
    assert_eq!(on_disk(&path), (6, vec![]));
    // A live ticket (even in an empty map) holds the tracker, which holds
    // the checkpoint.
    drop(tickets);
    drop(tracker);
    // The position is that of the last line, with its length and digest,
    // computed apart from the library.
    assert_eq!(Checkpoint::inspect(&path).unwrap().position, positions[6]);
    checkpoint.close().unwrap();
}

/// A crash (here: the tickets of unfinished lines dropped, the checkpoint
/// dropped without `close`) while some lines run and later ones are done:
/// the next run gets tickets for exactly the unfinished lines.
#[test]
fn a_resume_after_a_crash_redoes_exactly_the_unfinished_lines() {
    let _serial = serial();
    let input = Input::generated(10);
    let path = input.sibling("input.txt.checkpoint");
    {
        let mut checkpoint = open_strict(&path);
        let tracker = Tracker::new(&mut checkpoint);
        let tickets = resume(&input, Position::start(), &tracker);
        assert_eq!(numbers(&tickets), (1..=10).collect::<Vec<_>>());
        for ticket in tickets {
            if ![2, 5, 9].contains(&ticket.line()) {
                ticket.finish().unwrap();
            }
        }
    }
    assert_eq!(on_disk(&path), (1, vec![3, 4, 6, 7, 8, 10]));

    let mut checkpoint = open_strict(&path);
    assert!(
        checkpoint.is_done(1).unwrap()
            && !checkpoint.is_done(2).unwrap()
            && checkpoint.is_done(3).unwrap()
    );
    assert!(
        !checkpoint.is_done(5).unwrap()
            && !checkpoint.is_done(9).unwrap()
            && checkpoint.is_done(10).unwrap()
    );
    let position = checkpoint.position();
    let tracker = Tracker::new(&mut checkpoint);
    let tickets = resume(&input, position, &tracker);
    assert_eq!(numbers(&tickets), [2, 5, 9], "only the unfinished lines");
    // The lines skipped as done wait behind line 2 like any finished line.
    assert_eq!(on_disk(&path), (1, vec![3, 4, 6, 7, 8, 10]));
    let mut tickets = tickets.into_iter();
    let (second, fifth, ninth) = (
        tickets.next().unwrap(),
        tickets.next().unwrap(),
        tickets.next().unwrap(),
    );
    ninth.finish().unwrap();
    assert_eq!(on_disk(&path), (1, vec![3, 4, 6, 7, 8, 9, 10]));
    second.finish().unwrap();
    assert_eq!(on_disk(&path), (4, vec![6, 7, 8, 9, 10]));
    fifth.finish().unwrap();
    assert_eq!(on_disk(&path), (10, vec![]));
    drop(tickets);
    drop(tracker);
    checkpoint.close().unwrap();
}

/// A failed line is recorded with its error chain before the watermark
/// passes it; the next run neither redoes it nor the finished lines.
#[test]
fn a_failed_line_is_recorded_and_not_redone() {
    let _serial = serial();
    let input = Input::generated(4);
    let path = input.sibling("input.txt.checkpoint");
    {
        let mut checkpoint = open_strict(&path);
        let tracker = Tracker::new(&mut checkpoint);
        let mut tickets = resume(&input, Position::start(), &tracker).into_iter();
        let (first, second, third) = (
            tickets.next().unwrap(),
            tickets.next().unwrap(),
            tickets.next().unwrap(),
        );
        let cause = std::io::Error::other("connection reset");
        let error = Error::Io {
            path: None,
            action: "fetching",
            source: cause,
        };
        second.fail(3, error).unwrap();
        third.finish().unwrap();
        first.finish().unwrap();
        // Line 4's ticket is dropped: the crash comes while it runs.
        drop(tickets);
    }
    let snapshot = Checkpoint::inspect(&path).unwrap();
    assert_eq!(snapshot.position.line(), 3);
    assert_eq!(snapshot.failed, 1);
    let failed = common::failed_lines(&path);
    assert_eq!(failed.len(), 1);
    let failed = &failed[0];
    assert_eq!((failed.line(), failed.attempts()), (2, 3));
    assert!(
        failed.error().contains("fetching") && failed.error().contains("connection reset"),
        "{failed:?}"
    );

    let mut checkpoint = open_strict(&path);
    let position = checkpoint.position();
    let tracker = Tracker::new(&mut checkpoint);
    let tickets = resume(&input, position, &tracker);
    assert_eq!(numbers(&tickets), [4]);
    tickets
        .into_iter()
        .for_each(|ticket| ticket.finish().unwrap());
    drop(tracker);
    assert!(checkpoint.is_failed(2).unwrap() && !checkpoint.is_done(2).unwrap());
    assert_eq!(checkpoint.position().line(), 4);
    checkpoint.close().unwrap();
}

/// A line recorded as done beyond the watermark is skipped only if it is
/// still the same line.
#[test]
fn a_line_changed_since_it_was_recorded_is_refused() {
    let _serial = serial();
    let input = Input::new(vec![b"a\n".to_vec(), b"b\n".to_vec(), b"c\n".to_vec()]);
    let path = input.sibling("input.txt.checkpoint");
    {
        let mut checkpoint = open_strict(&path);
        let tracker = Tracker::new(&mut checkpoint);
        let mut tickets = resume(&input, Position::start(), &tracker);
        tickets.pop().unwrap().finish().unwrap();
    }
    assert_eq!(on_disk(&path), (0, vec![3]));
    fs::write(&input.path, "a\nb\nC\n").unwrap();

    let mut checkpoint = open_strict(&path);
    let tracker = Tracker::new(&mut checkpoint);
    let mut lines = LineReader::new(BufReader::new(File::open(&input.path).unwrap()));
    let _first = tracker.start(&lines.next_line().unwrap().unwrap()).unwrap();
    let _second = tracker.start(&lines.next_line().unwrap().unwrap()).unwrap();
    let third = lines.next_line().unwrap().unwrap();
    match tracker.start(&third) {
        Err(Error::InputChanged {
            line: 3, offset: 4, ..
        }) => {}
        other => panic!("expected InputChanged for line 3, got {other:?}"),
    }
}

/// Reading on with `LineReader::new` after a seek numbers the lines from 1
/// again: the tracker refuses rather than skip the lines by their wrong
/// numbers.
#[test]
#[should_panic(expected = "lines must be started in input order")]
fn a_line_out_of_order_is_refused() {
    let _serial = serial();
    let input = Input::generated(3);
    let mut checkpoint = open_strict(&input.sibling("input.txt.checkpoint"));
    checkpoint.commit(input.positions()[1]).unwrap();
    let tracker = Tracker::new(&mut checkpoint);
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    input.positions()[1].seek_offset(&mut reader).unwrap();
    let mut lines = LineReader::new(reader);
    let _ = tracker.start(&lines.next_line().unwrap().unwrap());
}

// ---------------------------------------------------------------------------
// A hand-written parallel job, as the `Tracker` docs show it
// ---------------------------------------------------------------------------

/// Runs `work` on every line of `input` not yet finished per the
/// checkpoint at `checkpoint_path`, on `workers` threads, lines settled in
/// whatever order they finish; closes the checkpoint.
fn parallel_job(input: &Path, checkpoint_path: &Path, workers: usize, work: impl Fn(&[u8]) + Sync) {
    let mut checkpoint = Checkpoint::open(checkpoint_path).unwrap();
    let mut reader = BufReader::new(File::open(input).unwrap());
    let resumed = checkpoint.position().seek_offset(&mut reader).unwrap();
    let mut lines = LineReader::resume(reader, resumed);
    // A small window, so the limit is reached and waited for.
    let tracker = Tracker::with_window(&mut checkpoint, 4 * workers);
    let (send, receive) = mpsc::sync_channel::<(Ticket<'_>, Vec<u8>)>(workers);
    let receive = Mutex::new(receive);
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let Ok((ticket, raw)) = receive.lock().unwrap().recv() else {
                        return;
                    };
                    work(&raw);
                    ticket.finish().unwrap();
                }
            });
        }
        while let Some(line) = lines.next_line().unwrap() {
            if let Some(ticket) = tracker.start(&line).unwrap() {
                send.send((ticket, line.raw().to_vec())).unwrap();
            }
        }
        // The workers stop when the channel is empty.
        drop(send);
    });
    drop(receive);
    drop(tracker);
    checkpoint.close().unwrap();
}

/// A line's work: a pause that depends on the line, so lines finish out of
/// order (one in 32 takes long enough for the others to fill the window
/// behind it), then the line appended whole (`O_APPEND`, one `write`) to
/// `output`.
fn scrambled_append(output: &File) -> impl Fn(&[u8]) + Sync + '_ {
    move |raw| {
        let hash = raw
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let pause = if hash % 32 == 0 {
            10_000
        } else {
            hash % 5 * 100
        };
        thread::sleep(Duration::from_micros(pause));
        (&*output).write_all(raw).unwrap();
    }
}

fn open_output(path: &Path) -> File {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

#[test]
fn a_parallel_job_does_every_line_once() {
    let _serial = serial();
    let input = Input::generated(2_000);
    let checkpoint = input.sibling("input.txt.checkpoint");
    let output_path = input.sibling("output.txt");
    let output = open_output(&output_path);
    parallel_job(&input.path, &checkpoint, 4, scrambled_append(&output));
    assert!(counts_by_line(&input, &output_path).iter().all(|&n| n == 1));
    assert_eq!(on_disk(&checkpoint), (2_000, vec![]));
    assert_eq!(
        Checkpoint::inspect(&checkpoint).unwrap().position,
        input.positions()[2_000]
    );
}

/// SIGKILL at arbitrary moments of a four-thread job: whatever the file
/// records as finished (the watermark and the lines done beyond it) was
/// done, and is not done again by the runs after.
#[test]
fn sigkill_never_leaves_an_unfinished_line_recorded_as_finished() {
    const TEST_NAME: &str = "sigkill_never_leaves_an_unfinished_line_recorded_as_finished";
    if child_role().as_deref() == Some("job") {
        let output = open_output(&env_path(OUTPUT_VAR));
        let input = env_path(INPUT_VAR);
        parallel_job(
            &input,
            &env_path(CHECKPOINT_VAR),
            4,
            scrambled_append(&output),
        );
        return;
    }
    let _serial = serial();
    let input = Input::generated(5_000);
    let output = input.sibling("output.txt");
    let checkpoint = input.sibling("input.txt.checkpoint");
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (OUTPUT_VAR, output.as_os_str()),
        (CHECKPOINT_VAR, checkpoint.as_os_str()),
    ];
    // For each line recorded as finished after some kill: how many times it
    // was done then. No later run may do it again.
    let mut recorded_with_count: HashMap<u64, u32> = HashMap::new();
    let mut done_beyond_seen = 0;
    for (kill, after_ms) in [0, 5, 10, 20, 35, 50].into_iter().enumerate() {
        let done_before = file_len(&output);
        let mut child = spawn_self(TEST_NAME, "job", &env);
        // Counted from the first line done, so a slow start of the child
        // does not make the kill come before any work.
        wait_until("the child did a line", || file_len(&output) > done_before);
        thread::sleep(Duration::from_millis(after_ms));
        let ended = child.kill_and_wait();
        assert_eq!(
            ended.status.signal(),
            Some(SIGKILL),
            "run {kill} ended early: {ended:?}"
        );
        let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
        let counts = counts_by_line(&input, &output);
        done_beyond_seen += snapshot.done_beyond.len();
        let recorded = (1..=snapshot.position.line()).chain(snapshot.done_beyond.iter().copied());
        for number in recorded.collect::<HashSet<_>>() {
            let count = counts[usize::try_from(number - 1).unwrap()];
            assert!(
                count > 0,
                "kill {kill}: line {number} recorded as finished, never done"
            );
            recorded_with_count.entry(number).or_insert(count);
        }
    }
    spawn_self(TEST_NAME, "job", &env).wait_success(DEADLINE);

    let counts = counts_by_line(&input, &output);
    let missing: Vec<usize> = (1..=counts.len()).filter(|n| counts[n - 1] == 0).collect();
    assert!(missing.is_empty(), "lines never done: {missing:?}");
    for (&number, &count) in &recorded_with_count {
        let now = counts[usize::try_from(number - 1).unwrap()];
        assert_eq!(
            now, count,
            "line {number}, recorded as finished, was done again"
        );
    }
    eprintln!(
        "tracker kill test: {} lines recorded as finished at a kill, {done_beyond_seen} of \
         them beyond the watermark",
        recorded_with_count.len()
    );
    assert!(
        done_beyond_seen > 0,
        "no kill found a line done beyond the watermark: the test did not test the tracker"
    );
    assert_eq!(on_disk(&checkpoint), (5_000, vec![]));
}
