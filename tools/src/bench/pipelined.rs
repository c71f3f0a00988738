//! Lanes over pipelined transports (strobe's binary protocol, JSON-RPC over WebSocket): each
//! submission carries its sample index as a tag, so answers can come back in any order. In the
//! open loop a reader thread takes the answers while the lane keeps to the schedule; in the closed
//! loop the lane waits for each answer itself.

use super::Shared;
use crate::{
    binary_client::{BinaryClient, ServerMsg},
    ws_client::WsClient,
};
use serde_json::json;
use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// A connection that carries tagged submissions and tagged answers.
pub(super) trait Pipelined: Sized + Send {
    /// Opens a connection to `addr`.
    fn open(addr: SocketAddr) -> io::Result<Self>;
    /// A second handle for a reader thread.
    fn try_clone(&self) -> io::Result<Self>;
    /// How long a receive waits.
    fn set_timeout(&self, t: Duration) -> io::Result<()>;
    /// Sends transaction `raw` (0x-hex) tagged `tag`.
    fn submit(&mut self, tag: usize, raw: &str) -> io::Result<()>;
    /// The next message: `Some((tag, outcome))` when it finishes a submission, `None` for
    /// anything else; an error when the connection failed or closed.
    fn answer(&mut self) -> io::Result<Option<(usize, Result<(), String>)>>;
}

/// strobe's binary protocol in wait mode.
pub(super) struct Binary(BinaryClient);

impl Pipelined for Binary {
    fn open(addr: SocketAddr) -> io::Result<Self> {
        BinaryClient::connect(addr).map(Binary).map_err(|e| io::Error::other(e.to_string()))
    }
    fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Binary)
    }
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.0.set_timeout(t)
    }
    fn submit(&mut self, tag: usize, raw: &str) -> io::Result<()> {
        let bytes =
            alloy_primitives::hex::decode(raw).map_err(|e| io::Error::other(e.to_string()))?;
        self.0.queue_submit(tag as u64, &bytes, true);
        self.0.flush()
    }
    fn answer(&mut self) -> io::Result<Option<(usize, Result<(), String>)>> {
        match self.0.recv().map_err(|e| io::Error::other(e.to_string()))? {
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Some(ServerMsg::Receipt { tag, receipt }) => {
                let r = if receipt.success { Ok(()) } else { Err("reverted".to_string()) };
                Ok(Some((tag as usize, r)))
            }
            Some(ServerMsg::Rejected { tag, message, .. }) => {
                Ok(Some((tag as usize, Err(super::message_kind(&message)))))
            }
            Some(_) => Ok(None),
        }
    }
}

/// `eth_sendRawTransactionSync` over WebSocket, the tag as the request id.
pub(super) struct Ws(WsClient);

impl Pipelined for Ws {
    fn open(addr: SocketAddr) -> io::Result<Self> {
        WsClient::connect(addr).map(Ws)
    }
    fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Ws)
    }
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.0.set_timeout(t)
    }
    fn submit(&mut self, tag: usize, raw: &str) -> io::Result<()> {
        let call = json!({"jsonrpc": "2.0", "id": tag, "method": "eth_sendRawTransactionSync", "params": [raw]});
        self.0.send(&call)
    }
    fn answer(&mut self) -> io::Result<Option<(usize, Result<(), String>)>> {
        let v = self.0.recv()?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let Some(tag) = v["id"].as_u64() else { return Ok(None) };
        let outcome = if let Some(msg) = v["error"]["message"].as_str() {
            Err(super::message_kind(msg))
        } else if v["result"]["status"] == "0x1" {
            Ok(())
        } else {
            Err("reverted".to_string())
        };
        Ok(Some((tag as usize, outcome)))
    }
}

/// Sends one lane's transactions over a `C` connection and finishes their samples.
pub(super) fn lane<C: Pipelined>(
    shared: &Shared,
    url: &str,
    mine: Vec<(usize, String)>,
    due: &[u64],
    open: bool,
    stop_at: Instant,
) {
    let fail_all = |why: &str| {
        for (j, _) in &mine {
            shared.samples.lock().unwrap_or_else(|p| p.into_inner())[*j].sent = true;
            shared.finish(*j, Err(why.into()));
        }
    };
    let host = url.trim_start_matches("http://").trim_start_matches("ws://").trim_end_matches('/');
    let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(host).ok().and_then(|mut a| a.next())
    else {
        return fail_all("bad address");
    };
    let Ok(mut conn) = C::open(addr) else { return fail_all("cannot connect") };
    let mark_sent = |j: usize, due_us: u64| {
        let mut s = shared.samples.lock().unwrap_or_else(|p| p.into_inner());
        s[j].due_us = due_us;
        s[j].sent = true;
    };
    if !open {
        for (j, raw) in mine {
            if Instant::now() >= stop_at {
                break;
            }
            mark_sent(j, shared.now_us());
            if conn.submit(j, &raw).is_err() {
                shared.finish(j, Err("transport: send".into()));
                continue;
            }
            loop {
                match conn.answer() {
                    Ok(Some((tag, outcome))) => {
                        shared.finish(tag, outcome);
                        if tag == j {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        shared.finish(j, Err("transport: receive".into()));
                        break;
                    }
                }
            }
        }
        return;
    }
    let Ok(mut rx) = conn.try_clone() else { return fail_all("cannot clone the socket") };
    let _ = rx.set_timeout(Duration::from_millis(200));
    let expected = mine.len();
    let give_up = stop_at + Duration::from_secs(30);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut done = 0;
            while done < expected && Instant::now() < give_up {
                match rx.answer() {
                    Ok(Some((tag, outcome))) => {
                        shared.finish(tag, outcome);
                        done += 1;
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(_) => continue, // a read timeout: check the deadline
                }
            }
        });
        for (j, raw) in &mine {
            let at = shared.start + Duration::from_micros(due[*j]);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            mark_sent(*j, due[*j]);
            if conn.submit(*j, raw).is_err() {
                shared.finish(*j, Err("transport: send".into()));
            }
        }
        let _ = reader.join();
    });
}
