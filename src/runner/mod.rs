//! The runner: drives a [`Task`] over the lines of an input, with a
//! checkpoint, retries, parallel workers, failed lines and graceful stop.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability};
use crate::error::{Error, Result};
use crate::line::{Line, LineReader};
use crate::out::Out;
use crate::position::{Position, check_prefix};
use crate::progress::Observer;
use crate::retry::RetryPolicy;
use crate::stop::StopToken;
use crate::task::{BoxError, FnMap, FnTask, Task};

#[cfg(feature = "tokio")]
mod async_run;
mod batch;
mod deferred;
mod drive;
mod pool;

use drive::{FailedSource, SyncWork, Work};

/// How a run finds where it left off in a file input. Stream inputs
/// ([`Runner::run_reader`]) always count lines.
///
/// # Examples
///
/// ```
/// use linemark::{Runner, SeekMode};
///
/// // The user removes finished lines from the top of the input now and then.
/// let runner = Runner::new().seek_mode(SeekMode::Content);
/// # let _ = runner;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SeekMode {
    /// By byte offset, verified ([`Position::seek_offset`]). The default.
    #[default]
    Offset,
    /// By counting lines, verified ([`Position::seek_lines`]).
    Lines,
    /// By the content of the last finished line ([`Position::seek_content`]),
    /// for inputs whose finished lines may have been removed.
    Content,
}

/// What a run did.
///
/// # Examples
///
/// ```
/// use linemark::Runner;
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("in.txt");
/// std::fs::write(&input, "a\nb\n")?;
/// let report = Runner::new().run(&input, |_| Ok(()))?;
/// assert_eq!((report.done, report.failed, report.position.line()), (2, 0, 2));
/// assert!(report.is_complete() && !report.stopped);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Lines whose task succeeded in this run.
    pub done: u64,
    /// Lines after the resume point skipped because an earlier run
    /// finished (or failed) them out of order.
    pub skipped: u64,
    /// Where the run resumed: the lines before it were finished by earlier
    /// runs and were not read at all. In a
    /// [`retry_failed`](Runner::retry_failed) run, the checkpoint's
    /// position: only the failed lines are read.
    pub resumed_at: Position,
    /// Lines recorded as failed in this run.
    pub failed: u64,
    /// Attempts that were retries (not first attempts).
    pub retried: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Whether the run stopped before the end: its stop token fired, or
    /// the halt policy applied.
    pub stopped: bool,
    /// Whether the run stopped because of the halt policy
    /// ([`Runner::halt_after_failures`]). The failure that applied it is
    /// among [`failed`](Report::failed), except in a retry
    /// ([`Runner::retry_failed`]) where a line listed before it was
    /// stopped unfinished: records follow the list's order, so it keeps its
    /// earlier record and is retried next time.
    pub halted: bool,
    /// Whether input follows [`position`](Report::position) that a run
    /// without `retry_failed` would go through: a retry
    /// ([`Runner::retry_failed`]) runs only the failed lines, and sets it
    /// when an earlier run stopped before the end. A run that stopped sets
    /// [`stopped`](Report::stopped) instead.
    pub input_left: bool,
    /// Everything before this position is finished (and durable).
    pub position: Position,
    /// Lines recorded as failed in the checkpoint, from all runs.
    pub failed_total: u64,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
}

/// One line for a log: `done 1990, skipped 0, failed 10 (10 in all),
/// retried 4, stopped at line 2000, 1.52 s`.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "done {}, skipped {}, failed {} ({} in all), retried {}, ",
            self.done, self.skipped, self.failed, self.failed_total, self.retried
        )?;
        if self.halted {
            write!(f, "halted at line {}, ", self.position.line())?;
        } else if self.stopped {
            write!(f, "stopped at line {}, ", self.position.line())?;
        } else if self.input_left {
            write!(f, "input left after line {}, ", self.position.line())?;
        } else {
            write!(f, "ended at line {}, ", self.position.line())?;
        }
        write!(f, "{:.2} s", self.elapsed.as_secs_f64())
    }
}

impl Report {
    /// Whether every line is done: the run reached the end, no input is
    /// left unread after the position, and no line is recorded as failed.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        !self.stopped && !self.input_left && self.failed_total == 0
    }
}

/// Drives a [`Task`] over the lines of an input, resuming from a
/// [`Checkpoint`].
///
/// - With one worker (the default) lines run strictly in order, on the
///   calling thread. The checkpoint's writer thread writes each finished
///   line within the [`write_delay`](Runner::write_delay) and syncs it
///   within the group's delay, even while the next line runs for long.
/// - With `n` workers, lines run on `n` threads and finish in any order.
///   They go to the workers in batches of consecutive lines, at most `2n`
///   batches at a time (running, queued, or finished with the result on its
///   way back). A batch holds one line when the task takes 250 µs or more,
///   as measured during the run, and otherwise as many lines as take about
///   that long, so a cheap task pays for a hand-over between threads once a
///   batch, not once a line. After a kill, the lines in progress are done
///   again: at most `2n` lines of a slow task, at most about 500 µs of work
///   a worker of a cheap one, and never more than the window; plus the
///   commits of the last `write_delay` (after a power loss, plus the
///   unsynced group). The checkpoint records the low watermark (everything
///   before it is finished) plus the lines finished beyond it (at once for
///   a batch of one line, within 1 ms for longer batches, most of which the
///   watermark passes first), so a restart skips exactly the finished
///   lines. At most [`window`](Runner::window) lines are in flight or
///   finished beyond the watermark; a stuck line holds new lines back once
///   the window is full. No line is recorded as finished before its task
///   returned.
/// - A failing line is retried per the [`RetryPolicy`]; a line out of
///   attempts, or whose error is not retryable, is recorded as failed with
///   its error message, and the run goes on. A plain rerun does not redo
///   failed lines; [`retry_failed`](Runner::retry_failed) reruns exactly
///   them.
/// - When the [`StopToken`] fires, no new line starts, lines in progress
///   finish (a line whose attempt fails after the stop is left unrecorded,
///   to be redone), the checkpoint is synced and the report says
///   `stopped`.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use linemark::Runner;
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("numbers.txt");
/// std::fs::write(&input, "1\n2\n3\n")?;
///
/// let sum = Mutex::new(0u64);
/// // A runner is a value: build it once, run it as often as needed.
/// let runner = Runner::new().workers(2);
/// let report = runner.run(&input, |line| {
///     let n: u64 = line.as_str()?.parse()?;
///     *sum.lock().unwrap() += n;
///     Ok(())
/// })?;
/// assert_eq!((report.done, report.failed), (3, 0));
/// assert_eq!(*sum.lock().unwrap(), 6);
///
/// // A rerun finds nothing to do.
/// let again = runner.run(&input, |_| unreachable!("every line is done"))?;
/// assert_eq!((again.done, again.skipped), (0, 0));
/// assert!(again.is_complete());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Runner {
    checkpoint: Option<PathBuf>,
    workers: usize,
    /// Unset: [`Runner::DEFAULT_WINDOW`] (a sync run), or at least twice
    /// the concurrency (an async run).
    window: Option<usize>,
    #[cfg(feature = "tokio")]
    concurrency: usize,
    checkpoint_options: CheckpointBuilder,
    retry: RetryPolicy,
    stop: StopToken,
    observer: Option<Arc<dyn Observer + Send>>,
    halt_after: Option<u64>,
    retry_failed: bool,
    shard: Option<(u64, u64)>,
    max_line_len: usize,
    seek: SeekMode,
    verify_prefix: bool,
    outputs: Vec<PathBuf>,
    keep_order: bool,
    /// The halt policy fires `stop` too: the stop of an async run's driver
    /// (its own token, which its stream reader watches), never a user's.
    halt_fires_stop: bool,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("Runner");
        f.field("checkpoint", &self.checkpoint)
            .field("workers", &self.workers);
        #[cfg(feature = "tokio")]
        f.field("concurrency", &self.concurrency);
        f.field("window", &self.window.unwrap_or(Runner::DEFAULT_WINDOW))
            .field("checkpoint_options", &self.checkpoint_options)
            .field("retry", &self.retry)
            .field("halt_after", &self.halt_after)
            .field("retry_failed", &self.retry_failed)
            .field("shard", &self.shard)
            .field("max_line_len", &self.max_line_len)
            .field("seek", &self.seek)
            .field("verify_prefix", &self.verify_prefix)
            .field("outputs", &self.outputs)
            .field("keep_order", &self.keep_order)
            .finish_non_exhaustive()
    }
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new()
    }
}

/// How long the runner waits for a result before checking the stop token
/// and the group-commit delay.
const TICK: Duration = Duration::from_millis(20);

impl Runner {
    /// The default window: lines in flight or finished beyond the watermark.
    pub const DEFAULT_WINDOW: usize = 1024;

    /// The default [`max_line_len`](Runner::max_line_len): 64 MiB.
    pub const DEFAULT_MAX_LINE_LEN: usize = 64 << 20;

    /// One worker, default durability, retry policy and window, the
    /// default checkpoint path.
    #[must_use]
    pub fn new() -> Runner {
        Runner {
            checkpoint: None,
            workers: 1,
            window: None,
            #[cfg(feature = "tokio")]
            concurrency: 64,
            checkpoint_options: CheckpointBuilder::new(),
            retry: RetryPolicy::default(),
            stop: StopToken::new(),
            observer: None,
            halt_after: None,
            retry_failed: false,
            shard: None,
            max_line_len: Runner::DEFAULT_MAX_LINE_LEN,
            seek: SeekMode::default(),
            verify_prefix: true,
            outputs: Vec::new(),
            keep_order: false,
            halt_fires_stop: false,
        }
    }

    /// Adds an output: a file the results of the lines are appended to,
    /// exactly once each, even across crashes and reruns (see
    /// [`Output`](crate::Output) for how). A task writes a line's results
    /// into the [`Out`](crate::Out) it is given ([`map`](Runner::map), or
    /// [`Task::run_into`](crate::Task::run_into)); they are appended when
    /// the line is recorded as finished. A line that fails writes nothing;
    /// a [`retry_failed`](Runner::retry_failed) run appends the results of
    /// the lines that succeed then. Call it again for more outputs (say
    /// results and rejects); [`Out::to`](crate::Out::to) picks one.
    ///
    /// With [`workers`](Runner::workers), results go in the order lines
    /// finish; see [`keep_order`](Runner::keep_order) for input order. A
    /// [`retry_failed`](Runner::retry_failed) run appends them in the order
    /// the failed lines are listed.
    /// The checkpoint records the outputs: every later run over it must
    /// name the same ones, in the same order (else
    /// [`Error::OutputChanged`]).
    ///
    /// The async runner has no outputs yet.
    #[must_use = "a builder method returns the changed builder"]
    pub fn output(mut self, path: impl AsRef<Path>) -> Runner {
        self.outputs.push(path.as_ref().to_path_buf());
        self
    }

    /// Appends results in input order rather than in the order lines
    /// finish (default: no), as GNU parallel's `--keep-order`. A line's
    /// results wait in memory for the lines before it, and the line is
    /// recorded as finished only once they are appended: the
    /// [`window`](Runner::window) bounds how many wait. With one worker
    /// both orders are the same. A [`retry_failed`](Runner::retry_failed)
    /// run appends the results of the lines that succeed then after all
    /// the others, in the order the failed lines are listed
    /// ([`Checkpoint::failed`](crate::Checkpoint::failed)), whatever this
    /// says.
    #[must_use = "a builder method returns the changed builder"]
    pub fn keep_order(mut self, yes: bool) -> Runner {
        self.keep_order = yes;
        self
    }

    /// The checkpoint file. Default for [`run`](Runner::run): see
    /// [`default_checkpoint_path`](Runner::default_checkpoint_path).
    #[must_use = "a builder method returns the changed builder"]
    pub fn checkpoint_path(mut self, path: impl AsRef<Path>) -> Runner {
        self.checkpoint = Some(path.as_ref().to_path_buf());
        self
    }

    /// Number of worker threads (default 1: strictly in order, on the
    /// calling thread).
    ///
    /// With more than one, the calling thread reads the lines and records
    /// their results while the workers run them, in batches sized to about
    /// 250 µs of the task's measured time (see [`Runner`]). A task so cheap
    /// that handing a batch to another thread costs more than running it
    /// (a few tens of nanoseconds a line) runs on the calling thread
    /// instead, in order, until one of its lines fails an attempt. Workers beyond the number of cores help tasks
    /// that wait (I/O), not tasks that compute.
    #[must_use = "a builder method returns the changed builder"]
    pub fn workers(mut self, workers: usize) -> Runner {
        self.workers = workers.max(1);
        self
    }

    /// Most lines in flight or finished beyond the watermark (default
    /// [`DEFAULT_WINDOW`](Runner::DEFAULT_WINDOW)); at least the number of
    /// workers. A batch holds at most `window / (2 × workers)` lines, so
    /// with many workers a larger window lets cheap tasks go in larger
    /// batches.
    #[must_use = "a builder method returns the changed builder"]
    pub fn window(mut self, lines: usize) -> Runner {
        self.window = Some(lines.max(1));
        self
    }

    /// The settings the checkpoint is opened with: durability, write
    /// delay, compaction threshold, before-write hook (default:
    /// [`CheckpointBuilder::new`]). The shorthands
    /// [`durability`](Runner::durability),
    /// [`write_delay`](Runner::write_delay) and
    /// [`before_checkpoint_write`](Runner::before_checkpoint_write) change
    /// the same settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{Checkpoint, Durability, Runner};
    ///
    /// let runner = Runner::new().checkpoint_options(
    ///     Checkpoint::builder()
    ///         .durability(Durability::EveryCommit)
    ///         .compact_at(1 << 20),
    /// );
    /// # let _ = runner;
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn checkpoint_options(mut self, options: CheckpointBuilder) -> Runner {
        self.checkpoint_options = options;
        self
    }

    /// When the checkpoint's records reach the disk (see
    /// [`CheckpointBuilder::durability`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn durability(mut self, durability: Durability) -> Runner {
        self.checkpoint_options = self.checkpoint_options.durability(durability);
        self
    }

    /// How long after a line is finished its commit is written to the
    /// checkpoint file at most, whatever the tasks do meanwhile (default
    /// 10 ms): a kill of the process redoes the lines in progress and at
    /// most the commits of this last stretch. See
    /// [`CheckpointBuilder::write_delay`].
    #[must_use = "a builder method returns the changed builder"]
    pub fn write_delay(mut self, delay: Duration) -> Runner {
        self.checkpoint_options = self.checkpoint_options.write_delay(delay);
        self
    }

    /// How failed attempts are retried.
    #[must_use = "a builder method returns the changed builder"]
    pub fn retry(mut self, policy: RetryPolicy) -> Runner {
        self.retry = policy;
        self
    }

    /// The token that stops the run gracefully.
    #[must_use = "a builder method returns the changed builder"]
    pub fn stop_token(mut self, token: StopToken) -> Runner {
        self.stop = token;
        self
    }

    /// Receives progress [`Event`](crate::Event)s.
    #[must_use = "a builder method returns the changed builder"]
    pub fn observer(mut self, observer: impl Observer + Send + 'static) -> Runner {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Stops the run (like the stop token) once `failures` lines have
    /// failed in it. Default: failures never stop the run.
    ///
    /// With `n` workers, lines failing at the same moment on other threads
    /// may take the count a little past `failures` (by fewer than `n + 1`);
    /// the worker that fails the last line allowed stops the others at
    /// once.
    #[must_use = "a builder method returns the changed builder"]
    pub fn halt_after_failures(mut self, failures: u64) -> Runner {
        self.halt_after = Some(failures.max(1));
        self
    }

    /// Reruns exactly the lines recorded as failed, and nothing else, when
    /// set. A line that succeeds is no longer failed; one that fails again
    /// keeps its record with the new error.
    ///
    /// The lines are read from the checkpoint's failure log as they are
    /// retried, and recorded in the order it lists them (so that each is at
    /// the head of the log: see [`Checkpoint`](crate::Checkpoint)'s
    /// failed lines): a line that finishes before the ones listed before it
    /// waits for them, at most a [`window`](Runner::window) of lines, so a
    /// million failed lines take no more memory than a window of them. A
    /// retry over a stream reads them in line order, and sorts them first
    /// in memory (every failed line's record) only when the log is out of
    /// order, after a retry that was interrupted.
    ///
    /// The report's [`input_left`](Report::input_left) says whether input
    /// follows the position (an earlier run stopped before the end), which
    /// a run without `retry_failed` goes through. A file is looked at after
    /// the position; a stream is read on, once its failed lines are done,
    /// to the position and one line after (a stream that stays open keeps
    /// the run waiting there, as a plain run would; in an async run, a stop
    /// ends the wait).
    #[must_use = "a builder method returns the changed builder"]
    pub fn retry_failed(mut self, yes: bool) -> Runner {
        self.retry_failed = yes;
        self
    }

    /// Processes only the lines whose 0-based index is `index` modulo
    /// `count` (line numbers `index + 1`, `index + 1 + count`, ...), with a
    /// checkpoint of its own. Shards `0..count` together cover every line
    /// exactly once. An `index` that is not below `count` makes the run
    /// fail with [`Error::InvalidShard`].
    #[must_use = "a builder method returns the changed builder"]
    pub fn shard(mut self, index: u64, count: u64) -> Runner {
        self.shard = (count != 1 || index != 0).then_some((index, count));
        self
    }

    /// The longest line, in bytes with its `\n`, handed to the task
    /// (default [`DEFAULT_MAX_LINE_LEN`](Runner::DEFAULT_MAX_LINE_LEN),
    /// 64 MiB; `usize::MAX` for none).
    ///
    /// A longer line is never held in memory: it is streamed over, and
    /// recorded as a failed line (with its offset, length, digest, and an
    /// error naming the limit; attempts 0) without running the task, and
    /// the run goes on. A rerun skips it like any failed line;
    /// [`retry_failed`](Runner::retry_failed) with a higher limit runs it.
    /// So a run takes memory bounded by the limit (one copy a worker, plus
    /// the reader's), never by the longest line of the input.
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_line_len(mut self, bytes: usize) -> Runner {
        self.max_line_len = bytes.max(1);
        self
    }

    /// Runs `hook` before every write of the checkpoint, so that effects
    /// of finished lines that are not durable yet can be made durable once
    /// per write rather than once per line. See
    /// [`CheckpointBuilder::before_write`](crate::CheckpointBuilder::before_write).
    #[must_use = "a builder method returns the changed builder"]
    pub fn before_checkpoint_write(
        mut self,
        hook: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Runner {
        self.checkpoint_options = self.checkpoint_options.before_write(hook);
        self
    }

    /// How a file input is sought to the resume point (default: by offset).
    #[must_use = "a builder method returns the changed builder"]
    pub fn seek_mode(mut self, mode: SeekMode) -> Runner {
        self.seek = mode;
        self
    }

    /// Whether a resume of a file input reads the whole finished part of it
    /// to check that it did not change (default `true`).
    ///
    /// With it, a resume by [`SeekMode::Offset`] or [`SeekMode::Lines`]
    /// reads the input from its first byte to the resume point, at memory
    /// (or disk) speed, and refuses ([`Error::InputChanged`]) an input
    /// whose finished part has a different number of lines (lines joined,
    /// split, added or removed: every later line would change its number,
    /// and with it its shard and its records) or, as far as the checkpoint
    /// has digested it (all of it after a run that ended; after a kill, up
    /// to its last `prefix` record, written at most a second apart),
    /// any other byte. The digest is kept by the checkpoint's writer thread,
    /// which reads the finished lines again off the hot path.
    ///
    /// Without it a resume costs the same at any point of any input, and
    /// the checkpoint does not read the finished lines again: a resume
    /// checks the offset, length and digest of the last finished line only,
    /// so an edit further back that keeps that line where it was goes
    /// unnoticed, and a change in the number of lines before it makes the
    /// run skip or repeat lines by number. Turn it off for huge inputs that
    /// are never edited. [`SeekMode::Content`] never checks the prefix
    /// (its finished lines may be gone); a stream ([`run_reader`](Runner::run_reader))
    /// always counts its finished lines and checks the last one.
    #[must_use = "a builder method returns the changed builder"]
    pub fn verify_prefix(mut self, verify: bool) -> Runner {
        self.verify_prefix = verify;
        self
    }

    /// The checkpoint path used for `input` when none is set: `INPUT.checkpoint`,
    /// or `INPUT.shard-I-of-N.checkpoint` for a shard.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::Path;
    /// use linemark::Runner;
    ///
    /// let runner = Runner::new();
    /// assert_eq!(runner.default_checkpoint_path("urls.txt"), Path::new("urls.txt.checkpoint"));
    /// let sharded = Runner::new().shard(2, 8);
    /// assert_eq!(
    ///     sharded.default_checkpoint_path("urls.txt"),
    ///     Path::new("urls.txt.shard-2-of-8.checkpoint"),
    /// );
    /// ```
    #[must_use]
    pub fn default_checkpoint_path(&self, input: impl AsRef<Path>) -> PathBuf {
        let mut name = OsString::from(input.as_ref().as_os_str());
        if let Some((index, count)) = self.shard {
            name.push(format!(".shard-{index}-of-{count}"));
        }
        name.push(".checkpoint");
        PathBuf::from(name)
    }

    /// The checkpoint path a run on `input` uses.
    #[must_use]
    pub fn checkpoint_for(&self, input: impl AsRef<Path>) -> PathBuf {
        self.checkpoint
            .clone()
            .unwrap_or_else(|| self.default_checkpoint_path(input))
    }

    /// Runs the closure `task` over the lines of the file `input`, resuming
    /// from its checkpoint.
    ///
    /// The closure's types are inferred: it takes a [`&Line`](Line) and
    /// returns `Result<(), BoxError>`, so `?` works on any error, and
    /// `Err(permanent(error))` fails the line without retries (see
    /// [`permanent`](crate::permanent)). A type that implements [`Task`]
    /// runs with [`run_task`](Runner::run_task).
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::Runner;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let input = dir.path().join("ids.txt");
    /// std::fs::write(&input, "17\n23\n")?;
    /// let report = Runner::new().workers(2).run(&input, |line| {
    ///     let id: u64 = line.as_str()?.parse()?;
    ///     assert!(id > 0);
    ///     Ok(())
    /// })?;
    /// assert!(report.is_complete());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// linemark's own errors: the checkpoint cannot be opened or written
    /// ([`Error::Locked`], [`Error::Corrupt`], [`Error::Io`], ...), the input
    /// changed since the checkpoint ([`Error::InputChanged`]). Progress
    /// recorded before the error is kept. The task's errors are never
    /// returned: they make failed lines.
    pub fn run<F>(&self, input: impl AsRef<Path>, task: F) -> Result<Report>
    where
        F: Fn(&Line<'_>) -> std::result::Result<(), BoxError> + Sync,
    {
        self.run_task(input, &FnTask(task))
    }

    /// Runs the closure `task` over the lines of the file `input`, as
    /// [`run`](Runner::run) does, appending what it writes to `out` to the
    /// [outputs](Runner::output), exactly once per line.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use linemark::Runner;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let input = dir.path().join("words.txt");
    /// std::fs::write(&input, "a\nbb\n")?;
    /// let results = dir.path().join("lengths.txt");
    /// Runner::new().output(&results).map(&input, |line, out| {
    ///     writeln!(out, "{}", line.as_str()?.len())?;
    ///     Ok(())
    /// })?;
    /// assert_eq!(std::fs::read_to_string(&results)?, "1\n2\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run), and [`Error::OutputChanged`] when an output
    /// is not the one the checkpoint records.
    pub fn map<F>(&self, input: impl AsRef<Path>, task: F) -> Result<Report>
    where
        F: Fn(&Line<'_>, &mut Out) -> std::result::Result<(), BoxError> + Sync,
    {
        self.run_task(input, &FnMap(task))
    }

    /// [`map`](Runner::map) over a stream, as
    /// [`run_reader`](Runner::run_reader) runs a closure over one.
    ///
    /// # Errors
    ///
    /// As [`map`](Runner::map).
    pub fn map_reader<R: BufRead, F>(
        &self,
        reader: R,
        checkpoint: impl AsRef<Path>,
        task: F,
    ) -> Result<Report>
    where
        F: Fn(&Line<'_>, &mut Out) -> std::result::Result<(), BoxError> + Sync,
    {
        self.run_reader_task(reader, checkpoint, &FnMap(task))
    }

    /// Runs `task`, a [`Task`], over the lines of the file `input`, resuming
    /// from its checkpoint.
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    pub fn run_task<T: Task>(&self, input: impl AsRef<Path>, task: &T) -> Result<Report> {
        self.run_file_with(input.as_ref(), &mut SyncWork(task))
    }

    /// A run over the lines of the file `input`, whatever runs the tasks.
    fn run_file_with<W: Work>(&self, input: &Path, work: &mut W) -> Result<Report> {
        self.check_outputs_supported::<W>()?;
        let in_err = |err| Error::io(Some(input), "opening the input", err);
        let file = File::open(input).map_err(in_err)?;
        let input_len = file.metadata().map_err(in_err)?.len();
        let input_id = crate::checkpoint::identity(input);
        if let Some(output) = self
            .outputs
            .iter()
            .find(|output| input_id.is_some() && crate::checkpoint::identity(output) == input_id)
        {
            // Results appended to the input would be read as lines.
            return Err(Error::OutputChanged {
                path: output.clone(),
                checkpoint: self.checkpoint_for(input),
                reason: "it is the input file".into(),
            });
        }
        let mut checkpoint = self.open_checkpoint(self.checkpoint_for(input))?;
        // Committed lines are read back from the file for their digest, so
        // a commit costs a few stores, not a copy of the line.
        checkpoint.read_back_from(input, self.verify_prefix)?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        if self.retry_failed {
            checkpoint.prepare_retry(false)?;
            let source: FailedSource<'_, _, std::io::Empty> = FailedSource::Seek {
                reader: &mut reader,
                lines: checkpoint.failed()?,
                buf: Vec::new(),
                limit: self.max_line_len,
            };
            return self
                .drive_failed(&mut checkpoint, source, Some((input, input_len)), work)
                .map_err(|err| err.with_path(input));
        }
        let position = checkpoint.position();
        let resumed = match self.seek {
            SeekMode::Offset => position.seek_offset(&mut reader),
            SeekMode::Lines => {
                reader
                    .rewind()
                    .map_err(|err| Error::io(Some(input), "seeking the input", err))?;
                position.seek_lines(&mut reader)
            }
            SeekMode::Content => position.seek_content(&mut reader),
        }
        .map_err(|err| err.with_path(input))?;
        if self.seek == SeekMode::Content {
            // It accepts any edit before the last finished line: the digest
            // of the bytes that were finished no longer says anything.
            checkpoint.forget_prefix();
        }
        if self.verify_prefix && self.seek != SeekMode::Content && !position.is_start() {
            let seek_err = |err| Error::io(Some(input), "seeking the input", err);
            reader.rewind().map_err(seek_err)?;
            check_prefix(&mut reader, &position, checkpoint.prefix())
                .map_err(|err| err.with_path(input))?;
            reader
                .seek(SeekFrom::Start(resumed.offset()))
                .map_err(seek_err)?;
        }
        let lines = self.line_reader(reader, resumed).path(input);
        self.drive(
            &mut checkpoint,
            lines,
            resumed,
            Some((input, input_len)),
            work,
        )
        .map_err(|err| err.with_path(input))
    }

    /// Runs the closure `task` (as in [`run`](Runner::run)) over the lines
    /// of a stream that cannot seek (stdin, a pipe, a decompressor), given
    /// from its first byte, with the checkpoint at `checkpoint`. The
    /// finished lines are skipped by counting them
    /// ([`Position::seek_lines`]); in [`retry_failed`](Runner::retry_failed)
    /// mode the stream is scanned for the failed lines.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::Runner;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let stream: &[u8] = b"a\nb\n"; // stdin.lock() in a real program
    /// let report = Runner::new().run_reader(stream, dir.path().join("stdin.checkpoint"), |line| {
    ///     println!("{}", line.as_str()?);
    ///     Ok(())
    /// })?;
    /// assert_eq!(report.done, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    pub fn run_reader<R: BufRead, F>(
        &self,
        reader: R,
        checkpoint: impl AsRef<Path>,
        task: F,
    ) -> Result<Report>
    where
        F: Fn(&Line<'_>) -> std::result::Result<(), BoxError> + Sync,
    {
        self.run_reader_task(reader, checkpoint, &FnTask(task))
    }

    /// Runs `task`, a [`Task`], over the lines of a stream, as
    /// [`run_reader`](Runner::run_reader) does.
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    pub fn run_reader_task<R: BufRead, T: Task>(
        &self,
        reader: R,
        checkpoint: impl AsRef<Path>,
        task: &T,
    ) -> Result<Report> {
        self.run_reader_with(reader, checkpoint.as_ref(), &mut SyncWork(task))
    }

    /// A run over the lines of a stream, whatever runs the tasks.
    fn run_reader_with<R: BufRead, W: Work>(
        &self,
        mut reader: R,
        checkpoint: &Path,
        work: &mut W,
    ) -> Result<Report> {
        self.check_outputs_supported::<W>()?;
        let mut checkpoint = self.open_checkpoint(checkpoint.to_path_buf())?;
        if self.retry_failed {
            checkpoint.prepare_retry(true)?;
            let source: FailedSource<'_, std::io::Empty, R> = FailedSource::Scan {
                lines: self.line_reader(reader, Position::start()),
                failed: checkpoint.failed()?,
            };
            return self.drive_failed(&mut checkpoint, source, None, work);
        }
        let resumed = match checkpoint.position().seek_lines(&mut reader) {
            // Stopped while the finished lines were skipped (an async
            // run's stream gone quiet).
            Err(err) if drive::is_read_stopped(&err) => {
                return self.stopped_at_start(&mut checkpoint);
            }
            resumed => resumed?,
        };
        let lines = self.line_reader(reader, resumed);
        self.drive(&mut checkpoint, lines, resumed, None, work)
    }

    /// Refuses outputs to a run whose tasks cannot write results (the
    /// async runner), before any file is touched.
    fn check_outputs_supported<W: Work>(&self) -> Result<()> {
        if W::OUTPUTS || self.outputs.is_empty() {
            return Ok(());
        }
        Err(Error::io(
            None,
            "starting the run",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the async runner has no outputs yet: use the sync runner (Runner::map)",
            ),
        ))
    }

    fn open_checkpoint(&self, path: PathBuf) -> Result<Checkpoint> {
        if let Some((index, count)) = self.shard {
            if index >= count {
                return Err(Error::InvalidShard { index, count });
            }
        }
        let mut checkpoint = self.checkpoint_options.clone().open(path)?;
        // All are checked before the first is attached (and cut back), so
        // a refusal changes no file.
        let mut seen = Vec::with_capacity(self.outputs.len());
        for (index, output) in self.outputs.iter().enumerate() {
            checkpoint.probe_output(index, output, &seen)?;
            seen.extend(crate::checkpoint::identity(output));
        }
        for output in &self.outputs {
            // The handles live on in the checkpoint, which the run appends
            // through.
            checkpoint.output(output)?;
        }
        // A run without the outputs the checkpoint records is refused
        // before its first line runs.
        checkpoint.check_outputs_attached()?;
        // The lines a checkpoint owns are recorded in it, so that it is never
        // reused by a run over other lines (another shard, or all of them).
        checkpoint.claim_shard(self.shard.unwrap_or((0, 1)))?;
        Ok(checkpoint)
    }

    fn line_reader<R: BufRead>(&self, reader: R, at: Position) -> LineReader<R> {
        LineReader::resume(reader, at).max_line_len(self.max_line_len)
    }
}
