//! A blocking client of strobe's binary protocol (`docs/binary-protocol.md`): submit raw
//! transactions (optionally waiting for receipts) and read the mini-block feed. Frames are
//! encoded and decoded by `strobe_net::binary`, the same code the server uses.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};
use strobe_net::binary::{self, FEED_MINI_BLOCKS, PREFACE, SUBMIT_WAIT_RECEIPT};
pub use strobe_net::binary::{ClientMsg, CompactReceipt, MiniBlockFrame, ServerMsg};

/// Errors of the binary client.
#[derive(Debug, thiserror::Error)]
pub enum BinaryClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server does not speak the protocol.
    #[error("the server answered the preface with {0:?}")]
    Preface(Vec<u8>),
    /// A frame could not be decoded.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] binary::BinaryError),
}

/// One binary-protocol connection.
pub struct BinaryClient {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl BinaryClient {
    /// Connects and exchanges the preface.
    pub fn connect(addr: SocketAddr) -> Result<Self, BinaryClientError> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(PREFACE)?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer)?;
        if &answer != PREFACE {
            return Err(BinaryClientError::Preface(answer.to_vec()));
        }
        Ok(Self { stream, buf: Vec::new(), out: Vec::new() })
    }

    /// A second handle on the same connection (the preface is done), so one thread can send
    /// while another receives.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { stream: self.stream.try_clone()?, buf: Vec::new(), out: Vec::new() })
    }

    /// Sets how long [`Self::recv`] waits.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Queues a submission (sent by [`Self::flush`], or by the next [`Self::send`]).
    pub fn queue_submit(&mut self, tag: u64, raw: &[u8], wait_receipt: bool) {
        let flags = if wait_receipt { SUBMIT_WAIT_RECEIPT } else { 0 };
        binary::encode_client(&ClientMsg::Submit { tag, flags, raw: raw.to_vec() }, &mut self.out);
    }

    /// Sends one message now (with anything queued before it).
    pub fn send(&mut self, msg: &ClientMsg) -> io::Result<()> {
        binary::encode_client(msg, &mut self.out);
        self.flush()
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Subscribes to (or, with `false`, leaves) the mini-block feed.
    pub fn subscribe_mini_blocks(&mut self, on: bool) -> io::Result<()> {
        self.send(&ClientMsg::Subscribe { feeds: if on { FEED_MINI_BLOCKS } else { 0 } })
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits for the next message; `Ok(None)` when the server closed the connection.
    pub fn recv(&mut self) -> Result<Option<ServerMsg>, BinaryClientError> {
        loop {
            if let Some((kind, body, used)) = binary::parse_frame(&self.buf)? {
                let msg = binary::decode_server(kind, body)?;
                self.buf.drain(..used);
                return Ok(Some(msg));
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
