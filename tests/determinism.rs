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
