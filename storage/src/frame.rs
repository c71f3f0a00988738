//! Checksummed, length-prefixed frames: the on-disk unit of the write-ahead log and the chain
//! store's segment files.
//!
//! Layout (little-endian): `magic: u32 | len: u32 | key: u64 | payload: [u8; len] | check: u64`,
//! where `check` is xxh3-64 over everything from `len` to the end of the payload. The magic tells
//! the file kinds apart and helps find frame boundaries when scanning past damage; the key is the
//! caller's (a sequence number or a block number).

use xxhash_rust::xxh3::xxh3_64;

/// Bytes before the payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 16;
/// Bytes after the payload.
pub(crate) const FRAME_TRAILER_BYTES: usize = 8;
/// Bytes a frame adds around its payload.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;

/// Appends one frame carrying `payload` under `key` to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, magic: u32, key: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payloads are bounded below 4 GiB");
    let start = out.len();
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(payload);
    let check = xxh3_64(&out[start + 4..]);
    out.extend_from_slice(&check.to_le_bytes());
}

/// The result of reading one frame at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameRead<'a> {
    /// A whole, intact frame; the next one starts at `next`.
    Frame {
        /// The frame's key.
        key: u64,
        /// Its payload.
        payload: &'a [u8],
        /// Offset just past it.
        next: usize,
    },
    /// The buffer ends at `at` (no bytes left).
    End,
    /// The buffer ends inside a frame (a torn write, or a corrupt length).
    Truncated,
    /// The bytes at the offset are not an intact frame (bad magic, oversized length, checksum
    /// mismatch).
    Corrupt,
}

/// Reads the frame starting at `at`, accepting payloads up to `max_payload` bytes.
pub(crate) fn read_frame(buf: &[u8], at: usize, magic: u32, max_payload: usize) -> FrameRead<'_> {
    let rest = match buf.get(at..) {
        Some(r) if !r.is_empty() => r,
        _ => return FrameRead::End,
    };
    if rest.len() < FRAME_HEADER_BYTES {
        return FrameRead::Truncated;
    }
    let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != magic {
        return FrameRead::Corrupt;
    }
    let len = word(4) as usize;
    if len > max_payload {
        return FrameRead::Corrupt;
    }
    let total = FRAME_OVERHEAD_BYTES + len;
    if rest.len() < total {
        return FrameRead::Truncated;
    }
    let body_end = FRAME_HEADER_BYTES + len;
    let check = u64::from_le_bytes(rest[body_end..total].try_into().expect("8 bytes"));
    if xxh3_64(&rest[4..body_end]) != check {
        return FrameRead::Corrupt;
    }
    let key = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
    FrameRead::Frame { key, payload: &rest[FRAME_HEADER_BYTES..body_end], next: at + total }
}

/// Whether an intact frame starts anywhere after `from` in `buf`.
///
/// Used after damage: a torn tail has nothing valid behind it, while a damaged frame in the middle
/// of a log does, and must be reported rather than cut.
pub(crate) fn intact_frame_after(buf: &[u8], from: usize, magic: u32, max_payload: usize) -> bool {
    let pattern = magic.to_le_bytes();
    let mut at = from + 1;
    while at + FRAME_OVERHEAD_BYTES <= buf.len() {
        match buf[at..].windows(4).position(|w| w == pattern) {
            None => return false,
            Some(p) => at += p,
        }
        if matches!(read_frame(buf, at, magic, max_payload), FrameRead::Frame { .. }) {
            return true;
        }
        at += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAGIC: u32 = 0x5354_5242;

    #[test]
    fn round_trip_and_end() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, MAGIC, 7, b"hello");
        encode_frame(&mut buf, MAGIC, 8, b"");
        let FrameRead::Frame { key, payload, next } = read_frame(&buf, 0, MAGIC, 64) else {
            panic!("first frame")
        };
        assert_eq!((key, payload), (7, &b"hello"[..]));
        let FrameRead::Frame { key, payload, next } = read_frame(&buf, next, MAGIC, 64) else {
            panic!("second frame")
        };
        assert_eq!((key, payload.len()), (8, 0));
        assert_eq!(read_frame(&buf, next, MAGIC, 64), FrameRead::End);
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, MAGIC, 1, &[9u8; 40]);
        for cut in 1..buf.len() {
            assert_eq!(read_frame(&buf[..cut], 0, MAGIC, 64), FrameRead::Truncated, "cut {cut}");
        }
    }

    #[test]
    fn oversized_length_is_corrupt() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, MAGIC, 1, &[1u8; 100]);
        assert_eq!(read_frame(&buf, 0, MAGIC, 99), FrameRead::Corrupt);
    }

    #[test]
    fn damage_in_the_middle_is_told_apart_from_a_torn_tail() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, MAGIC, 1, b"first");
        let second = buf.len();
        encode_frame(&mut buf, MAGIC, 2, b"second");
        assert!(intact_frame_after(&buf, 0, MAGIC, 64));
        assert!(!intact_frame_after(&buf, second, MAGIC, 64));
    }

    proptest! {
        /// Any single flipped bit in a frame is caught.
        #[test]
        fn every_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64),
                                      bit in 0usize..1024) {
            let mut buf = Vec::new();
            encode_frame(&mut buf, MAGIC, 42, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let intact = matches!(read_frame(&buf, 0, MAGIC, 1 << 20), FrameRead::Frame { .. });
            prop_assert!(!intact);
        }

        /// Reading arbitrary bytes never panics.
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256), at in 0usize..300) {
            let _ = read_frame(&buf, at, MAGIC, 1 << 20);
            let _ = intact_frame_after(&buf, at.min(buf.len()), MAGIC, 1 << 20);
        }
    }
}
