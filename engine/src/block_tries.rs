//! The open block's transactions and receipts tries, built as its transactions are included,
//! mini-block by mini-block, instead of all at once when the block is sealed (where, at a few
//! thousand transactions per block, they cost the tick that holds the seal ~12 ms).
//!
//! Both tries are keyed by the RLP encoding of the transaction index, and a trie is built in key
//! order. RLP(0) is `0x80`, so the key order is 1, 2, …, 127, 0, 128, 129, …: every index can be
//! added the moment its transaction is included, except index 0, which waits for index 128 (or
//! for the seal). The roots equal alloy's `calculate_transaction_root` and
//! `calculate_receipt_root`; the sequencer falls back to those whenever the tries did not see
//! exactly the block's transactions.

use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::B256;
use alloy_trie::{HashBuilder, Nibbles};

/// The last index whose key sorts before index 0's.
const LAST_BEFORE_ZERO: usize = 0x7f;

/// One ordered trie (transactions or receipts) being built.
#[derive(Default)]
struct OrderedTrie {
    builder: HashBuilder,
    /// Index 0's encoded item, until its turn in key order.
    first: Option<Vec<u8>>,
}

impl OrderedTrie {
    fn add(&mut self, index: usize, item: Vec<u8>) {
        if index == 0 {
            self.first = Some(item);
            return;
        }
        if index == LAST_BEFORE_ZERO + 1 {
            self.add_first();
        }
        self.add_leaf(index, &item);
    }

    fn add_first(&mut self) {
        if let Some(first) = self.first.take() {
            self.add_leaf(0, &first);
        }
    }

    fn add_leaf(&mut self, index: usize, item: &[u8]) {
        let key = alloy_rlp::encode_fixed_size(&index);
        self.builder.add_leaf(Nibbles::unpack(&key), item);
    }

    fn root(mut self) -> B256 {
        self.add_first();
        self.builder.root()
    }
}

/// The transactions and receipts tries of one block, fed in inclusion order.
#[derive(Default)]
pub(crate) struct BlockTries {
    /// The block these tries belong to.
    block: u64,
    /// Transactions fed so far.
    fed: usize,
    transactions: OrderedTrie,
    receipts: OrderedTrie,
}

impl BlockTries {
    /// Empty tries for block `block`.
    pub(crate) fn new(block: u64) -> Self {
        Self { block, ..Self::default() }
    }

    /// Adds the next transaction of block `block` (index `index`) and its receipt; index 0
    /// starts the tries over for `block`. Returns false, adding nothing, when it is not the next
    /// one these tries expect (another block, or a gap): [`Self::roots`] then reports them as
    /// unusable.
    pub(crate) fn add(
        &mut self,
        block: u64,
        index: usize,
        tx: &impl Encodable2718,
        receipt: &impl Encodable2718,
    ) -> bool {
        if index == 0 {
            *self = Self::new(block);
        } else if block != self.block || index != self.fed {
            self.fed = usize::MAX;
            return false;
        }
        self.transactions.add(index, tx.encoded_2718());
        self.receipts.add(index, receipt.encoded_2718());
        self.fed += 1;
        true
    }

    /// The two roots, if these tries saw exactly the `count` transactions of block `block`.
    pub(crate) fn roots(self, block: u64, count: usize) -> Option<(B256, B256)> {
        (self.block == block && self.fed == count)
            .then(|| (self.transactions.root(), self.receipts.root()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::proofs::ordered_trie_root_with_encoder;
    use proptest::prelude::*;

    /// An item that encodes as its own bytes.
    struct Raw(Vec<u8>);

    impl alloy_eips::Typed2718 for Raw {
        fn ty(&self) -> u8 {
            0
        }
    }

    impl Encodable2718 for Raw {
        fn type_flag(&self) -> Option<u8> {
            None
        }
        fn encode_2718_len(&self) -> usize {
            self.0.len()
        }
        fn encode_2718(&self, out: &mut dyn alloy_rlp::BufMut) {
            out.put_slice(&self.0);
        }
    }

    proptest! {
        /// Fed one transaction at a time (as mini-blocks feed them), the tries give alloy's
        /// ordered-trie roots for every count around the index-0 boundary and beyond.
        #[test]
        fn equals_alloy_ordered_root(count in prop_oneof![0usize..140, 120usize..400], seed in any::<u64>()) {
            let items: Vec<Raw> = (0..count)
                .map(|i| Raw((0..(i as u64 ^ seed) % 90 + 1).map(|b| (b ^ seed ^ i as u64) as u8).collect()))
                .collect();
            let receipts: Vec<Raw> = items.iter().map(|r| Raw(r.0.iter().rev().copied().collect())).collect();
            let mut tries = BlockTries::new(7);
            for (i, (tx, receipt)) in items.iter().zip(&receipts).enumerate() {
                prop_assert!(tries.add(7, i, tx, receipt));
            }
            let (t, r) = tries.roots(7, count).expect("complete");
            prop_assert_eq!(t, ordered_trie_root_with_encoder(&items, |x, buf| x.encode_2718(buf)));
            prop_assert_eq!(r, ordered_trie_root_with_encoder(&receipts, |x, buf| x.encode_2718(buf)));
        }
    }

    #[test]
    fn a_gap_or_another_block_makes_them_unusable() {
        let item = Raw(vec![1, 2, 3]);
        let mut tries = BlockTries::new(1);
        assert!(tries.add(1, 0, &item, &item));
        assert!(!tries.add(1, 2, &item, &item));
        assert!(!tries.add(1, 1, &item, &item));
        assert_eq!(tries.roots(1, 2), None);
        // Index 0 starts over, whatever came before; a later index of another block does not.
        let mut other = BlockTries::new(1);
        assert!(other.add(2, 0, &item, &item));
        assert!(other.roots(2, 1).is_some());
        let mut other = BlockTries::new(1);
        assert!(!other.add(2, 3, &item, &item));
        assert_eq!(other.roots(2, 0), None);
        assert!(BlockTries::new(3).roots(4, 0).is_none());
        assert!(BlockTries::new(3).roots(3, 0).is_some());
    }
}
