//! Fuzz-style robustness of every on-disk format the crate reads: a small valid file,
//! truncated at many offsets and damaged by seeded single-bit flips, is written to a temp
//! directory and handed to the real loader under `catch_unwind`. A panic (or a case that
//! runs past [`CASE_LIMIT`]) fails the test, naming the file, the offset or bit and the
//! panic message and location. A truncated file must give an error (see [`TruncOk`] for
//! the formats where a cut can leave a valid file); a bit flip may load or not.
//!
//! Covered: an HF safetensors model directory (weights, `config.json`, `tokenizer.json`),
//! a TransformerLens `.pth`, GGUF (a typed-tensor file read tensor by tensor, and a tiny
//! Llama through the model loader), Parquet corpora (snappy text, zstd token lists), our
//! SAE directory, a training checkpoint (`config.toml`, `trainer_state.json`,
//! `optimizer.safetensors`, `store_state.json`, `store_buffer.safetensors`) and an
//! activation cache (`activations.json`, a shard, a cache store state). The dashboard file
//! is fuzzed in `tests/dashboard.rs`.
//!
//! `ATTN_SAES_FUZZ_FLIPS=3000` runs more bit flips; `ATTN_SAES_FUZZ_BACKTRACE=1` adds a
//! backtrace to each panic reported.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use attn_saes::data::corpus::Corpus;
use attn_saes::data::store::{ActivationStore, StoreConfig, write_cache};
use attn_saes::lm::{self, LoadedModel};
use attn_saes::rng::Rng;
use attn_saes::sae::BlockDiagSae;
use attn_saes::train::{RunControl, TrainConfig, checkpoint, train};
use burn::prelude::*;
use common::{config, corpus, fixture};

/// Single-bit flips per damaged file; `ATTN_SAES_FUZZ_FLIPS` overrides it for a deeper run
/// (the first 300 positions stay the same).
const FLIPS: usize = 300;

fn n_flips() -> usize {
    std::env::var("ATTN_SAES_FUZZ_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLIPS)
}

/// Files up to this size are truncated at every offset.
const EVERY_OFFSET_UP_TO: usize = 4096;
/// Larger files: every offset in the first `HEAD_OFFSETS` bytes (headers), plus
/// `SPACED_OFFSETS` evenly spaced ones, plus the last `TAIL_OFFSETS`.
const HEAD_OFFSETS: usize = 512;
const SPACED_OFFSETS: usize = 300;
const TAIL_OFFSETS: usize = 16;
/// A case running longer than this is a hang: the process is stopped, naming the case.
const CASE_LIMIT: Duration = Duration::from_secs(30);

/// Cases that panic in a loader, reported to be fixed in `src/`, skipped here so the rest
/// still runs: `"<label> <case>"`, e.g. `"gguf/types.gguf flip@123:4"`. Those past the
/// first 300 flips only run with `ATTN_SAES_FUZZ_FLIPS=3000`. Remove the entries once
/// their loader is fixed.
const KNOWN_PANICS: &[&str] = &[
    // None: the tokenizer and Parquet panics this test found are caught in the loaders.
];

// ---------------------------------------------------------------------------------------
// Running one case: panic capture and a watchdog against hangs.

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records a panic's message and location while a case runs on this thread (instead of
/// printing it); other panics (a failing assertion of the test itself) print as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let msg = info.payload_as_str().unwrap_or("<non-string payload>");
                let at = info
                    .location()
                    .map_or("unknown location".to_string(), |l| l.to_string());
                let mut report = format!("'{msg}' at {at}");
                // ATTN_SAES_FUZZ_BACKTRACE=1: where the loader called into the panic.
                if std::env::var_os("ATTN_SAES_FUZZ_BACKTRACE").is_some() {
                    let trace = std::backtrace::Backtrace::force_capture().to_string();
                    report.push('\n');
                    report.push_str(&trace);
                }
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(report));
            } else {
                default(info);
            }
        }));
    });
}

/// Cases in flight, by thread: label and start.
fn running() -> &'static Mutex<HashMap<ThreadId, (String, Instant)>> {
    static RUNNING: OnceLock<Mutex<HashMap<ThreadId, (String, Instant)>>> = OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Stops the process when a case runs past [`CASE_LIMIT`] (a hang cannot be unwound).
fn start_watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let map = running().lock().unwrap_or_else(|e| e.into_inner());
                if let Some((label, start)) = map.values().find(|(_, s)| s.elapsed() > CASE_LIMIT) {
                    // Straight to stderr: the test harness's output capture would lose it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "HANG: loader fuzz case {label} still running after {:.0?}",
                        start.elapsed()
                    );
                    std::process::exit(101);
                }
            }
        });
    });
}

enum Outcome {
    Ok,
    Err(String),
    Panic(String),
}

fn run_case(label: &str, load: &mut dyn FnMut() -> Result<(), String>) -> Outcome {
    install_panic_hook();
    start_watchdog();
    let id = std::thread::current().id();
    running()
        .lock()
        .unwrap()
        .insert(id, (label.to_string(), Instant::now()));
    IN_CASE.with(|c| c.set(true));
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let result = catch_unwind(AssertUnwindSafe(load));
    IN_CASE.with(|c| c.set(false));
    running().lock().unwrap().remove(&id);
    match result {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Err(e),
        Err(payload) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            let from_payload = || {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string payload>".into())
            };
            // A panic on another thread (a worker pool) re-raised here was not recorded.
            Outcome::Panic(recorded.unwrap_or_else(|| format!("'{}'", from_payload())))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Damaging one file.

/// When a truncated copy may legitimately still load.
#[derive(Clone, Copy)]
enum TruncOk {
    /// Never (binary formats: the header, footer or data size gives the cut away).
    Never,
    /// JSON objects: only when the cut removed nothing but trailing whitespace.
    TrailingWhitespace,
    /// At or past this offset (GGUF: the padding after the last tensor's data).
    From(usize),
    /// Any cut (TOML with every key defaulted: a cut at a line end, or inside a number,
    /// can leave a valid config). Only "no panic" is required.
    Always,
}

impl TruncOk {
    fn allows(self, original: &[u8], cut: usize) -> bool {
        match self {
            TruncOk::Never => false,
            TruncOk::TrailingWhitespace => original[cut..].iter().all(u8::is_ascii_whitespace),
            TruncOk::From(end) => cut >= end,
            TruncOk::Always => true,
        }
    }
}

/// Offsets to truncate a file of `len` bytes at (each `< len`).
fn truncation_offsets(len: usize) -> Vec<usize> {
    if len <= EVERY_OFFSET_UP_TO {
        return (0..len).collect();
    }
    let mut offsets: BTreeSet<usize> = (0..HEAD_OFFSETS).collect();
    offsets.extend(
        (0..SPACED_OFFSETS).map(|i| HEAD_OFFSETS + i * (len - HEAD_OFFSETS) / SPACED_OFFSETS),
    );
    offsets.extend(len - TAIL_OFFSETS..len);
    offsets.into_iter().collect()
}

/// [`n_flips`] distinct (byte, bit) positions: a third anywhere, a third in the first and a
/// third in the last 4 KiB (headers, footers, zip directories), seeded by the label.
fn flip_positions(label: &str, len: usize) -> Vec<(usize, u8)> {
    let seed = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(seed);
    let edge = len.min(4096);
    let total = n_flips().min(len * 8);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let byte = match out.len() % 3 {
            0 => rng.below(len),
            1 => rng.below(edge),
            _ => len - 1 - rng.below(edge),
        };
        let bit = rng.below(8) as u8;
        if seen.insert((byte, bit)) {
            out.push((byte, bit));
        }
    }
    out
}

/// What happened to one file's cases.
#[derive(Default)]
struct FileStats {
    truncations: usize,
    trunc_errors: usize,
    /// Truncations that loaded where [`TruncOk`] allows it.
    trunc_ok_allowed: usize,
    flips: usize,
    flip_errors: usize,
    flip_oks: usize,
    skipped: usize,
}

/// Fuzz results of one test (one format), printed and checked at the end.
struct Fuzz {
    format: &'static str,
    started: Instant,
    cases: usize,
    errors: usize,
    oks: usize,
    /// Panics found: "<label> <case>: <message and location>".
    panics: Vec<String>,
    /// Truncations that loaded although a cut file is never valid.
    accepted_truncations: Vec<String>,
}

impl Fuzz {
    fn new(format: &'static str) -> Self {
        Self {
            format,
            started: Instant::now(),
            cases: 0,
            errors: 0,
            oks: 0,
            panics: Vec::new(),
            accepted_truncations: Vec::new(),
        }
    }

    /// Truncates and bit-flips the file at `path` (in place; restored afterwards), calling
    /// `load` for each damaged copy. `label` names the file in reports.
    fn file(
        &mut self,
        label: &str,
        path: &Path,
        trunc_ok: TruncOk,
        load: &mut dyn FnMut() -> Result<(), String>,
    ) {
        let original = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The undamaged file loads: otherwise every case would fail for another reason.
        if let Outcome::Err(e) | Outcome::Panic(e) = run_case(&format!("{label} original"), load) {
            panic!("{label}: the undamaged file does not load: {e}");
        }
        let start = Instant::now();
        let mut stats = FileStats::default();
        let mut damaged = Vec::with_capacity(original.len());
        let cases = truncation_offsets(original.len())
            .into_iter()
            .map(|n| (format!("trunc@{n}"), Some(n), None))
            .chain(
                flip_positions(label, original.len())
                    .into_iter()
                    .map(|(byte, bit)| (format!("flip@{byte}:{bit}"), None, Some((byte, bit)))),
            );
        for (case, cut, flip) in cases {
            let id = format!("{label} {case}");
            if KNOWN_PANICS.contains(&id.as_str()) {
                stats.skipped += 1;
                continue;
            }
            damaged.clear();
            match (cut, flip) {
                (Some(n), _) => damaged.extend_from_slice(&original[..n]),
                (_, Some((byte, bit))) => {
                    damaged.extend_from_slice(&original);
                    damaged[byte] ^= 1 << bit;
                }
                _ => unreachable!(),
            }
            std::fs::write(path, &damaged).unwrap();
            let outcome = run_case(&id, load);
            self.cases += 1;
            match (&outcome, cut) {
                (Outcome::Panic(msg), _) => {
                    println!("PANIC {id}: {msg}");
                    self.panics.push(format!("{id}: {msg}"));
                }
                (Outcome::Err(_), Some(_)) => stats.trunc_errors += 1,
                (Outcome::Ok, Some(n)) if trunc_ok.allows(&original, n) => {
                    stats.trunc_ok_allowed += 1
                }
                (Outcome::Ok, Some(_)) => self.accepted_truncations.push(id.clone()),
                (Outcome::Err(_), None) => stats.flip_errors += 1,
                (Outcome::Ok, None) => stats.flip_oks += 1,
            }
            match outcome {
                Outcome::Ok => self.oks += 1,
                Outcome::Err(_) => self.errors += 1,
                Outcome::Panic(_) => {}
            }
            if cut.is_some() {
                stats.truncations += 1;
            } else {
                stats.flips += 1;
            }
        }
        std::fs::write(path, &original).unwrap();
        println!(
            "{label} ({} bytes): {} truncations ({} errors, {} loaded legitimately), {} bit \
             flips ({} errors, {} loaded), {} known panics skipped, {:.1}s",
            original.len(),
            stats.truncations,
            stats.trunc_errors,
            stats.trunc_ok_allowed,
            stats.flips,
            stats.flip_errors,
            stats.flip_oks,
            stats.skipped,
            start.elapsed().as_secs_f64()
        );
    }

    fn finish(self) {
        println!(
            "{}: {} cases, {} errors, {} loaded, {} panics, {} accepted truncations, {:.1}s",
            self.format,
            self.cases,
            self.errors,
            self.oks,
            self.panics.len(),
            self.accepted_truncations.len(),
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            self.panics.is_empty(),
            "{}: loaders panicked on damaged files:\n{}",
            self.format,
            self.panics.join("\n")
        );
        assert!(
            self.accepted_truncations.is_empty(),
            "{}: truncated files loaded without an error:\n{}",
            self.format,
            self.accepted_truncations.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies `files` of fixture directory `from` into a fresh temp directory.
fn copy_fixture(from: &str, files: &[&str], tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    for f in files {
        std::fs::copy(fixture(from).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_model_dir(path: &Path) -> Result<(), String> {
    lm::load_from_path(path, "t", &Device::flex())
        .map(drop)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// 1. HF safetensors model directory.

#[test]
fn hf_model_directory_survives_damage() {
    let dir = copy_fixture(
        "gpt2_tiny",
        &["config.json", "model.safetensors", "tokenizer.json"],
        "hf",
    );
    let mut fuzz = Fuzz::new("HF model directory (gpt2_tiny)");
    let mut load = || load_model_dir(&dir);
    fuzz.file(
        "gpt2_tiny/model.safetensors",
        &dir.join("model.safetensors"),
        TruncOk::Never,
        &mut load,
    );
    fuzz.file(
        "gpt2_tiny/config.json",
        &dir.join("config.json"),
        TruncOk::TrailingWhitespace,
        &mut load,
    );
    fuzz.file(
        "gpt2_tiny/tokenizer.json",
        &dir.join("tokenizer.json"),
        TruncOk::TrailingWhitespace,
        &mut load,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

// ---------------------------------------------------------------------------------------
// 2. TransformerLens .pth.

#[test]
fn transformerlens_pth_survives_damage() {
    let dir = copy_fixture(
        "gelu2l_tiny",
        &["config.json", "model_final.pth", "tokenizer.json"],
        "pth",
    );
    let mut fuzz = Fuzz::new("TransformerLens .pth (gelu2l_tiny)");
    let mut load = || load_model_dir(&dir);
    fuzz.file(
        "gelu2l_tiny/model_final.pth",
        &dir.join("model_final.pth"),
        TruncOk::Never,
        &mut load,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

// ---------------------------------------------------------------------------------------
// 3. GGUF.

/// Opens a weight file and reads every tensor in it.
fn read_all_tensors(path: &Path) -> Result<(), String> {
    let file = lm::weights::WeightFile::open(path).map_err(|e| e.to_string())?;
    for name in file.names() {
        file.read(&name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// End of the last tensor's data: a GGUF cut at or after it only loses padding.
fn gguf_data_end(path: &Path) -> usize {
    let file = lm::gguf::GgufFile::open(path).unwrap();
    file.tensors
        .iter()
        .map(|t| file.data_start() + t.offset + t.n_bytes().unwrap())
        .max()
        .unwrap() as usize
}

#[test]
fn gguf_files_survive_damage() {
    let dir = temp_dir("gguf");
    let mut fuzz = Fuzz::new("GGUF");

    let types = dir.join("types.gguf");
    std::fs::copy(fixture("gguf/types.gguf"), &types).unwrap();
    let end = gguf_data_end(&types);
    fuzz.file("gguf/types.gguf", &types, TruncOk::From(end), &mut || {
        read_all_tensors(&types)
    });

    let llama = dir.join("llama").join("model.gguf");
    std::fs::create_dir_all(llama.parent().unwrap()).unwrap();
    common::gguf::write_tiny_llama(&llama);
    let end = gguf_data_end(&llama);
    fuzz.file(
        "tiny llama model.gguf",
        &llama,
        TruncOk::From(end),
        &mut || load_model_dir(&llama),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

// ---------------------------------------------------------------------------------------
// 4. Parquet corpora.

/// A small Parquet corpus: a text column (snappy) in two row groups, or a token-list
/// column (`optional group (LIST)` of int32, zstd).
fn write_parquet(path: &Path, tokens: bool) {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let (schema, compression) = if tokens {
        (
            "message schema { optional group tokens (LIST) { repeated group list { optional \
             int32 element; } } }",
            Compression::ZSTD(ZstdLevel::default()),
        )
    } else {
        (
            "message schema { optional binary text (UTF8); optional int64 id; }",
            Compression::SNAPPY,
        )
    };
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in 0..2 {
        let mut rg = writer.next_row_group().unwrap();
        if tokens {
            // Rows: [g, 1, 2, ...], an empty list, a null, then more lists.
            let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
            for row in 0..6i32 {
                match row {
                    2 => {
                        def.push(1);
                        rep.push(0);
                    }
                    4 => {
                        def.push(0);
                        rep.push(0);
                    }
                    _ => {
                        for j in 0..(3 + row) {
                            values.push(group * 100 + row * 10 + j);
                            def.push(3);
                            rep.push(i16::from(j > 0));
                        }
                    }
                }
            }
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<Int32Type>()
                .write_batch(&values, Some(&def), Some(&rep))
                .unwrap();
            col.close().unwrap();
        } else {
            let texts: Vec<Option<String>> = (0..6)
                .map(|i| {
                    (i != 3).then(|| {
                        format!("Row {i} of group {group}: the quick brown fox jumps over the lazy dog. ")
                            .repeat(1 + i % 3)
                    })
                })
                .collect();
            let values: Vec<ByteArray> = texts
                .iter()
                .flatten()
                .map(|s| ByteArray::from(s.as_str()))
                .collect();
            let def: Vec<i16> = texts.iter().map(|t| i16::from(t.is_some())).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&values, Some(&def), None)
                .unwrap();
            col.close().unwrap();
            let ids: Vec<i64> = (0..6).map(|i| i64::from(group * 10 + i)).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<Int64Type>()
                .write_batch(&ids, Some(&[1; 6]), None)
                .unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Opens a corpus and reads every document to the end.
fn read_corpus(path: &Path) -> Result<(), String> {
    let corpus = Corpus::open(path, None).map_err(|e| e.to_string())?;
    let mut n = 0;
    for item in corpus.documents(Default::default(), false) {
        item.map_err(|e| e.to_string())?;
        n += 1;
    }
    if n == 0 {
        return Err("no documents".into());
    }
    Ok(())
}

#[test]
fn parquet_corpora_survive_damage() {
    let dir = temp_dir("parquet");
    let mut fuzz = Fuzz::new("Parquet corpus");
    for (name, tokens) in [("text.parquet", false), ("tokens.parquet", true)] {
        let path = dir.join(name);
        write_parquet(&path, tokens);
        fuzz.file(name, &path, TruncOk::Never, &mut || read_corpus(&path));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

// ---------------------------------------------------------------------------------------
// 5. Our SAE directory.

#[test]
fn sae_directory_survives_damage() {
    let dir = copy_fixture(
        "dashboard/gpt2_tiny_sae",
        &["sae.safetensors", "sae_config.json"],
        "sae",
    );
    let mut fuzz = Fuzz::new("SAE directory");
    let mut load = || {
        BlockDiagSae::load(&dir, &Device::flex())
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    };
    fuzz.file(
        "gpt2_tiny_sae/sae.safetensors",
        &dir.join("sae.safetensors"),
        TruncOk::Never,
        &mut load,
    );
    fuzz.file(
        "gpt2_tiny_sae/sae_config.json",
        &dir.join("sae_config.json"),
        TruncOk::TrailingWhitespace,
        &mut load,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

// ---------------------------------------------------------------------------------------
// 6. Training checkpoint and activation cache.

fn store_config() -> StoreConfig {
    StoreConfig {
        hook_layer: 1,
        context_size: 16,
        batch_tokens: 64,
        n_batches_in_buffer: 4,
        windows_per_forward: 4,
        drop_bos: true,
        z_convention: Default::default(),
    }
}

/// Resumes training from `ckpt` up to its own step (10), so that nothing but the resume
/// itself (and writing the final SAE) runs, into a scratch output directory.
fn resume(
    config: &TrainConfig,
    loaded: &LoadedModel,
    ckpt: &Path,
    scratch: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(scratch);
    let config = TrainConfig {
        total_training_steps: 10,
        out_dir: scratch.to_path_buf(),
        ..config.clone()
    };
    let (tx, _rx) = std::sync::mpsc::channel();
    train(
        config,
        loaded,
        Some(ckpt),
        &Device::flex(),
        "cpu",
        &tx,
        &RunControl::default(),
    )
    .map(drop)
    .map_err(|e| format!("{e:#}"))
}

#[test]
fn training_checkpoint_survives_damage() {
    let dir = temp_dir("ckpt");
    let device = Device::flex();
    let config = config(&dir, 12);
    let loaded = lm::load_model(&config.model, &device).unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    train(
        config.clone(),
        &loaded,
        None,
        &device,
        "cpu",
        &tx,
        &RunControl::default(),
    )
    .unwrap();
    let saved = checkpoint::checkpoints_dir(&config.out_dir).join(checkpoint::step_dir_name(10));
    let ckpt = dir.join("ckpt");
    copy_dir(&saved, &ckpt);
    let scratch = dir.join("scratch");
    let mut fuzz = Fuzz::new("training checkpoint");

    // TOML with every key defaulted: a cut can leave a valid config (TruncOk::Always).
    fuzz.file(
        "checkpoint/config.toml",
        &ckpt.join(checkpoint::CONFIG_FILE),
        TruncOk::Always,
        &mut || {
            let c = checkpoint::read_config(&ckpt).map_err(|e| format!("{e:#}"))?;
            c.validate().map_err(|e| format!("{e:#}"))
        },
    );
    // What only a resume reads: through the trainer itself.
    let mut resume_case = || resume(&config, &loaded, &ckpt, &scratch);
    fuzz.file(
        "checkpoint/trainer_state.json",
        &ckpt.join(checkpoint::STATE_FILE),
        TruncOk::TrailingWhitespace,
        &mut resume_case,
    );
    fuzz.file(
        "checkpoint/optimizer.safetensors",
        &ckpt.join("optimizer.safetensors"),
        TruncOk::Never,
        &mut resume_case,
    );
    // The store state: restored into a fresh store, which then serves batches.
    let corpus = Corpus::open(&config.dataset, None).unwrap();
    let mut restore = || -> Result<(), String> {
        let mut store = ActivationStore::from_lm(
            store_config(),
            &loaded.transformer,
            &corpus,
            &loaded.tokenizer,
            Default::default(),
            0,
            &device,
        )
        .map_err(|e| format!("{e:#}"))?;
        store.restore_state(&ckpt).map_err(|e| format!("{e:#}"))?;
        for _ in 0..3 {
            store.next_rows().map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    };
    fuzz.file(
        "checkpoint/store_state.json",
        &ckpt.join("store_state.json"),
        TruncOk::TrailingWhitespace,
        &mut restore,
    );
    fuzz.file(
        "checkpoint/store_buffer.safetensors",
        &ckpt.join("store_buffer.safetensors"),
        TruncOk::Never,
        &mut restore,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}

#[test]
fn activation_cache_survives_damage() {
    let dir = temp_dir("cache");
    let device = Device::flex();
    let loaded = lm::load_model(&fixture("gpt2_tiny").display().to_string(), &device).unwrap();
    let corpus = Corpus::open(&corpus(&dir), None).unwrap();
    let small = StoreConfig {
        batch_tokens: 16,
        n_batches_in_buffer: 1,
        ..store_config()
    };
    let mut store = ActivationStore::from_lm(
        small.clone(),
        &loaded.transformer,
        &corpus,
        &loaded.tokenizer,
        Default::default(),
        0,
        &device,
    )
    .unwrap();
    let meta = common::tiny_cache_meta();
    let cache = dir.join("acts");
    let meta = write_cache(&mut store, meta, &cache, 100, 40, None, |_| Ok(())).unwrap();
    assert_eq!(meta.shard_rows, vec![40, 40, 20]);
    let model = &loaded.transformer.config;
    // Every row of the cache once, and into the next epoch.
    let open_and_read = |restore_from: Option<&Path>| -> Result<(), String> {
        let mut store =
            ActivationStore::from_cache_for_model(small.clone(), &cache, model, 0, &device)
                .map_err(|e| format!("{e:#}"))?;
        if let Some(dir) = restore_from {
            store.restore_state(dir).map_err(|e| format!("{e:#}"))?;
        }
        for _ in 0..8 {
            store.next_batch().map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    };
    let mut fuzz = Fuzz::new("activation cache");
    fuzz.file(
        "cache/activations.json",
        &cache.join("activations.json"),
        TruncOk::TrailingWhitespace,
        &mut || open_and_read(None),
    );
    fuzz.file(
        "cache/shard_00000.safetensors",
        &cache.join("shard_00000.safetensors"),
        TruncOk::Never,
        &mut || open_and_read(None),
    );
    // A cache store's saved state (a cache position: shard, row, epoch).
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut store =
        ActivationStore::from_cache_for_model(small.clone(), &cache, model, 0, &device).unwrap();
    for _ in 0..3 {
        store.next_rows().unwrap();
    }
    store.save_state(&state).unwrap();
    fuzz.file(
        "cache store/store_state.json",
        &state.join("store_state.json"),
        TruncOk::TrailingWhitespace,
        &mut || open_and_read(Some(&state)),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz.finish();
}
