//! The API as a new user writes it, from the README and rustdoc alone: each
//! test is one of the points that tripped a first user (issue 11), written
//! the plain way. That it compiles is half the test.

use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linemark::{Checkpoint, Durability, FailedLine, RetryPolicy, Runner, permanent};

fn input(lines: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.txt");
    std::fs::write(&path, lines).unwrap();
    (dir, path)
}

/// 1. A closure needs no types spelled out, and `?` takes any error.
#[test]
fn a_plain_closure_runs() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, ids) = input("17\n23\n42\n");
    let sum = AtomicU64::new(0);
    let report = Runner::new().run(&ids, |line| {
        let id: u64 = line.as_str()?.parse()?;
        sum.fetch_add(id, Ordering::Relaxed);
        Ok(())
    })?;
    assert!(report.is_complete(), "{report}");
    assert_eq!(sum.into_inner(), 82);
    // Streams too.
    let dir = tempfile::tempdir()?;
    let report = Runner::new().run_reader(&b"a\nb\n"[..], dir.path().join("c"), |line| {
        assert!(!line.as_bytes().is_empty());
        Ok(())
    })?;
    assert_eq!(report.done, 2);
    Ok(())
}

/// 2. Builders are values: stored, chained, passed.
#[test]
fn builders_are_stored_and_chained() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, ids) = input("1\n2\n3\n");
    let runner = Runner::new().workers(4);
    let runner = runner
        .retry(
            RetryPolicy::new()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(1)),
        )
        .durability(Durability::EveryCommit);
    let policy = RetryPolicy::new().max_attempts(5);
    assert_eq!(policy.attempts(), 5);
    let options = Checkpoint::builder().compact_at(4096);
    let runner = runner.checkpoint_options(options);
    let report = runner.run(&ids, |_| Ok(()))?;
    assert_eq!(report.done, 3);
    // The same runner again: nothing left to do.
    assert_eq!(runner.run(&ids, |_| Ok(()))?.done, 0);
    Ok(())
}

/// 3. A closure says "do not retry this" with `permanent`.
#[test]
fn a_closure_marks_an_error_permanent() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, ids) = input("17\nnot-a-number\n");
    let attempts = AtomicU64::new(0);
    let report = Runner::new()
        .retry(
            RetryPolicy::new()
                .max_attempts(5)
                .initial_delay(Duration::from_millis(1)),
        )
        .run(&ids, |line| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let _id: u64 = line.as_str()?.parse().map_err(permanent)?;
            Ok(())
        })?;
    assert_eq!((report.done, report.failed, report.retried), (1, 1, 0));
    assert_eq!(attempts.into_inner(), 2, "the bad line was tried once");
    let failed: Vec<FailedLine> =
        Checkpoint::inspect_failed(&report.checkpoint)?.collect::<Result<_, _>>()?;
    assert_eq!(failed[0].attempts(), 1);
    assert_eq!(failed[0].error(), "invalid digit found in string");
    Ok(())
}

#[derive(Debug)]
struct Import {
    source: std::io::Error,
}

impl fmt::Display for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("importing the record")
    }
}

impl std::error::Error for Import {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// 4. A failed line keeps the whole cause chain.
#[test]
fn a_failed_line_records_the_cause_chain() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, ids) = input("1\n");
    let report = Runner::new().retry(RetryPolicy::never()).run(&ids, |_| {
        let source = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "db refused");
        let error = Import { source };
        assert!(error.source().is_some());
        Err(error.into())
    })?;
    assert_eq!(report.failed, 1);
    let failed: Vec<FailedLine> =
        Checkpoint::inspect_failed(&report.checkpoint)?.collect::<Result<_, _>>()?;
    assert_eq!(failed[0].error(), "importing the record: db refused");
    Ok(())
}

/// 8. A report prints as one line; positions compare by offset.
#[test]
fn reports_print_and_positions_compare() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, ids) = input("a\nb\n");
    let report = Runner::new().run(&ids, |_| Ok(()))?;
    let shown = report.to_string();
    assert!(
        shown.starts_with("done 2, skipped 0, failed 0 (0 in all), retried 0, ended at line 2, "),
        "{shown}"
    );
    assert!(report.resumed_at < report.position);
    Ok(())
}
