//! The batch poster: groups sealed EVM blocks into batches, compresses them and posts them to
//! the inbox on L1 (as calldata, or as an EigenDA certificate), one L1 transaction at a time.
//!
//! **Resumable and idempotent.** The poster keeps no state of its own: before every batch it
//! reads the inbox's `nextIndex` and `nextBlock`, and it always sends with the account's next
//! confirmed nonce. After a crash anywhere — before a send, after a send that is still pending,
//! after it was mined — the restarted poster builds the batch the contract expects next with the
//! same nonce, so at most one of the two transactions can land, and the contract refuses any
//! index or block range that is not the next one. Batches are never skipped or repeated.
//!
//! **Fees.** A transaction that is not mined within `bump_after` is sent again with the same
//! nonce and fees raised by [`FEE_BUMP_PERCENT`] (enough for geth's and anvil's replacement
//! rules), up to `max_fee_per_gas`.
//!
//! Threads: one `strobe-poster` thread running a single-threaded async runtime for the L1 and DA
//! clients; it only reads sealed (durable) blocks from its [`BlockSource`], never the hot path.

use crate::{
    batch::{Batch, BatchBlock, GenesisRecord},
    eigenda::DaClient,
    inbox::{self, StrobeInbox, DATA_CALLDATA, DATA_EIGENDA},
    l1::{self, SendFailure},
    SettlementError,
};
use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::{eip2718::Encodable2718, BlockId, BlockNumberOrTag},
    network::{TransactionBuilder, TxSignerSync},
    primitives::{keccak256, Address, TxKind, B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Most blocks in one batch, by default.
pub const DEFAULT_MAX_BATCH_BLOCKS: u64 = 600;
/// Largest compressed batch posted as calldata (geth's transaction pool takes at most 128 KiB).
pub const MAX_CALLDATA_BATCH_BYTES: usize = 120 * 1024;
/// Largest compressed batch posted to EigenDA (its blob limit).
pub const MAX_EIGENDA_BATCH_BYTES: usize = crate::eigenda::MAX_BLOB_BYTES;
/// How long the oldest unposted block may wait for its batch to fill, by default.
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_secs(5);
/// How much each fee bump raises both fee fields (geth and anvil want at least 10%).
pub const FEE_BUMP_PERCENT: u128 = 13;
/// Lowest priority fee offered, in wei.
pub const MIN_PRIORITY_FEE_WEI: u128 = 1_000_000_000;
/// Wait after a failed step before trying again.
const RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// Where batch data goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaMode {
    /// Into the L1 transaction's calldata.
    Calldata,
    /// To the EigenDA proxy at this URL; L1 gets the certificate.
    EigenDa(String),
}

/// How the poster runs.
#[derive(Clone, Debug)]
pub struct PosterConfig {
    /// L1 JSON-RPC URL.
    pub l1_rpc: String,
    /// The sequencer's L1 key (the one registered in the inbox).
    pub key: PrivateKeySigner,
    /// The inbox contract.
    pub inbox: Address,
    /// Where batch data goes.
    pub da: DaMode,
    /// Most blocks per batch.
    pub max_blocks: u64,
    /// Largest compressed batch (a single larger block is an error).
    pub max_bytes: usize,
    /// How long the oldest unposted block may wait for its batch to fill.
    pub max_delay: Duration,
    /// L1 blocks (including the one holding it) before a batch counts as posted.
    pub confirmations: u64,
    /// How long a transaction may stay unmined before its fees are raised.
    pub bump_after: Duration,
    /// Highest fee per gas the poster will offer, in wei.
    pub max_fee_per_gas: u128,
    /// How often L1 and the block source are polled.
    pub poll: Duration,
}

impl PosterConfig {
    /// Defaults for `da`, posting from `key` to `inbox` at `l1_rpc`.
    pub fn new(l1_rpc: String, key: PrivateKeySigner, inbox: Address, da: DaMode) -> Self {
        let max_bytes = match da {
            DaMode::Calldata => MAX_CALLDATA_BATCH_BYTES,
            DaMode::EigenDa(_) => MAX_EIGENDA_BATCH_BYTES,
        };
        Self {
            l1_rpc,
            key,
            inbox,
            da,
            max_blocks: DEFAULT_MAX_BATCH_BLOCKS,
            max_bytes,
            max_delay: DEFAULT_MAX_BATCH_DELAY,
            confirmations: 1,
            bump_after: Duration::from_secs(12),
            max_fee_per_gas: 10_000_000_000_000,
            poll: Duration::from_millis(250),
        }
    }
}

/// Where the poster reads sealed blocks from (the embedding node).
pub trait BlockSource: Send + Sync + 'static {
    /// The chain's genesis record (posted with block 0).
    fn genesis(&self) -> Result<GenesisRecord, String>;
    /// Number of the newest sealed, durable block.
    fn head(&self) -> u64;
    /// Sealed block `number`, if it exists.
    fn block(&self, number: u64) -> Option<BatchBlock>;
}

/// What the poster has done, for logs, metrics and tests.
#[derive(Clone, Debug, Default)]
pub struct PosterStatus {
    /// Batches this process posted (confirmed).
    pub batches_posted: u64,
    /// Index the inbox expects next, as last read.
    pub next_index: u64,
    /// First block not yet in a confirmed batch, as last read.
    pub next_block: u64,
    /// L1 transactions sent (replacements included).
    pub sends: u64,
    /// Fee bumps of stuck transactions.
    pub fee_bumps: u64,
    /// The last error, if the last step failed.
    pub last_error: Option<String>,
}

/// A running poster. Stops when dropped (a batch in flight is resumed by the next start).
pub struct Poster {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<PosterStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Poster {
    /// Starts the poster thread.
    pub fn start(
        config: PosterConfig,
        source: Arc<dyn BlockSource>,
    ) -> Result<Self, SettlementError> {
        let provider = l1::connect(&config.l1_rpc)?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(PosterStatus::default()));
        let da = match &config.da {
            DaMode::Calldata => None,
            DaMode::EigenDa(url) => Some(DaClient::new(url)),
        };
        let mut worker = Worker {
            config,
            source,
            provider,
            da,
            stop: stop.clone(),
            status: status.clone(),
            crash: CrashPoint::from_env(),
        };
        let thread = std::thread::Builder::new()
            .name("strobe-poster".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                runtime.block_on(worker.run());
            })
            .map_err(|e| SettlementError::Config(format!("cannot start the poster thread: {e}")))?;
        Ok(Self { stop, status, thread: Some(thread) })
    }

    /// A snapshot of what the poster has done.
    pub fn status(&self) -> PosterStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the poster and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Halves `batch`, keeping its first blocks, until it compresses to at most `max_bytes`, and
/// returns it with its compressed bytes; or the compressed size of its first block alone, when
/// even that does not fit.
fn shrink_to_fit(mut batch: Batch, max_bytes: usize) -> Result<(Batch, Vec<u8>), usize> {
    loop {
        let data = batch.compress();
        if data.len() <= max_bytes {
            return Ok((batch, data));
        }
        if batch.blocks.len() <= 1 {
            return Err(data.len());
        }
        batch.blocks.truncate(batch.blocks.len().div_ceil(2));
    }
}

/// A test hook: `STROBE_POSTER_CRASH=<point>[:<n>]` kills the whole process with SIGKILL the
/// n-th time (default first) the poster reaches `point` — `before-send`, `after-send` (sent,
/// not mined) or `after-receipt` (mined, not yet confirmed) — so crash tests can hit each side
/// of an L1 send exactly.
struct CrashPoint {
    point: String,
    remaining: u64,
}

impl CrashPoint {
    fn from_env() -> Option<Self> {
        let spec = std::env::var("STROBE_POSTER_CRASH").ok()?;
        let (point, n) = spec.split_once(':').unwrap_or((&spec, "1"));
        Some(Self { point: point.to_string(), remaining: n.parse().unwrap_or(1).max(1) })
    }
}

struct Worker {
    config: PosterConfig,
    source: Arc<dyn BlockSource>,
    provider: DynProvider,
    da: Option<DaClient>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<PosterStatus>>,
    crash: Option<CrashPoint>,
}

/// How one L1 post ended.
enum Posted {
    /// Mined, successful and confirmed.
    Confirmed(Box<TransactionReceipt>),
    /// Something else took the nonce or the index (a previous run's transaction): re-read.
    Superseded,
    /// Mined but reverted, or refused by gas estimation: re-read (the reason is logged).
    Refused(String),
}

impl Worker {
    fn update(&self, f: impl FnOnce(&mut PosterStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn maybe_crash(&mut self, point: &str) {
        if let Some(c) = &mut self.crash {
            if c.point == point {
                c.remaining -= 1;
                if c.remaining == 0 {
                    tracing::warn!(point, "STROBE_POSTER_CRASH: killing the process");
                    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                }
            }
        }
    }

    async fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && Instant::now() < until {
            tokio::time::sleep(d.min(Duration::from_millis(50))).await;
        }
    }

    async fn run(&mut self) {
        tracing::info!(
            inbox = %self.config.inbox,
            sequencer = %self.config.key.address(),
            da = ?self.config.da,
            "batch poster started"
        );
        self.check_sequencer().await;
        let mut waiting_since: Option<Instant> = None;
        while !self.stopping() {
            match self.step(&mut waiting_since).await {
                Ok(true) => self.update(|s| s.last_error = None),
                Ok(false) => self.sleep(self.config.poll).await,
                Err(e) => {
                    tracing::warn!(error = %e, "batch poster: will retry");
                    self.update(|s| s.last_error = Some(e.to_string()));
                    self.sleep(RETRY_BACKOFF).await;
                }
            }
        }
    }

    /// Says plainly, once, when the key cannot post to this inbox (every post would revert).
    async fn check_sequencer(&self) {
        let registered =
            StrobeInbox::new(self.config.inbox, &self.provider).sequencer().call().await;
        if let Ok(registered) = registered {
            let ours = self.config.key.address();
            if registered != ours {
                let message = format!(
                    "the inbox {} accepts batches only from {registered}, but the L1 key is {ours}",
                    self.config.inbox
                );
                tracing::error!("{message}");
                self.update(|s| s.last_error = Some(message));
            }
        }
    }

    /// Posts the next batch if one is due; `Ok(false)` when there was nothing to do yet.
    async fn step(&mut self, waiting_since: &mut Option<Instant>) -> Result<bool, SettlementError> {
        let (index, first) = inbox::next_position(&self.provider, self.config.inbox).await?;
        self.update(|s| {
            s.next_index = index;
            s.next_block = first;
        });
        let head = self.source.head();
        if first > head {
            *waiting_since = None;
            return Ok(false);
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let full = head - first + 1 >= self.config.max_blocks;
        if !full && since.elapsed() < self.config.max_delay {
            return Ok(false);
        }
        let last = head.min(first + self.config.max_blocks - 1);
        let (batch, data) = self.cut(first, last)?;
        match self.post(index, &batch, data).await? {
            Posted::Confirmed(receipt) => {
                *waiting_since = None;
                self.update(|s| {
                    s.batches_posted += 1;
                    s.next_index = index + 1;
                    s.next_block = batch.last_block() + 1;
                });
                tracing::info!(
                    index,
                    blocks = %format!("{}..={}", batch.first_block(), batch.last_block()),
                    txs = batch.transactions(),
                    l1_tx = %receipt.transaction_hash,
                    l1_block = receipt.block_number.unwrap_or_default(),
                    l1_gas = receipt.gas_used,
                    "batch posted"
                );
            }
            Posted::Superseded => {
                tracing::info!(index, "another transaction took this nonce; re-reading the inbox");
            }
            Posted::Refused(reason) => {
                tracing::warn!(index, %reason, "the inbox refused the batch; re-reading it");
                self.sleep(RETRY_BACKOFF).await;
            }
        }
        Ok(true)
    }

    /// Builds and compresses blocks `first..=last`, halving the range until it fits. Blocks and
    /// the genesis record are read once; only the compression is redone per halving.
    fn cut(&self, first: u64, last: u64) -> Result<(Batch, Vec<u8>), SettlementError> {
        let mut blocks = Vec::with_capacity((last - first + 1) as usize);
        for n in first..=last {
            blocks.push(self.source.block(n).ok_or_else(|| {
                SettlementError::Source(format!("sealed block {n} is not available"))
            })?);
        }
        let genesis = if first == 0 {
            Some(self.source.genesis().map_err(SettlementError::Source)?)
        } else {
            None
        };
        shrink_to_fit(Batch { genesis, blocks }, self.config.max_bytes).map_err(|size| {
            SettlementError::Config(format!(
                "block {first} compresses to {size} bytes, more than the batch limit of {} \
                 (post to EigenDA with --da eigenda, or raise --batch-max-bytes)",
                self.config.max_bytes
            ))
        })
    }

    async fn post(
        &mut self,
        index: u64,
        batch: &Batch,
        compressed: Vec<u8>,
    ) -> Result<Posted, SettlementError> {
        let last = batch.blocks.last().expect("batches are non-empty");
        let data_hash = keccak256(&compressed);
        let (kind, data) = match &self.da {
            None => (DATA_CALLDATA, compressed),
            Some(da) => (DATA_EIGENDA, da.put(&compressed).await?),
        };
        let call = StrobeInbox::postBatchCall {
            index,
            firstBlock: batch.first_block(),
            lastBlock: batch.last_block(),
            lastBlockHash: last.header.hash_slow(),
            stateRoot: last.header.state_root,
            dataKind: kind,
            dataHash: data_hash,
            data: data.into(),
        };
        let input = call.abi_encode();
        let from = self.config.key.address();
        let l1 =
            |what: &str, e: &dyn std::fmt::Display| SettlementError::L1(format!("{what}: {e}"));
        let request = TransactionRequest::default()
            .with_from(from)
            .with_to(self.config.inbox)
            .with_input(input.clone());
        // At `latest`, where the inbox position was read: a node that estimates against its
        // pending block (anvil) would see a previous run's unmined post there.
        let gas = match self.provider.estimate_gas(request).block(BlockId::latest()).await {
            Ok(gas) => gas,
            Err(e) => {
                return match l1::classify(&e) {
                    SendFailure::Reverted(reason) => Ok(Posted::Refused(reason)),
                    _ => Err(l1("estimating gas", &e)),
                }
            }
        };
        let nonce = self.confirmed_nonce().await?;
        let chain_id = self.provider.get_chain_id().await.map_err(|e| l1("chain id", &e))?;
        let (mut max_fee, mut tip) = self.fees().await?;
        let mut sent: Vec<B256> = Vec::new();
        loop {
            let tx = TxEip1559 {
                chain_id,
                nonce,
                gas_limit: gas + gas / 5 + 10_000,
                max_fee_per_gas: max_fee,
                max_priority_fee_per_gas: tip,
                to: TxKind::Call(self.config.inbox),
                value: U256::ZERO,
                access_list: Default::default(),
                input: input.clone().into(),
            };
            let raw = self.sign(tx)?;
            self.maybe_crash("before-send");
            self.update(|s| s.sends += 1);
            match self.provider.send_raw_transaction(&raw).await {
                Ok(pending) => sent.push(*pending.tx_hash()),
                Err(e) => match l1::classify(&e) {
                    SendFailure::AlreadyKnown => {}
                    SendFailure::Underpriced => {
                        // A previous run's transaction with this nonce pays more: outbid it.
                        (max_fee, tip) = self.bump(max_fee, tip, "replacement underpriced")?;
                        continue;
                    }
                    SendFailure::NonceTooLow => return self.nonce_taken(&sent).await,
                    SendFailure::Reverted(reason) => return Ok(Posted::Refused(reason)),
                    SendFailure::Other(_) => return Err(l1("sending the batch", &e)),
                },
            }
            self.maybe_crash("after-send");
            let deadline = Instant::now() + self.config.bump_after;
            while Instant::now() < deadline {
                if self.stopping() {
                    return Ok(Posted::Superseded);
                }
                if let Some(r) = self.find_receipt(&sent).await? {
                    return self.settle(r).await;
                }
                let mined_nonce = self.confirmed_nonce().await?;
                if mined_nonce > nonce {
                    return self.nonce_taken(&sent).await;
                }
                tokio::time::sleep(self.config.poll).await;
            }
            (max_fee, tip) = self.bump(max_fee, tip, "not mined in time")?;
        }
    }

    /// Our nonce was used: by one of `sent` (possibly mined since the last look), or by a
    /// transaction of an earlier run.
    async fn nonce_taken(&mut self, sent: &[B256]) -> Result<Posted, SettlementError> {
        match self.find_receipt(sent).await? {
            Some(r) => self.settle(r).await,
            None => Ok(Posted::Superseded),
        }
    }

    /// The sequencer account's nonce as of the latest block (pending transactions excluded: a
    /// post always reuses the first unconfirmed nonce).
    async fn confirmed_nonce(&self) -> Result<u64, SettlementError> {
        self.provider
            .get_transaction_count(self.config.key.address())
            .latest()
            .await
            .map_err(|e| SettlementError::L1(format!("reading the nonce: {e}")))
    }

    fn sign(&self, mut tx: TxEip1559) -> Result<Vec<u8>, SettlementError> {
        let sig = self
            .config
            .key
            .sign_transaction_sync(&mut tx)
            .map_err(|e| SettlementError::Config(format!("signing: {e}")))?;
        Ok(TxEnvelope::from(tx.into_signed(sig)).encoded_2718())
    }

    /// Current fees: twice the latest base fee plus the node's suggested tip.
    async fn fees(&self) -> Result<(u128, u128), SettlementError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| SettlementError::L1(format!("reading the latest block: {e}")))?
            .ok_or_else(|| SettlementError::L1("the L1 node has no latest block".into()))?;
        let base = block.header.base_fee_per_gas.unwrap_or(1_000_000_000) as u128;
        let tip = self
            .provider
            .get_max_priority_fee_per_gas()
            .await
            .unwrap_or(MIN_PRIORITY_FEE_WEI)
            .max(MIN_PRIORITY_FEE_WEI);
        Ok(((2 * base + tip).min(self.config.max_fee_per_gas), tip))
    }

    fn bump(&self, max_fee: u128, tip: u128, why: &str) -> Result<(u128, u128), SettlementError> {
        let raise = |v: u128| v + v * FEE_BUMP_PERCENT / 100 + 1;
        let (new_fee, new_tip) = (raise(max_fee), raise(tip));
        if new_fee > self.config.max_fee_per_gas {
            return Err(SettlementError::L1(format!(
                "the batch needs more than the fee cap of {} wei per gas ({why})",
                self.config.max_fee_per_gas
            )));
        }
        self.update(|s| s.fee_bumps += 1);
        tracing::warn!(why, max_fee = new_fee, tip = new_tip, "raising the batch's L1 fees");
        Ok((new_fee, new_tip))
    }

    async fn find_receipt(
        &self,
        sent: &[B256],
    ) -> Result<Option<TransactionReceipt>, SettlementError> {
        for hash in sent {
            let r = self
                .provider
                .get_transaction_receipt(*hash)
                .await
                .map_err(|e| SettlementError::L1(format!("reading a receipt: {e}")))?;
            if r.is_some() {
                return Ok(r);
            }
        }
        Ok(None)
    }

    /// Waits for `receipt`'s confirmations and says how the post ended.
    async fn settle(&mut self, receipt: TransactionReceipt) -> Result<Posted, SettlementError> {
        self.maybe_crash("after-receipt");
        if !receipt.status() {
            return Ok(Posted::Refused(format!(
                "L1 transaction {} reverted",
                receipt.transaction_hash
            )));
        }
        let mined_in = receipt.block_number.unwrap_or_default();
        loop {
            let latest = self
                .provider
                .get_block_number()
                .await
                .map_err(|e| SettlementError::L1(format!("reading the block number: {e}")))?;
            if latest + 1 >= mined_in + self.config.confirmations {
                break;
            }
            if self.stopping() {
                return Ok(Posted::Superseded);
            }
            tokio::time::sleep(self.config.poll).await;
        }
        // Still there after the wait (an L1 reorg would have dropped it)?
        match self.find_receipt(&[receipt.transaction_hash]).await? {
            Some(r) if r.block_hash == receipt.block_hash => Ok(Posted::Confirmed(Box::new(r))),
            _ => Ok(Posted::Superseded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::{consensus::Header, primitives::Bytes};

    /// Blocks 5.. of 1 KiB of incompressible transaction bytes each.
    fn blocks(n: u64) -> Vec<BatchBlock> {
        (5..5 + n)
            .map(|number| BatchBlock {
                header: Header { number, ..Default::default() },
                txs: vec![Bytes::from(
                    (0..1024u32)
                        .map(|i| keccak256((number as u32 * 4096 + i).to_le_bytes())[0])
                        .collect::<Vec<u8>>(),
                )],
            })
            .collect()
    }

    #[test]
    fn batches_halve_from_the_front_until_they_fit() {
        let all = Batch { genesis: None, blocks: blocks(9) };
        let (fits, data) = shrink_to_fit(all.clone(), 4 * 1024).unwrap();
        // 9 → 5 → 3 blocks: the first three, all that fit in 4 KiB.
        assert_eq!((fits.first_block(), fits.last_block()), (5, 7));
        assert!(data.len() <= 4 * 1024);
        assert_eq!(Batch::decompress(&data).unwrap(), fits);
        let (whole, _) = shrink_to_fit(all.clone(), 1 << 20).unwrap();
        assert_eq!(whole, all);
        let too_big = shrink_to_fit(all, 512).unwrap_err();
        assert!(too_big > 1024, "the first block alone: {too_big} bytes");
    }
}
