//! The workers: one attempt of a task, its retries, and the pool that
//! runs them on threads (or on the calling thread with one worker).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::line::Line;
use crate::out::Out;
use crate::progress::{Event, Observer};
use crate::retry::RetryPolicy;
use crate::stop::StopToken;
use crate::task::{BoxError, Task, error_chain};

use super::batch::Batch;
use super::*;

/// What the workers share with the runner.
pub(super) struct Shared {
    pub(super) observer: Option<Arc<dyn Observer + Send>>,
    pub(super) user_stop: StopToken,
    /// Fires with the user's token (a child of it), and when the halt
    /// policy applies or the run ends: every backoff waits on it.
    pub(super) run_stop: StopToken,
    pub(super) retry: RetryPolicy,
    pub(super) retried: AtomicU64,
    /// [`Runner::halt_after_failures`], and the lines the workers failed so
    /// far: the worker that fails the last one stops the run at once,
    /// rather than the rest of its batch and the others failing too.
    pub(super) halt_after: Option<u64>,
    pub(super) failures: AtomicU64,
    /// Fired too when the halt policy applies: an async run's driver stop,
    /// which ends a wait for a stream's next line.
    pub(super) halt_stop: Option<StopToken>,
    /// The input file, named in the lines the task sees (and so in their
    /// errors), whichever way they reach it.
    pub(super) input: Option<Arc<Path>>,
}

impl Shared {
    /// `line`, naming the input file when there is one.
    pub(super) fn named<'a>(&'a self, line: &Line<'a>) -> Line<'a> {
        match (&self.input, line.path()) {
            (Some(input), None) => line.with_path(&**input),
            _ => *line,
        }
    }
}

impl Shared {
    pub(super) fn emit(&self, event: &Event<'_>) {
        if let Some(observer) = &self.observer {
            observer.on_event(event);
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.run_stop.is_stopped() || self.user_stop.is_stopped()
    }

    /// The halt policy applies: the run stops.
    pub(super) fn halt(&self) {
        self.run_stop.stop();
        if let Some(stop) = &self.halt_stop {
            stop.stop();
        }
    }

    /// Whether the workers' failures reached the halt policy's limit.
    pub(super) fn halt_applied(&self) -> bool {
        self.halt_after
            .is_some_and(|limit| self.failures.load(Ordering::Relaxed) >= limit)
    }

    /// A line failed for good on a worker.
    pub(super) fn note_failure(&self) {
        if let Some(limit) = self.halt_after {
            if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                self.halt();
            }
        }
    }

    /// Runs the task on a line until it succeeds, fails for good, or the
    /// run stops. Backoff waits on the run's stop, so a stop ends them at
    /// once.
    ///
    /// `OUTPUTS`: the run has outputs, and the task writes its results to
    /// `out`; without, it runs as [`Task::run`], and `out` is only lent to
    /// its retries.
    #[inline]
    pub(super) fn attempt<T: Task, const OUTPUTS: bool>(
        &self,
        task: &T,
        line: &Line<'_>,
        out: &mut Out,
    ) -> Outcome {
        self.started(line);
        let first = if OUTPUTS {
            out.begin();
            run_once(task, line, out)
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(line)))
        };
        match first {
            Ok(Ok(())) => Outcome::Done,
            first => {
                let outcome = self.after_failure_sync(task, line, first, out);
                if !OUTPUTS {
                    out.clear();
                }
                outcome
            }
        }
    }

    /// [`after_failure`](Shared::after_failure) for a sync task, out of
    /// line: the attributes of an `async fn` do not reach the future's
    /// body, which would otherwise be inlined into the hot loop.
    #[cold]
    #[inline(never)]
    pub(super) fn after_failure_sync<T: Task>(
        &self,
        task: &T,
        line: &Line<'_>,
        first: Attempted<T::Error>,
        out: &mut Out,
    ) -> Outcome {
        now(self.after_failure(&SyncTask(task), line, first, out))
    }

    /// A line's task starts.
    #[inline]
    pub(super) fn started(&self, line: &Line<'_>) {
        if self.observer.is_some() {
            self.emit(&Event::Started {
                line: line.number(),
                offset: line.offset(),
            });
        }
    }

    /// Whether a failed first attempt may be tried again, after a backoff.
    pub(super) fn may_retry<L: LineTask>(&self, task: &L, first: &Attempted<L::Error>) -> bool {
        match first {
            Ok(Err(err)) => self.retry.attempts() > 1 && task.is_retryable(err),
            _ => false,
        }
    }

    /// The retries after a failed first attempt: the one set of rules for
    /// sync and async tasks alike. What a failed attempt wrote to `out` is
    /// discarded (`out.begin()` was called before the first).
    pub(super) async fn after_failure<L: LineTask>(
        &self,
        task: &L,
        line: &Line<'_>,
        first: Attempted<L::Error>,
        out: &mut Out,
    ) -> Outcome {
        let mut result = first;
        let mut attempt = 1u32;
        loop {
            let (message, retryable, hint) = match result {
                Ok(Ok(())) => return Outcome::Done,
                Ok(Err(err)) => {
                    let retryable = task.is_retryable(&err);
                    let hint = task.retry_after(&err);
                    let boxed: BoxError = err.into();
                    (error_chain(&*boxed), retryable, hint)
                }
                Err(panic) => (panic_message(panic.as_ref()), false, None),
            };
            out.discard();
            if self.stopping() {
                return Outcome::Abandoned;
            }
            if !retryable || attempt >= self.retry.attempts() {
                return Outcome::Failed {
                    attempts: attempt,
                    error: message,
                };
            }
            let delay = self.retry.delay(attempt, hint);
            self.emit(&Event::Retrying {
                line: line.number(),
                attempt,
                delay,
                error: &message,
            });
            drop(message);
            if task.sleep(&self.run_stop, delay).await {
                return Outcome::Abandoned;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            result = task.finish(task.start(line, out)).await;
        }
    }
}

/// One attempt's result: the task's, or the panic it raised.
pub(super) type Attempted<E> = std::thread::Result<Result<(), E>>;

/// A task as the runner drives it, sync or async: one attempt at a line,
/// what its errors say, and how a backoff waits. The retry rules
/// ([`Shared::after_failure`]) and the running of a batch
/// ([`Batch::run`](super::batch::Batch::run)) are written once over it; a
/// sync task's futures are always ready (see [`now`]).
pub(super) trait LineTask: Sync {
    type Error: Into<BoxError>;

    /// An attempt under way, which no longer borrows its line: a sync
    /// task's result, an async task's future.
    type Started;

    /// The result of an attempt that is over when it starts (a sync
    /// task's); the attempt back otherwise.
    fn ready(
        &self,
        started: Self::Started,
    ) -> std::result::Result<Attempted<Self::Error>, Self::Started>;

    /// Starts an attempt of the task on `line`, a panic caught; a sync
    /// task writes its results to `out`.
    fn start(&self, line: &Line<'_>, out: &mut Out) -> Self::Started;

    /// The end of an attempt [`start`](LineTask::start)ed.
    fn finish(&self, started: Self::Started) -> impl Future<Output = Attempted<Self::Error>>;

    fn is_retryable(&self, error: &Self::Error) -> bool;

    fn retry_after(&self, error: &Self::Error) -> Option<Duration>;

    /// Waits `delay`, or until `stop` fires; returns whether it fired.
    fn sleep(&self, stop: &StopToken, delay: Duration) -> impl Future<Output = bool>;
}

/// A [`Task`], run on the thread that polls: its futures are ready at once.
pub(super) struct SyncTask<'t, T>(pub(super) &'t T);

impl<T: Task> LineTask for SyncTask<'_, T> {
    type Error = T::Error;
    type Started = Attempted<T::Error>;

    #[inline]
    fn ready(
        &self,
        started: Attempted<T::Error>,
    ) -> std::result::Result<Attempted<T::Error>, Attempted<T::Error>> {
        Ok(started)
    }

    #[inline]
    fn start(&self, line: &Line<'_>, out: &mut Out) -> Attempted<T::Error> {
        run_once(self.0, line, out)
    }

    #[inline]
    fn finish(&self, started: Attempted<T::Error>) -> impl Future<Output = Attempted<T::Error>> {
        std::future::ready(started)
    }

    fn is_retryable(&self, error: &T::Error) -> bool {
        self.0.is_retryable(error)
    }

    fn retry_after(&self, error: &T::Error) -> Option<Duration> {
        self.0.retry_after(error)
    }

    fn sleep(&self, stop: &StopToken, delay: Duration) -> impl Future<Output = bool> {
        std::future::ready(stop.sleep(delay))
    }
}

/// The output of a future that never waits: one a [`SyncTask`] drives,
/// whose every `await` is on a ready future.
#[inline]
pub(super) fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("a sync task's future waited"),
    }
}

/// Whether a line is recorded as done or failed beyond the resume point;
/// out of line, as only restarted runs with such records get here.
#[cold]
#[inline(never)]
pub(super) fn is_recorded(checkpoint: &Checkpoint, line: &Line<'_>) -> Result<bool> {
    checkpoint.is_recorded(line)
}

/// One attempt; a panic in the task is caught and becomes a failure.
#[inline]
pub(super) fn run_once<T: Task>(
    task: &T,
    line: &Line<'_>,
    out: &mut Out,
) -> std::thread::Result<Result<(), T::Error>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run_into(line, out)))
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string payload");
    format!("task panicked: {text}")
}

/// How a line's task ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Done,
    Failed {
        attempts: u32,
        error: String,
    },
    /// The run stopped before the line finished: leave it unrecorded.
    Abandoned,
}

/// The batches between the runner and its workers: those waiting for a
/// worker, and those back. One `Mutex`, two `Condvar`s, and the number of
/// idle workers and whether the runner waits, so that a hand-over costs no
/// system call while every thread is busy.
///
/// A worker wakes the runner for a result only when it matters soon: a
/// slow task's (see [`Batch::is_slow`]: its lines are recorded at once), or
/// when few batches are left queued (the workers are about to run dry). Cheap
/// batches come back in groups, one wake-up for several; they still count
/// as in flight until taken, which keeps the bound on what a kill repeats.
pub(super) struct Queue {
    state: Mutex<QueueState>,
    /// Workers wait here for a batch.
    work: Condvar,
    /// The runner waits here for results.
    results: Condvar,
    /// Fewer batches queued than this: the runner is woken.
    low: usize,
}

#[derive(Default)]
struct QueueState {
    queued: VecDeque<Batch>,
    back: Vec<Batch>,
    closed: bool,
    idle: usize,
    runner_waits: bool,
}

/// The longest a result handed back without a wake-up waits to be seen.
const LAZY_WAIT: Duration = Duration::from_millis(1);

impl Queue {
    fn new(workers: usize) -> Queue {
        Queue {
            state: Mutex::default(),
            work: Condvar::new(),
            results: Condvar::new(),
            low: (workers / 2).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, batch: Batch) {
        let mut state = self.lock();
        state.queued.push_back(batch);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.work.notify_one();
        }
    }

    /// Wakes the runner for what is back if it matters soon (see the type's
    /// docs): `urgent`, a slow task's result, or few batches left queued.
    fn wake_runner_if(&self, state: &QueueState, urgent: bool) {
        if state.runner_waits && (urgent || state.queued.len() < self.low) {
            self.results.notify_one();
        }
    }

    /// Hands back part of a batch whose rest runs on.
    fn hand_back(&self, batch: Batch) {
        let mut state = self.lock();
        let urgent = batch.is_slow();
        state.back.push(batch);
        self.wake_runner_if(&state, urgent);
    }

    /// Hands back `done` (if any) and takes the next batch, or `None` once
    /// the queue is closed.
    fn swap(&self, done: Option<Batch>) -> Option<Batch> {
        let mut state = self.lock();
        let urgent = done.as_ref().is_some_and(Batch::is_slow);
        state.back.extend(done);
        loop {
            if state.closed {
                return None;
            }
            if let Some(batch) = state.queued.pop_front() {
                self.wake_runner_if(&state, urgent);
                return Some(batch);
            }
            // About to wait: whatever is back must not wait with it.
            if state.runner_waits && !state.back.is_empty() {
                self.results.notify_one();
            }
            state.idle += 1;
            state = self
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
    }

    /// Moves the batches back into `into`, waiting up to `timeout` for one
    /// if there are none.
    fn take_back(&self, into: &mut VecDeque<Batch>, timeout: Duration) {
        let mut state = self.lock();
        if state.back.is_empty() {
            state.runner_waits = true;
            let (waited, _) = self
                .results
                .wait_timeout_while(state, timeout, |state| state.back.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            state = waited;
            state.runner_waits = false;
        }
        into.extend(state.back.drain(..));
    }

    /// Ends the workers: the batches still queued are dropped, their lines
    /// left unrecorded.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queued.clear();
        drop(state);
        self.work.notify_all();
    }
}

/// Where batches of lines run: the driving loop
/// ([`Runner::pump`](super::Runner::pump)) submits them and takes their
/// results, whoever runs them.
pub(super) trait Exec {
    /// Batches out: running, queued, or back but not yet handed out.
    fn in_flight(&self) -> usize;

    /// Whether another batch may go out now.
    fn can_submit(&self) -> bool;

    fn submit(&mut self, batch: Batch);

    /// The next result, waiting up to `timeout` for one.
    fn next_result(&mut self, timeout: Duration) -> Option<Batch>;

    /// Whether it can run a batch on the calling thread (see
    /// [`Sizer::inline`](super::batch::Sizer::inline)).
    fn runs_here(&self) -> bool;

    /// Runs `batch` on the calling thread; only if it
    /// [`runs_here`](Exec::runs_here).
    fn run_here(&mut self, batch: Batch) -> Batch;
}

/// Runs batches of a [`Task`]: on the calling thread with one worker, on a
/// pool of threads otherwise.
pub(super) enum Threads<'a, T> {
    Inline {
        task: &'a T,
        shared: Arc<Shared>,
        results: VecDeque<Batch>,
    },
    Pool {
        task: &'a T,
        shared: Arc<Shared>,
        queue: Arc<Queue>,
        /// Results taken from the queue, not yet handed out.
        results: VecDeque<Batch>,
        in_flight: usize,
        /// Batches out whose result may come back without a wake-up.
        lazy: usize,
        limit: usize,
    },
}

impl<'a, T: Task> Threads<'a, T> {
    pub(super) fn new<'scope>(
        runner: &Runner,
        task: &'a T,
        shared: &Arc<Shared>,
        scope: &'scope std::thread::Scope<'scope, 'a>,
    ) -> Threads<'a, T> {
        if runner.workers == 1 {
            return Threads::Inline {
                task,
                shared: Arc::clone(shared),
                results: VecDeque::new(),
            };
        }
        let queue = Arc::new(Queue::new(runner.workers));
        for _ in 0..runner.workers {
            let queue = Arc::clone(&queue);
            let shared = Arc::clone(shared);
            scope.spawn(move || {
                let mut done = None;
                while let Some(batch) = queue.swap(done.take()) {
                    let mut hand_back = |part: Batch| queue.hand_back(part);
                    done = Some(batch.run_sync(&shared, task, Some(&mut hand_back)));
                }
            });
        }
        Threads::Pool {
            task,
            shared: Arc::clone(shared),
            queue,
            results: VecDeque::new(),
            in_flight: 0,
            lazy: 0,
            // Two batches a worker keep every worker busy between results.
            limit: runner.workers * 2,
        }
    }
}

impl<T: Task> Exec for Threads<'_, T> {
    fn in_flight(&self) -> usize {
        match self {
            Threads::Inline { results, .. } => results.len(),
            Threads::Pool { in_flight, .. } => *in_flight,
        }
    }

    fn can_submit(&self) -> bool {
        match self {
            Threads::Inline { results, .. } => results.is_empty(),
            Threads::Pool {
                in_flight, limit, ..
            } => in_flight < limit,
        }
    }

    fn submit(&mut self, batch: Batch) {
        match self {
            Threads::Inline {
                task,
                shared,
                results,
            } => {
                results.push_back(batch.run_sync(shared, *task, None));
            }
            Threads::Pool {
                queue,
                in_flight,
                lazy,
                ..
            } => {
                let mut batch = batch;
                if batch.mark_lazy() {
                    *lazy += 1;
                }
                queue.push(batch);
                *in_flight += 1;
            }
        }
    }

    fn next_result(&mut self, timeout: Duration) -> Option<Batch> {
        match self {
            Threads::Inline { results, .. } => results.pop_front(),
            Threads::Pool {
                queue,
                results,
                in_flight,
                lazy,
                ..
            } => {
                if results.is_empty() {
                    // Results handed back without a wake-up are picked up
                    // within LAZY_WAIT; with none out, nothing is polled.
                    let timeout = if *lazy > 0 {
                        timeout.min(LAZY_WAIT)
                    } else {
                        timeout
                    };
                    queue.take_back(results, timeout);
                }
                let result = results.pop_front()?;
                if !result.continues() {
                    *in_flight -= 1;
                    if result.is_lazy() {
                        *lazy -= 1;
                    }
                }
                Some(result)
            }
        }
    }

    fn runs_here(&self) -> bool {
        true
    }

    fn run_here(&mut self, batch: Batch) -> Batch {
        let (Threads::Inline { task, shared, .. } | Threads::Pool { task, shared, .. }) = self;
        batch.run_sync(shared, *task, None)
    }
}

impl<T> Drop for Threads<'_, T> {
    fn drop(&mut self) {
        // Ends the workers: queued batches are dropped, backoff waits end,
        // and the closed queue ends their loops.
        match self {
            Threads::Inline { .. } => {}
            Threads::Pool { shared, queue, .. } => {
                shared.run_stop.stop();
                queue.close();
            }
        }
    }
}
