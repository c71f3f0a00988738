//! Settlement end to end, against a real L1 dev node (anvil, from npm): the poster posts every
//! sealed block to the inbox (as calldata and through the EigenDA proxy API), survives SIGKILL
//! on every side of an L1 send and L1 stalls that force fee bumps, and the verifier rebuilds the
//! chain from L1 alone — and catches tampered batches, which the contract cannot.

mod common;

use alloy::{
    network::EthereumWallet,
    primitives::{keccak256, Address, Bytes, TxKind, B256, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use common::{compile_solidity, DevNode};
use serde_json::json;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use strobe_engine::{
    record::decode_block,
    storage::{ChainStore, ChainStoreOptions, PersistentStore, StoreOptions},
    verify::read_genesis,
};
use strobe_settlement::{
    anvil::{Anvil, ANVIL_KEY_0, ANVIL_KEY_1},
    batch::{Batch, BatchBlock, GenesisRecord},
    eigenda::{DaClient, MemStore},
    inbox::{self, StrobeInbox, DATA_CALLDATA, DATA_EIGENDA},
    l1,
};
use strobe_tools::client::{dev_signer, signed_hex, Client, CHAIN_ID};

/// Runtime of the test contract: emits LOG1(42, topic 1) and increments slot 1 on every call.
const COUNTER_RUNTIME: [u8; 22] = [
    0x60, 0x2a, 0x60, 0x00, 0x52, 0x60, 0x01, 0x60, 0x20, 0x60, 0x00, 0xa1, 0x60, 0x01, 0x54, 0x60,
    0x01, 0x01, 0x60, 0x01, 0x55, 0x00,
];

fn counter_init_code() -> Vec<u8> {
    let mut code = vec![0x60, 0x16, 0x60, 0x0c, 0x60, 0x00, 0x39, 0x60, 0x16, 0x60, 0x00, 0xf3];
    code.extend_from_slice(&COUNTER_RUNTIME);
    code
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn wallet(url: &str, key: &str) -> DynProvider {
    let signer: PrivateKeySigner = key.parse().unwrap();
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url.parse().unwrap())
        .erased()
}

fn sequencer() -> Address {
    ANVIL_KEY_0.parse::<PrivateKeySigner>().unwrap().address()
}

fn deploy_inbox(l1_url: &str) -> Address {
    runtime().block_on(inbox::deploy(&wallet(l1_url, ANVIL_KEY_0), sequencer())).unwrap()
}

fn l1_rpc(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let out = common::rpc(url, method, params);
    assert!(out.get("error").is_none(), "{method}: {out}");
    out["result"].clone()
}

/// Starts `strobe node` on `datadir` posting to `inbox`, with 300 ms blocks and batches closed
/// after at most 1 s. `env` is added to the child's environment.
fn start_node(
    datadir: &Path,
    l1_url: &str,
    inbox: Address,
    extra: &[&str],
    env: &[(&str, &str)],
) -> DevNode {
    let genesis = datadir.parent().unwrap().join("genesis.json");
    if !genesis.exists() {
        let alloc: serde_json::Map<String, serde_json::Value> = (0..4)
            .map(|i| {
                (
                    format!("{}", dev_signer(i).address()),
                    json!({"balance": "0x52b7d2dcc80cd2e4000000"}),
                )
            })
            .collect();
        std::fs::write(
            &genesis,
            json!({"config": {"chainId": CHAIN_ID}, "alloc": alloc, "timestamp": "0x1"})
                .to_string(),
        )
        .unwrap();
    }
    let inbox = inbox.to_string();
    let mut args = vec![
        "node",
        "--port",
        "0",
        "--datadir",
        datadir.to_str().unwrap(),
        "--genesis",
        genesis.to_str().unwrap(),
        "--block-time",
        "300ms",
        "--account-buckets-log2",
        "6",
        "--slot-buckets-log2",
        "6",
        "--l1-rpc",
        l1_url,
        "--l1-key",
        ANVIL_KEY_0,
        "--inbox",
        &inbox,
        "--batch-max-delay",
        "1s",
        "--batch-max-blocks",
        "8",
    ];
    args.extend_from_slice(extra);
    DevNode::spawn_with_env(&args, env)
}

/// Sends `rounds` rounds of traffic: value transfers from three accounts, a deployment of the
/// logging counter, and calls to it (logs and storage writes), waiting for every receipt.
fn traffic(url: &str, rounds: u32) -> u64 {
    try_traffic(url, rounds).unwrap()
}

/// [`traffic`], reporting a node that went away as an error.
fn try_traffic(url: &str, rounds: u32) -> Result<u64, String> {
    let err = |e: std::io::Error| e.to_string();
    let mut client = Client::connect(url).map_err(err)?;
    let mut sent = 0;
    for _ in 0..rounds {
        let mut hashes = Vec::new();
        for i in 1..4u32 {
            let s = dev_signer(i);
            let nonce = client.nonce(s.address(), "pending").map_err(err)?;
            let counter = Address::create(&s.address(), 0);
            let (to, input, gas) = if nonce == 0 {
                (TxKind::Create, counter_init_code(), 200_000)
            } else if nonce % 2 == 0 {
                (TxKind::Call(counter), Vec::new(), 100_000)
            } else {
                (TxKind::Call(Address::with_last_byte(0x40 + i as u8)), Vec::new(), 21_000)
            };
            let tx = alloy::consensus::TxEip1559 {
                chain_id: CHAIN_ID,
                nonce,
                gas_limit: gas,
                max_fee_per_gas: 50_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
                to,
                value: U256::from(1000 + nonce),
                access_list: Default::default(),
                input: input.into(),
            };
            let out =
                client.rpc("eth_sendRawTransaction", json!([signed_hex(&s, tx)])).map_err(err)?;
            let hash = out["result"].as_str().ok_or_else(|| format!("send: {out}"))?;
            hashes.push(hash.to_string());
        }
        for h in hashes {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = client.rpc("eth_getTransactionReceipt", json!([h])).map_err(err)?;
                if !r["result"].is_null() {
                    assert_eq!(r["result"]["status"], "0x1", "{r}");
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("no receipt for {h}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sent += 1;
        }
    }
    Ok(sent)
}

fn head(url: &str) -> u64 {
    let out = common::rpc(url, "eth_blockNumber", json!([]));
    u64::from_str_radix(out["result"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Waits until the inbox holds every block up to `block`.
fn wait_posted(l1_url: &str, inbox: Address, block: u64, within: Duration) {
    let provider = l1::connect(l1_url).unwrap();
    let deadline = Instant::now() + within;
    loop {
        let (_, next) = runtime().block_on(inbox::next_position(&provider, inbox)).unwrap();
        if next > block {
            return;
        }
        assert!(Instant::now() < deadline, "block {block} not posted (inbox at {next})");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every batch on L1: contiguous, each index posted exactly once (by event count).
fn check_batches(l1_url: &str, inbox: Address) -> Vec<StrobeInbox::Batch> {
    let provider = l1::connect(l1_url).unwrap();
    runtime().block_on(async {
        let c = StrobeInbox::new(inbox, &provider);
        let count = c.nextIndex().call().await.unwrap();
        let logs = provider
            .get_logs(
                &alloy::rpc::types::Filter::new()
                    .address(inbox)
                    .event_signature(StrobeInbox::BatchPosted::SIGNATURE_HASH)
                    .from_block(0),
            )
            .await
            .unwrap();
        let indexes: Vec<u64> = logs
            .iter()
            .map(|l| StrobeInbox::BatchPosted::decode_log_data(l.data()).unwrap().index)
            .collect();
        assert_eq!(indexes, (0..count).collect::<Vec<_>>(), "one event per index, in order");
        let mut batches = Vec::new();
        let mut next = 0;
        for i in 0..count {
            let b = c.batch(i).call().await.unwrap();
            assert_eq!(b.firstBlock, next, "batch {i} starts where {} ended", i.saturating_sub(1));
            assert!(b.lastBlock >= b.firstBlock);
            next = b.lastBlock + 1;
            batches.push(b);
        }
        batches
    })
}

/// Runs `strobe verify`; returns (success, combined output).
fn strobe_verify(l1_url: &str, inbox: Address, da_url: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strobe"));
    cmd.args(["verify", "--l1-rpc", l1_url, "--inbox", &inbox.to_string()]);
    if let Some(u) = da_url {
        cmd.args(["--da-url", u]);
    }
    let out = cmd.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_block_reaches_l1_and_verifies_with_calldata_and_eigenda() {
    for da in ["none", "eigenda"] {
        let dir = tempfile::tempdir().unwrap();
        let anvil = Anvil::spawn(&[]).unwrap();
        let memstore = MemStore::start("127.0.0.1:0").unwrap();
        let inbox = deploy_inbox(&anvil.url());
        let da_url = memstore.url();
        let mut extra = vec!["--da", da];
        if da == "eigenda" {
            extra.extend_from_slice(&["--da-url", &da_url]);
        }
        let node = start_node(&dir.path().join("data"), &anvil.url(), inbox, &extra, &[]);
        // Two waves, each posted before the next starts: at least two batches.
        let mut sent = 0;
        for _ in 0..2 {
            sent += traffic(&node.url, 6);
            let last = head(&node.url) + 1;
            wait_posted(&anvil.url(), inbox, last, Duration::from_secs(30));
        }
        let batches = check_batches(&anvil.url(), inbox);
        assert!(batches.len() >= 2, "{da}: {} batches", batches.len());
        let kind = if da == "none" { DATA_CALLDATA } else { DATA_EIGENDA };
        assert!(batches.iter().all(|b| b.dataKind == kind), "{da}: data kind");
        if da == "eigenda" {
            assert!(memstore.len() >= batches.len(), "every batch's data went to the DA layer");
        }
        let (ok, out) =
            strobe_verify(&anvil.url(), inbox, (da == "eigenda").then_some(da_url.as_str()));
        assert!(ok, "{da}: {out}");
        let txs: u64 =
            out.split(" transactions").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
        assert!(txs >= sent, "{da}: verified {txs} of {sent} transactions: {out}");
        if da == "eigenda" {
            let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
            assert!(!ok && out.contains("--da-url"), "{out}");
        }
        drop(node);
    }
}

#[test]
fn dev_chain_with_local_anvil_and_eigenda_posts_and_verifies() {
    // `strobe dev --l1 anvil --da eigenda`: strobe starts anvil, deploys the inbox, starts an
    // in-memory EigenDA proxy and prints the command that verifies the chain.
    let node = DevNode::start(&["--l1", "anvil", "--da", "eigenda", "--batch-max-delay", "1s"]);
    let verify_line = node
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("Verify with:"))
        .unwrap_or_else(|| panic!("no verify command in {:?}", node.banner))
        .trim()
        .to_string();
    let args: Vec<&str> = verify_line.split_whitespace().skip(1).collect();
    let l1_url = args[args.iter().position(|a| *a == "--l1-rpc").unwrap() + 1].to_string();
    let inbox: Address =
        args[args.iter().position(|a| *a == "--inbox").unwrap() + 1].parse().unwrap();
    assert!(args.contains(&"--da-url"), "{verify_line}");
    let sent = traffic(&node.url, 3);
    wait_posted(&l1_url, inbox, head(&node.url) + 1, Duration::from_secs(30));
    let out = Command::new(env!("CARGO_BIN_EXE_strobe")).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{sent} transactions")), "{text}");
    // Killed outright, strobe takes its anvil with it (PR_SET_PDEATHSIG).
    drop(node);
    let addr = l1_url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "anvil outlived the strobe that started it");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn poster_survives_sigkill_around_l1_sends_and_bumps_fees_when_l1_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let anvil = Anvil::spawn(&[]).unwrap();
    let inbox = deploy_inbox(&anvil.url());
    let seed = std::env::var("STROBE_SETTLEMENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    eprintln!("settlement crash seed {seed} (STROBE_SETTLEMENT_SEED to repeat)");
    let mut rng = seed | 1;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // The poster kills its own process exactly before, right after, and after the receipt of
    // an L1 send (each on a random occurrence), then twice at random moments from outside.
    let points = ["before-send", "after-send", "after-receipt", "random", "random"];
    for point in points {
        let nth = (1 + next(2)).to_string();
        let spec = format!("{point}:{nth}");
        let env: Vec<(&str, &str)> =
            if point == "random" { vec![] } else { vec![("STROBE_POSTER_CRASH", &spec)] };
        let mut node = start_node(&data, &anvil.url(), inbox, &[], &env);
        let started = Instant::now();
        if point == "random" {
            traffic(&node.url, 2);
            std::thread::sleep(Duration::from_millis(next(2500)));
            let _ = node.child.kill();
        } else {
            // Keep the chain busy until the poster pulls the trigger.
            while node.child.try_wait().unwrap().is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{spec}: the poster never reached its crash point"
                );
                let _ = try_traffic(&node.url, 1);
            }
        }
        let status = node.child.wait().unwrap();
        eprintln!("{spec}: node ended with {status} after {:.1?}", started.elapsed());
        check_batches(&anvil.url(), inbox);
    }
    // L1 stalls: with mining off, a batch transaction sent just before a crash sits in anvil's
    // pool; the restarted poster must replace it (same nonce, higher fees), and keep raising
    // fees while nothing is mined; once mining resumes exactly one copy lands.
    l1_rpc(&anvil.url(), "evm_setAutomine", json!([false]));
    let tip_of_pending = || -> Option<u128> {
        let pool = l1_rpc(&anvil.url(), "txpool_content", json!([]));
        let from = pool["pending"]
            .as_object()?
            .iter()
            .find(|(k, _)| k.parse::<Address>().ok() == Some(sequencer()))?
            .1
            .clone();
        let tx = from.as_object()?.values().next()?.clone();
        u128::from_str_radix(tx["maxPriorityFeePerGas"].as_str()?.trim_start_matches("0x"), 16).ok()
    };
    let mut node =
        start_node(&data, &anvil.url(), inbox, &[], &[("STROBE_POSTER_CRASH", "after-send:1")]);
    let started = Instant::now();
    while node.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the poster never sent to the stalled L1"
        );
        let _ = try_traffic(&node.url, 1);
    }
    drop(node);
    let first_tip = tip_of_pending().expect("the crashed poster's transaction waits in the pool");
    let node = start_node(&data, &anvil.url(), inbox, &["--l1-fee-bump-after", "700ms"], &[]);
    traffic(&node.url, 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tip =
            tip_of_pending().expect("the batch transaction stays pending while mining is off");
        if tip > first_tip + first_tip / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "fees were not bumped: tip {tip} vs first {first_tip}");
        std::thread::sleep(Duration::from_millis(200));
    }
    l1_rpc(&anvil.url(), "evm_setAutomine", json!([true]));
    l1_rpc(&anvil.url(), "evm_mine", json!([]));
    let last = head(&node.url);
    wait_posted(&anvil.url(), inbox, last, Duration::from_secs(60));
    let batches = check_batches(&anvil.url(), inbox);
    drop(node);
    assert!(batches.len() >= 4, "{} batches", batches.len());
    let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
    assert!(ok, "{out}");
}

/// The stopped node's blocks and genesis, as the poster would post them.
fn posted_form(datadir: &Path) -> (GenesisRecord, Vec<BatchBlock>) {
    let (chain_id, state) = read_genesis(datadir).unwrap();
    let stats =
        PersistentStore::open(&datadir.join("state"), StoreOptions::default()).unwrap().stats();
    let options = StoreOptions {
        accounts_log2_buckets: stats.log2_buckets.0,
        slots_log2_buckets: stats.log2_buckets.1,
    };
    let chain = ChainStore::open(&datadir.join("chain"), ChainStoreOptions::default()).unwrap();
    let blocks = (0..chain.len())
        .map(|n| {
            BatchBlock::from_sealed(&decode_block(&chain.block_bytes(n).unwrap().unwrap()).unwrap())
        })
        .collect();
    (GenesisRecord { chain_id, options, state }, blocks)
}

/// Posts `batch` as batch `index` from `key`, with the given root (default: the last header's).
/// Each post gets a fresh provider: alloy's nonce filler keeps counting after a refused send.
async fn post(
    (url, key): (&str, &str),
    inbox: Address,
    index: u64,
    batch: &Batch,
    root: Option<B256>,
    da: Option<&DaClient>,
) -> Result<(), String> {
    let data = batch.compress();
    let last = batch.blocks.last().unwrap();
    let (kind, payload) = match da {
        None => (DATA_CALLDATA, data.clone()),
        Some(da) => (DATA_EIGENDA, da.put(&data).await.unwrap()),
    };
    let provider = wallet(url, key);
    let contract = StrobeInbox::new(inbox, &provider);
    let call = contract.postBatch(
        index,
        batch.first_block(),
        batch.last_block(),
        last.header.hash_slow(),
        root.unwrap_or(last.header.state_root),
        kind,
        keccak256(&data),
        Bytes::from(payload),
    );
    match call.send().await {
        Ok(pending) => {
            let r = pending.get_receipt().await.map_err(|e| e.to_string())?;
            if r.status() {
                Ok(())
            } else {
                Err("reverted".into())
            }
        }
        Err(e) => Err(e
            .as_revert_data()
            .and_then(|d| inbox::decode_revert(&d))
            .unwrap_or_else(|| e.to_string())),
    }
}

/// A chain of a few blocks with traffic, made by a node without a poster, then stopped.
fn sample_chain(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let node = DevNode::spawn(&[
        "dev",
        "--quiet",
        "--port",
        "0",
        "--datadir",
        data.to_str().unwrap(),
        "--block-time",
        "200ms",
        "--account-buckets-log2",
        "6",
        "--slot-buckets-log2",
        "6",
    ]);
    traffic(&node.url, 4);
    let target = (head(&node.url) + 1).max(4);
    while head(&node.url) < target {
        std::thread::sleep(Duration::from_millis(50));
    }
    node.stop_with(15);
    data
}

#[test]
fn inbox_rejects_strangers_gaps_and_repeats_and_the_verifier_flags_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_chain(dir.path());
    let (genesis, blocks) = posted_form(&data);
    assert!(blocks.len() >= 4 && blocks.iter().any(|b| !b.txs.is_empty()));
    let tampered_block = blocks.iter().position(|b| !b.txs.is_empty()).unwrap() as u64;
    let honest = |range: std::ops::RangeInclusive<usize>| Batch {
        genesis: (*range.start() == 0).then(|| genesis.clone()),
        blocks: blocks[range].to_vec(),
    };
    let n = blocks.len() - 1;
    let anvil = Anvil::spawn(&[]).unwrap();
    let memstore = MemStore::start("127.0.0.1:0").unwrap();
    let da = DaClient::new(&memstore.url());
    let url = anvil.url();
    let seq = (url.as_str(), ANVIL_KEY_0);
    let stranger = (url.as_str(), ANVIL_KEY_1);
    runtime().block_on(async {
        // The contract's rules.
        let inbox = inbox::deploy(&wallet(&url, ANVIL_KEY_0), sequencer()).await.unwrap();
        let first = honest(0..=1);
        let err = post(stranger, inbox, 0, &first, None, None).await.unwrap_err();
        assert!(err.starts_with("NotSequencer"), "{err}");
        let err = post(seq, inbox, 1, &first, None, None).await.unwrap_err();
        assert!(err.starts_with("WrongIndex"), "{err}");
        post(seq, inbox, 0, &first, None, None).await.unwrap();
        let err = post(seq, inbox, 0, &first, None, None).await.unwrap_err();
        assert!(err.starts_with("WrongIndex"), "repeat: {err}");
        let err = post(seq, inbox, 1, &honest(3..=n), None, None).await.unwrap_err();
        assert!(err.starts_with("WrongFirstBlock"), "gap: {err}");
        let err = post(stranger, inbox, 1, &honest(2..=n), None, None).await.unwrap_err();
        assert!(err.starts_with("NotSequencer"), "{err}");
        post(seq, inbox, 1, &honest(2..=n), None, None).await.unwrap();
        let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
        assert!(ok, "honest chain: {out}");

        // A transaction byte altered inside the data: the contract cannot tell, the verifier
        // names the block.
        let inbox = inbox::deploy(&wallet(&url, ANVIL_KEY_0), sequencer()).await.unwrap();
        let mut bad = honest(0..=n);
        let tx = &mut bad.blocks[tampered_block as usize].txs[0];
        let mut bytes = tx.to_vec();
        let last = bytes.len() - 40;
        bytes[last] ^= 0x5a; // inside the signature
        *tx = bytes.into();
        post(seq, inbox, 0, &bad, None, None).await.unwrap();
        let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
        assert!(!ok && out.contains(&format!("block {tampered_block}")), "{out}");

        // A header whose state root was altered.
        let inbox = inbox::deploy(&wallet(&url, ANVIL_KEY_0), sequencer()).await.unwrap();
        let mut bad = honest(0..=n);
        bad.blocks[tampered_block as usize].header.state_root = B256::repeat_byte(7);
        post(seq, inbox, 0, &bad, None, None).await.unwrap();
        let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
        assert!(
            !ok && out.contains(&format!("block {tampered_block}")) && out.contains("state root"),
            "{out}"
        );

        // Honest data, but a state root on L1 that is not the one it leads to.
        let inbox = inbox::deploy(&wallet(&url, ANVIL_KEY_0), sequencer()).await.unwrap();
        post(seq, inbox, 0, &honest(0..=1), None, None).await.unwrap();
        post(seq, inbox, 1, &honest(2..=n), Some(B256::repeat_byte(9)), None).await.unwrap();
        let (ok, out) = strobe_verify(&anvil.url(), inbox, None);
        assert!(
            !ok && out.contains(&format!("batch 1, block {n}")) && out.contains("state root"),
            "{out}"
        );

        // EigenDA serving other bytes than were posted.
        let inbox = inbox::deploy(&wallet(&url, ANVIL_KEY_0), sequencer()).await.unwrap();
        post(seq, inbox, 0, &honest(0..=n), None, Some(&da)).await.unwrap();
        let url = memstore.url();
        let (ok, out) = strobe_verify(&anvil.url(), inbox, Some(&url));
        assert!(ok, "{out}");
        let cert = strobe_settlement::eigenda::memstore_commitment(&honest(0..=n).compress());
        memstore.overwrite(&cert, honest(1..=n).compress());
        let (ok, out) = strobe_verify(&anvil.url(), inbox, Some(&url));
        assert!(!ok && out.contains("batch 0") && out.contains("hashes to"), "{out}");
    });
}

#[test]
fn inbox_bytecode_is_reproducible_from_source() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let compiled = compile_solidity(&root.join("contracts/StrobeInbox.sol"));
    let committed: serde_json::Value = serde_json::from_str(inbox::INBOX_ARTIFACT).unwrap();
    assert_eq!(
        compiled["StrobeInbox"]["bytecode"], committed["bytecode"],
        "contracts/StrobeInbox.json is stale: run contracts/build.sh"
    );
    assert_eq!(compiled["StrobeInbox"]["abi"], committed["abi"]);
    // The Rust bindings use the same selectors as the compiled ABI.
    let signatures: Vec<String> = committed["abi"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "function" || e["type"] == "event")
        .map(|e| {
            let types: Vec<&str> = e["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["type"].as_str().unwrap())
                .collect();
            format!("{}({})", e["name"].as_str().unwrap(), types.join(","))
        })
        .collect();
    for sig in [
        StrobeInbox::postBatchCall::SIGNATURE,
        StrobeInbox::nextIndexCall::SIGNATURE,
        StrobeInbox::nextBlockCall::SIGNATURE,
        StrobeInbox::batchCall::SIGNATURE,
        StrobeInbox::sequencerCall::SIGNATURE,
        StrobeInbox::BatchPosted::SIGNATURE,
    ] {
        assert!(
            signatures.iter().any(|s| s == sig),
            "{sig} not in the compiled ABI: {signatures:?}"
        );
    }
}
