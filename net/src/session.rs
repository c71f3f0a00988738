//! The protocol side of one network thread, independent of how bytes move: every connection's
//! state machine (HTTP/1.1 with pipelining, WebSocket after an upgrade, or the binary protocol,
//! told apart by the first bytes), JSON-RPC dispatch, subscriptions fed by the engine, limits and
//! timeouts. The io_uring driver ([`crate::uring`]) and the epoll driver ([`crate::epoll`]) only
//! move bytes in and out of a [`Hub`], so both serve exactly the same protocols.

use crate::{
    binary::{self, ClientMsg, ServerMsg},
    http::{self, Method, Parsed},
    metrics::{ErrorKind, Metrics},
    rpc::{self, Callbacks, Dispatched, Event, Part, Rpc, RpcError, WaitKind},
    subs::{self, SubKind, Subscriptions},
    ws::{self, Opcode},
};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Value};
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use strobe_engine::{
    chain::{MiniBlock, SealedBlock},
    sequencer::Waker,
    tx::RecoveredTx,
};

/// Limits of one network layer; see the README's "Limits" table.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most open connections per network thread; more are answered `503` and closed.
    pub max_connections: usize,
    /// An idle HTTP keep-alive connection, or a WebSocket or binary connection without traffic
    /// (and no feed), is closed after this long.
    pub idle_timeout: Duration,
    /// A request whose bytes started arriving must be complete within this (slowloris): `408`.
    pub request_timeout: Duration,
    /// Most bytes queued for one connection; a subscriber past it is disconnected.
    pub max_outbound_bytes: usize,
    /// How long a disconnected slow subscriber gets to take its close frame before the socket
    /// is closed under it.
    pub slow_close_grace: Duration,
    /// Interval of server pings on WebSocket connections.
    pub ws_ping_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            max_outbound_bytes: 16 << 20,
            slow_close_grace: Duration::from_secs(2),
            ws_ping_interval: Duration::from_secs(30),
        }
    }
}

/// Default most open connections per network thread.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most requests of one connection awaiting their response (pipelining depth).
pub const MAX_PIPELINED: usize = 64;
/// Most submissions of one binary connection waiting for the engine.
pub const MAX_BINARY_IN_FLIGHT: usize = 4096;
/// Most unparsed input kept for one connection: a largest request and some slack. Reading stops
/// there until the buffered requests are served.
const MAX_INPUT_BYTES: usize = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES + 64 * 1024;
/// Capacity of each engine feed into a network thread (mini-blocks, blocks, pending
/// transactions); a thread that falls this far behind resubscribes.
const FEED_CAPACITY: usize = 4096;
/// How often connections are checked against the timeouts.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Wakes a network thread from another thread (an eventfd for both drivers).
pub trait Wake: Send + Sync {
    /// Makes the thread's loop call [`Hub::on_wake`] soon.
    fn wake(&self);
}

/// Wakes coalesced: only the first wake after the hub drained its queues reaches the driver.
struct Doorbell {
    rung: AtomicBool,
    wake: Arc<dyn Wake>,
}

impl Doorbell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.wake.wake();
        }
    }
}

struct Completion {
    slot: u32,
    gen: u32,
    seq: u64,
    part: usize,
    event: Event,
}

/// A binary submission waiting for the engine.
struct BinaryWait {
    tag: u64,
    wait_receipt: bool,
    accepted: bool,
    deadline: Option<Instant>,
}

enum Pending {
    Bytes(Vec<u8>),
    Rpc(Dispatched),
    Binary(BinaryWait),
}

struct Response {
    seq: u64,
    keep_alive: bool,
    body: Pending,
    received: Instant,
    sync_send: bool,
}

/// A connection's unparsed input. Consumed bytes are skipped with an offset and the buffer is
/// compacted once per arrival, so many small pipelined requests cost linear time.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    pos: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.clear();
        }
    }
    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn extend(&mut self, data: &[u8]) {
        // Compact only once at least half the buffer is consumed, so held-back input is moved
        // a bounded number of times.
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }
}

enum Mode {
    /// Nothing read yet: HTTP or the binary preface?
    Sniff,
    Http,
    WebSocket {
        fragments: Option<(Opcode, Vec<u8>)>,
    },
    Binary {
        feed: bool,
    },
}

struct Session {
    gen: u32,
    mode: Mode,
    inbuf: Input,
    out: Vec<u8>,
    responses: VecDeque<Response>,
    next_seq: u64,
    /// Close once `out` is written.
    close_after_flush: bool,
    /// Close now, dropping what is queued.
    kill: bool,
    /// Parse no further requests (after `Connection: close`, an unparsable request or a refused
    /// upgrade): what is queued is answered, then the connection closes.
    no_more_requests: bool,
    /// The peer closed its sending side: answer what was asked, then close.
    read_closed: bool,
    /// This side sent a WebSocket Close first and waits (until `behind_deadline`) for the
    /// client's, reading and dropping everything else (RFC 6455 §7.1.1).
    ws_close_sent: bool,
    /// Closing after the flush: cut the connection if no byte was taken until then.
    flush_deadline: Option<Instant>,
    continue_sent: bool,
    last_input: Instant,
    partial_since: Option<Instant>,
    last_ping: Instant,
    /// Set when the connection was disconnected for falling behind: the deadline to take the
    /// close frame.
    behind_deadline: Option<Instant>,
    dirty: bool,
}

/// What the driver should do with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoWant {
    /// Close the socket now.
    pub close_now: bool,
    /// Close the socket once everything taken with [`Hub::take_output`] is written.
    pub close_after_flush: bool,
    /// Keep receiving (false: backpressure, too many responses queued).
    pub read: bool,
}

/// The protocol state of one network thread.
pub struct Hub {
    rpc: Rpc,
    sessions: Vec<Option<Session>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    open: usize,
    subs: Subscriptions,
    limits: Limits,
    metrics: Arc<Metrics>,
    doorbell: Arc<Doorbell>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32, u64)>>,
    mini_blocks: Receiver<Arc<MiniBlock>>,
    blocks: Receiver<Arc<SealedBlock>>,
    pending: Option<Receiver<Arc<RecoveredTx>>>,
    last_mini_block_us: Option<u64>,
    /// Whether this thread records the mini-block interval (one thread does).
    records_interval: bool,
    next_sweep: Instant,
    dirty: Vec<u32>,
    /// When a refusal at the connection limit was last logged, and how many since.
    refusal_logged: Option<Instant>,
    refused_unlogged: u64,
}

impl Hub {
    /// A hub for thread number `thread`, waking its loop through `wake`.
    pub fn new(
        rpc: Rpc,
        thread: usize,
        limits: Limits,
        metrics: Arc<Metrics>,
        wake: Arc<dyn Wake>,
    ) -> Self {
        let doorbell = Arc::new(Doorbell { rung: AtomicBool::new(false), wake });
        let (done_tx, done_rx) = unbounded();
        let engine = rpc.engine().clone();
        let mini_blocks =
            engine.subscribe_mini_blocks_waking(FEED_CAPACITY, Some(waker(&doorbell)));
        let blocks = engine.subscribe_blocks_waking(FEED_CAPACITY, Some(waker(&doorbell)));
        Self {
            rpc,
            sessions: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            open: 0,
            subs: Subscriptions::new(thread),
            limits,
            metrics,
            doorbell,
            done_tx,
            done_rx,
            deadlines: BinaryHeap::new(),
            mini_blocks,
            blocks,
            pending: None,
            last_mini_block_us: None,
            records_interval: thread == 0,
            next_sweep: Instant::now() + SWEEP_EVERY,
            dirty: Vec::new(),
            refusal_logged: None,
            refused_unlogged: 0,
        }
    }

    /// Registers a new connection; `None` when at the connection limit (the driver writes
    /// [`Hub::refusal`] and closes it).
    pub fn accept(&mut self) -> Option<(u32, u32)> {
        if self.open >= self.limits.max_connections {
            self.metrics.error(ErrorKind::ConnectionLimit);
            // One line per second at most: a flood of refusals must not flood the log.
            self.refused_unlogged += 1;
            let now = Instant::now();
            if self.refusal_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                tracing::warn!(
                    limit = self.limits.max_connections,
                    refused = self.refused_unlogged,
                    "connections refused: connection limit reached"
                );
                self.refusal_logged = Some(now);
                self.refused_unlogged = 0;
            }
            return None;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.sessions.push(None);
                self.gens.push(0);
                (self.sessions.len() - 1) as u32
            }
        };
        let gen = self.gens[slot as usize];
        let now = Instant::now();
        self.sessions[slot as usize] = Some(Session {
            gen,
            mode: Mode::Sniff,
            inbuf: Input::default(),
            out: Vec::new(),
            responses: VecDeque::new(),
            next_seq: 0,
            close_after_flush: false,
            kill: false,
            no_more_requests: false,
            read_closed: false,
            ws_close_sent: false,
            flush_deadline: None,
            continue_sent: false,
            last_input: now,
            partial_since: None,
            last_ping: now,
            behind_deadline: None,
            dirty: false,
        });
        self.open += 1;
        self.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        Some((slot, gen))
    }

    /// The answer to a connection over the limit.
    pub fn refusal() -> Vec<u8> {
        plain("503 Service Unavailable", b"too many connections\n", false)
    }

    /// The driver closed connection `slot`: forget it.
    pub fn closed(&mut self, slot: u32) {
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let dropped = self.subs.remove_connection(slot);
        if matches!(s.mode, Mode::Binary { feed: true }) {
            self.metrics.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.subscriptions_active.fetch_sub(dropped as u64, Ordering::Relaxed);
        self.gens[slot as usize] = (s.gen + 1) & 0x00FF_FFFF;
        self.free.push(slot);
        self.open -= 1;
        self.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        if self.pending.is_some() && !self.subs.wants_pending() {
            // Dropping the receiver ends the engine's feed at its next admission.
            self.pending = None;
        }
    }

    /// The driver wrote some of connection `slot`'s output: a connection closing after its flush
    /// gets a new deadline while the peer keeps taking bytes.
    pub fn sent(&mut self, slot: u32) {
        let timeout = self.limits.request_timeout;
        if let Some(s) = self.session(slot) {
            if s.flush_deadline.is_some() {
                s.flush_deadline = Some(Instant::now() + timeout);
            }
        }
    }

    /// Moves connection `slot`'s queued output to the end of `into`.
    pub fn take_output(&mut self, slot: u32, into: &mut Vec<u8>) {
        if let Some(s) = self.session(slot) {
            into.append(&mut s.out);
        }
    }

    /// Whether connection `slot` has output queued.
    pub fn has_output(&self, slot: u32) -> bool {
        self.sessions.get(slot as usize).and_then(Option::as_ref).is_some_and(|s| !s.out.is_empty())
    }

    /// What the driver should do with connection `slot`.
    pub fn want(&self, slot: u32) -> IoWant {
        match self.sessions.get(slot as usize).and_then(Option::as_ref) {
            None => IoWant { close_now: true, close_after_flush: true, read: false },
            Some(s) => {
                let in_flight = if matches!(s.mode, Mode::Binary { .. }) {
                    MAX_BINARY_IN_FLIGHT
                } else {
                    MAX_PIPELINED
                };
                IoWant {
                    close_now: s.kill,
                    close_after_flush: s.close_after_flush,
                    read: !s.close_after_flush
                        && !s.kill
                        && !s.no_more_requests
                        && !s.read_closed
                        && s.responses.len() < in_flight
                        && s.out.len() < self.limits.max_outbound_bytes
                        && s.inbuf.len() < MAX_INPUT_BYTES,
                }
            }
        }
    }

    /// Connections with new output or a new close decision since the last call.
    pub fn take_dirty(&mut self) -> Vec<u32> {
        let list = std::mem::take(&mut self.dirty);
        for &slot in &list {
            if let Some(s) = self.session(slot) {
                s.dirty = false;
            }
        }
        list
    }

    /// When [`Hub::on_timer`] should run next.
    pub fn next_deadline(&self) -> Instant {
        match self.deadlines.peek() {
            Some(Reverse((d, ..))) => (*d).min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    fn session(&mut self, slot: u32) -> Option<&mut Session> {
        self.sessions.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn mark(&mut self, slot: u32) {
        if let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Bytes arrived on connection `slot`.
    pub fn on_input(&mut self, slot: u32, data: &[u8]) {
        let now = Instant::now();
        let Some(s) = self.session(slot) else { return };
        if s.kill || s.close_after_flush {
            return;
        }
        s.last_input = now;
        if s.inbuf.is_empty() {
            s.partial_since = Some(now);
        }
        s.inbuf.extend(data);
        self.pump(slot);
    }

    /// The peer closed its sending side (end of stream): what it asked is still answered, then
    /// the connection closes.
    pub fn eof(&mut self, slot: u32) {
        let Some(s) = self.session(slot) else { return };
        s.read_closed = true;
        self.pump(slot);
    }

    /// Serves buffered requests and moves ready answers out until neither makes progress, so
    /// requests held back by the pipelining limit go on as soon as answers leave.
    fn pump(&mut self, slot: u32) {
        loop {
            let Some(s) = self.session(slot) else { return };
            let before = (s.inbuf.len(), s.responses.len(), s.out.len());
            self.process(slot);
            self.flush(slot);
            let Some(s) = self.session(slot) else { return };
            if s.inbuf.is_empty() {
                s.partial_since = None;
            }
            if s.read_closed && s.responses.is_empty() && !s.close_after_flush {
                s.close_after_flush = true;
            }
            if (s.inbuf.len(), s.responses.len(), s.out.len()) == before {
                break;
            }
        }
        self.mark(slot);
    }

    /// Parses and serves whatever complete requests connection `slot` has buffered.
    fn process(&mut self, slot: u32) {
        loop {
            let Some(s) = self.session(slot) else { return };
            if s.kill || s.close_after_flush || s.no_more_requests || s.inbuf.is_empty() {
                return;
            }
            let progressed = match s.mode {
                Mode::Sniff => {
                    let n = s.inbuf.len().min(binary::PREFACE.len());
                    if s.inbuf.pending()[..n] != binary::PREFACE[..n] {
                        s.mode = Mode::Http;
                        true
                    } else if n == binary::PREFACE.len() {
                        s.inbuf.consume(n);
                        s.mode = Mode::Binary { feed: false };
                        s.out.extend_from_slice(binary::PREFACE);
                        self.metrics.binary_connections.fetch_add(1, Ordering::Relaxed);
                        true
                    } else {
                        false
                    }
                }
                Mode::Http => self.process_http(slot),
                Mode::WebSocket { .. } => self.process_ws(slot),
                Mode::Binary { .. } => self.process_binary(slot),
            };
            if !progressed {
                return;
            }
        }
    }

    fn process_http(&mut self, slot: u32) -> bool {
        // Field borrows, not `self.session()`: `metrics` stays borrowed beside the session
        // instead of being cloned (an atomic on a count all network threads share) per request.
        let metrics = &*self.metrics;
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        if s.responses.len() >= MAX_PIPELINED {
            return false;
        }
        match http::parse_request(s.inbuf.pending()) {
            Ok(Parsed::Partial { expect_continue }) => {
                if expect_continue && !s.continue_sent && s.responses.is_empty() {
                    s.out.extend_from_slice(http::CONTINUE);
                    s.continue_sent = true;
                }
                false
            }
            Ok(Parsed::Complete(req, used)) => {
                s.inbuf.consume(used);
                s.continue_sent = false;
                s.partial_since = (!s.inbuf.is_empty()).then(Instant::now);
                let seq = s.next_seq;
                s.next_seq += 1;
                let keep_alive = req.keep_alive;
                if let Some(key) =
                    req.websocket_key.as_deref().filter(|_| req.method == Method::Get)
                {
                    if !s.responses.is_empty() {
                        // Answered in its turn, after the requests before it.
                        s.no_more_requests = true;
                        s.inbuf.clear();
                        s.partial_since = None;
                        let refusal = plain(
                            "400 Bad Request",
                            b"upgrade while requests are pending\n",
                            false,
                        );
                        self.push_response(slot, seq, false, Pending::Bytes(refusal));
                        return false;
                    }
                    s.out.extend_from_slice(&ws::handshake_response(key));
                    s.mode = Mode::WebSocket { fragments: None };
                    metrics.websocket_upgrades.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                if !keep_alive {
                    // Requests after one that closes the connection are never answered: don't
                    // run them, and don't hold their bytes (a 408 must not replace the answer).
                    s.no_more_requests = true;
                    s.inbuf.clear();
                    s.partial_since = None;
                }
                let body = match req.method {
                    Method::Post => {
                        metrics.http_calls.fetch_add(1, Ordering::Relaxed);
                        let d = self.dispatch_rpc(slot, seq, &req.body, false);
                        Pending::Rpc(d)
                    }
                    Method::Options => Pending::Bytes(plain("204 No Content", b"", keep_alive)),
                    Method::Get => Pending::Bytes(plain("200 OK", b"strobe ok\n", keep_alive)),
                    Method::Head => {
                        // The head a GET would get, without its body.
                        let mut head = plain("200 OK", b"strobe ok\n", keep_alive);
                        head.truncate(head.len() - b"strobe ok\n".len());
                        Pending::Bytes(head)
                    }
                    Method::Other => {
                        Pending::Bytes(plain("405 Method Not Allowed", b"use POST\n", keep_alive))
                    }
                };
                self.push_response(slot, seq, keep_alive, body);
                true
            }
            Err(e) => {
                let kind = match e {
                    http::HttpError::HeadTooLarge => ErrorKind::HeaderTooLarge,
                    http::HttpError::BodyTooLarge(_) => ErrorKind::BodyTooLarge,
                    _ => ErrorKind::BadRequest,
                };
                metrics.error(kind);
                tracing::debug!(error = %e, "bad HTTP request");
                let seq = s.next_seq;
                s.next_seq += 1;
                s.inbuf.clear();
                s.no_more_requests = true;
                let msg = format!("{e}\n");
                let body = Pending::Bytes(plain(e.status(), msg.as_bytes(), false));
                self.push_response(slot, seq, false, body);
                false
            }
        }
    }

    fn push_response(&mut self, slot: u32, seq: u64, keep_alive: bool, body: Pending) {
        let sync_send = matches!(&body, Pending::Rpc(d) if d.parts.iter().any(|p| matches!(p, Part::Waiting { kind: WaitKind::Sync(_) | WaitKind::Realtime(_), .. })))
            || matches!(&body, Pending::Binary(b) if b.wait_receipt);
        let deadline = match &body {
            Pending::Rpc(d) => d.next_deadline(),
            Pending::Binary(b) => b.deadline,
            Pending::Bytes(_) => None,
        };
        let Some(s) = self.session(slot) else { return };
        let gen = s.gen;
        s.responses.push_back(Response {
            seq,
            keep_alive,
            body,
            received: Instant::now(),
            sync_send,
        });
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, slot, gen, seq)));
        }
    }

    fn callbacks(&self, slot: u32, gen: u32, seq: u64) -> impl Fn(usize) -> Callbacks {
        let tx = self.done_tx.clone();
        let bell = self.doorbell.clone();
        move |part: usize| {
            let (tx2, bell2) = (tx.clone(), bell.clone());
            let (tx3, bell3) = (tx.clone(), bell.clone());
            Callbacks {
                on_accept: Box::new(move |r| {
                    let _ =
                        tx2.send(Completion { slot, gen, seq, part, event: Event::Accepted(r) });
                    bell2.ring();
                }),
                on_receipt: Box::new(move |r| {
                    let _ =
                        tx3.send(Completion { slot, gen, seq, part, event: Event::Included(r) });
                    bell3.ring();
                }),
            }
        }
    }

    fn dispatch_rpc(&mut self, slot: u32, seq: u64, body: &[u8], websocket: bool) -> Dispatched {
        let gen = self.sessions[slot as usize].as_ref().map_or(0, |s| s.gen);
        let callbacks = self.callbacks(slot, gen, seq);
        self.rpc.set_route(slot as usize);
        let metrics = &*self.metrics;
        let subs = &mut self.subs;
        let mut wants_pending = false;
        let dispatched = if websocket {
            self.rpc.dispatch_with(body, &callbacks, &mut |method, params| match method {
                "eth_subscribe" => Some(SubKind::parse(params).and_then(|kind| {
                    let pending = matches!(kind, SubKind::NewPendingTransactions { .. });
                    let r = subs.add(slot, gen, kind);
                    match &r {
                        Ok(_) => {
                            wants_pending |= pending;
                            metrics.subscriptions_active.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.code == -32005 => metrics.error(ErrorKind::SubscriptionLimit),
                        Err(_) => {}
                    }
                    r.map(Value::String)
                })),
                "eth_unsubscribe" => Some(match params.first().and_then(Value::as_str) {
                    Some(id) => {
                        let removed = subs.remove(slot, id);
                        if removed {
                            metrics.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
                        }
                        Ok(json!(removed))
                    }
                    None => Err(RpcError::invalid_params("expected a subscription id")),
                }),
                _ => None,
            })
        } else {
            self.rpc.dispatch(body, &callbacks)
        };
        if dispatched.batch_too_large {
            metrics.error(ErrorKind::BatchTooLarge);
        }
        if wants_pending && self.pending.is_none() {
            let engine = self.rpc.engine().clone();
            self.pending =
                Some(engine.subscribe_pending(FEED_CAPACITY, Some(waker(&self.doorbell))));
        }
        dispatched
    }

    fn process_ws(&mut self, slot: u32) -> bool {
        let metrics = &*self.metrics;
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        let (frame, used) = match ws::parse_client_frame(s.inbuf.pending()) {
            Ok(None) => return false,
            Ok(Some(f)) => f,
            Err(e) => {
                if s.ws_close_sent {
                    // Already closing: the stream cannot be read any further.
                    s.inbuf.clear();
                    s.close_after_flush = true;
                    return false;
                }
                metrics.error(match e {
                    ws::FrameError::TooBig(_) => ErrorKind::WsTooBig,
                    ws::FrameError::Protocol(_) => ErrorKind::WsProtocol,
                });
                tracing::debug!(error = %e, "closing a WebSocket");
                close_ws(s, e.close_code(), &e.to_string());
                s.inbuf.clear();
                return false;
            }
        };
        s.inbuf.consume(used);
        if s.ws_close_sent {
            // Waiting for the client's Close: it ends the connection, everything else is dropped.
            if frame.opcode == Opcode::Close {
                s.inbuf.clear();
                s.close_after_flush = true;
                return false;
            }
            return true;
        }
        let Mode::WebSocket { fragments } = &mut s.mode else { return false };
        let message = match frame.opcode {
            Opcode::Ping => {
                ws::write_frame(&mut s.out, Opcode::Pong, &frame.payload);
                return true;
            }
            Opcode::Pong => return true,
            Opcode::Close => {
                match ws::close_code(&frame.payload) {
                    // The client closes first: echo its code and close once it is written.
                    Ok(code) => {
                        flush_ready_ws(s);
                        ws::write_close(&mut s.out, code, "");
                        s.close_after_flush = true;
                        s.inbuf.clear();
                    }
                    Err(e) => {
                        metrics.error(ErrorKind::WsProtocol);
                        close_ws(s, e.close_code(), &e.to_string());
                        s.inbuf.clear();
                    }
                }
                return false;
            }
            Opcode::Text | Opcode::Binary => {
                if fragments.is_some() {
                    metrics.error(ErrorKind::WsProtocol);
                    close_ws(s, ws::CLOSE_PROTOCOL, "new message inside a fragmented one");
                    return false;
                }
                if frame.fin {
                    (frame.opcode, frame.payload)
                } else {
                    *fragments = Some((frame.opcode, frame.payload));
                    return true;
                }
            }
            Opcode::Continuation => {
                let Some((op, mut buf)) = fragments.take() else {
                    metrics.error(ErrorKind::WsProtocol);
                    close_ws(s, ws::CLOSE_PROTOCOL, "continuation without a message");
                    return false;
                };
                if buf.len() + frame.payload.len() > ws::MAX_MESSAGE_BYTES {
                    metrics.error(ErrorKind::WsTooBig);
                    close_ws(s, ws::CLOSE_TOO_BIG, "message too big");
                    return false;
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    (op, buf)
                } else {
                    *fragments = Some((op, buf));
                    return true;
                }
            }
        };
        let (op, payload) = message;
        if op == Opcode::Text && std::str::from_utf8(&payload).is_err() {
            metrics.error(ErrorKind::WsProtocol);
            close_ws(s, ws::CLOSE_INVALID_DATA, "text message is not UTF-8");
            return false;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        metrics.ws_calls.fetch_add(1, Ordering::Relaxed);
        let d = self.dispatch_rpc(slot, seq, &payload, true);
        self.push_response(slot, seq, true, Pending::Rpc(d));
        true
    }

    fn process_binary(&mut self, slot: u32) -> bool {
        let metrics = &*self.metrics;
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        let parsed = binary::parse_frame(s.inbuf.pending()).and_then(|f| {
            f.map(|(kind, body, used)| Ok((binary::decode_client(kind, body)?, used))).transpose()
        });
        let (msg, used) = match parsed {
            Ok(None) => return false,
            Ok(Some(m)) => m,
            Err(e) => {
                metrics.error(ErrorKind::BinaryMalformed);
                binary::encode_server(
                    &ServerMsg::Error { code: e.code(), message: e.to_string() },
                    &mut s.out,
                );
                s.close_after_flush = true;
                s.inbuf.clear();
                return false;
            }
        };
        s.inbuf.consume(used);
        metrics.binary_frames.fetch_add(1, Ordering::Relaxed);
        match msg {
            ClientMsg::Ping(v) => binary::encode_server(&ServerMsg::Pong(v), &mut s.out),
            ClientMsg::Subscribe { feeds } => {
                let want = feeds & binary::FEED_MINI_BLOCKS != 0;
                if let Mode::Binary { feed } = &mut s.mode {
                    if *feed != want {
                        if want {
                            metrics.subscriptions_active.fetch_add(1, Ordering::Relaxed);
                        } else {
                            metrics.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    *feed = want;
                }
            }
            ClientMsg::Submit { tag, flags, raw } => {
                if s.responses.len() >= MAX_BINARY_IN_FLIGHT {
                    binary::encode_server(
                        &ServerMsg::Rejected {
                            tag,
                            code: -32005,
                            message: "too many submissions waiting on this connection".into(),
                        },
                        &mut s.out,
                    );
                    return true;
                }
                let seq = s.next_seq;
                s.next_seq += 1;
                let gen = s.gen;
                let wait_receipt = flags & binary::SUBMIT_WAIT_RECEIPT != 0;
                let sync = wait_receipt.then_some((true, rpc::REALTIME_TIMEOUT));
                let cb = self.callbacks(slot, gen, seq);
                self.rpc.set_route(slot as usize);
                match self.rpc.submit_raw(raw.into(), sync, &|| cb(0)) {
                    Ok((_, deadline)) => {
                        let wait = BinaryWait { tag, wait_receipt, accepted: false, deadline };
                        self.push_response(slot, seq, true, Pending::Binary(wait));
                    }
                    Err(e) => {
                        let s = self.session(slot).expect("live");
                        binary::encode_server(&rejected(tag, &e), &mut s.out);
                    }
                }
            }
        }
        true
    }

    /// Drains engine callbacks and feeds; call when the driver's wake descriptor fires.
    pub fn on_wake(&mut self) {
        self.doorbell.rung.store(false, Ordering::Release);
        let done: Vec<Completion> = self.done_rx.try_iter().collect();
        for d in done {
            self.complete(d);
        }
        self.drain_feeds();
    }

    fn complete(&mut self, d: Completion) {
        let rpc = &self.rpc;
        let Some(s) = self.sessions.get_mut(d.slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if s.gen != d.gen {
            return;
        }
        let Some(pos) = s.responses.iter().position(|r| r.seq == d.seq) else { return };
        let resp = &mut s.responses[pos];
        let changed = match &mut resp.body {
            Pending::Rpc(dispatched) => match dispatched.parts.get_mut(d.part) {
                Some(part) => rpc.complete(part, d.event),
                None => false,
            },
            Pending::Binary(wait) => {
                let tag = wait.tag;
                let (msg, finished) = match d.event {
                    Event::Accepted(Ok(hash)) => {
                        wait.accepted = true;
                        (Some(ServerMsg::Accepted { tag, hash }), !wait.wait_receipt)
                    }
                    Event::Accepted(Err(e)) | Event::Included(Err(e)) => {
                        (Some(rejected(tag, &rpc::tx_error(&e))), true)
                    }
                    Event::Included(Ok(inc)) => (
                        Some(ServerMsg::Receipt { tag, receipt: binary::compact_receipt(&inc) }),
                        true,
                    ),
                };
                if let Some(m) = msg {
                    binary::encode_server(&m, &mut s.out);
                }
                if finished {
                    let r = s.responses.remove(pos).expect("found");
                    if r.sync_send {
                        self.metrics.sync_send_latency.observe(r.received.elapsed());
                    }
                }
                true
            }
            Pending::Bytes(_) => false,
        };
        if changed {
            self.pump(d.slot);
        }
    }

    fn drain_feeds(&mut self) {
        loop {
            match self.mini_blocks.try_recv() {
                Ok(m) => self.publish_mini_block(&m),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    tracing::warn!("network thread fell behind the mini-block feed; resubscribing");
                    let engine = self.rpc.engine().clone();
                    self.mini_blocks = engine
                        .subscribe_mini_blocks_waking(FEED_CAPACITY, Some(waker(&self.doorbell)));
                    break;
                }
            }
        }
        loop {
            match self.blocks.try_recv() {
                Ok(b) => self.publish_block(&b),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    let engine = self.rpc.engine().clone();
                    self.blocks =
                        engine.subscribe_blocks_waking(FEED_CAPACITY, Some(waker(&self.doorbell)));
                    break;
                }
            }
        }
        let pending: Vec<Arc<RecoveredTx>> =
            self.pending.as_ref().map(|p| p.try_iter().collect()).unwrap_or_default();
        for tx in pending {
            self.publish_pending(&tx);
        }
    }

    fn publish_mini_block(&mut self, mini: &Arc<MiniBlock>) {
        if self.records_interval {
            if let Some(prev) = self.last_mini_block_us {
                let gap = mini.timestamp_us.saturating_sub(prev);
                self.metrics.mini_block_interval.observe(Duration::from_micros(gap));
            }
            self.last_mini_block_us = Some(mini.timestamp_us);
        }
        let binary_frame = {
            let feeders: Vec<u32> = self.binary_feeds();
            if feeders.is_empty() {
                None
            } else {
                let mut frame = Vec::new();
                binary::encode_server(
                    &ServerMsg::MiniBlock(binary::MiniBlockFrame::from_engine(mini)),
                    &mut frame,
                );
                for slot in &feeders {
                    self.send_feed(*slot, &frame);
                }
                Some(())
            }
        };
        let _ = binary_frame;
        if self.subs.is_empty() {
            return;
        }
        let view = self.rpc.engine().view();
        let mut out = Deliveries::default();
        let mut mini_payload: Option<usize> = None;
        for sub in self.subs.iter() {
            match &sub.kind {
                SubKind::MiniBlocks => {
                    let p = *mini_payload.get_or_insert_with(|| {
                        out.payload(subs::mini_block_payload(&view, mini).to_string())
                    });
                    out.to(sub, p);
                }
                SubKind::Logs(filter) => {
                    for log in subs::log_payloads(&view, mini, filter) {
                        let p = out.payload(log.to_string());
                        out.to(sub, p);
                    }
                }
                SubKind::StateChanges(watch) => {
                    for change in subs::state_change_payloads(mini, watch.as_ref()) {
                        let p = out.payload(change.to_string());
                        out.to(sub, p);
                    }
                }
                SubKind::NewHeads | SubKind::NewPendingTransactions { .. } => {}
            }
        }
        self.deliver(out);
    }

    fn publish_block(&mut self, block: &Arc<SealedBlock>) {
        let mut out = Deliveries::default();
        let mut payload: Option<usize> = None;
        for sub in self.subs.iter() {
            if let SubKind::NewHeads = sub.kind {
                let p = *payload
                    .get_or_insert_with(|| out.payload(subs::new_head_payload(block).to_string()));
                out.to(sub, p);
            }
        }
        self.deliver(out);
    }

    fn publish_pending(&mut self, tx: &Arc<RecoveredTx>) {
        let mut out = Deliveries::default();
        let (mut hash, mut full) = (None, None);
        for sub in self.subs.iter() {
            if let SubKind::NewPendingTransactions { full: want_full } = sub.kind {
                let p = if want_full {
                    *full.get_or_insert_with(|| {
                        out.payload(crate::format::pooled_transaction(tx).to_string())
                    })
                } else {
                    *hash.get_or_insert_with(|| out.payload(format!("\"{}\"", tx.hash)))
                };
                out.to(sub, p);
            }
        }
        self.deliver(out);
    }

    fn binary_feeds(&self) -> Vec<u32> {
        self.sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Some(Session {
                    mode: Mode::Binary { feed: true },
                    kill: false,
                    close_after_flush: false,
                    ..
                }) => Some(i as u32),
                _ => None,
            })
            .collect()
    }

    fn send_feed(&mut self, slot: u32, frame: &[u8]) {
        let limit = self.limits.max_outbound_bytes;
        let grace = self.limits.slow_close_grace;
        let metrics = &*self.metrics;
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if s.out.len() + frame.len() > limit {
            cut_off_slow(s, slot, metrics, grace);
        } else {
            s.out.extend_from_slice(frame);
            metrics.notifications.fetch_add(1, Ordering::Relaxed);
        }
        self.mark(slot);
    }

    /// Writes each notification straight into its connection's output as one text frame (the
    /// payload, serialized once, is shared by every subscriber it goes to).
    fn deliver(&mut self, deliveries: Deliveries) {
        let limit = self.limits.max_outbound_bytes;
        let grace = self.limits.slow_close_grace;
        let mut sent = 0u64;
        for d in &deliveries.items {
            let payload = deliveries.payloads[d.payload].as_bytes();
            let Some(s) = self.sessions.get_mut(d.slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if s.gen != d.gen || s.close_after_flush || s.kill || s.ws_close_sent {
                continue;
            }
            let len = subs::notification_len(payload.len());
            if s.out.len() + len > limit {
                cut_off_slow(s, d.slot, &self.metrics, grace);
            } else {
                ws::write_frame_header(&mut s.out, Opcode::Text, len);
                subs::write_notification(&mut s.out, &d.id, payload);
                sent += 1;
            }
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(d.slot);
            }
        }
        self.metrics.notifications.fetch_add(sent, Ordering::Relaxed);
    }

    /// Expires waiting calls and enforces timeouts; call when [`Hub::next_deadline`] passes.
    pub fn on_timer(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((d, slot, gen, seq))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            let rpc = &self.rpc;
            let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if s.gen != gen {
                continue;
            }
            let Some(pos) = s.responses.iter().position(|r| r.seq == seq) else { continue };
            match &mut s.responses[pos].body {
                Pending::Rpc(dispatched) => {
                    rpc.expire(&mut dispatched.parts, now);
                    if let Some(next) = dispatched.next_deadline() {
                        self.deadlines.push(Reverse((next, slot, gen, seq)));
                    }
                }
                Pending::Binary(wait) => {
                    let message = if wait.accepted {
                        "realtime transaction expired"
                    } else {
                        "sequencer did not answer in time"
                    };
                    let tag = wait.tag;
                    binary::encode_server(
                        &rejected(tag, &RpcError::new(-32000, message)),
                        &mut s.out,
                    );
                    s.responses.remove(pos);
                }
                Pending::Bytes(_) => {}
            }
            self.pump(slot);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let limits = self.limits.clone();
        let metrics = self.metrics.clone();
        let mut touched = Vec::new();
        for (i, s) in self.sessions.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if s.kill {
                continue;
            }
            if let Some(d) = s.behind_deadline {
                if now >= d {
                    s.kill = true;
                    touched.push(i as u32);
                }
                continue;
            }
            if s.close_after_flush {
                // A peer that never takes its last answer (zero window) must not hold the slot;
                // one that keeps taking it gets more time (see `Hub::sent`).
                match s.flush_deadline {
                    None => s.flush_deadline = Some(now + limits.request_timeout),
                    Some(d) if now >= d => {
                        s.kill = true;
                        touched.push(i as u32);
                    }
                    Some(_) => {}
                }
                continue;
            }
            let idle = now.duration_since(s.last_input);
            match s.mode {
                Mode::Sniff | Mode::Http => {
                    if let Some(since) = s.partial_since.filter(|_| !s.inbuf.is_empty()) {
                        if now.duration_since(since) >= limits.request_timeout {
                            metrics.error(ErrorKind::RequestTimeout);
                            s.inbuf.clear();
                            s.responses.clear();
                            s.out.extend(plain(
                                "408 Request Timeout",
                                b"request not completed in time\n",
                                false,
                            ));
                            s.close_after_flush = true;
                            touched.push(i as u32);
                        }
                    } else if s.responses.is_empty() && idle >= limits.idle_timeout {
                        metrics.error(ErrorKind::IdleTimeout);
                        s.kill = true;
                        touched.push(i as u32);
                    }
                }
                Mode::WebSocket { .. } => {
                    if idle >= limits.idle_timeout {
                        metrics.error(ErrorKind::IdleTimeout);
                        close_ws(s, ws::CLOSE_POLICY, "idle timeout");
                        s.behind_deadline = Some(now + limits.slow_close_grace);
                        touched.push(i as u32);
                    } else if now.duration_since(s.last_ping) >= limits.ws_ping_interval {
                        s.last_ping = now;
                        ws::write_frame(&mut s.out, Opcode::Ping, b"strobe");
                        touched.push(i as u32);
                    }
                }
                Mode::Binary { feed } => {
                    if !feed && s.responses.is_empty() && idle >= limits.idle_timeout {
                        metrics.error(ErrorKind::IdleTimeout);
                        binary::encode_server(
                            &ServerMsg::Error {
                                code: binary::ERROR_IDLE,
                                message: "idle timeout".into(),
                            },
                            &mut s.out,
                        );
                        s.close_after_flush = true;
                        s.behind_deadline = Some(now + limits.slow_close_grace);
                        touched.push(i as u32);
                    }
                }
            }
        }
        for slot in touched {
            self.mark(slot);
        }
        self.compact_deadlines();
    }

    /// Drops deadlines of calls already answered once they outnumber the calls still waiting
    /// (each send leaves one behind, and most are answered long before it).
    fn compact_deadlines(&mut self) {
        let responses: usize = self.sessions.iter().flatten().map(|s| s.responses.len()).sum();
        if self.deadlines.len() < 4096 || self.deadlines.len() <= 2 * responses {
            return;
        }
        let waiting: std::collections::HashSet<(u32, u32, u64)> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s)))
            .flat_map(|(i, s)| s.responses.iter().map(move |r| (i, s.gen, r.seq)))
            .collect();
        if self.deadlines.len() > 2 * waiting.len() {
            self.deadlines
                .retain(|Reverse((_, slot, gen, seq))| waiting.contains(&(*slot, *gen, *seq)));
        }
    }

    /// Moves every ready response into the output: HTTP in request order, WebSocket and binary
    /// answers as soon as each is ready.
    fn flush(&mut self, slot: u32) {
        let metrics = &*self.metrics;
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let in_order = matches!(s.mode, Mode::Http | Mode::Sniff);
        let mut i = 0;
        while i < s.responses.len() {
            let resp = &s.responses[i];
            let ready = match &resp.body {
                Pending::Bytes(_) => true,
                Pending::Rpc(d) => d.is_ready(),
                Pending::Binary(_) => false,
            };
            if !ready {
                if in_order {
                    break;
                }
                i += 1;
                continue;
            }
            let resp = s.responses.remove(i).expect("in range");
            if resp.sync_send {
                metrics.sync_send_latency.observe(resp.received.elapsed());
            }
            match resp.body {
                Pending::Bytes(b) => s.out.extend_from_slice(&b),
                Pending::Rpc(d) => {
                    if matches!(s.mode, Mode::WebSocket { .. }) {
                        write_ws_reply(&mut s.out, &d);
                    } else {
                        let body = d.body();
                        http::write_response(
                            &mut s.out,
                            "200 OK",
                            "application/json",
                            &body,
                            resp.keep_alive,
                        );
                    }
                }
                Pending::Binary(_) => {}
            }
            if in_order && !resp.keep_alive {
                s.close_after_flush = true;
                s.responses.clear();
                break;
            }
        }
    }

    /// Closes every connection politely (server shutdown): WebSocket clients get 1001.
    pub fn shutdown(&mut self) {
        for i in 0..self.sessions.len() {
            if let Some(s) = self.sessions[i].as_mut() {
                if matches!(s.mode, Mode::WebSocket { .. }) && !s.close_after_flush {
                    close_ws(s, ws::CLOSE_GOING_AWAY, "server shutting down");
                }
                s.close_after_flush = true;
                self.mark(i as u32);
            }
        }
    }
}

/// Notifications to write: payloads serialized once, and who gets which.
#[derive(Default)]
struct Deliveries {
    payloads: Vec<String>,
    items: Vec<Delivery>,
}

struct Delivery {
    slot: u32,
    gen: u32,
    id: [u8; subs::ID_TEXT_LEN],
    payload: usize,
}

impl Deliveries {
    fn payload(&mut self, p: String) -> usize {
        self.payloads.push(p);
        self.payloads.len() - 1
    }

    fn to(&mut self, sub: &subs::Sub, payload: usize) {
        let mut id = [0u8; subs::ID_TEXT_LEN];
        id.copy_from_slice(sub.id_text.as_bytes());
        self.items.push(Delivery { slot: sub.slot, gen: sub.gen, id, payload });
    }
}

/// Disconnects a subscriber (WebSocket or binary feed) whose queued output would pass the
/// limit: what it has not taken is dropped (`out` holds whole frames only; what is being sent was
/// taken already, so the cut is at a frame boundary), it gets its protocol's goodbye (close 1008,
/// or error frame 3), and `grace` to take it before the socket is closed under it.
fn cut_off_slow(s: &mut Session, slot: u32, metrics: &Metrics, grace: Duration) {
    metrics.error(ErrorKind::SlowConsumer);
    let is_binary = matches!(s.mode, Mode::Binary { .. });
    tracing::warn!(
        slot,
        binary = is_binary,
        queued = s.out.len(),
        "disconnecting a subscriber that fell behind"
    );
    s.out.clear();
    if is_binary {
        let goodbye = ServerMsg::Error {
            code: binary::ERROR_TOO_SLOW,
            message: "fell behind the feed".into(),
        };
        binary::encode_server(&goodbye, &mut s.out);
        s.close_after_flush = true;
    } else {
        close_ws(s, ws::CLOSE_POLICY, "subscriber fell behind");
    }
    s.behind_deadline = Some(Instant::now() + grace);
}

/// Before a Close goes out: answers already made go first, and those still waiting are dropped
/// (nothing may follow a Close frame).
fn flush_ready_ws(s: &mut Session) {
    for resp in s.responses.drain(..) {
        if let Pending::Rpc(d) = &resp.body {
            if d.is_ready() {
                write_ws_reply(&mut s.out, d);
            }
        }
    }
}

/// A ready JSON-RPC answer as one text frame (notification-only requests have none).
fn write_ws_reply(out: &mut Vec<u8>, d: &Dispatched) {
    let body = d.body();
    if !body.is_empty() {
        ws::write_frame(out, Opcode::Text, &body);
    }
}

/// How long the server waits for the client's Close after sending its own.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Starts the closing handshake from this side: sends Close with `code` and keeps reading until
/// the client's Close (then the connection closes) or [`CLOSE_HANDSHAKE_WAIT`] (then it is cut).
/// Waiting lets clients read the code instead of seeing the socket vanish (1006).
fn close_ws(s: &mut Session, code: u16, reason: &str) {
    if s.ws_close_sent || s.close_after_flush {
        return;
    }
    flush_ready_ws(s);
    ws::write_close(&mut s.out, code, reason);
    s.ws_close_sent = true;
    s.behind_deadline.get_or_insert(Instant::now() + CLOSE_HANDSHAKE_WAIT);
}

fn rejected(tag: u64, e: &RpcError) -> ServerMsg {
    ServerMsg::Rejected { tag, code: e.code as i32, message: e.message.clone() }
}

fn waker(bell: &Arc<Doorbell>) -> Waker {
    let bell = bell.clone();
    Arc::new(move || bell.ring())
}

fn plain(status: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    http::write_response(&mut out, status, "text/plain", body, keep_alive);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;
    use strobe_engine::{
        config::{ChainConfig, Genesis},
        storage::MemoryStore,
        Engine,
    };

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn engine() -> Arc<Engine> {
        static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
        ENGINE
            .get_or_init(|| {
                let e = Engine::start(
                    ChainConfig::default(),
                    &Genesis::default(),
                    Box::new(MemoryStore::new()),
                )
                .unwrap();
                Arc::new(e)
            })
            .clone()
    }

    fn hub(limits: Limits) -> Hub {
        let rpc = Rpc::new(engine(), Vec::new());
        Hub::new(rpc, 0, limits, Arc::new(Metrics::default()), Arc::new(NoWake))
    }

    /// What a driver may do to the hub, on connection `usize` (taken modulo the open ones).
    #[derive(Clone, Debug)]
    enum Op {
        Accept,
        Input(usize, Vec<u8>),
        Eof(usize),
        Drain(usize),
        Close(usize),
        Wake,
        Timer,
    }

    /// Inputs that get past each protocol's door: parts of real requests, upgrades, frames and
    /// the binary preface, and random bytes.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#;
        let mut http =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", call.len()).into_bytes();
        http.extend_from_slice(call);
        let upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
        let mut frame = vec![0x81, 0x80 | call.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(call);
        let sub = br#"{"jsonrpc":"2.0","id":2,"method":"eth_subscribe","params":["miniBlocks"]}"#;
        let mut subscribe = vec![0x81, 0x80 | sub.len() as u8, 0, 0, 0, 0];
        subscribe.extend_from_slice(sub);
        let mut binary = b"STROBE\x00\x01".to_vec();
        crate::binary::encode_client(&crate::binary::ClientMsg::Ping(7), &mut binary);
        crate::binary::encode_client(
            &crate::binary::ClientMsg::Subscribe { feeds: 1 },
            &mut binary,
        );
        let pieces = vec![http, upgrade, frame, subscribe, binary, b"\x88\x80\0\0\0\0".to_vec()];
        prop_oneof![
            proptest::sample::select(pieces.clone()),
            (proptest::sample::select(pieces), any::<prop::sample::Index>())
                .prop_map(|(p, cut)| p[..cut.index(p.len() + 1)].to_vec()),
            proptest::collection::vec(any::<u8>(), 0..200),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Accept),
            6 => (any::<usize>(), input()).prop_map(|(c, b)| Op::Input(c, b)),
            1 => any::<usize>().prop_map(Op::Eof),
            3 => any::<usize>().prop_map(Op::Drain),
            1 => any::<usize>().prop_map(Op::Close),
            1 => Just(Op::Wake),
            1 => Just(Op::Timer),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Any sequence of driver events leaves the hub consistent: no panic, the connection
        /// count right, closed connections forgotten, output bounded by the queue limit (plus one
        /// answer), and a connection the hub wants closed stays closed to input.
        #[test]
        fn driver_events_keep_the_hub_consistent(ops in proptest::collection::vec(op(), 1..60)) {
            let limits = Limits { max_connections: 4, max_outbound_bytes: 64 * 1024, ..Limits::default() };
            let mut h = hub(limits.clone());
            let mut open: Vec<u32> = Vec::new();
            for op in ops {
                let pick = |i: usize| (!open.is_empty()).then(|| open[i % open.len()]);
                match op {
                    Op::Accept => match h.accept() {
                        Some((slot, _)) => {
                            prop_assert!(open.len() < limits.max_connections);
                            prop_assert!(!open.contains(&slot), "slot {} handed out twice", slot);
                            open.push(slot);
                        }
                        None => prop_assert_eq!(open.len(), limits.max_connections),
                    },
                    Op::Input(i, bytes) => {
                        if let Some(slot) = pick(i) {
                            if h.want(slot).read {
                                h.on_input(slot, &bytes);
                            }
                        }
                    }
                    Op::Eof(i) => {
                        if let Some(slot) = pick(i) {
                            h.eof(slot);
                            prop_assert!(!h.want(slot).read, "reading after end of stream");
                        }
                    }
                    Op::Drain(i) => {
                        if let Some(slot) = pick(i) {
                            let mut out = Vec::new();
                            h.take_output(slot, &mut out);
                            prop_assert!(out.len() <= limits.max_outbound_bytes + 64 * 1024);
                            let want = h.want(slot);
                            if want.close_now || (want.close_after_flush && !h.has_output(slot)) {
                                h.closed(slot);
                                open.retain(|s| *s != slot);
                            }
                        }
                    }
                    Op::Close(i) => {
                        if let Some(slot) = pick(i) {
                            h.closed(slot);
                            open.retain(|s| *s != slot);
                        }
                    }
                    Op::Wake => h.on_wake(),
                    Op::Timer => h.on_timer(),
                }
                prop_assert_eq!(h.open, open.len());
                let _ = h.take_dirty();
            }
            for slot in open {
                h.closed(slot);
            }
            prop_assert_eq!(h.open, 0);
            prop_assert!(h.subs.is_empty(), "subscriptions outlived their connections");
        }
    }
}
