//! What a line is, and a reader that hands out lines with their positions.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::position::Position;
use crate::scan::{ScannedLine, digest, fill_buf, scan_rest_of_line};

/// One line of the input, as read by [`LineReader`].
///
/// # What a line is
///
/// A line is a run of bytes ended by `\n`, or by the end of the input (a last
/// line without a newline is still a line). The terminator belongs to the
/// line's raw bytes ([`raw`](Line::raw)) but not to its content
/// ([`as_bytes`](Line::as_bytes)). A `\r` before the `\n` is part of the
/// content and is stripped by [`as_str`](Line::as_str) only, so CRLF input
/// is never silently changed. An empty line (`"\n"`) is a line with empty
/// content; an empty input has no lines at all. Lines are numbered from 1.
///
/// A line borrows its bytes from the reader, until the next line is read;
/// [`to_owned_line`](Line::to_owned_line) makes an [`OwnedLine`] to keep or
/// send elsewhere.
///
/// # Examples
///
/// ```
/// use linemark::LineReader;
///
/// let mut lines = LineReader::new(&b"alpha\r\nbeta"[..]);
/// let first = lines.next_line()?.unwrap();
/// assert_eq!(first.number(), 1);
/// assert_eq!(first.as_bytes(), b"alpha\r");
/// assert_eq!(first.as_str()?, "alpha");
/// let second = lines.next_line()?.unwrap();
/// assert_eq!((second.number(), second.offset()), (2, 7));
/// assert_eq!(second.raw(), b"beta");
/// assert!(lines.next_line()?.is_none());
/// # Ok::<(), linemark::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Line<'a> {
    raw: &'a [u8],
    number: u64,
    offset: u64,
    path: Option<&'a Path>,
}

impl<'a> Line<'a> {
    /// A line with the given raw bytes (terminator included), 1-based number
    /// and start offset, from no named file. Useful when lines come from
    /// somewhere other than a [`LineReader`].
    #[must_use]
    pub fn new(raw: &'a [u8], number: u64, offset: u64) -> Line<'a> {
        Line {
            raw,
            number,
            offset,
            path: None,
        }
    }

    /// The same line, from the file at `path`: its errors name the file.
    /// A [`LineReader`] given a [`path`](LineReader::path) hands out its
    /// lines so.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::Path;
    /// use linemark::Line;
    ///
    /// let line = Line::new(b"caf\xe9\n", 3, 20).with_path("menu.txt");
    /// assert_eq!(line.path(), Some(Path::new("menu.txt")));
    /// let err = line.as_str().unwrap_err();
    /// assert_eq!(err.path(), Some(Path::new("menu.txt")));
    /// assert!(err.to_string().starts_with("menu.txt: line 3 (byte 20)"));
    /// ```
    #[must_use]
    pub fn with_path<P: AsRef<Path> + ?Sized>(self, path: &'a P) -> Line<'a> {
        Line {
            path: Some(path.as_ref()),
            ..self
        }
    }

    /// The file the line was read from, when known (see
    /// [`with_path`](Line::with_path)).
    #[must_use]
    pub fn path(&self) -> Option<&'a Path> {
        self.path
    }

    /// The line's bytes including its `\n` terminator, if it has one.
    #[must_use]
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The line's content: its bytes without the `\n` terminator (a `\r`
    /// before it is kept).
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw.strip_suffix(b"\n").unwrap_or(self.raw)
    }

    /// The line's content as UTF-8, without the `\n` terminator and without
    /// a `\r` before it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUtf8`] naming the line, its offset and, when known,
    /// its file ([`path`](Line::path)) when the content is not valid UTF-8.
    pub fn as_str(&self) -> Result<&'a str> {
        let content = self.as_bytes();
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        std::str::from_utf8(content).map_err(|err| Error::InvalidUtf8 {
            path: self.path.map(Path::to_path_buf),
            line: self.number,
            offset: self.offset,
            valid_up_to: err.valid_up_to(),
        })
    }

    /// The 1-based line number.
    #[must_use]
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Byte offset of the first byte of the line.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the line ends with `\n` (only the last line of an input can
    /// lack it).
    #[must_use]
    pub fn is_terminated(&self) -> bool {
        self.raw.ends_with(b"\n")
    }

    /// The position just after this line: what to commit once it is
    /// finished. Computes the line's digest.
    #[must_use]
    pub fn end_position(&self) -> Position {
        Position::from_parts_unchecked(
            self.offset + self.raw.len() as u64,
            self.number,
            self.raw.len() as u64,
            digest(self.raw),
        )
    }

    /// A copy of the line that owns its bytes (and its path), to keep after
    /// the next line is read or to move to another thread.
    #[must_use]
    pub fn to_owned_line(&self) -> OwnedLine {
        OwnedLine {
            raw: self.raw.into(),
            number: self.number,
            offset: self.offset,
            path: self.path.map(Arc::from),
        }
    }

    /// A copy of the line that owns its bytes, naming `path` (shared, so a
    /// copy costs no allocation for it).
    #[cfg(feature = "tokio")]
    pub(crate) fn to_owned_in(self, path: Option<&Arc<Path>>) -> OwnedLine {
        OwnedLine {
            raw: self.raw.into(),
            number: self.number,
            offset: self.offset,
            path: path.cloned(),
        }
    }
}

/// A [`Line`] that owns its bytes: for work handed to another thread, a
/// queue or a future, which a borrowed line cannot outlive.
///
/// It has the accessors of [`Line`], with the same meaning, and
/// [`as_line`](OwnedLine::as_line) lends it out where a `Line` is wanted
/// (to [`Checkpoint::commit_line`](crate::Checkpoint::commit_line), say).
/// Made by [`Line::to_owned_line`] or `From`, at the cost of a copy of the
/// bytes (and of the path, when the line has one).
///
/// # Examples
///
/// ```
/// use std::thread;
/// use linemark::{LineReader, OwnedLine};
///
/// let mut lines = LineReader::new(&b"one\ntwo\n"[..]);
/// let mut work = Vec::new();
/// while let Some(line) = lines.next_line()? {
///     work.push(line.to_owned_line());
/// }
/// let done = thread::spawn(move || {
///     work.iter()
///         .map(|line: &OwnedLine| Ok((line.number(), line.as_str()?.len())))
///         .collect::<linemark::Result<Vec<_>>>()
/// })
/// .join()
/// .unwrap()?;
/// assert_eq!(done, [(1, 3), (2, 3)]);
/// # Ok::<(), linemark::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedLine {
    raw: Box<[u8]>,
    number: u64,
    offset: u64,
    path: Option<Arc<Path>>,
}

impl OwnedLine {
    /// The line, borrowed.
    #[must_use]
    pub fn as_line(&self) -> Line<'_> {
        Line {
            raw: &self.raw,
            number: self.number,
            offset: self.offset,
            path: self.path.as_deref(),
        }
    }

    /// The file the line was read from, when known ([`Line::path`]).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The line's bytes including its `\n` terminator ([`Line::raw`]).
    #[must_use]
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The line's content without the `\n` terminator
    /// ([`Line::as_bytes`]).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.as_line().as_bytes()
    }

    /// The line's content as UTF-8, without `\n` or `\r\n`
    /// ([`Line::as_str`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUtf8`] naming the line, its offset and, when known,
    /// its file, when the content is not valid UTF-8.
    pub fn as_str(&self) -> Result<&str> {
        self.as_line().as_str()
    }

    /// The 1-based line number.
    #[must_use]
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Byte offset of the first byte of the line.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the line ends with `\n` ([`Line::is_terminated`]).
    #[must_use]
    pub fn is_terminated(&self) -> bool {
        self.as_line().is_terminated()
    }

    /// The position just after this line ([`Line::end_position`]).
    #[must_use]
    pub fn end_position(&self) -> Position {
        self.as_line().end_position()
    }
}

impl From<&Line<'_>> for OwnedLine {
    fn from(line: &Line<'_>) -> OwnedLine {
        line.to_owned_line()
    }
}

impl From<Line<'_>> for OwnedLine {
    fn from(line: Line<'_>) -> OwnedLine {
        line.to_owned_line()
    }
}

/// Reads lines from a [`BufRead`], keeping track of their numbers and
/// offsets, with an optional limit on line length.
///
/// A line that lies whole in the underlying reader's buffer is handed out
/// in place, without a copy; one that spans buffer refills is copied into a
/// reused buffer. Either way reading a line costs no allocation once that
/// buffer has grown to the longest line. With a
/// [`max_line_len`](LineReader::max_line_len), that buffer never grows past
/// the limit: a longer line is streamed over, not buffered.
///
/// # Examples
///
/// Resuming: seek with the recorded [`Position`], then read on.
///
/// ```
/// use std::io::Cursor;
/// use linemark::{LineReader, Position};
///
/// let input = b"one\ntwo\nthree\n";
/// let mut reader = LineReader::new(Cursor::new(&input[..]));
/// let done = reader.next_line()?.unwrap().end_position();
///
/// let mut again = Cursor::new(&input[..]);
/// let resumed = done.seek_offset(&mut again)?;
/// let mut reader = LineReader::resume(again, resumed);
/// assert_eq!(reader.next_line()?.unwrap().as_str()?, "two");
/// # Ok::<(), linemark::Error>(())
/// ```
#[derive(Debug)]
pub struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of the line handed out last that are still in the reader's
    /// buffer, consumed when the next line is read.
    unconsumed: usize,
    /// Bytes known to be in the reader's buffer after the line handed out
    /// last (0 when unknown).
    rest: usize,
    next_offset: u64,
    next_number: u64,
    max_len: Option<usize>,
    path: Option<PathBuf>,
}

impl<R: BufRead> LineReader<R> {
    /// A reader at the start of the input.
    pub fn new(reader: R) -> LineReader<R> {
        LineReader::resume(reader, Position::start())
    }

    /// A reader that is already at `position` (as returned by one of the
    /// seek methods of [`Position`]): line numbers and offsets continue from
    /// there.
    pub fn resume(reader: R, position: Position) -> LineReader<R> {
        LineReader {
            reader,
            buf: Vec::new(),
            unconsumed: 0,
            rest: 0,
            next_offset: position.offset(),
            next_number: position.line() + 1,
            max_len: None,
            path: None,
        }
    }

    /// Refuses lines longer than `limit` bytes (terminator included) with
    /// [`Error::LineTooLong`] instead of buffering them. No limit by default:
    /// a line is buffered whole, however long.
    ///
    /// A line over the limit is streamed over to its `\n` (or the end of
    /// the input), so at most `limit` bytes of it are ever held in memory;
    /// [`next_line`](LineReader::next_line) returns the error for it, and
    /// the next call reads the line after it, numbered and placed as usual.
    /// [`Runner`](crate::Runner) has a limit by default and makes such a line
    /// a failed line.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Error, LineReader};
    ///
    /// let mut lines = LineReader::new(&b"short\nmuch too long\nnext\n"[..]).max_line_len(8);
    /// assert_eq!(lines.next_line()?.unwrap().as_str()?, "short");
    /// assert!(matches!(
    ///     lines.next_line(),
    ///     Err(Error::LineTooLong { line: 2, offset: 6, limit: 8, .. })
    /// ));
    /// let next = lines.next_line()?.unwrap();
    /// assert_eq!((next.as_str()?, next.number(), next.offset()), ("next", 3, 20));
    /// # Ok::<(), linemark::Error>(())
    /// ```
    #[must_use]
    pub fn max_line_len(mut self, limit: usize) -> LineReader<R> {
        self.max_len = Some(limit);
        self
    }

    /// Names the input file in errors: those of reading, of lines over the
    /// limit, and of the lines' [`as_str`](Line::as_str) (each line carries
    /// the path, see [`Line::path`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::fs::File;
    /// use std::io::BufReader;
    /// use linemark::LineReader;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("names.txt");
    /// std::fs::write(&path, b"ada\ngr\xe4ce\n")?;
    /// let mut lines = LineReader::new(BufReader::new(File::open(&path)?)).path(&path);
    /// assert_eq!(lines.next_line()?.unwrap().as_str()?, "ada");
    /// let err = lines.next_line()?.unwrap().as_str().unwrap_err();
    /// assert_eq!(err.path(), Some(path.as_path()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn path(mut self, path: impl AsRef<Path>) -> LineReader<R> {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Reads the next line, or `None` at the end of the input.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when reading fails: the reader is then in the middle of
    /// a line, and line numbers and offsets are no longer meaningful.
    /// [`Error::LineTooLong`] when a limit is set and the line exceeds it:
    /// the reader has moved past that line, and the next call reads the one
    /// after it.
    #[inline]
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        match self.next_item()? {
            Some(Next::Line(line)) => Ok(Some(line)),
            Some(Next::TooLong(long)) => Err(long.into_error()),
            None => Ok(None),
        }
    }

    /// The next line, or what was found of one over the limit.
    #[inline]
    pub(crate) fn next_item(&mut self) -> Result<Option<Next<'_>>> {
        self.consume_last();
        // Fast path: the whole line is in the reader's buffer (found in one
        // borrow, handed out from a second one).
        match self.line_in_place() {
            Ok(Some(len)) => self.hand_out(len).map(|line| Some(Next::Line(line))),
            Ok(None) => match self.read_copied()? {
                Copied::Line => Ok(Some(Next::Line(self.take_copied()))),
                Copied::End => Ok(None),
                Copied::TooLong(long) => Ok(Some(Next::TooLong(long))),
            },
            Err(err) => Err(read_error(self.path.as_deref(), err)),
        }
    }

    /// Hands out the next `len` bytes of the reader's buffer as a line, in
    /// place (`fill_buf` on a non-empty buffer returns the same bytes
    /// without reading).
    #[inline(always)]
    fn hand_out(&mut self, len: usize) -> Result<Line<'_>> {
        let available = self
            .reader
            .fill_buf()
            .map_err(|err| read_error(self.path.as_deref(), err))?;
        let Some(raw) = available.get(..len) else {
            let err = io::Error::other("the reader's buffer shrank between two fill_buf calls");
            return Err(read_error(self.path.as_deref(), err));
        };
        let line = Line {
            raw,
            number: self.next_number,
            offset: self.next_offset,
            path: self.path.as_deref(),
        };
        self.unconsumed = len;
        self.next_number += 1;
        self.next_offset += len as u64;
        Ok(line)
    }

    /// Calls `f` on every remaining line until it returns `Ok(false)` or an
    /// error, the input ends, or a line is over the limit; returns which.
    /// The same lines as [`next_line`](LineReader::next_line), without a
    /// `Result` to pass back per line, which keeps the runner's hot loop in
    /// registers. After a line over the limit, calling it again goes on
    /// with the next line.
    #[inline(always)]
    pub(crate) fn for_each_line<F>(&mut self, mut f: F) -> Result<Paused>
    where
        F: FnMut(&Line<'_>) -> Result<bool>,
    {
        loop {
            self.consume_last();
            match self.line_in_place() {
                Ok(Some(len)) => {
                    let line = self.hand_out(len)?;
                    if !f(&line)? {
                        return Ok(Paused::Asked);
                    }
                }
                Ok(None) => match self.read_copied()? {
                    Copied::Line => {
                        if !f(&self.take_copied())? {
                            return Ok(Paused::Asked);
                        }
                    }
                    Copied::End => return Ok(Paused::EndOfInput),
                    Copied::TooLong(long) => return Ok(Paused::TooLong(long)),
                },
                Err(err) => return Err(read_error(self.path.as_deref(), err)),
            }
        }
    }

    /// The length of the next line if it lies whole in the reader's buffer.
    #[inline]
    fn line_in_place(&mut self) -> io::Result<Option<usize>> {
        let max_len = self.max_len;
        let (len, available) = fill_buf(&mut self.reader, |available| {
            let len = memchr::memchr(b'\n', available)
                .map(|at| at + 1)
                .filter(|&len| max_len.is_none_or(|limit| len <= limit));
            (len, available.len())
        })?;
        if let Some(len) = len {
            self.rest = available - len;
        }
        Ok(len)
    }

    /// Whether the next line lies whole in the reader's buffer, so that
    /// reading it cannot wait for the underlying reader (a pipe whose
    /// writer waits for this line's result, say). Conservative: `false`
    /// when it cannot tell without reading.
    pub(crate) fn next_is_buffered(&mut self) -> bool {
        if self.rest == 0 {
            return false;
        }
        self.consume_last();
        // The buffer is not empty, so `fill_buf` returns it without reading.
        let max_len = self.max_len;
        fill_buf(&mut self.reader, |available| {
            memchr::memchr(b'\n', available)
                .is_some_and(|at| max_len.is_none_or(|limit| at < limit))
        })
        .unwrap_or(false)
    }

    /// The slow path: a line that spans buffer refills (or the last line,
    /// or one over the length limit) is copied into the reused buffer, to
    /// be handed out by [`take_copied`](LineReader::take_copied); one over
    /// the limit is streamed over instead.
    #[inline(never)]
    fn read_copied(&mut self) -> Result<Copied> {
        self.buf.clear();
        let (buf, max_len) = (&mut self.buf, self.max_len);
        loop {
            // The bytes copied and whether they end the line, or `Err` with
            // the limit for a line over it.
            let copied = fill_buf(&mut self.reader, |available| {
                let rest = available.len();
                let (found, used) = match memchr::memchr(b'\n', available) {
                    Some(at) => (true, at + 1),
                    None => (false, available.len()),
                };
                if let Some(limit) = max_len {
                    let wanted = buf.len() + used;
                    if wanted > limit {
                        return Err(limit);
                    }
                    if wanted > buf.capacity() {
                        // Grows as a `Vec` would, but never past the limit: a
                        // line just under it costs the limit, not twice that.
                        let target = (buf.capacity() * 2).clamp(wanted, limit);
                        buf.reserve_exact(target - buf.len());
                    }
                }
                buf.extend_from_slice(&available[..used]);
                Ok((used, found, rest - used))
            })
            .map_err(|err| read_error(self.path.as_deref(), err))?;
            let (used, found, rest) = match copied {
                Ok(copied) => copied,
                Err(limit) => return self.stream_over_long_line(limit).map(Copied::TooLong),
            };
            self.rest = rest;
            if used == 0 {
                break;
            }
            self.reader.consume(used);
            if found {
                break;
            }
        }
        Ok(if self.buf.is_empty() {
            Copied::End
        } else {
            Copied::Line
        })
    }

    /// Hands out the line [`read_copied`](LineReader::read_copied) put in
    /// the buffer.
    fn take_copied(&mut self) -> Line<'_> {
        let (number, offset) = (self.next_number, self.next_offset);
        self.next_number += 1;
        self.next_offset += self.buf.len() as u64;
        Line {
            raw: &self.buf,
            number,
            offset,
            path: self.path.as_deref(),
        }
    }

    /// Streams over the rest of a line found to be over the limit, whose
    /// first bytes (without a `\n`) are in the buffer, computing its length
    /// and digest without holding more of it.
    #[cold]
    fn stream_over_long_line(&mut self, limit: usize) -> Result<LongLine> {
        let scanned = scan_rest_of_line(&mut self.reader, &self.buf);
        self.buf.clear();
        self.rest = 0;
        let scanned = scanned.map_err(|err| read_error(self.path.as_deref(), err))?;
        let long = LongLine {
            number: self.next_number,
            offset: self.next_offset,
            limit,
            scanned,
            path: self.path.clone(),
        };
        self.next_number += 1;
        self.next_offset += long.scanned.len;
        Ok(long)
    }

    /// Consumes the line handed out last, if it was handed out in place.
    fn consume_last(&mut self) {
        if self.unconsumed > 0 {
            self.reader.consume(self.unconsumed);
            self.unconsumed = 0;
        }
    }

    /// Byte offset of the next line to be read.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.next_offset
    }

    /// Number of lines before the next one to be read.
    #[must_use]
    pub fn lines_before(&self) -> u64 {
        self.next_number - 1
    }

    /// The underlying reader, positioned after the last line read.
    pub fn get_mut(&mut self) -> &mut R {
        self.consume_last();
        &mut self.reader
    }

    /// Gives back the underlying reader, positioned after the last line
    /// read.
    pub fn into_inner(mut self) -> R {
        self.consume_last();
        self.reader
    }
}

#[cold]
fn read_error(path: Option<&Path>, err: io::Error) -> Error {
    Error::io(path, "reading the input", err)
}

/// What [`LineReader::next_item`] found.
#[derive(Debug)]
pub(crate) enum Next<'a> {
    Line(Line<'a>),
    /// A line over the limit, streamed over.
    TooLong(LongLine),
}

/// Why [`LineReader::for_each_line`] returned.
#[derive(Debug)]
pub(crate) enum Paused {
    EndOfInput,
    /// The callback returned `false`.
    Asked,
    /// A line over the limit, streamed over.
    TooLong(LongLine),
}

/// What the slow path put in the buffer.
enum Copied {
    Line,
    End,
    TooLong(LongLine),
}

/// A line over a [`LineReader`]'s limit: where it is, and what a streaming
/// pass over it found (its length and digest, as a failed record needs).
#[derive(Debug)]
pub(crate) struct LongLine {
    pub(crate) number: u64,
    pub(crate) offset: u64,
    pub(crate) limit: usize,
    pub(crate) scanned: ScannedLine,
    path: Option<PathBuf>,
}

impl LongLine {
    /// A line over `limit` found by a streaming pass at `offset`.
    pub(crate) fn new(number: u64, offset: u64, limit: usize, scanned: ScannedLine) -> LongLine {
        LongLine {
            number,
            offset,
            limit,
            scanned,
            path: None,
        }
    }

    /// The position just after the line.
    pub(crate) fn end_position(&self) -> Position {
        Position::from_parts_unchecked(
            self.offset + self.scanned.len,
            self.number,
            self.scanned.len,
            self.scanned.digest,
        )
    }

    /// The error text of the line made a failed line: the limit, where the
    /// line is, how long it is and how it starts.
    pub(crate) fn message(&self) -> String {
        let scanned = &self.scanned;
        format!(
            "line {} (byte {}) is longer than the limit of {} bytes: {}",
            self.number,
            self.offset,
            self.limit,
            scanned.describe(),
        )
    }

    fn into_error(self) -> Error {
        Error::LineTooLong {
            path: self.path,
            line: self.number,
            offset: self.offset,
            limit: self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn all_lines(input: &[u8]) -> Vec<(Vec<u8>, u64, u64)> {
        let mut reader = LineReader::new(Cursor::new(input));
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push((line.raw().to_vec(), line.number(), line.offset()));
        }
        out
    }

    #[test]
    fn empty_input_has_no_lines() {
        assert!(all_lines(b"").is_empty());
    }

    #[test]
    fn empty_lines_are_lines() {
        let lines = all_lines(b"\n\nx\n");
        assert_eq!(
            lines,
            vec![
                (b"\n".to_vec(), 1, 0),
                (b"\n".to_vec(), 2, 1),
                (b"x\n".to_vec(), 3, 2)
            ]
        );
    }

    #[test]
    fn last_line_without_newline_is_a_line() {
        let lines = all_lines(b"a\nb");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], (b"b".to_vec(), 2, 2));
    }

    #[test]
    fn crlf_is_stripped_in_as_str_only() {
        let line = Line::new(b"x\r\n", 1, 0);
        assert_eq!(line.as_bytes(), b"x\r");
        assert_eq!(line.as_str().unwrap(), "x");
        // A lone \r at the end of an unterminated line is stripped too.
        assert_eq!(Line::new(b"x\r", 1, 0).as_str().unwrap(), "x");
    }

    #[test]
    fn invalid_utf8_is_a_typed_error_with_line_and_offset() {
        let mut reader = LineReader::new(Cursor::new(&b"ok\nab\xffcd\n"[..]));
        reader.next_line().unwrap();
        let line = reader.next_line().unwrap().unwrap();
        assert_eq!(line.as_bytes(), b"ab\xffcd");
        match line.as_str() {
            Err(Error::InvalidUtf8 {
                line: 2,
                offset: 3,
                valid_up_to: 2,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn line_limit_is_enforced_with_context() {
        let input = b"short\nthis line is too long\n";
        let mut reader = LineReader::new(Cursor::new(&input[..]))
            .max_line_len(10)
            .path("in.txt");
        assert!(reader.next_line().unwrap().is_some());
        match reader.next_line() {
            Err(Error::LineTooLong {
                path: Some(path),
                line: 2,
                offset: 6,
                limit: 10,
            }) => assert_eq!(path, Path::new("in.txt")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn huge_line_is_read_whole() {
        let mut input = vec![b'x'; 16 << 20];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        let mut reader = LineReader::new(std::io::BufReader::new(Cursor::new(input)));
        assert_eq!(
            reader.next_line().unwrap().unwrap().raw().len(),
            (16 << 20) + 1
        );
        assert_eq!(
            reader.next_line().unwrap().unwrap().as_str().unwrap(),
            "next"
        );
    }
}
