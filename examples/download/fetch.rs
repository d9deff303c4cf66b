//! Downloading one line's URL into its file, resuming partial files by
//! range: the [`Task`] the runner drives.
//!
//! # Files
//!
//! Data goes to `NAME.part`. Before the first body byte is written,
//! `NAME.part.meta` records the URL and the validator to resume with (the
//! `ETag` when strong, else `Last-Modified`) and the expected length:
//!
//! ```text
//! linemark-download-meta 1
//! url http://example.com/a.bin
//! if-range "5f1c-9a"
//! length 39452
//! ```
//!
//! A retry or a rerun asks for `Range: bytes=SIZE-` with `If-Range:
//! VALIDATOR`, so a file that changed on the server comes back whole (200)
//! and restarts from zero instead of being spliced. A part without a
//! validator, or whose meta is missing or for another URL, restarts from
//! zero. When the body is complete the part is handed to the
//! [`Publisher`], which gives it its final name `NAME` and removes its meta
//! (see below). A body of at most 64 KiB is read into memory first and
//! needs no meta when it arrives whole (a whole part without a meta, left
//! by a crash before its rename, restarts from zero). A file already
//! present under `NAME` (and no part of it) counts as done without a
//! request, like `wget -nc`; this is also what a line redone after a crash
//! between the rename and the checkpoint finds.
//!
//! # Durability: one `syncfs` and one directory sync per checkpoint write
//!
//! The promises: a file under its final name is whole on disk, and a line
//! is recorded as finished in the checkpoint only after its file is
//! durable under its final name. A task does not sync or rename: it writes
//! `NAME.part` and queues it in the publisher's pending publication list,
//! then returns. The runner's `before_checkpoint_write` hook
//! ([`Publisher::publish`]), which runs before every write of checkpoint
//! records (the final one at the end of the run too), then
//!
//! 1. makes the data of every queued part durable with one `syncfs` of the
//!    output file system,
//! 2. renames each queued part to its final name (and removes its meta),
//! 3. syncs the output directory, so the renames are durable,
//!
//! and only then lets the checkpoint write proceed. A line is committed
//! only after its task returned, so its part was queued before the hook
//! took the queue; the record that finishes the line is written after the
//! three steps. If a step fails the hook fails and the checkpoint writes
//! nothing; the parts not renamed yet stay queued and the next hook retries
//! them (it syncs the directory whatever it finds), or, if the run ends
//! first, they stay as whole unrecorded parts that the next run finishes.
//! The output directories created by the run are synced into their parents
//! once, at the start. One `syncfs` and one directory sync cover every file
//! finished since the last checkpoint write (which the checkpoint's
//! writer thread makes within 10 ms of a commit, off the runner's thread),
//! instead of an `fsync` per file. On systems without `syncfs` each queued
//! part is synced on its own, still in the hook.
//!
//! No part is touched after it is queued: a line is queued only as the last
//! step of a task that then succeeds, and the runner never runs a line
//! again once it succeeded; two lines never share a name (the plan gives
//! duplicates distinct names, and no name ends in `.part`, `.part.meta`
//! or `.part.meta.tmp`, in any case), so never a part. Parts still queued when the run ends (stopped while earlier lines
//! were in flight, or a failed checkpoint write) are published once more
//! after it, if that works; else the next run resumes them.
//!
//! What a crash (power loss, kill) can leave, and what a rerun does with
//! it; none of these lines is recorded as finished, so the rerun goes
//! through them:
//!
//! - Before the hook: the whole `NAME.part` is there, unrenamed, its data
//!   perhaps not on disk. With its meta (a body over 64 KiB) the rerun asks
//!   for the range after its end; the server answers 416 with the same
//!   length and the part is finished without its body being sent again
//!   (if the file changed on the server, `If-Range` brings the new one
//!   whole). A part cut short by the crash is resumed by range. Without a
//!   meta (a small body) it is fetched again, at most 64 KiB. Had the
//!   part's own directory entry been lost, the line starts from zero.
//! - After `syncfs` and some or all renames, before the directory sync or
//!   the checkpoint write: each rename that was lost leaves the whole part
//!   (the case above); each that survived leaves `NAME`, which counts as
//!   done without a request. That is safe because the data was durable
//!   before the rename: no file gets its final name before the `syncfs`
//!   that covers it, so a rerun never takes an unsynced file under its
//!   final name as done. The checkpoint write that records the line runs
//!   the hook first, which syncs the directory, so the name is durable by
//!   then even when it came from a run that crashed before its own sync.
//! - The rename survived but the meta's removal did not: `NAME` is present
//!   and no part, so the line counts as done and the stale meta is removed.
//!
//! With `--no-fsync` the hook only renames: no `syncfs`, no directory
//! sync. The renames stay in the hook rather than in the tasks because that
//! measured faster (0.122 s against 0.131 s for 2,000 files of 4 KiB,
//! medians of 5): one thread renaming a batch does not contend with the
//! workers for the directory's lock. After a power loss a file under its
//! final name may be empty or short, and is still taken as done: that mode
//! is for throwaway output.
//!
//! A meta is never left describing other bytes than its part's: a fresh
//! body empties the part before its meta is replaced, and a small body
//! removes any stale meta before its part is created.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use linemark::{Line, StopToken, Task};
use ureq::http::{HeaderMap, StatusCode};

use crate::agents::Agents;
use crate::input::{Plan, parse_line, resolve_url};
use crate::listing::Listing;

/// Counters shared with the progress display.
#[derive(Debug, Default)]
pub struct Stats {
    /// Body bytes written to disk.
    pub bytes: AtomicU64,
    /// Files completed by a transfer in this run.
    pub downloaded: AtomicU64,
    /// Files found already whole on disk.
    pub present: AtomicU64,
    /// Requests that resumed a partial file.
    pub resumed: AtomicU64,
    /// Partial files thrown away because the server's file changed or it
    /// ignored the range.
    pub restarted: AtomicU64,
}

/// Why a line's download failed.
#[derive(Debug)]
pub enum FetchError {
    /// The line itself is wrong: not UTF-8, not a URL we can fetch.
    Line(String),
    /// The server answered with an error status.
    Status {
        url: String,
        code: u16,
        retry_after: Option<Duration>,
    },
    /// Connecting, sending or receiving failed (refused, reset, timeout).
    Transport { url: String, message: String },
    /// TLS failed for good: a certificate that is not trusted or does not
    /// fit the host, a server that shares no protocol with us (see
    /// `tls_fails_for_good`).
    Tls { url: String, message: String },
    /// The connection ended before the body did; the partial data is kept.
    Truncated {
        url: String,
        got: u64,
        expected: Option<u64>,
        reason: String,
    },
    /// The server's answers do not fit the partial file; the part was
    /// thrown away.
    Changed { url: String, why: String },
    /// A local file operation failed.
    Disk { path: PathBuf, error: io::Error },
    /// The run is stopping; the partial data is kept.
    Stopped,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Line(message) => f.write_str(message),
            FetchError::Status { url, code, .. } => {
                let reason = StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|status| status.canonical_reason())
                    .unwrap_or("");
                write!(f, "HTTP {code} {reason}: {url}")
            }
            FetchError::Transport { url, message } => write!(f, "{message}: {url}"),
            FetchError::Tls { url, message } => write!(f, "TLS: {message}: {url}"),
            FetchError::Truncated {
                url,
                got,
                expected,
                reason,
            } => match expected {
                Some(expected) => write!(
                    f,
                    "body cut short at {got} of {expected} bytes ({reason}), partial data kept: {url}"
                ),
                None => write!(
                    f,
                    "body cut short at {got} bytes ({reason}), partial data kept: {url}"
                ),
            },
            FetchError::Changed { url, why } => write!(f, "restarting from zero, {why}: {url}"),
            FetchError::Disk { path, error } => write!(f, "{}: {error}", path.display()),
            FetchError::Stopped => f.write_str("stopped"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Downloads a line's URL. See the module docs.
pub struct Fetcher {
    agents: Agents,
    dir: PathBuf,
    base_url: Option<String>,
    plan: Plan,
    stop: StopToken,
    stats: Arc<Stats>,
    /// Where finished parts wait for their final names.
    publisher: Arc<Publisher>,
    /// The names the output directory held at the start.
    listing: Listing,
}

impl Fetcher {
    pub fn new(
        agents: Agents,
        dir: PathBuf,
        base_url: Option<String>,
        plan: Plan,
        stop: StopToken,
        stats: Arc<Stats>,
        publisher: Arc<Publisher>,
    ) -> io::Result<Fetcher> {
        let listing = Listing::read(&dir)?;
        Ok(Fetcher {
            agents,
            dir,
            base_url,
            plan,
            stop,
            stats,
            publisher,
            listing,
        })
    }
}

impl Fetcher {
    /// The plan back, once the run is over.
    pub fn into_plan(self) -> Plan {
        self.plan
    }
}

/// A finished part waiting for its final name.
struct Publication {
    part: PathBuf,
    target: PathBuf,
    /// The part's meta, removed once the part has its final name.
    meta: Option<PathBuf>,
}

/// The pending publication list: finished parts whose data is not durable
/// yet, and the runner's hook before each checkpoint write that makes them
/// durable, gives them their final names and syncs the output directory
/// (see the module docs).
pub struct Publisher {
    path: PathBuf,
    dir: File,
    /// Off with `--no-fsync`: parts are renamed, nothing is synced.
    durable: bool,
    queue: Mutex<Vec<Publication>>,
}

impl Publisher {
    /// Opens the output directory, creating it (and its missing parents)
    /// first if need be. With `durable`, each directory created is made
    /// durable in its parent, or files recorded as done could vanish with
    /// it.
    pub fn create(path: &Path, durable: bool) -> io::Result<Publisher> {
        let context = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("creating the output directory {}: {err}", path.display()),
            )
        };
        if durable {
            create_dir_durably(path).map_err(context)?;
        } else {
            fs::create_dir_all(path).map_err(context)?;
        }
        let dir = File::open(path).map_err(context)?;
        Ok(Publisher {
            path: path.to_path_buf(),
            dir,
            durable,
            queue: Mutex::new(Vec::new()),
        })
    }

    /// Queues a finished part for the next [`publish`](Publisher::publish).
    fn finish(&self, publication: Publication) {
        self.lock_queue().push(publication);
    }

    /// Makes the queued parts durable (one `syncfs` of the output file
    /// system), renames each to its final name, then syncs the output
    /// directory; the runner calls it before every checkpoint write. With
    /// `--no-fsync` it only renames.
    ///
    /// # Durability
    ///
    /// On `Ok`, every part queued before the call is durable under its
    /// final name, with its data. On an error the parts not renamed yet
    /// stay queued for the next call, and the directory is synced again
    /// by the next call whatever it finds queued.
    pub fn publish(&self) -> io::Result<()> {
        // Taken out, so that workers finishing files do not wait for the
        // sync.
        let queued = std::mem::take(&mut *self.lock_queue());
        if self.durable && !queued.is_empty() {
            if let Err(err) = self.sync_data(&queued) {
                self.lock_queue().extend(queued);
                return Err(self.context("syncing the output file system", err));
            }
        }
        let mut queued = queued.into_iter();
        while let Some(publication) = queued.next() {
            if let Err(err) = fs::rename(&publication.part, &publication.target) {
                let mut queue = self.lock_queue();
                queue.push(publication);
                queue.extend(queued);
                return Err(self.context("renaming a finished part", err));
            }
            // A meta left beside a final name is harmless and removed by the
            // next run that meets it.
            if let Some(meta) = &publication.meta {
                let _ = remove_if_present(meta);
            }
        }
        if !self.durable {
            return Ok(());
        }
        self.dir
            .sync_all()
            .map_err(|err| self.context("syncing the output directory", err))
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Publication>> {
        // A panic while holding the lock leaves a whole `Vec`: keep it.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One `syncfs` covers the data of every queued part, however many.
    #[cfg(target_os = "linux")]
    fn sync_data(&self, _queued: &[Publication]) -> io::Result<()> {
        rustix::fs::syncfs(&self.dir).map_err(io::Error::from)
    }

    /// Without `syncfs`, each part is synced on its own.
    #[cfg(not(target_os = "linux"))]
    fn sync_data(&self, queued: &[Publication]) -> io::Result<()> {
        for publication in queued {
            File::open(&publication.part)?.sync_all()?;
        }
        Ok(())
    }

    fn context(&self, action: &str, err: io::Error) -> io::Error {
        io::Error::new(
            err.kind(),
            format!("{action} in {}: {err}", self.path.display()),
        )
    }
}

fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(err) => return Err(err),
    }
    File::open(parent)?.sync_all()
}

impl Task for Fetcher {
    type Error = FetchError;

    fn run(&self, line: &Line<'_>) -> Result<(), FetchError> {
        let text = line
            .as_str()
            .map_err(|err| FetchError::Line(err.to_string()))?;
        let Some(entry) = parse_line(text).map_err(FetchError::Line)? else {
            return Ok(());
        };
        let url = resolve_url(entry.url, self.base_url.as_deref()).map_err(FetchError::Line)?;
        let name = self.plan.name_for(line.number(), &url, entry.name);
        let result = self.fetch(&url, &name);
        if let Err(error) = &result {
            // Only a line tried again in this run looks for what its
            // failed attempt left; one that failed for good is not, so a
            // list of dead links remembers nothing per line.
            if self.is_retryable(error) {
                self.listing.attempt_failed(&name);
            }
        }
        result
    }

    fn is_retryable(&self, error: &FetchError) -> bool {
        match error {
            FetchError::Line(_) | FetchError::Tls { .. } | FetchError::Disk { .. } => false,
            FetchError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            FetchError::Transport { .. }
            | FetchError::Truncated { .. }
            | FetchError::Changed { .. }
            | FetchError::Stopped => true,
        }
    }

    fn retry_after(&self, error: &FetchError) -> Option<Duration> {
        match error {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What the `.part.meta` file records.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    url: String,
    if_range: Option<String>,
    length: Option<u64>,
}

impl Meta {
    fn read(path: &Path) -> Option<Meta> {
        let text = fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "linemark-download-meta 1" {
            return None;
        }
        let mut meta = Meta {
            url: String::new(),
            if_range: None,
            length: None,
        };
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "url" => meta.url = value.to_string(),
                "if-range" => meta.if_range = Some(value.to_string()),
                "length" => meta.length = Some(value.parse().ok()?),
                _ => {}
            }
        }
        Some(meta)
    }

    /// Replaces the meta file (through a rename, so it is never torn).
    fn write(&self, path: &Path) -> io::Result<()> {
        let mut text = format!("linemark-download-meta 1\nurl {}\n", self.url);
        if let Some(validator) = &self.if_range {
            text.push_str(&format!("if-range {validator}\n"));
        }
        if let Some(length) = self.length {
            text.push_str(&format!("length {length}\n"));
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        fs::write(&temp, text)?;
        fs::rename(&temp, path)
    }
}

/// The partial file of one line and its meta.
struct Paths {
    target: PathBuf,
    part: PathBuf,
    meta: PathBuf,
    /// None of the three was there when the attempt started.
    fresh: bool,
}

/// Bodies up to this size are read into memory before they touch the disk.
const SMALL: u64 = 64 * 1024;

/// How a response's body is to be stored.
enum Start {
    /// From zero: truncate the part.
    Fresh,
    /// Appended to a part of this many bytes.
    Append(u64),
}

impl Fetcher {
    fn fetch(&self, url: &str, name: &str) -> Result<(), FetchError> {
        let paths = Paths {
            target: self.dir.join(name),
            part: self.dir.join(format!("{name}.part")),
            meta: self.dir.join(format!("{name}.part.meta")),
            fresh: !self.listing.may_exist(name),
        };
        let part_len = if paths.fresh {
            None
        } else {
            match fs::metadata(&paths.part) {
                Ok(metadata) => Some(metadata.len()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(error) => return Err(disk(&paths.part, error)),
            }
        };
        if !paths.fresh && part_len.is_none() && paths.target.exists() {
            remove_if_present(&paths.meta)?;
            self.stats.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // A part whose validator does not fit gets one restart from zero in
        // the same attempt; more would mean a server that keeps changing.
        let mut have = part_len.unwrap_or(0);
        for _ in 0..2 {
            // Held until the body is read, when its connection goes back
            // to the agent's pool.
            match self
                .agents
                .with(|agent| self.attempt(agent, url, &paths, have))?
            {
                Some(()) => return Ok(()),
                None => self.stats.restarted.fetch_add(1, Ordering::Relaxed),
            };
            have = 0;
        }
        Err(FetchError::Changed {
            url: url.to_string(),
            why: "the server's file keeps changing".into(),
        })
    }

    /// One request, for a part of `have` bytes. `Ok(None)`: the part was
    /// thrown away, ask again.
    fn attempt(
        &self,
        agent: &ureq::Agent,
        url: &str,
        paths: &Paths,
        have: u64,
    ) -> Result<Option<()>, FetchError> {
        if self.stop.is_stopped() {
            return Err(FetchError::Stopped);
        }
        let meta = if have > 0 {
            Meta::read(&paths.meta).filter(|meta| meta.url == url)
        } else {
            None
        };
        let resume = meta
            .as_ref()
            .and_then(|meta| meta.if_range.as_deref().map(|v| (have, v)));
        let mut request = agent.get(url);
        if let Some((from, validator)) = resume {
            request = request
                .header("Range", format!("bytes={from}-"))
                .header("If-Range", validator);
        }
        let response = request.call().map_err(|err| request_error(url, err))?;
        // Owning the head, rather than cloning its headers, saves a map
        // allocation per file.
        let (head, body) = response.into_parts();
        let status = head.status.as_u16();
        let headers = &head.headers;
        match status {
            200 => {
                if have > 0 {
                    self.stats.restarted.fetch_add(1, Ordering::Relaxed);
                }
                let length = header(headers, "content-length").and_then(|v| v.parse().ok());
                let new_meta = Meta {
                    url: url.to_string(),
                    if_range: validator(headers),
                    length,
                };
                match length {
                    Some(length) if length <= SMALL => {
                        self.receive_small(url, body, paths, &new_meta, length)?;
                    }
                    _ => self.receive(url, body, paths, Start::Fresh, &new_meta, length)?,
                }
                Ok(Some(()))
            }
            206 => {
                let (Some((from, _)), Some(meta)) = (resume, meta.as_ref()) else {
                    self.discard(paths)?;
                    return Ok(None);
                };
                let range = header(headers, "content-range").and_then(parse_content_range);
                let Some(ContentRange {
                    start,
                    total: Some(total),
                }) = range
                else {
                    self.discard(paths)?;
                    return Ok(None);
                };
                // A server that ignores If-Range but sends a new ETag, or a
                // range that does not start where the part ends: never splice.
                let etag_changed = matches!(
                    (header(headers, "etag"), meta.if_range.as_deref()),
                    (Some(now), Some(before)) if before.starts_with('"') && now != before
                );
                if start != from || etag_changed {
                    self.discard(paths)?;
                    return Ok(None);
                }
                self.stats.resumed.fetch_add(1, Ordering::Relaxed);
                self.receive(url, body, paths, Start::Append(from), meta, Some(total))?;
                Ok(Some(()))
            }
            416 if resume.is_some() => {
                // The part may already be whole (a crash before the rename,
                // or a server that over-stated the length).
                let total = header(headers, "content-range")
                    .and_then(parse_content_range)
                    .and_then(|range| range.total)
                    .or(meta.as_ref().and_then(|meta| meta.length));
                if total == Some(have) {
                    self.finish(paths, true);
                    self.stats.downloaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(()));
                }
                self.discard(paths)?;
                Ok(None)
            }
            _ => {
                // Reading a short error body lets the connection be reused.
                let _ = body.into_with_config().limit(64 * 1024).read_to_vec();
                Err(FetchError::Status {
                    url: url.to_string(),
                    code: status,
                    retry_after: header(headers, "retry-after").and_then(retry_after),
                })
            }
        }
    }

    /// Streams the body into the part, then finishes the file.
    fn receive(
        &self,
        url: &str,
        body: ureq::Body,
        paths: &Paths,
        start: Start,
        meta: &Meta,
        expected_total: Option<u64>,
    ) -> Result<(), FetchError> {
        let mut file = match start {
            Start::Fresh => {
                // Empty the part before the new validator is recorded, so a
                // crash in between cannot pair old bytes with a new validator.
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&paths.part)
                    .map_err(|err| disk(&paths.part, err))?;
                meta.write(&paths.meta)
                    .map_err(|err| disk(&paths.meta, err))?;
                file
            }
            Start::Append(_) => OpenOptions::new()
                .append(true)
                .open(&paths.part)
                .map_err(|err| disk(&paths.part, err))?,
        };
        let mut written = match start {
            Start::Fresh => 0,
            Start::Append(from) => from,
        };
        let remaining = expected_total.map(|total| total.saturating_sub(written));
        let mut buf = vec![0u8; remaining.map_or(256 * 1024, |r| r.clamp(1, 256 * 1024) as usize)];
        let mut body = body.into_reader();
        loop {
            if self.stop.is_stopped() {
                return Err(FetchError::Stopped);
            }
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: written,
                        expected: expected_total,
                        reason: read_error_reason(err),
                    });
                }
            };
            file.write_all(&buf[..n])
                .map_err(|err| disk(&paths.part, err))?;
            written += n as u64;
            self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(total) = expected_total {
            if written != total {
                return Err(FetchError::Truncated {
                    url: url.to_string(),
                    got: written,
                    expected: expected_total,
                    reason: "connection closed".into(),
                });
            }
        }
        drop(file);
        self.finish(paths, true);
        self.stats.downloaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A small body whole from zero: read into memory first, so that a body
    /// that arrives whole needs no meta file (one file created instead of
    /// two, which is most of the cost of a small file). Cut short, it is
    /// kept like a streamed one: meta first, then the bytes received.
    fn receive_small(
        &self,
        url: &str,
        body: ureq::Body,
        paths: &Paths,
        meta: &Meta,
        length: u64,
    ) -> Result<(), FetchError> {
        // Read to ureq's own end of the body (it stops at Content-Length), so
        // the connection goes back to the pool.
        let mut reader = body.into_reader();
        let mut body = Vec::with_capacity(length as usize);
        let mut chunk = [0u8; 16 * 1024];
        let failure = loop {
            if self.stop.is_stopped() {
                break Some(FetchError::Stopped);
            }
            match reader.read(&mut chunk) {
                Ok(0) if body.len() as u64 == length => break None,
                Ok(0) => {
                    break Some(FetchError::Truncated {
                        url: url.to_string(),
                        got: body.len() as u64,
                        expected: Some(length),
                        reason: "connection closed".into(),
                    });
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    break Some(FetchError::Truncated {
                        url: url.to_string(),
                        got: body.len() as u64,
                        expected: Some(length),
                        reason: read_error_reason(err),
                    });
                }
            }
        };
        self.stats
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let create_part = || {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&paths.part)
                .map_err(|err| disk(&paths.part, err))
        };
        if let Some(failure) = failure {
            if !body.is_empty() {
                let mut file = create_part()?;
                meta.write(&paths.meta)
                    .map_err(|err| disk(&paths.meta, err))?;
                file.write_all(&body)
                    .map_err(|err| disk(&paths.part, err))?;
            }
            return Err(failure);
        }
        // A stale meta must not outlive the bytes it described.
        if !paths.fresh {
            remove_if_present(&paths.meta)?;
        }
        create_part()?
            .write_all(&body)
            .map_err(|err| disk(&paths.part, err))?;
        self.finish(paths, false);
        self.stats.downloaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hands the whole part to the publisher, which gives it its final
    /// name and drops the meta (`has_meta`: whether one may exist): with
    /// durability, only after its data is synced, before the checkpoint
    /// records the line (see the module docs). The part is not touched
    /// again in this run: a line whose task succeeded is never run again.
    fn finish(&self, paths: &Paths, has_meta: bool) {
        self.publisher.finish(Publication {
            part: paths.part.clone(),
            target: paths.target.clone(),
            meta: has_meta.then(|| paths.meta.clone()),
        });
    }

    /// Throws a part away (and its meta), to start again from zero.
    fn discard(&self, paths: &Paths) -> Result<(), FetchError> {
        remove_if_present(&paths.part)?;
        remove_if_present(&paths.meta)
    }
}

fn disk(path: &Path, error: io::Error) -> FetchError {
    FetchError::Disk {
        path: path.to_path_buf(),
        error,
    }
}

fn remove_if_present(path: &Path) -> Result<(), FetchError> {
    // A lookup is cheap; an unlink, even of nothing, locks the directory
    // against every other worker's renames.
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(disk(path, err)),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// The validator to resume with: a strong `ETag`, else `Last-Modified`
/// (a weak `ETag` never matches `If-Range`).
fn validator(headers: &HeaderMap) -> Option<String> {
    header(headers, "etag")
        .filter(|etag| etag.starts_with('"'))
        .or_else(|| header(headers, "last-modified"))
        .map(str::to_string)
}

/// The wait a `Retry-After` value asks for: delay seconds, or an HTTP
/// date in any of its three forms. A date already past gives no hint, so
/// the usual backoff applies: a server whose clock is behind must not get
/// every retry at once.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(std::time::SystemTime::now()).ok()
}

struct ContentRange {
    start: u64,
    total: Option<u64>,
}

/// `bytes START-END/TOTAL`, `bytes START-END/*` or `bytes */TOTAL`.
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    let start = match range.trim() {
        "*" => total?,
        range => range.split_once('-')?.0.trim().parse().ok()?,
    };
    Some(ContentRange { start, total })
}

fn request_error(url: &str, err: ureq::Error) -> FetchError {
    let url = url.to_string();
    match err {
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed => FetchError::Line(format!("{err}: {url}")),
        ureq::Error::Timeout(timeout) => FetchError::Transport {
            url,
            message: format!("timed out ({timeout})"),
        },
        // A TLS setting this host cannot use (a name that is no DNS name).
        ureq::Error::Tls(message) => FetchError::Tls {
            url,
            message: message.to_string(),
        },
        ureq::Error::Rustls(err) if tls_fails_for_good(&err) => FetchError::Tls {
            url,
            message: err.to_string(),
        },
        ureq::Error::Io(io)
            if io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(tls_fails_for_good) =>
        {
            FetchError::Tls {
                url,
                message: io.to_string(),
            }
        }
        ureq::Error::Io(io) => FetchError::Transport {
            url,
            message: describe_io(&io),
        },
        other => FetchError::Transport {
            url,
            message: other.to_string(),
        },
    }
}

/// Whether a TLS error will come again however often the request is
/// retried: a certificate not trusted or not fitting the host, a server
/// that shares no protocol version or cipher with us, or that said so in
/// its alert. Other TLS errors (a corrupt record, a failed decryption, an
/// internal error of the server) may pass, and are retried.
fn tls_fails_for_good(err: &rustls::Error) -> bool {
    use rustls::AlertDescription as Alert;
    match err {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::InvalidCertRevocationList(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::NoApplicationProtocol => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            Alert::HandshakeFailure
                | Alert::ProtocolVersion
                | Alert::InsufficientSecurity
                | Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::UnrecognisedName
                | Alert::NoApplicationProtocol
        ),
        _ => false,
    }
}

fn read_error_reason(err: io::Error) -> String {
    match ureq::Error::from(err) {
        ureq::Error::Timeout(timeout) => format!("timed out ({timeout})"),
        ureq::Error::Io(io) => describe_io(&io),
        other => other.to_string(),
    }
}

fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "connection closed".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_all_three_date_forms() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("0"), Some(Duration::ZERO));
        let ahead = std::time::SystemTime::now() + Duration::from_secs(120);
        let wait = retry_after(&httpdate::fmt_http_date(ahead)).unwrap();
        assert!(
            wait > Duration::from_secs(118) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        // Each form RFC 9110 names; the obsolete RFC 850 one has a
        // two-digit year (below 70: 20YY).
        for future in [
            "Wed, 03 Nov 2049 08:49:37 GMT",
            "Wednesday, 03-Nov-49 08:49:37 GMT",
            "Wed Nov  3 08:49:37 2049",
        ] {
            let wait = retry_after(future).unwrap_or_default();
            assert!(
                wait > Duration::from_secs(20 * 365 * 86_400),
                "{future}: {wait:?}"
            );
        }
        // A date past gives no hint: the backoff applies.
        for past in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(retry_after(past), None, "{past}");
        }
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after("-5"), None);
        assert_eq!(retry_after(""), None);
    }

    #[test]
    fn content_ranges() {
        let range = parse_content_range("bytes 100-199/200").unwrap();
        assert_eq!((range.start, range.total), (100, Some(200)));
        let range = parse_content_range("bytes */200").unwrap();
        assert_eq!((range.start, range.total), (200, Some(200)));
        assert!(parse_content_range("bytes */*").is_none());
        assert!(parse_content_range("items 1-2/3").is_none());
    }

    #[test]
    fn meta_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.part.meta");
        let meta = Meta {
            url: "http://h/a".into(),
            if_range: Some("\"x y\"".into()),
            length: Some(12),
        };
        meta.write(&path).unwrap();
        assert_eq!(Meta::read(&path), Some(meta));
    }
}
