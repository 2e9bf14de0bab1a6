//! One thread pool for everything (gemm and our loops): nested pools fight over the cores.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Size rayon's global pool once (0 = all cores). Later calls cannot resize it; they return the size
/// in force. Results do not depend on the thread count, only speed does.
pub fn init(threads: usize) -> usize {
    *CONFIGURED.get_or_init(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
        rayon::current_num_threads()
    })
}

/// Run `f` on a private pool of `threads` threads (used by tests comparing thread counts).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}
