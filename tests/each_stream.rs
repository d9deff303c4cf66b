//! The `each` example on inputs that cannot seek: `-` (standard input),
//! `/dev/stdin`, a FIFO. They need `--checkpoint`; with it, a rerun fed the
//! same lines from the start skips the finished ones.

#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use common::DEADLINE;
use linemark::Checkpoint;

/// Appends the line (`$1`) to the file `$2`, after reading its own stdin to
/// the end: were that stdin `each`'s, it would swallow the lines to come.
const APPEND: &str = r#"cat > /dev/null; printf '%s\n' "$1" >> "$2""#;

/// The `each` example (`cargo test` does not build examples for tests).
fn each_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::example_binary("each"))
}

/// A running `each` whose stdin is a pipe the test writes to, and whose
/// stderr goes to a file the test can read while it runs. Killed on drop,
/// so a failed assertion leaves no process behind.
struct Each {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl Each {
    /// Starts `each args...` in `dir` (its stderr in `dir/stderr.txt`).
    fn start<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Each {
        let stderr = dir.join("stderr.txt");
        let child = Command::new(each_bin())
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("starting each");
        Each::with(child, stderr)
    }

    fn with(mut child: Child, stderr: PathBuf) -> Each {
        Each {
            stdin: child.stdin.take(),
            child,
            stderr,
        }
    }

    /// Writes `bytes` to its stdin, keeping the pipe open.
    fn feed(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Closes its stdin and waits for the exit: see [`Each::wait`].
    fn finish(mut self) -> (ExitStatus, String) {
        self.stdin = None;
        self.wait()
    }

    /// Waits for the exit, failing the test after [`DEADLINE`]; returns the
    /// status and its stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr());
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "each did not exit (is it reading a stream it should not?):\n{}",
                    self.stderr()
                );
            }
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name}");
    }
}

impl Drop for Each {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `each args...` in `dir` with `input` on its stdin, to its end.
/// Writing stops early, without error, if `each` stops reading.
fn each_fed<S: AsRef<OsStr>>(dir: &Path, input: &[u8], args: &[S]) -> (ExitStatus, String) {
    let mut run = Each::start(dir, args);
    let stdin = run.stdin.take().unwrap();
    let writer = feeder(stdin, input.to_vec());
    let finished = run.finish();
    writer.join().unwrap();
    finished
}

/// Writes `bytes` to `sink` on a thread, then closes it; a reader that
/// went away (a broken pipe) is not an error.
fn feeder(mut sink: impl Write + Send + 'static, bytes: Vec<u8>) -> JoinHandle<()> {
    thread::spawn(move || {
        if let Err(err) = sink.write_all(&bytes) {
            assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
        }
    })
}

/// A FIFO at `path`.
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Writes `bytes` into the FIFO at `path` on a thread, once a reader opens it.
fn feed_fifo(path: &Path, bytes: Vec<u8>) -> JoinHandle<()> {
    let path = path.to_path_buf();
    thread::spawn(move || {
        let fifo = OpenOptions::new().write(true).open(&path).unwrap();
        feeder(fifo, bytes).join().unwrap();
    })
}

/// `count` lines of equal length (11 bytes with the `\n`), and their text.
fn numbered(count: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let lines: Vec<Vec<u8>> = (1..=count)
        .map(|n| format!("line-{n:05}").into_bytes())
        .collect();
    let text = lines
        .iter()
        .flat_map(|line| [&line[..], b"\n"].concat())
        .collect();
    (lines, text)
}

/// The command that appends each line to `out`.
fn append_to(out: &Path) -> Vec<&OsStr> {
    vec![
        "sh".as_ref(),
        "-c".as_ref(),
        APPEND.as_ref(),
        "_".as_ref(),
        "{}".as_ref(),
        out.as_os_str(),
    ]
}

/// `options`, then `input -- command`.
fn args<'a>(options: &[&'a str], input: &'a OsStr, command: &[&'a OsStr]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = options.iter().map(|option| OsStr::new(*option)).collect();
    args.extend([input, "--".as_ref()]);
    args.extend(command);
    args
}

/// How many times each line occurs in `path`.
fn line_counts(path: &Path) -> HashMap<Vec<u8>, u32> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        *counts.entry(line.to_vec()).or_default() += 1;
    }
    counts
}

fn assert_each_exactly_once(out: &Path, lines: &[Vec<u8>]) {
    let counts = line_counts(out);
    for line in lines {
        let text = String::from_utf8_lossy(line);
        assert_eq!(counts.get(line).copied(), Some(1), "line {text:?}");
    }
    assert_eq!(counts.len(), lines.len(), "unexpected lines in the output");
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn stdin_runs_every_line_once_and_a_rerun_of_the_same_lines_skips_them() {
    const LINES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    // 200 KiB, more than `each` reads ahead: had the commands (which read
    // their stdin to the end) been given `each`'s, lines would be lost.
    let lines: Vec<Vec<u8>> = (1..=LINES)
        .map(|n| format!("line-{n:05}-{}", "x".repeat(2037)).into_bytes())
        .collect();
    let text: Vec<u8> = lines
        .iter()
        .flat_map(|line| [&line[..], b"\n"].concat())
        .collect();
    assert!(text.len() > 3 * 64 * 1024);
    let out = dir.path().join("out.txt");
    let command = append_to(&out);
    for jobs in ["1", "4"] {
        let _ = std::fs::remove_file(&out);
        let checkpoint = format!("jobs-{jobs}.checkpoint");
        let args = args(
            &["--jobs", jobs, "--checkpoint", &checkpoint],
            "-".as_ref(),
            &command,
        );
        let (code, stderr) = each_fed(dir.path(), &text, &args);
        assert_eq!(code.code(), Some(0), "{stderr}");
        assert!(stderr.contains(&format!("done {LINES}, ")), "{stderr}");
        assert_each_exactly_once(&out, &lines);
        let snapshot = Checkpoint::inspect(dir.path().join(&checkpoint)).unwrap();
        assert_eq!(snapshot.position.line(), LINES as u64, "{snapshot:?}");

        let (code, stderr) = each_fed(dir.path(), &text, &args);
        assert_eq!(code.code(), Some(0), "{stderr}");
        assert!(stderr.contains("done 0, "), "{stderr}");
        assert_each_exactly_once(&out, &lines);
    }
}

#[test]
fn stdin_killed_between_lines_resumes_and_runs_every_line_once() {
    const LINES: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(LINES);
    let out = dir.path().join("out.txt");
    let checkpoint = dir.path().join("stdin.checkpoint");
    let args = args(
        &[
            "--durability",
            "strict",
            "--write-ms",
            "0",
            "--checkpoint",
            "stdin.checkpoint",
        ],
        "-".as_ref(),
        &append_to(&out),
    );
    let mut run = Each::start(dir.path(), &args);
    // Five whole lines and half of the sixth: the half line must not run.
    run.feed(&text[..5 * 11 + 4]);
    common::wait_until("five lines to be committed", || {
        Checkpoint::inspect(&checkpoint).is_ok_and(|s| s.position.line() == 5)
    });
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert_each_exactly_once(&out, &lines[..5]);

    let (code, stderr) = each_fed(dir.path(), &text, &args);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("done {}, ", LINES - 5)),
        "{stderr}"
    );
    assert_each_exactly_once(&out, &lines);
}

#[test]
fn sigint_on_a_stream_stops_before_the_next_line_and_says_to_feed_it_again() {
    const LINES: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(LINES);
    let out = dir.path().join("out.txt");
    let checkpoint = dir.path().join("stdin.checkpoint");
    let args = args(
        &["--write-ms", "0", "--checkpoint", "stdin.checkpoint"],
        "-".as_ref(),
        &append_to(&out),
    );
    let mut run = Each::start(dir.path(), &args);
    run.feed(&text[..3 * 11]);
    common::wait_until("three lines to be written", || {
        Checkpoint::inspect(&checkpoint).is_ok_and(|s| s.position.line() == 3)
    });
    run.signal("-INT");
    common::wait_until("the interrupt to be handled", || {
        run.stderr().contains("stopping")
    });
    // It waits for a line to read; the next one does not start.
    run.feed(&text[3 * 11..4 * 11]);
    let (code, stderr) = run.finish();
    assert_eq!(code.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("the same lines on its standard input, from the first"),
        "{stderr}"
    );
    assert_each_exactly_once(&out, &lines[..3]);

    let (code, stderr) = each_fed(dir.path(), &text, &args);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert_each_exactly_once(&out, &lines);
}

#[test]
fn a_fifo_with_a_checkpoint_runs_every_line_once_then_status_reads_only_the_checkpoint() {
    const LINES: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(LINES);
    let fifo = dir.path().join("lines.fifo");
    mkfifo(&fifo);
    let out = dir.path().join("out.txt");
    let fixed = dir.path().join("fixed");
    // Fails on line 7 until `fixed` exists.
    let script = format!(r#"[ "$1" != line-00007 ] || [ -e "$3" ] || exit 7; {APPEND}"#);
    let command: Vec<&OsStr> = vec![
        "sh".as_ref(),
        "-c".as_ref(),
        script.as_ref(),
        "_".as_ref(),
        "{}".as_ref(),
        out.as_os_str(),
        fixed.as_os_str(),
    ];
    let run = |options: &[&str]| {
        let mut options = options.to_vec();
        options.extend(["--jobs", "3", "--checkpoint", "fifo.checkpoint"]);
        let writer = feed_fifo(&fifo, text.clone());
        let finished = each_fed(dir.path(), b"", &args(&options, fifo.as_os_str(), &command));
        writer.join().unwrap();
        finished
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("done {}, ", LINES - 1)),
        "{stderr}"
    );
    assert!(stderr.contains("line 7 failed"), "{stderr}");
    assert!(stderr.contains("--retry-failed"), "{stderr}");

    // No writer is on the FIFO, and stdin stays open with nothing in it:
    // reading either (or even opening the FIFO) would hang.
    let status = |input: &OsStr| {
        let stderr = dir.path().join("status-stderr.txt");
        let child = Command::new(each_bin())
            .args(["--status", "--checkpoint", "fifo.checkpoint"])
            .arg(input)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(File::create(dir.path().join("status.txt")).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let (code, stderr) = Each::with(child, stderr).wait();
        let report = std::fs::read_to_string(dir.path().join("status.txt")).unwrap();
        assert_eq!(code.code(), Some(0), "{report}{stderr}");
        report
    };
    for input in [fifo.as_os_str(), "-".as_ref()] {
        let report = status(input);
        assert!(
            report.contains(&format!("position: line {LINES}, byte {}", LINES * 11)),
            "{report}"
        );
        assert!(
            !report.contains(" of 0"),
            "a stream has no length: {report}"
        );
        assert!(!report.contains("complete"), "{report}");
        assert!(report.contains("failed: 1 line(s)"), "{report}");
        assert!(
            report.contains("line 7, 1 attempt(s): exit status: 7"),
            "{report}"
        );
    }

    std::fs::write(&fixed, "").unwrap();
    let (code, stderr) = run(&["--retry-failed"]);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(stderr.contains("done 1, "), "{stderr}");
    assert_each_exactly_once(&out, &lines);
    let (code, stderr) = run(&[]);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(stderr.contains("done 0, "), "{stderr}");
    assert_each_exactly_once(&out, &lines);
    assert_eq!(
        names(dir.path()),
        [
            "fifo.checkpoint",
            "fifo.checkpoint.lock",
            "fixed",
            "lines.fifo",
            "out.txt",
            "status-stderr.txt",
            "status.txt",
            "stderr.txt"
        ]
    );
}

#[test]
fn shards_of_a_stream_cover_every_line_once() {
    const LINES: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(LINES);
    let out = dir.path().join("out.txt");
    let command = append_to(&out);
    for shard in ["0/3", "1/3", "2/3"] {
        let checkpoint = format!("shard-{}.checkpoint", &shard[..1]);
        let args = args(
            &["--shard", shard, "--checkpoint", &checkpoint],
            "-".as_ref(),
            &command,
        );
        let (code, stderr) = each_fed(dir.path(), &text, &args);
        assert_eq!(code.code(), Some(0), "{stderr}");
        let snapshot = Checkpoint::inspect(dir.path().join(&checkpoint)).unwrap();
        let index: u64 = shard[..1].parse().unwrap();
        assert_eq!(snapshot.shard, Some((index, 3)), "{snapshot:?}");
    }
    assert_each_exactly_once(&out, &lines);
    // A checkpoint is refused for another shard's lines.
    let args = args(
        &["--shard", "1/3", "--checkpoint", "shard-0.checkpoint"],
        "-".as_ref(),
        &command,
    );
    let (code, stderr) = each_fed(dir.path(), &text, &args);
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(stderr.contains("shard"), "{stderr}");
}

#[test]
fn a_changed_stream_is_refused_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(5);
    let out = dir.path().join("out.txt");
    let args = args(
        &["--checkpoint", "stdin.checkpoint"],
        "-".as_ref(),
        &append_to(&out),
    );
    let (code, stderr) = each_fed(dir.path(), &text, &args);
    assert_eq!(code.code(), Some(0), "{stderr}");

    // The last finished line edited, then lines missing at the start.
    let edited = String::from_utf8(text.clone())
        .unwrap()
        .replace("line-00005", "line-0000X");
    for changed in [edited.as_bytes(), &text[11..]] {
        let mut more = changed.to_vec();
        more.extend_from_slice(b"line-00006\n");
        let (code, stderr) = each_fed(dir.path(), &more, &args);
        assert_eq!(code.code(), Some(2), "{stderr}");
        assert!(stderr.contains("input changed"), "{stderr}");
        assert!(stderr.contains("from the first"), "{stderr}");
        assert_each_exactly_once(&out, &lines);
    }
}

#[test]
fn a_stream_without_a_checkpoint_is_refused_before_any_file_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("lines.fifo");
    mkfifo(&fifo);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.txt");
    let command = append_to(&out);
    let inputs: [&OsStr; 2] = [fifo.as_os_str(), "-".as_ref()];
    for input in inputs {
        for options in [
            &[][..],
            &["--retry-failed"],
            &["--shard", "0/2"],
            &["--status"],
        ] {
            // No writer on the FIFO: a run that opened it would hang.
            let (code, stderr) = each_fed(work.path(), b"a\n", &args(options, input, &command));
            assert_eq!(code.code(), Some(2), "{input:?} {options:?}: {stderr}");
            assert!(
                stderr.contains("cannot seek") && stderr.contains("--checkpoint PATH"),
                "{input:?} {options:?}: {stderr}"
            );
            assert!(stderr.contains("from the first"), "{stderr}");
            assert_eq!(names(dir.path()), ["lines.fifo"]);
            assert_eq!(names(work.path()), ["stderr.txt"]);
        }
    }
}

/// Removes the files it names on drop, if they did not exist when it was
/// made: what a wrong `each` may have left in `/dev`.
struct RemoveIfNew(Vec<PathBuf>);

impl RemoveIfNew {
    fn new(paths: &[&str]) -> RemoveIfNew {
        RemoveIfNew(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|path| !path.exists())
                .collect(),
        )
    }
}

impl Drop for RemoveIfNew {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn dev_stdin_needs_a_checkpoint_and_leaves_nothing_in_dev() {
    let guard = RemoveIfNew::new(&["/dev/stdin.checkpoint", "/dev/stdin.checkpoint.lock"]);
    let dir = tempfile::tempdir().unwrap();
    let (lines, text) = numbered(6);
    let input = dir.path().join("input.txt");
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("out.txt");
    let command = append_to(&out);
    let refused = args(&[], "/dev/stdin".as_ref(), &command);
    let with_checkpoint = args(
        &["--checkpoint", "stdin.checkpoint"],
        "/dev/stdin".as_ref(),
        &command,
    );
    let run_from_file = |args: &[&OsStr]| {
        let child = Command::new(each_bin())
            .args(args)
            .current_dir(dir.path())
            .stdin(File::open(&input).unwrap())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        Each::with(child, dir.path().join("stderr.txt")).finish()
    };

    // A pipe, and a regular file, behind /dev/stdin.
    let (code, stderr) = each_fed(dir.path(), &text, &refused);
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--checkpoint PATH"), "{stderr}");
    let (code, stderr) = run_from_file(&refused);
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--checkpoint PATH"), "{stderr}");
    for path in &guard.0 {
        assert!(!path.exists(), "{} was made", path.display());
    }
    assert!(!out.exists());

    let (code, stderr) = each_fed(dir.path(), &text, &with_checkpoint);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert_each_exactly_once(&out, &lines);
    let (code, stderr) = run_from_file(&with_checkpoint);
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(stderr.contains("done 0, "), "{stderr}");
    assert_each_exactly_once(&out, &lines);
    for path in &guard.0 {
        assert!(!path.exists(), "{} was made", path.display());
    }
}

#[test]
fn a_bad_checkpoint_is_reported_before_the_fifo_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("lines.fifo");
    mkfifo(&fifo);
    std::fs::write(dir.path().join("notes.txt"), "not a checkpoint\n").unwrap();
    let out = dir.path().join("out.txt");
    // No writer on the FIFO: a run that opened it first would hang there.
    let args = args(
        &["--checkpoint", "notes.txt"],
        fifo.as_os_str(),
        &append_to(&out),
    );
    let (code, stderr) = each_fed(dir.path(), b"", &args);
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a linemark checkpoint"), "{stderr}");
}
