//! The durable chain from the outside: proofs against block roots, restarts that resume where the
//! chain was, `strobe node` with a genesis file, `strobe db stats`, and a full disk.

mod common;

use common::{rpc, DevNode};
use serde_json::{json, Value};
use std::{process::Command, time::Duration};
use strobe_engine::storage::StateProof;
use strobe_tools::client::{dev_signer, quantity, signed_hex, Client, CHAIN_ID};
use strobe_tools::crash::INIT_CODE;

/// Sync-sends a transaction of dev account `account` (a creation when `to` is `None`) and returns
/// the raw JSON-RPC response.
fn try_send_sync(
    url: &str,
    account: u32,
    to: Option<alloy_primitives::Address>,
    input: &[u8],
    timeout_ms: u64,
) -> std::io::Result<Value> {
    let key = dev_signer(account);
    let mut c = Client::connect(url)?;
    let nonce = c.nonce(key.address(), "pending")?;
    let tx = alloy::consensus::TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: 200_000,
        max_fee_per_gas: 20_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: to.map_or(alloy_primitives::TxKind::Create, alloy_primitives::TxKind::Call),
        value: alloy_primitives::U256::from(7),
        access_list: Default::default(),
        input: input.to_vec().into(),
    };
    c.rpc("eth_sendRawTransactionSync", json!([signed_hex(&key, tx), timeout_ms]))
}

/// Sync-sends and returns the receipt, which must come.
fn send_sync(
    url: &str,
    account: u32,
    to: Option<alloy_primitives::Address>,
    input: &[u8],
) -> Value {
    let v = try_send_sync(url, account, to, input, 5000).unwrap();
    assert!(v["result"].is_object(), "{v}");
    v["result"].clone()
}

/// Waits until block `n` is sealed.
fn wait_for_block(url: &str, n: u64) {
    for _ in 0..500 {
        if quantity(&rpc(url, "eth_blockNumber", json!([]))["result"]).unwrap() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("block {n} was not sealed");
}

/// A proof at the newest sealed block, with that block's header fetched separately (retried if a
/// block seals in between, since only the newest sealed block is provable).
fn newest_proof(url: &str, address: alloy_primitives::Address, slots: Value) -> (Value, Value) {
    for _ in 0..1000 {
        let resp = rpc(url, "strobe_getProof", json!([address, slots, "latest"]));
        if let Some(r) = resp.get("result") {
            let header = rpc(url, "eth_getBlockByNumber", json!([r["blockNumber"], false]))
                ["result"]
                .clone();
            return (r.clone(), header);
        }
        // The newest block's checkpoint may still be being written.
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no proof of the newest block in 1000 tries (10 s)");
}

fn strobe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strobe")).args(args).output().unwrap()
}

#[test]
fn proofs_verify_against_the_block_header_root() {
    let node = DevNode::start(&["--block-time", "200ms"]);
    let receipt = send_sync(&node.url, 0, None, &INIT_CODE);
    let contract: alloy_primitives::Address =
        serde_json::from_value(receipt["contractAddress"].clone()).unwrap();
    let block = quantity(&receipt["blockNumber"]).unwrap();
    wait_for_block(&node.url, block);
    let (resp, header) = newest_proof(&node.url, contract, json!(["0x0", "0x1"]));
    assert_eq!(resp["stateRoot"], header["stateRoot"]);
    let root: alloy_primitives::B256 = serde_json::from_value(header["stateRoot"].clone()).unwrap();
    let proof: StateProof = serde_json::from_value(resp["proof"].clone()).unwrap();
    let account = proof.verify_account(root, &contract).unwrap().expect("the contract exists");
    assert_eq!(account.nonce, 1);
    assert_eq!(account.balance, alloy_primitives::U256::from(7));
    let get = |slot: u64| {
        proof.verify_slot(root, &contract, &alloy_primitives::U256::from(slot)).unwrap().unwrap()
    };
    assert_eq!(get(0), alloy_primitives::U256::from(42));
    assert_eq!(get(1), alloy_primitives::U256::ZERO, "absence is proven too");
    // An absent account is proven absent.
    let nobody = alloy_primitives::Address::repeat_byte(0xab);
    let (r, header) = newest_proof(&node.url, nobody, json!([]));
    let root: alloy_primitives::B256 = serde_json::from_value(header["stateRoot"].clone()).unwrap();
    let proof: StateProof = serde_json::from_value(r["proof"].clone()).unwrap();
    assert_eq!(proof.verify_account(root, &nobody).unwrap(), None);
    // A forged record claiming the account exists breaks the proof.
    let mut forged = proof.clone();
    let mut record = vec![0u8; 92];
    record[..20].copy_from_slice(nobody.as_slice());
    forged.account.records.push(record.into());
    assert!(forged.verify_account(root, &nobody).is_err());
    // Blocks that are not the newest sealed one, and the pending block, are refused clearly.
    let old = rpc(&node.url, "strobe_getProof", json!([contract, [], "0x0"]));
    assert!(old["error"]["message"].as_str().unwrap().contains("not available"), "{old}");
    let pending = rpc(&node.url, "strobe_getProof", json!([contract, [], "pending"]));
    assert!(pending["error"]["message"].as_str().unwrap().contains("sealed"), "{pending}");
}

#[test]
fn restart_resumes_at_the_same_head_root_and_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("d");
    let d = datadir.to_str().unwrap();
    let node = DevNode::start(&["--datadir", d, "--block-time", "100ms"]);
    for _ in 0..3 {
        send_sync(&node.url, 1, Some(alloy_primitives::Address::repeat_byte(5)), &[]);
    }
    let nonce_before =
        rpc(&node.url, "eth_getTransactionCount", json!([dev_signer(1).address(), "latest"]));
    let (status, _) = node.stop_with(15);
    assert!(status.success());
    let stats = strobe(&["db", "stats", "--datadir", d]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success() && text.contains("accounts") && text.contains("state root"),
        "{text}"
    );
    let verified = strobe(&["db", "verify", "--datadir", d]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    // The checkpoint's block and root, as stats printed them.
    let line = text.lines().find(|l| l.starts_with("last block")).unwrap().to_string();
    let head: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let root_line = text.lines().find(|l| l.starts_with("state root")).unwrap();
    let root = root_line.split_whitespace().last().unwrap().to_string();

    let node = DevNode::start(&["--datadir", d, "--block-time", "100ms"]);
    let block = rpc(&node.url, "eth_getBlockByNumber", json!([format!("{head:#x}"), false]))
        ["result"]
        .clone();
    assert_eq!(block["stateRoot"].as_str().unwrap(), root);
    let nonce_after =
        rpc(&node.url, "eth_getTransactionCount", json!([dev_signer(1).address(), "latest"]));
    assert_eq!(nonce_before["result"], nonce_after["result"]);
    // And the chain goes on.
    let r = send_sync(&node.url, 1, Some(alloy_primitives::Address::repeat_byte(5)), &[]);
    assert!(quantity(&r["blockNumber"]).unwrap() > head);
}

#[test]
fn node_starts_from_a_genesis_file_and_resumes_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("d");
    let d = datadir.to_str().unwrap();
    let genesis = dir.path().join("genesis.json");
    std::fs::write(
        &genesis,
        r#"{"config":{"chainId":4242},"alloc":{"0x00000000000000000000000000000000000000aa":{"balance":"0x1234","storage":{"0x01":"0x02"}}}}"#,
    )
    .unwrap();
    let refused = strobe(&["node", "--datadir", d, "--port", "0"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--genesis"));
    let node = DevNode::spawn(&[
        "node",
        "--datadir",
        d,
        "--port",
        "0",
        "--genesis",
        genesis.to_str().unwrap(),
    ]);
    let bal = rpc(
        &node.url,
        "eth_getBalance",
        json!(["0x00000000000000000000000000000000000000aa", "latest"]),
    );
    assert_eq!(bal["result"], "0x1234");
    assert_eq!(rpc(&node.url, "eth_chainId", json!([]))["result"], "0x1092");
    let genesis_hash =
        rpc(&node.url, "eth_getBlockByNumber", json!(["0x0", false]))["result"]["hash"].clone();
    drop(node);
    let node = DevNode::spawn(&["node", "--datadir", d, "--port", "0", "--chain-id", "4242"]);
    let again =
        rpc(&node.url, "eth_getBlockByNumber", json!(["0x0", false]))["result"]["hash"].clone();
    assert_eq!(genesis_hash, again);
    let slot = rpc(
        &node.url,
        "eth_getStorageAt",
        json!(["0x00000000000000000000000000000000000000aa", "0x1", "latest"]),
    );
    assert_eq!(
        slot["result"],
        "0x0000000000000000000000000000000000000000000000000000000000000002"
    );
}

#[test]
fn sigbus_stops_the_node_with_a_clear_message() {
    let node = DevNode::start(&[]);
    let pid = node.child.id().to_string();
    let mut node = node;
    // The handler is what a failed page-in of a mapped state file reaches.
    Command::new("kill").args(["-BUS", &pid]).status().unwrap();
    let status = node.child.wait().unwrap();
    assert_eq!(status.code(), Some(74), "{status:?}");
}

/// A full disk stops the node with a plain error and loses nothing it acknowledged; after space
/// is freed it restarts and re-execution agrees with every stored block. Needs root for a small
/// tmpfs; skipped (with a message) otherwise.
#[test]
fn full_disk_stops_the_node_and_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let datadir = mnt.join("d");
    let d = datadir.to_str().unwrap();
    let mut node = DevNode::start(&["--datadir", d, "--block-time", "100ms"]);
    let before = send_sync(&node.url, 0, Some(alloy_primitives::Address::repeat_byte(9)), &[]);
    // Fill the disk.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", filler.display()))
        .output();
    // Keep sending until the node stops; none of these may be acknowledged without being durable.
    let mut acked = vec![before];
    let stopped = (0..400).find_map(|_| {
        if let Ok(Some(status)) = node.child.try_wait() {
            return Some(status);
        }
        let to = Some(alloy_primitives::Address::repeat_byte(9));
        if let Ok(v) = try_send_sync(&node.url, 0, to, &[], 2000) {
            if v["result"].is_object() {
                acked.push(v["result"].clone());
            }
        }
        None
    });
    let status = match stopped {
        Some(s) => s,
        None => node.child.wait().unwrap(),
    };
    assert_eq!(status.code(), Some(1), "the node must stop with an error when the disk is full");
    std::fs::remove_file(&filler).unwrap();
    let verified = strobe(&["db", "verify", "--datadir", d]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let node = DevNode::start(&["--datadir", d, "--block-time", "100ms"]);
    for r in &acked {
        let got = rpc(&node.url, "eth_getTransactionReceipt", json!([r["transactionHash"]]));
        assert_eq!(got["result"]["transactionIndex"], r["transactionIndex"], "{got}");
        assert_eq!(got["result"]["blockNumber"], r["blockNumber"]);
    }
}

/// A crash after the genesis state was checkpointed but before the genesis block was stored
/// leaves state and no blocks; the next open builds the chain again instead of refusing.
#[test]
fn interrupted_creation_is_finished_on_the_next_open() {
    use strobe_engine::{
        config::{ChainConfig, Genesis, GenesisAccount},
        storage::{PersistentStore, StateStore, StoreOptions},
        Engine,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut genesis = Genesis::default();
    let rich = alloy_primitives::Address::repeat_byte(0x11);
    genesis.alloc.push((
        rich,
        GenesisAccount { balance: alloy_primitives::U256::from(5), ..Default::default() },
    ));
    {
        let mut store =
            PersistentStore::open(&dir.path().join("state"), StoreOptions::default()).unwrap();
        store
            .apply(&strobe_engine::storage::StateDiff {
                accounts: vec![strobe_engine::storage::AccountChange {
                    address: alloy_primitives::Address::repeat_byte(0x22),
                    info: Some(Default::default()),
                    storage_cleared: false,
                    storage: vec![],
                }],
                codes: vec![],
            })
            .unwrap();
        store.commit(0, 0).unwrap();
    }
    let mut engine =
        Engine::open(ChainConfig::default(), &genesis, dir.path(), StoreOptions::default())
            .unwrap();
    let view = engine.view();
    assert_eq!(view.state.account(&rich).unwrap().balance, alloy_primitives::U256::from(5));
    assert!(view.state.account(&alloy_primitives::Address::repeat_byte(0x22)).is_none());
    engine.shutdown();
}
