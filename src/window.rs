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
#[derive(Debug)]
pub(crate) struct Window {
    watermark: Position,
    /// Slot `i` is line `watermark.line() + 1 + i`: its end position and
    /// whether it is finished.
    slots: VecDeque<(Position, bool)>,
    capacity: usize,
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
            slots: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.slots.len() < self.capacity
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Lines tracked: in flight, or finished above the watermark.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The number the next line entering the window must have.
    pub(crate) fn next_line(&self) -> u64 {
        self.watermark.line() + 1 + self.slots.len() as u64
    }

    /// The end position of a line in the window.
    pub(crate) fn end_of(&self, line: u64) -> Option<Position> {
        let index = line.checked_sub(self.watermark.line() + 1)?;
        let index = usize::try_from(index).ok()?;
        self.slots.get(index).map(|&(end, _)| end)
    }

    /// A line starts; `end` is the position after it.
    pub(crate) fn start(&mut self, end: Position) {
        debug_assert_eq!(end.line(), self.next_line());
        self.slots.push_back((end, false));
    }

    /// A line is finished (done, failed, skipped or not ours).
    pub(crate) fn finish(&mut self, line: u64) -> Finished {
        let Some(index) = line
            .checked_sub(self.watermark.line() + 1)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.slots.len())
        else {
            return Finished::Beyond;
        };
        self.slots[index].1 = true;
        if index != 0 {
            return Finished::Beyond;
        }
        while let Some(&(end, true)) = self.slots.front() {
            self.watermark = end;
            self.slots.pop_front();
        }
        Finished::Advanced(self.watermark)
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
}
