//! The `strobe` binary: runs a dev chain or a persistent node, and inspects data directories.
//!
//! Threads: the main thread runs the network ring; the engine runs its sequencer thread; signal
//! handling only flips an atomic flag that both loops watch.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use alloy_primitives::{Address, U256};
use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;
use std::{
    net::TcpListener,
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use strobe_engine::{
    config::{ChainConfig, Genesis, GenesisAccount},
    storage::StoreOptions,
    Engine,
};

mod cores;
mod genesis;
mod settle;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// The standard test mnemonic (same accounts as anvil and hardhat).
const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";
/// Wei per ether.
const WEI_PER_ETH: u128 = 1_000_000_000_000_000_000;

#[derive(Parser)]
#[command(
    name = "strobe",
    version,
    about = "Real-time Ethereum L2 sequencer: 10 ms mini-blocks, 1 s EVM blocks, JSON-RPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local dev chain with prefunded accounts (in a temporary data directory unless
    /// `--datadir` is given).
    Dev(DevArgs),
    /// Run a persistent chain from a data directory (created from `--genesis` the first time;
    /// later starts resume at the same head, state root and nonces).
    Node(NodeArgs),
    /// Inspect a data directory.
    #[command(subcommand)]
    Db(DbCommand),
    /// Rebuild the chain from the batches on L1 (and EigenDA), re-execute every block from
    /// genesis and check every block hash and state root; exits non-zero at the first mismatch.
    Verify(settle::VerifyArgs),
    /// Deploy an inbox contract on L1 for a sequencer key and print its address.
    DeployInbox(settle::DeployArgs),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Print accounts, slots, file sizes, the last block and the state root (the node must be
    /// stopped: the data directory is locked while it runs).
    Stats {
        /// The data directory.
        #[arg(long)]
        datadir: PathBuf,
    },
    /// Re-execute every stored block from genesis into a fresh store (in a temporary directory)
    /// and check each block's receipts and state root; exits non-zero at the first mismatch.
    Verify {
        /// The data directory (of a stopped node).
        #[arg(long)]
        datadir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct NodeArgs {
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    settle: settle::SettleArgs,
}

#[derive(Args, Clone)]
struct DevArgs {
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    settle: settle::SettleArgs,
    /// Number of prefunded dev accounts derived from the mnemonic.
    #[arg(long, default_value_t = 10)]
    accounts: u32,
    /// Balance of each dev account, in ether.
    #[arg(long, default_value_t = 10_000)]
    balance: u64,
    /// Mnemonic the dev accounts are derived from (BIP-44 path m/44'/60'/0'/0/i).
    #[arg(long, default_value = DEV_MNEMONIC)]
    mnemonic: String,
    /// Keep the state in memory only (no data directory, no write-ahead log): nothing survives
    /// a restart.
    #[arg(long, conflicts_with = "datadir")]
    in_memory: bool,
    /// Don't print the account list.
    #[arg(long)]
    quiet: bool,
}

/// Flags shared by `dev` and `node`.
#[derive(Args, Clone)]
struct ChainArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// JSON-RPC port (0 picks a free one; the chosen port is printed).
    #[arg(long, default_value_t = 8545)]
    port: u16,
    /// EIP-155 chain id (default 31337, or the genesis file's `config.chainId`).
    #[arg(long)]
    chain_id: Option<u64>,
    /// Interval between mini-blocks (e.g. 10ms, 500us, 1s).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    mini_block_time: Duration,
    /// Interval between EVM blocks.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    block_time: Duration,
    /// Gas limit of each EVM block.
    #[arg(long, default_value_t = 1_000_000_000)]
    gas_limit: u64,
    /// Genesis file (geth style: `alloc`, optional `config.chainId`, `timestamp`, `extraData`).
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Data directory: state tables, write-ahead log and blocks (required for `node`).
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// log2 of the number of account buckets of a new state store (even; about two accounts per
    /// bucket is right). Ignored when the data directory exists.
    #[arg(long, default_value_t = 16)]
    account_buckets_log2: u32,
    /// log2 of the number of storage buckets of a new state store (even).
    #[arg(long, default_value_t = 18)]
    slot_buckets_log2: u32,
    /// Address that receives priority fees.
    #[arg(long, default_value_t = Address::ZERO)]
    beneficiary: Address,
    /// CPU to pin the sequencer thread to (default: the last CPU on machines with 4 or more).
    #[arg(long)]
    sequencer_core: Option<usize>,
    /// Block-STM worker threads executing each mini-block (default: all cores but two on
    /// machines with 4 or more, else 1 = sequential).
    #[arg(long)]
    exec_threads: Option<usize>,
    /// Threads that decode transactions and recover their senders off the network thread
    /// (0: on the network thread; default: a quarter of the CPUs, at least one).
    #[arg(long)]
    recovery_threads: Option<usize>,
    /// Smallest mini-block, in transactions, worth executing in parallel.
    #[arg(long, default_value_t = strobe_engine::parallel::MIN_PARALLEL_TXS)]
    parallel_min_txs: usize,
    /// CPUs per role, e.g. `net=0-1,recovery=2-3,seq=15,exec=4-14` (`commit=` names the
    /// sequencer thread, which commits). Unnamed roles keep the default layout, printed at start.
    #[arg(long)]
    cores: Option<String>,
    /// Network threads, each with its own event loop and listener (default: one per `net` CPU).
    #[arg(long)]
    net_threads: Option<usize>,
    /// Event loop: `auto` (io_uring, or epoll with a warning where the kernel refuses it),
    /// `uring` or `epoll`.
    #[arg(long, default_value = "auto")]
    net_backend: strobe_net::Backend,
    /// Serve Prometheus metrics on this port (same host; 0 picks a free one).
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Most open connections per network thread; more are answered 503.
    #[arg(long, default_value_t = strobe_net::session::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close idle connections after this long (WebSocket clients get pings meanwhile).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A request must arrive whole within this long (slowloris guard); otherwise 408.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Most bytes queued for one connection; a subscriber past it is disconnected (close 1008).
    #[arg(long, default_value_t = 16 << 20)]
    max_outbound_bytes: usize,
}

/// Parses `10ms`, `500us`, `2s`, `1m` or a bare number of milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "" | "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in `{s}` (use ns, us, ms, s or m)")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("duration `{s}` out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Errors reported to the operator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("settlement: {0}")]
    Settlement(String),
    #[error("could not derive dev account {index} from the mnemonic: {reason}")]
    Mnemonic { index: u32, reason: String },
    #[error("could not read genesis file {path}: {reason}")]
    Genesis { path: PathBuf, reason: String },
    #[error("could not create data directory {path}: {source}")]
    Datadir { path: PathBuf, source: std::io::Error },
    #[error("could not listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the engine failed to start: {0}")]
    Engine(#[from] strobe_engine::EngineError),
    #[error("the network server stopped: {0}")]
    Server(std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the node stopped: {0}")]
    Fatal(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("data directory: {0}")]
    Store(#[from] strobe_engine::storage::StoreError),
    #[error("data directory: {0}")]
    Chain(#[from] strobe_engine::storage::ChainStoreError),
}

/// Exit status after an I/O error on a memory-mapped state file (EX_IOERR).
const EXIT_MAPPED_IO_ERROR: i32 = 74;

/// A read or write of a memory-mapped page whose backing I/O fails raises SIGBUS; there is no
/// error value to return. Stop at once with a plain message: everything acknowledged is in the
/// write-ahead log, and the next start rolls back or replays whatever was in flight.
extern "C" fn on_sigbus(_: libc::c_int) {
    const MESSAGE: &[u8] = b"strobe: I/O error on a memory-mapped state file (SIGBUS); stopping. \
Acknowledged transactions are in the write-ahead log; fix the disk and restart with the same \
--datadir to recover.\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(EXIT_MAPPED_IO_ERROR);
    }
}

fn install_sigbus_handler() {
    // SAFETY: installs a handler that only calls async-signal-safe functions; done once, before
    // any other thread starts.
    unsafe {
        libc::signal(libc::SIGBUS, on_sigbus as *const () as libc::sighandler_t);
    }
}

fn main() -> ExitCode {
    install_sigbus_handler();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STROBE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => run_dev(args),
        Command::Node(args) => run_node(args),
        Command::Db(DbCommand::Stats { datadir }) => db_stats(&datadir),
        Command::Db(DbCommand::Verify { datadir }) => db_verify(&datadir),
        Command::Verify(args) => settle::run_verify(args),
        Command::DeployInbox(args) => settle::run_deploy(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_dev(args: DevArgs) -> Result<(), CliError> {
    let (config, mut genesis) = chain_setup(&args.chain)?;
    let keys = dev_keys(&args.mnemonic, args.accounts)?;
    let balance = U256::from(args.balance) * U256::from(WEI_PER_ETH);
    for (address, _) in &keys {
        genesis.alloc.push((*address, GenesisAccount { balance, ..Default::default() }));
    }
    // Without --datadir the chain still runs on the persistent store (so dev exercises the same
    // path as production), in a directory removed at exit.
    let mut _temporary = None;
    let datadir = match (&args.chain.datadir, args.in_memory) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => {
            let dir = tempfile::Builder::new()
                .prefix("strobe-dev-")
                .tempdir()
                .map_err(|source| CliError::Datadir { path: std::env::temp_dir(), source })?;
            let path = dir.path().to_path_buf();
            _temporary = Some(dir);
            Some(path)
        }
    };
    let listener = bind(&args.chain)?;
    let engine = start_engine(&config, &genesis, datadir.as_deref(), &args.chain)?;
    if !args.quiet {
        print_banner(&keys, args.balance, &config);
    }
    let settlement = settle::start(&args.settle, &engine)?;
    let net = net_config(&args.chain)?;
    serve(listener, engine, keys.iter().map(|(a, _)| *a).collect(), &args.chain, net, settlement)
}

fn run_node(args: NodeArgs) -> Result<(), CliError> {
    let Some(datadir) = args.chain.datadir.clone() else {
        return Err(CliError::Config("`strobe node` needs --datadir".into()));
    };
    if args.chain.genesis.is_none() && !datadir.join("chain").exists() {
        return Err(CliError::Config(format!(
            "{} holds no chain yet: give --genesis to create one",
            datadir.display()
        )));
    }
    let (config, genesis) = chain_setup(&args.chain)?;
    let listener = bind(&args.chain)?;
    let engine = start_engine(&config, &genesis, Some(&datadir), &args.chain)?;
    let head = engine.view().head().clone();
    println!(
        "strobe v{} — node, data directory {}, head block {} ({}), state root {}",
        env!("CARGO_PKG_VERSION"),
        datadir.display(),
        head.header.number,
        head.hash,
        head.header.state_root
    );
    let settlement = settle::start(&args.settle, &engine)?;
    let net = net_config(&args.chain)?;
    serve(listener, engine, Vec::new(), &args.chain, net, settlement)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The core layout: the defaults for this machine, overridden by `--cores`.
fn core_map(args: &ChainArgs) -> Result<cores::CoreMap, CliError> {
    let defaults = cores::CoreMap::default_for(cpus());
    match &args.cores {
        None => Ok(defaults),
        Some(spec) => cores::CoreMap::parse(spec, defaults, cpus())
            .map_err(|e| CliError::Config(format!("--cores: {e}"))),
    }
}

fn net_config(args: &ChainArgs) -> Result<strobe_net::NetConfig, CliError> {
    let map = core_map(args)?;
    let threads = args.net_threads.unwrap_or(map.net.len()).max(1);
    let recovery_threads = args.recovery_threads.unwrap_or(if map.recovery.is_empty() {
        default_recovery_threads()
    } else {
        map.recovery.len()
    });
    if args.max_connections == 0 {
        return Err(CliError::Config("--max-connections must be at least 1".into()));
    }
    if args.max_outbound_bytes < 64 * 1024 {
        return Err(CliError::Config("--max-outbound-bytes must be at least 65536".into()));
    }
    Ok(strobe_net::NetConfig {
        threads,
        cores: map.net.clone(),
        backend: args.net_backend,
        limits: strobe_net::session::Limits {
            max_connections: args.max_connections,
            idle_timeout: args.idle_timeout,
            request_timeout: args.request_timeout,
            max_outbound_bytes: args.max_outbound_bytes,
            ..Default::default()
        },
        recovery_threads,
        recovery_cores: map.recovery.clone(),
    })
}

/// The chain configuration and genesis from the shared flags.
fn chain_setup(args: &ChainArgs) -> Result<(ChainConfig, Genesis), CliError> {
    if args.mini_block_time > args.block_time {
        return Err(CliError::Config("--mini-block-time must not exceed --block-time".into()));
    }
    if args.gas_limit < 21_000 {
        return Err(CliError::Config("--gas-limit must be at least 21000".into()));
    }
    let map = core_map(args)?;
    let mut genesis = Genesis::default();
    let mut chain_id = args.chain_id;
    if let Some(path) = &args.genesis {
        let file = genesis::load(path)
            .map_err(|reason| CliError::Genesis { path: path.clone(), reason })?;
        chain_id = chain_id.or(file.chain_id);
        genesis = file.genesis;
    }
    let config = ChainConfig {
        chain_id: chain_id.unwrap_or(31337),
        mini_block_time: args.mini_block_time,
        block_time: args.block_time,
        block_gas_limit: args.gas_limit,
        mini_block_gas_limit: (args.gas_limit / 10).max(30_000_000).min(args.gas_limit),
        beneficiary: args.beneficiary,
        sequencer_core: args.sequencer_core.or(map.seq),
        exec_threads: args
            .exec_threads
            .unwrap_or(if map.exec.is_empty() { default_exec_threads() } else { map.exec.len() })
            .max(1),
        exec_cores: map.exec.clone(),
        parallel_min_txs: args.parallel_min_txs.max(1),
        ..ChainConfig::default()
    };
    Ok((config, genesis))
}

fn bind(args: &ChainArgs) -> Result<TcpListener, CliError> {
    let addr = format!("{}:{}", args.host, args.port);
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .map_err(|source| CliError::Bind { addr: addr.clone(), source })?
        .next()
        .ok_or_else(|| CliError::Bind {
            addr: addr.clone(),
            source: std::io::Error::other("the address resolves to nothing"),
        })?;
    strobe_net::bind(resolved).map_err(|source| CliError::Bind { addr, source })
}

fn start_engine(
    config: &ChainConfig,
    genesis: &Genesis,
    datadir: Option<&std::path::Path>,
    args: &ChainArgs,
) -> Result<Arc<Engine>, CliError> {
    let engine = match datadir {
        None => Engine::start(
            config.clone(),
            genesis,
            Box::new(strobe_engine::storage::MemoryStore::new()),
        )?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|source| CliError::Datadir { path: dir.to_path_buf(), source })?;
            let options = StoreOptions {
                accounts_log2_buckets: args.account_buckets_log2,
                slots_log2_buckets: args.slot_buckets_log2,
            };
            Engine::open(config.clone(), genesis, dir, options)?
        }
    };
    Ok(Arc::new(engine))
}

/// Serves JSON-RPC until SIGINT/SIGTERM or until the engine stops on a storage failure.
fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    accounts: Vec<Address>,
    args: &ChainArgs,
    net: strobe_net::NetConfig,
    settlement: Option<settle::Settlement>,
) -> Result<(), CliError> {
    let local = listener
        .local_addr()
        .map_err(|source| CliError::Bind { addr: "listener".into(), source })?;
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(strobe_net::metrics::Metrics::default());
    let metrics_thread = match args.metrics_port {
        None => None,
        Some(port) => {
            let addr = format!("{}:{port}", args.host);
            let l = TcpListener::bind(&addr).map_err(|source| CliError::Bind { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| CliError::Bind { addr: "metrics".into(), source })?;
            println!("Metrics: http://{local}/metrics");
            Some(
                strobe_net::metrics::serve_metrics(
                    l,
                    metrics.clone(),
                    engine.clone(),
                    stop.clone(),
                )
                .map_err(CliError::Server)?,
            )
        }
    };
    println!("Listening on {local}");
    println!("WebSocket URL: ws://{local}");
    println!("Binary protocol: tcp://{local} (docs/binary-protocol.md)");
    println!(
        "Cores: {} ({} network threads, {} recovery threads, {:?} event loop)",
        core_map(args)?,
        net.threads,
        net.recovery_threads,
        net.backend
    );
    // Last: tests and scripts wait for this line.
    println!("RPC URL: http://{local}");
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::Config(format!("could not install signal handler: {e}")))?;
    }
    let watchdog = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if engine.fatal_error().is_some() {
                    stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let served = strobe_net::serve(listener, engine.clone(), accounts, &net, metrics, &stop);
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    if let Some(s) = settlement {
        s.stop();
    }
    let fatal = engine.fatal_error();
    match Arc::try_unwrap(engine) {
        Ok(mut engine) => engine.shutdown(),
        Err(_) => tracing::warn!("engine still referenced at shutdown"),
    }
    if let Some(reason) = fatal {
        return Err(CliError::Fatal(reason));
    }
    served.map_err(CliError::Server)?;
    eprintln!("strobe: stopped");
    Ok(())
}

fn db_stats(datadir: &std::path::Path) -> Result<(), CliError> {
    use strobe_engine::storage::{ChainStore, ChainStoreOptions, PersistentStore};
    if !datadir.join("state").join("HEADER").exists() {
        return Err(CliError::Config(format!(
            "{} is not a strobe data directory",
            datadir.display()
        )));
    }
    let store = PersistentStore::open(&datadir.join("state"), StoreOptions::default())?;
    let chain = ChainStore::open(&datadir.join("chain"), ChainStoreOptions::default())?;
    let stats = store.stats();
    let head = match chain.len().checked_sub(1) {
        Some(n) => chain
            .block_bytes(n)?
            .and_then(|b| strobe_engine::record::decode_block(&b).ok())
            .map(|b| format!("{} ({})", b.header.number, b.hash))
            .unwrap_or_else(|| "unreadable".into()),
        None => "none".into(),
    };
    let wal_bytes: u64 = std::fs::read_dir(datadir.join("wal"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    println!("data directory   {}", datadir.display());
    println!("accounts         {}", stats.accounts);
    println!("storage slots    {}", stats.slots);
    println!("contract codes   {}", stats.codes);
    println!(
        "buckets          2^{} accounts, 2^{} slots",
        stats.log2_buckets.0, stats.log2_buckets.1
    );
    println!("account files    {}", human_bytes(stats.accounts_bytes));
    println!("storage files    {}", human_bytes(stats.slots_bytes));
    println!("code file        {}", human_bytes(stats.code_bytes));
    println!("write-ahead log  {}", human_bytes(wal_bytes));
    println!("block store      {}", human_bytes(chain.size_bytes()));
    println!("last block       {head}");
    println!("checkpoint       block {}, next mini-block {}", stats.block, stats.next_seq);
    println!("state root       {}", stats.root);
    Ok(())
}

fn db_verify(datadir: &std::path::Path) -> Result<(), CliError> {
    let scratch = tempfile::Builder::new()
        .prefix("strobe-verify-")
        .tempdir()
        .map_err(|source| CliError::Datadir { path: std::env::temp_dir(), source })?;
    let started = std::time::Instant::now();
    let report = strobe_engine::verify::verify_datadir(datadir, scratch.path())
        .map_err(|e| CliError::Verify(e.to_string()))?;
    println!(
        "verified {} blocks and {} transactions in {:.1?}: head state root {} (data directory checkpoint: block {}, root {})",
        report.blocks,
        report.transactions,
        started.elapsed(),
        report.head_root,
        report.checkpoint.0,
        report.checkpoint.1
    );
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[unit])
    }
}

/// Sender recovery (~50–80 µs per transaction) is the network path's largest cost: a quarter of
/// the cores, and at least one thread so the network thread never does it itself.
fn default_recovery_threads() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / 4).max(1)
}

/// Execution gets every core except the sequencer's and the network thread's; with fewer than four
/// cores there is nothing left to run workers on, and mini-blocks execute sequentially.
fn default_exec_threads() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cores >= 4 {
        cores - 2
    } else {
        1
    }
}

fn dev_keys(mnemonic: &str, count: u32) -> Result<Vec<(Address, String)>, CliError> {
    (0..count)
        .map(|index| {
            let signer = alloy_signer_local::MnemonicBuilder::<
                alloy_signer_local::coins_bip39::English,
            >::default()
            .phrase(mnemonic)
            .index(index)
            .and_then(|b| b.build())
            .map_err(|e| CliError::Mnemonic { index, reason: e.to_string() })?;
            Ok((signer.address(), format!("{}", signer.to_bytes())))
        })
        .collect()
}

fn print_banner(keys: &[(Address, String)], balance_eth: u64, config: &ChainConfig) {
    println!("strobe v{} — dev chain", env!("CARGO_PKG_VERSION"));
    println!();
    println!("Available Accounts");
    println!("==================");
    for (i, (a, _)) in keys.iter().enumerate() {
        println!("({i}) {a} ({balance_eth} ETH)");
    }
    println!();
    println!("Private Keys");
    println!("==================");
    for (i, (_, k)) in keys.iter().enumerate() {
        println!("({i}) {k}");
    }
    println!();
    println!("Chain ID:        {}", config.chain_id);
    println!("Mini-block time: {:?}", config.mini_block_time);
    println!("Block time:      {:?}", config.block_time);
    println!("Block gas limit: {}", config.block_gas_limit);
    println!();
}
