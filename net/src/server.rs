//! Starting the network layer: one thread per network core, each with its own listener
//! (`SO_REUSEPORT`, so the kernel spreads connections), its own [`Hub`] and its own driver
//! (io_uring, or epoll when io_uring is unavailable or not wanted), pinned to its core.

use crate::{
    epoll::EpollDriver,
    metrics::Metrics,
    rpc::Rpc,
    session::{Hub, Limits},
    uring::UringDriver,
};
use std::{
    io,
    net::{SocketAddr, TcpListener},
    sync::{atomic::AtomicBool, Arc},
};
use strobe_engine::Engine;

/// Which event loop serves connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, falling back to epoll (with one warning) when the kernel refuses it.
    Auto,
    /// io_uring only; fail when unavailable.
    Uring,
    /// epoll only.
    Epoll,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            _ => Err(format!("unknown network backend `{s}` (auto, uring or epoll)")),
        }
    }
}

/// How the network layer runs.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Network threads (at least one).
    pub threads: usize,
    /// CPU for each network thread (cycled); empty: not pinned.
    pub cores: Vec<usize>,
    /// Event loop.
    pub backend: Backend,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Sender-recovery worker threads shared by all network threads (0: recover on the network
    /// threads themselves).
    pub recovery_threads: usize,
    /// CPUs for the recovery workers (cycled); empty: not pinned.
    pub recovery_cores: Vec<usize>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            cores: Vec::new(),
            backend: Backend::Auto,
            limits: Limits::default(),
            recovery_threads: 1,
            recovery_cores: Vec::new(),
        }
    }
}

/// Raises the soft limit on open files toward `wanted` (at most the hard limit): every
/// connection is a descriptor, and the default soft limit (often 1024) is below the connection
/// limits.
fn raise_fd_limit(wanted: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let target = (wanted as libc::rlim_t).min(lim.rlim_max);
    if target > lim.rlim_cur {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the live struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(wanted, "could not raise the open-file limit");
        }
    }
}

/// Binds `addr` with `SO_REUSEPORT`, so [`serve`] can open one listener per network thread on
/// the same port.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Serves JSON-RPC (HTTP and WebSocket) and the binary protocol for `engine` on `listener`
/// (made by [`bind`]) until `stop` is set, with `config.threads` network threads.
pub fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    accounts: Vec<alloy_primitives::Address>,
    config: &NetConfig,
    metrics: Arc<Metrics>,
    stop: &AtomicBool,
) -> io::Result<()> {
    raise_fd_limit(config.threads.max(1) * config.limits.max_connections + 256);
    let rpc = Rpc::new(engine, accounts)
        .with_recovery(config.recovery_threads, &config.recovery_cores)?;
    if let Some(r) = rpc.recovery() {
        let _ = metrics.recovery.set(r.clone());
    }
    let addr = listener.local_addr()?;
    let mut listeners = vec![listener];
    for _ in 1..config.threads.max(1) {
        listeners.push(bind(addr)?);
    }
    let uring_ok = match config.backend {
        Backend::Epoll => false,
        Backend::Uring => {
            UringDriver::probe()?;
            true
        }
        Backend::Auto => match UringDriver::probe() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is unavailable; serving on epoll instead");
                false
            }
        },
    };
    std::thread::scope(|scope| -> io::Result<()> {
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let rpc = rpc.sibling();
            let core = (!config.cores.is_empty()).then(|| config.cores[i % config.cores.len()]);
            let limits = config.limits.clone();
            let metrics = metrics.clone();
            let handle = std::thread::Builder::new().name(format!("strobe-net-{i}")).spawn_scoped(
                scope,
                move || -> io::Result<()> {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                            tracing::warn!(core, "could not pin network thread {i}");
                        }
                    }
                    let run = || -> io::Result<()> {
                        if uring_ok {
                            let (ring, wake) = UringDriver::probe()?;
                            let max = limits.max_connections;
                            let hub = Hub::new(rpc, i, limits, metrics, UringDriver::waker(&wake));
                            UringDriver::new(ring, wake, listener, hub, max)?.run(stop)
                        } else {
                            let wake = EpollDriver::make_waker()?;
                            let hub = Hub::new(rpc, i, limits, metrics, EpollDriver::waker(&wake));
                            EpollDriver::new(wake, listener, hub)?.run(stop)
                        }
                    };
                    let result = run();
                    if result.is_err() {
                        // One failed thread stops the others, so the node exits with its error.
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                },
            )?;
            handles.push(handle);
        }
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other("a network thread panicked"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}
