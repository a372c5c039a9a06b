//! Probe: could the SAE step's five products (`shaders/matmul.wgsl`, f32 multiply-adds on
//! the GPU's ordinary cores) run on its tensor cores through wgpu instead? wgpu 30 reaches
//! them through WGSL's cooperative matrices (`coop_mat16x16`, the experimental
//! EXPERIMENTAL_COOPERATIVE_MATRIX feature; VK_KHR_cooperative_matrix on Vulkan), which
//! burn's device asks for whenever the adapter has them. This prints what the adapter
//! offers and, where it has 16 x 16 x 16 products of f16 summed in f32, runs a batched
//! product at the step's three shapes (the encoder's `X W_enc`, the decoder's `F W_dec`,
//! the backward's `X^T dP`; the seed's SAE, 12 heads), each in a few blockings, checks
//! sampled outputs against sums in f64 on the host (of the same f16 operands), and times
//! it: milliseconds a product and TFLOP/s, to set beside the step's own launches
//! (`ATTN_SAES_PROFILE_LAUNCHES=1 cargo bench --bench sae_step`, same shapes) and PyTorch's.
//!
//! The kernels are `benches/coop/kernel.rs`'s, validated and translated to SPIR-V by naga in
//! `tests/wgsl_valid.rs` and checked against the host at small shapes in
//! `tests/wgsl_step.rs`. lavapipe (CI's adapter) has no cooperative matrices, so there
//! only the scalar kernel (`--scalar`) runs; the others run where a GPU has them
//! (`scripts/gpu-check.sh` runs both this and that test there).
//!
//! `cargo bench --bench coop_probe [-- --iters N] [--scalar] [--heads N]`

mod common;
#[path = "coop/kernel.rs"]
mod kernel;

use kernel::{CoopShape, Kernel, Operands};

fn main() -> anyhow::Result<()> {
    let iters: u32 = common::arg("--iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // `--scalar`: the scalar kernel alone, which needs no cooperative matrices (the
    // harness on any adapter with f16 shaders); `--heads N` (default 12) to make it small.
    let scalar_only = common::flag("--scalar");
    let gpu = kernel::open().map_err(anyhow::Error::msg)?;
    println!("{}", gpu.description);
    if !gpu.coop && !scalar_only {
        println!(
            "coop_probe: no 16 x 16 x 16 f16 -> f32 cooperative matrices here; nothing to time"
        );
        return Ok(());
    }
    let (device, queue) = (&gpu.device, &gpu.queue);
    let heads = common::arg("--heads")
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    // (name, M, N, K, A stored [K, M]): the seed's SAE at B = 4096, d_head = 64, m = 2048.
    let products = [
        ("encoder X W_enc", 4096, 2048, 64, false),
        ("decoder F W_dec", 4096, 64, 2048, false),
        ("backward X^T dP", 64, 2048, 4096, true),
    ];
    for (name, m, n, k, a_col_major) in products {
        let operands = Operands::new(device, heads, m, n, k, a_col_major);
        for shape in CoopShape::blockings(heads, (m, n, k), a_col_major, gpu.subgroup) {
            let (tm, tn, kernel) = (shape.tm, shape.tn, shape.kernel);
            if scalar_only && kernel != Kernel::Scalar {
                continue;
            }
            let label = format!(
                "coop_probe product={name:?} H={heads} M={m} N={n} K={k} a={} kernel={} block={tm}x{tn}",
                if a_col_major { "[K,M]" } else { "[M,K]" },
                format!("{kernel:?}").to_lowercase()
            );
            match operands.run(device, queue, shape, iters) {
                Ok(t) => println!(
                    "{label} ms={:.3} tflops={:.1} max_rel_err={:.2e} compile_ms={:.0}",
                    t.ms,
                    2.0 * (heads * m * n * k) as f64 / t.ms / 1e9,
                    t.max_rel_err,
                    t.compile_ms
                ),
                Err(refusal) => println!("{label} refused: {refusal}"),
            }
        }
    }
    Ok(())
}
