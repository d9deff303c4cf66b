//! When commits reach the disk: [`Durability`].

use std::time::Duration;

/// When commits reach the disk.
///
/// Whatever the mode, the checkpoint file is always valid after a crash: at
/// worst it holds an older position, and the lines after it are done again
/// (at-least-once). The modes differ in how much a power loss can make the
/// job redo. What a kill of the process alone can make it redo is set by
/// the write delay ([`CheckpointBuilder::write_delay`](crate::CheckpointBuilder::write_delay), 10 ms by default):
/// every commit is in the file that long after it was made, in every mode.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use linemark::{Checkpoint, Durability};
///
/// let dir = tempfile::tempdir()?;
/// let checkpoint = Checkpoint::builder()
///     .durability(Durability::group(1_000, Duration::from_millis(50)))
///     .open(dir.path().join("job.checkpoint"))?;
/// assert_eq!(checkpoint.durability(), Durability::group(1_000, Duration::from_millis(50)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is written and `fdatasync`ed before the call returns. A
    /// crash redoes at most the lines that were in progress.
    EveryCommit,
    /// Group commit (the default): a commit is written to the file within
    /// the write delay and `fdatasync`ed at most `max_delay` after it was
    /// made, or as soon as `max_records` commits have gathered, whichever
    /// comes first, without any further call from the job. Only the newest
    /// position is written each time, so the cost grows with the number of
    /// writes and syncs, not of lines. A power loss redoes at most the lines
    /// of one group plus those in progress.
    ///
    /// The checkpoint's writer thread keeps the time limits: it wakes every
    /// half of the shorter of `max_delay` and the write delay (at least
    /// every millisecond), writes what was committed since, and syncs when
    /// the oldest unsynced commit it has seen is about to be `max_delay`
    /// old. The job's thread publishes each line it commits with plain
    /// stores (a sequence lock) and reads no clock; it writes and syncs
    /// itself only when `max_records` commits have gathered.
    #[non_exhaustive]
    Group {
        /// Commits per sync at most.
        max_records: u32,
        /// Time from a commit to its sync at most (plus up to a millisecond
        /// for the writer thread's wake-up), whatever the job does
        /// meanwhile. Zero syncs every commit, as
        /// [`EveryCommit`](Durability::EveryCommit).
        max_delay: Duration,
    },
    /// Records are written within the write delay but never explicitly
    /// synced (the operating system decides when they reach the disk), except
    /// by [`Checkpoint::sync`](crate::Checkpoint::sync), [`Checkpoint::close`](crate::Checkpoint::close) and compaction. After an
    /// OS crash or power loss any amount of progress may be redone; after a
    /// kill of the process alone, nothing written is lost. For throwaway
    /// jobs.
    NoSync,
}

impl Durability {
    /// The default group commit: 1,000,000 commits or 200 ms (for a fast job the
    /// delay decides; the count bounds what a crash can redo for a very fast one).
    pub const DEFAULT_GROUP: Durability = Durability::group(1_000_000, Duration::from_millis(200));

    /// Group commit with the given limits (a `max_records` of 0 counts as 1).
    #[must_use]
    pub const fn group(max_records: u32, max_delay: Duration) -> Durability {
        Durability::Group {
            max_records: if max_records == 0 { 1 } else { max_records },
            max_delay,
        }
    }

    pub(super) fn batch(&self) -> (u32, Duration) {
        match *self {
            Durability::EveryCommit => (1, Duration::ZERO),
            Durability::Group {
                max_records,
                max_delay,
            } => (max_records, max_delay),
            Durability::NoSync => match Durability::DEFAULT_GROUP {
                Durability::Group {
                    max_records,
                    max_delay,
                } => (max_records, max_delay),
                _ => (1, Duration::ZERO),
            },
        }
    }

    pub(super) fn syncs(&self) -> bool {
        !matches!(self, Durability::NoSync)
    }
}

impl Default for Durability {
    fn default() -> Durability {
        Durability::DEFAULT_GROUP
    }
}
