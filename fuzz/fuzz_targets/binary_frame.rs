//! Binary-protocol frames, both directions: any bytes give a message, "need more", or an error;
//! whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strobe_net::binary::{decode_client, decode_server, encode_client, encode_server, parse_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((kind, body, used))) = parse_frame(data) {
        assert!(used <= data.len());
        if let Ok(msg) = decode_client(kind, body) {
            let mut out = Vec::new();
            encode_client(&msg, &mut out);
            assert_eq!(&out[..], &data[..used]);
        }
        if let Ok(msg) = decode_server(kind, body) {
            let mut out = Vec::new();
            encode_server(&msg, &mut out);
            assert_eq!(&out[..], &data[..used]);
        }
    }
});
