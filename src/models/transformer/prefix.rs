//! Cache passes split where short prefixes repeat. A causal model's activations at position i
//! depend only on the tokens up to i, so inputs that share their first L tokens share every
//! activation at positions below L. Over all 12,769 pairs of the grokking task, position 0 has
//! only 113 distinct prefixes: its row of the last block (attention, MLP, unembedding) needs
//! computing 113 times, not 12,769.
//!
//! The split: the full batch runs with the last block's queries at positions L.. only (the earlier
//! blocks and the last block's keys still see every position), the distinct prefixes of length L
//! run as a batch of their own, and each of the last block's query-side entries (and the logits)
//! is assembled from the two, written once into its full `[b, p, ...]` array. Only for passes
//! with no hooks (a hook sees, and may change, the whole tensor of one pass).

use super::forward::{BlockRows, Interceptor};
use super::{Site, Transformer, Workspace};
use crate::engine::attention::{self, IGNORE};
use crate::hooks::{fresh_vec, write_floats, ActivationCache, CacheFilter, HookRunner, Hooks};
use ndarray::{Array2, Array3, ArrayD, ArrayView2, IxDyn};
use rayon::prelude::*;
use std::collections::HashMap;

/// Where a batch splits: the distinct prefixes of the first `len` tokens and which one each input
/// starts with.
pub(super) struct PrefixSplit {
    pub len: usize,
    pub prefixes: Array2<u32>,
    pub of: Vec<u32>,
}

impl PrefixSplit {
    /// The longest prefix length below the input length whose distinct prefixes are at most half
    /// the batch (so the split saves at least half of the last block's rows at those positions),
    /// or None.
    pub fn find(tokens: ArrayView2<u32>) -> Option<PrefixSplit> {
        let (b, p) = tokens.dim();
        let mut ids = vec![0u32; b];
        let mut found = None;
        for len in 1..p {
            let mut seen: HashMap<(u32, u32), u32> = HashMap::new();
            for (bi, id) in ids.iter_mut().enumerate() {
                let n = seen.len() as u32;
                *id = *seen.entry((*id, tokens[[bi, len - 1]])).or_insert(n);
            }
            if seen.len() * 2 > b {
                break;
            }
            found = Some((len, seen.len(), ids.clone()));
        }
        let (len, n, of) = found?;
        let mut prefixes = Array2::zeros((n, len));
        let mut done = vec![false; n];
        for (bi, &id) in of.iter().enumerate() {
            if !done[id as usize] {
                done[id as usize] = true;
                for j in 0..len {
                    prefixes[[id as usize, j]] = tokens[[bi, j]];
                }
            }
        }
        Some(PrefixSplit { len, prefixes, of })
    }
}

/// How a query-side activation lies in the workspace: rows `[b·q, width]`, or the attention layout
/// `[b, h, q, p]`.
#[derive(Clone, Copy)]
enum BufShape {
    Rows(usize),
    Keys { heads: usize, masked: f32 },
}

impl Transformer {
    /// The hook points computed only at the last block's query positions: its attention from the
    /// scores on, its MLP, the final LayerNorm and the unembedding.
    fn query_side_sites(&self) -> Vec<Site> {
        let l = self.cfg.n_layers - 1;
        Site::all(&self.cfg)
            .into_iter()
            .filter(|s| {
                use Site::*;
                match *s {
                    AttnScores(x) | Pattern(x) | Z(x) | AttnOut(x) | ResidMid(x) | Ln2Scale(x)
                    | Ln2Normalized(x) | MlpPre(x) | MlpPost(x) | MlpOut(x) | ResidPost(x) => {
                        x == l
                    }
                    LnFinalScale | LnFinalNormalized | UnembedIn | UnembedOut => true,
                    _ => false,
                }
            })
            .collect()
    }

    /// A cache pass without hooks, split at `split` (see the module's doc): the logits and the
    /// cache, as [`Transformer::run`] gives them.
    pub(super) fn run_split(
        &self,
        ws: &mut Workspace,
        tokens: ArrayView2<u32>,
        (names, filter): (&[String], &CacheFilter),
        split: &PrefixSplit,
    ) -> crate::error::Result<(Array3<f32>, ActivationCache)> {
        let cfg = &self.cfg;
        let (b, p) = tokens.dim();
        let query_side: Vec<Site> = self
            .query_side_sites()
            .into_iter()
            .filter(|s| filter.keeps(&s.name()))
            .collect();
        let qs_names: Vec<String> = query_side.iter().map(Site::name).collect();
        // The full batch: every entry but the query side's, cached as the forward goes.
        let mut cache = ActivationCache::default();
        let rest = CacheFilter::Predicate(Box::new(|n: &str| {
            filter.keeps(n) && !qs_names.iter().any(|q| q == n)
        }));
        let mut icpt: Interceptor =
            HookRunner::new(names, Hooks::new(), Some((&mut cache, &rest)))?;
        let last_q: Vec<usize> = (split.len..p).collect();
        self.forward_impl(ws, tokens, &last_q, Some(&mut icpt));
        icpt.finish()?;
        // The distinct prefixes: the query side only (a pass of its own, which may split again).
        let (side_logits, side) = self.run(
            split.prefixes.view(),
            Hooks::new(),
            Some(CacheFilter::Names(qs_names.clone())),
        )?;
        let (h_n, dh) = (cfg.n_heads, cfg.d_head);
        let last = cfg.n_layers - 1;
        if query_side.contains(&Site::Z(last)) && last == 0 && ws.plan.fold_wo_layer0 {
            // W_O was folded into v, so z was not formed: form it for the cache.
            let rows = BlockRows {
                b,
                p,
                q_pos: &last_q,
                map: &ws.map0,
                n_rows: ws.uniq.len(),
            };
            let lb = &mut ws.layers[0];
            let z = super::buf(&mut lb.z, b * last_q.len() * h_n * dh);
            attention::mix(&rows.geometry(h_n, dh), &lb.pattern, &lb.v, z);
        }
        let v = cfg.d_vocab_out();
        for site in &query_side {
            let (data, layout) = self.query_side_buffer(ws, *site);
            let name = site.name();
            let side_entry = side.get(&name)?;
            let entry = assemble(data, layout, side_entry, split, (b, p));
            cache.map.insert(name, entry);
        }
        let side_logits = side_logits.into_dyn();
        let logits = assemble(&ws.logits, BufShape::Rows(v), &side_logits, split, (b, p));
        let logits = logits.into_dimensionality().expect("logits shape");
        Ok((logits, cache))
    }

    /// The workspace's buffer for a query-side hook point after a forward, and its layout.
    fn query_side_buffer<'w>(&self, ws: &'w Workspace, site: Site) -> (&'w [f32], BufShape) {
        use Site::*;
        let (cfg, lay) = (&self.cfg, &self.layout);
        let (d, h_n) = (cfg.d_model, cfg.n_heads);
        let lb = &ws.layers[cfg.n_layers - 1];
        let xf: &[f32] = match lay.ln_final {
            Some(_) => &ws.lnf.y,
            None => &ws.resid[cfg.n_layers],
        };
        match site {
            AttnScores(_) => (
                &lb.scores,
                BufShape::Keys {
                    heads: h_n,
                    masked: IGNORE,
                },
            ),
            Pattern(_) => (
                &lb.pattern,
                BufShape::Keys {
                    heads: h_n,
                    masked: 0.0,
                },
            ),
            Z(_) => (&lb.z, BufShape::Rows(h_n * cfg.d_head)),
            AttnOut(_) => (&lb.attn_out, BufShape::Rows(d)),
            ResidMid(_) => (&lb.resid_mid, BufShape::Rows(d)),
            Ln2Scale(_) => (&lb.ln2.scale, BufShape::Rows(1)),
            Ln2Normalized(_) => (&lb.ln2.xhat, BufShape::Rows(d)),
            MlpPre(_) => (&lb.pre, BufShape::Rows(cfg.d_mlp())),
            MlpPost(_) => (&lb.post, BufShape::Rows(cfg.d_mlp())),
            MlpOut(_) => (&lb.mlp_out, BufShape::Rows(d)),
            ResidPost(_) => (&ws.resid[cfg.n_layers], BufShape::Rows(d)),
            LnFinalScale => (&ws.lnf.scale, BufShape::Rows(1)),
            LnFinalNormalized => (&ws.lnf.xhat, BufShape::Rows(d)),
            UnembedIn => (xf, BufShape::Rows(d)),
            UnembedOut => (&ws.logits, BufShape::Rows(cfg.d_vocab_out())),
            _ => unreachable!("{site:?} is computed at every position"),
        }
    }
}

/// One full activation from the two passes: positions below `split.len` from the prefixes' pass
/// (`side`, TransformerLens layout over the prefixes), the rest from the full batch's workspace
/// buffer (`main`, the last block's query positions only). Written once, in parallel by input.
fn assemble(
    main: &[f32],
    layout: BufShape,
    side: &ArrayD<f32>,
    split: &PrefixSplit,
    (b, p): (usize, usize),
) -> ArrayD<f32> {
    let l = split.len;
    let nq = p - l;
    let (per_b, shape) = match layout {
        // The trailing axes as the prefixes' pass gave them ([d], [1], [h, d_head]...).
        BufShape::Rows(w) => (p * w, [&[b, p][..], &side.shape()[2..]].concat()),
        BufShape::Keys { heads, .. } => (heads * p * p, vec![b, heads, p, p]),
    };
    let side = side.as_slice().expect("a cache entry is contiguous");
    let mut out = fresh_vec(b * per_b);
    out.spare_capacity_mut()[..b * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(bi, o)| {
            let s = split.of[bi] as usize;
            match layout {
                BufShape::Rows(w) => {
                    write_floats(&mut o[..l * w], &side[s * l * w..][..l * w]);
                    write_floats(&mut o[l * w..], &main[bi * nq * w..][..nq * w]);
                }
                BufShape::Keys { heads, masked } => {
                    for h in 0..heads {
                        for q in 0..p {
                            let row = &mut o[(h * p + q) * p..][..p];
                            // A few keys a row: element by element, not a call to memcpy.
                            if q < l {
                                let src = &side[((s * heads + h) * l + q) * l..][..l];
                                for (k, x) in row.iter_mut().enumerate() {
                                    x.write(if k < l { src[k] } else { masked });
                                }
                            } else {
                                let src = &main[((bi * heads + h) * nq + q - l) * p..][..p];
                                for (x, &y) in row.iter_mut().zip(src) {
                                    x.write(y);
                                }
                            }
                        }
                    }
                }
            }
        });
    // SAFETY: every input's block of per_b floats was written above.
    unsafe { out.set_len(b * per_b) };
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("assembled shape")
}
