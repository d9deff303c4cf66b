//! The time bounds of issue 9, across processes: a commit reaches the
//! checkpoint file (handed to the OS, without `fdatasync`) at most
//! `write_delay` after it was made, and with group durability the disk at
//! most the group's `max_delay` after it was made, with no further call from
//! the job. The job may be stuck in its next line for minutes (a download
//! that hangs), so only the checkpoint itself can keep these bounds.
//!
//! A SIGKILL therefore repeats at most the lines in progress plus the
//! commits of the last `write_delay`: the tests kill a child stuck on a line,
//! and a child at random moments, and count what is done again.
//!
//! And the digest of the finished part that a resume checks (issue 10) is
//! on disk after a kill: an edit of a finished line is refused, the same
//! input resumes.
//!
//! Tests that need a second process run this test binary again as a child
//! (see `common::spawn_self`): the same test function, started with the
//! `LINEMARK_TEST_CHILD` environment variable, plays the child's part.

#![cfg(unix)]

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use linemark::{Checkpoint, Durability, Error, Line, LineReader, Position, Runner};

use common::lateness::{LatenessProbe, recorded_worst};
use common::{
    DEADLINE, Finished, Input, SEED_VAR, SmallDisk, SplitMix64, child_role, counts_by_line,
    env_path, generated_lines, positions_after, serial, spawn_self, test_seed, wait_until,
};

/// The default `write_delay`: the longest a commit may stay in memory only.
const WRITE_DELAY: Duration = Duration::from_millis(10);

/// Added to a bound before it is checked: time for the checkpoint's thread
/// to be scheduled and for its write to finish. The bound is the property
/// checked; the margin keeps the scheduler of a shared machine out of it.
const SCHEDULING_MARGIN: Duration = Duration::from_millis(50);

/// Environment variables that hand paths and settings to a child.
const INPUT_VAR: &str = "LINEMARK_TEST_INPUT";
const OUTPUT_VAR: &str = "LINEMARK_TEST_OUTPUT";
const LATENESS_VAR: &str = "LINEMARK_TEST_LATENESS";
const CHECKPOINT_VAR: &str = "LINEMARK_TEST_CHECKPOINT";

/// Children print their results after this marker.
const REPORT: &str = "linemark-child: ";

const SIGKILL: i32 = 9;

/// Opens the file a job records its work in. With `O_APPEND` every `write`
/// lands whole at the end, so workers never mix their lines and a kill
/// leaves whole lines only.
fn open_output(path: &Path) -> File {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

/// The work of a line: appending it, terminator included, in one `write`
/// (a regular file takes a small write whole, so `write_all` makes one call).
fn append(output: &File, line: &Line<'_>) -> io::Result<()> {
    (&*output).write_all(line.raw())
}

/// A task that never returns, as a download that hangs: nothing but the
/// checkpoint's own thread can write the commits made before it.
fn stuck_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn ms(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

fn assert_killed(ended: &Finished) {
    assert_eq!(
        ended.status.signal(),
        Some(SIGKILL),
        "the child ended before its kill: {ended:?}"
    );
}

// ---------------------------------------------------------------------------
// 1. A job stuck on a line: the lines before it are written all the same
// ---------------------------------------------------------------------------

/// The input of the stuck jobs and the line they get stuck on: lines
/// `1..STUCK_AT` finish at once, line `STUCK_AT` never does.
const STUCK_LINES: usize = 8;
const STUCK_AT: usize = 6;

/// A hand-written job: every line is appended to `output`, then committed.
/// Gets stuck on line `stuck_at` when given. Returns where it resumed.
fn hand_written_loop(
    input: &Path,
    checkpoint: &Path,
    output: &Path,
    stuck_at: Option<u64>,
) -> Position {
    let output = open_output(output);
    let mut checkpoint = Checkpoint::open(checkpoint).unwrap();
    let mut reader = BufReader::new(File::open(input).unwrap());
    let resumed = checkpoint.position().seek_offset(&mut reader).unwrap();
    let mut lines = LineReader::resume(reader, resumed);
    while let Some(line) = lines.next_line().unwrap() {
        if Some(line.number()) == stuck_at {
            stuck_forever();
        }
        append(&output, &line).unwrap();
        checkpoint.commit_line(&line).unwrap();
    }
    checkpoint.close().unwrap();
    resumed
}

/// The same job driven by `Runner` with one worker, which runs the task on
/// the thread that commits: while the task is stuck, the runner makes no
/// call on the checkpoint either.
fn runner_job(input: &Path, output: &Path, stuck_at: Option<u64>) -> linemark::Report {
    let output = open_output(output);
    let task = |line: &Line<'_>| -> io::Result<()> {
        if Some(line.number()) == stuck_at {
            stuck_forever();
        }
        append(&output, line)
    };
    Runner::new().run_task(input, &task).unwrap()
}

fn stuck_child() {
    let stuck_at = Some(STUCK_AT as u64);
    let (input, output) = (env_path(INPUT_VAR), env_path(OUTPUT_VAR));
    match child_role().as_deref() {
        Some("stuck-runner") => {
            runner_job(&input, &output, stuck_at);
        }
        Some("stuck-loop") => {
            hand_written_loop(&input, &env_path(CHECKPOINT_VAR), &output, stuck_at);
        }
        role => panic!("unknown child role {role:?}"),
    }
    unreachable!("the job got past the line it is stuck on");
}

/// Runs the job in a child until it is stuck on line `STUCK_AT`, checks
/// that the checkpoint file covers the lines before it once `write_delay`
/// has passed, kills the child, lets `rerun` finish the job, and checks that
/// every line was done exactly once: none of the finished lines was redone.
fn kill_while_stuck(test_name: &str, role: &str, rerun: impl FnOnce(&Input, &Path, &Path)) {
    let input = Input::generated(STUCK_LINES);
    let positions = input.positions();
    // Where `Runner` puts it by default, so both jobs can share the code.
    let checkpoint = input.sibling("input.txt.checkpoint");
    let output = input.sibling("output.txt");
    let finished = STUCK_AT - 1;

    let mut child = spawn_self(
        test_name,
        role,
        &[
            (INPUT_VAR, input.path.as_os_str()),
            (OUTPUT_VAR, output.as_os_str()),
            (CHECKPOINT_VAR, checkpoint.as_os_str()),
        ],
    );
    wait_until("the child finished the lines before the stuck one", || {
        counts_by_line(&input, &output).iter().sum::<u32>() as usize >= finished
            || child.has_exited()
    });
    // Line `finished` was committed right after it was appended: from here
    // the write bound runs.
    thread::sleep(WRITE_DELAY + SCHEDULING_MARGIN);
    assert!(
        !child.has_exited(),
        "the child ended instead of getting stuck: {:?}",
        child.kill_and_wait()
    );
    let recorded = Checkpoint::inspect(&checkpoint).unwrap().position;
    assert_eq!(
        recorded,
        positions[finished],
        "{role}: {} after the commit of line {finished}, with the job stuck on line {STUCK_AT}, \
         the checkpoint file records {} lines",
        ms(WRITE_DELAY + SCHEDULING_MARGIN),
        recorded.line(),
    );
    assert_killed(&child.kill_and_wait());

    rerun(&input, &checkpoint, &output);
    let counts = counts_by_line(&input, &output);
    assert!(
        counts.iter().all(|&n| n == 1),
        "{role}: times each line was done: {counts:?}"
    );
}

#[test]
fn a_runner_stuck_on_a_line_has_written_the_lines_before_it() {
    if child_role().is_some() {
        return stuck_child();
    }
    let _serial = serial();
    kill_while_stuck(
        "a_runner_stuck_on_a_line_has_written_the_lines_before_it",
        "stuck-runner",
        |input, _, output| {
            let report = runner_job(&input.path, output, None);
            assert_eq!(report.resumed_at, input.positions()[STUCK_AT - 1]);
            assert_eq!(report.done, (STUCK_LINES - STUCK_AT + 1) as u64);
        },
    );
}

#[test]
fn a_loop_stuck_on_a_line_has_written_the_lines_before_it() {
    if child_role().is_some() {
        return stuck_child();
    }
    let _serial = serial();
    kill_while_stuck(
        "a_loop_stuck_on_a_line_has_written_the_lines_before_it",
        "stuck-loop",
        |input, checkpoint, output| {
            let resumed = hand_written_loop(&input.path, checkpoint, output, None);
            assert_eq!(resumed, input.positions()[STUCK_AT - 1]);
        },
    );
}

// ---------------------------------------------------------------------------
// 2. The group is synced within its delay without another call
// ---------------------------------------------------------------------------

#[test]
fn a_group_is_synced_within_its_delay_without_another_call() {
    const COMMITTED: usize = 5;
    let _serial = serial();
    let sync_delay = Duration::from_millis(100);
    let input = Input::generated(COMMITTED);
    let path = input.sibling("job.checkpoint");
    // So many commits per group that only the delay can end it.
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, sync_delay))
        .open(&path)
        .unwrap();
    let mut lines = LineReader::new(BufReader::new(File::open(&input.path).unwrap()));
    while let Some(line) = lines.next_line().unwrap() {
        checkpoint.commit_line(&line).unwrap();
    }
    let committed = checkpoint.position();
    assert_eq!(committed, input.positions()[COMMITTED]);

    // Nothing that writes from here: only the two read-only getters.
    thread::sleep(sync_delay + SCHEDULING_MARGIN);
    let waited = ms(sync_delay + SCHEDULING_MARGIN);
    assert!(
        checkpoint.sync_count() >= 1,
        "no sync {waited} after the last commit, with a group delay of {}",
        ms(sync_delay)
    );
    assert_eq!(
        checkpoint.durable_position(),
        committed,
        "durable position {waited} after the last commit"
    );
    assert_eq!(Checkpoint::inspect(&path).unwrap().position, committed);
    checkpoint.close().unwrap();
}

// ---------------------------------------------------------------------------
// 3. SIGKILL at random moments
// ---------------------------------------------------------------------------

const TORTURE_WORKERS: usize = 8;
/// The writer thread is one more thread on a machine whose cores the
/// workers and the runner already share: a write may come this much later
/// than `write_delay` with no fault of the checkpoint's.
const WRITER_WAKE_SLACK: Duration = Duration::from_millis(5);

/// A run of a runner with 8 workers SIGKILLed at random moments, then run
/// to the end: nothing is lost, and each kill throws away at most the lines
/// in progress and the commits of the last `write_delay`.
struct Torture {
    /// The test function, whose child plays the run.
    test_name: &'static str,
    kills: usize,
    /// When each kill comes, after its child was started.
    kill_after_ms: std::ops::RangeInclusive<u64>,
    /// What a line's task takes at least.
    task_time: Duration,
    /// Whether the task sleeps (a task slower than a batch's work: batches
    /// of one line) or spins (a cheap task: batches of many lines).
    sleeps: bool,
    /// The most lines a kill may find in progress.
    in_progress: usize,
    /// Lines that run at once: workers, or an async run's concurrency.
    lanes: usize,
    /// An async run (`run_async`, whose task awaits a tokio timer) rather
    /// than a sync one with workers.
    asynchronous: bool,
}

/// A task of 500 µs, a sleep so the figures do not depend on the CPU: its
/// lines go one at a time, and at most two a worker are in progress
/// (running, or finished with the result on its way to the checkpoint).
const SLOW_TORTURE: Torture = Torture {
    test_name: "sigkill_at_random_moments_repeats_only_lines_in_flight_and_one_write_delay",
    kills: 30,
    kill_after_ms: 30..=200,
    task_time: Duration::from_micros(500),
    sleeps: true,
    in_progress: 2 * TORTURE_WORKERS,
    lanes: TORTURE_WORKERS,
    asynchronous: false,
};

/// A cheap task (5 µs of spinning, and the append): its lines go in
/// batches, and what is in progress is bounded by the window.
const CHEAP_TORTURE: Torture = Torture {
    test_name: "sigkill_at_random_moments_with_a_cheap_task_repeats_at_most_the_window_and_one_write_delay",
    kills: 12,
    kill_after_ms: 20..=80,
    task_time: Duration::from_micros(5),
    sleeps: false,
    in_progress: Runner::DEFAULT_WINDOW,
    lanes: TORTURE_WORKERS,
    asynchronous: false,
};

/// The async runner with 64 lines in flight, each awaiting a 1 ms tokio
/// timer (batches of one line): a kill finds at most the lines in flight
/// finished and unrecorded.
#[cfg(feature = "tokio")]
const ASYNC_TORTURE: Torture = Torture {
    test_name: "sigkill_at_random_moments_of_an_async_run_repeats_only_lines_in_flight_and_one_write_delay",
    kills: 20,
    kill_after_ms: 30..=150,
    task_time: Duration::from_millis(1),
    sleeps: true,
    in_progress: 64,
    lanes: 64,
    asynchronous: true,
};

fn torture_child(torture: &Torture) {
    // The writer thread is one among the busy workers: the probe tells how
    // late the scheduler woke a thread meanwhile.
    let _probe = LatenessProbe::start_recording(open_output(&env_path(LATENESS_VAR)));
    let output = open_output(&env_path(OUTPUT_VAR));
    let task = |line: &Line<'_>| -> io::Result<()> {
        if torture.sleeps {
            thread::sleep(torture.task_time);
        } else {
            let started = std::time::Instant::now();
            while started.elapsed() < torture.task_time {
                std::hint::spin_loop();
            }
        }
        append(&output, line)
    };
    let report = if torture.asynchronous {
        async_torture_run(torture, &output)
    } else {
        Runner::new()
            .workers(torture.lanes)
            .run_task(env_path(INPUT_VAR), &task)
            .unwrap()
    };
    // Lines done and microseconds taken, for the throughput.
    println!("{REPORT}{} {}", report.done, report.elapsed.as_micros());
}

fn kill_torture(torture: &Torture) {
    let _serial = serial();
    let seed = test_seed();
    eprintln!("kill torture: seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = SplitMix64(seed);
    let kill_after: Vec<u64> = (0..torture.kills)
        .map(|_| rng.in_range(&torture.kill_after_ms))
        .collect();
    // No child may finish before its kill, however fast the machine: the
    // workers can do no more than one line per `task_time` each while the
    // children live. The rest is left for the final run, whose throughput
    // gives the bound.
    let fastest_per_ms = (torture.lanes as u128 * 1000 / torture.task_time.as_micros()) as u64;
    let line_count = (kill_after.iter().sum::<u64>() * fastest_per_ms) as usize + 5_000;
    let input = Input::generated(line_count);
    let output = input.sibling("output.txt");
    let checkpoint = input.sibling("input.txt.checkpoint");
    let lateness = input.sibling("lateness.txt");
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (OUTPUT_VAR, output.as_os_str()),
        (LATENESS_VAR, lateness.as_os_str()),
    ];

    // For each kill, the lines its run did that the checkpoint file had not
    // recorded when it died: exactly the work the kill threw away, each of
    // them done again later.
    let mut thrown_away = Vec::new();
    let mut late = Vec::new();
    let mut before = vec![0u32; line_count];
    for (kill, &after_ms) in kill_after.iter().enumerate() {
        let _ = fs::remove_file(&lateness);
        let mut child = spawn_self(torture.test_name, "torture", &env);
        thread::sleep(Duration::from_millis(after_ms));
        assert!(
            !child.has_exited(),
            "run {kill} ended before its kill: {:?}",
            child.kill_and_wait()
        );
        assert_killed(&child.kill_and_wait());
        late.push(recorded_worst(&lateness));
        let recorded = Checkpoint::inspect(&checkpoint)
            .unwrap_or_else(|err| panic!("checkpoint after kill {kill}: {err}"));
        let done_beyond: HashSet<u64> = recorded.done_beyond.iter().copied().collect();
        let is_recorded =
            |number: u64| number <= recorded.position.line() || done_beyond.contains(&number);
        let now = counts_by_line(&input, &output);
        let mut lost = 0;
        for (index, (&n, &m)) in now.iter().zip(&before).enumerate() {
            assert!(n <= m + 1, "run {kill} did line {} twice", index + 1);
            if n > m && !is_recorded(index as u64 + 1) {
                lost += 1;
            }
        }
        thrown_away.push(lost);
        before = now;
    }
    let last_run = spawn_self(torture.test_name, "torture", &env).wait_success(DEADLINE);
    let (done, micros) = last_run
        .reports(REPORT)
        .find_map(|report| {
            let (done, micros) = report.split_once(' ')?;
            Some((done.parse::<u64>().ok()?, micros.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("the final run reported nothing: {last_run:?}"));

    let counts = counts_by_line(&input, &output);
    let duplicates: u64 = counts.iter().map(|&n| u64::from(n.saturating_sub(1))).sum();
    // A kill throws away at most the lines in progress and the commits of
    // the last `write_delay`, at the rate the final, uninterrupted run kept,
    // and of as much longer as the scheduler kept the child's threads
    // waiting (its probe's worst lateness in that run).
    let lines_per_s = done as f64 * 1e6 / micros as f64;
    let lines_in = |span: Duration| (lines_per_s * span.as_secs_f64()).ceil() as usize;
    let bounds: Vec<usize> = late
        .iter()
        .map(|&late| torture.in_progress + lines_in(WRITE_DELAY + WRITER_WAKE_SLACK + late))
        .collect();
    eprintln!(
        "kill torture: {line_count} lines, {} lanes{}, a task of {} us ({}), \
         {} kills {}..={} ms after the start; final run: {done} lines in {} ms = \
         {lines_per_s:.0} lines/s",
        torture.lanes,
        if torture.asynchronous { " (async)" } else { "" },
        torture.task_time.as_micros(),
        if torture.sleeps {
            "a sleep"
        } else {
            "spinning"
        },
        torture.kills,
        torture.kill_after_ms.start(),
        torture.kill_after_ms.end(),
        micros / 1000,
    );
    eprintln!(
        "kill torture: {duplicates} lines done twice in all, {:.1} per kill, at most {} by one \
         kill; bound per kill: {} lines in progress + the commits of {} ({}) and of the \
         scheduler's lateness",
        duplicates as f64 / torture.kills as f64,
        thrown_away.iter().max().unwrap(),
        torture.in_progress,
        ms(WRITE_DELAY + WRITER_WAKE_SLACK),
        lines_in(WRITE_DELAY + WRITER_WAKE_SLACK),
    );
    eprintln!("kill torture: kill moments (ms): {kill_after:?}");
    eprintln!(
        "kill torture: worst lateness of a thread in each run (us): {:?}",
        late.iter().map(Duration::as_micros).collect::<Vec<_>>()
    );
    eprintln!("kill torture: lines thrown away by each kill: {thrown_away:?}");
    eprintln!("kill torture: bound of each kill: {bounds:?}");

    // At least once: nothing is lost.
    let missing: Vec<usize> = (1..=line_count).filter(|n| counts[n - 1] == 0).collect();
    assert!(missing.is_empty(), "lines never done: {missing:?}");
    // A line recorded in the checkpoint file is never done again: every
    // repeat is a line some kill threw away.
    assert_eq!(
        duplicates,
        thrown_away.iter().sum::<u64>(),
        "the repeats are not the lines the kills threw away"
    );
    for (kill, ((&lost, &bound), &after_ms)) in
        thrown_away.iter().zip(&bounds).zip(&kill_after).enumerate()
    {
        assert!(
            lost as usize <= bound,
            "kill {kill}, {after_ms} ms after the start, threw away {lost} lines (bound {bound})"
        );
    }
}

#[test]
fn sigkill_at_random_moments_repeats_only_lines_in_flight_and_one_write_delay() {
    if child_role().as_deref() == Some("torture") {
        return torture_child(&SLOW_TORTURE);
    }
    kill_torture(&SLOW_TORTURE);
}

#[test]
fn sigkill_at_random_moments_with_a_cheap_task_repeats_at_most_the_window_and_one_write_delay() {
    if child_role().as_deref() == Some("torture") {
        return torture_child(&CHEAP_TORTURE);
    }
    kill_torture(&CHEAP_TORTURE);
}

#[cfg(feature = "tokio")]
#[test]
fn sigkill_at_random_moments_of_an_async_run_repeats_only_lines_in_flight_and_one_write_delay() {
    if child_role().as_deref() == Some("torture") {
        return torture_child(&ASYNC_TORTURE);
    }
    kill_torture(&ASYNC_TORTURE);
}

/// The child's async run: each line awaits its timer, then is appended.
#[cfg(feature = "tokio")]
fn async_torture_run(torture: &Torture, output: &File) -> linemark::Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = Runner::new().concurrency(torture.lanes).run_async(
        env_path(INPUT_VAR),
        |line: linemark::OwnedLine| async move {
            tokio::time::sleep(torture.task_time).await;
            append(output, &line.as_line())?;
            Ok(())
        },
    );
    runtime.block_on(run).unwrap()
}

#[cfg(not(feature = "tokio"))]
fn async_torture_run(_torture: &Torture, _output: &File) -> linemark::Report {
    unreachable!("async tortures need the tokio feature")
}

// ---------------------------------------------------------------------------
// 4. A background write that fails
// ---------------------------------------------------------------------------

/// Fills the disk to the last byte and checks that nothing more fits.
fn fill(disk: &Path) -> PathBuf {
    let filler = disk.join("filler");
    let mut file = File::create(&filler).unwrap();
    let chunk = vec![0u8; 512];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::StorageFull => break,
            Err(err) => panic!("filling the disk: {err}"),
        }
    }
    let probe = disk.join("probe");
    let full = File::create(&probe).and_then(|mut f| f.write_all(b"x"));
    let _ = fs::remove_file(&probe);
    assert_eq!(
        full.map_err(|err| err.kind()),
        Err(ErrorKind::StorageFull),
        "the disk is not full"
    );
    filler
}

#[test]
fn a_background_write_that_fails_is_returned_by_the_next_call() {
    let _serial = serial();
    let Some(disk) = SmallDisk::mount(256 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let path = disk.path().join("job.checkpoint");
    let input = generated_lines(1_000);
    let positions = positions_after(&input);
    let raw = input.concat();
    let mut lines = LineReader::new(&raw[..]);
    // Only `write_delay` writes: the group is never due by itself, and the
    // file is never compacted.
    let mut checkpoint = Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::from_secs(3600)))
        .compact_at(1 << 30)
        .open(&path)
        .unwrap();

    // Sync one record at a time until the next one no longer fits in the
    // space the file already holds (records only grow longer, with the line
    // numbers and offsets): once the disk is full, the next append needs a
    // block there is none of.
    let mut synced = 0;
    let mut len = 0;
    loop {
        let line = lines.next_line().unwrap().unwrap();
        checkpoint.commit_line(&line).unwrap();
        checkpoint.sync().unwrap();
        synced += 1;
        let meta = fs::metadata(&path).unwrap();
        let record = meta.len() - len;
        len = meta.len();
        let room = meta.blocks() * 512 - len;
        // The first write also wrote the header.
        if synced > 1 && room < record {
            break;
        }
        assert!(synced < 900, "the file never filled its last block");
    }
    let durable = positions[synced];
    let filler = fill(disk.path());

    // Commits with nothing after them that writes.
    for _ in 0..5 {
        let line = lines.next_line().unwrap().unwrap();
        checkpoint.commit_line(&line).unwrap();
    }
    let committed = synced + 5;
    thread::sleep(WRITE_DELAY + SCHEDULING_MARGIN);

    let next = lines.next_line().unwrap().unwrap();
    match checkpoint.commit_line(&next) {
        Err(Error::Io {
            path: Some(named),
            source,
            ..
        }) if named == path && source.kind() == ErrorKind::StorageFull => {}
        other => panic!(
            "{} after commits on a full disk, the next call returned {other:?}, \
             not the storage-full error of the write",
            ms(WRITE_DELAY + SCHEDULING_MARGIN)
        ),
    }
    // Whether the call that returned the error kept its own commit is the
    // checkpoint's choice; what it holds now is what a sync must write.
    let kept = checkpoint.position();
    assert!(
        kept == positions[committed] || kept == positions[committed + 1],
        "{kept:?}"
    );

    // On disk: a position that was committed, never behind the synced one.
    let recorded = Checkpoint::inspect(&path).unwrap().position;
    let line = recorded.line() as usize;
    assert!(
        (synced..=committed + 1).contains(&line) && recorded == positions[line],
        "recorded {recorded:?}, synced {durable:?}, committed up to line {committed}"
    );

    // Once there is room again, one sync writes it all.
    fs::remove_file(filler).unwrap();
    checkpoint.sync().unwrap();
    drop(checkpoint);
    assert_eq!(Checkpoint::open(&path).unwrap().position(), kept);
    let mut names: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            OsStr::new("job.checkpoint"),
            OsStr::new("job.checkpoint.lock")
        ],
        "only the checkpoint and its lock"
    );
}

// ---------------------------------------------------------------------------
// 5. SIGKILL, then an edit of the finished part: the digest survived the kill
// ---------------------------------------------------------------------------

fn slow_child() {
    let output = open_output(&env_path(OUTPUT_VAR));
    let task = |line: &Line<'_>| -> io::Result<()> {
        thread::sleep(Duration::from_micros(300));
        append(&output, line)
    };
    Runner::new().run_task(env_path(INPUT_VAR), &task).unwrap();
}

/// The offset of the last `prefix` record in a checkpoint file, if any.
fn recorded_prefix(checkpoint: &Path) -> Option<u64> {
    let text = fs::read_to_string(checkpoint).ok()?;
    let record = text.lines().rfind(|record| record.starts_with("prefix "))?;
    record
        .strip_prefix("prefix offset=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn after_a_sigkill_an_edit_of_the_finished_lines_is_refused_and_without_it_the_job_completes() {
    const TEST_NAME: &str =
        "after_a_sigkill_an_edit_of_the_finished_lines_is_refused_and_without_it_the_job_completes";
    if child_role().as_deref() == Some("slow") {
        return slow_child();
    }
    let _serial = serial();
    let input = Input::generated(40_000);
    let output = input.sibling("output.txt");
    let checkpoint = input.sibling("input.txt.checkpoint");
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (OUTPUT_VAR, output.as_os_str()),
    ];
    let mut child = spawn_self(TEST_NAME, "slow", &env);
    // Killed once a prefix record covers line 2 and some lines after it.
    let line_3 = input.positions()[2].offset();
    wait_until("a prefix record past line 3", || {
        recorded_prefix(&checkpoint).is_some_and(|offset| offset > line_3)
    });
    assert_killed(&child.kill_and_wait());
    let finished = Checkpoint::inspect(&checkpoint).unwrap().position;
    assert!(finished.line() >= 3, "{finished:?}");

    // Line 2, finished, edited in place: same length, same line count.
    let original = fs::read(&input.path).unwrap();
    let mut edited = original.clone();
    let at = input.lines[0].len();
    edited[at] = if edited[at] == b'L' { b'M' } else { b'L' };
    fs::write(&input.path, &edited).unwrap();
    let err = Runner::new()
        .run_task(&input.path, &|_: &Line<'_>| -> io::Result<()> { Ok(()) })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InputChanged { found, .. } if found.contains("a finished line was edited")),
        "{err}"
    );

    // As it was: the job completes, every line done at least once.
    fs::write(&input.path, &original).unwrap();
    let out = open_output(&output);
    let report = Runner::new()
        .run_task(&input.path, &|line: &Line<'_>| append(&out, line))
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let counts = counts_by_line(&input, &output);
    assert!(counts.iter().all(|&n| n >= 1), "a line was never done");
}

#[test]
fn an_append_cut_short_by_a_kill_is_not_a_done_line_and_nothing_else_passes() {
    let input = Input::generated(20);
    let output = input.sibling("output.txt");
    let [one, two, three] = [&input.lines[0], &input.lines[1], &input.lines[2]];
    // Line 1 whole, a kill cutting line 2 short twice, then line 3 whole.
    let cut = |line: &[u8], len: usize| line[..len].to_vec();
    let mut bytes = one.clone();
    bytes.extend(cut(two, 9));
    bytes.extend(cut(two, 3));
    bytes.extend(three);
    fs::write(&output, &bytes).unwrap();
    let mut expected = vec![0; 20];
    expected[0] = 1;
    expected[2] = 1;
    assert_eq!(counts_by_line(&input, &output), expected);

    // Bytes that are no input line's start, before a whole line, are not
    // taken for a cut append.
    for bad in [&b"lime 000002"[..], b"line 000002 y", b"x"] {
        let mut bytes = bad.to_vec();
        bytes.extend(three);
        fs::write(&output, &bytes).unwrap();
        let counted = std::panic::catch_unwind(|| counts_by_line(&input, &output));
        assert!(
            counted.is_err(),
            "{:?} was taken",
            String::from_utf8_lossy(bad)
        );
    }
}
