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
    keccak,
    mapped::{FileError, MappedFile},
    tree::{self, Hash},
};
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;
use std::{cmp::Ordering, marker::PhantomData, ops::Range, path::Path};
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
    /// The record's key compared with `key` (what bucket searches and merges run on).
    fn cmp_key(&self, key: &Self::Key) -> Ordering {
        self.key().cmp(key)
    }
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
    fn cmp_key(&self, key: &[u8; 20]) -> Ordering {
        cmp_bytes(&self.address, key)
    }
}

/// Orders byte strings as `[u8]::cmp` does, eight bytes at a time and without a `memcmp` call:
/// bucket merges compare every stored record with a key, and keys are short.
fn cmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let words = a.len().min(b.len()) / 8;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_be_bytes(x.try_into().expect("eight bytes"));
        let y = u64::from_be_bytes(y.try_into().expect("eight bytes"));
        if x != y {
            return x.cmp(&y);
        }
    }
    for (x, y) in a[words * 8..].iter().zip(&b[words * 8..]) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
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
    fn cmp_key(&self, key: &SlotKey) -> Ordering {
        // Without assembling the 52-byte key first.
        cmp_bytes(&self.address, &key[..20]).then_with(|| cmp_bytes(&self.slot, &key[20..]))
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

/// Hints the CPU to start loading the cache line of `bytes[at]` (nothing if `at` is out of range).
pub(crate) fn prefetch(bytes: &[u8], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(byte) = bytes.get(at) {
        // SAFETY: a prefetch never faults and changes no memory; the address is in `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (byte as *const u8).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, at);
}

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
///
/// Planning computes the new buckets, their hashes and the new root (what the sequencer waits
/// for); the byte-level writes are laid out later, by [`Self::writes`], on the checkpoint thread.
pub(crate) struct TablePlan<R: Record> {
    /// The table's bucket count (log2).
    log2_buckets: u32,
    /// The rebuilt buckets, in bucket order across tasks.
    rebuilt: Vec<Rebuilt<R>>,
    /// Each rebuilt bucket's directory entry after the plan, and whether it changed.
    entries: Vec<(DirEntry, bool)>,
    /// The tree nodes that changed, buckets included.
    nodes: tree::TreeUpdate,
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
    /// The plan's new record of `key`, if it stores one: for adjusting bookkeeping the
    /// commitment does not cover (the bucket hashes are already taken).
    pub(crate) fn record_mut(&mut self, key: &R::Key) -> Option<&mut R> {
        let bucket = bucket_of(key.as_ref(), self.log2_buckets);
        let t =
            self.rebuilt.partition_point(|t| t.buckets.last().is_some_and(|b| b.bucket < bucket));
        let task = self.rebuilt.get_mut(t)?;
        let i = task.buckets.binary_search_by_key(&bucket, |b| b.bucket).ok()?;
        let start = if i == 0 { 0 } else { task.buckets[i - 1].end };
        let records = &mut task.records[start..task.buckets[i].end];
        let j = records.binary_search_by(|r| r.cmp_key(key)).ok()?;
        Some(&mut records[j])
    }

    /// [`Self::writes`], then frees the rebuilt buckets and nodes (the writes hold their bytes
    /// now), so a checkpoint never holds both copies for long.
    pub(crate) fn take_writes(&mut self) -> PlanWrites {
        let writes = self.writes();
        self.rebuilt = Vec::new();
        self.entries = Vec::new();
        self.nodes.levels = Vec::new();
        writes
    }

    /// The writes that carry out the plan: bucket segments, then directory entries, then tree
    /// nodes, each run of adjacent writes merged (up to [`MAX_MERGED_WRITE`] bytes).
    pub(crate) fn writes(&self) -> PlanWrites {
        let records: usize = self.rebuilt.iter().map(|t| t.records.len()).sum();
        let record_bytes = std::mem::size_of::<R>();
        let mut out = PlanWrites::with_capacity(
            self.entries.len() * 2 + self.nodes.len(),
            records * record_bytes
                + self.entries.len() * DIR_ENTRY_BYTES as usize
                + self.nodes.len() * 32,
        );
        let mut entries = self.entries.iter();
        for task in &self.rebuilt {
            for ((_, range), (entry, _)) in task.bucket_ranges().zip(entries.by_ref()) {
                let records = &task.records[range];
                if !records.is_empty() {
                    let offset = entry.offset * record_bytes as u64;
                    out.push(TableFile::Dat, offset, bytemuck::cast_slice(records));
                }
            }
        }
        let buckets = self.rebuilt.iter().flat_map(|t| t.buckets.iter().map(|b| b.bucket));
        for (bucket, (entry, changed)) in buckets.zip(&self.entries) {
            if *changed {
                out.push(TableFile::Dir, bucket * DIR_ENTRY_BYTES, bytemuck::bytes_of(entry));
            }
        }
        for (i, h) in self.nodes.nodes() {
            out.push(TableFile::Tree, i * 32, h);
        }
        out
    }
}

/// A plan's writes, with their bytes in one buffer; adjacent writes are merged.
pub(crate) struct PlanWrites {
    /// The writes, in the order they are journaled and applied.
    pub(crate) writes: Vec<Write>,
    data: Vec<u8>,
}

impl PlanWrites {
    fn with_capacity(writes: usize, bytes: usize) -> Self {
        Self { writes: Vec::with_capacity(writes), data: Vec::with_capacity(bytes) }
    }

    /// The bytes `w` writes.
    pub(crate) fn bytes(&self, w: &Write) -> &[u8] {
        &self.data[w.start..w.start + w.len]
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

/// One rebuilt bucket.
struct RebuiltBucket {
    bucket: u64,
    /// End of its records in [`Rebuilt::records`] (they start where the previous bucket's end).
    end: usize,
    /// Its hash over the new records.
    hash: Hash,
    /// Its directory entry before the plan (read once, when the bucket was rebuilt).
    stored: DirEntry,
}

/// Rebuilt buckets, in bucket order, with their records in one vector.
struct Rebuilt<R: Record> {
    buckets: Vec<RebuiltBucket>,
    records: Vec<R>,
    old: Vec<(R::Key, Option<R>)>,
    presence: Vec<(R::Key, bool, bool)>,
}

impl<R: Record> Rebuilt<R> {
    /// Each bucket with the range of its records in `records`.
    fn bucket_ranges(&self) -> impl Iterator<Item = (&RebuiltBucket, Range<usize>)> {
        let mut start = 0;
        self.buckets.iter().map(move |b| {
            let range = start..b.end;
            start = b.end;
            (b, range)
        })
    }
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
        self.records_of(self.entry(bucket))
    }

    /// The records a directory entry points at.
    fn records_of(&self, e: DirEntry) -> &[R] {
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
        records.binary_search_by(|r| r.cmp_key(key)).ok().map(|i| records[i])
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
    #[cfg(test)]
    pub(crate) fn plan(&self, changes: Vec<(R::Key, Option<R>)>, keep: Keep) -> TablePlan<R> {
        self.plan_with(changes, |c| c.0, |c, _| c.1, keep)
    }

    /// Plans `changes` of keys `key_of(change)` (unique, any order) whose new records
    /// (`new_of(change, stored record)`, `None` deletes) may depend on what is stored: each
    /// bucket is read once, when it is rebuilt, instead of once to compute the change and again
    /// to apply it (on a large table, each read is a cache miss).
    pub(crate) fn plan_with<C: Copy + Send + Sync>(
        &self,
        changes: Vec<C>,
        key_of: impl Fn(&C) -> R::Key + Sync,
        new_of: impl Fn(&C, Option<&R>) -> Option<R> + Sync,
        keep: Keep,
    ) -> TablePlan<R> {
        let log2 = self.log2_buckets;
        let parallel = changes.len() >= PARALLEL_BUCKETS;
        // Sort `(bucket, index)` pairs (16 bytes, plain integer keys) rather than the changes,
        // then gather the changes into that order once: the rebuild below then reads them in
        // sequence instead of taking a cache miss per key.
        let with_bucket = |(i, c): (usize, &C)| (bucket_of(key_of(c).as_ref(), log2), i);
        let mut order: Vec<(u64, usize)>;
        let mut sorted: Vec<(u64, C)>;
        if parallel {
            order = changes.par_iter().enumerate().map(with_bucket).collect();
            order.par_sort_unstable_by_key(|item| item.0);
            sorted = order.par_iter().map(|&(b, i)| (b, changes[i])).collect();
        } else {
            order = changes.iter().enumerate().map(with_bucket).collect();
            order.sort_unstable_by_key(|item| item.0);
            sorted = order.iter().map(|&(b, i)| (b, changes[i])).collect();
        }
        drop(order);
        drop(changes);
        // Then by key, only where keys share a bucket.
        for same_bucket in sorted.chunk_by_mut(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
            same_bucket.sort_unstable_by_key(|(_, c)| key_of(c));
        }
        let groups: Vec<&[(u64, C)]> = sorted.chunk_by(|a, b| a.0 == b.0).collect();
        let rebuild = |tasks: &[&[(u64, C)]]| {
            let changed: usize = tasks.iter().map(|g| g.len()).sum();
            // Sized without reading the directory: reading it here would take every entry's
            // cache miss one after another, before the pipeline below could overlap them.
            let mut out = Rebuilt {
                buckets: Vec::with_capacity(tasks.len()),
                records: Vec::with_capacity(changed + tasks.len() * 2),
                old: Vec::with_capacity(if keep.old { changed } else { 0 }),
                presence: Vec::with_capacity(if keep.presence { changed } else { 0 }),
            };
            // The buckets are spread over the whole table: their directory entries, then their
            // records, are cache (and TLB) misses. A software pipeline keeps a steady number of
            // them in flight: the entry of the bucket DIR_AHEAD places ahead, the records of
            // the one RECORDS_AHEAD ahead (its entry has arrived by then).
            const DIR_AHEAD: usize = 16;
            const RECORDS_AHEAD: usize = 8;
            let prefetch_dir = |g: &[(u64, C)]| {
                prefetch(self.dir.bytes(), (g[0].0 * DIR_ENTRY_BYTES) as usize);
            };
            let prefetch_records = |g: &[(u64, C)]| {
                let e = self.entry(g[0].0);
                let start = (e.offset * Self::RECORD_BYTES) as usize;
                let end = start + (e.len as usize * Self::RECORD_BYTES as usize).max(1);
                for line in (start..end).step_by(64) {
                    prefetch(self.dat.bytes(), line);
                }
            };
            tasks.iter().take(DIR_AHEAD).for_each(|g| prefetch_dir(g));
            tasks.iter().take(RECORDS_AHEAD).for_each(|g| prefetch_records(g));
            for (k, g) in tasks.iter().enumerate() {
                if let Some(ahead) = tasks.get(k + DIR_AHEAD) {
                    prefetch_dir(ahead);
                }
                if let Some(ahead) = tasks.get(k + RECORDS_AHEAD) {
                    prefetch_records(ahead);
                }
                self.rebuild(g, &key_of, &new_of, keep, &mut out);
            }
            Self::hash_buckets(&mut out);
            out
        };
        let mut rebuilt: Vec<Rebuilt<R>> = if groups.len() >= PARALLEL_BUCKETS {
            groups.par_chunks(BUCKETS_PER_TASK).map(rebuild).collect()
        } else {
            vec![rebuild(&groups)]
        };
        let buckets = groups.len();
        drop(groups);
        drop(sorted);

        // Allocation in `NAME.dat` is sequential (a grown bucket takes the next free segment),
        // so this pass is serial; it reads only what the rebuild kept.
        let mut used = self.used_records;
        let mut count = self.count;
        let mut leaves = Vec::with_capacity(buckets);
        let mut entries = Vec::with_capacity(buckets);
        let mut old = Vec::new();
        let mut presence = Vec::new();
        for task in &mut rebuilt {
            for (b, range) in task.bucket_ranges() {
                let len = range.len() as u32;
                let e = b.stored;
                count = count + len as u64 - e.len as u64;
                let mut entry = DirEntry { len, ..e };
                if len > e.capacity {
                    entry.capacity = len.next_power_of_two().max(MIN_SEGMENT_RECORDS);
                    entry.offset = used;
                    used += entry.capacity as u64;
                }
                entries.push((entry, entry != e));
                leaves.push((b.bucket, b.hash));
            }
            old.append(&mut task.old);
            presence.append(&mut task.presence);
        }
        let up = tree::update(self.tree.bytes(), log2, leaves);
        TablePlan {
            log2_buckets: log2,
            rebuilt,
            entries,
            root: up.root,
            nodes: up,
            old,
            presence,
            used_records: used,
            count,
        }
    }

    /// Rebuilds the bucket of `group` (changes sorted by key) into `out`.
    fn rebuild<C>(
        &self,
        group: &[(u64, C)],
        key_of: &impl Fn(&C) -> R::Key,
        new_of: &impl Fn(&C, Option<&R>) -> Option<R>,
        keep: Keep,
        out: &mut Rebuilt<R>,
    ) {
        let bucket = group[0].0;
        let stored = self.entry(bucket);
        let current = self.records_of(stored);
        let records = &mut out.records;
        let mut i = 0;
        for (_, change) in group {
            let key = key_of(change);
            let mut before = None;
            while let Some(r) = current.get(i) {
                match r.cmp_key(&key) {
                    Ordering::Less => records.push(*r),
                    Ordering::Equal => {
                        before = Some(*r);
                        i += 1;
                        break;
                    }
                    Ordering::Greater => break,
                }
                i += 1;
            }
            let new = new_of(change, before.as_ref());
            if keep.old {
                out.old.push((key, before));
            }
            if keep.presence {
                out.presence.push((key, before.is_some(), new.is_some()));
            }
            if let Some(r) = new {
                debug_assert_eq!(r.key(), key);
                records.push(r);
            }
        }
        records.extend_from_slice(&current[i..]);
        // Hashed by `hash_buckets` once the task's buckets are all rebuilt, eight at a time.
        out.buckets.push(RebuiltBucket { bucket, end: records.len(), hash: tree::EMPTY, stored });
    }

    /// Fills in the hashes of a task's rebuilt buckets (keccak256 of their committed bytes; an
    /// empty bucket hashes to [`tree::EMPTY`]), several buckets per permutation where the CPU
    /// allows ([`crate::keccak`]).
    fn hash_buckets(out: &mut Rebuilt<R>) {
        let ranges: Vec<Range<usize>> = out.bucket_ranges().map(|(_, range)| range).collect();
        // Buckets of equal length in blocks are hashed together (a batch runs as many
        // permutations as its longest message needs); empty ones keep the EMPTY hash.
        let blocks = |i: &usize| ranges[*i].len() * R::COMMITTED_BYTES / keccak::RATE;
        let mut order: Vec<usize> = (0..ranges.len()).filter(|i| !ranges[*i].is_empty()).collect();
        order.sort_unstable_by_key(blocks);
        let mut messages = keccak::PaddedMessages::with_capacity(
            out.records.len() * R::COMMITTED_BYTES,
            order.len(),
        );
        for i in &order {
            messages.push(out.records[ranges[*i].clone()].iter().map(Record::committed));
        }
        let mut digests = vec![tree::EMPTY; order.len()];
        messages.hash_all(&mut digests);
        for (i, digest) in order.iter().zip(digests) {
            out.buckets[*i].hash = digest;
        }
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

    /// Applies a plan's writes (`writes`, from [`TablePlan::writes`]) and bookkeeping.
    pub(crate) fn apply(
        &mut self,
        plan: &TablePlan<R>,
        writes: &PlanWrites,
    ) -> Result<(), FileError> {
        self.dat.ensure_len(plan.used_records * Self::RECORD_BYTES)?;
        for w in &writes.writes {
            self.write(w.file, w.offset, writes.bytes(w))?;
        }
        self.used_records = plan.used_records;
        self.count = plan.count;
        Ok(())
    }

    /// Faults in the pages `writes` will touch (see [`MappedFile::prefault_write`]), so that
    /// [`Self::apply`] under the tables' write lock is a plain copy.
    ///
    /// Writes that touch the same or adjacent pages share one call (tens of thousands of writes
    /// at a 10k-transaction block, most of them tree nodes next to each other); a page no write
    /// touches is never included, since prefaulting it would make it dirty.
    pub(crate) fn prefault(&self, writes: &PlanWrites) {
        const PAGE: u64 = 4096;
        let file = |f: TableFile| match f {
            TableFile::Dir => &self.dir,
            TableFile::Dat => &self.dat,
            TableFile::Tree => &self.tree,
        };
        // (file, first page, last page) of the run being gathered.
        let mut run: Option<(TableFile, u64, u64)> = None;
        let flush = |(f, first, last): (TableFile, u64, u64)| {
            file(f).prefault_write(first * PAGE, ((last - first + 1) * PAGE) as usize);
        };
        for w in writes.writes.iter().filter(|w| w.len > 0) {
            let (first, last) = (w.offset / PAGE, (w.offset + w.len as u64 - 1) / PAGE);
            run = match run {
                Some((f, a, b)) if f == w.file && first <= b + 1 && last + 1 >= a => {
                    Some((f, a.min(first), b.max(last)))
                }
                Some(done) => {
                    flush(done);
                    Some((w.file, first, last))
                }
                None => Some((w.file, first, last)),
            };
        }
        if let Some(done) = run {
            flush(done);
        }
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
        /// The fast byte order is the slice order, for keys that share prefixes of any length.
        #[test]
        fn cmp_bytes_is_slice_order(prefix in proptest::collection::vec(any::<u8>(), 0..12),
                                    a in proptest::collection::vec(any::<u8>(), 0..24),
                                    b in proptest::collection::vec(any::<u8>(), 0..24)) {
            let a = [prefix.clone(), a].concat();
            let b = [prefix, b].concat();
            prop_assert_eq!(cmp_bytes(&a, &b), a.cmp(&b));
        }

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
                t.apply(&plan, &plan.writes()).unwrap();
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
