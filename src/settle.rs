//! The binary's settlement wiring: flags, the poster over the running engine, a local anvil L1
//! (`--l1 anvil`), and the `verify` and `deploy-inbox` commands.

use crate::CliError;
use alloy_primitives::Address;
use clap::{Args, ValueEnum};
use std::{path::PathBuf, sync::Arc, time::Duration};
use strobe_engine::{verify::read_genesis, Engine};
use strobe_settlement::{
    anvil::{Anvil, ANVIL_KEY_0},
    batch::{BatchBlock, GenesisRecord},
    eigenda::MemStore,
    inbox, l1,
    poster::{DaMode, Poster, PosterConfig},
    BlockSource,
};

/// Largest calldata batch posted to a local anvil: at EIP-7623's 40 gas per byte, about 21M
/// gas, inside anvil's 30M block gas limit.
const ANVIL_CALLDATA_BATCH_BYTES: usize = 512 * 1024;

/// A local L1 strobe can start itself.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LocalL1 {
    /// anvil (Foundry), installed from npm if missing.
    Anvil,
}

/// Where batch data goes.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub(crate) enum DaChoice {
    /// In the L1 transaction's calldata.
    #[default]
    None,
    /// To an EigenDA proxy (`--da-url`); L1 gets the certificate.
    Eigenda,
}

/// Settlement flags of `dev` and `node`. Without `--l1` or `--l1-rpc` nothing is posted.
#[derive(Args, Clone, Debug)]
pub(crate) struct SettleArgs {
    /// Start a local L1 and post to it (deploys an inbox unless `--inbox` is given).
    #[arg(long, value_enum, conflicts_with = "l1_rpc")]
    l1: Option<LocalL1>,
    /// L1 JSON-RPC URL to post batches to.
    #[arg(long)]
    l1_rpc: Option<String>,
    /// The sequencer's L1 private key (hex; also read from STROBE_L1_KEY). Defaults to anvil's
    /// first dev key with `--l1 anvil`.
    #[arg(long, env = "STROBE_L1_KEY", hide_env_values = true)]
    l1_key: Option<String>,
    /// The inbox contract (see `strobe deploy-inbox`).
    #[arg(long)]
    inbox: Option<Address>,
    /// Where batch data goes: L1 calldata, or EigenDA via its proxy.
    #[arg(long, value_enum, default_value_t = DaChoice::None)]
    da: DaChoice,
    /// EigenDA proxy URL (with `--da eigenda`; a local in-memory one is started with `--l1 anvil`
    /// when omitted).
    #[arg(long)]
    da_url: Option<String>,
    /// Most EVM blocks per batch.
    #[arg(long, default_value_t = strobe_settlement::poster::DEFAULT_MAX_BATCH_BLOCKS)]
    batch_max_blocks: u64,
    /// Longest an unposted block waits for its batch to fill (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    batch_max_delay: Duration,
    /// Largest compressed batch in bytes (default: 120 KiB as calldata, which public mempools
    /// take; 512 KiB to a local anvil; 16 MiB on EigenDA).
    #[arg(long)]
    batch_max_bytes: Option<usize>,
    /// L1 blocks, the batch's own included, before a batch counts as posted.
    #[arg(long, default_value_t = 1)]
    l1_confirmations: u64,
    /// How long an L1 transaction may stay unmined before its fees are raised.
    #[arg(long, default_value = "12s", value_parser = crate::parse_duration)]
    l1_fee_bump_after: Duration,
    /// Highest L1 fee per gas the poster offers, in gwei.
    #[arg(long, default_value_t = 10_000)]
    l1_max_fee_gwei: u64,
}

/// What settlement runs beside the node; stopped in reverse order when dropped.
pub(crate) struct Settlement {
    poster: Poster,
    _memstore: Option<MemStore>,
    _anvil: Option<Anvil>,
}

impl Settlement {
    /// Stops the poster (a batch in flight is resumed by the next start).
    pub(crate) fn stop(mut self) {
        self.poster.stop();
    }
}

/// Sealed blocks of a running engine, for the poster.
struct EngineSource(Arc<Engine>);

impl BlockSource for EngineSource {
    fn genesis(&self) -> Result<GenesisRecord, String> {
        let (dir, options) = self.0.datadir().ok_or("the engine has no data directory")?;
        let (chain_id, state) = read_genesis(dir).map_err(|e| e.to_string())?;
        Ok(GenesisRecord { chain_id, options, state })
    }

    fn head(&self) -> u64 {
        self.0.view().head().header.number
    }

    fn block(&self, number: u64) -> Option<BatchBlock> {
        // Sealed blocks in the view are durable: they reach it only after the chain store.
        let view = self.0.view();
        view.sealed.get(number as usize).map(|b| BatchBlock::from_sealed(b))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Config(format!("async runtime: {e}")))
}

/// Deploys an inbox for `sequencer`, paid by `key`, and waits until it is mined.
fn deploy_inbox(
    l1_rpc: &str,
    key: alloy_signer_local::PrivateKeySigner,
    sequencer: Address,
) -> Result<Address, CliError> {
    let provider = l1::connect_with_wallet(l1_rpc, key).map_err(settle_error)?;
    runtime()?.block_on(inbox::deploy(&provider, sequencer)).map_err(settle_error)
}

fn settle_error(e: impl std::fmt::Display) -> CliError {
    CliError::Settlement(e.to_string())
}

/// Starts settlement for `engine` as the flags say (`None` when no L1 was named).
pub(crate) fn start(
    args: &SettleArgs,
    engine: &Arc<Engine>,
) -> Result<Option<Settlement>, CliError> {
    if args.l1.is_none() && args.l1_rpc.is_none() {
        if args.inbox.is_some() || matches!(args.da, DaChoice::Eigenda) {
            return Err(CliError::Config("--inbox and --da need --l1-rpc or --l1 anvil".into()));
        }
        return Ok(None);
    }
    if engine.datadir().is_none() {
        return Err(CliError::Config(
            "settlement needs the persistent store: drop --in-memory".into(),
        ));
    }
    let anvil = match args.l1 {
        Some(LocalL1::Anvil) => Some(Anvil::spawn(&[]).map_err(settle_error)?),
        None => None,
    };
    let l1_rpc = match (&anvil, &args.l1_rpc) {
        (Some(a), _) => a.url(),
        (None, Some(url)) => url.clone(),
        (None, None) => unreachable!("checked above"),
    };
    let key_hex = match (&args.l1_key, &anvil) {
        (Some(k), _) => k.clone(),
        (None, Some(_)) => ANVIL_KEY_0.to_string(),
        (None, None) => {
            return Err(CliError::Config("--l1-rpc needs --l1-key (or STROBE_L1_KEY)".into()))
        }
    };
    let key = l1::parse_key(&key_hex).map_err(settle_error)?;
    let inbox = match (args.inbox, &anvil) {
        (Some(a), _) => a,
        (None, Some(_)) => deploy_inbox(&l1_rpc, key.clone(), key.address())?,
        (None, None) => {
            return Err(CliError::Config(
                "--l1-rpc needs --inbox (deploy one with `strobe deploy-inbox`)".into(),
            ))
        }
    };
    let mut memstore = None;
    let da = match args.da {
        DaChoice::None => DaMode::Calldata,
        DaChoice::Eigenda => match (&args.da_url, &anvil) {
            (Some(url), _) => DaMode::EigenDa(url.clone()),
            (None, Some(_)) => {
                let store = MemStore::start("127.0.0.1:0").map_err(settle_error)?;
                let url = store.url();
                memstore = Some(store);
                DaMode::EigenDa(url)
            }
            (None, None) => {
                return Err(CliError::Config("--da eigenda needs --da-url".into()));
            }
        },
    };
    let mut config = PosterConfig::new(l1_rpc.clone(), key, inbox, da.clone());
    config.max_blocks = args.batch_max_blocks.max(1);
    config.max_delay = args.batch_max_delay;
    if let Some(bytes) = args.batch_max_bytes {
        config.max_bytes = bytes;
    } else if anvil.is_some() && da == DaMode::Calldata {
        // A local anvil takes transactions far past public mempools' 128 KiB limit.
        config.max_bytes = ANVIL_CALLDATA_BATCH_BYTES;
    }
    config.confirmations = args.l1_confirmations.max(1);
    config.bump_after = args.l1_fee_bump_after;
    config.max_fee_per_gas = args.l1_max_fee_gwei as u128 * 1_000_000_000;
    let sequencer = config.key.address();
    let poster =
        Poster::start(config, Arc::new(EngineSource(engine.clone()))).map_err(settle_error)?;
    let da_url = match &da {
        DaMode::Calldata => String::new(),
        DaMode::EigenDa(url) => format!(" --da-url {url}"),
    };
    println!("Settlement:      L1 {l1_rpc}, inbox {inbox}, sequencer {sequencer}, data {da:?}");
    println!("Verify with:     strobe verify --l1-rpc {l1_rpc} --inbox {inbox}{da_url}");
    Ok(Some(Settlement { poster, _memstore: memstore, _anvil: anvil }))
}

/// `strobe verify`: rebuild the chain from L1 and check it.
#[derive(Args, Clone, Debug)]
pub(crate) struct VerifyArgs {
    /// L1 JSON-RPC URL.
    #[arg(long)]
    l1_rpc: String,
    /// The inbox contract.
    #[arg(long)]
    inbox: Address,
    /// EigenDA proxy URL, for batches posted there.
    #[arg(long)]
    da_url: Option<String>,
    /// First L1 block to search for batches (the inbox's deployment block).
    #[arg(long, default_value_t = 0)]
    from_block: u64,
    /// Directory for the rebuilt state (default: a temporary one, removed afterwards).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

pub(crate) fn run_verify(args: VerifyArgs) -> Result<(), CliError> {
    let temporary;
    let scratch = match &args.scratch {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("strobe-l1-verify-")
                .tempdir()
                .map_err(|source| CliError::Datadir { path: std::env::temp_dir(), source })?;
            temporary.path().to_path_buf()
        }
    };
    let options = strobe_settlement::VerifyOptions {
        l1_rpc: args.l1_rpc,
        inbox: args.inbox,
        da_url: args.da_url,
        from_block: args.from_block,
    };
    let started = std::time::Instant::now();
    let report = strobe_settlement::verify(&options, &scratch)
        .map_err(|e| CliError::Verify(e.to_string()))?;
    println!(
        "verified {} batches from L1: {} blocks, {} transactions in {:.1?}; head block {} hash {} state root {}",
        report.batches,
        report.blocks,
        report.transactions,
        started.elapsed(),
        report.blocks.saturating_sub(1),
        report.head_hash,
        report.head_root
    );
    Ok(())
}

/// `strobe deploy-inbox`: deploy an inbox contract for a sequencer key.
#[derive(Args, Clone, Debug)]
pub(crate) struct DeployArgs {
    /// L1 JSON-RPC URL.
    #[arg(long)]
    l1_rpc: String,
    /// Key that pays for the deployment (hex; also read from STROBE_L1_KEY).
    #[arg(long, env = "STROBE_L1_KEY", hide_env_values = true)]
    l1_key: String,
    /// The sequencer address allowed to post (default: the deploying key's).
    #[arg(long)]
    sequencer: Option<Address>,
}

pub(crate) fn run_deploy(args: DeployArgs) -> Result<(), CliError> {
    let key = l1::parse_key(&args.l1_key).map_err(settle_error)?;
    let sequencer = args.sequencer.unwrap_or(key.address());
    let address = deploy_inbox(&args.l1_rpc, key, sequencer)?;
    println!("{address}");
    Ok(())
}
