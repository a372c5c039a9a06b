//! Dashboard stage: a text report from a dashboard file (the `features` command): for each
//! head, the features with the strongest activations and the tokens they fire on.

use super::format::{Dashboard, ExampleGroup};

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
    pub examples: Vec<ExampleReport>,
}

/// For each head, the `per_head` live features with the largest maximum activation (ties
/// by index) and their first `top` top examples.
pub fn top_features(d: &Dashboard, per_head: usize, top: usize) -> Vec<FeatureReport> {
    let m = d.meta.sae.features_per_head;
    let text = |ids: &[u32]| ids.iter().map(|&id| d.token(id)).collect::<String>();
    let mut out = Vec::new();
    for (head, data) in d.heads.iter().enumerate() {
        let mut order: Vec<usize> = (0..m).filter(|&f| data.features[f].density > 0.0).collect();
        order.sort_by(|&a, &b| {
            let (fa, fb) = (&data.features[a], &data.features[b]);
            fb.max_activation
                .total_cmp(&fa.max_activation)
                .then(a.cmp(&b))
        });
        for &f in order.iter().take(per_head) {
            let feature = &data.features[f];
            let examples = feature
                .examples
                .iter()
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
            out.push(FeatureReport {
                head,
                feature: f,
                global: head * m + f,
                density: feature.density,
                max_activation: feature.max_activation,
                examples,
            });
        }
    }
    out
}
