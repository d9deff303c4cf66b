//! The on-disk format of a checkpoint, all of it: the records (their
//! encoding and decoding), the state they describe and how records apply to
//! it, the commits not yet written, and reading a file back (recovery of a
//! torn tail, refusal of a foreign or damaged one). A format change touches
//! this file. The format is documented on [`Checkpoint`](crate::Checkpoint).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use super::fs::Fs;
use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::position::{Position, Prefix};
use crate::scan::LineId;

// ---- Records ----

/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 5;
/// The oldest version still read. Version 2 added the `shard` record,
/// version 3 the `prefix` record, version 4 the `output` and `out` records,
/// version 5 the failure log (`faillog` and `failures` records).
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
    /// A line finished beyond the position.
    Done(LineId),
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
    /// Output `index` is the file `path` (as given when it was attached).
    /// From the first of these records on, records take effect in groups,
    /// each closed by an [`Out`](Record::Out) record.
    Output {
        index: u64,
        path: String,
    },
    /// The outputs' lengths and tail digests as of the records before it,
    /// which take effect with it; `closed`: the run ended cleanly, with
    /// every output cut to these lengths.
    Out {
        marks: Vec<OutputMark>,
        closed: bool,
    },
    /// The failure log is the file `path` (a name in the checkpoint's
    /// directory). Like an `output` record, it starts groups.
    FailLog {
        path: String,
    },
    /// The failure log's length, tail digest and cursor, as of the records
    /// of the group it is in.
    Failures(LogMark),
}

/// What a checkpoint records of its failure log: its length and tail digest
/// (as an output's), where its live part starts (`from`: every record
/// before it is superseded), how many lines it holds as failed, and how
/// many `resolved` records its live part holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogMark {
    pub(crate) mark: OutputMark,
    pub(crate) from: u64,
    pub(crate) count: u64,
    pub(crate) resolved: u64,
}

/// What a checkpoint records of one output: how long it is and the CRC-32
/// of its last bytes (up to [`TAIL`]) before that length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OutputMark {
    pub(crate) len: u64,
    pub(crate) digest: u32,
}

/// How many bytes before an output's recorded length its digest covers.
pub(crate) const TAIL: u64 = 64;

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
            Record::Done(id) => write!(
                out,
                "done line={} offset={} len={} digest={:08x}",
                id.line, id.offset, id.len, id.digest
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
            Record::Output { index, path } => {
                let _ = write!(out, "output index={index} path=");
                escape_into(path, out);
                Ok(())
            }
            Record::Out { marks, closed } => {
                out.push_str("out len=");
                for (n, mark) in marks.iter().enumerate() {
                    let _ = write!(out, "{}{}", if n > 0 { "," } else { "" }, mark.len);
                }
                out.push_str(" digest=");
                for (n, mark) in marks.iter().enumerate() {
                    let _ = write!(out, "{}{:08x}", if n > 0 { "," } else { "" }, mark.digest);
                }
                write!(out, " closed={}", u8::from(*closed))
            }
            Record::FailLog { path } => {
                out.push_str("faillog path=");
                escape_into(path, out);
                Ok(())
            }
            Record::Failures(log) => write!(
                out,
                "failures len={} digest={:08x} from={} count={} resolved={}",
                log.mark.len, log.mark.digest, log.from, log.count, log.resolved
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
                let id = LineId::from_parts(line, offset, len, digest)
                    .ok_or_else(|| "impossible done line".to_string())?;
                Record::Done(id)
            }
            "failed" => {
                let line = fields.number("line")?;
                let offset: u64 = fields.number("offset")?;
                let len = fields.number("len")?;
                let digest = fields.hex("digest")?;
                let attempts = fields.number("attempts")?;
                let error = unescape(fields.rest("error")?)?;
                // The same bounds as a done line.
                let id = LineId::from_parts(line, offset, len, digest)
                    .ok_or_else(|| "impossible failed line".to_string())?;
                Record::Failed(FailedLine::recorded(id, attempts, error))
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
            "output" => Record::Output {
                index: fields.number("index")?,
                path: unescape(fields.rest("path")?)?,
            },
            "out" => {
                let lens = fields.value("len")?;
                let digests = fields.value("digest")?;
                let closed = match fields.value("closed")? {
                    "0" => false,
                    "1" => true,
                    _ => return Err("malformed field closed".into()),
                };
                let lens = split_list(lens);
                let digests = split_list(digests);
                if lens.len() != digests.len() {
                    return Err("as many lengths as digests expected".into());
                }
                let marks = lens
                    .iter()
                    .zip(&digests)
                    .map(|(len, digest)| {
                        let canonical = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
                        Some(OutputMark {
                            len: canonical.then(|| len.parse().ok()).flatten()?,
                            digest: parse_hex8(digest)?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| "malformed output mark".to_string())?;
                Record::Out { marks, closed }
            }
            "faillog" => Record::FailLog {
                path: unescape(fields.rest("path")?)?,
            },
            "failures" => {
                let log = LogMark {
                    mark: OutputMark {
                        len: fields.number("len")?,
                        digest: fields.hex("digest")?,
                    },
                    from: fields.number("from")?,
                    count: fields.number("count")?,
                    resolved: fields.number("resolved")?,
                };
                if log.from > log.mark.len {
                    return Err("a failure log cursor past its end".into());
                }
                Record::Failures(log)
            }
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
/// The items of a comma-separated list; none in an empty one (the `out`
/// record of a checkpoint with a failure log and no outputs).
fn split_list(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split(',').collect()
    }
}

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
        round_trip(Record::Done(
            Position::start().after(b"a\n").after(b"bb\n").last_line(),
        ));
        round_trip(Record::Resolved { line: 7 });
        round_trip(Record::Shard { index: 2, count: 8 });
        round_trip(Record::Output {
            index: 1,
            path: "out/results \"1\".txt".into(),
        });
        round_trip(Record::Out {
            marks: vec![
                OutputMark { len: 0, digest: 0 },
                OutputMark {
                    len: 12345,
                    digest: 0xdead_beef,
                },
            ],
            closed: true,
        });
        round_trip(Record::FailLog {
            path: "job \"1\".checkpoint.failures".into(),
        });
        round_trip(Record::Failures(LogMark {
            mark: OutputMark {
                len: 9_000_000_000,
                digest: 0x0102_0304,
            },
            from: 77,
            count: 5,
            resolved: 2,
        }));
        // A checkpoint with a failure log and no outputs closes its groups
        // with an `out` record of no lengths.
        round_trip(Record::Out {
            marks: Vec::new(),
            closed: false,
        });
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
            // A cursor past the log's end, a missing field, a list item
            // missing.
            "failures len=10 digest=00000000 from=11 count=0 resolved=0",
            "failures len=10 digest=00000000 from=1 count=0",
            "out len=,5 digest=00000000,00000000 closed=0",
            "out len= digest=00000000 closed=0",
        ] {
            let line = format!("{body} crc={:08x}", crc32fast::hash(body.as_bytes()));
            assert!(Record::decode(line.as_bytes()).is_err(), "{body}");
        }
    }
}

#[cfg(test)]
mod group_tests {
    use super::*;

    fn encode(records: &[Record]) -> String {
        let mut text = String::new();
        for record in records {
            record.encode(&mut text);
        }
        text
    }

    fn out(len: u64) -> Record {
        Record::Out {
            marks: vec![OutputMark { len, digest: 7 }],
            closed: false,
        }
    }

    #[test]
    fn records_with_outputs_count_only_with_the_out_record_that_closes_their_group() {
        let first = Position::start().after(b"a\n");
        let second = first.after(b"bb\n");
        let head = encode(&[
            Record::Header { version: VERSION },
            Record::Output {
                index: 0,
                path: "results.txt".into(),
            },
            Record::Position(first),
            out(2),
        ]);
        let torn = encode(&[Record::Position(second), Record::Done(second.last_line())]);
        let text = format!("{head}{torn}");
        let (state, has_header, valid_len) = parse(Path::new("c"), text.as_bytes()).unwrap();
        assert!(has_header);
        // The second group has no `out` record: a write cut short.
        assert_eq!(state.position, first);
        assert_eq!(state.outputs[0].1.len, 2);
        assert_eq!(valid_len, head.len() as u64);
        // Closed, it counts.
        let whole = format!("{head}{torn}{}", encode(&[out(5)]));
        let (state, _, valid_len) = parse(Path::new("c"), whole.as_bytes()).unwrap();
        assert_eq!(state.position, second);
        assert_eq!(state.outputs[0].1.len, 5);
        assert_eq!(valid_len, whole.len() as u64);
        // At every cut, the state is one of the two groups, never a mix.
        for cut in 0..whole.len() {
            let Ok((state, _, _)) = parse(Path::new("c"), &whole.as_bytes()[..cut]) else {
                continue;
            };
            let len = state.outputs.first().map_or(0, |(_, mark)| mark.len);
            match state.position.line() {
                0 => assert_eq!(len, 0, "cut {cut}"),
                1 => assert_eq!(len, 2, "cut {cut}"),
                _ => assert_eq!(len, 5, "cut {cut}"),
            }
        }
    }

    fn failures(len: u64, count: u64) -> Record {
        Record::Failures(LogMark {
            mark: OutputMark { len, digest: 3 },
            from: 0,
            count,
            resolved: 0,
        })
    }

    #[test]
    fn a_failure_log_mark_counts_only_with_its_group_and_moves_the_passed_lines() {
        let failed = FailedLine::from_parts(2, 2, 3, 9, 1, "boom".into());
        let first = Position::start().after(b"a\n");
        let third = first.after(b"bb\n").after(b"ccc\n");
        let head = encode(&[
            Record::Header { version: VERSION },
            Record::Position(first),
            Record::Failed(failed.clone()),
        ]);
        // The line beyond the position is in the checkpoint.
        let (state, _, _) = parse(Path::new("c"), head.as_bytes()).unwrap();
        assert_eq!(state.failed.len(), 1);
        assert_eq!(state.failed_count(), 1);
        // The group that passes it records the log that holds it.
        let group = encode(&[
            Record::FailLog {
                path: "c.failures".into(),
            },
            Record::Position(third),
            failures(80, 1),
        ]);
        let torn = format!("{head}{group}");
        let (state, _, valid_len) = parse(Path::new("c"), torn.as_bytes()).unwrap();
        assert_eq!(
            valid_len,
            head.len() as u64,
            "a group without its out record"
        );
        assert_eq!((state.position, state.failed.len()), (first, 1));
        assert!(state.log.is_none());
        let whole = format!("{torn}{}", encode(&[out_none()]));
        let (state, _, _) = parse(Path::new("c"), whole.as_bytes()).unwrap();
        assert_eq!(state.position, third);
        assert!(state.failed.is_empty() && state.passed.is_empty());
        assert_eq!(state.log.as_ref().map(|(_, mark)| mark.count), Some(1));
        assert_eq!(state.failed_count(), 1);
        // Marks of a log no record declares are corrupt, in a group or not.
        let alone = format!("{head}{}", encode(&[failures(1, 1), out_none()]));
        assert!(matches!(
            parse(Path::new("c"), alone.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn a_version_4_file_keeps_its_failed_lines_for_the_log() {
        let failed = |line| FailedLine::from_parts(line, line * 2, 2, 9, 1, "x".into());
        let mut position = Position::start();
        for _ in 0..5 {
            position = position.after(b"x\n");
        }
        let text = encode(&[
            Record::Header { version: 4 },
            Record::Failed(failed(2)),
            Record::Failed(failed(3)),
            Record::Position(position),
            Record::Failed(failed(7)),
            Record::Resolved { line: 3 },
        ]);
        let (state, _, _) = parse(Path::new("c"), text.as_bytes()).unwrap();
        // Line 2, behind the position, waits for the log; 7 stays beyond.
        assert_eq!(state.passed, vec![failed(2)]);
        assert_eq!(state.failed.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(state.failed_count(), 2);
    }

    fn out_none() -> Record {
        Record::Out {
            marks: Vec::new(),
            closed: false,
        }
    }

    #[test]
    fn out_records_that_do_not_fit_the_outputs_are_corrupt() {
        let header = encode(&[Record::Header { version: VERSION }]);
        // Lengths without outputs.
        let text = format!("{header}{}", encode(&[out(1)]));
        assert!(matches!(
            parse(Path::new("c"), text.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        // Lengths of two outputs where one is declared.
        let two = Record::Out {
            marks: vec![OutputMark::default(); 2],
            closed: false,
        };
        let declared = encode(&[Record::Output {
            index: 0,
            path: "a".into(),
        }]);
        let text = format!("{header}{declared}{}", encode(&[two]));
        assert!(matches!(
            parse(Path::new("c"), text.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
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

// ---- The state the records describe ----

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) position: Position,
    pub(crate) done: BTreeMap<u64, LineId>,
    /// Lines beyond the position that failed for good: their records are
    /// in the checkpoint file, as `done` records are. (Read from a file of
    /// version 4 or older: every failed line.)
    pub(crate) failed: BTreeMap<u64, FailedLine>,
    /// Failed lines the position passed since the last write, in line
    /// order (appended as the position passes them, inserted in order by
    /// `apply_behind`): the next write moves them to the failure log, in
    /// the group that records the position.
    pub(crate) passed: Vec<FailedLine>,
    /// Commits of failed (or, `None`, resolved) lines behind the position
    /// that could not look in the failure log (it could not be read): the
    /// next write applies them, in order.
    pub(crate) unsettled: Vec<(u64, Option<FailedLine>)>,
    /// The failure log, once a failed line was passed: its file name (in
    /// the checkpoint's directory) and mark.
    pub(crate) log: Option<(String, LogMark)>,
    pub(crate) shard: Option<(u64, u64)>,
    pub(crate) prefix: Option<Prefix>,
    pub(crate) version: u32,
    pub(crate) outputs: Vec<(String, OutputMark)>,
    pub(crate) closed: bool,
}

/// A rebase: lines and bytes keep their distance to the position, moved
/// from `from` to `to`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shift {
    pub(crate) from: Position,
    pub(crate) to: Position,
}

impl Shift {
    /// The line number and offset moved; `None` for a line that would be
    /// before the first.
    fn apply(self, line: u64, offset: u64) -> Option<(u64, u64)> {
        let line = (i128::from(line) - i128::from(self.from.line()) + i128::from(self.to.line()))
            .try_into()
            .ok()
            .filter(|&line: &u64| line > 0)?;
        let offset = (i128::from(offset) - i128::from(self.from.offset())
            + i128::from(self.to.offset()))
        .try_into()
        .ok()?;
        Some((line, offset))
    }

    /// A failed line's record, moved.
    pub(crate) fn failed(self, failed: &FailedLine) -> Option<FailedLine> {
        let (line, offset) = self.apply(failed.line(), failed.offset())?;
        Some(failed.moved(line, offset))
    }
}

/// What becomes of the failed lines a position passes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passed {
    /// Kept among the failed lines: a file of version 4 or older, where
    /// every failed record stays in the checkpoint.
    Keep,
    /// Dropped: read back from a file of version 5, whose failure log
    /// holds them (the group that records the position records the log's
    /// length with them).
    Drop,
    /// Moved to `passed`, for the next write: a run.
    Move,
}

/// What the group of records a write closes records of the outputs and of
/// the failure log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marks {
    pub(crate) lens: Vec<u64>,
    pub(crate) log: Option<LogMark>,
    pub(crate) closed: bool,
}

impl State {
    pub(crate) fn apply(&mut self, record: Record) {
        match record {
            Record::Header { .. } => {}
            Record::Position(position) => {
                let passed = if self.version >= 5 {
                    Passed::Drop
                } else {
                    Passed::Keep
                };
                let _ = self.advance_to(position, passed);
            }
            Record::Done(id) => {
                if id.line > self.position.line() {
                    // Finished: no longer failed, if it was.
                    self.failed.remove(&id.line);
                    self.done.insert(id.line, id);
                }
            }
            Record::Failed(failed) => {
                // Written beyond the position of its group (which may be
                // behind the one in force until the group applies: a
                // position moved back); a later `pos` drops it. Failed
                // now, whatever an earlier `done` record said.
                self.done.remove(&failed.line());
                self.failed.insert(failed.line(), failed);
            }
            Record::Resolved { line } => {
                self.failed.remove(&line);
            }
            Record::Shard { index, count } => self.shard = Some((index, count)),
            Record::Prefix(prefix) => {
                // One past the position was never written so (see
                // `Pending::encode`); such a record is not relied on, and
                // the one before it stands.
                if prefix.offset <= self.position.offset() {
                    self.prefix = Some(prefix);
                }
            }
            Record::Output { index, path } => {
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                if index >= self.outputs.len() {
                    self.outputs.push((path, OutputMark::default()));
                } else {
                    self.outputs[index].0 = path;
                }
            }
            Record::Out { marks, closed } => {
                for (output, mark) in self.outputs.iter_mut().zip(marks) {
                    output.1 = mark;
                }
                self.closed = closed;
            }
            Record::FailLog { path } => match self.log.as_mut() {
                Some(log) => log.0 = path,
                None => self.log = Some((path, LogMark::default())),
            },
            Record::Failures(mark) => {
                if let Some(log) = self.log.as_mut() {
                    log.1 = mark;
                }
            }
        }
    }

    /// After the last record of a file: the failed lines a file of version
    /// 4 or older records at or before its position go to the failure log
    /// at the first write (the file is then rewritten in version 5).
    fn loaded(&mut self) {
        // Failed lines the position passed wait for the failure log: in a
        // file of version 4 or older every failed record stays in the
        // checkpoint; in one of version 5 only a torn write leaves one (a
        // `failed` record before a `pos` that moved back, cut off).
        let beyond = self
            .failed
            .split_off(&(self.position.line().saturating_add(1)));
        self.passed = std::mem::replace(&mut self.failed, beyond)
            .into_values()
            .collect();
    }

    pub(crate) fn output_lens(&self) -> Vec<u64> {
        self.outputs.iter().map(|(_, mark)| mark.len).collect()
    }

    /// What the group a write closes records now.
    pub(crate) fn marks(&self) -> Marks {
        Marks {
            lens: self.output_lens(),
            log: self.log_mark(),
            closed: self.closed,
        }
    }

    /// The failure log's mark, if there is a log.
    pub(crate) fn log_mark(&self) -> Option<LogMark> {
        self.log.as_ref().map(|&(_, mark)| mark)
    }

    /// The number of lines recorded as failed.
    pub(crate) fn failed_count(&self) -> u64 {
        let logged = self.log.as_ref().map_or(0, |(_, mark)| mark.count);
        logged + self.passed.len() as u64 + self.failed.len() as u64
    }

    #[inline]
    pub(crate) fn raise_outputs(&mut self, lens: impl Iterator<Item = u64>) {
        self.closed = false;
        for ((_, mark), len) in self.outputs.iter_mut().zip(lens) {
            mark.len = mark.len.max(len);
        }
    }

    /// Moves the position (a run's commit): failed lines it passes wait in
    /// `passed` for the failure log. Returns the failed lines that waited
    /// there and are beyond a position moved back: their records go to the
    /// checkpoint file again (the caller makes them pending).
    #[must_use]
    pub(crate) fn advance(&mut self, position: Position) -> Vec<FailedLine> {
        self.advance_to(position, Passed::Move)
    }

    fn advance_to(&mut self, position: Position, passed: Passed) -> Vec<FailedLine> {
        let mut back = Vec::new();
        self.position = position;
        // A position moved back (a hand-written loop may) drops a prefix
        // that reaches past it.
        if self
            .prefix
            .is_some_and(|prefix| prefix.offset > position.offset())
        {
            self.prefix = None;
        }
        let next = position.line().saturating_add(1);
        self.done = self.done.split_off(&next);
        // `passed` is in line order (see its field): its last line tells.
        if passed == Passed::Move && self.passed.last().is_some_and(|f| f.line() >= next) {
            // Moved back: failed lines beyond it again are the checkpoint's
            // again (their records are in the file; no write took them to
            // the log yet).
            let (beyond, behind) = std::mem::take(&mut self.passed)
                .into_iter()
                .partition(|f| f.line() >= next);
            self.passed = behind;
            for failed in beyond {
                self.failed.insert(failed.line(), failed.clone());
                back.push(failed);
            }
        }
        if passed != Passed::Keep
            && self
                .failed
                .first_key_value()
                .is_some_and(|(&line, _)| line < next)
        {
            let beyond = self.failed.split_off(&next);
            let behind = std::mem::replace(&mut self.failed, beyond);
            if passed == Passed::Move {
                self.passed.extend(behind.into_values());
            }
        }
        back
    }

    pub(crate) fn rebase(&mut self, position: Position) {
        let shift = Shift {
            from: self.position,
            to: position,
        };
        self.done = std::mem::take(&mut self.done)
            .into_values()
            .filter_map(|id| {
                let (line, offset) = shift.apply(id.line, id.offset)?;
                Some((line, LineId::from_parts(line, offset, id.len, id.digest)?))
            })
            .collect();
        self.failed = std::mem::take(&mut self.failed)
            .into_values()
            .filter_map(|failed| shift.failed(&failed))
            .map(|failed| (failed.line(), failed))
            .collect();
        self.passed = std::mem::take(&mut self.passed)
            .iter()
            .filter_map(|failed| shift.failed(failed))
            .collect();
        self.position = position;
        // Lines before the position may have been removed or edited.
        self.prefix = None;
    }

    /// The whole state as the records of a new file, of the current format
    /// version. The state's `version` follows once the file is in place
    /// (`Inner::placed`): until then the file on disk is the old one. With
    /// outputs, the caller closes it with the `out` record of its lengths
    /// (see `Inner::seal`): without it, nothing after the header counts.
    pub(crate) fn snapshot(&self) -> String {
        let mut out = String::new();
        Record::Header { version: VERSION }.encode(&mut out);
        if let Some((index, count)) = self.shard {
            Record::Shard { index, count }.encode(&mut out);
        }
        for (index, (path, _)) in self.outputs.iter().enumerate() {
            Record::Output {
                index: index as u64,
                path: path.clone(),
            }
            .encode(&mut out);
        }
        if let Some((path, _)) = &self.log {
            Record::FailLog { path: path.clone() }.encode(&mut out);
        }
        Record::Position(self.position).encode(&mut out);
        if let Some(prefix) = self.prefix {
            Record::Prefix(prefix).encode(&mut out);
        }
        for &id in self.done.values() {
            Record::Done(id).encode(&mut out);
        }
        for failed in self.failed.values() {
            Record::Failed(failed.clone()).encode(&mut out);
        }
        out
    }
}

/// Commits made but not yet written.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The position moved.
    pub(crate) position: bool,
    /// Lines recorded as done beyond the position.
    pub(crate) done: Vec<u64>,
    /// `failed` and `resolved` records, in order.
    pub(crate) failed: Vec<Record>,
    /// The shard was recorded.
    pub(crate) shard: bool,
    /// The prefix was extended.
    pub(crate) prefix: bool,
    /// The outputs were closed or opened again (see
    /// `Checkpoint::close_outputs`): an `out` record says so, alone if
    /// need be.
    pub(crate) outputs: bool,
    /// The failure log changed (a record appended, its cursor moved): the
    /// next write records its mark.
    pub(crate) log: bool,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        !self.position
            && self.done.is_empty()
            && self.failed.is_empty()
            && !self.shard
            && !self.prefix
            && !self.outputs
            && !self.log
    }

    /// The records to append. Each line's net outcome among the `failed`
    /// and `resolved` records: a failure goes before the position, so the
    /// position never covers a failed line whose record could be torn off
    /// after it; a resolution goes after the position, so a durable failure
    /// is never undone by a resolution whose position was torn off (the line
    /// would be neither failed nor covered, and run again). The lines done
    /// beyond the position (those it has not covered since) come last.
    pub(crate) fn encode(&self, state: &State) -> String {
        let mut net: BTreeMap<u64, &Record> = BTreeMap::new();
        for record in &self.failed {
            match record {
                Record::Failed(failed) => net.insert(failed.line(), record),
                Record::Resolved { line } => net.insert(*line, record),
                _ => None,
            };
        }
        let mut out = String::new();
        if let Some((index, count)) = state.shard.filter(|_| self.shard) {
            Record::Shard { index, count }.encode(&mut out);
        }
        // A failed line the position passed since goes to the failure
        // log in this write, not here.
        for record in net.values().filter(
            |r| matches!(r, Record::Failed(failed) if state.failed.contains_key(&failed.line())),
        ) {
            record.encode(&mut out);
        }
        if self.position {
            Record::Position(state.position).encode(&mut out);
        }
        // After the position: a prefix never reaches past the position
        // before it in the file, even when the append is torn.
        if let Some(prefix) = state.prefix.filter(|_| self.prefix) {
            Record::Prefix(prefix).encode(&mut out);
        }
        for line in &self.done {
            if let Some(&id) = state.done.get(line) {
                Record::Done(id).encode(&mut out);
            }
        }
        for record in net
            .values()
            .filter(|r| matches!(r, Record::Resolved { .. }))
        {
            record.encode(&mut out);
        }
        out
    }
}

// ---- Reading a file back ----

/// What opening found in the file.
pub(crate) struct Loaded {
    pub(crate) state: State,
    pub(crate) exists: bool,
    pub(crate) has_header: bool,
    pub(crate) file_len: u64,
    pub(crate) valid_len: u64,
}

pub(crate) fn load(fs: &dyn Fs, path: &Path) -> Result<Loaded> {
    let mut file = match fs.open_read(path) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Ok(Loaded {
                state: State::default(),
                exists: false,
                has_header: false,
                file_len: 0,
                valid_len: 0,
            });
        }
        Err(err) => return Err(Error::io(Some(path), "opening the checkpoint", err)),
    };
    let read_err = |err| Error::io(Some(path), "reading the checkpoint", err);
    // Check the start before reading a file that may be large and foreign.
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAGIC.len() as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    check_magic(path, &bytes)?;
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let (state, has_header, valid_len) = parse(path, &bytes)?;
    Ok(Loaded {
        state,
        exists: true,
        has_header,
        file_len: bytes.len() as u64,
        valid_len,
    })
}

/// Refuses a file that does not start like a checkpoint. A prefix of the
/// header with nothing after it is a torn header.
pub(crate) fn check_magic(path: &Path, start: &[u8]) -> Result<()> {
    let magic = format!("{MAGIC} ");
    let magic = magic.as_bytes();
    let len = start.len().min(magic.len());
    if start[..len] == magic[..len] {
        Ok(())
    } else {
        Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
        })
    }
}

/// Applies the valid records. Returns the state, whether a valid header was
/// found, and where the valid data ends.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(State, bool, u64)> {
    let mut state = State::default();
    let mut has_header = false;
    let mut valid_len = 0u64;
    let mut first_bad: Option<(u64, String)> = None;
    // With outputs, records wait here for the `out` record that closes
    // their group: a group cut short by a crash is the torn end.
    let mut group: Option<Vec<Record>> = None;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some(len) = memchr::memchr(b'\n', &bytes[offset..]) else {
            first_bad.get_or_insert((offset as u64, "incomplete record".into()));
            break;
        };
        let corrupt = |at: usize, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            reason,
        };
        match Record::decode(&bytes[offset..offset + len]) {
            Ok(record) => {
                if let Some((at, reason)) = first_bad.take() {
                    return Err(corrupt(at as usize, reason));
                }
                match record {
                    Record::Header { version } if offset == 0 => {
                        if !(OLDEST_VERSION..=VERSION).contains(&version) {
                            return Err(Error::UnsupportedVersion {
                                path: path.to_path_buf(),
                                version,
                                supported: VERSION,
                            });
                        }
                        state.version = version;
                        has_header = true;
                        valid_len = (offset + len + 1) as u64;
                    }
                    Record::Header { .. } => {
                        return Err(corrupt(offset, "a header in the middle of the file".into()));
                    }
                    _ if !has_header => {
                        return Err(corrupt(offset, "a record before the header".into()));
                    }
                    Record::Out { ref marks, .. } => {
                        let Some(records) = group.as_mut() else {
                            return Err(corrupt(offset, "output lengths without outputs".into()));
                        };
                        for record in records.drain(..) {
                            if matches!(record, Record::Failures(_)) && state.log.is_none() {
                                return Err(corrupt(
                                    offset,
                                    "failure log marks without a failure log".into(),
                                ));
                            }
                            state.apply(record);
                        }
                        let count = marks.len();
                        if count != state.outputs.len() {
                            return Err(corrupt(offset, "lengths of other outputs".into()));
                        }
                        state.apply(record);
                        valid_len = (offset + len + 1) as u64;
                    }
                    Record::Output { index, .. } => {
                        let records = group.get_or_insert_with(Vec::new);
                        let declared = state.outputs.len() as u64
                            + records
                                .iter()
                                .filter(|r| matches!(r, Record::Output { .. }))
                                .count() as u64;
                        if index > declared {
                            return Err(corrupt(offset, "outputs out of order".into()));
                        }
                        records.push(record);
                    }
                    Record::FailLog { .. } => group.get_or_insert_with(Vec::new).push(record),
                    Record::Failures(_) if group.is_none() => {
                        return Err(corrupt(
                            offset,
                            "failure log marks without a failure log".into(),
                        ));
                    }
                    record => match group.as_mut() {
                        Some(records) => records.push(record),
                        None => {
                            state.apply(record);
                            valid_len = (offset + len + 1) as u64;
                        }
                    },
                }
            }
            Err(reason) => {
                let record = &bytes[offset..offset + len];
                if Record::crc_matches(record) {
                    // Whole and intact, yet impossible: not the torn end of
                    // a write but a file that cannot be trusted.
                    return Err(corrupt(offset, reason));
                }
                first_bad.get_or_insert((offset as u64, reason));
            }
        }
        offset += len + 1;
    }
    state.loaded();
    Ok((state, has_header, valid_len))
}
