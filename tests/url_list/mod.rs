//! The fixture of the tests of the programs that fetch a list of URLs
//! (`download`, `fetch_async`): a temporary folder with the list, the
//! output directory and the checkpoint, and the download example's test
//! server. Each test file adds how its program is started.

// Each test binary compiles its own copy of this module and uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::Server;

/// A temporary folder with a list, an output directory and a server.
pub struct Job {
    pub dir: tempfile::TempDir,
    pub server: Server,
}

impl Job {
    /// A job whose server speaks plain HTTP.
    pub fn new() -> Job {
        Job::with_server(Server::start(0).unwrap())
    }

    pub fn with_server(server: Server) -> Job {
        Job {
            dir: tempfile::tempdir().unwrap(),
            server,
        }
    }

    pub fn list(&self) -> PathBuf {
        self.dir.path().join("urls.txt")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.dir.path().join("urls.txt.checkpoint")
    }

    /// Where a run of the program writes its standard error.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.txt")
    }

    pub fn write_list(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.list(), text).unwrap();
    }

    /// Serves `content` at `/NAME` and returns its list line.
    pub fn file(&self, name: &str, content: impl Into<Arc<[u8]>>) -> String {
        let path = format!("/{name}");
        self.server.add_file(&path, content);
        self.server.url(&path)
    }

    /// The output file `name`.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.out().join(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
    }
}

/// Waits for `child`, the program `name`, to exit; kills it and fails the
/// test if it has not within `deadline`.
pub fn wait(child: &mut Child, name: &str, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("{name} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
