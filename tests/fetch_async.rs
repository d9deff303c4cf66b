//! The `fetch_async` example (the async runner) against the `download`
//! example's test server on 127.0.0.1: whole files and no refetch on a
//! rerun, failed lines, the concurrency bound, a graceful stop, and SIGKILLs
//! at varied moments followed by a rerun to the end.

#![cfg(feature = "tokio")]

mod common;
#[path = "../examples/download/server.rs"]
mod server;
mod url_list;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use linemark::Checkpoint;
use server::{Fault, RetryAfter, generate};
use url_list::Job;

/// How long a run or a condition may take before the test fails: only a
/// hang should reach it.
const DEADLINE: Duration = Duration::from_secs(120);

/// The example's binary, built with the `tokio` feature the tests have.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example_binary("fetch_async"))
}

/// How a run of the example ended.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stderr: String,
}

impl Job {
    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .arg(self.list())
            .arg("--out")
            .arg(self.out())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.stderr_path()).unwrap());
        command
    }

    /// Runs the example to its end.
    fn run(&self, extra: &[&str]) -> Ran {
        let mut child = self.command(extra).spawn().unwrap();
        let status = wait(&mut child);
        Ran {
            code: status.code(),
            stderr: std::fs::read_to_string(self.stderr_path()).unwrap(),
        }
    }

    /// The names in the output directory, sorted.
    fn names(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.out()) else {
            return BTreeSet::new();
        };
        entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Finished files: names without the `.part` suffix.
    fn finished(&self) -> BTreeSet<String> {
        let mut names = self.names();
        names.retain(|name| !name.ends_with(".part"));
        names
    }

    fn parts(&self) -> BTreeSet<String> {
        let mut names = self.names();
        names.retain(|name| name.ends_with(".part"));
        names
    }

    /// The GETs the server answered for `/NAME`.
    fn gets(&self, name: &str) -> usize {
        self.server
            .requests_for(&format!("/{name}"))
            .iter()
            .filter(|request| request.method == "GET")
            .count()
    }
}

/// Waits for `child` to exit, within the deadline.
fn wait(child: &mut Child) -> ExitStatus {
    url_list::wait(child, "fetch_async", DEADLINE)
}

/// The name the example gives the file of line `line` fetched from
/// `/NAME`.
fn saved_name(line: u64, name: &str) -> String {
    format!("{line:06}-{name}")
}

/// `count` files named `fNNN.bin`, served by `job`, after `header` lines of
/// the list: (list lines, [(line number, served name, content)]).
type Served = Vec<(u64, String, Arc<[u8]>)>;

fn serve_files(
    job: &Job,
    header: &[&str],
    count: u64,
    size: impl Fn(u64) -> usize,
) -> (Vec<String>, Served) {
    let mut lines: Vec<String> = header.iter().map(|line| line.to_string()).collect();
    let mut served = Vec::new();
    for i in 0..count {
        let name = format!("f{i:03}.bin");
        let content: Arc<[u8]> = generate(1000 + i, size(i)).into();
        lines.push(job.file(&name, Arc::clone(&content)));
        served.push((lines.len() as u64, name, content));
    }
    (lines, served)
}

/// Every served file is in the output directory under its name, with the
/// server's bytes, and nothing else is there.
fn assert_all_saved(job: &Job, served: &Served) {
    let expected: BTreeSet<String> = served
        .iter()
        .map(|(line, name, _)| saved_name(*line, name))
        .collect();
    assert_eq!(job.names(), expected);
    for (line, name, content) in served {
        let saved = saved_name(*line, name);
        assert!(
            job.read(&saved) == **content,
            "{saved} differs from the server's"
        );
    }
}

#[test]
fn every_file_is_saved_whole_and_a_rerun_fetches_nothing() {
    let job = Job::new();
    // Mostly small files, every 25th a few MiB.
    let (lines, served) = serve_files(&job, &["# a comment", ""], 200, |i| {
        if i % 25 == 7 {
            (3 << 20) + i as usize
        } else {
            1 + (i as usize * 7919) % (60 << 10)
        }
    });
    job.write_list(&lines);
    let ran = job.run(&["--concurrency", "16"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stderr.contains("done 202,"), "{}", ran.stderr);
    assert_all_saved(&job, &served);
    for (_, name, _) in &served {
        assert_eq!(job.gets(name), 1, "{name}");
    }
    let requests = job.server.log().len();
    assert_eq!(requests, 200);

    let ran = job.run(&["--concurrency", "16"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stderr.contains("done 0,"), "{}", ran.stderr);
    assert_eq!(job.server.log().len(), requests, "the rerun made requests");
    assert_all_saved(&job, &served);
}

#[test]
fn error_statuses_are_failed_lines_or_retried_by_kind() {
    let job = Job::new();
    let ok = generate(1, 50_000);
    let lines = vec![
        job.file("ok.bin", ok.clone()),
        job.server.url("/missing.bin"),
        job.file("gone.bin", generate(2, 100)),
        job.file("busy.bin", generate(3, 70_000)),
        job.file("limited.bin", generate(4, 70_000)),
        job.file("broken.bin", generate(5, 100)),
        "ftp://127.0.0.1/x.bin".to_string(),
    ];
    let status = |code| Fault::Status {
        code,
        retry_after: None,
    };
    job.server.add_faults("/gone.bin", [status(410)]);
    job.server.add_faults("/busy.bin", [status(503)]);
    job.server.add_faults("/limited.bin", [status(429)]);
    job.server
        .add_faults("/broken.bin", [status(500), status(500), status(500)]);
    job.write_list(&lines);
    let ran = job.run(&["--retries", "2"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");

    let failed: Vec<_> = common::failed_lines(&job.checkpoint())
        .iter()
        .map(|f| (f.line(), f.attempts(), f.error().to_string()))
        .collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    // 404 and 410 are permanent: one attempt, recorded with status and URL.
    assert_eq!((failed[0].0, failed[0].1), (2, 1), "{failed:?}");
    assert!(failed[0].2.contains("HTTP 404"), "{failed:?}");
    assert!(failed[0].2.contains(&lines[1]), "{failed:?}");
    assert_eq!((failed[1].0, failed[1].1), (3, 1), "{failed:?}");
    assert!(failed[1].2.contains("HTTP 410"), "{failed:?}");
    // A 500 is retried, here until the attempts run out.
    assert_eq!((failed[2].0, failed[2].1), (6, 3), "{failed:?}");
    assert!(failed[2].2.contains("HTTP 500"), "{failed:?}");
    assert_eq!((failed[3].0, failed[3].1), (7, 1), "{failed:?}");
    assert!(ran.stderr.contains("line 2 failed"), "{}", ran.stderr);

    // 503 and 429 were retried and succeeded.
    assert_eq!(job.gets("busy.bin"), 2);
    assert_eq!(job.gets("limited.bin"), 2);
    assert_eq!(job.gets("missing.bin"), 1);
    assert_eq!(job.gets("gone.bin"), 1);
    assert_eq!(job.gets("broken.bin"), 3);
    let expected: BTreeSet<String> = [(1, "ok.bin"), (4, "busy.bin"), (5, "limited.bin")]
        .iter()
        .map(|(line, name)| saved_name(*line, name))
        .collect();
    assert_eq!(job.names(), expected, "no .part left, nothing else saved");
    assert_eq!(job.read(&saved_name(1, "ok.bin")), ok);
    assert_eq!(job.read(&saved_name(4, "busy.bin")), generate(3, 70_000));
}

#[test]
fn a_retry_after_header_sets_the_wait_before_the_next_attempt() {
    let job = Job::new();
    let lines = vec![job.file("limited.bin", generate(6, 1_000))];
    // Without the header the first backoff is at most 500 ms.
    job.server.add_faults(
        "/limited.bin",
        [Fault::Status {
            code: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
        }],
    );
    job.write_list(&lines);
    let started = Instant::now();
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(job.gets("limited.bin"), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "asked again after {:?}",
        started.elapsed()
    );
}

#[test]
fn no_more_than_concurrency_downloads_are_in_flight() {
    let job = Job::new();
    // Each body takes about a quarter of a second.
    let (lines, served) = serve_files(&job, &[], 12, |_| 64 << 10);
    job.write_list(&lines);
    job.server.throttle(256 << 10);
    let mut child = job.command(&["--concurrency", "3"]).spawn().unwrap();
    // A download in flight past its headers has its `.part`.
    let mut most = 0;
    let status = loop {
        most = most.max(job.parts().len());
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(most, 3, "at most 3 downloads at once, and 3 at some point");
    assert_all_saved(&job, &served);
}

#[test]
fn sigint_stops_gracefully_and_the_rerun_does_the_rest_only() {
    let job = Job::new();
    let (lines, served) = serve_files(&job, &[], 60, |i| (32 << 10) + i as usize * 1000);
    job.write_list(&lines);
    job.server.throttle(256 << 10);
    let checkpoint = job.dir.path().join("elsewhere.checkpoint");
    let checkpoint_arg = checkpoint.to_str().unwrap();
    let args = ["--concurrency", "4", "--checkpoint", checkpoint_arg];
    let mut child = job.command(&args).spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while job.finished().len() < 8 {
        assert!(child.try_wait().unwrap().is_none(), "ended too early");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(wait(&mut child).code(), Some(130));
    let stderr = std::fs::read_to_string(job.stderr_path()).unwrap();
    assert!(stderr.contains("run the same command again"), "{stderr}");
    assert!(
        !job.checkpoint().exists(),
        "the default checkpoint was used"
    );

    // The downloads in flight finished and were recorded; no other began.
    assert!(job.parts().is_empty(), "{:?}", job.parts());
    let snapshot = Checkpoint::inspect(&checkpoint).unwrap();
    let done: BTreeSet<u64> = (1..=snapshot.position.line())
        .chain(snapshot.done_beyond.iter().copied())
        .collect();
    let finished: BTreeSet<u64> = served
        .iter()
        .filter(|(line, name, _)| job.finished().contains(&saved_name(*line, name)))
        .map(|(line, _, _)| *line)
        .collect();
    assert_eq!(done, finished);
    assert!(done.len() >= 8 && done.len() < 60, "{done:?}");
    assert_eq!(job.server.log().len(), done.len());

    job.server.throttle(0);
    let ran = job.run(&args);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_all_saved(&job, &served);
    for (_, name, _) in &served {
        assert_eq!(job.gets(name), 1, "{name}");
    }
}

/// What the output directory and the checkpoint held after a kill.
struct AtKill {
    /// Requests the server had answered before the run killed here began.
    log_start: usize,
    /// Requests the server had answered when the process was dead.
    log_len: usize,
    /// Lines the checkpoint recorded as done.
    done: BTreeSet<u64>,
    /// Paths requested by the run killed here whose file was not finished.
    in_flight: BTreeSet<String>,
}

#[test]
fn sigkill_at_varied_moments_then_rerun_saves_every_file_whole() {
    const FILES: u64 = 400;
    const CONCURRENCY: usize = 16;
    let job = Job::new();
    let (lines, served) = serve_files(&job, &[], FILES, |i| {
        (4 << 10) + (i as usize * 7919) % (120 << 10)
    });
    job.write_list(&lines);
    let by_saved: BTreeMap<String, (u64, String, Arc<[u8]>)> = served
        .iter()
        .map(|(line, name, content)| {
            let entry = (*line, format!("/{name}"), Arc::clone(content));
            (saved_name(*line, name), entry)
        })
        .collect();
    // Slow enough that every kill finds downloads in flight: about 8 s in
    // all at 16 at a time.
    job.server.throttle(128 << 10);
    let concurrency = CONCURRENCY.to_string();
    let args = ["--concurrency", concurrency.as_str()];

    let mut kills: Vec<AtKill> = Vec::new();
    // Each kill comes once enough files are finished, and a few
    // milliseconds later, varied, so that it does not always land just
    // after a rename.
    for (percent, extra_ms) in [(3, 0), (15, 7), (35, 3), (55, 13), (75, 1)] {
        let log_start = job.server.log().len();
        let mut child = job.command(&args).spawn().unwrap();
        let deadline = Instant::now() + DEADLINE;
        while (job.finished().len() as u64) < FILES * percent / 100 {
            assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
            assert!(Instant::now() < deadline, "no progress to {percent}%");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        // The server logs a request when it answers it; its connections
        // end once they notice the process is gone.
        assert!(job.server.wait_idle(Duration::from_secs(10)));
        let log = job.server.log();

        // A file under its final name is whole, whenever the kill came.
        let finished = job.finished();
        for saved in &finished {
            let (_, _, content) = &by_saved[saved];
            assert!(job.read(saved) == **content, "{saved} is not whole");
        }
        // A line recorded as done has its file, whole.
        let snapshot = Checkpoint::inspect(job.checkpoint()).unwrap();
        assert_eq!(
            snapshot.failed,
            0,
            "{:?}",
            common::failed_lines(&job.checkpoint())
        );
        let done: BTreeSet<u64> = (1..=snapshot.position.line())
            .chain(snapshot.done_beyond.iter().copied())
            .collect();
        for (saved, (line, _, _)) in &by_saved {
            if done.contains(line) {
                assert!(
                    finished.contains(saved),
                    "line {line} recorded, {saved} missing"
                );
            }
        }
        let finished_paths: BTreeSet<&String> =
            finished.iter().map(|saved| &by_saved[saved].1).collect();
        let in_flight: BTreeSet<String> = log[log_start..]
            .iter()
            .map(|request| request.path.clone())
            .filter(|path| !finished_paths.contains(path))
            .collect();
        assert!(
            in_flight.len() <= CONCURRENCY,
            "{} downloads in flight: {in_flight:?}",
            in_flight.len()
        );
        // Finished but not recorded: the lines finished within the
        // checkpoint's write delay (10 ms; at this pace none or one), and
        // those whose file was renamed but whose task had not returned yet.
        // Half the concurrency leaves room for a slow checkpoint write on a
        // busy machine; a runner that held its commits back would pass it.
        let unrecorded = by_saved
            .iter()
            .filter(|(saved, (line, _, _))| finished.contains(*saved) && !done.contains(line))
            .count();
        assert!(
            unrecorded <= CONCURRENCY / 2,
            "{unrecorded} finished files not recorded as done"
        );
        kills.push(AtKill {
            log_start,
            log_len: log.len(),
            done,
            in_flight,
        });
    }
    assert!(
        kills.iter().any(|kill| !kill.in_flight.is_empty()),
        "no kill caught a download in flight"
    );

    job.server.throttle(0);
    let ran = job.run(&args);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_all_saved(&job, &served);

    let log = job.server.log();
    let line_of: BTreeMap<&String, u64> = by_saved
        .values()
        .map(|(line, path, _)| (path, *line))
        .collect();
    let mut redone_total = 0;
    for (k, kill) in kills.iter().enumerate() {
        // Recorded as done: never asked for again.
        for request in &log[kill.log_len..] {
            let line = line_of[&request.path];
            assert!(
                !kill.done.contains(&line),
                "kill {k}: line {line} was recorded as done and fetched again"
            );
        }
        // Asked for by the killed run but not recorded: to be redone.
        let redone: BTreeSet<&String> = log[kill.log_start..kill.log_len]
            .iter()
            .map(|request| &request.path)
            .filter(|path| !kill.done.contains(&line_of[path]))
            .collect();
        eprintln!(
            "kill {k}: {} in flight, {} redone",
            kill.in_flight.len(),
            redone.len()
        );
        redone_total += redone.len();
    }
    // Each file fetched once, plus once for each kill that caught it in
    // flight or not yet recorded (each is at most the concurrency plus
    // half of it, checked at each kill).
    let gets = log.iter().filter(|request| request.method == "GET").count();
    assert!(
        gets <= FILES as usize + redone_total,
        "{gets} GETs for {FILES} files, {redone_total} redone"
    );
    assert!(
        gets <= FILES as usize + kills.len() * (CONCURRENCY + CONCURRENCY / 2),
        "{gets} GETs for {FILES} files"
    );
}
