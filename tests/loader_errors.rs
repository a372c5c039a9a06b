//! Bad model files give clear errors that name the file (and tensor), never a panic.

mod common;

use std::path::{Path, PathBuf};

use attn_saes::files::{NamedArray, write_safetensors};
use attn_saes::lm::{self, LoadError};
use burn::prelude::*;
use common::*;

fn temp_copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-loader-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("gpt2_tiny").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match lm::load_from_path(dir, "t", &Device::flex()) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the fixture's weights with `edit` applied to its arrays.
fn rewrite(dir: &Path, edit: impl Fn(&mut Vec<NamedArray>)) {
    let file = attn_saes::lm::weights::WeightFile::open(&dir.join("model.safetensors")).unwrap();
    let mut arrays: Vec<NamedArray> = file
        .names()
        .into_iter()
        .map(|n| {
            let a = file.read(&n).unwrap();
            NamedArray::new(n, a.shape, a.data)
        })
        .collect();
    edit(&mut arrays);
    write_safetensors(&dir.join("model.safetensors"), &arrays, None).unwrap();
}

#[test]
fn truncated_safetensors() {
    let dir = temp_copy("trunc");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_names_the_tensor() {
    let dir = temp_copy("shape");
    rewrite(&dir, |arrays| {
        let a = arrays
            .iter_mut()
            .find(|a| a.name == "h.1.mlp.c_fc.weight")
            .unwrap();
        a.shape = vec![a.shape[1], a.shape[0]];
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("'h.1.mlp.c_fc.weight' has shape [256, 64], expected [64, 256]"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = temp_copy("missing");
    rewrite(&dir, |arrays| arrays.retain(|a| a.name != "ln_f.bias"));
    let msg = load_err(&dir);
    assert!(msg.contains("tensor 'ln_f.bias' is missing"), "{msg}");
}

#[test]
fn wrong_dtype_is_named() {
    let dir = temp_copy("dtype");
    // Rewrite one tensor as I32 by hand.
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let dtype = if n == "wpe.weight" {
                safetensors::Dtype::I32
            } else {
                v.dtype()
            };
            (n.to_string(), dtype, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("'wpe.weight' has dtype I32"), "{msg}");
}

#[test]
fn directory_without_weights() {
    let dir = temp_copy("noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("no model weights found") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let msg = load_err(&empty);
    assert!(msg.contains("no model weights found"), "{msg}");
}

#[test]
fn truncated_pth_and_gguf() {
    let dir = std::env::temp_dir().join(format!("attn-saes-loader-pth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model_final.pth", "tokenizer.json"] {
        std::fs::copy(fixture("gelu2l_tiny").join(f), dir.join(f)).unwrap();
    }
    let pth = dir.join("model_final.pth");
    let bytes = std::fs::read(&pth).unwrap();
    std::fs::write(&pth, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("model_final.pth"), "{msg}");

    let gguf = dir.join("model.gguf");
    let bytes = std::fs::read(fixture("gguf/types.gguf")).unwrap();
    std::fs::write(&gguf, &bytes[..100]).unwrap();
    let msg = load_err(&gguf);
    assert!(msg.contains("model.gguf"), "{msg}");
}

#[test]
fn unknown_reference_says_what_to_do() {
    let err = lm::load_model("/nonexistent/model/dir", &Device::flex())
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::NotFound { .. }));
    assert!(
        err.to_string().contains("neither an existing path"),
        "{err}"
    );
}

/// An attention-only TransformerLens config: `d_mlp` and `act_fn` are not needed (and an
/// unknown act_fn is no error there), `positional_embedding_type` is read as
/// TransformerLens names it, and one not supported is refused, naming it, as is a
/// normalization other than LN or none.
#[test]
fn attention_only_configs_need_no_mlp_sizes_and_name_unsupported_positions() {
    let dir = std::env::temp_dir().join(format!("attn-saes-loader-attn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model_final.pth", "tokenizer.json"] {
        std::fs::copy(fixture("attn2l_tiny").join(f), dir.join(f)).unwrap();
    }
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let write = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut cfg = original.as_object().unwrap().clone();
        edit(&mut cfg);
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    };
    let logits = |dir: &Path| {
        let loaded = lm::load_from_path(dir, "t", &Device::flex()).unwrap();
        let m = &loaded.transformer;
        let tokens = m.tokens(&[vec![399, 5, 17, 5, 17, 40]]).unwrap();
        let hooks = lm::HookRequest::logits();
        values(m.run(tokens, &hooks, None).unwrap().logits.unwrap())
    };
    let want = logits(&fixture("attn2l_tiny"));
    write(&|c| {
        c.remove("d_mlp");
        c.insert("act_fn".into(), "solu_ln".into());
    });
    assert_close("without d_mlp", &logits(&dir), &want, 0.0);
    // TransformerLens' own key, in place of Neel's `shortformer_pos`.
    write(&|c| {
        c.remove("shortformer_pos");
        c.insert("positional_embedding_type".into(), "shortformer".into());
    });
    assert_close("positional_embedding_type", &logits(&dir), &want, 0.0);
    write(&|c| {
        c.insert("positional_embedding_type".into(), "alibi".into());
    });
    let msg = load_err(&dir);
    assert!(msg.contains("positional_embedding_type 'alibi'"), "{msg}");
    write(&|c| {
        c.insert("normalization_type".into(), "RMS".into());
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("normalization_type \"RMS\" is not supported"),
        "{msg}"
    );
    // Without the flag, the model's positions go into the residual stream: not the model.
    write(&|c| {
        c.insert("shortformer_pos".into(), false.into());
    });
    let standard = logits(&dir);
    let diff = (standard.iter().zip(&want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(diff > 0.1, "shortformer_pos ignored: {diff}");
    std::fs::remove_dir_all(dir).unwrap();
    // `info` says what the model is, and no MLP sizes for an attention-only one.
    let info = |model: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["info", "--model"])
            .arg(fixture(model))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.split_once('\n').unwrap().1).unwrap()
    };
    let attn = info("attn2l_tiny");
    assert_eq!(
        (&attn["attn_only"], &attn["shortformer"]),
        (&true.into(), &true.into())
    );
    assert!(
        attn.get("d_mlp").is_none() && attn.get("activation").is_none(),
        "{attn}"
    );
    assert!(attn.get("no_norms").is_none() && attn["norm_eps"].as_f64() > Some(0.0));
    // Nor an epsilon for one without norms.
    let bare = info("attn2l_noln_tiny");
    assert_eq!(bare["no_norms"], true, "{bare}");
    assert!(bare.get("norm_eps").is_none(), "{bare}");
    let gelu = info("gelu2l_tiny");
    assert!(
        gelu.get("attn_only").is_none() && gelu["d_mlp"].as_u64() > Some(0),
        "{gelu}"
    );
    assert!(gelu.get("no_norms").is_none(), "{gelu}");
}
