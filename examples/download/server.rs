//! A small HTTP/1.1 file server on 127.0.0.1 that injects faults on purpose.
//!
//! It serves in-memory files with keep-alive, `Range` (one range),
//! `If-Range` (ETag or Last-Modified), `ETag`, `Last-Modified`,
//! `Content-Length` and `Retry-After`, and logs every request. A queue of
//! [`Fault`]s per path decides what the next requests for that path get: a
//! connection dropped in the middle of the body, an error status, a range
//! request answered in full, a new version of the file, no answer at all.
//! No HTTP crate can be made to misbehave like that, hence a purpose-built
//! one; it binds to 127.0.0.1 only and never opens a connection itself.
//! [`Server::start_tls`] serves the same over TLS (rustls), faults
//! included, with a certificate the caller gives.
//!
//! The `download` example uses it for `--demo` and `--serve`; the tests in
//! `tests/download.rs` include this file with `#[path]`.

// Shared by the example and the tests, and each of them uses only a part.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server does to one request instead of answering it properly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Sends the headers and this many bytes of the body, then closes the
    /// connection.
    DropAfter(u64),
    /// Declares the full `Content-Length` but sends the body without its
    /// last this-many bytes, then closes the connection.
    ShortBody(u64),
    /// Declares a `Content-Length` this many bytes larger than the body,
    /// sends the body, then closes the connection.
    OverstateLength(u64),
    /// Answers with this status, an optional `Retry-After` and a short
    /// text body.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` header.
        retry_after: Option<RetryAfter>,
    },
    /// Ignores `Range` and `If-Range`: the whole file with 200.
    IgnoreRange,
    /// Switches the file to its next version (new content, `ETag` and
    /// `Last-Modified`), then answers normally.
    NewVersion,
    /// Reads the request and never answers, until the client closes the
    /// connection or the server stops (30 s at most).
    Hang,
    /// Sends the body at this many bytes a second.
    Slow(u64),
    /// Answers with bytes that are no response: a TLS fatal alert record
    /// (`internal_error`) in plain text, past the TLS layer on an HTTPS
    /// connection, then closes the connection.
    Garbage,
}

/// A `Retry-After` header, in either of its forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// This many seconds.
    Seconds(u64),
    /// An HTTP date at least this many seconds after the answer (at most
    /// one more: the date is rounded up to a whole second).
    DateIn(u64),
}

impl RetryAfter {
    fn header_value(self) -> String {
        match self {
            RetryAfter::Seconds(seconds) => seconds.to_string(),
            RetryAfter::DateIn(seconds) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                http_date(now + seconds + 1)
            }
        }
    }
}

/// One request, as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Order of arrival, from 0.
    pub seq: u64,
    /// `GET` or `HEAD` (or whatever came).
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The first byte asked for by a `Range: bytes=N-` header.
    pub range_start: Option<u64>,
    /// The `If-Range` header.
    pub if_range: Option<String>,
    /// The status answered (0 when no answer was sent).
    pub status: u16,
    /// The fault applied.
    pub fault: Option<Fault>,
    /// When the request head had arrived.
    pub at: Instant,
}

/// A file the server holds, in one or more versions.
struct Resource {
    versions: Vec<Arc<[u8]>>,
    current: usize,
}

impl Resource {
    fn content(&self) -> &Arc<[u8]> {
        &self.versions[self.current]
    }

    fn etag(&self) -> String {
        format!(
            "\"{:016x}-{}\"",
            checksum(self.content()),
            self.content().len()
        )
    }

    fn last_modified(&self) -> String {
        // A fixed date per version, so restarts of the server (a rerun of
        // the demo) give the same validators.
        http_date(1_700_000_000 + 86_400 * self.current as u64)
    }
}

struct State {
    files: Mutex<HashMap<String, Resource>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    log: Mutex<Vec<Logged>>,
    /// Bytes a second for every body, 0 for no limit.
    throttle: AtomicU64,
    stopping: AtomicBool,
    active: AtomicUsize,
    connections: AtomicU64,
    /// Set for HTTPS.
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running server. Dropping it stops it and waits (briefly) for its
/// connections to end.
pub struct Server {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on 127.0.0.1 at `port` (0: any free port).
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub fn start(port: u16) -> io::Result<Server> {
        Server::listen(port, None)
    }

    /// Starts a server that speaks HTTPS, on 127.0.0.1 at `port` (0: any
    /// free port), with the certificate chain and private key in
    /// `cert_pem` and `key_pem`.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound or the certificate or key is not
    /// usable.
    pub fn start_tls(port: u16, cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Server> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |err: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidInput, err.to_string())
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(&err))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| invalid(&err))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| invalid(&err))?;
        Server::listen(port, Some(Arc::new(config)))
    }

    fn listen(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            files: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            throttle: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            tls,
        });
        let shared = Arc::clone(&state);
        let accept = std::thread::Builder::new()
            .name("server-accept".into())
            .spawn(move || accept_loop(&listener, &shared))?;
        Ok(Server {
            addr,
            scheme,
            state,
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://`) followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Serves `content` at `path` (which starts with `/`).
    pub fn add_file(&self, path: &str, content: impl Into<Arc<[u8]>>) {
        self.add_versions(path, vec![content.into()]);
    }

    /// Serves the first of `versions` at `path`; [`Fault::NewVersion`]
    /// moves to the next one.
    pub fn add_versions(&self, path: &str, versions: Vec<Arc<[u8]>>) {
        assert!(!versions.is_empty(), "a file needs a version");
        lock(&self.state.files).insert(
            path.to_string(),
            Resource {
                versions,
                current: 0,
            },
        );
    }

    /// The faults the next requests for `path` get, one each, in order;
    /// requests after them are answered properly.
    pub fn add_faults(&self, path: &str, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.faults)
            .entry(path.to_string())
            .or_default()
            .extend(faults);
    }

    /// Limits every body to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.throttle.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The current content of `path`.
    pub fn content(&self, path: &str) -> Option<Arc<[u8]>> {
        lock(&self.state.files)
            .get(path)
            .map(|resource| Arc::clone(resource.content()))
    }

    /// Every version of `path`, the first first.
    pub fn versions(&self, path: &str) -> Vec<Arc<[u8]>> {
        lock(&self.state.files)
            .get(path)
            .map(|resource| resource.versions.clone())
            .unwrap_or_default()
    }

    /// The current `ETag` of `path`.
    pub fn etag(&self, path: &str) -> Option<String> {
        lock(&self.state.files).get(path).map(Resource::etag)
    }

    /// Every request so far, in order of arrival.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.state.log).clone()
    }

    /// The requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        lock(&self.state.log)
            .iter()
            .filter(|logged| logged.path == path)
            .cloned()
            .collect()
    }

    /// How many `200` answers with the whole body (not `HEAD`) `path` got.
    pub fn full_responses(&self, path: &str) -> usize {
        lock(&self.state.log)
            .iter()
            .filter(|l| l.path == path && l.status == 200 && l.method == "GET")
            .count()
    }

    /// Connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open, or `timeout` passes. Returns
    /// whether none is open.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.active_connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.wait_idle(Duration::from_secs(5));
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.active.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(state);
        let spawned = std::thread::Builder::new()
            .name("server-connection".into())
            .spawn(move || {
                let _ = match &shared.tls {
                    None => serve_connection(stream, &shared),
                    Some(config) => rustls::ServerConnection::new(Arc::clone(config))
                        .map_err(io::Error::other)
                        .and_then(|tls| {
                            serve_connection(rustls::StreamOwned::new(tls, stream), &shared)
                        }),
                };
                shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            state.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    close: bool,
    range: Option<(u64, Option<u64>)>,
    if_range: Option<String>,
}

/// How often a waiting connection checks whether the server stops.
const POLL: Duration = Duration::from_millis(100);

/// A connection, plain or TLS.
trait Conn: Read + Write {
    fn tcp(&self) -> &TcpStream;

    /// Ends the connection: `gracefully` after a complete answer (a TLS
    /// `close_notify` first), else abruptly, as a fault does. What was
    /// written is sent first either way.
    fn close(&mut self, gracefully: bool);
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn close(&mut self, _gracefully: bool) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    fn close(&mut self, gracefully: bool) {
        if gracefully {
            self.conn.send_close_notify();
        }
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

fn serve_connection(mut stream: impl Conn, state: &State) -> io::Result<()> {
    stream.tcp().set_nodelay(true)?;
    stream.tcp().set_read_timeout(Some(POLL))?;
    stream
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buffered = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut buffered, state)? else {
            return Ok(());
        };
        let Some(request) = parse_head(&head) else {
            let body = b"bad request\n";
            write_response(&mut stream, 400, &[], body.len() as u64, true)?;
            stream.write_all(body)?;
            stream.close(true);
            return Ok(());
        };
        let reusable = respond(&mut stream, &request, state)?;
        if !reusable || request.close {
            stream.close(reusable);
            return Ok(());
        }
    }
}

/// Reads up to the end of a request head. `None` at a clean end of the
/// connection or when the server stops.
fn read_head(
    stream: &mut impl Conn,
    buffered: &mut Vec<u8>,
    state: &State,
) -> io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            let rest = buffered.split_off(end + 4);
            let head = std::mem::replace(buffered, rest);
            return Ok(Some(head));
        }
        if buffered.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buffered.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if state.stopping.load(Ordering::SeqCst) {
                    return Ok(None);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?;
    let version = request_line.next()?;
    let path = target.split(['?', '#']).next()?.to_string();
    let mut close = version == "HTTP/1.0";
    let mut range = None;
    let mut if_range = None;
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "range" => range = parse_range(value),
            "if-range" => if_range = Some(value.to_string()),
            _ => {}
        }
    }
    Some(Request {
        method,
        path,
        close,
        range,
        if_range,
    })
}

/// `bytes=A-` or `bytes=A-B`; anything else (suffix ranges, several
/// ranges) is ignored, as a server may.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse().ok()?),
    };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    Some((start, end))
}

/// Answers one request. Returns whether the connection can serve another.
fn respond(stream: &mut impl Conn, request: &Request, state: &State) -> io::Result<bool> {
    let mut fault = lock(&state.faults)
        .get_mut(&request.path)
        .and_then(VecDeque::pop_front);
    let resource = {
        let mut files = lock(&state.files);
        match files.get_mut(&request.path) {
            Some(resource) => {
                if fault == Some(Fault::NewVersion)
                    && resource.current + 1 < resource.versions.len()
                {
                    resource.current += 1;
                }
                Some((
                    Arc::clone(resource.content()),
                    resource.etag(),
                    resource.last_modified(),
                ))
            }
            None => None,
        }
    };
    let log = |status: u16, fault: &Option<Fault>| {
        let mut log = lock(&state.log);
        let seq = log.len() as u64;
        log.push(Logged {
            seq,
            method: request.method.clone(),
            path: request.path.clone(),
            range_start: request.range.map(|(start, _)| start),
            if_range: request.if_range.clone(),
            status,
            fault: fault.clone(),
            at: Instant::now(),
        });
    };
    match fault {
        Some(Fault::Hang) => {
            log(0, &fault);
            hang(stream, state);
            return Ok(false);
        }
        Some(Fault::Status { code, retry_after }) => {
            log(code, &fault);
            let body = format!("injected status {code}\n");
            let retry = retry_after.map(RetryAfter::header_value);
            let headers: Vec<(&str, &str)> = retry
                .as_deref()
                .map(|value| ("Retry-After", value))
                .into_iter()
                .collect();
            write_response(stream, code, &headers, body.len() as u64, false)?;
            stream.write_all(body.as_bytes())?;
            return Ok(true);
        }
        Some(Fault::Garbage) => {
            log(0, &fault);
            let mut raw = stream.tcp();
            raw.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50])?;
            return Ok(false);
        }
        Some(Fault::NewVersion) => fault = None,
        _ => {}
    }
    if request.method != "GET" && request.method != "HEAD" {
        log(405, &fault);
        write_response(stream, 405, &[("Allow", "GET, HEAD")], 0, false)?;
        return Ok(true);
    }
    let Some((content, etag, last_modified)) = resource else {
        log(404, &fault);
        let body = b"not found\n";
        write_response(stream, 404, &[], body.len() as u64, false)?;
        if request.method == "GET" {
            stream.write_all(body)?;
        }
        return Ok(true);
    };
    let len = content.len() as u64;
    let range_applies = fault != Some(Fault::IgnoreRange)
        && request.range.is_some()
        && request
            .if_range
            .as_ref()
            .is_none_or(|validator| *validator == etag || *validator == last_modified);
    let validators = [
        ("ETag", etag.as_str()),
        ("Last-Modified", last_modified.as_str()),
        ("Accept-Ranges", "bytes"),
    ];
    let (status, start, end) = match request.range {
        Some((start, _)) if range_applies && start >= len => {
            log(416, &fault);
            let unsatisfied = format!("bytes */{len}");
            let mut headers = validators.to_vec();
            headers.push(("Content-Range", &unsatisfied));
            write_response(stream, 416, &headers, 0, false)?;
            return Ok(true);
        }
        Some((start, end)) if range_applies => {
            let end = end.map_or(len, |end| (end + 1).min(len));
            (206, start, end)
        }
        _ => (200, 0, len),
    };
    log(status, &fault);
    let body = &content[start as usize..end as usize];
    let content_range = format!("bytes {start}-{}/{len}", end.saturating_sub(1));
    let mut headers = validators.to_vec();
    if status == 206 {
        headers.push(("Content-Range", &content_range));
    }
    let declared = match fault {
        Some(Fault::OverstateLength(extra)) => body.len() as u64 + extra,
        _ => body.len() as u64,
    };
    write_response(stream, status, &headers, declared, false)?;
    if request.method == "HEAD" {
        return Ok(true);
    }
    let throttle = state.throttle.load(Ordering::Relaxed);
    match fault {
        Some(Fault::DropAfter(bytes)) => {
            let cut = (bytes as usize).min(body.len());
            send_body(stream, &body[..cut], throttle, state)?;
            stream.flush()?;
            Ok(false)
        }
        Some(Fault::ShortBody(missing)) => {
            let cut = body.len().saturating_sub(missing as usize);
            send_body(stream, &body[..cut], throttle, state)?;
            Ok(false)
        }
        Some(Fault::OverstateLength(_)) => {
            send_body(stream, body, throttle, state)?;
            Ok(false)
        }
        Some(Fault::Slow(rate)) => {
            send_body(stream, body, rate, state)?;
            Ok(true)
        }
        _ => {
            send_body(stream, body, throttle, state)?;
            Ok(true)
        }
    }
}

/// Holds the connection open without answering.
fn hang(stream: &mut impl Conn, state: &State) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scratch = [0u8; 1024];
    while Instant::now() < deadline && !state.stopping.load(Ordering::SeqCst) {
        match stream.read(&mut scratch) {
            // The client gave up.
            Ok(0) => return,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn write_response(
    stream: &mut impl Conn,
    status: u16,
    headers: &[(&str, &str)],
    content_length: u64,
    close: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {content_length}\r\n"));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("Server: linemark-test-server\r\n\r\n");
    stream.write_all(head.as_bytes())
}

/// Writes `body`, at `rate` bytes a second when not 0.
fn send_body(stream: &mut impl Conn, body: &[u8], rate: u64, state: &State) -> io::Result<()> {
    if rate == 0 {
        return stream.write_all(body);
    }
    let started = Instant::now();
    let chunk = (rate / 50).clamp(512, 256 * 1024) as usize;
    let mut sent = 0usize;
    for piece in body.chunks(chunk) {
        if state.stopping.load(Ordering::SeqCst) {
            return Err(io::Error::other("server stopping"));
        }
        stream.write_all(piece)?;
        sent += piece.len();
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// FNV-1a, 64 bits: the checksum the demo verifies files with and the
/// `ETag`s are made of.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Deterministic pseudo-random content of `len` bytes for `seed`
/// (splitmix64), so that a file is the same in every run.
pub fn generate(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An HTTP date (RFC 9110 IMF-fixdate) for seconds since the Unix epoch.
pub fn http_date(unix_seconds: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(unix_seconds))
}
