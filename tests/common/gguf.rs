//! A GGUF v3 writer and a loadable tiny Llama for tests of the GGUF loader.

use std::path::Path;

/// A metadata value for the test writer.
pub enum Meta {
    U32(u32),
    U64(u64),
    Str(&'static str),
    Strs(Vec<String>),
}

/// Tiny Llama sizes: d_model 8, 2 query heads and 1 key/value head of 4, d_mlp 8, vocab 4.
pub const D: u64 = 8;
pub const VOCAB: u64 = 4;

/// Writes a GGUF v3 file: `meta` key/values, then F32 tensors of `dims` (ggml order,
/// fastest-varying first) holding small nonzero values (so bit flips in the data tell).
pub fn write_gguf(path: &Path, meta: &[(String, Meta)], tensors: &[(String, Vec<u64>)]) {
    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut b, key);
        match value {
            Meta::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::U64(v) => {
                b.extend(10u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            Meta::Strs(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut b, s);
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims) in tensors {
        put_str(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        let bytes = 4 * dims.iter().product::<u64>();
        offset += bytes.next_multiple_of(32);
    }
    b.resize(b.len().next_multiple_of(32), 0);
    let data_start = b.len();
    b.resize(data_start + offset as usize, 0);
    for (i, chunk) in b[data_start..].chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&(0.01 * ((i % 17) as f32 - 8.0)).to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// The metadata of a loadable tiny Llama, with `edit` applied.
pub fn llama_meta(edit: impl FnOnce(&mut Vec<(String, Meta)>)) -> Vec<(String, Meta)> {
    let mut meta = vec![
        ("general.architecture".to_string(), Meta::Str("llama")),
        ("llama.embedding_length".into(), Meta::U32(D as u32)),
        ("llama.attention.head_count".into(), Meta::U32(2)),
        ("llama.attention.head_count_kv".into(), Meta::U32(1)),
        ("llama.block_count".into(), Meta::U32(1)),
        ("llama.feed_forward_length".into(), Meta::U32(8)),
        ("llama.context_length".into(), Meta::U32(16)),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2")),
        (
            "tokenizer.ggml.tokens".into(),
            Meta::Strs(["a", "b", "c", "d"].map(String::from).to_vec()),
        ),
        ("tokenizer.ggml.merges".into(), Meta::Strs(vec![])),
    ];
    edit(&mut meta);
    meta
}

pub fn set(meta: &mut [(String, Meta)], key: &str, value: Meta) {
    let entry = meta.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = value;
}

/// The tensors of the tiny Llama (one layer).
pub fn llama_tensors() -> Vec<(String, Vec<u64>)> {
    let mut t: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![D, VOCAB]),
        ("output_norm.weight".into(), vec![D]),
    ];
    for (leaf, dims) in [
        ("attn_norm.weight", vec![D]),
        ("attn_q.weight", vec![D, 8]),
        ("attn_k.weight", vec![D, 4]),
        ("attn_v.weight", vec![D, 4]),
        ("attn_output.weight", vec![8, D]),
        ("ffn_norm.weight", vec![D]),
        ("ffn_gate.weight", vec![D, 8]),
        ("ffn_up.weight", vec![D, 8]),
        ("ffn_down.weight", vec![8, D]),
    ] {
        t.push((format!("blk.0.{leaf}"), dims));
    }
    t
}

/// Writes the tiny Llama, unedited.
pub fn write_tiny_llama(path: &Path) {
    write_gguf(path, &llama_meta(|_| {}), &llama_tensors());
}
