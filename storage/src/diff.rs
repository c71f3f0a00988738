//! State diffs: what one mini-block changed.

use alloy_primitives::{Address, B256, U256};
use revm::bytecode::Bytecode;

/// The part of an account the state keeps besides its storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Number of transactions sent (or contracts created, for contracts).
    pub nonce: u64,
    /// Balance in wei.
    pub balance: U256,
    /// keccak256 of the account's code (`KECCAK_EMPTY` for none).
    pub code_hash: B256,
}

impl AccountState {
    /// Whether the account is "empty" in the sense of EIP-161.
    pub fn is_empty(&self) -> bool {
        self.nonce == 0
            && self.balance.is_zero()
            && self.code_hash == revm::primitives::KECCAK_EMPTY
    }
}

/// One account's change within a [`StateDiff`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountChange {
    /// The account changed.
    pub address: Address,
    /// Its new nonce, balance and code hash; `None` deletes the account (self-destruct, or an empty
    /// account touched under EIP-161).
    pub info: Option<AccountState>,
    /// Whether the account's storage is wiped before `storage` is applied (the account was created
    /// or destroyed in this diff).
    pub storage_cleared: bool,
    /// Slot writes, sorted by slot. A zero value deletes the slot.
    pub storage: Vec<(U256, U256)>,
}

/// Everything one mini-block changed, in a canonical order (accounts sorted by address).
///
/// Applying the diffs of mini-blocks 0..=n to the genesis state gives the state after mini-block n.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Changed accounts, sorted by address, each at most once.
    pub accounts: Vec<AccountChange>,
    /// Code first deployed in this diff, by hash.
    pub codes: Vec<(B256, Bytecode)>,
}

impl StateDiff {
    /// Whether the diff changes nothing.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.codes.is_empty()
    }

    /// Number of changed storage slots across all accounts.
    pub fn slot_count(&self) -> usize {
        self.accounts.iter().map(|a| a.storage.len()).sum()
    }
}
