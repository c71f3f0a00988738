//! strobe's settlement: the thin layer that makes the chain checkable on Ethereum.
//!
//! Data flows one way, downstream of the engine: sealed (durable) EVM blocks are grouped into
//! [`batch::Batch`]es, compressed, and posted by the [`poster::Poster`] to the L1 inbox contract
//! ([`inbox`], source in `contracts/StrobeInbox.sol`) — as calldata, or to EigenDA
//! ([`eigenda`]) with the certificate posted instead. The [`verifier`] rebuilds the chain from
//! L1 alone and checks every block hash and state root. [`anvil`] runs a local L1 for dev chains
//! and tests.
//!
//! Threads: the poster runs on its own `strobe-poster` thread (a single-threaded async runtime
//! for the L1 and DA clients), off the sequencer's path; the verifier runs on the caller's
//! thread; `eigenda::MemStore` runs its own accept and connection threads.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod anvil;
pub mod batch;
pub mod eigenda;
pub mod inbox;
pub mod l1;
pub mod poster;
pub mod verifier;

pub use poster::{BlockSource, DaMode, Poster, PosterConfig, PosterStatus};
pub use verifier::{verify, VerifyFailure, VerifyOptions, VerifyReport};

/// Errors of the settlement layer.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    /// A setting is wrong or a local resource is missing.
    #[error("{0}")]
    Config(String),
    /// The L1 node failed or refused.
    #[error("L1: {0}")]
    L1(String),
    /// The DA layer failed.
    #[error(transparent)]
    Da(#[from] eigenda::DaError),
    /// The block source could not provide a block.
    #[error("block source: {0}")]
    Source(String),
}
