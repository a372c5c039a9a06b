//! Dashboard stage: the dashboard file, the contract between the builder and every viewer.
//!
//! Plain data and a reader/writer over bytes: no burn, no tokenizers, no threads, no file
//! system, so viewers (the desktop app and the wasm32 web page) depend on this alone.
//!
//! # Container
//! A safetensors file (pure Rust, bounded 100 MB header, offsets and shape products
//! checked by the `safetensors` crate before anything is allocated). Its `__metadata__`
//! has one entry, [`METADATA_KEY`]: a JSON object with `format` (= [`FORMAT_NAME`]),
//! `version` (= [`FORMAT_VERSION`]), `meta` (JSON text of the [`DashboardMeta`]: run,
//! model, settings, per-head summaries, metrics history, and an FNV-1a checksum of every
//! tensor) and `meta_checksum`. The same dashboard always gives the same bytes. Arrays
//! are binary: ids `u32`,
//! positions `u16`, activations along a context and DFA `f16`, the rest `f32`/`u32`.
//!
//! # Tensors
//! Global: `windows [n_windows, context]` (token ids of the context windows that examples
//! point into), `vocab_ids [n]`, `vocab_offsets [n + 1]`, `vocab_bytes [..]` (UTF-8 token
//! strings for every id the file uses, so no tokenizer is needed).
//!
//! Per head `h`, prefix `h{h}.`, with `m` features: `density`, `max_activation [m]`;
//! `activation_histogram [m, bins]` (nonzero activations, equal bins over `(0, max]`);
//! `interval_counts [m, intervals]` (active tokens per interval group bin); logit effects
//! `logit_top_ids`, `logit_top_values`, `logit_bottom_ids`, `logit_bottom_values [m, k]`,
//! `logit_histogram [m, bins]`, `logit_range [m, 2]`; examples, flattened over features
//! with `example_offsets [m + 1]`: `example_group` (`u8`: [`TOP_GROUP`] or the interval
//! index), `example_window`, `example_target`, `example_activation`, `example_row`; the
//! feature's activations along a window, sparse, stored once per (feature, window) and
//! shared by the examples from that window: `row_offsets [R + 1]`, `row_positions`,
//! `row_values`; DFA by source position `0..=target`
//! (every example; none for interval-group examples in files written before they had it):
//! `dfa_offsets [E + 1]`, `dfa_values`; when the meta records
//! [`Effects`], `effect [m]`: each feature's estimated effect on the loss (see
//! [`FeatureData::effect`]); when the meta says [`DashboardMeta::cofiring`], `cofiring [m,
//! K]` (u32, block x m + feature, `u32::MAX` unused) and `cofiring_r [m, K]` (f32): the
//! features each fires with ([`FeatureData::cofiring`]); when the meta says
//! [`DashboardMeta::decoder`], `decoder [m,
//! d_head]`: the SAE's decoder rows as the SAELens export folds them (each feature's unit
//! direction in its head's `hook_z` over the head's input scale), for the features closest
//! to one ([`HeadData::closest`]); when the meta has [`DashboardMeta::upstream`], what wrote
//! what each feature reads over its top examples ([`FeatureData::upstream`]):
//! `upstream_examples [m]` (u32, 0: none), `upstream_dfa [m]`, `upstream_rest [m]`,
//! `upstream_writer [m, K]` (u32, an index into the meta's writers, `u32::MAX` unused),
//! `upstream_spread [m, K, 4]` (mean, sd, least, most) and `upstream_reading [m, K, 3]`
//! (an earlier head's part read from the source itself, BOS and elsewhere; zeros for
//! other writers). Files without them read as before.
//!
//! A viewer parses the header once ([`DashboardFile::parse`]) and decodes one head at a
//! time ([`DashboardFile::head`]); every tensor is checked (dtype, shape, checksum, ranges,
//! finite values) as it is decoded. Nothing in a hostile file makes the reader panic; what
//! it allocates is bounded by the file's size (a head's examples expand their shared rows).

use std::collections::{BTreeMap, HashMap};

use half::f16;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::run_log::History;

pub const FORMAT_NAME: &str = "attn-saes-dashboard";
pub const FORMAT_VERSION: u32 = 1;
/// `example_group` of a top-activation example.
pub const TOP_GROUP: u8 = u8::MAX;

/// Limits a valid file stays within (checked before any allocation they size).
const MAX_HEADS: usize = 4096;
const MAX_FEATURES_PER_HEAD: usize = 1 << 20;
const MAX_CONTEXT: usize = u16::MAX as usize;
const MAX_BINS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("not a dashboard file: {0}")]
    Container(String),
    #[error("not an attn-saes dashboard (format '{0}')")]
    WrongFormat(String),
    #[error(
        "dashboard format version {found} is {}: this build reads version {FORMAT_VERSION}{}",
        if *found < FORMAT_VERSION { "older" } else { "newer" },
        if *found < FORMAT_VERSION { "; rebuild it with `attn-saes dashboard`" } else { "; update attn-saes" }
    )]
    Version { found: u32 },
    #[error("dashboard metadata: {0}")]
    Meta(String),
    #[error("dashboard tensor '{name}': {message}")]
    Tensor { name: String, message: String },
    #[error("head {head} does not exist (the dashboard has {n_heads})")]
    NoHead { head: usize, n_heads: usize },
}

/// What the container's error means for a file given as a dashboard, in words: a file of
/// another kind fails on its first bytes, a cut-short copy on its declared size.
fn container(e: safetensors::SafeTensorError) -> DashboardError {
    use safetensors::SafeTensorError as E;
    DashboardError::Container(match e {
        E::HeaderTooSmall
        | E::HeaderTooLarge
        | E::InvalidHeader(_)
        | E::InvalidHeaderDeserialization(_) => {
            "it does not start with a safetensors header, as dashboard files do".into()
        }
        E::InvalidHeaderLength => {
            "it is cut short within its header, or it is not a safetensors file".into()
        }
        E::MetadataIncompleteBuffer => "its size is not the one its header gives: cut short \
                                        or added to (an interrupted copy or download?)"
            .into(),
        e => e.to_string(),
    })
}

fn bad(name: &str, message: impl Into<String>) -> DashboardError {
    DashboardError::Tensor {
        name: name.to_string(),
        message: message.into(),
    }
}

/// The model the dashboards were built on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_model: usize,
    pub d_vocab: usize,
    pub bos_token_id: Option<u32>,
}

/// The SAE the dashboards describe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeInfo {
    pub n_heads: usize,
    pub d_head: usize,
    pub features_per_head: usize,
    /// `standard`, `topk`, `batchtopk` or `jumprelu`.
    pub architecture: String,
    /// Where it was loaded from.
    pub source: String,
}

/// How the dashboards were built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Top-activating examples per feature.
    pub top_k: usize,
    /// Interval groups: equal-width bins of `(0, max]`, and examples drawn from each.
    pub n_intervals: usize,
    pub per_interval: usize,
    /// Bins of the activation and logit histograms.
    pub histogram_bins: usize,
    /// Top and bottom logit tokens per feature.
    pub logit_k: usize,
    /// Seed of the interval-group sampling.
    pub seed: u64,
    /// Whether BOS positions count as tokens (examples, densities, histograms); end-of-text
    /// tokens never do.
    pub keep_bos: bool,
    /// Where in the corpus the dashboard windows start, in words.
    pub windows_from: String,
}

/// One head's summary: measured over the dashboard tokens, and from the run's last metrics
/// (absent when the SAE came without a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSummary {
    pub head: usize,
    /// Mean active features per token, over the dashboard tokens.
    pub l0: f64,
    pub explained_variance: f64,
    /// Features that never fired on the dashboard tokens.
    pub never_fired: usize,
    /// `(log10 density bin centre, features)`, over live features.
    pub density_histogram: Vec<(f64, usize)>,
    pub run_l0: Option<f64>,
    pub run_explained_variance: Option<f64>,
    pub run_dead: Option<usize>,
    pub ce_score: Option<f64>,
    /// Its features by where they read from ([`super::sources::head_sources`]); absent in
    /// files written before it (a viewer computes it from the head instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_from: Option<super::sources::HeadSources>,
    /// Where it attends on the dashboard tokens, by the same kinds of source; absent in
    /// files written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<super::sources::HeadAttention>,
    /// Its attention on repeated random tokens (`lm::head_scores`, the model's alone);
    /// absent in files written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_tokens: Option<super::sources::HeadScores>,
}

/// One file the dashboards were built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
}

/// The model's and the SAE's files (as a browser loads them: a `.gguf` or `config.json` +
/// `model.safetensors` + `tokenizer.json`; `sae_config.json` + `sae.safetensors`), so that
/// a viewer can check it runs the same ones: the web page's Your text refuses a file whose
/// sha256 differs from the one recorded here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuiltFrom {
    pub model: Vec<FileRecord>,
    pub sae: Vec<FileRecord>,
}

/// Everything in the file besides the arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardMeta {
    /// The files of the model and SAE, when the builder could read them all (absent in
    /// files written before it was recorded, and for `.pth` models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<BuiltFrom>,
    pub model: ModelInfo,
    pub hook_layer: usize,
    /// `TransformerLens` or `Raw`.
    pub z_convention: String,
    pub sae: SaeInfo,
    /// The training run's config (`config.toml` as JSON), if built from a run.
    pub run_config: Option<serde_json::Value>,
    pub settings: Settings,
    pub context_size: usize,
    /// Context windows scanned and tokens counted (BOS excluded unless `keep_bos`, and
    /// end-of-text tokens).
    pub n_windows_scanned: usize,
    pub n_tokens: u64,
    pub heads: Vec<HeadSummary>,
    /// The run's metrics (steps subsampled), for training curves without the run.
    pub history: History,
    /// Where the features' effects on the loss were estimated, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<Effects>,
    /// Whether each head holds its features' decoder rows ([`HeadData::decoder`]; files
    /// written before them do not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decoder: bool,
    /// Whether a dense SAE's examples with DFA also hold it by model head
    /// ([`Example::dfa_by_head`]; files written before them do not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dfa_by_head: bool,
    /// Whether each feature lists the features it fires with ([`FeatureData::cofiring`];
    /// files written before them do not, nor those whose builder gave up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cofiring: bool,
    /// When the lists of the features each fires with are over fewer tokens than the
    /// dashboard's (batches of windows spread over them, as many as fit
    /// [`COFIRING_MAX_ACTIVATIONS`] and [`COFIRING_MAX_PRODUCTS`]): how many, which, and the
    /// limit reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cofiring_limit: Option<CofiringLimit>,
    /// Whether each feature has what wrote what it reads over its top examples
    /// ([`FeatureData::upstream`]; files written before it, and dense SAEs', do not), and
    /// the writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamInfo>,
}

/// The co-firing lists over fewer tokens than the dashboard's ([`DashboardMeta::cofiring_limit`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CofiringLimit {
    /// The counted tokens the lists are over (0: no lists).
    pub tokens: u64,
    /// The limit a batch of windows would have passed.
    pub why: String,
    /// The lists are over every `every`-th batch of `windows_per_batch` windows, from the
    /// first (files from before 2026-12 took the first batches that fit: `every` 1).
    #[serde(default = "one")]
    pub every: u64,
    #[serde(default)]
    pub windows_per_batch: u64,
}

fn one() -> u64 {
    1
}

impl CofiringLimit {
    /// Which of the dashboard's `n_tokens` tokens the lists are over, in words.
    pub fn tokens_text(&self, n_tokens: u64) -> String {
        let (tokens, why) = (self.tokens, &self.why);
        match self.every {
            0 | 1 => format!("the first {tokens} of the {n_tokens} dashboard tokens ({why})"),
            every => format!(
                "{tokens} of the {n_tokens} dashboard tokens, those of every {} batch of {} \
                 windows ({why})",
                ordinal(every),
                self.windows_per_batch
            ),
        }
    }
}

/// `2nd`, `4th`, `32nd`, `11th`.
fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Features listed per feature in [`FeatureData::cofiring`] (`h{h}.cofiring [m, K]`, unused
/// slots `u32::MAX`).
pub const COFIRING_K: usize = 5;
/// The fewest tokens a feature must fire on to be listed in [`FeatureData::cofiring`], or
/// to have a list.
pub const COFIRING_MIN_TOKENS: u64 = 5;
/// The most active (token, feature) pairs the co-firing builder keeps: 16 bytes each, by
/// token and by feature (268 MB at this size).
pub const COFIRING_MAX_ACTIVATIONS: usize = 1 << 24;
/// The most products of two activations the co-firing builder sums (the sum over tokens of
/// the square of the features active on each).
pub const COFIRING_MAX_PRODUCTS: u64 = 20_000_000_000;

/// Writers listed per feature in [`FeatureData::upstream`] (`h{h}.upstream_writer [m, K]`).
pub const UPSTREAM_LISTED: usize = 12;

/// What [`FeatureData::upstream`] is taken over: each top example's DFA from the source the
/// dashboards mark (its largest attribution), split by what wrote the residual stream
/// entering the hooked layer there (`attn-saes upstream --from largest` over the examples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamInfo {
    /// Every writer of that stream, in the model's order (what `upstream_writer` indexes).
    pub writers: Vec<crate::live::Writer>,
}

/// One feature's [`UpstreamInfo`] split, over its top examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureUpstream {
    /// The top examples taken apart.
    pub examples: u32,
    /// The mean over them of the DFA from the source taken apart (the sum of every
    /// writer's mean).
    pub dfa: f32,
    /// The writers with the largest means (by size), largest first, at most
    /// [`UPSTREAM_LISTED`], each with its spread over the examples.
    pub writers: Vec<crate::live::WriterSpread>,
    /// The others: how many, and the sum of their means.
    pub rest: (usize, f32),
}

impl FeatureUpstream {
    /// The split a file holds, from a spread over the feature's top examples taken apart
    /// from their largest sources (`live::upstream_on_examples`; not followed): what the
    /// viewers show for a file built without it.
    pub fn of_spread(spread: &crate::live::PromptsSpread) -> Self {
        let (listed, rest) = crate::live::strongest_of(&spread.writers, UPSTREAM_LISTED);
        Self {
            examples: spread.prompts.len() as u32,
            dfa: spread.mean(|p| p.upstream.dfa),
            writers: listed.into_iter().cloned().collect(),
            rest,
        }
    }
}

/// The windows each feature's [`FeatureData::effect`] is summed over: the dashboard's first
/// `windows`, `tokens` tokens in all (as `attn-saes rank` counts them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    pub windows: usize,
    pub tokens: u64,
}

impl Effects {
    /// An effect summed over these windows, per 1000 tokens.
    pub fn per_thousand(&self, effect: f32) -> f64 {
        effect as f64 * 1000.0 / self.tokens.max(1) as f64
    }
}

/// Which group an example belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleGroup {
    Top,
    Interval(u8),
}

/// One example: a context window, the target position and the feature there.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub group: ExampleGroup,
    /// Index into [`Dashboard::windows`].
    pub window: u32,
    pub target: u16,
    /// The feature's activation at the target.
    pub activation: f32,
    /// The feature's nonzero activations along the window, `(position, value)` by position.
    pub activations: Vec<(u16, f32)>,
    /// DFA by source position `0..=target`; empty for an interval-group example of a file
    /// written before those had it.
    pub dfa: Vec<f32>,
    /// A dense SAE's DFA summed over the sources, by model head (each head's terms: they add
    /// up to the sum of `dfa`); empty for a block-diagonal SAE, an example without DFA or a
    /// file written before these.
    pub dfa_by_head: Vec<f32>,
}

/// One feature's panels.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureData {
    pub density: f32,
    pub max_activation: f32,
    pub activation_histogram: Vec<u32>,
    pub interval_counts: Vec<u32>,
    pub logit_top: Vec<(u32, f32)>,
    pub logit_bottom: Vec<(u32, f32)>,
    pub logit_histogram: Vec<u32>,
    pub logit_range: (f32, f32),
    /// Top examples (by activation), then interval groups in bin order.
    pub examples: Vec<Example>,
    /// How much the summed next-token loss over the windows [`DashboardMeta::effects`]
    /// names would rise without the feature, to first order (`live::rank_features`), when
    /// the file has it.
    pub effect: Option<f32>,
    /// The features, of any head, whose activations go with this one's most over the
    /// scanned tokens: `(block x features_per_head + feature, Pearson r)`, at most
    /// [`COFIRING_K`], positive r only, highest first, among features that fired on at
    /// least [`COFIRING_MIN_TOKENS`] tokens; empty when the file has none
    /// ([`DashboardMeta::cofiring`]) or the feature fired on fewer.
    pub cofiring: Vec<(u32, f32)>,
    /// What wrote what it reads, over its top examples, when the file has it
    /// ([`DashboardMeta::upstream`]) and the feature has top examples.
    pub upstream: Option<FeatureUpstream>,
}

/// One head's features.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadData {
    pub features: Vec<FeatureData>,
    /// The SAE's decoder rows, `[m, d_head]`, folded as the SAELens export has them (unit
    /// direction over the head's input scale), when the file holds them.
    pub decoder: Option<Vec<f32>>,
}

impl FeatureData {
    /// For a dense SAE's feature with DFA by head ([`Example::dfa_by_head`]): each model
    /// head's share of its top examples' DFA, by size (`sum |part|` over the top examples,
    /// over the same for all heads), which says which heads' hook_z it reads; none without
    /// DFA by head.
    pub fn read_shares(&self) -> Option<Vec<f32>> {
        let mut parts: Vec<f64> = Vec::new();
        let top = (self.examples.iter()).filter(|e| e.group == ExampleGroup::Top);
        for by_head in top.map(|e| &e.dfa_by_head).filter(|b| !b.is_empty()) {
            parts.resize(by_head.len(), 0.0);
            for (p, &x) in parts.iter_mut().zip(by_head) {
                *p += (x as f64).abs();
            }
        }
        let total: f64 = parts.iter().sum();
        (total > 0.0).then(|| parts.iter().map(|p| (p / total) as f32).collect())
    }
}

impl HeadData {
    /// The `n` features of this head whose decoder directions are closest to `feature`'s
    /// (cosine similarity, highest first, the lower index on a tie; `feature` itself left
    /// out; a zero row has cosine 0 with every other), or none without decoder rows.
    pub fn closest(&self, feature: usize, n: usize) -> Vec<(usize, f32)> {
        match (self.decoder.as_deref(), self.decoder_row(feature)) {
            (Some(rows), Some(row)) => closest_rows(row, rows, Some(feature), n),
            _ => Vec::new(),
        }
    }

    /// `feature`'s decoder row, when the file holds the rows (and they divide into one per
    /// feature).
    pub fn decoder_row(&self, feature: usize) -> Option<&[f32]> {
        let m = self.features.len();
        let rows = self.decoder.as_deref()?;
        if m == 0 || rows.is_empty() || !rows.len().is_multiple_of(m) {
            return None;
        }
        let d = rows.len() / m;
        rows.get(feature * d..(feature + 1) * d)
    }

    /// For a dense SAE's block over `heads` heads ([`DashboardMeta::dense_heads`]): the
    /// share of `feature`'s decoder row's squared norm in each head's part, which says which
    /// heads' outputs the feature writes (SAEDashboard's head attribution weights); none
    /// without decoder rows, or when they do not divide into `heads` parts.
    pub fn head_shares(&self, feature: usize, heads: usize) -> Option<Vec<f32>> {
        let row = self.decoder_row(feature)?;
        if heads == 0 || !row.len().is_multiple_of(heads) {
            return None;
        }
        let parts: Vec<f64> = row
            .chunks_exact(row.len() / heads)
            .map(|p| p.iter().map(|&x| x as f64 * x as f64).sum())
            .collect();
        let total: f64 = parts.iter().sum();
        Some(
            parts
                .into_iter()
                .map(|p| if total > 0.0 { (p / total) as f32 } else { 0.0 })
                .collect(),
        )
    }

    /// The model head with the largest of [`Self::head_shares`] (the lower on a tie): the
    /// head a dense SAE's feature writes most.
    pub fn writes_most(&self, feature: usize, heads: usize) -> Option<usize> {
        let shares = self.head_shares(feature, heads)?;
        (0..shares.len())
            .rev()
            .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
    }
}

/// Head shares ([`HeadData::head_shares`]) in words: the heads with the largest shares,
/// largest first, until `shown` heads or 90% of the norm (`h3 41% · h7 22%`).
pub fn head_shares_text(shares: &[f32], shown: usize) -> String {
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]).then(a.cmp(&b)));
    let mut parts = Vec::new();
    let mut covered = 0.0;
    for &h in order.iter().take(shown.max(1)) {
        parts.push(format!("h{h} {:.0}%", 100.0 * shares[h]));
        covered += shares[h];
        if covered >= 0.9 {
            break;
        }
    }
    parts.join(" · ")
}

/// A dense SAE's DFA by head in words: the `shown` heads with the largest parts (by size,
/// the lower head first on a tie) that are not 0, signed, `h3 +12.10 · h7 -0.80`; `-` when
/// every part is 0.
pub fn dfa_by_head_text(by_head: &[f32], shown: usize) -> String {
    let mut order: Vec<usize> = (0..by_head.len()).filter(|&h| by_head[h] != 0.0).collect();
    order.sort_by(|&a, &b| {
        by_head[b]
            .abs()
            .total_cmp(&by_head[a].abs())
            .then(a.cmp(&b))
    });
    let parts: Vec<String> = (order.iter().take(shown))
        .map(|&h| format!("h{h} {:+.3}", by_head[h]))
        .collect();
    match parts.is_empty() {
        true => "-".to_string(),
        false => parts.join(" · "),
    }
}

/// Whether an SAE of `blocks` blocks of `width` is one dense block over the hook_z of
/// `n_heads` (more than one) heads of `d_head`, side by side.
pub fn dense_over(blocks: usize, width: usize, n_heads: usize, d_head: usize) -> bool {
    blocks == 1 && n_heads > 1 && width == n_heads * d_head
}

/// The Euclidean norm of `v`, in f64.
pub fn row_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

/// `x . y` (in f64) over `norms`, the product of the two rows' norms: their cosine when
/// `x` and `y` are the whole rows, or a part's share of it; 0 when `norms` is 0.
pub fn cosine_over(x: &[f32], y: &[f32], norms: f64) -> f32 {
    let dot: f64 = x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum();
    if norms > 0.0 {
        (dot / norms) as f32
    } else {
        0.0
    }
}

/// The `n` rows of `rows` (`[m, row.len()]`, flat) whose directions are closest to `row`
/// by cosine similarity (in f64), closest first, the lower index first on a tie; `skip`
/// is left out. A zero row has cosine 0.
pub fn closest_rows(row: &[f32], rows: &[f32], skip: Option<usize>, n: usize) -> Vec<(usize, f32)> {
    let d = row.len();
    if d == 0 || !rows.len().is_multiple_of(d) {
        return Vec::new();
    }
    let nx = row_norm(row);
    let mut cos: Vec<(usize, f32)> = rows
        .chunks_exact(d)
        .enumerate()
        .filter(|&(f, _)| Some(f) != skip)
        .map(|(f, y)| (f, cosine_over(row, y, nx * row_norm(y))))
        .collect();
    cos.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    cos.truncate(n);
    cos
}

/// What a path-like string shows on the web: an absolute path (`/home/me/m.gguf`,
/// `C:\models\m.gguf`, `\\server\m`) or one from the home directory (`~/m.gguf`) becomes
/// its last component; anything else (a hub id such as `ORG/NAME`, a relative path) stays.
pub fn published_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let drive = bytes.len() > 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'/' | b'\\');
    let local = drive || name.starts_with(['/', '\\', '~']);
    match name.rsplit(['/', '\\']).find(|part| !part.is_empty()) {
        Some(last) if local => last.to_string(),
        _ => name.to_string(),
    }
}

impl DashboardMeta {
    /// The tokens the co-firing lists are over, in words.
    pub fn cofiring_tokens_text(&self) -> String {
        match &self.cofiring_limit {
            Some(limit) => limit.tokens_text(self.n_tokens),
            None => "the dashboard tokens".into(),
        }
    }

    /// The number of model heads when the SAE is dense (one block reading every head's
    /// hook_z side by side); none for a block-diagonal SAE (one block per head).
    pub fn dense_heads(&self) -> Option<usize> {
        let (sae, model) = (&self.sae, &self.model);
        dense_over(sae.n_heads, sae.d_head, model.n_heads, model.d_head).then_some(model.n_heads)
    }

    /// The SAE's shape in words: `9 heads x 512 features`, or `one dense block over 9
    /// heads, 4608 features`.
    pub fn shape_text(&self) -> String {
        let m = self.sae.features_per_head;
        match self.dense_heads() {
            Some(heads) => format!("one dense block over {heads} heads, {m} features"),
            None => format!("{} heads x {m} features", self.sae.n_heads),
        }
    }

    /// The block and feature of a feature's index over all blocks (`block x m + feature`,
    /// as [`FeatureData::cofiring`] names them).
    pub fn block_feature(&self, global: usize) -> (usize, usize) {
        let m = self.sae.features_per_head.max(1);
        (global / m, global % m)
    }

    /// What the SAE's block `h` is called: `head 3`, or `all heads` for a dense SAE's.
    pub fn block_name(&self, h: usize) -> String {
        match self.dense_heads() {
            Some(_) => "all heads".to_string(),
            None => format!("head {h}"),
        }
    }

    /// The directory of the SAE this dashboard was built from, for the dashboard file at
    /// `file`. A relative path (as files built before the path was recorded absolute hold:
    /// `runs/latest/sae`, relative to where `dashboard` ran) is found from where the file
    /// is when the file still sits where it was written beside it
    /// (`/work/runs/latest/dashboard.safetensors` gives `/work/runs/latest/sae`), so that it
    /// opens from any directory; else it stays as recorded.
    pub fn sae_dir(&self, file: &std::path::Path) -> std::path::PathBuf {
        let recorded = std::path::PathBuf::from(&self.sae.source);
        if recorded.is_absolute() {
            return recorded;
        }
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let Ok(dir) = std::path::absolute(dir) else {
            return recorded;
        };
        match (recorded.parent(), recorded.file_name()) {
            (Some(parent), Some(name)) if dir.ends_with(parent) => dir.join(name),
            _ => recorded,
        }
    }

    /// This metadata as a page on the web may show it ([`published_name`]): the model's
    /// name, the SAE's source and every string of the run's config without the local
    /// directories they name.
    pub fn published(&self) -> Self {
        fn strings(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::String(s) => *s = published_name(s),
                serde_json::Value::Array(items) => items.iter_mut().for_each(strings),
                serde_json::Value::Object(map) => map.values_mut().for_each(strings),
                _ => {}
            }
        }
        let mut meta = self.clone();
        meta.model.name = published_name(&meta.model.name);
        meta.sae.source = published_name(&meta.sae.source);
        if let Some(config) = &mut meta.run_config {
            strings(config);
        }
        meta
    }
}

/// A whole dashboard in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub meta: DashboardMeta,
    /// Token ids of the windows examples point into, `[n_windows][context_size]`.
    pub windows: Vec<Vec<u32>>,
    pub token_strings: BTreeMap<u32, String>,
    pub heads: Vec<HeadData>,
}

/// FNV-1a over bytes: catches bit flips in arrays whose every value would be valid.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------
// Writing

/// Arrays in their file dtype, as little-endian bytes.
struct Arrays(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Arrays {
    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
        self.0.push((name, dtype, shape, bytes));
    }
    fn u8(&mut self, name: String, v: Vec<u8>, shape: Vec<usize>) {
        self.push(name, Dtype::U8, shape, v);
    }
    fn u16(&mut self, name: String, v: &[u16], shape: Vec<usize>) {
        self.push(
            name,
            Dtype::U16,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    }
    fn u32(&mut self, name: String, v: &[u32], shape: Vec<usize>) {
        self.push(
            name,
            Dtype::U32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    }
    fn f32(&mut self, name: String, v: &[f32], shape: Vec<usize>) {
        self.push(
            name,
            Dtype::F32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    }
    fn f16(&mut self, name: String, v: &[f32], shape: Vec<usize>) {
        let bytes = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        self.push(name, Dtype::F16, shape, bytes);
    }
}

/// Offsets `[0, n0, n0 + n1, ...]` of consecutive runs.
fn offsets(lengths: impl Iterator<Item = usize>) -> Vec<u32> {
    let mut out = vec![0u32];
    let mut total = 0u32;
    for n in lengths {
        total += n as u32;
        out.push(total);
    }
    out
}

impl Dashboard {
    /// Rounds the values the file stores as f16 (activations along windows, DFA), so that
    /// `Dashboard::from_bytes(&d.to_bytes()?)? == d.quantized()`.
    pub fn quantized(&self) -> Self {
        let q = |v: f32| f16::from_f32(v).to_f32();
        let mut d = self.clone();
        for head in &mut d.heads {
            for f in &mut head.features {
                for e in &mut f.examples {
                    e.activations.iter_mut().for_each(|(_, v)| *v = q(*v));
                    e.dfa.iter_mut().for_each(|v| *v = q(*v));
                    e.dfa_by_head.iter_mut().for_each(|v| *v = q(*v));
                }
            }
        }
        d
    }

    /// Serialises the dashboard (see the module docs for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, DashboardError> {
        let meta = &self.meta;
        let (t, m) = (meta.context_size, meta.sae.features_per_head);
        let k = meta.settings.logit_k;
        let bins = meta.settings.histogram_bins;
        let ni = meta.settings.n_intervals;
        let mut a = Arrays(Vec::new());
        let flat_windows: Vec<u32> = self.windows.iter().flatten().copied().collect();
        a.u32("windows".into(), &flat_windows, vec![self.windows.len(), t]);
        let ids: Vec<u32> = self.token_strings.keys().copied().collect();
        let strs: Vec<&String> = self.token_strings.values().collect();
        a.u32("vocab_ids".into(), &ids, vec![ids.len()]);
        let vo = offsets(strs.iter().map(|s| s.len()));
        a.u32("vocab_offsets".into(), &vo, vec![vo.len()]);
        let vb: Vec<u8> = strs.iter().flat_map(|s| s.bytes()).collect();
        let n = vb.len();
        a.u8("vocab_bytes".into(), vb, vec![n]);
        for (h, head) in self.heads.iter().enumerate() {
            let p = |name: &str| format!("h{h}.{name}");
            let fs = &head.features;
            if fs.len() != m {
                return Err(bad(
                    &p("features"),
                    format!("{} features, expected {m}", fs.len()),
                ));
            }
            let col = |get: &dyn Fn(&FeatureData) -> f32| fs.iter().map(get).collect::<Vec<_>>();
            a.f32(p("density"), &col(&|f| f.density), vec![m]);
            a.f32(p("max_activation"), &col(&|f| f.max_activation), vec![m]);
            let cat = |get: &dyn Fn(&FeatureData) -> &Vec<u32>, width: usize, name: &str| {
                let v: Vec<u32> = fs.iter().flat_map(|f| get(f).iter().copied()).collect();
                if v.len() != m * width {
                    return Err(bad(
                        name,
                        format!("{} values, expected {}", v.len(), m * width),
                    ));
                }
                Ok(v)
            };
            let v = cat(
                &|f| &f.activation_histogram,
                bins,
                &p("activation_histogram"),
            )?;
            a.u32(p("activation_histogram"), &v, vec![m, bins]);
            let v = cat(&|f| &f.interval_counts, ni, &p("interval_counts"))?;
            a.u32(p("interval_counts"), &v, vec![m, ni]);
            let v = cat(&|f| &f.logit_histogram, bins, &p("logit_histogram"))?;
            a.u32(p("logit_histogram"), &v, vec![m, bins]);
            for (name, get) in [
                (
                    "logit_top",
                    (|f: &FeatureData| &f.logit_top) as fn(&FeatureData) -> &Vec<(u32, f32)>,
                ),
                ("logit_bottom", |f: &FeatureData| &f.logit_bottom),
            ] {
                if fs.iter().any(|f| get(f).len() != k) {
                    return Err(bad(&p(name), format!("each feature needs {k} tokens")));
                }
                let ids: Vec<u32> = fs.iter().flat_map(|f| get(f).iter().map(|x| x.0)).collect();
                let vals: Vec<f32> = fs.iter().flat_map(|f| get(f).iter().map(|x| x.1)).collect();
                a.u32(p(&format!("{name}_ids")), &ids, vec![m, k]);
                a.f32(p(&format!("{name}_values")), &vals, vec![m, k]);
            }
            let range: Vec<f32> = fs
                .iter()
                .flat_map(|f| [f.logit_range.0, f.logit_range.1])
                .collect();
            a.f32(p("logit_range"), &range, vec![m, 2]);
            let examples: Vec<&Example> = fs.iter().flat_map(|f| &f.examples).collect();
            let e = examples.len();
            let eo = offsets(fs.iter().map(|f| f.examples.len()));
            a.u32(p("example_offsets"), &eo, vec![m + 1]);
            let groups: Vec<u8> = examples
                .iter()
                .map(|x| match x.group {
                    ExampleGroup::Top => TOP_GROUP,
                    ExampleGroup::Interval(i) => i,
                })
                .collect();
            a.u8(p("example_group"), groups, vec![e]);
            let v: Vec<u32> = examples.iter().map(|x| x.window).collect();
            a.u32(p("example_window"), &v, vec![e]);
            let v: Vec<u16> = examples.iter().map(|x| x.target).collect();
            a.u16(p("example_target"), &v, vec![e]);
            let v: Vec<f32> = examples.iter().map(|x| x.activation).collect();
            a.f32(p("example_activation"), &v, vec![e]);
            // A feature's activations along a window are stored once however many of its
            // examples come from that window.
            let mut rows: Vec<&Vec<(u16, f32)>> = Vec::new();
            let mut example_row = Vec::with_capacity(e);
            for f in fs {
                let mut seen: Vec<(u32, u32)> = Vec::new(); // (window, row)
                for x in &f.examples {
                    let known = seen
                        .iter()
                        .find(|(w, r)| *w == x.window && *rows[*r as usize] == x.activations);
                    let row = match known {
                        Some(&(_, r)) => r,
                        None => {
                            rows.push(&x.activations);
                            let r = (rows.len() - 1) as u32;
                            seen.push((x.window, r));
                            r
                        }
                    };
                    example_row.push(row);
                }
            }
            a.u32(p("example_row"), &example_row, vec![e]);
            let ro = offsets(rows.iter().map(|r| r.len()));
            a.u32(p("row_offsets"), &ro, vec![ro.len()]);
            let pos: Vec<u16> = rows.iter().flat_map(|r| r.iter().map(|a| a.0)).collect();
            let vals: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|a| a.1)).collect();
            a.u16(p("row_positions"), &pos, vec![pos.len()]);
            a.f16(p("row_values"), &vals, vec![vals.len()]);
            let dof = offsets(examples.iter().map(|x| x.dfa.len()));
            a.u32(p("dfa_offsets"), &dof, vec![e + 1]);
            let dfa: Vec<f32> = examples
                .iter()
                .flat_map(|x| x.dfa.iter().copied())
                .collect();
            a.f16(p("dfa_values"), &dfa, vec![dfa.len()]);
            if meta.dfa_by_head {
                // Each example's row; zeros where it has no DFA.
                let r = (meta.dense_heads())
                    .ok_or_else(|| bad(&p("dfa_by_head"), "DFA by head of a per-head SAE"))?;
                let mut by_head = vec![0f32; e * r];
                for (row, x) in by_head.chunks_exact_mut(r).zip(examples.iter()) {
                    match x.dfa_by_head.len() {
                        0 if x.dfa.is_empty() => {}
                        n if n == r => row.copy_from_slice(&x.dfa_by_head),
                        n => return Err(bad(&p("dfa_by_head"), format!("{n} heads, not {r}"))),
                    }
                }
                a.f16(p("dfa_by_head"), &by_head, vec![e, r]);
            }
            if meta.effects.is_some() {
                let effect: Option<Vec<f32>> = fs.iter().map(|f| f.effect).collect();
                let effect = effect.ok_or_else(|| bad(&p("effect"), "a feature has no effect"))?;
                a.f32(p("effect"), &effect, vec![m]);
            }
            if meta.cofiring {
                let mut ids = vec![u32::MAX; m * COFIRING_K];
                let mut rs = vec![0f32; m * COFIRING_K];
                for (f, fd) in fs.iter().enumerate() {
                    if fd.cofiring.len() > COFIRING_K {
                        return Err(bad(&p("cofiring"), format!("more than {COFIRING_K}")));
                    }
                    for (k, &(g, r)) in fd.cofiring.iter().enumerate() {
                        ids[f * COFIRING_K + k] = g;
                        rs[f * COFIRING_K + k] = r;
                    }
                }
                a.u32(p("cofiring"), &ids, vec![m, COFIRING_K]);
                a.f32(p("cofiring_r"), &rs, vec![m, COFIRING_K]);
            }
            if let Some(info) = &meta.upstream {
                let k = UPSTREAM_LISTED;
                let (mut n, mut dfa, mut rest) = (vec![0u32; m], vec![0f32; m], vec![0f32; m]);
                let mut ids = vec![u32::MAX; m * k];
                let (mut spread, mut reading) = (vec![0f32; m * k * 4], vec![0f32; m * k * 3]);
                for (f, fd) in fs.iter().enumerate() {
                    let Some(u) = &fd.upstream else { continue };
                    if u.writers.len() > k {
                        return Err(bad(&p("upstream_writer"), "more writers than listed"));
                    }
                    if u.examples == 0 {
                        return Err(bad(&p("upstream_examples"), "a split of no examples"));
                    }
                    (n[f], dfa[f], rest[f]) = (u.examples, u.dfa, u.rest.1);
                    for (j, w) in u.writers.iter().enumerate() {
                        let at = f * k + j;
                        let id = (info.writers.iter().position(|x| *x == w.writer))
                            .ok_or_else(|| bad(&p("upstream_writer"), "a writer not listed"))?;
                        ids[at] = id as u32;
                        spread[at * 4..][..4].copy_from_slice(&[w.mean, w.sd, w.min, w.max]);
                        reading[at * 3..][..3].copy_from_slice(&w.reading.unwrap_or_default());
                    }
                }
                a.u32(p("upstream_examples"), &n, vec![m]);
                a.f32(p("upstream_dfa"), &dfa, vec![m]);
                a.f32(p("upstream_rest"), &rest, vec![m]);
                a.u32(p("upstream_writer"), &ids, vec![m, k]);
                a.f32(p("upstream_spread"), &spread, vec![m, k, 4]);
                a.f32(p("upstream_reading"), &reading, vec![m, k, 3]);
            }
            if meta.decoder {
                let d = meta.sae.d_head;
                let rows = (head.decoder.as_ref())
                    .filter(|r| r.len() == m * d)
                    .ok_or_else(|| bad(&p("decoder"), format!("not {m} x {d} decoder rows")))?;
                a.f32(p("decoder"), rows, vec![m, d]);
            }
        }
        let checksums: BTreeMap<String, u64> =
            a.0.iter()
                .map(|(name, _, _, bytes)| (name.clone(), checksum(bytes)))
                .collect();
        let meta_json = serde_json::to_string(&FileMeta {
            meta: meta.clone(),
            checksums,
        })
        .map_err(|e| DashboardError::Meta(e.to_string()))?;
        let envelope = Envelope {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            meta_checksum: checksum(meta_json.as_bytes()),
            meta: meta_json,
        };
        // One metadata entry: safetensors keeps metadata in a HashMap, whose order would
        // make the bytes differ from one write to the next.
        let mut info = HashMap::new();
        info.insert(
            METADATA_KEY.to_string(),
            serde_json::to_string(&envelope).map_err(|e| DashboardError::Meta(e.to_string()))?,
        );
        let views =
            a.0.iter()
                .map(|(name, dtype, shape, bytes)| {
                    TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(container)?;
        safetensors::serialize(views, Some(info)).map_err(container)
    }

    /// Parses and checks a whole dashboard.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DashboardError> {
        let file = DashboardFile::parse(bytes)?;
        let heads = (0..file.meta.sae.n_heads)
            .map(|h| file.head(h))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            meta: file.meta,
            windows: file.windows,
            token_strings: file.token_strings,
            heads,
        })
    }

    /// The string of a token id (`<id>` if the file has none).
    pub fn token(&self, id: u32) -> String {
        token_string(&self.token_strings, id)
    }
}

fn token_string(strings: &BTreeMap<u32, String>, id: u32) -> String {
    strings
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("<{id}>"))
}

/// The safetensors `__metadata__` key holding the `Envelope`.
pub const METADATA_KEY: &str = "attn_saes_dashboard";

/// The metadata entry: format and version first (read before anything else), then the
/// [`FileMeta`] JSON text and its checksum.
#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    meta_checksum: u64,
    meta: String,
}

/// Format and version alone, readable whatever else a future version changes.
#[derive(Deserialize)]
struct FormatTag {
    format: String,
    version: u32,
}

/// What `meta` holds: the metadata and the tensors' checksums.
#[derive(Serialize, Deserialize)]
struct FileMeta {
    meta: DashboardMeta,
    checksums: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------------------
// Reading

/// A parsed dashboard file: metadata, windows and token strings decoded, heads on demand.
pub struct DashboardFile<'a> {
    pub meta: DashboardMeta,
    pub windows: Vec<Vec<u32>>,
    pub token_strings: BTreeMap<u32, String>,
    tensors: SafeTensors<'a>,
    checksums: BTreeMap<String, u64>,
}

/// A dashboard file that owns its bytes: metadata, windows and token strings decoded once,
/// each head decoded (and checked) when asked for. What a viewer keeps open.
pub struct OwnedDashboardFile {
    bytes: Vec<u8>,
    pub meta: DashboardMeta,
    pub windows: Vec<Vec<u32>>,
    pub token_strings: BTreeMap<u32, String>,
    checksums: BTreeMap<String, u64>,
}

impl OwnedDashboardFile {
    /// Reads the dashboard file at `path` and checks it as [`Self::new`] does; an error names
    /// the file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::new(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Checks the header and global arrays (as [`DashboardFile::parse`]) and keeps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Result<Self, DashboardError> {
        let DashboardFile {
            meta,
            windows,
            token_strings,
            checksums,
            ..
        } = DashboardFile::parse(&bytes)?;
        Ok(Self {
            bytes,
            meta,
            windows,
            token_strings,
            checksums,
        })
    }

    pub fn n_heads(&self) -> usize {
        self.meta.sae.n_heads
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn token(&self, id: u32) -> String {
        token_string(&self.token_strings, id)
    }

    /// One head's decoder rows (`[features_per_head, d_head]`, flat) alone, checked, without
    /// decoding its features; none when the file holds no decoder rows.
    pub fn decoder(&self, h: usize) -> Result<Option<Vec<f32>>, DashboardError> {
        let sae = &self.meta.sae;
        if !self.meta.decoder {
            return Ok(None);
        }
        if h >= sae.n_heads {
            return Err(bad(&format!("h{h}.decoder"), "no such head"));
        }
        let tensors = SafeTensors::deserialize(&self.bytes).map_err(container)?;
        let shape = [sae.features_per_head, sae.d_head];
        Checked {
            tensors: &tensors,
            checksums: &self.checksums,
        }
        .f32s(&format!("h{h}.decoder"), Some(&shape))
        .map(Some)
    }

    /// Decodes and checks one head's features.
    pub fn head(&self, h: usize) -> Result<HeadData, DashboardError> {
        let tensors = SafeTensors::deserialize(&self.bytes).map_err(container)?;
        Checked {
            tensors: &tensors,
            checksums: &self.checksums,
        }
        .head(&self.meta, self.windows.len(), h)
    }
}

/// The checksummed arrays of a parsed file.
struct Checked<'a, 'c> {
    tensors: &'c SafeTensors<'a>,
    checksums: &'c BTreeMap<String, u64>,
}

/// Reads a little-endian array of `N`-byte values.
fn le<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}

impl<'a> DashboardFile<'a> {
    /// Parses the header and the global arrays of a dashboard file held in `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DashboardError> {
        let tensors = SafeTensors::deserialize(bytes).map_err(container)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(container)?;
        let info = header
            .metadata()
            .as_ref()
            .ok_or_else(|| DashboardError::Container("no __metadata__".into()))?;
        let text = info.get(METADATA_KEY).ok_or_else(|| {
            DashboardError::WrongFormat(format!("a safetensors file without '{METADATA_KEY}'"))
        })?;
        let tag: FormatTag = serde_json::from_str(text)
            .map_err(|e| DashboardError::Meta(format!("format tag: {e}")))?;
        if tag.format != FORMAT_NAME {
            return Err(DashboardError::WrongFormat(tag.format));
        }
        if tag.version != FORMAT_VERSION {
            return Err(DashboardError::Version { found: tag.version });
        }
        let envelope: Envelope =
            serde_json::from_str(text).map_err(|e| DashboardError::Meta(e.to_string()))?;
        if checksum(envelope.meta.as_bytes()) != envelope.meta_checksum {
            return Err(DashboardError::Meta(
                "checksum mismatch (corrupt file)".into(),
            ));
        }
        let FileMeta { meta, checksums } = serde_json::from_str(&envelope.meta)
            .map_err(|e| DashboardError::Meta(e.to_string()))?;
        validate_meta(&meta)?;
        let mut file = Self {
            meta,
            windows: Vec::new(),
            token_strings: BTreeMap::new(),
            tensors,
            checksums,
        };
        let t = file.meta.context_size;
        let vocab = file.meta.model.d_vocab;
        let flat = file.arrays().u32s("windows", None)?;
        let shape = file.arrays().shape("windows")?;
        if shape.len() != 2 || shape[1] != t {
            return Err(bad(
                "windows",
                format!("shape {shape:?}, expected [_, {t}]"),
            ));
        }
        if let Some(bad_id) = flat.iter().find(|&&id| id as usize >= vocab) {
            return Err(bad(
                "windows",
                format!("token id {bad_id} >= vocabulary {vocab}"),
            ));
        }
        file.windows = flat.chunks_exact(t).map(<[u32]>::to_vec).collect();
        let ids = file.arrays().u32s("vocab_ids", None)?;
        let offs = file
            .arrays()
            .u32s("vocab_offsets", Some(&[ids.len() + 1]))?;
        let raw = file.arrays().view("vocab_bytes", Dtype::U8)?.data();
        check_offsets("vocab_offsets", &offs, raw.len())?;
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= vocab || (i > 0 && ids[i - 1] >= id) {
                return Err(bad(
                    "vocab_ids",
                    "ids must be increasing and inside the vocabulary",
                ));
            }
            let s = std::str::from_utf8(&raw[offs[i] as usize..offs[i + 1] as usize])
                .map_err(|_| bad("vocab_bytes", "token strings must be UTF-8"))?;
            file.token_strings.insert(id, s.to_string());
        }
        Ok(file)
    }

    pub fn n_heads(&self) -> usize {
        self.meta.sae.n_heads
    }

    /// The string of a token id (`<id>` if the file has none).
    pub fn token(&self, id: u32) -> String {
        token_string(&self.token_strings, id)
    }

    fn arrays(&self) -> Checked<'a, '_> {
        Checked {
            tensors: &self.tensors,
            checksums: &self.checksums,
        }
    }

    /// Decodes and checks one head's features.
    pub fn head(&self, h: usize) -> Result<HeadData, DashboardError> {
        self.arrays().head(&self.meta, self.windows.len(), h)
    }
}

impl<'a> Checked<'a, '_> {
    fn view(&self, name: &str, dtype: Dtype) -> Result<TensorView<'a>, DashboardError> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| bad(name, "missing"))?;
        if view.dtype() != dtype {
            return Err(bad(
                name,
                format!("dtype {:?}, expected {dtype:?}", view.dtype()),
            ));
        }
        let want = self
            .checksums
            .get(name)
            .ok_or_else(|| bad(name, "no checksum"))?;
        if checksum(view.data()) != *want {
            return Err(bad(name, "checksum mismatch (corrupt file)"));
        }
        Ok(view)
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>, DashboardError> {
        Ok(self
            .tensors
            .tensor(name)
            .map_err(|_| bad(name, "missing"))?
            .shape()
            .to_vec())
    }

    fn checked(
        &self,
        name: &str,
        dtype: Dtype,
        shape: Option<&[usize]>,
    ) -> Result<&'a [u8], DashboardError> {
        let view = self.view(name, dtype)?;
        if let Some(want) = shape
            && view.shape() != want
        {
            return Err(bad(
                name,
                format!("shape {:?}, expected {want:?}", view.shape()),
            ));
        }
        Ok(view.data())
    }

    fn u32s(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<u32>, DashboardError> {
        Ok(le(
            self.checked(name, Dtype::U32, shape)?,
            u32::from_le_bytes,
        ))
    }

    fn u16s(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<u16>, DashboardError> {
        Ok(le(
            self.checked(name, Dtype::U16, shape)?,
            u16::from_le_bytes,
        ))
    }

    fn f32s(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>, DashboardError> {
        let v = le(self.checked(name, Dtype::F32, shape)?, f32::from_le_bytes);
        finite(name, &v)?;
        Ok(v)
    }

    fn f16s(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>, DashboardError> {
        let v: Vec<f32> = le(self.checked(name, Dtype::F16, shape)?, f16::from_le_bytes)
            .into_iter()
            .map(f16::to_f32)
            .collect();
        finite(name, &v)?;
        Ok(v)
    }

    /// A head's [`FeatureData::upstream`]s, feature by feature (`p` names its arrays).
    fn upstream(
        &self,
        info: &UpstreamInfo,
        p: &dyn Fn(&str) -> String,
        m: usize,
    ) -> Result<Vec<Option<FeatureUpstream>>, DashboardError> {
        let k = UPSTREAM_LISTED;
        let n = self.u32s(&p("upstream_examples"), Some(&[m]))?;
        let dfa = self.f32s(&p("upstream_dfa"), Some(&[m]))?;
        let rest = self.f32s(&p("upstream_rest"), Some(&[m]))?;
        let ids = self.u32s(&p("upstream_writer"), Some(&[m, k]))?;
        let spread = self.f32s(&p("upstream_spread"), Some(&[m, k, 4]))?;
        let reading = self.f32s(&p("upstream_reading"), Some(&[m, k, 3]))?;
        (0..m)
            .map(|f| {
                if n[f] == 0 {
                    return Ok(None);
                }
                let mut writers = Vec::new();
                for j in (0..k).filter(|&j| ids[f * k + j] != u32::MAX) {
                    let at = f * k + j;
                    let writer = *(info.writers.get(ids[at] as usize))
                        .ok_or_else(|| bad(&p("upstream_writer"), format!("writer {}", ids[at])))?;
                    let [mean, sd, min, max] = spread[at * 4..][..4] else {
                        unreachable!()
                    };
                    let reading = matches!(writer, crate::live::Writer::Head { .. })
                        .then(|| [0, 1, 2].map(|i| reading[at * 3 + i]));
                    writers.push(crate::live::WriterSpread {
                        writer,
                        mean,
                        sd,
                        min,
                        max,
                        reading,
                    });
                }
                let others = info.writers.len().saturating_sub(writers.len());
                Ok(Some(FeatureUpstream {
                    examples: n[f],
                    dfa: dfa[f],
                    writers,
                    rest: (others, rest[f]),
                }))
            })
            .collect()
    }

    fn head(
        &self,
        meta: &DashboardMeta,
        n_windows: usize,
        h: usize,
    ) -> Result<HeadData, DashboardError> {
        let n_heads = meta.sae.n_heads;
        if h >= n_heads {
            return Err(DashboardError::NoHead { head: h, n_heads });
        }
        let s = &meta.settings;
        let (m, t) = (meta.sae.features_per_head, meta.context_size);
        let (k, bins, ni) = (s.logit_k, s.histogram_bins, s.n_intervals);
        let vocab = meta.model.d_vocab;
        let p = |name: &str| format!("h{h}.{name}");
        let density = self.f32s(&p("density"), Some(&[m]))?;
        let effect = match meta.effects {
            Some(_) => Some(self.f32s(&p("effect"), Some(&[m]))?),
            None => None,
        };
        let decoder = match meta.decoder {
            true => Some(self.f32s(&p("decoder"), Some(&[m, meta.sae.d_head]))?),
            false => None,
        };
        let cofiring = match meta.cofiring {
            true => {
                let ids = self.u32s(&p("cofiring"), Some(&[m, COFIRING_K]))?;
                let rs = self.f32s(&p("cofiring_r"), Some(&[m, COFIRING_K]))?;
                let total = (n_heads * m) as u32;
                if let Some(bad_id) = ids.iter().find(|&&g| g != u32::MAX && g >= total) {
                    return Err(bad(&p("cofiring"), format!("feature {bad_id} of {total}")));
                }
                Some((ids, rs))
            }
            false => None,
        };
        let mut upstream = match &meta.upstream {
            Some(info) => Some(self.upstream(info, &p, m)?),
            None => None,
        };
        let max_act = self.f32s(&p("max_activation"), Some(&[m]))?;
        let act_hist = self.u32s(&p("activation_histogram"), Some(&[m, bins]))?;
        let interval_counts = self.u32s(&p("interval_counts"), Some(&[m, ni]))?;
        let logit_hist = self.u32s(&p("logit_histogram"), Some(&[m, bins]))?;
        let logit_range = self.f32s(&p("logit_range"), Some(&[m, 2]))?;
        let mut logits = Vec::new();
        for name in ["logit_top", "logit_bottom"] {
            let ids = self.u32s(&p(&format!("{name}_ids")), Some(&[m, k]))?;
            if ids.iter().any(|&id| id as usize >= vocab) {
                return Err(bad(
                    &p(&format!("{name}_ids")),
                    "token id outside the vocabulary",
                ));
            }
            let vals = self.f32s(&p(&format!("{name}_values")), Some(&[m, k]))?;
            logits.push((ids, vals));
        }
        let eo = self.u32s(&p("example_offsets"), Some(&[m + 1]))?;
        let e = self
            .shape(&p("example_group"))?
            .first()
            .copied()
            .unwrap_or(0);
        check_offsets(&p("example_offsets"), &eo, e)?;
        let groups = self.checked(&p("example_group"), Dtype::U8, Some(&[e]))?;
        let windows = self.u32s(&p("example_window"), Some(&[e]))?;
        let targets = self.u16s(&p("example_target"), Some(&[e]))?;
        let acts_at = self.f32s(&p("example_activation"), Some(&[e]))?;
        let example_row = self.u32s(&p("example_row"), Some(&[e]))?;
        let ro = self.u32s(&p("row_offsets"), None)?;
        let rpos = self.u16s(&p("row_positions"), None)?;
        let rvals = self.f16s(&p("row_values"), Some(&[rpos.len()]))?;
        check_offsets(&p("row_offsets"), &ro, rpos.len())?;
        let n_rows = ro.len() - 1;
        let rows: Vec<Vec<(u16, f32)>> = ro
            .windows(2)
            .map(|w| {
                let span = w[0] as usize..w[1] as usize;
                rpos[span.clone()]
                    .iter()
                    .copied()
                    .zip(rvals[span].iter().copied())
                    .collect()
            })
            .collect();
        for row in &rows {
            if row.iter().any(|&(q, _)| q as usize >= t) || row.windows(2).any(|w| w[0].0 >= w[1].0)
            {
                return Err(bad(
                    &p("row_positions"),
                    "positions must increase inside the window",
                ));
            }
        }
        let dof = self.u32s(&p("dfa_offsets"), Some(&[e + 1]))?;
        let dfa = self.f16s(&p("dfa_values"), None)?;
        check_offsets(&p("dfa_offsets"), &dof, dfa.len())?;
        let by_head = match (meta.dfa_by_head, meta.dense_heads()) {
            (false, _) => None,
            (true, Some(r)) => Some((r, self.f16s(&p("dfa_by_head"), Some(&[e, r]))?)),
            (true, None) => return Err(bad(&p("dfa_by_head"), "DFA by head of a per-head SAE")),
        };
        let mut examples = Vec::with_capacity(e);
        for i in 0..e {
            let group = match groups[i] {
                TOP_GROUP => ExampleGroup::Top,
                g if (g as usize) < ni => ExampleGroup::Interval(g),
                g => return Err(bad(&p("example_group"), format!("group {g} >= {ni}"))),
            };
            let (w, target) = (windows[i], targets[i]);
            if w as usize >= n_windows || target as usize >= t {
                return Err(bad(&p("example_window"), "window or target out of range"));
            }
            let row = example_row[i] as usize;
            if row >= n_rows {
                return Err(bad(&p("example_row"), format!("row {row} >= {n_rows}")));
            }
            let activations = rows[row].clone();
            let d = dof[i] as usize..dof[i + 1] as usize;
            // Interval examples have DFA since pass 3 was added; files from before have none.
            let fits = match group {
                ExampleGroup::Top => d.len() == target as usize + 1,
                ExampleGroup::Interval(_) => d.is_empty() || d.len() == target as usize + 1,
            };
            if !fits {
                return Err(bad(
                    &p("dfa_offsets"),
                    format!("example {i}: {} DFA values for target {target}", d.len()),
                ));
            }
            let dfa_by_head = match &by_head {
                Some((r, v)) if !d.is_empty() => v[i * r..(i + 1) * r].to_vec(),
                _ => Vec::new(),
            };
            examples.push(Example {
                group,
                window: w,
                target,
                activation: acts_at[i],
                activations,
                dfa: dfa[d].to_vec(),
                dfa_by_head,
            });
        }
        let mut examples = examples.into_iter();
        let features = (0..m)
            .map(|f| {
                let n = (eo[f + 1] - eo[f]) as usize;
                let pairs = |(ids, vals): &(Vec<u32>, Vec<f32>)| {
                    ids[f * k..(f + 1) * k]
                        .iter()
                        .copied()
                        .zip(vals[f * k..(f + 1) * k].iter().copied())
                        .collect()
                };
                FeatureData {
                    density: density[f],
                    max_activation: max_act[f],
                    activation_histogram: act_hist[f * bins..(f + 1) * bins].to_vec(),
                    interval_counts: interval_counts[f * ni..(f + 1) * ni].to_vec(),
                    logit_top: pairs(&logits[0]),
                    logit_bottom: pairs(&logits[1]),
                    logit_histogram: logit_hist[f * bins..(f + 1) * bins].to_vec(),
                    logit_range: (logit_range[2 * f], logit_range[2 * f + 1]),
                    examples: examples.by_ref().take(n).collect(),
                    effect: effect.as_ref().map(|e| e[f]),
                    cofiring: cofiring.as_ref().map_or(Vec::new(), |(ids, rs)| {
                        let at = f * COFIRING_K..(f + 1) * COFIRING_K;
                        (ids[at.clone()].iter().zip(&rs[at]))
                            .filter(|(g, _)| **g != u32::MAX)
                            .map(|(&g, &r)| (g, r))
                            .collect()
                    }),
                    upstream: upstream.as_mut().and_then(|u| u[f].take()),
                }
            })
            .collect();
        Ok(HeadData { features, decoder })
    }
}

fn finite(name: &str, v: &[f32]) -> Result<(), DashboardError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(bad(name, format!("value {i} is not finite"))),
        None => Ok(()),
    }
}

/// Offsets must start at 0, never decrease and end at `len`.
fn check_offsets(name: &str, offs: &[u32], len: usize) -> Result<(), DashboardError> {
    let ok = offs.first() == Some(&0)
        && offs.windows(2).all(|w| w[0] <= w[1])
        && offs.last().map(|&x| x as usize) == Some(len);
    if ok {
        Ok(())
    } else {
        Err(bad(
            name,
            format!("offsets must run from 0 to {len} without decreasing"),
        ))
    }
}

fn validate_meta(meta: &DashboardMeta) -> Result<(), DashboardError> {
    let s = &meta.settings;
    let e = |m: String| Err(DashboardError::Meta(m));
    if meta.sae.n_heads == 0 || meta.sae.n_heads > MAX_HEADS {
        return e(format!("{} heads (1..={MAX_HEADS})", meta.sae.n_heads));
    }
    if meta.sae.features_per_head == 0 || meta.sae.features_per_head > MAX_FEATURES_PER_HEAD {
        return e(format!("{} features per head", meta.sae.features_per_head));
    }
    if meta.context_size == 0 || meta.context_size > MAX_CONTEXT {
        return e(format!("context size {}", meta.context_size));
    }
    if s.histogram_bins == 0 || s.histogram_bins > MAX_BINS || s.n_intervals >= TOP_GROUP as usize {
        return e("histogram bins or interval count out of range".into());
    }
    if s.logit_k > meta.model.d_vocab || s.logit_k > MAX_BINS {
        return e(format!("logit_k {} exceeds the vocabulary", s.logit_k));
    }
    if meta.heads.len() != meta.sae.n_heads {
        return e(format!(
            "{} head summaries for {} heads",
            meta.heads.len(),
            meta.sae.n_heads
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cofiring_limits_of_older_files_read_as_the_first_tokens() {
        let limit: CofiringLimit = serde_json::from_str(r#"{"tokens":5,"why":"x"}"#).unwrap();
        assert_eq!((limit.every, limit.windows_per_batch), (1, 0));
        assert_eq!(
            limit.tokens_text(9),
            "the first 5 of the 9 dashboard tokens (x)"
        );
    }

    #[test]
    fn ordinals_read_as_english() {
        let said: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 32, 64, 111, 1024]
            .into_iter()
            .map(ordinal)
            .collect();
        let want = "1st 2nd 3rd 4th 11th 12th 13th 21st 32nd 64th 111th 1024th";
        assert_eq!(said.join(" "), want);
    }

    #[test]
    fn published_names_drop_local_directories_only() {
        for (name, shown) in [
            ("/root/.cache/attn-saes/models/m.Q4_1.gguf", "m.Q4_1.gguf"),
            ("/home/me/runs/latest/sae/", "sae"),
            ("~/models/gpt2", "gpt2"),
            (r"C:\Users\me\models\m.gguf", "m.gguf"),
            ("C:/Users/me/corpus", "corpus"),
            (r"\\server\share\sae", "sae"),
            ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
            ("gpt2", "gpt2"),
            ("runs/latest/sae", "runs/latest/sae"),
            ("relu", "relu"),
            ("/", "/"),
            ("", ""),
        ] {
            assert_eq!(published_name(name), shown, "{name}");
        }
    }
}
