//! The block writer: one thread that appends sealed blocks to the chain store and syncs them, so
//! that the sequencer's tick never waits for a block's fsync (6–30 ms on the dev VM at ~3,000
//! transactions per block). It also deletes the write-ahead log's segment files that the
//! sequencer has let go of (an unlink and a directory sync, up to 14 ms on the same VM).
//!
//! Nothing acknowledged depends on this thread: every transaction of a sealed block is already in
//! the write-ahead log, and the log record of a block's last mini-block says that it closes the
//! block, so recovery re-seals a block the chain store lacks to the same header. What the
//! sequencer must still order is the state checkpoint: it waits here for block N−1 to be stored
//! before it checkpoints block N (see [`BlockWriter::wait_stored`]).

use crate::{chain::SealedBlock, record};
use alloy_primitives::B256;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};
use strobe_storage::{BlockRecord, ChainStore, ChainStoreError, DetachedSegments};

/// Jobs queued for the writer before [`BlockWriter::submit`] waits: a seal queues at most two (its
/// block and a segment removal), and waits for its parent's block anyway, so more room than two
/// seals' worth only absorbs a slow disk.
pub(crate) const BLOCK_WRITER_QUEUE: usize = 4;

/// Work for the writer thread, done in the order it was queued.
enum Job {
    /// Append and sync the next block.
    Store(Arc<SealedBlock>),
    /// Delete log segments whose records every durable file already holds.
    RemoveLogSegments(DetachedSegments),
}

/// How far the writer got: the number of blocks in the chain store, or why it stopped.
struct Progress {
    stored: u64,
    failed: Option<String>,
}

/// The writer thread and the way to learn what it has stored.
pub(crate) struct BlockWriter {
    queue: Option<Sender<Job>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl BlockWriter {
    /// Starts the writer on `chain`, whose blocks `0..chain.len()` are already stored.
    pub(crate) fn spawn(chain: ChainStore) -> std::io::Result<Self> {
        let (queue, blocks) = bounded(BLOCK_WRITER_QUEUE);
        let progress =
            Arc::new((Mutex::new(Progress { stored: chain.len(), failed: None }), Condvar::new()));
        let shared = progress.clone();
        let thread = std::thread::Builder::new().name("strobe-blocks".into()).spawn(move || {
            // Storing a block can wait behind the ticks: the sequencer needs it stored only
            // at the next block's close. The only lock it shares with the sequencer is the
            // progress mutex, held for a few instructions per block.
            strobe_storage::lower_priority();
            write_blocks(chain, blocks, &shared)
        })?;
        Ok(Self { queue: Some(queue), progress, thread: Some(thread) })
    }

    /// Queues `block` (the next block number the store lacks); waits while the queue is full.
    pub(crate) fn submit(&self, block: Arc<SealedBlock>) -> Result<(), String> {
        self.queue(Job::Store(block))
    }

    /// Queues the deletion of log segments let go of by [`strobe_storage::Wal::detach_closed_upto`].
    pub(crate) fn remove_log_segments(&self, segments: DetachedSegments) -> Result<(), String> {
        if segments.is_empty() {
            return Ok(());
        }
        self.queue(Job::RemoveLogSegments(segments))
    }

    fn queue(&self, job: Job) -> Result<(), String> {
        self.failure()?;
        let queue = self.queue.as_ref().expect("the queue lives until drop");
        queue.send(job).map_err(|_| "the block writer stopped".to_string())
    }

    /// Waits until the chain store holds block `number` (at once if it already does), or
    /// returns why it never will.
    pub(crate) fn wait_stored(&self, number: u64) -> Result<(), String> {
        let (lock, stored) = &*self.progress;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        while p.stored <= number {
            if let Some(e) = &p.failed {
                return Err(e.clone());
            }
            p = stored.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    fn failure(&self) -> Result<(), String> {
        let p = self.progress.0.lock().unwrap_or_else(|e| e.into_inner());
        p.failed.clone().map_or(Ok(()), Err)
    }
}

impl Drop for BlockWriter {
    /// Stores every queued block before returning, so a clean shutdown leaves the chain store
    /// level with the chain.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks the writer failed if its thread unwinds, so that nobody waits for it forever.
struct PanicGuard<'a>(&'a (Mutex<Progress>, Condvar));

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (lock, stored) = self.0;
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            p.failed = Some("the block writer thread panicked".into());
            stored.notify_all();
        }
    }
}

fn write_blocks(mut chain: ChainStore, jobs: Receiver<Job>, progress: &(Mutex<Progress>, Condvar)) {
    let _guard = PanicGuard(progress);
    for job in jobs {
        let block = match job {
            Job::Store(block) => block,
            Job::RemoveLogSegments(segments) => {
                // Files left behind hold only records every durable file has; a restart reads
                // and skips them. Not worth stopping the chain for.
                if let Err(e) = segments.remove() {
                    tracing::warn!("removing checkpointed log segments failed: {e}");
                }
                continue;
            }
        };
        let result = append_block(&mut chain, &block);
        let (lock, stored) = progress;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => p.stored = chain.len(),
            Err(e) => {
                let e = format!("storing sealed block {}: {e}", block.header.number);
                tracing::error!("{e}");
                p.failed = Some(e);
            }
        }
        stored.notify_all();
        if p.failed.is_some() {
            return;
        }
    }
}

/// Appends `block` to the chain store and makes it durable.
pub(crate) fn append_block(
    chain: &mut ChainStore,
    block: &SealedBlock,
) -> Result<(), ChainStoreError> {
    let tx_hashes: Vec<B256> = block.txs.iter().map(|t| t.tx.hash).collect();
    let bytes = record::encode_block(block);
    chain.append(&BlockRecord {
        number: block.header.number,
        hash: block.hash,
        tx_hashes: &tx_hashes,
        bytes: &bytes,
    })?;
    chain.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::Header;
    use strobe_storage::ChainStoreOptions;

    fn block(number: u64) -> Arc<SealedBlock> {
        let header = Header { number, ..Default::default() };
        let hash = header.hash_slow();
        Arc::new(SealedBlock { header, hash, txs: Vec::new(), mini_block_count: 1, size: 0 })
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strobe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn stores_blocks_in_order_and_flushes_on_drop() {
        let dir = scratch("block-writer");
        let chain = ChainStore::open(&dir, ChainStoreOptions::default()).unwrap();
        let writer = BlockWriter::spawn(chain).unwrap();
        writer.submit(block(0)).unwrap();
        writer.submit(block(1)).unwrap();
        writer.wait_stored(1).unwrap();
        for n in 2..20 {
            writer.submit(block(n)).unwrap();
        }
        drop(writer);
        let chain = ChainStore::open(&dir, ChainStoreOptions::default()).unwrap();
        assert_eq!(chain.len(), 20, "dropping the writer stores every queued block");
        for n in 0..20 {
            let bytes = chain.block_bytes(n).unwrap().unwrap();
            assert_eq!(record::decode_block(&bytes).unwrap().hash, block(n).hash);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_append_is_reported_to_waiters_and_submitters() {
        let dir = scratch("block-writer-fail");
        let chain = ChainStore::open(&dir, ChainStoreOptions::default()).unwrap();
        let writer = BlockWriter::spawn(chain).unwrap();
        writer.submit(block(0)).unwrap();
        // Block 2 without block 1: the chain store refuses it.
        writer.submit(block(2)).unwrap();
        let err = writer.wait_stored(1).unwrap_err();
        assert!(err.contains("expected block 1, got block 2"), "{err}");
        assert!(writer.submit(block(3)).is_err(), "nothing is queued after a failure");
        drop(writer);
        let chain = ChainStore::open(&dir, ChainStoreOptions::default()).unwrap();
        assert_eq!(chain.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
