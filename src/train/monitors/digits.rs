//! Inside a digit adder over training: per answer digit, its loss on each sub-task (no carry, a
//! carry, a cascading carry) and where its probability goes relative to the naive digit (the pair's
//! sum mod 10, carry ignored), on `toylens analyze`'s fixed evaluation set.

use super::{transformer, transformer_config, Monitor, MonitorKind};
use crate::analysis::digits::{self, EvalSet, CASES};
use crate::config::Experiment;
use crate::error::Result;
use crate::models::Model;
use crate::tasks::digits::DigitsTask;

pub const KIND: MonitorKind = MonitorKind {
    name: "digits",
    about: "digit addition: each answer digit's loss per sub-task (no carry, carry, cascade) and its probability on the naive digit, +1, −1 and elsewhere, with and without a carry",
    build,
};

struct Digits {
    set: EvalSet,
}

fn build(exp: &Experiment) -> std::result::Result<Box<dyn Monitor>, String> {
    transformer_config(exp)?;
    let Some(task) = exp.task.downcast::<DigitsTask>() else {
        return Err(format!(
            "it needs a digit-addition task (data.task: digits), not `{}`",
            exp.config.task_name()
        ));
    };
    Ok(Box::new(Digits {
        set: digits::eval_set(task),
    }))
}

const OFFSETS: [&str; 4] = ["naive", "plus1", "minus1", "other"];

impl Monitor for Digits {
    fn columns(&self) -> Vec<String> {
        let mut c = Vec::new();
        for place in &self.set.places {
            for case in CASES {
                let case = serde_json::to_value(case).expect("case name");
                c.push(format!(
                    "digits_d{place}_loss_{}",
                    case.as_str().expect("a string")
                ));
            }
            for carry in ["no_carry", "carry"] {
                for o in OFFSETS {
                    c.push(format!("digits_d{place}_{carry}_p_{o}"));
                }
            }
        }
        c
    }

    /// NaN where a digit has no example of the kind (no carry reaches the units digit).
    fn measure(&mut self, model: &dyn Model) -> Result<Vec<f64>> {
        let stats = digits::measure(transformer(model)?, &self.set)?;
        let mut v = Vec::new();
        for d in stats {
            v.extend(d.cases.iter().map(|c| c.loss));
            v.extend(d.offsets_no_carry);
            v.extend(d.offsets_carry);
        }
        Ok(v)
    }
}
