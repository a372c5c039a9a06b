//! What the web page's inference bundle relies on, checked natively: model and SAE files
//! mounted in memory (`vfs`, as the page mounts its downloads) load to the same weights as
//! from disk (safetensors directory, GGUF, SAE), and the live analysis's async read-back
//! (the only one WebGPU allows) gives what the synchronous one gives.

mod common;

use std::path::Path;

use attn_saes::live::LiveAnalysis;
use attn_saes::lm::{self, HookRequest, ZConvention};
use attn_saes::sae::BlockDiagSae;
use attn_saes::vfs;
use burn::prelude::*;
use common::*;

/// Mounts every file of `dir` (on disk) under `at`.
fn mount_copy(dir: &Path, at: &Path) {
    let files = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        });
    vfs::mount(at, files);
}

fn logits(model: &lm::Transformer, ids: &[u32]) -> Vec<f64> {
    let cache = model
        .run(
            model.tokens(&[ids.to_vec()]).unwrap(),
            &HookRequest::logits(),
            None,
        )
        .unwrap();
    values(cache.logits.unwrap())
}

#[test]
fn a_model_directory_mounted_in_memory_loads_as_from_disk() {
    let device = Device::flex();
    let disk = lm::load_from_path(&fixture("gpt2_tiny"), "t", &device).unwrap();
    let at = Path::new("/in-memory/gpt2_tiny");
    mount_copy(&fixture("gpt2_tiny"), at);
    let memory = lm::load_from_path(at, "t", &device).unwrap();
    let ids = [399, 5, 17, 42, 7];
    assert_eq!(
        memory
            .tokenizer
            .encode("hello there", false)
            .unwrap()
            .get_ids(),
        disk.tokenizer
            .encode("hello there", false)
            .unwrap()
            .get_ids()
    );
    let (a, b) = (
        logits(&memory.transformer, &ids),
        logits(&disk.transformer, &ids),
    );
    assert_eq!(a, b, "the same weights give the same logits, bit for bit");
    vfs::unmount(at);
    let err = lm::load_from_path(at, "t", &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_gguf_mounted_in_memory_reads_the_same_tensors_as_from_disk() {
    let path = fixture("gguf/types.gguf");
    let disk = lm::gguf::GgufFile::open(&path).unwrap();
    let at = Path::new("/in-memory/gguf");
    vfs::mount(
        at,
        [("types.gguf".to_string(), std::fs::read(&path).unwrap())],
    );
    let memory = lm::gguf::GgufFile::open(&at.join("types.gguf")).unwrap();
    let mut read = 0;
    for info in &disk.tensors {
        // Some types in the fixture are unsupported: both must refuse them alike.
        match (memory.tensor(&info.name), disk.tensor(&info.name)) {
            (Ok(m), Ok(d)) => {
                assert_eq!(m, d, "{}", info.name);
                read += 1;
            }
            (Err(m), Err(d)) => assert_eq!(
                m.to_string().replace(at.to_str().unwrap(), ""),
                d.to_string()
                    .replace(path.parent().unwrap().to_str().unwrap(), "")
            ),
            (m, d) => panic!("{}: {:?} vs {:?}", info.name, m.is_ok(), d.is_ok()),
        }
    }
    assert!(read >= 5, "only {read} tensors read");
    vfs::unmount(at);
}

#[test]
fn the_async_read_back_gives_the_synchronous_analysis() {
    let device = Device::flex();
    let loaded = lm::load_from_path(&fixture("gpt2_tiny"), "t", &device).unwrap();
    let at = Path::new("/in-memory/sae");
    mount_copy(&fixture("dashboard/gpt2_tiny_sae"), at);
    let sae = BlockDiagSae::load(at, &device).unwrap();
    let disk_sae = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &device).unwrap();
    assert_eq!(values(sae.w_enc.clone()), values(disk_sae.w_enc.clone()));
    let text = "The quick brown fox jumps over the lazy dog.";
    let z = ZConvention::TransformerLens;
    let sync = LiveAnalysis::run(&loaded, &sae, 1, z, text).unwrap();
    let r#async = pollster::block_on(LiveAnalysis::run_async(&loaded, &sae, 1, z, text)).unwrap();
    assert_eq!(sync.tokens, r#async.tokens);
    let on: usize = sync.active.iter().flatten().map(Vec::len).sum();
    assert!(on > 10, "only {on} active features");
    let last = sync.len() - 1;
    let (f, _) = sync.active[0][last][0];
    assert_eq!(
        sync.attribution(0, f as usize, last),
        r#async.attribution(0, f as usize, last)
    );
    vfs::unmount(at);
}
