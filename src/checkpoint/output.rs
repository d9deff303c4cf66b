//! Outputs kept in step with a checkpoint: append-only files whose length
//! is recorded in the same group of records as the progress it holds the
//! results of, so that a rerun cuts away exactly the results of the lines
//! it does again (see [`Output`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::file::parent_dir;
use super::format::{OutputMark, TAIL};
use super::fs::{Fs, FsFile};
use super::writer::file_id;
use crate::error::{Error, Result};

/// Bytes an output gathers before they are written to its file.
const BUFFER: usize = 64 << 10;

/// What an append-only file kept in step with the checkpoint is for: the
/// job's results, or the checkpoint's own failure log. Errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Output,
    FailureLog,
}

/// What was being done to such a file when an error came.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Doing {
    Opening,
    Reading,
    ReadingBack,
    Writing,
    Recording,
    Syncing,
    CuttingBack,
    SyncingDir,
}

impl Role {
    /// The action an error of `doing` to this file reports.
    pub(crate) fn action(self, doing: Doing) -> &'static str {
        use Doing::*;
        match (self, doing) {
            (Role::Output, Opening) => "opening the output",
            (Role::Output, Reading) => "reading the output",
            (Role::Output, ReadingBack) => "reading the output back",
            (Role::Output, Writing) => "writing the output",
            (Role::Output, Recording) => "recording the output",
            (Role::Output, Syncing) => "syncing the output",
            (Role::Output, CuttingBack) => "cutting the output back",
            (Role::Output, SyncingDir) => "syncing the output's directory",
            (Role::FailureLog, Opening) => "opening the failure log",
            (Role::FailureLog, Reading) => "reading the failure log",
            (Role::FailureLog, ReadingBack) => "reading the failure log back",
            (Role::FailureLog, Writing) => "writing the failure log",
            (Role::FailureLog, Recording) => "recording the failure log",
            (Role::FailureLog, Syncing) => "syncing the failure log",
            (Role::FailureLog, CuttingBack) => "cutting the failure log back",
            (Role::FailureLog, SyncingDir) => "syncing the failure log's directory",
        }
    }

    /// An I/O error of `doing` to the file at `path`.
    pub(crate) fn error(self, path: &Path, doing: Doing, err: io::Error) -> Error {
        Error::io(Some(path), self.action(doing), err)
    }
}

/// An append-only output file attached to a [`Checkpoint`](crate::Checkpoint),
/// for results written exactly once, even across crashes.
///
/// Every commit records how long each output is at that moment, in the
/// same group of records as the progress, and a checkpoint write never
/// records a length that is not in the output's file first (and, unless
/// the durability is [`NoSync`](crate::Durability::NoSync), synced: a power
/// loss cannot leave a record that points past the output's durable
/// data). When the checkpoint is opened again, the output is cut back to
/// the recorded length: what goes is exactly the results of the lines
/// that will be done again. So a loop that appends a line's result and
/// then commits the line writes each result exactly once.
///
/// Get one with [`Checkpoint::output`](crate::Checkpoint::output), before
/// the first commit. The runner does it for
/// [`Runner::output`](crate::Runner::output).
///
/// Writes are buffered (64 KiB); the checkpoint's writer thread writes the
/// buffer out when a record needs it, so results are never held back
/// longer than the commits that cover them.
///
/// A commit records the outputs' lengths at that moment: append a line's
/// results, then commit that line, with no other commit in between (in a
/// parallel loop with a [`Tracker`](crate::Tracker), every append with its
/// ticket's `finish`, and every ticket's `fail` too, under one lock; the
/// runner does this for its workers). The lengths recorded only grow: a loop with outputs
/// commits positions forward only (a position moved back redoes lines
/// whose results the output keeps). Nothing but this handle may write to
/// the file while the checkpoint is open.
///
/// # Examples
///
/// ```
/// use std::fs::File;
/// use std::io::{BufReader, Write};
/// use linemark::{Checkpoint, LineReader};
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("words.txt");
/// std::fs::write(&input, "a\nbb\n")?;
/// let results = dir.path().join("lengths.txt");
///
/// let mut checkpoint = Checkpoint::open(dir.path().join("words.txt.checkpoint"))?;
/// let mut output = checkpoint.output(&results)?;
/// let mut reader = BufReader::new(File::open(&input)?);
/// let start = checkpoint.position().seek_offset(&mut reader)?;
/// let mut lines = LineReader::resume(reader, start);
/// while let Some(line) = lines.next_line()? {
///     writeln!(output, "{} {}", line.as_str()?, line.as_str()?.len())?;
///     checkpoint.commit_line(&line)?;
/// }
/// checkpoint.close()?;
/// assert_eq!(std::fs::read_to_string(&results)?, "a 1\nbb 2\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Output {
    shared: Arc<OutputShared>,
}

/// What an output's handle and the checkpoint share.
#[derive(Debug)]
pub(crate) struct OutputShared {
    /// The path as given.
    path: PathBuf,
    /// The file's identity, where the platform has one.
    identity: Option<Identity>,
    /// Bytes appended so far, written or buffered. Only the appending
    /// thread stores it; the committing thread loads it at every commit.
    appended: AtomicU64,
    /// Sync the file before a record covers its new bytes.
    sync: bool,
    /// Results, or the failure log.
    role: Role,
    /// Bytes appended and not yet written. Held only to append or to swap
    /// the buffer out, never during a write, so the appending thread does
    /// not wait for the writer thread's writes.
    buffer: Mutex<Vec<u8>>,
    /// The file; held while writing to it, so writes keep their order.
    io: Mutex<OutputIo>,
}

#[derive(Debug)]
struct OutputIo {
    file: Box<dyn FsFile>,
    /// The other buffer, swapped with `buffer` to write it out.
    spare: Vec<u8>,
    /// Bytes in the file.
    written: u64,
    /// Bytes known to be on disk.
    synced: u64,
    /// The last mark computed, to spare reading the tail again.
    sealed: Option<OutputMark>,
}

impl Output {
    /// The path given when the output was attached.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The output's length: every byte appended, written to the file or
    /// not yet.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.shared.appended()
    }

    /// Whether the output is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes`. They belong to the lines the next commit covers.
    ///
    /// # Durability
    ///
    /// Nothing, by itself: the bytes are buffered and reach the file
    /// before the checkpoint records a commit made after this call, and
    /// the disk before that record can (see [`Output`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the output when writing the buffer out fails
    /// (a full disk). Nothing of `bytes` is appended then, and the file
    /// is cut back to what was written before.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.shared.append(bytes)
    }

    pub(crate) fn shared(&self) -> &Arc<OutputShared> {
        &self.shared
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Ok(self.append(buf)?)
    }

    /// Writes the buffer to the file (not to the disk: the checkpoint
    /// syncs what its records cover).
    fn flush(&mut self) -> io::Result<()> {
        let mut io = self.shared.lock();
        Ok(self.shared.write_out(&mut io)?)
    }
}

impl OutputShared {
    fn lock(&self) -> MutexGuard<'_, OutputIo> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn lock_buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the buffer to the file: swapped out under its lock, written
    /// without it. On failure the bytes go back in front of the buffer.
    fn write_out(&self, io: &mut OutputIo) -> Result<()> {
        let mut pending = std::mem::take(&mut io.spare);
        std::mem::swap(&mut *self.lock_buffer(), &mut pending);
        if pending.is_empty() {
            io.spare = pending;
            return Ok(());
        }
        let result = io.write_direct(&self.path, self.role, &pending);
        if result.is_err() {
            let mut buffer = self.lock_buffer();
            pending.extend_from_slice(&buffer);
            std::mem::swap(&mut *buffer, &mut pending);
        }
        pending.clear();
        io.spare = pending;
        result
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` to the buffer alone, whatever its size: no I/O, so
    /// a caller holding the checkpoint's state lock may (the failure log;
    /// its buffer is written out at the next seal).
    pub(crate) fn buffer(&self, bytes: &[u8]) {
        self.lock_buffer().extend_from_slice(bytes);
        self.appended
            .store(self.appended() + bytes.len() as u64, Ordering::Relaxed);
    }

    /// Reads `len` bytes at `offset`, the buffer written out first if they
    /// reach into it.
    pub(crate) fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut io = self.lock();
        if offset.saturating_add(len) > io.written {
            self.write_out(&mut io).map_err(io::Error::other)?;
        }
        io.file.read_at(offset, len)
    }

    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    #[inline]
    pub(crate) fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        {
            let mut buffer = self.lock_buffer();
            if buffer.len() + bytes.len() <= BUFFER {
                buffer.extend_from_slice(bytes);
            } else {
                drop(buffer);
                self.append_full(bytes)?;
            }
        }
        self.appended
            .store(self.appended() + bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// [`append`](OutputShared::append) when the buffer is full: write it
    /// out first, and write bytes as large as the buffer straight away.
    #[cold]
    #[inline(never)]
    fn append_full(&self, bytes: &[u8]) -> Result<()> {
        let mut io = self.lock();
        self.write_out(&mut io)?;
        if bytes.len() >= BUFFER {
            io.write_direct(&self.path, self.role, bytes)
        } else {
            self.lock_buffer().extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Makes the first `len` bytes ready to be recorded: written to the
    /// file and, if the output syncs, to the disk; returns their mark.
    pub(crate) fn seal(&self, len: u64) -> Result<OutputMark> {
        let mut io = self.lock();
        if io.written < len {
            self.write_out(&mut io)?;
        }
        if io.written < len {
            return Err(self.error(
                Doing::Recording,
                io::Error::other(format!(
                    "a commit covers {len} bytes, but only {} were appended",
                    io.written
                )),
            ));
        }
        if self.sync && io.synced < len {
            io = self.sync_locked(io)?;
        }
        if let Some(mark) = io.sealed.filter(|mark| mark.len == len) {
            return Ok(mark);
        }
        let digest = tail_digest(io.file.as_mut(), len)
            .map_err(|err| self.error(Doing::ReadingBack, err))?;
        let mark = OutputMark { len, digest };
        io.sealed = Some(mark);
        Ok(mark)
    }

    /// Syncs what was written to the file and not synced yet, whether the
    /// output syncs at every seal or not: an explicit sync of the
    /// checkpoint makes what it records durable, whatever the durability.
    pub(crate) fn sync_written(&self) -> Result<()> {
        let io = self.lock();
        if io.synced < io.written {
            drop(self.sync_locked(io)?);
        }
        Ok(())
    }

    /// Syncs what was written when `io` was taken, on a second handle and
    /// without the lock (appends go on while the disk works); returns the
    /// lock taken again.
    fn sync_locked<'a>(&'a self, io: MutexGuard<'a, OutputIo>) -> Result<MutexGuard<'a, OutputIo>> {
        let upto = io.written;
        let mut handle = io
            .file
            .try_clone()
            .map_err(|err| self.error(Doing::Syncing, err))?;
        drop(io);
        handle
            .sync_data()
            .map_err(|err| self.error(Doing::Syncing, err))?;
        let mut io = self.lock();
        io.synced = io.synced.max(upto);
        Ok(io)
    }

    /// Cuts the output to `len`, dropping what was appended after it
    /// (results no commit covers), and syncs the cut. Bytes before `len`
    /// still in the buffer (a write of them failed) stay there, for the
    /// next write.
    pub(crate) fn cut_to(&self, len: u64) -> Result<()> {
        let mut io = self.lock();
        {
            let mut buffer = self.lock_buffer();
            let keep = usize::try_from(len.saturating_sub(io.written)).unwrap_or(usize::MAX);
            buffer.truncate(keep);
        }
        let cut = io.written > len;
        if cut {
            io.file
                .set_len(len)
                .map_err(|err| self.error(Doing::CuttingBack, err))?;
            io.written = len;
            io.synced = io.synced.min(len);
        }
        if self.sync && (cut || io.synced < io.written) {
            io.file
                .sync_data()
                .map_err(|err| self.error(Doing::Syncing, err))?;
            io.synced = io.written;
        }
        self.appended.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn error(&self, doing: Doing, err: io::Error) -> Error {
        self.role.error(&self.path, doing, err)
    }
}

impl OutputIo {
    /// Writes `bytes` to the file; on failure, cuts it back to what it
    /// held before, so a partial write never stays.
    fn write_direct(&mut self, path: &Path, role: Role, bytes: &[u8]) -> Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                let _ = self.file.set_len(self.written);
                Err(role.error(path, Doing::Writing, err))
            }
        }
    }
}

/// The CRC-32 of the up to [`TAIL`] bytes before `len`.
pub(crate) fn tail_digest(file: &mut dyn FsFile, len: u64) -> io::Result<u32> {
    let start = len.saturating_sub(TAIL);
    let tail = file.read_at(start, len - start)?;
    if (tail.len() as u64) < len - start {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(crc32fast::hash(&tail))
}

/// How an output file compares with what the checkpoint recorded of it.
pub(crate) enum Found {
    /// As recorded, or longer after a crash (bytes no commit covered).
    Ours(Box<dyn FsFile>),
    /// Not the recorded output: the reason.
    Changed(String),
}

/// Opens the output at `path` and checks it against `recorded` (its length
/// and the digest of its tail, and whether the last run ended cleanly).
pub(crate) fn check(
    fs: &dyn Fs,
    path: &Path,
    role: Role,
    recorded: OutputMark,
    closed: bool,
) -> Result<Found> {
    let open_err = |err| role.error(path, Doing::Opening, err);
    let holds = match role {
        Role::Output => "results",
        Role::FailureLog => "failed lines",
    };
    let mut file = match fs.open_append(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(Found::Changed(format!(
                "it is missing; the checkpoint records {} bytes of {holds} in it",
                recorded.len
            )));
        }
        Err(err) => return Err(open_err(err)),
    };
    let len = file.len().map_err(open_err)?;
    if len < recorded.len {
        return Ok(Found::Changed(format!(
            "it is {len} bytes long, shorter than the {} bytes the checkpoint records",
            recorded.len
        )));
    }
    let digest = tail_digest(file.as_mut(), recorded.len)
        .map_err(|err| role.error(path, Doing::Reading, err))?;
    if digest != recorded.digest {
        return Ok(Found::Changed(format!(
            "its bytes before offset {} are not the ones recorded: the file was replaced or edited",
            recorded.len
        )));
    }
    if closed && len > recorded.len {
        return Ok(Found::Changed(format!(
            "{} bytes were added after offset {}, where the last run ended cleanly; \
             linemark did not write them and does not cut them",
            len - recorded.len,
            recorded.len
        )));
    }
    Ok(Found::Ours(file))
}

/// What tells two output paths apart: the file's device and inode, or a
/// canonical path (a file not there yet, or a platform without inodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    File(u64, u64),
    Missing(PathBuf),
}

/// The identity of the output at `path`: its device and inode where the
/// platform gives them, else its canonical path; for a file not there yet,
/// where it will be made (a dangling symbolic link followed).
pub(crate) fn identity(path: &Path) -> Option<Identity> {
    let mut path = path.to_path_buf();
    // A dangling link names the file it will make; a few hops at most.
    for _ in 0..8 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() && !path.exists() => {
                let target = std::fs::read_link(&path).ok()?;
                path = parent_dir(&path).join(target);
            }
            _ => break,
        }
    }
    match std::fs::metadata(&path) {
        Ok(meta) => match file_id(&meta) {
            Some((device, inode)) => Some(Identity::File(device, inode)),
            None => path.canonicalize().ok().map(Identity::Missing),
        },
        Err(_) => {
            let dir = parent_dir(&path).canonicalize().ok()?;
            Some(Identity::Missing(dir.join(path.file_name()?)))
        }
    }
}

/// Cuts `file` back to `len`, dropping bytes no commit covered (results of
/// lines that will be done again), and syncs the cut.
pub(crate) fn cut_back(path: &Path, role: Role, file: &mut dyn FsFile, len: u64) -> Result<()> {
    let found = file
        .len()
        .map_err(|err| role.error(path, Doing::Opening, err))?;
    if found > len {
        file.set_len(len)
            .and_then(|()| file.sync_data())
            .map_err(|err| role.error(path, Doing::CuttingBack, err))?;
    }
    Ok(())
}

/// Opens (creating it if need be) an output no checkpoint records yet: its
/// present bytes stay, results go after them. Returns the file and its
/// mark.
pub(crate) fn create(fs: &dyn Fs, path: &Path) -> Result<(Box<dyn FsFile>, OutputMark)> {
    let open_err = |err| Role::Output.error(path, Doing::Opening, err);
    let (mut file, created) = match fs.open_append(path) {
        Ok(file) => (file, false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            (fs.create_new(path).map_err(open_err)?, true)
        }
        Err(err) => return Err(open_err(err)),
    };
    let len = file.len().map_err(open_err)?;
    let digest = tail_digest(file.as_mut(), len).map_err(open_err)?;
    // The checkpoint records this length: it must not outlive the bytes.
    file.sync_data()
        .map_err(|err| Role::Output.error(path, Doing::Syncing, err))?;
    if created {
        // Its name is on disk before a record names it.
        fs.sync_dir(parent_dir(path))
            .map_err(|err| Role::Output.error(path, Doing::SyncingDir, err))?;
    }
    Ok((file, OutputMark { len, digest }))
}

/// The handle and the shared half of an output opened at `mark`, the
/// file's bytes up to it durable.
pub(crate) fn attach(
    path: &Path,
    role: Role,
    file: Box<dyn FsFile>,
    mark: OutputMark,
    sync: bool,
) -> Output {
    Output {
        shared: Arc::new(OutputShared {
            path: path.to_path_buf(),
            identity: identity(path),
            appended: AtomicU64::new(mark.len),
            sync,
            role,
            buffer: Mutex::new(Vec::with_capacity(BUFFER)),
            io: Mutex::new(OutputIo {
                file,
                spare: Vec::with_capacity(BUFFER),
                written: mark.len,
                synced: mark.len,
                sealed: Some(mark),
            }),
        }),
    }
}
