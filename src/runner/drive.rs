//! Driving a run: the lines in order or through the window, retry-failed
//! runs, and the counters of one run.

use std::collections::VecDeque;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::checkpoint::{Checkpoint, FailedLines};
use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::line::{Line, LineReader, LongLine, Next, Paused};
use crate::out::Out;
use crate::position::Position;
use crate::progress::Event;
use crate::task::Task;
use crate::window::{Finished, Window};

use super::batch::{BATCH_WORK, Batch, Held, MAX_BATCH_BYTES, Sizer};
use super::deferred::Deferred;
use super::pool::*;
use super::*;

impl Runner {
    /// Deals with a line over the length limit, which never runs: not in
    /// the shard, recorded by an earlier run (checked to be the same line),
    /// or made a failed line now. The caller then finishes it.
    #[cold]
    #[inline(never)]
    pub(super) fn long_line(&self, run: &mut RunState<'_, '_>, long: &LongLine) -> Result<()> {
        let end = long.end_position();
        if !self.in_shard(long.number) {
            return Ok(());
        }
        if run.checkpoint.is_recorded_long(long)? {
            run.skipped += 1;
            run.emit(&Event::Skipped {
                line: long.number,
                end_offset: end.offset(),
            });
            return Ok(());
        }
        run.record_failure(FailedLine::ending_at(end, 0, long.message()))
    }

    #[inline]
    pub(super) fn in_shard(&self, line: u64) -> bool {
        match self.shard {
            Some((index, count)) => (line - 1) % count == index,
            None => true,
        }
    }

    /// The normal run: every line after the resume point, in order of
    /// reading, through the window.
    pub(super) fn drive<R: BufRead, W: Work>(
        &self,
        checkpoint: &mut Checkpoint,
        lines: LineReader<R>,
        resumed: Position,
        input: Option<(&Path, u64)>,
        work: &mut W,
    ) -> Result<Report> {
        let started = Instant::now();
        let input_len = input.map(|(_, len)| len);
        let recorded = checkpoint.position();
        if resumed != recorded {
            if resumed.line() == recorded.line()
                && resumed.offset() == recorded.offset() + 1
                && resumed.last_len() == recorded.last_len() + 1
            {
                // A newline completed the unterminated last line: it starts
                // where it did and nothing before it moved, so no record
                // moves either.
                checkpoint.commit(resumed)?;
            } else {
                // Content seeking found the last line elsewhere: every
                // record moves with it.
                checkpoint.rebase(resumed)?;
            }
        }
        let mut run = RunState::new(self, checkpoint, started, input.map(|(path, _)| path));
        run.emit(&Event::Begin {
            input_len,
            resumed_at: resumed,
            failed_before: run.checkpoint.failed_count(),
        });
        let lines = match work.in_order(self, &mut run, lines) {
            Ok(result) => {
                result?;
                return run.finish_run();
            }
            Err(lines) => lines,
        };
        let regular_file =
            input.is_some_and(|(path, _)| std::fs::metadata(path).is_ok_and(|meta| meta.is_file()));
        let mut source = WindowedLines::new(self, lines, resumed, regular_file);
        work.pump(self, &mut run, &mut source)?;
        run.finish_run()
    }

    /// One worker: each line runs on this thread as soon as it is read, and
    /// the checkpoint follows line by line, with no window to keep.
    #[inline]
    pub(super) fn drive_in_order<R: BufRead, T: Task>(
        &self,
        run: &mut RunState<'_, '_>,
        lines: LineReader<R>,
        task: &T,
    ) -> Result<()> {
        // Two copies of the loop: without outputs, not an instruction a
        // line is spent on results.
        if run.checkpoint.has_outputs() {
            self.drive_lines::<R, T, true>(run, lines, task)
        } else {
            self.drive_lines::<R, T, false>(run, lines, task)
        }
    }

    #[inline]
    fn drive_lines<R: BufRead, T: Task, const OUTPUTS: bool>(
        &self,
        run: &mut RunState<'_, '_>,
        mut lines: LineReader<R>,
        task: &T,
    ) -> Result<()> {
        let shared = Arc::clone(&run.shared);
        let stop = shared.user_stop.clone();
        let mut out = Out::new(self.outputs.len());
        // A stream's next line may be slow to come: its lines are recorded
        // one by one, never kept waiting for it.
        // Nor are they with no writer thread (every commit written at
        // once): nothing would record the waiting ones when a line turns
        // slow.
        let regular_file = OUTPUTS
            && !run.checkpoint.write_delay().is_zero()
            && run
                .shared
                .input
                .as_deref()
                .is_some_and(|path| std::fs::metadata(path).is_ok_and(|meta| meta.is_file()));
        let mut results = Deferred::<OUTPUTS>::new(regular_file);
        let ended = loop {
            // Returns whether to go on with the next line.
            let mut one_line = |line: &Line<'_>| -> Result<bool> {
                if stop.is_stopped() {
                    run.stopped = true;
                    return Ok(false);
                }
                let number = line.number();
                if run.triage(line)? != Triage::Run {
                    results.append(run.checkpoint, &mut out)?;
                    run.checkpoint.commit_read_line(line)?;
                    return Ok(true);
                }
                match shared.attempt::<T, OUTPUTS>(task, line, &mut out) {
                    Outcome::Done => {
                        run.note_done(number, line.offset() + line.raw().len() as u64);
                        if results.defer(line, &out, run.checkpoint) {
                            return Ok(true);
                        }
                        results.append(run.checkpoint, &mut out)?;
                        run.checkpoint.commit_read_line(line)?;
                    }
                    Outcome::Failed { attempts, error } => {
                        // The lines waiting are recorded before the failure,
                        // whose record carries the outputs' lengths too.
                        results.finish(run.checkpoint, &mut out)?;
                        run.record_failure(FailedLine::new(line, attempts, error))?;
                        run.checkpoint.commit_read_line(line)?;
                        if run.halted {
                            return Ok(false);
                        }
                    }
                    Outcome::Abandoned => {
                        run.stopped = true;
                        return Ok(false);
                    }
                }
                run.note_sync();
                Ok(true)
            };
            match lines.for_each_line(&mut one_line) {
                Ok(Paused::EndOfInput) => {
                    run.reached_end = true;
                    break Ok(());
                }
                Ok(Paused::Asked) => break Ok(()),
                Ok(Paused::TooLong(long)) => {
                    if stop.is_stopped() {
                        run.stopped = true;
                        break Ok(());
                    }
                    results.finish(run.checkpoint, &mut out)?;
                    self.long_line(run, &long)?;
                    run.checkpoint.commit(long.end_position())?;
                    if run.halted {
                        break Ok(());
                    }
                }
                Err(err) => break Err(err),
            }
        };
        // The lines finished whose results wait are recorded, whatever
        // ended the loop (an error reading the next line too).
        let finished = results.finish(run.checkpoint, &mut out);
        ended?;
        finished
    }

    /// The report of a run stopped before its first line.
    pub(super) fn stopped_at_start(&self, checkpoint: &mut Checkpoint) -> Result<Report> {
        let mut run = RunState::new(self, checkpoint, Instant::now(), None);
        run.stopped = true;
        run.finish_run()
    }

    /// The retry-failed run: exactly the lines recorded as failed.
    pub(super) fn drive_failed<S: BufRead + Seek, R: BufRead, W: Work>(
        &self,
        checkpoint: &mut Checkpoint,
        source: FailedSource<'_, S, R>,
        input: Option<(&Path, u64)>,
        work: &mut W,
    ) -> Result<Report> {
        let started = Instant::now();
        let input_len = input.map(|(_, len)| len);
        let mut run = RunState::new(self, checkpoint, started, input.map(|(path, _)| path));
        run.emit(&Event::Begin {
            input_len,
            resumed_at: run.checkpoint.position(),
            failed_before: run.checkpoint.failed_count(),
        });
        let mut source = Retry {
            source,
            in_flight: VecDeque::new(),
            abandoned: false,
        };
        work.pump(self, &mut run, &mut source)?;
        // A run that stopped (or halted) has no use for what follows.
        if run.reached_end && !run.stopping() {
            match source.source.input_after(run.checkpoint.position()) {
                Ok(left) => run.input_left = left,
                // A stream that a stop interrupted: the run stopped.
                Err(err) if is_read_stopped(&err) => {
                    run.check_stop();
                    run.reached_end = false;
                }
                Err(err) => return Err(err),
            }
        }
        run.finish_run()
    }
}

/// How a run's tasks run: a sync [`Task`] on threads ([`SyncWork`]), or an
/// async one on a runtime (`async_run.rs`). Everything else about a run (the
/// window, skips, shards, records) is the same code for both.
pub(super) trait Work {
    /// Whether its tasks can write results to the run's outputs.
    const OUTPUTS: bool = true;

    /// Runs the lines in order on this thread, one by one, if that is how
    /// this work runs them (a sync task with one worker); gives `lines`
    /// back otherwise.
    fn in_order<R: BufRead>(
        &mut self,
        runner: &Runner,
        run: &mut RunState<'_, '_>,
        lines: LineReader<R>,
    ) -> std::result::Result<Result<()>, LineReader<R>>;

    /// Feeds the lines of `source` to an executor and settles their
    /// results until the lines run out or the run stops.
    fn pump<F: Feed>(
        &mut self,
        runner: &Runner,
        run: &mut RunState<'_, '_>,
        source: &mut F,
    ) -> Result<()>;
}

/// A sync task: on the calling thread with one worker, on scoped threads
/// with more.
pub(super) struct SyncWork<'t, T>(pub(super) &'t T);

impl<T: Task> Work for SyncWork<'_, T> {
    #[inline]
    fn in_order<R: BufRead>(
        &mut self,
        runner: &Runner,
        run: &mut RunState<'_, '_>,
        lines: LineReader<R>,
    ) -> std::result::Result<Result<()>, LineReader<R>> {
        if runner.workers == 1 {
            Ok(runner.drive_in_order(run, lines, self.0))
        } else {
            Err(lines)
        }
    }

    fn pump<F: Feed>(
        &mut self,
        runner: &Runner,
        run: &mut RunState<'_, '_>,
        source: &mut F,
    ) -> Result<()> {
        let task = self.0;
        std::thread::scope(|scope| {
            let mut exec = Threads::new(runner, task, &run.shared, scope);
            runner.pump(run, &mut exec, source)
        })
    }
}

/// What a stream's reader returns when the run stopped while it waited
/// for input that has not come (see `async_run.rs`): the run stops as it
/// would between two lines, rather than wait for the stream.
#[derive(Debug)]
pub(super) struct ReadStopped;

impl std::fmt::Display for ReadStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the run stopped while waiting for input")
    }
}

impl std::error::Error for ReadStopped {}

pub(super) fn is_read_stopped(err: &Error) -> bool {
    match err {
        Error::Io { source, .. } => source
            .get_ref()
            .is_some_and(|inner| inner.is::<ReadStopped>()),
        _ => false,
    }
}

/// Lines for a pool of workers, and what to do with their results.
pub(super) trait Feed {
    /// Submits batches while the executor takes them. Returns whether there
    /// are no more lines.
    fn feed<E: Exec>(&mut self, run: &mut RunState<'_, '_>, exec: &mut E) -> Result<bool>;

    /// Records the result of one batch.
    fn settle(&mut self, run: &mut RunState<'_, '_>, result: Batch) -> Result<()>;

    /// When [`tick`](Feed::tick) has something to do, if ever.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Called after every result, and when none came for a while.
    fn tick(&mut self, _run: &mut RunState<'_, '_>) -> Result<()> {
        Ok(())
    }

    /// The run is ending: records what is still kept back.
    fn close(&mut self, _run: &mut RunState<'_, '_>) -> Result<()> {
        Ok(())
    }

    /// Whether every line fed was settled as done or failed (none was
    /// abandoned by a stop).
    fn all_settled(&self) -> bool;
}

impl Runner {
    /// Feeds lines to the workers and settles their results until the
    /// lines run out or the run stops, then waits for the lines in flight.
    pub(super) fn pump<E: Exec, F: Feed>(
        &self,
        run: &mut RunState<'_, '_>,
        exec: &mut E,
        source: &mut F,
    ) -> Result<()> {
        let mut exhausted = false;
        loop {
            run.check_stop();
            if !run.stopping() && !exhausted {
                exhausted = source.feed(run, exec)?;
            }
            if exec.in_flight() == 0 && (exhausted || run.stopping()) {
                source.close(run)?;
                run.reached_end = exhausted && source.all_settled();
                return Ok(());
            }
            let timeout = source.deadline().map_or(TICK, |deadline| {
                deadline.saturating_duration_since(Instant::now()).min(TICK)
            });
            match exec.next_result(timeout) {
                Some(result) => source.settle(run, result)?,
                None => run.checkpoint.flush_if_due()?,
            }
            source.tick(run)?;
            run.note_sync();
        }
    }
}

/// Every line after the resume point, in batches, through the window.
pub(super) struct WindowedLines<'r, R> {
    runner: &'r Runner,
    lines: LineReader<R>,
    window: Window,
    sizer: Sizer,
    held: Held,
    /// Emptied batches, for their buffers.
    spare: Vec<Batch>,
    /// The input is a regular file: reading it never waits for a writer.
    regular_file: bool,
}

impl<'r, R: BufRead> WindowedLines<'r, R> {
    pub(super) fn new(
        runner: &'r Runner,
        lines: LineReader<R>,
        resumed: Position,
        regular_file: bool,
    ) -> Self {
        let window = runner.window.unwrap_or(Runner::DEFAULT_WINDOW);
        let capacity = window.max(runner.workers);
        WindowedLines {
            runner,
            lines,
            window: Window::new(resumed, capacity),
            // Two batches a worker fit in the window, so the window fills
            // with a stuck batch, not with batches that keep workers busy.
            sizer: Sizer::new(capacity / (2 * runner.workers)),
            held: Held::new(runner.keep_order && !runner.outputs.is_empty()),
            spare: Vec::new(),
            regular_file,
        }
    }

    fn blank(&mut self) -> Batch {
        let mut batch = self.spare.pop().unwrap_or_default();
        batch.reset(self.window.next_line(), self.lines.offset());
        batch.set_outputs(self.runner.outputs.len());
        batch
    }

    /// Commits the watermark the window moved to; the results of the held
    /// batches it passes (not recorded yet) are appended first, in order.
    fn commit_watermark(&mut self, run: &mut RunState<'_, '_>, watermark: Position) -> Result<()> {
        if run.checkpoint.has_outputs() && !self.held.is_empty() {
            for batch in self.held.take_passed(watermark.line()) {
                run.checkpoint.append_results(batch.results())?;
                self.recycle(batch);
            }
        }
        run.checkpoint.commit(watermark)
    }

    fn recycle(&mut self, batch: Batch) {
        // As many as can be out at a time, with room to spare.
        if self.spare.len() < 64 {
            self.spare.push(batch);
        }
    }

    /// Reads the next batch: up to `want` lines (fewer at the end of the
    /// input, before a line over the limit, at `MAX_BATCH_BYTES`, or when
    /// reading them takes longer than a batch's work). Returns the batch,
    /// and a line over the limit that ended it.
    fn read_batch(
        &mut self,
        run: &mut RunState<'_, '_>,
        want: usize,
    ) -> Result<(Batch, Option<LongLine>, bool)> {
        let mut batch = self.blank();
        let started = Instant::now();
        let mut long = None;
        let mut end_of_input = false;
        while batch.len() < want && batch.byte_len() < MAX_BATCH_BYTES {
            // Lines read go now rather than wait for a line that may be
            // slow to come: a stream's writer may wait for their results.
            if !batch.is_empty() && !self.regular_file && !self.lines.next_is_buffered() {
                break;
            }
            match self.lines.next_item()? {
                Some(Next::Line(line)) => {
                    let runs = run.triage(&line)? == Triage::Run;
                    batch.push(&line, runs);
                }
                Some(Next::TooLong(found)) => {
                    long = Some(found);
                    break;
                }
                None => {
                    end_of_input = true;
                    break;
                }
            }
            // Slow reading (a file on a slow disk): the lines read so far
            // go now.
            if batch.len() % 16 == 0 && started.elapsed() > BATCH_WORK {
                break;
            }
        }
        self.sizer.read(batch.len(), started.elapsed());
        Ok((batch, long, end_of_input))
    }

    /// The window moved, or a result came back: lets go of the batches the
    /// watermark passed.
    fn release_passed(&mut self, run: &mut RunState<'_, '_>, now: Option<Instant>) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let watermark = self.window.watermark().line();
        self.held
            .release(run.checkpoint, watermark, now, &mut self.spare)
    }

    /// Settles a batch nobody ran (every line passed), or a batch back from
    /// a worker.
    fn settle_batch(&mut self, run: &mut RunState<'_, '_>, batch: Batch) -> Result<()> {
        let first = batch.first();
        if !self.window.contains(first) {
            return Ok(());
        }
        for &(index, attempts, ref error) in batch.failed() {
            let end = batch.line(index).end_position();
            run.record_failure(FailedLine::ending_at(end, attempts, error.clone()))?;
        }
        run.note_batch_done(&batch);
        let finished = batch.finished();
        let end = batch
            .finished_end()
            .unwrap_or_else(|| self.window.watermark());
        match self.window.settle(first, batch.len(), finished, end) {
            Finished::Advanced(watermark) => {
                // Results are appended just before the commit that records
                // their lines: a crash between the two redoes the lines and
                // cuts their results.
                run.checkpoint.append_results(batch.results())?;
                self.commit_watermark(run, watermark)?;
                self.recycle(batch);
            }
            Finished::Beyond => {
                let now = Instant::now();
                if let Some(back) = self.held.hold_or_record(run.checkpoint, batch, now)? {
                    self.recycle(back);
                }
            }
        }
        self.release_passed(run, Some(Instant::now()))
    }
}

impl<R: BufRead> Feed for WindowedLines<'_, R> {
    fn feed<E: Exec>(&mut self, run: &mut RunState<'_, '_>, exec: &mut E) -> Result<bool> {
        loop {
            // Batches run inline can keep this loop going: it does what the
            // pump's loop would between them.
            run.check_stop();
            run.note_sync();
            let len = self.sizer.len();
            let room = self.window.room();
            if run.stopping() || room == 0 || !exec.can_submit() {
                return Ok(false);
            }
            let (batch, long, end_of_input) = match self.read_batch(run, len.min(room)) {
                Err(err) if is_read_stopped(&err) => {
                    // The lines of the batch read so far are not in the
                    // window: they are read again by the next run.
                    run.check_stop();
                    return Ok(false);
                }
                read => read?,
            };
            if batch.is_empty() {
                self.recycle(batch);
            } else {
                self.window.start_run(batch.len());
                if batch.runs_nothing() {
                    self.settle_batch(run, batch)?;
                } else if self.sizer.inline() && exec.runs_here() {
                    let batch = exec.run_here(batch);
                    self.settle(run, batch)?;
                    if exec.in_flight() > 0 {
                        // Results from the workers are waiting.
                        return Ok(false);
                    }
                } else {
                    exec.submit(batch);
                }
            }
            if let Some(long) = long {
                let end = long.end_position();
                self.window.start(end);
                self.runner.long_line(run, &long)?;
                if let Finished::Advanced(watermark) = self.window.finish(end.line()) {
                    self.commit_watermark(run, watermark)?;
                }
                self.release_passed(run, Some(Instant::now()))?;
                if run.stopping() {
                    return Ok(false);
                }
            }
            if end_of_input {
                return Ok(true);
            }
        }
    }

    fn settle(&mut self, run: &mut RunState<'_, '_>, result: Batch) -> Result<()> {
        let (ran, busy) = result.timing();
        self.sizer.ran(ran, busy);
        if result.troubled() {
            self.sizer.failing();
        }
        self.settle_batch(run, result)
    }

    fn deadline(&self) -> Option<Instant> {
        self.held.deadline()
    }

    fn tick(&mut self, run: &mut RunState<'_, '_>) -> Result<()> {
        self.release_passed(run, Some(Instant::now()))
    }

    fn close(&mut self, run: &mut RunState<'_, '_>) -> Result<()> {
        self.release_passed(run, None)
    }

    fn all_settled(&self) -> bool {
        self.window.is_empty()
    }
}

/// The lines recorded as failed, for a retry-failed run: each its own
/// batch, as they are seldom next to each other. Their records are made in
/// the order the checkpoint lists them (the failure log's), so that each
/// is at the head of the log's live part: a line finished before the
/// lines listed before it waits for them (at most a window of lines).
pub(super) struct Retry<'a, S, R> {
    pub(super) source: FailedSource<'a, S, R>,
    /// The lines fed and not yet recorded, in order, each with its outcome
    /// once known.
    pub(super) in_flight: VecDeque<(FailedLine, Option<Retried>)>,
    pub(super) abandoned: bool,
}

/// How a retried line ended.
pub(super) enum Retried {
    /// Finished: its results, to append before its record.
    Done(Batch),
    Failed(FailedLine),
}

impl<S: BufRead + Seek, R: BufRead> Retry<'_, S, R> {
    /// Records the lines at the front whose outcome is known.
    fn record_ready(&mut self, run: &mut RunState<'_, '_>) -> Result<()> {
        while self
            .in_flight
            .front()
            .is_some_and(|(_, retried)| retried.is_some())
        {
            let Some((before, Some(retried))) = self.in_flight.pop_front() else {
                break;
            };
            match retried {
                Retried::Done(batch) => {
                    let line = before.line();
                    run.note_done(line, before.offset().saturating_add(before.len()));
                    run.checkpoint.append_results(batch.results())?;
                    run.checkpoint.commit_resolved(line)?;
                }
                Retried::Failed(failed) => run.record_failure(failed)?,
            }
        }
        Ok(())
    }
}

impl<S: BufRead + Seek, R: BufRead> Feed for Retry<'_, S, R> {
    fn feed<E: Exec>(&mut self, run: &mut RunState<'_, '_>, exec: &mut E) -> Result<bool> {
        // The lines waiting for one listed before them stay within the
        // window: a slow line holds back at most that many.
        let window = run.runner.window.unwrap_or(Runner::DEFAULT_WINDOW);
        while exec.can_submit() && self.in_flight.len() < window {
            let next = match self.source.next_line() {
                Err(err) if is_read_stopped(&err) => {
                    run.check_stop();
                    return Ok(false);
                }
                next => next?,
            };
            match next {
                None => return Ok(true),
                Some((failed, Found::Line(line))) => {
                    let mut batch = Batch::single(&line);
                    batch.set_outputs(run.runner.outputs.len());
                    exec.submit(batch);
                    self.in_flight.push_back((failed, None));
                }
                Some((failed, Found::TooLong(long))) => {
                    // Still over the limit: failed again, without a run.
                    let again = failed.failed_again(0, long.message());
                    self.in_flight
                        .push_back((failed, Some(Retried::Failed(again))));
                    self.record_ready(run)?;
                    if run.stopping() {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    fn settle(&mut self, run: &mut RunState<'_, '_>, result: Batch) -> Result<()> {
        let first = result.first();
        let Some((before, retried)) = self
            .in_flight
            .iter_mut()
            .find(|(failed, retried)| failed.line() == first && retried.is_none())
        else {
            return Ok(());
        };
        let mut result = result;
        *retried = match result.outcome() {
            Outcome::Done => Some(Retried::Done(result)),
            Outcome::Failed { attempts, error } => {
                Some(Retried::Failed(before.failed_again(attempts, error)))
            }
            Outcome::Abandoned => {
                // The lines after it are not recorded either: they are
                // redone by the next retry.
                self.abandoned = true;
                return Ok(());
            }
        };
        self.record_ready(run)
    }

    fn all_settled(&self) -> bool {
        !self.abandoned
    }
}

/// Where the lines of a retry-failed run come from.
pub(super) enum FailedSource<'a, S, R> {
    /// A seekable input: each failed line is read at its offset.
    Seek {
        reader: &'a mut S,
        lines: FailedLines,
        buf: Vec<u8>,
        /// Longer lines are checked by streaming over them, not read.
        limit: usize,
    },
    /// A stream: scanned for the failed lines' numbers.
    /// The failed lines are listed in line order (see
    /// `Checkpoint::prepare_retry`).
    Scan {
        lines: LineReader<R>,
        failed: FailedLines,
    },
}

impl<S: BufRead + Seek, R: BufRead> FailedSource<'_, S, R> {
    pub(super) fn next_line(&mut self) -> Result<Option<(FailedLine, Found<'_>)>> {
        match self {
            FailedSource::Seek {
                reader,
                lines,
                buf,
                limit,
            } => {
                let Some(failed) = lines.next().transpose()? else {
                    return Ok(None);
                };
                if failed.len() > *limit as u64 {
                    let long = failed.scan_long(*reader, *limit)?;
                    return Ok(Some((failed, Found::TooLong(long))));
                }
                let line = failed.read_from(*reader, buf)?;
                Ok(Some((failed, Found::Line(line))))
            }
            FailedSource::Scan { lines, failed } => {
                let Some(wanted) = failed.next().transpose()? else {
                    return Ok(None);
                };
                while lines.lines_before() + 1 < wanted.line() {
                    if lines.next_item()?.is_none() {
                        return Err(wanted.missing());
                    }
                }
                match lines.next_item()? {
                    None => Err(wanted.missing()),
                    Some(Next::Line(line)) => {
                        wanted.check(&line)?;
                        Ok(Some((wanted, Found::Line(line))))
                    }
                    Some(Next::TooLong(long)) => {
                        wanted.check_long(&long)?;
                        Ok(Some((wanted, Found::TooLong(long))))
                    }
                }
            }
        }
    }

    /// Whether the input goes on after `position`: lines a retry does not
    /// run, which a run without `retry_failed` goes through. A file is
    /// looked at after the position (a newline that only ends its last
    /// line is not more input); a stream, once the failed lines are read,
    /// is read on to the position and one line after.
    pub(super) fn input_after(&mut self, position: Position) -> Result<bool> {
        match self {
            FailedSource::Seek { reader, .. } => {
                let err = |err| Error::io(None, "reading the input after the position", err);
                let from = position.offset().saturating_sub(1);
                reader.seek(SeekFrom::Start(from)).map_err(err)?;
                // The byte before the position (if any) and two after.
                let skip = usize::from(position.offset() > 0);
                let mut bytes = Vec::with_capacity(3);
                (&mut **reader)
                    .take(2 + skip as u64)
                    .read_to_end(&mut bytes)
                    .map_err(err)?;
                let before = bytes.first().filter(|_| skip == 1);
                let after = bytes.get(skip..).unwrap_or_default();
                // Only the newline of a last line that had none.
                let ends_last_line = after == b"\n" && before.is_some_and(|&byte| byte != b'\n');
                Ok(!after.is_empty() && !ends_last_line)
            }
            FailedSource::Scan { lines, .. } => {
                if lines.lines_before() > position.line() {
                    // Failed lines beyond the position were read.
                    return Ok(true);
                }
                while lines.lines_before() < position.line() {
                    if lines.next_item()?.is_none() {
                        return Ok(false);
                    }
                }
                Ok(lines.next_item()?.is_some())
            }
        }
    }
}

/// A failed line found again for a retry-failed run.
pub(super) enum Found<'a> {
    Line(Line<'a>),
    /// Over the length limit: not read, not run.
    TooLong(LongLine),
}

/// What a run does with a line it read (see [`RunState::triage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Triage {
    /// Another shard's: it passes, finished as far as this run goes.
    NotOwned,
    /// Done or failed by an earlier run: skipped.
    Recorded,
    /// To run.
    Run,
}

/// Counters and the checkpoint of one run.
pub(super) struct RunState<'r, 'c> {
    pub(super) runner: &'r Runner,
    pub(super) checkpoint: &'c mut Checkpoint,
    pub(super) shared: Arc<Shared>,
    pub(super) started: Instant,
    pub(super) resumed_at: Position,
    pub(super) done: u64,
    pub(super) skipped: u64,
    pub(super) failed: u64,
    pub(super) stopped: bool,
    pub(super) halted: bool,
    /// Every line was dealt with: the run did not stop early.
    pub(super) reached_end: bool,
    /// A retry-failed run found input after the position, which no run
    /// has read (an earlier run stopped before the end).
    pub(super) input_left: bool,
    pub(super) last_synced: Position,
    /// See [`triage`](RunState::triage).
    pub(super) last_recorded: u64,
    pub(super) syncs: u64,
}

impl<'r, 'c> RunState<'r, 'c> {
    pub(super) fn new(
        runner: &'r Runner,
        checkpoint: &'c mut Checkpoint,
        started: Instant,
        input: Option<&Path>,
    ) -> Self {
        let last_synced = checkpoint.durable_position();
        // Lines at or below this one may be recorded as done or failed
        // beyond the resume point; past it, none is.
        let last_recorded = checkpoint.last_recorded_line();
        let resumed_at = checkpoint.position();
        RunState {
            shared: Arc::new(Shared {
                observer: runner.observer.clone(),
                user_stop: runner.stop.clone(),
                run_stop: runner.stop.child(),
                retry: runner.retry.clone(),
                retried: AtomicU64::new(0),
                input: input.map(Arc::from),
                halt_after: runner.halt_after,
                failures: AtomicU64::new(0),
                halt_stop: runner.halt_fires_stop.then(|| runner.stop.clone()),
            }),
            runner,
            checkpoint,
            started,
            resumed_at,
            done: 0,
            skipped: 0,
            failed: 0,
            stopped: false,
            halted: false,
            reached_end: false,
            input_left: false,
            last_synced,
            last_recorded,
            syncs: 0,
        }
    }

    pub(super) fn emit(&self, event: &Event<'_>) {
        self.shared.emit(event);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopped || self.halted
    }

    /// Passes the user's stop on to the workers.
    pub(super) fn check_stop(&mut self) {
        if !self.stopped && self.shared.user_stop.is_stopped() {
            self.stopped = true;
            self.shared.run_stop.stop();
        }
    }

    /// A line is finished: move the watermark, or record the line as done
    /// beyond it (`record_beyond`: lines skipped, failed or not in the shard
    /// are known without a `done` record).
    /// What the run does with a line it read, the one rule for every way
    /// of driving it: a line of another shard passes, a line an earlier run
    /// recorded as done or failed beyond the resume point is skipped (after
    /// checking it is the same line), any other runs.
    #[inline(always)]
    pub(super) fn triage(&mut self, line: &Line<'_>) -> Result<Triage> {
        let number = line.number();
        if !self.runner.in_shard(number) {
            return Ok(Triage::NotOwned);
        }
        if number <= self.last_recorded {
            return self.triage_recorded(line);
        }
        Ok(Triage::Run)
    }

    /// The rest of [`triage`](RunState::triage), for a line an earlier run
    /// may have recorded: out of line, as only restarted runs get here.
    #[cold]
    #[inline(never)]
    fn triage_recorded(&mut self, line: &Line<'_>) -> Result<Triage> {
        if !is_recorded(self.checkpoint, line)? {
            return Ok(Triage::Run);
        }
        self.skipped += 1;
        self.emit(&Event::Skipped {
            line: line.number(),
            end_offset: line.offset() + line.raw().len() as u64,
        });
        Ok(Triage::Recorded)
    }

    #[inline(always)]
    pub(super) fn note_done(&mut self, line: u64, end_offset: u64) {
        self.done += 1;
        if self.shared.observer.is_some() {
            self.emit(&Event::Done { line, end_offset });
        }
    }

    /// The done lines of a batch back from a worker.
    fn note_batch_done(&mut self, batch: &Batch) {
        if self.shared.observer.is_none() {
            self.done += batch.done_count() as u64;
            return;
        }
        for index in batch.done_lines() {
            let line = batch.line(index);
            self.note_done(line.number(), line.offset() + line.raw().len() as u64);
        }
    }

    pub(super) fn record_failure(&mut self, failed: FailedLine) -> Result<()> {
        self.failed += 1;
        self.emit(&Event::Failed {
            line: failed.line(),
            end_offset: failed.offset().saturating_add(failed.len()),
            attempts: failed.attempts(),
            error: failed.error(),
        });
        self.checkpoint.commit_failed(failed)?;
        if self
            .runner
            .halt_after
            .is_some_and(|limit| self.failed >= limit)
        {
            self.halted = true;
            self.shared.halt();
        }
        Ok(())
    }

    #[inline]
    pub(super) fn note_sync(&mut self) {
        let syncs = self.checkpoint.sync_count();
        if syncs != self.syncs {
            self.syncs = syncs;
            let durable = self.checkpoint.durable_position();
            if durable != self.last_synced {
                self.last_synced = durable;
                self.emit(&Event::Synced { position: durable });
            }
        }
    }

    pub(super) fn finish_run(mut self) -> Result<Report> {
        self.checkpoint.sync()?;
        self.checkpoint.close_outputs()?;
        self.note_sync();
        // The workers' count may apply the policy to a failure a retry
        // then leaves unrecorded (behind a line the stop abandoned).
        let halted = self.halted || self.shared.halt_applied();
        let stopped = !self.reached_end || halted;
        Ok(Report {
            done: self.done,
            skipped: self.skipped,
            resumed_at: self.resumed_at,
            failed: self.failed,
            retried: self.shared.retried.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
            stopped,
            halted,
            input_left: self.input_left,
            position: self.checkpoint.position(),
            failed_total: self.checkpoint.failed_count(),
            checkpoint: self.checkpoint.path().to_path_buf(),
        })
    }
}
