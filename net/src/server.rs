//! The io_uring HTTP/1.1 server: one ring on one thread.
//!
//! Accepts (multishot), receives into per-connection buffers, parses requests ([`crate::http`]),
//! dispatches JSON-RPC ([`crate::rpc`]) and writes responses in request order (pipelining).
//! Engine callbacks arrive from the sequencer thread over a channel and wake the ring through an
//! eventfd, so a waiting `eth_sendRawTransactionSync` costs no thread.

use crate::{
    http::{self, Method, Parsed},
    rpc::{Callbacks, Dispatched, Event, Rpc},
};
use crossbeam_channel::{unbounded, Receiver, Sender};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    io,
    net::TcpListener,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use strobe_engine::Engine;

/// Most open connections; further ones get `503` and are closed.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most requests of one connection awaiting their response (pipelining depth).
pub const MAX_PIPELINED: usize = 64;
/// Bytes read per receive.
const RECV_CHUNK_BYTES: usize = 64 * 1024;
/// Submission queue entries.
const RING_ENTRIES: u32 = 1024;
/// Longest the ring sleeps before checking the stop flag and deadlines.
const MAX_WAIT: Duration = Duration::from_millis(50);

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_WAKE: u64 = 4;

fn user_data(op: u64, slot: u32, gen: u32) -> u64 {
    (op << 56) | (((gen & 0x00FF_FFFF) as u64) << 32) | slot as u64
}

fn split(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, ((ud >> 32) & 0x00FF_FFFF) as u32, ud as u32)
}

/// An eventfd that stays open while any engine callback can still write to it.
struct EventFd(RawFd);

impl EventFd {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is owned by the new value.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor this value owns.
        let _ = unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed exactly once.
        unsafe { libc::close(self.0) };
    }
}

struct Completion {
    slot: u32,
    gen: u32,
    seq: u64,
    part: usize,
    event: Event,
}

enum Pending {
    Bytes(Vec<u8>),
    Rpc(Dispatched),
}

struct Response {
    seq: u64,
    keep_alive: bool,
    body: Pending,
}

struct Conn {
    fd: RawFd,
    gen: u32,
    inbuf: Vec<u8>,
    recv_buf: Box<[u8]>,
    recv_armed: bool,
    sending: Vec<u8>,
    sent: usize,
    send_armed: bool,
    out: Vec<u8>,
    responses: VecDeque<Response>,
    next_seq: u64,
    close_after_flush: bool,
    closing: bool,
    continue_sent: bool,
}

/// The server's state, owned by its thread.
pub struct Server {
    ring: IoUring,
    listener: TcpListener,
    conns: Vec<Option<Box<Conn>>>,
    free: Vec<u32>,
    gens: Vec<u32>,
    open: usize,
    rpc: Rpc,
    wake: Arc<EventFd>,
    wake_buf: Box<[u8; 8]>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32, u64)>>,
}

impl Server {
    /// Sets up a ring serving `listener`. Fails when io_uring is unavailable.
    pub fn new(listener: TcpListener, rpc: Rpc) -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let (done_tx, done_rx) = unbounded();
        Ok(Self {
            ring,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            open: 0,
            rpc,
            wake: Arc::new(EventFd::new()?),
            wake_buf: Box::new([0; 8]),
            done_tx,
            done_rx,
            deadlines: BinaryHeap::new(),
        })
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        self.arm_accept()?;
        self.arm_wake()?;
        while !stop.load(Ordering::Relaxed) {
            let wait = self.next_wait();
            let ts = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ETIME)
                        || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            let cqes: Vec<(u64, i32, u32)> =
                self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
            for (ud, res, flags) in cqes {
                self.on_cqe(ud, res, flags)?;
            }
            self.expire_deadlines();
        }
        for slot in 0..self.conns.len() {
            if let Some(c) = self.conns[slot].take() {
                // SAFETY: the descriptor is owned by the connection; the ring is dropped right
                // after, so no operation can complete into its buffers.
                unsafe { libc::close(c.fd) };
            }
        }
        Ok(())
    }

    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        match self.deadlines.peek() {
            Some(Reverse((d, ..))) => d.saturating_duration_since(now).min(MAX_WAIT),
            None => MAX_WAIT,
        }
        .max(Duration::from_micros(100))
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by this server points at buffers owned by a live
            // connection (or the server) that stay in place until the operation completes: a
            // connection is only freed once none of its operations is in flight.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .build()
            .user_data(user_data(OP_ACCEPT, 0, 0));
        self.push(e)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(types::Fd(self.wake.0), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(OP_WAKE, 0, 0));
        self.push(e)
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) -> io::Result<()> {
        let (op, gen, slot) = split(ud);
        match op {
            OP_ACCEPT => {
                if res >= 0 {
                    self.on_accept(res);
                } else if res != -libc::ECANCELED {
                    tracing::debug!(error = res, "accept failed");
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
            }
            OP_WAKE => {
                self.drain_completions();
                self.arm_wake()?;
            }
            OP_RECV => self.on_recv(slot, gen, res)?,
            OP_SEND => self.on_send(slot, gen, res)?,
            _ => {}
        }
        Ok(())
    }

    fn on_accept(&mut self, fd: RawFd) {
        if self.open >= MAX_CONNECTIONS {
            let mut msg = Vec::new();
            http::write_response(
                &mut msg,
                "503 Service Unavailable",
                "text/plain",
                b"too many connections\n",
                false,
            );
            // SAFETY: `fd` was just returned by accept and is owned here; the buffer is live.
            unsafe {
                libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_DONTWAIT);
                libc::close(fd);
            }
            tracing::warn!(limit = MAX_CONNECTIONS, "connection refused: limit reached");
            return;
        }
        let one: libc::c_int = 1;
        // SAFETY: sets an option on a socket we own, from a live c_int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let gen = self.gens[slot as usize];
        self.conns[slot as usize] = Some(Box::new(Conn {
            fd,
            gen,
            inbuf: Vec::new(),
            recv_buf: vec![0u8; RECV_CHUNK_BYTES].into_boxed_slice(),
            recv_armed: false,
            sending: Vec::new(),
            sent: 0,
            send_armed: false,
            out: Vec::new(),
            responses: VecDeque::new(),
            next_seq: 0,
            close_after_flush: false,
            closing: false,
            continue_sent: false,
        }));
        self.open += 1;
        if let Err(e) = self.arm_recv(slot) {
            tracing::warn!(error = %e, "could not arm receive");
        }
    }

    fn conn(&mut self, slot: u32, gen: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot as usize)?.as_deref_mut().filter(|c| c.gen == gen)
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_deref_mut() else { return Ok(()) };
        if c.recv_armed || c.closing || c.close_after_flush || c.responses.len() >= MAX_PIPELINED {
            return Ok(());
        }
        c.recv_armed = true;
        let e =
            opcode::Recv::new(types::Fd(c.fd), c.recv_buf.as_mut_ptr(), c.recv_buf.len() as u32)
                .build()
                .user_data(user_data(OP_RECV, slot, c.gen));
        self.push(e)
    }

    fn on_recv(&mut self, slot: u32, gen: u32, res: i32) -> io::Result<()> {
        let Some(c) = self.conn(slot, gen) else { return Ok(()) };
        c.recv_armed = false;
        if c.closing || res <= 0 {
            self.begin_close(slot);
            return Ok(());
        }
        let n = res as usize;
        let chunk = c.recv_buf[..n].to_vec();
        c.inbuf.extend_from_slice(&chunk);
        self.process_input(slot);
        self.flush(slot)?;
        self.arm_recv(slot)
    }

    fn process_input(&mut self, slot: u32) {
        loop {
            let Some(c) = self.conns[slot as usize].as_deref_mut() else { return };
            if c.close_after_flush || c.responses.len() >= MAX_PIPELINED || c.inbuf.is_empty() {
                return;
            }
            match http::parse_request(&c.inbuf) {
                Ok(Parsed::Partial { expect_continue }) => {
                    if expect_continue && !c.continue_sent && c.responses.is_empty() {
                        c.out.extend_from_slice(http::CONTINUE);
                        c.continue_sent = true;
                    }
                    return;
                }
                Ok(Parsed::Complete(req, used)) => {
                    c.inbuf.drain(..used);
                    c.continue_sent = false;
                    let seq = c.next_seq;
                    c.next_seq += 1;
                    let gen = c.gen;
                    let keep_alive = req.keep_alive;
                    let body = match req.method {
                        Method::Post => Pending::Rpc(self.dispatch(slot, gen, seq, &req.body)),
                        Method::Options => Pending::Bytes(plain("204 No Content", b"", keep_alive)),
                        Method::Get | Method::Head => {
                            Pending::Bytes(plain("200 OK", b"strobe ok\n", keep_alive))
                        }
                        Method::Other => Pending::Bytes(plain(
                            "405 Method Not Allowed",
                            b"use POST\n",
                            keep_alive,
                        )),
                    };
                    if let Pending::Rpc(d) = &body {
                        if let Some(deadline) = d.next_deadline() {
                            self.deadlines.push(Reverse((deadline, slot, gen, seq)));
                        }
                    }
                    let c = self.conns[slot as usize].as_deref_mut().expect("live");
                    c.responses.push_back(Response { seq, keep_alive, body });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad HTTP request");
                    let seq = c.next_seq;
                    c.next_seq += 1;
                    let msg = format!("{e}\n");
                    c.responses.push_back(Response {
                        seq,
                        keep_alive: false,
                        body: Pending::Bytes(plain(e.status(), msg.as_bytes(), false)),
                    });
                    c.inbuf.clear();
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, slot: u32, gen: u32, seq: u64, body: &[u8]) -> Dispatched {
        let tx = self.done_tx.clone();
        let wake = self.wake.clone();
        let callbacks = move |part: usize| {
            let (tx2, wake2) = (tx.clone(), wake.clone());
            let (tx3, wake3) = (tx.clone(), wake.clone());
            Callbacks {
                on_accept: Box::new(move |r| {
                    let _ =
                        tx2.send(Completion { slot, gen, seq, part, event: Event::Accepted(r) });
                    wake2.wake();
                }),
                on_receipt: Box::new(move |r| {
                    let _ =
                        tx3.send(Completion { slot, gen, seq, part, event: Event::Included(r) });
                    wake3.wake();
                }),
            }
        };
        self.rpc.set_route(slot as usize);
        self.rpc.dispatch(body, &callbacks)
    }

    fn drain_completions(&mut self) {
        let done: Vec<Completion> = self.done_rx.try_iter().collect();
        let mut touched = Vec::new();
        for d in done {
            let Some(c) = self.conns.get_mut(d.slot as usize).and_then(|c| c.as_deref_mut()) else {
                continue;
            };
            if c.gen != d.gen {
                continue;
            }
            let Some(resp) = c.responses.iter_mut().find(|r| r.seq == d.seq) else { continue };
            if let Pending::Rpc(dispatched) = &mut resp.body {
                if let Some(part) = dispatched.parts.get_mut(d.part) {
                    if self.rpc.complete(part, d.event) {
                        touched.push(d.slot);
                    }
                }
            }
        }
        touched.dedup();
        for slot in touched {
            let _ = self.flush(slot).and_then(|_| self.arm_recv(slot));
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((d, slot, gen, seq))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            let rpc = &self.rpc;
            let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_deref_mut()) else {
                continue;
            };
            if c.gen != gen {
                continue;
            }
            if let Some(resp) = c.responses.iter_mut().find(|r| r.seq == seq) {
                if let Pending::Rpc(dispatched) = &mut resp.body {
                    rpc.expire(&mut dispatched.parts, now);
                    if let Some(next) = dispatched.next_deadline() {
                        self.deadlines.push(Reverse((next, slot, gen, seq)));
                    }
                }
            }
            let _ = self.flush(slot).and_then(|_| self.arm_recv(slot));
        }
    }

    /// Moves every ready response at the head of the queue into the output and starts a send.
    fn flush(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_deref_mut() else { return Ok(()) };
        while let Some(front) = c.responses.front() {
            let bytes = match &front.body {
                Pending::Bytes(b) => b.clone(),
                Pending::Rpc(d) if d.is_ready() => {
                    let body = d.body();
                    let mut out = Vec::with_capacity(body.len() + 256);
                    http::write_response(
                        &mut out,
                        "200 OK",
                        "application/json",
                        &body,
                        front.keep_alive,
                    );
                    out
                }
                Pending::Rpc(_) => break,
            };
            let keep_alive = front.keep_alive;
            c.responses.pop_front();
            c.out.extend_from_slice(&bytes);
            if !keep_alive {
                c.close_after_flush = true;
                c.responses.clear();
                break;
            }
        }
        self.start_send(slot)
    }

    fn start_send(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_deref_mut() else { return Ok(()) };
        if c.send_armed || c.closing {
            return Ok(());
        }
        if c.sent >= c.sending.len() {
            if c.out.is_empty() {
                if c.close_after_flush {
                    self.begin_close(slot);
                }
                return Ok(());
            }
            std::mem::swap(&mut c.sending, &mut c.out);
            c.out.clear();
            c.sent = 0;
        }
        c.send_armed = true;
        let remaining = &c.sending[c.sent..];
        let e = opcode::Send::new(types::Fd(c.fd), remaining.as_ptr(), remaining.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OP_SEND, slot, c.gen));
        self.push(e)
    }

    fn on_send(&mut self, slot: u32, gen: u32, res: i32) -> io::Result<()> {
        let Some(c) = self.conn(slot, gen) else { return Ok(()) };
        c.send_armed = false;
        if c.closing || res < 0 {
            self.begin_close(slot);
            return Ok(());
        }
        c.sent += res as usize;
        self.start_send(slot)?;
        self.arm_recv(slot)
    }

    fn begin_close(&mut self, slot: u32) {
        let Some(c) = self.conns[slot as usize].as_deref_mut() else { return };
        if !c.closing {
            c.closing = true;
            // SAFETY: shuts down a socket we own, so in-flight operations complete promptly.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        if c.recv_armed || c.send_armed {
            return;
        }
        let c = self.conns[slot as usize].take().expect("checked");
        // SAFETY: no operation on this descriptor is in flight, and it is closed exactly once.
        unsafe { libc::close(c.fd) };
        self.gens[slot as usize] = (c.gen + 1) & 0x00FF_FFFF;
        self.free.push(slot);
        self.open -= 1;
    }
}

fn plain(status: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    http::write_response(&mut out, status, "text/plain", body, keep_alive);
    out
}

/// Binds `addr` and serves JSON-RPC for `engine` on the calling thread until `stop` is set.
pub fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    accounts: Vec<alloy_primitives::Address>,
    recovery_threads: usize,
    stop: &AtomicBool,
) -> io::Result<()> {
    let rpc = Rpc::new(engine, accounts).with_recovery(recovery_threads)?;
    let server = Server::new(listener, rpc)?;
    server.run(stop)
}
