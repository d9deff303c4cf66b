//! Inputs shared by the benchmarks: generated deterministically into
//! temporary directories under Cargo's target directory, removed on drop and
//! never committed.
//!
//! The temporary directories are on the same disk as the target directory,
//! not on a possible tmpfs, so `fdatasync` costs what it costs on a real
//! disk.

// Each benchmark binary compiles its own copy of this module and uses a part
// of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use linemark::{Position, digest};
use tempfile::TempDir;

/// Every generated line is this long, its `\n` included, so the position
/// after any line is known without reading the input.
pub const LINE_LEN: u64 = 60;

/// Line `number` (1-based) of every generated input: the number, then a
/// URL-like field that varies from line to line, so that all lines are
/// distinct and a scan by content never finds a duplicate.
///
/// `benches/tally_memory.sh` generates the same bytes with awk.
pub fn line(number: u64) -> String {
    // A Lehmer generator step: cheap, deterministic, exact in awk's doubles.
    let field = number * 48_271 % 2_147_483_647;
    format!("{number:010} https://example.org/records/item-{field:010}.json\n")
}

/// Writes lines `1..=count` to `path`.
pub fn generate(path: &Path, count: u64) {
    let write = || -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        for number in 1..=count {
            out.write_all(line(number).as_bytes())?;
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(())
    };
    write().unwrap_or_else(|err| panic!("generating {}: {err}", path.display()));
    assert_eq!(fs::metadata(path).unwrap().len(), count * LINE_LEN);
}

/// The position of a job that has finished lines `1..=done`.
pub fn position_after(done: u64) -> Position {
    if done == 0 {
        return Position::start();
    }
    Position::from_parts(
        done * LINE_LEN,
        done,
        LINE_LEN,
        digest(line(done).as_bytes()),
    )
    .expect("a generated position is valid")
}

/// A new temporary directory under the target directory.
pub fn bench_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("linemark-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory under the target directory")
}

/// Removes a file that may not exist, so a run starts from a fresh
/// checkpoint.
pub fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => panic!("removing {}: {err}", path.display()),
    }
}

/// A task that does nothing and never fails.
pub fn no_op(_line: &linemark::Line<'_>) -> Result<(), std::convert::Infallible> {
    Ok(())
}

/// Whether the binary runs as a benchmark (`cargo bench` passes `--bench`),
/// not as a quick test (`cargo test --benches`).
pub fn is_bench_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// Times `baseline` and `candidate` alternately, `rounds` times each, and
/// prints the median of each and the median of the per-round ratios
/// `baseline / candidate` (the candidate's throughput as a fraction of the
/// baseline's). Alternating cancels the slow drifts in machine load that
/// measuring one benchmark after the other, as criterion does, cannot.
/// Each closure returns the time of one run.
pub fn paired(
    label: &str,
    rounds: usize,
    mut baseline: impl FnMut() -> Duration,
    mut candidate: impl FnMut() -> Duration,
) {
    if !is_bench_run() {
        return;
    }
    let mut base = Vec::with_capacity(rounds);
    let mut cand = Vec::with_capacity(rounds);
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let b = baseline();
        let c = candidate();
        ratios.push(b.as_secs_f64() / c.as_secs_f64());
        base.push(b);
        cand.push(c);
    }
    println!(
        "{label}: paired over {rounds} alternating rounds: baseline median {:?}, \
         candidate median {:?}, median ratio baseline/candidate {:.3}",
        median(&mut base),
        median(&mut cand),
        median(&mut ratios),
    );
}

fn median<T: PartialOrd + Copy>(values: &mut [T]) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// A benchmark binary's `main`: with the environment variable `var` set,
/// one workload (its value) run once by `probe`, given the binary's
/// arguments, for a memory script to measure; otherwise the criterion
/// groups of `benches`, as `criterion_main!` runs them.
pub fn main_or_probe(var: &str, probe: fn(&OsString, &[OsString]), benches: fn()) {
    if let Some(workload) = std::env::var_os(var) {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        probe(&workload, &args);
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
