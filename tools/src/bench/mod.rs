//! `strobe-bench`: load against a JSON-RPC node with pre-signed transactions, measured honestly.
//!
//! A run sets the workload up (funded senders, tokens, pools: not timed), signs every
//! transaction before the clock starts, then drives them at a target rate (open loop, Poisson or
//! constant arrivals) or with a fixed number in flight (closed loop), over HTTP
//! `eth_sendRawTransaction` (latency to the receipt, found by polling), HTTP sync send
//! (`eth_sendRawTransactionSync`: the answer is the receipt), the same over WebSocket, or
//! strobe's binary protocol (wait mode: the receipt is pushed back on the same connection); the
//! last two pipeline submissions on each connection ([`pipelined`]). Open-loop latency counts from the
//! *scheduled* send time, so a client that falls behind shows up as latency instead of hiding
//! it (no coordinated omission). Each sender's transactions go over one connection, in nonce
//! order.
//!
//! Threads: one per connection (or per in-flight slot), plus a reader per pipelined (binary or
//! WebSocket) connection in the open loop, one receipt poller for `http`, and the
//! calling thread for the progress bar.

mod pipelined;
pub mod report;
pub mod txs;

use crate::client::{quantity, Client};
use serde_json::{json, Value};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
pub use txs::{WorkloadSpec, WORKLOADS};

/// How transactions reach the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `eth_sendRawTransaction`, receipts polled.
    Http,
    /// `eth_sendRawTransactionSync`.
    HttpSync,
    /// strobe's binary protocol in wait mode: submissions pipelined on each connection, the
    /// receipt pushed back (`docs/binary-protocol.md`).
    Binary,
    /// `eth_sendRawTransactionSync` over WebSocket, pipelined on each connection.
    Ws,
}

/// How fast transactions are offered.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    /// A target rate; Poisson arrivals when `poisson`, else evenly spaced.
    Open {
        /// Transactions per second.
        rate: f64,
        /// Exponential inter-arrival times.
        poisson: bool,
    },
    /// A fixed number of transactions in flight.
    Closed {
        /// Transactions in flight.
        in_flight: usize,
    },
}

/// One run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// JSON-RPC URL.
    pub rpc: String,
    /// The workload.
    pub spec: WorkloadSpec,
    /// Rate or concurrency.
    pub driver: Driver,
    /// Transport.
    pub transport: Transport,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Connections (open loop; 0 = a default for the transport and rate).
    pub connections: usize,
    /// Seed of the workload's choices and arrivals.
    pub seed: u64,
    /// The node's process id, for CPU time per transaction.
    pub node_pid: Option<u32>,
    /// Draw a progress bar.
    pub progress: bool,
    /// Most transactions a closed-loop run pre-signs.
    pub max_txs: usize,
}

/// What happened to one transaction.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Whether it was sent (a closed-loop run stops before its pre-signed list runs out).
    pub sent: bool,
    /// When it was due (open loop) or sent (closed loop), µs since the start.
    pub due_us: u64,
    /// When its receipt was known, µs since the start.
    pub done_us: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

struct Shared {
    start: Instant,
    samples: Mutex<Vec<Sample>>,
    completed: AtomicU64,
    watch: Mutex<VecDeque<(usize, String)>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn finish(&self, idx: usize, result: Result<(), String>) {
        let now = self.now_us();
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => s[idx].done_us = Some(now),
            Err(e) => s[idx].error = Some(e),
        }
        drop(s);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Classifies a JSON-RPC error into a short kind for the error table.
fn error_kind(v: &Value) -> String {
    message_kind(v["error"]["message"].as_str().unwrap_or("unknown error"))
}

/// The kind of an error message: the part before its first colon (details differ per
/// transaction, the kind does not).
fn message_kind(message: &str) -> String {
    message.split(':').next().unwrap_or(message).trim().to_string()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn block_number(c: &mut Client) -> Result<u64, String> {
    c.block_number().map_err(|e| e.to_string())
}

/// Number of the node's newest mini-block (`strobe_getMiniBlocks`; `None` on other nodes).
fn newest_mini_block(c: &mut Client) -> Option<u64> {
    let v = c.rpc("strobe_getMiniBlocks", json!(["latest", 1])).ok()?;
    quantity(&v["result"].as_array()?.first()?["number"])
}

/// Intervals in ms between consecutive mini-blocks `from..=to`, by their seal timestamps.
fn mini_block_intervals(c: &mut Client, from: u64, to: u64) -> Option<Vec<f64>> {
    const CHUNK: u64 = 10_000;
    let mut stamps = Vec::new();
    let mut n = from;
    while n <= to {
        let count = CHUNK.min(to - n + 1);
        let v = c.rpc("strobe_getMiniBlocks", json!([format!("0x{n:x}"), count])).ok()?;
        for m in v["result"].as_array()? {
            stamps.push((quantity(&m["number"])?, quantity(&m["timestamp"])?));
        }
        n += count;
    }
    stamps.sort_unstable();
    Some(stamps.windows(2).map(|w| w[1].1.saturating_sub(w[0].1) as f64 / 1000.0).collect())
}

/// Waits (at most [`SEAL_WAIT`]) for the block being filled to be sealed and returns the newest
/// sealed block.
fn next_sealed_block(c: &mut Client) -> Result<u64, String> {
    let now = block_number(c)?;
    let wait_until = Instant::now() + SEAL_WAIT;
    loop {
        let b = block_number(c)?;
        if b > now || Instant::now() >= wait_until {
            return Ok(b);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cfg` and returns the result document (see [`report`]).
pub fn run(cfg: &RunConfig) -> Result<Value, String> {
    let mut c = Client::connect(&cfg.rpc).map_err(|e| format!("connecting to {}: {e}", cfg.rpc))?;
    let setup_started = Instant::now();
    let deployed = txs::setup(&mut c, &cfg.spec)?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    let secs = cfg.duration.as_secs_f64();
    let count = match cfg.driver {
        Driver::Open { rate, .. } => (rate * secs).ceil() as usize,
        Driver::Closed { in_flight } => {
            (in_flight as f64 * secs * 1000.0).min(cfg.max_txs as f64) as usize
        }
    }
    .max(1);
    let signing = Instant::now();
    let prepared = txs::sign_all(&mut c, &cfg.spec, &deployed, count, cfg.seed)?;
    let signing_s = signing.elapsed().as_secs_f64();
    // Arrival schedule (open loop).
    let mut due = Vec::with_capacity(count);
    if let Driver::Open { rate, poisson } = cfg.driver {
        let mut rng = txs::Rng::new(cfg.seed ^ 0x5eed);
        let mut t = 0.0f64;
        for _ in 0..count {
            due.push((t * 1e6) as u64);
            t += if poisson { -(1.0 - rng.unit()).ln() / rate } else { 1.0 / rate };
        }
    }
    let lanes = match cfg.driver {
        Driver::Closed { in_flight } => in_flight.max(1),
        Driver::Open { rate, .. } if cfg.connections == 0 => match cfg.transport {
            // A sync send holds its connection ~one mini-block: enough connections for the rate.
            Transport::HttpSync => ((rate * 0.03).ceil() as usize).clamp(4, 512),
            Transport::Http | Transport::Binary | Transport::Ws => 8,
        },
        Driver::Open { .. } => cfg.connections,
    }
    .min(cfg.spec.senders.max(1));
    // Set-up transactions may sit in the block being filled (strobe seals every block time):
    // start once that block is sealed, so the blocks of the run hold only the run. Nodes that
    // seal every transaction at once (anvil) never move on their own, hence the limit.
    let start_block = next_sealed_block(&mut c)?;
    let first_mini = newest_mini_block(&mut c);
    let cpu_before = cfg.node_pid.and_then(cpu_ticks);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        samples: Mutex::new(vec![Sample::default(); count]),
        completed: AtomicU64::new(0),
        watch: Mutex::new(VecDeque::new()),
    });
    let stop_at = shared.start + cfg.duration;
    let mut handles = Vec::new();
    for lane in 0..lanes {
        let mine: Vec<(usize, String)> = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| p.sender % lanes == lane)
            .map(|(j, p)| (j, p.raw.clone()))
            .collect();
        let (shared, url, due) = (shared.clone(), cfg.rpc.clone(), due.clone());
        let (transport, open) = (cfg.transport, matches!(cfg.driver, Driver::Open { .. }));
        handles.push(std::thread::spawn(move || match transport {
            Transport::Binary => {
                pipelined::lane::<pipelined::Binary>(&shared, &url, mine, &due, open, stop_at)
            }
            Transport::Ws => {
                pipelined::lane::<pipelined::Ws>(&shared, &url, mine, &due, open, stop_at)
            }
            Transport::Http | Transport::HttpSync => {
                lane_loop(&shared, &url, mine, &due, transport, open, stop_at)
            }
        }));
    }
    let open_loop = matches!(cfg.driver, Driver::Open { .. });
    let poller = (cfg.transport == Transport::Http && open_loop).then(|| {
        let (shared, url) = (shared.clone(), cfg.rpc.clone());
        std::thread::spawn(move || poll_receipts(&shared, &url, stop_at + Duration::from_secs(30)))
    });
    report::progress(&shared.completed, count as u64, cfg.duration, cfg.progress, || {
        handles.iter().all(|h| h.is_finished())
            && shared.watch.lock().map(|w| w.is_empty()).unwrap_or(true)
    });
    for h in handles {
        let _ = h.join();
    }
    if let Some(p) = poller {
        let _ = p.join();
    }
    let cpu_after = cfg.node_pid.and_then(cpu_ticks);
    let end_block = next_sealed_block(&mut c)?;
    let mini_intervals = match (first_mini, newest_mini_block(&mut c)) {
        (Some(a), Some(b)) => mini_block_intervals(&mut c, a, b),
        _ => None,
    };
    let samples = std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
    let samples: Vec<Sample> = samples.into_iter().filter(|s| s.sent).collect();
    let blocks = report::block_fill(&mut c, start_block + 1, end_block)?;
    let cpu_s = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b - a) as f64 / PROC_TICKS_PER_SECOND),
        _ => None,
    };
    Ok(report::summarize(cfg, &samples, setup_s, signing_s, blocks, cpu_s, mini_intervals))
}

/// Longest wait for the block holding the set-up to be sealed.
const SEAL_WAIT: Duration = Duration::from_secs(3);

/// Unit of the CPU times in `/proc/<pid>/stat` (Linux's USER_HZ, 100 on every architecture).
const PROC_TICKS_PER_SECOND: f64 = 100.0;

/// Sends one lane's transactions, marking each as sent.
fn lane_loop(
    shared: &Shared,
    url: &str,
    mine: Vec<(usize, String)>,
    due: &[u64],
    transport: Transport,
    open: bool,
    stop_at: Instant,
) {
    let Ok(mut c) = Client::connect(url) else {
        for (j, _) in &mine {
            shared.samples.lock().unwrap_or_else(|p| p.into_inner())[*j].sent = true;
            shared.finish(*j, Err("cannot connect".into()));
        }
        return;
    };
    let _ = c.set_timeout(Duration::from_secs(30));
    for (j, raw) in mine {
        if open {
            let at = shared.start + Duration::from_micros(due[j]);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        } else if Instant::now() >= stop_at {
            break;
        }
        let now = shared.now_us();
        {
            let mut s = shared.samples.lock().unwrap_or_else(|p| p.into_inner());
            s[j].due_us = if open { due[j] } else { now };
            s[j].sent = true;
        }
        let method = match transport {
            Transport::Http | Transport::Binary | Transport::Ws => "eth_sendRawTransaction",
            Transport::HttpSync => "eth_sendRawTransactionSync",
        };
        match c.rpc(method, json!([raw])) {
            Err(e) => shared.finish(j, Err(format!("transport: {}", e.kind()))),
            Ok(v) if v.get("error").is_some() => shared.finish(j, Err(error_kind(&v))),
            Ok(v) => match transport {
                Transport::HttpSync => shared.finish(j, Ok(())),
                Transport::Http | Transport::Binary | Transport::Ws => {
                    let hash = v["result"].as_str().unwrap_or_default().to_string();
                    if open {
                        shared.watch.lock().unwrap_or_else(|p| p.into_inner()).push_back((j, hash));
                    } else {
                        // Closed loop: this slot waits for its own receipt.
                        wait_receipt(shared, &mut c, j, &hash);
                    }
                }
            },
        }
    }
}

fn wait_receipt(shared: &Shared, c: &mut Client, j: usize, hash: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.rpc("eth_getTransactionReceipt", json!([hash])) {
            Ok(v) if !v["result"].is_null() => return shared.finish(j, Ok(())),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(500)),
            Ok(_) => return shared.finish(j, Err("no receipt within 30 s".into())),
            Err(e) => return shared.finish(j, Err(format!("transport: {}", e.kind()))),
        }
    }
}

/// Polls receipts of sent transactions in JSON-RPC batches every 2 ms.
fn poll_receipts(shared: &Shared, url: &str, give_up_at: Instant) {
    let Ok(mut c) = Client::connect(url) else { return };
    loop {
        let batch: Vec<(usize, String)> = {
            let w = shared.watch.lock().unwrap_or_else(|p| p.into_inner());
            w.iter().take(1000).cloned().collect()
        };
        if batch.is_empty() {
            if Instant::now() > give_up_at
                || shared.completed.load(Ordering::Relaxed) as usize
                    >= shared.samples.lock().map(|s| s.len()).unwrap_or(0)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let body: Vec<Value> = batch
            .iter()
            .enumerate()
            .map(|(i, (_, h))| json!({"jsonrpc":"2.0","id":i,"method":"eth_getTransactionReceipt","params":[h]}))
            .collect();
        let Ok(out) = c.call(&Value::Array(body)) else { return };
        let mut found = std::collections::HashSet::new();
        for r in out.as_array().into_iter().flatten() {
            if !r["result"].is_null() {
                if let Some(i) = r["id"].as_u64() {
                    let j = batch[i as usize].0;
                    let ok = r["result"]["status"] == "0x1";
                    shared.finish(j, if ok { Ok(()) } else { Err("reverted".into()) });
                    found.insert(j);
                }
            }
        }
        let expired = Instant::now() > give_up_at;
        let mut w = shared.watch.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|(j, _)| !found.contains(j));
        if expired {
            for (j, _) in w.drain(..) {
                shared.finish(j, Err("no receipt within 30 s".into()));
            }
            return;
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(2));
    }
}
