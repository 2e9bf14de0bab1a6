//! Neurons by frequency: each MLP neuron's activation over the p×p input grid (at the answer position),
//! in the 2D Fourier basis. A neuron's share for frequency k is the fraction of its variance (constant
//! removed) in the components whose x and y frequencies are each k or constant, for example cos(kx),
//! sin(ky), cos(kx)·sin(ky). Its best frequency is the one with the largest share; neurons cluster by
//! best frequency.

use super::fourier::FourierBasis;
use crate::engine::matmul::matmul;
use crate::error::{Error, Result};
use crate::hooks::CacheFilter;
use crate::models::transformer::Transformer;
use crate::tasks::modular::{ModularTask, Op};
use ndarray::{Array2, Array3, Axis};
use serde::Serialize;

/// Neurons whose best frequency explains less than this share of their variance join no cluster.
pub const CLUSTER_MIN_SHARE: f64 = 0.5;

#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    pub frequency: usize,
    pub size: usize,
    /// Mean share of variance the frequency explains in its neurons.
    pub mean_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NeuronFrequencies {
    pub best_frequency: Vec<usize>,
    pub share: Vec<f64>,
    /// Clusters by best frequency (neurons with share ≥ CLUSTER_MIN_SHARE), largest first.
    pub clusters: Vec<Cluster>,
}

/// Best frequency and its share for each neuron, from activations `grid [p, p, n]` (x, y, neuron).
pub fn frequency_shares(grid: &Array3<f32>) -> (Vec<usize>, Vec<f64>) {
    let (p, _, n) = grid.dim();
    let basis = FourierBasis::new(p);
    let b = Array2::from_shape_fn((p, p), |(i, x)| basis.rows[i][x] as f32);
    // Over y for each x, then over x for all (y-frequency, neuron) at once.
    let mut f1 = Array3::<f32>::zeros((p, p, n));
    for x in 0..p {
        let mut out = f1.index_axis_mut(Axis(0), x);
        matmul(&mut out, &b.view(), &grid.index_axis(Axis(0), x), false);
    }
    let f1m = f1.into_shape_with_order((p, p * n)).expect("reshape");
    let mut f2 = Array2::<f32>::zeros((p, p * n));
    matmul(&mut f2.view_mut(), &b.view(), &f1m.view(), false);
    let f2 = f2.into_shape_with_order((p, p, n)).expect("reshape"); // [x-component, y-component, neuron]
    let n_freq = p / 2 + 1;
    let mut best = vec![0; n];
    let mut share = vec![0.0; n];
    for neuron in 0..n {
        let mut per = vec![0.0f64; n_freq];
        let mut total = 0.0f64;
        for i in 0..p {
            for j in 0..p {
                if i == 0 && j == 0 {
                    continue;
                }
                let v = f2[[i, j, neuron]] as f64;
                let e = v * v;
                total += e;
                let (fi, fj) = (basis.freq[i], basis.freq[j]);
                if fi == fj || fi == 0 || fj == 0 {
                    per[fi.max(fj)] += e;
                }
            }
        }
        let (k, &s) = per
            .iter()
            .enumerate()
            .skip(1)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("frequencies");
        best[neuron] = k;
        share[neuron] = if total > 0.0 { s / total } else { 0.0 };
    }
    (best, share)
}

/// Neuron frequencies of the last MLP layer of a modular-addition model.
pub fn neuron_frequencies(model: &Transformer, p: usize) -> Result<NeuronFrequencies> {
    let cfg = &model.cfg;
    if !cfg.has_mlp() {
        return Err(Error::Input(
            "the model has no MLP neurons (attention-only)".into(),
        ));
    }
    let batch = ModularTask::all_pairs_batch(p, Op::Add);
    let name = format!("blocks.{}.mlp.hook_post", cfg.n_layers - 1);
    let (_, cache) =
        model.run_with_cache(batch.tokens.view(), CacheFilter::Names(vec![name.clone()]))?;
    let post = cache.get(&name)?;
    let last = post.shape()[1] - 1;
    let post = post.index_axis(Axis(1), last).to_owned(); // [p², n]
    let n = post.shape()[1];
    let grid = post
        .into_shape_with_order((p, p, n))
        .map_err(|e| Error::Input(e.to_string()))?;
    let (best, share) = frequency_shares(&grid);
    let mut clusters: Vec<Cluster> = Vec::new();
    for (k, s) in best
        .iter()
        .zip(&share)
        .filter(|(_, &s)| s >= CLUSTER_MIN_SHARE)
    {
        match clusters.iter_mut().find(|c| c.frequency == *k) {
            Some(c) => {
                c.mean_share += s;
                c.size += 1;
            }
            None => clusters.push(Cluster {
                frequency: *k,
                size: 1,
                mean_share: *s,
            }),
        }
    }
    for c in &mut clusters {
        c.mean_share /= c.size as f64;
    }
    clusters.sort_by(|a, b| b.size.cmp(&a.size).then(a.frequency.cmp(&b.frequency)));
    Ok(NeuronFrequencies {
        best_frequency: best,
        share,
        clusters,
    })
}

/// Key frequencies by the neuron-cluster rule: the frequencies whose clusters hold at least 5% of the
/// clustered neurons, ascending.
pub fn key_frequencies_from_clusters(nf: &NeuronFrequencies) -> Vec<usize> {
    let clustered: usize = nf.clusters.iter().map(|c| c.size).sum();
    let min = (clustered as f64 * 0.05).ceil().max(1.0) as usize;
    let mut k: Vec<usize> = nf
        .clusters
        .iter()
        .filter(|c| c.size >= min)
        .map(|c| c.frequency)
        .collect();
    k.sort_unstable();
    k
}
