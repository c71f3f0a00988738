//! strobe's state store.
//!
//! This crate owns the world state the sequencer executes against and hands readers consistent,
//! immutable views of it. It sits at the bottom of the pipeline (net → engine → storage): the
//! engine's commit step is the only writer; RPC threads read [`StateView`]s without locks.
//!
//! Threads: [`StateStore::apply`] runs on the sequencer (commit) thread only. Views are `Send +
//! Sync` and are read concurrently by any number of network threads. The persistent store
//! plans and writes each block's checkpoint on a checkpoint thread (one at a time); the root of a
//! [`StateStore::begin_commit`] arrives through a [`PendingRoot`].
//!
//! Two stores implement [`StateStore`]:
//! - [`PersistentStore`]: memory-mapped bucket tables of `Pod` records with a SALT-shaped keccak
//!   commitment ([`StateProof`]s), checkpointed at each EVM block through a rollback journal, with
//!   an in-memory layer of the changes since and multi-version reads for older views. Together
//!   with the write-ahead log ([`Wal`]) and the block store ([`ChainStore`]) it makes a node
//!   survive restarts and crashes.
//! - [`MemoryStore`]: persistent (structurally shared) maps with an Ethereum MPT root, for tests,
//!   tools and embedders that want no files.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod background;
mod chain_store;
mod checkpoint;
mod code;
pub mod codec;
mod diff;
mod frame;
pub mod keccak;
mod mapped;
mod memory;
mod pending_root;
mod persistent;
mod proof;
mod root;
mod table;
mod tree;
mod wal;

pub use background::{lower_priority, BACKGROUND_NICE};
pub use chain_store::{BlockRecord, ChainStore, ChainStoreError, ChainStoreOptions};
pub use code::CodeFileError;
pub use diff::{AccountChange, AccountState, StateDiff};
pub use mapped::FileError;
pub use memory::{MemoryStore, MemoryView, ViewDb};
pub use pending_root::{PendingRoot, RootSender};
pub use persistent::{PersistentStore, PersistentView, StoreOptions, StoreStats};
pub use proof::{state_root_of, BucketProof, ProofError, StateProof};
pub use root::{state_root, StorageRootCache};
pub use table::bucket_of;
pub use wal::{DetachedSegments, Wal, WalError, WalOptions, WalRecord};

use alloy_primitives::{Address, B256, U256};
use revm::bytecode::Bytecode;
use std::sync::Arc;

/// Errors raised by a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store was asked for code it does not hold: the state is inconsistent.
    #[error("code with hash {0} is missing from the store")]
    MissingCode(B256),
    /// A file operation failed; the store stops rather than retry.
    #[error("state store I/O: {0}")]
    File(#[from] FileError),
    /// The checkpoint header could not be used.
    #[error("state store header: {0}")]
    Header(#[from] checkpoint::HeaderError),
    /// The code file is damaged.
    #[error("state store code file: {0}")]
    Code(#[from] CodeFileError),
    /// The store's files contradict each other.
    #[error("state store is corrupt: {0}")]
    Corrupt(&'static str),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    InUse(std::path::PathBuf),
    /// Options out of range.
    #[error("state store options: {0}")]
    Options(String),
    /// A commit planned in the background failed (the message of the error it met there).
    #[error("background state commit: {0}")]
    Background(String),
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
    /// A proof of `address` and its `slots` against the state root of this state, when the store
    /// keeps a commitment and this view is the state at the end of the newest sealed block.
    fn proof(&self, _address: &Address, _slots: &[U256]) -> Result<StateProof, ProofError> {
        Err(ProofError::Unavailable)
    }
}

/// The writable state store the sequencer commits into.
///
/// One writer (the commit step) applies [`StateDiff`]s in order; readers take [`StateView`]s.
pub trait StateStore: Send {
    /// Applies one mini-block's diff. Diffs must be applied in mini-block order.
    fn apply(&mut self, diff: &StateDiff) -> Result<(), StoreError>;
    /// A view of the state after the last applied diff.
    fn view(&self) -> Arc<dyn StateView>;
    /// Ends EVM block `block`, whose last mini-block is `next_seq - 1`: commits what was applied
    /// (a persistent store checkpoints) and returns the state root for the block's header.
    fn commit(&mut self, next_seq: u64, block: u64) -> Result<B256, StoreError>;
    /// Like [`Self::commit`], but the root may still be computed when this returns: the store
    /// may plan the block's changes on another thread while the caller applies the next block's
    /// diffs. Views taken from here on see the committed state plus what is applied after.
    /// Stores that compute the root at once (the default) hand back a ready one.
    fn begin_commit(&mut self, next_seq: u64, block: u64) -> Result<PendingRoot, StoreError> {
        self.commit(next_seq, block).map(PendingRoot::ready)
    }
    /// The root [`Self::commit`] would return now, without committing anything: recovery checks
    /// a replayed block's root against its header before a checkpoint makes that state durable.
    fn preview_root(&mut self) -> Result<B256, StoreError>;
    /// `(next_seq, block)` of the last durable commit, for stores that persist (`None` for
    /// in-memory stores and for a persistent store that has not committed yet).
    fn last_commit(&self) -> Option<(u64, u64)> {
        None
    }
    /// Waits until the last commit is durable (a persistent store writes checkpoints in the
    /// background).
    fn wait_durable(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
