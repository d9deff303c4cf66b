//! `fetch_async`: downloads every URL of a list into a directory, many at
//! once on one tokio runtime, resumably.
//!
//! ```text
//! cargo run --release --features tokio --example fetch_async -- urls.txt --out downloads
//! cargo run --release --features tokio --example fetch_async -- urls.txt --out downloads \
//!     --concurrency 128 --retries 5 --checkpoint /var/tmp/urls.checkpoint
//! ```
//!
//! Each line of the list is one `http://` or `https://` URL. Blank lines and
//! lines starting with `#` are skipped (and count as done). Up to
//! `--concurrency` downloads are in flight at once, on one shared HTTP
//! client (its connections are kept alive and reused).
//!
//! The file of line `N` is `DIR/NNNNNN-LAST`: the line number, zero-padded
//! to six digits, a `-`, and the last segment of the URL's path as written
//! (still percent-encoded; `/`, `\` and control characters become `_`, an
//! empty segment becomes `index.html`, at most 200 bytes). The line number
//! keeps two lines from ever sharing a file, and gives a line the same name
//! in every run.
//!
//! A body is written to `NAME.part`, synced, and only then renamed to
//! `NAME`: a file under its final name is always whole. The output
//! directory is synced before each write of the checkpoint, so a line
//! recorded as done has its file durable under its final name.
//!
//! A status that is not 2xx is an error. A 4xx other than 408 and 429 is
//! permanent: the line is recorded as failed at once. A 408, a 429, a 5xx,
//! a connection error or a timeout is retried `--retries` more times with
//! exponential backoff (or after the `Retry-After` seconds of a 429 or
//! 503), then recorded as failed. Failed lines are printed
//! as they fail, and listed in the checkpoint.
//!
//! Progress goes to a checkpoint file (default `URLS.checkpoint`). Ctrl-C
//! (or SIGTERM) stops the run gracefully: no download starts, those in
//! flight end and are recorded; a second one exits at once. Run the same
//! command again after a stop, a crash or a kill and it goes on where it
//! stopped: a download that was in progress starts again from its first
//! byte (at least once: a file whose line was not recorded yet may be
//! fetched again), a leftover `.part` is overwritten.
//!
//! Exit codes: 0 every line done, 1 some lines failed, 2 a usage error or
//! linemark's own error (the checkpoint, the list changed, ...), 130
//! stopped by a signal.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use linemark::{
    BoxError, Event, OwnedLine, Report, RetryPolicy, Runner, StopToken, permanent, retry_after,
};
use reqwest::{Client, StatusCode, Url};
use tokio::io::AsyncWriteExt;

/// Downloads every URL of a list into a directory, resumably.
///
/// Exit codes: 0 all lines done, 1 some lines failed, 2 usage or linemark
/// error, 130 stopped by Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "fetch_async", version)]
struct Args {
    /// The list of URLs, one a line.
    urls: PathBuf,

    /// Output directory (created if missing).
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,

    /// Downloads in flight at once.
    #[arg(short, long, value_name = "N", default_value_t = 64)]
    concurrency: usize,

    /// The checkpoint file [default: URLS.checkpoint].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,

    /// Retries of a failing download (connection errors, timeouts, 408,
    /// 429, 5xx), with exponential backoff.
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,

    /// Connect timeout, and longest wait for the next bytes of an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            eprintln!("fetch_async: {report}");
            if report.stopped {
                eprintln!("fetch_async: stopped; to resume, run the same command again");
                ExitCode::from(130)
            } else if report.failed_total > 0 {
                eprintln!(
                    "fetch_async: {} line(s) failed, recorded in {}",
                    report.failed_total,
                    report.checkpoint.display()
                );
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("fetch_async: {err}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<Report, BoxError> {
    tokio::fs::create_dir_all(&args.out).await?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let client = Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()?;
    let stop = StopToken::new();
    watch_signals(stop.clone())?;
    let dir = args.out.clone();
    let mut runner = Runner::new()
        .concurrency(args.concurrency.max(1))
        .retry(RetryPolicy::new().max_attempts(args.retries.saturating_add(1)))
        .stop_token(stop)
        .observer(|event: &Event<'_>| {
            if let Event::Failed {
                line,
                attempts,
                error,
                ..
            } = event
            {
                eprintln!("fetch_async: line {line} failed after {attempts} attempt(s): {error}");
            }
        })
        // The renames of the lines about to be recorded reach the disk
        // before the records do.
        .before_checkpoint_write(move || std::fs::File::open(&dir)?.sync_all());
    if let Some(path) = &args.checkpoint {
        runner = runner.checkpoint_path(path);
    }
    let (client, out) = (&client, args.out.as_path());
    let report = runner
        .run_async(
            &args.urls,
            |line| async move { fetch(client, out, line).await },
        )
        .await?;
    Ok(report)
}

/// Downloads the URL of one line into its file.
async fn fetch(client: &Client, out: &Path, line: OwnedLine) -> Result<(), BoxError> {
    let text = line.as_str().map_err(permanent)?.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(());
    }
    let url = Url::parse(text).map_err(|err| permanent(format!("bad URL {text:?}: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(permanent(format!("not an HTTP(S) URL: {url}")));
    }
    let name = file_name(line.number(), &url);
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|err| http_error(&url, err))?;
    let status = response.status();
    if !status.is_success() {
        let error: BoxError = format!("{url}: HTTP {status}").into();
        if !is_retryable(status) {
            return Err(permanent(error));
        }
        // A 429 or 503 may say when to ask again, in seconds.
        let after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse().ok());
        return Err(match after {
            Some(seconds) => retry_after(error, Duration::from_secs(seconds)),
            None => error,
        });
    }
    let part = out.join(format!("{name}.part"));
    if let Err(err) = save(response, &part).await {
        // Best effort: a rerun overwrites it anyway.
        let _ = tokio::fs::remove_file(&part).await;
        return Err(match err.downcast::<reqwest::Error>() {
            Ok(err) => http_error(&url, *err),
            Err(err) => format!("{}: {err}", part.display()).into(),
        });
    }
    tokio::fs::rename(&part, out.join(&name))
        .await
        .map_err(|err| format!("renaming {}: {err}", part.display()))?;
    Ok(())
}

/// Writes the body to `part` and syncs it.
async fn save(mut response: reqwest::Response, part: &Path) -> Result<(), BoxError> {
    let mut file = tokio::fs::File::create(part).await?;
    while let Some(chunk) = response.chunk().await? {
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

/// Whether an error status may pass if asked again.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// A request's error with its causes (the useful part, `connection
/// refused`, is a cause), permanent when retrying cannot help.
fn http_error(url: &Url, err: reqwest::Error) -> BoxError {
    let hopeless = err.is_builder() || err.is_redirect();
    let err = err.without_url();
    let mut text = format!("{url}: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if hopeless {
        permanent(text)
    } else {
        text.into()
    }
}

/// `NNNNNN-LAST`: see the module docs.
fn file_name(line: u64, url: &Url) -> String {
    let last = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or_default();
    let mut last: String = last
        .chars()
        .map(|c| match c {
            '/' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if last.is_empty() {
        last = "index.html".to_string();
    }
    let mut cut = last.len().min(200);
    while !last.is_char_boundary(cut) {
        cut -= 1;
    }
    last.truncate(cut);
    format!("{line:06}-{last}")
}

/// Fires `stop` on the first Ctrl-C or SIGTERM; exits at once on the
/// second.
fn watch_signals(stop: StopToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            received += 1;
            if received > 1 {
                eprintln!("fetch_async: interrupted again, exiting now");
                std::process::exit(130);
            }
            eprintln!(
                "fetch_async: stopping once the downloads in flight end (again to exit at once)"
            );
            stop.stop();
        }
    });
    Ok(())
}
