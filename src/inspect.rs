//! A first look at trained features (before the dashboard stage): for each head, the
//! features with the strongest activations and the tokens they fire on, in context.

use crate::data::corpus::Corpus;
use crate::data::windows::ContextWindows;
use crate::files::host_vec;
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

/// One activating token in context.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Example {
    pub activation: f32,
    /// Decoded tokens before the active one, the active one, and after.
    pub before: String,
    pub token: String,
    pub after: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureReport {
    pub head: usize,
    /// Index within the head; the global index is `head * m + feature`.
    pub feature: usize,
    pub density: f64,
    pub examples: Vec<Example>,
}

/// Runs `windows` context windows of `corpus` through the model and SAE and returns, for
/// each head, the `per_head` live features with the largest activations and their `top`
/// examples. BOS positions are skipped.
#[allow(clippy::too_many_arguments)]
pub fn top_features(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    corpus: &Corpus,
    layer: usize,
    conv: ZConvention,
    context_size: usize,
    windows: usize,
    per_head: usize,
    top: usize,
) -> anyhow::Result<Vec<FeatureReport>> {
    let model = &loaded.transformer;
    let mc = &model.config;
    let (ws, _) = ContextWindows::first(
        corpus,
        &loaded.tokenizer,
        context_size,
        mc.bos_token_id,
        windows,
    )?;
    anyhow::ensure!(!ws.is_empty(), "the dataset gave no context windows");
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    let t = ws[0].len();
    // feats[head][token][feature], tokens flattened over windows.
    let mut acts: Vec<f32> = Vec::new();
    for chunk in ws.chunks(8) {
        let tokens = model.tokens(chunk)?;
        let hooks = HookRequest {
            hook_z: vec![layer],
            z_convention: conv,
            ..Default::default()
        };
        let z = model
            .run(tokens, &hooks, None)?
            .hook_z
            .remove(&layer)
            .expect("requested");
        let [n, _, _, _] = z.dims();
        let x = sae.scale_input(z.reshape([n * t, h, sae.config.d_head]));
        let feats = sae.forward(x).feats; // [H, n t, m]
        let part = host_vec(feats.swap_dims(0, 1))?; // [n t, H, m]
        acts.extend(part);
    }
    let n_tok = acts.len() / (h * m);
    let flat: Vec<u32> = ws.concat();
    let decode = |ids: &[u32]| loaded.tokenizer.decode(ids, false).unwrap_or_default();
    let mut reports = Vec::new();
    for head in 0..h {
        let mut stats: Vec<(usize, f32, usize)> = (0..m)
            .map(|i| {
                let mut max = 0f32;
                let mut fired = 0;
                for tok in (0..n_tok).filter(|k| k % t != 0) {
                    let a = acts[(tok * h + head) * m + i];
                    if a > 0.0 {
                        fired += 1;
                        max = max.max(a);
                    }
                }
                (i, max, fired)
            })
            .collect();
        stats.sort_by(|a, b| b.1.total_cmp(&a.1));
        for &(i, _, fired) in stats.iter().filter(|s| s.2 > 0).take(per_head) {
            let mut ex: Vec<(f32, usize)> = (0..n_tok)
                .filter(|k| k % t != 0)
                .map(|k| (acts[(k * h + head) * m + i], k))
                .filter(|(a, _)| *a > 0.0)
                .collect();
            ex.sort_by(|a, b| b.0.total_cmp(&a.0));
            let examples = ex
                .into_iter()
                .take(top)
                .map(|(a, k)| {
                    let start = (k - k % t).max(k.saturating_sub(6));
                    let end = (k + 3).min(k - k % t + t);
                    Example {
                        activation: a,
                        before: decode(&flat[start..k]),
                        token: decode(&flat[k..k + 1]),
                        after: decode(&flat[k + 1..end]),
                    }
                })
                .collect();
            reports.push(FeatureReport {
                head,
                feature: i,
                density: fired as f64 / n_tok as f64,
                examples,
            });
        }
    }
    Ok(reports)
}
