//! End-to-end tests of the network layer against a real `strobe dev` process, each run on both
//! event loops (io_uring and epoll): WebSocket subscriptions observed through alloy's WS
//! provider (an independent client), a slow subscriber being cut off while others keep
//! receiving, the binary protocol's ingress and feed, and every limit answered as specified.

mod common;

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::eip2718::Encodable2718,
    network::{EthereumWallet, TransactionBuilder, TxSignerSync},
    primitives::{address, Address, Bytes, TxKind, B256, U256},
    providers::{Provider, ProviderBuilder, WsConnect},
    rpc::types::{Filter, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
    sol_types::SolValue,
};
use common::{DevNode, DEV_KEY_0, DEV_KEY_1};
use serde_json::{json, Value};
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};
use strobe_tools::{
    binary_client::{BinaryClient, ClientMsg, ServerMsg},
    ws_client,
};

sol! {
    #[sol(rpc)]
    interface TestToken {
        function balanceOf(address) external view returns (uint256);
        function transfer(address to, uint256 amount) external returns (bool);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }
}

const BACKENDS: [&str; 2] = ["uring", "epoll"];

fn node(backend: &str, extra: &[&str]) -> DevNode {
    let mut args = vec!["--net-backend", backend];
    args.extend_from_slice(extra);
    DevNode::start(&args)
}

fn addr(node: &DevNode) -> String {
    node.url.trim_start_matches("http://").to_string()
}

fn signer(key: &str) -> PrivateKeySigner {
    key.parse().unwrap()
}

/// A signed EIP-1559 transfer of `value` wei to `to`.
fn transfer(key: &str, nonce: u64, to: Address, value: u64) -> Vec<u8> {
    let s = signer(key);
    let mut tx = TxEip1559 {
        chain_id: 31337,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value: U256::from(value),
        ..Default::default()
    };
    let sig = s.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
}

// ---------------------------------------------------------------------------------------------
// A minimal WebSocket client over a raw socket, so tests can also send what real clients never
// would (unmasked frames, oversized frames).

struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server: opcode and payload.
type WsFrame = (u8, Vec<u8>);

impl RawWs {
    fn connect(addr: &str) -> Self {
        Self::connect_with(TcpStream::connect(addr).unwrap())
    }

    fn connect_with(mut stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(ws_client::HANDSHAKE).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        Self { stream, buf: Vec::new() }
    }

    fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= 65535 {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        } else {
            out.extend_from_slice(payload);
        }
        let _ = self.stream.write_all(&out);
    }

    fn send_json(&mut self, v: &Value) {
        self.send_frame(true, 1, v.to_string().as_bytes(), true);
    }

    /// The next frame, or `None` at end of stream.
    fn recv(&mut self) -> Option<WsFrame> {
        loop {
            if let Some((op, range)) = ws_client::server_frame(&self.buf) {
                let end = range.end;
                let payload = self.buf[range].to_vec();
                self.buf.drain(..end);
                return Some((op, payload));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next text message that answers request `id`, skipping notifications.
    fn answer(&mut self, id: u64) -> Value {
        loop {
            let (op, payload) = self.recv().expect("connection closed");
            if op != 1 {
                continue;
            }
            let v: Value = serde_json::from_slice(&payload).unwrap();
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// Reads until a close frame and returns its code, or `None` if the socket just ended.
    fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.recv() {
            if op == 8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

fn metric(metrics_url: &str, name: &str) -> u64 {
    let addr = metrics_url.trim_start_matches("http://").trim_end_matches("/metrics");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

fn metrics_url(node: &DevNode) -> String {
    node.banner
        .iter()
        .find_map(|l| l.strip_prefix("Metrics: ").map(str::to_string))
        .expect("metrics line (start with --metrics-port 0)")
}

// ---------------------------------------------------------------------------------------------

async fn subscriptions_through_alloy(backend: &str) {
    let node = node(backend, &[]);
    let ws_url = node.url.replace("http://", "ws://");
    let s0 = signer(DEV_KEY_0);
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(s0.clone()))
        .connect_ws(WsConnect::new(ws_url.clone()))
        .await
        .unwrap();
    // Every RPC method works over WebSocket.
    assert_eq!(provider.get_chain_id().await.unwrap(), 31337);
    assert!(provider.get_balance(s0.address()).await.unwrap() > U256::ZERO);

    // miniBlocks: one per tick, numbered consecutively, with MegaETH's fields.
    let mut minis = provider.subscribe::<_, Value>(("miniBlocks",)).await.unwrap();
    let mut prev: Option<Value> = None;
    for _ in 0..20 {
        let m = tokio::time::timeout(Duration::from_secs(5), minis.recv()).await.unwrap().unwrap();
        for field in [
            "block_number",
            "block_timestamp",
            "index",
            "mini_block_number",
            "mini_block_timestamp",
            "gas_used",
            "transactions",
            "receipts",
        ] {
            assert!(m.get(field).is_some(), "missing {field} in {m}");
        }
        let q = |v: &Value, f: &str| {
            u64::from_str_radix(v[f].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
        };
        if let Some(p) = &prev {
            assert_eq!(q(&m, "mini_block_number"), q(p, "mini_block_number") + 1);
            let gap_us = q(&m, "mini_block_timestamp") - q(p, "mini_block_timestamp");
            assert!(gap_us < 1_000_000, "mini-blocks {gap_us} µs apart");
        }
        prev = Some(m);
    }

    // newHeads: a sealed block's header, the same as eth_getBlockByNumber's, with miniBlockCount.
    let mut heads = provider.subscribe::<_, Value>(("newHeads",)).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), heads.recv()).await.unwrap().unwrap();
    let number =
        u64::from_str_radix(head["number"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let block = provider.get_block_by_number(number.into()).await.unwrap().unwrap();
    assert_eq!(head["hash"].as_str().unwrap().parse::<B256>().unwrap(), block.header.hash);
    assert!(head["miniBlockCount"].as_str().is_some());
    let mut typed = provider.subscribe_blocks().await.unwrap();
    let h = tokio::time::timeout(Duration::from_secs(5), typed.recv()).await.unwrap().unwrap();
    assert!(h.number > 0);

    // A token, then logs and stateChanges for one transfer.
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = common::compile_solidity(&root.join("tests/contracts/TestToken.sol"));
    let bytecode: Bytes = out["TestToken"]["bytecode"].as_str().unwrap().parse().unwrap();
    let args = ("Test".to_string(), "TST".to_string(), U256::from(10).pow(U256::from(24)))
        .abi_encode_params();
    let mut code = bytecode.to_vec();
    code.extend_from_slice(&args);
    let deploy = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let receipt = provider.send_transaction(deploy).await.unwrap().get_receipt().await.unwrap();
    let token_addr = receipt.contract_address.unwrap();
    let bob = address!("0x00000000000000000000000000000000000000b0");

    let filter = Filter::new()
        .address(token_addr)
        .event_signature(<TestToken::Transfer as alloy::sol_types::SolEvent>::SIGNATURE_HASH);
    let mut logs = provider.subscribe_logs(&filter).await.unwrap();
    let mut changes =
        provider.subscribe::<_, Value>(("stateChanges", vec![bob, token_addr])).await.unwrap();
    let mut pending = provider.subscribe_pending_transactions().await.unwrap();

    let token = TestToken::new(token_addr, &provider);
    let pending_tx = token.transfer(bob, U256::from(1234)).send().await.unwrap();
    let tx_hash = *pending_tx.tx_hash();
    let r = pending_tx.get_receipt().await.unwrap();
    assert!(r.status());

    let seen = tokio::time::timeout(Duration::from_secs(5), pending.recv()).await.unwrap().unwrap();
    assert_eq!(seen, tx_hash, "newPendingTransactions carries the hash");

    let log = tokio::time::timeout(Duration::from_secs(5), logs.recv()).await.unwrap().unwrap();
    assert_eq!(log.address(), token_addr);
    assert_eq!(log.transaction_hash, Some(tx_hash));
    assert_eq!(log.topics()[2], bob.into_word());
    assert_eq!(U256::from_be_slice(&log.data().data), U256::from(1234));

    // stateChanges: the token's changed slots equal eth_getStorageAt afterwards.
    let change =
        tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap();
    assert_eq!(change["address"].as_str().unwrap().parse::<Address>().unwrap(), token_addr);
    let storage = change["storage"].as_object().unwrap();
    assert_eq!(storage.len(), 2, "sender and recipient balances: {change}");
    for (slot, value) in storage {
        let slot: U256 = slot.parse().unwrap();
        let value: U256 = value.as_str().unwrap().parse().unwrap();
        assert_eq!(provider.get_storage_at(token_addr, slot).await.unwrap(), value);
    }
    assert!(storage
        .values()
        .any(|v| v.as_str().unwrap().parse::<U256>().unwrap() == U256::from(1234)));

    // A plain transfer to bob: his stateChanges balance equals eth_getBalance. A task keeps
    // reading miniBlocks meanwhile (alloy's subscription buffer is small).
    let mut minis2 = provider.subscribe::<_, Value>(("miniBlocks",)).await.unwrap();
    let (full_tx, mut full_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Ok(m) = minis2.recv().await {
            if m["transactions"].as_array().is_some_and(|t| !t.is_empty())
                && full_tx.send(m).is_err()
            {
                break;
            }
        }
    });
    drop(minis);
    let send = TransactionRequest::default().with_to(bob).with_value(U256::from(777));
    provider.send_transaction(send).await.unwrap().get_receipt().await.unwrap();
    let change = loop {
        let c =
            tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap();
        if c["address"].as_str().unwrap().parse::<Address>().unwrap() == bob {
            break c;
        }
    };
    let balance: U256 = change["balance"].as_str().unwrap().parse().unwrap();
    assert_eq!(balance, U256::from(777));
    assert_eq!(provider.get_balance(bob).await.unwrap(), balance);
    assert_eq!(change["nonce"], json!(0));

    // The receipt in the miniBlocks notification equals eth_getTransactionReceipt's.
    let m = tokio::time::timeout(Duration::from_secs(5), full_rx.recv()).await.unwrap().unwrap();
    let tx0 = &m["transactions"][0];
    let rc0 = &m["receipts"][0];
    assert_eq!(tx0["hash"], rc0["transactionHash"]);
    let rpc_receipt = common::rpc(&node.url, "eth_getTransactionReceipt", json!([tx0["hash"]]));
    assert_eq!(rpc_receipt["result"]["gasUsed"], rc0["gasUsed"]);
    assert_eq!(rpc_receipt["result"]["status"], rc0["status"]);

    // Unsubscribing ends a subscription; a second time (or an unknown id) answers false.
    let a = addr(&node);
    tokio::task::spawn_blocking(move || {
        let mut ws = RawWs::connect(&a);
        ws.send_json(
            &json!({"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["miniBlocks"]}),
        );
        let id = ws.answer(1)["result"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 34, "16-byte ids like geth's: {id}");
        ws.send_json(&json!({"jsonrpc":"2.0","id":2,"method":"eth_unsubscribe","params":[id]}));
        assert_eq!(ws.answer(2)["result"], json!(true));
        ws.send_json(&json!({"jsonrpc":"2.0","id":3,"method":"eth_unsubscribe","params":[id]}));
        assert_eq!(ws.answer(3)["result"], json!(false));
        // Nothing more arrives for it: the next text frame is the answer to a later call.
        ws.send_json(&json!({"jsonrpc":"2.0","id":4,"method":"eth_chainId"}));
        loop {
            let (op, payload) = ws.recv().unwrap();
            if op == 1 {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                if v.get("method").is_some() {
                    continue; // notifications already queued before the unsubscribe
                }
                assert_eq!(v["id"], json!(4));
                break;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_through_alloy_on_io_uring() {
    subscriptions_through_alloy("uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_through_alloy_on_epoll() {
    subscriptions_through_alloy("epoll").await;
}

#[test]
fn slow_subscriber_is_cut_off_while_others_keep_receiving() {
    for backend in BACKENDS {
        let node = node(backend, &["--max-outbound-bytes", "65536", "--metrics-port", "0"]);
        let metrics = metrics_url(&node);
        // The slow client: a tiny receive buffer, 128 miniBlocks subscriptions, never reads.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr(&node).parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        let mut slow = RawWs::connect_with(socket.into());
        for i in 0..128u64 {
            slow.send_json(
                &json!({"jsonrpc":"2.0","id":i,"method":"eth_subscribe","params":["miniBlocks"]}),
            );
        }
        // The healthy client.
        let mut fast = RawWs::connect(&addr(&node));
        fast.send_json(
            &json!({"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["miniBlocks"]}),
        );
        fast.answer(1);
        let started = Instant::now();
        while metric(&metrics, "strobe_net_errors_total{kind=\"slow_consumer\"}") == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{backend}: slow consumer never cut off"
            );
            // The healthy client keeps up meanwhile.
            assert_eq!(fast.recv().expect("fast client still connected").0, 1);
        }
        // The slow one gets close 1008 after the frames already on their way, then the socket
        // closes.
        slow.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(
            slow.close_code(),
            Some(1008),
            "{backend}: slow subscriber not closed with 1008"
        );
        assert!(slow.recv().is_none(), "{backend}: socket still open after the close frame");
        // Others still receive, tick after tick.
        for _ in 0..20 {
            assert_eq!(fast.recv().expect("fast client still connected").0, 1);
        }
    }
}

#[test]
fn binary_ingress_and_feed_round_trip() {
    for backend in BACKENDS {
        let node = node(backend, &[]);
        let mut feed = BinaryClient::connect(addr(&node).parse().unwrap()).unwrap();
        feed.subscribe_mini_blocks(true).unwrap();
        feed.send(&ClientMsg::Ping(42)).unwrap();
        let mut client = BinaryClient::connect(addr(&node).parse().unwrap()).unwrap();
        let to = address!("0x00000000000000000000000000000000000000c1");
        let raw = transfer(DEV_KEY_1, 0, to, 5_000);
        client.queue_submit(7, &raw, true);
        // A second submission without waiting, and one that cannot decode.
        client.queue_submit(8, &transfer(DEV_KEY_1, 1, to, 1), false);
        client.queue_submit(9, b"\x02garbage", false);
        client.flush().unwrap();
        let mut accepted = Vec::new();
        let mut receipt = None;
        let mut rejected = None;
        while receipt.is_none() || accepted.len() < 2 || rejected.is_none() {
            match client.recv().unwrap().expect("open") {
                ServerMsg::Accepted { tag, hash } => accepted.push((tag, hash)),
                ServerMsg::Receipt { tag, receipt: r } => receipt = Some((tag, r)),
                ServerMsg::Rejected { tag, code, message } => rejected = Some((tag, code, message)),
                other => panic!("{backend}: unexpected {other:?}"),
            }
        }
        let (tag, r) = receipt.unwrap();
        assert_eq!(tag, 7);
        assert!(r.success);
        assert_eq!(r.gas_used, 21_000);
        let hash7 = accepted.iter().find(|(t, _)| *t == 7).unwrap().1;
        assert_eq!(r.hash, hash7);
        let (tag, code, message) = rejected.unwrap();
        assert_eq!((tag, code), (9, -32000), "{message}");
        // The same receipt over JSON-RPC.
        let rpc_receipt = common::rpc(&node.url, "eth_getTransactionReceipt", json!([r.hash]));
        assert_eq!(rpc_receipt["result"]["blockNumber"], json!(format!("{:#x}", r.block_number)));

        // The feed: a pong, then mini-blocks; the one holding our transfer says what changed.
        let mut saw_pong = false;
        let frame = loop {
            match feed.recv().unwrap().expect("open") {
                ServerMsg::Pong(42) => saw_pong = true,
                ServerMsg::MiniBlock(m) if m.receipts.iter().any(|x| x.hash == r.hash) => break m,
                ServerMsg::MiniBlock(_) => {}
                other => panic!("{backend}: unexpected {other:?}"),
            }
        };
        assert!(saw_pong);
        assert_eq!(frame.number, r.mini_block_number);
        let change = frame.changes.iter().find(|c| c.address == to).expect("recipient changed");
        let hash8 = accepted.iter().find(|(t, _)| *t == 8).unwrap().1;
        let with_8 = frame.receipts.iter().any(|x| x.hash == hash8);
        assert_eq!(change.balance, U256::from(if with_8 { 5_001 } else { 5_000 }));
        let sender = frame
            .changes
            .iter()
            .find(|c| c.address == signer(DEV_KEY_1).address())
            .expect("sender changed");
        let rpc_balance = common::rpc(
            &node.url,
            "eth_getBalance",
            json!([signer(DEV_KEY_1).address(), format!("{:#x}", frame.block_number)]),
        );
        let _ = rpc_balance; // the block may hold later changes; the nonce is exact:
        assert!(sender.nonce >= 1);

        // Garbage gets an error frame and a close.
        let mut bad = BinaryClient::connect(addr(&node).parse().unwrap()).unwrap();
        bad.send_raw(&[5, 0, 0, 0, 0x7F, 1, 2, 3, 4]).unwrap();
        match bad.recv().unwrap() {
            Some(ServerMsg::Error { code, .. }) => assert_eq!(code, 2),
            other => panic!("{backend}: expected an error frame, got {other:?}"),
        }
        assert!(bad.recv().unwrap().is_none(), "closed after the error");
        let mut huge = BinaryClient::connect(addr(&node).parse().unwrap()).unwrap();
        huge.send_raw(&(2u32 << 20).to_le_bytes()).unwrap();
        match huge.recv().unwrap() {
            Some(ServerMsg::Error { code, .. }) => assert_eq!(code, 1),
            other => panic!("{backend}: expected an error frame, got {other:?}"),
        }
    }
}

/// Sends `request` on a fresh connection and returns the status code of the answer.
fn status_of(addr: &str, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn every_limit_is_enforced_and_counted() {
    for backend in BACKENDS {
        let node = node(
            backend,
            &[
                "--max-connections",
                "40",
                "--request-timeout",
                "1s",
                "--idle-timeout",
                "3s",
                "--metrics-port",
                "0",
            ],
        );
        let metrics = metrics_url(&node);
        let a = addr(&node);
        let count =
            |name: &str| metric(&metrics, &format!("strobe_net_errors_total{{kind=\"{name}\"}}"));

        // 431: a head over 16 KiB.
        let mut big_head = b"POST / HTTP/1.1\r\nX-Pad: ".to_vec();
        big_head.extend(std::iter::repeat_n(b'a', 20 * 1024));
        big_head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&a, &big_head), 431, "{backend}");
        assert_eq!(count("header_too_large"), 1);

        // 413: a body over 5 MiB (refused from its Content-Length).
        let req = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 6 << 20);
        assert_eq!(status_of(&a, req.as_bytes()), 413, "{backend}");
        assert_eq!(count("body_too_large"), 1);

        // A batch over 1,000 calls: one -32600 error.
        let batch: Vec<Value> =
            (0..1001).map(|i| json!({"jsonrpc":"2.0","id":i,"method":"eth_chainId"})).collect();
        let (code, body) = common::post_raw(&node.url, Value::Array(batch).to_string().as_bytes());
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], json!(-32600), "{body}");
        assert_eq!(count("batch_too_large"), 1);

        // eth_subscribe over HTTP: geth's "notifications not supported".
        let v = common::rpc(&node.url, "eth_subscribe", json!(["newHeads"]));
        assert_eq!(v["error"]["code"], json!(-32601));
        assert_eq!(v["error"]["message"], json!("notifications not supported"));

        // Slowloris: half a request, then silence: 408 after the request timeout.
        let started = Instant::now();
        assert_eq!(
            status_of(&a, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a"),
            408,
            "{backend}"
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(count("request_timeout"), 1);

        // Idle keep-alive connections are closed after the idle timeout.
        let mut idle = TcpStream::connect(&a).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
        assert!(started.elapsed() >= Duration::from_secs(2), "{backend}: closed too early");
        assert!(count("idle_timeout") >= 1);

        // WebSocket: a frame over 5 MiB is refused with 1009 before its payload arrives.
        let mut ws = RawWs::connect(&a);
        let mut head = vec![0x81, 0xFF];
        head.extend_from_slice(&(6u64 << 20).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        ws.stream.write_all(&head).unwrap();
        assert_eq!(ws.close_code(), Some(1009), "{backend}");
        assert_eq!(count("ws_too_big"), 1);
        // An unmasked client frame: 1002.
        let mut ws = RawWs::connect(&a);
        ws.send_frame(true, 1, b"{}", false);
        assert_eq!(ws.close_code(), Some(1002), "{backend}");
        // Invalid UTF-8 in a text message: 1007.
        let mut ws = RawWs::connect(&a);
        ws.send_frame(true, 1, &[0xff, 0xfe], true);
        assert_eq!(ws.close_code(), Some(1007), "{backend}");
        // Fragmented messages reassemble; pings are answered; close is echoed.
        let mut ws = RawWs::connect(&a);
        let msg = json!({"jsonrpc":"2.0","id":5,"method":"eth_chainId"}).to_string();
        let (p1, p2) = msg.as_bytes().split_at(10);
        ws.send_frame(false, 1, p1, true);
        ws.send_frame(true, 9, b"hi", true);
        assert_eq!(ws.recv().unwrap(), (10, b"hi".to_vec()));
        ws.send_frame(true, 0, p2, true);
        assert_eq!(ws.answer(5)["result"], json!("0x7a69"));
        ws.send_frame(true, 8, &1000u16.to_be_bytes(), true);
        assert_eq!(ws.close_code(), Some(1000));
        // A call and a Close in one write: the answer comes first, nothing after the Close.
        let mut ws = RawWs::connect(&a);
        let call = json!({"jsonrpc":"2.0","id":6,"method":"eth_chainId"}).to_string();
        ws.send_frame(true, 1, call.as_bytes(), true);
        ws.send_frame(true, 8, &1000u16.to_be_bytes(), true);
        assert_eq!(ws.answer(6)["result"], json!("0x7a69"), "{backend}");
        assert_eq!(ws.close_code(), Some(1000), "{backend}");
        assert!(ws.recv().is_none(), "{backend}: a frame after the Close");

        // Subscriptions per connection: the 129th is refused with -32005.
        let mut ws = RawWs::connect(&a);
        for i in 0..128u64 {
            ws.send_json(
                &json!({"jsonrpc":"2.0","id":i,"method":"eth_subscribe","params":["newHeads"]}),
            );
            assert!(ws.answer(i)["result"].is_string());
        }
        ws.send_json(
            &json!({"jsonrpc":"2.0","id":999,"method":"eth_subscribe","params":["newHeads"]}),
        );
        assert_eq!(ws.answer(999)["error"]["code"], json!(-32005));
        assert_eq!(count("subscription_limit"), 1);
        drop(ws);

        // Connections: 40 per network thread; past that, 503. First every connection above must
        // be gone (closes are asynchronous; a WebSocket the server closed may wait up to 2 s for
        // the client's Close).
        let started = Instant::now();
        while metric(&metrics, "strobe_net_connections_open") > 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "{backend}: connections linger");
            std::thread::sleep(Duration::from_millis(50));
        }
        let conns: Vec<TcpStream> = (0..45).map(|_| TcpStream::connect(&a).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let mut refused = 0;
        for mut s in conns {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                if n > 0 {
                    assert!(
                        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"),
                        "{backend}"
                    );
                    refused += 1;
                }
            }
        }
        assert!((5..=6).contains(&refused), "{backend}: {refused} of 45 refused at a limit of 40");
        assert!(count("connection_limit") >= 5);
        // The queue gauges are there (and empty with no load).
        assert_eq!(metric(&metrics, "strobe_recovery_queue_depth"), 0);
        assert_eq!(metric(&metrics, "strobe_intake_queue_depth"), 0);
    }
}

#[test]
fn http_pipelining_half_close_connection_close_and_head() {
    for backend in BACKENDS {
        let node = node(backend, &[]);
        let a = addr(&node);
        let one = |id: u32, extra: &str| {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let read_all = |s: &mut TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        };

        // 200 pipelined requests in one write (past the 64 answered at a time), then a
        // half-close: every one is answered, in order, and then the server closes.
        let mut s = TcpStream::connect(&a).unwrap();
        let all: String = (0..200).map(|i| one(i, "")).collect();
        s.write_all(all.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let started = Instant::now();
        let text = read_all(&mut s);
        assert!(started.elapsed() < Duration::from_secs(3), "{backend}: answers stalled");
        let ids: Vec<u64> = text
            .split("\r\n\r\n")
            .filter_map(|part| serde_json::from_str::<Value>(part.split("HTTP/1.1").next()?).ok())
            .filter_map(|v| v["id"].as_u64())
            .collect();
        assert_eq!(ids, (0..200).collect::<Vec<u64>>(), "{backend}");

        // After a `Connection: close` request, a pipelined one behind it is not served.
        let mut s = TcpStream::connect(&a).unwrap();
        s.write_all(format!("{}{}", one(1, "Connection: close\r\n"), one(2, "")).as_bytes())
            .unwrap();
        let text = read_all(&mut s);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{backend}: {text}");
        assert!(text.contains(r#""id":1"#) && !text.contains(r#""id":2"#));

        // HEAD gets the head a GET would, and no body.
        let mut s = TcpStream::connect(&a).unwrap();
        s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let text = read_all(&mut s);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"),
            "{backend}: {text:?}"
        );
    }
}

/// Garbage on the socket, in every protocol state (raw, after a WebSocket upgrade, after the
/// binary preface), split at random points and sent over many connections at once: the server
/// answers or closes each connection, never crashes, and still serves requests afterwards.
#[test]
fn garbage_in_every_protocol_state_never_takes_the_server_down() {
    // A small deterministic generator: the test needs variety, not a dependency.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for backend in BACKENDS {
        let node = node(backend, &["--request-timeout", "1s"]);
        let a = addr(&node);
        let mut conns = Vec::new();
        for i in 0..150 {
            let len = (next() % 3000) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Seed some of it with the start of each protocol so the parsers get past the door.
            let door: &[u8] = match i % 5 {
                0 => b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n",
                1 => b"STROBE\x00\x01",
                2 => b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                3 => b"STROBE\x00\x01\x05\x00\x00\x00\x03",
                _ => b"",
            };
            junk.splice(0..0, door.iter().copied());
            let mut s = TcpStream::connect(&a).unwrap();
            s.set_nodelay(true).unwrap();
            // Sent in pieces, so frames and requests straddle reads.
            let mut at = 0;
            while at < junk.len() {
                let n = ((next() % 700) as usize + 1).min(junk.len() - at);
                if s.write_all(&junk[at..at + n]).is_err() {
                    break; // the server already closed it: fine
                }
                at += n;
            }
            conns.push(s);
        }
        // Every connection ends within the request timeout (plus slack) or is answered.
        for mut s in conns {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let v = common::rpc(&node.url, "eth_chainId", json!([]));
        assert_eq!(v["result"], json!("0x7a69"), "{backend}: the server still answers");
    }
}
