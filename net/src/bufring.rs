//! A provided-buffer ring for io_uring multishot receives: one pool of fixed-size buffers per
//! network thread that the kernel picks from as data arrives, instead of one receive buffer per
//! connection. With thousands of mostly idle connections (WebSocket subscribers) this is the
//! difference between megabytes and gigabytes of receive buffers.
//!
//! Layout: the ring (`entries` × 16-byte `io_uring_buf`, page-aligned, its tail in the last two
//! bytes of the first entry) and the buffers (`entries` × `buf_len` bytes) are two separate
//! allocations owned by [`BufRing`]. The kernel consumes entries from the head; this side gives
//! a buffer back by writing an entry at the tail and publishing the new tail.

use io_uring::{types::BufRingEntry, IoUring};
use std::{
    alloc::{alloc_zeroed, dealloc, Layout},
    io,
    sync::atomic::{AtomicU16, Ordering},
};

// The entry layout the raw writes below rely on (struct io_uring_buf).
const _: () = assert!(std::mem::size_of::<BufRingEntry>() == 16);

/// A registered provided-buffer ring.
///
/// Both allocations are raw: the kernel writes into the buffers and reads the ring behind Rust's
/// back, so no Rust reference ever covers more than the one buffer a completion handed over.
pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    buf_len: usize,
    entries: u16,
    tail: u16,
    bgid: u16,
}

impl BufRing {
    /// Allocates `entries` (a power of two, at most 32768) buffers of `buf_len` bytes and
    /// registers them with `ring` as buffer group `bgid`.
    pub(crate) fn register(
        ring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_len: usize,
    ) -> io::Result<Self> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let bufs_layout = Layout::from_size_align(entries as usize * buf_len.max(1), 64)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size (entries >= 1, 16-byte entries).
        let mem = unsafe { alloc_zeroed(ring_layout) } as *mut BufRingEntry;
        if mem.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: non-zero size (entries >= 1, buf_len >= 1).
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        if bufs.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(mem as *mut u8, ring_layout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut this =
            Self { ring: mem, ring_layout, bufs, bufs_layout, buf_len, entries, tail: 0, bgid };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        // SAFETY: the ring memory is page-aligned, holds `entries` entries and lives as long as
        // `this`. Its owner unregisters the group or drops the io_uring instance before this
        // value (the driver declares its ring field first), so the kernel never touches freed
        // memory.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(mem as u64, entries, bgid, 0)?;
        }
        Ok(this)
    }

    /// The buffer group id to name in receives.
    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled for a completion. Call
    /// only for a `bid` a completion named and not yet [`Self::recycle`]d.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries, "buffer id {bid} out of range");
        // SAFETY: `bid` < entries, so the range lies inside the buffer allocation. The kernel
        // wrote this buffer before posting the completion and will not touch it again until it
        // is recycled (after the caller is done with the slice: `recycle` takes `&mut self`).
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.add(bid as usize * self.buf_len),
                len.min(self.buf_len),
            )
        }
    }

    /// Gives buffer `bid` back to the kernel (call after its data was consumed).
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = (self.tail & mask) as usize;
        let addr = self.bufs as u64 + bid as u64 * self.buf_len as u64;
        // SAFETY: `index` < entries, so the entry lies inside the ring allocation; the kernel
        // only reads entries between its head and the published tail, and this one is past it.
        // The fields are written through raw pointers (io_uring_buf: addr u64 at 0, len u32 at
        // 8, bid u16 at 12), never through a reference to the entry: the first entry's last two
        // bytes are the tail, which the kernel reads.
        unsafe {
            let entry = self.ring.add(index) as *mut u8;
            std::ptr::write(entry as *mut u64, addr);
            std::ptr::write(entry.add(8) as *mut u32, self.buf_len as u32);
            std::ptr::write(entry.add(12) as *mut u16, bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of the ring allocation, is 2-byte
        // aligned, and the kernel reads it as an atomic u16 (io_uring_buf_ring_advance does a
        // release store the same way).
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the group from `ring` (call before dropping, while the ring is alive).
    pub(crate) fn unregister(&self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both allocated in `register` with these layouts and freed exactly once; the
        // owner unregistered the group (or dropped the ring) first, so the kernel no longer
        // uses them.
        unsafe {
            dealloc(self.ring as *mut u8, self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{cqueue, opcode, types};
    use std::{io::Write, os::fd::AsRawFd};

    /// Data sent on a socket arrives through a multishot receive into ring buffers, buffers are
    /// recycled and reused, and the ring keeps working after wrapping around many times.
    #[test]
    fn multishot_receive_cycles_through_the_ring() {
        let Ok(mut ring) = IoUring::new(64) else { return }; // io_uring disabled here
        let Ok(mut bufs) = BufRing::register(&ring, 7, 4, 64) else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let recv =
            opcode::RecvMulti::new(types::Fd(server.as_raw_fd()), bufs.bgid()).build().user_data(1);
        // SAFETY: the entry names no caller memory; the buffers belong to the registered group.
        unsafe { ring.submission().push(&recv).unwrap() };
        let mut received = Vec::new();
        for round in 0..20u8 {
            client.write_all(&[round; 10]).unwrap();
            ring.submit_and_wait(1).unwrap();
            let cqes: Vec<_> = ring.completion().map(|c| (c.result(), c.flags())).collect();
            for (res, flags) in cqes {
                assert!(res > 0, "receive failed: {res}");
                let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                received.extend_from_slice(bufs.data(bid, res as usize));
                bufs.recycle(bid);
                assert!(cqueue::more(flags), "multishot receive ended early");
            }
        }
        while received.len() < 200 {
            ring.submit_and_wait(1).unwrap();
            let cqes: Vec<_> = ring.completion().map(|c| (c.result(), c.flags())).collect();
            for (res, flags) in cqes {
                let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                received.extend_from_slice(bufs.data(bid, res as usize));
                bufs.recycle(bid);
            }
        }
        let expected: Vec<u8> = (0..20u8).flat_map(|r| [r; 10]).collect();
        assert_eq!(received, expected);
        bufs.unregister(&ring);
    }
}
