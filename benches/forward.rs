//! Benchmark: tokens/s of a gpt2-small-sized forward pass (random weights, batch 8 x 128)
//! to layer 4 (hook_z only, early stop) and through the full model with logits, on the CPU
//! backend and on wgpu when an adapter exists. Compare with `benches/torch_forward.py`.
//!
//! `cargo bench --bench forward [-- --device cpu|wgpu|all] [--iters N] [--batch B] [--pos P]
//! [--malloc-defaults]`

mod common;

use common::{arg, flag};
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
        let model = random(gpt2_small_config(), 0, &device);
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|b| {
                (0..pos)
                    .map(|p| ((b * 7919 + p * 104_729) % 50257) as u32)
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
            let start = Instant::now();
            for _ in 0..iters {
                run()?;
            }
            let secs = start.elapsed().as_secs_f64() / iters as f64;
            println!(
                "burn_forward device={name} {label} batch={batch} pos={pos} tokens_per_s={:.1} ms_per_batch={:.1}",
                (batch * pos) as f64 / secs,
                secs * 1e3
            );
        }
    }
    Ok(())
}
