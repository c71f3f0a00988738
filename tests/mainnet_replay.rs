//! Every mainnet block in `tests/fixtures/mainnet/` (Frontier to Cancun) replayed with the
//! sequential executor and with Block-STM at 1, 2 and 8 threads, under the fork's rules, must
//! reproduce the header: gas used, logs bloom, and from Byzantium on the receipts root (which
//! pins every receipt's status, cumulative gas and logs). Block-STM must also equal sequential
//! byte for byte, state diff included.

use std::path::PathBuf;
use strobe_engine::{exec::execute_sequential, parallel::ParallelExecutor};
use strobe_tools::fixture;

fn fixture_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mainnet");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_block_matches_its_header_sequentially_and_in_parallel() {
    let files = fixture_files();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/index.json"),
        )
        .expect("index.json"),
    )
    .expect("index.json parses");
    assert_eq!(
        files.len(),
        index.as_array().expect("index is a list").len(),
        "a fixture is missing"
    );
    let executors: Vec<ParallelExecutor> =
        [1, 2, 8].iter().map(|t| ParallelExecutor::new(*t).expect("threads")).collect();
    let mut failures = Vec::new();
    let mut forks = std::collections::BTreeSet::new();
    for file in &files {
        let block = fixture::load(file).unwrap_or_else(|e| panic!("{e}"));
        forks.insert(block.fork.clone());
        let sequential = block.with_db(|db| execute_sequential(db, &block.env, &block.txs));
        let cmp = block.compare(&sequential);
        if !cmp.matches() {
            failures.push(format!("{} ({}) sequential: {cmp:?}", block.number, block.fork));
        }
        for executor in &executors {
            let (parallel, _) =
                block.with_db(|db| executor.execute_block_stm(db, &block.env, &block.txs));
            let cmp = block.compare(&parallel);
            if !cmp.matches() {
                failures.push(format!(
                    "{} ({}) Block-STM x{}: {cmp:?}",
                    block.number,
                    block.fork,
                    executor.threads()
                ));
            }
            if parallel != sequential {
                failures.push(format!(
                    "{} Block-STM x{} differs from sequential",
                    block.number,
                    executor.threads()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(forks.len(), 12, "fixtures should cover all twelve forks: {forks:?}");
}

#[test]
fn a_tampered_header_is_detected() {
    let file = fixture_files()
        .into_iter()
        .find(|f| f.ends_with("19426586.json.gz"))
        .expect("shanghai fixture present");
    let mut block = fixture::load(&file).expect("loads");
    let out = block.with_db(|db| execute_sequential(db, &block.env, &block.txs));
    assert!(block.compare(&out).matches());
    block.expected.gas_used += 1;
    assert!(!block.compare(&out).matches());
    block.expected.gas_used -= 1;
    block.expected.receipts_root = Default::default();
    assert!(!block.compare(&out).matches());
    // Dropping one transaction changes everything after it.
    let mut short = block.txs.clone();
    short.pop();
    let block = fixture::load(&file).expect("loads");
    let out = block.with_db(|db| execute_sequential(db, &block.env, &short));
    assert!(!block.compare(&out).matches());
}
