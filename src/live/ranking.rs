//! [`FeatureRanking`]: which features matter for a text's predictions, estimated for every
//! feature at once from one forward and one backward pass (attribution patching): removing
//! a feature changes its block's `hook_z` (its head's, or every head's for a dense SAE) by
//! `-a_f(t) W_dec[f] / input_scale` at each position `t`, so to first order the text's
//! total next-token loss changes by `sum_t -a_f(t) (W_dec[f] / input_scale) . dL/dz(t)`.
//! [`super::feature_effect`] gives the exact change for one feature.

use std::cell::RefCell;

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{AnswerAsk, FeatureRanking, NamedToken, Objective, PromptsRanking, RankedFeature};
use crate::lm::{
    HeadSelection, HookRequest, LoadedModel, Splice, ZConvention, per_token_ce, per_token_ce_grad,
};
use crate::sae::BlockDiagSae;

/// hook_z of `windows` (of one length, in `z_convention`) and the gradient of their summed
/// next-token loss at it, `[B, T, H, d]` each: what the ranking needs of the LM (the same
/// for every SAE of the layer).
pub fn lm_gradient(
    loaded: &LoadedModel,
    layer: usize,
    z_convention: ZConvention,
    windows: &[Vec<u32>],
) -> anyhow::Result<[Tensor<4>; 2]> {
    let (lm, _) = objective_gradient(loaded, (layer, z_convention), windows, &Objective::Loss)?;
    Ok(lm)
}

/// The answer [`Objective`] of a text of `ids`: `answer` (and `against`) each one token as
/// `loaded`'s tokenizer reads it (a leading space is part of a token in most vocabularies:
/// " Mary"), predicted after position `at` (`None`: the last).
pub fn answer_objective(
    loaded: &LoadedModel,
    ids: &[u32],
    at: Option<usize>,
    answer: &str,
    against: Option<&str>,
) -> anyhow::Result<Objective> {
    let len = ids.len();
    let at = at.unwrap_or(len.saturating_sub(1));
    anyhow::ensure!(
        at < len,
        "position {at}: the text has {len} tokens (0 to {})",
        len.saturating_sub(1)
    );
    let vocab = loaded.transformer.config.d_vocab;
    let tokenizer = &loaded.tokenizer;
    let shown = |id: u32| crate::lm::token_text(tokenizer, id);
    let token = |text: &str| -> anyhow::Result<NamedToken> {
        anyhow::ensure!(
            !text.is_empty(),
            "no answer token given: type one (\" Mary\")"
        );
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        // The text as one token; else the vocabulary's own spelling of one ("ĠMary",
        // "<0xC6>"); else the token a viewer shows as this text (a byte token's "<0xC6>").
        let id = match enc.get_ids() {
            [id] => Some(*id),
            _ => tokenizer
                .token_to_id(text)
                .or_else(|| (0..vocab as u32).find(|&i| shown(i) == text)),
        };
        match id {
            Some(id) if (id as usize) < vocab => Ok(NamedToken {
                id,
                text: shown(id),
            }),
            Some(id) => anyhow::bail!("{text:?} is token {id}, past the model's {vocab}"),
            None => {
                let parts: Vec<String> = (enc.get_ids().iter())
                    .map(|&i| format!("{:?}", shown(i)))
                    .collect();
                anyhow::bail!(
                    "{text:?} is {} tokens here ({}): an answer must be one token",
                    parts.len(),
                    parts.join(", ")
                )
            }
        }
    };
    let answer = token(answer)?;
    let against = against.map(token).transpose()?;
    if let Some(b) = &against {
        anyhow::ensure!(
            b.id != answer.id,
            "the answer and the token against it are both {:?}",
            answer.text
        );
    }
    Ok(Objective::Answer {
        at,
        answer,
        against,
    })
}

/// [`answer_objective`] of what a viewer asked (`None`: the loss).
pub fn resolve_answer(
    loaded: &LoadedModel,
    ids: &[u32],
    asked: Option<&AnswerAsk>,
) -> anyhow::Result<Objective> {
    match asked {
        Some(a) => answer_objective(loaded, ids, a.at, &a.answer, a.against.as_deref()),
        None => Ok(Objective::Loss),
    }
}

/// [`lm_gradient`] of any [`Objective`] (an answer's over one window); the gradient is of
/// the objective's loss side (the loss, or the answer's value negated), so that the
/// estimates are always what the objective loses without a feature. With an answer, also
/// its value on the text (`[1]`, not read back).
fn objective_gradient(
    loaded: &LoadedModel,
    (layer, z_convention): (usize, ZConvention),
    windows: &[Vec<u32>],
    objective: &Objective,
) -> anyhow::Result<([Tensor<4>; 2], Option<Tensor<1>>)> {
    let plain = &loaded.transformer;
    let model = plain.with_autodiff();
    let len = windows.first().map_or(0, Vec::len);
    anyhow::ensure!(len >= 2, "a text of at least two tokens");
    anyhow::ensure!(
        windows.iter().all(|w| w.len() == len),
        "windows of different lengths"
    );
    // hook_z (in the SAE's convention) made a leaf of the graph, so its gradient is kept;
    // the splice gives it back unchanged.
    let leaf: RefCell<Option<Tensor<4>>> = RefCell::new(None);
    let keep = |z: Tensor<4>| {
        let z = z.detach().require_grad();
        *leaf.borrow_mut() = Some(z.clone());
        z
    };
    let splice = Splice {
        layer,
        heads: HeadSelection::All,
        replace: &keep,
    };
    let hooks = HookRequest {
        logits: true,
        z_convention,
        ..Default::default()
    };
    // The blocks before the layer need no gradient: they run without autodiff's tape (on
    // the CPU through its own forward), and the differentiated pass starts from there.
    let plain_tokens = plain.tokens(windows)?;
    let prefix = plain.prefix(plain_tokens.clone(), layer)?.autodiff();
    let logits = model
        .run_from(&prefix, &hooks, Some(&splice))?
        .logits
        .context("no logits")?;
    // The summed loss's gradient with respect to the logits, where the CPU gives it in one
    // pass (the softmax less the next token's one-hot): `sum(logits * g)` has the same
    // gradient, without burn's one-core log-softmax forward and backward.
    let mut answer_value = None;
    let loss = match objective {
        Objective::Loss => match per_token_ce_grad(&logits.clone().inner(), &plain_tokens) {
            Some(g) => (logits * g.autodiff()).sum(),
            None => per_token_ce(logits, model.tokens(windows)?).sum(),
        },
        Objective::Answer {
            at,
            answer,
            against,
        } => {
            let [b, t, v] = logits.dims();
            let ids = [Some(answer), against.as_ref()];
            anyhow::ensure!(
                b == 1 && *at < t && ids.iter().flatten().all(|x| (x.id as usize) < v),
                "an answer is of one text: position {at} of {t}, tokens below {v}"
            );
            let row = logits.slice([0..1, *at..*at + 1, 0..v]).reshape([1, v]);
            let logit =
                |row: Tensor<2, _>, id: u32| row.slice([0..1, id as usize..id as usize + 1]);
            let value = match against {
                Some(b) => logit(row.clone(), answer.id) - logit(row, b.id),
                None => logit(log_softmax(row, 1), answer.id),
            };
            answer_value = Some(value.clone().inner().reshape([1]));
            value.neg().sum()
        }
    };
    let grads = loss.backward();
    let z = leaf.take().context("the splice was not reached")?;
    let grad = z.grad(&grads).context("no gradient for hook_z")?; // [B, T, H, d]
    Ok(([z.inner(), grad], answer_value))
}

/// The estimates `[blocks, m]` and firing counts `[blocks, m]` of `sae`'s features over
/// `windows`, from their hook_z and its gradient ([`lm_gradient`]), not yet read back.
fn estimates(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    windows: &[Vec<u32>],
    [z, grad]: [Tensor<4>; 2],
) -> anyhow::Result<[Tensor<2>; 2]> {
    // Blocks: one per head, or one over every head for a dense SAE.
    let (h, d, m, _) = super::sae_sizes(sae, &loaded.transformer)?;
    let t = windows.len() * windows.first().map_or(0, Vec::len); // every position
    let feats = sae.forward(sae.scale_input(z.reshape([t, h, d]))).feats; // [H, T, m]
    let feats = super::unless_bos(sae, &loaded.transformer, windows, feats);
    // dL/dz . W_dec[f] / input_scale, [H, T, m].
    let scale = Tensor::<1>::from_data(
        TensorData::new(sae.input_scale.clone(), [h]),
        &feats.device(),
    );
    let along = grad
        .reshape([t, h, d])
        .swap_dims(0, 1)
        .matmul(sae.w_dec.clone().swap_dims(1, 2))
        / scale.reshape([h, 1, 1]);
    // What removing each feature adds to the loss, summed over positions: [H, m].
    let estimate = (feats.clone() * along).neg().sum_dim(1).reshape([h, m]);
    let fires = feats.greater_elem(0.0).float().sum_dim(1).reshape([h, m]);
    Ok([estimate, fires])
}

/// The estimates and firing counts over `windows`, not yet read back.
fn queue(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    windows: &[Vec<u32>],
    objective: &Objective,
) -> anyhow::Result<([Tensor<2>; 2], Option<Tensor<1>>)> {
    super::sae_sizes(sae, &loaded.transformer)?;
    let (lm, value) = objective_gradient(loaded, at, windows, objective)?;
    Ok((estimates(loaded, sae, windows, lm)?, value))
}

/// `features` largest estimate first (ties by head and feature).
fn by_estimate(mut features: Vec<RankedFeature>) -> Vec<RankedFeature> {
    features.sort_by(|a, b| {
        b.estimate
            .total_cmp(&a.estimate)
            .then((a.head, a.feature).cmp(&(b.head, b.feature)))
    });
    features
}

fn finish(
    ids: &[u32],
    m: usize,
    [estimate, fires]: [Vec<f32>; 2],
    objective: Objective,
) -> FeatureRanking {
    let features: Vec<RankedFeature> = (0..estimate.len())
        .filter(|&i| fires[i] > 0.0)
        .map(|i| RankedFeature {
            head: i / m,
            feature: i % m,
            fires: fires[i] as u32,
            estimate: estimate[i],
        })
        .collect();
    FeatureRanking {
        ids: ids.to_vec(),
        features: by_estimate(features),
        objective,
        value: None,
    }
}

/// The estimates for every feature that fires in `ids`, largest first: how much the text's
/// summed loss would rise without each.
pub fn rank_features(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    ids: &[u32],
) -> anyhow::Result<FeatureRanking> {
    rank_features_for(loaded, sae, layer, z_convention, ids, &Objective::Loss)
}

/// [`rank_features`] for any [`Objective`]: what it would lose without each feature.
pub fn rank_features_for(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    ids: &[u32],
    objective: &Objective,
) -> anyhow::Result<FeatureRanking> {
    super::blocking(rank_features_async(
        loaded,
        sae,
        (layer, z_convention),
        ids,
        objective,
    ))
}

/// Windows run together by [`rank_features_over`].
pub const WINDOWS_PER_PASS: usize = 4;

/// [`rank_features`] over many windows (of one length) at once: each feature's estimates
/// and firing counts summed over them (`ids` is empty). `progress(done, of)` after each
/// pass.
pub fn rank_features_over(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    windows: &[Vec<u32>],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<FeatureRanking> {
    rank_features_from(loaded, sae, windows, progress, &mut |_, chunk| {
        lm_gradient(loaded, layer, z_convention, chunk)
    })
}

/// The LM's part of a pass of [`rank_features_from`]: hook_z and its gradient
/// ([`lm_gradient`]) of the pass's windows, given the pass's index.
pub type LmPass<'a> = dyn FnMut(usize, &[Vec<u32>]) -> anyhow::Result<[Tensor<4>; 2]> + 'a;

/// [`rank_features_over`] with the LM's part of each pass of [`WINDOWS_PER_PASS`] windows
/// from `lm(pass, its windows)` ([`lm_gradient`]'s, or kept ones).
pub fn rank_features_from(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    windows: &[Vec<u32>],
    progress: &mut dyn FnMut(usize, usize),
    lm: &mut LmPass,
) -> anyhow::Result<FeatureRanking> {
    let (h, _, m, _) = super::sae_sizes(sae, &loaded.transformer)?;
    let (mut estimate, mut fires) = (vec![0.0f64; h * m], vec![0.0f64; h * m]);
    for (i, chunk) in windows.chunks(WINDOWS_PER_PASS).enumerate() {
        let [e, f] = estimates(loaded, sae, chunk, lm(i, chunk)?)?;
        let (e, f) = (crate::files::host_vec(e)?, crate::files::host_vec(f)?);
        for (sum, x) in estimate.iter_mut().zip(e).chain(fires.iter_mut().zip(f)) {
            *sum += x as f64;
        }
        progress(
            (i * WINDOWS_PER_PASS + chunk.len()).min(windows.len()),
            windows.len(),
        );
    }
    let host = [estimate, fires].map(|v| v.into_iter().map(|x| x as f32).collect());
    Ok(finish(&[], m, host, Objective::Loss))
}

/// [`rank_features_for`] with the read-back awaited (WebGPU).
pub async fn rank_features_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    ids: &[u32],
    objective: &Objective,
) -> anyhow::Result<FeatureRanking> {
    let ([estimate, fires], value) = queue(loaded, sae, at, &[ids.to_vec()], objective)?;
    let host = [
        super::read_async(&estimate).await?,
        super::read_async(&fires).await?,
    ];
    let mut ranking = finish(ids, sae.config.features_per_head, host, objective.clone());
    if let Some(v) = value {
        ranking.value = super::read_async(&v).await?.first().copied();
    }
    Ok(ranking)
}

/// Each prompt's tokens and [`Objective`] (its answer resolved by the model's tokenizer, as
/// [`resolve_answer`]); an error names the prompt (`lines`' names).
pub fn resolve_prompts(
    loaded: &LoadedModel,
    lines: &[(String, super::PromptLine)],
) -> anyhow::Result<Vec<(Vec<u32>, Objective)>> {
    let resolve = |p: &super::PromptLine| -> anyhow::Result<(Vec<u32>, Objective)> {
        let ids = super::text_ids(loaded, &p.text)?;
        let objective = resolve_answer(loaded, &ids, Some(&p.ask))?;
        Ok((ids, objective))
    };
    (lines.iter())
        .map(|(name, p)| resolve(p).with_context(|| name.clone()))
        .collect()
}

/// [`rank_on_prompts`] over a prompt set's `lines` as they are (Your text's prompt set, in
/// the app and the page), each resolved first ([`resolve_prompts`]; errors name "prompt 1",
/// "prompt 2", ... in the order given).
pub fn rank_prompt_lines(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    lines: &[super::PromptLine],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsRanking> {
    super::blocking(rank_prompt_lines_async(loaded, sae, at, lines, progress))
}

/// [`rank_prompt_lines`], awaiting its read-backs (the browser).
pub async fn rank_prompt_lines_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    lines: &[super::PromptLine],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsRanking> {
    let prompts = resolve_prompt_lines(loaded, lines)?;
    rank_on_prompts_async(loaded, sae, at, &prompts, progress).await
}

/// [`resolve_prompts`] of a prompt set's lines as they are, named "prompt 1", "prompt 2",
/// ... in the order given.
fn resolve_prompt_lines(
    loaded: &LoadedModel,
    lines: &[super::PromptLine],
) -> anyhow::Result<Vec<(Vec<u32>, Objective)>> {
    resolve_prompts(loaded, &super::named_prompts(lines.iter().cloned()))
}

/// [`exact_on_prompts`] over a prompt set's lines as they are, ranked by `ranked` (their
/// [`rank_prompt_lines`]): Your text's prompt set, in the app and the page.
pub fn exact_prompt_lines(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    (lines, ranked): (&[super::PromptLine], &PromptsRanking),
    features: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<(usize, usize, f32)>> {
    super::blocking(exact_prompt_lines_async(
        loaded,
        sae,
        at,
        (lines, ranked),
        features,
        progress,
    ))
}

/// [`exact_prompt_lines`], awaiting its read-backs (the browser).
pub async fn exact_prompt_lines_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    (lines, ranked): (&[super::PromptLine], &PromptsRanking),
    features: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<(usize, usize, f32)>> {
    let prompts = resolve_prompt_lines(loaded, lines)?;
    exact_on_prompts_async(loaded, sae, at, (&prompts, ranked), features, progress).await
}

/// [`rank_features_for`] over `prompts`, each a text's tokens and its objective: each
/// feature's estimates averaged over the prompts, and the prompts it fires in.
/// `progress(done, of)` after each prompt.
pub fn rank_on_prompts(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    prompts: &[(Vec<u32>, Objective)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsRanking> {
    super::blocking(rank_on_prompts_async(loaded, sae, at, prompts, progress))
}

/// [`rank_on_prompts`], awaiting its read-backs (the browser, where WebGPU has no blocking
/// read-back).
pub async fn rank_on_prompts_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    prompts: &[(Vec<u32>, Objective)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsRanking> {
    anyhow::ensure!(!prompts.is_empty(), "no prompts to rank over");
    let (h, _, m, _) = super::sae_sizes(sae, &loaded.transformer)?;
    let (mut sum, mut prompts_fired) = (vec![0.0f64; h * m], vec![0u32; h * m]);
    let (mut objectives, mut fired) = (Vec::new(), Vec::new());
    for (i, (ids, objective)) in prompts.iter().enumerate() {
        let r = rank_features_async(loaded, sae, at, ids, objective).await?;
        for f in &r.features {
            sum[f.head * m + f.feature] += f.estimate as f64;
            prompts_fired[f.head * m + f.feature] += 1;
        }
        let mut here: Vec<(usize, usize)> =
            r.features.iter().map(|f| (f.head, f.feature)).collect();
        here.sort_unstable();
        fired.push(here);
        objectives.push((objective.clone(), r.value.unwrap_or(f32::NAN)));
        progress(i + 1, prompts.len());
    }
    let n = prompts.len() as f64;
    let features: Vec<RankedFeature> = (0..h * m)
        .filter(|&i| prompts_fired[i] > 0)
        .map(|i| RankedFeature {
            head: i / m,
            feature: i % m,
            fires: prompts_fired[i],
            estimate: (sum[i] / n) as f32,
        })
        .collect();
    Ok(PromptsRanking {
        objectives,
        features: by_estimate(features),
        exact: Vec::new(),
        fired,
    })
}

/// What removing each of `features` (`(head, feature)`) takes from each prompt's objective,
/// exactly ([`super::feature_effect_on`]: the model run clean and without it), averaged over
/// `prompts` (zero where it does not fire: `ranked`, their [`rank_on_prompts`], says where
/// it does, and a feature that does not fire changes nothing, bit for bit).
/// `progress(done, of)` after each feature.
pub fn exact_on_prompts(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    (prompts, ranked): (&[(Vec<u32>, Objective)], &PromptsRanking),
    features: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<(usize, usize, f32)>> {
    super::blocking(exact_on_prompts_async(
        loaded,
        sae,
        at,
        (prompts, ranked),
        features,
        progress,
    ))
}

/// [`exact_on_prompts`], awaiting its read-backs (the browser).
pub async fn exact_on_prompts_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    at: (usize, ZConvention),
    (prompts, ranked): (&[(Vec<u32>, Objective)], &PromptsRanking),
    features: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<(usize, usize, f32)>> {
    anyhow::ensure!(
        ranked.fired.len() == prompts.len(),
        "a ranking of {} prompts for {}",
        ranked.fired.len(),
        prompts.len()
    );
    let mut means = Vec::with_capacity(features.len());
    for (i, &(head, feature)) in features.iter().enumerate() {
        let mut sum = 0.0f64;
        let fires = |p: usize| ranked.fired[p].binary_search(&(head, feature)).is_ok();
        let firing = prompts.iter().enumerate().filter(|&(p, _)| fires(p));
        for (_, (ids, objective)) in firing {
            let removed = ((head, feature), 0.0);
            let e = super::feature_effect_on_async(loaded, sae, at, ids, removed, Some(objective))
                .await?;
            let (_, change) = e.objective.context("an effect without its objective")?;
            sum += change.helps() as f64;
        }
        means.push((head, feature, (sum / prompts.len().max(1) as f64) as f32));
        progress(i + 1, features.len());
    }
    Ok(means)
}
