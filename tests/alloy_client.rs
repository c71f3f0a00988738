//! End-to-end tests with alloy's provider (an independent Ethereum client) against `strobe dev`.

mod common;

use alloy::{
    consensus::{SignableTransaction, TxEnvelope, TxLegacy},
    eips::{eip2718::Encodable2718, eip7702::Authorization},
    network::{EthereumWallet, TransactionBuilder, TransactionBuilder7702, TxSignerSync},
    primitives::{address, Address, Bytes, TxKind, U256},
    providers::{Provider, ProviderBuilder},
    rpc::types::{Filter, TransactionRequest},
    signers::{local::PrivateKeySigner, SignerSync},
    sol,
    sol_types::{SolEvent, SolValue},
};
use common::{DevNode, DEV_KEY_0, DEV_KEY_1};
use std::time::Duration;

sol! {
    #[sol(rpc)]
    interface TestToken {
        function balanceOf(address) external view returns (uint256);
        function transfer(address to, uint256 amount) external returns (bool);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }
}

const GWEI: u128 = 1_000_000_000;

fn signer(key: &str) -> PrivateKeySigner {
    key.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tx_type_transfers_value() {
    let node = DevNode::start(&[]);
    let s0 = signer(DEV_KEY_0);
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(s0.clone()))
        .connect_http(node.url.parse().unwrap());
    assert_eq!(provider.get_chain_id().await.unwrap(), 31337);
    let to = address!("0x00000000000000000000000000000000000000aa");

    // EIP-1559, EIP-2930 and EIP-155 legacy, built and signed by alloy's wallet filler.
    let base = TransactionRequest::default().with_to(to).with_value(U256::from(1000));
    let reqs = [
        base.clone(),
        base.clone().with_gas_price(2 * GWEI).with_access_list(Default::default()),
        base.clone().with_gas_price(2 * GWEI),
    ];
    let mut expected = U256::ZERO;
    for req in reqs {
        let before = provider.get_balance(s0.address()).await.unwrap();
        let receipt = provider.send_transaction(req).await.unwrap().get_receipt().await.unwrap();
        assert!(receipt.status());
        expected += U256::from(1000);
        let after = provider.get_balance(s0.address()).await.unwrap();
        let fee = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
        assert_eq!(before - after, fee + U256::from(1000), "sender pays value + gas * price");
    }
    assert_eq!(provider.get_balance(to).await.unwrap(), expected);

    // EIP-7702: account 1 delegates to `to`'s address (any address works for the code check).
    let s1 = signer(DEV_KEY_1);
    let auth = Authorization { chain_id: U256::from(31337), address: to, nonce: 0 };
    let sig = s1.sign_hash_sync(&auth.signature_hash()).unwrap();
    let signed_auth = auth.into_signed(sig);
    let req = TransactionRequest::default()
        .with_to(s1.address())
        .with_authorization_list(vec![signed_auth]);
    let receipt = provider.send_transaction(req).await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());
    let code = provider.get_code_at(s1.address()).await.unwrap();
    let mut want = vec![0xef, 0x01, 0x00];
    want.extend_from_slice(to.as_slice());
    assert_eq!(code.to_vec(), want);

    // Pre-EIP-155 legacy (no chain id), signed by hand (after the wallet's own sends, whose
    // nonces alloy caches).
    let nonce = provider.get_transaction_count(s0.address()).pending().await.unwrap();
    let mut legacy = TxLegacy {
        chain_id: None,
        nonce,
        gas_price: 2 * GWEI,
        gas_limit: 21_000,
        to: TxKind::Call(to),
        value: U256::from(7),
        input: Bytes::new(),
    };
    let sig = s0.sign_transaction_sync(&mut legacy).unwrap();
    let raw = TxEnvelope::from(legacy.into_signed(sig)).encoded_2718();
    let receipt = provider.send_raw_transaction_sync(&raw).await.unwrap();
    assert!(receipt.status());
    assert_eq!(provider.get_balance(to).await.unwrap(), expected + U256::from(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erc20_from_solidity_and_logs() {
    let node = DevNode::start(&[]);
    let s0 = signer(DEV_KEY_0);
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(s0.clone()))
        .connect_http(node.url.parse().unwrap());
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = common::compile_solidity(&root.join("tests/contracts/TestToken.sol"));
    let bytecode: Bytes = out["TestToken"]["bytecode"].as_str().unwrap().parse().unwrap();
    let args = ("Test".to_string(), "TST".to_string(), U256::from(10).pow(U256::from(24)))
        .abi_encode_params();
    let mut code = bytecode.to_vec();
    code.extend_from_slice(&args);
    let deploy = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let receipt = provider.send_transaction(deploy).await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());
    let token_addr: Address = receipt.contract_address.expect("contract address");
    let token = TestToken::new(token_addr, &provider);
    let supply = token.balanceOf(s0.address()).call().await.unwrap();
    assert!(supply > U256::ZERO);

    let bob = address!("0x00000000000000000000000000000000000000b0");
    let r =
        token.transfer(bob, U256::from(1234)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(r.status());
    assert_eq!(token.balanceOf(bob).call().await.unwrap(), U256::from(1234));
    assert_eq!(token.balanceOf(s0.address()).call().await.unwrap(), supply - U256::from(1234));

    // The receipt's log decodes as Transfer(s0, bob, 1234); eth_getLogs finds it by topic.
    let log = r.inner.logs().iter().find(|l| l.address() == token_addr).expect("log");
    let ev = TestToken::Transfer::decode_log_data(log.data()).unwrap();
    assert_eq!((ev.from, ev.to, ev.value), (s0.address(), bob, U256::from(1234)));
    let filter = Filter::new()
        .address(token_addr)
        .event_signature(TestToken::Transfer::SIGNATURE_HASH)
        .topic2(bob.into_word())
        .from_block(0);
    let logs = provider.get_logs(&filter).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].transaction_hash, Some(r.transaction_hash));

    // A transfer above the balance reverts with the decoded reason.
    let err = token.transfer(bob, supply * U256::from(2)).call().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("insufficient balance"), "{text}");

    // After the EVM block seals the receipt carries the block hash, which names a real block.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let sealed = provider.get_transaction_receipt(r.transaction_hash).await.unwrap().unwrap();
    let hash = sealed.block_hash.expect("sealed block hash");
    let block = provider.get_block_by_hash(hash).await.unwrap().expect("block");
    assert_eq!(block.header.number, sealed.block_number.unwrap());
    assert!(block.transactions.hashes().any(|h| h == r.transaction_hash));
}

#[test]
fn sigterm_and_sigint_stop_within_a_second() {
    for signal in [15, 2] {
        let node = DevNode::start(&[]);
        std::thread::sleep(Duration::from_millis(200));
        let (status, took) = node.stop_with(signal);
        assert!(status.success(), "exit status {status:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}
