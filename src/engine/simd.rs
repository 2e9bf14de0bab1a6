//! Hot loops outside the matmuls, and the instruction-set level every kernel runs at. Each loop is
//! plain scalar code run through [`vectorized`], which compiles it once per level and runs the
//! copy for the [`level`] in force (the best the CPU has unless [`set_level`] or `TOYLENS_SIMD`
//! chose a lower one), so one binary runs on every node of a cluster without
//! `-C target-cpu=native`.
//!
//! Results do not depend on the level: these loops are written as scalar code whose order the
//! compiler keeps (it never reassociates float sums, and fuses no multiply-add we did not ask
//! for), and a sum that wants several lanes declares them itself, as an array of fixed width (see
//! `attention::dot`). The matrix products follow the same rule (`matmul`). `tests/simd_levels.rs`
//! runs the kernels and training steps at every level the machine has.

use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets the kernels are compiled for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// x86-64's baseline (SSE2), or whatever the target has elsewhere. No FMA: the matrix
    /// products round differently from the two levels above, so its results are its own.
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 (x86-64-v4).
    Avx512,
}

/// The environment variable that lowers the level for a process (and the processes it starts:
/// sweep workers, Slurm tasks): `baseline`, `avx2` or `avx512`.
pub const LEVEL_ENV: &str = "TOYLENS_SIMD";

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// Its name, as `TOYLENS_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => pulp::x86::V3::is_available(),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => pulp::x86::V4::is_available(),
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2 | Level::Avx512 => false,
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }

    /// The best level this CPU can run.
    pub fn best() -> Level {
        *Level::available()
            .last()
            .expect("the baseline is always available")
    }

    /// The level named `name`, if this CPU can run it; the error says what it can.
    pub fn parse_available(name: &str) -> Result<Level, String> {
        let names = || {
            Level::available()
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let level = Level::ALL
            .into_iter()
            .find(|l| l.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown SIMD level `{name}` (this CPU has: {})", names()))?;
        if level.is_available() {
            Ok(level)
        } else {
            Err(format!(
                "this CPU cannot run SIMD level `{name}` (it has: {})",
                names()
            ))
        }
    }
}

/// The level in force, as `Level as u8`; `UNSET` until the first use or [`set_level`]. Alone on
/// its cache line: every kernel reads it, from every thread.
static LEVEL: CacheLine = CacheLine(AtomicU8::new(UNSET));

#[repr(align(128))]
struct CacheLine(AtomicU8);
const UNSET: u8 = u8::MAX;

/// The level every kernel runs at: the one [`set_level`] chose, else `TOYLENS_SIMD`'s, else the
/// best the CPU has. (A bad `TOYLENS_SIMD` is an error where the binary or the Python module
/// start, through [`level_from_env`]; here it is passed over.)
#[inline(always)]
pub fn level() -> Level {
    match LEVEL.0.load(Ordering::Relaxed) {
        0 => Level::Baseline,
        1 => Level::Avx2,
        2 => Level::Avx512,
        _ => init_level(),
    }
}

#[cold]
fn init_level() -> Level {
    let requested = level_from_env().ok().flatten();
    let chosen = requested.unwrap_or_else(Level::best);
    if requested.is_none() && chosen == Level::Baseline && cfg!(target_arch = "x86_64") {
        tracing::warn!(
            "this CPU has no AVX2 and FMA: results will differ in the last bits from those of \
             AVX2 and AVX-512 machines (which agree with each other)"
        );
    }
    // A set_level that ran meanwhile wins.
    let _ = LEVEL
        .0
        .compare_exchange(UNSET, chosen as u8, Ordering::Relaxed, Ordering::Relaxed);
    level()
}

/// Run every kernel at `level` from now on (for tests and benchmarks; results do not depend on
/// it). An error if this CPU cannot run it.
pub fn set_level(level: Level) -> Result<(), String> {
    if !level.is_available() {
        return Err(format!("this CPU cannot run SIMD level `{}`", level.name()));
    }
    LEVEL.0.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// The level `TOYLENS_SIMD` asks for (None when unset or empty); an error naming the variable
/// when it names no level this CPU can run.
pub fn level_from_env() -> Result<Option<Level>, String> {
    match std::env::var(LEVEL_ENV) {
        Ok(v) if !v.trim().is_empty() => Level::parse_available(&v)
            .map(Some)
            .map_err(|e| format!("{LEVEL_ENV}={v}: {e}")),
        _ => Ok(None),
    }
}

struct Kernel<F>(F);

impl<R, F: FnOnce() -> R> pulp::WithSimd for Kernel<F> {
    type Output = R;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> R {
        (self.0)()
    }
}

/// Run `f` compiled for the [`level`] in force. Mark the closure `#[inline(always)]`: only code
/// inlined into the dispatched function gets the wider instructions (a closure left out of line
/// was seen compiled for SSE2 and ran 5× slower).
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    use pulp::Simd;
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` is never above what the CPU has (checked by `set_level` and `best`).
        Level::Avx512 => Simd::vectorize(unsafe { pulp::x86::V4::new_unchecked() }, Kernel(f)),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => Simd::vectorize(unsafe { pulp::x86::V3::new_unchecked() }, Kernel(f)),
        #[cfg(target_arch = "x86_64")]
        Level::Baseline => Simd::vectorize(pulp::Scalar, Kernel(f)),
        #[cfg(not(target_arch = "x86_64"))]
        _ => pulp::Arch::new().dispatch(Kernel(f)),
    }
}

/// `e^x` in f32 without a libm call, so loops over it vectorise: Cephes' `expf` polynomial
/// (relative error under 1e-7, 7.9e-8 measured over [-87, 88]); 0 below e^-87.3 (where f32 turns
/// subnormal), infinite from about 88.38.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let xc = x.clamp(-87.3, 88.7);
    let n = (xc * LOG2E).round();
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((whole_to_i32(n) + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
    }
}

/// `n as i32` for a whole number |n| < 2^22 (in `exp_f32`, n is in [-126, 128]), read from the
/// mantissa after adding 1.5·2^23: the same value without the saturating cast's fix-ups, which
/// took a quarter of the loss's time.
#[inline(always)]
fn whole_to_i32(n: f32) -> i32 {
    (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000
}

/// Rows per parallel task in row-wise loops: fixed, so work splits the same way for any thread count.
pub const ROW_CHUNK: usize = 64;

/// Run `f` on a zeroed scratch buffer of `n` floats, reused by this thread across calls (a training
/// step allocates nothing once warmed up). A nested call on the same thread gets its own buffer.
pub fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            v.resize(n, 0.0);
            f(&mut v)
        }
        Err(_) => f(&mut vec![0.0; n]),
    })
}

/// Rows per block of the column sums: the partial sum of each block is added in block order, so the
/// result is the same for any thread count.
pub const SUM_BLOCK_ROWS: usize = 256;

/// `dst[c] += Σ_r src[r, c]` (bias gradients).
pub fn column_sums_add(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    let src = &src[..rows * cols];
    let n_blocks = rows.div_ceil(SUM_BLOCK_ROWS);
    with_scratch(n_blocks * cols, |partials| {
        partials
            .par_chunks_mut(cols)
            .zip(src.par_chunks(SUM_BLOCK_ROWS * cols))
            .for_each(|(acc, block)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for row in block.chunks_exact(cols) {
                            for (a, s) in acc.iter_mut().zip(row) {
                                *a += s;
                            }
                        }
                    },
                )
            });
        for p in partials.chunks_exact(cols) {
            for (d, s) in dst.iter_mut().zip(p) {
                *d += s;
            }
        }
    });
}

/// `dst = a + b`, elementwise.
pub fn add(dst: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(dst.len() == a.len() && a.len() == b.len());
    dst.par_chunks_mut(ROW_CHUNK * 128)
        .zip(a.par_chunks(ROW_CHUNK * 128))
        .zip(b.par_chunks(ROW_CHUNK * 128))
        .for_each(|((d, a), b)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
                        *d = a + b;
                    }
                },
            )
        });
}

/// A raw pointer that may cross threads: for parallel loops that write provably disjoint parts of one
/// buffer (for example one attention head each) where slices cannot express the split.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::{exp_f32, whole_to_i32};

    #[test]
    fn whole_numbers_convert_as_the_cast_does() {
        // Every n exp_f32 can reach, and more.
        for k in -100_000..=100_000 {
            let n = k as f32;
            assert_eq!(whole_to_i32(n), n as i32, "n = {n}");
        }
    }

    #[test]
    fn exp_is_within_2e_7_zero_below_its_range_and_huge_above() {
        // Every 257th bit pattern: both signs, subnormals, infinities and NaNs included.
        let mut worst = 0.0f64;
        for bits in (0..=u32::MAX).step_by(257) {
            let x = f32::from_bits(bits);
            let y = exp_f32(x);
            if x.is_nan() {
                assert!(y.is_nan(), "exp({x}) = {y}");
            } else if x < -87.3 {
                assert_eq!(y, 0.0, "x = {x:e}");
            } else if x >= 88.0 {
                // Huge, and infinite from about 88.38 on, where n reaches 128 (the callers only
                // take x ≤ 0: logits or scores minus their maximum).
                assert!(y > 1e38, "exp({x:e}) = {y:e}");
            } else if x >= -87.0 {
                let truth = (x as f64).exp();
                worst = worst.max(((y as f64 - truth) / truth).abs());
            }
        }
        assert!(worst < 2e-7, "relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
