//! Bad input gives an error naming the file and what is wrong, never a panic, a hang or an
//! unbounded allocation: GGUF tensors and metadata, HF Llama configs, activation caches
//! (shape and resume position), and `harvest` sizes.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use attn_saes::data::corpus::Corpus;
use attn_saes::data::store::{ActivationStore, CacheMeta, StoreConfig, write_cache};
use attn_saes::files::{NamedArray, write_json, write_safetensors};
use attn_saes::lm;
use burn::prelude::*;
use common::gguf::*;
use common::*;

/// A scratch directory, removed when the test is done with it.
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("attn-saes-bad", tag)
}

fn load_err(path: &Path) -> String {
    match lm::load_from_path(path, "t", &Device::flex()) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// GGUF

/// Loads (or fails to load) a tiny Llama GGUF with edited metadata and tensors, on a
/// thread with a time limit: a huge allocation or an endless loop fails the test instead
/// of hanging it.
fn load_gguf(
    tag: &str,
    edit_meta: impl FnOnce(&mut Vec<(String, Meta)>),
    edit_tensors: impl FnOnce(&mut Vec<(String, Vec<u64>)>),
) -> Result<lm::LoadedModel, String> {
    let dir = temp_dir(&format!("gguf-{tag}"));
    let path = dir.join("model.gguf");
    let mut tensors = llama_tensors();
    edit_tensors(&mut tensors);
    write_gguf(&path, &llama_meta(edit_meta), &tensors);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = lm::load_from_path(&path, "t", &Device::flex()).map_err(|e| e.to_string());
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{tag}: loading did not finish: {e}"))
}

fn gguf_err(
    tag: &str,
    edit_meta: impl FnOnce(&mut Vec<(String, Meta)>),
    edit_tensors: impl FnOnce(&mut Vec<(String, Vec<u64>)>),
) -> String {
    match load_gguf(tag, edit_meta, edit_tensors) {
        Ok(_) => panic!("{tag}: should not load"),
        Err(msg) => {
            assert!(msg.contains("model.gguf"), "{tag}: {msg}");
            msg
        }
    }
}

#[test]
fn tiny_llama_gguf_loads() {
    let model = load_gguf("ok", |_| {}, |_| {}).unwrap();
    let c = &model.transformer.config;
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.d_head,
            c.d_vocab,
            c.n_ctx
        ),
        (1, 8, 2, 1, 4, 4, 16)
    );
}

#[test]
fn zero_dimensional_gguf_tensor_is_named() {
    let msg = gguf_err(
        "0d",
        |_| {},
        |t| t[0].1.clear(), // token_embd.weight
    );
    assert!(
        msg.contains("'token_embd.weight'") && msg.contains("0 dimensions"),
        "{msg}"
    );
    // A 0-dimensional layer weight: a shape error naming it.
    let msg = gguf_err(
        "0d-layer",
        |_| {},
        |t| {
            let q = t
                .iter_mut()
                .find(|(n, _)| n == "blk.0.attn_q.weight")
                .unwrap();
            q.1.clear();
        },
    );
    assert!(msg.contains("'blk.0.attn_q.weight' has shape []"), "{msg}");
}

#[test]
fn huge_gguf_context_is_refused_before_allocating() {
    for n_ctx in [(1u64 << 20) + 1, 1 << 40, u64::MAX] {
        let msg = gguf_err(
            "ctx",
            |m| set(m, "llama.context_length", Meta::U64(n_ctx)),
            |_| {},
        );
        assert!(
            msg.contains("llama.context_length") && msg.contains("1048576"),
            "{msg}"
        );
    }
    // The bound itself is accepted.
    let model = load_gguf(
        "ctx-max",
        |m| set(m, "llama.context_length", Meta::U64(1 << 20)),
        |_| {},
    )
    .unwrap();
    assert_eq!(model.transformer.config.n_ctx, 1 << 20);
}

#[test]
fn bad_gguf_head_counts_and_sizes_name_the_key() {
    let cases: Vec<(&str, &str, Meta, &str)> = vec![
        (
            "kv",
            "llama.attention.head_count_kv",
            Meta::U32(3),
            "llama.attention.head_count (2) is not a multiple of llama.attention.head_count_kv (3)",
        ),
        (
            "heads0",
            "llama.attention.head_count",
            Meta::U32(0),
            "llama.attention.head_count is 0",
        ),
        (
            "kv0",
            "llama.attention.head_count_kv",
            Meta::U32(0),
            "llama.attention.head_count_kv is 0",
        ),
        (
            "layers0",
            "llama.block_count",
            Meta::U32(0),
            "llama.block_count is 0",
        ),
        (
            "dmodel0",
            "llama.embedding_length",
            Meta::U32(0),
            "llama.embedding_length is 0",
        ),
        (
            "mlp0",
            "llama.feed_forward_length",
            Meta::U32(0),
            "llama.feed_forward_length is 0",
        ),
        (
            "ctx0",
            "llama.context_length",
            Meta::U32(0),
            "llama.context_length is 0",
        ),
    ];
    for (tag, key, value, wanted) in cases {
        let msg = gguf_err(tag, |m| set(m, key, value), |_| {});
        assert!(msg.contains(wanted), "{tag}: {msg}");
    }
    // An odd (or too small) head size, given or derived.
    for (tag, d_head) in [("dh3", 3), ("dh1", 1), ("dh0", 0)] {
        let msg = gguf_err(
            tag,
            |m| m.push(("llama.attention.key_length".into(), Meta::U32(d_head))),
            |_| {},
        );
        assert!(msg.contains("llama.attention.key_length"), "{tag}: {msg}");
    }
    let msg = gguf_err(
        "dh-derived",
        |m| set(m, "llama.embedding_length", Meta::U32(6)), // 6 / 2 heads = 3
        |_| {},
    );
    assert!(
        msg.contains("llama.embedding_length / llama.attention.head_count") && msg.contains("is 3"),
        "{msg}"
    );
    // Sizes whose weight shapes overflow `usize`.
    let msg = gguf_err(
        "dh-huge",
        |m| m.push(("llama.attention.key_length".into(), Meta::U64(1 << 62))),
        |_| {},
    );
    assert!(msg.contains("sizes too large"), "{msg}");
    // An empty vocabulary.
    let msg = gguf_err("vocab0", |_| {}, |t| t[0].1 = vec![D, 0]);
    assert!(
        msg.contains("'token_embd.weight'") && msg.contains("is 0"),
        "{msg}"
    );
    // A huge layer count fails at the first missing layer, without reserving memory for it.
    let msg = gguf_err(
        "layers-huge",
        |m| set(m, "llama.block_count", Meta::U64(1 << 60)),
        |_| {},
    );
    assert!(msg.contains("blk.1.attn_q.weight"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// HF Llama config.json

/// A copy of the llama_tiny fixture with `edit` applied to its config.json.
fn llama_hf_copy(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> TempDir {
    let dir = temp_dir(&format!("hf-{tag}"));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("llama_tiny").join(f), dir.join(f)).unwrap();
    }
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    edit(cfg.as_object_mut().unwrap());
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn bad_hf_llama_configs_name_config_json_and_the_field() {
    // The unedited copy loads.
    let dir = llama_hf_copy("ok", |_| {});
    lm::load_from_path(&dir, "t", &Device::flex()).unwrap();

    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        (
            "kv",
            "num_key_value_heads",
            3.into(),
            "num_attention_heads (4) is not a multiple of num_key_value_heads (3)",
        ),
        ("dh-odd", "head_dim", 15.into(), "head_dim is 15"),
        ("dh1", "head_dim", 1.into(), "head_dim is 1"),
        ("dh0", "head_dim", 0.into(), "head_dim is 0"),
        (
            "heads0",
            "num_attention_heads",
            0.into(),
            "num_attention_heads is 0",
        ),
        (
            "kv0",
            "num_key_value_heads",
            0.into(),
            "num_key_value_heads is 0",
        ),
        (
            "layers0",
            "num_hidden_layers",
            0.into(),
            "num_hidden_layers is 0",
        ),
        ("hidden0", "hidden_size", 0.into(), "hidden_size is 0"),
        (
            "mlp0",
            "intermediate_size",
            0.into(),
            "intermediate_size is 0",
        ),
        ("vocab0", "vocab_size", 0.into(), "vocab_size is 0"),
        (
            "ctx0",
            "max_position_embeddings",
            0.into(),
            "max_position_embeddings is 0",
        ),
        (
            "ctx-huge",
            "max_position_embeddings",
            (1u64 << 40).into(),
            "max_position_embeddings is 1099511627776, more than the 1048576",
        ),
        (
            "dh-str",
            "head_dim",
            "16".into(),
            "'head_dim' should be a non-negative integer",
        ),
    ];
    for (tag, key, value, wanted) in cases {
        let dir = llama_hf_copy(tag, |cfg| {
            cfg.insert(key.to_string(), value);
        });
        let msg = load_err(&dir);
        assert!(
            msg.contains("config.json") && msg.contains(wanted),
            "{tag}: {msg}"
        );
    }
    // head_dim derived from hidden_size / num_attention_heads when absent: 60 / 4 = 15.
    let dir = llama_hf_copy("dh-derived", |cfg| {
        cfg.remove("head_dim");
        cfg.insert("hidden_size".into(), 60.into());
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("head_dim (hidden_size / num_attention_heads) is 15"),
        "{msg}"
    );
}

#[test]
fn zero_sizes_in_gpt2_configs_are_named() {
    for key in ["n_layer", "n_head", "n_positions", "vocab_size"] {
        let dir = temp_dir(&format!("gpt2-{key}"));
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture("gpt2_tiny").join(f), dir.join(f)).unwrap();
        }
        let cfg_path = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg[key] = 0.into();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let msg = load_err(&dir);
        assert!(
            msg.contains("config.json") && msg.contains(&format!("{key} is 0")),
            "{key}: {msg}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Activation caches

const CACHE_HEADS: usize = 2;
const CACHE_D_HEAD: usize = 3;

fn cache_meta(shard_rows: Vec<usize>) -> CacheMeta {
    CacheMeta {
        n_heads: CACHE_HEADS,
        d_head: CACHE_D_HEAD,
        shard_rows,
        ..tiny_cache_meta()
    }
}

/// A cache of shards with `shard_rows` rows of 2 x 3 values (row `r` of shard `s` holds
/// `100 s + r`), described by `meta`.
fn write_fake_cache(tag: &str, meta: &CacheMeta) -> TempDir {
    let dir = temp_dir(&format!("cache-{tag}"));
    let row_len = CACHE_HEADS * CACHE_D_HEAD;
    for (s, &rows) in [4usize, 2].iter().enumerate() {
        let data: Vec<f32> = (0..rows * row_len)
            .map(|i| (100 * s + i / row_len) as f32)
            .collect();
        write_safetensors(
            &dir.join(format!("shard_{s:05}.safetensors")),
            &[NamedArray::new(
                "hook_z",
                vec![rows, CACHE_HEADS, CACHE_D_HEAD],
                data,
            )],
            None,
        )
        .unwrap();
    }
    write_json(&dir.join("activations.json"), meta).unwrap();
    dir
}

fn store_config(batch_tokens: usize) -> StoreConfig {
    StoreConfig {
        hook_layer: 1,
        context_size: 16,
        batch_tokens,
        n_batches_in_buffer: 2,
        windows_per_forward: 4,
        drop_bos: true,
        z_convention: Default::default(),
    }
}

fn open_cache(dir: &Path) -> anyhow::Result<ActivationStore<'static>> {
    ActivationStore::from_cache(store_config(2), dir, 0, &Device::flex())
}

#[test]
fn cache_of_another_shape_is_refused() {
    let dir = write_fake_cache("shape", &cache_meta(vec![4, 2]));
    let mut model = lm::load::gpt2_small_config();
    let Err(e) =
        ActivationStore::from_cache_for_model(store_config(2), &dir, &model, 0, &Device::flex())
    else {
        panic!("a 2 x 3 cache must not serve a 12 x 64 model");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&dir.display().to_string())
            && msg.contains("2 heads x d_head 3")
            && msg.contains("12 heads x d_head 64"),
        "{msg}"
    );
    model.n_heads = CACHE_HEADS;
    model.d_head = CACHE_D_HEAD;
    let mut store =
        ActivationStore::from_cache_for_model(store_config(2), &dir, &model, 0, &Device::flex())
            .unwrap();
    assert_eq!(store.next_rows().unwrap().len(), 2 * 6);
}

#[test]
fn inconsistent_cache_metadata_is_refused() {
    for (tag, meta, wanted) in [
        (
            "heads0",
            CacheMeta {
                n_heads: 0,
                ..cache_meta(vec![4, 2])
            },
            "n_heads (0) and d_head (3) must be positive",
        ),
        (
            "dhead0",
            CacheMeta {
                d_head: 0,
                ..cache_meta(vec![4, 2])
            },
            "must be positive",
        ),
        ("rows0", cache_meta(vec![4, 0]), "shard_rows[1] is 0"),
        ("noshards", cache_meta(vec![]), "no shards"),
    ] {
        let dir = write_fake_cache(tag, &meta);
        let Err(e) = open_cache(&dir) else {
            panic!("{tag}: the cache must be refused");
        };
        let msg = format!("{e:#}");
        assert!(
            msg.contains("activations.json") && msg.contains(wanted),
            "{tag}: {msg}"
        );
    }
    // Row counts that disagree with the shard files: an error naming the shard.
    let dir = write_fake_cache("rows-wrong", &cache_meta(vec![4, 3]));
    let mut store = open_cache(&dir).unwrap();
    let msg = (0..4)
        .find_map(|_| store.next_rows().err())
        .map(|e| format!("{e:#}"))
        .expect("reading shard 1 must fail");
    assert!(msg.contains("shard_00001.safetensors"), "{msg}");
}

/// Rewrites the saved position in `ckpt/store_state.json`.
fn set_saved_position(ckpt: &Path, shard: usize, row: usize) {
    let path = ckpt.join("store_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["position"] = serde_json::json!({"Cache": {"shard": shard, "row": row, "epoch": 0}});
    std::fs::write(&path, state.to_string()).unwrap();
}

#[test]
fn out_of_range_cache_position_on_resume_is_an_error() {
    let dir = write_fake_cache("resume", &cache_meta(vec![4, 2]));
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let mut store = open_cache(&dir).unwrap();
    store.next_rows().unwrap();
    store.save_state(&ckpt).unwrap();

    for (shard, row, wanted) in [
        (5, 0, "shard 5 does not exist (the cache has 2 shards)"),
        (2, 0, "shard 2 does not exist"),
        (1, 2, "row 2 is past the end of shard 1 (2 rows)"),
        (0, usize::MAX, "past the end of shard 0"),
    ] {
        set_saved_position(&ckpt, shard, row);
        let mut resumed = open_cache(&dir).unwrap();
        let Err(e) = resumed.restore_state(&ckpt) else {
            panic!("({shard}, {row}) must be refused");
        };
        let msg = format!("{e:#}");
        assert!(
            msg.contains("store_state.json") && msg.contains(wanted),
            "({shard}, {row}): {msg}"
        );
    }
    // The last row of the last shard is a valid place to resume: the stream goes on
    // from there (row 1 of shard 1 holds 101) and wraps to the start.
    set_saved_position(&ckpt, 1, 1);
    let mut resumed = open_cache(&dir).unwrap();
    resumed.restore_state(&ckpt).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(resumed.next_rows().unwrap().chunks(6).map(|r| r[0]));
    }
    assert!(seen.contains(&101.0), "{seen:?}");
}

// ---------------------------------------------------------------------------------------
// harvest

/// `write_cache` with `total` / `shard` tokens from the tiny GPT-2 on a small corpus, on a
/// thread with a time limit (`--shard-tokens 0` used to loop forever).
fn harvest(tag: &str, total: usize, shard: usize) -> anyhow::Result<CacheMeta> {
    let dir = temp_dir(&format!("harvest-{tag}"));
    let corpus_path = dir.join("corpus.txt");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    std::fs::write(&corpus_path, text).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let device = Device::flex();
        let run = || -> anyhow::Result<CacheMeta> {
            let loaded = lm::load_from_path(&fixture("gpt2_tiny"), "tiny", &device)?;
            let corpus = Corpus::open(&corpus_path, None)?;
            let mut store = ActivationStore::from_lm(
                store_config(32),
                &loaded.transformer,
                &corpus,
                &loaded.tokenizer,
                Default::default(),
                0,
                &device,
            )?;
            let meta = tiny_cache_meta();
            write_cache(
                &mut store,
                meta,
                &dir.join("acts"),
                total,
                shard,
                None,
                |_| Ok(()),
            )
        };
        let _ = tx.send(run());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{tag}: write_cache did not return: {e}"))
}

#[test]
fn harvest_with_zero_sizes_is_an_error() {
    let msg = format!("{:#}", harvest("shard0", 100, 0).unwrap_err());
    assert!(msg.contains("--shard-tokens must be positive"), "{msg}");
    let msg = format!("{:#}", harvest("total0", 0, 50).unwrap_err());
    assert!(msg.contains("--tokens must be positive"), "{msg}");
    assert_eq!(harvest("ok", 100, 40).unwrap().shard_rows, vec![40, 40, 20]);
}

// ---------------------------------------------------------------------------------------
// SAEs pointed at the wrong model

/// `evaluate` refuses an SAE recorded as trained on another model even when the shapes
/// match (gpt2_tiny and llama_tiny both have 4 heads x 16), refuses one whose shape does not
/// fit, and evaluates the right one on its recorded layer, printing the score's spread.
#[test]
fn evaluate_refuses_saes_of_another_model_or_shape() {
    use attn_saes::sae::io::SaeOrigin;
    use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig};
    let dir = temp_dir("evaluate");
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let gpt2 = fixture("gpt2_tiny").display().to_string();
    let llama = fixture("llama_tiny").display().to_string();
    let device = Device::flex();
    let save = |name: &str, heads: usize, origin: Option<&str>| {
        let config = SaeConfig {
            n_heads: heads,
            d_head: 16,
            features_per_head: 8,
            architecture: Architecture::Relu,
        };
        let sae = BlockDiagSae::init(config, &mut attn_saes::rng::Rng::new(1), &device);
        let origin = origin.map(|model| SaeOrigin {
            model: model.to_string(),
            hook_layer: 1,
            z_convention: Default::default(),
            keep_bos: false,
        });
        let path = dir.join(name);
        sae.save_with_origin(&path, origin.as_ref()).unwrap();
        path
    };
    let evaluate = |sae: &Path, model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "evaluate", "--sae"])
            .arg(sae)
            .args(["--model", model, "--dataset"])
            .arg(&corpus)
            .args(["--context-size", "16", "--eval-windows", "3"])
            .output()
            .unwrap()
    };
    let of_gpt2 = save("of_gpt2", 4, Some(&gpt2));
    let out = evaluate(&of_gpt2, &llama);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("was trained on"),
        "{err}"
    );
    let misfit = save("misfit", 3, None);
    let out = evaluate(&misfit, &gpt2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the SAE (3 blocks of 16) does not fit"),
        "{err}"
    );
    let out = evaluate(&save("one_block", 1, None), &gpt2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the SAE (one block of 16) does not fit"),
        "{err}"
    );
    let out = evaluate(&of_gpt2, &gpt2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_succeeded(&out);
    assert!(
        text.contains("over 3 windows") && text.contains("CE loss score"),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
