//! The checkpoint file: an append-and-fsync log of progress records,
//! recovered on open and compacted by atomic rewrite.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::line::Line;
use crate::position::Position;
use crate::record::{MAGIC, Record, VERSION};

/// When commits reach the disk.
///
/// Whatever the mode, the checkpoint file is always valid after a crash: at
/// worst it holds an older position, and the lines after it are done again
/// (at-least-once). The modes differ in how much can be redone.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use linemark::{Checkpoint, Durability};
///
/// let dir = tempfile::tempdir()?;
/// let checkpoint = Checkpoint::builder()
///     .durability(Durability::group(1_000, Duration::from_millis(50)))
///     .open(dir.path().join("job.checkpoint"))?;
/// assert_eq!(checkpoint.durability(), Durability::group(1_000, Duration::from_millis(50)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is written and `fdatasync`ed before the call returns. A
    /// crash redoes at most the lines that were in progress.
    EveryCommit,
    /// Group commit (the default): commits are collected in memory and
    /// written and `fdatasync`ed once `max_records` of them have gathered or
    /// `max_delay` has passed since the first of them, whichever comes first.
    /// Only the newest position is written at each sync, so the cost grows
    /// with the number of syncs, not of lines. A crash redoes at most the
    /// lines of one group plus those in progress.
    ///
    /// A timer thread (one per open checkpoint in this mode, asleep but for
    /// one wake-up per `max_delay`) marks the delay as passed; the write
    /// happens at the next commit or [`Checkpoint::flush_if_due`], so the
    /// hot path reads no clock.
    #[non_exhaustive]
    Group {
        /// Commits per sync at most.
        max_records: u32,
        /// Time from the first unsynced commit to its sync at most, as long as
        /// commits keep coming (the delay is acted on at the next commit or
        /// [`Checkpoint::flush_if_due`]).
        max_delay: Duration,
    },
    /// Records are written on the group schedule but never explicitly
    /// synced (the operating system decides when they reach the disk), except
    /// by [`Checkpoint::sync`], [`Checkpoint::close`] and compaction. After an
    /// OS crash or power loss any amount of progress may be redone; after a
    /// crash of the process alone, nothing written is lost. For throwaway
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

    fn batch(&self) -> (u32, Duration) {
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

    fn syncs(&self) -> bool {
        !matches!(self, Durability::NoSync)
    }
}

impl Default for Durability {
    fn default() -> Durability {
        Durability::DEFAULT_GROUP
    }
}

/// Configures and opens a [`Checkpoint`].
///
/// # Examples
///
/// ```
/// use linemark::{CheckpointBuilder, Durability};
///
/// let dir = tempfile::tempdir()?;
/// let checkpoint = CheckpointBuilder::new()
///     .durability(Durability::EveryCommit)
///     .compact_at(16 * 1024)
///     .open(dir.path().join("job.checkpoint"))?;
/// assert!(checkpoint.position().is_start());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CheckpointBuilder {
    durability: Durability,
    compact_at: u64,
    before_write: Option<BeforeWrite>,
}

/// A hook run before records are written; see
/// [`CheckpointBuilder::before_write`].
#[derive(Clone)]
pub(crate) struct BeforeWrite(pub(crate) Arc<dyn Fn() -> io::Result<()> + Send + Sync>);

impl std::fmt::Debug for BeforeWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeWrite(..)")
    }
}

impl Default for CheckpointBuilder {
    fn default() -> CheckpointBuilder {
        CheckpointBuilder::new()
    }
}

impl CheckpointBuilder {
    /// The default compaction threshold in bytes.
    pub const DEFAULT_COMPACT_AT: u64 = 32 * 1024;

    /// Default settings: [`Durability::DEFAULT_GROUP`], compaction at 32 KiB.
    #[must_use]
    pub fn new() -> CheckpointBuilder {
        CheckpointBuilder {
            durability: Durability::default(),
            compact_at: CheckpointBuilder::DEFAULT_COMPACT_AT,
            before_write: None,
        }
    }

    /// Runs `hook` before every write of records to the file, and writes
    /// nothing if it fails. A job whose lines have effects that are not
    /// durable yet when the line is committed makes them durable here, once
    /// per write instead of once per line: a downloader that renames each
    /// finished file syncs the output directory in the hook, so a line is
    /// never recorded as finished before its file's name is on disk.
    ///
    /// # Errors
    ///
    /// A failing hook makes the write fail with [`Error::Io`]; the commits
    /// stay in memory for the next write.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use linemark::{Checkpoint, Durability, Position};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let seen = Arc::clone(&calls);
    /// let mut checkpoint = Checkpoint::builder()
    ///     .durability(Durability::EveryCommit)
    ///     .before_write(move || {
    ///         seen.fetch_add(1, Ordering::SeqCst);
    ///         Ok(())
    ///     })
    ///     .open(dir.path().join("job.checkpoint"))?;
    /// checkpoint.commit(Position::start().after(b"a\n"))?;
    /// assert_eq!(calls.load(Ordering::SeqCst), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn before_write(
        &mut self,
        hook: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    ) -> &mut CheckpointBuilder {
        self.before_write = Some(BeforeWrite(Arc::new(hook)));
        self
    }

    pub(crate) fn before_write_hook(
        &mut self,
        hook: Option<BeforeWrite>,
    ) -> &mut CheckpointBuilder {
        self.before_write = hook;
        self
    }

    /// When commits reach the disk.
    pub fn durability(&mut self, durability: Durability) -> &mut CheckpointBuilder {
        self.durability = durability;
        self
    }

    /// Rewrites the file as one compact snapshot once it grows past `bytes`
    /// (or past twice the snapshot's own size, if that is larger).
    pub fn compact_at(&mut self, bytes: u64) -> &mut CheckpointBuilder {
        self.compact_at = bytes;
        self
    }

    /// Opens the checkpoint at `path`, taking its lock and recovering its
    /// state. A missing file is a fresh start; the file is created by the
    /// first write.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when another `Checkpoint` holds the lock,
    /// [`Error::NotACheckpoint`], [`Error::UnsupportedVersion`] or
    /// [`Error::Corrupt`] for a file that cannot be trusted (it is left
    /// untouched), [`Error::Io`] when the file or its lock cannot be read.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref().to_path_buf();
        let lock = take_lock(&path)?;
        let loaded = load(&path)?;
        remove_leftover_temp_files(&path);
        let file = if loaded.exists {
            Some(
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|err| Error::io(Some(&path), "opening the checkpoint", err))?,
            )
        } else {
            None
        };
        Ok(Checkpoint {
            needs_rewrite: !loaded.has_header,
            truncate_to: (loaded.valid_len < loaded.file_len).then_some(loaded.valid_len),
            file_len: loaded.file_len,
            snapshot_len: 0,
            path,
            _lock: lock,
            file,
            durability: self.durability,
            before_write: self.before_write.clone(),
            max_records: self.durability.batch().0,
            max_delay: self.durability.batch().1,
            compact_at: self.compact_at,
            durable: loaded.state.position,
            last_line: LastLine::default(),
            timer: Timer::start(self.durability),
            syncs: 0,
            unsynced: false,
            state: loaded.state,
            pending: Pending::default(),
            abandoned: false,
        })
    }
}

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
/// Commits reach the disk according to the [`Durability`] chosen when
/// opening. [`sync`](Checkpoint::sync) and [`close`](Checkpoint::close) make
/// everything committed durable and report errors; dropping a `Checkpoint`
/// writes what is pending on a best-effort basis, ignoring errors, and syncs
/// it unless the durability is [`Durability::NoSync`]. After a failed
/// write or sync (a full disk, say), the state in memory is kept and the next
/// write replaces the whole file atomically, so no recorded progress is lost.
///
/// # File format
///
/// Text, one record a line, so `tail` and `grep` work on it. Every record
/// ends with ` crc=XXXXXXXX`: the CRC-32 (IEEE) in 8 lowercase hex digits of
/// all bytes of the record before that field. Numbers are decimal, digests 8
/// lowercase hex digits, line numbers 1-based.
///
/// ```text
/// linemark-checkpoint version=1 crc=…                    header, always first
/// pos offset=O line=N len=L digest=D crc=…               lines 1..=N are finished; the next starts at byte O;
///                                                        line N is L bytes long (newline included), digest D
/// done line=N offset=O len=L digest=D crc=…              line N (after the last pos), starting at byte O,
///                                                        L bytes long, digest D, is finished too
/// failed line=N offset=O len=L digest=D attempts=A error="…" crc=…
///                                                        line N failed for good after A attempts
/// resolved line=N crc=…                                  line N, failed before, is now finished
/// ```
///
/// The digest is [`digest`](crate::digest). Error texts are double-quoted
/// with `\\`, `\"`, `\n`, `\r`, `\t` and `\u{…}` escapes. The state is the
/// result of applying the records in order; a `pos` drops the `done` lines it
/// covers. Compaction rewrites the file as the header, one `pos`, and the
/// `done` and `failed` records still in force. `done` and `failed` records
/// carry the line's offset, length and digest so that a later run checks the
/// line is still the same before skipping or retrying it
/// ([`Checkpoint::is_recorded`]).
///
/// Recovery: a damaged or incomplete record that is followed only by other
/// damaged or incomplete data is the torn end of an interrupted write; it is
/// ignored and cut off before the next append. A damaged record followed by
/// a valid one is [`Error::Corrupt`]. A file that does not start with
/// `linemark-checkpoint` is [`Error::NotACheckpoint`] and is never
/// overwritten; an empty file, or a torn header alone, is a fresh start.
///
/// Compatibility: files written in version 1 of the format will be read by
/// every later linemark 0.x and 1.x release. A file of a newer version is
/// refused with [`Error::UnsupportedVersion`], never misread.
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
    path: PathBuf,
    _lock: File,
    /// The checkpoint opened for appending; `None` until the file exists.
    file: Option<File>,
    durability: Durability,
    before_write: Option<BeforeWrite>,
    /// The group limits of `durability`.
    max_records: u32,
    max_delay: Duration,
    compact_at: u64,
    state: State,
    pending: Pending,
    file_len: u64,
    /// Size of the last snapshot written by a rewrite.
    snapshot_len: u64,
    /// Where the valid data ends, when a torn tail follows it.
    truncate_to: Option<u64>,
    /// Set when the file cannot be appended to (missing, torn header, or
    /// after a failed write): the next write replaces it atomically.
    needs_rewrite: bool,
    /// The position known to be on disk (synced).
    durable: Position,
    /// The line committed last by `commit_line`, digested when needed.
    last_line: LastLine,
    /// Marks the group-commit delay as passed.
    timer: Option<Timer>,
    /// Number of successful syncs.
    syncs: u64,
    /// Whether records were written without a sync since the last one.
    unsynced: bool,
    /// Set by tests that simulate a crash: drop writes nothing.
    abandoned: bool,
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
/// assert!(snapshot.done_beyond.is_empty() && snapshot.failed.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Everything before this position is finished.
    pub position: Position,
    /// Lines after `position` that are finished too.
    pub done_beyond: Vec<u64>,
    /// Lines that failed for good, by line number.
    pub failed: Vec<FailedLine>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    position: Position,
    /// Lines finished beyond the position: the position just after each.
    done: BTreeMap<u64, Position>,
    failed: BTreeMap<u64, FailedLine>,
}

impl State {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Header { .. } => {}
            Record::Position(position) => self.advance(position),
            Record::Done(end) => {
                if end.line() > self.position.line() {
                    self.done.insert(end.line(), end);
                }
            }
            Record::Failed(failed) => {
                self.failed.insert(failed.line(), failed);
            }
            Record::Resolved { line } => {
                self.failed.remove(&line);
            }
        }
    }

    fn advance(&mut self, position: Position) {
        self.position = position;
        self.done = self.done.split_off(&(position.line().saturating_add(1)));
    }

    fn snapshot(&self) -> String {
        let mut out = String::new();
        Record::Header { version: VERSION }.encode(&mut out);
        Record::Position(self.position).encode(&mut out);
        for &end in self.done.values() {
            Record::Done(end).encode(&mut out);
        }
        for failed in self.failed.values() {
            Record::Failed(failed.clone()).encode(&mut out);
        }
        out
    }
}

/// The end of the last finished line, kept as the line's bytes so that its
/// digest is computed only when the position is written or asked for.
#[derive(Debug, Default)]
struct LastLine {
    active: bool,
    raw: Vec<u8>,
    number: u64,
    offset: u64,
}

impl LastLine {
    fn end_position(&self) -> Position {
        Line::new(&self.raw, self.number, self.offset).end_position()
    }
}

/// A thread that sets `due` every interval, so that checking the
/// group-commit delay costs an atomic load instead of a clock read.
#[derive(Debug)]
struct Timer {
    due: Arc<AtomicBool>,
    /// Dropping it ends the thread.
    _stop: mpsc::Sender<()>,
}

impl Timer {
    fn start(durability: Durability) -> Option<Timer> {
        let (_, interval) = durability.batch();
        if matches!(durability, Durability::EveryCommit) || interval.is_zero() {
            return None;
        }
        let due = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let flag = Arc::clone(&due);
        std::thread::Builder::new()
            .name("linemark-group-commit".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    flag.store(true, Ordering::Relaxed);
                }
            })
            // Without a thread, the delay is checked with the clock instead.
            .ok()?;
        Some(Timer { due, _stop: stop })
    }
}

/// Commits not yet written.
#[derive(Debug, Default)]
struct Pending {
    position: bool,
    done: Vec<u64>,
    /// `failed` and `resolved` records, in order.
    failed: Vec<Record>,
    count: u32,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The steps of an atomic rewrite, so tests can stop after each.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RewriteStep {
    TempSynced,
    Renamed,
    Done,
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

    /// A builder to choose the durability and compaction threshold.
    #[must_use]
    pub fn builder() -> CheckpointBuilder {
        CheckpointBuilder::new()
    }

    /// The path of the checkpoint file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability chosen when opening.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Everything before this position is finished (the low watermark).
    #[must_use]
    pub fn position(&self) -> Position {
        if self.last_line.active {
            self.last_line.end_position()
        } else {
            self.state.position
        }
    }

    /// Number of lines before the position, without computing a digest.
    fn position_line(&self) -> u64 {
        if self.last_line.active {
            self.last_line.number
        } else {
            self.state.position.line()
        }
    }

    /// Makes `state.position` exact, digesting the last committed line.
    fn settle(&mut self) {
        if self.last_line.active {
            self.state.position = self.last_line.end_position();
            self.last_line.active = false;
        }
    }

    /// Number of syncs so far that made commits durable (for progress
    /// displays: it changes whenever
    /// [`durable_position`](Checkpoint::durable_position) may have).
    #[must_use]
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The newest position known to be on disk: what a crash now would
    /// resume from (at least). Behind [`position`](Checkpoint::position)
    /// while commits wait for their group sync.
    #[must_use]
    pub fn durable_position(&self) -> Position {
        self.durable
    }

    /// Reads the state recorded in a checkpoint file without locking or
    /// changing it, for status displays while a job may be running. A
    /// missing file reads as a fresh start.
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
    /// assert!(snapshot.failed.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inspect(path: impl AsRef<Path>) -> Result<Snapshot> {
        let loaded = load(path.as_ref())?;
        Ok(Snapshot {
            position: loaded.state.position,
            done_beyond: loaded.state.done.into_keys().collect(),
            failed: loaded.state.failed.into_values().collect(),
        })
    }

    /// Lines after [`position`](Checkpoint::position) that are finished too,
    /// in increasing order.
    pub fn done_beyond(&self) -> impl Iterator<Item = u64> + '_ {
        self.state.done.keys().copied()
    }

    /// Whether `line`, beyond the position, is already dealt with: recorded
    /// as done or as failed. A recorded line is checked against the line
    /// read now (offset, length and digest), so lines that moved are never
    /// skipped by mistake.
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the input holds another line under that
    /// number than the one recorded.
    pub fn is_recorded(&self, line: &Line<'_>) -> Result<bool> {
        let number = line.number();
        if let Some(end) = self.state.done.get(&number) {
            let raw = line.raw();
            let same = line.offset() + raw.len() as u64 == end.offset()
                && raw.len() as u64 == end.last_len()
                && crate::position::digest(raw) == end.last_digest();
            if !same {
                return Err(Error::InputChanged {
                    path: None,
                    line: number,
                    offset: line.offset(),
                    expected: crate::line::describe(end.last_len(), end.last_digest(), None),
                    found: crate::line::describe_bytes(raw),
                });
            }
            return Ok(true);
        }
        if let Some(failed) = self.state.failed.get(&number) {
            failed.check(line)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the line with this 1-based number is finished (before the
    /// position, or recorded as done beyond it). Failed lines are not
    /// "finished" here; see [`is_failed`](Checkpoint::is_failed).
    #[must_use]
    pub fn is_done(&self, line: u64) -> bool {
        (line <= self.position_line() && !self.state.failed.contains_key(&line))
            || self.state.done.contains_key(&line)
    }

    /// The highest line number recorded as done beyond the position or as
    /// failed (0 if none): no line after it can be skipped.
    #[must_use]
    pub fn last_recorded_line(&self) -> u64 {
        let done = self.state.done.keys().next_back().copied().unwrap_or(0);
        let failed = self.state.failed.keys().next_back().copied().unwrap_or(0);
        done.max(failed)
    }

    /// Whether the line is recorded as failed.
    #[must_use]
    pub fn is_failed(&self, line: u64) -> bool {
        self.state.failed.contains_key(&line)
    }

    /// The lines that failed for good, by line number.
    pub fn failed(&self) -> impl ExactSizeIterator<Item = &FailedLine> + '_ {
        self.state.failed.values()
    }

    /// Records that everything before `position` is finished.
    ///
    /// Positions normally only move forward. A position before the current
    /// one is recorded as given: the lines after it will be done again.
    ///
    /// # Durability
    ///
    /// Durable when this returns with [`Durability::EveryCommit`]; otherwise
    /// at the next group sync, [`sync`](Checkpoint::sync) or
    /// [`close`](Checkpoint::close).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPosition`] for a position no input can have (lines
    /// are numbered from 1 and are at least one byte long); nothing is
    /// recorded. [`Error::Io`] when a write, sync or compaction due now
    /// fails. The commit is kept in memory and written again by the next
    /// successful write (it may already be on disk, if only the compaction
    /// after it failed).
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
        self.last_line.active = false;
        self.state.advance(position);
        self.pending.position = true;
        self.note_commit()
    }

    /// Records that everything up to and including `line` is finished: the
    /// same as `commit(line.end_position())`, except that the line's digest
    /// is computed only when the position is written (or asked for), so
    /// committing every line of a fast job costs a copy of the line, not a
    /// digest.
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
        if !self.state.done.is_empty() {
            self.state.done = self.state.done.split_off(&(line.number() + 1));
        }
        let last = &mut self.last_line;
        last.raw.clear();
        last.raw.extend_from_slice(line.raw());
        last.number = line.number();
        last.offset = line.offset();
        last.active = true;
        self.pending.position = true;
        self.note_commit()
    }

    /// Records that a line beyond the current position is finished (for
    /// lines that finish out of order), given as the position just after it
    /// ([`Line::end_position`]), so a later run can check it is still the
    /// same line before skipping it. Ignored for a line the position already
    /// covers.
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
        if line <= self.position_line() || self.state.done.insert(line, end).is_some() {
            return Ok(());
        }
        self.pending.done.push(line);
        self.note_commit()
    }

    /// Records a line as failed for good, replacing an earlier record of the
    /// same line.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit).
    pub fn commit_failed(&mut self, failed: FailedLine) -> Result<()> {
        if failed.line() == 0 || failed.len() == 0 {
            return Err(Error::InvalidPosition {
                line: failed.line(),
                offset: failed.offset(),
            });
        }
        self.state.failed.insert(failed.line(), failed.clone());
        self.pending.failed.push(Record::Failed(failed));
        self.note_commit()
    }

    /// Records that a line recorded as failed is now finished.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit).
    pub fn commit_resolved(&mut self, line: u64) -> Result<()> {
        if self.state.failed.remove(&line).is_none() {
            return Ok(());
        }
        self.pending.failed.push(Record::Resolved { line });
        self.note_commit()
    }

    /// Moves the position to where a seek found the input resumes, when
    /// that differs from the recorded one (see [`Position::seek_content`]).
    /// Lines recorded as done beyond the position keep their distance to
    /// it; failed lines keep their records, which are checked against the
    /// input when they are retried.
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
        self.settle();
        let old = self.state.position;
        // Lines and bytes move by the same amount as the position did; a
        // record that would move before the start of the input is dropped
        // (its line was removed). Every moved record is checked against the
        // input before it is relied on.
        let shift = |line: u64, offset: u64| -> Option<(u64, u64)> {
            let line = line.checked_sub(old.line())?.checked_add(position.line())?;
            let offset = (i128::from(offset) - i128::from(old.offset())
                + i128::from(position.offset()))
            .try_into()
            .ok()?;
            Some((line, offset))
        };
        self.state.done = std::mem::take(&mut self.state.done)
            .into_values()
            .filter_map(|end| {
                let (line, offset) = shift(end.line(), end.offset())?;
                let end = Position::from_parts(offset, line, end.last_len(), end.last_digest())?;
                Some((line, end))
            })
            .collect();
        self.state.failed = std::mem::take(&mut self.state.failed)
            .into_values()
            .filter_map(|failed| {
                let line = (i128::from(failed.line()) - i128::from(old.line())
                    + i128::from(position.line()))
                .try_into()
                .ok()
                .filter(|&line: &u64| line > 0)?;
                let offset = (i128::from(failed.offset()) - i128::from(old.offset())
                    + i128::from(position.offset()))
                .try_into()
                .ok()?;
                Some((line, failed.moved(line, offset)))
            })
            .collect();
        self.state.position = position;
        self.needs_rewrite = true;
        self.pending.position = true;
        self.note_commit()
    }

    #[inline(always)]
    fn note_commit(&mut self) -> Result<()> {
        self.pending.count += 1;
        if self.timer.is_none() && self.pending.since.is_none() {
            self.pending.since = Some(Instant::now());
        }
        self.flush_if_due()
    }

    /// Writes (and, unless [`Durability::NoSync`], syncs) the pending
    /// commits if the group limits say they are due. A job whose lines take
    /// long can call this from time to time so the delay limit holds.
    ///
    /// # Durability
    ///
    /// Pending commits that were due are durable when this returns, except
    /// with [`Durability::NoSync`], where they are only written.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the write or sync fails.
    #[inline(always)]
    pub fn flush_if_due(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let due = self.pending.count >= self.max_records
            || match &self.timer {
                Some(timer) => timer.due.load(Ordering::Relaxed),
                None => self
                    .pending
                    .since
                    .is_some_and(|since| since.elapsed() >= self.max_delay),
            };
        if due {
            self.write_pending(self.durability.syncs())?;
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
    /// [`Error::Io`] when the write or the sync fails. The commits stay in
    /// memory; a later `sync` retries them.
    pub fn sync(&mut self) -> Result<()> {
        self.write_pending(true)
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
        let result = self.sync();
        self.abandoned = true;
        result
    }

    /// Appends the pending records, or rewrites the file when appending is
    /// not possible, then compacts if the file grew too large.
    #[cold]
    #[inline(never)]
    fn write_pending(&mut self, sync: bool) -> Result<()> {
        self.settle();
        if let Some(timer) = &self.timer {
            timer.due.store(false, Ordering::Relaxed);
        }
        if self.needs_rewrite || self.file.is_none() {
            return self.rewrite();
        }
        if !self.pending.is_empty() {
            self.run_before_write()?;
        }
        if self.pending.is_empty() && self.truncate_to.is_none() {
            let file = self.file.as_ref().filter(|_| sync && self.unsynced);
            if let Some(file) = file {
                // Records written earlier without a sync (NoSync) are made
                // durable now.
                file.sync_data()
                    .map_err(|err| self.fail("syncing the checkpoint", err))?;
                self.durable = self.state.position;
                self.syncs += 1;
                self.unsynced = false;
            }
            return Ok(());
        }
        let mut out = String::new();
        for record in &self.pending.failed {
            record.encode(&mut out);
        }
        if self.pending.position {
            Record::Position(self.state.position).encode(&mut out);
        }
        for line in &self.pending.done {
            if let Some(&end) = self.state.done.get(line) {
                Record::Done(end).encode(&mut out);
            }
        }
        let Some(file) = self.file.as_mut() else {
            return self.rewrite();
        };
        let mut result = Ok(());
        if let Some(valid_len) = self.truncate_to {
            result = file
                .set_len(valid_len)
                .map_err(|err| ("cutting the torn end of the checkpoint", err));
        }
        if result.is_ok() {
            result = file
                .write_all(out.as_bytes())
                .map_err(|err| ("appending to the checkpoint", err));
        }
        if result.is_ok() && sync {
            result = file
                .sync_data()
                .map_err(|err| ("syncing the checkpoint", err));
        }
        if let Err((action, err)) = result {
            return Err(self.fail(action, err));
        }
        if let Some(valid_len) = self.truncate_to.take() {
            self.file_len = valid_len;
        }
        self.file_len += out.len() as u64;
        self.pending = Pending::default();
        if sync {
            self.durable = self.state.position;
            self.syncs += 1;
        }
        self.unsynced = !sync;
        if self.file_len > self.compact_at.max(2 * self.snapshot_len) {
            self.rewrite()?;
        }
        Ok(())
    }

    fn run_before_write(&self) -> Result<()> {
        match &self.before_write {
            Some(hook) => (hook.0)()
                .map_err(|err| Error::io(Some(&self.path), "running the before-write hook", err)),
            None => Ok(()),
        }
    }

    /// After a failed write or sync the file's contents are uncertain, so
    /// the next write replaces it whole.
    fn fail(&mut self, action: &'static str, err: io::Error) -> Error {
        self.needs_rewrite = true;
        Error::io(Some(&self.path), action, err)
    }

    /// Replaces the file with a snapshot of the state: temp file in the same
    /// directory, `sync_all`, rename, fsync of the directory.
    fn rewrite(&mut self) -> Result<()> {
        self.rewrite_until(RewriteStep::Done)
    }

    fn rewrite_until(&mut self, stop: RewriteStep) -> Result<()> {
        self.settle();
        self.run_before_write()?;
        let snapshot = self.state.snapshot();
        let dir = parent_dir(&self.path);
        let err = |action, err| Error::io(Some(&self.path), action, err);
        let mut temp = tempfile::Builder::new()
            .prefix(&temp_prefix(&self.path))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| err("creating a temporary file for the checkpoint", e))?;
        temp.write_all(snapshot.as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| err("writing the compacted checkpoint", e))?;
        if stop == RewriteStep::TempSynced {
            // Leave the temporary file behind, as a crash would.
            let _ = temp.keep();
            return Ok(());
        }
        temp.persist(&self.path)
            .map_err(|e| err("renaming the compacted checkpoint into place", e.error))?;
        if stop == RewriteStep::Renamed {
            return Ok(());
        }
        sync_dir(dir).map_err(|e| err("syncing the checkpoint's directory", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| err("opening the checkpoint", e))?;
        self.file = Some(file);
        self.file_len = snapshot.len() as u64;
        self.snapshot_len = self.file_len;
        self.truncate_to = None;
        self.needs_rewrite = false;
        self.pending = Pending::default();
        self.durable = self.state.position;
        self.syncs += 1;
        self.unsynced = false;
        Ok(())
    }

    /// Forgets pending commits and drops without writing, as a crash would.
    #[cfg(test)]
    fn crash(mut self) {
        self.abandoned = true;
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if !self.abandoned && !self.pending.is_empty() {
            let _ = self.write_pending(self.durability.syncs());
        }
    }
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

fn lock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

fn take_lock(path: &Path) -> Result<File> {
    let lock_path = lock_path(path);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|err| Error::io(Some(&lock_path), "opening the checkpoint's lock file", err))?;
    // A lock released a moment ago can still be held by a copy of its file
    // descriptor in a child process this process is starting (between fork
    // and exec). Such a copy goes away within milliseconds, so contention is
    // retried briefly before it is reported: still an answer at once, not a
    // wait for the other holder.
    let mut retries = LOCK_RETRIES;
    loop {
        match fs2::FileExt::try_lock_exclusive(&lock) {
            Ok(()) => return Ok(lock),
            Err(err) if err.kind() == fs2::lock_contended_error().kind() => {
                if retries == 0 {
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                    });
                }
                retries -= 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(err) => {
                return Err(Error::io(
                    Some(&lock_path),
                    "locking the checkpoint's lock file",
                    err,
                ));
            }
        }
    }
}

const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(5);

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `.NAME.linemark-tmp.`: the marker keeps the leftovers of checkpoint
/// `a` apart from those of a checkpoint named `a.b` in the same directory.
fn temp_prefix(path: &Path) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".linemark-tmp.");
    prefix
}

/// Removes temporary files left by a rewrite that crashed. Best effort: they
/// are never read, so one that cannot be removed does no harm.
fn remove_leftover_temp_files(path: &Path) {
    let prefix = temp_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        if name.starts_with(prefix) && name.ends_with(b".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing here; the rename is as
        // durable as the platform makes it.
        let _ = dir;
        Ok(())
    }
}

/// What opening found in the file.
struct Loaded {
    state: State,
    exists: bool,
    has_header: bool,
    file_len: u64,
    valid_len: u64,
}

fn load(path: &Path) -> Result<Loaded> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                state: State::default(),
                exists: false,
                has_header: false,
                file_len: 0,
                valid_len: 0,
            });
        }
        Err(err) => return Err(Error::io(Some(path), "opening the checkpoint", err)),
    };
    let read_err = |err| Error::io(Some(path), "reading the checkpoint", err);
    // Check the start before reading a file that may be large and foreign.
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAGIC.len() as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    check_magic(path, &bytes)?;
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let (state, has_header, valid_len) = parse(path, &bytes)?;
    Ok(Loaded {
        state,
        exists: true,
        has_header,
        file_len: bytes.len() as u64,
        valid_len,
    })
}

/// Refuses a file that does not start like a checkpoint. A prefix of the
/// header with nothing after it is a torn header.
fn check_magic(path: &Path, start: &[u8]) -> Result<()> {
    let magic = format!("{MAGIC} ");
    let magic = magic.as_bytes();
    let len = start.len().min(magic.len());
    if start[..len] == magic[..len] {
        Ok(())
    } else {
        Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
        })
    }
}

/// Applies the valid records. Returns the state, whether a valid header was
/// found, and where the valid data ends.
fn parse(path: &Path, bytes: &[u8]) -> Result<(State, bool, u64)> {
    let mut state = State::default();
    let mut has_header = false;
    let mut valid_len = 0u64;
    let mut first_bad: Option<(u64, String)> = None;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some(len) = memchr::memchr(b'\n', &bytes[offset..]) else {
            first_bad.get_or_insert((offset as u64, "incomplete record".into()));
            break;
        };
        let corrupt = |at: usize, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            reason,
        };
        match Record::decode(&bytes[offset..offset + len]) {
            Ok(record) => {
                if let Some((at, reason)) = first_bad.take() {
                    return Err(corrupt(at as usize, reason));
                }
                match record {
                    Record::Header { version } if offset == 0 => {
                        if version != VERSION {
                            return Err(Error::UnsupportedVersion {
                                path: path.to_path_buf(),
                                version,
                                supported: VERSION,
                            });
                        }
                        has_header = true;
                    }
                    Record::Header { .. } => {
                        return Err(corrupt(offset, "a header in the middle of the file".into()));
                    }
                    _ if !has_header => {
                        return Err(corrupt(offset, "a record before the header".into()));
                    }
                    record => state.apply(record),
                }
                valid_len = (offset + len + 1) as u64;
            }
            Err(reason) => {
                first_bad.get_or_insert((offset as u64, reason));
            }
        }
        offset += len + 1;
    }
    Ok((state, has_header, valid_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_strict(path: &Path) -> Checkpoint {
        Checkpoint::builder()
            .durability(Durability::EveryCommit)
            .open(path)
            .unwrap()
    }

    /// The position after line `n` of the input `positions` describes.
    fn done(n: u64) -> Position {
        positions(n as usize)[n as usize - 1]
    }

    fn positions(n: usize) -> Vec<Position> {
        let mut pos = Position::start();
        (0..n)
            .map(|i| {
                pos = pos.after(format!("line number {i}\n").as_bytes());
                pos
            })
            .collect()
    }

    #[test]
    fn missing_file_is_a_fresh_start_and_is_created_by_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = open_strict(&path);
        assert!(checkpoint.position().is_start());
        assert!(!path.exists());
        checkpoint.commit(positions(1)[0]).unwrap();
        assert!(path.exists());
        drop(checkpoint);
        assert_eq!(open_strict(&path).position(), positions(1)[0]);
    }

    #[test]
    fn every_truncation_of_the_last_two_records_recovers_an_earlier_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let all = positions(5);
        let mut checkpoint = open_strict(&path);
        let mut ends = Vec::new();
        for pos in &all {
            checkpoint.commit(*pos).unwrap();
            ends.push(fs::metadata(&path).unwrap().len());
        }
        checkpoint.close().unwrap();
        let full = fs::read(&path).unwrap();
        let from = ends[2] as usize; // start of the second-to-last record
        for cut in from..=full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            // The newest record whose bytes all survived is the one in force.
            let expected = ends.iter().rposition(|&end| end as usize <= cut).unwrap();
            let mut reopened = open_strict(&path);
            assert_eq!(reopened.position(), all[expected], "cut at {cut}");
            // The torn tail is cut on the next write, which then reads back.
            reopened.commit(all[4]).unwrap();
            drop(reopened);
            let text = fs::read(&path).unwrap();
            assert_eq!(open_strict(&path).position(), all[4], "cut at {cut}");
            assert!(parse(&path, &text).unwrap().2 == text.len() as u64);
        }
    }

    #[test]
    fn a_flipped_byte_in_an_earlier_record_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = open_strict(&path);
        for pos in positions(3) {
            checkpoint.commit(pos).unwrap();
        }
        checkpoint.close().unwrap();
        let good = fs::read(&path).unwrap();
        let second_record = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        let last_record = good[..good.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        for at in second_record..last_record {
            if good[at] == b'\n' {
                continue;
            }
            let mut damaged = good.clone();
            damaged[at] ^= 0x20;
            fs::write(&path, &damaged).unwrap();
            match Checkpoint::open(&path) {
                Err(Error::Corrupt { offset, .. }) => {
                    assert!(offset as usize <= at && at - offset as usize <= 80)
                }
                other => panic!("flip at {at}: {other:?}"),
            }
            // The damaged file is left as it was.
            assert_eq!(fs::read(&path).unwrap(), damaged);
        }
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        for content in [&b"hello world\n"[..], b"linemark-checkpointx", b"\0\0\0\0"] {
            fs::write(&path, content).unwrap();
            assert!(
                matches!(Checkpoint::open(&path), Err(Error::NotACheckpoint { .. })),
                "{content:?}"
            );
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut text = String::new();
        Record::Header { version: 2 }.encode(&mut text);
        fs::write(&path, &text).unwrap();
        assert!(matches!(
            Checkpoint::open(&path),
            Err(Error::UnsupportedVersion {
                version: 2,
                supported: 1,
                ..
            })
        ));
    }

    #[test]
    fn an_empty_file_or_torn_header_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        for content in [
            &b""[..],
            b"linemark-chec",
            b"linemark-checkpoint version=1 crc=12",
        ] {
            fs::write(&path, content).unwrap();
            let mut checkpoint = open_strict(&path);
            assert!(checkpoint.position().is_start());
            checkpoint.commit(positions(1)[0]).unwrap();
            drop(checkpoint);
            assert_eq!(open_strict(&path).position(), positions(1)[0]);
        }
    }

    #[test]
    fn crash_during_compaction_at_each_step_leaves_a_valid_checkpoint() {
        for step in [RewriteStep::TempSynced, RewriteStep::Renamed] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c");
            let all = positions(3);
            let mut checkpoint = open_strict(&path);
            checkpoint.commit(all[0]).unwrap();
            checkpoint.commit_done(done(3)).unwrap();
            checkpoint.commit(all[1]).unwrap();
            // The state being compacted is (line 2, done 3).
            checkpoint.rewrite_until(step).unwrap();
            checkpoint.crash();
            let leftovers = fs::read_dir(dir.path()).unwrap().count();
            let reopened = open_strict(&path);
            assert_eq!(reopened.position(), all[1], "{step:?}");
            assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![3]);
            // Temp files left by the crash are removed by the next open.
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 2, "{step:?}: {names:?} (had {leftovers})");
        }
    }

    #[test]
    fn compaction_bounds_the_file_and_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::EveryCommit)
            .compact_at(2048)
            .open(&path)
            .unwrap();
        let all = positions(500);
        let mut max_len = 0;
        for (i, pos) in all.iter().enumerate() {
            checkpoint.commit(*pos).unwrap();
            if i % 7 == 0 {
                checkpoint.commit_done(done(pos.line() + 2)).unwrap();
            }
            max_len = max_len.max(fs::metadata(&path).unwrap().len());
        }
        checkpoint.commit_done(done(502)).unwrap();
        let failed = FailedLine::from_parts(9, 100, 10, 1, 3, "gone".into());
        checkpoint.commit_failed(failed.clone()).unwrap();
        checkpoint.close().unwrap();
        assert!(max_len <= 2048 + 200, "{max_len}");
        let reopened = open_strict(&path);
        assert_eq!(reopened.position(), all[499]);
        assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![502]);
        assert_eq!(reopened.failed().cloned().collect::<Vec<_>>(), vec![failed]);
    }

    #[test]
    fn group_commit_writes_only_the_newest_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::group(100, Duration::from_secs(3600)))
            .open(&path)
            .unwrap();
        let all = positions(250);
        for pos in &all {
            checkpoint.commit(*pos).unwrap();
        }
        // Two groups of 100 were synced: the file holds the header, the first
        // snapshot and one record for the second group.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let on_disk = {
            let (state, _, _) = parse(&path, text.as_bytes()).unwrap();
            state.position
        };
        assert_eq!(on_disk, all[199]);
        checkpoint.close().unwrap();
        assert_eq!(open_strict(&path).position(), all[249]);
    }

    #[test]
    fn the_delay_limit_syncs_a_small_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::group(1_000_000, Duration::ZERO))
            .open(&path)
            .unwrap();
        checkpoint.commit(positions(1)[0]).unwrap();
        checkpoint.crash();
        assert_eq!(open_strict(&path).position(), positions(1)[0]);
    }

    #[test]
    fn the_timer_makes_a_small_group_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::group(1_000_000, Duration::from_millis(20)))
            .open(&path)
            .unwrap();
        assert!(checkpoint.timer.is_some());
        let pos = positions(1)[0];
        checkpoint.commit(pos).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while checkpoint.durable_position() != pos {
            assert!(
                Instant::now() < deadline,
                "the delay never made the group due"
            );
            std::thread::sleep(Duration::from_millis(5));
            checkpoint.flush_if_due().unwrap();
        }
        assert_eq!(checkpoint.sync_count(), 1);
        checkpoint.crash();
        assert_eq!(open_strict(&path).position(), pos);
    }

    #[test]
    fn commit_line_is_commit_of_the_end_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let input = b"one\ntwo\r\nthree";
        let mut lines = crate::LineReader::new(&input[..]);
        let mut checkpoint = Checkpoint::builder()
            .durability(Durability::group(2, Duration::from_secs(3600)))
            .open(&path)
            .unwrap();
        checkpoint.commit_done(done(3)).unwrap();
        let mut expected = Position::start();
        while let Some(line) = lines.next_line().unwrap() {
            expected = expected.after(line.raw());
            checkpoint.commit_line(&line).unwrap();
            assert_eq!(checkpoint.position(), expected);
        }
        assert!(checkpoint.done_beyond().next().is_none());
        drop(checkpoint);
        assert_eq!(open_strict(&path).position(), expected);
    }

    #[test]
    fn unsynced_group_is_lost_by_a_crash_but_not_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let builder = Checkpoint::builder()
            .durability(Durability::group(1_000, Duration::from_secs(3600)))
            .clone();
        let mut checkpoint = builder.open(&path).unwrap();
        checkpoint.commit(positions(1)[0]).unwrap();
        checkpoint.crash();
        assert!(open_strict(&path).position().is_start());
        let mut checkpoint = builder.open(&path).unwrap();
        checkpoint.commit(positions(1)[0]).unwrap();
        drop(checkpoint);
        assert_eq!(open_strict(&path).position(), positions(1)[0]);
    }

    #[test]
    fn done_and_failed_records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let all = positions(6);
        let mut checkpoint = open_strict(&path);
        checkpoint.commit_done(done(3)).unwrap();
        checkpoint.commit_done(done(5)).unwrap();
        checkpoint.commit(all[0]).unwrap();
        checkpoint
            .commit_failed(FailedLine::from_parts(
                2,
                18,
                14,
                7,
                5,
                "bad \"x\"\n".into(),
            ))
            .unwrap();
        checkpoint
            .commit_failed(FailedLine::from_parts(4, 46, 14, 7, 5, "worse".into()))
            .unwrap();
        checkpoint.commit(all[3]).unwrap();
        checkpoint.commit_resolved(4).unwrap();
        drop(checkpoint);
        let reopened = open_strict(&path);
        assert_eq!(reopened.position(), all[3]);
        assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![5]);
        let failed: Vec<_> = reopened.failed().map(|f| (f.line(), f.error())).collect();
        assert_eq!(failed, vec![(2, "bad \"x\"\n")]);
        assert!(reopened.is_done(1) && reopened.is_done(5) && !reopened.is_done(2));
        assert!(reopened.is_failed(2) && !reopened.is_done(6));
    }

    #[test]
    fn rebase_shifts_done_lines_and_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let all = positions(6);
        let mut checkpoint = open_strict(&path);
        checkpoint.commit(all[3]).unwrap();
        checkpoint.commit_done(done(6)).unwrap();
        // The input lost its first two lines: line 4 is now line 2.
        let moved = Position::from_parts(
            all[3].offset() - all[1].offset(),
            2,
            all[3].last_len(),
            all[3].last_digest(),
        )
        .unwrap();
        checkpoint.rebase(moved).unwrap();
        drop(checkpoint);
        let reopened = open_strict(&path);
        assert_eq!(reopened.position(), moved);
        assert_eq!(reopened.done_beyond().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn impossible_positions_are_refused_before_they_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut checkpoint = open_strict(&path);
        for line in [
            Line::new(b"a\n", 0, 0),
            Line::new(b"", 1, 0),
            Line::new(b"a\n", 9, 0),
        ] {
            assert!(matches!(
                checkpoint.commit_line(&line),
                Err(Error::InvalidPosition { .. })
            ));
        }
        let bad = Position::from_parts_unchecked(1, 0, 1, 0);
        assert!(matches!(
            checkpoint.commit(bad),
            Err(Error::InvalidPosition { .. })
        ));
        assert!(matches!(
            checkpoint.commit_done(bad),
            Err(Error::InvalidPosition { .. })
        ));
        let empty = FailedLine::from_parts(1, 0, 0, 0, 1, "x".into());
        assert!(matches!(
            checkpoint.commit_failed(empty),
            Err(Error::InvalidPosition { .. })
        ));
        checkpoint.commit_line(&Line::new(b"a\n", 1, 0)).unwrap();
        drop(checkpoint);
        assert_eq!(open_strict(&path).position().line(), 1);
    }

    #[test]
    fn opening_leaves_the_temp_files_of_a_similarly_named_checkpoint_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join(".a.b.linemark-tmp.XYZ123.tmp");
        let own = dir.path().join(".a.linemark-tmp.XYZ123.tmp");
        fs::write(&other, "in progress").unwrap();
        fs::write(&own, "left by a crash").unwrap();
        let _checkpoint = open_strict(&dir.path().join("a"));
        assert!(other.exists());
        assert!(!own.exists());
    }

    #[test]
    fn a_second_checkpoint_on_the_same_file_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let first = Checkpoint::open(&path).unwrap();
        match Checkpoint::open(&path) {
            Err(Error::Locked { path: locked }) => assert_eq!(locked, path),
            other => panic!("{other:?}"),
        }
        drop(first);
        Checkpoint::open(&path).unwrap();
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Checkpoint>();
        assert_send_sync::<CheckpointBuilder>();
        assert_send_sync::<Position>();
        assert_send_sync::<FailedLine>();
        assert_send_sync::<crate::LineReader<std::io::Cursor<Vec<u8>>>>();
    }
}
