//! Recovery of a durable sequencer from the files a crash leaves behind.

use super::*;
use crate::{
    config::GenesisAccount,
    tx::{
        decode_and_recover,
        tests::{signed_transfer, DEV_ADDRESS},
        IntakeRules,
    },
};
use std::path::{Path, PathBuf};
use strobe_storage::{ChainStoreOptions, PersistentStore, StoreOptions, WalOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strobe-seq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn genesis() -> Genesis {
    let funded = GenesisAccount { balance: U256::from(10u128.pow(24)), ..Default::default() };
    Genesis { alloc: vec![(DEV_ADDRESS, funded)], timestamp: 1_700_000_000, ..Default::default() }
}

/// Opens (or creates) a durable sequencer in `dir`, as `Engine::open` does.
fn open(dir: &Path) -> Sequencer {
    open_with(dir, WalOptions::default())
}

fn open_with(dir: &Path, wal_options: WalOptions) -> Sequencer {
    let options = StoreOptions { accounts_log2_buckets: 8, slots_log2_buckets: 8 };
    let store = PersistentStore::open(&dir.join("state"), options).unwrap();
    let (wal, records) = Wal::open(&dir.join("wal"), wal_options).unwrap();
    let chain = ChainStore::open(&dir.join("chain"), ChainStoreOptions::default()).unwrap();
    let durable = Some((Durable { wal, chain }, records));
    Sequencer::new(ChainConfig::default(), &genesis(), Box::new(store), durable).unwrap().0
}

fn submit(seq: &mut Sequencer, nonce: u64) {
    submit_raw(seq, &signed_transfer(seq.config.chain_id, nonce, 1 + nonce));
}

/// Admits the signed transaction `raw` into the pool, checked by the sequencer's intake rules.
fn submit_raw(seq: &mut Sequencer, raw: &[u8]) {
    let rules = IntakeRules {
        chain_id: seq.config.chain_id,
        block_gas_limit: seq.config.block_gas_limit,
        base_fee: seq.view.open.base_fee,
        min_priority_fee_wei: seq.config.min_priority_fee_wei,
    };
    let tx = decode_and_recover(raw, &rules).unwrap();
    seq.admit(Submission { tx, reject_gap: true, on_accept: None, on_receipt: None });
}

/// Copies `live` to `crashed` once block `stored` is in the chain store and the last checkpoint
/// is durable: a copy taken while a file is being written is not an image a crash can leave.
fn crash_image(seq: &mut Sequencer, stored: u64, live: &Path, crashed: &Path) {
    seq.durable.as_ref().unwrap().blocks.wait_stored(stored).unwrap();
    seq.store.wait_durable().unwrap();
    copy_dir(live, crashed);
}

/// Submits three transfers and seals a mini-block with them (the EVM block is left to the caller).
fn mini_block(seq: &mut Sequencer, nonce: &mut u64, closes_block: bool) {
    for _ in 0..3 {
        submit(seq, *nonce);
        *nonce += 1;
    }
    seq.seal_mini_block(closes_block);
}

/// The hashes of the blocks in `dir`'s chain store, in order.
fn stored_hashes(dir: &Path) -> Vec<B256> {
    let chain = ChainStore::open(&dir.join("chain"), ChainStoreOptions::default()).unwrap();
    (0..chain.len())
        .map(|n| record::decode_block(&chain.block_bytes(n).unwrap().unwrap()).unwrap().hash)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The files as a crash leaves them right after a block's last mini-block is logged, before
/// the block is checkpointed or stored: the block was served from memory a moment later, so a
/// restart must seal it to the same hash.
#[test]
fn a_block_served_before_it_is_stored_is_resealed_identically() {
    let live = scratch("live");
    let crashed = scratch("crashed");
    let mut seq = open(&live);
    let mut nonce = 0;
    // Block 1 sealed the normal way, then block 2 up to its closing mini-block.
    for closes in [false, true, false, false, true] {
        mini_block(&mut seq, &mut nonce, closes);
        if closes && seq.view.open.number == 1 {
            seq.seal_evm_block();
        }
    }
    assert_eq!(seq.view.head().header.number, 1);
    // Block 1 stored and checkpointed: the crash image described above.
    crash_image(&mut seq, 1, &live, &crashed);
    seq.seal_evm_block();
    let served = seq.view.head().clone();
    assert_eq!((served.header.number, served.txs.len()), (2, 9));
    drop(seq);

    let recovered = open(&crashed);
    let head = recovered.view.head().clone();
    assert_eq!(head.header.number, 2, "the closing record re-seals block 2");
    assert_eq!(head.hash, served.hash);
    assert_eq!(head.header, served.header);
    assert_eq!(recovered.view.open.number, 3);
    assert_eq!(recovered.view.open.mini_block_count, 0);
    drop(recovered);
    // The re-sealed block reached the crashed copy's chain store too.
    let stored = stored_hashes(&crashed);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2], served.hash);
    for dir in [live, crashed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Sealed blocks let go of the log segments that durable files hold, and the block writer
/// deletes them; what stays still recovers the same chain.
#[test]
fn checkpointed_log_segments_are_deleted() {
    let dir = scratch("segments");
    let small = WalOptions { segment_bytes: 2048, ..WalOptions::default() };
    let mut seq = open_with(&dir, small.clone());
    let mut nonce = 0;
    let mut created = std::collections::BTreeSet::new();
    let segments = |dir: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    };
    for _ in 0..8 {
        for closes in [false, false, true] {
            mini_block(&mut seq, &mut nonce, closes);
            created.extend(segments(&dir));
            if closes {
                seq.seal_evm_block();
            }
        }
    }
    let head = seq.view.head().clone();
    assert_eq!(head.header.number, 8);
    drop(seq);
    let kept = segments(&dir);
    assert!(created.len() >= 8, "records of ~1 KiB fill 2 KiB segments fast: {created:?}");
    assert!(kept.len() <= 3, "only segments with records of the last blocks stay: {kept:?}");
    assert!(!kept.contains(created.first().unwrap()), "the oldest segment is gone");

    let reopened = open_with(&dir, small);
    assert_eq!(reopened.view.head().hash, head.hash);
    assert_eq!(reopened.view.open.number, 9);
    drop(reopened);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The files as a crash leaves them when block 2's checkpoint is durable but the block writer had
/// not stored block 2 yet: replay applies the block's records again over the state that already
/// has them, re-seals the block at its closing record to the same header, and stores it.
#[test]
fn a_block_checkpointed_before_it_is_stored_is_resealed_identically() {
    let live = scratch("ahead-live");
    let crashed = scratch("ahead-crashed");
    let small = WalOptions { segment_bytes: 2048, ..WalOptions::default() };
    let mut seq = open_with(&live, small.clone());
    let segment = |dir: &Path| dir.join("chain").join("blocks-000000000000.seg");
    let mut stored_through_1 = 0;
    let mut nonce = 0;
    for closes in [false, true, false, false, true] {
        mini_block(&mut seq, &mut nonce, closes);
        if closes {
            seq.seal_evm_block();
        }
        if closes && seq.view.head().header.number == 1 {
            seq.durable.as_ref().unwrap().blocks.wait_stored(1).unwrap();
            stored_through_1 = std::fs::metadata(segment(&live)).unwrap().len();
        }
    }
    let served = seq.view.head().clone();
    assert_eq!(served.header.number, 2);
    crash_image(&mut seq, 2, &live, &crashed);
    drop(seq);
    // Block 2 never reached the crashed copy's chain store.
    let file = std::fs::OpenOptions::new().write(true).open(segment(&crashed)).unwrap();
    file.set_len(stored_through_1).unwrap();
    drop(file);
    assert_eq!(stored_hashes(&crashed).len(), 2, "the copy's chain store ends at block 1");

    let recovered = open_with(&crashed, small);
    assert_eq!(recovered.store.last_commit().map(|(_, block)| block), Some(2));
    let head = recovered.view.head().clone();
    assert_eq!((head.header.number, head.hash), (2, served.hash));
    assert_eq!(head.header, served.header);
    drop(recovered);
    let stored = stored_hashes(&crashed);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2], served.hash);
    for dir in [live, crashed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The files as a crash leaves them while a closed block waits for its state root and the next
/// block's mini-blocks are already logged (and acknowledged): replay re-seals the closed block
/// at its closing record to the header the live sequencer sealed, and re-includes the next
/// block's transactions on top of it.
#[test]
fn a_crash_while_a_closed_block_waits_for_its_root_loses_nothing() {
    let live = scratch("root-live");
    let crashed = scratch("root-crashed");
    let mut seq = open(&live);
    let mut nonce = 0;
    for closes in [false, true, false, false, true] {
        mini_block(&mut seq, &mut nonce, closes);
        if closes {
            seq.close_evm_block();
        }
    }
    // Block 1 sealed when block 2 closed; block 2 is closed, block 3 has one mini-block.
    mini_block(&mut seq, &mut nonce, false);
    assert_eq!(seq.view.sealing.as_ref().map(|s| s.block.number), Some(2));
    assert_eq!((seq.view.open.number, seq.view.open.txs.len()), (3, 3));
    crash_image(&mut seq, 1, &live, &crashed);
    seq.finish_seal(true);
    let served = seq.view.head().clone();
    assert_eq!((served.header.number, served.txs.len()), (2, 9));
    assert_eq!(seq.view.open.parent_hash, served.hash);
    drop(seq);

    let recovered = open(&crashed);
    let head = recovered.view.head().clone();
    assert_eq!(head.header, served.header);
    assert_eq!(head.hash, served.hash);
    assert_eq!(recovered.view.open.number, 3);
    assert_eq!(recovered.view.open.parent_hash, served.hash);
    assert_eq!(recovered.view.open.txs.len(), 3, "block 3's logged mini-block is replayed");
    assert_eq!(recovered.view.state.account(&DEV_ADDRESS).unwrap().nonce, nonce);
    drop(recovered);
    for dir in [live, crashed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A state store whose roots arrive only when the test releases them, as if planning took long.
struct GatedStore {
    inner: strobe_storage::MemoryStore,
    held: HeldRoots,
}

impl StateStore for GatedStore {
    fn apply(&mut self, diff: &StateDiff) -> Result<(), strobe_storage::StoreError> {
        self.inner.apply(diff)
    }
    fn view(&self) -> Arc<dyn strobe_storage::StateView> {
        self.inner.view()
    }
    fn commit(&mut self, next_seq: u64, block: u64) -> Result<B256, strobe_storage::StoreError> {
        self.inner.commit(next_seq, block)
    }
    fn begin_commit(
        &mut self,
        next_seq: u64,
        block: u64,
    ) -> Result<strobe_storage::PendingRoot, strobe_storage::StoreError> {
        let root = self.inner.commit(next_seq, block)?;
        let (pending, sender) = strobe_storage::PendingRoot::channel();
        self.held.lock().unwrap().push((sender, root));
        Ok(pending)
    }
    fn preview_root(&mut self) -> Result<B256, strobe_storage::StoreError> {
        self.inner.preview_root()
    }
}

/// Roots a [`GatedStore`] holds back until [`release`]d (or failed).
type HeldRoots = Arc<Mutex<Vec<(strobe_storage::RootSender, B256)>>>;

/// A sequencer without files over a [`GatedStore`], and the roots it holds back.
fn gated(genesis: &Genesis) -> (Sequencer, HeldRoots) {
    let held = HeldRoots::default();
    let store = GatedStore { inner: strobe_storage::MemoryStore::new(), held: held.clone() };
    let seq = Sequencer::new(ChainConfig::default(), genesis, Box::new(store), None).unwrap().0;
    (seq, held)
}

fn release(held: &Mutex<Vec<(strobe_storage::RootSender, B256)>>) {
    for (sender, root) in held.lock().unwrap().drain(..) {
        sender.send(Ok(root));
    }
}

/// The next block's mini-blocks execute while a closed block's root is computed; `BLOCKHASH` of
/// the closed block waits for the root and reads the hash the block is then sealed with.
#[test]
fn the_next_block_executes_while_the_root_is_computed() {
    // SSTORE(0, BLOCKHASH(NUMBER - 1))
    let reader = Address::repeat_byte(0xbb);
    let code = [0x43, 0x60, 0x01, 0x90, 0x03, 0x40, 0x60, 0x00, 0x55, 0x00];
    let mut genesis = genesis();
    genesis.alloc.push((
        reader,
        GenesisAccount { code: alloy_primitives::Bytes::from(code.to_vec()), ..Default::default() },
    ));
    let (mut seq, held) = gated(&genesis);
    let mut nonce = 0;
    mini_block(&mut seq, &mut nonce, true);
    seq.close_evm_block();
    assert_eq!(seq.view.head().header.number, 0);
    assert_eq!(seq.view.sealing.as_ref().map(|s| s.block.txs.len()), Some(3));
    assert_eq!(seq.view.open.number, 2);
    assert_eq!(seq.shared.view.load().open.number, 2, "the next block is served at once");
    assert!(seq.view.state_at(1).is_some(), "the closed block's state is queryable");
    // Block 2 fills without the root.
    mini_block(&mut seq, &mut nonce, false);
    seq.finish_seal(false);
    assert_eq!(seq.view.head().header.number, 0);
    assert_eq!(seq.view.open.txs.len(), 3);
    // A call reading BLOCKHASH(1) waits until the root is released.
    let call = crate::tx::tests::signed_call(seq.config.chain_id, nonce, reader, 100_000, 0);
    submit_raw(&mut seq, &call);
    let releaser = {
        let held = held.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            release(&held);
        })
    };
    seq.seal_mini_block(false);
    releaser.join().unwrap();
    assert_eq!(seq.view.open.txs.len(), 4);
    seq.finish_seal(false);
    let head = seq.view.head().clone();
    assert_eq!(head.header.number, 1);
    assert!(seq.view.sealing.is_none());
    assert_eq!(seq.view.open.parent_hash, head.hash);
    let stored = seq.view.state.storage(&reader, &U256::ZERO);
    assert_eq!(B256::from(stored), head.hash, "BLOCKHASH(1) is the sealed block's hash");
    assert_eq!(head.header.mix_hash, keccak256(seq.view.sealed[0].header.parent_hash));
    assert_eq!(seq.view.open.prevrandao, keccak256(head.header.parent_hash));
    // The next close seals block 2 first if its root is late: here it is released in time.
    seq.close_evm_block();
    release(&held);
    seq.finish_seal(true);
    assert_eq!(seq.view.head().header.number, 2);
    assert_eq!(seq.view.head().header.parent_hash, head.hash);
}

/// A closed block whose root fails stops the sequencer before it acknowledges anything executed
/// after the close (a `BLOCKHASH` of that block would have read zero).
#[test]
fn a_failed_root_stops_the_sequencer_before_it_acknowledges_more() {
    let (mut seq, held) = gated(&genesis());
    let mut nonce = 0;
    mini_block(&mut seq, &mut nonce, true);
    seq.close_evm_block();
    for (sender, _) in held.lock().unwrap().drain(..) {
        sender.send(Err("disk on fire".into()));
    }
    mini_block(&mut seq, &mut nonce, false);
    assert!(seq.stopped);
    assert!(seq.shared.fatal.get().unwrap().contains("disk on fire"));
    assert_eq!(seq.view.open.txs.len(), 0, "nothing after the close was included");
    assert_eq!(seq.shared.view.load().open.txs.len(), 0, "nor published");
    assert_eq!(seq.view.head().header.number, 0, "the failed block is never sealed");
}
