//! The `replay` and `exec-bench` commands.

use serde_json::{json, Value};
use std::{path::Path, time::Instant};
use strobe_engine::parallel::ParallelExecutor;
use strobe_tools::{
    fixture::{self, Comparison},
    workload,
};

fn facts(c: &Comparison) -> Value {
    json!({
        "gas_used": c.got.gas_used,
        "logs_bloom_matches": c.got.logs_bloom == c.expected.logs_bloom,
        "receipts_root": c.got.receipts_root.to_string(),
        "receipts_root_checked": c.receipts_root_checked,
        "rejected": c.rejected.iter().map(|(i, e)| json!({"index": i, "error": e})).collect::<Vec<_>>(),
        "matches": c.matches(),
    })
}

/// Replays `file`; returns the report and whether everything matched.
pub(crate) fn replay(file: &Path, threads: usize) -> Result<(Value, bool), String> {
    let block = fixture::load(file).map_err(|e| e.to_string())?;
    let executor = ParallelExecutor::new(threads).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let sequential =
        block.with_db(|db| strobe_engine::exec::execute_sequential(db, &block.env, &block.txs));
    let sequential_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let (parallel, stats) =
        block.with_db(|db| executor.execute_block_stm(db, &block.env, &block.txs));
    let parallel_ms = started.elapsed().as_secs_f64() * 1e3;
    let seq = block.compare(&sequential);
    let par = block.compare(&parallel);
    let identical = sequential == parallel;
    let ok = seq.matches() && par.matches() && identical;
    let report = json!({
        "block": block.number,
        "hash": block.hash.to_string(),
        "fork": block.fork,
        "txs": block.txs.len(),
        "expected": {
            "gas_used": block.expected.gas_used,
            "receipts_root": block.expected.receipts_root.to_string(),
        },
        "sequential": facts(&seq),
        "parallel": facts(&par),
        "threads": threads,
        "incarnations": stats.incarnations,
        "parallel_equals_sequential": identical,
        "sequential_ms": sequential_ms,
        "parallel_ms": parallel_ms,
        "ok": ok,
    });
    Ok((report, ok))
}

/// Runs `f`, appending its wall time in milliseconds to `times`.
fn timed<R>(times: &mut Vec<f64>, f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let out = f();
    times.push(started.elapsed().as_secs_f64() * 1e3);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times sequential and Block-STM execution of a workload in the same run (and, with `split`,
/// the ideal split: see `strobe-tools exec-bench --help`).
pub(crate) fn exec_bench(
    name: &str,
    txs: usize,
    threads: usize,
    rounds: usize,
    only: Option<&str>,
    split: bool,
) -> Result<Value, String> {
    let (run_seq, run_par) = match only {
        None => (true, true),
        Some("sequential") => (true, false),
        Some("parallel") => (false, true),
        Some(other) => return Err(format!("--only takes sequential or parallel, not {other:?}")),
    };
    let (world, list) = workload::build(name, txs)
        .ok_or_else(|| format!("unknown workload {name:?}; known: {:?}", workload::WORKLOADS))?;
    let env = world.env();
    let mut executor = ParallelExecutor::new(threads).map_err(|e| e.to_string())?;
    let reference = world.execute_sequential(&list);
    let (mut seq_ms, mut par_ms, mut adaptive_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut incarnations = 0;
    let mut identical = true;
    let split_pool = match split {
        true => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .build()
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };
    // The ideal split, each run next to a sequential run of the same block, before any
    // Block-STM run (whose background frees would share the machine with it).
    let (mut split_ms, mut split_seq_ms) = (Vec::new(), Vec::new());
    if let Some(pool) = &split_pool {
        let part = list.len().div_ceil(threads.max(1)).max(1);
        for _ in 0..rounds.max(1) {
            timed(&mut split_seq_ms, || std::hint::black_box(world.execute_sequential(&list)));
            timed(&mut split_ms, || {
                world.with_db(|db| {
                    pool.install(|| {
                        use rayon::prelude::*;
                        list.par_chunks(part).for_each(|txs| {
                            std::hint::black_box(strobe_engine::exec::execute_sequential(
                                db, &env, txs,
                            ));
                        })
                    })
                })
            });
        }
    }
    for _ in 0..rounds.max(1) {
        if run_seq {
            let out = timed(&mut seq_ms, || world.execute_sequential(&list));
            identical &= out == reference;
        }
        if !run_par {
            continue;
        }
        let (out, stats) =
            timed(&mut par_ms, || world.with_db(|db| executor.execute_block_stm(db, &env, &list)));
        identical &= out == reference;
        incarnations = stats.incarnations;
    }
    // The adaptive executor as the sequencer runs it: one block after another, each timed
    // against a sequential run of the same block next to it. (Timed right after a Block-STM
    // run, it would pay for that run's caches and background frees, which the sequencer's
    // steady state does not: it runs Block-STM on one block in PROBE_INTERVAL there.)
    let mut adaptive_seq_ms = Vec::new();
    for _ in 0..if run_par && run_seq { rounds.max(1) } else { 0 } {
        let out = timed(&mut adaptive_seq_ms, || world.execute_sequential(&list));
        identical &= out == reference;
        let out = timed(&mut adaptive_ms, || world.with_db(|db| executor.execute(db, &env, &list)));
        identical &= out == reference;
    }
    let adaptive_mean = adaptive_ms.iter().sum::<f64>() / adaptive_ms.len().max(1) as f64;
    let adaptive_seq = median(adaptive_seq_ms);
    let (s, p, a) = (median(seq_ms), median(par_ms), median(adaptive_ms));
    let split = (!split_ms.is_empty()).then(|| (median(split_ms), median(split_seq_ms)));
    Ok(json!({
        "workload": name,
        "txs": list.len(),
        "threads": threads,
        "sequential_ms": s,
        "parallel_ms": p,
        "speedup": s / p,
        "adaptive_ms": a,
        "adaptive_mean_ms": adaptive_mean,
        "adaptive_sequential_ms": adaptive_seq,
        "adaptive_speedup": adaptive_seq / a,
        "incarnations": incarnations,
        "identical": identical,
        "split_ms": split.map(|(x, _)| x),
        "split_speedup": split.map(|(x, seq)| seq / x),
    }))
}
