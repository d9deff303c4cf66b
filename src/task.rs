//! The `Task` trait: what a job does with one line.

use std::fmt;
use std::time::Duration;

use crate::line::Line;

/// What a job does with one line.
///
/// Implement [`run`](Task::run); the default methods say whether an error is
/// worth retrying and how long to wait first. A task's errors are its own:
/// the runner records them as failed lines, and never turns them into
/// linemark's [`Error`](crate::Error).
///
/// With several workers, `run` is called from several threads at once, so a
/// task is `Sync`. The runner gives at-least-once semantics: after a crash,
/// a line may be run again even if it had finished, so make the work
/// idempotent where a repeat would hurt.
///
/// A closure `Fn(&Line) -> Result<(), E>` is a task whose errors are all
/// retryable.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use linemark::{Line, Task};
///
/// #[derive(Debug)]
/// enum FetchError {
///     NotFound,
///     TooManyRequests { retry_after: Duration },
/// }
///
/// impl std::fmt::Display for FetchError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             FetchError::NotFound => f.write_str("404 not found"),
///             FetchError::TooManyRequests { .. } => f.write_str("429 too many requests"),
///         }
///     }
/// }
///
/// struct Fetch;
///
/// impl Task for Fetch {
///     type Error = FetchError;
///
///     fn run(&self, line: &Line<'_>) -> Result<(), FetchError> {
///         if line.as_bytes().is_empty() { Err(FetchError::NotFound) } else { Ok(()) }
///     }
///
///     fn is_retryable(&self, error: &FetchError) -> bool {
///         !matches!(error, FetchError::NotFound)
///     }
///
///     fn retry_after(&self, error: &FetchError) -> Option<Duration> {
///         match error {
///             FetchError::TooManyRequests { retry_after } => Some(*retry_after),
///             _ => None,
///         }
///     }
/// }
///
/// assert!(!Fetch.is_retryable(&FetchError::NotFound));
/// assert!(Fetch.run(&Line::new(b"https://example.com/\n", 1, 0)).is_ok());
/// ```
pub trait Task: Sync {
    /// The task's own error type. Its `Display` text is what the checkpoint
    /// records for a failed line.
    type Error: fmt::Display;

    /// Does the work for one line.
    ///
    /// # Errors
    ///
    /// Whatever went wrong; the runner retries it or records the line as
    /// failed.
    fn run(&self, line: &Line<'_>) -> Result<(), Self::Error>;

    /// Whether the error may go away if the line is tried again (default:
    /// yes). A line whose error is not retryable is recorded as failed at
    /// once.
    fn is_retryable(&self, _error: &Self::Error) -> bool {
        true
    }

    /// How long to wait before the next attempt, when the error says so (an
    /// HTTP 429 or 503 with `Retry-After`). Default: no hint, so the retry
    /// policy's backoff applies.
    fn retry_after(&self, _error: &Self::Error) -> Option<Duration> {
        None
    }
}

impl<F, E> Task for F
where
    F: Fn(&Line<'_>) -> Result<(), E> + Sync,
    E: fmt::Display,
{
    type Error = E;

    fn run(&self, line: &Line<'_>) -> Result<(), E> {
        self(line)
    }
}
