//! Bookkeeping for lines that finish out of order: the low watermark and
//! the lines in flight or finished above it.

use std::collections::VecDeque;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::position::Position;

/// The lines between the low watermark and the next line to start, each in
/// flight or finished. The watermark moves past every finished line at its
/// front. At most `capacity` lines are tracked, so one stuck line stops new
/// lines from starting once the window is full, and memory and the number of
/// out-of-order records stay bounded.
///
/// Lines start in runs: one line at a time for a [`Tracker`](crate::Tracker)
/// (its end known at once), a batch of consecutive lines for the runner's
/// workers (settled together, its end known when it comes back).
#[derive(Debug)]
pub(crate) struct Window {
    watermark: Position,
    /// The runs after the watermark, in input order, without gaps.
    runs: VecDeque<Run>,
    /// Lines in `runs`.
    lines: usize,
    capacity: usize,
}

/// Consecutive lines started together.
#[derive(Clone, Copy, Debug)]
struct Run {
    first: u64,
    len: usize,
    /// Lines `[0, finished)` of the run are finished (all of them, unless a
    /// stop abandoned the rest).
    finished: usize,
    /// The position after the last finished line (for a line started with
    /// its end, that end).
    end: Position,
    settled: bool,
}

/// What finishing a line did to the watermark.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Finished {
    /// The watermark moved to this position.
    Advanced(Position),
    /// The line is finished, but a line before it is not.
    Beyond,
}

impl Window {
    pub(crate) fn new(watermark: Position, capacity: usize) -> Window {
        Window {
            watermark,
            runs: VecDeque::new(),
            lines: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.lines < self.capacity
    }

    /// How many more lines may start.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lines)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Lines tracked: in flight, or finished above the watermark.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lines
    }

    /// The number the next line entering the window must have.
    pub(crate) fn next_line(&self) -> u64 {
        self.runs
            .back()
            .map_or(self.watermark.line() + 1, |run| run.first + run.len as u64)
    }

    /// The run holding `line`.
    fn index_of(&self, line: u64) -> Option<usize> {
        let index = self
            .runs
            .partition_point(|run| run.first <= line)
            .checked_sub(1)?;
        let run = &self.runs[index];
        (line - run.first < run.len as u64).then_some(index)
    }

    /// Whether `line` is in the window.
    pub(crate) fn contains(&self, line: u64) -> bool {
        self.index_of(line).is_some()
    }

    /// A line starts; `end` is the position after it.
    pub(crate) fn start(&mut self, end: Position) {
        debug_assert_eq!(end.line(), self.next_line());
        self.push(Run {
            first: end.line(),
            len: 1,
            finished: 0,
            end,
            settled: false,
        });
    }

    /// A run of `len` lines starts with the next line.
    pub(crate) fn start_run(&mut self, len: usize) {
        let first = self.next_line();
        self.push(Run {
            first,
            len: len.max(1),
            finished: 0,
            end: self.watermark,
            settled: false,
        });
    }

    fn push(&mut self, run: Run) {
        self.lines += run.len;
        self.runs.push_back(run);
    }

    /// A line started with [`start`](Window::start) is finished (done,
    /// failed, skipped or not ours).
    pub(crate) fn finish(&mut self, line: u64) -> Finished {
        let Some(index) = self.index_of(line) else {
            return Finished::Beyond;
        };
        let end = self.runs[index].end;
        self.settle_at(index, 1, end)
    }

    /// The run starting at `first`, or its first `len` lines when the rest
    /// runs on as a run of its own, came back with its first `finished`
    /// lines finished (all of them, unless a stop abandoned the rest);
    /// `end` is the position after the last of them.
    pub(crate) fn settle(
        &mut self,
        first: u64,
        len: usize,
        finished: usize,
        end: Position,
    ) -> Finished {
        let Some(index) = self
            .index_of(first)
            .filter(|&index| self.runs[index].first == first)
        else {
            return Finished::Beyond;
        };
        let watermark = self.watermark;
        let run = &mut self.runs[index];
        if len < run.len {
            let rest = Run {
                first: first + len as u64,
                len: run.len - len,
                finished: 0,
                end: watermark,
                settled: false,
            };
            run.len = len;
            self.runs.insert(index + 1, rest);
        }
        self.settle_at(index, finished, end)
    }

    fn settle_at(&mut self, index: usize, finished: usize, end: Position) -> Finished {
        let run = &mut self.runs[index];
        run.finished = finished.min(run.len);
        run.settled = true;
        if run.finished > 0 {
            run.end = end;
        }
        if index != 0 {
            return Finished::Beyond;
        }
        let before = self.watermark;
        while let Some(&run) = self.runs.front() {
            if !run.settled || run.finished < run.len {
                break;
            }
            self.watermark = run.end;
            self.lines -= run.len;
            self.runs.pop_front();
        }
        // A run a stop cut short: the watermark moves past its finished
        // lines, and stays there.
        if let Some(run) = self.runs.front() {
            if run.settled && run.finished > 0 && run.end.line() > self.watermark.line() {
                self.watermark = run.end;
            }
        }
        if self.watermark == before {
            Finished::Beyond
        } else {
            Finished::Advanced(self.watermark)
        }
    }

    /// The low watermark: every line up to it is finished.
    pub(crate) fn watermark(&self) -> Position {
        self.watermark
    }
}

/// The one rule for a line finished out of order: if it was the lowest
/// unfinished line, commit the watermark it moved to; otherwise, if
/// `record_beyond`, record it as done beyond the watermark (lines skipped
/// or failed are known from their own records and need no `done` record).
pub(crate) fn finish_line(
    window: &mut Window,
    checkpoint: &mut Checkpoint,
    end: Position,
    record_beyond: bool,
) -> Result<Finished> {
    let finished = window.finish(end.line());
    match finished {
        Finished::Advanced(watermark) => checkpoint.commit(watermark)?,
        Finished::Beyond if record_beyond => checkpoint.commit_done(end)?,
        Finished::Beyond => {}
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(n: usize) -> Vec<Position> {
        let mut pos = Position::start();
        (0..n)
            .map(|i| {
                pos = pos.after(format!("{i}\n").as_bytes());
                pos
            })
            .collect()
    }

    #[test]
    fn in_order_completion_advances_line_by_line() {
        let ends = ends(3);
        let mut window = Window::new(Position::start(), 8);
        for end in &ends {
            window.start(*end);
            assert_eq!(window.finish(end.line()), Finished::Advanced(*end));
        }
        assert!(window.is_empty());
    }

    #[test]
    fn out_of_order_completion_waits_for_the_lowest_line() {
        let ends = ends(4);
        let mut window = Window::new(Position::start(), 8);
        for end in &ends {
            window.start(*end);
        }
        assert_eq!(window.finish(3), Finished::Beyond);
        assert_eq!(window.finish(2), Finished::Beyond);
        assert_eq!(window.finish(1), Finished::Advanced(ends[2]));
        assert_eq!(window.len(), 1);
        assert_eq!(window.finish(4), Finished::Advanced(ends[3]));
        assert_eq!(window.next_line(), 5);
    }

    #[test]
    fn a_stuck_line_holds_the_window_full() {
        let ends = ends(10);
        let mut window = Window::new(Position::start(), 4);
        for end in &ends[..4] {
            assert!(window.has_room());
            window.start(*end);
        }
        // Line 1 is stuck; lines 2 to 4 finish, but the window stays full.
        for line in 2..=4 {
            assert_eq!(window.finish(line), Finished::Beyond);
        }
        assert!(!window.has_room());
        assert_eq!(window.next_line(), 5);
        // When it finishes, the watermark jumps past all four.
        assert_eq!(window.finish(1), Finished::Advanced(ends[3]));
        assert!(window.has_room() && window.is_empty());
    }

    #[test]
    fn resuming_from_a_watermark_numbers_lines_after_it() {
        let ends = ends(6);
        let mut window = Window::new(ends[2], 2);
        assert_eq!(window.next_line(), 4);
        window.start(ends[3]);
        assert_eq!(window.finish(99), Finished::Beyond);
        assert_eq!(window.finish(2), Finished::Beyond);
        assert_eq!(window.finish(4), Finished::Advanced(ends[3]));
    }

    #[test]
    fn runs_settle_out_of_order_and_the_watermark_passes_whole_runs() {
        let ends = ends(9);
        let mut window = Window::new(Position::start(), 9);
        window.start_run(3);
        window.start_run(4);
        window.start_run(2);
        assert_eq!(
            (window.len(), window.room(), window.next_line()),
            (9, 0, 10)
        );
        assert!(window.contains(4) && window.contains(7) && !window.contains(10));
        assert_eq!(window.settle(4, 4, 4, ends[6]), Finished::Beyond);
        // Not the first line of a run: no such run.
        assert_eq!(window.settle(2, 3, 3, ends[2]), Finished::Beyond);
        assert_eq!(window.settle(1, 3, 3, ends[2]), Finished::Advanced(ends[6]));
        assert_eq!((window.len(), window.next_line()), (2, 10));
        assert_eq!(window.settle(8, 2, 2, ends[8]), Finished::Advanced(ends[8]));
        assert!(window.is_empty());
    }

    #[test]
    fn a_run_cut_short_moves_the_watermark_past_its_finished_lines_only() {
        let ends = ends(8);
        let mut window = Window::new(Position::start(), 8);
        window.start_run(4);
        window.start_run(4);
        // The second run finished whole; the first stopped after two lines.
        assert_eq!(window.settle(5, 4, 4, ends[7]), Finished::Beyond);
        assert_eq!(window.settle(1, 4, 2, ends[1]), Finished::Advanced(ends[1]));
        assert_eq!(window.watermark(), ends[1]);
        // Lines 3 and 4 stay unfinished, and hold the window.
        assert!(window.contains(3) && !window.has_room());
        // A run stopped before its first line moves nothing.
        let mut window = Window::new(Position::start(), 8);
        window.start_run(4);
        assert_eq!(window.settle(1, 4, 0, Position::start()), Finished::Beyond);
        assert_eq!(window.watermark(), Position::start());
    }

    #[test]
    fn a_run_handed_back_in_parts_is_split_and_each_part_settles() {
        let ends = ends(6);
        let mut window = Window::new(Position::start(), 6);
        window.start_run(6);
        // Lines 1-2 come back while 3-6 run on.
        assert_eq!(window.settle(1, 2, 2, ends[1]), Finished::Advanced(ends[1]));
        assert_eq!((window.len(), window.next_line()), (4, 7));
        assert!(window.contains(3) && !window.contains(2));
        // Then 3-4, then the last part.
        assert_eq!(window.settle(3, 2, 2, ends[3]), Finished::Advanced(ends[3]));
        assert_eq!(window.settle(5, 2, 2, ends[5]), Finished::Advanced(ends[5]));
        assert!(window.is_empty());
    }
}
