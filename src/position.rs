//! The resume point of a job and the three verified ways to seek to it.

use std::io::{BufRead, Seek, SeekFrom};

use crate::error::{Error, Result};
use crate::scan::{
    LineId, ScannedLine, fill_buf, peek_byte, read_exact_line, scan_line, skip_lines,
};

pub use crate::scan::digest;

/// How far a job got: everything before this point of the input is finished.
///
/// A position holds the byte offset of the next unfinished line, the number
/// of finished lines before it, and the length and [`digest`] of the last
/// finished line, so that a seek can check that the input still holds that
/// line exactly there. [`Position::start`] (all zero) is the start of any
/// input.
///
/// # Seeking
///
/// Three ways, all verified, each returning the position actually reached
/// (the same one, except where noted):
///
/// | method | needs | cost |
/// |---|---|---|
/// | [`seek_offset`](Position::seek_offset) | `BufRead + Seek` | reads one line: O(1) in the position |
/// | [`seek_lines`](Position::seek_lines) | `BufRead` (stdin, pipes, decompressors) | reads up to the position |
/// | [`seek_content`](Position::seek_content) | `BufRead + Seek` | reads up to the position, or the whole input |
///
/// A mismatch is [`Error::InputChanged`], never a silent guess. The seeks
/// take a reader, which has no name, so their errors name no file;
/// [`Error::with_path`] adds the one the reader was opened from. An input that
/// only grew at its end is not a change: if the last finished line was the
/// input's last line and had no `\n`, a `\n` appended later is consumed by
/// the seek and the returned position includes it; any other byte appended
/// to that line is a change.
///
/// # Examples
///
/// ```
/// use std::io::Cursor;
/// use linemark::Position;
///
/// let input = b"a\nb\nc\n";
/// let after_b = Position::start().after(b"a\n").after(b"b\n");
/// assert_eq!((after_b.offset(), after_b.line()), (4, 2));
///
/// let mut cursor = Cursor::new(&input[..]);
/// after_b.seek_offset(&mut cursor)?;
/// assert_eq!(cursor.position(), 4);
///
/// // A reader has no name: `with_path` puts the file's in the error.
/// let changed = b"a\nB\nc\n";
/// let err = after_b
///     .seek_offset(&mut Cursor::new(&changed[..]))
///     .map_err(|err| err.with_path("letters.txt"))
///     .unwrap_err();
/// assert!(matches!(err, linemark::Error::InputChanged { line: 2, offset: 2, .. }));
/// assert!(err.to_string().starts_with("letters.txt: input changed since the checkpoint"));
/// # Ok::<(), linemark::Error>(())
/// ```
// Ordered by offset first: in one input, a later position is further on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    offset: u64,
    line: u64,
    last_len: u64,
    last_digest: u32,
}

impl Position {
    /// The start of the input: nothing finished yet.
    #[must_use]
    pub const fn start() -> Position {
        Position {
            offset: 0,
            line: 0,
            last_len: 0,
            last_digest: 0,
        }
    }

    /// A position from its parts, or `None` when they cannot describe a
    /// position: at the start all parts are zero; otherwise the last line is
    /// at least one byte long, fits before `offset`, and there are no more
    /// lines than bytes.
    #[must_use]
    pub fn from_parts(offset: u64, line: u64, last_len: u64, last_digest: u32) -> Option<Position> {
        let valid = if line == 0 {
            offset == 0 && last_len == 0 && last_digest == 0
        } else {
            last_len >= 1 && last_len <= offset && line <= offset
        };
        valid.then_some(Position {
            offset,
            line,
            last_len,
            last_digest,
        })
    }

    pub(crate) fn from_parts_unchecked(
        offset: u64,
        line: u64,
        last_len: u64,
        last_digest: u32,
    ) -> Position {
        Position {
            offset,
            line,
            last_len,
            last_digest,
        }
    }

    /// The position after one more line, whose raw bytes (terminator
    /// included) are `raw_line`.
    #[must_use]
    pub fn after(&self, raw_line: &[u8]) -> Position {
        Position {
            offset: self.offset + raw_line.len() as u64,
            line: self.line + 1,
            last_len: raw_line.len() as u64,
            last_digest: digest(raw_line),
        }
    }

    /// Byte offset of the next unfinished line.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of finished lines, which is also the 1-based number of the
    /// last finished line (0 at the start).
    #[must_use]
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Length in bytes of the last finished line, terminator included.
    #[must_use]
    pub fn last_len(&self) -> u64 {
        self.last_len
    }

    /// [`digest`] of the last finished line.
    #[must_use]
    pub fn last_digest(&self) -> u32 {
        self.last_digest
    }

    /// Whether nothing is finished yet.
    #[must_use]
    pub fn is_start(&self) -> bool {
        self.line == 0
    }

    fn last_line_offset(&self) -> u64 {
        self.offset - self.last_len
    }

    /// The last finished line, as a checkpoint records a line.
    pub(crate) fn last_line(&self) -> LineId {
        LineId {
            line: self.line,
            offset: self.last_line_offset(),
            len: self.last_len,
            digest: self.last_digest,
        }
    }

    /// The error for an input that holds `found` where the last finished
    /// line was.
    fn changed(&self, found: String) -> Error {
        self.last_line().changed(found)
    }

    /// Compares a line found in the input with the recorded last line.
    /// Returns the position after it when it matches.
    fn matching(&self, start: u64, line: u64, scanned: &ScannedLine) -> Option<Position> {
        let same_bytes = scanned.len == self.last_len;
        // Unterminated when finished, terminated since: the input grew.
        let grew = scanned.terminated && scanned.len == self.last_len + 1;
        (scanned.digest == self.last_digest && (same_bytes || grew)).then_some(Position {
            offset: start + scanned.len,
            line,
            last_len: scanned.len,
            last_digest: scanned.digest,
        })
    }

    /// Seeks `reader` (the whole input, from its first byte) to this
    /// position by byte offset, after checking that the last finished line
    /// is exactly where it was. The cost does not depend on how far the job
    /// got: one seek and one line read.
    ///
    /// Returns the position reached: this one, or one byte further if a
    /// `\n` was appended to an unterminated last line.
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the bytes before the offset are not the
    /// recorded line: the input is shorter than the offset, the offset is not
    /// on a line boundary any more, or the line's content changed.
    /// [`Error::Io`] when reading or seeking fails. Neither names a file:
    /// add it with [`Error::with_path`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::fs::File;
    /// use std::io::{BufRead, BufReader};
    /// use linemark::Position;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("input.txt");
    /// std::fs::write(&path, "first\nsecond\n")?;
    /// let done = Position::start().after(b"first\n");
    /// let mut input = BufReader::new(File::open(&path)?);
    /// done.seek_offset(&mut input).map_err(|err| err.with_path(&path))?;
    /// let mut next = String::new();
    /// input.read_line(&mut next)?;
    /// assert_eq!(next, "second\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seek_offset<R: BufRead + Seek>(&self, reader: &mut R) -> Result<Position> {
        let io_err = |err| Error::io(None, "seeking the input", err);
        if self.is_start() {
            reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
            return Ok(*self);
        }
        let start = self.last_line_offset();
        // Read from one byte earlier to check the line starts on a boundary.
        let from = start.saturating_sub(1);
        reader.seek(SeekFrom::Start(from)).map_err(io_err)?;
        if start > 0 {
            match peek_byte(reader).map_err(io_err)? {
                Some(b'\n') => reader.consume(1),
                Some(_) => {
                    return Err(self.changed(format!(
                        "byte {from} is not the end of a line (offset not on a line boundary)"
                    )));
                }
                None => {
                    // The seek went past the end: say where the end is.
                    let len = reader.seek(SeekFrom::End(0)).map_err(io_err)?;
                    return Err(
                        self.changed(format!("the input ends at byte {len}, before the line"))
                    );
                }
            }
        }
        let scanned = read_exact_line(reader, self.last_len).map_err(io_err)?;
        let Some(mut reached) = self
            .matching(start, self.line, &scanned)
            .filter(|_| scanned.len == self.last_len)
        else {
            let found = if scanned.len < self.last_len {
                format!("the input ends at byte {}", start + scanned.len)
            } else {
                scanned.describe()
            };
            return Err(self.changed(found));
        };
        if !scanned.terminated {
            // The recorded line was the unterminated last line of the input.
            let next = peek_byte(reader).map_err(io_err)?;
            match next {
                None => {}
                Some(b'\n') => {
                    reader.consume(1);
                    reached.offset += 1;
                    reached.last_len += 1;
                }
                Some(_) => {
                    return Err(self.changed(
                        "the line continues past its recorded end (it was the last line, without a newline)"
                            .to_string(),
                    ));
                }
            }
        }
        Ok(reached)
    }

    /// Moves `reader` (the whole input, from its first byte) past the
    /// finished lines by counting them, for inputs that cannot seek: skips
    /// `line() - 1` lines, then reads the last finished line and checks it
    /// and its offset.
    ///
    /// Returns the position reached: this one, or one byte further if a
    /// `\n` was appended to an unterminated last line.
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the input has fewer lines, when the last
    /// finished line does not start at the recorded offset (an earlier line
    /// changed length), or when its content changed. [`Error::Io`] when
    /// reading fails. Neither names a file: add it with
    /// [`Error::with_path`].
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Error, Position};
    ///
    /// let done = Position::start().after(b"a\n").after(b"b\n");
    /// let mut stream: &[u8] = b"a\nb\nc\n"; // a slice cannot seek
    /// done.seek_lines(&mut stream)?;
    /// assert_eq!(stream, b"c\n");
    ///
    /// let mut shorter: &[u8] = b"a\n";
    /// let err = done
    ///     .seek_lines(&mut shorter)
    ///     .map_err(|err| err.with_path("letters.txt"))
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InputChanged { line: 2, .. }));
    /// assert_eq!(err.path(), Some(std::path::Path::new("letters.txt")));
    /// # Ok::<(), linemark::Error>(())
    /// ```
    pub fn seek_lines<R: BufRead>(&self, reader: &mut R) -> Result<Position> {
        if self.is_start() {
            return Ok(*self);
        }
        let io_err = |err| Error::io(None, "reading the input", err);
        let (skipped_bytes, skipped_lines) = skip_lines(reader, self.line - 1).map_err(io_err)?;
        let start = self.last_line_offset();
        let ends = || {
            self.changed(format!(
                "the input ends after {skipped_lines} lines, at byte {skipped_bytes}"
            ))
        };
        if skipped_lines < self.line - 1 {
            return Err(ends());
        }
        let scanned = scan_line(reader).map_err(io_err)?;
        let Some(scanned) = scanned else {
            return Err(ends());
        };
        if skipped_bytes != start {
            return Err(self.changed(format!(
                "{} at byte {skipped_bytes} (an earlier line changed length)",
                scanned.describe()
            )));
        }
        self.matching(start, self.line, &scanned)
            .ok_or_else(|| self.changed(scanned.describe()))
    }

    /// Finds the last finished line by its content, the classic way of
    /// resuming, scanning `reader` from its first byte. Use it when lines
    /// before the resume point may have been removed or edited.
    ///
    /// Duplicates are resolved by line number, never by taking the first
    /// occurrence: if the content is found at the recorded line number, that
    /// occurrence is the one (even when it also occurs earlier). Otherwise the
    /// whole input is scanned; if the content occurs exactly once, the seek
    /// goes there and returns a position with the new line number and offset;
    /// if it occurs several times, that is [`Error::AmbiguousLastLine`].
    ///
    /// # Errors
    ///
    /// [`Error::LastLineNotFound`] when the content occurs nowhere,
    /// [`Error::AmbiguousLastLine`] as described, [`Error::Io`] when reading
    /// or seeking fails. None names a file: add it with
    /// [`Error::with_path`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{BufRead, Cursor};
    /// use linemark::Position;
    ///
    /// let done = Position::start().after(b"a\n").after(b"b\n").after(b"a\n");
    /// // "a" occurs at lines 1 and 3: the recorded line number picks line 3.
    /// let mut input = Cursor::new(&b"a\nb\na\nc\n"[..]);
    /// let reached = done.seek_content(&mut input)?;
    /// assert_eq!(reached.line(), 3);
    /// let mut next = String::new();
    /// input.read_line(&mut next).unwrap();
    /// assert_eq!(next, "c\n");
    /// # Ok::<(), linemark::Error>(())
    /// ```
    pub fn seek_content<R: BufRead + Seek>(&self, reader: &mut R) -> Result<Position> {
        let io_err = |err| Error::io(None, "scanning the input", err);
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        if self.is_start() {
            return Ok(*self);
        }
        const SHOWN: usize = 8;
        let mut offset = 0u64;
        let mut line = 0u64;
        let mut found: Option<Position> = None;
        let mut candidates = Vec::new();
        let mut count = 0usize;
        while let Some(scanned) = scan_line(reader).map_err(io_err)? {
            line += 1;
            if let Some(reached) = self.matching(offset, line, &scanned) {
                if line == self.line {
                    return Ok(reached);
                }
                count += 1;
                if candidates.len() < SHOWN {
                    candidates.push(line);
                }
                found = Some(reached);
            }
            offset += scanned.len;
        }
        match (count, found) {
            (1, Some(reached)) => {
                reader
                    .seek(SeekFrom::Start(reached.offset))
                    .map_err(io_err)?;
                Ok(reached)
            }
            (0, _) | (_, None) => Err(Error::LastLineNotFound {
                path: None,
                line: self.line,
                len: self.last_len,
            }),
            _ => Err(Error::AmbiguousLastLine {
                path: None,
                line: self.line,
                candidates,
            }),
        }
    }
}

/// What a checkpoint knows of the whole finished part of a file input: its
/// first `offset` bytes (at most to the position; not always a line end)
/// have CRC-32 `crc`. The checkpoint's writer thread extends it as the job
/// goes, reading the input back; a resume checks it ([`check_prefix`]), so
/// that no byte of the finished lines can change unseen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) offset: u64,
    pub(crate) crc: u32,
}

impl Prefix {
    /// Extends the prefix over the `bytes` that follow it.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        let mut hasher = crc32fast::Hasher::new_with_initial_len(self.crc, self.offset);
        hasher.update(bytes);
        self.crc = hasher.finalize();
        self.offset += bytes.len() as u64;
    }
}

/// Checks the finished part of a file input before `position`, reading it
/// from its first byte (at memory speed; the cost grows with the offset):
/// the lines before the last finished one must be exactly `line() - 1`, so
/// that every later line keeps the number the checkpoint's records give it;
/// and with a `prefix`, the first `prefix.offset` bytes must be the ones
/// finished, so that no edit of a finished line goes unseen. The last
/// finished line itself is checked by [`Position::seek_offset`] or
/// [`Position::seek_lines`], which the caller runs first: an input shorter
/// than the position is their error.
pub(crate) fn check_prefix<R: BufRead>(
    reader: &mut R,
    position: &Position,
    prefix: Option<Prefix>,
) -> Result<()> {
    if position.is_start() {
        return Ok(());
    }
    let lines_end = position.last_line_offset();
    let prefix = prefix.filter(|prefix| prefix.offset <= position.offset);
    let end = prefix.map_or(lines_end, |prefix| prefix.offset.max(lines_end));
    let mut found = Prefix::default();
    let mut newlines = 0u64;
    while found.offset < end {
        // Stop at each place to check, so that each sees exactly its bytes.
        let stop = [Some(lines_end), prefix.map(|prefix| prefix.offset)]
            .into_iter()
            .flatten()
            .filter(|&at| at > found.offset)
            .min()
            .unwrap_or(end);
        let want = usize::try_from(stop - found.offset).unwrap_or(usize::MAX);
        let read = fill_buf(reader, |available| {
            let bytes = &available[..want.min(available.len())];
            if found.offset < lines_end {
                newlines += memchr::memchr_iter(b'\n', bytes).count() as u64;
            }
            found.extend(bytes);
            bytes.len()
        })
        .map_err(|err| Error::io(None, "reading the finished part of the input", err))?;
        if read == 0 {
            // Shorter than the position: not this check's to report.
            return Ok(());
        }
        reader.consume(read);
        if found.offset == lines_end && newlines != position.line - 1 {
            return Err(Error::InputChanged {
                path: None,
                line: position.line,
                offset: lines_end,
                expected: format!(
                    "{} lines before it, as when they were finished",
                    position.line - 1
                ),
                found: format!(
                    "{newlines} lines in the first {lines_end} bytes (lines before the resume point were joined, split, added or removed)"
                ),
            });
        }
        if let Some(prefix) = prefix.filter(|prefix| prefix.offset == found.offset) {
            if prefix.crc != found.crc {
                return Err(Error::InputChanged {
                    path: None,
                    line: position.line,
                    offset: lines_end,
                    expected: format!(
                        "the first {} bytes as finished, with digest {:08x}",
                        prefix.offset, prefix.crc
                    ),
                    found: format!(
                        "other bytes, with digest {:08x} (a finished line was edited)",
                        found.crc
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    /// The position after the first `n` lines of `input`.
    fn after_lines(input: &[u8], n: usize) -> Position {
        input
            .split_inclusive(|&b| b == b'\n')
            .take(n)
            .fold(Position::start(), |pos, line| pos.after(line))
    }

    fn rest_after_offset(input: &[u8], pos: Position) -> Result<Vec<u8>> {
        let mut cursor = Cursor::new(input);
        pos.seek_offset(&mut cursor)?;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).unwrap();
        Ok(rest)
    }

    fn rest_after_lines(input: &[u8], pos: Position) -> Result<Vec<u8>> {
        // A small buffer exercises lines spanning several fills.
        let mut reader = BufReader::with_capacity(4, input);
        pos.seek_lines(&mut reader)?;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        Ok(rest)
    }

    fn rest_after_content(input: &[u8], pos: Position) -> Result<Vec<u8>> {
        let mut reader = BufReader::with_capacity(4, Cursor::new(input));
        pos.seek_content(&mut reader)?;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        Ok(rest)
    }

    type Seeker = fn(&[u8], Position) -> Result<Vec<u8>>;
    const ALL: [(&str, Seeker); 3] = [
        ("offset", rest_after_offset),
        ("lines", rest_after_lines),
        ("content", rest_after_content),
    ];

    /// Every seek mode, at every line boundary, leaves the reader exactly
    /// at the rest of the input.
    fn check_every_boundary(input: &[u8]) {
        let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
        for n in 0..=lines.len() {
            let pos = after_lines(input, n);
            let expected: Vec<u8> = lines[n..].concat();
            for (name, seek) in ALL {
                let rest = seek(input, pos)
                    .unwrap_or_else(|err| panic!("{name} seek after {n} lines: {err}"));
                assert_eq!(rest, expected, "{name} seek after {n} lines");
            }
        }
    }

    #[test]
    fn seeks_at_every_boundary_of_plain_input() {
        check_every_boundary(b"alpha\nbeta\ngamma\n");
    }

    #[test]
    fn seeks_with_crlf_empty_lines_and_no_final_newline() {
        check_every_boundary(b"a\r\n\r\n\n\nb\r\nlast");
    }

    #[test]
    fn seeks_over_invalid_utf8() {
        check_every_boundary(b"\xff\xfe\n\x80abc\nok\n");
    }

    #[test]
    fn seeks_with_duplicates_around_the_resume_point() {
        check_every_boundary(b"x\nx\nx\ny\nx\nx\n");
    }

    #[test]
    fn empty_input() {
        for (name, seek) in ALL {
            assert_eq!(seek(b"", Position::start()).unwrap(), b"", "{name}");
        }
        let pos = Position::start().after(b"a\n");
        assert!(matches!(
            rest_after_offset(b"", pos),
            Err(Error::InputChanged { .. })
        ));
        assert!(matches!(
            rest_after_lines(b"", pos),
            Err(Error::InputChanged { .. })
        ));
        assert!(matches!(
            rest_after_content(b"", pos),
            Err(Error::LastLineNotFound { .. })
        ));
    }

    #[test]
    fn a_16_mib_line() {
        let mut input = vec![b'q'; 16 << 20];
        input.extend_from_slice(b"\nafter\n");
        let pos = after_lines(&input, 1);
        for (name, seek) in ALL {
            assert_eq!(seek(&input, pos).unwrap(), b"after\n", "{name}");
        }
        let mut changed = input.clone();
        changed[8 << 20] = b'Q';
        for (name, seek) in ALL {
            assert!(seek(&changed, pos).is_err(), "{name}");
        }
    }

    #[test]
    fn an_input_that_grew_is_not_a_change() {
        let old = b"a\nb\n";
        let grown = b"a\nb\nc\nd\n";
        let pos = after_lines(old, 2);
        for (name, seek) in ALL {
            assert_eq!(seek(grown, pos).unwrap(), b"c\nd\n", "{name}");
        }
    }

    #[test]
    fn an_unterminated_last_line_that_got_its_newline() {
        let old = b"a\nb";
        let pos = after_lines(old, 2);
        assert_eq!(pos.offset(), 3);
        let grown = b"a\nb\nc\n";
        for (name, seek) in ALL {
            assert_eq!(seek(grown, pos).unwrap(), b"c\n", "{name}");
        }
        let mut cursor = Cursor::new(&grown[..]);
        let reached = pos.seek_offset(&mut cursor).unwrap();
        assert_eq!(reached, after_lines(grown, 2));
    }

    #[test]
    fn an_unterminated_last_line_that_was_extended_is_a_change() {
        let pos = after_lines(b"a\nb", 2);
        for (name, seek) in ALL {
            let err = seek(b"a\nbc\n", pos).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InputChanged { .. } | Error::LastLineNotFound { .. }
                ),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_changed_last_line_is_detected_with_line_and_offset() {
        let pos = after_lines(b"one\ntwo\nthree\n", 2);
        for (name, seek) in [("offset", ALL[0].1), ("lines", ALL[1].1)] {
            match seek(b"one\ntwx\nthree\n", pos) {
                Err(Error::InputChanged {
                    line: 2, offset: 4, ..
                }) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            rest_after_content(b"one\ntwx\nthree\n", pos),
            Err(Error::LastLineNotFound { line: 2, .. })
        ));
    }

    #[test]
    fn an_earlier_line_that_changed_length_is_detected() {
        let pos = after_lines(b"one\ntwo\nthree\n", 2);
        let changed = b"one!\ntwo\nthree\n";
        assert!(matches!(
            rest_after_offset(changed, pos),
            Err(Error::InputChanged { .. })
        ));
        assert!(matches!(
            rest_after_lines(changed, pos),
            Err(Error::InputChanged { .. })
        ));
        // Content seeking is for exactly this case: it finds "two" at line 2.
        assert_eq!(rest_after_content(changed, pos).unwrap(), b"three\n");
    }

    #[test]
    fn offset_not_on_a_line_boundary_is_a_change() {
        // "xb\n" ends at the same offset as "b\n" would, with the same last bytes.
        let pos = Position::start().after(b"aa\n").after(b"b\n");
        let err = rest_after_offset(b"a\nxb\nc\n", pos).unwrap_err();
        assert!(matches!(err, Error::InputChanged { .. }), "{err}");
    }

    #[test]
    fn offset_past_the_end_is_a_change() {
        let pos = after_lines(b"a\nb\nc\n", 3);
        let err = rest_after_offset(b"a\nb\n", pos).unwrap_err();
        assert!(matches!(err, Error::InputChanged { .. }), "{err}");
        let err = rest_after_lines(b"a\nb\n", pos).unwrap_err();
        assert!(matches!(err, Error::InputChanged { .. }), "{err}");
    }

    #[test]
    fn content_seek_never_jumps_to_an_earlier_duplicate() {
        // Finished through the second "dup" (line 3); line 2 must not be redone.
        let input = b"dup\nmid\ndup\nnext\n";
        let pos = after_lines(input, 3);
        assert_eq!(rest_after_content(input, pos).unwrap(), b"next\n");
    }

    #[test]
    fn content_seek_rebases_a_unique_line_after_removed_lines() {
        let pos = after_lines(b"a\nb\nc\nd\n", 3);
        let trimmed = b"c\nd\n"; // the user removed finished lines
        let mut reader = Cursor::new(&trimmed[..]);
        let reached = pos.seek_content(&mut reader).unwrap();
        assert_eq!((reached.line(), reached.offset()), (1, 2));
        assert_eq!(reader.position(), 2);
    }

    #[test]
    fn content_seek_refuses_to_guess_between_duplicates() {
        let pos = after_lines(b"a\nb\nc\nd\n", 3);
        match rest_after_content(b"c\nz\nq\nc\nd\n", pos) {
            Err(Error::AmbiguousLastLine {
                line: 3,
                candidates,
                ..
            }) => assert_eq!(candidates, vec![1, 4]),
            other => panic!("{other:?}"),
        }
        match rest_after_content(b"c\nc\nx\nd\n", pos) {
            Err(Error::AmbiguousLastLine { candidates, .. }) => {
                assert_eq!(candidates, vec![1, 2])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seek_lines_reads_nothing_past_the_position() {
        let pos = after_lines(b"a\nb\n", 1);
        let mut stream: &[u8] = b"a\nb\nc\n";
        pos.seek_lines(&mut stream).unwrap();
        assert_eq!(stream, b"b\nc\n");
    }

    #[test]
    fn from_parts_rejects_impossible_positions() {
        assert!(Position::from_parts(0, 0, 0, 0).is_some());
        assert!(Position::from_parts(1, 0, 0, 0).is_none());
        assert!(Position::from_parts(5, 1, 0, 7).is_none());
        assert!(Position::from_parts(5, 1, 6, 7).is_none());
        assert!(Position::from_parts(5, 6, 1, 7).is_none());
        assert_eq!(
            Position::from_parts(6, 2, 2, digest(b"b")),
            Some(after_lines(b"abc\nb\n", 2))
        );
    }
}
