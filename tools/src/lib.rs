//! strobe's measurement and verification tools, as a library shared by the `strobe-tools`
//! binary, the root integration tests and the criterion benches.
//!
//! - [`bench`]: `strobe-bench`'s workloads, drivers and reports.
//! - [`binary_client`]: a client of the binary protocol (raw transactions in, mini-blocks out).
//! - [`client`]: a blocking JSON-RPC client and the dev accounts' keys.
//! - [`crash`]: crash torture of a persistent node (SIGKILL under load, restart, verify).
//! - [`fixture`]: real mainnet blocks with their pre-state, replayed and checked against the
//!   header.
//! - [`settlement_cost`]: bytes and L1 gas per transaction of batches posted to anvil.
//! - [`ws_client`]: a minimal blocking WebSocket JSON-RPC client (strobe-bench's `ws` transport).
//! - [`ws_fanout`]: delivery latency of `miniBlocks` notifications to many WebSocket clients.
//! - [`workload`]: a funded state with tokens, pools, a factory and a probe contract, and
//!   builders of transaction lists for execution benchmarks and differential tests.
//!
//! Nothing here runs threads of its own; callers decide where execution happens.
// (No unused-dependency lint here: the library and the binary share one dependency list.)

pub mod bench;
pub mod binary_client;
pub mod client;
pub mod crash;
pub mod fixture;
pub mod settlement_cost;
pub mod workload;
pub mod ws_client;
pub mod ws_fanout;
