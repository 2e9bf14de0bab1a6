//! Reading and writing files: checkpoints (safetensors) and PyTorch `.pth` imports.

pub mod checkpoint;
pub mod load;
pub mod pickle;
pub mod pth;
