//! Crash-safe, resumable line-oriented jobs.
//!
//! A job reads a file with one unit of work per line (URLs to download,
//! records to import, commands to run). linemark records how far it got in a
//! small checkpoint file, written by appending and syncing, and on the next
//! run moves the input reader exactly past the finished work, after checking
//! that the input is still the one the checkpoint was recorded against.
//!
//! - [`Checkpoint`]: the progress file, with a choice of [`Durability`], one
//!   writer at a time, recovery from torn writes and bounded size.
//! - [`Position`]: where to resume, with three verified ways to seek to it
//!   (by byte offset, by counting lines, by the content of the last line).
//! - [`LineReader`] and [`Line`]: lines as bytes with their number, offset
//!   and file; [`Line::as_str`] gives a typed error for invalid UTF-8;
//!   [`OwnedLine`] to move one to another thread.
//! - [`Runner`]: drives a closure ([`Runner::run`]) or any [`Task`] over the
//!   lines with a checkpoint, parallel [workers](Runner::workers), retries
//!   ([`RetryPolicy`], [`permanent`] errors), failed lines that can be
//!   [rerun](Runner::retry_failed), graceful stop ([`StopToken`]), progress
//!   events ([`Observer`]) and [sharding](Runner::shard).
//! - With the `tokio` feature, `Runner::run_async`: the same runner for
//!   async tasks (`AsyncTask`, or a closure returning a future), up to
//!   `Runner::concurrency` lines in flight on the caller's runtime, the
//!   input read and the checkpoint written on a thread of the run's own.
//! - [`Tracker`]: for a hand-written parallel loop, commits lines that
//!   finish out of order without ever skipping an unfinished one.
//! - [`Output`]: an append-only results file kept in step with the
//!   checkpoint ([`Runner::output`] and [`Runner::map`], or
//!   [`Checkpoint::output`] by hand): each line's results are in it
//!   exactly once, across kills, power loss and reruns.
//!
//! The guarantee is at least once for the work: a line whose commit is
//! durable is never redone; a line whose commit was not yet durable when
//! the process died is redone on the next run. Its results in an
//! [`Output`] are exactly once: the rerun first cuts away what the redone
//! lines wrote.
//!
//! # Examples
//!
//! The runner, with a closure:
//!
//! ```
//! use linemark::Runner;
//!
//! # let dir = tempfile::tempdir()?;
//! # let input = dir.path().join("urls.txt");
//! # std::fs::write(&input, "https://example.com/a\nhttps://example.com/b\n")?;
//! let report = Runner::new().workers(4).run(&input, |line| {
//!     let url = line.as_str()?;
//!     // ... do the work for `url` ...
//! #   assert!(url.starts_with("https://"));
//!     Ok(())
//! })?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same by hand, with a checkpoint:
//!
//! ```
//! use std::fs::File;
//! use std::io::BufReader;
//! use linemark::{Checkpoint, LineReader};
//!
//! # let dir = tempfile::tempdir()?;
//! # let input = dir.path().join("urls.txt");
//! # std::fs::write(&input, "https://example.com/a\nhttps://example.com/b\n")?;
//! # let checkpoint_path = dir.path().join("urls.txt.checkpoint");
//! let mut checkpoint = Checkpoint::open(&checkpoint_path)?;
//! let mut reader = BufReader::new(File::open(&input)?);
//! // Verified seek past what an earlier run finished (nothing, the first time).
//! let start = checkpoint
//!     .position()
//!     .seek_offset(&mut reader)
//!     .map_err(|err| err.with_path(&input))?;
//! let mut lines = LineReader::resume(reader, start).path(&input);
//! while let Some(line) = lines.next_line()? {
//!     let url = line.as_str()?;
//!     // ... do the work for `url` ...
//! #   assert!(url.starts_with("https://"));
//!     checkpoint.commit_line(&line)?;
//! }
//! checkpoint.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod checkpoint;
mod error;
mod failed;
mod line;
mod out;
mod position;
mod progress;
mod retry;
mod runner;
mod scan;
mod stop;
mod task;
mod tracker;
mod window;

pub use checkpoint::{Checkpoint, CheckpointBuilder, Durability, FailedLines, Output, Snapshot};
pub use error::{Error, Result};
pub use failed::FailedLine;
pub use line::{Line, LineReader, OwnedLine};
pub use out::Out;
pub use position::{Position, digest};
pub use progress::{Event, Observer};
pub use retry::RetryPolicy;
pub use runner::{Report, Runner, SeekMode};
pub use stop::StopToken;
#[cfg(feature = "tokio")]
pub use task::AsyncTask;
pub use task::{BoxError, MAX_ERROR_LEN, Permanent, RetryAfter, Task, permanent, retry_after};
pub use tracker::{Ticket, Tracker};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
