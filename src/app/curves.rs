//! The Curves view: a run's training metrics (live from training events, or from
//! `metrics.jsonl` / a dashboard file's history). No burn, threads or files: it compiles for
//! the web viewer too.

use std::collections::BTreeSet;

use eframe::egui;
use egui_plot::{
    Bar, BarChart, GridMark, Heatmap, HoverPosition, Legend, Line, LineStyle, Plot, PlotPoints,
    Points,
};

use crate::run_log::{EvalMetrics, History, StepMetrics, last_score_difference};

/// A run's metrics as the Curves view shows them.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    /// The run's name (its directory's or dashboard file's), for the runs table.
    pub name: String,
    pub history: History,
    /// The latest feature-density histogram `(step, [(log10 density, count)])`.
    pub density: Option<(usize, Vec<(f64, usize)>)>,
}

impl Curves {
    pub fn from_history(name: impl Into<String>, history: History) -> Self {
        Self {
            name: name.into(),
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

/// Another run's metrics, drawn beside the open run's to compare (dashed lines, and a row
/// of the runs table).
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    /// The run directory's or dashboard file's name.
    pub name: String,
    pub history: History,
    /// Its SAE's decoder rows, when its dashboard file holds them: the Features view then
    /// lists the features of the same head closest to the selected one in it.
    pub sae: Option<ComparedSae>,
    /// Where it can be opened from: its closest features are then links that open it.
    pub source: Option<ComparedSource>,
}

/// Whether a run with `history` and `sae` (its decoder rows, if any) has anything to
/// compare: training metrics, or features; else why not, naming it `name`.
pub fn comparable(name: &str, history: &History, sae: Option<&ComparedSae>) -> Result<(), String> {
    match history.steps.is_empty() && history.evals.is_empty() && sae.is_none() {
        true => Err(format!("{name}: no training metrics to compare")),
        false => Ok(()),
    }
}

/// Where a compared run can be opened from.
#[derive(Debug, Clone, PartialEq)]
pub enum ComparedSource {
    /// The run directory or dashboard file it was read from (the desktop).
    Path(std::path::PathBuf),
    /// Its dashboard, kept by the app under the run's name (the page, which has no path).
    Kept,
}

/// A compared run's SAE as its dashboard file records it: what it was trained on, and each
/// head's decoder rows (`[features_per_head, d_head]`, flat; as the SAELens export has
/// them).
#[derive(Debug, Clone, PartialEq)]
pub struct ComparedSae {
    /// The model's name as a page would show it ([`crate::dashboard::format::published_name`]).
    pub model: String,
    pub hook_layer: usize,
    pub d_head: usize,
    pub decoder: Vec<Vec<f32>>,
    /// Each head's decoder rows' norms (`[features_per_head]` a head), from `decoder`.
    pub norms: Vec<Vec<f32>>,
    /// Its features' labels (shown beside its closest features; none until given).
    pub labels: crate::dashboard::labels::Labels,
}

impl ComparedSae {
    /// The SAE of a dashboard file, if it holds decoder rows (an older file does not).
    pub fn of(
        file: &crate::dashboard::format::OwnedDashboardFile,
    ) -> Result<Option<Self>, crate::dashboard::format::DashboardError> {
        let decoder = (0..file.n_heads())
            .map(|h| file.decoder(h))
            .collect::<Result<Option<Vec<_>>, _>>()?;
        use crate::dashboard::format::row_norm;
        let d = file.meta.sae.d_head.max(1);
        Ok(decoder.map(|decoder| Self {
            model: crate::dashboard::format::published_name(&file.meta.model.name),
            hook_layer: file.meta.hook_layer,
            d_head: file.meta.sae.d_head,
            norms: (decoder.iter())
                .map(|rows| rows.chunks_exact(d).map(|r| row_norm(r) as f32).collect())
                .collect(),
            decoder,
            labels: crate::dashboard::labels::Labels::new(&file.meta),
        }))
    }

    /// Its `n` features closest to the feature of block `head` of the SAE `meta` describes,
    /// whose decoder row is `row`, as `((head, feature), cosine)` in its own numbering,
    /// closest first (the lowest `(head, feature)` of equals); `None` when the SAEs cannot
    /// be matched (another model, layer or heads). Two SAEs of the same heads are matched
    /// within the head; a dense SAE and a block-diagonal one over the same heads across
    /// heads, as `attn-saes match` does ([`crate::sae::matching::Across`]): a head's feature
    /// is a direction in its head's part of hook_z.
    pub fn closest(
        &self,
        meta: &crate::dashboard::format::DashboardMeta,
        head: usize,
        row: &[f32],
        n: usize,
    ) -> Option<Vec<((usize, usize), f32)>> {
        use crate::dashboard::format::{cosine_over, row_norm};
        let same_layer = self.model == crate::dashboard::format::published_name(&meta.model.name)
            && self.hook_layer == meta.hook_layer;
        let (ours, theirs) = (
            (meta.sae.n_heads, meta.sae.d_head),
            (self.decoder.len(), self.d_head),
        );
        let dense_over = |(blocks, width): (usize, usize), (heads, d_head): (usize, usize)| {
            crate::dashboard::format::dense_over(blocks, width, heads, d_head)
        };
        if !same_layer || row.len() != ours.1 {
            return None;
        }
        let mut cos: Vec<((usize, usize), f32)> = if ours == theirs {
            let rows = self.decoder.get(head)?;
            let found = crate::dashboard::format::closest_rows(row, rows, None, n);
            return Some(found.into_iter().map(|(f, c)| ((head, f), c)).collect());
        } else if dense_over(ours, theirs) {
            // Our dense row against each head's rows, over that head's part of it.
            let (d, nx) = (theirs.1, row_norm(row));
            (self.decoder.iter().zip(&self.norms).enumerate())
                .flat_map(|(h, (rows, norms))| {
                    let part = &row[h * d..(h + 1) * d];
                    (rows.chunks_exact(d).zip(norms).enumerate())
                        .map(move |(f, (y, &ny))| ((h, f), cosine_over(part, y, nx * ny as f64)))
                })
                .collect()
        } else if dense_over(theirs, ours) {
            // Our head's row against each dense row's part for that head.
            let (d, nx) = (ours.1, row_norm(row));
            let (rows, norms) = (self.decoder.first()?, self.norms.first()?);
            (rows.chunks_exact(theirs.1).zip(norms).enumerate())
                .map(|(f, (y, &ny))| {
                    let part = &y[head * d..(head + 1) * d];
                    ((0, f), cosine_over(row, part, nx * ny as f64))
                })
                .collect()
        } else {
            return None;
        };
        cos.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cos.truncate(n);
        Some(cos)
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
    name: String,
    points: Vec<[f64; 2]>,
    /// Another run's (dashed).
    compared: bool,
    /// Error bars, `[x, low, high]`: the value plus and minus its standard error, where
    /// the plot has them and the run recorded them.
    errors: Vec<[f64; 3]>,
}

/// Where a line's values come from: each logged step, or each eval.
#[derive(Clone, Copy)]
enum Source {
    Step(fn(&StepMetrics) -> f64),
    /// A value some steps have (a line only drawn for runs that log it).
    StepIf(fn(&StepMetrics) -> Option<f64>),
    Eval(fn(&EvalMetrics) -> f64),
}

impl Source {
    fn points(self, h: &History) -> Vec<[f64; 2]> {
        match self {
            Self::Step(f) => h.steps.iter().map(|s| [s.step as f64, f(s)]).collect(),
            Self::StepIf(f) => h
                .steps
                .iter()
                .filter_map(|s| Some([s.step as f64, f(s)?]))
                .collect(),
            Self::Eval(f) => h.evals.iter().map(|e| [e.step as f64, f(e)]).collect(),
        }
    }
}

/// One plot of the view: its lines for the open run, and which of them the compared runs
/// show (one each, so that a plot of several runs stays readable).
struct PlotSpec {
    title: &'static str,
    lines: &'static [(&'static str, Source)],
    compared_line: usize,
    /// Plotted on a log scale when the view's "log scale for losses" is on.
    loss: bool,
    /// The first line's standard error at each eval, drawn as error bars (on its compared
    /// lines too).
    errors: Option<fn(&EvalMetrics) -> Option<f64>>,
}

const PLOTS: [PlotSpec; 9] = [
    PlotSpec {
        title: "Loss",
        lines: &[
            ("loss", Source::Step(|m| m.loss)),
            ("MSE", Source::Step(|m| m.mse)),
            ("sparsity term", Source::Step(|m| m.sparsity_loss)),
            ("AuxK term", Source::StepIf(|m| m.aux_loss)),
        ],
        compared_line: 0,
        loss: true,
        errors: None,
    },
    PlotSpec {
        title: "L0 (all heads)",
        lines: &[("L0", Source::Step(|m| m.l0))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
    PlotSpec {
        title: "Explained variance",
        lines: &[("EV", Source::Step(|m| m.explained_variance))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
    PlotSpec {
        title: "Dead features",
        lines: &[("dead", Source::Step(|m| m.dead_features as f64))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
    PlotSpec {
        title: "Learning rate",
        lines: &[("lr", Source::Step(|m| m.lr))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
    PlotSpec {
        title: "Sparsity coefficient",
        lines: &[("coefficient", Source::Step(|m| m.l1_coefficient))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
    PlotSpec {
        title: "CE loss (evals)",
        lines: &[
            ("clean", Source::Eval(|e| e.ce_clean)),
            ("SAE spliced in", Source::Eval(|e| e.ce_sae)),
            ("zero ablation", Source::Eval(|e| e.ce_zero)),
        ],
        compared_line: 1,
        loss: true,
        errors: None,
    },
    PlotSpec {
        title: "CE loss score (evals)",
        lines: &[("score", Source::Eval(|e| e.ce_score))],
        compared_line: 0,
        loss: false,
        errors: Some(|e| e.ce_score_se),
    },
    PlotSpec {
        title: "Steps per second",
        lines: &[("steps/s", Source::Step(|m| m.steps_per_s))],
        compared_line: 0,
        loss: false,
        errors: None,
    },
];

impl PlotSpec {
    /// The open run's lines, then the compared line of each compared run, named
    /// `line · run`.
    fn series(&self, h: &History, compared: &[Compared]) -> Vec<Series> {
        let errors = |h: &History, line: usize| -> Vec<[f64; 3]> {
            let (Some(se), Source::Eval(value)) = (self.errors, self.lines[line].1) else {
                return Vec::new();
            };
            (h.evals.iter())
                .filter_map(|e| Some((e.step as f64, value(e), se(e)?)))
                .map(|(x, y, se)| [x, y - se, y + se])
                .collect()
        };
        let own = self
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, &(name, source))| {
                let points = source.points(h);
                let absent = matches!(source, Source::StepIf(_)) && points.is_empty();
                (!absent).then(|| Series {
                    name: name.to_string(),
                    points,
                    compared: false,
                    errors: match i {
                        0 => errors(h, 0),
                        _ => Vec::new(),
                    },
                })
            });
        let (name, source) = self.lines[self.compared_line];
        let others = compared.iter().map(move |c| Series {
            name: format!("{name} · {}", c.name),
            points: source.points(&c.history),
            compared: true,
            errors: match self.compared_line {
                0 => errors(&c.history, 0),
                _ => Vec::new(),
            },
        });
        own.chain(others).collect()
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

/// Compared runs' colours, by run (the same in every plot and the runs table): light ones
/// on the dark theme, darker ones of the same hues on the light theme.
fn compared_color(ui: &egui::Ui, run: usize) -> egui::Color32 {
    const DARK_THEME: [(u8, u8, u8); 6] = [
        (235, 200, 80),
        (120, 210, 220),
        (240, 110, 110),
        (170, 150, 240),
        (180, 180, 180),
        (150, 220, 120),
    ];
    const LIGHT_THEME: [(u8, u8, u8); 6] = [
        (160, 120, 0),
        (0, 130, 140),
        (190, 40, 40),
        (110, 70, 200),
        (100, 100, 100),
        (50, 130, 40),
    ];
    let palette = if ui.visuals().dark_mode {
        DARK_THEME
    } else {
        LIGHT_THEME
    };
    let (r, g, b) = palette[run % palette.len()];
    egui::Color32::from_rgb(r, g, b)
}

/// A small plot of `series` against the step (x from 0 to `last_step`, linked with the
/// others; y from 0 unless `log` or not `from_zero`). With `log`, values are plotted as log10 and the axis
/// labels say the values. Series of few points (evals) show their points.
fn plot(
    ui: &mut egui::Ui,
    title: &str,
    series: Vec<Series>,
    last_step: f64,
    (log, from_zero): (bool, bool),
) {
    ui.label(egui::RichText::new(title).strong());
    let mut p = Plot::new(title)
        .height(PLOT_HEIGHT)
        .link_axis(x_link(), [true, false])
        .link_cursor(x_link(), [true, false])
        .include_x(0.0)
        .include_x(last_step)
        .y_axis_min_width(44.0)
        // Powers of 5: labels stay on short plots whose range spans a few tens; a range
        // not from 0 (the score's, a few hundredths) in powers of 10, whose marks two
        // decimals name apart (0.008 apart, 0.984 and 0.976 both showed as 0.98).
        .y_grid_spacer(egui_plot::log_grid_spacer(if from_zero { 5 } else { 10 }))
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
    } else if from_zero {
        p = p.include_y(0.0);
    }
    let compared: Vec<egui::Color32> = (0..series.len()).map(|i| compared_color(ui, i)).collect();
    p.show(ui, |plot| {
        let (mut own, mut other) = (0, 0);
        for s in series {
            let color = if s.compared {
                other += 1;
                compared[other - 1]
            } else {
                own += 1;
                COLORS[(own - 1) % COLORS.len()]
            };
            let points: Vec<[f64; 2]> = s
                .points
                .into_iter()
                .filter(|p| p[1].is_finite() && (!log || p[1] > 0.0))
                .map(|[x, y]| [x, if log { y.log10() } else { y }])
                .collect();
            if points.len() <= 16 {
                plot.points(
                    Points::new(s.name.as_str(), PlotPoints::new(points.clone()))
                        .radius(3.0)
                        .color(color),
                );
            }
            let mut line = Line::new(s.name.as_str(), PlotPoints::new(points)).color(color);
            if s.compared {
                line = line.style(LineStyle::dashed_dense());
            }
            plot.line(line);
            // Error bars: a vertical stroke with short caps, under the series' name (one
            // legend entry).
            if !log {
                let cap = last_step.max(1.0) / 150.0;
                for &[x, low, high] in s.errors.iter().filter(|e| e.iter().all(|v| v.is_finite())) {
                    plot.line(error_bar(&s.name, [x, low, high], cap).color(color));
                }
            }
        }
    });
}

/// An error bar from `low` to `high` at `x`, with caps `cap` wide each side: a thin line
/// named `name` (so under that series' legend entry).
fn error_bar<'a>(name: &str, [x, low, high]: [f64; 3], cap: f64) -> Line<'a> {
    let bar = vec![
        [x - cap, low],
        [x + cap, low],
        [x, low],
        [x, high],
        [x - cap, high],
        [x + cap, high],
    ];
    Line::new(name, PlotPoints::new(bar)).width(1.0)
}

/// One run's point on the sparsity-fidelity plots: its last step's L0 and explained
/// variance, and its last evaluation's CE loss score with its standard error.
#[derive(Debug, Clone, PartialEq)]
struct Tradeoff {
    name: String,
    /// The compared run's index; `None` for the open run.
    compared: Option<usize>,
    l0: f64,
    explained_variance: f64,
    /// The score and its standard error (where recorded), if the run was evaluated.
    score: Option<(f64, Option<f64>)>,
}

/// The open run's point (named `own`) and each compared run's; runs without a logged step
/// have none.
fn tradeoffs(own: &str, h: &History, compared: &[Compared]) -> Vec<Tradeoff> {
    let point = |name: &str, h: &History, compared| {
        let m = h.steps.last()?;
        Some(Tradeoff {
            name: name.to_string(),
            compared,
            l0: m.l0,
            explained_variance: m.explained_variance,
            score: h.evals.last().map(|e| (e.ce_score, e.ce_score_se)),
        })
    };
    let others =
        (compared.iter().enumerate()).filter_map(|(i, c)| point(&c.name, &c.history, Some(i)));
    point(own, h, None).into_iter().chain(others).collect()
}

/// The smallest and largest of the finite values, if any.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    (values.filter(|v| v.is_finite())).fold(None, |range, v| {
        Some(range.map_or((v, v), |(low, high): (f64, f64)| (low.min(v), high.max(v))))
    })
}

/// Two plots of each run's last values against its L0, a point a run in its colour: the
/// CE loss score (with its error bar) and the explained variance. A sweep's runs trace
/// the trade-off between sparsity and fidelity.
fn tradeoff_plots(ui: &mut egui::Ui, points: &[Tradeoff]) {
    let color =
        |ui: &egui::Ui, t: &Tradeoff| t.compared.map_or(COLORS[0], |i| compared_color(ui, i));
    let Some((low, high)) = finite_range(points.iter().map(|t| t.l0)) else {
        return;
    };
    let cap = (high - low).max(1.0) / 100.0;
    ui.columns(2, |cols| {
        for (col, (title, value)) in cols.iter_mut().zip([
            (
                "CE loss score against L0 (each run's last)",
                (|t: &Tradeoff| t.score.map(|s| s.0)) as fn(&Tradeoff) -> Option<f64>,
            ),
            (
                "Explained variance against L0 (each run's last)",
                |t: &Tradeoff| Some(t.explained_variance),
            ),
        ]) {
            col.label(egui::RichText::new(title).strong());
            let colors: Vec<egui::Color32> = points.iter().map(|t| color(col, t)).collect();
            // Room around the points (and error bars), so none sits on an edge. No legend:
            // the runs table above names each run in its colour (and hovering a point).
            let se = |t: &Tradeoff| {
                t.score
                    .and_then(|s| s.1)
                    .filter(|se| se.is_finite() && title.starts_with("CE"))
            };
            let spread = points.iter().filter_map(se).fold(0.0, f64::max);
            let x_pad = (high - low).max(1.0) / 12.0;
            let mut plot = Plot::new(title)
                .height(PLOT_HEIGHT)
                .include_x(low - x_pad)
                .include_x(high + x_pad);
            // None where no run has a value (the score, where none was evaluated).
            if let Some((y_low, y_high)) = finite_range(points.iter().filter_map(value)) {
                let y_pad = (y_high - y_low + 2.0 * spread).max(1e-3) / 8.0 + spread;
                plot = plot.include_y(y_low - y_pad).include_y(y_high + y_pad);
            }
            plot.x_axis_label("L0 (last step)")
                .y_axis_min_width(44.0)
                .y_grid_spacer(egui_plot::log_grid_spacer(10))
                .allow_scroll(false)
                .label_formatter(|hover| match hover {
                    HoverPosition::NearDataPoint {
                        plot_name,
                        position,
                        ..
                    } => Some(format!(
                        "{plot_name}\nL0 {:.1}\n{:.4}",
                        position.x, position.y
                    )),
                    HoverPosition::Elsewhere { .. } => None,
                })
                .show(col, |plot| {
                    for (t, &color) in points.iter().zip(&colors) {
                        let Some(y) = value(t).filter(|y| y.is_finite()) else {
                            continue;
                        };
                        plot.points(
                            Points::new(t.name.as_str(), PlotPoints::new(vec![[t.l0, y]]))
                                .radius(4.0)
                                .color(color),
                        );
                        // The score's error bar, under the run's name.
                        if let Some(se) = se(t) {
                            plot.line(error_bar(&t.name, [t.l0, y - se, y + se], cap).color(color));
                        }
                    }
                });
        }
    });
}

/// What the Curves view asks the app to do.
pub enum CurvesAction {
    /// Stop comparing with the compared run at this index.
    Uncompare(usize),
}

/// The Curves view: the open run's metrics, and `compared` runs' beside them.
pub fn curves_ui(
    ui: &mut egui::Ui,
    curves: &Curves,
    compared: &[Compared],
    s: &mut CurvesState,
) -> Option<CurvesAction> {
    if curves.is_empty() {
        ui.label(
            "No training metrics yet: start a run, or open a run directory or a dashboard file.",
        );
        return None;
    }
    let h = &curves.history;
    let mut action = None;
    if compared.is_empty() {
        summary(ui, h);
    } else {
        action = runs_table(ui, curves, compared);
    }
    ui.checkbox(&mut s.log_loss, "log scale for losses");
    egui::ScrollArea::vertical().show(ui, |ui| {
        // Comparing, each run's last values against its L0: a sweep's trade-off (where two
        // runs at least logged steps: a dashboard of an imported SAE has none).
        let points = tradeoffs(&own_name(curves), h, compared);
        if points.len() >= 2 {
            tradeoff_plots(ui, &points);
            ui.separator();
        }
        let last_step = std::iter::once(h)
            .chain(compared.iter().map(|c| &c.history))
            .filter_map(|h| {
                let step = h.steps.last().map(|m| m.step);
                step.max(h.evals.last().map(|e| e.step))
            })
            .max()
            .unwrap_or(0) as f64;
        ui.columns(2, |cols| {
            for (i, spec) in PLOTS.iter().enumerate() {
                let log = spec.loss && s.log_loss;
                let series = spec.series(h, compared);
                // The score's axis fits its values and error bars (about 0.9 to 1.05 for
                // a useful SAE): from 0 they would be a flat line.
                let from_zero = spec.errors.is_none();
                plot(
                    &mut cols[i % 2],
                    spec.title,
                    series,
                    last_step,
                    (log, from_zero),
                );
            }
            density(&mut cols[1], curves.density.as_ref());
        });
        ui.separator();
        per_head(ui, curves, s);
    });
    action
}

/// The open run's name in the runs table and legends.
fn own_name(curves: &Curves) -> String {
    match curves.name.as_str() {
        "" => "open run".to_string(),
        name => name.to_string(),
    }
}

/// The open run and the compared ones, a row each: their latest values, and a button
/// that stops comparing.
fn runs_table(ui: &mut egui::Ui, curves: &Curves, compared: &[Compared]) -> Option<CurvesAction> {
    let h = &curves.history;
    let mut action = None;
    let cell = |ui: &mut egui::Ui, text: String| {
        ui.label(text);
    };
    egui::Grid::new("runs_table")
        .striped(true)
        .spacing([14.0, 2.0])
        .show(ui, |ui| {
            for title in [
                "run",
                "step",
                "tokens",
                "loss",
                "MSE",
                "L0",
                "EV",
                "dead",
                "CE score",
                "vs open run",
                "",
            ] {
                ui.label(egui::RichText::new(title).strong());
            }
            ui.end_row();
            let own = format!("{} (solid)", own_name(curves));
            let rows = std::iter::once((own, h, None)).chain(
                compared
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), &c.history, Some(i))),
            );
            for (name, h, index) in rows {
                match index {
                    Some(i) => {
                        let color = compared_color(ui, i);
                        ui.colored_label(color, format!("{name} (dashed)"));
                    }
                    None => cell(ui, name.clone()),
                }
                match h.steps.last() {
                    Some(m) => {
                        cell(ui, m.step.to_string());
                        cell(ui, m.tokens.to_string());
                        cell(ui, format!("{:.4}", m.loss));
                        cell(ui, format!("{:.4}", m.mse));
                        cell(ui, format!("{:.1}", m.l0));
                        cell(ui, format!("{:.3}", m.explained_variance));
                        cell(ui, m.dead_features.to_string());
                    }
                    None => (0..7).for_each(|_| cell(ui, "-".into())),
                }
                cell(
                    ui,
                    h.evals.last().map_or("-".into(), |e| {
                        let se = e
                            .ce_score_se
                            .map_or(String::new(), |se| format!(" ± {se:.3}"));
                        format!("{:.3}{se}", e.ce_score)
                    }),
                );
                // The score less the open run's, paired window by window.
                match index.map(|_| last_score_difference(&curves.history, h)) {
                    None => cell(ui, String::new()),
                    Some(Ok(d)) => {
                        let mut hover = format!(
                            "paired over the same {} windows: the standard error of the \
                             difference, smaller than either score's where the windows vary \
                             alike",
                            d.windows
                        );
                        for (i, x) in d.per_head.iter().flatten().enumerate() {
                            if i == 0 {
                                hover += "\nper head (the SAE spliced into that head's part of hook_z alone):";
                            }
                            let line = format!("\nh{i} {:+.3} ± {:.3}", x.difference, x.se);
                            hover += &line;
                        }
                        ui.label(format!("{:+.3} ± {:.3}", d.difference, d.se))
                            .on_hover_text(hover);
                    }
                    Some(Err(why)) => {
                        ui.label("-").on_hover_text(format!("not paired: {why}"));
                    }
                }
                match index {
                    Some(i) => {
                        let remove = ui
                            .small_button("×")
                            .on_hover_text("stop comparing with this run")
                            .accessible_name(format!("stop comparing with {name}"));
                        if remove.clicked() {
                            action = Some(CurvesAction::Uncompare(i));
                        }
                    }
                    None => cell(ui, String::new()),
                }
                ui.end_row();
            }
        });
    action
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
            let spread = e.score_spread(3).replace("+-", "\u{b1}");
            ui.label(format!("CE loss score {:.3}{spread}", e.ce_score));
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

/// The lines of a per-head metric whose series hold `n` values a point: `h0`, `h1`, ...,
/// or, for a dense SAE's one block (one value where its evaluations have one per model
/// head), `all heads`.
fn line_names(n: usize, dense: bool) -> Vec<String> {
    match (n, dense) {
        (1, true) => vec!["all heads".to_string()],
        _ => (0..n).map(|h| format!("h{h}")).collect(),
    }
}

/// The per-head metric: one line per head (toggle heads) or a heads x time heatmap. A
/// dense SAE has one block but a CE loss score per model head (its reconstruction spliced
/// into that head's part of hook_z alone): its lines are the model heads.
fn per_head(ui: &mut egui::Ui, curves: &Curves, s: &mut CurvesState) {
    let series = s.head_metric.series(&curves.history);
    let n_heads = (series.iter().map(|(_, v)| v.len()).max()).unwrap_or(curves.n_heads());
    let h = &curves.history;
    let dense = crate::run_log::dense_metrics(h.steps.last(), h.evals.last());
    let names = line_names(n_heads, dense);
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
            for (head, name) in names.iter().enumerate() {
                let mut shown = !s.hidden_heads.contains(&head);
                if ui.checkbox(&mut shown, name).changed() {
                    if shown {
                        s.hidden_heads.remove(&head);
                    } else {
                        s.hidden_heads.insert(head);
                    }
                }
            }
        });
    }
    if series.is_empty() {
        ui.label(format!("no {} recorded yet", s.head_metric.name()));
        return;
    }
    if dense && n_heads > 1 {
        ui.label(
            egui::RichText::new(
                "a dense SAE: each head's line is its reconstruction spliced into that head's \
                 part of hook_z alone",
            )
            .weak(),
        );
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
                p.line(Line::new(names[head].clone(), PlotPoints::new(points)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            tokens: step as u64 * 8,
            loss,
            mse: loss / 2.0,
            sparsity_loss: loss / 4.0,
            l0: 3.0,
            l0_per_head: vec![3.0],
            explained_variance: 0.5,
            explained_variance_per_head: vec![0.5],
            l2_ratio: 1.0,
            dead_features: 0,
            dead_per_head: vec![0],
            lr: 1e-3,
            l1_coefficient: 1.0,
            steps_per_s: 10.0,
            aux_loss: None,
        }
    }

    fn eval(step: usize, ce_sae: f64) -> EvalMetrics {
        EvalMetrics {
            step,
            ce_clean: 3.0,
            ce_sae,
            ce_zero: 4.0,
            ce_score: 0.9,
            per_head: vec![],
            ce_score_se: None,
            windows: None,
            window_losses: None,
        }
    }

    #[test]
    fn a_compared_run_adds_one_dashed_line_per_plot_with_its_own_values() {
        let own = History {
            steps: vec![step(1, 9.0), step(2, 8.0)],
            evals: vec![eval(2, 3.5)],
        };
        let other = Compared {
            sae: None,
            source: None,
            name: "runs/b".into(),
            history: History {
                steps: vec![step(1, 7.0), step(2, 6.0), step(3, 5.0)],
                evals: vec![eval(3, 3.25)],
            },
        };
        let loss = PLOTS.iter().find(|p| p.title == "Loss").unwrap();
        let series = loss.series(&own, std::slice::from_ref(&other));
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["loss", "MSE", "sparsity term", "loss · runs/b"]);
        assert!(series[..3].iter().all(|s| !s.compared) && series[3].compared);
        assert_eq!(series[0].points, [[1.0, 9.0], [2.0, 8.0]]);
        assert_eq!(series[3].points, [[1.0, 7.0], [2.0, 6.0], [3.0, 5.0]]);
        // The CE plot compares the loss with the SAE spliced in.
        let ce = PLOTS.iter().find(|p| p.title == "CE loss (evals)").unwrap();
        let series = ce.series(&own, std::slice::from_ref(&other));
        assert_eq!(series[3].name, "SAE spliced in · runs/b");
        assert_eq!(series[3].points, [[3.0, 3.25]]);
        // Without compared runs, the plots are the open run's alone.
        assert_eq!(ce.series(&own, &[]).len(), 3);
        assert!(
            series.iter().all(|s| s.errors.is_empty()),
            "no error bars there"
        );
    }

    /// The sparsity-fidelity plots' points: each run's last step's L0 and EV and last
    /// evaluation's score and error, the open run first; a run without steps has none.
    #[test]
    fn each_run_is_one_point_of_its_last_values_against_its_l0() {
        let at = |s, l0, explained_variance| StepMetrics {
            l0,
            explained_variance,
            ..step(s, 1.0)
        };
        let own = History {
            steps: vec![at(1, 40.0, 0.6), at(2, 30.0, 0.7)],
            evals: vec![eval(1, 3.5), eval(2, 3.25)],
        };
        let compared = |name: &str, history| Compared {
            sae: None,
            source: None,
            name: name.into(),
            history,
        };
        let last = |h: &History| {
            let (m, e) = (h.steps.last().unwrap(), h.evals.last());
            (
                m.l0,
                m.explained_variance,
                e.map(|e| (e.ce_score, e.ce_score_se)),
            )
        };
        let b = History {
            steps: vec![at(1, 90.0, 0.8), at(3, 80.0, 0.85)],
            evals: vec![EvalMetrics {
                ce_score: 0.75,
                ce_score_se: Some(0.125),
                ..eval(3, 3.0)
            }],
        };
        let unevaluated = History {
            evals: vec![],
            ..b.clone()
        };
        let runs = [
            compared("runs/b", b.clone()),
            compared("runs/no-steps", History::default()),
            compared("runs/c", unevaluated.clone()),
        ];
        let points = tradeoffs("runs/a", &own, &runs);
        let got: Vec<_> = points
            .iter()
            .map(|t| (t.name.as_str(), t.compared))
            .collect();
        assert_eq!(
            got,
            [("runs/a", None), ("runs/b", Some(0)), ("runs/c", Some(2))]
        );
        for (t, h) in points.iter().zip([&own, &b, &unevaluated]) {
            assert_eq!((t.l0, t.explained_variance, t.score), last(h), "{}", t.name);
        }
        assert_eq!(points[1].score, Some((0.75, Some(0.125))));
        assert_eq!(points[2].score, None);
        assert_eq!((points[0].l0, points[1].explained_variance), (30.0, 0.85));
        // The plots' ranges: over finite values, none without any.
        let range = |v: &[f64]| finite_range(v.iter().copied());
        assert_eq!(range(&[3.0, f64::NAN, -1.0, 2.0]), Some((-1.0, 3.0)));
        assert_eq!(range(&[f64::INFINITY]), None);
        assert_eq!(range(&[]), None);
    }

    /// The CE loss score's plot has error bars of the score plus and minus its standard
    /// error at each eval that recorded one, for the open run and the compared runs.
    #[test]
    fn the_ce_loss_scores_plot_has_error_bars_where_recorded() {
        let with_se = |step, score, se| EvalMetrics {
            ce_score: score,
            ce_score_se: se,
            ..eval(step, 3.5)
        };
        let own = History {
            steps: vec![step(1, 9.0)],
            evals: vec![with_se(2, 0.9, Some(0.25)), with_se(4, 0.75, None)],
        };
        let other = Compared {
            sae: None,
            source: None,
            name: "runs/b".into(),
            history: History {
                steps: vec![],
                evals: vec![with_se(3, 0.5, Some(0.125))],
            },
        };
        let score = PLOTS
            .iter()
            .find(|p| p.title == "CE loss score (evals)")
            .unwrap();
        let series = score.series(&own, std::slice::from_ref(&other));
        assert_eq!(series[0].points, [[2.0, 0.9], [4.0, 0.75]]);
        assert_eq!(series[0].errors, [[2.0, 0.9 - 0.25, 0.9 + 0.25]]);
        assert_eq!(series[1].errors, [[3.0, 0.375, 0.625]]);
    }
}
