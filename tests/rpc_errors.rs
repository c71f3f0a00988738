//! Validation errors, pool behaviour and JSON-RPC envelope handling, checked over raw HTTP.

mod common;

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::eip2718::Encodable2718,
    network::TxSignerSync,
    primitives::{address, hex, Bytes, TxKind, U256},
    signers::local::PrivateKeySigner,
};
use common::{post_raw, rpc, DevNode, DEV_KEY_0};
use proptest::prelude::*;
use serde_json::{json, Value};

const GWEI: u128 = 1_000_000_000;

fn key() -> PrivateKeySigner {
    DEV_KEY_0.parse().unwrap()
}

struct Tx {
    nonce: u64,
    gas: u64,
    fee: u128,
    tip: u128,
    value: U256,
    chain_id: u64,
    to: Option<alloy::primitives::Address>,
    input: Vec<u8>,
}

impl Default for Tx {
    fn default() -> Self {
        Self {
            nonce: 0,
            gas: 21_000,
            fee: 2 * GWEI,
            tip: GWEI,
            value: U256::from(1),
            chain_id: 31337,
            to: Some(address!("0x00000000000000000000000000000000000000cc")),
            input: Vec::new(),
        }
    }
}

fn raw(t: &Tx) -> String {
    let mut tx = TxEip1559 {
        chain_id: t.chain_id,
        nonce: t.nonce,
        gas_limit: t.gas,
        max_fee_per_gas: t.fee,
        max_priority_fee_per_gas: t.tip,
        to: t.to.map_or(TxKind::Create, TxKind::Call),
        value: t.value,
        access_list: Default::default(),
        input: Bytes::from(t.input.clone()),
    };
    let sig = key().sign_transaction_sync(&mut tx).unwrap();
    format!("0x{}", hex::encode(TxEnvelope::from(tx.into_signed(sig)).encoded_2718()))
}

fn send(url: &str, t: &Tx) -> Value {
    rpc(url, "eth_sendRawTransaction", json!([raw(t)]))
}

fn error_of(v: &Value) -> (i64, String) {
    let e = v.get("error").unwrap_or_else(|| panic!("expected an error, got {v}"));
    (e["code"].as_i64().unwrap(), e["message"].as_str().unwrap().to_string())
}

fn nonce(url: &str, tag: &str) -> u64 {
    let v = rpc(url, "eth_getTransactionCount", json!([key().address(), tag]));
    u64::from_str_radix(v["result"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn wait_receipt(url: &str, hash: &str) -> Value {
    for _ in 0..300 {
        let r = rpc(url, "eth_getTransactionReceipt", json!([hash]));
        if !r["result"].is_null() {
            return r["result"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no receipt for {hash}");
}

#[test]
fn validation_errors_carry_geths_messages() {
    // Senders recovered on worker threads (the default) and on the network thread itself.
    for threads in ["2", "0"] {
        check_validation_errors(&["--recovery-threads", threads]);
    }
}

fn check_validation_errors(extra: &[&str]) {
    let node = DevNode::start(extra);
    let url = &node.url;
    let cases: Vec<(Tx, &str)> = vec![
        (Tx { chain_id: 1, ..Tx::default() }, "invalid chain id for signer"),
        (Tx { gas: 20_000, ..Tx::default() }, "intrinsic gas too low"),
        (Tx { gas: 2_000_000_000, ..Tx::default() }, "exceeds block gas limit"),
        (Tx { fee: 1, tip: 1, ..Tx::default() }, "max fee per gas less than block base fee"),
        (Tx { tip: 0, ..Tx::default() }, "transaction underpriced"),
        (
            Tx { value: U256::from(10).pow(U256::from(30)), ..Tx::default() },
            "insufficient funds for gas * price + value",
        ),
        (
            Tx { to: None, gas: 15_000_000, input: vec![0; 49_153], ..Tx::default() },
            "max initcode size exceeded",
        ),
        (Tx { gas: 15_000_000, input: vec![1; 140_000], ..Tx::default() }, "oversized data"),
    ];
    for (tx, want) in cases {
        let (code, msg) = error_of(&send(url, &tx));
        assert_eq!(code, -32000, "{msg}");
        assert!(msg.starts_with(want), "want {want}, got {msg}");
    }
    // Nonce too low and already known.
    let first = send(url, &Tx::default());
    let hash = first["result"].as_str().expect("accepted").to_string();
    let (_, msg) = error_of(&send(url, &Tx::default()));
    assert!(msg == "already known" || msg.starts_with("nonce too low"), "{msg}");
    wait_receipt(url, &hash);
    let (_, msg) = error_of(&send(url, &Tx { value: U256::from(2), ..Tx::default() }));
    assert!(msg.starts_with("nonce too low"), "{msg}");
    // Blob transactions are refused with a clear message.
    let blob = "0x03f8ac827a6980843b9aca00847735940082520894000000000000000000000000000000000000000001808477359400e1a001000000000000000000000000000000000000000000000000000000000000000180a0c4b7b0f8fd1b79b8b61a4e0b5f1a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a0a0c4b7b0f8fd1b79b8b61a4e0b5f1a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6";
    let (code, msg) = error_of(&rpc(url, "eth_sendRawTransaction", json!([blob])));
    assert_eq!(code, -32000);
    assert!(msg.contains("transaction type not supported") || msg.starts_with("rlp"), "{msg}");
    // Garbage bytes are a decoding error, not a crash.
    let (code, _) = error_of(&rpc(url, "eth_sendRawTransaction", json!(["0xdeadbeef"])));
    assert_eq!(code, -32000);
}

#[test]
fn nonce_gaps_fill_and_replacement_needs_a_bump() {
    let node = DevNode::start(&[]);
    let url = &node.url;
    let base = nonce(url, "latest");
    // Send n+2 and n+1 first: they wait; pending nonce does not count the gap.
    let h2 =
        send(url, &Tx { nonce: base + 2, ..Tx::default() })["result"].as_str().unwrap().to_string();
    let h1 =
        send(url, &Tx { nonce: base + 1, ..Tx::default() })["result"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(nonce(url, "pending"), base);
    assert!(rpc(url, "eth_getTransactionReceipt", json!([h1]))["result"].is_null());
    // Replacing n+1 with a 5% bump is refused, with 10% it is accepted.
    let low =
        Tx { nonce: base + 1, fee: 2 * GWEI * 105 / 100, tip: GWEI * 105 / 100, ..Tx::default() };
    let (_, msg) = error_of(&send(url, &low));
    assert_eq!(msg, "replacement transaction underpriced");
    let bumped = Tx {
        nonce: base + 1,
        fee: 2 * GWEI * 11 / 10,
        tip: GWEI * 11 / 10,
        value: U256::from(5),
        ..Tx::default()
    };
    let h1b = send(url, &bumped)["result"].as_str().unwrap().to_string();
    // Fill the gap: all three land, and the replacement is what got mined.
    let h0 =
        send(url, &Tx { nonce: base, ..Tx::default() })["result"].as_str().unwrap().to_string();
    for h in [&h0, &h1b, &h2] {
        assert_eq!(wait_receipt(url, h)["status"], "0x1");
    }
    assert!(rpc(url, "eth_getTransactionReceipt", json!([h1]))["result"].is_null());
    assert_eq!(nonce(url, "pending"), base + 3);
    assert_eq!(nonce(url, "latest"), base + 3);
}

#[test]
fn sync_send_returns_the_receipt_and_reports_gaps() {
    let node = DevNode::start(&[]);
    let url = &node.url;
    let n = nonce(url, "latest");
    let r = rpc(
        url,
        "eth_sendRawTransactionSync",
        json!([raw(&Tx { nonce: n, ..Tx::default() }), 1000]),
    );
    assert_eq!(r["result"]["status"], "0x1", "{r}");
    assert_eq!(
        r["result"]["from"].as_str().unwrap().to_lowercase(),
        key().address().to_string().to_lowercase()
    );
    // A nonce gap cannot be included yet: code 5 with the expected nonce.
    let r =
        rpc(url, "eth_sendRawTransactionSync", json!([raw(&Tx { nonce: n + 5, ..Tx::default() })]));
    let (code, _) = error_of(&r);
    assert_eq!(code, 5);
    assert_eq!(r["error"]["data"], json!(format!("{:#x}", n + 1)));
    let r = rpc(
        url,
        "realtime_sendRawTransaction",
        json!([raw(&Tx { nonce: n + 1, ..Tx::default() })]),
    );
    assert_eq!(r["result"]["status"], "0x1", "{r}");
}

#[test]
fn envelope_errors_batches_and_limits() {
    let node = DevNode::start(&[]);
    let url = &node.url;
    let (code, body) = post_raw(url, b"{not json");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], -32700);
    let (_, body) = post_raw(url, br#"{"jsonrpc":"2.0","id":1,"method":"nope","params":[]}"#);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], -32601);
    let (_, body) =
        post_raw(url, br#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0x12"]}"#);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], -32602);
    let (_, body) = post_raw(url, br#"[1, {"jsonrpc":"2.0","id":7,"method":"eth_chainId"}, {"jsonrpc":"2.0","method":"eth_chainId"}]"#);
    let v: Value = serde_json::from_str(&body).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2, "notifications get no answer: {v}");
    assert_eq!(arr[0]["error"]["code"], -32600);
    assert_eq!(arr[1]["id"], 7);
    assert_eq!(arr[1]["result"], "0x7a69");
    let big = vec![b' '; 6 * 1024 * 1024];
    let (code, _) = post_raw(url, &big);
    assert_eq!(code, 413);
    // eth_call revert: code 3 with data.
    let r = rpc(url, "eth_call", json!([{"data": "0x60006000fd", "gas": "0x100000"}]));
    assert!(r["error"].is_object(), "{r}");
}

/// Random JSON and random bytes get an answer (or a clean close), never a dead server.
#[test]
fn random_json_never_kills_the_server() {
    let node = DevNode::start(&[]);
    let method = prop_oneof![
        prop::sample::select(vec![
            "eth_getBalance",
            "eth_call",
            "eth_getLogs",
            "eth_estimateGas",
            "eth_sendRawTransaction",
            "eth_getBlockByNumber",
            "eth_feeHistory",
            "eth_newFilter",
            "eth_getFilterChanges",
            "eth_getTransactionCount",
            "eth_sendRawTransactionSync",
        ])
        .prop_map(String::from),
        "[a-z_]{0,12}",
    ];
    let params = proptest::collection::vec(
        prop_oneof![
            Just(json!(null)),
            Just(json!("latest")),
            any::<i64>().prop_map(|i| json!(i)),
            "[0-9a-fx]{0,70}".prop_map(|s| json!(s)),
            Just(json!({"fromBlock": "0x0", "toBlock": "latest"})),
            Just(json!([1, 2])),
            Just(json!({"to": "0x01", "data": "0x00"})),
        ],
        0..4,
    );
    let garbage = proptest::collection::vec(any::<u8>(), 0..64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&(method, params, garbage), |(method, params, garbage)| {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let (code, text) = post_raw(&node.url, body.to_string().as_bytes());
            prop_assert_eq!(code, 200);
            let v: Value = serde_json::from_str(&text).unwrap();
            prop_assert!(v.get("result").is_some() || v.get("error").is_some());
            let _ = post_raw(&node.url, &garbage);
            prop_assert_eq!(
                rpc(&node.url, "eth_chainId", json!([]))["result"].clone(),
                json!("0x7a69")
            );
            Ok(())
        })
        .unwrap();
}
