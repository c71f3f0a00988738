//! Conversion of chain data into the JSON shapes Ethereum clients parse.
//!
//! Serialization goes through alloy's RPC types, so field names and encodings match what alloy,
//! viem, ethers and web3.py expect.

use alloy_consensus::Transaction as _;
use alloy_primitives::{B256, U256};
use alloy_rpc_types_eth::{Block, BlockTransactions, Header, Log, Transaction, TransactionReceipt};
use serde_json::{json, Value};
use strobe_engine::chain::{ChainView, IncludedTx, OpenBlock, SealedBlock};

/// An included transaction as `eth_getTransactionByHash` returns it.
pub(crate) fn transaction(view: &ChainView, inc: &IncludedTx) -> Value {
    let tx = Transaction {
        inner: alloy_consensus::transaction::Recovered::new_unchecked(
            inc.tx.envelope.clone(),
            inc.tx.sender,
        ),
        block_hash: view.block_hash_of(inc),
        block_number: Some(inc.block_number),
        transaction_index: Some(inc.index as u64),
        effective_gas_price: Some(inc.effective_gas_price),
        block_timestamp: None,
    };
    serde_json::to_value(tx).unwrap_or(Value::Null)
}

/// A pooled transaction: no block fields yet.
pub(crate) fn pooled_transaction(tx: &strobe_engine::tx::RecoveredTx) -> Value {
    let t = Transaction {
        inner: alloy_consensus::transaction::Recovered::new_unchecked(
            tx.envelope.clone(),
            tx.sender,
        ),
        block_hash: None,
        block_number: None,
        transaction_index: None,
        effective_gas_price: None,
        block_timestamp: None,
    };
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// The logs of an included transaction in RPC form.
pub(crate) fn logs(view: &ChainView, inc: &IncludedTx) -> Vec<Log> {
    let block_hash = view.block_hash_of(inc);
    inc.logs
        .iter()
        .enumerate()
        .map(|(i, log)| Log {
            inner: log.clone(),
            block_hash,
            block_number: Some(inc.block_number),
            block_timestamp: None,
            transaction_hash: Some(inc.tx.hash),
            transaction_index: Some(inc.index as u64),
            log_index: Some((inc.first_log_index + i as u32) as u64),
            removed: false,
        })
        .collect()
}

/// An included transaction's receipt as `eth_getTransactionReceipt` returns it.
///
/// `blockHash` is `null` until the EVM block seals; every other field is final when the receipt
/// first appears.
pub(crate) fn receipt(view: &ChainView, inc: &IncludedTx) -> Value {
    let inner = inc.receipt_with(logs(view, inc));
    let r = TransactionReceipt {
        inner,
        transaction_hash: inc.tx.hash,
        transaction_index: Some(inc.index as u64),
        block_hash: view.block_hash_of(inc),
        block_number: Some(inc.block_number),
        gas_used: inc.gas_used,
        effective_gas_price: inc.effective_gas_price,
        blob_gas_used: None,
        blob_gas_price: None,
        from: inc.tx.sender,
        to: inc.tx.envelope.to(),
        contract_address: inc.contract_address,
    };
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("miniBlockNumber".into(), json!(format!("{:#x}", inc.mini_block_number)));
    }
    v
}

/// A sealed block as `eth_getBlockByNumber` returns it.
pub(crate) fn block(view: &ChainView, block: &SealedBlock, full: bool) -> Value {
    let transactions = if full {
        BlockTransactions::Full(
            block
                .txs
                .iter()
                .map(|t| {
                    serde_json::from_value::<Transaction>(transaction(view, t))
                        .expect("round trip of our own serialization")
                })
                .collect(),
        )
    } else {
        BlockTransactions::Hashes(block.txs.iter().map(|t| t.tx.hash).collect())
    };
    let b: Block = Block {
        header: Header {
            hash: block.hash,
            inner: block.header.clone(),
            total_difficulty: Some(U256::ZERO),
            size: Some(U256::from(block.size)),
        },
        uncles: Vec::new(),
        transactions,
        withdrawals: Some(Default::default()),
    };
    let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("miniBlockCount".into(), json!(format!("{:#x}", block.mini_block_count)));
    }
    v
}

/// The open block as `eth_getBlockByNumber("pending")` returns it: no hash, no roots yet.
pub(crate) fn pending_block(view: &ChainView, open: &OpenBlock, full: bool) -> Value {
    let txs: Vec<Value> = open
        .txs
        .iter()
        .map(|t| if full { transaction(view, t) } else { json!(t.tx.hash) })
        .collect();
    json!({
        "hash": null,
        "parentHash": open.parent_hash,
        "number": format!("{:#x}", open.number),
        "timestamp": format!("{:#x}", open.timestamp),
        "gasLimit": format!("{:#x}", open.gas_limit),
        "gasUsed": format!("{:#x}", open.gas_used),
        "baseFeePerGas": format!("{:#x}", open.base_fee),
        "logsBloom": open.bloom,
        "miner": alloy_primitives::Address::ZERO,
        "mixHash": open.prevrandao,
        "nonce": null,
        "difficulty": "0x0",
        "extraData": "0x",
        "sha3Uncles": alloy_consensus::EMPTY_OMMER_ROOT_HASH,
        "stateRoot": B256::ZERO,
        "transactionsRoot": B256::ZERO,
        "receiptsRoot": B256::ZERO,
        "uncles": [],
        "transactions": txs,
        "miniBlockCount": format!("{:#x}", open.mini_block_count),
    })
}
