//! Parallel optimistic execution of a mini-block: Block-STM on revm.
//!
//! Transactions run speculatively on all workers at once, reading through a multi-version
//! memory ([`mv`]); a collaborative scheduler ([`scheduler`]) interleaves executions with
//! validations of what each transaction read, and re-executes those whose reads changed. The
//! output is assembled exactly as sequential execution would commit it, and must be identical to
//! [`execute_sequential`] byte for byte: receipts, logs, gas and state diff.
//!
//! Threads: a fixed pool of `threads` workers, created once with the executor and alive for the
//! process. Each block, every worker builds one revm instance and reuses it for all the
//! incarnations it runs. The calling thread (the sequencer) waits while they work.
//!
//! Adaptivity: Block-STM costs bookkeeping per read and write, and re-executions when
//! transactions conflict; whether it pays depends on the machine (cores, caches), the
//! transactions (cheap transfers or heavy contract calls) and how much they conflict. So the
//! executor measures instead of guessing ([`AdaptivePolicy`]): mini-blocks below
//! [`MIN_PARALLEL_TXS`] run sequentially; above it, it keeps a moving average of the wall time
//! per unit of gas of each mode, runs the cheaper one, and re-measures the other every
//! [`PROBE_INTERVAL`] blocks. A block whose conflict rate explodes (more than
//! [`CONFLICT_LIMIT`] incarnations per transaction) also sends the next blocks to sequential
//! execution, with exponential back-off, before its cost average has caught up.

mod mv;
mod scheduler;
mod worker;

use crate::exec::{execute_sequential, execution_of, BlockOutput, ExecEnv, Overlay};
use crossbeam_utils::CachePadded;
use revm::{context::TxEnv, database_interface::DatabaseCommit};
use std::sync::Mutex;
use strobe_storage::ViewDb;

/// Mini-blocks with fewer transactions than this run sequentially by default: below it the
/// bookkeeping costs more than two workers gain (see BENCHMARKS.md, "Block-STM threshold").
pub const MIN_PARALLEL_TXS: usize = 16;

/// Incarnations per transaction above which a block counts as pathologically conflicting.
pub const CONFLICT_LIMIT: f64 = 1.5;

/// The longest run of mini-blocks executed sequentially after a conflicting one.
pub const MAX_SEQUENTIAL_BACKOFF: u32 = 64;

/// Every this many eligible mini-blocks, the mode currently judged slower runs once, so that its
/// cost estimate follows changes in the workload.
pub const PROBE_INTERVAL: u32 = 64;

/// Weight of the newest block in the moving averages of cost per gas.
const COST_SMOOTHING: f64 = 0.2;

/// How [`ParallelExecutor::execute`] chooses between Block-STM and sequential execution.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdaptivePolicy {
    /// Moving average of sequential wall time per gas (ns), once measured.
    pub sequential_ns_per_gas: Option<f64>,
    /// Moving average of Block-STM wall time per gas (ns), once measured.
    pub parallel_ns_per_gas: Option<f64>,
    blocks: u32,
    sequential_left: u32,
    backoff: u32,
}

impl AdaptivePolicy {
    fn choose_parallel(&mut self) -> bool {
        self.blocks = self.blocks.wrapping_add(1);
        if self.sequential_left > 0 {
            self.sequential_left -= 1;
            return false;
        }
        let (seq, par) = match (self.sequential_ns_per_gas, self.parallel_ns_per_gas) {
            (None, _) => return false,
            (Some(_), None) => return true,
            (Some(seq), Some(par)) => (seq, par),
        };
        let probe = self.blocks.is_multiple_of(PROBE_INTERVAL);
        (par < seq) != probe
    }

    fn record(&mut self, parallel: bool, elapsed: std::time::Duration, gas: u64, stats: ExecStats) {
        if gas > 0 {
            let cost = elapsed.as_nanos() as f64 / gas as f64;
            let slot = if parallel {
                &mut self.parallel_ns_per_gas
            } else {
                &mut self.sequential_ns_per_gas
            };
            *slot = Some(match *slot {
                Some(avg) => avg + COST_SMOOTHING * (cost - avg),
                None => cost,
            });
        }
        if parallel {
            if stats.incarnations as f64 > CONFLICT_LIMIT * stats.txs as f64 {
                self.backoff = (self.backoff * 2).clamp(1, MAX_SEQUENTIAL_BACKOFF);
                self.sequential_left = self.backoff;
            } else {
                self.backoff = 0;
            }
        }
    }
}

/// Errors creating a [`ParallelExecutor`].
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    /// The worker threads could not be started.
    #[error("could not start {threads} execution threads: {reason}")]
    Threads {
        /// How many were asked for.
        threads: usize,
        /// What the OS said.
        reason: String,
    },
}

/// How a block was executed, and what it cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Whether Block-STM ran (otherwise the sequential executor did).
    pub parallel: bool,
    /// Transactions in the block.
    pub txs: usize,
    /// Incarnations executed (equals `txs` for sequential runs and conflict-free blocks).
    pub incarnations: usize,
}

/// Executes mini-blocks on a pool of Block-STM workers, falling back to sequential execution
/// where that is faster.
pub struct ParallelExecutor {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    min_parallel_txs: usize,
    policy: AdaptivePolicy,
    last: ExecStats,
}

impl std::fmt::Debug for ParallelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelExecutor")
            .field("threads", &self.threads)
            .field("min_parallel_txs", &self.min_parallel_txs)
            .finish()
    }
}

impl ParallelExecutor {
    /// An executor with `threads` workers (at least one). With one, Block-STM runs on the
    /// calling thread (useful only for testing); the adaptive path then always runs sequentially.
    pub fn new(threads: usize) -> Result<Self, ParallelError> {
        Self::pinned(threads, &[])
    }

    /// [`Self::new`] with worker `i` pinned to `cores[i % cores.len()]` (empty: not pinned).
    pub fn pinned(threads: usize, cores: &[usize]) -> Result<Self, ParallelError> {
        let threads = threads.max(1);
        let cores = cores.to_vec();
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("strobe-exec-{i}"))
                    .start_handler(move |i| {
                        if !cores.is_empty() {
                            let id = cores[i % cores.len()];
                            if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                                tracing::warn!(core = id, "could not pin execution worker {i}");
                            }
                        }
                    })
                    .build()
                    .map_err(|e| ParallelError::Threads { threads, reason: e.to_string() })?,
            )
        } else {
            None
        };
        Ok(Self {
            threads,
            pool,
            min_parallel_txs: MIN_PARALLEL_TXS,
            policy: AdaptivePolicy::default(),
            last: ExecStats::default(),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets the smallest mini-block that runs in parallel (default [`MIN_PARALLEL_TXS`]).
    pub fn set_min_parallel_txs(&mut self, txs: usize) {
        self.min_parallel_txs = txs.max(1);
    }

    /// How the last block given to [`execute`](Self::execute) ran.
    pub fn last_stats(&self) -> ExecStats {
        self.last
    }

    /// The adaptive policy's current estimates.
    pub fn policy(&self) -> AdaptivePolicy {
        self.policy
    }

    /// Executes `txs` over `base`, in parallel when that pays, sequentially otherwise. The
    /// output is the sequential one in either case.
    pub fn execute(&mut self, base: ViewDb<'_>, env: &ExecEnv, txs: &[TxEnv]) -> BlockOutput {
        let n = txs.len();
        if self.pool.is_none() || n < self.min_parallel_txs {
            self.last = ExecStats { parallel: false, txs: n, incarnations: n };
            return execute_sequential(base, env, txs);
        }
        let parallel = self.policy.choose_parallel();
        let started = std::time::Instant::now();
        let (output, stats) = if parallel {
            self.execute_block_stm(base, env, txs)
        } else {
            (
                execute_sequential(base, env, txs),
                ExecStats { parallel: false, txs: n, incarnations: n },
            )
        };
        let gas: u64 = output.results.iter().flatten().map(|r| r.gas_used).sum();
        self.policy.record(parallel, started.elapsed(), gas, stats);
        self.last = stats;
        output
    }

    /// Executes `txs` with Block-STM regardless of size or conflicts.
    pub fn execute_block_stm(
        &self,
        base: ViewDb<'_>,
        env: &ExecEnv,
        txs: &[TxEnv],
    ) -> (BlockOutput, ExecStats) {
        let n = txs.len();
        let mv = mv::MvMemory::new(n, env.block.beneficiary);
        let scheduler = scheduler::Scheduler::new(n);
        let outcomes: Vec<CachePadded<Mutex<Option<worker::Outcome>>>> =
            (0..n).map(|_| CachePadded::new(Mutex::new(None))).collect();
        let run = worker::BlockRun {
            mv: &mv,
            scheduler: &scheduler,
            base,
            env,
            txs,
            outcomes: &outcomes,
        };
        match &self.pool {
            Some(pool) => {
                pool.broadcast(|_| run.work());
            }
            None => run.work(),
        }
        let stats = ExecStats { parallel: true, txs: n, incarnations: scheduler.executions() };
        let out = assemble(base, env, txs, outcomes);
        // Freeing thousands of small allocations is off the critical path: hand it to a worker.
        match &self.pool {
            Some(pool) => pool.spawn(move || drop((mv, scheduler))),
            None => drop((mv, scheduler)),
        }
        (out, stats)
    }
}

/// Commits the final incarnations in block order, paying deferred fees where sequential
/// execution would have paid them, so the diff comes out exactly as the sequential one.
fn assemble(
    base: ViewDb<'_>,
    env: &ExecEnv,
    txs: &[TxEnv],
    outcomes: Vec<CachePadded<Mutex<Option<worker::Outcome>>>>,
) -> BlockOutput {
    let mut overlay = Overlay::new(base, env.spec());
    let mut results = Vec::with_capacity(txs.len());
    for (tx, slot) in txs.iter().zip(outcomes) {
        let outcome = CachePadded::into_inner(slot)
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("Block-STM finished with a transaction never executed");
        match outcome.result {
            Ok(result) => {
                overlay.commit(outcome.state);
                let paid = match outcome.fee_credit {
                    Some(fee) => overlay.credit_lazily(env.block.beneficiary, fee),
                    None => Ok(()),
                };
                results.push(match paid {
                    Ok(()) => Ok(execution_of(result, tx)),
                    Err(e) => Err(e.to_string()),
                });
            }
            Err(e) => results.push(Err(e)),
        }
    }
    BlockOutput { results, diff: overlay.into_diff() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stats(parallel: bool, txs: usize, incarnations: usize) -> ExecStats {
        ExecStats { parallel, txs, incarnations }
    }

    #[test]
    fn policy_measures_both_modes_then_runs_the_cheaper_and_probes_the_other() {
        let mut p = AdaptivePolicy::default();
        assert!(!p.choose_parallel(), "sequential is measured first");
        p.record(false, Duration::from_micros(100), 1_000, stats(false, 10, 10));
        assert!(p.choose_parallel(), "then Block-STM");
        p.record(true, Duration::from_micros(50), 1_000, stats(true, 10, 10));
        let runs: Vec<bool> = (0..PROBE_INTERVAL * 2).map(|_| p.choose_parallel()).collect();
        assert_eq!(
            runs.iter().filter(|parallel| !**parallel).count(),
            2,
            "only probes run sequential"
        );
        // Block-STM turns slow: the average moves and sequential takes over.
        for _ in 0..20 {
            p.record(true, Duration::from_micros(400), 1_000, stats(true, 10, 10));
        }
        let runs: Vec<bool> = (0..PROBE_INTERVAL).map(|_| p.choose_parallel()).collect();
        assert_eq!(
            runs.iter().filter(|parallel| **parallel).count(),
            1,
            "only the probe is parallel"
        );
    }

    #[test]
    fn exploding_conflicts_back_off_exponentially() {
        let mut p = AdaptivePolicy::default();
        p.record(false, Duration::from_micros(100), 1_000, stats(false, 10, 10));
        p.record(true, Duration::from_micros(10), 1_000, stats(true, 10, 10));
        assert!(p.choose_parallel());
        p.record(true, Duration::from_micros(10), 1_000, stats(true, 10, 40));
        assert!(!p.choose_parallel(), "one sequential block after the first conflict storm");
        assert!(p.choose_parallel());
        p.record(true, Duration::from_micros(10), 1_000, stats(true, 10, 40));
        assert!(!p.choose_parallel());
        assert!(!p.choose_parallel(), "two after the second");
        assert!(p.choose_parallel());
    }
}
