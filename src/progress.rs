//! Progress events, for progress bars, logs and metrics.

use std::time::Duration;

use crate::position::Position;

/// Something that happened during a run. Lines are 1-based numbers; byte
/// offsets let a progress bar show progress through the input (`offset` out
/// of [`Event::Begin`]'s `input_len`) without counting lines first. A
/// [`retry_failed`](crate::Runner::retry_failed) run reads only the failed
/// lines, in the order they are listed, from `resumed_at` (the checkpoint's
/// position) on: its progress is its `Done` and `Failed` events out of
/// `Begin`'s `failed_before`.
///
/// # Examples
///
/// ```
/// use linemark::Event;
///
/// fn describe(event: &Event<'_>) -> String {
///     match event {
///         Event::Retrying { line, attempt, delay, error } => {
///             format!("line {line}: attempt {attempt} failed ({error}), retrying in {delay:?}")
///         }
///         Event::Failed { line, error, .. } => format!("line {line} failed: {error}"),
///         _ => String::new(),
///     }
/// }
/// let text = describe(&Event::Failed { line: 3, end_offset: 90, attempts: 1, error: "404" });
/// assert_eq!(text, "line 3 failed: 404");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The run starts, resuming at `resumed_at`.
    Begin {
        /// The input's length in bytes, when it is a file.
        input_len: Option<u64>,
        /// Where the run resumes (the start, on a first run).
        resumed_at: Position,
        /// Lines recorded as failed in the checkpoint.
        failed_before: u64,
    },
    /// A task starts on a line.
    Started {
        /// Line number.
        line: u64,
        /// Byte offset of the line.
        offset: u64,
    },
    /// A line was finished earlier and is skipped.
    Skipped {
        /// Line number.
        line: u64,
        /// Byte offset just after the line.
        end_offset: u64,
    },
    /// A line's task succeeded.
    Done {
        /// Line number.
        line: u64,
        /// Byte offset just after the line.
        end_offset: u64,
    },
    /// An attempt failed and the line will be tried again after `delay`.
    Retrying {
        /// Line number.
        line: u64,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Wait before the next attempt.
        delay: Duration,
        /// The task's error message.
        error: &'a str,
    },
    /// A line failed for good and was recorded as failed.
    Failed {
        /// Line number.
        line: u64,
        /// Byte offset just after the line.
        end_offset: u64,
        /// Attempts made, as its record counts them: in a
        /// [`retry_failed`](crate::Runner::retry_failed) run, earlier
        /// runs' attempts included.
        attempts: u32,
        /// The task's last error message.
        error: &'a str,
    },
    /// The checkpoint reached the disk: everything before `position` is
    /// durably finished.
    Synced {
        /// The durable position.
        position: Position,
    },
}

/// Receives [`Event`]s. Called from the worker threads as well as the
/// runner's own, so it must be `Sync` and should be quick.
///
/// A closure `Fn(&Event)` is an observer.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use linemark::{Event, Observer};
///
/// let done = AtomicU64::new(0);
/// let observer = |event: &Event<'_>| {
///     if let Event::Done { .. } = event {
///         done.fetch_add(1, Ordering::Relaxed);
///     }
/// };
/// observer.on_event(&Event::Done { line: 1, end_offset: 10 });
/// assert_eq!(done.load(Ordering::Relaxed), 1);
/// ```
pub trait Observer: Sync {
    /// Called for every event.
    fn on_event(&self, event: &Event<'_>);
}

impl<F: Fn(&Event<'_>) + Sync> Observer for F {
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}
