//! Small wrappers over the system calls both drivers share: the wake eventfd and socket options.

use std::{io, os::fd::RawFd, time::Duration};

/// How long a driver stops accepting when the process is out of file descriptors (retrying at
/// once would fail again at once, forever).
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An eventfd that wakes a network thread; open while any engine callback can write to it.
pub struct EventFd(pub RawFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is owned by the new value.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Empties the counter (epoll driver; the ring reads it with an operation instead).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a descriptor this value owns.
        let _ = unsafe { libc::read(self.0, (&mut v as *mut u64).cast(), 8) };
    }
}

impl crate::session::Wake for EventFd {
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

/// Turns Nagle's algorithm off: answers are small and latency is the product.
pub(crate) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: sets an option on a socket the caller owns, from a live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Best-effort write of `bytes` to a socket about to be closed (the over-limit refusal).
pub(crate) fn send_and_close(fd: RawFd, bytes: &[u8]) {
    // SAFETY: `fd` is owned by the caller and closed exactly once here; the buffer is live.
    unsafe {
        libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Wake;

    #[test]
    fn eventfd_wakes_and_drains() {
        let e = EventFd::new().unwrap();
        e.wake();
        e.wake();
        let mut v: u64 = 0;
        // SAFETY: test reads 8 bytes into a live u64 from the eventfd it owns.
        let n = unsafe { libc::read(e.0, (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 2));
        e.wake();
        e.drain();
        // SAFETY: as above; the counter is empty now, so a non-blocking read fails.
        let n = unsafe { libc::read(e.0, (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, -1);
    }
}
