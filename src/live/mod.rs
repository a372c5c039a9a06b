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
pub use effect::{
    effects_on_examples, effects_on_examples_async, feature_effect, feature_effect_async,
    feature_effect_on, feature_effect_on_async, feature_effect_scaled,
};
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod upstream;
// For the dashboards' split over the top examples (native only).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use upstream::{back_through_norm, constant_kept, norm_scale, value_constant, w_v_of};
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use upstream::{
    examples_split, examples_split_async, upstream_of, upstream_on_examples,
    upstream_on_examples_async, upstream_on_prompt_lines, upstream_on_prompt_lines_async,
    upstream_on_prompts, upstream_on_prompts_async, upstream_through, upstream_through_async,
};
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod steer;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use steer::{choose, steer, steer_async};
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
mod ranking;
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub use ranking::{
    WINDOWS_PER_PASS, answer_objective, exact_on_prompts, exact_on_prompts_async,
    exact_prompt_lines, exact_prompt_lines_async, lm_gradient, rank_features, rank_features_async,
    rank_features_for, rank_features_from, rank_features_over, rank_on_prompts,
    rank_on_prompts_async, rank_prompt_lines, rank_prompt_lines_async, resolve_answer,
    resolve_prompts,
};

/// A prompt set's lines as they are (Your text's, in the app and the page), named "prompt
/// 1", "prompt 2", ... in the order given, for errors.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn named_prompts<U>(lines: impl IntoIterator<Item = U>) -> Vec<(String, U)> {
    (lines.into_iter().enumerate())
        .map(|(i, p)| (format!("prompt {}", i + 1), p))
        .collect()
}

/// `(blocks, block width, features per block, model heads per block)` of an SAE that reads
/// `model`'s hook_z: one block per head, or one dense block over every head (what the
/// analysis of a text takes, and what changes the model's run).
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn sae_sizes(
    sae: &crate::sae::BlockDiagSae,
    model: &crate::lm::Transformer,
) -> anyhow::Result<(usize, usize, usize, usize)> {
    let c = &sae.config;
    let (h, d) = (model.config.n_heads, model.config.d_head);
    sae.check_fits(&model.config.name, h, d)?;
    Ok((c.n_heads, c.d_head, c.features_per_head, h / c.n_heads))
}

/// [`sae_sizes`], with `(block, feature)` checked to be one of the SAE's features (block:
/// the feature's head, or 0 in a dense SAE): `(blocks, block width)`.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn feature_of(
    sae: &crate::sae::BlockDiagSae,
    model: &crate::lm::Transformer,
    (head, feature): (usize, usize),
) -> anyhow::Result<(usize, usize)> {
    let (blocks, width, m, _) = sae_sizes(sae, model)?;
    anyhow::ensure!(
        head < blocks && feature < m,
        "head {head}, feature {feature}: {}",
        match blocks {
            1 => format!("the SAE is one dense block of {m} features (head 0)"),
            _ => format!("the SAE has {blocks} heads of {m} features"),
        }
    );
    Ok((blocks, width))
}

/// Whether `window` starts with a BOS that the SAE does not read.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn skips_bos(
    sae: &crate::sae::BlockDiagSae,
    model: &crate::lm::Transformer,
    window: &[u32],
) -> bool {
    let bos = model.config.bos_token_id;
    !sae.reads_bos && bos.is_some() && window.first().copied() == bos
}

/// `feats` (`[blocks, n, m]`, the positions of `windows` in order) with none at a BOS token
/// in a window's first position, unless the SAE reads BOS ([`BlockDiagSae::reads_bos`]):
/// the run's SAE is not applied there, so its features neither show nor are removed.
///
/// [`BlockDiagSae::reads_bos`]: crate::sae::BlockDiagSae::reads_bos
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn unless_bos(
    sae: &crate::sae::BlockDiagSae,
    model: &crate::lm::Transformer,
    windows: &[Vec<u32>],
    feats: burn::tensor::Tensor<3>,
) -> burn::tensor::Tensor<3> {
    use burn::tensor::{Tensor, TensorData};
    let skips = |w: &Vec<u32>| skips_bos(sae, model, w);
    if !windows.iter().any(skips) {
        return feats;
    }
    let mask: Vec<f32> = windows
        .iter()
        .flat_map(|w| (0..w.len()).map(move |p| if p == 0 && skips(w) { 0.0 } else { 1.0 }))
        .collect();
    let n = mask.len();
    let mask = Tensor::<1>::from_data(TensorData::new(mask, [n]), &feats.device());
    feats * mask.reshape([1, n, 1])
}

/// A text's token ids as the model reads it: BOS first when the model has one.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub fn text_ids(loaded: &crate::lm::LoadedModel, text: &str) -> anyhow::Result<Vec<u32>> {
    let enc = loaded
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    let mut ids: Vec<u32> = loaded.transformer.config.bos_token_id.into_iter().collect();
    ids.extend(enc.get_ids());
    anyhow::ensure!(!ids.is_empty(), "the text gives no tokens");
    Ok(ids)
}

/// Runs one of the async computations below to its end on this thread: its read-backs
/// block as burn's own synchronous read does (`into_data`), so the desktop's synchronous
/// calls and the browser's awaited ones share one body. Where nothing can block (the
/// browser) and a read-back is not ready at once, an error says to await instead.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
fn blocking<T>(
    computation: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    burn::tensor::try_read_sync(computation).unwrap_or_else(|| {
        Err(anyhow::anyhow!(
            "this platform cannot wait for the device: use the async call"
        ))
    })
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
    /// Each token's text, as the tokenizer decodes it alone ([`crate::lm::token_text`]).
    pub strings: Vec<String>,
    /// The SAE's blocks (one per head, or 1 for a dense SAE) and features in each.
    pub n_heads: usize,
    pub features_per_head: usize,
    /// `[head][position]`: the features active there, `(feature, activation)`, strongest
    /// first.
    pub active: Vec<Vec<Vec<(u32, f32)>>>,
    /// The model's heads when the SAE is dense (its one block reads them all); none for a
    /// block-diagonal SAE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_heads: Option<usize>,
    /// The first token is BOS and the SAE does not read it (trained without BOS, as by
    /// default): no features there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skips_bos: bool,
}

/// What a viewer says of a BOS the SAE does not read ([`LiveTokens::skips_bos`]).
pub const BOS_SKIPPED: &str = "BOS, which the SAE does not read: it was trained without BOS \
                               positions (as by default; --keep-bos runs read them)";

impl LiveTokens {
    /// Whether position `p` is a BOS the SAE does not read.
    pub fn skipped(&self, p: usize) -> bool {
        self.skips_bos && p == 0
    }

    /// What the SAE's block `h` is called: `h3`, or `all heads` for a dense SAE's.
    pub fn block_name(&self, h: usize) -> String {
        match self.dense_heads {
            Some(_) => "all heads".to_string(),
            None => format!("h{h}"),
        }
    }

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
    /// A dense SAE's feature only: the DFA by model head, each head's terms summed over the
    /// sources (they add up to the DFA's sum); empty for an SAE with one block per head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_head: Vec<f32>,
}

/// A component of the residual stream entering the hooked layer: what wrote some of what a
/// feature reads at a source position ([`Upstream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Writer {
    /// The token's embedding.
    Embedding,
    /// The learned position embedding (GPT-2's; rotary and shortformer models have none in
    /// the residual stream).
    Positions,
    /// One head of an earlier layer: its `z W_O` at the source.
    Head { layer: usize, head: usize },
    /// Every earlier layer's attention output bias `b_O`, together.
    OutputBiases,
    /// An earlier layer's MLP output (its bias included).
    Mlp { layer: usize },
    /// The constant in the value read (`ln1.b W_V + b_V` of its layer), not written by
    /// anything upstream: listed where the DFA holds it (the raw convention; in
    /// TransformerLens' hook_z, which folds it away, only a shortformer model's norm bias
    /// part, and all of it in a model without a fold); a step through a head ends with
    /// that head's.
    ValueBias,
}

impl Writer {
    /// "embedding", "L3 h7", "MLP 3", ...
    pub fn name(&self) -> String {
        match self {
            Writer::Embedding => "embedding".into(),
            Writer::Positions => "positions".into(),
            Writer::Head { layer, head } => format!("L{layer} h{head}"),
            Writer::OutputBiases => "attention output biases".into(),
            Writer::Mlp { layer } => format!("MLP {layer}"),
            Writer::ValueBias => "value bias".into(),
        }
    }
}

/// One writer's part of a feature's DFA from one source position.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WrittenBy {
    pub writer: Writer,
    pub value: f32,
    /// An earlier head only: its part by the position it read from at the source (its
    /// pattern row there times its value vector's part), `0..=source`; they sum to `value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_source: Vec<f32>,
}

/// A feature's DFA from one source position taken one step further upstream: the value
/// vector the feature reads there is the hooked layer's norm of the residual stream at the
/// source times `W_V`, and with the norm's scale at the source held at its value the norm
/// is linear, so the residual stream's components (the embeddings, each earlier head, each
/// earlier MLP, the biases) each give a part; the parts sum to the DFA from the source. The
/// recursive DFA of Kissane et al.'s attention-SAE work, one step of it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Upstream {
    pub head: usize,
    pub feature: usize,
    /// The position the feature is read at, and the source position taken apart.
    pub target: usize,
    pub source: usize,
    /// The DFA from `source` (the sum of `parts`); taken [`through`](Self::through) heads,
    /// the last head's part read from its position, which `parts` split instead.
    pub dfa: f32,
    /// Every writer, in the model's order (embeddings, then each layer's heads, then its
    /// MLP; the biases last), of the stream entering the hooked layer at `source`, or the
    /// last step's head's layer at its position.
    pub parts: Vec<WrittenBy>,
    /// The heads the split was taken further up through, each read from a position at or
    /// before the one before it (none: one step, at `source`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub through: Vec<Through>,
    /// The DFA from `source`, then each step's term (the head's part of the split before it,
    /// read from its position); the last is `dfa`.
    #[serde(default)]
    pub terms: Vec<f32>,
    /// How many of the last steps of `through` were taken by following the strongest
    /// head ([`UpstreamAsk::follow`]) rather than asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub followed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A step further upstream ([`Upstream::through`]): the part of the split before written by
/// head `head` of layer `layer`, read from position `from`, split in turn by what wrote the
/// stream that head read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Through {
    pub layer: usize,
    pub head: usize,
    pub from: usize,
}

impl Upstream {
    /// The layer whose incoming stream `parts` split (the hooked layer, or the last step's
    /// head's), given the hooked layer, and the position.
    pub fn split_at(&self, hooked: usize) -> (usize, usize) {
        let layer = self.through.last().map_or(hooked, |step| step.layer);
        (layer, self.split_position())
    }

    /// The position whose incoming stream `parts` split: the source, or the last step's.
    pub fn split_position(&self) -> usize {
        self.through.last().map_or(self.source, |step| step.from)
    }

    /// What `parts` split, in words: "DFA from 2 " Mary"", then " through L1 h0 reading
    /// from 2 " Mary", then ..." for each step, `token` naming a position.
    pub fn described(&self, token: impl Fn(usize) -> String) -> String {
        let mut said = format!("DFA from {}", token(self.source));
        for (i, s) in self.through.iter().enumerate() {
            said += if i == 0 { " through " } else { ", then " };
            said += &format!("L{} h{} reading from {}", s.layer, s.head, token(s.from));
        }
        said
    }

    /// The ask that gives this split as it is, without following further: the feature, the
    /// position and source, and every step taken (asked for or followed).
    pub fn asked(&self) -> UpstreamAsk {
        UpstreamAsk {
            feature: (self.head, self.feature),
            at: (self.target, self.source),
            through: self.through.clone(),
            follow: false,
        }
    }

    /// The earlier head with the largest part (of those not 0), the position giving the
    /// largest part of its term, and that term: where following would go next (none at
    /// layer 0, whose stream only the embeddings write).
    pub fn strongest_head(&self) -> Option<(&WrittenBy, usize, f32)> {
        strongest_head(&self.parts)
    }

    /// The steps [`UpstreamAsk::follow`] took, in words, `token` naming a position: a
    /// header ("Followed the strongest head up 2 steps from the DFA from 2 " Mary"
    /// (+3.6064), each step's term (its share of the one before):") and a line a step
    /// ("-0.2048 (-5.7%)  L10 h7 reading from 0 "<bos>"").
    pub fn followed_said(&self, token: impl Fn(usize) -> String) -> (String, Vec<String>) {
        let asked = self.through.len() - self.followed;
        let from = match asked {
            0 => format!("the DFA from {}", token(self.source)),
            n => {
                let step = self.through[n - 1];
                format!("L{} h{}'s term", step.layer, step.head)
            }
        };
        let header = format!(
            "Followed the strongest head up {} step{} from {from} ({:+.4}), each step's term \
             (its share of the one before):",
            self.followed,
            if self.followed == 1 { "" } else { "s" },
            self.terms[asked]
        );
        let steps = (self.through.iter().enumerate().skip(asked)).map(|(i, step)| {
            let (before, term) = (self.terms[i], self.terms[i + 1]);
            let share = match before {
                0.0 => String::new(),
                b => format!(" ({:+.1}%)", 100.0 * term / b),
            };
            format!(
                "{term:+.4}{share}  L{} h{} reading from {}",
                step.layer,
                step.head,
                token(step.from)
            )
        });
        (header, steps.collect())
    }

    /// Why following stops at this split, in words, `token` naming a position: "only the
    /// embeddings write layer 0's stream", or "the strongest head there, L1 h8 reading from
    /// 0 "<bos>" (+0.0082), gives under 1% of the DFA from the source".
    pub fn why_stopped(&self, token: impl Fn(usize) -> String) -> String {
        match self.strongest_head() {
            None => "only the embeddings write layer 0's stream".into(),
            Some((top, from, term)) => format!(
                "the strongest head there, {} reading from {} ({term:+.4}), gives under {}% of \
                 the DFA from the source",
                top.writer.name(),
                token(from),
                100.0 * FOLLOW_MIN_SHARE
            ),
        }
    }

    /// The parts with the largest magnitude first, at most `n`.
    pub fn strongest(&self, n: usize) -> Vec<&WrittenBy> {
        strongest(&self.parts, n)
    }

    /// The parts not among the [`strongest`](Self::strongest) `n`: how many, and their sum.
    pub fn rest(&self, n: usize) -> (usize, f32) {
        largest_first(&self.parts, |p| p.value, n).1
    }
}

impl WrittenBy {
    /// An earlier head's positions read from at the source, `(position, part)`, the largest
    /// magnitude first, at most `n` (none for other writers).
    pub fn reading_from(&self, n: usize) -> Vec<(usize, f32)> {
        let mut from: Vec<(usize, f32)> = self.by_source.iter().copied().enumerate().collect();
        from.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        from.truncate(n);
        from
    }
}

/// `parts` with the largest magnitude first (the first of equals first), at most `n`.
fn strongest(parts: &[WrittenBy], n: usize) -> Vec<&WrittenBy> {
    largest_first(parts, |p| p.value, n).0
}

/// `items` with the largest `value` in magnitude first (the first of equals first), at most
/// `n`, and the others' count and values summed.
fn largest_first<T>(items: &[T], value: impl Fn(&T) -> f32, n: usize) -> (Vec<&T>, (usize, f32)) {
    let mut listed: Vec<&T> = items.iter().collect();
    listed.sort_by(|a, b| value(b).abs().total_cmp(&value(a).abs()));
    listed.truncate(n);
    let shown: f32 = listed.iter().map(|x| value(x)).sum();
    let all: f32 = items.iter().map(&value).sum();
    let rest = (items.len() - listed.len(), all - shown);
    (listed, rest)
}

/// A head's term under this share of the DFA from the source (in magnitude) is not
/// followed ([`UpstreamAsk::follow`]): the path stops there.
pub const FOLLOW_MIN_SHARE: f32 = 0.01;

/// [`Upstream::strongest_head`] of a split's parts.
fn strongest_head(parts: &[WrittenBy]) -> Option<(&WrittenBy, usize, f32)> {
    let heads = parts
        .iter()
        .filter(|w| matches!(w.writer, Writer::Head { .. }));
    let top =
        (heads.filter(|w| w.value != 0.0)).reduce(|a, b| match b.value.abs() > a.value.abs() {
            true => b,
            false => a,
        })?;
    let (from, term) = *top.reading_from(1).first()?;
    Some((top, from, term))
}

/// The step [`UpstreamAsk::follow`] takes from a split's `parts`: through the earlier head
/// with the largest part ([`Upstream::strongest_head`]; MLPs are not split further),
/// reading from the position giving the largest part of its term; none at layer 0, whose
/// stream only the embeddings write, or where that term is under [`FOLLOW_MIN_SHARE`] of
/// `from_source`, the DFA from the source.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub(crate) fn strongest_step(parts: &[WrittenBy], from_source: f32) -> Option<Through> {
    let (top, from, term) = strongest_head(parts)?;
    let Writer::Head { layer, head } = top.writer else {
        return None;
    };
    (term.abs() >= FOLLOW_MIN_SHARE * from_source.abs()).then_some(Through { layer, head, from })
}

/// One prompt's [`Upstream`] split (`attn-saes upstream --prompts`): its text, the
/// feature's activation at the position and the source token taken apart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptSplit {
    pub text: String,
    pub activation: f32,
    pub source_token: String,
    pub upstream: Upstream,
}

/// One writer's parts over several splits of a feature's DFA (one a prompt).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriterSpread {
    pub writer: Writer,
    pub mean: f32,
    /// The standard deviation over the splits (n - 1; 0 for one).
    pub sd: f32,
    pub min: f32,
    pub max: f32,
    /// An earlier head: the means of its part read from the source itself, from BOS
    /// (position 0, when that is not the source) and from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<[f32; 3]>,
}

/// Each writer's parts over `splits` (of one model, layer and feature: the same writers in
/// the same order, which is checked), in the writers' order.
#[cfg(any(not(target_arch = "wasm32"), feature = "web-live"))]
pub fn spread_of(splits: &[&Upstream]) -> anyhow::Result<Vec<WriterSpread>> {
    let first = splits.first().ok_or_else(|| anyhow::anyhow!("no splits"))?;
    for u in splits {
        anyhow::ensure!(
            u.parts.len() == first.parts.len()
                && u.parts
                    .iter()
                    .zip(&first.parts)
                    .all(|(a, b)| a.writer == b.writer)
                && u.through.is_empty(),
            "splits of different writers (another model or layer, or taken through heads)"
        );
    }
    let n = splits.len() as f64;
    let spread = (first.parts.iter().enumerate()).map(|(k, w)| {
        let values: Vec<f64> = splits.iter().map(|u| u.parts[k].value as f64).collect();
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let reading = matches!(w.writer, Writer::Head { .. }).then(|| {
            let mut sums = [0f64; 3];
            for u in splits {
                let (part, s) = (&u.parts[k], u.source);
                let itself = part.by_source.get(s).copied().unwrap_or(0.0) as f64;
                let bos = match s {
                    0 => 0.0,
                    _ => part.by_source.first().copied().unwrap_or(0.0) as f64,
                };
                sums[0] += itself;
                sums[1] += bos;
                sums[2] += part.value as f64 - itself - bos;
            }
            sums.map(|x| (x / n) as f32)
        });
        WriterSpread {
            writer: w.writer,
            mean: mean as f32,
            sd: var.sqrt() as f32,
            min: values.iter().copied().fold(f64::INFINITY, f64::min) as f32,
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32,
            reading,
        }
    });
    Ok(spread.collect())
}

/// Where a step of a followed path read from, relative to the position before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// The same position as the step before (the source, for the first).
    Itself,
    /// Position 0 (BOS, in a model that has one), when that is not the position before.
    Bos,
    Elsewhere,
}

/// One step of a [`PathCount`]: a head and where it read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathStep {
    pub layer: usize,
    pub head: usize,
    pub reading: ReadFrom,
}

/// One path the strongest heads took up from a source (`upstream --prompts --follow`),
/// with positions as [`ReadFrom`], over a prompt set: how many prompts took it, and the
/// means over them of the DFA from the source and of each step's term.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathCount {
    pub steps: Vec<PathStep>,
    pub prompts: usize,
    pub terms: Vec<f32>,
}

impl PathStep {
    /// "L10 h7 from BOS"
    pub fn name(&self) -> String {
        let from = match self.reading {
            ReadFrom::Itself => "itself",
            ReadFrom::Bos => "BOS",
            ReadFrom::Elsewhere => "elsewhere",
        };
        format!("L{} h{} from {from}", self.layer, self.head)
    }
}

/// The paths of splits followed up through heads ([`UpstreamAsk::follow`]), each path once,
/// the most prompts first (then in the order first met).
pub fn paths_of(splits: &[&Upstream]) -> Vec<PathCount> {
    let mut paths: Vec<(PathCount, Vec<f64>)> = Vec::new();
    for u in splits {
        let mut at = u.source;
        let steps: Vec<PathStep> = (u.through.iter())
            .map(|t| {
                let reading = match t.from {
                    f if f == at => ReadFrom::Itself,
                    0 => ReadFrom::Bos,
                    _ => ReadFrom::Elsewhere,
                };
                at = t.from;
                PathStep {
                    layer: t.layer,
                    head: t.head,
                    reading,
                }
            })
            .collect();
        let i = match paths.iter().position(|p| p.0.steps == steps) {
            Some(i) => i,
            None => {
                let count = PathCount {
                    steps,
                    prompts: 0,
                    terms: Vec::new(),
                };
                paths.push((count, vec![0.0; u.terms.len()]));
                paths.len() - 1
            }
        };
        let (count, sums) = &mut paths[i];
        count.prompts += 1;
        sums.iter_mut()
            .zip(&u.terms)
            .for_each(|(s, &t)| *s += t as f64);
    }
    let mut paths: Vec<PathCount> = (paths.into_iter())
        .map(|(mut count, sums)| {
            let n = count.prompts as f64;
            count.terms = sums.iter().map(|s| (s / n) as f32).collect();
            count
        })
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.prompts));
    paths
}

/// Which source position of each prompt a spread over a prompt set takes apart
/// (`upstream --from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRule {
    /// The source giving the DFA's largest part in magnitude ([`strongest_source`]).
    #[default]
    Strongest,
    /// The largest positive part ([`dfa_argmax`]: what the dashboards mark).
    Largest,
    /// The first token at or before the position that is the prompt's answer (in IOI
    /// prompts, the name the answer repeats).
    Answer,
}

impl SourceRule {
    pub const ALL: [SourceRule; 3] = [Self::Strongest, Self::Largest, Self::Answer];

    /// "giving the DFA's largest part"
    pub fn said(self) -> &'static str {
        match self {
            Self::Strongest => "giving the DFA's largest part",
            Self::Largest => "giving the DFA's largest positive part",
            Self::Answer => "of the answer's token",
        }
    }
}

/// One prompt of a spread over a prompt set (`upstream --prompts`' lines): its text, the
/// position the feature is read at (`None`: the last) and, for [`SourceRule::Answer`], the
/// answer's token. A prompt set's ranking lines read as they are: the position an answer is
/// predicted after.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamLine {
    pub text: String,
    #[serde(default)]
    pub at: Option<usize>,
    #[serde(default)]
    pub answer: Option<String>,
}

impl From<&PromptLine> for UpstreamLine {
    fn from(p: &PromptLine) -> Self {
        Self {
            text: p.text.clone(),
            at: p.ask.at,
            answer: Some(p.ask.answer.clone()),
        }
    }
}

/// What a spread over a prompt set is asked for: the feature `(head, feature)`, which
/// source of each prompt to take apart, and whether to follow the strongest heads up from
/// it ([`UpstreamAsk::follow`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpreadAsk {
    pub feature: (usize, usize),
    #[serde(default)]
    pub from: SourceRule,
    #[serde(default)]
    pub follow: bool,
}

/// A feature's DFA taken apart upstream on each prompt of a set (`upstream --prompts`, Your
/// text's prompt set): each prompt's split, and over them each writer's parts or, followed
/// up, the paths the strongest heads took.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptsSpread {
    pub prompts: Vec<PromptSplit>,
    /// Not followed: each writer's parts over the prompts ([`spread_of`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<WriterSpread>,
    /// Followed: the paths taken, each once, the most prompts first ([`paths_of`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathCount>,
}

impl PromptsSpread {
    /// The mean over the prompts of `of` each.
    pub fn mean(&self, of: impl Fn(&PromptSplit) -> f32) -> f32 {
        let n = self.prompts.len().max(1) as f64;
        (self.prompts.iter().map(|p| of(p) as f64).sum::<f64>() / n) as f32
    }

    /// In how many prompts the feature fires at the position.
    pub fn fires(&self) -> usize {
        self.prompts.iter().filter(|p| p.activation > 0.0).count()
    }

    /// The source tokens taken apart and in how many prompts each, the most first (then in
    /// the order first met).
    pub fn source_tokens(&self) -> Vec<(&str, usize)> {
        let mut tokens: Vec<(&str, usize)> = Vec::new();
        for p in &self.prompts {
            match tokens.iter_mut().find(|x| x.0 == p.source_token) {
                Some(x) => x.1 += 1,
                None => tokens.push((&p.source_token, 1)),
            }
        }
        tokens.sort_by_key(|x| std::cmp::Reverse(x.1));
        tokens
    }

    /// The writers with the largest mean parts in magnitude, at most `n`, and the others'
    /// count and mean parts summed.
    pub fn strongest_writers(&self, n: usize) -> (Vec<&WriterSpread>, (usize, f32)) {
        strongest_of(&self.writers, n)
    }
}

/// The writers of `writers` with the largest mean parts in magnitude, at most `n`, largest
/// first, and the others' count and mean parts summed.
pub fn strongest_of(writers: &[WriterSpread], n: usize) -> (Vec<&WriterSpread>, (usize, f32)) {
    largest_first(writers, |w| w.mean, n)
}

/// A spread over a prompt set a viewer asked for ([`PromptsSpread`]), of a prompt set's
/// lines.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedSpread {
    pub lines: Vec<PromptLine>,
    pub ask: SpreadAsk,
    pub state: Answer<PromptsSpread>,
    /// While computing: the prompts taken apart so far, and how many there are.
    pub progress: (usize, usize),
}

impl AskedSpread {
    /// Asked, not answered yet.
    pub fn computing(lines: Vec<PromptLine>, ask: SpreadAsk) -> Self {
        let of = lines.len();
        Self {
            lines,
            ask,
            state: Answer::Computing,
            progress: (0, of),
        }
    }

    /// Whether this is the spread of `lines` asked by `ask`.
    pub fn is_for(&self, lines: &[PromptLine], ask: &SpreadAsk) -> bool {
        self.lines == lines && &self.ask == ask
    }
}

/// Writers listed of an [`Upstream`] (`text --upstream`, Your text's split and its spread
/// over a prompt set), and positions listed for each head.
pub const UPSTREAM_LISTED: usize = 12;
pub const UPSTREAM_SOURCES: usize = 3;

/// The source of a DFA row with the largest magnitude (the one [`Upstream`] takes apart by
/// default: a negative source is as worth taking apart as a positive one); 0 for an empty
/// row.
pub fn strongest_source(dfa: &[f32]) -> usize {
    (dfa.iter().enumerate())
        .fold((0, f32::NEG_INFINITY), |best, (s, v)| {
            match v.abs() > best.1 {
                true => (s, v.abs()),
                false => best,
            }
        })
        .0
}

/// The first position with the largest (signed) attribution of a DFA row, and that value
/// (what the dashboards mark, and `upstream --from largest` takes apart).
pub fn dfa_argmax(dfa: &[f32]) -> Option<(usize, f32)> {
    dfa.iter()
        .copied()
        .enumerate()
        .fold(None, |best, (p, v)| match best {
            Some((_, b)) if v <= b => best,
            _ => Some((p, v)),
        })
}

/// What an [`Upstream`] split is asked for: the feature `(head, feature)`, `(target,
/// source)` and the heads to take it further up through.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamAsk {
    pub feature: (usize, usize),
    pub at: (usize, usize),
    #[serde(default)]
    pub through: Vec<Through>,
    /// Then keep stepping up, each step through the earlier head with the largest part,
    /// while its term is at least [`FOLLOW_MIN_SHARE`] of the DFA from the source, at most
    /// to layer 0 (the steps taken are the answer's
    /// [`through`](Upstream::through), counted in its `followed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

impl UpstreamAsk {
    /// The split of `feature`'s DFA at `at.0` from `at.1`, no further up.
    pub fn new(feature: (usize, usize), at: (usize, usize)) -> Self {
        Self {
            feature,
            at,
            through: Vec::new(),
            follow: false,
        }
    }

    /// This ask, then following the strongest head up ([`UpstreamAsk::follow`]).
    pub fn following(&self) -> Self {
        Self {
            follow: true,
            ..self.clone()
        }
    }

    /// This ask one step further up, through `step`.
    pub fn then(&self, step: Through) -> Self {
        let mut next = self.clone();
        next.through.push(step);
        next
    }

    /// This ask one step back down (the same when it is at the source).
    pub fn back(&self) -> Self {
        let mut back = self.clone();
        back.through.pop();
        back
    }
}

/// What an [`Upstream`] split is asked for, with the text's tokens.
pub type UpstreamKey = (Vec<u32>, UpstreamAsk);

/// The [`Upstream`] split a viewer asked for, of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedUpstream {
    pub ids: Vec<u32>,
    pub ask: UpstreamAsk,
    pub state: Answer<Upstream>,
}

impl AskedUpstream {
    /// Asked, not answered yet.
    pub fn computing(ids: Vec<u32>, ask: UpstreamAsk) -> Self {
        Self {
            ids,
            ask,
            state: Answer::Computing,
        }
    }

    /// Whether it is of `feature` at `target` on the text with `ids` (from any source,
    /// through any heads).
    pub fn is_for(&self, ids: &[u32], feature: (usize, usize), target: usize) -> bool {
        self.ids == ids && self.ask.feature == feature && self.ask.at.0 == target
    }

    /// Takes `result`, the answer to the request for (`ids`, `ask`), if that is this
    /// request (a stale answer is dropped).
    pub fn answer(&mut self, (ids, ask): (&[u32], &UpstreamAsk), result: Result<Upstream, String>) {
        if self.ids == ids && self.ask == *ask {
            self.state = Answer::of(result);
        }
    }
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
    /// What the feature's activation was multiplied by in the second pass: 0 (removed)
    /// unless asked otherwise (`text --effect --scale`).
    #[serde(default)]
    pub scale: f32,
    /// The feature's activation at each position (zero where it does not fire).
    pub activation: Vec<f32>,
    /// Per position `p` below the last: the loss on token `p + 1`, clean.
    pub loss: Vec<f32>,
    /// The same with the feature removed (or scaled by `scale`).
    pub ablated: Vec<f32>,
    /// Per position: the next tokens whose probability the feature raises most (it falls
    /// most when the feature is removed), largest change first.
    pub promotes: Vec<Vec<TokenChange>>,
    /// Per position: the next tokens whose probability the feature lowers most.
    pub suppresses: Vec<Vec<TokenChange>>,
    /// The answer objective asked about with it, and its change (`text --effect --answer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<(Objective, ObjectiveChange)>,
}

/// The longest steered continuation asked for at once.
pub const MAX_NEW_TOKENS: usize = 256;

/// A steered continuation asked for: the feature, the strength it is added with (or, with
/// `clamp`, the activation it is held at), how many new tokens, and how each is chosen: the
/// likeliest (`temperature` 0) or drawn from the model's distribution at `temperature`, with
/// one uniform number a step from a SplitMix64 stream seeded by `seed` shared by both
/// continuations (so only the steering parts them). `also` steers with more features at the
/// same time, the same way.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Steering {
    pub head: usize,
    pub feature: usize,
    pub strength: f32,
    pub tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub seed: u64,
    /// Hold the feature's activation at `strength` instead of adding `strength` to it: what
    /// is added at a position is the decoder row times `strength` less the feature's
    /// activation there (on the steered row's own hook_z). At strength 0 the model runs
    /// without the feature.
    #[serde(default)]
    pub clamp: bool,
    /// Steer only at the positions where the feature fires (its activation there, on the
    /// steered row's own hook_z, above 0), adding nothing elsewhere: added or, with
    /// `clamp`, held there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub where_fires: bool,
    /// Further features steered at the same time: `(head, feature, strength)` each, added
    /// (or clamped) as the first is; where two share a head, what they add is summed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<(usize, usize, f32)>,
    /// Steer the new tokens' positions only, not the prompt's: the first new token is then
    /// the clean one's (nothing before it is steered).
    #[serde(default)]
    pub new_only: bool,
    /// Steer from this position on (0 is the first token; a prompt position or a new
    /// token's), instead of from the first after BOS; not with `new_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_position: Option<usize>,
    /// Sampling only: draw from the nucleus, the likeliest tokens up to the first whose
    /// cumulative probability (at `temperature`) reaches `top_p` (all tokens when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Sampling only: draw from the `top_k` likeliest tokens (the lower id first on a tie),
    /// renormalised; with `top_p` too, the nucleus is taken among them (top-k first, as
    /// Hugging Face's samplers apply them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
}

/// `n` positions in words: "1 position", "12 positions".
pub fn positions(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 position".into(),
        n => format!("{n} positions"),
    }
}

/// What steering only where the feature fires adds to a description of it: " where it
/// fires", or nothing.
pub fn where_fires_said(where_fires: bool) -> &'static str {
    match where_fires {
        true => " where it fires",
        false => "",
    }
}

impl Steering {
    /// How each token is chosen, in words: "greedy", or "temperature T[, top-k K][, top-p
    /// P], seed N".
    pub fn sampling(&self) -> String {
        if self.temperature == 0.0 {
            return "greedy".into();
        }
        let mut said = format!("temperature {}", self.temperature);
        if let Some(k) = self.top_k {
            said += &format!(", top-k {k}");
        }
        if let Some(p) = self.top_p {
            said += &format!(", top-p {p}");
        }
        said + &format!(", seed {}", self.seed)
    }

    /// Every feature steered, `(head, feature, strength)`, the first first.
    pub fn features(&self) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
        std::iter::once((self.head, self.feature, self.strength)).chain(self.also.iter().copied())
    }

    /// Greedy, `tokens` new tokens, the feature added.
    pub fn greedy(head: usize, feature: usize, strength: f32, tokens: usize) -> Self {
        Self {
            head,
            feature,
            strength,
            tokens,
            temperature: 0.0,
            seed: 0,
            clamp: false,
            where_fires: false,
            also: Vec::new(),
            new_only: false,
            from_position: None,
            top_p: None,
            top_k: None,
        }
    }
}

/// A text continued by the model twice (the likeliest token each time, or sampled; see
/// [`Steering`]): as it is, and steered by one feature added to its head's `hook_z` at every
/// position after BOS, prompt and continuation, as if it fired there with activation
/// `strength` (its decoder row times `strength`, in hook_z's units; negative pushes the
/// other way), or clamped: held at activation `strength` there.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Steered {
    /// What was asked for (its fields inline in the JSON).
    #[serde(flatten)]
    pub steering: Steering,
    /// The prompt's tokens (BOS first when the model has one).
    pub prompt: Vec<u32>,
    pub clean: Continuation,
    pub steered: Continuation,
}

/// The tokens a model chose after a prompt.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Continuation {
    pub ids: Vec<u32>,
    /// Each token's text, as the tokenizer decodes it alone ([`crate::lm::token_text`]).
    pub tokens: Vec<String>,
    /// The continuation decoded whole.
    pub text: String,
    /// The probability the model gave each chosen token (at temperature 1).
    pub prob: Vec<f32>,
    /// It stopped at an end-of-text token of the model's (its last token).
    #[serde(default)]
    pub ended: bool,
}

impl Steered {
    /// The first position where the two continuations part (their length if they never do).
    pub fn parts_at(&self) -> usize {
        let (a, b) = (&self.clean.ids, &self.steered.ids);
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }
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

/// Examples of a feature: each one's window (token ids) and target position.
pub type Examples = Vec<(Vec<u32>, usize)>;

/// What removing a feature does on its top examples (each example's window run clean and
/// without the feature, [`FeatureEffect`]), summed up.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExamplesEffect {
    pub head: usize,
    pub feature: usize,
    /// Per example: how much the feature lowers the loss on the token after its target
    /// (none where the target is its window's last token).
    pub at_target: Vec<Option<f32>>,
    /// Per example: the same summed over the example's window.
    pub window: Vec<f32>,
    /// The next tokens the feature raises most at the examples' targets: `(token, in how
    /// many examples' lists)`, most often first (ties by first appearance).
    pub raises: Vec<(String, usize)>,
    /// The same for the tokens it lowers most.
    pub lowers: Vec<(String, usize)>,
}

impl ExamplesEffect {
    /// Sums up `effects`, one per example, `targets` their target positions.
    pub fn of(effects: &[FeatureEffect], targets: &[usize]) -> Self {
        let tally = |lists: &dyn Fn(&FeatureEffect, usize) -> &Vec<TokenChange>| {
            let mut counts: Vec<(String, usize)> = Vec::new();
            for (e, &p) in effects.iter().zip(targets) {
                for c in lists(e, p) {
                    match counts.iter_mut().find(|x| x.0 == c.token) {
                        Some(x) => x.1 += 1,
                        None => counts.push((c.token.clone(), 1)),
                    }
                }
            }
            counts.sort_by_key(|x| std::cmp::Reverse(x.1)); // stable: ties keep first appearance
            counts
        };
        Self {
            head: effects.first().map_or(0, |e| e.head),
            feature: effects.first().map_or(0, |e| e.feature),
            at_target: (effects.iter().zip(targets))
                .map(|(e, &p)| (p < e.loss.len()).then(|| e.helps(p)))
                .collect(),
            window: effects.iter().map(FeatureEffect::total).collect(),
            raises: tally(&|e, p| &e.promotes[p]),
            lowers: tally(&|e, p| &e.suppresses[p]),
        }
    }

    /// The mean of [`at_target`](Self::at_target) over the examples that have one.
    pub fn mean_at_target(&self) -> Option<f32> {
        let v: Vec<f32> = self.at_target.iter().flatten().copied().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
    }

    /// How many examples' targets the feature helps predict the next token at.
    pub fn helped(&self) -> usize {
        self.at_target
            .iter()
            .flatten()
            .filter(|&&x| x > 0.0)
            .count()
    }
}

/// Something a viewer asked of one feature's top examples, of which feature.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedOfExamples<T> {
    pub head: usize,
    pub feature: usize,
    pub state: Answer<T>,
}

impl<T> AskedOfExamples<T> {
    /// Asked about `feature` of `head`, not answered yet.
    pub fn computing(head: usize, feature: usize) -> Self {
        Self {
            head,
            feature,
            state: Answer::Computing,
        }
    }

    /// Takes `result`, the answer about `(head, feature)`, if that is what this asked (a
    /// stale answer is dropped).
    pub fn answer(&mut self, (head, feature): (usize, usize), result: Result<T, String>) {
        if (self.head, self.feature) == (head, feature) {
            self.state = Answer::of(result);
        }
    }
}

/// The examples effect a viewer asked for.
pub type AskedExamples = AskedOfExamples<ExamplesEffect>;

/// What wrote what a feature reads over its top examples, asked for where the dashboard
/// file has none (`upstream --top-examples`).
pub type AskedSplit = AskedOfExamples<crate::dashboard::format::FeatureUpstream>;

/// Which features matter for a text's predictions: for every feature that fires in it, a
/// first-order estimate of how much its [`Objective`] (by default the text's total
/// next-token loss) would lose without it (from the gradient of the objective with respect
/// to `hook_z`; one forward and one backward pass for all features), largest first.
/// [`FeatureEffect`] is the exact change for one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureRanking {
    pub ids: Vec<u32>,
    pub features: Vec<RankedFeature>,
    /// What the estimates are of (absent from older files: the loss).
    #[serde(default)]
    pub objective: Objective,
    /// An answer objective's value on the text (clean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
}

/// A next token a viewer names: its id and its text.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedToken {
    pub id: u32,
    pub text: String,
}

/// What a [`FeatureRanking`] estimates each feature's part in. Either way a positive
/// estimate is a feature that helps: the loss would rise without it, or the answer's
/// logit difference (or log-probability) would fall.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// The text's summed next-token loss.
    #[default]
    Loss,
    /// The prediction after position `at`: the logit of `answer` less that of `against`
    /// (the logit difference of indirect-object and similar tasks), or, without `against`,
    /// `answer`'s log-probability.
    Answer {
        at: usize,
        answer: NamedToken,
        against: Option<NamedToken>,
    },
}

impl Objective {
    /// What it is, for a sentence: "the text's summed next-token loss", "the logit of
    /// " Mary" less that of " John" after position 12".
    pub fn describe(&self) -> String {
        match self {
            Self::Loss => "the text's summed next-token loss".into(),
            Self::Answer {
                at,
                answer,
                against: Some(against),
            } => format!(
                "the logit of {:?} less that of {:?} after position {at}",
                answer.text, against.text
            ),
            Self::Answer { at, answer, .. } => format!(
                "the log-probability of {:?} after position {at}",
                answer.text
            ),
        }
    }

    /// What an estimate says of a feature: "the estimated rise in ... without it", or
    /// "fall".
    pub fn estimated(&self) -> String {
        let way = match self {
            Self::Loss => "rise",
            Self::Answer { .. } => "fall",
        };
        format!("the estimated {way} in {} without each", self.describe())
    }

    /// Its value from a text's log-probabilities `[positions, vocab]` (row-major, `v` a
    /// row): for [`Objective::Answer`], the logit difference (the rows' normaliser cancels)
    /// or the answer's log-probability; `None` for the loss or a position past the rows.
    pub fn value(&self, logp: &[f32], v: usize) -> Option<f32> {
        let Self::Answer {
            at,
            answer,
            against,
        } = self
        else {
            return None;
        };
        let row = logp.get(at * v..(at + 1) * v)?;
        let of = |t: &NamedToken| row.get(t.id as usize).copied();
        match against {
            Some(b) => Some(of(answer)? - of(b)?),
            None => of(answer),
        }
    }
}

/// Features ranked over a set of prompts, each with its own answer (`rank --prompts`):
/// every feature's estimate averaged over the prompts (zero where it does not fire), and in
/// how many it fires.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptsRanking {
    /// Each prompt's objective and its value there (clean).
    pub objectives: Vec<(Objective, f32)>,
    /// Every feature that fires in a prompt, by mean estimate, largest first; `fires`
    /// counts the prompts it fires in.
    pub features: Vec<RankedFeature>,
    /// For the features asked (`rank --prompts --exact`): `(head, feature, mean exact
    /// change)`, what removing it takes from the objective, averaged over the prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exact: Vec<(usize, usize, f32)>,
    /// Per prompt, the `(head, feature)`s that fire in it, sorted (not written).
    #[serde(skip)]
    pub fired: Vec<Vec<(usize, usize)>>,
}

impl PromptsRanking {
    /// What the objectives are, in words: "the answer's logit less that of the token
    /// against it" when every prompt has a token against its answer, "the answer's
    /// log-probability" when none does.
    pub fn objective_said(&self) -> &'static str {
        let against = |o: &Objective| {
            matches!(
                o,
                Objective::Answer {
                    against: Some(_),
                    ..
                }
            )
        };
        match self.objectives.iter().filter(|o| against(&o.0)).count() {
            n if n == self.objectives.len() => {
                "the answer's logit less that of the token against it"
            }
            0 => "the answer's log-probability",
            _ => "the answer's logit difference (or log-probability, without a token against it)",
        }
    }

    /// The mean and standard deviation of the objectives' values over the prompts.
    pub fn value_spread(&self) -> (f64, f64) {
        let n = self.objectives.len().max(1) as f64;
        let mean = self.objectives.iter().map(|o| o.1 as f64).sum::<f64>() / n;
        let var = (self.objectives.iter())
            .map(|o| (o.1 as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    }

    /// Each head's features' mean estimates summed.
    pub fn by_head(&self, n_heads: usize) -> Vec<f32> {
        by_head(&self.features, n_heads)
    }

    /// The features listed, `n` each way ([`strongest_each_way`]): those whose exact changes
    /// `--exact` and the viewers' "Remove each for the exact change" ask for.
    pub fn listed(&self, n: usize) -> Vec<(usize, usize)> {
        let [helps, hurts] = strongest_each_way(&self.features, n);
        (helps.into_iter().chain(hurts))
            .map(|f| (f.head, f.feature))
            .collect()
    }
}

/// One prompt of a prompt set (`rank --prompts`' lines, Your text's prompt set): a text and
/// the answer to rank by on it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptLine {
    pub text: String,
    #[serde(flatten)]
    pub ask: AnswerAsk,
}

impl PromptLine {
    /// The prompts of a prompt set's `text` ([`parse_prompt_lines`], `name` naming it in
    /// errors).
    pub fn parse_set(text: &str, name: &str) -> Result<Vec<(String, PromptLine)>, String> {
        parse_prompt_lines(text, name, PROMPT_LINE_FORM)
    }
}

/// How a prompt set's lines are written, for errors.
pub const PROMPT_LINE_FORM: &str = "{\"text\": ..., \"answer\": ..., \"against\": ...}";

/// The prompts of a prompt set's `text` (`name` naming it in errors): JSON lines (blank ones
/// skipped), or one JSON array of the same objects (`form` says what each is, in words);
/// each named by its line or place for the errors after. Refuses a set with no prompts.
pub fn parse_prompt_lines<T: serde::de::DeserializeOwned>(
    text: &str,
    name: &str,
    form: &str,
) -> Result<Vec<(String, T)>, String> {
    let lines: Vec<(String, T)> = if text.trim_start().starts_with('[') {
        let all: Vec<T> = serde_json::from_str(text)
            .map_err(|e| format!("{name}: not a JSON array of {form}: {e}"))?;
        (all.into_iter().enumerate())
            .map(|(i, p)| (format!("{name} prompt {}", i + 1), p))
            .collect()
    } else {
        (text.lines().enumerate())
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let at = format!("{name} line {}", i + 1);
                match serde_json::from_str(l) {
                    Ok(p) => Ok((at, p)),
                    Err(e) => Err(format!("{at}: not {form}: {e}")),
                }
            })
            .collect::<Result<_, _>>()?
    };
    match lines.is_empty() {
        true => Err(format!("{name}: no prompts in it")),
        false => Ok(lines),
    }
}

/// The ranking over a prompt set a viewer asked for ([`PromptsRanking`]), of its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct AskedPrompts {
    pub lines: Vec<PromptLine>,
    pub state: Answer<PromptsRanking>,
    /// While computing: the prompts ranked on so far, and how many there are.
    pub progress: (usize, usize),
    /// The listed features' exact changes asked for ([`PromptsRanking::exact`]), if asked:
    /// while computing, the features removed so far and how many there are.
    pub exact: Option<(Answer<ExactChanges>, (usize, usize))>,
}

/// `(head, feature, mean exact change)` of features removed over a prompt set
/// ([`PromptsRanking::exact`]).
pub type ExactChanges = Vec<(usize, usize, f32)>;

impl AskedPrompts {
    /// Asked, not answered yet.
    pub fn computing(lines: Vec<PromptLine>) -> Self {
        let of = lines.len();
        Self {
            lines,
            state: Answer::Computing,
            progress: (0, of),
            exact: None,
        }
    }

    /// The ranking, when it has arrived.
    pub fn ranking(&self) -> Option<&PromptsRanking> {
        match &self.state {
            Answer::Ready(r) => Some(r),
            _ => None,
        }
    }

    /// The ranking's [`listed`](PromptsRanking::listed) features; none before it arrives.
    pub fn listed(&self, n: usize) -> Vec<(usize, usize)> {
        self.ranking().map(|r| r.listed(n)).unwrap_or_default()
    }

    /// Asks for the exact changes: computing, none of `features` removed yet.
    pub fn ask_exact(&mut self, features: usize) {
        self.exact = Some((Answer::Computing, (0, features)));
    }

    /// The exact changes arrived (or failed), for these lines: kept in the ranking too.
    pub fn exact_arrived(&mut self, lines: &[PromptLine], result: Result<ExactChanges, String>) {
        if self.lines != lines {
            return;
        }
        if let (Answer::Ready(r), Ok(exact)) = (&mut self.state, &result) {
            r.exact = exact.clone();
        }
        let progress = self.exact.as_ref().map_or((0, 0), |e| e.1);
        self.exact = Some((Answer::of(result), progress));
    }
}

/// Each head's estimates in `features` summed (`n_heads` entries).
fn by_head(features: &[RankedFeature], n_heads: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; n_heads];
    for f in features.iter().filter(|f| f.head < n_heads) {
        sums[f.head] += f.estimate as f64;
    }
    sums.into_iter().map(|x| x as f32).collect()
}

/// Of `features` (largest estimate first), the first `n` that help (positive estimate) and
/// the last `n` that hurt (negative), most negative first: what the viewers and the CLI
/// list each way.
pub fn strongest_each_way(features: &[RankedFeature], n: usize) -> [Vec<&RankedFeature>; 2] {
    [
        features
            .iter()
            .take(n)
            .filter(|f| f.estimate > 0.0)
            .collect(),
        features
            .iter()
            .rev()
            .take(n)
            .filter(|f| f.estimate < 0.0)
            .collect(),
    ]
}

/// An answer objective as a viewer asks for it, in token texts (resolved against the
/// model's tokenizer by [`answer_objective`]): `answer` predicted after position `at`
/// (`None`: the last), against `against` if given.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnswerAsk {
    pub answer: String,
    #[serde(default)]
    pub against: Option<String>,
    #[serde(default)]
    pub at: Option<usize>,
}

/// What a feature's removal (or scaling) did to an answer [`Objective`]: its value clean
/// and with the feature changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectiveChange {
    pub clean: f32,
    pub changed: f32,
}

impl ObjectiveChange {
    /// How much the feature adds to the objective (clean less changed): what a ranking's
    /// estimate approximates for a removal.
    pub fn helps(&self) -> f32 {
        self.clean - self.changed
    }
}

impl FeatureRanking {
    /// Each head's features' estimates summed (`n_heads` entries): to first order, what
    /// removing all of a head's firing features together would add to the loss.
    pub fn by_head(&self, n_heads: usize) -> Vec<f32> {
        by_head(&self.features, n_heads)
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

impl AskedRanking {
    /// Its answer objective, once it has arrived, if it is of the text with `ids`: what an
    /// exact effect asked beside it measures too.
    pub fn answer_for(&self, ids: &[u32]) -> Option<Objective> {
        match &self.state {
            Answer::Ready(r) if self.ids == ids && r.objective != Objective::Loss => {
                Some(r.objective.clone())
            }
            _ => None,
        }
    }
}

/// What a viewer asked of one feature on a text (its effect, a steered continuation): for
/// which feature, on which tokens, and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked<T> {
    pub ids: Vec<u32>,
    pub head: usize,
    pub feature: usize,
    pub state: Answer<T>,
}

/// The effect a viewer asked for ([`FeatureEffect`]).
pub type AskedEffect = Asked<FeatureEffect>;

/// The steered continuation a viewer asked for ([`Steered`]).
pub type AskedSteer = Asked<Steered>;

impl<T> Asked<T> {
    /// Asked, not answered yet.
    pub fn computing(ids: Vec<u32>, head: usize, feature: usize) -> Self {
        Self {
            ids,
            head,
            feature,
            state: Answer::Computing,
        }
    }

    pub fn is_for(&self, ids: &[u32], head: usize, feature: usize) -> bool {
        self.ids == ids && self.head == head && self.feature == feature
    }

    /// Takes `result`, the answer to the request for (`ids`, `head`, `feature`), if that
    /// is this request (a stale answer is dropped).
    pub fn answer(
        &mut self,
        (ids, head, feature): (&[u32], usize, usize),
        result: Result<T, String>,
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
    use super::{ExamplesEffect, FeatureEffect, FeatureRanking, RankedFeature, TokenChange};

    #[test]
    fn examples_effect_sums_up_targets_windows_and_the_tokens_listed() {
        let token = |s: &str| TokenChange {
            token: s.into(),
            ..Default::default()
        };
        let effect = |loss: Vec<f32>, ablated: Vec<f32>, at: usize, up: &[&str]| {
            let t = loss.len() + 1;
            let mut promotes = vec![Vec::new(); t];
            promotes[at] = up.iter().map(|s| token(s)).collect();
            FeatureEffect {
                head: 2,
                feature: 7,
                loss,
                ablated,
                promotes,
                suppresses: vec![Vec::new(); t],
                ..Default::default()
            }
        };
        let effects = [
            effect(vec![1.0, 2.0], vec![1.5, 2.25], 1, &["a", "b"]),
            effect(vec![1.0, 2.0], vec![0.5, 2.0], 0, &["b"]),
            effect(vec![1.0, 2.0], vec![1.0, 3.0], 2, &["c", "b"]),
        ];
        let s = ExamplesEffect::of(&effects, &[1, 0, 2]);
        assert_eq!((s.head, s.feature), (2, 7));
        assert_eq!(s.at_target, vec![Some(0.25), Some(-0.5), None]);
        assert_eq!(s.window, vec![0.75, -0.5, 1.0]);
        assert_eq!(s.mean_at_target(), Some(-0.125));
        assert_eq!(s.helped(), 1);
        let raises: Vec<(&str, usize)> = s.raises.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        assert_eq!(raises, [("b", 3), ("a", 1), ("c", 1)]);
        assert!(s.lowers.is_empty());
    }

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
            ..Default::default()
        };
        assert_eq!(r.by_head(3), vec![0.25, -1.5, 1.0]);
        assert_eq!(r.by_head(4)[3], 0.0);
    }
}
