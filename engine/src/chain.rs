//! What the chain is made of — included transactions, mini-blocks, EVM blocks — and the
//! [`ChainView`] that readers get.
//!
//! The sequencer builds a new `ChainView` after every mini-block and publishes it atomically; the
//! collections inside are persistent maps and vectors, so a new version shares almost everything
//! with the previous one and readers never take a lock.

use crate::{config::ChainConfig, exec::BlockContext, tx::RecoveredTx};
use alloy_consensus::Typed2718;
use alloy_consensus::{Eip658Value, Header, Receipt, ReceiptEnvelope, ReceiptWithBloom, TxType};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, Bloom, Log, B256};
use alloy_rlp::Encodable;
use std::sync::{Arc, OnceLock};
use strobe_storage::{PendingRoot, StateDiff, StateView};

/// Number of recent EVM blocks whose end state stays queryable (geth keeps 128 by default).
pub const STATE_HISTORY_BLOCKS: usize = 128;
/// Number of recent mini-blocks whose summaries stay queryable (~17 minutes at 10 ms).
pub const MINI_BLOCK_HISTORY: usize = 100_000;

/// What readers can learn about a past mini-block: when it was sealed and what it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MiniBlockSummary {
    /// Global mini-block number.
    pub number: u64,
    /// EVM block it belongs to.
    pub block_number: u64,
    /// Index within that EVM block.
    pub index: u32,
    /// When it was sealed, in microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Transactions it included.
    pub tx_count: u32,
    /// Gas its transactions used.
    pub gas_used: u64,
}

/// A transaction included in a mini-block, with its receipt data.
#[derive(Debug)]
pub struct IncludedTx {
    /// The transaction.
    pub tx: Arc<RecoveredTx>,
    /// EVM block it belongs to (final as soon as it executes).
    pub block_number: u64,
    /// Index within the EVM block.
    pub index: u32,
    /// Global number of its mini-block.
    pub mini_block_number: u64,
    /// EIP-658 status.
    pub success: bool,
    /// Gas used by this transaction.
    pub gas_used: u64,
    /// Gas used by the EVM block up to and including this transaction.
    pub cumulative_gas_used: u64,
    /// Price per gas actually paid.
    pub effective_gas_price: u128,
    /// Logs emitted.
    pub logs: Vec<Log>,
    /// Index of its first log within the EVM block.
    pub first_log_index: u32,
    /// Created contract, if any.
    pub contract_address: Option<Address>,
    /// Bloom of its logs.
    pub bloom: Bloom,
}

impl IncludedTx {
    /// The consensus receipt (as hashed into the receipts root).
    pub fn receipt(&self) -> ReceiptEnvelope {
        self.receipt_with(self.logs.clone())
    }

    /// The receipt with its logs in another form (RPC logs carry block and index fields), wrapped
    /// in the envelope of the transaction's type.
    pub fn receipt_with<T>(&self, logs: Vec<T>) -> ReceiptEnvelope<T> {
        let receipt = Receipt {
            status: Eip658Value::Eip658(self.success),
            cumulative_gas_used: self.cumulative_gas_used,
            logs,
        };
        let with_bloom = ReceiptWithBloom { receipt, logs_bloom: self.bloom };
        match TxType::try_from(self.tx.envelope.ty()).unwrap_or(TxType::Legacy) {
            TxType::Legacy => ReceiptEnvelope::Legacy(with_bloom),
            TxType::Eip2930 => ReceiptEnvelope::Eip2930(with_bloom),
            TxType::Eip1559 => ReceiptEnvelope::Eip1559(with_bloom),
            TxType::Eip4844 => ReceiptEnvelope::Eip4844(with_bloom),
            TxType::Eip7702 => ReceiptEnvelope::Eip7702(with_bloom),
        }
    }
}

/// A mini-block: the unit the sequencer seals every tick.
#[derive(Debug)]
pub struct MiniBlock {
    /// Global mini-block number (0 = the first after genesis).
    pub number: u64,
    /// EVM block it belongs to.
    pub block_number: u64,
    /// Index within that EVM block.
    pub index: u32,
    /// When it was sealed, in microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// EVM block timestamp (seconds).
    pub block_timestamp: u64,
    /// Gas used by its transactions.
    pub gas_used: u64,
    /// Its transactions in order.
    pub txs: Vec<Arc<IncludedTx>>,
    /// The state it changed.
    pub diff: Arc<StateDiff>,
    /// Whether it is the last mini-block of its EVM block (the block is sealed right after it).
    pub closes_block: bool,
}

/// A sealed EVM block.
#[derive(Clone, Debug)]
pub struct SealedBlock {
    /// Its header.
    pub header: Header,
    /// keccak256 of the RLP header.
    pub hash: B256,
    /// Its transactions in order.
    pub txs: Vec<Arc<IncludedTx>>,
    /// How many mini-blocks it grouped.
    pub mini_block_count: u32,
    /// RLP size of the block (header + transactions + empty ommers/withdrawals).
    pub size: u64,
}

impl SealedBlock {
    /// Seals `header` (hashes it) over `txs`.
    pub fn new(header: Header, txs: Vec<Arc<IncludedTx>>, mini_block_count: u32) -> Self {
        let hash = header.hash_slow();
        let tx_bytes: usize = txs.iter().map(|t| t.tx.envelope.encode_2718_len()).sum();
        let size = (header.length() + tx_bytes + 8) as u64;
        Self { header, hash, txs, mini_block_count, size }
    }
}

/// An EVM block that is closed (its last mini-block is in) but not sealed yet: its state root is
/// being computed on the state store's checkpoint thread while the next block's mini-blocks go
/// on. Its transactions and receipts are final; its hash is not known until the root is.
///
/// `BLOCKHASH` of this block waits for the root ([`Self::wait`]); readers that must not wait see
/// the block as not yet sealed.
#[derive(Debug)]
pub struct SealingBlock {
    /// Its contents as they were when it closed.
    pub block: Arc<OpenBlock>,
    /// The header with every field but the state root.
    header: Header,
    root: PendingRoot,
    sealed: OnceLock<Result<Arc<SealedBlock>, String>>,
}

impl SealingBlock {
    /// A block waiting for `root`; `header` has every other field.
    pub(crate) fn new(block: Arc<OpenBlock>, header: Header, root: PendingRoot) -> Self {
        Self { block, header, root, sealed: OnceLock::new() }
    }

    /// The sealed block if its root has arrived (or why there is none), without waiting.
    pub fn try_sealed(&self) -> Option<Result<Arc<SealedBlock>, String>> {
        match self.sealed.get() {
            Some(sealed) => Some(sealed.clone()),
            None => self.root.try_root().map(|_| self.wait()),
        }
    }

    /// Waits for the state root and seals the block (once; every caller gets the same block).
    pub fn wait(&self) -> Result<Arc<SealedBlock>, String> {
        self.sealed
            .get_or_init(|| {
                let root = self.root.wait().map_err(|e| e.to_string())?;
                let header = Header { state_root: root, ..self.header.clone() };
                let txs = self.block.txs.iter().cloned().collect();
                Ok(Arc::new(SealedBlock::new(header, txs, self.block.mini_block_count)))
            })
            .clone()
    }
}

/// The EVM block being filled by mini-blocks.
#[derive(Clone, Debug)]
pub struct OpenBlock {
    /// Its number.
    pub number: u64,
    /// Parent hash.
    pub parent_hash: B256,
    /// Timestamp (seconds).
    pub timestamp: u64,
    /// Base fee.
    pub base_fee: u64,
    /// Gas limit.
    pub gas_limit: u64,
    /// Gas used so far.
    pub gas_used: u64,
    /// PREVRANDAO.
    pub prevrandao: B256,
    /// Transactions so far.
    pub txs: imbl::Vector<Arc<IncludedTx>>,
    /// Mini-blocks so far.
    pub mini_block_count: u32,
    /// Logs so far.
    pub log_count: u32,
    /// Bloom so far.
    pub bloom: Bloom,
}

impl OpenBlock {
    /// The block values every transaction executed in this block sees.
    pub fn context(&self, config: &ChainConfig) -> BlockContext {
        BlockContext {
            number: self.number,
            timestamp: self.timestamp,
            beneficiary: config.beneficiary,
            gas_limit: self.gas_limit,
            base_fee: self.base_fee,
            prevrandao: self.prevrandao,
            chain_id: config.chain_id,
        }
    }
}

/// A consistent picture of the chain as of one mini-block.
#[derive(Clone)]
pub struct ChainView {
    /// State after the newest mini-block (`latest` and `pending`).
    pub state: Arc<dyn StateView>,
    /// Sealed EVM blocks by number (index 0 = genesis).
    pub sealed: imbl::Vector<Arc<SealedBlock>>,
    /// Sealed block numbers by hash.
    pub by_hash: imbl::HashMap<B256, u64>,
    /// Every included transaction by hash (sealed or in the open block).
    pub txs: imbl::HashMap<B256, Arc<IncludedTx>>,
    /// The block closed before the open one while its state root is computed (a few
    /// milliseconds after it closes; `None` otherwise). Its parent is the newest sealed block.
    pub sealing: Option<Arc<SealingBlock>>,
    /// The open EVM block. Its `parent_hash` is zero while the parent is [`Self::sealing`].
    pub open: Arc<OpenBlock>,
    /// Number of the newest mini-block (`None` before the first).
    pub mini_block_number: Option<u64>,
    /// State at the end of recent sealed blocks.
    pub block_states: imbl::OrdMap<u64, Arc<dyn StateView>>,
    /// The last [`MINI_BLOCK_HISTORY`] mini-blocks, oldest first.
    pub recent_mini_blocks: imbl::Vector<MiniBlockSummary>,
}

impl ChainView {
    /// The newest sealed block.
    pub fn head(&self) -> &Arc<SealedBlock> {
        self.sealed.back().expect("genesis is always sealed")
    }

    /// A `BLOCKHASH` lookup over the sealed blocks of this view (zero for unknown numbers). The
    /// hash of the block being sealed is waited for (at most the time its root takes).
    pub fn block_hash_lookup(&self) -> impl Fn(u64) -> B256 + Sync + 'static {
        let sealed = self.sealed.clone();
        let sealing = self.sealing.clone();
        move |n| match &sealing {
            Some(s) if s.block.number == n => s.wait().map(|b| b.hash).unwrap_or_default(),
            _ => sealed.get(n as usize).map(|b| b.hash).unwrap_or_default(),
        }
    }

    /// The base fee of the block after the newest sealed one (the one being sealed, or else the
    /// open one).
    pub fn next_base_fee(&self) -> u64 {
        self.sealing.as_ref().map_or(self.open.base_fee, |s| s.block.base_fee)
    }

    /// The hash of `tx`'s block, once sealed.
    pub fn block_hash_of(&self, tx: &IncludedTx) -> Option<B256> {
        self.sealed.get(tx.block_number as usize).map(|b| b.hash)
    }

    /// State at the end of sealed block `number`, if still kept.
    pub fn state_at(&self, number: u64) -> Option<Arc<dyn StateView>> {
        if number >= self.open.number {
            return Some(self.state.clone());
        }
        self.block_states.get(&number).cloned()
    }
}
