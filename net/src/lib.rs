//! strobe's network layer: where transactions and queries enter.
//!
//! Thread-per-core: [`server::serve`] starts one thread per network core, each pinned, with its
//! own `SO_REUSEPORT` listener and its own event loop — io_uring ([`uring`]) or, where the kernel
//! refuses io_uring, epoll ([`epoll`]). Each loop only moves bytes; the protocols live in its
//! [`session::Hub`]: HTTP/1.1 with pipelining ([`http`]), WebSocket after an upgrade ([`ws`]) with
//! `eth_subscribe` ([`subs`]), and the binary protocol for co-located operators ([`binary`]), told
//! apart by a connection's first bytes. JSON-RPC methods are in [`rpc`].
//!
//! Transactions are decoded and their senders recovered on worker threads ([`recovery`], one
//! connection's always on the same worker) or on the network thread; never on the sequencer.
//! Answers that depend on the sequencer (pool admission, receipts) and the engine's feeds
//! (mini-blocks, blocks, pending transactions) arrive over bounded channels and wake the loop
//! through an eventfd, so a waiting `eth_sendRawTransactionSync` costs no thread.
//! Counters and histograms ([`metrics`]) are shared atomics, served on `--metrics-port`.
//!
//! Data flows one way: net → engine. Nothing in the engine knows about sockets.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod binary;
mod bufring;
pub mod epoll;
mod format;
pub mod http;
pub mod metrics;
pub mod recovery;
pub mod rpc;
pub mod server;
pub mod session;
pub mod subs;
mod sys;
pub mod uring;
pub mod ws;

pub use server::{bind, serve, Backend, NetConfig};
