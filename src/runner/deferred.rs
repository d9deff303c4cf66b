//! One worker with outputs: the results of cheap lines recorded a few
//! lines at a time (see [`Deferred`]).

use std::time::{Duration, Instant};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::line::Line;
use crate::out::Out;

/// With outputs, one worker: the results of cheap lines go to the outputs
/// (and the last of the lines is committed) a few lines at a time, rather
/// than a lock and a commit per line. Once lines take 1 µs or more, each
/// is recorded on its own, as without outputs. When a cheap task turns
/// slow, the lines finished before the slow one (at most
/// [`MAX_DEFERRED`] - 1, of under 1 µs each) wait for it; the slow line
/// and those after it are recorded when the writer thread's next look is
/// seen (every half write delay), and one by one from then on. A kill
/// redoes the waiting lines and cuts their results.
pub(super) struct Deferred<const OUTPUTS: bool> {
    /// Lines whose results wait in the `Out`, the last of them not
    /// committed yet: `last` holds its bytes, number and offset.
    lines: usize,
    last: Vec<u8>,
    number: u64,
    offset: u64,
    /// How many lines may wait, from the measured cost of a line.
    limit: usize,
    /// The most `limit` may grow to: 1 for a stream.
    max: usize,
    since: Instant,
}

/// The most lines whose results wait (see [`Deferred`]).
const MAX_DEFERRED: usize = 32;

/// The results waiting that make them go at once, whatever their lines.
const MAX_DEFERRED_BYTES: usize = 16 << 10;

impl<const OUTPUTS: bool> Deferred<OUTPUTS> {
    /// `from_file`: the lines come from a regular file, whose next line is
    /// never slow to come.
    pub(super) fn new(from_file: bool) -> Self {
        Deferred {
            lines: 0,
            last: Vec::new(),
            number: 0,
            offset: 0,
            limit: 1,
            max: if from_file { MAX_DEFERRED } else { 1 },
            since: Instant::now(),
        }
    }

    /// Keeps the results of `line`, done, waiting (returns `true`), or says
    /// they go now with the line's commit: once `limit` lines wait, once
    /// their results are large, or once the checkpoint's writer thread
    /// looked since the last lines went (every half write delay), so that
    /// slow lines after cheap ones are recorded within about that.
    #[inline]
    pub(super) fn defer(&mut self, line: &Line<'_>, out: &Out, checkpoint: &Checkpoint) -> bool {
        if !OUTPUTS {
            return false;
        }
        self.lines += 1;
        if self.lines >= self.limit
            || out.first_len() >= MAX_DEFERRED_BYTES
            || checkpoint.writer_looked()
        {
            self.adapt();
            return false;
        }
        self.last.clear();
        self.last.extend_from_slice(line.raw());
        self.number = line.number();
        self.offset = line.offset();
        true
    }

    /// The lines go: a batch of cheap ones lets the next batch be larger,
    /// a line of 1 µs or more makes it one line.
    #[cold]
    fn adapt(&mut self) {
        let now = Instant::now();
        let cheap = now.duration_since(self.since) < Duration::from_micros(self.lines as u64);
        self.limit = if cheap {
            (self.limit * 2).min(self.max)
        } else {
            1
        };
        self.lines = 0;
        self.since = now;
    }

    /// Appends the results waiting (their lines are covered by the commit
    /// the caller makes next).
    #[inline(always)]
    pub(super) fn append(&mut self, checkpoint: &mut Checkpoint, out: &mut Out) -> Result<()> {
        if OUTPUTS {
            return self.append_now(checkpoint, out);
        }
        // Without outputs, tasks run as `Task::run`: nothing is written.
        Ok(())
    }

    #[inline(never)]
    fn append_now(&mut self, checkpoint: &mut Checkpoint, out: &mut Out) -> Result<()> {
        let appended = checkpoint.append_results(out.buffers());
        if appended.is_err() {
            // Part may be in an output: the lines waiting are not recorded
            // (the next run does them again and cuts what is there).
            self.lines = 0;
        } else if self.lines > 0 {
            self.adapt();
        }
        out.clear();
        appended
    }

    /// Appends the results waiting and commits their last line.
    pub(super) fn finish(&mut self, checkpoint: &mut Checkpoint, out: &mut Out) -> Result<()> {
        if !OUTPUTS || self.lines == 0 {
            return Ok(());
        }
        self.append_now(checkpoint, out)?;
        checkpoint.commit_read_line(&Line::new(&self.last, self.number, self.offset))
    }
}
