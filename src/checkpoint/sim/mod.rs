//! A simulated file system that can lose power at any step, in the style of
//! SQLite's crash tests, and the power-loss tests of the checkpoint run on it.
//!
//! # The model
//!
//! Every file (inode) has its current bytes, its durable bytes (as of its
//! last `sync_data` or `sync_all`) and the log of its writes and `set_len`s
//! since. Every directory has its current entries, its durable entries (as
//! of its last `sync_dir`) and the log of its changes since: a creation, a
//! removal or a rename is one change, so a rename is atomic. A file's sync
//! makes its bytes durable, not its name; a directory's sync makes its
//! names durable, not the files' bytes. Directories themselves always exist.
//!
//! Every call through the seam is a step. The power can be cut at a given
//! step: that call and every later one fail with "power cut"
//! ([`io::ErrorKind::Other`]). With [`AtCut::Applied`] the call at the cut
//! takes effect before failing (a write only its first bytes), as a call
//! does whose effect reached the disk while the machine died.
//!
//! After a power loss, [`SimFs::power_loss`] gives the next boot's disk:
//! each file has its durable bytes plus a random prefix of its log, whose
//! last write may be torn (only a prefix of its bytes kept); each directory
//! has its durable entries plus a random prefix of its log, in order (a
//! later rename never survives without an earlier one). Files and
//! directories lose their logs independently of each other, so a rename
//! can survive while the data of the renamed file does not.
//! [`SimFs::power_loss_dropping_unsynced`] keeps no log at all, and
//! [`SimFs::power_losses`] lists the images that keep one file's log torn
//! at each place its caller names (where the checkpoint's records end).
//!
//! A real disk can also persist later writes of a file without earlier ones
//! (pages written back out of order) or damage bytes in place; the model
//! leaves that out, as the checkpoint format only promises to recover from
//! a torn end.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::fs::{Fs, FsFile};

/// A small deterministic random number generator (SplitMix64), so that a
/// failing case is replayed from its seed without a new dependency.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`, for `n > 0` (the modulo bias does not matter
    /// here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// How many of `n` logged operations survive a power loss. Keeping none
    /// and keeping all are the likeliest cases of a real crash and the
    /// edges where bugs sit, so each gets a quarter of the draws.
    fn survivors(&mut self, n: usize) -> usize {
        match self.below(4) {
            0 => 0,
            1 => n,
            _ => self.below(n as u64 + 1) as usize,
        }
    }
}

/// What the call at the power cut does before it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AtCut {
    /// Nothing: the power went before the call reached the disk.
    Lost,
    /// It takes effect, a write only its first `write_keeps` bytes.
    Applied { write_keeps: usize },
}

type Ino = usize;

#[derive(Clone, Debug)]
enum FileOp {
    Write { at: usize, bytes: Vec<u8> },
    SetLen(usize),
}

impl FileOp {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            FileOp::Write { at, bytes } => {
                let end = at + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[*at..end].copy_from_slice(bytes);
            }
            FileOp::SetLen(len) => data.resize(*len, 0),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileOp>,
    /// Bytes whose writeback failed (an fdatasync returned EIO): the page
    /// cache marked them clean, so no later sync writes them (Linux).
    lost: Option<(usize, usize)>,
}

/// One atomic change of a directory: each name gets the inode, or goes.
#[derive(Clone, Debug)]
struct DirOp(Vec<(OsString, Option<Ino>)>);

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) {
        for (name, ino) in &self.0 {
            match ino {
                Some(ino) => entries.insert(name.clone(), *ino),
                None => entries.remove(name),
            };
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Dir {
    current: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    unsynced: Vec<DirOp>,
}

#[derive(Debug, Default)]
struct Disk {
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    steps: u64,
    cut: Option<(u64, AtCut)>,
    off: bool,
    /// The next `sync_data` waits on the first barrier, then the second,
    /// then fails with EIO, losing the unsynced writes.
    gate: Option<(Arc<std::sync::Barrier>, Arc<std::sync::Barrier>)>,
    /// Reads of open files fail with EIO while set (a disk that cannot
    /// read a file for a while).
    failing_reads: bool,
    temp_names: u64,
}

fn power_cut() -> io::Error {
    io::Error::other("power cut")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

/// The directory and the name of `path`, as the checkpoint's own
/// `parent_dir` splits it, so that both name a directory the same way.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((dir.to_path_buf(), name.to_os_string()))
}

impl Disk {
    /// Counts a call. `Ok(None)`: it runs as usual. `Ok(Some(keep))`: the
    /// power is cut at it, and it takes effect (a write only `keep` bytes)
    /// before failing. `Err`: the power is off.
    fn begin(&mut self) -> io::Result<Option<usize>> {
        self.steps += 1;
        if self.off {
            return Err(power_cut());
        }
        match self.cut {
            Some((step, at_cut)) if self.steps >= step => {
                self.off = true;
                match at_cut {
                    AtCut::Lost => Err(power_cut()),
                    AtCut::Applied { write_keeps } => Ok(Some(write_keeps)),
                }
            }
            _ => Ok(None),
        }
    }

    fn dir(&mut self, dir: &Path) -> &mut Dir {
        self.dirs.entry(dir.to_path_buf()).or_default()
    }

    fn lookup(&mut self, path: &Path) -> io::Result<Ino> {
        let (dir, name) = split(path)?;
        self.dir(&dir)
            .current
            .get(&name)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn change(&mut self, dir: &Path, op: DirOp) {
        let dir = self.dir(dir);
        op.apply(&mut dir.current);
        dir.unsynced.push(op);
    }

    fn log(&mut self, ino: Ino, op: FileOp) {
        let inode = &mut self.inodes[ino];
        op.apply(&mut inode.current);
        inode.unsynced.push(op);
    }

    fn sync_file(&mut self, ino: Ino) {
        let inode = &mut self.inodes[ino];
        inode.durable.clone_from(&inode.current);
        inode.unsynced.clear();
        if let Some((from, to)) = inode.lost {
            let to = to.min(inode.durable.len());
            for b in &mut inode.durable[from.min(to)..to] {
                *b = 0;
            }
        }
    }
}

/// The result of a call that took effect: an error if the power was cut at
/// it.
fn finish(cut: Option<usize>) -> io::Result<()> {
    match cut {
        Some(_) => Err(power_cut()),
        None => Ok(()),
    }
}

/// A simulated disk. Clones share it: the checkpoint gets one through
/// [`SimFs::handle`], the test keeps another to cut the power and to take
/// the image of the disk after the crash.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimFs {
    disk: Arc<Mutex<Disk>>,
}

impl SimFs {
    pub(crate) fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A test that panicked while holding the lock has failed already;
        // the disk itself is never left half changed.
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The seam's view of this disk, for `CheckpointBuilder::file_system`.
    pub(crate) fn handle(&self) -> Arc<dyn Fs> {
        Arc::new(self.clone())
    }

    /// Calls made through the seam so far.
    pub(crate) fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Cuts the power at the `step`th call (counting from 1 since the disk
    /// was made), or at the next call if that has passed.
    pub(crate) fn cut_power_at(&self, step: u64, at_cut: AtCut) {
        self.lock().cut = Some((step, at_cut));
    }

    pub(crate) fn fail_next_sync(
        &self,
        reached: Arc<std::sync::Barrier>,
        release: Arc<std::sync::Barrier>,
    ) {
        self.lock().gate = Some((reached, release));
    }

    /// Makes reads of open files fail with EIO, or read again.
    pub(crate) fn fail_reads(&self, failing: bool) {
        self.lock().failing_reads = failing;
    }

    pub(crate) fn is_off(&self) -> bool {
        self.lock().off
    }

    /// The current bytes of `path`, read outside the seam (no step).
    pub(crate) fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let mut disk = self.lock();
        let ino = disk.lookup(path).ok()?;
        Some(disk.inodes[ino].current.clone())
    }

    /// The current names in `dir`, read outside the seam (no step).
    pub(crate) fn names(&self, dir: &Path) -> Vec<OsString> {
        self.lock().dir(dir).current.keys().cloned().collect()
    }

    /// The disk as the next boot finds it when every unsynced change is
    /// lost: the least a correct program may rely on.
    pub(crate) fn power_loss_dropping_unsynced(&self) -> SimFs {
        let disk = self.lock();
        let files = vec![Kept::NOTHING; disk.inodes.len()];
        boot(&disk, &files, &vec![0; disk.dirs.len()])
    }

    /// The disk as the next boot finds it, with a random part of the
    /// unsynced changes kept (see the module docs).
    pub(crate) fn power_loss(&self, rng: &mut Rng) -> SimFs {
        let disk = self.lock();
        let files: Vec<Kept> = disk
            .inodes
            .iter()
            .map(|inode| {
                let ops = rng.survivors(inode.unsynced.len());
                let torn = match ops.checked_sub(1).map(|last| &inode.unsynced[last]) {
                    Some(FileOp::Write { bytes, .. }) if rng.one_in(2) => {
                        Some(rng.below(bytes.len() as u64 + 1) as usize)
                    }
                    _ => None,
                };
                Kept { ops, torn }
            })
            .collect();
        let dirs: Vec<usize> = disk
            .dirs
            .values()
            .map(|dir| rng.survivors(dir.unsynced.len()))
            .collect();
        boot(&disk, &files, &dirs)
    }

    /// Every disk the next boot can find when the unsynced changes of one
    /// file at most survive: each prefix of its log, the last write of it
    /// whole or torn at each offset `tears` gives for its bytes; with the
    /// directories at their durable entries, then at their current ones.
    ///
    /// Random images find a tear that matters only by luck when it must
    /// fall between two given bytes; a caller that knows where its format's
    /// records end tears there and finds it every time.
    pub(crate) fn power_losses(&self, tears: impl Fn(&[u8]) -> Vec<usize>) -> Vec<SimFs> {
        let disk = self.lock();
        let nothing = vec![Kept::NOTHING; disk.inodes.len()];
        let mut images = Vec::new();
        for dirs in [
            vec![0; disk.dirs.len()],
            disk.dirs.values().map(|dir| dir.unsynced.len()).collect(),
        ] {
            images.push(boot(&disk, &nothing, &dirs));
            for (ino, inode) in disk.inodes.iter().enumerate() {
                for (last, op) in inode.unsynced.iter().enumerate() {
                    let ops = last + 1;
                    let mut files = nothing.clone();
                    files[ino] = Kept { ops, torn: None };
                    images.push(boot(&disk, &files, &dirs));
                    if let FileOp::Write { bytes, .. } = op {
                        for torn in tears(bytes) {
                            if torn > 0 && torn < bytes.len() {
                                files[ino] = Kept {
                                    ops,
                                    torn: Some(torn),
                                };
                                images.push(boot(&disk, &files, &dirs));
                            }
                        }
                    }
                }
            }
        }
        images
    }
}

/// How much of a file's unsynced log survives a power loss: its first
/// `ops` operations, the last of them cut to `torn` bytes if it is a write.
#[derive(Clone, Copy, Debug)]
struct Kept {
    ops: usize,
    torn: Option<usize>,
}

impl Kept {
    const NOTHING: Kept = Kept { ops: 0, torn: None };
}

/// The disk after a power loss that kept `files[ino]` of each file's log
/// and the first `dirs[i]` changes of the `i`th directory's.
fn boot(disk: &Disk, files: &[Kept], dirs: &[usize]) -> SimFs {
    let inodes = disk
        .inodes
        .iter()
        .zip(files)
        .map(|(inode, kept)| {
            let mut data = inode.durable.clone();
            for (i, op) in inode.unsynced[..kept.ops].iter().enumerate() {
                match (op, kept.torn) {
                    (FileOp::Write { at, bytes }, Some(torn)) if i + 1 == kept.ops => {
                        FileOp::Write {
                            at: *at,
                            bytes: bytes[..torn.min(bytes.len())].to_vec(),
                        }
                        .apply(&mut data);
                    }
                    _ => op.apply(&mut data),
                }
            }
            Inode {
                current: data.clone(),
                durable: data,
                unsynced: Vec::new(),
                lost: None,
            }
        })
        .collect();
    let dirs = disk
        .dirs
        .iter()
        .zip(dirs)
        .map(|((path, dir), &kept)| {
            let mut entries = dir.durable.clone();
            for op in &dir.unsynced[..kept] {
                op.apply(&mut entries);
            }
            let dir = Dir {
                current: entries.clone(),
                durable: entries,
                unsynced: Vec::new(),
            };
            (path.clone(), dir)
        })
        .collect();
    SimFs {
        disk: Arc::new(Mutex::new(Disk {
            inodes,
            dirs,
            // Names of temporary files stay unique across boots.
            temp_names: disk.temp_names,
            ..Disk::default()
        })),
    }
}

impl Fs for SimFs {
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn Read + Send>>> {
        let mut disk = self.lock();
        // A read has no effect to keep: at the cut it just fails.
        finish(disk.begin()?)?;
        match disk.lookup(path) {
            Ok(ino) => Ok(Some(Box::new(Cursor::new(
                disk.inodes[ino].current.clone(),
            )))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let ino = disk.lookup(path)?;
        finish(cut)?;
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            ino,
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let (dir, name) = split(path)?;
        if disk.dir(&dir).current.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let ino = disk.inodes.len();
        disk.inodes.push(Inode::default());
        disk.change(&dir, DirOp(vec![(name, Some(ino))]));
        finish(cut)?;
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            ino,
        }))
    }

    fn create_temp(&self, dir: &Path, prefix: &OsStr) -> io::Result<(PathBuf, Box<dyn FsFile>)> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let name = loop {
            disk.temp_names += 1;
            let mut name = prefix.to_os_string();
            name.push(format!("{:06}.tmp", disk.temp_names));
            if !disk.dir(dir).current.contains_key(&name) {
                break name;
            }
        };
        let ino = disk.inodes.len();
        disk.inodes.push(Inode::default());
        disk.change(dir, DirOp(vec![(name.clone(), Some(ino))]));
        finish(cut)?;
        let file = SimFile {
            disk: Arc::clone(&self.disk),
            ino,
        };
        Ok((dir.join(name), Box::new(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let ino = disk.lookup(from)?;
        let ((dir, from_name), (to_dir, to_name)) = (split(from)?, split(to)?);
        if dir != to_dir {
            // One directory's log cannot hold the move atomically, and the
            // checkpoint renames only within its directory.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated file system renames within a directory only",
            ));
        }
        if from_name != to_name {
            disk.change(&dir, DirOp(vec![(from_name, None), (to_name, Some(ino))]));
        }
        finish(cut)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        disk.lookup(path)?;
        let (dir, name) = split(path)?;
        disk.change(&dir, DirOp(vec![(name, None)]));
        finish(cut)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let dir = disk.dir(dir);
        dir.durable.clone_from(&dir.current);
        dir.unsynced.clear();
        finish(cut)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut disk = self.lock();
        finish(disk.begin()?)?;
        Ok(disk.dir(dir).current.keys().cloned().collect())
    }
}

/// An open file of a [`SimFs`]; it keeps naming the same inode across
/// renames, as a file descriptor does.
#[derive(Debug)]
struct SimFile {
    disk: Arc<Mutex<Disk>>,
    ino: Ino,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FsFile for SimFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let kept = &bytes[..cut.unwrap_or(bytes.len()).min(bytes.len())];
        if !kept.is_empty() {
            // Opened for appending: every write goes to the end.
            let at = disk.inodes[self.ino].current.len();
            disk.log(
                self.ino,
                FileOp::Write {
                    at,
                    bytes: kept.to_vec(),
                },
            );
        }
        finish(cut)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        disk.log(self.ino, FileOp::SetLen(len));
        finish(cut)
    }

    // A file's length is part of its data here: `fdatasync` makes it
    // durable too, since the data cannot be read back without it.
    fn sync_data(&mut self) -> io::Result<()> {
        let gate = self.lock().gate.take();
        if let Some((reached, release)) = gate {
            reached.wait();
            release.wait();
            let mut disk = self.lock();
            let inode = &mut disk.inodes[self.ino];
            inode.lost = Some((inode.durable.len(), inode.current.len()));
            inode.unsynced.clear();
            return Err(io::Error::other("EIO (writeback failed)"));
        }
        let mut disk = self.lock();
        let cut = disk.begin()?;
        disk.sync_file(self.ino);
        finish(cut)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        let mut disk = self.lock();
        let cut = disk.begin()?;
        disk.sync_file(self.ino);
        finish(cut)
    }

    // A second descriptor: no I/O, so not a step.
    fn try_clone(&self) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            ino: self.ino,
        }))
    }

    // Reads have no effect to keep: at the cut they just fail.
    fn len(&self) -> io::Result<u64> {
        let mut disk = self.lock();
        finish(disk.begin()?)?;
        Ok(disk.inodes[self.ino].current.len() as u64)
    }

    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut disk = self.lock();
        finish(disk.begin()?)?;
        if disk.failing_reads {
            return Err(io::Error::other("EIO (read failed)"));
        }
        let data = &disk.inodes[self.ino].current;
        let start = usize::try_from(offset).map_or(data.len(), |start| start.min(data.len()));
        let end = usize::try_from(offset.saturating_add(len))
            .map_or(data.len(), |end| end.min(data.len()));
        Ok(data[start..end].to_vec())
    }
}

mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/sim")
    }

    /// Creates `name` holding `bytes`, durably (data and name).
    fn create_synced(fs: &SimFs, name: &str, bytes: &[u8]) -> Box<dyn FsFile> {
        let (temp, mut file) = fs.create_temp(&dir(), OsStr::new(".t.")).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
        fs.rename(&temp, &dir().join(name)).unwrap();
        fs.sync_dir(&dir()).unwrap();
        file
    }

    fn read(fs: &SimFs, name: &str) -> Option<Vec<u8>> {
        fs.contents(&dir().join(name))
    }

    #[test]
    fn an_unsynced_append_is_lost_and_a_synced_one_kept() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"head ");
        file.write_all(b"synced ").unwrap();
        file.sync_data().unwrap();
        file.write_all(b"unsynced").unwrap();
        assert_eq!(read(&fs, "f").unwrap(), b"head synced unsynced");
        let after = fs.power_loss_dropping_unsynced();
        assert_eq!(read(&after, "f").unwrap(), b"head synced ");
        assert_eq!(after.names(&dir()), vec![OsString::from("f")]);
    }

    #[test]
    fn a_rename_without_a_directory_sync_is_undone() {
        let fs = SimFs::new();
        create_synced(&fs, "f", b"old");
        let (temp, mut file) = fs.create_temp(&dir(), OsStr::new(".t.")).unwrap();
        file.write_all(b"new").unwrap();
        file.sync_all().unwrap();
        fs.rename(&temp, &dir().join("f")).unwrap();
        assert_eq!(read(&fs, "f").unwrap(), b"new");
        // Neither the temporary file's creation nor the rename was synced.
        let after = fs.power_loss_dropping_unsynced();
        assert_eq!(read(&after, "f").unwrap(), b"old");
        assert_eq!(after.names(&dir()), vec![OsString::from("f")]);
        fs.sync_dir(&dir()).unwrap();
        assert_eq!(
            read(&fs.power_loss_dropping_unsynced(), "f").unwrap(),
            b"new"
        );
    }

    #[test]
    fn a_removal_or_creation_without_a_directory_sync_is_undone() {
        let fs = SimFs::new();
        create_synced(&fs, "f", b"kept");
        fs.remove(&dir().join("f")).unwrap();
        let (temp, mut file) = fs.create_temp(&dir(), OsStr::new(".t.")).unwrap();
        file.write_all(b"data").unwrap();
        file.sync_data().unwrap();
        assert_eq!(fs.names(&dir()), vec![temp.file_name().unwrap()]);
        let after = fs.power_loss_dropping_unsynced();
        assert_eq!(after.names(&dir()), vec![OsString::from("f")]);
        assert_eq!(read(&after, "f").unwrap(), b"kept");
    }

    #[test]
    fn a_rename_can_survive_without_the_data_of_the_renamed_file() {
        // The rename can reach the disk before the data of the renamed file
        // when the file was not synced first: the case `sync_all` before
        // the rename of an atomic rewrite exists for.
        let fs = SimFs::new();
        create_synced(&fs, "f", b"old");
        let (temp, mut file) = fs.create_temp(&dir(), OsStr::new(".t.")).unwrap();
        file.write_all(b"new").unwrap();
        fs.rename(&temp, &dir().join("f")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let after = fs.power_loss(&mut Rng::new(seed));
            seen.insert(read(&after, "f").unwrap());
        }
        // "n" and "ne" are torn writes.
        let expected: std::collections::BTreeSet<Vec<u8>> = [&b"old"[..], b"", b"n", b"ne", b"new"]
            .iter()
            .map(|b| b.to_vec())
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_its_bytes() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"durable|");
        file.write_all(b"one|").unwrap();
        file.write_all(b"two|").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..500 {
            let after = fs.power_loss(&mut Rng::new(seed));
            let data = read(&after, "f").unwrap();
            assert!(data.starts_with(b"durable|"), "seed {seed}: {data:?}");
            assert!(
                b"durable|one|two|".starts_with(&data),
                "seed {seed}: {data:?}"
            );
            seen.insert(data.len());
        }
        // Every length from nothing kept to all kept, torn ones included.
        assert_eq!(seen, (8..=16).collect());
    }

    #[test]
    fn random_power_loss_keeps_directory_changes_in_order() {
        let fs = SimFs::new();
        let (a, _) = fs.create_temp(&dir(), OsStr::new("a.")).unwrap();
        fs.rename(&a, &dir().join("b")).unwrap();
        fs.rename(&dir().join("b"), &dir().join("c")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let names = fs.power_loss(&mut Rng::new(seed)).names(&dir());
            seen.insert(names);
        }
        let a_name = a.file_name().unwrap().to_os_string();
        let expected = [vec![], vec![a_name], vec!["b".into()], vec!["c".into()]];
        assert_eq!(seen, expected.into_iter().collect());
    }

    #[test]
    fn the_enumerated_power_losses_tear_where_asked() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"a|");
        file.write_all(b"bb|cc|").unwrap();
        file.write_all(b"dd|").unwrap();
        let (temp, _) = fs.create_temp(&dir(), OsStr::new(".t.")).unwrap();
        let bars = |bytes: &[u8]| -> Vec<usize> {
            (0..bytes.len())
                .filter(|&i| bytes[i] == b'|')
                .map(|i| i + 1)
                .collect()
        };
        let images = fs.power_losses(bars);
        let seen: Vec<(Vec<u8>, usize)> = images
            .iter()
            .map(|image| (read(image, "f").unwrap(), image.names(&dir()).len()))
            .collect();
        let mut expected = Vec::new();
        for names in [1, 2] {
            // Nothing kept, the first write whole, then torn at its first
            // bar, the second write whole.
            for data in ["a|", "a|bb|cc|", "a|bb|", "a|bb|cc|dd|"] {
                expected.push((data.as_bytes().to_vec(), names));
            }
        }
        assert_eq!(
            seen, expected,
            "the temporary file {temp:?} is the second name"
        );
    }

    #[test]
    fn a_truncation_is_logged_like_a_write() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"valid|torn");
        file.set_len(6).unwrap();
        file.write_all(b"next").unwrap();
        assert_eq!(read(&fs, "f").unwrap(), b"valid|next");
        assert_eq!(
            read(&fs.power_loss_dropping_unsynced(), "f").unwrap(),
            b"valid|torn"
        );
        file.sync_data().unwrap();
        assert_eq!(
            read(&fs.power_loss_dropping_unsynced(), "f").unwrap(),
            b"valid|next"
        );
    }

    #[test]
    fn every_call_from_the_cut_on_fails() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"a");
        let steps = fs.steps();
        assert_eq!(steps, 5);
        fs.cut_power_at(steps + 2, AtCut::Lost);
        file.write_all(b"b").unwrap();
        assert!(!fs.is_off());
        let err = file.sync_data().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(err.to_string(), "power cut");
        assert!(fs.is_off());
        assert_eq!(file.write_all(b"c").unwrap_err().to_string(), "power cut");
        assert!(fs.open_read(&dir().join("f")).is_err());
        assert!(fs.list_dir(&dir()).is_err());
        assert!(fs.sync_dir(&dir()).is_err());
        // Nothing failed at or after the cut took effect.
        assert_eq!(read(&fs, "f").unwrap(), b"ab");
        assert_eq!(read(&fs.power_loss_dropping_unsynced(), "f").unwrap(), b"a");
    }

    #[test]
    fn the_call_at_the_cut_can_take_effect_and_still_fail() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"a");
        fs.cut_power_at(fs.steps() + 1, AtCut::Applied { write_keeps: 2 });
        assert!(file.write_all(b"bcdef").is_err());
        assert!(file.write_all(b"g").is_err());
        assert_eq!(read(&fs, "f").unwrap(), b"abc");

        // A read at the cut has nothing to apply: it fails.
        let fs = SimFs::new();
        create_synced(&fs, "f", b"a");
        fs.cut_power_at(fs.steps() + 1, AtCut::Applied { write_keeps: 1 });
        assert!(fs.open_read(&dir().join("f")).is_err());
        assert!(fs.list_dir(&dir()).is_err());

        // A sync that reached the disk before the power went.
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"a");
        file.write_all(b"b").unwrap();
        fs.cut_power_at(fs.steps() + 1, AtCut::Applied { write_keeps: 0 });
        assert!(file.sync_data().is_err());
        assert_eq!(
            read(&fs.power_loss_dropping_unsynced(), "f").unwrap(),
            b"ab"
        );
    }

    #[test]
    fn open_read_sees_current_bytes_and_missing_files_are_none() {
        let fs = SimFs::new();
        let mut file = create_synced(&fs, "f", b"abc");
        file.write_all(b"d").unwrap();
        let mut text = String::new();
        fs.open_read(&dir().join("f"))
            .unwrap()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abcd");
        assert!(fs.open_read(&dir().join("g")).unwrap().is_none());
        assert_eq!(
            fs.open_append(&dir().join("g")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn the_rng_replays_from_its_seed() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..8).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}

mod failed_sync;
mod outputs;
mod power_loss;
mod unsettled;
