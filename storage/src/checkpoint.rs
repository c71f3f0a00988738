//! The checkpoint header and the rollback journal: how the tables move from one durable state to
//! the next without ever being left half-written.
//!
//! A checkpoint (1) writes the pre-images of every byte range it will overwrite into `journal` and
//! fsyncs it, (2) writes the tables in place and msyncs them, (3) writes a new header naming the
//! checkpoint, (4) deletes the journal. The header lives in two 4 KiB slots written alternately,
//! each checksummed, so a torn header write leaves the other slot intact.
//!
//! On open: a complete journal whose generation equals the header's means step 2 may have been
//! cut short, so its pre-images are written back (restoring the previous checkpoint exactly); a
//! journal for an older generation (step 4 never ran) or an incomplete one (step 2 never began)
//! is deleted. The write-ahead log then replays everything after the header's sequence number.

use crate::{
    frame::{encode_frame, read_frame, FrameRead},
    mapped::{file_error, open_rw, remove_if_present, FileError},
};
use bytemuck::{Pod, Zeroable};
use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};
use xxhash_rust::xxh3::xxh3_64;

const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"STROBEST");
/// On-disk format version of the state directory.
pub(crate) const FORMAT_VERSION: u64 = 1;
const HEADER_SLOT_BYTES: u64 = 4096;
const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"SJNL");
const JOURNAL_BEGIN: u64 = u64::MAX;
const JOURNAL_END: u64 = u64::MAX - 1;
/// Largest pre-image frame read back.
const MAX_JOURNAL_FRAME: usize = 1 << 30;

/// What a checkpoint records: enough to reopen the tables exactly as they were.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Header {
    pub(crate) magic: u64,
    pub(crate) version: u64,
    /// Incremented by every checkpoint.
    pub(crate) generation: u64,
    /// Sequence number of the first mini-block NOT contained in this checkpoint.
    pub(crate) next_seq: u64,
    /// EVM block the checkpoint ends.
    pub(crate) block: u64,
    /// State root at the checkpoint.
    pub(crate) root: [u8; 32],
    pub(crate) accounts_log2: u32,
    pub(crate) slots_log2: u32,
    pub(crate) accounts_used: u64,
    pub(crate) accounts_count: u64,
    pub(crate) slots_used: u64,
    pub(crate) slots_count: u64,
    /// Bytes of `code.dat` in use.
    pub(crate) code_len: u64,
    pub(crate) check: u64,
}

impl Header {
    fn checksum(&self) -> u64 {
        let bytes = bytemuck::bytes_of(self);
        xxh3_64(&bytes[..bytes.len() - 8])
    }

    fn valid(&self) -> bool {
        self.magic == HEADER_MAGIC && self.check == self.checksum()
    }
}

/// The two-slot header file.
pub(crate) struct HeaderFile {
    file: File,
    path: PathBuf,
}

/// Why a header could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}: no intact header slot (both are damaged)")]
    Damaged(PathBuf),
    #[error("{path}: format version {found}, this build reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u64 },
}

impl HeaderFile {
    /// Opens the header file; `None` for the header when the file is new (no checkpoint yet).
    pub(crate) fn open(path: &Path) -> Result<(Self, Option<Header>), HeaderError> {
        let (file, len) = open_rw(path)?;
        let mut best: Option<Header> = None;
        let mut any_bytes = false;
        for slot in 0..2u64 {
            let mut buf = [0u8; std::mem::size_of::<Header>()];
            if len < slot * HEADER_SLOT_BYTES + buf.len() as u64 {
                continue;
            }
            file.read_exact_at(&mut buf, slot * HEADER_SLOT_BYTES)
                .map_err(file_error("read", path))?;
            any_bytes |= buf.iter().any(|b| *b != 0);
            let h: Header = bytemuck::pod_read_unaligned(&buf);
            if h.valid() && best.is_none_or(|b| h.generation > b.generation) {
                best = Some(h);
            }
        }
        if best.is_none() && any_bytes {
            return Err(HeaderError::Damaged(path.to_path_buf()));
        }
        if let Some(h) = best {
            if h.version != FORMAT_VERSION {
                return Err(HeaderError::Version { path: path.to_path_buf(), found: h.version });
            }
        }
        Ok((Self { file, path: path.to_path_buf() }, best))
    }

    /// Writes `header` (with its generation already set) durably into the slot of its generation.
    pub(crate) fn write(&self, header: &mut Header) -> Result<(), FileError> {
        header.magic = HEADER_MAGIC;
        header.version = FORMAT_VERSION;
        header.check = header.checksum();
        let slot = header.generation % 2;
        self.file
            .write_all_at(bytemuck::bytes_of(header), slot * HEADER_SLOT_BYTES)
            .map_err(file_error("write", &self.path))?;
        self.file.sync_data().map_err(file_error("fsync", &self.path))
    }
}

/// One byte range to restore on rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreImage {
    /// Which file (the store's own numbering).
    pub(crate) file: u8,
    pub(crate) offset: u64,
    pub(crate) bytes: Vec<u8>,
}

/// Writes the journal for a checkpoint of `generation` and makes it durable.
pub(crate) fn write_journal(
    path: &Path,
    generation: u64,
    pre_images: &[PreImage],
) -> Result<(), FileError> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, JOURNAL_MAGIC, JOURNAL_BEGIN, &generation.to_le_bytes());
    let mut payload = Vec::new();
    for p in pre_images {
        payload.clear();
        payload.extend_from_slice(&p.offset.to_le_bytes());
        payload.extend_from_slice(&p.bytes);
        encode_frame(&mut buf, JOURNAL_MAGIC, p.file as u64, &payload);
    }
    encode_frame(&mut buf, JOURNAL_MAGIC, JOURNAL_END, &(pre_images.len() as u64).to_le_bytes());
    let mut f = File::create(path).map_err(file_error("create", path))?;
    f.write_all(&buf).map_err(file_error("write", path))?;
    f.sync_all().map_err(file_error("fsync", path))?;
    sync_dir(path)
}

/// Reads a journal back: `Some((generation, pre-images))` when it is complete, `None` when it is
/// missing or was cut short (then the tables were never touched).
pub(crate) fn read_journal(path: &Path) -> Result<Option<(u64, Vec<PreImage>)>, FileError> {
    let buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error("read", path)(e)),
    };
    let mut at = 0;
    let mut generation = None;
    let mut images = Vec::new();
    loop {
        match read_frame(&buf, at, JOURNAL_MAGIC, MAX_JOURNAL_FRAME) {
            FrameRead::Frame { key, payload, next } => {
                at = next;
                match key {
                    JOURNAL_BEGIN if payload.len() == 8 && generation.is_none() => {
                        generation = Some(u64::from_le_bytes(payload.try_into().expect("8")));
                    }
                    JOURNAL_END => {
                        let complete = payload.len() == 8
                            && u64::from_le_bytes(payload.try_into().expect("8"))
                                == images.len() as u64;
                        return Ok(match (generation, complete) {
                            (Some(g), true) => Some((g, images)),
                            _ => None,
                        });
                    }
                    file if file < 256 && payload.len() >= 8 && generation.is_some() => {
                        images.push(PreImage {
                            file: file as u8,
                            offset: u64::from_le_bytes(payload[..8].try_into().expect("8")),
                            bytes: payload[8..].to_vec(),
                        });
                    }
                    _ => return Ok(None),
                }
            }
            FrameRead::End | FrameRead::Truncated | FrameRead::Corrupt => return Ok(None),
        }
    }
}

/// Removes the journal (the checkpoint is complete, or the journal is void).
pub(crate) fn remove_journal(path: &Path) -> Result<(), FileError> {
    if remove_if_present(path)? {
        sync_dir(path)?;
    }
    Ok(())
}

/// Makes the creation or removal of `path` durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(file_error("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_slots_alternate_and_survive_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("HEADER");
        let (hf, h) = HeaderFile::open(&path).unwrap();
        assert!(h.is_none());
        let mut h1 = Header { generation: 1, next_seq: 10, ..Default::default() };
        hf.write(&mut h1).unwrap();
        let mut h2 = Header { generation: 2, next_seq: 20, ..Default::default() };
        hf.write(&mut h2).unwrap();
        assert_eq!(HeaderFile::open(&path).unwrap().1.unwrap().next_seq, 20);
        // Tear the newest slot: the older one is used.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 16], 8).unwrap();
        assert_eq!(HeaderFile::open(&path).unwrap().1.unwrap().next_seq, 10);
        // Tear both: refuse to open rather than guess.
        f.write_all_at(&[0xff; 16], HEADER_SLOT_BYTES + 8).unwrap();
        assert!(matches!(HeaderFile::open(&path), Err(HeaderError::Damaged(_))));
    }

    #[test]
    fn journal_round_trip_and_every_truncation_is_void() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let images = vec![
            PreImage { file: 1, offset: 7, bytes: vec![1, 2, 3] },
            PreImage { file: 4, offset: 0, bytes: vec![] },
        ];
        write_journal(&path, 9, &images).unwrap();
        assert_eq!(read_journal(&path).unwrap(), Some((9, images)));
        let full = std::fs::read(&path).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(read_journal(&path).unwrap(), None, "cut at {cut}");
        }
        remove_journal(&path).unwrap();
        assert_eq!(read_journal(&path).unwrap(), None);
    }
}
