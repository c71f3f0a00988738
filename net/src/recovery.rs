//! `SenderRecovery`: decoding transactions and recovering their senders (secp256k1, ~50–80 µs
//! each, the largest cost of the ingress path) on worker threads instead of the network ring.
//!
//! The ring computes nothing but the transaction hash (keccak of the raw bytes) and hands the
//! raw transaction to a worker over a bounded queue; the worker decodes, recovers, runs the
//! stateless checks and submits to the engine, and every answer — an error, the pool's verdict,
//! the receipt — reaches the ring through the same engine callbacks as before. Transactions of
//! one connection always go to the same worker, so their order (and their nonce order) is kept.
//!
//! Threads: `threads` workers named `strobe-recover-N`, stopped and joined on drop.

use alloy_primitives::{Bytes, B256};
use crossbeam_channel::{bounded, Sender, TrySendError};
use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
};
use strobe_engine::{
    chain::IncludedTx,
    sequencer::Notify,
    tx::{decode_and_recover, IntakeRules, TxError},
    Engine,
};

/// Transactions waiting for each worker; a full queue is answered "sequencer unavailable".
pub const RECOVERY_QUEUE_CAPACITY: usize = 8192;

/// One transaction to recover and submit.
pub struct RecoveryJob {
    /// Its EIP-2718 bytes.
    pub raw: Bytes,
    /// The chain's intake rules as of its arrival.
    pub rules: IntakeRules,
    /// Refuse it if its nonce leaves a gap (sync sends).
    pub reject_gap: bool,
    /// Learns the pool's verdict, or why it never got there.
    pub on_accept: Notify<Result<B256, TxError>>,
    /// Learns of its inclusion (sync sends).
    pub on_receipt: Option<Notify<Result<Arc<IncludedTx>, TxError>>>,
}

/// The recovery workers.
pub struct SenderRecovery {
    queues: Vec<Sender<RecoveryJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl SenderRecovery {
    /// Starts `threads` workers (at least one) submitting to `engine`.
    pub fn start(engine: Arc<Engine>, threads: usize) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = bounded::<RecoveryJob>(RECOVERY_QUEUE_CAPACITY);
            let engine = engine.clone();
            let handle = std::thread::Builder::new().name(format!("strobe-recover-{i}")).spawn(
                move || {
                    for job in rx {
                        recover_and_submit(&engine, job);
                    }
                },
            )?;
            queues.push(tx);
            handles.push(handle);
        }
        Ok(Self { queues, threads: handles })
    }

    /// Queues `job` on the worker of `route` (a connection's identity).
    pub fn submit(&self, route: usize, job: RecoveryJob) -> Result<(), TxError> {
        let queue = &self.queues[route % self.queues.len()];
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => TxError::Unavailable("sender recovery queue is full"),
            TrySendError::Disconnected(_) => TxError::Unavailable("node is shutting down"),
        })
    }
}

impl Drop for SenderRecovery {
    fn drop(&mut self) {
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn recover_and_submit(engine: &Engine, job: RecoveryJob) {
    let tx = match decode_and_recover(&job.raw, &job.rules) {
        Ok(tx) => tx,
        Err(e) => return (job.on_accept)(Err(e)),
    };
    // `submit` consumes the callbacks even when it refuses; keep a way to answer that refusal.
    let slot = Arc::new(Mutex::new(Some(job.on_accept)));
    let inner = slot.clone();
    let on_accept: Notify<Result<B256, TxError>> = Box::new(move |r| {
        if let Some(f) = inner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f(r);
        }
    });
    if let Err(e) = engine.submit(tx, job.reject_gap, Some(on_accept), job.on_receipt) {
        if let Some(f) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f(Err(e));
        }
    }
}
