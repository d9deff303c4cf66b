//! `--demo`: a local server with a few hundred generated files and injected
//! faults, a URL list for it, and a checksum of every file downloaded.
//!
//! The server listens on a new random port in each run, but the list must
//! not change between runs (the checkpoint refuses a changed input). So the
//! list holds paths relative to a base URL, and the run is given the
//! server's address with `--base-url`: the list stays byte-identical, a rerun
//! after Ctrl-C resumes, and no fixed port has to be free.

use std::error::Error;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use linemark::LineReader;

use crate::input::{Plan, parse_line, resolve_url};
use crate::server::{Fault, RetryAfter, Server, checksum, generate};

/// Files the demo serves.
const FILES: u64 = 300;

/// Bytes a second each response is limited to, so that a run lasts long
/// enough to be interrupted.
const RATE: u64 = 1536 * 1024;

/// A demo folder with its server running.
pub struct Demo {
    pub server: Server,
    /// `DIR/urls.txt`.
    pub list: PathBuf,
    /// `DIR/files`.
    pub out: PathBuf,
    /// The server's base URL for the list's relative paths.
    pub base_url: String,
}

fn size_of(i: u64) -> usize {
    let size = match i {
        _ if i % 10 == 0 => (1 << 20) + (i * 7919) % (3 << 20),
        _ if i % 3 == 0 => (96 << 10) + (i * 104_729) % (384 << 10),
        _ => (2 << 10) + (i * 7907) % (60 << 10),
    };
    size as usize
}

fn faults_of(i: u64, size: u64) -> Vec<Fault> {
    match i {
        13 => vec![Fault::DropAfter(size / 2), Fault::NewVersion],
        // About 400 KiB at 96 KiB/s.
        18 => vec![Fault::Slow(96 << 10)],
        _ if i % 31 == 11 => vec![Fault::DropAfter(size / 3), Fault::IgnoreRange],
        _ if i % 29 == 7 => vec![Fault::Status {
            code: 500,
            retry_after: None,
        }],
        _ if i % 23 == 5 => vec![Fault::Status {
            code: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
        }],
        _ if i % 9 == 4 => vec![Fault::Status {
            code: 503,
            retry_after: Some(RetryAfter::DateIn(1)),
        }],
        _ if i % 9 == 1 => vec![Fault::DropAfter(size / 2)],
        _ => Vec::new(),
    }
}

/// The list: relative paths, a comment, and two lines whose names clash.
fn list_text() -> String {
    let mut text = String::from(
        "# The linemark download demo: paths relative to --base-url.\n\
         # Every file is served with a fault now and then: dropped\n\
         # connections, 500, 503 and 429 with Retry-After, a range request\n\
         # answered in full, a file that changes mid-download, a slow one.\n\n",
    );
    for i in 0..FILES {
        text.push_str(&format!("files/file-{i:03}.bin\n"));
    }
    text.push_str("\n# Two URLs, one name: the second line gets its line number in its name.\n");
    text.push_str("files/a/same.bin\nfiles/b/same.bin\n");
    text
}

/// Creates (or finds) the demo folder and starts the server.
pub fn prepare(dir: &Path) -> Result<Demo, Box<dyn Error>> {
    let out = dir.join("files");
    fs::create_dir_all(&out)
        .map_err(|err| format!("creating the demo folder {}: {err}", out.display()))?;
    let list = dir.join("urls.txt");
    let text = list_text();
    match fs::read_to_string(&list) {
        Ok(existing) if existing == text => {}
        Ok(_) => {
            return Err(format!(
                "{} is not the demo's list; remove the folder or choose another with --dir",
                list.display()
            )
            .into());
        }
        Err(_) => {
            fs::write(&list, &text).map_err(|err| format!("writing {}: {err}", list.display()))?
        }
    }
    let server = Server::start(0)?;
    server.throttle(RATE);
    for i in 0..FILES {
        let size = size_of(i);
        let path = format!("/files/file-{i:03}.bin");
        let faults = faults_of(i, size as u64);
        if faults.contains(&Fault::NewVersion) {
            let versions = vec![
                generate(i, size).into(),
                generate(i + 1_000_000, size).into(),
            ];
            server.add_versions(&path, versions);
        } else {
            server.add_file(&path, generate(i, size));
        }
        server.add_faults(&path, faults);
    }
    server.add_file("/files/a/same.bin", generate(2_000_001, 5000));
    server.add_file("/files/b/same.bin", generate(2_000_002, 7000));
    let base_url = server.url("/");
    Ok(Demo {
        server,
        list,
        out,
        base_url,
    })
}

/// Checks every file of the list against the server's checksum. Returns
/// how many matched, and the mismatches.
pub fn verify(demo: &Demo, plan: &Plan) -> Result<(u64, Vec<String>), Box<dyn Error>> {
    let mut lines = LineReader::new(BufReader::new(File::open(&demo.list)?));
    let mut matched = 0;
    let mut wrong = Vec::new();
    while let Some(line) = lines.next_line()? {
        let Some(entry) = parse_line(line.as_str()?)? else {
            continue;
        };
        let url = resolve_url(entry.url, Some(&demo.base_url))?;
        let name = plan.name_for(line.number(), &url, entry.name);
        let path = format!("/{}", entry.url);
        // A file that changed on the server may be whole in either version
        // (a rerun's server starts again from the first); never a splice.
        let expected: Vec<u64> = demo
            .server
            .versions(&path)
            .iter()
            .map(|content| checksum(content))
            .collect();
        match fs::read(demo.out.join(&name)) {
            Ok(content) if expected.contains(&checksum(&content)) => matched += 1,
            Ok(_) => wrong.push(format!("{name}: checksum differs from the server's")),
            Err(err) => wrong.push(format!("{name}: {err}")),
        }
    }
    Ok((matched, wrong))
}
