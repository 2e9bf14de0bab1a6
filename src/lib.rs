//! toylens: mechanistic and developmental interpretability on small models and toy tasks.
//!
//! The library does the work; the `toylens` binary parses arguments and calls it.

pub mod analysis;
pub mod batch;
pub mod bench;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod hooks;
pub mod io;
pub mod models;
pub mod pyrandom;
pub mod report;
pub mod sweep;
pub mod tasks;
pub mod train;

pub use batch::{Batch, LossStats, TokenBatch};
pub use error::{Error, Result};
pub use models::transformer::{Transformer, TransformerConfig, Workspace};
