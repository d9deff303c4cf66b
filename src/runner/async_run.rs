//! The async runner: a run whose tasks are futures on the caller's tokio
//! runtime.
//!
//! The run is the sync runner's, on a thread of its own (the driver): it
//! reads the input, keeps the window, skips, shards, and writes and syncs
//! the checkpoint, so that no file I/O ever blocks a runtime thread. Its
//! batches of lines go to the future the caller awaits, which runs up to
//! [`concurrency`](Runner::concurrency) of them at once (a line at a time
//! each, in order) and sends each result back. A stream input is read by
//! that future too, and handed to the driver in chunks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Duration;

use crate::out::Out;

use futures_util::future::{Either, FutureExt, select};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::error::{Error, Result};
use crate::line::{Line, LineReader, OwnedLine};
use crate::stop::StopToken;
use crate::task::{AsyncTask, BoxError, FnAsyncTask};

use super::batch::Batch;
use super::drive::{Feed, ReadStopped, RunState, Work};
use super::pool::{Attempted, Exec, LineTask, Shared};
use super::{Report, Runner};

/// The bytes of a stream input read at a time.
const CHUNK: usize = 64 << 10;

/// The most lines in flight an async run takes (see
/// [`Runner::concurrency`]).
const MAX_CONCURRENCY: usize = 1 << 24;

/// How often the driver, waiting for a stream's next chunk, looks at the
/// stop.
const STOP_CHECK: Duration = Duration::from_millis(20);

impl Runner {
    /// Lines in flight at once in an async run (default 64, at least 1, at
    /// most 2<sup>24</sup>):
    /// futures of the task awaiting at the same time. Thousands are fine;
    /// a line in flight costs its future and a copy of the line, not a
    /// thread.
    ///
    /// An async run keeps a [`window`](Runner::window) of at least four
    /// times this many lines unless one is set, and as many lines again as
    /// are in flight wait their turn on the runtime, so that a line that
    /// ends starts the next at once.
    #[must_use = "a builder method returns the changed builder"]
    pub fn concurrency(mut self, lines: usize) -> Runner {
        self.concurrency = lines.clamp(1, MAX_CONCURRENCY);
        self
    }

    /// Runs the async closure `task` over the lines of the file `input`,
    /// resuming from its checkpoint: [`run`](Runner::run) for futures.
    ///
    /// The closure takes an [`OwnedLine`] and returns a future of
    /// `Result<(), BoxError>`, so `?` works on any error, and
    /// `Err(permanent(error))` fails the line without retries. A type that
    /// implements [`AsyncTask`] runs with
    /// [`run_async_task`](Runner::run_async_task).
    ///
    /// Everything else is as in a sync run: the same checkpoint, verified
    /// resume, window, retries (waiting on tokio's timer), failed lines and
    /// [`retry_failed`](Runner::retry_failed), [`shard`](Runner::shard),
    /// [`StopToken`], observer events and [`Report`]. Up to
    /// [`concurrency`](Runner::concurrency) lines are in flight at once
    /// (the setting of [`workers`](Runner::workers) is for sync runs).
    /// The input is read, and the checkpoint written and synced, on a
    /// thread of the run's own, never on a runtime thread; the runtime
    /// needs its timer enabled (`#[tokio::main]` does), for the backoff:
    /// without it, a line's first retry fails it, with tokio's message.
    /// An [observer](Runner::observer) gets `Started` and `Retrying` on the
    /// runtime thread that runs the line, so keep it quick.
    ///
    /// The future owns a copy of the runner's settings, `input` and the
    /// closure, and is `Send` (the closure's futures must be): it can be
    /// stored, passed on, or spawned, given an owned `input` (a `PathBuf`
    /// or a `String`, not a borrowed one).
    ///
    /// # Cancellation
    ///
    /// Dropping the future cancels the run: the lines in progress are
    /// dropped with it, unrecorded, and done again by the next run, as
    /// after a kill (and so are lines finished a moment before, whose
    /// results had not reached the run's thread yet). The lines finished
    /// before are recorded, and the run's thread syncs the checkpoint and
    /// lets go of it a moment later; a new async run on the same checkpoint
    /// in this process waits for that (a process that exits at once loses
    /// the last `write_delay` of records, as after a kill). An error of the
    /// run (the checkpoint cannot be written, the input changed) cancels
    /// the lines in progress the same way. To stop and have the lines in
    /// progress finish, fire the [`StopToken`] and await the run; it also
    /// ends a wait for a stream's next line.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{OwnedLine, Runner};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let input = dir.path().join("urls.txt");
    /// std::fs::write(&input, "https://example.com/a\nhttps://example.com/b\n")?;
    /// let report = Runner::new()
    ///     .concurrency(100)
    ///     .run_async(&input, |line: OwnedLine| async move {
    ///         let url = line.as_str()?;
    ///         // ... `client.get(url).send().await?` ...
    /// #       assert!(url.starts_with("https://"));
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert!(report.is_complete());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    ///
    /// # Panics
    ///
    /// If the run's thread panics; a panic in the task only fails its
    /// line.
    pub fn run_async<P, F, Fut>(
        &self,
        input: P,
        task: F,
    ) -> impl Future<Output = Result<Report>> + Send + use<P, F, Fut>
    where
        P: AsRef<Path>,
        F: Fn(OwnedLine) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send,
    {
        let (runner, input) = (self.clone(), input.as_ref().to_path_buf());
        async move { runner.serve_file(input, &FnAsyncTask(task)).await }
    }

    /// Runs `task`, an [`AsyncTask`], over the lines of the file `input`,
    /// as [`run_async`](Runner::run_async) does.
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    ///
    /// # Panics
    ///
    /// As [`run_async`](Runner::run_async).
    pub fn run_async_task<'t, P: AsRef<Path>, T: AsyncTask>(
        &self,
        input: P,
        task: &'t T,
    ) -> impl Future<Output = Result<Report>> + Send + use<'t, P, T> {
        let (runner, input) = (self.clone(), input.as_ref().to_path_buf());
        async move { runner.serve_file(input, task).await }
    }

    /// The run of [`run_async_task`](Runner::run_async_task).
    async fn serve_file<T: AsyncTask>(self, input: PathBuf, task: &T) -> Result<Report> {
        let checkpoint = self.checkpoint_for(&input);
        let named: Arc<Path> = Arc::from(input.as_path());
        let drive = move |runner: &Runner, work: &mut AsyncWork| runner.run_file_with(&input, work);
        self.serve(
            task,
            Some(named),
            None::<tokio::io::Empty>,
            checkpoint,
            drive,
        )
        .await
    }

    /// Runs the async closure `task` (as in [`run_async`](Runner::run_async))
    /// over the lines of an async stream (`tokio::io::stdin()`, a socket, a
    /// decompressor), given from its first byte, with the checkpoint at
    /// `checkpoint`: [`run_reader`](Runner::run_reader) for futures. The
    /// stream is read by the future that runs the tasks and handed to the
    /// run's thread in chunks.
    ///
    /// # Examples
    ///
    /// ```
    /// use linemark::{OwnedLine, Runner};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let stream: &[u8] = b"a\nb\n"; // tokio::io::stdin() in a real program
    /// let checkpoint = dir.path().join("stdin.checkpoint");
    /// let report = Runner::new()
    ///     .run_reader_async(stream, &checkpoint, |line: OwnedLine| async move {
    ///         println!("{}", line.as_str()?);
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert_eq!(report.done, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    ///
    /// # Panics
    ///
    /// As [`run_async`](Runner::run_async).
    pub fn run_reader_async<R, P, F, Fut>(
        &self,
        reader: R,
        checkpoint: P,
        task: F,
    ) -> impl Future<Output = Result<Report>> + Send + use<R, P, F, Fut>
    where
        R: AsyncRead + Unpin + Send,
        P: AsRef<Path>,
        F: Fn(OwnedLine) -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send,
    {
        let (runner, checkpoint) = (self.clone(), checkpoint.as_ref().to_path_buf());
        async move {
            runner
                .serve_reader(reader, checkpoint, &FnAsyncTask(task))
                .await
        }
    }

    /// Runs `task`, an [`AsyncTask`], over the lines of an async stream, as
    /// [`run_reader_async`](Runner::run_reader_async) does.
    ///
    /// # Errors
    ///
    /// As [`run`](Runner::run).
    ///
    /// # Panics
    ///
    /// As [`run_async`](Runner::run_async).
    pub fn run_reader_async_task<'t, R, P, T>(
        &self,
        reader: R,
        checkpoint: P,
        task: &'t T,
    ) -> impl Future<Output = Result<Report>> + Send + use<'t, R, P, T>
    where
        R: AsyncRead + Unpin + Send,
        P: AsRef<Path>,
        T: AsyncTask,
    {
        let (runner, checkpoint) = (self.clone(), checkpoint.as_ref().to_path_buf());
        async move { runner.serve_reader(reader, checkpoint, task).await }
    }

    /// The run of [`run_reader_async_task`](Runner::run_reader_async_task).
    async fn serve_reader<R: AsyncRead + Unpin + Send, T: AsyncTask>(
        self,
        reader: R,
        checkpoint: PathBuf,
        task: &T,
    ) -> Result<Report> {
        let path = checkpoint.clone();
        let drive = move |runner: &Runner, work: &mut AsyncWork| {
            let chunks = work.chunks();
            runner.run_reader_with(chunks, &path, work)
        };
        self.serve(task, None, Some(reader), checkpoint, drive)
            .await
    }

    /// The sync runner that drives an async run, on its own thread: the
    /// same settings, with a stop of its own (which the user's token fires,
    /// and dropping the run's future).
    fn driver(&self) -> (Runner, StopToken) {
        let mut driver = self.clone();
        let stop = self.stop.child();
        driver.stop = stop.clone();
        driver.halt_fires_stop = true;
        driver.workers = self.concurrency;
        driver.window = Some(
            self.window
                .unwrap_or(Runner::DEFAULT_WINDOW.max(4 * self.concurrency)),
        );
        (driver, stop)
    }

    /// Starts the driver on its thread and runs the batches it sends until
    /// it ends the run.
    async fn serve<T, R, D>(
        self,
        task: &T,
        named: Option<Arc<Path>>,
        mut reader: Option<R>,
        checkpoint: PathBuf,
        drive: D,
    ) -> Result<Report>
    where
        T: AsyncTask,
        R: AsyncRead + Unpin + Send,
        D: FnOnce(&Runner, &mut AsyncWork) -> Result<Report> + Send + 'static,
    {
        let (driver, stop) = self.driver();
        let (orders_tx, mut orders) = unbounded_channel();
        let (results, results_rx) = mpsc::channel();
        let (reads_tx, mut reads) = unbounded_channel();
        let (chunks_tx, chunks_rx) = mpsc::channel();
        let mut work = AsyncWork {
            orders: orders_tx,
            reads: Some(reads_tx),
            chunks: Some(chunks_rx),
            results: results_rx,
            stop: stop.clone(),
            // A batch queued on the runtime for every one running, so that
            // a line that ends starts the next without a round trip through
            // the driver.
            limit: 2 * self.concurrency,
        };
        let (turn, before) = Turn::new(&checkpoint);
        let ended = Arc::clone(&turn.ended);
        let thread = std::thread::Builder::new()
            .name("linemark-async".into())
            .spawn(move || {
                let _turn = turn;
                wait_for(before);
                let report = drive(&driver, &mut work);
                // The checkpoint is closed, and its lock let go, by now.
                let _ = work.orders.send(Order::End(report));
            })
            .map_err(|err| Error::io(None, "starting the run's thread", err))?;
        // Dropping the run's future stops the driver, before the channels
        // it waits on close.
        let _cancel = Cancel(stop, ended);
        let task = AsyncLines { task, named };
        let reading = async {
            let Some(reader) = reader.as_mut() else {
                return std::future::pending().await;
            };
            while let Some(mut buf) = reads.recv().await {
                buf.clear();
                buf.reserve(CHUNK);
                let read = reader.read_buf(&mut buf).await.map(|_| buf);
                if chunks_tx.send(read).is_err() {
                    break;
                }
            }
            std::future::pending().await
        };
        let mut reading = pin!(reading);
        let mut shared: Option<Arc<Shared>> = None;
        let mut running = FuturesUnordered::new();
        let mut queued = VecDeque::new();
        let concurrency = self.concurrency;
        let ended = std::future::poll_fn(|cx| {
            let _: Poll<()> = reading.as_mut().poll(cx);
            loop {
                match orders.poll_recv(cx) {
                    Poll::Ready(Some(Order::Begin(begun))) => shared = Some(begun),
                    Poll::Ready(Some(Order::Run(batch))) => match &shared {
                        Some(shared) if running.len() < concurrency => {
                            running.push(run_batch(batch, Arc::clone(shared), &task, &results));
                        }
                        _ => queued.push_back(batch),
                    },
                    Poll::Ready(Some(Order::End(report))) => return Poll::Ready(Some(report)),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => break,
                }
            }
            while let Poll::Ready(Some(batch)) = running.poll_next_unpin(cx) {
                // The driver is gone only after it sent the end.
                let _ = results.send(batch);
                if let (Some(next), Some(shared)) = (queued.pop_front(), &shared) {
                    running.push(run_batch(next, Arc::clone(shared), &task, &results));
                }
            }
            Poll::Pending
        })
        .await;
        match ended {
            Some(report) => report,
            // The driver ended without a word: it panicked.
            None => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the run's thread sends its end before it returns"),
            },
        }
    }
}

/// From the driver to the future that runs the tasks.
enum Order {
    /// What the batches of the run share; sent before any batch.
    Begin(Arc<Shared>),
    Run(Batch),
    /// The run is over, and its checkpoint closed.
    End(Result<Report>),
}

/// One batch, a line at a time; the lines it finished before it ran long
/// go back early (see [`Batch::run`]).
async fn run_batch<T: AsyncTask>(
    batch: Batch,
    shared: Arc<Shared>,
    task: &AsyncLines<'_, T>,
    results: &mpsc::Sender<Batch>,
) -> Batch {
    let mut hand_back = |part: Batch| {
        let _ = results.send(part);
    };
    batch.run(&shared, task, Some(&mut hand_back)).await
}

/// Fires the driver's stop when the run's future is dropped.
struct Cancel(StopToken, Arc<Ended>);

impl Drop for Cancel {
    fn drop(&mut self) {
        self.1.dropped.store(true, Ordering::SeqCst);
        self.0.stop();
    }
}

/// An [`AsyncTask`] as the runner drives it.
struct AsyncLines<'t, T> {
    task: &'t T,
    /// The input file, named by every line (one allocation for all).
    named: Option<Arc<Path>>,
}

impl<'t, T: AsyncTask> LineTask for AsyncLines<'t, T> {
    type Error = T::Error;
    /// Boxed, as the task's future has no name to give here; a line that
    /// awaits anything costs far more than the allocation.
    type Started = Pin<Box<dyn Future<Output = Attempted<T::Error>> + Send + 't>>;

    fn start(&self, line: &Line<'_>, _out: &mut Out) -> Self::Started {
        let line = line.to_owned_in(self.named.as_ref());
        let task = self.task;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(line))) {
            Ok(future) => Box::pin(std::panic::AssertUnwindSafe(future).catch_unwind()),
            Err(panic) => Box::pin(std::future::ready(Err(panic))),
        }
    }

    fn finish(&self, started: Self::Started) -> impl Future<Output = Attempted<T::Error>> {
        started
    }

    fn ready(
        &self,
        started: Self::Started,
    ) -> std::result::Result<Attempted<T::Error>, Self::Started> {
        Err(started)
    }

    fn is_retryable(&self, error: &T::Error) -> bool {
        self.task.is_retryable(error)
    }

    fn retry_after(&self, error: &T::Error) -> Option<Duration> {
        self.task.retry_after(error)
    }

    async fn sleep(&self, stop: &StopToken, delay: Duration) -> bool {
        let timer = pin!(tokio::time::sleep(delay));
        let stopped = pin!(stop.stopped());
        matches!(select(timer, stopped).await, Either::Right(_))
    }
}

/// The driver's side of an async run: batches go to the runtime, results
/// come back.
pub(super) struct AsyncWork {
    orders: UnboundedSender<Order>,
    results: mpsc::Receiver<Batch>,
    /// The stream's chunks, for [`chunks`](AsyncWork::chunks).
    reads: Option<UnboundedSender<Vec<u8>>>,
    chunks: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    /// The driver's stop: a stream that has gone quiet does not hold it up.
    stop: StopToken,
    limit: usize,
}

impl AsyncWork {
    /// The stream input, as the runtime reads it.
    fn chunks(&mut self) -> Chunks {
        Chunks {
            reads: self.reads.take(),
            chunks: self.chunks.take(),
            buf: Vec::new(),
            pos: 0,
            spare: Vec::with_capacity(CHUNK),
            asked: false,
            eof: false,
            stop: self.stop.clone(),
        }
    }
}

impl Work for AsyncWork {
    const OUTPUTS: bool = false;

    fn in_order<R: BufRead>(
        &mut self,
        _runner: &Runner,
        _run: &mut RunState<'_, '_>,
        lines: LineReader<R>,
    ) -> std::result::Result<Result<()>, LineReader<R>> {
        Err(lines)
    }

    fn pump<F: Feed>(
        &mut self,
        runner: &Runner,
        run: &mut RunState<'_, '_>,
        source: &mut F,
    ) -> Result<()> {
        let shared = Arc::clone(&run.shared);
        let _ = self.orders.send(Order::Begin(Arc::clone(&shared)));
        let mut exec = Remote {
            work: self,
            shared,
            in_flight: 0,
            gone: false,
        };
        runner.pump(run, &mut exec, source)
    }
}

/// Batches run on the runtime, as the driving loop sees them.
struct Remote<'w> {
    work: &'w mut AsyncWork,
    shared: Arc<Shared>,
    in_flight: usize,
    /// The run's future was dropped: nothing comes back.
    gone: bool,
}

impl Remote<'_> {
    fn gone(&mut self) {
        self.gone = true;
        self.in_flight = 0;
    }
}

impl Exec for Remote<'_> {
    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn can_submit(&self) -> bool {
        !self.gone && self.in_flight < self.work.limit
    }

    fn submit(&mut self, batch: Batch) {
        if self.work.orders.send(Order::Run(batch)).is_ok() {
            self.in_flight += 1;
        } else {
            self.gone();
        }
    }

    fn next_result(&mut self, timeout: Duration) -> Option<Batch> {
        if self.gone {
            return None;
        }
        match self.work.results.recv_timeout(timeout) {
            Ok(batch) => {
                if !batch.continues() {
                    self.in_flight -= 1;
                }
                Some(batch)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.gone();
                None
            }
        }
    }

    fn runs_here(&self) -> bool {
        // The driver never runs a task: an async task runs on the runtime.
        false
    }

    fn run_here(&mut self, _batch: Batch) -> Batch {
        unreachable!("an async task runs on the runtime")
    }
}

impl Drop for Remote<'_> {
    fn drop(&mut self) {
        // The driving loop ended, maybe on an error: what still runs stops.
        self.shared.run_stop.stop();
    }
}

/// A stream read by the runtime, as a [`BufRead`] for the driver: the
/// next chunk is asked for as soon as one arrives, so reading keeps a
/// chunk ahead.
struct Chunks {
    reads: Option<UnboundedSender<Vec<u8>>>,
    chunks: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    buf: Vec<u8>,
    pos: usize,
    spare: Vec<u8>,
    /// A chunk was asked for and has not come.
    asked: bool,
    eof: bool,
    stop: StopToken,
}

impl Chunks {
    fn ask(&mut self) {
        if let Some(reads) = &self.reads {
            if reads.send(std::mem::take(&mut self.spare)).is_ok() {
                self.asked = true;
            }
        }
    }
}

impl io::Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let len = available.len().min(out.len());
        out[..len].copy_from_slice(&available[..len]);
        self.consume(len);
        Ok(len)
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() && !self.eof {
            if !self.asked {
                self.ask();
            }
            let gone = || io::Error::other("the async run ended");
            let chunks = self.chunks.as_ref().ok_or_else(gone)?;
            let chunk = loop {
                match chunks.recv_timeout(STOP_CHECK) {
                    Ok(chunk) => break chunk,
                    Err(RecvTimeoutError::Timeout) if self.stop.is_stopped() => {
                        // The chunk asked for may still come: it is not
                        // asked for again.
                        return Err(io::Error::other(ReadStopped));
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(gone()),
                }
            };
            self.asked = false;
            let chunk = chunk?;
            self.spare = std::mem::replace(&mut self.buf, chunk);
            self.pos = 0;
            if self.buf.is_empty() {
                self.eof = true;
            } else {
                self.ask();
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.buf.len());
    }
}

/// Async runs in this process on each checkpoint: a run whose future was
/// dropped goes on closing its checkpoint on its thread for a moment, and
/// a new run on the same checkpoint waits for that rather than find it
/// locked.
static TURNS: OnceLock<Mutex<HashMap<PathBuf, Vec<Arc<Ended>>>>> = OnceLock::new();

#[derive(Default)]
struct Ended {
    yes: Mutex<bool>,
    wake: Condvar,
    /// The run's future was dropped (or returned): its thread only closes
    /// the checkpoint now.
    dropped: AtomicBool,
}

/// A run's turn on its checkpoint, held by its driver thread.
struct Turn {
    key: PathBuf,
    ended: Arc<Ended>,
}

impl Turn {
    /// A new run's turn on `checkpoint`, and the runs on it in this
    /// process that have not ended.
    fn new(checkpoint: &Path) -> (Turn, Vec<Arc<Ended>>) {
        let key = std::path::absolute(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
        let ended = Arc::new(Ended::default());
        let mut turns = TURNS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let runs = turns.entry(key.clone()).or_default();
        let before = runs.clone();
        runs.push(Arc::clone(&ended));
        (Turn { key, ended }, before)
    }
}

/// Waits for each run of `before` whose future is gone to close the
/// checkpoint; a run still going holds the lock, and this one finds it
/// locked, as it would in another process.
fn wait_for(before: Vec<Arc<Ended>>) {
    for run in before {
        if !run.dropped.load(Ordering::SeqCst) {
            continue;
        }
        let mut yes = run.yes.lock().unwrap_or_else(PoisonError::into_inner);
        while !*yes {
            yes = run.wake.wait(yes).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let turns = TURNS.get_or_init(Mutex::default);
        let mut turns = turns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(runs) = turns.get_mut(&self.key) {
            runs.retain(|run| !Arc::ptr_eq(run, &self.ended));
            if runs.is_empty() {
                turns.remove(&self.key);
            }
        }
        drop(turns);
        *self
            .ended
            .yes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.ended.wake.notify_all();
    }
}
