//! Results do not depend on the thread count, and runs repeat bit for bit.

use toylens::bench::{train_steps, W1};
use toylens::engine::threads::with_threads;

fn three_steps(threads: usize) -> (Vec<f64>, Vec<f32>) {
    with_threads(threads, || {
        let mut w = W1::new(3).unwrap();
        let r = train_steps(&mut w.model, &w.batch, w.optim, 3).unwrap();
        (r.losses, w.model.params)
    })
}

#[test]
fn one_and_two_threads_give_identical_training() {
    let (l1, p1) = three_steps(1);
    let (l2, p2) = three_steps(2);
    assert_eq!(l1, l2);
    assert!(p1 == p2, "weights differ between 1 and 2 threads");
    let (l2b, p2b) = three_steps(2);
    assert_eq!(l2, l2b);
    assert!(p2 == p2b, "weights differ between two identical runs");
    assert!(l1[2] < l1[0], "loss should fall: {l1:?}");
}

#[test]
fn the_w_in_fold_gives_the_same_gradient_on_one_and_two_threads() {
    let grad = |threads: usize| {
        with_threads(threads, || {
            let w = W1::new(3).unwrap();
            let mut ws = toylens::Workspace::new();
            ws.set_w_in_fold(Some(true));
            let mut g = vec![0.0f32; w.model.layout.total];
            let stats = w.model.loss_and_grad(&mut ws, &w.batch, &mut g).unwrap();
            assert!(ws.w_in_folded());
            (stats.loss, g)
        })
    };
    let (l1, g1) = grad(1);
    let (l2, g2) = grad(2);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(
        g1 == g2,
        "the fold's gradients differ between 1 and 2 threads"
    );
}

/// The optimizer trace's statistics do not depend on the thread count either: on the two halves a
/// small model's update takes and on the chunks a large one's does.
#[test]
fn the_traced_update_gives_the_same_statistics_on_one_and_two_threads() {
    use toylens::engine::adamw::{AdamW, AdamWConfig};
    for n in [5_000usize, 400_000] {
        let traced = |threads: usize| {
            with_threads(threads, || {
                let mut p: Vec<f32> = (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let g: Vec<f32> = (0..n)
                    .map(|i| ((i * 104_729) % 997) as f32 / 1e4 - 0.05)
                    .collect();
                let tensors = [0..n / 3, n / 3..n / 3 + 1, n / 3 + 1..n];
                let mut opt = AdamW::new(AdamWConfig::default(), n);
                let all = std::iter::once(0..n).collect::<Vec<_>>();
                let stats: Vec<_> = (0..3)
                    .map(|_| {
                        let mut s = Vec::new();
                        opt.update_traced(&mut p, &g, &all, 1e-3, &tensors, &mut s);
                        s
                    })
                    .collect();
                (p, stats)
            })
        };
        let (p1, s1) = traced(1);
        let (p2, s2) = traced(2);
        assert!(p1 == p2, "{n}: weights differ");
        assert_eq!(s1, s2, "{n}: the statistics differ between 1 and 2 threads");
    }
}
