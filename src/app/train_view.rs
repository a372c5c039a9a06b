//! The Train view (desktop only): the run form with the CLI's defaults and validation,
//! Start / Stop / Resume, and the running job's phase and progress.

use std::path::PathBuf;

use eframe::egui;

use crate::cli_train::TrainArgs;
use crate::device::DeviceChoice;
use crate::sae::Normalization;
use crate::train::TrainConfig;
use crate::train::config::{ArchitectureKind, LrSchedule};

/// The form's fields as typed (text until parsed), persisted between launches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainForm {
    pub model: String,
    pub dataset: String,
    /// Empty: activations from the LM as training goes; else a cache directory (`harvest`'s)
    /// to train from, and where the Harvest button writes one.
    pub activation_cache: String,
    /// Empty: the model's default layer.
    pub hook_layer: String,
    pub architecture: ArchitectureKind,
    pub expansion_factor: String,
    /// Empty: expansion factor x d_head per head.
    pub d_sae: String,
    pub k: String,
    pub l1_coefficient: String,
    /// Empty: the default (1/32 for TopK and BatchTopK).
    pub aux_k_coefficient: String,
    pub lr: String,
    pub lr_schedule: LrSchedule,
    pub lr_warmup_steps: String,
    pub total_training_steps: String,
    pub batch_size: String,
    pub context_size: String,
    pub normalization: Normalization,
    pub device: DeviceChoice,
    pub out_dir: String,
    pub build_dashboards: bool,
}

impl Default for TrainForm {
    fn default() -> Self {
        Self::from_config(&TrainConfig::default())
    }
}

/// A field that did not parse: `(field label, message)`.
pub type FieldError = (&'static str, String);

impl TrainForm {
    pub fn from_config(c: &TrainConfig) -> Self {
        Self {
            model: c.model.clone(),
            dataset: c.dataset.display().to_string(),
            activation_cache: (c.activation_cache.as_ref())
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            hook_layer: c.hook_layer.map(|l| l.to_string()).unwrap_or_default(),
            architecture: c.architecture,
            expansion_factor: c.expansion_factor.to_string(),
            d_sae: c.d_sae.map(|d| d.to_string()).unwrap_or_default(),
            k: c.k.to_string(),
            l1_coefficient: c.l1_coefficient.to_string(),
            // Empty for a ReLU or JumpReLU run (whose saved coefficient is 0), so that
            // switching the form to TopK gets the default, not AuxK off.
            aux_k_coefficient: match c.architecture {
                ArchitectureKind::Topk | ArchitectureKind::BatchTopk => c
                    .aux_k_coefficient
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                ArchitectureKind::Relu | ArchitectureKind::Jumprelu => String::new(),
            },
            lr: c.lr.to_string(),
            lr_schedule: c.lr_schedule,
            lr_warmup_steps: c.lr_warmup_steps.to_string(),
            total_training_steps: c.total_training_steps.to_string(),
            batch_size: c.batch_size.to_string(),
            context_size: c.context_size.to_string(),
            normalization: c.normalization,
            device: c.device,
            out_dir: c.out_dir.display().to_string(),
            build_dashboards: true,
        }
    }

    /// The CLI flags this form stands for, or every field that does not parse.
    pub fn to_args(&self) -> Result<TrainArgs, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut num = |label: &'static str, text: &str| -> Option<usize> {
            match text.trim().parse::<usize>() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push((label, format!("'{text}' is not a whole number")));
                    None
                }
            }
        };
        let hook_layer = (!self.hook_layer.trim().is_empty())
            .then(|| num("hook layer", &self.hook_layer))
            .flatten();
        let d_sae = (!self.d_sae.trim().is_empty())
            .then(|| num("d_sae", &self.d_sae))
            .flatten();
        let expansion_factor = num("expansion factor", &self.expansion_factor);
        let k = num("k", &self.k);
        let lr_warmup_steps = num("lr warmup steps", &self.lr_warmup_steps);
        let total_training_steps = num("steps", &self.total_training_steps);
        let batch_size = num("batch size", &self.batch_size);
        let context_size = num("context size", &self.context_size);
        let mut real = |label: &'static str, text: &str| -> Option<f64> {
            match text.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    errors.push((label, format!("'{text}' is not a number")));
                    None
                }
            }
        };
        let l1_coefficient = real("sparsity coefficient", &self.l1_coefficient);
        let aux_k_coefficient = (!self.aux_k_coefficient.trim().is_empty())
            .then(|| real("AuxK coefficient", &self.aux_k_coefficient))
            .flatten();
        let lr = real("learning rate", &self.lr);
        if self.model.trim().is_empty() {
            errors.push(("model", "give a model path, hub id or alias".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TrainArgs {
            model: Some(self.model.trim().to_string()),
            dataset: Some(PathBuf::from(self.dataset.trim())),
            activation_cache: self.cache_dir(),
            hook_layer,
            architecture: Some(self.architecture),
            expansion_factor,
            d_sae,
            k,
            l1_coefficient,
            aux_k_coefficient,
            lr,
            lr_schedule: Some(self.lr_schedule),
            lr_warmup_steps,
            total_training_steps,
            batch_size,
            context_size,
            normalization: Some(self.normalization),
            out_dir: Some(PathBuf::from(self.out_dir.trim())),
            ..TrainArgs::default()
        })
    }

    /// Checks the form the way `train` does before loading anything: every field parses and
    /// the resulting config validates. Returns the flags, or the messages to show.
    pub fn check(&self) -> Result<TrainArgs, Vec<FieldError>> {
        let args = self.to_args()?;
        let config = self.checked_config(&args)?;
        if let Some(dir) = &config.activation_cache {
            use crate::data::store::{CACHE_META, HarvestState, read_cache_meta};
            let message = if let Some(stopped) = HarvestState::read(dir)
                && !dir.join(CACHE_META).is_file()
            {
                format!(
                    "{} holds {}: {STOPPED_HARVEST}",
                    dir.display(),
                    stopped.describe()
                )
            } else if !dir.join(CACHE_META).is_file() {
                format!(
                    "{} holds no complete activation cache (no {CACHE_META}): Harvest writes \
                     one, or leave the field empty to train from the LM",
                    dir.display()
                )
            } else {
                match read_cache_meta(dir) {
                    Err(e) => format!("{e:#}"),
                    Ok(meta) if config.hook_layer.is_some_and(|l| l != meta.hook_layer) => {
                        format!(
                            "{} holds layer {}'s hook_z: set hook layer to {} (or empty it), \
                             or Harvest this layer",
                            dir.display(),
                            meta.hook_layer,
                            meta.hook_layer
                        )
                    }
                    Ok(_) => return Ok(args),
                }
            };
            return Err(vec![("activation cache", message)]);
        }
        Ok(args)
    }

    /// The config `args` resolve to, validated, with its dataset there.
    fn checked_config(&self, args: &TrainArgs) -> Result<TrainConfig, Vec<FieldError>> {
        let config = args
            .resolve(self.device)
            .map_err(|e| vec![("config", format!("{e:#}"))])?;
        config
            .validate()
            .map_err(|e| vec![("config", format!("{e:#}"))])?;
        if !config.dataset.exists() && config.dataset != TrainConfig::default().dataset {
            return Err(vec![(
                "dataset",
                format!("{} does not exist", config.dataset.display()),
            )]);
        }
        Ok(config)
    }

    fn cache_dir(&self) -> Option<PathBuf> {
        let dir = self.activation_cache.trim();
        (!dir.is_empty()).then(|| PathBuf::from(dir))
    }

    /// The harvest the Harvest button starts: the activations this form's run reads (its
    /// model, corpus, layer and context; steps x batch size tokens) into its activation
    /// cache directory. Checked as [`Self::check`] checks a run.
    pub fn harvest_request(&self) -> Result<super::jobs::HarvestRequest, Vec<FieldError>> {
        let args = self.to_args()?;
        let Some(out) = self.cache_dir() else {
            return Err(vec![(
                "activation cache",
                "name the directory to harvest into".into(),
            )]);
        };
        let config = self.checked_config(&args)?;
        // Only what `harvest` takes: the training flags would be refused there.
        let args = TrainArgs {
            model: args.model,
            dataset: args.dataset,
            hook_layer: args.hook_layer,
            context_size: args.context_size,
            batch_size: args.batch_size,
            ..TrainArgs::default()
        };
        Ok(super::jobs::HarvestRequest {
            args,
            device: self.device,
            tokens: config.total_training_steps * config.batch_size,
            out,
        })
    }
}

/// What the form says of a directory holding a stopped harvest.
const STOPPED_HARVEST: &str = "Harvest with the same settings goes on from its last shard";

/// What the cache in `dir` holds, for a line under the form: tokens, layer, model, and the
/// steps of `batch` tokens they make.
pub fn cache_summary(
    dir: &std::path::Path,
    meta: &crate::data::store::CacheMeta,
    batch: Option<usize>,
) -> String {
    let tokens: usize = meta.shard_rows.iter().sum();
    let model = std::path::Path::new(&meta.model_name)
        .file_name()
        .map_or(meta.model_name.clone(), |n| {
            n.to_string_lossy().into_owned()
        });
    let steps = batch
        .filter(|&b| b > 0)
        .map(|b| format!(", {} steps of {b} tokens", tokens / b))
        .unwrap_or_default();
    format!(
        "{} holds {tokens} tokens of layer {}'s hook_z ({} heads x {}) of {model}{steps}",
        dir.display(),
        meta.hook_layer,
        meta.n_heads,
        meta.d_head
    )
}

/// A form row: `label`, then one of a clap value enum's variants by its CLI name.
fn combo<T: clap::ValueEnum + PartialEq + Copy>(ui: &mut egui::Ui, label: &str, value: &mut T) {
    let name = |v: &T| {
        v.to_possible_value()
            .map(|p| p.get_name().to_string())
            .unwrap_or_default()
    };
    let label_id = ui.label(label).id;
    egui::ComboBox::from_id_salt(label)
        .selected_text(name(value))
        .show_ui(ui, |ui| {
            for v in T::value_variants() {
                ui.selectable_value(value, *v, name(v));
            }
        })
        .response
        .labelled_by(label_id);
    ui.label("");
    ui.end_row();
}

/// What the form asks the app to do.
pub enum FormAction {
    Start,
    Resume,
    Harvest,
}

/// The form. `errors` are shown next to their fields (or under the form); `locked` greys it
/// out while a run is going.
pub fn form_ui(
    ui: &mut egui::Ui,
    form: &mut TrainForm,
    errors: &[FieldError],
    locked: bool,
) -> Option<FormAction> {
    let mut action = None;
    ui.add_enabled_ui(!locked, |ui| {
        egui::Grid::new("train_form")
            .num_columns(3)
            .spacing([12.0, 6.0])
            .striped(true)
            .show(ui, |ui| {
                let error_of = |label: &str| {
                    errors
                        .iter()
                        .find(|(l, _)| *l == label)
                        .map(|(_, m)| m.clone())
                };
                let text =
                    |ui: &mut egui::Ui, label: &'static str, value: &mut String, hint: &str| {
                        let label_id = ui.label(label).id;
                        ui.add(
                            egui::TextEdit::singleline(value)
                                .hint_text(hint)
                                .min_size(egui::vec2(420.0, 0.0)),
                        )
                        .on_hover_text(hint)
                        .labelled_by(label_id);
                        match error_of(label) {
                            Some(m) => ui.colored_label(ui.visuals().error_fg_color, m),
                            None => ui.label(""),
                        };
                        ui.end_row();
                    };
                text(
                    ui,
                    "model",
                    &mut form.model,
                    "directory, .gguf, hub id ORG/NAME, gpt2, gelu-2l",
                );
                text(
                    ui,
                    "dataset",
                    &mut form.dataset,
                    "text file, directory, .jsonl or .parquet",
                );
                text(
                    ui,
                    "activation cache",
                    &mut form.activation_cache,
                    "empty: from the LM; or the directory Harvest writes, runs read",
                );
                text(
                    ui,
                    "hook layer",
                    &mut form.hook_layer,
                    "empty: the model's default layer",
                );
                combo(ui, "architecture", &mut form.architecture);
                text(
                    ui,
                    "expansion factor",
                    &mut form.expansion_factor,
                    "features per head = this x d_head",
                );
                text(
                    ui,
                    "d_sae",
                    &mut form.d_sae,
                    "empty: from the expansion factor",
                );
                text(
                    ui,
                    "k",
                    &mut form.k,
                    "active features per head (topk, batchtopk)",
                );
                text(
                    ui,
                    "sparsity coefficient",
                    &mut form.l1_coefficient,
                    "L1 (relu) or L0 (jumprelu)",
                );
                text(
                    ui,
                    "AuxK coefficient",
                    &mut form.aux_k_coefficient,
                    "revives dead features (topk, batchtopk); empty: 1/32, 0: off",
                );
                text(ui, "learning rate", &mut form.lr, "Adam learning rate");
                combo(ui, "lr schedule", &mut form.lr_schedule);
                text(ui, "lr warmup steps", &mut form.lr_warmup_steps, "steps");
                text(
                    ui,
                    "steps",
                    &mut form.total_training_steps,
                    "training steps in total",
                );
                text(ui, "batch size", &mut form.batch_size, "tokens per step");
                text(
                    ui,
                    "context size",
                    &mut form.context_size,
                    "tokens per window",
                );
                combo(ui, "normalisation", &mut form.normalization);
                combo(ui, "device", &mut form.device);
                text(
                    ui,
                    "run directory",
                    &mut form.out_dir,
                    "checkpoints, metrics.jsonl, sae/, dashboards",
                );
            });
        ui.checkbox(
            &mut form.build_dashboards,
            "build dashboards when training ends",
        );
        let out = std::path::Path::new(form.out_dir.trim());
        if out.join("metrics.jsonl").exists() || out.join("checkpoints").exists() {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!(
                    "{} holds a run: Start replaces it (its checkpoints, metrics and \
                     dashboards); Resume… continues it",
                    out.display()
                ),
            );
        }
        if let Some(dir) = form.cache_dir() {
            use crate::data::store::{HarvestState, read_cache_meta};
            match (read_cache_meta(&dir), HarvestState::read(&dir)) {
                (Ok(meta), _) => {
                    let batch = form.batch_size.trim().parse().ok();
                    ui.label(cache_summary(&dir, &meta, batch));
                }
                (Err(_), Some(stopped)) => {
                    let holds = stopped.describe();
                    ui.label(format!(
                        "{} holds {holds}: {STOPPED_HARVEST}",
                        dir.display()
                    ));
                }
                _ => {}
            }
        }
        for (label, message) in errors.iter().filter(|(l, _)| *l == "config") {
            ui.colored_label(ui.visuals().error_fg_color, format!("{label}: {message}"));
        }
        ui.horizontal(|ui| {
            if ui.button("Start").clicked() {
                action = Some(FormAction::Start);
            }
            if ui
                .button("Resume…")
                .on_hover_text("continue a run from its latest checkpoint (pick its directory)")
                .clicked()
            {
                action = Some(FormAction::Resume);
            }
            if ui
                .button("Harvest")
                .on_hover_text(
                    "write the activations this run reads (steps x batch size tokens) into \
                     the activation cache directory: runs from it skip the LM's forward \
                     (a sweep harvests once)",
                )
                .clicked()
            {
                action = Some(FormAction::Harvest);
            }
            if ui.button("Reset to defaults").clicked() {
                *form = TrainForm::default();
            }
        });
    });
    action
}

/// A running job's status as the Train view shows it.
#[derive(Debug, Clone, Default)]
pub struct JobStatus {
    pub phase: String,
    pub device: String,
    pub step: usize,
    pub total_steps: usize,
    pub batch_size: usize,
    pub steps_per_s: f64,
    /// `(done, total)` of a counted phase (dashboards, a harvest).
    pub counted: Option<(usize, usize)>,
    /// When the counted phase first reported, and what was done then (for its rate and
    /// time left).
    pub counted_since: Option<(std::time::Instant, usize)>,
    pub running: bool,
    pub stopping: bool,
    /// A harvest, not a training run: Stop keeps nothing.
    pub harvest: bool,
}

impl JobStatus {
    /// Records a counted phase's progress.
    pub fn count(&mut self, phase: String, done: usize, total: usize) {
        // A new counted phase (a phase without a count clears `counted`).
        if self.counted.is_none() || self.phase != phase {
            self.counted_since = Some((std::time::Instant::now(), done));
        }
        self.phase = phase;
        self.counted = Some((done, total));
    }
}

/// `ETA m:ss` for `left` units at `per_s`.
fn eta(left: f64, per_s: f64) -> String {
    if per_s > 0.0 {
        let secs = left / per_s;
        format!("ETA {}:{:02}", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        "ETA -".into()
    }
}

/// Phase, progress bar, tokens/s and ETA.
pub fn progress_ui(ui: &mut egui::Ui, s: &JobStatus) {
    ui.horizontal(|ui| {
        if s.running {
            // Not egui's spinner, which repaints every frame: a job's status repaints a
            // few times a second (`native_logic`), and on a software renderer the
            // spinner's frames took cores from the job.
            let turn = ui.input(|i| i.time * 4.0) as usize % 4;
            ui.label(egui::RichText::new(["|", "/", "-", "\\"][turn]).monospace());
        }
        ui.label(egui::RichText::new(&s.phase).strong());
        if s.stopping {
            ui.label(match s.harvest {
                true => "(stopping after this forward; Harvest again goes on from the last shard)",
                false => "(stopping after this step, with a checkpoint)",
            });
        }
    });
    if !s.device.is_empty() {
        ui.label(&s.device);
    }
    if let Some((done, total)) = s.counted {
        let f = done as f32 / total.max(1) as f32;
        // A harvest counts tokens; the rate once a second has passed.
        let rate = (s.counted_since.as_ref())
            .map(|(at, from)| (done.saturating_sub(*from), at.elapsed().as_secs_f64()))
            .filter(|&(n, secs)| n > 0 && secs >= 1.0)
            .map(|(n, secs)| n as f64 / secs);
        let left = (total - done.min(total)) as f64;
        let text = match (rate, s.harvest) {
            (Some(r), true) => format!(
                "{done} / {total} tokens · {r:.0} tokens/s · {}",
                eta(left, r)
            ),
            (Some(r), false) => format!("{done} / {total} · {}", eta(left, r)),
            (None, _) => format!("{done} / {total}"),
        };
        ui.add(egui::ProgressBar::new(f).text(text));
    } else if s.total_steps > 0 {
        let f = s.step as f32 / s.total_steps as f32;
        let tokens_per_s = s.steps_per_s * s.batch_size as f64;
        let left = (s.total_steps - s.step.min(s.total_steps)) as f64;
        let eta = eta(left, s.steps_per_s);
        ui.add(egui::ProgressBar::new(f).text(format!(
            "step {} / {} · {:.0} tokens/s · {eta}",
            s.step, s.total_steps, tokens_per_s
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AuxK field: empty is the default, a number is passed on, and a number for ReLU
    /// is refused by the config's check; a ReLU run's form leaves it empty.
    #[test]
    fn aux_k_field() {
        let mut form = TrainForm {
            architecture: ArchitectureKind::Topk,
            ..TrainForm::default()
        };
        assert_eq!(form.aux_k_coefficient, "");
        assert_eq!(form.to_args().unwrap().aux_k_coefficient, None);
        form.aux_k_coefficient = "0".into();
        assert_eq!(form.to_args().unwrap().aux_k_coefficient, Some(0.0));
        form.aux_k_coefficient = "x".into();
        let errors = form.to_args().unwrap_err();
        assert_eq!(errors[0].0, "AuxK coefficient");
        let relu = TrainForm {
            aux_k_coefficient: "0.5".into(),
            ..TrainForm::default()
        };
        let args = relu.to_args().unwrap();
        let err = args
            .resolve(DeviceChoice::Cpu)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("aux_k_coefficient"), "{err}");
        let run = TrainConfig {
            aux_k_coefficient: Some(0.0),
            ..TrainConfig::default()
        };
        assert_eq!(TrainForm::from_config(&run).aux_k_coefficient, "");
    }
}
