//! Shared test helpers: start a real `strobe dev` process and talk to it.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// First dev account (anvil/hardhat key 0).
pub const DEV_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// Second dev account.
pub const DEV_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// A `strobe dev` child process; killed on drop.
pub struct DevNode {
    pub child: Child,
    pub url: String,
    /// What the node printed before its RPC URL (banner, settlement lines).
    pub banner: Vec<String>,
}

impl DevNode {
    /// Starts `strobe dev --port 0` with extra args and waits for its RPC URL. Every mini-block
    /// with a transaction runs through Block-STM (two workers), so these tests also check
    /// parallel execution end to end.
    pub fn start(extra: &[&str]) -> Self {
        let mut args =
            vec!["dev", "--quiet", "--port", "0", "--exec-threads", "2", "--parallel-min-txs", "1"];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// Starts `strobe` with exactly `args` (which must include `--port 0` or a free port) and
    /// waits for its RPC URL.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strobe"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strobe");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        let url = loop {
            assert!(Instant::now() < deadline, "strobe did not start");
            let line = lines.next().expect("strobe exited early").expect("read");
            if let Some(u) = line.strip_prefix("RPC URL: ") {
                break u.to_string();
            }
            banner.push(line);
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url, banner }
    }

    /// Sends SIGTERM/SIGINT and waits; returns the exit status and how long it took.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        let pid = self.child.id() as i32;
        // The `kill` command sends the signal, so the tests need no libc call of their own.
        Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "strobe did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for DevNode {
    /// SIGTERM first, so the node removes its temporary data directory (a killed `strobe dev`
    /// leaves ~18 MB behind in the temp dir, and the suite starts many); SIGKILL if it has not
    /// stopped within 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts a raw JSON body and returns (status line code, body).
pub fn post_raw(url: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// JSON-RPC call over a fresh connection.
pub fn rpc(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (code, text) = post_raw(url, body.to_string().as_bytes());
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Compiles a Solidity file with solc-js (tests/js) and returns (abi, bytecode hex) per contract.
pub fn compile_solidity(path: &Path) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let js = root.join("tests/js");
    if !js.join("node_modules/solc").exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm");
        assert!(ok.success(), "npm install failed in tests/js");
    }
    let out = Command::new("node").arg(js.join("compile.js")).arg(path).output().expect("node");
    assert!(out.status.success(), "solc failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("compiler output")
}
