//! LM stage: transformer language models in burn with hook points, and their loaders.

pub mod gguf;
#[cfg(not(target_arch = "wasm32"))]
pub mod head_scores;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod load;
pub mod transformer;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tokenizers::Tokenizer;

pub use transformer::{
    Activation, Family, HeadSelection, HookCache, HookRequest, KvCache, Splice, Transformer,
    TransformerConfig, ZConvention, per_token_ce,
};
pub use weights::LoadError;

/// A transformer with its tokenizer and where it came from.
pub struct LoadedModel {
    pub transformer: Transformer,
    pub tokenizer: Tokenizer,
    pub source: PathBuf,
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let error = |message: String| LoadError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let text = crate::vfs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    // tokenizers panics (an `expect` in its decoder deserialiser) on some malformed JSON:
    // check the syntax first, and catch what remains.
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| error(e.to_string()))?;
    std::panic::catch_unwind(|| text.parse::<Tokenizer>())
        .map_err(|_| error("malformed tokenizer (the tokenizers crate panicked on it)".into()))?
        .map_err(|e| error(e.to_string()))
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = crate::vfs::list(dir)
        .ok()?
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(not(target_arch = "wasm32"))]
/// Loads a model from a reference: a directory or file, a hub id such as
/// `openai-community/gpt2`, or an alias (`gpt2`, `gelu-2l`). See [`hub::resolve`].
pub fn load_model(reference: &str, device: &Device) -> Result<LoadedModel, LoadError> {
    let path = hub::resolve(reference)?;
    let name = hub::expand_alias(reference).to_string();
    let mut loaded = load_from_path(&path, &name, device)?;
    // An experiment for GPUs with f16 shaders, measured by scripts/gpu-check.sh before it
    // becomes a flag: the model's matrices in half precision.
    if std::env::var("ATTN_SAES_LM_F16").as_deref() == Ok("1") {
        loaded.transformer =
            loaded
                .transformer
                .with_f16_matmuls()
                .map_err(|e| LoadError::Format {
                    path: path.clone(),
                    format: "model",
                    message: e.to_string(),
                })?;
    }
    Ok(loaded)
}

/// Loads a model from a local file (`.gguf`) or directory.
pub fn load_from_path(path: &Path, name: &str, device: &Device) -> Result<LoadedModel, LoadError> {
    if crate::vfs::is_file(path) {
        if path.extension().is_some_and(|e| e == "gguf") {
            return load::llama_from_gguf(path, name, device);
        }
        return Err(LoadError::Format {
            path: path.to_path_buf(),
            format: "model",
            message: "a model file must be .gguf; pass a directory for other formats".into(),
        });
    }
    if let Some(gguf) = find_file(path, |n| n.ends_with(".gguf")) {
        return load::llama_from_gguf(&gguf, name, device);
    }
    let cfg_path = path.join("config.json");
    if !crate::vfs::exists(&cfg_path) {
        return Err(LoadError::NoWeights {
            dir: path.to_path_buf(),
            looked_for: "config.json with model.safetensors or *.pth, or a .gguf file".into(),
        });
    }
    let cfg = weights::read_json_config(&cfg_path)?;
    let local_tokenizer = path.join("tokenizer.json");
    if cfg.contains_key("n_layers") {
        // TransformerLens checkpoint.
        let weights = find_file(path, |n| n.ends_with("final.pth"))
            .or_else(|| find_file(path, |n| n.ends_with(".pth")))
            .ok_or_else(|| LoadError::NoWeights {
                dir: path.to_path_buf(),
                looked_for: "*final.pth (TransformerLens checkpoint named by config.json)".into(),
            })?;
        let mut transformer = load::tl_from_pth(&cfg_path, &weights, name, device)?;
        let tok_path = if crate::vfs::exists(&local_tokenizer) {
            local_tokenizer
        } else {
            let tok_ref = cfg
                .get("tokenizer_name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| LoadError::NoWeights {
                    dir: path.to_path_buf(),
                    looked_for: "tokenizer.json (config.json names no tokenizer_name)".into(),
                })?;
            #[cfg(not(target_arch = "wasm32"))]
            {
                hub::resolve_tokenizer(tok_ref)?
            }
            #[cfg(target_arch = "wasm32")]
            return Err(LoadError::NoWeights {
                dir: path.to_path_buf(),
                looked_for: format!("tokenizer.json (the hub's {tok_ref} is not fetched here)"),
            });
        };
        let tokenizer = load_tokenizer(&tok_path)?;
        transformer.config.bos_token_id = bos_of(&tokenizer);
        transformer.config.eos_token_ids =
            tokenizer.token_to_id("<|endoftext|>").into_iter().collect();
        return Ok(LoadedModel {
            transformer,
            tokenizer,
            source: weights,
        });
    }
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    let transformer = match model_type {
        "gpt2" | "" => load::gpt2_from_hf(path, name, device)?,
        "llama" | "mistral" => load::llama_from_hf(path, name, device)?,
        other => {
            return Err(LoadError::Config {
                path: cfg_path,
                message: format!("model_type '{other}' is not supported (gpt2, llama)"),
            });
        }
    };
    let tokenizer = load_tokenizer(&local_tokenizer)?;
    Ok(LoadedModel {
        transformer,
        tokenizer,
        source: path.join("model.safetensors"),
    })
}

/// The BOS token of a tokenizer: `<|BOS|>`, `<|endoftext|>`, `<s>` or `<|im_start|>`
/// absent an explicit id.
fn bos_of(tokenizer: &Tokenizer) -> Option<u32> {
    ["<|BOS|>", "<|endoftext|>", "<s>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
}
