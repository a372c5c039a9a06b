//! BlockDiagSae against a PyTorch reference (tests/fixtures/sae_reference), a naive dense
//! zero-padded SAE, folding identities and format round trips.

mod common;

use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig, activate};
use attn_saes::train::fused_cpu::{self, Activation, HostParams, autodiff_reference};
use attn_saes::train::metrics::{batch_stats, step_sums};
use attn_saes::train::{SaeOptimizer, StepOutput};
use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;

const TOL: f64 = 1e-5;

fn t<const D: usize>(r: &RefTensor, device: &Device) -> Tensor<D> {
    r.tensor(device)
}

struct Fixture {
    reference: Reference,
    sae: BlockDiagSae,
    /// [H, B, d]
    x: Tensor<3>,
}

fn fixture(arch: Architecture) -> Fixture {
    let reference = Reference::load("sae_reference/reference.safetensors");
    let (sae, x) = sae_from_reference(&reference, arch, &Device::flex());
    Fixture { reference, sae, x }
}

#[test]
fn relu_loss_and_gradients_match_pytorch() {
    let f = fixture(Architecture::Relu);
    let r = &f.reference;
    let (out, terms) = f.sae.loss(f.x.clone(), 0.7);
    assert_close(
        "relu.loss",
        &values(terms.total),
        &r.get("relu.loss").data,
        TOL,
    );
    assert_close("relu.mse", &values(terms.mse), &r.get("relu.mse").data, TOL);
    assert_close(
        "relu.sparsity",
        &values(terms.sparsity),
        &r.get("relu.sparsity").data,
        TOL,
    );
    assert_close(
        "relu.feats",
        &values(out.feats),
        &r.get("relu.feats").data,
        TOL,
    );
    assert_close(
        "relu.recon",
        &values(out.recon),
        &r.get("relu.recon").data,
        TOL,
    );

    // Gradients through autodiff, including the decoder-norm term.
    check_gradients(&f.sae, f.x.clone(), 0.7, r, "relu");
}

/// Loss gradients of every parameter (`log_threshold` too, when present) against the
/// reference tensors `{prefix}.grad.{name}`; returns them (burn autodiff).
fn check_gradients(
    sae: &BlockDiagSae,
    x: Tensor<3>,
    coefficient: f64,
    r: &Reference,
    prefix: &str,
) -> Vec<Vec<f64>> {
    let (grads, _, _) = autodiff_reference(sae, x, coefficient).unwrap();
    let names = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"];
    let got: Vec<(&str, Vec<f64>)> = names
        .iter()
        .zip(grads.arrays())
        .filter(|(_, g)| !g.is_empty())
        .map(|(name, g)| (*name, g.iter().map(|&v| v as f64).collect()))
        .collect();
    for (name, g) in &got {
        let key = format!("{prefix}.grad.{name}");
        assert_close(&key, g, &r.get(&key).data, TOL);
    }
    got.into_iter().map(|(_, g)| g).collect()
}

/// Both training paths: the fused CPU step (what `SaeOptimizer::new` picks for a ReLU SAE
/// on the CPU) and burn's autodiff.
#[test]
fn two_clipped_adam_steps_match_pytorch() {
    for fused in [true, false] {
        let f = fixture(Architecture::Relu);
        let mut sae = f.sae.clone();
        let mut opt = if fused {
            SaeOptimizer::new(&sae)
        } else {
            SaeOptimizer::with_autodiff(&sae)
        };
        assert_eq!(opt.is_fused(), fused);
        adam_steps_match(&f, &mut sae, &mut opt);
    }
}

fn adam_steps_match(f: &Fixture, sae: &mut BlockDiagSae, opt: &mut SaeOptimizer) {
    let r = &f.reference;
    let path = if opt.is_fused() { "fused" } else { "autodiff" };
    for step in ["step1", "step2"] {
        let out = opt.step(sae, f.x.clone(), 0.7, 1e-2, (0.9, 0.999), 0.5);
        // The step reports the loss of the parameters it started from.
        let loss_key = if step == "step1" {
            "relu.loss"
        } else {
            "relu.step2.loss"
        };
        // A loss near 19 is known to a few f32 ulps (~2e-6 each), after a step-1 state
        // that differs from PyTorch's by ~1e-7: a relative tolerance of 1e-6.
        let want = &r.get(loss_key).data;
        assert_close(
            &format!("{loss_key} ({path} step)"),
            &values(out.total.clone()),
            want,
            1e-6 * want[0].abs(),
        );
        if step == "step1" {
            // The metrics the trainer logs, from the step's own batch sums.
            check_batch_metrics(&format!("{path} step"), f.x.clone(), &out, r);
        }
        for (name, got) in [
            ("W_enc", values(sae.w_enc.clone())),
            ("b_enc", values(sae.b_enc.clone())),
            ("W_dec", values(sae.w_dec.clone())),
            ("b_dec", values(sae.b_dec.clone())),
        ] {
            let key = format!("relu.{step}.{name}");
            assert_close(&format!("{key} ({path})"), &got, &r.get(&key).data, TOL);
        }
    }
}

/// Explained variance (whole and per head) and L0 per head, as the trainer computes them
/// from a step's sums ([`batch_stats`]), against `relu.explained_variance`,
/// `relu.explained_variance_per_head` and `relu.l0_per_head` (initial parameters).
fn check_batch_metrics(what: &str, x: Tensor<3>, out: &StepOutput, r: &Reference) {
    let stats = batch_stats(x, out);
    assert_close(
        &format!("relu.explained_variance ({what})"),
        &[stats.explained_variance],
        &r.get("relu.explained_variance").data,
        TOL,
    );
    assert_close(
        &format!("relu.explained_variance_per_head ({what})"),
        &stats.explained_variance_per_head,
        &r.get("relu.explained_variance_per_head").data,
        TOL,
    );
    // Counts over 16 tokens: exact in f32.
    assert_eq!(
        stats.l0_per_head,
        r.get("relu.l0_per_head").data,
        "relu.l0_per_head ({what})"
    );
}

/// The metrics of a plain forward pass ([`step_sums`] then [`batch_stats`]), as evaluation
/// code uses them outside a training step.
#[test]
fn batch_metrics_of_a_forward_pass_match_pytorch() {
    let f = fixture(Architecture::Relu);
    let out = f.sae.forward(f.x.clone());
    let (fired, resid_sq, recon_sq) = step_sums(f.x.clone(), &out);
    let zero = Tensor::<1>::zeros([1], &Device::flex());
    let step = StepOutput {
        mse: zero.clone(),
        sparsity: zero.clone(),
        total: zero,
        fired,
        resid_sq,
        recon_sq,
        aux: None,
        batch_threshold: None,
    };
    check_batch_metrics("forward", f.x.clone(), &step, &f.reference);
}

/// Global L2 norm of a set of gradients, as `torch.nn.utils.clip_grad_norm_` returns it.
fn global_norm(grads: &[Vec<f64>]) -> f64 {
    grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt()
}

/// The fixture SAE with the parameters PyTorch had after its first clipped Adam step.
fn after_reference_step1(f: &Fixture) -> BlockDiagSae {
    let device = Device::flex();
    let r = &f.reference;
    BlockDiagSae {
        w_enc: t(r.get("relu.step1.W_enc"), &device),
        b_enc: t(r.get("relu.step1.b_enc"), &device),
        w_dec: t(r.get("relu.step1.W_dec"), &device),
        b_dec: t(r.get("relu.step1.b_dec"), &device),
        ..f.sae.clone()
    }
}

/// The fused CPU step's loss, gradients and batch sums against PyTorch (the Adam tests
/// alone hardly see gradient magnitudes: step 1 moves each weight by about `lr * sign(g)`),
/// and the gradient norm that clipping divides by, on both paths: `relu.grad_norm` at the
/// initial parameters and `relu.step2.grad_norm` after PyTorch's first step.
#[test]
fn fused_gradients_and_gradient_norms_match_pytorch() {
    let f = fixture(Architecture::Relu);
    let r = &f.reference;
    let [_, b, _] = f.x.dims();
    let xs: Vec<f32> = values(f.x.clone()).iter().map(|&v| v as f32).collect();
    let fused = |sae: &BlockDiagSae| {
        let params = HostParams::from_sae(sae).unwrap();
        let mut grads = params.zeros_like();
        let sums = fused_cpu::loss_and_grads(
            &params,
            &xs,
            b,
            Activation::new(Architecture::Relu, 0.7),
            &mut grads,
        );
        let grads: Vec<Vec<f64>> = grads.arrays()[..4]
            .iter()
            .map(|g| g.iter().map(|&v| v as f64).collect())
            .collect();
        (sums, grads)
    };

    let (sums, grads) = fused(&f.sae);
    assert_close(
        "relu.loss (fused)",
        &[sums.total],
        &r.get("relu.loss").data,
        TOL,
    );
    assert_close(
        "relu.mse (fused)",
        &[sums.mse],
        &r.get("relu.mse").data,
        TOL,
    );
    assert_close(
        "relu.sparsity (fused)",
        &[sums.sparsity],
        &r.get("relu.sparsity").data,
        TOL,
    );
    for (name, g) in ["W_enc", "b_enc", "W_dec", "b_dec"].iter().zip(&grads) {
        let key = format!("relu.grad.{name}");
        assert_close(&format!("{key} (fused)"), g, &r.get(&key).data, TOL);
    }
    let want = &r.get("relu.grad_norm").data;
    assert_close("relu.grad_norm (fused)", &[global_norm(&grads)], want, TOL);
    let autodiff = check_gradients(&f.sae, f.x.clone(), 0.7, r, "relu");
    assert_close(
        "relu.grad_norm (autodiff)",
        &[global_norm(&autodiff)],
        want,
        TOL,
    );

    // Second step: gradients at PyTorch's step-1 parameters.
    let sae2 = after_reference_step1(&f);
    let want = &r.get("relu.step2.grad_norm").data;
    let (sums2, grads2) = fused(&sae2);
    assert_close(
        "relu.step2.loss (fused, from step-1 parameters)",
        &[sums2.total],
        &r.get("relu.step2.loss").data,
        TOL,
    );
    assert_close(
        "relu.step2.grad_norm (fused)",
        &[global_norm(&grads2)],
        want,
        TOL,
    );
    let tracked = sae2.tracked();
    let (_, terms) = tracked.loss(f.x.clone().autodiff(), 0.7);
    let g = terms.total.backward();
    let autodiff2 = vec![
        values(tracked.w_enc.grad(&g).unwrap()),
        values(tracked.b_enc.grad(&g).unwrap()),
        values(tracked.w_dec.grad(&g).unwrap()),
        values(tracked.b_dec.grad(&g).unwrap()),
    ];
    assert_close(
        "relu.step2.grad_norm (autodiff)",
        &[global_norm(&autodiff2)],
        want,
        TOL,
    );
    // Both norms exceed the clip of 0.5: clipping is exercised at both steps.
    println!(
        "grad norms: step 1 {:.6}, step 2 {:.6} (clip 0.5)",
        r.get("relu.grad_norm").data[0],
        want[0]
    );
}

#[test]
fn topk_and_batchtopk_match_pytorch_and_keep_k() {
    for (arch, key) in [
        (Architecture::TopK { k: 2 }, "topk"),
        (Architecture::BatchTopK { k: 2 }, "batchtopk"),
    ] {
        let f = fixture(arch);
        let out = f.sae.forward(f.x.clone());
        let r = &f.reference;
        assert_close(
            &format!("{key}.feats"),
            &values(out.feats.clone()),
            &r.get(&format!("{key}.feats")).data,
            TOL,
        );
        assert_close(
            &format!("{key}.recon"),
            &values(out.recon),
            &r.get(&format!("{key}.recon")).data,
            TOL,
        );
        let [h, b, _] = out.feats.dims();
        let nonzero = values(out.feats.greater_elem(0.0).float().sum_dim(2));
        if key == "topk" {
            assert!(
                nonzero.iter().all(|&n| n <= 2.0),
                "at most k per head per token"
            );
        } else {
            // BatchTopK: at most k * B per head over the batch.
            let per_head: Vec<f64> = nonzero.chunks(b).map(|c| c.iter().sum()).collect();
            assert_eq!(per_head.len(), h);
            assert!(per_head.iter().all(|&n| n <= 2.0 * b as f64));
        }
    }
    // With all pre-activations positive TopK keeps exactly k.
    let device = Device::flex();
    let pre = Tensor::<3>::random(
        [3, 5, 9],
        burn::tensor::Distribution::Uniform(0.1, 1.0),
        &device,
    );
    let feats = activate(pre, Architecture::TopK { k: 4 });
    let counts = values(feats.greater_elem(0.0).float().sum_dim(2));
    assert!(counts.iter().all(|&n| n == 4.0), "{counts:?}");
}

/// TopK and BatchTopK activations on every test device equal an exact selection on the
/// host, for small and large `k` (burn's `topk` on wgpu gave wrong values for large `k`,
/// which BatchTopK's `k x B` always is: `attn_saes::sae::kth_largest`).
#[test]
fn topk_and_batchtopk_activations_are_exact_on_every_device() {
    let (h, b, m) = (2, 40, 300);
    let mut rng = attn_saes::rng::Rng::new(3);
    let pre: Vec<f32> = (0..h * b * m).map(|_| rng.normal() as f32).collect();
    // The host's answer: values at or above the k-th largest of each row, ReLU.
    let keep = |rows: &[f32], k: usize| -> Vec<f64> {
        let mut sorted = rows.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        rows.iter()
            .map(|&v| if v >= kth { v.max(0.0) as f64 } else { 0.0 })
            .collect()
    };
    for (name, device) in test_devices() {
        let t = Tensor::<3>::from_data(TensorData::new(pre.clone(), [h, b, m]), &device);
        for k in [1, 8, 9, 64, 128, 250] {
            let got = values(activate(t.clone(), Architecture::TopK { k }));
            let want: Vec<f64> = pre.chunks(m).flat_map(|row| keep(row, k)).collect();
            assert_close(&format!("{name} TopK k {k}"), &got, &want, 0.0);
        }
        for k in [1, 3, 40] {
            let got = values(activate(t.clone(), Architecture::BatchTopK { k }));
            let want: Vec<f64> = pre
                .chunks(b * m)
                .flat_map(|head| keep(head, k * b))
                .collect();
            assert_close(&format!("{name} BatchTopK k {k}"), &got, &want, 0.0);
        }
    }
}

#[test]
fn block_diagonal_equals_dense_zero_padded_sae() {
    let f = fixture(Architecture::Relu);
    let device = Device::flex();
    let (h, d, m) = (
        f.sae.config.n_heads,
        f.sae.config.d_head,
        f.sae.config.features_per_head,
    );
    // Build the dense [h*d, h*m] / [h*m, h*d] matrices naively.
    let we = values(f.sae.w_enc.clone());
    let wd = values(f.sae.w_dec.clone());
    let mut enc = vec![0f32; h * d * h * m];
    let mut dec = vec![0f32; h * m * h * d];
    for head in 0..h {
        for j in 0..d {
            for i in 0..m {
                enc[(head * d + j) * h * m + head * m + i] = we[(head * d + j) * m + i] as f32;
                dec[(head * m + i) * h * d + head * d + j] = wd[(head * m + i) * d + j] as f32;
            }
        }
    }
    let dense = BlockDiagSae {
        config: SaeConfig {
            n_heads: 1,
            d_head: h * d,
            features_per_head: h * m,
            architecture: Architecture::Relu,
        },
        w_enc: Tensor::from_data(TensorData::new(enc, [1, h * d, h * m]), &device),
        b_enc: f.sae.b_enc.clone().reshape([1, h * m]),
        w_dec: Tensor::from_data(TensorData::new(dec, [1, h * m, h * d]), &device),
        b_dec: f.sae.b_dec.clone().reshape([1, h * d]),
        input_scale: vec![1.0],
        log_threshold: None,
        batch_threshold: None,
        reads_bos: false,
    };
    let b = f.x.dims()[1];
    let x_dense =
        f.x.clone()
            .swap_dims(0, 1)
            .reshape([b, 1, h * d])
            .swap_dims(0, 1);
    let (_, block_terms) = f.sae.loss(f.x.clone(), 0.7);
    let (out_dense, dense_terms) = dense.loss(x_dense, 0.7);
    assert_close(
        "dense loss",
        &values(dense_terms.total),
        &values(block_terms.total),
        TOL,
    );
    let recon_block = values(f.sae.forward(f.x.clone()).recon.swap_dims(0, 1));
    assert_close(
        "dense recon",
        &values(out_dense.recon.swap_dims(0, 1)),
        &recon_block,
        TOL,
    );
    assert_eq!(f.sae.config.n_params(), h * (2 * d * m + m + d));
}

#[test]
fn folding_keeps_reconstructions() {
    let mut f = fixture(Architecture::Relu);
    f.sae.input_scale = vec![0.5, 2.0, 3.0];
    let z = f.x.clone().swap_dims(0, 1); // raw hook_z [B, H, d]
    let before = values(f.sae.reconstruct_raw(z.clone()));
    let folded = f.sae.fold();
    assert_eq!(folded.input_scale, vec![1.0; 3]);
    let after = values(folded.reconstruct_raw(z));
    assert_close("folded reconstruction", &after, &before, 1e-4);
    // Decoder rows had unit norm before the input scale was undone: now 1 / scale[h].
    let norms = values(folded.decoder_norms());
    for (i, n) in norms.iter().enumerate() {
        let want = 1.0 / f.sae.input_scale[i / 6] as f64;
        assert!((n - want).abs() < 1e-5, "row {i}: norm {n}, want {want}");
    }
}

/// The hook an SAELens export of the tiny fixtures records.
fn tiny_hook() -> attn_saes::sae::io::HookInfo {
    attn_saes::sae::io::HookInfo {
        model_name: "tiny".into(),
        hook_layer: 1,
        context_size: 16,
        prepend_bos: true,
        dataset_path: "x".into(),
        z_convention: Default::default(),
    }
}

#[test]
fn saelens_export_import_round_trips_bit_exactly() {
    let f = fixture(Architecture::TopK { k: 2 });
    let dir = std::env::temp_dir().join(format!("attn-saes-saelens-{}", std::process::id()));
    let hook = tiny_hook();
    let density: Vec<f32> = (0..f.sae.config.d_sae())
        .map(|i| -(i as f32) / 10.0)
        .collect();
    f.sae.export_saelens(&dir, &hook, Some(&density)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["reshape_activations"], "hook_z");
    assert_eq!(cfg["hook_name"], "blocks.1.attn.hook_z");
    assert_eq!(cfg["d_in"], 12);
    let device = Device::flex();
    let imported = BlockDiagSae::import_saelens(&dir, 3, &device).unwrap();
    let folded = f.sae.fold();
    assert_eq!(imported.config.n_heads, 3, "recognised as block-diagonal");
    assert_eq!(imported.config.architecture, Architecture::TopK { k: 2 });
    assert_eq!(values(imported.w_enc), values(folded.w_enc.clone()));
    assert_eq!(values(imported.b_enc), values(folded.b_enc.clone()));
    assert_eq!(values(imported.w_dec), values(folded.w_dec.clone()));
    assert_eq!(values(imported.b_dec), values(folded.b_dec.clone()));
    // A model with 2 heads does not tile 3 blocks: imported as one dense SAE.
    let dense = BlockDiagSae::import_saelens(&dir, 2, &device).unwrap();
    assert_eq!(dense.config.n_heads, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn our_format_and_seed_format_round_trip() {
    let f = fixture(Architecture::Relu);
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("attn-saes-ours-{}", std::process::id()));
    f.sae.save(&dir).unwrap();
    let back = BlockDiagSae::load(&dir, &device).unwrap();
    assert_eq!(values(back.w_dec), values(f.sae.w_dec.clone()));
    assert_eq!(back.config, f.sae.config);

    // Seed fork format: nn.Linear weights [out, in].
    let (h, d, m) = (3, 4, 6);
    let we = values(f.sae.w_enc.clone());
    let wd = values(f.sae.w_dec.clone());
    let be = values(f.sae.b_enc.clone());
    let bd = values(f.sae.b_dec.clone());
    let mut arrays = Vec::new();
    for head in 0..h {
        let enc_w: Vec<f32> = (0..m)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| we[(head * d + j) * m + i] as f32)
            .collect();
        let dec_w: Vec<f32> = (0..d)
            .flat_map(|j| (0..m).map(move |i| (i, j)))
            .map(|(i, j)| wd[(head * m + i) * d + j] as f32)
            .collect();
        use attn_saes::files::NamedArray;
        arrays.push(NamedArray::new(
            format!("enc_blocks.{head}.weight"),
            vec![m, d],
            enc_w,
        ));
        arrays.push(NamedArray::new(
            format!("enc_blocks.{head}.bias"),
            vec![m],
            be[head * m..(head + 1) * m]
                .iter()
                .map(|&v| v as f32)
                .collect(),
        ));
        arrays.push(NamedArray::new(
            format!("dec_blocks.{head}.weight"),
            vec![d, m],
            dec_w,
        ));
        arrays.push(NamedArray::new(
            format!("dec_blocks.{head}.bias"),
            vec![d],
            bd[head * d..(head + 1) * d]
                .iter()
                .map(|&v| v as f32)
                .collect(),
        ));
    }
    let seed_file = dir.join("seed.safetensors");
    attn_saes::files::write_safetensors(&seed_file, &arrays, None).unwrap();
    let seed = BlockDiagSae::import_seed(&seed_file, &device).unwrap();
    assert_eq!(values(seed.w_enc), values(f.sae.w_enc.clone()));
    assert_eq!(values(seed.w_dec), values(f.sae.w_dec.clone()));
    assert_eq!(values(seed.b_enc), values(f.sae.b_enc.clone()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn jumprelu_loss_and_straight_through_gradients_match_pytorch() {
    let bandwidth = 0.1;
    let mut f = fixture(Architecture::JumpRelu { bandwidth });
    let device = Device::flex();
    let r = &f.reference;
    f.sae.log_threshold = Some(t(r.get("jumprelu.log_threshold"), &device));
    let (out, terms) = f.sae.loss(f.x.clone(), 0.3);
    assert_close(
        "jumprelu.loss",
        &values(terms.total),
        &r.get("jumprelu.loss").data,
        TOL,
    );
    assert_close(
        "jumprelu.mse",
        &values(terms.mse),
        &r.get("jumprelu.mse").data,
        TOL,
    );
    assert_close(
        "jumprelu.l0",
        &values(terms.sparsity),
        &r.get("jumprelu.l0").data,
        TOL,
    );
    assert_close(
        "jumprelu.feats",
        &values(out.feats),
        &r.get("jumprelu.feats").data,
        TOL,
    );
    assert_close(
        "jumprelu.recon",
        &values(out.recon),
        &r.get("jumprelu.recon").data,
        TOL,
    );
    let g_lt = &r.get("jumprelu.grad.log_threshold").data;
    assert!(
        g_lt.iter().filter(|g| g.abs() > 1e-6).count() >= 10,
        "thresholds get gradients"
    );
    check_gradients(&f.sae, f.x.clone(), 0.3, r, "jumprelu");
    // Folding scales thresholds with the decoder norms: same features, same reconstruction.
    let folded = f.sae.fold();
    let z = f.x.clone().swap_dims(0, 1);
    assert_close(
        "folded jumprelu reconstruction",
        &values(folded.reconstruct_raw(z.clone())),
        &values(f.sae.reconstruct_raw(z)),
        1e-4,
    );
    // SAELens export carries the (folded) threshold and imports back exactly.
    let dir = std::env::temp_dir().join(format!("attn-saes-jumprelu-{}", std::process::id()));
    f.sae
        .export_saelens(&dir, &attn_saes::sae::io::HookInfo::default(), None)
        .unwrap();
    let imported = BlockDiagSae::import_saelens(&dir, 3, &device).unwrap();
    assert!(matches!(
        imported.config.architecture,
        Architecture::JumpRelu { .. }
    ));
    assert_close(
        "imported threshold",
        &values(imported.log_threshold.unwrap().exp()),
        &values(folded.log_threshold.unwrap().exp()),
        1e-6,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// BatchTopK with inference thresholds: each token's features are the ReLU of its
/// pre-activations at or above them (so a token gives the same features alone as in a
/// batch), folding scales them with the decoder norms and keeps the reconstructions, they
/// survive a save and load bit for bit, and the SAELens export (as JumpReLU) imports to the
/// same reconstructions.
#[test]
fn batchtopk_inference_thresholds_encode_fold_save_and_export() {
    let mut f = fixture(Architecture::BatchTopK { k: 2 });
    let (h, m) = (f.sae.config.n_heads, f.sae.config.features_per_head);
    let device = Device::flex();
    let mut rng = attn_saes::rng::Rng::new(4);
    // Per head, as training leaves them.
    let per_head: Vec<f32> = (0..h).map(|_| 0.05 + 0.3 * rng.uniform() as f32).collect();
    let t: Vec<f32> = (0..h * m).map(|i| per_head[i / m]).collect();
    f.sae.batch_threshold = Some(Tensor::from_data(
        TensorData::new(t.clone(), [h, m]),
        &device,
    ));
    f.sae.input_scale = vec![0.5, 2.0, 3.0];
    let (pre, feats) = f.sae.encode(f.x.clone());
    let (pre, feats) = (values(pre), values(feats));
    let b = f.x.dims()[1];
    let want: Vec<f64> = pre
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let cut = t[(i / (b * m)) * m + i % m] as f64;
            if p >= cut { p.max(0.0) } else { 0.0 }
        })
        .collect();
    assert_close("thresholded features", &feats, &want, 0.0);
    let active = feats.iter().filter(|&&v| v > 0.0).count();
    assert!(active > 0 && active < feats.len() / 2, "{active} active");
    // One token alone: the same features as in the batch.
    let alone = values(f.sae.encode(f.x.clone().narrow(1, 3, 1)).1);
    let in_batch: Vec<f64> = (0..h)
        .flat_map(|hd| feats[(hd * b + 3) * m..(hd * b + 4) * m].to_vec())
        .collect();
    assert_close("a token alone", &alone, &in_batch, 0.0);
    // Folding.
    let z = f.x.clone().swap_dims(0, 1);
    let before = values(f.sae.reconstruct_raw(z.clone()));
    let folded = f.sae.fold();
    assert_close(
        "folded reconstruction",
        &values(folded.reconstruct_raw(z.clone())),
        &before,
        1e-4,
    );
    // Save and load.
    let dir = std::env::temp_dir().join(format!("attn-saes-btk-{}", std::process::id()));
    f.sae.save(&dir.join("sae")).unwrap();
    let back = BlockDiagSae::load(&dir.join("sae"), &device).unwrap();
    assert_eq!(
        values(back.batch_threshold.clone().unwrap()),
        t.iter().map(|&v| v as f64).collect::<Vec<_>>()
    );
    // SAELens: exported as JumpReLU with the folded thresholds.
    let hook = tiny_hook();
    f.sae
        .export_saelens(&dir.join("saelens"), &hook, None)
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("saelens/cfg.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
    let imported = BlockDiagSae::import_saelens(&dir.join("saelens"), 3, &device).unwrap();
    assert!(matches!(
        imported.config.architecture,
        Architecture::JumpRelu { .. }
    ));
    assert_close(
        "imported reconstruction",
        &values(imported.reconstruct_raw(z)),
        &before,
        1e-4,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The batch threshold each training step reports for BatchTopK (what the inference
/// thresholds average) is the head's (k x B)-th largest pre-activation, on every path:
/// the fused CPU step, the WGSL step (on wgpu) and autodiff.
#[test]
fn batchtopk_steps_report_the_batch_threshold_on_every_path() {
    let reference = Reference::load("sae_reference/reference.safetensors");
    let k = 2;
    for (name, device) in test_devices() {
        let (sae, x) = sae_from_reference(&reference, Architecture::BatchTopK { k }, &device);
        let m = sae.config.features_per_head;
        let b = x.dims()[1];
        let pre = values(sae.encode(x.clone()).0);
        let want: Vec<f64> = pre
            .chunks(b * m)
            .map(|head| {
                let mut v = head.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                v[k * b - 1]
            })
            .collect();
        for fast in [true, false] {
            let mut sae = sae.clone();
            let mut opt = if fast {
                SaeOptimizer::new(&sae)
            } else {
                SaeOptimizer::with_autodiff(&sae)
            };
            let out = opt.step(&mut sae, x.clone(), 0.0, 1e-3, (0.9, 0.999), 0.0);
            let got = values(
                out.batch_threshold
                    .expect("BatchTopK reports its threshold"),
            );
            assert_close(
                &format!("{name} {} batch threshold", opt.path()),
                &got,
                &want,
                0.0,
            );
        }
    }
}

/// Kissane et al.'s `.pt` state dicts (tests/fixtures/kissane, written by torch.save) import
/// as PyTorch computes them: activations and reconstruction of random inputs match the
/// fixture's forward, a dense one as one block and a block-diagonal one as its heads, with
/// the origin their `_cfg.json` gives.
#[test]
fn kissane_state_dicts_import_as_pytorch_computes_them() {
    use attn_saes::sae::io::SaeOrigin;
    let device = Device::flex();
    let r = Reference::load("kissane/reference.safetensors");
    let file = |layer: usize| {
        common::fixture(&format!(
            "kissane/gpt2-small_L{layer}_Hcat_z_lr1.20e-03_l11.00e+00_ds256_bs4096_dc1.00e-06\
             _rsanthropic_rie25000_nr4_v9.pt"
        ))
    };
    // (layer, --n-heads, heads expected: the dense one stays one block when asked for 4)
    for (layer, ask, heads) in [(1, 1, 1), (1, 4, 1), (0, 4, 4), (0, 1, 1)] {
        let (sae, origin) = BlockDiagSae::import_kissane(&file(layer), ask, &device).unwrap();
        assert_eq!(
            origin,
            SaeOrigin {
                model: "openai-community/gpt2".into(),
                hook_layer: layer,
                z_convention: attn_saes::lm::ZConvention::TransformerLens,
                keep_bos: false,
            }
        );
        let c = &sae.config;
        assert_eq!(
            (c.n_heads, c.d_head, c.features_per_head),
            (heads, 64 / heads, 256 / heads)
        );
        let x = &r.get(&format!("l{layer}.x")).data;
        let b = x.len() / 64;
        let d = 64 / heads;
        let xt = Tensor::<3>::from_data(
            TensorData::new(x.iter().map(|&v| v as f32).collect(), [b, heads, d]),
            &device,
        )
        .swap_dims(0, 1);
        let out = sae.forward(xt);
        // ours [H, B, m] and [H, B, d] laid out as the reference's [B, H*m] and [B, H*d]
        let flat = |t: Tensor<3>| values(t.swap_dims(0, 1));
        let what = format!("layer {layer} as {heads} heads");
        assert_close(
            &format!("{what}: acts"),
            &flat(out.feats),
            &r.get(&format!("l{layer}.acts")).data,
            1e-4,
        );
        assert_close(
            &format!("{what}: recon"),
            &flat(out.recon),
            &r.get(&format!("l{layer}.recon")).data,
            1e-4,
        );
    }
    // Without its _cfg.json the file is refused, naming what is missing.
    let dir = TempDir::new("attn-saes-kissane", "lone");
    let lone = dir.join("lone.pt");
    std::fs::copy(file(1), &lone).unwrap();
    let Err(err) = BlockDiagSae::import_kissane(&lone, 1, &device) else {
        panic!("a .pt without its _cfg.json was imported")
    };
    assert!(format!("{err:#}").contains("lone_cfg.json"), "{err:#}");
}

/// `import --saelens ORG/NAME --hook-layer L` from a Hugging Face cache laid out as the hub
/// writes it (offline): Kissane et al.'s repository picks the layer's file, refuses to guess
/// between several, and the import records where it was trained, so that `dashboard --sae`
/// and `evaluate --sae` run it on that model and layer without being told (the model,
/// `openai-community/gpt2`, is gpt2_tiny in the same cache).
/// A snapshot directory of `repo` at `rev` in a Hugging Face cache's `hub` directory, laid
/// out as the hub writes it (`models--ORG--NAME/refs/main`, `snapshots/REV/`).
fn hub_snapshot(hub: &std::path::Path, repo: &str, rev: &str) -> std::path::PathBuf {
    let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs").join("main"), rev).unwrap();
    let snap = folder.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    snap
}

/// `attn-saes ARGS` on the CPU with the Hugging Face cache at `hf_home`, offline.
fn offline_cli(hf_home: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu"])
        .args(args)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// `dashboard --sae SAE` over 256 tokens of `corpus` in 32-token windows, which must succeed.
fn small_dashboard_of(
    run: &dyn Fn(&[&str]) -> std::process::Output,
    sae: &str,
    corpus: &std::path::Path,
) {
    let out = run(&[
        "dashboard",
        "--sae",
        sae,
        "--dataset",
        corpus.to_str().unwrap(),
        "--tokens",
        "256",
        "--context-size",
        "32",
    ]);
    assert_succeeded(&out);
}

#[test]
fn import_from_the_hub_cache_records_where_the_sae_was_trained() {
    let dir = TempDir::new("attn-saes-kissane", "hub");
    let hub = dir.join("hf").join("hub");
    let snapshot = |repo: &str, rev: &str| hub_snapshot(&hub, repo, rev);
    let kk = snapshot("ckkissane/attn-saes-gpt2-small-all-layers", "0123abc");
    for e in std::fs::read_dir(common::fixture("kissane"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pt") || name.ends_with("_cfg.json") {
            std::fs::copy(e.path(), kk.join(&name)).unwrap();
        }
    }
    let gpt2 = snapshot("openai-community/gpt2", "4567def");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(common::fixture("gpt2_tiny").join(f), gpt2.join(f)).unwrap();
    }
    let run = |args: &[&str]| offline_cli(&dir.join("hf"), args);
    let repo = "ckkissane/attn-saes-gpt2-small-all-layers";
    let sae = dir.join("sae");
    let sae_s = sae.to_str().unwrap();
    // A directory that is no SAELens folder: refused, saying what is looked for.
    let out = run(&["import", "--saelens", dir.to_str().unwrap(), "--out", sae_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is neither a SAELens folder"), "{err}");
    // Two SAEs and no layer: refused, listing both.
    let out = run(&["import", "--saelens", repo, "--out", sae_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds 2 SAEs"),
        "{err}"
    );
    assert!(err.contains("_L0_") && err.contains("_L1_"), "{err}");
    assert!(!sae.exists());
    // A layer it does not hold: refused, saying the hub was not asked.
    let out = run(&[
        "import",
        "--saelens",
        repo,
        "--hook-layer",
        "5",
        "--out",
        sae_s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no SAE of layer 5") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // SAELens' release and id for it name layer 1's.
    let sae1 = dir.join("sae1");
    let out = run(&[
        "import",
        "--saelens",
        "gpt2-small-hook-z-kk/blocks.1.hook_z",
        "--out",
        sae1.to_str().unwrap(),
    ]);
    assert_succeeded(&out);
    assert_eq!(
        BlockDiagSae::read_origin(&sae1)
            .unwrap()
            .unwrap()
            .hook_layer,
        1
    );
    // Layer 0's, block-diagonal over the 4 heads.
    let out = run(&[
        "import",
        "--saelens",
        repo,
        "--hook-layer",
        "0",
        "--n-heads",
        "4",
        "--out",
        sae_s,
    ]);
    assert_succeeded(&out);
    let origin = BlockDiagSae::read_origin(&sae).unwrap().unwrap();
    assert_eq!(
        (origin.model.as_str(), origin.hook_layer),
        ("openai-community/gpt2", 0)
    );
    // Its dashboards with no --model or --hook-layer: gpt2_tiny's layer 0 (not the middle
    // layer 1 that any other model defaults to; the demo model's 9 heads would not fit).
    let corpus = corpus(&dir);
    small_dashboard_of(&run, sae_s, &corpus);
    // Written beside the SAE, where `features` finds it given the directory.
    let file = sae.join("dashboard.safetensors");
    let listed = run(&["features", "--run", sae_s, "--per-head", "1", "--top", "1"]);
    assert_succeeded(&listed);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("feature "));
    let d = attn_saes::dashboard::build::read(&file).unwrap();
    assert_eq!(d.meta.hook_layer, 0);
    assert_eq!(d.meta.model.name, "openai-community/gpt2");
    assert_eq!(d.heads.len(), 4, "its 4 heads");
    // Your text on the SAE directory runs where it was trained: as on its dashboard file,
    // which records the model and layer; an SAE that records nothing is refused, saying so.
    let text = "Paragraph 3. The early bird catches the worm";
    let by_sae = run(&["text", sae_s, text, "--json"]);
    assert_succeeded(&by_sae);
    let by_file = run(&["text", file.to_str().unwrap(), text, "--json"]);
    assert_succeeded(&by_file);
    assert_eq!(
        String::from_utf8_lossy(&by_sae.stdout),
        String::from_utf8_lossy(&by_file.stdout)
    );
    let bare = dir.join("bare");
    BlockDiagSae::load(&sae, &Device::flex())
        .unwrap()
        .save(&bare)
        .unwrap();
    let out = run(&["text", bare.to_str().unwrap(), text]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not record the model and layer"), "{err}");
    // A model given that is not its own is refused before anything runs.
    let out = run(&[
        "evaluate",
        "--sae",
        sae_s,
        "--model",
        common::fixture("gpt2_tiny").to_str().unwrap(),
        "--dataset",
        corpus.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was trained on openai-community/gpt2"),
        "{err}"
    );
    let out = run(&[
        "evaluate",
        "--sae",
        sae_s,
        "--dataset",
        corpus.to_str().unwrap(),
        "--context-size",
        "32",
    ]);
    assert_succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("CE loss score"));
}

/// ARENA's attention SAEs as SAELens folders (`callummcdougall/arena-demos-attn2l`, with
/// `blocks.0.attn.hook_z` and `-v2`) on TransformerLens' `attn-only-2l-demo`, in an offline
/// Hugging Face cache: the model (here the attention-only shortformer fixture) as Neel's
/// repository holds it, a `.pth` whose config names its tokenizer's repository. The import
/// records the model the alias names, and the dashboards, `text` and the hook_z they read
/// are that model's.
#[test]
fn arena_attention_saes_run_on_the_attention_only_model_they_name() {
    let dir = TempDir::new("attn-saes-arena", "hub");
    let hub = dir.join("hf").join("hub");
    let model = hub_snapshot(
        &hub,
        "NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr",
        "a1",
    );
    std::fs::copy(
        common::fixture("attn2l_tiny").join("model_final.pth"),
        model.join("model_final.pth"),
    )
    .unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixture("attn2l_tiny").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["tokenizer_name"] = "EleutherAI/gpt-neox-20b".into();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let tokenizer = hub_snapshot(&hub, "EleutherAI/gpt-neox-20b", "b2");
    std::fs::copy(
        common::fixture("attn2l_tiny").join("tokenizer.json"),
        tokenizer.join("tokenizer.json"),
    )
    .unwrap();
    // Two SAELens folders of layer 0 (d_in 4 heads x 16, 24 features), as ARENA's repository.
    let saes = hub_snapshot(&hub, "callummcdougall/arena-demos-attn2l", "c3");
    let (d_in, d_sae) = (64, 24);
    let wave = |n: usize, phase: f32| -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (i as f32 * 0.73 + phase).sin())
            .collect()
    };
    for (k, folder) in ["blocks.0.attn.hook_z", "blocks.0.attn.hook_z-v2"]
        .iter()
        .enumerate()
    {
        let at = saes.join(folder);
        std::fs::create_dir_all(&at).unwrap();
        let cfg = serde_json::json!({
            "model_name": "attn-only-2l-demo", "hook_name": "blocks.0.attn.hook_z",
            "d_in": d_in, "d_sae": d_sae, "architecture": "standard",
            "apply_b_dec_to_input": true, "normalize_activations": "none",
        });
        std::fs::write(at.join("cfg.json"), cfg.to_string()).unwrap();
        let phase = k as f32;
        attn_saes::files::write_safetensors(
            &at.join("sae_weights.safetensors"),
            &[
                attn_saes::files::NamedArray::new(
                    "W_enc",
                    vec![d_in, d_sae],
                    wave(d_in * d_sae, phase),
                ),
                attn_saes::files::NamedArray::new("b_enc", vec![d_sae], vec![0.05; d_sae]),
                attn_saes::files::NamedArray::new(
                    "W_dec",
                    vec![d_sae, d_in],
                    wave(d_sae * d_in, phase + 0.5),
                ),
                attn_saes::files::NamedArray::new("b_dec", vec![d_in], wave(d_in, phase + 0.25)),
            ],
            None,
        )
        .unwrap();
    }
    let run = |args: &[&str]| offline_cli(&dir.join("hf"), args);
    let repo = "callummcdougall/arena-demos-attn2l";
    let sae = dir.join("sae");
    let sae_s = sae.to_str().unwrap();
    let out = run(&[
        "import",
        "--saelens",
        repo,
        "--hook-layer",
        "0",
        "--out",
        sae_s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocks.0.attn.hook_z-v2"), "{err}");
    let out = run(&[
        "import",
        "--saelens",
        &format!("{repo}/blocks.0.attn.hook_z-v2"),
        "--out",
        sae_s,
    ]);
    assert_succeeded(&out);
    let origin = BlockDiagSae::read_origin(&sae).unwrap().unwrap();
    assert_eq!(
        (origin.model.as_str(), origin.hook_layer),
        ("NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr", 0)
    );
    let corpus = corpus(&dir);
    small_dashboard_of(&run, sae_s, &corpus);
    let d = attn_saes::dashboard::build::read(&sae.join("dashboard.safetensors")).unwrap();
    assert_eq!(
        d.meta.model.name,
        "NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr"
    );
    // `text` on the SAE: its activations are those of the SAE on the fixture's own hook_z
    // (TransformerLens' reference for seq1 of attn2l_tiny, checked in lm_parity).
    let r = Reference::load("attn2l_tiny/reference.safetensors");
    let ids = r.tokens("seq1.tokens");
    let loaded =
        attn_saes::lm::load_from_path(&common::fixture("attn2l_tiny"), "t", &Device::flex())
            .unwrap();
    let text = loaded.tokenizer.decode(&ids[1..], false).unwrap();
    assert_eq!(
        loaded
            .tokenizer
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids(),
        &ids[1..]
    );
    let out = run(&["text", sae_s, &text, "--json"]);
    assert_succeeded(&out);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let imported = BlockDiagSae::load(&sae, &Device::flex()).unwrap();
    let z = r.get("seq1.hook_z.L0");
    let n = ids.len();
    let z: Tensor<3> = Tensor::<1>::from_data(
        TensorData::new(
            z.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [n * d_in],
        ),
        &Device::flex(),
    )
    .reshape([n, 1, d_in]);
    let acts = values(imported.encode(imported.scale_input(z)).1); // [1, n, d_sae]
    let mut compared = 0;
    for (p, per_head) in shown["tokens"]["active"][0]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for pair in per_head.as_array().unwrap() {
            let (f, v) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            let want = acts[p * d_sae + f];
            assert!((v - want).abs() < 1e-4, "token {p} #{f}: {v} vs {want}");
            compared += 1;
        }
    }
    assert!(compared > 10, "only {compared} activations compared");
}

/// A Hugging Face hub on localhost for `HF_ENDPOINT`: the repository info
/// (`/api/models/REPO/revision/main`) and ranged file downloads (`/REPO/resolve/main/FILE`,
/// with the `etag`, `x-repo-commit` and `Content-Range` headers the hub sends), from
/// `files`. Lists the files it served whole (not the metadata probes, `bytes=0-0`).
struct FakeHub {
    base: String,
    served: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(repo: &str, files: Vec<(String, Vec<u8>)>) -> Self {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, repo) = (served.clone(), repo.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").replace("%2B", "+");
                // `Range: bytes=A-B` or `bytes=A-`.
                let (mut from, mut to) = (0usize, None::<usize>);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap_or((r.trim(), ""));
                        from = a.parse().unwrap_or(0);
                        to = b.parse().ok();
                    }
                }
                let mut out = stream;
                let info = format!("/api/models/{repo}/revision/main");
                let resolve = format!("/{repo}/resolve/main/");
                let (status, headers, body) = if path == info {
                    let siblings: Vec<serde_json::Value> = (files.iter())
                        .map(|(n, _)| serde_json::json!({ "rfilename": n }))
                        .collect();
                    let json = serde_json::json!({ "sha": "feedface", "siblings": siblings });
                    ("200 OK", String::new(), json.to_string().into_bytes())
                } else if let Some((name, bytes)) =
                    (path.strip_prefix(&resolve)).and_then(|f| files.iter().find(|(n, _)| n == f))
                {
                    let len = bytes.len();
                    let end = to.map_or(len, |t| (t + 1).min(len));
                    let body = bytes[from.min(end)..end].to_vec();
                    // Not the metadata probe (bytes=0-0): a download.
                    if to.is_none() {
                        log.lock().unwrap().push(name.clone());
                    }
                    let end = (from + body.len()).saturating_sub(1);
                    let etag = format!("{:016x}", name.len() * 7919 + len);
                    let headers = format!(
                        "etag: \"{etag}\"\r\nx-repo-commit: feedface\r\n\
                         Content-Range: bytes {from}-{end}/{len}\r\n"
                    );
                    ("206 Partial Content", headers, body)
                } else {
                    ("404 Not Found", String::new(), b"not found".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
            }
        });
        Self { base, served }
    }
}

/// `import --saelens ORG/NAME --hook-layer L` downloads from the hub (`HF_ENDPOINT`: a
/// local stand-in serving the Kissane fixture as the hub serves files) only the chosen
/// SAE's two files into the Hugging Face cache, imports what PyTorch wrote, and a second
/// import, offline, reads them from the cache the first wrote.
#[test]
fn import_downloads_only_the_chosen_sae_into_the_hub_cache() {
    let repo = "ckkissane/attn-saes-gpt2-small-all-layers";
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(common::fixture("kissane"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.ends_with(".pt") || n.ends_with("_cfg.json"))
        .map(|(n, p)| (n, std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(files.len(), 4);
    let hub = FakeHub::start(repo, files.clone());
    let dir = TempDir::new("attn-saes-kissane", "download");
    let run = |args: &[&str], offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"));
        cmd.args(args)
            .env("HF_HOME", dir.join("hf"))
            .env("HF_ENDPOINT", &hub.base)
            .env("RUST_BACKTRACE", "0")
            .env_remove("HF_HUB_OFFLINE");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd.output().unwrap()
    };
    let sae = dir.join("sae");
    let args = [
        "import",
        "--saelens",
        repo,
        "--hook-layer",
        "1",
        "--out",
        sae.to_str().unwrap(),
    ];
    let out = run(&args, false);
    assert_succeeded(&out);
    let l1 = |n: &str| n.contains("_L1_");
    let mut served = hub.served.lock().unwrap().clone();
    served.sort();
    let mut wanted: Vec<String> = files
        .iter()
        .map(|f| f.0.clone())
        .filter(|n| l1(n))
        .collect();
    wanted.sort();
    assert_eq!(served, wanted, "downloaded the layer's two files only");
    // What was downloaded is the fixture, byte for byte, in the cache's snapshot.
    let snapshot =
        dir.join("hf/hub/models--ckkissane--attn-saes-gpt2-small-all-layers/snapshots/feedface");
    for (name, bytes) in files.iter().filter(|f| l1(&f.0)) {
        assert_eq!(
            &std::fs::read(snapshot.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    let origin = BlockDiagSae::read_origin(&sae).unwrap().unwrap();
    assert_eq!(origin.hook_layer, 1);
    let device = Device::flex();
    let (direct, _) = BlockDiagSae::import_kissane(&snapshot.join(&wanted[0]), 1, &device).unwrap();
    let imported = BlockDiagSae::load(&sae, &device).unwrap();
    assert_eq!(values(imported.w_enc), values(direct.w_enc));
    assert_eq!(values(imported.b_enc), values(direct.b_enc));
    // Offline, from the cache the download wrote; nothing more is asked of the hub.
    let again = dir.join("again");
    let mut args = args;
    args[6] = again.to_str().unwrap();
    let out = run(&args, true);
    assert_succeeded(&out);
    assert_eq!(hub.served.lock().unwrap().len(), 2);
    // A layer the repository does not hold: refused by the hub's list, nothing written.
    let none = dir.join("none");
    args[4] = "7";
    args[6] = none.to_str().unwrap();
    let out = run(&args, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no SAE of layer 7"), "{err}");
    assert!(!none.exists());

    // A repository of SAELens folders from elsewhere (no `attn_saes` block: where it was
    // trained comes from `model_name` and `hook_name`), one per layer: layer 1's folder,
    // block-diagonal over 4 heads, is downloaded and imported as such.
    let (block, _) = BlockDiagSae::import_kissane(
        &common::fixture(
            "kissane/gpt2-small_L0_Hcat_z_lr1.20e-03_l11.00e+00_ds256_bs4096_dc1.00e-06\
             _rsanthropic_rie25000_nr4_v9.pt",
        ),
        4,
        &device,
    )
    .unwrap();
    let folder = dir.join("saelens");
    let hook = attn_saes::sae::io::HookInfo {
        model_name: "gpt2-small".into(),
        hook_layer: 1,
        ..Default::default()
    };
    block.export_saelens(&folder, &hook, None).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("cfg.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("attn_saes");
    let cfg = cfg.to_string().into_bytes();
    let weights = std::fs::read(folder.join("sae_weights.safetensors")).unwrap();
    let mut served = Vec::new();
    for l in [0, 1] {
        served.push((format!("blocks.{l}.attn.hook_z/cfg.json"), cfg.clone()));
        let w = format!("blocks.{l}.attn.hook_z/sae_weights.safetensors");
        served.push((w, weights.clone()));
    }
    served.push(("README.md".into(), b"ARENA-like".to_vec()));
    let arena = "someone/attn-saes-elsewhere";
    let hub = FakeHub::start(arena, served);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args([
            "import",
            "--saelens",
            arena,
            "--hook-layer",
            "1",
            "--n-heads",
            "4",
        ])
        .arg("--out")
        .arg(dir.join("arena"))
        .env("HF_HOME", dir.join("hf"))
        .env("HF_ENDPOINT", &hub.base)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert_succeeded(&out);
    let mut got = hub.served.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            "blocks.1.attn.hook_z/cfg.json",
            "blocks.1.attn.hook_z/sae_weights.safetensors"
        ]
    );
    let imported = BlockDiagSae::load(&dir.join("arena"), &device).unwrap();
    assert_eq!(imported.config.n_heads, 4);
    assert_close(
        "the folder's SAE, downloaded",
        &values(imported.w_dec),
        &values(block.fold().w_dec),
        1e-6,
    );
    let origin = BlockDiagSae::read_origin(&dir.join("arena"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (origin.model.as_str(), origin.hook_layer),
        ("openai-community/gpt2", 1)
    );
}
