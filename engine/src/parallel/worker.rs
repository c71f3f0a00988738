//! One Block-STM worker: a revm instance reading through the multi-version memory.
//!
//! The worker builds its EVM once per block and reuses it for every incarnation it runs. Reads go
//! through [`WorkerDb`], which resolves each location against the multi-version memory, records
//! the value for validation, and fails with [`ReadError::Blocked`] on an ESTIMATE. Fees are paid
//! to the beneficiary lazily ([`LazyFeeHandler`]) unless the transaction itself loaded the
//! beneficiary.

use super::{
    mv::{Blocked, InfoValue, Location, MvMemory, TxIdx, Value},
    scheduler::{Scheduler, Task, Version},
};
use crate::exec::ExecEnv;
use alloy_primitives::{Address, B256, U256};
use revm::{
    bytecode::Bytecode,
    context::{
        result::{EVMError, ExecutionResult, HaltReason, InvalidTransaction},
        Cfg, ContextSetters, TxEnv,
    },
    context_interface::{JournalTr, Transaction},
    database_interface::{DBErrorMarker, Database, DatabaseRef},
    handler::{post_execution, FrameResult, Handler, MainnetContext},
    primitives::{hardfork::SpecId, KECCAK_EMPTY},
    state::{AccountInfo, EvmState},
    Context, MainBuilder, MainContext, MainnetEvm,
};
use std::{cell::Cell, sync::Mutex};
use strobe_storage::{AccountState, StoreError, ViewDb};

/// Why a worker's read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The value comes from a transaction that is being re-executed.
    #[error("read blocked by transaction {}", .0 .0)]
    Blocked(Blocked),
    /// The base state failed (same text as in sequential execution).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DBErrorMarker for ReadError {}

/// The final result of one transaction's latest incarnation.
pub(crate) struct Outcome {
    /// revm's result, or the validation error text (the transaction is not included).
    pub(crate) result: Result<ExecutionResult, String>,
    /// What the transaction changed, without the lazily paid fee.
    pub(crate) state: EvmState,
    /// Fee owed to the beneficiary, when it was not paid inside the transaction.
    pub(crate) fee_credit: Option<U256>,
}

/// The revm database of one worker: multi-version reads for transaction `idx`.
pub(crate) struct WorkerDb<'a> {
    mv: &'a MvMemory,
    base: ViewDb<'a>,
    idx: TxIdx,
    reads: Vec<(Location, Value)>,
    /// This worker's private copies of the code it ran. Every transaction calling a hot
    /// contract clones its code; cloning a shared copy would bounce the reference count's cache
    /// line between cores on every call.
    codes: alloy_primitives::map::HashMap<B256, Bytecode>,
}

impl WorkerDb<'_> {
    fn base_account(&self, address: &Address) -> Option<AccountState> {
        self.base.view.account(address)
    }

    fn code(&mut self, code_hash: B256) -> Result<Bytecode, StoreError> {
        if let Some(code) = self.codes.get(&code_hash) {
            return Ok(code.clone());
        }
        let shared = match self.mv.code(&code_hash) {
            Some(code) => code,
            None => self.base.code_by_hash_ref(code_hash)?,
        };
        let private = Bytecode::new_raw(shared.original_bytes().to_vec().into());
        self.codes.insert(code_hash, private.clone());
        Ok(private)
    }
}

impl Database for WorkerDb<'_> {
    type Error = ReadError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, ReadError> {
        let base = self.base_account(&address);
        let info = self
            .mv
            .read_info(address, self.idx, || {
                base.map(|a| InfoValue { nonce: a.nonce, code_hash: a.code_hash })
            })
            .map_err(ReadError::Blocked)?;
        let balance = self
            .mv
            .read_balance(address, self.idx, || base.map(|a| a.balance).unwrap_or_default())
            .map_err(ReadError::Blocked)?;
        self.reads.push((Location::Info(address), Value::Info(info)));
        self.reads.push((Location::Balance(address), Value::Balance(balance)));
        let info = match info {
            Some(info) => info,
            // Only a fee credit can give a balance to an account nothing else created.
            None if !balance.is_zero() => InfoValue { nonce: 0, code_hash: KECCAK_EMPTY },
            None => return Ok(None),
        };
        let code = if info.code_hash == KECCAK_EMPTY {
            Some(Bytecode::default())
        } else {
            Some(self.code(info.code_hash)?)
        };
        Ok(Some(AccountInfo {
            balance,
            nonce: info.nonce,
            code_hash: info.code_hash,
            account_id: None,
            code,
        }))
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, ReadError> {
        Ok(self.code(code_hash)?)
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, ReadError> {
        let value = self
            .mv
            .read_storage(address, index, self.idx, || self.base.view.storage(&address, &index))
            .map_err(ReadError::Blocked)?;
        self.reads.push((Location::Storage(address, index), Value::Storage(value)));
        Ok(value)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, ReadError> {
        Ok(self.base.block_hash_ref(number)?)
    }
}

type WorkerEvm<'a> = MainnetEvm<MainnetContext<WorkerDb<'a>>>;

/// revm's mainnet handler, except that a fee owed to a beneficiary the transaction never loaded
/// is recorded instead of paid.
///
/// Every transaction pays the beneficiary, so paying inside the transaction would make each one
/// read and write the same balance and serialise the whole block. The deferred credit is added
/// when a later transaction reads the beneficiary, and when the block's diff is assembled.
struct LazyFeeHandler<'a> {
    fee_credit: Cell<Option<U256>>,
    _evm: std::marker::PhantomData<WorkerEvm<'a>>,
}

impl<'a> Handler for LazyFeeHandler<'a> {
    type Evm = WorkerEvm<'a>;
    type Error = EVMError<ReadError, InvalidTransaction>;
    type HaltReason = HaltReason;

    fn reward_beneficiary(
        &self,
        evm: &mut Self::Evm,
        exec_result: &mut FrameResult,
    ) -> Result<(), Self::Error> {
        let ctx = &evm.ctx;
        let beneficiary = ctx.block.beneficiary;
        let spec = ctx.cfg.spec;
        // Pay in place when the transaction already holds the beneficiary (its balance is read
        // anyway), when fees are off, and before Spurious Dragon, where even a zero payment
        // creates an empty account that later gas costs depend on.
        let fee = fee(ctx, exec_result);
        let pay_in_place = ctx.cfg.is_fee_charge_disabled()
            || ctx.journaled_state.inner.state.contains_key(&beneficiary)
            || !spec.is_enabled_in(SpecId::SPURIOUS_DRAGON) && fee.is_zero();
        if pay_in_place {
            return post_execution::reward_beneficiary(&mut evm.ctx, exec_result.gas())
                .map_err(From::from);
        }
        self.fee_credit.set(Some(fee));
        Ok(())
    }
}

/// The fee revm's `reward_beneficiary` pays, computed without touching the state.
fn fee(ctx: &MainnetContext<WorkerDb<'_>>, exec_result: &FrameResult) -> U256 {
    let basefee = ctx.block.basefee as u128;
    let effective_gas_price = ctx.tx.effective_gas_price(basefee);
    let coinbase_gas_price = if ctx.cfg.spec.is_enabled_in(SpecId::LONDON) {
        effective_gas_price.saturating_sub(basefee)
    } else {
        effective_gas_price
    };
    let gas = exec_result.gas();
    let effective_used = gas.used().saturating_sub(gas.reservoir());
    U256::from(coinbase_gas_price * effective_used as u128)
}

/// The shared state of one Block-STM run, borrowed by every worker.
pub(crate) struct BlockRun<'a> {
    pub(crate) mv: &'a MvMemory,
    pub(crate) scheduler: &'a Scheduler,
    pub(crate) base: ViewDb<'a>,
    pub(crate) env: &'a ExecEnv,
    pub(crate) txs: &'a [TxEnv],
    pub(crate) outcomes: &'a [crossbeam_utils::CachePadded<Mutex<Option<Outcome>>>],
}

enum Executed {
    Done { wrote_new_location: bool },
    Blocked(TxIdx),
}

impl BlockRun<'_> {
    /// The worker loop: take tasks until the scheduler reports the block done.
    pub(crate) fn work(&self) {
        let db = WorkerDb {
            mv: self.mv,
            base: self.base,
            idx: 0,
            reads: Vec::new(),
            codes: Default::default(),
        };
        let mut evm = Context::mainnet()
            .with_db(db)
            .with_block(self.env.block.clone())
            .with_cfg(self.env.cfg.clone())
            .build_mainnet();
        let mut task: Option<Task> = None;
        let mut idle_rounds = 0u32;
        loop {
            task = match task.take() {
                Some(Task::Execute(version)) => self.try_execute(&mut evm, version),
                Some(Task::Validate(version)) => self.validate(version),
                None => {
                    if self.scheduler.done() {
                        break;
                    }
                    let next = self.scheduler.next_task();
                    if next.is_none() {
                        idle_rounds += 1;
                        if idle_rounds < 64 {
                            std::hint::spin_loop();
                        } else {
                            std::thread::yield_now();
                        }
                    } else {
                        idle_rounds = 0;
                    }
                    next
                }
            };
        }
    }

    fn try_execute(&self, evm: &mut WorkerEvm<'_>, version: Version) -> Option<Task> {
        loop {
            match self.execute(evm, version.idx) {
                Executed::Done { wrote_new_location } => {
                    return self.scheduler.finish_execution(version, wrote_new_location);
                }
                Executed::Blocked(blocking) => {
                    if self.scheduler.add_dependency(version.idx, blocking) {
                        return None;
                    }
                    // The blocker finished in the meantime: run again right away.
                }
            }
        }
    }

    fn validate(&self, version: Version) -> Option<Task> {
        let valid = self.mv.validate_reads(version.idx, self.base.view);
        let aborted = !valid && self.scheduler.try_validation_abort(version);
        if aborted {
            self.mv.convert_writes_to_estimates(version.idx);
        }
        self.scheduler.finish_validation(version.idx, aborted)
    }

    fn execute(&self, evm: &mut WorkerEvm<'_>, idx: TxIdx) -> Executed {
        {
            let db = &mut evm.ctx.journaled_state.database;
            db.idx = idx;
            db.reads.clear();
        }
        evm.ctx.set_tx(self.txs[idx].clone());
        let mut handler =
            LazyFeeHandler { fee_credit: Cell::new(None), _evm: std::marker::PhantomData };
        let result = handler.run(evm);
        let state = evm.ctx.journaled_state.finalize();
        let reads = std::mem::take(&mut evm.ctx.journaled_state.database.reads);
        let (result, writes, fee_credit) = match result {
            Err(EVMError::Database(ReadError::Blocked(Blocked(j)))) => return Executed::Blocked(j),
            Err(e) => (Err(e.to_string()), Vec::new(), None),
            Ok(result) => {
                let fee_credit = handler.fee_credit.get();
                let writes = self.writes_of(&state, &reads);
                (Ok(result), writes, fee_credit)
            }
        };
        let wrote_new_location = self.mv.record(idx, reads, writes, fee_credit);
        *self.outcomes[idx].lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Outcome { result, state, fee_credit });
        Executed::Done { wrote_new_location }
    }

    /// The multi-version writes of one incarnation: every value that differs from what the
    /// transaction read, with the same account-deletion rules the sequential commit applies.
    fn writes_of(&self, state: &EvmState, reads: &[(Location, Value)]) -> Vec<(Location, Value)> {
        let state_clear = self.env.spec().is_enabled_in(SpecId::SPURIOUS_DRAGON);
        let read = |location: Location| reads.iter().find(|(l, _)| *l == location).map(|(_, v)| *v);
        let mut writes = Vec::new();
        for (address, account) in state {
            if !account.is_touched() {
                continue;
            }
            let address = *address;
            let read_info = read(Location::Info(address));
            let read_balance = read(Location::Balance(address));
            let deleted = account.is_selfdestructed()
                || state_clear && !account.is_created() && account.is_empty();
            if deleted {
                if read_info != Some(Value::Info(None)) {
                    writes.push((Location::Info(address), Value::Info(None)));
                    writes.push((Location::StorageReset(address), Value::StorageReset));
                }
                if read_balance != Some(Value::Balance(U256::ZERO)) {
                    writes.push((Location::Balance(address), Value::Balance(U256::ZERO)));
                }
                continue;
            }
            let info = Value::Info(Some(InfoValue {
                nonce: account.info.nonce,
                code_hash: account.info.code_hash,
            }));
            if read_info != Some(info) {
                writes.push((Location::Info(address), info));
                if account.info.code_hash != KECCAK_EMPTY {
                    if let Some(code) = &account.info.code {
                        self.mv.publish_code(account.info.code_hash, code.clone());
                    }
                }
            }
            let balance = Value::Balance(account.info.balance);
            if read_balance != Some(balance) {
                writes.push((Location::Balance(address), balance));
            }
            let created = account.is_created();
            if created {
                writes.push((Location::StorageReset(address), Value::StorageReset));
            }
            for (slot, value) in &account.storage {
                if created || value.is_changed() {
                    writes.push((
                        Location::Storage(address, *slot),
                        Value::Storage(value.present_value()),
                    ));
                }
            }
        }
        writes
    }
}
