//! Contract code: an append-only file of checksummed frames, indexed by code hash.
//!
//! Code is content-addressed and never deleted, so readers of any view can share one file and
//! one cache, and a checkpoint only ever appends. The index is rebuilt at open by scanning the
//! frame headers (O(code bytes); code is small next to the tables). Bytes past the length the last
//! checkpoint recorded belong to a checkpoint that never finished and are cut at open.

use crate::{
    checkpoint::sync_dir,
    frame::{encode_frame, read_frame, FrameRead},
    mapped::{file_error, open_rw, FileError},
};
use alloy_primitives::{Bytes, B256};
use revm::bytecode::Bytecode;
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

const CODE_MAGIC: u32 = u32::from_le_bytes(*b"SCOD");
/// Largest code frame read back (far above EIP-170's 24 KiB; genesis code is not size-limited).
const MAX_CODE_BYTES: usize = 16 << 20;

/// Why the code file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CodeFileError {
    /// An I/O error.
    #[error(transparent)]
    File(#[from] FileError),
    /// A frame inside the checkpointed length is damaged.
    #[error("{path}: damaged code record at byte {offset}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
}

/// The code file and its index.
pub(crate) struct CodeFile {
    file: File,
    path: PathBuf,
    index: HashMap<B256, (u64, u32)>,
    len: u64,
    cache: Mutex<HashMap<B256, Bytecode>>,
}

impl CodeFile {
    /// Opens `path`, trusting the first `len` bytes (the checkpoint's) and cutting the rest.
    pub(crate) fn open(path: &Path, len: u64) -> Result<Self, CodeFileError> {
        let (file, on_disk) = open_rw(path)?;
        if on_disk < len {
            return Err(CodeFileError::Corrupt { path: path.to_path_buf(), offset: on_disk });
        }
        if on_disk > len {
            file.set_len(len).map_err(file_error("truncate", path))?;
            file.sync_all().map_err(file_error("fsync", path))?;
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0).map_err(file_error("read", path))?;
        let mut index = HashMap::new();
        let mut at = 0;
        loop {
            match read_frame(&buf, at, CODE_MAGIC, MAX_CODE_BYTES + 32) {
                FrameRead::Frame { payload, next, .. } if payload.len() >= 32 => {
                    let hash = B256::from_slice(&payload[..32]);
                    index.insert(hash, ((at + 16 + 32) as u64, (payload.len() - 32) as u32));
                    at = next;
                }
                FrameRead::End => break,
                _ => {
                    return Err(CodeFileError::Corrupt {
                        path: path.to_path_buf(),
                        offset: at as u64,
                    })
                }
            }
        }
        Ok(Self { file, path: path.to_path_buf(), index, len, cache: Mutex::new(HashMap::new()) })
    }

    /// Bytes in use.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of distinct codes stored.
    pub(crate) fn count(&self) -> usize {
        self.index.len()
    }

    /// Whether `hash` is stored.
    pub(crate) fn contains(&self, hash: &B256) -> bool {
        self.index.contains_key(hash)
    }

    /// The code with `hash`.
    pub(crate) fn get(&self, hash: &B256) -> Result<Option<Bytecode>, FileError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(hash) {
            return Ok(Some(c.clone()));
        }
        let Some(&(offset, len)) = self.index.get(hash) else { return Ok(None) };
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(file_error("read", &self.path))?;
        let code = Bytecode::new_raw(Bytes::from(buf));
        cache.insert(*hash, code.clone());
        Ok(Some(code))
    }

    /// Appends `codes` (those not stored yet) and syncs them; returns the new length. The index
    /// learns them only through [`Self::publish`], after the checkpoint commits.
    pub(crate) fn append(
        &mut self,
        codes: &[(B256, Bytecode)],
    ) -> Result<Vec<(B256, u64, u32)>, FileError> {
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for (hash, code) in codes {
            if self.index.contains_key(hash) || added.iter().any(|(h, _, _)| h == hash) {
                continue;
            }
            let bytes = code.original_bytes();
            let mut payload = Vec::with_capacity(32 + bytes.len());
            payload.extend_from_slice(hash.as_slice());
            payload.extend_from_slice(&bytes);
            let at = self.len + buf.len() as u64;
            added.push((*hash, at + 16 + 32, bytes.len() as u32));
            encode_frame(&mut buf, CODE_MAGIC, 0, &payload);
        }
        if buf.is_empty() {
            return Ok(added);
        }
        self.file.write_all_at(&buf, self.len).map_err(file_error("write", &self.path))?;
        self.file.sync_data().map_err(file_error("fsync", &self.path))?;
        if self.len == 0 {
            sync_dir(&self.path)?;
        }
        self.len += buf.len() as u64;
        Ok(added)
    }

    /// Makes appended codes visible.
    pub(crate) fn publish(&mut self, added: Vec<(B256, u64, u32)>) {
        for (h, at, len) in added {
            self.index.insert(h, (at, len));
        }
    }
}
