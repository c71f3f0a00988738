//! The JSON-RPC layer: envelopes, batches, error codes and the `eth_*` methods.
//!
//! Runs on the network thread. Methods read the newest [`ChainView`] (lock-free) or submit
//! transactions to the engine; a method whose answer depends on the sequencer (sending a
//! transaction) returns a *waiting* part that the network thread completes when the engine's
//! callback arrives.

use crate::format;
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_rpc_types_eth::{Filter, FilterBlockOption, TransactionRequest};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use strobe_engine::{
    chain::{ChainView, IncludedTx, SealedBlock},
    exec::{self, CallRequest, TxExecution},
    sequencer::{Notify, ReceiptNotify},
    storage::{StateView, ViewDb},
    tx::TxError,
    Engine,
};

/// Most calls in one batch (geth's `BatchRequestLimit`).
pub const MAX_BATCH_LEN: usize = 1000;
/// Most mini-blocks one `strobe_getMiniBlocks` call returns.
pub const MAX_MINI_BLOCKS_PER_CALL: u64 = 10_000;
/// Most storage slots one `strobe_getProof` call may ask for.
pub const MAX_PROOF_SLOTS: usize = 1024;
/// Most blocks one `eth_getLogs` may scan.
pub const MAX_LOG_RANGE_BLOCKS: u64 = 10_000;
/// Most logs one `eth_getLogs` may return.
pub const MAX_LOG_RESULTS: usize = 10_000;
/// Gas cap for `eth_call` and `eth_estimateGas` (geth's `RPCGasCap`).
pub const RPC_GAS_CAP: u64 = 50_000_000;
/// Default and largest timeout of `eth_sendRawTransactionSync`.
pub const SYNC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Largest timeout a client may ask of `eth_sendRawTransactionSync`.
pub const SYNC_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// How long `realtime_sendRawTransaction` waits before "realtime transaction expired".
pub const REALTIME_TIMEOUT: Duration = Duration::from_secs(10);
/// Most installed filters.
pub const MAX_FILTERS: usize = 4096;
/// A filter not polled for this long is removed (geth: 5 minutes).
pub const FILTER_TIMEOUT: Duration = Duration::from_secs(300);
/// Priority fee suggested by `eth_maxPriorityFeePerGas` and folded into `eth_gasPrice`.
pub const SUGGESTED_TIP_WEI: u128 = 1_000_000_000;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// Error code.
    pub code: i64,
    /// Message.
    pub message: String,
    /// Optional data.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }
    /// -32602.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    fn server(message: impl Into<String>) -> Self {
        Self::new(-32000, message)
    }
    fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// The JSON-RPC error a refused transaction gets.
pub fn tx_error(e: &TxError) -> RpcError {
    match e {
        TxError::NonceGap { expected, .. } => {
            RpcError::new(5, e.to_string()).with_data(json!(format!("{expected:#x}")))
        }
        _ => RpcError::server(e.to_string()),
    }
}

/// A JSON-RPC response object.
pub fn response(id: &Value, result: Result<Value, RpcError>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorObject<'a> {
        code: i64,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
    }
    #[derive(serde::Serialize)]
    struct ResponseObject<'a> {
        jsonrpc: &'static str,
        id: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorObject<'a>>,
    }
    // Serialized straight from borrowed parts: no map is built for the envelope.
    let obj = match &result {
        Ok(v) => ResponseObject { jsonrpc: "2.0", id, result: Some(v), error: None },
        Err(e) => ResponseObject {
            jsonrpc: "2.0",
            id,
            result: None,
            error: Some(ErrorObject { code: e.code, message: &e.message, data: e.data.as_ref() }),
        },
    };
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// What a waiting call waits for.
#[derive(Debug, Clone)]
pub enum WaitKind {
    /// `eth_sendRawTransaction`: the pool's verdict.
    Accept,
    /// `eth_sendRawTransactionSync`: the receipt, or error 4 at the deadline.
    Sync(B256),
    /// `realtime_sendRawTransaction`: the receipt, or "realtime transaction expired".
    Realtime(B256),
}

/// One call's answer, ready or awaited.
#[derive(Debug)]
pub enum Part {
    /// The response object, serialized.
    Ready(Vec<u8>),
    /// Waiting for the engine.
    Waiting {
        /// Request id.
        id: Value,
        /// What it waits for.
        kind: WaitKind,
        /// When it gives up.
        deadline: Option<Instant>,
    },
}

/// An engine event delivered to a waiting part.
#[derive(Debug)]
pub enum Event {
    /// The pool's verdict.
    Accepted(Result<B256, TxError>),
    /// Inclusion or final failure.
    Included(Result<Arc<IncludedTx>, TxError>),
}

/// Callbacks the engine calls for one waiting part.
pub struct Callbacks {
    /// Called with the pool's verdict.
    pub on_accept: Notify<Result<B256, TxError>>,
    /// Called on inclusion.
    pub on_receipt: Notify<Result<Arc<IncludedTx>, TxError>>,
}

/// A dispatched request: a single call or a batch.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// Whether the request was a batch (answered with an array).
    pub batch: bool,
    /// One part per call that expects an answer.
    pub parts: Vec<Part>,
    /// The request was a batch over [`MAX_BATCH_LEN`] (answered with one error).
    pub batch_too_large: bool,
}

impl Dispatched {
    /// Whether every part is ready.
    pub fn is_ready(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Ready(_)))
    }

    /// The response body; call when [`Self::is_ready`].
    pub fn body(&self) -> Vec<u8> {
        let ready = self.parts.iter().map(|p| match p {
            Part::Ready(bytes) => bytes.as_slice(),
            Part::Waiting { .. } => b"null".as_slice(),
        });
        if !self.batch {
            return ready.take(1).next().map(<[u8]>::to_vec).unwrap_or_default();
        }
        if self.parts.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(2 + self.parts.len() * 64);
        out.push(b'[');
        for (i, bytes) in ready.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(bytes);
        }
        out.push(b']');
        out
    }

    /// The earliest deadline among waiting parts.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Waiting { deadline, .. } => *deadline,
                Part::Ready(_) => None,
            })
            .min()
    }
}

/// A single call object's members; absent and `null` differ for `id` (absent: a notification).
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    method: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    params: Option<Value>,
}

/// A member that is present, even as `null` (serde's `Option` alone would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

enum Outcome {
    Done(Result<Value, RpcError>),
    Wait(WaitKind, Option<Instant>),
}

struct InstalledFilter {
    kind: FilterKind,
    last_poll: Instant,
}

enum FilterKind {
    Blocks { next: u64 },
    Logs { filter: Box<Filter>, next: u64 },
}

/// Filters installed with `eth_newFilter`/`eth_newBlockFilter`, shared by every network thread
/// (an HTTP client's next poll may arrive on another connection, served by another thread).
/// Only the filter methods take its lock.
#[derive(Default)]
pub struct Filters {
    map: HashMap<u64, InstalledFilter>,
    next_id: u64,
}

/// What a transport adds to the JSON-RPC methods: `eth_subscribe` and `eth_unsubscribe` on
/// WebSocket connections. Called before the built-in methods; `None` lets them answer.
pub type Extension<'a> = &'a mut dyn FnMut(&str, &[Value]) -> Option<Result<Value, RpcError>>;

/// RPC state of one network thread.
pub struct Rpc {
    engine: Arc<Engine>,
    accounts: Vec<Address>,
    filters: Arc<Mutex<Filters>>,
    /// Workers that recover senders off this thread (`None`: recover inline).
    recovery: Option<Arc<crate::recovery::SenderRecovery>>,
    /// Identity of the connection being served, which picks its recovery worker.
    route: usize,
}

/// What a send waits for: the pool's verdict, or (sync and realtime sends) the receipt, with its
/// deadline; and whether a nonce gap is refused.
fn wait_for(
    sync: Option<(bool, Duration)>,
    hash: B256,
    on_receipt: ReceiptNotify,
) -> (WaitKind, Option<Instant>, Option<ReceiptNotify>, bool) {
    match sync {
        None => (WaitKind::Accept, Some(Instant::now() + Duration::from_secs(30)), None, false),
        Some((realtime, timeout)) => {
            let kind = if realtime { WaitKind::Realtime(hash) } else { WaitKind::Sync(hash) };
            (kind, Some(Instant::now() + timeout), Some(on_receipt), !realtime)
        }
    }
}

/// A JSON-RPC sync send is answered by its receipt, so the pool's acceptance matters only when it
/// is a refusal: a success is not passed on, where it would wake the network thread for nothing
/// (one eventfd write and one wake-up per transaction). The binary protocol answers every frame
/// on acceptance, so it keeps them.
fn accept_notify(
    sync: bool,
    notify: Notify<Result<B256, TxError>>,
) -> Notify<Result<B256, TxError>> {
    if !sync {
        return notify;
    }
    Box::new(move |r| {
        if r.is_err() {
            notify(r)
        }
    })
}

/// A quantity given as a hex string or a JSON number.
fn quantity_param(v: &Value) -> Result<u64, RpcError> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()),
        _ => None,
    }
    .ok_or_else(|| RpcError::invalid_params(format!("invalid quantity {v}")))
}

fn param<T: DeserializeOwned>(params: &[Value], i: usize) -> Result<T, RpcError> {
    let v = params.get(i).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v)
        .map_err(|e| RpcError::invalid_params(format!("invalid argument {i}: {e}")))
}

fn opt_param<T: DeserializeOwned>(params: &[Value], i: usize) -> Result<Option<T>, RpcError> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => param(params, i).map(Some),
    }
}

fn qty(n: impl Into<u128>) -> Value {
    json!(format!("{:#x}", n.into()))
}

impl Rpc {
    /// RPC state over `engine`; `accounts` is what `eth_accounts` lists.
    pub fn new(engine: Arc<Engine>, accounts: Vec<Address>) -> Self {
        Self {
            engine,
            accounts,
            filters: Arc::new(Mutex::new(Filters { map: HashMap::new(), next_id: 1 })),
            recovery: None,
            route: 0,
        }
    }

    /// Another thread's RPC state over the same engine, filters and recovery workers.
    pub fn sibling(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            accounts: self.accounts.clone(),
            filters: self.filters.clone(),
            recovery: self.recovery.clone(),
            route: 0,
        }
    }

    /// Recovers senders on `threads` worker threads instead of the calling thread (0 keeps
    /// recovery inline), pinned to `cores` (cycled; empty: not pinned).
    pub fn with_recovery(mut self, threads: usize, cores: &[usize]) -> std::io::Result<Self> {
        if threads > 0 {
            let workers =
                crate::recovery::SenderRecovery::start(self.engine.clone(), threads, cores)?;
            self.recovery = Some(Arc::new(workers));
        }
        Ok(self)
    }

    /// The sender-recovery workers, if recovery runs off the network threads.
    pub fn recovery(&self) -> Option<&Arc<crate::recovery::SenderRecovery>> {
        self.recovery.as_ref()
    }

    /// The engine served.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Names the connection the next [`Self::dispatch`] serves: its transactions keep their
    /// order through one recovery worker.
    pub fn set_route(&mut self, route: usize) {
        self.route = route;
    }

    /// Handles one HTTP body. `callbacks(i)` builds the engine callbacks for part `i`.
    pub fn dispatch(&mut self, body: &[u8], callbacks: &dyn Fn(usize) -> Callbacks) -> Dispatched {
        self.dispatch_with(body, callbacks, &mut |method, _| {
            matches!(method, "eth_subscribe" | "eth_unsubscribe")
                .then(|| Err(RpcError::new(-32601, "notifications not supported")))
        })
    }

    /// [`Self::dispatch`] with the transport's own methods in `ext`.
    pub fn dispatch_with(
        &mut self,
        body: &[u8],
        callbacks: &dyn Fn(usize) -> Callbacks,
        ext: Extension<'_>,
    ) -> Dispatched {
        // Fast path for the common case, one call object: its three fields straight into a
        // struct, without building a map of the whole object. Anything it cannot take (a batch,
        // duplicate keys, malformed JSON) goes the general way below, which gives the errors.
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
                let parts = self
                    .call_fields(env.id, env.method, env.params, &|| callbacks(0), ext)
                    .into_iter()
                    .collect();
                return Dispatched { batch: false, parts, ..Default::default() };
            }
        }
        self.dispatch_general(body, callbacks, ext)
    }

    /// Dispatch through a parsed [`Value`]: batches, and everything the fast path refuses.
    fn dispatch_general(
        &mut self,
        body: &[u8],
        callbacks: &dyn Fn(usize) -> Callbacks,
        ext: Extension<'_>,
    ) -> Dispatched {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Dispatched {
                    batch: false,
                    parts: vec![Part::Ready(response(
                        &Value::Null,
                        Err(RpcError::new(-32700, format!("parse error: {e}"))),
                    ))],
                    ..Default::default()
                }
            }
        };
        match value {
            Value::Array(calls) => {
                if calls.is_empty() {
                    return Dispatched {
                        batch: false,
                        parts: vec![Part::Ready(response(
                            &Value::Null,
                            Err(RpcError::new(-32600, "empty batch")),
                        ))],
                        ..Default::default()
                    };
                }
                if calls.len() > MAX_BATCH_LEN {
                    return Dispatched {
                        batch_too_large: true,
                        batch: false,
                        parts: vec![Part::Ready(response(
                            &Value::Null,
                            Err(RpcError::new(
                                -32600,
                                format!(
                                    "batch too large: {} calls, limit {MAX_BATCH_LEN}",
                                    calls.len()
                                ),
                            )),
                        ))],
                    };
                }
                let mut parts = Vec::with_capacity(calls.len());
                for call in calls {
                    let index = parts.len();
                    if let Some(p) = self.call(call, &|| callbacks(index), ext) {
                        parts.push(p);
                    }
                }
                Dispatched { batch: true, parts, ..Default::default() }
            }
            other => {
                let parts = self.call(other, &|| callbacks(0), ext).into_iter().collect();
                Dispatched { batch: false, parts, ..Default::default() }
            }
        }
    }

    /// Handles one call object; `None` for notifications (no id).
    fn call(
        &mut self,
        call: Value,
        callbacks: &dyn Fn() -> Callbacks,
        ext: Extension<'_>,
    ) -> Option<Part> {
        let Value::Object(mut obj) = call else {
            return Some(Part::Ready(response(
                &Value::Null,
                Err(RpcError::new(-32600, "invalid request")),
            )));
        };
        let (id, method, params) = (obj.remove("id"), obj.remove("method"), obj.remove("params"));
        self.call_fields(id, method, params, callbacks, ext)
    }

    /// Handles one call given its `id`, `method` and `params` members (`None`: absent).
    fn call_fields(
        &mut self,
        id: Option<Value>,
        method: Option<Value>,
        params: Option<Value>,
        callbacks: &dyn Fn() -> Callbacks,
        ext: Extension<'_>,
    ) -> Option<Part> {
        let is_notification = id.is_none();
        let id = id.unwrap_or(Value::Null);
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Some(Part::Ready(response(
                &Value::Null,
                Err(RpcError::new(-32600, "invalid request id")),
            )));
        }
        // As geth: a message without a method name is an invalid request (answered even without
        // an id); one with a method and no id is a notification, never answered, even when its
        // params are wrong.
        let method = match method {
            Some(Value::String(m)) if !m.is_empty() => m,
            _ => {
                return Some(Part::Ready(response(
                    &id,
                    Err(RpcError::new(-32600, "invalid request: missing method")),
                )))
            }
        };
        let params = match params {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(Value::Object(_)) => {
                return (!is_notification).then(|| {
                    Part::Ready(response(
                        &id,
                        Err(RpcError::invalid_params("named parameters are not supported")),
                    ))
                })
            }
            Some(_) => {
                return (!is_notification).then(|| {
                    Part::Ready(response(
                        &id,
                        Err(RpcError::new(-32600, "invalid request: params")),
                    ))
                })
            }
        };
        let outcome = match ext(&method, &params) {
            Some(r) => Outcome::Done(r),
            None => self.method(&method, &params, callbacks),
        };
        if is_notification {
            return None;
        }
        Some(match outcome {
            Outcome::Done(r) => Part::Ready(response(&id, r)),
            Outcome::Wait(kind, deadline) => Part::Waiting { id, kind, deadline },
        })
    }

    /// Delivers an engine event to a waiting part. Returns whether the part became ready.
    pub fn complete(&self, part: &mut Part, event: Event) -> bool {
        let Part::Waiting { id, kind, .. } = part else { return false };
        let result = match (kind, event) {
            (WaitKind::Accept, Event::Accepted(r)) => {
                Some(r.map(|h| json!(h)).map_err(|e| tx_error(&e)))
            }
            (WaitKind::Accept, Event::Included(_)) => None,
            (WaitKind::Sync(_) | WaitKind::Realtime(_), Event::Accepted(Err(e))) => {
                Some(Err(tx_error(&e)))
            }
            (WaitKind::Sync(_) | WaitKind::Realtime(_), Event::Accepted(Ok(_))) => None,
            (WaitKind::Sync(_) | WaitKind::Realtime(_), Event::Included(Ok(inc))) => {
                let view = self.engine.view();
                Some(Ok(format::receipt(&view, &inc)))
            }
            (WaitKind::Sync(_) | WaitKind::Realtime(_), Event::Included(Err(e))) => {
                Some(Err(tx_error(&e)))
            }
        };
        match result {
            Some(r) => {
                *part = Part::Ready(response(id, r));
                true
            }
            None => false,
        }
    }

    /// Answers waiting parts whose deadline has passed. Returns whether any became ready.
    pub fn expire(&self, parts: &mut [Part], now: Instant) -> bool {
        let mut any = false;
        for part in parts.iter_mut() {
            let Part::Waiting { id, kind, deadline } = part else { continue };
            if deadline.is_none_or(|d| d > now) {
                continue;
            }
            let err = match kind {
                WaitKind::Sync(hash) => RpcError::new(
                    4,
                    "The transaction was added to the mempool but wasn't processed within the designated timeout interval.",
                )
                .with_data(json!(hash)),
                WaitKind::Realtime(hash) => RpcError::server("realtime transaction expired").with_data(json!(hash)),
                WaitKind::Accept => RpcError::server("sequencer did not answer in time"),
            };
            *part = Part::Ready(response(id, Err(err)));
            any = true;
        }
        any
    }

    fn method(&mut self, method: &str, p: &[Value], callbacks: &dyn Fn() -> Callbacks) -> Outcome {
        let view = self.engine.view();
        let done = Outcome::Done;
        match method {
            "eth_sendRawTransaction" => self.send(p, None, callbacks),
            "eth_sendRawTransactionSync" => {
                let timeout = match opt_param::<u64>(p, 1) {
                    Ok(t) => t
                        .map(Duration::from_millis)
                        .unwrap_or(SYNC_TIMEOUT_DEFAULT)
                        .min(SYNC_TIMEOUT_MAX),
                    Err(e) => return done(Err(e)),
                };
                self.send(p, Some((false, timeout)), callbacks)
            }
            "realtime_sendRawTransaction" => {
                self.send(p, Some((true, REALTIME_TIMEOUT)), callbacks)
            }
            _ => done(self.read_method(method, p, &view)),
        }
    }

    fn send(
        &mut self,
        p: &[Value],
        sync: Option<(bool, Duration)>,
        callbacks: &dyn Fn() -> Callbacks,
    ) -> Outcome {
        let raw: Bytes = match param(p, 0) {
            Ok(r) => r,
            Err(e) => return Outcome::Done(Err(e)),
        };
        let callbacks = || {
            let cb = callbacks();
            Callbacks { on_accept: accept_notify(sync.is_some(), cb.on_accept), ..cb }
        };
        match self.submit_raw(raw, sync, &callbacks) {
            Ok((kind, deadline)) => Outcome::Wait(kind, deadline),
            Err(e) => Outcome::Done(Err(e)),
        }
    }

    /// Submits a raw transaction (JSON-RPC sends and the binary protocol): its answers arrive
    /// through `callbacks`; the returned kind and deadline say what the caller waits for.
    pub fn submit_raw(
        &mut self,
        raw: Bytes,
        sync: Option<(bool, Duration)>,
        callbacks: &dyn Fn() -> Callbacks,
    ) -> Result<(WaitKind, Option<Instant>), RpcError> {
        if let Some(recovery) = &self.recovery {
            // Only the hash here; decoding and recovery happen on a worker, which answers
            // through the callbacks.
            let hash = alloy_primitives::keccak256(&raw);
            let cb = callbacks();
            let (kind, deadline, on_receipt, reject_gap) = wait_for(sync, hash, cb.on_receipt);
            let job = crate::recovery::RecoveryJob {
                raw,
                rules: self.engine.intake_rules(),
                reject_gap,
                on_accept: cb.on_accept,
                on_receipt,
            };
            return match recovery.submit(self.route, job) {
                Ok(()) => Ok((kind, deadline)),
                Err(e) => Err(tx_error(&e)),
            };
        }
        let tx = self.engine.decode(&raw).map_err(|e| tx_error(&e))?;
        let hash = tx.hash;
        let cb = callbacks();
        let (kind, deadline, on_receipt, reject_gap) = wait_for(sync, hash, cb.on_receipt);
        match self.engine.submit(tx, reject_gap, Some(cb.on_accept), on_receipt) {
            Ok(()) => Ok((kind, deadline)),
            Err(e) => Err(tx_error(&e)),
        }
    }

    fn read_method(
        &mut self,
        method: &str,
        p: &[Value],
        view: &ChainView,
    ) -> Result<Value, RpcError> {
        let cfg = self.engine.config();
        match method {
            "eth_chainId" => Ok(qty(cfg.chain_id)),
            "net_version" => Ok(json!(cfg.chain_id.to_string())),
            "net_listening" => Ok(json!(true)),
            "net_peerCount" => Ok(qty(0u64)),
            "web3_clientVersion" => Ok(json!(format!(
                "strobe/v{}/{}-{}/rust",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            ))),
            "web3_sha3" => {
                let data: Bytes = param(p, 0)?;
                Ok(json!(alloy_primitives::keccak256(&data)))
            }
            "eth_syncing" => Ok(json!(false)),
            "eth_mining" => Ok(json!(true)),
            "eth_hashrate" => Ok(qty(0u64)),
            "eth_accounts" => Ok(json!(self.accounts)),
            "eth_blockNumber" => Ok(qty(view.head().header.number)),
            "eth_gasPrice" => Ok(qty(view.open.base_fee as u128 + SUGGESTED_TIP_WEI)),
            "eth_maxPriorityFeePerGas" => Ok(qty(SUGGESTED_TIP_WEI)),
            "eth_blobBaseFee" => Ok(qty(1u64)),
            "eth_feeHistory" => self.fee_history(p, view),
            "eth_getBalance" => {
                let addr: Address = param(p, 0)?;
                let state = state_at(view, p.get(1))?;
                Ok(json!(state.account(&addr).map(|a| a.balance).unwrap_or_default()))
            }
            "eth_getTransactionCount" => {
                let addr: Address = param(p, 0)?;
                let tag: Option<BlockId> = opt_param(p, 1)?;
                if matches!(tag, Some(BlockId::Number(BlockNumberOrTag::Pending))) {
                    return Ok(qty(self.engine.pending_nonce(&addr)));
                }
                let state = state_at(view, p.get(1))?;
                Ok(qty(state.account(&addr).map(|a| a.nonce).unwrap_or(0)))
            }
            "eth_getCode" => {
                let addr: Address = param(p, 0)?;
                let state = state_at(view, p.get(1))?;
                let code = state
                    .account(&addr)
                    .and_then(|a| state.code(&a.code_hash))
                    .map(|c| c.original_bytes())
                    .unwrap_or_default();
                Ok(json!(code))
            }
            "strobe_getMiniBlocks" => {
                // (from, count): mini-blocks numbered from..from+count still kept, oldest first;
                // `from` = "latest" gives the newest `count`.
                let count: u64 =
                    opt_param::<Value>(p, 1)?.map(|v| quantity_param(&v)).transpose()?.unwrap_or(1);
                if count == 0 || count > MAX_MINI_BLOCKS_PER_CALL {
                    return Err(RpcError::invalid_params(format!(
                        "count must be 1..={MAX_MINI_BLOCKS_PER_CALL}"
                    )));
                }
                let recent = &view.recent_mini_blocks;
                let newest = recent.back().map_or(0, |m| m.number);
                let from = match opt_param::<Value>(p, 0)? {
                    None => newest,
                    Some(Value::String(s)) if s == "latest" => (newest + 1).saturating_sub(count),
                    Some(v) => quantity_param(&v)?,
                };
                let list: Vec<Value> = recent
                    .iter()
                    .skip_while(|m| m.number < from)
                    .take_while(|m| m.number < from.saturating_add(count))
                    .map(|m| {
                        json!({
                            "number": qty(m.number),
                            "blockNumber": qty(m.block_number),
                            "index": qty(m.index as u64),
                            "timestamp": qty(m.timestamp_us),
                            "transactionCount": qty(m.tx_count as u64),
                            "gasUsed": qty(m.gas_used),
                        })
                    })
                    .collect();
                Ok(Value::Array(list))
            }
            "strobe_getProof" => {
                let addr: Address = param(p, 0)?;
                let slots: Vec<U256> = opt_param(p, 1)?.unwrap_or_default();
                if slots.len() > MAX_PROOF_SLOTS {
                    return Err(RpcError::invalid_params(format!(
                        "at most {MAX_PROOF_SLOTS} storage slots per proof"
                    )));
                }
                let id: BlockId =
                    opt_param(p, 2)?.unwrap_or(BlockId::Number(BlockNumberOrTag::Latest));
                let block =
                    match resolve_block(view, id) {
                        Found::Sealed(b) => b,
                        Found::Pending => return Err(RpcError::server(
                            "proofs are for sealed blocks; the pending block has no state root yet",
                        )),
                        Found::None => return Err(RpcError::server("header not found")),
                    };
                let number = block.header.number;
                let unavailable = || {
                    RpcError::server(format!(
                        "proof for block {number} is not available: proofs are served for the newest sealed block ({})",
                        view.head().header.number
                    ))
                };
                let state = view.block_states.get(&number).ok_or_else(unavailable)?;
                let proof = state.proof(&addr, &slots).map_err(|_| unavailable())?;
                let account = state.account(&addr).unwrap_or_default();
                let storage: Vec<Value> = slots
                    .iter()
                    .map(|slot| json!({"key": slot, "value": state.storage(&addr, slot)}))
                    .collect();
                Ok(json!({
                    "address": addr,
                    "blockNumber": qty(number),
                    "blockHash": block.hash,
                    "stateRoot": block.header.state_root,
                    "balance": account.balance,
                    "nonce": qty(account.nonce),
                    "codeHash": account.code_hash,
                    "proof": proof,
                    "storageProof": storage,
                }))
            }
            "eth_getStorageAt" => {
                let addr: Address = param(p, 0)?;
                let slot: U256 = param(p, 1)?;
                let state = state_at(view, p.get(2))?;
                Ok(json!(B256::from(state.storage(&addr, &slot))))
            }
            "eth_call" => {
                let req: TransactionRequest = param(p, 0)?;
                let exec = self.run_call(view, &req, p.get(1))?;
                if exec.success {
                    Ok(json!(exec.output))
                } else {
                    Err(revert_error(&exec))
                }
            }
            "eth_estimateGas" => {
                let req: TransactionRequest = param(p, 0)?;
                self.estimate_gas(view, &req, p.get(1)).map(qty)
            }
            "eth_getTransactionByHash" => {
                let hash: B256 = param(p, 0)?;
                if let Some(t) = view.txs.get(&hash) {
                    return Ok(format::transaction(view, t));
                }
                Ok(self
                    .engine
                    .pooled_transaction(&hash)
                    .map(|t| format::pooled_transaction(&t))
                    .unwrap_or(Value::Null))
            }
            "eth_getTransactionReceipt" => {
                let hash: B256 = param(p, 0)?;
                Ok(view.txs.get(&hash).map(|t| format::receipt(view, t)).unwrap_or(Value::Null))
            }
            "eth_getBlockByNumber" | "eth_getBlockByHash" => {
                let full: bool = opt_param(p, 1)?.unwrap_or(false);
                match self.find_block(view, method, p)? {
                    Found::Sealed(b) => Ok(format::block(view, &b, full)),
                    Found::Pending => Ok(format::pending_block(view, &view.open, full)),
                    Found::None => Ok(Value::Null),
                }
            }
            "eth_getBlockTransactionCountByNumber" | "eth_getBlockTransactionCountByHash" => {
                match self.find_block(view, method, p)? {
                    Found::Sealed(b) => Ok(qty(b.txs.len() as u64)),
                    Found::Pending => Ok(qty(view.open.txs.len() as u64)),
                    Found::None => Ok(Value::Null),
                }
            }
            "eth_getTransactionByBlockNumberAndIndex" | "eth_getTransactionByBlockHashAndIndex" => {
                let index: U256 = param(p, 1)?;
                let index = index.saturating_to::<usize>();
                let tx = match self.find_block(view, method, p)? {
                    Found::Sealed(b) => b.txs.get(index).cloned(),
                    Found::Pending => view.open.txs.get(index).cloned(),
                    Found::None => None,
                };
                Ok(tx.map(|t| format::transaction(view, &t)).unwrap_or(Value::Null))
            }
            "eth_getBlockReceipts" => {
                let id: BlockId = param(p, 0)?;
                let txs: Option<Vec<Arc<IncludedTx>>> = match resolve_block(view, id) {
                    Found::Sealed(b) => Some(b.txs.clone()),
                    Found::Pending => Some(view.open.txs.iter().cloned().collect()),
                    Found::None => None,
                };
                Ok(txs
                    .map(|t| json!(t.iter().map(|t| format::receipt(view, t)).collect::<Vec<_>>()))
                    .unwrap_or(Value::Null))
            }
            "eth_getUncleCountByBlockNumber" | "eth_getUncleCountByBlockHash" => Ok(qty(0u64)),
            "eth_getLogs" => {
                let filter: Filter = param(p, 0)?;
                let logs = logs_matching(view, &filter, None)?;
                Ok(json!(logs))
            }
            "eth_newFilter" => {
                let filter: Filter = param(p, 0)?;
                let next = match filter.block_option.get_from_block() {
                    Some(BlockNumberOrTag::Number(n)) => *n,
                    _ => view.head().header.number + 1,
                };
                self.install(FilterKind::Logs { filter: Box::new(filter), next })
            }
            "eth_newBlockFilter" => {
                self.install(FilterKind::Blocks { next: view.head().header.number + 1 })
            }
            "eth_getFilterChanges" => self.filter_changes(param(p, 0)?, view),
            "eth_getFilterLogs" => {
                let id: U256 = param(p, 0)?;
                let filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
                let f = filters
                    .map
                    .get(&id.saturating_to::<u64>())
                    .ok_or_else(|| RpcError::server("filter not found"))?;
                match &f.kind {
                    FilterKind::Logs { filter, .. } => {
                        Ok(json!(logs_matching(view, filter, None)?))
                    }
                    FilterKind::Blocks { .. } => Err(RpcError::server("filter not found")),
                }
            }
            "eth_uninstallFilter" => {
                let id: U256 = param(p, 0)?;
                let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
                Ok(json!(filters.map.remove(&id.saturating_to::<u64>()).is_some()))
            }
            _ => Err(RpcError::new(
                -32601,
                format!("the method {method} does not exist/is not available"),
            )),
        }
    }

    fn install(&mut self, kind: FilterKind) -> Result<Value, RpcError> {
        let now = Instant::now();
        let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        filters.map.retain(|_, f| now.duration_since(f.last_poll) < FILTER_TIMEOUT);
        if filters.map.len() >= MAX_FILTERS {
            return Err(RpcError::server(format!(
                "too many filters installed (limit {MAX_FILTERS})"
            )));
        }
        let id = filters.next_id;
        filters.next_id += 1;
        filters.map.insert(id, InstalledFilter { kind, last_poll: now });
        Ok(qty(id))
    }

    fn filter_changes(&mut self, id: U256, view: &ChainView) -> Result<Value, RpcError> {
        let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        let f = filters
            .map
            .get_mut(&id.saturating_to::<u64>())
            .ok_or_else(|| RpcError::server("filter not found"))?;
        f.last_poll = Instant::now();
        let head = view.head().header.number;
        match &mut f.kind {
            FilterKind::Blocks { next } => {
                let hashes: Vec<B256> = (*next..=head)
                    .filter_map(|n| view.sealed.get(n as usize).map(|b| b.hash))
                    .collect();
                *next = head + 1;
                Ok(json!(hashes))
            }
            FilterKind::Logs { filter, next } => {
                if *next > head {
                    return Ok(json!([]));
                }
                let logs = logs_matching(view, filter, Some((*next, head)))?;
                *next = head + 1;
                Ok(json!(logs))
            }
        }
    }

    fn find_block(&self, view: &ChainView, method: &str, p: &[Value]) -> Result<Found, RpcError> {
        if method.contains("ByHash") || method.contains("BlockHash") {
            let hash: B256 = param(p, 0)?;
            Ok(view
                .by_hash
                .get(&hash)
                .and_then(|n| view.sealed.get(*n as usize))
                .cloned()
                .map_or(Found::None, Found::Sealed))
        } else {
            let tag: BlockNumberOrTag = param(p, 0)?;
            Ok(resolve_block(view, BlockId::Number(tag)))
        }
    }

    fn run_call(
        &self,
        view: &ChainView,
        req: &TransactionRequest,
        tag: Option<&Value>,
    ) -> Result<TxExecution, RpcError> {
        let state = state_at(view, tag)?;
        let call = call_request(req);
        let block_hash = view.block_hash_lookup();
        let base = ViewDb { view: &*state, block_hash: &block_hash };
        exec::call(base, &view.open.context(self.engine.config()), &call, RPC_GAS_CAP)
            .map_err(|e| call_error(&e.to_string()))
    }

    fn estimate_gas(
        &self,
        view: &ChainView,
        req: &TransactionRequest,
        tag: Option<&Value>,
    ) -> Result<u64, RpcError> {
        let cap = req.gas.unwrap_or(RPC_GAS_CAP).min(RPC_GAS_CAP);
        // A plain transfer to an account without code costs exactly 21000 (geth skips the search).
        let input_empty = req.input.input().is_none_or(|i| i.is_empty());
        if let (Some(alloy_primitives::TxKind::Call(to)), true, None) =
            (req.to, input_empty, &req.authorization_list)
        {
            let state = state_at(view, tag)?;
            let has_code = state
                .account(&to)
                .is_some_and(|a| a.code_hash != alloy_primitives::KECCAK256_EMPTY);
            if !has_code && req.access_list.as_ref().is_none_or(|l| l.is_empty()) {
                let mut probe = req.clone();
                probe.gas = Some(21_000.min(cap));
                let exec = self.run_call(view, &probe, tag)?;
                if exec.success {
                    return Ok(21_000);
                }
            }
        }
        let mut probe = req.clone();
        probe.gas = Some(cap);
        let first = self.run_call(view, &probe, tag)?;
        if !first.success {
            if first.halt.as_deref() == Some("out of gas") {
                return Err(RpcError::server(format!("gas required exceeds allowance ({cap})")));
            }
            return Err(revert_error(&first));
        }
        // Binary search the smallest gas limit that succeeds, as geth does; start from the gas
        // used scaled by 64/63 (EIP-150's retained gas), which is usually enough.
        let mut lo = first.gas_used.saturating_sub(1);
        let mut hi = cap;
        let optimistic = (first.gas_used + 2300) * 64 / 63;
        if optimistic < hi {
            probe.gas = Some(optimistic);
            if self.run_call(view, &probe, tag).map(|e| e.success).unwrap_or(false) {
                hi = optimistic;
            } else {
                lo = optimistic;
            }
        }
        while lo + 1 < hi {
            // Stop when within 1.5% like geth, to bound the number of runs.
            if (hi - lo) * 1000 / hi < 15 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            probe.gas = Some(mid);
            match self.run_call(view, &probe, tag) {
                Ok(e) if e.success => hi = mid,
                _ => lo = mid,
            }
        }
        Ok(hi)
    }

    fn fee_history(&self, p: &[Value], view: &ChainView) -> Result<Value, RpcError> {
        let count: U256 = param(p, 0)?;
        let newest: BlockNumberOrTag = param(p, 1)?;
        let percentiles: Option<Vec<f64>> = opt_param(p, 2)?;
        let head = view.head().header.number;
        let newest = match newest {
            BlockNumberOrTag::Number(n) => n.min(head),
            _ => head,
        };
        let count = count.saturating_to::<u64>().clamp(1, 1024).min(newest + 1);
        let oldest = newest + 1 - count;
        let mut base = Vec::new();
        let mut ratio = Vec::new();
        let mut rewards = Vec::new();
        for n in oldest..=newest {
            let b = &view.sealed[n as usize];
            let h = &b.header;
            base.push(qty(h.base_fee_per_gas.unwrap_or_default()));
            ratio.push(json!(if h.gas_limit == 0 {
                0.0
            } else {
                h.gas_used as f64 / h.gas_limit as f64
            }));
            if let Some(ps) = &percentiles {
                rewards.push(json!(block_rewards(b, ps).into_iter().map(qty).collect::<Vec<_>>()));
            }
        }
        let next_base = if newest == head {
            view.next_base_fee()
        } else {
            view.sealed[(newest + 1) as usize].header.base_fee_per_gas.unwrap_or_default()
        };
        base.push(qty(next_base));
        let mut out = json!({
            "oldestBlock": qty(oldest),
            "baseFeePerGas": base,
            "gasUsedRatio": ratio,
            "baseFeePerBlobGas": vec![qty(0u64); count as usize + 1],
            "blobGasUsedRatio": vec![json!(0.0); count as usize],
        });
        if percentiles.is_some() {
            out["reward"] = json!(rewards);
        }
        Ok(out)
    }
}

/// Tips at the given gas-weighted percentiles of a block's transactions (geth's algorithm).
fn block_rewards(block: &SealedBlock, percentiles: &[f64]) -> Vec<u128> {
    let base = block.header.base_fee_per_gas.unwrap_or_default();
    let mut txs: Vec<(u128, u64)> = block
        .txs
        .iter()
        .map(|t| (t.effective_gas_price.saturating_sub(base as u128), t.gas_used))
        .collect();
    if txs.is_empty() {
        return vec![0; percentiles.len()];
    }
    txs.sort_unstable_by_key(|(tip, _)| *tip);
    let total: u64 = block.header.gas_used.max(1);
    let mut out = Vec::with_capacity(percentiles.len());
    let mut i = 0;
    let mut sum = txs[0].1;
    for p in percentiles {
        let threshold = (total as f64 * p / 100.0) as u64;
        while sum < threshold && i < txs.len() - 1 {
            i += 1;
            sum += txs[i].1;
        }
        out.push(txs[i].0);
    }
    out
}

enum Found {
    Sealed(Arc<SealedBlock>),
    Pending,
    None,
}

fn resolve_block(view: &ChainView, id: BlockId) -> Found {
    let head = view.head();
    match id {
        BlockId::Hash(h) => view
            .by_hash
            .get(&h.block_hash)
            .and_then(|n| view.sealed.get(*n as usize))
            .cloned()
            .map_or(Found::None, Found::Sealed),
        BlockId::Number(tag) => match tag {
            BlockNumberOrTag::Pending => Found::Pending,
            BlockNumberOrTag::Latest | BlockNumberOrTag::Safe | BlockNumberOrTag::Finalized => {
                Found::Sealed(head.clone())
            }
            BlockNumberOrTag::Earliest => Found::Sealed(view.sealed[0].clone()),
            BlockNumberOrTag::Number(n) => {
                view.sealed.get(n as usize).cloned().map_or(Found::None, Found::Sealed)
            }
        },
    }
}

/// The state a block parameter names: `latest`/`pending` = the newest mini-block.
fn state_at(view: &ChainView, tag: Option<&Value>) -> Result<Arc<dyn StateView>, RpcError> {
    let id: BlockId = match tag {
        None | Some(Value::Null) => BlockId::Number(BlockNumberOrTag::Latest),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| RpcError::invalid_params(format!("invalid block parameter: {e}")))?,
    };
    let number = match id {
        BlockId::Hash(h) => *view.by_hash.get(&h.block_hash).ok_or_else(|| {
            RpcError::server(format!("header for hash {} not found", h.block_hash))
        })?,
        BlockId::Number(BlockNumberOrTag::Number(n)) => {
            if n > view.open.number {
                return Err(RpcError::server("header not found"));
            }
            n
        }
        BlockId::Number(BlockNumberOrTag::Earliest) => 0,
        BlockId::Number(_) => return Ok(view.state.clone()),
    };
    view.state_at(number).ok_or_else(|| {
        RpcError::server(format!("historical state for block {number} is not available (only the last 128 blocks are kept)"))
    })
}

fn call_request(req: &TransactionRequest) -> CallRequest {
    CallRequest {
        from: req.from,
        to: match req.to {
            Some(alloy_primitives::TxKind::Call(a)) => Some(a),
            _ => None,
        },
        gas: req.gas,
        gas_price: req.gas_price,
        max_fee_per_gas: req.max_fee_per_gas,
        max_priority_fee_per_gas: req.max_priority_fee_per_gas,
        value: req.value,
        input: req.input.input().cloned().unwrap_or_default(),
        nonce: req.nonce,
        access_list: req.access_list.clone(),
        authorization_list: req.authorization_list.clone(),
    }
}

/// Maps revm's validation errors onto geth's wording.
fn call_error(msg: &str) -> RpcError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("lack of funds") || lower.contains("insufficient") {
        RpcError::server(format!("insufficient funds for gas * price + value: {msg}"))
    } else if lower.contains("intrinsic") || lower.contains("call gas cost") {
        RpcError::server(format!("intrinsic gas too low: {msg}"))
    } else {
        RpcError::server(msg.to_string())
    }
}

/// Code 3 with the revert data, and the decoded reason when it is an `Error(string)`.
fn revert_error(exec: &TxExecution) -> RpcError {
    if let Some(halt) = &exec.halt {
        return RpcError::server(halt.clone());
    }
    let reason = decode_revert_reason(&exec.output);
    let message = match reason {
        Some(r) => format!("execution reverted: {r}"),
        None => "execution reverted".to_string(),
    };
    RpcError::new(3, message).with_data(json!(exec.output))
}

/// Decodes `Error(string)` revert data.
pub fn decode_revert_reason(data: &[u8]) -> Option<String> {
    const SELECTOR: [u8; 4] = [0x08, 0xc3, 0x79, 0xa0];
    if data.len() < 4 + 64 || data[..4] != SELECTOR {
        return None;
    }
    let body = &data[4..];
    let offset = U256::from_be_slice(&body[..32]).saturating_to::<usize>();
    let len_end = offset.checked_add(32)?;
    if body.len() < len_end {
        return None;
    }
    let len = U256::from_be_slice(&body[offset..len_end]).saturating_to::<usize>();
    let end = len_end.checked_add(len)?;
    let bytes = body.get(len_end..end)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Logs matching `filter`; `range` overrides the filter's own block range.
fn logs_matching(
    view: &ChainView,
    filter: &Filter,
    range: Option<(u64, u64)>,
) -> Result<Vec<alloy_rpc_types_eth::Log>, RpcError> {
    let open = view.open.number;
    let resolve = |tag: Option<&BlockNumberOrTag>, default: u64| -> u64 {
        match tag {
            None => default,
            Some(BlockNumberOrTag::Number(n)) => *n,
            Some(BlockNumberOrTag::Earliest) => 0,
            Some(_) => open,
        }
    };
    let (from, to) = match (&filter.block_option, range) {
        (_, Some(r)) => r,
        (FilterBlockOption::AtBlockHash(h), None) => {
            let n = *view.by_hash.get(h).ok_or_else(|| RpcError::server("unknown block"))?;
            (n, n)
        }
        (FilterBlockOption::Range { from_block, to_block }, None) => {
            (resolve(from_block.as_ref(), open), resolve(to_block.as_ref(), open))
        }
    };
    if from > to {
        return Err(RpcError::invalid_params("invalid block range params"));
    }
    let to = to.min(open);
    if to.saturating_sub(from) >= MAX_LOG_RANGE_BLOCKS {
        return Err(RpcError::new(
            -32005,
            format!("query exceeds max block range {MAX_LOG_RANGE_BLOCKS}"),
        ));
    }
    let mut out = Vec::new();
    for n in from..=to {
        // The block being sealed counts like the open one: its logs are final, its hash not yet.
        let unsealed = match &view.sealing {
            Some(s) if s.block.number == n => Some(&s.block),
            _ if n == open => Some(&view.open),
            _ => None,
        };
        let txs: Vec<Arc<IncludedTx>> = if let Some(block) = unsealed {
            if !filter.matches_bloom(block.bloom) {
                continue;
            }
            block.txs.iter().cloned().collect()
        } else {
            let Some(b) = view.sealed.get(n as usize) else { continue };
            if !filter.matches_bloom(b.header.logs_bloom) {
                continue;
            }
            b.txs.clone()
        };
        for inc in &txs {
            for log in format::logs(view, inc) {
                if filter.matches_address(log.address()) && filter.matches_topics(log.topics()) {
                    out.push(log);
                    if out.len() > MAX_LOG_RESULTS {
                        return Err(RpcError::new(
                            -32005,
                            format!("query returned more than {MAX_LOG_RESULTS} results"),
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_rpc() -> Rpc {
        let engine = Arc::new(
            Engine::start(
                strobe_engine::config::ChainConfig::default(),
                &strobe_engine::config::Genesis::default(),
                Box::new(strobe_engine::storage::MemoryStore::new()),
            )
            .unwrap(),
        );
        Rpc::new(engine, Vec::new())
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z0-9x]{0,12}".prop_map(Value::String),
            Just(json!("latest")),
            Just(json!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")),
            Just(json!("0x1")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    use proptest::prelude::{any, prop_assert, prop_assert_eq, Strategy};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Call objects of every shape (method names strobe serves and others, any params, any
        /// id, members missing) get one well-formed answer carrying their id, or none when they
        /// are notifications; the fast path agrees with the general one; batches answer per call.
        #[test]
        fn envelopes_get_well_formed_answers(
            method in proptest::sample::select(vec![
                "eth_chainId", "eth_getBalance", "eth_call", "eth_getLogs", "eth_getBlockByNumber",
                "eth_getTransactionReceipt", "eth_estimateGas", "eth_feeHistory", "eth_newFilter",
                "eth_getFilterChanges", "strobe_getMiniBlocks", "strobe_getProof", "web3_sha3",
                "nope", "",
            ]),
            params in arb_json(),
            id in proptest::option::of(proptest::prop_oneof![
                proptest::strategy::Just(Value::Null),
                any::<u32>().prop_map(|n| json!(n)),
                "[a-z]{0,5}".prop_map(Value::String),
            ]),
            extra in arb_json(),
            batch in 1usize..4,
        ) {
            let mut rpc = test_rpc();
            let callbacks = |_| Callbacks { on_accept: Box::new(|_| {}), on_receipt: Box::new(|_| {}) };
            let mut call = serde_json::Map::new();
            call.insert("jsonrpc".into(), json!("2.0"));
            call.insert("method".into(), json!(method));
            call.insert("params".into(), params);
            call.insert("x".into(), extra);
            if let Some(id) = &id {
                call.insert("id".into(), id.clone());
            }
            let body = Value::Object(call).to_string();
            let fast = rpc.dispatch(body.as_bytes(), &callbacks);
            let general = rpc.dispatch_general(body.as_bytes(), &callbacks, &mut |_: &str, _: &[Value]| None);
            prop_assert_eq!(fast.is_ready(), general.is_ready());
            if fast.is_ready() {
                // Filter methods change state (a new id per call), so only their shape is compared.
                if !method.contains("Filter") {
                    prop_assert_eq!(fast.body(), general.body());
                }
                let out = fast.body();
                match &id {
                    None if !method.is_empty() => prop_assert!(out.is_empty(), "a notification got {:?}", String::from_utf8_lossy(&out)),
                    None => {
                        let v: Value = serde_json::from_slice(&out).unwrap();
                        prop_assert_eq!(&v["error"]["code"], &json!(-32600));
                        prop_assert_eq!(&v["id"], &Value::Null);
                    }
                    Some(id) => {
                        let v: Value = serde_json::from_slice(&out).unwrap();
                        prop_assert_eq!(&v["jsonrpc"], &json!("2.0"));
                        let valid_id = matches!(id, Value::Null | Value::Number(_) | Value::String(_));
                        prop_assert!(!valid_id || v["id"] == *id);
                        prop_assert!(v.get("result").is_some() != v.get("error").is_some());
                    }
                }
            }
            let batch_body = format!("[{}]", vec![body.as_str(); batch].join(","));
            let d = rpc.dispatch(batch_body.as_bytes(), &callbacks);
            if d.is_ready() {
                let out = d.body();
                if id.is_some() || method.is_empty() {
                    let v: Value = serde_json::from_slice(&out).unwrap();
                    prop_assert_eq!(v.as_array().map(Vec::len), Some(batch));
                } else {
                    prop_assert!(out.is_empty());
                }
            }
        }

        /// Arbitrary bytes never panic the dispatcher, and any answer is JSON.
        #[test]
        fn random_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rpc = test_rpc();
            let callbacks = |_| Callbacks { on_accept: Box::new(|_| {}), on_receipt: Box::new(|_| {}) };
            let d = rpc.dispatch(&bytes, &callbacks);
            if d.is_ready() && !d.body().is_empty() {
                serde_json::from_slice::<Value>(&d.body()).unwrap();
            }
        }
    }

    /// The single-call fast path answers exactly as the general path for every shape of call:
    /// ids present, null and absent, bad methods and params, duplicate keys, extra members.
    #[test]
    fn fast_path_answers_like_the_general_path() {
        let mut rpc = test_rpc();
        let callbacks = |_| Callbacks { on_accept: Box::new(|_| {}), on_receipt: Box::new(|_| {}) };
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"eth_chainId","params":[]}"#,
            r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#,
            r#"{"id":"x","method":"eth_getBalance","params":["0x0000000000000000000000000000000000000001","latest"]}"#,
            r#"{"id":2,"method":7}"#,
            r#"{"id":3}"#,
            r#"{"id":{"a":1},"method":"eth_chainId"}"#,
            r#"{"id":4,"method":"eth_chainId","params":{"a":1}}"#,
            r#"{"id":5,"method":"eth_chainId","params":"x"}"#,
            r#"{"id":6,"method":"eth_chainId","params":null,"extra":[1,2]}"#,
            r#"{"id":7,"method":"nope"}"#,
            r#"{"id":8,"id":9,"method":"eth_chainId"}"#,
            r#"  {"id":10,"method":"eth_blockNumber"}  "#,
            r#"{"id":11,"method":"eth_chainId"} trailing"#,
            r#"{"id":12,"method":"eth_getBalance","params":["0xzz"]}"#,
        ];
        for body in bodies {
            let fast = rpc.dispatch(body.as_bytes(), &callbacks);
            let general =
                rpc.dispatch_general(body.as_bytes(), &callbacks, &mut |_: &str, _: &[Value]| None);
            assert_eq!(fast.body(), general.body(), "{body}");
        }
    }

    #[test]
    fn decodes_error_string() {
        let data = alloy_primitives::hex::decode(concat!(
            "08c379a0",
            "0000000000000000000000000000000000000000000000000000000000000020",
            "0000000000000000000000000000000000000000000000000000000000000014",
            "696e73756666696369656e742062616c616e6365000000000000000000000000"
        ))
        .unwrap();
        assert_eq!(decode_revert_reason(&data).as_deref(), Some("insufficient balance"));
        assert_eq!(decode_revert_reason(&data[..40]), None);
    }
}
