//! A checkpoint with an output on a disk that loses power at every step of
//! a job: after recovery the output holds exactly the results of the lines
//! the checkpoint records, once each, and every line a successful sync (or
//! an `EveryCommit` commit) promised is among them.

use std::path::Path;
use std::time::Duration;

use super::{AtCut, Rng, SimFs};
use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability, Output};
use crate::failed::FailedLine;
use crate::line::Line;

/// Small, so that the job compacts several times.
const COMPACT_AT: u64 = 1024;

/// The job's explicit `sync` calls are its only group syncs (see
/// `power_loss.rs`), so a cut at step K is the same crash each time.
const GROUP: Durability = Durability::group(u32::MAX, Duration::from_secs(3600));

/// A group commit job syncs after every this many lines.
const SYNC_EVERY: u64 = 7;

fn fails(line: u64) -> bool {
    line % 11 == 0
}

/// Results of varied lengths, so that cuts land anywhere.
fn result_of(line: u64) -> Vec<u8> {
    format!("r{line}{}\n", "-".repeat((line % 5) as usize)).into_bytes()
}

struct Job {
    lines: Vec<Vec<u8>>,
    offsets: Vec<u64>,
}

impl Job {
    fn new(count: u64) -> Job {
        let lines: Vec<Vec<u8>> = (1..=count)
            .map(|n| format!("line {n} {}\n", "x".repeat((n % 13) as usize)).into_bytes())
            .collect();
        let offsets = lines
            .iter()
            .scan(0u64, |offset, line| {
                let at = *offset;
                *offset += line.len() as u64;
                Some(at)
            })
            .collect();
        Job { lines, offsets }
    }

    fn count(&self) -> u64 {
        self.lines.len() as u64
    }

    fn line(&self, n: u64) -> Line<'_> {
        let index = (n - 1) as usize;
        Line::new(&self.lines[index], n, self.offsets[index])
    }

    /// What the output holds once lines `1..=position` are finished.
    fn expected(&self, position: u64) -> Vec<u8> {
        (1..=position)
            .filter(|&n| !fails(n))
            .flat_map(result_of)
            .collect()
    }
}

fn open(fs: &SimFs, dir: &Path, durability: Durability) -> crate::Result<(Checkpoint, Output)> {
    let mut checkpoint = CheckpointBuilder::new()
        .durability(durability)
        .compact_at(COMPACT_AT)
        .write_delay(Duration::from_secs(3600))
        .file_system(fs.handle())
        .open(dir.join("job.checkpoint"))?;
    let output = checkpoint.output(dir.join("out.txt"))?;
    Ok((checkpoint, output))
}

/// Runs the job until its first error; returns the last line an `Ok`
/// promised durable.
fn drive(fs: &SimFs, dir: &Path, job: &Job, durability: Durability) -> u64 {
    let Ok((mut checkpoint, mut output)) = open(fs, dir, durability) else {
        return 0;
    };
    let every_commit = durability == Durability::EveryCommit;
    let mut durable = 0;
    for n in 1..=job.count() {
        let line = job.line(n);
        let mut step = || -> crate::Result<()> {
            if fails(n) {
                checkpoint.commit_failed(FailedLine::new(&line, 1, "boom"))?;
            } else {
                output.append(&result_of(n))?;
            }
            checkpoint.commit_line(&line)?;
            if !every_commit && n % SYNC_EVERY == 0 {
                checkpoint.sync()?;
            }
            Ok(())
        };
        match step() {
            Ok(()) if every_commit || n % SYNC_EVERY == 0 => durable = n,
            Ok(()) => {}
            Err(_) => return durable,
        }
    }
    if checkpoint.close().is_ok() {
        durable = job.count();
    }
    durable
}

/// Opens the job on the disk after a power loss and checks the pair.
fn check_image(image: &SimFs, dir: &Path, job: &Job, durable: u64) -> Result<(), String> {
    let (checkpoint, output) =
        open(image, dir, Durability::NoSync).map_err(|err| format!("reopening: {err}"))?;
    let position = checkpoint.position().line();
    let failed_ok = (1..=position)
        .filter(|&n| fails(n))
        .all(|n| checkpoint.is_failed(n).unwrap());
    drop(output);
    drop(checkpoint);
    if position < durable {
        return Err(format!(
            "line {durable} was synced, the checkpoint is at {position}"
        ));
    }
    if !failed_ok {
        return Err(format!("a failed line up to {position} is not recorded"));
    }
    let found = image.contents(&dir.join("out.txt")).unwrap_or_default();
    let expected = job.expected(position);
    if found != expected {
        return Err(format!(
            "at line {position}, the output holds {} bytes, not the {} of the lines recorded: {:?}",
            found.len(),
            expected.len(),
            String::from_utf8_lossy(&found[found.len().saturating_sub(40)..])
        ));
    }
    Ok(())
}

/// The job's steps with the power never cut, after checking that such a
/// run keeps everything.
fn steps_of(job: &Job, dir: &Path, durability: Durability) -> u64 {
    let fs = SimFs::new();
    assert_eq!(drive(&fs, dir, job, durability), job.count());
    check_image(&fs.power_loss_dropping_unsynced(), dir, job, job.count()).unwrap();
    fs.steps()
}

/// Where tearing a write makes a difference: after each record or result
/// (`\n`) and one byte into the next.
fn tears(bytes: &[u8]) -> Vec<usize> {
    let mut tears = vec![1];
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        tears.extend([i + 1, i + 2]);
    }
    tears
}

/// Cuts the power at every step, the call at the cut lost or taking
/// effect (a write torn), and checks the disk with every unsynced change
/// dropped, torn at each record or result of each file, and two random
/// images.
fn sweep(durability: Durability, lines: u64) {
    // A real directory for the lock file; the files are the simulation's.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let job = Job::new(lines);
    let total = steps_of(&job, dir, durability);
    let mut checked = 0;
    for step in 1..=total {
        let keep = (step as usize * 7) % 40;
        for at_cut in [AtCut::Lost, AtCut::Applied { write_keeps: keep }] {
            let fs = SimFs::new();
            fs.cut_power_at(step, at_cut);
            let durable = drive(&fs, dir, &job, durability);
            assert!(fs.is_off(), "the job ended before step {step}");
            let mut images = vec![fs.power_loss_dropping_unsynced()];
            images.extend(fs.power_losses(tears));
            let mut rng = Rng::new(step);
            images.extend((0..2).map(|_| fs.power_loss(&mut rng)));
            checked += images.len();
            for (i, image) in images.iter().enumerate() {
                if let Err(err) = check_image(image, dir, &job, durable) {
                    panic!(
                        "{durability:?}, power cut at step {step} of {total} ({at_cut:?}), \
                         image {i}: {err}"
                    );
                }
            }
        }
    }
    // A sweep that cut nowhere would prove nothing.
    assert!(
        total > 50 && checked > 4 * total as usize,
        "{total} steps, {checked} images"
    );
}

#[test]
fn a_power_cut_at_any_step_leaves_the_output_and_checkpoint_in_step_every_commit() {
    sweep(Durability::EveryCommit, 40);
}

#[test]
fn a_power_cut_at_any_step_leaves_the_output_and_checkpoint_in_step_group_commit() {
    sweep(GROUP, 200);
}
