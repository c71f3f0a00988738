//! The Ethereum state root (Merkle Patricia trie) of a state, with cached storage roots.
//!
//! This is the interim commitment of the dev chain: an honest MPT root computed at each EVM block
//! end. Storage roots are cached per account and recomputed only for accounts whose storage
//! changed since the last root, so the per-block cost is one pass over the accounts plus the
//! changed storage tries.

use crate::AccountState;
use alloy_primitives::{keccak256, map::HashMap, Address, B256, U256};
use alloy_trie::{root::storage_root_unhashed, TrieAccount, EMPTY_ROOT_HASH};
use std::collections::HashSet;

/// Storage roots of accounts whose storage has not changed since they were last computed.
#[derive(Debug, Default, Clone)]
pub struct StorageRootCache {
    roots: HashMap<Address, B256>,
    dirty: HashSet<Address>,
}

impl StorageRootCache {
    /// Marks `address`'s storage as changed, so its root is recomputed next time.
    pub fn invalidate(&mut self, address: Address) {
        self.dirty.insert(address);
    }

    fn root_of(
        &mut self,
        address: Address,
        storage: &mut dyn Iterator<Item = (U256, U256)>,
    ) -> B256 {
        if !self.dirty.contains(&address) {
            if let Some(root) = self.roots.get(&address) {
                return *root;
            }
        }
        let root = storage_root_unhashed(
            storage.filter(|(_, v)| !v.is_zero()).map(|(k, v)| (B256::from(k), v)),
        );
        self.roots.insert(address, root);
        root
    }
}

/// Computes the state root over `accounts`, each given with an iterator over its storage.
///
/// Storage roots come from `cache` where still valid; the cache's dirty set is cleared.
pub fn state_root<'a, I, S>(accounts: I, cache: &mut StorageRootCache) -> B256
where
    I: IntoIterator<Item = (Address, AccountState, S)>,
    S: Iterator<Item = (U256, U256)> + 'a,
{
    let mut leaves: Vec<(B256, TrieAccount)> = Vec::new();
    let mut live = HashSet::new();
    for (address, info, mut storage) in accounts {
        let storage_root = cache.root_of(address, &mut storage);
        live.insert(address);
        leaves.push((
            keccak256(address),
            TrieAccount::new(info.nonce, info.balance, storage_root, info.code_hash),
        ));
    }
    cache.dirty.clear();
    cache.roots.retain(|a, _| live.contains(a));
    if leaves.is_empty() {
        return EMPTY_ROOT_HASH;
    }
    leaves.sort_unstable_by_key(|(k, _)| *k);
    alloy_trie::root::state_root(leaves)
}
