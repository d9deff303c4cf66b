//! Driving a run: the lines in order or through the window, retry-failed
//! runs, and the counters of one run.

use std::collections::VecDeque;
use std::io::{BufRead, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::failed::FailedLine;
use crate::line::{Line, LineReader, LongLine, Next, Paused};
use crate::position::Position;
use crate::progress::Event;
use crate::stop::StopToken;
use crate::task::Task;
use crate::window::{Window, finish_line};

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
    pub(super) fn drive<R: BufRead, T: Task>(
        &self,
        checkpoint: &mut Checkpoint,
        lines: LineReader<R>,
        resumed: Position,
        input: Option<(&Path, u64)>,
        task: &T,
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
        if self.workers == 1 {
            self.drive_in_order(&mut run, lines, task)?;
            return run.finish_run();
        }
        let mut source = WindowedLines {
            runner: self,
            lines,
            window: Window::new(resumed, self.window.max(self.workers)),
        };
        self.pump(&mut run, task, &mut source)?;
        run.finish_run()
    }

    /// One worker: each line runs on this thread as soon as it is read, and
    /// the checkpoint follows line by line, with no window to keep.
    pub(super) fn drive_in_order<R: BufRead, T: Task>(
        &self,
        run: &mut RunState<'_, '_>,
        mut lines: LineReader<R>,
        task: &T,
    ) -> Result<()> {
        let shared = Arc::clone(&run.shared);
        let stop = shared.user_stop.clone();
        loop {
            // Returns whether to go on with the next line.
            let mut one_line = |line: &Line<'_>| -> Result<bool> {
                if stop.is_stopped() {
                    run.stopped = true;
                    return Ok(false);
                }
                let number = line.number();
                if run.triage(line)? != Triage::Run {
                    run.checkpoint.commit_read_line(line)?;
                    return Ok(true);
                }
                match shared.attempt(task, line, &shared.user_stop) {
                    Outcome::Done => {
                        run.note_done(number, line.offset() + line.raw().len() as u64);
                        run.checkpoint.commit_read_line(line)?;
                    }
                    Outcome::Failed { attempts, error } => {
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
            match lines.for_each_line(&mut one_line)? {
                Paused::EndOfInput => {
                    run.reached_end = true;
                    return Ok(());
                }
                Paused::Asked => return Ok(()),
                Paused::TooLong(long) => {
                    if stop.is_stopped() {
                        run.stopped = true;
                        return Ok(());
                    }
                    self.long_line(run, &long)?;
                    run.checkpoint.commit(long.end_position())?;
                    if run.halted {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The retry-failed run: exactly the lines recorded as failed.
    pub(super) fn drive_failed<S: BufRead + Seek, R: BufRead, T: Task>(
        &self,
        checkpoint: &mut Checkpoint,
        source: FailedSource<'_, S, R>,
        input: Option<(&Path, u64)>,
        task: &T,
    ) -> Result<Report> {
        let started = Instant::now();
        let input_len = input.map(|(_, len)| len);
        let mut run = RunState::new(self, checkpoint, started, input.map(|(path, _)| path));
        run.emit(&Event::Begin {
            input_len,
            resumed_at: run.checkpoint.position(),
            failed_before: run.checkpoint.failed_count(),
        });
        let mut source = FailedLines {
            source,
            in_flight: std::collections::HashMap::new(),
            abandoned: false,
        };
        self.pump(&mut run, task, &mut source)?;
        run.finish_run()
    }
}

/// Lines for a pool of workers, and what to do with their results.
pub(super) trait Feed {
    /// Submits lines while the executor takes them. Returns whether there
    /// are no more.
    fn feed<T: Task>(
        &mut self,
        run: &mut RunState<'_, '_>,
        exec: &mut Exec<'_>,
        task: &T,
    ) -> Result<bool>;

    /// Records the result of one line.
    fn settle(&mut self, run: &mut RunState<'_, '_>, result: JobResult) -> Result<()>;

    /// Whether every line fed was settled as done or failed (none was
    /// abandoned by a stop).
    fn all_settled(&self) -> bool;
}

impl Runner {
    /// Feeds lines to the workers and settles their results until the
    /// lines run out or the run stops, then waits for the lines in flight.
    pub(super) fn pump<T: Task, F: Feed>(
        &self,
        run: &mut RunState<'_, '_>,
        task: &T,
        source: &mut F,
    ) -> Result<()> {
        let mut exhausted = false;
        std::thread::scope(|scope| -> Result<()> {
            let mut exec = Exec::new(self, task, &run.shared, scope);
            loop {
                run.check_stop();
                if !run.stopping() && !exhausted {
                    exhausted = source.feed(run, &mut exec, task)?;
                }
                if exec.in_flight() == 0 && (exhausted || run.stopping()) {
                    run.reached_end = exhausted && source.all_settled();
                    return Ok(());
                }
                match exec.next_result(TICK) {
                    Some(result) => source.settle(run, result)?,
                    None => run.checkpoint.flush_if_due()?,
                }
                run.note_sync();
            }
        })
    }
}

/// Every line after the resume point, through the window.
pub(super) struct WindowedLines<'r, R> {
    pub(super) runner: &'r Runner,
    pub(super) lines: LineReader<R>,
    pub(super) window: Window,
}

impl<R: BufRead> Feed for WindowedLines<'_, R> {
    fn feed<T: Task>(
        &mut self,
        run: &mut RunState<'_, '_>,
        exec: &mut Exec<'_>,
        task: &T,
    ) -> Result<bool> {
        while self.window.has_room() && exec.can_submit() {
            let line = match self.lines.next_item()? {
                Some(Next::Line(line)) => line,
                Some(Next::TooLong(long)) => {
                    let end = long.end_position();
                    self.window.start(end);
                    self.runner.long_line(run, &long)?;
                    run.finish(&mut self.window, end, false)?;
                    if run.stopping() {
                        return Ok(false);
                    }
                    continue;
                }
                None => return Ok(true),
            };
            let end = line.end_position();
            self.window.start(end);
            if run.triage(&line)? == Triage::Run {
                exec.submit(&line, task, &run.shared);
            } else {
                run.finish(&mut self.window, end, false)?;
            }
        }
        Ok(false)
    }

    fn settle(&mut self, run: &mut RunState<'_, '_>, result: JobResult) -> Result<()> {
        let Some(end) = self.window.end_of(result.line) else {
            return Ok(());
        };
        match result.outcome {
            Outcome::Done => {
                run.note_done(result.line, end.offset());
                run.finish(&mut self.window, end, true)
            }
            Outcome::Failed { attempts, error } => {
                run.record_failure(FailedLine::ending_at(end, attempts, error))?;
                run.finish(&mut self.window, end, false)
            }
            Outcome::Abandoned => Ok(()),
        }
    }

    fn all_settled(&self) -> bool {
        self.window.is_empty()
    }
}

/// The lines recorded as failed, for a retry-failed run.
pub(super) struct FailedLines<'a, S, R> {
    pub(super) source: FailedSource<'a, S, R>,
    pub(super) in_flight: std::collections::HashMap<u64, FailedLine>,
    pub(super) abandoned: bool,
}

impl<S: BufRead + Seek, R: BufRead> Feed for FailedLines<'_, S, R> {
    fn feed<T: Task>(
        &mut self,
        run: &mut RunState<'_, '_>,
        exec: &mut Exec<'_>,
        task: &T,
    ) -> Result<bool> {
        while exec.can_submit() {
            match self.source.next_line()? {
                None => return Ok(true),
                Some((failed, Found::Line(line))) => {
                    exec.submit(&line, task, &run.shared);
                    self.in_flight.insert(failed.line(), failed);
                }
                Some((failed, Found::TooLong(long))) => {
                    // Still over the limit: failed again, without a run.
                    run.record_failure(failed.failed_again(0, long.message()))?;
                    if run.stopping() {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    fn settle(&mut self, run: &mut RunState<'_, '_>, result: JobResult) -> Result<()> {
        let Some(before) = self.in_flight.remove(&result.line) else {
            return Ok(());
        };
        match result.outcome {
            Outcome::Done => {
                run.note_done(result.line, before.offset().saturating_add(before.len()));
                run.checkpoint.commit_resolved(result.line)
            }
            Outcome::Failed { attempts, error } => {
                run.record_failure(before.failed_again(attempts, error))
            }
            Outcome::Abandoned => {
                self.abandoned = true;
                Ok(())
            }
        }
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
        lines: VecDeque<FailedLine>,
        buf: Vec<u8>,
        /// Longer lines are checked by streaming over them, not read.
        limit: usize,
    },
    /// A stream: scanned for the failed lines' numbers.
    Scan {
        lines: LineReader<R>,
        failed: VecDeque<FailedLine>,
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
                let Some(failed) = lines.pop_front() else {
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
                let Some(wanted) = failed.pop_front() else {
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
                run_stop: StopToken::new(),
                retry: runner.retry.clone(),
                retried: AtomicU64::new(0),
                input: input.map(Path::to_path_buf),
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

    pub(super) fn finish(
        &mut self,
        window: &mut Window,
        end: Position,
        record_beyond: bool,
    ) -> Result<()> {
        finish_line(window, self.checkpoint, end, record_beyond).map(drop)
    }

    #[inline(always)]
    pub(super) fn note_done(&mut self, line: u64, end_offset: u64) {
        self.done += 1;
        if self.shared.observer.is_some() {
            self.emit(&Event::Done { line, end_offset });
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
            self.shared.run_stop.stop();
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
        self.note_sync();
        let stopped = !self.reached_end;
        Ok(Report {
            done: self.done,
            skipped: self.skipped,
            resumed_at: self.resumed_at,
            failed: self.failed,
            retried: self.shared.retried.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
            stopped,
            halted: self.halted,
            position: self.checkpoint.position(),
            failed_total: self.checkpoint.failed_count(),
            checkpoint: self.checkpoint.path().to_path_buf(),
        })
    }
}
