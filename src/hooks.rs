//! Hooks that read or replace an activation during a forward pass, the activation cache (a map from
//! hook name to array), and the runner a model's forward calls at each of its hook points. Hook
//! names and shapes belong to the models (TransformerLens names for the transformer); this module
//! knows none of them.

use crate::error::{closest, Error, Result};
use ndarray::{ArrayD, ArrayViewMutD, Axis, IxDyn};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A hook: sees the activation and may change it in place; an `Err` (say, a replacement of the
/// wrong shape) becomes the forward pass's error, naming the hook.
pub type HookFn<'a> =
    Box<dyn FnMut(&mut ArrayViewMutD<f32>) -> std::result::Result<(), String> + 'a>;

/// Hooks by hook-point name, run in the order added when several share a point.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(crate) entries: Vec<(String, HookFn<'a>)>,
}

impl<'a> Hooks<'a> {
    pub fn new() -> Self {
        Hooks {
            entries: Vec::new(),
        }
    }

    /// Add a hook at `name` (checked when the model runs).
    pub fn add(
        self,
        name: impl Into<String>,
        mut f: impl FnMut(&mut ArrayViewMutD<f32>) + 'a,
    ) -> Self {
        self.try_add(name, move |a| {
            f(a);
            Ok(())
        })
    }

    /// Add a hook that can fail; its error message becomes the run's error.
    pub fn try_add(
        mut self,
        name: impl Into<String>,
        f: impl FnMut(&mut ArrayViewMutD<f32>) -> std::result::Result<(), String> + 'a,
    ) -> Self {
        self.entries.push((name.into(), Box::new(f)));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hook-point names, in the order added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }
}

/// Zero ablation: the activation becomes 0.
pub fn zero_ablate() -> impl FnMut(&mut ArrayViewMutD<f32>) {
    |a| a.fill(0.0)
}

/// Mean ablation: every batch element gets the batch mean (axis 0).
pub fn mean_ablate() -> impl FnMut(&mut ArrayViewMutD<f32>) {
    |a| {
        let n = a.len_of(Axis(0)).max(1) as f32;
        let mean = a.sum_axis(Axis(0)) / n;
        for mut row in a.axis_iter_mut(Axis(0)) {
            row.assign(&mean);
        }
    }
}

/// Replace the activation with `value` (same shape, or one that broadcasts to it). For
/// [`Hooks::try_add`]: a shape that does not fit is an error naming both shapes.
pub fn replace_with(
    value: ArrayD<f32>,
) -> impl FnMut(&mut ArrayViewMutD<f32>) -> std::result::Result<(), String> {
    move |a| {
        let dim = a.raw_dim();
        let v = value.broadcast(dim).ok_or_else(|| {
            format!(
                "the replacement has shape {:?}, which does not fit the activation's {:?}",
                value.shape(),
                a.shape()
            )
        })?;
        a.assign(&v);
        Ok(())
    }
}

/// What to patch from a source activation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchSpec {
    /// Only this position (axis 1 of `[batch, pos, ...]`, or the query axis of patterns); all if None.
    pub position: Option<usize>,
    /// Only this head (for per-head activations: q, k, v, z, scores, pattern); all if None.
    pub head: Option<usize>,
}

/// Activation patching: copy `source` (an activation from another run, same shape) into this run's
/// activation at the chosen position/head. `pos_axis` and `head_axis` give where positions and heads
/// sit for this hook point (the model's `patch_axes`). For [`Hooks::try_add`]: a source of another
/// shape, or a position or head out of range, is an error.
pub fn patch_from(
    source: ArrayD<f32>,
    spec: PatchSpec,
    pos_axis: usize,
    head_axis: Option<usize>,
) -> impl FnMut(&mut ArrayViewMutD<f32>) -> std::result::Result<(), String> {
    move |a| {
        if a.shape() != source.shape() {
            return Err(format!(
                "the patch source has shape {:?}, the activation {:?}",
                source.shape(),
                a.shape()
            ));
        }
        let mut dst = a.view_mut();
        let mut src = source.view();
        if let (Some(h), Some(ax)) = (spec.head, head_axis) {
            if h >= dst.len_of(Axis(ax)) {
                return Err(format!(
                    "head {h} is out of range ({} heads)",
                    dst.len_of(Axis(ax))
                ));
            }
            dst.collapse_axis(Axis(ax), h);
            src.collapse_axis(Axis(ax), h);
        }
        if let Some(p) = spec.position {
            if pos_axis >= dst.ndim() || p >= dst.len_of(Axis(pos_axis)) {
                return Err(format!(
                    "position {p} is out of range for shape {:?}",
                    a.shape()
                ));
            }
            dst.collapse_axis(Axis(pos_axis), p);
            src.collapse_axis(Axis(pos_axis), p);
        }
        dst.assign(&src);
        Ok(())
    }
}

/// Which activations to keep in a cache.
pub enum CacheFilter<'a> {
    All,
    Names(Vec<String>),
    Predicate(Box<dyn Fn(&str) -> bool + 'a>),
}

/// Activations by hook-point name.
#[derive(Clone, Debug, Default)]
pub struct ActivationCache {
    pub map: BTreeMap<String, ArrayD<f32>>,
}

impl ActivationCache {
    /// The activation at `name`, or an error listing close names.
    pub fn get(&self, name: &str) -> Result<&ArrayD<f32>> {
        self.map.get(name).ok_or_else(|| Error::UnknownHook {
            name: name.to_string(),
            suggestions: closest(name, self.map.keys().map(|s| s.as_str()), 3),
        })
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl CacheFilter<'_> {
    /// Whether the cache keeps the activation called `name`.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            CacheFilter::All => true,
            CacheFilter::Names(ns) => ns.iter().any(|x| x == name),
            CacheFilter::Predicate(f) => f(name),
        }
    }
}

/// An empty vector with room for `n` floats. A large one is backed by huge pages where the kernel
/// allows (Linux, transparent huge pages on `madvise`): filling a fresh 100 MB cache entry then
/// takes 50 page faults instead of 25,000.
pub fn fresh_vec(n: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (v.as_ptr() as usize, n * std::mem::size_of::<f32>());
        let first = start.next_multiple_of(HUGE);
        if len >= 4 * HUGE && first < start + len {
            let whole = (start + len - first) / HUGE * HUGE;
            // SAFETY: advice on pages of this vector's own allocation; it changes no contents.
            unsafe {
                libc::madvise(first as *mut libc::c_void, whole, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// `src` into the uninitialised `dst` of the same length (the room of a [`fresh_vec`]).
///
/// Plain stores, not streaming ones: measured on 2026-12-01 (2-core AMD EPYC, a kept block being
/// refilled), `_mm_stream_ps` filled 160 MB at 5.3–6.5 GB/s and plain stores at 10–14 GB/s, and a
/// whole cache pass over the grokking grid was 1–13 ms faster with plain ones (four pairs).
pub fn write_floats(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: equal lengths; a `&mut` and a `&` slice never overlap; f32 is Copy.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) }
}

/// What a model's forward calls at each hook point: the hooks asked for and the cache, with the
/// first hook error kept for the end of the pass.
pub struct HookRunner<'h, 'c> {
    hooks: Vec<(String, HookFn<'h>)>,
    cache: Option<(&'c mut ActivationCache, Vec<String>)>,
    error: Option<Error>,
}

impl<'h, 'c> HookRunner<'h, 'c> {
    /// Check every hook's and cache name against the model's `names` (an unknown one is an error
    /// suggesting close names) and set up the run.
    pub fn new(
        names: &[String],
        hooks: Hooks<'h>,
        cache: Option<(&'c mut ActivationCache, &CacheFilter)>,
    ) -> Result<Self> {
        let check = |name: &str| -> Result<()> {
            if names.iter().any(|n| n == name) {
                return Ok(());
            }
            Err(Error::UnknownHook {
                name: name.to_string(),
                suggestions: closest(name, names.iter().map(|s| s.as_str()), 3),
            })
        };
        for (n, _) in &hooks.entries {
            check(n)?;
        }
        let cache = match cache {
            Some((c, filter)) => {
                if let CacheFilter::Names(ns) = filter {
                    for n in ns {
                        check(n)?;
                    }
                }
                let kept = names.iter().filter(|n| filter.keeps(n)).cloned().collect();
                Some((c, kept))
            }
            None => None,
        };
        Ok(HookRunner {
            hooks: hooks.entries,
            cache,
            error: None,
        })
    }

    /// Whether anything runs at `name` (so the model can skip copying an activation out).
    pub fn wants(&self, name: &str) -> bool {
        self.hooks.iter().any(|(n, _)| n == name)
            || self
                .cache
                .as_ref()
                .is_some_and(|(_, kept)| kept.iter().any(|n| n == name))
    }

    /// Whether any hook is set (a run with none may take shortcuts: only the cache watches).
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Cache the activation `make` builds, if the cache keeps `name` (for a pass with no hooks,
    /// whose tensor at `name` is not laid out in full).
    pub fn cache_with(&mut self, name: &str, make: impl FnOnce() -> ArrayD<f32>) {
        if let Some((cache, kept)) = self.cache.as_mut() {
            if kept.iter().any(|n| n == name) {
                cache.map.insert(name.to_string(), make());
            }
        }
    }

    /// Run the hooks at `name` on `data` viewed with `shape` (no copy), then cache it if asked.
    pub fn run(&mut self, name: &str, data: &mut [f32], shape: &[usize]) {
        if !self.wants(name) {
            return;
        }
        let n: usize = shape.iter().product();
        let mut v = ArrayViewMutD::from_shape(IxDyn(shape), &mut data[..n])
            .expect("a model's hook shape matches its buffer");
        for (hn, f) in self.hooks.iter_mut() {
            if hn == name {
                if let Err(msg) = f(&mut v) {
                    self.error
                        .get_or_insert(Error::Input(format!("hook `{name}`: {msg}")));
                }
            }
        }
        if let Some((cache, kept)) = self.cache.as_mut() {
            if kept.iter().any(|n| n == name) {
                let src = v.as_slice().expect("a hook view is contiguous");
                let mut data = fresh_vec(n);
                // In parallel, into the uninitialised room (no pass of zeros first): a big cache
                // entry's copy is bound by memory bandwidth per core.
                const CHUNK: usize = 1 << 16;
                data.spare_capacity_mut()[..n]
                    .par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(d, s)| write_floats(d, s));
                // SAFETY: the n floats were all written just above.
                unsafe { data.set_len(n) };
                let a = ArrayD::from_shape_vec(IxDyn(shape), data).expect("cache shape");
                cache.map.insert(name.to_string(), a);
            }
        }
    }

    /// The run's result: the first hook error, if any.
    pub fn finish(self) -> Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}
