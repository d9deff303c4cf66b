//! The URL list: what a line asks for, the file name it gets, and a
//! pre-pass that counts the work and settles name clashes.
//!
//! # Line format
//!
//! `URL [NAME]`: a URL, optionally followed by whitespace and an output file
//! name. Blank lines and lines starting with `#` are skipped (and count as
//! done). A URL without `scheme://` is relative to `--base-url`.
//!
//! # Output names
//!
//! The name is `NAME` when given, else the last segment of the URL's path,
//! percent-decoded. Either way it is one file inside the output directory:
//! `/`, `\` and control characters become `_`, an empty name, `.` and `..`
//! become `index.html`, a name ending in `.part`, `.part.meta` or
//! `.part.meta.tmp`, in any case (the suffixes of partial downloads), gets
//! a `_` appended, and names are cut to
//! 200 bytes.
//!
//! Two lines never share a file: a pre-pass over the whole list gives each
//! name to the first line that claims it; a later line claiming a taken name
//! gets its line number inserted before the extension (`report.pdf` on line
//! 7 becomes `report.7.pdf`, again until the name is free). Because the
//! pass always covers the whole list from its first line, a rerun maps every
//! line to the same name; lines appended to the list later cannot change the
//! names of earlier ones.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use linemark::{Checkpoint, LineReader, Snapshot};

/// A line's request: the URL (as written) and the optional name.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub url: &'a str,
    pub name: Option<&'a str>,
}

/// Parses a line's text. `Ok(None)` for a blank or comment line.
pub fn parse_line(text: &str) -> Result<Option<Entry<'_>>, String> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let mut fields = text.split_whitespace();
    let url = fields.next().unwrap_or_default();
    let name = fields.next();
    if fields.next().is_some() {
        return Err(format!(
            "expected a URL and an optional file name, found more: {text:?}"
        ));
    }
    Ok(Some(Entry { url, name }))
}

/// The absolute URL for `url`: as it is when it has a scheme, else joined to
/// `base` with one `/`.
pub fn resolve_url(url: &str, base: Option<&str>) -> Result<String, String> {
    let absolute = match url.split_once("://") {
        Some(_) => url.to_string(),
        None => match base {
            Some(base) => format!(
                "{}/{}",
                base.trim_end_matches('/'),
                url.trim_start_matches('/')
            ),
            None => {
                return Err(format!(
                    "not an absolute URL (use --base-url for relative ones): {url}"
                ));
            }
        },
    };
    let Some((scheme, rest)) = absolute.split_once("://") else {
        return Err(format!("bad URL: {absolute}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        _ => return Err(format!("unsupported URL scheme {scheme:?}: {absolute}")),
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("bad URL, no host: {absolute}"));
    }
    Ok(absolute)
}

/// The file name for a line, before clashes are settled.
pub fn base_name(url: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(name) => sanitise(name),
        None => {
            let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
            let path = after_scheme
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .split_once('/')
                .map_or("", |(_, path)| path);
            let last = path.rsplit('/').next().unwrap_or_default();
            sanitise(&percent_decode(last))
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The longest name kept, in bytes; with a `.part.meta` suffix and a line
/// number it stays within the usual 255-byte limit.
const MAX_NAME: usize = 200;

/// One safe file name: see the module docs.
pub fn sanitise(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    if clean.is_empty() || clean == "." || clean == ".." {
        return "index.html".to_string();
    }
    // The names of a line's other files (see `listing`), in any case, as
    // some file systems ignore it.
    let lower = clean.to_lowercase();
    if [".part", ".part.meta", ".part.meta.tmp"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
    {
        clean.push('_');
    }
    clean
}

/// `name` with `.LINE` inserted before its extension.
fn with_line(name: &str, line: u64) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}.{line}{}", &name[..dot], &name[dot..]),
        _ => format!("{name}.{line}"),
    }
}

/// What the pre-pass found.
#[derive(Debug, Default)]
pub struct Plan {
    /// Lines whose name is not their base name (they clashed).
    renamed: HashMap<u64, String>,
    /// Lines with a URL, or that fail as a job: every line but blank
    /// lines and comments.
    pub url_lines: u64,
    /// URL lines finished by earlier runs.
    pub already_done: u64,
    /// URL lines recorded as failed by earlier runs (left alone by a plain
    /// run; the work of a retry-failed run).
    pub failed_before: u64,
    /// Input bytes this run goes through: its progress bar's length.
    pub todo_bytes: u64,
}

impl Plan {
    /// Reads the whole list once. `snapshot` is the state of the
    /// checkpoint at `checkpoint`, whose failed lines are read from its
    /// failure log; `retry_failed` says which lines this run will go
    /// through.
    pub fn scan(
        list: &Path,
        base: Option<&str>,
        checkpoint: &Path,
        snapshot: &Snapshot,
        retry_failed: bool,
    ) -> Result<Plan, Box<dyn std::error::Error>> {
        let file = File::open(list).map_err(|err| format!("opening {}: {err}", list.display()))?;
        let mut lines = LineReader::new(BufReader::with_capacity(64 * 1024, file)).path(list);
        let done_beyond: HashSet<u64> = snapshot.done_beyond.iter().copied().collect();
        let finished_up_to = snapshot.position.line();
        let failed = if snapshot.failed > 0 {
            FailedSet::read(checkpoint, finished_up_to).map_err(|err| {
                format!(
                    "reading the failed lines of {}: {err}",
                    checkpoint.display()
                )
            })?
        } else {
            FailedSet::default()
        };
        // Names are compared by a 64-bit hash, so that a list of millions
        // of lines costs little memory; a false clash (vanishingly rare)
        // only gives a line the suffixed name, still distinct and stable.
        let mut claimed = Claimed::default();
        let mut plan = Plan::default();
        while let Some(line) = lines.next_line()? {
            let number = line.number();
            let is_failed = failed.contains(number);
            let finished = number <= finished_up_to || done_beyond.contains(&number);
            let goes = if retry_failed {
                is_failed
            } else {
                !is_failed && !finished
            };
            if goes {
                plan.todo_bytes += line.raw().len() as u64;
            }
            // A line that is not text, or not a URL with an optional name,
            // is a job too: one that fails (and is counted as one).
            let entry = match line.as_str().map(parse_line) {
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(entry))) => Some(entry),
                Ok(Err(_)) | Err(_) => None,
            };
            plan.url_lines += 1;
            if is_failed {
                plan.failed_before += 1;
            } else if finished {
                plan.already_done += 1;
            }
            let Some(entry) = entry else { continue };
            let Ok(url) = resolve_url(entry.url, base) else {
                continue;
            };
            let mut name = base_name(&url, entry.name);
            let mut renamed = false;
            while !claimed.insert(name_hash(&name)) {
                name = with_line(&name, number);
                renamed = true;
            }
            if renamed {
                plan.renamed.insert(number, name);
            }
        }
        Ok(plan)
    }

    /// The output name of the line `number` whose URL is `url`.
    pub fn name_for(&self, number: u64, url: &str, explicit: Option<&str>) -> String {
        match self.renamed.get(&number) {
            Some(name) => name.clone(),
            None => base_name(url, explicit),
        }
    }
}

/// The lines a checkpoint records as failed, for the pre-pass to look up by
/// number. Read from the failure log one at a time and never held as
/// records: those the position passed are a bit each (a bit per line of the
/// list up to the last of them, however many failed), the few beyond it
/// (failed out of order in a run that stopped) are in a set.
#[derive(Debug, Default)]
struct FailedSet {
    /// Bit `n % 64` of word `n / 64` is set for a failed line `n` at or
    /// before `up_to`.
    passed: Vec<u64>,
    beyond: HashSet<u64>,
    up_to: u64,
}

impl FailedSet {
    /// The failed lines of the checkpoint at `checkpoint`, whose position
    /// is at line `up_to`.
    fn read(checkpoint: &Path, up_to: u64) -> linemark::Result<FailedSet> {
        let mut set = FailedSet {
            up_to,
            ..FailedSet::default()
        };
        for failed in Checkpoint::inspect_failed(checkpoint)? {
            let number = failed?.line();
            if number <= up_to {
                let word = (number / 64) as usize;
                if set.passed.len() <= word {
                    set.passed.resize(word + 1, 0);
                }
                set.passed[word] |= 1 << (number % 64);
            } else {
                set.beyond.insert(number);
            }
        }
        Ok(set)
    }

    fn contains(&self, number: u64) -> bool {
        if number <= self.up_to {
            self.passed
                .get((number / 64) as usize)
                .is_some_and(|word| word >> (number % 64) & 1 == 1)
        } else {
            self.beyond.contains(&number)
        }
    }
}

/// The hashes of the names claimed so far: most in a sorted vector (8 bytes
/// a name, where a hash set takes about 18 at a million), the newest in a
/// small set merged into it when it fills.
#[derive(Default)]
struct Claimed {
    sorted: Vec<u64>,
    recent: HashSet<u64>,
}

impl Claimed {
    const RECENT: usize = 1 << 16;

    /// Claims `hash`; false if it was claimed before.
    fn insert(&mut self, hash: u64) -> bool {
        if self.sorted.binary_search(&hash).is_ok() || !self.recent.insert(hash) {
            return false;
        }
        if self.recent.len() >= Claimed::RECENT {
            let mut recent: Vec<u64> = self.recent.drain().collect();
            recent.sort_unstable();
            self.sorted.reserve_exact(recent.len());
            // Merged from the back, in place.
            let mut old = self.sorted.len();
            let mut new = recent.len();
            self.sorted.resize(old + new, 0);
            while new > 0 {
                let at = old + new - 1;
                if old > 0 && self.sorted[old - 1] > recent[new - 1] {
                    self.sorted[at] = self.sorted[old - 1];
                    old -= 1;
                } else {
                    self.sorted[at] = recent[new - 1];
                    new -= 1;
                }
            }
        }
        true
    }
}

/// The hash a name is claimed by: of its lowercase form, as two names that
/// differ only in case are one file where the file system ignores case.
fn name_hash(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut utf8 = [0u8; 4];
    for c in name.chars().flat_map(char::to_lowercase) {
        for &byte in c.encode_utf8(&mut utf8).as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn claimed_hashes_are_refused_a_second_time_across_merges() {
        use super::Claimed;
        let mut claimed = Claimed::default();
        // A spread of hashes, each claimed once, then again.
        let hashes: Vec<u64> = (0..3 * Claimed::RECENT as u64 + 17)
            .map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &hash in &hashes {
            assert!(claimed.insert(hash), "{hash}");
        }
        assert!(claimed.sorted.windows(2).all(|pair| pair[0] < pair[1]));
        for &hash in &hashes {
            assert!(!claimed.insert(hash), "{hash}");
        }
        assert!(claimed.insert(1));
    }

    use super::*;

    #[test]
    fn names_are_single_safe_components() {
        assert_eq!(base_name("http://h/a/b/c.txt?x=1#y", None), "c.txt");
        assert_eq!(base_name("http://h/a/%2e%2e", None), "index.html");
        assert_eq!(base_name("http://h/a/..%2f..%2fetc", None), ".._.._etc");
        assert_eq!(base_name("http://h/", None), "index.html");
        assert_eq!(base_name("http://h", None), "index.html");
        assert_eq!(base_name("http://h/x", Some("/etc/passwd")), "_etc_passwd");
        assert_eq!(base_name("http://h/x", Some("..")), "index.html");
        assert_eq!(base_name("http://h/a.part", None), "a.part_");
        assert_eq!(base_name("http://h/a.PART.Meta", None), "a.PART.Meta_");
        assert_eq!(
            base_name("http://h/x", Some("a.part.meta.tmp")),
            "a.part.meta.tmp_"
        );
        assert_eq!(base_name("http://h/a%20b", None), "a b");
        assert_eq!(with_line("report.pdf", 7), "report.7.pdf");
        assert_eq!(with_line(".profile", 7), ".profile.7");
    }

    #[test]
    fn lines_parse() {
        assert_eq!(parse_line("  # comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(
            parse_line("http://h/x  y.bin").unwrap(),
            Some(Entry {
                url: "http://h/x",
                name: Some("y.bin")
            })
        );
        assert!(parse_line("a b c").is_err());
        assert!(resolve_url("ftp://h/x", None).is_err());
        assert!(resolve_url("x", None).is_err());
        assert!(resolve_url("http:///x", None).is_err());
        assert_eq!(resolve_url("HTTPS://h/x", None).unwrap(), "HTTPS://h/x");
        assert_eq!(
            resolve_url("/files/a", Some("http://127.0.0.1:1/")).unwrap(),
            "http://127.0.0.1:1/files/a"
        );
    }
}
