//! The checkpoint file: an append-and-fsync log of progress records,
//! written by a writer thread within a bounded delay, recovered on open and
//! compacted by atomic rewrite.

mod attach;
mod builder;
mod durability;
mod faillog;
mod failures;
mod file;
mod format;
mod fs;
mod output;
mod prefix;
mod slot;
mod writer;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use builder::BeforeWrite;
pub use builder::CheckpointBuilder;
pub use durability::Durability;
pub use faillog::FailedLines;
pub use output::Output;
pub(crate) use output::{Identity, identity};

use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::line::Line;
use crate::position::Position;
use format::{Record, load};
use fs::RealFs;
use output::OutputShared;
use prefix::{Catch, PrefixReader};
use slot::{SlotWriter, WANT_FOLD};
use writer::{Background, Core, Inner, ReadBack, Request, Schedule};

/// A job's progress, kept in a small append-only file that survives crashes.
///
/// A checkpoint records "everything before this [`Position`] of the input is
/// finished", plus, for jobs whose lines finish out of order, the lines
/// finished beyond that position, and the lines that failed for good. On the
/// next run, [`position`](Checkpoint::position) tells where to seek the input
/// (see [`Position::seek_offset`] and its siblings, which verify the input).
///
/// Only one `Checkpoint` at a time can have a given file open: an exclusive
/// lock on the sidecar file `PATH.lock` is held while it lives, and a second
/// opener, in this process or another, gets [`Error::Locked`] at once (after
/// 50 ms of retries, which cover a lock just released while this process
/// was starting a child process).
///
/// # Guarantee
///
/// At least once: a line committed is never redone after a crash once its
/// commit is durable (see [`Durability`]); a line not yet durably committed
/// is redone. Nothing is ever recorded as finished that was not committed.
///
/// # Durability
///
/// Every commit is written to the file within the write delay
/// ([`CheckpointBuilder::write_delay`], 10 ms by default) and reaches the
/// disk according to the [`Durability`] chosen when opening, both kept by a
/// writer thread without any further call (see "Why a writer thread"
/// below). [`sync`](Checkpoint::sync) and [`close`](Checkpoint::close) make everything committed durable and
/// report errors; dropping a `Checkpoint` stops the writer thread, writes
/// what is pending on a best-effort basis, ignoring errors, and syncs it
/// unless the durability is [`Durability::NoSync`]. After a failed write or
/// sync (a full disk, say), the state in memory is kept and the next write
/// replaces the whole file atomically, so no recorded progress is lost. A
/// write of a background thread that fails is returned by the next call
/// that commits or flushes (and by [`sync`](Checkpoint::sync) and
/// [`close`](Checkpoint::close) if they cannot make everything durable
/// themselves); until then the writer thread writes nothing more, so a full
/// disk is not hammered, but still syncs what it wrote.
///
/// # Why a writer thread
///
/// A job's next line may block for minutes (a download that hangs), and
/// the commits made before it must still reach the file and the disk in
/// time. Only another thread can act then. Writing every commit from the
/// job's thread would bound a kill to nothing but cost a system call per
/// line (a 50 ns line becomes a microsecond one); reading the last line
/// back from the input by its offset would spare publishing the line, but
/// a checkpoint does not know its input (a loop over stdin) and the input
/// may change. So the job's thread publishes each line it commits with
/// plain stores, under a sequence lock (no lock instruction on the hot
/// path; a reader retries if the line changed while it copied it), and the
/// writer thread, waking every half delay, folds the newest line into the
/// state, appends the records and syncs when a commit's `max_delay` is
/// near. Other commits (positions, done, failed and resolved lines) take a
/// mutex that is never held during file I/O. A job that commits too fast
/// for the writer thread to copy the line in one go is asked, through a
/// flag it loads with every commit anyway, to fold the line itself.
///
/// # File format
///
/// Text, one record a line, so `tail` and `grep` work on it. Every record
/// ends with ` crc=XXXXXXXX`: the CRC-32 (IEEE) in 8 lowercase hex digits of
/// all bytes of the record before that field. Numbers are decimal, digests 8
/// lowercase hex digits, line numbers 1-based.
///
/// ```text
/// linemark-checkpoint version=5 crc=…                    header, always first
/// shard index=I count=C crc=…                            the lines it owns: 0-based index I modulo C
///                                                        (0 of 1: every line); recorded by the runner
/// pos offset=O line=N len=L digest=D crc=…               lines 1..=N are finished; the next starts at byte O;
///                                                        line N is L bytes long (newline included), digest D
/// prefix offset=O digest=C crc=…                        the input's first O bytes (O at most the last pos's
///                                                        offset) have CRC-32 C
/// done line=N offset=O len=L digest=D crc=…              line N (after the last pos), starting at byte O,
///                                                        L bytes long, digest D, is finished too (and no
///                                                        longer failed, if a `failed` record said so)
/// failed line=N offset=O len=L digest=D attempts=A error="…" crc=…
///                                                        line N failed for good after A attempts (and is
///                                                        no longer done, if a `done` record said so)
/// resolved line=N crc=…                                  line N, failed before, is now finished
/// output index=I path="…" crc=…                          output I (0-based) is the file at this path
///                                                        (as given when attached; see Checkpoint::output)
/// out len=L0,L1 digest=D0,D1 closed=C crc=…              the outputs are L0, L1 … bytes long, the CRC-32 of
///                                                        the up to 64 bytes before each length D0, D1 …;
///                                                        C=1: the run ended cleanly, outputs cut to these lengths
///                                                        (no lengths, `out len= digest= closed=C`: a
///                                                        checkpoint with a failure log and no outputs)
/// faillog path="…" crc=…                                 the failure log is the file of that name in the
///                                                        checkpoint's directory (`CHECKPOINT.failures`
///                                                        or `CHECKPOINT.failures.1`)
/// failures len=L digest=D from=F count=N resolved=K crc=…
///                                                        the failure log is L bytes long, D the CRC-32 of the
///                                                        up to 64 bytes before L; its live part starts at byte
///                                                        F and records N failed lines and K `resolved` records
/// ```
///
/// The digest is [`digest`](crate::digest). Error texts are double-quoted
/// with `\\`, `\"`, `\n`, `\r`, `\t` and `\u{…}` escapes. The state is the
/// result of applying the records in order; a `pos` drops the `done` and
/// `failed` lines it covers; a `prefix` past the last `pos` is ignored.
/// Compaction rewrites the file as the header, the `shard`, `output` and
/// `faillog` declarations, one `pos`, one `prefix`, the `done` and `failed`
/// records still in force (lines beyond the position: at most a window of
/// them), and the `failures` and `out` marks. `done` and `failed` records
/// carry the line's offset, length and digest so that a later run checks the
/// line is still the same before skipping or retrying it
/// ([`Checkpoint::is_recorded`]).
///
/// Failed lines: a line that fails for good beyond the position is a
/// `failed` record here. Once the position passes it, its record moves to
/// the failure log, `CHECKPOINT.failures`, an append-only file of `failed`
/// and `resolved` records (the same records, one a line), in the write
/// whose group records the position: so neither this file, nor its
/// compaction, nor memory grows with the number of failed lines, and each
/// failed line's record is written once. The log is kept like an output
/// (below): its bytes up to the recorded length are written, and unless
/// [`Durability::NoSync`] synced, before the group that records that
/// length; bytes after it are cut on reopen (even after a clean end: the
/// log is linemark's own file), and a log that is missing, shorter or
/// edited is
/// [`Error::OutputChanged`]. Every record of the log before `from` is
/// superseded. A line failed again or resolved at the head of the live part
/// (the order [`failed`](Checkpoint::failed) lists them in, which a retry
/// follows) moves `from` past its record, appending the new record of a
/// line that failed again; one out of that order appends a `resolved`
/// record, which supersedes the line's records before it (a listing first
/// collects them: memory for those only, and the runner's retry writes the
/// live part again, once, to get rid of them). A log whose lines are all
/// resolved is removed at a clean end; one whose superseded part is over
/// 64 KiB or more and at least as long as its live part is copied, its live part
/// only, to its other name (`CHECKPOINT.failures.1`, and back), synced
/// before the checkpoint is rewritten to name the copy, and the old file is
/// removed after: the `faillog` record names the file in force. A file
/// already where a new log goes (the log of a checkpoint removed since, or
/// of a session killed before its first record named it) is emptied only
/// if it starts like a failure log; any other file is left as it is, and
/// the write fails with an [`Error::Io`] naming it: nothing more is
/// written until it is moved away (the commits stay in the memory of the
/// open checkpoint; a runner stops with the error, and the next run does
/// the unrecorded lines again).
///
/// Outputs: from the first `output` (or `faillog`) record on, records take
/// effect in groups: each write appends its records, the `failures` record
/// if there is a failure log, and then one `out` record with the outputs'
/// lengths as of those records, and the records of a group apply only once
/// its `out` record is read. A group without its `out`
/// record is the torn end of a write, like an incomplete record. So a
/// position, a `done` line or a `resolved` line is never recovered
/// without the output length that holds its results, nor a length
/// without them; and the output's bytes up to a length are written (and,
/// unless [`Durability::NoSync`], synced) before the group that records
/// it. Compaction writes the outputs' `output` records after the header
/// and an `out` record last.
///
/// Recovery: a damaged or incomplete record that is followed only by other
/// damaged or incomplete data is the torn end of an interrupted write; it is
/// ignored and cut off before the next append. A damaged record followed by
/// a valid one is [`Error::Corrupt`]. A file that does not start with
/// `linemark-checkpoint` is [`Error::NotACheckpoint`] and is never
/// overwritten; an empty file, or a torn header alone, is a fresh start.
///
/// Compatibility: files written in versions 1 to 5 of the format will be
/// read by every later linemark 0.x and 1.x release. Version 2 added the
/// `shard` record, version 3 the `prefix` record (which the runner keeps
/// and checks on resume: see
/// [`Runner::verify_prefix`](crate::Runner::verify_prefix)), version 4
/// the `output` and `out` records, version 5 the failure log (in versions 1
/// to 4 every `failed` record stays in the checkpoint file, before or
/// after the position); an older file is rewritten in the current version
/// when such a record is first written in it (a file of version 4 or
/// older with failed lines behind its position: at its first write, which
/// moves them to a failure log). A file of a newer version is refused with
/// [`Error::UnsupportedVersion`], never misread. A run over other lines than
/// the recorded shard is refused with [`Error::ShardMismatch`].
///
/// # Examples
///
/// ```
/// use std::fs::File;
/// use std::io::BufReader;
/// use linemark::{Checkpoint, LineReader};
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("input.txt");
/// std::fs::write(&input, "a\nb\nc\n")?;
/// let path = dir.path().join("input.txt.checkpoint");
///
/// // First run: finish two lines, then "crash" (drop without close).
/// {
///     let mut checkpoint = Checkpoint::open(&path)?;
///     let mut lines = LineReader::new(BufReader::new(File::open(&input)?));
///     for _ in 0..2 {
///         let line = lines.next_line()?.unwrap();
///         checkpoint.commit(line.end_position())?;
///     }
/// }
///
/// // Second run: seek past the finished lines, verified, and go on.
/// let checkpoint = Checkpoint::open(&path)?;
/// let mut reader = BufReader::new(File::open(&input)?);
/// let resumed = checkpoint.position().seek_offset(&mut reader)?;
/// let mut lines = LineReader::resume(reader, resumed);
/// assert_eq!(lines.next_line()?.unwrap().as_str()?, "c");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    /// The path as the user gave it (`inner.path` is the resolved one).
    given: PathBuf,
    inner: Arc<Inner>,
    /// The line of the last position committed through this handle (or
    /// found on open): a line committed behind it moves the position back,
    /// which takes the slow path of `commit`.
    line: u64,
    /// The committing thread's half of the slot its lines are published in.
    slot: SlotWriter,
    durability: Durability,
    write_delay: Duration,
    /// Commits since the committing thread last wrote a group itself.
    count: u32,
    /// `count` at which a commit takes the slow path to write: 1 when every
    /// commit is written at once, else `max_records`; 0 until the first
    /// commit has started the background threads.
    service_at: u32,
    /// `service_at` once the threads run.
    group_service_at: u32,
    /// Commits per sync made by the committing thread (a full group).
    max_records: u32,
    /// The writer and sync threads; `None` when every commit is written
    /// (and synced) at once.
    background: Option<Background>,
    /// The threads' schedule, until the first commit starts them.
    schedule: Option<Schedule>,
    _lock: File,
    /// Set by `close` and by tests that simulate a crash: drop writes
    /// nothing.
    abandoned: bool,
    /// The outputs attached, whose lengths every commit records.
    outputs: Vec<Arc<OutputShared>>,
}

/// The state recorded in a checkpoint file, as read by
/// [`Checkpoint::inspect`].
///
/// # Examples
///
/// ```
/// use linemark::Checkpoint;
///
/// let dir = tempfile::tempdir()?;
/// // A missing checkpoint reads as a fresh start.
/// let snapshot = Checkpoint::inspect(dir.path().join("none.checkpoint"))?;
/// assert!(snapshot.position.is_start());
/// assert!(snapshot.done_beyond.is_empty() && snapshot.failed == 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Everything before this position is finished.
    pub position: Position,
    /// Lines after `position` that are finished too.
    pub done_beyond: Vec<u64>,
    /// How many lines failed for good (listed by
    /// [`Checkpoint::inspect_failed`]).
    pub failed: u64,
    /// The shard whose lines the checkpoint holds (see
    /// [`Checkpoint::shard`]).
    pub shard: Option<(u64, u64)>,
    /// The outputs (see [`Checkpoint::output`]): each one's path, as given
    /// when it was attached, and the length recorded, which holds the
    /// results of every finished line.
    pub outputs: Vec<(PathBuf, u64)>,
}

impl Checkpoint {
    /// Opens the checkpoint at `path` with default settings. See
    /// [`CheckpointBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`CheckpointBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        CheckpointBuilder::new().open(path)
    }

    /// A builder to choose the durability, write delay and compaction
    /// threshold.
    #[must_use]
    pub fn builder() -> CheckpointBuilder {
        CheckpointBuilder::new()
    }

    /// The path of the checkpoint file.
    #[must_use]
    ///
    /// A symbolic link is followed when the checkpoint is opened: the real
    /// file is locked, written and replaced by compaction, and the link is
    /// left as it is.
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// The durability chosen when opening.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How long after it was made a commit is written to the file at most
    /// (see [`CheckpointBuilder::write_delay`]); zero when every commit is
    /// written before it returns.
    #[must_use]
    pub fn write_delay(&self) -> Duration {
        self.write_delay
    }

    /// Everything before this position is finished (the low watermark).
    #[must_use]
    ///
    /// A line committed by the runner is read back from the input for its
    /// digest; if that fails (the input was changed under the run), this
    /// is the position before it, and the next commit or sync returns the
    /// error.
    pub fn position(&self) -> Position {
        self.core().state.position
    }

    /// The state with the committing thread's last line folded in. A fold
    /// that fails leaves the line unfolded: the next write folds it again
    /// and returns the error.
    fn core(&self) -> MutexGuard<'_, Core> {
        let mut core = self.inner.lock_core();
        let _ = self.inner.fold_own(&mut core, &self.slot);
        core
    }

    /// The state with the last line folded in, for a commit: one made on
    /// top of a line that cannot be folded would record the outputs'
    /// lengths without that line.
    fn core_for_commit(&self) -> Result<MutexGuard<'_, Core>> {
        let mut core = self.inner.lock_core();
        self.inner.fold_own(&mut core, &self.slot)?;
        Ok(core)
    }

    /// From now on, lines committed by `commit_read_line` come from the
    /// regular file `input`: publish them by their place, and read them
    /// back from the file when their digest is needed (see `slot.rs`); and,
    /// if `digest_prefix`, keep the CRC-32 of the finished part of it.
    pub(crate) fn read_back_from(&mut self, input: &Path, digest_prefix: bool) -> Result<()> {
        let open_err = |err| Error::io(Some(input), "opening the input to read lines back", err);
        // Checked before opening: opening a named pipe blocks until a
        // writer comes, and a second reader would take its data.
        if !std::fs::metadata(input).map_err(open_err)?.is_file() {
            return Ok(());
        }
        let file = File::open(input).map_err(open_err)?;
        if digest_prefix {
            let again = File::open(input).map_err(open_err)?;
            *self
                .inner
                .prefix
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(PrefixReader::new(again));
        }
        let mut core = self.inner.lock_core();
        self.inner.fold_own(&mut core, &self.slot)?;
        *self
            .inner
            .input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ReadBack {
            path: input.to_path_buf(),
            file,
        });
        self.slot.locate(&self.inner.slot);
        core.folded = self.slot.seq();
        Ok(())
    }

    /// Number of syncs so far that made commits durable (for progress
    /// displays: it changes whenever
    /// [`durable_position`](Checkpoint::durable_position) may have).
    #[must_use]
    #[inline]
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::Acquire)
    }

    /// The newest position known to be on disk (synced): what a power loss
    /// now would resume from (at least). Behind
    /// [`position`](Checkpoint::position) while commits wait for their group
    /// sync.
    #[must_use]
    pub fn durable_position(&self) -> Position {
        self.inner.lock_core().durable
    }

    /// Reads the state recorded in a checkpoint file without locking or
    /// changing it, for status displays while a job may be running. A
    /// missing file reads as a fresh start. It sees what the running job
    /// has written, which is every commit older than its write delay.
    ///
    /// # Errors
    ///
    /// As [`CheckpointBuilder::open`], except that it is never
    /// [`Error::Locked`].
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Checkpoint, Position};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.checkpoint");
    /// let mut checkpoint = Checkpoint::open(&path)?;
    /// checkpoint.commit(Position::start().after(b"x\n"))?;
    /// checkpoint.sync()?;
    /// let snapshot = Checkpoint::inspect(&path)?;
    /// assert_eq!(snapshot.position.line(), 1);
    /// assert_eq!(snapshot.failed, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inspect(path: impl AsRef<Path>) -> Result<Snapshot> {
        let loaded = load(&RealFs, path.as_ref())?;
        let failed = loaded.state.failed_count();
        Ok(Snapshot {
            position: loaded.state.position,
            done_beyond: loaded.state.done.into_keys().collect(),
            failed,
            shard: loaded.state.shard,
            outputs: loaded
                .state
                .outputs
                .into_iter()
                .map(|(path, mark)| (PathBuf::from(path), mark.len))
                .collect(),
        })
    }

    /// Lines after [`position`](Checkpoint::position) that are finished too,
    /// in increasing order.
    pub fn done_beyond(&self) -> impl Iterator<Item = u64> + use<> {
        let lines: Vec<u64> = self.core().state.done.keys().copied().collect();
        lines.into_iter()
    }

    /// Whether `line`, beyond the position, is already dealt with: recorded
    /// as done or as failed. A recorded line is checked against the line
    /// read now (offset, length and digest), so lines that moved are never
    /// skipped by mistake. A hand-written loop asks it for each line after
    /// the resume point (a [`Tracker`](crate::Tracker) does).
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the input holds another line under that
    /// number than the one recorded.
    pub fn is_recorded(&self, line: &Line<'_>) -> Result<bool> {
        self.is_recorded_as(line.number(), |id| {
            id.check_bytes(line.offset(), line.raw())
        })
    }

    /// [`is_recorded`](Checkpoint::is_recorded) for a line over the
    /// runner's length limit, known by a streaming pass over it.
    pub(crate) fn is_recorded_long(&self, long: &crate::line::LongLine) -> Result<bool> {
        self.is_recorded_as(long.number, |id| {
            id.check_scanned(long.offset, &long.scanned)
        })
    }

    /// Whether line `number` is recorded as done or failed, after `check`
    /// found the line read now to be the recorded one.
    fn is_recorded_as(
        &self,
        number: u64,
        check: impl FnOnce(&crate::scan::LineId) -> Result<()>,
    ) -> Result<bool> {
        let core = self.inner.lock_core();
        let recorded = core
            .state
            .done
            .get(&number)
            .or_else(|| core.state.failed.get(&number).map(FailedLine::id));
        match recorded {
            Some(id) => check(id).map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether the line with this 1-based number is finished (before the
    /// position, or recorded as done beyond it). Failed lines are not
    /// "finished" here; see [`is_failed`](Checkpoint::is_failed), which
    /// this asks for a line before the position.
    ///
    /// # Errors
    ///
    /// As [`is_failed`](Checkpoint::is_failed).
    pub fn is_done(&self, line: u64) -> Result<bool> {
        let behind = {
            let core = self.core();
            if core.state.done.contains_key(&line) {
                return Ok(true);
            }
            line <= core.state.position.line()
        };
        Ok(behind && !self.is_failed(line)?)
    }

    /// What the checkpoint knows of the whole finished part of its input.
    pub(crate) fn prefix(&self) -> Option<crate::position::Prefix> {
        self.core().state.prefix
    }

    /// The highest line number recorded as done beyond the position or as
    /// failed (0 if none): no line after it can be skipped.
    #[must_use]
    pub(crate) fn last_recorded_line(&self) -> u64 {
        let core = self.core();
        let done = core.state.done.keys().next_back().copied().unwrap_or(0);
        let failed = core.state.failed.keys().next_back().copied().unwrap_or(0);
        done.max(failed)
    }

    /// The lines this checkpoint owns, as recorded by the runner: the
    /// lines whose 0-based index is `index` modulo `count` (`(0, 1)`: every
    /// line); `None` for a checkpoint no run has claimed yet.
    #[must_use]
    pub fn shard(&self) -> Option<(u64, u64)> {
        self.inner.lock_core().state.shard
    }

    /// Records that the checkpoint holds the progress of shard `asked`, or
    /// checks that it does. A checkpoint that records none (a new one, one
    /// written by a hand-written loop or by a version before shards were
    /// recorded) takes `asked`.
    pub(crate) fn claim_shard(&mut self, asked: (u64, u64)) -> Result<()> {
        {
            let mut io = self.inner.lock_io();
            let mut core = self.inner.lock_core();
            match core.state.shard {
                Some(recorded) if recorded == asked => return Ok(()),
                Some(recorded) => {
                    return Err(Error::ShardMismatch {
                        path: self.given.clone(),
                        recorded,
                        asked,
                    });
                }
                None => {
                    core.state.shard = Some(asked);
                    core.pending.shard = true;
                    if io.file.is_some() && core.state.version < format::VERSION {
                        // A file of the format before the shard record is
                        // rewritten in the current one, which an older
                        // linemark refuses instead of misreading.
                        io.needs_rewrite = true;
                    }
                }
            }
        }
        self.note_commit()
    }

    /// Records that everything before `position` is finished.
    ///
    /// Positions normally only move forward. A position before the current
    /// one is recorded as given: the lines after it will be done again.
    ///
    /// # Durability
    ///
    /// Written and synced when this returns with
    /// [`Durability::EveryCommit`]. Otherwise written within the
    /// [`write_delay`](CheckpointBuilder::write_delay) (a process kill
    /// after that does not lose it) and synced within the group's
    /// `max_delay` (a power loss after that does not lose it), without any
    /// further call; [`sync`](Checkpoint::sync) and
    /// [`close`](Checkpoint::close) make it durable at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPosition`] for a position no input can have (lines
    /// are numbered from 1 and are at least one byte long); nothing is
    /// recorded. [`Error::Io`] when a write, sync or compaction due now
    /// fails, or one of the writer thread failed since the last call. The
    /// commit is kept in memory and written again by the next successful
    /// write (it may already be on disk, if only the compaction after it
    /// failed).
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Checkpoint, Position};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.checkpoint");
    /// let mut checkpoint = Checkpoint::open(&path)?;
    /// checkpoint.commit(Position::start().after(b"first line\n"))?;
    /// checkpoint.close()?;
    /// assert_eq!(Checkpoint::open(&path)?.position().line(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(&mut self, position: Position) -> Result<()> {
        check_position(position)?;
        {
            let mut core = self.inner.lock_core();
            if position.line() < core.state.position.line() && core.pending.position {
                // The position moved forward and now back, the forward one
                // not written yet: it goes first. It let go of what it
                // passed (a failed line resolved since, a done one), whose
                // records in the file would otherwise be in force again
                // behind the new one.
                drop(core);
                self.write_now(false, Catch::Up)?;
                core = self.inner.lock_core();
            }
            if core.state.log.is_none() || position.line() >= core.state.position.line() {
                self.slot.clear(&self.inner.slot);
                core.folded = self.slot.seq();
                for failed in core.state.advance(position) {
                    core.pending.failed.push(Record::Failed(failed));
                }
                core.state.raise_outputs(lens(&self.outputs));
                core.pending.position = true;
                drop(core);
                self.line = position.line();
                return self.note_commit();
            }
        }
        self.commit_back(position)
    }

    /// [`commit`](Checkpoint::commit) of a position moved back behind lines
    /// the failure log may hold as failed: they are beyond it again, the
    /// checkpoint's, in the same group as the position. The `io` lock held
    /// throughout keeps any write from moving more lines to the log.
    #[cold]
    fn commit_back(&mut self, position: Position) -> Result<()> {
        let io = self.inner.lock_io();
        let mark = self.inner.lock_core().state.log_mark();
        let logged = match mark {
            Some(mark) => self.logged_beyond(mark, position.line())?,
            None => Vec::new(),
        };
        {
            let mut core = self.inner.lock_core();
            self.slot.clear(&self.inner.slot);
            core.folded = self.slot.seq();
            for failed in core.state.advance(position) {
                core.pending.failed.push(Record::Failed(failed));
            }
            if !logged.is_empty() {
                self.take_back_from_log(&mut core, logged);
            }
            core.state.raise_outputs(lens(&self.outputs));
            core.pending.position = true;
        }
        drop(io);
        self.line = position.line();
        self.note_commit()
    }

    /// Records that everything up to and including `line` is finished: the
    /// same as `commit(line.end_position())`, except that the line's digest
    /// is computed only when the position is written (or asked for), so
    /// committing every line of a fast job costs a copy of the line, not a
    /// digest. A line behind the last position committed moves the
    /// position back, as `commit` does (its digest computed at once).
    ///
    /// "Everything up to": committing a line while an earlier one is still
    /// being worked on (several threads finishing out of order) marks that
    /// earlier line finished too, and a crash then skips it. Lines that
    /// finish out of order go through a [`Tracker`](crate::Tracker), which
    /// commits only the lines before the first unfinished one and records
    /// the others as done beyond it.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Checkpoint, LineReader};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let mut checkpoint = Checkpoint::open(dir.path().join("job.checkpoint"))?;
    /// let mut lines = LineReader::new(&b"a\nb\n"[..]);
    /// while let Some(line) = lines.next_line()? {
    ///     checkpoint.commit_line(&line)?;
    /// }
    /// assert_eq!(checkpoint.position().offset(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline(always)]
    pub fn commit_line(&mut self, line: &Line<'_>) -> Result<()> {
        let (number, len) = (line.number(), line.raw().len() as u64);
        if number == 0 || len == 0 || number > line.offset().saturating_add(len) {
            return Err(Error::InvalidPosition {
                line: number,
                offset: line.offset(),
            });
        }
        self.commit_read_line(line)
    }

    /// [`commit_line`](Checkpoint::commit_line) for a line from a
    /// [`LineReader`](crate::LineReader), which is valid by construction.
    #[inline(always)]
    pub(crate) fn commit_read_line(&mut self, line: &Line<'_>) -> Result<()> {
        if line.number() < self.line {
            return self.commit_line_back(line);
        }
        self.line = line.number();
        self.slot
            .publish(&self.inner.slot, line, lens(&self.outputs));
        self.note_commit()
    }

    /// [`commit_line`](Checkpoint::commit_line) behind the position: moved
    /// back as [`commit`](Checkpoint::commit) moves it (failed lines the
    /// failure log holds beyond it are taken back).
    #[cold]
    #[inline(never)]
    fn commit_line_back(&mut self, line: &Line<'_>) -> Result<()> {
        self.commit(line.end_position())
    }

    /// Records that a line beyond the current position is finished (for
    /// lines that finish out of order), given as the position just after it
    /// ([`Line::end_position`]), so a later run can check it is still the
    /// same line before skipping it. Ignored for a line the position already
    /// covers.
    ///
    /// A [`Tracker`](crate::Tracker) calls it for a hand-written parallel
    /// loop, together with the watermark; call it directly only to keep
    /// that bookkeeping yourself.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit).
    pub fn commit_done(&mut self, end: Position) -> Result<()> {
        check_position(end)?;
        let line = end.line();
        {
            let mut core = self.core_for_commit()?;
            if line <= core.state.position.line()
                || core.state.done.insert(line, end.last_line()).is_some()
            {
                return Ok(());
            }
            // Finished: no longer failed, if it was (as the record reads).
            core.state.failed.remove(&line);
            core.state.raise_outputs(lens(&self.outputs));
            core.pending.done.push(line);
        }
        self.note_commit()
    }

    /// [`commit_done`](Checkpoint::commit_done) for the lines of a batch
    /// read by a [`LineReader`](crate::LineReader) (valid by
    /// construction), recorded at once: the outputs' lengths, which hold
    /// the results of all of them, go with all of them (one by one, a write
    /// between two would record those lengths with the first line only, and
    /// a crash then would write the others' results twice).
    pub(crate) fn commit_done_lines(&mut self, ends: impl Iterator<Item = Position>) -> Result<()> {
        let added = {
            let mut core = self.core_for_commit()?;
            let mut added = false;
            for end in ends {
                let line = end.line();
                if line <= core.state.position.line()
                    || core.state.done.insert(line, end.last_line()).is_some()
                {
                    continue;
                }
                core.state.failed.remove(&line);
                core.pending.done.push(line);
                added = true;
            }
            if added {
                core.state.raise_outputs(lens(&self.outputs));
            }
            added
        };
        if added { self.note_commit() } else { Ok(()) }
    }

    /// Forgets the digest of the finished part of the input (a resume by
    /// content, which accepts edits before the last finished line, makes it
    /// stale).
    pub(crate) fn forget_prefix(&mut self) {
        let mut io = self.inner.lock_io();
        let mut core = self.inner.lock_core();
        // An empty prefix, recorded, supersedes the one in the file; the
        // writer digests the input again from its first byte.
        core.state.prefix = Some(crate::position::Prefix::default());
        io.prefix_unrecorded = true;
        io.prefix_recorded = None;
    }

    /// Moves the position to where a seek found the input resumes, when
    /// that differs from the recorded one (see [`Position::seek_content`]).
    /// Lines recorded as done beyond the position keep their distance to
    /// it; failed lines keep their records, which are checked against the
    /// input when they are retried. A hand-written loop that resumes by
    /// content calls it with the position the seek returned.
    ///
    /// # Durability
    ///
    /// The file is replaced atomically at the next write, which happens
    /// before this returns with [`Durability::EveryCommit`].
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit).
    pub fn rebase(&mut self, position: Position) -> Result<()> {
        {
            // The failure log's lines are copied, moved, before the state
            // moves, and both are recorded together: a failed copy changes
            // nothing.
            let mut io = self.inner.lock_io();
            // Commits waiting for the log are numbered as the lines are
            // now: applied before the lines move (or the rebase fails).
            self.inner.settle_behind()?;
            let old = {
                let mut core = self.inner.lock_core();
                self.inner.fold_own(&mut core, &self.slot)?;
                core.state.position
            };
            let copied = if old == position {
                None
            } else {
                self.copy_live(
                    false,
                    Some(format::Shift {
                        from: old,
                        to: position,
                    }),
                )?
            };
            let mut core = self.inner.lock_core();
            self.inner.fold_own(&mut core, &self.slot)?;
            self.slot.clear(&self.inner.slot);
            core.folded = self.slot.seq();
            core.state.rebase(position);
            self.line = position.line();
            if let (Some(mark), Some((_, log))) = (copied, core.state.log.as_mut()) {
                *log = mark;
                core.pending.log = true;
            }
            core.pending.position = true;
            io.needs_rewrite = true;
        }
        self.note_commit()
    }

    #[inline(always)]
    fn note_commit(&mut self) -> Result<()> {
        self.count += 1;
        if self.count >= self.service_at || self.inner.slot.signal.load(Ordering::Relaxed) != 0 {
            return self.service();
        }
        Ok(())
    }

    /// The slow path of a commit: return the writer thread's error, fold the
    /// last line for it, or write a full group.
    #[cold]
    #[inline(never)]
    fn service(&mut self) -> Result<()> {
        if self.schedule.is_some() {
            // Refused before the first commit reaches the file.
            self.check_outputs_attached()?;
        }
        if let Some(schedule) = self.schedule.take() {
            match Background::start(&self.inner, schedule) {
                Ok(background) => self.background = background,
                Err(error) => {
                    // Tried again at the next commit.
                    self.schedule = Some(schedule);
                    return Err(error);
                }
            }
            self.service_at = self.group_service_at;
        }
        if let Some(error) = self.inner.take_error() {
            return Err(error);
        }
        if self.inner.slot.signal.load(Ordering::Acquire) & WANT_FOLD != 0 {
            let folded = self.inner.fold_own(&mut self.inner.lock_core(), &self.slot);
            self.inner
                .slot
                .signal
                .fetch_and(!WANT_FOLD, Ordering::AcqRel);
            folded?;
        }
        if self.count >= self.service_at {
            self.write_group()?;
        }
        Ok(())
    }

    /// Writes what is pending; when a full group has gathered, syncs it
    /// (unless [`Durability::NoSync`]) and starts counting the next.
    fn write_group(&mut self) -> Result<()> {
        let full = self.count >= self.max_records;
        self.write_now(full && self.durability.syncs(), Catch::Up)?;
        if full {
            self.count = 0;
        }
        Ok(())
    }

    /// Writes (and syncs, if `sync`) everything committed, from this thread,
    /// the prefix read to the position as `prefix` says.
    fn write_now(&mut self, sync: bool, prefix: Catch) -> Result<()> {
        // A line that cannot be read back does not hold back the other
        // records: they are written, then the error is returned.
        let mut folded = {
            let _io = self.inner.lock_io();
            self.inner.fold_own(&mut self.inner.lock_core(), &self.slot)
        };
        // With the last line folded in, the prefix is read to its end
        // before the `io` lock is taken again (see `Inner::digest_prefix`).
        self.inner.digest_prefix(prefix);
        let folded = {
            let mut io = self.inner.lock_io();
            if folded.is_ok() {
                folded = self.inner.fold_own(&mut self.inner.lock_core(), &self.slot);
            }
            let seen = io.seen_since.take().unwrap_or_else(Instant::now);
            self.inner.write(&mut io, seen, prefix)?;
            folded
        };
        folded?;
        if sync {
            self.inner.sync_to_disk()?;
            self.count = 0;
        }
        let compact = Inner::wants_compaction(&self.inner.lock_io(), self.inner.compact_at);
        if compact {
            // A thread that waited for a sync anyway compacts too, as one
            // without background threads must; otherwise the sync thread
            // does it.
            if sync || self.background.is_none() {
                self.inner.compact()?;
            } else {
                self.inner.request(Request::Compact);
            }
        }
        Ok(())
    }

    /// Writes what is pending if a full group has gathered, and returns an
    /// error the writer thread met since the last call. The writer thread
    /// keeps the time limits on its own, so a job need not call this; a
    /// job that makes no other call for a long time can call it to learn
    /// of a failed write sooner.
    ///
    /// # Durability
    ///
    /// A full group is durable when this returns, except with
    /// [`Durability::NoSync`], where it is only written.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the write or sync fails, or one of the writer
    /// thread failed.
    pub fn flush_if_due(&mut self) -> Result<()> {
        if let Some(error) = self.inner.take_error() {
            return Err(error);
        }
        if self.count >= self.service_at && self.count > 0 {
            self.write_group()?;
        }
        Ok(())
    }

    /// Writes all pending commits and syncs the file, whatever the
    /// durability mode.
    ///
    /// # Durability
    ///
    /// Everything committed so far is durable when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the write or the sync fails; if a background
    /// thread had failed since the last call, its error (the first cause)
    /// is returned instead. A background failure whose cause has passed is
    /// not an error here: this call made everything durable anyway. The
    /// commits stay in memory; a later `sync` retries them.
    pub fn sync(&mut self) -> Result<()> {
        let earlier = self.inner.take_error();
        self.write_now(true, Catch::All)
            .map_err(|error| earlier.unwrap_or(error))
    }

    /// Syncs (see [`sync`](Checkpoint::sync)) and releases the lock.
    ///
    /// # Durability
    ///
    /// Everything committed is durable when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// As [`sync`](Checkpoint::sync); the lock is released either way.
    pub fn close(mut self) -> Result<()> {
        let result = self.sync().and_then(|()| self.close_outputs());
        self.abandoned = true;
        result
    }

    /// Replaces the file with a snapshot of the state, stopping after
    /// `stop`.
    #[cfg(test)]
    fn compact_until(&mut self, stop: writer::RewriteStep) -> Result<()> {
        let mut io = self.inner.lock_io();
        let (snapshot, position) = {
            let mut core = self.inner.lock_core();
            self.inner.fold_own(&mut core, &self.slot)?;
            core.pending = format::Pending::default();
            (core.state.snapshot(), core.state.position)
        };
        self.inner.rewrite(&mut io, snapshot, position, stop)
    }

    /// Forgets what is not written yet and drops without writing, as a
    /// kill of the process would.
    #[cfg(test)]
    fn crash(mut self) {
        self.abandoned = true;
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // Stop the writer thread first, so a crash simulated by a test
        // writes nothing more, and the final write is this thread's.
        drop(self.background.take());
        if self.abandoned {
            return;
        }
        let unwritten = {
            let io = self.inner.lock_io();
            let core = self.core();
            io.has_unwritten(&core)
        };
        let unsynced = self.durability.syncs() && {
            let io = self.inner.lock_io();
            !io.unsynced.is_empty() || io.dir_unsynced
        };
        if unwritten || unsynced {
            let _ = self.write_now(self.durability.syncs(), Catch::All);
        }
    }
}

/// The lengths of the outputs now.
#[inline(always)]
fn lens(outputs: &[Arc<OutputShared>]) -> impl Iterator<Item = u64> + '_ {
    outputs.iter().map(|output| output.appended())
}

/// Refuses a position that no input can have, before it reaches the file
/// (where it would make the next open fail).
fn check_position(position: Position) -> Result<()> {
    Position::from_parts(
        position.offset(),
        position.line(),
        position.last_len(),
        position.last_digest(),
    )
    .map(|_| ())
    .ok_or(Error::InvalidPosition {
        line: position.line(),
        offset: position.offset(),
    })
}
