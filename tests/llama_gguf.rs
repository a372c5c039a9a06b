//! SmolLM2-135M (Llama architecture, Q4_1 GGUF) against `transformers` loading the same file
//! (tests/fixtures/smollm2/make_reference.py). Skips with a printed reason when the model
//! is not in the asset cache (`attn-saes fetch-demo`); with `ATTN_SAES_REQUIRE_ASSETS=1`
//! (set in CI) a missing model fails instead.

mod common;

use std::path::PathBuf;

use attn_saes::assets::{DEMO_MODEL_FILE, cache_dir as asset_cache};
use attn_saes::lm::{self, HookRequest, LoadedModel, per_token_ce};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use common::*;

fn model_path() -> Option<PathBuf> {
    let p = asset_cache().join(DEMO_MODEL_FILE);
    if p.exists() {
        Some(p)
    } else {
        let why = format!("{} is absent (run `attn-saes fetch-demo`)", p.display());
        assert!(
            std::env::var("ATTN_SAES_REQUIRE_ASSETS").as_deref() != Ok("1"),
            "ATTN_SAES_REQUIRE_ASSETS=1 and {why}"
        );
        println!("SKIPPED: {why}");
        None
    }
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn load(device: &Device) -> Option<LoadedModel> {
    let path = model_path()?;
    Some(lm::load_model(path.to_str().unwrap(), device).unwrap())
}

/// `ln p(ids[i+1] | ids[..=i])`.
fn token_logprobs(model: &LoadedModel, ids: &[u32]) -> Vec<f64> {
    let t = model.transformer.tokens(&[ids.to_vec()]).unwrap();
    let logits = model
        .transformer
        .run(t.clone(), &HookRequest::logits(), None)
        .unwrap()
        .logits
        .unwrap();
    values(per_token_ce(logits, t).neg())
}

#[test]
fn smollm2_logprobs_hook_z_and_perplexity_match_transformers() {
    let device = Device::flex();
    let Some(model) = load(&device) else { return };
    let r = reference();
    let cfg = &model.transformer.config;
    assert_eq!(
        (
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head
        ),
        (30, 576, 9, 3, 64)
    );
    assert_eq!(cfg.bos_token_id, Some(1));
    // Tolerance: same dequantised weights, fp32 through 30 layers.
    const TOL: f64 = 2e-3;
    for s in r["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let want = ids(&s["ids"]);
        let got = model
            .tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got, want, "token ids of {text:?}");
        let lp = token_logprobs(&model, &want);
        assert_close(
            &format!("logprobs {text:?}"),
            &lp,
            &floats(&s["token_logprobs"]),
            TOL,
        );
        let with_bos = ids(&s["with_bos"]["ids"]);
        let lp = token_logprobs(&model, &with_bos);
        assert_close(
            &format!("logprobs with BOS {text:?}"),
            &lp,
            &floats(&s["with_bos"]["token_logprobs"]),
            TOL,
        );
    }
    // hook_z at layer 15 and the logits of the first sentence.
    let first = ids(&r["sentences"][0]["ids"]);
    let t = model.transformer.tokens(&[first]).unwrap();
    let hooks = HookRequest {
        hook_z: vec![15],
        logits: true,
        ..Default::default()
    };
    let cache = model.transformer.run(t.clone(), &hooks, None).unwrap();
    // hook_z alone (the harvest's request, which skips the last layer's MLP).
    let alone = model
        .transformer
        .run(t, &HookRequest::hook_z(&[15]), None)
        .unwrap();
    let z_ref = Reference::load("smollm2/hook_z_L15.safetensors");
    for (what, z) in [("with logits", &cache), ("alone", &alone)] {
        assert_close(
            &format!("hook_z L15 {what}"),
            &values(z.hook_z[&15].clone()),
            &z_ref.get("hook_z").data,
            TOL,
        );
    }
    let l_ref = Reference::load("smollm2/logits_first_sentence.safetensors");
    assert_close(
        "logits",
        &values(cache.logits.unwrap()),
        &l_ref.get("logits").data,
        5e-3,
    );

    // Perplexity of a held-out Shakespeare paragraph.
    let p = &r["perplexity"];
    let lp = token_logprobs(&model, &ids(&p["ids"]));
    assert_close(
        "paragraph logprobs",
        &lp,
        &floats(&p["token_logprobs"]),
        TOL,
    );
    let ppl = (-lp.iter().sum::<f64>() / lp.len() as f64).exp();
    let want = p["perplexity"].as_f64().unwrap();
    println!("perplexity: ours {ppl:.4}, transformers {want:.4}");
    assert!((ppl - want).abs() < 0.01 * want);
}

#[test]
fn capital_of_france_is_paris() {
    let device = Device::flex();
    let Some(model) = load(&device) else { return };
    let ids = model
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let t = model
        .transformer
        .tokens(std::slice::from_ref(&ids))
        .unwrap();
    let logits = model
        .transformer
        .run(t, &HookRequest::logits(), None)
        .unwrap()
        .logits
        .unwrap();
    let v = model.transformer.config.d_vocab;
    let last = log_softmax(logits.slice([0..1, ids.len() - 1..ids.len(), 0..v]), 2);
    let top = last.argmax(2).try_into_vec_as::<i64>().unwrap()[0];
    let piece = model.tokenizer.decode(&[top as u32], false).unwrap();
    println!("top next token: {top} {piece:?}");
    assert_eq!(piece, " Paris");
}

#[test]
fn tricky_tokenization_matches_reference() {
    let device = Device::flex();
    let Some(model) = load(&device) else { return };
    for c in reference()["tokenization_checks"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = model
            .tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got, ids(&c["ids"]), "{text:?}");
    }
}
