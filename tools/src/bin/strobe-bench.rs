//! `strobe-bench`: the load generator and benchmark harness. `run` measures one node; `compare`
//! runs the same workload against `strobe dev` and anvil in one go and prints the ratios.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};
use strobe_tools::{
    bench::{self, report, Driver, RunConfig, Transport, WorkloadSpec},
    client::await_rpc_url,
};

#[derive(Parser)]
#[command(
    name = "strobe-bench",
    about = "Load generator for strobe (and any Ethereum JSON-RPC node): TPS, latency, block fill",
    long_about = "Load generator for strobe and any Ethereum JSON-RPC node.\n\n\
Every transaction is signed before the clock starts. The set-up (funding the senders from the \
dev accounts of the standard mnemonic, deploying tokens and pools) is not timed. Open-loop \
latency is measured from each transaction's scheduled send time (no coordinated omission); \
closed-loop latency from its send. Results: a summary on stdout, a JSON document and an SVG \
chart (TPS over time, latency CDF) in --out."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a workload against one node.
    Run(RunArgs),
    /// Start `strobe dev` and anvil, run the same workload against both, print the ratios.
    Compare(CompareArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    /// eth_sendRawTransaction; receipts found by polling (batched, every 2 ms).
    Http,
    /// eth_sendRawTransactionSync: the answer is the receipt.
    HttpSync,
    /// strobe's binary protocol (raw transactions, receipts pushed back; strobe only).
    Binary,
    /// eth_sendRawTransactionSync over WebSocket, pipelined on each connection.
    Ws,
}

#[derive(Clone, Copy, ValueEnum)]
enum Arrival {
    /// Exponential inter-arrival times (a Poisson process).
    Poisson,
    /// Evenly spaced.
    Constant,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// transfers (ETH), erc20 (token transfers), swaps (Uniswap-v2-style pools), deploy
    /// (contract creations) or mix (40/30/20/10 of those).
    #[arg(long, default_value = "transfers")]
    workload: String,
    /// Target rate in transactions per second (open loop).
    #[arg(long, conflicts_with = "in_flight")]
    rate: Option<f64>,
    /// Arrival process of the open loop.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    arrival: Arrival,
    /// Transactions in flight (closed loop) instead of a rate.
    #[arg(long)]
    in_flight: Option<usize>,
    /// Length of the measured phase (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Distinct senders (funded during set-up).
    #[arg(long, default_value_t = 200)]
    senders: usize,
    /// Share (0..1) of transactions touching hot accounts (recipients, or the first pool).
    #[arg(long, default_value_t = 0.0)]
    contention: f64,
    /// Pools for swaps (contended swaps all use the first).
    #[arg(long, default_value_t = 4)]
    pools: usize,
    /// How transactions are sent.
    #[arg(long, value_enum, default_value_t = TransportArg::Http)]
    transport: TransportArg,
    /// Connections for the open loop (0: 8 for http, enough for the rate with http-sync).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Seed of the workload's random choices and arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most transactions a closed-loop run pre-signs.
    #[arg(long, default_value_t = 400_000)]
    max_txs: usize,
    /// Directory for the JSON result and the SVG chart.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    /// JSON-RPC URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc: String,
    /// The node's process id (for its CPU time per transaction).
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// The strobe binary (default: next to this one).
    #[arg(long)]
    strobe: Option<PathBuf>,
    /// Extra arguments for `strobe dev` (e.g. "--exec-threads 2").
    #[arg(long, default_value = "")]
    strobe_args: String,
    #[command(flatten)]
    load: LoadArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) =
        s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let v: f64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "" | "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("invalid unit in `{s}` (ms, s or m)")),
    };
    if secs <= 0.0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn config(rpc: String, pid: Option<u32>, a: &LoadArgs) -> Result<RunConfig, String> {
    if !bench::WORKLOADS.contains(&a.workload.as_str()) {
        return Err(format!("unknown workload `{}` (one of {:?})", a.workload, bench::WORKLOADS));
    }
    let driver = match (a.rate, a.in_flight) {
        (Some(rate), None) if rate > 0.0 => {
            Driver::Open { rate, poisson: matches!(a.arrival, Arrival::Poisson) }
        }
        (None, Some(n)) if n > 0 => Driver::Closed { in_flight: n },
        (None, None) => return Err("give --rate (open loop) or --in-flight (closed loop)".into()),
        _ => return Err("--rate and --in-flight must be positive".into()),
    };
    if !(0.0..=1.0).contains(&a.contention) {
        return Err("--contention is a share between 0 and 1".into());
    }
    Ok(RunConfig {
        rpc,
        spec: WorkloadSpec {
            name: a.workload.clone(),
            senders: a.senders.max(1),
            contention: a.contention,
            pools: a.pools.max(1),
        },
        driver,
        transport: match a.transport {
            TransportArg::Http => Transport::Http,
            TransportArg::HttpSync => Transport::HttpSync,
            TransportArg::Binary => Transport::Binary,
            TransportArg::Ws => Transport::Ws,
        },
        duration: a.duration,
        connections: a.connections,
        seed: a.seed,
        node_pid: pid,
        progress: !a.quiet,
        max_txs: a.max_txs,
    })
}

fn stem(node: &str, a: &LoadArgs) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{node}-{}-{ts}", a.workload)
}

fn run_and_report(cfg: &RunConfig, node: &str, a: &LoadArgs) -> Result<Value, String> {
    let r = bench::run(cfg)?;
    report::print_summary(&r);
    let (json, svg) = report::write(&a.out, &stem(node, a), &r)?;
    println!("wrote {json} and {svg}");
    Ok(r)
}

fn compare(args: CompareArgs) -> Result<(), String> {
    let strobe = args
        .strobe
        .unwrap_or_else(|| std::env::current_exe().expect("own path").with_file_name("strobe"));
    let mut child = Command::new(&strobe)
        .args(["dev", "--quiet", "--port", "0"])
        .args(args.strobe_args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", strobe.display()))?;
    let (url, _) = await_rpc_url(&mut child)?;
    let strobe_result =
        run_and_report(&config(url, Some(child.id()), &args.load)?, "strobe", &args.load);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let strobe_result = strobe_result?;
    let anvil = strobe_settlement::anvil::Anvil::spawn(&[]).map_err(|e| e.to_string())?;
    let anvil_result =
        run_and_report(&config(anvil.url(), Some(anvil.pid()), &args.load)?, "anvil", &args.load)?;
    drop(anvil);
    let row = |name: &str, path: &[&str], higher_is_better: bool| {
        let get =
            |r: &Value| path.iter().fold(r.clone(), |v, k| v[*k].clone()).as_f64().unwrap_or(0.0);
        let (s, a) = (get(&strobe_result), get(&anvil_result));
        let ratio = if higher_is_better { s / a.max(1e-9) } else { a / s.max(1e-9) };
        println!("{name:<28} {s:>12.2} {a:>12.2} {ratio:>9.2}x");
    };
    println!();
    println!("{:<28} {:>12} {:>12} {:>10}", "", "strobe", "anvil", "advantage");
    row("confirmed tx/s", &["tps"], true);
    row("latency p50 (ms)", &["latency_ms", "p50"], false);
    row("latency p99 (ms)", &["latency_ms", "p99"], false);
    row("latency max (ms)", &["latency_ms", "max"], false);
    row("node CPU per tx (µs)", &["node_cpu_us_per_tx"], false);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => config(a.rpc.clone(), a.pid, &a.load)
            .and_then(|cfg| run_and_report(&cfg, "node", &a.load).map(|_| ())),
        Cmd::Compare(a) => compare(a),
    };
    if let Err(e) = result {
        eprintln!("strobe-bench: {e}");
        std::process::exit(1);
    }
}
