//! What the output directory held when the run started, so that most
//! lines need no lookups before their download.

use std::collections::HashSet;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The suffixes of a line's other files: its part, its meta, and the
/// meta's temporary file. No planned name ends in one of them.
const SUFFIXES: [&str; 3] = [".part.meta.tmp", ".part.meta", ".part"];

/// The names in the output directory at the start of the run, so that a
/// line's first attempt looks up nothing when none of its files (`NAME`,
/// its part, its meta) was there.
///
/// A lookup of an absent name takes the directory's lock, which the
/// workers creating files hold in turn: with 16 workers the lookups were a
/// third of all thread switches (`perf record -e sched:sched_switch`).
/// Only a line's own task touches its names during the run, so the listing
/// stays true for a name until an attempt at it fails and may leave a part
/// behind; such names are remembered and looked up from then on.
pub struct Listing {
    /// Hashes of the names listed, lowercased and with the [`SUFFIXES`]
    /// taken off, sorted. A false match only costs a lookup; lowercasing
    /// makes a name that differs only in case a match, as it is the same
    /// file on a file system that ignores case. (Names that differ only
    /// in their Unicode normalisation are not matched.)
    stems: Vec<u64>,
    /// Hashes of the names whose attempt failed in this run and will be
    /// tried again (a false match only costs a lookup).
    failed: Mutex<HashSet<u64>>,
    any_failed: AtomicBool,
}

impl Listing {
    /// Lists `dir`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read; the error names it.
    pub fn read(dir: &Path) -> io::Result<Listing> {
        let context = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("listing the output directory {}: {err}", dir.display()),
            )
        };
        let mut stems = Vec::new();
        for entry in fs::read_dir(dir).map_err(context)? {
            let name = entry.map_err(context)?.file_name();
            stems.push(stem_hash(&name.to_string_lossy()));
        }
        stems.sort_unstable();
        stems.dedup();
        Ok(Listing {
            stems,
            failed: Mutex::new(HashSet::new()),
            any_failed: AtomicBool::new(false),
        })
    }

    /// Whether `name`, its part or its meta may be on disk.
    pub fn may_exist(&self, name: &str) -> bool {
        self.stems.binary_search(&stem_hash(name)).is_ok()
            || (self.any_failed.load(Ordering::Acquire)
                && self.lock_failed().contains(&stem_hash(name)))
    }

    /// Notes that an attempt at `name` failed and will be tried again:
    /// from now on it may exist.
    pub fn attempt_failed(&self, name: &str) {
        let mut failed = self.lock_failed();
        if failed.insert(stem_hash(name)) {
            self.any_failed.store(true, Ordering::Release);
        }
    }

    fn lock_failed(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hash of a file name's line name: lowercased, without its suffix.
fn stem_hash(name: &str) -> u64 {
    let lower = name.to_lowercase();
    let stem = SUFFIXES
        .iter()
        .find_map(|suffix| lower.strip_suffix(suffix))
        .unwrap_or(&lower);
    let mut hasher = DefaultHasher::new();
    stem.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_matches_itself_its_part_its_meta_and_other_cases() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "whole.bin",
            "cut.bin.part",
            "meta.bin.part.meta",
            "tmp.bin.part.meta.tmp",
            "Case.PDF",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let listing = Listing::read(dir.path()).unwrap();
        for name in [
            "whole.bin",
            "cut.bin",
            "meta.bin",
            "tmp.bin",
            "case.pdf",
            "CASE.pdf",
        ] {
            assert!(listing.may_exist(name), "{name}");
        }
        for name in ["absent.bin", "whole", "cut.bin.part_", "whole.bin.parts"] {
            assert!(!listing.may_exist(name), "{name}");
        }
    }

    #[test]
    fn a_failed_attempt_makes_a_name_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let listing = Listing::read(dir.path()).unwrap();
        assert!(!listing.may_exist("a.bin"));
        listing.attempt_failed("a.bin");
        assert!(listing.may_exist("a.bin"));
        assert!(!listing.may_exist("b.bin"));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = Listing::read(&missing).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }
}
