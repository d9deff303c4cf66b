//! A last line without a newline, finished, then completed by a newline
//! appended to the input: the same line, so nothing recorded about the
//! input may move or stop matching (found by a review of issue 10).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use linemark::{Checkpoint, FailedLine, Line, RetryPolicy, Runner, StopToken};

fn append(input: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(input)
        .unwrap();
    file.write_all(bytes).unwrap();
}

#[test]
fn completing_the_last_line_leaves_earlier_failed_records_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nfail-me\nlast").unwrap();
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.raw().starts_with(b"fail-me") {
            return Err("no".into());
        }
        Ok(())
    };
    let runner = Runner::new().retry(RetryPolicy::never());
    assert_eq!(runner.run_task(&input, &task).unwrap().failed, 1);
    append(&input, b"\nmore\n");
    let report = runner.run_task(&input, &task).unwrap();
    assert_eq!(report.done, 1, "only the new line: {report:?}");
    let failed: Vec<FailedLine> = Checkpoint::inspect_failed(&report.checkpoint)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!((failed[0].line(), failed[0].offset()), (2, 2));
    // The failed line is still at byte 2, and a retry finds it there.
    let report = Runner::new()
        .retry_failed(true)
        .run(&input, |_| Ok(()))
        .unwrap();
    assert_eq!((report.done, report.failed_total), (1, 0));
}

#[test]
fn a_done_last_line_completed_by_a_newline_is_still_done() {
    // Two workers: line 2 (the last, unterminated) finishes while line 1 is
    // still running, then the run stops and line 1 is left unfinished, so
    // line 2 is recorded as done beyond the position.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "first\nlast").unwrap();
    let stop = StopToken::new();
    let last_done = AtomicBool::new(false);
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() == 1 {
            while !last_done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            stop.stop();
            return Err("stopped".into());
        }
        last_done.store(true, Ordering::SeqCst);
        Ok(())
    };
    let report = Runner::new()
        .workers(2)
        .stop_token(stop.clone())
        .run_task(&input, &task)
        .unwrap();
    let snapshot = Checkpoint::inspect(&report.checkpoint).unwrap();
    assert_eq!(
        (snapshot.position.line(), snapshot.done_beyond.clone()),
        (0, vec![2]),
        "setup: line 2 done beyond the position"
    );
    append(&input, b"\n");
    let ran = std::sync::Mutex::new(Vec::new());
    let report = Runner::new()
        .run(&input, |line| {
            ran.lock().unwrap().push(line.number());
            Ok(())
        })
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(*ran.lock().unwrap(), vec![1], "line 2 was done already");
}
