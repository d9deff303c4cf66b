//! The checkpoint on a disk that loses power at every step of a job: what
//! was durably committed survives, and nothing is recorded that was not
//! committed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::{AtCut, Rng, SimFs};
use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability};
use crate::failed::FailedLine;
use crate::line::Line;
use crate::position::{Position, digest};

/// Small, so that even the short job of the exhaustive sweeps compacts
/// several times.
const COMPACT_AT: u64 = 2048;

/// Lines in flight at once: how far out of order lines finish.
const WINDOW: u64 = 8;

/// A group that only the job's explicit `sync` calls write: with the
/// writer thread waking every half hour (and the write delay at an
/// hour), every run of the job makes the same calls at the same steps,
/// so a cut at step K is the same crash each time.
const GROUP: Durability = Durability::group(u32::MAX, Duration::from_secs(3600));

/// Replaces the base seed of the random cuts, to explore other cases or
/// replay a printed one.
const SEED_VAR: &str = "LINEMARK_SIM_SEED";

/// One call of the job on its checkpoint.
#[derive(Clone, Debug)]
enum Action {
    /// Everything up to this line is finished: `commit_line` for an
    /// even line, `commit` of its end for an odd one, so both paths
    /// (the line digested late, the position given whole) are cut.
    Reach(u64),
    /// `commit_done` of a line beyond the position.
    Done(u64),
    Failed(FailedLine),
    Resolved(u64),
    Sync,
}

/// A job over generated lines, as the list of calls it makes.
struct Job {
    /// Line `n` is `lines[n - 1]`.
    lines: Vec<Vec<u8>>,
    /// The position after line `n` is `ends[n]`.
    ends: Vec<Position>,
    actions: Vec<Action>,
}

impl Job {
    /// `count` lines finished out of order within a window, one in 20
    /// failing (some twice, replacing the record), failed lines
    /// resolved once the position has passed them, and with
    /// `syncs`, a `sync` after one call in 12 and at the end.
    fn new(seed: u64, count: u64, syncs: bool) -> Job {
        let mut rng = Rng::new(seed);
        let mut job = Job {
            lines: Vec::new(),
            ends: vec![Position::start()],
            actions: Vec::new(),
        };
        for n in 1..=count {
            let mut raw = format!("line {n} ").into_bytes();
            raw.extend((0..rng.below(60)).map(|i| b'a' + ((n + i) % 26) as u8));
            raw.extend_from_slice(if rng.one_in(5) { b"\r\n" } else { b"\n" });
            let end = job.ends[n as usize - 1].after(&raw);
            job.ends.push(end);
            job.lines.push(raw);
        }
        let mut reached = 0;
        let mut finished = BTreeSet::new();
        let mut unresolved = Vec::new();
        while reached < count {
            let window: Vec<u64> = (reached + 1..=(reached + WINDOW).min(count))
                .filter(|line| !finished.contains(line))
                .collect();
            let line = window[rng.below(window.len() as u64) as usize];
            if rng.one_in(20) {
                let attempts = 1 + rng.below(3) as u32;
                job.actions.push(Action::Failed(job.failed(line, attempts)));
                if rng.one_in(4) {
                    job.actions
                        .push(Action::Failed(job.failed(line, attempts + 1)));
                }
                unresolved.push(line);
            } else if line > reached + 1 {
                job.actions.push(Action::Done(line));
            }
            finished.insert(line);
            if line == reached + 1 {
                while finished.remove(&(reached + 1)) {
                    reached += 1;
                }
                job.actions.push(Action::Reach(reached));
            }
            if unresolved.first().is_some_and(|&first| first <= reached) && rng.one_in(6) {
                job.actions.push(Action::Resolved(unresolved.remove(0)));
            }
            if syncs && rng.one_in(12) {
                job.actions.push(Action::Sync);
            }
        }
        if syncs {
            job.actions.push(Action::Sync);
        }
        job
    }

    fn count(&self) -> u64 {
        self.lines.len() as u64
    }

    fn line(&self, n: u64) -> Line<'_> {
        let n = n as usize;
        Line::new(&self.lines[n - 1], n as u64, self.ends[n - 1].offset())
    }

    fn failed(&self, n: u64, attempts: u32) -> FailedLine {
        let line = self.line(n);
        let raw = line.raw();
        // Quotes, a newline and a non-ASCII character: the escapes of
        // the record are torn too.
        let error = format!("exit status {attempts}: \"{n}\"\n\u{2192} retry");
        FailedLine::from_parts(
            n,
            line.offset(),
            raw.len() as u64,
            digest(raw),
            attempts,
            error,
        )
    }

    /// The records `commit_failed` was called with for line `n` among
    /// the first `calls` calls, oldest first.
    fn failed_records(&self, n: u64, calls: usize) -> Vec<&FailedLine> {
        self.actions[..calls]
            .iter()
            .filter_map(|action| match action {
                Action::Failed(failed) if failed.line() == n => Some(failed),
                _ => None,
            })
            .collect()
    }
}

/// What a line is recorded as. A line only ever moves up this order in
/// the job (a failed line is resolved, never a finished one failed),
/// so a recovered status between the durable one and the newest one
/// committed is one the line really had (a failed one is also checked
/// to carry a record that was committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pending,
    Failed,
    Done,
}

/// The state the checkpoint should hold after some of the job's calls.
#[derive(Default)]
struct Model {
    reached: u64,
    done: BTreeSet<u64>,
    failed: BTreeMap<u64, FailedLine>,
}

impl Model {
    fn after(actions: &[Action]) -> Model {
        let mut model = Model::default();
        for action in actions {
            match action {
                Action::Reach(line) => {
                    model.reached = *line;
                    model.done.retain(|&done| done > *line);
                }
                Action::Done(line) if *line > model.reached => {
                    model.done.insert(*line);
                }
                Action::Failed(failed) => {
                    model.failed.insert(failed.line(), failed.clone());
                }
                Action::Resolved(line) => {
                    model.failed.remove(line);
                }
                Action::Done(_) | Action::Sync => {}
            }
        }
        model
    }

    fn status(&self, line: u64) -> Status {
        if self.failed.contains_key(&line) {
            Status::Failed
        } else if line <= self.reached || self.done.contains(&line) {
            Status::Done
        } else {
            Status::Pending
        }
    }
}

/// How far a run of the job got before the power went.
struct Run {
    /// Calls made (the last may have failed).
    calls: usize,
    /// Calls whose effect the checkpoint promised durable by an `Ok`.
    durable: usize,
}

/// What a checkpoint recovered after a run may hold: at least what was
/// durable, at most what was committed.
struct Bounds {
    durable: Model,
    newest: Model,
    calls: usize,
}

impl Bounds {
    fn of(job: &Job, run: &Run) -> Bounds {
        Bounds {
            durable: Model::after(&job.actions[..run.durable]),
            newest: Model::after(&job.actions[..run.calls]),
            calls: run.calls,
        }
    }
}

fn open(fs: &SimFs, path: &Path, durability: Durability) -> crate::Result<Checkpoint> {
    CheckpointBuilder::new()
        .durability(durability)
        .compact_at(COMPACT_AT)
        .write_delay(Duration::from_secs(3600))
        .file_system(fs.handle())
        .open(path)
}

/// Runs the job until its first error, counting what an `Ok` promised
/// durable: with `EveryCommit` each commit, otherwise everything before
/// an explicit `sync`.
fn drive(fs: &SimFs, path: &Path, job: &Job, durability: Durability) -> Run {
    let mut run = Run {
        calls: 0,
        durable: 0,
    };
    let Ok(mut checkpoint) = open(fs, path, durability) else {
        return run;
    };
    let every_commit = durability == Durability::EveryCommit;
    for (i, action) in job.actions.iter().enumerate() {
        run.calls = i + 1;
        let result = match action {
            Action::Reach(n) if n % 2 == 0 => checkpoint.commit_line(&job.line(*n)),
            Action::Reach(n) => checkpoint.commit(job.ends[*n as usize]),
            Action::Done(n) => checkpoint.commit_done(job.ends[*n as usize]),
            Action::Failed(failed) => checkpoint.commit_failed(failed.clone()),
            Action::Resolved(n) => checkpoint.commit_resolved(*n),
            Action::Sync => checkpoint.sync(),
        };
        match result {
            Ok(()) if every_commit || matches!(action, Action::Sync) => run.durable = i + 1,
            Ok(()) => {}
            Err(_) => {
                // The power stays off, so a sync now cannot succeed;
                // if it says it did, the check finds what it lost.
                if checkpoint.sync().is_ok() {
                    run.durable = run.calls;
                }
                return run;
            }
        }
    }
    if checkpoint.close().is_ok() {
        run.durable = run.calls;
    }
    run
}

/// Checks a checkpoint recovered after `run` against the job.
fn check(job: &Job, recovered: &Checkpoint, bounds: &Bounds) -> Result<(), String> {
    let Bounds {
        durable,
        newest,
        calls,
    } = bounds;
    let position = recovered.position();
    let at = position.line();
    if job.ends.get(at as usize) != Some(&position) {
        return Err(format!("position {position:?} is none the job committed"));
    }
    if at < durable.reached {
        return Err(format!(
            "position at line {at}, behind line {} durably committed",
            durable.reached
        ));
    }
    if at > newest.reached {
        return Err(format!(
            "position at line {at}, beyond line {} committed last",
            newest.reached
        ));
    }
    let failed: BTreeMap<u64, FailedLine> = recovered
        .failed()
        .unwrap()
        .map(Result::unwrap)
        .map(|failed| (failed.line(), failed))
        .collect();
    // A line up to the durable position that is failed nowhere is done
    // in both models and, by the checks above, in the checkpoint; the
    // other lines that can differ are these.
    let mut lines: BTreeSet<u64> = (durable.reached + 1..=newest.reached).collect();
    lines.extend(durable.done.iter().chain(&newest.done));
    lines.extend(recovered.done_beyond());
    lines.extend(
        failed
            .keys()
            .chain(durable.failed.keys())
            .chain(newest.failed.keys()),
    );
    for n in lines {
        let found = if failed.contains_key(&n) {
            Status::Failed
        } else if recovered.is_done(n).unwrap() {
            Status::Done
        } else {
            Status::Pending
        };
        let (least, most) = (durable.status(n), newest.status(n));
        if found < least {
            return Err(format!(
                "line {n} is {found:?}, durably committed as {least:?}"
            ));
        }
        if found > most {
            return Err(format!(
                "line {n} is {found:?}, only ever committed as {most:?}"
            ));
        }
        if let Some(record) = failed.get(&n) {
            let records = job.failed_records(n, *calls);
            let Some(which) = records.iter().position(|r| *r == record) else {
                return Err(format!(
                    "line {n}: failed record never committed: {record:?}"
                ));
            };
            let durable_which = durable
                .failed
                .get(&n)
                .and_then(|d| records.iter().position(|r| *r == d));
            if durable_which.is_some_and(|d| which < d) {
                return Err(format!(
                    "line {n}: a failed record older than the durable one"
                ));
            }
        }
        if found != Status::Pending && n > at {
            // A record beyond the position names its line by offset,
            // length and digest; a wrong one would skip another line.
            match recovered.is_recorded(&job.line(n)) {
                Ok(true) => {}
                other => return Err(format!("line {n} is {found:?} but {other:?}")),
            }
        }
    }
    Ok(())
}

/// Reopens the checkpoint on a disk image left by `run` and checks it,
/// then checks that the recovered file takes a new commit (cutting a
/// torn end first) and reads back with it.
fn check_image(image: &SimFs, path: &Path, job: &Job, bounds: &Bounds) -> Result<(), String> {
    caught(|| check_recovery(image, path, job, bounds))
}

fn check_recovery(image: &SimFs, path: &Path, job: &Job, bounds: &Bounds) -> Result<(), String> {
    let mut recovered = open(image, path, Durability::EveryCommit)
        .map_err(|err| format!("reopening failed: {err}"))?;
    check(job, &recovered, bounds).map_err(|err| {
        let text = image.contents(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let mut log = path.as_os_str().to_owned();
        log.push(".failures");
        let log = image.contents(Path::new(&log)).unwrap_or_default();
        format!(
            "{err}\nthe end of the file recovered from:\n{}\nits failure log:\n{}",
            tail.join("\n"),
            String::from_utf8_lossy(&log)
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let leftovers: Vec<_> = image
        .names(dir)
        .into_iter()
        .filter(|name| Some(name.as_os_str()) != path.file_name())
        // The failure log: recorded, or left by a crash before the write
        // that would have recorded it (emptied when it is made again).
        .filter(|name| !name.to_string_lossy().contains(".failures"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("files left after reopening: {leftovers:?}"));
    }
    let failed: Vec<FailedLine> = recovered.failed().unwrap().map(Result::unwrap).collect();
    let next = job.ends[(recovered.position().line() + 1).min(job.count()) as usize];
    let done: Vec<u64> = recovered
        .done_beyond()
        .filter(|&n| n > next.line())
        .collect();
    recovered
        .commit(next)
        .and_then(|()| recovered.close())
        .map_err(|err| format!("committing after recovery failed: {err}"))?;
    let again = open(image, path, Durability::EveryCommit)
        .map_err(|err| format!("reopening after a commit failed: {err}"))?;
    let found = (
        again.position(),
        again.done_beyond().collect::<Vec<_>>(),
        again
            .failed()
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    );
    if found != (next, done.clone(), failed.clone()) {
        return Err(format!(
            "after a commit of {next:?} on the recovered file, read back {found:?}, \
             expected done {done:?} and failed {failed:?}"
        ));
    }
    Ok(())
}

/// Runs `case`, turning a panic (the checkpoint's, or a broken
/// invariant's) into an error, so that the report names the case.
fn caught<T>(case: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(case)).unwrap_or_else(|panic| {
        let message = match panic.downcast::<String>() {
            Ok(message) => *message,
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map_or_else(String::new, |message| (*message).to_string()),
        };
        Err(format!("panicked: {message}"))
    })
}

/// Steps the whole job takes with the power never cut, after checking
/// that such a run keeps everything.
fn steps_of(job: &Job, path: &Path, durability: Durability) -> u64 {
    let fs = SimFs::new();
    let run = drive(&fs, path, job, durability);
    assert_eq!(
        (run.calls, run.durable),
        (job.actions.len(), job.actions.len())
    );
    check_image(
        &fs.power_loss_dropping_unsynced(),
        path,
        job,
        &Bounds::of(job, &run),
    )
    .unwrap();
    fs.steps()
}

/// Where tearing a write of records makes a difference: after each
/// record (the next one lost whole) and one byte into it (the next
/// one torn, which the next write must cut off).
fn record_tears(bytes: &[u8]) -> Vec<usize> {
    let mut tears = vec![1];
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        tears.extend([i + 1, i + 2]);
    }
    tears
}

/// Runs the job with the power cut at `step`, then checks the disk with
/// every unsynced change dropped, torn at each record of the one file
/// with unsynced writes, and `images` random images of it.
fn cut_and_check(
    job: &Job,
    path: &Path,
    durability: Durability,
    step: u64,
    at_cut: AtCut,
    images: u32,
    seed: u64,
) -> Result<(), String> {
    let fs = SimFs::new();
    fs.cut_power_at(step, at_cut);
    let run = caught(|| Ok(drive(&fs, path, job, durability)))?;
    if !fs.is_off() {
        return Err("the job ended before the cut: its steps changed between runs".into());
    }
    let bounds = Bounds::of(job, &run);
    check_image(&fs.power_loss_dropping_unsynced(), path, job, &bounds)
        .map_err(|err| format!("all unsynced dropped: {err}"))?;
    for (i, image) in fs.power_losses(record_tears).iter().enumerate() {
        check_image(image, path, job, &bounds)
            .map_err(|err| format!("image {i} of those torn at records: {err}"))?;
    }
    let mut rng = Rng::new(seed);
    for image in 0..images {
        check_image(&fs.power_loss(&mut rng), path, job, &bounds)
            .map_err(|err| format!("random image {image}: {err}"))?;
    }
    Ok(())
}

/// Cuts the power at every step of a short job, once with the call at
/// the cut lost and once with it taking effect (a write torn), and
/// checks every image torn at a record and two random ones.
fn sweep(durability: Durability, lines: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let job = Job::new(1, lines, durability != Durability::EveryCommit);
    let total = steps_of(&job, &path, durability);
    for step in 1..=total {
        let keep = (step as usize * 7) % 90;
        for at_cut in [AtCut::Lost, AtCut::Applied { write_keeps: keep }] {
            if let Err(err) = cut_and_check(&job, &path, durability, step, at_cut, 2, step) {
                panic!("{durability:?}, power cut at step {step} of {total} ({at_cut:?}): {err}");
            }
        }
    }
}

#[test]
fn a_power_cut_at_any_step_of_an_every_commit_job_loses_nothing_committed() {
    sweep(Durability::EveryCommit, 120);
}

#[test]
fn a_power_cut_at_any_step_of_a_group_commit_job_loses_nothing_synced() {
    sweep(GROUP, 600);
}

#[test]
fn power_cuts_at_random_steps_with_torn_writes_keep_the_guarantee() {
    let base = std::env::var(SEED_VAR)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_1ead);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    for durability in [Durability::EveryCommit, GROUP] {
        let job = Job::new(base, 1500, durability != Durability::EveryCommit);
        let total = steps_of(&job, &path, durability);
        let mut seeds = Rng::new(base);
        for case in 0..100 {
            let seed = seeds.next_u64();
            let mut rng = Rng::new(seed);
            let step = 1 + rng.below(total);
            let at_cut = if rng.one_in(2) {
                AtCut::Lost
            } else {
                AtCut::Applied {
                    write_keeps: rng.below(120) as usize,
                }
            };
            if let Err(err) = cut_and_check(&job, &path, durability, step, at_cut, 4, seed) {
                panic!(
                    "{SEED_VAR}={base}, {durability:?}, case {case} (seed {seed}): power cut \
                     at step {step} of {total} ({at_cut:?}): {err}"
                );
            }
        }
    }
}
