//! The engine's on-disk records: one per mini-block in the write-ahead log (its transactions,
//! their results and its state diff) and one per sealed EVM block in the chain store (header and
//! transactions with their results).
//!
//! Records carry what cannot be recomputed cheaply (senders, execution results); everything that
//! follows from the order of transactions (indexes, cumulative gas, log indexes, blooms, prices)
//! is recomputed on load by the same code that computed it live.

use crate::{
    chain::{IncludedTx, MiniBlock, SealedBlock},
    exec::TxExecution,
    tx::RecoveredTx,
};
use alloy_consensus::{Header, TxEnvelope};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{keccak256, logs_bloom, Address, Bytes, Log, LogData};
use alloy_rlp::{Decodable, Encodable};
use std::sync::Arc;
use strobe_storage::{
    codec::{DecodeError, Decoder, Encoder},
    StateDiff,
};

/// A transaction as recorded: the transaction, what it did, and its mini-block.
#[derive(Debug)]
pub struct TxRecord {
    /// The transaction, sender recovered.
    pub tx: Arc<RecoveredTx>,
    /// Its execution result.
    pub exec: TxExecution,
    /// Global number of the mini-block that included it.
    pub mini_block_number: u64,
}

/// A mini-block as read back from the write-ahead log.
#[derive(Debug)]
pub struct MiniBlockRecord {
    /// Global mini-block number.
    pub number: u64,
    /// EVM block it belongs to.
    pub block_number: u64,
    /// Index within that block.
    pub index: u32,
    /// Seal time, microseconds since the epoch.
    pub timestamp_us: u64,
    /// Timestamp of its EVM block.
    pub block_timestamp: u64,
    /// Included transactions, in order.
    pub txs: Vec<TxRecord>,
    /// The state it changed.
    pub diff: StateDiff,
    /// Whether its EVM block was sealed right after it.
    pub closes_block: bool,
}

fn encode_tx(e: &mut Encoder, inc: &IncludedTx) {
    e.bytes(&inc.tx.envelope.encoded_2718());
    e.address(&inc.tx.sender);
    e.len(inc.tx.authorities.len());
    for a in &inc.tx.authorities {
        match a {
            None => e.u8(0),
            Some(a) => {
                e.u8(1);
                e.address(a);
            }
        }
    }
    e.u64(inc.mini_block_number);
    e.bool(inc.success);
    e.u64(inc.gas_used);
    e.len(inc.logs.len());
    for log in &inc.logs {
        e.address(&log.address);
        e.len(log.data.topics().len());
        for t in log.data.topics() {
            e.b256(t);
        }
        e.bytes(&log.data.data);
    }
    match &inc.contract_address {
        None => e.u8(0),
        Some(a) => {
            e.u8(1);
            e.address(a);
        }
    }
}

fn decode_option_address(d: &mut Decoder<'_>) -> Result<Option<Address>, DecodeError> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(d.address()?)),
        _ => Err(DecodeError::Invalid("option tag")),
    }
}

fn decode_tx(d: &mut Decoder<'_>) -> Result<TxRecord, DecodeError> {
    let raw = d.bytes()?;
    let envelope = TxEnvelope::decode_2718(&mut &raw[..])
        .map_err(|_| DecodeError::Invalid("transaction encoding"))?;
    let sender = d.address()?;
    let n = d.len(1)?;
    let mut authorities = Vec::with_capacity(n);
    for _ in 0..n {
        authorities.push(decode_option_address(d)?);
    }
    let tx =
        RecoveredTx { envelope, sender, hash: keccak256(raw), encoded_len: raw.len(), authorities };
    let mini_block_number = d.u64()?;
    let success = d.bool()?;
    let gas_used = d.u64()?;
    let n = d.len(28)?;
    let mut logs = Vec::with_capacity(n);
    for _ in 0..n {
        let address = d.address()?;
        let t = d.len(32)?;
        let mut topics = Vec::with_capacity(t);
        for _ in 0..t {
            topics.push(d.b256()?);
        }
        let data = Bytes::copy_from_slice(d.bytes()?);
        let data = LogData::new(topics, data).ok_or(DecodeError::Invalid("more than 4 topics"))?;
        logs.push(Log { address, data });
    }
    let contract_address = decode_option_address(d)?;
    let exec =
        TxExecution { success, gas_used, logs, contract_address, output: Bytes::new(), halt: None };
    Ok(TxRecord { tx: Arc::new(tx), exec, mini_block_number })
}

/// Encodes a mini-block for the write-ahead log.
pub fn encode_mini_block(mini: &MiniBlock) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u64(mini.number);
    e.u64(mini.block_number);
    e.u32(mini.index);
    e.u64(mini.timestamp_us);
    e.u64(mini.block_timestamp);
    e.len(mini.txs.len());
    for inc in &mini.txs {
        encode_tx(&mut e, inc);
    }
    mini.diff.encode(&mut e);
    e.bool(mini.closes_block);
    e.buf
}

/// Decodes a mini-block record.
pub fn decode_mini_block(bytes: &[u8]) -> Result<MiniBlockRecord, DecodeError> {
    let mut d = Decoder::new(bytes);
    let number = d.u64()?;
    let block_number = d.u64()?;
    let index = d.u32()?;
    let timestamp_us = d.u64()?;
    let block_timestamp = d.u64()?;
    let n = d.len(40)?;
    let mut txs = Vec::with_capacity(n);
    for _ in 0..n {
        txs.push(decode_tx(&mut d)?);
    }
    let diff = StateDiff::decode(&mut d)?;
    // Records written before the flag existed end after the diff; replay seals their blocks when
    // the next block's first record arrives, as it always did.
    let closes_block = if d.is_empty() { false } else { d.bool()? };
    d.finish()?;
    Ok(MiniBlockRecord {
        number,
        block_number,
        index,
        timestamp_us,
        block_timestamp,
        txs,
        diff,
        closes_block,
    })
}

/// Encodes a sealed block for the chain store.
pub fn encode_block(block: &SealedBlock) -> Vec<u8> {
    let mut e = Encoder::default();
    let mut header = Vec::new();
    block.header.encode(&mut header);
    e.bytes(&header);
    e.u32(block.mini_block_count);
    e.len(block.txs.len());
    for inc in &block.txs {
        encode_tx(&mut e, inc);
    }
    e.buf
}

/// Decodes a sealed block, recomputing every per-transaction field that follows from the order.
pub fn decode_block(bytes: &[u8]) -> Result<SealedBlock, DecodeError> {
    let mut d = Decoder::new(bytes);
    let header_bytes = d.bytes()?;
    let header =
        Header::decode(&mut &header_bytes[..]).map_err(|_| DecodeError::Invalid("header"))?;
    let mini_block_count = d.u32()?;
    let n = d.len(40)?;
    let base_fee = header.base_fee_per_gas.unwrap_or_default();
    let mut txs = Vec::with_capacity(n);
    let mut cumulative = 0;
    let mut log_index = 0u32;
    for i in 0..n {
        let r = decode_tx(&mut d)?;
        cumulative += r.exec.gas_used;
        let inc = included(r, header.number, i as u32, cumulative, log_index, base_fee);
        log_index += inc.logs.len() as u32;
        txs.push(Arc::new(inc));
    }
    d.finish()?;
    let hash = keccak256(header_bytes);
    let tx_bytes: usize = txs.iter().map(|t| t.tx.envelope.encode_2718_len()).sum();
    let size = (header.length() + tx_bytes + 8) as u64;
    Ok(SealedBlock { header, hash, txs, mini_block_count, size })
}

/// An included transaction from its record and its place in the block.
pub fn included(
    r: TxRecord,
    block_number: u64,
    index: u32,
    cumulative_gas_used: u64,
    first_log_index: u32,
    base_fee: u64,
) -> IncludedTx {
    let bloom = logs_bloom(r.exec.logs.iter());
    IncludedTx {
        effective_gas_price: base_fee as u128 + r.tx.effective_tip(base_fee),
        tx: r.tx,
        block_number,
        index,
        mini_block_number: r.mini_block_number,
        success: r.exec.success,
        gas_used: r.exec.gas_used,
        cumulative_gas_used,
        logs: r.exec.logs,
        first_log_index,
        contract_address: r.exec.contract_address,
        bloom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::{
        decode_and_recover,
        tests::{rules, sample},
    };
    use alloy_primitives::{Address, Bloom, B256, U256};
    use proptest::prelude::*;
    use strobe_storage::{AccountChange, AccountState};

    fn included_tx(index: u32, cumulative: u64) -> Arc<IncludedTx> {
        let (raw, _) = sample();
        let tx = Arc::new(decode_and_recover(&raw, &rules()).unwrap());
        let logs = vec![Log::new_unchecked(
            Address::repeat_byte(1),
            vec![B256::repeat_byte(2)],
            Bytes::from_static(b"data"),
        )];
        Arc::new(included(
            TxRecord {
                tx,
                exec: TxExecution {
                    success: true,
                    gas_used: 21_000,
                    logs,
                    contract_address: Some(Address::repeat_byte(3)),
                    output: Bytes::new(),
                    halt: None,
                },
                mini_block_number: 9,
            },
            4,
            index,
            cumulative,
            0,
            7,
        ))
    }

    #[test]
    fn mini_block_round_trip() {
        let inc = included_tx(0, 21_000);
        let diff = StateDiff {
            accounts: vec![AccountChange {
                address: Address::repeat_byte(5),
                info: Some(AccountState {
                    nonce: 1,
                    balance: U256::from(2),
                    code_hash: B256::repeat_byte(6),
                }),
                storage_cleared: true,
                storage: vec![(U256::from(1), U256::from(2))],
            }],
            codes: vec![],
        };
        let mini = MiniBlock {
            number: 9,
            block_number: 4,
            index: 2,
            timestamp_us: 123,
            block_timestamp: 1,
            gas_used: 21_000,
            txs: vec![inc.clone()],
            diff: Arc::new(diff.clone()),
            closes_block: true,
        };
        let bytes = encode_mini_block(&mini);
        let back = decode_mini_block(&bytes).unwrap();
        assert!(back.closes_block);
        // A record from before the flag existed (it ends after the diff) still decodes.
        let older = decode_mini_block(&bytes[..bytes.len() - 1]).unwrap();
        assert!(!older.closes_block);
        assert_eq!(older.diff, diff);
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() = 7;
        assert!(decode_mini_block(&bad).is_err(), "a flag byte other than 0 or 1 is corrupt");
        assert_eq!(
            (back.number, back.block_number, back.index, back.timestamp_us, back.block_timestamp),
            (9, 4, 2, 123, 1)
        );
        assert_eq!(back.diff, diff);
        let r = &back.txs[0];
        assert_eq!(r.tx.hash, inc.tx.hash);
        assert_eq!(r.tx.sender, inc.tx.sender);
        assert_eq!(r.exec.logs, inc.logs);
        assert_eq!(r.exec.contract_address, inc.contract_address);
        assert_eq!(r.mini_block_number, 9);
    }

    #[test]
    fn block_round_trip_recomputes_positions() {
        let header =
            Header { number: 4, base_fee_per_gas: Some(7), gas_used: 21_000, ..Default::default() };
        let hash = header.hash_slow();
        let inc = included_tx(0, 21_000);
        let block = SealedBlock {
            header: header.clone(),
            hash,
            txs: vec![inc.clone()],
            mini_block_count: 3,
            size: 0,
        };
        let back = decode_block(&encode_block(&block)).unwrap();
        assert_eq!(back.hash, hash);
        assert_eq!(back.header, header);
        assert_eq!(back.mini_block_count, 3);
        let t = &back.txs[0];
        assert_eq!(
            (t.block_number, t.index, t.cumulative_gas_used, t.first_log_index),
            (4, 0, 21_000, 0)
        );
        assert_eq!(t.effective_gas_price, inc.effective_gas_price);
        assert_eq!(t.bloom, inc.bloom);
        assert_ne!(t.bloom, Bloom::ZERO);
    }

    proptest! {
        /// Damaged or arbitrary record bytes decode to an error, never a panic.
        #[test]
        fn garbage_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_mini_block(&bytes);
            let _ = decode_block(&bytes);
        }
    }
}
