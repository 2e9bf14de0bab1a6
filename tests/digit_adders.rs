//! Inside a small digit adder: the sub-task split partitions the evaluation set, the offsets from the
//! naive sum are probabilities that sum to 1, and the ablation table's entries equal ablations run
//! through hooks.

use ndarray::{ArrayViewMutD, Axis};
use toylens::analysis::digits::{self, Case};
use toylens::hooks::Hooks;
use toylens::Transformer;

fn small_adder(dir: &std::path::Path) -> (Transformer, toylens::tasks::digits::DigitsTask) {
    let cfg = toylens::config::resolve(
        "digits3",
        &[
            "model.d_model=32".into(),
            "model.n_heads=2".into(),
            "model.d_head=null".into(),
            "model.d_mlp=64".into(),
            "train.steps=300".into(),
            "train.eval_every=100".into(),
        ],
    )
    .unwrap();
    toylens::train::train(
        &cfg,
        dir,
        toylens::train::RunMode::New,
        toylens::train::Progress::Quiet,
    )
    .unwrap();
    let m = toylens::io::checkpoint::load_transformer(&dir.join("final.safetensors")).unwrap();
    let task = digits::task_of(3, false).unwrap();
    (m, task)
}

/// Per-digit loss of a hooked run on the evaluation set.
fn hooked_loss(m: &Transformer, set: &digits::EvalSet, hooks: Hooks) -> Vec<f64> {
    let full = m.run_with_hooks(set.tokens.view(), hooks).unwrap();
    let ans = full.select(Axis(1), &set.loss_pos);
    (0..set.places.len())
        .map(|j| {
            let mut total = 0.0;
            for i in 0..set.pairs.len() {
                let row: Vec<f64> = (0..10).map(|c| ans[[i, j, c]] as f64).collect();
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                total += lse - row[set.targets[[i, j]] as usize];
            }
            total / set.pairs.len() as f64
        })
        .collect()
}

#[test]
fn the_digit_adder_analysis_adds_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, task) = small_adder(&tmp.path().join("run"));
    let set = digits::eval_set(&task);
    let r = digits::checkpoint_report(&m, &task).unwrap();
    assert_eq!(r.digits.len(), 4);
    for d in &r.digits {
        // The three cases partition the evaluation set, and agree with the carries.
        assert_eq!(
            d.cases.iter().map(|c| c.n).sum::<usize>(),
            set.pairs.len(),
            "10^{}",
            d.place
        );
        let carried = set
            .pairs
            .iter()
            .filter(|&&p| digits::carry_in(p, d.place))
            .count();
        assert_eq!(d.cases[1].n + d.cases[2].n, carried);
        if d.place == 0 {
            assert_eq!(d.cases[0].n, set.pairs.len(), "no carry reaches the units");
            assert!(d.offsets_carry[0].is_nan());
        }
        if d.place == 1 {
            assert_eq!(d.cases[2].n, 0, "no cascade into the tens");
        }
        if d.place >= 2 {
            assert!(
                d.cases[2].n >= digits::N_CASCADE,
                "10^{}: {} cascades",
                d.place,
                d.cases[2].n
            );
        }
        for o in [d.offsets_no_carry, d.offsets_carry] {
            if o[0].is_nan() {
                continue;
            }
            assert!(o.iter().all(|&p| (0.0..=1.0 + 1e-9).contains(&p)), "{o:?}");
            assert!((o.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{o:?}");
        }
    }
    // The case of each example, by hand for one: 199 + 1.
    assert_eq!(digits::case((199, 1), 2), Case::Cascade);

    // Ablation: the table's entries are the hooked runs' loss increases.
    let base = hooked_loss(&m, &set, Hooks::new());
    for (j, b) in base.iter().enumerate() {
        assert!(
            (b - r.ablation.baseline[j]).abs() < 1e-4 * b.max(1e-3),
            "baseline of digit {j}"
        );
    }
    let head = &r.ablation.components[1];
    assert_eq!(head.name, "L0H1");
    let h = head.index;
    let zeroed = hooked_loss(
        &m,
        &set,
        Hooks::new().add("blocks.0.attn.hook_z", move |a: &mut ArrayViewMutD<f32>| {
            a.index_axis_mut(Axis(2), h).fill(0.0)
        }),
    );
    let neuron = r
        .ablation
        .components
        .iter()
        .find(|c| c.name.contains('N'))
        .unwrap();
    let n = neuron.index;
    let neuron_zeroed = hooked_loss(
        &m,
        &set,
        Hooks::new().add(
            "blocks.0.mlp.hook_post",
            move |a: &mut ArrayViewMutD<f32>| a.index_axis_mut(Axis(2), n).fill(0.0),
        ),
    );
    for j in 0..4 {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4 + 1e-4 * b.abs();
        assert!(
            close(zeroed[j] - base[j], head.zero[j]),
            "head, digit {j}: {} vs {}",
            zeroed[j] - base[j],
            head.zero[j]
        );
        assert!(
            close(neuron_zeroed[j] - base[j], neuron.zero[j]),
            "{}, digit {j}: {} vs {}",
            neuron.name,
            neuron_zeroed[j] - base[j],
            neuron.zero[j]
        );
    }
    // Attention rows are distributions over the key positions.
    for a in &r.attention[0] {
        for row in a {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        }
    }
}
