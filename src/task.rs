//! The `Task` trait: what a job does with one line.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::line::Line;
#[cfg(feature = "tokio")]
use crate::line::OwnedLine;
use crate::out::Out;

/// Any error, boxed: what a closure given to
/// [`Runner::run`](crate::Runner::run) returns. `?` converts every
/// `std::error::Error` into it (and `anyhow::Error`), `"text".into()` and
/// `format!(..).into()` make one from a message, and [`permanent`] marks
/// one that retrying cannot mend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

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
/// A closure `Fn(&Line) -> Result<(), E>` is a task too, whose errors are
/// all retryable; give it to [`Runner::run_task`](crate::Runner::run_task).
/// The plainer way to run a closure is [`Runner::run`](crate::Runner::run),
/// which infers its types and lets it mark an error [`permanent`].
///
/// A failed line records the error's message and, joined with `: `, those
/// of its [`source`](std::error::Error::source) chain (see
/// [`Task::Error`]).
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
/// impl std::error::Error for FetchError {}
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
    /// The task's own error type: anything that converts into a
    /// [`BoxError`] (every `std::error::Error + Send + Sync`, `String`,
    /// `&str`, `anyhow::Error`). A failed line records its `Display` text
    /// followed by its source chain, `: `-joined, at most
    /// [`MAX_ERROR_LEN`] bytes.
    type Error: Into<BoxError>;

    /// Does the work for one line.
    ///
    /// # Errors
    ///
    /// Whatever went wrong; the runner retries it or records the line as
    /// failed.
    fn run(&self, line: &Line<'_>) -> Result<(), Self::Error>;

    /// Does the work for one line and writes its results to `out`, for a
    /// runner with outputs ([`Runner::output`](crate::Runner::output)):
    /// what it writes is appended to the outputs exactly once, when the
    /// line is recorded as finished (see [`Out`]). A runner with outputs
    /// calls this method, never [`run`](Task::run); one without may call
    /// either, so the two must do the same work. The default calls `run`
    /// and writes nothing. A task that writes results implements both,
    /// `run` as `self.run_into(line, &mut Out::default())`.
    ///
    /// # Errors
    ///
    /// As [`run`](Task::run). What a failed attempt wrote is discarded.
    fn run_into(&self, line: &Line<'_>, out: &mut Out) -> Result<(), Self::Error> {
        let _ = out;
        self.run(line)
    }

    /// Whether the error may go away if the line is tried again (default:
    /// yes). A line whose error is not retryable is recorded as failed at
    /// once. (A closure given to [`Runner::run`](crate::Runner::run) says
    /// "not retryable" by returning [`permanent`]`(error)`.)
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
    E: Into<BoxError>,
{
    type Error = E;

    fn run(&self, line: &Line<'_>) -> Result<(), E> {
        self(line)
    }
}

/// What an async job does with one line: [`Task`] for
/// [`Runner::run_async_task`](crate::Runner::run_async_task), with the same
/// error model. The future runs on the caller's tokio runtime, up to
/// [`concurrency`](crate::Runner::concurrency) of them at once, and gets the
/// line as an [`OwnedLine`], so it can move it into spawned work.
///
/// A closure `Fn(OwnedLine) -> impl Future<Output = Result<(), BoxError>>`
/// runs with [`Runner::run_async`](crate::Runner::run_async) and marks an
/// error not worth retrying with [`permanent`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use linemark::{AsyncTask, OwnedLine, Runner};
///
/// struct Lookup;
///
/// #[derive(Debug, thiserror::Error)]
/// enum LookupError {
///     #[error("no such id")]
///     Missing,
///     #[error("busy, retry in {0:?}")]
///     Busy(Duration),
/// }
///
/// impl AsyncTask for Lookup {
///     type Error = LookupError;
///
///     async fn run(&self, line: OwnedLine) -> Result<(), LookupError> {
///         tokio::task::yield_now().await; // ... a request for `line` ...
///         if line.as_bytes().is_empty() { Err(LookupError::Missing) } else { Ok(()) }
///     }
///
///     fn is_retryable(&self, error: &LookupError) -> bool {
///         matches!(error, LookupError::Busy(_))
///     }
///
///     fn retry_after(&self, error: &LookupError) -> Option<Duration> {
///         match error {
///             LookupError::Busy(after) => Some(*after),
///             LookupError::Missing => None,
///         }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("ids.txt");
/// std::fs::write(&input, "17\n\n23\n")?;
/// let report = Runner::new().run_async_task(&input, &Lookup).await?;
/// assert_eq!((report.done, report.failed), (2, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "tokio")]
pub trait AsyncTask: Sync {
    /// The task's own error type, as [`Task::Error`]; `Send`, as it is
    /// the output of a future that may move between threads.
    type Error: Into<BoxError> + Send;

    /// Does the work for one line.
    ///
    /// # Errors
    ///
    /// Whatever went wrong; the runner retries it or records the line as
    /// failed.
    fn run(&self, line: OwnedLine) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// As [`Task::is_retryable`] (default: yes).
    fn is_retryable(&self, _error: &Self::Error) -> bool {
        true
    }

    /// As [`Task::retry_after`] (default: no hint).
    fn retry_after(&self, _error: &Self::Error) -> Option<Duration> {
        None
    }
}

/// A closure given to [`Runner::run_async`](crate::Runner::run_async), as
/// an async task.
#[cfg(feature = "tokio")]
pub(crate) struct FnAsyncTask<F>(pub(crate) F);

#[cfg(feature = "tokio")]
impl<F, Fut> AsyncTask for FnAsyncTask<F>
where
    F: Fn(OwnedLine) -> Fut + Sync,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    type Error = BoxError;

    fn run(&self, line: OwnedLine) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.0)(line)
    }

    fn is_retryable(&self, error: &BoxError) -> bool {
        closure_retryable(error)
    }

    fn retry_after(&self, error: &BoxError) -> Option<Duration> {
        closure_retry_after(error)
    }
}

/// The most bytes of error text a failed line records.
pub const MAX_ERROR_LEN: usize = 4096;

/// An error that trying again cannot mend (a parse error, an HTTP 404):
/// the line is recorded as failed at once, without retries. Make one with
/// [`permanent`]. Its message and source chain are those of the error it
/// wraps.
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// The error it wraps.
    #[must_use]
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Marks `error` as one that retrying cannot mend: returned by a closure
/// given to [`Runner::run`](crate::Runner::run), it fails the line at once.
///
/// # Examples
///
/// ```
/// use linemark::{Runner, permanent};
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("ids.txt");
/// std::fs::write(&input, "17\nnot-a-number\n")?;
/// let report = Runner::new().run(&input, |line| {
///     // A line that does not parse will not parse on the next attempt.
///     let id: u64 = line.as_str()?.parse().map_err(permanent)?;
///     println!("importing {id}");
///     Ok(())
/// })?;
/// assert_eq!((report.done, report.failed), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn permanent(error: impl Into<BoxError>) -> BoxError {
    Box::new(Permanent(error.into()))
}

/// An error worth retrying after a given delay (an HTTP 429 or 503 with
/// `Retry-After`): the closure form of [`Task::retry_after`]. Make one with
/// [`retry_after`]. Its message and source chain are those of the error it
/// wraps.
#[derive(Debug)]
pub struct RetryAfter {
    error: BoxError,
    delay: Duration,
}

impl RetryAfter {
    /// The delay asked for.
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The error it wraps.
    #[must_use]
    pub fn into_inner(self) -> BoxError {
        self.error
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl StdError for RetryAfter {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

/// Marks `error` as one to retry after `delay` rather than after the retry
/// policy's backoff (capped at its longest delay, like any hint): returned
/// by a closure given to [`Runner::run`](crate::Runner::run) (or
/// `run_async`), it is what [`Task::retry_after`] says for a task type.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use linemark::{Runner, retry_after};
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("ids.txt");
/// std::fs::write(&input, "1\n")?;
/// let tries = std::sync::atomic::AtomicU32::new(0);
/// let report = Runner::new().run(&input, |_line| {
///     if tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
///         // The server said "Retry-After: 0".
///         return Err(retry_after("503 service unavailable", Duration::ZERO));
///     }
///     Ok(())
/// })?;
/// assert_eq!((report.done, report.retried), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> BoxError {
    Box::new(RetryAfter {
        error: error.into(),
        delay,
    })
}

/// What a closure's error says: whether to retry it, and when.
fn closure_retryable(error: &BoxError) -> bool {
    !error.is::<Permanent>()
}

fn closure_retry_after(error: &BoxError) -> Option<Duration> {
    error.downcast_ref::<RetryAfter>().map(RetryAfter::delay)
}

/// A closure given to [`Runner::run`](crate::Runner::run), as a task.
pub(crate) struct FnTask<F>(pub(crate) F);

impl<F> Task for FnTask<F>
where
    F: Fn(&Line<'_>) -> Result<(), BoxError> + Sync,
{
    type Error = BoxError;

    fn run(&self, line: &Line<'_>) -> Result<(), BoxError> {
        (self.0)(line)
    }

    fn is_retryable(&self, error: &BoxError) -> bool {
        closure_retryable(error)
    }

    fn retry_after(&self, error: &BoxError) -> Option<Duration> {
        closure_retry_after(error)
    }
}

/// A closure given to [`Runner::map`](crate::Runner::map).
pub(crate) struct FnMap<F>(pub(crate) F);

impl<F> Task for FnMap<F>
where
    F: Fn(&Line<'_>, &mut Out) -> Result<(), BoxError> + Sync,
{
    type Error = BoxError;

    fn run(&self, line: &Line<'_>) -> Result<(), BoxError> {
        (self.0)(line, &mut Out::default())
    }

    #[inline]
    fn run_into(&self, line: &Line<'_>, out: &mut Out) -> Result<(), BoxError> {
        (self.0)(line, out)
    }

    fn is_retryable(&self, error: &BoxError) -> bool {
        closure_retryable(error)
    }

    fn retry_after(&self, error: &BoxError) -> Option<Duration> {
        closure_retry_after(error)
    }
}

/// The text a failed line records for `error`: its message, then each
/// source's that it does not already contain, `: `-joined, cut to
/// [`MAX_ERROR_LEN`] bytes at a character boundary.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        // Many errors repeat their source's message in their own.
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        if text.len() > MAX_ERROR_LEN {
            break;
        }
        source = cause.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1
                .as_deref()
                .map(|inner| inner as &(dyn StdError + 'static))
        }
    }

    fn layers(messages: &[&'static str]) -> Layer {
        let mut inner = None;
        for message in messages.iter().rev() {
            inner = Some(Box::new(Layer(message, inner)));
        }
        *inner.unwrap()
    }

    #[test]
    fn the_chain_is_joined_and_repeats_are_left_out() {
        let error = layers(&["importing line 3", "connecting to db", "connection refused"]);
        assert_eq!(
            error_chain(&error),
            "importing line 3: connecting to db: connection refused"
        );
        let repeating = layers(&["reading: permission denied", "permission denied"]);
        assert_eq!(error_chain(&repeating), "reading: permission denied");
    }

    #[test]
    fn the_chain_is_bounded_at_a_character_boundary() {
        let long: &'static str = "é".repeat(MAX_ERROR_LEN).leak();
        let error = layers(&["top", long, "never shown"]);
        let text = error_chain(&error);
        assert!(text.len() <= MAX_ERROR_LEN, "{}", text.len());
        assert!(text.starts_with("top: éé") && text.ends_with('…'));
    }

    #[test]
    fn permanent_keeps_the_message_and_chain_and_is_not_retryable() {
        let error = permanent(layers(&["bad id", "invalid digit"]));
        assert_eq!(error_chain(&*error), "bad id: invalid digit");
        let task = FnTask(|_: &Line<'_>| -> Result<(), BoxError> { Ok(()) });
        assert!(!task.is_retryable(&error));
        assert!(task.is_retryable(&"timeout".into()));
    }

    #[test]
    fn retry_after_keeps_the_message_and_gives_the_delay() {
        let error = retry_after(
            layers(&["429 too many", "slow down"]),
            Duration::from_secs(7),
        );
        assert_eq!(error_chain(&*error), "429 too many: slow down");
        let task = FnTask(|_: &Line<'_>| -> Result<(), BoxError> { Ok(()) });
        assert!(task.is_retryable(&error));
        assert_eq!(task.retry_after(&error), Some(Duration::from_secs(7)));
        assert_eq!(task.retry_after(&"timeout".into()), None);
    }
}
