//! LM stage: transformer language models in burn with hook points, and their loaders.

mod dequant;
pub mod gguf;
#[cfg(not(target_arch = "wasm32"))]
pub mod head_scores;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod load;
pub mod transformer;
pub mod weights;
#[cfg(not(target_arch = "wasm32"))]
pub mod wgsl_linear;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tokenizers::Tokenizer;

pub use transformer::{
    Activation, Family, HeadSelection, HookCache, HookRequest, KvCache, Prefix, Splice,
    Transformer, TransformerConfig, ZConvention, per_token_ce, per_token_ce_grad,
};
pub use weights::LoadError;

/// A TransformerLens checkpoint's weights (`*final.pth`, else any `.pth`, in `dir`), if
/// `dir` holds one (its `config.json` in TransformerLens' keys).
pub fn transformer_lens_pth(dir: &Path) -> Option<PathBuf> {
    let cfg = weights::read_json_config(&dir.join("config.json")).ok()?;
    if !cfg.contains_key("n_layers") {
        return None;
    }
    pth_in(dir)
}

/// A directory's `*final.pth` (TransformerLens' final checkpoint), else any `.pth`.
fn pth_in(dir: &Path) -> Option<PathBuf> {
    find_file(dir, |n| n.ends_with("final.pth")).or_else(|| find_file(dir, |n| n.ends_with(".pth")))
}

/// Writes the tensors of a PyTorch checkpoint that are floating point (a TransformerLens
/// checkpoint's weights, not its boolean masks) to `out` as f32 safetensors, under the same
/// names: what the browser, which reads no PyTorch files, loads in its place.
#[cfg(not(target_arch = "wasm32"))]
pub fn pth_as_safetensors(pth: &Path, out: &Path) -> anyhow::Result<()> {
    let file = weights::WeightFile::open(pth)?;
    let mut names = file.names();
    names.sort();
    let mut arrays = Vec::new();
    for name in names {
        match file.read(&name) {
            Ok(a) => arrays.push(crate::files::NamedArray::new(name, a.shape, a.data)),
            Err(LoadError::Dtype { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    crate::files::write_safetensors(out, &arrays, None)
}

/// Short names users type, mapped to hub repositories.
pub fn expand_alias(reference: &str) -> &str {
    match reference {
        "gpt2" | "gpt2-small" => "openai-community/gpt2",
        "gpt2-medium" => "openai-community/gpt2-medium",
        "gpt2-large" => "openai-community/gpt2-large",
        "gpt2-xl" => "openai-community/gpt2-xl",
        "distilgpt2" => "distilbert/distilgpt2",
        "gelu-1l" => "NeelNanda/GELU_1L512W_C4_Code",
        "gelu-2l" => "NeelNanda/GELU_2L512W_C4_Code",
        "gelu-3l" => "NeelNanda/GELU_3L512W_C4_Code",
        "gelu-4l" => "NeelNanda/GELU_4L512W_C4_Code",
        "attn-only-1l" => "NeelNanda/Attn_Only_1L512W_C4_Code",
        "attn-only-2l" => "NeelNanda/Attn_Only_2L512W_C4_Code",
        "attn-only-3l" => "NeelNanda/Attn_Only_3L512W_C4_Code",
        "attn-only-4l" => "NeelNanda/Attn_Only_4L512W_C4_Code",
        "attn-only-2l-demo" => "NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr",
        other => other,
    }
}

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
    let name = expand_alias(reference).to_string();
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
            looked_for: "config.json with model.safetensors (or its shards) or *.pth, or a .gguf \
                         file"
                .into(),
        });
    }
    let cfg = weights::read_json_config(&cfg_path)?;
    let local_tokenizer = path.join("tokenizer.json");
    if cfg.contains_key("n_layers") {
        // TransformerLens checkpoint: its `.pth`, or (in the browser, which reads no
        // PyTorch files) the same tensors in a model.safetensors (`serve` converts them).
        let weights = pth_in(path)
            .or_else(|| Some(path.join("model.safetensors")).filter(|p| crate::vfs::exists(p)))
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
        "llama" | "mistral" | "qwen2" | "qwen3" | "smollm3" => {
            load::llama_from_hf(path, name, device)?
        }
        other => {
            return Err(LoadError::Config {
                path: cfg_path,
                message: format!(
                    "model_type '{other}' is not supported (gpt2, llama, mistral, qwen2, qwen3, \
                     smollm3)"
                ),
            });
        }
    };
    let tokenizer = load_tokenizer(&local_tokenizer)?;
    Ok(LoadedModel {
        transformer,
        tokenizer,
        source: [weights::HF_WEIGHTS, weights::HF_WEIGHTS_INDEX]
            .map(|f| path.join(f))
            .into_iter()
            .find(|p| crate::vfs::exists(p))
            .unwrap_or_else(|| path.join(weights::HF_WEIGHTS)),
    })
}

/// One token as text, as a viewer shows it: its decoding where that is whole UTF-8, else
/// its bytes, the incomplete ones as `<0xE6>` (a byte-level BPE token holding part of a
/// character, as CJK text and emoji give, or a byte-fallback `<0xE6>` itself): decoded alone,
/// all of those read as the same U+FFFD. (`<0xE6>`, as SentencePiece names byte tokens,
/// rather than `\xE6`, whose backslash the `{:?}` quoting of tokens would double.)
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    let decoded = tokenizer
        .decode(&[id], false)
        .unwrap_or_else(|_| format!("<{id}>"));
    if !decoded.contains('\u{fffd}') {
        return decoded;
    }
    let Some(raw) = tokenizer.id_to_token(id) else {
        return decoded;
    };
    let bytes: Option<Vec<u8>> = match raw.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
        Some(hex) => u8::from_str_radix(hex, 16).ok().map(|b| vec![b]),
        None => raw.chars().map(byte_level_byte).collect(),
    };
    let Some(bytes) = bytes else {
        return decoded;
    };
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            text.push_str(&format!("<0x{b:02X}>"));
        }
    }
    text
}

/// The byte a character of a byte-level BPE vocabulary (GPT-2's `bytes_to_unicode`) stands
/// for: printable Latin-1 bytes as themselves, the other 68 as U+0100 onwards in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let code = c as u32;
    if code < 256 && printable(code as u8) {
        return Some(code as u8);
    }
    let n = code.checked_sub(256)? as usize;
    (0..=255u8).filter(|&b| !printable(b)).nth(n)
}

/// The BOS token of a tokenizer: `<|BOS|>`, `<|endoftext|>`, `<s>` or `<|im_start|>`
/// absent an explicit id.
fn bos_of(tokenizer: &Tokenizer) -> Option<u32> {
    ["<|BOS|>", "<|endoftext|>", "<s>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// The bytes a token's text stands for: `<0xHH>` as that byte, the rest as UTF-8.
    fn bytes_of(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("<0x") {
            out.extend_from_slice(&rest.as_bytes()[..at]);
            out.push(u8::from_str_radix(&rest[at + 3..at + 5], 16).unwrap());
            assert_eq!(&rest[at + 5..at + 6], ">");
            rest = &rest[at + 6..];
        }
        out.extend_from_slice(rest.as_bytes());
        out
    }

    /// Per-token texts of a byte-level BPE tokenizer put back together give the text, CJK
    /// and emoji split mid-character included (decoded alone, those tokens were all U+FFFD,
    /// so the bytes were lost); whole tokens are their decoding; every byte token is itself.
    #[test]
    fn token_texts_keep_every_byte() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gpt2_tiny/tokenizer.json"
        );
        let tokenizer = load_tokenizer(Path::new(path)).unwrap();
        let text = "The cat 日本語 sat 🙂 on the café mat";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let texts: Vec<String> = ids.iter().map(|&id| token_text(&tokenizer, id)).collect();
        let joined: Vec<u8> = texts.iter().flat_map(|t| bytes_of(t)).collect();
        assert_eq!(String::from_utf8(joined).unwrap(), text, "{texts:?}");
        let escaped = texts.iter().filter(|t| t.contains("<0x")).count();
        assert!(
            escaped >= 8,
            "the CJK and emoji bytes are escaped: {texts:?}"
        );
        for (&id, t) in ids.iter().zip(&texts) {
            let decoded = tokenizer.decode(&[id], false).unwrap();
            if !decoded.contains('\u{fffd}') {
                assert_eq!(t, &decoded);
            }
        }
        // Each of the 256 byte tokens stands for its byte.
        let bytes: Vec<u8> = (0..=255u8).collect();
        for b in bytes {
            let c = std::char::from_u32(match b {
                b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => b as u32,
                _ => {
                    256 + (0..b)
                        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                        .count() as u32
                }
            })
            .unwrap();
            assert_eq!(byte_level_byte(c), Some(b), "{c:?}");
        }
    }
}
