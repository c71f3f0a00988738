//! HTTP/1.1 request framing and response writing.
//!
//! Pure functions over byte buffers, so the parser is fuzzed and property-tested without sockets.
//! Only what JSON-RPC over HTTP needs: `POST` with `Content-Length`, `OPTIONS` preflight, `GET`
//! for a health check; keep-alive and pipelining.

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted (geth's default is 5 MB).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

/// Request methods strobe serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A JSON-RPC call.
    Post,
    /// CORS preflight.
    Options,
    /// Health check.
    Get,
    /// `HEAD` health check.
    Head,
    /// Anything else.
    Other,
}

/// A complete request, borrowing nothing (the body is copied out of the connection buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request path.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `Sec-WebSocket-Key` of a WebSocket upgrade request.
    pub websocket_key: Option<String>,
}

/// A request that cannot be served; the connection is answered with `status` and closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed request line or headers.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Head larger than [`MAX_HEAD_BYTES`] or more than [`MAX_HEADERS`] headers.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// Body larger than [`MAX_BODY_BYTES`].
    #[error("request body of {0} bytes is over the limit")]
    BodyTooLarge(usize),
    /// `Transfer-Encoding` other than identity.
    #[error("chunked request bodies are not supported; send Content-Length")]
    LengthRequired,
    /// A WebSocket upgrade of another version than 13 (RFC 6455).
    #[error("unsupported WebSocket version; use Sec-WebSocket-Version: 13")]
    UpgradeRequired,
}

impl HttpError {
    /// The status line to answer with.
    pub fn status(&self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "400 Bad Request",
            HttpError::HeadTooLarge => "431 Request Header Fields Too Large",
            HttpError::BodyTooLarge(_) => "413 Payload Too Large",
            HttpError::LengthRequired => "411 Length Required",
            HttpError::UpgradeRequired => "426 Upgrade Required",
        }
    }
}

/// Result of looking at the start of a connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and how many buffer bytes it used.
    Complete(Request, usize),
    /// More bytes are needed; `expect_continue` is set when the client waits for `100 Continue`.
    Partial {
        /// The head is complete and asked for `Expect: 100-continue`.
        expect_continue: bool,
    },
}

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(Parsed::Partial { expect_continue: false });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let method = match req.method.unwrap_or("") {
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version >= 1;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    let mut upgrade_websocket = false;
    let mut websocket_key = None;
    let mut websocket_version = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(HttpError::BadRequest("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != v) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !h.value.eq_ignore_ascii_case(b"identity") {
                return Err(HttpError::LengthRequired);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket = String::from_utf8_lossy(h.value)
                .split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            websocket_key = std::str::from_utf8(h.value).ok().map(|k| k.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            websocket_version = Some(h.value.trim_ascii().to_vec());
        }
    }
    let websocket_key = if upgrade_websocket && method == Method::Get {
        if websocket_version.as_deref() != Some(b"13") {
            return Err(HttpError::UpgradeRequired);
        }
        match websocket_key {
            Some(k) if !k.is_empty() => Some(k),
            _ => return Err(HttpError::BadRequest("WebSocket upgrade without Sec-WebSocket-Key")),
        }
    } else {
        None
    };
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge(body_len));
    }
    let path = req.path.unwrap_or("/").to_string();
    if buf.len() < head_len + body_len {
        return Ok(Parsed::Partial { expect_continue });
    }
    let body = buf[head_len..head_len + body_len].to_vec();
    Ok(Parsed::Complete(
        Request { method, path, keep_alive, body, websocket_key },
        head_len + body_len,
    ))
}

/// Appends a complete response with CORS headers to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    // Written piece by piece: this runs for every response, and `format!` machinery costs more
    // than the rest of the head.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(
        b"\r\nAccess-Control-Allow-Origin: *\r\n\
          Access-Control-Allow-Methods: POST, GET, OPTIONS\r\n\
          Access-Control-Allow-Headers: Content-Type, Authorization\r\n\
          Access-Control-Max-Age: 86400\r\n",
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_pipelined_requests() {
        let one = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let mut buf = one.to_vec();
        buf.extend_from_slice(one);
        let Parsed::Complete(req, used) = parse_request(&buf).unwrap() else { panic!() };
        assert_eq!(req.body, b"{}");
        assert_eq!(used, one.len());
        assert!(matches!(parse_request(&buf[used..]).unwrap(), Parsed::Complete(_, _)));
    }

    #[test]
    fn limits_answer_with_their_status() {
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        assert_eq!(parse_request(big.as_bytes()).unwrap_err().status(), "413 Payload Too Large");
        let mut head = b"POST / HTTP/1.1\r\nX: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
        assert_eq!(parse_request(&head).unwrap_err(), HttpError::HeadTooLarge);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked).unwrap_err(), HttpError::LengthRequired);
    }

    #[test]
    fn http10_closes_and_expect_continue_is_seen() {
        let r = b"POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx";
        let Parsed::Complete(req, _) = parse_request(r).unwrap() else { panic!() };
        assert!(!req.keep_alive);
        let r = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse_request(r).unwrap(), Parsed::Partial { expect_continue: true });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Random bytes never panic the parser.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes);
        }

        /// A valid request split at any point parses as partial, then whole.
        #[test]
        fn split_anywhere(body in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
            let mut buf = format!("POST /rpc HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            buf.extend_from_slice(&body);
            let cut = cut.index(buf.len());
            let partial = parse_request(&buf[..cut]).unwrap();
            let is_partial = matches!(partial, Parsed::Partial { .. });
            prop_assert!(is_partial);
            let Parsed::Complete(req, used) = parse_request(&buf).unwrap() else { panic!() };
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(req.body, body);
        }
    }
}
