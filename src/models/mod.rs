//! Models. Each keeps its parameters in one flat `f32` buffer described by a [`transformer::Layout`]
//! (names and shapes as TransformerLens has them), so optimizers, checkpoints and gradient checks
//! treat every model the same way.

pub mod transformer;
