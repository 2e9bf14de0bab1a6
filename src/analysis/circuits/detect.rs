//! Head detectors, TransformerLens's `detect_head`: how much each head's attention pattern on a
//! sequence matches a detection pattern (previous token, duplicate token, induction), by either
//! of its error measures; over several sequences, the mean of their scores.

use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::hooks::CacheFilter;
use crate::models::transformer::Transformer;
use ndarray::{Array2, ArrayView2, ArrayView4, Axis, Ix4};
use serde::Serialize;

/// The heads TransformerLens detects by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    #[value(name = "previous_token_head")]
    PreviousToken,
    #[value(name = "duplicate_token_head")]
    DuplicateToken,
    #[value(name = "induction_head")]
    Induction,
}

impl HeadKind {
    pub const ALL: [HeadKind; 3] = [
        HeadKind::PreviousToken,
        HeadKind::DuplicateToken,
        HeadKind::Induction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HeadKind::PreviousToken => "previous_token_head",
            HeadKind::DuplicateToken => "duplicate_token_head",
            HeadKind::Induction => "induction_head",
        }
    }

    /// The detection pattern `[q, k]` of one sequence (lower triangular, 0/1).
    pub fn pattern(self, tokens: &[u32]) -> Array2<f32> {
        let n = tokens.len();
        let duplicate = |q: usize, k: usize| k < q && tokens[q] == tokens[k];
        Array2::from_shape_fn((n, n), |(q, k)| {
            let hit = match self {
                HeadKind::PreviousToken => k + 1 == q,
                HeadKind::DuplicateToken => duplicate(q, k),
                // Attends to the token after an earlier copy of the current one.
                HeadKind::Induction => k >= 1 && duplicate(q, k - 1),
            };
            f32::from(u8::from(hit))
        })
    }
}

/// TransformerLens's two error measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ErrorMeasure {
    /// The share of attention that falls on the pattern: `Σ A⊙P / Σ A`.
    Mul,
    /// `1 − round(mean |A − P| · n, 3)`.
    Abs,
}

/// How a detector treats the first and the current token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exclude {
    pub bos: bool,
    pub current_token: bool,
}

/// One head's score on one sequence (`pattern` and `attention` `[n, n]`).
pub fn similarity(
    attention: ArrayView2<f32>,
    pattern: ArrayView2<f32>,
    exclude: Exclude,
    measure: ErrorMeasure,
) -> f64 {
    let n = attention.nrows();
    let keep = |q: usize, k: usize| !(exclude.bos && k == 0 || exclude.current_token && q == k);
    match measure {
        ErrorMeasure::Mul => {
            let (mut hit, mut total) = (0.0f64, 0.0f64);
            for ((q, k), &a) in attention.indexed_iter() {
                if keep(q, k) {
                    hit += f64::from(a * pattern[[q, k]]);
                    total += f64::from(a);
                }
            }
            hit / total
        }
        ErrorMeasure::Abs => {
            let mut sum = 0.0f64;
            for ((q, k), &a) in attention.indexed_iter() {
                if keep(q, k) {
                    sum += f64::from((a - pattern[[q, k]]).abs());
                }
            }
            // mean·n = sum / n; rounded to 3 places as TransformerLens does.
            1.0 - (sum / n as f64 * 1000.0).round() / 1000.0
        }
    }
}

/// Scores `[n_layers, n_heads]` of every head for `kind` on `tokens [batch, pos]` (the mean over
/// the sequences), from the attention patterns of one run.
pub fn detect(
    model: &Transformer,
    tokens: ArrayView2<u32>,
    kind: HeadKind,
    exclude: Exclude,
    measure: ErrorMeasure,
) -> Result<Array2<f64>> {
    detect_with(model, tokens, &|seq| kind.pattern(seq), exclude, measure)
}

/// [`detect`] with a detection pattern of the caller's: `pattern(sequence)` `[pos, pos]`.
pub fn detect_with(
    model: &Transformer,
    tokens: ArrayView2<u32>,
    pattern: &dyn Fn(&[u32]) -> Array2<f32>,
    exclude: Exclude,
    measure: ErrorMeasure,
) -> Result<Array2<f64>> {
    let p = tokens.ncols();
    if p < 2 || p > model.cfg.n_ctx {
        return Err(Error::Input(format!(
            "head detection needs sequences of 2 to n_ctx = {} tokens; these have {p}",
            model.cfg.n_ctx
        )));
    }
    let n_l = model.cfg.n_layers;
    let names: Vec<String> = (0..n_l)
        .map(|l| format!("blocks.{l}.attn.hook_pattern"))
        .collect();
    let (_, cache) = model.run_with_cache(tokens, CacheFilter::Names(names.clone()))?;
    let patterns = names
        .iter()
        .map(|n| {
            cache
                .get(n)
                .map(|a| a.view().into_dimensionality::<Ix4>().expect("[b, h, q, k]"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(scores(&patterns, tokens, pattern, exclude, measure))
}

/// [`detect_with`] on attention patterns already computed (`[batch, head, query, key]` per
/// layer, for `tokens`): each head's score, the mean over the sequences.
pub fn scores(
    patterns: &[ArrayView4<f32>],
    tokens: ArrayView2<u32>,
    pattern: &dyn Fn(&[u32]) -> Array2<f32>,
    exclude: Exclude,
    measure: ErrorMeasure,
) -> Array2<f64> {
    let b = tokens.nrows();
    let n_h = patterns.first().map_or(0, |p| p.dim().1);
    let mut out = Array2::zeros((patterns.len(), n_h));
    for (l, pat) in patterns.iter().enumerate() {
        for bi in 0..b {
            let seq: Vec<u32> = tokens.row(bi).to_vec();
            let det = pattern(&seq);
            for (h, a) in pat.index_axis(Axis(0), bi).axis_iter(Axis(0)).enumerate() {
                out[[l, h]] += similarity(a, det.view(), exclude, measure) / b as f64;
            }
        }
    }
    out
}

/// The sequences `toylens circuits` and the `heads` monitor detect heads on: 16 of up to 20 random
/// tokens each followed by its copy, seed 0, shorter than the context (TransformerLens's
/// `detect_head` takes no sequence of n_ctx tokens). None below a context of 4.
pub fn detector_tokens(n_ctx: usize, d_vocab: usize) -> Option<Array2<u32>> {
    (n_ctx >= 4).then(|| repeated_random_tokens(0, 16, ((n_ctx - 1) / 2).min(20), d_vocab))
}

/// `batch` sequences of `half` random tokens (below `d_vocab`) each followed by a copy of itself,
/// the input induction heads are found on; seeded, the same on every machine.
pub fn repeated_random_tokens(seed: u64, batch: usize, half: usize, d_vocab: usize) -> Array2<u32> {
    let mut rng = Rng::new(seed);
    let mut out = Array2::zeros((batch, 2 * half));
    for mut row in out.rows_mut() {
        for i in 0..half {
            let t = (rng.next_u64() % d_vocab as u64) as u32;
            row[i] = t;
            row[i + half] = t;
        }
    }
    out
}
