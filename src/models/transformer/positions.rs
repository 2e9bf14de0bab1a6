//! What a block does to its queries and keys after their projections, beyond TransformerLens's
//! standard model: rotary embeddings (TransformerLens's `rotary`, hooks `hook_rot_q`,
//! `hook_rot_k`) and smeared keys (Olsson et al. 2022, toylens's own: `hook_smeared_k`). Models
//! with either have one row per (example, position) in every block (see
//! [`super::TransformerConfig::rows_by_token_and_position`]), so row r sits at position r % p and
//! its predecessor is row r − 1. Tensors are head-major `[h, rows, d_head]` as in `forward.rs`.

use super::TransformerConfig;

/// The rotary tables: cos and sin of each position's angle per rotated pair, `[n_ctx, rotary_dim /
/// 2]`. TransformerLens's angles (position / base^(i / (rotary_dim / 2))), computed in f64 with
/// libm (the same bits everywhere) and rounded once.
#[derive(Clone, Debug)]
pub(super) struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    adjacent: bool,
}

impl Rotary {
    pub fn new(cfg: &TransformerConfig) -> Rotary {
        let half = cfg.rotary_dim() / 2;
        let base = cfg.rotary_base();
        let (mut cos, mut sin) = (
            Vec::with_capacity(cfg.n_ctx * half),
            Vec::with_capacity(cfg.n_ctx * half),
        );
        for p in 0..cfg.n_ctx {
            for i in 0..half {
                let angle = p as f64 / libm::pow(base, i as f64 / half as f64);
                cos.push(libm::cos(angle) as f32);
                sin.push(libm::sin(angle) as f32);
            }
        }
        Rotary {
            cos,
            sin,
            half,
            adjacent: cfg.rotary_adjacent_pairs,
        }
    }

    /// The two entries of rotated pair `i` in a head's row: GPT-NeoX's halves (i, i + half) or
    /// GPT-J's neighbours (2i, 2i + 1).
    #[inline]
    fn pair(&self, i: usize) -> (usize, usize) {
        if self.adjacent {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + self.half)
        }
    }

    /// Rotate every row of `x [h, rows, dh]` by its position (row r at r % p); `inverse` rotates
    /// back by the same angle, which is the rotation's backward.
    pub fn rotate(&self, x: &mut [f32], rows: usize, p: usize, dh: usize, inverse: bool) {
        let sign = if inverse { -1.0f32 } else { 1.0 };
        for (r, row) in x.chunks_exact_mut(dh).enumerate() {
            let pos = (r % rows) % p;
            let (c, s) = (
                &self.cos[pos * self.half..][..self.half],
                &self.sin[pos * self.half..][..self.half],
            );
            for i in 0..self.half {
                let (a, b) = self.pair(i);
                let (xa, xb, si) = (row[a], row[b], sign * s[i]);
                row[a] = xa * c[i] - xb * si;
                row[b] = xb * c[i] + xa * si;
            }
        }
    }
}

/// σ(α) as f32, from libm's f64 exp.
fn sigmoid(a: f32) -> f32 {
    (1.0 / (1.0 + libm::exp(-(a as f64)))) as f32
}

/// Smear the keys `k [h, rows, dh]` in place: at position j > 0, σ(α_h)·k_j + (1 − σ(α_h))·k_{j−1};
/// position 0 keeps its key (it has no predecessor). `raw` keeps the unsmeared keys for the
/// backward.
pub(super) fn smear_forward(
    k: &mut [f32],
    raw: &mut Vec<f32>,
    alpha: &[f32],
    rows: usize,
    p: usize,
    dh: usize,
) {
    raw.clear();
    raw.extend_from_slice(k);
    for (h, kh) in k.chunks_exact_mut(rows * dh).enumerate() {
        let s = sigmoid(alpha[h]);
        let raw_h = &raw[h * rows * dh..][..rows * dh];
        for r in (0..rows).filter(|r| r % p != 0) {
            let (now, before) = (&raw_h[r * dh..][..dh], &raw_h[(r - 1) * dh..][..dh]);
            for ((o, &x), &y) in kh[r * dh..][..dh].iter_mut().zip(now).zip(before) {
                *o = s * x + (1.0 - s) * y;
            }
        }
    }
}

/// The backward of [`smear_forward`]: `dk` (d loss / d the smeared keys) becomes d loss / d the
/// keys before smearing, and d loss / d α is added into `dalpha [h]`: σ'(α)·Σ_{j>0} (k_j −
/// k_{j−1})·dk_j, summed in row order.
pub(super) fn smear_backward(
    dk: &mut [f32],
    raw: &[f32],
    alpha: &[f32],
    dalpha: &mut [f32],
    rows: usize,
    p: usize,
    dh: usize,
) {
    for (h, dkh) in dk.chunks_exact_mut(rows * dh).enumerate() {
        let s = sigmoid(alpha[h]);
        let raw_h = &raw[h * rows * dh..][..rows * dh];
        let mut ds = 0.0f32;
        for r in (0..rows).filter(|r| r % p != 0) {
            let (now, before) = (&raw_h[r * dh..][..dh], &raw_h[(r - 1) * dh..][..dh]);
            for ((&g, &x), &y) in dkh[r * dh..][..dh].iter().zip(now).zip(before) {
                ds += g * (x - y);
            }
        }
        dalpha[h] += s * (1.0 - s) * ds;
        // In ascending rows, row r + 1's gradient is still the smeared one when row r reads it.
        for r in 0..rows {
            let own = if r % p == 0 { 1.0 } else { s };
            let next = (r % p + 1 < p && r + 1 < rows).then_some(r + 1);
            for i in 0..dh {
                let from_next = next.map_or(0.0, |n| (1.0 - s) * dkh[n * dh + i]);
                dkh[r * dh + i] = own * dkh[r * dh + i] + from_next;
            }
        }
    }
}
