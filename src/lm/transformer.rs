//! LM forward: one decoder-only transformer covering the GPT-2 and Llama families, with
//! TransformerLens-style hook points (`hook_z`, attention pattern, residual stream), early
//! stopping after the last hooked layer, and a splice point on `hook_z`.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::{Bool, DType, Int, TensorData};

mod decode;
#[cfg(not(target_arch = "wasm32"))]
mod fast_cpu;
pub use decode::KvCache;

/// Sizes and conventions of a loaded transformer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformerConfig {
    /// Human-readable name (e.g. "gpt2", "NeelNanda/GELU_2L512W_C4_Code").
    pub name: String,
    pub family: Family,
    pub n_layers: usize,
    pub d_model: usize,
    /// Number of query heads (the heads `hook_z` has).
    pub n_heads: usize,
    /// Number of key/value heads (`n_heads` unless grouped-query attention).
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    /// Longest context the model supports.
    pub n_ctx: usize,
    pub norm_eps: f64,
    pub activation: Activation,
    /// Rotary base (Llama family only).
    pub rope_theta: Option<f64>,
    /// How the rotary frequencies are scaled, if they are (Llama 3.1 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Token prepended to every context window, if any.
    pub bos_token_id: Option<u32>,
    /// Tokens that end a text: generation stops at them (`live::steer`).
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// No MLPs (TransformerLens' attn-only-Nl; `d_mlp` and `activation` then mean nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attn_only: bool,
    /// Shortformer positions: added to each layer's query and key inputs only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shortformer: bool,
    /// No norms at all (TransformerLens' `normalization_type: null`; `norm_eps` then means
    /// nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_norms: bool,
}

/// A Llama checkpoint's scaling of its rotary frequencies `theta^(-2i / d_head)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    /// Llama 3.1's (`rope_type: "llama3"` in `config.json`): a frequency whose wavelength
    /// `2 pi / f` is over `original_context / low_freq_factor` is divided by `factor`, one
    /// under `original_context / high_freq_factor` kept, and one between blended linearly in
    /// `original_context / wavelength`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
    /// Each frequency divided by its own factor (a GGUF's `rope_freqs.weight`, which
    /// llama.cpp's converter writes for Llama 3.1 from the rule above).
    Factors(Vec<f64>),
}

impl RopeScaling {
    /// Frequency `f` (of index `i`) as scaled.
    pub fn scale(&self, i: usize, f: f64) -> f64 {
        match self {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_context: ctx,
            } => {
                let wavelength = 2.0 * std::f64::consts::PI / f;
                if wavelength < ctx / high {
                    f
                } else if wavelength > ctx / low {
                    f / factor
                } else {
                    let smooth = (ctx / wavelength - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            }
            RopeScaling::Factors(factors) => f / factors[i],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// LayerNorm, learned positions, biased attention and GELU MLP (gpt2, gelu-Nl).
    Gpt2,
    /// RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.
    Llama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// GPT-2's tanh approximation.
    GeluNew,
    /// SiLU gate of a SwiGLU MLP.
    Silu,
}

/// Which convention `hook_z` is reported (and spliced) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ZConvention {
    /// TransformerLens' processed model: the value bias (and LayerNorm bias through `W_V`) is
    /// folded into `b_O`, so `z_TL = z_raw - (ln1.b W_V + b_V)`. What SAELens and published
    /// hook_z SAEs expect.
    #[default]
    TransformerLens,
    /// Attention-weighted sum of value vectors as the checkpoint computes it.
    Raw,
}

#[allow(clippy::large_enum_variant)] // held once per layer
pub(crate) enum Norm {
    Layer {
        w: Tensor<1>,
        b: Tensor<1>,
        eps: f64,
    },
    Rms {
        w: Tensor<1>,
        eps: f64,
    },
    /// No norm (a TransformerLens model with `normalization_type` null).
    Identity,
}

impl Norm {
    /// # Shapes
    /// `x`: [batch, pos, d_model] -> [batch, pos, d_model]
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Norm::Layer { w, b, eps } => {
                let centered = x.clone() - x.mean_dim(2);
                let var = centered.clone().square().mean_dim(2);
                let normed = centered / var.add_scalar(*eps).sqrt();
                normed * w.clone().unsqueeze::<3>() + b.clone().unsqueeze::<3>()
            }
            Norm::Rms { w, eps } => rms_norm(x, w, *eps),
            Norm::Identity => x,
        }
    }
}

pub(crate) struct Attention {
    /// [d_model, (n_heads + 2 n_kv_heads) d_head]: queries, keys, values, head-major.
    pub w_qkv: Tensor<2>,
    pub b_qkv: Option<Tensor<1>>,
    /// [n_heads d_head, d_model]
    pub w_o: Tensor<2>,
    pub b_o: Option<Tensor<1>>,
    /// [n_heads, d_head]: `ln1.b W_V + b_V`, subtracted to give TransformerLens' hook_z.
    pub z_fold: Option<Tensor<2>>,
    /// Qwen3's RMSNorms of each query and key head, taken before the rotation.
    pub qk_norm: Option<QkNorm>,
    /// A layer without positions in a rotary model (SmolLM3's every fourth, "NoPE"): its
    /// queries and keys are not rotated.
    pub no_rope: bool,
}

/// RMSNorms over `d_head` of every query head (weight `q`) and key head (weight `k`), one
/// weight `[d_head]` shared by the heads (Qwen3's `q_norm` / `k_norm`).
pub(crate) struct QkNorm {
    pub q: Tensor<1>,
    pub k: Tensor<1>,
    pub eps: f64,
}

/// RMSNorm of `x` over its last dimension, with weight `w` (of that size).
fn rms_norm<const D: usize>(x: Tensor<D>, w: &Tensor<1>, eps: f64) -> Tensor<D> {
    let ms = x.clone().square().mean_dim(D - 1);
    x / ms.add_scalar(eps).sqrt() * w.clone().unsqueeze::<D>()
}

#[allow(clippy::large_enum_variant)] // held once per layer
pub(crate) enum Mlp {
    Gelu {
        w_in: Tensor<2>,
        b_in: Tensor<1>,
        w_out: Tensor<2>,
        b_out: Tensor<1>,
        approximate: bool,
    },
    /// `down(silu(gate x) * up x)`, gate and up fused: [d_model, 2 d_mlp].
    SwiGlu {
        w_gate_up: Tensor<2>,
        w_down: Tensor<2>,
    },
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Mlp::Gelu {
                w_in,
                b_in,
                w_out,
                b_out,
                approximate,
            } => {
                let h = matmul_bias(x, w_in, Some(b_in));
                let h = if *approximate { gelu_new(h) } else { gelu(h) };
                matmul_bias(h, w_out, Some(b_out))
            }
            Mlp::SwiGlu { w_gate_up, w_down } => {
                let [b, t, _] = x.dims();
                let d_mlp = w_down.dims()[0];
                let gu = matmul_bias(x, w_gate_up, None);
                let gate = gu.clone().slice([0..b, 0..t, 0..d_mlp]);
                let up = gu.slice([0..b, 0..t, d_mlp..2 * d_mlp]);
                matmul_bias(silu_exp(gate) * up, w_down, None)
            }
        }
    }
}

pub(crate) struct Block {
    pub norm1: Norm,
    pub attn: Attention,
    /// The MLP and the norm before it; none in an attention-only model.
    pub mlp: Option<(Norm, Mlp)>,
}

impl Block {
    /// The residual stream after the MLP (unchanged without one).
    fn add_mlp(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.mlp {
            Some((norm, mlp)) => x.clone() + mlp.forward(norm.forward(x)),
            None => x,
        }
    }
}

#[allow(clippy::large_enum_variant)] // held once per layer
pub(crate) enum Positions {
    /// [n_ctx, d_model]
    Learned(Tensor<2>),
    /// cos and sin tables, [n_ctx, d_head], half-split (HF) layout.
    Rotary { cos: Tensor<2>, sin: Tensor<2> },
    /// Shortformer (TransformerLens' "shortformer"): learned `[n_ctx, d_model]`, added to
    /// each layer's normed input of the queries and keys only, never to the residual
    /// stream or the values.
    Shortformer(Tensor<2>),
}

/// A decoder-only transformer with hook points.
pub struct Transformer {
    pub config: TransformerConfig,
    pub(crate) w_e: Tensor<2>,
    pub(crate) positions: Positions,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm_final: Norm,
    /// [d_model, d_vocab]
    pub(crate) w_u: Tensor<2>,
    pub(crate) b_u: Option<Tensor<1>>,
    pub(crate) device: Device,
}

/// Which activations a forward pass should capture.
#[derive(Debug, Clone, Default)]
pub struct HookRequest {
    /// Layers whose `hook_z` to capture, `[batch, pos, n_heads, d_head]`.
    pub hook_z: Vec<usize>,
    /// Layers whose attention pattern to capture, `[batch, n_heads, dest, src]`.
    pub pattern: Vec<usize>,
    /// Layers whose value vectors to capture, `[batch, pos, n_heads, d_head]`: per query
    /// head (a GQA key/value head repeated for each query head reading it), in the
    /// request's z convention, so `hook_z[d] = sum_s pattern[d, s] values[s]`.
    pub values: Vec<usize>,
    /// Layers whose residual stream after the block to capture, `[batch, pos, d_model]`.
    pub resid_post: Vec<usize>,
    /// Whether to run to the end and return logits.
    pub logits: bool,
    pub z_convention: ZConvention,
}

impl HookRequest {
    pub fn hook_z(layers: &[usize]) -> Self {
        Self {
            hook_z: layers.to_vec(),
            ..Self::default()
        }
    }

    pub fn logits() -> Self {
        Self {
            logits: true,
            ..Self::default()
        }
    }

    /// Whether a forward whose last layer is `last` reads the output projection and MLP of
    /// `layer`: of every layer before the last, and of the last only for the logits or its
    /// residual stream. A forward stops at the last layer's z otherwise.
    pub(crate) fn reads_block_output(&self, layer: usize, last: usize) -> bool {
        layer < last || self.logits || self.resid_post.contains(&layer)
    }
}

/// Which heads a splice replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSelection {
    All,
    One(usize),
}

/// Replaces `hook_z` of one layer by a function of it during the forward pass.
/// The function sees and returns `[batch, pos, n_heads, d_head]` in the request's convention;
/// with `HeadSelection::One(h)` only head `h` of its output is used.
pub struct Splice<'a> {
    pub layer: usize,
    pub heads: HeadSelection,
    pub replace: &'a dyn Fn(Tensor<4>) -> Tensor<4>,
}

impl<'a> Splice<'a> {
    /// Zero-ablates `hook_z` of `layer` (in the request's convention).
    pub fn zero_ablate(layer: usize, heads: HeadSelection) -> Self {
        Self {
            layer,
            heads,
            replace: &|z: Tensor<4>| z.zeros_like(),
        }
    }
}

/// Activations captured by a forward pass.
#[derive(Default)]
pub struct HookCache {
    pub hook_z: BTreeMap<usize, Tensor<4>>,
    pub pattern: BTreeMap<usize, Tensor<4>>,
    pub values: BTreeMap<usize, Tensor<4>>,
    pub resid_post: BTreeMap<usize, Tensor<3>>,
    /// `[batch, pos, d_vocab]`
    pub logits: Option<Tensor<3>>,
}

/// Errors from invalid forward requests (caller input, not weights).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForwardError {
    #[error("layer {layer} does not exist: the model has {n_layers} layers (0 to {})", n_layers.saturating_sub(1))]
    Layer { layer: usize, n_layers: usize },
    #[error("head {head} does not exist: the model has {n_heads} heads")]
    Head { head: usize, n_heads: usize },
    #[error("sequence of {len} tokens exceeds the model's context of {n_ctx}")]
    TooLong { len: usize, n_ctx: usize },
    #[error("token id {token} is outside the vocabulary of {d_vocab}")]
    Token { token: i64, d_vocab: usize },
    #[error("sequences in a batch must have one length: {first} and {other} tokens")]
    Ragged { first: usize, other: usize },
    #[error("no tokens to run")]
    NoTokens,
    #[error("the key/value cache holds {cached} sequences, not {given}")]
    CacheBatch { cached: usize, given: usize },
    #[error("this device has no f16 (ATTN_SAES_LM_F16=1 needs a GPU with f16 shaders)")]
    NoF16,
    #[error("reading a tensor back from the device: {0}")]
    Readback(String),
    /// A run did not give what its request asked for (a bug, not bad input).
    #[error("the run gave no {0}")]
    Missing(&'static str),
    #[error("layer {layer} comes before the prefix's layer {start}")]
    BeforePrefix { layer: usize, start: usize },
}

/// The residual stream entering one block for some tokens ([`Transformer::prefix`]), to run
/// several requests that differ only from that block on ([`Transformer::run_from`]).
pub struct Prefix {
    layer: usize,
    /// `[batch, pos, d_model]`
    x: Tensor<3>,
}

impl Prefix {
    /// The same stream on burn's autodiff (see [`Transformer::with_autodiff`]), not requiring
    /// gradients: a differentiated forward from it needs no tape for the blocks before it.
    pub fn autodiff(&self) -> Self {
        Self {
            layer: self.layer,
            x: self.x.clone().autodiff(),
        }
    }
}

impl Transformer {
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks a request against the model's sizes before running it.
    pub fn check(
        &self,
        seq_len: usize,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<(), ForwardError> {
        let n_layers = self.config.n_layers;
        let layers = hooks
            .hook_z
            .iter()
            .chain(&hooks.pattern)
            .chain(&hooks.values)
            .chain(&hooks.resid_post)
            .chain(splice.map(|s| &s.layer));
        for &layer in layers {
            if layer >= n_layers {
                return Err(ForwardError::Layer { layer, n_layers });
            }
        }
        if let Some(Splice {
            heads: HeadSelection::One(head),
            ..
        }) = splice
            && *head >= self.config.n_heads
        {
            return Err(ForwardError::Head {
                head: *head,
                n_heads: self.config.n_heads,
            });
        }
        if seq_len > self.config.n_ctx {
            return Err(ForwardError::TooLong {
                len: seq_len,
                n_ctx: self.config.n_ctx,
            });
        }
        Ok(())
    }

    /// Builds a `[batch, pos]` token tensor on the model's device, checking ids.
    pub fn tokens(&self, batch: &[Vec<u32>]) -> Result<Tensor<2, Int>, ForwardError> {
        let pos = batch.first().map_or(0, Vec::len);
        let mut flat = Vec::with_capacity(batch.len() * pos);
        for seq in batch {
            if seq.len() != pos {
                return Err(ForwardError::Ragged {
                    first: pos,
                    other: seq.len(),
                });
            }
            for &t in seq {
                if t as usize >= self.config.d_vocab {
                    return Err(ForwardError::Token {
                        token: t as i64,
                        d_vocab: self.config.d_vocab,
                    });
                }
                flat.push(t as i64);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(flat, [batch.len(), pos]),
            &self.device,
        ))
    }

    /// Runs the model on `tokens` `[batch, pos]`, capturing what `hooks` asks for and
    /// applying `splice` if given. Stops after the last layer needed when no logits are asked.
    /// On the CPU (f32 matrices, any positions but shortformer) the forward is `fast_cpu`'s;
    /// elsewhere, burn's ops.
    pub fn run(
        &self,
        tokens: Tensor<2, Int>,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<HookCache, ForwardError> {
        let [_, pos] = tokens.dims();
        self.check(pos, hooks, splice)?;
        self.blocks_from(self.embed(tokens), 0, hooks, splice)
    }

    /// The residual stream entering block `layer` (`n_layers`: after the last) for `tokens`.
    pub fn prefix(&self, tokens: Tensor<2, Int>, layer: usize) -> Result<Prefix, ForwardError> {
        let x = match layer.checked_sub(1) {
            None => {
                self.check(tokens.dims()[1], &HookRequest::default(), None)?;
                self.embed(tokens)
            }
            Some(before) => {
                let hooks = HookRequest {
                    resid_post: vec![before],
                    ..Default::default()
                };
                let mut cache = self.run(tokens, &hooks, None)?;
                cache
                    .resid_post
                    .remove(&before)
                    .ok_or(ForwardError::Layer {
                        layer: before,
                        n_layers: self.config.n_layers,
                    })?
            }
        };
        Ok(Prefix { layer, x })
    }

    /// [`run`](Self::run) from `prefix`: the same values `run` gives on the prefix's
    /// tokens, for `hooks` and `splice` at or after its layer (an error before it).
    pub fn run_from(
        &self,
        prefix: &Prefix,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<HookCache, ForwardError> {
        let [_, pos, _] = prefix.x.dims();
        self.check(pos, hooks, splice)?;
        let start = prefix.layer;
        let asked = (hooks.hook_z.iter())
            .chain(&hooks.pattern)
            .chain(&hooks.values)
            .chain(&hooks.resid_post)
            .chain(splice.map(|s| &s.layer));
        if let Some(&layer) = asked.filter(|&&l| l < start).min() {
            return Err(ForwardError::BeforePrefix { layer, start });
        }
        self.blocks_from(prefix.x.clone(), start, hooks, splice)
    }

    /// The per-token next-token CE `[batch, pos - 1]` of a run from `prefix` on its
    /// `tokens` (`[batch, pos]`, pos > 1) with `splice`: what [`per_token_ce`] gives on
    /// [`run_from`](Self::run_from)'s logits (to f32 rounding). On the CPU the logits are
    /// never held whole (`fast_cpu::ce_of_resid`).
    pub fn ce_from(
        &self,
        prefix: &Prefix,
        tokens: &Tensor<2, Int>,
        z_convention: ZConvention,
        splice: Option<&Splice>,
    ) -> Result<Tensor<2>, ForwardError> {
        #[cfg(not(target_arch = "wasm32"))]
        if fast_cpu::applies(self) && tokens.dims()[1] > 1 {
            return self.ce_from_in_chunks(
                prefix,
                tokens,
                z_convention,
                splice,
                fast_cpu::CE_VOCAB_CHUNK,
            );
        }
        let hooks = HookRequest {
            logits: true,
            z_convention,
            ..Default::default()
        };
        let logits = self.run_from(prefix, &hooks, splice)?.logits;
        Ok(per_token_ce(
            logits.ok_or(ForwardError::Missing("logits"))?,
            tokens.clone(),
        ))
    }

    /// [`ce_from`](Self::ce_from) on the CPU's forward, `chunk` columns of the unembedding at
    /// a time.
    #[cfg(not(target_arch = "wasm32"))]
    fn ce_from_in_chunks(
        &self,
        prefix: &Prefix,
        tokens: &Tensor<2, Int>,
        z_convention: ZConvention,
        splice: Option<&Splice>,
        chunk: usize,
    ) -> Result<Tensor<2>, ForwardError> {
        let last = self.config.n_layers - 1;
        let hooks = HookRequest {
            resid_post: vec![last],
            z_convention,
            ..Default::default()
        };
        let mut cache = self.run_from(prefix, &hooks, splice)?;
        let resid = (cache.resid_post.remove(&last)).ok_or(ForwardError::Missing("residual"))?;
        fast_cpu::ce_of_resid(self, resid, tokens, chunk)
    }

    /// Runs blocks `start..` on the residual stream `x` `[batch, pos, d_model]` entering
    /// block `start`: on the CPU through `fast_cpu`, elsewhere through burn's ops.
    fn blocks_from(
        &self,
        x: Tensor<3>,
        start: usize,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<HookCache, ForwardError> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let [batch, pos, _] = x.dims();
            if batch * pos > 0 && fast_cpu::applies(self) {
                let x = fast_cpu::host(x)?;
                return fast_cpu::run_from(self, x, batch, pos, start, hooks, splice);
            }
        }
        self.run_burn_from(x, start, hooks, splice)
    }

    /// The last layer `hooks` and `splice` need run (the last of all for logits).
    fn last_layer(&self, hooks: &HookRequest, splice: Option<&Splice>) -> usize {
        if hooks.logits {
            self.config.n_layers.saturating_sub(1)
        } else {
            hooks
                .hook_z
                .iter()
                .chain(&hooks.pattern)
                .chain(&hooks.values)
                .chain(&hooks.resid_post)
                .chain(splice.map(|s| &s.layer))
                .copied()
                .max()
                .unwrap_or(0)
        }
    }

    /// The residual stream entering block 0, `[batch, pos, d_model]`.
    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, pos] = tokens.dims();
        let d_model = self.config.d_model;
        let x = self
            .w_e
            .clone()
            .select(0, tokens.reshape([batch * pos]))
            .reshape([batch, pos, d_model]);
        match &self.positions {
            Positions::Learned(w_pos) => {
                x + w_pos.clone().slice([0..pos, 0..d_model]).unsqueeze::<3>()
            }
            _ => x,
        }
    }

    /// The token embedding of `token` and, for learned positions, the position embedding at
    /// `position`: each `[d_model]`, the parts of the residual stream entering block 0.
    pub(crate) fn embed_parts(&self, token: u32, position: usize) -> Vec<Tensor<1>> {
        let dm = self.config.d_model;
        let id = token as usize;
        let row = |w: &Tensor<2>, i: usize| w.clone().slice([i..i + 1, 0..dm]).reshape([dm]);
        let mut parts = vec![row(&self.w_e, id)];
        if let Positions::Learned(w_pos) = &self.positions {
            parts.push(row(w_pos, position));
        }
        parts.into_iter().map(|p| p.cast(DType::F32)).collect()
    }

    /// `run` through burn's ops, whatever the device.
    #[cfg(test)]
    fn run_burn(
        &self,
        tokens: Tensor<2, Int>,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<HookCache, ForwardError> {
        self.run_burn_from(self.embed(tokens), 0, hooks, splice)
    }

    /// `run_burn` from the residual stream `x` entering block `start`.
    fn run_burn_from(
        &self,
        mut x: Tensor<3>,
        start: usize,
        hooks: &HookRequest,
        splice: Option<&Splice>,
    ) -> Result<HookCache, ForwardError> {
        let [batch, pos, _] = x.dims();
        let cfg = &self.config;
        let last_layer = self.last_layer(hooks, splice);
        let mut cache = HookCache::default();
        // [pos, pos]: true above the diagonal (future positions).
        let future: Tensor<2, Bool> = Tensor::<2>::ones([pos, pos], &self.device).triu(1).bool();

        let blocks = self.blocks.iter().enumerate().take(last_layer + 1);
        for (layer, block) in blocks.skip(start) {
            let normed = block.norm1.forward(x.clone());
            let want_pattern = hooks.pattern.contains(&layer);
            let (pattern, values, z) = self.attention(&block.attn, normed, &future, want_pattern);
            if let Some(pattern) = pattern {
                cache.pattern.insert(layer, pattern);
            }
            // z: [batch, pos, n_heads, d_head], raw convention.
            let fold = match hooks.z_convention {
                ZConvention::TransformerLens => {
                    block.attn.z_fold.clone().map(|f| f.unsqueeze::<4>())
                }
                ZConvention::Raw => None,
            };
            if hooks.values.contains(&layer) {
                // [batch, h, pos, dh] -> [batch, pos, h, dh]; the fold is constant over
                // positions and attention rows sum to one, so it comes off each value.
                let v = values.swap_dims(1, 2);
                let v = match &fold {
                    Some(f) => v - f.clone(),
                    None => v,
                };
                cache.values.insert(layer, v);
            }
            let hooked = match &fold {
                Some(f) => z.clone() - f.clone(),
                None => z.clone(),
            };
            if hooks.hook_z.contains(&layer) {
                cache.hook_z.insert(layer, hooked.clone());
            }
            let z = match splice {
                Some(s) if s.layer == layer => {
                    let replaced = self.spliced(s, hooked);
                    match &fold {
                        Some(f) => replaced + f.clone(),
                        None => replaced,
                    }
                }
                _ => z,
            };
            // A harvest to layer L stops at its z.
            if !hooks.reads_block_output(layer, last_layer) {
                break;
            }
            let attn_out = matmul_bias(
                z.reshape([batch, pos, cfg.n_heads * cfg.d_head]),
                &block.attn.w_o,
                block.attn.b_o.as_ref(),
            );
            x = block.add_mlp(x + attn_out);
            if hooks.resid_post.contains(&layer) {
                cache.resid_post.insert(layer, x.clone());
            }
        }
        if hooks.logits {
            let normed = self.norm_final.forward(x);
            cache.logits = Some(matmul_bias(normed, &self.w_u, self.b_u.as_ref()));
        }
        Ok(cache)
    }

    /// `splice`'s replacement of `z` `[batch, pos, n_heads, d_head]`, on its heads only.
    fn spliced(&self, splice: &Splice, z: Tensor<4>) -> Tensor<4> {
        let replaced = (splice.replace)(z.clone());
        match splice.heads {
            HeadSelection::All => replaced,
            HeadSelection::One(h) => {
                let cfg = &self.config;
                let [batch, pos, _, _] = z.dims();
                let mask = head_mask(cfg.n_heads, h, &self.device)
                    .reshape([1, 1, cfg.n_heads, 1])
                    .expand([batch, pos, cfg.n_heads, cfg.d_head]);
                z.mask_where(mask, replaced)
            }
        }
    }

    /// Queries `[batch, h, pos, dh]`, keys and values `[batch, hkv, pos, dh]` of `x`
    /// `[batch, pos, d_model]` at absolute positions `offset..offset + pos` (rotated there).
    fn project_qkv(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        offset: usize,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let cfg = &self.config;
        let [batch, pos, _] = x.dims();
        let (h, hkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        // [batch, pos, (h + 2 hkv) dh]
        let qkv = matmul_bias(x, &attn.w_qkv, attn.b_qkv.as_ref());
        let q = qkv
            .clone()
            .slice([0..batch, 0..pos, 0..h * dh])
            .reshape([batch, pos, h, dh])
            .swap_dims(1, 2); // [batch, h, pos, dh]
        let k = qkv
            .clone()
            .slice([0..batch, 0..pos, h * dh..(h + hkv) * dh])
            .reshape([batch, pos, hkv, dh])
            .swap_dims(1, 2); // [batch, hkv, pos, dh]
        let (q, k) = match &attn.qk_norm {
            Some(n) => (rms_norm(q, &n.q, n.eps), rms_norm(k, &n.k, n.eps)),
            None => (q, k),
        };
        let v = qkv
            .slice([0..batch, 0..pos, (h + hkv) * dh..(h + 2 * hkv) * dh])
            .reshape([batch, pos, hkv, dh])
            .swap_dims(1, 2); // [batch, hkv, pos, dh]
        match &self.positions {
            Positions::Rotary { .. } if attn.no_rope => (q, k, v),
            Positions::Rotary { cos, sin } => {
                let at = offset..offset + pos;
                let cos = cos.clone().slice([at.clone(), 0..dh]).unsqueeze::<4>();
                let sin = sin.clone().slice([at, 0..dh]).unsqueeze::<4>();
                (rotate(q, cos.clone(), sin.clone()), rotate(k, cos, sin), v)
            }
            Positions::Shortformer(w_pos) => {
                // `(x + p) W + b = (x W + b) + p W`: the positions' projections, once for
                // the batch, [1, pos, (h + 2 hkv) dh] (the values' part unused).
                let d_model = cfg.d_model;
                let at = offset..offset + pos;
                let p = w_pos.clone().slice([at, 0..d_model]).unsqueeze::<3>();
                let p = matmul_bias(p, &attn.w_qkv, None);
                let pq = (p.clone().slice([0..1, 0..pos, 0..h * dh]))
                    .reshape([1, pos, h, dh])
                    .swap_dims(1, 2);
                let pk = (p.slice([0..1, 0..pos, h * dh..(h + hkv) * dh]))
                    .reshape([1, pos, hkv, dh])
                    .swap_dims(1, 2);
                (q + pq, k + pk, v)
            }
            Positions::Learned(_) => (q, k, v),
        }
    }

    /// Causal self-attention. Returns the pattern `[batch, n_heads, dest, src]` (when
    /// `want_pattern`), the value vectors per query head `[batch, n_heads, src, d_head]` and
    /// raw `z` `[batch, pos, n_heads, d_head]`. Without the pattern, burn's fused attention
    /// op computes `z` (flash attention where the backend has it; on the CPU from 256
    /// positions), so the `[batch, h, pos, pos]` scores are never materialised.
    fn attention(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        future: &Tensor<2, Bool>,
        want_pattern: bool,
    ) -> (Option<Tensor<4>>, Tensor<4>, Tensor<4>) {
        let cfg = &self.config;
        let [batch, pos, _] = x.dims();
        let (h, hkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let (q, k, v) = self.project_qkv(attn, x, 0);
        let (k, v) = if hkv == h {
            (k, v)
        } else {
            (repeat_kv(k, h / hkv), repeat_kv(v, h / hkv))
        };
        // burn's CPU backend runs its fused op slower than the plain one below 256 positions
        // (measured, gpt2-small to layer 4: -10% at 128, equal at 256, 1.29x at 512, 1.6x
        // at 1024); on wgpu it autotunes between flash attention and separate kernels.
        let fused = pos >= 256 || self.device != Device::flex();
        if !want_pattern && fused {
            let options = burn::tensor::ops::AttentionModuleOptions {
                scale: Some(1.0 / (dh as f64).sqrt()),
                softcap: None,
                is_causal: true,
            };
            let z = burn::tensor::module::attention(q, k, v.clone(), None, None, options);
            return (None, v, z.swap_dims(1, 2));
        }
        // [batch, h, dest, src]
        let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
        let mask = future.clone().unsqueeze::<4>().expand([batch, h, pos, pos]);
        let pattern = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        // [batch, h, pos, dh] -> [batch, pos, h, dh]
        let z = pattern.clone().matmul(v.clone()).swap_dims(1, 2);
        (Some(pattern), v, z)
    }

    /// The same model with its matrices (attention, MLP, unembedding) in f16, for a faster
    /// forward on GPUs with f16 shaders: products are taken in half precision, everything
    /// else (residual stream, norms, attention, biases, embeddings) stays f32. Refused where
    /// the device has no f16.
    pub fn with_f16_matmuls(mut self) -> Result<Self, ForwardError> {
        if !self.device.supports_dtype(DType::F16) {
            return Err(ForwardError::NoF16);
        }
        let half = |t: &mut Tensor<2>| *t = t.clone().cast(DType::F16);
        for block in &mut self.blocks {
            half(&mut block.attn.w_qkv);
            half(&mut block.attn.w_o);
            match &mut block.mlp {
                Some((_, Mlp::Gelu { w_in, w_out, .. })) => {
                    half(w_in);
                    half(w_out);
                }
                Some((_, Mlp::SwiGlu { w_gate_up, w_down })) => {
                    half(w_gate_up);
                    half(w_down);
                }
                None => {}
            }
        }
        half(&mut self.w_u);
        Ok(self)
    }

    /// The same model on burn's autodiff (its device and every weight), so that a forward
    /// pass can be differentiated with respect to a spliced-in tensor. No weight requires
    /// gradients.
    pub fn with_autodiff(&self) -> Self {
        fn ad<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
            t.clone().autodiff()
        }
        let norm = |n: &Norm| match n {
            Norm::Layer { w, b, eps } => Norm::Layer {
                w: ad(w),
                b: ad(b),
                eps: *eps,
            },
            Norm::Rms { w, eps } => Norm::Rms {
                w: ad(w),
                eps: *eps,
            },
            Norm::Identity => Norm::Identity,
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| Block {
                norm1: norm(&b.norm1),
                attn: Attention {
                    w_qkv: ad(&b.attn.w_qkv),
                    b_qkv: b.attn.b_qkv.as_ref().map(ad),
                    w_o: ad(&b.attn.w_o),
                    b_o: b.attn.b_o.as_ref().map(ad),
                    z_fold: b.attn.z_fold.as_ref().map(ad),
                    qk_norm: b.attn.qk_norm.as_ref().map(|n| QkNorm {
                        q: ad(&n.q),
                        k: ad(&n.k),
                        eps: n.eps,
                    }),
                    no_rope: b.attn.no_rope,
                },
                mlp: b.mlp.as_ref().map(|(n, mlp)| {
                    let mlp = match mlp {
                        Mlp::Gelu {
                            w_in,
                            b_in,
                            w_out,
                            b_out,
                            approximate,
                        } => Mlp::Gelu {
                            w_in: ad(w_in),
                            b_in: ad(b_in),
                            w_out: ad(w_out),
                            b_out: ad(b_out),
                            approximate: *approximate,
                        },
                        Mlp::SwiGlu { w_gate_up, w_down } => Mlp::SwiGlu {
                            w_gate_up: ad(w_gate_up),
                            w_down: ad(w_down),
                        },
                    };
                    (norm(n), mlp)
                }),
            })
            .collect();
        Self {
            config: self.config.clone(),
            w_e: ad(&self.w_e),
            positions: match &self.positions {
                Positions::Learned(w) => Positions::Learned(ad(w)),
                Positions::Shortformer(w) => Positions::Shortformer(ad(w)),
                Positions::Rotary { cos, sin } => Positions::Rotary {
                    cos: ad(cos),
                    sin: ad(sin),
                },
            },
            blocks,
            norm_final: norm(&self.norm_final),
            w_u: ad(&self.w_u),
            b_u: self.b_u.as_ref().map(ad),
            device: self.device.clone().autodiff(),
        }
    }

    /// The output projection of one head of `layer`, `[d_head, d_model]`.
    pub fn w_o_head(&self, layer: usize, head: usize) -> Result<Tensor<2>, ForwardError> {
        let cfg = &self.config;
        let block = self.blocks.get(layer).ok_or(ForwardError::Layer {
            layer,
            n_layers: cfg.n_layers,
        })?;
        if head >= cfg.n_heads {
            return Err(ForwardError::Head {
                head,
                n_heads: cfg.n_heads,
            });
        }
        let dh = cfg.d_head;
        Ok(block
            .attn
            .w_o
            .clone()
            .slice([head * dh..(head + 1) * dh, 0..cfg.d_model]))
    }

    /// The unembedding `[d_model, d_vocab]` (without the final norm or bias).
    pub fn unembed(&self) -> Tensor<2> {
        self.w_u.clone()
    }
}

/// Per-token next-token cross-entropy, `[batch, pos - 1]`, from logits `[batch, pos, vocab]`.
/// On the CPU device (not autodiff, f32 logits) one pass over rows on all cores
/// (`fast_cpu::per_token_ce`); elsewhere burn's log-softmax.
pub fn per_token_ce(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<2> {
    #[cfg(not(target_arch = "wasm32"))]
    if fast_cpu::takes_ce(&logits, &tokens) {
        return fast_cpu::per_token_ce(logits, tokens);
    }
    per_token_ce_burn(logits, tokens)
}

/// The gradient of the summed [`per_token_ce`] with respect to `logits` `[batch, pos,
/// vocab]`: at each position but the last, the softmax less the next token's one-hot; zero
/// at the last. Computed where the CPU device holds the logits (one pass over rows on all
/// cores, `fast_cpu::ce_grad`), `None` elsewhere.
pub fn per_token_ce_grad(logits: &Tensor<3>, tokens: &Tensor<2, Int>) -> Option<Tensor<3>> {
    #[cfg(not(target_arch = "wasm32"))]
    if fast_cpu::takes_ce(logits, tokens) {
        return fast_cpu::ce_grad(logits.clone(), tokens.clone());
    }
    let _ = (logits, tokens); // (the page's build has no `fast_cpu`)
    None
}

/// [`per_token_ce`] through burn's ops.
fn per_token_ce_burn(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<2> {
    let [batch, pos, vocab] = logits.dims();
    let logp = log_softmax(logits.slice([0..batch, 0..pos - 1, 0..vocab]), 2);
    let targets = tokens
        .slice([0..batch, 1..pos])
        .reshape([batch, pos - 1, 1]);
    logp.gather(2, targets).reshape([batch, pos - 1]).neg()
}

/// `x @ w + b` over the last dimension of a `[batch, pos, d_in]` tensor.
fn matmul_bias(x: Tensor<3>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Tensor<3> {
    let [batch, pos, d_in] = x.dims();
    let d_out = w.dims()[1];
    let x = x.reshape([batch * pos, d_in]);
    // The step's tiled matmul instead of burn's, for comparison on a GPU (wgsl_linear).
    #[cfg(not(target_arch = "wasm32"))]
    if w.dtype() == DType::F32
        && super::wgsl_linear::wanted(&x.device(), (batch * pos, d_in, d_out))
    {
        return super::wgsl_linear::linear(x, w, b).reshape([batch, pos, d_out]);
    }
    // Half-precision weights (`Transformer::with_f16_matmuls`): the product in f16, the
    // residual stream, norms, attention and biases in f32.
    let y = if w.dtype() == DType::F16 {
        x.cast(DType::F16).matmul(w.clone()).cast(DType::F32)
    } else {
        x.matmul(w.clone())
    };
    let y = match b {
        Some(b) => y + b.clone().unsqueeze::<2>(),
        None => y,
    };
    y.reshape([batch, pos, d_out])
}

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, computed as
/// `x * sigmoid(2u)` (the same function) with `exp`, which the CPU backend runs ~10x faster
/// than `tanh` or `powi`.
fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let two_u = (x.clone() + cube * 0.044715) * (2.0 * c);
    x * sigmoid_exp(two_u)
}

/// `1 / (1 + exp(-x))`.
fn sigmoid_exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    (x.neg().exp() + 1.0).recip()
}

/// SiLU `x * sigmoid(x)`.
fn silu_exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * sigmoid_exp(x)
}

/// Rotary embedding in the half-split layout: `x cos + rotate_half(x) sin`.
/// `x`: [batch, heads, pos, d_head]; `cos`, `sin`: [1, 1, pos, d_head].
fn rotate(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// Grouped-query attention: `[batch, hkv, pos, dh]` -> `[batch, hkv * group, pos, dh]`,
/// query head `i` reading key/value head `i / group`.
fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    let [b, hkv, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, hkv, group, t, d])
        .reshape([b, hkv * group, t, d])
}

fn head_mask(n_heads: usize, head: usize, device: &Device) -> Tensor<1, Bool> {
    let mut mask = vec![false; n_heads];
    mask[head] = true;
    Tensor::from_data(TensorData::new(mask, [n_heads]), device)
}

/// Rotary tables `[n_ctx, d_head]` (half-split layout) for the config's base and scaling,
/// built for the whole context at once: the loaders cap `n_ctx` at
/// [`super::load::MAX_CONTEXT`], require an even `d_head >= 2` and give
/// [`RopeScaling::Factors`] `d_head / 2` factors before calling this.
pub(crate) fn rotary_tables(config: &TransformerConfig, device: &Device) -> Positions {
    let (n_ctx, d_head) = (config.n_ctx, config.d_head);
    let theta = config.rope_theta.unwrap_or(1e4);
    let half = d_head / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| {
            let f = theta.powf(-2.0 * i as f64 / d_head as f64);
            config.rope_scaling.as_ref().map_or(f, |s| s.scale(i, f))
        })
        .collect();
    let mut cos = Vec::with_capacity(n_ctx * d_head);
    let mut sin = Vec::with_capacity(n_ctx * d_head);
    for p in 0..n_ctx {
        for j in 0..d_head {
            let angle = p as f64 * freqs[j % half];
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Positions::Rotary {
        cos: Tensor::from_data(TensorData::new(cos, [n_ctx, d_head]), device),
        sin: Tensor::from_data(TensorData::new(sin, [n_ctx, d_head]), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f16 matrices give hook_z within half precision of the f32 model's: a relative error
    /// per product of about 2^-11 times the square root of the terms summed, compounding
    /// over two layers, stays under 1% of the largest value (tested where the device has
    /// f16; the CPU backend has).
    #[test]
    fn f16_matmuls_stay_within_half_precision_of_f32() {
        let flex = Device::flex();
        assert!(flex.supports_dtype(DType::F16), "the CPU backend has f16");
        f16_case(&flex);
        match crate::device::select(crate::device::DeviceChoice::Wgpu) {
            Ok(s) if s.device.supports_dtype(DType::F16) => f16_case(&s.device),
            Ok(s) => {
                println!("{}: no f16, so no f16 case there", s.description);
                let model = crate::lm::load::random(tiny_gpt2(), 5, &s.device);
                assert!(matches!(model.with_f16_matmuls(), Err(ForwardError::NoF16)));
            }
            Err(e) => println!("no wgpu adapter for the f16 case: {e}"),
        }
    }

    /// `per_token_ce` on the CPU device (its own pass) and through burn's log-softmax both
    /// give the next token's CE as f64 arithmetic on the host gives it, on logits large
    /// enough that `exp` without the largest logit taken off would overflow.
    #[test]
    fn per_token_ce_is_the_next_tokens_log_softmax() {
        let (batch, pos, vocab) = (3, 7, 301);
        let mut rng = crate::rng::Rng::new(11);
        let logits: Vec<f32> = (0..batch * pos * vocab)
            .map(|_| 60.0 * rng.normal() as f32 + 40.0)
            .collect();
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..pos).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let mut want = Vec::new();
        for (w, ids) in ids.iter().enumerate() {
            for t in 0..pos - 1 {
                let row = &logits[(w * pos + t) * vocab..][..vocab];
                let max = row.iter().map(|&x| f64::from(x)).fold(f64::MIN, f64::max);
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (f64::from(x) - max).exp())
                        .sum::<f64>()
                        .ln();
                want.push(lse - f64::from(row[ids[t + 1] as usize]));
            }
        }
        let device = Device::flex();
        let config = TransformerConfig {
            d_vocab: vocab,
            ..tiny_gpt2()
        };
        let tokens = crate::lm::load::random(config, 1, &device)
            .tokens(&ids)
            .unwrap();
        let l = Tensor::<3>::from_data(TensorData::new(logits, [batch, pos, vocab]), &device);
        assert!(fast_cpu::takes_ce(&l, &tokens));
        for (path, ce) in [
            ("own pass", per_token_ce(l.clone(), tokens.clone())),
            ("burn's ops", per_token_ce_burn(l, tokens)),
        ] {
            assert_eq!(ce.dims(), [batch, pos - 1]);
            let got = crate::files::host_vec(ce).unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (f64::from(*g) - w).abs() / w.abs().max(1.0))
                .fold(0.0, f64::max);
            assert!(worst < 2e-6, "{path}: relative difference {worst:e}");
        }
    }

    /// `per_token_ce_grad` on the CPU device is the gradient burn's autodiff gives the summed
    /// `per_token_ce` (burn's log-softmax), zero at each window's last position.
    #[test]
    fn per_token_ce_grad_is_autodiffs_gradient() {
        let (batch, pos, vocab) = (2, 6, 211);
        let mut rng = crate::rng::Rng::new(5);
        let logits: Vec<f32> = (0..batch * pos * vocab)
            .map(|_| 30.0 * rng.normal() as f32)
            .collect();
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..pos).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let config = TransformerConfig {
            d_vocab: vocab,
            ..tiny_gpt2()
        };
        let plain = crate::lm::load::random(config, 1, &Device::flex());
        let tokens = plain.tokens(&ids).unwrap();
        let data = TensorData::new(logits, [batch, pos, vocab]);
        let l = Tensor::<3>::from_data(data.clone(), &Device::flex());
        let got = crate::files::host_vec(per_token_ce_grad(&l, &tokens).unwrap()).unwrap();
        let ad = plain.with_autodiff();
        let l_ad = Tensor::<3>::from_data(data, &ad.device).require_grad();
        let grads = per_token_ce_burn(l_ad.clone(), ad.tokens(&ids).unwrap())
            .sum()
            .backward();
        let want = crate::files::host_vec(l_ad.grad(&grads).unwrap()).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst:e}");
        for (i, row) in got.chunks(vocab).enumerate() {
            let sum: f32 = row.iter().sum();
            let last = i % pos == pos - 1;
            assert!(sum.abs() < 1e-5, "a softmax less a one-hot sums to 0");
            assert_eq!(last, row.iter().all(|&g| g == 0.0), "row {i}");
        }
    }

    fn tiny_gpt2() -> TransformerConfig {
        TransformerConfig {
            name: "tiny".into(),
            family: Family::Gpt2,
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 4,
            d_head: 16,
            d_mlp: 256,
            d_vocab: 50,
            n_ctx: 64,
            norm_eps: 1e-5,
            activation: Activation::GeluNew,
            rope_theta: None,
            rope_scaling: None,
            bos_token_id: Some(0),
            eos_token_ids: Vec::new(),
            attn_only: false,
            shortformer: false,
            no_norms: false,
        }
    }

    fn f16_case(device: &Device) {
        let model = crate::lm::load::random(tiny_gpt2(), 5, device);
        let half = crate::lm::load::random(tiny_gpt2(), 5, device)
            .with_f16_matmuls()
            .unwrap();
        let ids: Vec<u32> = (0..40u32).map(|i| (i * 11 + 3) % 50).collect();
        let tokens = model.tokens(&[ids]).unwrap();
        let hooks = HookRequest::hook_z(&[1]);
        let want = model.run(tokens.clone(), &hooks, None).unwrap().hook_z[&1].clone();
        let got = half.run(tokens, &hooks, None).unwrap().hook_z[&1].clone();
        assert_eq!(got.dtype(), DType::F32, "hook_z comes back in f32");
        let scale: f32 = want.clone().abs().max().into_scalar();
        let diff: f32 = (got - want).abs().max().into_scalar();
        println!("f16 matmuls on {device:?}: max |dz| {diff:.2e} of max |z| {scale:.2e}");
        assert!(diff > 0.0, "the half-precision path was taken");
        assert!(
            diff <= 1e-2 * scale,
            "f16 matmuls differ by {diff} (scale {scale})"
        );
    }

    /// burn's fused attention op (taken when the pattern is not asked for, on burn's CPU
    /// backend from 256 positions) gives the same hook_z as the explicit softmax path
    /// (taken when it is), for GPT-2 and for Llama (rotary positions, grouped-query
    /// attention), at 300 tokens.
    #[test]
    fn fused_attention_gives_the_same_hook_z_as_the_explicit_pattern() {
        let device = Device::flex();
        for (family, n_kv_heads, activation, rope_theta) in [
            (Family::Gpt2, 4, Activation::GeluNew, None),
            (Family::Llama, 2, Activation::Silu, Some(1e4)),
        ] {
            let config = TransformerConfig {
                name: "tiny".into(),
                family,
                n_layers: 2,
                d_model: 64,
                n_heads: 4,
                n_kv_heads,
                d_head: 16,
                d_mlp: 128,
                d_vocab: 50,
                n_ctx: 512,
                norm_eps: 1e-5,
                activation,
                rope_theta,
                rope_scaling: None,
                bos_token_id: Some(0),
                eos_token_ids: Vec::new(),
                attn_only: false,
                shortformer: false,
                no_norms: false,
            };
            let model = crate::lm::load::random(config, 3, &device);
            let ids: Vec<u32> = (0..300u32).map(|i| (i * 7 + i / 5) % 50).collect();
            let tokens = model.tokens(&[ids.clone(), ids.iter().rev().copied().collect()]);
            let tokens = tokens.unwrap();
            // burn's path (the CPU's own forward, `fast_cpu`, is tested against it below).
            let fused = model
                .run_burn(tokens.clone(), &HookRequest::hook_z(&[1]), None)
                .unwrap()
                .hook_z[&1]
                .clone();
            let with_pattern = HookRequest {
                pattern: vec![0, 1],
                ..HookRequest::hook_z(&[1])
            };
            let explicit = model.run_burn(tokens, &with_pattern, None).unwrap();
            let explicit = explicit.hook_z[&1].clone();
            let scale: f32 = explicit.clone().abs().max().into_scalar();
            let diff: f32 = (fused - explicit).abs().max().into_scalar();
            assert!(
                diff <= 1e-5 * scale,
                "{family:?}: fused attention differs by {diff} (scale {scale})"
            );
        }
    }

    /// The CPU forward (`fast_cpu`) gives what burn's ops give, for each kind of model it
    /// takes: GPT-2 (LayerNorm, learned positions, gelu_new), exact GELU, Llama (RMSNorm,
    /// rotary positions, grouped-query attention, SwiGLU) and attention-only without norms;
    /// both conventions, the requests of the harvest, dashboards and CE evaluations, an odd
    /// window length (150: attention's query blocks of 64, 64 and 22), and every bias, norm
    /// weight and fold random (`random` leaves them at 0 and 1).
    #[test]
    fn cpu_forward_gives_what_burns_ops_give() {
        let device = Device::flex();
        let cases = [
            ("gpt2", Family::Gpt2, 4, Activation::GeluNew, false),
            ("exact gelu", Family::Gpt2, 4, Activation::Gelu, false),
            ("llama gqa", Family::Llama, 2, Activation::Silu, false),
            (
                "attn-only, no norms",
                Family::Gpt2,
                4,
                Activation::GeluNew,
                true,
            ),
        ];
        for (name, family, n_kv_heads, activation, bare) in cases {
            let mut config = small_config(family, n_kv_heads, activation, 256);
            (config.name, config.attn_only, config.no_norms) = (name.into(), bare, bare);
            let mut model = crate::lm::load::random(config, 7, &device);
            randomise_small_weights(&mut model, bare);
            let ids: Vec<u32> = (0..150u32).map(|i| (i * 13 + i / 3) % 50).collect();
            let other: Vec<u32> = ids.iter().map(|i| (i * 7 + 1) % 50).collect();
            let tokens = model.tokens(&[ids, other]).unwrap();
            assert!(fast_cpu::applies(&model), "{name}: fast path");
            for convention in [ZConvention::TransformerLens, ZConvention::Raw] {
                let z = |layers: &[usize]| HookRequest {
                    z_convention: convention,
                    ..HookRequest::hook_z(layers)
                };
                let zero = Splice::zero_ablate(2, HeadSelection::One(1));
                let halve = Splice {
                    layer: 1,
                    heads: HeadSelection::All,
                    replace: &|z| z * 0.5,
                };
                // hook_z alone (the harvest), with patterns and values (dashboards),
                // logits, residuals, a splice of one head (CE evaluations) and one of all
                // heads that scales them.
                let requests = [
                    (z(&[0, 2]), None),
                    (
                        HookRequest {
                            pattern: vec![1],
                            values: vec![1],
                            ..z(&[0, 1, 2])
                        },
                        None,
                    ),
                    (
                        HookRequest {
                            logits: true,
                            ..z(&[1])
                        },
                        None,
                    ),
                    (
                        HookRequest {
                            resid_post: vec![1],
                            ..z(&[2])
                        },
                        None,
                    ),
                    (
                        HookRequest {
                            logits: true,
                            ..z(&[])
                        },
                        Some(&zero),
                    ),
                    (
                        HookRequest {
                            pattern: vec![2],
                            values: vec![2],
                            ..z(&[1, 2])
                        },
                        Some(&halve),
                    ),
                ];
                for (i, (hooks, splice)) in requests.into_iter().enumerate() {
                    let tag = format!("{name} {convention:?} request {i}");
                    let fast = model.run(tokens.clone(), &hooks, splice).unwrap();
                    let burn = model.run_burn(tokens.clone(), &hooks, splice).unwrap();
                    // What was asked for (burn's explicit attention also returns patterns
                    // not asked for).
                    for l in &hooks.hook_z {
                        same(
                            &format!("{tag} hook_z L{l}"),
                            &fast.hook_z[l],
                            &burn.hook_z[l],
                        );
                    }
                    for l in &hooks.pattern {
                        same(
                            &format!("{tag} pattern L{l}"),
                            &fast.pattern[l],
                            &burn.pattern[l],
                        );
                    }
                    for l in &hooks.values {
                        same(
                            &format!("{tag} values L{l}"),
                            &fast.values[l],
                            &burn.values[l],
                        );
                    }
                    for l in &hooks.resid_post {
                        let (got, want) = (&fast.resid_post[l], &burn.resid_post[l]);
                        same(&format!("{tag} resid_post L{l}"), got, want);
                    }
                    if hooks.logits {
                        let (got, want) = (fast.logits.as_ref(), burn.logits.as_ref());
                        same(&format!("{tag} logits"), got.unwrap(), want.unwrap());
                    }
                }
            }
        }
    }

    /// A run from a prefix gives the values of a whole run exactly, on the CPU's forward and
    /// on burn's, for prefixes at, before and after the layer spliced (and past the last
    /// block); a request before the prefix is refused.
    /// `ce_from` (on the CPU, the unembedding a chunk at a time, the logits never whole)
    /// gives what burn's ops give: `per_token_ce_burn` of `run_burn`'s logits, with an
    /// unembedding bias, a splice, from prefixes at two layers, for chunks that divide the
    /// vocabulary and that leave a short last chunk, and one chunk of it all.
    #[test]
    fn ce_from_gives_burns_losses_without_the_logits() {
        let device = Device::flex();
        for mut model in gpt2_and_llama(4) {
            let family = model.config.family;
            if family == Family::Gpt2 {
                let b: Vec<f32> = (0..50)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
                    .collect();
                model.b_u = Some(Tensor::from_data(TensorData::new(b, [50]), &device));
            }
            let ids: Vec<u32> = (0..70u32).map(|i| (i * 13 + 3) % 50).collect();
            let tokens = model.tokens(&[ids.clone(), ids.iter().rev().copied().collect()]);
            let tokens = tokens.unwrap();
            let halve = Splice {
                layer: 1,
                heads: HeadSelection::One(2),
                replace: &|z| z * 0.5,
            };
            let conv = ZConvention::TransformerLens;
            let hooks = HookRequest {
                logits: true,
                z_convention: conv,
                ..Default::default()
            };
            let logits = model
                .run_burn(tokens.clone(), &hooks, Some(&halve))
                .unwrap();
            let want = per_token_ce_burn(logits.logits.unwrap(), tokens.clone());
            let scale: f32 = want.clone().abs().max().into_scalar();
            for layer in [0, 1] {
                let prefix = model.prefix(tokens.clone(), layer).unwrap();
                for chunk in [10, 7, 50] {
                    let got = model
                        .ce_from_in_chunks(&prefix, &tokens, conv, Some(&halve), chunk)
                        .unwrap();
                    same(
                        &format!("{family:?} from {layer}, chunk {chunk}"),
                        &got,
                        &want,
                    );
                }
                let got = model.ce_from(&prefix, &tokens, conv, Some(&halve)).unwrap();
                same(&format!("{family:?} from {layer}"), &got, &want);
            }
            assert!(scale > 1.0, "losses of a few nats: {scale}");
        }
    }

    #[test]
    fn runs_from_a_prefix_give_a_whole_runs_values_exactly() {
        for model in gpt2_and_llama(9) {
            let family = model.config.family;
            let ids: Vec<u32> = (0..70u32).map(|i| (i * 17 + 5) % 50).collect();
            let tokens = model.tokens(&[ids.clone(), ids.iter().rev().copied().collect()]);
            let tokens = tokens.unwrap();
            let halve = Splice {
                layer: 2,
                heads: HeadSelection::One(1),
                replace: &|z| z * 0.5,
            };
            let hooks = HookRequest {
                logits: true,
                ..HookRequest::hook_z(&[2])
            };
            let values = |c: HookCache| -> Vec<f32> {
                let mut v = crate::files::host_vec(c.logits.unwrap()).unwrap();
                v.extend(crate::files::host_vec(c.hook_z[&2].clone()).unwrap());
                v
            };
            let whole = values(model.run(tokens.clone(), &hooks, Some(&halve)).unwrap());
            let whole_burn = model
                .run_burn(tokens.clone(), &hooks, Some(&halve))
                .unwrap();
            let whole_burn = values(whole_burn);
            for layer in [0, 1, 2] {
                let prefix = model.prefix(tokens.clone(), layer).unwrap();
                let from = model.run_from(&prefix, &hooks, Some(&halve)).unwrap();
                let equal = values(from) == whole;
                assert!(
                    equal,
                    "{family:?}: from layer {layer}, not the whole run's values"
                );
                // burn's path from burn's prefix.
                let x = match layer {
                    0 => model.embed(tokens.clone()),
                    _ => {
                        let resid = HookRequest {
                            resid_post: vec![layer - 1],
                            ..Default::default()
                        };
                        let mut c = model.run_burn(tokens.clone(), &resid, None).unwrap();
                        c.resid_post.remove(&(layer - 1)).unwrap()
                    }
                };
                let from = model.run_burn_from(x, layer, &hooks, Some(&halve)).unwrap();
                assert_eq!(
                    values(from),
                    whole_burn,
                    "{family:?}: burn from layer {layer}"
                );
            }
            let logits = HookRequest::logits();
            let whole = model
                .run(tokens.clone(), &logits, None)
                .unwrap()
                .logits
                .unwrap();
            let end = model.prefix(tokens.clone(), 3).unwrap();
            let from = model.run_from(&end, &logits, None).unwrap().logits.unwrap();
            let equal =
                crate::files::host_vec(from).unwrap() == crate::files::host_vec(whole).unwrap();
            assert!(
                equal,
                "{family:?}: from past the last block, not the whole run's logits"
            );
            let late = model.prefix(tokens.clone(), 3).unwrap();
            assert_eq!(
                model.run_from(&late, &hooks, Some(&halve)).err(),
                Some(ForwardError::BeforePrefix { layer: 2, start: 3 })
            );
        }
    }

    /// `got` within 5e-6 of `want` everywhere, relative to the largest `|want|` where that
    /// is above 1. Seen: at most 1.3e-6 (hook_z: 4.6e-7 of its scale). Changing GELU's
    /// 0.044715 to 0.045 or SiLU's output by 0.1% in `fast_cpu` moves hook_z by 1.2e-5 of
    /// its scale.
    fn same<const D: usize>(what: &str, got: &Tensor<D>, want: &Tensor<D>) {
        assert_eq!(got.dims(), want.dims(), "{what}");
        let scale: f32 = want.clone().abs().max().into_scalar();
        let diff: f32 = (got.clone() - want.clone()).abs().max().into_scalar();
        println!("{what}: max diff {diff:.2e} of {scale:.2e}");
        let tol = 5e-6 * scale.max(1.0);
        assert!(diff <= tol, "{what}: differs by {diff} (scale {scale})");
    }

    /// A GPT-2 kind (`gelu_new`) and a Llama kind (4 query heads on 2 key/value heads,
    /// SiLU) of [`small_config`] with a context of 128, weights from `seed` and then
    /// [`randomise_small_weights`], on the CPU device.
    fn gpt2_and_llama(seed: u64) -> Vec<Transformer> {
        [
            (Family::Gpt2, 4, Activation::GeluNew),
            (Family::Llama, 2, Activation::Silu),
        ]
        .into_iter()
        .map(|(family, n_kv_heads, activation)| {
            let config = small_config(family, n_kv_heads, activation, 128);
            let mut model = crate::lm::load::random(config, seed, &Device::flex());
            randomise_small_weights(&mut model, false);
            model
        })
        .collect()
    }

    /// Three layers, 4 heads of 16 (`n_kv_heads` key/value heads), a 50-token vocabulary.
    fn small_config(
        family: Family,
        n_kv_heads: usize,
        activation: Activation,
        n_ctx: usize,
    ) -> TransformerConfig {
        TransformerConfig {
            name: "small".into(),
            family,
            n_layers: 3,
            d_model: 64,
            n_heads: 4,
            n_kv_heads,
            d_head: 16,
            d_mlp: 96,
            d_vocab: 50,
            n_ctx,
            norm_eps: 1e-5,
            activation,
            rope_theta: (family == Family::Llama).then_some(1e4),
            rope_scaling: None,
            bos_token_id: Some(0),
            eos_token_ids: Vec::new(),
            attn_only: false,
            shortformer: false,
            no_norms: false,
        }
    }

    /// Random biases, norm weights and folds (normal, std 0.5 around 0, norms around 1) and
    /// larger MLP matrices; `bare` drops the MLPs and norms.
    fn randomise_small_weights(model: &mut Transformer, bare: bool) {
        let device = model.device.clone();
        let mut rng = crate::rng::Rng::new(11);
        let mut vector = |n: usize, centre: f64| -> Tensor<1> {
            let v: Vec<f32> = (0..n)
                .map(|_| (centre + 0.5 * rng.normal()) as f32)
                .collect();
            Tensor::from_data(TensorData::new(v, [n]), &device)
        };
        let cfg = model.config.clone();
        let (d, h, hkv, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let norm = |n: &mut Norm, vector: &mut dyn FnMut(usize, f64) -> Tensor<1>| match n {
            Norm::Layer { w, b, .. } => (*w, *b) = (vector(d, 1.0), vector(d, 0.0)),
            Norm::Rms { w, .. } => *w = vector(d, 1.0),
            Norm::Identity => {}
        };
        for block in &mut model.blocks {
            if bare {
                block.norm1 = Norm::Identity;
                block.mlp = None;
            }
            norm(&mut block.norm1, &mut vector);
            if let Some((n, mlp)) = &mut block.mlp {
                norm(n, &mut vector);
                // Matrices of std 0.5 and 0.2 (not 0.02) put the activations in their curved
                // range and make the MLP's output a large part of the residual stream.
                match mlp {
                    Mlp::Gelu {
                        w_in,
                        b_in,
                        w_out,
                        b_out,
                        ..
                    } => {
                        (*w_in, *w_out) = (w_in.clone() * 25.0, w_out.clone() * 10.0);
                        (*b_in, *b_out) = (vector(cfg.d_mlp, 0.0), vector(d, 0.0));
                    }
                    Mlp::SwiGlu { w_gate_up, w_down } => {
                        (*w_gate_up, *w_down) = (w_gate_up.clone() * 25.0, w_down.clone() * 10.0);
                    }
                }
            }
            let attn = &mut block.attn;
            attn.b_qkv = Some(vector((h + 2 * hkv) * dh, 0.0));
            attn.b_o = Some(vector(d, 0.0));
            attn.z_fold = Some(vector(h * dh, 0.0).reshape([h, dh]));
        }
    }

    /// Harvesting an early layer must not run later layers: poison block 1 with NaNs and
    /// check that hook_z of layer 0 stays finite and unchanged, while logits turn NaN.
    #[test]
    fn stops_after_the_last_hooked_layer() {
        let device = Device::flex();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2_tiny");
        let mut model = crate::lm::load_from_path(&dir, "t", &device)
            .unwrap()
            .transformer;
        let tokens = model.tokens(&[vec![399, 5, 17, 42, 7]]).unwrap();
        let clean = model
            .run(tokens.clone(), &HookRequest::hook_z(&[0]), None)
            .unwrap()
            .hook_z[&0]
            .clone();
        let block = &mut model.blocks[1];
        block.attn.w_qkv = block.attn.w_qkv.clone().mul_scalar(f32::NAN);
        let z = model
            .run(tokens.clone(), &HookRequest::hook_z(&[0]), None)
            .unwrap()
            .hook_z[&0]
            .clone();
        let diff: f32 = (z - clean).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "layer 0 hook_z unchanged and finite");
        let logits = model
            .run(tokens, &HookRequest::logits(), None)
            .unwrap()
            .logits
            .unwrap();
        assert!(
            logits.is_nan().any().into_scalar::<bool>(),
            "the full forward does reach block 1"
        );
    }
}
