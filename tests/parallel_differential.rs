//! Block-STM must produce exactly what sequential revm produces: every receipt field, every log,
//! every gas figure and the full state diff, at every thread count.
//!
//! Blocks are generated over a small set of accounts so that transactions conflict heavily:
//! ether transfers (also to and from the beneficiary), ERC-20 transfers (some overdrawn, so they
//! revert), swaps on two shared Uniswap-v2-style pools, CREATE and CREATE2 (repeated salts fail),
//! self-destruct in the creating transaction and later, reads of the beneficiary's balance,
//! gas-burning loops that run out of gas, reverts, precompile calls, ether forwarded through a
//! contract, and transactions with wrong nonces or unaffordable value (not includable).

use alloy_primitives::{keccak256, Address, B256, U256};
use proptest::prelude::*;
use revm::{context::TxEnv, primitives::hardfork::SpecId};
use std::sync::OnceLock;
use strobe_engine::{exec::execute_sequential, parallel::ParallelExecutor};
use strobe_tools::workload::World;

const ACCOUNTS: usize = 6;
const THREADS: [usize; 4] = [1, 2, 3, 8];

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::new(ACCOUNTS))
}

fn executors() -> &'static [ParallelExecutor] {
    static EXECUTORS: OnceLock<Vec<ParallelExecutor>> = OnceLock::new();
    EXECUTORS.get_or_init(|| {
        THREADS.iter().map(|t| ParallelExecutor::new(*t).expect("execution threads")).collect()
    })
}

#[derive(Clone, Debug)]
enum Op {
    Transfer { from: usize, to: usize, value: u64 },
    Erc20 { from: usize, token: usize, to: usize, value: u128 },
    Swap { from: usize, pair: usize, zero_for_one: bool, amount: u128 },
    Create { from: usize, salt: Option<u8>, stored: u64, value: u64 },
    CreateAndDestroy { from: usize, value: u64 },
    DestroyLast { from: usize },
    ReadCoinbase { from: usize },
    Burn { from: usize, rounds: u64, gas: u64 },
    Fail { from: usize, code: u64 },
    Precompiles { from: usize, seed: u64 },
    Forward { from: usize, to: usize, value: u64 },
    WrongNonce { from: usize, ahead: bool },
    Unaffordable { from: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let from = 0..ACCOUNTS;
    // Targets: the accounts, the beneficiary (ACCOUNTS) and a fresh address (ACCOUNTS + 1).
    let to = 0..ACCOUNTS + 2;
    prop_oneof![
        4 => (from.clone(), to.clone(), 0u64..1_000_000).prop_map(|(from, to, value)| Op::Transfer { from, to, value }),
        4 => (from.clone(), 0..2usize, to.clone(), prop_oneof![0u128..1_000_000, Just(u128::MAX / 2)])
            .prop_map(|(from, token, to, value)| Op::Erc20 { from, token, to, value }),
        4 => (from.clone(), 0..2usize, any::<bool>(), prop_oneof![1u128..10u128.pow(20), Just(0u128)])
            .prop_map(|(from, pair, zero_for_one, amount)| Op::Swap { from, pair, zero_for_one, amount }),
        2 => (from.clone(), proptest::option::of(0u8..3), 0u64..3, 0u64..1000)
            .prop_map(|(from, salt, stored, value)| Op::Create { from, salt, stored, value }),
        1 => (from.clone(), 0u64..1000).prop_map(|(from, value)| Op::CreateAndDestroy { from, value }),
        1 => from.clone().prop_map(|from| Op::DestroyLast { from }),
        2 => from.clone().prop_map(|from| Op::ReadCoinbase { from }),
        1 => (from.clone(), 0u64..40, 25_000u64..400_000).prop_map(|(from, rounds, gas)| Op::Burn { from, rounds, gas }),
        1 => (from.clone(), 0u64..2).prop_map(|(from, code)| Op::Fail { from, code }),
        1 => (from.clone(), any::<u64>()).prop_map(|(from, seed)| Op::Precompiles { from, seed }),
        1 => (from.clone(), to, 0u64..1000).prop_map(|(from, to, value)| Op::Forward { from, to, value }),
        1 => (from.clone(), any::<bool>()).prop_map(|(from, ahead)| Op::WrongNonce { from, ahead }),
        1 => from.prop_map(|from| Op::Unaffordable { from }),
    ]
}

fn target(w: &World, beneficiary: Address, to: usize) -> Address {
    match to {
        i if i < ACCOUNTS => w.accounts[i],
        i if i == ACCOUNTS => beneficiary,
        _ => Address::repeat_byte(0x5a),
    }
}

fn build(ops: &[Op], beneficiary: Address) -> (World, Vec<TxEnv>) {
    let mut w = world().clone();
    w.set_beneficiary(beneficiary);
    let txs = ops
        .iter()
        .map(|op| match *op {
            Op::Transfer { from, to, value } => {
                let to = target(&w, beneficiary, to);
                w.transfer(from, to, U256::from(value))
            }
            Op::Erc20 { from, token, to, value } => {
                let to = target(&w, beneficiary, to);
                w.erc20_transfer(from, token, to, U256::from(value))
            }
            Op::Swap { from, pair, zero_for_one, amount } => {
                w.swap(from, pair, zero_for_one, U256::from(amount))
            }
            Op::Create { from, salt, stored, value } => {
                let salt = salt.map(B256::with_last_byte);
                w.create(from, salt, U256::from(stored), U256::from(value))
            }
            Op::CreateAndDestroy { from, value } => w.create_and_destroy(from, U256::from(value)),
            Op::DestroyLast { from } => w.destroy_last(from),
            Op::ReadCoinbase { from } => w.read_coinbase(from),
            Op::Burn { from, rounds, gas } => w.burn(from, rounds, gas),
            Op::Fail { from, code } => w.fail(from, code),
            Op::Precompiles { from, seed } => w.precompiles(from, keccak256(seed.to_be_bytes())),
            Op::Forward { from, to, value } => {
                let to = target(&w, beneficiary, to);
                w.forward(from, to, U256::from(value))
            }
            Op::WrongNonce { from, ahead } => {
                let next = w.nonce(from);
                let nonce = if ahead { next + 5 } else { next.wrapping_sub(1) };
                w.call_with_nonce(from, nonce, Address::repeat_byte(1), U256::from(1), 21_000)
            }
            Op::Unaffordable { from } => {
                let next = w.nonce(from);
                w.call_with_nonce(
                    from,
                    next,
                    Address::repeat_byte(1),
                    U256::MAX / U256::from(2),
                    21_000,
                )
            }
        })
        .collect();
    (w, txs)
}

/// Runs one block under `spec`: Prague (the chain's rules) or Shanghai, where SELFDESTRUCT still
/// deletes any contract, so storage wipes of live contracts are exercised too.
fn check(ops: &[Op], beneficiary_is_sender: bool, spec: SpecId) -> Result<(), TestCaseError> {
    let beneficiary =
        if beneficiary_is_sender { world().accounts[0] } else { Address::repeat_byte(0xbe) };
    let (w, txs) = build(ops, beneficiary);
    let mut env = w.env();
    env.cfg.spec = spec;
    let sequential = w.with_db(|db| execute_sequential(db, &env, &txs));
    for executor in executors() {
        let (parallel, _) = w.with_db(|db| executor.execute_block_stm(db, &env, &txs));
        prop_assert_eq!(
            &parallel,
            &sequential,
            "Block-STM with {} threads differs from sequential",
            executor.threads()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn block_stm_equals_sequential(
        ops in prop::collection::vec(op(), 1..48),
        beneficiary_is_sender in any::<bool>(),
        shanghai in any::<bool>(),
    ) {
        let spec = if shanghai { SpecId::SHANGHAI } else { SpecId::PRAGUE };
        check(&ops, beneficiary_is_sender, spec)?;
    }
}

/// The generated blocks really exercise the interesting paths: failures of each kind and
/// successes are all present in a fixed, representative block.
#[test]
fn generated_blocks_cover_failures_and_successes() {
    let ops: Vec<Op> = vec![
        Op::Transfer { from: 0, to: 1, value: 5 },
        Op::Swap { from: 1, pair: 0, zero_for_one: true, amount: 10u128.pow(18) },
        Op::Swap { from: 2, pair: 0, zero_for_one: false, amount: 10u128.pow(18) },
        Op::Create { from: 3, salt: Some(1), stored: 1, value: 0 },
        Op::Create { from: 4, salt: Some(1), stored: 1, value: 0 },
        Op::CreateAndDestroy { from: 5, value: 7 },
        Op::DestroyLast { from: 0 },
        Op::ReadCoinbase { from: 1 },
        Op::Burn { from: 2, rounds: 30, gas: 40_000 },
        Op::Fail { from: 3, code: 1 },
        Op::Precompiles { from: 4, seed: 9 },
        Op::Erc20 { from: 5, token: 1, to: 0, value: u128::MAX / 2 },
        Op::WrongNonce { from: 0, ahead: true },
        Op::Unaffordable { from: 1 },
    ];
    let (w, txs) = build(&ops, Address::repeat_byte(0xbe));
    let out = w.execute_sequential(&txs);
    let status: Vec<&str> = out
        .results
        .iter()
        .map(|r| match r {
            Ok(e) if e.success => "ok",
            Ok(e) if e.halt.is_some() => "halt",
            Ok(_) => "revert",
            Err(_) => "invalid",
        })
        .collect();
    assert_eq!(
        status,
        [
            "ok", "ok", "ok", "ok", "revert", "ok", "ok", "ok", "halt", "revert", "ok", "revert",
            "invalid", "invalid"
        ]
    );
    for spec in [SpecId::PRAGUE, SpecId::SHANGHAI] {
        check(&ops, false, spec).unwrap();
        check(&ops, true, spec).unwrap();
    }
}

/// Before Cancun a destroyed contract's storage is wiped; a CREATE2 at the same address (same
/// salt, same constructor argument) then starts from zero, and a stale slot would make the
/// constructor's SSTORE a cheap no-op instead of a fresh write.
#[test]
fn storage_wipe_then_recreate_at_the_same_address() {
    let ops = vec![
        Op::Create { from: 0, salt: Some(2), stored: 5, value: 0 },
        Op::DestroyLast { from: 1 },
        Op::Create { from: 2, salt: Some(2), stored: 5, value: 0 },
        Op::Create { from: 3, salt: Some(2), stored: 5, value: 0 },
    ];
    let (w, txs) = build(&ops, Address::repeat_byte(0xbe));
    let mut env = w.env();
    env.cfg.spec = SpecId::SHANGHAI;
    let out = w.with_db(|db| execute_sequential(db, &env, &txs));
    let ok: Vec<bool> = out.results.iter().map(|r| matches!(r, Ok(e) if e.success)).collect();
    assert_eq!(ok, [true, true, true, false], "recreation succeeds once, then collides");
    check(&ops, false, SpecId::SHANGHAI).unwrap();
}
