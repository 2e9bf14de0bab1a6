//! A warmed-up training step allocates no large buffers (allocator churn on big temporaries cost
//! other engines 25–35%). Counted with a global allocator that tallies allocations of 1 MiB or more:
//! our activation buffers are megabytes (Nanda's MLP activations are 3830 × 512 floats), so any
//! temporary of ours shows. What remains below that line is `gemm`'s own packing space, which it
//! requests on every call (bounded by its blocking, ≤ 256 KiB here; it offers no way to pass a buffer
//! in) and which malloc serves from its free lists.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use toylens::engine::adamw::AdamW;
use toylens::models::transformer::Normalization;
use toylens::{Transformer, TransformerConfig, Workspace};

struct Counting;
static LARGE: AtomicUsize = AtomicUsize::new(0);
const LARGE_BYTES: usize = 1 << 20;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() >= LARGE_BYTES {
            LARGE.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if n >= LARGE_BYTES {
            LARGE.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn large_allocations_in_steps(model: &mut Transformer, batch: &toylens::TokenBatch) -> usize {
    let mut ws = Workspace::new();
    let mut grads = vec![0.0f32; model.layout.total];
    let mut opt = AdamW::new(Default::default(), model.layout.total);
    let trainable = model.layout.trainable_ranges();
    let mut step = |model: &mut Transformer| {
        model.loss_and_grad(&mut ws, batch, &mut grads).unwrap();
        opt.update(&mut model.params, &grads, &trainable, 1e-3);
    };
    for _ in 0..3 {
        step(model); // warm-up: buffers, thread pools, gemm's packing space
    }
    let before = LARGE.load(Ordering::SeqCst);
    for _ in 0..5 {
        step(model);
    }
    LARGE.load(Ordering::SeqCst) - before
}

#[test]
fn warmed_up_training_steps_allocate_no_large_buffers() {
    let mut w1 = toylens::bench::W1::new(0).unwrap();
    let batch = w1.batch.clone();
    assert_eq!(
        large_allocations_in_steps(&mut w1.model, &batch),
        0,
        "Nanda's step"
    );

    let cfg = TransformerConfig {
        n_layers: 2,
        normalization_type: Some(Normalization::LN),
        attn_bias: true,
        unembed_bias: true,
        ..TransformerConfig::nanda(113)
    };
    let mut model = Transformer::new(cfg).unwrap();
    assert_eq!(
        large_allocations_in_steps(&mut model, &batch),
        0,
        "2-layer LN model"
    );
}
