//! Benchmark: block-diagonal SAE training steps/s (forward, loss, backward, clipped Adam)
//! for the seed's gpt2 config `B=4096, H=12, d_head=64, m=2048` and a smaller one, on the
//! CPU backend and on wgpu when an adapter exists. Compare with `benches/torch_sae_step.py`
//! (PyTorch bmm and the seed's dense `torch.block_diag` method).
//!
//! On the CPU the fused step (`src/train/fused_cpu.rs`, the trainer's default there) and
//! burn's autodiff are both timed; on wgpu the WGSL step (`src/train/wgsl.rs`, the default
//! there) and autodiff, with the kernel launches per step each path makes (counted by
//! cubecl's launch observer). Each step's loss is read back before the clock stops, as
//! PyTorch's benchmark does (`steps_per_s`); `steps_per_s_read_every_10` reads it every tenth
//! step only, as training does with its metrics, so that the device never waits for the host
//! between steps. `--torch` runs `benches/torch_sae_step.py` with the same
//! settings afterwards (`--device cuda` there when wgpu is timed), so the figures come out
//! side by side from one command. `ATTN_SAES_SPARSE_BELOW=0` keeps the WGSL step on its
//! dense path (1: on the sparse one whenever its lists fit); `ATTN_SAES_WGSL_ENCODER=burn`
//! has burn's matmul make its encoder product; `ATTN_SAES_WGSL_TILES=small` runs its matmuls
//! in the earlier 64 x 64 tiles. `--b-enc V` starts every encoder bias at `V`: 0 fires
//! about half the features (a fresh SAE); -0.2 fires about 2% (a trained one).
//!
//! Training moves the density (on this fixed random batch it rises); `--lr 0` holds it.
//!
//! `cargo bench --bench sae_step [-- --device cpu|wgpu|all] [--quick] [--seconds S] [--b-enc V] [--lr LR] [--shape B,H,d,m] [--topk K | --batchtopk K | --jumprelu] [--aux-dead F] [--no-autodiff] [--torch]`

mod common;

use common::{Launches, arg, flag};
use std::time::Instant;

use attn_saes::device::{DeviceChoice, select};
use attn_saes::rng::Rng;
use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig};
use attn_saes::train::SaeOptimizer;
use burn::prelude::*;
use burn::tensor::Distribution;

fn main() -> anyhow::Result<()> {
    // As the binary does.
    attn_saes::device::keep_freed_host_memory();
    let which = arg("--device").unwrap_or_else(|| "all".into());
    let quick = flag("--quick");
    let no_autodiff = flag("--no-autodiff");
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let b_enc: f32 = arg("--b-enc").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // `--lr 0` keeps the SAE (and so its density) fixed while every step still runs.
    let lr: f64 = arg("--lr").and_then(|s| s.parse().ok()).unwrap_or(5e-5);
    let mut configs = vec![(1024usize, 12usize, 64usize, 512usize)];
    if !quick {
        configs.push((4096, 12, 64, 2048));
    }
    // `--topk K` times a TopK SAE (MSE loss, K features per head and token) instead.
    // `--jumprelu` a JumpReLU SAE (thresholds start at 0.001, bandwidth 0.001).
    // `--batchtopk K` a BatchTopK SAE.
    let architecture = match (arg("--topk"), arg("--batchtopk")) {
        (Some(k), _) => Architecture::TopK { k: k.parse()? },
        (None, Some(k)) => Architecture::BatchTopK { k: k.parse()? },
        _ if flag("--jumprelu") => Architecture::JumpRelu { bandwidth: 0.001 },
        _ => Architecture::Relu,
    };
    // `--aux-dead F` adds the AuxK term (k = d / 2, coefficient 1/32) with every feature
    // whose index within its head is below F x m marked dead.
    let aux_dead: Option<f64> = arg("--aux-dead").map(|v| v.parse()).transpose()?;
    // `--shape B,H,d,m` times that shape only (e.g. a dense SAE: `4096,1,768,24576`).
    if let Some(shape) = arg("--shape") {
        let v: Vec<usize> = shape
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(v.len() == 4, "--shape wants B,H,d,m");
        configs = vec![(v[0], v[1], v[2], v[3])];
    }
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
    for (name, selected) in &devices {
        println!("{}", selected.description);
        let device = &selected.device;
        for &(b, h, d, m) in &configs {
            let config = SaeConfig {
                n_heads: h,
                d_head: d,
                features_per_head: m,
                architecture,
            };
            // The device's own step (fused CPU or WGSL), then autodiff (unless
            // `--no-autodiff`, for comparing knobs of the device's step alone).
            let paths: &[bool] = if no_autodiff { &[true] } else { &[true, false] };
            for &fast in paths {
                let mut sae = BlockDiagSae::init(config.clone(), &mut Rng::new(0), device);
                sae.b_enc = sae.b_enc.clone().add_scalar(b_enc);
                let mut opt = if fast {
                    SaeOptimizer::new(&sae)
                } else {
                    SaeOptimizer::with_autodiff(&sae)
                };
                let path = match opt.path() {
                    "fused CPU" => "fused",
                    "WGSL" => "wgsl",
                    other => other,
                };
                let x = Tensor::<3>::random([h, b, d], Distribution::Normal(0.0, 1.0), device);
                let mut density = 0.0;
                let dead: Vec<bool> = (0..h * m)
                    .map(|i| aux_dead.is_some_and(|f| ((i % m) as f64) < f * m as f64))
                    .collect();
                let aux = aux_dead.map(|_| attn_saes::train::fused_cpu::AuxK {
                    dead: &dead,
                    k: d / 2,
                    coef: 1.0 / 32.0,
                });
                let mut fired = None;
                // One step, and with `read` its loss read back, which finishes it.
                let mut step = |read: bool| {
                    // The seed's loss and settings, as in benches/torch_sae_step.py.
                    let out = opt.step_with_aux(
                        &mut sae,
                        x.clone(),
                        2.0,
                        lr,
                        (0.9, 0.999),
                        1.0,
                        aux.as_ref(),
                    );
                    fired = Some(out.fired);
                    if read {
                        out.total.into_scalar::<f32>();
                    }
                };
                step(true);
                step(true);
                if std::env::var("ATTN_SAES_PROFILE_LAUNCHES").as_deref() == Ok("1") {
                    // One step with each launch timed on its own, in issue order.
                    let times = Launches::timed_in(|| step(true));
                    for (i, (kernel, ms)) in times.iter().enumerate() {
                        println!("  launch {i:>3} {kernel} {ms:.3} ms");
                    }
                }
                // Each step's loss read back before the clock stops, as PyTorch's `.item()`
                // in benches/torch_sae_step.py.
                let start = Instant::now();
                let mut n = 0;
                let launched = Launches::count_in(|| {
                    while n < 3 || start.elapsed().as_secs_f64() < seconds {
                        step(true);
                        n += 1;
                    }
                });
                let secs = start.elapsed().as_secs_f64();
                // Then every tenth step's only, as training reads its metrics (`log_every`
                // 10): the device is kept fed while the host issues the next steps.
                let start = Instant::now();
                let mut n10 = 0;
                while n10 == 0 || start.elapsed().as_secs_f64() < seconds {
                    for i in 1..=10 {
                        step(i == 10);
                    }
                    n10 += 10;
                }
                let secs10 = start.elapsed().as_secs_f64();
                // The last step's firing features.
                if let Some(fired) = fired.take() {
                    density = fired.sum().into_scalar::<f32>() as f64 / (b * h * m) as f64;
                }
                // Kernel launches per step (the CPU backend launches none).
                let per_step = launched as f64 / n as f64;
                println!(
                    "burn_sae_step device={name} path={path} arch={} B={b} H={h} d={d} m={m} b_enc={b_enc} lr={lr} \
                     aux_dead={aux_dead:?} density={density:.3} steps_per_s={:.3} ms_per_step={:.1} \
                     launches_per_step={per_step:.1} steps_per_s_read_every_10={:.3}",
                    architecture.name(),
                    n as f64 / secs,
                    secs * 1e3 / n as f64,
                    n10 as f64 / secs10
                );
            }
        }
    }
    if flag("--torch") {
        // The PyTorch reference with the same settings, on CUDA when wgpu was timed.
        let torch_device = if which == "cpu" { "cpu" } else { "cuda" };
        // From the repo root (where a copied binary runs, on a lent GPU machine), else here.
        let script = [
            "benches/torch_sae_step.py",
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_sae_step.py"),
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("benches/torch_sae_step.py");
        let mut cmd = std::process::Command::new(
            std::env::var("ATTN_SAES_PYTHON").unwrap_or_else(|_| "python3".into()),
        );
        cmd.arg(script).args(["--device", torch_device]);
        cmd.args(["--seconds", &seconds.to_string()]);
        cmd.args(["--b-enc", &b_enc.to_string(), "--lr", &lr.to_string()]);
        if quick {
            cmd.arg("--quick");
        }
        let status = cmd.status()?;
        anyhow::ensure!(status.success(), "{script} failed: {status}");
    }
    Ok(())
}
