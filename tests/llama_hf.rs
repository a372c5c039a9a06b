//! Llama-family Hugging Face loader (`config.json` + `model.safetensors`, `model_type:
//! llama`) against `transformers` (tests/fixtures/make_llama_fixture.py): a tiny random
//! Llama with grouped-query attention (4 query heads, 2 key/value heads), an untied
//! `lm_head` and bfloat16 weights, on the CPU backend and on wgpu when available.

mod common;

use std::path::PathBuf;

use attn_saes::lm::{self, Family, HookRequest};
use burn::prelude::*;
use common::*;

const TOL: f64 = 1e-4;
const DIR: &str = "llama_tiny";

fn n_seqs(r: &Reference) -> usize {
    (0..)
        .take_while(|s| r.has(&format!("seq{s}.tokens")))
        .count()
}

#[test]
fn llama_hf_safetensors_matches_transformers() {
    let reference = Reference::load(&format!("{DIR}/reference.safetensors"));
    assert_eq!(n_seqs(&reference), 2);
    for (device_name, device) in test_devices() {
        let loaded = lm::load_from_path(&fixture(DIR), "llama-tiny", &device).unwrap();
        let model = &loaded.transformer;
        let cfg = &model.config;
        assert_eq!(cfg.family, Family::Llama);
        assert_eq!(
            (
                cfg.n_layers,
                cfg.d_model,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.d_head
            ),
            (2, 64, 4, 2, 16)
        );
        assert_eq!((cfg.d_mlp, cfg.d_vocab, cfg.n_ctx), (96, 400, 64));
        assert_eq!(cfg.norm_eps, 1e-5);
        assert_eq!(cfg.rope_theta, Some(10000.0));
        assert_eq!(cfg.bos_token_id, Some(399));
        assert_eq!(loaded.tokenizer.get_vocab_size(true), 400);
        let tag = |what: &str| format!("{DIR} [{device_name}] {what}");
        for s in 0..n_seqs(&reference) {
            let ids = reference.tokens(&format!("seq{s}.tokens"));
            let tokens = model.tokens(&[ids]).unwrap();
            let hooks = HookRequest {
                hook_z: vec![0, 1],
                logits: true,
                ..Default::default()
            };
            let mut cache = model.run(tokens.clone(), &hooks, None).unwrap();
            let logits = cache.logits.take().unwrap();
            // hook_z alone (the harvest's request, which skips the last layer's MLP).
            let alone = model
                .run(tokens.clone(), &HookRequest::hook_z(&[0, 1]), None)
                .unwrap();
            check_logits_and_ce(&tag, s, logits, tokens, &reference, TOL);
            for l in 0..cfg.n_layers {
                let name = format!("seq{s}.hook_z.L{l}");
                for z in [cache.hook_z[&l].clone(), alone.hook_z[&l].clone()] {
                    assert_eq!(z.dims()[1..], reference.get(&name).shape[..]);
                    assert_close(&tag(&name), &values(z), &reference.get(&name).data, TOL);
                }
            }
        }
    }
}

/// A copy of the fixture whose `config.json` is edited by `edit`.
fn edited_copy(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-llama-hf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(DIR).join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(fixture(DIR).join("config.json")).unwrap();
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    edit(&mut cfg);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    dir
}

/// transformers 5 writes the rotary base only as `rope_parameters.rope_theta` (the fixture's
/// config.json has no top-level `rope_theta`); older versions write top-level `rope_theta`.
/// Both must be read, not defaulted to 10000 (SmolLM2 uses 1e5, Llama 3 5e5).
#[test]
fn rope_theta_is_read_from_rope_parameters() {
    let dir = edited_copy("rope-params", |cfg| {
        cfg["rope_parameters"]["rope_theta"] = serde_json::json!(500000.0);
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        loaded.unwrap().transformer.config.rope_theta,
        Some(500000.0)
    );
}

#[test]
fn legacy_top_level_rope_theta_is_read() {
    let dir = edited_copy("rope-legacy", |cfg| {
        cfg.remove("rope_parameters");
        cfg.insert("rope_theta".into(), serde_json::json!(500000.0));
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        loaded.unwrap().transformer.config.rope_theta,
        Some(500000.0)
    );
}

/// A rotary scaling the loader does not implement (here transformers 5's spelling of Llama
/// 3.1's) must be refused rather than silently ignored.
#[test]
fn unsupported_rope_type_is_refused() {
    let dir = edited_copy("rope-type", |cfg| {
        cfg["rope_parameters"] = serde_json::json!({
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192
        });
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    assert!(loaded.is_err(), "rope_type llama3 was accepted");
}

#[test]
fn legacy_rope_scaling_is_refused() {
    let dir = edited_copy("rope-scaling", |cfg| {
        cfg.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "linear", "factor": 2.0}),
        );
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    let err = loaded.err().expect("rope_scaling was accepted");
    assert!(err.to_string().contains("rope_scaling"), "{err}");
}
