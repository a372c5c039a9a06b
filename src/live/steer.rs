//! [`Steered`] generation: the model continues a prompt twice in one batch, row 0 as it is
//! and row 1 with a feature's decoder row (times a strength, in hook_z's units) added to its
//! head's `hook_z` at every position after BOS. Keys and values are cached ([`KvCache`]),
//! so each new token is one position's forward. Each step's logits are read back and the
//! next tokens chosen on the host ([`choose`]), awaited (the desktop blocks on the same
//! steps).

use burn::prelude::*;

use super::{Continuation, MAX_NEW_TOKENS, Steered, Steering};
use crate::lm::{HeadSelection, KvCache, LoadedModel, Splice};
use crate::rng::Rng;
use crate::sae::BlockDiagSae;

/// A generation under way: the cache, the tokens chosen so far, and the next ones to run.
struct Generation {
    steering: Steering,
    layer: usize,
    prompt: Vec<u32>,
    /// `[1, 1, 1, d_head]`: what steering adds to the head's hook_z at a position.
    push: Tensor<4>,
    /// The first position steered (after BOS).
    from: usize,
    cache: KvCache,
    rng: Rng,
    chosen: [Vec<u32>; 2],
    prob: [Vec<f32>; 2],
}

impl Generation {
    fn new(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        prompt: &[u32],
        steering: &Steering,
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let Steering {
            head,
            feature,
            strength,
            tokens: n,
            temperature,
            seed,
        } = *steering;
        let d = super::feature_of(sae, model, (head, feature))?;
        anyhow::ensure!(
            layer < model.config.n_layers,
            "layer {layer}: the model has {} layers",
            model.config.n_layers
        );
        anyhow::ensure!(strength.is_finite(), "strength {strength}: not a number");
        anyhow::ensure!(
            temperature.is_finite() && temperature >= 0.0,
            "temperature {temperature}: 0 (greedy) or more"
        );
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
        let push = sae
            .w_dec
            .clone()
            .slice([head..head + 1, feature..feature + 1, 0..d])
            .reshape([1, 1, 1, d])
            / sae.input_scale[head] as f64
            * strength as f64;
        let from = usize::from(model.config.bos_token_id == prompt.first().copied());
        Ok(Self {
            steering: *steering,
            layer,
            prompt: prompt.to_vec(),
            push,
            from,
            cache: KvCache::new(),
            rng: Rng::new(seed),
            chosen: [Vec::with_capacity(n), Vec::with_capacity(n)],
            prob: [Vec::with_capacity(n), Vec::with_capacity(n)],
        })
    }

    /// Runs what neither row has run yet (the prompt, then each row's last choice) and
    /// queues the next-token logits `[2, vocab]`.
    fn step(&mut self, model: &crate::lm::Transformer) -> anyhow::Result<Tensor<2>> {
        let rows: Vec<Vec<u32>> = match self.chosen[0].last() {
            None => vec![self.prompt.clone(); 2],
            Some(_) => self.chosen.iter().map(|c| vec![c[c.len() - 1]]).collect(),
        };
        let (start, new) = (self.cache.len(), rows[0].len());
        let (h, d) = (model.config.n_heads, model.config.d_head);
        // Row 1, the steered head, positions from `self.from` on.
        let first = self.from.saturating_sub(start).min(new);
        let mut added = Tensor::<4>::zeros([2, new, h, d], model.device());
        if first < new {
            let head = self.steering.head;
            added = added.slice_assign(
                [1..2, first..new, head..head + 1, 0..d],
                self.push.clone().expand([1, new - first, 1, d]),
            );
        }
        let add = move |z: Tensor<4>| z + added.clone();
        let splice = Splice {
            layer: self.layer,
            heads: HeadSelection::All,
            replace: &add,
        };
        Ok(model.decode(model.tokens(&rows)?, &mut self.cache, Some(&splice))?)
    }

    /// Each row's next token from `logits` `[2, vocab]`, with one uniform number for both.
    fn take(&mut self, logits: &[f32]) {
        let temperature = self.steering.temperature;
        let u = (temperature > 0.0).then(|| self.rng.uniform());
        let v = logits.len() / 2;
        for (row, values) in logits.chunks(v).enumerate() {
            let (id, prob) = choose(values, temperature, u.unwrap_or(0.0));
            self.chosen[row].push(id);
            self.prob[row].push(prob);
        }
    }

    fn finish(self, loaded: &LoadedModel) -> Steered {
        let [clean, steered] = self.chosen;
        let [p_clean, p_steered] = self.prob;
        let continuation = |ids: Vec<u32>, prob: Vec<f32>| Continuation {
            tokens: (ids.iter())
                .map(|&i| loaded.tokenizer.decode(&[i], false).unwrap_or_default())
                .collect(),
            text: loaded.tokenizer.decode(&ids, false).unwrap_or_default(),
            ids,
            prob,
        };
        let s = self.steering;
        Steered {
            head: s.head,
            feature: s.feature,
            strength: s.strength,
            temperature: s.temperature,
            seed: s.seed,
            prompt: self.prompt,
            clean: continuation(clean, p_clean),
            steered: continuation(steered, p_steered),
        }
    }
}

/// The next token from a row of `logits`, and the probability the model gives it (softmax
/// at temperature 1), in float64. At `temperature` 0 the likeliest (the lowest id on a
/// tie); above, drawn from `softmax(logits / temperature)` by inverse CDF: the first id
/// (ascending) whose cumulative probability exceeds `u` in `[0, 1)`.
pub fn choose(logits: &[f32], temperature: f32, u: f64) -> (u32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let shifted = |l: f32| l as f64 - max;
    let log_z = logits.iter().map(|&l| shifted(l).exp()).sum::<f64>().ln();
    let id = if temperature > 0.0 {
        let t = temperature as f64;
        let weight = |l: f32| (shifted(l) / t).exp();
        let target = u * logits.iter().map(|&l| weight(l)).sum::<f64>();
        let mut cumulative = 0.0;
        (logits.iter().position(|&l| {
            cumulative += weight(l);
            cumulative > target
        }))
        // Rounding can leave the last sum a hair under `target`: the last token with weight.
        .unwrap_or_else(|| logits.iter().rposition(|&l| weight(l) > 0.0).unwrap_or(0))
    } else {
        (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b })
    };
    (id as u32, (shifted(logits[id]) - log_z).exp() as f32)
}

/// Continues `prompt` (token ids; [`super::text_ids`] reads a text) clean and steered as
/// `steering` asks ([`Steered`]).
pub fn steer(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    prompt: &[u32],
    steering: &Steering,
) -> anyhow::Result<Steered> {
    super::blocking(steer_async(loaded, sae, layer, prompt, steering))
}

/// [`steer`] with each step's read-back awaited (WebGPU).
pub async fn steer_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    prompt: &[u32],
    steering: &Steering,
) -> anyhow::Result<Steered> {
    let mut g = Generation::new(loaded, sae, layer, prompt, steering)?;
    for _ in 0..steering.tokens {
        let logits = g.step(&loaded.transformer)?;
        g.take(&super::read_async(&logits).await?);
    }
    Ok(g.finish(loaded))
}
