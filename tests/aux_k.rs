//! The AuxK loss (dead features reconstruct the live ones' error) against a PyTorch
//! reference written from the paper's definition (tests/fixtures/aux_k): burn's autodiff
//! (the reference path, on the CPU backend and on wgpu) and the fused CPU step (its sparse
//! path for TopK k=2, its dense path for BatchTopK k=3). tests/wgsl_step.rs checks the
//! WGSL step's AuxK against the fused CPU step.

mod common;

use attn_saes::sae::{Architecture, BlockDiagSae};
use attn_saes::train::fused_cpu::{
    Activation, AuxK, HostParams, autodiff_reference_aux, loss_and_grads_aux,
};
use burn::prelude::*;
use common::*;

const K_AUX: usize = 4;
const COEF: f64 = 0.25;
const NAMES: [&str; 4] = ["W_enc", "b_enc", "W_dec", "b_dec"];

/// The fixture's SAE with `arch`, its input [H, B, d] and dead mask [H * m].
fn setup(
    r: &Reference,
    arch: Architecture,
    device: &Device,
) -> (BlockDiagSae, Tensor<3>, Vec<bool>) {
    let (sae, x) = sae_from_reference(r, arch, device);
    let dead = r.get("dead").data.iter().map(|&v| v == 1.0).collect();
    (sae, x, dead)
}

fn cases() -> [(&'static str, Architecture); 2] {
    [
        ("topk", Architecture::TopK { k: 2 }),
        ("batchtopk", Architecture::BatchTopK { k: 3 }),
    ]
}

fn check_grads(tag: &str, prefix: &str, grads: &HostParams, r: &Reference) {
    for (name, g) in NAMES.iter().zip(grads.arrays()) {
        let key = format!("{prefix}.grad.{name}");
        let got: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{tag} {key}"), &got, &r.get(&key).data, 2e-5);
    }
}

fn check_scalar(what: &str, got: f64, want: f64) {
    println!("{what}: {got} (reference {want})");
    assert!(
        (got - want).abs() <= 2e-5 * want.abs().max(1.0),
        "{what}: {got} vs reference {want}"
    );
}

#[test]
fn autodiff_aux_k_matches_pytorch_on_each_device() {
    let r = Reference::load("aux_k/reference.safetensors");
    for (device_name, device) in test_devices() {
        for (prefix, arch) in cases() {
            let (sae, x, dead) = setup(&r, arch, &device);
            let aux = AuxK {
                dead: &dead,
                k: K_AUX,
                coef: COEF,
            };
            let (grads, _, terms, aux_term) =
                autodiff_reference_aux(&sae, x, 0.0, Some(&aux)).unwrap();
            let tag = format!("autodiff on {device_name}");
            let first = |t: Tensor<1>| values(t)[0];
            check_scalar(
                &format!("{tag} {prefix}.mse"),
                first(terms.mse),
                r.get(&format!("{prefix}.mse")).data[0],
            );
            check_scalar(
                &format!("{tag} {prefix}.aux"),
                first(aux_term.unwrap()),
                r.get(&format!("{prefix}.aux")).data[0],
            );
            check_scalar(
                &format!("{tag} {prefix}.loss"),
                first(terms.total),
                r.get(&format!("{prefix}.loss")).data[0],
            );
            check_grads(&tag, prefix, &grads, &r);
        }
    }
}

#[test]
fn fused_cpu_aux_k_matches_pytorch() {
    let r = Reference::load("aux_k/reference.safetensors");
    let device = Device::flex();
    for (prefix, arch) in cases() {
        let (sae, x, dead) = setup(&r, arch, &device);
        let [h, b, d] = x.dims();
        let xs: Vec<f32> = x.into_data().try_to_vec().unwrap();
        assert_eq!(xs.len(), h * b * d);
        let p = HostParams::from_sae(&sae).unwrap();
        let mut grads = p.zeros_like();
        let aux = AuxK {
            dead: &dead,
            k: K_AUX,
            coef: COEF,
        };
        let act = Activation::new(arch, 0.0);
        let sums = loss_and_grads_aux(&p, &xs, b, act, Some(&aux), &mut grads);
        check_grads("fused CPU", prefix, &grads, &r);
        check_scalar(
            &format!("fused {prefix}.aux"),
            sums.aux,
            r.get(&format!("{prefix}.aux")).data[0],
        );
        check_scalar(
            &format!("fused {prefix}.mse"),
            sums.mse,
            r.get(&format!("{prefix}.mse")).data[0],
        );
        check_scalar(
            &format!("fused {prefix}.loss"),
            sums.total,
            r.get(&format!("{prefix}.loss")).data[0],
        );
        // Without any dead feature the term vanishes and the loss is the MSE alone.
        let none = vec![false; dead.len()];
        let quiet = AuxK { dead: &none, ..aux };
        let sums = loss_and_grads_aux(&p, &xs, b, act, Some(&quiet), &mut grads);
        assert_eq!(sums.aux, 0.0);
        check_scalar(
            &format!("fused {prefix} without dead features"),
            sums.total,
            r.get(&format!("{prefix}.mse")).data[0],
        );
    }
}
