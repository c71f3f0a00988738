//! strobe's network layer: where transactions and queries enter.
//!
//! One io_uring thread ([`server`]) accepts connections, frames HTTP/1.1 requests ([`http`]) and
//! dispatches Ethereum JSON-RPC ([`rpc`]). Transactions are decoded and their senders recovered on
//! worker threads ([`recovery`], one connection's always on the same worker) or, with none
//! configured, on the ring thread; never on the sequencer. Answers that depend on the sequencer (pool admission,
//! receipts for sync sends) arrive through engine callbacks that wake the ring via an eventfd.
//!
//! Data flows one way: net → engine. Nothing in the engine knows about sockets.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod format;
pub mod http;
pub mod recovery;
pub mod rpc;
pub mod server;

pub use server::serve;
