//! How late the scheduler wakes a thread, measured while a test runs.
//!
//! The tests of time bounds (a line recorded within the write delay, a
//! kill repeating at most one write delay of work) run busy workers on a
//! machine of two cores: the thread that keeps a bound is one among more
//! busy threads than cores, and may wake late for no fault of the code
//! under test. A probe, a thread that sleeps a millisecond at a time and
//! takes no lock of the library's, tells how late a thread was woken in the
//! same run; a bound is checked with that lateness added, so a thread held
//! back by the library itself (a lock, a slow write) is still caught, and
//! a busy machine is not taken for a fault.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the probe sleeps at a time.
const TICK: Duration = Duration::from_millis(1);

/// A running probe; dropping it stops it.
pub struct LatenessProbe {
    worst_micros: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LatenessProbe {
    /// Starts a probe whose worst lateness [`worst`](Self::worst) tells.
    pub fn start() -> LatenessProbe {
        LatenessProbe::spawn(None)
    }

    /// Starts a probe that also appends each new worst lateness, in
    /// microseconds, to `file` (unsynced: the page cache keeps it through a
    /// SIGKILL of the process); [`recorded_worst`] reads it back.
    pub fn start_recording(file: File) -> LatenessProbe {
        LatenessProbe::spawn(Some(file))
    }

    fn spawn(file: Option<File>) -> LatenessProbe {
        let worst_micros = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (worst_micros, stop) = (Arc::clone(&worst_micros), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let asleep = Instant::now();
                    thread::sleep(TICK);
                    let late = asleep.elapsed().saturating_sub(TICK).as_micros() as u64;
                    if late > worst_micros.fetch_max(late, Ordering::Relaxed) {
                        if let Some(mut file) = file.as_ref() {
                            let _ = file.write_all(format!("{late}\n").as_bytes());
                        }
                    }
                }
            }
        });
        LatenessProbe {
            worst_micros,
            stop,
            thread: Some(thread),
        }
    }

    /// The latest the probe was woken so far, after the time it asked for.
    pub fn worst(&self) -> Duration {
        Duration::from_micros(self.worst_micros.load(Ordering::Relaxed))
    }
}

impl Drop for LatenessProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The worst lateness a recording probe appended to `path` (zero when the
/// file is missing or empty).
pub fn recorded_worst(path: &Path) -> Duration {
    let text = fs::read_to_string(path).unwrap_or_default();
    let micros = text
        .lines()
        .filter_map(|line| line.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Duration::from_micros(micros)
}
