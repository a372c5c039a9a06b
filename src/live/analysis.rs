//! The analysis itself: the model and SAE in burn. [`LiveAnalysis::run_async`] awaits the
//! results (the browser, where WebGPU has no blocking read-back); [`LiveAnalysis::run`]
//! blocks on it (desktop).

use std::ops::Deref;

use anyhow::Context;
use burn::prelude::*;

use super::{Analysed, Attribution, AttributionState, LiveTokens};
use crate::dashboard::dfa::{dfa_by_head, part_sums, sum_parts};
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

/// One text run through the LM and the SAE.
pub struct LiveAnalysis {
    pub tokens: LiveTokens,
    /// `[H, T, m]` pre-activations.
    pub pre: Vec<f32>,
    /// The SAE block's width, and the model heads in a block (1, or all for a dense SAE).
    d_head: usize,
    per_block: usize,
    /// `[H, T, T]` attention pattern.
    pattern: Vec<f32>,
    /// `[T, H, d]` value vectors (in the z convention).
    values: Vec<f32>,
    /// `[H, d, m]`.
    w_enc: Vec<f32>,
    input_scale: Vec<f32>,
}

impl Deref for LiveAnalysis {
    type Target = LiveTokens;
    fn deref(&self) -> &LiveTokens {
        &self.tokens
    }
}

/// The tensors of a text's analysis, not yet read back.
struct Pending {
    ids: Vec<u32>,
    strings: Vec<String>,
    /// `(blocks, block width, features per block, model heads per block)`.
    shape: (usize, usize, usize, usize),
    feats: Tensor<3>,
    pre: Tensor<3>,
    pattern: Tensor<4>,
    values: Tensor<4>,
    w_enc: Tensor<3>,
    input_scale: Vec<f32>,
    skips_bos: bool,
}

/// The host copies of [`Pending`]'s tensors, in its order.
type Host = [Vec<f32>; 5];

impl Pending {
    /// Tokenizes `text` (BOS first when the model has one) and queues the LM and SAE.
    fn new(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        z_convention: ZConvention,
        text: &str,
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let ids = super::text_ids(loaded, text)?;
        anyhow::ensure!(
            layer < model.config.n_layers,
            "layer {layer}: the model has {} layers",
            model.config.n_layers
        );
        let hooks = HookRequest {
            hook_z: vec![layer],
            pattern: vec![layer],
            values: vec![layer],
            z_convention,
            ..Default::default()
        };
        let mut cache = model.run(model.tokens(std::slice::from_ref(&ids))?, &hooks, None)?;
        let z = cache.hook_z.remove(&layer).context("no hook_z")?;
        let pattern = cache.pattern.remove(&layer).context("no pattern")?;
        let values = cache.values.remove(&layer).context("no values")?;
        Self::of(loaded, sae, ids, [z, pattern, values])
    }

    /// [`Self::new`] from the LM's `hook_z`, `pattern` and `values` at the layer (in the
    /// SAE's z convention) for `ids`, already run.
    fn of(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        ids: Vec<u32>,
        [z, pattern, values]: [Tensor<4>; 3],
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let t = ids.len();
        let (h, d, m, per_block) = super::sae_sizes(sae, model)?;
        let out = sae.forward(sae.scale_input(z.reshape([t, h, d])));
        let feats = super::unless_bos(sae, model, std::slice::from_ref(&ids), out.feats);
        let skips_bos = super::skips_bos(sae, model, &ids);
        let strings = ids
            .iter()
            .map(|&id| crate::lm::token_text(&loaded.tokenizer, id))
            .collect();
        Ok(Self {
            ids,
            strings,
            shape: (h, d, m, per_block),
            feats,
            pre: out.pre,
            pattern,
            values,
            w_enc: sae.w_enc.clone(),
            input_scale: sae.input_scale.clone(),
            skips_bos,
        })
    }

    async fn read(self) -> anyhow::Result<LiveAnalysis> {
        use super::read_async as host;
        let host = [
            host(&self.feats).await?,
            host(&self.pre).await?,
            host(&self.pattern).await?,
            host(&self.values).await?,
            host(&self.w_enc).await?,
        ];
        Ok(self.finish(host))
    }

    fn finish(self, [feats, pre, pattern, values, w_enc]: Host) -> LiveAnalysis {
        let (h, d, m, per_block) = self.shape;
        let t = self.ids.len();
        let active = (0..h)
            .map(|head| {
                (0..t)
                    .map(|p| {
                        let row = &feats[(head * t + p) * m..][..m];
                        let mut on: Vec<(u32, f32)> = row
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| **a > 0.0)
                            .map(|(f, &a)| (f as u32, a))
                            .collect();
                        on.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                        on
                    })
                    .collect()
            })
            .collect();
        LiveAnalysis {
            tokens: LiveTokens {
                ids: self.ids,
                strings: self.strings,
                n_heads: h,
                features_per_head: m,
                active,
                dense_heads: (per_block > 1).then_some(per_block),
                skips_bos: self.skips_bos,
            },
            pre,
            d_head: d,
            per_block,
            pattern,
            values,
            w_enc,
            input_scale: self.input_scale,
        }
    }
}

impl LiveAnalysis {
    /// Tokenizes `text` (BOS first when the model has one) and runs it, blocking on
    /// [`run_async`](Self::run_async).
    pub fn run(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        z_convention: ZConvention,
        text: &str,
    ) -> anyhow::Result<Self> {
        super::blocking(Self::run_async(loaded, sae, layer, z_convention, text))
    }

    /// [`run`](Self::run) with the read-back awaited: the only kind WebGPU allows.
    pub async fn run_async(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        z_convention: ZConvention,
        text: &str,
    ) -> anyhow::Result<Self> {
        Pending::new(loaded, sae, layer, z_convention, text)?
            .read()
            .await
    }

    /// The analysis of `ids` from a forward pass already run in the raw z convention with
    /// `hook_z`, `pattern` and `values` at `layer` among its hooks (what
    /// [`run_async`](Self::run_async) gives on their text), in `z_convention`: the fold
    /// comes off `hook_z` and the values as the forward takes it off.
    pub(crate) async fn of_raw_async(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        (layer, z_convention): (usize, ZConvention),
        ids: Vec<u32>,
        raw: &crate::lm::HookCache,
    ) -> anyhow::Result<Self> {
        let fold = match (z_convention, &loaded.transformer.blocks[layer].attn.z_fold) {
            (ZConvention::TransformerLens, Some(f)) => Some(f.clone().unsqueeze::<4>()),
            _ => None,
        };
        let unfolded = |x: Tensor<4>| match &fold {
            Some(f) => x - f.clone(),
            None => x,
        };
        let z = raw.hook_z.get(&layer).context("no hook_z")?.clone();
        let pattern = raw.pattern.get(&layer).context("no pattern")?.clone();
        let values = raw.values.get(&layer).context("no values")?.clone();
        Pending::of(loaded, sae, ids, [unfolded(z), pattern, unfolded(values)])?
            .read()
            .await
    }

    /// DFA of `feature` of `head` at `target`, by source position `0..=target`: for a
    /// dense SAE's block, summed over the model's heads (each its part of the encoder
    /// column, its pattern and its values), so the sum plus `b_enc` is still the
    /// pre-activation.
    pub fn dfa(&self, head: usize, feature: usize, target: usize) -> Vec<f32> {
        sum_parts(&self.dfa_parts(head, feature, target), target + 1)
    }

    /// [`Self::dfa`] before the sum over the model heads of the block: one DFA by source
    /// per head (one in all for an SAE with one block per head).
    fn dfa_parts(&self, head: usize, feature: usize, target: usize) -> Vec<Vec<f32>> {
        let (t, r, m) = (self.len(), self.per_block, self.tokens.features_per_head);
        let (d, hm) = (self.d_head / r, self.tokens.n_heads * r);
        dfa_by_head(
            &self.w_enc,
            (head, feature, m),
            (r, d),
            |mh| &self.pattern[(mh * t + target) * t..][..t],
            |mh, s| &self.values[(s * hm + mh) * d..][..d],
            self.input_scale[head],
            target,
        )
    }

    /// The pre-activation of `feature` of `head` at `position`.
    pub fn pre_activation(&self, head: usize, feature: usize, position: usize) -> f32 {
        self.pre[(head * self.len() + position) * self.tokens.features_per_head + feature]
    }

    /// The DFA of `feature` of `head` at `position` and its pre-activation; for a dense SAE,
    /// also the DFA by model head.
    pub fn attribution(&self, head: usize, feature: usize, position: usize) -> Attribution {
        let parts = self.dfa_parts(head, feature, position);
        Attribution {
            dfa: sum_parts(&parts, position + 1),
            pre: self.pre_activation(head, feature, position),
            by_head: part_sums(&parts),
        }
    }
}

impl Analysed for LiveAnalysis {
    fn tokens(&self) -> &LiveTokens {
        &self.tokens
    }

    fn attribution_state(&self, head: usize, feature: usize, position: usize) -> AttributionState {
        AttributionState::Ready(self.attribution(head, feature, position))
    }
}
