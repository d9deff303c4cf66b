//! A resumable bulk downloader on linemark.
//!
//! ```sh
//! cargo run --release --example download -- --demo
//! cargo run --release --example download -- -o downloads --jobs 16 urls.txt
//! ```
//!
//! Each line of the list is `URL [NAME]`, over HTTP or HTTPS. The files
//! are fetched in parallel on keep-alive connections, retried with backoff
//! (or the server's `Retry-After`), and resumed by range;
//! a line is finished in the checkpoint only once its file is whole on
//! disk. Interrupt it (Ctrl-C, SIGTERM, SIGKILL, a reboot) and run the same
//! command again: it goes on where it stopped.
//!
//! On stderr: a progress bar (on a terminal) with the files done, failed
//! and the retries so far; each line that failed for good, as it fails; a
//! summary at the end, retries counted, the failed lines listed. A failed
//! attempt that will be retried gets a line of its own only with
//! `--verbose`; `--quiet` prints only fatal errors.
//!
//! Exit codes: 0 every line done, 1 some lines failed (`--retry-failed`
//! retries exactly them), 2 a usage error or linemark's own error (the
//! checkpoint, the list changed, ...), 3 a `--retry-failed` run left lines
//! that never ran (an earlier run stopped: run again without it), 130
//! stopped by a signal.

mod agents;
mod demo;
mod fetch;
mod input;
mod listing;
mod progress;
mod server;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use linemark::{Checkpoint, Event, Report, RetryPolicy, Runner, StopToken};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::fetch::{Fetcher, Publisher, Stats};
use crate::input::Plan;
use crate::progress::{Progress, Tracked, Verbosity};

/// Downloads every URL of a list into a directory, resumably.
///
/// Each line is a URL, optionally followed by whitespace and an output
/// file name; blank lines and lines starting with `#` are skipped. Run the
/// same command again after an interruption and it resumes.
///
/// Exit codes: 0 all lines done, 1 some lines failed, 2 usage or linemark
/// error, 3 --retry-failed left lines never run (run again without it),
/// 130 stopped by Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "download", version)]
struct Args {
    /// The list of URLs.
    #[arg(
        required_unless_present_any = ["demo", "serve"],
        conflicts_with_all = ["demo", "serve"],
    )]
    list: Option<PathBuf>,

    /// Output directory (created if missing).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    output: PathBuf,

    /// Downloads at once.
    #[arg(short, long, value_name = "N", default_value_t = 8)]
    jobs: usize,

    /// Retries of a failing download (connection errors, timeouts, 5xx,
    /// 429), with exponential backoff or the server's Retry-After.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,

    /// Connect and read timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,

    /// Retry only the lines recorded as failed.
    #[arg(long)]
    retry_failed: bool,

    /// Trust only the certificate authorities in this PEM file for HTTPS
    /// [default: the Mozilla roots built in].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// Base for URLs written without `scheme://`.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,

    /// The checkpoint file [default: LIST.checkpoint].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,

    /// No progress bar, no failed lines, no summary: only the exit code
    /// (and fatal errors).
    #[arg(short, long)]
    quiet: bool,

    /// Also print each failed attempt that will be retried, with its error
    /// and the wait before the next one. Without it retries are only
    /// counted, in the bar and the summary; lines that fail for good are
    /// printed either way.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,

    /// Do not sync files or the output directory. After a power loss a file
    /// recorded as done may be empty or short: only for throwaway output.
    #[arg(long)]
    no_fsync: bool,

    /// Download a few hundred generated files from a local faulty server
    /// (no network needed) into --dir, and verify them.
    #[arg(long)]
    demo: bool,

    /// The demo's folder.
    #[arg(long, value_name = "DIR", default_value = "linemark-demo")]
    dir: PathBuf,

    /// Serve the files of DIR on 127.0.0.1 (no faults) until Ctrl-C, for
    /// trying and measuring.
    #[arg(long, value_name = "DIR", conflicts_with = "demo")]
    serve: Option<PathBuf>,

    /// Port for --serve (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Serve HTTPS with this PEM certificate chain (with --serve and
    /// --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["serve", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Args {
    fn verbosity(&self) -> Verbosity {
        if self.quiet {
            Verbosity::Quiet
        } else if self.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if let Some(dir) = &args.serve {
        serve(&args, dir)
    } else if args.demo {
        run_demo(&args)
    } else {
        match &args.list {
            Some(list) => download(&args, list, &args.output, args.base_url.clone())
                .map(|outcome| outcome.exit_code()),
            None => Err("no list given".into()),
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("download: {err}");
            ExitCode::from(2)
        }
    }
}

/// What a download run ended with.
struct Outcome {
    report: Report,
    plan: Plan,
}

impl Outcome {
    fn exit_code(&self) -> ExitCode {
        if self.report.stopped {
            ExitCode::from(130)
        } else if self.report.input_left {
            ExitCode::from(3)
        } else if self.report.failed_total > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

fn download(
    args: &Args,
    list: &Path,
    out: &Path,
    base_url: Option<String>,
) -> Result<Outcome, Box<dyn Error>> {
    // Finished parts wait in `publisher` until the hook before each
    // checkpoint write syncs their data, renames them and syncs the
    // directory (with --no-fsync: only renames them), so the checkpoint
    // never records a file that is not whole and durable under its final
    // name.
    let publisher = Arc::new(Publisher::create(out, !args.no_fsync)?);
    let mut runner = Runner::new();
    if let Some(path) = &args.checkpoint {
        runner = runner.checkpoint_path(path);
    }
    let checkpoint = runner.checkpoint_for(list);
    let snapshot = Checkpoint::inspect(&checkpoint)?;
    let plan = Plan::scan(
        list,
        base_url.as_deref(),
        &checkpoint,
        &snapshot,
        args.retry_failed,
    )?;
    let jobs = args.jobs.max(1);
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let roots = args.cacert.as_deref().map(read_roots).transpose()?;
    let stop = StopToken::new();
    let stats = Arc::new(Stats::default());
    let progress = Arc::new(Progress::new(&plan, &stats, args.verbosity()));
    watch_signals(&stop, args.quiet)?;

    let fetcher = Fetcher::new(
        agents::Agents::new(timeout, roots),
        out.to_path_buf(),
        base_url,
        plan,
        stop.clone(),
        Arc::clone(&stats),
        Arc::clone(&publisher),
    )?;
    let retry = RetryPolicy::new().max_attempts(args.retries.saturating_add(1));
    runner = runner
        .workers(jobs)
        .retry(retry)
        .retry_failed(args.retry_failed)
        .stop_token(stop);
    if !args.quiet {
        // Quiet, the events would feed nothing: no observer, no event.
        let observer = Arc::clone(&progress);
        runner = runner.observer(move |event: &Event<'_>| observer.on_event(event));
    }
    let hook = Arc::clone(&publisher);
    runner = runner.before_checkpoint_write(move || hook.publish());
    let task = Tracked {
        task: fetcher,
        progress: &progress,
    };
    let result = runner.run_task(list, &task);
    // Parts finished but never recorded (a stop while earlier lines were in
    // flight, a failed checkpoint write) get their final names now if they
    // can; if not, the next run resumes them.
    let published = publisher.publish();
    progress.finish();
    let report = result?;
    published?;
    let plan = task.task.into_plan();
    if !args.quiet {
        // The failed lines are streamed from the failure log, never all
        // held: a run may leave millions of them.
        let failed = Checkpoint::inspect(&report.checkpoint)?.failed;
        let lines = if failed > 0 {
            Some(Checkpoint::inspect_failed(&report.checkpoint)?)
        } else {
            None
        };
        let summary =
            progress::summary(&report, &plan, &stats, failed, lines.into_iter().flatten())?;
        eprint!("{summary}");
        if report.stopped {
            eprintln!(
                "stopped. To resume, run the same command again:\n  {}",
                command_line(&[])
            );
        } else if report.input_left {
            eprintln!(
                "lines after line {} never ran (an earlier run stopped). To run them:\n  {}",
                report.position.line(),
                command_line_without("--retry-failed")
            );
        } else if failed > 0 {
            let again = if args.retry_failed {
                command_line(&[])
            } else {
                command_line(&["--retry-failed"])
            };
            eprintln!("to retry the failed lines:\n  {again}");
        }
    }
    Ok(Outcome { report, plan })
}

/// The certificates of a PEM file, for `--cacert`.
fn read_roots(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Box<dyn Error>> {
    let context = |err: &dyn std::fmt::Display| format!("--cacert {}: {err}", path.display());
    let pem = std::fs::read(path).map_err(|err| context(&err))?;
    let mut roots = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|err| context(&err))? {
            roots.push(cert);
        }
    }
    if roots.is_empty() {
        return Err(context(&"no certificate in the file").into());
    }
    Ok(roots)
}

fn run_demo(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let demo = demo::prepare(&args.dir)?;
    if !args.quiet {
        eprintln!(
            "demo: serving generated files at {} with injected faults;\n\
             downloading the list {} into {}. Press Ctrl-C, then run the same\n\
             command again to see it resume.",
            demo.base_url,
            demo.list.display(),
            demo.out.display()
        );
    }
    let outcome = download(args, &demo.list, &demo.out, Some(demo.base_url.clone()))?;
    if outcome.report.stopped {
        return Ok(outcome.exit_code());
    }
    let (matched, wrong) = demo::verify(&demo, &outcome.plan)?;
    if !args.quiet {
        eprintln!("verified: {matched} files match the server's checksums");
        for problem in &wrong {
            eprintln!("  {problem}");
        }
    }
    if wrong.is_empty() {
        Ok(outcome.exit_code())
    } else {
        Ok(ExitCode::from(1))
    }
}

/// Ctrl-C or SIGTERM stops the run gracefully: downloads in progress keep
/// their partial files, the checkpoint is synced. A second one exits at once
/// (the checkpoint is still valid: at worst a few lines are redone).
fn watch_signals(stop: &StopToken, quiet: bool) -> Result<(), Box<dyn Error>> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if stop.is_stopped() {
                    std::process::exit(130);
                }
                stop.stop();
                if !quiet {
                    eprintln!("\nstopping: keeping partial files, saving the checkpoint (again to quit at once)");
                }
            }
        })?;
    Ok(())
}

/// This process's command line, shell-quoted, without the option `flag`.
fn command_line_without(flag: &str) -> String {
    std::env::args()
        .filter(|arg| arg != flag)
        .map(|arg| shell_quote(&arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// This process's command line, shell-quoted, with `extra` arguments.
fn command_line(extra: &[&str]) -> String {
    std::env::args()
        .chain(extra.iter().map(|arg| arg.to_string()))
        .map(|arg| shell_quote(&arg))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `--serve DIR`: the test server, without faults, on the files of `dir`.
fn serve(args: &Args, dir: &Path) -> Result<ExitCode, Box<dyn Error>> {
    let server = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))
            };
            server::Server::start_tls(args.port, &read(cert)?, &read(key)?)?
        }
        _ => server::Server::start(args.port)?,
    };
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            server.add_file(&format!("/{name}"), std::fs::read(entry.path())?);
            count += 1;
        }
    }
    println!(
        "serving {count} files of {} at {} (Ctrl-C to stop)",
        dir.display(),
        server.url("/")
    );
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let _ = signals.forever().next();
    Ok(ExitCode::SUCCESS)
}
