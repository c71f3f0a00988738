//! What a `strobe-bench` run reports: the live progress bar, the result document (JSON), and
//! the chart (SVG: TPS over time and the latency CDF).

use super::{Driver, RunConfig, Sample, Transport};
use crate::client::{quantity, Client};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Width of one TPS-over-time bucket.
const BUCKET_MS: u64 = 250;

/// Draws a progress bar with the live completion rate until `done()` or the run's end plus a
/// grace period.
pub fn progress(
    completed: &AtomicU64,
    total: u64,
    duration: Duration,
    draw: bool,
    done: impl Fn() -> bool,
) {
    let bar = if draw { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    while !done() && started.elapsed() < duration + Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(200));
        let n = completed.load(Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64();
        if dt >= 1.0 {
            bar.set_message(format!("{:.0} tx/s", (n - last.1) as f64 / dt));
            last = (Instant::now(), n);
        }
        bar.set_position(n);
    }
    bar.finish_and_clear();
}

/// Per-block gas use and transaction counts of blocks `from..=to`.
pub fn block_fill(c: &mut Client, from: u64, to: u64) -> Result<Vec<(u64, u64, u64)>, String> {
    let mut out = Vec::new();
    for n in from..=to {
        let v = c
            .rpc("eth_getBlockByNumber", json!([format!("0x{n:x}"), false]))
            .map_err(|e| e.to_string())?;
        let b = &v["result"];
        if b.is_null() {
            break;
        }
        let used = quantity(&b["gasUsed"]).unwrap_or(0);
        let limit = quantity(&b["gasLimit"]).unwrap_or(1).max(1);
        let txs = b["transactions"].as_array().map_or(0, |a| a.len() as u64);
        out.push((used, limit, txs));
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The result document of a run.
pub fn summarize(
    cfg: &RunConfig,
    samples: &[Sample],
    setup_s: f64,
    signing_s: f64,
    blocks: Vec<(u64, u64, u64)>,
    node_cpu_s: Option<f64>,
    mini_intervals: Option<Vec<f64>>,
) -> Value {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.done_us.is_some()).collect();
    let mut lat_ms: Vec<f64> = ok
        .iter()
        .map(|s| (s.done_us.unwrap_or(0).saturating_sub(s.due_us)) as f64 / 1000.0)
        .collect();
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let unanswered = samples.iter().filter(|s| s.done_us.is_none() && s.error.is_none()).count();
    if unanswered > 0 {
        *errors.entry("never answered".into()).or_default() += unanswered as u64;
    }
    let first = samples.iter().map(|s| s.due_us).min().unwrap_or(0);
    let last = ok.iter().filter_map(|s| s.done_us).max().unwrap_or(first);
    let span_s = ((last - first) as f64 / 1e6).max(1e-6);
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for s in &ok {
        *buckets.entry(s.done_us.unwrap_or(0) / 1000 / BUCKET_MS).or_default() += 1;
    }
    let timeline: Vec<Value> = buckets
        .iter()
        .map(|(b, n)| {
            json!([(*b * BUCKET_MS) as f64 / 1000.0, *n as f64 * 1000.0 / BUCKET_MS as f64])
        })
        .collect();
    let peak = buckets.values().copied().max().unwrap_or(0) as f64 * 1000.0 / BUCKET_MS as f64;
    let fills: Vec<f64> = blocks.iter().map(|(u, l, _)| *u as f64 / *l as f64).collect();
    let cdf: Vec<Value> =
        (0..=100).map(|i| json!([percentile(&lat_ms, i as f64), i as f64 / 100.0])).collect();
    let (driver, target) = match cfg.driver {
        Driver::Open { rate, poisson } => {
            (if poisson { "open-poisson" } else { "open-constant" }, json!(rate))
        }
        Driver::Closed { in_flight } => ("closed", json!(in_flight)),
    };
    json!({
        "config": {
            "rpc": cfg.rpc,
            "workload": cfg.spec.name,
            "senders": cfg.spec.senders,
            "contention": cfg.spec.contention,
            "pools": cfg.spec.pools,
            "driver": driver,
            "target": target,
            "transport": match cfg.transport {
                Transport::Http => "http",
                Transport::HttpSync => "http-sync",
                Transport::Binary => "binary",
                Transport::Ws => "ws",
            },
            "duration_s": cfg.duration.as_secs_f64(),
            "seed": cfg.seed,
        },
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu": cpu_model(),
            "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        },
        "setup_s": setup_s,
        "signing_s": signing_s,
        "sent": samples.len(),
        "confirmed": ok.len(),
        "tps": ok.len() as f64 / span_s,
        "tps_peak_250ms": peak,
        "latency_ms": {
            "from": if matches!(cfg.driver, Driver::Open { .. }) { "scheduled send" } else { "send" },
            "p50": percentile(&lat_ms, 50.0), "p90": percentile(&lat_ms, 90.0),
            "p99": percentile(&lat_ms, 99.0), "p999": percentile(&lat_ms, 99.9),
            "max": lat_ms.last().copied().unwrap_or(0.0),
        },
        "blocks": {
            "count": blocks.len(),
            "fill_mean": if fills.is_empty() { 0.0 } else { fills.iter().sum::<f64>() / fills.len() as f64 },
            "fill_max": fills.iter().copied().fold(0.0, f64::max),
            "txs_max": blocks.iter().map(|b| b.2).max().unwrap_or(0),
            "txs": blocks.iter().map(|b| b.2).sum::<u64>(),
        },
        "mini_block_interval_ms": mini_intervals.map(|mut v| {
            v.sort_by(|a, b| a.total_cmp(b));
            json!({
                "count": v.len(),
                "p50": percentile(&v, 50.0),
                "p99": percentile(&v, 99.0),
                "max": v.last().copied().unwrap_or(0.0),
            })
        }),
        "node_cpu_us_per_tx": node_cpu_s.map(|s| if ok.is_empty() { 0.0 } else { s * 1e6 / ok.len() as f64 }),
        "errors": errors,
        "timeline_tps": timeline,
        "latency_cdf_ms": cdf,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// One line per number that matters.
pub fn print_summary(r: &Value) {
    let l = &r["latency_ms"];
    println!(
        "{} {} via {}: {} sent, {} confirmed, {:.0} tx/s (peak {:.0}/s over 250 ms)",
        r["config"]["workload"].as_str().unwrap_or(""),
        r["config"]["driver"].as_str().unwrap_or(""),
        r["config"]["transport"].as_str().unwrap_or(""),
        r["sent"],
        r["confirmed"],
        r["tps"].as_f64().unwrap_or(0.0),
        r["tps_peak_250ms"].as_f64().unwrap_or(0.0),
    );
    println!(
        "latency ms (from {}): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l["from"].as_str().unwrap_or(""),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
    );
    let m = &r["mini_block_interval_ms"];
    if !m.is_null() {
        println!(
            "mini-block interval ms: p50 {:.2}  p99 {:.2}  max {:.2} ({} intervals)",
            m["p50"].as_f64().unwrap_or(0.0),
            m["p99"].as_f64().unwrap_or(0.0),
            m["max"].as_f64().unwrap_or(0.0),
            m["count"]
        );
    }
    println!(
        "blocks: {} (mean fill {:.2}%, max {} txs); node CPU per tx: {}; errors: {}",
        r["blocks"]["count"],
        r["blocks"]["fill_mean"].as_f64().unwrap_or(0.0) * 100.0,
        r["blocks"]["txs_max"],
        r["node_cpu_us_per_tx"].as_f64().map_or("n/a".into(), |v| format!("{v:.1} µs")),
        r["errors"],
    );
}

/// Writes `<stem>.json` and `<stem>.svg` (TPS over time, latency CDF) into `dir`.
pub fn write(dir: &Path, stem: &str, r: &Value) -> Result<(String, String), String> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?)
        .map_err(|e| format!("writing {}: {e}", json_path.display()))?;
    let svg_path = dir.join(format!("{stem}.svg"));
    let points = |key: &str| -> Vec<(f64, f64)> {
        r[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .collect()
    };
    let (tps, cdf) = (points("timeline_tps"), points("latency_cdf_ms"));
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(&svg_path, (1200, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let x_max = tps.iter().map(|p| p.0).fold(1.0, f64::max) + 0.25;
        let y_max = tps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("throughput (confirmed tx/s, 250 ms buckets)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc("seconds").y_desc("tx/s").draw()?;
        chart.draw_series(LineSeries::new(tps.iter().copied(), &BLUE))?;
        let l_max = cdf.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&right)
            .caption("latency CDF (submit → receipt)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..l_max, 0.0..1.0)?;
        chart.configure_mesh().x_desc("milliseconds").y_desc("share").draw()?;
        chart.draw_series(LineSeries::new(cdf.iter().copied(), &RED))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("drawing {}: {e}", svg_path.display()))?;
    Ok((json_path.display().to_string(), svg_path.display().to_string()))
}
