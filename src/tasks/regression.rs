//! Linear regression data: x ~ N(0, I), y = x·W*ᵀ + b* + σ·ε with ε ~ N(0, I). The true weights are
//! zero (`true_weights: zero`) or drawn N(0, 1) from the seed (`random`). A fixed train set and a
//! test set, both pure functions of the seed.

use crate::batch::{Batch, DenseBatch};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrueWeights {
    #[default]
    Zero,
    Random,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionTask {
    pub n_in: usize,
    pub n_out: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub noise_std: f64,
    pub true_weights: TrueWeights,
    pub seed: u64,
}

impl RegressionTask {
    pub fn validate(&self, prefix: &str) -> Result<()> {
        for (k, v) in [
            ("n_in", self.n_in),
            ("n_out", self.n_out),
            ("n_train", self.n_train),
            ("n_test", self.n_test),
        ] {
            if v == 0 {
                return Err(Error::config(
                    format!("{prefix}{k}"),
                    "must be at least 1 (got 0)",
                ));
            }
        }
        if !(self.noise_std >= 0.0 && self.noise_std.is_finite()) {
            return Err(Error::config(
                format!("{prefix}noise_std"),
                format!("must be ≥ 0 (got {})", self.noise_std),
            ));
        }
        Ok(())
    }

    /// (W* `[n_out, n_in]`, b* `[n_out]`).
    pub fn true_weights(&self) -> (Vec<f32>, Vec<f32>) {
        let (ni, no) = (self.n_in, self.n_out);
        match self.true_weights {
            TrueWeights::Zero => (vec![0.0; no * ni], vec![0.0; no]),
            TrueWeights::Random => {
                let mut rng = Rng::new(self.seed ^ 0x11EA_0000_0000_0003);
                let w = (0..no * ni).map(|_| rng.normal() as f32).collect();
                let b = (0..no).map(|_| rng.normal() as f32).collect();
                (w, b)
            }
        }
    }

    /// `n` examples from the stream `which` (0: train, 1: test).
    pub fn sample(&self, n: usize, which: u64) -> Batch {
        let (ni, no) = (self.n_in, self.n_out);
        let (w, b) = self.true_weights();
        let mut rng = Rng::new(self.seed ^ (which + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let x: Vec<f32> = (0..n * ni).map(|_| rng.normal() as f32).collect();
        let mut y = Vec::with_capacity(n * no);
        for xr in x.chunks_exact(ni) {
            for j in 0..no {
                let clean: f32 = w[j * ni..][..ni].iter().zip(xr).map(|(a, c)| a * c).sum();
                y.push(clean + b[j] + (self.noise_std * rng.normal()) as f32);
            }
        }
        Batch::Dense(DenseBatch {
            x: ndarray::Array2::from_shape_vec((n, ni), x).expect("shape"),
            y: Some(ndarray::Array2::from_shape_vec((n, no), y).expect("shape")),
        })
    }
}

/// `data:` of `task: regression`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionSection {
    pub n_in: usize,
    pub n_out: usize,
    pub n_train: usize,
    pub n_test: usize,
    /// σ of the Gaussian noise on y.
    pub noise_std: f64,
    /// `zero` or `random` (N(0, 1) from the data seed).
    pub true_weights: TrueWeights,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl super::TaskSection for RegressionSection {
    const NAME: &'static str = "regression";
    fn configure(self, seed: u64) -> Result<std::sync::Arc<dyn super::Task>> {
        let task = RegressionTask {
            n_in: self.n_in,
            n_out: self.n_out,
            n_train: self.n_train,
            n_test: self.n_test,
            noise_std: self.noise_std,
            true_weights: self.true_weights,
            seed: self.seed.unwrap_or(seed),
        };
        task.validate("data.")?;
        Ok(std::sync::Arc::new(task))
    }
}

impl super::Task for RegressionTask {
    fn io(&self) -> crate::batch::TaskIo {
        crate::batch::TaskIo::Vectors {
            n_in: self.n_in,
            n_out: self.n_out,
        }
    }
    fn fresh_samples(&self) -> bool {
        false
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn super::TaskData>> {
        Ok(Box::new(super::FixedSets::new(
            self.sample(self.n_train, 0),
            self.sample(self.n_test, 1),
            batch_size,
            self.seed,
        )))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        Some(super::TaskInfo::Regression(self.clone()))
    }
    fn footprint(&self, _: Option<usize>) -> super::Footprint {
        let rows = self.n_train as f64 + self.n_test as f64;
        super::Footprint {
            examples_at_once: (self.n_train.max(self.n_test)) as f64,
            data_bytes: rows * (self.n_in as f64 + self.n_out as f64) * 4.0,
        }
    }
    fn describe(&self) -> String {
        format!(
            "linear regression, {} inputs, {} outputs",
            self.n_in, self.n_out
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
