//! The binary protocol for co-located operators: length-prefixed frames over TCP carrying raw
//! signed transactions in and answers plus a mini-block feed out. `docs/binary-protocol.md` is
//! its specification; this module is its only implementation, shared by the server
//! ([`crate::session`]) and the Rust client in `tools/`.
//!
//! Pure functions over byte buffers (fuzzed and property-tested). All integers are little-endian.

use alloy_primitives::{Address, B256, U256};
use std::sync::Arc;
use strobe_engine::chain::MiniBlock;

/// What a client sends first (and the server answers with) on a binary connection: the magic
/// `STROBE` and the protocol version, 1, as a big-endian u16.
pub const PREFACE: &[u8; 8] = b"STROBE\x00\x01";
/// Largest frame (kind byte + body) either side may send; a raw transaction is at most 128 KiB.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Client → server: submit a raw transaction.
pub const KIND_SUBMIT: u8 = 0x01;
/// Client → server: start or stop feeds.
pub const KIND_SUBSCRIBE: u8 = 0x02;
/// Client → server: ping.
pub const KIND_PING: u8 = 0x03;
/// Server → client: the pool accepted a submitted transaction.
pub const KIND_ACCEPTED: u8 = 0x81;
/// Server → client: a submitted transaction's receipt (wait mode).
pub const KIND_RECEIPT: u8 = 0x82;
/// Server → client: a submitted transaction was refused.
pub const KIND_REJECTED: u8 = 0x83;
/// Server → client: a durable mini-block.
pub const KIND_MINI_BLOCK: u8 = 0x84;
/// Server → client: answer to a ping.
pub const KIND_PONG: u8 = 0x85;
/// Server → client: the connection is closed for the given reason.
pub const KIND_ERROR: u8 = 0x86;

/// Submit flag: answer with the receipt too (after [`KIND_ACCEPTED`]).
pub const SUBMIT_WAIT_RECEIPT: u8 = 0x01;
/// Subscribe flag: the mini-block feed.
pub const FEED_MINI_BLOCKS: u8 = 0x01;

/// Connection-level error: a frame over [`MAX_FRAME_BYTES`].
pub const ERROR_FRAME_TOO_LARGE: i32 = 1;
/// Connection-level error: an unknown kind or a malformed body.
pub const ERROR_MALFORMED: i32 = 2;
/// Connection-level error: the client fell behind the feed.
pub const ERROR_TOO_SLOW: i32 = 3;
/// Connection-level error: the connection was idle too long.
pub const ERROR_IDLE: i32 = 4;

/// A frame that breaks the protocol; the server answers [`KIND_ERROR`] and closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// Over [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    /// Malformed.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl BinaryError {
    /// The code of the [`KIND_ERROR`] frame.
    pub fn code(&self) -> i32 {
        match self {
            BinaryError::TooLarge(_) => ERROR_FRAME_TOO_LARGE,
            BinaryError::Malformed(_) => ERROR_MALFORMED,
        }
    }
}

/// A message from client to server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// Submit `raw` (EIP-2718 bytes); `tag` comes back in every answer.
    Submit {
        /// Client's identifier for the answers.
        tag: u64,
        /// [`SUBMIT_WAIT_RECEIPT`] or 0.
        flags: u8,
        /// The signed transaction.
        raw: Vec<u8>,
    },
    /// Set the feeds this connection receives ([`FEED_MINI_BLOCKS`], or 0 for none).
    Subscribe {
        /// Feed bits.
        feeds: u8,
    },
    /// Ping; answered with the same value.
    Ping(u64),
}

/// A transaction's outcome as the feed and receipts carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReceipt {
    /// Transaction hash.
    pub hash: B256,
    /// EVM block number.
    pub block_number: u64,
    /// Global mini-block number.
    pub mini_block_number: u64,
    /// Index within the EVM block.
    pub index: u32,
    /// EIP-658 status.
    pub success: bool,
    /// Gas it used.
    pub gas_used: u64,
    /// Logs it emitted.
    pub log_count: u32,
    /// Contract it created.
    pub contract_address: Option<Address>,
}

/// One account a mini-block changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The account.
    pub address: Address,
    /// Whether it was deleted (self-destruct, or EIP-161 empty-account removal).
    pub deleted: bool,
    /// Whether its storage was wiped before `storage` applies.
    pub storage_cleared: bool,
    /// New nonce (0 when deleted).
    pub nonce: u64,
    /// New balance (0 when deleted).
    pub balance: U256,
    /// Changed slots and their new values.
    pub storage: Vec<(U256, U256)>,
}

/// A mini-block as the feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MiniBlockFrame {
    /// Global mini-block number.
    pub number: u64,
    /// EVM block it belongs to.
    pub block_number: u64,
    /// Index within the EVM block.
    pub index: u32,
    /// Seal time, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// EVM block timestamp (s).
    pub block_timestamp: u64,
    /// Gas its transactions used.
    pub gas_used: u64,
    /// Its transactions' receipts, in order.
    pub receipts: Vec<CompactReceipt>,
    /// The accounts it changed.
    pub changes: Vec<StateChange>,
}

impl MiniBlockFrame {
    /// The feed form of an engine mini-block.
    pub fn from_engine(mini: &MiniBlock) -> Self {
        Self {
            number: mini.number,
            block_number: mini.block_number,
            index: mini.index,
            timestamp_us: mini.timestamp_us,
            block_timestamp: mini.block_timestamp,
            gas_used: mini.gas_used,
            receipts: mini.txs.iter().map(compact_receipt).collect(),
            changes: mini
                .diff
                .accounts
                .iter()
                .map(|a| StateChange {
                    address: a.address,
                    deleted: a.info.is_none(),
                    storage_cleared: a.storage_cleared,
                    nonce: a.info.map_or(0, |i| i.nonce),
                    balance: a.info.map_or(U256::ZERO, |i| i.balance),
                    storage: a.storage.clone(),
                })
                .collect(),
        }
    }
}

/// The compact receipt of an included transaction.
pub fn compact_receipt(t: &Arc<strobe_engine::chain::IncludedTx>) -> CompactReceipt {
    CompactReceipt {
        hash: t.tx.hash,
        block_number: t.block_number,
        mini_block_number: t.mini_block_number,
        index: t.index,
        success: t.success,
        gas_used: t.gas_used,
        log_count: t.logs.len() as u32,
        contract_address: t.contract_address,
    }
}

/// A message from server to client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// The pool accepted the transaction of `tag`.
    Accepted {
        /// The submission's tag.
        tag: u64,
        /// Transaction hash.
        hash: B256,
    },
    /// The transaction of `tag` was included.
    Receipt {
        /// The submission's tag.
        tag: u64,
        /// Its receipt.
        receipt: CompactReceipt,
    },
    /// The transaction of `tag` was refused (or its receipt did not come in time).
    Rejected {
        /// The submission's tag.
        tag: u64,
        /// The JSON-RPC error code the same refusal gets over JSON-RPC.
        code: i32,
        /// The JSON-RPC error message.
        message: String,
    },
    /// A durable mini-block.
    MiniBlock(MiniBlockFrame),
    /// Answer to a ping.
    Pong(u64),
    /// The server closes the connection.
    Error {
        /// One of the `ERROR_*` codes.
        code: i32,
        /// Why, in words.
        message: String,
    },
}

/// One frame found at the front of a buffer: its kind, its body and the bytes it used.
pub type RawFrame<'a> = (u8, &'a [u8], usize);

/// Looks for one frame at the front of `buf`: `Ok(None)` when incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<RawFrame<'_>>, BinaryError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(BinaryError::TooLarge(len));
    }
    if len == 0 {
        return Err(BinaryError::Malformed("empty frame"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((buf[4], &buf[5..4 + len], 4 + len)))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BinaryError> {
        if self.0.len() < n {
            return Err(BinaryError::Malformed("body too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BinaryError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BinaryError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i32(&mut self) -> Result<i32, BinaryError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, BinaryError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn b256(&mut self) -> Result<B256, BinaryError> {
        Ok(B256::from_slice(self.take(32)?))
    }
    fn u256(&mut self) -> Result<U256, BinaryError> {
        Ok(U256::from_be_slice(self.take(32)?))
    }
    fn address(&mut self) -> Result<Address, BinaryError> {
        Ok(Address::from_slice(self.take(20)?))
    }
    /// A count of items each at least `min_item` bytes long, checked against what is left so a
    /// forged count cannot make the decoder allocate.
    fn count(&mut self, min_item: usize) -> Result<usize, BinaryError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.0.len() {
            return Err(BinaryError::Malformed("count larger than the body"));
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), BinaryError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BinaryError::Malformed("trailing bytes"))
        }
    }
}

/// Decodes a client frame's kind and body.
pub fn decode_client(kind: u8, body: &[u8]) -> Result<ClientMsg, BinaryError> {
    let mut r = Reader(body);
    let msg = match kind {
        KIND_SUBMIT => {
            let tag = r.u64()?;
            let flags = r.u8()?;
            let raw = std::mem::take(&mut r.0).to_vec();
            if raw.is_empty() {
                return Err(BinaryError::Malformed("empty transaction"));
            }
            ClientMsg::Submit { tag, flags, raw }
        }
        KIND_SUBSCRIBE => ClientMsg::Subscribe { feeds: r.u8()? },
        KIND_PING => ClientMsg::Ping(r.u64()?),
        _ => return Err(BinaryError::Malformed("unknown frame kind")),
    };
    r.end()?;
    Ok(msg)
}

/// Appends a client frame to `out`.
pub fn encode_client(msg: &ClientMsg, out: &mut Vec<u8>) {
    frame(out, |b| match msg {
        ClientMsg::Submit { tag, flags, raw } => {
            b.push(KIND_SUBMIT);
            b.extend_from_slice(&tag.to_le_bytes());
            b.push(*flags);
            b.extend_from_slice(raw);
        }
        ClientMsg::Subscribe { feeds } => {
            b.push(KIND_SUBSCRIBE);
            b.push(*feeds);
        }
        ClientMsg::Ping(v) => {
            b.push(KIND_PING);
            b.extend_from_slice(&v.to_le_bytes());
        }
    });
}

fn frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_receipt(b: &mut Vec<u8>, r: &CompactReceipt) {
    b.extend_from_slice(r.hash.as_slice());
    b.extend_from_slice(&r.block_number.to_le_bytes());
    b.extend_from_slice(&r.mini_block_number.to_le_bytes());
    b.extend_from_slice(&r.index.to_le_bytes());
    b.push(r.success as u8);
    b.extend_from_slice(&r.gas_used.to_le_bytes());
    b.extend_from_slice(&r.log_count.to_le_bytes());
    match r.contract_address {
        Some(a) => {
            b.push(1);
            b.extend_from_slice(a.as_slice());
        }
        None => b.push(0),
    }
}

/// Fixed part of an encoded [`CompactReceipt`].
const RECEIPT_MIN_BYTES: usize = 32 + 8 + 8 + 4 + 1 + 8 + 4 + 1;
/// Fixed part of an encoded [`StateChange`].
const CHANGE_MIN_BYTES: usize = 20 + 1 + 8 + 32 + 4;

fn get_receipt(r: &mut Reader<'_>) -> Result<CompactReceipt, BinaryError> {
    let hash = r.b256()?;
    let block_number = r.u64()?;
    let mini_block_number = r.u64()?;
    let index = r.u32()?;
    let success = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(BinaryError::Malformed("status byte")),
    };
    let gas_used = r.u64()?;
    let log_count = r.u32()?;
    let contract_address = match r.u8()? {
        0 => None,
        1 => Some(r.address()?),
        _ => return Err(BinaryError::Malformed("contract flag")),
    };
    Ok(CompactReceipt {
        hash,
        block_number,
        mini_block_number,
        index,
        success,
        gas_used,
        log_count,
        contract_address,
    })
}

/// Appends a server frame to `out`.
pub fn encode_server(msg: &ServerMsg, out: &mut Vec<u8>) {
    frame(out, |b| match msg {
        ServerMsg::Accepted { tag, hash } => {
            b.push(KIND_ACCEPTED);
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(hash.as_slice());
        }
        ServerMsg::Receipt { tag, receipt } => {
            b.push(KIND_RECEIPT);
            b.extend_from_slice(&tag.to_le_bytes());
            put_receipt(b, receipt);
        }
        ServerMsg::Rejected { tag, code, message } => {
            b.push(KIND_REJECTED);
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&code.to_le_bytes());
            b.extend_from_slice(message.as_bytes());
        }
        ServerMsg::MiniBlock(m) => {
            b.push(KIND_MINI_BLOCK);
            for v in [m.number, m.block_number] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&m.index.to_le_bytes());
            for v in [m.timestamp_us, m.block_timestamp, m.gas_used] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&(m.receipts.len() as u32).to_le_bytes());
            for r in &m.receipts {
                put_receipt(b, r);
            }
            b.extend_from_slice(&(m.changes.len() as u32).to_le_bytes());
            for c in &m.changes {
                b.extend_from_slice(c.address.as_slice());
                b.push(c.deleted as u8 | (c.storage_cleared as u8) << 1);
                b.extend_from_slice(&c.nonce.to_le_bytes());
                b.extend_from_slice(&c.balance.to_be_bytes::<32>());
                b.extend_from_slice(&(c.storage.len() as u32).to_le_bytes());
                for (k, v) in &c.storage {
                    b.extend_from_slice(&k.to_be_bytes::<32>());
                    b.extend_from_slice(&v.to_be_bytes::<32>());
                }
            }
        }
        ServerMsg::Pong(v) => {
            b.push(KIND_PONG);
            b.extend_from_slice(&v.to_le_bytes());
        }
        ServerMsg::Error { code, message } => {
            b.push(KIND_ERROR);
            b.extend_from_slice(&code.to_le_bytes());
            b.extend_from_slice(message.as_bytes());
        }
    });
}

fn utf8(bytes: &[u8]) -> Result<String, BinaryError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| BinaryError::Malformed("message is not UTF-8"))
}

/// Decodes a server frame's kind and body (the client's side).
pub fn decode_server(kind: u8, body: &[u8]) -> Result<ServerMsg, BinaryError> {
    let mut r = Reader(body);
    let msg = match kind {
        KIND_ACCEPTED => ServerMsg::Accepted { tag: r.u64()?, hash: r.b256()? },
        KIND_RECEIPT => ServerMsg::Receipt { tag: r.u64()?, receipt: get_receipt(&mut r)? },
        KIND_REJECTED => {
            let tag = r.u64()?;
            let code = r.i32()?;
            let message = utf8(std::mem::take(&mut r.0))?;
            ServerMsg::Rejected { tag, code, message }
        }
        KIND_MINI_BLOCK => {
            let number = r.u64()?;
            let block_number = r.u64()?;
            let index = r.u32()?;
            let timestamp_us = r.u64()?;
            let block_timestamp = r.u64()?;
            let gas_used = r.u64()?;
            let n = r.count(RECEIPT_MIN_BYTES)?;
            let receipts = (0..n).map(|_| get_receipt(&mut r)).collect::<Result<_, _>>()?;
            let n = r.count(CHANGE_MIN_BYTES)?;
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                let address = r.address()?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(BinaryError::Malformed("state change flags"));
                }
                let nonce = r.u64()?;
                let balance = r.u256()?;
                let slots = r.count(64)?;
                let storage =
                    (0..slots).map(|_| Ok((r.u256()?, r.u256()?))).collect::<Result<_, _>>()?;
                changes.push(StateChange {
                    address,
                    deleted: flags & 1 != 0,
                    storage_cleared: flags & 2 != 0,
                    nonce,
                    balance,
                    storage,
                });
            }
            ServerMsg::MiniBlock(MiniBlockFrame {
                number,
                block_number,
                index,
                timestamp_us,
                block_timestamp,
                gas_used,
                receipts,
                changes,
            })
        }
        KIND_PONG => ServerMsg::Pong(r.u64()?),
        KIND_ERROR => {
            let code = r.i32()?;
            ServerMsg::Error { code, message: utf8(std::mem::take(&mut r.0))? }
        }
        _ => return Err(BinaryError::Malformed("unknown frame kind")),
    };
    r.end()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_server(msg: &ServerMsg) -> ServerMsg {
        let mut out = Vec::new();
        encode_server(msg, &mut out);
        let (kind, body, used) = parse_frame(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        decode_server(kind, body).unwrap()
    }

    fn arb_receipt() -> impl Strategy<Value = CompactReceipt> {
        (any::<[u8; 32]>(), any::<u64>(), any::<u32>(), any::<bool>(), any::<Option<[u8; 20]>>())
            .prop_map(|(h, n, i, s, c)| CompactReceipt {
                hash: B256::from(h),
                block_number: n,
                mini_block_number: n / 3,
                index: i,
                success: s,
                gas_used: n ^ 0x55,
                log_count: i / 7,
                contract_address: c.map(Address::from),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Random bytes never panic either decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(Some((kind, body, _))) = parse_frame(&bytes) {
                let _ = decode_client(kind, body);
                let _ = decode_server(kind, body);
            }
            if !bytes.is_empty() {
                let _ = decode_client(bytes[0], &bytes[1..]);
                let _ = decode_server(bytes[0], &bytes[1..]);
            }
        }

        /// Every server message survives encode/decode.
        #[test]
        fn server_messages_round_trip(
            receipts in proptest::collection::vec(arb_receipt(), 0..5),
            slots in proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 0..4),
            tag in any::<u64>(),
            msg in ".{0,40}",
        ) {
            let changes = vec![StateChange {
                address: Address::repeat_byte(7),
                deleted: tag % 2 == 0,
                storage_cleared: tag % 3 == 0,
                nonce: tag,
                balance: U256::from(tag) << 100,
                storage: slots.iter().map(|(k, v)| (U256::from_be_bytes(*k), U256::from_be_bytes(*v))).collect(),
            }];
            let messages = vec![
                ServerMsg::Accepted { tag, hash: B256::repeat_byte(1) },
                ServerMsg::Receipt { tag, receipt: receipts.first().cloned().unwrap_or(CompactReceipt {
                    hash: B256::ZERO, block_number: 1, mini_block_number: 2, index: 3, success: true,
                    gas_used: 21_000, log_count: 0, contract_address: None }) },
                ServerMsg::Rejected { tag, code: -32000, message: msg.clone() },
                ServerMsg::MiniBlock(MiniBlockFrame { number: tag, block_number: 5, index: 6,
                    timestamp_us: 7, block_timestamp: 8, gas_used: 9, receipts, changes }),
                ServerMsg::Pong(tag),
                ServerMsg::Error { code: ERROR_TOO_SLOW, message: msg },
            ];
            for m in messages {
                prop_assert_eq!(roundtrip_server(&m), m);
            }
        }

        /// Every client message survives encode/decode, and every strict prefix is incomplete.
        #[test]
        fn client_messages_round_trip(tag in any::<u64>(), raw in proptest::collection::vec(any::<u8>(), 1..300)) {
            for m in [ClientMsg::Submit { tag, flags: SUBMIT_WAIT_RECEIPT, raw: raw.clone() }, ClientMsg::Subscribe { feeds: 1 }, ClientMsg::Ping(tag)] {
                let mut out = Vec::new();
                encode_client(&m, &mut out);
                for cut in 0..out.len().min(12) {
                    prop_assert!(parse_frame(&out[..cut]).unwrap().is_none());
                }
                let (kind, body, _) = parse_frame(&out).unwrap().unwrap();
                prop_assert_eq!(decode_client(kind, body).unwrap(), m);
            }
        }
    }

    #[test]
    fn limits_and_forged_counts_are_refused() {
        let mut big = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes().to_vec();
        big.push(KIND_SUBMIT);
        assert_eq!(parse_frame(&big).unwrap_err().code(), ERROR_FRAME_TOO_LARGE);
        assert!(parse_frame(&[0, 0, 0, 0]).is_err());
        // A mini-block claiming four billion receipts in a tiny body.
        let mut body = vec![0u8; 44];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_server(KIND_MINI_BLOCK, &body).is_err());
        assert!(decode_client(0x7F, &[]).is_err());
        assert!(decode_client(KIND_PING, &[0; 9]).is_err());
    }
}
