//! WebSocket (RFC 6455) framing: the opening handshake's accept key, frame parsing with the
//! protocol's rules and strobe's size limit, and frame writing.
//!
//! Pure functions over byte buffers, fuzzed and property-tested without sockets. Messages are
//! reassembled from fragments by the connection ([`crate::session`]); this module sees frames.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest message (after reassembly) and largest single frame accepted; larger ones close the
/// connection with [`CLOSE_TOO_BIG`]. Same as the HTTP body limit.
pub const MAX_MESSAGE_BYTES: usize = crate::http::MAX_BODY_BYTES;

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Protocol error (unmasked client frame, bad opcode, reserved bits...).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// A text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Policy violation: used for a client that falls behind its subscriptions or idles out.
pub const CLOSE_POLICY: u16 = 1008;
/// Message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One decoded (unmasked) frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Final fragment of its message.
    pub fin: bool,
    /// Its opcode.
    pub opcode: Opcode,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

/// Why a frame cannot be accepted; the connection closes with [`FrameError::close_code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A rule of RFC 6455 was broken.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// The frame's payload is over [`MAX_MESSAGE_BYTES`].
    #[error("websocket frame of {0} bytes is over the limit")]
    TooBig(u64),
}

impl FrameError {
    /// The close code to answer with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL,
            FrameError::TooBig(_) => CLOSE_TOO_BIG,
        }
    }
}

/// Parses one client frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and the bytes it used. Client frames must be masked (RFC 6455 §5.1).
pub fn parse_client_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(FrameError::Protocol("payload length with the top bit set"));
            }
            (n, 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol("fragmented or oversized control frame"));
    }
    if len > MAX_MESSAGE_BYTES as u64 {
        return Err(FrameError::TooBig(len));
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
    at += 4;
    let mut payload = buf[at..at + len].to_vec();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some((Frame { fin, opcode, payload }, at + len)))
}

/// Appends an unmasked, final server frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    write_frame_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends the header of an unmasked, final server frame of `len` payload bytes; the caller
/// appends the payload (so a notification can be written in pieces without a copy).
pub fn write_frame_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode.bits());
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a close frame with `code` and a short `reason`.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    // Control frames carry at most 125 bytes; cut the reason at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, Opcode::Close, &payload);
}

/// The close code a client's close frame carries, or why it is malformed (RFC 6455 §7.4).
pub fn close_code(payload: &[u8]) -> Result<u16, FrameError> {
    match payload.len() {
        0 => Ok(CLOSE_NORMAL),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::Protocol("close reason is not UTF-8"));
            }
            Ok(code)
        }
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `101 Switching Protocols` answer to an upgrade request.
pub fn handshake_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes a masked client frame, as a browser would.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn protocol_violations_are_refused() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert_eq!(parse_client_frame(&unmasked).unwrap_err().close_code(), CLOSE_PROTOCOL);
        let rsv = client_frame(true, 0x41, b"x", [1, 2, 3, 4]);
        assert!(parse_client_frame(&rsv).is_err());
        let bad_op = client_frame(true, 0x3, b"x", [1, 2, 3, 4]);
        assert!(parse_client_frame(&bad_op).is_err());
        let long_ping = client_frame(true, 0x9, &[0; 126], [1, 2, 3, 4]);
        assert!(parse_client_frame(&long_ping).is_err());
        let fragmented_ping = client_frame(false, 0x9, b"x", [1, 2, 3, 4]);
        assert!(parse_client_frame(&fragmented_ping).is_err());
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&((MAX_MESSAGE_BYTES as u64 + 1).to_be_bytes()));
        assert_eq!(parse_client_frame(&huge).unwrap_err().close_code(), CLOSE_TOO_BIG);
        assert_eq!(close_code(&[3]).unwrap_err().close_code(), CLOSE_PROTOCOL);
        assert!(close_code(&[0x03, 0xEC]).is_err()); // 1004 is reserved
        assert_eq!(close_code(&[0x03, 0xE8, b'o', b'k']).unwrap(), 1000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random bytes never panic the frame parser.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_client_frame(&bytes);
            let _ = close_code(&bytes);
        }

        /// Any frame a client encodes decodes to its payload, and every strict prefix is partial.
        #[test]
        fn round_trip_and_prefixes(
            payload in proptest::collection::vec(any::<u8>(), 0..70_000),
            mask in any::<[u8; 4]>(),
            fin in any::<bool>(),
            binary in any::<bool>(),
        ) {
            let op = if binary { 2 } else { 1 };
            let frame = client_frame(fin, op, &payload, mask);
            let (f, used) = parse_client_frame(&frame).unwrap().unwrap();
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(f.fin, fin);
            prop_assert_eq!(&f.payload, &payload);
            for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
                prop_assert!(parse_client_frame(&frame[..cut]).unwrap().is_none());
            }
        }

        /// Server frames carry the payload length in the right one of the three encodings.
        #[test]
        fn server_frames_round_trip_through_the_client_parser(len in 0usize..70_000) {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            write_frame(&mut out, Opcode::Binary, &payload);
            // Re-mask it as a client would and parse it back.
            let header_len = out.len() - len;
            let mut masked = out[..header_len].to_vec();
            masked[1] |= 0x80;
            masked.extend_from_slice(&[0, 0, 0, 0]);
            masked.extend_from_slice(&payload);
            let (f, _) = parse_client_frame(&masked).unwrap().unwrap();
            prop_assert_eq!(f.payload.len(), len);
        }
    }
}
