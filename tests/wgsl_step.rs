//! The WGSL training step (src/train/wgsl.rs, shaders/) against the fused CPU step, which
//! is itself checked against burn's autodiff (src/train/fused_cpu.rs), and, for the
//! unclipped cases, the gradients against burn's autodiff directly: loss terms and
//! batch sums after one step, Adam's moments after one and two steps (after one step
//! without clipping, the first moment is (1 - b1) times the gradient), and the parameters
//! after two steps against Adam applied on the host to the kernel's own moments. Every
//! activation, d_head 16 / 64 / 128, feature and batch counts that are not multiples of
//! the workgroup tiles. On a wgpu adapter (lavapipe in CI); a failed launch leaves values
//! that do not match, so it fails here.

mod common;

use attn_saes::rng::Rng;
use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig};
use attn_saes::train::fused_cpu::{
    Activation, AuxK, HostAdam, HostParams, autodiff_reference, clip_and_adam, loss_and_grads,
    loss_and_grads_aux,
};
use attn_saes::train::wgsl::{self, StepSpec, StepState};
use burn::prelude::*;
use burn::tensor::TensorData;

const LR: f64 = 1e-3;
const BETAS: (f64, f64) = (0.9, 0.999);

/// `got` within `tol` times the largest magnitude of `want`.
fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
    let (mut err, mut at) = (0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if (g - w).abs() > err || g.is_nan() {
            (err, at) = ((g - w).abs(), i);
        }
    }
    assert!(
        err <= tol * scale,
        "{name}: max error {err} at {at} ({} vs {}), scale {scale}",
        got[at],
        want[at]
    );
}

fn read<const D: usize>(t: FloatTensorD) -> Vec<f32> {
    attn_saes::files::host_vec(Tensor::<D>::from_dispatch(t)).unwrap()
}

type FloatTensorD = burn::backend::tensor::FloatTensor<burn::backend::Dispatch>;

/// A random SAE whose biases make some of the features fire, and a batch `x` [H, B, d].
fn setup(arch: Architecture, h: usize, d: usize, m: usize, b: usize) -> (HostParams, Vec<f32>) {
    let mut rng = Rng::new(11);
    let cfg = SaeConfig {
        n_heads: h,
        d_head: d,
        features_per_head: m,
        architecture: arch,
    };
    let sae = BlockDiagSae::init(cfg, &mut rng, &Device::flex());
    let mut p = HostParams::from_sae(&sae).unwrap();
    p.b_enc = (0..h * m)
        .map(|_| -0.1 + 0.05 * rng.normal() as f32)
        .collect();
    p.b_dec = (0..h * d).map(|_| 0.1 * rng.normal() as f32).collect();
    if !p.log_threshold.is_empty() {
        // Thresholds around 0.2, where pre-activations often come near.
        p.log_threshold = (0..h * m)
            .map(|_| (0.2 + 0.05 * rng.normal().abs()).ln() as f32)
            .collect();
    }
    let x = (0..h * b * d).map(|_| 3.0 * rng.normal() as f32).collect();
    (p, x)
}

/// The gradients of burn's autodiff on the CPU backend for the same loss (coefficient
/// 0.7), in `HostParams` layout.
fn autodiff_grads(p: &HostParams, arch: Architecture, x: &[f32], b: usize) -> HostParams {
    let device = Device::flex();
    let (h, d, m) = (p.n_heads, p.d_head, p.m);
    let cfg = SaeConfig {
        n_heads: h,
        d_head: d,
        features_per_head: m,
        architecture: arch,
    };
    let put = |v: &[f32], shape: Vec<usize>| TensorData::new(v.to_vec(), shape);
    let mut sae = BlockDiagSae::init(cfg, &mut Rng::new(0), &device);
    sae.w_enc = Tensor::from_data(put(&p.w_enc, vec![h, d, m]), &device);
    sae.b_enc = Tensor::from_data(put(&p.b_enc, vec![h, m]), &device);
    sae.w_dec = Tensor::from_data(put(&p.w_dec, vec![h, m, d]), &device);
    sae.b_dec = Tensor::from_data(put(&p.b_dec, vec![h, d]), &device);
    if !p.log_threshold.is_empty() {
        sae.log_threshold = Some(Tensor::from_data(
            put(&p.log_threshold, vec![h, m]),
            &device,
        ));
    }
    let xt = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [h, b, d]), &device);
    autodiff_reference(&sae, xt, 0.7).unwrap().0
}

/// Adam step `t` of PyTorch on the host, from moments already updated.
fn adam_from_moments(p: &[f32], m: &[f32], v: &[f32], t: i32) -> Vec<f32> {
    let bc1 = (1.0 - BETAS.0.powi(t)) as f32;
    let bc2 = (1.0 - BETAS.1.powi(t)) as f32;
    p.iter()
        .zip(m.iter().zip(v))
        .map(|(&p, (&m, &v))| p - (m / bc1) / ((v / bc2).sqrt() + 1e-8) * LR as f32)
        .collect()
}

/// Step `t` of the WGSL step's default variant; `sparse` forces the sparse path (every
/// list fits), else the dense one.
fn step_spec(act: Activation, t: usize, clip: f64, sparse: bool) -> StepSpec {
    StepSpec {
        act,
        lr: LR,
        betas: BETAS,
        t,
        clip,
        sparse_below: if sparse { 1.0 } else { 0.0 },
        burn_encoder: false,
        one_group_select: false,
        wide_tiles: true,
        aux_k: None,
    }
}

/// Both paths: `sparse` forces the sparse one (every list fits), else the dense one.
fn case(device: &Device, arch: Architecture, h: usize, d: usize, m: usize, b: usize, clip: f64) {
    for sparse in [false, true] {
        case_on_path(device, arch, (h, d, m, b), clip, sparse, Variant::Default);
    }
    // The matmuls in the earlier 64 x 64 tiles (ATTN_SAES_WGSL_TILES=small), on the path
    // that runs all five.
    case_on_path(device, arch, (h, d, m, b), clip, false, Variant::SmallTiles);
    if matches!(arch, Architecture::BatchTopK { .. }) {
        // The earlier BatchTopK selection, one workgroup per head (ATTN_SAES_BATCHTOPK_SELECT).
        case_on_path(
            device,
            arch,
            (h, d, m, b),
            clip,
            false,
            Variant::OneGroupSelect,
        );
    }
}

/// How the step is asked to run besides its path.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Default,
    /// The encoder's product through burn's matmul (ATTN_SAES_WGSL_ENCODER=burn).
    BurnEncoder,
    /// BatchTopK's thresholds from one workgroup per head.
    OneGroupSelect,
    /// The matmuls in 64 x 64 tiles.
    SmallTiles,
}

fn case_on_path(
    device: &Device,
    arch: Architecture,
    (h, d, m, b): (usize, usize, usize, usize),
    clip: f64,
    sparse: bool,
    variant: Variant,
) {
    let path = match (sparse, variant) {
        (_, Variant::BurnEncoder) => "burn's encoder matmul",
        (_, Variant::OneGroupSelect) => "one workgroup per head's selection",
        (_, Variant::SmallTiles) => "dense, 64 x 64 tiles",
        (false, Variant::Default) => "dense",
        (true, Variant::Default) => "sparse",
    };
    let tag = format!("{arch:?} h {h} d {d} m {m} b {b} clip {clip} {path}");
    let (p0, x) = setup(arch, h, d, m, b);
    let act = Activation::new(arch, 0.7);
    let spec = |t| StepSpec {
        burn_encoder: variant == Variant::BurnEncoder,
        one_group_select: variant == Variant::OneGroupSelect,
        wide_tiles: variant != Variant::SmallTiles,
        ..step_spec(act, t, clip, sparse)
    };
    // Reference: the fused CPU step, twice.
    let mut p = p0.clone();
    let mut adam = HostAdam::zeros(&p);
    let mut grads = p.zeros_like();
    let sums1 = loss_and_grads(&p, &x, b, act, &mut grads);
    clip_and_adam(&mut p, &grads, &mut adam, LR, BETAS, 1, clip);
    let adam1 = adam.clone();
    let sums2 = loss_and_grads(&p, &x, b, act, &mut grads);
    clip_and_adam(&mut p, &grads, &mut adam, LR, BETAS, 2, clip);

    let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [h, b, d]), device);
    let r1 = wgsl::run_step(
        xt.clone(),
        StepState::from_host(&p0, None, device),
        spec(1),
        None,
    );
    let terms = read::<1>(r1.terms);
    assert_eq!(
        terms[3],
        f32::from(u8::from(sparse)),
        "{tag}: the path taken"
    );
    let want = [sums1.mse, sums1.sparsity, sums1.total].map(|v| v as f32);
    close(
        &format!("{tag} step 1 [mse, sparsity, total]"),
        &terms[..3],
        &want,
        2e-5,
    );
    let fired = read::<2>(r1.fired);
    let off: f32 = fired
        .iter()
        .zip(&sums1.fired)
        .map(|(a, b)| (a - b).abs())
        .sum();
    // Counts are exact unless a pre-activation sits within rounding of its threshold.
    assert!(off <= 1.0, "{tag} fired differs by {off} firings");
    assert!(fired.iter().sum::<f32>() > 0.0, "{tag}: nothing fired");
    let resid: Vec<f32> = sums1.resid_sq.iter().map(|&v| v as f32).collect();
    close(
        &format!("{tag} resid_sq"),
        &read::<1>(r1.resid_sq),
        &resid,
        2e-5,
    );
    close(
        &format!("{tag} recon_sq"),
        &read::<2>(r1.recon_sq),
        &sums1.recon_sq,
        2e-5,
    );
    let (gp1, gadam1) = r1.state.to_host(wgsl::ParamShape::of(&p0)).unwrap();
    check_adam(
        &format!("{tag} step 1"),
        1,
        (&p0, &gp1),
        &gadam1,
        &adam1,
        (1e-4, 2e-4),
    );
    if clip == 0.0 {
        // Unclipped, the first moment is (1 - b1) times the gradient: against autodiff too.
        let want = autodiff_grads(&p0, arch, &x, b);
        let names = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"];
        for (i, name) in names.iter().enumerate() {
            let scale = (1.0 - BETAS.0) as f32;
            let grad: Vec<f32> = gadam1.m.arrays()[i].iter().map(|v| v / scale).collect();
            let n = format!("{tag} {name} gradient vs autodiff");
            close(&n, &grad, want.arrays()[i], 1e-4);
        }
    }

    let r2 = wgsl::run_step(xt, r1.state, spec(2), None);
    let terms = read::<1>(r2.terms);
    let want = [sums2.mse, sums2.sparsity, sums2.total].map(|v| v as f32);
    close(
        &format!("{tag} step 2 [mse, sparsity, total]"),
        &terms[..3],
        &want,
        1e-4,
    );
    let (gp2, gadam2) = r2.state.to_host(wgsl::ParamShape::of(&p0)).unwrap();
    check_adam(
        &format!("{tag} step 2"),
        2,
        (&gp1, &gp2),
        &gadam2,
        &adam,
        (1e-3, 1e-3),
    );
}

/// Adam step `t` of the kernels: their moments against the CPU step's (`tol` for m and
/// v), and their update of the parameters `(before, after)` against Adam applied on the
/// host to their own moments.
fn check_adam(
    tag: &str,
    t: i32,
    (before, after): (&HostParams, &HostParams),
    got: &HostAdam,
    want: &HostAdam,
    (tol_m, tol_v): (f32, f32),
) {
    let names = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"];
    for (i, name) in names.iter().enumerate() {
        let (m, v) = (got.m.arrays()[i], got.v.arrays()[i]);
        close(&format!("{tag} {name} m"), m, want.m.arrays()[i], tol_m);
        close(&format!("{tag} {name} v"), v, want.v.arrays()[i], tol_v);
        let update = adam_from_moments(before.arrays()[i], m, v, t);
        close(
            &format!("{tag} {name} param"),
            after.arrays()[i],
            &update,
            1e-6,
        );
    }
}

#[test]
fn wgsl_step_matches_the_fused_cpu_step() {
    let Some(device) = common::wgpu_device("the WGSL step") else {
        return;
    };
    let relu = Architecture::Relu;
    // No clipping (so step 1's moments are the gradients), then clipping that bites.
    case(&device, relu, 3, 16, 48, 150, 0.0);
    case(&device, relu, 2, 64, 50, 150, 1e-2);
    case(&device, relu, 2, 128, 70, 37, 1e-2);
    case(&device, Architecture::TopK { k: 4 }, 2, 64, 50, 150, 0.0);
    case(&device, Architecture::TopK { k: 5 }, 1, 16, 300, 70, 1e-2);
    case(
        &device,
        Architecture::BatchTopK { k: 3 },
        2,
        16,
        48,
        150,
        0.0,
    );
    case(
        &device,
        Architecture::BatchTopK { k: 2 },
        2,
        64,
        70,
        100,
        1e-2,
    );
    let jump = Architecture::JumpRelu { bandwidth: 0.05 };
    case(&device, jump, 2, 16, 48, 150, 0.0);
    case(&device, jump, 2, 128, 48, 150, 1e-2);
    // The encoder's product through burn's matmul (ATTN_SAES_WGSL_ENCODER=burn).
    case_on_path(
        &device,
        relu,
        (2, 64, 50, 150),
        0.0,
        false,
        Variant::BurnEncoder,
    );
    case_on_path(
        &device,
        Architecture::TopK { k: 4 },
        (2, 64, 50, 150),
        0.0,
        true,
        Variant::BurnEncoder,
    );
}

/// The AuxK term on the WGSL step against the fused CPU step (itself checked against
/// autodiff and PyTorch): loss terms, the term, and Adam's moments and update after one
/// and two steps; a head with more dead features than AuxK's k, one with fewer, one with
/// none; both paths of the loss's own step, clipped and not.
fn aux_case(
    device: &Device,
    arch: Architecture,
    (h, d, m, b): (usize, usize, usize, usize),
    k_aux: usize,
    clip: f64,
    (sparse, wide_tiles): (bool, bool),
) {
    let tag = format!(
        "AuxK {arch:?} h {h} d {d} m {m} b {b} k {k_aux} clip {clip} sparse {sparse} wide \
         tiles {wide_tiles}"
    );
    let (p0, x) = setup(arch, h, d, m, b);
    let mut rng = Rng::new(5);
    let dead: Vec<bool> = (0..h * m)
        .map(|i| match i / m {
            0 => rng.uniform() < 0.6,
            1 => i % m < 3,
            _ => false,
        })
        .collect();
    let aux = AuxK {
        dead: &dead,
        k: k_aux,
        coef: 0.5,
    };
    let act = Activation::new(arch, 0.0);
    let spec = |t| StepSpec {
        wide_tiles,
        ..step_spec(act, t, clip, sparse)
    };
    // The reference: the fused CPU step, twice, with its sums and Adam state after each.
    let mut p = p0.clone();
    let mut adam = HostAdam::zeros(&p);
    let mut grads = p.zeros_like();
    let mut want = Vec::new();
    for t in 1..=2 {
        let sums = loss_and_grads_aux(&p, &x, b, act, Some(&aux), &mut grads);
        clip_and_adam(&mut p, &grads, &mut adam, LR, BETAS, t, clip);
        want.push((sums, adam.clone()));
    }
    assert!(want[0].0.aux > 0.0, "{tag}: no AuxK term to compare");

    let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [h, b, d]), device);
    let mut state = StepState::from_host(&p0, None, device);
    let mut before = p0.clone();
    for (t, (sums, adam)) in (1..).zip(&want) {
        let (tol_terms, tol_adam) = if t == 1 {
            (2e-5, (1e-4, 2e-4))
        } else {
            (1e-4, (1e-3, 1e-3))
        };
        let r = wgsl::run_step(xt.clone(), state, spec(t), Some(&aux));
        let terms = read::<1>(r.terms);
        let got = [terms[0], terms[1], terms[2], read::<1>(r.aux)[0]];
        let wanted = [sums.mse, sums.sparsity, sums.total, sums.aux].map(|v| v as f32);
        let what = format!("{tag} step {t} [mse, sparsity, total, AuxK term]");
        close(&what, &got, &wanted, tol_terms);
        let (after, moments) = r.state.to_host(wgsl::ParamShape::of(&p0)).unwrap();
        let what = format!("{tag} step {t}");
        check_adam(&what, t as i32, (&before, &after), &moments, adam, tol_adam);
        (before, state) = (after, r.state);
    }
}

#[test]
fn wgsl_aux_k_matches_the_fused_cpu_step() {
    let Some(device) = common::wgpu_device("the WGSL step's AuxK") else {
        return;
    };
    let topk = Architecture::TopK { k: 4 };
    aux_case(&device, topk, (3, 64, 50, 150), 32, 0.0, (false, true));
    aux_case(&device, topk, (3, 64, 50, 150), 32, 0.0, (true, true));
    aux_case(&device, topk, (3, 64, 50, 150), 32, 0.0, (false, false));
    let batch_topk = Architecture::BatchTopK { k: 3 };
    aux_case(
        &device,
        batch_topk,
        (3, 16, 48, 150),
        8,
        1e-2,
        (false, true),
    );
    // k above every head's count of dead features.
    aux_case(
        &device,
        Architecture::TopK { k: 5 },
        (3, 128, 70, 37),
        100,
        0.0,
        (true, true),
    );
}

/// The LM's products through the step's tiled matmul (`ATTN_SAES_LM_MATMUL=wgsl`) against
/// a float64 product on the host: sizes that are not multiples of the 128 x 128 tiles, with
/// and without a bias, the weight row-major and as the transpose of a row-major matrix
/// (an output matrix tied to the embedding).
#[test]
fn wgsl_linear_matches_a_float64_product() {
    let Some(device) = common::wgpu_device("the WGSL linear") else {
        return;
    };
    let mut rng = Rng::new(11);
    for (n, k, c, with_bias, transposed) in [
        (150, 70, 200, true, false),
        (37, 96, 130, false, true),
        (300, 33, 64, true, true),
    ] {
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        let (x, w, b) = (draw(n * k), draw(k * c), draw(c));
        let x_t = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, k]), &device);
        // The same [K, C] matrix, stored row-major or as the transpose of its [C, K].
        let w_t = if transposed {
            let wt: Vec<f32> = (0..c * k).map(|i| w[(i % k) * c + i / k]).collect();
            Tensor::<2>::from_data(TensorData::new(wt, [c, k]), &device).transpose()
        } else {
            Tensor::<2>::from_data(TensorData::new(w.clone(), [k, c]), &device)
        };
        let b_t = Tensor::<1>::from_data(TensorData::new(b.clone(), [c]), &device);
        let got = attn_saes::lm::wgsl_linear::linear(x_t, &w_t, with_bias.then_some(&b_t));
        assert_eq!(got.dims(), [n, c]);
        let got = attn_saes::files::host_vec(got).unwrap();
        let want: Vec<f32> = (0..n * c)
            .map(|i| {
                let (r, col) = (i / c, i % c);
                let dot: f64 = (0..k)
                    .map(|j| x[r * k + j] as f64 * w[j * c + col] as f64)
                    .sum();
                (dot + if with_bias { b[col] as f64 } else { 0.0 }) as f32
            })
            .collect();
        close(&format!("linear {n}x{k}x{c}"), &got, &want, 1e-5);
    }
}

#[path = "../benches/coop/kernel.rs"]
mod coop_kernel;

/// The cooperative-matrix probe (benches/coop_probe.rs) on this adapter, at small shapes:
/// each kernel's sampled outputs against sums in f64 of the same f16 operands, with A
/// stored either way. Without cooperative matrices (lavapipe, so CI) that is the scalar
/// kernel alone, which checks the probe's harness (buffers, read-back, the host's sums);
/// on an adapter with them (a lent GPU: scripts/gpu-check.sh runs this file) every
/// blocking, so that the probe's timings there are of products that are right.
#[test]
fn coop_probe_products_match_the_host() {
    use coop_kernel::{CoopShape, Kernel, Operands};
    let gpu = match coop_kernel::open() {
        Ok(gpu) => gpu,
        Err(e) => return common::no_wgpu("the cooperative-matrix probe", e),
    };
    println!("{}", gpu.description);
    let (heads, m, n, k) = (2, 128, 192, 96);
    let mut ran = 0;
    for a_col_major in [false, true] {
        let operands = Operands::new(&gpu.device, heads, m, n, k, a_col_major);
        for shape in CoopShape::blockings(heads, (m, n, k), a_col_major, gpu.subgroup) {
            if shape.kernel != Kernel::Scalar && !gpu.coop {
                continue;
            }
            let timed = operands
                .run(&gpu.device, &gpu.queue, shape, 1)
                .unwrap_or_else(|e| panic!("{shape:?} refused: {e}"));
            // f16 products are exact in f32, so the scalar kernel's sums of 96 in f32 err by
            // a few ulps of the largest. Tensor cores may sum with less than f32's rounding
            // (Hopper's f8 products keep about 14 bits), so theirs get 1e-3: far below what
            // a fragment misplaced (errors of the outputs' own size) would give.
            let tol = if shape.kernel == Kernel::Scalar {
                1e-5
            } else {
                1e-3
            };
            println!("{shape:?}: max relative error {:.2e}", timed.max_rel_err);
            assert!(timed.max_rel_err < tol, "{shape:?}: {}", timed.max_rel_err);
            ran += 1;
        }
    }
    assert_eq!(ran, if gpu.coop { 12 } else { 2 });
}
