//! Sequential execution of a mini-block on revm.
//!
//! Runs on the sequencer thread (and, for `eth_call`/`eth_estimateGas`, on network threads over a
//! read-only view). Each transaction executes and commits into an [`Overlay`] above the last
//! committed state; the overlay then becomes the mini-block's [`StateDiff`].

use crate::tx::{RecoveredTx, CHAIN_SPEC};
use alloy_consensus::{Transaction, Typed2718};
use alloy_primitives::{map::HashMap, Address, Bytes, Log, TxKind, B256, U256};
use revm::{
    bytecode::Bytecode,
    context::{result::ExecutionResult, BlockEnv, CfgEnv, Context, TxEnv},
    context_interface::{
        either::Either,
        transaction::{RecoveredAuthority, RecoveredAuthorization},
    },
    database_interface::{Database, DatabaseCommit, DatabaseRef},
    primitives::{hardfork::SpecId, AddressMap, StorageKey, StorageValue},
    state::{Account, AccountInfo},
    ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext,
};
use strobe_storage::{AccountChange, AccountState, StateDiff, StoreError, ViewDb};

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

impl BlockContext {
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
#[derive(Clone, Debug)]
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

/// One account's accumulated change inside an [`Overlay`].
#[derive(Clone, Debug, Default)]
struct OverlayAccount {
    info: Option<AccountState>,
    storage_cleared: bool,
    storage: HashMap<U256, U256>,
}

/// Uncommitted writes of the transactions executed so far in one mini-block, over a base view.
pub struct Overlay<'a> {
    base: ViewDb<'a>,
    accounts: HashMap<Address, OverlayAccount>,
    codes: HashMap<B256, Bytecode>,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`.
    pub fn new(base: ViewDb<'a>) -> Self {
        Self { base, accounts: HashMap::default(), codes: HashMap::default() }
    }

    /// The writes so far as a canonical [`StateDiff`].
    pub fn into_diff(self) -> StateDiff {
        let mut accounts: Vec<AccountChange> = self
            .accounts
            .into_iter()
            .map(|(address, a)| {
                let mut storage: Vec<(U256, U256)> = a.storage.into_iter().collect();
                storage.sort_unstable_by_key(|(k, _)| *k);
                AccountChange { address, info: a.info, storage_cleared: a.storage_cleared, storage }
            })
            .collect();
        accounts.sort_unstable_by_key(|a| a.address);
        let mut codes: Vec<(B256, Bytecode)> = self.codes.into_iter().collect();
        codes.sort_unstable_by_key(|(h, _)| *h);
        StateDiff { accounts, codes }
    }

    fn commit_account(&mut self, address: Address, account: Account) {
        if !account.is_touched() {
            return;
        }
        if account.is_selfdestructed() {
            self.accounts.insert(
                address,
                OverlayAccount { info: None, storage_cleared: true, storage: HashMap::default() },
            );
            return;
        }
        let is_created = account.is_created();
        if !is_created && account.is_empty() {
            // EIP-161: a touched empty account is removed.
            let entry = self.accounts.entry(address).or_default();
            entry.info = None;
            entry.storage_cleared = true;
            entry.storage.clear();
            return;
        }
        if let Some(code) = &account.info.code {
            if !code.is_empty() && self.base.view.code(&account.info.code_hash).is_none() {
                self.codes.insert(account.info.code_hash, code.clone());
            }
        }
        let entry = self.accounts.entry(address).or_default();
        if is_created {
            entry.storage_cleared = true;
            entry.storage.clear();
        }
        entry.info = Some(AccountState {
            nonce: account.info.nonce,
            balance: account.info.balance,
            code_hash: account.info.code_hash,
        });
        for (slot, value) in account.storage {
            if value.is_changed() || is_created {
                entry.storage.insert(slot, value.present_value());
            }
        }
    }
}

impl Database for Overlay<'_> {
    type Error = StoreError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, StoreError> {
        if let Some(a) = self.accounts.get(&address) {
            return Ok(a.info.map(|i| AccountInfo {
                balance: i.balance,
                nonce: i.nonce,
                code_hash: i.code_hash,
                account_id: None,
                code: None,
            }));
        }
        self.base.basic_ref(address)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, StoreError> {
        if let Some(code) = self.codes.get(&code_hash) {
            return Ok(code.clone());
        }
        self.base.code_by_hash_ref(code_hash)
    }

    fn storage(&mut self, address: Address, index: StorageKey) -> Result<StorageValue, StoreError> {
        if let Some(a) = self.accounts.get(&address) {
            if let Some(v) = a.storage.get(&index) {
                return Ok(*v);
            }
            if a.storage_cleared || a.info.is_none() {
                return Ok(U256::ZERO);
            }
        }
        self.base.storage_ref(address, index)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, StoreError> {
        self.base.block_hash_ref(number)
    }
}

impl DatabaseCommit for Overlay<'_> {
    fn commit(&mut self, changes: AddressMap<Account>) {
        for (address, account) in changes {
            self.commit_account(address, account);
        }
    }
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

fn execution_of(result: ExecutionResult, tx_env: &TxEnv) -> TxExecution {
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
/// A transaction that fails validation (nonce, balance, gas) is not included: its slot in the
/// returned vector holds the error text, and it leaves no trace in the state.
pub fn execute_sequential(
    base: ViewDb<'_>,
    block: &BlockContext,
    txs: &[&RecoveredTx],
) -> (Vec<Result<TxExecution, String>>, StateDiff) {
    let ctx = Context::mainnet()
        .with_db(Overlay::new(base))
        .with_block(block.block_env())
        .with_cfg(block.cfg());
    let mut evm = ctx.build_mainnet();
    let mut out = Vec::with_capacity(txs.len());
    for tx in txs {
        let env = tx_env(tx);
        match evm.transact_commit(env.clone()) {
            Ok(result) => out.push(Ok(execution_of(result, &env))),
            Err(e) => out.push(Err(e.to_string())),
        }
    }
    let overlay = evm.ctx.journaled_state.database;
    (out, overlay.into_diff())
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
    let ctx = Context::mainnet().with_db(Overlay::new(base)).with_block(block_env).with_cfg(cfg);
    let mut evm = ctx.build_mainnet();
    let result = evm.transact(env.clone()).map_err(|e| CallError::Invalid(e.to_string()))?;
    Ok(execution_of(result.result, &env))
}

/// Spec helper for callers that need to compare against the chain's rules.
pub fn chain_spec() -> SpecId {
    CHAIN_SPEC
}
