//! Configuring and opening a checkpoint.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::file::{lock_path, remove_leftover_temp_files, resolve, take_lock};
use super::format::Pending;
use super::format::load;
use super::fs::{Fs, RealFs};
use super::slot::{Slot, SlotWriter};
use super::writer::{Core, Inner, Io, Schedule, file_id};
use super::{Checkpoint, Durability, faillog, output};
use crate::error::{Error, Result};

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
    write_delay: Duration,
    compact_at: u64,
    before_write: Option<BeforeWrite>,
    fs: Arc<dyn Fs>,
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

    /// The default write delay: 10 ms.
    pub const DEFAULT_WRITE_DELAY: Duration = Duration::from_millis(10);

    /// Default settings: [`Durability::DEFAULT_GROUP`], a write delay of
    /// 10 ms, compaction at 32 KiB.
    #[must_use]
    pub fn new() -> CheckpointBuilder {
        CheckpointBuilder {
            durability: Durability::default(),
            write_delay: CheckpointBuilder::DEFAULT_WRITE_DELAY,
            compact_at: CheckpointBuilder::DEFAULT_COMPACT_AT,
            before_write: None,
            fs: Arc::new(RealFs),
        }
    }

    /// Runs `hook` before every write of records to the file, and writes
    /// nothing if it fails. A job whose lines have effects that are not
    /// durable yet when the line is committed makes them durable here, once
    /// per write instead of once per line: a downloader that renames each
    /// finished file syncs the output directory in the hook, so a line is
    /// never recorded as finished before its file's name is on disk.
    ///
    /// The hook runs on the thread that writes: the checkpoint's writer
    /// thread for the writes it makes on its own (every few milliseconds
    /// while commits come), its sync thread for a compaction (possibly at
    /// the same time), the job's thread for the writes it makes itself
    /// ([`Checkpoint::sync`], a full group, [`Durability::EveryCommit`]).
    /// A panic in the hook is returned as an error.
    /// The records a write puts in the file are taken before the hook runs,
    /// so every commit they hold was made before the hook started. The
    /// time the hook takes adds to the write delay.
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
    #[must_use = "a builder method returns the changed builder"]
    pub fn before_write(
        mut self,
        hook: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    ) -> CheckpointBuilder {
        self.before_write = Some(BeforeWrite(Arc::new(hook)));
        self
    }

    /// When commits reach the disk.
    #[must_use = "a builder method returns the changed builder"]
    pub fn durability(mut self, durability: Durability) -> CheckpointBuilder {
        self.durability = durability;
        self
    }

    /// How long after it was made a commit is written to the file at most
    /// (handed to the operating system, not synced), whatever the job does
    /// meanwhile: what a kill of the process (SIGKILL, the OOM killer) can
    /// make the job redo, besides the lines in progress. The default is
    /// [`DEFAULT_WRITE_DELAY`](CheckpointBuilder::DEFAULT_WRITE_DELAY), 10 ms.
    /// `Duration::ZERO` writes every commit before it returns (a system
    /// call per commit). With [`Durability::EveryCommit`] every commit is
    /// written and synced at once anyway.
    ///
    /// The writer thread that keeps this bound (and the group's
    /// `max_delay`) wakes every half of the shorter delay, at least every
    /// millisecond; see [`Durability::Group`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use linemark::Checkpoint;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let checkpoint = Checkpoint::builder()
    ///     .write_delay(Duration::from_millis(50))
    ///     .open(dir.path().join("job.checkpoint"))?;
    /// assert_eq!(checkpoint.write_delay(), Duration::from_millis(50));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn write_delay(mut self, delay: Duration) -> CheckpointBuilder {
        self.write_delay = delay;
        self
    }

    /// Routes the checkpoint's file operations through `fs` (tests simulate
    /// power loss with it).
    #[cfg_attr(not(test), allow(dead_code))]
    #[must_use = "a builder method returns the changed builder"]
    pub(crate) fn file_system(mut self, fs: Arc<dyn Fs>) -> CheckpointBuilder {
        self.fs = fs;
        self
    }

    /// Rewrites the file as one compact snapshot once it grows past `bytes`
    /// (or past twice the snapshot's own size, if that is larger).
    #[must_use = "a builder method returns the changed builder"]
    pub fn compact_at(mut self, bytes: u64) -> CheckpointBuilder {
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
        let given = path.as_ref().to_path_buf();
        let path = resolve(&given)
            .map_err(|err| Error::io(Some(&given), "resolving the checkpoint's path", err))?;
        let lock = take_lock(&path, &given)?;
        let fs = Arc::clone(&self.fs);
        let loaded = load(fs.as_ref(), &path)?;
        remove_leftover_temp_files(fs.as_ref(), &path);
        let file = if loaded.exists {
            Some(
                fs.open_append(&path)
                    .map_err(|err| Error::io(Some(&path), "opening the checkpoint", err))?,
            )
        } else {
            None
        };
        // A failure log the checkpoint records is checked, and bytes after
        // its recorded length (never recorded) are cut, before any commit.
        let faillog = match &loaded.state.log {
            Some((name, mark)) => {
                let log_path = faillog::log_path(&path, name);
                let file = faillog::open(fs.as_ref(), &log_path, &given, mark.mark)?;
                let log = output::attach(
                    &log_path,
                    output::Role::FailureLog,
                    file,
                    mark.mark,
                    self.durability.syncs(),
                );
                Some(Arc::clone(log.shared()))
            }
            None => None,
        };
        let position = loaded.state.position;
        let io = Io {
            file,
            file_len: loaded.file_len,
            snapshot_len: 0,
            truncate_to: (loaded.valid_len < loaded.file_len).then_some(loaded.valid_len),
            needs_rewrite: loaded.exists && !loaded.has_header,
            migrate: loaded.state.version < 5 && !loaded.state.passed.is_empty(),
            written: position,
            ..Io::default()
        };
        let inner = Arc::new(Inner {
            path: path.clone(),
            fs,
            slot: Slot::default(),
            core: Mutex::new(Core {
                state: loaded.state,
                pending: Pending::default(),
                folded: 0,
                durable: position,
            }),
            io: Mutex::new(io),
            sync_lock: Mutex::new(()),
            error: Mutex::new(None),
            syncs: AtomicU64::new(0),
            before_write: self.before_write.clone(),
            compact_at: self.compact_at,
            requests: Mutex::new(None),
            sync_requested: AtomicBool::new(false),
            compact_requested: AtomicBool::new(false),
            input: Mutex::new(None),
            prefix: Mutex::new(None),
            prefix_grew: AtomicBool::new(false),
            lock_id: lock.metadata().ok().and_then(|meta| file_id(&meta)),
            lock_path: lock_path(&path),
            lock_lost: AtomicBool::new(false),
            outputs: Mutex::new(Vec::new()),
            faillog: Mutex::new(faillog),
            sync_logs: self.durability.syncs(),
            looked: AtomicBool::new(false),
        });
        let (max_records, max_delay) = self.durability.batch();
        let every_commit = matches!(self.durability, Durability::EveryCommit);
        // A group whose delay is zero syncs every commit, as EveryCommit.
        let sync_each = every_commit || (self.durability.syncs() && max_delay.is_zero());
        let write_each = sync_each || self.write_delay.is_zero();
        let schedule = Schedule {
            write_delay: (!write_each).then_some(self.write_delay),
            sync_delay: (self.durability.syncs() && !sync_each).then_some(max_delay),
        };
        let service_at = if write_each { 1 } else { max_records };
        let line = inner.lock_core().state.position.line();
        Ok(Checkpoint {
            given,
            line,
            slot: SlotWriter::new(&inner.slot),
            inner,
            durability: self.durability,
            write_delay: if every_commit {
                Duration::ZERO
            } else {
                self.write_delay
            },
            count: 0,
            // The first commit takes the slow path, which starts the
            // threads: opening a checkpoint to read it (a resume, a status
            // display) starts none.
            service_at: 0,
            group_service_at: service_at,
            max_records: if sync_each { 1 } else { max_records },
            schedule: Some(schedule),
            background: None,
            _lock: lock,
            abandoned: false,
            outputs: Vec::new(),
        })
    }
}
