//! Live analysis of a user's text: the LM to the hooked layer, the SAE on its hook_z, the
//! features each token fires per head, and the DFA of any (token, feature) by source
//! position, by the formula the dashboard builder uses (`dashboard::dfa`).
//!
//! [`LiveTokens`] and [`Attribution`] are what a viewer shows; they build for every target
//! (the web viewer receives them as JSON from the page's inference bundle). The analysis
//! itself ([`LiveAnalysis`], burn) runs on the desktop and in that bundle.

#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod analysis;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use analysis::LiveAnalysis;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod effect;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use effect::{feature_effect, feature_effect_async};
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod ranking;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use ranking::{rank_features, rank_features_async};

/// `(heads, d_head, features per head)` of an SAE with one block per head of `model`'s
/// attention, or why it does not fit.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn per_head_sizes(
    sae: &crate::sae::BlockDiagSae,
    model: &crate::lm::Transformer,
) -> anyhow::Result<(usize, usize, usize)> {
    let c = &sae.config;
    let (h, d) = (model.config.n_heads, model.config.d_head);
    anyhow::ensure!(
        c.n_heads == h && c.d_head == d,
        "the SAE ({} heads x d_head {}) does not fit the model's layer ({h} x {d})",
        c.n_heads,
        c.d_head
    );
    Ok((h, d, c.features_per_head))
}

/// A tensor's values, the read-back awaited (the only kind WebGPU has).
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
async fn read_async<const D: usize>(t: &burn::tensor::Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.clone()
        .into_data_async()
        .await
        .map_err(|e| anyhow::anyhow!("reading tensor back: {e:?}"))?
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor back: {e:?}"))
}

/// A text's tokens and the features each head fires on each of them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveTokens {
    pub ids: Vec<u32>,
    /// Each token's text, as the tokenizer decodes it alone.
    pub strings: Vec<String>,
    pub n_heads: usize,
    pub features_per_head: usize,
    /// `[head][position]`: the features active there, `(feature, activation)`, strongest
    /// first.
    pub active: Vec<Vec<Vec<(u32, f32)>>>,
}

impl LiveTokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The activation of `feature` of `head` at `position` (0 when it does not fire).
    pub fn activation(&self, head: usize, feature: usize, position: usize) -> f32 {
        self.active[head][position]
            .iter()
            .find(|x| x.0 as usize == feature)
            .map_or(0.0, |x| x.1)
    }
}

/// One feature of one head at one position: its DFA by source position `0..=position` and
/// its pre-activation (the DFA's sum plus `b_enc`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attribution {
    pub dfa: Vec<f32>,
    pub pre: f32,
}

/// What one feature does to a text's next-token predictions: the model run on the text
/// clean and with the feature removed from its head's `hook_z` wherever it fires (its
/// activation times its decoder row, in hook_z's units; the SAE's error and every other
/// feature stay), everything else unchanged.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureEffect {
    pub head: usize,
    pub feature: usize,
    /// The text's tokens.
    pub ids: Vec<u32>,
    /// The feature's activation at each position (zero where it does not fire).
    pub activation: Vec<f32>,
    /// Per position `p` below the last: the loss on token `p + 1`, clean.
    pub loss: Vec<f32>,
    /// The same with the feature removed.
    pub ablated: Vec<f32>,
    /// Per position: the next tokens whose probability the feature raises most (it falls
    /// most when the feature is removed), largest change first.
    pub promotes: Vec<Vec<TokenChange>>,
    /// Per position: the next tokens whose probability the feature lowers most.
    pub suppresses: Vec<Vec<TokenChange>>,
}

/// A next token whose probability a feature changes: its probability clean and with the
/// feature removed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenChange {
    pub id: u32,
    pub token: String,
    pub clean: f32,
    pub ablated: f32,
}

impl TokenChange {
    /// What the feature adds to the token's probability.
    pub fn change(&self) -> f32 {
        self.clean - self.ablated
    }
}

impl FeatureEffect {
    /// How much the feature lowers the loss on token `p + 1` (the loss with it removed less
    /// the clean loss): positive where it helps the prediction.
    pub fn helps(&self, p: usize) -> f32 {
        self.ablated[p] - self.loss[p]
    }

    /// [`helps`](Self::helps) summed over the text.
    pub fn total(&self) -> f32 {
        (0..self.loss.len()).map(|p| self.helps(p)).sum()
    }

    /// The first position the feature fires at (nothing before it can change).
    pub fn first_firing(&self) -> Option<usize> {
        self.activation.iter().position(|&a| a > 0.0)
    }
}

/// Which features matter for a text's predictions: for every feature that fires in it, a
/// first-order estimate of how much the text's total next-token loss would rise without it
/// (from the gradient of the loss with respect to `hook_z`; one forward and one backward
/// pass for all features), largest first. [`FeatureEffect`] is the exact change for one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureRanking {
    pub ids: Vec<u32>,
    pub features: Vec<RankedFeature>,
}

impl FeatureRanking {
    /// Each head's features' estimates summed (`n_heads` entries): to first order, what
    /// removing all of a head's firing features together would add to the loss.
    pub fn by_head(&self, n_heads: usize) -> Vec<f32> {
        let mut sums = vec![0.0f64; n_heads];
        for f in self.features.iter().filter(|f| f.head < n_heads) {
            sums[f.head] += f.estimate as f64;
        }
        sums.into_iter().map(|x| x as f32).collect()
    }
}

/// One feature of a [`FeatureRanking`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankedFeature {
    pub head: usize,
    pub feature: usize,
    /// Positions it fires at.
    pub fires: u32,
    /// The estimated rise in the text's summed loss without it (negative: it hurts).
    pub estimate: f32,
}

/// Something a viewer asked the model for, as it has it: being computed, computed, or
/// failed with a reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    Computing,
    Ready(Box<T>),
    Failed(String),
}

impl<T> Answer<T> {
    pub fn of(result: Result<T, String>) -> Self {
        match result {
            Ok(x) => Self::Ready(Box::new(x)),
            Err(why) => Self::Failed(why),
        }
    }
}

/// A feature's effect as a viewer has it.
pub type EffectState = Answer<FeatureEffect>;

/// The ranking a viewer asked for, of the text with these tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedRanking {
    pub ids: Vec<u32>,
    pub state: Answer<FeatureRanking>,
}

/// The effect a viewer asked for: of which feature, on which tokens, and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedEffect {
    pub ids: Vec<u32>,
    pub head: usize,
    pub feature: usize,
    pub state: EffectState,
}

impl AskedEffect {
    pub fn is_for(&self, ids: &[u32], head: usize, feature: usize) -> bool {
        self.ids == ids && self.head == head && self.feature == feature
    }

    /// Takes `result`, the answer to the request for (`ids`, `head`, `feature`), if that
    /// is this request (a stale answer is dropped).
    pub fn answer(
        &mut self,
        (ids, head, feature): (&[u32], usize, usize),
        result: Result<FeatureEffect, String>,
    ) {
        if self.is_for(ids, head, feature) {
            self.state = Answer::of(result);
        }
    }
}

/// An attribution as a viewer has it: computed, still being computed (the web page's
/// worker answers asynchronously), or failed with a reason.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributionState {
    Ready(Attribution),
    Computing,
    Failed(String),
}

/// An analysed text as a viewer sees it: the tokens with their features, and each
/// (head, feature, position)'s attribution on request.
pub trait Analysed {
    fn tokens(&self) -> &LiveTokens;
    fn attribution_state(&self, head: usize, feature: usize, position: usize) -> AttributionState;
}

/// What Your text shows, as JSON: `{prompt, tokens, pick}`, `pick` being the picked
/// `(position, head, feature)` with its activation, DFA and pre-activation (or null); while
/// the attribution is computed (or if it failed) `dfa` is empty, `pre` null and
/// `attribution` says so.
/// `attn-saes text --json` prints it; the web page's `attnSaes.live_shown()` adds `status`.
pub fn shown_json(
    a: &dyn Analysed,
    prompt: &str,
    pick: Option<(usize, usize, usize)>,
) -> serde_json::Value {
    let t = a.tokens();
    let pick = pick.filter(|&(p, _, _)| p < t.len()).map(|(p, h, f)| {
        let (dfa, pre, state) = match a.attribution_state(h, f, p) {
            AttributionState::Ready(at) => (at.dfa, Some(at.pre), "ready".to_string()),
            AttributionState::Computing => (vec![], None, "computing".into()),
            AttributionState::Failed(why) => (vec![], None, format!("failed: {why}")),
        };
        serde_json::json!({
            "position": p, "head": h, "feature": f,
            "activation": t.activation(h, f, p), "dfa": dfa, "pre": pre, "attribution": state,
        })
    });
    serde_json::json!({ "prompt": prompt, "tokens": t, "pick": pick })
}

#[cfg(test)]
mod tests {
    use super::{FeatureRanking, RankedFeature};

    #[test]
    fn by_head_sums_each_heads_estimates() {
        let f = |head, estimate| RankedFeature {
            head,
            feature: 0,
            fires: 1,
            estimate,
        };
        let r = FeatureRanking {
            ids: vec![],
            features: vec![f(1, 0.5), f(0, 0.25), f(1, -2.0), f(2, 1.0)],
        };
        assert_eq!(r.by_head(3), vec![0.25, -1.5, 1.0]);
        assert_eq!(r.by_head(4)[3], 0.0);
    }
}
