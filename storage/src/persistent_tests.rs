use super::*;
use crate::{state_root_of, AccountChange, MemoryStore, ProofError};
use proptest::prelude::*;

const SMALL: StoreOptions = StoreOptions { accounts_log2_buckets: 2, slots_log2_buckets: 4 };

fn acct(nonce: u64, balance: u64) -> AccountState {
    AccountState { nonce, balance: U256::from(balance), code_hash: KECCAK_EMPTY }
}

fn addr(i: u8) -> Address {
    Address::repeat_byte(i)
}

/// One generated diff: per account, `None` = delete, else (balance, wipe, slot writes).
type GenChange = (u8, Option<(u64, bool, Vec<(u8, u8)>)>);

fn diff_of(changes: &[GenChange]) -> StateDiff {
    let mut accounts: Vec<AccountChange> = changes
        .iter()
        .map(|(who, c)| match c {
            None => AccountChange {
                address: addr(*who),
                info: None,
                storage_cleared: true,
                storage: vec![],
            },
            Some((bal, wipe, slots)) => {
                let mut storage: Vec<(U256, U256)> =
                    slots.iter().map(|(s, v)| (U256::from(*s), U256::from(*v))).collect();
                storage.sort_by_key(|(s, _)| *s);
                storage.dedup_by_key(|(s, _)| *s);
                AccountChange {
                    address: addr(*who),
                    info: Some(acct(1, *bal)),
                    storage_cleared: *wipe,
                    storage,
                }
            }
        })
        .collect();
    accounts.sort_by_key(|a| a.address);
    accounts.dedup_by_key(|a| a.address);
    StateDiff { accounts, codes: vec![] }
}

fn assert_same(view: &dyn StateView, model: &crate::MemoryView) {
    for a in 0u8..6 {
        assert_eq!(view.account(&addr(a)), model.account(&addr(a)), "account {a}");
        for s in 0u8..6 {
            let slot = U256::from(s);
            assert_eq!(
                view.storage(&addr(a), &slot),
                model.storage(&addr(a), &slot),
                "slot {a}/{s}"
            );
        }
    }
}

/// The commitment root recomputed from scratch from a model's contents.
fn naive_root(model: &crate::MemoryView) -> B256 {
    let (al, sl) = (SMALL.accounts_log2_buckets, SMALL.slots_log2_buckets);
    let mut account_buckets = vec![Vec::new(); 1 << al];
    let mut slot_buckets = vec![Vec::new(); 1 << sl];
    for (a, info) in model.accounts() {
        let slots = model.storage_slots(&a);
        let r = encode_account(&a, &info, slots.len() as u64);
        account_buckets[crate::bucket_of(a.as_slice(), al) as usize].push(r);
        for (s, v) in slots {
            let r = SlotRecord { address: a.0 .0, slot: s.to_be_bytes(), value: v.to_be_bytes() };
            slot_buckets[crate::bucket_of(&slot_key(&a, &s), sl) as usize].push(r);
        }
    }
    use crate::table::Record;
    fn root_of<R: Record>(buckets: &mut [Vec<R>]) -> [u8; 32] {
        let hashes: Vec<_> = buckets
            .iter_mut()
            .map(|b| {
                b.sort_by_key(|r| r.key());
                crate::tree::bucket_hash(b.iter().map(|r| r.committed()))
            })
            .collect();
        crate::tree::naive_root(&hashes)
    }
    state_root_of(B256::from(root_of(&mut account_buckets)), B256::from(root_of(&mut slot_buckets)))
}

fn gen_change() -> impl Strategy<Value = GenChange> {
    (
        0u8..6,
        proptest::option::weighted(
            0.85,
            (
                0u64..5,
                proptest::bool::weighted(0.1),
                proptest::collection::vec((0u8..6, 0u8..3), 0..4),
            ),
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random diffs with checkpoints and reopens read back like the in-memory model; the root
    /// equals a from-scratch recomputation; views taken before a checkpoint still read their own
    /// state after it; proofs of every key verify.
    #[test]
    fn store_matches_model(blocks in proptest::collection::vec(
        (proptest::collection::vec(proptest::collection::vec(gen_change(), 1..5), 1..4), any::<bool>()), 1..8))
    {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
        let mut model = MemoryStore::new();
        let mut seq = 0;
        let mut old_views: Vec<(Arc<dyn StateView>, crate::MemoryView)> = Vec::new();
        for (block, (minis, reopen)) in blocks.iter().enumerate() {
            for mini in minis {
                let diff = diff_of(mini);
                store.apply(&diff).unwrap();
                model.apply(&diff).unwrap();
                seq += 1;
                old_views.push((store.view(), model.snapshot()));
                assert_same(&*store.view(), &model.snapshot());
            }
            let preview = store.preview_root().unwrap();
            let root = store.commit(seq, block as u64 + 1).unwrap();
            prop_assert_eq!(preview, root);
            prop_assert_eq!(root, naive_root(&model.snapshot()));
            for (view, want) in &old_views {
                assert_same(&**view, want);
            }
            let view = store.view();
            store.wait_for_checkpoint().unwrap();
            for a in 0u8..6 {
                // The slot count the table keeps (bookkeeping patched in after planning).
                let snapshot = model.snapshot();
                let want = snapshot.account(&addr(a)).map(|_| snapshot.storage_slots(&addr(a)).len() as u64);
                prop_assert_eq!(store.stored_slot_count(&addr(a)), want);
                let p = view.proof(&addr(a), &[U256::from(1), U256::from(4)]).unwrap();
                prop_assert_eq!(p.verify_account(root, &addr(a)).unwrap(), model.snapshot().account(&addr(a)));
                for s in [1u8, 4] {
                    let got = p.verify_slot(root, &addr(a), &U256::from(s)).unwrap().unwrap();
                    prop_assert_eq!(got, model.snapshot().storage(&addr(a), &U256::from(s)));
                }
            }
            if *reopen {
                old_views.clear();
                drop(view);
                drop(store);
                store = PersistentStore::open(dir.path(), StoreOptions::default()).unwrap();
                prop_assert_eq!(store.next_seq(), seq);
                prop_assert_eq!(store.checkpoint_root(), root);
                assert_same(&*store.view(), &model.snapshot());
            }
        }
    }

    /// Commits planned on the checkpoint thread (`begin_commit`) while the next block's diffs are
    /// applied: every view, old or new, reads like the model at its point, each root equals a
    /// from-scratch recomputation of its block's state, and a reopen finds the last one.
    #[test]
    fn background_commits_match_the_model(blocks in proptest::collection::vec(
        proptest::collection::vec(proptest::collection::vec(gen_change(), 1..5), 1..4), 1..6))
    {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
        let mut model = MemoryStore::new();
        let mut seq = 0;
        let mut views: Vec<(Arc<dyn StateView>, crate::MemoryView)> = Vec::new();
        let mut in_flight: Option<(PendingRoot, B256)> = None;
        let mut last_root = B256::ZERO;
        for (block, minis) in blocks.iter().enumerate() {
            for mini in minis {
                let diff = diff_of(mini);
                store.apply(&diff).unwrap();
                model.apply(&diff).unwrap();
                seq += 1;
                views.push((store.view(), model.snapshot()));
                for (view, want) in &views {
                    assert_same(&**view, want);
                }
                // The previous block's root, awaited only once this block has begun.
                if let Some((root, want)) = in_flight.take() {
                    prop_assert_eq!(root.wait().unwrap(), want);
                }
            }
            let want = naive_root(&model.snapshot());
            let root = StateStore::begin_commit(&mut store, seq, block as u64 + 1).unwrap();
            views.push((store.view(), model.snapshot()));
            last_root = want;
            in_flight = Some((root, want));
        }
        if let Some((root, want)) = in_flight {
            prop_assert_eq!(root.wait().unwrap(), want);
        }
        store.wait_for_checkpoint().unwrap();
        for (view, want) in &views {
            assert_same(&**view, want);
        }
        drop(views);
        drop(store);
        let store = PersistentStore::open(dir.path(), SMALL).unwrap();
        prop_assert_eq!(store.next_seq(), seq);
        prop_assert_eq!(store.checkpoint_root(), last_root);
        assert_same(&*store.view(), &model.snapshot());
    }

    /// A checkpoint killed after any number of its table writes rolls back on reopen to exactly
    /// the previous checkpoint, and replaying the lost diffs gives the same root as without the
    /// crash.
    #[test]
    fn interrupted_checkpoint_rolls_back(first in proptest::collection::vec(gen_change(), 1..8),
                                         second in proptest::collection::vec(gen_change(), 1..8),
                                         cut in 0usize..64) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
        store.apply(&diff_of(&first)).unwrap();
        let root1 = store.commit(1, 1).unwrap();
        store.apply(&diff_of(&second)).unwrap();
        store.crash_after_writes = Some(cut);
        store.commit(2, 2).unwrap();
        prop_assert!(store.wait_for_checkpoint().is_err());
        prop_assert!(store.commit(3, 3).is_err(), "a failed checkpoint fails every later commit");
        drop(store);
        let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
        prop_assert_eq!(store.checkpoint_root(), root1);
        prop_assert_eq!(store.next_seq(), 1);
        let mut model = MemoryStore::new();
        model.apply(&diff_of(&first)).unwrap();
        assert_same(&*store.view(), &model.snapshot());
        store.apply(&diff_of(&second)).unwrap();
        model.apply(&diff_of(&second)).unwrap();
        let root2 = store.commit(2, 2).unwrap();
        prop_assert_eq!(root2, naive_root(&model.snapshot()));
    }
}

#[test]
fn tampered_proofs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
    let changes: Vec<GenChange> =
        (0..6).map(|i| (i, Some((i as u64 + 1, false, vec![(1, i + 1), (2, 7)])))).collect();
    store.apply(&diff_of(&changes)).unwrap();
    let root = store.commit(1, 1).unwrap();
    let a = addr(3);
    store.wait_for_checkpoint().unwrap();
    let good = store.view().proof(&a, &[U256::from(1)]).unwrap();
    assert_eq!(good.verify_account(root, &a).unwrap(), Some(acct(1, 4)));
    // A changed balance byte in the bucket.
    let mut p = good.clone();
    let i = p.account.records.iter().position(|r| r[..20] == a.0 .0).unwrap();
    let mut r = p.account.records[i].to_vec();
    r[60] ^= 1;
    p.account.records[i] = r.into();
    assert!(p.verify_account(root, &a).is_err());
    // A dropped record (claims absence).
    let mut p = good.clone();
    p.account.records.remove(i);
    assert!(p.verify_account(root, &a).is_err());
    // A wrong sibling.
    let mut p = good.clone();
    p.account.siblings[0][0] = B256::repeat_byte(9);
    assert!(p.verify_account(root, &a).is_err() || p.account.siblings.is_empty());
    // A wrong slot value.
    let mut p = good.clone();
    let mut r = p.storage[0].1.records[0].to_vec();
    r[83] ^= 1;
    p.storage[0].1.records[0] = r.into();
    assert!(p.verify_slot(root, &a, &U256::from(1)).unwrap().is_err());
    // Another root.
    assert_eq!(good.verify_account(B256::ZERO, &a), Err(ProofError::RootMismatch));
    // Proofs of an older state are refused once the state moved on.
    let old = store.view();
    store.apply(&diff_of(&[(1, Some((9, false, vec![])))])).unwrap();
    assert_eq!(store.view().proof(&a, &[]), Err(ProofError::Unavailable));
    store.commit(2, 2).unwrap();
    store.wait_for_checkpoint().unwrap();
    assert_eq!(old.proof(&a, &[]), Err(ProofError::Unavailable));
}

#[test]
fn a_second_process_cannot_open_the_datadir() {
    let dir = tempfile::tempdir().unwrap();
    let _store = PersistentStore::open(dir.path(), SMALL).unwrap();
    assert!(matches!(PersistentStore::open(dir.path(), SMALL), Err(StoreError::InUse(_))));
}

#[test]
fn code_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let code = Bytecode::new_raw(alloy_primitives::Bytes::from_static(&[0x60, 0x01, 0x00]));
    let hash = code.hash_slow();
    let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
    let diff = StateDiff {
        accounts: vec![AccountChange {
            address: addr(1),
            info: Some(AccountState { nonce: 1, balance: U256::ZERO, code_hash: hash }),
            storage_cleared: true,
            storage: vec![],
        }],
        codes: vec![(hash, code.clone())],
    };
    store.apply(&diff).unwrap();
    assert_eq!(store.view().code(&hash).unwrap().original_bytes(), code.original_bytes());
    store.commit(1, 1).unwrap();
    drop(store);
    let store = PersistentStore::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.view().code(&hash).unwrap().original_bytes(), code.original_bytes());
    assert_eq!(store.stats().codes, 1);
}

#[test]
fn default_shape_reads_back_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = PersistentStore::open(dir.path(), StoreOptions::default()).unwrap();
    let changes: Vec<GenChange> =
        (0..6).map(|i| (i, Some((i as u64 + 1, false, vec![(1, 2)])))).collect();
    store.apply(&diff_of(&changes)).unwrap();
    store.commit(0, 0).unwrap();
    for i in 0..6u8 {
        assert_eq!(store.view().account(&addr(i)), Some(acct(1, i as u64 + 1)), "account {i}");
        assert_eq!(store.view().storage(&addr(i), &U256::from(1)), U256::from(2));
    }
}

#[test]
fn preview_root_is_the_next_commits_root_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = PersistentStore::open(dir.path(), SMALL).unwrap();
    // Nothing applied yet: the root of two empty tables.
    assert_eq!(store.preview_root().unwrap(), state_root_of(B256::ZERO, B256::ZERO));
    let first: Vec<GenChange> =
        (0..6).map(|i| (i, Some((i as u64 + 1, false, vec![(1, i + 1), (2, 7)])))).collect();
    store.apply(&diff_of(&first)).unwrap();
    let preview = store.preview_root().unwrap();
    assert_eq!(store.preview_root().unwrap(), preview, "previewing twice changes nothing");
    assert_eq!(store.stats().accounts, 0, "a preview writes nothing to the tables");
    let root1 = store.commit(1, 1).unwrap();
    assert_eq!(preview, root1);
    assert_eq!(store.preview_root().unwrap(), root1, "an empty overlay previews the checkpoint");
    // Changes, deletions and a storage wipe over existing state.
    let second: Vec<GenChange> =
        vec![(1, None), (2, Some((9, true, vec![(3, 1)]))), (3, Some((5, false, vec![(1, 0)])))];
    store.apply(&diff_of(&second)).unwrap();
    let preview = store.preview_root().unwrap();
    assert_eq!(store.checkpoint_root(), root1);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(store.preview_root().unwrap(), preview);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files, "no journal written");
    assert_eq!(store.commit(2, 2).unwrap(), preview);
}
