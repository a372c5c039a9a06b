//! Llama-family Hugging Face loader (`config.json` + `model.safetensors`, `model_type:
//! llama`) against `transformers` (tests/fixtures/make_llama_fixture.py): a tiny random
//! Llama with grouped-query attention (4 query heads, 2 key/value heads), an untied
//! `lm_head` and bfloat16 weights, on the CPU backend and on wgpu when available; and the
//! same weights with Llama 3.1's rotary scaling (`llama3_tiny`), from `config.json` and from
//! a GGUF laid out as llama.cpp's converter writes it (`rope_freqs.weight`); a tiny Qwen2
//! (q/k/v biases, tied embedding, Qwen2's pre-tokenizer) and a tiny Qwen3 (per-head q/k
//! RMSNorms, n_heads * d_head != hidden_size) and a tiny SmolLM3 (a layer without rotary
//! positions) from their directories and GGUFs.

mod common;

use std::path::PathBuf;

use attn_saes::lm::transformer::KvCache;
use attn_saes::lm::transformer::RopeScaling;
use attn_saes::lm::{self, Family, HookRequest, ZConvention};
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
    check_against_reference(&fixture(DIR), DIR, None);
}

/// Llama 3.1's rotary scaling (factor 8, low/high frequency factors 1 and 4, original
/// context 32: the fixture's frequencies are kept, blended and divided), from
/// `rope_parameters` in `config.json` and from a GGUF's `rope_freqs.weight`. Plain rotary on
/// these weights gives logits 5.9 away (the fixture's `no_rope_scaling` mutation).
#[test]
fn llama3_rope_scaling_matches_transformers_from_config_and_gguf() {
    let llama3 = fixture("llama3_tiny");
    let dir = assembled_copy("llama3", &llama3.join("config.json"), |_| {});
    let scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 32.0,
    });
    check_against_reference(&dir, "llama3_tiny", Some(&scaling));
    // transformers 4's spelling: top-level rope_theta and rope_scaling.
    let legacy = assembled_copy("llama3-legacy", &llama3.join("config.json"), |cfg| {
        let mut params = cfg.remove("rope_parameters").unwrap();
        cfg.insert("rope_theta".into(), params["rope_theta"].take());
        cfg.insert("rope_scaling".into(), params);
    });
    check_against_reference(&legacy, "llama3_tiny", Some(&scaling));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&legacy).ok();
    check_against_reference(&llama3.join("model.gguf"), "llama3_tiny", None);
}

/// Qwen2 (Qwen2.5's architecture: Llama with biases on q, k and v, here with the lm_head
/// tied): the Hugging Face directory and the GGUF as llama.cpp's converter writes it (`qwen2`
/// architecture, q/k not permuted) give transformers' logits and hook_z; without the biases
/// the logits are 2.0 away (the fixture's `no_qkv_bias` mutation). Both tokenizers give
/// transformers' ids for texts where Qwen2's split (digits one by one) and NFC matter.
#[test]
fn qwen2_matches_transformers_from_hf_and_gguf() {
    let qwen2 = fixture("qwen2_tiny");
    // The directory without its GGUF, which a directory holding one would load instead.
    let hf = qwen2_hf_copy("hf", |_| {});
    check_against_reference(&hf, "qwen2_tiny", None);
    check_against_reference(&qwen2.join("model.gguf"), "qwen2_tiny", None);
    check_tokenizer_ids(&[&hf, &qwen2.join("model.gguf")], "qwen2_tiny");
    std::fs::remove_dir_all(&hf).ok();
}

/// Qwen3 (Llama with an RMSNorm of each query and key head over d_head before the
/// rotation, no biases; here d_head 24, so n_heads * d_head is 96 against hidden_size 64,
/// and the lm_head tied): the Hugging Face directory and the GGUF as llama.cpp's converter
/// writes it (`qwen3` architecture, `attn_q_norm` / `attn_k_norm`, q/k not permuted) give
/// transformers' logits and hook_z, and so does decoding with the key/value cache one token
/// at a time. Without the q/k norms the logits are 0.91 away, with them after the rotation
/// 0.24 (the fixture's `no_qk_norm` and `qk_norm_after_rope` mutations).
#[test]
fn qwen3_matches_transformers_from_hf_and_gguf() {
    let qwen3 = fixture("qwen3_tiny");
    let hf = assembled_copy_from(&qwen3, "qwen3", &qwen3.join("config.json"), |_| {});
    let gguf = qwen3.join("model.gguf");
    check_against_reference(&hf, "qwen3_tiny", None);
    check_against_reference(&gguf, "qwen3_tiny", None);
    check_tokenizer_ids(&[&hf, &gguf], "qwen3_tiny");
    check_decoding(&[&hf, &gguf], "qwen3_tiny");
    std::fs::remove_dir_all(&hf).ok();
}

/// SmolLM3 (Llama whose every fourth layer has no rotary positions; here 4 layers, the
/// last such a "NoPE" layer): the Hugging Face directory (`no_rope_layers` in config.json,
/// or only `no_rope_layer_interval`, or neither: transformers' default of 4) and the GGUF as
/// llama.cpp's converter writes it (`smollm3` architecture, q/k permuted, the interval fixed
/// at 4) give transformers' logits and hook_z, and so does decoding with the key/value cache.
/// Rotating the last layer too puts the logits 0.38 away (the fixture's
/// `rope_on_every_layer` mutation). A `no_rope_layers` of the wrong length, or holding other
/// than 0 and 1, is refused.
#[test]
fn smollm3_matches_transformers_from_hf_and_gguf() {
    let smollm3 = fixture("smollm3_tiny");
    let config = smollm3.join("config.json");
    let hf = assembled_copy_from(&smollm3, "smollm3", &config, |_| {});
    let gguf = smollm3.join("model.gguf");
    check_against_reference(&hf, "smollm3_tiny", None);
    check_against_reference(&gguf, "smollm3_tiny", None);
    check_decoding(&[&hf, &gguf], "smollm3_tiny");
    std::fs::remove_dir_all(&hf).ok();
    let interval = assembled_copy_from(&smollm3, "smollm3-interval", &config, |cfg| {
        cfg.remove("no_rope_layers");
    });
    let default = assembled_copy_from(&smollm3, "smollm3-default", &config, |cfg| {
        cfg.remove("no_rope_layers");
        cfg.remove("no_rope_layer_interval");
    });
    for dir in [interval, default] {
        check_against_reference(&dir, "smollm3_tiny", None);
        std::fs::remove_dir_all(&dir).ok();
    }
    for (flags, says) in [
        (
            serde_json::json!([1, 1, 0]),
            "no_rope_layers has 3 entries for 4 layers",
        ),
        (
            serde_json::json!([1, 1, 2, 0]),
            "should be a list of 0s and 1s",
        ),
    ] {
        let dir = assembled_copy_from(&smollm3, "smollm3-bad", &config, |cfg| {
            cfg.insert("no_rope_layers".into(), flags);
        });
        let err = load_error(&dir);
        std::fs::remove_dir_all(&dir).ok();
        assert!(err.contains(says), "{err}");
    }
}

/// The models at `paths` decode `fixture_dir`'s second sequence through the key/value
/// cache (5 tokens, then one at a time) to transformers' logits at every position, on
/// every test device.
fn check_decoding(paths: &[&std::path::Path], fixture_dir: &str) {
    let reference = Reference::load(&format!("{fixture_dir}/reference.safetensors"));
    let ids = reference.tokens("seq1.tokens");
    let want = reference.get("seq1.logits");
    let v = want.shape[1];
    for path in paths {
        for (device_name, device) in test_devices() {
            let model = lm::load_from_path(path, "tiny", &device)
                .unwrap()
                .transformer;
            let mut cache = KvCache::new();
            let prefill = 5;
            let mut steps = vec![(prefill, model.tokens(&[ids[..prefill].to_vec()]))];
            steps.extend((prefill..ids.len()).map(|p| (p + 1, model.tokens(&[vec![ids[p]]]))));
            for (upto, tokens) in steps {
                let got = model.decode(tokens.unwrap(), &mut cache, None).unwrap();
                let tag = format!("{} [{device_name}] decoded to {upto}", path.display());
                let row = &want.data[(upto - 1) * v..upto * v];
                assert_close(&tag, &values(got.reshape([v])), row, TOL);
            }
        }
    }
}

/// The tokenizers of the models at `paths` give the ids transformers' tokenizer gave
/// (`tokenizer_checks` in `fixture`'s reference.json).
fn check_tokenizer_ids(paths: &[&std::path::Path], fixture_dir: &str) {
    let meta = std::fs::read(fixture(fixture_dir).join("reference.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    let checks = meta["tokenizer_checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    for path in paths {
        let loaded = lm::load_from_path(path, "tiny", &Device::flex()).unwrap();
        for check in checks {
            let text = check["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(check["ids"].clone()).unwrap();
            let got = loaded.tokenizer.encode(text, false).unwrap();
            assert_eq!(got.get_ids(), ids, "{} {text:?}", path.display());
        }
    }
}

/// A Llama with `attention_bias` (q, k, v and o biases) reads all four: qwen2_tiny's weights
/// as such a Llama, with a zero o bias added, give qwen2_tiny's references; without the o
/// bias in the file the loader names it.
#[test]
fn llama_attention_bias_reads_the_four_biases() {
    let dir = qwen2_hf_copy("llama-bias", |cfg| {
        cfg.insert("model_type".into(), serde_json::json!("llama"));
        cfg.insert("attention_bias".into(), serde_json::json!(true));
    });
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let zeros = vec![0u8; 64 * 2]; // bf16 zeros, d_model of them
    let mut tensors = st.tensors();
    let without = safetensors::serialize(tensors.clone(), None).unwrap();
    for l in 0..2 {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![64], &zeros);
        tensors.push((
            format!("model.layers.{l}.self_attn.o_proj.bias"),
            view.unwrap(),
        ));
    }
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    check_against_reference(&dir, "qwen2_tiny", None);
    std::fs::write(dir.join("model.safetensors"), without).unwrap();
    let err = load_error(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert!(err.contains("self_attn.o_proj.bias"), "{err}");
}

/// The error loading the model at `path` gives (the test fails if it loads).
fn load_error(path: &std::path::Path) -> String {
    match lm::load_from_path(path, "t", &Device::flex()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// qwen2_tiny's weights and tokenizer with its `config.json` edited by `edit`.
fn qwen2_hf_copy(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let qwen2 = fixture("qwen2_tiny");
    assembled_copy_from(
        &qwen2,
        &format!("qwen2-{tag}"),
        &qwen2.join("config.json"),
        edit,
    )
}

/// A Qwen2 whose layers attend to a sliding window (`use_sliding_window`, or `layer_types`
/// naming one) is cut to that window as its context: sequences within it give transformers'
/// values (full causal attention there), longer ones are refused rather than run wrongly.
#[test]
fn sliding_window_configs_cut_the_context_to_the_window() {
    type Config = serde_json::Map<String, serde_json::Value>;
    type Edit = fn(&mut Config);
    let edits: [(&str, Edit); 2] = [
        ("use-sliding", |cfg| {
            cfg.remove("layer_types");
            cfg.insert("use_sliding_window".into(), serde_json::json!(true));
            cfg.insert("sliding_window".into(), serde_json::json!(12));
        }),
        ("layer-types", |cfg| {
            cfg.insert(
                "layer_types".into(),
                serde_json::json!(["full_attention", "sliding_attention"]),
            );
            cfg.insert("sliding_window".into(), serde_json::json!(12));
        }),
    ];
    let reference = Reference::load("qwen2_tiny/reference.safetensors");
    for (tag, edit) in edits {
        let dir = qwen2_hf_copy(tag, edit);
        let loaded = lm::load_from_path(&dir, "t", &Device::flex());
        std::fs::remove_dir_all(&dir).ok();
        let model = loaded.unwrap().transformer;
        assert_eq!(model.config.n_ctx, 12, "{tag}");
        // The 9-token sequence is inside the window: transformers' logits.
        let ids = reference.tokens("seq0.tokens");
        let tokens = model.tokens(&[ids]).unwrap();
        let hooks = HookRequest {
            logits: true,
            ..Default::default()
        };
        let logits = model
            .run(tokens.clone(), &hooks, None)
            .unwrap()
            .logits
            .unwrap();
        let tag_of = |what: &str| format!("{tag} {what}");
        check_logits_and_ce(&tag_of, 0, logits, tokens, &reference, TOL);
        // The 20-token one is not.
        let long = model.tokens(&[reference.tokens("seq1.tokens")]).unwrap();
        let err = model
            .run(long, &hooks, None)
            .err()
            .expect("20 tokens ran in a window of 12");
        assert!(err.to_string().contains("context of 12"), "{tag}: {err}");
    }
}

/// A checkpoint in shards (`model.safetensors.index.json` and the files its `weight_map`
/// names, as larger models come) loads as the single file does; a shard missing, or named
/// by a path out of the directory, is refused before anything is read.
#[test]
fn sharded_safetensors_load_as_the_single_file() {
    let dir = assembled_copy("sharded", &fixture(DIR).join("config.json"), |_| {});
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shard_of = |name: &str| match name.contains("layers.1.") || name.starts_with("lm_head") {
        true => "model-00002-of-00002.safetensors",
        false => "model-00001-of-00002.safetensors",
    };
    let mut map = serde_json::Map::new();
    for file in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let part: Vec<_> = (st.tensors().into_iter())
            .filter(|(name, _)| shard_of(name) == file)
            .collect();
        assert!(!part.is_empty());
        for (name, _) in &part {
            map.insert(name.clone(), serde_json::json!(file));
        }
        std::fs::write(dir.join(file), safetensors::serialize(part, None).unwrap()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    check_against_reference(&dir, DIR, None);

    // A shard missing is named.
    let second = dir.join("model-00002-of-00002.safetensors");
    std::fs::rename(&second, dir.join("elsewhere")).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::rename(dir.join("elsewhere"), &second).unwrap();
    // A shard named by a path out of the directory is refused.
    let (tensor, _) = map.iter().next().unwrap();
    let mut escaping = map.clone();
    escaping.insert(tensor.clone(), serde_json::json!("../model.safetensors"));
    let index = serde_json::json!({"weight_map": escaping});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("not a .safetensors file name"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The model at `path` (a directory or a GGUF) gives `reference`'s logits, losses and
/// hook_z on every test device; its rotary scaling is `scaling` where one is given.
fn check_against_reference(
    path: &std::path::Path,
    reference: &str,
    scaling: Option<&Option<RopeScaling>>,
) {
    let name = path.display().to_string();
    let reference_dir = reference;
    let reference = Reference::load(&format!("{reference}/reference.safetensors"));
    // TransformerLens' hook_z (value biases folded), for models with value biases
    // (tests/fixtures/make_tl_reference.py).
    let tl_file = format!("{reference_dir}/tl_reference.safetensors");
    let tl_reference = fixture(&tl_file)
        .exists()
        .then(|| Reference::load(&tl_file));
    assert_eq!(n_seqs(&reference), 2);
    // transformers' hook_z is [pos, n_heads, d_head], one per layer.
    let d_head = reference.get("seq0.hook_z.L0").shape[2];
    let n_layers = (0..)
        .take_while(|l| reference.has(&format!("seq0.hook_z.L{l}")))
        .count();
    let layers: Vec<usize> = (0..n_layers).collect();
    let config = std::fs::read(fixture(reference_dir).join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let d_mlp = config["intermediate_size"].as_u64().unwrap() as usize;
    for (device_name, device) in test_devices() {
        let loaded = lm::load_from_path(path, "llama-tiny", &device).unwrap();
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
            (n_layers, 64, 4, 2, d_head)
        );
        assert_eq!((cfg.d_mlp, cfg.d_vocab, cfg.n_ctx), (d_mlp, 400, 64));
        // A GGUF holds them as f32.
        assert_eq!(cfg.norm_eps as f32, 1e-5);
        assert_eq!(cfg.rope_theta, Some(10000.0));
        if let Some(scaling) = scaling {
            assert_eq!(&cfg.rope_scaling, scaling, "{name}");
        }
        assert_eq!(cfg.bos_token_id, Some(399));
        assert_eq!(loaded.tokenizer.get_vocab_size(true), 400);
        let tag = |what: &str| format!("{name} [{device_name}] {what}");
        for s in 0..n_seqs(&reference) {
            let ids = reference.tokens(&format!("seq{s}.tokens"));
            let tokens = model.tokens(&[ids]).unwrap();
            // hook_z as the checkpoint computes it, transformers' o_proj input.
            let hooks = HookRequest {
                hook_z: layers.clone(),
                logits: true,
                z_convention: ZConvention::Raw,
                ..Default::default()
            };
            let mut cache = model.run(tokens.clone(), &hooks, None).unwrap();
            let logits = cache.logits.take().unwrap();
            // hook_z alone (the harvest's request, which skips the last layer's MLP) in the
            // default convention, TransformerLens': its reference where the model has value
            // biases to fold, else the raw one.
            let alone = model
                .run(tokens.clone(), &HookRequest::hook_z(&layers), None)
                .unwrap();
            check_logits_and_ce(&tag, s, logits, tokens, &reference, TOL);
            for l in 0..cfg.n_layers {
                let name = format!("seq{s}.hook_z.L{l}");
                let tl_want = tl_reference.as_ref().unwrap_or(&reference).get(&name);
                for (z, want) in [
                    (cache.hook_z[&l].clone(), reference.get(&name)),
                    (alone.hook_z[&l].clone(), tl_want),
                ] {
                    assert_eq!(z.dims()[1..], want.shape[..]);
                    assert_close(&tag(&name), &values(z), &want.data, TOL);
                }
            }
        }
    }
}

/// llama_tiny's weights and tokenizer with the `config.json` at `config`, edited by `edit`.
fn assembled_copy(
    tag: &str,
    config: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    assembled_copy_from(&fixture(DIR), tag, config, edit)
}

/// The weights and tokenizer in `weights` with the `config.json` at `config`, edited by
/// `edit`, in a fresh directory.
fn assembled_copy_from(
    weights: &std::path::Path,
    tag: &str,
    config: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-llama-hf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(weights.join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(config).unwrap();
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    edit(&mut cfg);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    dir
}

/// A copy of the fixture whose `config.json` is edited by `edit`.
fn edited_copy(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    assembled_copy(tag, &fixture(DIR).join("config.json"), edit)
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

/// A rotary scaling the loader does not implement (here transformers 5's spelling of
/// YaRN's) must be refused rather than silently ignored, and so must Llama 3.1's with a
/// parameter missing.
#[test]
fn unsupported_rope_type_is_refused() {
    let dir = edited_copy("rope-type", |cfg| {
        cfg["rope_parameters"] = serde_json::json!({
            "rope_type": "yarn",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 8192
        });
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    let err = loaded.err().expect("rope_type yarn was accepted");
    assert!(err.to_string().contains("'yarn'"), "{err}");
    let dir = edited_copy("rope-llama3-partial", |cfg| {
        cfg["rope_parameters"] = serde_json::json!({
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0
        });
    });
    let loaded = lm::load_from_path(&dir, "t", &Device::flex());
    std::fs::remove_dir_all(&dir).ok();
    let err = loaded
        .err()
        .expect("llama3 without its original context was accepted");
    assert!(
        err.to_string().contains("original_max_position_embeddings"),
        "{err}"
    );
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
