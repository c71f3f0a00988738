//! WebSocket subscriptions: `eth_subscribe` parameters, the per-thread subscription table, and
//! the notification payloads built from engine feeds (each payload is serialized once per
//! mini-block, then framed per subscriber).

use crate::{format, rpc::RpcError};
use alloy_primitives::{Address, B256};
use alloy_rpc_types_eth::Filter;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use strobe_engine::chain::{ChainView, MiniBlock, SealedBlock};

/// Most subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 128;
/// Most addresses one `stateChanges` subscription may watch.
pub const MAX_WATCHED_ADDRESSES: usize = 10_000;

/// What a subscription streams.
#[derive(Debug)]
pub enum SubKind {
    /// Sealed EVM block headers (with `miniBlockCount`).
    NewHeads,
    /// Logs matching a filter, as mini-blocks include them.
    Logs(Box<Filter>),
    /// Transactions admitted into the pool: hashes, or whole transactions.
    NewPendingTransactions {
        /// Whole transactions instead of hashes.
        full: bool,
    },
    /// Every mini-block with its transactions and receipts.
    MiniBlocks,
    /// Accounts a mini-block changed; `None` watches every account.
    StateChanges(Option<HashSet<Address>>),
}

impl SubKind {
    /// Parses `eth_subscribe`'s parameters.
    pub fn parse(params: &[Value]) -> Result<Self, RpcError> {
        let name = params.first().and_then(Value::as_str).ok_or_else(|| {
            RpcError::invalid_params("expected a subscription name as the first parameter")
        })?;
        let arg = params.get(1).filter(|v| !v.is_null());
        Ok(match name {
            "newHeads" => SubKind::NewHeads,
            "logs" => {
                let filter: Filter = match arg {
                    Some(v) => serde_json::from_value(v.clone())
                        .map_err(|e| RpcError::invalid_params(format!("invalid log filter: {e}")))?,
                    None => Filter::default(),
                };
                SubKind::Logs(Box::new(filter))
            }
            "newPendingTransactions" => SubKind::NewPendingTransactions {
                full: arg.and_then(Value::as_bool).unwrap_or(false),
            },
            "miniBlocks" => SubKind::MiniBlocks,
            "stateChanges" => match arg {
                None => SubKind::StateChanges(None),
                Some(v) => {
                    let list: Vec<Address> = serde_json::from_value(v.clone()).map_err(|e| {
                        RpcError::invalid_params(format!("expected a list of addresses: {e}"))
                    })?;
                    if list.len() > MAX_WATCHED_ADDRESSES {
                        return Err(RpcError::invalid_params(format!(
                            "at most {MAX_WATCHED_ADDRESSES} addresses per subscription"
                        )));
                    }
                    SubKind::StateChanges(Some(list.into_iter().collect()))
                }
            },
            other => {
                return Err(RpcError::invalid_params(format!(
                    "unsupported subscription type {other:?} (newHeads, logs, newPendingTransactions, miniBlocks, stateChanges)"
                )))
            }
        })
    }
}

/// One subscription: who holds it and what it streams.
#[derive(Debug)]
pub struct Sub {
    /// Connection slot.
    pub slot: u32,
    /// Connection generation (a reused slot is another connection).
    pub gen: u32,
    /// Stream.
    pub kind: SubKind,
    /// The id as clients see it, `"0x…"` (16 bytes, as geth).
    pub id_text: String,
}

/// The subscriptions of one network thread.
#[derive(Default)]
pub struct Subscriptions {
    subs: HashMap<u128, Sub>,
    per_slot: HashMap<u32, Vec<u128>>,
    seed: u128,
    counter: u64,
}

impl Subscriptions {
    /// An empty table; `thread` keeps ids of different threads apart.
    pub fn new(thread: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = [nanos.to_be_bytes(), (thread as u128).to_be_bytes()].concat();
        let seed = u128::from_be_bytes(
            alloy_primitives::keccak256(seed)[..16].try_into().expect("16 bytes"),
        );
        Self { seed, ..Default::default() }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether any subscription wants pending transactions.
    pub fn wants_pending(&self) -> bool {
        self.subs.values().any(|s| matches!(s.kind, SubKind::NewPendingTransactions { .. }))
    }

    /// Adds a subscription of connection (`slot`, `gen`), returning its id text.
    pub fn add(&mut self, slot: u32, gen: u32, kind: SubKind) -> Result<String, RpcError> {
        let mine = self.per_slot.entry(slot).or_default();
        if mine.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return Err(RpcError::new(
                -32005,
                format!("too many subscriptions on this connection (limit {MAX_SUBSCRIPTIONS_PER_CONNECTION})"),
            ));
        }
        self.counter += 1;
        // A keyed hash of a counter: not guessable from another client's ids.
        let input = [self.seed.to_be_bytes(), (self.counter as u128).to_be_bytes()].concat();
        let id =
            u128::from_be_bytes(alloy_primitives::keccak256(input)[..16].try_into().expect("16"));
        if self.subs.contains_key(&id) {
            return Err(RpcError::new(-32603, "subscription id collision; try again"));
        }
        let id_text = format!("{id:#034x}");
        debug_assert_eq!(id_text.len(), ID_TEXT_LEN);
        mine.push(id);
        self.subs.insert(id, Sub { slot, gen, kind, id_text: id_text.clone() });
        Ok(id_text)
    }

    /// Removes subscription `id` if connection `slot` holds it.
    pub fn remove(&mut self, slot: u32, id: &str) -> bool {
        let Some(id) = id.strip_prefix("0x").and_then(|h| u128::from_str_radix(h, 16).ok()) else {
            return false;
        };
        if self.subs.get(&id).is_none_or(|s| s.slot != slot) {
            return false;
        }
        self.subs.remove(&id);
        if let Some(list) = self.per_slot.get_mut(&slot) {
            list.retain(|x| *x != id);
        }
        true
    }

    /// Drops every subscription of connection `slot`; returns how many there were.
    pub fn remove_connection(&mut self, slot: u32) -> usize {
        let ids = self.per_slot.remove(&slot).unwrap_or_default();
        for id in &ids {
            self.subs.remove(id);
        }
        ids.len()
    }

    /// Every subscription.
    pub fn iter(&self) -> impl Iterator<Item = &Sub> {
        self.subs.values()
    }
}

/// `miniBlocks` payload (MegaETH's schema).
pub fn mini_block_payload(view: &ChainView, mini: &MiniBlock) -> Value {
    let q = |n: u64| json!(format!("{n:#x}"));
    json!({
        "block_number": q(mini.block_number),
        "block_timestamp": q(mini.block_timestamp),
        "index": q(mini.index as u64),
        "mini_block_number": q(mini.number),
        "mini_block_timestamp": q(mini.timestamp_us),
        "gas_used": q(mini.gas_used),
        "transactions": mini.txs.iter().map(|t| format::transaction(view, t)).collect::<Vec<_>>(),
        "receipts": mini.txs.iter().map(|t| format::receipt(view, t)).collect::<Vec<_>>(),
    })
}

/// `stateChanges` payloads of `mini` for a subscription watching `watch` (all when `None`).
pub fn state_change_payloads(mini: &MiniBlock, watch: Option<&HashSet<Address>>) -> Vec<Value> {
    mini.diff
        .accounts
        .iter()
        .filter(|a| watch.is_none_or(|w| w.contains(&a.address)))
        .map(|a| {
            let info = a.info.unwrap_or_default();
            let storage: serde_json::Map<String, Value> = a
                .storage
                .iter()
                .map(|(k, v)| (format!("{}", B256::from(*k)), json!(format!("{v:#x}"))))
                .collect();
            json!({
                "address": a.address,
                "nonce": info.nonce,
                "balance": format!("{:#x}", info.balance),
                "storage": storage,
            })
        })
        .collect()
}

/// `logs` payloads of `mini` matching `filter`.
pub fn log_payloads(view: &ChainView, mini: &MiniBlock, filter: &Filter) -> Vec<Value> {
    let mut out = Vec::new();
    for inc in &mini.txs {
        if inc.logs.is_empty() || !filter.matches_bloom(inc.bloom) {
            continue;
        }
        for log in format::logs(view, inc) {
            if filter.matches_address(log.address()) && filter.matches_topics(log.topics()) {
                out.push(serde_json::to_value(log).unwrap_or(Value::Null));
            }
        }
    }
    out
}

/// `newHeads` payload: the header, its hash and `miniBlockCount`.
pub fn new_head_payload(block: &SealedBlock) -> Value {
    let header = alloy_rpc_types_eth::Header {
        hash: block.hash,
        inner: block.header.clone(),
        total_difficulty: None,
        size: None,
    };
    let mut v = serde_json::to_value(header).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("miniBlockCount".into(), json!(format!("{:#x}", block.mini_block_count)));
    }
    v
}

/// Length of a subscription id as clients see it: `0x` and 32 hex digits.
pub const ID_TEXT_LEN: usize = 34;
const NOTIFICATION_HEAD: &[u8] =
    br#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":""#;
const NOTIFICATION_MID: &[u8] = br#"","result":"#;
const NOTIFICATION_TAIL: &[u8] = b"}}";

/// Bytes of a notification whose serialized result is `result_len` bytes long.
pub fn notification_len(result_len: usize) -> usize {
    NOTIFICATION_HEAD.len()
        + ID_TEXT_LEN
        + NOTIFICATION_MID.len()
        + result_len
        + NOTIFICATION_TAIL.len()
}

/// Appends an `eth_subscription` notification for subscription `id` carrying the already
/// serialized `result` ([`notification_len`] bytes).
pub fn write_notification(out: &mut Vec<u8>, id: &[u8; ID_TEXT_LEN], result: &[u8]) {
    out.extend_from_slice(NOTIFICATION_HEAD);
    out.extend_from_slice(id);
    out.extend_from_slice(NOTIFICATION_MID);
    out.extend_from_slice(result);
    out.extend_from_slice(NOTIFICATION_TAIL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subscription_kinds() {
        assert!(matches!(SubKind::parse(&[json!("newHeads")]).unwrap(), SubKind::NewHeads));
        assert!(matches!(SubKind::parse(&[json!("miniBlocks")]).unwrap(), SubKind::MiniBlocks));
        let logs = SubKind::parse(&[
            json!("logs"),
            json!({"address": "0x0000000000000000000000000000000000000001", "topics": [null]}),
        ])
        .unwrap();
        assert!(matches!(logs, SubKind::Logs(_)));
        let sc = SubKind::parse(&[
            json!("stateChanges"),
            json!(["0x0000000000000000000000000000000000000002"]),
        ])
        .unwrap();
        assert!(matches!(sc, SubKind::StateChanges(Some(ref s)) if s.len() == 1));
        assert_eq!(SubKind::parse(&[json!("nope")]).unwrap_err().code, -32602);
        assert_eq!(SubKind::parse(&[]).unwrap_err().code, -32602);
        assert_eq!(SubKind::parse(&[json!("stateChanges"), json!("x")]).unwrap_err().code, -32602);
    }

    #[test]
    fn ids_are_unique_and_limited_per_connection() {
        let mut subs = Subscriptions::new(0);
        let mut seen = HashSet::new();
        for _ in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION {
            let id = subs.add(1, 0, SubKind::MiniBlocks).unwrap();
            assert_eq!(id.len(), 34);
            assert!(seen.insert(id));
        }
        assert_eq!(subs.add(1, 0, SubKind::MiniBlocks).unwrap_err().code, -32005);
        let other = subs.add(2, 0, SubKind::NewHeads).unwrap();
        assert!(!subs.remove(1, &other), "a connection cannot cancel another's subscription");
        assert!(subs.remove(2, &other));
        assert!(!subs.remove(2, &other));
        assert_eq!(subs.remove_connection(1), MAX_SUBSCRIPTIONS_PER_CONNECTION);
        assert!(subs.is_empty());
    }

    #[test]
    fn notification_is_valid_json_of_the_announced_length() {
        let id: [u8; ID_TEXT_LEN] = format!("{:#034x}", 1u128).into_bytes().try_into().unwrap();
        let mut n = Vec::new();
        write_notification(&mut n, &id, br#"{"a":1}"#);
        assert_eq!(n.len(), notification_len(7));
        let v: Value = serde_json::from_slice(&n).unwrap();
        assert_eq!(v["params"]["subscription"], format!("{:#034x}", 1u128));
        assert_eq!(v["params"]["result"]["a"], 1);
    }
}
