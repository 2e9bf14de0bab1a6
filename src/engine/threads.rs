//! One thread pool for everything (gemm and our loops): nested pools fight over the cores.

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Treat subnormal floats as zero on this thread (x86 FTZ and DAZ). Late in training, when the loss is
/// ~1e-7, gradients and activations underflow into the subnormal range, where x86 floating-point
/// operations take microcode assists: measured here, a grokking step slowed from 17 to 43 ms. Values
/// below 1.2e-38 do not matter to training; PyTorch offers the same switch
/// (`torch.set_flush_denormal(True)`).
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting MXCSR's FTZ (bit 15) and DAZ (bit 6) flags only changes how subnormals round.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Size rayon's global pool once (0 = all cores), subnormals flushed on every thread. Later calls
/// cannot resize it; they return the size in force. Results do not depend on the thread count.
pub fn init(threads: usize) -> usize {
    flush_subnormals();
    init_pool(threads)
}

/// [`init`] without touching the calling thread's floating-point mode (for a caller that is not
/// ours: the Python interpreter's thread).
pub fn init_pool(threads: usize) -> usize {
    *CONFIGURED.get_or_init(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .start_handler(|_| flush_subnormals())
            .build_global();
        rayon::current_num_threads()
    })
}

/// Run `f` on a thread of the global pool (sized by [`init_pool`] if it was not), so that it
/// computes with subnormals flushed while the calling thread keeps its own floating-point mode.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    init_pool(0);
    rayon::scope(|_| f())
}

/// Run `f` on a private pool of `threads` threads (used by tests comparing thread counts).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    flush_subnormals();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| flush_subnormals())
        .build()
        .expect("thread pool")
        .install(f)
}

/// Two independent halves of some work, on two threads when called from a pool of two or more,
/// else one after the other. For small steps: after a pair of halves the other worker is usually
/// still spinning, so the next pair pays no wake-up. Each half must compute the same bits wherever
/// it runs, and the caller's split must not depend on the thread count; then neither does the
/// result.
pub fn halves<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if rayon::current_thread_index().is_some() && rayon::current_num_threads() > 1 {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}
