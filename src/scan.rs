//! Lines seen without holding them: a line's digest, streaming passes over
//! a line (its length, digest and first bytes), skipping lines, reads that
//! go on past an interrupting signal, a recorded line's identity and how a
//! line is shown in errors. Below both [`Line`](crate::Line) and
//! [`Position`](crate::Position), which share it.

use std::io::{self, BufRead};

use crate::error::{Error, Result};

/// The digest of a line: CRC-32 (IEEE, as computed by `crc32fast`, zlib and
/// `cksum -a crc32b`) of the line's bytes without its `\n` terminator (a `\r`
/// before it is included).
///
/// This definition is part of the checkpoint format and will not change.
/// Leaving the terminator out means a last line that was unterminated when
/// it was finished keeps its digest when the input later grows past it.
///
/// # Examples
///
/// ```
/// assert_eq!(linemark::digest(b"hello\n"), linemark::digest(b"hello"));
/// assert_ne!(linemark::digest(b"hello\r\n"), linemark::digest(b"hello\n"));
/// assert_eq!(linemark::digest(b""), 0);
/// ```
#[must_use]
pub fn digest(raw_line: &[u8]) -> u32 {
    crc32fast::hash(raw_line.strip_suffix(b"\n").unwrap_or(raw_line))
}

/// Calls `f` on the bytes in `reader`'s buffer, filled first if it is
/// empty (no bytes: the end of the input), and returns what `f` returns
/// (how much to consume, say). A read interrupted by a signal is tried
/// again, as `Read::read_exact` does. The buffer is lent to `f` rather than
/// returned because the borrow checker refuses a borrow returned from
/// inside the retrying loop.
#[inline]
pub(crate) fn fill_buf<R: BufRead + ?Sized, T>(
    reader: &mut R,
    f: impl FnOnce(&[u8]) -> T,
) -> io::Result<T> {
    loop {
        match reader.fill_buf() {
            Ok(available) => return Ok(f(available)),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The next byte of `reader`, not consumed; `None` at the end of the input.
pub(crate) fn peek_byte<R: BufRead>(reader: &mut R) -> io::Result<Option<u8>> {
    fill_buf(reader, |available| available.first().copied())
}

/// What a streaming pass over one line found: its length, whether it ends
/// with `\n`, and the digest of its content. Lines are not buffered, so a
/// huge line costs no memory.
#[derive(Debug)]
pub(crate) struct ScannedLine {
    pub(crate) len: u64,
    pub(crate) terminated: bool,
    pub(crate) digest: u32,
    /// The first bytes of the line's content, to show in error messages.
    pub(crate) preview: Vec<u8>,
}

impl ScannedLine {
    /// Shows the line in an error message (see [`describe`]).
    pub(crate) fn describe(&self) -> String {
        let content = self.len - u64::from(self.terminated);
        describe(
            self.len,
            self.digest,
            Some((&self.preview, self.preview.len() as u64 == content)),
        )
    }
}

/// Where a streaming pass stops.
#[derive(Clone, Copy)]
enum Until {
    /// After the line's `\n`.
    Newline,
    /// After this many bytes in all, whatever they are: only a `\n` at the
    /// last of them ends the line.
    Len(u64),
}

/// Streams over the next line without buffering it. Returns `None` at the end
/// of the input.
pub(crate) fn scan_line<R: BufRead>(reader: &mut R) -> io::Result<Option<ScannedLine>> {
    let scanned = scan(reader, &[], Until::Newline)?;
    Ok((scanned.len > 0).then_some(scanned))
}

/// Streams over the rest of a line whose `first` bytes (without a `\n`)
/// were read already.
pub(crate) fn scan_rest_of_line<R: BufRead>(
    reader: &mut R,
    first: &[u8],
) -> io::Result<ScannedLine> {
    scan(reader, first, Until::Newline)
}

/// Streams exactly `len` bytes (fewer at the end of the input), digesting
/// them like [`digest`] as one line, `\n`s inside it included.
/// `terminated` tells whether the last byte was `\n`.
pub(crate) fn read_exact_line<R: BufRead>(reader: &mut R, len: u64) -> io::Result<ScannedLine> {
    scan(reader, &[], Until::Len(len))
}

/// Streams over a line to `until` or the end of the input, after its
/// `first` bytes (without a `\n`), adding its content (without the `\n`
/// that ends it) to the digest.
fn scan<R: BufRead>(reader: &mut R, first: &[u8], until: Until) -> io::Result<ScannedLine> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(first);
    let mut scanned = ScannedLine {
        len: first.len() as u64,
        terminated: false,
        digest: 0,
        preview: Vec::new(),
    };
    push_preview(&mut scanned.preview, first);
    let (max, to_newline) = match until {
        Until::Newline => (u64::MAX, true),
        Until::Len(len) => (len, false),
    };
    while scanned.len < max && !scanned.terminated {
        let used = fill_buf(reader, |available| {
            let want = usize::try_from(max - scanned.len).unwrap_or(usize::MAX);
            let mut chunk = &available[..want.min(available.len())];
            let newline = if to_newline {
                memchr::memchr(b'\n', chunk)
            } else {
                None
            };
            if let Some(at) = newline {
                chunk = &chunk[..=at];
            }
            let ends = to_newline || scanned.len + chunk.len() as u64 == max;
            let content = match chunk.strip_suffix(b"\n") {
                Some(content) if ends => {
                    scanned.terminated = true;
                    content
                }
                _ => chunk,
            };
            hasher.update(content);
            push_preview(&mut scanned.preview, content);
            scanned.len += chunk.len() as u64;
            chunk.len()
        })?;
        if used == 0 {
            break;
        }
        reader.consume(used);
    }
    scanned.digest = hasher.finalize();
    Ok(scanned)
}

/// Skips `count` lines without looking at their content. Returns the number
/// of bytes and lines skipped (fewer lines only at the end of the input).
pub(crate) fn skip_lines<R: BufRead>(reader: &mut R, count: u64) -> io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut in_line = false;
    while lines < count {
        let used = fill_buf(reader, |available| {
            let mut used = 0;
            for at in memchr::memchr_iter(b'\n', available) {
                lines += 1;
                used = at + 1;
                if lines == count {
                    break;
                }
            }
            if lines < count {
                used = available.len();
            }
            if let Some(&last) = available[..used].last() {
                in_line = last != b'\n';
            }
            used
        })?;
        if used == 0 {
            if in_line {
                lines += 1;
            }
            break;
        }
        bytes += used as u64;
        reader.consume(used);
    }
    Ok((bytes, lines))
}

/// The lines a checkpoint records (done or failed beyond its position) are
/// known by their number, where they start, their length (terminator
/// included) and their [`digest`]: a line read later is the recorded one
/// only if all of these match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LineId {
    pub(crate) line: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) digest: u32,
}

impl LineId {
    /// The line `line` at `offset`, whose bytes (terminator included) are
    /// `raw`.
    pub(crate) fn of(line: u64, offset: u64, raw: &[u8]) -> LineId {
        LineId {
            line,
            offset,
            len: raw.len() as u64,
            digest: digest(raw),
        }
    }

    /// A line from its parts, or `None` when no input holds such a line: it
    /// is numbered from 1, at least one byte long, ends within what a file
    /// can hold, and has no more lines up to its end than bytes.
    pub(crate) fn from_parts(line: u64, offset: u64, len: u64, digest: u32) -> Option<LineId> {
        let possible =
            line > 0 && len > 0 && offset.checked_add(len).is_some_and(|end| line <= end);
        possible.then_some(LineId {
            line,
            offset,
            len,
            digest,
        })
    }

    /// Checks that the line found at `offset` with bytes `raw` is this one.
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] naming both lines when it is not.
    pub(crate) fn check_bytes(&self, offset: u64, raw: &[u8]) -> Result<()> {
        self.check(
            offset,
            raw.len() as u64,
            raw.ends_with(b"\n"),
            || digest(raw),
            || describe_bytes(raw),
        )
    }

    /// Checks that the line a streaming pass found at `offset` is this one.
    ///
    /// # Errors
    ///
    /// As [`check_bytes`](LineId::check_bytes).
    pub(crate) fn check_scanned(&self, offset: u64, scanned: &ScannedLine) -> Result<()> {
        self.check(
            offset,
            scanned.len,
            scanned.terminated,
            || scanned.digest,
            || scanned.describe(),
        )
    }

    /// The one comparison of a line found at `offset` with `len` bytes to
    /// this one; the digest is computed only when the rest matches, and
    /// `found` describes the line for the error (see [`describe`]).
    ///
    /// A line one byte longer, ended by a newline, with the same digest
    /// (which leaves the newline out) is this one too: the input's last line,
    /// recorded without a newline, which one appended since completed (the
    /// rule [`Position::seek_offset`](crate::Position::seek_offset) follows
    /// for the last finished line).
    fn check(
        &self,
        offset: u64,
        len: u64,
        terminated: bool,
        digest: impl FnOnce() -> u32,
        found: impl FnOnce() -> String,
    ) -> Result<()> {
        let same_len = len == self.len || (terminated && len == self.len + 1);
        if offset == self.offset && same_len && digest() == self.digest {
            return Ok(());
        }
        let found = found();
        Err(self.changed(if offset == self.offset {
            found
        } else {
            format!("{found} at byte {offset}")
        }))
    }

    /// The error for an input that holds `found` where this line was.
    pub(crate) fn changed(&self, found: String) -> Error {
        Error::InputChanged {
            path: None,
            line: self.line,
            offset: self.offset,
            expected: describe(self.len, self.digest, None),
            found,
        }
    }
}

/// How many bytes of a line's content an error message shows.
const PREVIEW_LEN: usize = 40;

/// Shows a line found in the input, from its raw bytes.
pub(crate) fn describe_bytes(raw: &[u8]) -> String {
    let content = raw.strip_suffix(b"\n").unwrap_or(raw);
    let preview = &content[..content.len().min(PREVIEW_LEN)];
    describe(
        raw.len() as u64,
        digest(raw),
        Some((preview, preview.len() == content.len())),
    )
}

/// Keeps the first bytes of a line streamed in pieces, for error messages.
fn push_preview(preview: &mut Vec<u8>, content: &[u8]) {
    if preview.len() < PREVIEW_LEN {
        let take = (PREVIEW_LEN - preview.len()).min(content.len());
        preview.extend_from_slice(&content[..take]);
    }
}

/// Shows a line in an error message: its length, its digest and, when
/// known, how its content (without the `\n`) starts and whether that is
/// all of it.
fn describe(len: u64, digest: u32, preview: Option<(&[u8], bool)>) -> String {
    match preview {
        Some((preview, whole)) if !preview.is_empty() => {
            let shown = String::from_utf8_lossy(preview);
            let more = if whole { "" } else { "..." };
            format!("a {len}-byte line with digest {digest:08x} ({shown:?}{more})")
        }
        _ => format!("a {len}-byte line with digest {digest:08x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    #[test]
    fn scan_and_skip_agree_with_the_reader() {
        let input = b"a\n\nccc\r\nlast";
        let mut cursor = Cursor::new(&input[..]);
        let (bytes, lines) = skip_lines(&mut cursor, 2).unwrap();
        assert_eq!((bytes, lines), (3, 2));
        let third = scan_line(&mut cursor).unwrap().unwrap();
        assert_eq!(third.len, 5);
        assert!(third.terminated);
        assert_eq!(third.digest, digest(b"ccc\r\n"));
        let last = scan_line(&mut cursor).unwrap().unwrap();
        assert!(!last.terminated);
        assert!(scan_line(&mut cursor).unwrap().is_none());
        // Skipping past the end counts an unterminated last line.
        let (bytes, lines) = skip_lines(&mut Cursor::new(&input[..]), 10).unwrap();
        assert_eq!((bytes, lines), (input.len() as u64, 4));
    }

    #[test]
    fn skip_lines_across_small_buffers() {
        let input = b"one\ntwo\nthree\nfour\n";
        let mut reader = BufReader::with_capacity(3, Cursor::new(&input[..]));
        assert_eq!(skip_lines(&mut reader, 3).unwrap(), (14, 3));
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "four\n");
    }

    #[test]
    fn an_exact_read_takes_newlines_inside_and_stops_at_its_length() {
        let input = b"ab\ncd\nrest";
        let mut reader = BufReader::with_capacity(2, &input[..]);
        let scanned = read_exact_line(&mut reader, 6).unwrap();
        assert_eq!((scanned.len, scanned.terminated), (6, true));
        assert_eq!(scanned.digest, digest(b"ab\ncd\n"));
        let short = read_exact_line(&mut reader, 10).unwrap();
        assert_eq!((short.len, short.terminated), (4, false));
        assert_eq!(short.digest, digest(b"rest"));
        // A line read in two parts digests as one.
        let mut reader = BufReader::with_capacity(2, &b"ef\n"[..]);
        let rest = scan_rest_of_line(&mut reader, b"abcd").unwrap();
        assert_eq!((rest.len, rest.digest), (7, digest(b"abcdef\n")));
        assert_eq!(rest.preview, b"abcdef");
    }

    /// A reader whose every other call is interrupted by a signal.
    struct Interrupting<R> {
        inner: R,
        interrupt: bool,
    }

    impl<R: Read> Read for Interrupting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.inner.read(buf)
        }
    }

    #[test]
    fn interrupted_reads_are_tried_again() {
        let input = b"one\ntwo\nthree\n";
        let interrupting = || {
            BufReader::with_capacity(
                2,
                Interrupting {
                    inner: &input[..],
                    interrupt: false,
                },
            )
        };
        let mut reader = interrupting();
        assert_eq!(skip_lines(&mut reader, 1).unwrap(), (4, 1));
        assert_eq!(peek_byte(&mut reader).unwrap(), Some(b't'));
        assert_eq!(scan_line(&mut reader).unwrap().unwrap().len, 4);
        assert_eq!(read_exact_line(&mut reader, 6).unwrap().len, 6);
        assert_eq!(peek_byte(&mut reader).unwrap(), None);
    }

    #[test]
    fn a_changed_line_is_shown_with_both_sides() {
        let id = LineId::of(2, 4, b"two\n");
        assert!(id.check_bytes(4, b"two\n").is_ok());
        match id.check_bytes(5, b"twx\n") {
            Err(Error::InputChanged {
                line: 2,
                offset: 4,
                expected,
                found,
                ..
            }) => {
                assert_eq!(expected, describe(4, digest(b"two"), None));
                assert!(found.ends_with("(\"twx\") at byte 5"), "{found}");
            }
            other => panic!("{other:?}"),
        }
    }
}
