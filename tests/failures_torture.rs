//! The failure log under SIGKILL (issue 15, "failures at scale"): a run in
//! which a third of 60,000 lines fail for good, its process killed at random
//! moments, records each failure once; a retry of the failed lines, killed
//! at random moments, never brings back a line it resolved; a failure log
//! cut short is refused, a crash tail after its recorded length is cut, and
//! neither is ever read as a different list of failed lines.
//!
//! The test binary spawns itself as the child; `LINEMARK_TEST_CHILD` gives
//! its role.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use linemark::{
    Checkpoint, Error, FailedLine, Line, Position, Report, RetryPolicy, Runner, permanent,
};

use common::{
    DEADLINE, Input, SEED_VAR, SplitMix64, child_role, env_path, failed_lines, serial, spawn_self,
    test_seed, wait_until,
};

const INPUT_VAR: &str = "LINEMARK_TEST_INPUT";
const CHECKPOINT_VAR: &str = "LINEMARK_TEST_CHECKPOINT";
/// A file the child creates when its task first runs: the run is under way.
const STARTED_VAR: &str = "LINEMARK_TEST_STARTED";
const WORKERS_VAR: &str = "LINEMARK_TEST_WORKERS";
/// What the child prints before its report.
const REPORT: &str = "failures torture report: ";

const LINES: usize = 60_000;
const KILLS: usize = 18;
const SIGKILL: i32 = 9;

/// The lines the first run fails for good.
fn fails_first(line: u64) -> bool {
    line % 3 == 0
}

/// The lines that still fail in a retry (half of those that failed).
fn fails_again(line: u64) -> bool {
    line % 6 == 3
}

fn first_error(line: u64) -> String {
    format!("line {line} fails")
}

fn again_error(line: u64) -> String {
    format!("line {line} fails again")
}

/// The failure log of the checkpoint at `checkpoint`.
fn log_of(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap().to_os_string();
    name.push(".failures");
    checkpoint.with_file_name(name)
}

/// Creates the file at `STARTED_VAR` once, at the task's first call.
fn note_started() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| fs::write(env_path(STARTED_VAR), b"started").unwrap());
}

fn print_report(report: &Report) {
    println!(
        "{REPORT}done={} failed={} failed_total={} retried={} position={} stopped={}",
        report.done,
        report.failed,
        report.failed_total,
        report.retried,
        report.position.line(),
        report.stopped
    );
}

/// Holds a line for a while, so that a run lasts long enough for all the
/// kills to land in it: at least 1.5 s of work over the whole input, with
/// 1 worker (a spin of 25 µs a line) or 4 (a sleep of at least 100 µs).
fn hold(workers: usize) {
    if workers == 1 {
        let started = Instant::now();
        while started.elapsed() < Duration::from_micros(25) {
            std::hint::spin_loop();
        }
    } else {
        thread::sleep(Duration::from_micros(100));
    }
}

/// The child of the first test: the job, its lines `fails_first` failing
/// for good.
fn run_child() {
    let workers: usize = std::env::var(WORKERS_VAR).unwrap().parse().unwrap();
    let report = Runner::new()
        .checkpoint_path(env_path(CHECKPOINT_VAR))
        .workers(workers)
        .retry(RetryPolicy::never())
        .run(env_path(INPUT_VAR), |line| {
            note_started();
            hold(workers);
            let number = line.number();
            if fails_first(number) {
                return Err(permanent(first_error(number)));
            }
            Ok(())
        })
        .unwrap();
    print_report(&report);
}

/// The child of the second test: a retry of the failed lines, half of which
/// now succeed, each held at least 200 µs (a second over all of them).
fn retry_child() {
    let report = Runner::new()
        .checkpoint_path(env_path(CHECKPOINT_VAR))
        .workers(4)
        .retry(RetryPolicy::never())
        .retry_failed(true)
        .run(env_path(INPUT_VAR), |line| {
            note_started();
            thread::sleep(Duration::from_micros(200));
            retry_task(line)
        })
        .unwrap();
    print_report(&report);
}

/// The task of a retry. A line that was not recorded as failed fails with
/// a message that says so, which the listing shows.
fn retry_task(line: &Line<'_>) -> Result<(), linemark::BoxError> {
    let number = line.number();
    if !fails_first(number) {
        return Err(permanent(format!(
            "line {number} was not recorded as failed and ran in a retry"
        )));
    }
    if fails_again(number) {
        return Err(permanent(again_error(number)));
    }
    Ok(())
}

/// The one report the child printed.
fn child_report(finished: &common::Finished) -> HashMap<String, u64> {
    let reports: Vec<&str> = finished.reports(REPORT).collect();
    assert_eq!(reports.len(), 1, "{finished:?}");
    reports[0]
        .split(' ')
        .map(|field| {
            let (name, value) = field.split_once('=').unwrap();
            let value = match value {
                "true" => 1,
                "false" => 0,
                number => number.parse().unwrap(),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// Spawns the child `role` of `test_name`, waits until its task has run
/// (or it has exited), then kills it after a random delay. Returns whether
/// it was killed (`false`: it had finished, successfully).
fn spawn_and_kill(
    test_name: &str,
    role: &str,
    env: &[(&str, &std::ffi::OsStr)],
    started: &Path,
    rng: &mut SplitMix64,
    round: usize,
) -> bool {
    let _ = fs::remove_file(started);
    let after = Duration::from_millis(rng.in_range(&(0..=55)));
    let mut child = spawn_self(test_name, role, env);
    wait_until("the child's task runs or the child exits", || {
        started.exists() || child.has_exited()
    });
    thread::sleep(after);
    let ended = child.kill_and_wait();
    if ended.status.signal() == Some(SIGKILL) {
        return true;
    }
    // It finished before the kill.
    assert!(ended.status.success(), "round {round}: {ended:?}");
    false
}

/// What `listed` has that `expected` lacks and the reverse, a few of each.
fn difference(listed: &[u64], expected: &[u64]) -> String {
    let listed: BTreeSet<u64> = listed.iter().copied().collect();
    let expected: BTreeSet<u64> = expected.iter().copied().collect();
    let extra: Vec<u64> = listed.difference(&expected).copied().collect();
    let missing: Vec<u64> = expected.difference(&listed).copied().collect();
    format!(
        "{} listed and not expected (first {:?}), {} expected and not listed (first {:?})",
        extra.len(),
        &extra[..extra.len().min(10)],
        missing.len(),
        &missing[..missing.len().min(10)]
    )
}

/// Checks a failed line against the input line it names.
fn check_identity(input: &Input, positions: &[Position], failed: &FailedLine, context: &str) {
    let number = failed.line();
    assert!(
        (1..=input.lines.len() as u64).contains(&number),
        "{context}: a failed line beyond the input: {failed:?}"
    );
    let index = number as usize - 1;
    let raw = &input.lines[index];
    let offset = positions[index].offset();
    assert_eq!(
        (failed.offset(), failed.len()),
        (offset, raw.len() as u64),
        "{context}: the record of line {number} names other bytes: {failed:?}"
    );
}

fn sigkill_during_a_run(test_name: &str, workers: usize) {
    let _serial = serial();
    let seed = test_seed();
    eprintln!("failures torture: seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = SplitMix64(seed);
    let input = Input::generated(LINES);
    let positions = input.positions();
    let end = positions[LINES];
    let checkpoint = input.sibling("job.checkpoint");
    let started = input.sibling("started");
    let workers_text = workers.to_string();
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (CHECKPOINT_VAR, checkpoint.as_os_str()),
        (STARTED_VAR, started.as_os_str()),
        (WORKERS_VAR, workers_text.as_ref()),
    ];
    let expected: Vec<u64> = (1..=LINES as u64).filter(|&n| fails_first(n)).collect();

    let mut kills = 0;
    let mut mid_run = 0;
    let mut last_position = 0;
    for round in 0..KILLS {
        if !spawn_and_kill(test_name, "run", &env, &started, &mut rng, round) {
            break;
        }
        kills += 1;
        if !checkpoint.exists() {
            continue;
        }
        // What a kill left: every line the position passed that fails is
        // listed, once, and no line that succeeds is.
        let context = format!("after kill {kills} (round {round})");
        let listed = failed_lines(&checkpoint);
        let position = Checkpoint::inspect(&checkpoint).unwrap().position.line();
        assert!(
            position >= last_position,
            "{context}: the position went back from {last_position} to {position}"
        );
        last_position = position;
        for failed in &listed {
            check_identity(&input, &positions, failed, &context);
            assert!(
                fails_first(failed.line()),
                "{context}: a line that succeeds is listed as failed: {failed:?}"
            );
            assert_eq!(
                (failed.attempts(), failed.error()),
                (1, first_error(failed.line()).as_str()),
                "{context}"
            );
        }
        let passed = listed.iter().filter(|f| f.line() <= position).count() as u64;
        assert_eq!(
            passed,
            position / 3,
            "{context}: failed lines the position {position} passed, listed against expected"
        );
        if position > 0 && position < LINES as u64 {
            mid_run += 1;
        }
    }
    let finished = spawn_self(test_name, "run", &env).wait_success(DEADLINE);
    eprintln!(
        "failures torture ({workers} workers): {kills} kills, {mid_run} left the position \
         mid-input"
    );
    assert!(
        kills >= KILLS / 2,
        "only {kills} runs were killed before the end"
    );
    assert!(mid_run >= 1, "no kill left the position mid-input");
    let report = child_report(&finished);
    assert_eq!(
        report["failed_total"],
        expected.len() as u64,
        "{finished:?}"
    );
    assert_eq!(report["position"], LINES as u64, "{finished:?}");

    let listed = failed_lines(&checkpoint);
    let numbers: Vec<u64> = listed.iter().map(FailedLine::line).collect();
    assert!(
        numbers == expected,
        "the failed lines are not the expected ones: {}",
        difference(&numbers, &expected)
    );
    for failed in &listed {
        check_identity(&input, &positions, failed, "at the end");
        assert_eq!(failed.attempts(), 1, "{failed:?}");
        assert_eq!(failed.error(), first_error(failed.line()));
    }
    let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
    assert_eq!(snapshot.failed, expected.len() as u64);
    assert_eq!(snapshot.position, end);
    // The failed lines are in the log, not in the checkpoint, which stays
    // small (their records alone would take more than a megabyte).
    assert!(
        fs::metadata(&checkpoint).unwrap().len() < 256 << 10,
        "the checkpoint is {} bytes long",
        fs::metadata(&checkpoint).unwrap().len()
    );
    assert!(fs::metadata(log_of(&checkpoint)).unwrap().len() > 1 << 20);

    // A run now runs nothing and reports the failed lines of all runs.
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .workers(workers)
        .retry(RetryPolicy::never())
        .run(&input.path, |line| {
            Err(permanent(format!("line {} ran again", line.number())))
        })
        .unwrap();
    assert_eq!(
        (
            report.done,
            report.failed,
            report.failed_total,
            report.retried
        ),
        (0, 0, expected.len() as u64, 0),
        "{report}"
    );
    assert_eq!(report.position, end);
    assert!(!report.stopped);
    assert_eq!(failed_lines(&checkpoint).len(), expected.len());
}

#[test]
fn sigkill_during_a_run_with_many_failures_records_each_failure_once() {
    const NAME: &str = "sigkill_during_a_run_with_many_failures_records_each_failure_once";
    if child_role().as_deref() == Some("run") {
        return run_child();
    }
    sigkill_during_a_run(NAME, 4);
}

#[test]
fn sigkill_during_a_one_worker_run_with_many_failures_records_each_failure_once() {
    const NAME: &str =
        "sigkill_during_a_one_worker_run_with_many_failures_records_each_failure_once";
    if child_role().as_deref() == Some("run") {
        return run_child();
    }
    sigkill_during_a_run(NAME, 1);
}

#[test]
fn sigkill_during_retry_failed_never_brings_back_a_resolved_line() {
    const NAME: &str = "sigkill_during_retry_failed_never_brings_back_a_resolved_line";
    if child_role().as_deref() == Some("retry") {
        return retry_child();
    }
    let _serial = serial();
    let seed = test_seed();
    eprintln!("failures torture: seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = SplitMix64(seed);
    let input = Input::generated(LINES);
    let positions = input.positions();
    let end = positions[LINES];
    let checkpoint = input.sibling("job.checkpoint");
    let started = input.sibling("started");
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (CHECKPOINT_VAR, checkpoint.as_os_str()),
        (STARTED_VAR, started.as_os_str()),
    ];
    let failed_first: BTreeSet<u64> = (1..=LINES as u64).filter(|&n| fails_first(n)).collect();
    let still_failing: Vec<u64> = (1..=LINES as u64).filter(|&n| fails_again(n)).collect();

    // The first run, here: every failure recorded.
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .workers(4)
        .retry(RetryPolicy::never())
        .run(&input.path, |line| {
            let number = line.number();
            if fails_first(number) {
                return Err(permanent(first_error(number)));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(report.failed_total, failed_first.len() as u64, "{report}");
    let listed: BTreeSet<u64> = failed_lines(&checkpoint)
        .iter()
        .map(FailedLine::line)
        .collect();
    assert!(listed == failed_first);

    // Lines seen absent from the listing after a kill: resolved, for good.
    let mut resolved: BTreeSet<u64> = BTreeSet::new();
    // The attempts each listed line had at the last look.
    let mut attempts: HashMap<u64, u32> = failed_first.iter().map(|&n| (n, 1)).collect();
    let mut kills = 0;
    let mut partial = 0;
    for round in 0..KILLS {
        if !spawn_and_kill(NAME, "retry", &env, &started, &mut rng, round) {
            break;
        }
        kills += 1;
        let context = format!("after kill {kills} (round {round})");
        let listed = failed_lines(&checkpoint);
        assert_eq!(
            Checkpoint::inspect(&checkpoint).unwrap().position,
            end,
            "{context}: a retry moved the position"
        );
        let mut now: BTreeSet<u64> = BTreeSet::new();
        for failed in &listed {
            let number = failed.line();
            check_identity(&input, &positions, failed, &context);
            assert!(
                failed_first.contains(&number),
                "{context}: a line that never failed is listed: {failed:?}"
            );
            assert!(
                !resolved.contains(&number),
                "{context}: line {number}, resolved by an earlier run, is listed again: \
                 {failed:?}"
            );
            let before = attempts[&number];
            assert!(
                failed.attempts() >= before,
                "{context}: line {number} had {before} attempts, now {failed:?}"
            );
            attempts.insert(number, failed.attempts());
            let error = if failed.attempts() == 1 {
                first_error(number)
            } else {
                assert!(
                    fails_again(number),
                    "{context}: a line that succeeds in a retry failed again: {failed:?}"
                );
                again_error(number)
            };
            assert_eq!(failed.error(), error, "{context}: {failed:?}");
            now.insert(number);
        }
        for &number in failed_first.difference(&now) {
            assert!(
                !fails_again(number),
                "{context}: line {number}, which fails in a retry, is no longer listed"
            );
            resolved.insert(number);
        }
        let to_resolve = failed_first.len() - still_failing.len();
        if !resolved.is_empty() && resolved.len() < to_resolve {
            partial += 1;
        }
    }
    let finished = spawn_self(NAME, "retry", &env).wait_success(DEADLINE);
    eprintln!(
        "failures torture (retry): {kills} kills, {partial} left part of the lines resolved, \
         {} resolved before the last run",
        resolved.len()
    );
    assert!(
        kills >= KILLS / 2,
        "only {kills} runs were killed before the end"
    );
    assert!(partial >= 1, "no kill left part of the lines resolved");
    let report = child_report(&finished);
    assert_eq!(
        report["failed_total"],
        still_failing.len() as u64,
        "{finished:?}"
    );
    assert_eq!(report["failed"], still_failing.len() as u64, "{finished:?}");

    let listed = failed_lines(&checkpoint);
    let numbers: Vec<u64> = listed.iter().map(FailedLine::line).collect();
    assert!(
        numbers == still_failing,
        "the lines still failed are not the expected ones: {}",
        difference(&numbers, &still_failing)
    );
    let runs = kills as u32 + 1;
    for failed in &listed {
        check_identity(&input, &positions, failed, "at the end");
        assert!(
            failed.attempts() > 1 && failed.attempts() <= 1 + runs,
            "{failed:?} after {runs} retries"
        );
        assert!(failed.attempts() >= attempts[&failed.line()], "{failed:?}");
        assert_eq!(failed.error(), again_error(failed.line()));
    }
    let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
    assert_eq!(snapshot.failed, still_failing.len() as u64);
    assert_eq!(snapshot.position, end);

    // One more retry, here, runs each line still failed once.
    let before: HashMap<u64, u32> = listed.iter().map(|f| (f.line(), f.attempts())).collect();
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .workers(4)
        .retry(RetryPolicy::never())
        .retry_failed(true)
        .run(&input.path, retry_task)
        .unwrap();
    assert_eq!(
        (report.done, report.failed, report.failed_total),
        (0, still_failing.len() as u64, still_failing.len() as u64),
        "{report}"
    );
    let listed = failed_lines(&checkpoint);
    assert_eq!(listed.len(), still_failing.len());
    for failed in &listed {
        assert_eq!(failed.attempts(), before[&failed.line()] + 1, "{failed:?}");
    }
}

/// The failed lines `listing` gives, or its first error.
fn listing(lines: linemark::Result<linemark::FailedLines>) -> linemark::Result<Vec<FailedLine>> {
    lines?.collect()
}

/// A record as the format writes it, with its CRC.
fn record(body: &str) -> String {
    format!("{body} crc={:08x}\n", crc32fast::hash(body.as_bytes()))
}

#[test]
fn a_failure_log_cut_at_every_byte_is_refused_or_recovered_never_misread() {
    let _serial = serial();
    let seed = test_seed();
    eprintln!("failures torture: seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = SplitMix64(seed);

    // A run that ended cleanly, its 50 lines failed and passed.
    let input = Input::generated(50);
    let checkpoint = input.sibling("job.checkpoint");
    let log = log_of(&checkpoint);
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .workers(1)
        .retry(RetryPolicy::never())
        .run(&input.path, |line| {
            Err(permanent(first_error(line.number())))
        })
        .unwrap();
    assert_eq!((report.failed, report.failed_total), (50, 50), "{report}");
    let expected = failed_lines(&checkpoint);
    assert_eq!(expected.len(), 50);
    let saved = fs::read(&checkpoint).unwrap();
    let full = fs::read(&log).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&full)
            .lines()
            .filter(|record| record.starts_with("failed line="))
            .count(),
        50,
        "the log does not hold the 50 failed lines"
    );

    let restore = |log_bytes: Option<&[u8]>| {
        fs::write(&checkpoint, &saved).unwrap();
        match log_bytes {
            Some(bytes) => fs::write(&log, bytes).unwrap(),
            None => {
                let _ = fs::remove_file(&log);
            }
        }
    };
    // Refused, the two files left as they were.
    let refused = |what: &str, log_bytes: Option<&[u8]>| {
        match Checkpoint::open(&checkpoint) {
            Err(Error::OutputChanged { path, .. }) => {
                assert_eq!(path.file_name(), log.file_name(), "{what}")
            }
            Err(other) => panic!("{what}: opened with {other:?}, not OutputChanged"),
            Ok(_) => panic!("{what}: the checkpoint opened"),
        }
        assert!(
            fs::read(&checkpoint).unwrap() == saved,
            "{what}: the checkpoint changed"
        );
        match log_bytes {
            Some(bytes) => assert!(
                fs::read(&log).unwrap() == bytes,
                "{what}: the failure log changed"
            ),
            None => assert!(!log.exists(), "{what}: a failure log was made"),
        }
    };

    let started = Instant::now();
    for cut in 0..full.len() {
        let what = format!("the log cut to {cut} bytes of {}", full.len());
        restore(Some(&full[..cut]));
        refused(&what, Some(&full[..cut]));
        // A listing reads records up to the cut, then fails: never a
        // shorter list.
        assert!(
            listing(Checkpoint::inspect_failed(&checkpoint)).is_err(),
            "{what}: listed without an error"
        );
    }
    restore(None);
    refused("the log removed", None);
    assert!(listing(Checkpoint::inspect_failed(&checkpoint)).is_err());

    // Bytes after the recorded length of a log whose run ended cleanly
    // (a later session's appends, killed before its first record): never
    // read, and cut on open.
    let mut longer = full.clone();
    longer.extend_from_slice(record("resolved line=3").as_bytes());
    restore(Some(&longer));
    assert_eq!(
        listing(Checkpoint::inspect_failed(&checkpoint)).unwrap(),
        expected
    );
    let opened = Checkpoint::open(&checkpoint).unwrap();
    assert_eq!(
        fs::read(&log).unwrap(),
        full,
        "the tail after a clean end is cut"
    );
    assert_eq!(listing(opened.failed()).unwrap(), expected);
    drop(opened);
    restore(Some(&full));

    // One byte changed: refused when the tail digest sees it, else every
    // listing fails. Every third byte (the records' lengths vary, so every
    // field is hit), and every byte of the last records.
    let mut refusals = 0;
    let mut changes = 0;
    for at in (0..full.len()).filter(|at| at % 3 == 0 || at + 200 >= full.len()) {
        changes += 1;
        let mut changed = full.clone();
        changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
        let what = format!("byte {at} of the log changed");
        restore(Some(&changed));
        match Checkpoint::open(&checkpoint) {
            Err(Error::OutputChanged { .. }) => refusals += 1,
            Err(other) => panic!("{what}: opened with {other:?}"),
            Ok(opened) => {
                assert!(listing(opened.failed()).is_err(), "{what}: listed");
                drop(opened);
            }
        }
        assert!(fs::read(&checkpoint).unwrap() == saved, "{what}");
        assert!(fs::read(&log).unwrap() == changed, "{what}");
        assert!(
            listing(Checkpoint::inspect_failed(&checkpoint)).is_err(),
            "{what}: listed without an error"
        );
    }
    restore(Some(&full));
    assert_eq!(failed_lines(&checkpoint), expected);
    eprintln!(
        "failures torture: {} cuts and changed bytes of a {}-byte log in {:.2?}, \
         {refusals} changes refused by the digest",
        full.len() + changes,
        full.len(),
        started.elapsed()
    );

    // A crash tail: a hand-written loop that syncs and drops without
    // closing, as a killed process leaves its files.
    let input = Input::generated(40);
    let checkpoint = input.sibling("loop.checkpoint");
    let log = log_of(&checkpoint);
    let positions = input.positions();
    let line = |n: u64| {
        Line::new(
            &input.lines[n as usize - 1],
            n,
            positions[n as usize - 1].offset(),
        )
    };
    {
        let mut opened = Checkpoint::open(&checkpoint).unwrap();
        for n in 1..=40 {
            if n % 2 == 0 {
                opened
                    .commit_failed(FailedLine::new(&line(n), 1, "x"))
                    .unwrap();
            }
            opened.commit_line(&line(n)).unwrap();
        }
        opened.sync().unwrap();
    }
    let expected = failed_lines(&checkpoint);
    assert_eq!(
        expected.iter().map(FailedLine::line).collect::<Vec<_>>(),
        (1..=20).map(|n| n * 2).collect::<Vec<_>>()
    );
    let saved = fs::read(&checkpoint).unwrap();
    let full = fs::read(&log).unwrap();
    assert!(
        !full.is_empty(),
        "the passed failed lines are not in the log"
    );

    let mut junks: Vec<Vec<u8>> = vec![
        b"f".to_vec(),
        b"\n".to_vec(),
        b"failed line=41 offset=".to_vec(),
        // Whole records: line 2 resolved, line 3 failed, line 4 twice.
        record("resolved line=2").into_bytes(),
        record(&format!(
            "failed line=3 offset={} len={} digest={:08x} attempts=1 error=\"y\"",
            positions[2].offset(),
            input.lines[2].len(),
            positions[3].last_digest()
        ))
        .into_bytes(),
        full[..full.iter().position(|&b| b == b'\n').unwrap() + 1].to_vec(),
    ];
    for _ in 0..8 {
        let len = rng.in_range(&(1..=300)) as usize;
        junks.push((0..len).map(|_| rng.next() as u8).collect());
    }
    for (n, junk) in junks.iter().enumerate() {
        let what = format!("junk {n} ({} bytes) after the log", junk.len());
        fs::write(&checkpoint, &saved).unwrap();
        let mut with_junk = full.clone();
        with_junk.extend_from_slice(junk);
        fs::write(&log, &with_junk).unwrap();
        // Read up to the recorded length only, before and after the cut.
        assert_eq!(
            listing(Checkpoint::inspect_failed(&checkpoint)).unwrap(),
            expected,
            "{what}"
        );
        let opened = Checkpoint::open(&checkpoint).unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            fs::read(&log).unwrap() == full,
            "{what}: the log is {} bytes long after the open, {} recorded",
            fs::metadata(&log).unwrap().len(),
            full.len()
        );
        assert_eq!(listing(opened.failed()).unwrap(), expected, "{what}");
        assert_eq!(opened.failed_count(), expected.len() as u64, "{what}");
        drop(opened);
        assert_eq!(failed_lines(&checkpoint), expected, "{what}");
        assert!(fs::read(&log).unwrap() == full, "{what}");
        assert!(
            fs::read(&checkpoint).unwrap() == saved,
            "{what}: the checkpoint changed"
        );
    }

    // The log cut back takes commits: a resolution goes after its
    // recorded length, and lists as it should after a clean close.
    let mut with_junk = full.clone();
    with_junk.extend_from_slice(record("resolved line=4").as_bytes());
    fs::write(&log, &with_junk).unwrap();
    let mut opened = Checkpoint::open(&checkpoint).unwrap();
    opened.commit_resolved(2).unwrap();
    opened.close().unwrap();
    let after: Vec<u64> = failed_lines(&checkpoint)
        .iter()
        .map(FailedLine::line)
        .collect();
    assert_eq!(after, (2..=20).map(|n| n * 2).collect::<Vec<_>>());
    let log_now = fs::read(&log).unwrap();
    assert!(
        log_now.starts_with(&full),
        "the log's recorded bytes changed"
    );
}
