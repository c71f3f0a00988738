//! Prometheus metrics: counters and histograms shared by every network thread (relaxed atomics,
//! no locks), rendered in the text exposition format by a small server on `--metrics-port`.
//!
//! Threads: [`serve_metrics`] runs one blocking thread, `strobe-metrics`, answering one
//! connection at a time with short timeouts; it is off the request path.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use strobe_engine::Engine;

/// Limits and refusals counted under `strobe_net_errors_total{kind=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed HTTP request (400).
    BadRequest,
    /// Request head over the limit (431).
    HeaderTooLarge,
    /// Request body over the limit (413).
    BodyTooLarge,
    /// JSON-RPC batch over the limit.
    BatchTooLarge,
    /// Connection refused at the connection limit (503).
    ConnectionLimit,
    /// A request not completed within the request timeout (408).
    RequestTimeout,
    /// A connection idle past the idle timeout.
    IdleTimeout,
    /// WebSocket protocol violation (close 1002/1007).
    WsProtocol,
    /// WebSocket message over the limit (close 1009).
    WsTooBig,
    /// A subscriber that fell behind (close 1008, or the binary feed's error frame).
    SlowConsumer,
    /// `eth_subscribe` over the per-connection limit.
    SubscriptionLimit,
    /// Malformed or oversized binary-protocol frame.
    BinaryMalformed,
}

const ERROR_KINDS: [(ErrorKind, &str); 12] = [
    (ErrorKind::BadRequest, "bad_request"),
    (ErrorKind::HeaderTooLarge, "header_too_large"),
    (ErrorKind::BodyTooLarge, "body_too_large"),
    (ErrorKind::BatchTooLarge, "batch_too_large"),
    (ErrorKind::ConnectionLimit, "connection_limit"),
    (ErrorKind::RequestTimeout, "request_timeout"),
    (ErrorKind::IdleTimeout, "idle_timeout"),
    (ErrorKind::WsProtocol, "ws_protocol"),
    (ErrorKind::WsTooBig, "ws_too_big"),
    (ErrorKind::SlowConsumer, "slow_consumer"),
    (ErrorKind::SubscriptionLimit, "subscription_limit"),
    (ErrorKind::BinaryMalformed, "binary_malformed"),
];

/// A histogram with fixed bucket bounds in milliseconds.
pub struct Histogram {
    bounds_ms: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds_ms: &'static [f64]) -> Self {
        Self {
            bounds_ms,
            buckets: bounds_ms.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        if let Some(i) = self.bounds_ms.iter().position(|b| ms <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds_ms.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", b / 1e3);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric the network layer keeps.
pub struct Metrics {
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// WebSocket upgrades completed.
    pub websocket_upgrades: AtomicU64,
    /// Binary-protocol connections opened.
    pub binary_connections: AtomicU64,
    /// JSON-RPC calls over HTTP.
    pub http_calls: AtomicU64,
    /// JSON-RPC calls over WebSocket.
    pub ws_calls: AtomicU64,
    /// Binary-protocol frames received.
    pub binary_frames: AtomicU64,
    /// Subscriptions active now (WebSocket and binary feeds).
    pub subscriptions_active: AtomicU64,
    /// Subscription notifications written.
    pub notifications: AtomicU64,
    errors: Vec<AtomicU64>,
    /// Interval between consecutive durable mini-blocks.
    pub mini_block_interval: Histogram,
    /// From a sync send's arrival to its receipt leaving (`eth_sendRawTransactionSync`,
    /// `realtime_sendRawTransaction`, binary wait mode).
    pub sync_send_latency: Histogram,
    /// The sender-recovery workers, for their queue depth (set once the server starts).
    pub recovery: std::sync::OnceLock<Arc<crate::recovery::SenderRecovery>>,
}

const INTERVAL_BOUNDS_MS: &[f64] =
    &[1.0, 2.0, 5.0, 8.0, 9.0, 9.5, 10.0, 10.5, 11.0, 12.0, 15.0, 20.0, 50.0, 100.0, 250.0, 1000.0];
const LATENCY_BOUNDS_MS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 7.0, 10.0, 13.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            websocket_upgrades: AtomicU64::new(0),
            binary_connections: AtomicU64::new(0),
            http_calls: AtomicU64::new(0),
            ws_calls: AtomicU64::new(0),
            binary_frames: AtomicU64::new(0),
            subscriptions_active: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            errors: ERROR_KINDS.iter().map(|_| AtomicU64::new(0)).collect(),
            mini_block_interval: Histogram::new(INTERVAL_BOUNDS_MS),
            sync_send_latency: Histogram::new(LATENCY_BOUNDS_MS),
            recovery: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        let i = ERROR_KINDS.iter().position(|(k, _)| *k == kind).expect("listed");
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        let i = ERROR_KINDS.iter().position(|(k, _)| *k == kind).expect("listed");
        self.errors[i].load(Ordering::Relaxed)
    }

    /// The text exposition of every metric, plus the engine's queue depths.
    pub fn render(&self, engine: &Engine) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let depths = engine.queue_depths();
        let recovery_queued = self.recovery.get().map_or(0, |r| r.queued() as u64);
        let scalars: [(&str, &str, &str, u64); 12] = [
            (
                "strobe_net_connections_accepted_total",
                "counter",
                "Connections accepted.",
                load(&self.connections_accepted),
            ),
            (
                "strobe_net_connections_open",
                "gauge",
                "Connections open.",
                load(&self.connections_open),
            ),
            (
                "strobe_net_websocket_upgrades_total",
                "counter",
                "WebSocket upgrades.",
                load(&self.websocket_upgrades),
            ),
            (
                "strobe_net_binary_connections_total",
                "counter",
                "Binary-protocol connections.",
                load(&self.binary_connections),
            ),
            (
                "strobe_rpc_http_calls_total",
                "counter",
                "JSON-RPC calls over HTTP.",
                load(&self.http_calls),
            ),
            (
                "strobe_rpc_ws_calls_total",
                "counter",
                "JSON-RPC calls over WebSocket.",
                load(&self.ws_calls),
            ),
            (
                "strobe_binary_frames_total",
                "counter",
                "Binary-protocol frames received.",
                load(&self.binary_frames),
            ),
            (
                "strobe_subscriptions_active",
                "gauge",
                "Active subscriptions.",
                load(&self.subscriptions_active),
            ),
            (
                "strobe_subscription_notifications_total",
                "counter",
                "Subscription notifications sent.",
                load(&self.notifications),
            ),
            (
                "strobe_intake_queue_depth",
                "gauge",
                "Commands waiting for the sequencer.",
                depths.intake as u64,
            ),
            ("strobe_pool_transactions", "gauge", "Transactions in the pool.", depths.pool as u64),
            (
                "strobe_recovery_queue_depth",
                "gauge",
                "Transactions waiting for sender recovery.",
                recovery_queued,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP strobe_net_errors_total Requests refused or connections closed, by kind.\n\
             # TYPE strobe_net_errors_total counter"
        );
        for ((_, name), v) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(out, "strobe_net_errors_total{{kind=\"{name}\"}} {}", load(v));
        }
        self.mini_block_interval.render(
            &mut out,
            "strobe_mini_block_interval_seconds",
            "Interval between consecutive durable mini-blocks.",
        );
        self.sync_send_latency.render(
            &mut out,
            "strobe_sync_send_latency_seconds",
            "Sync send arrival to receipt.",
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until `stop` is set.
pub fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("strobe-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let mut got = 0;
            while got < buf.len() {
                match conn.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]);
            let (status, body) = if head.starts_with("GET /metrics") || head.starts_with("GET / ") {
                ("200 OK", metrics.render(&engine))
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
    }
}
