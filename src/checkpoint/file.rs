//! Reading a checkpoint file back (recovery of a torn tail, refusal of a
//! foreign or damaged one), its lock, and the names of its temporary files.

use std::ffi::OsString;
use std::fs;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fs::Fs;
use super::state::State;
use crate::error::{Error, Result};
use crate::record::{MAGIC, OLDEST_VERSION, Record, VERSION};

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

/// What opening found in the file.
pub(crate) struct Loaded {
    pub(crate) state: State,
    pub(crate) exists: bool,
    pub(crate) has_header: bool,
    pub(crate) file_len: u64,
    pub(crate) valid_len: u64,
}

pub(crate) fn load(fs: &dyn Fs, path: &Path) -> Result<Loaded> {
    let mut file = match fs.open_read(path) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Ok(Loaded {
                state: State::default(),
                exists: false,
                has_header: false,
                file_len: 0,
                valid_len: 0,
            });
        }
        Err(err) => return Err(Error::io(Some(path), "opening the checkpoint", err)),
    };
    let read_err = |err| Error::io(Some(path), "reading the checkpoint", err);
    // Check the start before reading a file that may be large and foreign.
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAGIC.len() as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    check_magic(path, &bytes)?;
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let (state, has_header, valid_len) = parse(path, &bytes)?;
    Ok(Loaded {
        state,
        exists: true,
        has_header,
        file_len: bytes.len() as u64,
        valid_len,
    })
}

/// Refuses a file that does not start like a checkpoint. A prefix of the
/// header with nothing after it is a torn header.
pub(crate) fn check_magic(path: &Path, start: &[u8]) -> Result<()> {
    let magic = format!("{MAGIC} ");
    let magic = magic.as_bytes();
    let len = start.len().min(magic.len());
    if start[..len] == magic[..len] {
        Ok(())
    } else {
        Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
        })
    }
}

/// Applies the valid records. Returns the state, whether a valid header was
/// found, and where the valid data ends.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(State, bool, u64)> {
    let mut state = State::default();
    let mut has_header = false;
    let mut valid_len = 0u64;
    let mut first_bad: Option<(u64, String)> = None;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some(len) = memchr::memchr(b'\n', &bytes[offset..]) else {
            first_bad.get_or_insert((offset as u64, "incomplete record".into()));
            break;
        };
        let corrupt = |at: usize, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            reason,
        };
        match Record::decode(&bytes[offset..offset + len]) {
            Ok(record) => {
                if let Some((at, reason)) = first_bad.take() {
                    return Err(corrupt(at as usize, reason));
                }
                match record {
                    Record::Header { version } if offset == 0 => {
                        if !(OLDEST_VERSION..=VERSION).contains(&version) {
                            return Err(Error::UnsupportedVersion {
                                path: path.to_path_buf(),
                                version,
                                supported: VERSION,
                            });
                        }
                        state.version = version;
                        has_header = true;
                    }
                    Record::Header { .. } => {
                        return Err(corrupt(offset, "a header in the middle of the file".into()));
                    }
                    _ if !has_header => {
                        return Err(corrupt(offset, "a record before the header".into()));
                    }
                    record => state.apply(record),
                }
                valid_len = (offset + len + 1) as u64;
            }
            Err(reason) => {
                let record = &bytes[offset..offset + len];
                if Record::crc_matches(record) {
                    // Whole and intact, yet impossible: not the torn end of
                    // a write but a file that cannot be trusted.
                    return Err(corrupt(offset, reason));
                }
                first_bad.get_or_insert((offset as u64, reason));
            }
        }
        offset += len + 1;
    }
    Ok((state, has_header, valid_len))
}
