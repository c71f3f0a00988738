//! The EigenDA data path: a client for the EigenDA proxy's REST API, and [`MemStore`], a local
//! server that speaks exactly that API with in-memory storage (as the proxy's own memstore mode
//! does) for tests and dev chains.
//!
//! The proxy API (standard commitment mode):
//! - `POST /put?commitment_mode=standard` with the data as the body answers the commitment
//!   (certificate) bytes;
//! - `GET /get/0x<hex commitment>?commitment_mode=standard` answers the data.
//!
//! Real deployments point `--da-url` at a real EigenDA proxy (which disperses to EigenDA and
//! verifies certificates on read); nothing here changes.
//!
//! Threads: the client runs on the poster's or verifier's runtime. `MemStore` runs one accept
//! thread and one thread per connection (at most [`MEMSTORE_MAX_CONNECTIONS`]).

use alloy::{
    primitives::{hex, keccak256},
    transports::http::reqwest,
};
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// Largest blob EigenDA takes (16 MiB); larger puts are refused.
pub const MAX_BLOB_BYTES: usize = 16 << 20;
/// Largest commitment the client accepts back.
pub const MAX_COMMITMENT_BYTES: usize = 64 << 10;
/// Time allowed for one request to the proxy.
pub const DA_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections `MemStore` serves at once; more are answered 503.
pub const MEMSTORE_MAX_CONNECTIONS: usize = 64;
/// Largest request head `MemStore` reads.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Idle or slow connections to `MemStore` are closed after this.
const MEMSTORE_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a DA request failed.
#[derive(Debug, thiserror::Error)]
pub enum DaError {
    /// The proxy could not be reached or answered garbage.
    #[error("EigenDA proxy at {url}: {reason}")]
    Transport {
        /// The proxy.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The proxy answered an error status.
    #[error("EigenDA proxy answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The blob is larger than EigenDA takes.
    #[error("blob of {0} bytes is larger than EigenDA's {MAX_BLOB_BYTES}")]
    TooLarge(usize),
}

/// A client of the EigenDA proxy's REST API.
#[derive(Clone, Debug)]
pub struct DaClient {
    base: String,
    http: reqwest::Client,
}

impl DaClient {
    /// A client of the proxy at `url` (e.g. `http://127.0.0.1:3100`).
    pub fn new(url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(DA_REQUEST_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        Self { base: url.trim_end_matches('/').to_string(), http }
    }

    fn transport(&self, e: impl std::fmt::Display) -> DaError {
        DaError::Transport { url: self.base.clone(), reason: e.to_string() }
    }

    /// Stores `data` and returns its commitment (certificate).
    pub async fn put(&self, data: &[u8]) -> Result<Vec<u8>, DaError> {
        if data.len() > MAX_BLOB_BYTES {
            return Err(DaError::TooLarge(data.len()));
        }
        let url = format!("{}/put?commitment_mode=standard", self.base);
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.body(resp, MAX_COMMITMENT_BYTES).await
    }

    /// Fetches the data behind `commitment`.
    pub async fn get(&self, commitment: &[u8]) -> Result<Vec<u8>, DaError> {
        let url =
            format!("{}/get/0x{}?commitment_mode=standard", self.base, hex::encode(commitment));
        let resp = self.http.get(url).send().await.map_err(|e| self.transport(e))?;
        self.body(resp, MAX_BLOB_BYTES).await
    }

    async fn body(&self, mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, DaError> {
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > limit {
                return Err(self.transport(format!("answer larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(DaError::Status { status, body: text });
        }
        Ok(body)
    }
}

/// The commitment `MemStore` answers for `data`: a version byte (0, as the proxy's first
/// certificate version) and keccak256 of the data. Content-addressed, so a repeated put of the
/// same data (a poster retrying after a crash) gets the same commitment.
pub fn memstore_commitment(data: &[u8]) -> Vec<u8> {
    let mut c = vec![0u8];
    c.extend_from_slice(keccak256(data).as_slice());
    c
}

type Blobs = Arc<Mutex<HashMap<Vec<u8>, Arc<Vec<u8>>>>>;

/// A local stand-in for the EigenDA proxy in memstore mode: same REST API, blobs kept in memory.
/// Stops when dropped.
pub struct MemStore {
    addr: SocketAddr,
    blobs: Blobs,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemStore {
    /// Serves on `addr` (port 0 picks a free one).
    pub fn start(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let blobs: Blobs = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (blobs.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("strobe-da-memstore".into())
            .spawn(move || accept_loop(listener, b, s))?;
        Ok(Self { addr, blobs, stop, thread: Some(thread) })
    }

    /// Base URL to give a [`DaClient`] or `--da-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no blob is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the data behind `commitment`: a DA layer serving the wrong bytes, for
    /// fault-injection tests of the verifier.
    pub fn overwrite(&self, commitment: &[u8], data: Vec<u8>) {
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(commitment.to_vec(), data.into());
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, blobs: Blobs, stop: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = conn else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MEMSTORE_MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&mut stream, 503, b"too many connections");
            continue;
        }
        let (blobs, open) = (blobs.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("strobe-da-conn".into()).spawn(move || {
            let _ = serve(stream, &blobs);
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("memstore: could not start a connection thread");
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// Serves one keep-alive connection until it closes, errs or sends something unparseable.
fn serve(mut stream: TcpStream, blobs: &Blobs) -> std::io::Result<()> {
    stream.set_read_timeout(Some(MEMSTORE_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(MEMSTORE_IO_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        // Read until a whole head is in.
        let (head_len, method, path, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let length = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    let method = req.method.unwrap_or("").to_string();
                    break (n, method, req.path.unwrap_or("").to_string(), length);
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {}
                Ok(httparse::Status::Partial) => {
                    return respond(&mut stream, 431, b"head too large")
                }
                Err(_) => return respond(&mut stream, 400, b"malformed request"),
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if content_length > MAX_BLOB_BYTES {
            return respond(&mut stream, 413, b"blob larger than 16 MiB");
        }
        while buf.len() < head_len + content_length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        if !query.split('&').any(|kv| kv == "commitment_mode=standard") {
            respond(&mut stream, 400, b"only commitment_mode=standard is served")?;
            continue;
        }
        match (method.as_str(), route) {
            ("POST", "/put") | ("POST", "/put/") => {
                let commitment = memstore_commitment(&body);
                blobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(commitment.clone(), body.into());
                respond(&mut stream, 200, &commitment)?;
            }
            ("GET", r) if r.starts_with("/get/0x") => match hex::decode(&r[7..]) {
                Ok(key) => {
                    let blob = blobs.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
                    match blob {
                        Some(data) => respond(&mut stream, 200, &data)?,
                        None => respond(&mut stream, 404, b"no blob with that commitment")?,
                    }
                }
                Err(_) => respond(&mut stream, 400, b"commitment is not hex")?,
            },
            _ => respond(&mut stream, 404, b"unknown route")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn put_then_get_round_trips_over_http() {
        let store = MemStore::start("127.0.0.1:0").unwrap();
        let client = DaClient::new(&store.url());
        runtime().block_on(async {
            let data = b"a compressed batch".to_vec();
            let c = client.put(&data).await.unwrap();
            assert_eq!(c, memstore_commitment(&data));
            assert_eq!(client.put(&data).await.unwrap(), c, "puts are idempotent");
            assert_eq!(client.get(&c).await.unwrap(), data);
            let missing = client.get(&memstore_commitment(b"other")).await.unwrap_err();
            assert!(matches!(missing, DaError::Status { status: 404, .. }), "{missing}");
            let big = vec![1u8; MAX_BLOB_BYTES + 1];
            assert!(matches!(client.put(&big).await, Err(DaError::TooLarge(_))));
        });
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn garbage_and_oversized_requests_get_http_errors() {
        let store = MemStore::start("127.0.0.1:0").unwrap();
        let ask = |req: &[u8]| {
            let mut s = TcpStream::connect(store.addr).unwrap();
            s.write_all(req).unwrap();
            // Done sending: a kept-alive connection then ends after its answer.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(ask(b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let huge = format!(
            "POST /put?commitment_mode=standard HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BLOB_BYTES + 1
        );
        assert!(ask(huge.as_bytes()).starts_with("HTTP/1.1 413"));
        let long_head = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES + 10));
        assert!(ask(long_head.as_bytes()).starts_with("HTTP/1.1 431"));
        assert!(ask(b"GET /get/0xzz?commitment_mode=standard HTTP/1.1\r\n\r\n")
            .starts_with("HTTP/1.1 400"));
        assert!(ask(b"GET /get/0x00?commitment_mode=optimism_keccak HTTP/1.1\r\n\r\n")
            .starts_with("HTTP/1.1 400"));
    }
}
