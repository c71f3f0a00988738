//! A local anvil (Foundry's dev node) as the L1, for `strobe dev --l1 anvil` and the tests.
//!
//! anvil comes from npm (`npm install @foundry-rs/anvil`, which ships the binary and runs
//! offline). [`find_anvil`] looks for it in `$STROBE_ANVIL`, on `PATH`, and in the
//! `node_modules` folders strobe's own scripts install into; [`install_anvil`] installs it into
//! strobe's cache directory with npm when none is found.

use crate::SettlementError;
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The anvil release strobe is tested with.
pub const ANVIL_NPM_PACKAGE: &str = "@foundry-rs/anvil@1.7.1";
/// How long anvil gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The first of anvil's dev keys (mnemonic "test test … junk", m/44'/60'/0'/0/0).
pub const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// The second of anvil's dev keys (not the sequencer: a stranger to the inbox).
pub const ANVIL_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

fn binary_in(node_modules: &Path) -> Option<PathBuf> {
    let dir = std::fs::read_dir(node_modules.join("@foundry-rs")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("anvil-"))
        .map(|e| e.path().join("bin").join("anvil"))
        .find(|p| p.is_file())
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("strobe").join("anvil")
}

/// The anvil binary, if one is installed where strobe looks.
pub fn find_anvil() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STROBE_ANVIL") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join("anvil")).find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    let mut roots = vec![cache_dir().join("node_modules")];
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd.join("node_modules"));
        roots.push(cwd.join("tests/js/node_modules"));
    }
    // The repository this binary was built from (tests run from there).
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js/node_modules"));
    roots.iter().find_map(|r| binary_in(r))
}

/// Installs anvil from npm into strobe's cache directory and returns the binary.
pub fn install_anvil() -> Result<PathBuf, SettlementError> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| SettlementError::Config(format!("creating {}: {e}", dir.display())))?;
    tracing::info!(package = ANVIL_NPM_PACKAGE, dir = %dir.display(), "installing anvil with npm");
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
        .arg(&dir)
        .arg(ANVIL_NPM_PACKAGE)
        .status()
        .map_err(|e| {
            SettlementError::Config(format!("running npm (is Node.js installed?): {e}"))
        })?;
    if !status.success() {
        return Err(SettlementError::Config(format!("npm install {ANVIL_NPM_PACKAGE} failed")));
    }
    binary_in(&dir.join("node_modules")).ok_or_else(|| {
        SettlementError::Config("npm installed anvil but no binary was found".into())
    })
}

/// A running anvil child process; killed when dropped, or by the kernel when the thread that
/// started it dies (`PR_SET_PDEATHSIG`).
pub struct Anvil {
    child: Child,
    port: u16,
}

impl Anvil {
    /// Starts anvil (found or installed) on a free loopback port with `extra` arguments, and
    /// waits until it listens.
    pub fn spawn(extra: &[&str]) -> Result<Self, SettlementError> {
        let bin = match find_anvil() {
            Some(b) => b,
            None => install_anvil()?,
        };
        let mut command = Command::new(&bin);
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The kernel kills anvil when the thread that started it dies, so a strobe killed
        // with SIGKILL leaves no anvil behind.
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| SettlementError::Config(format!("starting {}: {e}", bin.display())))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // anvil prints "Listening on 127.0.0.1:PORT"; the rest of its output is drained so it
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line.strip_prefix("Listening on ") {
                        let port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                        if let Some(port) = port {
                            let _ = tx.send(port);
                            sent = true;
                        }
                    }
                }
            }
        });
        let started = Instant::now();
        let port: u16 = loop {
            if let Ok(port) = rx.recv_timeout(Duration::from_millis(100)) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SettlementError::Config(format!("anvil exited at start: {status}")));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                return Err(SettlementError::Config("anvil did not start listening".into()));
            }
        };
        Ok(Self { child, port })
    }

    /// Its JSON-RPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
