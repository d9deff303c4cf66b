//! Benchmark 8: runner outputs (`Runner::output`, `Runner::map`).
//!
//! - An identity task (`out.write_all(line.raw())`) over 1,000,000 URL
//!   lines of 41 bytes into one output, with one worker (`Runner::new()`)
//!   and with `workers(2)`, against a plain `BufReader::read_until` +
//!   `BufWriter::write_all` loop writing the same bytes to a file, with no
//!   checkpoint. For reference, the same loop with an `fdatasync` of the
//!   file at the end (the runner's default durability syncs the output
//!   before a record covers it); the one-worker map with
//!   `Durability::NoSync` (no sync at all, as the plain loop); and the
//!   one-worker runner with no output and a no-op task (`Runner::run`):
//!   what the runner costs before any output.
//! - The size of the checkpoint file after the 1,000,000-line map, final
//!   and the largest seen after any sync of the run (goal: under 64 KiB).
//!
//! Run without `--bench` (as `cargo test --benches` does), it makes a
//! quick smoke run over 10,000 lines.
//!
//! Every run starts from a fresh checkpoint and a fresh output (and the
//! plain loop from a fresh file); their removal is not measured. The
//! opening of the checkpoint and the final sync that makes the run durable
//! are. Every run checks, inside the measured loop, that every line is done
//! and that the output is as long as the input. All read through a 64 KiB
//! `BufReader`, the runner's own buffer size, from the page cache, and
//! write into a temporary directory under the target directory, on the
//! real disk.
//!
//! After criterion's figures, the runner and the plain loop are timed
//! alternately (see `common::paired`). Read the printed "median ratio
//! baseline/candidate" as the runner's throughput as a fraction of the
//! plain loop's: 1.0 is as fast, above 1.0 is faster.
//!
//! The peak memory of a 10,000,000-line map is measured by
//! `benches/output_memory.sh`, which runs this binary with
//! `LINEMARK_OUTPUT_RSS` set: one workload, once, instead of criterion (see
//! `rss_main`).

mod common;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use linemark::{Durability, Event, Runner};

const LINES: u64 = 1_000_000;
/// Every generated line is this long, its `\n` included.
const LINE_LEN: u64 = 41;
const BUFFER: usize = 64 * 1024;
/// The goal for the checkpoint file's size.
const CHECKPOINT_LIMIT: u64 = 64 * 1024;

/// The environment variable that makes the binary run one workload for
/// `benches/output_memory.sh`.
const RSS_VAR: &str = "LINEMARK_OUTPUT_RSS";

/// Line `number` (1-based): a URL of 41 bytes that varies from line to
/// line (the Lehmer step of `common::line`).
///
/// `benches/output_memory.sh` generates the same bytes with awk.
fn url_line(number: u64) -> String {
    let field = number * 48_271 % 2_147_483_647;
    format!("https://example.org/item/{field:010}.html\n")
}

/// Writes lines `1..=count` to `path`.
fn generate(path: &Path, count: u64) {
    let write = || -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        for number in 1..=count {
            out.write_all(url_line(number).as_bytes())?;
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(())
    };
    write().unwrap_or_else(|err| panic!("generating {}: {err}", path.display()));
    assert_eq!(fs::metadata(path).unwrap().len(), count * LINE_LEN);
}

fn len_of(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .len()
}

/// The plain loop: each line read with `read_until` and written through a
/// `BufWriter`, no checkpoint; with `sync`, an `fdatasync` of the file at
/// the end. Returns the time of the run; `output` is removed first,
/// outside it.
fn plain_loop(input: &Path, output: &Path, sync: bool) -> Duration {
    common::remove_if_present(output);
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(BUFFER, File::open(input).unwrap());
    let mut writer = BufWriter::with_capacity(BUFFER, File::create(output).unwrap());
    let mut buf = Vec::new();
    let mut lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        writer.write_all(&buf).unwrap();
        lines += 1;
    }
    let file = writer.into_inner().unwrap();
    if sync {
        file.sync_data().unwrap();
    }
    drop(file);
    let elapsed = started.elapsed();
    let expected = len_of(input);
    assert_eq!(lines * LINE_LEN, expected);
    assert_eq!(len_of(output), expected);
    elapsed
}

/// How the runner runs in a measured map.
#[derive(Clone, Copy)]
struct Map {
    workers: usize,
    durability: Durability,
}

impl Map {
    const ONE: Map = Map {
        workers: 1,
        durability: Durability::DEFAULT_GROUP,
    };
    const TWO: Map = Map {
        workers: 2,
        durability: Durability::DEFAULT_GROUP,
    };
    const ONE_NO_SYNC: Map = Map {
        workers: 1,
        durability: Durability::NoSync,
    };
}

/// The identity map over `input` into `output`, from a fresh checkpoint and
/// output (removed first, outside the measured time). Returns the time of
/// the run.
fn map(input: &Path, checkpoint: &Path, output: &Path, how: Map) -> Duration {
    map_observed(input, checkpoint, output, how, None::<fn(&Event<'_>)>)
}

fn map_observed(
    input: &Path,
    checkpoint: &Path,
    output: &Path,
    how: Map,
    observer: Option<impl Fn(&Event<'_>) + Send + Sync + 'static>,
) -> Duration {
    common::remove_if_present(checkpoint);
    common::remove_if_present(output);
    let started = Instant::now();
    let mut runner = Runner::new()
        .checkpoint_path(checkpoint)
        .output(output)
        .workers(how.workers)
        .durability(how.durability);
    if let Some(observer) = observer {
        runner = runner.observer(observer);
    }
    let report = runner
        .map(input, |line, out| {
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    let elapsed = started.elapsed();
    let expected = len_of(input);
    assert_eq!((report.done, report.failed), (expected / LINE_LEN, 0));
    assert!(report.is_complete());
    assert_eq!(len_of(output), expected);
    elapsed
}

/// The runner with no output and a no-op task, one worker, from a fresh
/// checkpoint (removed first, outside the measured time).
fn run_no_output(input: &Path, checkpoint: &Path) -> Duration {
    common::remove_if_present(checkpoint);
    let started = Instant::now();
    let report = Runner::new()
        .checkpoint_path(checkpoint)
        .run(input, |_line| Ok(()))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.done, report.failed), (len_of(input) / LINE_LEN, 0));
    assert!(report.is_complete());
    elapsed
}

/// Sums the times of `iters` runs, for `Bencher::iter_custom`.
fn repeat(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn output(c: &mut Criterion) {
    let dir = common::bench_dir();
    let input = dir.path().join("urls.txt");
    // A quick smoke run under `cargo test --benches`.
    let lines = if common::is_bench_run() {
        LINES
    } else {
        10_000
    };
    generate(&input, lines);
    let checkpoint = dir.path().join("urls.txt.checkpoint");
    let output = dir.path().join("out.txt");
    let (input, checkpoint, output) = (input.as_path(), checkpoint.as_path(), output.as_path());

    let mut group = c.benchmark_group("output_identity_1m_lines");
    group
        .throughput(Throughput::Elements(lines))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("plain_read_until_bufwriter", |b| {
        b.iter_custom(|iters| repeat(iters, || plain_loop(input, output, false)));
    });
    group.bench_function("plain_read_until_bufwriter_fdatasync", |b| {
        b.iter_custom(|iters| repeat(iters, || plain_loop(input, output, true)));
    });
    for how in [Map::ONE, Map::TWO] {
        group.bench_with_input(
            BenchmarkId::new("map_workers", how.workers),
            &how,
            |b, &how| b.iter_custom(|iters| repeat(iters, || map(input, checkpoint, output, how))),
        );
    }
    group.bench_function("map_workers_1_no_sync", |b| {
        b.iter_custom(|iters| repeat(iters, || map(input, checkpoint, output, Map::ONE_NO_SYNC)));
    });
    group.bench_function("run_no_output_workers_1", |b| {
        b.iter_custom(|iters| repeat(iters, || run_no_output(input, checkpoint)));
    });
    group.finish();

    let rounds = 15;
    let plain = || plain_loop(input, output, false);
    let runner = |how| move || map(input, checkpoint, output, how);
    common::paired(
        "output_identity_1m_lines: map, 1 worker, against the plain loop",
        rounds,
        plain,
        runner(Map::ONE),
    );
    common::paired(
        "output_identity_1m_lines: map, workers(2), against the plain loop",
        rounds,
        plain,
        runner(Map::TWO),
    );
    common::paired(
        "output_identity_1m_lines: map, 1 worker, NoSync, against the plain loop",
        rounds,
        plain,
        runner(Map::ONE_NO_SYNC),
    );
    common::paired(
        "output_identity_1m_lines: map, 1 worker, against the plain loop with fdatasync",
        rounds,
        || plain_loop(input, output, true),
        runner(Map::ONE),
    );

    common::paired(
        "output_identity_1m_lines: run, no output, no-op, 1 worker, against the plain loop",
        rounds,
        plain,
        || run_no_output(input, checkpoint),
    );

    checkpoint_size(input, checkpoint, output);
}

/// Prints the size of the checkpoint file after the map, in each way it
/// runs, and the largest size seen after any sync of the run; asserts both
/// are under the goal.
fn checkpoint_size(input: &Path, checkpoint: &Path, output: &Path) {
    println!(
        "{:<36} {:>10} {:>12} {:>12}",
        "checkpoint after map", "lines", "final bytes", "max bytes"
    );
    let mut over = Vec::new();
    for (name, how) in [
        ("1 worker (default durability)", Map::ONE),
        ("workers(2) (default durability)", Map::TWO),
    ] {
        let max_len = Arc::new(AtomicU64::new(0));
        let observer = {
            let max_len = Arc::clone(&max_len);
            let checkpoint = checkpoint.to_path_buf();
            move |event: &Event<'_>| {
                if let Event::Synced { .. } = event {
                    if let Ok(meta) = fs::metadata(&checkpoint) {
                        max_len.fetch_max(meta.len(), Ordering::Relaxed);
                    }
                }
            }
        };
        map_observed(input, checkpoint, output, how, Some(observer));
        let final_len = len_of(checkpoint);
        let max_len = max_len.load(Ordering::Relaxed).max(final_len);
        println!(
            "{name:<36} {:>10} {final_len:>12} {max_len:>12}",
            len_of(input) / LINE_LEN
        );
        if final_len >= CHECKPOINT_LIMIT || max_len >= CHECKPOINT_LIMIT {
            over.push(format!(
                "{name}: final {final_len} bytes, max {max_len} bytes"
            ));
        }
    }
    assert!(
        over.is_empty(),
        "checkpoint over {CHECKPOINT_LIMIT} bytes: {over:?}"
    );
}

criterion_group!(benches, output);

fn main() {
    common::main_or_probe(RSS_VAR, rss_main, benches);
}

/// One workload, once, for `benches/output_memory.sh` to measure the peak
/// memory of:
///
/// ```text
/// LINEMARK_OUTPUT_RSS=<workload> output-<hash> <input> <checkpoint> <output>
/// ```
///
/// where `<workload>` is `map` (the identity map, one worker), `map2` (the
/// same with `workers(2)`), `plain` (the plain loop; `<checkpoint>` is
/// unused) or `run` (the runner with no output and a no-op task, one
/// worker; `<output>` is unused), and `<input>` holds lines of 41 bytes (any number: the binary
/// maps them all and checks the output has the input's length).
fn rss_main(workload: &OsString, args: &[OsString]) {
    let [input, checkpoint, output] = args else {
        panic!("usage: {RSS_VAR}=<workload> <bench> <input> <checkpoint> <output>");
    };
    let (input, checkpoint, output) = (Path::new(input), Path::new(checkpoint), Path::new(output));
    let elapsed = match workload.to_str() {
        Some("map") => map(input, checkpoint, output, Map::ONE),
        Some("map2") => map(input, checkpoint, output, Map::TWO),
        Some("plain") => plain_loop(input, output, false),
        Some("run") => run_no_output(input, checkpoint),
        _ => panic!("unknown workload {workload:?}"),
    };
    println!(
        "{}: {} lines, {:.1} ms",
        workload.to_string_lossy(),
        len_of(input) / LINE_LEN,
        elapsed.as_secs_f64() * 1e3
    );
}
