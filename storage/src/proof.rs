//! Inclusion (and exclusion) proofs against the state commitment, and their verification.
//!
//! The state root is `keccak256(accounts_root ‖ slots_root)`. A key's proof is the whole bucket
//! the key hashes to (every record in it, in key order) plus the sibling path from that bucket to
//! its table's root. Because the bucket is complete, the same proof shows a key's absence.

use crate::{
    table::{bucket_of, AccountRecord, Record, SlotRecord},
    tree::{self, Hash},
    AccountState,
};
use alloy_primitives::{keccak256, Address, Bytes, B256, U256};

/// A bucket and its path to a table root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketProof {
    /// Index of the bucket.
    pub bucket: u64,
    /// The committed bytes of every record in the bucket, in key order.
    pub records: Vec<Bytes>,
    /// For each level from the bucket up, the three other children of its parent.
    pub siblings: Vec<[B256; 3]>,
}

/// Proof of one account and some of its storage slots against a state root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateProof {
    /// Root of the accounts table.
    pub accounts_root: B256,
    /// Root of the storage table.
    pub slots_root: B256,
    /// The account's bucket.
    pub account: BucketProof,
    /// Each requested slot with its bucket.
    pub storage: Vec<(U256, BucketProof)>,
}

/// Why a proof was refused or could not be produced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The two table roots do not hash to the state root.
    #[error("table roots do not hash to the state root")]
    RootMismatch,
    /// The bucket is not the one the key hashes to.
    #[error("the proof's bucket is not the key's bucket")]
    WrongBucket,
    /// A record is malformed, out of order, or in the wrong bucket.
    #[error("malformed bucket contents")]
    BadRecords,
    /// The bucket and its path do not fold to the table root.
    #[error("the bucket's path does not lead to the table root")]
    PathMismatch,
    /// This state cannot produce proofs (it is not the state at the end of the newest sealed
    /// block, or the store keeps no commitment).
    #[error("proofs are only available for the newest sealed block's state")]
    Unavailable,
}

/// The state root over two table roots.
pub fn state_root_of(accounts_root: B256, slots_root: B256) -> B256 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(accounts_root.as_slice());
    buf[32..].copy_from_slice(slots_root.as_slice());
    keccak256(buf)
}

impl StateProof {
    /// Checks the proof against `root` and returns the account it proves (`None`: proven absent).
    pub fn verify_account(
        &self,
        root: B256,
        address: &Address,
    ) -> Result<Option<AccountState>, ProofError> {
        self.check_roots(root)?;
        let records: Vec<AccountRecord> =
            verify_bucket(&self.account, self.accounts_root, &address.0 .0)?;
        Ok(records.iter().find(|r| r.address == address.0 .0).map(decode_account))
    }

    /// Checks the proof of `slot` of `address` against `root` and returns its value (zero when
    /// proven absent). `None` when the proof does not cover `slot`.
    pub fn verify_slot(
        &self,
        root: B256,
        address: &Address,
        slot: &U256,
    ) -> Option<Result<U256, ProofError>> {
        let (_, proof) = self.storage.iter().find(|(s, _)| s == slot)?;
        Some((|| {
            self.check_roots(root)?;
            let key = slot_key(address, slot);
            let records: Vec<SlotRecord> = verify_bucket(proof, self.slots_root, &key)?;
            Ok(records
                .iter()
                .find(|r| r.key() == key)
                .map(|r| U256::from_be_bytes(r.value))
                .unwrap_or_default())
        })())
    }

    fn check_roots(&self, root: B256) -> Result<(), ProofError> {
        if state_root_of(self.accounts_root, self.slots_root) != root {
            return Err(ProofError::RootMismatch);
        }
        Ok(())
    }
}

fn verify_bucket<R: Record>(
    proof: &BucketProof,
    table_root: B256,
    key: &[u8],
) -> Result<Vec<R>, ProofError> {
    let log2 = 2 * proof.siblings.len() as u32;
    if log2 > 60 || bucket_of(key, log2) != proof.bucket {
        return Err(ProofError::WrongBucket);
    }
    let mut records = Vec::with_capacity(proof.records.len());
    for bytes in &proof.records {
        if bytes.len() != R::COMMITTED_BYTES {
            return Err(ProofError::BadRecords);
        }
        let mut r = R::zeroed();
        bytemuck::bytes_of_mut(&mut r)[..R::COMMITTED_BYTES].copy_from_slice(bytes);
        if bucket_of(r.key().as_ref(), log2) != proof.bucket {
            return Err(ProofError::BadRecords);
        }
        if let Some(prev) = records.last() {
            if R::key(prev) >= r.key() {
                return Err(ProofError::BadRecords);
            }
        }
        records.push(r);
    }
    let hash = tree::bucket_hash(proof.records.iter().map(|b| b.as_ref()));
    let siblings: Vec<[Hash; 3]> =
        proof.siblings.iter().map(|s| [s[0].0, s[1].0, s[2].0]).collect();
    if tree::fold(proof.bucket, hash, &siblings) != table_root.0 {
        return Err(ProofError::PathMismatch);
    }
    Ok(records)
}

/// The table key of a storage slot.
pub(crate) fn slot_key(address: &Address, slot: &U256) -> [u8; 52] {
    let mut k = [0u8; 52];
    k[..20].copy_from_slice(address.as_slice());
    k[20..].copy_from_slice(&slot.to_be_bytes::<32>());
    k
}

/// An account record's state.
pub(crate) fn decode_account(r: &AccountRecord) -> AccountState {
    AccountState {
        nonce: u64::from_le_bytes(r.nonce),
        balance: U256::from_be_bytes(r.balance),
        code_hash: B256::from(r.code_hash),
    }
}

/// The record of an account with `slot_count` storage slots.
pub(crate) fn encode_account(
    address: &Address,
    a: &AccountState,
    slot_count: u64,
) -> AccountRecord {
    AccountRecord {
        address: address.0 .0,
        nonce: a.nonce.to_le_bytes(),
        balance: a.balance.to_be_bytes(),
        code_hash: a.code_hash.0,
        slot_count: slot_count.to_le_bytes(),
    }
}

/// The proof of `bucket` in a table.
pub(crate) fn bucket_proof<R: Record>(table: &crate::table::Table<R>, key: &[u8]) -> BucketProof {
    let bucket = bucket_of(key, table.log2_buckets());
    BucketProof {
        bucket,
        records: table
            .bucket(bucket)
            .iter()
            .map(|r| Bytes::copy_from_slice(r.committed()))
            .collect(),
        siblings: table
            .siblings(bucket)
            .iter()
            .map(|s| [B256::from(s[0]), B256::from(s[1]), B256::from(s[2])])
            .collect(),
    }
}
