//! A minimal blocking WebSocket client for JSON-RPC (RFC 6455, client side): the opening
//! handshake, masked text frames out, and whole text frames in (pings answered on the way). It
//! carries exactly what the tools need; clients for applications should use a full library.

use serde_json::Value;
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
};

/// The opening handshake (the key is fixed: this client checks nothing a server could forge).
pub const HANDSHAKE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked, final text frame carrying `payload`.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    masked(0x1, payload)
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x5a, 0xa5, 0x3c, 0xc3];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// One whole server frame at the front of `buf`: its opcode, payload range and length.
pub fn server_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= at + len).then(|| (buf[0] & 0x0F, at..at + len))
}

/// A blocking WebSocket JSON-RPC connection.
pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl WsClient {
    /// Connects and upgrades.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(HANDSHAKE)?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
            if head.len() > 16 * 1024 {
                return Err(io::Error::other("handshake answer too long"));
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other(String::from_utf8_lossy(&head).into_owned()));
        }
        Ok(Self { stream, buf: Vec::new() })
    }

    /// A second handle on the same connection, so one thread sends while another receives.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { stream: self.stream.try_clone()?, buf: Vec::new() })
    }

    /// Sets how long [`Self::recv`] waits.
    pub fn set_timeout(&self, t: std::time::Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Sends one JSON value as a text message.
    pub fn send(&mut self, v: &Value) -> io::Result<()> {
        self.stream.write_all(&masked_text(v.to_string().as_bytes()))
    }

    /// The next text message as JSON; `Ok(None)` when the server closed.
    pub fn recv(&mut self) -> io::Result<Option<Value>> {
        loop {
            if let Some((op, range)) = server_frame(&self.buf) {
                let end = range.end;
                let payload = self.buf[range].to_vec();
                self.buf.drain(..end);
                match op {
                    0x1 => {
                        return serde_json::from_slice(&payload)
                            .map(Some)
                            .map_err(|e| io::Error::other(e.to_string()))
                    }
                    0x8 => return Ok(None),
                    0x9 => self.stream.write_all(&masked(0xA, &payload))?,
                    _ => {}
                }
                continue;
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
