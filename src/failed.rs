//! Lines whose task failed for good, as recorded in the checkpoint.

use std::fmt;
use std::io::{BufRead, Read, Seek, SeekFrom};

use crate::error::{Error, Result};
use crate::line::{Line, LongLine};
use crate::position::Position;
use crate::scan::{LineId, describe_bytes, digest, scan_line};

/// A line whose task failed for good (out of attempts, or an error not worth
/// retrying), with the error message, as recorded in the checkpoint.
///
/// A failed line counts as dealt with: the job goes on past it, and a plain
/// rerun does not redo it. It can be retried on purpose, found again by its
/// offset and checked by its length and digest.
///
/// # Examples
///
/// ```
/// use std::io::Cursor;
/// use linemark::{FailedLine, Line};
///
/// let input = b"ok\nbroken\nok\n";
/// let failed = FailedLine::new(&Line::new(b"broken\n", 2, 3), 3, "exit status 1");
/// let mut buf = Vec::new();
/// let line = failed.read_from(&mut Cursor::new(&input[..]), &mut buf)?;
/// assert_eq!(line.as_str()?, "broken");
/// assert_eq!(failed.error(), "exit status 1");
/// # Ok::<(), linemark::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FailedLine {
    id: LineId,
    attempts: u32,
    error: String,
}

impl FailedLine {
    /// A record of `line` failing after `attempts` attempts with `error`.
    #[must_use]
    pub fn new(line: &Line<'_>, attempts: u32, error: impl Into<String>) -> FailedLine {
        FailedLine {
            id: LineId::of(line.number(), line.offset(), line.raw()),
            attempts,
            error: error.into(),
        }
    }

    /// The failed line that ends at `end`.
    pub(crate) fn ending_at(end: Position, attempts: u32, error: String) -> FailedLine {
        FailedLine {
            id: end.last_line(),
            attempts,
            error,
        }
    }

    /// The same record for a line that moved to another number and offset.
    pub(crate) fn moved(&self, line: u64, offset: u64) -> FailedLine {
        FailedLine {
            id: LineId {
                line,
                offset,
                ..self.id
            },
            ..self.clone()
        }
    }

    /// The record after failing again in a retry-failed run.
    pub(crate) fn failed_again(&self, attempts: u32, error: String) -> FailedLine {
        FailedLine {
            attempts: self.attempts.saturating_add(attempts),
            error,
            ..self.clone()
        }
    }

    /// Checks that `line` is this failed line, unchanged.
    pub(crate) fn check(&self, line: &Line<'_>) -> Result<()> {
        self.id.check_bytes(line.offset(), line.raw())
    }

    /// Checks that the line over the limit `long` is this failed line,
    /// unchanged.
    pub(crate) fn check_long(&self, long: &LongLine) -> Result<()> {
        self.id.check_scanned(long.offset, &long.scanned)
    }

    /// The error for an input that ends before this line.
    pub(crate) fn missing(&self) -> Error {
        self.changed("the end of the input".to_string())
    }

    fn changed(&self, found: String) -> Error {
        self.id.changed(found)
    }

    /// A record from its parts, unchecked, for tests.
    #[cfg(test)]
    pub(crate) fn from_parts(
        line: u64,
        offset: u64,
        len: u64,
        digest: u32,
        attempts: u32,
        error: String,
    ) -> FailedLine {
        let id = LineId {
            line,
            offset,
            len,
            digest,
        };
        FailedLine::recorded(id, attempts, error)
    }

    /// The record of the line `id` failing after `attempts` attempts with
    /// `error`.
    pub(crate) fn recorded(id: LineId, attempts: u32, error: String) -> FailedLine {
        FailedLine {
            id,
            attempts,
            error,
        }
    }

    /// Where the line is and what it holds, as recorded.
    pub(crate) fn id(&self) -> &LineId {
        &self.id
    }

    /// The 1-based line number.
    #[must_use]
    pub fn line(&self) -> u64 {
        self.id.line
    }

    /// Byte offset of the start of the line.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.id.offset
    }

    /// Length of the line in bytes, terminator included.
    #[must_use]
    #[allow(clippy::len_without_is_empty)] // a line is never empty
    pub fn len(&self) -> u64 {
        self.id.len
    }

    /// [`digest`](crate::digest) of the line.
    #[must_use]
    pub fn digest(&self) -> u32 {
        self.id.digest
    }

    /// How many times the task was tried before it was given up.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The task's last error message.
    #[must_use]
    pub fn error(&self) -> &str {
        &self.error
    }

    /// Checks this line at its offset in `reader` (the whole input) as
    /// [`read_from`](FailedLine::read_from) does, for a line longer than
    /// `limit`: streamed over, never held in memory.
    pub(crate) fn scan_long<R: BufRead + Seek>(
        &self,
        reader: &mut R,
        limit: usize,
    ) -> Result<LongLine> {
        let io_err = |err| Error::io(None, "reading a failed line", err);
        let id = &self.id;
        let input_len = reader.seek(SeekFrom::End(0)).map_err(io_err)?;
        if id.offset.saturating_add(id.len) > input_len {
            return Err(self.changed(format!("an input that ends at byte {input_len}")));
        }
        if id.offset > 0 {
            reader
                .seek(SeekFrom::Start(id.offset - 1))
                .map_err(io_err)?;
            let mut before = [0u8];
            reader.read_exact(&mut before).map_err(io_err)?;
            if before[0] != b'\n' {
                return Err(self.changed(format!(
                    "no line starting at byte {} (the byte before is not a newline)",
                    id.offset
                )));
            }
        } else {
            reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        }
        let Some(scanned) = scan_line(reader).map_err(io_err)? else {
            return Err(self.missing());
        };
        let long = LongLine::new(id.line, id.offset, limit, scanned);
        self.check_long(&long)?;
        Ok(long)
    }

    /// Reads this line again from `reader` (the whole input) by seeking to
    /// its offset, checking its length and digest. `buf` holds the bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the input does not hold the same line at
    /// that offset any more, [`Error::Io`] when seeking or reading fails.
    pub fn read_from<'b, R: BufRead + Seek>(
        &self,
        reader: &mut R,
        buf: &'b mut Vec<u8>,
    ) -> Result<Line<'b>> {
        let io_err = |err| Error::io(None, "reading a failed line", err);
        let id = &self.id;
        // Read one byte before the line (it must end the line before) and
        // one after (an unterminated last line must not have grown longer),
        // the same checks as `Position::seek_offset`.
        let before = u64::from(id.offset > 0);
        // The recorded place is checked against the input before anything
        // is read, so a record that points past its end (a truncated input)
        // costs no read and no memory.
        let input_len = reader.seek(SeekFrom::End(0)).map_err(io_err)?;
        let end = id.offset.saturating_add(id.len);
        if end > input_len {
            return Err(self.changed(format!("an input that ends at byte {input_len}")));
        }
        reader
            .seek(SeekFrom::Start(id.offset - before))
            .map_err(io_err)?;
        buf.clear();
        reader
            .by_ref()
            .take(before.saturating_add(id.len).saturating_add(1))
            .read_to_end(buf)
            .map_err(io_err)?;
        let start = before as usize;
        let starts_a_line = before == 0 || buf.first() == Some(&b'\n');
        let raw = buf
            .get(start..)
            .map(|rest| {
                &rest[..rest
                    .len()
                    .min(usize::try_from(id.len).unwrap_or(usize::MAX))]
            })
            .unwrap_or_default();
        let after = buf.get(start + raw.len()).copied();
        let is_line = match raw.iter().position(|&b| b == b'\n') {
            Some(at) => at + 1 == raw.len(),
            None => matches!(after, None | Some(b'\n')),
        };
        if !starts_a_line || raw.len() as u64 != id.len || !is_line || digest(raw) != id.digest {
            return Err(self.changed(describe_bytes(raw)));
        }
        let end = start + raw.len();
        buf.truncate(end);
        buf.drain(..start);
        Ok(Line::new(buf, id.line, id.offset))
    }
}

// Written out to show the fields as they were when they were the record's
// own, before they were gathered in a `LineId`.
impl fmt::Debug for FailedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedLine")
            .field("line", &self.id.line)
            .field("offset", &self.id.offset)
            .field("len", &self.id.len)
            .field("digest", &self.id.digest)
            .field("attempts", &self.attempts)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_past_the_end_of_the_input_is_a_change_found_without_reading() {
        let input = b"one\ntwo\n";
        let recorded = FailedLine::from_parts(2, 4, 4, digest(b"two\n"), 1, "x".into());
        let mut buf = Vec::new();
        let line = recorded
            .read_from(&mut std::io::Cursor::new(&input[..]), &mut buf)
            .unwrap();
        assert_eq!(line.raw(), b"two\n");
        // A length no input of this size can hold: refused before reading.
        let huge = FailedLine::from_parts(2, 4, u64::MAX - 4, 0, 1, "x".into());
        let mut buf = Vec::new();
        match huge.read_from(&mut std::io::Cursor::new(&input[..]), &mut buf) {
            Err(Error::InputChanged { found, .. }) => {
                assert!(found.contains("ends at byte 8"), "{found}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(buf.capacity(), 0, "nothing was read");
    }
}
