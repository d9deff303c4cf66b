//! The digest of the finished part of the input (see
//! `Runner::verify_prefix`): the checkpoint's writer reads the input again
//! from where the recorded prefix ends to the position, off the hot path,
//! and records it with the next write, at most once a second and at the
//! last write.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::writer::{Inner, Io};
use crate::position::Prefix;

/// How often, at most, a write records the prefix (besides the last write).
pub(crate) const PREFIX_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// How far a write reads the input to extend the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Catch {
    /// At most [`PrefixReader::MAX_READ`] bytes, so that no write waits
    /// long: the writer thread's writes, a group's.
    Up,
    /// To the position: an explicit sync, the last write.
    All,
}

/// The input, read again from where the recorded prefix ends to where the
/// position is, before each write.
#[derive(Debug)]
pub(crate) struct PrefixReader {
    pub(crate) file: File,
    pub(crate) buf: Vec<u8>,
}

impl PrefixReader {
    /// Most bytes read by one write: a prefix that starts far behind (a
    /// checkpoint without one) catches up over several writes, and no write
    /// waits long for it.
    const MAX_READ: u64 = 16 << 20;

    /// A reader of the input `file`.
    pub(crate) fn new(file: File) -> PrefixReader {
        PrefixReader {
            file,
            buf: vec![0; 256 << 10],
        }
    }

    /// Extends `prefix` over the input towards `target`, by at most
    /// [`MAX_READ`](PrefixReader::MAX_READ) bytes. On an error (or an input
    /// that ends before `target`) `prefix` keeps what was read.
    fn extend(&mut self, prefix: &mut Prefix, target: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(prefix.offset))?;
        let stop = target.min(prefix.offset.saturating_add(Self::MAX_READ));
        while prefix.offset < stop {
            let left = stop - prefix.offset;
            let want =
                usize::try_from(left).map_or(self.buf.len(), |left| left.min(self.buf.len()));
            match self.file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => prefix.extend(&self.buf[..read]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Extends the prefix towards the position, reading the input from where
    /// the prefix ends (for a checkpoint that reads its input back). Called
    /// before a write takes the `io` lock, so that neither commits (the core
    /// is not locked meanwhile) nor syncs nor writes wait for the read; the
    /// write then records it ([`record_prefix`](Inner::record_prefix)). Best effort:
    /// an input that cannot be read there (cut or failing while the job
    /// runs) leaves the prefix where it got to and the write goes on, as the
    /// records must not wait on the input; a resume then finds what changed.
    pub(crate) fn digest_prefix(&self, catch: Catch) {
        let mut reader = self.prefix.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reader) = reader.as_mut() else {
            return;
        };
        while self.extend_prefix_once(reader) {
            self.prefix_grew.store(true, Ordering::Release);
            if catch == Catch::Up {
                break;
            }
        }
    }

    /// Takes the prefix the last [`digest_prefix`](Inner::digest_prefix)
    /// calls reached into the records of this write, when due.
    pub(super) fn record_prefix(&self, io: &mut Io, catch: Catch) {
        if self.prefix_grew.swap(false, Ordering::AcqRel) {
            io.prefix_unrecorded = true;
        }
        // A record at most every PREFIX_RECORD_INTERVAL, and at the last
        // write, rather than one beside every `pos`: with `EveryCommit`
        // that would double the bytes of every commit.
        let due = catch == Catch::All
            || io
                .prefix_recorded
                .is_none_or(|at| at.elapsed() >= PREFIX_RECORD_INTERVAL);
        if !(io.prefix_unrecorded && due) {
            return;
        }
        io.prefix_unrecorded = false;
        io.prefix_recorded = Some(Instant::now());
        let mut core = self.lock_core();
        core.pending.prefix = true;
        if io.file.is_some() && core.state.version < super::format::VERSION {
            // A file of a format before the prefix record is rewritten in
            // the current one, which an older linemark refuses instead of
            // misreading.
            io.needs_rewrite = true;
        }
    }

    /// One step of [`digest_prefix`](Inner::digest_prefix); returns whether
    /// the prefix grew.
    fn extend_prefix_once(&self, reader: &mut PrefixReader) -> bool {
        // Always from the prefix in the state, never from a copy of it: a
        // rebase (which clears it) then starts again from the first byte.
        let (base, target) = {
            let core = self.lock_core();
            let base = core.state.prefix.unwrap_or_default();
            let target = core.state.position.offset();
            if base.offset >= target {
                return false;
            }
            (base, target)
        };
        let mut prefix = base;
        // Whatever was read is kept, even short of the target.
        let _ = reader.extend(&mut prefix, target);
        if prefix == base {
            return false;
        }
        let mut core = self.lock_core();
        // Kept unless the state moved on under it (a rebase, a position
        // moved back) meanwhile.
        if core.state.prefix.unwrap_or_default() == base
            && core.state.position.offset() >= prefix.offset
        {
            core.state.prefix = Some(prefix);
            return true;
        }
        false
    }
}
