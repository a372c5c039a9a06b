//! Benchmark: tokens/s of a gpt2-small-sized forward pass (random weights, batch 8 x 128)
//! to layer 4 (hook_z only, early stop) and through the full model with logits, on the CPU
//! backend and on wgpu when an adapter exists. Compare with `benches/torch_forward.py`.
//!
//! On wgpu it also counts the kernel launches a batch makes (cubecl's launch observer), and
//! with `ATTN_SAES_PROFILE_LAUNCHES=1` times one batch's launches one by one, summed by
//! kernel.
//!
//! `cargo bench --bench forward [-- --device cpu|wgpu|all] [--iters N] [--batch B] [--pos P]
//! [--vocab N] [--exact-gelu] [--malloc-defaults]`
//!
//! `--exact-gelu` gives the MLP the erf GELU (gelu-Nl, Pythia, BERT) instead of gpt2's
//! `gelu_new`.

mod common;

use common::{Launches, arg, flag};
use std::time::Instant;

use attn_saes::device::{DeviceChoice, select};
use attn_saes::lm::HookRequest;
use attn_saes::lm::load::{gpt2_small_config, random};

fn main() -> anyhow::Result<()> {
    // As the binary does, unless `--malloc-defaults` asks for glibc's defaults (to compare).
    if !flag("--malloc-defaults") {
        attn_saes::device::keep_freed_host_memory();
    }
    let which = arg("--device").unwrap_or_else(|| "all".into());
    let iters: usize = arg("--iters").and_then(|s| s.parse().ok()).unwrap_or(5);
    let batch: usize = arg("--batch").and_then(|s| s.parse().ok()).unwrap_or(8);
    let pos: usize = arg("--pos").and_then(|s| s.parse().ok()).unwrap_or(128);
    // `--vocab N` shrinks the vocabulary (lavapipe cannot allocate gpt2's 154 MB embedding).
    let mut config = gpt2_small_config();
    if let Some(v) = arg("--vocab").and_then(|s| s.parse().ok()) {
        config.d_vocab = v;
    }
    if flag("--exact-gelu") {
        config.activation = attn_saes::lm::Activation::Gelu;
        config.name = "gpt2-small shape with exact GELU (random weights)".into();
    }
    let vocab = config.d_vocab;
    let mut devices = Vec::new();
    if which == "cpu" || which == "all" {
        devices.push(("cpu", select(DeviceChoice::Cpu)?));
    }
    if which == "wgpu" || which == "all" {
        match select(DeviceChoice::Wgpu) {
            Ok(d) => devices.push(("wgpu", d)),
            Err(e) => println!("skipping wgpu: {e}"),
        }
    }
    for (name, selected) in devices {
        println!("{}", selected.description);
        let device = selected.device;
        let model = random(config.clone(), 0, &device);
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|b| {
                (0..pos)
                    .map(|p| ((b * 7919 + p * 104_729) % vocab) as u32)
                    .collect()
            })
            .collect();
        let tokens = model.tokens(&ids)?;
        for (label, hooks) in [
            ("to_layer_4", HookRequest::hook_z(&[4])),
            ("full_logits", HookRequest::logits()),
        ] {
            let run = || -> anyhow::Result<()> {
                let cache = model.run(tokens.clone(), &hooks, None)?;
                // Read back a scalar so the work is done before the clock stops.
                let s = match cache.logits {
                    Some(l) => l.sum(),
                    None => cache.hook_z[&4].clone().sum(),
                };
                let _ = s.into_scalar::<f32>();
                Ok(())
            };
            run()?; // warm-up (kernel compilation, autotune)
            // Kernel launches per batch (the CPU backend launches none).
            let launches = Launches::count_in(|| run().unwrap());
            if name == "wgpu" && std::env::var("ATTN_SAES_PROFILE_LAUNCHES").as_deref() == Ok("1") {
                // One batch with each launch timed on its own, summed by kernel, largest first.
                let mut by_kernel: Vec<(String, usize, f64)> = Vec::new();
                for (kernel, ms) in Launches::timed_in(|| run().unwrap()) {
                    match by_kernel.iter_mut().find(|k| k.0 == kernel) {
                        Some(k) => (k.1, k.2) = (k.1 + 1, k.2 + ms),
                        None => by_kernel.push((kernel, 1, ms)),
                    }
                }
                by_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
                for (kernel, n, ms) in by_kernel {
                    println!("  {label} {ms:>9.3} ms in {n:>4} launches of {kernel}");
                }
            }
            let start = Instant::now();
            for _ in 0..iters {
                run()?;
            }
            let secs = start.elapsed().as_secs_f64() / iters as f64;
            println!(
                "burn_forward device={name} {label} batch={batch} pos={pos} vocab={vocab} tokens_per_s={:.1} ms_per_batch={:.1} launches_per_batch={launches}",
                (batch * pos) as f64 / secs,
                secs * 1e3
            );
        }
    }
    Ok(())
}
