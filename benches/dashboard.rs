//! Benchmark: the dashboard builder's tokens/s next to a bare harvest (the LM forward to the
//! hooked layer, hook_z read back) of the same windows on the same model and device, and
//! the process's peak memory.
//!
//! `cargo bench --bench dashboard -- [--model demo|gpt2-random] [--sae DIR] [--tokens N]
//!  [--features-per-head M] [--device cpu|wgpu]`
//!
//! `demo` is the offline SmolLM2-135M on Shakespeare (layer 24; `--sae runs/latest/sae` for
//! the main job's SAE, else a random one); `gpt2-random` is a random-weight gpt2-small
//! (layer 4, random token windows) with the seed's SAE shape, 12 heads x 2048 features.

mod common;

use common::arg;
use std::time::Instant;

use attn_saes::dashboard::{self, BuildInputs, BuildOptions};
use attn_saes::device::{DeviceChoice, select};
use attn_saes::lm::load::{gpt2_small_config, random};
use attn_saes::lm::{HookRequest, LoadedModel, ZConvention};
use attn_saes::rng::Rng;
use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

/// Peak resident memory of this process so far (Linux), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A random ReLU SAE with encoder biases set so that about `density` of features fire.
fn random_sae(h: usize, d: usize, m: usize, device: &Device) -> BlockDiagSae {
    let mut rng = Rng::new(1);
    let config = SaeConfig {
        n_heads: h,
        d_head: d,
        features_per_head: m,
        architecture: Architecture::Relu,
    };
    let mut sae = BlockDiagSae::init(config, &mut rng, device);
    // Unit-norm encoder columns on inputs of norm ~sqrt(d): pre ~ N(0, 1); b_enc = -2
    // leaves ~2% of features active, like a trained SAE.
    sae.b_enc = Tensor::full([h, m], -2.0, device);
    let w: Vec<f32> = (0..h * d * m)
        .map(|_| rng.normal() as f32 / (d as f32).sqrt())
        .collect();
    sae.w_enc = Tensor::from_data(TensorData::new(w, [h, d, m]), device);
    sae
}

fn main() -> anyhow::Result<()> {
    // As the binary does.
    attn_saes::device::keep_freed_host_memory();
    let which = arg("--model").unwrap_or_else(|| "demo".into());
    let tokens: usize = arg("--tokens")
        .and_then(|s| s.parse().ok())
        .unwrap_or(16_384);
    let choice = match arg("--device").as_deref() {
        Some("wgpu") => DeviceChoice::Wgpu,
        _ => DeviceChoice::Cpu,
    };
    let selected = select(choice)?;
    println!("{}", selected.description);
    let device = selected.device;
    let t = 128;
    let n_windows = tokens.div_ceil(t);
    let (loaded, layer, windows) = if which == "demo" {
        let cache = attn_saes::assets::cache_dir();
        let model = cache.join(attn_saes::assets::DEMO_MODEL_FILE);
        let loaded = attn_saes::lm::load_model(&model.display().to_string(), &device)?;
        let corpus = attn_saes::data::corpus::Corpus::open(
            &cache.join(attn_saes::assets::DEMO_CORPUS_DIR),
            None,
        )?;
        // Past the first 2000 windows (past what the main job trains on).
        let skip = 2000;
        let all =
            dashboard::windows_from(&corpus, &loaded, t, Default::default(), skip + n_windows)?;
        let windows = all[skip.min(all.len())..].to_vec();
        (loaded, attn_saes::assets::DEMO_HOOK_LAYER, windows)
    } else {
        let transformer = random(gpt2_small_config(), 0, &device);
        let tok_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gpt2_tiny/tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let mut rng = Rng::new(3);
        let windows = (0..n_windows)
            .map(|_| {
                let mut w = vec![50256u32];
                w.extend((1..t).map(|_| rng.below(50257) as u32));
                w
            })
            .collect();
        let loaded = LoadedModel {
            transformer,
            tokenizer,
            source: "random gpt2-small".into(),
        };
        (loaded, 4, windows)
    };
    let mc = loaded.transformer.config.clone();
    let m: usize = arg("--features-per-head")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if which == "demo" { 8 * mc.d_head } else { 2048 });
    let n_tokens = windows.len() * t;
    println!(
        "model={which} layer={layer} heads={} d_head={} features_per_head={m} tokens={n_tokens}",
        mc.n_heads, mc.d_head
    );

    // Bare harvest: the same chunks, hook_z only, read back to the host. It also gives the
    // mean norm of each head's hook_z, which a random SAE's input scale needs.
    let model = &loaded.transformer;
    let (h, d) = (mc.n_heads, mc.d_head);
    let mut norm_sums = vec![0f64; h];
    let start = Instant::now();
    for chunk in windows.chunks(8) {
        let z = model
            .run(model.tokens(chunk)?, &HookRequest::hook_z(&[layer]), None)?
            .hook_z
            .remove(&layer)
            .ok_or_else(|| anyhow::anyhow!("no hook_z"))?;
        for (i, head) in attn_saes::files::host_vec(z)?.chunks_exact(d).enumerate() {
            norm_sums[i % h] += head.iter().map(|v| v * v).sum::<f32>().sqrt() as f64;
        }
    }
    let harvest_s = start.elapsed().as_secs_f64();
    let sae = match arg("--sae") {
        Some(dir) => BlockDiagSae::load(std::path::Path::new(&dir), &device)?,
        None => {
            let mut sae = random_sae(h, d, m, &device);
            // Inputs of norm sqrt(d_head) per head, as with per-head normalisation.
            sae.input_scale = norm_sums
                .iter()
                .map(|s| (d as f64).sqrt() as f32 / (s / n_tokens as f64).max(1e-12) as f32)
                .collect();
            sae
        }
    };
    println!(
        "bare_harvest tokens_per_s={:.1} seconds={harvest_s:.2} peak_rss_mb={:.0}",
        n_tokens as f64 / harvest_s,
        peak_rss_mb()
    );

    let inputs = BuildInputs {
        loaded: &loaded,
        sae: &sae,
        layer,
        z_convention: ZConvention::TransformerLens,
        windows,
        windows_from: "benchmark".into(),
        sae_source: "benchmark".into(),
        run_config: None,
        history: Default::default(),
        run_heads: None,
        ce_scores: None,
        built_from: None,
    };
    let mut phases: Vec<(String, Instant)> = Vec::new();
    let start = Instant::now();
    let d = dashboard::build::build(&inputs, &BuildOptions::default(), &mut |p, _, _| {
        if phases.last().is_none_or(|x| x.0 != p) {
            phases.push((p.to_string(), Instant::now()));
        }
    })?;
    let build_s = start.elapsed().as_secs_f64();
    for w in phases.windows(2) {
        println!(
            "  phase '{}': {:.2} s",
            w[0].0,
            (w[1].1 - w[0].1).as_secs_f64()
        );
    }
    if let Some(last) = phases.last() {
        println!(
            "  phase '{}': {:.2} s",
            last.0,
            last.1.elapsed().as_secs_f64()
        );
    }
    let bytes = d.to_bytes()?.len();
    let l0: f64 = d.meta.heads.iter().map(|s| s.l0).sum();
    println!(
        "dashboard_build tokens_per_s={:.1} seconds={build_s:.2} overhead_vs_harvest={:.1}% \
         file_mb={:.1} peak_rss_mb={:.0} l0_total={l0:.1} density={:.4}",
        n_tokens as f64 / build_s,
        100.0 * (build_s / harvest_s - 1.0),
        bytes as f64 / 1e6,
        peak_rss_mb(),
        l0 / (h * m) as f64
    );
    Ok(())
}
