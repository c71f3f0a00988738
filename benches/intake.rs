//! Intake costs per transaction, each against a baseline measured in the same run:
//! sender recovery with libsecp256k1 (ours) vs alloy's k256 path, and sequential execution of a
//! mini-block of transfers on revm.

#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use alloy::{
    consensus::{transaction::SignerRecoverable, SignableTransaction, TxEip1559, TxEnvelope},
    eips::eip2718::{Decodable2718, Encodable2718},
    network::TxSignerSync,
    primitives::{Address, TxKind, U256},
    signers::local::PrivateKeySigner,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use strobe_engine::{
    config::{ChainConfig, Genesis, GenesisAccount},
    exec::{execute_sequential, tx_envs, BlockContext},
    storage::{MemoryStore, StateStore, ViewDb},
    tx::{decode_and_recover, IntakeRules, RecoveredTx},
};

fn signed(key: &PrivateKeySigner, nonce: u64) -> Vec<u8> {
    let mut tx = TxEip1559 {
        chain_id: 31337,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(Address::repeat_byte(0x42)),
        value: U256::from(1),
        access_list: Default::default(),
        input: Default::default(),
    };
    let sig = key.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
}

fn rules() -> IntakeRules {
    IntakeRules { chain_id: 31337, block_gas_limit: 1 << 40, base_fee: 7, min_priority_fee_wei: 1 }
}

fn recovery(c: &mut Criterion) {
    let key = PrivateKeySigner::random();
    let raw = signed(&key, 0);
    let mut g = c.benchmark_group("sender_recovery");
    g.bench_function("strobe_secp256k1_decode_and_recover", |b| {
        b.iter(|| decode_and_recover(std::hint::black_box(&raw), &rules()).unwrap())
    });
    g.bench_function("baseline_alloy_k256_decode_and_recover", |b| {
        b.iter(|| {
            let tx = TxEnvelope::decode_2718(&mut std::hint::black_box(raw.as_slice())).unwrap();
            tx.recover_signer().unwrap()
        })
    });
    g.finish();
}

fn execution(c: &mut Criterion) {
    const SENDERS: usize = 100;
    const PER_SENDER: u64 = 10;
    let keys: Vec<PrivateKeySigner> = (0..SENDERS).map(|_| PrivateKeySigner::random()).collect();
    let mut store = MemoryStore::new();
    let genesis = Genesis {
        alloc: keys
            .iter()
            .map(|k| {
                let balance = U256::from(10u128.pow(21));
                (k.address(), GenesisAccount { balance, ..Default::default() })
            })
            .collect(),
        ..Default::default()
    };
    let diff = strobe_storage_diff(&genesis);
    store.apply(&diff).unwrap();
    let txs: Vec<RecoveredTx> = (0..PER_SENDER)
        .flat_map(|n| keys.iter().map(move |k| (k, n)))
        .map(|(k, n)| decode_and_recover(&signed(k, n), &rules()).unwrap())
        .collect();
    let ctx = BlockContext {
        number: 1,
        timestamp: 1,
        beneficiary: Address::ZERO,
        gas_limit: ChainConfig::default().block_gas_limit,
        base_fee: 7,
        prevrandao: Default::default(),
        chain_id: 31337,
    };
    let env = ctx.exec_env();
    let view = store.view();
    let no_hash = |_n: u64| Default::default();
    let mut g = c.benchmark_group("mini_block_execution");
    g.throughput(criterion::Throughput::Elements(txs.len() as u64));
    g.bench_function("sequential_revm_1000_transfers", |b| {
        b.iter_batched(
            || txs.iter().collect::<Vec<_>>(),
            |refs| {
                execute_sequential(
                    ViewDb { view: &*view, block_hash: &no_hash },
                    &env,
                    &tx_envs(&refs),
                )
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn strobe_storage_diff(genesis: &Genesis) -> strobe_engine::storage::StateDiff {
    let mut accounts: Vec<_> = genesis
        .alloc
        .iter()
        .map(|(a, g)| strobe_engine::storage::AccountChange {
            address: *a,
            info: Some(strobe_engine::storage::AccountState {
                nonce: 0,
                balance: g.balance,
                code_hash: alloy::primitives::KECCAK256_EMPTY,
            }),
            storage_cleared: false,
            storage: Vec::new(),
        })
        .collect();
    accounts.sort_by_key(|a| a.address);
    strobe_engine::storage::StateDiff { accounts, codes: Vec::new() }
}

criterion_group!(benches, recovery, execution);
criterion_main!(benches);
