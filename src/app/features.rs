//! The Features view: per-head feature dashboards over a dashboard file.
//!
//! Three panels: the heads overview (per-head L0, EV, dead count, CE score and a density
//! sparkline), the selected head's feature list (sort, filter, search; arrow keys move the
//! selection, `/` focuses the search box), and the selected feature's dashboard in the
//! sae_vis / Neuronpedia layout: activation and logit histograms, logit tables, top
//! examples, direct feature attribution (DFA) by source position for one top example, and
//! the interval groups.
//!
//! Plain egui over [`crate::dashboard::format`]: no threads, no file system, no clocks, so
//! the same code runs natively and on wasm32.

use eframe::egui::{
    self, Color32, CornerRadius, Key, Rect, Response, RichText, ScrollArea, Sense, Shape, Stroke,
    StrokeKind, TextStyle, Ui, pos2, vec2,
};
use egui_plot::{Bar, BarChart, Plot};

use crate::dashboard::format::{
    DashboardError, DashboardMeta, Effects, Example, ExampleGroup, FeatureData, HeadData,
    HeadSummary, OwnedDashboardFile,
};
use crate::dashboard::labels::Labels;
use crate::dashboard::sources::{self, FeatureSources, HeadSources, SourceKind};
use crate::live::{Answer, AskedExamples, AskedSplit, ExamplesEffect};

/// Activations (token backgrounds, histogram bars).
const ACT_COLOR: Color32 = Color32::from_rgb(255, 140, 0);
/// Positive logit effects and attributions.
const POS_COLOR: Color32 = Color32::from_rgb(45, 125, 255);
/// Negative logit effects and attributions.
const NEG_COLOR: Color32 = Color32::from_rgb(235, 65, 65);
/// The context slider's range: tokens each side of the target, up to the whole window.
fn max_crop(file: &OwnedDashboardFile) -> usize {
    file.meta.context_size.max(1)
}
/// Width of a head's density sparkline.
const SPARK_SIZE: egui::Vec2 = vec2(72.0, 16.0);

/// A dashboard file open in the viewer; heads decoded on first use and kept.
pub struct LoadedDashboard {
    pub name: String,
    pub file: OwnedDashboardFile,
    /// Per head: not decoded yet, decoded, or the decode error (shown as text).
    heads: Vec<Option<Result<HeadData, String>>>,
    /// Per decoded head: where each feature reads from, and the head's summary.
    sources: Vec<Option<(Vec<FeatureSources>, HeadSources)>>,
    /// The feature list for the last list settings: filtered, sorted feature indices.
    list: Option<(ListKey, Vec<usize>)>,
    /// The features' labels (the desktop reads them from beside the file; the page from
    /// the server).
    pub labels: Labels,
    /// Whether and how edited labels are kept.
    pub labels_edit: LabelsEdit,
    /// Counts changes to the labels (edits and replacements), for the page to notice them.
    pub labels_version: u64,
    /// Labels edited since they were last saved (the page: downloaded).
    pub labels_unsaved: bool,
}

/// Whether a dashboard's labels can be edited, and where edits go.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LabelsEdit {
    /// Shown only (the desktop, when the labels beside the file could not be read: they
    /// are not written over).
    #[default]
    Shown,
    /// Saved to this file on each edit (the desktop).
    File(std::path::PathBuf),
    /// Kept in memory until the page's Save labels downloads them (the web page).
    Download,
}

/// What the feature list depends on.
#[derive(Clone, PartialEq)]
struct ListKey {
    head: usize,
    sort: SortBy,
    hide_dead: bool,
    reads_from: ReadsFrom,
    writes_to: Option<usize>,
    search: String,
    crop: usize,
}

impl ListKey {
    fn of(s: &FeaturesState) -> Self {
        Self {
            head: s.head,
            sort: s.sort,
            hide_dead: s.hide_dead,
            reads_from: s.reads_from,
            writes_to: s.writes_to,
            search: s.search.clone(),
            // The crop only matters to the search.
            crop: if s.search.is_empty() { 0 } else { s.crop },
        }
    }
}

impl LoadedDashboard {
    pub fn new(name: String, bytes: Vec<u8>) -> Result<Self, DashboardError> {
        let file = OwnedDashboardFile::new(bytes)?;
        let heads = (0..file.n_heads()).map(|_| None).collect();
        let sources = (0..file.n_heads()).map(|_| None).collect();
        let labels = Labels::new(&file.meta);
        Ok(Self {
            name,
            file,
            heads,
            sources,
            list: None,
            labels,
            labels_edit: LabelsEdit::Shown,
            labels_version: 0,
            labels_unsaved: false,
        })
    }

    /// Replaces the labels (the list, which searches them, is rebuilt on the next frame).
    pub fn replace_labels(&mut self, labels: Labels) {
        self.labels = labels;
        self.list = None;
        self.labels_version += 1;
    }

    /// Labels `feature` of `head` (an empty label removes it) and, when that changed
    /// anything, brings the list (which searches labels) up to date on the next frame.
    pub fn set_label(
        &mut self,
        head: usize,
        feature: usize,
        label: &str,
    ) -> Result<bool, crate::dashboard::labels::LabelsError> {
        let changed = self.labels.set(head, feature, label)?;
        if changed {
            self.list = None;
            self.labels_version += 1;
            self.labels_unsaved = true;
        }
        Ok(changed)
    }

    /// One head's features, decoded on first use and kept (errors too).
    pub fn head(&mut self, h: usize) -> Result<&HeadData, String> {
        let file = &self.file;
        match self.heads.get_mut(h) {
            None => Err(format!(
                "head {h} does not exist (the dashboard has {})",
                file.n_heads()
            )),
            Some(slot) => slot
                .get_or_insert_with(|| file.head(h).map_err(|e| e.to_string()))
                .as_ref()
                .map_err(Clone::clone),
        }
    }

    /// One head's features if decoded already.
    pub fn cached_head(&self, h: usize) -> Option<&HeadData> {
        match self.heads.get(h) {
            Some(Some(Ok(head))) => Some(head),
            _ => None,
        }
    }

    /// Decodes the selected head (and where its features read from) and brings the feature
    /// list up to date with `s`.
    fn prepare(&mut self, s: &FeaturesState) {
        let _ = self.head(s.head);
        if let (Some(Some(Ok(head))), Some(slot)) =
            (self.heads.get(s.head), self.sources.get_mut(s.head))
        {
            slot.get_or_insert_with(|| {
                let windows = &self.file.windows;
                let per_feature: Vec<FeatureSources> = head
                    .features
                    .iter()
                    .map(|fd| sources::feature_sources(windows, fd))
                    .collect();
                let summary = HeadSources::of(&per_feature);
                (per_feature, summary)
            });
        }
        let key = ListKey::of(s);
        if self.list.as_ref().is_some_and(|(k, _)| *k == key) {
            return;
        }
        let order = match (self.heads.get(s.head), self.sources.get(s.head)) {
            (Some(Some(Ok(head))), Some(Some((reads, _)))) => {
                feature_order(&self.file, head, reads, &self.labels, s)
            }
            _ => Vec::new(),
        };
        self.list = Some((key, order));
    }

    /// The file, the head (or its error) with where its features read from, and the
    /// feature list, after [`Self::prepare`].
    fn parts(&self, h: usize) -> (&OwnedDashboardFile, Result<Head<'_>, &str>, &[usize]) {
        let head = match (self.heads.get(h), self.sources.get(h)) {
            (Some(Some(Ok(data))), Some(Some((reads, summary)))) => Ok(Head {
                data,
                reads,
                summary,
                effects: self.file.meta.effects.as_ref(),
                dense_heads: self.file.meta.dense_heads(),
            }),
            (Some(Some(Err(e))), _) => Err(e.as_str()),
            _ => Err("head not decoded"),
        };
        let order = self.list.as_ref().map_or(&[][..], |(_, o)| o.as_slice());
        (&self.file, head, order)
    }
}

/// A decoded head as the view draws it.
#[derive(Clone, Copy)]
struct Head<'a> {
    data: &'a HeadData,
    /// Where each feature reads from.
    reads: &'a [FeatureSources],
    summary: &'a HeadSources,
    /// Where the features' effects on the loss were estimated, if they were.
    effects: Option<&'a Effects>,
    /// The model heads of a dense SAE's one block; none for a block-diagonal SAE.
    dense_heads: Option<usize>,
}

/// What the viewer remembers between frames (and sessions).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FeaturesState {
    pub head: usize,
    pub feature: Option<usize>,
    pub sort: SortBy,
    pub hide_dead: bool,
    /// Only features that read mostly from this kind of source.
    pub reads_from: ReadsFrom,
    /// A dense SAE's features that write most to this model head only (the largest share
    /// of their decoder row); none: all. Ignored for a block-diagonal SAE.
    pub writes_to: Option<usize>,
    pub search: String,
    /// Tokens of context shown each side of an example's target.
    pub crop: usize,
    /// Index into the feature's examples: the top example shown in the DFA panel.
    pub example: Option<usize>,
    /// The label being typed, and whose `(head, feature)` it is.
    #[serde(skip)]
    pub label_draft: Option<((usize, usize), String)>,
    /// Scroll the list to the selected feature on the next frame (a selection made from
    /// elsewhere: Your text, `app --feature`, the page's `?feature=`).
    #[serde(skip)]
    pub reveal: bool,
    /// Whether the app can rebuild the open run's dashboards (the desktop, with a run
    /// open and no build running): What wrote what it reads then offers to add itself.
    #[serde(skip)]
    pub can_build: bool,
}

impl Default for FeaturesState {
    fn default() -> Self {
        Self {
            head: 0,
            feature: None,
            sort: SortBy::default(),
            hide_dead: false,
            reads_from: ReadsFrom::Any,
            writes_to: None,
            search: String::new(),
            crop: 12,
            example: None,
            label_draft: None,
            reveal: false,
            can_build: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub enum SortBy {
    #[default]
    Density,
    MaxActivation,
    /// By how much the loss would change without the feature, either way (when the file
    /// has the estimates).
    Effect,
    Index,
}

impl SortBy {
    const ALL: [SortBy; 4] = [
        SortBy::Density,
        SortBy::MaxActivation,
        SortBy::Effect,
        SortBy::Index,
    ];

    fn label(self) -> &'static str {
        match self {
            SortBy::Density => "Density",
            SortBy::MaxActivation => "Max activation",
            SortBy::Effect => "Effect on the loss",
            SortBy::Index => "Index",
        }
    }
}

/// The feature list's filter by where features read from ([`FeatureSources::main`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub enum ReadsFrom {
    #[default]
    Any,
    Kind(SourceKind),
    /// No kind holds a majority of the top examples.
    Mixed,
}

impl ReadsFrom {
    fn all() -> impl Iterator<Item = ReadsFrom> {
        std::iter::once(ReadsFrom::Any)
            .chain(SourceKind::ALL.into_iter().map(ReadsFrom::Kind))
            .chain([ReadsFrom::Mixed])
    }

    fn label(self) -> &'static str {
        match self {
            ReadsFrom::Any => "anywhere",
            ReadsFrom::Kind(k) => k.label(),
            ReadsFrom::Mixed => "mixed",
        }
    }

    /// Whether a feature with this summary passes (one without examples only for `Any`).
    fn admits(self, reads: &FeatureSources) -> bool {
        match self {
            ReadsFrom::Any => true,
            ReadsFrom::Kind(k) => reads.main() == Some(k),
            ReadsFrom::Mixed => reads.examples() > 0 && reads.main().is_none(),
        }
    }
}

/// A short tag for the feature list: where most top examples read from.
fn reads_tag(reads: &FeatureSources) -> &'static str {
    if reads.examples() == 0 {
        return "";
    }
    reads.main().map_or("mixed", SourceKind::short)
}

/// Id of the search box, so the app can focus it when the user presses `/`.
pub fn search_id() -> egui::Id {
    egui::Id::unique("attn_saes.features.search")
}

/// The whole Features view: heads overview, the head's feature list, the feature dashboard.
/// What the Features view asks the app to do.
pub enum FeaturesAction {
    /// Run each of a feature's top examples (`(window, target)`) clean and without it.
    ExamplesEffect {
        head: usize,
        feature: usize,
        examples: Vec<(Vec<u32>, usize)>,
    },
    /// Open Your text with this feature picked; `example` is its strongest example's text
    /// up to its top token (a prompt when Your text has none).
    UseInText {
        head: usize,
        feature: usize,
        example: String,
    },
    /// Label this feature (an empty label removes its label).
    Label {
        head: usize,
        feature: usize,
        label: String,
    },
    /// Open the compared run `name` at this feature, comparing the open run instead.
    OpenCompared {
        name: String,
        head: usize,
        feature: usize,
    },
    /// Rebuild the open run's dashboards with what wrote what each feature reads
    /// (`dashboard --upstream`).
    BuildWithUpstream,
    /// Take each of a feature's top examples (`(window, target)`) apart upstream from its
    /// largest source, as `dashboard --upstream` does (`upstream --top-examples`).
    ExamplesSplit {
        head: usize,
        feature: usize,
        examples: Vec<(Vec<u32>, usize)>,
    },
}

/// Whether the view can ask the model about a feature's top examples (the desktop, with
/// the model and SAE the dashboard was built from, and the page with them loaded), and
/// what it was last given: their effect, and what wrote what the feature reads there.
#[derive(Clone, Copy)]
pub enum ExamplesAsk<'a> {
    Unavailable,
    Ask(Option<&'a AskedExamples>, Option<&'a AskedSplit>),
}

pub fn features_ui(
    ui: &mut Ui,
    d: &mut LoadedDashboard,
    s: &mut FeaturesState,
    ask: ExamplesAsk,
    compared: &[super::curves::Compared],
) -> Option<FeaturesAction> {
    s.head = s.head.min(d.file.n_heads().saturating_sub(1));
    s.crop = s.crop.clamp(1, max_crop(&d.file));
    if !ui.ctx().text_edit_focused() && ui.input(|i| i.key_pressed(Key::Slash)) {
        ui.memory_mut(|m| m.request_focus(search_id()));
    }
    head_keys(ui, s, d.file.n_heads());
    let decoded: Vec<Option<&HeadSources>> = d
        .sources
        .iter()
        .map(|x| x.as_ref().map(|(_, summary)| summary))
        .collect();
    heads_panel(ui, &d.name, &d.file.meta, &decoded, s);
    d.prepare(s);
    let (file, head, order) = d.parts(s.head);
    let labels = (&d.labels, &d.labels_edit);
    let reveal = std::mem::take(&mut s.reveal);
    let mut scroll = if reveal { Scroll::Centre } else { Scroll::No };
    if let Ok(head) = head
        && s.feature.is_none_or(|f| f >= head.data.features.len())
    {
        s.feature = order.first().copied();
        s.example = None;
        scroll = Scroll::IntoView;
    }
    list_panel(ui, head, order, labels.0, s, scroll);
    dashboard_panel(ui, file, head, labels, s, (ask, compared))
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn is_dead(f: &FeatureData) -> bool {
    !(f.density > 0.0 && f.max_activation > 0.0)
}

fn select_feature(s: &mut FeaturesState, f: usize) {
    s.feature = Some(f);
    s.example = None;
}

/// The window's tokens within `crop` of the example's target, with their positions.
fn cropped<'a>(
    file: &'a OwnedDashboardFile,
    e: &Example,
    crop: usize,
) -> impl Iterator<Item = (usize, u32)> + 'a {
    let window = file
        .windows
        .get(e.window as usize)
        .map_or(&[][..], Vec::as_slice);
    let t = e.target as usize;
    let hi = (t + crop + 1).min(window.len());
    let lo = t.saturating_sub(crop).min(hi);
    window[lo..hi]
        .iter()
        .enumerate()
        .map(move |(i, &id)| (lo + i, id))
}

/// The example's activation at a window position (0 where the feature is off).
fn activation_at(e: &Example, p: usize) -> f32 {
    e.activations
        .binary_search_by_key(&p, |a| a.0 as usize)
        .map_or(0.0, |i| e.activations[i].1)
}

/// A token as shown, in the monospace font: newlines made visible (`⏎`), spaces too when
/// `spaces` (tables, where a leading space matters), and characters the fonts cannot
/// draw (control characters, the replacement character of partial UTF-8 tokens, ...)
/// written as escapes.
pub(crate) fn shown_token(ui: &Ui, s: &str, spaces: bool) -> String {
    let font = TextStyle::Monospace.resolve(ui.style());
    ui.ctx().fonts_mut(|fonts| {
        let mut has = |c: char| fonts.has_glyph(&font, c);
        let newline = ['⏎', '↵']
            .into_iter()
            .find(|&c| has(c))
            .map_or_else(|| "\\n".to_string(), String::from);
        let space = if spaces && has('·') { '·' } else { ' ' };
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '\n' => out.push_str(&newline),
                ' ' => out.push(space),
                c if c.is_control() || !has(c) => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        out
    })
}

/// `text` with every character the fonts of `style` cannot draw written as an escape.
pub(crate) fn drawable(ui: &Ui, style: &TextStyle, text: &str) -> String {
    let font = style.resolve(ui.style());
    ui.ctx().fonts_mut(|fonts| {
        text.chars()
            .map(|c| {
                if c.is_control() || fonts.has_glyph(&font, c) {
                    c.to_string()
                } else {
                    c.escape_default().to_string()
                }
            })
            .collect()
    })
}

/// `color` faded in proportion to `strength` (0..=1).
fn shade(color: Color32, strength: f32) -> Color32 {
    let t = if strength.is_finite() {
        strength.clamp(0.0, 1.0)
    } else {
        0.0
    };
    color.gamma_multiply(0.85 * t)
}

/// The fill for a signed `value` on a scale whose largest magnitude is `scale`: blue for
/// positive, red for negative, as the DFA row's.
pub(crate) fn signed_fill(value: f32, scale: f32) -> Color32 {
    let color = if value < 0.0 { NEG_COLOR } else { POS_COLOR };
    shade(color, ratio(value.abs(), scale))
}

/// Largest absolute value (0 when empty).
pub(crate) fn max_abs(values: impl Iterator<Item = f32>) -> f32 {
    values
        .map(f32::abs)
        .filter(|v| v.is_finite())
        .fold(0.0, f32::max)
}

/// `value / scale`, 0 when the scale is not positive.
fn ratio(value: f32, scale: f32) -> f32 {
    if scale > 0.0 { value / scale } else { 0.0 }
}

pub(crate) fn error_label(ui: &mut Ui, text: &str) {
    let color = ui.visuals().error_fg_color;
    ui.label(RichText::new(text).color(color));
}

/// Something asked of the model, drawn by how far it got: a button (`labels.0`, with
/// `labels.1` beside it) until asked, a spinner (`labels.2`) while it is computed, the
/// failure with a button to try again, then `ready`. Returns whether a button was clicked,
/// and what `ready` returned.
pub(crate) fn answer_panel<T, R>(
    ui: &mut Ui,
    state: Option<&Answer<T>>,
    labels: (&str, &str, &str),
    ready: impl FnOnce(&mut Ui, &T) -> Option<R>,
) -> (bool, Option<R>) {
    let ask = |ui: &mut Ui, label: &str| {
        ui.horizontal_wrapped(|ui| {
            let clicked = ui.button(label).clicked();
            ui.label(RichText::new(labels.1).weak());
            clicked
        })
        .inner
    };
    match state {
        None => (ask(ui, labels.0), None),
        Some(Answer::Computing) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(labels.2);
            });
            (false, None)
        }
        Some(Answer::Failed(why)) => {
            error_label(ui, &format!("failed: {why}"));
            (ask(ui, "Try again"), None)
        }
        Some(Answer::Ready(x)) => (false, ready(ui, x)),
    }
}

/// One token drawn as a small coloured chip: `target` outlines it, `marked` puts a small
/// triangle under it; hovering shows `tooltip`.
struct Chip<'a> {
    text: &'a str,
    fill: Color32,
    target: bool,
    marked: bool,
}

impl Chip<'_> {
    fn show(self, ui: &mut Ui, tooltip: impl FnOnce() -> String) -> Response {
        let font = TextStyle::Monospace.resolve(ui.style());
        let color = ui.visuals().strong_text_color();
        let galley = ui
            .painter()
            .layout_no_wrap(self.text.to_owned(), font, color);
        let size = vec2(galley.size().x.max(4.0) + 3.0, galley.size().y + 4.0);
        let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
        let painter = ui.painter();
        let chip = rect.shrink2(vec2(0.5, 1.0));
        painter.rect_filled(chip, CornerRadius::same(2), self.fill);
        if self.target {
            painter.rect_stroke(
                chip,
                CornerRadius::same(2),
                Stroke::new(1.2, color),
                StrokeKind::Inside,
            );
        }
        painter.galley(pos2(rect.left() + 1.5, rect.top() + 2.0), galley, color);
        if self.marked {
            let (x, y) = (rect.center().x, rect.bottom());
            let points = vec![pos2(x - 4.0, y + 5.0), pos2(x, y), pos2(x + 4.0, y + 5.0)];
            painter.add(Shape::convex_polygon(points, color, Stroke::NONE));
        }
        response.on_hover_ui(|ui| {
            let text = drawable(ui, &TextStyle::Monospace, &tooltip());
            ui.label(RichText::new(text).monospace());
        })
    }
}

// ---------------------------------------------------------------------------------------
// Heads overview

/// `decoded[h]`: head `h`'s summary of where its features read from, if decoded (for files
/// that do not carry it).
fn heads_panel(
    ui: &mut Ui,
    name: &str,
    meta: &DashboardMeta,
    decoded: &[Option<&HeadSources>],
    s: &mut FeaturesState,
) {
    egui::Panel::left("attn_saes.features.heads")
        .resizable(true)
        .default_size(400.0)
        .show(ui, |ui| {
            ui.heading("Heads");
            ui.label(RichText::new(drawable(ui, &TextStyle::Body, name)).strong());
            let summary = drawable(ui, &TextStyle::Small, &file_summary(meta));
            ui.label(RichText::new(summary).small());
            ui.separator();
            ScrollArea::vertical()
                .id_salt("heads")
                .auto_shrink(false)
                .show(ui, |ui| heads_table(ui, meta, decoded, s));
        });
}

fn file_summary(meta: &DashboardMeta) -> String {
    let sae = &meta.sae;
    let shape = match meta.dense_heads() {
        Some(heads) => format!(
            "dense: {} features over {heads} heads",
            sae.features_per_head
        ),
        None => format!("{} heads × {} features", sae.n_heads, sae.features_per_head),
    };
    format!(
        "{} · layer {} · {shape} ({}) · {} tokens scanned",
        meta.model.name, meta.hook_layer, sae.architecture, meta.n_tokens
    )
}

/// The standard error of block `h`'s CE loss score in the run's last evaluation, as the
/// heads table's hover text (a dense SAE's one block has the total score's), where the run
/// recorded it.
fn ce_spread(meta: &DashboardMeta, h: usize) -> Option<String> {
    let e = meta.history.evals.last()?;
    let se = match meta.dense_heads() {
        Some(_) => e.ce_score_se,
        None => e.per_head.get(h)?.ce_score_se,
    }?;
    Some(format!(
        "CE loss score ± {se:.3}: its jackknife standard error over the {} windows of the \
         run's last evaluation (step {}); a head whose ablation costs little has a score that \
         says little",
        e.windows?, e.step
    ))
}

/// Block `h` of the SAE as a title: `Head 3`, or `All heads` for a dense SAE's one block.
fn block_title(meta: &DashboardMeta, h: usize) -> String {
    let name = meta.block_name(h);
    let mut chars = name.chars();
    chars
        .next()
        .map_or(name.clone(), |c| c.to_uppercase().chain(chars).collect())
}

fn heads_table(
    ui: &mut Ui,
    meta: &DashboardMeta,
    decoded: &[Option<&HeadSources>],
    s: &mut FeaturesState,
) {
    // Densities below one token in the file cannot occur: the sparkline's scale starts there.
    let lowest = -(meta.n_tokens.max(10) as f64).log10().ceil();
    egui::Grid::new("heads_table")
        .striped(true)
        .num_columns(7)
        .spacing(vec2(10.0, 4.0))
        .show(ui, |ui| {
            for title in ["", "L0", "EV", "dead", "CE", "density", "reads from"] {
                ui.label(RichText::new(title).weak());
            }
            ui.end_row();
            for (h, head) in meta.heads.iter().enumerate() {
                let hover = run_summary(meta, head);
                let row = ui.selectable_label(s.head == h, block_title(meta, h));
                if row.on_hover_text(hover).clicked() && s.head != h {
                    s.head = h;
                    s.feature = None;
                    s.example = None;
                }
                ui.label(format!("{:.1}", head.l0));
                ui.label(format!("{:.3}", head.explained_variance));
                ui.label(head.never_fired.to_string())
                    .on_hover_text("features that never fired on the dashboard tokens");
                let ce = ui.label(head.ce_score.map_or("-".into(), |c| format!("{c:.3}")));
                if let Some(spread) = ce_spread(meta, h) {
                    ce.on_hover_text(spread);
                }
                density_sparkline(ui, &head.density_histogram, lowest);
                let reads = head
                    .reads_from
                    .as_ref()
                    .or(decoded.get(h).copied().flatten());
                reads_cell(ui, reads, head);
                ui.end_row();
            }
        });
}

/// The head's commonest positional pattern ("prev 55%"), the whole summary and where the
/// head attends on hover; "-" for a file without it until the head is opened.
fn reads_cell(ui: &mut Ui, reads: Option<&HeadSources>, head: &HeadSummary) {
    let Some(reads) = reads else {
        ui.label("-")
            .on_hover_text("this file predates the summary: open the head to compute it");
        return;
    };
    let text = match reads.top_pattern() {
        Some((kind, share)) => format!("{} {:.0}%", kind.short(), 100.0 * share),
        None => "elsewhere".into(),
    };
    let mut attends = head.attention.as_ref().map_or(String::new(), |a| {
        format!(
            "\n\nits attention on the dashboard tokens: {}",
            a.describe()
        )
    });
    if let Some(s) = &head.random_tokens {
        attends += &format!(
            "\n\nits attention on repeated random tokens (BOS + R + R): {}",
            s.describe()
        );
    }
    ui.label(text).on_hover_text(format!(
        "the head's features by where most of their top examples read from (the source \
         with the largest DFA):\n{}{attends}",
        reads.describe()
    ));
}

fn run_summary(meta: &DashboardMeta, head: &HeadSummary) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    format!(
        "{}: L0 {:.2}, explained variance {:.3}, {} never fired (dashboard tokens)\n\
         training run: L0 {}, explained variance {}, dead {}, CE score {}",
        meta.block_name(head.head),
        head.l0,
        head.explained_variance,
        head.never_fired,
        opt(head.run_l0, 2),
        opt(head.run_explained_variance, 3),
        head.run_dead.map_or("-".into(), |d| d.to_string()),
        opt(head.ce_score, 3),
    )
}

/// Live features by log10 density, on a `lowest..=0` scale shared by every head.
fn density_sparkline(ui: &mut Ui, hist: &[(f64, usize)], lowest: f64) {
    let (rect, response) = ui.allocate_exact_size(SPARK_SIZE, Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, CornerRadius::same(2), ui.visuals().extreme_bg_color);
    let max = hist.iter().map(|b| b.1).max().unwrap_or(0);
    let span = -lowest;
    let step = match hist {
        [a, b, ..] if (b.0 - a.0).abs() > 0.0 => (b.0 - a.0).abs(),
        _ => span / 20.0,
    };
    let bar_w = ((step / span) as f32 * rect.width()).clamp(1.0, rect.width());
    for &(centre, n) in hist.iter().filter(|b| b.1 > 0 && b.0.is_finite()) {
        let x = rect.left() + (((centre - lowest) / span).clamp(0.0, 1.0) as f32) * rect.width();
        let h = (rect.height() - 2.0) * n as f32 / max.max(1) as f32;
        let bar = Rect::from_min_max(
            pos2(x - bar_w / 2.0, rect.bottom() - h),
            pos2(x + bar_w / 2.0, rect.bottom()),
        );
        painter.rect_filled(bar, CornerRadius::ZERO, ACT_COLOR);
    }
    response.on_hover_text(format!(
        "live features by log10 density, {lowest:.0} (left) to 0 (right); tallest bin {max}"
    ));
}

// ---------------------------------------------------------------------------------------
// Feature list

/// The head's features, filtered and sorted as `s` asks.
fn feature_order(
    file: &OwnedDashboardFile,
    head: &HeadData,
    reads: &[FeatureSources],
    labels: &Labels,
    s: &FeaturesState,
) -> Vec<usize> {
    let fs = &head.features;
    let needle = s.search.to_lowercase();
    let labelled =
        |f: usize| (labels.get(s.head, f)).is_some_and(|l| l.to_lowercase().contains(&needle));
    // A dense SAE's features by the model head they write most.
    let writes_to = |f: usize| -> bool {
        let (Some(want), Some(heads)) = (s.writes_to, file.meta.dense_heads()) else {
            return true;
        };
        head.writes_most(f, heads) == Some(want)
    };
    let mut order: Vec<usize> = (0..fs.len())
        .filter(|&f| !(s.hide_dead && is_dead(&fs[f])))
        .filter(|&f| reads.get(f).is_some_and(|r| s.reads_from.admits(r)))
        .filter(|&f| writes_to(f))
        .filter(|&f| {
            needle.is_empty() || labelled(f) || matches_search(file, &fs[f], &needle, s.crop)
        })
        .collect();
    let key = |f: &FeatureData| match s.sort {
        SortBy::Density => f.density,
        SortBy::MaxActivation => f.max_activation,
        SortBy::Effect => f.effect.unwrap_or(0.0).abs(),
        SortBy::Index => 0.0,
    };
    // Stable: ties keep index order.
    order.sort_by(|&a, &b| key(&fs[b]).total_cmp(&key(&fs[a])));
    order
}

/// Whether a token of a top example, within the crop, contains `needle` (lower case).
fn matches_search(file: &OwnedDashboardFile, f: &FeatureData, needle: &str, crop: usize) -> bool {
    f.examples
        .iter()
        .filter(|e| e.group == ExampleGroup::Top)
        .any(|e| {
            cropped(file, e, crop).any(|(_, id)| file.token(id).to_lowercase().contains(needle))
        })
}

fn list_panel(
    ui: &mut Ui,
    head: Result<Head<'_>, &str>,
    order: &[usize],
    labels: &Labels,
    s: &mut FeaturesState,
    scroll: Scroll,
) {
    egui::Panel::left("attn_saes.features.list")
        .resizable(true)
        .default_size(250.0)
        .show(ui, |ui| {
            ui.heading("Features");
            let has_effects = head.as_ref().is_ok_and(|h| h.effects.is_some());
            let dense_heads = head.as_ref().ok().and_then(|h| h.dense_heads);
            list_controls(ui, s, has_effects, dense_heads);
            match head {
                Err(e) => error_label(ui, e),
                Ok(head) => {
                    let moved = arrow_keys(ui, s, order);
                    ui.label(format!(
                        "{} of {} features",
                        order.len(),
                        head.data.features.len()
                    ));
                    ui.label(
                        RichText::new(format!("read from: {}", head.summary.describe())).small(),
                    )
                    .on_hover_text(
                        "where the head's features read from: the source position with the \
                         largest DFA in most of a feature's top examples (mixed: no majority)",
                    );
                    ui.separator();
                    let scroll = if moved { Scroll::IntoView } else { scroll };
                    feature_rows(ui, head, order, labels, s, scroll);
                }
            }
        });
}

/// The list's sort, filters and search; sorting by effect is offered when the file has
/// the estimates, and for a dense SAE over `dense_heads` heads, a filter by the head a
/// feature writes most.
fn list_controls(
    ui: &mut Ui,
    s: &mut FeaturesState,
    has_effects: bool,
    dense_heads: Option<usize>,
) {
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("sort")
            .selected_text(s.sort.label())
            .show_ui(ui, |ui| {
                for sort in SortBy::ALL {
                    if sort != SortBy::Effect || has_effects {
                        ui.selectable_value(&mut s.sort, sort, sort.label());
                    }
                }
            });
        ui.checkbox(&mut s.hide_dead, "hide dead");
    });
    egui::ComboBox::from_label("reads from")
        .selected_text(s.reads_from.label())
        .show_ui(ui, |ui| {
            for r in ReadsFrom::all() {
                let hover = match r {
                    ReadsFrom::Any => "every feature",
                    ReadsFrom::Kind(k) => k.description(),
                    ReadsFrom::Mixed => "no kind of source holds a majority of the top examples",
                };
                ui.selectable_value(&mut s.reads_from, r, r.label())
                    .on_hover_text(hover);
            }
        })
        .response
        .on_hover_text(
            "only features whose top examples mostly read from this source \
             (the position with the largest DFA)",
        );
    if let Some(heads) = dense_heads {
        let name = |h: Option<usize>| h.map_or("any head".to_string(), |h| format!("h{h}"));
        egui::ComboBox::from_label("writes most to")
            .selected_text(name(s.writes_to))
            .show_ui(ui, |ui| {
                for h in std::iter::once(None).chain((0..heads).map(Some)) {
                    ui.selectable_value(&mut s.writes_to, h, name(h));
                }
            })
            .response
            .on_hover_text(
                "only the dense SAE's features that write most to this head (the largest \
                 share of their decoder row), to set beside a block-diagonal SAE's head",
            );
    }
    ui.add(
        egui::TextEdit::singleline(&mut s.search)
            .id(search_id())
            .hint_text("token in top examples, or label")
            .desired_width(f32::INFINITY),
    )
    .on_hover_text("case-insensitive; press / to search");
}

/// ArrowRight / ArrowLeft move to the next / previous head while no text field has focus.
fn head_keys(ui: &mut Ui, s: &mut FeaturesState, n_heads: usize) {
    if ui.ctx().text_edit_focused() {
        return;
    }
    let (right, left) = ui.input(|i| {
        (
            i.key_pressed(Key::ArrowRight),
            i.key_pressed(Key::ArrowLeft),
        )
    });
    let head = match (right, left) {
        (true, false) => (s.head + 1).min(n_heads.saturating_sub(1)),
        (false, true) => s.head.saturating_sub(1),
        _ => return,
    };
    if head != s.head {
        s.head = head;
        s.feature = None;
        s.example = None;
    }
}

/// ArrowDown / ArrowUp move the selection through the list while no text field has focus.
fn arrow_keys(ui: &mut Ui, s: &mut FeaturesState, order: &[usize]) -> bool {
    if order.is_empty() || ui.ctx().text_edit_focused() {
        return false;
    }
    let (down, up) = ui.input(|i| (i.key_pressed(Key::ArrowDown), i.key_pressed(Key::ArrowUp)));
    let at = s.feature.and_then(|f| order.iter().position(|&x| x == f));
    let next = match (down, up, at) {
        (true, false, Some(p)) => (p + 1).min(order.len() - 1),
        (false, true, Some(p)) => p.saturating_sub(1),
        (true, false, None) | (false, true, None) => 0,
        _ => return false,
    };
    select_feature(s, order[next]);
    true
}

/// How the feature list scrolls to the selected feature this frame.
#[derive(Clone, Copy, PartialEq)]
enum Scroll {
    No,
    /// The least scroll that shows it (arrow keys, a new head).
    IntoView,
    /// To the middle (a selection made from elsewhere).
    Centre,
}

fn feature_rows(
    ui: &mut Ui,
    head: Head<'_>,
    order: &[usize],
    labels: &Labels,
    s: &mut FeaturesState,
    scroll: Scroll,
) {
    let row_h = ui.spacing().interact_size.y;
    let stride = row_h + ui.spacing().item_spacing.y;
    let view_id = ui.make_persistent_id("feature_rows_view");
    let mut area = ScrollArea::vertical()
        .id_salt("feature_rows")
        .auto_shrink(false);
    if scroll != Scroll::No
        && let Some(p) = s.feature.and_then(|f| order.iter().position(|&x| x == f))
    {
        let (offset, view_h) = ui
            .data(|d| d.get_temp::<(f32, f32)>(view_id))
            .unwrap_or((0.0, ui.available_height()));
        let (top, bottom) = (p as f32 * stride, p as f32 * stride + row_h);
        if scroll == Scroll::Centre {
            area = area.vertical_scroll_offset((top - (view_h - row_h) / 2.0).max(0.0));
        } else if top < offset {
            area = area.vertical_scroll_offset(top);
        } else if bottom > offset + view_h {
            area = area.vertical_scroll_offset(bottom - view_h);
        }
    }
    let out = area.show_rows(ui, row_h, order.len(), |ui, rows| {
        for &f in &order[rows] {
            let tag = head.reads.get(f).map_or("", reads_tag);
            let label = labels.get(s.head, f);
            let fd = &head.data.features[f];
            feature_row(ui, fd, f, (tag, label, head.effects), row_h, s);
        }
    });
    let view = (out.state.clamped_offset().y, out.inner_rect.height());
    ui.data_mut(|d| d.insert_temp(view_id, view));
}

/// One feature in the list: index, density (or, sorted by effect, its effect on the loss
/// per 1000 tokens), max activation, where it reads from and its label (as much as fits;
/// all of it on hover).
fn feature_row(
    ui: &mut Ui,
    fd: &FeatureData,
    f: usize,
    (tag, label, effects): (&str, Option<&str>, Option<&Effects>),
    row_h: f32,
    s: &mut FeaturesState,
) {
    let first = match (s.sort, effects, fd.effect) {
        (SortBy::Effect, Some(e), Some(x)) => format!("{:+.3}/1k", e.per_thousand(x)),
        _ => format!("{:.2e}", fd.density),
    };
    let text = format!(
        "#{f}  {first}  max {:.2}  {tag}{}",
        fd.max_activation,
        label.map_or(String::new(), |l| format!("  {l}"))
    );
    let text = if is_dead(fd) {
        RichText::new(text).weak()
    } else {
        RichText::new(text)
    };
    let button = egui::Button::selectable(s.feature == Some(f), text)
        .truncate()
        .min_size(vec2(ui.available_width(), row_h));
    let mut response = ui.add(button);
    if let Some(label) = label {
        response = response.on_hover_text(label);
    }
    if response.clicked() {
        select_feature(s, f);
    }
}

// ---------------------------------------------------------------------------------------
// Feature dashboard

fn dashboard_panel(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    head: Result<Head<'_>, &str>,
    labels: (&Labels, &LabelsEdit),
    s: &mut FeaturesState,
    (ask, compared): (ExamplesAsk, &[super::curves::Compared]),
) -> Option<FeaturesAction> {
    egui::CentralPanel::default()
        .show(ui, |ui| {
            let head = match head {
                Ok(head) => head,
                Err(e) => {
                    error_label(ui, e);
                    return None;
                }
            };
            let Some((f, fd)) = s
                .feature
                .and_then(|f| head.data.features.get(f).map(|fd| (f, fd)))
            else {
                ui.label("No feature selected.");
                return None;
            };
            ScrollArea::vertical()
                .id_salt("feature_dashboard")
                .auto_shrink(false)
                .show(ui, |ui| {
                    let reads = head.reads.get(f).cloned().unwrap_or_default();
                    let closest = head.data.closest(f, CLOSEST_SHOWN);
                    let shares =
                        (file.meta.dense_heads()).and_then(|heads| head.data.head_shares(f, heads));
                    let around = (&reads, closest.as_slice(), shares.as_deref());
                    let row = head.data.decoder_row(f);
                    let elsewhere =
                        row.map(|row| closest_elsewhere(&file.meta, s.head, row, compared));
                    let around = (around, elsewhere.unwrap_or_default());
                    feature_dashboard(ui, file, (f, fd), around, labels, s, ask)
                })
                .inner
        })
        .inner
}

fn feature_dashboard(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    (f, fd): (usize, &FeatureData),
    ((reads, closest, shares), elsewhere): (Around<'_>, Vec<Elsewhere<'_>>),
    labels: (&Labels, &LabelsEdit),
    s: &mut FeaturesState,
    ask: ExamplesAsk,
) -> Option<FeaturesAction> {
    header(ui, file, (s.head, f, fd), labels.0.get(s.head, f), s.crop);
    if let Some(shares) = shares {
        head_shares_line(ui, shares, fd.read_shares().as_deref());
    }
    let labelled = label_line(ui, labels, s, (s.head, f));
    let within = if shares.is_some() {
        "this SAE"
    } else {
        "this head"
    };
    closest_line(ui, closest, labels.0, s, within);
    cofiring_line(ui, &file.meta, &fd.cofiring, labels.0, s);
    let mut opened = None;
    for &(name, ref closest, opens, their_labels, across) in &elsewhere {
        // Across heads from a dense SAE, the other's features are named by head; to a dense
        // SAE, by number alone.
        let (by_head, dense_there) = (across && shares.is_some(), across && shares.is_none());
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(format!("closest in {name}")).strong())
                .on_hover_text(
                    "the features in that compared run's SAE whose decoder directions are \
                     nearest this one's (cosine similarity; within the head, or across heads \
                     between a dense SAE and a block-diagonal one; `attn-saes match` compares \
                     whole SAEs), each with its label there if it has one",
                );
            for &((h, f), cos) in closest {
                let text = match by_head {
                    true => format!("h{h} #{f} {cos:.2}"),
                    false => format!("#{f} {cos:.2}"),
                };
                let at = match dense_there {
                    true => format!("feature {f}"),
                    false => format!("head {h} feature {f}"),
                };
                if !opens {
                    ui.label(text);
                } else if ui
                    .link(text)
                    .on_hover_text(format!("open {name} at {at}, comparing this run instead"))
                    .clicked()
                {
                    opened = Some(FeaturesAction::OpenCompared {
                        name: name.to_string(),
                        head: h,
                        feature: f,
                    });
                }
                if let Some(label) = their_labels.get(h, f) {
                    ui.label(RichText::new(quoted_short(label)).italics())
                        .on_hover_text(label);
                }
            }
        });
    }
    // A compared run opened while a label is typed: the label is still given to this
    // dashboard's feature as the other opens (the app takes the draft first).
    let labelled = opened.or(labelled);
    if is_dead(fd) {
        ui.label(
            RichText::new(format!(
                "never fired on the {} dashboard tokens",
                file.meta.n_tokens
            ))
            .italics(),
        );
        ui.add_space(8.0);
        logit_tables(ui, file, fd);
        return labelled;
    }
    ui.add_space(4.0);
    ui.columns(2, |cols| {
        activation_histogram(&mut cols[0], (s.head, f), fd);
        logit_histogram(&mut cols[1], (s.head, f), fd);
    });
    ui.add_space(4.0);
    logit_tables(ui, file, fd);
    let action = match ask {
        ExamplesAsk::Unavailable => None,
        ExamplesAsk::Ask(asked, _) => {
            ui.separator();
            let asked = asked.filter(|a| (a.head, a.feature) == (s.head, f));
            examples_effect_panel(ui, file, fd, (s.head, f), asked)
        }
    };
    ui.separator();
    top_examples(ui, file, fd, s);
    ui.separator();
    dfa_panel(ui, file, fd, reads, s);
    let mut build = None;
    if file.meta.dense_heads().is_none() {
        ui.separator();
        build = upstream_panel(ui, file, (f, fd), s, ask);
    }
    ui.separator();
    interval_groups(ui, file, fd, s);
    labelled.or(action).or(build)
}

/// What removing the feature does on its top examples: a button that asks for it, then
/// the loss change at the examples' targets and over their windows, and the next tokens it
/// raises and lowers most often there.
fn examples_effect_panel(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    fd: &FeatureData,
    (head, feature): (usize, usize),
    asked: Option<&AskedExamples>,
) -> Option<FeaturesAction> {
    let mut action = None;
    ui.horizontal_wrapped(|ui| {
        if ui.button("Use it in Your text").clicked() {
            action = Some(FeaturesAction::UseInText {
                head,
                feature,
                example: example_prompt(file, fd),
            });
        }
        ui.label(
            RichText::new(
                "picks it in Your text (on your text, or else on its strongest example up to \
                 its top token), to remove it there or steer with it",
            )
            .weak(),
        );
    });
    ui.heading("Effect on its top examples");
    let n = (fd.examples.iter())
        .filter(|e| e.group == ExampleGroup::Top)
        .count();
    let labels = (
        "Remove it on its top examples",
        &*format!(
            "runs the model on the {n} top examples' windows clean and with this feature taken \
             out of hook_z"
        ),
        "running the model on its examples…",
    );
    let state = asked.map(|a| &a.state);
    let (clicked, _) = answer_panel(ui, state, labels, |ui, e| {
        examples_effect_lines(ui, e);
        None::<()>
    });
    // The windows are copied only when asked for.
    let examples = if clicked {
        top_example_windows(&file.windows, fd)
    } else {
        Vec::new()
    };
    if !examples.is_empty() {
        action = Some(FeaturesAction::ExamplesEffect {
            head,
            feature,
            examples,
        });
    }
    action
}

/// The text of a feature's strongest example, from the start of its window (BOS left out)
/// to its top token.
pub fn example_prompt(file: &OwnedDashboardFile, fd: &FeatureData) -> String {
    let bos = file.meta.model.bos_token_id;
    let Some(e) = fd.examples.iter().find(|e| e.group == ExampleGroup::Top) else {
        return String::new();
    };
    let window = file.windows.get(e.window as usize).map_or(&[][..], |w| w);
    (window.iter().take(e.target as usize + 1))
        .filter(|&&id| Some(id) != bos)
        .map(|&id| file.token(id))
        .collect()
}

/// A feature's top examples as `(window, target)` pairs, the windows from the dashboard's
/// `windows`.
pub fn top_example_windows(windows: &[Vec<u32>], fd: &FeatureData) -> Vec<(Vec<u32>, usize)> {
    fd.examples
        .iter()
        .filter(|e| e.group == ExampleGroup::Top)
        .filter_map(|e| Some((windows.get(e.window as usize)?.clone(), e.target as usize)))
        .collect()
}

fn examples_effect_lines(ui: &mut Ui, e: &ExamplesEffect) {
    let with_next = e.at_target.iter().flatten().count();
    if let Some(mean) = e.mean_at_target() {
        ui.label(format!(
            "Without it, the loss on the token after each example's top token changes by \
             {mean:+.4} on average (it rises in {} of {with_next} examples).",
            e.helped()
        ));
    }
    let window = e.window.iter().sum::<f32>() / e.window.len().max(1) as f32;
    ui.label(format!(
        "Over each example's whole window it changes by {window:+.4} on average."
    ));
    let listed = |tokens: &[(String, usize)]| -> String {
        if tokens.is_empty() {
            return "nothing".into();
        }
        tokens
            .iter()
            .take(6)
            .map(|(t, n)| format!("{t:?} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let line = format!(
        "At the top tokens it raises the probability of {} and lowers {} next (in how many \
         examples' five largest changes).",
        listed(&e.raises),
        listed(&e.lowers)
    );
    ui.label(drawable(ui, &TextStyle::Body, &line));
}

/// The feature as text to paste into notes: head, feature, label, density, maximum, effect,
/// and its top examples within `crop` tokens of their targets (`[[target]]`), as the view
/// shows them.
fn feature_summary(
    file: &OwnedDashboardFile,
    (h, f, fd): (usize, usize, &FeatureData),
    label: Option<&str>,
    crop: usize,
) -> String {
    let meta = &file.meta;
    let label = label.map_or(String::new(), |l| format!(" {l:?}"));
    let effect = match (&meta.effects, fd.effect) {
        (Some(e), Some(x)) => format!(
            ", loss without it {:+.4} per 1000 tokens",
            e.per_thousand(x)
        ),
        _ => String::new(),
    };
    let which = match meta.dense_heads() {
        Some(_) => format!("feature {f} of a dense SAE"),
        None => format!("head {h} feature {f}"),
    };
    let mut text = format!(
        "{which}{label} ({} layer {}): density {:.3e}, max activation {:.3}{effect}\n",
        crate::dashboard::format::published_name(&meta.model.name),
        meta.hook_layer,
        fd.density,
        fd.max_activation
    );
    for e in fd.examples.iter().filter(|e| e.group == ExampleGroup::Top) {
        let shown: String = cropped(file, e, crop)
            .map(|(p, id)| match p == e.target as usize {
                true => format!("[[{}]]", file.token(id)),
                false => file.token(id),
            })
            .collect();
        text.push_str(&format!("{:>8.3}  {shown}\n", e.activation));
    }
    text
}

fn header(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    (h, f, fd): (usize, usize, &FeatureData),
    label: Option<&str>,
    crop: usize,
) {
    let meta = &file.meta;
    ui.horizontal(|ui| {
        ui.heading(feature_title(meta.dense_heads().is_some(), h, f));
        let copy = ui.small_button("copy").on_hover_text(
            "copy this feature as text: its numbers, label and top examples (the context shown)",
        );
        if copy.clicked() {
            ui.ctx()
                .copy_text(feature_summary(file, (h, f, fd), label, crop));
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.label(format!("density {:.3e}", fd.density))
            .on_hover_text(format!(
                "active on {:.4}% of the {} dashboard tokens",
                fd.density * 100.0,
                meta.n_tokens
            ));
        ui.separator();
        ui.label(format!("max activation {:.3}", fd.max_activation));
        if let (Some(e), Some(x)) = (&meta.effects, fd.effect) {
            ui.separator();
            ui.label(format!(
                "loss without it {:+.4} per 1000 tokens",
                e.per_thousand(x)
            ))
            .on_hover_text(format!(
                "first-order estimate of how much the next-token loss would rise without this \
                 feature (positive: it helps the predictions), summed over the first {} \
                 dashboard windows ({} tokens) and scaled to 1000 tokens; `attn-saes text \
                 --effect` gives the exact change on a text",
                e.windows, e.tokens
            ));
        }
        if !fd.interval_counts.is_empty() {
            ui.separator();
            let total: u64 = fd.interval_counts.iter().map(|&c| c as u64).sum();
            let counts: Vec<String> = fd.interval_counts.iter().map(u32::to_string).collect();
            ui.label(format!(
                "interval counts {} (low to high) · {total} active tokens",
                counts.join(" / ")
            ));
        }
    });
}

/// A feature's title: `Head 3 · Feature 406`, or `Feature 1942 · dense, all heads` for a
/// dense SAE's (the Features view's and Your text's).
pub(crate) fn feature_title(dense: bool, head: usize, feature: usize) -> String {
    match dense {
        true => format!("Feature {feature} · dense, all heads"),
        false => format!("Head {head} · Feature {feature}"),
    }
}

/// Features of the same head listed as closest to the selected one.
const CLOSEST_SHOWN: usize = 6;
/// What a feature's dashboard shows around it: where it reads from, and the features of its
/// head closest to it.
/// For a dense SAE's feature, also the heads it writes ([`HeadData::head_shares`]).
type Around<'a> = (&'a FeatureSources, &'a [(usize, f32)], Option<&'a [f32]>);
/// A compared run's name, its features (`(head, feature)`) closest to the selected one,
/// whether it can be opened at them, its labels, and whether it was matched across heads
/// (one of the two SAEs is dense, the other block-diagonal).
type Elsewhere<'a> = (&'a str, Vec<((usize, usize), f32)>, bool, &'a Labels, bool);

/// Features listed as closest in each compared run's SAE.
const CLOSEST_ELSEWHERE: usize = 3;
/// Characters of a compared run's label shown beside its feature (all of it on hover).
const LABEL_SHOWN: usize = 40;

/// `label` in quotes, cut to [`LABEL_SHOWN`] characters with an ellipsis.
fn quoted_short(label: &str) -> String {
    match label.char_indices().nth(LABEL_SHOWN) {
        Some((cut, _)) => format!("“{}…”", label[..cut].trim_end()),
        None => format!("“{label}”"),
    }
}

/// For each compared run whose dashboard holds an SAE of the same model and layer (of the
/// same heads, or a dense one over them, or per head where this one is dense): its name and
/// its features whose decoder directions are closest to `row`, of block `head` here.
fn closest_elsewhere<'c>(
    meta: &crate::dashboard::format::DashboardMeta,
    head: usize,
    row: &[f32],
    compared: &'c [super::curves::Compared],
) -> Vec<Elsewhere<'c>> {
    compared
        .iter()
        .filter_map(|c| {
            let sae = c.sae.as_ref()?;
            let closest = sae.closest(meta, head, row, CLOSEST_ELSEWHERE)?;
            let across = sae.decoder.len() != meta.sae.n_heads;
            Some((
                c.name.as_str(),
                closest,
                c.source.is_some(),
                &sae.labels,
                across,
            ))
        })
        .collect()
}

/// Which heads a dense SAE's feature writes: the largest shares of its decoder row in words,
/// every head's on hover; and which it reads, from its top examples' DFA by head, when the
/// file has it.
fn head_shares_line(ui: &mut Ui, shares: &[f32], reads: Option<&[f32]>) {
    let every = |shares: &[f32]| -> String {
        let all: Vec<String> = (shares.iter().enumerate())
            .map(|(h, x)| format!("head {h}: {:.1}%", 100.0 * x))
            .collect();
        all.join("\n")
    };
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("writes to").strong());
        ui.label(crate::dashboard::format::head_shares_text(shares, 4))
            .on_hover_text(format!(
                "the share of the feature's decoder row (its squared norm) in each head's part \
                 of hook_z: which heads' outputs it writes (a dense SAE's features can span \
                 heads)\n{}",
                every(shares)
            ));
        if let Some(reads) = reads {
            ui.label(RichText::new("  reads through").strong());
            ui.label(crate::dashboard::format::head_shares_text(reads, 4))
                .on_hover_text(format!(
                    "each head's share of the top examples' DFA by head, by size: which \
                     heads' hook_z it reads\n{}",
                    every(reads)
                ));
        }
    });
}

/// The head's features whose decoder directions are closest to the selected one's (when the
/// file holds the decoder rows), each a button that selects it, its label on hover;
/// `within` names where they are (`this head`, or `this SAE` for a dense one).
fn closest_line(
    ui: &mut Ui,
    closest: &[(usize, f32)],
    labels: &Labels,
    s: &mut FeaturesState,
    within: &str,
) {
    if closest.is_empty() {
        return;
    }
    let mut picked = None;
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("closest in {within}")).strong())
            .on_hover_text(
                "the features whose decoder directions are nearest this one's (cosine \
                 similarity): near duplicates, or a concept split between features",
            );
        for &(f, cos) in closest {
            let mut button = ui.button(format!("#{f} {cos:.2}"));
            if let Some(label) = labels.get(s.head, f) {
                button = button.on_hover_text(label);
            }
            if button.clicked() {
                picked = Some(f);
            }
        }
    });
    if let Some(f) = picked {
        select_feature(s, f);
        s.reveal = true;
    }
}

/// The features, of any head, whose activations go with the selected one's most over the
/// dashboard tokens (Pearson r), each a button that opens it, its label on hover.
fn cofiring_line(
    ui: &mut Ui,
    meta: &DashboardMeta,
    cofiring: &[(u32, f32)],
    labels: &Labels,
    s: &mut FeaturesState,
) {
    if cofiring.is_empty() {
        return;
    }
    let mut picked = None;
    let over = meta.cofiring_tokens_text();
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("fires with").strong())
            .on_hover_text(format!(
                "the features, of any head, whose activations go with this one's most over \
                 {over} (Pearson correlation): features of other heads that fire on the same \
                 tokens, or parts of one pattern"
            ));
        for &(g, r) in cofiring {
            let (h, f) = meta.block_feature(g as usize);
            let text = match meta.dense_heads() {
                Some(_) => format!("#{f} {r:.2}"),
                None => format!("h{h} #{f} {r:.2}"),
            };
            let mut button = ui.button(text);
            if let Some(label) = labels.get(h, f) {
                button = button.on_hover_text(label);
            }
            if button.clicked() {
                picked = Some((h, f));
            }
        }
    });
    if let Some((h, f)) = picked {
        s.head = h;
        select_feature(s, f);
        s.reveal = true;
    }
}

/// The feature's label: a text field where labels can be edited, taken when it loses focus
/// (Enter, a click elsewhere) or the selection moves on; else the label as text, if there
/// is one.
fn label_line(
    ui: &mut Ui,
    (labels, edit): (&Labels, &LabelsEdit),
    s: &mut FeaturesState,
    (h, f): (usize, usize),
) -> Option<FeaturesAction> {
    let stored = labels.get(h, f).unwrap_or_default();
    let hint = match edit {
        LabelsEdit::Shown => None,
        LabelsEdit::File(_) => {
            Some("what it does, in your words (saved beside the dashboard file)")
        }
        LabelsEdit::Download => Some("what it does, in your words (Save labels downloads them)"),
    };
    let Some(hint) = hint else {
        if !stored.is_empty() {
            ui.label(RichText::new(stored).italics())
                .on_hover_text("its label (attn-saes label)");
        }
        return None;
    };
    let mut action = None;
    // A label typed for the feature selected before (the list clicked while typing).
    if let Some(((dh, df), draft)) = s.label_draft.take_if(|(at, _)| *at != (h, f))
        && labels.get(dh, df).unwrap_or_default() != draft.trim()
    {
        action = Some(FeaturesAction::Label {
            head: dh,
            feature: df,
            label: draft,
        });
    }
    let draft = &mut (s.label_draft)
        .get_or_insert_with(|| ((h, f), stored.to_string()))
        .1;
    let response = ui
        .horizontal(|ui| {
            let name = ui.label("label").id;
            ui.add(
                egui::TextEdit::singleline(draft)
                    .hint_text(hint)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(name)
        })
        .inner;
    if response.lost_focus() && draft.trim() != stored {
        action = Some(FeaturesAction::Label {
            head: h,
            feature: f,
            label: draft.clone(),
        });
    }
    action
}

/// A small bar chart that does not take the scroll wheel or drags from the page.
fn small_plot(id: impl std::hash::Hash + std::fmt::Debug) -> Plot<'static> {
    Plot::new(id)
        .height(140.0)
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .show_grid([false, true])
        .y_axis_min_width(24.0)
}

/// `(bin centre, count)` of a histogram with equal bins over `lo..hi`.
fn histogram_bins(counts: &[u32], lo: f64, hi: f64) -> Vec<(f64, f64)> {
    let w = (hi - lo) / counts.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(i, &n)| (lo + (i as f64 + 0.5) * w, n as f64))
        .collect()
}

/// Solid bars of one colour for histogram bins of width `w`.
fn chart(name: &str, bins: &[(f64, f64)], w: f64, color: Color32) -> BarChart {
    let bars = bins
        .iter()
        .map(|&(x, n)| {
            Bar::new(x, n)
                .width(w * 0.85)
                .fill(color.gamma_multiply(0.75))
                .stroke(Stroke::new(1.0, color))
        })
        .collect();
    BarChart::new(name, bars).color(color)
}

fn activation_histogram(ui: &mut Ui, id: (usize, usize), fd: &FeatureData) {
    ui.label(RichText::new("Activations (nonzero)").strong());
    let max = fd.max_activation as f64;
    let bins = histogram_bins(&fd.activation_histogram, 0.0, max);
    let w = max / bins.len().max(1) as f64;
    let chart = chart("activations", &bins, w, ACT_COLOR);
    small_plot(("activation_histogram", id)).show(ui, |p| p.bar_chart(chart));
}

fn logit_histogram(ui: &mut Ui, id: (usize, usize), fd: &FeatureData) {
    ui.label(RichText::new("Logit effects over the vocabulary").strong());
    let (lo, hi) = (fd.logit_range.0 as f64, fd.logit_range.1 as f64);
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        ui.label(RichText::new("no logit range").weak());
        return;
    }
    let (neg, pos): (Vec<_>, Vec<_>) = histogram_bins(&fd.logit_histogram, lo, hi)
        .into_iter()
        .partition(|b| b.0 < 0.0);
    let w = (hi - lo) / fd.logit_histogram.len().max(1) as f64;
    let neg = chart("negative", &neg, w, NEG_COLOR);
    let pos = chart("positive", &pos, w, POS_COLOR);
    small_plot(("logit_histogram", id)).show(ui, |p| {
        p.bar_chart(neg);
        p.bar_chart(pos);
    });
}

fn logit_tables(ui: &mut Ui, file: &OwnedDashboardFile, fd: &FeatureData) {
    let scale = max_abs(fd.logit_top.iter().chain(&fd.logit_bottom).map(|t| t.1));
    ui.horizontal_top(|ui| {
        logit_table(ui, file, "Negative logits", &fd.logit_bottom, scale);
        ui.add_space(32.0);
        logit_table(ui, file, "Positive logits", &fd.logit_top, scale);
    });
}

fn logit_table(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    title: &str,
    tokens: &[(u32, f32)],
    scale: f32,
) {
    ui.vertical(|ui| {
        ui.label(RichText::new(title).strong());
        egui::Grid::new(title)
            .num_columns(2)
            .spacing(vec2(12.0, 1.0))
            .show(ui, |ui| {
                for &(id, value) in tokens {
                    let token = file.token(id);
                    let color = if value < 0.0 { NEG_COLOR } else { POS_COLOR };
                    Chip {
                        text: &shown_token(ui, &token, true),
                        fill: shade(color, ratio(value.abs(), scale)),
                        target: false,
                        marked: false,
                    }
                    .show(ui, || format!("token {token:?}\nlogit effect {value:+.3}"));
                    ui.label(RichText::new(format!("{value:+.3}")).monospace());
                    ui.end_row();
                }
            });
    });
}

/// One example as a line of tokens: the activation at the target, then the cropped window
/// with each token's background showing the feature's activation there.
fn token_row(ui: &mut Ui, file: &OwnedDashboardFile, e: &Example, crop: usize, max: f32) {
    ui.label(
        RichText::new(format!("{:>7.3}", e.activation))
            .monospace()
            .strong(),
    );
    ui.add_space(6.0);
    ui.spacing_mut().item_spacing.x = 0.0;
    for (p, id) in cropped(file, e, crop) {
        let value = activation_at(e, p);
        let token = file.token(id);
        Chip {
            text: &shown_token(ui, &token, false),
            fill: shade(ACT_COLOR, ratio(value, max)),
            target: p == e.target as usize,
            marked: false,
        }
        .show(ui, || format!("token {token:?}\nactivation {value:.3}"));
    }
}

fn top_examples(ui: &mut Ui, file: &OwnedDashboardFile, fd: &FeatureData, s: &mut FeaturesState) {
    ui.horizontal(|ui| {
        ui.heading("Top activations");
        ui.add_space(16.0);
        ui.add(
            egui::Slider::new(&mut s.crop, 1..=max_crop(file))
                .logarithmic(true)
                .prefix("context ±")
                .text("tokens"),
        );
    });
    let shown = dfa_example(fd, s);
    let mut any = false;
    for (i, e) in fd.examples.iter().enumerate() {
        if e.group != ExampleGroup::Top {
            continue;
        }
        any = true;
        ui.horizontal_wrapped(|ui| {
            let dfa = ui
                .selectable_label(shown == Some(i), "DFA")
                .on_hover_text("show this example's direct feature attribution below");
            if dfa.clicked() {
                s.example = Some(i);
            }
            token_row(ui, file, e, s.crop, fd.max_activation);
        });
    }
    if !any {
        ui.label(RichText::new("no top examples").weak());
    }
}

/// The example the DFA panel shows: the selected one (a top example or an interval
/// group's), else the first top example.
fn dfa_example(fd: &FeatureData, s: &FeaturesState) -> Option<usize> {
    let has_dfa = |i: usize| fd.examples.get(i).is_some_and(|e| !e.dfa.is_empty());
    let top = |i: usize| has_dfa(i) && fd.examples[i].group == ExampleGroup::Top;
    s.example
        .filter(|&i| has_dfa(i))
        .or_else(|| (0..fd.examples.len()).find(|&i| top(i)))
}

fn dfa_panel(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    fd: &FeatureData,
    reads: &FeatureSources,
    s: &FeaturesState,
) {
    ui.heading("Direct feature attribution");
    ui.label(
        RichText::new(
            "How much each source position's value vector contributes to this feature's \
             pre-activation at the target (blue raises it, red lowers it).",
        )
        .weak(),
    );
    reads_from_line(ui, file, reads);
    let Some(e) = dfa_example(fd, s).map(|i| &fd.examples[i]) else {
        ui.label(RichText::new("no top example with attribution").weak());
        return;
    };
    let window = file
        .windows
        .get(e.window as usize)
        .map_or(&[][..], Vec::as_slice);
    let token = |p: usize| window.get(p).map_or_else(String::new, |&id| file.token(id));
    let target = format!("{:?}", token(e.target as usize));
    let group = match e.group {
        ExampleGroup::Top => String::new(),
        ExampleGroup::Interval(i) => format!("interval {i} example · "),
    };
    ui.label(format!(
        "{group}target position {} ({}) · activation {:.3}",
        e.target,
        drawable(ui, &TextStyle::Body, &target),
        e.activation
    ));
    dfa_row(ui, &e.dfa, e.target as usize, window, token);
    dfa_by_head_line(ui, &e.dfa_by_head);
}

/// A dense SAE's DFA by model head in words (nothing when `by_head` is empty), every head's
/// on hover.
pub(crate) fn dfa_by_head_line(ui: &mut Ui, by_head: &[f32]) {
    if by_head.is_empty() {
        return;
    }
    let all: Vec<String> = (by_head.iter().enumerate())
        .map(|(h, x)| format!("head {h}: {x:+.3}"))
        .collect();
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("by head").strong());
        ui.label(crate::dashboard::format::dfa_by_head_text(by_head, 4))
            .on_hover_text(format!(
                "each head's part of the DFA, its terms summed over the source positions (a \
                 dense SAE reads every head's hook_z; they add up to the DFA's sum)\n{}",
                all.join("\n")
            ));
    });
}

/// Writers' parts over several splits (over a prompt set, or a feature's top examples):
/// each one's mean shaded by sign and size, its name, its sd and range and, an earlier
/// head's, what it read from the source itself, BOS and elsewhere; then the others'
/// together.
pub(crate) fn writers_grid(
    ui: &mut Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    listed: &[&crate::live::WriterSpread],
    (rest, rest_sum): (usize, f32),
) {
    let scale = max_abs(listed.iter().map(|w| w.mean));
    egui::Grid::new(id)
        .num_columns(3)
        .spacing(vec2(10.0, 2.0))
        .show(ui, |ui| {
            for w in listed {
                let value = RichText::new(format!("{:+.4}", w.mean))
                    .monospace()
                    .background_color(signed_fill(w.mean, scale));
                ui.label(value);
                ui.label(w.writer.name());
                let mut said = format!("({:.4}) [{:+.4}, {:+.4}]", w.sd, w.min, w.max);
                if let Some([itself, bos, elsewhere]) = w.reading {
                    said += &format!(
                        "\nthe source itself {itself:+.4}, BOS {bos:+.4}, elsewhere \
                         {elsewhere:+.4}"
                    );
                }
                ui.label(RichText::new(said).monospace().weak());
                ui.end_row();
            }
            if rest > 0 {
                ui.label(RichText::new(format!("{rest_sum:+.4}")).monospace());
                ui.label(format!("the other {rest} together"));
                ui.end_row();
            }
        });
}

/// What wrote what the feature reads, over its top examples, when the file has it
/// ([`FeatureData::upstream`]); for a block-diagonal SAE's file without it, how to add it,
/// where the model is at hand a button that takes this feature's examples apart, and where
/// the app can rebuild the run's dashboards, a button that does.
fn upstream_panel(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    (f, fd): (usize, &FeatureData),
    s: &FeaturesState,
    ask: ExamplesAsk,
) -> Option<FeaturesAction> {
    ui.heading("What wrote what it reads");
    let Some(u) = &fd.upstream else {
        let top = (fd.examples.iter())
            .filter(|e| e.group == ExampleGroup::Top)
            .count();
        if file.meta.upstream.is_some() || top == 0 {
            ui.label(RichText::new("no top example to take apart").weak());
            return None;
        }
        let mut action = None;
        if let ExamplesAsk::Ask(_, asked) = ask {
            let asked = asked.filter(|a| (a.head, a.feature) == (s.head, f));
            let labels = (
                "Take its top examples apart",
                &*format!(
                    "runs the model on the {top} top examples' windows and splits each one's \
                     DFA from its largest source (`attn-saes upstream H,F --top-examples`; \
                     `dashboard --upstream` puts it in the file for every feature)"
                ),
                "taking its top examples apart…",
            );
            let (clicked, _) = answer_panel(ui, asked.map(|a| &a.state), labels, |ui, u| {
                upstream_lines(ui, file, (s.head, f), u);
                None::<()>
            });
            if clicked {
                action = Some(FeaturesAction::ExamplesSplit {
                    head: s.head,
                    feature: f,
                    examples: top_example_windows(&file.windows, fd),
                });
            }
            if asked.is_some_and(|a| matches!(a.state, Answer::Ready(_))) {
                return action;
            }
        }
        ui.label(
            RichText::new(
                "not in this file: `attn-saes dashboard --upstream` adds it (the windows \
                 holding top examples run through the model again)",
            )
            .weak(),
        );
        let build = s.can_build
            && ui
                .button("Build the dashboards with it")
                .on_hover_text(
                    "rebuilds this run's dashboards with what wrote what each feature reads \
                     over its top examples (`dashboard --upstream`): about as long again as \
                     Build dashboards now",
                )
                .clicked();
        return action.or(build.then_some(FeaturesAction::BuildWithUpstream));
    };
    upstream_lines(ui, file, (s.head, f), u);
    None
}

/// A feature's split over its top examples: what it is, the count and the DFA's mean, and
/// the writers' grid.
fn upstream_lines(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    (head, f): (usize, usize),
    u: &crate::dashboard::format::FeatureUpstream,
) {
    ui.label(
        RichText::new(format!(
            "Each top example's DFA from its largest source (the one marked above) split by \
             what wrote the residual stream entering layer {} there, its norm's scale held \
             (Your text's What wrote what it reads, on each example), then each writer's part \
             over the examples.",
            file.meta.hook_layer
        ))
        .weak(),
    );
    ui.label(format!(
        "Over its {} top examples: the DFA from the source, mean {:+.4}; by writer, the mean \
         (sd) [least, most]; an earlier head's, by where it read from:",
        u.examples, u.dfa
    ));
    let listed: Vec<&crate::live::WriterSpread> = u.writers.iter().collect();
    writers_grid(ui, ("upstream", head, f), &listed, u.rest);
}

/// Where the feature's top examples read from, in words, with the kinds explained on hover.
fn reads_from_line(ui: &mut Ui, file: &OwnedDashboardFile, reads: &FeatureSources) {
    let token = reads
        .token
        .map(|(id, n)| format!("; the top source token {:?} in {n}", file.token(id)))
        .unwrap_or_default();
    let text = format!("Reads from {}{token}", reads.describe());
    let help: Vec<String> = SourceKind::ALL
        .iter()
        .map(|k| format!("{}: {}", k.label(), k.description()))
        .collect();
    ui.label(RichText::new(drawable(ui, &TextStyle::Body, &text)).strong())
        .on_hover_text(format!(
            "the source position with the largest attribution, in each top example:\n{}",
            help.join("\n")
        ));
}

/// DFA by source position as coloured token chips (blue raises the feature, red lowers
/// it), the target outlined and the max-attribution source marked, then that source, its
/// kind (previous token, induction, ...) and the sum in words. `ids` are the window's
/// token ids, `token(p)` the text at position `p`.
pub(crate) fn dfa_row(
    ui: &mut Ui,
    dfa: &[f32],
    target: usize,
    ids: &[u32],
    token: impl Fn(usize) -> String,
) {
    let Some((argmax, top)) = crate::live::dfa_argmax(dfa) else {
        return;
    };
    let scale = max_abs(dfa.iter().copied());
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = vec2(0.0, 8.0);
        for (p, &value) in dfa.iter().enumerate() {
            let text = token(p);
            let color = if value < 0.0 { NEG_COLOR } else { POS_COLOR };
            Chip {
                text: &shown_token(ui, &text, false),
                fill: shade(color, ratio(value.abs(), scale)),
                target: p == target,
                marked: p == argmax,
            }
            .show(ui, || {
                format!("position {p}\ntoken {text:?}\nattribution {value:.3}")
            });
        }
    });
    let at = format!("{:?}", token(argmax));
    let kind = sources::classify(ids, target, argmax);
    ui.label(format!(
        "max attribution at position {argmax} ({}): {top:.3} · {}",
        drawable(ui, &TextStyle::Body, &at),
        kind.label()
    ))
    .on_hover_text(kind.description());
    let sum: f32 = dfa.iter().sum();
    ui.label(format!("sum of DFA {sum:.3}"))
        .on_hover_text("plus the encoder bias, this is the pre-activation at the target");
}

fn interval_groups(
    ui: &mut Ui,
    file: &OwnedDashboardFile,
    fd: &FeatureData,
    s: &mut FeaturesState,
) {
    let n = fd.interval_counts.len();
    if n == 0 {
        return;
    }
    ui.heading("Interval groups");
    let width = fd.max_activation / n as f32;
    for i in (0..n).rev() {
        let (lo, hi) = (i as f32 * width, (i + 1) as f32 * width);
        let title = format!(
            "Interval {i}: ({lo:.2}, {hi:.2}] · {} tokens",
            fd.interval_counts[i]
        );
        egui::CollapsingHeader::new(title)
            .id_salt(("interval", i))
            .show(ui, |ui| {
                let mut any = false;
                let shown = dfa_example(fd, s);
                for (j, e) in (fd.examples.iter().enumerate())
                    .filter(|(_, e)| e.group == ExampleGroup::Interval(i as u8))
                {
                    any = true;
                    ui.horizontal_wrapped(|ui| {
                        // Files from before interval examples had DFA have none to show.
                        if !e.dfa.is_empty()
                            && ui
                                .selectable_label(shown == Some(j), "DFA")
                                .on_hover_text(
                                    "show this example's direct feature attribution above",
                                )
                                .clicked()
                        {
                            s.example = Some(j);
                        }
                        token_row(ui, file, e, s.crop, fd.max_activation);
                    });
                }
                if !any {
                    ui.label(RichText::new("no examples").weak());
                }
            });
    }
}
