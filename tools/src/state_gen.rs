//! The `state-gen` command: a new data directory holding a chain whose genesis state has N funded
//! accounts, for measuring the state store at realistic sizes (open time, memory, disk).
//!
//! Account `i` has address `keccak256(i as 8 big-endian bytes)[12..]`, balance 1 ether, nonce 0
//! and no code, so two runs with the same N give the same state root. The chain is created by
//! [`Engine::open`] exactly as `strobe node --genesis` would (buckets sized for N with
//! `StoreOptions::log2_buckets_for`), then shut down.

use alloy_primitives::{keccak256, Address, U256};
use serde_json::{json, Value};
use std::{path::Path, time::Instant};
use strobe_engine::{
    config::{ChainConfig, Genesis, GenesisAccount},
    storage::StoreOptions,
    Engine,
};

const ETHER: u64 = 1_000_000_000_000_000_000;
/// Storage buckets of the generated state (it has no storage yet).
const SLOTS_LOG2_BUCKETS: u32 = 16;

/// The address of generated account `i`.
pub(crate) fn account_address(i: u64) -> Address {
    Address::from_slice(&keccak256(i.to_be_bytes())[12..])
}

/// Creates the chain in `datadir` (which must not exist or be empty) and reports what it took.
pub(crate) fn state_gen(accounts: u64, datadir: &Path) -> Result<Value, String> {
    if let Ok(mut entries) = std::fs::read_dir(datadir) {
        if entries.next().is_some() {
            return Err(format!("{} exists and is not empty", datadir.display()));
        }
    } else if datadir.exists() {
        return Err(format!("{} exists and is not a directory", datadir.display()));
    }
    std::fs::create_dir_all(datadir).map_err(|e| format!("creating {}: {e}", datadir.display()))?;
    let started = Instant::now();
    let balance = U256::from(ETHER);
    let alloc: Vec<(Address, GenesisAccount)> = (0..accounts)
        .map(|i| (account_address(i), GenesisAccount { balance, ..Default::default() }))
        .collect();
    let genesis = Genesis { alloc, ..Default::default() };
    let built = started.elapsed();
    let options = StoreOptions {
        accounts_log2_buckets: StoreOptions::log2_buckets_for(accounts),
        slots_log2_buckets: SLOTS_LOG2_BUCKETS,
    };
    let mut engine = Engine::open(ChainConfig::default(), &genesis, datadir, options)
        .map_err(|e| format!("creating the chain in {}: {e}", datadir.display()))?;
    let opened = started.elapsed();
    let root = engine.view().head().header.state_root;
    drop(genesis);
    engine.shutdown();
    if let Some(e) = engine.fatal_error() {
        return Err(format!("the engine stopped: {e}"));
    }
    drop(engine);
    let elapsed = started.elapsed();
    let (bytes, disk_bytes) = dir_size(datadir);
    Ok(json!({
        "accounts": accounts,
        "datadir": datadir.display().to_string(),
        "log2_buckets": [options.accounts_log2_buckets, options.slots_log2_buckets],
        "state_root": root.to_string(),
        "alloc_s": built.as_secs_f64(),
        "engine_open_s": (opened - built).as_secs_f64(),
        "elapsed_s": elapsed.as_secs_f64(),
        "datadir_bytes": bytes,
        "datadir_disk_bytes": disk_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
    }))
}

/// Apparent size of every file under `dir`, and the bytes actually allocated on disk (the table
/// files are sparse until written).
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return total };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (b, d) = dir_size(&entry.path());
            total = (total.0 + b, total.1 + d);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    total
}

/// The process's peak resident set (`VmHWM`), where Linux reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
