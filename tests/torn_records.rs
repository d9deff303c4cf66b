//! Records of failed, done and resolved lines torn off at every byte, and
//! positions moved back over them: each test once a bug found by review,
//! failing before its fix, and an explorer of random histories cut at every
//! byte of every write (ignored: `cargo test --test torn_records --
//! --ignored`, seeds from `FROM`, `COUNT` of them).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{generated_lines, positions_after, serial};
use linemark::{Checkpoint, Durability, FailedLine, Line, Position};

/// Only explicit `sync` calls write: the writer thread wakes every half
/// hour.
fn open(path: &Path) -> Checkpoint {
    Checkpoint::builder()
        .durability(Durability::group(1_000_000, Duration::from_secs(3600)))
        .write_delay(Duration::from_secs(3600))
        .compact_at(u64::MAX)
        .open(path)
        .unwrap()
}

struct Job {
    lines: Vec<Vec<u8>>,
    pos: Vec<Position>,
}

impl Job {
    fn new() -> Job {
        let lines = generated_lines(12);
        let pos = positions_after(&lines);
        Job { lines, pos }
    }

    fn line(&self, n: usize) -> Line<'_> {
        Line::new(&self.lines[n - 1], n as u64, self.pos[n - 1].offset())
    }

    fn failed(&self, n: usize, error: &str) -> FailedLine {
        FailedLine::new(&self.line(n), 1, error)
    }
}

fn listed_failed(checkpoint: &Checkpoint) -> Vec<u64> {
    checkpoint
        .failed()
        .unwrap()
        .map(|failed| failed.unwrap().line())
        .collect()
}

/// Writes, with no output and no failure log (so records apply one by
/// one, not in groups): `commit(pos 5)`, `sync`; then `commit_line(line
/// 2)` (behind the last committed line: `commit`'s slow path, the
/// position moved back), `commit_failed(line 3)` (beyond the position
/// now), `sync`. The second append is `failed line=3 …` then `pos line=2
/// …` (`Pending::encode` puts failures before the position). Returns the
/// directory and the path of a copy of the file cut 3 bytes into that
/// `pos` record: a power cut during the second append.
fn torn_before_the_position_moved_back(job: &Job) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let first_len;
    {
        let mut checkpoint = open(&path);
        checkpoint.commit(job.pos[5]).unwrap();
        checkpoint.sync().unwrap();
        first_len = fs::metadata(&path).unwrap().len() as usize;
        checkpoint.commit_line(&job.line(2)).unwrap();
        checkpoint.commit_failed(job.failed(3, "boom")).unwrap();
        checkpoint.sync().unwrap();
        checkpoint.close().unwrap();
    }
    let full = fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&full[first_len..]).into_owned();
    let records: Vec<&str> = text.lines().collect();
    assert_eq!(records.len(), 2, "{text}");
    assert!(records[0].starts_with("failed line=3 "), "{text}");
    assert!(records[1].starts_with("pos offset="), "{text}");
    let cut = first_len + records[0].len() + 1 + 3;
    let torn = dir.path().join("torn.checkpoint");
    fs::write(&torn, &full[..cut]).unwrap();
    (dir, torn)
}

/// Sequence: see `torn_before_the_position_moved_back` (`commit(5)`,
/// `sync`, `commit_line(2)` moving the position back, `commit_failed(3)`,
/// power cut after the `failed line=3` record, before `pos line=2`).
///
/// The recovered file reads `pos line=5`, `failed line=3`: no prefix of
/// the commits produced exactly that, but "position 5, line 3 failed" is
/// a safe approximation (the failure is kept, nothing unfinished is
/// skipped), as long as it is represented consistently.
///
/// Observed: `State::apply(Record::Failed)` puts line 3 in `state.failed`
/// although the position in force (5) covers it, and `State::loaded`
/// leaves it there for a version-5 file. So `failed()` lists line 3
/// while `is_failed(3)` is false and `is_done(3)` is true (for a line
/// behind the position they look in `passed` and the failure log only);
/// a retry that succeeds calls `commit_resolved(3)`, which finds the line
/// neither beyond the position, nor in `passed`, nor in a log, and does
/// nothing; the next commit moves line 3 from `state.failed` to a new
/// failure log, and it is listed failed for good although its resolution
/// was committed and synced.
///
/// Expected: line 3 failed behind the position (in `passed`, as a file of
/// version 4 loads it): `is_failed(3)` true, `is_done(3)` false, and
/// `commit_resolved(3)` resolves it durably.
///
/// Cause: a `failed` record written before a `pos` that moves the
/// position back applies under the older position when the append is
/// torn between them (no groups without a log or output to make the
/// two atomic). Fix: in `State::loaded`, for every version, move the
/// failed lines at or behind the position to `passed` (a version-5 `pos`
/// record in a group has already dropped those the log holds, so only
/// such a torn end leaves any); or have `State::apply(Record::Failed)`
/// put a line the position in force covers in `passed`.
#[test]
fn a_failed_record_torn_off_before_a_position_moved_back_can_still_be_resolved() {
    let _serial = serial();
    let job = Job::new();
    let (_dir, torn) = torn_before_the_position_moved_back(&job);
    let mut reopened = open(&torn);
    assert_eq!(reopened.position(), job.pos[5]);
    assert_eq!(listed_failed(&reopened), vec![3]);
    let asked = (reopened.is_failed(3).unwrap(), reopened.is_done(3).unwrap());
    // A retry of line 3 succeeds.
    reopened.commit_resolved(3).unwrap();
    reopened.commit(job.pos[6]).unwrap();
    reopened.close().unwrap();
    let again = open(&torn);
    assert_eq!(
        (listed_failed(&again), again.failed_count()),
        (Vec::<u64>::new(), 0),
        "line 3 resolved and synced, still listed failed"
    );
    assert_eq!(
        asked,
        (true, false),
        "(is_failed(3), is_done(3)) after the cut, with failed() listing line 3"
    );
}

/// Sequence: as `a_failed_record_torn_off_before_a_position_moved_back_can_still_be_resolved`
/// (power cut after `failed line=3`, before `pos line=2`), then, reopened,
/// a retry of line 3 fails again: `commit_failed(3)`, `commit(pos 6)`,
/// `close`.
///
/// Observed: line 3 is listed twice and counted twice (`failed_count` 2):
/// `commit_failed` of a line behind the position looks only in `passed`
/// and the log, finds nothing, and adds a second entry to `passed`, next
/// to the one in `state.failed`; the next write moves both to the log.
///
/// Expected: one failed line 3, with the newest record (attempts 2).
///
/// Cause and fix: as in the test above (the loaded state holds a failed
/// line behind the position outside `passed`).
#[test]
fn a_failed_record_torn_off_before_a_position_moved_back_is_not_listed_twice_when_it_fails_again() {
    let _serial = serial();
    let job = Job::new();
    let (_dir, torn) = torn_before_the_position_moved_back(&job);
    let mut reopened = open(&torn);
    assert_eq!(listed_failed(&reopened), vec![3]);
    reopened
        .commit_failed(FailedLine::new(&job.line(3), 2, "boom again"))
        .unwrap();
    reopened.commit(job.pos[6]).unwrap();
    reopened.close().unwrap();
    let again = open(&torn);
    let failed: Vec<(u64, u32)> = again
        .failed()
        .unwrap()
        .map(|f| f.map(|f| (f.line(), f.attempts())).unwrap())
        .collect();
    assert_eq!((failed, again.failed_count()), (vec![(3, 2)], 1));
}

/// Sequence (no crash needed; no output, no failure log):
/// `commit_failed(line 6)` (beyond the start), `sync` (the file holds
/// `failed line=6`); then `commit_resolved(6)` (beyond the position: now
/// a `done` record only, no `resolved` record), `commit(pos 7)` (covers
/// line 6: its `done` entry is dropped with the others the position
/// passes), `commit(pos 2)` (moved back), `close`. The variant with
/// `commit_done(6)` in place of `commit_resolved(6)` (which now also
/// removes the failed entry in memory) behaves the same.
///
/// Observed: the last write appends `pos line=2` alone: the `done line=6`
/// record is skipped (`Pending::encode` writes a done line only if
/// `state.done` still holds it), no `resolved` record was queued, and the
/// `pos line=7` that covered line 6 was never written. Reopened, the
/// `failed line=6` record of the first write is in force again beyond
/// position 2: line 6 is listed failed, although its last outcome was a
/// success, committed and synced (the checkpoint in memory did not list it
/// before `close`).
///
/// Expected: line 6 not failed (pending or done beyond the position).
///
/// Cause: the change that records a resolution beyond the position as a
/// `done` record only (and makes `commit_done` drop the failed entry)
/// relies on that `done` record reaching the file; a position that passes
/// the line and is moved back before the next write drops it, and nothing
/// else supersedes the `failed` record in the file. Fix: when
/// `commit_resolved`, `commit_done` or `commit_done_lines` remove a failed
/// entry beyond the position, also queue `Record::Resolved { line }` in
/// `pending.failed` (net per line, written after the position, it
/// supersedes the old record whatever the position does; a torn write
/// between `done` and `resolved` is harmless since `done` also removes
/// the failure); or keep the set of such lines in `State` until a write.
#[test]
fn a_line_resolved_beyond_the_position_stays_resolved_when_the_position_passes_it_and_moves_back() {
    let _serial = serial();
    let job = Job::new();
    for via_done in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.checkpoint");
        {
            let mut checkpoint = open(&path);
            checkpoint.commit_failed(job.failed(6, "boom")).unwrap();
            checkpoint.sync().unwrap();
            if via_done {
                checkpoint.commit_done(job.pos[6]).unwrap();
            } else {
                checkpoint.commit_resolved(6).unwrap();
            }
            checkpoint.commit(job.pos[7]).unwrap();
            checkpoint.commit(job.pos[2]).unwrap();
            assert_eq!(listed_failed(&checkpoint), Vec::<u64>::new());
            checkpoint.close().unwrap();
        }
        let reopened = open(&path);
        assert_eq!(reopened.position(), job.pos[2]);
        assert_eq!(
            (listed_failed(&reopened), reopened.failed_count()),
            (Vec::<u64>::new(), 0),
            "via_done={via_done}: line 6 resolved, synced and closed; the file:\n{}",
            fs::read_to_string(&path).unwrap()
        );
    }
}

// ---- Exploration: random histories, cut at every byte of every append ----

#[derive(Clone, Debug)]
enum Op {
    Commit(usize),
    CommitLine(usize),
    Done(usize),
    Failed(usize, u32),
    Resolved(usize),
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pending,
    Failed(u32),
    Done,
}

#[derive(Clone, Default, Debug)]
struct Model {
    pos: usize,
    done: std::collections::BTreeSet<usize>,
    failed: std::collections::BTreeMap<usize, u32>,
    /// Lines ever committed as finished (done, resolved beyond, covered).
    ever_done: std::collections::BTreeSet<usize>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Commit(n) | Op::CommitLine(n) => {
                for line in 1..=n {
                    if !self.failed.contains_key(&line) {
                        self.ever_done.insert(line);
                    }
                }
                self.pos = n;
                self.done.retain(|&d| d > n);
            }
            Op::Done(n) => {
                if n > self.pos {
                    self.done.insert(n);
                    self.failed.remove(&n);
                    self.ever_done.insert(n);
                }
            }
            Op::Failed(n, a) => {
                self.failed.insert(n, a);
                if n > self.pos {
                    self.done.remove(&n);
                }
            }
            Op::Resolved(n) => {
                if self.failed.remove(&n).is_some() && n > self.pos {
                    self.done.insert(n);
                    self.ever_done.insert(n);
                }
            }
            Op::Sync => {}
        }
    }

    fn status(&self, n: usize) -> Status {
        if let Some(&a) = self.failed.get(&n) {
            Status::Failed(a)
        } else if n <= self.pos || self.done.contains(&n) {
            Status::Done
        } else {
            Status::Pending
        }
    }
}

const LINES: usize = 8;

fn random_ops(rng: &mut common::SplitMix64, count: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut attempt = 0;
    for _ in 0..count {
        let n = rng.in_range(&(1..=LINES as u64)) as usize;
        let op = match rng.next() % 12 {
            0..=1 => Op::Commit(rng.in_range(&(0..=LINES as u64)) as usize),
            2..=3 => Op::CommitLine(n),
            4..=5 => Op::Done(n),
            6..=7 => {
                attempt += 1;
                Op::Failed(n, attempt)
            }
            8..=9 => Op::Resolved(n),
            _ => Op::Sync,
        };
        ops.push(op);
    }
    ops.push(Op::Sync);
    ops
}

fn run_op(job: &Job, checkpoint: &mut Checkpoint, op: &Op) {
    match *op {
        Op::Commit(n) => checkpoint.commit(job.pos[n]).unwrap(),
        Op::CommitLine(n) => checkpoint.commit_line(&job.line(n)).unwrap(),
        Op::Done(n) => checkpoint.commit_done(job.pos[n]).unwrap(),
        Op::Failed(n, a) => checkpoint
            .commit_failed(FailedLine::new(&job.line(n), a, format!("a{a}")))
            .unwrap(),
        Op::Resolved(n) => checkpoint.commit_resolved(n as u64).unwrap(),
        Op::Sync => checkpoint.sync().unwrap(),
    }
}

/// Checks the checkpoint at `path` against the models after `lo..=hi`
/// operations.
fn check_cut(job: &Job, path: &Path, models: &[Model]) -> Result<(), String> {
    let checkpoint = open(path);
    let pos = checkpoint.position();
    let at = pos.line() as usize;
    if job.pos[at] != pos {
        return Err(format!("position {pos:?} never committed"));
    }
    if !models.iter().any(|m| m.pos == at) {
        return Err(format!("position {at} none of the prefixes had"));
    }
    let failed: Vec<FailedLine> = checkpoint.failed().unwrap().map(Result::unwrap).collect();
    let mut lines: Vec<u64> = failed.iter().map(FailedLine::line).collect();
    lines.sort();
    lines.dedup();
    if lines.len() != failed.len() || checkpoint.failed_count() != failed.len() as u64 {
        return Err(format!(
            "failed listed {failed:?}, count {}",
            checkpoint.failed_count()
        ));
    }
    for n in 1..=LINES {
        let is_failed = checkpoint.is_failed(n as u64).unwrap();
        let listed = failed.iter().find(|f| f.line() == n as u64);
        if is_failed != listed.is_some() && std::env::var("SKIP1").is_err() {
            return Err(format!(
                "line {n}: is_failed {is_failed}, listed {listed:?}"
            ));
        }
        let found = match listed {
            Some(f) => Status::Failed(f.attempts()),
            None if checkpoint.is_done(n as u64).unwrap() => Status::Done,
            None => Status::Pending,
        };
        let redo_spared = found == Status::Done
            && models
                .iter()
                .any(|m| m.status(n) == Status::Pending && m.ever_done.contains(&n));
        if !redo_spared && !models.iter().any(|m| m.status(n) == found) {
            let statuses: Vec<Status> = models.iter().map(|m| m.status(n)).collect();
            return Err(format!(
                "line {n} is {found:?}, the prefixes had {statuses:?}"
            ));
        }
    }
    Ok(())
}

fn explore(seed: u64) -> Result<(), String> {
    let job = Job::new();
    let mut rng = common::SplitMix64(seed);
    let ops = random_ops(&mut rng, 14);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.checkpoint");
    let mut models = vec![Model::default()];
    // (ops done, file bytes, failure logs) after each sync.
    type Logs = Vec<(std::ffi::OsString, Vec<u8>)>;
    let logs_of = |dir: &Path| -> Logs {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().contains(".failures"))
            .map(|e| (e.file_name(), fs::read(e.path()).unwrap()))
            .collect()
    };
    let mut synced: Vec<(usize, Vec<u8>, Logs)> = vec![(0, Vec::new(), Vec::new())];
    {
        let mut checkpoint = open(&path);
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            run_op(&job, &mut checkpoint, op);
            model.apply(op);
            models.push(model.clone());
            if matches!(op, Op::Sync) {
                synced.push((
                    i + 1,
                    fs::read(&path).unwrap_or_default(),
                    logs_of(dir.path()),
                ));
            }
        }
        drop(checkpoint);
    }
    for pair in synced.windows(2) {
        let ((lo, before, _), (hi, after, logs)) = (&pair[0], &pair[1]);
        let appended = after.starts_with(before);
        let cuts: Vec<usize> = if appended {
            (before.len()..=after.len()).collect()
        } else {
            // A rewrite: atomic, either file.
            vec![after.len()]
        };
        for cut in cuts {
            let cut_dir = tempfile::tempdir().unwrap();
            let torn = cut_dir.path().join("job.checkpoint");
            fs::write(&torn, &after[..cut]).unwrap();
            for (name, bytes) in logs {
                fs::write(cut_dir.path().join(name), bytes).unwrap();
            }
            let (lo_k, hi_k) = if cut == after.len() {
                (*hi, *hi)
            } else {
                (*lo, *hi)
            };
            check_cut(&job, &torn, &models[lo_k..=hi_k]).map_err(|err| {
                format!(
                    "seed {seed}: ops {:?}\ncut at {cut} of {} (ops {lo_k}..={hi_k}): {err}\nfile:\n{}",
                    ops,
                    after.len(),
                    String::from_utf8_lossy(&after[..cut])
                )
            })?;
        }
    }
    Ok(())
}

/// Not a regression test: an explorer, run by hand
/// (`cargo test --test torn_records_review explore -- --ignored`, with
/// `FROM`/`COUNT` for the seeds and `SKIP1=1` to skip the `is_failed`
/// consistency check the first two tests above fail). Random histories of
/// 14 calls over 8 lines (`commit` and `commit_line` forward and back,
/// `commit_done`, `commit_failed` beyond and behind, `commit_resolved`,
/// `sync`), group durability, no outputs; every append is cut at every
/// byte (the failure log as of the write's end) and the reopened state is
/// checked line by line against the models of the calls between the last
/// complete write and the torn one. A line found done that a prefix has
/// pending but that was committed finished before is accepted (a moved-
/// back position whose intermediate position was never written keeps a
/// finished line's `done` record: no redo, harmless). Seeds 0..800 found
/// only the bugs of the tests above, and one acceptable approximation
/// (seed 354: a line failed then done beyond a position moved back, the
/// write torn between `pos` and `done`, comes back pending).
#[test]
#[ignore]
fn explore_random_histories() {
    let from: u64 = std::env::var("FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let count: u64 = std::env::var("COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut failures = Vec::new();
    for seed in from..from + count {
        if let Err(err) = std::panic::catch_unwind(|| explore(seed))
            .unwrap_or_else(|_| Err(format!("seed {seed}: panicked")))
        {
            failures.push(err);
        }
    }
    for f in failures.iter().take(5) {
        eprintln!("{f}\n-----");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}
