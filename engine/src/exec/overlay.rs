//! The uncommitted writes of one mini-block, turned into a [`StateDiff`] at its end.

use alloy_primitives::{map::HashMap, Address, B256, U256};
use revm::{
    bytecode::Bytecode,
    database_interface::{Database, DatabaseCommit, DatabaseRef},
    primitives::{hardfork::SpecId, AddressMap, StorageKey, StorageValue},
    state::{Account, AccountInfo},
};
use strobe_storage::{AccountChange, AccountState, StateDiff, StoreError, ViewDb};

/// One account's accumulated change inside an [`Overlay`].
#[derive(Clone, Debug, Default)]
pub(crate) struct OverlayAccount {
    info: Option<AccountState>,
    storage_cleared: bool,
    storage: HashMap<U256, U256>,
}

/// Uncommitted writes of the transactions executed so far in one mini-block, over a base view.
pub struct Overlay<'a> {
    base: ViewDb<'a>,
    /// EIP-161 (delete touched empty accounts) applies from Spurious Dragon on.
    state_clear: bool,
    accounts: HashMap<Address, OverlayAccount>,
    codes: HashMap<B256, Bytecode>,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`, committing under the rules of `spec`.
    pub fn new(base: ViewDb<'a>, spec: SpecId) -> Self {
        Self {
            base,
            state_clear: spec.is_enabled_in(SpecId::SPURIOUS_DRAGON),
            accounts: HashMap::default(),
            codes: HashMap::default(),
        }
    }

    /// Credits `amount` to `beneficiary` exactly as revm's fee payment would have inside the
    /// transaction that earned it: load, add (saturating to "unchanged" on overflow), touch.
    ///
    /// Parallel execution defers the beneficiary's fee to here so that transactions which never
    /// read the beneficiary do not all conflict on its balance.
    pub fn credit_lazily(&mut self, beneficiary: Address, amount: U256) -> Result<(), StoreError> {
        let mut account = match self.basic(beneficiary)? {
            Some(info) => Account::from(info),
            None => Account::new_not_existing(Default::default()),
        };
        if let Some(balance) = account.info.balance.checked_add(amount) {
            account.info.balance = balance;
        }
        account.mark_touch();
        self.commit_account(beneficiary, account);
        Ok(())
    }

    /// The writes so far as a canonical [`StateDiff`].
    pub fn into_diff(self) -> StateDiff {
        let mut accounts: Vec<AccountChange> = self
            .accounts
            .into_iter()
            .map(|(address, a)| {
                let mut storage: Vec<(U256, U256)> = a.storage.into_iter().collect();
                storage.sort_unstable_by_key(|(k, _)| *k);
                AccountChange { address, info: a.info, storage_cleared: a.storage_cleared, storage }
            })
            .collect();
        accounts.sort_unstable_by_key(|a| a.address);
        let mut codes: Vec<(B256, Bytecode)> = self.codes.into_iter().collect();
        codes.sort_unstable_by_key(|(h, _)| *h);
        StateDiff { accounts, codes }
    }

    fn commit_account(&mut self, address: Address, account: Account) {
        if !account.is_touched() {
            return;
        }
        if account.is_selfdestructed() {
            self.accounts.insert(
                address,
                OverlayAccount { info: None, storage_cleared: true, storage: HashMap::default() },
            );
            return;
        }
        let is_created = account.is_created();
        if self.state_clear && !is_created && account.is_empty() {
            // EIP-161: a touched empty account is removed.
            let entry = self.accounts.entry(address).or_default();
            entry.info = None;
            entry.storage_cleared = true;
            entry.storage.clear();
            return;
        }
        if let Some(code) = &account.info.code {
            if !code.is_empty() && self.base.view.code(&account.info.code_hash).is_none() {
                self.codes.insert(account.info.code_hash, code.clone());
            }
        }
        let entry = self.accounts.entry(address).or_default();
        if is_created {
            entry.storage_cleared = true;
            entry.storage.clear();
        }
        entry.info = Some(AccountState {
            nonce: account.info.nonce,
            balance: account.info.balance,
            code_hash: account.info.code_hash,
        });
        for (slot, value) in account.storage {
            if value.is_changed() || is_created {
                entry.storage.insert(slot, value.present_value());
            }
        }
    }
}

impl Database for Overlay<'_> {
    type Error = StoreError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, StoreError> {
        if let Some(a) = self.accounts.get(&address) {
            return Ok(a.info.map(|i| AccountInfo {
                balance: i.balance,
                nonce: i.nonce,
                code_hash: i.code_hash,
                account_id: None,
                code: None,
            }));
        }
        self.base.basic_ref(address)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, StoreError> {
        if let Some(code) = self.codes.get(&code_hash) {
            return Ok(code.clone());
        }
        self.base.code_by_hash_ref(code_hash)
    }

    fn storage(&mut self, address: Address, index: StorageKey) -> Result<StorageValue, StoreError> {
        if let Some(a) = self.accounts.get(&address) {
            if let Some(v) = a.storage.get(&index) {
                return Ok(*v);
            }
            if a.storage_cleared || a.info.is_none() {
                return Ok(U256::ZERO);
            }
        }
        self.base.storage_ref(address, index)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, StoreError> {
        self.base.block_hash_ref(number)
    }
}

impl DatabaseCommit for Overlay<'_> {
    fn commit(&mut self, changes: AddressMap<Account>) {
        for (address, account) in changes {
            self.commit_account(address, account);
        }
    }
}
