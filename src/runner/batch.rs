//! Lines handed to the workers in batches: a run of consecutive lines goes
//! to one worker and comes back as one result, so a cheap task pays one
//! hand-off between threads per batch instead of one per line.
//!
//! A batch is sized from the measured time of the task (and of reading the
//! lines), so that it holds about [`BATCH_WORK`] of work: a task of 100 µs
//! or more gets batches of one line, as if there were no batching, and what
//! a kill repeats stays small in time whatever the task costs.

use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::line::Line;
use crate::out::Out;
use crate::position::Position;
use crate::task::Task;

use super::pool::{LineTask, Outcome, Shared, SyncTask, now, panic_message};

/// The work a batch is sized to hold, in the wall time of its tasks.
pub(super) const BATCH_WORK: Duration = Duration::from_micros(250);

/// A task cheaper than this a line runs on the runner's thread (see
/// [`Sizer::inline`]).
const INLINE_TASK: Duration = Duration::from_nanos(30);

/// How long the lines of a batch finished beyond the watermark wait for the
/// lines before them to finish before they are recorded as done one by one.
/// Batches of cheap lines usually come back within [`BATCH_WORK`] of each
/// other, so most never need their own records.
pub(super) const HOLD: Duration = Duration::from_millis(1);

/// A batch that ran this long is a slow task's (see [`Batch::is_slow`]).
const SLOW_BATCH: Duration = Duration::from_millis(1);

/// A batch running longer than this hands back its finished lines before
/// its next line.
pub(super) const SPLIT_AFTER: Duration = Duration::from_micros(500);

/// Lines that take this long or more are each timed by their worker (see
/// [`Batch::run`]); cheaper ones, every eighth.
const TIMED_LINE: Duration = Duration::from_micros(10);

/// A batch is closed once its bytes reach this, whatever its length.
pub(super) const MAX_BATCH_BYTES: usize = 256 << 10;

/// The bytes of held batches kept at most; past it, a batch finished beyond
/// the watermark is recorded at once.
const MAX_HELD_BYTES: usize = 4 << 20;

/// Consecutive lines for one worker and, once run, what became of them.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The number and offset of its first line.
    first: u64,
    offset: u64,
    /// The lines' bytes, back to back.
    bytes: Vec<u8>,
    /// Where each line ends in `bytes`.
    ends: Vec<usize>,
    /// The lines not to run (another shard's, or recorded by an earlier
    /// run), by index, ascending.
    pass: Vec<usize>,
    /// Lines failed for good, by index, ascending: attempts and error.
    failed: Vec<(usize, u32, String)>,
    /// The first line a stop abandoned: it and every line after it are
    /// unfinished.
    stopped_at: Option<usize>,
    /// Lines whose task ran, and the wall time that took.
    ran: usize,
    busy: Duration,
    /// Handed back early: the rest of the batch runs on.
    continues: bool,
    /// A line of it failed an attempt (and may have waited out a backoff).
    troubled: bool,
    /// Handed to a worker with more than one line: its result may come
    /// back without waking the runner (see `pool.rs`).
    lazy: bool,
    /// The results of its done lines, in order, for the run's outputs.
    out: Out,
}

impl Batch {
    /// An empty batch starting at line `first`, at byte `offset`; it reuses
    /// this one's buffers.
    pub(super) fn reset(&mut self, first: u64, offset: u64) {
        self.first = first;
        self.offset = offset;
        self.bytes.clear();
        self.ends.clear();
        self.pass.clear();
        self.failed.clear();
        self.stopped_at = None;
        self.ran = 0;
        self.busy = Duration::ZERO;
        self.continues = false;
        self.troubled = false;
        self.lazy = false;
        self.out.clear();
    }

    /// Gathers results for `outputs` outputs.
    pub(super) fn set_outputs(&mut self, outputs: usize) {
        if outputs > 0 {
            self.out.set_count(outputs);
        }
    }

    /// The results of its done lines, by output.
    pub(super) fn results(&self) -> &[Vec<u8>] {
        self.out.buffers()
    }

    /// A batch of the one line `line`.
    pub(super) fn single(line: &Line<'_>) -> Batch {
        let mut batch = Batch::default();
        batch.reset(line.number(), line.offset());
        batch.push(line, true);
        batch
    }

    pub(super) fn first(&self) -> u64 {
        self.first
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(super) fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Adds the next line; `run`: whether its task is to run.
    #[inline]
    pub(super) fn push(&mut self, line: &Line<'_>, run: bool) {
        debug_assert_eq!(line.number(), self.first + self.ends.len() as u64);
        if !run {
            self.pass.push(self.ends.len());
        }
        self.bytes.extend_from_slice(line.raw());
        self.ends.push(self.bytes.len());
    }

    /// Whether no line of it is to run.
    pub(super) fn runs_nothing(&self) -> bool {
        self.pass.len() == self.ends.len()
    }

    /// Line `index` of the batch.
    #[inline]
    pub(super) fn line(&self, index: usize) -> Line<'_> {
        line_at(&self.bytes, &self.ends, self.first, self.offset, index)
    }

    /// Lines `[0, finished())` are finished: done, failed or passed.
    pub(super) fn finished(&self) -> usize {
        self.stopped_at.unwrap_or(self.ends.len())
    }

    /// The position after its last finished line, if any.
    pub(super) fn finished_end(&self) -> Option<Position> {
        let last = self.finished().checked_sub(1)?;
        Some(self.line(last).end_position())
    }

    /// The lines that failed for good, by index: attempts and error.
    pub(super) fn failed(&self) -> &[(usize, u32, String)] {
        &self.failed
    }

    /// How many lines are done: finished, run, and not failed.
    pub(super) fn done_count(&self) -> usize {
        let finished = self.finished();
        let passed = self.pass.partition_point(|&index| index < finished);
        let failed = self.failed.partition_point(|&(index, ..)| index < finished);
        finished - passed - failed
    }

    /// The indices of the lines done: finished, run, and not failed.
    pub(super) fn done_lines(&self) -> DoneLines<'_> {
        DoneLines {
            next: 0,
            end: self.finished(),
            pass: &self.pass,
            failed: &self.failed,
        }
    }

    /// Lines whose task ran, and the time they took.
    pub(super) fn timing(&self) -> (usize, Duration) {
        (self.ran, self.busy)
    }

    /// Whether a line of it failed an attempt.
    pub(super) fn troubled(&self) -> bool {
        self.troubled
    }

    /// How a batch of one line ended, for a retry-failed run.
    pub(super) fn outcome(&mut self) -> Outcome {
        if self.stopped_at.is_some() {
            return Outcome::Abandoned;
        }
        match self.failed.pop() {
            Some((_, attempts, error)) => Outcome::Failed { attempts, error },
            None => Outcome::Done,
        }
    }

    /// [`run`](Batch::run) for a sync [`Task`], on this thread.
    #[inline]
    pub(super) fn run_sync<T: Task>(
        self,
        shared: &Shared,
        task: &T,
        hand_back: Option<&mut (dyn FnMut(Batch) + Send)>,
    ) -> Batch {
        now(self.run(shared, &SyncTask(task), hand_back))
    }

    /// Runs the task on each line to run, in order, until a stop, and
    /// returns the batch with what became of its lines. Backoff waits on
    /// the run's stop. A panic outside the task itself (an observer, an
    /// error's `Display`) fails its line, so the batch always comes back.
    ///
    /// With `hand_back` (on a worker), the lines finished so far go back
    /// early, and the rest runs as a batch of its own: before a line, once
    /// the batch has run [`SPLIT_AFTER`] (lines of very different costs: a
    /// slow one must not keep the quick ones before it unrecorded), and
    /// before the retries of a failed line (their backoff may be long).
    /// Then the last part is returned.
    pub(super) async fn run<L: LineTask>(
        mut self,
        shared: &Shared,
        task: &L,
        mut hand_back: Option<&mut (dyn FnMut(Batch) + Send)>,
    ) -> Batch {
        let mut started = Instant::now();
        let (mut index, mut passed, mut ran) = (0, 0, 0);
        // The lines run when the clock is next read.
        let mut check_at = 1;
        while index < self.ends.len() {
            if self.pass.get(passed) == Some(&index) {
                passed += 1;
                index += 1;
                continue;
            }
            if shared.stopping() {
                self.stopped_at = Some(index);
                break;
            }
            // A worker reads the clock before a line: before every one once
            // lines take TIMED_LINE or more, before every eighth while they
            // are cheaper (a clock read costs a few percent of a microsecond).
            if ran >= check_at {
                if let Some(hand_back) = hand_back.as_deref_mut() {
                    let elapsed = started.elapsed();
                    if elapsed >= SPLIT_AFTER {
                        self = self.hand_back_before(index, ran, started, hand_back);
                        (index, passed, ran, started, check_at) = (0, 0, 0, Instant::now(), 1);
                        continue;
                    }
                    let cheap = elapsed < TIMED_LINE.saturating_mul(ran as u32);
                    check_at = ran + if cheap { 8 } else { 1 };
                }
            }
            let started_line = {
                let line = line_at(&self.bytes, &self.ends, self.first, self.offset, index);
                let line = shared.named(&line);
                self.out.begin();
                let out = &mut self.out;
                // An observer's panic fails the line as a task's would.
                guard(|| shared.started(&line)).map(|()| task.start(&line, out))
            };
            let first = match started_line {
                // A sync task's attempt is over when it starts.
                Ok(attempt) => match task.ready(attempt) {
                    Ok(result) => result,
                    Err(attempt) => {
                        let mut attempt = pin!(task.finish(attempt));
                        match poll_once(attempt.as_mut()).await {
                            Poll::Ready(result) => result,
                            Poll::Pending => {
                                // The line waits (an async task's I/O): the
                                // lines finished before it go back now rather
                                // than wait with it.
                                if index > 0 {
                                    if let Some(hand_back) = hand_back.as_deref_mut() {
                                        self =
                                            self.hand_back_before(index, ran, started, hand_back);
                                        (index, passed, ran, started, check_at) =
                                            (0, 0, 0, Instant::now(), 1);
                                    }
                                }
                                attempt.await
                            }
                        }
                    }
                },
                Err(panic) => Err(panic),
            };
            let outcome = match first {
                Ok(Ok(())) => Outcome::Done,
                first => {
                    self.troubled = true;
                    // Before the lines before it go back with the results.
                    self.out.discard();
                    // A line that will be tried again after a backoff: the
                    // lines before it go back now rather than wait with it.
                    // One that fails for good at once (a permanent error,
                    // no retries) keeps the batch whole: splitting at every
                    // such line would copy the rest of the batch each time.
                    // (A panic in `is_retryable` says no: the line fails
                    // in `after_failure`, which guards it too.)
                    if index > 0 && guard(|| shared.may_retry(task, &first)).unwrap_or(false) {
                        if let Some(hand_back) = hand_back.as_deref_mut() {
                            self = self.hand_back_before(index, ran, started, hand_back);
                            (index, passed, ran, started) = (0, 0, 0, Instant::now());
                        }
                    }
                    let line = line_at(&self.bytes, &self.ends, self.first, self.offset, index);
                    let line = shared.named(&line);
                    Guarded::new(shared.after_failure(task, &line, first, &mut self.out))
                        .await
                        .unwrap_or_else(|panic| {
                            self.out.discard();
                            Outcome::Failed {
                                attempts: 1,
                                error: panic_message(panic.as_ref()),
                            }
                        })
                }
            };
            ran += 1;
            match outcome {
                Outcome::Done => {}
                Outcome::Failed { attempts, error } => {
                    self.failed.push((index, attempts, error));
                    shared.note_failure();
                }
                Outcome::Abandoned => {
                    self.stopped_at = Some(index);
                    break;
                }
            }
            index += 1;
        }
        self.ran = ran;
        self.busy = started.elapsed();
        self
    }

    /// Hands back lines `[0, at)` (run since `started`, `ran` of them by the
    /// task) and returns the rest.
    fn hand_back_before(
        mut self,
        at: usize,
        ran: usize,
        started: Instant,
        hand_back: &mut (dyn FnMut(Batch) + Send),
    ) -> Batch {
        let cut = self.ends[at - 1];
        let split = self.pass.partition_point(|&index| index < at);
        let rest = Batch {
            first: self.first + at as u64,
            offset: self.offset + cut as u64,
            bytes: self.bytes[cut..].to_vec(),
            ends: self.ends[at..].iter().map(|end| end - cut).collect(),
            pass: self.pass[split..].iter().map(|index| index - at).collect(),
            lazy: self.lazy,
            out: self.out.fresh(),
            ..Batch::default()
        };
        self.bytes.truncate(cut);
        self.ends.truncate(at);
        self.pass.truncate(split);
        // A part much smaller than its batch (handed back before a line
        // that waits for a retry) keeps no room for the lines it gave up:
        // a window of such parts would each hold a whole batch's capacity.
        // A part cut by time holds most of its batch and keeps its room for
        // its next use.
        if self.bytes.capacity() > 4 * cut.max(4096) {
            self.bytes.shrink_to_fit();
            self.ends.shrink_to_fit();
            self.pass.shrink_to_fit();
        }
        self.ran = ran;
        self.busy = started.elapsed();
        self.continues = true;
        hand_back(self);
        rest
    }

    /// Whether this is a slow task's batch, whose result the runner should
    /// take at once: one line (a task of [`BATCH_WORK`] or more), or a run
    /// of [`SLOW_BATCH`] or more.
    pub(super) fn is_slow(&self) -> bool {
        self.len() == 1 || self.busy >= SLOW_BATCH
    }

    /// Marks it handed to a worker; returns whether its result may come
    /// back without waking the runner.
    pub(super) fn mark_lazy(&mut self) -> bool {
        self.lazy = self.len() > 1;
        self.lazy
    }

    /// See [`mark_lazy`](Batch::mark_lazy).
    pub(super) fn is_lazy(&self) -> bool {
        self.lazy
    }

    /// Whether the rest of this batch runs on as a batch of its own.
    pub(super) fn continues(&self) -> bool {
        self.continues
    }
}

/// Line `index` of a batch's `bytes` and `ends` (borrowing no other field
/// of the batch, so its results can be written meanwhile).
#[inline]
fn line_at<'a>(bytes: &'a [u8], ends: &[usize], first: u64, offset: u64, index: usize) -> Line<'a> {
    let start = index.checked_sub(1).map_or(0, |before| ends[before]);
    Line::new(
        &bytes[start..ends[index]],
        first + index as u64,
        offset + start as u64,
    )
}

/// Polls `future` once: its output, or `Pending` with the future left to
/// await.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Runs `f`, catching a panic.
pub(super) fn guard<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// A future whose panics are caught: on the cold path of a failed line
/// only, hence the box (pinning it in place takes `unsafe` or a crate).
struct Guarded<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Guarded<F> {
    fn new(future: F) -> Self {
        Guarded(Box::pin(future))
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match guard(|| inner.poll(cx)) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The indices of the done lines of a batch.
pub(super) struct DoneLines<'a> {
    next: usize,
    end: usize,
    pass: &'a [usize],
    failed: &'a [(usize, u32, String)],
}

impl Iterator for DoneLines<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.next < self.end {
            let index = self.next;
            self.next += 1;
            if let Some((&skip, rest)) = self.pass.split_first() {
                if skip == index {
                    self.pass = rest;
                    continue;
                }
            }
            if let Some(((skip, ..), rest)) = self.failed.split_first() {
                if *skip == index {
                    self.failed = rest;
                    continue;
                }
            }
            return Some(index);
        }
        None
    }
}

/// Records every done line of `batch` as done beyond the watermark, its
/// results appended to the outputs first.
pub(super) fn record_done(checkpoint: &mut Checkpoint, batch: &Batch) -> Result<()> {
    checkpoint.append_results(batch.results())?;
    checkpoint.commit_done_lines(
        batch
            .done_lines()
            .map(|index| batch.line(index).end_position()),
    )
}

/// How many lines the next batch holds, from the measured cost of a line:
/// its task's wall time, or the time it took to read it when reading is
/// slower (a stream whose lines come slowly must not have lines wait in a
/// batch for the ones after them).
#[derive(Debug)]
pub(super) struct Sizer {
    /// Nanoseconds a line, averaged: of its task, of its reading.
    task: Option<f64>,
    read: Option<f64>,
    len: usize,
    max: usize,
    /// No line has failed an attempt yet.
    inline_ok: bool,
}

impl Sizer {
    /// Batches of one line until a result tells what a line costs, and of
    /// at most `max` lines.
    pub(super) fn new(max: usize) -> Sizer {
        Sizer {
            task: None,
            read: None,
            len: 1,
            max: max.max(1),
            inline_ok: true,
        }
    }

    /// The length of the next batch.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether the task is so cheap that handing its lines to a worker
    /// (a wake-up and two context switches a batch, shared by at most a
    /// few hundred lines) costs more than running them: a few tens of
    /// nanoseconds a line. The runner then runs them itself, in order, until
    /// a line fails an attempt (see [`failing`](Sizer::failing)).
    pub(super) fn inline(&self) -> bool {
        self.inline_ok
            && self
                .task
                .is_some_and(|task| task < INLINE_TASK.as_nanos() as f64)
    }

    /// A line failed an attempt: from now on no batch runs on the runner's
    /// thread, where a retry's backoff would hold up every line (the worker
    /// whose line waits holds up only its own batch).
    pub(super) fn failing(&mut self) {
        self.inline_ok = false;
    }

    /// A batch came back: `ran` lines run in `busy`.
    pub(super) fn ran(&mut self, ran: usize, busy: Duration) {
        if ran > 0 {
            average(&mut self.task, busy, ran);
            self.resize();
        }
    }

    /// A batch of `lines` lines was read in `took`.
    pub(super) fn read(&mut self, lines: usize, took: Duration) {
        if lines > 0 {
            average(&mut self.read, took, lines);
            self.resize();
        }
    }

    fn resize(&mut self) {
        let Some(task) = self.task else { return };
        let per_line = task.max(self.read.unwrap_or(0.0)).max(1.0);
        let fits = (BATCH_WORK.as_nanos() as f64 / per_line) as usize;
        // Grows by doubling at most, so one fast batch does not make the
        // next one huge; shrinks at once.
        self.len = fits.clamp(1, self.max).min(self.len.saturating_mul(2));
    }
}

/// An exponentially weighted average of nanoseconds a line (a quarter of
/// the weight to the new sample).
fn average(value: &mut Option<f64>, took: Duration, lines: usize) {
    let sample = took.as_nanos() as f64 / lines as f64;
    *value = Some(match *value {
        None => sample,
        Some(old) => old + (sample - old) / 4.0,
    });
}

/// Batches that finished beyond the watermark, their done lines not yet
/// recorded: most are passed by the watermark within [`HOLD`] and never
/// need a record; the others are recorded then.
#[derive(Debug, Default)]
pub(super) struct Held {
    batches: Vec<(Batch, Instant)>,
    bytes: usize,
    /// Results go to the outputs in input order: a held batch is never
    /// recorded beyond the watermark, its results wait for it.
    keep_order: bool,
}

impl Held {
    pub(super) fn new(keep_order: bool) -> Held {
        Held {
            keep_order,
            ..Held::default()
        }
    }

    /// Takes the batches the watermark reached, in input order: passed
    /// whole, or (a batch a stop cut short) past its finished lines, which
    /// are all that hold results.
    pub(super) fn take_passed(&mut self, watermark: u64) -> Vec<Batch> {
        let mut passed = Vec::new();
        let mut index = 0;
        while index < self.batches.len() {
            let batch = &self.batches[index].0;
            if batch.first <= watermark {
                let (batch, _) = self.batches.swap_remove(index);
                self.bytes -= batch.byte_len();
                passed.push(batch);
            } else {
                index += 1;
            }
        }
        passed.sort_by_key(|batch| batch.first);
        passed
    }

    /// Keeps `batch`, finished beyond the watermark, or records its done
    /// lines at once and gives it back: a batch of one line (a task slow
    /// enough that a record costs nothing next to it), or when holding it
    /// would pass the memory bound.
    pub(super) fn hold_or_record(
        &mut self,
        checkpoint: &mut Checkpoint,
        batch: Batch,
        now: Instant,
    ) -> Result<Option<Batch>> {
        if self.keep_order || batch.len() > 1 && self.bytes + batch.byte_len() <= MAX_HELD_BYTES {
            self.bytes += batch.byte_len();
            self.batches.push((batch, now));
            return Ok(None);
        }
        record_done(checkpoint, &batch)?;
        Ok(Some(batch))
    }

    /// When the oldest held batch is to be recorded.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.keep_order {
            return None;
        }
        self.batches.iter().map(|(_, since)| *since + HOLD).min()
    }

    /// Lets go of the batches the watermark passed, and records those held
    /// since `HOLD` before `now` (all of them with `None`, at the end of a
    /// run). The batches let go of are passed to `spare`.
    pub(super) fn release(
        &mut self,
        checkpoint: &mut Checkpoint,
        watermark: u64,
        now: Option<Instant>,
        spare: &mut Vec<Batch>,
    ) -> Result<()> {
        let mut index = 0;
        while index < self.batches.len() {
            let (batch, since) = &self.batches[index];
            let passed = batch.first + batch.len() as u64 - 1 <= watermark;
            // Kept order records nothing beyond the watermark, even at the
            // end: the lines are done again next time.
            let due = !self.keep_order && now.is_none_or(|now| now.duration_since(*since) >= HOLD);
            if !passed && !due {
                index += 1;
                continue;
            }
            if !passed {
                record_done(checkpoint, batch)?;
            }
            let (batch, _) = self.batches.swap_remove(index);
            self.bytes -= batch.byte_len();
            spare.push(batch);
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(first: u64, lines: &[&str], pass: &[usize]) -> Batch {
        let mut batch = Batch::default();
        let offset = 100;
        batch.reset(first, offset);
        let mut at = offset;
        for (index, text) in lines.iter().enumerate() {
            let line = Line::new(text.as_bytes(), first + index as u64, at);
            batch.push(&line, !pass.contains(&index));
            at += text.len() as u64;
        }
        batch
    }

    #[test]
    fn a_batch_gives_back_each_line_with_its_number_and_offset() {
        let batch = batch_of(7, &["a\n", "bb\n", "ccc\n"], &[]);
        let lines: Vec<_> = (0..batch.len())
            .map(|index| {
                let line = batch.line(index);
                (line.raw().to_vec(), line.number(), line.offset())
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                (b"a\n".to_vec(), 7, 100),
                (b"bb\n".to_vec(), 8, 102),
                (b"ccc\n".to_vec(), 9, 105)
            ]
        );
        assert_eq!(
            batch.finished_end(),
            Some(Line::new(b"ccc\n", 9, 105).end_position())
        );
    }

    #[test]
    fn done_lines_leave_out_passed_failed_and_abandoned_lines() {
        let mut batch = batch_of(1, &["a\n"; 8], &[1, 4]);
        batch.failed.push((2, 3, "no".into()));
        batch.failed.push((5, 1, "no".into()));
        assert_eq!(batch.done_lines().collect::<Vec<_>>(), vec![0, 3, 6, 7]);
        assert_eq!(batch.done_count(), 4);
        batch.stopped_at = Some(6);
        assert_eq!(batch.done_lines().collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(batch.done_count(), 2);
        assert_eq!(
            batch.finished_end(),
            Some(Line::new(b"a\n", 6, 110).end_position())
        );
        batch.stopped_at = Some(0);
        assert_eq!(batch.finished_end(), None);
        assert_eq!(batch.done_count(), 0);
    }

    #[test]
    fn a_batch_of_only_passed_lines_runs_nothing() {
        assert!(batch_of(1, &["a\n", "b\n"], &[0, 1]).runs_nothing());
        assert!(!batch_of(1, &["a\n", "b\n"], &[1]).runs_nothing());
    }

    #[test]
    fn batches_start_at_one_line_and_grow_by_doubling_to_a_batch_of_work() {
        let mut sizer = Sizer::new(1000);
        assert_eq!(sizer.len(), 1);
        assert!(!sizer.inline());
        // A task of 1 µs a line: 250 lines fit in a batch's work.
        let mut lens = Vec::new();
        for _ in 0..12 {
            let len = sizer.len();
            sizer.ran(len, Duration::from_micros(len as u64));
            lens.push(sizer.len());
        }
        assert_eq!(lens[..8], [2, 4, 8, 16, 32, 64, 128, 250]);
        assert_eq!(lens[11], 250);
        // The task slows down to 1 ms: one line at once.
        sizer.ran(1, Duration::from_millis(100));
        assert_eq!(sizer.len(), 1);
    }

    #[test]
    fn a_task_slower_than_a_batch_of_work_keeps_batches_of_one_line() {
        let mut sizer = Sizer::new(1000);
        for _ in 0..20 {
            sizer.ran(1, BATCH_WORK + Duration::from_micros(1));
            assert_eq!(sizer.len(), 1);
        }
    }

    #[test]
    fn slow_reading_shrinks_batches_and_the_largest_is_the_limit() {
        let mut sizer = Sizer::new(64);
        for _ in 0..20 {
            let len = sizer.len();
            sizer.ran(len, Duration::from_nanos(100 * len as u64));
        }
        assert_eq!(sizer.len(), 64);
        // Lines come 100 µs apart: two fit in a batch's work.
        for _ in 0..20 {
            sizer.read(1, Duration::from_micros(100));
        }
        assert_eq!(sizer.len(), 2);
    }

    #[test]
    fn only_a_task_cheaper_than_a_hand_over_runs_inline() {
        for (nanos, max, inline) in [(5, 256, true), (500, 256, false), (500, 1, false)] {
            let mut sizer = Sizer::new(max);
            for _ in 0..20 {
                let len = sizer.len();
                sizer.ran(len, Duration::from_nanos(nanos * len as u64));
            }
            assert_eq!(sizer.len(), max);
            // Whatever the largest batch: a small window with many workers
            // does not make a 500 ns task run inline.
            assert_eq!(
                sizer.inline(),
                inline,
                "{nanos} ns a line, batches of {max}"
            );
            sizer.failing();
            assert!(!sizer.inline(), "after a failure");
        }
    }

    #[test]
    fn handing_back_part_of_a_batch_leaves_the_rest_with_its_own_lines() {
        let mut batch = batch_of(10, &["a\n", "bb\n", "c\n", "dd\n", "e\n"], &[1, 3]);
        batch.failed.push((0, 2, "no".into()));
        let mut back = Vec::new();
        let rest = batch.hand_back_before(2, 1, Instant::now(), &mut |part| back.push(part));
        let [part] = &back[..] else {
            panic!("{back:?}")
        };
        assert!(part.continues() && !rest.continues());
        assert_eq!((part.first(), part.len(), part.failed().len()), (10, 2, 1));
        assert_eq!(part.done_count(), 0);
        assert_eq!(
            (rest.first(), rest.len(), rest.pass.clone()),
            (12, 3, vec![1])
        );
        let line = rest.line(1);
        assert_eq!(
            (line.raw(), line.number(), line.offset()),
            (&b"dd\n"[..], 13, 107)
        );
        assert_eq!(rest.line(2).offset(), 110);
    }
}
