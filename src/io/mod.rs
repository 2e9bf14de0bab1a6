//! Reading and writing files: checkpoints (safetensors), PyTorch `.pth` imports, and the layout of
//! a run directory.

pub mod checkpoint;
pub mod load;
pub mod pickle;
pub mod pth;
pub mod run;
pub mod trace;

pub use load::{load_any, Loaded};
