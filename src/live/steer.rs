//! [`Steered`] generation: the model continues a prompt twice in one batch, greedily, row 0
//! as it is and row 1 with a feature's decoder row (times a strength, in hook_z's units)
//! added to its head's `hook_z` at every position after BOS. Keys and values are cached
//! ([`KvCache`]), so each new token is one position's forward. The desktop reads each
//! step's probabilities synchronously, the browser awaits them, over the same steps.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{Continuation, MAX_NEW_TOKENS, Steered};
use crate::lm::{HeadSelection, KvCache, LoadedModel, Splice};
use crate::sae::BlockDiagSae;

/// A generation under way: the cache, the tokens chosen so far, and the next ones to run.
struct Generation {
    head: usize,
    feature: usize,
    strength: f32,
    layer: usize,
    prompt: Vec<u32>,
    /// `[1, 1, 1, d_head]`: what steering adds to the head's hook_z at a position.
    push: Tensor<4>,
    /// The first position steered (after BOS).
    from: usize,
    cache: KvCache,
    chosen: [Vec<u32>; 2],
    prob: [Vec<f32>; 2],
}

impl Generation {
    fn new(
        loaded: &LoadedModel,
        sae: &BlockDiagSae,
        layer: usize,
        prompt: &[u32],
        (head, feature, strength): (usize, usize, f32),
        n: usize,
    ) -> anyhow::Result<Self> {
        let model = &loaded.transformer;
        let d = super::feature_of(sae, model, (head, feature))?;
        anyhow::ensure!(
            layer < model.config.n_layers,
            "layer {layer}: the model has {} layers",
            model.config.n_layers
        );
        anyhow::ensure!(strength.is_finite(), "strength {strength}: not a number");
        anyhow::ensure!(
            (1..=MAX_NEW_TOKENS).contains(&n),
            "{n} new tokens: between 1 and {MAX_NEW_TOKENS} at once"
        );
        anyhow::ensure!(!prompt.is_empty(), "no prompt tokens");
        let prompt = prompt.to_vec();
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
            head,
            feature,
            strength,
            layer,
            prompt,
            push,
            from,
            cache: KvCache::new(),
            chosen: [Vec::with_capacity(n), Vec::with_capacity(n)],
            prob: [Vec::with_capacity(n), Vec::with_capacity(n)],
        })
    }

    /// Runs what neither row has run yet (the prompt, then each row's last choice) and
    /// queues the next-token log-probabilities `[2, vocab]`.
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
            added = added.slice_assign(
                [1..2, first..new, self.head..self.head + 1, 0..d],
                self.push.clone().expand([1, new - first, 1, d]),
            );
        }
        let add = move |z: Tensor<4>| z + added.clone();
        let splice = Splice {
            layer: self.layer,
            heads: HeadSelection::All,
            replace: &add,
        };
        let logits = model.decode(model.tokens(&rows)?, &mut self.cache, Some(&splice))?;
        Ok(log_softmax(logits, 1))
    }

    /// Each row's likeliest next token (the lowest id on a tie) from `logp` `[2, vocab]`.
    fn choose(&mut self, logp: &[f32]) {
        let v = logp.len() / 2;
        for (row, values) in logp.chunks(v).enumerate() {
            let best = (0..v).fold(0, |b, i| if values[i] > values[b] { i } else { b });
            self.chosen[row].push(best as u32);
            self.prob[row].push(values[best].exp());
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
        Steered {
            head: self.head,
            feature: self.feature,
            strength: self.strength,
            prompt: self.prompt,
            clean: continuation(clean, p_clean),
            steered: continuation(steered, p_steered),
        }
    }
}

/// Continues `prompt` (token ids; [`super::text_ids`] reads a text) by `n` tokens greedily, clean and with `(head, feature)` steered at
/// `strength` ([`Steered`]).
pub fn steer(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    prompt: &[u32],
    (head, feature, strength): (usize, usize, f32),
    n: usize,
) -> anyhow::Result<Steered> {
    let mut g = Generation::new(loaded, sae, layer, prompt, (head, feature, strength), n)?;
    for _ in 0..n {
        let logp = g.step(&loaded.transformer)?;
        g.choose(&crate::files::host_vec(logp)?);
    }
    Ok(g.finish(loaded))
}

/// [`steer`] with each step's read-back awaited (WebGPU).
pub async fn steer_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    prompt: &[u32],
    (head, feature, strength): (usize, usize, f32),
    n: usize,
) -> anyhow::Result<Steered> {
    let mut g = Generation::new(loaded, sae, layer, prompt, (head, feature, strength), n)?;
    for _ in 0..n {
        let logp = g.step(&loaded.transformer)?;
        g.choose(&super::read_async(&logp).await?);
    }
    Ok(g.finish(loaded))
}
