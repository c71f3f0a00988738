//! Sequential revm against Block-STM, measured in the same run on the same blocks.
//!
//! Workloads (`strobe_tools::workload`): independent ether transfers, independent ERC-20
//! transfers, one hot Uniswap-v2-style pool (every transaction conflicts), a mixed block, and the
//! three largest mainnet fixture blocks. For each: `sequential` (the reference executor),
//! `block_stm` (Block-STM forced, `STROBE_BENCH_THREADS` workers, default 2) and `adaptive` (what
//! the sequencer runs: Block-STM unless the block is small or recent blocks conflicted).
//!
//! Run: `cargo bench --bench execution`. Quick comparisons without criterion:
//! `strobe-tools exec-bench --workload erc20 --txs 1000 --threads 2`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::{path::PathBuf, time::Duration};
use strobe_engine::{exec::execute_sequential, parallel::ParallelExecutor};
use strobe_tools::{fixture, workload};

fn threads() -> usize {
    std::env::var("STROBE_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2)
}

fn workloads(c: &mut Criterion) {
    let threads = threads();
    let mut executor = ParallelExecutor::new(threads).expect("execution threads");
    for name in workload::WORKLOADS {
        let (world, txs) = workload::build(name, 1000).expect("known workload");
        let env = world.env();
        let mut g = c.benchmark_group(format!("execution/{name}"));
        g.throughput(Throughput::Elements(txs.len() as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(4));
        g.bench_function("sequential", |b| {
            b.iter(|| world.with_db(|db| execute_sequential(db, &env, &txs)))
        });
        g.bench_function(BenchmarkId::new("block_stm", threads), |b| {
            b.iter(|| world.with_db(|db| executor.execute_block_stm(db, &env, &txs)))
        });
        g.bench_function(BenchmarkId::new("adaptive", threads), |b| {
            b.iter(|| world.with_db(|db| executor.execute(db, &env, &txs)))
        });
        g.finish();
    }
}

fn mainnet(c: &mut Criterion) {
    let threads = threads();
    let executor = ParallelExecutor::new(threads).expect("execution threads");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mainnet");
    // The three largest fixture blocks by transaction count.
    for number in [14_396_881u64, 13_217_637, 15_199_017] {
        let block = fixture::load(&dir.join(format!("{number}.json.gz"))).expect("fixture");
        let mut g = c.benchmark_group(format!("mainnet/{number}"));
        g.throughput(Throughput::Elements(block.txs.len() as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(4));
        g.bench_function("sequential", |b| {
            b.iter(|| block.with_db(|db| execute_sequential(db, &block.env, &block.txs)))
        });
        g.bench_function(BenchmarkId::new("block_stm", threads), |b| {
            b.iter(|| block.with_db(|db| executor.execute_block_stm(db, &block.env, &block.txs)))
        });
        g.finish();
    }
}

criterion_group!(benches, workloads, mainnet);
criterion_main!(benches);
