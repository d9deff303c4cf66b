//! Encoding and decoding of the checkpoint file's records.
//!
//! The format is documented on [`Checkpoint`](crate::Checkpoint); this module
//! is its only implementation.

use std::fmt::Write as _;

use crate::failed::FailedLine;
use crate::position::{Position, Prefix};

/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 3;
/// The oldest version still read. Version 2 added the `shard` record,
/// version 3 the `prefix` record.
pub(crate) const OLDEST_VERSION: u32 = 1;
/// First word of every checkpoint file.
pub(crate) const MAGIC: &str = "linemark-checkpoint";

const CRC_FIELD: &str = " crc=";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Header {
        version: u32,
    },
    Position(Position),
    /// A line finished beyond the position, as the position just after it.
    Done(Position),
    Failed(FailedLine),
    Resolved {
        line: u64,
    },
    /// The lines the checkpoint owns: those whose 0-based index is `index`
    /// modulo `count` (0 of 1: every line).
    Shard {
        index: u64,
        count: u64,
    },
    /// The CRC-32 of the input's first bytes, finished.
    Prefix(Prefix),
}

impl Record {
    /// Appends the record, with its CRC and `\n`, to `out`.
    pub(crate) fn encode(&self, out: &mut String) {
        let start = out.len();
        // Writing to a String cannot fail.
        let _ = match self {
            Record::Header { version } => write!(out, "{MAGIC} version={version}"),
            Record::Position(pos) => write!(
                out,
                "pos offset={} line={} len={} digest={:08x}",
                pos.offset(),
                pos.line(),
                pos.last_len(),
                pos.last_digest()
            ),
            Record::Done(end) => write!(
                out,
                "done line={} offset={} len={} digest={:08x}",
                end.line(),
                end.offset() - end.last_len(),
                end.last_len(),
                end.last_digest()
            ),
            Record::Failed(failed) => {
                let _ = write!(
                    out,
                    "failed line={} offset={} len={} digest={:08x} attempts={} error=",
                    failed.line(),
                    failed.offset(),
                    failed.len(),
                    failed.digest(),
                    failed.attempts(),
                );
                escape_into(failed.error(), out);
                Ok(())
            }
            Record::Resolved { line } => write!(out, "resolved line={line}"),
            Record::Shard { index, count } => write!(out, "shard index={index} count={count}"),
            Record::Prefix(prefix) => write!(
                out,
                "prefix offset={} digest={:08x}",
                prefix.offset, prefix.crc
            ),
        };
        let crc = crc32fast::hash(&out.as_bytes()[start..]);
        let _ = writeln!(out, "{CRC_FIELD}{crc:08x}");
    }

    /// Whether a line carries a CRC that matches it: a record that does but
    /// cannot be decoded was written that way, not torn by a crash.
    pub(crate) fn crc_matches(line: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        text.rsplit_once(CRC_FIELD)
            .and_then(|(body, crc)| Some((body, parse_hex8(crc)?)))
            .is_some_and(|(body, crc)| crc32fast::hash(body.as_bytes()) == crc)
    }

    /// Decodes one record from a line without its `\n`.
    pub(crate) fn decode(line: &[u8]) -> Result<Record, String> {
        let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
        let (body, crc) = text
            .rsplit_once(CRC_FIELD)
            .ok_or_else(|| "no crc field".to_string())?;
        let crc = parse_hex8(crc).ok_or_else(|| "malformed crc field".to_string())?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err("crc mismatch".into());
        }
        let (kind, fields) = body.split_once(' ').unwrap_or((body, ""));
        let mut fields = Fields(fields);
        let record = match kind {
            MAGIC => Record::Header {
                version: fields.number("version")?,
            },
            "pos" => {
                let offset = fields.number("offset")?;
                let line = fields.number("line")?;
                let len = fields.number("len")?;
                let digest = fields.hex("digest")?;
                Record::Position(
                    Position::from_parts(offset, line, len, digest)
                        .ok_or_else(|| "impossible position".to_string())?,
                )
            }
            "done" => {
                let line = fields.number("line")?;
                let offset: u64 = fields.number("offset")?;
                let len = fields.number("len")?;
                let digest = fields.hex("digest")?;
                let end = offset
                    .checked_add(len)
                    .and_then(|end| Position::from_parts(end, line, len, digest))
                    .filter(|end| end.line() > 0)
                    .ok_or_else(|| "impossible done line".to_string())?;
                Record::Done(end)
            }
            "failed" => {
                let line = fields.number("line")?;
                let offset: u64 = fields.number("offset")?;
                let len = fields.number("len")?;
                let digest = fields.hex("digest")?;
                let attempts = fields.number("attempts")?;
                let error = unescape(fields.rest("error")?)?;
                // The same bounds as a done line: the line ends within what
                // a file can hold, after at least one byte per line.
                let possible = offset
                    .checked_add(len)
                    .and_then(|end| Position::from_parts(end, line, len, digest))
                    .is_some_and(|end| end.line() > 0);
                if !possible {
                    return Err("impossible failed line".into());
                }
                Record::Failed(FailedLine::from_parts(
                    line, offset, len, digest, attempts, error,
                ))
            }
            "resolved" => Record::Resolved {
                line: fields.number("line")?,
            },
            "shard" => {
                let index = fields.number("index")?;
                let count = fields.number("count")?;
                if index >= count {
                    return Err("impossible shard".into());
                }
                Record::Shard { index, count }
            }
            "prefix" => Record::Prefix(Prefix {
                offset: fields.number("offset")?,
                crc: fields.hex("digest")?,
            }),
            other => return Err(format!("unknown record kind {other:?}")),
        };
        if !fields.0.is_empty() {
            return Err("unexpected trailing fields".into());
        }
        Ok(record)
    }
}

/// Fields `key=value` separated by single spaces, in a fixed order.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    fn value(&mut self, key: &str) -> Result<&'a str, String> {
        let rest = self
            .0
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| format!("missing field {key}"))?;
        let (value, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        self.0 = rest;
        Ok(value)
    }

    fn number<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, String> {
        let value = self.value(key)?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("malformed field {key}"));
        }
        value.parse().map_err(|_| format!("malformed field {key}"))
    }

    fn hex(&mut self, key: &str) -> Result<u32, String> {
        let value = self.value(key)?;
        parse_hex8(value).ok_or_else(|| format!("malformed field {key}"))
    }

    /// The last field, which runs to the end of the record.
    fn rest(&mut self, key: &str) -> Result<&'a str, String> {
        let value = self
            .0
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| format!("missing field {key}"))?;
        self.0 = "";
        Ok(value)
    }
}

/// Exactly 8 lowercase hex digits, the only spelling the writer uses, so a
/// flipped case bit is caught like any other damage.
fn parse_hex8(text: &str) -> Option<u32> {
    let canonical = text.len() == 8 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    canonical
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

/// Writes `text` as a double-quoted string with `\\`, `\"`, `\n`, `\r`, `\t`
/// and `\u{..}` escapes, so a record stays on one line.
fn escape_into(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn unescape(quoted: &str) -> Result<String, String> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| "malformed error text".to_string())?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == '"' {
                return Err("malformed error text".into());
            }
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let rest = chars.as_str();
                let close = rest
                    .strip_prefix('{')
                    .and_then(|r| r.find('}').map(|end| &r[..end]))
                    .ok_or_else(|| "malformed escape".to_string())?;
                let code =
                    u32::from_str_radix(close, 16).map_err(|_| "malformed escape".to_string())?;
                out.push(char::from_u32(code).ok_or_else(|| "malformed escape".to_string())?);
                chars = rest[close.len() + 2..].chars();
            }
            _ => return Err("malformed escape".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: Record) {
        let mut text = String::new();
        record.encode(&mut text);
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        let decoded = Record::decode(text.trim_end_matches('\n').as_bytes()).unwrap();
        assert_eq!(decoded, record);
    }

    #[test]
    fn every_record_kind_round_trips() {
        round_trip(Record::Header { version: VERSION });
        round_trip(Record::Position(Position::start()));
        round_trip(Record::Position(
            Position::start().after(b"x\n").after(b"yy\r\n"),
        ));
        round_trip(Record::Done(Position::start().after(b"a\n").after(b"bb\n")));
        round_trip(Record::Resolved { line: 7 });
        round_trip(Record::Shard { index: 2, count: 8 });
        round_trip(Record::Failed(FailedLine::from_parts(
            3,
            10,
            5,
            0xdead_beef,
            4,
            "exit 1: \"quoted\" \\ back\nslash\ttab\r\u{1}\u{7f} é crc=00000000".into(),
        )));
    }

    #[test]
    fn the_text_is_what_the_docs_show() {
        let mut text = String::new();
        Record::Header { version: 1 }.encode(&mut text);
        Record::Position(Position::start().after(b"hello\n")).encode(&mut text);
        assert_eq!(
            text,
            format!(
                "linemark-checkpoint version=1 crc={:08x}\npos offset=6 line=1 len=6 digest={:08x} crc={:08x}\n",
                crc32fast::hash(b"linemark-checkpoint version=1"),
                crc32fast::hash(b"hello"),
                crc32fast::hash(
                    format!(
                        "pos offset=6 line=1 len=6 digest={:08x}",
                        crc32fast::hash(b"hello")
                    )
                    .as_bytes()
                )
            )
        );
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let mut text = String::new();
        Record::Position(Position::start().after(b"abc\n")).encode(&mut text);
        let bytes = text.trim_end().as_bytes().to_vec();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    Record::decode(&damaged).is_err(),
                    "flip of bit {bit} at {at} accepted"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut text = String::new();
        Record::Failed(FailedLine::from_parts(1, 0, 2, 9, 1, "boom".into())).encode(&mut text);
        let bytes = text.trim_end().as_bytes();
        for len in 0..bytes.len() {
            assert!(Record::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn malformed_records_are_rejected_even_with_a_valid_crc() {
        for body in [
            "pos offset=1 line=2 len=1 digest=00000000",
            "pos offset=x line=1 len=1 digest=00000000",
            "done line=+1 offset=0 len=1 digest=00000000",
            "done line=1 offset=0 len=1 digest=00000000 extra=2",
            "done line=0 offset=0 len=0 digest=00000000",
            "done line=1 offset=18446744073709551615 len=1 digest=00000000",
            "what line=1",
            "failed line=1 offset=0 len=1 digest=00000000 attempts=1 error=\"a\"b\"",
            "failed line=1 offset=0 len=1 digest=00000000 attempts=1 error=\"\\q\"",
        ] {
            let line = format!("{body} crc={:08x}", crc32fast::hash(body.as_bytes()));
            assert!(Record::decode(line.as_bytes()).is_err(), "{body}");
        }
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    /// A record with a valid CRC around whatever body is given.
    fn signed(body: &str) -> Vec<u8> {
        format!("{body}{CRC_FIELD}{:08x}", crc32fast::hash(body.as_bytes())).into_bytes()
    }

    #[test]
    fn numbers_no_input_can_have_are_refused_even_with_a_valid_crc() {
        for body in [
            // A length that runs past any offset a file can have.
            "failed line=3 offset=10 len=18446744073709551615 digest=00000000 attempts=1 error=\"x\"",
            "failed line=3 offset=18446744073709551615 len=2 digest=00000000 attempts=1 error=\"x\"",
            // More lines than bytes before the line's end.
            "failed line=99 offset=10 len=5 digest=00000000 attempts=1 error=\"x\"",
            "done line=99 offset=10 len=5 digest=00000000",
            "pos offset=10 line=99 len=5 digest=00000000",
        ] {
            assert!(Record::decode(&signed(body)).is_err(), "accepted: {body}");
        }
        // The same records with possible numbers are fine.
        for body in [
            "failed line=3 offset=10 len=5 digest=00000000 attempts=1 error=\"x\"",
            "done line=3 offset=10 len=5 digest=00000000",
            "pos offset=15 line=3 len=5 digest=00000000",
        ] {
            assert!(Record::decode(&signed(body)).is_ok(), "refused: {body}");
        }
    }
}
