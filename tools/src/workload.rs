//! Execution workloads: a funded state with ERC-20 tokens, Uniswap-v2-style pools, a factory and
//! a probe contract deployed, and builders of transaction lists over it.
//!
//! The contracts are `tools/contracts/Workload.sol`, compiled into `Workload.json` (creation
//! bytecode) so that nothing here needs a compiler. Deployment runs through the engine's own
//! sequential executor, so the resulting state is exactly what a chain would hold.

use alloy_primitives::{keccak256, Address, Bytes, TxKind, B256, U256};
use alloy_sol_types::{sol, SolCall, SolValue};
use revm::context::TxEnv;
use std::{collections::HashMap, sync::Arc};
use strobe_engine::{
    exec::{execute_sequential, BlockContext, BlockOutput, ExecEnv},
    storage::{AccountChange, AccountState, MemoryStore, StateDiff, StateStore, StateView, ViewDb},
};

sol! {
    function mint(address to, uint256 value);
    function transfer(address to, uint256 value) returns (bool);
    function approve(address spender, uint256 value) returns (bool);
    function addLiquidity(uint256 amount0, uint256 amount1);
    function swap(bool zeroForOne, uint256 amountIn) returns (uint256);
    function create(uint256 v) returns (address);
    function create2(bytes32 salt, uint256 v) returns (address);
    function createAndDestroy(uint256 v);
    function destroyLast();
    function readCoinbase();
    function burn(uint256 rounds);
    function fail(uint256 code);
    function precompiles(bytes32 data);
    function forward(address to);
}

/// Chain id of workload transactions.
pub const CHAIN_ID: u64 = 31337;
/// Base fee of the workload block (1 gwei).
pub const BASE_FEE: u64 = 1_000_000_000;
/// Priority fee every workload transaction pays (1 gwei), so the beneficiary earns fees.
pub const TIP: u128 = 1_000_000_000;
/// Ether each account starts with (1,000,000 ETH).
pub const START_BALANCE: u128 = 1_000_000 * 10u128.pow(18);
/// Tokens of each kind each account starts with.
pub const START_TOKENS: u128 = 10u128.pow(30);

/// Creation code of workload contract `name` (`Token`, `Pair`, `Factory`, …).
pub fn creation_code(name: &str) -> Bytes {
    static JSON: &str = include_str!("../contracts/Workload.json");
    let map: HashMap<String, Bytes> =
        serde_json::from_str(JSON).expect("Workload.json is valid (committed build output)");
    map.get(name).cloned().unwrap_or_else(|| panic!("Workload.json has no {name}"))
}

/// The deterministic address of workload account `i`.
pub fn account(i: usize) -> Address {
    Address::from_word(keccak256(format!("strobe workload account {i}")))
}

/// The workload state and the nonces of its accounts. Cloning is cheap (the state is shared).
#[derive(Clone)]
pub struct World {
    view: Arc<dyn StateView>,
    /// Funded externally owned accounts.
    pub accounts: Vec<Address>,
    /// Two ERC-20 tokens.
    pub tokens: [Address; 2],
    /// Two pools over the tokens (both token0/token1 pairs, separate reserves).
    pub pairs: [Address; 2],
    /// The CREATE/CREATE2 factory.
    pub factory: Address,
    /// The probe (beneficiary reads, gas burning, reverts, precompiles).
    pub probe: Address,
    /// The block's fee recipient.
    pub beneficiary: Address,
    nonces: Vec<u64>,
}

impl World {
    /// Funds `accounts` accounts, deploys the contracts from a separate deployer, gives every
    /// account tokens and pool approvals, and seeds both pools with liquidity.
    pub fn new(accounts: usize) -> Self {
        let accounts_list: Vec<Address> = (0..accounts.max(1)).map(account).collect();
        let deployer = account(usize::MAX);
        let mut alloc: Vec<AccountChange> = accounts_list
            .iter()
            .chain(std::iter::once(&deployer))
            .map(|a| AccountChange {
                address: *a,
                info: Some(AccountState {
                    nonce: 0,
                    balance: U256::from(START_BALANCE),
                    code_hash: revm::primitives::KECCAK_EMPTY,
                }),
                storage_cleared: false,
                storage: Vec::new(),
            })
            .collect();
        alloc.sort_unstable_by_key(|a| a.address);
        let mut store = MemoryStore::default();
        store.apply(&StateDiff { accounts: alloc, codes: Vec::new() }).expect("in-memory apply");
        let tokens = [deployer.create(0), deployer.create(1)];
        let pairs = [deployer.create(2), deployer.create(3)];
        let factory = deployer.create(4);
        let probe = deployer.create(5);
        let mut world = Self {
            view: store.view(),
            accounts: accounts_list,
            tokens,
            pairs,
            factory,
            probe,
            beneficiary: Address::repeat_byte(0xbe),
            nonces: vec![0; accounts.max(1)],
        };
        let pair_code = |_: usize| {
            let mut code = creation_code("Pair").to_vec();
            code.extend_from_slice(&(tokens[0], tokens[1]).abi_encode_params());
            Bytes::from(code)
        };
        // Every deployer transaction takes the deployer's next nonce.
        let mut deployer_nonce = 0;
        let mut from_deployer = |kind: TxKind, data: Bytes, gas: u64| {
            let tx = raw_tx(deployer, deployer_nonce, kind, U256::ZERO, data, gas);
            deployer_nonce += 1;
            tx
        };
        let mut deploy: Vec<TxEnv> = [
            creation_code("Token"),
            creation_code("Token"),
            pair_code(0),
            pair_code(1),
            creation_code("Factory"),
            creation_code("Probe"),
        ]
        .into_iter()
        .map(|code| from_deployer(TxKind::Create, code, 5_000_000))
        .collect();
        // Liquidity for both pools comes from the deployer.
        for token in tokens {
            let data = mintCall { to: deployer, value: U256::from(START_TOKENS) * U256::from(4) };
            deploy.push(from_deployer(TxKind::Call(token), data.abi_encode().into(), 200_000));
            for pair in pairs {
                let data = approveCall { spender: pair, value: U256::MAX };
                deploy.push(from_deployer(TxKind::Call(token), data.abi_encode().into(), 200_000));
            }
        }
        for pair in pairs {
            let data = addLiquidityCall {
                amount0: U256::from(START_TOKENS),
                amount1: U256::from(START_TOKENS),
            };
            deploy.push(from_deployer(TxKind::Call(pair), data.abi_encode().into(), 500_000));
        }
        world.run_setup(&mut store, deploy);
        let mut setup = Vec::new();
        for i in 0..world.accounts.len() {
            let who = world.accounts[i];
            for token in tokens {
                let data = mintCall { to: who, value: U256::from(START_TOKENS) };
                setup.push(from_deployer(TxKind::Call(token), data.abi_encode().into(), 200_000));
                for pair in pairs {
                    let data = approveCall { spender: pair, value: U256::MAX };
                    setup.push(world.call(i, token, U256::ZERO, data.abi_encode().into(), 100_000));
                }
            }
        }
        world.run_setup(&mut store, setup);
        world
    }

    fn run_setup(&mut self, store: &mut MemoryStore, txs: Vec<TxEnv>) {
        let out = self.execute_sequential(&txs);
        for (i, r) in out.results.iter().enumerate() {
            match r {
                Ok(e) if e.success => {}
                other => panic!("workload setup transaction {i} failed: {other:?}"),
            }
        }
        store.apply(&out.diff).expect("in-memory apply");
        self.view = store.view();
    }

    /// The state after setup.
    pub fn view(&self) -> Arc<dyn StateView> {
        self.view.clone()
    }

    /// The block environment workloads run in (Prague rules, 1 gwei base fee).
    pub fn env(&self) -> ExecEnv {
        BlockContext {
            number: 1,
            timestamp: 1_700_000_000,
            beneficiary: self.beneficiary,
            gas_limit: 30_000_000_000,
            base_fee: BASE_FEE,
            prevrandao: B256::repeat_byte(7),
            chain_id: CHAIN_ID,
        }
        .exec_env()
    }

    /// Runs `f` with a database over the state after setup (no block hashes).
    pub fn with_db<R>(&self, f: impl FnOnce(ViewDb<'_>) -> R) -> R {
        let view = self.view.clone();
        let no_hash = |_: u64| B256::ZERO;
        f(ViewDb { view: &*view, block_hash: &no_hash })
    }

    /// Executes `txs` sequentially over the state after setup.
    pub fn execute_sequential(&self, txs: &[TxEnv]) -> BlockOutput {
        let env = self.env();
        self.with_db(|db| execute_sequential(db, &env, txs))
    }

    /// Sets the beneficiary (for example to one of the accounts, so it also sends).
    pub fn set_beneficiary(&mut self, beneficiary: Address) {
        self.beneficiary = beneficiary;
    }

    /// The next nonce of account `i`.
    pub fn nonce(&self, i: usize) -> u64 {
        self.nonces[i]
    }

    /// A transaction from account `i` with its next nonce.
    pub fn call(&mut self, i: usize, to: Address, value: U256, data: Bytes, gas: u64) -> TxEnv {
        let nonce = self.nonces[i];
        self.nonces[i] += 1;
        raw_tx(self.accounts[i], nonce, TxKind::Call(to), value, data, gas)
    }

    /// A transaction from account `i` with an explicit nonce (which is not consumed).
    pub fn call_with_nonce(
        &self,
        i: usize,
        nonce: u64,
        to: Address,
        value: U256,
        gas: u64,
    ) -> TxEnv {
        raw_tx(self.accounts[i], nonce, TxKind::Call(to), value, Bytes::new(), gas)
    }

    /// An ether transfer.
    pub fn transfer(&mut self, from: usize, to: Address, value: U256) -> TxEnv {
        self.call(from, to, value, Bytes::new(), 21_000)
    }

    /// An ERC-20 transfer of `token` (0 or 1).
    pub fn erc20_transfer(&mut self, from: usize, token: usize, to: Address, value: U256) -> TxEnv {
        let data = transferCall { to, value }.abi_encode();
        self.call(from, self.tokens[token], U256::ZERO, data.into(), 80_000)
    }

    /// A swap on `pair` (0 or 1).
    pub fn swap(&mut self, from: usize, pair: usize, zero_for_one: bool, amount_in: U256) -> TxEnv {
        let data = swapCall { zeroForOne: zero_for_one, amountIn: amount_in }.abi_encode();
        self.call(from, self.pairs[pair], U256::ZERO, data.into(), 200_000)
    }

    /// A factory call: CREATE (`salt = None`) or CREATE2 of a child holding `v`.
    pub fn create(&mut self, from: usize, salt: Option<B256>, v: U256, value: U256) -> TxEnv {
        let data = match salt {
            None => createCall { v }.abi_encode(),
            Some(salt) => create2Call { salt, v }.abi_encode(),
        };
        self.call(from, self.factory, value, data.into(), 300_000)
    }

    /// Creates a child and destroys it in the same transaction (EIP-6780 deletion).
    pub fn create_and_destroy(&mut self, from: usize, value: U256) -> TxEnv {
        let data = createAndDestroyCall { v: U256::from(1) }.abi_encode();
        self.call(from, self.factory, value, data.into(), 300_000)
    }

    /// Destroys the factory's latest child (only moves its balance under EIP-6780).
    pub fn destroy_last(&mut self, from: usize) -> TxEnv {
        self.call(from, self.factory, U256::ZERO, destroyLastCall {}.abi_encode().into(), 100_000)
    }

    /// Stores the beneficiary's balance (reads it mid-block).
    pub fn read_coinbase(&mut self, from: usize) -> TxEnv {
        self.call(from, self.probe, U256::ZERO, readCoinbaseCall {}.abi_encode().into(), 100_000)
    }

    /// Burns gas in a loop of `rounds` storage writes with `gas` gas (runs out when too low).
    pub fn burn(&mut self, from: usize, rounds: u64, gas: u64) -> TxEnv {
        let data = burnCall { rounds: U256::from(rounds) }.abi_encode();
        self.call(from, self.probe, U256::ZERO, data.into(), gas)
    }

    /// A call that reverts with a reason when `code` is non-zero.
    pub fn fail(&mut self, from: usize, code: u64) -> TxEnv {
        let data = failCall { code: U256::from(code) }.abi_encode();
        self.call(from, self.probe, U256::ZERO, data.into(), 100_000)
    }

    /// Calls sha256, ecrecover, ripemd160 and identity.
    pub fn precompiles(&mut self, from: usize, data: B256) -> TxEnv {
        let data = precompilesCall { data }.abi_encode();
        self.call(from, self.probe, U256::ZERO, data.into(), 200_000)
    }

    /// Forwards `value` through the probe to `to`.
    pub fn forward(&mut self, from: usize, to: Address, value: U256) -> TxEnv {
        let data = forwardCall { to }.abi_encode();
        self.call(from, self.probe, value, data.into(), 100_000)
    }
}

fn raw_tx(caller: Address, nonce: u64, kind: TxKind, value: U256, data: Bytes, gas: u64) -> TxEnv {
    TxEnv {
        tx_type: 2,
        caller,
        gas_limit: gas,
        gas_price: BASE_FEE as u128 + TIP,
        kind,
        value,
        data,
        nonce,
        chain_id: Some(CHAIN_ID),
        gas_priority_fee: Some(TIP),
        ..Default::default()
    }
}

/// Names of the benchmark workloads.
pub const WORKLOADS: [&str; 4] = ["transfers", "erc20", "hot-pool", "mixed"];

/// A benchmark workload of `txs` transactions over a world sized for it.
///
/// - `transfers`: every transaction from a different account to a fresh address (independent).
/// - `erc20`: token transfers from different accounts to fresh addresses (independent).
/// - `hot-pool`: every transaction swaps on the same pool (fully contended).
/// - `mixed`: a realistic mix: 45% token transfers, 20% ether transfers, 15% swaps on two pools,
///   10% precompile calls, 5% contract creations, 5% reverts; senders repeat, so some conflict.
pub fn build(name: &str, txs: usize) -> Option<(World, Vec<TxEnv>)> {
    let fresh = |i: usize| Address::from_word(keccak256(format!("fresh {i}")));
    let list = match name {
        "transfers" => {
            let mut w = World::new(txs);
            let list = (0..txs).map(|i| w.transfer(i, fresh(i), U256::from(1_000))).collect();
            (w, list)
        }
        "erc20" => {
            let mut w = World::new(txs);
            let list =
                (0..txs).map(|i| w.erc20_transfer(i, 0, fresh(i), U256::from(1_000))).collect();
            (w, list)
        }
        "hot-pool" => {
            let mut w = World::new(txs);
            let list =
                (0..txs).map(|i| w.swap(i, 0, i % 2 == 0, U256::from(10u64.pow(18)))).collect();
            (w, list)
        }
        "mixed" => {
            let senders = (txs / 2).max(1);
            let mut w = World::new(senders);
            let mut list = Vec::with_capacity(txs);
            for i in 0..txs {
                let from = (i * 7919) % senders;
                let tx = match (i * 37) % 100 {
                    0..=44 => w.erc20_transfer(from, i % 2, fresh(i), U256::from(1_000)),
                    45..=64 => w.transfer(from, fresh(i), U256::from(1_000)),
                    65..=79 => w.swap(from, i % 2, i % 3 == 0, U256::from(10u64.pow(16))),
                    80..=89 => w.precompiles(from, keccak256(i.to_be_bytes())),
                    90..=94 => w.create(from, None, U256::from(i), U256::ZERO),
                    _ => w.fail(from, 1),
                };
                list.push(tx);
            }
            (w, list)
        }
        _ => return None,
    };
    Some(list)
}
