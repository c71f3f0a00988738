//! The verifier: rebuilds the chain from what is on L1 (and the DA layer) alone, re-executes every
//! block from genesis into a fresh store, and checks every block hash and state root against
//! what was posted.
//!
//! For each batch index `0..nextIndex` it finds the inbox's `BatchPosted` event, reads the
//! posting transaction's calldata, checks it against the event, fetches the data (calldata or
//! EigenDA by certificate), checks its hash, decodes it, and hands every block to the engine's
//! [`Replayer`](strobe_engine::verify::Replayer) — the same checks `strobe db verify` makes on a
//! data directory. The first disagreement is reported with its batch and block.

use crate::{
    batch::Batch,
    eigenda::DaClient,
    inbox::{StrobeInbox, DATA_CALLDATA, DATA_EIGENDA},
    l1, SettlementError,
};
use alloy::{
    consensus::Transaction,
    primitives::{keccak256, Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::{SolCall, SolEvent},
};
use std::{collections::BTreeMap, path::Path, sync::Arc};
use strobe_engine::{
    tx::recover,
    verify::{Replayer, VerifyError},
};

/// L1 blocks asked for per `eth_getLogs` call (nodes cap log ranges).
pub const LOG_RANGE_BLOCKS: u64 = 10_000;

/// What to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// L1 JSON-RPC URL.
    pub l1_rpc: String,
    /// The inbox contract.
    pub inbox: Address,
    /// EigenDA proxy, needed if any batch was posted there.
    pub da_url: Option<String>,
    /// First L1 block to search for batches (the inbox's deployment block, or 0).
    pub from_block: u64,
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Batches read and checked.
    pub batches: u64,
    /// L2 blocks re-executed (genesis included).
    pub blocks: u64,
    /// L2 transactions re-executed.
    pub transactions: u64,
    /// Hash of the last posted block.
    pub head_hash: B256,
    /// State root of the last posted block, recomputed.
    pub head_root: B256,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// L1 or the DA layer could not be read (nothing was judged).
    #[error("{0}")]
    Unavailable(String),
    /// A batch's data is missing, malformed or does not match its commitment.
    #[error("batch {index}: {what}")]
    Batch {
        /// The batch.
        index: u64,
        /// What is wrong.
        what: String,
    },
    /// Re-execution disagrees with what was posted.
    #[error("batch {index}, block {block}: {what}")]
    Block {
        /// The batch.
        index: u64,
        /// The first block that disagrees.
        block: u64,
        /// What disagrees.
        what: String,
    },
}

impl From<SettlementError> for VerifyFailure {
    fn from(e: SettlementError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Verifies the chain posted to `options.inbox`, re-executing into a fresh store in `scratch`
/// (an empty directory).
pub fn verify(options: &VerifyOptions, scratch: &Path) -> Result<VerifyReport, VerifyFailure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VerifyFailure::Unavailable(format!("async runtime: {e}")))?;
    runtime.block_on(verify_async(options, scratch))
}

async fn verify_async(
    options: &VerifyOptions,
    scratch: &Path,
) -> Result<VerifyReport, VerifyFailure> {
    let provider = l1::connect(&options.l1_rpc)?;
    let unavailable =
        |what: &str, e: &dyn std::fmt::Display| VerifyFailure::Unavailable(format!("{what}: {e}"));
    let inbox = StrobeInbox::new(options.inbox, &provider);
    let count = inbox.nextIndex().call().await.map_err(|e| unavailable("reading the inbox", &e))?;
    let events = batch_events(&provider, options.inbox, options.from_block, count).await?;
    let da = options.da_url.as_deref().map(DaClient::new);
    let mut replayer: Option<Replayer> = None;
    let mut report = VerifyReport {
        batches: 0,
        blocks: 0,
        transactions: 0,
        head_hash: B256::ZERO,
        head_root: B256::ZERO,
    };
    for index in 0..count {
        let bad = |what: String| VerifyFailure::Batch { index, what };
        let (event, l1_tx) =
            events.get(&index).ok_or_else(|| bad("no BatchPosted event on L1".into()))?;
        let tx = provider
            .get_transaction_by_hash(*l1_tx)
            .await
            .map_err(|e| unavailable("reading a batch transaction", &e))?
            .ok_or_else(|| bad(format!("L1 transaction {l1_tx} not found")))?;
        if tx.inner.to() != Some(options.inbox) {
            return Err(bad(format!("L1 transaction {l1_tx} is not a call to the inbox")));
        }
        let call = StrobeInbox::postBatchCall::abi_decode(tx.inner.input())
            .map_err(|e| bad(format!("L1 transaction {l1_tx} is not a postBatch call: {e}")))?;
        let agrees = call.index == index
            && call.firstBlock == event.firstBlock
            && call.lastBlock == event.lastBlock
            && call.lastBlockHash == event.lastBlockHash
            && call.stateRoot == event.stateRoot
            && call.dataKind == event.dataKind
            && call.dataHash == event.dataHash;
        if !agrees {
            return Err(bad("the posting call and its event disagree".into()));
        }
        let data = posted_data(&call, da.as_ref()).await.map_err(bad)?;
        if keccak256(&data) != call.dataHash {
            return Err(bad(format!(
                "data hashes to {}, the inbox recorded {}",
                keccak256(&data),
                call.dataHash
            )));
        }
        let batch = Batch::decompress(&data).map_err(|e| bad(e.to_string()))?;
        if batch.first_block() != call.firstBlock || batch.last_block() != call.lastBlock {
            return Err(bad(format!(
                "data holds blocks {}..={}, the inbox recorded {}..={}",
                batch.first_block(),
                batch.last_block(),
                call.firstBlock,
                call.lastBlock
            )));
        }
        if let Some(g) = &batch.genesis {
            let r = Replayer::new(g.chain_id, &g.state, g.options, scratch)
                .map_err(|e| unavailable("scratch store", &e))?;
            replayer = Some(r);
        }
        let replayer = replayer
            .as_mut()
            .ok_or_else(|| bad("the chain's first batch carries no genesis record".into()))?;
        let mut last_hash = B256::ZERO;
        for block in &batch.blocks {
            let n = block.header.number;
            let wrong = |what: String| VerifyFailure::Block { index, block: n, what };
            let mut txs = Vec::with_capacity(block.txs.len());
            for (i, raw) in block.txs.iter().enumerate() {
                let tx = recover(raw)
                    .map_err(|e| wrong(format!("transaction {i} cannot be recovered: {e}")))?;
                txs.push(Arc::new(tx));
            }
            let (hash, _) = replayer.replay(&block.header, &txs).map_err(|e| match e {
                VerifyError::Mismatch { block, what } => {
                    VerifyFailure::Block { index, block, what }
                }
                VerifyError::Read(what) => VerifyFailure::Unavailable(what),
            })?;
            last_hash = hash;
        }
        let wrong = |what: String| VerifyFailure::Block { index, block: call.lastBlock, what };
        if last_hash != call.lastBlockHash {
            return Err(wrong(format!(
                "block hash {last_hash} recomputed, the inbox recorded {}",
                call.lastBlockHash
            )));
        }
        if replayer.root() != call.stateRoot {
            return Err(wrong(format!(
                "state root {} recomputed, the inbox recorded {}",
                replayer.root(),
                call.stateRoot
            )));
        }
        report.batches += 1;
        report.blocks = call.lastBlock + 1;
        report.transactions = replayer.transactions();
        report.head_hash = last_hash;
        report.head_root = replayer.root();
    }
    Ok(report)
}

/// The data a posting call stands for: its own calldata, or the blob behind its EigenDA
/// certificate (fetched from `da`). Not yet checked against the call's data hash.
pub async fn posted_data(
    call: &StrobeInbox::postBatchCall,
    da: Option<&DaClient>,
) -> Result<Vec<u8>, String> {
    match call.dataKind {
        DATA_CALLDATA => Ok(call.data.to_vec()),
        DATA_EIGENDA => {
            let da = da.ok_or("posted to EigenDA: pass --da-url to fetch its data")?;
            da.get(&call.data).await.map_err(|e| {
                format!("EigenDA certificate 0x{}: {e}", alloy::hex::encode(&call.data))
            })
        }
        kind => Err(format!("unknown data kind {kind}")),
    }
}

/// The `BatchPosted` events of `inbox` for indexes `0..count`, with their transactions,
/// searched from L1 block `from_block` in ranges of [`LOG_RANGE_BLOCKS`].
pub async fn batch_events(
    provider: &DynProvider,
    inbox: Address,
    from_block: u64,
    count: u64,
) -> Result<BTreeMap<u64, (StrobeInbox::BatchPosted, B256)>, VerifyFailure> {
    let latest = provider
        .get_block_number()
        .await
        .map_err(|e| VerifyFailure::Unavailable(format!("reading the L1 block number: {e}")))?;
    let mut events = BTreeMap::new();
    let mut from = from_block;
    while from <= latest && (events.len() as u64) < count {
        let to = (from + LOG_RANGE_BLOCKS - 1).min(latest);
        let filter = Filter::new()
            .address(inbox)
            .event_signature(StrobeInbox::BatchPosted::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs = provider
            .get_logs(&filter)
            .await
            .map_err(|e| VerifyFailure::Unavailable(format!("reading inbox events: {e}")))?;
        for log in logs {
            let Some(tx) = log.transaction_hash else { continue };
            let event = StrobeInbox::BatchPosted::decode_log_data(log.data()).map_err(|e| {
                VerifyFailure::Unavailable(format!("undecodable BatchPosted event: {e}"))
            })?;
            let index = event.index;
            if index < count && events.insert(index, (event, tx)).is_some() {
                return Err(VerifyFailure::Batch {
                    index,
                    what: "posted twice (the inbox should make this impossible)".into(),
                });
            }
        }
        from = to + 1;
    }
    Ok(events)
}
