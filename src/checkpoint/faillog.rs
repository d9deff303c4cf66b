//! The failure log: the records of the failed lines the position has
//! passed, in a file of their own beside the checkpoint, so that neither
//! the memory of a run nor a compaction grows with the number of failed
//! lines.
//!
//! The log is append-only, kept like an [`Output`](super::Output): its
//! bytes up to a length are written (and synced) before the group of
//! checkpoint records that records that length (a `failures` record), and
//! bytes after the recorded length are cut on reopen. Its records are the
//! checkpoint's `failed` and `resolved` records. The checkpoint also
//! records where the log's live part starts (`from`): every record before
//! it is superseded. A retry that deals with the failed lines in log order
//! moves `from` past each (appending the record of a line that fails
//! again), so the live part holds each failed line once, and listing the
//! failed lines is one pass over it. A line resolved or failed again out
//! of that order gets a `resolved` record, which a listing collects first
//! (memory for those only).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::parent_dir;
use super::format::{LogMark, OutputMark, Record};
use super::fs::{Fs, FsFile};
use super::output::{self, OutputShared, Role};
use crate::error::{Error, Result};
use crate::failed::FailedLine;

/// Appended to the checkpoint's file name to name its failure log.
pub(crate) const SUFFIX: &str = ".failures";

/// How much of the log a listing reads at a time.
const CHUNK: u64 = 256 << 10;
/// How much is read to find one record (more if it is longer).
const HEAD_CHUNK: u64 = 4 << 10;

/// The file name of the failure log of the checkpoint at `checkpoint`.
pub(crate) fn log_name(checkpoint: &Path) -> String {
    let name = checkpoint
        .file_name()
        .map_or_else(|| "checkpoint".into(), |name| name.to_string_lossy());
    format!("{name}{SUFFIX}")
}

/// Where the failure log recorded as `name` is: beside the checkpoint (a
/// job directory can be moved whole).
pub(crate) fn log_path(checkpoint: &Path, name: &str) -> PathBuf {
    let name = Path::new(name).file_name().unwrap_or(name.as_ref());
    parent_dir(checkpoint).join(name)
}

/// How every record of a failure log starts.
const RECORD_STARTS: [&[u8]; 2] = [b"failed line=", b"resolved line="];

/// Whether `head`, the first bytes of a file, can be the start of a
/// failure log: a record's start, or a part of one (a log whose first
/// append was cut short).
fn starts_like_a_log(head: &[u8]) -> bool {
    RECORD_STARTS
        .iter()
        .any(|start| start.starts_with(head) || head.starts_with(start))
}

/// Creates the failure log at `path`, empty, its name synced. A file
/// there that no checkpoint records is the log of a checkpoint removed
/// since, or of a session killed before it recorded the log: emptied, if
/// it starts like a failure log. Any other file is left alone, an error.
pub(crate) fn create(fs: &dyn Fs, path: &Path) -> Result<Box<dyn FsFile>> {
    let err = |action, err| Error::io(Some(path), action, err);
    let file = match fs.open_append(path) {
        Ok(mut file) => {
            let head = file
                .read_at(0, RECORD_STARTS[1].len() as u64)
                .map_err(|e| err("reading the failure log", e))?;
            if !starts_like_a_log(&head) {
                return Err(err(
                    "creating the failure log",
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a failure log is where the checkpoint keeps its \
                         failure log; linemark does not empty it: move it away",
                    ),
                ));
            }
            file.set_len(0)
                .and_then(|()| file.sync_data())
                .map_err(|e| err("emptying the failure log", e))?;
            file
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs
            .create_new(path)
            .map_err(|e| err("creating the failure log", e))?,
        Err(e) => return Err(err("opening the failure log", e)),
    };
    fs.sync_dir(parent_dir(path))
        .map_err(|e| err("syncing the failure log's directory", e))?;
    Ok(file)
}

/// Opens the failure log the checkpoint records, checked against its mark
/// and cut back to it. Bytes after the mark were never recorded, even
/// after a clean end: unlike an output, the log is linemark's own file,
/// which a new session appends to (and syncs) before the group that
/// records the session open, so a kill between the two leaves such bytes.
pub(crate) fn open(
    fs: &dyn Fs,
    path: &Path,
    checkpoint: &Path,
    mark: OutputMark,
) -> Result<Box<dyn FsFile>> {
    match output::check(fs, path, Role::FailureLog, mark, false)? {
        output::Found::Ours(mut file) => {
            output::cut_back(path, Role::FailureLog, file.as_mut(), mark.len)?;
            Ok(file)
        }
        output::Found::Changed(reason) => Err(Error::OutputChanged {
            path: path.to_path_buf(),
            checkpoint: checkpoint.to_path_buf(),
            reason: format!("the checkpoint's failure log: {reason}"),
        }),
    }
}

/// Reads bytes of a failure log at an offset.
trait ReadAt: Send {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

impl ReadAt for Arc<OutputShared> {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        OutputShared::read_at(self, offset, len)
    }
}

impl ReadAt for File {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        FsFile::read_at(self, offset, len)
    }
}

/// The records of a failure log between two offsets, read in chunks.
pub(crate) struct Records {
    source: Box<dyn ReadAt>,
    path: PathBuf,
    start: u64,
    end: u64,
    chunk: u64,
    /// Bytes read and not yet taken, and the offset of the first.
    buf: Vec<u8>,
    taken: usize,
    buf_offset: u64,
}

impl Records {
    fn new(source: Box<dyn ReadAt>, path: PathBuf, start: u64, end: u64, chunk: u64) -> Records {
        Records {
            source,
            path,
            start,
            end,
            chunk,
            buf: Vec::new(),
            taken: 0,
            buf_offset: start,
        }
    }

    /// The records of the live part of a log attached to a checkpoint.
    pub(crate) fn live(log: &Arc<OutputShared>, mark: &LogMark) -> Records {
        Records::new(
            Box::new(Arc::clone(log)),
            log.path().to_path_buf(),
            mark.from,
            mark.mark.len,
            CHUNK,
        )
    }

    /// Back to the first record.
    fn rewind(&mut self) {
        self.buf.clear();
        self.taken = 0;
        self.buf_offset = self.start;
    }

    fn corrupt(&self, offset: u64, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    /// The next record, with its offset and the offset after it.
    pub(crate) fn next_record(&mut self) -> Result<Option<(u64, u64, Record)>> {
        loop {
            let rest = &self.buf[self.taken..];
            let offset = self.buf_offset + self.taken as u64;
            if let Some(len) = memchr::memchr(b'\n', rest) {
                let record =
                    Record::decode(&rest[..len]).map_err(|reason| self.corrupt(offset, reason))?;
                if !matches!(record, Record::Failed(_) | Record::Resolved { .. }) {
                    return Err(self.corrupt(offset, "not a failure record".into()));
                }
                self.taken += len + 1;
                return Ok(Some((offset, offset + len as u64 + 1, record)));
            }
            let read_to = self.buf_offset + self.buf.len() as u64;
            if read_to >= self.end {
                if rest.is_empty() {
                    return Ok(None);
                }
                return Err(self.corrupt(offset, "a record cut at the recorded length".into()));
            }
            let want = self.chunk.max(rest.len() as u64).min(self.end - read_to);
            let bytes = self
                .source
                .read_at(read_to, want)
                .map_err(|err| Error::io(Some(&self.path), "reading the failure log", err))?;
            if bytes.is_empty() {
                return Err(self.corrupt(read_to, "the failure log ends early".into()));
            }
            self.buf.drain(..self.taken);
            self.buf_offset += self.taken as u64;
            self.taken = 0;
            self.buf.extend_from_slice(&bytes);
        }
    }
}

/// The failed lines of the live part of an attached log at `mark`.
pub(crate) fn live_lines(log: &Arc<OutputShared>, mark: LogMark) -> Result<FailedLines> {
    FailedLines::new(Some(Records::live(log, &mark)), mark.resolved, Vec::new())
}

/// The record at `offset` of an attached log (the head of its live part):
/// its line and the offset after it; `None` at the end.
pub(crate) fn record_at(
    log: &Arc<OutputShared>,
    offset: u64,
    end: u64,
) -> Result<Option<(Record, u64)>> {
    let mut records = Records::new(
        Box::new(Arc::clone(log)),
        log.path().to_path_buf(),
        offset,
        end,
        HEAD_CHUNK,
    );
    Ok(records
        .next_record()?
        .map(|(_, after, record)| (record, after)))
}

/// The lines recorded as failed, read as they are needed: from the
/// failure log (the lines the position passed), then from memory (the
/// lines beyond it). Returned by [`Checkpoint::failed`](crate::Checkpoint::failed)
/// and [`Checkpoint::inspect_failed`](crate::Checkpoint::inspect_failed).
///
/// Reading stops at the first error (a log that cannot be read or was
/// damaged): [`Error::Io`], [`Error::Corrupt`].
pub struct FailedLines {
    records: Option<Records>,
    /// Lines with a `resolved` record in the live part, and the offset of
    /// the last: a failed record before it is superseded.
    resolved: HashMap<u64, u64>,
    rest: std::vec::IntoIter<FailedLine>,
    done: bool,
}

impl std::fmt::Debug for FailedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedLines")
            .field("log", &self.records.as_ref().map(|records| &records.path))
            .finish_non_exhaustive()
    }
}

impl FailedLines {
    /// The failed lines of `records` (a live part holding `resolved`
    /// `resolved` records), then `rest`.
    pub(crate) fn new(
        records: Option<Records>,
        resolved: u64,
        rest: Vec<FailedLine>,
    ) -> Result<FailedLines> {
        let mut lines = FailedLines {
            records,
            resolved: HashMap::new(),
            rest: rest.into_iter(),
            done: false,
        };
        if let Some(records) = lines.records.as_mut().filter(|_| resolved > 0) {
            while let Some((offset, _, record)) = records.next_record()? {
                if let Record::Resolved { line } = record {
                    lines.resolved.insert(line, offset);
                }
            }
            records.rewind();
        }
        Ok(lines)
    }

    /// The lines from memory alone (a checkpoint without a failure log).
    pub(crate) fn from_memory(rest: Vec<FailedLine>) -> FailedLines {
        FailedLines {
            records: None,
            resolved: HashMap::new(),
            rest: rest.into_iter(),
            done: false,
        }
    }

    fn next_logged(&mut self) -> Result<Option<FailedLine>> {
        let Some(records) = self.records.as_mut() else {
            return Ok(None);
        };
        while let Some((offset, _, record)) = records.next_record()? {
            if let Record::Failed(failed) = record {
                let superseded = self
                    .resolved
                    .get(&failed.line())
                    .is_some_and(|&at| at > offset);
                if !superseded {
                    return Ok(Some(failed));
                }
            }
        }
        self.records = None;
        Ok(None)
    }
}

impl Iterator for FailedLines {
    type Item = Result<FailedLine>;

    fn next(&mut self) -> Option<Result<FailedLine>> {
        if self.done {
            return None;
        }
        match self.next_logged() {
            Ok(Some(failed)) => Some(Ok(failed)),
            Ok(None) => self.rest.next().map(Ok),
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// The failed lines a checkpoint file records, read from its failure log
/// (without a lock: for a status display).
pub(crate) fn inspect(
    checkpoint: &Path,
    log: Option<&(String, LogMark)>,
    rest: Vec<FailedLine>,
) -> Result<FailedLines> {
    let Some((name, mark)) = log else {
        return Ok(FailedLines::from_memory(rest));
    };
    let path = log_path(checkpoint, name);
    let file = File::open(&path).map_err(|err| Error::OutputChanged {
        path: path.clone(),
        checkpoint: checkpoint.to_path_buf(),
        reason: format!("the checkpoint's failure log cannot be opened: {err}"),
    })?;
    let records = Records::new(Box::new(file), path, mark.from, mark.mark.len, CHUNK);
    FailedLines::new(Some(records), mark.resolved, rest)
}
