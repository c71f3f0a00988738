//! WebSocket frames and close payloads: any bytes give a frame, "need more", or an error with a
//! close code; a frame never uses more bytes than it was given, and control frames stay small.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strobe_net::ws::{close_code, parse_client_frame, MAX_MESSAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse_client_frame(data) {
        Ok(Some((frame, used))) => {
            assert!(used <= data.len());
            assert!(frame.payload.len() <= MAX_MESSAGE_BYTES);
            if frame.opcode.is_control() {
                assert!(frame.payload.len() <= 125 && frame.fin);
            }
        }
        Ok(None) => {}
        Err(e) => assert!(matches!(e.close_code(), 1002 | 1009)),
    }
    let _ = close_code(data);
});
