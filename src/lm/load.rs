//! LM weights: builds a [`Transformer`] from HF GPT-2 safetensors, TransformerLens `.pth`
//! checkpoints (gelu-Nl), and Llama-family GGUF / HF safetensors files.

use std::path::Path;

use burn::prelude::*;

use super::transformer::{
    Activation, Attention, Block, Family, Mlp, Norm, Positions, QkNorm, Transformer,
    TransformerConfig,
};
use super::weights::{HostArray, LoadError, WeightFile, read_json_config};

type Json = std::collections::BTreeMap<String, serde_json::Value>;

fn cfg_usize(cfg: &Json, path: &Path, keys: &[&str]) -> Result<usize, LoadError> {
    for key in keys {
        // `null` (e.g. `"num_key_value_heads": null`) means unset, as in transformers.
        if let Some(v) = cfg.get(*key).filter(|v| !v.is_null()) {
            return v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| LoadError::Config {
                    path: path.to_path_buf(),
                    message: format!("'{key}' should be a non-negative integer, found {v}"),
                });
        }
    }
    Err(LoadError::Config {
        path: path.to_path_buf(),
        message: format!("missing '{}'", keys.join("' or '")),
    })
}

fn cfg_f64(cfg: &Json, key: &str, default: f64) -> f64 {
    cfg.get(key).and_then(|v| v.as_f64()).unwrap_or(default)
}

/// A config's token id or list of ids under `key` (`eos_token_id` is either).
fn cfg_token_ids(cfg: &Json, key: &str) -> Vec<u32> {
    match cfg.get(key) {
        Some(serde_json::Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
        None => Vec::new(),
    }
}

fn cfg_str<'a>(cfg: &'a Json, key: &str) -> Option<&'a str> {
    cfg.get(key).and_then(|v| v.as_str())
}

/// Largest context, in positions, a model may declare. The rotary tables of a Llama
/// model are built eagerly at load time (`2 * n_ctx * d_head` floats, see
/// `transformer::rotary_tables`), so a bogus `context_length` /
/// `max_position_embeddings` would allocate without bound. A declared context above this
/// is an error (rather than tables built lazily): the forward pass indexes the tables
/// directly, and 2^20 positions is above every model this crate loads (1 GiB of tables at
/// `d_head` 128).
pub const MAX_CONTEXT: usize = 1 << 20;

/// `(key, value)` pairs that must all be positive, for the config at `path`.
fn check_positive(path: &Path, sizes: &[(&str, usize)]) -> Result<(), LoadError> {
    for (key, value) in sizes {
        if *value == 0 {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                message: format!("{key} is 0; it must be positive"),
            });
        }
    }
    Ok(())
}

/// `n_ctx` (read from `key`) is at most [`MAX_CONTEXT`].
fn check_context(path: &Path, key: &str, n_ctx: usize) -> Result<(), LoadError> {
    if n_ctx > MAX_CONTEXT {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            message: format!(
                "{key} is {n_ctx}, more than the {MAX_CONTEXT} positions supported \
                 (the rotary tables are built for the whole context at load time)"
            ),
        });
    }
    Ok(())
}

/// How a Llama config file spells each size, for error messages.
struct LlamaKeys {
    n_layers: String,
    d_model: String,
    n_heads: String,
    n_kv_heads: String,
    d_head: String,
    d_mlp: String,
    d_vocab: String,
    n_ctx: String,
}

/// Checks a Llama config read from `path` (config.json or a GGUF file's metadata) before
/// anything is allocated from it: every size positive, whole groups of query heads per
/// key/value head, an even `d_head` (rotary pairs), a context within [`MAX_CONTEXT`], and
/// weight sizes whose products fit in `usize`.
fn check_llama_config(
    config: &TransformerConfig,
    path: &Path,
    keys: &LlamaKeys,
) -> Result<(), LoadError> {
    let bad = |message: String| LoadError::Config {
        path: path.to_path_buf(),
        message,
    };
    check_positive(
        path,
        &[
            (&keys.n_layers, config.n_layers),
            (&keys.d_model, config.d_model),
            (&keys.n_heads, config.n_heads),
            (&keys.n_kv_heads, config.n_kv_heads),
            (&keys.d_head, config.d_head),
            (&keys.d_mlp, config.d_mlp),
            (&keys.d_vocab, config.d_vocab),
            (&keys.n_ctx, config.n_ctx),
        ],
    )?;
    if !config.n_heads.is_multiple_of(config.n_kv_heads) {
        return Err(bad(format!(
            "{} ({}) is not a multiple of {} ({})",
            keys.n_heads, config.n_heads, keys.n_kv_heads, config.n_kv_heads
        )));
    }
    if !config.d_head.is_multiple_of(2) {
        return Err(bad(format!(
            "{} is {}; rotary embeddings need an even head size of at least 2",
            keys.d_head, config.d_head
        )));
    }
    check_context(path, &keys.n_ctx, config.n_ctx)?;
    let (d, dh) = (config.d_model, config.d_head);
    let qkv_heads = config
        .n_kv_heads
        .checked_mul(2)
        .and_then(|kv| kv.checked_add(config.n_heads));
    let products = [
        qkv_heads.and_then(|h| h.checked_mul(dh)?.checked_mul(d)),
        config.d_mlp.checked_mul(d).and_then(|n| n.checked_mul(2)),
        config.d_vocab.checked_mul(d),
        config.n_ctx.checked_mul(dh),
    ];
    if products.iter().any(Option::is_none) {
        return Err(bad(format!(
            "sizes too large: {} {d}, {} {}, {} {}, {} {dh}, {} {}, {} {}",
            keys.d_model,
            keys.n_heads,
            config.n_heads,
            keys.n_kv_heads,
            config.n_kv_heads,
            keys.d_head,
            keys.d_mlp,
            config.d_mlp,
            keys.d_vocab,
            config.d_vocab
        )));
    }
    Ok(())
}

/// `ln1.b @ W_V + b_V` per head: the constant TransformerLens folds out of hook_z.
/// `w_v`: [d_model, n_heads d_head]; returns [n_heads, d_head].
fn z_fold(
    ln_b: Option<&Tensor<1>>,
    w_v: Tensor<2>,
    b_v: Option<Tensor<1>>,
    n_heads: usize,
    d_head: usize,
    device: &Device,
) -> Tensor<2> {
    let mut fold = Tensor::<1>::zeros([n_heads * d_head], device);
    if let Some(b) = ln_b {
        fold = fold
            + b.clone()
                .unsqueeze::<2>()
                .matmul(w_v)
                .reshape([n_heads * d_head]);
    }
    if let Some(b_v) = b_v {
        fold = fold + b_v;
    }
    fold.reshape([n_heads, d_head])
}

/// GPT-2 family from a Hugging Face directory: `config.json` + `model.safetensors` (or its
/// shards, [`super::weights::HfWeights`]).
/// Accepts the hub layout (no prefix, `attn.bias` buffers) and `save_pretrained`'s
/// (`transformer.` prefix, no buffers).
pub fn gpt2_from_hf(dir: &Path, name: &str, device: &Device) -> Result<Transformer, LoadError> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json_config(&cfg_path)?;
    let n_layers = cfg_usize(&cfg, &cfg_path, &["n_layer", "num_hidden_layers"])?;
    let n_heads = cfg_usize(&cfg, &cfg_path, &["n_head", "num_attention_heads"])?;
    let d_model = cfg_usize(&cfg, &cfg_path, &["n_embd", "hidden_size"])?;
    let n_ctx = cfg_usize(&cfg, &cfg_path, &["n_positions", "n_ctx"])?;
    let d_vocab = cfg_usize(&cfg, &cfg_path, &["vocab_size"])?;
    let d_mlp = match cfg.get("n_inner").and_then(|v| v.as_u64()) {
        Some(n) => n as usize,
        None => d_model.saturating_mul(4),
    };
    check_positive(
        &cfg_path,
        &[
            ("n_layer", n_layers),
            ("n_head", n_heads),
            ("n_embd", d_model),
            ("n_positions", n_ctx),
            ("vocab_size", d_vocab),
            ("n_inner", d_mlp),
        ],
    )?;
    if d_model % n_heads != 0 {
        return Err(LoadError::Config {
            path: cfg_path,
            message: format!("n_embd {d_model} is not divisible by n_head {n_heads}"),
        });
    }
    let activation = match cfg_str(&cfg, "activation_function").unwrap_or("gelu_new") {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
        "gelu" => Activation::Gelu,
        other => {
            return Err(LoadError::Config {
                path: cfg_path,
                message: format!("activation_function '{other}' is not supported"),
            });
        }
    };
    let d_head = d_model / n_heads;
    let config = TransformerConfig {
        name: name.to_string(),
        family: Family::Gpt2,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp,
        d_vocab,
        n_ctx,
        norm_eps: cfg_f64(&cfg, "layer_norm_epsilon", 1e-5),
        activation,
        rope_theta: None,
        rope_scaling: None,
        bos_token_id: Some(
            cfg.get("bos_token_id")
                .and_then(|v| v.as_u64())
                .unwrap_or(50256) as u32,
        ),
        eos_token_ids: cfg_token_ids(&cfg, "eos_token_id"),
        attn_only: false,
        shortformer: false,
        no_norms: false,
    };

    let file = super::weights::HfWeights::open(dir)?;
    let prefix = if file.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let read = |n: &str, s: &[usize]| file.read_shaped(n, s);
    let t1 = |n: &str, s: usize| -> Result<Tensor<1>, LoadError> {
        Ok(read(&format!("{prefix}{n}"), &[s])?.into_tensor(device))
    };
    let t2 = |n: &str, s: [usize; 2]| -> Result<Tensor<2>, LoadError> {
        Ok(read(&format!("{prefix}{n}"), &s)?.into_tensor(device))
    };
    let eps = config.norm_eps;
    let approximate = activation == Activation::GeluNew;

    // No capacity from the config: a bogus layer count fails at its first missing tensor.
    let mut blocks = Vec::new();
    for i in 0..n_layers {
        let p = format!("h.{i}.");
        let ln1_b = t1(&format!("{p}ln_1.bias"), d_model)?;
        let w_qkv = t2(&format!("{p}attn.c_attn.weight"), [d_model, 3 * d_model])?;
        let b_qkv = t1(&format!("{p}attn.c_attn.bias"), 3 * d_model)?;
        let fold = z_fold(
            Some(&ln1_b),
            w_qkv.clone().slice([0..d_model, 2 * d_model..3 * d_model]),
            Some(b_qkv.clone().slice(2 * d_model..3 * d_model)),
            n_heads,
            d_head,
            device,
        );
        blocks.push(Block {
            norm1: Norm::Layer {
                w: t1(&format!("{p}ln_1.weight"), d_model)?,
                b: ln1_b,
                eps,
            },
            attn: Attention {
                w_qkv,
                b_qkv: Some(b_qkv),
                w_o: t2(&format!("{p}attn.c_proj.weight"), [d_model, d_model])?,
                b_o: Some(t1(&format!("{p}attn.c_proj.bias"), d_model)?),
                z_fold: Some(fold),
                qk_norm: None,
                no_rope: false,
            },
            mlp: Some((
                Norm::Layer {
                    w: t1(&format!("{p}ln_2.weight"), d_model)?,
                    b: t1(&format!("{p}ln_2.bias"), d_model)?,
                    eps,
                },
                Mlp::Gelu {
                    w_in: t2(&format!("{p}mlp.c_fc.weight"), [d_model, d_mlp])?,
                    b_in: t1(&format!("{p}mlp.c_fc.bias"), d_mlp)?,
                    w_out: t2(&format!("{p}mlp.c_proj.weight"), [d_mlp, d_model])?,
                    b_out: t1(&format!("{p}mlp.c_proj.bias"), d_model)?,
                    approximate,
                },
            )),
        });
    }
    let w_e = t2("wte.weight", [d_vocab, d_model])?;
    let tied = cfg
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let w_u = if !tied && file.contains("lm_head.weight") {
        read("lm_head.weight", &[d_vocab, d_model])?
            .into_tensor::<2>(device)
            .transpose()
    } else {
        w_e.clone().transpose()
    };
    Ok(Transformer {
        positions: Positions::Learned(t2("wpe.weight", [n_ctx, d_model])?),
        norm_final: Norm::Layer {
            w: t1("ln_f.weight", d_model)?,
            b: t1("ln_f.bias", d_model)?,
            eps,
        },
        w_e,
        blocks,
        w_u,
        b_u: None,
        device: device.clone(),
        config,
    })
}

/// A TransformerLens-format checkpoint (`config.json` with HookedTransformerConfig keys and a
/// pickled state dict, e.g. `NeelNanda/GELU_2L512W_C4_Code`'s `model_final.pth`).
pub fn tl_from_pth(
    cfg_path: &Path,
    weights_path: &Path,
    name: &str,
    device: &Device,
) -> Result<Transformer, LoadError> {
    let cfg = read_json_config(cfg_path)?;
    let n_layers = cfg_usize(&cfg, cfg_path, &["n_layers"])?;
    let d_model = cfg_usize(&cfg, cfg_path, &["d_model"])?;
    let n_heads = cfg_usize(&cfg, cfg_path, &["n_heads"])?;
    let d_head = cfg_usize(&cfg, cfg_path, &["d_head"])?;
    // Attention-only models (TransformerLens' attn-only-Nl) have no MLPs; their d_mlp and
    // act_fn, if given, mean nothing.
    let attn_only = cfg.get("attn_only").and_then(|v| v.as_bool()) == Some(true);
    let d_mlp = match attn_only {
        true => 0,
        false => cfg_usize(&cfg, cfg_path, &["d_mlp"])?,
    };
    let d_vocab = cfg_usize(&cfg, cfg_path, &["d_vocab"])?;
    let n_ctx = cfg_usize(&cfg, cfg_path, &["n_ctx"])?;
    let mut sizes = vec![
        ("n_layers", n_layers),
        ("d_model", d_model),
        ("n_heads", n_heads),
        ("d_head", d_head),
        ("d_vocab", d_vocab),
        ("n_ctx", n_ctx),
    ];
    if !attn_only {
        sizes.push(("d_mlp", d_mlp));
    }
    check_positive(cfg_path, &sizes)?;
    let bad = |message: String| LoadError::Config {
        path: cfg_path.to_path_buf(),
        message,
    };
    let activation = match (attn_only, cfg_str(&cfg, "act_fn").unwrap_or("gelu")) {
        (true, _) | (false, "gelu") => Activation::Gelu,
        (false, "gelu_new") => Activation::GeluNew,
        (false, other) => {
            return Err(bad(format!(
                "act_fn '{other}' is not supported (gelu, gelu_new)"
            )));
        }
    };
    // TransformerLens configs say `normalization_type`, Neel's training configs
    // `normalization`: LN when neither is there, none when it is null (ARENA's
    // attention-only model).
    let normalization = ["normalization_type", "normalization"]
        .iter()
        .find_map(|k| cfg.get(*k));
    let layer_norm = match normalization {
        None => true,
        Some(serde_json::Value::Null) => false,
        Some(v) if v.as_str() == Some("LN") => true,
        Some(other) => {
            return Err(bad(format!(
                "normalization_type {other} is not supported (LN, or null for none)"
            )));
        }
    };
    // Neel's training configs say `shortformer_pos`, TransformerLens'
    // `positional_embedding_type`.
    let shortformer = match cfg_str(&cfg, "positional_embedding_type") {
        Some("shortformer") => true,
        None | Some("standard") => {
            cfg.get("shortformer_pos").and_then(|v| v.as_bool()) == Some(true)
        }
        Some(other) => {
            return Err(bad(format!(
                "positional_embedding_type '{other}' is not supported (standard, shortformer)"
            )));
        }
    };
    let config = TransformerConfig {
        name: name.to_string(),
        family: Family::Gpt2,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp,
        d_vocab,
        n_ctx,
        norm_eps: cfg
            .get("eps")
            .or_else(|| cfg.get("ln_eps"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5),
        activation,
        rope_theta: None,
        rope_scaling: None,
        bos_token_id: None,
        // Set from the tokenizer, as BOS is (`lm::load_from_path`).
        eos_token_ids: Vec::new(),
        attn_only,
        shortformer,
        no_norms: !layer_norm,
    };
    let file = WeightFile::open(weights_path)?;
    let t1 = |n: &str, s: usize| file.tensor::<1>(n, [s], device);
    let t2 = |n: &str, s: [usize; 2]| file.tensor::<2>(n, s, device);
    let hd = n_heads * d_head;
    // [H, d_model, d_head] -> [d_model, H d_head]
    let w_in_heads = |n: &str| -> Result<Tensor<2>, LoadError> {
        Ok(file
            .tensor::<3>(n, [n_heads, d_model, d_head], device)?
            .swap_dims(0, 1)
            .reshape([d_model, hd]))
    };
    let b_heads = |n: &str| -> Result<Tensor<1>, LoadError> {
        Ok(file
            .tensor::<2>(n, [n_heads, d_head], device)?
            .reshape([hd]))
    };
    let eps = config.norm_eps;
    // `NAME.w` and `NAME.b`, or nothing in a model without norms.
    let layer_norm_or_none = |name: &str| -> Result<Norm, LoadError> {
        Ok(match layer_norm {
            true => Norm::Layer {
                w: t1(&format!("{name}.w"), d_model)?,
                b: t1(&format!("{name}.b"), d_model)?,
                eps,
            },
            false => Norm::Identity,
        })
    };
    // No capacity from the config: a bogus layer count fails at its first missing tensor.
    let mut blocks = Vec::new();
    for l in 0..n_layers {
        let p = format!("blocks.{l}.");
        let norm1 = layer_norm_or_none(&format!("{p}ln1"))?;
        let w_v = w_in_heads(&format!("{p}attn.W_V"))?;
        let b_v = b_heads(&format!("{p}attn.b_V"))?;
        // TransformerLens does not fold a shortformer model's norms (`from_pretrained`
        // turns fold_ln off: the positions are added after them), so its hook_z is z less
        // b_V alone, as a model without norms.
        let ln1_b = match &norm1 {
            Norm::Layer { b, .. } if !shortformer => Some(b),
            _ => None,
        };
        let fold = z_fold(
            ln1_b,
            w_v.clone(),
            Some(b_v.clone()),
            n_heads,
            d_head,
            device,
        );
        let w_qkv = Tensor::cat(
            vec![
                w_in_heads(&format!("{p}attn.W_Q"))?,
                w_in_heads(&format!("{p}attn.W_K"))?,
                w_v,
            ],
            1,
        );
        let b_qkv = Tensor::cat(
            vec![
                b_heads(&format!("{p}attn.b_Q"))?,
                b_heads(&format!("{p}attn.b_K"))?,
                b_v,
            ],
            0,
        );
        blocks.push(Block {
            norm1,
            attn: Attention {
                w_qkv,
                b_qkv: Some(b_qkv),
                w_o: file
                    .tensor::<3>(&format!("{p}attn.W_O"), [n_heads, d_head, d_model], device)?
                    .reshape([hd, d_model]),
                b_o: Some(t1(&format!("{p}attn.b_O"), d_model)?),
                z_fold: Some(fold),
                qk_norm: None,
                no_rope: false,
            },
            mlp: match attn_only {
                true => None,
                false => Some((
                    layer_norm_or_none(&format!("{p}ln2"))?,
                    Mlp::Gelu {
                        w_in: t2(&format!("{p}mlp.W_in"), [d_model, d_mlp])?,
                        b_in: t1(&format!("{p}mlp.b_in"), d_mlp)?,
                        w_out: t2(&format!("{p}mlp.W_out"), [d_mlp, d_model])?,
                        b_out: t1(&format!("{p}mlp.b_out"), d_model)?,
                        approximate: activation == Activation::GeluNew,
                    },
                )),
            },
        });
    }
    Ok(Transformer {
        w_e: t2("embed.W_E", [d_vocab, d_model])?,
        positions: match (shortformer, t2("pos_embed.W_pos", [n_ctx, d_model])?) {
            (true, w_pos) => Positions::Shortformer(w_pos),
            (false, w_pos) => Positions::Learned(w_pos),
        },
        blocks,
        norm_final: layer_norm_or_none("ln_final")?,
        w_u: t2("unembed.W_U", [d_model, d_vocab])?,
        b_u: Some(t1("unembed.b_U", d_vocab)?),
        device: device.clone(),
        config,
    })
}

/// Transposes a row-major `[rows, cols]` host array.
pub(crate) fn transpose(a: &HostArray) -> HostArray {
    let (rows, cols) = (a.shape[0], a.shape[1]);
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a.data[r * cols + c];
        }
    }
    HostArray::new(vec![cols, rows], out)
}

/// Llama-family weights in Hugging Face naming and layout (`[out, in]` matrices,
/// half-split rotary q/k), whatever file they came from.
type ReadWeight<'a> = Box<dyn Fn(&str, &[usize]) -> Result<HostArray, LoadError> + 'a>;

struct LlamaSource<'a> {
    get: ReadWeight<'a>,
}

/// What a Llama-family attention has beyond Llama's: biases on the q, k and v projections
/// (Qwen2's; a Llama's or Qwen3's with `attention_bias`), on the output projection (a
/// Llama's or Qwen3's with `attention_bias`), RMSNorms of each query and key head (Qwen3's
/// `q_norm` / `k_norm`), and layers without rotary positions (SmolLM3's NoPE layers).
#[derive(Clone, Debug, Default, PartialEq)]
struct AttnParts {
    qkv_bias: bool,
    o_bias: bool,
    qk_norm: bool,
    no_rope_layers: Vec<usize>,
}

fn build_llama(
    config: TransformerConfig,
    src: &LlamaSource,
    tied: bool,
    parts: AttnParts,
    device: &Device,
) -> Result<Transformer, LoadError> {
    let (d, h, hkv, dh, d_mlp, v) = (
        config.d_model,
        config.n_heads,
        config.n_kv_heads,
        config.d_head,
        config.d_mlp,
        config.d_vocab,
    );
    let eps = config.norm_eps;
    let vec1 = |name: &str, n: usize| -> Result<Tensor<1>, LoadError> {
        Ok((src.get)(name, &[n])?.into_tensor(device))
    };
    // HF `[out, in]` -> our `[in, out]`.
    let mat = |name: &str, out: usize, inp: usize| -> Result<Tensor<2>, LoadError> {
        Ok(transpose(&(src.get)(name, &[out, inp])?).into_tensor(device))
    };
    // No capacity from the config: a bogus layer count fails at its first missing tensor.
    let mut blocks = Vec::new();
    for i in 0..config.n_layers {
        let p = format!("model.layers.{i}.");
        let w_qkv = Tensor::cat(
            vec![
                mat(&format!("{p}self_attn.q_proj.weight"), h * dh, d)?,
                mat(&format!("{p}self_attn.k_proj.weight"), hkv * dh, d)?,
                mat(&format!("{p}self_attn.v_proj.weight"), hkv * dh, d)?,
            ],
            1,
        );
        let b_qkv = match parts.qkv_bias {
            true => Some(Tensor::cat(
                vec![
                    vec1(&format!("{p}self_attn.q_proj.bias"), h * dh)?,
                    vec1(&format!("{p}self_attn.k_proj.bias"), hkv * dh)?,
                    vec1(&format!("{p}self_attn.v_proj.bias"), hkv * dh)?,
                ],
                0,
            )),
            false => None,
        };
        // TransformerLens folds the value biases into b_O (`fold_value_biases`), so its hook_z
        // is the raw one less each query head's value bias (its key/value head's).
        let z_fold = b_qkv.as_ref().map(|b| {
            let b_v = b.clone().narrow(0, (h + hkv) * dh, hkv * dh);
            (b_v.reshape([hkv, 1, dh]).expand([hkv, h / hkv, dh])).reshape([h, dh])
        });
        let b_o = match parts.o_bias {
            true => Some(vec1(&format!("{p}self_attn.o_proj.bias"), d)?),
            false => None,
        };
        let w_gate_up = Tensor::cat(
            vec![
                mat(&format!("{p}mlp.gate_proj.weight"), d_mlp, d)?,
                mat(&format!("{p}mlp.up_proj.weight"), d_mlp, d)?,
            ],
            1,
        );
        blocks.push(Block {
            norm1: Norm::Rms {
                w: vec1(&format!("{p}input_layernorm.weight"), d)?,
                eps,
            },
            attn: Attention {
                w_qkv,
                b_qkv,
                w_o: mat(&format!("{p}self_attn.o_proj.weight"), d, h * dh)?,
                b_o,
                z_fold,
                qk_norm: match parts.qk_norm {
                    true => Some(QkNorm {
                        q: vec1(&format!("{p}self_attn.q_norm.weight"), dh)?,
                        k: vec1(&format!("{p}self_attn.k_norm.weight"), dh)?,
                        eps,
                    }),
                    false => None,
                },
                no_rope: parts.no_rope_layers.contains(&i),
            },
            mlp: Some((
                Norm::Rms {
                    w: vec1(&format!("{p}post_attention_layernorm.weight"), d)?,
                    eps,
                },
                Mlp::SwiGlu {
                    w_gate_up,
                    w_down: mat(&format!("{p}mlp.down_proj.weight"), d, d_mlp)?,
                },
            )),
        });
    }
    let w_e: Tensor<2> = (src.get)("model.embed_tokens.weight", &[v, d])?.into_tensor(device);
    let w_u = if tied {
        w_e.clone().transpose()
    } else {
        mat("lm_head.weight", v, d)?
    };
    let positions = super::transformer::rotary_tables(&config, device);
    Ok(Transformer {
        w_e,
        positions,
        blocks,
        norm_final: Norm::Rms {
            w: vec1("model.norm.weight", d)?,
            eps,
        },
        w_u,
        b_u: None,
        device: device.clone(),
        config,
    })
}

/// Undoes llama.cpp's q/k row permutation (`convert_hf_to_gguf.py`'s `permute`), turning
/// GGUF's adjacent-pair rotary layout into the half-split (HF) one. `a`: `[heads d_head, in]`,
/// or a bias `[heads d_head]`.
fn unpermute_rotary(a: &HostArray, heads: usize) -> HostArray {
    let (rows, cols) = (a.shape[0], a.shape.get(1).copied().unwrap_or(1));
    let dh = rows / heads;
    let half = dh / 2;
    let mut out = vec![0.0; rows * cols];
    for head in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let hf_row = head * dh + s * half + i;
                let gguf_row = head * dh + 2 * i + s;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&a.data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    HostArray::new(a.shape.clone(), out)
}

/// GGUF tensor name for an HF Llama weight name.
fn gguf_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (layer, leaf) = rest.split_once('.').unwrap_or((rest, ""));
        let leaf = match leaf {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.bias" => "attn_output.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => other,
        };
        return format!("blk.{layer}.{leaf}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight",
        "model.norm.weight" => "output_norm.weight",
        "lm_head.weight" => "output.weight",
        other => other,
    }
    .to_string()
}

/// A Llama-architecture GGUF file (e.g. SmolLM2), or a Qwen2 (Qwen2.5), Qwen3 or SmolLM3
/// one, with the tokenizer stored in it.
pub fn llama_from_gguf(
    path: &Path,
    name: &str,
    device: &Device,
) -> Result<super::LoadedModel, LoadError> {
    let file = WeightFile::open(path)?;
    let gguf = file.gguf().ok_or_else(|| LoadError::Format {
        path: path.to_path_buf(),
        format: "GGUF",
        message: "not a GGUF file".into(),
    })?;
    let arch = gguf.get_str("general.architecture")?.to_string();
    if !["llama", "qwen2", "qwen3", "smollm3"].contains(&arch.as_str()) {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            message: format!(
                "architecture '{arch}' is not supported (llama, qwen2, qwen3, smollm3)"
            ),
        });
    }
    // llama.cpp runs Qwen2 and Qwen3 with half-split rotary (NEOX), so its converter leaves
    // q and k as Hugging Face has them; a Llama's and a SmolLM3's are permuted to adjacent
    // pairs.
    let permuted = arch == "llama" || arch == "smollm3";
    let key = |k: &str| format!("{arch}.{k}");
    let size = |k: &str| -> Result<usize, LoadError> {
        let v = gguf.get_u64(&key(k))?;
        usize::try_from(v).map_err(|_| LoadError::Config {
            path: path.to_path_buf(),
            message: format!("{} is {v}, too large", key(k)),
        })
    };
    let optional_size = |k: &str| -> Result<Option<usize>, LoadError> {
        match gguf.get(&key(k)) {
            None => Ok(None),
            Some(_) => size(k).map(Some),
        }
    };
    let d_model = size("embedding_length")?;
    let n_heads = size("attention.head_count")?;
    let n_kv_heads = optional_size("attention.head_count_kv")?.unwrap_or(n_heads);
    let d_head = optional_size("attention.key_length")?.unwrap_or(d_model / n_heads.max(1));
    let n_ctx = size("context_length")?;
    // Checked before the tokenizer is built, which allocates from the vocabulary.
    check_context(path, &key("context_length"), n_ctx)?;
    let embedding =
        gguf.tensor_info("token_embd.weight")
            .ok_or_else(|| LoadError::MissingTensor {
                path: path.to_path_buf(),
                tensor: "token_embd.weight".into(),
            })?;
    // [vocab, d_model]; a tensor of another rank (even 0-dimensional) is an error here
    // rather than a panic.
    let d_vocab = match embedding.shape()[..] {
        [d_vocab, _] => d_vocab,
        ref other => {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                format: "GGUF",
                message: format!(
                    "tensor 'token_embd.weight' has shape {other:?} ({} dimensions), expected \
                     [vocab_size, {d_model}]",
                    other.len()
                ),
            });
        }
    };
    let mut config = TransformerConfig {
        name: name.to_string(),
        family: Family::Llama,
        n_layers: size("block_count")?,
        d_model,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: size("feed_forward_length")?,
        d_vocab,
        n_ctx,
        norm_eps: gguf
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        activation: Activation::Silu,
        rope_theta: Some(gguf.get_f64(&key("rope.freq_base")).unwrap_or(10000.0)),
        rope_scaling: None,
        bos_token_id: gguf.bos_token_id(),
        eos_token_ids: gguf.eos_token_id().into_iter().collect(),
        attn_only: false,
        shortformer: false,
        no_norms: false,
    };
    check_llama_config(
        &config,
        path,
        &LlamaKeys {
            n_layers: key("block_count"),
            d_model: key("embedding_length"),
            n_heads: key("attention.head_count"),
            n_kv_heads: key("attention.head_count_kv"),
            d_head: if gguf.get(&key("attention.key_length")).is_some() {
                key("attention.key_length")
            } else {
                format!(
                    "{} / {} (no {})",
                    key("embedding_length"),
                    key("attention.head_count"),
                    key("attention.key_length")
                )
            },
            d_mlp: key("feed_forward_length"),
            d_vocab: "the row count of tensor 'token_embd.weight'".into(),
            n_ctx: key("context_length"),
        },
    )?;
    // Llama 3.1's scaled rotary frequencies, as llama.cpp's converter writes them: one
    // factor per frequency, each dividing it.
    if file.contains("rope_freqs.weight") {
        let factors = file.read_shaped("rope_freqs.weight", &[d_head / 2])?.data;
        if let Some(bad) = factors.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                format: "GGUF",
                message: format!("tensor 'rope_freqs.weight' holds {bad}, not a positive factor"),
            });
        }
        config.rope_scaling = Some(super::transformer::RopeScaling::Factors(
            factors.iter().map(|&x| f64::from(x)).collect(),
        ));
    }
    let tokenizer = gguf.tokenizer()?;
    let tied = !file.contains("output.weight");
    let parts = AttnParts {
        qkv_bias: file.contains("blk.0.attn_q.bias"),
        o_bias: file.contains("blk.0.attn_output.bias"),
        qk_norm: arch == "qwen3",
        // llama.cpp fixes SmolLM3's NoPE layers at every fourth (`n_no_rope_layer_step`).
        no_rope_layers: match arch.as_str() {
            "smollm3" => every_nth_layer(config.n_layers, 4),
            _ => Vec::new(),
        },
    };
    let src = LlamaSource {
        get: Box::new(|hf_name: &str, shape: &[usize]| {
            let array = file.read_shaped(&gguf_name(hf_name), shape)?;
            let q = hf_name.contains("q_proj.");
            Ok(if permuted && (q || hf_name.contains("k_proj.")) {
                unpermute_rotary(&array, if q { n_heads } else { n_kv_heads })
            } else {
                array
            })
        }),
    };
    let transformer = build_llama(config, &src, tied, parts, device)?;
    Ok(super::LoadedModel {
        transformer,
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// The rotary scaling a Llama `config.json` asks for: `None` for plain rotary, Llama 3.1's
/// (`rope_type: "llama3"`, in transformers 5's `rope_parameters` or the older
/// `rope_scaling`), or an error naming any other kind, which the forward does not implement.
fn rope_scaling_of(
    cfg: &std::collections::BTreeMap<String, serde_json::Value>,
    cfg_path: &Path,
) -> Result<Option<super::transformer::RopeScaling>, LoadError> {
    let kind_of = |v: &serde_json::Value| {
        (v.get("rope_type").or_else(|| v.get("type")))
            .and_then(|t| t.as_str())
            .unwrap_or("default")
            .to_string()
    };
    let (what, params) = match (cfg.get("rope_scaling"), cfg.get("rope_parameters")) {
        (Some(v), _) if !v.is_null() => ("rope_scaling", v),
        (_, Some(v)) if kind_of(v) != "default" => ("rope_parameters", v),
        _ => return Ok(None),
    };
    let error = |message: String| LoadError::Config {
        path: cfg_path.to_path_buf(),
        message,
    };
    let kind = kind_of(params);
    if kind != "llama3" {
        return Err(error(format!(
            "rope scaling '{kind}' ({what}) is not supported; only plain rotary and Llama 3.1's \
             ('llama3')"
        )));
    }
    let number = |key: &str| {
        (params.get(key).and_then(|v| v.as_f64()))
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| error(format!("{what}.{key} must be a positive number")))
    };
    let (low, high) = (number("low_freq_factor")?, number("high_freq_factor")?);
    if high <= low {
        return Err(error(format!(
            "{what}.high_freq_factor ({high}) must be above low_freq_factor ({low})"
        )));
    }
    Ok(Some(super::transformer::RopeScaling::Llama3 {
        factor: number("factor")?,
        low_freq_factor: low,
        high_freq_factor: high,
        original_context: number("original_max_position_embeddings")?,
    }))
}

/// A Llama-family Hugging Face directory (`model_type` llama, mistral, qwen2, qwen3 or
/// smollm3):
/// `config.json` + `model.safetensors` (or its shards, [`super::weights::HfWeights`]).
pub fn llama_from_hf(dir: &Path, name: &str, device: &Device) -> Result<Transformer, LoadError> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json_config(&cfg_path)?;
    let model_type = cfg
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("llama");
    let d_model = cfg_usize(&cfg, &cfg_path, &["hidden_size"])?;
    let n_heads = cfg_usize(&cfg, &cfg_path, &["num_attention_heads"])?;
    let n_kv_heads = cfg_usize(
        &cfg,
        &cfg_path,
        &["num_key_value_heads", "num_attention_heads"],
    )?;
    // transformers' default head_dim: hidden_size // num_attention_heads.
    let head_dim_given = cfg.get("head_dim").is_some_and(|v| !v.is_null());
    let d_head = if head_dim_given {
        cfg_usize(&cfg, &cfg_path, &["head_dim"])?
    } else {
        d_model / n_heads.max(1)
    };
    // transformers < 5 writes `rope_theta` / `rope_scaling` at the top level; 5.x nests them
    // in `rope_parameters` (`rope_type: "default"` for plain rotary).
    let rope = cfg.get("rope_parameters");
    let rope_scaling = rope_scaling_of(&cfg, &cfg_path)?;
    if cfg.get("mlp_bias").and_then(|v| v.as_bool()) == Some(true) {
        return Err(LoadError::Config {
            path: cfg_path,
            message: "mlp_bias = true is not supported (MLPs without biases only)".into(),
        });
    }
    // Qwen2 always has q/k/v biases; a Llama or Qwen3 with `attention_bias` has o's too.
    let attention_bias = cfg.get("attention_bias").and_then(|v| v.as_bool()) == Some(true);
    let parts = AttnParts {
        qkv_bias: model_type == "qwen2" || attention_bias,
        o_bias: model_type != "qwen2" && attention_bias,
        qk_norm: model_type == "qwen3",
        no_rope_layers: match model_type {
            "smollm3" => no_rope_layers_of(&cfg, &cfg_path)?,
            _ => Vec::new(),
        },
    };
    let rope_theta = cfg
        .get("rope_theta")
        .or_else(|| rope.and_then(|r| r.get("rope_theta")))
        .and_then(|v| v.as_f64())
        .unwrap_or(10000.0);
    let config = TransformerConfig {
        name: name.to_string(),
        family: Family::Llama,
        n_layers: cfg_usize(&cfg, &cfg_path, &["num_hidden_layers"])?,
        d_model,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: cfg_usize(&cfg, &cfg_path, &["intermediate_size"])?,
        d_vocab: cfg_usize(&cfg, &cfg_path, &["vocab_size"])?,
        n_ctx: sliding_window_of(&cfg, model_type, &cfg_path)?
            .unwrap_or(usize::MAX)
            .min(cfg_usize(&cfg, &cfg_path, &["max_position_embeddings"])?),
        norm_eps: cfg_f64(&cfg, "rms_norm_eps", 1e-5),
        activation: Activation::Silu,
        rope_theta: Some(rope_theta),
        rope_scaling,
        bos_token_id: cfg
            .get("bos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32),
        eos_token_ids: cfg_token_ids(&cfg, "eos_token_id"),
        attn_only: false,
        shortformer: false,
        no_norms: false,
    };
    check_llama_config(
        &config,
        &cfg_path,
        &LlamaKeys {
            n_layers: "num_hidden_layers".into(),
            d_model: "hidden_size".into(),
            n_heads: "num_attention_heads".into(),
            n_kv_heads: if cfg.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
                "num_key_value_heads".into()
            } else {
                "num_attention_heads (as num_key_value_heads)".into()
            },
            d_head: if head_dim_given {
                "head_dim".into()
            } else {
                "head_dim (hidden_size / num_attention_heads)".into()
            },
            d_mlp: "intermediate_size".into(),
            d_vocab: "vocab_size".into(),
            n_ctx: "max_position_embeddings".into(),
        },
    )?;
    let tied = cfg
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let file = super::weights::HfWeights::open(dir)?;
    let src = LlamaSource {
        get: Box::new(|n: &str, shape: &[usize]| file.read_shaped(n, shape)),
    };
    build_llama(config, &src, tied, parts, device)
}

/// SmolLM3's layers without rotary positions: those `no_rope_layers` marks 0 (one 0 or 1
/// per layer), else every `no_rope_layer_interval`-th (default 4), as transformers reads it.
fn no_rope_layers_of(cfg: &Json, cfg_path: &Path) -> Result<Vec<usize>, LoadError> {
    let n_layers = cfg_usize(cfg, cfg_path, &["num_hidden_layers"])?;
    let bad = |message: String| LoadError::Config {
        path: cfg_path.to_path_buf(),
        message,
    };
    match cfg.get("no_rope_layers").filter(|v| !v.is_null()) {
        Some(v) => {
            let flags: Vec<u64> = (v.as_array())
                .and_then(|a| a.iter().map(|f| f.as_u64().filter(|f| *f <= 1)).collect())
                .ok_or_else(|| {
                    bad(format!(
                        "no_rope_layers should be a list of 0s and 1s, found {v}"
                    ))
                })?;
            if flags.len() != n_layers {
                return Err(bad(format!(
                    "no_rope_layers has {} entries for {n_layers} layers (num_hidden_layers)",
                    flags.len()
                )));
            }
            Ok((0..n_layers).filter(|&l| flags[l] == 0).collect())
        }
        None => {
            let every = match cfg.get("no_rope_layer_interval") {
                Some(v) if !v.is_null() => cfg_usize(cfg, cfg_path, &["no_rope_layer_interval"])?,
                _ => 4,
            };
            if every == 0 {
                return Err(bad("no_rope_layer_interval must be positive".into()));
            }
            Ok(every_nth_layer(n_layers, every))
        }
    }
}

/// Layers `every - 1`, `2 every - 1`, ... of `n_layers` (SmolLM3's NoPE layers, by
/// transformers' and llama.cpp's rule).
fn every_nth_layer(n_layers: usize, every: usize) -> Vec<usize> {
    (0..n_layers).filter(|l| (l + 1) % every == 0).collect()
}

/// The attention window of a config some of whose layers attend to the last
/// `sliding_window` positions only (as `layer_types` says where given; else Mistral whenever
/// it is set, Qwen2, Qwen3 and SmolLM3 with `use_sliding_window`). Within the window that is
/// ordinary causal attention, so the model's context is cut to it and longer sequences are
/// refused, not run wrongly.
fn sliding_window_of(
    cfg: &Json,
    model_type: &str,
    cfg_path: &Path,
) -> Result<Option<usize>, LoadError> {
    let slides = match (
        cfg.get("layer_types").and_then(|v| v.as_array()),
        model_type,
    ) {
        (Some(types), _) => types
            .iter()
            .any(|t| t.as_str() == Some("sliding_attention")),
        (None, "mistral") => true,
        (None, "qwen2" | "qwen3" | "smollm3") => {
            cfg.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true)
        }
        (None, _) => false,
    };
    match slides && cfg.get("sliding_window").is_some_and(|v| !v.is_null()) {
        true => cfg_usize(cfg, cfg_path, &["sliding_window"]).map(Some),
        false => Ok(None),
    }
}

/// A model with random weights (normal, std 0.02; norms at 1) of the given sizes, for
/// benchmarks and tests that need no checkpoint.
pub fn random(config: TransformerConfig, seed: u64, device: &Device) -> Transformer {
    let mut rng = crate::rng::Rng::new(seed);
    let mut normal = |shape: &[usize]| -> HostArray {
        let n = shape.iter().product();
        HostArray::new(
            shape.to_vec(),
            (0..n).map(|_| (rng.normal() * 0.02) as f32).collect(),
        )
    };
    let (d, h, hkv, dh, d_mlp, v) = (
        config.d_model,
        config.n_heads,
        config.n_kv_heads,
        config.d_head,
        config.d_mlp,
        config.d_vocab,
    );
    let ones = |n: usize| Tensor::<1>::ones([n], device);
    let zeros = |n: usize| Tensor::<1>::zeros([n], device);
    let eps = config.norm_eps;
    let llama = config.family == Family::Llama;
    let norm = |n: usize| {
        if llama {
            Norm::Rms { w: ones(n), eps }
        } else {
            Norm::Layer {
                w: ones(n),
                b: zeros(n),
                eps,
            }
        }
    };
    let blocks = (0..config.n_layers)
        .map(|_| Block {
            norm1: norm(d),
            attn: Attention {
                w_qkv: normal(&[d, (h + 2 * hkv) * dh]).into_tensor(device),
                b_qkv: (!llama).then(|| zeros((h + 2 * hkv) * dh)),
                w_o: normal(&[h * dh, d]).into_tensor(device),
                b_o: (!llama).then(|| zeros(d)),
                z_fold: None,
                qk_norm: None,
                no_rope: false,
            },
            mlp: Some((
                norm(d),
                if llama {
                    Mlp::SwiGlu {
                        w_gate_up: normal(&[d, 2 * d_mlp]).into_tensor(device),
                        w_down: normal(&[d_mlp, d]).into_tensor(device),
                    }
                } else {
                    Mlp::Gelu {
                        w_in: normal(&[d, d_mlp]).into_tensor(device),
                        b_in: zeros(d_mlp),
                        w_out: normal(&[d_mlp, d]).into_tensor(device),
                        b_out: zeros(d),
                        approximate: config.activation == Activation::GeluNew,
                    }
                },
            )),
        })
        .collect();
    let w_e: Tensor<2> = normal(&[v, d]).into_tensor(device);
    let positions = if llama {
        super::transformer::rotary_tables(&config, device)
    } else {
        Positions::Learned(normal(&[config.n_ctx, d]).into_tensor(device))
    };
    Transformer {
        w_u: w_e.clone().transpose(),
        w_e,
        positions,
        blocks,
        norm_final: norm(d),
        b_u: None,
        device: device.clone(),
        config,
    }
}

/// gpt2-small's sizes (12 layers, 12 heads x 64, d_model 768, vocab 50257).
pub fn gpt2_small_config() -> TransformerConfig {
    TransformerConfig {
        name: "gpt2-small (random weights)".into(),
        family: Family::Gpt2,
        n_layers: 12,
        d_model: 768,
        n_heads: 12,
        n_kv_heads: 12,
        d_head: 64,
        d_mlp: 3072,
        d_vocab: 50257,
        n_ctx: 1024,
        norm_eps: 1e-5,
        activation: Activation::GeluNew,
        rope_theta: None,
        rope_scaling: None,
        bos_token_id: Some(50256),
        eos_token_ids: vec![50256],
        attn_only: false,
        shortformer: false,
        no_norms: false,
    }
}
