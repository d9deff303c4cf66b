//! Lines longer than the runner's limit (issue item 6): such a line is a
//! failed line, recorded with its offset, length and digest and skipped,
//! not the end of the run nor of every rerun; and the memory a run takes is
//! bounded by the limit, not by the line.
//!
//! The memory test runs this test binary again as a child (see
//! `common::spawn_self`), so that the peak it measures is that of the run
//! alone.

mod common;

use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Mutex;

use linemark::{Checkpoint, Error, FailedLine, Line, Runner};

use common::{Input, positions_after, serial};

const LIMIT: usize = 100;

/// Line 3 is 301 bytes with its `\n`, over `LIMIT`; the others are short.
fn input_with_a_long_line() -> Input {
    let mut long = vec![b'x'; 300];
    long.push(b'\n');
    Input::new(vec![
        b"one\n".to_vec(),
        b"two\n".to_vec(),
        long,
        b"four\n".to_vec(),
        b"five\n".to_vec(),
    ])
}

/// Records which lines the task was given.
#[derive(Default)]
struct Seen(Mutex<Vec<u64>>);

impl Seen {
    fn task(&self) -> impl Fn(&Line<'_>) -> Result<(), String> + Sync + '_ {
        |line: &Line<'_>| {
            self.0.lock().unwrap().push(line.number());
            Ok(())
        }
    }

    fn lines(&self) -> Vec<u64> {
        let mut lines = self.0.lock().unwrap().clone();
        lines.sort_unstable();
        lines
    }
}

fn runner(workers: usize) -> Runner {
    Runner::new().max_line_len(LIMIT).workers(workers)
}

/// The one failed record of `checkpoint`, checked to be line 3 of
/// `input_with_a_long_line`, never attempted, with an error naming the
/// limit, the line and its offset.
fn assert_long_line_recorded(checkpoint: &Path, input: &Input) {
    let failed = common::failed_lines(checkpoint);
    let [failed] = &failed[..] else {
        panic!("one failed line expected: {failed:?}");
    };
    let long = &input.lines[2];
    assert_eq!(
        (failed.line(), failed.offset(), failed.len()),
        (3, 8, long.len() as u64)
    );
    assert_eq!(failed.digest(), crc32fast::hash(&long[..long.len() - 1]));
    assert_eq!(failed.attempts(), 0, "the task never ran");
    let error = failed.error();
    for part in ["line 3", "byte 8", &format!("limit of {LIMIT} bytes")] {
        assert!(error.contains(part), "{part:?} not in {error:?}");
    }
    // The record can be checked against the input like any failed line.
    let mut buf = Vec::new();
    let line = failed
        .read_from(
            &mut io::Cursor::new(std::fs::read(&input.path).unwrap()),
            &mut buf,
        )
        .unwrap();
    assert_eq!(line.raw(), &long[..]);
}

#[test]
fn a_line_over_the_limit_is_a_failed_line_and_the_run_goes_on() {
    let _serial = serial();
    for workers in [1, 4] {
        let input = input_with_a_long_line();
        let seen = Seen::default();
        let report = runner(workers)
            .run_task(&input.path, &seen.task())
            .unwrap_or_else(|err| panic!("{workers} worker(s): {err}"));
        assert_eq!(seen.lines(), [1, 2, 4, 5], "{workers} worker(s)");
        assert_eq!((report.done, report.failed, report.failed_total), (4, 1, 1));
        assert!(!report.stopped && !report.is_complete());
        // The watermark moved past the long line, with its digest.
        assert_eq!(report.position, positions_after(&input.lines)[5]);
        assert_long_line_recorded(&report.checkpoint, &input);

        // A rerun does not stop on it, nor run anything.
        let again = Seen::default();
        let report = runner(workers)
            .run_task(&input.path, &again.task())
            .unwrap();
        assert!(again.lines().is_empty());
        assert_eq!((report.done, report.failed, report.failed_total), (0, 0, 1));
    }
}

#[test]
fn a_stream_with_a_line_over_the_limit_goes_on() {
    let _serial = serial();
    for workers in [1, 4] {
        let input = input_with_a_long_line();
        let text = std::fs::read(&input.path).unwrap();
        let checkpoint = input.sibling("stream.checkpoint");
        let seen = Seen::default();
        let report = runner(workers)
            .run_reader_task(&text[..], &checkpoint, &seen.task())
            .unwrap_or_else(|err| panic!("{workers} worker(s): {err}"));
        assert_eq!(seen.lines(), [1, 2, 4, 5], "{workers} worker(s)");
        assert_eq!((report.done, report.failed), (4, 1));
        assert_eq!(report.position, positions_after(&input.lines)[5]);
        assert_long_line_recorded(&checkpoint, &input);
    }
}

#[test]
fn the_limit_counts_the_newline_and_applies_to_an_unterminated_last_line() {
    let _serial = serial();
    let at_limit = [vec![b'a'; LIMIT - 1], b"\n".to_vec()].concat();
    let over = vec![b'b'; LIMIT + 1];
    let input = Input::new(vec![at_limit, over.clone()]);
    let seen = Seen::default();
    let report = runner(1).run_task(&input.path, &seen.task()).unwrap();
    assert_eq!(seen.lines(), [1]);
    assert_eq!((report.done, report.failed), (1, 1));
    assert_eq!(report.position, positions_after(&input.lines)[2]);
    let failed = common::failed_lines(&report.checkpoint);
    assert_eq!((failed[0].line(), failed[0].len()), (2, LIMIT as u64 + 1));
    assert_eq!(failed[0].digest(), crc32fast::hash(&over));
}

/// A checkpoint that records line 3 of `input_with_a_long_line` as failed
/// beyond its position (which a parallel run leaves when line 1 is still
/// running at a kill), with the given digest.
fn record_line_3_failed(input: &Input, digest_of: &[u8]) {
    let mut checkpoint = Checkpoint::open(Runner::new().checkpoint_for(&input.path)).unwrap();
    let recorded = FailedLine::new(&Line::new(digest_of, 3, 8), 0, "too long");
    checkpoint.commit_failed(recorded).unwrap();
    checkpoint.close().unwrap();
}

#[test]
fn a_rerun_skips_a_recorded_long_line_without_running_it() {
    let _serial = serial();
    for workers in [1, 4] {
        let input = input_with_a_long_line();
        record_line_3_failed(&input, &input.lines[2]);
        let seen = Seen::default();
        let report = runner(workers)
            .run_task(&input.path, &seen.task())
            .unwrap_or_else(|err| panic!("{workers} worker(s): {err}"));
        assert_eq!(seen.lines(), [1, 2, 4, 5], "{workers} worker(s)");
        assert_eq!(
            (
                report.done,
                report.skipped,
                report.failed,
                report.failed_total
            ),
            (4, 1, 0, 1)
        );
        assert_eq!(report.position, positions_after(&input.lines)[5]);
    }
}

#[test]
fn a_long_line_that_differs_from_its_record_is_an_input_change() {
    let _serial = serial();
    for workers in [1, 4] {
        let input = input_with_a_long_line();
        // Same length, other bytes.
        let mut other = input.lines[2].clone();
        other[150] = b'y';
        record_line_3_failed(&input, &other);
        let seen = Seen::default();
        match runner(workers).run_task(&input.path, &seen.task()) {
            Err(Error::InputChanged {
                line: 3, offset: 8, ..
            }) => {}
            other => panic!("{workers} worker(s): {other:?}"),
        }
    }
}

#[test]
fn retry_failed_reports_a_long_line_failed_again_without_reading_it() {
    let _serial = serial();
    for workers in [1, 4] {
        // A file: the failed line is found by its offset.
        let input = input_with_a_long_line();
        runner(workers)
            .run_task(&input.path, &Seen::default().task())
            .unwrap();
        let seen = Seen::default();
        let report = runner(workers)
            .retry_failed(true)
            .run_task(&input.path, &seen.task())
            .unwrap_or_else(|err| panic!("{workers} worker(s): {err}"));
        assert!(seen.lines().is_empty());
        assert_eq!((report.done, report.failed, report.failed_total), (0, 1, 1));
        assert_long_line_recorded(&report.checkpoint, &input);

        // A stream: the failed line is found by counting lines.
        let text = std::fs::read(&input.path).unwrap();
        let checkpoint = input.sibling("stream.checkpoint");
        runner(workers)
            .run_reader_task(&text[..], &checkpoint, &Seen::default().task())
            .unwrap();
        let report = runner(workers)
            .retry_failed(true)
            .run_reader_task(&text[..], &checkpoint, &seen.task())
            .unwrap_or_else(|err| panic!("{workers} worker(s), stream: {err}"));
        assert!(seen.lines().is_empty());
        assert_eq!((report.done, report.failed, report.failed_total), (0, 1, 1));
        assert_long_line_recorded(&checkpoint, &input);

        // With a higher limit, the line runs and is failed no more.
        let report = Runner::new()
            .workers(workers)
            .retry_failed(true)
            .run_task(&input.path, &seen.task())
            .unwrap();
        assert_eq!(seen.lines(), [3]);
        assert!(report.is_complete());
    }
}

#[test]
fn the_default_limit_is_64_mib() {
    assert_eq!(Runner::DEFAULT_MAX_LINE_LEN, 64 << 20);
    let debug = format!("{:?}", Runner::new());
    assert!(
        debug.contains(&format!("max_line_len: {}", 64 << 20)),
        "{debug}"
    );
}

/// A stream of `a\n`, then a line of `len` bytes `x` and its `\n`, then
/// `b\n`, generated as it is read, so the test itself holds no copy.
struct LongLineStream {
    len: u64,
    at: u64,
}

impl LongLineStream {
    const HEAD: &'static [u8] = b"a\n";
    const TAIL: &'static [u8] = b"\nb\n";

    fn total(&self) -> u64 {
        Self::HEAD.len() as u64 + self.len + Self::TAIL.len() as u64
    }

    fn byte(&self, at: u64) -> u8 {
        let head = Self::HEAD.len() as u64;
        if at < head {
            Self::HEAD[at as usize]
        } else if at < head + self.len {
            b'x'
        } else {
            Self::TAIL[(at - head - self.len) as usize]
        }
    }
}

impl Read for LongLineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let head = Self::HEAD.len() as u64;
        let n = (buf.len() as u64).min(self.total() - self.at) as usize;
        let long = head..head + self.len;
        if long.contains(&self.at) && long.contains(&(self.at + n as u64 - 1)) {
            buf[..n].fill(b'x');
        } else {
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                *byte = self.byte(self.at + i as u64);
            }
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Peak resident memory of this process, from `/proc/self/status`.
#[cfg(target_os = "linux")]
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const LONG_LINE_LEN: u64 = 200 << 20;
const WORKERS_VAR: &str = "LINEMARK_TEST_WORKERS";
const CHECKPOINT_VAR: &str = "LINEMARK_TEST_CHECKPOINT";
const REPORT: &str = "linemark-child: ";

/// The child's part: a run with the default limit over a stream holding a
/// 200 MiB line.
#[cfg(target_os = "linux")]
fn long_line_child() {
    let workers: usize = std::env::var(WORKERS_VAR).unwrap().parse().unwrap();
    let checkpoint = common::env_path(CHECKPOINT_VAR);
    let stream = BufReader::new(LongLineStream {
        len: LONG_LINE_LEN,
        at: 0,
    });
    let task = |_: &Line<'_>| -> Result<(), String> { Ok(()) };
    let report = Runner::new()
        .workers(workers)
        .run_reader_task(stream, &checkpoint, &task)
        .unwrap();
    // Checked by the parent, memory first.
    println!(
        "{REPORT}{} {} {}",
        peak_rss_kib(),
        report.done,
        report.failed
    );
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_bounded_by_the_default_limit() {
    const TEST_NAME: &str = "memory_stays_bounded_by_the_default_limit";
    if common::child_role().as_deref() == Some("long-line") {
        return long_line_child();
    }
    let _serial = serial();
    // The digest of the long line, computed here in pieces.
    let mut hasher = crc32fast::Hasher::new();
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..LONG_LINE_LEN >> 20 {
        hasher.update(&piece);
    }
    let digest = hasher.finalize();
    for workers in ["1", "4"] {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("stream.checkpoint");
        let env = [
            (WORKERS_VAR, std::ffi::OsStr::new(workers)),
            (CHECKPOINT_VAR, checkpoint.as_os_str()),
        ];
        let child = common::spawn_self(TEST_NAME, "long-line", &env).wait_success(common::DEADLINE);
        let [peak_kib, done, failed] = child
            .reports(REPORT)
            .find_map(|report| {
                let numbers: Vec<u64> = report
                    .split_whitespace()
                    .map(|n| n.parse().ok())
                    .collect::<Option<_>>()?;
                numbers.try_into().ok()
            })
            .unwrap_or_else(|| panic!("the child reported nothing: {child:?}"));
        // The limit (64 MiB) plus what the process takes anyway, far below
        // the 200 MiB line.
        let bound_kib = (Runner::DEFAULT_MAX_LINE_LEN as u64 >> 10) + (32 << 10);
        assert!(
            peak_kib < bound_kib,
            "{workers} worker(s): peak {peak_kib} KiB, bound {bound_kib} KiB"
        );
        assert_eq!((done, failed), (2, 1), "{workers} worker(s)");
        let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
        let failed = common::failed_lines(&checkpoint);
        let [failed] = &failed[..] else {
            panic!("one failed line expected: {failed:?}");
        };
        assert_eq!(
            (
                failed.line(),
                failed.offset(),
                failed.len(),
                failed.digest()
            ),
            (2, 2, LONG_LINE_LEN + 1, digest)
        );
        assert_eq!(snapshot.position.line(), 3);
    }
}
