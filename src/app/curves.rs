//! The Curves view: a run's training metrics (live from training events, or from
//! `metrics.jsonl` / a dashboard file's history). No burn, threads or files: it compiles for
//! the web viewer too.

use std::collections::BTreeSet;

use eframe::egui;
use egui_plot::{
    Bar, BarChart, GridMark, Heatmap, HoverPosition, Legend, Line, Plot, PlotPoints, Points,
};

use crate::run_log::{EvalMetrics, History, StepMetrics};

/// A run's metrics as the Curves view shows them.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub history: History,
    /// The latest feature-density histogram `(step, [(log10 density, count)])`.
    pub density: Option<(usize, Vec<(f64, usize)>)>,
}

impl Curves {
    pub fn from_history(history: History) -> Self {
        Self {
            history,
            density: None,
        }
    }

    pub fn push_step(&mut self, s: StepMetrics) {
        // A resumed run replays from its checkpoint: drop what it overwrites.
        self.history.steps.retain(|old| old.step < s.step);
        self.history.steps.push(s);
    }

    pub fn push_eval(&mut self, e: EvalMetrics) {
        self.history.evals.retain(|old| old.step < e.step);
        self.history.evals.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.history.steps.is_empty() && self.history.evals.is_empty()
    }

    fn n_heads(&self) -> usize {
        let from_steps = self.history.steps.last().map(|s| s.l0_per_head.len());
        let from_evals = self.history.evals.last().map(|e| e.per_head.len());
        from_steps.or(from_evals).unwrap_or(0)
    }
}

/// A per-head metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum HeadMetric {
    #[default]
    L0,
    ExplainedVariance,
    Dead,
    CeScore,
}

impl HeadMetric {
    const ALL: [Self; 4] = [Self::L0, Self::ExplainedVariance, Self::Dead, Self::CeScore];

    fn name(self) -> &'static str {
        match self {
            Self::L0 => "L0",
            Self::ExplainedVariance => "explained variance",
            Self::Dead => "dead features",
            Self::CeScore => "CE loss score",
        }
    }

    /// `(step, value per head)` over the run.
    fn series(self, h: &History) -> Vec<(f64, Vec<f64>)> {
        let steps = |f: fn(&StepMetrics) -> Vec<f64>| -> Vec<(f64, Vec<f64>)> {
            h.steps.iter().map(|s| (s.step as f64, f(s))).collect()
        };
        match self {
            Self::L0 => steps(|s| s.l0_per_head.clone()),
            Self::ExplainedVariance => steps(|s| s.explained_variance_per_head.clone()),
            Self::Dead => steps(|s| s.dead_per_head.iter().map(|&d| d as f64).collect()),
            Self::CeScore => h
                .evals
                .iter()
                .map(|e| {
                    (
                        e.step as f64,
                        e.per_head.iter().map(|x| x.ce_score).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// Toggles of the Curves view (persisted).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CurvesState {
    pub log_loss: bool,
    pub head_metric: HeadMetric,
    pub heatmap: bool,
    pub hidden_heads: BTreeSet<usize>,
}

/// One line of a plot.
struct Series {
    name: &'static str,
    points: Vec<[f64; 2]>,
}

fn step_series(h: &History, name: &'static str, f: fn(&StepMetrics) -> f64) -> Series {
    Series {
        name,
        points: h.steps.iter().map(|s| [s.step as f64, f(s)]).collect(),
    }
}

fn eval_series(h: &History, name: &'static str, f: fn(&EvalMetrics) -> f64) -> Series {
    Series {
        name,
        points: h.evals.iter().map(|e| [e.step as f64, f(e)]).collect(),
    }
}

const PLOT_HEIGHT: f32 = 170.0;

fn x_link() -> egui::Id {
    egui::Id::unique("curves_x")
}

/// Series colours (the same for a series' line and its points).
const COLORS: [egui::Color32; 4] = [
    egui::Color32::from_rgb(86, 156, 214),
    egui::Color32::from_rgb(230, 145, 56),
    egui::Color32::from_rgb(106, 190, 120),
    egui::Color32::from_rgb(200, 100, 180),
];

/// A small plot of `series` against the step (x from 0 to `last_step`, linked with the
/// others; y from 0 unless `log`). With `log`, values are plotted as log10 and the axis
/// labels say the values. Series of few points (evals) show their points.
fn plot(ui: &mut egui::Ui, title: &str, series: Vec<Series>, last_step: f64, log: bool) {
    ui.label(egui::RichText::new(title).strong());
    let mut p = Plot::new(title)
        .height(PLOT_HEIGHT)
        .link_axis(x_link(), [true, false])
        .link_cursor(x_link(), [true, false])
        .include_x(0.0)
        .include_x(last_step)
        .y_axis_min_width(44.0)
        // Powers of 5: labels stay on short plots whose range spans a few tens.
        .y_grid_spacer(egui_plot::log_grid_spacer(5))
        .x_axis_label("step")
        .allow_scroll(false);
    if series.len() > 1 {
        p = p.legend(Legend::default());
    }
    if log {
        p = p
            .y_axis_formatter(|mark, _| format!("{:.3}", 10f64.powf(mark.value)))
            .label_formatter(|hover| {
                let (name, p) = match hover {
                    HoverPosition::NearDataPoint {
                        plot_name,
                        position,
                        ..
                    } => (*plot_name, position),
                    HoverPosition::Elsewhere { position } => ("", position),
                };
                Some(format!("{name}\nstep {:.0}\n{:.4}", p.x, 10f64.powf(p.y)))
            });
    } else {
        p = p.include_y(0.0);
    }
    p.show(ui, |plot| {
        for (i, s) in series.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<[f64; 2]> = s
                .points
                .into_iter()
                .filter(|p| p[1].is_finite() && (!log || p[1] > 0.0))
                .map(|[x, y]| [x, if log { y.log10() } else { y }])
                .collect();
            if points.len() <= 16 {
                plot.points(
                    Points::new(s.name, PlotPoints::new(points.clone()))
                        .radius(3.0)
                        .color(color),
                );
            }
            plot.line(Line::new(s.name, PlotPoints::new(points)).color(color));
        }
    });
}

/// The Curves view.
pub fn curves_ui(ui: &mut egui::Ui, curves: &Curves, s: &mut CurvesState) {
    if curves.is_empty() {
        ui.label(
            "No training metrics yet: start a run, or open a run directory or a dashboard file.",
        );
        return;
    }
    let h = &curves.history;
    summary(ui, h);
    ui.checkbox(&mut s.log_loss, "log scale for losses");
    egui::ScrollArea::vertical().show(ui, |ui| {
        let last_step = h
            .steps
            .last()
            .map(|m| m.step)
            .max(h.evals.last().map(|e| e.step))
            .unwrap_or(0) as f64;
        ui.columns(2, |cols| {
            let log = s.log_loss;
            plot(
                &mut cols[0],
                "Loss",
                vec![
                    step_series(h, "loss", |m| m.loss),
                    step_series(h, "MSE", |m| m.mse),
                    step_series(h, "sparsity term", |m| m.sparsity_loss),
                ],
                last_step,
                log,
            );
            plot(
                &mut cols[1],
                "L0 (all heads)",
                vec![step_series(h, "L0", |m| m.l0)],
                last_step,
                false,
            );
            plot(
                &mut cols[0],
                "Explained variance",
                vec![step_series(h, "EV", |m| m.explained_variance)],
                last_step,
                false,
            );
            plot(
                &mut cols[1],
                "Dead features",
                vec![step_series(h, "dead", |m| m.dead_features as f64)],
                last_step,
                false,
            );
            plot(
                &mut cols[0],
                "Learning rate",
                vec![step_series(h, "lr", |m| m.lr)],
                last_step,
                false,
            );
            plot(
                &mut cols[1],
                "Sparsity coefficient",
                vec![step_series(h, "coefficient", |m| m.l1_coefficient)],
                last_step,
                false,
            );
            plot(
                &mut cols[0],
                "CE loss (evals)",
                vec![
                    eval_series(h, "clean", |e| e.ce_clean),
                    eval_series(h, "SAE spliced in", |e| e.ce_sae),
                    eval_series(h, "zero ablation", |e| e.ce_zero),
                ],
                last_step,
                log,
            );
            plot(
                &mut cols[1],
                "CE loss score (evals)",
                vec![eval_series(h, "score", |e| e.ce_score)],
                last_step,
                false,
            );
            plot(
                &mut cols[0],
                "Steps per second",
                vec![step_series(h, "steps/s", |m| m.steps_per_s)],
                last_step,
                false,
            );
            density(&mut cols[1], curves.density.as_ref());
        });
        ui.separator();
        per_head(ui, curves, s);
    });
}

/// The latest values, as text.
fn summary(ui: &mut egui::Ui, h: &History) {
    ui.horizontal_wrapped(|ui| {
        if let Some(m) = h.steps.last() {
            ui.label(format!("step {}", m.step));
            ui.label(format!("{} tokens", m.tokens));
            ui.label(format!("loss {:.4}", m.loss));
            ui.label(format!("L0 {:.1}", m.l0));
            ui.label(format!("EV {:.3}", m.explained_variance));
            ui.label(format!("dead {}", m.dead_features));
        }
        if let Some(e) = h.evals.last() {
            ui.label(format!("CE loss score {:.3}", e.ce_score));
        }
    });
}

fn density(ui: &mut egui::Ui, latest: Option<&(usize, Vec<(f64, usize)>)>) {
    match latest {
        Some((step, hist)) => {
            ui.label(egui::RichText::new(format!("Feature density (step {step})")).strong());
            let bars = hist
                .iter()
                .map(|&(x, n)| Bar::new(x, n as f64).width(0.2))
                .collect();
            Plot::new("density")
                .height(PLOT_HEIGHT)
                .x_axis_label("log10 density")
                .allow_scroll(false)
                .show(ui, |p| p.bar_chart(BarChart::new("features", bars)));
        }
        None => {
            ui.label(egui::RichText::new("Feature density").strong());
            ui.label("(shown once training reports it)");
        }
    }
}

/// The per-head metric: one line per head (toggle heads) or a heads x time heatmap.
fn per_head(ui: &mut egui::Ui, curves: &Curves, s: &mut CurvesState) {
    let n_heads = curves.n_heads();
    ui.horizontal(|ui| {
        let label = ui.label(egui::RichText::new("Per head").strong()).id;
        egui::ComboBox::from_id_salt("head_metric")
            .selected_text(s.head_metric.name())
            .show_ui(ui, |ui| {
                for m in HeadMetric::ALL {
                    ui.selectable_value(&mut s.head_metric, m, m.name());
                }
            })
            .response
            .labelled_by(label);
        ui.checkbox(&mut s.heatmap, "heatmap");
    });
    if !s.heatmap {
        ui.horizontal_wrapped(|ui| {
            for head in 0..n_heads {
                let mut shown = !s.hidden_heads.contains(&head);
                if ui.checkbox(&mut shown, format!("h{head}")).changed() {
                    if shown {
                        s.hidden_heads.remove(&head);
                    } else {
                        s.hidden_heads.insert(head);
                    }
                }
            }
        });
    }
    let series = s.head_metric.series(&curves.history);
    if series.is_empty() {
        ui.label(format!("no {} recorded yet", s.head_metric.name()));
        return;
    }
    if s.heatmap {
        heatmap(ui, &series, n_heads);
        return;
    }
    Plot::new("per_head")
        .height(PLOT_HEIGHT * 1.6)
        .link_axis(x_link(), [true, false])
        .x_axis_label("step")
        .legend(Legend::default())
        .allow_scroll(false)
        .show(ui, |p| {
            for head in (0..n_heads).filter(|h| !s.hidden_heads.contains(h)) {
                let points: Vec<[f64; 2]> = series
                    .iter()
                    .filter_map(|(x, v)| v.get(head).map(|y| [*x, *y]))
                    .collect();
                p.line(Line::new(format!("h{head}"), PlotPoints::new(points)));
            }
        });
}

/// Heads (rows, h0 at the bottom) x time (columns, at most 120, the series subsampled);
/// axis labels name the heads and the columns' steps.
fn heatmap(ui: &mut egui::Ui, series: &[(f64, Vec<f64>)], n_heads: usize) {
    let cols = series.len().min(120);
    let picked: Vec<&(f64, Vec<f64>)> = (0..cols)
        .map(|c| &series[c * (series.len() - 1) / (cols - 1).max(1)])
        .collect();
    let mut values = Vec::with_capacity(cols * n_heads);
    for head in 0..n_heads {
        values.extend(
            picked
                .iter()
                .map(|(_, v)| v.get(head).copied().unwrap_or(f64::NAN)),
        );
    }
    let steps: Vec<f64> = picked.iter().map(|(x, _)| *x).collect();
    ui.label(format!(
        "one row per head: h0 at the bottom, h{} at the top; hover a tile for its value",
        n_heads.saturating_sub(1)
    ));
    Plot::new("per_head_heatmap")
        .height((n_heads as f32 * 22.0).clamp(120.0, 420.0))
        .allow_scroll(false)
        .y_axis_min_width(44.0)
        .y_grid_spacer(move |_| {
            (0..n_heads)
                .map(|h| GridMark {
                    value: h as f64 + 0.5,
                    step_size: 1.0,
                })
                .collect()
        })
        .y_axis_formatter(|mark, _| format!("h{}", mark.value.floor() as usize))
        .x_axis_formatter(move |mark, _| {
            let c = mark.value.floor();
            match steps.get(c as usize) {
                Some(step) if c >= 0.0 && mark.value == c => format!("{step:.0}"),
                _ => String::new(),
            }
        })
        .x_axis_label("step")
        .show(ui, |p| {
            p.heatmap(Heatmap::new(values, cols).show_labels(false))
        });
}
