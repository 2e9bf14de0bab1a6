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
use crate::engine::simd::SendPtr;
use crate::hooks::{fresh_vec, write_floats, ActivationCache, CacheFilter, HookRunner, Hooks};
use ndarray::{Array2, Array3, ArrayD, ArrayView2, ArrayViewMut2, IxDyn};
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

/// How a query-side activation lies in the workspace: rows `[b·q, ...]`, or the attention layout
/// `[b, h, q, p]`.
#[derive(Clone, Copy)]
enum BufShape {
    Rows,
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
        // The distinct prefixes first: the query side only (a pass of its own, which may split
        // again).
        let (side_logits, side) = self.run(
            split.prefixes.view(),
            Hooks::new(),
            Some(CacheFilter::Names(qs_names.clone())),
        )?;
        let (h_n, dh) = (cfg.n_heads, cfg.d_head);
        let last = cfg.n_layers - 1;
        // A one-block model on the folds' path writes its rows straight into the cache's arrays,
        // already holding the prefixes' rows (see `DirectRows`).
        ws.ensure_layers(cfg.n_layers);
        let side_logits = side_logits.into_dyn();
        let direct = &mut ws.layers[last].direct;
        *direct = DirectRows::default();
        if self.writes_split_rows_directly() {
            for (site, slot) in direct.slots() {
                if query_side.contains(&site) {
                    *slot = Some(CacheRows::prefilled(side.get(&site.name())?, split, (b, p)));
                }
            }
            direct.logits = Some(CacheRows::prefilled(&side_logits, split, (b, p)));
        }
        let last_q: Vec<usize> = (split.len..p).collect();
        ws.layers[last].keep_scores = query_side.contains(&Site::AttnScores(last));
        self.forward_impl(ws, tokens, &last_q, Some(&mut icpt));
        ws.layers[last].keep_scores = false;
        icpt.finish()?;
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
        // The forward fills every array it was given (into_array checks).
        let mut direct = std::mem::take(&mut ws.layers[last].direct);
        let mut written = Vec::new();
        for (site, slot) in direct.slots() {
            if let Some(c) = slot.take() {
                cache.map.insert(site.name(), c.into_array());
                written.push(site);
            }
        }
        let logits_written = direct.logits.is_some();
        let logits = match direct.logits.take() {
            Some(c) => c.into_array(),
            None => assemble(&ws.logits, BufShape::Rows, &side_logits, split, (b, p)),
        };
        for site in &query_side {
            let name = site.name();
            if cache.map.contains_key(&name) {
                continue;
            }
            // The unembedding's input and output were written straight into the resid_post and
            // logits arrays (there is no final LayerNorm on that path): copies of those.
            let copy = match site {
                Site::UnembedIn if written.contains(&Site::ResidPost(last)) => {
                    Some(cache.get(&Site::ResidPost(last).name())?.clone())
                }
                Site::UnembedOut if logits_written => Some(logits.clone()),
                _ => None,
            };
            if let Some(entry) = copy {
                cache.map.insert(name, entry);
                continue;
            }
            let (data, layout) = self.query_side_buffer(ws, *site);
            let side_entry = side.get(&name)?;
            let entry = assemble(data, layout, side_entry, split, (b, p));
            cache.map.insert(name, entry);
        }
        let logits = logits.into_dimensionality().expect("logits shape");
        Ok((logits, cache))
    }

    /// Whether a split pass's forward writes the last block's rows straight into the cache's
    /// arrays: one block on the W_O and W_in folds' path (an MLP and no LayerNorm after the
    /// attention; rows by token and position, which those folds need), as [`DirectRows`] supposes.
    fn writes_split_rows_directly(&self) -> bool {
        let blk = &self.layout.blocks[0];
        self.cfg.n_layers == 1
            && self.cfg.rows_by_token_and_position()
            && blk.mlp.is_some()
            && blk.ln2.is_none()
            && self.layout.ln_final.is_none()
    }

    /// The workspace's buffer for a query-side hook point after a forward, and its layout.
    fn query_side_buffer<'w>(&self, ws: &'w Workspace, site: Site) -> (&'w [f32], BufShape) {
        use Site::*;
        let (cfg, lay) = (&self.cfg, &self.layout);
        let h_n = cfg.n_heads;
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
            Z(_) => (&lb.z, BufShape::Rows),
            AttnOut(_) => (&lb.attn_out, BufShape::Rows),
            ResidMid(_) => (&lb.resid_mid, BufShape::Rows),
            Ln2Scale(_) => (&lb.ln2.scale, BufShape::Rows),
            Ln2Normalized(_) => (&lb.ln2.xhat, BufShape::Rows),
            MlpPre(_) => (&lb.pre, BufShape::Rows),
            MlpPost(_) => (&lb.post, BufShape::Rows),
            MlpOut(_) => (&lb.mlp_out, BufShape::Rows),
            ResidPost(_) => (&ws.resid[cfg.n_layers], BufShape::Rows),
            LnFinalScale => (&ws.lnf.scale, BufShape::Rows),
            LnFinalNormalized => (&ws.lnf.xhat, BufShape::Rows),
            UnembedIn => (xf, BufShape::Rows),
            UnembedOut => (&ws.logits, BufShape::Rows),
            _ => unreachable!("{site:?} is computed at every position"),
        }
    }
}

/// One query-side cache entry `[b, p, ...]` of a split pass, filled in two parts: the positions
/// below the split from the prefixes' pass when it is made, the others by the full batch. The full
/// batch's forward may write its rows straight in (through [`CacheRows::dst`]), which saves
/// writing them to the workspace and copying them out.
#[derive(Debug)]
pub(super) struct CacheRows {
    /// Room for the whole array; its length stays 0 until every row is written.
    data: Vec<f32>,
    shape: Vec<usize>,
    width: usize,
}

impl CacheRows {
    /// The array for `side`'s entry (`[prefixes, split.len, ...]`) over the whole batch, with the
    /// positions below the split written.
    fn prefilled(side: &ArrayD<f32>, split: &PrefixSplit, (b, p): (usize, usize)) -> CacheRows {
        let width: usize = side.shape()[2..].iter().product();
        let l = split.len;
        let src = side.as_slice().expect("a cache entry is contiguous");
        let mut data = fresh_vec(b * p * width);
        data.spare_capacity_mut()[..b * p * width]
            .par_chunks_mut(p * width)
            .zip(&split.of)
            .for_each(|(o, &s)| {
                write_floats(
                    &mut o[..l * width],
                    &src[s as usize * l * width..][..l * width],
                )
            });
        let shape = [&[b, p][..], &side.shape()[2..]].concat();
        CacheRows { data, shape, width }
    }

    /// Where the forward writes its rows (`b·q + i` for query position `q_pos[i]`).
    pub fn dst<'a>(&'a mut self, q_pos: &'a [usize]) -> RowDst<'a> {
        RowDst {
            ptr: SendPtr(self.data.as_mut_ptr()),
            width: self.width,
            nq: q_pos.len(),
            per_b: self.shape[1],
            q_pos: Some(q_pos),
        }
    }

    /// Record that every row is written.
    ///
    /// # Safety
    /// Every row at the positions not prefilled must have been written through [`Self::dst`].
    pub unsafe fn mark_whole(&mut self) {
        let n = self.shape.iter().product();
        self.data.set_len(n);
    }

    /// Write the rows the prefixes did not from `main` (`[b·q, width]`, the workspace's buffer),
    /// in parallel by input.
    fn fill_from(&mut self, main: &[f32], split: &PrefixSplit) {
        let (p, w) = (self.shape[1], self.width);
        let nq = p - split.len;
        let q_pos: Vec<usize> = (split.len..p).collect();
        let dst = self.dst(&q_pos);
        main[..dst.rows(split.of.len()) * w]
            .par_chunks(nq * w)
            .enumerate()
            .for_each(|(bi, src)| {
                for (i, row) in src.chunks_exact(w).enumerate() {
                    // SAFETY: each (input, position) row once; rows are disjoint.
                    unsafe { dst.write(bi * nq + i, row) };
                }
            });
        // SAFETY: every input's rows at positions split.len.. were written just above.
        unsafe { self.mark_whole() };
    }

    pub fn into_array(self) -> ArrayD<f32> {
        assert!(
            !self.data.is_empty(),
            "a split pass's forward left a cache array unwritten"
        );
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data).expect("assembled shape")
    }
}

/// The cache arrays a split pass of a one-block model (the W_O and W_in folds, no LayerNorm) has
/// its forward write straight into, each prefilled with the prefixes' rows; None where the cache
/// leaves that entry out. The forward writes the others to the workspace as usual.
#[derive(Debug, Default)]
pub(super) struct DirectRows {
    pub attn_out: Option<CacheRows>,
    pub resid_mid: Option<CacheRows>,
    pub pre: Option<CacheRows>,
    pub post: Option<CacheRows>,
    pub mlp_out: Option<CacheRows>,
    pub resid_post: Option<CacheRows>,
    pub logits: Option<CacheRows>,
}

impl DirectRows {
    /// The entries with a hook point, each with its site (block 0: the only one on this path).
    fn slots(&mut self) -> [(Site, &mut Option<CacheRows>); 6] {
        [
            (Site::AttnOut(0), &mut self.attn_out),
            (Site::ResidMid(0), &mut self.resid_mid),
            (Site::MlpPre(0), &mut self.pre),
            (Site::MlpPost(0), &mut self.post),
            (Site::MlpOut(0), &mut self.mlp_out),
            (Site::ResidPost(0), &mut self.resid_post),
        ]
    }

    pub fn is_empty(&self) -> bool {
        let s = self;
        [
            &s.attn_out,
            &s.resid_mid,
            &s.pre,
            &s.post,
            &s.mlp_out,
            &s.resid_post,
            &s.logits,
        ]
        .iter()
        .all(|c| c.is_none())
    }
}

/// Where row `r = b·q + i` of a block's output goes (q its number of query positions): a dense
/// `[b·q, width]` buffer, or a cache array `[b, p, width]` at row `b·p + q_pos[i]`. A raw pointer,
/// so that parallel loops can write disjoint rows.
#[derive(Clone, Copy)]
pub(super) struct RowDst<'a> {
    ptr: SendPtr,
    width: usize,
    nq: usize,
    per_b: usize,
    q_pos: Option<&'a [usize]>,
}

impl<'a> RowDst<'a> {
    /// The rows of a dense buffer `[b·nq, width]`.
    pub fn dense(buf: &'a mut [f32], width: usize, nq: usize) -> RowDst<'a> {
        RowDst {
            ptr: SendPtr(buf.as_mut_ptr()),
            width,
            nq,
            per_b: nq,
            q_pos: None,
        }
    }

    /// The rows of `cache` where there is one, else of the dense `[b·q, width]` buffer.
    pub fn cache_or_dense(
        cache: Option<&'a mut CacheRows>,
        dense: &'a mut [f32],
        q_pos: &'a [usize],
        width: usize,
    ) -> RowDst<'a> {
        match cache {
            Some(c) => c.dst(q_pos),
            None => RowDst::dense(dense, width, q_pos.len()),
        }
    }

    /// The number of rows written for a batch of `b`.
    pub fn rows(&self, b: usize) -> usize {
        b * self.nq
    }

    /// Row `r`, as written.
    ///
    /// # Safety
    /// Row `r` has been written, and nobody writes it while the slice lives.
    pub unsafe fn row(&self, r: usize) -> &'a [f32] {
        std::slice::from_raw_parts(self.at(r), self.width)
    }

    /// The rows at query position `i` of every input, `[b, width]` (strided): one product per
    /// position reads or writes the rows of a cache array in place.
    ///
    /// # Safety
    /// Those rows have been written (a product reads what it adds to), for the batch `b` this
    /// was made for, and nobody else touches them while the view lives.
    pub unsafe fn position(&self, i: usize, b: usize) -> ArrayViewMut2<'a, f32> {
        use ndarray::ShapeBuilder;
        let shape = (b, self.width).strides((self.per_b * self.width, 1));
        ArrayViewMut2::from_shape_ptr(shape, self.at(i))
    }

    fn at(&self, r: usize) -> *mut f32 {
        let (bi, i) = (r / self.nq, r % self.nq);
        let q = self.q_pos.map_or(i, |q| q[i]);
        self.ptr.0.wrapping_add((bi * self.per_b + q) * self.width)
    }

    /// Write row `r`.
    ///
    /// # Safety
    /// `r` is a row of the destination (r < b·q for the batch it was made for), and no other thread
    /// writes row `r` meanwhile.
    pub unsafe fn write(&self, r: usize, x: &[f32]) {
        let dst = std::slice::from_raw_parts_mut(self.at(r).cast(), self.width);
        write_floats(dst, &x[..self.width]);
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
    let (heads, masked) = match layout {
        BufShape::Rows => {
            let mut rows = CacheRows::prefilled(side, split, (b, p));
            rows.fill_from(main, split);
            return rows.into_array();
        }
        BufShape::Keys { heads, masked } => (heads, masked),
    };
    let l = split.len;
    let nq = p - l;
    let per_b = heads * p * p;
    let side = side.as_slice().expect("a cache entry is contiguous");
    let mut out = fresh_vec(b * per_b);
    out.spare_capacity_mut()[..b * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(bi, o)| {
            let s = split.of[bi] as usize;
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
        });
    // SAFETY: every input's block of per_b floats was written above.
    unsafe { out.set_len(b * per_b) };
    ArrayD::from_shape_vec(IxDyn(&[b, heads, p, p]), out).expect("assembled shape")
}
