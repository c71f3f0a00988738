//! A small binary codec for what the store writes to disk (state diffs, and the engine's block
//! and mini-block records): fixed-width little-endian integers, length-prefixed byte strings.
//!
//! Every read is bounds-checked and every length is capped, so decoding damaged or hostile bytes
//! returns [`DecodeError`] and never panics or allocates without bound (property-tested below).

use alloy_primitives::{Address, B256, U256};

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("record ends early")]
    UnexpectedEnd,
    /// A length or count is larger than the rest of the input can hold.
    #[error("length {0} exceeds the record")]
    Length(u64),
    /// A value is out of its range.
    #[error("invalid value: {0}")]
    Invalid(&'static str),
    /// Bytes remain after the record.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// Appends encoded values to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A bool as one byte.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }
    /// A u32, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A u64, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A u128, little-endian.
    pub fn u128(&mut self, v: u128) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A 256-bit number, big-endian.
    pub fn u256(&mut self, v: &U256) {
        self.buf.extend_from_slice(&v.to_be_bytes::<32>());
    }
    /// A 32-byte hash.
    pub fn b256(&mut self, v: &B256) {
        self.buf.extend_from_slice(v.as_slice());
    }
    /// An address.
    pub fn address(&mut self, v: &Address) {
        self.buf.extend_from_slice(v.as_slice());
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).expect("encoded byte strings are bounded below 4 GiB"));
        self.buf.extend_from_slice(v);
    }
    /// A count of items that follow.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("encoded counts are bounded below 4 Gi"));
    }
}

/// Reads encoded values from a slice.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// A bool (0 or 1).
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("bool")),
        }
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A u128.
    pub fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    /// A 256-bit number.
    pub fn u256(&mut self) -> Result<U256, DecodeError> {
        Ok(U256::from_be_bytes(self.array::<32>()?))
    }
    /// A 32-byte hash.
    pub fn b256(&mut self) -> Result<B256, DecodeError> {
        Ok(B256::from(self.array::<32>()?))
    }
    /// An address.
    pub fn address(&mut self) -> Result<Address, DecodeError> {
        Ok(Address::from(self.array::<20>()?))
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() {
            return Err(DecodeError::Length(n as u64));
        }
        self.take(n)
    }
    /// A count of items of at least `min_item_bytes` each (checked against the bytes left, so a
    /// hostile count cannot make the caller allocate).
    pub fn len(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Length(n as u64));
        }
        Ok(n)
    }
    /// Whether every byte was read (for a trailing field that older records lack).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

impl crate::StateDiff {
    /// Appends the diff's encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.len(self.accounts.len());
        for a in &self.accounts {
            e.address(&a.address);
            match &a.info {
                None => e.u8(0),
                Some(info) => {
                    e.u8(1);
                    e.u64(info.nonce);
                    e.u256(&info.balance);
                    e.b256(&info.code_hash);
                }
            }
            e.bool(a.storage_cleared);
            e.len(a.storage.len());
            for (slot, value) in &a.storage {
                e.u256(slot);
                e.u256(value);
            }
        }
        e.len(self.codes.len());
        for (hash, code) in &self.codes {
            e.b256(hash);
            e.bytes(&code.original_bytes());
        }
    }

    /// Reads a diff written by [`Self::encode`]. Code is checked against its hash.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let n = d.len(22)?;
        let mut accounts = Vec::with_capacity(n);
        for _ in 0..n {
            let address = d.address()?;
            let info = match d.u8()? {
                0 => None,
                1 => Some(crate::AccountState {
                    nonce: d.u64()?,
                    balance: d.u256()?,
                    code_hash: d.b256()?,
                }),
                _ => return Err(DecodeError::Invalid("account tag")),
            };
            let storage_cleared = d.bool()?;
            let m = d.len(64)?;
            let mut storage = Vec::with_capacity(m);
            for _ in 0..m {
                storage.push((d.u256()?, d.u256()?));
            }
            accounts.push(crate::AccountChange { address, info, storage_cleared, storage });
        }
        let n = d.len(36)?;
        let mut codes = Vec::with_capacity(n);
        for _ in 0..n {
            let hash = d.b256()?;
            let bytes = alloy_primitives::Bytes::copy_from_slice(d.bytes()?);
            let code = revm::bytecode::Bytecode::new_raw(bytes);
            if code.hash_slow() != hash {
                return Err(DecodeError::Invalid("code does not match its hash"));
            }
            codes.push((hash, code));
        }
        Ok(Self { accounts, codes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountChange, AccountState, StateDiff};
    use proptest::prelude::*;

    fn diff_strategy() -> impl Strategy<Value = StateDiff> {
        let account = (
            any::<[u8; 20]>(),
            proptest::option::of((any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>())),
            any::<bool>(),
            proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 0..4),
        )
            .prop_map(|(a, info, storage_cleared, storage)| AccountChange {
                address: Address::from(a),
                info: info.map(|(nonce, b, h)| AccountState {
                    nonce,
                    balance: U256::from_be_bytes(b),
                    code_hash: B256::from(h),
                }),
                storage_cleared,
                storage: storage
                    .into_iter()
                    .map(|(s, v)| (U256::from_be_bytes(s), U256::from_be_bytes(v)))
                    .collect(),
            });
        let code = proptest::collection::vec(any::<u8>(), 0..40).prop_map(|c| {
            let code = revm::bytecode::Bytecode::new_raw(c.into());
            (code.hash_slow(), code)
        });
        (proptest::collection::vec(account, 0..5), proptest::collection::vec(code, 0..3))
            .prop_map(|(accounts, codes)| StateDiff { accounts, codes })
    }

    proptest! {
        /// Diffs round-trip exactly.
        #[test]
        fn diff_round_trip(diff in diff_strategy()) {
            let mut e = Encoder::default();
            diff.encode(&mut e);
            let mut d = Decoder::new(&e.buf);
            let back = StateDiff::decode(&mut d).unwrap();
            d.finish().unwrap();
            prop_assert_eq!(back, diff);
        }

        /// Arbitrary bytes, and every truncation or bit flip of a real encoding, decode to an
        /// error or a diff, never a panic.
        #[test]
        fn damaged_input_never_panics(diff in diff_strategy(), garbage in proptest::collection::vec(any::<u8>(), 0..200),
                                      cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
            let _ = StateDiff::decode(&mut Decoder::new(&garbage));
            let mut e = Encoder::default();
            diff.encode(&mut e);
            let n = e.buf.len();
            let _ = StateDiff::decode(&mut Decoder::new(&e.buf[..cut.index(n + 1)]));
            let mut flipped = e.buf.clone();
            let b = bit.index(n * 8);
            flipped[b / 8] ^= 1 << (b % 8);
            let _ = StateDiff::decode(&mut Decoder::new(&flipped));
        }
    }
}
