//! A file mapped into memory read-write, grown on demand.
//!
//! This is the only place the store touches `mmap`. Writes through the map are not durable until
//! [`MappedFile::flush`]; durability comes from the write-ahead log and the checkpoint protocol
//! (see `persistent.rs`), never from the kernel's own write-back.

use memmap2::{MmapMut, MmapOptions};
use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
};

/// Smallest mapped length: mapping an empty file is an error on Linux.
const MIN_MAP_BYTES: u64 = 4096;

/// An I/O failure on a named file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FileError {
    /// What was being done.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

pub(crate) fn file_error(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError { op, path, source }
}

/// Opens `path` for reading and writing, creating it empty if missing, and returns its length.
pub(crate) fn open_rw(path: &Path) -> Result<(File, u64), FileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(file_error("open", path))?;
    let len = file.metadata().map_err(file_error("stat", path))?.len();
    Ok((file, len))
}

/// Removes `path`; `false` when there was nothing to remove.
pub(crate) fn remove_if_present(path: &Path) -> Result<bool, FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(file_error("remove", path)(e)),
    }
}

/// A read-write memory map over a whole file.
pub(crate) struct MappedFile {
    file: File,
    map: MmapMut,
    path: PathBuf,
}

impl MappedFile {
    /// Opens (creating) `path` and maps it, growing it to at least `min_len` bytes.
    pub(crate) fn open(path: &Path, min_len: u64) -> Result<Self, FileError> {
        let (file, len) = open_rw(path)?;
        let want = len.max(min_len).max(MIN_MAP_BYTES);
        if want > len {
            file.set_len(want).map_err(file_error("grow", path))?;
        }
        reserve(&file, want, path)?;
        let map = map(&file, path)?;
        Ok(Self { file, map, path: path.to_path_buf() })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The mapped bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Current file length.
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Grows the file (doubling, so growth is amortised) until it holds `len` bytes, and maps
    /// the new length. Existing contents are kept; new bytes read as zero.
    pub(crate) fn ensure_len(&mut self, len: u64) -> Result<(), FileError> {
        if len <= self.len() {
            return Ok(());
        }
        let mut new_len = self.len().max(MIN_MAP_BYTES);
        while new_len < len {
            new_len *= 2;
        }
        self.file.set_len(new_len).map_err(file_error("grow", &self.path))?;
        reserve(&self.file, new_len, &self.path)?;
        self.map = map(&self.file, &self.path)?;
        Ok(())
    }

    /// Faults in the pages of `offset..offset + len` (clipped to the file) as if written, without
    /// changing a byte (`MADV_POPULATE_WRITE`), so that writes there later take no page faults:
    /// the checkpoint does this before it takes the tables' write lock, which readers wait for.
    /// Only a hint; returns whether the kernel did it (Linux 5.14 and later).
    pub(crate) fn prefault_write(&self, offset: u64, len: usize) -> bool {
        let end = (offset + len as u64).min(self.len());
        if offset >= end {
            return true;
        }
        #[cfg(target_os = "linux")]
        {
            let range = (end - offset) as usize;
            self.map.advise_range(memmap2::Advice::PopulateWrite, offset as usize, range).is_ok()
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Writes dirty pages back (msync) and the file's metadata (fsync).
    pub(crate) fn flush(&self) -> Result<(), FileError> {
        self.map.flush().map_err(file_error("msync", &self.path))?;
        self.file.sync_all().map_err(file_error("fsync", &self.path))
    }
}

/// Allocates disk blocks for the whole file now. A write through the map into a hole of a sparse
/// file allocates on write-back, and when the disk is full that surfaces as SIGBUS in the middle of
/// a checkpoint; allocating here turns it into an ordinary ENOSPC error before anything is written.
fn reserve(file: &File, len: u64, path: &Path) -> Result<(), FileError> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is open for as
    // long as `file` is borrowed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: the kernel's write-back remains the only check.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(file_error("allocate", path)(std::io::Error::from_raw_os_error(errno))),
    }
}

fn map(file: &File, path: &Path) -> Result<MmapMut, FileError> {
    // SAFETY: the mapped file lives in a datadir that this process holds an exclusive lock on
    // (`LOCK`, taken before any file is opened), so no other process truncates or writes it
    // while it is mapped; this process only changes its length through `ensure_len`, which takes
    // `&mut self` and replaces the map, so no reference into the old map survives. (Files are
    // deleted only by a store that has dropped its maps: `PersistentStore::recreate` and a new
    // store's open, before any table is mapped.)
    unsafe { MmapOptions::new().map_mut(file) }.map_err(file_error("mmap", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_allocated_not_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = MappedFile::open(&path, 64 * 1024).unwrap();
        f.ensure_len(256 * 1024).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // st_blocks counts 512-byte units actually allocated.
        assert!(meta.blocks() * 512 >= meta.len(), "{} of {}", meta.blocks() * 512, meta.len());
    }

    #[test]
    fn grows_keeps_contents_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = MappedFile::open(&path, 10).unwrap();
        assert_eq!(f.len(), MIN_MAP_BYTES);
        f.bytes_mut()[..3].copy_from_slice(b"abc");
        f.ensure_len(3 * MIN_MAP_BYTES).unwrap();
        assert_eq!(f.len(), 4 * MIN_MAP_BYTES);
        f.bytes_mut()[4 * MIN_MAP_BYTES as usize - 1] = 7;
        assert_eq!(&f.bytes()[..3], b"abc");
        f.flush().unwrap();
        drop(f);
        let f = MappedFile::open(&path, 0).unwrap();
        assert_eq!(&f.bytes()[..3], b"abc");
        assert_eq!(f.bytes()[4 * MIN_MAP_BYTES as usize - 1], 7);
    }

    /// Minor page faults of the calling thread so far.
    fn minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one `rusage` into the buffer it is given, which is that size.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: initialised by the successful call above (and zeroed before).
        unsafe { usage.assume_init() }.ru_minflt
    }

    #[test]
    fn prefaulted_pages_take_writes_without_faults_and_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = MappedFile::open(&path, 4 << 20).unwrap();
        f.bytes_mut()[..4096].fill(7);
        f.flush().unwrap();
        drop(f);
        let mut f = MappedFile::open(&path, 0).unwrap();
        let pages = 128usize;
        let start = 64 * 4096u64;
        if !f.prefault_write(start, pages * 4096) {
            eprintln!("MADV_POPULATE_WRITE unsupported here: nothing to check");
            return;
        }
        assert!(f.prefault_write(f.len() - 10, 4096), "a range past the end is clipped");
        assert!(f.bytes()[..4096].iter().all(|b| *b == 7), "prefaulting changes no byte");
        let before = minor_faults();
        for p in 0..pages {
            f.bytes_mut()[start as usize + p * 4096] = 1;
        }
        let prefaulted = minor_faults() - before;
        let before = minor_faults();
        for p in 0..pages {
            f.bytes_mut()[start as usize + (pages + p) * 4096] = 1;
        }
        let cold = minor_faults() - before;
        assert!(prefaulted < 8 && cold >= pages as i64 / 2, "prefaulted {prefaulted}, cold {cold}");
    }
}
