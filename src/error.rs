//! The one error type of linemark.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error is linemark's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in linemark itself.
///
/// Errors of a user's own task are kept apart from these: the runner reports
/// them as failed lines, never as an `Error`.
///
/// Every variant carries the context it has: the path of the file involved
/// (when known), the line number (1-based) and the byte offset. The input's
/// path is known when the user gave it: to [`Runner::run`](crate::Runner::run),
/// to [`LineReader::path`](crate::LineReader::path) (which passes it on to
/// its lines' [`as_str`](crate::Line::as_str)), or to
/// [`with_path`](Error::with_path) for the errors of functions that take a
/// reader. The enum is `#[non_exhaustive]`, so new variants can be added
/// without a breaking change.
///
/// # Examples
///
/// ```
/// use linemark::{Checkpoint, Error};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("job.checkpoint");
/// let _first = Checkpoint::open(&path)?;
/// match Checkpoint::open(&path) {
///     Err(Error::Locked { path: locked }) => assert!(locked.ends_with("job.checkpoint")),
///     other => panic!("expected Locked, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{}: {action}: {source}", display_path(path.as_deref()))]
    Io {
        /// The file involved, when known.
        path: Option<PathBuf>,
        /// What linemark was doing ("appending to the checkpoint", ...).
        action: &'static str,
        /// The underlying error, with its original kind.
        #[source]
        source: io::Error,
    },

    /// Another `Checkpoint` (in this process or another one) holds the lock
    /// on this checkpoint.
    #[error(
        "{}: checkpoint is in use by another process (or another Checkpoint in this one); \
         wait for it to finish or stop it first",
        path.display()
    )]
    Locked {
        /// The checkpoint file.
        path: PathBuf,
    },

    /// The lock file of a checkpoint this run holds open was deleted or
    /// replaced, so another run may have taken a new lock and be running
    /// alongside. Noticed before each write and sync; the run stops, and
    /// this checkpoint writes nothing more.
    #[error(
        "{}: the checkpoint's lock file was deleted or replaced during the run, so another \
         run may be using the checkpoint too; this run stopped and wrote nothing more (the \
         lock file must not be deleted while a run is going on)",
        path.display()
    )]
    LockLost {
        /// The lock file.
        path: PathBuf,
    },

    /// The checkpoint records the progress of other lines than the run
    /// asks for: another shard (`index` of `count`; 0 of 1 is every line).
    /// Using it would leave lines undone or do them twice.
    #[error(
        "{}: this checkpoint belongs to shard {}/{} of the lines{}, but this run asks for shard {}/{}{}; \
         give each shard its own checkpoint (the default path does)",
        path.display(),
        recorded.0,
        recorded.1,
        if recorded.1 == 1 { " (every line)" } else { "" },
        asked.0,
        asked.1,
        if asked.1 == 1 { " (every line)" } else { "" }
    )]
    ShardMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The shard recorded in the checkpoint: (index, count).
        recorded: (u64, u64),
        /// The shard the run asked for.
        asked: (u64, u64),
    },

    /// The checkpoint file is damaged before its last valid record, so part
    /// of the recorded progress cannot be trusted.
    #[error(
        "{}: checkpoint is corrupt at byte {offset}: {reason}; \
         the file was left untouched, inspect it or move it away to start over",
        path.display()
    )]
    Corrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// Byte offset of the first damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// The file at the checkpoint path is not a linemark checkpoint.
    #[error(
        "{}: not a linemark checkpoint (it does not start with the linemark header); \
         refusing to overwrite it, choose another checkpoint path",
        path.display()
    )]
    NotACheckpoint {
        /// The file that was found.
        path: PathBuf,
    },

    /// The checkpoint was written by a newer, incompatible format version.
    #[error(
        "{}: checkpoint format version {version} is not supported (this linemark reads version {supported})",
        path.display()
    )]
    UnsupportedVersion {
        /// The checkpoint file.
        path: PathBuf,
        /// The version found in the header.
        version: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// The input is not the one the checkpoint was recorded against: the
    /// recorded last finished line is not where, or not what, it was, or
    /// (see [`Runner::verify_prefix`](crate::Runner::verify_prefix)) the
    /// lines before it are not as many, or not the bytes, they were.
    ///
    /// An input that only grew at its end is not a change.
    #[error(
        "{}: input changed since the checkpoint: at line {line} (byte {offset}) expected {expected}, found {found}",
        display_path(path.as_deref())
    )]
    InputChanged {
        /// The input file, when known.
        path: Option<PathBuf>,
        /// The 1-based number of the line that does not match.
        line: u64,
        /// Byte offset where that line starts (or was expected to start).
        offset: u64,
        /// What the checkpoint recorded.
        expected: String,
        /// What the input holds now.
        found: String,
    },

    /// An output attached to the checkpoint (see
    /// [`Checkpoint::output`](crate::Checkpoint::output)) is not the file
    /// the checkpoint recorded: missing, shorter than recorded, replaced or
    /// edited, or longer by bytes another program appended after a run
    /// that ended cleanly; or the outputs asked for are not the ones the
    /// checkpoint records. Also the checkpoint's own failure log
    /// (`CHECKPOINT.failures`, see [`Checkpoint`](crate::Checkpoint)), the
    /// same way. Nothing was cut or written.
    #[error(
        "{}: output does not match its checkpoint {}: {reason}",
        path.display(),
        checkpoint.display()
    )]
    OutputChanged {
        /// The output file.
        path: PathBuf,
        /// The checkpoint file.
        checkpoint: PathBuf,
        /// What does not match.
        reason: String,
    },

    /// Seeking by content reached the end of the input without finding the
    /// recorded last finished line.
    #[error(
        "{}: the last finished line (line {line}, {len} bytes) does not occur anywhere in the input",
        display_path(path.as_deref())
    )]
    LastLineNotFound {
        /// The input file, when known.
        path: Option<PathBuf>,
        /// The 1-based line number the checkpoint recorded for it.
        line: u64,
        /// Its length in bytes, terminator included.
        len: u64,
    },

    /// Seeking by content found the recorded last finished line several
    /// times, none of them at its recorded line number.
    #[error(
        "{}: the last finished line (recorded as line {line}) occurs at lines {} but not at line {line}; \
         refusing to guess which one is meant",
        display_path(path.as_deref()),
        join(candidates)
    )]
    AmbiguousLastLine {
        /// The input file, when known.
        path: Option<PathBuf>,
        /// The 1-based line number the checkpoint recorded.
        line: u64,
        /// The 1-based line numbers where the content occurs (the first few).
        candidates: Vec<u64>,
    },

    /// A line is not valid UTF-8 (only from the `as_str` conveniences: the
    /// bytes themselves are always available).
    #[error(
        "{}: line {line} (byte {offset}) is not valid UTF-8 (first invalid byte at byte {})",
        display_path(path.as_deref()),
        offset + *valid_up_to as u64
    )]
    InvalidUtf8 {
        /// The input file, when known.
        path: Option<PathBuf>,
        /// The 1-based line number.
        line: u64,
        /// Byte offset of the start of the line.
        offset: u64,
        /// Number of valid bytes at the start of the line.
        valid_up_to: usize,
    },

    /// A commit of a position that no input can have: a line numbered 0, a
    /// line of no bytes, or more lines than bytes. It is refused before it
    /// reaches the checkpoint file.
    #[error(
        "cannot commit line {line} at byte {offset}: lines are numbered from 1 and each is at least one byte long"
    )]
    InvalidPosition {
        /// The line number given.
        line: u64,
        /// The byte offset given.
        offset: u64,
    },

    /// A shard index that is not below the shard count.
    #[error("shard {index} of {count} does not exist: the index must be below the count")]
    InvalidShard {
        /// The index given.
        index: u64,
        /// The count given.
        count: u64,
    },

    /// A line is longer than the configured limit.
    #[error(
        "{}: line {line} (byte {offset}) is longer than the limit of {limit} bytes",
        display_path(path.as_deref())
    )]
    LineTooLong {
        /// The input file, when known.
        path: Option<PathBuf>,
        /// The 1-based line number.
        line: u64,
        /// Byte offset of the start of the line.
        offset: u64,
        /// The limit in bytes.
        limit: usize,
    },
}

impl Error {
    pub(crate) fn io(path: Option<&Path>, action: &'static str, source: io::Error) -> Error {
        Error::Io {
            path: path.map(Path::to_path_buf),
            action,
            source,
        }
    }

    /// Names the input file `path` in this error, when the error is about
    /// the input and names no file yet; any other error is returned as it
    /// is.
    ///
    /// The seek methods of [`Position`](crate::Position) and
    /// [`FailedLine::read_from`](crate::FailedLine::read_from) work on any
    /// reader, which has no name, so their errors name no file: the caller
    /// that opened the file adds it with this method. (Lines from a
    /// [`LineReader`](crate::LineReader) given a
    /// [`path`](crate::LineReader::path), and [`Runner`](crate::Runner)
    /// runs, name the file themselves.) The variants filled in are
    /// [`Io`](Error::Io), [`InputChanged`](Error::InputChanged),
    /// [`LastLineNotFound`](Error::LastLineNotFound),
    /// [`AmbiguousLastLine`](Error::AmbiguousLastLine),
    /// [`InvalidUtf8`](Error::InvalidUtf8) and
    /// [`LineTooLong`](Error::LineTooLong); the others always name their
    /// checkpoint file, or are about no file.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::fs::File;
    /// use std::io::BufReader;
    /// use linemark::{Error, Position};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("urls.txt");
    /// std::fs::write(&path, "a\nB\nc\n")?;
    /// let done = Position::start().after(b"a\n").after(b"b\n");
    /// let mut reader = BufReader::new(File::open(&path)?);
    /// let err = done
    ///     .seek_offset(&mut reader)
    ///     .map_err(|err| err.with_path(&path))
    ///     .unwrap_err();
    /// assert!(matches!(&err, Error::InputChanged { path: Some(p), line: 2, .. } if *p == path));
    /// assert!(err.to_string().starts_with(&format!("{}: input changed", path.display())));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Error {
        match &mut self {
            Error::Io { path: slot, .. }
            | Error::InputChanged { path: slot, .. }
            | Error::LastLineNotFound { path: slot, .. }
            | Error::AmbiguousLastLine { path: slot, .. }
            | Error::InvalidUtf8 { path: slot, .. }
            | Error::LineTooLong { path: slot, .. }
                if slot.is_none() =>
            {
                *slot = Some(path.as_ref().to_path_buf());
            }
            _ => {}
        }
        self
    }

    /// The file this error is about, when known.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::InputChanged { path, .. }
            | Error::LastLineNotFound { path, .. }
            | Error::AmbiguousLastLine { path, .. }
            | Error::InvalidUtf8 { path, .. }
            | Error::LineTooLong { path, .. } => path.as_deref(),
            Error::InvalidShard { .. } | Error::InvalidPosition { .. } => None,
            Error::Locked { path }
            | Error::LockLost { path }
            | Error::ShardMismatch { path, .. }
            | Error::OutputChanged { path, .. }
            | Error::Corrupt { path, .. }
            | Error::NotACheckpoint { path }
            | Error::UnsupportedVersion { path, .. } => Some(path),
        }
    }
}

impl From<Error> for io::Error {
    /// Converts to an `io::Error`, keeping the original kind of an I/O error
    /// and choosing the closest kind for the others.
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::Io { source, .. } => source.kind(),
            Error::Locked { .. } => io::ErrorKind::WouldBlock,
            Error::LockLost { .. } => io::ErrorKind::Other,
            Error::InvalidUtf8 { .. }
            | Error::Corrupt { .. }
            | Error::NotACheckpoint { .. }
            | Error::UnsupportedVersion { .. }
            | Error::LineTooLong { .. } => io::ErrorKind::InvalidData,
            Error::InvalidShard { .. }
            | Error::InvalidPosition { .. }
            | Error::ShardMismatch { .. } => io::ErrorKind::InvalidInput,
            Error::InputChanged { .. }
            | Error::OutputChanged { .. }
            | Error::LastLineNotFound { .. }
            | Error::AmbiguousLastLine { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

fn display_path(path: Option<&Path>) -> DisplayPath<'_> {
    DisplayPath(path)
}

struct DisplayPath<'a>(Option<&'a Path>);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("<input>"),
        }
    }
}

fn join(numbers: &[u64]) -> String {
    let parts: Vec<String> = numbers.iter().map(u64::to_string).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_keeps_its_kind() {
        let err = Error::io(
            Some(Path::new("x")),
            "reading",
            io::Error::new(io::ErrorKind::StorageFull, "disk full"),
        );
        let converted: io::Error = err.into();
        assert_eq!(converted.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn display_names_path_line_and_offset() {
        let err = Error::InputChanged {
            path: None,
            line: 7,
            offset: 120,
            expected: "a".into(),
            found: "b".into(),
        }
        .with_path("urls.txt");
        let text = err.to_string();
        assert!(text.contains("urls.txt"), "{text}");
        assert!(text.contains("line 7"), "{text}");
        assert!(text.contains("byte 120"), "{text}");
    }

    #[test]
    fn with_path_keeps_a_path_already_named() {
        let named = Error::io(Some(Path::new("a")), "reading", io::Error::other("x"));
        assert_eq!(named.with_path("b").path(), Some(Path::new("a")));
        let checkpoint = Error::Locked {
            path: "job.checkpoint".into(),
        };
        assert_eq!(
            checkpoint.with_path("input.txt").path(),
            Some(Path::new("job.checkpoint"))
        );
        let shard = Error::InvalidShard { index: 2, count: 2 };
        assert_eq!(shard.with_path("input.txt").path(), None);
    }

    #[test]
    fn errors_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }
}
