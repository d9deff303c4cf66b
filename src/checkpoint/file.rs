//! The files around a checkpoint: its resolved path, its lock, and the
//! names of its temporary files. Reading one back is in `format.rs`.

use std::ffi::OsString;
use std::fs;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fs::Fs;
use crate::error::{Error, Result};

pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// The file a checkpoint path names: symbolic links followed (a dangling
/// one to the file it will create) and the directory made canonical, so
/// that every spelling of one checkpoint takes the same lock, and writes
/// and renames happen next to the real file instead of replacing a link.
pub(crate) fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    let mut links = 0;
    while fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        links += 1;
        if links > 40 {
            return Err(io::Error::other("too many levels of symbolic links"));
        }
        // A relative target is relative to the link's directory; an
        // absolute one replaces the path.
        let target = fs::read_link(&path)?;
        path = parent_dir(&path).join(target);
    }
    let Some(name) = path.file_name().map(ToOwned::to_owned) else {
        return Ok(path);
    };
    Ok(fs::canonicalize(parent_dir(&path))?.join(name))
}

/// Takes the lock of the checkpoint file `path` (resolved), naming `given`
/// when another holder has it.
pub(crate) fn take_lock(path: &Path, given: &Path) -> Result<File> {
    let lock_path = lock_path(path);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|err| Error::io(Some(&lock_path), "opening the checkpoint's lock file", err))?;
    // A lock released a moment ago can still be held by a copy of its file
    // descriptor in a child process this process is starting (between fork
    // and exec). Such a copy goes away within milliseconds, so contention is
    // retried briefly before it is reported: still an answer at once, not a
    // wait for the other holder.
    let mut retries = LOCK_RETRIES;
    loop {
        match fs2::FileExt::try_lock_exclusive(&lock) {
            Ok(()) => return Ok(lock),
            Err(err) if err.kind() == fs2::lock_contended_error().kind() => {
                if retries == 0 {
                    return Err(Error::Locked {
                        path: given.to_path_buf(),
                    });
                }
                retries -= 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(err) => {
                return Err(Error::io(
                    Some(&lock_path),
                    "locking the checkpoint's lock file",
                    err,
                ));
            }
        }
    }
}

const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(5);

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `.NAME.linemark-tmp.`: the marker keeps the leftovers of checkpoint
/// `a` apart from those of a checkpoint named `a.b` in the same directory.
pub(crate) fn temp_prefix(path: &Path) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".linemark-tmp.");
    prefix
}

/// Removes temporary files left by a rewrite that crashed. Best effort: they
/// are never read, so one that cannot be removed does no harm.
pub(crate) fn remove_leftover_temp_files(fs: &dyn Fs, path: &Path) {
    let prefix = temp_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    let dir = parent_dir(path);
    let Ok(names) = fs.list_dir(dir) else {
        return;
    };
    for name in names {
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(prefix) && bytes.ends_with(b".tmp") {
            let _ = fs.remove(&dir.join(&name));
        }
    }
}
