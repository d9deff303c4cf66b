//! `tally`: count the lines and bytes of a file, resumably.
//!
//! ```text
//! cargo run --release --example tally -- [--checkpoint PATH] [--workers N] [--durability MODE] INPUT
//! ```
//!
//! The task adds each line to two counters in memory and persists nothing
//! else: all that reaches the disk is the checkpoint (default
//! `INPUT.checkpoint`). Interrupted and run again, it counts only the lines
//! after the point the checkpoint reached; the totals, which include the
//! lines counted by earlier runs, come from the checkpoint's position.
//!
//! The benchmark suite uses it to measure the memory a long run takes
//! (`benches/tally_memory.sh`).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{Parser, ValueEnum};
use linemark::{Durability, Line, Runner};

/// Count the lines and bytes of a file, resumably.
#[derive(Parser, Debug)]
#[command(name = "tally")]
struct Args {
    /// The file to count.
    input: PathBuf,

    /// The checkpoint file [default: INPUT.checkpoint].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,

    /// Lines counted in parallel.
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,

    /// When the checkpoint's records reach the disk.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Group)]
    durability: DurabilityArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// Sync every line's commit.
    Strict,
    /// Sync groups of commits (100,000 commits or 200 ms).
    Group,
    /// Never sync explicitly.
    None,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let durability = match args.durability {
        DurabilityArg::Strict => Durability::EveryCommit,
        DurabilityArg::Group => Durability::default(),
        DurabilityArg::None => Durability::NoSync,
    };
    let mut runner = Runner::new().workers(args.workers).durability(durability);
    if let Some(path) = &args.checkpoint {
        runner = runner.checkpoint_path(path);
    }

    let lines = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let count = |line: &Line<'_>| -> Result<(), Infallible> {
        lines.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(line.raw().len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let report = match runner.run_task(&args.input, &count) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("tally: {err}");
            return ExitCode::from(2);
        }
    };

    println!(
        "this run:  {} lines, {} bytes ({} lines skipped, finished by earlier runs)",
        lines.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        report.skipped,
    );
    println!(
        "all runs:  {} lines, {} bytes",
        report.position.line(),
        report.position.offset()
    );
    println!(
        "elapsed:   {:.3} s; checkpoint {}",
        report.elapsed.as_secs_f64(),
        report.checkpoint.display()
    );
    ExitCode::SUCCESS
}
