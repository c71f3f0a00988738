//! Workloads for `strobe-bench`: the set-up a workload needs (funded senders, tokens, pools),
//! and its transactions, all signed before the clock starts.

use crate::{
    client::{dev_signer, signed_hex, Client, CHAIN_ID},
    workload::{addLiquidityCall, approveCall, mintCall, swapCall, transferCall},
};
use alloy_consensus::TxEip1559;
use alloy_primitives::{keccak256, Address, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{SolCall, SolValue};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The workloads `strobe-bench` knows.
pub const WORKLOADS: [&str; 5] = ["transfers", "erc20", "swaps", "deploy", "mix"];
/// Accounts every contended transaction touches (recipients, or the first pool).
const HOT_ACCOUNTS: usize = 4;
/// Dev accounts that fund the senders during set-up.
const FUNDERS: u32 = 10;
/// Transactions per JSON-RPC batch during set-up.
const SETUP_BATCH: usize = 200;
/// Ether given to each sender (plenty for any run's gas).
const SENDER_FUNDS_WEI: u128 = 10u128.pow(18);

/// Runtime of the contract the `deploy` workload creates: stores 42 in slot 0.
const DEPLOY_INIT_CODE: [u8; 10] = [0x60, 0x2a, 0x60, 0x00, 0x55, 0x60, 0x01, 0x60, 0x00, 0xf3];

/// What a workload run is made of.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// One of [`WORKLOADS`].
    pub name: String,
    /// Number of distinct senders.
    pub senders: usize,
    /// Share (0..=1) of transactions that touch a few hot accounts or the first pool.
    pub contention: f64,
    /// Pools for swaps.
    pub pools: usize,
}

/// A deterministic pseudo-random sequence (xorshift64*), so runs repeat.
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sender `i` of every bench run (deterministic keys, funded during set-up).
pub fn sender(i: usize) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&keccak256(format!("strobe-bench sender {i}")))
        .expect("a keccak output is a valid key with overwhelming probability")
}

fn eip1559(nonce: u64, to: TxKind, value: U256, input: Vec<u8>, gas: u64) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: gas,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to,
        value,
        access_list: Default::default(),
        input: input.into(),
    }
}

/// A workload's contracts, once set up.
#[derive(Clone, Debug, Default)]
pub struct Deployed {
    /// The two tokens.
    pub tokens: Vec<Address>,
    /// The pools.
    pub pools: Vec<Address>,
}

/// Sends `raws` in batches and waits until each `(address, nonce)` is reached.
pub fn send_and_wait(
    c: &mut Client,
    raws: &[String],
    want: &[(Address, u64)],
) -> Result<(), String> {
    for chunk in raws.chunks(SETUP_BATCH) {
        let body: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"jsonrpc":"2.0","id":i,"method":"eth_sendRawTransaction","params":[r]}))
            .collect();
        let out = c.call(&Value::Array(body)).map_err(|e| format!("set-up send: {e}"))?;
        if let Some(e) = out.as_array().and_then(|a| a.iter().find(|r| r.get("error").is_some())) {
            return Err(format!("set-up transaction refused: {e}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for (a, n) in want {
        loop {
            if c.nonce(*a, "latest").map_err(|e| e.to_string())? >= *n {
                break;
            }
            if Instant::now() > deadline {
                return Err("set-up transactions were not included in 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn creation(name: &str, args: &[u8]) -> Vec<u8> {
    let mut code = crate::workload::creation_code(name).to_vec();
    code.extend_from_slice(args);
    code
}

/// Funds the senders and deploys what `spec` needs, from the dev accounts.
pub fn setup(c: &mut Client, spec: &WorkloadSpec) -> Result<Deployed, String> {
    let funders: Vec<_> = (0..FUNDERS).map(dev_signer).collect();
    let mut nonces = Vec::new();
    for f in &funders {
        nonces.push(c.nonce(f.address(), "pending").map_err(|e| e.to_string())?);
    }
    let mut raws = Vec::new();
    for i in 0..spec.senders {
        let k = i % funders.len();
        let to = TxKind::Call(sender(i).address());
        raws.push(signed_hex(
            &funders[k],
            eip1559(nonces[k], to, U256::from(SENDER_FUNDS_WEI), vec![], 21_000),
        ));
        nonces[k] += 1;
    }
    let needs_tokens = matches!(spec.name.as_str(), "erc20" | "swaps" | "mix");
    let mut deployed = Deployed::default();
    if needs_tokens {
        let d = &funders[0];
        let mut next = |input: Vec<u8>, to: TxKind, gas: u64, raws: &mut Vec<String>| {
            let n = nonces[0];
            raws.push(signed_hex(d, eip1559(n, to, U256::ZERO, input, gas)));
            nonces[0] += 1;
            n
        };
        for _ in 0..2 {
            let n = next(creation("Token", &[]), TxKind::Create, 3_000_000, &mut raws);
            deployed.tokens.push(d.address().create(n));
        }
        let (t0, t1) = (deployed.tokens[0], deployed.tokens[1]);
        for _ in 0..spec.pools.max(1) {
            let n = next(
                creation("Pair", &(t0, t1).abi_encode_params()),
                TxKind::Create,
                3_000_000,
                &mut raws,
            );
            deployed.pools.push(d.address().create(n));
        }
        let big = U256::from(10u128.pow(30));
        for t in [t0, t1] {
            next(
                mintCall { to: d.address(), value: big * U256::from(4) }.abi_encode(),
                TxKind::Call(t),
                200_000,
                &mut raws,
            );
            for p in deployed.pools.clone() {
                next(
                    approveCall { spender: p, value: U256::MAX }.abi_encode(),
                    TxKind::Call(t),
                    200_000,
                    &mut raws,
                );
            }
            for i in 0..spec.senders {
                next(
                    mintCall { to: sender(i).address(), value: big }.abi_encode(),
                    TxKind::Call(t),
                    200_000,
                    &mut raws,
                );
            }
        }
        for p in deployed.pools.clone() {
            let liq = addLiquidityCall { amount0: big, amount1: big }.abi_encode();
            next(liq, TxKind::Call(p), 500_000, &mut raws);
        }
    }
    let want: Vec<(Address, u64)> =
        funders.iter().zip(&nonces).map(|(f, n)| (f.address(), *n)).collect();
    send_and_wait(c, &raws, &want)?;
    if needs_tokens && spec.name != "erc20" {
        // Senders approve the pools for both tokens (their first transactions).
        let mut raws = Vec::new();
        let mut want = Vec::new();
        for i in 0..spec.senders {
            let s = sender(i);
            let mut n = c.nonce(s.address(), "pending").map_err(|e| e.to_string())?;
            for t in &deployed.tokens {
                for p in &deployed.pools {
                    let input = approveCall { spender: *p, value: U256::MAX }.abi_encode();
                    raws.push(signed_hex(
                        &s,
                        eip1559(n, TxKind::Call(*t), U256::ZERO, input, 100_000),
                    ));
                    n += 1;
                }
            }
            want.push((s.address(), n));
        }
        send_and_wait(c, &raws, &want)?;
    }
    Ok(deployed)
}

/// One pre-signed transaction of the measured run.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Index of its sender.
    pub sender: usize,
    /// 0x-hex EIP-2718 bytes.
    pub raw: String,
}

/// Signs `count` transactions of `spec`, senders round-robin, each sender's in nonce order.
pub fn sign_all(
    c: &mut Client,
    spec: &WorkloadSpec,
    deployed: &Deployed,
    count: usize,
    seed: u64,
) -> Result<Vec<Prepared>, String> {
    let mut rng = Rng::new(seed);
    let mut nonces = Vec::with_capacity(spec.senders);
    for i in 0..spec.senders {
        nonces.push(c.nonce(sender(i).address(), "pending").map_err(|e| e.to_string())?);
    }
    let signers: Vec<_> = (0..spec.senders).map(sender).collect();
    let hot = |k: u64| {
        Address::from_word(keccak256(format!("strobe-bench hot {}", k % HOT_ACCOUNTS as u64)))
    };
    let mut out = Vec::with_capacity(count);
    for j in 0..count {
        let i = j % spec.senders;
        let contended = rng.unit() < spec.contention;
        let recipient = if contended {
            hot(rng.next_u64())
        } else {
            Address::from_word(keccak256(format!("strobe-bench fresh {j} {seed}")))
        };
        let kind = match spec.name.as_str() {
            "mix" => match rng.next_u64() % 10 {
                0..=3 => "transfers",
                4..=6 => "erc20",
                7..=8 => "swaps",
                _ => "deploy",
            },
            other => other,
        };
        let tx = match kind {
            "transfers" => {
                eip1559(nonces[i], TxKind::Call(recipient), U256::from(1), vec![], 21_000)
            }
            "erc20" => {
                let input = transferCall { to: recipient, value: U256::from(1000) }.abi_encode();
                eip1559(nonces[i], TxKind::Call(deployed.tokens[0]), U256::ZERO, input, 80_000)
            }
            "swaps" => {
                let pool = if contended || deployed.pools.len() == 1 {
                    deployed.pools[0]
                } else {
                    deployed.pools[1 + (rng.next_u64() as usize % (deployed.pools.len() - 1))]
                };
                let input = swapCall {
                    zeroForOne: rng.next_u64().is_multiple_of(2),
                    amountIn: U256::from(1_000_000),
                }
                .abi_encode();
                eip1559(nonces[i], TxKind::Call(pool), U256::ZERO, input, 200_000)
            }
            "deploy" => {
                eip1559(nonces[i], TxKind::Create, U256::ZERO, DEPLOY_INIT_CODE.to_vec(), 100_000)
            }
            other => return Err(format!("unknown workload `{other}` (one of {WORKLOADS:?})")),
        };
        nonces[i] += 1;
        out.push(Prepared { sender: i, raw: signed_hex(&signers[i], tx) });
    }
    Ok(out)
}
