//! The in-memory state store: persistent maps with O(1) snapshots.
//!
//! Every [`MemoryView`] is a structurally shared copy of the maps, so handing a view to a reader is
//! an `Arc` allocation and a few reference-count increments, and the writer never waits for readers.

use crate::{root, AccountState, StateDiff, StateStore, StateView, StoreError};
use alloy_primitives::{Address, B256, U256};
use revm::{
    bytecode::Bytecode,
    database_interface::DatabaseRef,
    primitives::{StorageKey, StorageValue, KECCAK_EMPTY},
    state::AccountInfo,
};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
struct AccountEntry {
    info: AccountState,
    storage: imbl::HashMap<U256, U256>,
}

/// An immutable snapshot of the in-memory state.
#[derive(Clone, Debug, Default)]
pub struct MemoryView {
    accounts: imbl::HashMap<Address, AccountEntry>,
    codes: imbl::HashMap<B256, Bytecode>,
}

impl MemoryView {
    /// Number of accounts in the state.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// All accounts with their info, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = (Address, AccountState)> + '_ {
        self.accounts.iter().map(|(a, e)| (*a, e.info))
    }

    /// All non-zero storage slots of `address`, in no particular order.
    pub fn storage_slots(&self, address: &Address) -> Vec<(U256, U256)> {
        self.accounts
            .get(address)
            .map(|e| e.storage.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    fn apply(&mut self, diff: &StateDiff) {
        for (hash, code) in &diff.codes {
            self.codes.insert(*hash, code.clone());
        }
        for change in &diff.accounts {
            let Some(info) = change.info else {
                self.accounts.remove(&change.address);
                continue;
            };
            let entry = self.accounts.entry(change.address).or_default();
            entry.info = info;
            if change.storage_cleared {
                entry.storage = imbl::HashMap::new();
            }
            for (slot, value) in &change.storage {
                if value.is_zero() {
                    entry.storage.remove(slot);
                } else {
                    entry.storage.insert(*slot, *value);
                }
            }
        }
    }
}

impl StateView for MemoryView {
    fn account(&self, address: &Address) -> Option<AccountState> {
        self.accounts.get(address).map(|e| e.info)
    }

    fn storage(&self, address: &Address, slot: &U256) -> U256 {
        self.accounts.get(address).and_then(|e| e.storage.get(slot).copied()).unwrap_or_default()
    }

    fn code(&self, code_hash: &B256) -> Option<Bytecode> {
        if *code_hash == KECCAK_EMPTY {
            return Some(Bytecode::default());
        }
        self.codes.get(code_hash).cloned()
    }
}

/// Reads any [`StateView`] through revm's [`DatabaseRef`].
///
/// Block hashes are not part of the state; `block_hash` answers from the function given.
#[derive(Clone, Copy)]
pub struct ViewDb<'a> {
    /// The state read.
    pub view: &'a dyn StateView,
    /// Returns the hash of block `number` (zero when unknown or out of the 256-block window).
    pub block_hash: &'a (dyn Fn(u64) -> B256 + Sync),
}

impl DatabaseRef for ViewDb<'_> {
    type Error = StoreError;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, StoreError> {
        Ok(self.view.account(&address).map(|a| AccountInfo {
            balance: a.balance,
            nonce: a.nonce,
            code_hash: a.code_hash,
            account_id: None,
            code: None,
        }))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, StoreError> {
        self.view.code(&code_hash).ok_or(StoreError::MissingCode(code_hash))
    }

    fn storage_ref(&self, address: Address, index: StorageKey) -> Result<StorageValue, StoreError> {
        Ok(self.view.storage(&address, &index))
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, StoreError> {
        Ok((self.block_hash)(number))
    }
}

/// The in-memory [`StateStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    current: MemoryView,
    roots: root::StorageRootCache,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state as a concrete view (for tools and tests).
    pub fn snapshot(&self) -> MemoryView {
        self.current.clone()
    }
}

impl StateStore for MemoryStore {
    fn apply(&mut self, diff: &StateDiff) -> Result<(), StoreError> {
        for change in &diff.accounts {
            if change.storage_cleared || !change.storage.is_empty() || change.info.is_none() {
                self.roots.invalidate(change.address);
            }
        }
        self.current.apply(diff);
        Ok(())
    }

    fn view(&self) -> Arc<dyn StateView> {
        Arc::new(self.current.clone())
    }

    fn commit(&mut self, _next_seq: u64, _block: u64) -> Result<B256, StoreError> {
        Ok(self.state_root())
    }

    fn preview_root(&mut self) -> Result<B256, StoreError> {
        Ok(self.state_root())
    }
}

impl MemoryStore {
    /// The Ethereum state root (Merkle Patricia trie) of the current state.
    pub fn state_root(&mut self) -> B256 {
        let accounts = &self.current.accounts;
        root::state_root(
            accounts.iter().map(|(a, e)| (*a, e.info, e.storage.iter().map(|(k, v)| (*k, *v)))),
            &mut self.roots,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccountChange;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn acct(nonce: u64, balance: u64) -> AccountState {
        AccountState { nonce, balance: U256::from(balance), code_hash: KECCAK_EMPTY }
    }

    #[test]
    fn empty_state_has_empty_root() {
        assert_eq!(MemoryStore::new().state_root(), alloy_trie::EMPTY_ROOT_HASH);
    }

    #[test]
    fn views_are_isolated_from_later_writes() {
        let mut store = MemoryStore::new();
        let a = Address::repeat_byte(1);
        let diff = |bal| StateDiff {
            accounts: vec![AccountChange {
                address: a,
                info: Some(acct(0, bal)),
                storage_cleared: false,
                storage: vec![(U256::from(1), U256::from(bal))],
            }],
            codes: vec![],
        };
        store.apply(&diff(5)).unwrap();
        let old = store.view();
        store.apply(&diff(7)).unwrap();
        assert_eq!(old.account(&a).unwrap().balance, U256::from(5));
        assert_eq!(old.storage(&a, &U256::from(1)), U256::from(5));
        assert_eq!(store.view().account(&a).unwrap().balance, U256::from(7));
    }

    proptest! {
        /// Random diffs applied to the store read back the same as a BTreeMap model.
        #[test]
        fn store_matches_model(ops in proptest::collection::vec(
            (0u8..6, proptest::option::of(0u64..4), any::<bool>(),
             proptest::collection::vec((0u8..5, 0u64..3), 0..4)), 1..40))
        {
            let mut store = MemoryStore::new();
            let mut model: BTreeMap<Address, (AccountState, BTreeMap<U256, U256>)> = BTreeMap::new();
            for (who, bal, clear, slots) in ops {
                let address = Address::repeat_byte(who);
                let info = bal.map(|b| acct(1, b));
                let mut storage: Vec<(U256, U256)> = slots.iter()
                    .map(|(s, v)| (U256::from(*s), U256::from(*v))).collect();
                storage.sort_by_key(|(s, _)| *s);
                storage.dedup_by_key(|(s, _)| *s);
                let change = AccountChange { address, info, storage_cleared: clear, storage: storage.clone() };
                store.apply(&StateDiff { accounts: vec![change], codes: vec![] }).unwrap();
                match info {
                    None => { model.remove(&address); }
                    Some(info) => {
                        let e = model.entry(address).or_default();
                        e.0 = info;
                        if clear { e.1.clear(); }
                        for (s, v) in storage {
                            if v.is_zero() { e.1.remove(&s); } else { e.1.insert(s, v); }
                        }
                    }
                }
                let view = store.view();
                for b in 0u8..6 {
                    let a = Address::repeat_byte(b);
                    prop_assert_eq!(view.account(&a), model.get(&a).map(|e| e.0));
                    for s in 0u64..5 {
                        let want = model.get(&a).and_then(|e| e.1.get(&U256::from(s)).copied()).unwrap_or_default();
                        prop_assert_eq!(view.storage(&a, &U256::from(s)), want);
                    }
                }
                // The cached root equals a root computed from scratch.
                let cached = store.state_root();
                let fresh = root::state_root(
                    model.iter().map(|(a, (i, s))| (*a, *i, s.clone().into_iter())),
                    &mut root::StorageRootCache::default(),
                );
                prop_assert_eq!(cached, fresh);
            }
        }
    }
}
