//! Fixtures shared by the integration tests: generated inputs in temporary
//! directories, the positions a correct job reaches in them, and running
//! this test binary again as a child process.

// Each test binary compiles its own copy of this module and uses a part of it.
#![allow(dead_code)]

pub mod lateness;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use linemark::{Checkpoint, FailedLine, Position};
use tempfile::TempDir;

/// The environment variable that makes a test act as a child process; its
/// value names the role.
pub const CHILD_ROLE: &str = "LINEMARK_TEST_CHILD";

/// How long any child or condition may take before the test fails; generous,
/// because only a hang should ever reach it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// An input file in a temporary directory that is removed on drop.
pub struct Input {
    pub dir: TempDir,
    pub path: PathBuf,
    /// The raw lines, terminators included; their concatenation is the file.
    pub lines: Vec<Vec<u8>>,
}

impl Input {
    /// Writes `lines` to `input.txt` in a new temporary directory.
    pub fn new(lines: Vec<Vec<u8>>) -> Input {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.txt");
        fs::write(&path, lines.concat()).unwrap();
        Input { dir, path, lines }
    }

    /// An input of `count` distinct generated lines.
    pub fn generated(count: usize) -> Input {
        Input::new(generated_lines(count))
    }

    /// A path for another file in the same directory.
    pub fn sibling(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `positions()[k]` is where a job stands after finishing `k` lines.
    pub fn positions(&self) -> Vec<Position> {
        positions_after(&self.lines)
    }
}

/// `count` distinct lines of varied lengths, each ending with `\n`.
pub fn generated_lines(count: usize) -> Vec<Vec<u8>> {
    (1..=count)
        .map(|n| format!("line {n:06} {}\n", "x".repeat(n * 7 % 23)).into_bytes())
        .collect()
}

/// How many times each line of `input` occurs in `output`, by line number
/// (index 0 is line 1).
///
/// A SIGKILL can cut an append short: Linux checks for a fatal signal
/// between the pages a `write` copies, so a line that crosses a page
/// boundary of the output may be left half written. Its task never
/// finished, so the part is not a done line, and the next append lands
/// right after it: such bytes before a whole input line are skipped.
///
/// # Panics
///
/// When the output holds a line that is not an input line, with or without
/// cut-short bytes before it.
pub fn counts_by_line(input: &Input, output: &Path) -> Vec<u32> {
    let numbers: HashMap<&[u8], usize> = input
        .lines
        .iter()
        .enumerate()
        .map(|(index, line)| (&line[..], index))
        .collect();
    let mut counts = vec![0u32; input.lines.len()];
    let bytes = fs::read(output).unwrap_or_default();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let index = numbers.get(line).copied().or_else(|| {
            // A whole line after bytes cut short: each cut piece is the
            // start of an input line (generated lines hold one `l`, their
            // first byte, so a piece begins at each `l`).
            let starts: Vec<usize> = (1..line.len()).filter(|&at| line[at] == b'l').collect();
            let whole = *starts.last()?;
            let index = numbers.get(&line[whole..]).copied()?;
            let is_cut_piece = |piece: &[u8]| input.lines.iter().any(|l| l.starts_with(piece));
            let bounds: Vec<usize> = [0].into_iter().chain(starts).collect();
            bounds
                .windows(2)
                .all(|piece| is_cut_piece(&line[piece[0]..piece[1]]))
                .then_some(index)
        });
        let index = index
            .unwrap_or_else(|| panic!("not an input line: {:?}", String::from_utf8_lossy(line)));
        counts[index] += 1;
    }
    counts
}

/// The position after each prefix of `lines`, computed from the format's
/// definition (offset, count, length, CRC-32 without the `\n`) rather than
/// with the library's own helpers, so the tests do not check it against
/// itself.
pub fn positions_after(lines: &[Vec<u8>]) -> Vec<Position> {
    let mut positions = vec![Position::start()];
    let mut offset = 0u64;
    for (index, line) in lines.iter().enumerate() {
        offset += line.len() as u64;
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let position = Position::from_parts(
            offset,
            index as u64 + 1,
            line.len() as u64,
            crc32fast::hash(content),
        )
        .unwrap();
        positions.push(position);
    }
    positions
}

/// The role this test process was started in, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// A path handed to a child process through the environment variable `name`.
pub fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set"))
}

/// Runs the test `test_name` of this test binary again, alone, in a child
/// process with [`CHILD_ROLE`] set to `role` and the extra `env`. Its
/// stdin is a pipe, closed by [`ChildProcess::close_stdin`]; its stdout and
/// stderr are collected.
pub fn spawn_self(test_name: &str, role: &str, env: &[(&str, &OsStr)]) -> ChildProcess {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    // Drained by threads so a chatty child never blocks on a full pipe.
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    ChildProcess {
        stdin: child.stdin.take(),
        child,
        stdout: Some(stdout),
        stderr: Some(stderr),
        test_name: test_name.to_string(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A child started by [`spawn_self`]. Killed on drop if still running, so a
/// failing test leaves no process behind.
pub struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    test_name: String,
}

/// How a child process ended, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// What the child printed after `prefix`, line by line. The prefix may
    /// be in the middle of a line: the test harness prints the test's name
    /// before the test's own output.
    pub fn reports<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.stdout
            .lines()
            .filter_map(move |line| line.split_once(prefix).map(|(_, report)| report))
    }
}

impl ChildProcess {
    /// Closes the child's stdin, which a child can wait for as a signal.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether the child has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for the child to exit by itself, at most `timeout`, and checks
    /// that it ran its test and the test passed.
    ///
    /// # Panics
    ///
    /// When the child is still running at the deadline (it is killed first),
    /// ran no test, or failed.
    pub fn wait_success(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let finished = self.kill_and_wait();
                panic!("child did not exit within {timeout:?}; it printed:\n{finished:?}");
            }
            thread::sleep(Duration::from_millis(1));
        }
        let finished = self.collect();
        // A mistyped test name makes the child run nothing and still succeed.
        assert!(
            finished.stdout.contains("running 1 test"),
            "child ran no test (is `{}` the test's name?):\n{finished:?}",
            self.test_name
        );
        assert!(finished.status.success(), "child failed:\n{finished:?}");
        finished
    }

    /// Kills the child with SIGKILL (on Unix) unless it has exited, and
    /// reaps it.
    pub fn kill_and_wait(&mut self) -> Finished {
        // Fails only when the child has exited already, which is fine.
        let _ = self.child.kill();
        self.collect()
    }

    fn collect(&mut self) -> Finished {
        self.stdin = None;
        let status = self.child.wait().unwrap();
        let join = |handle: Option<JoinHandle<String>>| {
            handle.map(|h| h.join().unwrap()).unwrap_or_default()
        };
        Finished {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `condition` until it holds.
///
/// # Panics
///
/// When it still does not hold after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_micros(200));
    }
}

/// The lines the checkpoint at `checkpoint` records as failed, read from
/// its failure log with `Checkpoint::inspect_failed`, by line number (the
/// order `Snapshot::failed` listed them in before it became a count; the
/// log lists them in the order they were recorded). Checks that no line is
/// listed twice and that the listing agrees with the count
/// `Checkpoint::inspect` reports.
pub fn failed_lines(checkpoint: &Path) -> Vec<FailedLine> {
    let mut failed: Vec<FailedLine> = Checkpoint::inspect_failed(checkpoint)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    failed.sort_by_key(FailedLine::line);
    assert!(
        failed
            .windows(2)
            .all(|pair| pair[0].line() < pair[1].line()),
        "a failed line listed twice: {failed:?}"
    );
    let count = Checkpoint::inspect(checkpoint).unwrap().failed;
    assert_eq!(
        count,
        failed.len() as u64,
        "count against listing: {failed:?}"
    );
    failed
}

/// The length of the file at `path`, 0 when it does not exist yet.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Runs the tests of one test binary one at a time: call it first in every
/// test that opens checkpoints or spawns processes.
///
/// A process spawned by one thread holds copies of all the parent's file
/// descriptors from `fork` until `exec` closes them, so a checkpoint lock
/// dropped by another thread in that window stays held, and reopening it
/// right away fails with `Error::Locked`. Tests that spawn processes while
/// others drop and reopen checkpoints would fail now and then for that
/// reason alone.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it does not make the others fail.
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The example `name`, built by cargo (a no-op when it is up to date) with
/// the profile and target directory of the running test.
///
/// The cargo that runs a test sets variables such as `CARGO_PKG_NAME` and
/// `CARGO_MANIFEST_DIR` for it, and some build scripts (ring's, under
/// ureq's TLS) ask to rerun when those change: passed on to this build,
/// they would make it and the next `cargo test` rebuild those crates in
/// turn, seven seconds each time. They are removed here.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/TEST-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    // The features the tests were built with, so that the library is not
    // built twice, and the examples that need a feature get it.
    if cfg!(feature = "tokio") {
        build.args(["--features", "tokio"]);
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            );
        if set_for_tests {
            build.env_remove(&*key);
        }
    }
    // The profile's directory is its name, but for `dev`'s.
    let profile = profile_dir.file_name().expect("profile directory");
    if profile != OsStr::new("debug") {
        build.arg("--profile").arg(profile);
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build --example {name}: {status}");
    let binary = profile_dir.join("examples").join(name);
    assert!(binary.exists(), "{} not found", binary.display());
    binary
}

/// A tmpfs mounted on a temporary directory, unmounted on drop: a real disk
/// that fills up. Mounting needs root (CI runs as root); `mount` gives
/// `None` elsewhere, and the test says so and returns.
pub struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    pub fn mount(bytes: usize) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A tokio runtime on the calling thread, for the async runner's tests.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A tokio runtime with two worker threads.
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The environment variable that fixes the seed of a randomized test.
pub const SEED_VAR: &str = "LINEMARK_TEST_SEED";

/// The seed of a randomized test: `LINEMARK_TEST_SEED`, or the clock. Print
/// it, so a failing run can be repeated.
pub fn test_seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(seed) => seed.parse().unwrap(),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// SplitMix64: enough randomness for kill moments, reproducible from the
/// seed.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn in_range(&mut self, range: &std::ops::RangeInclusive<u64>) -> u64 {
        range.start() + self.next() % (range.end() - range.start() + 1)
    }
}
