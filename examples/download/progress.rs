//! The progress bar, the messages above it and the final summary.
//!
//! The bar advances by input bytes (each finished line's length), so its ETA
//! needs no count of lines; files and bytes downloaded are drawn from the
//! fetcher's counters at each redraw, failed lines and retries from the
//! runner's events. A line that fails for good is printed as it fails; a
//! failed attempt that will be retried only counts, unless verbose: a run
//! against a flaky server would otherwise print a line per retry (94 in one
//! `--demo` run) and bury the failures that need a `--retry-failed`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressState, ProgressStyle};
use linemark::{Event, FailedLine, Line, Report, Task};

use crate::fetch::Stats;
use crate::input::Plan;

/// How much a run prints on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Only fatal errors (`--quiet`).
    Quiet,
    /// The bar (on a terminal), each line that failed for good, the summary.
    Normal,
    /// Also each failed attempt that will be retried (`--verbose`).
    Verbose,
}

/// Receives the runner's events; draws the bar unless quiet.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Whether each retried attempt gets a message of its own.
    attempts: bool,
    /// Lengths of the lines in progress, noted by [`Tracked`]: the
    /// `Failed` event has no offsets to measure a line with.
    lengths: Mutex<HashMap<u64, u64>>,
    failed: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

impl Progress {
    pub fn new(plan: &Plan, stats: &Arc<Stats>, verbosity: Verbosity) -> Progress {
        let failed = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let bar = (verbosity != Verbosity::Quiet).then(|| {
            let started = Instant::now();
            let files = {
                let stats = Arc::clone(stats);
                let (done_before, total) = (plan.already_done, plan.url_lines);
                let failed = Arc::clone(&failed);
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let done = done_before
                        + stats.downloaded.load(Ordering::Relaxed)
                        + stats.present.load(Ordering::Relaxed);
                    let _ = write!(w, "{done}/{total} files");
                    let failed = failed.load(Ordering::Relaxed);
                    if failed > 0 {
                        let _ = write!(w, ", {failed} failed");
                    }
                }
            };
            let bytes = {
                let stats = Arc::clone(stats);
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let bytes = stats.bytes.load(Ordering::Relaxed);
                    let seconds = started.elapsed().as_secs_f64().max(0.001);
                    let rate = (bytes as f64 / seconds) as u64;
                    let _ = write!(w, "{} at {}/s", HumanBytes(bytes), HumanBytes(rate));
                }
            };
            let retried = {
                let retries = Arc::clone(&retries);
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let retries = retries.load(Ordering::Relaxed);
                    if retries > 0 {
                        let _ = write!(w, ", {}", counted(retries, "retry", "retries"));
                    }
                }
            };
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:30}] {percent:>3}% eta {eta:<4} {files}{retried}, {bytes}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("files", files)
            .with_key("bytes", bytes)
            .with_key("retried", retried)
            .progress_chars("=> ");
            let bar = ProgressBar::new(plan.todo_bytes).with_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            attempts: verbosity == Verbosity::Verbose,
            lengths: Mutex::new(HashMap::new()),
            failed,
            retries,
        }
    }

    pub fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Done { line, .. } => self.advance(line),
            Event::Failed {
                line,
                attempts,
                error,
                ..
            } => {
                self.advance(line);
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.note(&format!(
                    "line {line}: failed after {}: {error}",
                    counted(attempts.into(), "attempt", "attempts")
                ));
            }
            Event::Retrying {
                line,
                attempt,
                delay,
                error,
            } => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                if self.attempts {
                    self.note(&format!(
                        "line {line}: attempt {attempt} failed, retrying in {:.1} s: {error}",
                        delay.as_secs_f64()
                    ));
                }
            }
            _ => {}
        }
    }

    fn lengths(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.lengths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line is over: the bar moves by its length.
    fn advance(&self, line: u64) {
        let length = self.lengths().remove(&line);
        if let (Some(bar), Some(length)) = (&self.bar, length) {
            bar.inc(length);
        }
    }

    /// A message above the bar (or on stderr when there is no bar to draw).
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(text),
            Some(_) => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A task that notes each line's length for the bar, then runs `task`.
pub struct Tracked<'p, T> {
    pub task: T,
    pub progress: &'p Progress,
}

impl<T: Task> Task for Tracked<'_, T> {
    type Error = T::Error;

    fn run(&self, line: &Line<'_>) -> Result<(), T::Error> {
        if self.progress.bar.is_some() {
            self.progress
                .lengths()
                .insert(line.number(), line.raw().len() as u64);
        }
        self.task.run(line)
    }

    fn is_retryable(&self, error: &T::Error) -> bool {
        self.task.is_retryable(error)
    }

    fn retry_after(&self, error: &T::Error) -> Option<Duration> {
        self.task.retry_after(error)
    }
}

/// The end-of-run summary, for stderr. `failed` is how many lines the
/// checkpoint records as failed and `lines` lists them
/// ([`Checkpoint::inspect_failed`](linemark::Checkpoint::inspect_failed)):
/// they are read one at a time and only the few shown are kept, so that a
/// run that leaves a million failed lines prints its summary without
/// holding them.
pub fn summary(
    report: &Report,
    plan: &Plan,
    stats: &Stats,
    failed: u64,
    lines: impl IntoIterator<Item = linemark::Result<FailedLine>>,
) -> linemark::Result<String> {
    let mut out = String::new();
    let downloaded = stats.downloaded.load(Ordering::Relaxed);
    let present = stats.present.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let _ = write!(
        out,
        "{downloaded} downloaded, {} already done",
        plan.already_done + present
    );
    if present > 0 {
        let _ = write!(out, " ({present} found on disk)");
    }
    let _ = writeln!(out, ", {failed} failed, of {} files", plan.url_lines);
    let resumed = stats.resumed.load(Ordering::Relaxed);
    let restarted = stats.restarted.load(Ordering::Relaxed);
    let seconds = report.elapsed.as_secs_f64().max(0.001);
    let _ = writeln!(
        out,
        "{} in {} ({}/s, {:.0} files/s); {}, {resumed} resumed by range, {restarted} restarted from zero",
        HumanBytes(bytes),
        HumanDuration(report.elapsed),
        HumanBytes((bytes as f64 / seconds) as u64),
        downloaded as f64 / seconds,
        counted(report.retried, "retry", "retries"),
    );
    const SHOWN: usize = 20;
    if failed > 0 {
        let _ = writeln!(out, "failed lines:");
        for line in lowest(lines, SHOWN)? {
            let _ = writeln!(
                out,
                "  line {}: {} (after {})",
                line.line(),
                line.error(),
                counted(line.attempts().into(), "attempt", "attempts")
            );
        }
        if failed > SHOWN as u64 {
            let _ = writeln!(
                out,
                "  ... and {} more (all are in the failure log of {})",
                failed - SHOWN as u64,
                report.checkpoint.display()
            );
        }
    }
    Ok(out)
}

/// The `count` lines of `lines` with the lowest line numbers, in increasing
/// order: the first ones of the list, whatever order the failure log holds
/// them in. Reads `lines` to the end, holding at most `count` of them.
fn lowest(
    lines: impl IntoIterator<Item = linemark::Result<FailedLine>>,
    count: usize,
) -> linemark::Result<Vec<FailedLine>> {
    let mut kept: Vec<FailedLine> = Vec::with_capacity(count + 1);
    for line in lines {
        let line = line?;
        if kept.len() == count && kept.last().is_some_and(|last| last.line() <= line.line()) {
            continue;
        }
        let at = kept.partition_point(|kept| kept.line() <= line.line());
        kept.insert(at, line);
        kept.truncate(count);
    }
    Ok(kept)
}

/// `count` and the noun in the right number: "1 retry", "3 retries".
fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}
