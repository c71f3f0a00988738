//! Real Ethereum mainnet blocks with their pre-state, replayed and checked against the header.
//!
//! The file format is described in `tests/fixtures/README.md`: the block as
//! `eth_getBlockByNumber(n, true)` returns it, every account the block touches as it was before,
//! and the BLOCKHASH answers it needs. Files may be gzip-compressed (`.json.gz`).
//!
//! A replay checks what the header pins down about execution: total gas used, the logs bloom, and
//! from Byzantium on the receipts root, which commits to every receipt's status, cumulative gas
//! and logs. (Earlier receipts embed intermediate state roots, which need the full state.)

use alloy_consensus::{Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, TxType};
use alloy_primitives::{keccak256, Address, Bloom, Bytes, TxKind, B256, U256};
use revm::{
    bytecode::Bytecode,
    context::{BlockEnv, CfgEnv, TxEnv},
    context_interface::block::BlobExcessGasAndPrice,
    primitives::{eip4844, hardfork::SpecId, KECCAK_EMPTY},
};
use serde::Deserialize;
use std::{collections::HashMap, io::Read, path::Path};
use strobe_engine::{
    exec::{BlockOutput, ExecEnv},
    storage::{AccountChange, AccountState, MemoryStore, StateDiff, StateStore, StateView, ViewDb},
};

/// Errors loading a fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The JSON does not match the format.
    #[error("{path} is not a block fixture: {source}")]
    Json {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A field holds something the replay cannot use.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct File {
    number: u64,
    fork: String,
    block: RpcBlock,
    pre_state: HashMap<Address, PreAccount>,
    #[serde(default)]
    block_hashes: HashMap<String, B256>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcBlock {
    hash: B256,
    miner: Address,
    number: U256,
    timestamp: U256,
    gas_limit: U256,
    gas_used: U256,
    #[serde(default)]
    difficulty: U256,
    #[serde(default)]
    mix_hash: Option<B256>,
    #[serde(default)]
    base_fee_per_gas: Option<U256>,
    #[serde(default)]
    excess_blob_gas: Option<U256>,
    receipts_root: B256,
    logs_bloom: Bloom,
    transactions: Vec<RpcTx>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcTx {
    #[serde(rename = "type", default)]
    ty: Option<U256>,
    from: Address,
    to: Option<Address>,
    gas: U256,
    #[serde(default)]
    gas_price: Option<U256>,
    #[serde(default)]
    max_fee_per_gas: Option<U256>,
    #[serde(default)]
    max_priority_fee_per_gas: Option<U256>,
    value: U256,
    input: Bytes,
    nonce: U256,
    #[serde(default)]
    chain_id: Option<U256>,
    #[serde(default)]
    access_list: Option<alloy_eips::eip2930::AccessList>,
    #[serde(default)]
    max_fee_per_blob_gas: Option<U256>,
    #[serde(default)]
    blob_versioned_hashes: Option<Vec<B256>>,
}

#[derive(Deserialize)]
struct PreAccount {
    balance: U256,
    nonce: u64,
    #[serde(default)]
    code: Bytes,
    #[serde(default)]
    storage: HashMap<U256, U256>,
}

/// What the header says about the block's execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFacts {
    /// Total gas used.
    pub gas_used: u64,
    /// OR of every receipt's bloom.
    pub logs_bloom: Bloom,
    /// Trie root of the receipts (checked from Byzantium on).
    pub receipts_root: B256,
}

/// One mainnet block ready to replay.
pub struct MainnetBlock {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Fork name as in the fixture.
    pub fork: String,
    /// revm's rules for that fork.
    pub spec: SpecId,
    /// Block environment and rules.
    pub env: ExecEnv,
    /// The transactions, in block order.
    pub txs: Vec<TxEnv>,
    /// EIP-2718 type of each transaction (for the receipt encoding).
    pub tx_types: Vec<TxType>,
    /// The header's execution facts.
    pub expected: HeaderFacts,
    store: MemoryStore,
    block_hashes: HashMap<u64, B256>,
}

/// The revm rules of a fixture's `fork` name.
pub fn spec_of(fork: &str) -> Option<SpecId> {
    Some(match fork {
        "frontier" => SpecId::FRONTIER,
        "homestead" => SpecId::HOMESTEAD,
        "tangerine" => SpecId::TANGERINE,
        "spurious_dragon" => SpecId::SPURIOUS_DRAGON,
        "byzantium" => SpecId::BYZANTIUM,
        "petersburg" => SpecId::PETERSBURG,
        "istanbul" => SpecId::ISTANBUL,
        "berlin" => SpecId::BERLIN,
        "london" => SpecId::LONDON,
        "paris" => SpecId::MERGE,
        "shanghai" => SpecId::SHANGHAI,
        "cancun" => SpecId::CANCUN,
        _ => return None,
    })
}

fn u64_of(v: U256, what: &str) -> Result<u64, FixtureError> {
    u64::try_from(v)
        .map_err(|_| FixtureError::Invalid(format!("{what} {v} does not fit in 64 bits")))
}

fn u128_of(v: U256, what: &str) -> Result<u128, FixtureError> {
    u128::try_from(v)
        .map_err(|_| FixtureError::Invalid(format!("{what} {v} does not fit in 128 bits")))
}

/// Reads a fixture file (`.json` or `.json.gz`).
pub fn load(path: &Path) -> Result<MainnetBlock, FixtureError> {
    let shown = path.display().to_string();
    let io = |source| FixtureError::Io { path: shown.clone(), source };
    let raw = std::fs::read(path).map_err(io)?;
    let json = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 8);
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        out
    } else {
        raw
    };
    let file: File = serde_json::from_slice(&json)
        .map_err(|source| FixtureError::Json { path: shown, source })?;
    from_file(file)
}

fn from_file(file: File) -> Result<MainnetBlock, FixtureError> {
    let spec = spec_of(&file.fork)
        .ok_or_else(|| FixtureError::Invalid(format!("unknown fork {:?}", file.fork)))?;
    let b = &file.block;
    let block = BlockEnv {
        number: b.number,
        beneficiary: b.miner,
        timestamp: b.timestamp,
        gas_limit: u64_of(b.gas_limit, "gasLimit")?,
        basefee: match b.base_fee_per_gas {
            Some(f) => u64_of(f, "baseFeePerGas")?,
            None => 0,
        },
        difficulty: b.difficulty,
        prevrandao: if spec.is_enabled_in(SpecId::MERGE) {
            Some(
                b.mix_hash
                    .ok_or_else(|| FixtureError::Invalid("merge block without mixHash".into()))?,
            )
        } else {
            None
        },
        blob_excess_gas_and_price: if spec.is_enabled_in(SpecId::CANCUN) {
            let excess = u64_of(b.excess_blob_gas.unwrap_or_default(), "excessBlobGas")?;
            Some(BlobExcessGasAndPrice::new(excess, eip4844::BLOB_BASE_FEE_UPDATE_FRACTION_CANCUN))
        } else {
            None
        },
        ..Default::default()
    };
    let mut cfg = CfgEnv::new_with_spec(spec);
    cfg.chain_id = 1;
    let mut txs = Vec::with_capacity(b.transactions.len());
    let mut tx_types = Vec::with_capacity(b.transactions.len());
    for (i, t) in b.transactions.iter().enumerate() {
        let (env, ty) =
            tx_env(t).map_err(|e| FixtureError::Invalid(format!("transaction {i}: {e}")))?;
        txs.push(env);
        tx_types.push(ty);
    }
    let mut accounts = Vec::with_capacity(file.pre_state.len());
    let mut codes = Vec::new();
    for (address, a) in &file.pre_state {
        let code_hash = if a.code.is_empty() {
            KECCAK_EMPTY
        } else {
            let hash = keccak256(&a.code);
            codes.push((hash, Bytecode::new_raw(a.code.clone())));
            hash
        };
        let mut storage: Vec<(U256, U256)> =
            a.storage.iter().filter(|(_, v)| !v.is_zero()).map(|(k, v)| (*k, *v)).collect();
        storage.sort_unstable();
        accounts.push(AccountChange {
            address: *address,
            info: Some(AccountState { nonce: a.nonce, balance: a.balance, code_hash }),
            storage_cleared: false,
            storage,
        });
    }
    accounts.sort_unstable_by_key(|a| a.address);
    codes.sort_unstable_by_key(|(h, _)| *h);
    codes.dedup_by_key(|(h, _)| *h);
    let mut store = MemoryStore::default();
    store
        .apply(&StateDiff { accounts, codes })
        .map_err(|e| FixtureError::Invalid(format!("pre-state: {e}")))?;
    let mut block_hashes = HashMap::new();
    for (n, h) in &file.block_hashes {
        let n: u64 =
            n.parse().map_err(|_| FixtureError::Invalid(format!("block_hashes key {n:?}")))?;
        block_hashes.insert(n, *h);
    }
    Ok(MainnetBlock {
        number: file.number,
        hash: b.hash,
        fork: file.fork.clone(),
        spec,
        env: ExecEnv { block, cfg },
        txs,
        tx_types,
        expected: HeaderFacts {
            gas_used: u64_of(b.gas_used, "gasUsed")?,
            logs_bloom: b.logs_bloom,
            receipts_root: b.receipts_root,
        },
        store,
        block_hashes,
    })
}

fn tx_env(t: &RpcTx) -> Result<(TxEnv, TxType), FixtureError> {
    let ty = u64_of(t.ty.unwrap_or_default(), "type")?;
    let tx_type = TxType::try_from(ty as u8)
        .map_err(|_| FixtureError::Invalid(format!("transaction type {ty}")))?;
    let (gas_price, gas_priority_fee) = match tx_type {
        TxType::Legacy | TxType::Eip2930 => {
            let price = t.gas_price.ok_or_else(|| FixtureError::Invalid("no gasPrice".into()))?;
            (u128_of(price, "gasPrice")?, None)
        }
        _ => {
            let max =
                t.max_fee_per_gas.ok_or_else(|| FixtureError::Invalid("no maxFeePerGas".into()))?;
            let tip = t
                .max_priority_fee_per_gas
                .ok_or_else(|| FixtureError::Invalid("no maxPriorityFeePerGas".into()))?;
            (u128_of(max, "maxFeePerGas")?, Some(u128_of(tip, "maxPriorityFeePerGas")?))
        }
    };
    let env = TxEnv {
        tx_type: ty as u8,
        caller: t.from,
        gas_limit: u64_of(t.gas, "gas")?,
        gas_price,
        kind: t.to.map_or(TxKind::Create, TxKind::Call),
        value: t.value,
        data: t.input.clone(),
        nonce: u64_of(t.nonce, "nonce")?,
        chain_id: t.chain_id.map(|c| u64_of(c, "chainId")).transpose()?,
        access_list: t.access_list.clone().unwrap_or_default(),
        gas_priority_fee,
        blob_hashes: t.blob_versioned_hashes.clone().unwrap_or_default(),
        max_fee_per_blob_gas: match t.max_fee_per_blob_gas {
            Some(f) => u128_of(f, "maxFeePerBlobGas")?,
            None => 0,
        },
        authorization_list: Vec::new(),
    };
    Ok((env, tx_type))
}

/// How a replay compares with the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// What the header says.
    pub expected: HeaderFacts,
    /// What execution produced.
    pub got: HeaderFacts,
    /// Whether the receipts root is part of the check (Byzantium and later).
    pub receipts_root_checked: bool,
    /// Transactions execution refused (a mainnet block has none), with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Cumulative gas after each transaction.
    pub cumulative_gas: Vec<u64>,
}

impl Comparison {
    /// Whether execution reproduced the header.
    pub fn matches(&self) -> bool {
        self.rejected.is_empty()
            && self.expected.gas_used == self.got.gas_used
            && self.expected.logs_bloom == self.got.logs_bloom
            && (!self.receipts_root_checked
                || self.expected.receipts_root == self.got.receipts_root)
    }
}

impl MainnetBlock {
    /// Runs `f` with a database over the pre-state that answers BLOCKHASH from the fixture.
    pub fn with_db<R>(&self, f: impl FnOnce(ViewDb<'_>) -> R) -> R {
        let view = self.store.view();
        let hashes = &self.block_hashes;
        let block_hash = move |n: u64| hashes.get(&n).copied().unwrap_or_default();
        f(ViewDb { view: &*view as &dyn StateView, block_hash: &block_hash })
    }

    /// Compares an execution's output with the header.
    pub fn compare(&self, output: &BlockOutput) -> Comparison {
        let mut cumulative = 0u64;
        let mut cumulative_gas = Vec::with_capacity(output.results.len());
        let mut rejected = Vec::new();
        let mut receipts = Vec::with_capacity(output.results.len());
        let mut bloom = Bloom::ZERO;
        for (i, (result, ty)) in output.results.iter().zip(&self.tx_types).enumerate() {
            let exec = match result {
                Ok(exec) => exec,
                Err(e) => {
                    rejected.push((i, e.clone()));
                    continue;
                }
            };
            cumulative += exec.gas_used;
            cumulative_gas.push(cumulative);
            let receipt = Receipt {
                status: Eip658Value::Eip658(exec.success),
                cumulative_gas_used: cumulative,
                logs: exec.logs.clone(),
            };
            let with_bloom = ReceiptWithBloom::from(receipt);
            bloom |= with_bloom.logs_bloom;
            receipts.push(match ty {
                TxType::Legacy => ReceiptEnvelope::Legacy(with_bloom),
                TxType::Eip2930 => ReceiptEnvelope::Eip2930(with_bloom),
                TxType::Eip1559 => ReceiptEnvelope::Eip1559(with_bloom),
                TxType::Eip4844 => ReceiptEnvelope::Eip4844(with_bloom),
                TxType::Eip7702 => ReceiptEnvelope::Eip7702(with_bloom),
            });
        }
        Comparison {
            expected: self.expected.clone(),
            got: HeaderFacts {
                gas_used: cumulative,
                logs_bloom: bloom,
                receipts_root: alloy_consensus::proofs::calculate_receipt_root(&receipts),
            },
            receipts_root_checked: self.spec.is_enabled_in(SpecId::BYZANTIUM),
            rejected,
            cumulative_gas,
        }
    }
}
