//! HTTP/1.1 request framing: any bytes give a request, "need more", or a clean error, and a
//! complete request never claims more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strobe_net::http::{parse_request, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete(req, used)) = parse_request(data) {
        assert!(used <= data.len());
        assert!(req.body.len() <= used);
    }
});
