//! [`Steered`] generation: the model continues a prompt twice in one batch, row 0 as it is
//! and row 1 steered: each feature's decoder row (in hook_z's units) added to its block of
//! `hook_z` (its head's, or every head's for a dense SAE) times a strength, or (clamped)
//! times the strength less the feature's own activation there, which holds the activation
//! at the strength; at every position after BOS, or from the first new token's on. Keys
//! and values are cached ([`KvCache`]), so each new token is one position's forward. Each step's logits are read back and the next
//! tokens chosen on the host ([`choose`]), awaited (the desktop blocks on the same steps).
//! Each continuation stops at the model's end-of-text token (it ends with it), the
//! generation when both have.

use burn::prelude::*;

use super::{Continuation, MAX_NEW_TOKENS, Steered, Steering};
use crate::lm::{HeadSelection, KvCache, LoadedModel, Splice, ZConvention};
use crate::rng::Rng;
use crate::sae::BlockDiagSae;

/// A generation under way: the cache, the tokens chosen so far, and the next ones to run.
struct Generation<'a> {
    steering: Steering,
    sae: &'a BlockDiagSae,
    layer: usize,
    prompt: Vec<u32>,
    /// The SAE's blocks and their width: one per head of `d_head`, or one over every head.
    blocks: (usize, usize),
    /// Each feature steered: `(block, feature, strength, row)`, `row` `[1, 1, 1, width]`
    /// its decoder row in hook_z's units; steering adds it times the strength (less the
    /// feature's activation, clamped) at a position.
    features: Vec<(usize, usize, f32, Tensor<4>)>,
    /// `[1, 1, blocks, width]`: what the SAE's convention takes off raw hook_z (clamped,
    /// to read the feature's activation), if anything.
    fold: Option<Tensor<4>>,
    /// The first position steered (after BOS, or the first new token's).
    from: usize,
    cache: KvCache,
    rng: Rng,
    chosen: [Vec<u32>; 2],
    prob: [Vec<f32>; 2],
    /// Tokens that end a continuation, and whether each has ended.
    eos: Vec<u32>,
    ended: [bool; 2],
}

impl<'a> Generation<'a> {
    fn new(
        loaded: &LoadedModel,
        sae: &'a BlockDiagSae,
        (layer, z_convention): (usize, ZConvention),
        prompt: &[u32],
        steering: &Steering,
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let (n, temperature, seed) = (steering.tokens, steering.temperature, steering.seed);
        anyhow::ensure!(
            layer < model.config.n_layers,
            "layer {layer}: the model has {} layers",
            model.config.n_layers
        );
        let mut features = Vec::with_capacity(1 + steering.also.len());
        let blocks = super::sae_sizes(sae, model).map(|(b, w, _, _)| (b, w))?;
        for (head, feature, strength) in steering.features() {
            let (_, d) = super::feature_of(sae, model, (head, feature))?;
            anyhow::ensure!(
                strength.is_finite(),
                "head {head} feature {feature}: strength {strength}: not a number"
            );
            let row = sae
                .w_dec
                .clone()
                .slice([head..head + 1, feature..feature + 1, 0..d])
                .reshape([1, 1, 1, d])
                / sae.input_scale[head] as f64;
            features.push((head, feature, strength, row));
        }
        anyhow::ensure!(
            temperature.is_finite() && temperature >= 0.0,
            "temperature {temperature}: 0 (greedy) or more"
        );
        if let Some(p) = steering.top_p {
            anyhow::ensure!(p > 0.0 && p <= 1.0, "top-p {p}: above 0, at most 1");
            anyhow::ensure!(
                temperature > 0.0,
                "top-p {p} is for sampling: give a temperature above 0"
            );
        }
        if let Some(k) = steering.top_k {
            anyhow::ensure!(k >= 1, "top-k {k}: at least 1");
            anyhow::ensure!(
                temperature > 0.0,
                "top-k {k} is for sampling: give a temperature above 0"
            );
        }
        anyhow::ensure!(
            (1..=MAX_NEW_TOKENS).contains(&n),
            "{n} new tokens: between 1 and {MAX_NEW_TOKENS} at once"
        );
        anyhow::ensure!(!prompt.is_empty(), "no prompt tokens");
        anyhow::ensure!(
            prompt.len() + n <= model.config.n_ctx,
            "{} prompt tokens and {n} new ones exceed the model's context of {}",
            prompt.len(),
            model.config.n_ctx
        );
        let fold = match z_convention {
            ZConvention::TransformerLens => model.blocks[layer].attn.z_fold.clone(),
            ZConvention::Raw => None,
        };
        let from = match (steering.new_only, steering.from_position) {
            (true, Some(_)) => {
                anyhow::bail!("steer the new tokens only or from a position, not both")
            }
            (true, None) => prompt.len(),
            (false, Some(p)) => {
                anyhow::ensure!(
                    p < prompt.len() + n,
                    "from position {p}: past the {} prompt and {n} new tokens",
                    prompt.len()
                );
                p
            }
            (false, None) => usize::from(model.config.bos_token_id == prompt.first().copied()),
        };
        Ok(Self {
            steering: steering.clone(),
            sae,
            layer,
            prompt: prompt.to_vec(),
            features,
            fold: fold.map(|f| f.reshape([1, 1, blocks.0, blocks.1])),
            blocks,
            from,
            cache: KvCache::new(),
            rng: Rng::new(seed),
            chosen: [Vec::with_capacity(n), Vec::with_capacity(n)],
            prob: [Vec::with_capacity(n), Vec::with_capacity(n)],
            eos: model.config.eos_token_ids.clone(),
            ended: [false; 2],
        })
    }

    /// Runs what neither row has run yet (the prompt, then each row's last choice; a row
    /// that has ended runs its end token again, unread) and queues the next-token logits
    /// `[2, vocab]`.
    fn step(&mut self, model: &crate::lm::Transformer) -> anyhow::Result<Tensor<2>> {
        let rows: Vec<Vec<u32>> = match self.chosen[0].last() {
            None => vec![self.prompt.clone(); 2],
            Some(_) => self.chosen.iter().map(|c| vec![c[c.len() - 1]]).collect(),
        };
        let (start, new) = (self.cache.len(), rows[0].len());
        let (heads, d_head) = (model.config.n_heads, model.config.d_head);
        let (h, d) = self.blocks;
        let (clamp, where_fires) = (self.steering.clamp, self.steering.where_fires);
        // Row 1, the steered heads, positions from `self.from` on.
        let first = self.from.saturating_sub(start).min(new);
        let (sae, features, fold) = (self.sae, &self.features, &self.fold);
        let steer = move |z: Tensor<4>| {
            if first == new {
                return z;
            }
            // The SAE's blocks side by side: `[2, new, blocks, width]`.
            let z = z.reshape([2, new, h, d]);
            // `[H, new - first, m]`: when clamping or steering only where the feature fires,
            // every feature's activation at the steered row's steered positions (encoded
            // alone, so the clean row has no say in them).
            let feats = (clamp || where_fires).then(|| {
                let z = z.clone().slice([1..2, first..new, 0..h, 0..d]);
                let z = match fold {
                    Some(f) => z - f.clone(),
                    None => z,
                };
                sae.encode(sae.scale_input(z.reshape([new - first, h, d])))
                    .1
            });
            let mut added = Tensor::<4>::zeros([2, new, h, d], &z.device());
            for (head, feature, strength, row) in features {
                let (head, feature) = (*head, *feature);
                // `[1, new - first, 1, d_head]`: what this feature adds to the steered row.
                let part = match &feats {
                    None => row.clone().expand([1, new - first, 1, d]) * *strength as f64,
                    Some(feats) => {
                        let activation = feats
                            .clone()
                            .slice([head..head + 1, 0..new - first, feature..feature + 1])
                            .reshape([1, new - first, 1, 1]);
                        // Added: the strength; held: the strength less the activation.
                        let times = match clamp {
                            true => activation.clone().neg() + *strength as f64,
                            false => activation.zeros_like() + *strength as f64,
                        };
                        // Where it fires only: nothing added where the activation is 0.
                        let times = match where_fires {
                            true => times * activation.greater_elem(0.0).float(),
                            false => times,
                        };
                        times * row.clone()
                    }
                };
                let at = [1..2, first..new, head..head + 1, 0..d];
                added = added
                    .clone()
                    .slice_assign(at.clone(), added.slice(at) + part);
            }
            (z + added).reshape([2, new, heads, d_head])
        };
        let splice = Splice {
            layer: self.layer,
            heads: HeadSelection::All,
            replace: &steer,
        };
        Ok(model.decode(model.tokens(&rows)?, &mut self.cache, Some(&splice))?)
    }

    /// Each row's next token from `logits` `[2, vocab]`, with one uniform number for both
    /// (drawn while either row goes on, so a row's draws do not depend on when the other
    /// ends); false once both rows have ended.
    fn take(&mut self, logits: &[f32]) -> bool {
        let temperature = self.steering.temperature;
        let top_p = self.steering.top_p.unwrap_or(1.0);
        let top_k = self.steering.top_k.unwrap_or(usize::MAX);
        let u = (temperature > 0.0).then(|| self.rng.uniform());
        let v = logits.len() / 2;
        for (row, values) in logits.chunks(v).enumerate() {
            if self.ended[row] {
                continue;
            }
            let (id, prob) = choose(values, temperature, top_k, top_p, u.unwrap_or(0.0));
            self.chosen[row].push(id);
            self.prob[row].push(prob);
            self.ended[row] = self.eos.contains(&id);
        }
        !self.ended.iter().all(|&e| e)
    }

    fn finish(self, loaded: &LoadedModel) -> Steered {
        let [clean, steered] = self.chosen;
        let [p_clean, p_steered] = self.prob;
        let [e_clean, e_steered] = self.ended;
        let continuation = |ids: Vec<u32>, prob: Vec<f32>, ended: bool| Continuation {
            tokens: (ids.iter())
                .map(|&i| crate::lm::token_text(&loaded.tokenizer, i))
                .collect(),
            text: loaded.tokenizer.decode(&ids, false).unwrap_or_default(),
            ids,
            prob,
            ended,
        };
        Steered {
            steering: self.steering,
            prompt: self.prompt,
            clean: continuation(clean, p_clean, e_clean),
            steered: continuation(steered, p_steered, e_steered),
        }
    }
}

/// The next token from a row of `logits`, and the probability the model gives it (softmax
/// at temperature 1), in float64. At `temperature` 0 the likeliest (the lowest id on a
/// tie); above, drawn from `softmax(logits / temperature)` by inverse CDF: the first id
/// (ascending) whose cumulative probability exceeds `u` in `[0, 1)`. With `top_k` below the
/// vocabulary, from the `top_k` likeliest only (the lower id first on a tie), renormalised;
/// with `top_p` below 1, then from their nucleus only (renormalised): the likeliest tokens
/// up to the first whose cumulative probability reaches `top_p`.
pub fn choose(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, u: f64) -> (u32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let shifted = |l: f32| l as f64 - max;
    let log_z = logits.iter().map(|&l| shifted(l).exp()).sum::<f64>().ln();
    let id = if temperature > 0.0 {
        let t = temperature as f64;
        let weights: Vec<f64> = logits.iter().map(|&l| (shifted(l) / t).exp()).collect();
        let weights = cut(weights, top_k, top_p as f64);
        let target = u * weights.iter().sum::<f64>();
        let mut cumulative = 0.0;
        (weights.iter().position(|&w| {
            cumulative += w;
            cumulative > target
        }))
        // Rounding can leave the last sum a hair under `target`: the last token with weight.
        .unwrap_or_else(|| weights.iter().rposition(|&w| w > 0.0).unwrap_or(0))
    } else {
        (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b })
    };
    (id as u32, (shifted(logits[id]) - log_z).exp() as f32)
}

/// `weights` with all but the ones sampled from zeroed: of the `top_k` largest (the lower
/// index first on a tie), those up to the first whose share of their total reaches `top_p`.
fn cut(weights: Vec<f64>, top_k: usize, top_p: f64) -> Vec<f64> {
    if top_k >= weights.len() && top_p >= 1.0 {
        return weights;
    }
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    order.truncate(top_k);
    let total: f64 = match top_k < weights.len() {
        true => order.iter().map(|&i| weights[i]).sum(),
        false => weights.iter().sum(),
    };
    let mut kept = vec![0.0; weights.len()];
    let mut mass = 0.0;
    for i in order {
        kept[i] = weights[i];
        mass += weights[i] / total;
        if mass >= top_p {
            break;
        }
    }
    kept
}

/// Continues `prompt` (token ids; [`super::text_ids`] reads a text) clean and steered as
/// `steering` asks ([`Steered`]); `z_convention` is the SAE's (clamping reads the
/// feature's activation).
pub fn steer(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    prompt: &[u32],
    steering: &Steering,
) -> anyhow::Result<Steered> {
    super::blocking(steer_async(
        loaded,
        sae,
        layer,
        z_convention,
        prompt,
        steering,
    ))
}

/// [`steer`] with each step's read-back awaited (WebGPU).
pub async fn steer_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    prompt: &[u32],
    steering: &Steering,
) -> anyhow::Result<Steered> {
    let mut g = Generation::new(loaded, sae, (layer, z_convention), prompt, steering)?;
    for _ in 0..steering.tokens {
        let logits = g.step(&loaded.transformer)?;
        if !g.take(&super::read_async(&logits).await?) {
            break;
        }
    }
    Ok(g.finish(loaded))
}
