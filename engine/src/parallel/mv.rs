//! Multi-version memory: every transaction's latest writes, by location and transaction index.
//!
//! A transaction at index `i` reads a location by taking the write of the highest index below `i`
//! (or the base state when there is none). Writes of an aborted incarnation are turned into
//! ESTIMATE markers, so readers wait for the re-execution instead of reading a value that is
//! probably about to change.
//!
//! Validation is by value: a transaction's recorded reads are resolved again and compared. That
//! is at least as permissive as the paper's version check and just as sound, because execution
//! is a deterministic function of the values read.

use alloy_primitives::{map::DefaultHashBuilder, Address, B256, U256};
use crossbeam_utils::CachePadded;
use revm::bytecode::Bytecode;
use std::sync::{Mutex, MutexGuard};
use strobe_storage::StateView;

/// Index of a transaction in its block.
pub(crate) type TxIdx = usize;

/// One unit of state a transaction can read or write.
///
/// Balance and the rest of an account (nonce, code, existence) are separate locations: a
/// transfer to an account must not conflict with a reader of its nonce, and the beneficiary's
/// fee credits touch only its balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Location {
    /// An account's balance.
    Balance(Address),
    /// An account's existence, nonce and code hash.
    Info(Address),
    /// One storage slot.
    Storage(Address, U256),
    /// The wiping of an account's whole storage (creation, self-destruct, EIP-161 deletion).
    StorageReset(Address),
}

/// An account's nonce and code hash; `None` where a location holds "does not exist".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InfoValue {
    pub(crate) nonce: u64,
    pub(crate) code_hash: B256,
}

/// What a write put at a location, or what a read resolved it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// A balance.
    Balance(U256),
    /// Existence, nonce and code hash.
    Info(Option<InfoValue>),
    /// A storage value.
    Storage(U256),
    /// The account's storage was wiped.
    StorageReset,
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Written(Value),
    Estimate,
}

/// A transaction's deferred fee to the beneficiary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Credit {
    /// Nothing owed (not executed yet, or the fee was paid in place).
    #[default]
    None,
    /// This much is owed.
    Owed(U256),
    /// The transaction is being re-executed; its fee is unknown.
    Estimate,
}

/// A read that must wait: the transaction at this index is being re-executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocked(pub(crate) TxIdx);

/// Versions of one location, sorted by transaction index. Most locations are written by one
/// transaction, so a small vector beats a tree.
type Versions = Mutex<Vec<(TxIdx, Entry)>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The multi-version data structure of one Block-STM run.
///
/// The location map has lock-free reads (papaya): a location nobody wrote, such as a token
/// contract's code and nonce that every transaction loads, costs a lookup and no shared write.
/// Only written locations take their own small lock. Fee credits live in per-transaction slots
/// rather than in the map, so the beneficiary's balance is not one hot lock every transaction
/// writes.
pub(crate) struct MvMemory {
    data: papaya::HashMap<Location, Versions, DefaultHashBuilder>,
    /// Code deployed during the block, by hash. Content-addressed, so never versioned.
    codes: papaya::HashMap<B256, Bytecode, DefaultHashBuilder>,
    beneficiary: Address,
    /// Per-transaction bookkeeping, one cache line (or more) each: workers run neighbouring
    /// transactions at the same time, and sharing lines between them costs more than the rest.
    txs: Vec<CachePadded<TxMemory>>,
}

/// What the memory keeps per transaction.
#[derive(Default)]
struct TxMemory {
    credit: Mutex<Credit>,
    /// The locations its latest incarnation wrote (sorted).
    written: Mutex<Vec<Location>>,
    /// What its latest incarnation read, as resolved values.
    reads: Mutex<Vec<(Location, Value)>>,
}

impl MvMemory {
    /// Empty memory for a block of `txs` transactions paying fees to `beneficiary`.
    pub(crate) fn new(txs: usize, beneficiary: Address) -> Self {
        Self {
            // Blocking resizes: faster reads than incremental ones, and a capacity hint (about
            // six locations per transaction) means they are rare.
            data: papaya::HashMap::builder()
                .capacity(txs * 6)
                .resize_mode(papaya::ResizeMode::Blocking)
                .hasher(DefaultHashBuilder::default())
                .build(),
            codes: papaya::HashMap::builder()
                .resize_mode(papaya::ResizeMode::Blocking)
                .hasher(DefaultHashBuilder::default())
                .build(),
            beneficiary,
            txs: (0..txs).map(|_| CachePadded::default()).collect(),
        }
    }

    /// The highest entry below `idx` at `location`.
    fn latest_below(&self, location: &Location, idx: TxIdx) -> Option<(TxIdx, Entry)> {
        let map = self.data.pin();
        let versions = lock(map.get(location)?);
        let pos = versions.partition_point(|(j, _)| *j < idx);
        pos.checked_sub(1).map(|p| versions[p])
    }

    /// The balance transaction `idx` sees: the last write below it, plus (for the beneficiary)
    /// every fee credited after that write, applied in order with revm's overflow rule (an
    /// overflowing credit is dropped).
    pub(crate) fn read_balance(
        &self,
        address: Address,
        idx: TxIdx,
        base: impl FnOnce() -> U256,
    ) -> Result<U256, Blocked> {
        let below = match self.latest_below(&Location::Balance(address), idx) {
            None => None,
            Some((j, Entry::Estimate)) => return Err(Blocked(j)),
            Some((j, Entry::Written(Value::Balance(b)))) => Some((j, b)),
            Some((_, Entry::Written(other))) => unreachable!("balance location holds {other:?}"),
        };
        if address != self.beneficiary {
            return Ok(below.map_or_else(base, |(_, b)| b));
        }
        let (from, mut balance) = match below {
            Some((j, b)) => (j + 1, b),
            None => (0, base()),
        };
        for (j, tx) in self.txs.iter().enumerate().take(idx).skip(from) {
            match *lock(&tx.credit) {
                Credit::None => {}
                Credit::Estimate => return Err(Blocked(j)),
                Credit::Owed(c) => {
                    if let Some(b) = balance.checked_add(c) {
                        balance = b;
                    }
                }
            }
        }
        Ok(balance)
    }

    /// Existence, nonce and code hash as transaction `idx` sees them.
    pub(crate) fn read_info(
        &self,
        address: Address,
        idx: TxIdx,
        base: impl FnOnce() -> Option<InfoValue>,
    ) -> Result<Option<InfoValue>, Blocked> {
        match self.latest_below(&Location::Info(address), idx) {
            None => Ok(base()),
            Some((j, Entry::Estimate)) => Err(Blocked(j)),
            Some((_, Entry::Written(Value::Info(info)))) => Ok(info),
            Some((_, Entry::Written(other))) => unreachable!("info location holds {other:?}"),
        }
    }

    /// A storage slot as transaction `idx` sees it: the later of the last write to the slot and
    /// the last wipe of the account's storage decides (a transaction that wipes and then writes
    /// the slot, like a constructor, wins with its write).
    pub(crate) fn read_storage(
        &self,
        address: Address,
        slot: U256,
        idx: TxIdx,
        base: impl FnOnce() -> U256,
    ) -> Result<U256, Blocked> {
        let write = self.latest_below(&Location::Storage(address, slot), idx);
        let reset = self.latest_below(&Location::StorageReset(address), idx);
        let reset_wins = match (&write, &reset) {
            (Some((w, _)), Some((r, _))) => r > w,
            (None, Some(_)) => true,
            _ => false,
        };
        if reset_wins {
            return match reset {
                Some((j, Entry::Estimate)) => Err(Blocked(j)),
                _ => Ok(U256::ZERO),
            };
        }
        match write {
            None => Ok(base()),
            Some((j, Entry::Estimate)) => Err(Blocked(j)),
            Some((_, Entry::Written(Value::Storage(v)))) => Ok(v),
            Some((_, Entry::Written(other))) => unreachable!("storage location holds {other:?}"),
        }
    }

    /// Resolves a recorded read again, against `base` for what no transaction wrote.
    fn resolve(
        &self,
        location: &Location,
        idx: TxIdx,
        base: &dyn StateView,
    ) -> Result<Value, Blocked> {
        Ok(match *location {
            Location::Balance(a) => Value::Balance(self.read_balance(a, idx, || {
                base.account(&a).map(|x| x.balance).unwrap_or_default()
            })?),
            Location::Info(a) => Value::Info(self.read_info(a, idx, || {
                base.account(&a).map(|x| InfoValue { nonce: x.nonce, code_hash: x.code_hash })
            })?),
            Location::Storage(a, s) => {
                Value::Storage(self.read_storage(a, s, idx, || base.storage(&a, &s))?)
            }
            Location::StorageReset(_) => Value::StorageReset,
        })
    }

    /// Code deployed earlier in the block with this hash.
    pub(crate) fn code(&self, code_hash: &B256) -> Option<Bytecode> {
        self.codes.pin().get(code_hash).cloned()
    }

    /// Makes deployed code visible to every transaction (content-addressed, so no versions).
    pub(crate) fn publish_code(&self, code_hash: B256, code: Bytecode) {
        self.codes.pin().get_or_insert_with(code_hash, || code);
    }

    fn write(&self, location: Location, idx: TxIdx, entry: Entry) {
        let map = self.data.pin();
        let mut versions = lock(map.get_or_insert_with(location, || Mutex::new(Vec::new())));
        match versions.binary_search_by_key(&idx, |(j, _)| *j) {
            Ok(p) => versions[p].1 = entry,
            Err(p) => versions.insert(p, (idx, entry)),
        }
    }

    fn remove(&self, location: &Location, idx: TxIdx) {
        let map = self.data.pin();
        if let Some(versions) = map.get(location) {
            let mut versions = lock(versions);
            if let Ok(p) = versions.binary_search_by_key(&idx, |(j, _)| *j) {
                versions.remove(p);
            }
        }
    }

    /// Records incarnation results of transaction `idx`: its writes replace those of its previous
    /// incarnation (locations no longer written are removed), its deferred fee replaces the old
    /// one, and its reads become the set that validation will check. Returns whether it wrote a
    /// location the previous incarnation did not, in which case transactions above must be
    /// validated again.
    pub(crate) fn record(
        &self,
        idx: TxIdx,
        reads: Vec<(Location, Value)>,
        mut writes: Vec<(Location, Value)>,
        fee_credit: Option<U256>,
    ) -> bool {
        writes.sort_unstable_by_key(|(l, _)| *l);
        writes.dedup_by_key(|(l, _)| *l);
        for (location, value) in &writes {
            self.write(*location, idx, Entry::Written(*value));
        }
        let mut wrote_new = {
            let mut credit = lock(&self.txs[idx].credit);
            let new = match fee_credit {
                Some(c) if !c.is_zero() => Credit::Owed(c),
                _ => Credit::None,
            };
            let was_none = *credit == Credit::None;
            *credit = new;
            was_none && new != Credit::None
        };
        let locations: Vec<Location> = writes.into_iter().map(|(l, _)| l).collect();
        let mut previous = lock(&self.txs[idx].written);
        let (mut p, mut n) = (0, 0);
        while p < previous.len() || n < locations.len() {
            match (previous.get(p), locations.get(n)) {
                (Some(old), Some(new)) if old == new => {
                    p += 1;
                    n += 1;
                }
                (Some(old), Some(new)) if old < new => {
                    self.remove(old, idx);
                    p += 1;
                }
                (Some(old), None) => {
                    self.remove(old, idx);
                    p += 1;
                }
                _ => {
                    wrote_new = true;
                    n += 1;
                }
            }
        }
        *previous = locations;
        *lock(&self.txs[idx].reads) = reads;
        wrote_new
    }

    /// Turns the writes of transaction `idx` into ESTIMATE markers (its incarnation aborted).
    pub(crate) fn convert_writes_to_estimates(&self, idx: TxIdx) {
        for location in lock(&self.txs[idx].written).iter() {
            self.write(*location, idx, Entry::Estimate);
        }
        let mut credit = lock(&self.txs[idx].credit);
        if *credit != Credit::None {
            *credit = Credit::Estimate;
        }
    }

    /// Whether no transaction of the block ever wrote `location` (keys are never removed from
    /// the map, only their versions). A read of such a location came from the base state, which
    /// does not change, so it is still valid without looking the base state up again.
    fn never_written(&self, location: &Location) -> bool {
        let map = self.data.pin();
        match *location {
            // The beneficiary's balance also depends on the fee credits outside the map.
            Location::Balance(a) if a == self.beneficiary => false,
            Location::Storage(a, _) => {
                map.get(location).is_none() && map.get(&Location::StorageReset(a)).is_none()
            }
            _ => map.get(location).is_none(),
        }
    }

    /// Whether every value transaction `idx` read is still what it would read now.
    pub(crate) fn validate_reads(&self, idx: TxIdx, base: &dyn StateView) -> bool {
        let reads = lock(&self.txs[idx].reads);
        reads.iter().all(|(location, value)| {
            self.never_written(location) || self.resolve(location, idx, base) == Ok(*value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strobe_storage::{MemoryStore, StateStore};

    fn addr(n: u8) -> Address {
        Address::with_last_byte(n)
    }

    #[test]
    fn reads_take_the_highest_write_below_and_credits_stack() {
        let a = addr(1);
        let mv = MvMemory::new(5, a);
        assert_eq!(mv.read_balance(a, 3, || U256::from(7)), Ok(U256::from(7)));
        mv.record(0, vec![], vec![(Location::Balance(a), Value::Balance(U256::from(100)))], None);
        mv.record(1, vec![], vec![], Some(U256::from(5)));
        mv.record(2, vec![], vec![], Some(U256::from(6)));
        assert_eq!(mv.read_balance(a, 0, || U256::from(7)), Ok(U256::from(7)));
        assert_eq!(mv.read_balance(a, 1, || U256::ZERO), Ok(U256::from(100)));
        assert_eq!(mv.read_balance(a, 3, || U256::ZERO), Ok(U256::from(111)));
        mv.convert_writes_to_estimates(1);
        assert_eq!(mv.read_balance(a, 3, || U256::ZERO), Err(Blocked(1)));
        assert_eq!(mv.read_balance(a, 1, || U256::ZERO), Ok(U256::from(100)));
    }

    #[test]
    fn storage_reset_hides_older_slots_but_not_later_writes() {
        let mv = MvMemory::new(4, Address::ZERO);
        let (a, s) = (addr(2), U256::from(9));
        mv.record(0, vec![], vec![(Location::Storage(a, s), Value::Storage(U256::from(1)))], None);
        mv.record(
            1,
            vec![],
            vec![
                (Location::StorageReset(a), Value::StorageReset),
                (Location::Storage(a, U256::from(10)), Value::Storage(U256::from(3))),
            ],
            None,
        );
        assert_eq!(mv.read_storage(a, s, 1, || U256::from(5)), Ok(U256::from(1)));
        assert_eq!(mv.read_storage(a, s, 2, || U256::from(5)), Ok(U256::ZERO));
        assert_eq!(mv.read_storage(a, U256::from(10), 2, || U256::ZERO), Ok(U256::from(3)));
        assert_eq!(mv.read_storage(a, U256::from(11), 0, || U256::from(5)), Ok(U256::from(5)));
        mv.convert_writes_to_estimates(1);
        assert_eq!(mv.read_storage(a, s, 3, || U256::ZERO), Err(Blocked(1)));
    }

    #[test]
    fn rerecording_removes_stale_writes_and_reports_new_locations() {
        let mv = MvMemory::new(3, Address::ZERO);
        let (a, b) = (addr(3), addr(4));
        assert!(mv.record(0, vec![], vec![(Location::Info(a), Value::Info(None))], None));
        assert!(!mv.record(0, vec![], vec![(Location::Info(a), Value::Info(None))], None));
        assert!(mv.record(0, vec![], vec![(Location::Info(b), Value::Info(None))], None));
        let info = InfoValue { nonce: 1, code_hash: B256::ZERO };
        assert_eq!(mv.read_info(a, 2, || Some(info)), Ok(Some(info)));
        assert_eq!(mv.read_info(b, 2, || Some(info)), Ok(None));
    }

    #[test]
    fn validation_compares_values_not_versions() {
        let store = MemoryStore::default();
        let view = store.view();
        let mv = MvMemory::new(3, Address::ZERO);
        let a = addr(5);
        mv.record(0, vec![], vec![(Location::Balance(a), Value::Balance(U256::from(1)))], None);
        mv.record(2, vec![(Location::Balance(a), Value::Balance(U256::from(1)))], vec![], None);
        assert!(mv.validate_reads(2, &*view));
        // A new incarnation writing the same value keeps the reader valid...
        mv.record(1, vec![], vec![(Location::Balance(a), Value::Balance(U256::from(1)))], None);
        assert!(mv.validate_reads(2, &*view));
        // ...a different value does not, and neither does an estimate.
        mv.record(1, vec![], vec![(Location::Balance(a), Value::Balance(U256::from(2)))], None);
        assert!(!mv.validate_reads(2, &*view));
        mv.record(1, vec![], vec![(Location::Balance(a), Value::Balance(U256::from(1)))], None);
        mv.convert_writes_to_estimates(1);
        assert!(!mv.validate_reads(2, &*view));
    }
}
