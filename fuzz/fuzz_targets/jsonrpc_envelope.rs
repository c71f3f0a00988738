//! The JSON-RPC layer end to end: any body (single call, batch, garbage) dispatched against a
//! real in-memory engine gives a well-formed answer (or none, for notifications) and never
//! panics. Method names and parameters that parse reach the real method implementations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex, OnceLock};
use strobe_engine::{
    config::{ChainConfig, Genesis},
    storage::MemoryStore,
    Engine,
};
use strobe_net::rpc::{Callbacks, Rpc};

fn rpc() -> &'static Mutex<Rpc> {
    static RPC: OnceLock<Mutex<Rpc>> = OnceLock::new();
    RPC.get_or_init(|| {
        let engine = Engine::start(
            ChainConfig::default(),
            &Genesis::default(),
            Box::new(MemoryStore::new()),
        )
        .expect("engine");
        Mutex::new(Rpc::new(Arc::new(engine), Vec::new()))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rpc = rpc().lock().unwrap();
    let callbacks = |_| Callbacks { on_accept: Box::new(|_| {}), on_receipt: Box::new(|_| {}) };
    let d = rpc.dispatch(data, &callbacks);
    if d.is_ready() {
        let body = d.body();
        if !body.is_empty() {
            let v: serde_json_check::Value =
                serde_json_check::from_slice(&body).expect("valid JSON");
            assert!(v.is_object() || v.is_array());
        }
    }
});
