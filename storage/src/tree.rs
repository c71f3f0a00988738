//! The state commitment: a static, fixed-shape tree over the buckets of a table, in the manner of
//! MegaETH's SALT, hashed with keccak256.
//!
//! A table has `4^k` buckets. Level 0 holds one hash per bucket (keccak256 of the bucket's records,
//! sorted by key); each level above holds one hash per four children; the single node of the top
//! level is the table's root. An all-zero hash stands for an empty bucket or an empty subtree,
//! so a fresh tree is an all-zero (sparse) file and never needs initialising.
//!
//! Fan-out 4 because keccak256 absorbs 136 bytes per permutation: four 32-byte children cost one
//! permutation, the same as two, so the tree is half as deep as a binary one for the same cost per
//! node. A block that changes `m` keys rehashes at most `m` buckets and their paths, so the root
//! costs O(m · depth) hashes, independent of the state's size. Each level is hashed in parallel.

use crate::{
    keccak::{keccak256_128x8, LANES},
    table::prefetch,
};
use alloy_primitives::{keccak256, Keccak256};
use rayon::prelude::*;

/// Children per node.
pub(crate) const FANOUT: u64 = 4;
/// A node or bucket hash.
pub(crate) type Hash = [u8; 32];
/// The hash of an empty bucket or subtree.
pub(crate) const EMPTY: Hash = [0; 32];
/// Below this many nodes a level is hashed on the calling thread (spawning costs more).
const PARALLEL_NODES: usize = 256;
/// Parent nodes hashed per parallel task.
const NODES_PER_TASK: usize = 512;

/// Number of levels of a tree over `2^log2_buckets` buckets, the buckets' own level included.
pub(crate) fn level_count(log2_buckets: u32) -> usize {
    (log2_buckets / 2) as usize + 1
}

/// Index of the first node of `level` in the tree file (levels are stored bottom-up).
pub(crate) fn level_start(log2_buckets: u32, level: usize) -> u64 {
    (0..level).map(|l| 1u64 << (log2_buckets - 2 * l as u32)).sum()
}

/// Total nodes in the tree.
pub(crate) fn node_count(log2_buckets: u32) -> u64 {
    level_start(log2_buckets, level_count(log2_buckets))
}

/// keccak256 over a bucket's records (their committed bytes, in key order); empty buckets hash
/// to [`EMPTY`].
pub(crate) fn bucket_hash<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Hash {
    let mut hasher = Keccak256::new();
    let mut empty = true;
    for r in records {
        hasher.update(r);
        empty = false;
    }
    if empty {
        EMPTY
    } else {
        hasher.finalize().0
    }
}

/// The hash of a node from its four children.
pub(crate) fn node_hash(children: &[Hash; 4]) -> Hash {
    if children.iter().all(|c| *c == EMPTY) {
        return EMPTY;
    }
    let mut buf = [0u8; 128];
    for (chunk, c) in buf.chunks_exact_mut(32).zip(children) {
        chunk.copy_from_slice(c);
    }
    keccak256(buf).0
}

/// Hashes the parent of each family of changed siblings (`families[i]`: the changed children of
/// one parent, sorted) into `out[i]` as `(parent index in its level, hash)`, several parents per
/// permutation where the CPU allows ([`crate::keccak`]). `start` is the children's level start.
fn hash_parents(file: &[u8], start: u64, families: &[&[(u64, Hash)]], out: &mut [(u64, Hash)]) {
    let mut inputs = [[0u8; 128]; LANES];
    let mut digests = [EMPTY; LANES];
    for (batch, (families_now, out)) in
        families.chunks(LANES).zip(out.chunks_mut(LANES)).enumerate()
    {
        // The next batch's four-child groups are scattered over the level: start loading them.
        for family in families.iter().skip((batch + 1) * LANES).take(LANES) {
            let first = (start + family[0].0 / FANOUT * FANOUT) as usize * 32;
            prefetch(file, first);
            prefetch(file, first + 64);
        }
        let families = families_now;
        for (family, input) in families.iter().zip(inputs.iter_mut()) {
            let first = (start + family[0].0 / FANOUT * FANOUT) as usize * 32;
            input.copy_from_slice(&file[first..first + 128]);
            for (i, h) in family.iter() {
                let at = (i % FANOUT) as usize * 32;
                input[at..at + 32].copy_from_slice(h);
            }
        }
        // A short last batch hashes the previous batch's leftovers too; they are not used.
        keccak256_128x8(&inputs, &mut digests);
        for (k, (family, o)) in families.iter().zip(out).enumerate() {
            // Four empty children (no memcmp call: word-wise, which vectorises).
            let empty = inputs[k].chunks_exact(8).all(|w| w == [0u8; 8]);
            *o = (family[0].0 / FANOUT, if empty { EMPTY } else { digests[k] });
        }
    }
}

/// Reads node `index` (global) from the tree file's bytes.
pub(crate) fn read_node(file: &[u8], index: u64) -> Hash {
    let at = index as usize * 32;
    file[at..at + 32].try_into().expect("32 bytes")
}

/// New node hashes after some buckets changed.
pub(crate) struct TreeUpdate {
    /// `(global node index, hash)` of the nodes that changed, buckets included: one vector per
    /// level, bottom-up, each sorted by index. Kept as built (no copy into one list).
    pub(crate) levels: Vec<Vec<(u64, Hash)>>,
    /// The new root.
    pub(crate) root: Hash,
}

impl TreeUpdate {
    /// Every changed node, level by level.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &(u64, Hash)> {
        self.levels.iter().flatten()
    }

    /// How many nodes changed.
    pub(crate) fn len(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }
}

/// Recomputes the paths above `buckets` (`(bucket, new hash)`, sorted by bucket, unique) over the
/// tree stored in `file`, without writing it.
pub(crate) fn update(file: &[u8], log2_buckets: u32, buckets: Vec<(u64, Hash)>) -> TreeUpdate {
    let levels = level_count(log2_buckets);
    let mut done = Vec::with_capacity(levels);
    let mut changed = buckets;
    for level in 0..levels - 1 {
        let start = level_start(log2_buckets, level);
        // The changed children of one parent are adjacent (sorted by index).
        let mut families: Vec<&[(u64, Hash)]> = Vec::with_capacity(changed.len());
        families.extend(changed.chunk_by(|a, b| a.0 / FANOUT == b.0 / FANOUT));
        let mut next = vec![(0, EMPTY); families.len()];
        if families.len() >= PARALLEL_NODES {
            next.par_chunks_mut(NODES_PER_TASK)
                .zip(families.par_chunks(NODES_PER_TASK))
                .for_each(|(out, families)| hash_parents(file, start, families, out));
        } else {
            hash_parents(file, start, &families, &mut next);
        }
        drop(families);
        // From level-local to global indices, in place.
        for (i, _) in &mut changed {
            *i += start;
        }
        done.push(std::mem::replace(&mut changed, next));
    }
    let top = level_start(log2_buckets, levels - 1);
    let root = match changed.first() {
        Some((_, h)) => *h,
        None => read_node(file, top),
    };
    for (i, _) in &mut changed {
        *i += top;
    }
    done.push(changed);
    TreeUpdate { levels: done, root }
}

/// The siblings on the path from `bucket` to the root, bottom-up: for each level, the three other
/// children of the node's parent, in child order.
pub(crate) fn siblings(file: &[u8], log2_buckets: u32, bucket: u64) -> Vec<[Hash; 3]> {
    let mut out = Vec::new();
    let mut index = bucket;
    for level in 0..level_count(log2_buckets) - 1 {
        let start = level_start(log2_buckets, level);
        let first = index / FANOUT * FANOUT;
        let mut s = [EMPTY; 3];
        let mut k = 0;
        for i in first..first + FANOUT {
            if i != index {
                s[k] = read_node(file, start + i);
                k += 1;
            }
        }
        out.push(s);
        index /= FANOUT;
    }
    out
}

/// Folds a bucket hash up its sibling path to the root it implies.
pub(crate) fn fold(bucket: u64, bucket_hash: Hash, siblings: &[[Hash; 3]]) -> Hash {
    let mut hash = bucket_hash;
    let mut index = bucket;
    for s in siblings {
        let pos = (index % FANOUT) as usize;
        let mut children = [EMPTY; 4];
        let mut k = 0;
        for (i, c) in children.iter_mut().enumerate() {
            if i == pos {
                *c = hash;
            } else {
                *c = s[k];
                k += 1;
            }
        }
        hash = node_hash(&children);
        index /= FANOUT;
    }
    hash
}

/// The root of a tree computed from scratch over every bucket hash (the reference the
/// incremental [`update`] is tested against).
#[cfg(test)]
pub(crate) fn naive_root(bucket_hashes: &[Hash]) -> Hash {
    let mut level = bucket_hashes.to_vec();
    while level.len() > 1 {
        level =
            level.chunks(FANOUT as usize).map(|c| node_hash(&[c[0], c[1], c[2], c[3]])).collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(file: &mut [u8], update: &TreeUpdate) {
        for (i, h) in update.nodes() {
            file[*i as usize * 32..*i as usize * 32 + 32].copy_from_slice(h);
        }
    }

    #[test]
    fn shape() {
        assert_eq!(level_count(4), 3);
        assert_eq!(node_count(4), 16 + 4 + 1);
        assert_eq!(level_start(4, 2), 20);
        assert_eq!(node_count(0), 1);
    }

    proptest! {
        /// Incremental updates, applied one batch after another, give the root recomputed from
        /// scratch, and every bucket's sibling path folds to it.
        #[test]
        fn incremental_equals_naive(batches in proptest::collection::vec(
            proptest::collection::btree_map(0u64..64, any::<u8>(), 0..20), 1..6))
        {
            let log2 = 6;
            let mut file = vec![0u8; node_count(log2) as usize * 32];
            let mut leaves = vec![EMPTY; 64];
            let mut root = EMPTY;
            for batch in batches {
                let changes: Vec<(u64, Hash)> = batch.iter().map(|(b, v)| {
                    let h = if *v == 0 { EMPTY } else { keccak256([*v]).0 };
                    (*b, h)
                }).collect();
                for (b, h) in &changes { leaves[*b as usize] = *h; }
                let up = update(&file, log2, changes);
                apply(&mut file, &up);
                root = up.root;
                prop_assert_eq!(root, naive_root(&leaves));
            }
            for b in 0..64u64 {
                prop_assert_eq!(fold(b, leaves[b as usize], &siblings(&file, log2, b)), root);
            }
        }
    }
}
