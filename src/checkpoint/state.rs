//! The state a checkpoint records, and the commits not yet written.

use std::collections::BTreeMap;

use crate::failed::FailedLine;
use crate::position::{Position, Prefix};
use crate::record::{Record, VERSION};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) position: Position,
    /// Lines finished beyond the position: the position just after each.
    pub(crate) done: BTreeMap<u64, Position>,
    pub(crate) failed: BTreeMap<u64, FailedLine>,
    /// The lines the checkpoint owns (index, count), once a run recorded it.
    pub(crate) shard: Option<(u64, u64)>,
    /// What is known of the whole finished part of the input, at an offset
    /// at or before the position's.
    pub(crate) prefix: Option<Prefix>,
    /// The format version of the file's header (0 before any header).
    pub(crate) version: u32,
}

impl State {
    pub(crate) fn apply(&mut self, record: Record) {
        match record {
            Record::Header { .. } => {}
            Record::Position(position) => self.advance(position),
            Record::Done(end) => {
                if end.line() > self.position.line() {
                    self.done.insert(end.line(), end);
                }
            }
            Record::Failed(failed) => {
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
        }
    }

    pub(crate) fn advance(&mut self, position: Position) {
        self.position = position;
        // A position moved back (a hand-written loop may) drops a prefix
        // that reaches past it.
        if self
            .prefix
            .is_some_and(|prefix| prefix.offset > position.offset())
        {
            self.prefix = None;
        }
        self.done = self.done.split_off(&(position.line().saturating_add(1)));
    }

    /// Moves the position to where a seek found the input resumes (see
    /// `Checkpoint::rebase`): lines and bytes of the done and failed records
    /// move by the same amount as the position did; a record that would move
    /// before the start of the input is dropped (its line was removed).
    /// Every moved record is checked against the input before it is relied
    /// on.
    pub(crate) fn rebase(&mut self, position: Position) {
        let old = self.position;
        let shift = |line: u64, offset: u64| -> Option<(u64, u64)> {
            let line = (i128::from(line) - i128::from(old.line()) + i128::from(position.line()))
                .try_into()
                .ok()
                .filter(|&line: &u64| line > 0)?;
            let offset = (i128::from(offset) - i128::from(old.offset())
                + i128::from(position.offset()))
            .try_into()
            .ok()?;
            Some((line, offset))
        };
        self.done = std::mem::take(&mut self.done)
            .into_values()
            .filter_map(|end| {
                let (line, offset) = shift(end.line(), end.offset())?;
                let end = Position::from_parts(offset, line, end.last_len(), end.last_digest())?;
                Some((line, end))
            })
            .collect();
        self.failed = std::mem::take(&mut self.failed)
            .into_values()
            .filter_map(|failed| {
                let (line, offset) = shift(failed.line(), failed.offset())?;
                Some((line, failed.moved(line, offset)))
            })
            .collect();
        self.position = position;
        // Lines before the position may have been removed or edited.
        self.prefix = None;
    }

    /// The whole state as the records of a new file, of the current format
    /// version (which the state then has).
    pub(crate) fn snapshot(&mut self) -> String {
        self.version = VERSION;
        let mut out = String::new();
        Record::Header { version: VERSION }.encode(&mut out);
        if let Some((index, count)) = self.shard {
            Record::Shard { index, count }.encode(&mut out);
        }
        Record::Position(self.position).encode(&mut out);
        if let Some(prefix) = self.prefix {
            Record::Prefix(prefix).encode(&mut out);
        }
        for &end in self.done.values() {
            Record::Done(end).encode(&mut out);
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
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        !self.position
            && self.done.is_empty()
            && self.failed.is_empty()
            && !self.shard
            && !self.prefix
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
        for record in net.values().filter(|r| matches!(r, Record::Failed(_))) {
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
            if let Some(&end) = state.done.get(line) {
                Record::Done(end).encode(&mut out);
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
