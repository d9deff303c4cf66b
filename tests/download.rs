//! The `download` example against its fault-injecting server on 127.0.0.1:
//! one test per fault class, and a process test that SIGKILLs it at varied
//! moments and reruns it until done.

mod common;
#[path = "../examples/download/server.rs"]
mod server;
mod url_list;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use linemark::Checkpoint;
use server::{Fault, Logged, RetryAfter, Server, generate};
use url_list::Job;

/// The example's binary (`cargo test --test download` does not build
/// examples).
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example_binary("download"))
}

/// How a run of the example ended.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

impl Job {
    /// A job whose server speaks HTTPS, with the test certificate of
    /// `tests/fixtures/tls` (issued to 127.0.0.1 by a test CA).
    fn new_tls() -> Job {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let cert = std::fs::read(fixtures.join("server.pem")).unwrap();
        let key = std::fs::read(fixtures.join("server.key")).unwrap();
        Job::with_server(Server::start_tls(0, &cert, &key).unwrap())
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("-o")
            .arg(self.out())
            .arg(self.list())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.stderr_path()).unwrap());
        command
    }

    /// Runs the example to its end (within a minute).
    fn run(&self, extra: &[&str]) -> Ran {
        let started = Instant::now();
        let mut child = self.command(extra).spawn().unwrap();
        let status = url_list::wait(&mut child, "download", Duration::from_secs(60));
        Ran {
            code: status.code(),
            stderr: std::fs::read_to_string(self.stderr_path()).unwrap(),
            elapsed: started.elapsed(),
        }
    }

    /// Names in the output directory that are partial downloads.
    fn leftovers(&self) -> Vec<String> {
        names_in(&self.out())
            .into_iter()
            .filter(|name| name.contains(".part"))
            .collect()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn summary(requests: &[Logged]) -> Vec<(u16, Option<u64>)> {
    requests.iter().map(|r| (r.status, r.range_start)).collect()
}

/// Runs `job` with `args` over a list whose first line is `big.bin`, cut
/// by the server after `cut` bytes on its first request, and checks that
/// the retry asked for the rest only and finished the file. Returns the
/// requests for `big.bin`.
fn resumes_after_a_drop(job: &Job, args: &[&str], content: &[u8], cut: u64) -> Vec<Logged> {
    job.server.add_faults("/big.bin", [Fault::DropAfter(cut)]);
    let ran = job.run(args);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(job.read("big.bin"), content);
    let requests = job.server.requests_for("/big.bin");
    assert_eq!(summary(&requests), vec![(200, None), (206, Some(cut))]);
    assert_eq!(job.server.full_responses("/big.bin"), 1);
    assert!(job.leftovers().is_empty(), "{:?}", job.leftovers());
    requests
}

#[test]
fn a_connection_dropped_mid_body_resumes_by_range() {
    let job = Job::new();
    let content = generate(1, 1 << 20);
    job.write_list(&[job.file("big.bin", content.clone())]);
    let requests = resumes_after_a_drop(&job, &[], &content, 300_000);
    // The retry was validated by the ETag.
    assert_eq!(requests[1].if_range, job.server.etag("/big.bin"));
}

#[test]
fn a_200_answer_to_a_range_request_restarts_from_zero() {
    let job = Job::new();
    let content = generate(2, 500_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    job.server
        .add_faults("/f.bin", [Fault::DropAfter(123_456), Fault::IgnoreRange]);
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(job.read("f.bin"), content);
    assert_eq!(
        summary(&job.server.requests_for("/f.bin")),
        vec![(200, None), (200, Some(123_456))]
    );
    assert!(job.leftovers().is_empty());
}

#[test]
fn a_file_changed_on_the_server_restarts_from_zero_and_is_never_spliced() {
    let job = Job::new();
    let old = generate(3, 400_000);
    let new = generate(4, 400_000);
    job.server
        .add_versions("/f.bin", vec![old.clone().into(), new.clone().into()]);
    let old_etag = job.server.etag("/f.bin");
    job.write_list(&[job.server.url("/f.bin")]);
    job.server
        .add_faults("/f.bin", [Fault::DropAfter(100_000), Fault::NewVersion]);
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let requests = job.server.requests_for("/f.bin");
    // The retry offered the old ETag; the server had a new file and sent it
    // whole.
    assert_eq!(summary(&requests), vec![(200, None), (200, Some(100_000))]);
    assert_eq!(requests[1].if_range, old_etag);
    assert_ne!(job.server.etag("/f.bin"), old_etag);
    let got = job.read("f.bin");
    assert!(got == new, "the file is not the new content");
    assert_ne!(&got[..100_000], &old[..100_000]);
}

#[test]
fn a_416_on_a_complete_part_finishes_the_file() {
    let job = Job::new();
    let content = generate(5, 200_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    // The first answer promises 10 bytes more than the file has: the client
    // holds the whole file in its part but waits for more, then asks for
    // the rest and is told there is none.
    job.server
        .add_faults("/f.bin", [Fault::OverstateLength(10)]);
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        summary(&job.server.requests_for("/f.bin")),
        vec![(200, None), (416, Some(200_000))]
    );
    assert_eq!(job.read("f.bin"), content);
    assert!(job.leftovers().is_empty());
}

/// The states a power loss can leave behind when finished files were
/// renamed but the output directory was not synced yet (it is synced once
/// before each checkpoint write, not once per file). None of these lines
/// is in the checkpoint, so the rerun goes through them all.
#[test]
fn files_whose_rename_was_not_durable_are_finished_on_rerun_without_their_bodies() {
    let job = Job::new();
    let big = generate(40, 300_000);
    let small = generate(41, 20_000);
    let renamed = generate(42, 150_000);
    job.write_list(&[
        job.file("big.bin", big.clone()),
        job.file("small.bin", small.clone()),
        job.file("renamed.bin", renamed.clone()),
    ]);
    let out = job.out();
    std::fs::create_dir_all(&out).unwrap();
    let meta = |name: &str, len: usize| {
        let path = format!("/{name}");
        format!(
            "linemark-download-meta 1\nurl {}\nif-range {}\nlength {len}\n",
            job.server.url(&path),
            job.server.etag(&path).unwrap()
        )
    };
    // The rename was lost: the whole part (synced before the rename) and
    // its meta are there.
    std::fs::write(out.join("big.bin.part"), &big).unwrap();
    std::fs::write(out.join("big.bin.part.meta"), meta("big.bin", big.len())).unwrap();
    // The same for a small body, which has no meta.
    std::fs::write(out.join("small.bin.part"), &small).unwrap();
    // The rename survived but the removal of the meta did not.
    std::fs::write(out.join("renamed.bin"), &renamed).unwrap();
    std::fs::write(
        out.join("renamed.bin.part.meta"),
        meta("renamed.bin", renamed.len()),
    )
    .unwrap();

    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // The whole part is finished after a 416 that carries no body.
    assert_eq!(
        summary(&job.server.requests_for("/big.bin")),
        vec![(416, Some(300_000))]
    );
    assert_eq!(job.server.full_responses("/big.bin"), 0);
    // A small part without a meta cannot be trusted: fetched again.
    assert_eq!(
        summary(&job.server.requests_for("/small.bin")),
        vec![(200, None)]
    );
    // A file under its final name is done, without a request.
    assert!(job.server.requests_for("/renamed.bin").is_empty());
    assert_eq!(job.read("big.bin"), big);
    assert_eq!(job.read("small.bin"), small);
    assert_eq!(job.read("renamed.bin"), renamed);
    assert!(job.leftovers().is_empty(), "{:?}", job.leftovers());
    assert_eq!(
        Checkpoint::inspect(job.checkpoint())
            .unwrap()
            .position
            .line(),
        3
    );
}

#[test]
fn whole_parts_left_unrenamed_by_a_kill_are_finished_on_rerun() {
    let job = Job::new();
    let mut contents = Vec::new();
    let mut lines = Vec::new();
    for i in 0..80u64 {
        // Half over 64 KiB (a meta beside the part), half under (none).
        let size = if i % 2 == 0 { 100_000 } else { 20_000 };
        let name = format!("f{i:02}.bin");
        let content = generate(500 + i, size);
        lines.push(job.file(&name, content.clone()));
        contents.push((name, content));
    }
    job.write_list(&lines);
    job.server.throttle(4 << 20);

    // A finished part waits for the hook before the next checkpoint write
    // (up to 200 ms) to be synced and renamed: kill it in that window.
    let whole_parts = || -> Vec<(String, u64, bool)> {
        contents
            .iter()
            .filter_map(|(name, content)| {
                let part = job.out().join(format!("{name}.part"));
                let len = std::fs::metadata(&part).ok()?.len();
                let meta = job.out().join(format!("{name}.part.meta")).exists();
                (len == content.len() as u64).then(|| (name.clone(), len, meta))
            })
            .collect()
    };
    let mut whole = Vec::new();
    for _ in 0..5 {
        let mut child = job.command(&["--jobs", "8"]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while whole_parts().is_empty() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the download ended before a whole part was seen"
            );
            assert!(Instant::now() < deadline, "no whole part seen");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The hook may have published them before the kill landed.
        whole = whole_parts();
        if !whole.is_empty() {
            break;
        }
    }
    assert!(!whole.is_empty(), "no kill caught a whole part");
    assert!(job.server.wait_idle(Duration::from_secs(10)));
    let log_len = job.server.log().len();

    let ran = job.run(&["--jobs", "8"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let log = job.server.log();
    for (name, len, meta) in &whole {
        let path = format!("/{name}");
        let next = log[log_len..]
            .iter()
            .find(|request| request.path == path)
            .unwrap_or_else(|| panic!("{name} never asked for again"));
        // With its meta the part is finished by a 416 without its body;
        // without, it is fetched again.
        let expected = if *meta {
            (416, Some(*len))
        } else {
            (200, None)
        };
        assert_eq!((next.status, next.range_start), expected, "{name}");
    }
    for (name, content) in &contents {
        assert!(
            job.read(name) == *content,
            "{name} differs from the server's"
        );
    }
    assert!(job.leftovers().is_empty(), "{:?}", job.leftovers());
}

#[test]
fn no_fsync_downloads_the_same_files() {
    let job = Job::new();
    let mut lines = Vec::new();
    let mut contents = Vec::new();
    for i in 0..30u64 {
        // Small bodies (kept in memory) and streamed ones.
        let content = generate(500 + i, 1_000 + (i as usize % 3) * 50_000);
        lines.push(job.file(&format!("f{i}.bin"), content.clone()));
        contents.push(content);
    }
    job.write_list(&lines);
    let ran = job.run(&["--no-fsync", "--jobs", "4"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    for (i, content) in contents.iter().enumerate() {
        assert!(job.read(&format!("f{i}.bin")) == *content, "f{i}.bin");
    }
    assert!(job.leftovers().is_empty());
    // A rerun finds everything done in the checkpoint.
    assert_eq!(job.run(&["--no-fsync"]).code, Some(0));
    assert_eq!(job.server.log().len(), 30);
}

#[test]
fn a_short_body_keeps_its_partial_data_for_the_next_run() {
    let job = Job::new();
    let content = generate(6, 100_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    job.server.add_faults("/f.bin", [Fault::ShortBody(1000)]);
    let ran = job.run(&["--retries", "0"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let failed = common::failed_lines(&job.checkpoint());
    assert_eq!(failed.len(), 1);
    assert!(failed[0].error().contains("cut short"), "{failed:?}");
    let part = std::fs::metadata(job.out().join("f.bin.part")).unwrap();
    assert_eq!(part.len(), 99_000);

    let ran = job.run(&["--retry-failed"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        summary(&job.server.requests_for("/f.bin")),
        vec![(200, None), (206, Some(99_000))]
    );
    assert_eq!(job.read("f.bin"), content);
    assert!(job.leftovers().is_empty());
    assert!(common::failed_lines(&job.checkpoint()).is_empty());
}

#[test]
fn a_500_is_retried_and_then_succeeds() {
    let job = Job::new();
    let content = generate(7, 10_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    job.server.add_faults(
        "/f.bin",
        [Fault::Status {
            code: 500,
            retry_after: None,
        }],
    );
    // --verbose: the retried attempt is printed with its error.
    let ran = job.run(&["--verbose"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stderr.contains("HTTP 500"), "{}", ran.stderr);
    assert!(ran.stderr.contains("; 1 retry,"), "{}", ran.stderr);
    assert_eq!(
        summary(&job.server.requests_for("/f.bin")),
        vec![(500, None), (200, None)]
    );
    assert_eq!(job.read("f.bin"), content);
}

/// A list whose first two lines fail once and then download, whose third
/// is refused every time (2 attempts with `--retries 1`) and whose fourth
/// is a 404 (permanent, 1 attempt): 3 retries in all. Runs it with `args`
/// after `--retries 1` and returns the run and the stderr lines that are
/// about a line of the list.
fn retries_and_failures(args: &[&str]) -> (Ran, Vec<String>) {
    let job = Job::new();
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone.bin", listener.local_addr().unwrap())
    };
    let flaky = generate(30, 10_000);
    let dropped = generate(31, 200_000);
    job.write_list(&[
        job.file("flaky.bin", flaky.clone()),
        job.file("dropped.bin", dropped.clone()),
        refused,
        job.server.url("/missing.bin"),
    ]);
    job.server.add_faults(
        "/flaky.bin",
        [Fault::Status {
            code: 500,
            retry_after: None,
        }],
    );
    job.server
        .add_faults("/dropped.bin", [Fault::DropAfter(100_000)]);
    let ran = job.run(&[&["--retries", "1"], args].concat());
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(job.read("flaky.bin"), flaky);
    assert_eq!(job.read("dropped.bin"), dropped);
    let about_lines = ran
        .stderr
        .lines()
        .filter(|text| text.starts_with("line "))
        .map(str::to_string)
        .collect();
    (ran, about_lines)
}

#[test]
fn without_verbose_retries_are_counted_and_only_final_failures_are_printed() {
    let (ran, about_lines) = retries_and_failures(&[]);
    assert!(!ran.stderr.contains("retrying"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("HTTP 500"), "{}", ran.stderr);
    // Each line that failed for good, once as it fails (the summary lists
    // them again, indented).
    assert_eq!(about_lines.len(), 2, "{}", ran.stderr);
    assert!(
        about_lines[..]
            .iter()
            .any(|text| text.starts_with("line 3: failed after 2 attempts")
                && text.contains("refused")),
        "{}",
        ran.stderr
    );
    assert!(
        about_lines[..]
            .iter()
            .any(|text| text.starts_with("line 4: failed after 1 attempt:")
                && text.contains("HTTP 404")),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("; 3 retries,"), "{}", ran.stderr);
    assert!(ran.stderr.contains("failed lines:"), "{}", ran.stderr);
}

#[test]
fn verbose_also_prints_each_attempt_that_is_retried() {
    let (ran, about_lines) = retries_and_failures(&["--verbose"]);
    let retrying: Vec<&String> = about_lines
        .iter()
        .filter(|text| text.contains("retrying in"))
        .collect();
    assert_eq!(retrying.len(), 3, "{}", ran.stderr);
    for (line, error) in [(1, "HTTP 500"), (2, "cut short"), (3, "refused")] {
        let prefix = format!("line {line}: attempt 1 failed, retrying in");
        assert!(
            retrying
                .iter()
                .any(|text| text.starts_with(&prefix) && text.contains(error)),
            "no retry of line {line} ({error}) in\n{}",
            ran.stderr
        );
    }
    // The final failures and the summary as without --verbose.
    assert_eq!(about_lines.len(), 5, "{}", ran.stderr);
    assert!(ran.stderr.contains("; 3 retries,"), "{}", ran.stderr);
}

/// Answers `code` with `retry_after` once, then the file; returns how long
/// the client waited between the two requests.
fn wait_after(code: u16, retry_after: RetryAfter) -> Duration {
    let job = Job::new();
    let content = generate(8, 10_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    let retry_after = Some(retry_after);
    job.server
        .add_faults("/f.bin", [Fault::Status { code, retry_after }]);
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let requests = job.server.requests_for("/f.bin");
    assert_eq!(summary(&requests), vec![(code, None), (200, None)]);
    assert_eq!(job.read("f.bin"), content);
    requests[1].at - requests[0].at
}

#[test]
fn a_429_retry_waits_for_retry_after() {
    // The default backoff is at most half a second: the wait is the hint.
    let waited = wait_after(429, RetryAfter::Seconds(1));
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
}

#[test]
fn a_503_retry_waits_until_a_retry_after_date() {
    // The date is 1 to 2 s ahead; a date not understood would be no hint,
    // and the default backoff is at most half a second.
    let waited = wait_after(503, RetryAfter::DateIn(1));
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[test]
fn a_404_and_bad_lines_are_failed_lines_with_their_reasons() {
    let job = Job::new();
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone.bin", listener.local_addr().unwrap())
    };
    let content = generate(9, 5_000);
    let lines = vec![
        job.file("ok.bin", content.clone()),
        job.server.url("/missing.bin"),
        "ftp://127.0.0.1/x.bin".to_string(),
        "not-a-url".to_string(),
        refused.clone(),
        "one two three".to_string(),
    ];
    job.write_list(&lines);
    let ran = job.run(&["--retries", "1"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(job.read("ok.bin"), content);
    // Every line counted once in the summary, bad ones too.
    assert!(
        ran.stderr
            .contains("1 downloaded, 0 already done, 5 failed, of 6 files"),
        "{}",
        ran.stderr
    );
    let failed = common::failed_lines(&job.checkpoint());
    let failed: Vec<_> = failed
        .iter()
        .map(|f| (f.line(), f.attempts(), f.error().to_string()))
        .collect();
    assert_eq!(failed.len(), 5, "{failed:?}");
    // A 404 is permanent: recorded at once with its status and URL.
    assert_eq!(failed[0].0, 2);
    assert_eq!(failed[0].1, 1);
    assert!(failed[0].2.contains("HTTP 404"), "{failed:?}");
    assert!(failed[0].2.contains(&lines[1]), "{failed:?}");
    assert_eq!((failed[1].0, failed[1].1), (3, 1));
    assert!(failed[1].2.contains("scheme"), "{failed:?}");
    assert_eq!((failed[2].0, failed[2].1), (4, 1));
    assert!(failed[2].2.contains("not an absolute URL"), "{failed:?}");
    // A refused connection is worth retrying.
    assert_eq!((failed[3].0, failed[3].1), (5, 2));
    assert!(failed[3].2.contains("refused"), "{failed:?}");
    assert_eq!((failed[4].0, failed[4].1), (6, 1));
    assert!(failed[4].2.contains("optional file name"), "{failed:?}");
    assert!(ran.stderr.contains("failed lines:"), "{}", ran.stderr);

    // The missing file appears: --retry-failed fetches it and only the
    // failed lines are tried again.
    job.file("missing.bin", content.clone());
    let ran = job.run(&["--retry-failed", "--retries", "0"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(job.read("missing.bin"), content);
    assert_eq!(job.server.requests_for("/ok.bin").len(), 1);
    let still: Vec<u64> = common::failed_lines(&job.checkpoint())
        .iter()
        .map(|f| f.line())
        .collect();
    assert_eq!(still, vec![3, 4, 5, 6]);
}

#[test]
fn a_hanging_server_hits_the_timeout() {
    let job = Job::new();
    job.write_list(&[job.file("f.bin", generate(10, 1000))]);
    job.server.add_faults("/f.bin", [Fault::Hang]);
    let ran = job.run(&["--timeout", "0.5", "--retries", "0"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.elapsed < Duration::from_secs(20), "{ran:?}");
    let failed = common::failed_lines(&job.checkpoint());
    assert!(failed[0].error().contains("timed out"), "{failed:?}");
}

#[test]
fn names_are_distinct_stable_and_connections_are_reused() {
    let job = Job::new();
    let mut lines = vec!["# a comment".to_string(), String::new()];
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let content = generate(100 + i, 2_000 + i as usize);
        lines.push(job.file(&format!("d{i}/same.bin"), content.clone()));
        expected.push(content);
    }
    lines.push(format!(
        "{} ../../escape.bin",
        job.server.url("/d0/same.bin")
    ));
    // The same name but for case: the same file where case is ignored.
    lines.push(format!("{} SAME.bin", job.server.url("/d1/same.bin")));
    job.write_list(&lines);
    let ran = job.run(&["--jobs", "4"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // The first line claiming a name gets it; later ones get their line
    // number before the extension.
    assert_eq!(job.read("same.bin"), expected[0]);
    for (i, content) in expected.iter().enumerate().skip(1) {
        assert_eq!(&job.read(&format!("same.{}.bin", i + 3)), content);
    }
    assert_eq!(job.read(".._.._escape.bin"), expected[0]);
    assert_eq!(job.read("SAME.44.bin"), expected[1]);
    assert_eq!(names_in(&job.out()).len(), 42);
    assert!(!job.dir.path().join("escape.bin").exists());
    // Four workers, their connections reused: a handful for 42 files.
    assert!(
        job.server.connections_accepted() <= 8,
        "{} connections",
        job.server.connections_accepted()
    );
}

#[test]
fn sigterm_stops_gracefully_keeps_partial_files_and_says_how_to_resume() {
    let job = Job::new();
    let mut lines = Vec::new();
    let mut contents = Vec::new();
    for i in 0..20u64 {
        let content = generate(300 + i, 512 << 10);
        lines.push(job.file(&format!("f{i}.bin"), content.clone()));
        contents.push(content);
    }
    job.write_list(&lines);
    job.server.throttle(1 << 20);
    let started = Instant::now();
    let mut child = job.command(&["--jobs", "4"]).spawn().unwrap();
    // Once some bytes are on disk, downloads are in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while disk_bytes(&job.out()) < 300 << 10 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the run");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(130));
    // Far less than the 10 s the whole list takes at this rate.
    assert!(started.elapsed() < Duration::from_secs(8));
    let stderr = std::fs::read_to_string(job.dir.path().join("stderr.txt")).unwrap();
    assert!(
        stderr.contains("To resume, run the same command again"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&job.list().display().to_string()),
        "{stderr}"
    );
    assert!(!job.leftovers().is_empty(), "no partial file kept");

    job.server.throttle(0);
    let ran = job.run(&["--jobs", "4"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    for (i, content) in contents.iter().enumerate() {
        assert!(
            job.read(&format!("f{i}.bin")) == *content,
            "f{i}.bin differs"
        );
    }
    assert!(job.leftovers().is_empty());
}

#[test]
fn a_list_changed_before_the_resume_point_is_refused_with_exit_2() {
    let job = Job::new();
    let first = job.file("a.bin", generate(20, 100));
    let second = job.file("b.bin", generate(21, 100));
    job.write_list(&[first.clone(), second.clone()]);
    assert_eq!(job.run(&[]).code, Some(0));
    // Appending is fine: only the new line runs.
    let third = job.file("c.bin", generate(22, 100));
    job.write_list(&[first.clone(), second.clone(), third.clone()]);
    assert_eq!(job.run(&[]).code, Some(0));
    assert_eq!(job.server.requests_for("/a.bin").len(), 1);
    // Editing the last finished line is not (linemark checks that line).
    job.write_list(&[first, second, job.server.url("/C.bin")]);
    let ran = job.run(&[]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("input changed"), "{}", ran.stderr);
}

/// The on-disk state after a kill: partial files and finished files.
struct AtKill {
    /// Requests the server had seen when the process was dead.
    log_len: usize,
    parts: BTreeMap<String, u64>,
    finished: BTreeSet<String>,
}

fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

fn kill_when(child: &mut Child, out: &Path, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while disk_bytes(out) < bytes {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the download ended before {bytes} bytes were on disk"
        );
        assert!(Instant::now() < deadline, "no progress to {bytes} bytes");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkill_at_varied_moments_then_rerun_gives_every_file_whole_and_fetched_once() {
    let job = Job::new();
    let mut contents: Vec<(String, Arc<[u8]>)> = Vec::new();
    let mut lines = Vec::new();
    for i in 0..240u64 {
        let size = (16 << 10) + (i as usize * 7919) % (240 << 10);
        let name = format!("f{i:03}.bin");
        let content: Arc<[u8]> = generate(1000 + i, size).into();
        lines.push(job.file(&name, content.to_vec()));
        contents.push((name, content));
    }
    job.write_list(&lines);
    let total: u64 = contents.iter().map(|(_, c)| c.len() as u64).sum();
    // Slow enough that every kill finds downloads in flight.
    job.server.throttle(4 << 20);

    let mut kills = Vec::new();
    for percent in [3, 15, 35, 55, 75] {
        let mut child = job.command(&["--jobs", "8"]).spawn().unwrap();
        kill_when(&mut child, &job.out(), total * percent / 100);
        // Requests that reached the server before the kill are logged once
        // its connections are closed.
        assert!(job.server.wait_idle(Duration::from_secs(10)));
        let names = names_in(&job.out());
        let parts = names
            .iter()
            .filter_map(|name| {
                // Resumable: bytes on disk and their validator beside them.
                // (A small file is written whole and waits for its rename
                // with no meta: killed there, it restarts from zero.)
                let file = name.strip_suffix(".part")?;
                let len = std::fs::metadata(job.out().join(name)).ok()?.len();
                let meta = job.out().join(format!("{name}.meta")).exists();
                (len > 0 && meta).then(|| (file.to_string(), len))
            })
            .collect();
        let finished = names
            .iter()
            .filter(|name| name.ends_with(".bin"))
            .cloned()
            .collect();
        kills.push(AtKill {
            log_len: job.server.log().len(),
            parts,
            finished,
        });
    }
    let ran = job.run(&["--jobs", "8"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");

    for (name, content) in &contents {
        assert!(
            job.read(name) == **content,
            "{name} differs from the server's"
        );
    }
    assert!(job.leftovers().is_empty(), "{:?}", job.leftovers());
    let log = job.server.log();
    let mut resumed = 0;
    for (k, kill) in kills.iter().enumerate() {
        // A partial file left by a kill is continued where it ends.
        for (name, len) in &kill.parts {
            let path = format!("/{name}");
            let next = log[kill.log_len..]
                .iter()
                .find(|request| request.path == path)
                .unwrap_or_else(|| panic!("kill {k}: {name} never asked for again"));
            // A part killed between its last byte and its rename is whole:
            // the server answers 416 to a range starting at its end.
            let whole = contents
                .iter()
                .any(|(n, c)| n == name && c.len() as u64 == *len);
            let expected = if whole { 416 } else { 206 };
            assert_eq!(
                (next.status, next.range_start),
                (expected, Some(*len)),
                "kill {k}: {name} was not resumed from its {len} bytes"
            );
            resumed += 1;
        }
    }
    assert!(resumed > 0, "no kill caught a partial file");
    // A path is fetched whole once, plus once for each kill that left
    // nothing resumable of it on disk after it had been asked for.
    for (name, _) in &contents {
        let path = format!("/{name}");
        let allowed = 1 + kills
            .iter()
            .filter(|kill| {
                log[..kill.log_len].iter().any(|r| r.path == path)
                    && !kill.parts.contains_key(name)
                    && !kill.finished.contains(name)
            })
            .count();
        let full = job.server.full_responses(&path);
        assert!(
            full <= allowed,
            "{name}: {full} whole fetches, {allowed} allowed"
        );
    }
}

fn test_ca() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls/ca.pem")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn https_downloads_and_resumes_by_range_with_the_given_ca() {
    let job = Job::new_tls();
    let big = generate(21, 400_000);
    let small = generate(22, 3_000);
    let lines = vec![
        job.file("big.bin", big.clone()),
        job.file("small.bin", small.clone()),
    ];
    assert!(lines[0].starts_with("https://127.0.0.1:"), "{lines:?}");
    job.write_list(&lines);
    resumes_after_a_drop(&job, &["--cacert", &test_ca()], &big, 250_000);
    assert_eq!(job.read("small.bin"), small);
}

#[test]
fn a_tls_error_that_may_pass_is_retried() {
    let job = Job::new_tls();
    let content = generate(26, 20_000);
    job.write_list(&[job.file("f.bin", content.clone())]);
    job.server.add_faults("/f.bin", [Fault::Garbage]);
    let ran = job.run(&["--cacert", &test_ca()]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(job.read("f.bin"), content);
    let requests = job.server.requests_for("/f.bin");
    assert_eq!(summary(&requests), vec![(0, None), (200, None)]);
}

#[test]
fn an_untrusted_certificate_is_a_permanent_failure_not_retried() {
    let job = Job::new_tls();
    let lines = vec![job.file("a.bin", generate(23, 1_000))];
    job.write_list(&lines);
    // Without --cacert only the built-in roots are trusted, and the test
    // CA is not one of them.
    let ran = job.run(&["--retries", "3"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let failed = common::failed_lines(&job.checkpoint());
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].attempts(), 1, "{failed:?}");
    let error = failed[0].error();
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "{error}"
    );
    assert!(error.contains(&lines[0]), "{error}");
    // The handshake failed, so no request was ever answered.
    assert!(job.server.log().is_empty());
    assert!(!job.out().join("a.bin").exists());
}

#[test]
fn a_cacert_file_without_certificates_is_a_usage_error() {
    let job = Job::new_tls();
    job.write_list(&[job.file("a.bin", generate(24, 100))]);
    let empty = job.dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let ran = job.run(&["--cacert", empty.to_str().unwrap()]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("--cacert"), "{}", ran.stderr);
    assert!(ran.stderr.contains("no certificate"), "{}", ran.stderr);
}

#[test]
fn serve_with_tls_serves_a_directory_over_https() {
    let job = Job::new();
    let served = job.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let contents: Vec<Vec<u8>> = (0..3).map(|i| generate(400 + i, 30_000)).collect();
    for (i, content) in contents.iter().enumerate() {
        std::fs::write(served.join(format!("s{i}.bin")), content).unwrap();
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let mut server = Command::new(binary())
        .arg("--serve")
        .arg(&served)
        .arg("--tls-cert")
        .arg(fixtures.join("server.pem"))
        .arg("--tls-key")
        .arg(fixtures.join("server.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // "serving 3 files of DIR at https://127.0.0.1:PORT/ (Ctrl-C to stop)"
    let mut banner = String::new();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut banner).unwrap();
    let base = banner
        .split_whitespace()
        .find(|word| word.starts_with("https://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no https URL in {banner:?}"))
        .to_string();
    let lines: Vec<String> = (0..3).map(|i| format!("{base}s{i}.bin")).collect();
    job.write_list(&lines);
    let ran = job.run(&["--cacert", &test_ca()]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(ran.code, Some(0), "{ran:?}");
    for (i, content) in contents.iter().enumerate() {
        assert_eq!(&job.read(&format!("s{i}.bin")), content);
    }
}
