//! The runner's outputs: what a task writes to its `Out` reaches the
//! outputs exactly once per finished line, in the order asked, and never
//! for a failed attempt or a failed line.

mod common;

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linemark::{Error, Line, Out, RetryPolicy, Runner, StopToken, Task, permanent};

use common::Input;

fn spin(time: Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < time {
        std::hint::spin_loop();
    }
}

/// Tasks of uneven length, so that lines finish out of order.
fn uneven(line: &Line<'_>) {
    spin(Duration::from_micros(line.number() * 37 % 300));
}

fn sorted_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.sort();
    lines
}

#[test]
fn results_are_in_input_order_with_keep_order_and_complete_either_way() {
    let input = Input::generated(3_000);
    let expected = input.lines.concat();
    let mut any_out_of_order = false;
    for keep_order in [false, true] {
        let output = input.sibling(&format!("out-{keep_order}.txt"));
        let report = Runner::new()
            .workers(4)
            .keep_order(keep_order)
            .checkpoint_path(input.sibling(&format!("cp-{keep_order}")))
            .output(&output)
            .map(&input.path, |line, out| {
                uneven(line);
                out.write_all(line.raw())?;
                Ok(())
            })
            .unwrap();
        assert!(report.is_complete(), "{report}");
        let written = std::fs::read(&output).unwrap();
        if keep_order {
            assert!(written == expected, "not in input order");
        } else {
            any_out_of_order = written != expected;
            assert_eq!(sorted_lines(&written), sorted_lines(&expected));
        }
    }
    assert!(
        any_out_of_order,
        "the lines all finished in order: the keep-order case proves nothing"
    );
}

#[test]
fn a_failed_attempt_writes_nothing_and_a_failed_line_writes_nothing() {
    let input = Input::generated(500);
    let output = input.sibling("out.txt");
    let attempts = Mutex::new(std::collections::HashMap::<u64, u32>::new());
    let report = Runner::new()
        .workers(3)
        .retry(
            RetryPolicy::new()
                .max_attempts(2)
                .initial_delay(Duration::ZERO),
        )
        .output(&output)
        .map(&input.path, |line, out| {
            let attempt = {
                let mut attempts = attempts.lock().unwrap();
                let n = attempts.entry(line.number()).or_default();
                *n += 1;
                *n
            };
            out.write_all(b"partial ")?;
            if line.number() % 10 == 0 {
                return Err(permanent("for good"));
            }
            if line.number() % 3 == 0 && attempt == 1 {
                return Err("once".into());
            }
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    assert_eq!(report.failed, 50);
    let written = std::fs::read(&output).unwrap();
    let expected: Vec<u8> = input
        .lines
        .iter()
        .enumerate()
        .filter(|(index, _)| (index + 1) % 10 != 0)
        .flat_map(|(_, line)| [&b"partial "[..], line].concat())
        .collect();
    assert_eq!(
        sorted_lines(&written),
        sorted_lines(&expected),
        "each done line once, with the writes of its successful attempt only"
    );
}

#[test]
fn retry_failed_appends_the_results_of_the_lines_that_succeed_then() {
    let input = Input::generated(200);
    let output = input.sibling("out.txt");
    let fail = AtomicU64::new(1);
    let run = |retry_failed: bool| {
        Runner::new()
            .workers(2)
            .retry_failed(retry_failed)
            .output(&output)
            .map(&input.path, |line, out| {
                out.write_all(line.raw())?;
                if line.number() % 7 == 0 && fail.load(Ordering::SeqCst) == 1 {
                    return Err(permanent("not yet"));
                }
                Ok(())
            })
            .unwrap()
    };
    assert_eq!(run(false).failed, 28);
    let first = std::fs::read(&output).unwrap();
    assert_eq!(sorted_lines(&first).len(), 200 - 28);
    // A plain rerun finds nothing to do and writes nothing.
    run(false);
    assert_eq!(std::fs::read(&output).unwrap(), first);
    fail.store(0, Ordering::SeqCst);
    let retried = run(true);
    assert_eq!((retried.done, retried.failed_total), (28, 0));
    let written = std::fs::read(&output).unwrap();
    assert!(
        written.starts_with(&first),
        "earlier results kept as they were"
    );
    assert_eq!(sorted_lines(&written), sorted_lines(&input.lines.concat()));
    // Nothing more on a second retry.
    run(true);
    assert_eq!(std::fs::read(&output).unwrap(), written);
}

#[test]
fn a_stopped_run_resumed_writes_each_result_once_in_order() {
    let input = Input::generated(4_000);
    let output = input.sibling("out.txt");
    for round in 0.. {
        let stop = StopToken::new();
        let done = AtomicU64::new(0);
        let report = Runner::new()
            .workers(4)
            .keep_order(true)
            .stop_token(stop.clone())
            .output(&output)
            .map(&input.path, |line, out| {
                uneven(line);
                if done.fetch_add(1, Ordering::SeqCst) == 700 {
                    stop.stop();
                }
                out.write_all(line.raw())?;
                Ok(())
            })
            .unwrap();
        let written = std::fs::read(&output).unwrap();
        let expected = input.lines.concat();
        assert!(
            expected.starts_with(&written),
            "round {round}: the output is not a prefix of the input in order"
        );
        if report.is_complete() {
            assert_eq!(written, expected);
            assert!(round > 2, "the run was never stopped");
            break;
        }
    }
}

#[test]
fn two_outputs_get_their_own_results() {
    let input = Input::generated(1_000);
    let (evens, odds) = (input.sibling("evens.txt"), input.sibling("odds.txt"));
    for workers in [1, 4] {
        let _ = std::fs::remove_file(&evens);
        let _ = std::fs::remove_file(&odds);
        Runner::new()
            .workers(workers)
            .checkpoint_path(input.sibling(&format!("cp-{workers}")))
            .output(&evens)
            .output(&odds)
            .map(&input.path, |line, out| {
                out.to((line.number() % 2) as usize)
                    .extend_from_slice(line.raw());
                Ok(())
            })
            .unwrap();
        let pick = |parity: usize| -> Vec<u8> {
            input
                .lines
                .iter()
                .enumerate()
                .filter(|(index, _)| (index + 1) % 2 == parity)
                .flat_map(|(_, line)| line.clone())
                .collect()
        };
        assert_eq!(
            sorted_lines(&std::fs::read(&evens).unwrap()),
            sorted_lines(&pick(0))
        );
        assert_eq!(
            sorted_lines(&std::fs::read(&odds).unwrap()),
            sorted_lines(&pick(1))
        );
    }
}

#[test]
fn a_run_without_the_recorded_output_is_refused_before_any_line_runs() {
    let input = Input::generated(10);
    let output = input.sibling("out.txt");
    let first = Runner::new()
        .output(&output)
        .map(&input.path, |line, out| {
            out.write_all(line.raw())?;
            if line.number() == 5 {
                return Err(permanent("later"));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(first.failed, 1);
    let ran = AtomicU64::new(0);
    let err = Runner::new()
        .retry_failed(true)
        .run(&input.path, |_| {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::OutputChanged { path, .. } if path.ends_with("out.txt")),
        "{err}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // Another output in its place is refused too.
    let err = Runner::new()
        .retry_failed(true)
        .output(input.sibling("other.txt"))
        .map(&input.path, |_, _| Ok(()))
        .unwrap_err();
    assert!(matches!(err, Error::OutputChanged { .. }), "{err}");
    assert!(!input.sibling("other.txt").exists());
}

#[test]
fn a_stream_maps_and_resumes_by_counting_lines() {
    let input = Input::generated(300);
    let output = input.sibling("out.txt");
    let checkpoint = input.sibling("stream.checkpoint");
    let stream = input.lines.concat();
    let half = AtomicU64::new(0);
    let stop = StopToken::new();
    let first = Runner::new()
        .stop_token(stop.clone())
        .output(&output)
        .map_reader(&stream[..], &checkpoint, |line, out| {
            if half.fetch_add(1, Ordering::SeqCst) == 149 {
                stop.stop();
            }
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    assert!(!first.is_complete());
    let second = Runner::new()
        .output(&output)
        .map_reader(&stream[..], &checkpoint, |line, out| {
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    assert!(second.is_complete());
    assert_eq!(std::fs::read(&output).unwrap(), stream);
}

/// A `Task` type that writes results implements `run_into`.
struct Upper;

impl Task for Upper {
    type Error = std::io::Error;

    fn run(&self, line: &Line<'_>) -> Result<(), std::io::Error> {
        self.run_into(line, &mut Out::default())
    }

    fn run_into(&self, line: &Line<'_>, out: &mut Out) -> Result<(), std::io::Error> {
        out.write_all(&line.raw().to_ascii_uppercase())
    }
}

#[test]
fn a_task_type_writes_results_through_run_into() {
    let input = Input::generated(50);
    let output = input.sibling("out.txt");
    Runner::new()
        .output(&output)
        .run_task(&input.path, &Upper)
        .unwrap();
    assert_eq!(
        std::fs::read(&output).unwrap(),
        input.lines.concat().to_ascii_uppercase()
    );
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn the_async_runner_refuses_outputs() {
    let input = Input::generated(5);
    let err = Runner::new()
        .output(input.sibling("out.txt"))
        .run_async(&input.path, |_line| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("async runner has no outputs"),
        "{err}"
    );
    // Refused before any file was made.
    assert!(!input.sibling("out.txt").exists());
    assert!(!input.sibling("input.txt.checkpoint").exists());
}

#[test]
fn the_input_as_its_own_output_is_refused() {
    let input = Input::generated(5);
    let before = std::fs::read(&input.path).unwrap();
    let err = Runner::new()
        .output(&input.path)
        .map(&input.path, |line, out| {
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::OutputChanged { reason, .. } if reason.contains("input")),
        "{err}"
    );
    assert_eq!(std::fs::read(&input.path).unwrap(), before);
}

/// Every state the checkpoint passes through (copied with the output by the
/// before-write hook: what a SIGKILL at that moment leaves) holds exactly
/// the results it records, with one worker, cheap lines recorded a few at
/// a time, and failing lines among them (whose records carry the outputs'
/// lengths too). Writes come from full groups of 7 commits, on the job's
/// thread, so they fall between any two commits.
#[test]
fn every_state_of_the_checkpoint_holds_exactly_the_results_it_records() {
    const LINES: u64 = 3000;
    let fails = |n: u64| n % 37 == 0;
    let input = Input::new(
        (1..=LINES)
            .map(|n| format!("line {n}\n").into_bytes())
            .collect(),
    );
    let (output, checkpoint) = (input.sibling("out.txt"), input.sibling("cp"));
    let copies = input.sibling("copies");
    std::fs::create_dir(&copies).unwrap();
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let hook = {
        let (checkpoint, output, copies, count) = (
            checkpoint.clone(),
            output.clone(),
            copies.clone(),
            count.clone(),
        );
        move || {
            if let Ok(bytes) = std::fs::read(&checkpoint) {
                let copy = copies.join(count.fetch_add(1, Ordering::SeqCst).to_string());
                std::fs::create_dir(&copy)?;
                std::fs::write(copy.join("cp"), bytes)?;
                std::fs::write(copy.join("out.txt"), std::fs::read(&output)?)?;
                // The failure log, which the checkpoint names.
                let mut log = checkpoint.file_name().unwrap().to_os_string();
                log.push(".failures");
                if let Ok(bytes) = std::fs::read(checkpoint.with_file_name(&log)) {
                    std::fs::write(copy.join(&log), bytes)?;
                }
            }
            Ok(())
        }
    };
    let report = Runner::new()
        .checkpoint_path(&checkpoint)
        .durability(linemark::Durability::group(7, Duration::from_secs(3600)))
        .write_delay(Duration::from_secs(3600))
        .before_checkpoint_write(hook)
        .output(&output)
        .map(&input.path, |line, out| {
            if fails(line.number()) {
                return Err(permanent("boom"));
            }
            writeln!(out, "r{}", line.number())?;
            Ok(())
        })
        .unwrap();
    assert_eq!(report.failed, LINES / 37);
    let copies_made = count.load(Ordering::SeqCst);
    assert!(copies_made > 100, "{copies_made} states");
    let mut bad = Vec::new();
    for k in 0..copies_made {
        let copy = copies.join(k.to_string());
        let mut checkpoint = linemark::Checkpoint::open(copy.join("cp")).unwrap();
        drop(checkpoint.output(copy.join("out.txt")).unwrap());
        let position = checkpoint.position().line();
        assert_eq!(checkpoint.done_beyond().count(), 0);
        drop(checkpoint);
        let expected: String = (1..=position)
            .filter(|&n| !fails(n))
            .map(|n| format!("r{n}\n"))
            .collect();
        if std::fs::read_to_string(copy.join("out.txt")).unwrap() != expected {
            bad.push((k, position));
        }
    }
    assert!(
        bad.is_empty(),
        "states (copy, position) with other results: {bad:?}"
    );
}

/// A stop cuts batches short, some finished beyond the watermark and held:
/// the lines the checkpoint records as finished have their results, in both
/// orders, every time.
#[test]
fn a_stop_never_records_lines_without_their_results() {
    for round in 0..10 {
        for keep_order in [false, true] {
            let input = Input::new(
                (1..=4000u64)
                    .map(|n| format!("line {n}\n").into_bytes())
                    .collect(),
            );
            let (output, checkpoint) = (input.sibling("out.txt"), input.sibling("cp"));
            let stop = StopToken::new();
            let stopper = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(40));
                    stop.stop();
                })
            };
            let waiting = stop.clone();
            Runner::new()
                .workers(2)
                .window(100_000)
                .keep_order(keep_order)
                .stop_token(stop)
                .checkpoint_path(&checkpoint)
                .output(&output)
                .map(&input.path, move |line, out| {
                    if line.number() == 100 {
                        // Held back until the stop, so the lines after it
                        // finish beyond the watermark.
                        while !waiting.is_stopped() {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    } else {
                        spin(Duration::from_micros(30));
                    }
                    writeln!(out, "r{}", line.number())?;
                    Ok(())
                })
                .unwrap();
            stopper.join().unwrap();
            let recorded = linemark::Checkpoint::inspect(&checkpoint).unwrap();
            let mut expected: Vec<u64> = (1..=recorded.position.line())
                .chain(recorded.done_beyond.iter().copied())
                .collect();
            expected.sort_unstable();
            let written = std::fs::read_to_string(&output).unwrap();
            let mut found: Vec<u64> = written
                .lines()
                .map(|line| line[1..].parse().unwrap())
                .collect();
            if keep_order {
                assert!(found.is_sorted(), "round {round}: not in order");
            }
            found.sort_unstable();
            assert_eq!(found, expected, "round {round}, keep_order {keep_order}");
        }
    }
}

/// A stream's lines are recorded, and their results written, while the
/// next line is awaited (a producer may wait for them).
#[test]
fn a_streams_lines_are_recorded_while_the_next_one_is_awaited() {
    struct Chunks(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);
    impl std::io::Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1.is_empty() {
                match self.0.recv() {
                    Ok(chunk) => self.1 = chunk,
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.1.len());
            buf[..n].copy_from_slice(&self.1[..n]);
            self.1.drain(..n);
            Ok(n)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, checkpoint) = (dir.path().join("out.txt"), dir.path().join("cp"));
    let (send, receive) = std::sync::mpsc::channel();
    let runner = Runner::new().output(&output);
    let run = {
        let checkpoint = checkpoint.clone();
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(Chunks(receive, Vec::new()));
            runner
                .map_reader(reader, &checkpoint, |line, out| {
                    out.write_all(line.raw())?;
                    Ok(())
                })
                .unwrap()
        })
    };
    let lines: String = (1..=200).map(|n| format!("{n}\n")).collect();
    send.send(lines.clone().into_bytes()).unwrap();
    common::wait_until("the 200 lines recorded and written", || {
        linemark::Checkpoint::inspect(&checkpoint).is_ok_and(|s| s.position.line() == 200)
            && std::fs::read_to_string(&output).is_ok_and(|written| written == lines)
    });
    drop(send);
    assert!(run.join().unwrap().is_complete());
}

#[test]
fn a_rerun_after_a_clean_end_with_two_outputs_goes_on() {
    let input = Input::generated(3);
    let (first, second) = (input.sibling("a.txt"), input.sibling("b.txt"));
    let runner = Runner::new().output(&first).output(&second);
    let task = |line: &Line<'_>, out: &mut Out| -> Result<(), linemark::BoxError> {
        out.write_all(line.raw())?;
        out.to(1).extend_from_slice(line.raw());
        Ok(())
    };
    runner.map(&input.path, task).unwrap();
    let mut longer = input.lines.concat();
    longer.extend_from_slice(b"one more\n");
    std::fs::write(&input.path, &longer).unwrap();
    let report = runner.map(&input.path, task).unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(std::fs::read(&first).unwrap(), longer);
    assert_eq!(std::fs::read(&second).unwrap(), longer);
}

#[test]
fn one_new_output_under_two_names_is_refused_before_any_file_changes() {
    let input = Input::generated(3);
    let output = input.sibling("o.txt");
    let checkpoint = input.sibling("cp");
    let err = Runner::new()
        .checkpoint_path(&checkpoint)
        .output(&output)
        .output(input.dir.path().join(".").join("o.txt"))
        .map(&input.path, |_, _| Ok(()))
        .unwrap_err();
    assert!(matches!(err, Error::OutputChanged { .. }), "{err}");
    assert!(!output.exists() && !checkpoint.exists());
    // Nor through a symbolic link to where it will be made.
    #[cfg(unix)]
    {
        let link = input.sibling("link.txt");
        std::os::unix::fs::symlink(&output, &link).unwrap();
        let err = Runner::new()
            .checkpoint_path(&checkpoint)
            .output(&output)
            .output(&link)
            .map(&input.path, |_, _| Ok(()))
            .unwrap_err();
        assert!(matches!(err, Error::OutputChanged { .. }), "{err}");
        assert!(!output.exists() && !checkpoint.exists());
    }
}

/// With one worker, slow lines after cheap ones are recorded one by one,
/// as without outputs: while line 95 runs, the 94 before it are recorded
/// (the cheap ones went in groups, unseen by the check).
#[test]
fn slow_lines_after_cheap_ones_are_recorded_within_the_write_delay() {
    let input = Input::generated(120);
    let (output, checkpoint) = (input.sibling("out.txt"), input.sibling("cp"));
    let seen = AtomicU64::new(0);
    Runner::new()
        .checkpoint_path(&checkpoint)
        .write_delay(Duration::from_millis(1))
        .output(&output)
        .map(&input.path, |line, out| {
            match line.number() {
                95 => {
                    common::wait_until("the lines before 95 recorded", || {
                        linemark::Checkpoint::inspect(&checkpoint)
                            .is_ok_and(|recorded| recorded.position.line() == 94)
                    });
                    seen.store(95, Ordering::SeqCst);
                }
                71..=100 => std::thread::sleep(Duration::from_millis(20)),
                _ => {}
            }
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 95);
    assert_eq!(std::fs::read(&output).unwrap(), input.lines.concat());
}
