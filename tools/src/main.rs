//! `strobe-tools`: measurement tools for strobe.
//!
//! - `sync-latency`: sequential `eth_sendRawTransactionSync` round trips, latency percentiles.
//! - `transfer-tps`: pre-signed ETH transfers pushed in JSON-RPC batches over several connections,
//!   the rate at which they are included.
//!
//! - `replay`: replays a mainnet block fixture sequentially and with Block-STM and compares both
//!   with the block header.
//! - `exec-bench`: sequential against Block-STM execution of a workload, in the same run.
//! - `ws-fanout`: delivery latency of `miniBlocks` notifications to N WebSocket subscribers.
//! - `state-gen`: a new data directory whose genesis holds N funded accounts (state store sizing).
//!
//! Transactions are signed before the clock starts, so signing never limits a run. Everything
//! runs on plain threads with blocking sockets against loopback.

use alloy_consensus::TxEip1559;
use alloy_primitives::{Address, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use clap::{Parser, Subcommand};
use strobe_tools::client::{dev_signer, signed_hex, Client, CHAIN_ID};

mod exec_tools;
mod state_gen;

// The node's allocator, so execution benchmarks measure what the node runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "strobe-tools", about = "Measurement tools for strobe")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sequential sync sends: round-trip latency percentiles (JSON line).
    SyncLatency {
        /// JSON-RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        rpc: String,
        /// Number of transactions.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Index of the dev account that sends.
        #[arg(long, default_value_t = 0)]
        account: u32,
        /// Pause a pseudo-random 0..N ms between sends, so arrivals are not phase-locked to the
        /// mini-block tick (a client that sends right after its last receipt always waits a full
        /// tick).
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
    },
    /// Pre-signed transfers from many senders: sustained inclusion rate (JSON line).
    TransferTps {
        /// JSON-RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        rpc: String,
        /// Total transactions.
        #[arg(long, default_value_t = 50_000)]
        txs: usize,
        /// Dev accounts used as senders (from the standard mnemonic).
        #[arg(long, default_value_t = 10)]
        senders: u32,
        /// Parallel connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Transactions per JSON-RPC batch.
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// Replays a mainnet block fixture (`.json` or `.json.gz`) sequentially and with Block-STM
    /// and compares both with the header (JSON line; exit status 1 on any mismatch).
    Replay {
        /// The fixture file.
        file: std::path::PathBuf,
        /// Block-STM worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Sequential against Block-STM execution of one workload in the same run (JSON line).
    ExecBench {
        /// transfers, erc20, hot-pool or mixed.
        #[arg(long)]
        workload: String,
        /// Transactions in the block.
        #[arg(long, default_value_t = 1000)]
        txs: usize,
        /// Block-STM worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed rounds of each executor (the median is reported).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Run only Block-STM (`parallel`) or only `sequential`, e.g. under a profiler.
        #[arg(long)]
        only: Option<String>,
        /// Also time the ideal split: the block cut into `--threads` contiguous parts, each run
        /// sequentially on its own thread over the same state, with no coordination at all.
        /// Not a valid executor (it ignores dependencies): it is the ceiling any parallel
        /// executor can reach for this workload on this machine (`split_speedup`).
        #[arg(long)]
        split: bool,
    },
    /// Posts a workload through `strobe dev --l1 anvil` and reads back from L1 what its batches
    /// cost: bytes per transaction (raw and zstd-compressed) and L1 gas per L2 transaction
    /// (JSON line). Needs the `strobe` binary (default: next to this one).
    SettlementCost {
        /// transfers or erc20.
        #[arg(long, default_value = "transfers")]
        workload: String,
        /// Transactions in the workload.
        #[arg(long, default_value_t = 5000)]
        txs: usize,
        /// Where batch data goes: none (calldata) or eigenda.
        #[arg(long, default_value = "none")]
        da: String,
        /// The strobe binary.
        #[arg(long)]
        strobe: Option<std::path::PathBuf>,
    },
    /// Opens N WebSocket connections, each subscribed to `miniBlocks`, and reports how long
    /// notifications take to arrive after the mini-block was sealed (JSON line, µs).
    WsFanout {
        /// host:port of the node.
        #[arg(long, default_value = "127.0.0.1:8545")]
        addr: String,
        /// Subscribers (one connection each).
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Measured seconds (after a warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Creates a data directory whose genesis state holds N funded accounts (JSON line: time,
    /// size, peak memory). Refuses a non-empty directory.
    StateGen {
        /// Number of accounts.
        #[arg(long)]
        accounts: u64,
        /// The data directory to create.
        #[arg(long)]
        datadir: std::path::PathBuf,
    },
}

fn signer(index: u32) -> PrivateKeySigner {
    dev_signer(index)
}

fn nonce_of(c: &mut Client, a: Address, tag: &str) -> u64 {
    c.nonce(a, tag).expect("nonce")
}

fn transfer(s: &PrivateKeySigner, nonce: u64, to: Address) -> String {
    signed_hex(
        s,
        TxEip1559 {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 20_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(to),
            value: U256::from(1),
            access_list: Default::default(),
            input: Default::default(),
        },
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sync_latency(rpc: &str, count: usize, account: u32, think_ms: u64) -> Value {
    let s = signer(account);
    let mut c = Client::connect(rpc).expect("connect");
    let start = nonce_of(&mut c, s.address(), "pending");
    let to = Address::repeat_byte(0x42);
    let raws: Vec<String> = (0..count as u64).map(|i| transfer(&s, start + i, to)).collect();
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for raw in &raws {
        if think_ms > 0 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let pause_us = (seed >> 33) % (think_ms * 1000);
            std::thread::sleep(Duration::from_micros(pause_us));
        }
        let t = Instant::now();
        let v = c.rpc("eth_sendRawTransactionSync", json!([raw])).expect("call");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if v.get("result").is_none() {
            errors += 1;
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "count": count, "errors": errors, "think_ms": think_ms,
        "p50_ms": percentile(&lat, 0.5), "p90_ms": percentile(&lat, 0.9),
        "p99_ms": percentile(&lat, 0.99), "max_ms": lat.last().copied().unwrap_or(0.0),
    })
}

fn transfer_tps(rpc: &str, txs: usize, senders: u32, connections: usize, batch: usize) -> Value {
    let signers: Vec<PrivateKeySigner> = (0..senders).map(signer).collect();
    let mut c = Client::connect(rpc).expect("connect");
    let per = txs / senders as usize;
    let mut all: Vec<Vec<String>> = Vec::new();
    let mut finals = Vec::new();
    eprintln!("signing {} transfers...", per * senders as usize);
    for s in &signers {
        let n0 = nonce_of(&mut c, s.address(), "pending");
        let to = Address::repeat_byte(0x77);
        all.push((0..per as u64).map(|i| transfer(s, n0 + i, to)).collect());
        finals.push((s.address(), n0 + per as u64));
    }
    // Each connection owns a disjoint set of senders and sends their transactions interleaved,
    // in nonce order, so no connection can create a nonce gap for another.
    let started = Instant::now();
    let mut handles = Vec::new();
    for conn in 0..connections.max(1) {
        let mine: Vec<&Vec<String>> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % connections.max(1) == conn)
            .map(|(_, l)| l)
            .collect();
        let mut order = Vec::with_capacity(per * mine.len());
        for i in 0..per {
            for list in &mine {
                order.push(list[i].clone());
            }
        }
        let url = rpc.to_string();
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(&url).expect("connect");
            let mut errors = 0usize;
            for chunk in order.chunks(batch.max(1)) {
                let body: Vec<Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| json!({"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": [r]}))
                    .collect();
                let v = c.call(&json!(body)).expect("batch");
                errors += v.as_array().map_or(1, |a| a.iter().filter(|r| r.get("error").is_some()).count());
            }
            errors
        }));
    }
    let errors: usize = handles.into_iter().map(|h| h.join().unwrap_or(usize::MAX)).sum();
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (a, want) in &finals {
        while nonce_of(&mut c, *a, "latest") < *want {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let included = started.elapsed();
    let total = per * signers.len();
    json!({
        "txs": total, "errors": errors, "connections": connections, "batch": batch,
        "submit_s": submitted.as_secs_f64(), "included_s": included.as_secs_f64(),
        "submit_tps": total as f64 / submitted.as_secs_f64(),
        "included_tps": total as f64 / included.as_secs_f64(),
    })
}

fn main() {
    let cli = Cli::parse();
    let out = match cli.command {
        Cmd::SyncLatency { rpc, count, account, think_ms } => {
            sync_latency(&rpc, count, account, think_ms)
        }
        Cmd::TransferTps { rpc, txs, senders, connections, batch } => {
            transfer_tps(&rpc, txs, senders, connections, batch)
        }
        Cmd::Replay { file, threads } => match exec_tools::replay(&file, threads) {
            Ok((out, true)) => out,
            Ok((out, false)) => {
                println!("{out}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("replay failed: {e}");
                std::process::exit(2);
            }
        },
        Cmd::ExecBench { workload, txs, threads, rounds, only, split } => {
            match exec_tools::exec_bench(&workload, txs, threads, rounds, only.as_deref(), split) {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("exec-bench failed: {e}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::SettlementCost { workload, txs, da, strobe } => {
            let strobe = strobe.unwrap_or_else(|| {
                let exe = std::env::current_exe().expect("own path");
                exe.with_file_name("strobe")
            });
            match strobe_tools::settlement_cost::settlement_cost(&strobe, &workload, txs, &da) {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("settlement-cost failed: {e}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::WsFanout { addr, subscribers, seconds } => {
            match strobe_tools::ws_fanout::run(&addr, subscribers, seconds) {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("ws-fanout failed: {e}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::StateGen { accounts, datadir } => match state_gen::state_gen(accounts, &datadir) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("state-gen failed: {e}");
                std::process::exit(2);
            }
        },
    };
    println!("{out}");
}
