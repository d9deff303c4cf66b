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
//! zero. When the body is complete the part's data is synced, the part is
//! renamed to `NAME` and the meta removed, and only then does the task
//! return. A body of at most 64 KiB is read into memory first and needs no
//! meta when it arrives whole (a part without a meta, left by a crash just
//! before its rename, restarts from zero). A file already present under
//! `NAME` (and no part of it) counts as done without a request, like `wget
//! -nc`; this is also what a line redone after a crash between the rename
//! and the checkpoint finds.
//!
//! # Durability: one directory sync per checkpoint write
//!
//! The promise: a line is never recorded as finished in the checkpoint
//! before its file is durable under its final name. Per file, the data is
//! `fsync`ed and the part renamed, but the directory is not synced: the
//! runner's `before_checkpoint_write` hook ([`DirectorySync`]) syncs the
//! output directory once before each write of checkpoint records. A line is
//! committed only after its task returned, so its rename was done before the
//! hook's sync, which makes it durable before the record that finishes the
//! line is written; if the sync fails, nothing is written. One directory
//! sync covers every file finished since the last checkpoint write (200 ms
//! apart by default), instead of one per file.
//!
//! What a crash (power loss) can leave, and what a rerun does with it; none
//! of these lines is recorded as finished, so the rerun goes through them:
//!
//! - The rename was lost (the directory was not synced yet): the whole
//!   `NAME.part` is still there, its data synced. With its meta (a body
//!   over 64 KiB) the rerun asks for the range after its end, the server
//!   answers 416 with the same length, and the part is synced and renamed
//!   without its body being sent again; if the file changed on the server,
//!   `If-Range` brings the new one whole. Without a meta (a small body) it
//!   is fetched again, at most 64 KiB. Had the part's own directory entry
//!   been lost too, the line simply starts from zero.
//! - The rename survived but the meta's removal did not: `NAME` is present
//!   and no part, so the line counts as done and the stale meta is removed.
//! - The rename survived: `NAME` counts as done without a request. That is
//!   safe only because a part's data is synced before its rename, so a file
//!   under its final name is always whole (with `--no-fsync` it may be
//!   empty or short, and is still taken as done: that mode is for throwaway
//!   output). The checkpoint write that records the line syncs the
//!   directory first, so the name is durable by then even when it came from
//!   an earlier run that crashed before its own sync.
//!
//! A meta is never left describing other bytes than its part's: a fresh
//! body empties the part before its meta is replaced, and a small body
//! removes any stale meta before its part is created.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linemark::{Line, StopToken, Task};
use ureq::http::{HeaderMap, StatusCode};

use crate::input::{Plan, parse_line, resolve_url};

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
    agent: ureq::Agent,
    dir: PathBuf,
    base_url: Option<String>,
    plan: Plan,
    stop: StopToken,
    stats: std::sync::Arc<Stats>,
    /// Whether a finished file's data is synced before its rename (off with
    /// `--no-fsync`).
    sync_files: bool,
}

impl Fetcher {
    pub fn new(
        agent: ureq::Agent,
        dir: PathBuf,
        base_url: Option<String>,
        plan: Plan,
        stop: StopToken,
        stats: std::sync::Arc<Stats>,
        sync_files: bool,
    ) -> Fetcher {
        Fetcher {
            agent,
            dir,
            base_url,
            plan,
            stop,
            stats,
            sync_files,
        }
    }
}

impl Fetcher {
    /// The plan back, once the run is over.
    pub fn into_plan(self) -> Plan {
        self.plan
    }
}

/// Syncs the output directory, so that the renames of the files finished
/// so far are durable: the runner's hook before each checkpoint write (see
/// the module docs).
pub struct DirectorySync {
    path: PathBuf,
    dir: File,
}

impl DirectorySync {
    /// Opens the output directory, creating it (and its missing parents)
    /// first if need be. Each directory created is made durable in its
    /// parent, or files recorded as done could vanish with it.
    pub fn create(path: &Path) -> io::Result<DirectorySync> {
        let context = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("creating the output directory {}: {err}", path.display()),
            )
        };
        create_dir_durably(path).map_err(context)?;
        let dir = File::open(path).map_err(context)?;
        Ok(DirectorySync {
            path: path.to_path_buf(),
            dir,
        })
    }

    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "syncing the output directory {}: {err}",
                    self.path.display()
                ),
            )
        })
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

/// The agent all workers share: one connection pool, so connections are
/// reused across files.
pub fn agent(jobs: usize, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // Error statuses are answers to read (Retry-After, 416), not errors.
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .max_idle_connections(jobs.max(10))
        .max_idle_connections_per_host(jobs.max(3))
        .user_agent(concat!("linemark-download/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
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
        self.fetch(&url, &name)
    }

    fn is_retryable(&self, error: &FetchError) -> bool {
        match error {
            FetchError::Line(_) | FetchError::Disk { .. } => false,
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
        };
        let part_len = match fs::metadata(&paths.part) {
            Ok(metadata) => Some(metadata.len()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(disk(&paths.part, error)),
        };
        if part_len.is_none() && paths.target.exists() {
            remove_if_present(&paths.meta)?;
            self.stats.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // A part whose validator does not fit gets one restart from zero in
        // the same attempt; more would mean a server that keeps changing.
        let mut have = part_len.unwrap_or(0);
        for _ in 0..2 {
            match self.attempt(url, &paths, have)? {
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
    fn attempt(&self, url: &str, paths: &Paths, have: u64) -> Result<Option<()>, FetchError> {
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
        let mut request = self.agent.get(url);
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
                    self.finish(paths, None, true)?;
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
                    retry_after: header(headers, "retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs),
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
        self.finish(paths, Some(file), true)?;
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
        remove_if_present(&paths.meta)?;
        let mut file = create_part()?;
        file.write_all(&body)
            .map_err(|err| disk(&paths.part, err))?;
        self.finish(paths, Some(file), false)?;
        self.stats.downloaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the part the final file: sync its data, rename it, drop the
    /// meta (`has_meta`: whether one may exist). The directory is not
    /// synced here but before the checkpoint records the line (see the
    /// module docs).
    fn finish(&self, paths: &Paths, file: Option<File>, has_meta: bool) -> Result<(), FetchError> {
        if self.sync_files {
            let file = match file {
                Some(file) => file,
                None => File::open(&paths.part).map_err(|err| disk(&paths.part, err))?,
            };
            file.sync_all().map_err(|err| disk(&paths.part, err))?;
        }
        fs::rename(&paths.part, &paths.target).map_err(|err| disk(&paths.target, err))?;
        if has_meta {
            remove_if_present(&paths.meta)?;
        }
        Ok(())
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
