//! `strobe-tools ws-fanout`: how long a `miniBlocks` notification takes to reach each of N
//! WebSocket subscribers. Every subscriber is its own connection; the delivery latency of one
//! notification is the receive time minus the mini-block's `mini_block_timestamp` (µs, stamped
//! when the sequencer sealed it), so it includes execution, the write-ahead-log sync, the fan-out
//! and the loopback hop. Runs on one tokio thread so the client takes one core at most.

use crate::ws_client::{masked_text, server_frame, HANDSHAKE};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// Errors of a fan-out run.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server misbehaved.
    #[error("{0}")]
    Protocol(String),
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// One delivery: which mini-block, when it was sealed and when it arrived (µs since the epoch).
#[derive(Clone, Copy, Debug)]
struct Delivery {
    number: u64,
    sealed_us: u64,
    received_us: u64,
}

/// One subscriber: connects, subscribes, then reports every notification's delivery.
async fn subscriber(
    addr: String,
    report: mpsc::UnboundedSender<Delivery>,
) -> Result<(), FanoutError> {
    let mut s = TcpStream::connect(&addr).await?;
    s.set_nodelay(true)?;
    s.write_all(HANDSHAKE).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(FanoutError::Protocol("closed during the handshake".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(FanoutError::Protocol(String::from_utf8_lossy(&buf).into()));
            }
            buf.drain(..end + 4);
            break;
        }
    }
    let sub = json!({"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["miniBlocks"]});
    s.write_all(&masked_text(sub.to_string().as_bytes())).await?;
    loop {
        // Parse every whole frame in the buffer.
        while let Some((opcode, range)) = server_frame(&buf) {
            let end = range.end;
            let received = now_us();
            if opcode == 1 {
                let v: Value = serde_json::from_slice(&buf[range])
                    .map_err(|e| FanoutError::Protocol(e.to_string()))?;
                let r = &v["params"]["result"];
                if let (Some(ts), Some(n)) =
                    (r["mini_block_timestamp"].as_str(), r["mini_block_number"].as_str())
                {
                    let hex = |s: &str| {
                        u64::from_str_radix(s.trim_start_matches("0x"), 16)
                            .map_err(|e| FanoutError::Protocol(e.to_string()))
                    };
                    let d =
                        Delivery { number: hex(n)?, sealed_us: hex(ts)?, received_us: received };
                    if report.send(d).is_err() {
                        return Ok(());
                    }
                }
            } else if opcode == 8 {
                return Err(FanoutError::Protocol("server closed the subscription".into()));
            }
            buf.drain(..end);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(FanoutError::Protocol("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs `subscribers` subscribers against `addr` (host:port) for `seconds` after all are
/// subscribed; returns a JSON line with percentiles in µs of the delivery latency (receive time
/// − seal time, per notification) and of the fan-out spread (last − first receive time of one
/// mini-block across all subscribers).
pub fn run(addr: &str, subscribers: usize, seconds: u64) -> Result<Value, FanoutError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for _ in 0..subscribers {
            let (addr, tx) = (addr.to_string(), tx.clone());
            tasks.push(tokio::spawn(subscriber(addr, tx)));
        }
        drop(tx);
        // Warm-up: until every subscriber has had a notification, or 10 s.
        let warm_until = Instant::now() + Duration::from_secs(10);
        let mut warm = 0usize;
        while warm < subscribers * 3 && Instant::now() < warm_until {
            if tokio::time::timeout(Duration::from_millis(100), rx.recv()).await.is_ok() {
                warm += 1;
            }
        }
        let mut samples = Vec::new();
        let mut per_block: std::collections::HashMap<u64, (u64, u64, usize)> =
            std::collections::HashMap::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            match tokio::time::timeout(end - Instant::now(), rx.recv()).await {
                Ok(Some(d)) => {
                    samples.push(d.received_us.saturating_sub(d.sealed_us));
                    let e = per_block.entry(d.number).or_insert((u64::MAX, 0, 0));
                    e.0 = e.0.min(d.received_us);
                    e.1 = e.1.max(d.received_us);
                    e.2 += 1;
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        let mut spreads: Vec<u64> = per_block
            .values()
            .filter(|(_, _, n)| *n == subscribers)
            .map(|(first, last, _)| last - first)
            .collect();
        spreads.sort_unstable();
        let spread_pct = |p: f64| {
            if spreads.is_empty() {
                0
            } else {
                spreads[((spreads.len() - 1) as f64 * p) as usize]
            }
        };
        let failed = tasks.iter().filter(|t| t.is_finished()).count();
        for t in tasks {
            t.abort();
        }
        if samples.is_empty() {
            return Err(FanoutError::Protocol("no notification arrived".into()));
        }
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
        Ok(json!({
            "subscribers": subscribers,
            "seconds": seconds,
            "notifications": samples.len(),
            "per_subscriber_per_s": samples.len() as f64 / subscribers as f64 / seconds as f64,
            "failed_subscribers": failed,
            "delivery_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
            "complete_mini_blocks": spreads.len(),
            "spread_us": {"p50": spread_pct(0.5), "p99": spread_pct(0.99), "max": spread_pct(1.0)},
        }))
    })
}
