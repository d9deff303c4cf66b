//! The workers: one attempt of a task, its retries, and the pool that
//! runs them on threads (or on the calling thread with one worker).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::line::Line;
use crate::progress::{Event, Observer};
use crate::retry::RetryPolicy;
use crate::stop::StopToken;
use crate::task::{BoxError, Task, error_chain};

use super::*;

/// What the workers share with the runner.
pub(super) struct Shared {
    pub(super) observer: Option<Arc<dyn Observer + Send>>,
    pub(super) user_stop: StopToken,
    /// Fired by the runner when the user's token fires, the halt policy
    /// applies or the run ends.
    pub(super) run_stop: StopToken,
    pub(super) retry: RetryPolicy,
    pub(super) retried: AtomicU64,
    /// The input file, named in the lines the task sees (and so in their
    /// errors), whichever way they reach it.
    pub(super) input: Option<PathBuf>,
}

impl Shared {
    /// `line`, naming the input file when there is one.
    fn named<'a>(&'a self, line: &Line<'a>) -> Line<'a> {
        match (&self.input, line.path()) {
            (Some(input), None) => line.with_path(input.as_path()),
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

    /// Runs the task on a line until it succeeds, fails for good, or the
    /// run stops. Backoff waits on `sleeper`, so a stop ends them at once.
    #[inline]
    pub(super) fn attempt<T: Task>(
        &self,
        task: &T,
        line: &Line<'_>,
        sleeper: &StopToken,
    ) -> Outcome {
        if self.observer.is_some() {
            self.emit(&Event::Started {
                line: line.number(),
                offset: line.offset(),
            });
        }
        match run_once(task, line) {
            Ok(Ok(())) => Outcome::Done,
            first => self.after_failure(task, line, sleeper, first),
        }
    }

    /// The retries after a failed first attempt, kept out of the hot path.
    #[cold]
    #[inline(never)]
    pub(super) fn after_failure<T: Task>(
        &self,
        task: &T,
        line: &Line<'_>,
        sleeper: &StopToken,
        first: std::thread::Result<Result<(), T::Error>>,
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
            if sleeper.sleep(delay) {
                return Outcome::Abandoned;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            result = run_once(task, line);
        }
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
) -> std::thread::Result<Result<(), T::Error>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(line)))
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

pub(super) struct JobResult {
    pub(super) line: u64,
    pub(super) outcome: Outcome,
}

pub(super) struct Job {
    pub(super) bytes: Vec<u8>,
    pub(super) line: u64,
    pub(super) offset: u64,
}

/// Runs tasks: on the calling thread with one worker, on a pool otherwise.
pub(super) enum Exec<'a> {
    Inline {
        results: VecDeque<JobResult>,
    },
    Pool {
        shared: Arc<Shared>,
        jobs: Option<SyncSender<Job>>,
        results: Receiver<JobResult>,
        in_flight: usize,
        limit: usize,
        _scope: std::marker::PhantomData<&'a ()>,
    },
}

impl<'a> Exec<'a> {
    pub(super) fn new<'scope, 'env, T: Task>(
        runner: &Runner,
        task: &'env T,
        shared: &Arc<Shared>,
        scope: &'scope std::thread::Scope<'scope, 'env>,
    ) -> Exec<'a> {
        if runner.workers == 1 {
            return Exec::Inline {
                results: VecDeque::new(),
            };
        }
        // Two jobs a worker keep every worker busy between results.
        let limit = runner.workers * 2;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(limit);
        let (result_tx, result_rx) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..runner.workers {
            let job_rx = Arc::clone(&job_rx);
            let result_tx = result_tx.clone();
            let shared = Arc::clone(shared);
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = job else { break };
                    let outcome = if shared.stopping() {
                        Outcome::Abandoned
                    } else {
                        // A panic outside the task itself (an observer, an
                        // error's Display) must still produce a result, or
                        // the runner would wait for this line forever.
                        let line = shared.named(&Line::new(&job.bytes, job.line, job.offset));
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            shared.attempt(task, &line, &shared.run_stop)
                        }))
                        .unwrap_or_else(|panic| Outcome::Failed {
                            attempts: 1,
                            error: panic_message(panic.as_ref()),
                        })
                    };
                    let result = JobResult {
                        line: job.line,
                        outcome,
                    };
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        Exec::Pool {
            shared: Arc::clone(shared),
            jobs: Some(job_tx),
            results: result_rx,
            in_flight: 0,
            limit,
            _scope: std::marker::PhantomData,
        }
    }

    pub(super) fn can_submit(&self) -> bool {
        match self {
            Exec::Inline { results, .. } => results.is_empty(),
            Exec::Pool {
                in_flight, limit, ..
            } => in_flight < limit,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        match self {
            Exec::Inline { results, .. } => results.len(),
            Exec::Pool { in_flight, .. } => *in_flight,
        }
    }

    pub(super) fn submit<T: Task>(&mut self, line: &Line<'_>, task: &T, shared: &Shared) {
        match self {
            Exec::Inline { results, .. } => {
                let outcome = shared.attempt(task, &shared.named(line), &shared.user_stop);
                results.push_back(JobResult {
                    line: line.number(),
                    outcome,
                });
            }
            Exec::Pool {
                jobs, in_flight, ..
            } => {
                let job = Job {
                    bytes: line.raw().to_vec(),
                    line: line.number(),
                    offset: line.offset(),
                };
                // The channel holds `limit` jobs and no more are in flight,
                // so this does not block; it fails only if every worker is
                // gone, and then the line is simply not run.
                if let Some(jobs) = jobs {
                    if jobs.send(job).is_ok() {
                        *in_flight += 1;
                    }
                }
            }
        }
    }

    pub(super) fn next_result(&mut self, timeout: Duration) -> Option<JobResult> {
        match self {
            Exec::Inline { results, .. } => results.pop_front(),
            Exec::Pool {
                results, in_flight, ..
            } => match results.recv_timeout(timeout) {
                Ok(result) => {
                    *in_flight -= 1;
                    Some(result)
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // No worker is left to answer: the lines in flight stay
                    // unrecorded, to be done again.
                    *in_flight = 0;
                    None
                }
            },
        }
    }
}

impl Drop for Exec<'_> {
    fn drop(&mut self) {
        // Ends the workers: queued jobs are abandoned, backoff waits end,
        // and the closed channel ends their loops.
        match self {
            Exec::Inline { .. } => {}
            Exec::Pool { shared, jobs, .. } => {
                shared.run_stop.stop();
                jobs.take();
            }
        }
    }
}
