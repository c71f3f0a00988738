//! The embedding API: start an engine, submit transactions, await receipts, subscribe to
//! mini-blocks and blocks, read state.
//!
//! Every method is safe to call from any thread; none blocks the sequencer.

use crate::{
    chain::{ChainView, IncludedTx, MiniBlock, SealedBlock},
    config::{ChainConfig, Genesis},
    sequencer::{
        try_send, Command, Durable, Notify, Sequencer, Shared, Submission, Subscriber, Waker,
        INTAKE_QUEUE_CAPACITY,
    },
    tx::{decode_and_recover, IntakeRules, RecoveredTx, TxError},
};
use alloy_primitives::{Address, B256};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::{path::Path, sync::Arc, thread::JoinHandle, time::Duration};
use strobe_storage::{
    ChainStore, ChainStoreOptions, PersistentStore, StateStore, StoreOptions, Wal, WalOptions,
};

/// Queue depths in front of the sequencer.
#[derive(Clone, Copy, Debug)]
pub struct QueueDepths {
    /// Commands (submissions, receipt watches) waiting in the intake queue.
    pub intake: usize,
    /// Transactions in the pool.
    pub pool: usize,
}

/// A running engine: the sequencer thread plus the handles to talk to it.
pub struct Engine {
    config: ChainConfig,
    /// The data directory and the shape of its state store, for a durable engine.
    durable: Option<(std::path::PathBuf, StoreOptions)>,
    shared: Arc<Shared>,
    intake: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Writes `genesis` into `store` and starts the sequencer thread. Nothing is written to disk
    /// beyond what `store` itself keeps: a restart starts a new chain (see [`Self::open`]).
    pub fn start(
        config: ChainConfig,
        genesis: &Genesis,
        store: Box<dyn StateStore>,
    ) -> Result<Self, crate::EngineError> {
        Self::launch(config, genesis, store, None, None)
    }

    /// Opens (or creates, from `genesis`) a durable chain in `datadir`: the state store in
    /// `state/`, the write-ahead log in `wal/`, sealed blocks in `chain/`. A restart resumes at
    /// the same head with the same state; `genesis` and `options` only matter the first time.
    pub fn open(
        config: ChainConfig,
        genesis: &Genesis,
        datadir: &Path,
        options: StoreOptions,
    ) -> Result<Self, crate::EngineError> {
        let mut store = PersistentStore::open(&datadir.join("state"), options)?;
        let (wal, records) = Wal::open(&datadir.join("wal"), WalOptions::default())?;
        let chain = ChainStore::open(&datadir.join("chain"), ChainStoreOptions::default())?;
        if chain.is_empty() && !store.is_new() && records.is_empty() {
            // Creation was cut short after the genesis state and before the genesis block: no
            // block was ever served from this directory, so it is safe to build it again.
            tracing::warn!(datadir = %datadir.display(), "finishing an interrupted creation");
            store = store.recreate(options)?;
        }
        if !chain.is_empty() && store.is_new() {
            return Err(crate::EngineError::Recovery(format!(
                "{} holds blocks but no state checkpoint",
                datadir.display()
            )));
        }
        if chain.is_empty() && !store.is_new() {
            return Err(crate::EngineError::Recovery(format!(
                "{} holds state but no blocks: it was not fully created (remove it to start over)",
                datadir.display()
            )));
        }
        if chain.is_empty() {
            let diff = crate::sequencer::genesis_diff(genesis);
            crate::verify::write_genesis(datadir, config.chain_id, &diff).map_err(|e| {
                crate::EngineError::Recovery(format!(
                    "writing {}: {e}",
                    crate::verify::GENESIS_FILE
                ))
            })?;
        }
        let (accounts_log2_buckets, slots_log2_buckets) = store.stats().log2_buckets;
        let shape = StoreOptions { accounts_log2_buckets, slots_log2_buckets };
        Self::launch(
            config,
            genesis,
            Box::new(store),
            Some((Durable { wal, chain }, records)),
            Some((datadir.to_path_buf(), shape)),
        )
    }

    fn launch(
        config: ChainConfig,
        genesis: &Genesis,
        store: Box<dyn StateStore>,
        durable: Option<(Durable, Vec<strobe_storage::WalRecord>)>,
        datadir: Option<(std::path::PathBuf, StoreOptions)>,
    ) -> Result<Self, crate::EngineError> {
        let (sequencer, shared) = Sequencer::new(config.clone(), genesis, store, durable)?;
        let (intake, rx) = bounded(INTAKE_QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("strobe-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(crate::EngineError::Thread)?;
        Ok(Self { config, durable: datadir, shared, intake, thread: Some(thread) })
    }

    /// The chain's configuration.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// For an engine opened on a data directory ([`Self::open`]): the directory, and the shape
    /// of its state store (which decides every state root).
    pub fn datadir(&self) -> Option<(&Path, StoreOptions)> {
        self.durable.as_ref().map(|(p, o)| (p.as_path(), *o))
    }

    /// Why the sequencer stopped on its own (a storage failure), if it did. Nothing is sealed or
    /// acknowledged after that; the embedder should report it and exit.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.fatal.get().cloned()
    }

    /// The newest chain view (lock-free).
    pub fn view(&self) -> Arc<ChainView> {
        self.shared.view.load_full()
    }

    /// Rules for the stateless checks, as of the open block.
    pub fn intake_rules(&self) -> IntakeRules {
        IntakeRules {
            chain_id: self.config.chain_id,
            block_gas_limit: self.config.block_gas_limit,
            base_fee: self.shared.view.load().open.base_fee,
            min_priority_fee_wei: self.config.min_priority_fee_wei,
        }
    }

    /// Decodes, recovers and checks `raw` on the calling thread.
    pub fn decode(&self, raw: &[u8]) -> Result<RecoveredTx, TxError> {
        decode_and_recover(raw, &self.intake_rules())
    }

    /// Hands `tx` to the sequencer. `on_accept` learns whether the pool took it; `on_receipt`
    /// learns when it is included (or why it never will be). Both run on the sequencer thread
    /// and must return quickly.
    pub fn submit(
        &self,
        tx: RecoveredTx,
        reject_gap: bool,
        on_accept: Option<Notify<Result<B256, TxError>>>,
        on_receipt: Option<Notify<Result<Arc<IncludedTx>, TxError>>>,
    ) -> Result<(), TxError> {
        try_send(
            &self.intake,
            Command::Submit(Box::new(Submission { tx, reject_gap, on_accept, on_receipt })),
        )
    }

    /// Calls `notify` when the pooled transaction `hash` is included (at once if it already is).
    pub fn watch_receipt(
        &self,
        hash: B256,
        notify: Notify<Result<Arc<IncludedTx>, TxError>>,
    ) -> Result<(), TxError> {
        try_send(&self.intake, Command::WatchReceipt(hash, notify))
    }

    /// Submits `raw` and blocks the calling thread until its receipt (or `timeout`).
    pub fn send_and_wait(&self, raw: &[u8], timeout: Duration) -> Result<Arc<IncludedTx>, TxError> {
        let tx = self.decode(raw)?;
        let (done, wait) = bounded(1);
        self.submit(
            tx,
            false,
            None,
            Some(Box::new(move |r| {
                let _ = done.send(r);
            })),
        )?;
        wait.recv_timeout(timeout)
            .unwrap_or(Err(TxError::Unavailable("timed out waiting for the receipt")))
    }

    /// How full the queues in front of the sequencer are, for metrics.
    pub fn queue_depths(&self) -> QueueDepths {
        QueueDepths { intake: self.intake.len(), pool: self.shared.pool.load().txs.len() }
    }

    /// The nonce the next transaction of `address` should carry (pool included).
    pub fn pending_nonce(&self, address: &Address) -> u64 {
        // Read the pool's map before the state: the sequencer publishes state first, then prunes
        // the map, so this order never misses a nonce.
        let pooled = self.shared.pool.load().nonces.get(address).copied();
        let state = self.view().state.account(address).map(|a| a.nonce).unwrap_or(0);
        pooled.unwrap_or(0).max(state)
    }

    /// A transaction waiting in the pool, by hash.
    pub fn pooled_transaction(&self, hash: &B256) -> Option<Arc<RecoveredTx>> {
        self.shared.pool.load().txs.get(hash).cloned()
    }

    /// A bounded feed of mini-blocks, each published once it is durable; the subscription ends
    /// (the receiver sees a disconnect) if the receiver falls `capacity` mini-blocks behind.
    pub fn subscribe_mini_blocks(&self, capacity: usize) -> Receiver<Arc<MiniBlock>> {
        self.subscribe_mini_blocks_waking(capacity, None)
    }

    /// [`Self::subscribe_mini_blocks`], calling `wake` on the sequencer thread after each item
    /// (for event loops that sleep on a descriptor rather than on the channel).
    pub fn subscribe_mini_blocks_waking(
        &self,
        capacity: usize,
        wake: Option<Waker>,
    ) -> Receiver<Arc<MiniBlock>> {
        subscribe(&self.shared.mini_block_subscribers, capacity, wake)
    }

    /// A bounded feed of sealed EVM blocks, ending like [`Self::subscribe_mini_blocks`]. A block
    /// is published once its state root is computed, a few milliseconds after its last
    /// mini-block, so the first mini-blocks of the next block may come before it.
    pub fn subscribe_blocks(&self, capacity: usize) -> Receiver<Arc<SealedBlock>> {
        self.subscribe_blocks_waking(capacity, None)
    }

    /// [`Self::subscribe_blocks`] with a waker, like [`Self::subscribe_mini_blocks_waking`].
    pub fn subscribe_blocks_waking(
        &self,
        capacity: usize,
        wake: Option<Waker>,
    ) -> Receiver<Arc<SealedBlock>> {
        subscribe(&self.shared.block_subscribers, capacity, wake)
    }

    /// A bounded feed of transactions as the pool admits them, ending like
    /// [`Self::subscribe_mini_blocks`]; dropping the receiver ends it at the next admission.
    pub fn subscribe_pending(
        &self,
        capacity: usize,
        wake: Option<Waker>,
    ) -> Receiver<Arc<RecoveredTx>> {
        subscribe(&self.shared.pending_subscribers, capacity, wake)
    }

    /// Stops the sequencer after its current mini-block and waits for it.
    pub fn shutdown(&mut self) {
        let _ = self.intake.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn subscribe<T>(
    subscribers: &std::sync::Mutex<Vec<Subscriber<T>>>,
    capacity: usize,
    wake: Option<Waker>,
) -> Receiver<Arc<T>> {
    let (queue, rx) = bounded(capacity);
    subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(Subscriber { queue, wake });
    rx
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
