//! The runner: drives a [`Task`] over the lines of an input, with a
//! checkpoint, retries, parallel workers, failed lines and graceful stop.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::{Checkpoint, CheckpointBuilder, Durability};
use crate::error::{Error, Result};
use crate::failed::FailedLine;
use crate::line::{Line, LineReader, LongLine, Next, Paused};
use crate::position::{Position, check_prefix};
use crate::progress::{Event, Observer};
use crate::retry::RetryPolicy;
use crate::stop::StopToken;
use crate::task::{BoxError, FnTask, Task, error_chain};
use crate::window::{Finished, Window};

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
    /// runs and were not read at all.
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
    /// ([`Runner::halt_after_failures`]).
    pub halted: bool,
    /// Everything before this position is finished (and durable).
    pub position: Position,
    /// Lines recorded as failed in the checkpoint, from all runs.
    pub failed_total: u64,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
}

/// One line, as `each` prints at the end of a run: `done 1990, skipped 0,
/// failed 10 (10 in all), retried 4, stopped at line 2000, 1.52 s`.
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
        } else {
            write!(f, "ended at line {}, ", self.position.line())?;
        }
        write!(f, "{:.2} s", self.elapsed.as_secs_f64())
    }
}

impl Report {
    /// Whether every line is done: the run reached the end and no line is
    /// recorded as failed.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        !self.stopped && self.failed_total == 0
    }
}

/// Drives a [`Task`] over the lines of an input, resuming from a
/// [`Checkpoint`].
///
/// - With one worker (the default) lines run strictly in order, on the
///   calling thread. The checkpoint's writer thread writes each finished
///   line within the [`write_delay`](Runner::write_delay) and syncs it
///   within the group's delay, even while the next line runs for long.
/// - With `n` workers, lines run on `n` threads and finish in any order. Up
///   to `2n` lines are handed to the workers at a time (running, queued, or
///   finished with the result on its way back), so after a kill at most
///   `2n` lines plus the commits of the last `write_delay` are done again
///   (after a power loss, plus the unsynced group). The
///   checkpoint records the low watermark (everything before it is finished)
///   plus the lines finished beyond it, so a restart skips exactly the
///   finished lines. At most [`window`](Runner::window) lines are in flight
///   or finished beyond the watermark; a stuck line holds new lines back once
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
/// let add = |line: &linemark::Line<'_>| {
///     let n: u64 = line.as_str()?.parse()?;
///     *sum.lock().unwrap() += n;
///     Ok(())
/// };
/// // A runner is a value: build it once, run it as often as needed.
/// let runner = Runner::new().workers(2);
/// let report = runner.run(&input, add)?;
/// assert_eq!((report.done, report.failed), (3, 0));
/// assert_eq!(*sum.lock().unwrap(), 6);
///
/// // A rerun finds nothing to do.
/// let again = runner.run(&input, add)?;
/// assert_eq!((again.done, again.skipped), (0, 0));
/// assert!(again.is_complete());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Runner {
    checkpoint: Option<PathBuf>,
    workers: usize,
    window: usize,
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
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("checkpoint", &self.checkpoint)
            .field("workers", &self.workers)
            .field("window", &self.window)
            .field("checkpoint_options", &self.checkpoint_options)
            .field("retry", &self.retry)
            .field("halt_after", &self.halt_after)
            .field("retry_failed", &self.retry_failed)
            .field("shard", &self.shard)
            .field("max_line_len", &self.max_line_len)
            .field("seek", &self.seek)
            .field("verify_prefix", &self.verify_prefix)
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
            window: Runner::DEFAULT_WINDOW,
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
        }
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
    #[must_use = "a builder method returns the changed builder"]
    pub fn workers(mut self, workers: usize) -> Runner {
        self.workers = workers.max(1);
        self
    }

    /// Most lines in flight or finished beyond the watermark (default
    /// [`DEFAULT_WINDOW`](Runner::DEFAULT_WINDOW)); at least the number of
    /// workers.
    #[must_use = "a builder method returns the changed builder"]
    pub fn window(mut self, lines: usize) -> Runner {
        self.window = lines.max(1);
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

    /// Receives progress [`Event`]s.
    #[must_use = "a builder method returns the changed builder"]
    pub fn observer(mut self, observer: impl Observer + Send + 'static) -> Runner {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Stops the run (like the stop token) once `failures` lines have
    /// failed in it. Default: failures never stop the run.
    #[must_use = "a builder method returns the changed builder"]
    pub fn halt_after_failures(mut self, failures: u64) -> Runner {
        self.halt_after = Some(failures.max(1));
        self
    }

    /// Reruns exactly the lines recorded as failed, and nothing else, when
    /// set. A line that succeeds is no longer failed; one that fails again
    /// keeps its record with the new error.
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

    /// Runs `task`, a [`Task`], over the lines of the file `input`, resuming
    /// from its checkpoint.
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    pub fn run_task<T: Task>(&self, input: impl AsRef<Path>, task: &T) -> Result<Report> {
        let input = input.as_ref();
        let in_err = |err| Error::io(Some(input), "opening the input", err);
        let file = File::open(input).map_err(in_err)?;
        let input_len = file.metadata().map_err(in_err)?.len();
        let mut checkpoint = self.open_checkpoint(self.checkpoint_for(input))?;
        // Committed lines are read back from the file for their digest, so
        // a commit costs a few stores, not a copy of the line.
        checkpoint.read_back_from(input, self.verify_prefix)?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        if self.retry_failed {
            let failed: Vec<FailedLine> = checkpoint.failed().collect();
            let source: FailedSource<'_, _, std::io::Empty> = FailedSource::Seek {
                reader: &mut reader,
                lines: failed.into(),
                buf: Vec::new(),
                limit: self.max_line_len,
            };
            return self
                .drive_failed(&mut checkpoint, source, Some(input_len), task)
                .map_err(|err| err.with_input_path(input));
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
        .map_err(|err| err.with_input_path(input))?;
        if self.verify_prefix && self.seek != SeekMode::Content && !position.is_start() {
            let seek_err = |err| Error::io(Some(input), "seeking the input", err);
            reader.rewind().map_err(seek_err)?;
            check_prefix(&mut reader, &position, checkpoint.prefix())
                .map_err(|err| err.with_input_path(input))?;
            reader
                .seek(SeekFrom::Start(resumed.offset()))
                .map_err(seek_err)?;
        }
        let lines = self.line_reader(reader, resumed).path(input);
        self.drive(&mut checkpoint, lines, resumed, Some(input_len), task)
            .map_err(|err| err.with_input_path(input))
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
        mut reader: R,
        checkpoint: impl AsRef<Path>,
        task: &T,
    ) -> Result<Report> {
        let mut checkpoint = self.open_checkpoint(checkpoint.as_ref().to_path_buf())?;
        if self.retry_failed {
            let failed: Vec<FailedLine> = checkpoint.failed().collect();
            let source: FailedSource<'_, std::io::Empty, R> = FailedSource::Scan {
                lines: self.line_reader(reader, Position::start()),
                failed: failed.into(),
            };
            return self.drive_failed(&mut checkpoint, source, None, task);
        }
        let resumed = checkpoint.position().seek_lines(&mut reader)?;
        let lines = self.line_reader(reader, resumed);
        self.drive(&mut checkpoint, lines, resumed, None, task)
    }

    fn open_checkpoint(&self, path: PathBuf) -> Result<Checkpoint> {
        if let Some((index, count)) = self.shard {
            if index >= count {
                return Err(Error::InvalidShard { index, count });
            }
        }
        let mut checkpoint = self.checkpoint_options.clone().open(path)?;
        // The lines a checkpoint owns are recorded in it, so that it is never
        // reused by a run over other lines (another shard, or all of them).
        checkpoint.claim_shard(self.shard.unwrap_or((0, 1)))?;
        Ok(checkpoint)
    }

    fn line_reader<R: BufRead>(&self, reader: R, at: Position) -> LineReader<R> {
        LineReader::resume(reader, at).max_line_len(self.max_line_len)
    }

    /// Deals with a line over the length limit, which never runs: not in
    /// the shard, recorded by an earlier run (checked to be the same line),
    /// or made a failed line now. The caller then finishes it.
    #[cold]
    #[inline(never)]
    fn long_line(&self, run: &mut RunState<'_, '_>, long: &LongLine) -> Result<()> {
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

    fn in_shard(&self, line: u64) -> bool {
        match self.shard {
            Some((index, count)) => (line - 1) % count == index,
            None => true,
        }
    }

    /// The normal run: every line after the resume point, in order of
    /// reading, through the window.
    fn drive<R: BufRead, T: Task>(
        &self,
        checkpoint: &mut Checkpoint,
        lines: LineReader<R>,
        resumed: Position,
        input_len: Option<u64>,
        task: &T,
    ) -> Result<Report> {
        let started = Instant::now();
        if resumed != checkpoint.position() {
            // Content seeking found the last line elsewhere, or a newline was
            // appended to it: record where the input really resumes.
            checkpoint.rebase(resumed)?;
        }
        let mut run = RunState::new(self, checkpoint, started);
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
    fn drive_in_order<R: BufRead, T: Task>(
        &self,
        run: &mut RunState<'_, '_>,
        mut lines: LineReader<R>,
        task: &T,
    ) -> Result<()> {
        // Lines at or below this one may be recorded as done or failed
        // beyond the resume point; past it, none is.
        let last_recorded = run.checkpoint.last_recorded_line();
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
                if !self.in_shard(number) {
                    run.checkpoint.commit_read_line(line)?;
                    return Ok(true);
                }
                if number <= last_recorded && is_recorded(run.checkpoint, line)? {
                    run.skipped += 1;
                    let end_offset = line.offset() + line.raw().len() as u64;
                    run.emit(&Event::Skipped {
                        line: number,
                        end_offset,
                    });
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
    fn drive_failed<S: BufRead + Seek, R: BufRead, T: Task>(
        &self,
        checkpoint: &mut Checkpoint,
        source: FailedSource<'_, S, R>,
        input_len: Option<u64>,
        task: &T,
    ) -> Result<Report> {
        let started = Instant::now();
        let mut run = RunState::new(self, checkpoint, started);
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
trait Feed {
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
    fn pump<T: Task, F: Feed>(
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
struct WindowedLines<'r, R> {
    runner: &'r Runner,
    lines: LineReader<R>,
    window: Window,
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
            let number = line.number();
            self.window.start(end);
            if !self.runner.in_shard(number) {
                run.finish(&mut self.window, end, false)?;
            } else if run.checkpoint.is_recorded(&line)? {
                run.skipped += 1;
                run.emit(&Event::Skipped {
                    line: number,
                    end_offset: end.offset(),
                });
                run.finish(&mut self.window, end, false)?;
            } else {
                exec.submit(&line, task, &run.shared);
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
struct FailedLines<'a, S, R> {
    source: FailedSource<'a, S, R>,
    in_flight: std::collections::HashMap<u64, FailedLine>,
    abandoned: bool,
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
enum FailedSource<'a, S, R> {
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
    fn next_line(&mut self) -> Result<Option<(FailedLine, Found<'_>)>> {
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
                        long.check(wanted.offset(), wanted.len(), wanted.digest())?;
                        Ok(Some((wanted, Found::TooLong(long))))
                    }
                }
            }
        }
    }
}

/// A failed line found again for a retry-failed run.
enum Found<'a> {
    Line(Line<'a>),
    /// Over the length limit: not read, not run.
    TooLong(LongLine),
}

/// Counters and the checkpoint of one run.
struct RunState<'r, 'c> {
    runner: &'r Runner,
    checkpoint: &'c mut Checkpoint,
    shared: Arc<Shared>,
    started: Instant,
    resumed_at: Position,
    done: u64,
    skipped: u64,
    failed: u64,
    stopped: bool,
    halted: bool,
    /// Every line was dealt with: the run did not stop early.
    reached_end: bool,
    last_synced: Position,
    syncs: u64,
}

impl<'r, 'c> RunState<'r, 'c> {
    fn new(runner: &'r Runner, checkpoint: &'c mut Checkpoint, started: Instant) -> Self {
        let last_synced = checkpoint.durable_position();
        let resumed_at = checkpoint.position();
        RunState {
            shared: Arc::new(Shared {
                observer: runner.observer.clone(),
                user_stop: runner.stop.clone(),
                run_stop: StopToken::new(),
                retry: runner.retry.clone(),
                retried: AtomicU64::new(0),
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
            syncs: 0,
        }
    }

    fn emit(&self, event: &Event<'_>) {
        self.shared.emit(event);
    }

    fn stopping(&self) -> bool {
        self.stopped || self.halted
    }

    /// Passes the user's stop on to the workers.
    fn check_stop(&mut self) {
        if !self.stopped && self.shared.user_stop.is_stopped() {
            self.stopped = true;
            self.shared.run_stop.stop();
        }
    }

    /// A line is finished: move the watermark, or record the line as done
    /// beyond it (`record_beyond`: lines skipped, failed or not in the shard
    /// are known without a `done` record).
    fn finish(&mut self, window: &mut Window, end: Position, record_beyond: bool) -> Result<()> {
        match window.finish(end.line()) {
            Finished::Advanced(watermark) => self.checkpoint.commit(watermark),
            Finished::Beyond if record_beyond => self.checkpoint.commit_done(end),
            Finished::Beyond => Ok(()),
        }
    }

    #[inline(always)]
    fn note_done(&mut self, line: u64, end_offset: u64) {
        self.done += 1;
        if self.shared.observer.is_some() {
            self.emit(&Event::Done { line, end_offset });
        }
    }

    fn record_failure(&mut self, failed: FailedLine) -> Result<()> {
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
    fn note_sync(&mut self) {
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

    fn finish_run(mut self) -> Result<Report> {
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

/// What the workers share with the runner.
struct Shared {
    observer: Option<Arc<dyn Observer + Send>>,
    user_stop: StopToken,
    /// Fired by the runner when the user's token fires, the halt policy
    /// applies or the run ends.
    run_stop: StopToken,
    retry: RetryPolicy,
    retried: AtomicU64,
}

impl Shared {
    fn emit(&self, event: &Event<'_>) {
        if let Some(observer) = &self.observer {
            observer.on_event(event);
        }
    }

    fn stopping(&self) -> bool {
        self.run_stop.is_stopped() || self.user_stop.is_stopped()
    }

    /// Runs the task on a line until it succeeds, fails for good, or the
    /// run stops. Backoff waits on `sleeper`, so a stop ends them at once.
    #[inline]
    fn attempt<T: Task>(&self, task: &T, line: &Line<'_>, sleeper: &StopToken) -> Outcome {
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
    fn after_failure<T: Task>(
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
fn is_recorded(checkpoint: &Checkpoint, line: &Line<'_>) -> Result<bool> {
    checkpoint.is_recorded(line)
}

/// One attempt; a panic in the task is caught and becomes a failure.
#[inline]
fn run_once<T: Task>(task: &T, line: &Line<'_>) -> std::thread::Result<Result<(), T::Error>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(line)))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string payload");
    format!("task panicked: {text}")
}

/// How a line's task ended.
#[derive(Debug)]
enum Outcome {
    Done,
    Failed {
        attempts: u32,
        error: String,
    },
    /// The run stopped before the line finished: leave it unrecorded.
    Abandoned,
}

struct JobResult {
    line: u64,
    outcome: Outcome,
}

struct Job {
    bytes: Vec<u8>,
    line: u64,
    offset: u64,
}

/// Runs tasks: on the calling thread with one worker, on a pool otherwise.
enum Exec<'a> {
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
    fn new<'scope, 'env, T: Task>(
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
                        let line = Line::new(&job.bytes, job.line, job.offset);
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

    fn can_submit(&self) -> bool {
        match self {
            Exec::Inline { results, .. } => results.is_empty(),
            Exec::Pool {
                in_flight, limit, ..
            } => in_flight < limit,
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            Exec::Inline { results, .. } => results.len(),
            Exec::Pool { in_flight, .. } => *in_flight,
        }
    }

    fn submit<T: Task>(&mut self, line: &Line<'_>, task: &T, shared: &Shared) {
        match self {
            Exec::Inline { results, .. } => {
                let outcome = shared.attempt(task, line, &shared.user_stop);
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

    fn next_result(&mut self, timeout: Duration) -> Option<JobResult> {
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
