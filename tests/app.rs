//! The desktop app, driven headlessly by egui_kittest (wgpu renderer; lavapipe in CI):
//! a finished run through Train -> Curves -> Features -> a head -> a feature -> DFA, a
//! training run started from the form, stopped with a checkpoint and resumed, and bad
//! input in the form shown as text.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use attn_saes::app::train_view::TrainForm;
use attn_saes::app::{AttnSaesApp, Command, Level, UiState, View};
use attn_saes::dashboard::format::Dashboard;
use attn_saes::device::DeviceChoice;
use attn_saes::run_log::{History, LogLine};
use attn_saes::train::checkpoint;
use common::*;
use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

/// `t` with every fractional number in it rounded to 3 decimals.
fn rounded<T: serde::Serialize + serde::de::DeserializeOwned>(t: &T) -> T {
    fn round(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let x = (n.as_f64().unwrap() * 1000.0).round() / 1000.0;
                *v = serde_json::json!(x);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(round),
            serde_json::Value::Object(o) => o.values_mut().for_each(round),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(t).unwrap();
    round(&mut v);
    serde_json::from_value(v).unwrap()
}

fn harness(app: AttnSaesApp) -> Harness<'static, AttnSaesApp> {
    Harness::builder()
        .with_size(egui::Vec2::new(1400.0, 900.0))
        .wgpu()
        .build_eframe(move |_| app)
}

/// Rewrites a run's measured speeds (steps/s) to zero in `metrics.jsonl` and in its
/// dashboard file, its other figures to 3 decimals, and the model's name (a path) to its
/// last component, so that snapshots depend neither on the machine nor on where the
/// checkout is. (On another machine the same run's figures put the CE-score plot's grid line
/// a pixel lower; the figures' last bits differ between CPUs, the cause not pinned down.)
fn freeze_speeds(run: &Path) {
    let metrics = run.join("metrics.jsonl");
    let (mut history, _) = History::read(&metrics).unwrap();
    let zero = |h: &mut History| {
        h.steps.iter_mut().for_each(|s| s.steps_per_s = 0.0);
        *h = rounded(h);
    };
    zero(&mut history);
    let lines: String = history
        .steps
        .iter()
        .cloned()
        .map(LogLine::Step)
        .chain(history.evals.iter().cloned().map(LogLine::Eval))
        .map(|l| serde_json::to_string(&l).unwrap() + "\n")
        .collect();
    std::fs::write(&metrics, lines).unwrap();
    let file = attn_saes::dashboard::run_dashboard_path(run);
    let mut d = Dashboard::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    zero(&mut d.meta.history);
    d.meta.model.name = "gpt2_tiny".into();
    std::fs::write(&file, d.to_bytes().unwrap()).unwrap();
}

/// Steps the harness until `done(app)`; fails after `limit`.
fn step_until(
    h: &mut Harness<'static, AttnSaesApp>,
    limit: Duration,
    done: impl Fn(&AttnSaesApp) -> bool,
) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < limit,
            "timed out; status {:?}, messages: {:?}",
            h.state().native.status,
            h.state().messages
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The wall time of `n` frames.
fn timed_frames(h: &mut Harness<'static, AttnSaesApp>, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            h.step();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// A tiny trained run with dashboards in `dir` (steps/s frozen, so snapshots do not depend
/// on the machine), opened in the app.
fn opened_run(dir: &std::path::Path) -> (std::path::PathBuf, Harness<'static, AttnSaesApp>) {
    let run = run_with_dashboard(dir, 30);
    freeze_speeds(&run);
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.clone()));
    let mut h = harness(app);
    h.run_steps(3);
    (run, h)
}

/// Opens Your text, types `text` and runs it, until its analysis has arrived.
fn analyse_text(h: &mut Harness<'static, AttnSaesApp>, text: &str) {
    h.get_by_label("Your text").click();
    h.run_steps(2);
    h.state_mut().ui.text.prompt = text.into();
    h.get_by_label("Run").click();
    step_until(h, Duration::from_secs(120), |a| a.native.analysis.is_some());
    h.run_steps(2);
}

/// The tiny model the test runs train on, and `run`'s SAE, on the CPU.
fn tiny_model_and_sae(run: &Path) -> (attn_saes::lm::LoadedModel, attn_saes::sae::BlockDiagSae) {
    let device = burn::prelude::Device::flex();
    let model = fixture("gpt2_tiny").display().to_string();
    let loaded = attn_saes::lm::load_model(&model, &device).unwrap();
    let sae = attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &device).unwrap();
    (loaded, sae)
}

/// Whether something asked has its answer (or failed).
fn settled<T>(state: Option<&attn_saes::live::Answer<T>>) -> bool {
    state.is_some_and(|s| !matches!(s, attn_saes::live::Answer::Computing))
}

/// Clicks the widget labelled `label`, scrolled into the window first (a click lands where
/// the widget is drawn, and Your text runs below the window).
fn click_in_view(h: &mut Harness<'static, AttnSaesApp>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    h.run_steps(20); // the scroll is animated
    h.get_by_label(label).click();
}

fn has_label(h: &Harness<'static, AttnSaesApp>, text: &str) -> bool {
    h.query_by_label(text).is_some()
}

#[test]
fn a_finished_run_through_train_curves_features_and_dfa() {
    if !renderer_available() {
        return;
    }
    let dir = TempDir::new("attn-saes-app", "views");
    let (run, mut h) = opened_run(&dir);
    assert!(
        h.state().dashboard.is_some(),
        "messages: {:?}",
        h.state().messages
    );
    assert_eq!(h.state().native.run_dir.as_deref(), Some(run.as_path()));

    // Train: the form holds the run's config.
    h.get_by_label("Train").click();
    h.run_steps(2);
    assert!(has_label(&h, "Train a block-diagonal SAE"));
    assert_eq!(h.state().ui.form.total_training_steps, "30");
    assert_eq!(h.state().ui.form.hook_layer, "1");
    assert_eq!(h.state().ui.form.out_dir, run.display().to_string());
    assert!(
        h.query_by_label_contains("holds a run: Start replaces it")
            .is_some()
    );
    // The snapshot shows the paths relative, as they would be typed in the checkout.
    let form = &mut h.state_mut().ui.form;
    (form.model, form.dataset, form.out_dir) = (
        "tests/fixtures/gpt2_tiny".into(),
        "corpus.txt".into(),
        "run".into(),
    );
    h.run_steps(2);
    h.snapshot("app_train");

    // Curves: the run's last step as text, from metrics.jsonl.
    h.get_by_label("Curves").click();
    h.run_steps(10);
    let history = &h.state().curves.history;
    assert_eq!(history.steps.len(), 30, "log_every 1");
    assert!(has_label(&h, "step 30"));
    let last = history.steps.last().unwrap().clone();
    assert!(has_label(&h, &format!("L0 {:.1}", last.l0)));
    h.snapshot("app_curves");

    // Features: head 2, a live feature, its density and its DFA as the file holds them.
    h.get_by_label("Features").click();
    h.run_steps(2);
    h.get_by_label("Head 2").click();
    h.run_steps(2);
    let file_bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let file = attn_saes::dashboard::format::OwnedDashboardFile::new(file_bytes).unwrap();
    let head = file.head(2).unwrap();
    let (f, feature) = head
        .features
        .iter()
        .enumerate()
        .find(|(_, f)| f.examples.iter().any(|e| !e.dfa.is_empty()))
        .expect("a live feature with a top example");
    h.get_by_label_contains(&format!("#{f}  ")).click();
    h.run_steps(3);
    assert_eq!(h.state().ui.features.head, 2);
    assert_eq!(h.state().ui.features.feature, Some(f));
    assert!(has_label(&h, &format!("density {:.3e}", feature.density)));
    let example = feature.examples.iter().find(|e| !e.dfa.is_empty()).unwrap();
    // The source with the largest attribution (the first of equals).
    let argmax = (0..example.dfa.len()).fold(0, |best, p| {
        if example.dfa[p] > example.dfa[best] {
            p
        } else {
            best
        }
    });
    assert!(
        h.query_by_label_contains(&format!("max attribution at position {argmax} "))
            .is_some(),
        "DFA panel of feature {f}"
    );
    h.snapshot("app_features");

    // `app --feature 3,5` (Command::OpenFeature): that feature's dashboard; one past the
    // file's features is an error line and changes nothing.
    h.get_by_label("Curves").click();
    h.run_steps(2);
    h.state_mut().push(Command::OpenFeature {
        head: 3,
        feature: 5,
    });
    h.run_steps(3);
    assert_eq!(h.state().ui.view, View::Features);
    assert_eq!(
        (h.state().ui.features.head, h.state().ui.features.feature),
        (3, Some(5))
    );
    assert!(has_label(&h, "Head 3 · Feature 5"));
    h.state_mut().push(Command::OpenFeature {
        head: 1,
        feature: 32,
    });
    h.run_steps(2);
    assert_eq!(h.state().ui.features.feature, Some(5));
    assert!(has_label(
        &h,
        "no head 1 feature 32: the dashboard has 4 heads x 32 features"
    ));
}

/// The tiny fixture model in the form, with more steps than the test waits for.
fn tiny_form(dir: &Path, steps: usize) -> TrainForm {
    TrainForm {
        model: fixture("gpt2_tiny").display().to_string(),
        dataset: corpus(dir).display().to_string(),
        hook_layer: "1".into(),
        expansion_factor: "2".into(),
        total_training_steps: steps.to_string(),
        batch_size: "64".into(),
        context_size: "16".into(),
        device: DeviceChoice::Cpu,
        out_dir: dir.join("run").display().to_string(),
        build_dashboards: false,
        ..TrainForm::default()
    }
}

fn summary(frames: &[f64]) -> String {
    let mut v = frames.to_vec();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p95 = v[(v.len() * 95 / 100).min(v.len() - 1)];
    format!(
        "{} frames: mean {mean:.1} ms, p95 {p95:.1} ms, max {:.1} ms",
        v.len(),
        v[v.len() - 1]
    )
}

#[test]
fn training_from_the_form_stops_with_a_checkpoint_and_resumes() {
    if !renderer_available() {
        return;
    }
    let dir = TempDir::new("attn-saes-app", "train");
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.ui.view = View::Train;
    app.ui.form = tiny_form(&dir, 1_000_000);
    let mut h = harness(app);
    h.set_render_every_step(true);
    h.run_steps(2);
    h.get_by_label("Start").click();
    // The curves receive points while the run goes on.
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.curves.history.steps.len() >= 5
    });
    // Frames keep coming meanwhile: 40 on the Curves view, then 40 on the Train view, with
    // the layout pass alone and then with lavapipe rendering every frame.
    let mut report = Vec::new();
    for view in ["Curves", "Train"] {
        h.get_by_label(view).click();
        for render in [false, true] {
            h.set_render_every_step(render);
            let frames = timed_frames(&mut h, 40);
            report.push(format!(
                "{view}, {}: {}",
                if render { "layout + render" } else { "layout" },
                summary(&frames)
            ));
        }
    }
    assert!(h.state().job_running(), "still training while measured");
    let run = dir.join("run");
    h.get_by_label("Stop").click();
    step_until(&mut h, Duration::from_secs(120), |a| !a.job_running());
    h.run_steps(2);
    h.get_by_label("Curves").click();
    let idle = timed_frames(&mut h, 40);
    h.set_render_every_step(false);
    h.get_by_label("Train").click();
    h.run_steps(2);
    eprintln!(
        "UI frame time while training on the CPU backend:\n  {}\n  Curves, layout + render, \
         training stopped: {}",
        report.join("\n  "),
        summary(&idle)
    );
    let stopped_at = h.state().native.status.step;
    assert!(stopped_at > 0 && stopped_at < 1_000_000);
    let ckpts = checkpoint::complete_checkpoints(&run);
    assert_eq!(
        ckpts.last().map(|c| c.0),
        Some(stopped_at),
        "Stop writes a checkpoint at the step reached"
    );
    assert!(
        h.state()
            .messages
            .iter()
            .any(|(_, m)| m.starts_with("checkpoint: "))
    );

    // Build dashboards now, of the stopped run: they open in the Features view.
    h.get_by_label("Build dashboards now").click();
    step_until(&mut h, Duration::from_secs(300), |a| {
        a.native.builder.is_some() && !a.builder_running()
    });
    h.run_steps(3);
    assert!(
        h.state().dashboard.is_some(),
        "messages: {:?}",
        h.state().messages
    );
    assert_eq!(h.state().ui.view, View::Features);
    assert!(attn_saes::dashboard::run_dashboard_path(&run).is_file());
    let read =
        || attn_saes::dashboard::build::read(&attn_saes::dashboard::run_dashboard_path(&run));
    assert!(read().unwrap().meta.upstream.is_none(), "not by default");

    // What wrote what it reads is not in them; its button rebuilds them with it, and the
    // panel then shows the file's split of the feature shown.
    let f = (0..32)
        .find(|&f| !read().unwrap().heads[0].features[f].examples.is_empty())
        .expect("a feature of head 0 with top examples");
    h.state_mut().ui.features.head = 0;
    h.state_mut().ui.features.feature = Some(f);
    h.run_steps(2);
    click_in_view(&mut h, "Build the dashboards with it");
    step_until(&mut h, Duration::from_secs(300), |a| {
        !a.builder_running()
            && (a.dashboard.as_ref()).is_some_and(|d| d.file.meta.upstream.is_some())
    });
    h.run_steps(3);
    let d = read().unwrap();
    let u = (d.heads[0].features[f].upstream.as_ref()).expect("the rebuilt file has it");
    let shown = format!(
        "Over its {} top examples: the DFA from the source, mean {:+.4}; by writer, the mean \
         (sd) [least, most]; an earlier head's, by where it read from:",
        u.examples, u.dfa
    );
    assert!(has_label(&h, &shown), "{shown}");
    assert!(!has_label(&h, "Build the dashboards with it"));

    // Resume with a nearer end: the run continues from the checkpoint to it.
    let end = stopped_at + 7;
    h.state_mut().ui.form.total_training_steps = end.to_string();
    h.state_mut().submit_form(Some(run.clone()));
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.status.phase.starts_with("finished")
    });
    step_until(&mut h, Duration::from_secs(30), |a| !a.job_running());
    // The curves hold the run's history up to the checkpoint, then the resumed steps.
    let steps: Vec<usize> = h
        .state()
        .curves
        .history
        .steps
        .iter()
        .map(|s| s.step)
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let resumed = steps.iter().position(|&s| s > stopped_at).unwrap();
    assert!(
        resumed >= 5,
        "the history before the stop is kept: {steps:?}"
    );
    assert!(steps[resumed] <= stopped_at + 10, "log_every 10: {steps:?}");
    assert_eq!(steps.last(), Some(&end));
    assert_eq!(
        checkpoint::complete_checkpoints(&run).last().map(|c| c.0),
        Some(end)
    );
    assert!(
        h.state()
            .messages
            .iter()
            .all(|(level, _)| *level != Level::Error),
        "{:?}",
        h.state().messages
    );
}

/// The messages the app shows, in order.
fn messages(h: &Harness<'static, AttnSaesApp>) -> Vec<String> {
    h.state().messages.iter().map(|(_, m)| m.clone()).collect()
}

/// Starts the form's action `button` and steps until its job has ended.
fn run_job(h: &mut Harness<'static, AttnSaesApp>, button: &str) {
    h.state_mut().native.job = None;
    h.get_by_label(button).click();
    step_until(h, Duration::from_secs(120), |a| a.native.job.is_some());
    step_until(h, Duration::from_secs(300), |a| !a.job_running());
    h.run_steps(2);
}

/// The form's Harvest writes the activation cache its run reads (steps x batch tokens of
/// its layer), runs name it in the form and train from it, the second sharing the first's
/// evaluation baseline and evaluated to the bit as the first; a harvest stopped part way
/// leaves no cache (the form then refuses it), even over a complete one.
#[test]
fn a_harvest_from_the_form_feeds_runs_that_share_its_evaluation_baseline() {
    if !renderer_available() {
        return;
    }
    let dir = TempDir::new("attn-saes-app", "harvest");
    let cache = dir.join("acts");
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.ui.view = View::Train;
    app.ui.form = TrainForm {
        activation_cache: cache.display().to_string(),
        ..tiny_form(&dir, 20)
    };
    let mut h = harness(app);
    h.run_steps(2);
    // No cache there yet: Start says so next to the field, nothing runs.
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("holds no complete activation cache")
            .is_some()
    );
    assert!(h.state().native.job.is_none());

    run_job(&mut h, "Harvest");
    let wrote = format!(
        "wrote 1280 tokens of layer 1 hook_z in 1 shards to {} (after the first 4 windows, \
         held out for CE evaluation)",
        cache.display()
    );
    assert_eq!(messages(&h).last(), Some(&wrote), "{:?}", messages(&h));
    let meta_text = std::fs::read_to_string(cache.join("activations.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta_text).unwrap();
    assert_eq!(meta["shard_rows"], serde_json::json!([1280]));
    assert_eq!(meta["hook_layer"], 1);
    // The form says what the cache holds, and refuses another layer next to the field.
    h.run_steps(2);
    let holds = format!(
        "{} holds 1280 tokens of layer 1's hook_z (4 heads x 16) of gpt2_tiny, 20 steps of 64 \
         tokens",
        cache.display()
    );
    assert!(has_label(&h, &holds));
    h.state_mut().ui.form.hook_layer = "0".into();
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("holds layer 1's hook_z: set hook layer to 1")
            .is_some()
    );
    assert!(!h.state().job_running());
    h.state_mut().ui.form.hook_layer = "1".into();

    // Two runs from it, with their dashboards: the first saves the evaluation baseline
    // and keeps the LM's outputs over the dashboard windows, the second reads both.
    h.state_mut().ui.form.build_dashboards = true;
    let mut evals = Vec::new();
    for (run, baseline, lm) in [
        ("run", "saved to", "kept in"),
        ("run2", "read from", "read from"),
    ] {
        h.state_mut().messages.clear();
        h.state_mut().ui.view = View::Train;
        h.state_mut().ui.form.out_dir = dir.join(run).display().to_string();
        h.run_steps(2);
        run_job(&mut h, "Start");
        let said = messages(&h);
        assert!(
            said.iter()
                .any(|m| m.contains("evaluation baseline") && m.contains(baseline)),
            "{said:?}"
        );
        let lm = format!(
            "the LM's outputs over the dashboard windows {lm} {}",
            cache.join("dashboard-lm-").display()
        );
        assert!(said.iter().any(|m| m.starts_with(&lm)), "{said:?}");
        assert!(dir.join(run).join("dashboard.safetensors").is_file());
        assert!(
            said.iter().any(|m| m.starts_with("SAE saved to")),
            "{said:?}"
        );
        // Where the run's time went.
        assert!(
            said.iter().any(|m| m.starts_with("time: steps ")),
            "{said:?}"
        );
        let (history, _) = History::read(&dir.join(run).join("metrics.jsonl")).unwrap();
        assert!(!history.evals.is_empty());
        evals.push(history.evals);
    }
    assert_eq!(evals[0], evals[1]);
    h.state_mut().ui.form.build_dashboards = false;

    // A harvest stopped after its first forwards: over the complete cache, none is left.
    h.state_mut().ui.view = View::Train;
    h.state_mut().ui.form.total_training_steps = "100000".into();
    h.run_steps(2);
    h.get_by_label("Harvest").click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.status.counted.is_some_and(|(done, _)| done > 0)
    });
    h.get_by_label("Stop").click();
    step_until(&mut h, Duration::from_secs(120), |a| !a.job_running());
    h.run_steps(2);
    // Stopped as asked: said, not as an error.
    let stopped = (h.state().messages.iter()).find(|(_, m)| m.starts_with("harvest stopped"));
    assert!(
        matches!(stopped, Some((Level::Info, _))),
        "{:?}",
        messages(&h)
    );
    assert_eq!(h.state().native.status.phase, "harvest stopped");
    assert!(!cache.join("activations.json").exists());
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("holds no complete activation cache")
            .is_some()
    );
    // A harvest stopped after a shard (its state left, as `write_cache` leaves it): the
    // form says so under it, and Start refuses it next to the field.
    let state = attn_saes::data::store::HarvestState {
        meta: serde_json::from_str(&meta_text).unwrap(),
        shard_tokens: 1280,
        resume_from: Default::default(),
        rows_done: 0,
    };
    let state_path = cache.join(attn_saes::data::store::HARVEST_STATE);
    attn_saes::files::write_json(&state_path, &state).unwrap();
    h.state_mut().native.form_errors.clear();
    h.run_steps(2);
    let stopped = format!(
        "{} holds a harvest stopped after 1280 tokens (1 shard): Harvest with the same \
         settings goes on from its last shard",
        cache.display()
    );
    assert!(has_label(&h, &stopped));
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert_eq!(
        h.state().native.form_errors,
        [("activation cache", stopped.clone())]
    );
    assert!(!h.state().job_running());
    std::fs::remove_file(&state_path).unwrap();
    // A third Start click a few frames after the last two did not register (a multi-click
    // to egui): wait past that first.
    h.run_steps(30);
    // Metadata that lists no shards: the cache reader's own message, before anything runs.
    std::fs::write(
        cache.join("activations.json"),
        meta_text.replace("1280", "0"),
    )
    .unwrap();
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("shard_rows[0] is 0").is_some());
    assert!(!h.state().job_running());
}

#[test]
fn bad_input_in_the_form_shows_errors_and_nothing_crashes() {
    if !renderer_available() {
        return;
    }
    let dir = TempDir::new("attn-saes-app", "bad");
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.ui.view = View::Train;
    app.ui.form = TrainForm {
        hook_layer: "abc".into(),
        ..tiny_form(&dir, 20)
    };
    let mut h = harness(app);
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(has_label(&h, "'abc' is not a whole number"));
    assert!(!h.state().job_running());

    // A config the trainer rejects: the message is the CLI's.
    h.state_mut().ui.form = TrainForm {
        batch_size: "0".into(),
        ..tiny_form(&dir, 20)
    };
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("must be positive").is_some());

    // A missing model and a layer the model lacks fail in the job: shown, no crash.
    for (form, expected) in [
        (
            TrainForm {
                model: dir.join("no-such-model.gguf").display().to_string(),
                ..tiny_form(&dir, 20)
            },
            "loading model",
        ),
        (
            TrainForm {
                hook_layer: "7".into(),
                ..tiny_form(&dir, 20)
            },
            "--hook-layer 7 does not exist",
        ),
    ] {
        h.state_mut().messages.clear();
        h.state_mut().native.job = None;
        h.state_mut().ui.view = View::Train;
        h.state_mut().ui.form = form;
        h.run_steps(2);
        h.get_by_label("Start").click();
        step_until(&mut h, Duration::from_secs(60), |a| {
            a.native.job.is_some() && !a.job_running()
        });
        h.run_steps(2);
        let errors: Vec<&String> = h
            .state()
            .messages
            .iter()
            .filter(|(l, _)| *l == Level::Error)
            .map(|(_, m)| m)
            .collect();
        assert!(
            errors.iter().any(|m| m.contains(expected)),
            "expected '{expected}' in {errors:?}"
        );
        assert!(h.query_by_label_contains(expected).is_some());
    }
}

/// A file dropped on the window, as the native integration hands it over.
#[derive(Debug)]
struct Dropped(std::path::PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// eframe storage in memory.
#[derive(Default)]
struct Memory(std::collections::HashMap<String, String>);

impl eframe::Storage for Memory {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }

    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn flush(&mut self) {}
}

#[test]
fn dropped_files_open_and_the_ui_state_persists() {
    if !renderer_available() {
        return;
    }
    let dir = TempDir::new("attn-saes-app", "drop");
    let run = run_with_dashboard(&dir, 10);
    let file = attn_saes::dashboard::run_dashboard_path(&run);
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a dashboard").unwrap();
    let mut h = harness(AttnSaesApp::with_state(UiState::default()));
    h.run_steps(1);

    // A dropped non-dashboard file: an error message, nothing open.
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(junk.clone())));
    h.run_steps(2);
    assert!(h.state().dashboard.is_none());
    assert!(
        h.state()
            .messages
            .iter()
            .any(|(l, m)| *l == Level::Error && m.contains("junk.safetensors")),
        "{:?}",
        h.state().messages
    );
    // A dropped prompt set (JSON lines) goes to Your text's prompt set, saying how many
    // prompts it holds; one that is not a prompt set goes there too, and the error names the
    // line.
    let prompts = dir.join("prompts.jsonl");
    let lines =
        "{\"text\": \"a b\", \"answer\": \" a\"}\n\n{\"text\": \"c\", \"answer\": \" c\"}\n";
    std::fs::write(&prompts, lines).unwrap();
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(prompts.clone())));
    h.run_steps(2);
    assert_eq!(h.state().ui.text.prompt_set, lines);
    assert_eq!(h.state().ui.view, View::Text);
    let said = format!(
        "2 prompts from {} in Your text's prompt set",
        prompts.display()
    );
    assert!(
        (h.state().messages.iter()).any(|(l, m)| *l == Level::Info && m.starts_with(&said)),
        "{:?}",
        h.state().messages
    );
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"a b\", \"answer\": \" a\"}\n{\"answer\": 1}\n",
    )
    .unwrap();
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(bad.clone())));
    h.run_steps(2);
    assert!(h.state().ui.text.prompt_set.contains("{\"answer\": 1}"));
    let why = format!("{} line 2: not {{\"text\"", bad.display());
    assert!(
        (h.state().messages.iter()).any(|(l, m)| *l == Level::Error && m.starts_with(&why)),
        "{:?}",
        h.state().messages
    );
    assert!(h.state().dashboard.is_none());
    // A dropped dashboard file opens in the Features view.
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(file.clone())));
    h.run_steps(2);
    assert!(h.state().dashboard.is_some());
    assert_eq!(h.state().ui.view, View::Features);
    h.get_by_label("Head 3").click();
    h.run_steps(2);

    // What eframe saves comes back as it was: view, selection, recent files.
    let mut storage = Memory::default();
    eframe::App::save(h.state_mut(), &mut storage);
    let restored: UiState = eframe::get_value(&storage, "attn-saes-ui").unwrap();
    assert_eq!(restored.view, View::Features);
    assert_eq!(restored.features.head, 3);
    assert_eq!(restored.recent, vec![file.display().to_string()]);
    assert_eq!(restored.form, h.state().ui.form);

    // An SAE's directory with its dashboards beside it (as `dashboard --sae` writes them)
    // opens them; a directory with neither a run nor dashboards says what it looked for.
    let sae_only = dir.join("sae-only");
    std::fs::create_dir_all(&sae_only).unwrap();
    for e in std::fs::read_dir(run.join("sae")).unwrap().flatten() {
        std::fs::copy(e.path(), sae_only.join(e.file_name())).unwrap();
    }
    std::fs::copy(&file, sae_only.join("dashboard.safetensors")).unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    h.state_mut().push(Command::OpenPath(empty));
    h.run_steps(2);
    assert!(
        (h.state().messages.iter())
            .any(|(l, m)| *l == Level::Error
                && m.contains("nor an SAE's directory with its dashboards")),
        "{:?}",
        h.state().messages
    );
    h.state_mut().dashboard = None;
    h.state_mut().push(Command::OpenPath(sae_only.clone()));
    h.run_steps(2);
    let d = h
        .state()
        .dashboard
        .as_ref()
        .expect("the SAE directory's dashboards");
    assert_eq!(d.file.meta.sae.n_heads, 4);
    assert_eq!(
        h.state().native.dashboard_file.as_deref(),
        Some(sae_only.join("dashboard.safetensors").as_path())
    );
}

/// Clicks Your text's "Continue the text", waits for the steered continuation and returns
/// what the app shows.
fn continue_the_text(h: &mut Harness<'static, AttnSaesApp>) -> attn_saes::live::Steered {
    use attn_saes::live::Answer;
    h.get_by_label("Continue the text").click_accesskit();
    // The click is taken in the next frame (an earlier answer is Ready until then).
    h.run_steps(1);
    step_until(h, Duration::from_secs(120), |a| {
        a.native
            .steer
            .as_ref()
            .is_some_and(|x| matches!(x.state, Answer::Ready(_)))
    });
    let Some(Answer::Ready(shown)) = h.state().native.steer.as_ref().map(|x| &x.state) else {
        unreachable!()
    };
    (**shown).clone()
}

/// Where `feature` of `head` is most active in `a` (the first such position on a tie).
fn strongest_position(a: &attn_saes::live::LiveTokens, head: usize, feature: usize) -> usize {
    (0..a.len())
        .max_by(|&x, &y| {
            let act = |p| a.activation(head, feature, p);
            act(x).total_cmp(&act(y)).then(y.cmp(&x))
        })
        .unwrap()
}

#[test]
fn your_text_shows_each_heads_features_and_dfa_as_a_direct_computation_does() {
    if !renderer_available() {
        return;
    }
    use attn_saes::lm::{HookRequest, ZConvention};
    let dir = TempDir::new("attn-saes-app", "text");
    // Not frozen: the dashboard file's model path is used below.
    let run = run_with_dashboard(&dir, 30);
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.clone()));
    let mut h = harness(app);
    h.run_steps(3);
    let text = "The quick brown fox jumps over the lazy dog.";
    analyse_text(&mut h, text);

    // The same text through the model and the SAE, directly.
    let (loaded, sae) = tiny_model_and_sae(&run);
    let mut ids: Vec<u32> = loaded.transformer.config.bos_token_id.into_iter().collect();
    ids.extend(loaded.tokenizer.encode(text, false).unwrap().get_ids());
    let (t, heads, d, m) = (ids.len(), 4, 16, 32);
    let hooks = HookRequest {
        hook_z: vec![1],
        z_convention: ZConvention::TransformerLens,
        ..Default::default()
    };
    let tokens = loaded
        .transformer
        .tokens(std::slice::from_ref(&ids))
        .unwrap();
    let mut cache = loaded.transformer.run(tokens, &hooks, None).unwrap();
    let z = cache.hook_z.remove(&1).unwrap();
    assert_eq!(z.dims(), [1, t, heads, d]);
    let out = sae.forward(sae.scale_input(z.reshape([t, heads, d])));
    let feats = values(out.feats);
    let pre = values(out.pre);
    let b_enc = values(sae.b_enc.clone());

    let a = h.state().native.analysis.as_deref().unwrap();
    assert_eq!(a.ids, ids);
    // The run trained without BOS, so the SAE is not applied there.
    assert!(a.skips_bos);
    for head in 0..heads {
        for p in 0..t {
            let want: Vec<(u32, f64)> = (0..m)
                .filter(|&f| p > 0 && feats[(head * t + p) * m + f] > 0.0)
                .map(|f| (f as u32, feats[(head * t + p) * m + f]))
                .collect();
            let mut got: Vec<(u32, f64)> = a.active[head][p]
                .iter()
                .map(|&(f, v)| (f, v as f64))
                .collect();
            got.sort_by_key(|x| x.0);
            assert_eq!(got.len(), want.len(), "head {head} position {p}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0);
                assert!((g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
            }
        }
    }
    // Click a token (one whose text is unique and on which head 0 fires), then its
    // strongest head-0 feature: the DFA shown sums (with b_enc) to the pre-activation of
    // the direct computation.
    let fox = (1..t)
        .rev()
        .find(|&p| {
            let unique = a.strings.iter().filter(|s| **s == a.strings[p]).count() == 1;
            unique && !a.active[0][p].is_empty() && a.strings[p].trim().len() > 1
        })
        .expect("a unique token on which head 0 fires");
    let (f, _) = a.active[0][fox][0];
    let label = a.strings[fox].clone();
    h.get_by_label(&label).click();
    h.run_steps(2);
    assert_eq!(h.state().ui.text.token, Some(fox));
    h.get_by_label_contains(&format!("h0 #{f} ")).click();
    h.run_steps(2);
    assert_eq!(h.state().ui.text.pick, Some((0, f as usize)));
    let a = h.state().native.analysis.as_deref().unwrap();
    let dfa = a.dfa(0, f as usize, fox);
    let want_pre = pre[fox * m + f as usize];
    let sum: f64 = dfa.iter().map(|&v| v as f64).sum::<f64>() + b_enc[f as usize];
    assert!(
        (sum - want_pre).abs() < 1e-4,
        "DFA sum {sum} vs pre {want_pre}"
    );
    assert!(has_label(&h, &format!("pre-activation {want_pre:.3}")));
    h.snapshot("app_text");

    // What wrote what it reads: the source of the largest |DFA| is offered, the split asked
    // of the worker is the library's, its parts sum to that source's DFA in the pick
    // panel, and the strongest writers are drawn; a position a head read from, clicked,
    // takes that head's term a step further up (the library's, its value that term), and
    // "back a step" returns; another source chosen is the one asked.
    use attn_saes::live::{Answer, Through, UpstreamAsk, strongest_source, upstream_through};
    let conv = ZConvention::TransformerLens;
    let source = strongest_source(&dfa);
    let strings = (h.state().native.analysis.as_deref())
        .unwrap()
        .strings
        .clone();
    let offered = format!("{:?} (DFA {:+.3})", strings[source], dfa[source]);
    assert!(has_label(&h, &offered), "{offered}");
    // Clicks `label`, then waits for the split `ask` asks and returns what the app shows;
    // the library's for the same ask.
    let feature = (0, f as usize);
    let upstream = |h: &mut Harness<'static, AttnSaesApp>, label: &str, ask: UpstreamAsk| {
        h.get_by_label(label).click_accesskit();
        h.run_steps(1);
        step_until(h, Duration::from_secs(120), |a| {
            (a.native.upstream.as_ref())
                .is_some_and(|u| u.ask == ask && matches!(u.state, Answer::Ready(_)))
        });
        h.run_steps(2);
        let Some(Answer::Ready(shown)) = h.state().native.upstream.as_ref().map(|u| &u.state)
        else {
            unreachable!()
        };
        let direct = upstream_through(&loaded, &sae, (1, conv), &ids, &ask);
        assert_eq!(**shown, direct.unwrap());
        (**shown).clone()
    };
    let ask = |source| UpstreamAsk::new(feature, (fox, source));
    let shown = upstream(&mut h, "Take it apart", ask(source));
    let sum: f32 = shown.parts.iter().map(|p| p.value).sum();
    assert!((sum - dfa[source]).abs() < 1e-4, "{sum} vs {}", dfa[source]);
    let header = format!(
        "The DFA from {source} {:?} ({:+.4})",
        strings[source], shown.dfa
    );
    assert!(h.query_by_label_contains(&header).is_some(), "{header}");
    let top = shown.strongest(1)[0];
    assert!(has_label(&h, &format!("{:+.4}", top.value)));
    assert!(has_label(&h, &top.writer.name()));
    // A head of layer 0 lists the positions it read from at the source.
    let head = (shown.strongest(12).into_iter())
        .find(|w| !w.by_source.is_empty())
        .expect("a head among the strongest writers")
        .clone();
    let (q, v) = head.reading_from(3)[0];
    let reading = format!("{q} {:?} {v:+.4}", strings[q]);
    assert!(has_label(&h, &reading), "{reading}");
    h.snapshot("app_text_upstream");
    let attn_saes::live::Writer::Head { layer, head: h0 } = head.writer else {
        unreachable!()
    };
    let step = Through {
        layer,
        head: h0,
        from: q,
    };
    let further = upstream(&mut h, &reading, ask(source).then(step));
    assert!((further.dfa - v).abs() < 1e-6, "{} vs {v}", further.dfa);
    let header = format!(
        "The DFA from {source} {:?} through L{layer} h{h0} reading from {q} {:?} ({:+.4})",
        strings[source], strings[q], further.dfa
    );
    assert!(h.query_by_label_contains(&header).is_some(), "{header}");
    assert_eq!(upstream(&mut h, "back a step", ask(source)), shown);
    // "follow from here" (and "Follow the strongest head" beside the source): the library's
    // split followed up through the strongest heads, the path drawn a step a line, why it
    // stopped; "back a step" from it comes one step down, to the split taken apart first.
    let followed = upstream(&mut h, "follow from here", ask(source).following());
    assert_eq!(followed.followed, 1, "{followed:?}");
    let token = |q: usize| format!("{q} {:?}", strings[q]);
    let (header, steps) = followed.followed_said(token);
    assert!(header.starts_with("Followed the strongest head up 1 step from the DFA"));
    assert!(has_label(&h, &header), "{header}");
    let step = followed.through[0];
    let line = format!(
        "{:+.4} ({:+.1}%)  L{} h{} reading from {}",
        followed.dfa,
        100.0 * followed.dfa / followed.terms[0],
        step.layer,
        step.head,
        token(step.from)
    );
    assert_eq!(steps, std::slice::from_ref(&line));
    assert!(has_label(&h, &line), "{line}");
    let stops = format!("stops: {}", followed.why_stopped(token));
    assert!(has_label(&h, &stops), "{stops}");
    assert!(!has_label(&h, "follow from here"));
    h.snapshot("app_text_upstream_followed");
    assert_eq!(upstream(&mut h, "back a step", ask(source)), shown);
    assert_eq!(
        upstream(&mut h, "Follow the strongest head", ask(source).following()),
        followed
    );
    let other = (source + 1) % (fox + 1);
    h.state_mut().ui.text.upstream_source = Some(((fox, 0, f as usize), other));
    h.run_steps(1);
    let shown = upstream(&mut h, "Take it apart", ask(other));
    assert_eq!(shown.source, other);

    // What removing it changes: asked of the worker, drawn for that feature, and the same
    // as the library computes directly.
    use attn_saes::live::{EffectState, feature_effect};
    h.get_by_label("Remove it and run again").click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        matches!(
            a.native.effect.as_ref().map(|e| &e.state),
            Some(EffectState::Ready(_))
        )
    });
    h.run_steps(2);
    let direct = feature_effect(&loaded, &sae, 1, conv, &ids, 0, f as usize).unwrap();
    let Some(EffectState::Ready(shown)) = h.state().native.effect.as_ref().map(|e| &e.state) else {
        unreachable!()
    };
    assert_eq!(**shown, direct);
    assert!(direct.first_firing().is_some());
    assert!(
        h.query_by_label_contains(&format!("changes by {:+.4} in all", direct.total()))
            .is_some()
    );
    assert!(
        h.query_by_label_contains(&format!("At position {fox}, the feature raises"))
            .is_some()
    );
    // A token of the effect row selects that position (the pick stays).
    h.get_by_label("effect at position 2").click_accesskit();
    h.run_steps(2);
    assert_eq!(h.state().ui.text.token, Some(2));
    assert_eq!(h.state().ui.text.pick, Some((0, f as usize)));
    assert!(
        h.query_by_label_contains("At position 2, the feature raises")
            .is_some()
    );
    h.snapshot("app_text_effect");

    // Which features matter: the ranking asked of the worker equals the library's, and a
    // click on the feature that helps most picks it where it fires most and removes it.
    use attn_saes::live::rank_features;
    h.get_by_label("Rank the features").click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        matches!(
            a.native.ranking.as_ref().map(|r| &r.state),
            Some(Answer::Ready(_))
        )
    });
    h.run_steps(2);
    let direct = rank_features(&loaded, &sae, 1, conv, &ids).unwrap();
    let Some(Answer::Ready(shown)) = h.state().native.ranking.as_ref().map(|r| &r.state) else {
        unreachable!()
    };
    assert_eq!(**shown, direct);
    let by_head: Vec<String> = (direct.by_head(4).iter().enumerate())
        .map(|(h, x)| format!("h{h} {x:+.3}"))
        .collect();
    let by_head = format!("By head (its features together): {}", by_head.join(", "));
    assert!(h.query_by_label(&by_head).is_some(), "{by_head}");
    let top = direct.features[0].clone();
    assert!(top.estimate > 0.0);
    let label = format!("h{} #{} {:+.3}", top.head, top.feature, top.estimate);
    h.get_by_label(&label).click();
    h.run_steps(2);
    let a = h.state().native.analysis.as_deref().unwrap();
    let strongest = strongest_position(a, top.head, top.feature);
    assert_eq!(h.state().ui.text.pick, Some((top.head, top.feature)));
    assert_eq!(h.state().ui.text.token, Some(strongest));
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.effect.as_ref().is_some_and(|e| {
            (e.head, e.feature) == (top.head, top.feature) && matches!(e.state, Answer::Ready(_))
        })
    });
    h.run_steps(2);
    h.snapshot("app_text_ranking");

    // Steering with the picked feature: the continuations asked of the worker are the
    // library's at the default 4x the feature's largest activation in the open dashboards.
    use attn_saes::live::steer;
    let d =
        attn_saes::dashboard::build::read(&attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let largest = d.heads[top.head].features[top.feature].max_activation;
    assert!(largest > 0.0);
    h.state_mut().ui.text.steer_tokens = 8;
    h.run_steps(1);
    let basis = format!("its largest activation in the dashboards ({largest:.3})");
    assert!(h.query_by_label_contains(&basis).is_some(), "{basis}");
    let shown = continue_the_text(&mut h);
    h.run_steps(2);
    let steering = attn_saes::live::Steering::greedy(top.head, top.feature, 4.0 * largest, 8);
    let direct = steer(&loaded, &sae, 1, Default::default(), &ids, &steering).unwrap();
    assert_eq!(shown, direct);
    let said = format!("Added at strength {:.3}", direct.steering.strength);
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    h.snapshot("app_text_steer");
    h.get_by_label("Open its dashboard").click_accesskit();
    h.run_steps(2);
    assert_eq!(
        h.state().ui.view,
        View::Features,
        "{:?}",
        h.state().messages
    );
    assert_eq!(h.state().ui.features.head, top.head);
    assert_eq!(h.state().ui.features.feature, Some(top.feature));

    // A dashboard file alone: the model and SAE it records give the same analysis.
    let first = h.state().native.analysis.as_deref().unwrap();
    let (first_ids, first_active) = (first.ids.clone(), first.active.clone());
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(attn_saes::dashboard::run_dashboard_path(
        &run,
    )));
    let mut h = harness(app);
    h.run_steps(3);
    assert!(h.state().native.run_dir.is_none());
    analyse_text(&mut h, text);
    let again = h.state().native.analysis.as_deref().unwrap();
    assert_eq!(again.ids, first_ids);
    assert_eq!(again.active, first_active);
}

/// Your text's ranking by an answer (a next token against another, after a position): the
/// ranking asked of the worker is the library's for the same objective, says what it
/// estimates and the objective's value; a click on a feature removes it and shows the
/// objective's exact change (the library's); the loss ranking is asked again when the
/// controls go back to it; an answer of two tokens fails, saying so.
/// Your text's prompt set: lines pasted, "Rank over the set" gives the library's ranking
/// over them (`resolve_prompts` and `rank_on_prompts`, as `rank --prompts`), its header,
/// its strongest feature (a click opens its dashboard) and the prompts with their answers'
/// values drawn; a prompt clicked is analysed with its answer in the ranking's controls;
/// edited lines ask again, and lines that are not prompts are refused with the line named.
/// A run opened, a text analysed, and a prompt set of three (a blank line between the
/// second and the third, which has its answer's position) ranked over in Your text: the
/// run, the harness and the set's lines.
fn ranked_over_a_prompt_set(
    dir: &Path,
) -> (std::path::PathBuf, Harness<'static, AttnSaesApp>, String) {
    let (run, mut h) = opened_run(dir);
    analyse_text(&mut h, "The cat sat.");
    let lines = [
        r#"{"text": "When the cat and the dog went to the park, the dog gave a ball to", "answer": " the", "against": " a"}"#,
        r#"{"text": "The dog saw the cat, and then the cat went to", "answer": " a", "against": " the"}"#,
        "",
        r#"{"text": "When the dog and the cat went home, the cat gave a toy to the", "answer": " the", "against": " a", "at": 14}"#,
    ]
    .join("\n");
    h.state_mut().ui.text.prompt_set = lines.clone();
    h.run_steps(2);
    h.get_by_label("Rank over the set").click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        settled(a.native.prompts.as_ref().map(|r| &r.state))
    });
    h.run_steps(2);
    (run, h, lines)
}

#[test]
fn your_text_ranks_over_a_prompt_set_as_the_library_does() {
    if !renderer_available() {
        return;
    }
    use attn_saes::app::View;
    use attn_saes::live::{
        Answer, PromptLine, parse_prompt_lines, rank_on_prompts, resolve_prompts,
    };
    use attn_saes::lm::ZConvention;
    let dir = TempDir::new("attn-saes-app", "prompt-set");
    let (run, mut h, lines) = ranked_over_a_prompt_set(&dir);
    let (loaded, sae) = tiny_model_and_sae(&run);
    let read: Vec<(String, PromptLine)> = parse_prompt_lines(&lines, "set", "a prompt").unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].1.ask.at, Some(14));
    let prompts = resolve_prompts(&loaded, &read).unwrap();
    let conv = ZConvention::TransformerLens;
    let direct = rank_on_prompts(&loaded, &sae, (1, conv), &prompts, &mut |_, _| {}).unwrap();
    let asked = h.state().native.prompts.as_ref().unwrap();
    assert_eq!(asked.progress, (3, 3));
    let Answer::Ready(shown) = &asked.state else {
        panic!("{:?}", asked.state)
    };
    assert_eq!(**shown, direct);
    let (mean, sd) = direct.value_spread();
    let said = format!(
        "3 prompts; the answer's logit less that of the token against it: mean {mean:.4}, sd \
         {sd:.4}. {} features fire in them",
        direct.features.len()
    );
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    let value = direct.objectives[1].1;
    let prompt = format!("{value:+.3}  The dog saw the cat, and then the cat went to  → \" a\"");
    assert!(has_label(&h, &prompt), "{prompt}");
    h.snapshot("app_text_prompts");
    // The listed features (the strongest each way, 8 each) removed from every prompt each
    // fires in: the library's exact means, kept in the ranking, each drawn by its estimate.
    click_in_view(&mut h, "Remove each for the exact change");
    h.run_steps(1);
    step_until(&mut h, Duration::from_secs(120), |a| {
        let asked = a.native.prompts.as_ref();
        settled(asked.and_then(|p| p.exact.as_ref().map(|e| &e.0)))
    });
    h.run_steps(2);
    let [helps, hurts] = attn_saes::live::strongest_each_way(&direct.features, 8);
    let listed: Vec<(usize, usize)> = (helps.iter().chain(&hurts))
        .map(|f| (f.head, f.feature))
        .collect();
    assert!(listed.len() > 8, "{listed:?}");
    let exact = attn_saes::live::exact_on_prompts(
        &loaded,
        &sae,
        (1, conv),
        (&prompts, &direct),
        &listed,
        &mut |_, _| {},
    )
    .unwrap();
    let asked = h.state().native.prompts.as_ref().unwrap();
    let Some((Answer::Ready(shown_exact), progress)) = &asked.exact else {
        panic!("{:?}", asked.exact)
    };
    let all = (listed.len(), listed.len());
    assert_eq!((shown_exact.as_slice(), *progress), (exact.as_slice(), all));
    assert_eq!(asked.ranking().unwrap().exact, exact);
    let (h0, f0, change) = exact[0];
    let estimate = (direct.features.iter())
        .find(|x| (x.head, x.feature) == (h0, f0))
        .unwrap()
        .estimate;
    let line = format!("h{h0} #{f0} {change:+.4} ({estimate:+.4})");
    assert!(has_label(&h, &line), "{line}");
    // The feature that helps most: a click opens its dashboard.
    let top = direct.features[0].clone();
    h.get_by_label(&format!(
        "h{} #{} {:+.3}",
        top.head, top.feature, top.estimate
    ))
    .click();
    h.run_steps(2);
    let f = &h.state().ui.features;
    assert_eq!((f.head, f.feature), (top.head, Some(top.feature)));
    assert_eq!(h.state().ui.view, View::Features);
    // A prompt clicked: analysed, with its answer in the ranking's controls.
    h.get_by_label("Your text").click();
    h.run_steps(2);
    h.get_by_label(&prompt).click();
    let ids = prompts[1].0.clone();
    step_until(&mut h, Duration::from_secs(120), |a| {
        (a.native.analysis.as_deref()).is_some_and(|x| x.ids == ids)
    });
    h.run_steps(2);
    let t = &h.state().ui.text;
    assert_eq!(t.prompt, "The dog saw the cat, and then the cat went to");
    assert!(t.rank_by_answer);
    assert_eq!((t.answer.as_str(), t.against.as_str()), (" a", " the"));
    // Edited lines: the button again; lines that are not prompts: refused, named.
    h.state_mut().ui.text.prompt_set = format!("{lines}\n{{\"answer\": \" cat\"}}");
    h.run_steps(2);
    assert!(h.query_by_label("Rank over the set").is_some());
    h.get_by_label("Rank over the set").click();
    h.run_steps(2);
    let why = "the prompt set line 5: not {\"text\": ..., \"answer\": ..., \"against\": ...}";
    assert!(h.query_by_label_contains(why).is_some(), "{why}");
    assert!(matches!(
        h.state().native.prompts.as_ref().map(|p| &p.state),
        Some(Answer::Ready(_))
    ));
}

#[test]
fn your_text_spreads_a_feature_upstream_over_a_prompt_set_as_the_library_does() {
    if !renderer_available() {
        return;
    }
    use attn_saes::live::{
        Answer, PromptLine, SourceRule, SpreadAsk, Writer, upstream_on_prompt_lines,
    };
    use attn_saes::lm::ZConvention;
    let dir = TempDir::new("attn-saes-app", "prompt-spread");
    // Ranked first: the feature taken apart is then the ranking's strongest.
    let (run, mut h, lines) = ranked_over_a_prompt_set(&dir);
    let Some(Answer::Ready(ranked)) = h.state().native.prompts.as_ref().map(|p| &p.state) else {
        panic!("{:?}", h.state().native.prompts)
    };
    let top = (ranked.features[0].head, ranked.features[0].feature);
    h.state_mut().ui.text.spread_from = SourceRule::Strongest;
    h.run_steps(2);
    click_in_view(&mut h, "Take it apart over the set");
    let spread_done = |a: &AttnSaesApp| settled(a.native.spread.as_ref().map(|r| &r.state));
    step_until(&mut h, Duration::from_secs(120), spread_done);
    h.run_steps(2);
    let (loaded, sae) = tiny_model_and_sae(&run);
    let read: Vec<PromptLine> = (PromptLine::parse_set(&lines, "set").unwrap())
        .into_iter()
        .map(|x| x.1)
        .collect();
    let conv = ZConvention::TransformerLens;
    let mut ask = SpreadAsk {
        feature: top,
        from: SourceRule::Strongest,
        follow: false,
    };
    let direct =
        upstream_on_prompt_lines(&loaded, &sae, (1, conv), &read, &ask, &mut |_, _| {}).unwrap();
    let asked = h.state().native.spread.as_ref().unwrap();
    assert_eq!((asked.ask, asked.progress), (ask, (3, 3)));
    let Answer::Ready(shown) = &asked.state else {
        panic!("{:?}", asked.state)
    };
    assert_eq!(**shown, direct);
    assert_eq!(direct.prompts[2].upstream.target, 14);
    let said = format!(
        "h{} #{} on 3 prompts, each where its answer is predicted: activation mean {:.4}",
        top.0,
        top.1,
        direct.mean(|p| p.activation)
    );
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    // The strongest writer's row: its mean, its name, its sd and range (and, a head, where
    // it read from), each computed here from the prompts' splits.
    let n = direct.prompts.len() as f64;
    let parts = |k: usize| -> Vec<f64> {
        (direct.prompts.iter())
            .map(|p| p.upstream.parts[k].value as f64)
            .collect()
    };
    let strongest = (0..direct.prompts[0].upstream.parts.len())
        .max_by(|&a, &b| {
            let mean = |k| parts(k).iter().sum::<f64>().abs();
            mean(a).total_cmp(&mean(b))
        })
        .unwrap();
    let values = parts(strongest);
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let writer = direct.prompts[0].upstream.parts[strongest].writer;
    assert!(has_label(&h, &format!("{mean:+.4}")), "{mean:+.4}");
    assert!(has_label(&h, &writer.name()), "{}", writer.name());
    let range = format!("({sd:.4}) [");
    assert!(h.query_by_label_contains(&range).is_some(), "{range}");
    if let Writer::Head { .. } = writer {
        assert!(h.query_by_label_contains("the source itself").is_some());
    }
    (h.get_by_label_contains("By what wrote the residual stream there")).scroll_to_me();
    h.run_steps(20);
    h.snapshot("app_text_spread");
    // Followed: the paths, as the library follows them.
    click_in_view(&mut h, "follow the strongest head");
    h.run_steps(2);
    click_in_view(&mut h, "Take it apart over the set");
    h.run_steps(1); // asked: the answer before is not taken for this one's
    step_until(&mut h, Duration::from_secs(120), spread_done);
    h.run_steps(2);
    ask.follow = true;
    let followed =
        upstream_on_prompt_lines(&loaded, &sae, (1, conv), &read, &ask, &mut |_, _| {}).unwrap();
    let Some(Answer::Ready(shown)) = h.state().native.spread.as_ref().map(|p| &p.state) else {
        panic!("{:?}", h.state().native.spread)
    };
    assert_eq!(**shown, followed);
    let path = &followed.paths[0];
    let steps: Vec<String> = path.steps.iter().map(|s| s.name()).collect();
    let line = match steps.is_empty() {
        true => "no step (no head's term reaches 1% of the DFA)".to_string(),
        false => steps.join(" → "),
    };
    let line = format!("{:>3}  {line}  [{:+.4}", path.prompts, path.terms[0]);
    assert!(h.query_by_label_contains(&line).is_some(), "{line}");
    // A prompt clicked: analysed, the feature picked at its position, its source chosen.
    let p = &followed.prompts[1];
    let button = format!(
        "{:.3}  DFA {:+.3} from {:?}  {}",
        p.activation, p.upstream.terms[0], p.source_token, p.text
    );
    click_in_view(&mut h, &button);
    let ids = attn_saes::live::text_ids(&loaded, &p.text).unwrap();
    step_until(&mut h, Duration::from_secs(120), |a| {
        (a.native.analysis.as_deref()).is_some_and(|x| x.ids == ids)
    });
    h.run_steps(2);
    let t = &h.state().ui.text;
    assert_eq!((t.token, t.pick), (Some(p.upstream.target), Some(top)));
    let chosen = ((p.upstream.target, top.0, top.1), p.upstream.source);
    assert_eq!(t.upstream_source, Some(chosen));
    // The answer's token as the source: a prompt without it before its position is named.
    h.state_mut().ui.text.spread_from = SourceRule::Answer;
    h.run_steps(2);
    click_in_view(&mut h, "Take it apart over the set");
    h.run_steps(1); // asked: the answer before is not taken for this one's
    step_until(&mut h, Duration::from_secs(120), spread_done);
    h.run_steps(2);
    let why = "prompt 2: no token \" a\" at or before position";
    assert!(h.query_by_label_contains(why).is_some(), "{why}");
}

#[test]
fn your_text_ranks_by_an_answer_as_the_library_does() {
    if !renderer_available() {
        return;
    }
    use attn_saes::live::{Answer, answer_objective, feature_effect_on, rank_features_for};
    use attn_saes::lm::ZConvention;
    let dir = TempDir::new("attn-saes-app", "answer");
    let (run, mut h) = opened_run(&dir);
    analyse_text(
        &mut h,
        "When the cat and the dog went to the park, the dog gave a ball to the",
    );
    assert!(h.query_by_label("answer token").is_none());
    h.get_by_label("a next token:").click();
    h.run_steps(2);
    h.get_by_label("answer token").click();
    h.run_steps(1);
    h.get_by_label("answer token").type_text(" the");
    h.get_by_label("token against").click();
    h.run_steps(1);
    h.get_by_label("token against").type_text(" a");
    let ids = h.state().native.analysis.as_deref().unwrap().ids.clone();
    let at = ids.len() - 2; // the last " to"
    h.state_mut().ui.text.answer_at = Some(at);
    h.run_steps(2);
    h.get_by_label("Rank the features").click();
    let ranked = |a: &AttnSaesApp| settled(a.native.ranking.as_ref().map(|r| &r.state));
    step_until(&mut h, Duration::from_secs(120), ranked);
    h.run_steps(2);
    let (loaded, sae) = tiny_model_and_sae(&run);
    let conv = ZConvention::TransformerLens;
    let objective = answer_objective(&loaded, &ids, Some(at), " the", Some(" a")).unwrap();
    let direct = rank_features_for(&loaded, &sae, 1, conv, &ids, &objective).unwrap();
    let Some(Answer::Ready(shown)) = h.state().native.ranking.as_ref().map(|r| &r.state) else {
        panic!("{:?}", h.state().native.ranking)
    };
    assert_eq!(**shown, direct);
    let said = format!(
        "The estimated fall in the logit of \" the\" less that of \" a\" after position {at} \
         without each (first order)"
    );
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    let value = format!(
        "Here the logit of \" the\" less that of \" a\" after position {at} is {:.4}.",
        direct.value.unwrap()
    );
    assert!(h.query_by_label_contains(&value).is_some(), "{value}");
    // The feature that helps most: removed, with the objective's exact change.
    let top = direct.features[0].clone();
    h.get_by_label(&format!(
        "h{} #{} {:+.3}",
        top.head, top.feature, top.estimate
    ))
    .click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native
            .effect
            .as_ref()
            .is_some_and(|e| matches!(e.state, Answer::Ready(_)))
    });
    h.run_steps(2);
    let exact = feature_effect_on(
        &loaded,
        &sae,
        (1, conv),
        &ids,
        (top.head, top.feature),
        0.0,
        Some(&objective),
    )
    .unwrap();
    let Some(Answer::Ready(effect)) = h.state().native.effect.as_ref().map(|e| &e.state) else {
        unreachable!()
    };
    assert_eq!(**effect, exact);
    let change = exact.objective.unwrap().1;
    let line = format!(
        "Without it the logit of \" the\" less that of \" a\" after position {at} goes from \
         {:.4} to {:.4}: the feature adds {:+.4} to it.",
        change.clean,
        change.changed,
        change.helps()
    );
    assert!(h.query_by_label_contains(&line).is_some(), "{line}");
    h.snapshot("app_text_answer");
    // Back to the loss: the ranking by the answer is not shown, and the button asks again.
    h.get_by_label("the text's loss").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("The estimated fall").is_none());
    h.get_by_label("Rank the features").click();
    h.run_steps(1);
    assert!(!ranked(h.state()), "asked again");
    step_until(&mut h, Duration::from_secs(120), ranked);
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("The estimated rise in the text's summed next-token loss")
            .is_some()
    );
    // An answer of two tokens: refused by the worker, saying why.
    h.get_by_label("a next token:").click();
    h.run_steps(2);
    h.state_mut().ui.text.answer = " cat".into();
    h.run_steps(2);
    h.get_by_label("Rank the features").click();
    h.run_steps(1);
    assert!(!ranked(h.state()), "asked again");
    step_until(&mut h, Duration::from_secs(120), ranked);
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("\" cat\" is 2 tokens here")
            .is_some(),
        "{:?}",
        h.state().native.ranking
    );
    // A shorter text: the answer's position, past its end, goes back to its last token.
    assert_eq!(h.state().ui.text.answer_at, Some(at));
    h.state_mut().ui.text.prompt = "The dog".into();
    h.get_by_label("Run").click();
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.analysis.as_ref().is_some_and(|x| x.ids.len() < at)
    });
    assert_eq!(h.state().ui.text.answer_at, None);
}

/// Features: "Remove it on its top examples" asks the live worker to run each top
/// example's window clean and without the feature; the summary shown is the library's,
/// and the batched runs equal one-window runs of `feature_effect`.
#[test]
fn a_features_effect_on_its_top_examples_matches_one_window_at_a_time() {
    if !renderer_available() {
        return;
    }
    use attn_saes::dashboard::format::ExampleGroup;
    use attn_saes::live::{Answer, ExamplesEffect, effects_on_examples, feature_effect};
    use attn_saes::lm::ZConvention;
    let dir = TempDir::new("attn-saes-app", "examples-effect");
    let (run, mut h) = opened_run(&dir);
    h.state_mut().ui.view = View::Features;
    h.run_steps(3);
    let (head, feature) = (
        h.state().ui.features.head,
        h.state().ui.features.feature.unwrap(),
    );
    let file = &h.state().dashboard.as_ref().unwrap().file;
    let fd = file.head(head).unwrap().features[feature].clone();
    let examples: Vec<(Vec<u32>, usize)> = fd
        .examples
        .iter()
        .filter(|e| e.group == ExampleGroup::Top)
        .map(|e| (file.windows[e.window as usize].clone(), e.target as usize))
        .collect();
    assert!(examples.len() > 4, "{} top examples", examples.len());
    h.get_by_label("Remove it on its top examples")
        .click_accesskit();
    h.run_steps(1);
    assert!(
        h.state().native.examples.is_some(),
        "the request was not sent"
    );
    step_until(&mut h, Duration::from_secs(120), |a| {
        matches!(
            a.native.examples.as_ref().map(|e| &e.state),
            Some(Answer::Ready(_))
        )
    });
    h.run_steps(2);

    let (loaded, sae) = tiny_model_and_sae(&run);
    let conv = ZConvention::TransformerLens;
    let effects = effects_on_examples(&loaded, &sae, 1, conv, &examples, head, feature).unwrap();
    let targets: Vec<usize> = examples.iter().map(|e| e.1).collect();
    let want = ExamplesEffect::of(&effects, &targets);
    let Some(Answer::Ready(shown)) = h.state().native.examples.as_ref().map(|e| &e.state) else {
        unreachable!()
    };
    assert_eq!(**shown, want);
    let mean = want.mean_at_target().unwrap();
    assert!(
        h.query_by_label_contains(&format!("changes by {mean:+.4} on average"))
            .is_some()
    );
    assert!(!want.raises.is_empty());
    // Batched (four windows a pass) against one window at a time.
    for ((window, target), e) in examples.iter().zip(&effects) {
        let one = feature_effect(&loaded, &sae, 1, conv, window, head, feature).unwrap();
        assert_eq!(e.ids, one.ids);
        for (a, b) in e
            .ablated
            .iter()
            .zip(&one.ablated)
            .chain(e.loss.iter().zip(&one.loss))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(e.promotes[*target], one.promotes[*target]);
        assert!(
            e.promotes
                .iter()
                .enumerate()
                .all(|(p, l)| p == *target || l.is_empty())
        );
    }
    h.snapshot("app_features_examples_effect");

    // "Use it in Your text": with no text typed, Your text runs the feature's strongest
    // example up to its top token and picks the feature where it is strongest there; its
    // steered continuation is then the library's.
    let file = &h.state().dashboard.as_ref().unwrap().file;
    let want_prompt = attn_saes::app::features::example_prompt(file, &fd);
    assert!(!want_prompt.is_empty());
    h.get_by_label("Use it in Your text").click_accesskit();
    h.run_steps(1);
    assert_eq!(h.state().ui.view, View::Text);
    assert_eq!(h.state().ui.text.prompt, want_prompt);
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.analysis.is_some()
    });
    h.run_steps(2);
    let a = h.state().native.analysis.as_deref().unwrap();
    let strongest = strongest_position(a, head, feature);
    assert!(a.activation(head, feature, strongest) > 0.0);
    let ids = a.ids.clone();
    assert_eq!(h.state().ui.text.pick, Some((head, feature)));
    assert_eq!(h.state().ui.text.token, Some(strongest));
    h.state_mut().ui.text.steer_times = -2.0;
    h.state_mut().ui.text.steer_tokens = 5;
    h.state_mut().ui.text.steer_temperature = 0.7;
    h.state_mut().ui.text.steer_seed = 3;
    h.run_steps(1);
    let shown = continue_the_text(&mut h);
    let steering = attn_saes::live::Steering {
        temperature: 0.7,
        seed: 3,
        ..attn_saes::live::Steering::greedy(head, feature, -2.0 * fd.max_activation, 5)
    };
    let want =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &steering).unwrap();
    assert_eq!(shown, want);

    // Held at 0x ("hold it at the strength"): the library's continuation without the feature.
    h.get_by_label("hold it at the strength").click_accesskit();
    h.state_mut().ui.text.steer_times = 0.0;
    h.run_steps(1);
    assert!(h.state().ui.text.steer_clamp);
    let shown = continue_the_text(&mut h);
    let clamping = attn_saes::live::Steering {
        strength: 0.0,
        clamp: true,
        ..steering
    };
    let want =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &clamping).unwrap();
    assert_eq!(shown, want);
    assert!(
        h.query_by_label_contains("Held at activation 0.000")
            .is_some()
    );
    // Held at 2x only where it fires ("only where it fires"): the library's.
    h.get_by_label("only where it fires").click_accesskit();
    h.state_mut().ui.text.steer_times = 2.0;
    h.run_steps(1);
    assert!(h.state().ui.text.steer_where_fires);
    let shown = continue_the_text(&mut h);
    let where_fires = attn_saes::live::Steering {
        strength: 2.0 * fd.max_activation,
        where_fires: true,
        ..clamping.clone()
    };
    let want =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &where_fires).unwrap();
    assert_eq!(shown, want);
    let said = format!(
        "Held at activation {:.3} where it fires",
        where_fires.strength
    );
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    // Added at 2x only where it fires: the library's, and not the same as held there.
    h.get_by_label("add it").click_accesskit();
    h.run_steps(1);
    assert!(!h.state().ui.text.steer_clamp && h.state().ui.text.steer_where_fires);
    let added = continue_the_text(&mut h);
    let add_where_fires = attn_saes::live::Steering {
        clamp: false,
        ..where_fires.clone()
    };
    let want = attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &add_where_fires)
        .unwrap();
    assert_eq!(added, want);
    assert_ne!(added.steered.prob, shown.steered.prob, "added vs held");
    let said = format!(
        "Added at strength {:.3} where it fires",
        where_fires.strength
    );
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");
    h.get_by_label("only where it fires").click_accesskit();
    h.run_steps(1);
    assert!(!h.state().ui.text.steer_where_fires);

    // "Keep it in the steering" at 2x, then another head's feature picked at the same
    // position: the continuation steered by both is the library's.
    h.get_by_label("add it").click_accesskit();
    h.state_mut().ui.text.steer_times = 2.0;
    h.run_steps(1);
    h.get_by_label("Keep it in the steering").click_accesskit();
    h.run_steps(1);
    let kept = (head, feature, 2.0 * fd.max_activation);
    assert_eq!(h.state().ui.text.steer_also, vec![kept]);
    let a = h.state().native.analysis.as_deref().unwrap();
    let heads = h.state().dashboard.as_ref().unwrap().file.n_heads();
    let (h2, f2) = (0..heads)
        .filter(|&x| x != head)
        .flat_map(|x| (0..sae.config.features_per_head).map(move |f| (x, f)))
        .max_by(|&(x, f), &(y, g)| {
            let act = |h, f| a.activation(h, f, strongest);
            act(x, f).total_cmp(&act(y, g))
        })
        .unwrap();
    assert!(a.activation(h2, f2, strongest) > 0.0);
    let largest = h
        .state()
        .dashboard
        .as_ref()
        .unwrap()
        .file
        .head(h2)
        .unwrap()
        .features[f2]
        .max_activation;
    h.state_mut().ui.text.pick = Some((h2, f2));
    h.run_steps(1);
    let also = format!("also h{head} #{feature} at {:.3}", kept.2);
    assert!(h.query_by_label_contains(&also).is_some(), "{also}");
    let shown = continue_the_text(&mut h);
    let both = attn_saes::live::Steering {
        also: vec![kept],
        ..attn_saes::live::Steering {
            temperature: 0.7,
            seed: 3,
            ..attn_saes::live::Steering::greedy(h2, f2, 2.0 * largest, 5)
        }
    };
    let want = attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &both).unwrap();
    assert_eq!(shown, want);
    let said = format!("with h{head} #{feature} at {:.3}", kept.2);
    assert!(h.query_by_label_contains(&said).is_some(), "{said}");

    // "the new tokens only", sampled from the 3 likeliest and their top 0.5 of the
    // probability: the library's continuation steered there only, from that nucleus.
    h.get_by_label("the new tokens only").click_accesskit();
    h.state_mut().ui.text.steer_top_p = 0.5;
    h.state_mut().ui.text.steer_top_k = 3;
    h.run_steps(1);
    assert!(h.state().ui.text.steer_new_only);
    let shown = continue_the_text(&mut h);
    let new_only = attn_saes::live::Steering {
        new_only: true,
        top_p: Some(0.5),
        top_k: Some(3),
        ..both
    };
    let want =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &new_only).unwrap();
    assert_eq!(shown, want);

    // "from token P on", with the last token selected: the library's continuation steered
    // from that position (Steering::from_position, which the result carries). It is not
    // the one steered at the new tokens only: the last token's steering reaches the first
    // new token's probabilities. (Steering after BOS gives the same as this here: the
    // hooked layer is the model's last, so earlier positions' hook_z reach no later one.)
    let last = ids.len() - 1;
    h.state_mut().ui.text.token = Some(last);
    h.run_steps(1);
    h.get_by_label_contains(&format!("from token {last} ("))
        .click_accesskit();
    h.run_steps(1);
    assert!(h.state().ui.text.steer_from_token && !h.state().ui.text.steer_new_only);
    let shown = continue_the_text(&mut h);
    let from_last = attn_saes::live::Steering {
        new_only: false,
        from_position: Some(last),
        ..new_only.clone()
    };
    let want =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &from_last).unwrap();
    assert_eq!(shown, want);
    let only_new =
        attn_saes::live::steer(&loaded, &sae, 1, Default::default(), &ids, &new_only).unwrap();
    assert_ne!(
        shown.steered.prob[0], only_new.steered.prob[0],
        "from the last token vs the new tokens only"
    );

    // What the page's attnSaes.live_steer sets (show_steering): the controls then ask for
    // that steering again, but for the strength, which stays the slider's.
    let every = attn_saes::live::Steering {
        tokens: 4,
        temperature: 0.5,
        seed: 9,
        top_p: Some(0.8),
        top_k: Some(7),
        clamp: true,
        where_fires: true,
        new_only: false,
        from_position: Some(2),
        also: vec![(kept.0, kept.1, -1.25)],
        ..new_only.clone()
    };
    h.state_mut()
        .ui
        .text
        .show_steering(&attn_saes::live::Steering {
            strength: 99.0,
            ..every.clone()
        });
    assert_eq!(continue_the_text(&mut h).steering, every);
}

/// Features, on a dashboard file built without `--upstream`: "Take its top examples apart"
/// asks the live worker to split each top example's DFA from its largest source; what it
/// shows is the split the same run's `--upstream` file holds for the feature (computed
/// there by the build's own path), and the hint to rebuild stays below it only until then.
#[test]
fn a_features_top_examples_taken_apart_on_demand_match_the_dashboard_files_split() {
    if !renderer_available() {
        return;
    }
    use attn_saes::dashboard::build;
    use attn_saes::live::Answer;
    let dir = TempDir::new("attn-saes-app", "examples-split");
    let run = run_with_dashboard(&dir, 30);
    freeze_speeds(&run);
    // The file as `dashboard` writes it by default: without the split.
    let path = attn_saes::dashboard::run_dashboard_path(&run);
    let built = build::read(&path).unwrap();
    let mut d = built.clone();
    d.meta.upstream = None;
    for fd in d.heads.iter_mut().flat_map(|h| h.features.iter_mut()) {
        fd.upstream = None;
    }
    build::write(&d, &path).unwrap();
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.clone()));
    let mut h = harness(app);
    h.run_steps(3);
    h.state_mut().ui.view = View::Features;
    h.run_steps(3);
    let (head, feature) = (
        h.state().ui.features.head,
        h.state().ui.features.feature.unwrap(),
    );
    let want = built.heads[head].features[feature]
        .upstream
        .clone()
        .unwrap();
    assert!(want.examples > 2 && want.writers.len() > 2, "{want:?}");
    assert!(has_label(&h, "Build the dashboards with it"));
    click_in_view(&mut h, "Take its top examples apart");
    h.run_steps(1);
    assert!(h.state().native.split.is_some(), "the request was not sent");
    step_until(&mut h, Duration::from_secs(120), |a| {
        settled(a.native.split.as_ref().map(|e| &e.state))
    });
    h.run_steps(2);
    let Some(Answer::Ready(got)) = h.state().native.split.as_ref().map(|e| &e.state) else {
        panic!("{:?}", h.state().native.split)
    };
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
    assert_eq!(got.examples, want.examples);
    assert!(close(got.dfa, want.dfa), "{} {}", got.dfa, want.dfa);
    assert_eq!(got.rest.0, want.rest.0);
    assert!(close(got.rest.1, want.rest.1));
    assert_eq!(got.writers.len(), want.writers.len());
    for (g, w) in got.writers.iter().zip(&want.writers) {
        assert_eq!(g.writer, w.writer);
        for (a, b) in [
            (g.mean, w.mean),
            (g.sd, w.sd),
            (g.min, w.min),
            (g.max, w.max),
        ] {
            assert!(close(a, b), "{g:?} against the file's {w:?}");
        }
    }
    let got = (**got).clone();
    // Drawn as the file's would be; the hint to rebuild gone.
    assert!(has_label(
        &h,
        &format!(
            "Over its {} top examples: the DFA from the source, mean {:+.4}; by writer, the \
             mean (sd) [least, most]; an earlier head's, by where it read from:",
            got.examples, got.dfa
        )
    ));
    for w in &got.writers {
        assert!(has_label(&h, &w.writer.name()), "{}", w.writer.name());
    }
    assert!(!has_label(&h, "Build the dashboards with it"));
    assert!(!has_label(&h, "Take its top examples apart"));
    // The file opened again (as a rebuild does): the answer, of the file before, goes.
    h.state_mut().push(Command::OpenPath(run.clone()));
    h.run_steps(3);
    h.state_mut().ui.view = View::Features;
    h.state_mut().ui.features.feature = Some(feature);
    h.run_steps(3);
    assert!(h.state().native.split.is_none());
    assert!(has_label(&h, "Take its top examples apart"));
    // Another feature: asked again.
    let other = (0..d.heads[head].features.len())
        .find(|&f| f != feature && built.heads[head].features[f].upstream.is_some())
        .expect("another feature with top examples");
    h.state_mut().ui.features.feature = Some(other);
    h.run_steps(3);
    assert!(has_label(&h, "Take its top examples apart"));
}

#[test]
fn closing_while_training_asks_then_stops_with_a_checkpoint_or_hands_the_job_over() {
    if !renderer_available() {
        return;
    }
    use egui::{ViewportCommand, ViewportEvent, ViewportId};
    let dir = TempDir::new("attn-saes-app", "close");
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.ui.form = tiny_form(&dir, 1_000_000);
    app.submit_form(None);
    let mut h = harness(app);
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.curves.history.steps.len() >= 2
    });
    // The window's close button: the app cancels the close and asks.
    h.input_mut()
        .viewports
        .entry(ViewportId::ROOT)
        .or_default()
        .events
        .push(ViewportEvent::Close);
    h.step();
    let commands = |h: &Harness<'static, AttnSaesApp>| {
        h.output()
            .viewport_output
            .get(&ViewportId::ROOT)
            .map(|o| o.commands.clone())
            .unwrap_or_default()
    };
    assert!(commands(&h).contains(&ViewportCommand::CancelClose));
    h.run_steps(2);
    assert!(has_label(&h, "A job is still running"));
    assert!(h.state().job_running());
    h.get_by_label("Stop with a checkpoint, then quit").click();
    step_until(&mut h, Duration::from_secs(120), |a| !a.job_running());
    h.step();
    h.step();
    assert!(commands(&h).contains(&ViewportCommand::Close));
    let stopped_at = h.state().native.status.step;
    assert_eq!(
        checkpoint::complete_checkpoints(&dir.join("run"))
            .last()
            .map(|c| c.0),
        Some(stopped_at)
    );

    // "Keep running headless": on exit the running job moves to the slot the terminal
    // side reads (attn_saes::app::run_native), still running.
    let dir2 = TempDir::new("attn-saes-app", "handover");
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.ui.form = tiny_form(&dir2, 1_000_000);
    app.submit_form(None);
    let mut h = harness(app);
    step_until(&mut h, Duration::from_secs(120), |a| a.job_running());
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    h.state_mut().native.detached = Some(slot.clone());
    eframe::App::on_exit(h.state_mut());
    assert!(h.state().native.job.is_none());
    let job = slot
        .lock()
        .unwrap()
        .take()
        .expect("the job was handed over");
    assert!(job.is_running());
    job.request_stop();
    job.join();
}

/// An analysis whose attribution arrives later, as the web page's worker delivers it.
struct Later {
    tokens: attn_saes::live::LiveTokens,
    state: std::cell::RefCell<attn_saes::live::AttributionState>,
}

impl attn_saes::live::Analysed for Later {
    fn tokens(&self) -> &attn_saes::live::LiveTokens {
        &self.tokens
    }

    fn attribution_state(&self, _: usize, _: usize, _: usize) -> attn_saes::live::AttributionState {
        self.state.borrow().clone()
    }
}

/// The tokens "A b c" with one block of `features` features, `active` at each position.
fn three_tokens(
    features: usize,
    active: Vec<Vec<(u32, f32)>>,
    dense_heads: Option<usize>,
) -> attn_saes::live::LiveTokens {
    attn_saes::live::LiveTokens {
        ids: vec![1, 2, 3],
        strings: vec!["A".into(), " b".into(), " c".into()],
        n_heads: 1,
        features_per_head: features,
        active: vec![active],
        dense_heads,
        skips_bos: false,
    }
}

/// Your text on `later`'s analysis, from `state`, rendered on wgpu.
fn text_harness(
    later: Later,
    state: attn_saes::app::text_view::TextState,
) -> Harness<'static, (Later, attn_saes::app::text_view::TextState)> {
    use attn_saes::app::text_view::{TextState, text_ui};
    Harness::builder()
        .with_size(egui::Vec2::new(900.0, 600.0))
        .wgpu()
        .build_ui_state(
            |ui, (later, state): &mut (Later, TextState)| {
                text_ui(ui, state, Some(&*later), "3 tokens", Default::default());
            },
            (later, state),
        )
}

#[test]
fn your_text_says_computing_until_the_attribution_arrives_and_shows_a_failure() {
    use attn_saes::app::text_view::TextState;
    use attn_saes::live::{Attribution, AttributionState};
    if !renderer_available() {
        return;
    }
    let tokens = three_tokens(4, vec![vec![(2, 0.5)], vec![], vec![(2, 0.75)]], None);
    let later = Later {
        tokens,
        state: AttributionState::Computing.into(),
    };
    let state = TextState {
        token: Some(2),
        pick: Some((0, 2)),
        ..Default::default()
    };
    let mut h = text_harness(later, state);
    h.run_steps(2);
    h.get_by_label("computing…");
    assert!(h.query_by_label_contains("pre-activation").is_none());
    *h.state().0.state.borrow_mut() = AttributionState::Ready(Attribution {
        dfa: vec![0.25, -0.125, 0.5],
        pre: 0.625,
        ..Default::default()
    });
    h.run_steps(2);
    assert!(h.query_by_label("computing…").is_none());
    h.get_by_label("pre-activation 0.625");
    h.get_by_label("sum of DFA 0.625");
    *h.state().0.state.borrow_mut() = AttributionState::Failed("a newer text".into());
    h.run_steps(2);
    h.get_by_label("failed: a newer text");
    assert!(h.query_by_label_contains("pre-activation").is_none());
}

/// Your text with a dense SAE: the selected token's features are listed as one block over
/// all heads, without a head on each chip, and the picked one's title says it is dense;
/// ranking, removing and steering are offered as for a block-diagonal SAE.
#[test]
fn your_text_names_a_dense_saes_one_block() {
    use attn_saes::app::text_view::TextState;
    use attn_saes::live::{Attribution, AttributionState};
    if !renderer_available() {
        return;
    }
    let tokens = three_tokens(
        40,
        vec![vec![], vec![], vec![(17, 0.75), (3, 0.5)]],
        Some(4),
    );
    let later = Later {
        tokens,
        state: AttributionState::Ready(Attribution {
            dfa: vec![0.25, -0.125, 0.5],
            pre: 0.625,
            by_head: vec![0.5, -0.25, 0.0, 0.375],
        })
        .into(),
    };
    let state = TextState {
        token: Some(2),
        ..Default::default()
    };
    let mut h = text_harness(later, state);
    h.run_steps(2);
    h.get_by_label("All heads (dense) · 2 active");
    assert!(h.query_by_label_contains("Head 0").is_none());
    h.get_by_label("#17 0.75").click();
    h.run_steps(2);
    assert_eq!(h.state().1.pick, Some((0, 17)));
    h.get_by_label("Feature 17 · dense, all heads");
    h.get_by_label("sum of DFA 0.625");
    // Its DFA by head, the largest parts first, without the head at 0.
    h.get_by_label("by head");
    h.get_by_label("h0 +0.500 · h3 +0.375 · h1 -0.250");
    // What changes the model's run (it was left out for a dense SAE): offered.
    for offered in [
        "Rank the features",
        "Remove it and run again",
        "Continue the text",
    ] {
        h.get_by_label(offered);
    }
    // Steering adds it to hook_z, not to one head's.
    h.get_by_label_contains("with this feature added to hook_z at every position after BOS");
}

/// The last logged step's `field` in a run's `metrics.jsonl`, read as plain JSON.
fn last_step_value(run: &Path, field: &str) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last = text
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "step")
        .unwrap();
    last["data"][field].as_f64().unwrap()
}

#[test]
fn curves_compare_other_runs_and_stop_comparing() {
    if !renderer_available() {
        return;
    }
    let (dir_a, dir_b) = (
        TempDir::new("attn-saes-app", "compare-a"),
        TempDir::new("attn-saes-app", "compare-b"),
    );
    let a = run_with_dashboard(&dir_a, 30);
    let b = run_with_dashboard(&dir_b, 12);
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(a.clone()));
    // Run B by its directory (metrics.jsonl) and by its dashboard file (the history it
    // records), and a path that is neither: an error, and nothing else changes.
    app.push(Command::ComparePath(b.clone()));
    app.push(Command::ComparePath(
        attn_saes::dashboard::run_dashboard_path(&b),
    ));
    app.push(Command::ComparePath(dir_b.join("missing")));
    let mut h = harness(app);
    h.run_steps(4);
    let s = h.state();
    assert_eq!(s.ui.view, View::Curves);
    assert_eq!(s.compared.len(), 2, "messages: {:?}", s.messages);
    assert!(
        s.messages
            .iter()
            .any(|(l, m)| *l == Level::Error && m.contains("missing")),
        "{:?}",
        s.messages
    );
    assert_eq!(s.curves.history.steps.len(), 30, "the open run is still A");
    // The dashboard file records the same history as the run's metrics.jsonl.
    assert_eq!(s.compared[0].history, s.compared[1].history);
    assert_eq!(s.compared[0].history.steps.len(), 12);
    let names: Vec<String> = s.compared.iter().map(|c| c.name.clone()).collect();

    // The runs table: a row each, with the last step's values from each metrics.jsonl.
    for run in [&a, &b] {
        let l0 = format!("{:.1}", last_step_value(run, "l0"));
        let ev = format!("{:.3}", last_step_value(run, "explained_variance"));
        let rows = if run == &a { 1 } else { 2 };
        assert!(
            h.query_all_by_label(&l0).count() >= rows,
            "L0 {l0} in {rows} rows"
        );
        assert!(h.query_all_by_label(&ev).count() >= rows, "EV {ev}");
    }
    for name in &names {
        h.get_by_label(&format!("{name} (dashed)"));
    }
    // The open run is named by its directory's last two components, as the others are.
    let parent = a.parent().unwrap().file_name().unwrap().to_string_lossy();
    h.get_by_label(&format!("{parent}/run (solid)"));
    // Each compared run's last score less the open run's, paired over the windows both
    // evaluated on (the runs differ only in their length), in its row.
    let d = attn_saes::run_log::last_score_difference(&s.curves.history, &s.compared[0].history)
        .unwrap();
    let paired = format!("{:+.3} ± {:.3}", d.difference, d.se);
    assert_eq!(h.query_all_by_label(&paired).count(), 2, "{paired}");
    assert!(d.difference.abs() > 1e-3, "{d:?}");
    // On hover, each head's, paired the same way.
    h.query_all_by_label(&paired).next().unwrap().hover();
    h.run_steps(4);
    for (i, x) in d.per_head.iter().flatten().enumerate() {
        h.get_by_label_contains(&format!("\nh{i} {:+.3} ± {:.3}", x.difference, x.se));
    }
    assert!(d.per_head.as_ref().is_some_and(|p| p.len() > 1), "{d:?}");

    // Stop comparing with the first: its row goes, the other stays.
    h.get_by_label(&format!("stop comparing with {}", names[0]))
        .click();
    h.run_steps(2);
    let s = h.state();
    assert_eq!(s.compared.len(), 1);
    assert_eq!(s.compared[0].name, names[1]);
    assert!(
        h.query_by_label(&format!("{} (dashed)", names[0]))
            .is_none()
    );
    // Comparing, each run's last values against its L0; with no run compared, not.
    let tradeoff = [
        "CE loss score against L0 (each run's last)",
        "Explained variance against L0 (each run's last)",
    ];
    for title in tradeoff {
        h.get_by_label(title);
    }
    h.get_by_label(&format!("stop comparing with {}", names[1]))
        .click();
    h.run_steps(2);
    assert!(h.state().compared.is_empty());
    for title in tradeoff {
        assert!(h.query_by_label(title).is_none(), "{title}");
    }
}

/// The app with the run `open` open at `(head, feature)` in the Features view and the run
/// `compared` compared, drawn.
fn opened_comparing(
    open: &Path,
    compared: &Path,
    (head, feature): (usize, usize),
) -> Harness<'static, AttnSaesApp> {
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(open.to_path_buf()));
    app.push(Command::ComparePath(compared.to_path_buf()));
    app.push(Command::OpenFeature { head, feature });
    let mut h = harness(app);
    h.run_steps(4);
    h
}

/// Clicks the last widget labelled `label` (a compared run's closest features come after
/// the open run's own) and lets the app act on it.
fn click_last(h: &mut Harness<'static, AttnSaesApp>, label: &str) {
    let links: Vec<_> = h.query_all_by_label(label).collect();
    assert!(!links.is_empty(), "{label}");
    links.last().unwrap().click();
    h.run_steps(3);
}

/// A compared run's closest features are links: one opens that run at the feature, comparing
/// the run that was open instead, whose own closest features then lead back; for runs read
/// from disk (the desktop) and for dashboards the app keeps (the page). The features linked
/// are those `match`'s `closest_to` finds from the two SAEs.
#[test]
fn the_closest_features_in_a_compared_run_open_it_and_lead_back() {
    if !renderer_available() {
        return;
    }
    let (dir_a, dir_b) = (
        TempDir::new("attn-saes-app", "closest-a"),
        TempDir::new("attn-saes-app", "closest-b"),
    );
    let a = run_with_dashboard(&dir_a, 30);
    let b = run_with_dashboard(&dir_b, 12);
    let device = burn::prelude::Device::flex();
    let sae = |run: &Path| attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &device).unwrap();
    let closest = |from: &Path, to: &Path, feature: usize| {
        let c = attn_saes::sae::matching::closest_to(&sae(from), &sae(to), (2, feature), 3);
        let c = c.unwrap()[0];
        (
            c.feature as usize,
            format!("#{} {:.2}", c.feature, c.cosine),
        )
    };
    // B's label for the feature closest to A's 2,5 there, beside B's dashboard: shown by
    // that link.
    use attn_saes::dashboard::labels::{Labels, labels_path};
    let labels_of = |run: &Path| labels_path(&attn_saes::dashboard::run_dashboard_path(run));
    let b_meta = attn_saes::dashboard::format::OwnedDashboardFile::read(
        &attn_saes::dashboard::run_dashboard_path(&b),
    )
    .unwrap()
    .meta;
    let mut b_labels = Labels::new(&b_meta);
    let b_label = "B's label: a long description of what it does, cut when shown";
    b_labels.set(2, closest(&a, &b, 5).0, b_label).unwrap();
    b_labels.write(&labels_of(&b)).unwrap();
    let mut h = opened_comparing(&a, &b, (2, 5));
    h.get_by_label("“B's label: a long description of what it…”");
    let name = |run: &Path| attn_saes::run_log::short_name(run);
    // Opens B at the feature closest to A's 2,5 there; A is compared instead.
    let at = |h: &Harness<'static, AttnSaesApp>| {
        (h.state().ui.features.head, h.state().ui.features.feature)
    };
    assert_eq!(at(&h), (2, Some(5)));
    h.get_by_label(&format!("closest in {}", name(&b)));
    let (in_b, label) = closest(&a, &b, 5);
    click_last(&mut h, &label);
    // `open` is open at head 2 feature `f`, with its curves, and `other` is compared.
    let opened = |h: &Harness<'static, AttnSaesApp>, open: &Path, other: &Path, steps, f| {
        let s = h.state();
        assert_eq!(s.native.run_dir.as_deref(), Some(open), "{:?}", s.messages);
        assert_eq!(
            s.native.dashboard_file,
            Some(attn_saes::dashboard::run_dashboard_path(open))
        );
        assert_eq!(s.curves.history.steps.len(), steps);
        assert_eq!(s.ui.view, View::Features);
        assert_eq!(at(h), (2, Some(f)));
        assert_eq!(s.compared.len(), 1);
        let from = attn_saes::app::curves::ComparedSource::Path(other.to_path_buf());
        assert_eq!(
            (s.compared[0].name.clone(), s.compared[0].source.as_ref()),
            (name(other), Some(&from))
        );
    };
    opened(&h, &b, &a, 12, in_b);
    // And back: A at the feature closest to B's there.
    h.get_by_label(&format!("closest in {}", name(&a)));
    let (in_a, label) = closest(&b, &a, in_b);
    click_last(&mut h, &label);
    opened(&h, &a, &b, 30, in_a);
    // A label typed in A, not yet taken, when another run is opened: saved beside A's
    // dashboard, and not written for B (whose labels file keeps its own label), also once
    // another of B's features is selected.
    h.get_by_label("label").focus();
    h.run_steps(1);
    h.get_by_label("label").type_text("typed before opening");
    h.run_steps(1);
    h.state_mut().push(Command::OpenPath(b.clone()));
    h.run_steps(2);
    h.state_mut().push(Command::OpenFeature {
        head: 2,
        feature: (in_a + 1) % 8,
    });
    h.run_steps(2);
    assert_eq!(Labels::read(&labels_of(&b), &b_meta).unwrap(), b_labels);
    let text = std::fs::read_to_string(labels_of(&a)).unwrap();
    assert!(text.contains("typed before opening"), "{text}");

    // As the page does (dashboards given as bytes, the compared one kept by the app): the
    // same links swap the two dashboards, and a label typed in A, not yet saved, is still
    // there, unsaved, when A is back.
    use attn_saes::app::features::{LabelsEdit, LoadedDashboard};
    let loaded = |name: &str, run: &Path| {
        let bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(run)).unwrap();
        let mut d = LoadedDashboard::new(name.into(), bytes).unwrap();
        d.labels_edit = LabelsEdit::Download;
        d
    };
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.open_loaded(loaded("a.safetensors", &a));
    app.label_feature(2, 5, "typed in the page");
    // B's labels, as the page fetched them beside its dashboard: shown by its link, and
    // B's own once it is open.
    let mut kept_b = loaded("b.safetensors", &b);
    kept_b.labels.set(2, in_b, "B's label in the page").unwrap();
    app.compare_kept(kept_b);
    app.push(Command::OpenFeature {
        head: 2,
        feature: 5,
    });
    let mut h = harness(app);
    h.run_steps(4);
    let swapped = |h: &Harness<'static, AttnSaesApp>, open: &str, other: &str, steps, f| {
        let s = h.state();
        assert_eq!(s.dashboard.as_ref().unwrap().name, open, "{:?}", s.messages);
        assert_eq!(s.curves.history.steps.len(), steps);
        assert_eq!(at(h), (2, Some(f)));
        let kept = attn_saes::app::curves::ComparedSource::Kept;
        assert_eq!(s.compared.len(), 1);
        assert_eq!(
            (s.compared[0].name.as_str(), s.compared[0].source.as_ref()),
            (other, Some(&kept))
        );
        let kept: Vec<&str> = s.kept.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(kept, [other]);
    };
    h.get_by_label("closest in b.safetensors");
    h.get_by_label("“B's label in the page”");
    click_last(&mut h, &closest(&a, &b, 5).1);
    swapped(&h, "b.safetensors", "a.safetensors", 12, in_b);
    let b_own = |h: &Harness<'static, AttnSaesApp>| {
        let d = h.state().dashboard.as_ref().unwrap();
        let listed: Vec<(usize, usize, String)> = d
            .labels
            .iter()
            .map(|(h, f, l)| (h, f, l.to_string()))
            .collect();
        assert_eq!(listed, [(2, in_b, "B's label in the page".to_string())]);
    };
    b_own(&h);
    assert_eq!(
        h.get_by_label("label").value().as_deref(),
        Some("B's label in the page")
    );
    // A's label stays A's: B does not show it and is not given it, also once another of its
    // features is selected (the label field starts anew).
    assert_eq!(
        h.query_all_by_value("typed in the page").count(),
        0,
        "A's label in B's field"
    );
    h.state_mut().push(Command::OpenFeature {
        head: 2,
        feature: (in_b + 1) % 8,
    });
    h.run_steps(2);
    b_own(&h);
    assert!(!h.state().dashboard.as_ref().unwrap().labels_unsaved);
    h.state_mut().push(Command::OpenFeature {
        head: 2,
        feature: in_b,
    });
    h.run_steps(2);
    h.get_by_label("closest in a.safetensors");
    click_last(&mut h, &closest(&b, &a, in_b).1);
    swapped(&h, "a.safetensors", "b.safetensors", 30, in_a);
    let d = h.state().dashboard.as_ref().unwrap();
    assert_eq!(d.labels.get(2, 5), Some("typed in the page"));
    assert!(d.labels_unsaved);
    // A label typed (not yet taken) when a compared run's feature is clicked goes to the
    // feature it was typed for, and the click opens the other run all the same.
    h.get_by_label("label").focus();
    h.run_steps(1);
    h.get_by_label("label").type_text("typed, then away");
    h.run_steps(1);
    click_last(&mut h, &closest(&a, &b, in_a).1);
    assert_eq!(h.state().dashboard.as_ref().unwrap().name, "b.safetensors");
    let a_kept = &h.state().kept[0];
    assert_eq!(a_kept.labels.get(2, in_a), Some("typed, then away"));
    b_own(&h);
    // A kept with labels not saved: not dropped when asked to stop comparing with it (its
    // labels would go), an error says why.
    h.state_mut().push(Command::SetView(View::Curves));
    h.run_steps(2);
    h.get_by_label("stop comparing with a.safetensors").click();
    h.run_steps(2);
    assert_eq!(h.state().kept.len(), 1);
    assert_eq!(h.state().compared.len(), 1);
    let said = &h.state().messages.last().unwrap().1;
    assert!(
        said.contains("a.safetensors has labels not saved"),
        "{said}"
    );
    // Saved (the page's Save labels, with A open), it goes.
    h.state_mut().kept[0].labels_unsaved = false;
    h.get_by_label("stop comparing with a.safetensors").click();
    h.run_steps(2);
    assert!(h.state().kept.is_empty() && h.state().compared.is_empty());
    h.state_mut().push(Command::SetView(View::Features));

    // A dashboard with no training metrics (built for an SAE alone) is compared for its
    // features all the same, and opens; one with neither metrics nor decoder rows is an
    // error, and nothing is kept.
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.open_loaded(loaded("a.safetensors", &a));
    let mut no_history = loaded("b.safetensors", &b);
    no_history.file.meta.history = History::default();
    app.compare_kept(no_history);
    assert_eq!(app.compared.len(), 1, "{:?}", app.messages);
    app.open_compared("b.safetensors", 2, in_b);
    assert_eq!(app.dashboard.as_ref().unwrap().name, "b.safetensors");
    assert_eq!(app.compared[0].name, "a.safetensors");
    let mut nothing = loaded("c.safetensors", &b);
    nothing.file.meta.history = History::default();
    nothing.file.meta.decoder = false;
    app.compare_kept(nothing);
    assert_eq!(app.compared.len(), 1);
    assert_eq!(app.kept.len(), 1);
    let said = &app.messages.last().unwrap().1;
    assert!(
        said.contains("c.safetensors: no training metrics to compare"),
        "{said}"
    );
}

/// A dense run and a block-diagonal run of the same layer compared: each one's features are
/// matched with the other's across heads (a head's feature is a direction in its part of
/// hook_z), those `match`'s `closest_to` finds; the block-diagonal run's are named by head
/// ("h3 #7"), and a link opens the other run at that head and feature, both ways.
#[test]
fn a_dense_and_a_block_diagonal_run_link_their_closest_features_across_heads() {
    if !renderer_available() {
        return;
    }
    let (dir_a, dir_b) = (
        TempDir::new("attn-saes-app", "across-dense"),
        TempDir::new("attn-saes-app", "across-block"),
    );
    let dense = run_with_dashboard_of(attn_saes::train::TrainConfig {
        dense: true,
        ..config(&dir_a, 30)
    });
    let block = run_with_dashboard(&dir_b, 12);
    let device = burn::prelude::Device::flex();
    let sae = |run: &Path| attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &device).unwrap();
    let m = sae(&block).config.features_per_head;
    let mut h = opened_comparing(&block, &dense, (2, 5));
    let at = |h: &Harness<'static, AttnSaesApp>| {
        let s = h.state();
        let run = s.native.run_dir.clone();
        (run, s.ui.features.head, s.ui.features.feature)
    };
    assert_eq!(at(&h), (Some(block.clone()), 2, Some(5)));
    let name = |run: &Path| attn_saes::run_log::short_name(run);
    h.get_by_label(&format!("closest in {}", name(&dense)));
    let want = attn_saes::sae::matching::closest_to(&sae(&block), &sae(&dense), (2, 5), 3);
    let want = want.unwrap();
    for c in &want {
        let label = format!("#{} {:.2}", c.feature, c.cosine);
        assert!(h.query_all_by_label(&label).count() > 0, "{label}");
    }
    click_last(
        &mut h,
        &format!("#{} {:.2}", want[0].feature, want[0].cosine),
    );
    let i = want[0].feature as usize;
    assert_eq!(at(&h), (Some(dense.clone()), 0, Some(i)));
    // From the dense feature: the block-diagonal run's closest, named by head.
    h.get_by_label(&format!("closest in {}", name(&block)));
    let back = attn_saes::sae::matching::closest_to(&sae(&dense), &sae(&block), (0, i), 3);
    let back = back.unwrap();
    let named = |c: &attn_saes::sae::matching::Closest| {
        let (g, f) = (c.feature as usize / m, c.feature as usize % m);
        (g, f, format!("h{g} #{f} {:.2}", c.cosine))
    };
    for c in &back {
        h.get_by_label(&named(c).2);
    }
    let (g, f, label) = named(&back[0]);
    click_last(&mut h, &label);
    assert_eq!(at(&h), (Some(block.clone()), g, Some(f)));
}

/// Your text follows the run open: a text analysed in run A is analysed again with run B's
/// model and SAE once B is opened from its closest features (what A's SAE answered goes),
/// and with A's once A is opened again from B's; each time what `LiveAnalysis` computes
/// with that run's SAE, the model (the same) kept from the worker before.
#[test]
fn your_text_follows_a_compared_run_opened_from_its_closest_features() {
    if !renderer_available() {
        return;
    }
    use attn_saes::app::jobs::LiveSource;
    use attn_saes::live::LiveAnalysis;
    let (dir_a, dir_b) = (
        TempDir::new("attn-saes-app", "follow-a"),
        TempDir::new("attn-saes-app", "follow-b"),
    );
    let a = run_with_dashboard(&dir_a, 30);
    let b = run_with_dashboard(&dir_b, 12);
    let text = "The quick brown fox jumps over the lazy dog.";
    let device = burn::prelude::Device::flex();
    let model = fixture("gpt2_tiny").display().to_string();
    let loaded = attn_saes::lm::load_model(&model, &device).unwrap();
    let direct = |run: &Path| {
        let sae = attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &device).unwrap();
        let conv = attn_saes::lm::ZConvention::TransformerLens;
        LiveAnalysis::run(&loaded, &sae, 1, conv, text)
            .unwrap()
            .tokens
    };
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(a.clone()));
    app.push(Command::ComparePath(b.clone()));
    let mut h = harness(app);
    h.run_steps(3);
    h.get_by_label("Your text").click();
    h.run_steps(2);
    h.state_mut().ui.text.prompt = text.into();
    h.get_by_label("Run").click();
    // The analysis shown is `run`'s, by its worker, as the library computes it.
    let analysed = |h: &mut Harness<'static, AttnSaesApp>, run: &Path| {
        step_until(h, Duration::from_secs(120), |app| {
            let source = app.native.live.as_ref().map(|(s, _)| s);
            source == Some(&LiveSource::Run(run.to_path_buf())) && app.native.analysis.is_some()
        });
        let shown = h.state().native.analysis.as_deref().unwrap();
        let want = direct(run);
        assert_eq!((&shown.ids, &shown.strings), (&want.ids, &want.strings));
        for (head, positions) in want.active.iter().enumerate() {
            for (p, want) in positions.iter().enumerate() {
                let got = &shown.active[head][p];
                assert_eq!(got.len(), want.len(), "head {head} position {p}");
                for (g, w) in got.iter().zip(want) {
                    assert!(g.0 == w.0 && (g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
                }
            }
        }
        want
    };
    let in_a = analysed(&mut h, &a);
    // A feature's effect asked of A's worker: it goes with it.
    let (f, _) = in_a.active[0]
        .iter()
        .find_map(|p| p.first())
        .copied()
        .unwrap();
    h.state_mut().native.effect = Some(attn_saes::live::Asked::computing(
        in_a.ids.clone(),
        0,
        f as usize,
    ));
    let name = attn_saes::run_log::short_name;
    h.state_mut().open_compared(&name(&b), 2, 0);
    h.run_steps(1);
    assert!(h.state().native.effect.is_none());
    let in_b = analysed(&mut h, &b);
    assert_ne!(in_a.active, in_b.active, "the two SAEs fire alike");
    // The same model: kept, only B's SAE loaded.
    let loaded = h.state().native.live_loaded.clone();
    assert!(loaded.ends_with(", the model kept"), "{loaded}");
    assert!(
        loaded.contains(&b.join("sae").display().to_string()),
        "{loaded}"
    );
    h.state_mut().open_compared(&name(&a), 2, 0);
    analysed(&mut h, &a);
    assert!(h.state().native.live_loaded.ends_with(", the model kept"));
    // With nothing analysed (as when the worker ran only a feature's effect on its top
    // examples), opening B starts nothing, and A's worker's answers are not drawn; Run then
    // starts B's worker, which takes the model over all the same.
    h.state_mut().native.analysis = None;
    h.state_mut().open_compared(&name(&b), 2, 0);
    h.run_steps(2);
    assert!(h.state().native.live.is_none() && h.state().native.analysis.is_none());
    h.get_by_label("Your text").click();
    h.run_steps(2);
    h.get_by_label("Run").click();
    analysed(&mut h, &b);
    assert!(h.state().native.live_loaded.ends_with(", the model kept"));
}

/// `attn-saes compare`, the same comparison in the terminal.
#[test]
fn the_compare_command_prints_each_runs_last_metrics_and_refuses_a_bad_path() {
    let (dir_a, dir_b) = (
        TempDir::new("attn-saes-cli", "compare-a"),
        TempDir::new("attn-saes-cli", "compare-b"),
    );
    let a = run_with_dashboard(&dir_a, 20);
    let b = run_with_dashboard(&dir_b, 8);
    let b_file = attn_saes::dashboard::run_dashboard_path(&b);
    let compare = |args: &[&Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .arg("compare")
            .args(args)
            .output()
            .unwrap()
    };
    let out = compare(&[&a, &b_file, Path::new("--json")]);
    assert_succeeded(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (row, run) in rows.as_array().unwrap().iter().zip([&a, &b]) {
        for field in ["step", "l0", "explained_variance", "loss"] {
            assert_eq!(
                row["step"][field].as_f64().unwrap(),
                last_step_value(run, field),
                "{field} of {}",
                row["run"]
            );
        }
    }
    assert_eq!(rows[1]["run"], "run/dashboard.safetensors");
    // The table: a row per run with its last L0 to two decimals.
    let out = compare(&[&a, &b]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    for (line, run) in lines[1..3].iter().zip([&a, &b]) {
        let l0 = format!("{:.2}", last_step_value(run, "l0"));
        assert!(line.split_whitespace().any(|w| w == l0), "{l0} in {line}");
        // It ends with the last evaluation's CE loss score and its standard error.
        let (history, _) = History::read(&run.join("metrics.jsonl")).unwrap();
        let e = history.evals.last().unwrap();
        let score = format!(" {:.4} +- {:.4}", e.ce_score, e.ce_score_se.unwrap());
        assert!(line.ends_with(&score), "{score} at the end of {line}");
    }
    // Then b's score less a's, paired over the windows both evaluated on (the runs differ
    // only in their length).
    let last_eval = |run: &Path| {
        let (history, _) = History::read(&run.join("metrics.jsonl")).unwrap();
        history.evals.last().unwrap().clone()
    };
    let d = attn_saes::run_log::score_difference(&last_eval(&a), &last_eval(&b)).unwrap();
    let name = attn_saes::run_log::short_name;
    let heading = format!("CE score less {}'s, paired window by window:", name(&a));
    assert_eq!(lines[3..5], ["", heading.as_str()], "{text}");
    assert!(assert_paired_lines(&lines[5..], &name(&b), &d).is_empty());
    // A path that is neither a run nor a dashboard: an error, and no partial table.
    let out = compare(&[&a, &dir_b.join("missing")]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing"), "{err}");
    // A .json file that is not an `evaluate --json` report: said so, no table.
    let other = dir_b.join("other.json");
    std::fs::write(&other, "{\"metrics\": 1}").unwrap();
    let out = compare(&[&a, &other]);
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let said = format!("{} is not an `evaluate --json` report", other.display());
    assert!(err.contains(&said), "{err}");
}

/// A feature's label: typed in its dashboard, saved beside the dashboard file when the field
/// loses focus (Enter) or the selection moves on, shown in the list and searched, shown in
/// Your text under the picked feature, and read back by another window; labels for another
/// SAE are neither shown nor written over.
#[test]
fn a_label_typed_in_a_dashboard_is_saved_listed_searched_and_read_back() {
    if !renderer_available() {
        return;
    }
    use attn_saes::dashboard::labels::Labels;
    let dir = TempDir::new("attn-saes-app", "labels");
    let (run, mut h) = opened_run(&dir);
    let file = run.join("dashboard.labels.json");
    let bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let dashboard = attn_saes::dashboard::format::OwnedDashboardFile::new(bytes).unwrap();
    let live: Vec<usize> = (dashboard.head(2).unwrap().features.iter().enumerate())
        .filter(|(_, fd)| fd.max_activation > 0.0 && !fd.examples.is_empty())
        .map(|(f, _)| f)
        .collect();
    let (f, g, other) = (live[0], live[1], live[2]);
    let open = |h: &mut Harness<'static, AttnSaesApp>, feature| {
        h.state_mut()
            .push(Command::OpenFeature { head: 2, feature });
        h.run_steps(3);
    };
    let type_label = |h: &mut Harness<'static, AttnSaesApp>, text: &str| {
        h.get_by_label("label").focus();
        h.run_steps(1);
        h.get_by_label("label").type_text(text);
        h.run_steps(1);
    };
    let saved = || Labels::read(&file, &dashboard.meta).unwrap();
    let row = |h: &Harness<'static, AttnSaesApp>, feature: usize| {
        (h.get_by_label_contains(&format!("#{feature}  "))
            .accesskit_node())
        .label()
        .unwrap_or_default()
    };

    // Typed, then Enter: saved, said, and in the feature's row.
    open(&mut h, f);
    type_label(&mut h, "commas in lists");
    assert!(!file.exists(), "nothing is saved while typing");
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert_eq!(saved().get(2, f), Some("commas in lists"));
    let said = format!(
        "head 2 feature {f}: \"commas in lists\" (saved in {})",
        file.display()
    );
    assert!(has_label(&h, &said), "{:?}", h.state().messages);
    assert!(row(&h, f).ends_with("  commas in lists"), "{}", row(&h, f));
    // Typed for another feature, then a third picked in the list without Enter: saved too.
    open(&mut h, g);
    type_label(&mut h, "second one");
    h.get_by_label_contains(&format!("#{other}  ")).click();
    h.run_steps(3);
    assert_eq!(h.state().ui.features.feature, Some(other));
    assert_eq!(saved().get(2, g), Some("second one"));
    assert_eq!(saved().len(), 2);
    // The search finds features by label (any case).
    h.state_mut().ui.features.search = "COMMAS IN".into();
    h.run_steps(2);
    let n = dashboard.head(2).unwrap().features.len();
    assert!(has_label(&h, &format!("1 of {n} features")));
    h.state_mut().ui.features.search.clear();
    h.run_steps(2);

    // Your text: the picked feature's label under its heading.
    open(&mut h, f);
    h.get_by_label("Use it in Your text").click_accesskit();
    h.run_steps(1);
    step_until(&mut h, Duration::from_secs(120), |a| {
        a.native.analysis.is_some()
    });
    h.run_steps(2);
    assert_eq!(h.state().ui.text.pick, Some((2, f)));
    assert!(has_label(&h, "commas in lists"));

    // Another window on the run reads them back.
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.clone()));
    app.push(Command::OpenFeature {
        head: 2,
        feature: g,
    });
    let mut h = harness(app);
    h.run_steps(3);
    assert!(has_label(&h, &format!("2 labels from {}", file.display())));
    assert_eq!(
        h.get_by_label("label").value().as_deref(),
        Some("second one")
    );
    assert!(h.state().selection().ends_with("· label \"second one\""));

    // Labels for another SAE: not shown, not editable, the file left as it was.
    let sha = saved().sae_sha256.unwrap();
    let other_sae = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&sha, &"0".repeat(64));
    std::fs::write(&file, &other_sae).unwrap();
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.clone()));
    app.push(Command::OpenFeature {
        head: 2,
        feature: g,
    });
    let mut h = harness(app);
    h.run_steps(3);
    let messages = &h.state().messages;
    assert!(
        messages.iter().any(|(level, text)| *level == Level::Error
            && text.starts_with("labels not shown, and not saved over: ")
            && text.contains("for another SAE")),
        "{messages:?}"
    );
    assert!(h.query_by_label("label").is_none());
    assert!(!row(&h, g).contains("second one"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), other_sae);
}

/// In the web page the same label field keeps edited labels in memory until Save labels
/// downloads them (`LabelsEdit::Download`): the label is taken and marked unsaved, the
/// message says how to save it, and nothing is written beside the dashboard file.
#[test]
fn in_the_page_a_typed_label_is_kept_unsaved_until_saved() {
    if !renderer_available() {
        return;
    }
    use attn_saes::app::features::{LabelsEdit, LoadedDashboard};
    let dir = TempDir::new("attn-saes-app", "labels-page");
    let run = run_with_dashboard(&dir, 30);
    let bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let mut d = LoadedDashboard::new("dashboard.safetensors".into(), bytes).unwrap();
    d.labels_edit = LabelsEdit::Download;
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.open_loaded(d);
    app.push(Command::OpenFeature {
        head: 1,
        feature: 2,
    });
    let mut h = harness(app);
    h.run_steps(3);
    h.get_by_label("label").focus();
    h.run_steps(1);
    h.get_by_label("label").type_text("typed in the page");
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    let d = h.state().dashboard.as_ref().unwrap();
    assert_eq!(d.labels.get(1, 2), Some("typed in the page"));
    assert!(d.labels_unsaved);
    assert!(has_label(
        &h,
        "head 1 feature 2: \"typed in the page\" (Save labels downloads them)"
    ));
    assert!(!run.join("dashboard.labels.json").exists());
}

/// Your text on an SAE that does not read BOS: the BOS token says why it shows no
/// features, where another token lists its heads.
#[test]
fn your_text_says_why_bos_shows_no_features() {
    use attn_saes::app::text_view::TextState;
    use attn_saes::live::{AttributionState, BOS_SKIPPED};
    if !renderer_available() {
        return;
    }
    let mut tokens = three_tokens(4, vec![vec![], vec![(2, 0.5)], vec![]], None);
    tokens.skips_bos = true;
    let later = Later {
        tokens,
        state: AttributionState::Computing.into(),
    };
    let state = TextState {
        token: Some(0),
        ..Default::default()
    };
    let mut h = text_harness(later, state);
    h.run_steps(2);
    h.get_by_label(BOS_SKIPPED);
    assert!(h.query_by_label_contains("Head 0").is_none());
    h.state_mut().1.token = Some(1);
    h.run_steps(2);
    h.get_by_label("Head 0 · 1 active");
    assert!(h.query_by_label(BOS_SKIPPED).is_none());
}

/// The Curves view's per-head panel draws a line per entry of the metric chosen: for a dense
/// run, its one block's L0 as `all heads`, and its CE loss scores per model head (its
/// reconstruction spliced into one head at a time) as `h0`..`h3` with a note saying so. It
/// drew `h0` alone for both, the CE line being model head 0's score under the block's name.
/// A block-diagonal run's heads are `h0`..`h3` for either.
#[test]
fn the_per_head_curves_of_a_dense_run_name_its_block_and_its_model_heads() {
    use attn_saes::app::curves::{Curves, CurvesState, HeadMetric, curves_ui};
    use attn_saes::run_log::{EvalMetrics, HeadEval, History, StepMetrics};
    if !renderer_available() {
        return;
    }
    let history = |blocks: usize| History {
        steps: (1..=3)
            .map(|step| StepMetrics {
                step,
                tokens: 64 * step as u64,
                loss: 2.0,
                mse: 1.0,
                sparsity_loss: 1.0,
                l0: 5.0,
                l0_per_head: vec![5.0 / blocks as f64; blocks],
                explained_variance: 0.5,
                explained_variance_per_head: vec![0.5; blocks],
                l2_ratio: 1.0,
                dead_features: 0,
                dead_per_head: vec![0; blocks],
                lr: 1e-3,
                l1_coefficient: 1.0,
                steps_per_s: 1.0,
                aux_loss: None,
            })
            .collect(),
        evals: vec![EvalMetrics {
            step: 3,
            ce_clean: 3.0,
            ce_sae: 3.1,
            ce_zero: 4.0,
            ce_score: 0.9,
            per_head: (0..4)
                .map(|h| HeadEval {
                    ce_sae: 3.0,
                    ce_zero: 3.1,
                    ce_score: 0.1 * h as f64,
                    ce_score_se: None,
                    window_losses: None,
                })
                .collect(),
            ce_score_se: None,
            windows: None,
            window_losses: None,
        }],
    };
    let heads = ["h0", "h1", "h2", "h3"];
    let note = "a dense SAE: each head's line is its reconstruction spliced into that head's \
                part of hook_z alone";
    for (blocks, dense) in [(1, true), (4, false)] {
        for metric in [HeadMetric::L0, HeadMetric::CeScore] {
            let curves = Curves::from_history("run", history(blocks));
            let state = CurvesState {
                head_metric: metric,
                ..Default::default()
            };
            let mut h = Harness::builder()
                .with_size(egui::Vec2::new(1200.0, 2400.0))
                .wgpu()
                .build_ui_state(
                    |ui, (curves, state): &mut (Curves, CurvesState)| {
                        curves_ui(ui, curves, &[], state);
                    },
                    (curves, state),
                );
            h.run_steps(2);
            let what = format!("{blocks} blocks, {metric:?}");
            let block_line = dense && metric == HeadMetric::L0;
            // Each as a checkbox (and in the plot's legend).
            let shown = |label: &str| h.query_all_by_label(label).next().is_some();
            assert_eq!(shown("all heads"), block_line, "{what}");
            for head in heads {
                assert_eq!(shown(head), !block_line, "{what}: {head}");
            }
            let noted = dense && metric == HeadMetric::CeScore;
            assert_eq!(h.query_by_label(note).is_some(), noted, "{what}");
        }
    }
}
