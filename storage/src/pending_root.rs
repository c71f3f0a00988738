//! The state root of a commit that is still being computed on the checkpoint thread.
//!
//! [`crate::StateStore::begin_commit`] hands the sequencer a [`PendingRoot`] at once and plans the
//! block's changes off the sequencer's tick; the sequencer goes on with the next block's
//! mini-blocks and finishes the header when the root arrives. Any thread may wait for it (an
//! executor thread running `BLOCKHASH` of that block does).

use crate::StoreError;
use alloy_primitives::B256;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Condvar, Mutex,
};

/// A state root that is computed, or being computed, in the background. Clones share it.
#[derive(Clone, Debug)]
pub struct PendingRoot {
    cell: Arc<RootCell>,
}

#[derive(Debug, Default)]
struct RootCell {
    /// Set once the value is in; lets `try_root` skip the lock while planning runs.
    ready: AtomicBool,
    value: Mutex<Option<Result<B256, String>>>,
    arrived: Condvar,
}

impl PendingRoot {
    /// A root that is already known.
    pub fn ready(root: B256) -> Self {
        let (pending, sender) = Self::channel();
        sender.send(Ok(root));
        pending
    }

    /// A root still to come, and the one-shot sender that delivers it (for stores that compute
    /// roots in the background). A sender dropped without sending delivers an error, so no
    /// waiter can hang on a planner that died.
    pub fn channel() -> (Self, RootSender) {
        let pending = Self { cell: Arc::new(RootCell::default()) };
        (pending.clone(), RootSender { root: Some(pending) })
    }

    /// The root if it has arrived, without waiting.
    pub fn try_root(&self) -> Option<Result<B256, StoreError>> {
        if !self.cell.ready.load(Ordering::Acquire) {
            return None;
        }
        self.lock().clone().map(|r| r.map_err(StoreError::Background))
    }

    /// Waits for the root.
    pub fn wait(&self) -> Result<B256, StoreError> {
        let mut value = self.lock();
        loop {
            if let Some(r) = value.clone() {
                return r.map_err(StoreError::Background);
            }
            value = self.cell.arrived.wait(value).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Result<B256, String>>> {
        self.cell.value.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Delivers a [`PendingRoot`]'s value, exactly once.
#[derive(Debug)]
pub struct RootSender {
    root: Option<PendingRoot>,
}

impl RootSender {
    /// Delivers the root (or why there is none) and wakes every waiter.
    pub fn send(mut self, result: Result<B256, String>) {
        self.deliver(result);
    }

    fn deliver(&mut self, result: Result<B256, String>) {
        let Some(root) = self.root.take() else { return };
        *root.lock() = Some(result);
        root.cell.ready.store(true, Ordering::Release);
        root.cell.arrived.notify_all();
    }
}

impl Drop for RootSender {
    fn drop(&mut self) {
        self.deliver(Err("the checkpoint thread stopped before computing the state root".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_on_other_threads_get_the_root() {
        let (pending, sender) = PendingRoot::channel();
        assert!(pending.try_root().is_none());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let p = pending.clone();
                std::thread::spawn(move || p.wait().unwrap())
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        sender.send(Ok(B256::repeat_byte(7)));
        for w in waiters {
            assert_eq!(w.join().unwrap(), B256::repeat_byte(7));
        }
        assert_eq!(pending.try_root().unwrap().unwrap(), B256::repeat_byte(7));
        assert_eq!(PendingRoot::ready(B256::ZERO).wait().unwrap(), B256::ZERO);
    }

    #[test]
    fn a_sender_dropped_unsent_reports_an_error() {
        let (pending, sender) = PendingRoot::channel();
        let waiter = {
            let p = pending.clone();
            std::thread::spawn(move || p.wait())
        };
        drop(sender);
        assert!(matches!(waiter.join().unwrap(), Err(StoreError::Background(_))));
        assert!(pending.try_root().unwrap().is_err());
    }
}
