//! Shared helpers for integration tests: fixtures, reference tensors, devices.
#![allow(dead_code)]

pub mod browser;
pub mod gguf;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;

/// A fixture path. `ATTN_SAES_ROOT` overrides the checkout root baked in at build time (for
/// running a test binary built elsewhere).
pub fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("ATTN_SAES_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join("tests/fixtures").join(rel)
}

/// A fresh directory under the system temp dir, removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// English text for tiny training runs.
pub const TEXT: &str = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles \
begins with a single step. To be or not to be, that is the question. All that glitters is not \
gold. The early bird catches the worm, but the second mouse gets the cheese. Where there is a \
will, there is a way. Actions speak louder than words. Knowledge is power, and power corrupts. \
Time flies like an arrow; fruit flies like a banana. Hello world! ";

/// Writes `dir/corpus.txt`: 40 numbered paragraphs of [`TEXT`].
pub fn corpus(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let text: String = (0..40)
        .map(|i| format!("Paragraph {i}. {TEXT}\n\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A tiny training run on gpt2_tiny layer 1 (4 heads x 32 features) over [`corpus`],
/// writing into `dir/run`.
pub fn config(dir: &std::path::Path, steps: usize) -> attn_saes::train::TrainConfig {
    attn_saes::train::TrainConfig {
        model: fixture("gpt2_tiny").display().to_string(),
        dataset: corpus(dir),
        hook_layer: Some(1),
        expansion_factor: 2,
        l1_coefficient: 2.0,
        lr: 3e-3,
        total_training_steps: steps,
        batch_size: 64,
        context_size: 16,
        n_batches_in_buffer: 4,
        windows_per_forward: 4,
        normalization_batches: 2,
        log_every: 1,
        eval_every: 30,
        eval_windows: 2,
        checkpoint_every: 10,
        dead_window_steps: 20,
        out_dir: dir.join("run"),
        device: attn_saes::device::DeviceChoice::Cpu,
        ..Default::default()
    }
}

/// The activation-cache metadata of gpt2_tiny's layer 1 hook_z (4 heads x 16) in
/// 16-token windows, BOS dropped, no shards yet.
pub fn tiny_cache_meta() -> attn_saes::data::store::CacheMeta {
    attn_saes::data::store::CacheMeta {
        model_name: "tiny".into(),
        hook_layer: 1,
        z_convention: Default::default(),
        n_heads: 4,
        d_head: 16,
        context_size: 16,
        drop_bos: true,
        dataset: "corpus".into(),
        shard_rows: vec![],
        held_out_windows: Some(0),
        end: None,
    }
}

/// A reference tensor from a fixture: row-major shape and values as f64.
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub struct Reference(HashMap<String, RefTensor>);

impl Reference {
    pub fn load(rel: &str) -> Self {
        let path = fixture(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut map = HashMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::I32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            map.insert(
                name.to_string(),
                RefTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Self(map)
    }

    pub fn get(&self, name: &str) -> &RefTensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor '{name}' missing"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn tokens(&self, name: &str) -> Vec<u32> {
        self.get(name).data.iter().map(|&t| t as u32).collect()
    }
}

/// Reads a tensor back as f64 values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Max absolute difference, after checking lengths match.
pub fn max_abs_diff(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Asserts closeness and prints the max error.
pub fn assert_close(what: &str, ours: &[f64], reference: &[f64], tol: f64) -> f64 {
    let err = max_abs_diff(ours, reference);
    println!("{what}: max abs error {err:.3e}");
    assert!(err <= tol, "{what}: max abs error {err:.3e} > {tol:.1e}");
    err
}

/// Devices to run parity tests on: the CPU backend always, and wgpu when an adapter
/// exists (lavapipe in CI). `ATTN_SAES_TEST_WGPU=0` skips wgpu; with
/// `ATTN_SAES_REQUIRE_WGPU=1` (set in CI) a missing adapter fails instead of skipping.
pub fn test_devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("cpu", Device::flex())];
    if std::env::var("ATTN_SAES_TEST_WGPU").as_deref() == Ok("0") {
        return devices;
    }
    if let Some(device) = wgpu_device("wgpu") {
        devices.push(("wgpu", device));
    }
    devices
}

/// The wgpu device, or `None` when no adapter exists, saying that `what` is skipped;
/// with `ATTN_SAES_REQUIRE_WGPU=1` (set in CI) a missing adapter fails instead.
pub fn wgpu_device(what: &str) -> Option<Device> {
    match attn_saes::device::select(attn_saes::device::DeviceChoice::Wgpu) {
        Ok(sel) => Some(sel.device),
        Err(e) => {
            no_wgpu(what, e);
            None
        }
    }
}

/// Says that `what` is skipped for want of a wgpu adapter (`why`); with
/// `ATTN_SAES_REQUIRE_WGPU=1` (set in CI) fails instead.
pub fn no_wgpu(what: &str, why: impl std::fmt::Display) {
    assert!(
        std::env::var("ATTN_SAES_REQUIRE_WGPU").as_deref() != Ok("1"),
        "ATTN_SAES_REQUIRE_WGPU=1 but no wgpu adapter for {what}: {why}"
    );
    println!("SKIPPED {what}: {why}");
}

/// Compares one sequence's logits `[1, pos, vocab]` and per-token CE with the reference
/// tensors `seq{s}.logits` and `seq{s}.ce`.
pub fn check_logits_and_ce(
    tag: &dyn Fn(&str) -> String,
    s: usize,
    logits: Tensor<3>,
    tokens: Tensor<2, burn::tensor::Int>,
    reference: &Reference,
    tol: f64,
) {
    assert_close(
        &tag(&format!("seq{s} logits")),
        &values(logits.clone()),
        &reference.get(&format!("seq{s}.logits")).data,
        tol,
    );
    assert_close(
        &tag(&format!("seq{s} ce")),
        &values(attn_saes::lm::per_token_ce(logits, tokens)),
        &reference.get(&format!("seq{s}.ce")).data,
        tol,
    );
}

/// A finished tiny run ([`config`], `steps` steps, on the CPU) in `dir/run` with its
/// dashboards built over 8 held-out windows (with what wrote what each feature reads, as
/// `dashboard --upstream` builds them) and written to `dir/run/dashboard.safetensors`.
/// Returns the run directory.
pub fn run_with_dashboard(dir: &std::path::Path, steps: usize) -> PathBuf {
    run_with_dashboard_of(config(dir, steps))
}

/// As [`run_with_dashboard`], of the run `cfg` describes.
pub fn run_with_dashboard_of(cfg: attn_saes::train::TrainConfig) -> PathBuf {
    use attn_saes::dashboard::{self, BuildOptions};
    let device = Device::flex();
    let loaded = attn_saes::lm::load_model(&cfg.model, &device).unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    let run_dir = cfg.out_dir.clone();
    attn_saes::train::train(cfg, &loaded, None, &device, "cpu", &tx, &Default::default()).unwrap();
    let (d, _) = dashboard::build_for_run(
        &run_dir,
        None,
        &loaded,
        8 * 16,
        None,
        &BuildOptions {
            upstream: true,
            ..BuildOptions::default()
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    dashboard::build::write(&d, &dashboard::run_dashboard_path(&run_dir)).unwrap();
    run_dir
}

/// Whether a wgpu adapter exists for the app's kittest renderer (lavapipe in CI); see
/// [`wgpu_device`].
pub fn renderer_available() -> bool {
    wgpu_device("the app tests (nothing to render on)").is_some()
}

impl RefTensor {
    /// The values as an f32 tensor of the fixture's shape.
    pub fn tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        let data: Vec<f32> = self.data.iter().map(|&v| v as f32).collect();
        let shape: [usize; D] = self.shape.clone().try_into().unwrap();
        Tensor::from_data(burn::tensor::TensorData::new(data, shape), device)
    }
}

/// An SAE from a reference fixture's `W_enc [H, d, m]`, `b_enc`, `W_dec`, `b_dec` (input
/// scale 1, no thresholds), and the fixture's `x [B, H, d]` as the SAE's input `[H, B, d]`.
pub fn sae_from_reference(
    r: &Reference,
    architecture: attn_saes::sae::Architecture,
    device: &Device,
) -> (attn_saes::sae::BlockDiagSae, Tensor<3>) {
    let w_enc: Tensor<3> = r.get("W_enc").tensor(device);
    let [h, d, m] = w_enc.dims();
    let sae = attn_saes::sae::BlockDiagSae {
        config: attn_saes::sae::SaeConfig {
            n_heads: h,
            d_head: d,
            features_per_head: m,
            architecture,
        },
        w_enc,
        b_enc: r.get("b_enc").tensor(device),
        w_dec: r.get("W_dec").tensor(device),
        b_dec: r.get("b_dec").tensor(device),
        input_scale: vec![1.0; h],
        log_threshold: None,
        batch_threshold: None,
        reads_bos: false,
    };
    let x = r.get("x").tensor::<3>(device).swap_dims(0, 1);
    (sae, x)
}

/// Fails, with the command's stderr, when the command did not succeed.
pub fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the attn-saes binary with `args` on the CPU backend and returns its stdout, failing
/// with its stderr when it fails.
pub fn attn_saes_cli<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The f32 array `name` of the safetensors file at `path`: its shape and values, read with
/// the safetensors crate (independently of the code under test).
pub fn f32_array(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    let values = (view.data().chunks_exact(4))
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), values)
}

/// Checks `compare`'s paired lines for one run, from `lines[0]`: its name and score less
/// the first run's, then each head's difference and standard error in the two rows under
/// it, every cell as the library's `d` gives it. Returns the lines after them.
pub fn assert_paired_lines<'a>(
    lines: &'a [&'a str],
    name: &str,
    d: &attn_saes::run_log::ScoreDifference,
) -> &'a [&'a str] {
    let total = format!(
        "{:+.4} +- {:.4} ({} windows)",
        d.difference, d.se, d.windows
    );
    assert!(
        lines[0].starts_with(name) && lines[0].ends_with(&format!("  {total}")),
        "{:?}: {name} ... {total}",
        lines[0]
    );
    let heads = d.per_head.as_ref().expect("per-head differences");
    let cells = |line: &str, label: &str| -> Vec<String> {
        let rest = (line.strip_prefix(label)).unwrap_or_else(|| panic!("{line:?}: {label:?}"));
        rest.split_whitespace().map(str::to_string).collect()
    };
    let want = |f: fn(&attn_saes::run_log::HeadDifference) -> String| -> Vec<String> {
        heads.iter().map(f).collect()
    };
    assert_eq!(
        cells(lines[1], "  per head"),
        want(|x| format!("{:+.3}", x.difference))
    );
    assert_eq!(
        cells(lines[2], "  its standard error"),
        want(|x| format!("{:.3}", x.se))
    );
    &lines[3..]
}
