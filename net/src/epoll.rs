//! The epoll driver: the fallback when io_uring is unavailable (old kernel,
//! `kernel.io_uring_disabled`, seccomp in containers), or forced with `--net-backend epoll`.
//! Edge-triggered, non-blocking sockets; the same [`Hub`] does all protocol work, so both
//! drivers serve exactly the same protocols and limits.

use crate::{
    session::{Hub, Wake},
    sys::{self, EventFd},
};
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

/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// Longest the loop sleeps before checking the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(50);

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;

struct IoConn {
    fd: RawFd,
    gen: u32,
    sending: Vec<u8>,
    sent: usize,
    /// The socket had more to read when the hub stopped accepting input (backpressure).
    read_pending: bool,
}

/// One network thread's epoll loop.
pub struct EpollDriver {
    epfd: RawFd,
    listener: TcpListener,
    conns: Vec<Option<IoConn>>,
    hub: Hub,
    wake: Arc<EventFd>,
    buf: Vec<u8>,
    /// Accepting stopped (out of descriptors) until then.
    accept_paused_until: Option<Instant>,
}

fn ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a live epoll_event; the descriptors are owned by the driver.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl EpollDriver {
    /// The eventfd that will wake the driver; make the hub with it, then call [`Self::new`].
    pub fn make_waker() -> io::Result<Arc<EventFd>> {
        Ok(Arc::new(EventFd::new()?))
    }

    /// A driver serving `listener` for `hub`, woken through `wake`.
    pub fn new(wake: Arc<EventFd>, listener: TcpListener, hub: Hub) -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned by the driver and closed on drop.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        let d = Self {
            epfd,
            listener,
            conns: Vec::new(),
            hub,
            wake,
            buf: vec![0; READ_CHUNK_BYTES],
            accept_paused_until: None,
        };
        ctl(
            d.epfd,
            libc::EPOLL_CTL_ADD,
            d.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_LISTENER,
        )?;
        ctl(d.epfd, libc::EPOLL_CTL_ADD, d.wake.0, libc::EPOLLIN as u32, TOKEN_WAKE)?;
        Ok(d)
    }

    /// The eventfd as the hub's waker.
    pub fn waker(wake: &Arc<EventFd>) -> Arc<dyn Wake> {
        wake.clone()
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        while !stop.load(Ordering::Relaxed) {
            let wait = self
                .hub
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), MAX_WAIT);
            // SAFETY: `events` has room for MAX_EVENTS entries and outlives the call.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd,
                    events.as_mut_ptr(),
                    MAX_EVENTS as i32,
                    wait.as_millis() as i32,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (token, flags) = (ev.u64, ev.events);
                match token {
                    TOKEN_LISTENER => self.accept_all()?,
                    TOKEN_WAKE => {
                        self.wake.drain();
                        self.hub.on_wake();
                    }
                    t => {
                        let (slot, gen) = (t as u32, (t >> 32) as u32);
                        if self
                            .conns
                            .get(slot as usize)
                            .and_then(Option::as_ref)
                            .is_none_or(|c| c.gen != gen)
                        {
                            continue;
                        }
                        if flags
                            & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                                as u32
                            != 0
                        {
                            self.read_all(slot);
                        }
                        self.service(slot);
                    }
                }
            }
            if Instant::now() >= self.hub.next_deadline() {
                self.hub.on_timer();
            }
            if self.accept_paused_until.is_some_and(|t| Instant::now() >= t) {
                self.accept_paused_until = None;
                let fd = self.listener.as_raw_fd();
                ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, TOKEN_LISTENER)?;
            }
            for slot in self.hub.take_dirty() {
                self.service(slot);
            }
        }
        self.hub.shutdown();
        for slot in self.hub.take_dirty() {
            self.service(slot);
        }
        for c in self.conns.drain(..).flatten() {
            // SAFETY: the descriptor is owned by the connection and closed exactly once.
            unsafe { libc::close(c.fd) };
        }
        Ok(())
    }

    fn accept_all(&mut self) -> io::Result<()> {
        loop {
            // SAFETY: accept4 on the listener we own; no address is asked for.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        // The listener is level-triggered: watching it now would spin. Stop
                        // watching it for a moment.
                        tracing::warn!("out of file descriptors; pausing accepts for 100 ms");
                        ctl(self.epfd, libc::EPOLL_CTL_DEL, self.listener.as_raw_fd(), 0, 0)?;
                        self.accept_paused_until = Some(Instant::now() + sys::ACCEPT_PAUSE);
                        Ok(())
                    }
                    Some(libc::EBADF) | Some(libc::EINVAL) | Some(libc::ENOTSOCK) => Err(e),
                    // EAGAIN, EINTR, ECONNABORTED, and the transient ENOBUFS, ENOMEM, EPROTO,
                    // ENETDOWN...: the next readiness event tries again.
                    _ => Ok(()),
                };
            }
            let Some((slot, gen)) = self.hub.accept() else {
                sys::send_and_close(fd, &Hub::refusal());
                continue;
            };
            sys::set_nodelay(fd);
            let token = ((gen as u64) << 32) | slot as u64;
            let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            if let Err(e) = ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, events, token) {
                tracing::warn!(error = %e, "could not watch a connection");
                // SAFETY: `fd` was just accepted and is owned here.
                unsafe { libc::close(fd) };
                self.hub.closed(slot);
                continue;
            }
            if self.conns.len() <= slot as usize {
                self.conns.resize_with(slot as usize + 1, || None);
            }
            self.conns[slot as usize] =
                Some(IoConn { fd, gen, sending: Vec::new(), sent: 0, read_pending: false });
        }
    }

    /// Reads until the socket is drained (edge-triggered) or the hub wants no more input.
    fn read_all(&mut self, slot: u32) {
        loop {
            if !self.hub.want(slot).read {
                if let Some(c) = self.conns[slot as usize].as_mut() {
                    c.read_pending = true;
                }
                return;
            }
            let Some(c) = self.conns[slot as usize].as_mut() else { return };
            c.read_pending = false;
            // SAFETY: reads into the driver's live buffer from a socket it owns.
            let n = unsafe { libc::read(c.fd, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n > 0 {
                let n = n as usize;
                self.hub.on_input(slot, &self.buf[..n]);
                if n < self.buf.len() {
                    continue;
                }
            } else if n == 0 {
                // End of stream: answer what was asked, then close (`service` does).
                self.hub.eof(slot);
                return;
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    _ => {
                        self.close(slot);
                        return;
                    }
                }
            }
        }
    }

    fn service(&mut self, slot: u32) {
        let want = self.hub.want(slot);
        if want.close_now {
            self.close(slot);
            return;
        }
        let Some(c) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        loop {
            if c.sent >= c.sending.len() {
                c.sending.clear();
                c.sent = 0;
                self.hub.take_output(slot, &mut c.sending);
                if c.sending.is_empty() {
                    break;
                }
            }
            let rest = &c.sending[c.sent..];
            // SAFETY: sends from a live buffer on a socket the driver owns.
            let n = unsafe {
                libc::send(
                    c.fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                c.sent += n as usize;
                self.hub.sent(slot);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return, // EPOLLOUT will call again
                Some(libc::EINTR) => continue,
                _ => {
                    self.close(slot);
                    return;
                }
            }
        }
        if want.close_after_flush {
            self.close(slot);
            return;
        }
        let read_pending = c.read_pending;
        if read_pending && self.hub.want(slot).read {
            self.read_all(slot);
            if self.hub.has_output(slot) {
                self.service(slot);
            }
        }
    }

    fn close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(Option::take) else { return };
        // SAFETY: the descriptor is owned by the connection and closed exactly once; closing
        // also removes it from the epoll set.
        unsafe { libc::close(c.fd) };
        self.hub.closed(slot);
    }
}

impl Drop for EpollDriver {
    fn drop(&mut self) {
        // SAFETY: the epoll descriptor is owned by the driver and closed exactly once.
        unsafe { libc::close(self.epfd) };
    }
}
