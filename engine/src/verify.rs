//! Re-execution of a data directory's blocks from genesis into a fresh store: the independent
//! check that what a node stored (blocks, receipts, state roots) is what its transactions imply.
//!
//! Execution here is sequential revm, whatever the node ran live (Block-STM), so a verify also
//! cross-checks parallel execution on real traffic. `strobe db verify` and the crash tests use it;
//! the settlement verifier re-executes the same way from L1 data.

use crate::{
    chain::IncludedTx,
    config::{next_base_fee, INITIAL_BASE_FEE_WEI},
    exec::{execute_sequential, tx_envs, BlockContext},
    record::{self, TxRecord},
    tx::RecoveredTx,
};
use alloy_consensus::{proofs, Header};
use alloy_primitives::{keccak256, Bloom, B256};
use std::{path::Path, sync::Arc};
use strobe_storage::{
    codec::{Decoder, Encoder},
    ChainStore, ChainStoreOptions, PersistentStore, StateDiff, StateStore, StoreOptions, ViewDb,
};

/// Name of the file in a data directory that records how the chain began.
pub const GENESIS_FILE: &str = "genesis.bin";

/// What a successful verification covered.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Blocks re-executed (genesis included).
    pub blocks: u64,
    /// Transactions re-executed.
    pub transactions: u64,
    /// State root of the newest block, recomputed.
    pub head_root: B256,
    /// The data directory's own checkpoint root and its block.
    pub checkpoint: (u64, B256),
}

/// Why a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The data directory could not be read.
    #[error("{0}")]
    Read(String),
    /// Re-execution disagrees with what was stored.
    #[error("block {block}: {what}")]
    Mismatch {
        /// The first block that disagrees.
        block: u64,
        /// What disagrees.
        what: String,
    },
}

/// Writes the genesis record (chain id and genesis state) into `datadir`, durably.
pub fn write_genesis(datadir: &Path, chain_id: u64, diff: &StateDiff) -> std::io::Result<()> {
    let mut e = Encoder::default();
    e.u64(chain_id);
    diff.encode(&mut e);
    let tmp = datadir.join(format!("{GENESIS_FILE}.tmp"));
    std::fs::write(&tmp, &e.buf)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, datadir.join(GENESIS_FILE))?;
    std::fs::File::open(datadir)?.sync_all()
}

/// Reads the genesis record (chain id and genesis state) of `datadir`.
pub fn read_genesis(datadir: &Path) -> Result<(u64, StateDiff), VerifyError> {
    let bytes = std::fs::read(datadir.join(GENESIS_FILE))
        .map_err(|e| VerifyError::Read(format!("{GENESIS_FILE}: {e}")))?;
    let mut d = Decoder::new(&bytes);
    let parse =
        |d: &mut Decoder<'_>| -> Result<(u64, StateDiff), strobe_storage::codec::DecodeError> {
            Ok((d.u64()?, StateDiff::decode(d)?))
        };
    let out = parse(&mut d).map_err(|e| VerifyError::Read(format!("{GENESIS_FILE}: {e}")))?;
    d.finish().map_err(|e| VerifyError::Read(format!("{GENESIS_FILE}: {e}")))?;
    Ok(out)
}

/// Re-executes a chain block by block into a fresh store, from its genesis state, checking every
/// header field that follows from the transactions: the link to the parent, the base fee and
/// PREVRANDAO rules, gas used, logs bloom, transactions and receipts roots, the state root and
/// the block hash. Shared by [`verify_datadir`] and the settlement verifier, so a chain rebuilt
/// from L1 is checked exactly like one read from disk.
pub struct Replayer {
    chain_id: u64,
    store: PersistentStore,
    root: B256,
    seq: u64,
    parent: Option<(Header, B256)>,
    hashes: Vec<B256>,
    transactions: u64,
}

impl Replayer {
    /// A replayer whose store (in `scratch`, which must not hold one yet) starts with `genesis`.
    pub fn new(
        chain_id: u64,
        genesis: &StateDiff,
        options: StoreOptions,
        scratch: &Path,
    ) -> Result<Self, VerifyError> {
        let read = |e: &dyn std::fmt::Display| VerifyError::Read(format!("scratch store: {e}"));
        let mut store = PersistentStore::open(scratch, options).map_err(|e| read(&e))?;
        store.apply(genesis).map_err(|e| read(&e))?;
        let root = store.commit(0, 0).map_err(|e| read(&e))?;
        Ok(Self {
            chain_id,
            store,
            root,
            seq: 0,
            parent: None,
            hashes: Vec::new(),
            transactions: 0,
        })
    }

    /// Number of the block [`Self::replay`] expects next.
    pub fn next_number(&self) -> u64 {
        self.parent.as_ref().map_or(0, |(h, _)| h.number + 1)
    }

    /// State root after the last replayed block.
    pub fn root(&self) -> B256 {
        self.root
    }

    /// Hash of the last replayed block.
    pub fn head_hash(&self) -> Option<B256> {
        self.parent.as_ref().map(|(_, hash)| *hash)
    }

    /// Transactions replayed so far.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// Checks `header` against its parent, executes `txs` on sequential revm, checks every
    /// derived header field, and returns the block's hash and its included transactions
    /// (receipt data). The first mismatch is an error naming the block.
    pub fn replay(
        &mut self,
        header: &Header,
        txs: &[Arc<RecoveredTx>],
    ) -> Result<(B256, Vec<IncludedTx>), VerifyError> {
        let n = self.next_number();
        let mismatch = |what: String| VerifyError::Mismatch { block: n, what };
        if header.number != n {
            return Err(mismatch(format!("header says block {}", header.number)));
        }
        let mut included = Vec::with_capacity(txs.len());
        match &self.parent {
            None => {
                if !txs.is_empty() {
                    return Err(mismatch("the genesis block carries transactions".into()));
                }
                if header.base_fee_per_gas != Some(INITIAL_BASE_FEE_WEI) {
                    return Err(mismatch("genesis base fee is not the initial base fee".into()));
                }
            }
            Some((parent, parent_hash)) => {
                if header.parent_hash != *parent_hash {
                    return Err(mismatch(format!(
                        "parent hash {} is not block {}'s hash {parent_hash}",
                        header.parent_hash,
                        n - 1
                    )));
                }
                let base_fee = next_base_fee(
                    parent.base_fee_per_gas.unwrap_or(INITIAL_BASE_FEE_WEI),
                    parent.gas_used,
                    parent.gas_limit,
                );
                if header.base_fee_per_gas != Some(base_fee) {
                    return Err(mismatch(format!(
                        "base fee {:?} breaks EIP-1559 (expected {base_fee})",
                        header.base_fee_per_gas
                    )));
                }
                // keccak256 of the grandparent's hash (the parent's parent hash), which lets a
                // block execute while its parent's root is computed; chains written before that
                // rule used keccak256 of the parent hash.
                if header.mix_hash != keccak256(parent.parent_hash)
                    && header.mix_hash != keccak256(parent_hash)
                {
                    return Err(mismatch(
                        "PREVRANDAO is not keccak256(grandparent hash) (nor, as chains before it, keccak256(parent hash))".into(),
                    ));
                }
                if header.timestamp < parent.timestamp {
                    return Err(mismatch("timestamp goes backwards".into()));
                }
                let ctx = BlockContext {
                    number: n,
                    timestamp: header.timestamp,
                    beneficiary: header.beneficiary,
                    gas_limit: header.gas_limit,
                    base_fee,
                    prevrandao: header.mix_hash,
                    chain_id: self.chain_id,
                };
                let refs: Vec<&RecoveredTx> = txs.iter().map(|t| t.as_ref()).collect();
                let view = self.store.view();
                let hashes = &self.hashes;
                let lookup = |k: u64| hashes.get(k as usize).copied().unwrap_or_default();
                let out = execute_sequential(
                    ViewDb { view: &*view, block_hash: &lookup },
                    &ctx.exec_env(),
                    &tx_envs(&refs),
                );
                let (mut cumulative, mut log_index) = (0u64, 0u32);
                for (i, (tx, result)) in txs.iter().zip(out.results).enumerate() {
                    let exec = result.map_err(|e| {
                        mismatch(format!("transaction {i} ({}) is invalid: {e}", tx.hash))
                    })?;
                    cumulative += exec.gas_used;
                    let record = TxRecord { tx: tx.clone(), exec, mini_block_number: 0 };
                    let inc =
                        record::included(record, n, i as u32, cumulative, log_index, base_fee);
                    log_index += inc.logs.len() as u32;
                    included.push(inc);
                }
                if cumulative != header.gas_used {
                    return Err(mismatch(format!(
                        "gas used {cumulative} recomputed, header has {}",
                        header.gas_used
                    )));
                }
                self.store.apply(&out.diff).map_err(|e| VerifyError::Read(e.to_string()))?;
                self.seq += 1;
                self.root =
                    self.store.commit(self.seq, n).map_err(|e| VerifyError::Read(e.to_string()))?;
                self.transactions += txs.len() as u64;
            }
        }
        let bloom = included.iter().fold(Bloom::ZERO, |b, t| b | t.bloom);
        if bloom != header.logs_bloom {
            return Err(mismatch("logs bloom differs from the recomputed one".into()));
        }
        let envelopes: Vec<_> = txs.iter().map(|t| t.envelope.clone()).collect();
        let transactions_root = proofs::calculate_transaction_root(&envelopes);
        if transactions_root != header.transactions_root {
            return Err(mismatch(format!(
                "transactions root {transactions_root} recomputed, header has {}",
                header.transactions_root
            )));
        }
        let receipts: Vec<_> = included.iter().map(|t| t.receipt()).collect();
        let receipts_root = proofs::calculate_receipt_root(&receipts);
        if receipts_root != header.receipts_root {
            return Err(mismatch(format!(
                "receipts root {receipts_root} recomputed, header has {}",
                header.receipts_root
            )));
        }
        if self.root != header.state_root {
            return Err(mismatch(format!(
                "state root {} recomputed, header has {}",
                self.root, header.state_root
            )));
        }
        let hash = header.hash_slow();
        self.hashes.push(hash);
        self.parent = Some((header.clone(), hash));
        Ok((hash, included))
    }
}

/// Re-executes every block of the (stopped) node in `datadir` into a fresh store in `scratch`
/// and checks each block's header, receipts and state root, then the directory's own checkpoint.
pub fn verify_datadir(datadir: &Path, scratch: &Path) -> Result<VerifyReport, VerifyError> {
    let read = |e: &dyn std::fmt::Display| VerifyError::Read(e.to_string());
    let (chain_id, genesis) = read_genesis(datadir)?;
    let (options, checkpoint) = {
        let store = PersistentStore::open(&datadir.join("state"), StoreOptions::default())
            .map_err(|e| read(&e))?;
        let stats = store.stats();
        let options = StoreOptions {
            accounts_log2_buckets: stats.log2_buckets.0,
            slots_log2_buckets: stats.log2_buckets.1,
        };
        (options, (stats.block, stats.root))
    };
    let chain = ChainStore::open(&datadir.join("chain"), ChainStoreOptions::default())
        .map_err(|e| read(&e))?;
    let mut replayer = Replayer::new(chain_id, &genesis, options, scratch)?;
    for n in 0..chain.len() {
        let mismatch = |what: String| VerifyError::Mismatch { block: n, what };
        let bytes = chain
            .block_bytes(n)
            .map_err(|e| read(&e))?
            .ok_or_else(|| mismatch("missing from the chain store".into()))?;
        let block =
            record::decode_block(&bytes).map_err(|e| mismatch(format!("undecodable: {e}")))?;
        let txs: Vec<Arc<RecoveredTx>> = block.txs.iter().map(|t| t.tx.clone()).collect();
        let (hash, replayed) = replayer.replay(&block.header, &txs)?;
        for (i, (stored, exec)) in block.txs.iter().zip(&replayed).enumerate() {
            let same = exec.success == stored.success
                && exec.gas_used == stored.gas_used
                && exec.logs == stored.logs
                && exec.contract_address == stored.contract_address;
            if !same {
                return Err(mismatch(format!(
                    "transaction {i} ({}) executes differently than its stored receipt",
                    stored.tx.hash
                )));
            }
        }
        if hash != block.hash {
            return Err(mismatch(format!("stored hash {} is not the header's {hash}", block.hash)));
        }
    }
    let root = replayer.root();
    let head = chain.len().saturating_sub(1);
    if checkpoint.0 == head && checkpoint.1 != root {
        return Err(VerifyError::Mismatch {
            block: head,
            what: format!(
                "the data directory's state root {} differs from the recomputed {root}",
                checkpoint.1
            ),
        });
    }
    Ok(VerifyReport {
        blocks: chain.len(),
        transactions: replayer.transactions(),
        head_root: root,
        checkpoint,
    })
}
