//! The compute engine: explicit forward and backward for each layer, on `ndarray` views and flat
//! `f32` slices. Matmuls go through `gemm`; other hot loops are compiled for the best SIMD level of
//! the CPU at run time (see [`simd`]). No autograd: each layer's backward sits next to its forward and
//! is checked against finite differences in the tests.

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod fold;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod rng;
pub mod simd;
pub mod threads;
