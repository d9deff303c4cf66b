//! The last line committed by `commit_line`, published so that the
//! checkpoint's writer thread can record it while the committing thread is
//! busy elsewhere (a task that blocks for minutes must not hide the commits
//! made before it).
//!
//! Publishing must cost about what copying the line into a private buffer
//! cost before, because it happens for every line of the fastest jobs. A
//! mutex would add two atomic read-modify-write instructions per line (a
//! quarter of the time a line takes in benchmark 1); a sequence lock costs
//! plain stores. The committing thread is the only writer; it bumps the
//! sequence to odd, stores the line into atomic words, then bumps it to
//! even. A reader copies the words and keeps the copy only if the sequence
//! was even and unchanged around it (Boehm, "Can seqlocks get along with
//! programming language memory models?", 2012). The words are atomics, so
//! there is no data race and no `unsafe`.
//!
//! A reader racing a thread that commits millions of lines a second may
//! never see an unchanged sequence; it then asks the committing thread,
//! through `WANT_FOLD`, to fold the line into the shared state itself at
//! its next commit (see `writer.rs`).
//!
//! When the lines come from a regular file the checkpoint can read again
//! (the runner's `run`), the slot is *located*: it holds the line's number,
//! offset and length and a fingerprint (a fold of its words), not its
//! bytes, and the line is read back from the input when its digest is
//! needed, a few hundred times a second at most. That halves the cost of a
//! commit for the fastest jobs; the fingerprint catches an input rewritten
//! under the run before its digest is recorded.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};

use crate::line::Line;
use crate::position::Position;

/// The committing thread wants to know: a write is waiting for the line.
pub(crate) const WANT_FOLD: u8 = 1;
/// An error from the writer thread waits to be returned.
pub(crate) const HAS_ERROR: u8 = 2;

/// The shared half.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Odd while the committing thread is storing a line.
    seq: AtomicU64,
    number: AtomicU64,
    offset: AtomicU64,
    /// The line's length in bytes; 0 when no line is published (after a
    /// `commit` of a position replaced it).
    len: AtomicU64,
    /// The fingerprint of a located line.
    first: AtomicU64,
    last: AtomicU64,
    /// The current buffer; replaced (rarely) when a longer line comes.
    words: Mutex<Arc<[AtomicU64]>>,
    /// The outputs' lengths at the commit (set once, before the first).
    lens: Mutex<Arc<[AtomicU64]>>,
    /// `WANT_FOLD | HAS_ERROR`: the one word the hot path loads per commit.
    pub(crate) signal: AtomicU8,
    /// Lines are published located (set once, before the first commit).
    located: AtomicBool,
}

/// A consistent copy of the published line.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    /// `None` when no line is published.
    pub(crate) mark: Option<Mark>,
    /// The outputs' lengths at the commit.
    pub(crate) lens: Vec<u64>,
}

/// What the slot knows of the last committed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The position after it, computed from its bytes.
    End(Position),
    /// Where it is in the input, to be read back.
    Located(Located),
}

/// A line of the input by place, with a fingerprint to check it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) number: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) fingerprint: (u64, u64),
}

/// A check of a line's bytes, for a located line read back later: a fold
/// of all its eight-byte words (rotated, so that moving bytes changes it),
/// and its last eight bytes (or all of it, packed, when shorter). About as
/// cheap as reading the line once; an edit anywhere in the line changes it
/// but for contrived cases. Not a digest: the digest is computed from the
/// bytes read back, once this check has passed.
#[inline(always)]
pub(crate) fn fingerprint(raw: &[u8]) -> (u64, u64) {
    // Two lanes, so the rotations of one word do not wait for the other's.
    let (mut even, mut odd) = (0u64, 0u64);
    let mut pairs = raw.chunks_exact(16);
    for pair in pairs.by_ref() {
        let (low, high) = pair.split_at(8);
        even = (even ^ word_of(low)).rotate_left(29);
        odd = (odd ^ word_of(high)).rotate_left(29);
    }
    let rest = pairs.remainder();
    if let Some(word) = rest.get(..8) {
        even = (even ^ word_of(word)).rotate_left(29);
    }
    let last = if raw.len() >= 8 {
        word_of(&raw[raw.len() - 8..])
    } else {
        raw.iter()
            .rev()
            .fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
    };
    (even ^ odd.rotate_left(17), last)
}

impl Slot {
    /// Copies the published line, or `None` if it changed during the copy.
    pub(crate) fn try_read(&self) -> Option<Published> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let words = Arc::clone(&self.words.lock().unwrap_or_else(PoisonError::into_inner));
        let lens_words = Arc::clone(&self.lens.lock().unwrap_or_else(PoisonError::into_inner));
        let lens: Vec<u64> = lens_words
            .iter()
            .map(|word| word.load(Ordering::Relaxed))
            .collect();
        let number = self.number.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        let fingerprint = (
            self.first.load(Ordering::Relaxed),
            self.last.load(Ordering::Relaxed),
        );
        let located = self.located.load(Ordering::Relaxed);
        let mut raw = Vec::new();
        if len > 0 && !located {
            let len = usize::try_from(len).ok()?;
            if len.div_ceil(8) > words.len() {
                return None;
            }
            raw.reserve(len.div_ceil(8) * 8);
            for word in &words[..len.div_ceil(8)] {
                raw.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            raw.truncate(len);
        }
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != seq {
            return None;
        }
        let mark = match (len, located) {
            (0, _) => None,
            (_, true) => Some(Mark::Located(Located {
                number,
                offset,
                len,
                fingerprint,
            })),
            (_, false) => Some(Mark::End(Line::new(&raw, number, offset).end_position())),
        };
        Some(Published { seq, mark, lens })
    }

    /// The sequence number now (even between commits).
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// The committing thread's half: the only writer of the slot.
#[derive(Debug)]
pub(crate) struct SlotWriter {
    seq: u64,
    words: Arc<[AtomicU64]>,
    /// The published line's length, for this thread's own reads.
    len: u64,
    /// Publish lines located instead of by their bytes.
    located: bool,
    /// The outputs' lengths, published with each line.
    lens: Arc<[AtomicU64]>,
}

impl SlotWriter {
    pub(crate) fn new(slot: &Slot) -> SlotWriter {
        SlotWriter {
            seq: slot.seq(),
            words: Arc::clone(&slot.words.lock().unwrap_or_else(PoisonError::into_inner)),
            len: 0,
            located: false,
            lens: Arc::clone(&slot.lens.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// From now on, publishes the lengths of `count` outputs with each
    /// line (before the first commit).
    pub(crate) fn track_outputs(&mut self, slot: &Slot, count: usize) {
        let fresh: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
        *slot.lens.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        self.lens = fresh;
    }

    /// The lengths published with the last line.
    pub(crate) fn lens(&self) -> Vec<u64> {
        self.lens
            .iter()
            .map(|word| word.load(Ordering::Relaxed))
            .collect()
    }

    /// The sequence number of the last publication.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// From now on, publishes lines located: they come from a regular
    /// file that the checkpoint reads back.
    pub(crate) fn locate(&mut self, slot: &Slot) {
        self.clear(slot);
        self.located = true;
        slot.located.store(true, Ordering::Release);
    }

    /// Publishes `line` as the last committed one.
    #[inline(always)]
    pub(crate) fn publish(
        &mut self,
        slot: &Slot,
        line: &Line<'_>,
        lens: impl Iterator<Item = u64>,
    ) {
        let raw = line.raw();
        slot.seq.store(self.seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        if !self.lens.is_empty() {
            for (word, len) in self.lens.iter().zip(lens) {
                word.store(len, Ordering::Relaxed);
            }
        }
        if self.located {
            let (first, last) = fingerprint(raw);
            slot.first.store(first, Ordering::Relaxed);
            slot.last.store(last, Ordering::Relaxed);
        } else {
            self.copy_bytes(slot, raw);
        }
        self.len = raw.len() as u64;
        slot.number.store(line.number(), Ordering::Relaxed);
        slot.offset.store(line.offset(), Ordering::Relaxed);
        slot.len.store(self.len, Ordering::Relaxed);
        self.seq += 2;
        slot.seq.store(self.seq, Ordering::Release);
    }

    /// Stores the line's bytes into the words (inside the odd window).
    #[inline(always)]
    fn copy_bytes(&mut self, slot: &Slot, raw: &[u8]) {
        if raw.len().div_ceil(8) > self.words.len() {
            // Inside the odd window, so a reader that picked up the old
            // buffer discards what it read.
            self.grow(slot, raw.len());
        }
        // Little-endian words, whatever the platform, so the tail can be
        // read as the line's last eight bytes shifted (no call to memcpy
        // for the few bytes after the last full word).
        let full = raw.len() / 8;
        let rest = raw.len() % 8;
        // Two words a round: atomic stores are not merged or vectorised,
        // so the loop's own instructions are worth halving.
        let words = &self.words[..full];
        let mut pairs = raw.chunks_exact(16);
        let mut targets = words.chunks_exact(2);
        for (chunk, pair) in pairs.by_ref().zip(targets.by_ref()) {
            let (low, high) = chunk.split_at(8);
            pair[0].store(word_of(low), Ordering::Relaxed);
            pair[1].store(word_of(high), Ordering::Relaxed);
        }
        if let ([word], Some(chunk)) = (targets.remainder(), pairs.remainder().get(..8)) {
            word.store(word_of(chunk), Ordering::Relaxed);
        }
        if rest > 0 {
            let value = if raw.len() >= 8 {
                let last: [u8; 8] = raw[raw.len() - 8..].try_into().unwrap_or([0; 8]);
                u64::from_le_bytes(last) >> (8 * (8 - rest))
            } else {
                raw.iter()
                    .rev()
                    .fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
            };
            if let Some(word) = self.words.get(full) {
                word.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Withdraws the published line (a position committed otherwise
    /// replaced it).
    pub(crate) fn clear(&mut self, slot: &Slot) {
        slot.seq.store(self.seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.len = 0;
        slot.len.store(0, Ordering::Relaxed);
        self.seq += 2;
        slot.seq.store(self.seq, Ordering::Release);
    }

    /// The published line, read by the committing thread (no race: it is
    /// the only writer).
    pub(crate) fn mark(&self, slot: &Slot) -> Option<Mark> {
        if self.len == 0 {
            return None;
        }
        let number = slot.number.load(Ordering::Relaxed);
        let offset = slot.offset.load(Ordering::Relaxed);
        if self.located {
            return Some(Mark::Located(Located {
                number,
                offset,
                len: self.len,
                fingerprint: (
                    slot.first.load(Ordering::Relaxed),
                    slot.last.load(Ordering::Relaxed),
                ),
            }));
        }
        let len = usize::try_from(self.len).ok()?;
        let mut raw = Vec::with_capacity(len.div_ceil(8) * 8);
        for word in &self.words[..len.div_ceil(8)] {
            raw.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        raw.truncate(len);
        Some(Mark::End(Line::new(&raw, number, offset).end_position()))
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, slot: &Slot, len: usize) {
        let words = len.div_ceil(8).next_power_of_two().max(16);
        let fresh: Arc<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
        *slot.words.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        self.words = fresh;
    }
}

/// The little-endian word of eight bytes.
#[inline(always)]
fn word_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_line_reads_back_with_its_position() {
        let slot = Slot::default();
        let mut writer = SlotWriter::new(&slot);
        assert!(slot.try_read().unwrap().mark.is_none());
        for (raw, number, offset) in [
            (&b"short\n"[..], 1, 0),
            (&[b'x'; 1000][..], 2, 6),
            (&b"exactly8"[..], 3, 1006),
        ] {
            let line = Line::new(raw, number, offset);
            writer.publish(&slot, &line, std::iter::empty());
            let read = slot.try_read().unwrap();
            assert_eq!(read.mark, Some(Mark::End(line.end_position())));
            assert_eq!(read.seq, writer.seq());
            assert_eq!(writer.mark(&slot), Some(Mark::End(line.end_position())));
        }
        writer.clear(&slot);
        assert!(slot.try_read().unwrap().mark.is_none());
        assert!(writer.mark(&slot).is_none());
    }

    #[test]
    fn a_located_line_publishes_its_place_and_fingerprint() {
        let slot = Slot::default();
        let mut writer = SlotWriter::new(&slot);
        writer.locate(&slot);
        for (raw, number, offset) in [(&b"a longer line\n"[..], 4, 30), (&b"ab\n"[..], 5, 44)] {
            writer.publish(&slot, &Line::new(raw, number, offset), std::iter::empty());
            let expected = Mark::Located(Located {
                number,
                offset,
                len: raw.len() as u64,
                fingerprint: fingerprint(raw),
            });
            assert_eq!(slot.try_read().unwrap().mark, Some(expected));
            assert_eq!(writer.mark(&slot), Some(expected));
        }
        assert_ne!(fingerprint(b"abcdefgh-x\n"), fingerprint(b"abcdefgh-y\n"));
        assert_ne!(fingerprint(b"ab\n"), fingerprint(b"ac\n"));
        // The middle of a long line, and words swapped.
        let line = b"0123456789abcdef-in-the-middle-of-a-long-line-0123456789abcdef\n";
        let mut edited = *line;
        edited[30] = b'X';
        assert_ne!(fingerprint(line), fingerprint(&edited));
        let mut swapped = *line;
        swapped.copy_within(0..8, 16);
        swapped[..8].copy_from_slice(&line[16..24]);
        assert_ne!(fingerprint(line), fingerprint(&swapped));
    }

    #[test]
    fn a_reader_never_sees_a_torn_line() {
        // Lines of different lengths and contents whose digests differ: a
        // mix of two would give a position no line has.
        let lines: Vec<Vec<u8>> = (0..64)
            .map(|n| format!("{}\n", n.to_string().repeat(n % 13 + 1)).into_bytes())
            .collect();
        let expected: Vec<Position> = lines
            .iter()
            .enumerate()
            .map(|(n, raw)| Line::new(raw, n as u64 + 1, 0).end_position())
            .collect();
        let slot = Slot::default();
        let mut writer = SlotWriter::new(&slot);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Published {
                        mark: Some(Mark::End(end)),
                        ..
                    }) = slot.try_read()
                    {
                        let index = end.line() as usize - 1;
                        assert_eq!(end, expected[index], "a torn read");
                        seen += 1;
                    }
                }
                seen
            });
            for round in 0..20_000 {
                for (n, raw) in lines.iter().enumerate() {
                    writer.publish(&slot, &Line::new(raw, n as u64 + 1, 0), std::iter::empty());
                }
                if round % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
    }
}
