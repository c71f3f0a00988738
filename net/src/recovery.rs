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
    sequencer::{Notify, ReceiptNotify},
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
    pub on_receipt: Option<ReceiptNotify>,
}

/// The recovery workers.
pub struct SenderRecovery {
    queues: Vec<Sender<RecoveryJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl SenderRecovery {
    /// Starts `threads` workers (at least one) submitting to `engine`, pinned to `cores`
    /// (cycled; empty: not pinned).
    pub fn start(engine: Arc<Engine>, threads: usize, cores: &[usize]) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = bounded::<RecoveryJob>(RECOVERY_QUEUE_CAPACITY);
            let engine = engine.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let handle = std::thread::Builder::new().name(format!("strobe-recover-{i}")).spawn(
                move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                            tracing::warn!(core, "could not pin recovery thread {i}");
                        }
                    }
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

    /// Transactions waiting for a worker, over all workers.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy_eips::eip2718::Encodable2718;
    use alloy_primitives::{Address, Signature, TxKind, U256};
    use std::time::Duration;
    use strobe_engine::{
        config::{ChainConfig, Genesis, GenesisAccount},
        storage::MemoryStore,
    };

    /// A transfer signed by `key` for the default chain.
    fn signed(key: &secp256k1::SecretKey, nonce: u64) -> (Vec<u8>, Address) {
        let tx = TxEip1559 {
            chain_id: ChainConfig::default().chain_id,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 10_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(Address::repeat_byte(0xaa)),
            value: U256::from(1),
            access_list: Default::default(),
            input: Default::default(),
        };
        let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
        let (recid, bytes) =
            secp256k1::ecdsa::RecoverableSignature::sign_ecdsa_recoverable(msg, key)
                .serialize_compact();
        let sig = Signature::new(
            U256::from_be_slice(&bytes[..32]),
            U256::from_be_slice(&bytes[32..]),
            recid == secp256k1::ecdsa::RecoveryId::One,
        );
        let pubkey = key.public_key().serialize_uncompressed();
        let sender = Address::from_slice(&alloy_primitives::keccak256(&pubkey[1..])[12..]);
        (TxEnvelope::from(tx.into_signed(sig)).encoded_2718(), sender)
    }

    fn engine_funding(sender: Address) -> Engine {
        let genesis = Genesis {
            alloc: vec![(
                sender,
                GenesisAccount { balance: U256::from(10u128.pow(20)), ..Default::default() },
            )],
            ..Default::default()
        };
        Engine::start(ChainConfig::default(), &genesis, Box::new(MemoryStore::new())).unwrap()
    }

    /// Runs `raw` through a worker and returns what `on_accept` heard.
    fn verdict(recovery: &SenderRecovery, engine: &Engine, raw: Vec<u8>) -> Result<B256, TxError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = RecoveryJob {
            raw: raw.into(),
            rules: engine.intake_rules(),
            reject_gap: false,
            on_accept: Box::new(move |r| {
                let _ = tx.send(r);
            }),
            on_receipt: None,
        };
        recovery.submit(7, job).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("every job is answered")
    }

    #[test]
    fn every_job_is_answered_accepted_undecodable_or_refused() {
        let key = secp256k1::SecretKey::from_secret_bytes([7u8; 32]).unwrap();
        let (raw, sender) = signed(&key, 0);
        let engine = Arc::new(engine_funding(sender));
        let recovery = SenderRecovery::start(engine.clone(), 2, &[0]).unwrap();
        let hash = verdict(&recovery, &engine, raw.clone()).expect("a funded transfer is accepted");
        assert_eq!(hash, alloy_primitives::keccak256(&raw));
        let garbage = verdict(&recovery, &engine, vec![0xde, 0xad, 0xbe, 0xef]).unwrap_err();
        assert!(matches!(garbage, TxError::Decode(_)), "{garbage}");
        drop(recovery);

        // An engine that has stopped refuses at `submit`: the refusal still reaches on_accept.
        let mut stopped = engine_funding(sender);
        stopped.shutdown();
        let stopped = Arc::new(stopped);
        let recovery = SenderRecovery::start(stopped.clone(), 1, &[]).unwrap();
        let (raw, _) = signed(&key, 0);
        let refused = verdict(&recovery, &stopped, raw).unwrap_err();
        assert!(matches!(refused, TxError::Unavailable(_)), "{refused}");
    }
}
