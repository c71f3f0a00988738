//! The transaction pool: per-sender nonce-ordered queues and a first-come ready queue.
//!
//! Owned by the sequencer thread alone, so it needs no locks. A transaction is *ready* when every
//! lower nonce of its sender is executed or ready; ready transactions are executed in arrival
//! order. Higher nonces wait as *future* transactions (bounded per sender) until the gap fills.

use crate::{
    config::PoolLimits,
    tx::{RecoveredTx, TxError},
};
use alloy_consensus::Transaction;
use alloy_primitives::{map::HashMap, Address, B256, U256};
use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
};

/// Minimum fee bump, in percent, for a replacement (geth's `txpool.pricebump`).
pub const PRICE_BUMP_PERCENT: u128 = 10;

#[derive(Debug)]
struct SenderQueue {
    /// Next nonce the committed state expects.
    exec_nonce: u64,
    /// Next nonce to hand to a mini-block (≥ `exec_nonce`).
    scheduled: u64,
    /// One past the highest nonce contiguous from `exec_nonce` (the "pending" nonce).
    ready_end: u64,
    txs: BTreeMap<u64, Arc<RecoveredTx>>,
}

/// What an accepted insertion displaced.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The transaction this one replaced (same sender and nonce).
    pub replaced: Option<Arc<RecoveredTx>>,
    /// Transactions evicted to make room.
    pub evicted: Vec<Arc<RecoveredTx>>,
}

/// The pool.
#[derive(Debug)]
pub struct Mempool {
    limits: PoolLimits,
    senders: HashMap<Address, SenderQueue>,
    known: HashSet<B256>,
    ready: VecDeque<(Address, u64)>,
    total: usize,
}

impl Mempool {
    /// An empty pool with `limits`.
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            senders: HashMap::default(),
            known: HashSet::new(),
            ready: VecDeque::new(),
            total: 0,
        }
    }

    /// Transactions in the pool.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Entries in the ready queue (an upper bound: stale entries are skipped when popped).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether a transaction with this hash waits in the pool.
    pub fn contains(&self, hash: &B256) -> bool {
        self.known.contains(hash)
    }

    /// The sender's pending nonce (committed + contiguous pooled), if it has a queue.
    pub fn pending_nonce(&self, sender: &Address) -> Option<u64> {
        self.senders.get(sender).map(|q| q.ready_end)
    }

    /// Adds `tx`. `state_nonce` and `balance` are the sender's in the committed state. With
    /// `reject_gap`, a transaction that would wait behind a nonce gap is refused instead.
    pub fn insert(
        &mut self,
        tx: Arc<RecoveredTx>,
        state_nonce: u64,
        balance: U256,
        reject_gap: bool,
    ) -> Result<Inserted, TxError> {
        if self.known.contains(&tx.hash) {
            return Err(TxError::AlreadyKnown);
        }
        let nonce = tx.envelope.nonce();
        let sender = tx.sender;
        let queue = self.senders.entry(sender).or_insert_with(|| SenderQueue {
            exec_nonce: state_nonce,
            scheduled: state_nonce,
            ready_end: state_nonce,
            txs: BTreeMap::new(),
        });
        if nonce < queue.scheduled {
            let next = queue.exec_nonce.max(queue.scheduled);
            self.drop_if_empty(&sender);
            return Err(TxError::NonceTooLow { next, nonce });
        }
        let cost = tx.max_cost();
        if cost > balance {
            self.drop_if_empty(&sender);
            return Err(TxError::InsufficientFunds { balance, cost, overshot: cost - balance });
        }
        let mut inserted = Inserted::default();
        let queue = self.senders.get_mut(&sender).expect("queue created above");
        if let Some(old) = queue.txs.get(&nonce) {
            if !bumped_enough(old, &tx) {
                return Err(TxError::ReplacementUnderpriced);
            }
            self.known.remove(&old.hash);
            self.known.insert(tx.hash);
            inserted.replaced = queue.txs.insert(nonce, tx);
            return Ok(inserted);
        }
        if nonce > queue.ready_end {
            if reject_gap {
                let expected = queue.ready_end;
                self.drop_if_empty(&sender);
                return Err(TxError::NonceGap { expected, nonce });
            }
            let future = queue.txs.range(queue.ready_end..).count();
            if future >= self.limits.max_future_per_sender {
                return Err(TxError::AccountLimit(sender));
            }
        }
        if queue.txs.len() >= self.limits.max_per_sender {
            return Err(TxError::PoolFull);
        }
        if self.total >= self.limits.max_total {
            match self.evict_cheapest_future(&tx) {
                Some(evicted) => inserted.evicted.push(evicted),
                None => {
                    self.drop_if_empty(&sender);
                    return Err(TxError::PoolFull);
                }
            }
        }
        let queue = self.senders.get_mut(&sender).expect("queue exists");
        self.known.insert(tx.hash);
        queue.txs.insert(nonce, tx);
        self.total += 1;
        if nonce == queue.ready_end {
            while queue.txs.contains_key(&queue.ready_end) {
                self.ready.push_back((sender, queue.ready_end));
                queue.ready_end += 1;
            }
        }
        Ok(inserted)
    }

    /// Takes the next ready transaction whose gas limit is at most `max_gas`, or `None` when the
    /// queue is empty or its head does not fit (it then stays at the head).
    pub fn pop_ready(&mut self, max_gas: u64) -> Option<Arc<RecoveredTx>> {
        while let Some(&(sender, nonce)) = self.ready.front() {
            let Some(queue) = self.senders.get_mut(&sender) else {
                self.ready.pop_front();
                continue;
            };
            if nonce != queue.scheduled || nonce >= queue.ready_end {
                self.ready.pop_front();
                continue;
            }
            let Some(tx) = queue.txs.get(&nonce) else {
                self.ready.pop_front();
                continue;
            };
            if tx.envelope.gas_limit() > max_gas {
                return None;
            }
            self.ready.pop_front();
            let tx = queue.txs.remove(&nonce).expect("checked above");
            queue.scheduled += 1;
            self.known.remove(&tx.hash);
            self.total -= 1;
            return Some(tx);
        }
        None
    }

    /// Records that `sender`'s transaction with `nonce` was executed and committed.
    pub fn on_executed(&mut self, sender: &Address, nonce: u64) {
        if let Some(q) = self.senders.get_mut(sender) {
            q.exec_nonce = q.exec_nonce.max(nonce + 1);
        }
        self.drop_if_empty(sender);
    }

    /// Records that `sender`'s transaction was dropped at execution: its later nonces stop being
    /// ready until the gap is filled again.
    pub fn on_dropped(&mut self, sender: &Address) {
        if let Some(q) = self.senders.get_mut(sender) {
            q.scheduled = q.exec_nonce;
            q.ready_end = q.exec_nonce;
            while q.txs.contains_key(&q.ready_end) {
                self.ready.push_back((*sender, q.ready_end));
                q.ready_end += 1;
            }
        }
        self.drop_if_empty(sender);
    }

    fn drop_if_empty(&mut self, sender: &Address) {
        if let Some(q) = self.senders.get(sender) {
            if q.txs.is_empty() && q.scheduled == q.exec_nonce {
                self.senders.remove(sender);
            }
        }
    }

    /// Evicts the future transaction with the lowest fee cap (oldest sender order breaks ties),
    /// if it pays less than `incoming`.
    fn evict_cheapest_future(&mut self, incoming: &RecoveredTx) -> Option<Arc<RecoveredTx>> {
        let mut victim: Option<(Address, u64, u128)> = None;
        for (sender, q) in &self.senders {
            for (nonce, tx) in q.txs.range(q.ready_end..) {
                let fee = tx.envelope.max_fee_per_gas();
                if victim.is_none_or(|(_, _, f)| fee < f) {
                    victim = Some((*sender, *nonce, fee));
                }
            }
        }
        let (sender, nonce, fee) = victim?;
        if fee >= incoming.envelope.max_fee_per_gas() {
            return None;
        }
        let q = self.senders.get_mut(&sender)?;
        let tx = q.txs.remove(&nonce)?;
        self.known.remove(&tx.hash);
        self.total -= 1;
        self.drop_if_empty(&sender);
        Some(tx)
    }
}

fn bumped_enough(old: &RecoveredTx, new: &RecoveredTx) -> bool {
    let bump = |x: u128| x.saturating_mul(100 + PRICE_BUMP_PERCENT) / 100;
    let old_fee = old.envelope.max_fee_per_gas();
    let old_tip = old.envelope.max_priority_fee_per_gas().unwrap_or(old_fee);
    let new_fee = new.envelope.max_fee_per_gas();
    let new_tip = new.envelope.max_priority_fee_per_gas().unwrap_or(new_fee);
    new_fee >= bump(old_fee) && new_tip >= bump(old_tip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy_primitives::{Signature, TxKind};

    fn tx(sender: u8, nonce: u64, fee: u128) -> Arc<RecoveredTx> {
        let inner = TxEip1559 {
            chain_id: 1,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: fee,
            max_priority_fee_per_gas: fee / 2,
            to: TxKind::Call(Address::ZERO),
            value: U256::ZERO,
            access_list: Default::default(),
            input: Default::default(),
        };
        let envelope = TxEnvelope::from(inner.into_signed(Signature::test_signature()));
        let hash = alloy_primitives::keccak256([sender, nonce as u8, fee as u8]);
        Arc::new(RecoveredTx {
            envelope,
            sender: Address::repeat_byte(sender),
            hash,
            encoded_len: 100,
            authorities: Vec::new(),
        })
    }

    fn rich() -> U256 {
        U256::from(10u64).pow(U256::from(20))
    }

    fn limits(total: usize) -> PoolLimits {
        PoolLimits { max_total: total, ..PoolLimits::default() }
    }

    #[test]
    fn ready_queue_keeps_arrival_order_and_nonce_order() {
        let mut pool = Mempool::new(limits(100));
        pool.insert(tx(1, 1, 10), 0, rich(), false).unwrap();
        pool.insert(tx(2, 0, 10), 0, rich(), false).unwrap();
        pool.insert(tx(1, 0, 10), 0, rich(), false).unwrap();
        assert_eq!(pool.pending_nonce(&Address::repeat_byte(1)), Some(2));
        let order: Vec<(u8, u64)> = std::iter::from_fn(|| pool.pop_ready(u64::MAX))
            .map(|t| (t.sender.0[0], t.envelope.nonce()))
            .collect();
        assert_eq!(order, vec![(2, 0), (1, 0), (1, 1)]);
        assert!(pool.is_empty());
    }

    #[test]
    fn full_pool_evicts_the_cheapest_future_transaction() {
        let mut pool = Mempool::new(limits(2));
        pool.insert(tx(1, 5, 10), 0, rich(), false).unwrap();
        pool.insert(tx(2, 5, 30), 0, rich(), false).unwrap();
        // A richer transaction pushes out the cheapest future one.
        let inserted = pool.insert(tx(3, 0, 20), 0, rich(), false).unwrap();
        assert_eq!(inserted.evicted.len(), 1);
        assert_eq!(inserted.evicted[0].sender, Address::repeat_byte(1));
        // A poorer one finds nothing cheaper to evict.
        assert_eq!(pool.insert(tx(4, 0, 5), 0, rich(), false).unwrap_err(), TxError::PoolFull);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn dropped_transaction_demotes_the_senders_later_nonces() {
        let mut pool = Mempool::new(limits(100));
        for n in 0..3 {
            pool.insert(tx(1, n, 10), 0, rich(), false).unwrap();
        }
        let first = pool.pop_ready(u64::MAX).unwrap();
        assert_eq!(first.envelope.nonce(), 0);
        pool.on_dropped(&first.sender);
        // Nonce 0 is gone; 1 and 2 wait for it, and a resent 0 makes them ready again.
        assert!(pool.pop_ready(u64::MAX).is_none());
        assert_eq!(pool.pending_nonce(&first.sender), Some(0));
        pool.insert(tx(1, 0, 11), 0, rich(), false).unwrap();
        let order: Vec<u64> =
            std::iter::from_fn(|| pool.pop_ready(u64::MAX)).map(|t| t.envelope.nonce()).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn future_queue_per_sender_is_bounded() {
        let mut pool = Mempool::new(PoolLimits { max_future_per_sender: 2, ..limits(100) });
        pool.insert(tx(1, 5, 10), 0, rich(), false).unwrap();
        pool.insert(tx(1, 6, 10), 0, rich(), false).unwrap();
        let err = pool.insert(tx(1, 7, 10), 0, rich(), false).unwrap_err();
        assert_eq!(err, TxError::AccountLimit(Address::repeat_byte(1)));
        // Sync sends refuse gaps outright, naming the expected nonce.
        let err = pool.insert(tx(2, 3, 10), 0, rich(), true).unwrap_err();
        assert_eq!(err, TxError::NonceGap { expected: 0, nonce: 3 });
    }
}
