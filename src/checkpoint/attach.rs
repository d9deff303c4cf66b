//! Attaching outputs to a checkpoint: checking them against what the
//! checkpoint records, cutting them back, and closing them at the end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::output::Role;
use super::prefix::Catch;
use super::{Checkpoint, Identity, Output, format, fs, output};
use crate::error::{Error, Result};

impl Checkpoint {
    /// Attaches the output file at `path` (see [`Output`]): from now on,
    /// every commit records its length. Outputs are attached before the
    /// first commit, in the same order at every run; several can be (say
    /// results and rejects).
    ///
    /// - An output the checkpoint records is checked: it must exist, be at
    ///   least as long as recorded, and hold the recorded bytes before that
    ///   length. Bytes after it, left by a run that did not end cleanly,
    ///   are results of lines that will be done again: they are cut off.
    /// - A new output is created if missing; bytes it already holds stay,
    ///   and results go after them. A new output can only be attached to
    ///   a checkpoint with no progress yet (the results of lines finished
    ///   without it would be missing from it).
    ///
    /// # Durability
    ///
    /// A new output is recorded, and a cut is synced, when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::OutputChanged`] when the file is not the recorded output
    /// (missing, shorter, replaced or edited, or with bytes appended by
    /// another program after a run that ended cleanly), when its name is
    /// not the one recorded at this place, when it is attached already
    /// (under any name), when a new output is attached to a checkpoint
    /// with progress, or after the first commit. Nothing is cut or
    /// written then (outputs attached before it stay attached, cut back:
    /// the runner checks all its outputs before it attaches any). [`Error::Io`] when the file cannot be read,
    /// created or cut, or the checkpoint cannot be written.
    pub fn output(&mut self, path: impl AsRef<Path>) -> Result<Output> {
        let path = path.as_ref();
        let probe = self.probe_output(self.outputs.len(), path, &[])?;
        let sync = self.durability.syncs();
        let (output, new) = match probe {
            Probe::Recorded { mut file, mark } => {
                output::cut_back(path, Role::Output, file.as_mut(), mark.len)?;
                (output::attach(path, Role::Output, file, mark, sync), false)
            }
            Probe::New => {
                let (file, mark) = output::create(self.inner.fs.as_ref(), path)?;
                let mut io = self.inner.lock_io();
                let mut core = self.inner.lock_core();
                core.state
                    .outputs
                    .push((path.to_string_lossy().into_owned(), mark));
                // The declaration goes in a snapshot.
                io.needs_rewrite |= io.file.is_some();
                (output::attach(path, Role::Output, file, mark, sync), true)
            }
        };
        self.outputs.push(Arc::clone(output.shared()));
        self.inner
            .outputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(output.shared()));
        self.slot
            .track_outputs(&self.inner.slot, self.outputs.len());
        let reopened = {
            let mut core = self.inner.lock_core();
            // Asked for by this output, or by one attached before it.
            let reopened = core.state.closed || new || core.pending.outputs;
            core.state.closed = false;
            core.pending.outputs |= reopened;
            // With several outputs recorded, once the last is attached (a
            // record names the lengths of all).
            reopened && self.outputs.len() >= core.state.outputs.len()
        };
        if reopened {
            // Before a byte of results reaches the file: a crash must not
            // leave it longer than recorded while the record says closed,
            // nor results after a length no record holds.
            self.write_now(true, Catch::All)?;
        }
        Ok(output)
    }

    /// Checks, changing nothing, that `path` can be attached as output
    /// `index`, after outputs `before` (files given to attach with it, by
    /// their identity): what [`output`](Checkpoint::output) refuses, this
    /// refuses. The runner checks all its outputs before it attaches (and
    /// cuts) the first.
    pub(crate) fn probe_output(
        &self,
        index: usize,
        path: &Path,
        before: &[Identity],
    ) -> Result<Probe> {
        let changed = |reason: String| Error::OutputChanged {
            path: path.to_path_buf(),
            checkpoint: self.given.clone(),
            reason,
        };
        if self.schedule.is_none() {
            return Err(changed(
                "outputs are attached before the first commit".into(),
            ));
        }
        let (recorded, closed, progress) = {
            let core = self.core();
            let state = &core.state;
            (
                state.outputs.get(index).cloned(),
                state.closed,
                !state.position.is_start()
                    || !state.done.is_empty()
                    || state.failed_count() > 0
                    || state.log.is_some(),
            )
        };
        // The same file twice would get the results of both, and each
        // length would cut the other's.
        let id = output::identity(path);
        let mut attached = self
            .outputs
            .iter()
            .filter_map(|output| output.identity())
            .chain(before);
        if id
            .as_ref()
            .is_some_and(|id| attached.any(|other| other == id))
        {
            return Err(changed(
                "this file is attached as another output already".into(),
            ));
        }
        match recorded {
            Some((recorded, mark)) => {
                let name = |path: &Path| {
                    path.file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                };
                if name(Path::new(&recorded)) != name(path) {
                    return Err(changed(format!(
                        "the checkpoint records output {} as {recorded:?}",
                        index + 1
                    )));
                }
                match output::check(self.inner.fs.as_ref(), path, Role::Output, mark, closed)? {
                    output::Found::Changed(reason) => Err(changed(reason)),
                    output::Found::Ours(file) => Ok(Probe::Recorded { file, mark }),
                }
            }
            None if progress => Err(changed(
                "the checkpoint records progress made without this output, whose \
                 results would be missing from it; start with a new checkpoint"
                    .into(),
            )),
            None => Ok(Probe::New),
        }
    }

    /// Checks that every output the checkpoint records is attached.
    pub(crate) fn check_outputs_attached(&self) -> Result<()> {
        if self.outputs.len() < self.inner.lock_core().state.outputs.len() {
            return Err(self.inner.unattached());
        }
        Ok(())
    }

    /// Whether the writer thread looked since the last call that returned
    /// `true` (a load per call, a store when it did).
    #[inline]
    pub(crate) fn writer_looked(&self) -> bool {
        let looked = self.inner.looked.load(Ordering::Relaxed);
        if looked {
            self.inner.looked.store(false, Ordering::Relaxed);
        }
        looked
    }

    /// Whether outputs are attached.
    #[inline]
    pub(crate) fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Appends a line's (or a batch's) results to the attached outputs, by
    /// index; buffers past the outputs' number are ignored.
    #[inline]
    pub(crate) fn append_results(&mut self, results: &[Vec<u8>]) -> Result<()> {
        for (output, bytes) in self.outputs.iter().zip(results) {
            output.append(bytes)?;
        }
        Ok(())
    }

    /// Cuts every output to its recorded length and records that the run
    /// ended cleanly, so that bytes a later open finds after that length
    /// are known not to be linemark's. Called after a sync.
    pub(crate) fn close_outputs(&mut self) -> Result<()> {
        let emptied = match self.forget_empty_log() {
            Some(path) => Some(path),
            None => self.compact_log()?,
        };
        let log = self.core().state.log_mark();
        let log = self.faillog().zip(log);
        if self.outputs.is_empty() && log.is_none() {
            if let Some(path) = emptied {
                // The checkpoint no longer names it.
                self.write_now(true, Catch::All)?;
                let _ = self.inner.fs.remove(&path);
            }
            return Ok(());
        }
        let lens = self.core().state.output_lens();
        for (output, &len) in self.outputs.iter().zip(&lens) {
            output.cut_to(len)?;
        }
        if let Some((faillog, mark)) = log {
            faillog.cut_to(mark.mark.len)?;
        }
        {
            let mut core = self.inner.lock_core();
            core.state.closed = true;
            core.pending.outputs = true;
        }
        self.write_now(true, Catch::All)?;
        if let Some(path) = emptied {
            let _ = self.inner.fs.remove(&path);
        }
        Ok(())
    }

    /// At a clean end, a failure log that records no failed line any more
    /// (every one resolved) is let go: the checkpoint is rewritten without
    /// it, and the file is removed after that. Returns its path.
    fn forget_empty_log(&mut self) -> Option<std::path::PathBuf> {
        let mut io = self.inner.lock_io();
        let mut core = self.inner.lock_core();
        let state = &mut core.state;
        let (_, mark) = state.log.as_ref()?;
        // Every record superseded, whether the live part was moved past
        // them or `resolved` records came out of the listing's order.
        let empty = mark.count == 0;
        if !empty || !state.passed.is_empty() || !state.unsettled.is_empty() {
            return None;
        }
        state.log = None;
        io.needs_rewrite = true;
        let log = self
            .inner
            .faillog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        Some(log.path().to_path_buf())
    }
}

/// What [`Checkpoint::probe_output`] found.
pub(crate) enum Probe {
    /// The output the checkpoint records, opened, at its recorded mark.
    Recorded {
        file: Box<dyn fs::FsFile>,
        mark: format::OutputMark,
    },
    /// A new output, to be created if missing.
    New,
}
