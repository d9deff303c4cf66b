//! Parallel workers with cheap tasks, whose lines go to the workers in
//! batches: every line still runs exactly once, its events and failures
//! are its own, a stop or a stuck line loses nothing, the window still
//! bounds what is in flight, and a stream never holds read lines back
//! waiting for the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linemark::{Checkpoint, Event, Line, Report, RetryPolicy, Runner, StopToken, permanent};

/// Long enough for the batches to grow to their largest.
const LINES: usize = 50_000;

fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    let text: String = (1..=lines).map(|n| format!("item-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// How often each line ran, by number, and with what content.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<u64, (u32, String)>>);

impl Tally {
    fn note(&self, line: &Line<'_>) {
        let mut lines = self.0.lock().unwrap();
        let entry = lines
            .entry(line.number())
            .or_insert_with(|| (0, line.as_str().unwrap().to_string()));
        entry.0 += 1;
    }

    /// Runs `runner` over `input`, noting every line.
    fn run(&self, runner: Runner, input: &Path) -> Report {
        runner
            .run(input, |line| {
                self.note(line);
                Ok(())
            })
            .unwrap()
    }

    /// Checks that lines `1..=lines` each ran once, with their own content.
    fn assert_each_once(&self, lines: usize) {
        let counts = self.0.lock().unwrap();
        assert_eq!(counts.len(), lines, "lines that ran");
        for (number, (count, text)) in counts.iter() {
            assert_eq!(*count, 1, "line {number} ran {count} times");
            assert_eq!(*text, format!("item-{number}"), "line {number}");
        }
    }
}

#[test]
fn every_line_runs_once_with_its_own_number_offset_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let text = std::fs::read(&input).unwrap();
    let tally = Tally::default();
    let wrong_offsets = AtomicU64::new(0);
    let (started, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let done_ends = Arc::new(Mutex::new(Vec::new()));
    let observer = {
        let (started, done, done_ends) = (started.clone(), done.clone(), done_ends.clone());
        move |event: &Event<'_>| match event {
            Event::Started { .. } => {
                started.fetch_add(1, Ordering::Relaxed);
            }
            Event::Done { line, end_offset } => {
                done.fetch_add(1, Ordering::Relaxed);
                done_ends.lock().unwrap().push((*line, *end_offset));
            }
            _ => {}
        }
    };
    for workers in [2, 8] {
        let report = Runner::new()
            .checkpoint_path(dir.path().join(format!("w{workers}.checkpoint")))
            .workers(workers)
            .observer(observer.clone())
            .run(&input, |line| {
                let at = line.offset() as usize;
                if text.get(at..at + line.raw().len()) != Some(line.raw()) {
                    wrong_offsets.fetch_add(1, Ordering::Relaxed);
                }
                tally.note(line);
                Ok(())
            })
            .unwrap();
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.done, LINES as u64);
        assert_eq!(report.position.offset(), text.len() as u64);
        tally.assert_each_once(LINES);
        assert_eq!(wrong_offsets.load(Ordering::Relaxed), 0);
        assert_eq!(started.swap(0, Ordering::Relaxed), LINES as u64);
        assert_eq!(done.swap(0, Ordering::Relaxed), LINES as u64);
        // Each Done event gives its own line's end.
        let mut ends = std::mem::take(&mut *done_ends.lock().unwrap());
        ends.sort_unstable();
        let mut end = 0u64;
        for (index, &(line, end_offset)) in ends.iter().enumerate() {
            end += format!("item-{}\n", index + 1).len() as u64;
            assert_eq!((line, end_offset), (index as u64 + 1, end));
        }
        let snapshot = Checkpoint::inspect(&report.checkpoint).unwrap();
        assert!(snapshot.done_beyond.is_empty());
        tally.0.lock().unwrap().clear();
    }
}

#[test]
fn failed_lines_in_batches_are_recorded_as_their_own_and_retried_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let fails = |number: u64| number % 97 == 0;
    let failures = (1..=LINES as u64).filter(|&n| fails(n)).count() as u64;
    let report = Runner::new()
        .workers(4)
        .retry(RetryPolicy::never())
        .run(&input, |line| {
            let number: u64 = line.as_str()?.trim_start_matches("item-").parse()?;
            if fails(number) {
                return Err(permanent(io::Error::other(format!("bad {number}"))));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        (report.done, report.failed),
        (LINES as u64 - failures, failures)
    );
    assert_eq!(report.position.line(), LINES as u64);
    let snapshot = Checkpoint::inspect(&report.checkpoint).unwrap();
    assert_eq!(snapshot.failed, failures);
    // Listed one at a time; each line once.
    let mut listed = BTreeSet::new();
    for failed in Checkpoint::inspect_failed(&report.checkpoint).unwrap() {
        let failed = failed.unwrap();
        assert!(
            listed.insert(failed.line()),
            "line {} listed twice",
            failed.line()
        );
        assert!(
            fails(failed.line()),
            "line {} recorded as failed",
            failed.line()
        );
        assert!(failed.error().ends_with(&format!("bad {}", failed.line())));
    }
    assert_eq!(listed.len() as u64, failures);
    // A retry runs exactly the failed lines.
    let tally = Tally::default();
    let report = tally.run(Runner::new().workers(4).retry_failed(true), &input);
    assert!(report.is_complete(), "{report:?}");
    let ran: Vec<u64> = tally.0.lock().unwrap().keys().copied().collect();
    assert_eq!(
        ran,
        (1..=LINES as u64).filter(|&n| fails(n)).collect::<Vec<_>>()
    );
}

#[test]
fn a_stop_mid_batch_loses_nothing_and_repeats_nothing() {
    for workers in [2, 8] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), LINES);
        let tally = Tally::default();
        let stop = StopToken::new();
        let count = AtomicU64::new(0);
        let report = Runner::new()
            .workers(workers)
            .stop_token(stop.clone())
            .run(&input, |line| {
                tally.note(line);
                if count.fetch_add(1, Ordering::SeqCst) + 1 == LINES as u64 / 3 {
                    stop.stop();
                }
                Ok(())
            })
            .unwrap();
        assert!(report.stopped, "{report:?}");
        assert!(report.done < LINES as u64);
        let report = tally.run(Runner::new().workers(workers), &input);
        assert!(report.is_complete(), "{report:?}");
        tally.assert_each_once(LINES);
    }
}

#[test]
fn shards_of_a_cheap_task_cover_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let tally = Tally::default();
    for index in 0..3 {
        let report = Runner::new()
            .shard(index, 3)
            .workers(3)
            .run(&input, |line| {
                assert_eq!((line.number() - 1) % 3, index, "line {}", line.number());
                tally.note(line);
                Ok(())
            })
            .unwrap();
        assert!(report.is_complete(), "{report:?}");
    }
    tally.assert_each_once(LINES);
}

/// Waits until `count` reaches `value` (a minute at most).
fn wait_for(count: &AtomicU64, value: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < value {
        assert!(
            std::time::Instant::now() < deadline,
            "still {} of {value} after a minute",
            count.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Line 1 blocks until released; the others are cheap.
#[test]
fn a_stuck_line_holds_the_window_and_its_finished_followers_are_recorded_at_a_stop() {
    const WINDOW: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let stop = StopToken::new();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let others = AtomicU64::new(0);
    let report = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            Runner::new()
                .workers(4)
                .window(WINDOW)
                .stop_token(stop.clone())
                .run(&input, |line| {
                    if line.number() == 1 {
                        release_rx.lock().unwrap().recv().unwrap();
                    } else {
                        others.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
        });
        // The others run until the window is full, and no further.
        wait_for(&others, WINDOW as u64 - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            others.load(Ordering::SeqCst),
            WINDOW as u64 - 1,
            "lines run past the stuck one"
        );
        stop.stop();
        release_tx.send(()).unwrap();
        run.join().unwrap()
    })
    .unwrap();
    assert!(report.stopped);
    assert_eq!(report.done, WINDOW as u64);
    // Line 1 finished after the stop: the watermark passed all of them.
    assert_eq!(report.position.line(), WINDOW as u64);
    let tally = Tally::default();
    let report = tally.run(Runner::new().workers(4).window(WINDOW), &input);
    assert_eq!(report.done, (LINES - WINDOW) as u64);
    let ran = tally.0.lock().unwrap();
    assert_eq!(ran.keys().next(), Some(&(WINDOW as u64 + 1)));
}

/// A stuck line never finishes before the stop: the lines finished after it
/// are recorded as done, and the rerun does only the stuck line and the
/// lines never started.
#[test]
fn lines_finished_beyond_a_line_abandoned_by_a_stop_are_not_done_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let stop = StopToken::new();
    let tally = Tally::default();
    let others = AtomicU64::new(0);
    let report = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            Runner::new()
                .workers(4)
                .window(300)
                .stop_token(stop.clone())
                .retry(
                    RetryPolicy::new()
                        .max_attempts(1000)
                        .initial_delay(Duration::from_millis(1))
                        .max_delay(Duration::from_millis(1)),
                )
                .run(&input, |line| {
                    if line.number() == 2 {
                        // Fails and is retried until the stop abandons it.
                        return Err(io::Error::other("not yet").into());
                    }
                    tally.note(line);
                    others.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
        });
        // Line 1, and the window's other lines after line 2.
        wait_for(&others, 300);
        stop.stop();
        run.join().unwrap()
    })
    .unwrap();
    assert!(report.stopped);
    assert_eq!(report.position.line(), 1);
    // Line 1, then the window's 300 lines from line 2 on, but line 2.
    let first_run = tally.0.lock().unwrap().len();
    assert_eq!(first_run, 300, "lines run");
    let snapshot = Checkpoint::inspect(&report.checkpoint).unwrap();
    assert_eq!(snapshot.done_beyond, (3..=301).collect::<Vec<u64>>());
    let report = tally.run(Runner::new().workers(4), &input);
    assert!(report.is_complete(), "{report:?}");
    tally.assert_each_once(LINES);
}

/// A reader over lines sent one at a time: it has the next line only once
/// the previous one's task ran, like a pipe whose writer waits for each
/// result before it writes the next line.
struct Conversation {
    lines: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Conversation {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Conversation {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() {
            // Blocks until the next line comes; the end when the sender is
            // gone.
            self.buf = self.lines.recv().unwrap_or_default();
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos += amount;
    }
}

#[test]
fn a_stream_whose_next_line_waits_for_the_previous_result_does_not_deadlock() {
    const COUNT: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("conversation.checkpoint");
    let (line_tx, line_rx) = mpsc::channel::<Vec<u8>>();
    let (ran_tx, ran_rx) = mpsc::channel::<u64>();
    let (finished_tx, finished_rx) = mpsc::channel();
    let ran_tx = Mutex::new(ran_tx);
    let writer_done = Arc::new(AtomicBool::new(false));
    // The writer: line n + 1 once line n ran.
    let writer = {
        let writer_done = Arc::clone(&writer_done);
        std::thread::spawn(move || {
            let send = |tx: &Sender<Vec<u8>>, n: u64| tx.send(format!("item-{n}\n").into_bytes());
            send(&line_tx, 1).unwrap();
            for n in 1..COUNT {
                match ran_rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(ran) => assert_eq!(ran, n),
                    Err(_) => return,
                }
                send(&line_tx, n + 1).unwrap();
            }
            writer_done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::spawn(move || {
        let reader = Conversation {
            lines: line_rx,
            buf: Vec::new(),
            pos: 0,
        };
        let report = Runner::new()
            .workers(4)
            .run_reader(reader, &checkpoint, |line| {
                ran_tx.lock().unwrap().send(line.number()).ok();
                Ok(())
            });
        let _ = finished_tx.send(report.map(|report| report.done));
    });
    let done = finished_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the run waited for a line that could not come");
    writer.join().unwrap();
    assert!(writer_done.load(Ordering::SeqCst));
    assert_eq!(done.unwrap(), COUNT);
}

/// A line that fails and waits out a long backoff does not hold back the
/// lines finished before it in its batch: they are handed back first, and
/// recorded (their Done events come) long before the backoff ends.
#[test]
fn lines_before_a_retried_line_are_recorded_before_its_backoff_ends() {
    const BACKOFF: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), LINES);
    let retried = |number: u64| number % 20_000 == 5_000;
    let failed_once = Mutex::new(std::collections::HashSet::new());
    let finished: Arc<Mutex<BTreeMap<u64, std::time::Instant>>> = Arc::default();
    let late: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::default();
    let observer = {
        let (finished, late) = (Arc::clone(&finished), Arc::clone(&late));
        move |event: &Event<'_>| {
            if let Event::Done { line, .. } = event {
                if let Some(at) = finished.lock().unwrap().get(line) {
                    late.lock().unwrap().push((*line, at.elapsed()));
                }
            }
        }
    };
    let report = Runner::new()
        .workers(2)
        .retry(
            RetryPolicy::new()
                .max_attempts(2)
                .initial_delay(BACKOFF)
                .max_delay(BACKOFF)
                .jitter(false),
        )
        .observer(observer)
        .run(&input, |line| {
            let number = line.number();
            if retried(number) && failed_once.lock().unwrap().insert(number) {
                return Err(io::Error::other("once").into());
            }
            // About a microsecond: too dear to run on the runner's thread.
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_micros(1) {
                std::hint::spin_loop();
            }
            if !retried(number) {
                finished
                    .lock()
                    .unwrap()
                    .insert(number, std::time::Instant::now());
            }
            Ok(())
        })
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.retried, 3);
    let late = late.lock().unwrap();
    assert_eq!(late.len(), LINES - 3);
    let (line, worst) = late.iter().max_by_key(|(_, late)| *late).unwrap();
    assert!(
        *worst < BACKOFF / 2,
        "line {line} was recorded {worst:?} after it finished"
    );
}
