//! The checkpoint across processes and restarts: the lock between processes,
//! resuming a real file after a restart, SIGKILL at any moment, a failed
//! write, and a torn end of a file written by another process.
//!
//! Tests that need a second process run this test binary again as a child
//! (see `common::spawn_self`): the same test function, started with the
//! `LINEMARK_TEST_CHILD` environment variable, plays the child's part.

#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linemark::{Checkpoint, Durability, Error, FailedLine, Line, LineReader, Position};

use common::{
    ChildProcess, DEADLINE, Finished, Input, child_role, env_path, file_len, generated_lines,
    positions_after, serial, spawn_self, wait_until,
};

/// Environment variables that hand paths and settings to a child.
const CHECKPOINT_VAR: &str = "LINEMARK_TEST_CHECKPOINT";
const INPUT_VAR: &str = "LINEMARK_TEST_INPUT";
const LOG_VAR: &str = "LINEMARK_TEST_LOG";
const MODE_VAR: &str = "LINEMARK_TEST_MODE";
const READY_VAR: &str = "LINEMARK_TEST_READY";

/// Children print their results after this marker.
const REPORT: &str = "linemark-child: ";

const SIGKILL: i32 = 9;

fn open_strict(path: &Path) -> Checkpoint {
    Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .open(path)
        .unwrap()
}

/// Everything a checkpoint holds, in one comparable line.
fn state_of(checkpoint: &Checkpoint) -> String {
    let done: Vec<u64> = checkpoint.done_beyond().collect();
    let failed: Vec<FailedLine> = checkpoint.failed().unwrap().map(Result::unwrap).collect();
    format_state(checkpoint.position(), &done, &failed)
}

fn format_state(position: Position, done: &[u64], failed: &[FailedLine]) -> String {
    format!("{position:?} done={done:?} failed={failed:?}")
}

// ---------------------------------------------------------------------------
// 1. The lock across processes
// ---------------------------------------------------------------------------

/// A child opens the checkpoint and reports what happened.
fn probe_lock_child() {
    let path = env_path(CHECKPOINT_VAR);
    let started = Instant::now();
    let result = Checkpoint::open(&path);
    let elapsed = started.elapsed();
    match result {
        Err(Error::Locked { path: locked }) => println!("{REPORT}locked {}", locked.display()),
        Ok(checkpoint) => println!("{REPORT}opened {:?}", checkpoint.position()),
        Err(err) => println!("{REPORT}error {err:?}"),
    }
    // A blocking lock would never return (the parent's deadline catches
    // that); this catches one that returns only after a wait.
    assert!(elapsed < Duration::from_secs(5), "open took {elapsed:?}");
}

/// A child holds the checkpoint open until its stdin is closed.
fn hold_lock_child() {
    let checkpoint = open_strict(&env_path(CHECKPOINT_VAR));
    File::create(env_path(READY_VAR)).unwrap();
    io::stdin().read_to_end(&mut Vec::new()).unwrap();
    drop(checkpoint);
}

fn probe(path: &Path) -> Finished {
    spawn_self(
        "the_lock_excludes_other_processes_at_once",
        "probe",
        &[(CHECKPOINT_VAR, path.as_os_str())],
    )
    .wait_success(Duration::from_secs(20))
}

fn reports(finished: &Finished) -> Vec<&str> {
    finished.reports(REPORT).collect()
}

fn hold(path: &Path, ready: &Path) -> ChildProcess {
    let _ = fs::remove_file(ready);
    let mut holder = spawn_self(
        "the_lock_excludes_other_processes_at_once",
        "hold",
        &[
            (CHECKPOINT_VAR, path.as_os_str()),
            (READY_VAR, ready.as_os_str()),
        ],
    );
    wait_until("the child holds the lock", || {
        ready.exists() || holder.has_exited()
    });
    assert!(ready.exists(), "{:?}", holder.kill_and_wait());
    holder
}

fn assert_locked_here(path: &Path) {
    match Checkpoint::open(path) {
        Err(Error::Locked { path: locked }) => assert_eq!(locked, path),
        other => panic!("expected Locked while a child holds the lock, got {other:?}"),
    }
}

#[test]
fn the_lock_excludes_other_processes_at_once() {
    match child_role().as_deref() {
        Some("probe") => return probe_lock_child(),
        Some("hold") => return hold_lock_child(),
        Some(role) => panic!("unknown child role {role}"),
        None => {}
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let ready = dir.path().join("ready");
    let committed = positions_after(&generated_lines(2))[2];

    // The parent holds it: a child is refused at once, naming the path.
    let mut parent = open_strict(&path);
    parent.commit(committed).unwrap();
    let refused = probe(&path);
    assert_eq!(
        reports(&refused),
        [format!("locked {}", path.display())],
        "{refused:?}"
    );

    // Released by drop: the next child opens it and sees the parent's commit.
    drop(parent);
    let opened = probe(&path);
    assert_eq!(reports(&opened), [format!("opened {committed:?}")]);

    // The other way round: a child holds it and this process is refused,
    // until the child ends normally...
    let mut holder = hold(&path, &ready);
    assert_locked_here(&path);
    holder.close_stdin();
    holder.wait_success(Duration::from_secs(20));
    assert_eq!(Checkpoint::open(&path).unwrap().position(), committed);

    // ...or is killed, which runs no destructor: the OS drops the lock.
    let mut holder = hold(&path, &ready);
    assert_locked_here(&path);
    let killed = holder.kill_and_wait();
    assert_eq!(killed.status.signal(), Some(SIGKILL), "{killed:?}");
    assert_eq!(Checkpoint::open(&path).unwrap().position(), committed);
}

// ---------------------------------------------------------------------------
// 2. Restarting on a real file
// ---------------------------------------------------------------------------

/// Lines with the awkward cases: CRLF, empty (and so duplicated) lines,
/// invalid UTF-8, multi-byte UTF-8, a lone `\r`, a repeated text line.
fn awkward_lines(count: usize, terminated_last: bool) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = (1..=count)
        .map(|n| {
            let mut line = match n % 10 {
                2 => Vec::new(),
                3 => format!("crlf line {n}\r").into_bytes(),
                5 => "the same text every time".into(),
                7 => [format!("bytes {n} ").as_bytes(), &[0xff, 0xfe, 0x80, b'z']].concat(),
                8 => format!("caf\u{e9} \u{1f600} {n} with a lone \r inside").into_bytes(),
                _ => format!("line {n}").into_bytes(),
            };
            line.push(b'\n');
            line
        })
        .collect();
    if !terminated_last {
        let last = lines.last_mut().unwrap();
        assert!(last.len() > 1, "the last line must keep some content");
        last.pop();
    }
    lines
}

/// Reads everything after `reached` and checks it is exactly the input from
/// line `done + 1` on, with the right numbers and offsets.
fn assert_rest<R: BufRead>(
    reader: R,
    reached: Position,
    input: &[Vec<u8>],
    done: usize,
    how: &str,
) {
    let offsets = positions_after(input);
    let mut lines = LineReader::resume(reader, reached);
    for (index, expected) in input.iter().enumerate().skip(done) {
        let line = lines
            .next_line()
            .unwrap()
            .unwrap_or_else(|| panic!("{how}: input ended before line {}", index + 1));
        assert_eq!(line.raw(), &expected[..], "{how}: line {}", index + 1);
        assert_eq!(line.number(), index as u64 + 1, "{how}");
        assert_eq!(line.offset(), offsets[index].offset(), "{how}");
    }
    assert!(
        lines.next_line().unwrap().is_none(),
        "{how}: more lines than the input has"
    );
}

/// Seeks fresh readers of the input with every method and checks where
/// each lands.
fn assert_every_seek_resumes(pos: Position, input: &Input, done: usize, context: &str) {
    let path = &input.path;

    let mut reader = BufReader::new(File::open(path).unwrap());
    let reached = pos.seek_offset(&mut reader).unwrap();
    assert_eq!(reached, pos, "{context}: seek_offset");
    assert_rest(
        reader,
        reached,
        &input.lines,
        done,
        &format!("{context}: seek_offset"),
    );

    // `Chain` cannot seek, so this is the path for streams.
    let mut reader = BufReader::new(File::open(path).unwrap().chain(io::empty()));
    let reached = pos.seek_lines(&mut reader).unwrap();
    assert_eq!(reached, pos, "{context}: seek_lines on a chain");
    assert_rest(
        reader,
        reached,
        &input.lines,
        done,
        &format!("{context}: seek_lines on a chain"),
    );

    // A real pipe, as when the input comes from another program.
    let mut cat = Command::new("cat")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(cat.stdout.take().unwrap());
    let reached = pos.seek_lines(&mut reader).unwrap();
    assert_eq!(reached, pos, "{context}: seek_lines on a pipe");
    assert_rest(
        reader,
        reached,
        &input.lines,
        done,
        &format!("{context}: seek_lines on a pipe"),
    );
    assert!(cat.wait().unwrap().success());

    let mut reader = BufReader::new(File::open(path).unwrap());
    let reached = pos.seek_content(&mut reader).unwrap();
    assert_eq!(reached, pos, "{context}: seek_content");
    assert_rest(
        reader,
        reached,
        &input.lines,
        done,
        &format!("{context}: seek_content"),
    );
}

#[test]
fn a_restarted_job_resumes_at_the_next_line_with_every_seek() {
    let _serial = serial();
    // Stop right after the first line, an empty line, a CRLF line, a
    // repeated line, an invalid UTF-8 line, and just before and at the end.
    let stops = [0, 1, 2, 3, 5, 7, 8, 12, 15, 17, 500, 642, 998, 999, 1000];
    for terminated_last in [true, false] {
        let input = Input::new(awkward_lines(1000, terminated_last));
        let expected = input.positions();
        let checkpoint_path = input.sibling("input.txt.checkpoint");
        for (run, window) in stops.windows(2).enumerate() {
            let (done, stop) = (window[0], window[1]);
            let context = format!("terminated_last={terminated_last}, after {done} lines");

            // A new run: open, check, seek (each method in turn feeds the
            // run), work up to the next stop, then end without `close`.
            let mut checkpoint = open_strict(&checkpoint_path);
            let pos = checkpoint.position();
            assert_eq!(pos, expected[done], "{context}");
            assert_every_seek_resumes(pos, &input, done, &context);

            let file = File::open(&input.path).unwrap();
            let mut lines: LineReader<Box<dyn BufRead>> = match run % 3 {
                0 => {
                    let mut reader = BufReader::new(file);
                    let reached = pos.seek_offset(&mut reader).unwrap();
                    LineReader::resume(Box::new(reader), reached)
                }
                1 => {
                    let mut reader = BufReader::new(file.chain(io::empty()));
                    let reached = pos.seek_lines(&mut reader).unwrap();
                    LineReader::resume(Box::new(reader), reached)
                }
                _ => {
                    let mut reader = BufReader::new(file);
                    let reached = pos.seek_content(&mut reader).unwrap();
                    LineReader::resume(Box::new(reader), reached)
                }
            };
            for index in done..stop {
                let line = lines.next_line().unwrap().unwrap();
                assert_eq!(line.raw(), &input.lines[index][..], "{context}");
                checkpoint.commit(line.end_position()).unwrap();
            }
            drop(checkpoint);
        }
        let checkpoint = open_strict(&checkpoint_path);
        assert_eq!(checkpoint.position(), expected[1000]);
        assert_every_seek_resumes(checkpoint.position(), &input, 1000, "at the end");
    }
}

#[test]
fn a_restart_after_the_unterminated_last_line_grew_goes_on_with_the_new_lines() {
    let _serial = serial();
    let mut lines = awkward_lines(100, false);
    let input = Input::new(lines.clone());
    let checkpoint_path = input.sibling("input.txt.checkpoint");
    {
        let mut checkpoint = open_strict(&checkpoint_path);
        let mut reader = LineReader::new(BufReader::new(File::open(&input.path).unwrap()));
        while let Some(line) = reader.next_line().unwrap() {
            checkpoint.commit(line.end_position()).unwrap();
        }
    }
    // The producer finishes the last line and appends more.
    let mut file = OpenOptions::new().append(true).open(&input.path).unwrap();
    file.write_all(b"\nline 101\nline 102\n").unwrap();
    drop(file);
    lines.last_mut().unwrap().push(b'\n');
    lines.extend([b"line 101\n".to_vec(), b"line 102\n".to_vec()]);
    let grown = positions_after(&lines);

    let pos = open_strict(&checkpoint_path).position();
    assert_eq!(pos.line(), 100);
    assert_eq!(pos.offset() + 1, grown[100].offset());
    // The position reached includes the new `\n`, so the next commit's
    // offsets are those of the grown file.
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    let reached = pos.seek_offset(&mut reader).unwrap();
    assert_eq!(reached, grown[100], "seek_offset");
    assert_rest(reader, reached, &lines, 100, "seek_offset");
    let mut reader = BufReader::new(File::open(&input.path).unwrap().chain(io::empty()));
    let reached = pos.seek_lines(&mut reader).unwrap();
    assert_eq!(reached, grown[100], "seek_lines");
    assert_rest(reader, reached, &lines, 100, "seek_lines");
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    let reached = pos.seek_content(&mut reader).unwrap();
    assert_eq!(reached, grown[100], "seek_content");
    assert_rest(reader, reached, &lines, 100, "seek_content");

    // The job goes on with the new lines, and its commits read back.
    let mut checkpoint = open_strict(&checkpoint_path);
    let mut reader = BufReader::new(File::open(&input.path).unwrap());
    let reached = checkpoint.position().seek_offset(&mut reader).unwrap();
    let mut reader = LineReader::resume(reader, reached);
    while let Some(line) = reader.next_line().unwrap() {
        checkpoint.commit(line.end_position()).unwrap();
    }
    drop(checkpoint);
    assert_eq!(open_strict(&checkpoint_path).position(), grown[102]);
}

// ---------------------------------------------------------------------------
// 3. SIGKILL at any moment
// ---------------------------------------------------------------------------

/// The job run by the child: for every line, log "start N", commit, log
/// "committed N". Each record is one small `write` to a file opened for
/// appending, so a kill leaves whole records only, and "committed N" is
/// there exactly when the commit of line N had returned.
fn crash_job_child() {
    let durability = match std::env::var(MODE_VAR).unwrap().as_str() {
        "every-commit" => Durability::EveryCommit,
        "group-default" => Durability::default(),
        "group-small" => Durability::group(64, Duration::from_millis(1)),
        mode => panic!("unknown mode {mode}"),
    };
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(env_path(LOG_VAR))
        .unwrap();
    // A small compaction threshold puts many atomic rewrites in the way of
    // the kills.
    let mut checkpoint = Checkpoint::builder()
        .durability(durability)
        .compact_at(4096)
        .open(env_path(CHECKPOINT_VAR))
        .unwrap();
    let mut reader = BufReader::new(File::open(env_path(INPUT_VAR)).unwrap());
    let start = checkpoint.position().seek_offset(&mut reader).unwrap();
    log.write_all(format!("resume {}\n", start.line()).as_bytes())
        .unwrap();
    let mut lines = LineReader::resume(reader, start);
    while let Some(line) = lines.next_line().unwrap() {
        let n = line.number();
        log.write_all(format!("start {n}\n").as_bytes()).unwrap();
        checkpoint.commit(line.end_position()).unwrap();
        log.write_all(format!("committed {n}\n").as_bytes())
            .unwrap();
    }
    checkpoint.close().unwrap();
    log.write_all(b"finished\n").unwrap();
}

/// What the child logs.
#[derive(Debug, PartialEq)]
enum Record {
    Resume(u64),
    Start(u64),
    Committed(u64),
    Finished,
}

/// The records a child logged from byte `from` on. A SIGKILL can cut the
/// child's last `write` short (Linux stops copying a write to a regular file
/// at a fatal signal), so a last line without its newline is a record the
/// child never finished logging: left out. A `start` record is written
/// before its commit, so a torn one was never committed.
fn read_log(path: &Path, from: u64) -> Vec<Record> {
    let bytes = fs::read(path).unwrap_or_default();
    let text = std::str::from_utf8(&bytes[from as usize..]).unwrap();
    text.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .map(|line| {
            let number = |prefix: &str| line.strip_prefix(prefix).map(|n| n.parse().unwrap());
            if line == "finished" {
                Record::Finished
            } else if let Some(n) = number("resume ") {
                Record::Resume(n)
            } else if let Some(n) = number("start ") {
                Record::Start(n)
            } else if let Some(n) = number("committed ") {
                Record::Committed(n)
            } else {
                panic!("unexpected log line {line:?}")
            }
        })
        .collect()
}

/// Runs the job in child processes, killing each one with SIGKILL once the
/// log has grown by the next of `kill_after` bytes, until a child finishes.
/// After each child, reopens the checkpoint and checks it. Returns the
/// number of kills.
fn run_with_kills(test_name: &str, mode: &str, kill_after: &[u64], lines: usize) -> usize {
    let input = Input::generated(lines);
    let expected = input.positions();
    let checkpoint_path = input.sibling("job.checkpoint");
    let log_path = input.sibling("effects.log");
    let env = [
        (CHECKPOINT_VAR, checkpoint_path.as_os_str()),
        (INPUT_VAR, input.path.as_os_str()),
        (LOG_VAR, log_path.as_os_str()),
        (MODE_VAR, OsStr::new(mode)),
    ];
    let mut kills = 0;
    let mut thresholds = kill_after.iter();
    let mut durable = 0u64;
    let mut max_started = 0u64;
    let mut max_committed = 0u64;
    for run in 0.. {
        assert!(run <= kill_after.len(), "{mode}: the job never finished");
        let context = format!("{mode}, run {run}");
        let base = file_len(&log_path);
        let mut child = spawn_self(test_name, "crash-job", &env);
        let finished = match thresholds.next() {
            Some(&bytes) => {
                wait_until("the child's log grew", || {
                    file_len(&log_path) >= base + bytes || child.has_exited()
                });
                let ended = child.kill_and_wait();
                if ended.status.signal() == Some(SIGKILL) {
                    kills += 1;
                    false
                } else {
                    assert!(ended.status.success(), "{context}: {ended:?}");
                    true
                }
            }
            None => {
                child.wait_success(DEADLINE);
                true
            }
        };

        let records = read_log(&log_path, base);
        if let Some(first) = records.first() {
            // The child started where the checkpoint said: no durably
            // committed line is done again.
            assert_eq!(first, &Record::Resume(durable), "{context}");
        }
        for record in &records {
            match *record {
                Record::Start(n) => max_started = max_started.max(n),
                Record::Committed(n) => max_committed = max_committed.max(n),
                _ => {}
            }
        }

        let checkpoint = Checkpoint::open(&checkpoint_path)
            .unwrap_or_else(|err| panic!("{context}: reopening after the kill: {err}"));
        let pos = checkpoint.position();
        let line = pos.line() as usize;
        assert!(line <= lines, "{context}: {pos:?}");
        // A real line boundary with the right length and digest...
        assert_eq!(pos, expected[line], "{context}");
        // ...never ahead of what the child had started to commit...
        assert!(
            pos.line() <= max_started,
            "{context}: {pos:?} > {max_started}"
        );
        // ...and never behind what is already durable.
        assert!(pos.line() >= durable, "{context}: went back from {durable}");
        if mode == "every-commit" {
            assert!(
                pos.line() >= max_committed,
                "{context}: commit of line {max_committed} returned, checkpoint says {pos:?}"
            );
        }
        let mut reader = BufReader::new(File::open(&input.path).unwrap());
        assert_eq!(pos.seek_offset(&mut reader).unwrap(), pos, "{context}");
        let mut next = Vec::new();
        reader.read_until(b'\n', &mut next).unwrap();
        assert_eq!(
            next,
            input.lines.get(line).cloned().unwrap_or_default(),
            "{context}"
        );
        println!(
            "{context}: log grew {} bytes, started up to line {max_started}, \
             committed up to {max_committed}, checkpoint at line {}",
            file_len(&log_path) - base,
            pos.line()
        );
        durable = pos.line();
        drop(checkpoint);

        if finished {
            assert_eq!(records.last(), Some(&Record::Finished), "{context}");
            break;
        }
    }
    assert_eq!(durable, lines as u64, "{mode}: the whole input is covered");

    // At least once: every line was started by some run.
    let started: BTreeSet<u64> = read_log(&log_path, 0)
        .into_iter()
        .filter_map(|record| match record {
            Record::Start(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(started, (1..=lines as u64).collect(), "{mode}");
    kills
}

#[test]
fn sigkill_never_loses_a_commit_made_with_every_commit() {
    if child_role().as_deref() == Some("crash-job") {
        return crash_job_child();
    }
    let _serial = serial();
    // Growth of the log (about 30 bytes a line) before each kill: at once,
    // right after the resume record, and after a few to about a thousand
    // lines.
    let kill_after = [
        0, 1, 40, 100, 290, 1_000, 2_900, 7_000, 15_000, 45, 555, 30_000, 4_444, 12,
    ];
    let kills = run_with_kills(
        "sigkill_never_loses_a_commit_made_with_every_commit",
        "every-commit",
        &kill_after,
        20_000,
    );
    assert_eq!(
        kills,
        kill_after.len(),
        "every child was killed before it finished"
    );
}

#[test]
fn sigkill_with_group_commit_never_records_more_than_was_committed() {
    if child_role().as_deref() == Some("crash-job") {
        return crash_job_child();
    }
    let _serial = serial();
    // The default group syncs every 200 ms, which a child rarely lives to
    // see before its kill: those kills mostly find the position where the
    // previous run left it. The small group syncs all the time, so its
    // kills find positions between syncs.
    let kill_after = [0, 1, 300, 5_000, 40_000, 90_000, 700];
    for mode in ["group-default", "group-small"] {
        let kills = run_with_kills(
            "sigkill_with_group_commit_never_records_more_than_was_committed",
            mode,
            &kill_after,
            20_000,
        );
        assert_eq!(
            kills,
            kill_after.len(),
            "{mode}: every child was killed before it finished"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. A write that fails
// ---------------------------------------------------------------------------

/// Makes a directory read-only and restores it on drop, so the temporary
/// directory can be removed even when the test fails.
struct ReadOnlyDir(PathBuf);

impl ReadOnlyDir {
    fn new(dir: &Path) -> ReadOnlyDir {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        ReadOnlyDir(dir.to_path_buf())
    }

    /// Whether this process can still create files in it (root can).
    fn is_writable(&self) -> bool {
        let probe = self.0.join("probe");
        let writable = File::create(&probe).is_ok();
        let _ = fs::remove_file(probe);
        writable
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
    }
}

fn assert_io_error_names(result: linemark::Result<()>, path: &Path) {
    match result {
        Err(Error::Io {
            path: Some(named), ..
        }) => assert_eq!(named, path),
        other => panic!(
            "expected an I/O error naming {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn a_failed_write_keeps_the_state_and_a_later_sync_writes_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("checkpoints");
    fs::create_dir(&sub).unwrap();
    let path = sub.join("job.checkpoint");
    let positions = positions_after(&generated_lines(200));

    // No file yet: the first write creates it by an atomic rewrite, which
    // needs a new file in the directory.
    let mut checkpoint = open_strict(&path);
    let read_only = ReadOnlyDir::new(&sub);
    if read_only.is_writable() {
        eprintln!("note: skipped, directory permissions do not stop this user (root?)");
        return;
    }
    assert_io_error_names(checkpoint.commit(positions[1]), &path);
    assert_eq!(checkpoint.position(), positions[1]);
    assert_io_error_names(checkpoint.commit(positions[2]), &path);
    assert_eq!(checkpoint.position(), positions[2]);
    assert_io_error_names(checkpoint.sync(), &path);
    assert!(!path.exists());
    drop(read_only);
    checkpoint.sync().unwrap();
    drop(checkpoint);
    assert_eq!(open_strict(&path).position(), positions[2]);

    // The file exists now: appends still work in a read-only directory, but
    // compaction (a rewrite) fails. The appended commits are kept anyway.
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::EveryCommit)
        .compact_at(1024)
        .open(&path)
        .unwrap();
    let read_only = ReadOnlyDir::new(&sub);
    let mut failures = 0;
    for pos in &positions[3..100] {
        if checkpoint.commit(*pos).is_err() {
            failures += 1;
        }
        assert_eq!(checkpoint.position(), *pos);
    }
    assert!(
        failures > 0,
        "compaction never ran into the read-only directory"
    );
    drop(read_only);
    checkpoint.sync().unwrap();
    drop(checkpoint);
    assert_eq!(open_strict(&path).position(), positions[99]);
    let names: Vec<_> = fs::read_dir(&sub)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the checkpoint and its lock: {names:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. A torn end, at every byte, of a file written by another process
// ---------------------------------------------------------------------------

/// The child writes a checkpoint with group commit, one record per sync,
/// and reports the file's length and its own state after each sync.
fn group_writer_child() {
    let path = env_path(CHECKPOINT_VAR);
    let lines = generated_lines(40);
    let pos = positions_after(&lines);
    let failed = |n: usize, attempts, error: &str| {
        FailedLine::new(
            &Line::new(&lines[n - 1], n as u64, pos[n - 1].offset()),
            attempts,
            error,
        )
    };
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::from_secs(3600)))
        .compact_at(u64::MAX)
        .open(&path)
        .unwrap();
    type Step<'a> = Box<dyn Fn(&mut Checkpoint) -> linemark::Result<()> + 'a>;
    let steps: Vec<Step> = vec![
        Box::new(|c| c.commit(pos[3])),
        Box::new(|c| c.commit_done(pos[4])),
        Box::new(|c| c.commit_done(pos[6])),
        Box::new(|c| c.commit_failed(failed(9, 3, "timed out after 30 s"))),
        Box::new(|c| c.commit(pos[6])),
        Box::new(|c| {
            c.commit_failed(failed(
                12,
                1,
                "exit status 2: \"disk\tfull\"\nretry later \u{e9} \\ done",
            ))
        }),
        Box::new(|c| c.commit_resolved(9)),
        Box::new(|c| c.commit(pos[10])),
        Box::new(|c| c.commit_done(pos[13])),
        Box::new(|c| c.commit_failed(failed(16, 7, &"a long error message ".repeat(8)))),
        Box::new(|c| c.commit_resolved(12)),
    ];
    let mut len = file_len(&path);
    for step in steps {
        step(&mut checkpoint).unwrap();
        assert_eq!(file_len(&path), len, "group commit wrote before the sync");
        checkpoint.sync().unwrap();
        len = file_len(&path);
        println!("{REPORT}synced {len} {}", state_of(&checkpoint));
    }
}

#[test]
fn a_torn_end_at_every_byte_recovers_the_last_complete_record() {
    if child_role().as_deref() == Some("group-writer") {
        return group_writer_child();
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("written.checkpoint");
    let finished = spawn_self(
        "a_torn_end_at_every_byte_recovers_the_last_complete_record",
        "group-writer",
        &[(CHECKPOINT_VAR, written.as_os_str())],
    )
    .wait_success(DEADLINE);
    let synced: Vec<(usize, &str)> = finished
        .reports(REPORT)
        .map(|report| {
            let rest = report.strip_prefix("synced ").unwrap();
            let (len, state) = rest.split_once(' ').unwrap();
            (len.parse().unwrap(), state)
        })
        .collect();
    assert_eq!(synced.len(), 11, "{finished:?}");
    assert!(synced.windows(2).all(|w| w[0].0 < w[1].0), "{synced:?}");
    let full = fs::read(&written).unwrap();
    assert_eq!(full.len(), synced.last().unwrap().0);

    let fresh = format_state(Position::start(), &[], &[]);
    let path = dir.path().join("cut.checkpoint");
    let last_two_from = synced[synced.len() - 3].0;
    for cut in 0..=full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        let expected = synced
            .iter()
            .rev()
            .find(|(len, _)| *len <= cut)
            .map_or(fresh.as_str(), |(_, state)| state);
        let mut reopened = Checkpoint::open(&path)
            .unwrap_or_else(|err| panic!("cut at {cut} of {}: {err}", full.len()));
        assert_eq!(state_of(&reopened), expected, "cut at {cut}");
        if cut >= last_two_from {
            // The next write cuts the torn end off first, so what it adds
            // reads back (a record after garbage would be corruption).
            let mut done: Vec<u64> = reopened.done_beyond().collect();
            done.push(1000);
            let failed: Vec<FailedLine> = reopened.failed().unwrap().map(Result::unwrap).collect();
            let expected_again = format_state(reopened.position(), &done, &failed);
            let far = Position::from_parts(100_000, 1000, 10, 0x1234_5678).unwrap();
            reopened.commit_done(far).unwrap();
            reopened.sync().unwrap();
            drop(reopened);
            let again = Checkpoint::open(&path)
                .unwrap_or_else(|err| panic!("cut at {cut}, after a write: {err}"));
            assert_eq!(state_of(&again), expected_again, "cut at {cut}");
        }
    }
}
