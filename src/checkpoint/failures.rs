//! The failed lines of a checkpoint: recording them, resolving them and
//! listing them. Those beyond the position are in memory and in the
//! checkpoint file; those the position passed are in the failure log
//! (`faillog.rs`), read as needed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use super::faillog::{self, FailedLines, Records};
use super::format::{LogMark, Record, Shift, State, load};
use super::fs::RealFs;
use super::output::OutputShared;
use super::prefix::Catch;
use super::writer::Core;
use super::{Checkpoint, lens};
use crate::error::{Error, Result};
use crate::failed::FailedLine;

/// How many superseded bytes a failure log keeps before a clean end copies
/// its live part to a new one.
const DEAD_KEPT: u64 = 64 << 10;

/// How many failed lines may wait in memory for a write: beyond it, the
/// committing thread writes them itself.
const IN_MEMORY: usize = 4096;

/// Where the record of a failed line behind the position was found.
pub(super) enum Behind {
    /// At the head of the log's live part; the offset after it.
    Head(u64),
    /// Elsewhere in the live part.
    Logged,
    /// Nowhere: the line is not recorded as failed.
    Absent,
}

impl Checkpoint {
    /// The lines recorded as failed: first those the position passed, in
    /// the failure log's order (read from it as the iterator goes, so a
    /// million failed lines take no more memory than one; line order,
    /// unless a retry was interrupted or a line failed again out of that
    /// order), then those beyond the position, by line number. What is
    /// committed meanwhile is not listed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the failure log cannot be read; the iterator
    /// returns [`Error::Io`] or [`Error::Corrupt`] for a log that fails or
    /// was damaged while it reads it.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Checkpoint, FailedLine, Line};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let mut checkpoint = Checkpoint::open(dir.path().join("job.checkpoint"))?;
    /// let line = Line::new(b"http://example.invalid/\n", 1, 0);
    /// checkpoint.commit_failed(FailedLine::new(&line, 3, "no such host"))?;
    /// checkpoint.commit_line(&line)?;
    /// let failed: Vec<FailedLine> = checkpoint.failed()?.collect::<Result<_, _>>()?;
    /// assert_eq!(failed[0].error(), "no such host");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn failed(&self) -> Result<FailedLines> {
        let (log, rest) = {
            let core = self.core();
            let rest = core
                .state
                .passed
                .iter()
                .chain(core.state.failed.values())
                .cloned()
                .collect();
            (core.state.log_mark(), rest)
        };
        let records = self.log_records(log);
        FailedLines::new(records, log.map_or(0, |mark| mark.resolved), rest)
    }

    /// The lines a checkpoint file records as failed, as
    /// [`failed`](Checkpoint::failed) lists them, without opening the
    /// checkpoint (see [`inspect`](Checkpoint::inspect)).
    ///
    /// # Errors
    ///
    /// As [`inspect`](Checkpoint::inspect), and
    /// [`Error::OutputChanged`] when the failure log the checkpoint
    /// records cannot be opened.
    pub fn inspect_failed(path: impl AsRef<Path>) -> Result<FailedLines> {
        let path = path.as_ref();
        let loaded = load(&RealFs, path)?;
        let state = loaded.state;
        let rest = state
            .passed
            .iter()
            .chain(state.failed.values())
            .cloned()
            .collect();
        faillog::inspect(path, state.log.as_ref(), rest)
    }

    /// Whether the line is recorded as failed. For a line the position
    /// passed, the failure log is read (a pass over it): a loop that
    /// needs this for many lines lists them with
    /// [`failed`](Checkpoint::failed) instead.
    ///
    /// # Errors
    ///
    /// As [`failed`](Checkpoint::failed).
    pub fn is_failed(&self, line: u64) -> Result<bool> {
        let log = {
            let core = self.core();
            if line > core.state.position.line() {
                return Ok(core.state.failed.contains_key(&line));
            }
            if core.state.passed.iter().any(|failed| failed.line() == line) {
                return Ok(true);
            }
            core.state.log_mark()
        };
        self.is_logged(line, log)
    }

    /// The number of lines recorded as failed.
    #[must_use]
    pub fn failed_count(&self) -> u64 {
        self.inner.lock_core().state.failed_count()
    }

    /// Records a line as failed for good, replacing an earlier record of the
    /// same line: what a hand-written loop does with a line it gives up on,
    /// before it commits past it, so that `failed` lists it and a retry can
    /// find it.
    ///
    /// A line beyond the position is recorded in the checkpoint file, and
    /// moves to the failure log when the position passes it. A line the
    /// position passed already goes to the failure log at once: the line
    /// at the head of the log's live part (the next one
    /// [`failed`](Checkpoint::failed) lists: a retry in that order) at the
    /// cost of one small read; another line at the cost of a pass over
    /// the log, to find its earlier record.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit`](Checkpoint::commit), and as [`failed`](Checkpoint::failed)
    /// for a line the position passed.
    pub fn commit_failed(&mut self, failed: FailedLine) -> Result<()> {
        if failed.line() == 0 || failed.len() == 0 {
            return Err(Error::InvalidPosition {
                line: failed.line(),
                offset: failed.offset(),
            });
        }
        let mut crowded = false;
        let behind = {
            let mut core = self.core_for_commit()?;
            let line = failed.line();
            if line > core.state.position.line() {
                // Failed now, whatever an earlier record said (the later
                // record wins, as the file reads).
                core.state.done.remove(&line);
                core.state.failed.insert(line, failed.clone());
                core.state.raise_outputs(lens(&self.outputs));
                core.pending.failed.push(Record::Failed(failed));
                // What a write empties: the records waiting for it (the
                // failed lines beyond the position stay, a window of them).
                crowded = core.pending.failed.len() + core.state.passed.len() >= IN_MEMORY;
                None
            } else if let Some(at) = core.state.passed.iter().position(|f| f.line() == line) {
                core.state.passed[at] = failed;
                core.state.raise_outputs(lens(&self.outputs));
                core.pending.log = true;
                None
            } else {
                Some((failed, core.state.log_mark()))
            }
        };
        if let Some((failed, log)) = behind {
            self.commit_behind(failed.line(), Some(failed), log)?;
        }
        self.note_commit()?;
        if crowded {
            // Lines fail faster than the writer thread takes them: this
            // thread writes them (to the file or the failure log), so that
            // memory holds a bounded number of them.
            self.write_now(false, Catch::Up)?;
        }
        Ok(())
    }

    /// Records that a line recorded as failed is now finished: what a
    /// hand-written loop that retries the [`failed`](Checkpoint::failed)
    /// lines does with each that succeeds. A line not recorded as failed
    /// is left alone. A line beyond the position is recorded as done there
    /// (as [`commit_done`](Checkpoint::commit_done) does), so a later run
    /// skips it. As with [`commit_failed`](Checkpoint::commit_failed),
    /// the line at the head of the log's live part costs one small read,
    /// another line the position passed a pass over the log.
    ///
    /// # Durability
    ///
    /// As [`commit`](Checkpoint::commit).
    ///
    /// # Errors
    ///
    /// As [`commit_failed`](Checkpoint::commit_failed).
    pub fn commit_resolved(&mut self, line: u64) -> Result<()> {
        let log = {
            let mut core = self.core_for_commit()?;
            if line > core.state.position.line() {
                let Some(failed) = core.state.failed.remove(&line) else {
                    return Ok(());
                };
                // Finished beyond the position: done, so that a later run
                // skips it (as a line the position passed is). The `done`
                // record alone says it, so no torn write leaves the line
                // both done and failed.
                core.state.done.insert(line, *failed.id());
                core.pending.done.push(line);
                core.state.raise_outputs(lens(&self.outputs));
                None
            } else if let Some(at) = core.state.passed.iter().position(|f| f.line() == line) {
                // Not in the log yet: the write that moves the position
                // past it will not take it there. Its `failed` record may
                // be in the file, beyond a position written before: a
                // `resolved` record supersedes it, were the position moved
                // back before that write.
                core.state.passed.remove(at);
                core.state.raise_outputs(lens(&self.outputs));
                core.pending.failed.push(Record::Resolved { line });
                core.pending.log = true;
                None
            } else {
                Some(core.state.log_mark())
            }
        };
        if let Some(log) = log {
            if !self.commit_behind(line, None, log)? {
                return Ok(());
            }
        }
        self.note_commit()
    }

    /// Records `failed` (or, with `None`, resolves) line `line`, which the
    /// position passed and which is not waiting for the log. Returns
    /// whether anything changed. When the log cannot be read, the commit
    /// waits in memory for the next write, which looks again (and fails
    /// the same way until it can).
    fn commit_behind(
        &mut self,
        line: u64,
        failed: Option<FailedLine>,
        log: Option<LogMark>,
    ) -> Result<bool> {
        let faillog = self.faillog();
        let waiting = !self.inner.lock_core().state.unsettled.is_empty();
        let found = match (&faillog, log) {
            // After earlier commits that wait: in their order.
            _ if waiting => Err(None),
            (Some(faillog), Some(mark)) => find_behind(faillog, mark, line).map_err(Some),
            _ => Ok(Behind::Absent),
        };
        let mut core = self.core_for_commit()?;
        core.state.raise_outputs(lens(&self.outputs));
        core.pending.log = true;
        match found {
            Ok(found) => Ok(apply_behind(
                &mut core.state,
                faillog.as_ref(),
                line,
                failed,
                found,
            )),
            Err(error) => {
                core.state.unsettled.push((line, failed));
                error.map_or(Ok(true), Err)
            }
        }
    }

    /// The failed lines of the log's live part at `mark` beyond `line`.
    pub(super) fn logged_beyond(&self, mark: LogMark, line: u64) -> Result<Vec<FailedLine>> {
        let Some(faillog) = self.faillog() else {
            return Ok(Vec::new());
        };
        let mut beyond = Vec::new();
        for failed in faillog::live_lines(&faillog, mark)? {
            let failed = failed?;
            if failed.line() > line {
                beyond.push(failed);
            }
        }
        Ok(beyond)
    }

    /// Makes `logged` (lines of the log beyond a position moved back) the
    /// checkpoint's again: `failed` records here, `resolved` records in
    /// the log, in the same group.
    pub(super) fn take_back_from_log(&self, core: &mut Core, logged: Vec<FailedLine>) {
        let Some(faillog) = self.faillog() else {
            return;
        };
        let mut text = String::new();
        for failed in logged {
            let line = failed.line();
            Record::Resolved { line }.encode(&mut text);
            if let Some((_, mark)) = core.state.log.as_mut() {
                mark.resolved += 1;
                mark.count = mark.count.saturating_sub(1);
            }
            core.state.failed.insert(line, failed.clone());
            core.pending.failed.push(Record::Failed(failed));
        }
        faillog.buffer(text.as_bytes());
        if let Some((_, mark)) = core.state.log.as_mut() {
            mark.mark.len = faillog.appended();
        }
        core.pending.log = true;
    }

    /// Whether the live part of the failure log records `line` as failed.
    fn is_logged(&self, line: u64, log: Option<LogMark>) -> Result<bool> {
        match (self.faillog(), log) {
            (Some(faillog), Some(mark)) => logs(&faillog, mark, line),
            _ => Ok(false),
        }
    }

    pub(super) fn faillog(&self) -> Option<Arc<OutputShared>> {
        self.inner
            .faillog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The records of the failure log's live part at `log`.
    fn log_records(&self, log: Option<LogMark>) -> Option<Records> {
        Some(Records::live(&self.faillog()?, &log?))
    }

    /// Before a retry of the failed lines in the order
    /// [`failed`](Checkpoint::failed) lists them: the lines waiting for
    /// the failure log are written to it, and its live part is written
    /// again, once, if it holds `resolved` records (or, when `sorted`,
    /// lines out of order), so that the retry deals with each line at the
    /// head of the log. `sorted` costs memory for every failed line when
    /// the log is out of order (a retry over a stream, which is read in
    /// line order).
    pub(crate) fn prepare_retry(&mut self, sorted: bool) -> Result<()> {
        if !self.inner.lock_core().state.passed.is_empty() {
            self.write_now(false, Catch::All)?;
        }
        let Some(log) = self.inner.lock_core().state.log_mark() else {
            return Ok(());
        };
        let renew = log.resolved > 0 || (sorted && !self.log_in_order(log)?);
        if renew {
            self.renew_log(sorted)?;
        }
        Ok(())
    }

    /// Whether the live part of the log lists its lines in increasing order.
    fn log_in_order(&self, log: LogMark) -> Result<bool> {
        let mut last = 0;
        let Some(faillog) = self.faillog() else {
            return Ok(true);
        };
        for failed in faillog::live_lines(&faillog, log)? {
            let line = failed?.line();
            if line <= last {
                return Ok(false);
            }
            last = line;
        }
        Ok(true)
    }

    /// At a clean end: a failure log whose dead part (the records before
    /// `from`, superseded) is over 64 KiB and at least as long as its live
    /// part is replaced by a copy of its live part, under the other of its
    /// two names (`CHECKPOINT.failures`, `CHECKPOINT.failures.1`), synced
    /// with its name before the checkpoint, rewritten next, names it.
    /// Returns the old file's path, for the caller to remove once that
    /// rewrite is in place: a crash before leaves the old log named, after
    /// the new one; the other file is a leftover, emptied when its name is
    /// used again.
    pub(super) fn compact_log(&mut self) -> Result<Option<PathBuf>> {
        let mut io = self.inner.lock_io();
        let (name, mark) = {
            let core = self.inner.lock_core();
            let Some((name, mark)) = core.state.log.clone() else {
                return Ok(None);
            };
            if !core.state.passed.is_empty() || !core.state.unsettled.is_empty() {
                return Ok(None);
            }
            (name, mark)
        };
        let (dead, live) = (mark.from, mark.mark.len - mark.from);
        let Some(old) = self.faillog() else {
            return Ok(None);
        };
        if dead < DEAD_KEPT || dead < live {
            return Ok(None);
        }
        let base = faillog::log_name(&self.inner.path);
        let name = if name == base {
            format!("{base}.1")
        } else {
            base
        };
        let path = faillog::log_path(&self.inner.path, &name);
        let mut file = faillog::create(self.inner.fs.as_ref(), &path)?;
        let write_err = |err| Error::io(Some(&path), "writing the failure log", err);
        let mut text = String::new();
        let mut count = 0u64;
        for failed in faillog::live_lines(&old, mark)? {
            Record::Failed(failed?).encode(&mut text);
            count += 1;
            if text.len() >= 64 << 10 {
                file.write_all(text.as_bytes()).map_err(write_err)?;
                text.clear();
            }
        }
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_data().map_err(write_err)?;
        let len = file.len().map_err(write_err)?;
        let digest = super::output::tail_digest(file.as_mut(), len).map_err(write_err)?;
        let copy = super::format::OutputMark { len, digest };
        let log = super::output::attach(
            &path,
            super::output::Role::FailureLog,
            file,
            copy,
            self.inner.sync_logs,
        );
        *self
            .inner
            .faillog
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(log.shared()));
        let mut core = self.inner.lock_core();
        core.state.log = Some((
            name,
            LogMark {
                mark: copy,
                from: 0,
                count,
                resolved: 0,
            },
        ));
        io.needs_rewrite = true;
        Ok(Some(old.path().to_path_buf()))
    }

    /// Writes the failed lines of the log's live part again (in line order
    /// if `sorted`): the copy becomes the live part, one record per line,
    /// no `resolved` records. The new mark is recorded in one group.
    pub(crate) fn renew_log(&mut self, sorted: bool) -> Result<()> {
        // No write moves failed lines to the log meanwhile.
        let _io = self.inner.lock_io();
        let Some(mark) = self.copy_live(sorted, None)? else {
            return Ok(());
        };
        let mut core = self.inner.lock_core();
        if let Some((_, log)) = core.state.log.as_mut() {
            *log = mark;
        }
        core.pending.log = true;
        Ok(())
    }

    /// Appends the failed lines of the log's live part again, in line
    /// order if `sorted`, moved by `shift` if given, and returns the mark
    /// that makes the copy the live part; `None` without a log. The caller
    /// holds the `io` lock (no write moves lines to the log meanwhile) and
    /// records the mark with the rest of its change, under one `core`
    /// lock. On an error the log is cut back to its recorded length: no
    /// byte of a partial copy stays to be counted later.
    pub(super) fn copy_live(&self, sorted: bool, shift: Option<Shift>) -> Result<Option<LogMark>> {
        let Some(faillog) = self.faillog() else {
            return Ok(None);
        };
        let Some(log) = self.inner.lock_core().state.log_mark() else {
            return Ok(None);
        };
        let copied = append_live(&faillog, log, sorted, shift);
        if copied.is_err() {
            let _ = faillog.cut_to(log.mark.len);
        }
        copied.map(Some)
    }
}

/// See [`Checkpoint::copy_live`].
fn append_live(
    faillog: &Arc<OutputShared>,
    log: LogMark,
    sorted: bool,
    shift: Option<Shift>,
) -> Result<LogMark> {
    let lines = faillog::live_lines(faillog, log)?.filter_map(|failed| match (failed, shift) {
        (Ok(failed), Some(shift)) => shift.failed(&failed).map(Ok),
        (failed, _) => Some(failed),
    });
    let lines: Box<dyn Iterator<Item = Result<FailedLine>>> = if sorted {
        let mut all = lines.collect::<Result<Vec<_>>>()?;
        all.sort_by_key(FailedLine::line);
        Box::new(all.into_iter().map(Ok))
    } else {
        Box::new(lines)
    };
    let from = faillog.appended();
    let mut count = 0u64;
    let mut text = String::new();
    for failed in lines {
        Record::Failed(failed?).encode(&mut text);
        count += 1;
        if text.len() >= 64 << 10 {
            faillog.append(text.as_bytes())?;
            text.clear();
        }
    }
    faillog.append(text.as_bytes())?;
    Ok(LogMark {
        mark: super::format::OutputMark {
            len: faillog.appended(),
            ..log.mark
        },
        from,
        count,
        resolved: 0,
    })
}

/// Where line `line`, behind the position, stands in the live part of the
/// failure log at `mark`: at its head (one small read), elsewhere or
/// nowhere (a pass over it).
pub(super) fn find_behind(faillog: &Arc<OutputShared>, mark: LogMark, line: u64) -> Result<Behind> {
    if mark.from >= mark.mark.len {
        return Ok(Behind::Absent);
    }
    if mark.resolved == 0 {
        let head = faillog::record_at(faillog, mark.from, mark.mark.len)?;
        if let Some((Record::Failed(head), after)) = head {
            if head.line() == line {
                return Ok(Behind::Head(after));
            }
        }
    }
    if logs(faillog, mark, line)? {
        Ok(Behind::Logged)
    } else {
        Ok(Behind::Absent)
    }
}

/// Whether the live part of the log at `mark` records `line` as failed (a
/// pass over it).
fn logs(faillog: &Arc<OutputShared>, mark: LogMark, line: u64) -> Result<bool> {
    for failed in faillog::live_lines(faillog, mark)? {
        if failed?.line() == line {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies a commit of `failed` (or, with `None`, of the resolution) of
/// line `line`, behind the position, found at `found`. Returns whether
/// anything changed.
pub(super) fn apply_behind(
    state: &mut State,
    faillog: Option<&Arc<OutputShared>>,
    line: u64,
    failed: Option<FailedLine>,
    found: Behind,
) -> bool {
    let again = failed.is_some();
    let mut text = String::new();
    match (&found, failed) {
        (Behind::Absent, None) => return false,
        (Behind::Absent, Some(failed)) => {
            // A new failure behind the position: to the log at the next
            // write, in line order.
            let at = state.passed.partition_point(|f| f.line() < line);
            state.passed.insert(at, failed);
        }
        (Behind::Head(_), Some(failed)) => Record::Failed(failed).encode(&mut text),
        (Behind::Head(_), None) => {}
        (Behind::Logged, failed) => {
            Record::Resolved { line }.encode(&mut text);
            if let Some(failed) = failed {
                Record::Failed(failed).encode(&mut text);
            }
        }
    }
    if let (Some(faillog), Some((_, mark))) = (faillog, state.log.as_mut()) {
        match found {
            Behind::Head(after) => mark.from = after,
            Behind::Logged => mark.resolved += 1,
            Behind::Absent => {}
        }
        if !again && !matches!(found, Behind::Absent) {
            mark.count -= 1;
        }
        if !text.is_empty() {
            faillog.buffer(text.as_bytes());
            mark.mark.len = faillog.appended();
        }
    }
    true
}
