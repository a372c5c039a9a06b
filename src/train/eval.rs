//! Trainer: CE-loss evaluation. Runs the LM clean, with hook_z of the hooked layer replaced
//! by the SAE reconstruction, and zero-ablated; total and per head (one head spliced).

use burn::prelude::*;

use crate::lm::{HeadSelection, HookRequest, Splice, Transformer, ZConvention, per_token_ce};
use crate::sae::BlockDiagSae;

pub use crate::run_log::{EvalMetrics, HeadEval};

fn mean_ce(
    model: &Transformer,
    tokens: &Tensor<2, Int>,
    conv: ZConvention,
    splice: Option<&Splice>,
) -> anyhow::Result<f64> {
    let hooks = HookRequest {
        logits: true,
        z_convention: conv,
        ..Default::default()
    };
    let logits = model
        .run(tokens.clone(), &hooks, splice)?
        .logits
        .ok_or_else(|| anyhow::anyhow!("no logits"))?;
    let ce = per_token_ce(logits, tokens.clone()).mean();
    Ok(crate::files::host_vec(ce)?[0] as f64)
}

/// Replaces hook_z `[batch, pos, n_heads, d_head]` by the SAE's reconstruction; with
/// `keep_bos` the first position is left as it was (the SAE never saw BOS in training).
pub fn sae_replace(sae: &BlockDiagSae, z: Tensor<4>, keep_bos: bool) -> Tensor<4> {
    let [b, t, h, d] = z.dims();
    let (sh, sd) = (sae.config.n_heads, sae.config.d_head);
    let flat = z.clone().reshape([b * t, sh, sd]);
    let recon = sae.reconstruct_raw(flat).reshape([b, t, h, d]);
    if keep_bos && t > 1 {
        let first = z.slice([0..b, 0..1, 0..h, 0..d]);
        let rest = recon.slice([0..b, 1..t, 0..h, 0..d]);
        Tensor::cat(vec![first, rest], 1)
    } else {
        recon
    }
}

fn score(clean: f64, sae: f64, zero: f64) -> f64 {
    (zero - sae) / (zero - clean)
}

/// CE loss clean / with the SAE / zero-ablated on `tokens` `[batch, pos]`, total and per head.
pub fn evaluate(
    model: &Transformer,
    sae: &BlockDiagSae,
    tokens: Tensor<2, Int>,
    layer: usize,
    conv: ZConvention,
    keep_bos: bool,
    step: usize,
) -> anyhow::Result<EvalMetrics> {
    let replace = |z: Tensor<4>| sae_replace(sae, z, keep_bos);
    let ce_clean = mean_ce(model, &tokens, conv, None)?;
    let with_sae = |heads| Splice {
        layer,
        heads,
        replace: &replace,
    };
    let ce_sae = mean_ce(model, &tokens, conv, Some(&with_sae(HeadSelection::All)))?;
    let ce_zero = mean_ce(
        model,
        &tokens,
        conv,
        Some(&Splice::zero_ablate(layer, HeadSelection::All)),
    )?;
    let mut per_head = Vec::new();
    for h in 0..model.config.n_heads {
        let s = mean_ce(model, &tokens, conv, Some(&with_sae(HeadSelection::One(h))))?;
        let z = mean_ce(
            model,
            &tokens,
            conv,
            Some(&Splice::zero_ablate(layer, HeadSelection::One(h))),
        )?;
        per_head.push(HeadEval {
            ce_sae: s,
            ce_zero: z,
            ce_score: score(ce_clean, s, z),
        });
    }
    Ok(EvalMetrics {
        step,
        ce_clean,
        ce_sae,
        ce_zero,
        ce_score: score(ce_clean, ce_sae, ce_zero),
        per_head,
    })
}
