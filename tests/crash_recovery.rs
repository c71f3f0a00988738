//! Crash torture in the test suite: 50 SIGKILLs of a persistent node under sync-send load, each
//! followed by a restart that must keep every acknowledged receipt and every served block hash,
//! and a full re-execution from genesis that must reproduce every state root. `tools/crash-test.sh N` runs any count
//! (`STROBE_CRASH_ITERATIONS`, `STROBE_CRASH_VERIFY_EVERY`, `STROBE_CRASH_SEED` override the
//! defaults; `STROBE_CRASH_LOG` keeps the nodes' log in a file of your choice).

use strobe_tools::crash::{run, CrashOptions};

#[test]
fn killed_node_keeps_every_acknowledged_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("data");
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let iterations = env("STROBE_CRASH_ITERATIONS", 50) as u32;
    let mut opts = CrashOptions::new(env!("CARGO_BIN_EXE_strobe").into(), iterations);
    opts.verify_every = env("STROBE_CRASH_VERIFY_EVERY", 1) as u32;
    opts.seed = env("STROBE_CRASH_SEED", opts.seed);
    let log = std::env::var_os("STROBE_CRASH_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("node.log"));
    opts.log = Some(log.clone());
    let report = match run(&opts, &datadir) {
        Ok(r) => r,
        Err(e) => {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{e}\n--- node log (last lines) ---\n{tail}");
        }
    };
    eprintln!("{report:?}");
    assert_eq!(report.iterations, iterations);
    assert!(
        report.acknowledged > iterations as usize,
        "too little load to mean anything: {report:?}"
    );
    assert!(report.receipts_checked >= report.acknowledged);
    assert!(
        report.blocks_served > iterations as usize,
        "the head watcher saw too few blocks to mean anything: {report:?}"
    );
    assert!(report.blocks_checked >= report.blocks_served);
    assert_eq!(report.verifications, iterations / opts.verify_every + 1);
}
