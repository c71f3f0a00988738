//! strobe's engine: the sequencer and everything it owns.
//!
//! Data flow: network threads decode and recover transactions ([`tx`]) and hand them to the
//! sequencer thread ([`sequencer`]) over a bounded queue. The sequencer admits them into the pool
//! ([`pool`]), seals a [`chain::MiniBlock`] every tick, executes it on revm ([`exec`], in parallel with Block-STM: [`parallel`]), commits the
//! resulting [`strobe_storage::StateDiff`] into the state store and closes an EVM block every block
//! time ([`chain::SealedBlock`]). Readers see the chain through atomically published
//! [`chain::ChainView`]s. [`node::Engine`] is the embedding API over all of it.
//!
//! Threads: one sequencer thread (pinnable), the execution workers it drives, the state store's
//! checkpoint thread and, for a durable engine, the block writer that stores sealed blocks off the
//! sequencer's tick. Every other entry point is called from network or embedding threads and only
//! reads published views or enqueues commands.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod block_tries;
mod block_writer;
pub mod chain;
pub mod config;
pub mod exec;
pub mod node;
pub mod parallel;
pub mod pool;
pub mod record;
pub mod sequencer;
pub mod tx;
pub mod verify;

pub use node::Engine;
pub use strobe_storage as storage;

/// Errors that stop an engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store refused the genesis state.
    #[error("state store: {0}")]
    Store(#[from] strobe_storage::StoreError),
    /// The execution worker threads could not be started.
    #[error(transparent)]
    Exec(#[from] parallel::ParallelError),
    /// The write-ahead log could not be opened.
    #[error("write-ahead log: {0}")]
    Wal(#[from] strobe_storage::WalError),
    /// The chain store could not be opened or read.
    #[error("chain store: {0}")]
    Chain(#[from] strobe_storage::ChainStoreError),
    /// The data directory's parts do not fit together.
    #[error("recovery: {0}")]
    Recovery(String),
    /// The sequencer thread or the block writer thread could not be spawned.
    #[error("could not start an engine thread: {0}")]
    Thread(std::io::Error),
}
