//! A blocking JSON-RPC client over one keep-alive HTTP/1.1 connection, and the dev accounts'
//! keys: all the tools and harnesses need to drive a node, with no async runtime.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{hex, Address, Signature};
use alloy_signer_local::{coins_bip39::English, MnemonicBuilder, PrivateKeySigner};
use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::Child,
    time::Duration,
};

/// The dev chain's mnemonic (anvil's and hardhat's).
pub const MNEMONIC: &str = "test test test test test test test test test test test junk";
/// The dev chain's id.
pub const CHAIN_ID: u64 = 31337;
/// Largest response body accepted.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A keep-alive HTTP/1.1 JSON-RPC client over one TCP connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Client {
    /// Connects to `url` (`http://host:port`).
    pub fn connect(url: &str) -> std::io::Result<Self> {
        let host = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let stream = TcpStream::connect(&host)?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream, host })
    }

    /// Fails reads that take longer than `timeout`.
    pub fn set_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))
    }

    /// Posts `body` and returns the parsed response.
    pub fn call(&mut self, body: &Value) -> std::io::Result<Value> {
        let body = serde_json::to_vec(body)?;
        write!(
            self.writer,
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.writer.write_all(&body)?;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        if len > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("response too large"));
        }
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf)?;
        Ok(serde_json::from_slice(&buf)?)
    }

    /// Calls `method` with `params`.
    pub fn rpc(&mut self, method: &str, params: Value) -> std::io::Result<Value> {
        self.call(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
    }

    /// The newest block number.
    pub fn block_number(&mut self) -> std::io::Result<u64> {
        let v = self.rpc("eth_blockNumber", json!([]))?;
        quantity(&v["result"])
            .ok_or_else(|| std::io::Error::other(format!("eth_blockNumber answered {v}")))
    }

    /// The transaction count of `address` at `tag`.
    pub fn nonce(&mut self, address: Address, tag: &str) -> std::io::Result<u64> {
        let v = self.rpc("eth_getTransactionCount", json!([address, tag]))?;
        Ok(quantity(&v["result"]).unwrap_or(0))
    }
}

/// Reads a starting `strobe`'s stdout up to its `RPC URL: ` line and returns the URL and the
/// lines printed before it (banner, settlement lines); the rest of its output is drained on a
/// thread so the child never blocks on a full pipe. `child` must have a piped stdout.
pub fn await_rpc_url(child: &mut Child) -> Result<(String, Vec<String>), String> {
    let stdout = child.stdout.take().ok_or("the node's stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => match line.strip_prefix("RPC URL: ") {
                Some(u) => break u.to_string(),
                None => banner.push(line),
            },
            _ => {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!("the node exited during start ({status}); see its log"));
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((url, banner))
}

/// Parses a hex quantity.
pub fn quantity(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

/// Dev account `index` of the standard mnemonic.
pub fn dev_signer(index: u32) -> PrivateKeySigner {
    MnemonicBuilder::<English>::default()
        .phrase(MNEMONIC)
        .index(index)
        .and_then(|b| b.build())
        .expect("the standard mnemonic derives every index")
}

/// Signs an EIP-1559 transaction.
pub fn sign_eip1559(s: &PrivateKeySigner, tx: &mut TxEip1559) -> Signature {
    use alloy_signer::SignerSync;
    s.sign_hash_sync(&tx.signature_hash()).expect("local keys always sign")
}

/// Signs `tx` and returns its EIP-2718 encoding as a 0x-hex string.
pub fn signed_hex(s: &PrivateKeySigner, mut tx: TxEip1559) -> String {
    let sig = sign_eip1559(s, &mut tx);
    format!("0x{}", hex::encode(TxEnvelope::from(tx.into_signed(sig)).encoded_2718()))
}
