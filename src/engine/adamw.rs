//! AdamW exactly as `torch.optim.AdamW` (single-tensor path): decoupled weight decay, bias
//! correction, eps added after the bias-corrected square root; the same operation order in f32.

use super::simd::vectorized;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Optimizer state for one flat parameter buffer.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    /// The traced update's partial statistics (piece offset, tensor, stats), kept so that a
    /// warmed-up traced step allocates nothing.
    trace_partials: Vec<(usize, usize, UpdateStats)>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, n_params: usize) -> Self {
        AdamW {
            cfg,
            step: 0,
            exp_avg: vec![0.0; n_params],
            exp_avg_sq: vec![0.0; n_params],
            trace_partials: Vec::new(),
        }
    }

    /// The step's coefficients (counting the step).
    fn coefficients(&mut self, lr: f64) -> Coefficients {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
        Coefficients {
            decay: (1.0 - lr * c.weight_decay) as f32,
            one_minus_b1: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            neg_step_size: (-(lr / bc1)) as f32,
            eps: c.eps as f32,
            bc2_sqrt,
            inv_bc2_sqrt: 1.0 / bc2_sqrt,
        }
    }

    /// One update of `params[r]` for each range `r` in `trainable`, at learning rate `lr` (the
    /// schedule's value for this step).
    pub fn update(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        trainable: &[std::ops::Range<usize>],
        lr: f64,
    ) {
        let c = self.coefficients(lr);
        let step = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            vectorized(
                #[inline(always)]
                || {
                    let n = p.len();
                    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
                    for i in 0..n {
                        // All four loads before any store: the buffers are page-aligned alike,
                        // and a load after a store to the same offset in another page waits on
                        // it (4K aliasing). Storing p after its decay and reloading it took 3×
                        // as long (109k parameters on an AMD Zen 4: 97–119 µs against 32–44).
                        let (pi, mi, vi, _) = c.element(p[i], g[i], m[i], v[i]);
                        m[i] = mi;
                        v[i] = vi;
                        p[i] = pi;
                    }
                },
            )
        };
        self.each_piece(params, grads, trainable, |p, g, m, v, _| step(p, g, m, v));
    }

    /// [`AdamW::update`] with the same bits, which also measures it: into `stats`, per range of
    /// `tensors` (sorted, disjoint, covering `trainable`), the statistics of the update of its
    /// trainable entries ([`UpdateStats`]; the weights of entries outside `trainable` count in
    /// `weight_sq` only).
    pub fn update_traced(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        trainable: &[std::ops::Range<usize>],
        lr: f64,
        tensors: &[std::ops::Range<usize>],
        stats: &mut Vec<UpdateStats>,
    ) {
        debug_assert!(
            trainable.iter().all(|r| {
                // The sorted tensors cover r without a gap.
                let mut at = r.start;
                for t in tensors {
                    if t.start <= at && at < t.end {
                        at = t.end;
                    }
                }
                at >= r.end
            }),
            "every trainable entry lies in a traced tensor (the others would not be updated)"
        );
        let c = self.coefficients(lr);
        stats.clear();
        stats.resize(tensors.len(), UpdateStats::default());
        // Frozen entries (outside the sorted `trainable`): their weights only.
        for (s, t) in stats.iter_mut().zip(tensors) {
            let mut at = t.start;
            for r in trainable {
                let lo = r.start.clamp(t.start, t.end);
                if lo > at {
                    s.weight_sq += sum_sq(&params[at..lo]);
                }
                at = at.max(r.end.min(t.end));
            }
            if at < t.end {
                s.weight_sq += sum_sq(&params[at..t.end]);
            }
        }
        // Each piece's partial statistics, per tensor it meets, merged in piece order: the pieces
        // are fixed by the sizes alone, so the sums are the same on any thread count.
        let mut kept = std::mem::take(&mut self.trace_partials);
        kept.clear();
        let partials = std::sync::Mutex::new(kept);
        self.each_piece(params, grads, trainable, |p, g, m, v, at| {
            for (k, t) in tensors.iter().enumerate() {
                let (lo, hi) = (t.start.max(at), t.end.min(at + p.len()));
                if lo >= hi {
                    continue;
                }
                let r = lo - at..hi - at;
                let s = c.traced(
                    &mut p[r.clone()],
                    &g[r.clone()],
                    &mut m[r.clone()],
                    &mut v[r.clone()],
                );
                partials.lock().expect("trace partials").push((at, k, s));
            }
        });
        let mut partials = partials.into_inner().expect("trace partials");
        partials.sort_unstable_by_key(|&(at, k, _)| (k, at));
        for (_, k, s) in &partials {
            stats[*k].merge(s);
        }
        self.trace_partials = partials;
    }

    /// Calls `step(params, grads, exp_avg, exp_avg_sq, offset)` on pieces covering the trainable
    /// ranges, in parallel. Element-wise, so any split gives the same bits; the pieces depend on the
    /// sizes alone. Below PARALLEL_MIN parameters, rayon's chunked split cost more than it saved
    /// (measured on the ToyMLP's 109k parameters: 0.48 ms/step on 2 threads against 0.43 on 1, on
    /// an Intel machine); two halves, with the other worker still awake from the backward, did not
    /// (W2 on the AMD EPYC, 2026-12-02: 0.55–0.59 ms/step against 0.59–0.60 on this thread alone).
    fn each_piece(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        trainable: &[std::ops::Range<usize>],
        step: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32], usize) + Sync,
    ) {
        const CHUNK: usize = 1 << 14;
        const PARALLEL_MIN: usize = 1 << 17;
        let total: usize = trainable.iter().map(|r| r.len()).sum();
        for r in trainable {
            let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
            let (m, v) = (
                &mut self.exp_avg[r.clone()],
                &mut self.exp_avg_sq[r.clone()],
            );
            if total < PARALLEL_MIN {
                // Two halves, the second on the other worker if it is free (after a step's
                // backward it is usually still awake).
                let half = p.len() / 2;
                let (p0, p1) = p.split_at_mut(half);
                let (g0, g1) = g.split_at(half);
                let (m0, m1) = m.split_at_mut(half);
                let (v0, v1) = v.split_at_mut(half);
                super::threads::halves(
                    || step(p0, g0, m0, v0, r.start),
                    || step(p1, g1, m1, v1, r.start + half),
                );
            } else {
                p.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(i, (((p, g), m), v))| step(p, g, m, v, r.start + i * CHUNK));
            }
        }
    }
}

/// One step's AdamW coefficients.
#[derive(Clone, Copy)]
struct Coefficients {
    decay: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    neg_step_size: f32,
    eps: f32,
    bc2_sqrt: f32,
    inv_bc2_sqrt: f32,
}

impl Coefficients {
    /// One entry's update: (weight, first moment, second moment, √v̂), torch's operation order.
    #[inline(always)]
    fn element(&self, pi: f32, gi: f32, mi: f32, vi: f32) -> (f32, f32, f32, f32) {
        let pi = pi * self.decay;
        let mi = mi + self.one_minus_b1 * (gi - mi);
        let vi = vi * self.b2 + self.one_minus_b2 * gi * gi;
        let root = div_by(vi.sqrt(), self.bc2_sqrt, self.inv_bc2_sqrt);
        let denom = root + self.eps;
        (pi + self.neg_step_size * (mi / denom), mi, vi, root)
    }

    /// The update of one piece of one tensor, measured: block by block, the update (the plain
    /// loop, keeping each entry's weight before it and its √v̂), then the block's sums in
    /// [`LANES`] fixed lanes (the same order at every vector width), added up across the lanes in
    /// order at the end.
    fn traced(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> UpdateStats {
        const BLOCK: usize = 512;
        vectorized(
            #[inline(always)]
            || {
                let n = p.len();
                let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
                let mut grad = [0.0f64; LANES];
                let mut update = [0.0f64; LANES];
                let mut weight = [0.0f64; LANES];
                let mut below = [0u32; LANES];
                let mut ratio = [0.0f32; LANES];
                let (mut before, mut root) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
                let mut at = 0;
                while at < n {
                    let k = BLOCK.min(n - at);
                    let (pb, gb) = (&mut p[at..at + k], &g[at..at + k]);
                    let (mb, vb) = (&mut m[at..at + k], &mut v[at..at + k]);
                    let (p0, rt) = (&mut before[..k], &mut root[..k]);
                    for i in 0..k {
                        let (pi, mi, vi, r) = self.element(pb[i], gb[i], mb[i], vb[i]);
                        p0[i] = pb[i];
                        mb[i] = mi;
                        vb[i] = vi;
                        pb[i] = pi;
                        rt[i] = r;
                    }
                    // The block's sums in f32 lanes (32 terms each at most), added to the f64 lanes
                    // once per block.
                    let eps = self.eps;
                    let (mut gs, mut us, mut ws) =
                        ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
                    #[inline(always)]
                    #[allow(clippy::too_many_arguments)]
                    fn lane(
                        (w0, w, gi, rt, eps): (f32, f32, f32, f32, f32),
                        sums: (&mut f32, &mut f32, &mut f32, &mut u32, &mut f32),
                    ) {
                        let d = w - w0;
                        *sums.0 += gi * gi;
                        *sums.1 += d * d;
                        *sums.2 += w * w;
                        // √v̂ = 0: the entry has never had a gradient (an unused position, a
                        // pruned weight): its step is weight decay alone, no regime of Adam's.
                        *sums.3 += u32::from(rt < eps && rt > 0.0);
                        let r = if w0 != 0.0 { d.abs() / w0.abs() } else { 0.0 };
                        *sums.4 = sums.4.max(r);
                    }
                    let full = k / LANES * LANES;
                    for c in (0..full).step_by(LANES) {
                        let w0: &[f32; LANES] = p0[c..c + LANES].try_into().expect("lanes");
                        let w: &[f32; LANES] = pb[c..c + LANES].try_into().expect("lanes");
                        let gl: &[f32; LANES] = gb[c..c + LANES].try_into().expect("lanes");
                        let r: &[f32; LANES] = rt[c..c + LANES].try_into().expect("lanes");
                        for j in 0..LANES {
                            lane(
                                (w0[j], w[j], gl[j], r[j], eps),
                                (
                                    &mut gs[j],
                                    &mut us[j],
                                    &mut ws[j],
                                    &mut below[j],
                                    &mut ratio[j],
                                ),
                            );
                        }
                    }
                    for i in full..k {
                        let j = i % LANES;
                        lane(
                            (p0[i], pb[i], gb[i], rt[i], eps),
                            (
                                &mut gs[j],
                                &mut us[j],
                                &mut ws[j],
                                &mut below[j],
                                &mut ratio[j],
                            ),
                        );
                    }
                    for j in 0..LANES {
                        grad[j] += f64::from(gs[j]);
                        update[j] += f64::from(us[j]);
                        weight[j] += f64::from(ws[j]);
                    }
                    at += k;
                }
                let total = |l: &[f64; LANES]| l.iter().fold(0.0, |a, &x| a + x);
                UpdateStats {
                    grad_sq: total(&grad),
                    update_sq: total(&update),
                    weight_sq: total(&weight),
                    below_eps: below.iter().map(|&c| u64::from(c)).sum(),
                    entries: n as u64,
                    max_ratio: ratio.iter().fold(0.0f32, |a, &x| a.max(x)),
                }
            },
        )
    }
}

/// Lanes of the trace's sums.
const LANES: usize = 16;

/// Σx² in f64, in [`LANES`] fixed lanes.
pub fn sum_sq(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    for (i, &v) in x.iter().enumerate() {
        lanes[i % LANES] += f64::from(v) * f64::from(v);
    }
    lanes.iter().fold(0.0, |a, &x| a + x)
}

/// What one update did to one tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateStats {
    /// Σ g² of the gradient the update took.
    pub grad_sq: f64,
    /// Σ Δ², Δ the change the update made to each weight (decay included).
    pub update_sq: f64,
    /// Σ w² after the update.
    pub weight_sq: f64,
    /// Entries whose bias-corrected √v̂ is below ε (ε dominates their step's denominator) and not
    /// zero (zero: the entry has never had a gradient, and its step is weight decay alone).
    pub below_eps: u64,
    /// Trainable entries.
    pub entries: u64,
    /// The largest |Δ| / |w| over entries whose weight was nonzero before the update.
    pub max_ratio: f32,
}

impl UpdateStats {
    fn merge(&mut self, o: &UpdateStats) {
        self.grad_sq += o.grad_sq;
        self.update_sq += o.update_sq;
        self.weight_sq += o.weight_sq;
        self.below_eps += o.below_eps;
        self.entries += o.entries;
        self.max_ratio = self.max_ratio.max(o.max_ratio);
    }
}

/// `a / b`, correctly rounded, for `y` = `1 / b` (correctly rounded), without a division: the
/// quotient `q = a·y` is within an ulp of `a / b`, its remainder `a − b·q` is exact in an FMA, and one
/// correction step then gives the rounded quotient exactly (Markstein's theorem; valid without
/// overflow or underflow: here a is a square root of a normal float or zero, and b lies in (0, 1]).
/// An infinite or NaN `a` (a gradient whose square overflowed) passes through as the division
/// would pass it. AdamW's loop waits on its divisions and its square root; this takes one of the
/// two divisions off each element, with the same bits.
#[inline(always)]
fn div_by(a: f32, b: f32, y: f32) -> f32 {
    let q = a * y;
    let r = (-b).mul_add(q, a);
    let corrected = r.mul_add(y, q);
    if q.is_finite() {
        corrected
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::{div_by, AdamW, AdamWConfig};

    /// The traced update changes the weights and moments exactly as the plain one, and its
    /// statistics are those of the change it made, per tensor, frozen entries counting as weights.
    #[test]
    fn the_traced_update_is_the_update_and_measures_it() {
        for n in [1000usize, 300_000] {
            let mut rng = crate::engine::rng::Rng::new(7);
            let p0: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 97 == 0 {
                        0.0
                    } else {
                        rng.normal() as f32
                    }
                })
                .collect();
            let cfg = AdamWConfig {
                lr: 1e-2,
                weight_decay: 0.5,
                eps: 1e-3,
                ..AdamWConfig::default()
            };
            let trainable = [0..n / 3, n / 2..n];
            let tensors = [0..n / 4, n / 4..n / 2 + 7, n / 2 + 7..n];
            let (mut a, mut b) = (AdamW::new(cfg, n), AdamW::new(cfg, n));
            let (mut pa, mut pb) = (p0.clone(), p0.clone());
            for t in 0..3 {
                // Every 11th entry never gets a gradient (√v̂ stays 0: not in the ε regime).
                let g: Vec<f32> = (0..n)
                    .map(|i| match (i % 11, i % 5) {
                        (0, _) => 0.0,
                        (_, 0) => rng.normal() as f32 * 1e-5,
                        _ => rng.normal() as f32,
                    })
                    .collect();
                let before = pb.clone();
                a.update(&mut pa, &g, &trainable, 1e-2);
                let mut stats = Vec::new();
                b.update_traced(&mut pb, &g, &trainable, 1e-2, &tensors, &mut stats);
                assert_eq!(pa, pb, "step {t}");
                assert_eq!(a.exp_avg_sq, b.exp_avg_sq);
                for (k, r) in tensors.iter().enumerate() {
                    let live = |i: &usize| trainable.iter().any(|t| t.contains(i));
                    let idx: Vec<usize> = r.clone().collect();
                    let sq = |f: &dyn Fn(usize) -> f64| {
                        idx.iter()
                            .filter(|i| live(i))
                            .map(|&i| f(i).powi(2))
                            .sum::<f64>()
                    };
                    let rel = |x: f64, y: f64| (x - y).abs() <= 1e-5 * y.abs().max(1e-30);
                    let s = &stats[k];
                    assert!(rel(s.grad_sq, sq(&|i| g[i] as f64)), "grad {k}");
                    assert!(
                        rel(s.update_sq, sq(&|i| (pb[i] - before[i]) as f64)),
                        "update {k}"
                    );
                    let w: f64 = idx.iter().map(|&i| (pb[i] as f64).powi(2)).sum();
                    assert!(rel(s.weight_sq, w), "weight {k}");
                    assert_eq!(s.entries, idx.iter().filter(|i| live(i)).count() as u64);
                    let bc2 = (1.0 - 0.999f64.powi(t + 1)).sqrt();
                    let below = idx
                        .iter()
                        .filter(|i| live(i))
                        .filter(|&&i| b.exp_avg_sq[i] > 0.0)
                        .filter(|&&i| ((b.exp_avg_sq[i] as f64).sqrt() / bc2) < 1e-3)
                        .count() as u64;
                    assert!(
                        below.abs_diff(s.below_eps) <= 2,
                        "below eps {k}: {below} {}",
                        s.below_eps
                    );
                    assert!(
                        s.below_eps > 0 || t > 0,
                        "tiny gradients sit in the ε regime"
                    );
                    let max = idx
                        .iter()
                        .filter(|i| live(i) && before[**i] != 0.0)
                        .map(|&i| (pb[i] - before[i]).abs() / before[i].abs())
                        .fold(0.0f32, f32::max);
                    assert_eq!(s.max_ratio, max);
                }
            }
        }
    }

    /// Every significand of a in [1, 2) (the rounding of a / b depends on the significands alone,
    /// away from overflow and underflow) against the division, for the divisors AdamW's bias
    /// correction takes early in a run and a few others.
    #[test]
    fn division_by_a_known_reciprocal_rounds_as_the_division_does() {
        let mut divisors: Vec<f32> = [0.999f64, 0.98, 0.95]
            .iter()
            .flat_map(|&b2| [1, 2, 3, 7, 100, 1000].map(|t| (1.0 - b2.powi(t)).sqrt() as f32))
            .collect();
        divisors.extend([
            1.0,
            0.5,
            0.75,
            f32::from_bits(0x3f7f_ffff),
            f32::from_bits(0x3f00_0001),
        ]);
        for &b in &divisors {
            let y = 1.0 / b;
            let mut wrong = 0u64;
            for bits in 0x3f80_0000u32..0x4000_0000 {
                let a = f32::from_bits(bits);
                wrong += (div_by(a, b, y).to_bits() != (a / b).to_bits()) as u64;
            }
            assert_eq!(wrong, 0, "divisor {b:e}");
        }
        for a in [0.0f32, 1e-19, 3.0e19, 0.3, 12345.678, f32::INFINITY] {
            let b = divisors[0];
            assert_eq!(
                div_by(a, b, 1.0 / b).to_bits(),
                (a / b).to_bits(),
                "{a:e} / {b:e}"
            );
        }
        assert!(div_by(f32::NAN, 0.5, 2.0).is_nan());
    }
}
