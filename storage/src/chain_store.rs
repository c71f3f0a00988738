//! The chain store: the append-only, crash-safe history of sealed blocks, indexed by number, block
//! hash and transaction hash, so that RPC history survives restarts.
//!
//! The bytes of a block are opaque here: the engine encodes header, transactions and receipts and
//! hands them over with the block hash and the transaction hashes, which this store indexes.
//!
//! [`ChainStore`] documents the files, durability, recovery and known limits.

use crate::frame::{
    encode_frame, intact_frame_after, read_frame, FrameRead, FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
};
use alloy_primitives::B256;
use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic of block frames ("STBK" in little-endian bytes).
const BLOCK_MAGIC: u32 = 0x4b42_5453;
/// Block hash and transaction count, before the transaction hashes.
const RECORD_PREFIX_BYTES: usize = 32 + 4;
/// The largest frame payload the format can carry (frame lengths are stored as `u32`).
const MAX_PAYLOAD_BYTES: usize = u32::MAX as usize - FRAME_OVERHEAD_BYTES;
/// The index file's name.
const INDEX_FILE: &str = "blocks.idx";
/// Bytes per index entry.
const INDEX_ENTRY_BYTES: u64 = std::mem::size_of::<IndexEntry>() as u64;
/// Buffered segment bytes beyond which `append` writes them out (without syncing).
const FLUSH_BYTES: usize = 4 << 20;
/// How much of a segment the open-time scan reads at a time.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// How many index entries the open-time comparison reads at a time.
const INDEX_CHUNK_ENTRIES: usize = 1 << 16;

/// Tuning of a [`ChainStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStoreOptions {
    /// Size past which a new segment file is started (default 256 MiB). A segment holding a
    /// single block larger than this is allowed.
    pub segment_bytes: u64,
    /// Largest block record [`ChainStore::append`] accepts, counting the block hash, the
    /// transaction count and hashes and the caller's bytes (default 512 MiB; values above the
    /// format's limit of about 4 GiB are lowered to it). Blocks already stored are read whatever
    /// this is set to.
    pub max_block_bytes: usize,
}

impl Default for ChainStoreOptions {
    fn default() -> Self {
        Self { segment_bytes: 256 << 20, max_block_bytes: 512 << 20 }
    }
}

/// One sealed block, as handed to [`ChainStore::append`].
#[derive(Debug, Clone, Copy)]
pub struct BlockRecord<'a> {
    /// The block number; it must be the store's current [`len`](ChainStore::len).
    pub number: u64,
    /// The block hash.
    pub hash: B256,
    /// The hashes of the block's transactions, in block order.
    pub tx_hashes: &'a [B256],
    /// The encoded block (opaque to the store).
    pub bytes: &'a [u8],
}

/// Errors raised by a [`ChainStore`].
#[derive(Debug, thiserror::Error)]
pub enum ChainStoreError {
    /// A file operation failed; the store is poisoned.
    #[error("chain store: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The error the operating system returned.
        #[source]
        source: io::Error,
    },
    /// A file holds damage that is not a torn tail, or breaks the store's layout.
    #[error("chain store: {} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A block was appended out of order.
    #[error("chain store: expected block {expected}, got block {got}")]
    NotNext {
        /// The number the next block must have.
        expected: u64,
        /// The number it had.
        got: u64,
    },
    /// A block record is larger than [`ChainStoreOptions::max_block_bytes`].
    #[error("chain store: a block record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The record's size (block hash, transaction count and hashes, and bytes).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier I/O error left the files in an unknown state; reopen the store.
    #[error("chain store: poisoned by an earlier I/O error; reopen it")]
    Poisoned,
}

type Result<T, E = ChainStoreError> = std::result::Result<T, E>;

/// Where one block's frame lies: one entry of `blocks.idx` (fields stored little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
struct IndexEntry {
    offset: u64,
    len: u32,
    segment: u32,
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 16);

impl IndexEntry {
    fn new(segment: u32, offset: u64, len: u32) -> Self {
        Self { offset: offset.to_le(), len: len.to_le(), segment: segment.to_le() }
    }

    /// Offset of the frame in its segment.
    fn offset(&self) -> u64 {
        u64::from_le(self.offset)
    }

    /// Length of the whole frame.
    fn len(&self) -> u32 {
        u32::from_le(self.len)
    }

    /// Ordinal of the segment (0 for the first segment file).
    fn segment(&self) -> usize {
        u32::from_le(self.segment) as usize
    }
}

/// One segment file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Number of its first block (and of its name).
    first: u64,
    /// Its length, counting bytes still buffered.
    len: u64,
}

/// The append-only store of sealed blocks, indexed by number, block hash and transaction hash.
///
/// One writer appends; reads (`&self`) may run concurrently with each other.
///
/// # Files
///
/// - `blocks-{first:012}.seg`: segment files. Each block is one checksummed frame (magic, length,
///   key, payload, xxh3) whose key is the block number and whose payload is `block hash (32) | tx
///   count (u32 LE) | tx hashes (32 each) | the caller's bytes`, so every index can be rebuilt
///   from the segments alone, without decoding the caller's bytes. A block goes into a new
///   segment when the current segment holds blocks already and the block would take it past
///   [`ChainStoreOptions::segment_bytes`]; the new segment is named after its first block.
///   (`first` is a decimal block number padded to 12 digits.)
/// - `blocks.idx`: 16 bytes per block number (segment ordinal, offset, frame length), appended
///   alongside the segments. It is derived data: the segments are the truth.
///
/// # Durability
///
/// [`ChainStore::append`] buffers; [`ChainStore::sync`] writes the buffered frames and
/// `sync_data`s the segment, then the index. A segment is synced before the next one is created,
/// so only the last segment can ever end in a torn write. New files are made durable by syncing the
/// directory. Appends that were never synced may be lost when the store is dropped or the process
/// dies (large appends are written out early, so some of them may survive).
///
/// After an I/O error the store is *poisoned*: the failing call returns [`ChainStoreError::Io`]
/// and every later write returns [`ChainStoreError::Poisoned`] (what reached the disk is unknown,
/// and after a failed `fsync` the page cache cannot be trusted either); reopen the store to
/// recover. Reads keep working from what the store knew, and a failed read does not poison.
///
/// # Recovery at open
///
/// Every segment is scanned and every frame's checksum verified; the in-memory indexes are rebuilt
/// from the frames and `blocks.idx` is rewritten from its first entry that disagrees (it may be
/// missing, short, or point past the end of what survived). Block numbers must run contiguously
/// from 0 (genesis) across the segments.
///
/// A damaged frame (torn, or failing its checksum) in the last segment with no intact frame after
/// it is a torn tail: the segment is cut at the last intact frame and the number of bytes dropped
/// is reported by [`ChainStore::cut_bytes`]. Damage anywhere else is [`ChainStoreError::Corrupt`].
/// Intact frames *inside* the damaged frame's extent do not count, because a block's bytes are
/// attacker-controlled (transaction calldata) and can embed a forged frame: the extent is taken
/// from `blocks.idx` when it has an entry for that block at that offset, else from the damaged
/// frame's own header when its magic is intact.
///
/// # Known limits
///
/// - Opening costs O(history): all segments are read and checksummed, and the indexes live in
///   memory (16 bytes per block in a `Vec`, plus a hash-map entry per block and per transaction).
///   `blocks.idx` is kept so that a later version can open from it without the scan.
/// - A bit flip that enlarges the length field of a block in the last segment, while `blocks.idx`
///   is also missing that block, is taken for a torn tail and the blocks after it are cut.
/// - A torn write that lost a block's first page but kept a later page holding a forged frame is
///   reported as corruption rather than cut.
/// - Segments other than the last are opened for each read of one of their blocks.
/// - Block and transaction hashes are assumed unique; when one repeats, lookups return its first
///   occurrence.
pub struct ChainStore {
    dir: PathBuf,
    max_append_bytes: usize,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// Bytes of all segments but the last.
    sealed_bytes: u64,
    /// The last segment, open for writing.
    current: File,
    /// Bytes of the last segment written to the file.
    current_written: u64,
    /// Bytes of the last segment not written yet.
    pending: Vec<u8>,
    /// Whether the last segment has written bytes not synced.
    current_dirty: bool,
    index: File,
    index_written: u64,
    index_pending: Vec<u8>,
    index_dirty: bool,
    locations: Vec<IndexEntry>,
    by_hash: HashMap<B256, u64>,
    by_tx: HashMap<B256, (u64, u32)>,
    cut_bytes: u64,
    poisoned: bool,
    /// Reused buffer for encoding block records.
    scratch: Vec<u8>,
}

impl fmt::Debug for ChainStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainStore")
            .field("dir", &self.dir)
            .field("len", &self.len())
            .field("segments", &self.segments.len())
            .field("cut_bytes", &self.cut_bytes)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl ChainStore {
    /// Opens the store in `dir` (created when missing), recovering from a crash: every segment is
    /// scanned, a torn tail of the last one is cut, and `blocks.idx` is brought in line with the
    /// segments. See [`ChainStore`] for the rules and the cost.
    pub fn open(dir: &Path, options: ChainStoreOptions) -> Result<Self> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let mut dir_dirty = false;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
            let entry = entry.map_err(io_err("list directory", dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let index_path = dir.join(INDEX_FILE);
        if firsts.is_empty() && fs::metadata(&index_path).is_ok_and(|m| m.len() > 0) {
            // Segments are created before the index, and never all removed.
            return Err(corrupt(
                index_path,
                0,
                "the index lists blocks but no segment file exists",
            ));
        }
        if firsts.is_empty() {
            let path = segment_path(dir, 0);
            create_new(&path)?;
            firsts.push(0);
            dir_dirty = true;
        }
        if u32::try_from(firsts.len()).is_err() {
            return Err(corrupt(
                dir.to_path_buf(),
                0,
                "more segment files than the index can name",
            ));
        }

        dir_dirty |= !index_path.exists();
        let index = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&index_path)
            .map_err(io_err("open", &index_path))?;
        let index_len = index.metadata().map_err(io_err("stat", &index_path))?.len();

        let mut rebuild = Rebuild::default();
        let mut segments = Vec::with_capacity(firsts.len());
        let mut cut_bytes = 0;
        let mut current = None;
        for (ordinal, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            if first != rebuild.locations.len() as u64 {
                return Err(corrupt(path, 0, "segment does not begin where the previous one ends"));
            }
            let is_last = ordinal + 1 == firsts.len();
            let file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&path)
                .map_err(io_err("open", &path))?;
            let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
            let hint = IndexHint { file: &index, len: index_len, path: &index_path };
            let end = scan_segment(&file, file_len, &path, ordinal, is_last, hint, &mut rebuild)?;
            if end < file_len {
                file.set_len(end).map_err(io_err("cut torn tail of", &path))?;
                file.sync_data().map_err(io_err("sync", &path))?;
                cut_bytes = file_len - end;
            }
            segments.push(Segment { first, len: end });
            if is_last {
                current = Some(file);
            }
        }
        let current = current.expect("there is always a last segment");
        let current_written = segments.last().expect("there is always a last segment").len;
        let sealed_bytes = segments[..segments.len() - 1].iter().map(|s| s.len).sum();

        reconcile_index(&index, index_len, &index_path, &rebuild.locations)?;
        if dir_dirty {
            sync_dir(dir)?;
        }

        let Rebuild { locations, by_hash, by_tx } = rebuild;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_append_bytes: options.max_block_bytes.min(MAX_PAYLOAD_BYTES),
            segment_bytes: options.segment_bytes,
            segments,
            sealed_bytes,
            current,
            current_written,
            pending: Vec::new(),
            current_dirty: false,
            index,
            index_written: locations.len() as u64 * INDEX_ENTRY_BYTES,
            index_pending: Vec::new(),
            index_dirty: false,
            locations,
            by_hash,
            by_tx,
            cut_bytes,
            poisoned: false,
            scratch: Vec::new(),
        })
    }

    /// Appends `block`, whose number must be [`len`](Self::len). The block is buffered (large
    /// buffers are written out, unsynced); call [`sync`](Self::sync) to make it durable. It is
    /// readable and indexed at once.
    pub fn append(&mut self, block: &BlockRecord<'_>) -> Result<()> {
        self.guard(|store| store.append_inner(block))
    }

    /// Writes the buffered blocks and syncs the last segment, then the index.
    pub fn sync(&mut self) -> Result<()> {
        self.guard(Self::sync_inner)
    }

    /// Number of blocks stored (the next block's number).
    pub fn len(&self) -> u64 {
        self.locations.len() as u64
    }

    /// Whether the store holds no block (not even genesis).
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// The caller's bytes of block `number`, or `None` past the end. Synced and unsynced appends
    /// read alike; the frame's checksum is verified on every read.
    pub fn block_bytes(&self, number: u64) -> Result<Option<Vec<u8>>> {
        let Some(&entry) = usize::try_from(number).ok().and_then(|n| self.locations.get(n)) else {
            return Ok(None);
        };
        let ordinal = entry.segment();
        let is_current = ordinal + 1 == self.segments.len();
        let offset = entry.offset();
        let len = entry.len() as usize;
        let path = || segment_path(&self.dir, self.segments[ordinal].first);
        if is_current && offset >= self.current_written {
            let start = (offset - self.current_written) as usize;
            let frame = &self.pending[start..start + len];
            let range = record_bytes_range(frame, number)
                .ok_or_else(|| corrupt(path(), offset, "buffered block frame does not decode"))?;
            return Ok(Some(frame[range].to_vec()));
        }
        let mut frame = vec![0; len];
        if is_current {
            self.current.read_exact_at(&mut frame, offset)
        } else {
            File::open(path()).and_then(|f| f.read_exact_at(&mut frame, offset))
        }
        .map_err(io_err("read", &path()))?;
        let range = record_bytes_range(&frame, number)
            .ok_or_else(|| corrupt(path(), offset, "block frame fails its checksum"))?;
        frame.truncate(range.end);
        frame.drain(..range.start);
        Ok(Some(frame))
    }

    /// The number of the block with hash `hash`.
    pub fn number_by_hash(&self, hash: &B256) -> Option<u64> {
        self.by_hash.get(hash).copied()
    }

    /// Where the transaction with hash `hash` is: (block number, index in the block).
    pub fn tx_location(&self, hash: &B256) -> Option<(u64, u32)> {
        self.by_tx.get(hash).copied()
    }

    /// Bytes cut from the end of the last segment at open (a torn tail); 0 when none.
    pub fn cut_bytes(&self) -> u64 {
        self.cut_bytes
    }

    /// Size of all the store's files, counting bytes still buffered.
    pub fn size_bytes(&self) -> u64 {
        let current = self.segments.last().map_or(0, |s| s.len);
        self.sealed_bytes + current + self.index_written + self.index_pending.len() as u64
    }

    /// Removes blocks with number >= `from` (used when a crash left a block in the chain store
    /// whose state checkpoint is missing; also handy in tests). Truncates files, fixes indexes,
    /// syncs: on success the blocks kept are durable (when `from >= len()`, this is all it does).
    ///
    /// The index is cut first and segments are removed from the last one backwards, so a crash
    /// part-way leaves a consistent, longer store, and the call can be repeated after reopening.
    pub fn truncate_from(&mut self, from: u64) -> Result<()> {
        self.guard(|store| store.truncate_inner(from))
    }

    /// Runs a write, refusing it when poisoned and poisoning on I/O errors.
    fn guard<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.poisoned {
            return Err(ChainStoreError::Poisoned);
        }
        let result = op(self);
        if matches!(result, Err(ChainStoreError::Io { .. })) {
            self.poisoned = true;
        }
        result
    }

    fn append_inner(&mut self, block: &BlockRecord<'_>) -> Result<()> {
        let number = self.len();
        if block.number != number {
            return Err(ChainStoreError::NotNext { expected: number, got: block.number });
        }
        let record_len = block
            .tx_hashes
            .len()
            .checked_mul(32)
            .and_then(|h| h.checked_add(RECORD_PREFIX_BYTES))
            .and_then(|h| h.checked_add(block.bytes.len()))
            .unwrap_or(usize::MAX);
        if record_len > self.max_append_bytes {
            return Err(ChainStoreError::TooLarge { len: record_len, max: self.max_append_bytes });
        }
        let frame_len = (record_len + FRAME_OVERHEAD_BYTES) as u64;
        let last = *self.segments.last().expect("there is always a last segment");
        if last.len > 0 && last.len.saturating_add(frame_len) > self.segment_bytes {
            self.roll(number)?;
        }

        self.scratch.clear();
        self.scratch.extend_from_slice(block.hash.as_slice());
        let tx_count = u32::try_from(block.tx_hashes.len()).expect("bounded by the record size");
        self.scratch.extend_from_slice(&tx_count.to_le_bytes());
        for tx in block.tx_hashes {
            self.scratch.extend_from_slice(tx.as_slice());
        }
        self.scratch.extend_from_slice(block.bytes);
        encode_frame(&mut self.pending, BLOCK_MAGIC, number, &self.scratch);
        if self.scratch.capacity() > FLUSH_BYTES {
            self.scratch = Vec::new();
        }

        let ordinal = self.segments.len() - 1;
        let segment = self.segments.last_mut().expect("there is always a last segment");
        let entry = IndexEntry::new(
            u32::try_from(ordinal).expect("segment count checked when segments are made"),
            segment.len,
            u32::try_from(frame_len).expect("bounded by MAX_PAYLOAD_BYTES"),
        );
        segment.len += frame_len;
        self.index_pending.extend_from_slice(bytemuck::bytes_of(&entry));
        self.locations.push(entry);
        self.by_hash.entry(block.hash).or_insert(number);
        for (i, tx) in block.tx_hashes.iter().enumerate() {
            self.by_tx.entry(*tx).or_insert((number, i as u32));
        }

        if self.pending.len() >= FLUSH_BYTES {
            self.write_segment_pending()?;
        }
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<()> {
        self.write_segment_pending()?;
        if self.current_dirty {
            self.current.sync_data().map_err(io_err("sync", &self.current_path()))?;
            self.current_dirty = false;
        }
        self.write_index_pending()?;
        if self.index_dirty {
            self.index.sync_data().map_err(io_err("sync", &self.dir.join(INDEX_FILE)))?;
            self.index_dirty = false;
        }
        Ok(())
    }

    /// Seals the last segment (writes and syncs it) and starts a new one at block `first`.
    fn roll(&mut self, first: u64) -> Result<()> {
        if u32::try_from(self.segments.len()).is_err() {
            return Err(ChainStoreError::Io {
                op: "create segment",
                path: segment_path(&self.dir, first),
                source: io::Error::other("more segment files than the index can name"),
            });
        }
        self.write_segment_pending()?;
        if self.current_dirty {
            self.current.sync_data().map_err(io_err("sync", &self.current_path()))?;
            self.current_dirty = false;
        }
        let file = create_new(&segment_path(&self.dir, first))?;
        sync_dir(&self.dir)?;
        self.sealed_bytes += self.segments.last().map_or(0, |s| s.len);
        self.segments.push(Segment { first, len: 0 });
        self.current = file;
        self.current_written = 0;
        Ok(())
    }

    fn write_segment_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.current
            .write_all_at(&self.pending, self.current_written)
            .map_err(io_err("write", &self.current_path()))?;
        self.current_written += self.pending.len() as u64;
        self.current_dirty = true;
        self.pending.clear();
        if self.pending.capacity() > 2 * FLUSH_BYTES {
            self.pending = Vec::new();
        }
        Ok(())
    }

    fn write_index_pending(&mut self) -> Result<()> {
        if self.index_pending.is_empty() {
            return Ok(());
        }
        self.index
            .write_all_at(&self.index_pending, self.index_written)
            .map_err(io_err("write", &self.dir.join(INDEX_FILE)))?;
        self.index_written += self.index_pending.len() as u64;
        self.index_dirty = true;
        self.index_pending.clear();
        Ok(())
    }

    fn truncate_inner(&mut self, from: u64) -> Result<()> {
        if from >= self.len() {
            return self.sync_inner();
        }
        // Make the files match memory, so that only file lengths need changing below.
        self.write_segment_pending()?;
        self.write_index_pending()?;

        // Forget the blocks first, so that reads stop returning them even if a step below fails.
        let cut_at = self.locations[from as usize];
        self.locations.truncate(from as usize);
        self.by_hash.retain(|_, n| *n < from);
        self.by_tx.retain(|_, (n, _)| *n < from);

        // The index first: a crash after this leaves it short, which open rebuilds.
        let index_path = self.dir.join(INDEX_FILE);
        let index_len = from * INDEX_ENTRY_BYTES;
        self.index.set_len(index_len).map_err(io_err("truncate", &index_path))?;
        self.index.sync_data().map_err(io_err("sync", &index_path))?;
        self.index_written = index_len;
        self.index_dirty = false;

        // Then whole segments, last first, so that a crash never leaves a gap.
        let keep = self.segments.iter().take_while(|s| s.first < from).count().max(1);
        for segment in self.segments[keep..].iter().rev() {
            let path = segment_path(&self.dir, segment.first);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        if keep < self.segments.len() {
            sync_dir(&self.dir)?;
            let path = segment_path(&self.dir, self.segments[keep - 1].first);
            self.current = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            self.segments.truncate(keep);
            self.sealed_bytes = self.segments[..keep - 1].iter().map(|s| s.len).sum();
            self.current_written = self.segments[keep - 1].len;
        }

        // Then the tail of the segment that now ends the store.
        let last = self.segments.len() - 1;
        if cut_at.segment() == last {
            let path = self.current_path();
            self.current.set_len(cut_at.offset()).map_err(io_err("truncate", &path))?;
            self.segments[last].len = cut_at.offset();
            self.current_written = cut_at.offset();
        }
        self.current.sync_data().map_err(io_err("sync", &self.current_path()))?;
        self.current_dirty = false;
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.last().expect("there is always a last segment").first)
    }
}

/// The in-memory indexes, as rebuilt from the segments at open.
#[derive(Default)]
struct Rebuild {
    locations: Vec<IndexEntry>,
    by_hash: HashMap<B256, u64>,
    by_tx: HashMap<B256, (u64, u32)>,
}

impl Rebuild {
    /// Indexes the intact frame of the next block.
    fn add(&mut self, entry: IndexEntry, payload: &[u8]) -> Result<(), &'static str> {
        let number = self.locations.len() as u64;
        let (hash, tx_hashes, _) = parse_record(payload).ok_or("malformed block record")?;
        self.by_hash.entry(hash).or_insert(number);
        for (i, tx) in tx_hashes.chunks_exact(32).enumerate() {
            self.by_tx.entry(B256::from_slice(tx)).or_insert((number, i as u32));
        }
        self.locations.push(entry);
        Ok(())
    }
}

/// What `blocks.idx` said before open touched it, to tell a damaged frame's extent.
#[derive(Clone, Copy)]
struct IndexHint<'a> {
    file: &'a File,
    len: u64,
    path: &'a Path,
}

impl IndexHint<'_> {
    fn entry(&self, number: u64) -> Result<Option<IndexEntry>> {
        let at = number.saturating_mul(INDEX_ENTRY_BYTES);
        if at.saturating_add(INDEX_ENTRY_BYTES) > self.len {
            return Ok(None);
        }
        let mut entry = IndexEntry::zeroed();
        self.file
            .read_exact_at(bytemuck::bytes_of_mut(&mut entry), at)
            .map_err(io_err("read", self.path))?;
        Ok(Some(entry))
    }
}

/// Scans one segment's frames into `rebuild`, returning the offset just past the last intact
/// frame; that is short of `file_len` only for a torn tail of the last segment, to be cut.
fn scan_segment(
    file: &File,
    file_len: u64,
    path: &Path,
    ordinal: usize,
    is_last: bool,
    index: IndexHint<'_>,
    rebuild: &mut Rebuild,
) -> Result<u64> {
    let ordinal32 = u32::try_from(ordinal).expect("segment count checked by the caller");
    let mut scanner = Scanner { file, file_len, buf: Vec::new(), buf_at: 0 };
    let mut pos = 0u64;
    loop {
        match scanner.read(pos).map_err(io_err("read", path))? {
            Scanned::End => return Ok(pos),
            Scanned::Frame { key, payload, len } => {
                if key != rebuild.locations.len() as u64 {
                    return Err(corrupt(path.to_path_buf(), pos, "block number out of sequence"));
                }
                let entry = IndexEntry::new(ordinal32, pos, len);
                rebuild
                    .add(entry, payload)
                    .map_err(|reason| corrupt(path.to_path_buf(), pos, reason))?;
                pos += u64::from(len);
            }
            Scanned::Damaged => break,
        }
    }
    if !is_last {
        return Err(corrupt(path.to_path_buf(), pos, "damaged block frame in a sealed segment"));
    }
    let number = rebuild.locations.len() as u64;
    let hint = index.entry(number)?.filter(|e| {
        e.segment() == ordinal && e.offset() == pos && e.len() as usize >= FRAME_OVERHEAD_BYTES
    });
    let rest = scanner.rest(pos).map_err(io_err("read", path))?;
    let extent = match hint {
        Some(entry) => entry.len() as usize,
        None => declared_frame_len(rest).unwrap_or(1),
    };
    if intact_frame_after(rest, extent - 1, BLOCK_MAGIC, MAX_PAYLOAD_BYTES) {
        return Err(corrupt(path.to_path_buf(), pos, "damaged block frame before intact ones"));
    }
    Ok(pos)
}

/// Reads a segment's frames front to back through a buffer.
struct Scanner<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
}

enum Scanned<'a> {
    Frame { key: u64, payload: &'a [u8], len: u32 },
    End,
    Damaged,
}

impl Scanner<'_> {
    /// Makes `buf` hold the file from `pos` (which never moves backwards) to `pos + want` or the
    /// end of the file, whichever comes first.
    fn ensure(&mut self, pos: u64, want: usize) -> io::Result<()> {
        let end = pos.saturating_add(want as u64).min(self.file_len);
        let buf_end = self.buf_at + self.buf.len() as u64;
        if pos >= self.buf_at && end <= buf_end {
            return Ok(());
        }
        if pos >= self.buf_at && pos <= buf_end {
            self.buf.drain(..(pos - self.buf_at) as usize);
        } else {
            self.buf.clear();
        }
        self.buf_at = pos;
        let buf_end = pos + self.buf.len() as u64;
        let target = end.max(pos.saturating_add(SCAN_CHUNK_BYTES as u64)).min(self.file_len);
        if target > buf_end {
            let old = self.buf.len();
            self.buf.resize(old + (target - buf_end) as usize, 0);
            self.file.read_exact_at(&mut self.buf[old..], buf_end)?;
        }
        Ok(())
    }

    fn read(&mut self, pos: u64) -> io::Result<Scanned<'_>> {
        self.ensure(pos, FRAME_HEADER_BYTES)?;
        let rel = (pos - self.buf_at) as usize;
        let want = declared_frame_len(&self.buf[rel..]).unwrap_or(FRAME_HEADER_BYTES);
        self.ensure(pos, want)?;
        let rel = (pos - self.buf_at) as usize;
        Ok(match read_frame(&self.buf, rel, BLOCK_MAGIC, MAX_PAYLOAD_BYTES) {
            FrameRead::Frame { key, payload, next } => {
                Scanned::Frame { key, payload, len: (next - rel) as u32 }
            }
            FrameRead::End => Scanned::End,
            FrameRead::Truncated | FrameRead::Corrupt => Scanned::Damaged,
        })
    }

    /// The file from `pos` to its end.
    fn rest(&mut self, pos: u64) -> io::Result<&[u8]> {
        self.ensure(pos, usize::MAX)?;
        Ok(&self.buf[(pos - self.buf_at) as usize..])
    }
}

/// The length of the frame starting at `bytes[0]` according to its header, when the header is
/// whole and its magic intact.
fn declared_frame_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != BLOCK_MAGIC {
        return None;
    }
    let len = word(4) as usize;
    (len <= MAX_PAYLOAD_BYTES).then_some(len + FRAME_OVERHEAD_BYTES)
}

/// Splits a block record into block hash, transaction hashes (32 bytes each) and the offset of the
/// caller's bytes.
fn parse_record(payload: &[u8]) -> Option<(B256, &[u8], usize)> {
    let prefix = payload.get(..RECORD_PREFIX_BYTES)?;
    let hash = B256::from_slice(&prefix[..32]);
    let count = u32::from_le_bytes(prefix[32..36].try_into().expect("4 bytes")) as usize;
    let end = count.checked_mul(32)?.checked_add(RECORD_PREFIX_BYTES)?;
    let tx_hashes = payload.get(RECORD_PREFIX_BYTES..end)?;
    Some((hash, tx_hashes, end))
}

/// Verifies the whole frame in `frame` as block `number` and returns where its caller's bytes
/// lie within it.
fn record_bytes_range(frame: &[u8], number: u64) -> Option<std::ops::Range<usize>> {
    match read_frame(frame, 0, BLOCK_MAGIC, MAX_PAYLOAD_BYTES) {
        FrameRead::Frame { key, payload, next } if key == number && next == frame.len() => {
            let (_, _, start) = parse_record(payload)?;
            Some(FRAME_HEADER_BYTES + start..FRAME_HEADER_BYTES + payload.len())
        }
        _ => None,
    }
}

/// Makes `blocks.idx` hold exactly `locations`, rewriting it from its first disagreeing entry.
fn reconcile_index(
    index: &File,
    index_len: u64,
    path: &Path,
    locations: &[IndexEntry],
) -> Result<()> {
    let on_disk = usize::try_from(index_len / INDEX_ENTRY_BYTES).unwrap_or(usize::MAX);
    let comparable = on_disk.min(locations.len());
    let mut agree = 0;
    let mut buf = vec![IndexEntry::zeroed(); comparable.min(INDEX_CHUNK_ENTRIES)];
    while agree < comparable {
        let n = (comparable - agree).min(buf.len());
        index
            .read_exact_at(
                bytemuck::cast_slice_mut(&mut buf[..n]),
                agree as u64 * INDEX_ENTRY_BYTES,
            )
            .map_err(io_err("read", path))?;
        match buf[..n].iter().zip(&locations[agree..]).position(|(a, b)| a != b) {
            Some(i) => {
                agree += i;
                break;
            }
            None => agree += n,
        }
    }
    if agree == locations.len() && index_len == locations.len() as u64 * INDEX_ENTRY_BYTES {
        return Ok(());
    }
    let at = agree as u64 * INDEX_ENTRY_BYTES;
    index.set_len(at).map_err(io_err("truncate", path))?;
    index
        .write_all_at(bytemuck::cast_slice(&locations[agree..]), at)
        .map_err(io_err("write", path))?;
    index.sync_data().map_err(io_err("sync", path))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("blocks-{first:012}.seg"))
}

/// The first block number of a segment file called `name`, when it is one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("blocks-")?.strip_suffix(".seg")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let first = digits.parse().ok()?;
    (format!("{first:012}") == digits).then_some(first)
}

fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create segment", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ChainStoreError {
    let path = path.to_path_buf();
    move |source| ChainStoreError::Io { op, path, source }
}

fn corrupt(path: PathBuf, offset: u64, reason: &'static str) -> ChainStoreError {
    ChainStoreError::Corrupt { path, offset, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tempfile::TempDir;

    /// A block owned by a test.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Block {
        number: u64,
        hash: B256,
        txs: Vec<B256>,
        bytes: Vec<u8>,
    }

    impl Block {
        fn record(&self) -> BlockRecord<'_> {
            BlockRecord {
                number: self.number,
                hash: self.hash,
                tx_hashes: &self.txs,
                bytes: &self.bytes,
            }
        }
    }

    /// A distinct hash for (`tag`, `n`, `i`).
    fn hash(tag: u8, n: u64, i: u64) -> B256 {
        let mut h = [0u8; 32];
        h[0] = tag;
        h[1..9].copy_from_slice(&n.to_le_bytes());
        h[9..17].copy_from_slice(&i.to_le_bytes());
        B256::from(h)
    }

    /// Block `number` of a test chain; `salt` makes different chains' blocks differ.
    fn block(number: u64, salt: u64, txs: usize, len: usize) -> Block {
        let bytes = (0..len).map(|i| (i as u64 * 31 + number * 7 + salt) as u8).collect();
        Block {
            number,
            hash: hash(1, number, salt),
            txs: (0..txs as u64).map(|i| hash(2, number, salt * 1000 + i)).collect(),
            bytes,
        }
    }

    fn chain(n: u64) -> Vec<Block> {
        (0..n).map(|i| block(i, 0, (i % 4) as usize, 20 + (i as usize * 13) % 90)).collect()
    }

    fn small(segment_bytes: u64) -> ChainStoreOptions {
        ChainStoreOptions { segment_bytes, ..ChainStoreOptions::default() }
    }

    fn open(dir: &Path, options: ChainStoreOptions) -> ChainStore {
        ChainStore::open(dir, options).expect("open")
    }

    fn write_all(store: &mut ChainStore, blocks: &[Block]) {
        for b in blocks {
            store.append(&b.record()).expect("append");
            store.sync().expect("sync");
        }
    }

    /// Checks every lookup of `store` against `blocks` (which must be all it holds).
    fn check(store: &ChainStore, blocks: &[Block]) {
        assert_eq!(store.len(), blocks.len() as u64);
        assert_eq!(store.is_empty(), blocks.is_empty());
        for b in blocks {
            assert_eq!(store.block_bytes(b.number).unwrap().as_deref(), Some(&b.bytes[..]));
            assert_eq!(store.number_by_hash(&b.hash), Some(b.number));
            for (i, tx) in b.txs.iter().enumerate() {
                assert_eq!(store.tx_location(tx), Some((b.number, i as u32)));
            }
        }
        assert_eq!(store.block_bytes(blocks.len() as u64).unwrap(), None);
        assert_eq!(store.block_bytes(u64::MAX).unwrap(), None);
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    fn disk_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    fn copy_dir(from: &Path) -> TempDir {
        let to = TempDir::new().unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
        to
    }

    /// (path, offset, length) of block `number`'s frame, from `blocks.idx`.
    fn frame_of(dir: &Path, number: u64) -> (PathBuf, u64, u64) {
        let idx = fs::read(dir.join(INDEX_FILE)).unwrap();
        let at = number as usize * 16;
        let entry: IndexEntry = bytemuck::pod_read_unaligned(&idx[at..at + 16]);
        (segment_files(dir)[entry.segment()].clone(), entry.offset(), u64::from(entry.len()))
    }

    fn set_len(path: &Path, len: u64) {
        OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
    }

    fn flip_bit(path: &Path, bit: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn round_trip_across_segments() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(40);
        let mut store = open(dir.path(), small(400));
        assert!(store.is_empty());
        write_all(&mut store, &blocks);
        check(&store, &blocks);
        assert_eq!(store.size_bytes(), disk_bytes(dir.path()));
        drop(store);

        let segments = segment_files(dir.path());
        assert!(segments.len() > 3, "{segments:?}");
        assert!(segments[0].ends_with("blocks-000000000000.seg"));
        for path in &segments[..segments.len() - 1] {
            assert!(fs::metadata(path).unwrap().len() <= 400);
        }
        let idx_before = fs::read(dir.path().join(INDEX_FILE)).unwrap();
        assert_eq!(idx_before.len(), 40 * 16);

        let mut store = open(dir.path(), small(400));
        check(&store, &blocks);
        assert_eq!(store.cut_bytes(), 0);
        assert_eq!(store.size_bytes(), disk_bytes(dir.path()));
        assert_eq!(fs::read(dir.path().join(INDEX_FILE)).unwrap(), idx_before);

        // Carries on, with a different segment size this time.
        let more: Vec<_> = (40..50).map(|n| block(n, 0, 2, 300)).collect();
        write_all(&mut store, &more);
        drop(store);
        let store = open(dir.path(), small(1000));
        check(&store, &[blocks, more].concat());
    }

    #[test]
    fn unsynced_appends_read_back_and_large_ones_are_written_early() {
        let dir = TempDir::new().unwrap();
        let mut store = open(dir.path(), small(1 << 30));
        let blocks = vec![block(0, 0, 1, 10), block(1, 0, 3, FLUSH_BYTES + 5), block(2, 0, 0, 0)];
        for b in &blocks {
            store.append(&b.record()).unwrap();
        }
        check(&store, &blocks);
        // Block 1 pushed the buffer past the threshold: blocks 0 and 1 are in the file, unsynced.
        assert_eq!(store.current_written, store.locations[2].offset());
        // On disk: the segment up to block 2. Buffered: block 2 and three index entries.
        let buffered = store.pending.len() as u64 + 3 * INDEX_ENTRY_BYTES;
        assert_eq!(store.size_bytes(), disk_bytes(dir.path()) + buffered);
        drop(store);
        // Dropped without sync: what was written survives, the rest is gone.
        let store = open(dir.path(), small(1 << 30));
        check(&store, &blocks[..2]);
    }

    #[test]
    fn not_next_and_too_large() {
        let dir = TempDir::new().unwrap();
        let mut store =
            open(dir.path(), ChainStoreOptions { segment_bytes: 1 << 20, max_block_bytes: 100 });
        let err = store.append(&block(1, 0, 0, 1).record()).unwrap_err();
        assert!(matches!(err, ChainStoreError::NotNext { expected: 0, got: 1 }), "{err}");
        store.append(&block(0, 0, 0, 1).record()).unwrap();
        let err = store.append(&block(0, 0, 0, 1).record()).unwrap_err();
        assert!(matches!(err, ChainStoreError::NotNext { expected: 1, got: 0 }), "{err}");
        // 36 + 32 + 32 = 100 fits; one more byte does not.
        store.append(&block(1, 0, 1, 32).record()).unwrap();
        let err = store.append(&block(2, 0, 1, 33).record()).unwrap_err();
        assert!(matches!(err, ChainStoreError::TooLarge { len: 101, max: 100 }), "{err}");
        // None of these poisons the store.
        store.append(&block(2, 0, 0, 3).record()).unwrap();
        store.sync().unwrap();
        assert_eq!(store.len(), 3);
    }

    /// Tears the last block at every byte offset: the earlier blocks survive, the torn one is cut
    /// and appending continues. The last block's bytes embed a forged, intact frame of the next
    /// block, which must not make a torn tail look like damage in the middle.
    #[test]
    fn torn_tail_at_every_offset_is_cut() {
        for segment_bytes in [1 << 20, 1] {
            let dir = TempDir::new().unwrap();
            let mut blocks = chain(5);
            let forged = block(5, 9, 1, 8);
            let mut payload = forged.hash.to_vec();
            payload.extend_from_slice(&1u32.to_le_bytes());
            payload.extend_from_slice(forged.txs[0].as_slice());
            payload.extend_from_slice(&forged.bytes);
            let mut evil = b"calldata:".to_vec();
            encode_frame(&mut evil, BLOCK_MAGIC, 5, &payload);
            evil.extend_from_slice(b"more receipts");
            blocks[4].bytes = evil;
            let mut store = open(dir.path(), small(segment_bytes));
            write_all(&mut store, &blocks);
            drop(store);

            let (path, offset, len) = frame_of(dir.path(), 4);
            let name = path.file_name().unwrap().to_owned();
            for keep in 0..len {
                let copy = copy_dir(dir.path());
                set_len(&copy.path().join(&name), offset + keep);
                let mut store = open(copy.path(), small(segment_bytes));
                check(&store, &blocks[..4]);
                assert_eq!(store.cut_bytes(), keep, "segment_bytes {segment_bytes} keep {keep}");
                assert_eq!(store.number_by_hash(&forged.hash), None);
                assert_eq!(store.size_bytes(), disk_bytes(copy.path()));
                let next = block(4, 1, 2, 50);
                store.append(&next.record()).unwrap();
                store.sync().unwrap();
                drop(store);
                let store = open(copy.path(), small(segment_bytes));
                assert_eq!(store.cut_bytes(), 0);
                check(&store, &[&blocks[..4], &[next]].concat());
            }
        }
    }

    #[test]
    fn garbage_after_the_last_frame_is_cut() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(6);
        let mut store = open(dir.path(), small(1 << 20));
        write_all(&mut store, &blocks);
        drop(store);
        let path = &segment_files(dir.path())[0];
        let mut bytes = fs::read(path).unwrap();
        let len = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(path, &bytes).unwrap();
        let store = open(dir.path(), small(1 << 20));
        check(&store, &blocks);
        assert_eq!(store.cut_bytes(), 4096);
        assert_eq!(fs::metadata(path).unwrap().len(), len);
    }

    /// Any bit flipped in a block that has intact blocks after it is reported, and open leaves the
    /// files alone.
    #[test]
    fn bit_flip_in_a_middle_block_is_corrupt() {
        // One segment (damage in the last segment) and one block per segment (a sealed one).
        for segment_bytes in [1 << 20, 1] {
            let dir = TempDir::new().unwrap();
            let blocks = chain(5);
            let mut store = open(dir.path(), small(segment_bytes));
            write_all(&mut store, &blocks);
            drop(store);
            let (path, offset, len) = frame_of(dir.path(), 2);
            let pristine = fs::read(&path).unwrap();
            for bit in offset * 8..(offset + len) * 8 {
                flip_bit(&path, bit);
                match ChainStore::open(dir.path(), small(segment_bytes)) {
                    Err(ChainStoreError::Corrupt { path: p, offset: o, .. }) => {
                        assert_eq!((&p, o), (&path, offset), "bit {bit}");
                    }
                    other => panic!("bit {bit}: {other:?}"),
                }
                flip_bit(&path, bit);
            }
            assert_eq!(fs::read(&path).unwrap(), pristine);
            check(&open(dir.path(), small(segment_bytes)), &blocks);

            // Without blocks.idx, damage outside the length field is still caught.
            fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
            for bit in (offset + 8) * 8..(offset + len) * 8 {
                flip_bit(&path, bit);
                let err = ChainStore::open(dir.path(), small(segment_bytes)).unwrap_err();
                assert!(matches!(err, ChainStoreError::Corrupt { .. }), "bit {bit}: {err}");
                flip_bit(&path, bit);
            }
        }
    }

    #[test]
    fn bit_flip_in_the_last_block_is_cut() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(5);
        let mut store = open(dir.path(), small(1 << 20));
        write_all(&mut store, &blocks);
        drop(store);
        let (path, offset, len) = frame_of(dir.path(), 4);
        for bit in offset * 8..(offset + len) * 8 {
            let copy = copy_dir(dir.path());
            let copied = copy.path().join(path.file_name().unwrap());
            flip_bit(&copied, bit);
            let mut store = open(copy.path(), small(1 << 20));
            check(&store, &blocks[..4]);
            assert_eq!(store.cut_bytes(), len, "bit {bit}");
            store.append(&blocks[4].record()).unwrap();
            store.sync().unwrap();
            drop(store);
            check(&open(copy.path(), small(1 << 20)), &blocks);
        }
    }

    #[test]
    fn layout_damage_is_corrupt() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(12);
        let mut store = open(dir.path(), small(300));
        write_all(&mut store, &blocks);
        drop(store);
        let segments = segment_files(dir.path());
        assert!(segments.len() >= 3);

        // A missing middle segment leaves a gap.
        let copy = copy_dir(dir.path());
        fs::remove_file(copy.path().join(segments[1].file_name().unwrap())).unwrap();
        let err = ChainStore::open(copy.path(), small(300)).unwrap_err();
        assert!(matches!(err, ChainStoreError::Corrupt { offset: 0, .. }), "{err}");

        // So does a missing first one.
        let copy = copy_dir(dir.path());
        fs::remove_file(copy.path().join(segments[0].file_name().unwrap())).unwrap();
        let err = ChainStore::open(copy.path(), small(300)).unwrap_err();
        assert!(matches!(err, ChainStoreError::Corrupt { offset: 0, .. }), "{err}");

        // A torn end of a sealed segment is not a torn tail.
        let copy = copy_dir(dir.path());
        let sealed = copy.path().join(segments[0].file_name().unwrap());
        set_len(&sealed, fs::metadata(&sealed).unwrap().len() - 1);
        let err = ChainStore::open(copy.path(), small(300)).unwrap_err();
        assert!(matches!(err, ChainStoreError::Corrupt { .. }), "{err}");

        // No segment at all, while the index lists blocks.
        let copy = copy_dir(dir.path());
        for path in &segments {
            fs::remove_file(copy.path().join(path.file_name().unwrap())).unwrap();
        }
        let err = ChainStore::open(copy.path(), small(300)).unwrap_err();
        assert!(matches!(err, ChainStoreError::Corrupt { offset: 0, .. }), "{err}");

        // Stray files are ignored.
        let copy = copy_dir(dir.path());
        fs::write(copy.path().join("blocks-7.seg"), b"junk").unwrap();
        fs::write(copy.path().join("blocks-000000000007.seg.tmp"), b"junk").unwrap();
        check(&open(copy.path(), small(300)), &blocks);
    }

    #[test]
    fn damage_found_by_a_read_is_corrupt() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(3);
        let mut store = open(dir.path(), small(1 << 20));
        write_all(&mut store, &blocks);
        let (path, offset, len) = frame_of(dir.path(), 1);
        flip_bit(&path, (offset + len - 10) * 8);
        let err = store.block_bytes(1).unwrap_err();
        assert!(matches!(err, ChainStoreError::Corrupt { offset: o, .. } if o == offset), "{err}");
        assert_eq!(store.block_bytes(2).unwrap().as_deref(), Some(&blocks[2].bytes[..]));
        // Reads do not poison.
        store.append(&block(3, 0, 0, 1).record()).unwrap();
    }

    #[test]
    fn index_is_rebuilt_when_missing_short_or_wrong() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(30);
        let mut store = open(dir.path(), small(500));
        write_all(&mut store, &blocks);
        drop(store);
        let idx_path = dir.path().join(INDEX_FILE);
        let good = fs::read(&idx_path).unwrap();

        type Damage<'a> = (&'a str, &'a dyn Fn(&Path));
        let damage: [Damage<'_>; 6] = [
            ("deleted", &|p| fs::remove_file(p).unwrap()),
            ("emptied", &|p| set_len(p, 0)),
            ("cut mid-entry", &|p| set_len(p, 7 * 16 + 9)),
            ("cut at an entry", &|p| set_len(p, 20 * 16)),
            ("too long", &|p| set_len(p, 40 * 16 + 3)),
            ("wrong entry", &|p| flip_bit(p, 12 * 128 + 3)),
        ];
        for (what, damage) in damage {
            let copy = copy_dir(dir.path());
            damage(&copy.path().join(INDEX_FILE));
            let mut store = open(copy.path(), small(500));
            check(&store, &blocks);
            assert_eq!(store.cut_bytes(), 0, "{what}");
            assert_eq!(fs::read(copy.path().join(INDEX_FILE)).unwrap(), good, "{what}");
            assert_eq!(store.size_bytes(), disk_bytes(copy.path()), "{what}");
            let next = block(30, 0, 1, 10);
            store.append(&next.record()).unwrap();
            store.sync().unwrap();
            drop(store);
            check(&open(copy.path(), small(500)), &[&blocks[..], &[next]].concat());
        }

        // A segment cut shorter than the index says (entries past the end are dropped).
        let copy = copy_dir(dir.path());
        let last = segment_files(copy.path()).pop().unwrap();
        let first = (0..30).find(|&n| frame_of(copy.path(), n).0 == last).unwrap();
        assert!(first < 29, "the last segment holds several blocks");
        let (path, offset, _) = frame_of(copy.path(), first + 1);
        set_len(&path, offset);
        let store = open(copy.path(), small(500));
        check(&store, &blocks[..first as usize + 1]);
        assert_eq!(
            fs::read(copy.path().join(INDEX_FILE)).unwrap(),
            good[..(first as usize + 1) * 16]
        );
    }

    #[test]
    fn truncate_from() {
        let dir = TempDir::new().unwrap();
        let blocks = chain(30);
        let mut store = open(dir.path(), small(500));
        write_all(&mut store, &blocks);
        let starts: Vec<u64> = store.segments.iter().map(|s| s.first).collect();
        assert!(starts.len() >= 4, "{starts:?}");

        // Past the end: nothing happens.
        store.truncate_from(30).unwrap();
        store.truncate_from(u64::MAX).unwrap();
        check(&store, &blocks);

        // Inside the last segment, at a segment start, inside an earlier one, then to genesis.
        let cuts = [29, starts[3], starts[2] + 1, 1, 0];
        let mut kept = blocks.clone();
        for (round, &from) in cuts.iter().enumerate() {
            // Some unsynced appends too, which go with the rest.
            let extra = block(kept.len() as u64, 100 + round as u64, 1, 40);
            store.append(&extra.record()).unwrap();
            store.truncate_from(from).unwrap();
            kept.truncate(from as usize);
            check(&store, &kept);
            for gone in blocks[from as usize..].iter().chain([&extra]) {
                assert_eq!(store.number_by_hash(&gone.hash), None);
                for tx in &gone.txs {
                    assert_eq!(store.tx_location(tx), None);
                }
            }
            assert_eq!(store.size_bytes(), disk_bytes(dir.path()), "from {from}");
            let reopened = open(dir.path(), small(500));
            check(&reopened, &kept);
            assert_eq!(reopened.cut_bytes(), 0);
            drop(reopened);
        }
        assert_eq!(segment_files(dir.path()).len(), 1);

        // And the chain grows again, across segments.
        let again: Vec<_> = (0..12).map(|n| block(n, 7, 1, 60)).collect();
        write_all(&mut store, &again);
        check(&store, &again);
        drop(store);
        check(&open(dir.path(), small(500)), &again);
    }

    #[test]
    fn an_io_error_poisons() {
        let dir = TempDir::new().unwrap();
        let mut store = open(dir.path(), small(1));
        let blocks = chain(2);
        write_all(&mut store, &blocks[..1]);
        // Where the next segment must go there is a directory: the roll fails.
        fs::create_dir(segment_path(dir.path(), 1)).unwrap();
        let err = store.append(&blocks[1].record()).unwrap_err();
        assert!(matches!(err, ChainStoreError::Io { op: "create segment", .. }), "{err}");
        assert!(err.to_string().contains("blocks-000000000001.seg"), "{err}");
        assert!(matches!(store.append(&blocks[1].record()), Err(ChainStoreError::Poisoned)));
        assert!(matches!(store.sync(), Err(ChainStoreError::Poisoned)));
        assert!(matches!(store.truncate_from(0), Err(ChainStoreError::Poisoned)));
        check(&store, &blocks[..1]);
        drop(store);

        fs::remove_dir(segment_path(dir.path(), 1)).unwrap();
        let mut store = open(dir.path(), small(1));
        check(&store, &blocks[..1]);
        write_all(&mut store, &blocks[1..]);
        check(&store, &blocks);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append { txs: usize, len: usize },
        Sync,
        Reopen,
        Truncate(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..4, 0usize..300).prop_map(|(txs, len)| Op::Append { txs, len }),
            3 => Just(Op::Sync),
            1 => Just(Op::Reopen),
            1 => (0usize..64).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random appends, syncs, reopens and truncations agree with a `Vec`.
        #[test]
        fn matches_a_vec_model(
            segment_bytes in 1u64..2000,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let dir = TempDir::new().unwrap();
            let options = small(segment_bytes);
            let mut store = open(dir.path(), options);
            let mut model: Vec<Block> = Vec::new();
            let mut synced = 0;
            let mut all = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { txs, len } => {
                        let b = block(model.len() as u64, step as u64 + 1, txs, len);
                        store.append(&b.record()).unwrap();
                        all.push(b.clone());
                        model.push(b);
                    }
                    Op::Sync => {
                        store.sync().unwrap();
                        synced = model.len();
                        prop_assert_eq!(store.size_bytes(), disk_bytes(dir.path()));
                    }
                    Op::Reopen => {
                        drop(store);
                        store = open(dir.path(), options);
                        let len = store.len() as usize;
                        prop_assert!(synced <= len && len <= model.len());
                        prop_assert_eq!(store.cut_bytes(), 0);
                        model.truncate(len);
                        synced = len;
                        prop_assert_eq!(store.size_bytes(), disk_bytes(dir.path()));
                    }
                    Op::Truncate(from) => {
                        let from = from.min(model.len() + 1);
                        store.truncate_from(from as u64).unwrap();
                        model.truncate(from);
                        synced = model.len();
                        prop_assert_eq!(store.size_bytes(), disk_bytes(dir.path()));
                    }
                }
                check(&store, &model);
            }
            for gone in all.iter().filter(|b| !model.contains(b)) {
                prop_assert_eq!(store.number_by_hash(&gone.hash), None);
                for tx in &gone.txs {
                    prop_assert_eq!(store.tx_location(tx), None);
                }
            }
            store.sync().unwrap();
            drop(store);
            check(&open(dir.path(), options), &model);
        }
    }
}
