//! The persistent state store (`strobe_storage::PersistentStore`) on a realistic state.
//!
//! State: 1,000,000 funded EOAs plus 10,000 contracts of 100 storage slots each (1,010,000
//! accounts, 1,000,000 slots), buckets sized with `StoreOptions::log2_buckets_for`, in a temporary
//! directory (≈ 0.5 GB, removed at exit).
//!
//! - `root_update/K` and `checkpoint/K`: a block that changes K keys — K/2 EOA balances and K/2
//!   existing storage slots spread over 1,000 of the contracts (whose account records are
//!   rewritten too: K + 1,000 keys in all). `root_update` is [`PersistentStore::preview_root`]:
//!   planning both tables and rehashing the touched buckets and their tree paths, nothing written.
//!   `checkpoint` is the whole commit: the same plus journal (fsync), in-place writes, msync and
//!   header. Each is run on a rayon pool of 1 and of 2 threads, so the ratio is the speedup.
//! - `reads`: point reads on a view of the checkpointed state (account and storage, hits and
//!   misses), cycling over 4,096 keys.
//! - `writes`: `apply` of a one-account diff and of a one-contract, two-slot diff.
//! - `apply/10000_accounts`: `apply` of a 10,000-account diff into an empty overlay.
//!
//! Run: `cargo bench --bench storage` (a few minutes; most of it building the state).
#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use alloy_primitives::{keccak256, Address, B256, U256};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use revm::bytecode::Bytecode;
use std::{
    collections::BTreeSet,
    hint::black_box,
    time::{Duration, Instant},
};
use strobe_storage::{
    bucket_of, keccak, AccountChange, AccountState, PersistentStore, StateDiff, StateStore,
    StoreOptions,
};

// The node's allocator, so the benchmarks measure what the node runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EOAS: u64 = 1_000_000;
const CONTRACTS: u64 = 10_000;
const SLOTS_PER_CONTRACT: u64 = 100;
/// Contracts that the storage writes of a benchmark block go to.
const HOT_CONTRACTS: u64 = 1_000;
const ETHER: u64 = 1_000_000_000_000_000_000;

fn eoa(i: u64) -> Address {
    Address::from_slice(&keccak256(i.to_be_bytes())[12..])
}

fn contract(i: u64) -> Address {
    Address::from_slice(&keccak256([b"contract".as_slice(), &i.to_be_bytes()].concat())[12..])
}

fn code() -> Bytecode {
    // PUSH1 1 PUSH1 0 SSTORE STOP
    Bytecode::new_raw(alloy_primitives::Bytes::from_static(&[0x60, 0x01, 0x60, 0x00, 0x55, 0x00]))
}

fn eoa_state(balance: u64) -> AccountState {
    AccountState {
        nonce: 0,
        balance: U256::from(balance) * U256::from(ETHER),
        code_hash: revm::primitives::KECCAK_EMPTY,
    }
}

fn contract_state(code_hash: B256) -> AccountState {
    AccountState { nonce: 1, balance: U256::ZERO, code_hash }
}

fn sorted(mut accounts: Vec<AccountChange>, codes: Vec<(B256, Bytecode)>) -> StateDiff {
    accounts.sort_unstable_by_key(|a| a.address);
    StateDiff { accounts, codes }
}

/// The benchmark's state, checkpointed, and a counter that makes every block's values new.
struct Fixture {
    store: PersistentStore,
    code_hash: B256,
    round: u64,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn build() -> Self {
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("strobe-bench-storage-").tempdir().unwrap();
        let options = StoreOptions {
            accounts_log2_buckets: StoreOptions::log2_buckets_for(EOAS + CONTRACTS),
            slots_log2_buckets: StoreOptions::log2_buckets_for(CONTRACTS * SLOTS_PER_CONTRACT),
        };
        let mut store = PersistentStore::open(dir.path(), options).unwrap();
        let code = code();
        let code_hash = code.hash_slow();
        let mut block = 0;
        for chunk in (0..EOAS).collect::<Vec<_>>().chunks(250_000) {
            let accounts = chunk
                .iter()
                .map(|i| AccountChange {
                    address: eoa(*i),
                    info: Some(eoa_state(1)),
                    storage_cleared: false,
                    storage: vec![],
                })
                .collect();
            store.apply(&sorted(accounts, vec![])).unwrap();
            block += 1;
            store.commit(block, block).unwrap();
        }
        for chunk in (0..CONTRACTS).collect::<Vec<_>>().chunks(2_500) {
            let accounts = chunk
                .iter()
                .map(|i| AccountChange {
                    address: contract(*i),
                    info: Some(contract_state(code_hash)),
                    storage_cleared: true,
                    storage: (0..SLOTS_PER_CONTRACT)
                        .map(|s| (U256::from(s), U256::from(s + 1)))
                        .collect(),
                })
                .collect();
            store.apply(&sorted(accounts, vec![(code_hash, code.clone())])).unwrap();
            block += 1;
            store.commit(block, block).unwrap();
        }
        let stats = store.stats();
        eprintln!(
            "storage bench state: {} accounts, {} slots, buckets 2^{}/2^{}, {:.0} MiB of tables, built in {:.1} s",
            stats.accounts,
            stats.slots,
            stats.log2_buckets.0,
            stats.log2_buckets.1,
            (stats.accounts_bytes + stats.slots_bytes) as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        Self { store, code_hash, round: block, _dir: dir }
    }

    /// A block changing `keys` keys (see the module docs), with values new to this round.
    fn block_diff(&mut self, keys: u64) -> StateDiff {
        self.round += 1;
        let r = self.round;
        let half = keys / 2;
        let mut accounts: Vec<AccountChange> = (0..half)
            .map(|i| AccountChange {
                // Spread over the whole account space, not just the first keys built.
                address: eoa(i * (EOAS / half)),
                info: Some(eoa_state(r)),
                storage_cleared: false,
                storage: vec![],
            })
            .collect();
        let per_contract = half.div_ceil(HOT_CONTRACTS).min(SLOTS_PER_CONTRACT);
        for c in 0..HOT_CONTRACTS {
            accounts.push(AccountChange {
                address: contract(c * (CONTRACTS / HOT_CONTRACTS)),
                info: Some(contract_state(self.code_hash)),
                storage_cleared: false,
                storage: (0..per_contract).map(|s| (U256::from(s), U256::from(r))).collect(),
            });
        }
        sorted(accounts, vec![])
    }

    /// A diff of `n` EOAs starting at `first` (balance changes only).
    fn accounts_diff(&mut self, first: u64, n: u64) -> StateDiff {
        self.round += 1;
        let accounts = (first..first + n)
            .map(|i| AccountChange {
                address: eoa(i % EOAS),
                info: Some(eoa_state(self.round)),
                storage_cleared: false,
                storage: vec![],
            })
            .collect();
        sorted(accounts, vec![])
    }

    fn commit(&mut self) {
        self.round += 1;
        self.store.commit(self.round, self.round).unwrap();
    }
}

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    [1, 2]
        .into_iter()
        .map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()))
        .collect()
}

/// Lower bound on the keccak-f permutations a root update over `diff` takes: at least one per
/// touched bucket (two once its records reach 136 bytes) and one per changed tree node.
fn permutations(f: &Fixture, diff: &StateDiff) -> u64 {
    let (accounts_log2, slots_log2) = f.store.stats().log2_buckets;
    let mut accounts = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for a in &diff.accounts {
        accounts.insert(bucket_of(a.address.as_slice(), accounts_log2));
        for (slot, _) in &a.storage {
            let key = [a.address.as_slice(), &slot.to_be_bytes::<32>()].concat();
            slots.insert(bucket_of(&key, slots_log2));
        }
    }
    let nodes = |mut level: BTreeSet<u64>, log2: u32| {
        let mut n = 0;
        for _ in 0..log2 / 2 {
            level = level.iter().map(|b| b / 4).collect();
            n += level.len() as u64;
        }
        n
    };
    (accounts.len() + slots.len()) as u64
        + nodes(accounts, accounts_log2)
        + nodes(slots, slots_log2)
}

fn commitment(c: &mut Criterion, f: &mut Fixture) {
    let pools = pools();
    // The floor under every root update: one keccak-f permutation (a tree node hashes 128 bytes).
    let node = [7u8; 128];
    c.bench_function("storage/keccak256_128_bytes", |b| b.iter(|| keccak256(black_box(node))));
    // The same work eight at a time, as the commitment hashes nodes (eight-way AVX-512 where
    // the CPU has it; divide by eight for the cost per hash).
    eprintln!(
        "storage/keccak256_128_bytes_x8: eight-way permutation in use: {}",
        keccak::vectorised()
    );
    let nodes = [node; keccak::LANES];
    let mut out = [[0u8; 32]; keccak::LANES];
    c.bench_function("storage/keccak256_128_bytes_x8", |b| {
        b.iter(|| keccak::keccak256_128x8(black_box(&nodes), &mut out))
    });
    for keys in [10_000u64, 100_000] {
        let diff = f.block_diff(keys);
        eprintln!(
            "storage/root_update/{keys}: {} accounts and {} slots change, >= {} keccak-f permutations",
            diff.accounts.len(),
            diff.slot_count(),
            permutations(f, &diff)
        );
        f.store.apply(&diff).unwrap();
        let mut g = c.benchmark_group(format!("storage/root_update/{keys}"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(keys));
        for (t, pool) in &pools {
            g.bench_function(BenchmarkId::new("threads", t), |b| {
                b.iter(|| pool.install(|| f.store.preview_root().unwrap()))
            });
        }
        g.finish();
        // The whole checkpoint: each iteration applies a new block of the same keys (not
        // timed) and times the commit.
        f.commit();
        let mut g = c.benchmark_group(format!("storage/checkpoint/{keys}"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(keys));
        for (t, pool) in &pools {
            g.bench_function(BenchmarkId::new("threads", t), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let diff = f.block_diff(keys);
                        f.store.apply(&diff).unwrap();
                        let next = f.round + 1;
                        let started = Instant::now();
                        black_box(pool.install(|| f.store.commit(next, next).unwrap()));
                        total += started.elapsed();
                        f.round = next;
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

fn reads(c: &mut Criterion, f: &mut Fixture) {
    let view = f.store.view();
    let hits: Vec<Address> = (0..4096u64).map(|i| eoa(i * 241 % EOAS)).collect();
    let misses: Vec<Address> = (0..4096u64).map(|i| eoa(EOAS + i)).collect();
    let slot_hits: Vec<(Address, U256)> = (0..4096u64)
        .map(|i| (contract(i * 7 % CONTRACTS), U256::from(i % SLOTS_PER_CONTRACT)))
        .collect();
    let slot_misses: Vec<(Address, U256)> = (0..4096u64)
        .map(|i| (contract(i * 7 % CONTRACTS), U256::from(SLOTS_PER_CONTRACT + i)))
        .collect();
    assert!(view.account(&hits[1]).is_some() && view.account(&misses[1]).is_none());
    assert!(!view.storage(&slot_hits[1].0, &slot_hits[1].1).is_zero());
    let mut g = c.benchmark_group("storage/reads");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & 4095;
        i
    };
    g.bench_function("account_hit", |b| b.iter(|| view.account(&hits[next()])));
    g.bench_function("account_miss", |b| b.iter(|| view.account(&misses[next()])));
    g.bench_function("storage_hit", |b| {
        b.iter(|| {
            let (a, s) = &slot_hits[next()];
            view.storage(a, s)
        })
    });
    g.bench_function("storage_miss", |b| {
        b.iter(|| {
            let (a, s) = &slot_misses[next()];
            view.storage(a, s)
        })
    });
    g.finish();
}

fn writes(c: &mut Criterion, f: &mut Fixture) {
    // 4,096 prepared diffs of each kind, applied in turn (the overlay holds at most 4,096 keys).
    let one_account: Vec<StateDiff> = (0..4096u64).map(|i| f.accounts_diff(i * 241, 1)).collect();
    let code_hash = f.code_hash;
    let one_contract: Vec<StateDiff> = (0..4096u64)
        .map(|i| {
            sorted(
                vec![AccountChange {
                    address: contract(i % CONTRACTS),
                    info: Some(contract_state(code_hash)),
                    storage_cleared: false,
                    storage: vec![(U256::from(1), U256::from(i + 7)), (U256::from(2), U256::ZERO)],
                }],
                vec![],
            )
        })
        .collect();
    let mut g = c.benchmark_group("storage/writes");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let mut i = 0usize;
    g.bench_function("apply_1_account", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            f.store.apply(&one_account[i]).unwrap()
        })
    });
    g.bench_function("apply_1_contract_2_slots", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            f.store.apply(&one_contract[i]).unwrap()
        })
    });
    g.finish();
    f.commit();
}

fn apply_diff(c: &mut Criterion, f: &mut Fixture) {
    const N: u64 = 10_000;
    let mut g = c.benchmark_group("storage/apply");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(N));
    let mut first = 0;
    g.bench_function("10000_accounts", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A new 10k-account range each time, into an empty overlay; the checkpoint
                // that empties it again is not timed.
                let diff = f.accounts_diff(first, N);
                first = (first + N) % EOAS;
                let started = Instant::now();
                f.store.apply(&diff).unwrap();
                total += started.elapsed();
                f.commit();
            }
            total
        })
    });
    g.finish();
}

fn storage(c: &mut Criterion) {
    let mut f = Fixture::build();
    commitment(c, &mut f);
    reads(c, &mut f);
    writes(c, &mut f);
    apply_diff(c, &mut f);
}

criterion_group!(benches, storage);
criterion_main!(benches);
