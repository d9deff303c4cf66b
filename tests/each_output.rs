//! `each --output`: the commands' stdout appended to a file exactly once
//! per line, whatever the order lines finish in, failed attempts, failed
//! lines, `--retry-failed` and SIGKILL at any moment do.

#![cfg(unix)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, SplitMix64};
use linemark::Checkpoint;

/// Bytes of a line of [`numbered_input`], with its `\n`.
const LINE_BYTES: u64 = 11;

/// The `each` example (`cargo test` does not build examples for tests).
fn each_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::example_binary("each"))
}

/// A running `each` in `dir`, stdin null, stdout to `dir/each.stdout`,
/// stderr to `dir/each.stderr`. Killed on drop, so a failed assertion
/// leaves no process behind.
struct Each {
    child: Child,
    dir: PathBuf,
}

impl Each {
    fn start<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Each {
        let child = Command::new(each_bin())
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("each.stdout")).unwrap())
            .stderr(File::create(dir.join("each.stderr")).unwrap())
            .spawn()
            .expect("starting each");
        Each {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for the exit, failing the test after [`DEADLINE`].
    fn finish(mut self) -> Ran {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "each did not finish within {DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(2));
        };
        let read = |name: &str| std::fs::read(self.dir.join(name)).unwrap_or_default();
        Ran {
            status,
            stdout: read("each.stdout"),
            stderr: String::from_utf8_lossy(&read("each.stderr")).into_owned(),
        }
    }

    /// SIGKILL, as a crash.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), None, "killed by a signal");
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

/// How a run of `each` ended.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `each args...` in `dir` to its end.
fn each<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Ran {
    Each::start(dir, args).finish()
}

/// `each --status` in `dir`: its stdout.
fn status(dir: &Path, input: &str) -> String {
    let ran = each(dir, &["--status", input]);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    String::from_utf8(ran.stdout).unwrap()
}

/// `count` lines `line-00001` ... in `dir/input.txt`, all [`LINE_BYTES`]
/// long; returns them without their `\n`.
fn numbered_input(dir: &Path, count: usize) -> Vec<String> {
    let lines: Vec<String> = (1..=count).map(|n| format!("line-{n:05}")).collect();
    let mut text = String::new();
    for line in &lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(dir.join("input.txt"), text).unwrap();
    lines
}

/// The lines of `bytes` (each must end with `\n`).
fn lines_of(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).expect("utf-8 output");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a cut line at the end: {text:?}"
    );
    text.lines().map(str::to_string).collect()
}

/// How many times each line occurs in `lines`.
fn counts(lines: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    counts
}

/// Asserts that `got` holds every line of `want` exactly once, and nothing
/// else, in any order.
fn assert_exactly_once(got: &[String], want: &[String]) {
    let got_counts = counts(got);
    let repeated: Vec<_> = got_counts.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(repeated.is_empty(), "appended more than once: {repeated:?}");
    let missing: Vec<_> = want
        .iter()
        .filter(|line| !got_counts.contains_key(line.as_str()))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert_eq!(got.len(), want.len(), "unexpected lines: {got:?}");
}

/// A command for `sh -c` that prints two lines for its line (`$0`: `each`
/// appends the line as the last argument), with a pause between them for
/// every fifth line, and a line on stderr. The pause makes lines finish
/// out of order with `--jobs`, and would let other commands' output in
/// between the two lines if the output were not gathered line by line.
const TWO_LINES: &str = r#"printf '%s a\n' "$0"
case "$0" in *[05]) sleep 0.03 ;; esac
printf '%s b\n' "$0"
printf '%s on stderr\n' "$0" >&2"#;

/// The lines [`TWO_LINES`] prints for `lines`, in their order.
fn two_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|line| [format!("{line} a"), format!("{line} b")])
        .collect()
}

#[test]
fn each_lines_stdout_is_appended_exactly_once_as_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, 200);
    let args = [
        "--jobs",
        "4",
        "--output",
        "out.txt",
        "input.txt",
        "--",
        "sh",
        "-c",
        TWO_LINES,
    ];
    let ran = each(dir, &args);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.is_empty(), "stdout is captured, not passed on");
    // stderr still is passed on.
    for line in &lines {
        assert!(
            ran.stderr.contains(&format!("{line} on stderr\n")),
            "{ran:?}"
        );
    }
    assert!(
        ran.stderr.contains("done 200, skipped 0, failed 0"),
        "{ran:?}"
    );

    let out = std::fs::read(dir.join("out.txt")).unwrap();
    let got = lines_of(&out);
    assert_exactly_once(&got, &two_lines(&lines));
    // Each command's output is one block: its two lines together.
    for pair in got.chunks(2) {
        let a = pair[0].strip_suffix(" a");
        assert!(
            a.is_some() && Some(pair[1].as_str()) == a.map(|line| format!("{line} b")).as_deref(),
            "a block split or mixed with another: {pair:?}"
        );
    }
    // Lines finished out of order, and their blocks went in that order:
    // what --keep-order is there for (and what makes its test mean
    // something).
    assert_ne!(got, two_lines(&lines), "the lines finished in input order");

    let report = status(dir, "input.txt");
    assert!(
        report.contains(&format!("output: out.txt, {} bytes recorded\n", out.len())),
        "{report}"
    );
    assert!(report.contains("complete"), "{report}");

    // A rerun runs nothing and appends nothing.
    let ran = each(dir, &args);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stderr.contains("done 0, skipped 0"), "{ran:?}");
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), out);
}

#[test]
fn keep_order_appends_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, 200);
    let ran = each(
        dir,
        &[
            "--jobs",
            "4",
            "--output",
            "out.txt",
            "--keep-order",
            "input.txt",
            "--",
            "sh",
            "-c",
            TWO_LINES,
        ],
    );
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.is_empty());
    let out = std::fs::read(dir.join("out.txt")).unwrap();
    assert_eq!(lines_of(&out), two_lines(&lines));
}

#[test]
fn output_usage_errors_exit_2_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    numbered_input(dir, 5);
    let ran = each(dir, &["--keep-order", "input.txt", "--", "true"]);
    assert_eq!(ran.code(), Some(2), "--keep-order needs --output: {ran:?}");
    assert!(ran.stderr.contains("--output"), "{ran:?}");
    for output in ["-", "."] {
        let ran = each(dir, &["--output", output, "input.txt", "--", "true"]);
        assert_eq!(ran.code(), Some(2), "--output {output}: {ran:?}");
        assert!(ran.stderr.contains("regular file"), "{ran:?}");
    }
    assert!(
        !dir.join("input.txt.checkpoint").exists(),
        "a refused run made a checkpoint"
    );

    // A checkpoint that records an output: a rerun without --output, or
    // with another file, is refused before any command runs.
    let ran = each(
        dir,
        &["--output", "out.txt", "input.txt", "--", "printf", "%s\n"],
    );
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    std::fs::write(
        dir.join("input.txt"),
        "line-00001\nline-00002\nline-00003\nline-00004\nline-00005\nmore\n",
    )
    .unwrap();
    let touch = ["--", "sh", "-c", r#": > "ran-$0""#];
    let mut without: Vec<&str> = vec!["input.txt"];
    without.extend(touch);
    let ran = each(dir, &without);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("--output out.txt"), "{ran:?}");
    let mut other: Vec<&str> = vec!["--output", "other.txt", "input.txt"];
    other.extend(touch);
    let ran = each(dir, &other);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    assert!(
        !dir.join("ran-more").exists(),
        "a refused run ran a command"
    );
    // With it, the new line runs and its output is appended.
    let ran = each(
        dir,
        &["--output", "out.txt", "input.txt", "--", "printf", "%s\n"],
    );
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stderr.contains("done 1, skipped 0"), "{ran:?}");
    let out = std::fs::read(dir.join("out.txt")).unwrap();
    let mut want: Vec<String> = (1..=5).map(|n| format!("line-{n:05}")).collect();
    want.push("more".into());
    assert_exactly_once(&lines_of(&out), &want);
}

/// Prints `out LINE` (and `err LINE` on stderr), then fails for lines that
/// end in 7 unless the file `fixed` exists.
const FAILS_ON_7: &str = r#"printf 'out %s\n' "$0"
printf 'err %s\n' "$0" >&2
case "$0" in *7) [ -e fixed ] || exit 1 ;; esac"#;

#[test]
fn failed_lines_write_nothing_and_retry_failed_appends_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, 60);
    let (bad, good): (Vec<String>, Vec<String>) =
        lines.iter().cloned().partition(|line| line.ends_with('7'));
    assert_eq!(bad.len(), 6);
    let out_of = |lines: &[String]| -> Vec<String> {
        lines.iter().map(|line| format!("out {line}")).collect()
    };
    let args = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut args = extra.to_vec();
        args.extend(["--jobs", "4", "--output", "out.txt", "input.txt"]);
        args.extend(["--", "sh", "-c", FAILS_ON_7]);
        args
    };

    let ran = each(dir, &args(&["--retries", "1"]));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("failed 6, retried 6"), "{ran:?}");
    // Both attempts of each bad line ran and printed their output...
    for line in &bad {
        let printed = format!("err {line}");
        let forwarded = ran.stderr.lines().filter(|l| *l == printed).count();
        assert_eq!(forwarded, 2, "{line}: {ran:?}");
    }
    // ... and none of it was appended.
    let first = std::fs::read(dir.join("out.txt")).unwrap();
    assert_exactly_once(&lines_of(&first), &out_of(&good));
    let report = status(dir, "input.txt");
    assert!(report.contains("failed: 6 line(s)"), "{report}");
    assert!(
        report.contains(&format!(
            "output: out.txt, {} bytes recorded\n",
            first.len()
        )),
        "{report}"
    );

    // A plain rerun runs nothing and appends nothing.
    let ran = each(dir, &args(&[]));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains("done 0, skipped 0, failed 0"),
        "{ran:?}"
    );
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), first);

    // Fixed: --retry-failed appends exactly the failed lines' output, after
    // what was there.
    std::fs::write(dir.join("fixed"), "").unwrap();
    let ran = each(dir, &args(&["--retry-failed"]));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains("done 6, skipped 0, failed 0"),
        "{ran:?}"
    );
    let second = std::fs::read(dir.join("out.txt")).unwrap();
    assert_eq!(
        &second[..first.len()],
        &first[..],
        "the results before changed"
    );
    assert_exactly_once(&lines_of(&second[first.len()..]), &out_of(&bad));
    assert!(status(dir, "input.txt").contains("complete"));

    // Nothing left to retry, nothing left to run: nothing appended.
    for extra in [&["--retry-failed"][..], &[]] {
        let ran = each(dir, &args(extra));
        assert_eq!(ran.code(), Some(0), "{ran:?}");
        assert!(ran.stderr.contains("done 0,"), "{ran:?}");
        assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), second);
    }
}

#[test]
fn the_stdout_of_a_failed_attempt_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, 40);
    // Every line fails its first attempt after printing, and succeeds its
    // second, printing the same.
    let flaky = r#"printf 'try %s\n' "$0"; [ -e "$0.ok" ] && exit 0; : > "$0.ok"; exit 1"#;
    let ran = each(
        dir,
        &[
            "--jobs",
            "4",
            "--retries",
            "2",
            "--output",
            "out.txt",
            "input.txt",
            "--",
            "sh",
            "-c",
            flaky,
        ],
    );
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stderr
            .contains("done 40, skipped 0, failed 0, retried 40"),
        "{ran:?}"
    );
    let want: Vec<String> = lines.iter().map(|line| format!("try {line}")).collect();
    assert_exactly_once(
        &lines_of(&std::fs::read(dir.join("out.txt")).unwrap()),
        &want,
    );
}

#[test]
fn a_stream_input_with_output_runs_once_and_a_rerun_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, 100);
    let input = std::fs::read(dir.join("input.txt")).unwrap();
    let run = || {
        let mut child = Command::new(each_bin())
            .args(["--jobs", "4", "--keep-order", "--output", "out.txt"])
            .args([
                "--checkpoint",
                "stdin.checkpoint",
                "-",
                "--",
                "printf",
                "%s\n",
            ])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    let stderr = run();
    assert!(stderr.contains("done 100, skipped 0"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), input);
    let stderr = run();
    assert!(stderr.contains("done 0, skipped 0"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), input);
    assert_eq!(lines_of(&input), lines);
}

/// The line number of an output line `line-NNNNN`.
fn number_of(line: &str) -> u64 {
    line.strip_prefix("line-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an output line: {line:?}"))
}

/// After a kill: the part of the output the checkpoint records holds the
/// output of exactly the lines it records as finished, once each (in input
/// order with `keep_order`), and the file holds at least that part.
/// Returns the recorded length, and the bytes beyond it, which the next
/// run cuts off.
fn check_recorded(dir: &Path, keep_order: bool, kill: usize) -> (u64, u64) {
    let checkpoint = dir.join("input.txt.checkpoint");
    if !checkpoint.exists() {
        // Killed before it made one.
        return (0, common::file_len(&dir.join("out.txt")));
    }
    let snapshot = Checkpoint::inspect(&checkpoint)
        .unwrap_or_else(|err| panic!("checkpoint after kill {kill}: {err}"));
    assert_eq!(snapshot.failed, 0, "{snapshot:?}");
    let recorded = match snapshot.outputs.as_slice() {
        [] => 0,
        [(path, len)] => {
            assert_eq!(path, Path::new("out.txt"));
            *len
        }
        more => panic!("outputs: {more:?}"),
    };
    let out = std::fs::read(dir.join("out.txt")).unwrap_or_default();
    assert!(
        out.len() as u64 >= recorded,
        "kill {kill}: the output ({} bytes) is shorter than recorded ({recorded})",
        out.len()
    );
    let numbers: Vec<u64> = lines_of(&out[..recorded as usize])
        .iter()
        .map(|line| number_of(line))
        .collect();
    let unique: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(
        unique.len(),
        numbers.len(),
        "kill {kill}: a line's output recorded twice"
    );
    let finished: BTreeSet<u64> = (1..=snapshot.position.line())
        .chain(snapshot.done_beyond.iter().copied())
        .collect();
    assert_eq!(
        unique, finished,
        "kill {kill}: the recorded output is not that of the finished lines"
    );
    if keep_order {
        assert!(
            numbers.is_sorted(),
            "kill {kill}: the recorded output is out of order"
        );
    }
    (recorded, out.len() as u64 - recorded)
}

/// SIGKILL at random moments, rerun after each, then a run to the end:
/// every line's output is in the file exactly once (in input order with
/// `keep_order`), and after each kill the recorded part of the output
/// matches the recorded progress.
fn kill_again_and_again(keep_order: bool, seed: u64) {
    const LINES: usize = 2_400;
    const KILLS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = numbered_input(dir, LINES);
    let out = dir.join("out.txt");
    let mut rng = SplitMix64(seed);
    let args = |durability: &'static str| {
        let mut args = vec!["--jobs", "8", "--quiet", "--durability", durability];
        args.extend(["--output", "out.txt"]);
        if keep_order {
            args.push("--keep-order");
        }
        args.extend(["input.txt", "--", "printf", "%s\n"]);
        args
    };
    let started = Instant::now();
    let (mut kills, mut cut, mut early) = (0, 0, 0);
    let mut recorded = 0;
    while kills < KILLS {
        // Most runs are group-synced, the default; some sync every commit,
        // some never.
        let durability = match rng.in_range(&(0..=9)) {
            0..=5 => "group",
            6 | 7 => "strict",
            _ => "none",
        };
        let mut run = Each::start(dir, &args(durability));
        if rng.in_range(&(0..=3)) == 0 {
            // Any moment of the start: the checkpoint opened, the output
            // checked and cut back, the first lines.
            thread::sleep(Duration::from_micros(rng.in_range(&(0..=39_999))));
            early += 1;
        } else {
            // Once some results are out, a little later.
            let target = recorded + rng.in_range(&(20..=99)) * LINE_BYTES;
            let deadline = Instant::now() + DEADLINE;
            while common::file_len(&out) < target && !run.has_exited() {
                assert!(Instant::now() < deadline, "the output does not grow");
                thread::sleep(Duration::from_micros(100));
            }
            thread::sleep(Duration::from_micros(rng.in_range(&(0..=2_999))));
        }
        if run.has_exited() {
            let ran = run.finish();
            assert_eq!(ran.code(), Some(0), "{ran:?}");
            panic!("the run ended before kill {kills}: make the input longer");
        }
        run.kill();
        let beyond;
        (recorded, beyond) = check_recorded(dir, keep_order, kills);
        if beyond > 0 {
            cut += 1;
        }
        kills += 1;
    }
    let killed_at = recorded / LINE_BYTES;
    let ran = each(dir, &args("group"));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let got = lines_of(&std::fs::read(&out).unwrap());
    if keep_order {
        assert_eq!(got, lines, "not every line exactly once, in input order");
    } else {
        assert_exactly_once(&got, &lines);
    }
    let report = status(dir, "input.txt");
    assert!(
        report.contains(&format!(
            "output: out.txt, {} bytes recorded\n",
            LINES as u64 * LINE_BYTES
        )),
        "{report}"
    );
    println!(
        "{kills} kills ({early} early), keep_order {keep_order}, seed {seed}: {cut} left results \
         no record covered, {killed_at} lines recorded at the last kill, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        killed_at + 300 <= LINES as u64,
        "the run after the last kill has too little left to do"
    );
}

#[test]
fn sigkill_at_random_moments_leaves_every_lines_output_exactly_once() {
    let _serial = common::serial();
    kill_again_and_again(false, 0x5eed_0001);
}

#[test]
fn sigkill_at_random_moments_with_keep_order_leaves_the_output_in_input_order() {
    let _serial = common::serial();
    kill_again_and_again(true, 0x5eed_0002);
}
