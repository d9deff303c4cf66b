//! `each`: run a command for every line of a file, resumably.
//!
//! ```text
//! cargo run --release --example each -- [OPTIONS] INPUT -- CMD [ARGS...]
//! ```
//!
//! Runs `CMD` once per line of `INPUT`: a file, or `-` for standard input,
//! or a pipe (a FIFO, `/dev/stdin`, a process substitution `<(...)`).
//! Every `{}` in `CMD` and `ARGS` is replaced by the line (without its
//! `\n`, and without a `\r` before it); when there is no `{}`, the line is
//! appended as the last argument. A line that is not valid UTF-8 is passed
//! as the raw bytes it is, an empty line as an empty argument. The command
//! is started directly (no shell), with stdin from `/dev/null` (never
//! `each`'s own, which may hold the lines) and stdout inherited (or, with
//! `--output`, captured); its stderr is forwarded to ours and its last 500
//! bytes are kept as the error of a failed line.
//!
//! A command that exits with a non-zero status (or is killed by a signal)
//! is a failed attempt. It is tried again `--retries` more times (default
//! 0), with exponential backoff from 0.5 s, then recorded as failed in the
//! checkpoint with its exit status and stderr tail, and the run goes on.
//!
//! Progress goes to a checkpoint file (default `INPUT.checkpoint`, or
//! `INPUT.shard-I-of-N.checkpoint` with `--shard`). Run the same command
//! again after a crash, a kill or Ctrl-C and it continues where it stopped:
//! lines whose commit reached the disk are skipped, the others are run again
//! (at least once; see `--durability`).
//!
//! With `--output FILE`, each command's stdout is captured and appended to
//! `FILE` as one block (the bytes as they are: no newline is added), when
//! its line is recorded as finished, and exactly once per line, across
//! kills, crashes and reruns: the checkpoint records how long `FILE` is
//! with every commit, and a rerun first cuts `FILE` back to that length,
//! dropping the results of the lines it runs again. A command may still
//! run twice after a crash; its stdout lands once. The stdout of a failed
//! attempt is discarded, a line that fails for good writes nothing, and
//! `--retry-failed` appends the results of the lines that succeed then. With
//! `--jobs`, blocks go in the order lines finish; `--keep-order` puts them
//! in input order (a block waits in memory for the lines before it). Every
//! run over a checkpoint must name the same `--output` (a plain rerun too:
//! `each` refuses to run without it rather than lose results), and nothing
//! else may write to `FILE` meanwhile.
//!
//! An input that cannot seek (`-`, a pipe, a device) has no place for a
//! checkpoint next to it, so it needs `--checkpoint PATH`; without one,
//! `each` stops before it creates or reads anything. To resume, feed it the
//! same lines again from the first: the finished ones are counted, the last
//! of them is checked against the checkpoint, and they are skipped. While
//! `each` waits for a line, a stop (Ctrl-C) takes effect when the next line
//! arrives or the stream ends. `--status` reads only the checkpoint, never
//! the stream.
//!
//! Options:
//!
//! - `-j, --jobs N`: lines run in parallel (default 1: in order).
//! - `--retries N`: extra attempts after the first (default 0).
//! - `--output FILE`: append each command's stdout to `FILE`, exactly once
//!   per finished line (see above), instead of passing it through. `FILE`
//!   is a regular file (created if missing; bytes it holds stay before the
//!   results).
//! - `--keep-order`: with `--output`, append the results in input order
//!   rather than in the order lines finish.
//! - `--checkpoint PATH`: the checkpoint file; required when `INPUT` is `-`
//!   or a pipe.
//! - `--retry-failed`: run exactly the lines recorded as failed, nothing else.
//! - `--shard I/N`: only lines whose 0-based index is `I` modulo `N`, with a
//!   checkpoint of its own; shards `0/N` to `N-1/N` cover every line once.
//! - `--status`: print the progress recorded in the checkpoint, the outputs
//!   with the length recorded (what holds the results of the finished
//!   lines) and the failed lines with their errors, run nothing. Takes no
//!   lock, so it works while a run is going on.
//! - `--durability strict|group|none`: `strict` syncs every commit (a crash
//!   redoes at most the lines in progress); `group` (default) syncs a
//!   finished line at most `--sync-ms T` after it finished (default 200),
//!   or once `--sync-records N` commits gathered (default 100000), even
//!   while every command runs for long; `none` leaves syncing to the OS.
//!   With `--output`, `FILE` is synced before a synced record covers its
//!   bytes (with `none`, a power loss may leave it shorter than recorded,
//!   and the next run refuses it).
//! - `--write-ms T`: a finished line is written to the checkpoint file (not
//!   synced) at most `T` ms after it finished (default 10; 0 writes each at
//!   once), so a kill of `each` itself redoes the lines in progress and the
//!   lines finished in the last `T` ms, and no more.
//! - `--no-verify-prefix`: on resume, check only the last finished line,
//!   not the whole finished part of the input (see `Runner::verify_prefix`):
//!   a resume as fast at the end of a huge file as at its start, but an
//!   edit of the finished lines that keeps the last one in place goes
//!   unnoticed, and one that changes how many they are makes lines run
//!   twice or never.
//! - `-q, --quiet`: no progress bar, failure messages or summary.
//!
//! Ctrl-C or SIGTERM stops gracefully: no new line starts, the commands
//! running finish, the checkpoint is synced, and the command to resume is
//! printed. (In a terminal Ctrl-C reaches the commands too; one that dies of
//! it is left unrecorded and runs again next time.) A second Ctrl-C exits at
//! once (the lines in progress are redone next time). A command killed by
//! SIGINT or SIGTERM stops the run the same way, as in a shell script.
//!
//! Exit status: 0 every line is done; 1 some lines are recorded as failed
//! (in this run or an earlier one); 2 usage error or linemark error (the
//! checkpoint is locked by another run, the input changed, ...); 3 a
//! `--retry-failed` run left lines that never ran (an earlier run stopped
//! before the end: run again without `--retry-failed`); 130 stopped by a
//! signal.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use linemark::{Checkpoint, Durability, Event, Line, Out, RetryPolicy, Runner, StopToken, Task};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How much of a failed command's stderr is kept as its error.
const STDERR_TAIL: usize = 500;

/// Exit status when the run was stopped by a signal (128 + SIGINT).
const EXIT_STOPPED: u8 = 130;

/// Exit status of a `--retry-failed` run that leaves lines after the
/// position which never ran.
const EXIT_INPUT_LEFT: u8 = 3;

/// Run a command for every line of a file, resumably.
#[derive(Parser, Debug)]
#[command(
    name = "each",
    version,
    after_help = "Every {} in CMD and ARGS is replaced by the line; without {}, the line is the \
                  last argument.\nWith --output FILE, the commands' stdout goes to FILE, once per \
                  line even after a kill: a rerun cuts FILE back to what the checkpoint \
                  records.\nExit status: 0 all lines done, 1 some lines failed, 2 usage or \
                  checkpoint error, 3 --retry-failed left lines never run (run again \
                  without it), 130 stopped by a signal."
)]
struct Args {
    /// The input, one job per line: a file, or `-` for standard input, or a
    /// pipe (these two need --checkpoint).
    input: PathBuf,

    /// The command and its arguments.
    #[arg(
        last = true,
        value_name = "CMD",
        required_unless_present = "status",
        num_args = 1..,
    )]
    command: Vec<OsString>,

    /// Lines run in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,

    /// Extra attempts for a failing line, after the first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,

    /// Capture each command's stdout and append it to FILE, exactly once
    /// per finished line, even across kills and reruns (a failed attempt's
    /// stdout is discarded). Every run over the checkpoint names the same
    /// FILE.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// With --output: append the results in input order, not in the order
    /// lines finish.
    #[arg(long, requires = "output")]
    keep_order: bool,

    /// The checkpoint file [default: INPUT.checkpoint; required when INPUT
    /// is `-` or a pipe].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,

    /// Run exactly the lines recorded as failed, and nothing else.
    #[arg(long)]
    retry_failed: bool,

    /// Process only the lines whose 0-based index is I modulo N.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<(u64, u64)>,

    /// Print the recorded progress and failed lines; run nothing.
    #[arg(long, conflicts_with = "retry_failed")]
    status: bool,

    /// When the checkpoint's records reach the disk.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Group)]
    durability: DurabilityArg,

    /// With group durability: sync after this many commits [default: 100000].
    #[arg(long, value_name = "N")]
    sync_records: Option<u32>,

    /// With group durability: sync a finished line at most this long after
    /// it finished, whatever the commands still running do [default: 200].
    #[arg(long, value_name = "MS")]
    sync_ms: Option<u64>,

    /// Write a finished line to the checkpoint file (not synced) at most
    /// this long after it finished: what a kill of this process can redo
    /// besides the lines in progress (0: write each at once).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    write_ms: u64,

    /// On resume, check only the last finished line, not the whole
    /// finished part of the input: faster on huge files, but an edit of
    /// the finished lines that keeps the last one in place goes unnoticed.
    #[arg(long)]
    no_verify_prefix: bool,

    /// No progress bar, failure messages or summary.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// Sync every commit.
    Strict,
    /// Sync groups of commits.
    Group,
    /// Never sync explicitly.
    None,
}

fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let usage = || format!("expected I/N with I < N, like 0/4, not {text:?}");
    let (index, count) = text.split_once('/').ok_or_else(usage)?;
    let index: u64 = index.trim().parse().map_err(|_| usage())?;
    let count: u64 = count.trim().parse().map_err(|_| usage())?;
    if index >= count {
        return Err(usage());
    }
    Ok((index, count))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("each: {err}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Before anything is opened or created: a stream opened too early is
    // lines taken, a checkpoint made in the wrong place is litter.
    let input = Input::of(&args.input)?;
    let mut runner = Runner::new();
    if let Some((index, count)) = args.shard {
        runner = runner.shard(index, count);
    }
    match &args.checkpoint {
        Some(path) => {
            runner = runner.checkpoint_path(path);
        }
        None => input.check_default_checkpoint(&runner.default_checkpoint_path(&input.path))?,
    }
    let checkpoint = runner.checkpoint_for(&input.path);
    if args.status {
        print_status(&input, &checkpoint)?;
        return Ok(ExitCode::SUCCESS);
    }

    let program = &args.command[0];
    if !has_placeholder(program) && !is_runnable(program) {
        return Err(format!("{}: command not found", program.to_string_lossy()).into());
    }
    match &args.output {
        Some(output) => {
            check_output(output)?;
            runner = runner.output(output).keep_order(args.keep_order);
        }
        None => check_no_output_recorded(&checkpoint)?,
    }
    let retry = RetryPolicy::new().max_attempts(args.retries.saturating_add(1));
    runner = runner
        .workers(usize::from(args.jobs))
        .retry(retry)
        .durability(durability(args)?)
        .write_delay(Duration::from_millis(args.write_ms))
        .verify_prefix(!args.no_verify_prefix)
        .retry_failed(args.retry_failed);

    let stop = StopToken::new();
    watch_signals(stop.clone(), args.quiet)?;
    runner = runner.stop_token(stop.clone());

    // A bar only where it cannot be garbled by the commands' own output
    // (their stderr is forwarded around it; their stdout, unless captured,
    // is not).
    let show_bar = !args.quiet
        && io::stderr().is_terminal()
        && (args.output.is_some() || !io::stdout().is_terminal());
    let bar = if show_bar {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let template = match input.kind {
        // A retry goes through the failed lines only: counted, not placed.
        _ if args.retry_failed => {
            "{bar:40} {pos}/{len} failed lines retried {msg} [{elapsed_precise}, eta {eta}]"
        }
        InputKind::File => "{bar:40} {percent:>3}% {msg} [{elapsed_precise}, eta {eta}]",
        // No length to go by (Event::Begin says `input_len: None`): how far,
        // not how much is left, and a spinner to show it is waiting for lines.
        InputKind::Stream => "{spinner} {bytes} of the input done {msg} [{elapsed_precise}]",
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if show_bar && input.kind == InputKind::Stream && !args.retry_failed {
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    runner = runner.observer(Progress::new(bar.clone(), args.quiet, args.retry_failed));

    let task = RunCommand {
        argv: args.command.clone(),
        has_placeholder: args.command.iter().any(|arg| has_placeholder(arg)),
        capture: args.output.is_some(),
        stop,
        bar: bar.clone(),
    };
    let report = match input.kind {
        InputKind::File => runner.run_task(&input.path, &task),
        InputKind::Stream => {
            let reader = BufReader::with_capacity(64 * 1024, StreamReader::new(&input.path));
            runner
                .run_reader_task(reader, &checkpoint, &task)
                .map_err(|err| err.with_path(&input.path))
        }
    };
    bar.finish_and_clear();
    let report = report.map_err(|err| input.explain(err, &checkpoint))?;

    if !args.quiet {
        let secs = report.elapsed.as_secs_f64();
        let ran = report.done + report.failed;
        eprintln!(
            "each: done {}, skipped {}, failed {}, retried {}, elapsed {:.2} s, {:.1} jobs/s",
            report.done,
            report.skipped,
            report.failed,
            report.retried,
            secs,
            if secs > 0.0 { ran as f64 / secs } else { 0.0 },
        );
    }
    if report.stopped {
        // Even with --quiet: the exit status alone does not say how to go on.
        eprintln!(
            "each: stopped, lines 1 to {} done; to resume, run the same command again{}:\n  {}",
            report.position.line(),
            input.refeed(),
            shell_words(std::env::args_os()),
        );
        return Ok(ExitCode::from(EXIT_STOPPED));
    }
    if report.input_left {
        // A retry runs only the failed lines; an earlier run stopped
        // before the end. Even with --quiet: exit 0 would say all is done.
        eprintln!(
            "each: lines after line {} never ran (an earlier run stopped); to run them, run the \
             command again without --retry-failed{}:\n  {}",
            report.position.line(),
            input.refeed(),
            shell_words(without_flag(std::env::args_os(), "--retry-failed")),
        );
        return Ok(ExitCode::from(EXIT_INPUT_LEFT));
    }
    if report.failed_total > 0 {
        if !args.quiet {
            eprintln!(
                "each: {} line(s) recorded as failed; list them with --status, rerun them with \
                 --retry-failed{}:\n  {}",
                report.failed_total,
                input.refeed(),
                shell_words(with_flag(std::env::args_os(), "--retry-failed")),
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `INPUT` is, found out before anything is opened or created.
struct Input {
    path: PathBuf,
    kind: InputKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    /// A regular file: read with seeks, its length known, the checkpoint
    /// next to it by default.
    File,
    /// `-` (standard input), a FIFO, a pipe, a device: read once from its
    /// first byte, and resumed by counting the finished lines again.
    Stream,
}

impl Input {
    fn of(path: &Path) -> Result<Input, String> {
        let kind = if path == Path::new("-") {
            InputKind::Stream
        } else {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    return Err(format!(
                        "{}: is a directory, not a file of lines",
                        path.display()
                    ));
                }
                Ok(meta) if !meta.is_file() => InputKind::Stream,
                // A missing file is the run's error to report (and --status
                // says "input not found"), as before.
                _ => InputKind::File,
            }
        };
        Ok(Input {
            path: path.to_path_buf(),
            kind,
        })
    }

    fn is_stdin(&self) -> bool {
        self.path == Path::new("-")
    }

    /// Refuses to go on without `--checkpoint` where `default`, the
    /// checkpoint next to the input, cannot be: next to a stream (it cannot
    /// seek, and `/dev/stdin.checkpoint` is no place for progress), or among
    /// devices (`/dev/stdin` redirected from a file).
    fn check_default_checkpoint(&self, default: &Path) -> Result<(), String> {
        match self.kind {
            InputKind::Stream => Err(format!(
                "{} cannot seek, so the progress through it must be kept in a file you name: add \
                 --checkpoint PATH. To resume, run again with the same --checkpoint and feed it \
                 the same lines from the first: the finished ones are counted, checked against \
                 the checkpoint and skipped.",
                self.describe(),
            )),
            InputKind::File if in_device_dir(&self.path) => Err(format!(
                "{}: the checkpoint would be {}, among devices; name one with --checkpoint PATH",
                self.path.display(),
                default.display(),
            )),
            InputKind::File => Ok(()),
        }
    }

    /// The input in an error message, with what kind of stream it is.
    fn describe(&self) -> String {
        if self.is_stdin() {
            return "standard input (-)".into();
        }
        let file_type = std::fs::metadata(&self.path).map(|meta| meta.file_type());
        let what = match file_type {
            Ok(t) if t.is_fifo() => " (a pipe)",
            Ok(t) if t.is_char_device() || t.is_block_device() => " (a device)",
            Ok(t) if t.is_socket() => " (a socket)",
            _ => "",
        };
        format!("{}{what}", self.path.display())
    }

    /// What a rerun must do besides running the same command.
    fn refeed(&self) -> String {
        match self.kind {
            InputKind::File => String::new(),
            InputKind::Stream if self.is_stdin() => {
                ", with the same lines on its standard input, from the first".into()
            }
            InputKind::Stream => format!(
                ", with the same lines in {}, from the first",
                self.path.display()
            ),
        }
    }

    /// `err`, with what to do when a stream does not match its checkpoint.
    fn explain(&self, err: linemark::Error, checkpoint: &Path) -> Box<dyn std::error::Error> {
        if self.kind == InputKind::Stream && matches!(err, linemark::Error::InputChanged { .. }) {
            return format!(
                "{err}\n  a stream must bring the lines of the runs before, from the first; to \
                 start over on other lines instead, remove {}",
                checkpoint.display()
            )
            .into();
        }
        err.into()
    }
}

/// Whether `path` lies in `/dev` or `/proc` (`/dev/stdin`, `/dev/fd/3`,
/// `/proc/self/fd/0`), where no checkpoint belongs. `/dev/shm` is a real
/// directory for files and is not one of them.
fn in_device_dir(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    dir.canonicalize()
        .is_ok_and(|dir| dir == Path::new("/dev") || dir.starts_with("/proc"))
}

/// A stream input, opened at its first read: after the runner opened and
/// locked the checkpoint, so a run refused for its checkpoint neither waits
/// for a FIFO's writer nor takes lines from it.
struct StreamReader {
    path: PathBuf,
    reader: Option<Box<dyn Read>>,
}

impl StreamReader {
    fn new(path: &Path) -> StreamReader {
        StreamReader {
            path: path.to_path_buf(),
            reader: None,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = match self.reader.take() {
            Some(reader) => reader,
            // Not locked: io::stdin() is not used anywhere else, and the
            // commands' stdin is /dev/null.
            None if self.path == Path::new("-") => Box::new(io::stdin()),
            None => Box::new(File::open(&self.path)?),
        };
        self.reader.insert(reader).read(buf)
    }
}

fn durability(args: &Args) -> Result<Durability, String> {
    if args.durability != DurabilityArg::Group
        && (args.sync_records.is_some() || args.sync_ms.is_some())
    {
        return Err("--sync-records and --sync-ms apply to --durability group only".into());
    }
    Ok(match args.durability {
        DurabilityArg::Strict => Durability::EveryCommit,
        DurabilityArg::None => Durability::NoSync,
        DurabilityArg::Group => Durability::group(
            args.sync_records.unwrap_or(100_000),
            Duration::from_millis(args.sync_ms.unwrap_or(200)),
        ),
    })
}

/// Refuses an `--output` that cannot be cut back after a crash: `-`, a
/// pipe, a terminal, a directory.
fn check_output(output: &Path) -> Result<(), String> {
    if output == Path::new("-") {
        let why = "--output needs a regular file, not - (standard output): a rerun after a crash \
                   cuts it back to the results of the finished lines";
        return Err(why.into());
    }
    match std::fs::metadata(output) {
        Ok(meta) if !meta.is_file() => Err(format!(
            "--output {}: not a regular file; the results go to a file that a rerun after a \
             crash can cut back to the results of the finished lines",
            output.display()
        )),
        _ => Ok(()),
    }
}

/// Refuses a run without `--output` over a checkpoint that records outputs,
/// before any command runs: the results of its lines would be lost (and
/// the checkpoint would refuse the first commit anyway, after the commands
/// of the first lines ran). A checkpoint that cannot be read is left for
/// the run to report.
fn check_no_output_recorded(checkpoint: &Path) -> Result<(), String> {
    if !checkpoint.exists() {
        return Ok(());
    }
    let Ok(snapshot) = Checkpoint::inspect(checkpoint) else {
        return Ok(());
    };
    match snapshot.outputs.as_slice() {
        [] => Ok(()),
        [(path, _), ..] => Err(format!(
            "{} records the results of its lines in {}: run with --output {}, or remove the \
             checkpoint to start over",
            checkpoint.display(),
            path.display(),
            shell_words([path.clone().into_os_string()]),
        )),
    }
}

/// Fires `stop` on the first SIGINT or SIGTERM; exits at once on the second.
fn watch_signals(stop: StopToken, quiet: bool) -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        // Counted here rather than read from the token, which a command
        // killed by SIGINT fires too.
        let mut received = 0;
        for _ in signals.forever() {
            received += 1;
            if received > 1 {
                eprintln!("each: interrupted again, exiting now; lines in progress will be redone");
                std::process::exit(i32::from(EXIT_STOPPED));
            }
            if !quiet {
                eprintln!(
                    "each: stopping once the commands running finish (Ctrl-C again to exit now)"
                );
            }
            stop.stop();
        }
    });
    Ok(())
}

/// The task: runs the command with the line in its arguments.
struct RunCommand {
    argv: Vec<OsString>,
    has_placeholder: bool,
    /// Capture the command's stdout into the line's results (`--output`),
    /// rather than let it inherit ours.
    capture: bool,
    stop: StopToken,
    bar: ProgressBar,
}

#[derive(Debug)]
enum CommandError {
    /// The command could not be started (or waited for).
    Spawn { program: OsString, error: io::Error },
    /// It ran and failed.
    Failed { status: ExitStatus, stderr: String },
    /// Its stdout could not be read to the end (`--output`).
    Stdout(io::Error),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Spawn { program, error } => {
                write!(f, "cannot run {}: {error}", program.to_string_lossy())
            }
            CommandError::Failed { status, stderr } if stderr.is_empty() => write!(f, "{status}"),
            CommandError::Failed { status, stderr } => write!(f, "{status}: {stderr}"),
            CommandError::Stdout(error) => write!(f, "reading the command's stdout: {error}"),
        }
    }
}

// The Display text says it all; no source, so the io::Error is not shown
// twice.
impl std::error::Error for CommandError {}

impl Task for RunCommand {
    type Error = CommandError;

    fn run(&self, line: &Line<'_>) -> Result<(), CommandError> {
        self.run_into(line, &mut Out::default())
    }

    /// Runs the command; with `--output`, its stdout goes into `out`. The
    /// runner appends `out` to the output once the line is recorded as
    /// finished, and discards it when the attempt fails, so the stdout of
    /// a failed attempt is never appended.
    fn run_into(&self, line: &Line<'_>, out: &mut Out) -> Result<(), CommandError> {
        let content = line.as_bytes();
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let mut argv = self.argv.iter().map(|arg| substitute(arg, content));
        let program = argv.next().unwrap_or_default();
        let mut command = Command::new(&program);
        command.args(argv);
        if !self.has_placeholder {
            command.arg(OsStr::from_bytes(content));
        }
        let stdout = if self.capture {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let spawn_error = |error| CommandError::Spawn {
            program: program.clone(),
            error,
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let stderr = child.stderr.take();
        let (tail, read) = match child.stdout.take() {
            None => (stderr.map(|stderr| self.forward(stderr)), Ok(())),
            Some(stdout) => match self.read_both(stdout, stderr, out) {
                Ok(both) => both,
                Err(error) => {
                    // Out of threads: its pipes are closed, it is of no use.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(error));
                }
            },
        };
        let tail = tail.unwrap_or_default();
        let status = child.wait().map_err(spawn_error)?;
        if status.success() {
            return read.map_err(CommandError::Stdout);
        }
        if matches!(status.signal(), Some(SIGINT | SIGTERM)) {
            // Someone meant to stop the whole job (Ctrl-C reaches the whole
            // process group), as a shell would assume. Firing the token before
            // returning makes the runner leave this line unrecorded.
            self.stop.stop();
        }
        Err(CommandError::Failed {
            status,
            stderr: tail_text(&tail),
        })
    }

    fn is_retryable(&self, error: &CommandError) -> bool {
        match error {
            CommandError::Failed { .. } | CommandError::Stdout(_) => true,
            // Gone or not executable: trying again will not help. Out of
            // processes or memory (EAGAIN, ENOMEM) may pass.
            CommandError::Spawn { error, .. } => !matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ),
        }
    }
}

impl RunCommand {
    /// Reads the command's stdout into `out` while its stderr is forwarded
    /// on another thread: both at once, as a command that fills one pipe
    /// while we wait on the other would wait for ever. Returns the stderr's
    /// tail and how the read of stdout went; fails only when no thread can
    /// be started.
    fn read_both(
        &self,
        mut stdout: ChildStdout,
        stderr: Option<ChildStderr>,
        out: &mut Out,
    ) -> io::Result<(Option<Vec<u8>>, io::Result<()>)> {
        std::thread::scope(|scope| {
            let forward = std::thread::Builder::new()
                .spawn_scoped(scope, || stderr.map(|stderr| self.forward(stderr)))?;
            let read = stdout.read_to_end(out.to(0)).map(drop);
            // A command still writing gets EPIPE rather than block.
            drop(stdout);
            Ok((forward.join().unwrap_or_default(), read))
        })
    }

    /// Copies the command's stderr to ours as it comes, keeping its tail.
    fn forward(&self, mut stderr: impl Read) -> Vec<u8> {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            // Best effort: our stderr being closed must not fail the line.
            self.bar
                .suspend(|| io::stderr().lock().write_all(&buf[..n]).ok());
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL {
                // One byte more than the tail shows, so it knows it was cut.
                tail.drain(..tail.len() - STDERR_TAIL - 1);
            }
        }
        tail
    }
}

/// The last [`STDERR_TAIL`] bytes, from the start of a line when they hold
/// several, lossy UTF-8, trimmed.
fn tail_text(bytes: &[u8]) -> String {
    let mut tail = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
    if tail.len() < bytes.len() {
        let newline = tail[..tail.len().saturating_sub(1)]
            .iter()
            .position(|&b| b == b'\n');
        match newline {
            Some(at) => tail = &tail[at + 1..],
            // A cut character would show as junk: skip its continuation bytes.
            None => {
                while tail.first().is_some_and(|&b| b & 0xC0 == 0x80) {
                    tail = &tail[1..];
                }
            }
        }
    }
    String::from_utf8_lossy(tail).trim().to_string()
}

fn has_placeholder(arg: &OsStr) -> bool {
    arg.as_bytes().windows(2).any(|w| w == b"{}")
}

/// `arg` with every `{}` replaced by `line`.
fn substitute(arg: &OsStr, line: &[u8]) -> OsString {
    let bytes = arg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + line.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(2).position(|w| w == b"{}") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(line);
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

/// Whether `program` names an executable file, directly or through `PATH`,
/// so a typo is one usage error instead of a failed line per line.
fn is_runnable(program: &OsStr) -> bool {
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

/// Progress bar updates and failure messages.
struct Progress {
    bar: ProgressBar,
    quiet: bool,
    /// A retry: the bar counts the failed lines dealt with, of those
    /// recorded when it began.
    retrying: bool,
    /// The furthest end of a finished line, for the bar.
    furthest: AtomicU64,
}

impl Progress {
    fn new(bar: ProgressBar, quiet: bool, retrying: bool) -> Progress {
        Progress {
            bar,
            quiet,
            retrying,
            furthest: AtomicU64::new(0),
        }
    }

    fn say(&self, message: String) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{message}"));
        }
    }
}

impl linemark::Observer for Progress {
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Begin { failed_before, .. } if self.retrying => {
                self.bar.set_length(failed_before);
                self.bar.set_position(0);
                self.bar.reset_eta();
            }
            Event::Done { .. } if self.retrying => self.bar.inc(1),
            Event::Begin {
                input_len,
                resumed_at,
                ..
            } => {
                if let Some(len) = input_len {
                    self.bar.set_length(len);
                }
                self.furthest.store(resumed_at.offset(), Ordering::Relaxed);
                self.bar.set_position(resumed_at.offset());
                self.bar.reset_eta();
            }
            Event::Done { end_offset, .. } | Event::Skipped { end_offset, .. } => {
                let furthest = self.furthest.fetch_max(end_offset, Ordering::Relaxed);
                self.bar.set_position(furthest.max(end_offset));
            }
            Event::Retrying {
                line,
                attempt,
                delay,
                error,
            } => self.say(format!(
                "each: line {line}: attempt {attempt} failed, retrying in {:.1} s: {}",
                delay.as_secs_f64(),
                indent(error),
            )),
            Event::Failed {
                line,
                attempts,
                error,
                ..
            } => {
                if self.retrying {
                    self.bar.inc(1);
                }
                self.say(format!(
                    "each: line {line} failed after {attempts} attempt(s): {}",
                    indent(error),
                ));
            }
            _ => {}
        }
    }
}

/// A multi-line error, its lines after the first indented.
fn indent(error: &str) -> String {
    error.replace('\n', "\n    ")
}

/// `--status`: what the checkpoint says, read without its lock. A stream
/// is neither opened nor read: that would take lines from it.
fn print_status(input: &Input, checkpoint: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let snapshot = Checkpoint::inspect(checkpoint)?;
    let stream = input.kind == InputKind::Stream;
    let input_len = match input.kind {
        InputKind::File => std::fs::metadata(&input.path).map(|meta| meta.len()).ok(),
        InputKind::Stream => None,
    };
    let mut out = io::stdout().lock();
    let exists = if checkpoint.exists() {
        ""
    } else {
        " (none yet)"
    };
    writeln!(out, "checkpoint: {}{exists}", checkpoint.display())?;
    let position = snapshot.position;
    let of = match input_len {
        _ if stream => " (the input is a stream: its length is unknown)".to_string(),
        Some(0) => " of 0 (100.0%)".to_string(),
        Some(len) => format!(
            " of {len} ({:.1}%)",
            100.0 * position.offset() as f64 / len as f64
        ),
        None => " (input not found)".to_string(),
    };
    writeln!(
        out,
        "position: line {}, byte {}{of}",
        position.line(),
        position.offset()
    )?;
    if !snapshot.done_beyond.is_empty() {
        writeln!(
            out,
            "done beyond the position: {} line(s)",
            snapshot.done_beyond.len()
        )?;
    }
    let complete = input_len == Some(position.offset())
        && snapshot.done_beyond.is_empty()
        && snapshot.failed == 0;
    if complete {
        writeln!(out, "complete")?;
    }
    for (path, len) in &snapshot.outputs {
        // The path as the runs gave it: relative to where they ran.
        let now = match std::fs::metadata(path) {
            Ok(meta) if meta.len() == *len => String::new(),
            Ok(meta) if meta.len() > *len => format!(
                " ({} more in the file: results of a run in progress, or left by one that \
                 was killed, which the next run cuts off)",
                meta.len() - len
            ),
            Ok(meta) => format!(
                " (only {} in the file: it was cut or replaced, and the next run refuses it)",
                meta.len()
            ),
            Err(_) => " (not found from here)".to_string(),
        };
        writeln!(out, "output: {}, {len} bytes recorded{now}", path.display())?;
    }
    writeln!(out, "failed: {} line(s)", snapshot.failed)?;
    let mut reader = match input.kind {
        InputKind::File => File::open(&input.path).ok().map(BufReader::new),
        InputKind::Stream => None,
    };
    let mut buf = Vec::new();
    // Streamed from the failure log, one line at a time: a job with a
    // million failed lines lists them without holding them.
    for failed in Checkpoint::inspect_failed(checkpoint)? {
        let failed = failed?;
        let content = match reader.as_mut().map(|r| failed.read_from(r, &mut buf)) {
            None if stream => String::new(),
            Some(Ok(line)) => {
                let text = String::from_utf8_lossy(line.as_bytes());
                let text = text.trim_end_matches('\r');
                let mut shown: String = text.chars().take(80).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                format!(" {shown:?}")
            }
            Some(Err(_)) => " (changed in the input)".to_string(),
            None => " (input not readable)".to_string(),
        };
        writeln!(
            out,
            "  line {}{content}, {} attempt(s): {}",
            failed.line(),
            failed.attempts(),
            indent(failed.error()),
        )?;
    }
    Ok(())
}

/// `args` without `flag` among the options (before `--`).
fn without_flag(args: impl Iterator<Item = OsString>, flag: &str) -> Vec<OsString> {
    let mut options = true;
    args.filter(|arg| {
        if arg == "--" {
            options = false;
        }
        !(options && arg == flag)
    })
    .collect()
}

/// `args` with `flag` inserted after the program name, unless it is among
/// the options already (before `--`).
fn with_flag(args: impl Iterator<Item = OsString>, flag: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.collect();
    let options_end = args
        .iter()
        .position(|arg| arg == "--")
        .unwrap_or(args.len());
    if !args[..options_end].iter().any(|arg| arg == flag) {
        args.insert(options_end.min(1), flag.into());
    }
    args
}

/// A command line to copy into a POSIX shell.
fn shell_words(args: impl IntoIterator<Item = OsString>) -> String {
    let quoted: Vec<String> = args
        .into_iter()
        .map(|arg| {
            let text = arg.to_string_lossy();
            let plain = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,+@%".contains(&b));
            if plain {
                text.into_owned()
            } else {
                format!("'{}'", text.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}
