//! The io_uring driver: one ring per network thread. Multishot accept; connections registered
//! as fixed files; one multishot receive per connection into a shared provided-buffer ring
//! ([`crate::bufring`]), cancelled while the hub applies backpressure; one send in flight per
//! connection; the wake eventfd read through the ring; submissions batched into a single
//! `io_uring_enter` per loop turn. All protocol work happens in the [`Hub`].

use crate::{
    bufring::BufRing,
    session::{Hub, Wake},
    sys::{self, EventFd},
};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::{
    io,
    net::TcpListener,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Size of each provided receive buffer.
const RECV_BUFFER_BYTES: usize = 8 * 1024;
/// Provided receive buffers per network thread (8 MiB in all).
const RECV_BUFFERS: u16 = 1024;
/// Buffer group id of the receive buffers.
const RECV_BGID: u16 = 0;
/// Submission queue entries.
const RING_ENTRIES: u32 = 1024;
/// Longest the ring sleeps before checking the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(50);

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_WAKE: u64 = 4;
const OP_CANCEL: u64 = 5;

fn user_data(op: u64, slot: u32, gen: u32) -> u64 {
    (op << 56) | (((gen & 0x00FF_FFFF) as u64) << 32) | slot as u64
}

fn split(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, ((ud >> 32) & 0x00FF_FFFF) as u32, ud as u32)
}

struct IoConn {
    fd: RawFd,
    gen: u32,
    /// Registered in the ring's file table at index `slot`.
    fixed: bool,
    recv_armed: bool,
    /// A cancel of the multishot receive is in flight (backpressure).
    cancelling: bool,
    sending: Vec<u8>,
    sent: usize,
    send_armed: bool,
    closing: bool,
}

/// One network thread's ring. Field order matters: the ring is dropped before the buffers it
/// receives into.
pub struct UringDriver {
    ring: IoUring,
    bufs: BufRing,
    /// Size of the sparse fixed-file table; connections in slots past it use plain descriptors.
    fixed_files: u32,
    listener: TcpListener,
    conns: Vec<Option<IoConn>>,
    hub: Hub,
    wake: Arc<EventFd>,
    wake_buf: Box<[u8; 8]>,
    /// Accepting stopped (out of descriptors) until then.
    accept_paused_until: Option<Instant>,
}

/// Checks, by doing it, what the driver needs beyond a ring: a provided-buffer ring (5.19) and a
/// multishot receive into it (6.0) on a socket pair. The opcode probe cannot tell: multishot is
/// a flag of the plain opcodes.
fn check_features() -> io::Result<()> {
    let unsupported = |what: &str, e: io::Error| {
        io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks {what}: {e}"))
    };
    let mut trial = IoUring::new(8).map_err(|e| unsupported("a second ring", e))?;
    let mut bufs =
        BufRing::register(&trial, 0, 2, 64).map_err(|e| unsupported("provided-buffer rings", e))?;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let recv = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), bufs.bgid()).build().user_data(1);
    // SAFETY: the entry names no caller memory; the buffers belong to the registered group,
    // which outlives the ring's use here (unregistered below, before `bufs` drops).
    unsafe { trial.submission().push(&recv) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    std::io::Write::write_all(&mut b, b"probe")?;
    trial.submit_and_wait(1)?;
    let cqe = trial.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    let (res, flags) = (cqe.result(), cqe.flags());
    if let Some(bid) = cqueue::buffer_select(flags) {
        bufs.recycle(bid);
    }
    bufs.unregister(&trial);
    drop(trial);
    if res != 5 || !cqueue::more(flags) {
        let e = io::Error::from_raw_os_error(if res < 0 { -res } else { libc::EINVAL });
        return Err(unsupported("multishot receive", e));
    }
    Ok(())
}

impl UringDriver {
    /// Creates the ring and the eventfd; fails when io_uring cannot do what the driver needs
    /// (then the server falls back to epoll).
    pub fn probe() -> io::Result<(IoUring, Arc<EventFd>)> {
        // One thread submits and reaps (SINGLE_ISSUER), and completion work runs when it asks
        // for completions rather than interrupting it (DEFER_TASKRUN, Linux 6.1); older kernels
        // get a plain ring.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        check_features()?;
        Ok((ring, Arc::new(EventFd::new()?)))
    }

    /// A driver over a ring made by [`UringDriver::probe`]; `hub` was made with `wake`. Registers
    /// the receive buffers and a fixed-file table of `max_connections` entries.
    pub fn new(
        ring: IoUring,
        wake: Arc<EventFd>,
        listener: TcpListener,
        hub: Hub,
        max_connections: usize,
    ) -> io::Result<Self> {
        let bufs = BufRing::register(&ring, RECV_BGID, RECV_BUFFERS, RECV_BUFFER_BYTES)?;
        let wanted = max_connections.min(1 << 20) as u32;
        let fixed_files = match ring.submitter().register_files_sparse(wanted) {
            Ok(()) => wanted,
            Err(e) => {
                tracing::warn!(error = %e, "no fixed-file table; connections use plain descriptors");
                0
            }
        };
        Ok(Self {
            ring,
            bufs,
            fixed_files,
            listener,
            conns: Vec::new(),
            hub,
            wake,
            wake_buf: Box::new([0; 8]),
            accept_paused_until: None,
        })
    }

    /// The eventfd that wakes this thread, for the hub.
    pub fn waker(wake: &Arc<EventFd>) -> Arc<dyn Wake> {
        wake.clone()
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        self.arm_accept()?;
        self.arm_wake()?;
        while !stop.load(Ordering::Relaxed) {
            let wait = self
                .hub
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(50), MAX_WAIT);
            let ts = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            let cqes: Vec<(u64, i32, u32)> =
                self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
            for (ud, res, flags) in cqes {
                self.on_cqe(ud, res, flags)?;
            }
            if Instant::now() >= self.hub.next_deadline() {
                self.hub.on_timer();
            }
            if self.accept_paused_until.is_some_and(|t| Instant::now() >= t) {
                self.accept_paused_until = None;
                self.arm_accept()?;
            }
            self.service_dirty()?;
        }
        self.hub.shutdown();
        self.service_dirty()?;
        let _ = self.ring.submit();
        self.bufs.unregister(&self.ring);
        for c in self.conns.iter().flatten() {
            // SAFETY: the descriptor is owned by the connection and closed exactly once. The
            // connection itself (and the buffer a send may still read) stays alive until the
            // driver drops, after the ring (field order): an operation still in flight never
            // reads freed memory.
            unsafe { libc::close(c.fd) };
        }
        Ok(())
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by this driver points at buffers owned by a live
            // connection (or the driver) that stay in place until the operation completes: a
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
                    self.on_accept(res)?;
                } else if res == -libc::EMFILE || res == -libc::ENFILE {
                    // Out of descriptors: re-arming now would fail again at once, forever.
                    tracing::warn!("out of file descriptors; pausing accepts for 100 ms");
                    self.accept_paused_until = Some(Instant::now() + sys::ACCEPT_PAUSE);
                    return Ok(());
                } else if res != -libc::ECANCELED {
                    tracing::debug!(error = res, "accept failed");
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
            }
            OP_WAKE => {
                self.hub.on_wake();
                self.arm_wake()?;
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(flags);
                let more = cqueue::more(flags);
                let live = self.conn(slot, gen).is_some();
                if live && res > 0 {
                    if let Some(bid) = bid {
                        // The hub copies what it keeps; the buffer goes back right after.
                        self.hub.on_input(slot, self.bufs.data(bid, res as usize));
                    }
                }
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
                let Some(c) = self.conn(slot, gen) else { return Ok(()) };
                if !more {
                    c.recv_armed = false;
                    c.cancelling = false;
                }
                let closing = c.closing;
                match res {
                    0 if !closing => {
                        // End of stream: answer what was asked, then close.
                        self.hub.eof(slot);
                        self.service(slot)?
                    }
                    n if n > 0 && !closing => self.service(slot)?,
                    // Out of provided buffers, or cancelled for backpressure: re-armed when
                    // the hub wants input again.
                    e if (e == -libc::ENOBUFS || e == -libc::ECANCELED) && !closing => {
                        self.service(slot)?
                    }
                    _ => self.begin_close(slot),
                }
            }
            OP_SEND => {
                let Some(c) = self.conn(slot, gen) else { return Ok(()) };
                c.send_armed = false;
                if res < 0 || c.closing {
                    self.begin_close(slot);
                    return Ok(());
                }
                c.sent += res as usize;
                if res > 0 {
                    self.hub.sent(slot);
                }
                self.service(slot)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_accept(&mut self, fd: RawFd) -> io::Result<()> {
        let Some((slot, gen)) = self.hub.accept() else {
            sys::send_and_close(fd, &Hub::refusal());
            return Ok(());
        };
        sys::set_nodelay(fd);
        if self.conns.len() <= slot as usize {
            self.conns.resize_with(slot as usize + 1, || None);
        }
        let fixed = slot < self.fixed_files
            && self.ring.submitter().register_files_update(slot, &[fd]).is_ok();
        self.conns[slot as usize] = Some(IoConn {
            fd,
            gen,
            fixed,
            recv_armed: false,
            cancelling: false,
            sending: Vec::new(),
            sent: 0,
            send_armed: false,
            closing: false,
        });
        self.service(slot)
    }

    fn conn(&mut self, slot: u32, gen: u32) -> Option<&mut IoConn> {
        self.conns.get_mut(slot as usize)?.as_mut().filter(|c| c.gen == gen)
    }

    fn service_dirty(&mut self) -> io::Result<()> {
        for slot in self.hub.take_dirty() {
            self.service(slot)?;
        }
        Ok(())
    }

    /// Starts whatever the hub wants for `slot`: a send of its output, a receive, or a close.
    fn service(&mut self, slot: u32) -> io::Result<()> {
        let want = self.hub.want(slot);
        let Some(c) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        if c.closing {
            return Ok(());
        }
        if want.close_now {
            self.begin_close(slot);
            return Ok(());
        }
        if !c.send_armed {
            if c.sent >= c.sending.len() {
                c.sending.clear();
                c.sent = 0;
                self.hub.take_output(slot, &mut c.sending);
            }
            if c.sending.is_empty() {
                if want.close_after_flush {
                    self.begin_close(slot);
                    return Ok(());
                }
            } else {
                c.send_armed = true;
                let remaining = &c.sending[c.sent..];
                let (ptr, len) = (remaining.as_ptr(), remaining.len() as u32);
                let e = if c.fixed {
                    opcode::Send::new(types::Fixed(slot), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    opcode::Send::new(types::Fd(c.fd), ptr, len).flags(libc::MSG_NOSIGNAL).build()
                };
                let e = e.user_data(user_data(OP_SEND, slot, c.gen));
                self.push(e)?;
            }
        }
        let bgid = self.bufs.bgid();
        let Some(c) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        if want.read && !c.recv_armed {
            c.recv_armed = true;
            let e = if c.fixed {
                opcode::RecvMulti::new(types::Fixed(slot), bgid).build()
            } else {
                opcode::RecvMulti::new(types::Fd(c.fd), bgid).build()
            };
            let e = e.user_data(user_data(OP_RECV, slot, c.gen));
            self.push(e)?;
        } else if !want.read && c.recv_armed && !c.cancelling {
            // Backpressure: stop the multishot receive until the hub catches up.
            c.cancelling = true;
            let e = opcode::AsyncCancel::new(user_data(OP_RECV, slot, c.gen))
                .build()
                .user_data(user_data(OP_CANCEL, slot, c.gen));
            self.push(e)?;
        }
        Ok(())
    }

    fn begin_close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        if !c.closing {
            c.closing = true;
            // SAFETY: shuts down a socket we own, so in-flight operations complete promptly.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        if c.recv_armed || c.send_armed {
            return;
        }
        let c = self.conns[slot as usize].take().expect("checked");
        if c.fixed {
            // The ring's table holds a reference to the socket: drop it, or the socket stays open.
            let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        }
        // SAFETY: no operation on this descriptor is in flight, and it is closed exactly once.
        unsafe { libc::close(c.fd) };
        self.hub.closed(slot);
    }
}
