//! Live analysis of a user's text (desktop app): the LM to the hooked layer, the SAE on its
//! hook_z, the features each token fires per head, and the DFA of any (token, feature) by
//! source position, computed as the dashboard builder does (`dfa_by_source`).

use anyhow::Context;

use crate::dashboard::build::dfa_by_source;
use crate::files::host_vec;
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

/// One text run through the LM and the SAE.
pub struct LiveAnalysis {
    pub ids: Vec<u32>,
    /// Each token's text, as the tokenizer decodes it alone.
    pub strings: Vec<String>,
    pub n_heads: usize,
    pub features_per_head: usize,
    /// `[head][position]`: the features active there, `(feature, activation)`, strongest
    /// first.
    pub active: Vec<Vec<Vec<(u32, f32)>>>,
    /// `[H, T, m]` pre-activations.
    pub pre: Vec<f32>,
    d_head: usize,
    /// `[H, T, T]` attention pattern.
    pattern: Vec<f32>,
    /// `[T, H, d]` value vectors (in the z convention).
    values: Vec<f32>,
    /// `[H, d, m]`.
    w_enc: Vec<f32>,
    input_scale: Vec<f32>,
}

impl LiveAnalysis {
    /// Tokenizes `text` (BOS first when the model has one) and runs it.
    pub fn run(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        z_convention: ZConvention,
        text: &str,
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let enc = loaded
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let mut ids: Vec<u32> = model.config.bos_token_id.into_iter().collect();
        ids.extend(enc.get_ids());
        anyhow::ensure!(!ids.is_empty(), "the text gives no tokens");
        let t = ids.len();
        let (h, d, m) = (
            sae.config.n_heads,
            sae.config.d_head,
            sae.config.features_per_head,
        );
        anyhow::ensure!(
            h == model.config.n_heads && d == model.config.d_head,
            "the SAE ({h} heads x d_head {d}) does not fit the model's layer ({} x {})",
            model.config.n_heads,
            model.config.d_head
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
        let out = sae.forward(sae.scale_input(z.reshape([t, h, d])));
        let feats = host_vec(out.feats)?; // [H, T, m]
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
        let strings = ids
            .iter()
            .map(|&id| loaded.tokenizer.decode(&[id], false).unwrap_or_default())
            .collect();
        Ok(Self {
            strings,
            n_heads: h,
            features_per_head: m,
            active,
            pre: host_vec(out.pre)?,
            d_head: d,
            pattern: host_vec(cache.pattern.remove(&layer).context("no pattern")?)?,
            values: host_vec(cache.values.remove(&layer).context("no values")?)?,
            w_enc: host_vec(sae.w_enc.clone())?,
            input_scale: sae.input_scale.clone(),
            ids,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// DFA of `feature` of `head` at `target`, by source position `0..=target`.
    pub fn dfa(&self, head: usize, feature: usize, target: usize) -> Vec<f32> {
        let (t, h, d, m) = (
            self.len(),
            self.n_heads,
            self.d_head,
            self.features_per_head,
        );
        let enc_col: Vec<f32> = (0..d)
            .map(|k| self.w_enc[(head * d + k) * m + feature])
            .collect();
        dfa_by_source(
            &self.pattern[(head * t + target) * t..][..t],
            |s| &self.values[(s * h + head) * d..][..d],
            &enc_col,
            self.input_scale[head],
            target,
        )
    }

    /// The pre-activation of `feature` of `head` at `position`.
    pub fn pre_activation(&self, head: usize, feature: usize, position: usize) -> f32 {
        self.pre[(head * self.len() + position) * self.features_per_head + feature]
    }
}
