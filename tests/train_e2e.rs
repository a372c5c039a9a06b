//! End to end on the tiny GPT-2 fixture: training lowers MSE and L0; the logged metrics,
//! dead-feature counts and CE scores equal recomputations by hand (f64, from the saved SAE
//! and the LM's own hook_z and logits); an activation cache holds the LM's hook_z; resume
//! equals an uninterrupted run; bad input gives clear errors with nothing partial left.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use attn_saes::data::corpus::Corpus;
use attn_saes::data::windows::ContextWindows;
use attn_saes::lm::{self, HeadSelection, HookRequest, Splice, Transformer, ZConvention};
use attn_saes::sae::{Architecture, BlockDiagSae};
use attn_saes::train::{RunControl, TrainConfig, TrainEvent, checkpoint, train};
use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-saes-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(
    cfg: TrainConfig,
    resume: Option<&Path>,
    control: RunControl,
) -> (
    anyhow::Result<attn_saes::train::TrainSummary>,
    Vec<TrainEvent>,
) {
    let device = attn_saes::device::select(cfg.device).unwrap().device;
    let loaded = lm::load_model(&cfg.model, &device).unwrap();
    let (tx, rx) = mpsc::channel();
    let result = train(cfg, &loaded, resume, &device, "test", &tx, &control);
    drop(tx);
    (result, rx.into_iter().collect())
}

/// A ReLU SAE's weights on the host, for computing its forward pass by hand in f64,
/// independently of `BlockDiagSae::forward` and the fused CPU step.
struct HandSae {
    h: usize,
    d: usize,
    m: usize,
    /// [H, d, m]
    w_enc: Vec<f64>,
    /// [H, m]
    b_enc: Vec<f64>,
    /// [H, m, d]
    w_dec: Vec<f64>,
    /// [H, d]
    b_dec: Vec<f64>,
    /// x = scale[h] * z, [H]
    scale: Vec<f64>,
}

impl HandSae {
    fn of(sae: &BlockDiagSae) -> Self {
        assert_eq!(sae.config.architecture, Architecture::Relu);
        Self {
            h: sae.config.n_heads,
            d: sae.config.d_head,
            m: sae.config.features_per_head,
            w_enc: values(sae.w_enc.clone()),
            b_enc: values(sae.b_enc.clone()),
            w_dec: values(sae.w_dec.clone()),
            b_dec: values(sae.b_dec.clone()),
            scale: sae.input_scale.iter().map(|&s| s as f64).collect(),
        }
    }

    /// Features `[m]` and reconstruction `[d]` of head `hd` for an input-space vector `x`:
    /// `f = relu(x W_enc[hd] + b_enc[hd])`, `x_hat = f W_dec[hd] + b_dec[hd]`.
    fn head(&self, hd: usize, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (d, m) = (self.d, self.m);
        let feats: Vec<f64> = (0..m)
            .map(|i| {
                let pre = self.b_enc[hd * m + i]
                    + (0..d)
                        .map(|j| x[j] * self.w_enc[(hd * d + j) * m + i])
                        .sum::<f64>();
                pre.max(0.0)
            })
            .collect();
        let recon = (0..d)
            .map(|j| {
                self.b_dec[hd * d + j]
                    + (0..m)
                        .map(|i| feats[i] * self.w_dec[(hd * m + i) * d + j])
                        .sum::<f64>()
            })
            .collect();
        (feats, recon)
    }

    /// Input-space vector of head `hd` from a raw hook_z row `[H * d]`.
    fn scaled(&self, z_row: &[f64], hd: usize) -> Vec<f64> {
        z_row[hd * self.d..(hd + 1) * self.d]
            .iter()
            .map(|v| v * self.scale[hd])
            .collect()
    }

    /// Reconstruction of a raw hook_z row `[H * d]` in raw units: scale, forward, unscale.
    fn reconstruct_raw(&self, z_row: &[f64]) -> Vec<f64> {
        (0..self.h)
            .flat_map(|hd| {
                let (_, recon) = self.head(hd, &self.scaled(z_row, hd));
                recon.into_iter().map(move |v| v / self.scale[hd])
            })
            .collect()
    }

    /// hook_z `[batch, pos, H, d]` with every position replaced by its reconstruction by
    /// hand, except position 0 with `keep_bos`.
    fn replace(&self, z: Tensor<4>, keep_bos: bool) -> Tensor<4> {
        let dims = z.dims();
        let device = z.device();
        let row = self.h * self.d;
        let mut out = Vec::new();
        for (i, z_row) in values(z).chunks_exact(row).enumerate() {
            if keep_bos && i % dims[1] == 0 {
                out.extend(z_row.iter().map(|&v| v as f32));
            } else {
                out.extend(self.reconstruct_raw(z_row).into_iter().map(|v| v as f32));
            }
        }
        Tensor::from_data(TensorData::new(out, dims), &device)
    }
}

/// The step metrics the trainer logs, computed by hand in f64 (the definitions of
/// `SaeOutput`/`metrics::batch_stats`) from a batch of raw hook_z rows `[B, H * d]`.
struct HandMetrics {
    loss: f64,
    mse: f64,
    l0_per_head: Vec<f64>,
    explained_variance: f64,
    explained_variance_per_head: Vec<f64>,
    l2_ratio: f64,
}

fn metrics_by_hand(sae: &HandSae, rows: &[f32], l1: f64) -> HandMetrics {
    let (h, d, m) = (sae.h, sae.d, sae.m);
    let rows: Vec<Vec<f64>> = rows
        .chunks_exact(h * d)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let b = rows.len() as f64;
    let dec_norm: Vec<f64> = sae
        .w_dec
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    // Per-head input-space batches [H][B][d] and their per-dimension means over the batch.
    let xs: Vec<Vec<Vec<f64>>> = (0..h)
        .map(|hd| rows.iter().map(|z| sae.scaled(z, hd)).collect())
        .collect();
    let (mut sq_err, mut centered) = (vec![0.0; h], vec![0.0; h]);
    let (mut sparsity, mut l0) = (0.0, vec![0.0; h]);
    let mut recon_sq = vec![0.0; rows.len()];
    let mut x_sq = vec![0.0; rows.len()];
    for hd in 0..h {
        let mean: Vec<f64> = (0..d)
            .map(|j| xs[hd].iter().map(|x| x[j]).sum::<f64>() / b)
            .collect();
        for (t, x) in xs[hd].iter().enumerate() {
            let (feats, recon) = sae.head(hd, x);
            for i in 0..m {
                sparsity += feats[i] * dec_norm[hd * m + i] / b;
                l0[hd] += f64::from(u8::from(feats[i] > 0.0)) / b;
            }
            for j in 0..d {
                sq_err[hd] += (x[j] - recon[j]).powi(2);
                centered[hd] += (x[j] - mean[j]).powi(2);
                recon_sq[t] += recon[j].powi(2);
                x_sq[t] += x[j].powi(2);
            }
        }
    }
    let mse = sq_err.iter().sum::<f64>() / b;
    HandMetrics {
        loss: mse + l1 * sparsity,
        mse,
        l0_per_head: l0,
        explained_variance: 1.0 - sq_err.iter().sum::<f64>() / centered.iter().sum::<f64>(),
        explained_variance_per_head: (0..h).map(|hd| 1.0 - sq_err[hd] / centered[hd]).collect(),
        l2_ratio: recon_sq
            .iter()
            .zip(&x_sq)
            .map(|(r, x)| (r / x).sqrt())
            .sum::<f64>()
            / b,
    }
}

/// Mean next-token CE over `windows` (every position but the last predicts the next token),
/// by hand in f64 (log-sum-exp) from the LM's logits, with an optional splice.
fn ce_by_hand(
    model: &Transformer,
    windows: &[Vec<u32>],
    conv: ZConvention,
    splice: Option<&Splice>,
) -> f64 {
    let hooks = HookRequest {
        logits: true,
        z_convention: conv,
        ..Default::default()
    };
    let logits = model
        .run(model.tokens(windows).unwrap(), &hooks, splice)
        .unwrap()
        .logits
        .unwrap();
    let [_, pos, vocab] = logits.dims();
    let logits = values(logits);
    let (mut total, mut n) = (0.0, 0usize);
    for (w, window) in windows.iter().enumerate() {
        for p in 0..pos - 1 {
            let row = &logits[(w * pos + p) * vocab..(w * pos + p + 1) * vocab];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += lse - row[window[p + 1] as usize];
            n += 1;
        }
    }
    total / n as f64
}

/// `(L_zero - L_sae) / (L_zero - L_clean)`.
fn ce_score(clean: f64, sae: f64, zero: f64) -> f64 {
    (zero - sae) / (zero - clean)
}

#[test]
fn short_run_lowers_mse_and_l0_and_its_metrics_recompute_by_hand() {
    let dir = temp_dir("short");
    let cfg = config(&dir, 200);
    let (result, events) = run(cfg.clone(), None, RunControl::default());
    let summary = result.unwrap();
    let steps = logged_steps(&events);
    let (first, last) = (steps.first().unwrap(), steps.last().unwrap());
    println!(
        "first: mse {:.4} L0 {:.2} EV {:.3}; last: mse {:.4} L0 {:.2} EV {:.3}",
        first.mse, first.l0, first.explained_variance, last.mse, last.l0, last.explained_variance
    );
    assert!(last.mse < first.mse, "MSE fell");
    assert!(last.l0 < first.l0, "L0 fell");
    assert_eq!(last.l0_per_head.len(), 4);
    assert_eq!(steps.len(), 200, "log_every = 1");
    // The account of the run's time: every part this run had took some, and none is
    // counted twice (they are the training thread's, one after another).
    let t = &summary.time;
    println!("time: {}", t.describe(summary.seconds));
    for (part, s) in [
        ("steps", t.steps),
        ("metrics", t.metrics),
        ("activations", t.activations),
        ("evaluation", t.evaluation),
        ("checkpoints", t.checkpoints),
    ] {
        assert!(s > 0.0, "{part} took no time: {t:?}");
    }
    let parts = t.steps + t.metrics + t.activations + t.batches + t.evaluation + t.checkpoints;
    assert!(
        parts <= summary.seconds,
        "{parts} s of parts in {} s",
        summary.seconds
    );
    let run_dir = dir.join("run");
    let device = Device::flex();
    let loaded = lm::load_model(&cfg.model, &device).unwrap();
    let corpus = Corpus::open(&cfg.dataset, None).unwrap();
    let layer = cfg.hook_layer.unwrap();

    // Step 191's logged metrics, recomputed by hand from the SAE of the step-190
    // checkpoint and the batch the restored activation store serves next (the batch and
    // pre-update weights step 191 logged from).
    let ckpt = run_dir.join("checkpoints/step_00000190");
    let sae190 = BlockDiagSae::load(&ckpt.join("sae"), &device).unwrap();
    let rows = {
        use attn_saes::data::store::{ActivationStore, StoreConfig, StreamPosition};
        let StreamPosition::Windows(start) = ActivationStore::saved_position(&ckpt).unwrap() else {
            panic!("an LM store saves a windows position");
        };
        let store_config = StoreConfig {
            hook_layer: layer,
            context_size: cfg.context_size,
            batch_tokens: cfg.batch_size,
            n_batches_in_buffer: cfg.n_batches_in_buffer,
            windows_per_forward: cfg.windows_per_forward,
            drop_bos: cfg.drop_bos,
            z_convention: cfg.z_convention,
        };
        let mut store = ActivationStore::from_lm(
            store_config,
            &loaded.transformer,
            &corpus,
            &loaded.tokenizer,
            start,
            cfg.seed,
            &device,
        )
        .unwrap();
        store.restore_state(&ckpt).unwrap();
        store.next_rows().unwrap()
    };
    let logged = &steps[190];
    assert_eq!(logged.step, 191);
    assert_eq!(logged.l1_coefficient, cfg.l1_at(190));
    let hand = metrics_by_hand(&HandSae::of(&sae190), &rows, logged.l1_coefficient);
    // The fused step sums 64 x 64 squared errors in f32 (observed: ~2e-8 relative).
    let rel = |what: &str, got: f64, want: f64, tol: f64| {
        let err = (got - want).abs() / want.abs().max(1e-12);
        println!("{what}: logged {got:.6}, by hand {want:.6}, rel. error {err:.2e}");
        assert!(err <= tol, "{what}: relative error {err:.2e} > {tol:.0e}");
    };
    rel("step 191 loss", logged.loss, hand.loss, 1e-6);
    rel("step 191 mse", logged.mse, hand.mse, 1e-6);
    rel("step 191 L2 ratio", logged.l2_ratio, hand.l2_ratio, 1e-6);
    assert_close(
        "step 191 explained variance",
        &[logged.explained_variance],
        &[hand.explained_variance],
        1e-5,
    );
    assert_close(
        "step 191 explained variance per head",
        &logged.explained_variance_per_head,
        &hand.explained_variance_per_head,
        1e-5,
    );
    // Counts over 64 tokens (multiples of 1/64): exact.
    assert_eq!(logged.l0_per_head, hand.l0_per_head, "step 191 L0 per head");
    assert_eq!(logged.l0, hand.l0_per_head.iter().sum::<f64>());

    // Dead features at step 200 are judged on the window of steps 181..=200, whose
    // densities the SAELens export writes as log10(density + 1e-10). Per head the
    // densities sum to the mean logged L0 over those 20 steps, and the dead count is the
    // number of features below `dead_threshold`.
    let log_density =
        attn_saes::lm::weights::WeightFile::open(&run_dir.join("saelens/sparsity.safetensors"))
            .unwrap()
            .read("sparsity")
            .unwrap()
            .data;
    let density: Vec<f64> = log_density
        .iter()
        .map(|&l| 10f64.powf(l as f64) - 1e-10)
        .collect();
    let m = density.len() / 4;
    assert_eq!(steps[180].step, 181);
    let mut dead = Vec::new();
    for h in 0..4 {
        let head = &density[h * m..(h + 1) * m];
        let window_l0 = steps[180..200]
            .iter()
            .map(|s| s.l0_per_head[h])
            .sum::<f64>()
            / 20.0;
        rel(
            &format!("head {h} density sum (vs mean window L0)"),
            head.iter().sum::<f64>(),
            window_l0,
            1e-6,
        );
        dead.push(head.iter().filter(|&&x| x < cfg.dead_threshold).count());
    }
    println!(
        "dead per head at step 200: logged {:?}, recounted {dead:?}",
        last.dead_per_head
    );
    assert_eq!(last.dead_per_head, dead);
    assert_eq!(last.dead_features, dead.iter().sum::<usize>());

    // The final CE losses, by hand from the LM's logits on the held-out windows, with the
    // final SAE spliced by a hand-written reconstruction (BOS kept, as `drop_bos` asks).
    let eval = summary.eval.expect("final eval");
    assert_eq!(eval.step, 200);
    let model = &loaded.transformer;
    let (eval_windows, _) = ContextWindows::first(
        &corpus,
        &loaded.tokenizer,
        cfg.context_size,
        model.config.bos_token_id,
        cfg.eval_windows,
    )
    .unwrap();
    assert_eq!(eval_windows.len(), 2);
    let final_sae = HandSae::of(&BlockDiagSae::load(&run_dir.join("sae"), &device).unwrap());
    let replace = |z: Tensor<4>| final_sae.replace(z, cfg.drop_bos);
    let zero = |z: Tensor<4>| z.zeros_like();
    let ce = |heads: Option<(HeadSelection, &dyn Fn(Tensor<4>) -> Tensor<4>)>| {
        let splice = heads.map(|(heads, replace)| Splice {
            layer,
            heads,
            replace,
        });
        ce_by_hand(model, &eval_windows, cfg.z_convention, splice.as_ref())
    };
    let ce_tol = 1e-5;
    let clean = ce(None);
    let with_sae = ce(Some((HeadSelection::All, &replace)));
    let zeroed = ce(Some((HeadSelection::All, &zero)));
    assert_close("CE clean", &[eval.ce_clean], &[clean], ce_tol);
    assert_close("CE with the SAE", &[eval.ce_sae], &[with_sae], ce_tol);
    assert_close("CE zero-ablated", &[eval.ce_zero], &[zeroed], ce_tol);
    assert_eq!(
        eval.ce_score,
        ce_score(eval.ce_clean, eval.ce_sae, eval.ce_zero)
    );
    println!(
        "CE clean {clean:.5}, with SAE {with_sae:.5}, zero {zeroed:.5}: score {:.4}",
        eval.ce_score
    );
    assert_eq!(eval.per_head.len(), 4);
    for (h, head) in eval.per_head.iter().enumerate() {
        let s = ce(Some((HeadSelection::One(h), &replace)));
        let z = ce(Some((HeadSelection::One(h), &zero)));
        assert_close(
            &format!("head {h} CE with the SAE"),
            &[head.ce_sae],
            &[s],
            ce_tol,
        );
        assert_close(
            &format!("head {h} CE zero-ablated"),
            &[head.ce_zero],
            &[z],
            ce_tol,
        );
        assert_eq!(
            head.ce_score,
            ce_score(eval.ce_clean, head.ce_sae, head.ce_zero)
        );
    }

    // Outputs: metrics.jsonl lines, final SAE, SAELens export, checkpoints.
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

/// The metrics of a run's logged steps, in order.
fn logged_steps(events: &[TrainEvent]) -> Vec<attn_saes::train::StepMetrics> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(m) => Some(m.as_ref().clone()),
            _ => None,
        })
        .collect()
}

/// AuxK (on by default for TopK and BatchTopK) in a run of `config`'s 20-step dead-feature
/// window: its term is logged once the first window has passed, never before, and at the
/// last step there are dead features and the term is positive.
fn check_aux_k_logged(tag: &str, events: &[TrainEvent]) {
    let steps = logged_steps(events);
    for m in &steps {
        assert_eq!(m.aux_loss.is_some(), m.step > 20, "{tag} step {}", m.step);
    }
    let last = steps.last().expect("a logged step");
    println!(
        "{tag}: AuxK term at the last step {:?}, dead {}",
        last.aux_loss, last.dead_features
    );
    assert!(last.dead_features > 0 && last.aux_loss.unwrap() > 0.0);
}

/// The metrics of a run's first logged step.
fn first_step(events: &[TrainEvent]) -> attn_saes::train::StepMetrics {
    logged_steps(events).remove(0)
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

/// The app's side after its window closed while training ("keep running headless"): a
/// training job started as the app starts one, handed to `continue_in_terminal`. Run by
/// `killed_or_interrupted_and_resumed_runs_equal_an_uninterrupted_one` in a process of its
/// own, which it interrupts with Ctrl-C.
#[cfg(unix)]
#[test]
#[ignore = "a child process of killed_or_interrupted_and_resumed_runs_equal_an_uninterrupted_one, which runs it"]
fn app_job_continued_in_the_terminal() {
    use attn_saes::app::jobs::{TrainRequest, start_training};
    let config = std::env::var_os("ATTN_SAES_TERMINAL_JOB_CONFIG")
        .expect("run by killed_or_interrupted_and_resumed_runs_equal_an_uninterrupted_one");
    let job = start_training(TrainRequest {
        args: attn_saes::cli_train::TrainArgs {
            config: Some(config.into()),
            ..Default::default()
        },
        device: attn_saes::device::DeviceChoice::Cpu,
        dashboards: None,
    });
    attn_saes::app::continue_in_terminal(job).unwrap();
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    check_resume("relu", |dir| config(dir, 40));
}

/// A training process killed with SIGKILL mid-run, or stopped by Ctrl-C, and resumed with
/// `--resume` ends like an uninterrupted run: same weights, each metrics line once, same
/// densities; only the newest `keep_checkpoints` remain; leftovers of an interrupted
/// checkpoint are removed.
#[cfg(unix)]
#[test]
fn killed_or_interrupted_and_resumed_runs_equal_an_uninterrupted_one() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_attn-saes");
    let steps = 1500;
    let write_config = |dir: &Path| {
        let cfg = TrainConfig {
            checkpoint_every: 50,
            eval_every: 500,
            log_every: 5,
            ..config(dir, steps)
        };
        let path = dir.join("config.toml");
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        path
    };
    let train = |dir: &Path, extra: &[&str]| {
        let path = write_config(dir);
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
    // `train --resume RUN`, which must succeed.
    let resume = |dir: &Path, run: &Path| {
        let out = train(dir, &["--resume", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert_succeeded(&out);
    };
    let dir_a = temp_dir("kill-full");
    let out = train(&dir_a, &[]).output().unwrap();
    assert_succeeded(&out);

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
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(start.elapsed().as_secs() < 120, "the run did not get going");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lines_at_kill = metric_lines(&run_b).len();
    let ckpt = checkpoint::resolve_resume(&run_b).unwrap();
    let saved = checkpoint::read_config(&ckpt).unwrap();
    let ckpt_step = ckpt.file_name().unwrap().to_string_lossy()[5..]
        .parse::<usize>()
        .unwrap();
    println!("killed after {lines_at_kill} metrics lines; resuming from step {ckpt_step}");
    assert!(ckpt_step < steps);
    // What an interrupted checkpoint write leaves behind.
    std::fs::create_dir_all(run_b.join("checkpoints/.step_00099999.tmp")).unwrap();
    // Flags that would change the run are refused, naming them.
    let out = train(
        &dir_b,
        &["--resume", run_b.to_str().unwrap(), "--lr", "0.5"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--lr"), "{err}");
    resume(&dir_b, &run_b);
    assert_eq!(saved.total_training_steps, steps);
    assert_same_run(&dir_a.join("run"), &run_b);
    let kept: Vec<usize> = checkpoint::complete_checkpoints(&run_b)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        kept,
        vec![steps - 100, steps - 50, steps],
        "the newest 3 checkpoints"
    );
    assert!(!run_b.join("checkpoints/.step_00099999.tmp").exists());

    // Ctrl-C (SIGINT) mid-run stops after the step with a checkpoint at that step (never
    // older than what was logged when it came, where the periodic ones can be 50 steps
    // behind), says how to continue and exits as interrupted (130); resumed, the run ends
    // like the uninterrupted one.
    let last_logged = |run: &Path| {
        metric_lines(run)
            .iter()
            .rev()
            .find_map(|v| (v["type"] == "step").then(|| v["data"]["step"].as_u64().unwrap()))
            .unwrap_or(0) as usize
    };
    let logged = |run: &Path| {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let interrupt_then_resume = |mut cmd: Command, dir: &Path, says: &str| {
        let run = dir.join("run");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while logged(&run) < 40 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before Ctrl-C"
            );
            assert!(start.elapsed().as_secs() < 120, "the run did not get going");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let logged_at_signal = last_logged(&run);
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
        for said in [says, "Ctrl-C: stopping after this step"] {
            assert!(stderr.contains(said), "{said:?} not in {stderr}");
        }
        let ckpt = checkpoint::resolve_resume(&run).unwrap();
        let ckpt_step = ckpt.file_name().unwrap().to_string_lossy()[5..]
            .parse::<usize>()
            .unwrap();
        println!("Ctrl-C after step {logged_at_signal} was logged; checkpoint at step {ckpt_step}");
        assert!(
            ckpt_step >= logged_at_signal && ckpt_step < steps,
            "checkpoint {ckpt_step}, logged {logged_at_signal} when Ctrl-C came"
        );
        assert!(
            stdout.contains(&format!("{ckpt_step} steps,")) && stdout.contains("(stopped early)"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "to continue: attn-saes train --resume {}",
                run.display()
            )),
            "{stdout}"
        );
        resume(dir, &run);
        assert_same_run(&dir_a.join("run"), &run);
    };
    let dir_c = temp_dir("ctrl-c");
    interrupt_then_resume(train(&dir_c, &[]), &dir_c, "");

    // The same in the app's job that goes on in the terminal when its window closes ("keep
    // running headless"): `app_job_continued_in_the_terminal`, in a process of its own.
    let dir_d = temp_dir("ctrl-c-app");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "app_job_continued_in_the_terminal", "--ignored"])
        .args(["--nocapture", "--test-threads", "1"])
        .env("ATTN_SAES_TERMINAL_JOB_CONFIG", write_config(&dir_d));
    interrupt_then_resume(cmd, &dir_d, "the window closed; the job continues here");
    // A job that fails there fails the process, naming the cause.
    let missing = TrainConfig {
        dataset: dir_d.join("no-such-corpus.txt"),
        ..config(&dir_d, steps)
    };
    let path = dir_d.join("missing.toml");
    std::fs::write(&path, toml::to_string(&missing).unwrap()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "app_job_continued_in_the_terminal", "--ignored"])
        .env("ATTN_SAES_TERMINAL_JOB_CONFIG", &path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("no-such-corpus.txt"),
        "{said}"
    );
    for dir in [dir_a, dir_b, dir_c, dir_d] {
        std::fs::remove_dir_all(dir).unwrap();
    }
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
        assert_eq!(
            checkpoint::resolve_resume(&run_dir).unwrap(),
            newest,
            "LATEST = {bad:?}"
        );
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
        let first = first_step(&events);
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
        check_aux_k_logged(tag, &events);
        // BatchTopK saves its inference thresholds: one per head, positive.
        let sae =
            attn_saes::sae::BlockDiagSae::load(&dir.join("run/sae"), &Device::flex()).unwrap();
        match architecture {
            ArchitectureKind::BatchTopk => {
                let t = attn_saes::files::host_vec(sae.batch_threshold.unwrap()).unwrap();
                let m = sae.config.features_per_head;
                let firsts: Vec<f32> = t.iter().step_by(m).copied().collect();
                println!("{tag}: inference thresholds per head {firsts:?}");
                for head in t.chunks(m) {
                    assert!(
                        head[0] > 0.0 && head.iter().all(|&v| v == head[0]),
                        "{head:?}"
                    );
                }
            }
            _ => assert!(sae.batch_threshold.is_none()),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// On wgpu the step runs through the WGSL kernels (src/train/wgsl.rs): a run stopped and
/// resumed ends byte-identical to an uninterrupted one (the kernels sum in a fixed order),
/// and training lowers the MSE. ReLU and TopK; tests/wgsl_step.rs checks every activation
/// step by step against the fused CPU step.
#[test]
fn the_wgsl_step_on_wgpu_trains_and_resumes_exactly() {
    use attn_saes::train::config::ArchitectureKind;
    if common::wgpu_device("the WGSL step's resume").is_none() {
        return;
    }
    for (tag, architecture) in [
        ("wgsl-relu", ArchitectureKind::Relu),
        ("wgsl-topk", ArchitectureKind::Topk),
    ] {
        let cfg = move |dir: &Path| TrainConfig {
            architecture,
            k: 3,
            // Without AuxK here; with it below.
            aux_k_coefficient: Some(0.0),
            device: attn_saes::device::DeviceChoice::Wgpu,
            ..config(dir, 40)
        };
        check_resume(tag, cfg);
        let dir = temp_dir(&format!("{tag}-metrics"));
        let (result, events) = run(cfg(&dir), None, RunControl::default());
        let last = result.unwrap().last.unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, TrainEvent::Status(s) if s == "training step: WGSL")),
            "{tag}: the WGSL step was not the one used"
        );
        let first = first_step(&events);
        println!(
            "{tag}: mse {:.3} -> {:.3}, L0 {:.2}",
            first.mse, last.mse, last.l0
        );
        assert!(last.mse < 0.8 * first.mse, "{tag}: the MSE did not fall");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A TopK run with AuxK (the default) on wgpu trains on the WGSL step, logs the AuxK term
/// once the first dead-feature window has passed, and a run stopped and resumed ends
/// byte-identical to an uninterrupted one (the dead-feature window comes back from the
/// checkpoint; AuxK's kernels sum in a fixed order too).
#[test]
fn topk_with_aux_k_on_wgpu_trains_on_the_wgsl_step_and_resumes_exactly() {
    use attn_saes::train::config::ArchitectureKind;
    if common::wgpu_device("AuxK on the WGSL step").is_none() {
        return;
    }
    let cfg = |dir: &Path| TrainConfig {
        architecture: ArchitectureKind::Topk,
        k: 3,
        device: attn_saes::device::DeviceChoice::Wgpu,
        ..config(dir, 40)
    };
    check_resume("wgsl-topk-auxk", cfg);
    let dir = temp_dir("wgsl-topk-auxk-metrics");
    let (result, events) = run(cfg(&dir), None, RunControl::default());
    result.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TrainEvent::Status(s) if s == "training step: WGSL")),
        "the WGSL step was not the one used"
    );
    check_aux_k_logged("WGSL TopK", &events);
    std::fs::remove_dir_all(dir).unwrap();
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

/// `train` without `--headless` (and `app`) where there is no display, as over ssh: an error
/// that says what works there, before anything is written (winit's own error named
/// neither).
#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn no_display_says_what_works_without_a_window() {
    let dir = temp_dir("no-display");
    let out_dir = dir.join("run");
    let toml_file = dir.join("config.toml");
    std::fs::write(&toml_file, toml::to_string(&config(&dir, 10)).unwrap()).unwrap();
    let fails = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(args)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("WAYLAND_SOCKET")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = fails(&[
        "--device",
        "cpu",
        "train",
        "--config",
        toml_file.to_str().unwrap(),
    ]);
    assert!(
        said.starts_with("Error: no display to open the window on")
            && said.contains("`attn-saes train --headless` with the same flags"),
        "{said}"
    );
    assert!(!out_dir.exists(), "a run was started");
    let said = fails(&["app"]);
    assert!(said.contains("`attn-saes serve RUN`"), "{said}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `export --run R --out DIR` writes what `train` exported into R/saelens, byte for byte,
/// from a run, its `sae/` or (without the densities) a checkpoint's SAE: it read a
/// `config.toml` that runs do not have and wrote `hook_layer: 0` (`blocks.0.attn.hook_z`)
/// for a layer-24 SAE, without a word, and failed on a run with checkpoints only.
#[test]
fn export_writes_the_saelens_folder_that_training_wrote() {
    let dir = temp_dir("export");
    let cfg = TrainConfig {
        hook_layer: None,
        ..config(&dir, 10)
    };
    let (result, _) = run(cfg.clone(), None, RunControl::default());
    result.unwrap();
    let out_dir = cfg.out_dir.clone();
    let export = |from: &Path, to: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["export", "--run", from.to_str().unwrap(), "--out"])
            .arg(dir.join(to))
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{said}{err}");
        said
    };
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).ok();
    let trained = out_dir.join("saelens");
    let cfg_json = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&bytes(d, "cfg.json").unwrap()).unwrap()
    };
    // gpt2_tiny has 2 layers: the middle one, unset in the config, is 1.
    assert_eq!(cfg_json(&trained)["hook_layer"], 1);
    assert_eq!(cfg_json(&trained)["hook_name"], "blocks.1.attn.hook_z");
    for (from, to) in [(out_dir.clone(), "a"), (out_dir.join("sae"), "b")] {
        let said = export(&from, to);
        assert!(said.contains(" layer 1)"), "{said}");
        let got = dir.join(to);
        assert_eq!(cfg_json(&got), cfg_json(&trained), "{from:?}");
        for f in ["sae_weights.safetensors", "sparsity.safetensors"] {
            assert!(bytes(&got, f).is_some(), "{f} from {from:?}");
            assert_eq!(bytes(&got, f), bytes(&trained, f), "{f} from {from:?}");
        }
    }
    // A checkpoint's SAE: the same hook, no densities (they are the final SAE's), said.
    let ckpt = checkpoint::resolve_resume(&out_dir).unwrap();
    let said = export(&ckpt.join("sae"), "c");
    assert!(said.contains("no sparsity.safetensors"), "{said}");
    assert_eq!(cfg_json(&dir.join("c")), cfg_json(&trained));
    assert!(bytes(&dir.join("c"), "sparsity.safetensors").is_none());
    // A run with checkpoints only (stopped, say): its latest checkpoint's SAE.
    std::fs::remove_dir_all(out_dir.join("sae")).unwrap();
    export(&out_dir, "d");
    assert_eq!(cfg_json(&dir.join("d")), cfg_json(&trained));
    // Imported back without --n-heads: block-diagonal over the 4 heads the export records,
    // with its origin (it became one dense SAE, with none); with a wrong --n-heads, dense,
    // saying so.
    let import = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["import", "--saelens", trained.to_str().unwrap()])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let imported = dir.join("imported");
    let said = import(&["--out", imported.to_str().unwrap()]);
    assert!(!said.contains("dense"), "{said}");
    let sae = BlockDiagSae::load(&imported, &Device::flex()).unwrap();
    assert_eq!((sae.config.n_heads, sae.config.d_head), (4, 16));
    let origin = BlockDiagSae::read_origin(&imported).unwrap().unwrap();
    assert_eq!(
        origin.model,
        cfg_json(&trained)["model_name"].as_str().unwrap()
    );
    assert_eq!(origin.hook_layer, 1);
    assert_eq!(origin.z_convention, ZConvention::TransformerLens);
    let said = import(&["--n-heads", "3", "--out", dir.join("i3").to_str().unwrap()]);
    assert!(
        said.starts_with(
            "its matrices are not block-diagonal over 3 heads: imported as one dense SAE\n"
        ),
        "{said}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A dashboard file finds its SAE from any working directory: new files record the SAE's
/// directory absolute; a file that recorded it relative (`run/sae`, as built from `dir`)
/// finds it beside itself. `text` on such a file, run from elsewhere, said "the SAE at
/// run/sae is not on this machine".
#[test]
fn a_dashboard_file_finds_its_sae_from_any_directory() {
    use attn_saes::dashboard::format::Dashboard;
    let dir = temp_dir("sae-path");
    let run_dir = run_with_dashboard(&dir, 10);
    let file = run_dir.join("dashboard.safetensors");
    let mut d = Dashboard::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(Path::new(&d.meta.sae.source), run_dir.join("sae"));
    assert!(Path::new(&d.meta.sae.source).is_absolute());
    d.meta.sae.source = "run/sae".into();
    std::fs::write(&file, d.to_bytes().unwrap()).unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for cwd in [&elsewhere, &dir] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "text"])
            .arg(&file)
            .arg("the cat sat")
            .current_dir(cwd)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "from {cwd:?}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Flags that would be ignored, counts of 0 and output files that cannot be written are
/// refused before any work (`rank --json /missing/x.json` ranked, then failed to write,
/// printing nothing; `text --scale 2` without --effect, `features --feature --by effect`
/// and `train --stop-after 0` ran as if the flag were not there).
#[test]
fn ignored_flags_zero_counts_and_unwritable_outputs_are_refused_first() {
    let dir = temp_dir("refused-first");
    let run = dir.to_str().unwrap();
    let missing = dir.join("no-such-dir").join("x.json");
    let missing = missing.to_str().unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    let cache = dir.join("cache");
    let cache = cache.to_str().unwrap();
    let out_dir = dir.join("run");
    let out_dir = out_dir.to_str().unwrap();
    let cases: [(&[&str], String); 20] = [
        (
            // A file, so no activation cache: refused before the model loads.
            &[
                "train",
                "--headless",
                "--activation-cache",
                file,
                "--out-dir",
                out_dir,
            ],
            format!(
                "Error: {file} is not an activation cache (run `attn-saes harvest`): reading \
                 {file}/activations.json"
            ),
        ),
        (
            &["harvest", "--out", cache, "--lr", "0.1"],
            "Error: harvest writes hook_z activations and trains nothing, so --lr would change \
             nothing here: drop it, and give it to `train --activation-cache DIR` instead\n"
                .into(),
        ),
        (
            &["harvest", "--out", cache, "--stop-after", "5", "--dense"],
            "Error: harvest writes hook_z activations and trains nothing, so --stop-after, \
             --dense would change nothing here: drop them"
                .into(),
        ),
        (
            &["train", "--headless", "--no-dashboard", "--interval-dfa"],
            "error: the argument '--no-dashboard' cannot be used with '--interval-dfa'".into(),
        ),
        (
            &["evaluate", "--sae", run, "--lr", "5"],
            "error: unexpected argument '--lr' found".into(),
        ),
        (
            &["serve", run, "--write-to", file],
            format!("Error: {file} is a file: --write-to takes a directory\n"),
        ),
        (
            &["evaluate", "--sae", run, "--eval-windows", "1"],
            "Error: --eval-windows must be at least 2 for evaluate (its standard errors need \
             two windows), got 1\n"
                .into(),
        ),
        (
            &["evaluate", "--run", run, "--eval-windows", "1"],
            "Error: --eval-windows must be at least 2 for evaluate (its standard errors need \
             two windows), got 1\n"
                .into(),
        ),
        (
            &["evaluate", "--run", run, "--sae", run],
            "error: the argument '--run <RUN>' cannot be used with '--sae <SAE>'".into(),
        ),
        (
            &["evaluate", "--run", run, "--skip-windows", "3"],
            "error: the argument '--run <RUN>' cannot be used with '--skip-windows".into(),
        ),
        (
            &["evaluate", "--sae", run, "--eval-windows", "0"],
            "Error: --eval-windows must be at least 2 for evaluate (its standard errors need \
             two windows), got 0\n"
                .into(),
        ),
        (
            &["rank", "--run", run, "--json", missing],
            format!(
                "Error: cannot write {missing}: its directory {} does not exist\n",
                dir.join("no-such-dir").display()
            ),
        ),
        (
            &["features", "--run", run, "--json", run],
            format!("Error: {run} is a directory: give a file to write\n"),
        ),
        (
            &["rank", "--run", run, "--top", "0"],
            "error: invalid value '0' for '--top <TOP>': must be at least 1".into(),
        ),
        (
            &["rank", "--run", run, "--tokens", "0"],
            "error: invalid value '0' for '--tokens <TOKENS>': must be at least 1".into(),
        ),
        (
            &["features", "--run", run, "--per-head", "0"],
            "error: invalid value '0' for '--per-head <PER_HEAD>': must be at least 1".into(),
        ),
        (
            &["train", "--headless", "--stop-after", "0"],
            "error: invalid value '0' for '--stop-after <STOP_AFTER>': must be at least 1".into(),
        ),
        (
            &["heads", "--model", "gpt2", "--len", "0"],
            "error: invalid value '0' for '--len <LEN>': must be at least 1".into(),
        ),
        (
            &["text", run, "hi", "--scale", "2"],
            "error: the following required arguments were not provided:\n  --effect <EFFECT>"
                .into(),
        ),
        (
            &[
                "features",
                "--run",
                run,
                "--feature",
                "0,0",
                "--by",
                "effect",
            ],
            "error: the argument '--feature <FEATURE>' cannot be used with '--by <BY>'".into(),
        ),
    ];
    for (args, said) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.starts_with(&said), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(walk(&dir), vec![dir.join("a-file")], "nothing written");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A dense SAE (`--dense`) trains and ends with its dashboards (it had none: dashboards
/// needed one block per head), which `features` reports as one block over every head with
/// the heads each feature writes, and `text` analyses a text with; what changes the LM's
/// run feature by feature (effects, ranking, steering) takes it, naming its features as the
/// dense block's, and so do `evaluate` and `export`; `match` and `label --from` compare it
/// with a block-diagonal run's heads.
#[test]
fn a_dense_run_has_dashboards_and_says_which_commands_take_it() {
    let dir = temp_dir("dense");
    let out_dir = dir.join("run");
    let toml_file = dir.join("config.toml");
    let cfg = TrainConfig {
        dense: true,
        ..config(&dir, 10)
    };
    std::fs::write(&toml_file, toml::to_string(&cfg).unwrap()).unwrap();
    // `evaluate` keeps its baselines in the asset cache's eval-baselines/.
    let asset_cache = dir.join("asset-cache");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu"])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("ATTN_SAES_CACHE", &asset_cache)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let toml_arg = toml_file.to_str().unwrap();
    let train = [
        "train",
        "--headless",
        "--config",
        toml_arg,
        "--interval-dfa",
    ];
    let (code, stdout, stderr) = cli(&train);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let sae = BlockDiagSae::load(&out_dir.join("sae"), &Device::flex()).unwrap();
    assert_eq!((sae.config.n_heads, sae.config.d_head), (1, 4 * 16));
    // The final table: no per-head rows for the one block; the CE loss score per model head
    // named so (four values).
    assert!(!stdout.contains("\n  per head "), "{stdout}");
    let per_model_head = (stdout.lines())
        .find(|l| l.starts_with("  per model head alone"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(per_model_head.split_whitespace().count(), 4 + 4);
    // So does `evaluate`'s.
    let ckpt = checkpoint::resolve_resume(&out_dir).unwrap();
    let (sae_dir, saved) = (out_dir.join("sae"), ckpt.join("config.toml"));
    let (sae_arg, config_arg) = (sae_dir.to_str().unwrap(), saved.to_str().unwrap());
    let (code, said, stderr) = cli(&["evaluate", "--sae", sae_arg, "--config", config_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    let baselines = asset_cache.join("eval-baselines");
    let saved = format!(
        "evaluation baseline saved to {}/eval-baseline-",
        baselines.display()
    );
    assert!(said.contains(&saved), "{said}");
    assert!(!said.contains("\n  per head "), "{said}");
    let line = (said.lines()).find(|l| l.starts_with("  per model head alone"));
    assert_eq!(
        line.map(|l| l.split_whitespace().count()),
        Some(4 + 4),
        "{said}"
    );
    let file = out_dir.join("dashboard.safetensors");
    assert!(
        stdout.contains(&format!(
            "dashboards: {} (one dense block over 4 heads, 128 features over ",
            file.display()
        )) && stdout.contains("; each feature's effect on the loss over "),
        "{stdout}"
    );
    let d = attn_saes::dashboard::build::read(&file).unwrap();
    assert_eq!(d.meta.dense_heads(), Some(4));
    // `--interval-dfa`: the interval groups' examples have DFA (and by head) too.
    let interval: Vec<_> = (d.heads[0].features.iter())
        .flat_map(|f| &f.examples)
        .filter(|e| e.group != attn_saes::dashboard::format::ExampleGroup::Top)
        .collect();
    assert!(interval.len() > 20, "{} interval examples", interval.len());
    for e in interval {
        assert_eq!(e.dfa.len(), e.target as usize + 1);
        assert_eq!(e.dfa_by_head.len(), 4);
    }
    // Its one block's CE loss score is the run's total one, not model head 0's (the run's
    // per-head scores splice the reconstruction into one head at a time).
    let (history, _) = attn_saes::run_log::History::read(&out_dir.join("metrics.jsonl")).unwrap();
    let eval = history.evals.last().unwrap();
    assert_eq!(eval.per_head.len(), 4);
    assert_eq!(d.meta.heads[0].ce_score, Some(eval.ce_score));
    assert_ne!(eval.ce_score, eval.per_head[0].ce_score);
    assert!(
        d.meta.effects.is_some(),
        "effects on the loss for a dense SAE too"
    );
    let run = out_dir.to_str().unwrap();
    // `features` names the block and gives the heads each feature writes, from the SAE's
    // own decoder: the share of each head's part of the row's squared norm.
    let (code, stdout, stderr) = cli(&["features", "--run", run, "--feature", "0,5"]);
    assert_eq!(code, Some(0), "{stderr}");
    let w_dec = sae.w_dec.clone().into_data().try_to_vec::<f32>().unwrap(); // [1, 128, 64]
    let row = &w_dec[5 * 64..6 * 64];
    let parts: Vec<f64> = (row.chunks(16))
        .map(|p| p.iter().map(|&x| x as f64 * x as f64).sum())
        .collect();
    let total: f64 = parts.iter().sum();
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|&a, &b| parts[b].total_cmp(&parts[a]));
    let first = format!(
        "writes to h{} {:.0}%",
        order[0],
        100.0 * parts[order[0]] / total
    );
    assert!(
        stdout.starts_with("feature 5 (dense, all heads), density "),
        "{stdout}"
    );
    assert!(stdout.contains(&first), "{first}: {stdout}");
    // And the heads a feature that fired reads: each head's share of its top examples' DFA
    // by head, by size, which adds up to each example's DFA.
    let live = (d.heads[0].features.iter())
        .position(|f| f.examples.len() > 3)
        .unwrap();
    let fd = &d.heads[0].features[live];
    let mut sums = [0f64; 4];
    for e in fd
        .examples
        .iter()
        .filter(|e| e.group == attn_saes::dashboard::format::ExampleGroup::Top)
    {
        let by_head: f32 = e.dfa_by_head.iter().sum();
        let dfa: f32 = e.dfa.iter().sum();
        assert!(
            (by_head - dfa).abs() < 1e-2 * dfa.abs().max(1.0),
            "{by_head} vs {dfa}"
        );
        for (k, x) in e.dfa_by_head.iter().enumerate() {
            sums[k] += (*x as f64).abs();
        }
    }
    let total: f64 = sums.iter().sum();
    let shares: Vec<f32> = sums.iter().map(|x| (x / total) as f32).collect();
    let reads = attn_saes::dashboard::format::head_shares_text(&shares, 4);
    let asked = format!("0,{live}");
    let (code, stdout, stderr) = cli(&["features", "--run", run, "--feature", &asked]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "\n    reads through {reads} (of its top examples' DFA"
        )),
        "{reads}: {stdout}"
    );
    let (code, stdout, _) = cli(&["features", "--run", run]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("\n  all heads: "), "{stdout}");
    // `text` shows the features firing on each token, in the one block.
    let (code, stdout, stderr) = cli(&["text", run, "hello there", "--pick", "1,0,5"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(" all heads: #"), "{stdout}");
    assert!(
        stdout.contains("feature 5 (dense, DFA summed over the heads) at 1: activation "),
        "{stdout}"
    );
    // Its DFA by head adds up to its DFA by source (printed to 3 and 4 decimals).
    let number = |s: &str| s.trim().parse::<f64>().unwrap();
    let by_source: f64 = (stdout.lines())
        .skip_while(|l| !l.contains("DFA by source:"))
        .skip(1)
        .take_while(|l| !l.starts_with("DFA by head"))
        .map(|l| number(l.rsplit(' ').next().unwrap()))
        .sum();
    let by_head = (stdout.lines())
        .find_map(|l| l.strip_prefix("DFA by head (each head's terms over the sources): "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let parts: Vec<f64> = (by_head.split(" · "))
        .filter(|p| *p != "-")
        .map(|p| number(p.split_once(' ').unwrap().1))
        .collect();
    let sum: f64 = parts.iter().sum();
    assert!(
        (sum - by_source).abs() < 3e-3,
        "{sum} vs {by_source}: {stdout}"
    );
    // What changes the model's run feature by feature takes a dense SAE (it refused one):
    // the strongest feature in the dashboards, named as the dense block's.
    let f = (0..128)
        .max_by(|&x, &y| {
            let max = |f: usize| d.heads[0].features[f].max_activation;
            max(x).total_cmp(&max(y))
        })
        .unwrap();
    let (feature, name) = (format!("0,{f}"), format!("feature {f} (dense)"));
    for (args, says) in [
        (
            &["features", "--run", run, "--effect", &feature][..],
            format!(": {name} removed on its "),
        ),
        (
            &["rank", "--run", run, "--tokens", "32"],
            " helps most:\n".into(),
        ),
        (
            &["text", run, "hello there", "--rank", "3"],
            " helps most:\n".into(),
        ),
        (
            &["text", run, "hello there", "--effect", &feature],
            format!("{name} removed where it fires ("),
        ),
        (
            &[
                "steer",
                run,
                "hello",
                "--feature",
                &feature,
                "--tokens",
                "3",
            ],
            format!("{name} added at strength "),
        ),
    ] {
        let (code, stdout, stderr) = cli(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains(&says), "{args:?}: {stdout}");
        assert!(!stdout.contains("by head"), "{args:?}: {stdout}");
    }
    // `dashboard` takes the model, corpus and layer with --sae only (a run records its
    // own), and no training flags (it accepted all of them and ignored most).
    let (code, _, stderr) = cli(&["dashboard", "--run", run, "--model", "gpt2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the argument '--run <RUN>' cannot be used with '--model <MODEL>'"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&["dashboard", "--run", run, "--lr", "5"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unexpected argument '--lr'"), "{stderr}");
    let sae_dir = out_dir.join("sae");
    let (code, stdout, stderr) = cli(&[
        "evaluate",
        "--sae",
        sae_dir.to_str().unwrap(),
        "--config",
        toml_arg,
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // The same SAE, model, layer and windows: the baseline is read back, and the report is
    // the first one's but for that line.
    let read = format!(
        "evaluation baseline (clean and zero-ablated losses) read from {}/eval-baseline-",
        baselines.display()
    );
    assert!(stdout.contains(&read), "{stdout}");
    let others = |out: &str| -> Vec<String> {
        (out.lines())
            .filter(|l| !l.starts_with("evaluation baseline"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(others(&stdout), others(&said));
    assert!(stdout.contains("CE loss score"), "{stdout}");
    let exported = dir.join("saelens");
    let (code, stdout, stderr) =
        cli(&["export", "--run", run, "--out", exported.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(exported.join("cfg.json").is_file(), "{stdout}");

    // Against a block-diagonal run of the same layer: `match` and `label --from` compare
    // each head's features with the dense ones, a head's feature being a direction in its
    // head's part of hook_z; checked against cosines computed here in f64.
    let block_dir = dir.join("block");
    std::fs::create_dir_all(&block_dir).unwrap();
    let block_toml = block_dir.join("config.toml");
    let block_cfg = config(&block_dir, 10);
    std::fs::write(&block_toml, toml::to_string(&block_cfg).unwrap()).unwrap();
    let (code, stdout, stderr) = cli(&[
        "train",
        "--headless",
        "--config",
        block_toml.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let block_run = block_cfg.out_dir.to_str().unwrap();
    // `features --writes-to H`: the dense run's live features whose decoder row has its
    // largest share in head H, as the SAE's weights say; refused for the block-diagonal run.
    let json = dir.join("writes.json");
    for head in 0..4 {
        let (code, _, stderr) = cli(&[
            "features",
            "--run",
            run,
            "--writes-to",
            &head.to_string(),
            "--per-head",
            "128",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        let listed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let mut got: Vec<u64> = (listed["features"].as_array().unwrap().iter())
            .map(|f| f["feature"].as_u64().unwrap())
            .collect();
        got.sort_unstable();
        let want: Vec<u64> = (0..128)
            .filter(|&g| d.heads[0].features[g].density > 0.0)
            .filter(|&g| {
                let parts: Vec<f64> = (w_dec[g * 64..(g + 1) * 64].chunks(16))
                    .map(|p| p.iter().map(|&x| x as f64 * x as f64).sum())
                    .collect();
                (0..4).max_by(|&a, &b| parts[a].total_cmp(&parts[b])) == Some(head)
            })
            .map(|g| g as u64)
            .collect();
        assert_eq!(got, want, "head {head}");
    }
    let (code, _, stderr) = cli(&["features", "--run", block_run, "--writes-to", "0"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("--writes-to 0: the SAE is block-diagonal, so its head 0 is its block 0"),
        "{stderr}"
    );
    let block = BlockDiagSae::load(&block_cfg.out_dir.join("sae"), &Device::flex()).unwrap();
    let w_block = block.w_dec.clone().into_data().try_to_vec::<f32>().unwrap(); // [4, 32, 16]
    let (m, d) = (block.config.features_per_head, 16);
    assert_eq!((block.config.n_heads, m), (4, 32));
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    // cos(dense i, head h's feature f)
    let cos = |i: usize, h: usize, f: usize| {
        let (x, y) = (
            &w_dec[i * 64..(i + 1) * 64],
            &w_block[(h * m + f) * d..][..d],
        );
        let dot: f64 = (0..d).map(|k| x[h * d + k] as f64 * y[k] as f64).sum();
        dot / (norm(x) * norm(y))
    };
    let best = |items: Vec<((usize, usize), f64)>| {
        (items.into_iter()).fold(
            ((0, 0), f64::NEG_INFINITY),
            |b, x| if x.1 > b.1 { x } else { b },
        )
    };
    let heads_features = || (0..4).flat_map(|h| (0..m).map(move |f| (h, f)));
    let (code, stdout, stderr) = cli(&["match", run, block_run, "--feature", "0,5"]);
    assert_eq!(code, Some(0), "{stderr}");
    let ((h, f), c) = best(
        heads_features()
            .map(|(h, f)| ((h, f), cos(5, h, f)))
            .collect(),
    );
    assert!(
        stdout.contains(&format!(
            "Feature 5 of A: closest in B head {h} #{f} {c:.3}, "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("(dense: 128 features over 4 heads), B: "),
        "{stdout}"
    );
    // Head 2 of B: the mean of its features' closest cosines among the dense ones; then,
    // over the features that fired in the dashboards, the same, and the dense features
    // whose closest is in head 2 with their mean cosine.
    let fired = |file: &Path, h: usize| -> Vec<bool> {
        let d = attn_saes::dashboard::build::read(file).unwrap();
        d.heads[h]
            .features
            .iter()
            .map(|f| f.density > 0.0)
            .collect()
    };
    let block_fired = fired(&block_cfg.out_dir.join("dashboard.safetensors"), 2);
    let dense_fired = fired(&file, 0);
    let closest2: Vec<f64> = (0..m)
        .map(|f| best((0..128).map(|i| ((0, i), cos(i, 2, f))).collect()).1)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let fired2: Vec<f64> = (0..m)
        .filter(|&f| block_fired[f])
        .map(|f| closest2[f])
        .collect();
    let in_head2: Vec<f64> = (0..128)
        .filter(|&i| dense_fired[i])
        .map(|i| {
            best(
                heads_features()
                    .map(|(h, f)| ((h, f), cos(i, h, f)))
                    .collect(),
            )
        })
        .filter(|((h, _), _)| *h == 2)
        .map(|(_, c)| c)
        .collect();
    let line = (stdout.lines())
        .find(|l| l.starts_with("  head 2: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.starts_with(&format!("  head 2: {:.3}, ", mean(&closest2))),
        "{line}"
    );
    let (_, after) = line.split_once(" | ").unwrap_or_else(|| panic!("{line}"));
    assert!(
        after.starts_with(&format!("{:.3}, ", mean(&fired2))),
        "{line}"
    );
    let tail = match in_head2.len() {
        0 => "; 0 of A's (-)".to_string(),
        n => format!("; {n} of A's ({:.3})", mean(&in_head2)),
    };
    assert!(after.ends_with(&tail), "{line}: {tail}");
    // A label on head 1's feature 3 is copied to its closest dense feature, and one on
    // dense feature 7 to its closest head feature.
    let labelled = |run: &str, feature: &str, text: &str| {
        let (code, _, stderr) = cli(&["label", run, feature, text]);
        assert_eq!(code, Some(0), "{stderr}");
    };
    labelled(block_run, "1,3", "block's");
    labelled(run, "0,7", "dense's");
    for (to, from) in [(run, block_run), (block_run, run)] {
        let (code, stdout, stderr) = cli(&["label", to, "--from", from, "--threshold=-1"]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains(&format!("labels from {from}")), "{stdout}");
    }
    let (_, i) = best((0..128).map(|i| ((0, i), cos(i, 1, 3))).collect()).0;
    let (g, f) = best(
        heads_features()
            .map(|(h, f)| ((h, f), cos(7, h, f)))
            .collect(),
    )
    .0;
    let labels = |run: &str| {
        let file = Path::new(run).join("dashboard.safetensors");
        let meta = attn_saes::dashboard::build::read(&file).unwrap().meta;
        let path = attn_saes::dashboard::labels::labels_path(&file);
        attn_saes::dashboard::labels::Labels::read(&path, &meta).unwrap()
    };
    if i != 7 {
        assert_eq!(labels(run).get(0, i), Some("block's"));
    }
    if (g, f) != (1, 3) {
        assert_eq!(labels(block_run).get(g, f), Some("dense's"));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A mistyped run, dashboard, SAE, config or cache path: every command that reads one says
/// that it does not exist, naming it, and nothing else (they said "reading X: No such file
/// or directory", "X is neither a checkpoint directory nor ...", "building it first" and
/// more, each its own way).
#[test]
fn a_missing_input_is_named_the_same_way_by_every_command() {
    let dir = temp_dir("missing-input");
    let nope = dir.join("no-such-run");
    let n = nope.to_str().unwrap();
    let commands: [&[&str]; 20] = [
        &["text", n, "hi"],
        &["steer", n, "hi", "--feature", "0,0"],
        &["features", "--run", n],
        &["rank", "--run", n],
        &["export", "--run", n, "--out", "x"],
        &["dashboard", "--run", n],
        &["dashboard", "--sae", n, "--model", "gpt2"],
        &["serve", n],
        &["app", n],
        &["match", n, n],
        &["compare", n],
        &["label", n],
        &["import", "--saelens", n, "--out", "x"],
        &["import", "--seed", n, "--out", "x"],
        &["evaluate", "--sae", n, "--model", "gpt2"],
        &["train", "--headless", "--resume", n],
        &["train", "--headless", "--config", n],
        &["train", "--headless", "--activation-cache", n],
        &["harvest", "--out", "x", "--config", n],
        &["train", "--resume", n],
    ];
    for args in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(args)
            .current_dir(&dir)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(
            said.trim(),
            format!("Error: {n} does not exist"),
            "{args:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "something was written"
    );
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

/// A harvest stopped part way (as the app's Stop or Ctrl-C stop it) leaves no cache but its
/// shards and `harvest-state.json`; run again with the same settings it goes on from its
/// last shard and writes, byte for byte, the shards and metadata an unstopped harvest
/// writes. Other settings start anew.
#[test]
fn a_stopped_harvest_goes_on_from_its_last_shard() {
    use attn_saes::cli_train::{HarvestProgress, TrainArgs, harvest};
    use attn_saes::data::store::{HARVEST_STATE, HarvestState};
    let dir = temp_dir("harvest-resume");
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, toml::to_string(&config(&dir, 40)).unwrap()).unwrap();
    let args = TrainArgs {
        config: Some(cfg_path),
        ..Default::default()
    };
    let cpu = attn_saes::device::DeviceChoice::Cpu;
    let shard =
        |d: &Path, i: usize| std::fs::read(d.join(format!("shard_{i:05}.safetensors"))).unwrap();
    let state_of = |d: &Path| -> HarvestState {
        serde_json::from_str(&std::fs::read_to_string(d.join(HARVEST_STATE)).unwrap()).unwrap()
    };
    // Stopped after the forward (4 windows, 60 rows) that passes 650 rows.
    let mut stop = |p: HarvestProgress| -> anyhow::Result<()> {
        match p {
            HarvestProgress::Written(n) if n >= 650 => anyhow::bail!("stopped at {n}"),
            _ => Ok(()),
        }
    };
    let part = dir.join("part");
    // Shards of 300 end with a forward; shards of 250 in one, whose rows the resumed
    // harvest must split as the first did.
    for (shard_tokens, kept, rows_done, resumed_first) in [
        (300, vec![300, 300], 0, "660"),
        (250, vec![250, 250], 20, "540"),
    ] {
        let full = dir.join(format!("full-{shard_tokens}"));
        let whole = harvest(&args, cpu, 1000, shard_tokens, &full, &mut |_| Ok(())).unwrap();
        assert!(!full.join(HARVEST_STATE).exists());
        let stopped = harvest(&args, cpu, 1000, shard_tokens, &part, &mut stop);
        assert_eq!(format!("{:#}", stopped.unwrap_err()), "stopped at 660");
        assert!(!part.join("activations.json").exists());
        let state = state_of(&part);
        assert_eq!((state.meta.shard_rows, state.rows_done), (kept, rows_done));
        let mut events = Vec::new();
        let resumed = harvest(&args, cpu, 1000, shard_tokens, &part, &mut |p| {
            events.push(match p {
                HarvestProgress::Resuming { shards, tokens } => {
                    format!("resuming {shards} {tokens}")
                }
                HarvestProgress::Written(n) => format!("{n}"),
                HarvestProgress::LoadingModel(_) => "loading".into(),
            });
            Ok(())
        })
        .unwrap();
        let resuming = format!("resuming 2 {}", 2 * shard_tokens);
        assert_eq!(events[..3], ["loading", resuming.as_str(), resumed_first]);
        assert_eq!(events.last().map(String::as_str), Some("1000"));
        assert_eq!(resumed, whole);
        for i in 0..whole.shard_rows.len() {
            assert!(
                shard(&part, i) == shard(&full, i),
                "{shard_tokens}: shard {i} differs"
            );
        }
        assert_eq!(
            std::fs::read(part.join("activations.json")).unwrap(),
            std::fs::read(full.join("activations.json")).unwrap()
        );
        assert!(!part.join(HARVEST_STATE).exists());
        // Stopped again: other settings (shards of 200) start anew.
        assert!(harvest(&args, cpu, 1000, shard_tokens, &part, &mut stop).is_err());
        let mut resumed_other = false;
        let other = harvest(&args, cpu, 1000, 200, &part, &mut |p| {
            resumed_other |= matches!(p, HarvestProgress::Resuming { .. });
            stop(p)
        });
        assert!(other.is_err() && !resumed_other);
        assert_eq!(state_of(&part).meta.shard_rows, [200, 200, 200]);
    }
    // Once complete (the shards of 200 resumed to the end), a harvest starts anew.
    for resumes in [true, false] {
        let mut resumed = false;
        harvest(&args, cpu, 1000, 200, &part, &mut |p| {
            resumed |= matches!(p, HarvestProgress::Resuming { .. });
            Ok(())
        })
        .unwrap();
        assert_eq!(resumed, resumes);
    }
}

#[test]
fn training_from_an_activation_cache() {
    use attn_saes::data::store::{ActivationStore, StoreConfig, write_cache};
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
    // As `harvest` does: the store starts after the windows the run holds out for its CE
    // evaluation.
    let (held_out, start) = ContextWindows::first(
        &corpus,
        &loaded.tokenizer,
        16,
        loaded.transformer.config.bos_token_id,
        cfg.eval_windows,
    )
    .unwrap();
    assert_eq!(held_out.len(), 2);
    let mut store = ActivationStore::from_lm(
        store_cfg.clone(),
        &loaded.transformer,
        &corpus,
        &loaded.tokenizer,
        start,
        0,
        &device,
    )
    .unwrap();
    let meta = attn_saes::data::store::CacheMeta {
        dataset: cfg.dataset.display().to_string(),
        held_out_windows: Some(cfg.eval_windows),
        ..tiny_cache_meta()
    };
    let cache_dir = dir.join("acts");
    let mut progress = Vec::new();
    let meta = write_cache(&mut store, meta, &cache_dir, 1000, 300, None, |n| {
        progress.push(n);
        Ok(())
    })
    .unwrap();
    assert_eq!(meta.shard_rows, vec![300, 300, 300, 100]);
    // Reported after each forward of 4 windows (4 x 15 rows), the last capped at 1000.
    let forwards: Vec<usize> = (1..=16).map(|i| i * 60).chain([1000]).collect();
    assert_eq!(progress, forwards);
    // Every cached row is the LM's own hook_z: the store started after the two held-out
    // windows, so the shards hold the next windows' rows in corpus order, BOS dropped
    // (15 rows per window), unshuffled.
    let cached: Vec<f64> = meta
        .shard_rows
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            let path = cache_dir.join(format!("shard_{i:05}.safetensors"));
            let rows = attn_saes::lm::weights::WeightFile::open(&path)
                .unwrap()
                .read("hook_z")
                .unwrap();
            assert_eq!(rows.shape, vec![n, 4, 16]);
            rows.data.into_iter().map(f64::from)
        })
        .collect();
    let model = &loaded.transformer;
    let rows_per_window = 15;
    let n_windows = 1000usize.div_ceil(rows_per_window);
    let windows: Vec<Vec<u32>> = ContextWindows::new(
        &corpus,
        &loaded.tokenizer,
        16,
        model.config.bos_token_id,
        Default::default(),
        true,
    )
    .unwrap()
    .skip(2)
    .take(n_windows)
    .map(|w| w.unwrap().0)
    .collect();
    let mut hooks = model
        .run(
            model.tokens(&windows).unwrap(),
            &HookRequest::hook_z(&[1]),
            None,
        )
        .unwrap();
    // [windows, pos, heads, d_head], BOS position dropped.
    let hook_z = hooks.hook_z.remove(&1).unwrap();
    let hook_z = values(hook_z.slice([0..n_windows, 1..16, 0..4, 0..16]));
    assert_close(
        "cached rows vs the LM's hook_z",
        &cached,
        &hook_z[..1000 * 4 * 16],
        1e-6,
    );

    let (result, events) = run(
        TrainConfig {
            activation_cache: Some(cache_dir.clone()),
            ..cfg.clone()
        },
        None,
        RunControl::default(),
    );
    result.unwrap();
    // The run's dashboards take the windows after those the cache's harvest read (2 held
    // out, then 17 forwards of 4 windows): never trained on.
    let stream = |skip: usize, n: usize| -> Vec<Vec<u32>> {
        ContextWindows::new(
            &corpus,
            &loaded.tokenizer,
            16,
            model.config.bos_token_id,
            Default::default(),
            false,
        )
        .unwrap()
        .skip(skip)
        .take(n)
        .map(|w| w.unwrap().0)
        .collect()
    };
    assert_eq!(meta.end.map(|e| e.corpus.epoch), Some(0));
    let ckpt = checkpoint::resolve_resume(&cfg.out_dir).unwrap();
    let run_config = checkpoint::read_config(&ckpt).unwrap();
    let held_out = |run_config: &TrainConfig| {
        attn_saes::dashboard::held_out_windows(run_config, &ckpt, &loaded, 16, 3).unwrap()
    };
    let (windows, from) = held_out(&run_config);
    assert_eq!(
        from,
        "held out: the corpus after the activation cache the run trained from"
    );
    assert_eq!(windows, stream(2 + 17 * 4, 3));
    // Where that is not known, the corpus start, said.
    let gone = TrainConfig {
        activation_cache: Some(dir.join("gone")),
        ..run_config.clone()
    };
    let (windows, from) = held_out(&gone);
    assert_eq!(windows, stream(0, 3));
    assert_eq!(
        from,
        "the corpus start (the activation cache the run trained from is gone, so these \
         windows may have been trained on)"
    );
    let notices = |events: &[TrainEvent]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Notice(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    // 40 steps of 64 tokens from 1000 cached rows: said once, kept in view. The first
    // evaluation's baseline is saved in the cache for the next run from it.
    let read_twice = "the activation cache holds 1000 tokens and 40 steps x 64 take 2560: it is \
                      read 2.6 times over (`harvest --tokens` harvests more)";
    let baselines: Vec<PathBuf> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("eval-baseline-"))
        .collect();
    assert_eq!(baselines.len(), 1, "{baselines:?}");
    let baseline = &baselines[0];
    assert_eq!(
        notices(&events),
        [
            read_twice.to_string(),
            format!("evaluation baseline saved to {}", baseline.display())
        ]
    );
    // A second run from the cache (a sweep's next) reads it and is evaluated to the bit as
    // the first was; its SAE is the same too (same seed), so every number must match.
    let evals = |events: &[TrainEvent]| -> Vec<attn_saes::train::EvalMetrics> {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Eval(m) => Some((**m).clone()),
                _ => None,
            })
            .collect()
    };
    let (again, events_again) = run(
        TrainConfig {
            activation_cache: Some(cache_dir.clone()),
            out_dir: dir.join("again"),
            ..cfg.clone()
        },
        None,
        RunControl::default(),
    );
    again.unwrap();
    assert_eq!(
        notices(&events_again),
        [
            read_twice.to_string(),
            format!(
                "evaluation baseline (clean and zero-ablated losses) read from {}",
                baseline.display()
            )
        ]
    );
    assert!(!evals(&events).is_empty());
    assert_eq!(evals(&events), evals(&events_again));
    // A sweep's next setting evaluates on the same windows: `compare` gives its last CE
    // loss score less the first run's, paired window by window (the library's, from the
    // runs' metrics.jsonl: the scores' difference, with the paired error).
    let half = dir.join("l1-half");
    let (other, _) = run(
        TrainConfig {
            activation_cache: Some(cache_dir.clone()),
            out_dir: half.clone(),
            l1_coefficient: cfg.l1_coefficient / 2.0,
            ..cfg.clone()
        },
        None,
        RunControl::default(),
    );
    other.unwrap();
    let last_eval = |run: &Path| {
        let h = attn_saes::run_log::read_history(run).unwrap();
        h.evals.last().unwrap().clone()
    };
    let (first_eval, half_eval) = (last_eval(&cfg.out_dir), last_eval(&half));
    let d = attn_saes::run_log::score_difference(&first_eval, &half_eval).unwrap();
    let want = half_eval.ce_score - first_eval.ce_score;
    assert!(
        (d.difference - want).abs() < 1e-12 && want.abs() > 1e-4,
        "{d:?}: {want}"
    );
    let again = dir.join("again");
    let names = [&cfg.out_dir, &again, &half].map(|p| p.as_os_str());
    let table = attn_saes_cli([std::ffi::OsStr::new("compare")].into_iter().chain(names));
    let short = |p: &Path| attn_saes::run_log::short_name(p);
    let (_, paired) = table.split_once("\n\n").unwrap();
    let lines: Vec<&str> = paired.lines().collect();
    let heading = format!(
        "CE score less {}'s, paired window by window:",
        short(&cfg.out_dir)
    );
    assert_eq!(lines[0], heading, "{table}");
    // The second run is the first's twin: 0 +- 0, each head's too.
    let zero = attn_saes::run_log::score_difference(&first_eval, &first_eval).unwrap();
    assert!(zero.per_head.as_ref().unwrap().len() == 4, "{zero:?}");
    let rest = assert_paired_lines(&lines[1..], &short(&again), &zero);
    assert!(
        assert_paired_lines(rest, &short(&half), &d).is_empty(),
        "{table}"
    );
    // Each head's is its scores' difference.
    for (h, x) in d.per_head.iter().flatten().enumerate() {
        let want = half_eval.per_head[h].ce_score - first_eval.per_head[h].ce_score;
        assert!((x.difference - want).abs() < 1e-9, "head {h}: {x:?} {want}");
    }
    let json: serde_json::Value = serde_json::from_str(&attn_saes_cli(
        [std::ffi::OsStr::new("compare"), "--json".as_ref()]
            .into_iter()
            .chain(names),
    ))
    .unwrap();
    assert_eq!(json[0]["score_vs_first"], serde_json::Value::Null);
    assert_eq!(json[2]["score_vs_first"], serde_json::to_value(d).unwrap());
    // The first run's dashboards keep the LM's outputs over their windows in the cache;
    // the second run's (the same windows: after the cache's) read them.
    let dashboard_notice = |run_dir: &Path| {
        let options = attn_saes::dashboard::BuildOptions::default();
        let build = attn_saes::dashboard::build_for_run(
            run_dir,
            None,
            &loaded,
            6 * 16,
            None,
            &options,
            &mut |_, _, _| {},
        );
        build.unwrap().1.unwrap()
    };
    let kept = dashboard_notice(&cfg.out_dir);
    let kept_dir = format!("{}/dashboard-lm-", cache_dir.display());
    assert!(
        kept.starts_with(&format!(
            "the LM's outputs over the dashboard windows kept in {kept_dir}"
        )),
        "{kept}"
    );
    let read = dashboard_notice(&dir.join("again"));
    // `evaluate --run` on each: windows after the cache's (as the dashboards), the baseline
    // kept in the cache (the second reads it), and the library's numbers on those windows.
    let report = dir.join("evaluate.json");
    let evaluate = |run: &Path| -> String {
        let args = ["evaluate", "--eval-windows", "3", "--run"].map(std::ffi::OsStr::new);
        let json = [std::ffi::OsStr::new("--json"), report.as_os_str()];
        attn_saes_cli(args.iter().copied().chain([run.as_os_str()]).chain(json))
    };
    let (windows, _) = held_out(&run_config);
    let sae = BlockDiagSae::load(&cfg.out_dir.join("sae"), &device).unwrap();
    let (e, spread) = attn_saes::train::eval::Baseline::new(
        model,
        model.tokens(&windows).unwrap(),
        1,
        Default::default(),
        &mut |_, _| {},
    )
    .unwrap()
    .evaluate(model, &sae, run_config.drop_bos, 0, &mut |_, _| {})
    .unwrap();
    let line = |out: &str, name: &str| -> String {
        (out.lines().find(|l| l.starts_with(name)))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    for (run, baseline) in [
        (cfg.out_dir.clone(), "evaluation baseline saved to"),
        (
            dir.join("again"),
            "evaluation baseline (clean and zero-ablated losses) read from",
        ),
    ] {
        let out = evaluate(&run);
        let heading = format!(
            "evaluating {} on 3 windows of 16 tokens (held out: the corpus after the activation cache the run trained from)",
            run.join("sae").display()
        );
        assert_eq!(out.lines().next(), Some(heading.as_str()), "{out}");
        assert!(
            line(&out, "evaluation baseline").starts_with(&format!(
                "{baseline} {}/eval-baseline-",
                cache_dir.display()
            )),
            "{out}"
        );
        for (name, value) in [
            ("CE loss clean", e.ce_clean),
            ("CE loss with SAE", e.ce_sae),
            ("CE loss zero-ablated", e.ce_zero),
        ] {
            assert!(
                line(&out, name).ends_with(&format!(" {value:.4}")),
                "{name}: {out}"
            );
        }
        let se = e.ce_score_se.unwrap();
        let score = format!(" {:.4} +- {se:.4} (3 windows)", e.ce_score);
        assert!(line(&out, "CE loss score").ends_with(&score), "{out}");
        // Each head's score and, in the row under it, its standard error.
        let cells = |name: &str| -> Vec<String> {
            let l = line(&out, name);
            (l[name.len()..].split_whitespace())
                .map(str::to_string)
                .collect()
        };
        let three = |v: Vec<f64>| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>();
        let per_head =
            |f: fn(&attn_saes::run_log::HeadEval) -> f64| three(e.per_head.iter().map(f).collect());
        assert_eq!(cells("  per head"), per_head(|h| h.ce_score));
        assert_eq!(
            cells("  its standard error"),
            per_head(|h| h.ce_score_se.unwrap())
        );
        // --json: the library's numbers, every digit.
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(written["metrics"], serde_json::to_value(&e).unwrap());
        assert_eq!(written["spread"]["score"][1], spread.score.1);
        assert_eq!(written["spread"]["windows"], 3);
    }
    // `evaluate --json` reports compare as runs: the l1-half run's evaluation on the same
    // windows less the first's (the report above is the second run's, equal to it),
    // paired, where training's evaluations (on other windows) do not pair with them.
    let first_report = dir.join("evaluate-first.json");
    std::fs::rename(&report, &first_report).unwrap();
    evaluate(&half);
    let reported = |p: &Path| -> attn_saes::run_log::EvalMetrics {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        serde_json::from_value(v["metrics"].clone()).unwrap()
    };
    let (a, b) = (reported(&first_report), reported(&report));
    assert_eq!(a, e);
    let d = attn_saes::run_log::score_difference(&a, &b).unwrap();
    assert!(
        (d.difference - (b.ce_score - a.ce_score)).abs() < 1e-12,
        "{d:?}"
    );
    let d_se = |e: &attn_saes::run_log::EvalMetrics| e.ce_score_se.unwrap();
    let paths = [&first_report, &report, &half].map(|p| p.as_os_str());
    let table = attn_saes_cli([std::ffi::OsStr::new("compare")].into_iter().chain(paths));
    let width = short(&first_report)
        .len()
        .max("  per model head alone".len());
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[1].starts_with(&short(&first_report))
            && rows[1].ends_with(&format!(" {:.4} +- {:.4}", a.ce_score, d_se(&a))),
        "{table}"
    );
    let rest = assert_paired_lines(&rows[6..], &short(&report), &d);
    assert_eq!(
        rest,
        [format!(
            "{:width$}  - (other windows: 3 and 2)",
            short(&half)
        )],
        "{table}"
    );
    assert!(
        read.starts_with(&format!(
            "the LM's outputs over the dashboard windows read from {kept_dir}"
        )),
        "{read}"
    );
    // `rank --run` over the dashboards' first windows (their effects' windows) reads the
    // kept effect files: the ranking the LM gives, and a changed file changes it.
    let kept = (std::fs::read_dir(&cache_dir).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("dashboard-lm-"))
        .unwrap();
    let rank = || {
        let args = ["rank", "--tokens", "96", "--run"].map(std::ffi::OsStr::new);
        attn_saes_cli(args.iter().copied().chain([dir.join("again").as_os_str()]))
    };
    let with_kept = rank();
    let (said, ranking) = with_kept.split_once('\n').unwrap();
    assert_eq!(
        said,
        format!(
            "the LM's outputs over the dashboard windows read from {} (2 files)",
            kept.display()
        )
    );
    let away = dir.join("kept-away");
    std::fs::rename(&kept, &away).unwrap();
    let from_lm = rank();
    std::fs::rename(&away, &kept).unwrap();
    assert_eq!(ranking, from_lm);
    assert!(from_lm.contains("6 windows of 16 tokens"), "{from_lm}");
    // An effect file with its gradient doubled; gives back its bytes.
    let double_grad = |path: &Path| -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        let file = attn_saes::lm::weights::WeightFile::open(path).unwrap();
        let arrays = ["hook_z", "grad"].map(|name| {
            let a = file.read(name).unwrap();
            let scale = if name == "grad" { 2.0 } else { 1.0 };
            let data = a.data.iter().map(|x| x * scale).collect();
            attn_saes::files::NamedArray::new(name, a.shape, data)
        });
        drop(file);
        attn_saes::files::write_safetensors(path, &arrays, None).unwrap();
        bytes
    };
    let second = kept.join("effect-00001.safetensors");
    let bytes = double_grad(&second);
    let changed = rank();
    std::fs::write(&second, bytes).unwrap();
    assert_ne!(changed.split_once('\n').unwrap().1, from_lm);
    // The first of other outputs (another device's): rank reads none and, unlike a build,
    // leaves the directory as it is.
    let first = kept.join("effect-00000.safetensors");
    let listing = || {
        let mut files: Vec<(PathBuf, Vec<u8>)> = (std::fs::read_dir(&kept).unwrap())
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let bytes = double_grad(&first);
    let before = listing();
    assert_eq!(rank(), from_lm);
    assert!(listing() == before, "the kept directory changed");
    std::fs::write(&first, bytes).unwrap();
    let mses: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(m) => Some(m.mse),
            _ => None,
        })
        .collect();
    assert!(mses.last().unwrap() < mses.first().unwrap());
    // A cache that holds the held-out windows (one written before harvests skipped them,
    // or one that skipped fewer) is refused: the run would be evaluated on data it trained
    // on. Without evaluation windows it is fine.
    let meta_path = cache_dir.join("activations.json");
    let honest = std::fs::read_to_string(&meta_path).unwrap();
    for (skipped, wanted) in [
        ("null", "starts at the corpus's first window"),
        ("1", "skipped only 1 windows"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&honest).unwrap();
        v["held_out_windows"] = serde_json::from_str(skipped).unwrap();
        std::fs::write(&meta_path, v.to_string()).unwrap();
        let (refused, _) = run(
            TrainConfig {
                activation_cache: Some(cache_dir.clone()),
                out_dir: dir.join(format!("leaky-{skipped}")),
                ..cfg.clone()
            },
            None,
            RunControl::default(),
        );
        let msg = format!("{:#}", refused.expect_err("a leaky cache must be refused"));
        assert!(
            msg.contains(wanted) && msg.contains("evaluated on data it trained on"),
            "{msg}"
        );
        let (fine, _) = run(
            TrainConfig {
                activation_cache: Some(cache_dir.clone()),
                eval_windows: 0,
                out_dir: dir.join(format!("no-eval-{skipped}")),
                ..cfg.clone()
            },
            None,
            RunControl::default(),
        );
        fine.unwrap();
    }
    std::fs::write(&meta_path, honest).unwrap();
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

/// `sae_replace` (what CE evaluation splices in) is, per token, the SAE's reconstruction
/// computed by hand from the LM's hook_z (scale, encode, decode, unscale), and with
/// `keep_bos` position 0 is the original hook_z, bit for bit.
#[test]
fn sae_replace_is_the_reconstruction_by_hand_and_keeps_bos() {
    use attn_saes::rng::Rng;
    use attn_saes::sae::SaeConfig;
    use attn_saes::train::eval::sae_replace;
    let dir = temp_dir("replace");
    let device = Device::flex();
    let loaded = lm::load_model(&fixture("gpt2_tiny").display().to_string(), &device).unwrap();
    let model = &loaded.transformer;
    let text = Corpus::open(&corpus(&dir), None).unwrap();
    let (windows, _) =
        ContextWindows::first(&text, &loaded.tokenizer, 16, model.config.bos_token_id, 3).unwrap();
    let z = model
        .run(
            model.tokens(&windows).unwrap(),
            &HookRequest::hook_z(&[1]),
            None,
        )
        .unwrap()
        .hook_z
        .remove(&1)
        .unwrap(); // [3, 16, 4, 16]
    let [b, t, h, d] = z.dims();
    // A ReLU SAE with random biases and a different input scale per head.
    let mut rng = Rng::new(11);
    let config = SaeConfig {
        n_heads: h,
        d_head: d,
        features_per_head: 32,
        architecture: Architecture::Relu,
    };
    let mut sae = BlockDiagSae::init(config, &mut rng, &device);
    let mut random =
        |n: usize, std: f64| -> Vec<f32> { (0..n).map(|_| (std * rng.normal()) as f32).collect() };
    sae.b_enc = Tensor::from_data(TensorData::new(random(h * 32, 0.05), [h, 32]), &device);
    sae.b_dec = Tensor::from_data(TensorData::new(random(h * d, 0.5), [h, d]), &device);
    sae.input_scale = vec![0.5, 2.0, 3.0, 1.5];
    let hand = HandSae::of(&sae);

    let z_rows = values(z.clone());
    let want: Vec<f64> = z_rows
        .chunks_exact(h * d)
        .flat_map(|row| hand.reconstruct_raw(row))
        .collect();
    // Not a near-identity: the reconstruction is far from hook_z, and features are sparse.
    assert!(max_abs_diff(&want, &z_rows) > 0.1);
    let active = z_rows
        .chunks_exact(h * d)
        .flat_map(|row| (0..h).flat_map(|hd| hand.head(hd, &hand.scaled(row, hd)).0))
        .filter(|&f| f > 0.0)
        .count() as f64
        / (b * t * h * 32) as f64;
    println!("fraction of features active: {active:.3}");
    assert!(active > 0.05 && active < 0.95, "{active}");

    let all = values(sae_replace(&sae, z.clone(), false));
    assert_close("sae_replace vs reconstruction by hand", &all, &want, 1e-5);
    let kept = values(sae_replace(&sae, z, true));
    let row = h * d;
    for (i, (got, orig)) in kept
        .chunks_exact(row)
        .zip(z_rows.chunks_exact(row))
        .enumerate()
    {
        if i % t == 0 {
            // Kept although its reconstruction differs.
            assert!(max_abs_diff(&all[i * row..(i + 1) * row], orig) > 0.1);
            assert_eq!(
                got,
                orig,
                "window {}: position 0 is hook_z as it was",
                i / t
            );
        } else {
            assert_eq!(got, &all[i * row..(i + 1) * row], "position {}", i % t);
        }
    }
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
    let (d, _) = dashboard::build_for_run(
        &run_dir,
        None,
        &loaded,
        6 * 16, // six windows of the run's 16 tokens
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
    assert!(!d.meta.settings.keep_bos);
    assert_eq!(d.meta.n_tokens, 6 * 15, "BOS not counted");
    // Of a run trained on BOS positions (--keep-bos), the dashboards count and show them
    // too, with the same options (they masked them).
    let ckpt = checkpoint::resolve_resume(&run_dir).unwrap();
    let saved = ckpt.join("config.toml");
    let trained_on_bos = TrainConfig {
        drop_bos: false,
        ..checkpoint::read_config(&ckpt).unwrap()
    };
    let original = std::fs::read(&saved).unwrap();
    std::fs::write(&saved, toml::to_string(&trained_on_bos).unwrap()).unwrap();
    let (with_bos, _) = dashboard::build_for_run(
        &run_dir,
        None,
        &loaded,
        6 * 16,
        None,
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    std::fs::write(&saved, original).unwrap();
    assert!(with_bos.meta.settings.keep_bos);
    assert_eq!(with_bos.meta.n_tokens, 6 * 16, "BOS counted");
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

/// A new run in a directory that holds an older (longer) one replaces it: the metrics log
/// and checkpoints are the new run's alone (an old step_30 would otherwise outrank the new
/// run's checkpoints when pruning), and the old dashboards are gone.
#[test]
fn a_new_run_in_the_same_directory_replaces_the_previous_one() {
    let dir = temp_dir("replace");
    let (result, _) = run(config(&dir, 30), None, RunControl::default());
    result.unwrap();
    let run_dir = dir.join("run");
    let dashboard = attn_saes::dashboard::run_dashboard_path(&run_dir);
    std::fs::write(&dashboard, b"old dashboards").unwrap();
    let (result, events) = run(config(&dir, 12), None, RunControl::default());
    let summary = result.unwrap();
    assert_eq!(summary.steps, 12);
    assert!(events.iter().any(
        |e| matches!(e, TrainEvent::Notice(s) if s.starts_with("a new run replaces the previous one"))
    ));
    let (history, bad) = attn_saes::run_log::History::read(&run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(bad, 0);
    let steps: Vec<usize> = history.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    let ckpts: Vec<usize> = checkpoint::complete_checkpoints(&run_dir)
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(ckpts, vec![10, 12]);
    assert_eq!(
        checkpoint::resolve_resume(&run_dir).unwrap(),
        run_dir
            .join("checkpoints")
            .join(checkpoint::step_dir_name(12))
    );
    assert!(!dashboard.exists());
    // The terminal keeps the line in view (it was a spinner message, replaced at once).
    let toml_file = dir.join("config.toml");
    std::fs::write(&toml_file, toml::to_string(&config(&dir, 2)).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args([
            "--device",
            "cpu",
            "train",
            "--headless",
            "--no-dashboard",
            "--config",
        ])
        .arg(&toml_file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let said = format!(
        "a new run replaces the previous one in {} (--resume continues a run)\n",
        run_dir.display()
    );
    assert!(err.contains(&said), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A run records in its SAE's origin whether it trained on BOS positions, and Your text
/// follows the run: by default BOS shows no features (the line says why) and `--pick` there
/// is refused; a run trained with `--keep-bos` shows features at BOS and picks there. The
/// app's live model takes it from the run's config, or from the dashboard's header when
/// opened on a dashboard file.
#[test]
fn your_text_reads_bos_only_when_the_run_trained_on_it() {
    use attn_saes::app::jobs::{LiveSource, load_live};
    use attn_saes::dashboard::format::Dashboard;
    use attn_saes::device::DeviceChoice;
    use attn_saes::live::BOS_SKIPPED;
    let dir = temp_dir("bos");
    for sub in ["without", "with"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let without = run_with_dashboard_of(config(&dir.join("without"), 10));
    let with = run_with_dashboard_of(TrainConfig {
        drop_bos: false,
        ..config(&dir.join("with"), 10)
    });
    let text = |run: &Path, pick: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"));
        cmd.args(["--device", "cpu", "text"])
            .arg(run)
            .arg("the cat sat")
            .env("RUST_BACKTRACE", "0");
        if let Some(p) = pick {
            cmd.args(["--pick", p]);
        }
        let out = cmd.output().unwrap();
        let said = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.success(), said(&out.stdout), said(&out.stderr))
    };
    for (run, keep) in [(&without, false), (&with, true)] {
        let sae_dir = run.join("sae");
        let origin = BlockDiagSae::read_origin(&sae_dir).unwrap().unwrap();
        assert_eq!(origin.keep_bos, keep, "{run:?}");
        assert_eq!(
            BlockDiagSae::load(&sae_dir, &Device::flex())
                .unwrap()
                .reads_bos,
            keep
        );
        let live = load_live(&LiveSource::Run(run.clone()), DeviceChoice::Cpu).unwrap();
        assert_eq!(live.sae.reads_bos, keep, "{run:?}");
        let a = live.analyse("the cat sat").unwrap();
        assert_eq!(a.skips_bos, !keep);
        let at_bos: usize = a.active.iter().map(|head| head[0].len()).sum();
        assert_eq!(at_bos == 0, !keep, "{at_bos} features at BOS");
        let (ok, stdout, stderr) = text(run, None);
        assert!(ok, "{stderr}");
        let first = stdout.lines().nth(1).unwrap();
        assert!(first.starts_with("   0 \"<|endoftext|>\""), "{stdout}");
        assert_eq!(first.ends_with(BOS_SKIPPED), !keep, "{first}");
        assert_eq!(first.contains(" active)"), keep, "{first}");
        // A feature firing at BOS in the run that reads it.
        let (h, f) = (0..a.n_heads)
            .find_map(|h| a.active[h][0].first().map(|&(f, _)| (h, f)))
            .unwrap_or((0, 0));
        let (ok, stdout, stderr) = text(run, Some(&format!("0,{h},{f}")));
        if keep {
            assert!(ok, "{stderr}");
            assert!(stdout.contains(&format!("head {h} feature {f} at 0: activation ")));
        } else {
            assert!(!ok);
            let want = format!("Error: --pick 0,{h},{f}: position 0 is {BOS_SKIPPED}\n");
            assert!(stderr.ends_with(&want), "{stderr}");
        }
        // Opened on its dashboard file: what the file's header says.
        let file = run.join("dashboard.safetensors");
        let mut d = Dashboard::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(d.meta.settings.keep_bos, keep);
        let source = LiveSource::of_dashboard(&d.meta, &file);
        let live = load_live(&source, DeviceChoice::Cpu).unwrap();
        assert_eq!(live.sae.reads_bos, keep);
        // Dashboards built with --keep-bos on a run without: the file counts BOS, so the
        // live model reads it.
        d.meta.settings.keep_bos = true;
        let source = LiveSource::of_dashboard(&d.meta, &file);
        assert!(load_live(&source, DeviceChoice::Cpu).unwrap().sae.reads_bos);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
