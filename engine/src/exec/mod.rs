//! Sequential execution of a mini-block on revm.
//!
//! Runs on the sequencer thread (and, for `eth_call`/`eth_estimateGas`, on network threads over a
//! read-only view). Each transaction executes and commits into an [`Overlay`] above the last
//! committed state; the overlay then becomes the mini-block's [`StateDiff`].

mod overlay;

pub use overlay::Overlay;

use crate::tx::{RecoveredTx, CHAIN_SPEC};
use alloy_consensus::{Transaction, Typed2718};
use alloy_primitives::{Address, Bytes, Log, TxKind, B256, U256};
use revm::{
    context::{result::ExecutionResult, BlockEnv, CfgEnv, Context, TxEnv},
    context_interface::{
        either::Either,
        transaction::{RecoveredAuthority, RecoveredAuthorization},
    },
    primitives::hardfork::SpecId,
    ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext,
};
use strobe_storage::{StateDiff, ViewDb};

/// Block-level values every transaction of a mini-block sees.
#[derive(Clone, Copy, Debug)]
pub struct BlockContext {
    /// EVM block number.
    pub number: u64,
    /// EVM block timestamp (seconds).
    pub timestamp: u64,
    /// Fee recipient.
    pub beneficiary: Address,
    /// Block gas limit.
    pub gas_limit: u64,
    /// Base fee per gas.
    pub base_fee: u64,
    /// PREVRANDAO value.
    pub prevrandao: B256,
    /// Chain id.
    pub chain_id: u64,
}

/// Everything revm needs besides the transactions and the state: the block and the rules.
///
/// The sequencer builds it from a [`BlockContext`]; mainnet replay builds it from a block header
/// and the fork in force.
#[derive(Clone, Debug)]
pub struct ExecEnv {
    /// Block values (number, timestamp, beneficiary, base fee, ...).
    pub block: BlockEnv,
    /// Chain id and the fork's rules.
    pub cfg: CfgEnv,
}

impl ExecEnv {
    /// The fork whose rules apply.
    pub fn spec(&self) -> SpecId {
        self.cfg.spec
    }
}

/// What executing a list of transactions produced: one result per transaction, in order, and the
/// state they changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockOutput {
    /// Per transaction: its execution, or why it could not be included (nonce, funds, gas).
    pub results: Vec<Result<TxExecution, String>>,
    /// The canonical diff of everything the included transactions wrote.
    pub diff: StateDiff,
}

impl BlockContext {
    /// The revm environment of this block.
    pub fn exec_env(&self) -> ExecEnv {
        ExecEnv { block: self.block_env(), cfg: self.cfg() }
    }

    fn block_env(&self) -> BlockEnv {
        BlockEnv {
            number: U256::from(self.number),
            beneficiary: self.beneficiary,
            timestamp: U256::from(self.timestamp),
            gas_limit: self.gas_limit,
            basefee: self.base_fee,
            difficulty: U256::ZERO,
            prevrandao: Some(self.prevrandao),
            blob_excess_gas_and_price: Some(
                revm::context_interface::block::BlobExcessGasAndPrice::new(
                    0,
                    revm::primitives::eip4844::BLOB_BASE_FEE_UPDATE_FRACTION_PRAGUE,
                ),
            ),
            ..Default::default()
        }
    }

    fn cfg(&self) -> CfgEnv {
        let mut cfg = CfgEnv::new_with_spec(CHAIN_SPEC);
        cfg.chain_id = self.chain_id;
        cfg
    }
}

/// What executing one transaction produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxExecution {
    /// Whether it succeeded (EIP-658 status).
    pub success: bool,
    /// Gas charged to the sender (after refunds, at least the EIP-7623 floor).
    pub gas_used: u64,
    /// Logs emitted (empty on failure).
    pub logs: Vec<Log>,
    /// Address of the contract created, for successful creations.
    pub contract_address: Option<Address>,
    /// Return or revert data.
    pub output: Bytes,
    /// Why execution halted (out of gas, invalid opcode, ...), if it did.
    pub halt: Option<String>,
}

/// Builds revm's transaction environment for a recovered transaction.
pub fn tx_env(tx: &RecoveredTx) -> TxEnv {
    let env = &tx.envelope;
    let authorization_list = match env.authorization_list() {
        Some(list) => list
            .iter()
            .zip(tx.authorities.iter().chain(std::iter::repeat(&None)))
            .map(|(auth, authority)| {
                let authority = match authority {
                    Some(a) => RecoveredAuthority::Valid(*a),
                    None => RecoveredAuthority::Invalid,
                };
                Either::Right(RecoveredAuthorization::new_unchecked(
                    auth.inner().clone(),
                    authority,
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    TxEnv {
        tx_type: env.ty(),
        caller: tx.sender,
        gas_limit: env.gas_limit(),
        gas_price: env.max_fee_per_gas(),
        kind: env.kind(),
        value: env.value(),
        data: env.input().clone(),
        nonce: env.nonce(),
        chain_id: env.chain_id(),
        access_list: env.access_list().cloned().unwrap_or_default(),
        gas_priority_fee: env.max_priority_fee_per_gas(),
        blob_hashes: Vec::new(),
        max_fee_per_blob_gas: 0,
        authorization_list,
    }
}

pub(crate) fn execution_of(result: ExecutionResult, tx_env: &TxEnv) -> TxExecution {
    let gas_used = result.tx_gas_used();
    match result {
        ExecutionResult::Success { logs, output, .. } => {
            let contract_address = match (&tx_env.kind, &output) {
                (TxKind::Create, revm::context::result::Output::Create(_, addr)) => *addr,
                _ => None,
            };
            TxExecution {
                success: true,
                gas_used,
                logs,
                contract_address,
                output: output.into_data(),
                halt: None,
            }
        }
        ExecutionResult::Revert { output, .. } => TxExecution {
            success: false,
            gas_used,
            logs: Vec::new(),
            contract_address: None,
            output,
            halt: None,
        },
        ExecutionResult::Halt { reason, .. } => TxExecution {
            success: false,
            gas_used,
            logs: Vec::new(),
            contract_address: None,
            output: Bytes::new(),
            halt: Some(halt_message(&format!("{reason:?}"))),
        },
    }
}

/// geth's wording for common halts.
fn halt_message(debug: &str) -> String {
    if debug.contains("OutOfGas") {
        "out of gas".into()
    } else if debug.contains("InvalidFEOpcode") || debug.contains("OpcodeNotFound") {
        "invalid opcode".into()
    } else if debug.contains("StackUnderflow") {
        "stack underflow".into()
    } else if debug.contains("StackOverflow") {
        "stack limit reached".into()
    } else {
        debug.to_ascii_lowercase()
    }
}

/// Executes transactions one after another over `base`, each seeing the previous ones' writes.
///
/// This is the reference every other executor must match byte for byte. A transaction that fails
/// validation (nonce, balance, gas) is not included: its slot in the output holds the error text,
/// and it leaves no trace in the state.
pub fn execute_sequential(base: ViewDb<'_>, env: &ExecEnv, txs: &[TxEnv]) -> BlockOutput {
    let ctx = Context::mainnet()
        .with_db(Overlay::new(base, env.spec()))
        .with_block(env.block.clone())
        .with_cfg(env.cfg.clone());
    let mut evm = ctx.build_mainnet();
    let mut results = Vec::with_capacity(txs.len());
    for tx in txs {
        match evm.transact_commit(tx.clone()) {
            Ok(result) => results.push(Ok(execution_of(result, tx))),
            Err(e) => results.push(Err(e.to_string())),
        }
    }
    let overlay = evm.ctx.journaled_state.database;
    BlockOutput { results, diff: overlay.into_diff() }
}

/// The revm transaction environments of recovered transactions, in order.
pub fn tx_envs(txs: &[&RecoveredTx]) -> Vec<TxEnv> {
    txs.iter().map(|tx| tx_env(tx)).collect()
}

/// How a call (`eth_call`, `eth_estimateGas`) is run.
#[derive(Clone, Debug, Default)]
pub struct CallRequest {
    /// Sender (zero address when not given).
    pub from: Option<Address>,
    /// Callee; `None` creates.
    pub to: Option<Address>,
    /// Gas limit (defaults to the RPC gas cap).
    pub gas: Option<u64>,
    /// Legacy gas price.
    pub gas_price: Option<u128>,
    /// EIP-1559 fee cap.
    pub max_fee_per_gas: Option<u128>,
    /// EIP-1559 tip.
    pub max_priority_fee_per_gas: Option<u128>,
    /// Value sent.
    pub value: Option<U256>,
    /// Call data.
    pub input: Bytes,
    /// Nonce (ignored: calls skip the nonce check).
    pub nonce: Option<u64>,
    /// Access list.
    pub access_list: Option<alloy_eips::eip2930::AccessList>,
    /// EIP-7702 authorizations (makes the call a type-4 transaction).
    pub authorization_list: Option<Vec<alloy_eips::eip7702::SignedAuthorization>>,
}

/// Errors of a call that did not run to a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call is invalid (e.g. insufficient funds for its gas price).
    #[error("{0}")]
    Invalid(String),
}

/// Runs `req` over `base` without committing anything (an `eth_call`).
pub fn call(
    base: ViewDb<'_>,
    block: &BlockContext,
    req: &CallRequest,
    gas_cap: u64,
) -> Result<TxExecution, CallError> {
    let fee_given = req.gas_price.is_some() || req.max_fee_per_gas.is_some();
    let mut cfg = block.cfg();
    cfg.disable_nonce_check = true;
    cfg.disable_block_gas_limit = true;
    if !fee_given {
        // geth's NoBaseFee: calls without a price run at price zero.
        cfg.disable_base_fee = true;
    }
    let gas_limit = req.gas.unwrap_or(gas_cap).min(gas_cap);
    let mut block_env = block.block_env();
    if !fee_given {
        block_env.basefee = 0;
    }
    let (mut tx_type, gas_price, tip) = match (req.gas_price, req.max_fee_per_gas) {
        (Some(p), _) => (if req.access_list.is_some() { 1 } else { 0 }, p, None),
        (None, Some(f)) => (2, f, Some(req.max_priority_fee_per_gas.unwrap_or(0).min(f))),
        (None, None) => (2, 0, Some(0)),
    };
    let authorization_list: Vec<_> =
        req.authorization_list.iter().flatten().map(|a| Either::Left(a.clone())).collect();
    if !authorization_list.is_empty() {
        tx_type = 4;
    }
    let env = TxEnv {
        tx_type,
        caller: req.from.unwrap_or_default(),
        gas_limit,
        gas_price,
        kind: req.to.map_or(TxKind::Create, TxKind::Call),
        value: req.value.unwrap_or_default(),
        data: req.input.clone(),
        nonce: 0,
        chain_id: Some(block.chain_id),
        access_list: req.access_list.clone().unwrap_or_default(),
        gas_priority_fee: tip,
        blob_hashes: Vec::new(),
        max_fee_per_blob_gas: 0,
        authorization_list,
    };
    let spec = cfg.spec;
    let ctx =
        Context::mainnet().with_db(Overlay::new(base, spec)).with_block(block_env).with_cfg(cfg);
    let mut evm = ctx.build_mainnet();
    let result = evm.transact(env.clone()).map_err(|e| CallError::Invalid(e.to_string()))?;
    Ok(execution_of(result.result, &env))
}

/// Spec helper for callers that need to compare against the chain's rules.
pub fn chain_spec() -> SpecId {
    CHAIN_SPEC
}
