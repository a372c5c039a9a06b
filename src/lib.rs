//! attn-saes: block-diagonal sparse autoencoders on per-head attention outputs (`hook_z`).
//!
//! Pipeline: corpus -> tokens -> LM forward with hooks -> activation store -> SAE trainer
//! -> checkpoints + metrics -> dashboards -> viewer.
//!
//! The viewer's modules ([`app`]'s curves and features, [`dashboard::format`], [`run_log`])
//! build for wasm32 too; the rest (burn, the LM, training, files, the CLI's helpers) is
//! native only. This is the one place that says which (Cargo.toml splits the dependencies
//! the same way).

pub mod app;
pub mod dashboard;
pub mod run_log;
#[cfg(target_arch = "wasm32")]
pub mod web;

#[cfg(not(target_arch = "wasm32"))]
pub mod assets;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli_train;
#[cfg(not(target_arch = "wasm32"))]
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod device;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod live;
#[cfg(not(target_arch = "wasm32"))]
pub mod lm;
#[cfg(not(target_arch = "wasm32"))]
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod sae;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
