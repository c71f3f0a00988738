//! `strobe-bench` end to end against a real `strobe dev`: short runs at a low rate complete with
//! no errors, and every submitted transaction has a receipt — counted by the harness itself and
//! cross-checked against the transactions the node put in its blocks.

mod common;

use common::DevNode;
use std::time::Duration;
use strobe_tools::bench::{self, report, Driver, RunConfig, Transport, WorkloadSpec};

fn config(url: &str, workload: &str, driver: Driver, transport: Transport) -> RunConfig {
    RunConfig {
        rpc: url.to_string(),
        spec: WorkloadSpec { name: workload.into(), senders: 20, contention: 0.3, pools: 2 },
        driver,
        transport,
        duration: Duration::from_secs(2),
        connections: 0,
        seed: 7,
        node_pid: Some(0),
        progress: false,
        max_txs: 2_000,
    }
}

#[test]
fn short_runs_confirm_every_transaction_and_write_their_reports() {
    let node = DevNode::start(&[]);
    let out = tempfile::tempdir().unwrap();
    let runs = [
        ("mix", Driver::Open { rate: 100.0, poisson: true }, Transport::Http),
        ("swaps", Driver::Open { rate: 50.0, poisson: false }, Transport::HttpSync),
        ("erc20", Driver::Closed { in_flight: 4 }, Transport::HttpSync),
        ("transfers", Driver::Open { rate: 200.0, poisson: true }, Transport::Binary),
        ("erc20", Driver::Closed { in_flight: 4 }, Transport::Binary),
        ("mix", Driver::Open { rate: 100.0, poisson: true }, Transport::Ws),
        ("transfers", Driver::Closed { in_flight: 2 }, Transport::Ws),
    ];
    for (i, (workload, driver, transport)) in runs.into_iter().enumerate() {
        let mut cfg = config(&node.url, workload, driver, transport);
        cfg.node_pid = Some(node.child.id());
        let r = bench::run(&cfg).unwrap();
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent > 0, "{r}");
        if let Driver::Open { rate, .. } = driver {
            assert_eq!(sent, (rate * 2.0) as u64, "every scheduled transaction was sent");
        }
        assert_eq!(r["errors"], serde_json::json!({}), "{workload}: {}", r["errors"]);
        assert_eq!(r["confirmed"], sent, "{workload}: a receipt for every transaction");
        assert_eq!(r["blocks"]["txs"], sent, "{workload}: the node's blocks hold exactly the run");
        assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
        assert!(r["node_cpu_us_per_tx"].as_f64().is_some());
        // 10 ms mini-blocks over a 2 s run, read back with strobe_getMiniBlocks.
        let m = &r["mini_block_interval_ms"];
        assert!(m["count"].as_u64().unwrap() >= 100, "{m}");
        let p50 = m["p50"].as_f64().unwrap();
        assert!((2.0..=50.0).contains(&p50), "mini-block interval p50 {p50} ms");
        let (json, svg) = report::write(out.path(), &format!("run{i}"), &r).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        assert_eq!(back["confirmed"], sent);
        assert!(std::fs::read_to_string(svg).unwrap().contains("latency CDF"));
    }
}
