//! The batch format: what one L1 post carries, enough to re-execute its blocks from nothing.
//!
//! A batch is a run of consecutive sealed EVM blocks, each as its RLP header and its transactions
//! in EIP-2718 encoding (senders, receipts and state are all recomputed by the verifier). The
//! batch that starts at block 0 also carries the genesis record: chain id, the shape of the state
//! commitment (bucket counts) and the genesis state, so the chain can be rebuilt from L1 alone.
//!
//! Layout before compression (integers little-endian, byte strings length-prefixed, see
//! [`strobe_engine::storage::codec`]):
//!
//! ```text
//! "STRB" version:u8 first_block:u64 has_genesis:bool [genesis] block_count:u32 block*
//! genesis = chain_id:u64 accounts_log2:u32 slots_log2:u32 StateDiff
//! block   = header_rlp:bytes tx_count:u32 tx_2718:bytes*
//! ```
//!
//! The whole is compressed with zstd; decompression is bounded by [`MAX_BATCH_RAW_BYTES`] so a
//! hostile post cannot exhaust the verifier's memory.

use alloy::eips::eip2718::Encodable2718;
use alloy_consensus::Header;
use alloy_primitives::Bytes;
use alloy_rlp::{Decodable, Encodable};
use strobe_engine::{
    chain::SealedBlock,
    storage::{
        codec::{DecodeError, Decoder, Encoder},
        StateDiff, StoreOptions,
    },
};

/// First bytes of every batch.
pub const BATCH_MAGIC: &[u8; 4] = b"STRB";
/// Version of the layout above.
pub const BATCH_VERSION: u8 = 1;
/// Largest batch accepted after decompression.
pub const MAX_BATCH_RAW_BYTES: usize = 256 << 20;
/// zstd level: batches are written once and read by every verifier, so spend CPU on size.
pub const ZSTD_LEVEL: i32 = 15;

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The zstd frame is corrupt or decompresses past [`MAX_BATCH_RAW_BYTES`].
    #[error("cannot decompress: {0}")]
    Decompress(String),
    /// The decompressed bytes are not a batch.
    #[error("malformed batch: {0}")]
    Decode(String),
}

impl From<DecodeError> for BatchError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e.to_string())
    }
}

/// How the chain began: what the verifier's fresh store starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisRecord {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Shape of the state commitment (it decides every state root).
    pub options: StoreOptions,
    /// The genesis state.
    pub state: StateDiff,
}

/// One sealed block as posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchBlock {
    /// Its header.
    pub header: Header,
    /// Its transactions, EIP-2718 encoded, in order.
    pub txs: Vec<Bytes>,
}

impl BatchBlock {
    /// The posted form of a sealed block.
    pub fn from_sealed(block: &SealedBlock) -> Self {
        let txs = block.txs.iter().map(|t| t.tx.envelope.encoded_2718().into()).collect();
        Self { header: block.header.clone(), txs }
    }
}

/// A run of consecutive blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Present exactly when the batch starts at block 0.
    pub genesis: Option<GenesisRecord>,
    /// The blocks, consecutive and non-empty.
    pub blocks: Vec<BatchBlock>,
}

impl Batch {
    /// Number of the first block.
    pub fn first_block(&self) -> u64 {
        self.blocks.first().map_or(0, |b| b.header.number)
    }

    /// Number of the last block.
    pub fn last_block(&self) -> u64 {
        self.blocks.last().map_or(0, |b| b.header.number)
    }

    /// Number of transactions in all blocks.
    pub fn transactions(&self) -> usize {
        self.blocks.iter().map(|b| b.txs.len()).sum()
    }

    /// The uncompressed encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.buf.extend_from_slice(BATCH_MAGIC);
        e.u8(BATCH_VERSION);
        e.u64(self.first_block());
        e.bool(self.genesis.is_some());
        if let Some(g) = &self.genesis {
            e.u64(g.chain_id);
            e.u32(g.options.accounts_log2_buckets);
            e.u32(g.options.slots_log2_buckets);
            g.state.encode(&mut e);
        }
        e.len(self.blocks.len());
        let mut header = Vec::new();
        for b in &self.blocks {
            header.clear();
            b.header.encode(&mut header);
            e.bytes(&header);
            e.len(b.txs.len());
            for tx in &b.txs {
                e.bytes(tx);
            }
        }
        e.buf
    }

    /// Decodes and checks the structure: consecutive block numbers, genesis exactly at block 0.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        let bad = |what: &str| BatchError::Decode(what.to_string());
        let rest = bytes.strip_prefix(BATCH_MAGIC).ok_or_else(|| bad("no STRB magic"))?;
        let mut d = Decoder::new(rest);
        let version = d.u8()?;
        if version != BATCH_VERSION {
            return Err(BatchError::Decode(format!("unknown batch version {version}")));
        }
        let first = d.u64()?;
        let genesis = if d.bool()? {
            let chain_id = d.u64()?;
            let options =
                StoreOptions { accounts_log2_buckets: d.u32()?, slots_log2_buckets: d.u32()? };
            Some(GenesisRecord { chain_id, options, state: StateDiff::decode(&mut d)? })
        } else {
            None
        };
        if genesis.is_some() != (first == 0) {
            return Err(bad("the genesis record must come with block 0 and only with it"));
        }
        // Each block takes at least 8 bytes (two length fields), each transaction 4.
        let count = d.len(8)?;
        if count == 0 {
            return Err(bad("a batch holds at least one block"));
        }
        let mut blocks = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let raw = d.bytes()?;
            let header = Header::decode(&mut &raw[..])
                .map_err(|e| BatchError::Decode(format!("header of block {}: {e}", first + i)))?;
            if header.number != first + i {
                return Err(BatchError::Decode(format!(
                    "block {} found where block {} belongs",
                    header.number,
                    first + i
                )));
            }
            let n = d.len(4)?;
            let mut txs = Vec::with_capacity(n);
            for _ in 0..n {
                txs.push(Bytes::copy_from_slice(d.bytes()?));
            }
            blocks.push(BatchBlock { header, txs });
        }
        d.finish()?;
        Ok(Self { genesis, blocks })
    }

    /// The encoding, zstd-compressed: what is posted.
    pub fn compress(&self) -> Vec<u8> {
        zstd::bulk::compress(&self.encode(), ZSTD_LEVEL).expect("in-memory zstd cannot fail")
    }

    /// Decompresses (bounded) and decodes a posted batch.
    pub fn decompress(data: &[u8]) -> Result<Self, BatchError> {
        let raw = zstd::bulk::decompress(data, MAX_BATCH_RAW_BYTES)
            .map_err(|e| BatchError::Decompress(e.to_string()))?;
        Self::decode(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, B256, U256};
    use proptest::prelude::*;
    use strobe_engine::storage::{AccountChange, AccountState};

    fn block(number: u64, txs: usize) -> BatchBlock {
        let header = Header {
            number,
            parent_hash: B256::repeat_byte(number as u8),
            base_fee_per_gas: Some(7),
            ..Default::default()
        };
        BatchBlock { header, txs: (0..txs).map(|i| Bytes::from(vec![i as u8; 100 + i])).collect() }
    }

    fn genesis() -> GenesisRecord {
        GenesisRecord {
            chain_id: 31337,
            options: StoreOptions { accounts_log2_buckets: 4, slots_log2_buckets: 6 },
            state: StateDiff {
                accounts: vec![AccountChange {
                    address: Address::repeat_byte(1),
                    info: Some(AccountState {
                        nonce: 0,
                        balance: U256::from(10u64).pow(U256::from(22)),
                        code_hash: revm_empty(),
                    }),
                    storage_cleared: false,
                    storage: vec![],
                }],
                codes: vec![],
            },
        }
    }

    fn revm_empty() -> B256 {
        alloy_primitives::keccak256([])
    }

    #[test]
    fn round_trips_with_and_without_genesis() {
        let first = Batch { genesis: Some(genesis()), blocks: vec![block(0, 0), block(1, 3)] };
        assert_eq!(Batch::decompress(&first.compress()).unwrap(), first);
        let later = Batch { genesis: None, blocks: vec![block(7, 2), block(8, 0), block(9, 5)] };
        let back = Batch::decompress(&later.compress()).unwrap();
        assert_eq!((back.first_block(), back.last_block(), back.transactions()), (7, 9, 7));
        assert_eq!(back, later);
    }

    #[test]
    fn rejects_gaps_misplaced_genesis_and_bombs() {
        let gap = Batch { genesis: None, blocks: vec![block(3, 0), block(5, 0)] };
        assert!(matches!(Batch::decode(&gap.encode()), Err(BatchError::Decode(_))));
        let no_genesis = Batch { genesis: None, blocks: vec![block(0, 0)] };
        assert!(Batch::decode(&no_genesis.encode()).is_err());
        let stray = Batch { genesis: Some(genesis()), blocks: vec![block(4, 0)] };
        assert!(Batch::decode(&stray.encode()).is_err());
        let empty = Batch { genesis: None, blocks: vec![] };
        assert!(Batch::decode(&empty.encode()).is_err());
        // Zeros compress a million to one: a frame that would inflate past the bound is refused.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_BATCH_RAW_BYTES + 1], 1).unwrap();
        assert!(matches!(Batch::decompress(&bomb), Err(BatchError::Decompress(_))));
        assert!(matches!(Batch::decompress(b"not zstd"), Err(BatchError::Decompress(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes, compressed or not: an error or a batch, never a panic.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Batch::decode(&bytes);
            let _ = Batch::decompress(&bytes);
            let mut prefixed = BATCH_MAGIC.to_vec();
            prefixed.push(BATCH_VERSION);
            prefixed.extend_from_slice(&bytes);
            let _ = Batch::decode(&prefixed);
        }

        /// Corrupting one byte of a valid encoding gives an error or a different valid batch.
        #[test]
        fn bit_flips_are_caught_or_change_the_batch(pos in 0usize..4096, bit in 0u8..8) {
            let batch = Batch { genesis: None, blocks: vec![block(11, 2), block(12, 1)] };
            let mut bytes = batch.encode();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            if let Ok(other) = Batch::decode(&bytes) {
                prop_assert_ne!(other, batch);
            }
        }
    }
}
