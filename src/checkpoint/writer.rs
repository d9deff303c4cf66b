//! Writing a checkpoint: the state shared between the committing thread and
//! the writer thread, the append and the atomic rewrite, and the writer
//! thread that keeps both time bounds without any call from the job.
//!
//! # Why a writer thread
//!
//! A commit must reach the file within `write_delay` and the disk within the
//! group's `max_delay` even when the job makes no further call: its next
//! line may be a download that hangs for minutes. Only another thread can
//! act then. The alternatives were weighed so:
//!
//! - A write per commit from the committing thread bounds a process kill to
//!   nothing, but costs a system call per line (a 50 ns line becomes a 1 µs
//!   one).
//! - Reading the last line back from the input by its offset would let the
//!   committing thread publish three numbers per line instead of the line,
//!   but the checkpoint does not know the input (a hand-written loop over
//!   stdin), and the input may have changed by then.
//!
//! So the committing thread publishes each line it commits in a
//! [`Slot`](super::slot::Slot) (plain stores, see there), and the writer
//! thread wakes every half `write_delay`, folds what was committed into the
//! shared state and appends it. Commits other than `commit_line` (positions,
//! done, failed and resolved lines) are rarer and take a mutex. The writer
//! thread syncs when the oldest unsynced commit it has seen approaches
//! `max_delay`; a full group (`max_records` commits) is written and synced by
//! the committing thread itself, as before.
//!
//! Lock order: `io`, then `core`. `core` is never held during file I/O, so a
//! commit never waits for a sync of the writer thread.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::BeforeWrite;
use super::file::{parent_dir, temp_prefix};
use super::fs::{Fs, FsFile};
use super::slot::{HAS_ERROR, Published, Slot, SlotWriter, WANT_FOLD};
use super::state::{Pending, State};
use crate::error::{Error, Result};
use crate::position::Position;

/// What the committing thread and the writer thread share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) slot: Slot,
    pub(crate) core: Mutex<Core>,
    pub(crate) io: Mutex<Io>,
    /// An error of the writer thread, returned by the next call.
    pub(crate) error: Mutex<Option<Error>>,
    pub(crate) syncs: AtomicU64,
    pub(crate) before_write: Option<BeforeWrite>,
    pub(crate) compact_at: u64,
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
    /// Set when the file cannot be appended to (missing, torn header, or
    /// after a failed write): the next write replaces it atomically.
    pub(crate) needs_rewrite: bool,
    /// Records were written without a sync since the last one.
    pub(crate) unsynced: bool,
    /// The position as of the last write.
    pub(crate) written: Position,
    /// When the writer thread first saw a commit not yet synced.
    pub(crate) unsynced_since: Option<Instant>,
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
    SyncOnly,
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

    pub(crate) fn io_error(&self, action: &'static str, err: io::Error) -> Error {
        Error::io(Some(&self.path), action, err)
    }

    /// Takes the writer thread's error, if one waits.
    pub(crate) fn take_error(&self) -> Option<Error> {
        if self.slot.signal.load(Ordering::Acquire) & HAS_ERROR == 0 {
            return None;
        }
        let error = self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.slot.signal.fetch_and(!HAS_ERROR, Ordering::AcqRel);
        error
    }

    fn put_error(&self, error: Error) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.slot.signal.fetch_or(HAS_ERROR, Ordering::AcqRel);
    }

    /// Folds a line the committing thread published into the state.
    fn fold(core: &mut Core, published: Published) {
        if published.seq > core.folded {
            core.folded = published.seq;
            if let Some(end) = published.end {
                core.state.advance(end);
                core.pending.position = true;
            }
        }
    }

    /// The committing thread folds its own published line (no race: it is
    /// the slot's only writer).
    pub(crate) fn fold_own(&self, core: &mut Core, slot: &SlotWriter) {
        if slot.seq() > core.folded {
            let end = slot.end_position(&self.slot);
            Inner::fold(
                core,
                Published {
                    seq: slot.seq(),
                    end,
                },
            );
        }
    }

    /// The writer thread folds the newest published line into the state,
    /// asking the committing thread to do it if it keeps committing too
    /// fast to be read.
    fn fold_published(&self) {
        loop {
            {
                let mut core = self.lock_core();
                if self.slot.seq() == core.folded {
                    return;
                }
                if let Some(published) = self.slot.try_read() {
                    Inner::fold(&mut core, published);
                    return;
                }
            }
            self.slot.signal.fetch_or(WANT_FOLD, Ordering::AcqRel);
            for _ in 0..64 {
                std::thread::yield_now();
                if self.slot.signal.load(Ordering::Acquire) & WANT_FOLD == 0 {
                    return;
                }
                if let Some(published) = self.slot.try_read() {
                    Inner::fold(&mut self.lock_core(), published);
                    self.slot.signal.fetch_and(!WANT_FOLD, Ordering::AcqRel);
                    return;
                }
            }
        }
    }

    /// Writes what is pending (appending, or rewriting the file when it
    /// cannot be appended to), syncs if `sync`, then compacts if the file
    /// grew too large. The caller has folded the published line.
    pub(crate) fn write(&self, io: &mut Io, sync: bool) -> Result<()> {
        let (plan, position) = {
            let mut core = self.lock_core();
            let plan = if io.needs_rewrite || io.file.is_none() {
                Plan::Rewrite(core.state.snapshot())
            } else if !core.pending.is_empty() || io.truncate_to.is_some() {
                Plan::Append(core.pending.encode(&core.state))
            } else if sync && io.unsynced {
                Plan::SyncOnly
            } else {
                Plan::Nothing
            };
            if !matches!(plan, Plan::Nothing | Plan::SyncOnly) {
                core.pending = Pending::default();
            }
            (plan, core.state.position)
        };
        match plan {
            Plan::Nothing => Ok(()),
            Plan::SyncOnly => {
                if let Some(file) = io.file.as_mut() {
                    if let Err(err) = file.sync_data() {
                        io.needs_rewrite = true;
                        return Err(self.io_error("syncing the checkpoint", err));
                    }
                }
                let written = io.written;
                self.synced(io, written);
                Ok(())
            }
            Plan::Rewrite(snapshot) => self.rewrite(io, snapshot, position, RewriteStep::Done),
            Plan::Append(out) => {
                // Whatever fails from here, the records taken from `pending`
                // are still in the state, which the next write puts in the
                // file whole.
                io.needs_rewrite = true;
                self.run_before_write()?;
                self.append(io, &out, sync)?;
                io.needs_rewrite = false;
                io.written = position;
                if sync {
                    self.synced(io, position);
                } else {
                    io.unsynced = true;
                }
                if io.file_len > self.compact_at.max(2 * io.snapshot_len) {
                    self.compact(io)?;
                }
                Ok(())
            }
        }
    }

    fn append(&self, io: &mut Io, out: &str, sync: bool) -> Result<()> {
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
        if result.is_ok() && sync {
            result = file
                .sync_data()
                .map_err(|err| ("syncing the checkpoint", err));
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

    fn synced(&self, io: &mut Io, position: Position) {
        io.unsynced = false;
        io.unsynced_since = None;
        self.lock_core().durable = position;
        self.syncs.fetch_add(1, Ordering::AcqRel);
    }

    fn run_before_write(&self) -> Result<()> {
        match &self.before_write {
            Some(hook) => {
                (hook.0)().map_err(|err| self.io_error("running the before-write hook", err))
            }
            None => Ok(()),
        }
    }

    /// Replaces the file with a snapshot of the current state.
    pub(crate) fn compact(&self, io: &mut Io) -> Result<()> {
        self.compact_until(io, RewriteStep::Done)
    }

    pub(crate) fn compact_until(&self, io: &mut Io, stop: RewriteStep) -> Result<()> {
        let (snapshot, position) = {
            let mut core = self.lock_core();
            core.pending = Pending::default();
            (core.state.snapshot(), core.state.position)
        };
        self.rewrite(io, snapshot, position, stop)
    }

    /// Replaces the file with `snapshot`: temp file in the same directory,
    /// `sync_all`, rename, sync of the directory.
    fn rewrite(
        &self,
        io: &mut Io,
        snapshot: String,
        position: Position,
        stop: RewriteStep,
    ) -> Result<()> {
        io.needs_rewrite = true;
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
        drop(file);
        if stop == RewriteStep::TempSynced {
            // Leave the temporary file behind, as a crash would.
            return Ok(());
        }
        if let Err(e) = self.fs.rename(&temp, &self.path) {
            let _ = self.fs.remove(&temp);
            return Err(self.io_error("renaming the compacted checkpoint into place", e));
        }
        if stop == RewriteStep::Renamed {
            return Ok(());
        }
        self.fs
            .sync_dir(dir)
            .map_err(|e| self.io_error("syncing the checkpoint's directory", e))?;
        let file = self
            .fs
            .open_append(&self.path)
            .map_err(|e| self.io_error("opening the checkpoint", e))?;
        io.file = Some(file);
        io.file_len = snapshot.len() as u64;
        io.snapshot_len = io.file_len;
        io.truncate_to = None;
        io.needs_rewrite = false;
        io.written = position;
        self.synced(io, position);
        Ok(())
    }
}

/// When the writer thread writes and syncs.
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

/// The writer thread; dropping it stops and joins it.
#[derive(Debug)]
pub(crate) struct WriterThread {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl WriterThread {
    /// Starts the writer thread if the schedule needs one.
    pub(crate) fn start(inner: &Arc<Inner>, schedule: Schedule) -> Result<Option<WriterThread>> {
        let Some(tick) = schedule.tick() else {
            return Ok(None);
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let inner = Arc::clone(inner);
        let path = inner.path.clone();
        let handle = std::thread::Builder::new()
            .name("linemark-writer".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    look(&inner, schedule, tick);
                }
            })
            .map_err(|err| {
                Error::io(Some(&path), "starting the checkpoint's writer thread", err)
            })?;
        Ok(Some(WriterThread {
            stop: Some(stop),
            handle: Some(handle),
        }))
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// One look of the writer thread: write what was committed since the last
/// look, and sync if the oldest unsynced commit is about to be `sync_delay`
/// old.
fn look(inner: &Inner, schedule: Schedule, tick: Duration) {
    if inner.slot.signal.load(Ordering::Acquire) & HAS_ERROR != 0 {
        // The job has not seen the last error yet: no retries until it has,
        // so a full disk is not hammered and the error is not replaced.
        return;
    }
    let mut io = inner.lock_io();
    inner.fold_published();
    let unwritten = !inner.lock_core().pending.is_empty();
    let now = Instant::now();
    if (unwritten || io.unsynced) && io.unsynced_since.is_none() {
        // The commit was made within the last tick.
        io.unsynced_since = Some(now);
    }
    // A commit first seen at `since` was made after `since - tick`; syncing
    // at the first look at or after `since + sync_delay - 2 tick` syncs it
    // within `sync_delay` of being made.
    let sync_due = schedule.sync_delay.is_some_and(|delay| {
        io.unsynced_since
            .is_some_and(|since| now + 2 * tick >= since + delay)
    });
    let write_due = unwritten && schedule.write_delay.is_some();
    if sync_due || write_due {
        if let Err(error) = inner.write(&mut io, sync_due) {
            inner.put_error(error);
        }
    }
}
