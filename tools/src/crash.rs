//! Crash torture: a `strobe dev --datadir` child under continuous sync-send load is killed with
//! SIGKILL at random moments and restarted, again and again.
//!
//! After every restart, every transaction whose receipt a client received before the kill must be
//! present with the same receipt, and every sealed block a client was served (a watcher polls the
//! head) must still have the same hash. After every kill (every `verify_every` kills, and always at the
//! end), `strobe db verify` re-executes all stored blocks from genesis into a fresh store and must
//! find every receipt and state root, including the data directory's own checkpoint root, equal.
//!
//! Threads: one per load client (blocking HTTP), the head watcher, plus the caller's.

use crate::client::{await_rpc_url, dev_signer, quantity, signed_hex, Client, CHAIN_ID};
use alloy_consensus::TxEip1559;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use serde_json::{json, Value};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Init code that stores 42 in slot 0 and deploys a one-byte contract: exercises storage and
/// the code file, not just balances.
pub const INIT_CODE: [u8; 10] = [0x60, 0x2a, 0x60, 0x00, 0x55, 0x60, 0x01, 0x60, 0x00, 0xf3];
/// Longest a restarted node may take to serve again.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run the torture.
#[derive(Clone, Debug)]
pub struct CrashOptions {
    /// The `strobe` binary.
    pub strobe: PathBuf,
    /// Kill/restart cycles.
    pub iterations: u32,
    /// Concurrent sync-send clients (one dev account each).
    pub clients: u32,
    /// Shortest and longest time under load before each kill.
    pub run_ms: (u64, u64),
    /// Re-execute the whole chain after every this many kills (and always at the end).
    pub verify_every: u32,
    /// EVM block time given to the node (short, so kills land inside checkpoints often).
    pub block_time: String,
    /// Seed of the kill schedule and the transactions.
    pub seed: u64,
    /// Where the node's stderr goes (appended), for diagnosing a failure.
    pub log: Option<PathBuf>,
}

impl CrashOptions {
    /// Defaults for `iterations` cycles of the binary at `strobe`.
    pub fn new(strobe: PathBuf, iterations: u32) -> Self {
        Self {
            strobe,
            iterations,
            clients: 4,
            run_ms: (150, 600),
            verify_every: 1,
            block_time: "100ms".into(),
            seed: 0x5eed,
            log: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct CrashReport {
    /// Kill/restart cycles completed.
    pub iterations: u32,
    /// Transactions acknowledged with a receipt before some kill.
    pub acknowledged: usize,
    /// Receipt comparisons made after restarts.
    pub receipts_checked: usize,
    /// Served block hashes compared after restarts.
    pub blocks_checked: usize,
    /// Distinct blocks the head watcher was served.
    pub blocks_served: usize,
    /// Full re-executions that passed.
    pub verifications: u32,
    /// Blocks in the chain at the end.
    pub blocks: u64,
    /// Slowest restart (process start to serving), milliseconds.
    pub max_restart_ms: u64,
}

struct Acked {
    hash: String,
    receipt: Value,
}

/// A sealed block as a client saw it before a kill.
struct Served {
    number: u64,
    hash: String,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough to spread kill times.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Runs the torture in `datadir` (created; must not hold a chain yet).
pub fn run(opts: &CrashOptions, datadir: &Path) -> Result<CrashReport, String> {
    let mut rng = Rng(opts.seed | 1);
    let mut report = CrashReport::default();
    let mut unchecked: Vec<Acked> = Vec::new();
    let mut all: Vec<Acked> = Vec::new();
    let mut served: std::collections::BTreeMap<u64, String> = Default::default();
    for iteration in 0..opts.iterations {
        let (mut node, url, restart_ms) = start(opts, datadir)?;
        report.max_restart_ms = report.max_restart_ms.max(restart_ms);
        let mut client = Client::connect(&url).map_err(|e| format!("connect: {e}"))?;
        for a in unchecked.drain(..) {
            check_receipt(&mut client, &a).map_err(|e| format!("after kill {iteration}: {e}"))?;
            report.receipts_checked += 1;
            all.push(a);
        }
        for (number, hash) in &served {
            check_block(&mut client, *number, hash)
                .map_err(|e| format!("after kill {iteration}: {e}"))?;
            report.blocks_checked += 1;
        }
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..opts.clients)
            .map(|i| {
                let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
                let seed = rng.next();
                std::thread::spawn(move || load(&url, i, seed, &acked, &stop))
            })
            .collect();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let watcher = {
            let (url, heads, stop) = (url.clone(), heads.clone(), stop.clone());
            std::thread::spawn(move || watch_heads(&url, &heads, &stop))
        };
        std::thread::sleep(Duration::from_millis(rng.range(opts.run_ms.0, opts.run_ms.1)));
        node.kill().map_err(|e| format!("kill: {e}"))?;
        let _ = node.wait();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        let _ = watcher.join();
        for b in heads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            match served.get(&b.number) {
                Some(hash) if *hash != b.hash => {
                    return Err(format!(
                        "block {} was served as {hash} and later as {}",
                        b.number, b.hash
                    ))
                }
                _ => {
                    served.insert(b.number, b.hash);
                }
            }
        }
        unchecked.extend(acked.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
        report.acknowledged += unchecked.len();
        if (iteration + 1) % opts.verify_every.max(1) == 0 {
            verify(opts, datadir)?;
            report.verifications += 1;
        }
        report.iterations += 1;
    }
    // Final round: every receipt ever acknowledged, then a graceful stop and a full re-execution.
    let (mut node, url, _) = start(opts, datadir)?;
    let mut client = Client::connect(&url).map_err(|e| format!("connect: {e}"))?;
    all.append(&mut unchecked);
    for a in &all {
        check_receipt(&mut client, a).map_err(|e| format!("final check: {e}"))?;
        report.receipts_checked += 1;
    }
    for (number, hash) in &served {
        check_block(&mut client, *number, hash).map_err(|e| format!("final check: {e}"))?;
        report.blocks_checked += 1;
    }
    report.blocks_served = served.len();
    let head = client.rpc("eth_blockNumber", json!([])).map_err(|e| e.to_string())?;
    report.blocks = quantity(&head["result"]).unwrap_or(0) + 1;
    Command::new("kill")
        .arg("-TERM")
        .arg(node.id().to_string())
        .status()
        .map_err(|e| format!("kill -TERM: {e}"))?;
    let status = node.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the node exited with {status} on SIGTERM"));
    }
    verify(opts, datadir)?;
    report.verifications += 1;
    Ok(report)
}

/// Starts the node on a free port; returns it, its URL and how long it took to serve.
fn start(opts: &CrashOptions, datadir: &Path) -> Result<(Child, String, u64), String> {
    let started = Instant::now();
    let stderr = match &opts.log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let accounts = opts.clients.to_string();
    let mut child = Command::new(&opts.strobe)
        .args(["dev", "--port", "0", "--quiet", "--accounts", &accounts, "--block-time"])
        .arg(&opts.block_time)
        .args(["--exec-threads", "2", "--parallel-min-txs", "1", "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", opts.strobe.display()))?;
    let (url, _) = await_rpc_url(&mut child)?;
    if started.elapsed() > START_TIMEOUT {
        let _ = child.kill();
        return Err("the node did not start in time".into());
    }
    Ok((child, url, started.elapsed().as_millis() as u64))
}

/// One client: sync-sends transfers and contract creations until the node dies or `stop`.
fn load(url: &str, account: u32, seed: u64, acked: &Mutex<Vec<Acked>>, stop: &AtomicBool) {
    let Ok(mut client) = Client::connect(url) else { return };
    let _ = client.set_timeout(Duration::from_secs(10));
    let key = dev_signer(account);
    let mut rng = Rng(seed | 1);
    let Ok(mut nonce) = client.nonce(key.address(), "pending") else { return };
    while !stop.load(Ordering::Relaxed) {
        let create = rng.range(0, 4) == 0;
        let tx = TxEip1559 {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: if create { 100_000 } else { 21_000 },
            max_fee_per_gas: 20_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: if create {
                TxKind::Create
            } else {
                TxKind::Call(Address::with_last_byte(rng.range(1, 16) as u8))
            },
            value: U256::from(rng.range(1, 1000)),
            access_list: Default::default(),
            input: if create { Bytes::from_static(&INIT_CODE) } else { Bytes::new() },
        };
        let raw = signed_hex(&key, tx);
        let Ok(v) = client.rpc("eth_sendRawTransactionSync", json!([raw, 5000])) else { return };
        if v["result"].is_object() {
            let hash = v["result"]["transactionHash"].as_str().unwrap_or_default().to_string();
            acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Acked { hash, receipt: v["result"].clone() });
            nonce += 1;
        } else {
            // Refused (e.g. a nonce the node already has from before a kill): resynchronise.
            match client.nonce(key.address(), "pending") {
                Ok(n) => nonce = n,
                Err(_) => return,
            }
        }
    }
}

/// Polls the head block until the node dies or `stop`, recording each new block it is served:
/// the kill often lands between a block being served and the next block's first record.
fn watch_heads(url: &str, heads: &Mutex<Vec<Served>>, stop: &AtomicBool) {
    let Ok(mut client) = Client::connect(url) else { return };
    let _ = client.set_timeout(Duration::from_secs(10));
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok(v) = client.rpc("eth_getBlockByNumber", json!(["latest", false])) else { return };
        let number = quantity(&v["result"]["number"]);
        let hash = v["result"]["hash"].as_str().map(str::to_string);
        if let (Some(number), Some(hash)) = (number, hash) {
            if last != Some(number) {
                last = Some(number);
                heads.lock().unwrap_or_else(|p| p.into_inner()).push(Served { number, hash });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn check_block(client: &mut Client, number: u64, served: &str) -> Result<(), String> {
    let v = client
        .rpc("eth_getBlockByNumber", json!([format!("{number:#x}"), false]))
        .map_err(|e| format!("block query: {e}"))?;
    match v["result"]["hash"].as_str() {
        Some(hash) if hash == served => Ok(()),
        Some(hash) => Err(format!(
            "block {number} was served as {served} before the kill and is {hash} after the restart"
        )),
        None => Err(format!("served block {number} ({served}) is missing after restart")),
    }
}

/// Removes the fields that are not final when a sync receipt is sent (the block hash of a block
/// still open).
fn comparable(receipt: &Value) -> Value {
    let mut r = receipt.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("blockHash");
        if let Some(logs) = o.get_mut("logs").and_then(|l| l.as_array_mut()) {
            for log in logs {
                if let Some(l) = log.as_object_mut() {
                    l.remove("blockHash");
                }
            }
        }
    }
    r
}

fn check_receipt(client: &mut Client, a: &Acked) -> Result<(), String> {
    let v = client
        .rpc("eth_getTransactionReceipt", json!([a.hash]))
        .map_err(|e| format!("receipt query: {e}"))?;
    if v["result"].is_null() {
        return Err(format!("acknowledged transaction {} is missing after restart", a.hash));
    }
    if comparable(&v["result"]) != comparable(&a.receipt) {
        return Err(format!(
            "receipt of {} changed across a restart:\n  before: {}\n  after:  {}",
            a.hash, a.receipt, v["result"]
        ));
    }
    Ok(())
}

fn verify(opts: &CrashOptions, datadir: &Path) -> Result<(), String> {
    let out = Command::new(&opts.strobe)
        .args(["db", "verify", "--datadir"])
        .arg(datadir)
        .output()
        .map_err(|e| format!("spawn verify: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "re-execution failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
