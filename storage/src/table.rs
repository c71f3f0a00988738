//! Memory-mapped bucket tables of fixed-size records: the flat state of `DESIGN.md` §3.
//!
//! A table has `4^k` buckets, fixed when it is created. A key's bucket is the top bits of its
//! xxh3-64 hash. Three files back a table:
//! - `NAME.dir`: one [`DirEntry`] per bucket (where its segment lives, capacity, records used);
//! - `NAME.dat`: bucket segments of `bytemuck::Pod` records, each bucket's records kept sorted by
//!   key, so a lookup is a binary search over a few cache lines;
//! - `NAME.tree`: the commitment tree over the buckets ([`crate::tree`]).
//!
//! Why sorted segments instead of probing slots: buckets are only rewritten at checkpoints, where
//! each touched bucket is rebuilt whole anyway (that is also where its hash is taken). Keeping it
//! sorted then costs nothing, makes the bucket hash need no sort, and makes the table's bytes a
//! function of its contents alone.
//!
//! Growth never stops the chain: a bucket that outgrows its segment moves to a new segment of twice
//! the capacity at the end of `NAME.dat`, so growing costs O(that bucket), never a rehash of the
//! table. The old segment is left unused (at most half the file is ever dead space; reuse is
//! future work). Files grow by doubling.
//!
//! Tables are changed only through a [`TablePlan`]: planning reads, applying writes. The store's
//! checkpoint journals the plan's pre-images before applying it (`persistent.rs`).

use crate::{
    mapped::{FileError, MappedFile},
    tree::{self, Hash},
};
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;
use std::{marker::PhantomData, path::Path};
use xxhash_rust::xxh3::xxh3_64;

/// Smallest bucket segment, in records.
const MIN_SEGMENT_RECORDS: u32 = 4;
/// Below this many touched buckets, a plan is built on the calling thread.
const PARALLEL_BUCKETS: usize = 512;
/// Touched buckets rebuilt per parallel task (their records share one allocation).
const BUCKETS_PER_TASK: usize = 128;
/// Largest write that adjacent writes are merged into (keeps journal frames small).
const MAX_MERGED_WRITE: usize = 1 << 20;

/// A fixed-size record stored in a table.
pub(crate) trait Record: Pod + Send + Sync + std::fmt::Debug + PartialEq {
    /// The record's key.
    type Key: Copy + Ord + Send + Sync + AsRef<[u8]> + std::fmt::Debug;
    /// Leading bytes of the record the commitment covers (key and value; bookkeeping after).
    const COMMITTED_BYTES: usize;
    /// The record's key.
    fn key(&self) -> Self::Key;
    /// The bytes the bucket hash covers.
    fn committed(&self) -> &[u8] {
        &bytemuck::bytes_of(self)[..Self::COMMITTED_BYTES]
    }
}

/// An account: address, nonce (little-endian), balance and code hash (big-endian), and how many
/// storage slots it has (bookkeeping, not committed: it lets a storage wipe skip the scan when
/// there is nothing to wipe).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct AccountRecord {
    pub(crate) address: [u8; 20],
    pub(crate) nonce: [u8; 8],
    pub(crate) balance: [u8; 32],
    pub(crate) code_hash: [u8; 32],
    pub(crate) slot_count: [u8; 8],
}

impl Record for AccountRecord {
    type Key = [u8; 20];
    const COMMITTED_BYTES: usize = 92;
    fn key(&self) -> [u8; 20] {
        self.address
    }
}

/// A storage slot: address, slot and value (big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct SlotRecord {
    pub(crate) address: [u8; 20],
    pub(crate) slot: [u8; 32],
    pub(crate) value: [u8; 32],
}

/// A storage key: address then slot.
pub(crate) type SlotKey = [u8; 52];

impl Record for SlotRecord {
    type Key = SlotKey;
    const COMMITTED_BYTES: usize = 84;
    fn key(&self) -> SlotKey {
        let mut k = [0u8; 52];
        k[..20].copy_from_slice(&self.address);
        k[20..].copy_from_slice(&self.slot);
        k
    }
}

/// Where a bucket's records live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct DirEntry {
    /// First record of the segment in `NAME.dat`.
    pub(crate) offset: u64,
    /// Records the segment holds.
    pub(crate) capacity: u32,
    /// Records in use.
    pub(crate) len: u32,
}

const DIR_ENTRY_BYTES: u64 = std::mem::size_of::<DirEntry>() as u64;

/// The bucket of a key in a table of `2^log2_buckets` buckets.
pub fn bucket_of(key: &[u8], log2_buckets: u32) -> u64 {
    if log2_buckets == 0 {
        return 0;
    }
    xxh3_64(key) >> (64 - log2_buckets)
}

/// Which file of a table a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableFile {
    Dir = 0,
    Dat = 1,
    Tree = 2,
}

/// One write to a table file: `len` bytes of the plan's buffer from `start`, at `offset`.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) file: TableFile,
    pub(crate) offset: u64,
    start: usize,
    pub(crate) len: usize,
}

/// Everything a batch of changes does to a table, computed without touching it.
pub(crate) struct TablePlan<R: Record> {
    /// The writes, to be journaled and applied; their bytes are in `data`. Writes to adjacent
    /// ranges of a file are merged (up to [`MAX_MERGED_WRITE`] bytes).
    pub(crate) writes: Vec<Write>,
    data: Vec<u8>,
    /// The value each changed key had before (for readers of older views), if kept.
    pub(crate) old: Vec<(R::Key, Option<R>)>,
    /// `(key, was present, is present)` for each change, for the caller's bookkeeping, if kept.
    pub(crate) presence: Vec<(R::Key, bool, bool)>,
    /// Records allocated in `NAME.dat` after the plan.
    pub(crate) used_records: u64,
    /// Records in the table after the plan.
    pub(crate) count: u64,
    /// The table's root after the plan.
    pub(crate) root: Hash,
}

impl<R: Record> TablePlan<R> {
    /// The bytes `w` writes.
    pub(crate) fn bytes(&self, w: &Write) -> &[u8] {
        &self.data[w.start..w.start + w.len]
    }
}

/// Writes being collected into one buffer, adjacent ones merged.
struct Writes {
    writes: Vec<Write>,
    data: Vec<u8>,
}

impl Writes {
    fn with_capacity(writes: usize, bytes: usize) -> Self {
        Self { writes: Vec::with_capacity(writes), data: Vec::with_capacity(bytes) }
    }

    fn push(&mut self, file: TableFile, offset: u64, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        if let Some(last) = self.writes.last_mut() {
            if last.file == file
                && last.offset + last.len as u64 == offset
                && last.start + last.len == start
                && last.len + bytes.len() <= MAX_MERGED_WRITE
            {
                last.len += bytes.len();
                return;
            }
        }
        self.writes.push(Write { file, offset, start, len: bytes.len() });
    }
}

/// One memory-mapped table.
pub(crate) struct Table<R: Record> {
    log2_buckets: u32,
    dir: MappedFile,
    dat: MappedFile,
    tree: MappedFile,
    used_records: u64,
    count: u64,
    _records: PhantomData<R>,
}

/// Which per-key records a plan keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keep {
    /// [`TablePlan::old`]: needed only while some view of the state before the plan exists.
    pub(crate) old: bool,
    /// [`TablePlan::presence`].
    pub(crate) presence: bool,
}

impl Keep {
    /// Everything.
    #[cfg(test)]
    pub(crate) const ALL: Keep = Keep { old: true, presence: true };
}

/// Rebuilt buckets, in bucket order, with their records in one vector.
struct Rebuilt<R: Record> {
    /// `(bucket, end of its records in `records`, hash)`.
    buckets: Vec<(u64, usize, Hash)>,
    records: Vec<R>,
    old: Vec<(R::Key, Option<R>)>,
    presence: Vec<(R::Key, bool, bool)>,
}

impl<R: Record> Table<R> {
    const RECORD_BYTES: u64 = std::mem::size_of::<R>() as u64;

    /// Opens (creating) the table `name` in `dir`, with the allocation and count its checkpoint
    /// recorded.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        log2_buckets: u32,
        used_records: u64,
        count: u64,
    ) -> Result<Self, FileError> {
        let buckets = 1u64 << log2_buckets;
        let dir_file =
            MappedFile::open(&dir.join(format!("{name}.dir")), buckets * DIR_ENTRY_BYTES)?;
        let dat =
            MappedFile::open(&dir.join(format!("{name}.dat")), used_records * Self::RECORD_BYTES)?;
        let tree = MappedFile::open(
            &dir.join(format!("{name}.tree")),
            tree::node_count(log2_buckets) * 32,
        )?;
        Ok(Self {
            log2_buckets,
            dir: dir_file,
            dat,
            tree,
            used_records,
            count,
            _records: PhantomData,
        })
    }

    /// Records in the table.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Records allocated in `NAME.dat` (live and dead).
    pub(crate) fn used_records(&self) -> u64 {
        self.used_records
    }

    /// log2 of the bucket count.
    pub(crate) fn log2_buckets(&self) -> u32 {
        self.log2_buckets
    }

    /// Sizes of the three files in bytes.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.dir.len() + self.dat.len() + self.tree.len()
    }

    fn entry(&self, bucket: u64) -> DirEntry {
        let at = (bucket * DIR_ENTRY_BYTES) as usize;
        bytemuck::pod_read_unaligned(&self.dir.bytes()[at..at + DIR_ENTRY_BYTES as usize])
    }

    /// The records of `bucket`, sorted by key.
    pub(crate) fn bucket(&self, bucket: u64) -> &[R] {
        let e = self.entry(bucket);
        if e.len == 0 {
            return &[];
        }
        let start = (e.offset * Self::RECORD_BYTES) as usize;
        let end = start + e.len as usize * Self::RECORD_BYTES as usize;
        bytemuck::cast_slice(&self.dat.bytes()[start..end])
    }

    /// The record stored under `key`.
    pub(crate) fn get(&self, key: &R::Key) -> Option<R> {
        let records = self.bucket(bucket_of(key.as_ref(), self.log2_buckets));
        records.binary_search_by(|r| r.key().cmp(key)).ok().map(|i| records[i])
    }

    /// Every record, bucket by bucket.
    pub(crate) fn records(&self) -> impl Iterator<Item = &R> + '_ {
        (0..1u64 << self.log2_buckets).flat_map(move |b| self.bucket(b).iter())
    }

    /// The table's commitment root.
    pub(crate) fn root(&self) -> Hash {
        let top = tree::level_start(self.log2_buckets, tree::level_count(self.log2_buckets) - 1);
        tree::read_node(self.tree.bytes(), top)
    }

    /// The sibling path of `bucket`.
    pub(crate) fn siblings(&self, bucket: u64) -> Vec<[Hash; 3]> {
        tree::siblings(self.tree.bytes(), self.log2_buckets, bucket)
    }

    /// Plans `changes` (`None` deletes; keys unique, any order). `keep` says which per-key
    /// records the caller needs (the others stay empty: a bulk load of millions of keys must not
    /// pay for bookkeeping nobody reads).
    pub(crate) fn plan(&self, changes: Vec<(R::Key, Option<R>)>, keep: Keep) -> TablePlan<R> {
        let log2 = self.log2_buckets;
        // Sort `(bucket, index)` pairs rather than the changes themselves: 16 bytes a change
        // instead of a second copy of every record.
        let with_bucket =
            |(i, (k, _)): (usize, &(R::Key, Option<R>))| (bucket_of(k.as_ref(), log2), i);
        let order = |a: &(u64, usize), b: &(u64, usize)| {
            a.0.cmp(&b.0).then_with(|| changes[a.1].0.cmp(&changes[b.1].0))
        };
        let mut items: Vec<(u64, usize)>;
        if changes.len() >= PARALLEL_BUCKETS {
            items = changes.par_iter().enumerate().map(with_bucket).collect();
            items.par_sort_unstable_by(order);
        } else {
            items = changes.iter().enumerate().map(with_bucket).collect();
            items.sort_unstable_by(order);
        }
        let groups: Vec<&[(u64, usize)]> = items.chunk_by(|a, b| a.0 == b.0).collect();
        let rebuild = |tasks: &[&[(u64, usize)]]| {
            let changed: usize = tasks.iter().map(|g| g.len()).sum();
            let stored: usize = tasks.iter().map(|g| self.entry(g[0].0).len as usize).sum();
            let mut out = Rebuilt {
                buckets: Vec::with_capacity(tasks.len()),
                records: Vec::with_capacity(changed + stored),
                old: Vec::with_capacity(if keep.old { changed } else { 0 }),
                presence: Vec::with_capacity(if keep.presence { changed } else { 0 }),
            };
            for g in tasks {
                self.rebuild(g, &changes, keep, &mut out);
            }
            out
        };
        let rebuilt: Vec<Rebuilt<R>> = if groups.len() >= PARALLEL_BUCKETS {
            groups.par_chunks(BUCKETS_PER_TASK).map(rebuild).collect()
        } else {
            vec![rebuild(&groups)]
        };
        let buckets = groups.len();
        drop(groups);
        drop(items);
        drop(changes);

        let records: usize = rebuilt.iter().map(|t| t.records.len()).sum();
        let mut dat = Writes::with_capacity(buckets, records * Self::RECORD_BYTES as usize);
        let mut dir = Writes::with_capacity(buckets, buckets * DIR_ENTRY_BYTES as usize);
        let mut used = self.used_records;
        let mut count = self.count;
        let mut leaves = Vec::with_capacity(buckets);
        let mut old = Vec::new();
        let mut presence = Vec::new();
        for task in rebuilt {
            let mut start = 0;
            for (bucket, end, hash) in task.buckets {
                let records = &task.records[start..end];
                start = end;
                let e = self.entry(bucket);
                let len = records.len() as u32;
                count = count + len as u64 - e.len as u64;
                let mut entry = DirEntry { len, ..e };
                if len > e.capacity {
                    entry.capacity = len.next_power_of_two().max(MIN_SEGMENT_RECORDS);
                    entry.offset = used;
                    used += entry.capacity as u64;
                }
                if len > 0 {
                    let offset = entry.offset * Self::RECORD_BYTES;
                    dat.push(TableFile::Dat, offset, bytemuck::cast_slice(records));
                }
                if entry != e {
                    dir.push(TableFile::Dir, bucket * DIR_ENTRY_BYTES, bytemuck::bytes_of(&entry));
                }
                leaves.push((bucket, hash));
            }
            old.extend(task.old);
            presence.extend(task.presence);
        }
        let up = tree::update(self.tree.bytes(), log2, leaves);
        let mut writes = dat;
        writes.data.reserve(dir.data.len() + up.nodes.len() * 32);
        for w in dir.writes {
            writes.push(w.file, w.offset, &dir.data[w.start..w.start + w.len]);
        }
        for (i, h) in &up.nodes {
            writes.push(TableFile::Tree, i * 32, h);
        }
        TablePlan {
            writes: writes.writes,
            data: writes.data,
            old,
            presence,
            used_records: used,
            count,
            root: up.root,
        }
    }

    /// Rebuilds the bucket of `group` (indices into `changes`, sorted by key) into `out`.
    fn rebuild(
        &self,
        group: &[(u64, usize)],
        changes: &[(R::Key, Option<R>)],
        keep: Keep,
        out: &mut Rebuilt<R>,
    ) {
        let bucket = group[0].0;
        let current = self.bucket(bucket);
        let first = out.records.len();
        let records = &mut out.records;
        let mut i = 0;
        for (_, index) in group {
            let (key, new) = &changes[*index];
            while i < current.len() && current[i].key() < *key {
                records.push(current[i]);
                i += 1;
            }
            let before = if i < current.len() && current[i].key() == *key {
                i += 1;
                Some(current[i - 1])
            } else {
                None
            };
            if keep.old {
                out.old.push((*key, before));
            }
            if keep.presence {
                out.presence.push((*key, before.is_some(), new.is_some()));
            }
            if let Some(r) = new {
                debug_assert_eq!(r.key(), *key);
                records.push(*r);
            }
        }
        records.extend_from_slice(&current[i..]);
        let hash = tree::bucket_hash(records[first..].iter().map(|r| r.committed()));
        out.buckets.push((bucket, records.len(), hash));
    }

    /// The bytes a write would overwrite in the durable part of the file (what a rollback must
    /// restore); `None` when the write lands only on space no checkpoint uses yet.
    pub(crate) fn pre_image(&self, w: &Write) -> Option<Vec<u8>> {
        let (bytes, durable) = match w.file {
            TableFile::Dir => (self.dir.bytes(), self.dir.len()),
            TableFile::Tree => (self.tree.bytes(), self.tree.len()),
            TableFile::Dat => (self.dat.bytes(), self.used_records * Self::RECORD_BYTES),
        };
        if w.offset >= durable {
            return None;
        }
        let end = (w.offset + w.len as u64).min(durable);
        Some(bytes[w.offset as usize..end as usize].to_vec())
    }

    /// Writes `bytes` at `offset` of `file`, growing it as needed.
    pub(crate) fn write(
        &mut self,
        file: TableFile,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), FileError> {
        let f = match file {
            TableFile::Dir => &mut self.dir,
            TableFile::Dat => &mut self.dat,
            TableFile::Tree => &mut self.tree,
        };
        f.ensure_len(offset + bytes.len() as u64)?;
        f.bytes_mut()[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Applies a plan's writes and bookkeeping.
    pub(crate) fn apply(&mut self, plan: &TablePlan<R>) -> Result<(), FileError> {
        self.dat.ensure_len(plan.used_records * Self::RECORD_BYTES)?;
        for w in &plan.writes {
            self.write(w.file, w.offset, plan.bytes(w))?;
        }
        self.used_records = plan.used_records;
        self.count = plan.count;
        Ok(())
    }

    /// Makes every write so far durable.
    pub(crate) fn flush(&self) -> Result<(), FileError> {
        self.dir.flush()?;
        self.dat.flush()?;
        self.tree.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn slot(a: u8, s: u8, v: u8) -> SlotRecord {
        SlotRecord { address: [a; 20], slot: [s; 32], value: [v; 32] }
    }

    fn naive_root(t: &Table<SlotRecord>) -> Hash {
        let hashes: Vec<Hash> = (0..1u64 << t.log2_buckets)
            .map(|b| tree::bucket_hash(t.bucket(b).iter().map(|r| r.committed())))
            .collect();
        tree::naive_root(&hashes)
    }

    proptest! {
        /// Random batches applied to a small table (so buckets overflow and move) read back like
        /// a BTreeMap, across reopen, and the incremental root equals a from-scratch root.
        #[test]
        fn table_matches_model(batches in proptest::collection::vec(
            proptest::collection::btree_map((0u8..4, 0u8..40), proptest::option::of(1u8..255), 1..60), 1..8))
        {
            let dir = tempfile::tempdir().unwrap();
            let mut t = Table::<SlotRecord>::open(dir.path(), "s", 2, 0, 0).unwrap();
            let mut model = BTreeMap::new();
            for batch in batches {
                let changes: Vec<_> = batch.iter()
                    .map(|((a, s), v)| (slot(*a, *s, 0).key(), v.map(|v| slot(*a, *s, v))))
                    .collect();
                let plan = t.plan(changes, Keep::ALL);
                for (k, was, _) in &plan.presence {
                    prop_assert_eq!(*was, model.contains_key(k));
                }
                t.apply(&plan).unwrap();
                for ((a, s), v) in batch {
                    let k = slot(a, s, 0).key();
                    match v { Some(v) => { model.insert(k, slot(a, s, v)); } None => { model.remove(&k); } }
                }
                prop_assert_eq!(t.root(), plan.root);
                prop_assert_eq!(t.count(), model.len() as u64);
                let (used, count) = (t.used_records(), t.count());
                t.flush().unwrap();
                drop(t);
                t = Table::open(dir.path(), "s", 2, used, count).unwrap();
                for (k, r) in &model {
                    prop_assert_eq!(t.get(k), Some(*r));
                }
                prop_assert_eq!(t.records().count(), model.len());
                prop_assert_eq!(t.root(), naive_root(&t));
            }
        }
    }
}
