//! LM forward parity against `transformers` / `transformer_lens` reference outputs
//! (tests/fixtures/make_fixtures.py), on the CPU backend and on wgpu when available.

mod common;

use attn_saes::lm::{self, HeadSelection, HookRequest, Splice, ZConvention, per_token_ce};
use burn::prelude::*;
use common::*;

const TOL: f64 = 1e-4;

struct Case {
    dir: &'static str,
    name: &'static str,
}

const GPT2: Case = Case {
    dir: "gpt2_tiny",
    name: "gpt2-tiny",
};
const GELU2L: Case = Case {
    dir: "gelu2l_tiny",
    name: "gelu2l-tiny",
};
const ATTN2L: Case = Case {
    dir: "attn2l_tiny",
    name: "attn2l-tiny",
};
const ATTN2L_NOLN: Case = Case {
    dir: "attn2l_noln_tiny",
    name: "attn2l-noln-tiny",
};

fn n_seqs(r: &Reference) -> usize {
    (0..)
        .take_while(|s| r.has(&format!("seq{s}.tokens")))
        .count()
}

fn check_model(case: &Case, model_dir: &str, device_name: &str, device: &Device) {
    let loaded = lm::load_from_path(&fixture(model_dir), case.name, device).unwrap();
    let model = &loaded.transformer;
    let cfg = model.config.clone();
    let reference = Reference::load(&format!("{}/reference.safetensors", case.dir));
    let all_layers: Vec<usize> = (0..cfg.n_layers).collect();
    let tag = |what: &str| format!("{} [{device_name}] {what}", case.dir);
    assert!(n_seqs(&reference) >= 2);
    for s in 0..n_seqs(&reference) {
        let ids = reference.tokens(&format!("seq{s}.tokens"));
        let tokens = model.tokens(std::slice::from_ref(&ids)).unwrap();
        let hooks = HookRequest {
            hook_z: all_layers.clone(),
            pattern: all_layers.clone(),
            resid_post: all_layers.clone(),
            logits: true,
            z_convention: ZConvention::TransformerLens,
            ..Default::default()
        };
        let mut cache = model.run(tokens.clone(), &hooks, None).unwrap();
        let logits = cache.logits.take().unwrap();
        check_logits_and_ce(&tag, s, logits, tokens.clone(), &reference, TOL);
        let raw = model
            .run(
                tokens.clone(),
                &HookRequest {
                    hook_z: all_layers.clone(),
                    z_convention: ZConvention::Raw,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        // hook_z alone (the harvest's request, which skips the last layer's MLP).
        let alone = model
            .run(tokens.clone(), &HookRequest::hook_z(&all_layers), None)
            .unwrap();
        for l in 0..cfg.n_layers {
            for (what, t) in [
                ("hook_z", values(cache.hook_z[&l].clone())),
                ("hook_z", values(alone.hook_z[&l].clone())),
                ("hook_z_raw", values(raw.hook_z[&l].clone())),
                ("pattern", values(cache.pattern[&l].clone())),
                ("resid_post", values(cache.resid_post[&l].clone())),
            ] {
                let name = format!("seq{s}.{what}.L{l}");
                assert_close(&tag(&name), &t, &reference.get(&name).data, TOL);
            }
        }
        // Splice points: zero-ablation of all heads, of each head, and in the raw convention.
        for l in 0..cfg.n_layers {
            let ce_with = |splice: &Splice, conv: ZConvention| {
                let hooks = HookRequest {
                    logits: true,
                    z_convention: conv,
                    ..Default::default()
                };
                let logits = model
                    .run(tokens.clone(), &hooks, Some(splice))
                    .unwrap()
                    .logits
                    .unwrap();
                values(per_token_ce(logits, tokens.clone()))
            };
            let tl = ZConvention::TransformerLens;
            let name = format!("seq{s}.ce_zero_ablate.L{l}");
            let ours = ce_with(&Splice::zero_ablate(l, HeadSelection::All), tl);
            assert_close(&tag(&name), &ours, &reference.get(&name).data, TOL);
            let name = format!("seq{s}.ce_zero_ablate_raw.L{l}");
            let ours = ce_with(
                &Splice::zero_ablate(l, HeadSelection::All),
                ZConvention::Raw,
            );
            assert_close(&tag(&name), &ours, &reference.get(&name).data, TOL);
            for h in 0..cfg.n_heads {
                let name = format!("seq{s}.ce_zero_ablate.L{l}.H{h}");
                let ours = ce_with(&Splice::zero_ablate(l, HeadSelection::One(h)), tl);
                assert_close(&tag(&name), &ours, &reference.get(&name).data, TOL);
            }
            // Identity splice leaves the outputs unchanged.
            let identity = Splice {
                layer: l,
                heads: HeadSelection::All,
                replace: &|z| z,
            };
            let ours = ce_with(&identity, tl);
            assert_close(
                &tag(&format!("seq{s} identity splice L{l}")),
                &ours,
                &reference.get(&format!("seq{s}.ce")).data,
                TOL,
            );
        }
    }
}

#[test]
fn gpt2_hub_layout_matches_transformers_and_transformer_lens() {
    for (name, device) in test_devices() {
        check_model(&GPT2, "gpt2_tiny", name, &device);
    }
}

#[test]
fn gpt2_save_pretrained_layout_loads_the_same_model() {
    // Same weights with `transformer.` prefixes and no mask buffers.
    check_model(&GPT2, "gpt2_tiny_saved", "cpu", &Device::flex());
}

#[test]
fn gelu2l_transformer_lens_pth_matches_transformer_lens() {
    for (name, device) in test_devices() {
        check_model(&GELU2L, "gelu2l_tiny", name, &device);
    }
}

/// An attention-only model with shortformer positions (TransformerLens' attn-only-Nl and
/// attn-only-2l-demo): no MLPs, the positions added to the queries' and keys' inputs only,
/// and hook_z as TransformerLens' `from_pretrained` gives it for such a model (z less b_V).
#[test]
fn attention_only_shortformer_pth_matches_transformer_lens() {
    for (name, device) in test_devices() {
        check_model(&ATTN2L, "attn2l_tiny", name, &device);
    }
}

/// The same without any norm (`normalization_type` null in a config of
/// HookedTransformerConfig's keys, as ARENA's attention-only model): hook_z is again z less
/// b_V.
#[test]
fn attention_only_model_without_norms_matches_transformer_lens() {
    for (name, device) in test_devices() {
        check_model(&ATTN2L_NOLN, "attn2l_noln_tiny", name, &device);
    }
}

#[test]
fn batched_forward_equals_single_sequences() {
    let device = Device::flex();
    let loaded = lm::load_from_path(&fixture("gpt2_tiny"), "gpt2-tiny", &device).unwrap();
    let model = &loaded.transformer;
    let reference = Reference::load("gpt2_tiny/reference.safetensors");
    let ids = reference.tokens("seq1.tokens");
    let half = ids.len() / 2;
    let a = ids[..half].to_vec();
    let b = ids[half..2 * half].to_vec();
    let both = model.tokens(&[a.clone(), b.clone()]).unwrap();
    let z_both = model
        .run(both, &HookRequest::hook_z(&[1]), None)
        .unwrap()
        .hook_z[&1]
        .clone();
    for (i, seq) in [a, b].into_iter().enumerate() {
        let t = model.tokens(&[seq]).unwrap();
        let z = model
            .run(t, &HookRequest::hook_z(&[1]), None)
            .unwrap()
            .hook_z[&1]
            .clone();
        let [_, pos, h, d] = z.dims();
        let row = z_both.clone().slice([i..i + 1, 0..pos, 0..h, 0..d]);
        assert_close(&format!("batch row {i}"), &values(row), &values(z), 1e-5);
    }
}

#[test]
fn bad_requests_are_errors() {
    let device = Device::flex();
    let loaded = lm::load_from_path(&fixture("gpt2_tiny"), "gpt2-tiny", &device).unwrap();
    let model = &loaded.transformer;
    let t = model.tokens(&[vec![1, 2, 3]]).unwrap();
    let err = model
        .run(t.clone(), &HookRequest::hook_z(&[7]), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("layer 7 does not exist"), "{err}");
    let splice = Splice::zero_ablate(0, HeadSelection::One(99));
    let err = model
        .run(t, &HookRequest::logits(), Some(&splice))
        .err()
        .unwrap();
    assert!(err.to_string().contains("head 99"), "{err}");
    let err = model.tokens(&[vec![1, 100_000]]).err().unwrap();
    assert!(err.to_string().contains("100000"), "{err}");
    let err = model.tokens(&[vec![1, 2], vec![3]]).err().unwrap();
    assert!(err.to_string().contains("one length"), "{err}");
}
