//! The persistent state store: memory-mapped tables (`table.rs`) under an in-memory layer of the
//! changes since the last checkpoint, with multi-version reads for views of older mini-blocks.
//!
//! Writes: each mini-block's [`StateDiff`] goes into the in-memory [`Overlay`] (persistent maps, so
//! a view is an O(1) snapshot) and into [`Pending`] (plain hash maps, cheap for the checkpoint to
//! walk); the write-ahead log, owned by the caller, makes it durable. At each EVM block end,
//! [`PersistentStore::commit`] plans those changes into both tables (rebuilding only the touched
//! buckets, hashing them and their tree paths in parallel) and returns the block's state root.
//! The I/O (journal the pre-images, write the tables in place, msync, write the checksummed
//! header; `checkpoint.rs`) runs on a checkpoint thread while the sequencer goes on sealing
//! mini-blocks; the overlay it is writing stays readable as the frozen layer until then, and the
//! next commit waits for it. [`PersistentStore::begin_checkpoint`] moves the planning to that
//! thread too and hands back a [`PendingRoot`]: then a block costs the sequencer neither the
//! planning nor the disk, only swapping in an empty overlay.
//!
//! Reads: a [`PersistentView`] reads its own overlay, then the base tables. A view taken before a
//! checkpoint must not see the values that checkpoint wrote, so every checkpoint first publishes
//! an [`Undo`] layer (the old value of every key it changes) on the view's [`Epoch`], then takes
//! the tables' write lock. A reader walks the undo layers of its epoch and every later one before
//! the tables, all under the read lock, so it sees either the undo layer or the untouched table.
//! Undo layers live exactly as long as some view of their epoch does.
//!
//! Threads: the sequencer (or, for a background commit, the checkpoint thread) plans, one
//! checkpoint thread at a time writes; views are read from any thread. The write lock is held
//! only while the planned bytes are copied into the maps.

use crate::{
    checkpoint::{self, Header, HeaderFile, PreImage},
    code::CodeFile,
    pending_root::{PendingRoot, RootSender},
    proof::{self, bucket_proof, decode_account, encode_account, slot_key, StateProof},
    table::{AccountRecord, Keep, PlanWrites, Record, SlotRecord, Table, TableFile, TablePlan},
    AccountState, StateDiff, StateStore, StateView, StoreError,
};
use alloy_primitives::{
    map::{HashMap, HashSet},
    Address, B256, U256,
};
use bytemuck::Zeroable;
use rayon::prelude::*;
use revm::{bytecode::Bytecode, primitives::KECCAK_EMPTY};
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, RwLock, RwLockReadGuard,
    },
    thread::JoinHandle,
};

/// Shape of a new store (ignored when opening an existing one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// log2 of the number of account buckets (even; the tree has fan-out 4).
    pub accounts_log2_buckets: u32,
    /// log2 of the number of storage buckets (even).
    pub slots_log2_buckets: u32,
}

impl Default for StoreOptions {
    /// 65,536 account buckets and 262,144 storage buckets: a few MiB of files for a dev chain,
    /// and buckets of a few records for a few hundred thousand keys. Size them to the state
    /// (`strobe-tools state-gen` picks them from the account count).
    fn default() -> Self {
        Self { accounts_log2_buckets: 16, slots_log2_buckets: 18 }
    }
}

impl StoreOptions {
    /// Bucket counts that keep about two records per bucket for `keys` keys.
    pub fn log2_buckets_for(keys: u64) -> u32 {
        let mut log2 = 8;
        while (1u64 << log2) * 2 < keys && log2 < 32 {
            log2 += 2;
        }
        log2
    }
}

/// From this many written slots on, their table changes are built in parallel.
const PARALLEL_SLOTS: usize = 4096;

const ACCOUNTS: &str = "accounts";
const SLOTS: &str = "slots";
/// File numbers in the journal: three per table, in `TableFile` order.
const ACCOUNTS_FILE_BASE: u8 = 0;
const SLOTS_FILE_BASE: u8 = 3;

/// Changes since the last checkpoint, as persistent maps.
#[derive(Clone, Default)]
struct Overlay {
    accounts: imbl::HashMap<Address, Option<AccountState>>,
    storage: imbl::HashMap<Address, imbl::HashMap<U256, U256>>,
    wiped: imbl::HashSet<Address>,
    codes: imbl::HashMap<B256, Bytecode>,
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.codes.is_empty()
    }

    fn apply(&mut self, diff: &StateDiff) {
        for (hash, code) in &diff.codes {
            self.codes.insert(*hash, code.clone());
        }
        for change in &diff.accounts {
            self.accounts.insert(change.address, change.info);
            if change.storage_cleared || change.info.is_none() {
                self.wiped.insert(change.address);
                self.storage.insert(change.address, imbl::HashMap::new());
            }
            if !change.storage.is_empty() {
                let slots = self.storage.entry(change.address).or_default();
                for (slot, value) in &change.storage {
                    slots.insert(*slot, *value);
                }
            }
        }
    }
}

/// The overlay's changes once more, in plain hash maps: what a checkpoint walks. The persistent
/// maps of [`Overlay`] make a view an O(1) snapshot, but walking one takes a chain of cache
/// misses per entry (it was a sixth of a 100k-key root update); these cost one insert more per
/// change in `apply`, spread over the block's mini-blocks. The outer maps keep the capacity the
/// last block needed (the per-contract slot maps are dropped with each checkpoint).
#[derive(Default)]
struct Pending {
    accounts: HashMap<Address, Option<AccountState>>,
    storage: HashMap<Address, HashMap<U256, U256>>,
    wiped: HashSet<Address>,
}

impl Pending {
    /// The same as [`Overlay::apply`].
    fn apply(&mut self, diff: &StateDiff) {
        for change in &diff.accounts {
            self.accounts.insert(change.address, change.info);
            if change.storage_cleared || change.info.is_none() {
                self.wiped.insert(change.address);
                if let Some(slots) = self.storage.get_mut(&change.address) {
                    slots.clear();
                }
            }
            if !change.storage.is_empty() {
                let slots = self.storage.entry(change.address).or_default();
                for (slot, value) in &change.storage {
                    slots.insert(*slot, *value);
                }
            }
        }
    }

    /// Hands the block's changes to its checkpoint and starts the next block's with maps of the
    /// size this block needed, not more: after a bulk load (a genesis of millions of accounts)
    /// maps that kept their size would hold that memory for good and make every later insert a
    /// cache miss.
    fn take_for_checkpoint(&mut self) -> Pending {
        let next = Pending {
            accounts: HashMap::with_capacity_and_hasher(self.accounts.len(), Default::default()),
            storage: HashMap::with_capacity_and_hasher(self.storage.len(), Default::default()),
            wiped: HashSet::default(),
        };
        std::mem::replace(self, next)
    }
}

/// Old values of the keys one checkpoint overwrote.
#[derive(Default)]
struct Undo {
    accounts: HashMap<Address, Option<AccountState>>,
    slots: HashMap<(Address, U256), U256>,
}

/// The span between two checkpoints. Views hold their epoch; each checkpoint links the next.
#[derive(Default)]
struct Epoch {
    undo: OnceLock<Undo>,
    next: OnceLock<Arc<Epoch>>,
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Unlink the chain iteratively so dropping a long one cannot overflow the stack.
        let mut next = self.next.take();
        while let Some(e) = next {
            next = match Arc::try_unwrap(e) {
                Ok(mut e) => e.next.take(),
                Err(_) => None,
            };
        }
    }
}

/// The value a key had for views of `epoch`, if a checkpoint since overwrote it: the first undo
/// layer holding the key, from `epoch` forward. Call with the tables' read lock held, so no
/// checkpoint can publish a layer and write the tables in between.
fn undone<T>(epoch: &Epoch, find: impl Fn(&Undo) -> Option<T>) -> Option<T> {
    let mut e = epoch;
    loop {
        if let Some(v) = e.undo.get().and_then(&find) {
            return Some(v);
        }
        e = e.next.get()?;
    }
}

struct Tables {
    accounts: Table<AccountRecord>,
    slots: Table<SlotRecord>,
    code: CodeFile,
}

struct Base {
    tables: RwLock<Tables>,
    /// Generation of the checkpoint whose state the tables hold (changed under the write lock).
    generation: AtomicU64,
}

impl Base {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // A writer that panicked mid-checkpoint leaves the maps as they were on disk before the
        // header was written; the node stops anyway, and reopening rolls them back.
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn account(&self, epoch: &Epoch, address: &Address) -> Option<AccountState> {
        let tables = self.read();
        if let Some(v) = undone(epoch, |u| u.accounts.get(address).copied()) {
            return v;
        }
        tables.accounts.get(&address.0 .0).map(|r| decode_account(&r))
    }

    fn slot(&self, epoch: &Epoch, address: &Address, slot: &U256) -> U256 {
        let tables = self.read();
        if let Some(v) = undone(epoch, |u| u.slots.get(&(*address, *slot)).copied()) {
            return v;
        }
        tables
            .slots
            .get(&slot_key(address, slot))
            .map(|r| U256::from_be_bytes(r.value))
            .unwrap_or_default()
    }
}

/// A consistent view of the persistent state as of one mini-block.
#[derive(Clone)]
pub struct PersistentView {
    overlay: Overlay,
    /// The changes of a commit whose checkpoint was still being written when the view was taken.
    frozen: Option<Arc<Overlay>>,
    epoch: Arc<Epoch>,
    base: Arc<Base>,
    /// Generation of the newest commit when the view was taken.
    generation: u64,
}

impl PersistentView {
    fn layers(&self) -> impl Iterator<Item = &Overlay> {
        std::iter::once(&self.overlay).chain(self.frozen.as_deref())
    }
}

impl StateView for PersistentView {
    fn account(&self, address: &Address) -> Option<AccountState> {
        for layer in self.layers() {
            if let Some(a) = layer.accounts.get(address) {
                return *a;
            }
        }
        self.base.account(&self.epoch, address)
    }

    fn storage(&self, address: &Address, slot: &U256) -> U256 {
        for layer in self.layers() {
            if let Some(v) = layer.storage.get(address).and_then(|s| s.get(slot)) {
                return *v;
            }
            if layer.wiped.contains(address) {
                return U256::ZERO;
            }
        }
        self.base.slot(&self.epoch, address, slot)
    }

    fn code(&self, code_hash: &B256) -> Option<Bytecode> {
        if *code_hash == KECCAK_EMPTY {
            return Some(Bytecode::default());
        }
        for layer in self.layers() {
            if let Some(c) = layer.codes.get(code_hash) {
                return Some(c.clone());
            }
        }
        match self.base.read().code.get(code_hash) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%e, "reading contract code failed");
                None
            }
        }
    }

    fn proof(&self, address: &Address, slots: &[U256]) -> Result<StateProof, proof::ProofError> {
        if !self.overlay.is_empty() {
            return Err(proof::ProofError::Unavailable);
        }
        // The tables must hold exactly this view's state: its commit written, no later one.
        let tables = self.base.read();
        if self.base.generation.load(Ordering::Acquire) != self.generation {
            return Err(proof::ProofError::Unavailable);
        }
        Ok(StateProof {
            accounts_root: B256::from(tables.accounts.root()),
            slots_root: B256::from(tables.slots.root()),
            account: bucket_proof(&tables.accounts, address.as_slice()),
            storage: slots
                .iter()
                .map(|s| (*s, bucket_proof(&tables.slots, &slot_key(address, s))))
                .collect(),
        })
    }
}

/// Counts and sizes of a store, for `strobe db stats`.
#[derive(Clone, Debug)]
pub struct StoreStats {
    /// Accounts in the tables (as of the last checkpoint).
    pub accounts: u64,
    /// Storage slots in the tables.
    pub slots: u64,
    /// Distinct contract codes.
    pub codes: u64,
    /// Bytes of the account table files.
    pub accounts_bytes: u64,
    /// Bytes of the storage table files.
    pub slots_bytes: u64,
    /// Bytes of the code file.
    pub code_bytes: u64,
    /// log2 of the account and storage bucket counts.
    pub log2_buckets: (u32, u32),
    /// The last checkpoint's block, next mini-block sequence number and root.
    pub block: u64,
    /// Sequence number of the first mini-block not in the tables.
    pub next_seq: u64,
    /// State root at the last checkpoint.
    pub root: B256,
}

/// The persistent [`StateStore`].
pub struct PersistentStore {
    dir: PathBuf,
    base: Arc<Base>,
    header_file: Arc<HeaderFile>,
    /// The durable checkpoint's header.
    header: Header,
    checkpointed: bool,
    overlay: Overlay,
    /// The overlay's changes for the next checkpoint to walk.
    pending: Pending,
    /// The changes of the last commit while its checkpoint is written.
    frozen: Option<Arc<Overlay>>,
    epoch: Arc<Epoch>,
    /// Generation of the newest commit (written or being written).
    generation: u64,
    /// The checkpoint being written.
    writing: Option<JoinHandle<Result<Header, StoreError>>>,
    /// A checkpoint failed: the tables may be half-written until a reopen rolls them back.
    failed: bool,
    _lock: File,
    /// Test hook: the next checkpoint stops after this many table writes, as if killed.
    #[cfg(test)]
    crash_after_writes: Option<usize>,
}

/// What a checkpoint will write to both tables, and the root that results.
struct CheckpointPlan {
    accounts: TablePlan<AccountRecord>,
    slots: TablePlan<SlotRecord>,
    root: B256,
}

impl PersistentStore {
    /// Opens the store in `dir` (creating it with `options` if empty), rolling back a checkpoint
    /// that a crash interrupted. The caller replays its write-ahead log from [`Self::next_seq`].
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        for log2 in [options.accounts_log2_buckets, options.slots_log2_buckets] {
            if log2 % 2 != 0 || !(2..=40).contains(&log2) {
                return Err(StoreError::Options(format!(
                    "bucket counts must be 4^k with 1 <= k <= 20, got 2^{log2}"
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(crate::mapped::file_error("create", dir))?;
        let lock = lock_dir(dir)?;
        Self::open_locked(dir, options, lock)
    }

    /// Throws the store's contents away and opens it empty, without ever releasing the
    /// directory's lock (for a creation that was cut short).
    pub fn recreate(mut self, options: StoreOptions) -> Result<Self, StoreError> {
        let _ = self.wait_for_checkpoint();
        let dir = self.dir.clone();
        // A second descriptor of the same open file keeps the lock held while `self` closes its.
        let lock = self._lock.try_clone().map_err(crate::mapped::file_error("dup", &dir))?;
        drop(self);
        for name in ["HEADER", "journal"] {
            crate::mapped::remove_if_present(&dir.join(name))?;
        }
        Self::open_locked(&dir, options, lock)
    }

    fn open_locked(dir: &Path, options: StoreOptions, lock: File) -> Result<Self, StoreError> {
        // The planning pool's threads inherit the CPU affinity of the thread that starts them:
        // start it here, on the opening thread, not later from a checkpoint thread spawned by a
        // sequencer pinned to its core.
        crate::background::start();
        let (header_file, header) = HeaderFile::open(&dir.join("HEADER"))?;
        let checkpointed = header.is_some();
        if !checkpointed {
            // Whatever a first checkpoint cut short left behind belongs to no state: start clean
            // (which is also why the first checkpoint needs no journal).
            for name in ["accounts", "slots"] {
                for ext in ["dir", "dat", "tree"] {
                    crate::mapped::remove_if_present(&dir.join(format!("{name}.{ext}")))?;
                }
            }
            crate::mapped::remove_if_present(&dir.join("code.dat"))?;
        }
        let header = header.unwrap_or(Header {
            accounts_log2: options.accounts_log2_buckets,
            slots_log2: options.slots_log2_buckets,
            ..Default::default()
        });
        let journal = dir.join("journal");
        let rollback = match checkpoint::read_journal(&journal)? {
            Some((generation, images)) if generation == header.generation => images,
            _ => Vec::new(),
        };
        let mut accounts = Table::open(
            dir,
            ACCOUNTS,
            header.accounts_log2,
            header.accounts_used,
            header.accounts_count,
        )?;
        let mut slots =
            Table::open(dir, SLOTS, header.slots_log2, header.slots_used, header.slots_count)?;
        if !rollback.is_empty() {
            tracing::warn!(images = rollback.len(), "rolling back an interrupted checkpoint");
            for p in &rollback {
                let (table_file, base) = table_file(p.file)
                    .ok_or(StoreError::Corrupt("journal names an unknown file"))?;
                if base == ACCOUNTS_FILE_BASE {
                    accounts.write(table_file, p.offset, &p.bytes)?;
                } else {
                    slots.write(table_file, p.offset, &p.bytes)?;
                }
            }
            accounts.flush()?;
            slots.flush()?;
        }
        checkpoint::remove_journal(&journal)?;
        let code = CodeFile::open(&dir.join("code.dat"), header.code_len)?;
        if checkpointed && B256::from(header.root) != root_of(&accounts, &slots) {
            return Err(StoreError::Corrupt("the tables' root differs from the checkpoint's"));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            base: Arc::new(Base {
                tables: RwLock::new(Tables { accounts, slots, code }),
                generation: AtomicU64::new(header.generation),
            }),
            header_file: Arc::new(header_file),
            generation: header.generation,
            header,
            checkpointed,
            overlay: Overlay::default(),
            pending: Pending::default(),
            frozen: None,
            epoch: Arc::new(Epoch::default()),
            writing: None,
            failed: false,
            _lock: lock,
            #[cfg(test)]
            crash_after_writes: None,
        })
    }

    /// Whether the store has no checkpoint yet (a new datadir).
    pub fn is_new(&self) -> bool {
        !self.checkpointed
    }

    /// Sequence number of the first mini-block the tables do not contain: the write-ahead log is
    /// replayed from here.
    pub fn next_seq(&self) -> u64 {
        self.header.next_seq
    }

    /// The EVM block of the last checkpoint.
    pub fn checkpoint_block(&self) -> u64 {
        self.header.block
    }

    /// The state root at the last checkpoint.
    pub fn checkpoint_root(&self) -> B256 {
        B256::from(self.header.root)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts and sizes.
    pub fn stats(&self) -> StoreStats {
        let t = self.base.read();
        StoreStats {
            accounts: t.accounts.count(),
            slots: t.slots.count(),
            codes: t.code.count() as u64,
            accounts_bytes: t.accounts.file_bytes(),
            slots_bytes: t.slots.file_bytes(),
            code_bytes: t.code.len(),
            log2_buckets: (t.accounts.log2_buckets(), t.slots.log2_buckets()),
            block: self.header.block,
            next_seq: self.header.next_seq,
            root: B256::from(self.header.root),
        }
    }

    /// A concrete view of the current state.
    pub fn snapshot(&self) -> PersistentView {
        PersistentView {
            overlay: self.overlay.clone(),
            frozen: self.frozen.clone(),
            epoch: self.epoch.clone(),
            base: self.base.clone(),
            generation: self.generation,
        }
    }

    /// The root the next commit would produce, computed without writing anything: the overlay is
    /// planned into both tables exactly as [`Self::checkpoint`] plans it, and the plan dropped.
    /// Fails only where the checkpoint would (the overlay contradicts the tables).
    pub fn preview_root(&mut self) -> Result<B256, StoreError> {
        self.wait_for_checkpoint()?;
        let tables = self.base.read();
        Ok(plan(&self.pending, &tables, false)?.root)
    }

    /// The slot count kept in `address`'s table record (checkpointed state only).
    #[cfg(test)]
    pub(crate) fn stored_slot_count(&self, address: &Address) -> Option<u64> {
        self.base.read().accounts.get(&address.0 .0).map(|r| u64::from_le_bytes(r.slot_count))
    }

    /// Commits everything applied so far as the state at the end of EVM block `block`, whose
    /// last mini-block is `next_seq - 1`, and returns the state root, planned on this thread. The
    /// checkpoint's I/O runs on a checkpoint thread; it is durable once
    /// [`Self::wait_for_checkpoint`] returns (the next commit waits for it first).
    pub fn checkpoint(&mut self, next_seq: u64, block: u64) -> Result<B256, StoreError> {
        self.start_checkpoint(next_seq, block, true)?.wait()
    }

    /// [`Self::checkpoint`] with the planning on the checkpoint thread too: the root arrives
    /// through the returned [`PendingRoot`], while the caller goes on applying the next block's
    /// diffs (views read the committed changes from the frozen layer until they are written).
    pub fn begin_checkpoint(
        &mut self,
        next_seq: u64,
        block: u64,
    ) -> Result<PendingRoot, StoreError> {
        self.start_checkpoint(next_seq, block, false)
    }

    fn start_checkpoint(
        &mut self,
        next_seq: u64,
        block: u64,
        plan_here: bool,
    ) -> Result<PendingRoot, StoreError> {
        let started = std::time::Instant::now();
        self.wait_for_checkpoint()?;
        let waited = started.elapsed();
        // The old values are kept for views of this epoch (and of older ones, which link to it);
        // with none alive (a bulk load, genesis) nobody can ever read them. No view of this epoch
        // can be taken from here on: the next one starts below.
        let keep_old = Arc::strong_count(&self.epoch) > 1;
        // Planned here, a failure leaves the store as it was.
        let planned = match plan_here {
            true => Some(plan(&self.pending, &self.base.read(), keep_old)?),
            false => None,
        };
        let (root, sender) = PendingRoot::channel();
        let old_epoch = std::mem::take(&mut self.epoch);
        let _ = old_epoch.next.set(self.epoch.clone());
        let frozen = Arc::new(std::mem::take(&mut self.overlay));
        self.frozen = Some(frozen.clone());
        self.generation = self.header.generation + 1;
        let job = CheckpointJob {
            dir: self.dir.clone(),
            base: self.base.clone(),
            header_file: self.header_file.clone(),
            previous: self.header.generation,
            header: Header {
                generation: self.generation,
                next_seq,
                block,
                accounts_log2: self.header.accounts_log2,
                slots_log2: self.header.slots_log2,
                ..Default::default()
            },
            // A store's first checkpoint overwrites nothing that matters: if it is cut short,
            // the next open finds no header and starts from empty files.
            journal: self.checkpointed,
            pending: self.pending.take_for_checkpoint(),
            planned,
            keep_old,
            epoch: old_epoch,
            frozen,
            root: sender,
            waited,
            #[cfg(test)]
            crash_after_writes: self.crash_after_writes.take(),
        };
        let spawned =
            std::thread::Builder::new().name("strobe-checkpoint".into()).spawn(move || job.run());
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                // The block's changes went into the job: nothing may be committed after this.
                self.failed = true;
                return Err(
                    crate::mapped::file_error("spawn checkpoint thread", &self.dir)(e).into()
                );
            }
        };
        self.writing = Some(handle);
        Ok(root)
    }

    /// Waits until the last commit's checkpoint is durable; reports its failure if it failed.
    /// After a failure every later commit fails too: the tables may be half-written until the
    /// next open rolls them back.
    pub fn wait_for_checkpoint(&mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Corrupt("an earlier checkpoint failed; restart to recover"));
        }
        let Some(handle) = self.writing.take() else { return Ok(()) };
        let written =
            handle.join().unwrap_or(Err(StoreError::Corrupt("the checkpoint thread panicked")));
        match written {
            Ok(header) => {
                self.header = header;
                self.checkpointed = true;
                self.frozen = None;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Plans the block's changes ([`Pending`]) into both tables (the read-only part of a
/// checkpoint), with the old values of every changed key when `keep_old`.
///
/// The two tables are planned side by side. They meet in one place: an account record keeps
/// the number of slots its contract has, which the slot plan decides. That count is
/// bookkeeping outside the commitment ([`AccountRecord`]), so the account plan runs with the
/// stored counts and the changes are patched into its records afterwards; every account whose
/// slots were written is in the account plan for that.
fn plan(pending: &Pending, tables: &Tables, keep_old: bool) -> Result<CheckpointPlan, StoreError> {
    let plan_slots = || {
        let keep = Keep { old: keep_old, presence: true };
        let stored = |r: &SlotRecord, _: Option<&SlotRecord>| (r.value != [0; 32]).then_some(*r);
        tables.slots.plan_with(slot_changes(pending, tables), SlotRecord::key, stored, keep)
    };
    let plan_accounts = || {
        // Each changed account with its new state (`None`: only its slot count may change).
        let mut accounts: Vec<(Address, Option<Option<AccountState>>)> =
            Vec::with_capacity(pending.accounts.len() + pending.storage.len());
        accounts.extend(pending.accounts.iter().map(|(a, info)| (*a, Some(*info))));
        let mut slots_only: Vec<Address> = pending
            .storage
            .keys()
            .chain(pending.wiped.iter())
            .filter(|a| !pending.accounts.contains_key(*a))
            .copied()
            .collect();
        slots_only.sort_unstable();
        slots_only.dedup();
        accounts.extend(slots_only.into_iter().map(|a| (a, None)));
        let new_record = |change: &(Address, Option<Option<AccountState>>),
                          stored: Option<&AccountRecord>| {
            let (address, info) = change;
            let count = stored.map(|r| u64::from_le_bytes(r.slot_count)).unwrap_or(0);
            let info = match info {
                Some(info) => *info,
                None => stored.map(decode_account),
            };
            info.map(|i| encode_account(address, &i, count))
        };
        let deleted: Vec<Address> =
            accounts.iter().filter(|(_, i)| *i == Some(None)).map(|(a, _)| *a).collect();
        let keep = Keep { old: keep_old, presence: false };
        let plan = tables.accounts.plan_with(accounts, |c| c.0 .0 .0, new_record, keep);
        (plan, deleted)
    };
    let (slot_plan, (mut account_plan, deleted)) = rayon::join(plan_slots, plan_accounts);
    let mut slot_delta: HashMap<Address, i64> = HashMap::default();
    for (key, was, is) in &slot_plan.presence {
        let d = *is as i64 - *was as i64;
        if d != 0 {
            *slot_delta.entry(Address::from_slice(&key[..20])).or_default() += d;
        }
    }
    // A deleted (or never created) account keeping slots means the overlay and the tables
    // disagree.
    let corrupt = || StoreError::Corrupt("a deleted account would keep storage slots");
    let stored_count = |address: &Address| {
        tables.accounts.get(&address.0 .0).map_or(0, |r| u64::from_le_bytes(r.slot_count))
    };
    for address in &deleted {
        let d = slot_delta.get(address).copied().unwrap_or(0);
        if stored_count(address) as i64 + d != 0 {
            return Err(corrupt());
        }
    }
    for (address, d) in &slot_delta {
        match account_plan.record_mut(&address.0 .0) {
            Some(record) => {
                let count = u64::from_le_bytes(record.slot_count) as i64 + d;
                let count = u64::try_from(count).map_err(|_| corrupt())?;
                // The bucket's hash is already taken: only uncommitted bytes may change.
                let committed: [u8; AccountRecord::COMMITTED_BYTES] =
                    record.committed().try_into().expect("committed bytes");
                record.slot_count = count.to_le_bytes();
                debug_assert_eq!(record.committed(), &committed[..]);
            }
            None if stored_count(address) as i64 + d != 0 => return Err(corrupt()),
            None => {}
        }
    }
    let root = proof::state_root_of(B256::from(account_plan.root), B256::from(slot_plan.root));
    Ok(CheckpointPlan { accounts: account_plan, slots: slot_plan, root })
}

/// The block's storage changes ([`Pending`]), as the records to store (a zero value deletes):
/// every stored slot of a wiped account is deleted, then the slots written after override
/// those deletions. Keys are unique.
fn slot_changes(pending: &Pending, tables: &Tables) -> Vec<SlotRecord> {
    let fill = |(address, slots, out): (&Address, &HashMap<U256, U256>, &mut [SlotRecord])| {
        for ((slot, value), r) in slots.iter().zip(out) {
            *r = SlotRecord {
                address: address.0 .0,
                slot: slot.to_be_bytes(),
                value: value.to_be_bytes(),
            };
        }
    };
    // Each contract's slots written straight into its own part of one vector.
    let written: usize = pending.storage.values().map(HashMap::len).sum();
    let mut changes = vec![SlotRecord::zeroed(); written];
    let mut rest = changes.as_mut_slice();
    let mut parts = Vec::with_capacity(pending.storage.len());
    for (address, slots) in &pending.storage {
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(slots.len());
        parts.push((address, slots, part));
        rest = tail;
    }
    if written >= PARALLEL_SLOTS {
        parts.into_par_iter().for_each(fill);
    } else {
        parts.into_iter().for_each(fill);
    }
    let wiped: Vec<Address> = pending
        .wiped
        .iter()
        .filter(|a| {
            tables.accounts.get(&a.0 .0).is_some_and(|r| u64::from_le_bytes(r.slot_count) > 0)
        })
        .copied()
        .collect();
    if !wiped.is_empty() {
        // Rare (a pre-existing account's storage destroyed): scan the table once for all.
        let written: std::collections::HashSet<[u8; 52]> =
            changes.iter().map(SlotRecord::key).collect();
        for r in tables.slots.records() {
            if wiped.iter().any(|a| a.0 .0 == r.address) && !written.contains(&r.key()) {
                changes.push(SlotRecord { value: [0; 32], ..*r });
            }
        }
    }
    changes
}

/// The rest of a checkpoint, run on the checkpoint thread: the plan (unless the committer made
/// it), the root's delivery, then the I/O.
struct CheckpointJob {
    dir: PathBuf,
    base: Arc<Base>,
    header_file: Arc<HeaderFile>,
    /// Generation of the checkpoint on disk, which the journal protects.
    previous: u64,
    /// The new header, without the root and the table bookkeeping (filled in here).
    header: Header,
    /// Whether to journal the pre-images of the writes before making them.
    journal: bool,
    /// The block's changes.
    pending: Pending,
    /// The plan of `pending`, when the committer made it.
    planned: Option<CheckpointPlan>,
    /// Whether views of `epoch` are alive, so the plan must keep the old values for them.
    keep_old: bool,
    /// The epoch this checkpoint ends: its undo layer is published before the tables change.
    epoch: Arc<Epoch>,
    /// The changes as views read them until written (new code comes from here).
    frozen: Arc<Overlay>,
    root: RootSender,
    /// How long the committer waited for the previous checkpoint (for the debug line).
    waited: std::time::Duration,
    #[cfg(test)]
    crash_after_writes: Option<usize>,
}

impl CheckpointJob {
    fn run(mut self) -> Result<Header, StoreError> {
        let started = std::time::Instant::now();
        let accounts_changed = self.pending.accounts.len();
        let slots_changed: usize = self.pending.storage.values().map(|s| s.len()).sum();
        let planned = match self.planned.take() {
            Some(p) => Ok(p),
            // The tables do not change until this job writes them (the next checkpoint waits
            // for it), so planning here sees exactly the state the committer would have.
            // Below the sequencer's priority (`background.rs`). Only the plan: the writes below
            // hold the tables' write lock, which readers wait for, so they run at the default
            // priority and never sit preempted while holding it.
            None => {
                let (pending, base, keep_old) = (&self.pending, &self.base, self.keep_old);
                crate::background::run(|| plan(pending, &base.read(), keep_old))
            }
        };
        let root = self.root;
        let CheckpointPlan { mut accounts, mut slots, root: state_root } = match planned {
            Ok(p) => {
                root.send(Ok(p.root));
                p
            }
            Err(e) => {
                root.send(Err(e.to_string()));
                return Err(e);
            }
        };
        let planned_at = started.elapsed();
        tracing::debug!(
            block = self.header.block,
            accounts = accounts_changed,
            slots = slots_changed,
            wait_us = self.waited.as_micros() as u64,
            plan_us = planned_at.as_micros() as u64,
            "state checkpoint planned"
        );
        drop(std::mem::take(&mut self.pending));
        self.header.root = state_root.0;
        let codes: Vec<(B256, Bytecode)> = {
            let tables = self.base.read();
            self.frozen
                .codes
                .iter()
                .filter(|(h, _)| !tables.code.contains(h))
                .map(|(h, c)| (*h, c.clone()))
                .collect()
        };
        // Views of the ending epoch keep seeing the old values from here on.
        let undo = Undo {
            accounts: accounts
                .old
                .iter()
                .map(|(k, r)| (Address::from(*k), r.as_ref().map(decode_account)))
                .collect(),
            slots: slots
                .old
                .iter()
                .map(|(k, r)| {
                    let value = r.map(|r| U256::from_be_bytes(r.value)).unwrap_or_default();
                    ((Address::from_slice(&k[..20]), U256::from_be_slice(&k[20..])), value)
                })
                .collect(),
        };
        let _ = self.epoch.undo.set(undo);
        // Laying out the writes and reading their pre-images is CPU work under the read lock
        // only: below the sequencer's priority too.
        let (account_writes, slot_writes) = crate::background::run(|| {
            rayon::join(|| accounts.take_writes(), || slots.take_writes())
        });
        let journal = self.dir.join("journal");
        if self.journal {
            let images = crate::background::run(|| {
                let tables = self.base.read();
                let mut images = pre_images(&tables.accounts, &account_writes, ACCOUNTS_FILE_BASE);
                images.extend(pre_images(&tables.slots, &slot_writes, SLOTS_FILE_BASE));
                images
            });
            if !images.is_empty() {
                checkpoint::write_journal(&journal, self.previous, &images)?;
            }
        }
        #[cfg(test)]
        if let Some(n) = self.crash_after_writes {
            let mut tables = self.base.tables.write().unwrap_or_else(|p| p.into_inner());
            let accounts = account_writes.writes.iter().map(|w| (true, w));
            let slots = slot_writes.writes.iter().map(|w| (false, w));
            for (is_account, w) in accounts.chain(slots).take(n) {
                if is_account {
                    tables.accounts.write(w.file, w.offset, account_writes.bytes(w))?;
                } else {
                    tables.slots.write(w.file, w.offset, slot_writes.bytes(w))?;
                }
            }
            tables.accounts.flush()?;
            tables.slots.flush()?;
            return Err(StoreError::Corrupt("simulated crash"));
        }
        let prefaulting = std::time::Instant::now();
        {
            // Page faults outside the write lock: inside it they were most of its hold time.
            let tables = self.base.read();
            tables.accounts.prefault(&account_writes);
            tables.slots.prefault(&slot_writes);
        }
        let prefaulted = prefaulting.elapsed();
        let locked = std::time::Instant::now();
        {
            let mut tables = self.base.tables.write().unwrap_or_else(|p| p.into_inner());
            tables.accounts.apply(&accounts, &account_writes)?;
            tables.slots.apply(&slots, &slot_writes)?;
            let added = tables.code.append(&codes)?;
            tables.code.publish(added);
            self.base.generation.store(self.header.generation, Ordering::Release);
        }
        let write_locked = locked.elapsed();
        let tables = self.base.read();
        tables.accounts.flush()?;
        tables.slots.flush()?;
        let mut header = Header {
            accounts_used: tables.accounts.used_records(),
            accounts_count: tables.accounts.count(),
            slots_used: tables.slots.used_records(),
            slots_count: tables.slots.count(),
            code_len: tables.code.len(),
            ..self.header
        };
        drop(tables);
        self.header_file.write(&mut header)?;
        checkpoint::remove_journal(&journal)?;
        tracing::debug!(
            block = header.block,
            writes = account_writes.writes.len() + slot_writes.writes.len(),
            prefault_us = prefaulted.as_micros() as u64,
            write_lock_us = write_locked.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "state checkpoint written"
        );
        Ok(header)
    }
}

impl Drop for PersistentStore {
    fn drop(&mut self) {
        if let Err(e) = self.wait_for_checkpoint() {
            tracing::error!(%e, "the last checkpoint failed; the next open rolls it back");
        }
    }
}

fn table_file(file: u8) -> Option<(TableFile, u8)> {
    let base = if file < SLOTS_FILE_BASE { ACCOUNTS_FILE_BASE } else { SLOTS_FILE_BASE };
    let kind = match file - base {
        0 => TableFile::Dir,
        1 => TableFile::Dat,
        2 => TableFile::Tree,
        _ => return None,
    };
    Some((kind, base))
}

fn pre_images<R: crate::table::Record>(
    table: &Table<R>,
    writes: &PlanWrites,
    base: u8,
) -> Vec<PreImage> {
    writes
        .writes
        .iter()
        .filter_map(|w| {
            table.pre_image(w).map(|bytes| PreImage {
                file: base + w.file as u8,
                offset: w.offset,
                bytes,
            })
        })
        .collect()
}

fn root_of(accounts: &Table<AccountRecord>, slots: &Table<SlotRecord>) -> B256 {
    proof::state_root_of(B256::from(accounts.root()), B256::from(slots.root()))
}

/// How long opening waits for the directory lock before reporting it in use. A lock released a
/// moment ago can still be held by a child process this process is just spawning (the
/// descriptor lives in the child from fork to exec), so a reopen within the same process retries
/// briefly; another node holding the directory is reported after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = File::create(&path).map_err(crate::mapped::file_error("create", &path))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(crate::mapped::file_error("lock", &path)(e).into())
            }
        }
    }
}

impl StateStore for PersistentStore {
    fn apply(&mut self, diff: &StateDiff) -> Result<(), StoreError> {
        self.overlay.apply(diff);
        self.pending.apply(diff);
        Ok(())
    }

    fn view(&self) -> Arc<dyn StateView> {
        Arc::new(self.snapshot())
    }

    fn commit(&mut self, next_seq: u64, block: u64) -> Result<B256, StoreError> {
        self.checkpoint(next_seq, block)
    }

    fn begin_commit(&mut self, next_seq: u64, block: u64) -> Result<PendingRoot, StoreError> {
        self.begin_checkpoint(next_seq, block)
    }

    fn preview_root(&mut self) -> Result<B256, StoreError> {
        PersistentStore::preview_root(self)
    }

    fn last_commit(&self) -> Option<(u64, u64)> {
        self.checkpointed.then_some((self.header.next_seq, self.header.block))
    }

    fn wait_durable(&mut self) -> Result<(), StoreError> {
        self.wait_for_checkpoint()
    }
}

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
