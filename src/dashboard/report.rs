//! Dashboard stage: a text report from a dashboard file (the `features` command): for each
//! head, where its features read from, then the features with the strongest activations,
//! the tokens they fire on and where they read from.

use std::collections::BTreeMap;

use super::format::{Dashboard, ExampleGroup, FeatureData};
use super::sources::{self, FeatureSources, HeadAttention, HeadScores, HeadSources, SourceKind};

/// One activating token in context.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExampleReport {
    pub activation: f32,
    /// Tokens before the active one (up to 6), the active one, and after (up to 2).
    pub before: String,
    pub token: String,
    pub after: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureReport {
    pub head: usize,
    /// Index within the head; `global = head * m + feature`.
    pub feature: usize,
    pub global: usize,
    pub density: f32,
    pub max_activation: f32,
    /// Its label (`attn-saes label`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The features of its head whose decoder directions are closest, `(feature, cosine)`
    /// ([`HeadData::closest`](super::format::HeadData::closest); none in files without the
    /// decoder rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub closest: Vec<(usize, f32)>,
    /// For a dense SAE's feature: the share of its decoder row's squared norm in each head's
    /// part ([`HeadData::head_shares`](super::format::HeadData::head_shares)), which says
    /// which heads it writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_shares: Option<Vec<f32>>,
    /// For a dense SAE's feature: each head's share of its top examples' DFA by head, by
    /// size ([`FeatureData::read_shares`](super::format::FeatureData::read_shares)), which
    /// says which heads it reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_shares: Option<Vec<f32>>,
    /// The features, of any head, whose activations go with its most over the dashboard
    /// tokens, `(head, feature, Pearson r)` ([`FeatureData::cofiring`](super::format::FeatureData::cofiring);
    /// none in files without them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fires_with: Vec<(usize, usize, f32)>,
    /// The estimated rise in next-token loss without it, per 1000 tokens (when the file
    /// has the estimates).
    pub effect_per_thousand: Option<f64>,
    pub examples: Vec<ExampleReport>,
    /// Where its top examples read from (their DFA's top sources).
    pub reads_from: FeatureSources,
    /// The kind most of them share (`None`: mixed, or no example with a positive DFA).
    pub reads_from_kind: Option<SourceKind>,
    /// The token most often at the top source, and in how many top examples.
    pub reads_from_token: Option<(String, u32)>,
    /// What wrote what it reads over its top examples (files built with `--upstream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<super::format::FeatureUpstream>,
}

/// One head: its features by where they read from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadReport {
    pub head: usize,
    pub reads_from: HeadSources,
    pub summary: String,
    /// Where the head attends on the dashboard tokens (files written before it lack it).
    pub attention: Option<HeadAttention>,
    /// Its attention on repeated random tokens (files written before it lack it).
    pub random_tokens: Option<HeadScores>,
}

/// The `features` report: every head's summary and the strongest features.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub heads: Vec<HeadReport>,
    pub features: Vec<FeatureReport>,
}

impl Report {
    /// Gives each feature reported its label in `labels`.
    pub fn label(&mut self, labels: &super::labels::Labels) {
        for f in &mut self.features {
            f.label = labels.get(f.head, f.feature).map(str::to_string);
        }
    }
}

/// Features of its head listed as closest to a reported one.
pub const CLOSEST: usize = 5;

/// One feature's report: its numbers, first `top` top examples, where they read from and
/// the features closest to it.
pub fn feature_report(d: &Dashboard, head: usize, f: usize, top: usize) -> FeatureReport {
    let m = d.meta.sae.features_per_head;
    let text = |ids: &[u32]| ids.iter().map(|&id| d.token(id)).collect::<String>();
    let data = &d.heads[head];
    let feature = &data.features[f];
    let examples = (feature.examples.iter())
        .filter(|e| e.group == ExampleGroup::Top)
        .take(top)
        .map(|e| {
            let w = &d.windows[e.window as usize];
            let k = e.target as usize;
            ExampleReport {
                activation: e.activation,
                before: text(&w[k.saturating_sub(6)..k]),
                token: text(&w[k..k + 1]),
                after: text(&w[k + 1..(k + 3).min(w.len())]),
            }
        })
        .collect();
    let reads_from = sources::feature_sources(&d.windows, feature);
    FeatureReport {
        reads_from_kind: reads_from.main(),
        reads_from_token: reads_from.token.map(|(id, n)| (d.token(id), n)),
        reads_from,
        head,
        feature: f,
        global: head * m + f,
        density: feature.density,
        max_activation: feature.max_activation,
        label: None,
        closest: data.closest(f, CLOSEST),
        head_shares: (d.meta.dense_heads()).and_then(|heads| data.head_shares(f, heads)),
        read_shares: feature.read_shares(),
        fires_with: (feature.cofiring.iter())
            .map(|&(g, r)| {
                let (h, f) = d.meta.block_feature(g as usize);
                (h, f, r)
            })
            .collect(),
        effect_per_thousand: (d.meta.effects.as_ref())
            .zip(feature.effect)
            .map(|(e, x)| e.per_thousand(x)),
        examples,
        upstream: feature.upstream.clone(),
    }
}

/// Two features of different heads that fire together ([`cofiring_across`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CofiringPair {
    /// Pearson r of their activations over the dashboard tokens.
    pub r: f32,
    /// The one of the lower index (over all blocks) first.
    pub a: FeatureReport,
    pub b: FeatureReport,
}

/// The `n` pairs of features of different heads with the highest correlation among the
/// features each lists as firing with it ([`FeatureData::cofiring`](super::format::FeatureData::cofiring)),
/// each pair once, ties by index; each with `top` examples. A block-diagonal SAE's feature
/// is its block's head; a dense SAE's, the head its decoder row writes most
/// ([`HeadData::writes_most`](super::format::HeadData::writes_most)), none without decoder
/// rows.
pub fn cofiring_across(d: &Dashboard, n: usize, top: usize) -> Vec<CofiringPair> {
    let m = d.meta.sae.features_per_head;
    let head_of = |g: usize| -> Option<usize> {
        match d.meta.dense_heads() {
            Some(heads) => d.heads[0].writes_most(g, heads),
            None => Some(d.meta.block_feature(g).0),
        }
    };
    let mut pairs: BTreeMap<(usize, usize), f32> = BTreeMap::new();
    for (h, head) in d.heads.iter().enumerate() {
        for (f, feature) in head.features.iter().enumerate() {
            let a = h * m + f;
            let Some(ha) = head_of(a) else { continue };
            for &(g, r) in (feature.cofiring.iter())
                .filter(|(g, _)| head_of(*g as usize).is_some_and(|hb| hb != ha))
            {
                let key = (a.min(g as usize), a.max(g as usize));
                let best = pairs.entry(key).or_insert(r);
                *best = best.max(r);
            }
        }
    }
    let mut pairs: Vec<((usize, usize), f32)> = pairs.into_iter().collect();
    pairs.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    pairs.truncate(n);
    (pairs.into_iter())
        .map(|((a, b), r)| {
            let ((ha, fa), (hb, fb)) = (d.meta.block_feature(a), d.meta.block_feature(b));
            CofiringPair {
                r,
                a: feature_report(d, ha, fa, top),
                b: feature_report(d, hb, fb, top),
            }
        })
        .collect()
}

/// [`features_by`] and each head's [`sources::head_sources`].
pub fn report(d: &Dashboard, by: Strongest, per_head: usize, top: usize) -> Report {
    report_of(d, features_by(d, by, per_head, top))
}

/// Each head's [`sources::head_sources`], with `features` (those [`features_by`] or
/// [`features_writing_to`] chose).
pub fn report_of(d: &Dashboard, features: Vec<FeatureReport>) -> Report {
    let heads = d
        .heads
        .iter()
        .enumerate()
        .map(|(head, data)| {
            let reads_from = sources::head_sources(&d.windows, data);
            let summary = reads_from.describe();
            HeadReport {
                head,
                reads_from,
                summary,
                attention: d.meta.heads.get(head).and_then(|s| s.attention.clone()),
                random_tokens: d.meta.heads.get(head).and_then(|s| s.random_tokens),
            }
        })
        .collect();
    Report { heads, features }
}

/// Which features a report lists for each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strongest {
    /// The largest maximum activation.
    #[default]
    Activation,
    /// The largest effect on the loss either way (files with the estimates; else
    /// [`Strongest::Activation`]).
    Effect,
}

/// For each head, the `per_head` live features with the largest maximum activation (ties
/// by index) and their first `top` top examples.
pub fn top_features(d: &Dashboard, per_head: usize, top: usize) -> Vec<FeatureReport> {
    features_by(d, Strongest::Activation, per_head, top)
}

/// For each head, the `per_head` live features strongest by `by` (ties by index) and
/// their first `top` top examples.
pub fn features_by(
    d: &Dashboard,
    by: Strongest,
    per_head: usize,
    top: usize,
) -> Vec<FeatureReport> {
    features_where(d, by, (per_head, top), |_, _| true)
}

/// [`features_by`] for a dense SAE: its live features that write most to model head
/// `model_head` (the largest share of their decoder row, [`HeadData::writes_most`]); none
/// for a block-diagonal SAE or a file without decoder rows.
///
/// [`HeadData::writes_most`]: super::format::HeadData::writes_most
pub fn features_writing_to(
    d: &Dashboard,
    by: Strongest,
    (per_head, top): (usize, usize),
    model_head: usize,
) -> Vec<FeatureReport> {
    let Some(heads) = d.meta.dense_heads() else {
        return Vec::new();
    };
    features_where(d, by, (per_head, top), |head, f| {
        d.heads[head].writes_most(f, heads) == Some(model_head)
    })
}

/// [`features_by`] over the features `keep(head, feature)` admits.
fn features_where(
    d: &Dashboard,
    by: Strongest,
    (per_head, top): (usize, usize),
    keep: impl Fn(usize, usize) -> bool,
) -> Vec<FeatureReport> {
    let m = d.meta.sae.features_per_head;
    let by = match d.meta.effects {
        Some(_) => by,
        None => Strongest::Activation,
    };
    let key = |f: &FeatureData| match by {
        Strongest::Activation => f.max_activation,
        Strongest::Effect => f.effect.unwrap_or(0.0).abs(),
    };
    let mut out = Vec::new();
    for (head, data) in d.heads.iter().enumerate() {
        let mut order: Vec<usize> = (0..m)
            .filter(|&f| data.features[f].density > 0.0 && keep(head, f))
            .collect();
        order.sort_by(|&a, &b| {
            let (fa, fb) = (&data.features[a], &data.features[b]);
            key(fb).total_cmp(&key(fa)).then(a.cmp(&b))
        });
        for &f in order.iter().take(per_head) {
            out.push(feature_report(d, head, f, top));
        }
    }
    out
}
