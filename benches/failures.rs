//! Benchmark 9: failed lines at scale.
//!
//! Every line of the input fails permanently (the task returns
//! `Err(permanent(..))`, under `RetryPolicy::never()`), so every line ends
//! as a failed line: a `failed` record of the checkpoint while it is beyond
//! the position, then of the failure log (`CHECKPOINT.failures`). For
//! comparison, the same run where every line succeeds. The input is the
//! 60-byte lines of `common::line`.
//!
//! - Criterion: the all-failing run over 100,000 lines, with one worker and
//!   with `workers(4)`, and the all-succeeding run with one worker; 10
//!   samples.
//! - After criterion's figures, a table over 100,000 and 1,000,000 lines,
//!   one run each (not criterion):
//!   - the time of the last 10 % of the lines against the first 10 %
//!     (goal for the failing runs: within 1.5 ×). An `Observer` counts
//!     the `Event::Failed` events (`Event::Done` for the succeeding run)
//!     and notes the time at which the count reaches each tenth of the
//!     lines; the first tenth runs from `Event::Begin` (the checkpoint is
//!     open) to the event of line N/10, the last from the event that
//!     reaches 9N/10 to the last one. Constant memory: no per-line record.
//!     Also printed: the slowest tenth over the first ("worst") and each
//!     tenth's time;
//!   - the checkpoint file's size at the end and the largest seen at any
//!     `Event::Synced` (with the default durability, a sync at most every
//!     200 ms, so few are seen), and the failure log's size at the end;
//!   - the bytes the process wrote during the run, from `/proc/self/io`
//!     (Linux only; "-" elsewhere): `wchar`, the bytes given to `write`
//!     calls, which during a run are the checkpoint's and the failure
//!     log's (appends and compaction rewrites; the run has no output and
//!     prints nothing), and `write_bytes`, the bytes of the page cache it
//!     dirtied, which counts a page again each time an append dirties it
//!     after a sync (an overcount of small appends, the device's view
//!     rather than the file's). Each failed line's record is written once,
//!     to the log, so `wchar` is about the log's size: a compaction copies
//!     only the lines beyond the position. (Before the failure log, every
//!     compaction rewrote every failure recorded so far: `wchar` was 3
//!     times the final checkpoint's 104 MB at 1,000,000 lines.)
//!
//! Run without `--bench` (as `cargo test --benches` does), it makes a
//! quick smoke run over 2,000 lines.
//!
//! Every run starts from a fresh checkpoint; its removal is not measured.
//! The opening of the checkpoint and the final sync are. Every run checks,
//! inside the measured work, that every line failed (or succeeded), that
//! none was retried, and that the checkpoint records as many failed lines.
//!
//! The peak memory of the runs (goal: under 32 MiB with 1,000,000 failed
//! lines) is measured by `benches/failures_memory.sh`, which runs this
//! binary with `LINEMARK_FAILURES_RSS` set: one workload, once, instead of
//! criterion (see `rss_main`).

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use linemark::{Event, RetryPolicy, Runner, permanent};

/// The lines of the criterion runs.
const LINES: u64 = 100_000;
/// The sizes of the table printed after criterion's figures.
const TABLE_LINES: [u64; 2] = [100_000, 1_000_000];
/// The size of the smoke run under `cargo test --benches`.
const SMOKE_LINES: u64 = 2_000;
/// The error of every failing line: what a dead link answers.
const ERROR: &str = "404 Not Found";

/// The environment variable that makes the binary run one workload for
/// `benches/failures_memory.sh`.
const RSS_VAR: &str = "LINEMARK_FAILURES_RSS";

/// What every line's task does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fail,
    Succeed,
}

/// How a measured run runs.
#[derive(Clone, Copy)]
struct How {
    outcome: Outcome,
    workers: usize,
}

impl How {
    const FAIL: How = How {
        outcome: Outcome::Fail,
        workers: 1,
    };
    const FAIL_4: How = How {
        outcome: Outcome::Fail,
        workers: 4,
    };
    const SUCCEED: How = How {
        outcome: Outcome::Succeed,
        workers: 1,
    };
    const SUCCEED_4: How = How {
        outcome: Outcome::Succeed,
        workers: 4,
    };

    /// The workloads of `rss_main`, by name.
    const ALL: [(&'static str, How); 4] = [
        ("fail", How::FAIL),
        ("fail4", How::FAIL_4),
        ("ok", How::SUCCEED),
        ("ok4", How::SUCCEED_4),
    ];

    fn name(self) -> &'static str {
        match (self.outcome, self.workers) {
            (Outcome::Fail, 1) => "all fail, 1 worker",
            (Outcome::Fail, _) => "all fail, workers(4)",
            (Outcome::Succeed, 1) => "all succeed, 1 worker",
            (Outcome::Succeed, _) => "all succeed, workers(4)",
        }
    }
}

/// What an observer saw of a run, in constant memory.
struct Seen {
    /// When the run was started, before the checkpoint is opened.
    started: Instant,
    lines: u64,
    /// `Event::Failed` (or `Event::Done`) events so far.
    count: AtomicU64,
    /// Nanoseconds after `started` of `Event::Begin` (index 0) and of the
    /// event that brought `count` to `k * lines / 10` (index `k`).
    marks: [AtomicU64; 11],
    checkpoint: PathBuf,
    syncs: AtomicU64,
    max_len: AtomicU64,
}

impl Seen {
    fn new(started: Instant, lines: u64, checkpoint: &Path) -> Seen {
        assert!(lines >= 10, "a tenth of the lines is at least one line");
        Seen {
            started,
            lines,
            count: AtomicU64::new(0),
            marks: std::array::from_fn(|_| AtomicU64::new(0)),
            checkpoint: checkpoint.to_path_buf(),
            syncs: AtomicU64::new(0),
            max_len: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).expect("a run under 584 years")
    }

    fn on_event(&self, event: &Event<'_>, outcome: Outcome) {
        let counted = match (event, outcome) {
            (Event::Begin { .. }, _) => {
                self.marks[0].store(self.now(), Ordering::Relaxed);
                false
            }
            (Event::Failed { .. }, Outcome::Fail) | (Event::Done { .. }, Outcome::Succeed) => true,
            (Event::Synced { .. }, _) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                if let Ok(meta) = fs::metadata(&self.checkpoint) {
                    self.max_len.fetch_max(meta.len(), Ordering::Relaxed);
                }
                false
            }
            _ => false,
        };
        if counted {
            let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            // The event that brings the count into a new tenth.
            let tenth = count * 10 / self.lines;
            if tenth > (count - 1) * 10 / self.lines && tenth <= 10 {
                self.marks[tenth as usize].store(self.now(), Ordering::Relaxed);
            }
        }
    }

    fn mark(&self, index: usize) -> Duration {
        Duration::from_nanos(self.marks[index].load(Ordering::Relaxed))
    }

    /// The time of tenth `k` (1-based) of the lines.
    fn tenth(&self, k: usize) -> Duration {
        self.mark(k).saturating_sub(self.mark(k - 1))
    }

    /// The time of the last tenth over that of the first.
    fn ratio(&self) -> f64 {
        self.tenth(10).as_secs_f64() / self.tenth(1).as_secs_f64()
    }

    /// The time of the slowest tenth over that of the first.
    fn worst_ratio(&self) -> f64 {
        let worst = (1..=10).map(|k| self.tenth(k)).max().expect("ten tenths");
        worst.as_secs_f64() / self.tenth(1).as_secs_f64()
    }
}

/// The process's I/O counters (`/proc/self/io`, Linux only).
#[derive(Clone, Copy)]
struct Io {
    wchar: u64,
    write_bytes: u64,
}

impl Io {
    fn now() -> Option<Io> {
        let text = fs::read_to_string("/proc/self/io").ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        Some(Io {
            wchar: field("wchar")?,
            write_bytes: field("write_bytes")?,
        })
    }

    fn since(self, before: Io) -> Io {
        Io {
            wchar: self.wchar - before.wchar,
            write_bytes: self.write_bytes - before.write_bytes,
        }
    }
}

/// What a measured run returns.
struct Measured {
    elapsed: Duration,
    seen: Option<Arc<Seen>>,
    io: Option<Io>,
    checkpoint_len: u64,
    /// The failure log's size at the end (0 without one).
    log_len: u64,
}

/// One run over `input` (`lines` lines), from a fresh checkpoint (removed
/// first, outside the measured time); with `observe`, an observer notes the
/// tenths and the syncs, and the I/O counters are read around the run.
/// Checks that every line failed (or succeeded) and was tried once, and
/// that the checkpoint records them.
fn run(input: &Path, checkpoint: &Path, lines: u64, how: How, observe: bool) -> Measured {
    common::remove_if_present(checkpoint);
    common::remove_if_present(&log_of(checkpoint));
    let io_before = if observe { Io::now() } else { None };
    let started = Instant::now();
    let mut runner = Runner::new()
        .checkpoint_path(checkpoint)
        .workers(how.workers)
        .retry(RetryPolicy::never());
    let seen = observe.then(|| Arc::new(Seen::new(started, lines, checkpoint)));
    if let Some(seen) = &seen {
        let seen = Arc::clone(seen);
        let outcome = how.outcome;
        runner = runner.observer(move |event: &Event<'_>| seen.on_event(event, outcome));
    }
    let report = match how.outcome {
        Outcome::Fail => runner.run(input, |_line| Err(permanent(ERROR))),
        Outcome::Succeed => runner.run(input, |_line| Ok(())),
    }
    .unwrap();
    let elapsed = started.elapsed();
    let io = io_before.and_then(|before| Some(Io::now()?.since(before)));
    let failed = match how.outcome {
        Outcome::Fail => lines,
        Outcome::Succeed => 0,
    };
    assert_eq!(
        (
            report.done,
            report.failed,
            report.failed_total,
            report.retried
        ),
        (lines - failed, failed, failed, 0),
        "{report}"
    );
    assert!(!report.stopped);
    assert_eq!(report.position.line(), lines);
    let checkpoint_len = fs::metadata(checkpoint).unwrap().len();
    let log_len = fs::metadata(log_of(checkpoint)).map_or(0, |meta| meta.len());
    if let Some(seen) = &seen {
        assert_eq!(seen.count.load(Ordering::Relaxed), lines);
    }
    Measured {
        elapsed,
        seen,
        io,
        checkpoint_len,
        log_len,
    }
}

/// The failure log of the checkpoint at `checkpoint`.
fn log_of(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap().to_os_string();
    name.push(".failures");
    checkpoint.with_file_name(name)
}

impl Measured {
    /// A field of the I/O counters, or "-" where there are none.
    fn io(&self, field: fn(&Io) -> u64) -> String {
        self.io
            .as_ref()
            .map_or("-".into(), |io| field(io).to_string())
    }
}

/// Sums the times of `iters` runs, for `Bencher::iter_custom`.
fn repeat(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn failures(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("links.txt");
    let checkpoint = dir.path().join("links.txt.checkpoint");
    let (input, checkpoint) = (input.as_path(), checkpoint.as_path());
    // A quick smoke run under `cargo test --benches`.
    let lines = if common::is_bench_run() {
        LINES
    } else {
        SMOKE_LINES
    };
    common::generate(input, lines);

    let mut group = c.benchmark_group("failures_100k_lines");
    group
        .throughput(Throughput::Elements(lines))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (id, how) in [
        (BenchmarkId::new("all_fail_workers", 1), How::FAIL),
        (BenchmarkId::new("all_fail_workers", 4), How::FAIL_4),
        (BenchmarkId::new("all_succeed_workers", 1), How::SUCCEED),
    ] {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                repeat(iters, || run(input, checkpoint, lines, how, false).elapsed)
            });
        });
    }
    group.finish();

    let sizes: &[u64] = if common::is_bench_run() {
        &TABLE_LINES
    } else {
        &[SMOKE_LINES]
    };
    table(dir.path(), sizes);
}

/// One run of each kind over each size, observed: the tenths, the
/// checkpoint's size and the bytes written.
fn table(dir: &Path, sizes: &[u64]) {
    let input = dir.join("table.txt");
    let checkpoint = dir.join("table.txt.checkpoint");
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>10} {:>6} {:>6} {:>12} {:>12} {:>12} {:>6} {:>13} {:>13}",
        "run",
        "lines",
        "run ms",
        "first ms",
        "last ms",
        "ratio",
        "worst",
        "final bytes",
        "max bytes",
        "log bytes",
        "syncs",
        "wchar",
        "write_bytes"
    );
    for &lines in sizes {
        common::generate(&input, lines);
        for how in [How::FAIL, How::FAIL_4, How::SUCCEED] {
            let measured = run(&input, &checkpoint, lines, how, true);
            println!("{}", row(how.name(), lines, &measured));
            let seen = measured.seen.as_ref().expect("observed");
            println!("    tenths (ms): {}", tenths_ms(seen, " "));
        }
    }
    println!(
        "ratio: last tenth / first tenth of the lines (goal for failing runs: <= 1.5); \
         worst: slowest tenth / first tenth; \
         syncs: Event::Synced seen; wchar, write_bytes: /proc/self/io during the run"
    );
}

fn row(name: &str, lines: u64, measured: &Measured) -> String {
    let seen = measured.seen.as_ref().expect("observed");
    let (first, last) = (seen.tenth(1), seen.tenth(10));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{name:<24} {lines:>9} {:>9.1} {:>10.1} {:>10.1} {:>6.2} {:>6.2} {:>12} {:>12} {:>12} {:>6} {:>13} {:>13}",
        ms(measured.elapsed),
        ms(first),
        ms(last),
        seen.ratio(),
        seen.worst_ratio(),
        measured.checkpoint_len,
        seen.max_len
            .load(Ordering::Relaxed)
            .max(measured.checkpoint_len),
        measured.log_len,
        seen.syncs.load(Ordering::Relaxed),
        measured.io(|io| io.wchar),
        measured.io(|io| io.write_bytes),
    )
}

criterion_group!(benches, failures);

fn main() {
    common::main_or_probe(RSS_VAR, rss_main, benches);
}

/// One workload, once, for `benches/failures_memory.sh` to measure the
/// peak memory of:
///
/// ```text
/// LINEMARK_FAILURES_RSS=<workload> failures-<hash> <input> <checkpoint>
/// ```
///
/// where `<workload>` is `fail` (every line fails permanently, one worker),
/// `fail4` (the same with `workers(4)`), `ok` (every line succeeds, one
/// worker) or `ok4`, and `<input>` holds lines of 60 bytes (any number).
/// Prints one line of `key=value` fields: the figures of the table of the
/// criterion run.
fn rss_main(workload: &OsString, args: &[OsString]) {
    let [input, checkpoint] = args else {
        panic!("usage: {RSS_VAR}=<workload> <bench> <input> <checkpoint>");
    };
    let (input, checkpoint) = (Path::new(input), Path::new(checkpoint));
    let how = How::ALL
        .into_iter()
        .find(|(name, _)| workload.to_str() == Some(name))
        .unwrap_or_else(|| panic!("unknown workload {workload:?}"))
        .1;
    let input_len = fs::metadata(input).unwrap().len();
    assert_eq!(input_len % common::LINE_LEN, 0);
    let lines = input_len / common::LINE_LEN;
    let measured = run(input, checkpoint, lines, how, true);
    let seen = measured.seen.as_ref().expect("observed");
    let (first, last) = (seen.tenth(1), seen.tenth(10));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} lines={lines} run_ms={:.1} first_ms={:.1} last_ms={:.1} ratio={:.2} worst_ratio={:.2} \
         checkpoint_bytes={} max_bytes={} log_bytes={} syncs={} wchar={} write_bytes={} \
         tenths_ms={}",
        workload.to_string_lossy(),
        ms(measured.elapsed),
        ms(first),
        ms(last),
        seen.ratio(),
        seen.worst_ratio(),
        measured.checkpoint_len,
        seen.max_len
            .load(Ordering::Relaxed)
            .max(measured.checkpoint_len),
        measured.log_len,
        seen.syncs.load(Ordering::Relaxed),
        measured.io(|io| io.wchar),
        measured.io(|io| io.write_bytes),
        tenths_ms(seen, ","),
    );
}

/// The times of the ten tenths of the lines, in milliseconds.
fn tenths_ms(seen: &Seen, separator: &str) -> String {
    let tenths: Vec<String> = (1..=10)
        .map(|k| format!("{:.1}", seen.tenth(k).as_secs_f64() * 1e3))
        .collect();
    tenths.join(separator)
}
