//! Measurement: how much each layer's `hook_z` matters to the model's loss, to choose the
//! layer an SAE is trained on. For every layer, the CE loss with that layer's hook_z
//! zero-ablated (all heads, TransformerLens convention, as `evaluate` ablates) minus the
//! clean CE loss, as a mean over context windows with its standard deviation and standard
//! error. An SAE's CE loss score `(L_zero - L_sae) / (L_zero - L_clean)` only means something
//! where this difference is well above its standard error.
//!
//! `cargo bench --bench layer_ablation -- [--windows N] [--skip S] [--model M --dataset D]`
//! (default: the offline demo, SmolLM2-135M on Shakespeare, 32 windows of 128 tokens
//! after the first 2000, i.e. past what the main job trains on).

mod common;

use attn_saes::device::{DeviceChoice, select};
use attn_saes::lm::{HeadSelection, Splice, ZConvention};
use attn_saes::train::eval::window_ce;
use common::arg;

fn main() -> anyhow::Result<()> {
    // As the binary does.
    attn_saes::device::keep_freed_host_memory();
    let n: usize = arg("--windows").and_then(|s| s.parse().ok()).unwrap_or(32);
    let skip: usize = arg("--skip").and_then(|s| s.parse().ok()).unwrap_or(2000);
    let cache = attn_saes::assets::cache_dir();
    let model = arg("--model").unwrap_or_else(|| {
        cache
            .join(attn_saes::assets::DEMO_MODEL_FILE)
            .display()
            .to_string()
    });
    let dataset = arg("--dataset")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache.join(attn_saes::assets::DEMO_CORPUS_DIR));
    let selected = select(DeviceChoice::Cpu)?;
    let loaded = attn_saes::lm::load_model(&model, &selected.device)?;
    let corpus = attn_saes::data::corpus::Corpus::open(&dataset, None)?;
    let all =
        attn_saes::dashboard::windows_from(&corpus, &loaded, 128, Default::default(), skip + n)?;
    let windows = &all[skip.min(all.len())..];
    let m = &loaded.transformer;
    let conv = ZConvention::TransformerLens;
    // Mean CE per window, `[n]`, in forward passes of 8 windows.
    let ce = |splice: Option<&Splice>| -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for chunk in windows.chunks(8) {
            out.extend(window_ce(m, &m.tokens(chunk)?, conv, splice)?);
        }
        Ok(out)
    };
    let clean = ce(None)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "model={} windows={} tokens_per_window=128 clean_ce={:.4}",
        m.config.name,
        windows.len(),
        mean(&clean)
    );
    for layer in 0..m.config.n_layers {
        let zero = ce(Some(&Splice::zero_ablate(layer, HeadSelection::All)))?;
        let diff: Vec<f64> = zero.iter().zip(&clean).map(|(z, c)| z - c).collect();
        let mu = mean(&diff);
        let sd = (diff.iter().map(|d| (d - mu).powi(2)).sum::<f64>()
            / (diff.len().max(2) - 1) as f64)
            .sqrt();
        println!(
            "layer {layer:>2}: zero-ablation CE increase {mu:.4} nats (sd over windows {sd:.4}, \
             s.e. {:.4})",
            sd / (diff.len() as f64).sqrt()
        );
    }
    Ok(())
}
