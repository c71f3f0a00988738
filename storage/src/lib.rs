//! strobe's state store.
//!
//! This crate owns the world state the sequencer executes against and hands readers consistent,
//! immutable views of it. It sits at the bottom of the pipeline (net → engine → storage): the
//! engine's commit step is the only writer; RPC threads read [`StateView`]s without locks.
//!
//! Threads: [`StateStore::apply`] runs on the sequencer (commit) thread only. Views are `Send +
//! Sync` and are read concurrently by any number of network threads.
//!
//! The in-memory store ([`MemoryStore`]) keeps the state in persistent (structurally shared) maps, so
//! a view of any mini-block is an O(1) clone and old views stay valid while the chain moves on. The
//! memory-mapped store with a write-ahead log replaces it behind the same trait.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod diff;
mod frame;
mod mapped;
mod table;
mod tree;
mod memory;
mod root;

pub use diff::{AccountChange, AccountState, StateDiff};
pub use memory::{MemoryStore, MemoryView, ViewDb};
pub use root::{state_root, StorageRootCache};

use alloy_primitives::{Address, B256, U256};
use revm::bytecode::Bytecode;
use std::sync::Arc;

/// Errors raised by a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store was asked for code it does not hold: the state is inconsistent.
    #[error("code with hash {0} is missing from the store")]
    MissingCode(B256),
}

impl revm::database_interface::DBErrorMarker for StoreError {}

/// A consistent, immutable view of the state as of one mini-block.
///
/// Views are cheap to clone and never change after they are handed out; a reader holding one sees
/// exactly one point of the chain no matter how far the sequencer has moved on.
pub trait StateView: Send + Sync {
    /// The account at `address`, or `None` when it does not exist.
    fn account(&self, address: &Address) -> Option<AccountState>;
    /// The value of storage `slot` of `address` (zero when unset).
    fn storage(&self, address: &Address, slot: &U256) -> U256;
    /// The bytecode with hash `code_hash`, if known.
    fn code(&self, code_hash: &B256) -> Option<Bytecode>;
}

/// The writable state store the sequencer commits into.
///
/// One writer (the commit step) applies [`StateDiff`]s in order; readers take [`StateView`]s.
pub trait StateStore: Send {
    /// Applies one mini-block's diff. Diffs must be applied in mini-block order.
    fn apply(&mut self, diff: &StateDiff) -> Result<(), StoreError>;
    /// A view of the state after the last applied diff.
    fn view(&self) -> Arc<dyn StateView>;
    /// The Ethereum state root (Merkle Patricia trie) of the current state.
    fn state_root(&mut self) -> B256;
}
