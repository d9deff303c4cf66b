//! Writing a checkpoint: the state shared between the committing thread and
//! the background threads, appending, syncing and compacting, and the two
//! threads that keep both time bounds without any call from the job.
//!
//! # Two threads, so a slow sync never delays a write
//!
//! The writer thread wakes every half `write_delay`, folds what was
//! committed since into the shared state and appends it: a `write`, which
//! costs microseconds. Everything that waits for the disk (a sync, a
//! compaction with its `sync_all`, rename and directory sync) runs on the
//! sync thread, which the writer thread asks when the oldest unsynced commit
//! nears the group's `max_delay` or the file grows past its limit. An
//! `fdatasync` that takes 300 ms on a loaded machine then delays no write.
//!
//! A sync runs on a second handle of the file, without the `io` lock, and
//! claims durable only what was appended before it started. A compaction
//! takes its snapshot, writes and syncs it to a temporary file without the
//! lock, then, under the lock, appends to the temporary file what the
//! writer thread appended meanwhile and renames it into place: a kill at any
//! moment leaves a file with every record written so far. Syncs and
//! compactions take `sync_lock`, so a sync never makes a record of the old
//! file durable that a compaction's rename then drops.
//!
//! A compaction holds `sync_lock` for as long as it waits for the disk (a
//! `sync_all` and a directory sync, milliseconds), so a sync asked for
//! meanwhile waits that long: the sync bound is `max_delay` plus the time
//! of one sync and, rarely, of one compaction.
//!
//! Lock order: `sync_lock`, then `io`, then `core`. `core` is never held
//! during file I/O, so a commit never waits for the disk.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::BeforeWrite;
use super::file::{parent_dir, temp_prefix};
use super::format::{LogMark, Marks, OutputMark, Pending, Record, State};
use super::fs::{Fs, FsFile};
use super::output::OutputShared;
use super::prefix::{Catch, PrefixReader};
use super::slot::{HAS_ERROR, Located, Mark, Published, Slot, SlotWriter, WANT_FOLD, fingerprint};
use crate::error::{Error, Result};
use crate::position::Position;

/// What the committing thread and the background threads share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) slot: Slot,
    pub(crate) core: Mutex<Core>,
    pub(crate) io: Mutex<Io>,
    /// Held by every sync and compaction.
    pub(crate) sync_lock: Mutex<()>,
    /// An error of a background thread, returned by the next call.
    pub(crate) error: Mutex<Option<Error>>,
    pub(crate) syncs: AtomicU64,
    pub(crate) before_write: Option<BeforeWrite>,
    pub(crate) compact_at: u64,
    /// Asks the sync thread for work; `None` without background threads.
    pub(crate) requests: Mutex<Option<mpsc::Sender<Request>>>,
    /// A request is on its way to the sync thread and not yet taken up.
    pub(crate) sync_requested: AtomicBool,
    pub(crate) compact_requested: AtomicBool,
    /// The input that located lines are read back from.
    pub(crate) input: Mutex<Option<ReadBack>>,
    /// The input read again to extend the prefix; a handle of its own, so
    /// reading it never holds up a read-back.
    pub(crate) prefix: Mutex<Option<PrefixReader>>,
    /// The prefix grew since the last write took it.
    pub(crate) prefix_grew: AtomicBool,
    /// The lock file, and the identity (device, inode) of the file the lock
    /// was taken on, to notice that it was deleted or replaced.
    pub(crate) lock_path: PathBuf,
    pub(crate) lock_id: Option<(u64, u64)>,
    /// Set once the lock was found lost: nothing is written any more.
    pub(crate) lock_lost: AtomicBool,
    /// The outputs attached, by index.
    pub(crate) outputs: Mutex<Vec<Arc<OutputShared>>>,
    /// The failure log, once the checkpoint has one.
    pub(crate) faillog: Mutex<Option<Arc<OutputShared>>>,
    /// Whether the failure log is synced before the records that record
    /// its length (unless the durability is `NoSync`).
    pub(crate) sync_logs: bool,
    /// Set at every look of the writer thread: a loop that keeps finished
    /// lines waiting (see `Deferred` in the runner) records them when it
    /// sees it, so none waits much longer than a look.
    pub(crate) looked: AtomicBool,
}

/// The identity of a file: device and inode (Unix); `None` elsewhere, where
/// an open file cannot be deleted anyway.
pub(crate) fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file): one
/// positioned read where the platform has them, not a seek and reads.
fn read_back(file: &mut File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut raw = vec![0; len];
    let mut filled = 0;
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        while filled < len {
            match FileExt::read_at(file, &mut raw[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        file.seek(SeekFrom::Start(offset))?;
        while filled < len {
            match file.read(&mut raw[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
    raw.truncate(filled);
    Ok(raw)
}

/// A second handle on the input, to read a committed line back by its place.
#[derive(Debug)]
pub(crate) struct ReadBack {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

/// The state and the commits not yet written.
#[derive(Debug, Default)]
pub(crate) struct Core {
    pub(crate) state: State,
    pub(crate) pending: Pending,
    /// The slot sequence number whose line `state` includes.
    pub(crate) folded: u64,
    /// The newest position known to be synced.
    pub(crate) durable: Position,
}

/// The file and what is known of its contents.
#[derive(Debug, Default)]
pub(crate) struct Io {
    /// The checkpoint opened for appending; `None` until the file exists.
    pub(crate) file: Option<Box<dyn FsFile>>,
    pub(crate) file_len: u64,
    /// Size of the last snapshot written by a rewrite.
    pub(crate) snapshot_len: u64,
    /// Where the valid data ends, when a torn tail follows it.
    pub(crate) truncate_to: Option<u64>,
    /// Set when the file cannot be appended to (a torn header, or after a
    /// failed write): the next write replaces it atomically.
    pub(crate) needs_rewrite: bool,
    /// The position as of the last write.
    pub(crate) written: Position,
    /// Appends so far: append `n` is the `n`-th.
    pub(crate) appended: u64,
    /// The appends not known to be synced, each with the time its oldest
    /// commit was first seen, oldest first.
    pub(crate) unsynced: VecDeque<(u64, Instant)>,
    /// The file was created or renamed into place and its directory is
    /// not synced yet.
    pub(crate) dir_unsynced: bool,
    /// Bytes appended since a running compaction took its snapshot.
    pub(crate) compacting: Option<Vec<u8>>,
    /// Bumped whenever `file` is replaced.
    pub(crate) generation: u64,
    /// When the writer thread first saw commits not yet written.
    pub(crate) seen_since: Option<Instant>,
    /// A sync of this file failed: what it held may never reach the disk
    /// (Linux reports a failed writeback once, then calls the pages clean),
    /// so no later sync of the same file may claim it. Only a rewrite
    /// clears it.
    pub(crate) sync_failed: bool,
    /// Records taken from `pending` by a write that stopped before touching
    /// the file (its before-write hook failed): the next append writes them
    /// first.
    pub(crate) carried: String,
    /// The file is of a format version before the failure log and records
    /// failed lines behind its position: the first write replaces it
    /// whole, in the current version (its `failed` records cannot be
    /// undone by appending).
    pub(crate) migrate: bool,
    /// The prefix grew since its last record.
    pub(crate) prefix_unrecorded: bool,
    /// When the last `prefix` record was taken into a write.
    pub(crate) prefix_recorded: Option<Instant>,
}

impl Io {
    /// Whether a write has something to do.
    pub(crate) fn has_unwritten(&self, core: &Core) -> bool {
        !core.pending.is_empty()
            || !self.carried.is_empty()
            || self.needs_rewrite
            || !core.state.passed.is_empty()
            || !core.state.unsettled.is_empty()
    }
}

/// Work for the sync thread.
#[derive(Debug)]
pub(crate) enum Request {
    Sync,
    Compact,
    Stop,
}

/// The steps of an atomic rewrite, so tests can stop after each.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RewriteStep {
    TempSynced,
    Renamed,
    Done,
}

/// What one write is to put in the file, taken from the state before the
/// before-write hook runs: a commit made after the hook started may have
/// effects the hook did not make durable.
enum Plan {
    Nothing,
    Create(String),
    Append(String),
    Rewrite(String),
}

impl Inner {
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_io(&self) -> MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_sync(&self) -> MutexGuard<'_, ()> {
        self.sync_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks, before a write or sync, that the lock path still names the
    /// file this checkpoint locked. A lock file deleted during the run would
    /// let a second run take a new lock and write alongside.
    fn check_lock(&self) -> Result<()> {
        let lost = || Error::LockLost {
            path: self.lock_path.clone(),
        };
        if self.lock_lost.load(Ordering::Acquire) {
            return Err(lost());
        }
        if let Some(id) = self.lock_id {
            let now = std::fs::metadata(&self.lock_path)
                .ok()
                .and_then(|meta| file_id(&meta));
            if now != Some(id) {
                self.lock_lost.store(true, Ordering::Release);
                return Err(lost());
            }
        }
        Ok(())
    }

    pub(crate) fn io_error(&self, action: &'static str, err: io::Error) -> Error {
        Error::io(Some(&self.path), action, err)
    }

    /// Takes the error of a background thread, if one waits.
    pub(crate) fn take_error(&self) -> Option<Error> {
        if self.slot.signal.load(Ordering::Acquire) & HAS_ERROR == 0 {
            return None;
        }
        // The flag changes only with the mutex held, so an error stored
        // meanwhile is never left behind with the flag clear.
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        self.slot.signal.fetch_and(!HAS_ERROR, Ordering::AcqRel);
        slot.take()
    }

    pub(crate) fn put_error(&self, error: Error) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        // The first error is the cause; later ones are its consequences.
        slot.get_or_insert(error);
        self.slot.signal.fetch_or(HAS_ERROR, Ordering::AcqRel);
    }

    pub(crate) fn has_error(&self) -> bool {
        self.slot.signal.load(Ordering::Acquire) & HAS_ERROR != 0
    }

    /// Folds a line the committing thread published into the state.
    fn fold(&self, core: &mut Core, published: Published) -> Result<()> {
        if published.seq > core.folded {
            if let Some(mark) = published.mark {
                let end = self.resolve(mark)?;
                for failed in core.state.advance(end) {
                    core.pending.failed.push(Record::Failed(failed));
                }
                core.state.raise_outputs(published.lens.into_iter());
                core.pending.position = true;
            }
            core.folded = published.seq;
        }
        Ok(())
    }

    /// The position after a published line, reading a located one back
    /// from the input and checking its fingerprint.
    fn resolve(&self, mark: Mark) -> Result<Position> {
        let located = match mark {
            Mark::End(end) => return Ok(end),
            Mark::Located(located) => located,
        };
        let Located {
            number,
            offset,
            len,
            fingerprint: expected,
        } = located;
        let mut input = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(input) = input.as_mut() else {
            return Err(Error::InvalidPosition {
                line: number,
                offset,
            });
        };
        let read_err = |err| Error::io(Some(&input.path), "reading a committed line back", err);
        let raw = read_back(&mut input.file, offset, len).map_err(read_err)?;
        if raw.len() as u64 != len || fingerprint(&raw) != expected {
            return Err(Error::InputChanged {
                path: Some(input.path.clone()),
                line: number,
                offset,
                expected: format!("the {len}-byte line committed while the job ran"),
                found: crate::scan::describe_bytes(&raw),
            });
        }
        Ok(crate::line::Line::new(&raw, number, offset).end_position())
    }

    /// The committing thread folds its own published line (no race: it is
    /// the slot's only writer).
    pub(crate) fn fold_own(&self, core: &mut Core, slot: &SlotWriter) -> Result<()> {
        if slot.seq() > core.folded {
            let mark = slot.mark(&self.slot);
            self.fold(
                core,
                Published {
                    seq: slot.seq(),
                    mark,
                    lens: slot.lens(),
                },
            )?;
        }
        Ok(())
    }

    /// The writer thread folds the newest published line into the state,
    /// asking the committing thread to do it if it keeps committing too
    /// fast to be read.
    fn fold_published(&self) -> Result<()> {
        loop {
            {
                let mut core = self.lock_core();
                if self.slot.seq() == core.folded {
                    return Ok(());
                }
                if let Some(published) = self.slot.try_read() {
                    return self.fold(&mut core, published);
                }
            }
            self.slot.signal.fetch_or(WANT_FOLD, Ordering::AcqRel);
            for _ in 0..64 {
                std::thread::yield_now();
                if self.slot.signal.load(Ordering::Acquire) & WANT_FOLD == 0 {
                    return Ok(());
                }
                if let Some(published) = self.slot.try_read() {
                    let folded = self.fold(&mut self.lock_core(), published);
                    self.slot.signal.fetch_and(!WANT_FOLD, Ordering::AcqRel);
                    return folded;
                }
            }
        }
    }

    /// Writes what is pending, without syncing: appends the records, or
    /// creates the file, or replaces it when it cannot be appended to. The
    /// caller has folded the published line. `seen` is when the oldest of
    /// the commits written was first seen, for the sync deadline.
    pub(crate) fn write(&self, io: &mut Io, seen: Instant, prefix: Catch) -> Result<()> {
        self.check_lock()?;
        self.record_prefix(io, prefix);
        self.settle_behind()?;
        let (plan, position, marks) = {
            let mut core = self.core_with_log(io)?;
            self.move_passed(&mut core)?;
            let appends =
                !core.pending.is_empty() || !io.carried.is_empty() || io.truncate_to.is_some();
            let plan = if io.needs_rewrite || (io.migrate && appends) {
                io.needs_rewrite = true;
                Plan::Rewrite(core.state.snapshot())
            } else if io.file.is_none() {
                Plan::Create(core.state.snapshot())
            } else if appends {
                let mut out = std::mem::take(&mut io.carried);
                out.push_str(&core.pending.encode(&core.state));
                Plan::Append(out)
            } else {
                Plan::Nothing
            };
            if matches!(plan, Plan::Create(_) | Plan::Rewrite(_)) {
                // A snapshot holds everything.
                io.carried.clear();
            }
            if !matches!(plan, Plan::Nothing) {
                core.pending = Pending::default();
            }
            (plan, core.state.position, core.state.marks())
        };
        let out = match plan {
            Plan::Nothing => return Ok(()),
            Plan::Rewrite(mut snapshot) => {
                // `needs_rewrite` stays set until the rewrite is done.
                snapshot.push_str(&self.seal(&marks)?);
                return self.rewrite(io, snapshot, position, RewriteStep::Done);
            }
            Plan::Create(out) | Plan::Append(out) => out,
        };
        // The outputs' bytes the records cover reach the file (and the
        // disk) before the records, as the hook's effects do.
        let sealed = self
            .seal(&marks)
            .and_then(|seal| self.run_before_write().map(|()| seal));
        let out = match sealed {
            Ok(seal) => out + &seal,
            Err(error) => {
                // Nothing reached the file: the records wait for the next
                // write (a file not created yet is created from the state
                // then).
                if io.file.is_some() {
                    io.carried = out;
                }
                // The marks are the state's, written by the next write even
                // with no record to carry (a cursor moved, a `resolved`
                // record appended to the failure log, a clean end).
                let mut core = self.lock_core();
                core.pending.log |= core.state.log.is_some();
                core.pending.outputs |= !core.state.outputs.is_empty();
                return Err(error);
            }
        };
        let created = io.file.is_none();
        if created {
            let file = self
                .fs
                .create_new(&self.path)
                .map_err(|err| self.io_error("creating the checkpoint", err))?;
            io.file = Some(file);
            io.file_len = 0;
            io.generation += 1;
            io.dir_unsynced = true;
        }
        if let Err(error) = self.append(io, &out) {
            // Part of the records may be in the file: replace it whole with
            // the state, which holds them all, at the next write.
            io.needs_rewrite = true;
            return Err(error);
        }
        if created {
            self.placed();
        }
        io.written = position;
        io.appended += 1;
        io.unsynced.push_back((io.appended, seen));
        if let Some(compacting) = io.compacting.as_mut() {
            compacting.extend_from_slice(out.as_bytes());
        }
        Ok(())
    }

    /// The records that close a group of records written with the outputs
    /// and the failure log at `marks`: the failure log's `failures` record
    /// and the `out` record. Each file's bytes up to its length are written
    /// (and synced) first. Empty without outputs and failure log.
    pub(crate) fn seal(&self, marks: &Marks) -> Result<String> {
        if marks.lens.is_empty() && marks.log.is_none() {
            return Ok(String::new());
        }
        let mut out = String::new();
        if let Some(log) = marks.log {
            let faillog = self
                .faillog
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let Some(faillog) = faillog else {
                return Err(self.io_error(
                    "recording the failure log",
                    io::Error::other("the failure log is not open"),
                ));
            };
            let mark = faillog.seal(log.mark.len)?;
            Record::Failures(LogMark { mark, ..log }).encode(&mut out);
        }
        let outputs = self
            .outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if outputs.len() < marks.lens.len() {
            return Err(self.unattached());
        }
        let lens = outputs
            .iter()
            .zip(&marks.lens)
            .map(|(output, &len)| output.seal(len))
            .collect::<Result<Vec<OutputMark>>>()?;
        Record::Out {
            marks: lens,
            closed: marks.closed,
        }
        .encode(&mut out);
        Ok(out)
    }

    /// Applies the commits behind the position that could not look in the
    /// failure log when they were made (see `Checkpoint::commit_behind`).
    pub(crate) fn settle_behind(&self) -> Result<()> {
        loop {
            let (line, mark) = {
                let core = self.lock_core();
                let Some(&(line, _)) = core.state.unsettled.first() else {
                    return Ok(());
                };
                (line, core.state.log_mark())
            };
            let faillog = self
                .faillog
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let found = match (&faillog, mark) {
                (Some(faillog), Some(mark)) => super::failures::find_behind(faillog, mark, line)?,
                _ => super::failures::Behind::Absent,
            };
            let mut core = self.lock_core();
            let (line, failed) = core.state.unsettled.remove(0);
            super::failures::apply_behind(&mut core.state, faillog.as_ref(), line, failed, found);
        }
    }

    /// The state, with a failure log if failed lines wait for one: a line
    /// the position passes between the log's creation and this lock is
    /// taken to the log by the same write, never left behind a position
    /// that the write records.
    fn core_with_log(&self, io: &mut Io) -> Result<MutexGuard<'_, Core>> {
        loop {
            self.ensure_log(io)?;
            let core = self.lock_core();
            if core.state.passed.is_empty() || core.state.log.is_some() {
                return Ok(core);
            }
        }
    }

    /// Creates the failure log when failed lines are to go to it and there
    /// is none yet. The file's name is synced before a record names it;
    /// the declaration goes in a snapshot (the file is rewritten in the
    /// current format version).
    pub(crate) fn ensure_log(&self, io: &mut Io) -> Result<()> {
        {
            let core = self.lock_core();
            if core.state.passed.is_empty() || core.state.log.is_some() {
                return Ok(());
            }
        }
        let name = super::faillog::log_name(&self.path);
        let path = super::faillog::log_path(&self.path, &name);
        let file = super::faillog::create(self.fs.as_ref(), &path)?;
        let log = super::output::attach(
            &path,
            super::output::Role::FailureLog,
            file,
            OutputMark::default(),
            self.sync_logs,
        );
        *self.faillog.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::clone(log.shared()));
        self.lock_core().state.log = Some((name, LogMark::default()));
        io.needs_rewrite = true;
        Ok(())
    }

    /// Moves the failed lines the position passed to the failure log's
    /// buffer; the group being written records the log's new length.
    pub(crate) fn move_passed(&self, core: &mut Core) -> Result<()> {
        if core.state.passed.is_empty() {
            return Ok(());
        }
        let faillog = self
            .faillog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (Some(faillog), Some((_, mark))) = (faillog, core.state.log.as_mut()) else {
            // Not created yet (a commit after `ensure_log` looked): they
            // wait for the next write.
            return Ok(());
        };
        let mut text = String::new();
        let passed = std::mem::take(&mut core.state.passed);
        mark.count += passed.len() as u64;
        for failed in passed {
            Record::Failed(failed).encode(&mut text);
        }
        faillog.buffer(text.as_bytes());
        mark.mark.len = faillog.appended();
        Ok(())
    }

    /// The error for a write while an output the checkpoint records is not
    /// attached.
    #[cold]
    pub(crate) fn unattached(&self) -> Error {
        let attached = self
            .outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let core = self.lock_core();
        let path = core
            .state
            .outputs
            .get(attached)
            .map_or_else(PathBuf::new, |(path, _)| PathBuf::from(path));
        Error::OutputChanged {
            path,
            checkpoint: self.path.clone(),
            reason: "the checkpoint records results in this output, and it is not attached: \
                     attach it before the first commit (Checkpoint::output, Runner::output)"
                .into(),
        }
    }

    /// A file written from a snapshot is in place: it is of the current
    /// format version.
    fn placed(&self) {
        self.lock_core().state.version = super::format::VERSION;
    }

    fn append(&self, io: &mut Io, out: &str) -> Result<()> {
        let Some(file) = io.file.as_mut() else {
            return Ok(());
        };
        let mut result = Ok(());
        if let Some(valid_len) = io.truncate_to {
            result = file
                .set_len(valid_len)
                .map_err(|err| ("cutting the torn end of the checkpoint", err));
        }
        if result.is_ok() {
            result = file
                .write_all(out.as_bytes())
                .map_err(|err| ("appending to the checkpoint", err));
        }
        if let Err((action, err)) = result {
            return Err(self.io_error(action, err));
        }
        if let Some(valid_len) = io.truncate_to.take() {
            io.file_len = valid_len;
        }
        io.file_len += out.len() as u64;
        Ok(())
    }

    /// Whether the file grew past its limit.
    pub(crate) fn wants_compaction(io: &Io, compact_at: u64) -> bool {
        io.file.is_some() && io.file_len > compact_at.max(2 * io.snapshot_len)
    }

    /// Makes every write so far durable: an `fdatasync` on a second handle
    /// of the file, so the writer thread can append meanwhile, and a sync
    /// of the directory if the file's name is new.
    pub(crate) fn sync_to_disk(&self) -> Result<()> {
        let _sync = self.lock_sync();
        self.check_lock()?;
        let (handle, upto, position, dir, generation) = {
            let mut io = self.lock_io();
            if io.sync_failed {
                // Data this file held may never reach the disk: replace it
                // whole, synced. (A file that only needs a rewrite because
                // an append failed still holds its earlier records intact,
                // and syncing them is right.)
                let (mut snapshot, position, marks) = {
                    let mut core = self.core_with_log(&mut io)?;
                    self.move_passed(&mut core)?;
                    core.pending = Pending::default();
                    (
                        core.state.snapshot(),
                        core.state.position,
                        core.state.marks(),
                    )
                };
                snapshot.push_str(&self.seal(&marks)?);
                return self.rewrite(&mut io, snapshot, position, RewriteStep::Done);
            }
            if io.unsynced.is_empty() && !io.dir_unsynced {
                return Ok(());
            }
            let Some(file) = io.file.as_ref() else {
                return Ok(());
            };
            let handle = file.try_clone();
            let handle = match handle {
                Ok(handle) => handle,
                Err(err) => {
                    io.needs_rewrite = true;
                    return Err(self.io_error("syncing the checkpoint", err));
                }
            };
            (
                handle,
                io.appended,
                io.written,
                io.dir_unsynced,
                io.generation,
            )
        };
        let mut handle = handle;
        // The files whose lengths the records hold first (with `NoSync`,
        // not synced when sealed).
        let mut result = self.sync_attached();
        if result.is_ok() {
            result = handle
                .sync_data()
                .map_err(|err| self.io_error("syncing the checkpoint", err));
        }
        if result.is_ok() && dir {
            result = self
                .fs
                .sync_dir(parent_dir(&self.path))
                .map_err(|err| self.io_error("syncing the checkpoint's directory", err));
        }
        let mut io = self.lock_io();
        if let Err(err) = result {
            // What reached the disk is uncertain: replace the file whole.
            if io.generation == generation {
                io.sync_failed = true;
                io.needs_rewrite = true;
            }
            return Err(err);
        }
        if io.generation == generation {
            if dir {
                io.dir_unsynced = false;
            }
            self.synced(&mut io, upto, position);
        }
        Ok(())
    }

    /// Syncs the outputs' and the failure log's written bytes.
    fn sync_attached(&self) -> Result<()> {
        let outputs = self
            .outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let faillog = self
            .faillog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for file in outputs.iter().chain(&faillog) {
            file.sync_written()?;
        }
        Ok(())
    }

    /// Records that the appends up to `upto`, which leave the file at
    /// `position`, are durable.
    fn synced(&self, io: &mut Io, upto: u64, position: Position) {
        while io
            .unsynced
            .front()
            .is_some_and(|&(append, _)| append <= upto)
        {
            io.unsynced.pop_front();
        }
        let mut core = self.lock_core();
        if core.durable != position {
            core.durable = position;
        }
        drop(core);
        self.syncs.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs the hook; a panic in it is an error like any other, not the
    /// silent end of a background thread.
    fn run_before_write(&self) -> Result<()> {
        let Some(hook) = &self.before_write else {
            return Ok(());
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (hook.0)()));
        let result =
            ran.unwrap_or_else(|_| Err(io::Error::other("the before-write hook panicked")));
        result.map_err(|err| self.io_error("running the before-write hook", err))
    }

    /// Replaces the file with a snapshot of the state without holding the
    /// `io` lock while it waits for the disk; see the module docs.
    pub(crate) fn compact(&self) -> Result<()> {
        let _sync = self.lock_sync();
        self.check_lock()?;
        let taken = {
            let mut io = self.lock_io();
            if !Inner::wants_compaction(&io, self.compact_at) || io.needs_rewrite {
                return Ok(());
            }
            let core = self.lock_core();
            if !core.state.passed.is_empty() {
                // The next write moves them (and may create the log).
                return Ok(());
            }
            let taken = (
                core.state.snapshot(),
                core.state.position,
                io.appended,
                io.generation,
                core.state.marks(),
            );
            drop(core);
            io.compacting = Some(Vec::new());
            taken
        };
        let (mut snapshot, position, upto, generation, marks) = taken;
        let result = self.seal(&marks).and_then(|seal| {
            snapshot.push_str(&seal);
            self.write_snapshot(&snapshot)
        });
        let mut io = self.lock_io();
        let compacting = io.compacting.take();
        let (temp, mut file) = result?;
        if io.generation != generation {
            // The file was replaced meanwhile (a rewrite after a failure).
            let _ = self.fs.remove(&temp);
            return Ok(());
        }
        let delta = compacting.unwrap_or_default();
        let placed = file
            .write_all(&delta)
            .map_err(|err| self.io_error("writing the compacted checkpoint", err))
            .and_then(|()| {
                self.fs.rename(&temp, &self.path).map_err(|err| {
                    self.io_error("renaming the compacted checkpoint into place", err)
                })
            });
        if let Err(err) = placed {
            let _ = self.fs.remove(&temp);
            return Err(err);
        }
        io.file = Some(file);
        self.placed();
        io.file_len = (snapshot.len() + delta.len()) as u64;
        io.snapshot_len = snapshot.len() as u64;
        io.truncate_to = None;
        io.sync_failed = false;
        io.generation += 1;
        io.dir_unsynced = true;
        let generation = io.generation;
        drop(io);
        let dir = self
            .fs
            .sync_dir(parent_dir(&self.path))
            .map_err(|err| self.io_error("syncing the checkpoint's directory", err));
        let mut io = self.lock_io();
        if let Err(err) = dir {
            io.needs_rewrite = true;
            return Err(err);
        }
        if io.generation == generation {
            io.dir_unsynced = false;
            // The snapshot is durable; what was appended after it is not.
            self.synced(&mut io, upto, position);
        }
        Ok(())
    }

    /// Runs the hook, then writes `snapshot` to a new temporary file and
    /// syncs it.
    fn write_snapshot(&self, snapshot: &str) -> Result<(PathBuf, Box<dyn FsFile>)> {
        self.run_before_write()?;
        let dir = parent_dir(&self.path);
        let (temp, mut file) = self
            .fs
            .create_temp(dir, &temp_prefix(&self.path))
            .map_err(|e| self.io_error("creating a temporary file for the checkpoint", e))?;
        if let Err(e) = file
            .write_all(snapshot.as_bytes())
            .and_then(|()| file.sync_all())
        {
            let _ = self.fs.remove(&temp);
            return Err(self.io_error("writing the compacted checkpoint", e));
        }
        Ok((temp, file))
    }

    /// Replaces the file with `snapshot` while holding the `io` lock (the
    /// rare case: the file cannot be appended to): temp file in the same
    /// directory, `sync_all`, rename, sync of the directory.
    pub(crate) fn rewrite(
        &self,
        io: &mut Io,
        snapshot: String,
        position: Position,
        stop: RewriteStep,
    ) -> Result<()> {
        io.needs_rewrite = true;
        let (temp, file) = self.write_snapshot(&snapshot)?;
        if stop == RewriteStep::TempSynced {
            // Leave the temporary file behind, as a crash would.
            return Ok(());
        }
        if let Err(e) = self.fs.rename(&temp, &self.path) {
            let _ = self.fs.remove(&temp);
            return Err(self.io_error("renaming the compacted checkpoint into place", e));
        }
        self.placed();
        if stop == RewriteStep::Renamed {
            return Ok(());
        }
        self.fs
            .sync_dir(parent_dir(&self.path))
            .map_err(|e| self.io_error("syncing the checkpoint's directory", e))?;
        io.file = Some(file);
        io.file_len = snapshot.len() as u64;
        io.snapshot_len = io.file_len;
        io.truncate_to = None;
        io.needs_rewrite = false;
        io.migrate = false;
        io.sync_failed = false;
        io.dir_unsynced = false;
        io.generation += 1;
        io.written = position;
        io.appended += 1;
        let upto = io.appended;
        self.synced(io, upto, position);
        Ok(())
    }
}

/// When the background threads write and sync.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    /// Write commits at most this long after they were made; `None` when
    /// the committing thread writes every commit itself.
    pub(crate) write_delay: Option<Duration>,
    /// Sync commits at most this long after they were made; `None` when
    /// the committing thread syncs every commit, or nothing is synced on a
    /// schedule.
    pub(crate) sync_delay: Option<Duration>,
}

impl Schedule {
    /// How often the writer thread looks: half the shorter delay, so that a
    /// commit made just after a look is written at the next one, within
    /// the delay. At least 1 ms.
    fn tick(&self) -> Option<Duration> {
        let shortest = match (self.write_delay, self.sync_delay) {
            (Some(write), Some(sync)) => write.min(sync),
            (Some(delay), None) | (None, Some(delay)) => delay,
            (None, None) => return None,
        };
        Some((shortest / 2).max(Duration::from_millis(1)))
    }
}

/// The writer and sync threads; dropping it stops and joins them.
#[derive(Debug)]
pub(crate) struct Background {
    inner: Arc<Inner>,
    stop: Option<mpsc::Sender<()>>,
    writer: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the threads if the schedule needs them.
    pub(crate) fn start(inner: &Arc<Inner>, schedule: Schedule) -> Result<Option<Background>> {
        let Some(tick) = schedule.tick() else {
            return Ok(None);
        };
        let spawn_err =
            |err| Error::io(Some(&inner.path), "starting the checkpoint's threads", err);
        let (requests, received) = mpsc::channel::<Request>();
        let syncing = Arc::clone(inner);
        let syncer = std::thread::Builder::new()
            .name("linemark-sync".into())
            .spawn(move || serve(&syncing, &received))
            .map_err(spawn_err)?;
        *inner
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(requests);
        let mut background = Background {
            inner: Arc::clone(inner),
            stop: None,
            writer: None,
            syncer: Some(syncer),
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let writing = Arc::clone(inner);
        let writer = std::thread::Builder::new()
            .name("linemark-writer".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        look(&writing, schedule, tick);
                    }));
                    if looked.is_err() {
                        writing.put_error(writing.io_error(
                            "writing the checkpoint",
                            io::Error::other("the checkpoint's writer thread panicked"),
                        ));
                        return;
                    }
                }
            })
            .map_err(spawn_err)?;
        background.stop = Some(stop);
        background.writer = Some(writer);
        Ok(Some(background))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        let requests = self
            .inner
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(requests) = requests {
            let _ = requests.send(Request::Stop);
        }
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
    }
}

impl Inner {
    /// Asks the sync thread for `request` unless it was asked already.
    pub(crate) fn request(&self, request: Request) {
        let flag = match request {
            Request::Sync => &self.sync_requested,
            Request::Compact => &self.compact_requested,
            Request::Stop => return,
        };
        if flag.swap(true, Ordering::AcqRel) {
            return;
        }
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        match requests.as_ref() {
            Some(requests) if requests.send(request).is_ok() => {}
            _ => flag.store(false, Ordering::Release),
        }
    }
}

/// The sync thread: syncs and compacts when asked.
fn serve(inner: &Inner, requests: &mpsc::Receiver<Request>) {
    while let Ok(request) = requests.recv() {
        if matches!(request, Request::Stop) {
            return;
        }
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match request {
            Request::Stop => Ok(()),
            Request::Sync => {
                inner.sync_requested.store(false, Ordering::Release);
                inner.sync_to_disk()
            }
            Request::Compact => {
                inner.compact_requested.store(false, Ordering::Release);
                inner.compact()
            }
        }));
        let result = served.unwrap_or_else(|_| {
            Err(inner.io_error(
                "syncing the checkpoint",
                io::Error::other("the checkpoint's sync thread panicked"),
            ))
        });
        if let Err(error) = result {
            inner.put_error(error);
        }
    }
}

/// One look of the writer thread: write what was committed since the last
/// look, and ask for a sync if the oldest unsynced commit is about to be
/// `sync_delay` old, or for a compaction if the file grew too large.
fn look(inner: &Inner, schedule: Schedule, tick: Duration) {
    inner.looked.store(true, Ordering::Relaxed);
    // While the job has not seen the last error, nothing is written (a full
    // disk is not hammered, the error not replaced), but what is already in
    // the file is still synced on time, if the file can be trusted.
    let paused = inner.has_error();
    if !paused {
        inner.digest_prefix(Catch::Up);
    }
    let mut io = inner.lock_io();
    let now = Instant::now();
    if !paused {
        // A line that cannot be read back does not hold back the other
        // records: they are written, and the error is returned.
        let folded = inner.fold_published();
        let unwritten = io.has_unwritten(&inner.lock_core());
        if unwritten && io.seen_since.is_none() {
            // The commits were made within the last tick.
            io.seen_since = Some(now);
        }
        let mut failed = folded.err();
        if unwritten && schedule.write_delay.is_some() {
            let seen = io.seen_since.take().unwrap_or(now);
            if let Err(error) = inner.write(&mut io, seen, Catch::Up) {
                io.seen_since = Some(seen);
                failed.get_or_insert(error);
            }
        }
        if let Some(error) = failed {
            inner.put_error(error);
        }
    }
    // A commit first seen at `since` was made after `since - tick`; asking
    // at the first look at or after `since + sync_delay - 2 tick` syncs it
    // within `sync_delay` of being made, plus the time the sync takes.
    let oldest = io.unsynced.front().map(|&(_, seen)| seen).or(io.seen_since);
    let sync_due = schedule.sync_delay.is_some_and(|delay| {
        let due_at = oldest.and_then(|since| since.checked_add(delay.saturating_sub(2 * tick)));
        due_at.is_some_and(|due_at| now >= due_at) || (io.dir_unsynced && io.unsynced.is_empty())
    });
    let trusted = !io.sync_failed;
    let compact = !paused && Inner::wants_compaction(&io, inner.compact_at);
    drop(io);
    if sync_due && (trusted || !paused) {
        inner.request(Request::Sync);
    }
    if compact {
        inner.request(Request::Compact);
    }
}
