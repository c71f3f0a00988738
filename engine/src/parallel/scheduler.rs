//! Block-STM's collaborative scheduler (Gelashvili et al. 2022, algorithms 4 and 5).
//!
//! Two shared counters hand out work: `execution_idx` (the next transaction to execute) and
//! `validation_idx` (the next to validate); a worker takes the lower of the two. Aborts and
//! resumed dependencies pull the counters back down. The block is done when both counters have
//! passed the end, no task is in flight, and no decrease raced with that observation.

use super::mv::TxIdx;
use crossbeam_utils::CachePadded;
use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

/// Which incarnation of a transaction a task is about.
pub(crate) type Incarnation = usize;

/// A transaction index with its incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) idx: TxIdx,
    pub(crate) incarnation: Incarnation,
}

/// Work for one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// Execute this incarnation.
    Execute(Version),
    /// Validate the read set of this incarnation.
    Validate(Version),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    ReadyToExecute,
    Executing,
    Executed,
    Aborting,
}

#[derive(Debug)]
struct Status {
    incarnation: Incarnation,
    stage: Stage,
}

/// Scheduling state of one Block-STM run.
///
/// Each shared counter and each transaction's state sits on its own cache line: two workers
/// usually hold neighbouring transactions, and false sharing between them would cost more than
/// the work itself.
pub(crate) struct Scheduler {
    len: usize,
    execution_idx: CachePadded<AtomicUsize>,
    validation_idx: CachePadded<AtomicUsize>,
    decrease_cnt: CachePadded<AtomicUsize>,
    num_active_tasks: CachePadded<AtomicUsize>,
    done_marker: CachePadded<AtomicBool>,
    txs: Vec<CachePadded<TxState>>,
    /// Incarnations started, for the conflict statistics.
    executions: CachePadded<AtomicUsize>,
}

struct TxState {
    status: Mutex<Status>,
    dependents: Mutex<Vec<TxIdx>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked has already failed the block; keep the others going to the end.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    /// A scheduler for `len` transactions, all ready to execute.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            len,
            execution_idx: CachePadded::new(AtomicUsize::new(0)),
            validation_idx: CachePadded::new(AtomicUsize::new(0)),
            decrease_cnt: CachePadded::new(AtomicUsize::new(0)),
            num_active_tasks: CachePadded::new(AtomicUsize::new(0)),
            done_marker: CachePadded::new(AtomicBool::new(len == 0)),
            txs: (0..len)
                .map(|_| {
                    CachePadded::new(TxState {
                        status: Mutex::new(Status { incarnation: 0, stage: Stage::ReadyToExecute }),
                        dependents: Mutex::default(),
                    })
                })
                .collect(),
            executions: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Whether every transaction is executed and validated.
    pub(crate) fn done(&self) -> bool {
        self.done_marker.load(Ordering::Acquire)
    }

    /// How many incarnations were started in total (equals the transaction count when nothing
    /// conflicted).
    pub(crate) fn executions(&self) -> usize {
        self.executions.load(Ordering::Relaxed)
    }

    fn decrease_execution_idx(&self, target: TxIdx) {
        self.execution_idx.fetch_min(target, Ordering::SeqCst);
        self.decrease_cnt.fetch_add(1, Ordering::SeqCst);
    }

    fn decrease_validation_idx(&self, target: TxIdx) {
        self.validation_idx.fetch_min(target, Ordering::SeqCst);
        self.decrease_cnt.fetch_add(1, Ordering::SeqCst);
    }

    fn check_done(&self) {
        let observed = self.decrease_cnt.load(Ordering::SeqCst);
        if self.execution_idx.load(Ordering::SeqCst).min(self.validation_idx.load(Ordering::SeqCst))
            >= self.len
            && self.num_active_tasks.load(Ordering::SeqCst) == 0
            && observed == self.decrease_cnt.load(Ordering::SeqCst)
        {
            self.done_marker.store(true, Ordering::Release);
        }
    }

    /// Moves a ready transaction to executing; `None` when someone else got it first.
    fn try_incarnate(&self, idx: TxIdx) -> Option<Version> {
        if idx < self.len {
            let mut status = lock(&self.txs[idx].status);
            if status.stage == Stage::ReadyToExecute {
                status.stage = Stage::Executing;
                self.executions.fetch_add(1, Ordering::Relaxed);
                return Some(Version { idx, incarnation: status.incarnation });
            }
        }
        None
    }

    fn next_version_to_execute(&self) -> Option<Version> {
        if self.execution_idx.load(Ordering::SeqCst) >= self.len {
            self.check_done();
            return None;
        }
        self.num_active_tasks.fetch_add(1, Ordering::SeqCst);
        let idx = self.execution_idx.fetch_add(1, Ordering::SeqCst);
        let version = self.try_incarnate(idx);
        if version.is_none() {
            self.num_active_tasks.fetch_sub(1, Ordering::SeqCst);
        }
        version
    }

    fn next_version_to_validate(&self) -> Option<Version> {
        if self.validation_idx.load(Ordering::SeqCst) >= self.len {
            self.check_done();
            return None;
        }
        self.num_active_tasks.fetch_add(1, Ordering::SeqCst);
        let idx = self.validation_idx.fetch_add(1, Ordering::SeqCst);
        if idx < self.len {
            let status = lock(&self.txs[idx].status);
            if status.stage == Stage::Executed {
                return Some(Version { idx, incarnation: status.incarnation });
            }
        }
        self.num_active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }

    /// The next task for an idle worker, if any is available now.
    pub(crate) fn next_task(&self) -> Option<Task> {
        if self.validation_idx.load(Ordering::SeqCst) < self.execution_idx.load(Ordering::SeqCst) {
            self.next_version_to_validate().map(Task::Validate)
        } else {
            self.next_version_to_execute().map(Task::Execute)
        }
    }

    /// Records that `idx` read an ESTIMATE of `blocking`. Returns `false` when `blocking` has
    /// meanwhile finished executing, in which case the caller simply re-executes `idx`.
    pub(crate) fn add_dependency(&self, idx: TxIdx, blocking: TxIdx) -> bool {
        let mut dependents = lock(&self.txs[blocking].dependents);
        if lock(&self.txs[blocking].status).stage == Stage::Executed {
            return false;
        }
        lock(&self.txs[idx].status).stage = Stage::Aborting;
        dependents.push(idx);
        drop(dependents);
        self.num_active_tasks.fetch_sub(1, Ordering::SeqCst);
        true
    }

    fn set_ready_status(&self, idx: TxIdx) {
        let mut status = lock(&self.txs[idx].status);
        status.incarnation += 1;
        status.stage = Stage::ReadyToExecute;
    }

    /// Marks an incarnation executed, releases the transactions that waited for it, and returns
    /// its validation task when that can run right away.
    pub(crate) fn finish_execution(
        &self,
        version: Version,
        wrote_new_location: bool,
    ) -> Option<Task> {
        lock(&self.txs[version.idx].status).stage = Stage::Executed;
        let dependents = std::mem::take(&mut *lock(&self.txs[version.idx].dependents));
        if let Some(min) = dependents.iter().min().copied() {
            for d in &dependents {
                self.set_ready_status(*d);
            }
            self.decrease_execution_idx(min);
        }
        if self.validation_idx.load(Ordering::SeqCst) > version.idx {
            if wrote_new_location {
                self.decrease_validation_idx(version.idx);
            } else {
                return Some(Task::Validate(version));
            }
        }
        self.num_active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }

    /// Claims the right to abort an incarnation whose validation failed; only the first
    /// validator to fail a given incarnation wins.
    pub(crate) fn try_validation_abort(&self, version: Version) -> bool {
        let mut status = lock(&self.txs[version.idx].status);
        if status.incarnation == version.incarnation && status.stage == Stage::Executed {
            status.stage = Stage::Aborting;
            true
        } else {
            false
        }
    }

    /// Finishes a validation task; after an abort, returns the re-execution when this worker
    /// can start it at once.
    pub(crate) fn finish_validation(&self, idx: TxIdx, aborted: bool) -> Option<Task> {
        if aborted {
            self.set_ready_status(idx);
            self.decrease_validation_idx(idx + 1);
            if self.execution_idx.load(Ordering::SeqCst) > idx {
                if let Some(version) = self.try_incarnate(idx) {
                    return Some(Task::Execute(version));
                }
            }
        }
        self.num_active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the scheduler alone: every execution succeeds without conflicts.
    #[test]
    fn conflict_free_block_executes_and_validates_each_transaction_once() {
        let s = Scheduler::new(3);
        let mut executed = Vec::new();
        let mut validated = Vec::new();
        let mut task = None;
        while !s.done() {
            task = match task.take().or_else(|| s.next_task()) {
                Some(Task::Execute(v)) => {
                    executed.push(v.idx);
                    s.finish_execution(v, true)
                }
                Some(Task::Validate(v)) => {
                    validated.push(v.idx);
                    s.finish_validation(v.idx, false)
                }
                None => None,
            };
        }
        assert_eq!(executed, vec![0, 1, 2]);
        assert_eq!(validated, vec![0, 1, 2]);
        assert_eq!(s.executions(), 3);
    }

    /// Takes tasks (finishing validations as successful) until an execution comes up.
    fn next_execution(s: &Scheduler) -> Option<Version> {
        for _ in 0..16 {
            match s.next_task() {
                Some(Task::Execute(v)) => return Some(v),
                Some(Task::Validate(v)) => assert_eq!(s.finish_validation(v.idx, false), None),
                None => {}
            }
        }
        None
    }

    #[test]
    fn dependency_parks_a_transaction_until_its_blocker_finishes() {
        let s = Scheduler::new(2);
        let v0 = next_execution(&s).expect("tx 0 first");
        let v1 = next_execution(&s).expect("tx 1 next");
        assert_eq!((v0.idx, v1.idx), (0, 1));
        assert!(s.add_dependency(v1.idx, v0.idx));
        assert_eq!(s.finish_execution(v0, true), None);
        // Tx 1 is ready again with incarnation 1.
        assert_eq!(next_execution(&s), Some(Version { idx: 1, incarnation: 1 }));
        // A blocker that already finished refuses the dependency.
        assert!(!s.add_dependency(1, 0));
    }

    #[test]
    fn only_the_first_failed_validation_aborts_an_incarnation() {
        let s = Scheduler::new(1);
        let Some(Task::Execute(v)) = s.next_task() else { panic!() };
        s.finish_execution(v, false);
        assert!(s.try_validation_abort(v));
        assert!(!s.try_validation_abort(v));
    }
}
