//! End to end on the tiny GPT-2 fixture: training lowers MSE and L0, metrics and CE scores
//! are finite, resume equals an uninterrupted run, and bad input gives clear errors with
//! nothing partial left behind.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use attn_saes::device::DeviceChoice;
use attn_saes::lm;
use attn_saes::train::{RunControl, TrainConfig, TrainEvent, checkpoint, train};
use burn::prelude::*;
use common::*;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles \
begins with a single step. To be or not to be, that is the question. All that glitters is not \
gold. The early bird catches the worm, but the second mouse gets the cheese. Where there is a \
will, there is a way. Actions speak louder than words. Knowledge is power, and power corrupts. \
Time flies like an arrow; fruit flies like a banana. Hello world! ";

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("Paragraph {i}. {TEXT}\n\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
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
        device: DeviceChoice::Cpu,
        ..TrainConfig::default()
    }
}

fn run(
    cfg: TrainConfig,
    resume: Option<&Path>,
    control: RunControl,
) -> (
    anyhow::Result<attn_saes::train::TrainSummary>,
    Vec<TrainEvent>,
) {
    let device = Device::flex();
    let loaded = lm::load_model(&cfg.model, &device).unwrap();
    let (tx, rx) = mpsc::channel();
    let result = train(cfg, &loaded, resume, &device, "cpu", &tx, &control);
    drop(tx);
    (result, rx.into_iter().collect())
}

#[test]
fn short_run_lowers_mse_and_l0_with_finite_metrics() {
    let dir = temp_dir("short");
    let (result, events) = run(config(&dir, 200), None, RunControl::default());
    let summary = result.unwrap();
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(m) => Some(m.as_ref().clone()),
            _ => None,
        })
        .collect();
    let (first, last) = (steps.first().unwrap(), steps.last().unwrap());
    println!(
        "first: mse {:.4} L0 {:.2} EV {:.3}; last: mse {:.4} L0 {:.2} EV {:.3}",
        first.mse, first.l0, first.explained_variance, last.mse, last.l0, last.explained_variance
    );
    assert!(last.mse < first.mse, "MSE fell");
    assert!(last.l0 < first.l0, "L0 fell");
    assert_eq!(last.l0_per_head.len(), 4);
    assert!(last.explained_variance <= 1.0 && last.explained_variance > -1.0);
    assert!(last.l2_ratio.is_finite() && last.l2_ratio > 0.0);
    assert!(last.dead_per_head.iter().all(|&d| d <= 32));
    let eval = summary.eval.expect("final eval");
    for v in [eval.ce_clean, eval.ce_sae, eval.ce_zero, eval.ce_score] {
        assert!(v.is_finite(), "{eval:?}");
    }
    assert_eq!(eval.per_head.len(), 4);
    assert!(eval.per_head.iter().all(|h| h.ce_score.is_finite()));
    // Outputs: metrics.jsonl lines, final SAE, SAELens export, checkpoints.
    let run_dir = dir.join("run");
    let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let evals = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval(_)))
        .count();
    assert_eq!(evals, 200 / 30 + 1, "every eval_every steps and at the end");
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .count(),
        steps.len()
    );
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"type\":\"eval\""))
            .count(),
        evals
    );
    assert!(run_dir.join("sae/sae.safetensors").exists());
    assert!(run_dir.join("saelens/cfg.json").exists());
    assert!(run_dir.join("saelens/sparsity.safetensors").exists());
    assert_eq!(
        checkpoint::resolve_resume(&run_dir).unwrap(),
        run_dir.join("checkpoints/step_00000200")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `base` for 40 steps straight, and again stopped at step 23 and resumed; the final
/// weights must be byte-identical.
fn check_resume(tag: &str, base: impl Fn(&Path) -> TrainConfig) {
    let dir_a = temp_dir(&format!("{tag}-full"));
    let (a, _) = run(base(&dir_a), None, RunControl::default());
    a.unwrap();
    let dir_b = temp_dir(&format!("{tag}-resumed"));
    let stop = RunControl {
        stop_after: Some(23),
        ..Default::default()
    };
    let (b1, _) = run(base(&dir_b), None, stop);
    let b1 = b1.unwrap();
    assert!(b1.stopped_early);
    assert_eq!(b1.steps, 23);
    let ckpt = checkpoint::resolve_resume(&dir_b.join("run")).unwrap();
    let saved = checkpoint::read_config(&ckpt).unwrap();
    let (b2, events) = run(saved, Some(&ckpt), RunControl::default());
    assert_eq!(b2.unwrap().steps, 40);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TrainEvent::Started { start_step: 23, .. }))
    );
    assert_same_run(&dir_a.join("run"), &dir_b.join("run"));
    std::fs::remove_dir_all(dir_a).unwrap();
    std::fs::remove_dir_all(dir_b).unwrap();
}

/// `metrics.jsonl` lines without the timing field, which differs from run to run.
fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(data) = v["data"].as_object_mut() {
                data.remove("steps_per_s");
            }
            v
        })
        .collect()
}

/// Two runs that must have ended identically: weights, every metrics line (once each),
/// and the SAELens export's feature densities (the dead-feature window).
fn assert_same_run(a: &Path, b: &Path) {
    let read = |run: &Path, f: &str| std::fs::read(run.join(f)).unwrap();
    assert!(
        read(a, "sae/sae.safetensors") == read(b, "sae/sae.safetensors"),
        "resumed weights differ from the uninterrupted run"
    );
    let (la, lb) = (metric_lines(a), metric_lines(b));
    assert_eq!(la.len(), lb.len(), "metrics.jsonl line counts");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x, y, "metrics.jsonl lines differ");
    }
    assert!(
        read(a, "saelens/sparsity.safetensors") == read(b, "saelens/sparsity.safetensors"),
        "feature densities (dead-feature window) differ after resume"
    );
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    check_resume("relu", |dir| config(dir, 40));
}

/// A training process killed with SIGKILL mid-run and resumed with `--resume` ends like an
/// uninterrupted run: same weights, each metrics line once, same densities; only the
/// newest `keep_checkpoints` remain; leftovers of an interrupted checkpoint are removed.
#[cfg(unix)]
#[test]
fn killed_and_resumed_run_equals_an_uninterrupted_one() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_attn-saes");
    let steps = 1500;
    let train = |dir: &Path, extra: &[&str]| {
        let cfg = TrainConfig {
            checkpoint_every: 50,
            eval_every: 500,
            log_every: 5,
            ..config(dir, steps)
        };
        let path = dir.join("config.toml");
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--device", "cpu", "train", "--headless", "--no-dashboard"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if extra.is_empty() {
            cmd.arg("--config").arg(&path);
        } else {
            cmd.args(extra);
        }
        cmd
    };
    let dir_a = temp_dir("kill-full");
    let out = train(&dir_a, &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir_b = temp_dir("kill-resumed");
    let run_b = dir_b.join("run");
    let mut child = train(&dir_b, &[]).spawn().unwrap();
    // Kill once a checkpoint exists and steps after it were logged.
    let start = std::time::Instant::now();
    loop {
        let logged = std::fs::read_to_string(run_b.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if logged >= 40 && run_b.join("checkpoints/LATEST").exists() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        assert!(start.elapsed().as_secs() < 120, "the run did not get going");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lines_at_kill = metric_lines(&run_b).len();
    let ckpt = checkpoint::resolve_resume(&run_b).unwrap();
    let saved = checkpoint::read_config(&ckpt).unwrap();
    let ckpt_step = ckpt.file_name().unwrap().to_string_lossy()[5..].parse::<usize>().unwrap();
    println!("killed after {lines_at_kill} metrics lines; resuming from step {ckpt_step}");
    assert!(ckpt_step < steps);
    // What an interrupted checkpoint write leaves behind.
    std::fs::create_dir_all(run_b.join("checkpoints/.step_00099999.tmp")).unwrap();
    // Flags that would change the run are refused, naming them.
    let out = train(&dir_b, &["--resume", run_b.to_str().unwrap(), "--lr", "0.5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--lr"), "{err}");
    let out = train(&dir_b, &["--resume", run_b.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(saved.total_training_steps, steps);
    assert_same_run(&dir_a.join("run"), &run_b);
    let kept: Vec<usize> = checkpoint::complete_checkpoints(&run_b)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![steps - 100, steps - 50, steps], "the newest 3 checkpoints");
    assert!(!run_b.join("checkpoints/.step_00099999.tmp").exists());
    std::fs::remove_dir_all(dir_a).unwrap();
    std::fs::remove_dir_all(dir_b).unwrap();
}

/// A corrupt or dangling `LATEST` falls back to the newest complete checkpoint.
#[test]
fn a_bad_latest_falls_back_to_the_newest_complete_checkpoint() {
    let dir = temp_dir("latest");
    let (result, _) = run(config(&dir, 30), None, RunControl::default());
    result.unwrap();
    let run_dir = dir.join("run");
    let latest = run_dir.join("checkpoints/LATEST");
    let newest = run_dir.join("checkpoints/step_00000030");
    for bad in ["step_00000999", "\u{0}\u{ff}garbage", "../../elsewhere"] {
        std::fs::write(&latest, bad).unwrap();
        assert_eq!(checkpoint::resolve_resume(&run_dir).unwrap(), newest, "LATEST = {bad:?}");
    }
    std::fs::remove_file(&latest).unwrap();
    assert_eq!(checkpoint::resolve_resume(&run_dir).unwrap(), newest);
    // An incomplete newer directory is not a checkpoint.
    std::fs::create_dir_all(run_dir.join("checkpoints/step_00000040/sae")).unwrap();
    assert_eq!(checkpoint::resolve_resume(&run_dir).unwrap(), newest);
    std::fs::remove_dir_all(dir).unwrap();
}

/// TopK and BatchTopK on the CPU train through the fused step: they resume exactly, keep
/// at most k features per head and token (on average, for BatchTopK) and lower the MSE.
#[test]
fn topk_and_batchtopk_train_on_the_fused_cpu_step_and_resume_exactly() {
    use attn_saes::train::config::ArchitectureKind;
    let k = 3;
    for (tag, architecture) in [
        ("topk", ArchitectureKind::Topk),
        ("batchtopk", ArchitectureKind::BatchTopk),
    ] {
        let cfg = move |dir: &Path| TrainConfig {
            architecture,
            k,
            ..config(dir, 40)
        };
        check_resume(tag, cfg);
        let dir = temp_dir(&format!("{tag}-metrics"));
        let (result, events) = run(cfg(&dir), None, RunControl::default());
        let last = result.unwrap().last.unwrap();
        let first = events
            .iter()
            .find_map(|e| match e {
                TrainEvent::Step(m) => Some(m.clone()),
                _ => None,
            })
            .unwrap();
        println!(
            "{tag}: mse {:.3} -> {:.3}, L0 per head {:?}",
            first.mse, last.mse, last.l0_per_head
        );
        assert!(last.mse < first.mse);
        assert!(
            last.l0_per_head
                .iter()
                .all(|&l0| l0 <= k as f64 && l0 > 0.0)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn jumprelu_trains_and_resumes_exactly() {
    use attn_saes::train::config::ArchitectureKind;
    let jumprelu = |dir: &Path| TrainConfig {
        architecture: ArchitectureKind::Jumprelu,
        jumprelu_bandwidth: 0.05,
        l1_coefficient: 0.05,
        ..config(dir, 40)
    };
    check_resume("jumprelu", jumprelu);
    let dir = temp_dir("jumprelu-metrics");
    let (result, _) = run(jumprelu(&dir), None, RunControl::default());
    let last = result.unwrap().last.unwrap();
    println!(
        "jumprelu: mse {:.3} L0 {:.2} EV {:.3}",
        last.mse, last.l0, last.explained_variance
    );
    assert!(last.explained_variance > 0.0 && last.l0 > 0.0);
    let sae = attn_saes::sae::BlockDiagSae::load(&dir.join("run/sae"), &Device::flex()).unwrap();
    let lt = values(sae.log_threshold.unwrap());
    let init = attn_saes::sae::JUMPRELU_INIT_THRESHOLD.ln();
    assert!(
        lt.iter().any(|v| (v - init).abs() > 1e-3),
        "thresholds were trained"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_gives_clear_errors_and_no_partial_files() {
    let dir = temp_dir("bad");
    let err = |cfg: TrainConfig, resume: Option<&Path>| {
        let (r, events) = run(cfg, resume, RunControl::default());
        let msg = format!("{:#}", r.expect_err("should fail"));
        assert!(events.iter().any(|e| matches!(e, TrainEvent::Failed(_))));
        msg
    };
    let msg = err(
        TrainConfig {
            hook_layer: Some(9),
            ..config(&dir, 5)
        },
        None,
    );
    assert!(msg.contains("--hook-layer 9 does not exist"), "{msg}");
    let msg = err(
        TrainConfig {
            d_sae: Some(30),
            ..config(&dir, 5)
        },
        None,
    );
    assert!(msg.contains("not divisible"), "{msg}");
    let msg = err(
        TrainConfig {
            dataset: dir.join("missing.jsonl"),
            ..config(&dir, 5)
        },
        None,
    );
    assert!(msg.contains("missing.jsonl"), "{msg}");
    let bad_jsonl = dir.join("bad.jsonl");
    std::fs::write(&bad_jsonl, "{\"text\": \"ok\"}\nnot json\n").unwrap();
    let msg = err(
        TrainConfig {
            dataset: bad_jsonl,
            ..config(&dir, 5)
        },
        None,
    );
    assert!(msg.contains("bad.jsonl"), "{msg}");
    // A corrupt checkpoint: truncated weights.
    let (ok, _) = run(config(&dir, 10), None, RunControl::default());
    ok.unwrap();
    let ckpt = checkpoint::resolve_resume(&dir.join("run")).unwrap();
    let weights = ckpt.join("sae/sae.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err(config(&dir, 20), Some(&ckpt));
    assert!(msg.contains("sae.safetensors"), "{msg}");
    // Nothing half-written anywhere in the run directory.
    let leftovers: Vec<_> = walk(&dir.join("run"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint() {
    let dir = temp_dir("nan");
    let stop = RunControl {
        stop_after: Some(10),
        ..Default::default()
    };
    let (first, _) = run(config(&dir, 40), None, stop);
    first.unwrap();
    let ckpt = checkpoint::resolve_resume(&dir.join("run")).unwrap();
    assert!(ckpt.ends_with("step_00000010"));
    // Resume with an absurd learning rate: the weights blow up and the loss stops being finite.
    let bad = TrainConfig {
        lr: 1e30,
        ..config(&dir, 40)
    };
    let (result, events) = run(bad, Some(&ckpt), RunControl::default());
    let msg = format!("{:#}", result.expect_err("training must stop"));
    assert!(
        msg.contains("loss became") && msg.contains("step_00000010"),
        "{msg}"
    );
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Failed(_))));
    // The last good checkpoint is still the one LATEST names, and it loads.
    assert_eq!(checkpoint::resolve_resume(&dir.join("run")).unwrap(), ckpt);
    attn_saes::sae::BlockDiagSae::load(&ckpt.join("sae"), &Device::flex()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn training_from_an_activation_cache() {
    use attn_saes::data::corpus::Corpus;
    use attn_saes::data::store::{ActivationStore, CacheMeta, StoreConfig, write_cache};
    let dir = temp_dir("cache");
    let cfg = config(&dir, 40);
    let device = Device::flex();
    let loaded = lm::load_model(&cfg.model, &device).unwrap();
    let corpus = Corpus::open(&cfg.dataset, None).unwrap();
    let store_cfg = StoreConfig {
        hook_layer: 1,
        context_size: 16,
        batch_tokens: 64,
        n_batches_in_buffer: 1,
        windows_per_forward: 4,
        drop_bos: true,
        z_convention: Default::default(),
    };
    let mut store = ActivationStore::from_lm(
        store_cfg.clone(),
        &loaded.transformer,
        &corpus,
        &loaded.tokenizer,
        Default::default(),
        0,
        &device,
    )
    .unwrap();
    let meta = CacheMeta {
        model_name: "tiny".into(),
        hook_layer: 1,
        z_convention: Default::default(),
        n_heads: 4,
        d_head: 16,
        context_size: 16,
        drop_bos: true,
        dataset: "corpus".into(),
        shard_rows: vec![],
    };
    let cache_dir = dir.join("acts");
    let mut progress = Vec::new();
    let meta = write_cache(&mut store, meta, &cache_dir, 1000, 300, |n| {
        progress.push(n)
    })
    .unwrap();
    assert_eq!(meta.shard_rows, vec![300, 300, 300, 100]);
    assert_eq!(progress, vec![300, 600, 900, 1000]);
    // The first cached rows are the LM's hook_z of the first window (BOS dropped).
    let shard =
        attn_saes::lm::weights::WeightFile::open(&cache_dir.join("shard_00000.safetensors"))
            .unwrap();
    let rows = shard.read("hook_z").unwrap();
    assert_eq!(rows.shape, vec![300, 4, 16]);

    let (result, events) = run(
        TrainConfig {
            activation_cache: Some(cache_dir.clone()),
            ..cfg.clone()
        },
        None,
        RunControl::default(),
    );
    result.unwrap();
    let mses: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(m) => Some(m.mse),
            _ => None,
        })
        .collect();
    assert!(mses.last().unwrap() < mses.first().unwrap());
    // A cache of another layer is refused.
    let (wrong, _) = run(
        TrainConfig {
            activation_cache: Some(cache_dir),
            hook_layer: Some(0),
            ..cfg
        },
        None,
        RunControl::default(),
    );
    let msg = format!("{:#}", wrong.err().unwrap());
    assert!(msg.contains("cache holds layer 1"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unset_hook_layer_means_the_middle_layer_and_is_recorded() {
    let dir = temp_dir("middle");
    let cfg = TrainConfig {
        hook_layer: None,
        ..config(&dir, 5)
    };
    let (result, _) = run(cfg, None, RunControl::default());
    let ckpt = result.unwrap().checkpoint.unwrap();
    // gpt2-tiny has 2 layers: the middle one is 1, and the saved config says so.
    assert_eq!(checkpoint::read_config(&ckpt).unwrap().hook_layer, Some(1));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A finished run's dashboards: built on windows after the data it trained on, carrying
/// its metrics history and last per-head metrics, written and read back, and read by the
/// `features` report.
#[test]
fn run_dashboards_carry_the_run_and_feed_the_features_report() {
    use attn_saes::dashboard::{self, BuildOptions, format::ExampleGroup};
    use attn_saes::run_log::History;
    let dir = temp_dir("features");
    let cfg = config(&dir, 30);
    let (result, _) = run(cfg.clone(), None, RunControl::default());
    result.unwrap();
    let device = Device::flex();
    let loaded = lm::load_model(&cfg.model, &device).unwrap();
    let run_dir = cfg.out_dir.clone();
    let d = dashboard::build_for_run(
        &run_dir,
        &loaded,
        6,
        None,
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(
        d.meta.settings.windows_from.starts_with("held out"),
        "{}",
        d.meta.settings.windows_from
    );
    assert_eq!(d.meta.n_windows_scanned, 6);
    assert_eq!(d.meta.context_size, 16);
    let (history, bad) = History::read(&run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(bad, 0);
    assert_eq!(d.meta.history, history, "30 steps + 2 evals fit whole");
    assert_eq!(history.steps.len(), 30);
    let last = history.steps.last().unwrap();
    let eval = history.evals.last().unwrap();
    for (h, s) in d.meta.heads.iter().enumerate() {
        assert_eq!(s.run_l0, Some(last.l0_per_head[h]));
        assert_eq!(s.run_dead, Some(last.dead_per_head[h]));
        assert_eq!(s.ce_score, Some(eval.per_head[h].ce_score));
    }
    let path = dashboard::run_dashboard_path(&run_dir);
    dashboard::build::write(&d, &path).unwrap();
    let back = dashboard::build::read(&path).unwrap();
    assert_eq!(back, d.quantized());
    let reports = dashboard::report::top_features(&back, 2, 3);
    assert_eq!(reports.len(), 4 * 2, "two features for each of the 4 heads");
    for r in &reports {
        let f = &back.heads[r.head].features[r.feature];
        // The strongest live features of the head, in order.
        let mut maxes: Vec<f32> = back.heads[r.head]
            .features
            .iter()
            .map(|f| f.max_activation)
            .collect();
        maxes.sort_by(|a, b| b.total_cmp(a));
        let rank = reports
            .iter()
            .filter(|x| x.head == r.head)
            .position(|x| x.feature == r.feature)
            .unwrap();
        assert_eq!(r.max_activation, maxes[rank]);
        let tops: Vec<f32> = f
            .examples
            .iter()
            .filter(|e| e.group == ExampleGroup::Top)
            .take(3)
            .map(|e| e.activation)
            .collect();
        let got: Vec<f32> = r.examples.iter().map(|e| e.activation).collect();
        assert_eq!(got, tops);
        assert_eq!(got[0], r.max_activation);
        assert!(!r.examples[0].token.is_empty());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn background_harvesting_trains_the_same_sae_and_resumes_exactly() {
    let background = |dir: &Path| TrainConfig {
        harvest_in_background: Some(true),
        ..config(dir, 40)
    };
    check_resume("background", background);
    let dir_bg = temp_dir("bg-vs-inline-bg");
    let dir_in = temp_dir("bg-vs-inline-in");
    run(background(&dir_bg), None, RunControl::default())
        .0
        .unwrap();
    let inline = TrainConfig {
        harvest_in_background: Some(false),
        ..config(&dir_in, 40)
    };
    run(inline, None, RunControl::default()).0.unwrap();
    let a = std::fs::read(dir_bg.join("run/sae/sae.safetensors")).unwrap();
    let b = std::fs::read(dir_in.join("run/sae/sae.safetensors")).unwrap();
    assert!(
        a == b,
        "background and inline harvesting must give the same SAE"
    );
    std::fs::remove_dir_all(dir_bg).unwrap();
    std::fs::remove_dir_all(dir_in).unwrap();
}
