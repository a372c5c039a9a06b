//! Incremental decoding for generation: each layer's keys and values of the positions run
//! so far are kept ([`KvCache`]), so a new token costs one position's forward instead of
//! the whole sequence's. [`Transformer::decode`] gives the same logits as
//! [`Transformer::run`] on the whole sequence (tested against it and against transformers).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, TensorData};

use super::{ForwardError, HookRequest, Positions, Splice, Transformer, matmul_bias, repeat_kv};

/// Each layer's keys and values `[batch, n_kv_heads, len, d_head]` (rotated) of the
/// positions a batch has run through [`Transformer::decode`].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    len: usize,
    batch: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Transformer {
    /// Runs `tokens` `[batch, new]` as the positions after those `cache` holds (the same
    /// sequences), appends their keys and values to it, and returns the last new
    /// position's logits `[batch, d_vocab]`: what [`Self::run`] gives at the last position
    /// of the whole sequence so far, without recomputing the earlier positions. `splice`
    /// replaces the new positions' `hook_z` in the raw convention.
    pub fn decode(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        splice: Option<&Splice>,
    ) -> Result<Tensor<2>, ForwardError> {
        let [batch, new] = tokens.dims();
        let offset = cache.len;
        if !cache.is_empty() && batch != cache.batch {
            return Err(ForwardError::CacheBatch {
                cached: cache.batch,
                given: batch,
            });
        }
        if new == 0 {
            return Err(ForwardError::NoTokens);
        }
        self.check(offset + new, &HookRequest::logits(), splice)?;
        let cfg = &self.config;
        let (h, hkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let total = offset + new;
        let mut x = self
            .w_e
            .clone()
            .select(0, tokens.reshape([batch * new]))
            .reshape([batch, new, cfg.d_model]);
        if let Positions::Learned(w_pos) = &self.positions {
            x = x + w_pos
                .clone()
                .slice([offset..total, 0..cfg.d_model])
                .unsqueeze::<3>();
        }
        // [new, total]: true where a new position would see a later one.
        let future = (new > 1).then(|| {
            let mask: Vec<bool> = (0..new)
                .flat_map(|i| (0..total).map(move |j| j > offset + i))
                .collect();
            Tensor::<2, Bool>::from_data(TensorData::new(mask, [new, total]), &self.device)
                .unsqueeze::<4>()
                .expand([batch, h, new, total])
        });
        for (layer, block) in self.blocks.iter().enumerate() {
            let normed = block.norm1.forward(x.clone());
            let (q, k, v) = self.project_qkv(&block.attn, normed, offset);
            let (k, v) = match cache.layers.get(layer) {
                Some((past_k, past_v)) if offset > 0 => (
                    Tensor::cat(vec![past_k.clone(), k], 2),
                    Tensor::cat(vec![past_v.clone(), v], 2),
                ),
                _ => (k, v),
            };
            if layer < cache.layers.len() {
                cache.layers[layer] = (k.clone(), v.clone());
            } else {
                cache.layers.push((k.clone(), v.clone()));
            }
            let (k, v) = if hkv == h {
                (k, v)
            } else {
                (repeat_kv(k, h / hkv), repeat_kv(v, h / hkv))
            };
            // [batch, h, new, total]
            let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
            let scores = match &future {
                Some(mask) => scores.mask_fill(mask.clone(), f32::NEG_INFINITY),
                None => scores,
            };
            // [batch, h, new, dh] -> [batch, new, h, dh]
            let z = softmax(scores, 3).matmul(v).swap_dims(1, 2);
            let z = match splice {
                Some(s) if s.layer == layer => self.spliced(s, z),
                _ => z,
            };
            let attn_out = matmul_bias(
                z.reshape([batch, new, h * dh]),
                &block.attn.w_o,
                block.attn.b_o.as_ref(),
            );
            x = block.add_mlp(x + attn_out);
        }
        cache.len = total;
        cache.batch = batch;
        let last = x.slice([0..batch, new - 1..new, 0..cfg.d_model]);
        let logits = matmul_bias(self.norm_final.forward(last), &self.w_u, self.b_u.as_ref());
        Ok(logits.reshape([batch, cfg.d_vocab]))
    }
}
