//! attn-saes: block-diagonal sparse autoencoders on per-head attention outputs (`hook_z`).
//!
//! Pipeline: corpus -> tokens -> LM forward with hooks -> activation store -> SAE trainer
//! -> checkpoints + metrics -> dashboards -> viewer.
//!
//! The viewer's modules ([`app`]'s curves, features and text views, [`dashboard::format`],
//! [`run_log`], [`live`]'s results) build for wasm32 too; the rest (burn, the LM, training,
//! files, the CLI's helpers) is native only, except that the `web-live` feature builds the
//! LM, the SAE and the live analysis for wasm32 as the page's second bundle (`web_live`).
//! This is the one place that says which (Cargo.toml splits the dependencies the same way).

#[cfg(not(all(target_arch = "wasm32", feature = "web-live")))]
pub mod app;
pub mod dashboard;
pub mod live;
pub mod run_log;
pub mod vfs;
#[cfg(all(target_arch = "wasm32", not(feature = "web-live")))]
pub mod web;
#[cfg(all(target_arch = "wasm32", feature = "web-live"))]
pub mod web_live;

// The LM and SAE: native, and in the page's inference bundle.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub mod files;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub mod lm;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub mod rng;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub mod sae;

#[cfg(not(target_arch = "wasm32"))]
pub mod assets;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli_train;
#[cfg(not(target_arch = "wasm32"))]
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod device;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
