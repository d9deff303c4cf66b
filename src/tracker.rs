//! Lines that finish out of order in a hand-written parallel loop, committed
//! as a low watermark plus the lines finished beyond it.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::line::Line;
use crate::position::Position;
use crate::runner::Runner;
use crate::task::{BoxError, error_chain};
use crate::window::{Finished, Window, finish_line};

/// Commits lines that finish in any order, on any thread, to a
/// [`Checkpoint`] without ever recording an unfinished line as finished.
///
/// [`Checkpoint::commit_line`] means "this line *and every line before it*
/// are finished". A parallel loop whose workers each commit their own line
/// breaks that: when line 5 commits while line 3 is still running, a crash
/// then makes the next run resume after line 5 and line 3 is never done. A
/// `Tracker` commits only the low watermark (the end of the longest run of
/// finished lines from the start), and records each line finished beyond it
/// with [`Checkpoint::commit_done`]: after a crash, the next run skips the
/// finished lines, and only them. It is the bookkeeping [`Runner`] uses for
/// its workers, for loops that manage their own threads.
///
/// # Use
///
/// 1. Seek the input to [`Checkpoint::position`] and read it with
///    [`LineReader::resume`](crate::LineReader::resume), as for any resumed
///    job.
/// 2. On the reading thread, pass every line, in input order, to
///    [`start`](Tracker::start). It returns `None` for a line an earlier
///    run finished or failed beyond the position (after checking the line
///    is still the one recorded), and otherwise a [`Ticket`] for it.
/// 3. Hand the ticket to a worker with the line's data (its bytes are
///    borrowed from the reader, so copy what the worker needs). The worker
///    calls [`Ticket::finish`] when the line is done, or [`Ticket::fail`]
///    to record it as failed for good; lines may finish in any order.
/// 4. When every ticket is settled (or dropped: tickets borrow the tracker,
///    and the tracker the checkpoint, so the compiler sees to it), drop the
///    tracker and [`close`](Checkpoint::close) the checkpoint.
///
/// A ticket dropped without `finish` or `fail` (a worker that panicked or
/// gave up) leaves its line unfinished: the watermark stays before it for
/// the rest of the run and the next run does it again.
///
/// # Window
///
/// At most [`Runner::DEFAULT_WINDOW`] lines (or the number given to
/// [`with_window`](Tracker::with_window)) are in flight or finished beyond
/// the watermark. When the window is full, `start` waits until the lowest
/// line finishes, so one stuck line holds back new lines rather than
/// letting memory and the out-of-order records in the checkpoint grow. The
/// one exception is a lowest line whose ticket was dropped: it can never
/// finish, so rather than wait forever `start` lets the window grow past
/// its size, and every line finished after it costs a `done` record until
/// the run ends. Stop starting lines soon after giving up on one.
///
/// # Threads
///
/// `Tracker` is `Send` and `Sync`, and [`Ticket`] is `Send`: share the
/// tracker by reference (with [`std::thread::scope`], say) and move tickets
/// to the threads that do the work. Call `start` from one thread, the one
/// that reads the input. A lock inside the tracker orders every commit, so
/// the checkpoint never sees a watermark move backwards; the commits of
/// concurrent `finish` calls take turns, which is no cost next to the work
/// of a line unless each commit syncs ([`Durability::EveryCommit`]).
///
/// # Guarantee
///
/// As the checkpoint's, at least once: after a crash, a run that resumes
/// as above does again exactly the lines that were unfinished, plus those
/// whose commit was not durable yet (see [`Durability`]). No line is
/// recorded as finished before its ticket's `finish` was called. A run
/// that resumes without a tracker must skip the lines recorded beyond the
/// position itself: those for which [`Checkpoint::is_recorded`] is true.
///
/// [`Durability`]: crate::Durability
/// [`Durability::EveryCommit`]: crate::Durability::EveryCommit
///
/// # Examples
///
/// Four worker threads summing the numbers of a file, one per line; a line
/// that is not a number is recorded as failed.
///
/// ```
/// use std::fs::File;
/// use std::io::BufReader;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::{Mutex, mpsc};
/// use std::thread;
/// use linemark::{Checkpoint, LineReader, Ticket, Tracker};
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("numbers.txt");
/// std::fs::write(&input, "1\n2\n3\nfour\n5\n6\n7\n8\n")?;
/// let mut checkpoint = Checkpoint::open(dir.path().join("numbers.txt.checkpoint"))?;
///
/// let mut reader = BufReader::new(File::open(&input)?);
/// let resumed = checkpoint.position().seek_offset(&mut reader)?;
/// let mut lines = LineReader::resume(reader, resumed);
///
/// let sum = AtomicU64::new(0);
/// {
///     let tracker = Tracker::new(&mut checkpoint);
///     let (send, receive) = mpsc::sync_channel::<(Ticket<'_>, String)>(16);
///     let receive = Mutex::new(receive);
///     thread::scope(|scope| -> linemark::Result<()> {
///         let mut workers = Vec::new();
///         for _ in 0..4 {
///             workers.push(scope.spawn(|| -> linemark::Result<()> {
///                 loop {
///                     // (A `while let` would hold the lock during the work.)
///                     let Ok((ticket, text)) = receive.lock().unwrap().recv() else {
///                         return Ok(()); // the reader is done, the channel empty
///                     };
///                     match text.parse::<u64>() {
///                         Ok(n) => {
///                             sum.fetch_add(n, Ordering::Relaxed);
///                             ticket.finish()?;
///                         }
///                         Err(error) => ticket.fail(1, error)?,
///                     }
///                 }
///             }));
///         }
///         while let Some(line) = lines.next_line()? {
///             let Some(ticket) = tracker.start(&line)? else {
///                 continue; // finished by an earlier run
///             };
///             if send.send((ticket, line.as_str()?.to_owned())).is_err() {
///                 break; // every worker stopped: their errors say why
///             }
///         }
///         drop(send);
///         for worker in workers {
///             worker.join().expect("a worker panicked")?;
///         }
///         Ok(())
///     })?;
/// } // The tracker ends with the channel: the checkpoint is free again.
///
/// assert_eq!(sum.into_inner(), 32);
/// assert_eq!(checkpoint.position().line(), 8);
/// let first = checkpoint.failed()?.next().transpose()?;
/// assert_eq!(first.map(|failed| failed.line()), Some(4));
/// checkpoint.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Tracker<'c> {
    state: Mutex<State<'c>>,
    /// Signalled when the window may have room again.
    room: Condvar,
}

#[derive(Debug)]
struct State<'c> {
    checkpoint: &'c mut Checkpoint,
    window: Window,
    /// Lines up to this one may be recorded as done or failed by an earlier
    /// run; past it, none is, and `start` need not ask the checkpoint.
    last_recorded: u64,
    /// The lowest line whose ticket was dropped unfinished.
    abandoned: Option<u64>,
}

impl<'c> Tracker<'c> {
    /// A tracker whose watermark starts at the checkpoint's
    /// [`position`](Checkpoint::position), with a window of
    /// [`Runner::DEFAULT_WINDOW`] lines.
    ///
    /// The checkpoint stays borrowed while the tracker lives, so nothing
    /// else can commit to it meanwhile.
    #[must_use]
    pub fn new(checkpoint: &'c mut Checkpoint) -> Tracker<'c> {
        Tracker::with_window(checkpoint, Runner::DEFAULT_WINDOW)
    }

    /// A tracker with a window of `lines` lines in flight or finished
    /// beyond the watermark (at least 1). It should be at least the number
    /// of lines the workers hold at a time (running and queued), or `start`
    /// waits while workers are idle.
    #[must_use]
    pub fn with_window(checkpoint: &'c mut Checkpoint, lines: usize) -> Tracker<'c> {
        let position = checkpoint.position();
        let last_recorded = checkpoint.last_recorded_line();
        Tracker {
            state: Mutex::new(State {
                checkpoint,
                window: Window::new(position, lines),
                last_recorded,
                abandoned: None,
            }),
            room: Condvar::new(),
        }
    }

    /// Starts `line`, the next line of the input: returns a ticket to
    /// settle it with, or `None` when an earlier run recorded it as done or
    /// failed beyond the checkpoint's position, which this checks by the
    /// line's offset, length and digest (see
    /// [`Checkpoint::is_recorded`]). A line skipped this way may move the
    /// watermark.
    ///
    /// Waits while the window is full (see [the type's docs](Tracker#window)).
    ///
    /// # Durability
    ///
    /// A line skipped here that moves the watermark is committed as by
    /// [`Checkpoint::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::InputChanged`] when the input holds another line under that
    /// number than the one an earlier run recorded; [`Error::InvalidPosition`]
    /// for a line of no bytes (never one from a
    /// [`LineReader`](crate::LineReader)); as [`Checkpoint::commit`] when a
    /// commit fails. The line is not started then.
    ///
    /// # Panics
    ///
    /// When `line` is not the next line: the first line started must follow
    /// the checkpoint's position, and each next one the line before it. A
    /// line left out would be passed by the watermark without being done,
    /// the very mistake this type prevents, so it is refused loudly. Reading
    /// the input from the start without seeking, or with
    /// [`LineReader::new`](crate::LineReader::new) after a seek (instead of
    /// [`LineReader::resume`](crate::LineReader::resume)), does this.
    pub fn start(&self, line: &Line<'_>) -> Result<Option<Ticket<'_>>> {
        let mut state = self.lock();
        let number = line.number();
        let expected = state.window.next_line();
        assert!(
            number == expected,
            "linemark::Tracker::start: line {number} was started, but the next line is \
             {expected}: lines must be started in input order, each once, after seeking \
             the input to the checkpoint's position and reading on with LineReader::resume"
        );
        if line.raw().is_empty() {
            return Err(Error::InvalidPosition {
                line: number,
                offset: line.offset(),
            });
        }
        while !state.window.has_room() && !state.is_stuck() {
            state = self
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let recorded = number <= state.last_recorded && state.checkpoint.is_recorded(line)?;
        let end = line.end_position();
        state.window.start(end);
        if recorded {
            // Its done or failed record stays in force: nothing to record.
            self.settle(&mut state, end, false)?;
            return Ok(None);
        }
        Ok(Some(Ticket {
            tracker: Some(self),
            end,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State<'c>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the line ending at `end` finished in the window and commits
    /// what that changed.
    fn settle(&self, state: &mut State<'c>, end: Position, record_beyond: bool) -> Result<()> {
        let finished = finish_line(&mut state.window, state.checkpoint, end, record_beyond);
        // After a failed commit the window has moved all the same.
        if !matches!(finished, Ok(Finished::Beyond)) {
            self.room.notify_all();
        }
        finished.map(drop)
    }
}

impl State<'_> {
    /// Whether the lowest line in the window can never finish, so waiting
    /// for room would wait forever.
    fn is_stuck(&self) -> bool {
        // The lowest line is the one in the window whose predecessor is not.
        self.abandoned
            .is_some_and(|line| self.window.contains(line) && !self.window.contains(line - 1))
    }
}

/// What a [`Ticket`] needs of its [`Tracker`], as a trait object, so that a
/// ticket need not name the tracker's checkpoint lifetime (the `Mutex`
/// makes `Tracker<'c>` invariant in it, so `&'t Tracker<'t>` would not do).
trait Settle: Sync {
    fn done(&self, end: Position) -> Result<()>;
    fn failed(&self, end: Position, attempts: u32, error: String) -> Result<()>;
    fn abandoned(&self, line: u64);
}

impl Settle for Tracker<'_> {
    fn done(&self, end: Position) -> Result<()> {
        let mut state = self.lock();
        self.settle(&mut state, end, true)
    }

    fn failed(&self, end: Position, attempts: u32, error: String) -> Result<()> {
        let mut state = self.lock();
        // The failed record goes first: the checkpoint's writer thread may
        // write between the two commits, and a watermark past the line
        // without its record would make a crash lose the failure.
        let recorded = state
            .checkpoint
            .commit_failed(FailedLine::ending_at(end, attempts, error));
        // Recorded in memory even when the write failed, to be written again:
        // the line is settled either way.
        let settled = self.settle(&mut state, end, false);
        recorded.and(settled)
    }

    fn abandoned(&self, line: u64) {
        let mut state = self.lock();
        state.abandoned = Some(state.abandoned.map_or(line, |lowest| lowest.min(line)));
        // A `start` waiting for this line must stop waiting.
        self.room.notify_all();
    }
}

/// A line started by [`Tracker::start`], to be settled once, from any
/// thread, with [`finish`](Ticket::finish) or [`fail`](Ticket::fail).
///
/// Dropping a ticket without either leaves its line unfinished: the next
/// run does it again (see [`Tracker`]).
#[must_use = "a line whose ticket is dropped stays unfinished: call finish or fail"]
pub struct Ticket<'t> {
    /// `None` once settled.
    tracker: Option<&'t dyn Settle>,
    end: Position,
}

impl Ticket<'_> {
    /// The 1-based number of the line.
    #[must_use]
    pub fn line(&self) -> u64 {
        self.end.line()
    }

    /// Settles the line as done. If every line before it is finished, the
    /// watermark moves past it (and past the finished lines after it);
    /// otherwise it is recorded as done beyond the watermark.
    ///
    /// # Durability
    ///
    /// As [`Checkpoint::commit`] and [`Checkpoint::commit_done`].
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::commit`]: a write of the checkpoint failed. The
    /// line is settled all the same, and the commit is kept in memory to be
    /// written again.
    pub fn finish(mut self) -> Result<()> {
        match self.tracker.take() {
            Some(tracker) => tracker.done(self.end),
            None => Ok(()),
        }
    }

    /// Settles the line as failed for good after `attempts` attempts, with
    /// `error`'s message and the messages of its sources, `: `-joined and
    /// cut to [`MAX_ERROR_LEN`](crate::MAX_ERROR_LEN) bytes, as the runner
    /// records a failed line. The watermark may move past it as past a
    /// finished line; the failed record stays, so a plain rerun does not
    /// redo it (see [`Checkpoint::failed`] and
    /// [`Runner::retry_failed`]).
    ///
    /// # Durability
    ///
    /// As [`Checkpoint::commit_failed`].
    ///
    /// # Errors
    ///
    /// As [`Ticket::finish`].
    pub fn fail(mut self, attempts: u32, error: impl Into<BoxError>) -> Result<()> {
        match self.tracker.take() {
            Some(tracker) => tracker.failed(self.end, attempts, error_chain(&*error.into())),
            None => Ok(()),
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.abandoned(self.end.line());
        }
    }
}

impl fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("end", &self.end)
            .field("settled", &self.tracker.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> (tempfile::TempDir, Checkpoint) {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::open(dir.path().join("job.checkpoint")).unwrap();
        (dir, checkpoint)
    }

    #[test]
    fn a_full_window_waits_for_the_lowest_line() {
        let (_dir, mut checkpoint) = checkpoint();
        let tracker = Tracker::with_window(&mut checkpoint, 2);
        let input = b"a\nb\nc\n";
        let first = tracker
            .start(&Line::new(&input[..2], 1, 0))
            .unwrap()
            .unwrap();
        let second = tracker
            .start(&Line::new(&input[2..4], 2, 2))
            .unwrap()
            .unwrap();
        std::thread::scope(|scope| {
            let third = scope.spawn(|| tracker.start(&Line::new(&input[4..], 3, 4)));
            second.finish().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!third.is_finished(), "started with the window full");
            first.finish().unwrap();
            third.join().unwrap().unwrap().unwrap().finish().unwrap();
        });
        drop(tracker);
        assert_eq!(checkpoint.position().line(), 3);
    }

    #[test]
    fn a_dropped_lowest_ticket_lets_the_window_grow() {
        let (_dir, mut checkpoint) = checkpoint();
        let tracker = Tracker::with_window(&mut checkpoint, 1);
        let input = b"a\nb\nc\n";
        drop(tracker.start(&Line::new(&input[..2], 1, 0)).unwrap());
        for (number, offset) in [(2, 2), (3, 4)] {
            let line = Line::new(&input[offset..offset + 2], number, offset as u64);
            tracker.start(&line).unwrap().unwrap().finish().unwrap();
        }
        drop(tracker);
        assert!(checkpoint.position().is_start());
        assert_eq!(checkpoint.done_beyond().collect::<Vec<_>>(), [2, 3]);
    }
}
