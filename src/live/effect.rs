//! [`FeatureEffect`]s: the model run on a text twice, clean and with one feature removed
//! from its block of `hook_z` (its head's, or every head's for a dense SAE; through the
//! forward's splice), and the next-token distributions compared. Both passes are queued
//! before anything is read back; the browser awaits the read-backs and the desktop blocks
//! on the same code.

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{FeatureEffect, Objective, ObjectiveChange, TokenChange};
use crate::lm::{HeadSelection, HookRequest, LoadedModel, Splice, ZConvention};
use crate::sae::BlockDiagSae;

/// Next tokens listed per position, each way.
pub const TOKENS_LISTED: usize = 5;

/// The two passes over `b` windows of `t` tokens, not yet read back: `[b t]` activations
/// and `[b t, vocab]` log-probabilities.
struct Pending {
    head: usize,
    feature: usize,
    scale: f32,
    /// An answer objective to evaluate both ways (one window).
    objective: Option<Objective>,
    windows: Vec<Vec<u32>>,
    activation: Tensor<1>,
    clean: Tensor<2>,
    ablated: Tensor<2>,
}

impl Pending {
    fn new(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        z_convention: ZConvention,
        windows: &[Vec<u32>],
        (head, feature, scale): (usize, usize, f32),
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        // The feature's block: its head, or all of hook_z for a dense SAE.
        let (blocks, width) = super::feature_of(sae, model, (head, feature))?;
        let (h, d) = (model.config.n_heads, model.config.d_head);
        let (b, t) = (windows.len(), windows.first().map_or(0, Vec::len));
        anyhow::ensure!(b > 0 && t > 0, "no tokens");
        anyhow::ensure!(
            windows.iter().all(|w| w.len() == t),
            "windows of different lengths"
        );
        let tokens = model.tokens(windows)?;
        let hooks = HookRequest {
            hook_z: vec![layer],
            logits: true,
            z_convention,
            ..Default::default()
        };
        let mut cache = model.run(tokens.clone(), &hooks, None)?;
        let z = cache.hook_z.remove(&layer).context("no hook_z")?;
        let clean = cache.logits.take().context("no logits")?;
        let n = b * t;
        let feats = sae
            .forward(sae.scale_input(z.reshape([n, blocks, width])))
            .feats;
        let feats = super::unless_bos(sae, model, windows, feats);
        let activation = feats.slice([head..head + 1, 0..n, feature..feature + 1]);
        // What the feature adds to its block of hook_z: activation x decoder row, back in
        // hook_z's units (the SAE's input is scaled by `input_scale`); `1 - scale` of it is
        // taken away.
        let row = sae
            .w_dec
            .clone()
            .slice([head..head + 1, feature..feature + 1, 0..width])
            .reshape([1, width])
            / sae.input_scale[head] as f64
            * (1.0 - scale as f64);
        let part = (activation.clone().reshape([n, 1]) * row).reshape([b, t, 1, width]);
        let device = model.device().clone();
        let added = Tensor::<4>::zeros([b, t, blocks, width], &device)
            .slice_assign([0..b, 0..t, head..head + 1, 0..width], part)
            .reshape([b, t, h, d]);
        let remove = move |z: Tensor<4>| z - added.clone();
        let splice = Splice {
            layer,
            heads: HeadSelection::All,
            replace: &remove,
        };
        // The removed part is the same in either convention; the raw one leaves z itself
        // to the splice, so a feature that does not fire changes nothing, bit for bit
        // (TransformerLens' convention would take its fold out and put it back).
        let logits_only = HookRequest {
            logits: true,
            z_convention: ZConvention::Raw,
            ..Default::default()
        };
        let ablated = model
            .run(tokens, &logits_only, Some(&splice))?
            .logits
            .context("no logits")?;
        let logp = |logits: Tensor<3>| {
            let v = logits.dims()[2];
            log_softmax(logits, 2).reshape([n, v])
        };
        Ok(Self {
            head,
            feature,
            scale,
            objective: None,
            windows: windows.to_vec(),
            activation: activation.reshape([n]),
            clean: logp(clean),
            ablated: logp(ablated),
        })
    }

    /// One effect per window; the next tokens are listed at the positions `listed` picks.
    fn finish(
        self,
        loaded: &LoadedModel,
        [activation, clean, ablated]: [Vec<f32>; 3],
        listed: &dyn Fn(usize, usize) -> bool,
    ) -> Vec<FeatureEffect> {
        let t = self.windows[0].len();
        let v = clean.len() / activation.len();
        let token = |i: usize| crate::lm::token_text(&loaded.tokenizer, i as u32);
        let mut effects = Vec::with_capacity(self.windows.len());
        for (w, ids) in self.windows.into_iter().enumerate() {
            let at = |p: usize| (w * t + p) * v;
            let loss_at = |logp: &[f32], p: usize| -logp[at(p) + ids[p + 1] as usize];
            let (mut promotes, mut suppresses) = (Vec::with_capacity(t), Vec::with_capacity(t));
            for p in 0..t {
                if !listed(w, p) {
                    promotes.push(Vec::new());
                    suppresses.push(Vec::new());
                    continue;
                }
                let (clean, ablated) = (&clean[at(p)..][..v], &ablated[at(p)..][..v]);
                let prob = |logp: f32| logp.exp();
                let change: Vec<f32> = (0..v).map(|i| prob(clean[i]) - prob(ablated[i])).collect();
                let changes = |ids: Vec<usize>| -> Vec<TokenChange> {
                    ids.into_iter()
                        .map(|i| TokenChange {
                            id: i as u32,
                            token: token(i),
                            clean: prob(clean[i]),
                            ablated: prob(ablated[i]),
                        })
                        .collect()
                };
                let (up, down) = extremes(&change, TOKENS_LISTED);
                promotes.push(changes(up));
                suppresses.push(changes(down));
            }
            let rows = at(0)..at(t);
            let objective = (self.objective.as_ref()).and_then(|o| {
                let change = ObjectiveChange {
                    clean: o.value(&clean[rows.clone()], v)?,
                    changed: o.value(&ablated[rows.clone()], v)?,
                };
                Some((o.clone(), change))
            });
            let positions = 0..t.saturating_sub(1);
            effects.push(FeatureEffect {
                head: self.head,
                feature: self.feature,
                scale: self.scale,
                activation: activation[w * t..][..t].to_vec(),
                loss: positions.clone().map(|p| loss_at(&clean, p)).collect(),
                ablated: positions.map(|p| loss_at(&ablated, p)).collect(),
                promotes,
                suppresses,
                ids,
                objective,
            });
        }
        effects
    }

    /// The effects, the read-backs awaited.
    async fn read(
        self,
        loaded: &LoadedModel,
        listed: &dyn Fn(usize, usize) -> bool,
    ) -> anyhow::Result<Vec<FeatureEffect>> {
        let host = [
            super::read_async(&self.activation).await?,
            super::read_async(&self.clean).await?,
            super::read_async(&self.ablated).await?,
        ];
        Ok(self.finish(loaded, host, listed))
    }
}

/// The indices of the `n` largest positive values, largest first, and of the `n` most
/// negative, most negative first (ties by index).
fn extremes(values: &[f32], n: usize) -> (Vec<usize>, Vec<usize>) {
    let first = |order: &dyn Fn(f32, f32) -> std::cmp::Ordering| -> Vec<usize> {
        let cmp = |a: &usize, b: &usize| order(values[*a], values[*b]).then(a.cmp(b));
        let mut idx: Vec<usize> = (0..values.len()).collect();
        if n < idx.len() {
            idx.select_nth_unstable_by(n, cmp);
            idx.truncate(n);
        }
        idx.sort_by(cmp);
        idx
    };
    let up = first(&|a, b| b.total_cmp(&a));
    let down = first(&|a, b| a.total_cmp(&b));
    (
        up.into_iter().filter(|&i| values[i] > 0.0).collect(),
        down.into_iter().filter(|&i| values[i] < 0.0).collect(),
    )
}

/// What removing `feature` of `head` (wherever it fires in `ids`) changes in the model's
/// next-token predictions, blocking on the read-back.
pub fn feature_effect(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    ids: &[u32],
    head: usize,
    feature: usize,
) -> anyhow::Result<FeatureEffect> {
    feature_effect_scaled(loaded, sae, layer, z_convention, ids, (head, feature), 0.0)
}

/// [`feature_effect`] with the feature's activation multiplied by `scale` instead of removed
/// (0 removes it, 1 changes nothing, 2 doubles it), wherever it fires.
pub fn feature_effect_scaled(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    ids: &[u32],
    feature: (usize, usize),
    scale: f32,
) -> anyhow::Result<FeatureEffect> {
    feature_effect_on(
        loaded,
        sae,
        (layer, z_convention),
        ids,
        feature,
        scale,
        None,
    )
}

/// [`feature_effect_scaled`] that also gives an answer [`Objective`]'s value clean and with
/// the feature changed ([`FeatureEffect::objective`]; the loss objective adds nothing).
pub fn feature_effect_on(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    (layer, z_convention): (usize, ZConvention),
    ids: &[u32],
    feature: (usize, usize),
    scale: f32,
    objective: Option<&Objective>,
) -> anyhow::Result<FeatureEffect> {
    super::blocking(feature_effect_on_async(
        loaded,
        sae,
        (layer, z_convention),
        ids,
        (feature, scale),
        objective,
    ))
}

/// [`feature_effect`] with the read-back awaited (WebGPU).
pub async fn feature_effect_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    ids: &[u32],
    head: usize,
    feature: usize,
) -> anyhow::Result<FeatureEffect> {
    let at = (layer, z_convention);
    feature_effect_on_async(loaded, sae, at, ids, ((head, feature), 0.0), None).await
}

/// [`feature_effect_on`] with the read-back awaited.
pub async fn feature_effect_on_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    (layer, z_convention): (usize, ZConvention),
    ids: &[u32],
    ((head, feature), scale): ((usize, usize), f32),
    objective: Option<&Objective>,
) -> anyhow::Result<FeatureEffect> {
    anyhow::ensure!(scale.is_finite(), "the scale must be a finite number");
    let windows = [ids.to_vec()];
    let mut p = Pending::new(
        loaded,
        sae,
        layer,
        z_convention,
        &windows,
        (head, feature, scale),
    )?;
    p.objective = objective.filter(|o| **o != Objective::Loss).cloned();
    let mut effects = p.read(loaded, &|_, _| true).await?;
    effects.pop().context("no effect")
}

/// Windows run together by [`effects_on_examples`] (their logits are `[windows, T, vocab]`
/// twice).
const WINDOWS_PER_PASS: usize = 4;

/// [`effects_on_examples`] with the read-backs awaited (WebGPU).
pub async fn effects_on_examples_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    examples: &[(Vec<u32>, usize)],
    head: usize,
    feature: usize,
) -> anyhow::Result<Vec<FeatureEffect>> {
    let mut effects = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(WINDOWS_PER_PASS) {
        let windows: Vec<Vec<u32>> = chunk.iter().map(|(w, _)| w.clone()).collect();
        let p = Pending::new(
            loaded,
            sae,
            layer,
            z_convention,
            &windows,
            (head, feature, 0.0),
        )?;
        effects.extend(p.read(loaded, &|w, p| chunk[w].1 == p).await?);
    }
    Ok(effects)
}

/// [`feature_effect`] on each of a feature's examples: `examples` are `(window, target)`
/// pairs (windows of one length); the next tokens are listed at each example's target only.
pub fn effects_on_examples(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    examples: &[(Vec<u32>, usize)],
    head: usize,
    feature: usize,
) -> anyhow::Result<Vec<FeatureEffect>> {
    super::blocking(effects_on_examples_async(
        loaded,
        sae,
        layer,
        z_convention,
        examples,
        head,
        feature,
    ))
}

#[cfg(test)]
mod tests {
    use super::extremes;

    #[test]
    fn extremes_lists_the_largest_rises_and_falls_in_order_and_only_real_ones() {
        let v = [0.5, -2.0, 0.0, 3.0, -0.1, 0.5, 1.0];
        assert_eq!(extremes(&v, 3), (vec![3, 6, 0], vec![1, 4]));
        assert_eq!(extremes(&v, 1), (vec![3], vec![1]));
        assert_eq!(extremes(&[0.0, 0.0], 5), (vec![], vec![]));
        assert_eq!(extremes(&[-1.0, 2.0, -1.0, 2.0], 1), (vec![1], vec![0]));
    }
}
