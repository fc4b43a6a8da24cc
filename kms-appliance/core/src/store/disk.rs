//! The KMS store on a raw block device: the VM's data disk, with no filesystem.
//!
//! Why raw: a filesystem on a disk the host controls is a large parser (the kernel's ext4) fed
//! with hostile input, and the appliance has no `mkfs` anyway. redb only needs a byte range with
//! a length, so this module gives it one ([`redb::StorageBackend`]); everything redb writes is
//! then checked record by record by the [store](super) as on any other storage. redb ships no
//! block-device backend, hence this small one.
//!
//! **Layout:** the first [`HEADER_LEN`] bytes are a header, the rest is the database:
//!
//! | bytes | field |
//! |---|---|
//! | 0..16 | magic [`MAGIC`] |
//! | 16 | status: 1 creating, 2 ready |
//! | 17..24 | zero |
//! | 24..32 | the database's length, u64 little-endian |
//! | 32..64 | SHA-256 of bytes 0..32 |
//!
//! An all-zero header is a blank disk. A store is *ready* only after its first commit is
//! durable; a header still *creating* was left by a crash during creation and, like a blank
//! disk, means "no store here" (the same rule as the staging file of a file store). Any other
//! header is refused, never reinitialised: nothing stored is lost to a misread.
//!
//! **Trusts:** the kernel's block layer to write what it is given and `fdatasync` to flush it
//! (QEMU turns a flush into `fsync` of the image on the host). Not the disk's content: a header
//! or length the host rewrote makes redb fail to open, or the store's checks refuse it.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// The header's size: one 4 KiB block, so the database starts block-aligned.
pub const HEADER_LEN: u64 = 4096;
/// The header's magic.
pub const MAGIC: &[u8; 16] = b"COFFER-KMS-DISK1";

const STATUS_CREATING: u8 = 1;
const STATUS_READY: u8 = 2;
/// Zeroes are written in chunks of this size when the database grows.
const ZERO_CHUNK: usize = 1 << 20;

/// What the header says is on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No store: a blank disk, or one whose creation never completed.
    Empty,
    /// A store whose first commit was durable.
    Ready,
}

/// Why a data disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The device could not be opened, locked, read or written.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The device.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The header is neither blank nor a valid header.
    #[error("{path}: not a Coffer KMS data disk or a damaged one: {reason}; refusing to use or reinitialise it")]
    Header {
        /// The device.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug)]
struct Disk {
    path: PathBuf,
    file: Flock<File>,
    /// The device's size minus the header.
    capacity: u64,
    /// The database's length and the header's status, written together.
    state: Mutex<(u64, u8)>,
}

/// A data disk, locked for this process. Clone it to keep a handle after giving one to redb.
#[derive(Debug, Clone)]
pub struct DiskBackend(Arc<Disk>);

fn header(status: u8, len: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..16].copy_from_slice(MAGIC);
    h[16] = status;
    h[24..32].copy_from_slice(&len.to_le_bytes());
    let sum = Sha256::digest(&h[..32]);
    h[32..].copy_from_slice(&sum);
    h
}

impl DiskBackend {
    /// Opens and locks the device at `path` (exclusively: a second opener fails) and reads its
    /// header.
    pub fn open(path: &Path) -> Result<(Self, Status), DiskError> {
        let io = |op| {
            let path = path.to_owned();
            move |source| DiskError::Io { path, op, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("opening"))?;
        // A block device's metadata length is 0; its end is its size.
        let size = file.seek(SeekFrom::End(0)).map_err(io("measuring"))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io("locking (is another KMS using it?)")(errno.into()))?;
        let capacity = size
            .checked_sub(HEADER_LEN)
            .ok_or_else(|| DiskError::Header {
                path: path.to_owned(),
                reason: format!("{size} bytes is smaller than the {HEADER_LEN}-byte header"),
            })?;
        let mut raw = [0u8; 64];
        file.read_exact_at(&mut raw, 0)
            .map_err(io("reading the header"))?;
        let bad = |reason: String| DiskError::Header {
            path: path.to_owned(),
            reason,
        };
        let (status, len) = if raw.iter().all(|&b| b == 0) {
            (Status::Empty, 0)
        } else {
            if &raw[..16] != MAGIC {
                return Err(bad(format!("magic {:02x?}", &raw[..16])));
            }
            let len = u64::from_le_bytes(raw[24..32].try_into().unwrap_or_default());
            if raw != header(raw[16], len) {
                return Err(bad("header checksum mismatch".into()));
            }
            match raw[16] {
                STATUS_CREATING => (Status::Empty, 0),
                STATUS_READY if len <= capacity => (Status::Ready, len),
                STATUS_READY => {
                    return Err(bad(format!(
                        "database length {len} exceeds the disk's {capacity} bytes"
                    )))
                }
                other => return Err(bad(format!("status {other}"))),
            }
        };
        let disk = Disk {
            path: path.to_owned(),
            file,
            capacity,
            state: Mutex::new((
                len,
                if status == Status::Ready {
                    STATUS_READY
                } else {
                    STATUS_CREATING
                },
            )),
        };
        Ok((Self(Arc::new(disk)), status))
    }

    /// Starts a new store: the header says *creating* with an empty database, durably.
    pub fn begin_create(&self) -> Result<(), DiskError> {
        self.write_state(0, STATUS_CREATING)
            .and_then(|()| self.0.file.sync_data())
            .map_err(|source| self.error("starting a new store", source))
    }

    /// Marks the store ready, durably: call after its first commit.
    pub fn mark_ready(&self) -> Result<(), DiskError> {
        let len = self.lock().0;
        self.write_state(len, STATUS_READY)
            .and_then(|()| self.0.file.sync_data())
            .map_err(|source| self.error("marking the store ready", source))
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    fn error(&self, op: &'static str, source: io::Error) -> DiskError {
        DiskError::Io {
            path: self.0.path.clone(),
            op,
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u8)> {
        // A poisoned lock only means another thread panicked mid-update; the header on disk is
        // what counts, and redb re-reads nothing from this cache.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self, len: u64, status: u8) -> io::Result<()> {
        let mut state = self.lock();
        self.0.file.write_all_at(&header(status, len), 0)?;
        *state = (len, status);
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<u64> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.lock().0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("access at {offset}+{len} beyond the database's end"),
                )
            })?;
        Ok(end)
    }
}

impl redb::StorageBackend for DiskBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().0)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check_range(offset, len as u64)?;
        let mut buf = vec![0u8; len];
        self.0.file.read_exact_at(&mut buf, HEADER_LEN + offset)?;
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.0.capacity {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{}: the KMS store needs {len} bytes, the data disk has {}",
                    self.0.path.display(),
                    self.0.capacity
                ),
            ));
        }
        let (old, status) = *self.lock();
        // Unlike a file, a device keeps old bytes past the end: zero what the database gains.
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = old;
        while at < len {
            let n = usize::try_from(len - at).map_or(ZERO_CHUNK, |n| n.min(ZERO_CHUNK));
            self.0.file.write_all_at(&zeros[..n], HEADER_LEN + at)?;
            at += n as u64;
        }
        self.write_state(len, status)
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.0.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.0.file.write_all_at(data, HEADER_LEN + offset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use redb::StorageBackend;

    fn device(size: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(size).unwrap();
        (dir, path)
    }

    #[test]
    fn a_blank_disk_is_empty_and_a_ready_one_keeps_its_length() {
        let (_dir, path) = device(1 << 20);
        let (disk, status) = DiskBackend::open(&path).unwrap();
        assert_eq!(status, Status::Empty);
        disk.begin_create().unwrap();
        disk.set_len(10_000).unwrap();
        disk.write(9_000, b"hello").unwrap();
        // Creation never completed: still empty.
        drop(disk);
        let (disk, status) = DiskBackend::open(&path).unwrap();
        assert_eq!(status, Status::Empty);
        disk.begin_create().unwrap();
        disk.set_len(10_000).unwrap();
        disk.write(9_000, b"hello").unwrap();
        disk.mark_ready().unwrap();
        drop(disk);
        let (disk, status) = DiskBackend::open(&path).unwrap();
        assert_eq!(status, Status::Ready);
        assert_eq!(disk.len().unwrap(), 10_000);
        assert_eq!(disk.read(9_000, 5).unwrap(), b"hello");
    }

    #[test]
    fn growth_is_zeroed_bounded_and_reads_stay_in_range() {
        let (_dir, path) = device(HEADER_LEN + 8192);
        std::fs::write(&path, vec![0xAAu8; (HEADER_LEN + 8192) as usize]).unwrap();
        // Garbage in the header: refused, not reinitialised.
        let err = DiskBackend::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a Coffer KMS data disk"), "{err}");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 64], 0).unwrap();
        let (disk, _) = DiskBackend::open(&path).unwrap();
        disk.set_len(4096).unwrap();
        assert_eq!(disk.read(0, 4096).unwrap(), vec![0u8; 4096]);
        let err = disk.set_len(8193).unwrap_err();
        assert!(err.to_string().contains("needs 8193 bytes"), "{err}");
        assert!(disk.read(4000, 200).is_err());
        assert!(disk.write(u64::MAX, b"x").is_err());
    }

    #[test]
    fn a_second_opener_is_refused_and_a_tampered_header_too() {
        let (_dir, path) = device(1 << 16);
        let (disk, _) = DiskBackend::open(&path).unwrap();
        let err = DiskBackend::open(&path).unwrap_err().to_string();
        assert!(err.contains("another KMS"), "{err}");
        disk.begin_create().unwrap();
        disk.mark_ready().unwrap();
        drop(disk);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 24).unwrap();
        let err = DiskBackend::open(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
