//! The LM forward on the CPU: the same model and arithmetic as burn's path
//! (`Transformer::run_burn`), with the residual stream held as one host buffer between
//! burn's matrix products. Every request on the CPU device takes it: training's harvest,
//! `harvest`, dashboards and DFA, CE evaluations with splices, Your text.
//!
//! burn's CPU backend runs its matrix products on both cores (gemm on rayon) but every
//! element-wise op (norms, biases, rotary positions, the MLP's activation, softmax, the
//! residual additions) on one, each a separate pass over memory; on a 2-core CPU those
//! passes took about 40% of a harvest's time. Here each of them is one pass, over rows
//! on rayon's threads, and attention runs per window and head with gemm, so the scores
//! are a `[batch, heads, pos, pos]` tensor only when the pattern is asked for. The last
//! layer's output projection and MLP are skipped when nothing reads them.
//!
//! Taken by `run` on the CPU device with f32 matrices, for every family but shortformer
//! positions; `ATTN_SAES_LM_FORWARD=burn` takes burn's path instead (for comparison).
//!
//! The next-token CE (`per_token_ce`) and its gradient with respect to the logits
//! (`per_token_ce_grad`, for the effect estimates) are here too: one pass over the
//! logits' rows each, where burn's log-softmax makes several on one core.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{
    ForwardError, HookCache, HookRequest, Mlp, Norm, Positions, Splice, Transformer, ZConvention,
};
use crate::train::fused_cpu::matmul as gemm_into;

/// Whether `run` takes this path on `model`: not on burn's autodiff, where a forward is
/// differentiated.
pub(super) fn applies(model: &Transformer) -> bool {
    let plain = |m: &Tensor<2>| m.dtype() == DType::F32;
    // (Device equality ignores autodiff.)
    model.device == Device::flex()
        && !model.device.is_autodiff()
        && !matches!(model.positions, Positions::Shortformer(_))
        && model.blocks.iter().all(|b| plain(&b.attn.w_qkv))
        && plain(&model.w_u)
        && std::env::var("ATTN_SAES_LM_FORWARD").as_deref() != Ok("burn")
}

/// Whether `per_token_ce` takes [`per_token_ce`] here: f32 logits on the CPU device, not
/// autodiff (the effects differentiate the loss), tokens of the logits' batch and length.
pub(super) fn takes_ce(logits: &Tensor<3>, tokens: &Tensor<2, Int>) -> bool {
    let device = logits.device();
    let [batch, pos, _] = logits.dims();
    device == Device::flex()
        && !device.is_autodiff()
        && logits.dtype() == DType::F32
        && tokens.dims() == [batch, pos]
        && pos > 1
        && std::env::var("ATTN_SAES_LM_FORWARD").as_deref() != Ok("burn")
}

/// Per-token next-token cross-entropy `[batch, pos - 1]` from logits `[batch, pos,
/// vocab]` (which [`takes_ce`]): for each row its log-sum-exp (the largest logit plus the
/// log of a sum, in f64, of `exp(logit - largest)`) less the next token's logit, a row per
/// task on rayon, read from the logits in place. A token outside the vocabulary gives NaN.
pub(super) fn per_token_ce(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<2> {
    let device = logits.device();
    let [batch, pos, vocab] = logits.dims();
    let data = logits.into_data();
    let Ok(l) = data.as_slice::<f32>() else {
        // Not reached: `takes_ce` admits f32 logits only.
        return super::per_token_ce_burn(Tensor::from_data(data, &device), tokens);
    };
    let targets: Vec<i64> = tokens.into_data().iter::<i64>().collect();
    let mut ce = vec![0.0f32; batch * (pos - 1)];
    ce.par_iter_mut().enumerate().for_each(|(i, ce)| {
        let (w, t) = (i / (pos - 1), i % (pos - 1));
        let row = &l[(w * pos + t) * vocab..][..vocab];
        let target = usize::try_from(targets[w * pos + t + 1]).ok();
        *ce = match target.filter(|&t| t < vocab) {
            Some(target) => {
                let (max, sum) = max_and_sum_exp(row);
                (f64::from(max) + sum.ln() - f64::from(row[target])) as f32
            }
            None => f32::NAN,
        };
    });
    Tensor::from_data(TensorData::new(ce, [batch, pos - 1]), &device)
}

/// A row's largest value and the sum, in f64, of `exp(x - largest)`: its log-sum-exp is
/// `largest + ln(sum)`.
fn max_and_sum_exp(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&x| f64::from((x - max).exp())).sum())
}

/// `super::per_token_ce_grad` on logits that [`takes_ce`]: a row per task on rayon, the
/// softmax from the largest logit off, its sum in f64.
/// `None` if the logits cannot be read as f32 (which `takes_ce` rules out).
pub(super) fn ce_grad(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Option<Tensor<3>> {
    let device = logits.device();
    let [batch, pos, vocab] = logits.dims();
    let data = logits.into_data();
    let l = data.as_slice::<f32>().ok()?;
    let targets: Vec<i64> = tokens.into_data().iter::<i64>().collect();
    let mut g = vec![0.0f32; batch * pos * vocab];
    g.par_chunks_mut(vocab)
        .zip(l.par_chunks(vocab))
        .enumerate()
        .filter(|(i, _)| i % pos != pos - 1)
        .for_each(|(i, (g, row))| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (g, &x) in g.iter_mut().zip(row) {
                *g = (x - max).exp();
            }
            let inv = (1.0 / g.iter().map(|&e| f64::from(e)).sum::<f64>()) as f32;
            g.iter_mut().for_each(|e| *e *= inv);
            match usize::try_from(targets[i + 1]).ok().filter(|&t| t < vocab) {
                Some(t) => g[t] -= 1.0,
                None => g.fill(f32::NAN),
            }
        });
    Some(Tensor::from_data(
        TensorData::new(g, [batch, pos, vocab]),
        &device,
    ))
}

/// Columns of the unembedding a step of [`ce_of_resid`] takes.
pub(super) const CE_VOCAB_CHUNK: usize = 2048;

/// `Transformer::ce_from` on `model` (which [`applies`]): the next-token CE `[batch, pos -
/// 1]` from the last block's output `resid` `[batch, pos, d_model]`, without the logits.
/// The unembedding is taken `chunk` columns at a time (a burn product of a few MB, its
/// memory reused where a `[n, vocab]` tensor would be fresh pages): for each row its largest
/// logit and the sum (f64) of `exp(logit - largest)` in that chunk, and the next token's
/// logit from the chunk holding it; the chunks then merge in order into the log-sum-exp.
pub(super) fn ce_of_resid(
    model: &Transformer,
    resid: Tensor<3>,
    tokens: &Tensor<2, Int>,
    chunk: usize,
) -> Result<Tensor<2>, ForwardError> {
    let device = &model.device;
    let [batch, pos, d] = resid.dims();
    let n = batch * pos;
    let vocab = model.w_u.dims()[1];
    let targets: Vec<i64> = tokens.clone().into_data().iter::<i64>().collect();
    let normed = norm(&model.norm_final, &host(resid)?, d)?;
    let normed = Tensor::<2>::from_data(TensorData::new(normed, [n, d]), device);
    let b_u = model.b_u.clone().map(host).transpose()?;
    // Per row: (largest logit, its sum of exponentials) of every chunk so far, merged; and
    // the next token's logit (NaN for a token outside the vocabulary, and at a window's
    // last position, which has none).
    let mut lse = vec![(f32::NEG_INFINITY, 0.0f64); n];
    let mut target = vec![f32::NAN; n];
    for c0 in (0..vocab).step_by(chunk.max(1)) {
        let c1 = (c0 + chunk.max(1)).min(vocab);
        let logits = normed
            .clone()
            .matmul(model.w_u.clone().slice([0..d, c0..c1]));
        let mut logits = host(logits)?;
        if let Some(b) = &b_u {
            add_to_rows(&mut logits, &b[c0..c1], 1.0);
        }
        lse.par_iter_mut()
            .zip(target.par_iter_mut())
            .zip(logits.par_chunks(c1 - c0))
            .enumerate()
            .for_each(|(i, ((lse, target), row))| {
                let (max, sum) = max_and_sum_exp(row);
                // Merge: the larger maximum stays, the other sum is rescaled to it.
                let (m0, s0) = *lse;
                let m = m0.max(max);
                *lse = (
                    m,
                    s0 * f64::from(m0 - m).exp() + sum * f64::from(max - m).exp(),
                );
                if i % pos != pos - 1 {
                    let t = targets[i + 1];
                    if let Ok(t) = usize::try_from(t)
                        && (c0..c1).contains(&t)
                    {
                        *target = row[t - c0];
                    }
                }
            });
    }
    let ce: Vec<f32> = (0..n)
        .filter(|i| i % pos != pos - 1)
        .map(|i| {
            let (max, sum) = lse[i];
            (f64::from(max) + sum.ln() - f64::from(target[i])) as f32
        })
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(ce, [batch, pos - 1]),
        device,
    ))
}

/// `Transformer::run` on `model` (which [`applies`]) from the residual stream `x` `[batch
/// pos, d_model]` entering block `start`, for a non-empty batch; `check` has passed.
pub(super) fn run_from(
    model: &Transformer,
    mut x: Vec<f32>,
    batch: usize,
    pos: usize,
    start: usize,
    hooks: &HookRequest,
    splice: Option<&Splice>,
) -> Result<HookCache, ForwardError> {
    let cfg = &model.config;
    let (d, h, hkv, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let n = batch * pos;
    let device = &model.device;
    let tensor =
        |v: Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, shape), device);
    let last = model.last_layer(hooks, splice);
    let rotary = match &model.positions {
        Positions::Rotary { cos, sin } => Some((
            host(cos.clone().slice([0..pos, 0..dh]))?,
            host(sin.clone().slice([0..pos, 0..dh]))?,
        )),
        Positions::Learned(_) => None,
        Positions::Shortformer(_) => unreachable!("`applies` leaves shortformer models to burn"),
    };

    let mut cache = HookCache::default();
    let shape = Shape {
        batch,
        pos,
        h,
        hkv,
        dh,
    };
    for (layer, block) in model.blocks.iter().enumerate().take(last + 1).skip(start) {
        let attn = &block.attn;
        let product_qkv = product(norm(&block.norm1, &x, d)?, n, &attn.w_qkv)?;
        let b_qkv = attn.b_qkv.clone().map(host).transpose()?;
        let qk_norm = match &attn.qk_norm {
            Some(n) => Some((host(n.q.clone())?, host(n.k.clone())?, n.eps as f32)),
            None => None,
        };
        let qk_norm = qk_norm
            .as_ref()
            .map(|(q, k, eps)| (q.as_slice(), k.as_slice(), *eps));
        let rot =
            (rotary.as_ref().filter(|_| !attn.no_rope)).map(|(c, s)| (c.as_slice(), s.as_slice()));
        let qkv = prepared_qkv(
            floats(&product_qkv)?,
            &shape,
            b_qkv.as_deref(),
            qk_norm,
            rot,
        );
        drop(product_qkv);
        let (mut z, pattern) = attention(&qkv, &shape, hooks.pattern.contains(&layer));
        if let Some(p) = pattern {
            cache.pattern.insert(layer, tensor(p, [batch, h, pos, pos]));
        }
        // The fold [h dh] that gives hook_z in the request's convention.
        let fold = match (hooks.z_convention, &attn.z_fold) {
            (ZConvention::TransformerLens, Some(f)) => Some(host(f.clone())?),
            _ => None,
        };
        let unfolded = |mut v: Vec<f32>| {
            if let Some(f) = &fold {
                add_to_rows(&mut v, f, -1.0);
            }
            v
        };
        if hooks.values.contains(&layer) {
            // Per query head [batch, pos, h, dh]; the fold comes off each value, as in
            // burn's path.
            let (width, group) = (shape.width(), h / hkv);
            let mut values = vec![0.0f32; n * h * dh];
            values
                .par_chunks_mut(h * dh)
                .zip(qkv.par_chunks(width))
                .for_each(|(out, row)| {
                    for (head, out) in out.chunks_exact_mut(dh).enumerate() {
                        let kv = h + hkv + head / group;
                        out.copy_from_slice(&row[kv * dh..(kv + 1) * dh]);
                    }
                });
            cache
                .values
                .insert(layer, tensor(unfolded(values), [batch, pos, h, dh]));
        }
        let spliced_here = splice.filter(|s| s.layer == layer);
        let whole = hooks.reads_block_output(layer, last);
        if hooks.hook_z.contains(&layer) || spliced_here.is_some() {
            let moved = !whole && spliced_here.is_none();
            let hooked = unfolded(if moved {
                std::mem::take(&mut z)
            } else {
                z.clone()
            });
            let hooked = tensor(hooked, [batch, pos, h, dh]);
            if hooks.hook_z.contains(&layer) {
                cache.hook_z.insert(layer, hooked.clone());
            }
            if let Some(s) = spliced_here {
                z = host(model.spliced(s, hooked))?;
                if let Some(f) = &fold {
                    add_to_rows(&mut z, f, 1.0);
                }
            }
        }
        if !whole {
            break;
        }
        let out = product(z, n, &attn.w_o)?;
        let b_o = attn.b_o.clone().map(host).transpose()?;
        add_residual(&mut x, floats(&out)?, b_o.as_deref(), d);
        if let Some((norm2, mlp)) = &block.mlp {
            let (out, bias) = mlp_out(mlp, norm(norm2, &x, d)?, n)?;
            add_residual(&mut x, floats(&out)?, bias.as_deref(), d);
        }
        if hooks.resid_post.contains(&layer) {
            let data = TensorData::new(x.clone(), [batch, pos, d]);
            cache
                .resid_post
                .insert(layer, Tensor::from_data(data, device));
        }
    }
    if hooks.logits {
        // Left in burn: [n, vocab] is the largest tensor of a forward.
        let vocab = model.w_u.dims()[1];
        let normed = norm(&model.norm_final, &x, d)?;
        let normed = Tensor::<2>::from_data(TensorData::new(normed, [n, d]), device);
        let logits = normed.matmul(model.w_u.clone());
        let logits = match &model.b_u {
            Some(b) => logits + b.clone().unsqueeze::<2>(),
            None => logits,
        };
        cache.logits = Some(logits.reshape([batch, pos, vocab]));
    }
    Ok(cache)
}

/// The MLP's output `[n, d_model]` before its bias, and the bias, for the normed stream.
fn mlp_out(
    mlp: &Mlp,
    normed: Vec<f32>,
    n: usize,
) -> Result<(TensorData, Option<Vec<f32>>), ForwardError> {
    match mlp {
        Mlp::Gelu {
            w_in,
            b_in,
            w_out,
            b_out,
            approximate,
        } => {
            let d_mlp = w_in.dims()[1];
            let product_in = product(normed, n, w_in)?;
            let b_in = host(b_in.clone())?;
            let mut hidden = vec![0.0f32; n * d_mlp];
            let act = if *approximate { gelu_new } else { gelu_erf };
            hidden
                .par_chunks_mut(d_mlp)
                .zip(floats(&product_in)?.par_chunks(d_mlp))
                .for_each(|(out, row)| {
                    for ((o, v), b) in out.iter_mut().zip(row).zip(&b_in) {
                        *o = act(v + b);
                    }
                });
            drop(product_in);
            Ok((product(hidden, n, w_out)?, Some(host(b_out.clone())?)))
        }
        Mlp::SwiGlu { w_gate_up, w_down } => {
            let d_mlp = w_down.dims()[0];
            let gate_up = product(normed, n, w_gate_up)?;
            let mut act = vec![0.0f32; n * d_mlp];
            act.par_chunks_mut(d_mlp)
                .zip(floats(&gate_up)?.par_chunks(2 * d_mlp))
                .for_each(|(a, gu)| {
                    let (gate, up) = gu.split_at(d_mlp);
                    for ((a, g), u) in a.iter_mut().zip(gate).zip(up) {
                        *a = silu(*g) * u;
                    }
                });
            drop(gate_up);
            Ok((product(act, n, w_down)?, None))
        }
    }
}

/// Sizes of one attention layer's inputs.
struct Shape {
    batch: usize,
    pos: usize,
    h: usize,
    hkv: usize,
    dh: usize,
}

impl Shape {
    /// Width of a row of the fused query/key/value product.
    fn width(&self) -> usize {
        (self.h + 2 * self.hkv) * self.dh
    }
}

/// `crate::files::host_vec`, its error a [`ForwardError`].
pub(super) fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ForwardError> {
    crate::files::host_vec(t).map_err(|e| ForwardError::Readback(format!("{e:#}")))
}

/// `sign row` added to each row of `v` (`row` as wide as a row; `sign` 1 or -1, so the
/// sums are the plain sum and difference).
fn add_to_rows(v: &mut [f32], row: &[f32], sign: f32) {
    v.par_chunks_mut(row.len())
        .for_each(|r| r.iter_mut().zip(row).for_each(|(v, f)| *v += sign * f));
}

/// `a [rows, k] @ w [k, out]` through burn's matrix product (gemm on all cores); `a` moves
/// into burn and the result out of it without copies (read it with [`floats`]).
fn product(a: Vec<f32>, rows: usize, w: &Tensor<2>) -> Result<TensorData, ForwardError> {
    let k = w.dims()[0];
    let a = Tensor::<2>::from_data(TensorData::new(a, [rows, k]), &w.device());
    (a.matmul(w.clone()).try_into_data()).map_err(|e| ForwardError::Readback(format!("{e:?}")))
}

/// The values of `data` (f32), borrowed.
fn floats(data: &TensorData) -> Result<&[f32], ForwardError> {
    data.as_slice::<f32>()
        .map_err(|e| ForwardError::Readback(format!("{e:?}")))
}

/// `x += out + bias` row by row (`bias` `[d]`).
fn add_residual(x: &mut [f32], out: &[f32], bias: Option<&[f32]>, d: usize) {
    x.par_chunks_mut(d)
        .zip(out.par_chunks(d))
        .for_each(|(x, o)| match bias {
            Some(b) => {
                for ((x, o), b) in x.iter_mut().zip(o).zip(b) {
                    *x += *o + b;
                }
            }
            None => x.iter_mut().zip(o).for_each(|(x, o)| *x += o),
        });
}

/// The root mean square of `x` with `eps` added to the mean square: what an RMSNorm divides
/// by.
fn rms(x: &[f32], eps: f32) -> f32 {
    (lane_sum(x.iter().map(|v| v * v)) / x.len() as f32 + eps).sqrt()
}

/// Sum of a row in eight lanes (the order vectorises; the error stays that of f32 sums of
/// an eighth of the terms).
fn lane_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (i, v) in values.enumerate() {
        lanes[i % 8] += v;
    }
    lanes.iter().sum()
}

/// The norm of every row of `x` `[rows, d]`, as [`Norm::forward`] computes it.
fn norm(norm: &Norm, x: &[f32], d: usize) -> Result<Vec<f32>, ForwardError> {
    let mut out = vec![0.0f32; x.len()];
    match norm {
        Norm::Layer { w, b, eps } => {
            let (w, b, eps) = (host(w.clone())?, host(b.clone())?, *eps as f32);
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(o, x)| {
                    let mean = lane_sum(x.iter().copied()) / d as f32;
                    o.iter_mut().zip(x).for_each(|(o, x)| *o = x - mean);
                    let var = lane_sum(o.iter().map(|c| c * c)) / d as f32;
                    let s = (var + eps).sqrt();
                    for ((o, w), b) in o.iter_mut().zip(&w).zip(&b) {
                        *o = *o / s * w + b;
                    }
                });
        }
        Norm::Rms { w, eps } => {
            let (w, eps) = (host(w.clone())?, *eps as f32);
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(o, x)| {
                    let s = rms(x, eps);
                    for ((o, x), w) in o.iter_mut().zip(x).zip(&w) {
                        *o = x / s * w;
                    }
                });
        }
        Norm::Identity => out.copy_from_slice(x),
    }
    Ok(out)
}

/// The queries, keys and values `[batch pos, (h + 2 hkv) dh]` of their product `qkv`: the
/// bias added, each query and key head RMS-normed where `qk_norm` gives weights (query's,
/// key's, eps), and the queries and keys rotated (half-split layout, as `rotate`), each row
/// at its position.
fn prepared_qkv(
    qkv: &[f32],
    s: &Shape,
    bias: Option<&[f32]>,
    qk_norm: Option<(&[f32], &[f32], f32)>,
    rotary: Option<(&[f32], &[f32])>,
) -> Vec<f32> {
    let (width, dh) = (s.width(), s.dh);
    let half = dh / 2;
    let scratch = || vec![0.0f32; dh];
    let mut out = vec![0.0f32; qkv.len()];
    out.par_chunks_mut(width)
        .zip(qkv.par_chunks(width))
        .enumerate()
        .for_each_init(scratch, |head, (row, (r, src))| {
            r.copy_from_slice(src);
            if let Some(b) = bias {
                r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some((w_q, w_k, eps)) = qk_norm {
                for (i, x) in r[..(s.h + s.hkv) * dh].chunks_exact_mut(dh).enumerate() {
                    let w = if i < s.h { w_q } else { w_k };
                    let scale = rms(x, eps);
                    x.iter_mut().zip(w).for_each(|(x, w)| *x = *x / scale * w);
                }
            }
            if let Some((cos, sin)) = rotary {
                let t = row % s.pos;
                let (cos, sin) = (&cos[t * dh..(t + 1) * dh], &sin[t * dh..(t + 1) * dh]);
                for x in r[..(s.h + s.hkv) * dh].chunks_exact_mut(dh) {
                    head.copy_from_slice(x);
                    for j in 0..dh {
                        let rotated = if j < half {
                            -head[j + half]
                        } else {
                            head[j - half]
                        };
                        x[j] = head[j] * cos[j] + rotated * sin[j];
                    }
                }
            }
        });
    out
}

/// Query rows per block of causal attention: block `i` reads the keys up to its last row,
/// so the masked half of the scores is not computed.
const QUERY_BLOCK: usize = 64;

/// Causal attention of every window and head: raw `z` `[batch pos, h dh]`, and with
/// `want_pattern` the pattern `[batch, h, pos, pos]`. One task per window and head.
fn attention(qkv: &[f32], s: &Shape, want_pattern: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let (pos, h, dh, width) = (s.pos, s.h, s.dh, s.width());
    let group = h / s.hkv;
    let scale = (dh as f64).sqrt() as f32;
    // Per (window, head): z [pos, dh] and the pattern [pos, pos] (empty unless asked for).
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..s.batch * h)
        .into_par_iter()
        .map(|task| {
            let (window, head) = (task / h, task % h);
            let qkv = &qkv[window * pos * width..(window + 1) * pos * width];
            let kv = head / group;
            let q = &qkv[head * dh..];
            let k = &qkv[(h + kv) * dh..];
            let v = &qkv[(h + s.hkv + kv) * dh..];
            let mut zh = vec![0.0f32; pos * dh];
            let mut pattern = vec![0.0f32; if want_pattern { pos * pos } else { 0 }];
            let mut scores = vec![0.0f32; QUERY_BLOCK.min(pos) * pos];
            for t0 in (0..pos).step_by(QUERY_BLOCK) {
                let t1 = (t0 + QUERY_BLOCK).min(pos);
                let (rows, cols) = (t1 - t0, t1);
                let scores = &mut scores[..rows * cols];
                // scores[t, u] = q_t . k_u for the block's rows t and keys u < t1
                let q = &q[t0 * width..];
                gemm_into(rows, cols, dh, scores, false, q, (width, 1), k, (1, width));
                for (i, row) in scores.chunks_exact_mut(cols).enumerate() {
                    let t = t0 + i;
                    let (seen, future) = row.split_at_mut(t + 1);
                    seen.iter_mut().for_each(|v| *v /= scale);
                    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    seen.iter_mut().for_each(|v| *v = (*v - max).exp());
                    let sum = lane_sum(seen.iter().copied());
                    seen.iter_mut().for_each(|v| *v /= sum);
                    future.fill(0.0);
                    if want_pattern {
                        pattern[t * pos..t * pos + cols].copy_from_slice(row);
                    }
                }
                let zh = &mut zh[t0 * dh..t1 * dh];
                gemm_into(rows, dh, cols, zh, false, scores, (cols, 1), v, (width, 1));
            }
            (zh, pattern)
        })
        .collect();
    let mut z = vec![0.0f32; s.batch * pos * h * dh];
    z.par_chunks_mut(h * dh).enumerate().for_each(|(row, z)| {
        let (window, t) = (row / pos, row % pos);
        for (head, z) in z.chunks_exact_mut(dh).enumerate() {
            z.copy_from_slice(&per_head[window * h + head].0[t * dh..(t + 1) * dh]);
        }
    });
    let pattern = want_pattern.then(|| per_head.into_iter().flat_map(|(_, p)| p).collect());
    (z, pattern)
}

/// GPT-2's `gelu_new` as `super::gelu_new` computes it: `x sigmoid(2u)`.
fn gelu_new(x: f32) -> f32 {
    let two_c = (2.0 * (2.0f64 / std::f64::consts::PI).sqrt()) as f32;
    let two_u = (x + x * x * x * 0.044715) * two_c;
    x * (1.0 / ((-two_u).exp() + 1.0))
}

/// Exact GELU `x/2 (1 + erf(x / sqrt 2))` as burn-flex's `gelu` computes it (the same
/// expression, libm's `erff`), so the two paths agree bit for bit.
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

/// SiLU `x sigmoid(x)` as `super::silu_exp` computes it.
fn silu(x: f32) -> f32 {
    x * (1.0 / ((-x).exp() + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact GELU here and burn-flex's `gelu` (which the rest of burn's path uses) give
    /// the same bits over the range activations take, the tails and the signed zeros.
    #[test]
    fn exact_gelu_is_burns_bit_for_bit() {
        let mut xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 2.5e-4).collect();
        xs.extend([-30.0, -12.5, -1e-6, -0.0, 0.0, 1e-30, 7.25, 40.0]);
        let n = xs.len();
        let t = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &Device::flex());
        let burns = host(burn::tensor::activation::gelu(t)).unwrap();
        let mismatched: Vec<_> = xs
            .iter()
            .zip(&burns)
            .filter(|(x, b)| gelu_erf(**x).to_bits() != b.to_bits())
            .take(5)
            .collect();
        assert!(mismatched.is_empty(), "x, burn's: {mismatched:?}");
        // And both are GELU: Φ(1) = 0.841344746..., Φ(-2) = 0.022750131...
        assert!((f64::from(gelu_erf(1.0)) - 0.841_344_746).abs() < 1e-7);
        assert!((f64::from(gelu_erf(-2.0)) - -2.0 * 0.022_750_132).abs() < 1e-7);
    }
}
