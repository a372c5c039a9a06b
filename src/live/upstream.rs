//! [`Upstream`]: one source position's part of a feature's DFA, by what wrote the residual
//! stream there. The feature reads `v_s = norm(x_s) W_V (+ biases)` at the source; with the
//! norm's scale at `s` held at its value the norm is linear in `x_s`, and `x_s` is the sum
//! of the embeddings and every earlier head's and MLP's output, so each gives a part:
//! `A[target, s] * (c_s . w_s)`, `w_s` the feature's encoder column taken back through
//! `W_V`, the norm's weight and scale (and its centring, for LayerNorm). One forward pass
//! (to the hooked layer, everything in the raw z convention) and a few products on the
//! device; the rest on the host.

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

use super::{
    Analysed, LiveAnalysis, PromptLine, PromptSplit, PromptsSpread, SourceRule, SpreadAsk, Through,
    Upstream, UpstreamAsk, UpstreamLine, Writer, WrittenBy,
};
use crate::dashboard::dfa::dfa_by_source;
use crate::dashboard::format::FeatureUpstream;
use crate::lm::transformer::{Norm, Positions};
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

/// The DFA of `feature` `(head, feature)` at `target` from `source` (`at`), in the hook's
/// z convention, split by the writers of the residual stream entering `layer` at `source`
/// ([`upstream_through`] with no steps further up).
pub fn upstream_of(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    ids: &[u32],
    feature: (usize, usize),
    at: (usize, usize),
) -> anyhow::Result<Upstream> {
    upstream_through(loaded, sae, hook, ids, &UpstreamAsk::new(feature, at))
}

/// [`upstream_through_async`], blocking on its read-backs (the desktop and the CLI).
pub fn upstream_through(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    ids: &[u32],
    ask: &UpstreamAsk,
) -> anyhow::Result<Upstream> {
    super::blocking(upstream_through_async(loaded, sae, hook, ids, ask))
}

/// [`upstream_of`] taken further up through earlier heads: each step of `ask.through`
/// takes one head's part of the split before it, read from one position, and splits it by
/// the writers of the residual stream entering that head's layer at that position (the
/// head's value there, `norm(x) W_V`, with the norm's scale held, as at the source).
pub async fn upstream_through_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    ids: &[u32],
    ask: &UpstreamAsk,
) -> anyhow::Result<Upstream> {
    let cache = run_for_upstream(loaded, hook.0, ids)?;
    upstream_from_async(loaded, sae, hook, (ids, &cache), ask).await
}

/// The forward pass a split takes on `ids`: to `layer`, in the raw z convention, with every
/// earlier layer's hook_z, pattern, values and residual stream, and the layer's hook_z,
/// pattern and values (what [`LiveAnalysis::of_raw_async`] reads too).
fn run_for_upstream(
    loaded: &LoadedModel,
    layer: usize,
    ids: &[u32],
) -> anyhow::Result<crate::lm::HookCache> {
    let model = &loaded.transformer;
    anyhow::ensure!(
        layer < model.config.n_layers,
        "layer {layer}: the model has {} layers",
        model.config.n_layers
    );
    let hooks = HookRequest {
        hook_z: (0..=layer).collect(),
        pattern: (0..=layer).collect(),
        values: (0..=layer).collect(),
        resid_post: (0..layer).collect(),
        z_convention: ZConvention::Raw,
        ..Default::default()
    };
    let tokens = model.tokens(&[ids.to_vec()])?;
    Ok(model.run(tokens, &hooks, None)?)
}

/// [`upstream_through_async`] from its forward pass on `ids`, already run
/// ([`run_for_upstream`]).
async fn upstream_from_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    (layer, z_convention): (usize, ZConvention),
    (ids, cache): (&[u32], &crate::lm::HookCache),
    ask: &UpstreamAsk,
) -> anyhow::Result<Upstream> {
    let ((head, feature), (target, source)) = (ask.feature, ask.at);
    let through = ask.through.as_slice();
    use super::read_async as host;
    let model = &loaded.transformer;
    let cfg = &model.config;
    let (blocks, width) = super::feature_of(sae, model, (head, feature))?;
    let (h, dh, dm) = (cfg.n_heads, cfg.d_head, cfg.d_model);
    let (per_block, t) = (h / blocks, ids.len());
    anyhow::ensure!(
        layer < cfg.n_layers,
        "layer {layer}: the model has {} layers",
        cfg.n_layers
    );
    anyhow::ensure!(
        target < t && source <= target,
        "position {target}, source {source}: the text has {t} tokens, and a source is at or \
         before the position it is read from"
    );
    let (mut below, mut at) = (layer, source);
    for step in through {
        anyhow::ensure!(
            step.layer < below && step.head < h && step.from <= at,
            "through L{} h{} from {}: a step goes through a head of an earlier layer than the \
             one before it (layer {below}; the model has {h} heads), reading from a position \
             at or before the one before it ({at})",
            step.layer,
            step.head,
            step.from
        );
        (below, at) = (step.layer, step.from);
    }
    let device = model.device().clone();
    let block = &model.blocks[layer];
    let heads = head * per_block..(head + 1) * per_block;

    let f32s = |x: Tensor<1>| x.cast(DType::F32);
    // The residual stream entering layer `l` at position `p`.
    let entering = |l: usize, p: usize| -> anyhow::Result<Tensor<1>> {
        Ok(match l {
            0 => (model.embed_parts(ids[p], p).into_iter())
                .reduce(|a, b| a + b)
                .context("no embedding")?,
            _ => {
                let post = cache.resid_post.get(&(l - 1)).context("no residual")?;
                post.clone().slice([0..1, p..p + 1, 0..dm]).reshape([dm])
            }
        })
    };
    let w_v_of = |l: usize, qh: usize| w_v_of(model, l, qh);
    // That `W_V` times `x` [d_head]: what reading `x` of the head's value reads of the
    // normed stream, [d_model].
    let through_w_v = |l: usize, qh: usize, x: &[f32]| {
        let x = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [dh, 1]), &device);
        w_v_of(l, qh).matmul(x).reshape([dm])
    };
    let constant = |l: usize, qh: usize| value_constant(model, l, qh);

    // The feature's encoder column (its block's rows), and the layer's rows at the source.
    let enc = host(&f32s(
        sae.w_enc
            .clone()
            .slice([head..head + 1, 0..width, feature..feature + 1])
            .reshape([width]),
    ))
    .await?;
    let scale = sae.input_scale[head];
    let pattern_l = cache.pattern.get(&layer).context("no pattern")?;
    let a_target = host(
        &pattern_l
            .clone()
            .slice([0..1, heads.clone(), target..target + 1, source..source + 1])
            .reshape([per_block]),
    )
    .await?;
    let values_l = cache.values.get(&layer).context("no values")?;
    let v_source = host(
        &values_l
            .clone()
            .slice([0..1, source..source + 1, heads.clone(), 0..dh])
            .reshape([per_block * dh]),
    )
    .await?;
    let fold = match &block.attn.z_fold {
        None => None,
        Some(f) => Some(
            host(&f32s(
                f.clone()
                    .slice([heads.clone(), 0..dh])
                    .reshape([per_block * dh]),
            ))
            .await?,
        ),
    };

    // w_s: what the feature reads of the residual stream at the source, through W_V (each
    // model head of the block its kv head's), then the norm with its scale held.
    let e: Vec<f32> = enc.iter().map(|x| x * scale).collect();
    let mut w_v = Vec::with_capacity(per_block);
    for (g, mh) in heads.clone().enumerate() {
        w_v.push(through_w_v(layer, mh, &e[g * dh..(g + 1) * dh]));
    }
    let w_v = host(&Tensor::cat(w_v, 0)).await?;
    let mut w_s = vec![0f32; dm];
    for (g, a) in a_target.iter().enumerate() {
        let row = &w_v[g * dm..(g + 1) * dm];
        w_s.iter_mut().zip(row).for_each(|(w, r)| *w += a * r);
    }
    let resid = host(&entering(layer, source)?).await?;
    let mut w_s = held(&block.norm1, &resid, w_s).await?;

    // The DFA from the source (`dashboard::dfa`'s formula, in the hook's convention: the
    // raw value less the fold for TransformerLens'), and the part of it the value's
    // constant gives, which nothing upstream writes: all of it in the raw convention, none
    // where TransformerLens folds it, the norm's bias's part for a shortformer model (whose
    // norms TransformerLens does not fold) and all of it for a model without a fold.
    let one_source = |a: f32, g: usize, v: &[f32]| {
        dfa_by_source(&[a], |_| v, &enc[g * dh..(g + 1) * dh], scale, 0)[0]
    };
    let kept = constant_kept(model, layer, z_convention);
    let mut dfa = 0f32;
    let mut value_bias = None;
    for (g, (&a, mh)) in a_target.iter().zip(heads.clone()).enumerate() {
        let mut v = v_source[g * dh..(g + 1) * dh].to_vec();
        let unfolded = match (z_convention, &fold) {
            (ZConvention::TransformerLens, Some(f)) => &f[g * dh..(g + 1) * dh],
            _ => &[][..],
        };
        v.iter_mut().zip(unfolded).for_each(|(x, b)| *x -= b);
        dfa += one_source(a, g, &v);
        if let Some(c) = constant(layer, mh).filter(|_| kept) {
            let mut c = host(&c).await?;
            c.iter_mut().zip(unfolded).for_each(|(x, b)| *x -= b);
            *value_bias.get_or_insert(0f32) += one_source(a, g, &c);
        }
    }
    let mut bias = value_bias;

    // Each step through an earlier head: its part read from `from` at the position before
    // (its pattern there times its raw value's read through `W_O`), and what that value
    // reads of the stream at `from` (through its `W_V` and the norm held there). The steps
    // asked for, then, following, through the strongest head of each split while its term
    // is not negligible.
    let (mut split_layer, mut split_at) = (layer, source);
    let (mut steps, mut terms) = (through.to_vec(), vec![dfa]);
    let parts = loop {
        let step = match steps.get(terms.len() - 1) {
            Some(&step) => step,
            None => {
                let mut parts = split(model, cache, ids, (split_layer, split_at), &w_s).await?;
                if let Some(value) = bias {
                    parts.push(WrittenBy {
                        writer: Writer::ValueBias,
                        value,
                        by_source: Vec::new(),
                    });
                }
                match super::strongest_step(&parts, terms[0]).filter(|_| ask.follow) {
                    Some(step) => {
                        steps.push(step);
                        step
                    }
                    None => break parts,
                }
            }
        };
        let Through {
            layer: l,
            head: qh,
            from,
        } = step;
        let attn = &model.blocks[l].attn;
        let w_t = Tensor::<2>::from_data(TensorData::new(w_s.clone(), [dm, 1]), &device);
        let u = attn.w_o.clone().slice([qh * dh..(qh + 1) * dh, 0..dm]);
        let u = host(&u.cast(DType::F32).matmul(w_t).reshape([dh])).await?;
        let pattern = cache.pattern.get(&l).context("no pattern")?;
        let a = pattern
            .clone()
            .slice([0..1, qh..qh + 1, split_at..split_at + 1, from..from + 1]);
        let a = host(&a.reshape([1])).await?[0];
        let values = cache.values.get(&l).context("no values")?;
        let v = values
            .clone()
            .slice([0..1, from..from + 1, qh..qh + 1, 0..dh]);
        let v = host(&v.reshape([dh])).await?;
        let dot = |x: &[f32]| x.iter().zip(&u).map(|(p, q)| p * q).sum::<f32>();
        dfa = a * dot(&v);
        bias = match constant(l, qh) {
            Some(c) => Some(a * dot(&host(&c).await?)),
            None => None,
        };
        let au: Vec<f32> = u.iter().map(|x| a * x).collect();
        let w = host(&through_w_v(l, qh, &au)).await?;
        let resid = host(&entering(l, from)?).await?;
        w_s = held(&model.blocks[l].norm1, &resid, w).await?;
        (split_layer, split_at) = (l, from);
        terms.push(dfa);
    };
    Ok(Upstream {
        head,
        feature,
        target,
        source,
        dfa,
        parts,
        followed: steps.len() - through.len(),
        through: steps,
        terms,
    })
}

/// `ask.feature`'s DFA taken apart upstream on each prompt of `lines` (each named for the
/// errors): read at the line's position (the last by default), from the source
/// `ask.from` chooses, followed up if `ask.follow`; then each writer's parts over the
/// prompts, or the paths followed. `progress(done, of)` after each prompt. Blocks on
/// [`upstream_on_prompts_async`].
pub fn upstream_on_prompts(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    lines: &[(String, UpstreamLine)],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    super::blocking(upstream_on_prompts_async(
        loaded, sae, hook, lines, ask, progress,
    ))
}

/// [`upstream_on_prompts`] over a prompt set's lines as they are (Your text's prompt set),
/// named "prompt 1", "prompt 2", ... in the order given.
pub fn upstream_on_prompt_lines(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    lines: &[PromptLine],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    super::blocking(upstream_on_prompt_lines_async(
        loaded, sae, hook, lines, ask, progress,
    ))
}

/// [`upstream_on_prompt_lines`], awaiting its read-backs (the browser).
pub async fn upstream_on_prompt_lines_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    lines: &[PromptLine],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    let named = super::named_prompts(lines.iter().map(UpstreamLine::from));
    upstream_on_prompts_async(loaded, sae, hook, &named, ask, progress).await
}

/// [`upstream_on_prompts`], awaiting its read-backs (the browser).
pub async fn upstream_on_prompts_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    lines: &[(String, UpstreamLine)],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    anyhow::ensure!(!lines.is_empty(), "no prompts to take apart on");
    let mut prompts = Vec::with_capacity(lines.len());
    for (i, (name, line)) in lines.iter().enumerate() {
        // One forward pass a prompt: the analysis that chooses the source reads the split's.
        let ids = super::text_ids(loaded, &line.text)?;
        let (a, cache) = analysed_for_upstream(loaded, sae, hook, &ids).await?;
        let at = (line.at, line.answer.as_deref());
        let mut split = split_on_async(loaded, sae, hook, (&a, &cache), name, at, ask).await?;
        split.text = line.text.clone();
        prompts.push(split);
        progress(i + 1, lines.len());
    }
    spread_over(prompts, ask.follow)
}

/// [`upstream_on_examples_async`], blocking on its read-backs (the desktop and the CLI).
pub fn upstream_on_examples(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    examples: &[(Vec<u32>, usize)],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    super::blocking(upstream_on_examples_async(
        loaded, sae, hook, examples, ask, progress,
    ))
}

/// `ask.feature`'s DFA taken apart upstream on each of its top examples, `(window,
/// target)` with the window's token ids as a dashboard holds them (BOS first), as
/// [`upstream_on_prompts`] takes it apart on a prompt set: what a dashboard file built
/// with `--upstream` holds for the feature, for a file built without it. The examples of
/// one window share its forward pass. Each is named "top example N" in the order given,
/// its text the window up to its target (BOS left out).
pub async fn upstream_on_examples_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    examples: &[(Vec<u32>, usize)],
    ask: &SpreadAsk,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PromptsSpread> {
    anyhow::ensure!(!examples.is_empty(), "no top examples to take apart");
    anyhow::ensure!(
        ask.from != SourceRule::Answer,
        "a top example has no answer token: take apart its largest or strongest source"
    );
    let bos = loaded.transformer.config.bos_token_id;
    let mut splits: Vec<Option<PromptSplit>> = vec![None; examples.len()];
    let mut done = 0;
    for (i, (ids, _)) in examples.iter().enumerate() {
        if splits[i].is_some() {
            continue;
        }
        let (a, cache) = analysed_for_upstream(loaded, sae, hook, ids).await?;
        for (j, (_, target)) in (examples.iter().enumerate().skip(i)).filter(|x| &x.1.0 == ids) {
            let name = format!("top example {}", j + 1);
            let at = (Some(*target), None);
            let mut split = split_on_async(loaded, sae, hook, (&a, &cache), &name, at, ask).await?;
            let strings = &a.tokens().strings;
            split.text = (strings.iter().enumerate().take(target + 1))
                .filter(|&(q, _)| !(q == 0 && bos == Some(ids[0])))
                .map(|(_, x)| x.as_str())
                .collect();
            splits[j] = Some(split);
            done += 1;
            progress(done, examples.len());
        }
    }
    spread_over(splits.into_iter().flatten().collect(), ask.follow)
}

/// [`examples_split_async`], blocking on its read-backs (the desktop).
pub fn examples_split(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    examples: &[(Vec<u32>, usize)],
    feature: (usize, usize),
) -> anyhow::Result<FeatureUpstream> {
    super::blocking(examples_split_async(loaded, sae, hook, examples, feature))
}

/// What wrote what `feature` reads over its top examples, `(window, target)` each: each
/// one's DFA from its largest source split upstream ([`upstream_on_examples_async`]) and
/// the writers listed as a dashboard file built with `--upstream` lists them (the viewers'
/// "Take its top examples apart").
pub async fn examples_split_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    examples: &[(Vec<u32>, usize)],
    feature: (usize, usize),
) -> anyhow::Result<FeatureUpstream> {
    let ask = SpreadAsk {
        feature,
        from: SourceRule::Largest,
        follow: false,
    };
    let spread =
        upstream_on_examples_async(loaded, sae, hook, examples, &ask, &mut |_, _| {}).await?;
    Ok(FeatureUpstream::of_spread(&spread))
}

/// The forward pass a split takes on `ids` ([`run_for_upstream`]) and the analysis of the
/// text from it, which chooses the source.
async fn analysed_for_upstream(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    ids: &[u32],
) -> anyhow::Result<(LiveAnalysis, crate::lm::HookCache)> {
    let cache = run_for_upstream(loaded, hook.0, ids)?;
    let a = LiveAnalysis::of_raw_async(loaded, sae, hook, ids.to_vec(), &cache).await?;
    Ok((a, cache))
}

/// One prompt's split (its text left empty) on its analysis `a` and forward pass `cache`:
/// read at `at` (the last position when `None`), from the source `ask.from` chooses
/// (`answer`: the answer's token, for [`SourceRule::Answer`]); `name` is for the errors.
async fn split_on_async(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    hook: (usize, ZConvention),
    (a, cache): (&LiveAnalysis, &crate::lm::HookCache),
    name: &str,
    (at, answer): (Option<usize>, Option<&str>),
    ask: &SpreadAsk,
) -> anyhow::Result<PromptSplit> {
    let (head, feature) = ask.feature;
    let t = a.tokens();
    let p = at.unwrap_or(t.len().saturating_sub(1));
    anyhow::ensure!(
        p < t.len() && head < t.n_heads && feature < t.features_per_head,
        "{name}: position {p}, head {head}, feature {feature}: out of range ({} tokens, {} \
         heads, {} features)",
        t.len(),
        t.n_heads,
        t.features_per_head
    );
    anyhow::ensure!(
        !t.skipped(p),
        "{name}: position {p} is {}",
        super::BOS_SKIPPED
    );
    let dfa = a.attribution(head, feature, p).dfa;
    let s = match ask.from {
        SourceRule::Strongest => super::strongest_source(&dfa),
        SourceRule::Largest => super::dfa_argmax(&dfa).map_or(0, |x| x.0),
        SourceRule::Answer => {
            let answer = answer.with_context(|| {
                format!("{name}: no \"answer\", and the source asked is the answer's token")
            })?;
            (t.strings.iter().take(p + 1))
                .position(|x| x == answer)
                .with_context(|| format!("{name}: no token {answer:?} at or before position {p}"))?
        }
    };
    let split = UpstreamAsk {
        follow: ask.follow,
        ..UpstreamAsk::new(ask.feature, (p, s))
    };
    let upstream = upstream_from_async(loaded, sae, hook, (&t.ids, cache), &split).await?;
    Ok(PromptSplit {
        text: String::new(),
        activation: t.activation(head, feature, p),
        source_token: t.strings[s].clone(),
        upstream,
    })
}

/// Each writer's parts over the prompts' splits, or the paths followed.
fn spread_over(prompts: Vec<PromptSplit>, follow: bool) -> anyhow::Result<PromptsSpread> {
    let of_each: Vec<&Upstream> = prompts.iter().map(|s| &s.upstream).collect();
    let (writers, paths) = match follow {
        true => (Vec::new(), super::paths_of(&of_each)),
        false => (super::spread_of(&of_each)?, Vec::new()),
    };
    Ok(PromptsSpread {
        prompts,
        writers,
        paths,
    })
}

/// Where query head `qh`'s value columns (its kv head's) start in a layer's `w_qkv`.
fn value_column(cfg: &crate::lm::TransformerConfig, qh: usize) -> usize {
    let (h, hkv) = (cfg.n_heads, cfg.n_kv_heads);
    (h + hkv + qh / (h / hkv)) * cfg.d_head
}

/// Query head `qh`'s columns of layer `l`'s `W_V` (its kv head's), `[d_model, d_head]`.
pub(crate) fn w_v_of(model: &crate::lm::Transformer, l: usize, qh: usize) -> Tensor<2> {
    let (dh, dm) = (model.config.d_head, model.config.d_model);
    let col = value_column(&model.config, qh);
    let w = model.blocks[l].attn.w_qkv.clone();
    w.slice([0..dm, col..col + dh]).cast(DType::F32)
}

/// The constant in query head `qh`'s value of layer `l`, which nothing upstream writes:
/// `norm.b W_V + b_V` (none in a model with neither), `[d_head]`.
pub(crate) fn value_constant(
    model: &crate::lm::Transformer,
    l: usize,
    qh: usize,
) -> Option<Tensor<1>> {
    let (dh, dm) = (model.config.d_head, model.config.d_model);
    let block = &model.blocks[l];
    let of_norm = match &block.norm1 {
        Norm::Layer { b, .. } => {
            let b = b.clone().cast(DType::F32).reshape([1, dm]);
            Some(b.matmul(w_v_of(model, l, qh)).reshape([dh]))
        }
        _ => None,
    };
    let col = value_column(&model.config, qh);
    let b_v = (block.attn.b_qkv.as_ref()).map(|b| b.clone().narrow(0, col, dh).cast(DType::F32));
    match (of_norm, b_v) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// Whether the DFA in `z_convention` at `layer` holds the value's constant
/// ([`value_constant`], less the fold TransformerLens' hook_z takes off where it does):
/// all of it in the raw convention, none where TransformerLens folds it, the norm's bias's
/// part for a shortformer model (whose norms TransformerLens does not fold) and all of it
/// for a model without a fold.
pub(crate) fn constant_kept(
    model: &crate::lm::Transformer,
    layer: usize,
    z_convention: ZConvention,
) -> bool {
    let block = &model.blocks[layer];
    let shortformer_ln = matches!(model.positions, Positions::Shortformer(_))
        && matches!(block.norm1, Norm::Layer { .. });
    match z_convention {
        ZConvention::Raw => true,
        ZConvention::TransformerLens => block.attn.z_fold.is_none() || shortformer_ln,
    }
}

/// `w` (a direction in the normed stream) taken back through `norm` with its scale held at
/// its value for the stream `resid`: the direction in the stream itself that reads the same.
async fn held(norm: &Norm, resid: &[f32], mut w: Vec<f32>) -> anyhow::Result<Vec<f32>> {
    let gamma = match norm {
        Norm::Layer { w, .. } | Norm::Rms { w, .. } => {
            Some(super::read_async(&w.clone().cast(DType::F32)).await?)
        }
        Norm::Identity => None,
    };
    back_through_norm(norm, gamma.as_deref(), norm_scale(norm, resid), &mut w);
    Ok(w)
}

/// The scale `norm` divides the stream `x` by, which a split holds at its value.
pub(crate) fn norm_scale(norm: &Norm, x: &[f32]) -> f32 {
    let dm = x.len() as f32;
    match norm {
        Norm::Layer { eps, .. } => {
            let mean = x.iter().sum::<f32>() / dm;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / dm;
            (var + *eps as f32).sqrt()
        }
        Norm::Rms { eps, .. } => {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / dm;
            (ms + *eps as f32).sqrt()
        }
        Norm::Identity => 1.0,
    }
}

/// `w` (a direction in the normed stream) taken back through `norm` with its scale held at
/// `sigma`: times its weight `gamma` (read back; none without a norm) over `sigma`, then
/// centred for LayerNorm.
pub(crate) fn back_through_norm(norm: &Norm, gamma: Option<&[f32]>, sigma: f32, w: &mut [f32]) {
    for (k, x) in w.iter_mut().enumerate() {
        *x *= gamma.map_or(1.0, |g| g[k]) / sigma;
    }
    if matches!(norm, Norm::Layer { .. }) {
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        w.iter_mut().for_each(|x| *x -= mean);
    }
}

/// What each writer of the residual stream entering `layer` at `pos` adds to its read by
/// `w_s`: the embeddings, each earlier head (and its terms by the position it read from),
/// each earlier MLP (the remainder of its layer), the output biases.
async fn split(
    model: &crate::lm::Transformer,
    cache: &crate::lm::HookCache,
    ids: &[u32],
    (layer, source): (usize, usize),
    w_s: &[f32],
) -> anyhow::Result<Vec<WrittenBy>> {
    use super::read_async as host;
    let cfg = &model.config;
    let (h, dh, dm) = (cfg.n_heads, cfg.d_head, cfg.d_model);
    let device = model.device().clone();
    let read = |x: &[f32]| x.iter().zip(w_s).map(|(a, b)| a * b).sum::<f32>();
    let mut parts = Vec::new();
    let mut embed_rows = Vec::new();
    for row in &model.embed_parts(ids[source], source) {
        embed_rows.push(host(row).await?);
    }
    for (writer, row) in [Writer::Embedding, Writer::Positions]
        .into_iter()
        .zip(&embed_rows)
    {
        parts.push(WrittenBy {
            writer,
            value: read(row),
            by_source: Vec::new(),
        });
    }

    // The earlier layers: each head's W_O taken to w_s, and its z, pattern row and values
    // at and before the source, read back together.
    if layer > 0 {
        let w_s_t = Tensor::<2>::from_data(TensorData::new(w_s.to_vec(), [dm, 1]), &device);
        let (mut u, mut b_o, mut z, mut pat, mut val, mut post) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for l in 0..layer {
            let attn = &model.blocks[l].attn;
            u.push(
                attn.w_o
                    .clone()
                    .cast(DType::F32)
                    .matmul(w_s_t.clone())
                    .reshape([h * dh]),
            );
            if let Some(b) = &attn.b_o {
                b_o.push(
                    b.clone()
                        .reshape([1, dm])
                        .matmul(w_s_t.clone())
                        .reshape([1]),
                );
            }
            let zl = cache.hook_z.get(&l).context("no hook_z")?.clone();
            z.push(
                zl.slice([0..1, source..source + 1, 0..h, 0..dh])
                    .reshape([h * dh]),
            );
            let pl = cache.pattern.get(&l).context("no pattern")?.clone();
            pat.push(
                pl.slice([0..1, 0..h, source..source + 1, 0..source + 1])
                    .reshape([h * (source + 1)]),
            );
            let vl = cache.values.get(&l).context("no values")?.clone();
            val.push(
                vl.slice([0..1, 0..source + 1, 0..h, 0..dh])
                    .reshape([(source + 1) * h * dh]),
            );
            let rl = cache.resid_post.get(&l).context("no residual")?.clone();
            post.push(rl.slice([0..1, source..source + 1, 0..dm]).reshape([dm]));
        }
        let u = host(&Tensor::cat(u, 0)).await?;
        let b_o = match b_o.is_empty() {
            true => Vec::new(),
            false => host(&Tensor::cat(b_o, 0)).await?,
        };
        let z = host(&Tensor::cat(z, 0)).await?;
        let pat = host(&Tensor::cat(pat, 0)).await?;
        let val = host(&Tensor::cat(val, 0)).await?;
        let post = host(&Tensor::cat(post, 0)).await?;
        let s1 = source + 1;
        let mut before = embed_rows.iter().map(|r| read(r)).sum::<f32>();
        for l in 0..layer {
            let u = &u[l * h * dh..(l + 1) * h * dh];
            let z = &z[l * h * dh..(l + 1) * h * dh];
            let pat = &pat[l * h * s1..(l + 1) * h * s1];
            let val = &val[l * s1 * h * dh..(l + 1) * s1 * h * dh];
            let mut heads_sum = 0f32;
            for hh in 0..h {
                let u = &u[hh * dh..(hh + 1) * dh];
                let dot = |x: &[f32]| x.iter().zip(u).map(|(a, b)| a * b).sum::<f32>();
                let value = dot(&z[hh * dh..(hh + 1) * dh]);
                let by_source = (0..s1)
                    .map(|sp| pat[hh * s1 + sp] * dot(&val[(sp * h + hh) * dh..][..dh]))
                    .collect();
                heads_sum += value;
                parts.push(WrittenBy {
                    writer: Writer::Head { layer: l, head: hh },
                    value,
                    by_source,
                });
            }
            let after = read(&post[l * dm..(l + 1) * dm]);
            let bias = b_o.get(l).copied().unwrap_or(0.0);
            if model.blocks[l].mlp.is_some() {
                parts.push(WrittenBy {
                    writer: Writer::Mlp { layer: l },
                    value: after - before - heads_sum - bias,
                    by_source: Vec::new(),
                });
            }
            before = after;
        }
        if !b_o.is_empty() {
            parts.push(WrittenBy {
                writer: Writer::OutputBiases,
                value: b_o.iter().sum(),
                by_source: Vec::new(),
            });
        }
    }
    Ok(parts)
}
