//! The sequencer thread: admits transactions into the pool, seals a mini-block every tick,
//! executes it, commits its diff and closes an EVM block every block time. A closed block's state
//! root is computed on the state store's checkpoint threads while the next block's mini-blocks go
//! on ([`SealingBlock`]); the block is sealed, served and stored when the root arrives.
//!
//! One pinned thread owns the pool, the state store and the chain under construction. It talks to
//! the outside only through a bounded intake queue (in) and through published [`ChainView`]s,
//! callbacks and bounded subscriber queues (out), so nothing on its path takes a lock that a
//! reader could hold. Sealed blocks go to the block writer's bounded queue, which stores them
//! off the tick (`block_writer.rs`).

use crate::{
    block_tries::BlockTries,
    block_writer::{append_block, BlockWriter},
    chain::{
        ChainView, IncludedTx, MiniBlock, MiniBlockSummary, OpenBlock, SealedBlock, SealingBlock,
        MINI_BLOCK_HISTORY, STATE_HISTORY_BLOCKS,
    },
    config::{next_base_fee, ChainConfig, Genesis, INITIAL_BASE_FEE_WEI},
    exec::{tx_envs, BlockOutput},
    parallel::ParallelExecutor,
    pool::Mempool,
    record::{self, TxRecord},
    tx::{RecoveredTx, TxError},
};
use alloy_consensus::{proofs, Header, Transaction, EMPTY_OMMER_ROOT_HASH};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{keccak256, map::HashMap, Address, Bloom, B256, U256};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use revm::primitives::KECCAK_EMPTY;
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use strobe_storage::{
    AccountChange, AccountState, ChainStore, StateDiff, StateStore, ViewDb, Wal, WalRecord,
};

/// A one-shot callback run on the sequencer thread; it must not block.
pub type Notify<T> = Box<dyn FnOnce(T) + Send>;

/// Callback told when a transaction is included, or why it never will be.
pub type ReceiptNotify = Notify<Result<Arc<IncludedTx>, TxError>>;

/// How a submission wants to be answered.
pub struct Submission {
    /// The transaction.
    pub tx: RecoveredTx,
    /// Refuse (with [`TxError::NonceGap`]) instead of queueing behind a nonce gap.
    pub reject_gap: bool,
    /// Told whether the pool accepted the transaction.
    pub on_accept: Option<Notify<Result<B256, TxError>>>,
    /// Told when the transaction is included (or dropped).
    pub on_receipt: Option<Notify<Result<Arc<IncludedTx>, TxError>>>,
}

/// Messages into the sequencer.
pub enum Command {
    /// A transaction to admit.
    Submit(Box<Submission>),
    /// Wait for the receipt of an already submitted transaction.
    WatchReceipt(B256, Notify<Result<Arc<IncludedTx>, TxError>>),
    /// Stop after the current mini-block.
    Shutdown,
}

/// State shared between the sequencer and its readers.
pub struct Shared {
    /// The newest chain view.
    pub view: ArcSwap<ChainView>,
    /// Pending nonces and transactions of the pool.
    pub pool: ArcSwap<PoolView>,
    /// Mini-block subscribers; a subscriber whose queue is full is dropped.
    pub mini_block_subscribers: Mutex<Vec<Subscriber<MiniBlock>>>,
    /// Sealed-block subscribers; a subscriber whose queue is full is dropped.
    pub block_subscribers: Mutex<Vec<Subscriber<SealedBlock>>>,
    /// Subscribers to transactions admitted into the pool; dropped like the others.
    pub pending_subscribers: Mutex<Vec<Subscriber<RecoveredTx>>>,
    /// Why the sequencer stopped on its own (a storage failure), once it has.
    pub fatal: OnceLock<String>,
}

/// The files that make a chain durable: the write-ahead log of mini-blocks and the store of
/// sealed blocks. The state store checkpoints itself at each block.
pub struct Durable {
    /// One record per mini-block; synced before its receipts are released.
    pub wal: Wal,
    /// Sealed EVM blocks.
    pub chain: ChainStore,
}

/// The sequencer's side of [`Durable`]: the log it appends to, and the thread that stores its
/// sealed blocks.
struct Logged {
    wal: Wal,
    blocks: BlockWriter,
}

/// What readers see of the pool.
#[derive(Clone, Debug, Default)]
pub struct PoolView {
    /// Pending nonce of each sender with pooled transactions.
    pub nonces: imbl::HashMap<Address, u64>,
    /// Pooled (not yet included) transactions by hash.
    pub txs: imbl::HashMap<B256, Arc<RecoveredTx>>,
}

/// Genesis accounts applied to the state store per commit when building a large genesis.
pub const GENESIS_CHUNK_ACCOUNTS: usize = 1_000_000;

/// Capacity of the intake queue between network threads and the sequencer.
pub const INTAKE_QUEUE_CAPACITY: usize = 65_536;

pub(crate) struct Sequencer {
    config: ChainConfig,
    store: Box<dyn StateStore>,
    pool: Mempool,
    shared: Arc<Shared>,
    view: ChainView,
    waiters: HashMap<B256, Vec<ReceiptNotify>>,
    pool_view: PoolView,
    next_mini_block: u64,
    executor: ParallelExecutor,
    durable: Option<Logged>,
    /// The open block's transactions and receipts tries, fed as transactions are included.
    tries: BlockTries,
    /// The closed block whose state root is being computed.
    sealing: Option<PendingSeal>,
    stopped: bool,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

impl Sequencer {
    /// Builds genesis into `store` (a new chain) or reloads the chain from `durable` and replays
    /// the write-ahead log `records` (a restart), and returns the sequencer with its shared state.
    pub(crate) fn new(
        config: ChainConfig,
        genesis: &Genesis,
        mut store: Box<dyn StateStore>,
        durable: Option<(Durable, Vec<WalRecord>)>,
    ) -> Result<(Self, Arc<Shared>), crate::EngineError> {
        let (mut durable, records) = match durable {
            Some((d, r)) => (Some(d), r),
            None => (None, Vec::new()),
        };
        let restart = durable.as_ref().is_some_and(|d| !d.chain.is_empty());
        let mut sealed = imbl::Vector::new();
        if restart {
            let chain = &durable.as_ref().expect("restart implies durable").chain;
            for n in 0..chain.len() {
                let bytes = chain
                    .block_bytes(n)?
                    .ok_or_else(|| recovery(format!("block {n} is missing")))?;
                let block = record::decode_block(&bytes)
                    .map_err(|e| recovery(format!("block {n} cannot be decoded: {e}")))?;
                sealed.push_back(Arc::new(block));
            }
        } else {
            let genesis_block = build_genesis(&config, genesis, &mut *store)?;
            if let Some(d) = &mut durable {
                // Genesis state first, then its block: a crash in between leaves a directory
                // with state and no blocks, which the next open recreates.
                store.wait_durable()?;
                append_block(&mut d.chain, &genesis_block)?;
            }
            sealed.push_back(Arc::new(genesis_block));
        }
        let durable = match durable {
            Some(Durable { wal, chain }) => Some(Logged {
                wal,
                blocks: BlockWriter::spawn(chain).map_err(crate::EngineError::Thread)?,
            }),
            None => None,
        };
        let head = sealed.back().expect("genesis is always sealed").clone();
        let state = store.view();
        let mut block_states = imbl::OrdMap::new();
        block_states.insert(head.header.number, state.clone());
        let mut by_hash = imbl::HashMap::new();
        let mut txs = imbl::HashMap::new();
        for b in &sealed {
            by_hash.insert(b.hash, b.header.number);
            for t in &b.txs {
                txs.insert(t.tx.hash, t.clone());
            }
        }
        let open = open_after(&head.header, Some(head.hash), &config, now_us() / 1_000_000);
        let view = ChainView {
            state,
            sealed,
            by_hash,
            txs,
            sealing: None,
            open: Arc::new(open),
            mini_block_number: None,
            block_states,
            recent_mini_blocks: imbl::Vector::new(),
        };
        let shared = Arc::new(Shared {
            view: ArcSwap::from_pointee(view.clone()),
            pool: ArcSwap::from_pointee(PoolView::default()),
            mini_block_subscribers: Mutex::new(Vec::new()),
            block_subscribers: Mutex::new(Vec::new()),
            pending_subscribers: Mutex::new(Vec::new()),
            fatal: OnceLock::new(),
        });
        let pool = Mempool::new(config.pool);
        let mut executor = ParallelExecutor::pinned(config.exec_threads, &config.exec_cores)?;
        executor.set_min_parallel_txs(config.parallel_min_txs);
        let mut sequencer = Self {
            executor,
            config,
            store,
            pool,
            shared: shared.clone(),
            view,
            waiters: HashMap::default(),
            pool_view: PoolView::default(),
            next_mini_block: 0,
            durable,
            tries: BlockTries::default(),
            sealing: None,
            stopped: false,
        };
        if restart {
            sequencer.replay(records)?;
        }
        sequencer.shared.view.store(Arc::new(sequencer.view.clone()));
        Ok((sequencer, shared))
    }

    /// Brings state and chain back together after a restart from the write-ahead log.
    ///
    /// The state checkpoint and the chain store are written by different steps, so after a crash
    /// the checkpoint may be one block behind the chain store (the block's checkpoint was still
    /// being written), level with it, or one block ahead (the block was checkpointed but never
    /// reached the chain store). Log records the state lacks are applied to it; a sealed block
    /// whose state is caught up this way must reproduce its header's state root. Records of
    /// blocks the chain store lacks are re-included exactly as they were sealed, and the block
    /// the state is ahead by is sealed again (same transactions, same root, same header).
    fn replay(&mut self, records: Vec<WalRecord>) -> Result<(), crate::EngineError> {
        let head = self.view.head().header.number;
        let (next_seq, checkpoint_block) = self.store_checkpoint();
        if checkpoint_block + 1 < head || checkpoint_block > head + 1 {
            return Err(recovery(format!(
                "the state checkpoint is at block {checkpoint_block} but the chain store ends at block {head}"
            )));
        }
        self.next_mini_block = next_seq;
        let mut caught_up: Option<u64> = None;
        let mut replayed = 0usize;
        for rec in records {
            let mini = record::decode_mini_block(&rec.payload).map_err(|e| {
                recovery(format!("write-ahead log record {} cannot be decoded: {e}", rec.seq))
            })?;
            if mini.block_number <= head {
                if rec.seq >= next_seq {
                    self.store.apply(&mini.diff)?;
                    caught_up = Some(rec.seq + 1);
                }
                continue;
            }
            if let Some(next) = caught_up.take() {
                self.commit_caught_up(next, head)?;
            }
            while mini.block_number > self.view.open.number {
                self.seal_evm_block();
                // A failed seal leaves the block open: stop instead of sealing it forever.
                if let Some(e) = self.shared.fatal.get() {
                    return Err(recovery(e.clone()));
                }
            }
            if mini.block_number != self.view.open.number {
                return Err(recovery(format!(
                    "write-ahead log record {} belongs to block {}, which was already sealed",
                    rec.seq, mini.block_number
                )));
            }
            if self.view.open.mini_block_count == 0 {
                let parent = self.view.head().clone();
                self.view.open = Arc::new(open_after(
                    &parent.header,
                    Some(parent.hash),
                    &self.config,
                    mini.block_timestamp,
                ));
            }
            self.next_mini_block = mini.number;
            self.include(mini.txs, mini.diff, mini.timestamp_us, mini.closes_block)?;
            replayed += 1;
            if mini.closes_block {
                // The block was sealed (and maybe served) right after this record was synced.
                self.seal_evm_block();
                if let Some(e) = self.shared.fatal.get() {
                    return Err(recovery(e.clone()));
                }
            }
        }
        if let Some(next) = caught_up.take() {
            self.commit_caught_up(next, head)?;
            self.next_mini_block = self.next_mini_block.max(next);
        }
        if checkpoint_block > self.view.head().header.number {
            self.seal_evm_block();
        }
        if let Some(e) = self.shared.fatal.get() {
            return Err(recovery(e.clone()));
        }
        tracing::info!(
            head = self.view.head().header.number,
            replayed,
            next_mini_block = self.next_mini_block,
            "chain recovered from the data directory"
        );
        Ok(())
    }

    /// Checks state caught up to sealed block `head` against the block's header, then commits it
    /// (checking first: a checkpoint of a wrong state would be taken for a good one by the next
    /// open).
    fn commit_caught_up(&mut self, next_seq: u64, head: u64) -> Result<(), crate::EngineError> {
        let root = self.store.preview_root()?;
        let want = self.view.head().header.state_root;
        if root != want {
            return Err(recovery(format!(
                "replaying the log into block {head} gives state root {root}, its header has {want}"
            )));
        }
        self.store.commit(next_seq, head)?;
        tracing::info!(block = head, %root, "state caught up with the chain store from the log");
        self.view.state = self.store.view();
        self.view.block_states.insert(head, self.view.state.clone());
        Ok(())
    }

    fn store_checkpoint(&self) -> (u64, u64) {
        self.store.last_commit().unwrap_or((0, 0))
    }

    /// Stops the sequencer after a storage failure: nothing more is sealed or acknowledged.
    fn fatal(&mut self, what: &str, error: impl std::fmt::Display) {
        let message = format!("{what}: {error}");
        tracing::error!("{message}; the sequencer stops");
        let _ = self.shared.fatal.set(message);
        self.stopped = true;
    }

    /// Runs until shutdown or until every sender of `intake` is gone.
    pub(crate) fn run(mut self, intake: Receiver<Command>) {
        if let Some(core) = self.config.sequencer_core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(core, "could not pin the sequencer thread");
            }
        }
        let tick = self.config.mini_block_time;
        // One grid for both, so the tick that reaches the block time closes the block.
        let start = Instant::now();
        let mut next_tick = start + tick;
        let mut block_deadline = start + self.config.block_time;
        let mut running = true;
        while running && !self.stopped {
            // Admit transactions until the tick, or until the mini-block is full.
            loop {
                match intake.recv_deadline(next_tick) {
                    Ok(Command::Submit(s)) => {
                        self.admit(*s);
                        if self.pool.ready_len() >= self.config.pool.max_txs_per_mini_block {
                            break;
                        }
                    }
                    Ok(Command::WatchReceipt(hash, notify)) => self.watch(hash, notify),
                    Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                        running = false;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            // The mini-block that reaches the block time closes the block; its log record says
            // so, which lets recovery re-seal the block exactly as it is sealed below.
            let closes_block = Instant::now() >= block_deadline;
            self.seal_mini_block(closes_block);
            // The block closed last time seals as soon as its root is in.
            self.finish_seal(false);
            let now = Instant::now();
            if now >= next_tick {
                next_tick += tick;
                if next_tick <= now {
                    // We fell behind (a slow mini-block): skip the missed ticks, keep the grid.
                    let missed = (now - next_tick).as_nanos() / tick.as_nanos().max(1) + 1;
                    next_tick += tick * missed as u32;
                }
            }
            if closes_block && !self.stopped {
                self.close_evm_block();
                block_deadline += self.config.block_time;
                if block_deadline <= now {
                    block_deadline = now + self.config.block_time;
                }
            }
        }
        // The last closed block is sealed and stored before the thread ends.
        if !self.stopped {
            self.finish_seal(true);
        }
        // Waiters still pending learn that the node stopped.
        for (_, list) in self.waiters.drain() {
            for w in list {
                w(Err(TxError::Unavailable("node shutting down")));
            }
        }
    }

    fn watch(&mut self, hash: B256, notify: Notify<Result<Arc<IncludedTx>, TxError>>) {
        if let Some(inc) = self.view.txs.get(&hash) {
            notify(Ok(inc.clone()));
        } else if self.pool.contains(&hash) {
            self.waiters.entry(hash).or_default().push(notify);
        } else {
            notify(Err(TxError::Evicted("transaction is not in the pool")));
        }
    }

    fn admit(&mut self, s: Submission) {
        let Submission { tx, reject_gap, on_accept, on_receipt } = s;
        let tx = Arc::new(tx);
        let hash = tx.hash;
        let sender = tx.sender;
        let account = self.view.state.account(&sender).unwrap_or_default();
        let result = if self.view.txs.contains_key(&hash) {
            Err(TxError::AlreadyKnown)
        } else {
            self.pool.insert(tx.clone(), account.nonce, account.balance, reject_gap)
        };
        match result {
            Ok(inserted) => {
                if let Some(old) = inserted.replaced {
                    self.pool_view.txs.remove(&old.hash);
                    self.fail_waiters(
                        &old.hash,
                        TxError::Evicted("replaced by a higher-fee transaction"),
                    );
                }
                for old in inserted.evicted {
                    self.pool_view.txs.remove(&old.hash);
                    self.fail_waiters(&old.hash, TxError::Evicted("txpool is full"));
                    self.refresh_pending_nonce(&old.sender);
                }
                if let Some(w) = on_receipt {
                    self.waiters.entry(hash).or_default().push(w);
                }
                publish(&self.shared.pending_subscribers, &tx);
                self.pool_view.txs.insert(hash, tx);
                self.refresh_pending_nonce(&sender);
                self.shared.pool.store(Arc::new(self.pool_view.clone()));
                if let Some(a) = on_accept {
                    a(Ok(hash));
                }
            }
            Err(e) => {
                if let Some(a) = on_accept {
                    a(Err(e.clone()));
                }
                if let Some(w) = on_receipt {
                    w(Err(e));
                }
            }
        }
    }

    fn refresh_pending_nonce(&mut self, sender: &Address) {
        match self.pool.pending_nonce(sender) {
            Some(n) => {
                self.pool_view.nonces.insert(*sender, n);
            }
            None => {
                self.pool_view.nonces.remove(sender);
            }
        }
    }

    fn fail_waiters(&mut self, hash: &B256, err: TxError) {
        if let Some(list) = self.waiters.remove(hash) {
            for w in list {
                w(Err(err.clone()));
            }
        }
    }

    fn seal_mini_block(&mut self, closes_block: bool) {
        let started = Instant::now();
        let open = self.view.open.clone();
        let block_left = open.gas_limit - open.gas_used;
        let mut mini_left = self.config.mini_block_gas_limit.min(block_left);
        let mut picked: Vec<Arc<RecoveredTx>> = Vec::new();
        while picked.len() < self.config.pool.max_txs_per_mini_block {
            let max_gas = if picked.is_empty() { block_left } else { mini_left };
            let Some(tx) = self.pool.pop_ready(max_gas) else { break };
            mini_left = mini_left.saturating_sub(tx.envelope.gas_limit());
            picked.push(tx);
        }
        let ctx = open.context(&self.config);
        let block_hash = self.view.block_hash_lookup();
        let base = self.store.view();
        let refs: Vec<&RecoveredTx> = picked.iter().map(|t| t.as_ref()).collect();
        let BlockOutput { results, diff } = if refs.is_empty() {
            BlockOutput::default()
        } else {
            let db = ViewDb { view: &*base, block_hash: &block_hash };
            self.executor.execute(db, &ctx.exec_env(), &tx_envs(&refs))
        };
        let mut records = Vec::with_capacity(results.len());
        let mut dropped = Vec::new();
        for (tx, result) in picked.iter().zip(results) {
            match result {
                Ok(exec) => {
                    self.pool.on_executed(&tx.sender, tx.envelope.nonce());
                    let mini_block_number = self.next_mini_block;
                    records.push(TxRecord { tx: tx.clone(), exec, mini_block_number });
                }
                Err(reason) => {
                    tracing::debug!(hash = %tx.hash, %reason, "transaction dropped at execution");
                    self.pool.on_dropped(&tx.sender);
                    dropped.push((tx.hash, reason));
                }
            }
        }
        let executed = started.elapsed();
        // A `BLOCKHASH` of the block being sealed read zero if its root failed: nothing executed
        // over that may be acknowledged.
        if let Some(Err(e)) = self.view.sealing.as_ref().and_then(|s| s.try_sealed()) {
            return self.fatal("state checkpoint failed", e);
        }
        let mini = match self.include(records, diff, now_us(), closes_block) {
            Ok(mini) => mini,
            Err(e) => return self.fatal("state store failed to apply a mini-block", e),
        };
        let included = started.elapsed();
        if let Some(d) = &mut self.durable {
            // Receipts and the new state are released only once the record is durable. Empty
            // mini-blocks ride along with the next sync (nothing was acknowledged in them),
            // unless they close a block, which is served as soon as it is sealed.
            let logged = d.wal.append(mini.number, &record::encode_mini_block(&mini));
            let synced = logged.and_then(|()| {
                if mini.txs.is_empty() && !closes_block {
                    Ok(())
                } else {
                    d.wal.sync()
                }
            });
            if let Err(e) = synced {
                return self.fatal("write-ahead log failed", e);
            }
        }
        let logged = started.elapsed();
        let included_txs = mini.txs.clone();
        self.shared.view.store(Arc::new(self.view.clone()));
        // Senders whose transactions left the pool: their nonce now lives in the state.
        for tx in &picked {
            self.pool_view.txs.remove(&tx.hash);
            self.refresh_pending_nonce(&tx.sender);
        }
        if !picked.is_empty() {
            self.shared.pool.store(Arc::new(self.pool_view.clone()));
        }
        for inc in &included_txs {
            if let Some(list) = self.waiters.remove(&inc.tx.hash) {
                for w in list {
                    w(Ok(inc.clone()));
                }
            }
        }
        for (hash, reason) in dropped {
            self.fail_waiters(&hash, TxError::Dropped(reason));
        }
        publish(&self.shared.mini_block_subscribers, &mini);
        if !mini.txs.is_empty() {
            tracing::trace!(
                number = mini.number,
                txs = mini.txs.len(),
                exec_us = executed.as_micros() as u64,
                include_us = (included - executed).as_micros() as u64,
                log_us = (logged - included).as_micros() as u64,
                answer_us = (started.elapsed() - logged).as_micros() as u64,
                "mini-block sealed"
            );
        }
    }

    /// Applies an executed mini-block to the state, the open block and the chain view (not yet
    /// published). Shared by live sealing and write-ahead-log replay, so both build the same
    /// receipts.
    fn include(
        &mut self,
        txs: Vec<TxRecord>,
        diff: StateDiff,
        timestamp_us: u64,
        closes_block: bool,
    ) -> Result<Arc<MiniBlock>, strobe_storage::StoreError> {
        self.store.apply(&diff)?;
        let open = self.view.open.clone();
        let mut open_next = (*open).clone();
        let mut included = Vec::with_capacity(txs.len());
        for r in txs {
            open_next.gas_used += r.exec.gas_used;
            let inc = Arc::new(record::included(
                r,
                open.number,
                open_next.txs.len() as u32,
                open_next.gas_used,
                open_next.log_count,
                open.base_fee,
            ));
            // A tries miss (say, a block reopened mid-way at a restart) only costs a full
            // rebuild at the seal.
            let _ =
                self.tries.add(open.number, open_next.txs.len(), &inc.tx.envelope, &inc.receipt());
            open_next.log_count += inc.logs.len() as u32;
            open_next.bloom |= inc.bloom;
            open_next.txs.push_back(inc.clone());
            included.push(inc);
        }
        open_next.mini_block_count += 1;
        let mini = Arc::new(MiniBlock {
            number: self.next_mini_block,
            block_number: open.number,
            index: open.mini_block_count,
            timestamp_us,
            block_timestamp: open.timestamp,
            gas_used: included.iter().map(|t| t.gas_used).sum(),
            txs: included,
            diff: Arc::new(diff),
            closes_block,
        });
        self.next_mini_block += 1;
        for inc in &mini.txs {
            self.view.txs.insert(inc.tx.hash, inc.clone());
        }
        self.view.state = self.store.view();
        self.view.open = Arc::new(open_next);
        self.view.mini_block_number = Some(mini.number);
        self.view.recent_mini_blocks.push_back(MiniBlockSummary {
            number: mini.number,
            block_number: mini.block_number,
            index: mini.index,
            timestamp_us: mini.timestamp_us,
            tx_count: mini.txs.len() as u32,
            gas_used: mini.gas_used,
        });
        if self.view.recent_mini_blocks.len() > MINI_BLOCK_HISTORY {
            self.view.recent_mini_blocks.pop_front();
        }
        Ok(mini)
    }

    /// Closes the open EVM block and seals it, waiting for its state root (recovery, shutdown
    /// and tests; the live loop closes with [`Self::close_evm_block`] and seals when the root is
    /// in).
    fn seal_evm_block(&mut self) {
        self.close_evm_block();
        self.finish_seal(true);
    }

    /// Closes the open EVM block: starts its state commit (the root is planned on the store's
    /// checkpoint thread), builds the rest of its header, and opens the next block at once, so
    /// the next mini-block is not held up by the commit. [`Self::finish_seal`] seals the block
    /// when the root arrives.
    fn close_evm_block(&mut self) {
        // One block in flight: the previous one is sealed and handed to the block writer first
        // (long done at one-second blocks).
        self.finish_seal(true);
        if self.stopped {
            return;
        }
        let open = self.view.open.clone();
        let started = Instant::now();
        let txs = &open.txs;
        // Recovery can re-seal only one block that the state checkpoint is ahead of the chain
        // store by, so this block's checkpoint waits until its parent is stored (long done at
        // one-second blocks: this is a check, not a wait).
        if let Some(d) = &self.durable {
            if let Err(e) = d.blocks.wait_stored(open.number - 1) {
                return self.fatal("storing a sealed block failed", e);
            }
        }
        let root = match self.store.begin_commit(self.next_mini_block, open.number) {
            Ok(root) => root,
            Err(e) => return self.fatal("state checkpoint failed", e),
        };
        let commit_time = started.elapsed();
        // The tries were built as the block's transactions were included; from scratch only if
        // they did not see exactly this block's transactions (the two side by side).
        let tries = std::mem::take(&mut self.tries);
        let (transactions_root, receipts_root) =
            tries.roots(open.number, txs.len()).unwrap_or_else(|| {
                tracing::debug!(
                    number = open.number,
                    txs = txs.len(),
                    "block tries incomplete: building them at the seal"
                );
                rayon::join(
                    || {
                        let envelopes: Vec<_> = txs.iter().map(|t| t.tx.envelope.clone()).collect();
                        proofs::calculate_transaction_root(&envelopes)
                    },
                    || {
                        let receipts: Vec<_> = txs.iter().map(|t| t.receipt()).collect();
                        proofs::calculate_receipt_root(&receipts)
                    },
                )
            });
        let header = prague_header(Header {
            parent_hash: open.parent_hash,
            beneficiary: self.config.beneficiary,
            state_root: B256::ZERO,
            transactions_root,
            receipts_root,
            logs_bloom: open.bloom,
            number: open.number,
            gas_limit: open.gas_limit,
            gas_used: open.gas_used,
            timestamp: open.timestamp,
            mix_hash: open.prevrandao,
            base_fee_per_gas: Some(open.base_fee),
            ..Default::default()
        });
        let next = open_after(&header, None, &self.config, now_us() / 1_000_000);
        let sealing = Arc::new(SealingBlock::new(open.clone(), header, root));
        // The same state as after the last mini-block, but as of the commit: once the
        // checkpoint is written, this view can prove keys against the block's root.
        self.view.state = self.store.view();
        self.view.block_states.insert(open.number, self.view.state.clone());
        while self.view.block_states.len() > STATE_HISTORY_BLOCKS {
            let first = *self.view.block_states.keys().next().expect("non-empty");
            self.view.block_states.remove(&first);
        }
        self.view.sealing = Some(sealing.clone());
        self.view.open = Arc::new(next);
        self.shared.view.store(Arc::new(self.view.clone()));
        self.sealing = Some(PendingSeal {
            block: sealing,
            first_record: self.next_mini_block.saturating_sub(open.mini_block_count as u64),
            closed: started,
            close_us: started.elapsed().as_micros() as u64,
            commit_us: commit_time.as_micros() as u64,
        });
        // A store that computed the root at once: seal now.
        self.finish_seal(false);
    }

    /// Seals the closed block once its state root is in (waits for it when `wait`): hands it to
    /// the block writer, lets go of the log segments it no longer needs, and publishes it.
    fn finish_seal(&mut self, wait: bool) {
        // After a failure the view may hold what was never logged: publish nothing more.
        if self.stopped {
            return;
        }
        let Some(pending) = &self.sealing else { return };
        let sealed = if wait { Some(pending.block.wait()) } else { pending.block.try_sealed() };
        let Some(sealed) = sealed else { return };
        let pending = self.sealing.take().expect("checked above");
        let block = match sealed {
            Ok(block) => block,
            Err(e) => return self.fatal("state checkpoint failed", e),
        };
        let root_time = pending.closed.elapsed();
        if let Some(d) = &mut self.durable {
            // Records leave the log once a durable checkpoint and the chain store both hold their
            // block: those before this block's first record (the chain store holds the parent,
            // waited for at the close) that the last durable checkpoint covers. Whole closed
            // segments leave, and the block writer deletes their files, off the tick.
            let checkpointed = self.store.last_commit().map_or(0, |(next, _)| next);
            let logged = d.wal.sync().map_err(|e| e.to_string());
            let stored = logged.and_then(|()| d.blocks.submit(block.clone()));
            let upto = checkpointed.min(pending.first_record).checked_sub(1);
            let trimmed = stored.and_then(|()| match upto {
                Some(last) => d.blocks.remove_log_segments(d.wal.detach_closed_upto(last)),
                None => Ok(()),
            });
            if let Err(e) = trimmed {
                return self.fatal("storing the sealed block failed", e);
            }
        }
        self.view.by_hash.insert(block.hash, block.header.number);
        self.view.sealed.push_back(block.clone());
        self.view.sealing = None;
        let mut open = (*self.view.open).clone();
        open.parent_hash = block.hash;
        self.view.open = Arc::new(open);
        self.shared.view.store(Arc::new(self.view.clone()));
        // The sequencer makes no mini-block while it closes a block: `close_us` is the pause a
        // block costs; the root arrives `root_us` after the close, while mini-blocks go on.
        tracing::debug!(
            number = block.header.number,
            txs = block.txs.len(),
            commit_us = pending.commit_us,
            close_us = pending.close_us,
            root_us = root_time.as_micros() as u64,
            seal_us = pending.closed.elapsed().as_micros() as u64,
            "block sealed"
        );
        publish(&self.shared.block_subscribers, &block);
    }
}

/// A closed block waiting for its state root, with what its seal needs.
struct PendingSeal {
    block: Arc<SealingBlock>,
    /// Log sequence number of the block's first mini-block.
    first_record: u64,
    /// When the block was closed.
    closed: Instant,
    /// How long closing it held the sequencer.
    close_us: u64,
    /// Of which starting the state commit.
    commit_us: u64,
}

/// Wakes a subscriber's thread after an item was queued for it (an eventfd write, say); it runs
/// on the sequencer thread, so it must be quick and never block.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// One subscriber of a feed: a bounded queue and an optional waker.
pub struct Subscriber<T> {
    /// Where items go.
    pub queue: Sender<Arc<T>>,
    /// Called after each item is queued.
    pub wake: Option<Waker>,
}

fn publish<T>(subscribers: &Mutex<Vec<Subscriber<T>>>, item: &Arc<T>) {
    let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    if subs.is_empty() {
        return;
    }
    subs.retain(|s| match s.queue.try_send(item.clone()) {
        Ok(()) => {
            if let Some(wake) = &s.wake {
                wake();
            }
            true
        }
        Err(TrySendError::Full(_)) => {
            tracing::warn!("dropping a subscriber that fell behind");
            false
        }
        Err(TrySendError::Disconnected(_)) => false,
    });
}

fn recovery(message: String) -> crate::EngineError {
    crate::EngineError::Recovery(message)
}

/// The genesis state as a diff over the empty state.
pub(crate) fn genesis_diff(genesis: &Genesis) -> StateDiff {
    let mut codes = Vec::new();
    let mut accounts: Vec<AccountChange> = genesis
        .alloc
        .iter()
        .map(|(address, a)| {
            let code_hash = if a.code.is_empty() {
                KECCAK_EMPTY
            } else {
                let hash = keccak256(&a.code);
                codes.push((hash, revm::bytecode::Bytecode::new_raw(a.code.clone())));
                hash
            };
            let mut storage = a.storage.clone();
            storage.sort_unstable_by_key(|(k, _)| *k);
            AccountChange {
                address: *address,
                info: Some(AccountState { nonce: a.nonce, balance: a.balance, code_hash }),
                storage_cleared: false,
                storage,
            }
        })
        .collect();
    accounts.sort_unstable_by_key(|a| a.address);
    accounts.dedup_by_key(|a| a.address);
    StateDiff { accounts, codes }
}

/// Writes the genesis state into `store`, commits it, and returns the genesis block.
fn build_genesis(
    config: &ChainConfig,
    genesis: &Genesis,
    store: &mut dyn StateStore,
) -> Result<SealedBlock, crate::EngineError> {
    let StateDiff { accounts, codes } = genesis_diff(genesis);
    // A huge genesis (millions of accounts) goes in by chunks, each committed, so the store's
    // in-memory layer never holds more than one chunk.
    let mut chunks = accounts.chunks(GENESIS_CHUNK_ACCOUNTS);
    store.apply(&StateDiff { accounts: chunks.next().unwrap_or_default().to_vec(), codes })?;
    for chunk in chunks {
        store.commit(0, 0)?;
        store.apply(&StateDiff { accounts: chunk.to_vec(), codes: Vec::new() })?;
    }
    drop(accounts);
    let timestamp = if genesis.timestamp == 0 { now_us() / 1_000_000 } else { genesis.timestamp };
    let header = prague_header(Header {
        state_root: store.commit(0, 0)?,
        gas_limit: config.block_gas_limit,
        timestamp,
        extra_data: genesis.extra_data.clone(),
        base_fee_per_gas: Some(INITIAL_BASE_FEE_WEI),
        ..Default::default()
    });
    Ok(SealedBlock::new(header, Vec::new(), 0))
}

/// Fills the fields every strobe header has in common: no ommers, no proof-of-work, no
/// withdrawals, no blobs, no beacon root and no execution-layer requests (Prague layout), and an
/// empty transactions/receipts root when the header has none.
fn prague_header(mut h: Header) -> Header {
    h.ommers_hash = EMPTY_OMMER_ROOT_HASH;
    h.difficulty = U256::ZERO;
    if h.transactions_root == B256::ZERO {
        h.transactions_root = alloy_trie::EMPTY_ROOT_HASH;
    }
    if h.receipts_root == B256::ZERO {
        h.receipts_root = alloy_trie::EMPTY_ROOT_HASH;
    }
    h.withdrawals_root = Some(alloy_trie::EMPTY_ROOT_HASH);
    h.blob_gas_used = Some(0);
    h.excess_blob_gas = Some(0);
    h.parent_beacon_block_root = Some(B256::ZERO);
    h.requests_hash = Some(EMPTY_REQUESTS_HASH);
    h
}

/// The open block that follows the block with header `h` and hash `parent_hash` (`None`
/// while that block's state root is computed: the hash is filled in when it is sealed).
///
/// PREVRANDAO is keccak256 of the parent's parent hash, so the next block can execute before its
/// parent's hash is known. (Chains written before this rule used keccak256 of the parent hash.)
fn open_after(
    h: &Header,
    parent_hash: Option<B256>,
    config: &ChainConfig,
    now_s: u64,
) -> OpenBlock {
    // Timestamps strictly increase with blocks of a second or more; faster blocks may share one.
    let min_ts =
        if config.block_time >= Duration::from_secs(1) { h.timestamp + 1 } else { h.timestamp };
    OpenBlock {
        number: h.number + 1,
        parent_hash: parent_hash.unwrap_or_default(),
        timestamp: now_s.max(min_ts),
        base_fee: next_base_fee(
            h.base_fee_per_gas.unwrap_or(INITIAL_BASE_FEE_WEI),
            h.gas_used,
            h.gas_limit,
        ),
        gas_limit: config.block_gas_limit,
        gas_used: 0,
        prevrandao: keccak256(h.parent_hash),
        txs: imbl::Vector::new(),
        mini_block_count: 0,
        log_count: 0,
        bloom: Bloom::ZERO,
    }
}

/// Sends `cmd` without blocking; a full queue is reported as [`TxError::Unavailable`].
pub(crate) fn try_send(tx: &Sender<Command>, cmd: Command) -> Result<(), TxError> {
    tx.try_send(cmd).map_err(|e| match e {
        TrySendError::Full(_) => TxError::Unavailable("intake queue is full"),
        TrySendError::Disconnected(_) => TxError::Unavailable("node is shutting down"),
    })
}

#[cfg(test)]
#[path = "sequencer_tests.rs"]
mod tests;
