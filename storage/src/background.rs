//! The threads that plan checkpoints in the background, at a lower scheduling priority than the
//! rest of the node.
//!
//! A background commit plans a block's root while the sequencer seals the next block's
//! mini-blocks. On a server the storage threads have cores of their own; where they share cores
//! with the sequencer and the network threads (a small machine, a laptop), planning at the same
//! priority steals whole milliseconds from the next ticks. Below it, the kernel runs the
//! latency-critical threads first and the plan takes the time they leave, which is plenty: the
//! root is needed only by the next block's seal, a block time later.

use std::sync::OnceLock;

/// Nice value of the planning threads (the rest of the node runs at the default, 0). At 10 a
/// thread gets about a tenth of a core against one busy default thread.
pub const BACKGROUND_NICE: i32 = 10;

/// Runs `work` on the planning pool (its parallel parts too), or on the calling thread if the
/// pool could not be started. `work` must not take a lock that latency-critical threads wait
/// for: it may sit preempted for milliseconds.
pub(crate) fn run<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    match pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// Starts the planning pool now, on the calling thread: its threads inherit this thread's CPU
/// affinity (call it from an unpinned thread; later calls do nothing).
pub(crate) fn start() {
    let _ = pool();
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = plan_threads(std::thread::available_parallelism().map_or(2, |n| n.get()));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("strobe-plan-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(
                |e| tracing::warn!(%e, "no planning pool: background plans run at normal priority"),
            )
            .ok()
    })
    .as_ref()
}

/// Planning threads on a machine with `cpus` CPUs: a quarter of them, at least one. A plan is
/// due a block time later, so it needs no more; and on a small machine every extra thread is one
/// more that spins in rayon's idle loop while its partner sits preempted.
fn plan_threads(cpus: usize) -> usize {
    (cpus / 4).max(1)
}

/// Sets the calling thread's nice value to [`BACKGROUND_NICE`] (on Linux the nice value belongs
/// to the thread, not the process), for other threads whose work can wait behind the ticks (the
/// engine's block writer). Such a thread must not hold a lock that latency-critical threads wait
/// for.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` and `setpriority` are plain system calls: they take integers, touch no
    // memory of ours, and only change the scheduling weight of this thread.
    let result = unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, BACKGROUND_NICE)
    };
    #[cfg(not(target_os = "linux"))]
    let result = 0;
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the planning thread's priority");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn planning_runs_below_the_default_priority() {
        let nice = run(|| {
            // SAFETY: a plain system call reading this thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        });
        assert_eq!(nice, BACKGROUND_NICE);
        assert_eq!((plan_threads(2), plan_threads(16), plan_threads(128)), (1, 4, 32));
        // The parallel parts run there too.
        let (a, b) = run(|| {
            rayon::join(
                || std::thread::current().name().map(str::to_owned),
                || std::thread::current().name().map(str::to_owned),
            )
        });
        for name in [a, b] {
            assert!(name.unwrap().starts_with("strobe-plan-"));
        }
    }
}
