//! Re-execution of a data directory's blocks from genesis into a fresh store: the independent
//! check that what a node stored (blocks, receipts, state roots) is what its transactions imply.
//!
//! Execution here is sequential revm, whatever the node ran live (Block-STM), so a verify also
//! cross-checks parallel execution on real traffic. `strobe db verify` and the crash tests use it;
//! the settlement verifier re-executes the same way from L1 data.

use crate::{
    exec::{execute_sequential, tx_envs, BlockContext},
    record,
    tx::RecoveredTx,
};
use alloy_primitives::B256;
use std::path::Path;
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

fn read_genesis(datadir: &Path) -> Result<(u64, StateDiff), VerifyError> {
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

/// Re-executes every block of the (stopped) node in `datadir` into a fresh store in `scratch`
/// and checks each block's receipts and state root, then the directory's own checkpoint.
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
    let mut store = PersistentStore::open(scratch, options).map_err(|e| read(&e))?;
    store.apply(&genesis).map_err(|e| read(&e))?;
    let mut root = store.commit(0, 0).map_err(|e| read(&e))?;
    let mut hashes: Vec<B256> = Vec::new();
    let mut transactions = 0u64;
    let mut seq = 0u64;
    for n in 0..chain.len() {
        let mismatch = |what: String| VerifyError::Mismatch { block: n, what };
        let bytes = chain
            .block_bytes(n)
            .map_err(|e| read(&e))?
            .ok_or_else(|| mismatch("missing from the chain store".into()))?;
        let block =
            record::decode_block(&bytes).map_err(|e| mismatch(format!("undecodable: {e}")))?;
        let h = &block.header;
        if h.number != n {
            return Err(mismatch(format!("header says block {}", h.number)));
        }
        if n > 0 {
            if h.parent_hash != hashes[n as usize - 1] {
                return Err(mismatch("parent hash does not match the previous block".into()));
            }
            let ctx = BlockContext {
                number: n,
                timestamp: h.timestamp,
                beneficiary: h.beneficiary,
                gas_limit: h.gas_limit,
                base_fee: h.base_fee_per_gas.unwrap_or_default(),
                prevrandao: h.mix_hash,
                chain_id,
            };
            let txs: Vec<&RecoveredTx> = block.txs.iter().map(|t| t.tx.as_ref()).collect();
            let lookup = |k: u64| hashes.get(k as usize).copied().unwrap_or_default();
            let view = store.view();
            let out = execute_sequential(
                ViewDb { view: &*view, block_hash: &lookup },
                &ctx.exec_env(),
                &tx_envs(&txs),
            );
            for (i, (stored, result)) in block.txs.iter().zip(out.results).enumerate() {
                let exec =
                    result.map_err(|e| mismatch(format!("transaction {i} is invalid: {e}")))?;
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
            transactions += block.txs.len() as u64;
            store.apply(&out.diff).map_err(|e| read(&e))?;
            seq += 1;
            root = store.commit(seq, n).map_err(|e| read(&e))?;
        }
        if root != h.state_root {
            return Err(mismatch(format!(
                "state root {} recomputed, header has {}",
                root, h.state_root
            )));
        }
        hashes.push(block.hash);
    }
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
    Ok(VerifyReport { blocks: chain.len(), transactions, head_root: root, checkpoint })
}
