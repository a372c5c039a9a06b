//! attn-saes: block-diagonal sparse autoencoders on per-head attention outputs (`hook_z`).
//!
//! Pipeline: corpus -> tokens -> LM forward with hooks -> activation store -> SAE trainer
//! -> checkpoints + metrics -> dashboards -> viewer.

pub mod app;
pub mod assets;
pub mod cli_train;
pub mod dashboard;
pub mod data;
pub mod device;
pub mod files;
pub mod lm;
pub mod rng;
pub mod run_log;
pub mod sae;
pub mod train;
