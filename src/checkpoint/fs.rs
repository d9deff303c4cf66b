//! The file operations of a checkpoint, behind a seam that tests replace
//! with a simulated file system to cut the power at any step.
//!
//! Only the checkpoint's own file, its compaction's temporary file and its
//! directory go through here; the lock file does not (a power loss drops
//! every lock anyway). The seam costs a virtual call per write, never one
//! per commit.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where the checkpoint's bytes go.
pub(crate) trait Fs: Send + Sync + fmt::Debug {
    /// Opens `path` for reading, or `None` when it does not exist.
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn Read + Send>>>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates a new, empty file for appending; an error if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates a new, empty file in `dir` whose name starts with `prefix` and
    /// ends with `.tmp`.
    fn create_temp(&self, dir: &Path, prefix: &OsStr) -> io::Result<(PathBuf, Box<dyn FsFile>)>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names in a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
}

/// An open file of the checkpoint.
pub(crate) trait FsFile: Send + fmt::Debug {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data written so far is durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`: the data and the metadata are durable.
    fn sync_all(&mut self) -> io::Result<()>;
    /// A second handle on the same file, to sync it while the first one
    /// goes on appending.
    fn try_clone(&self) -> io::Result<Box<dyn FsFile>>;
    /// The file's length now.
    fn len(&self) -> io::Result<u64>;
    /// Up to `len` bytes from `offset` (fewer at the end of the file).
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// The operating system's file system.
#[derive(Debug, Default)]
pub(crate) struct RealFs;

impl Fs for RealFs {
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn Read + Send>>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(
            OpenOptions::new().read(true).append(true).open(path)?,
        ))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(
            OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(path)?,
        ))
    }

    fn create_temp(&self, dir: &Path, prefix: &OsStr) -> io::Result<(PathBuf, Box<dyn FsFile>)> {
        let (file, path) = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".tmp")
            .tempfile_in(dir)?
            .keep()
            .map_err(|err| err.error)?;
        Ok((path, Box::new(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            // Directories cannot be opened for syncing here; a rename is as
            // durable as the platform makes it.
            let _ = dir;
            Ok(())
        }
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect()
    }
}

impl FsFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn try_clone(&self) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(File::try_clone(self)?))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        // Appends go to the end whatever the position: moving it is safe.
        self.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        Read::by_ref(self).take(len).read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}
