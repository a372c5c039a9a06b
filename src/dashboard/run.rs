//! Dashboards of a training run: held-out windows after what it trained on, its history
//! and per-head metrics, built with the run's SAE (native only).

use std::path::Path;

use anyhow::Context;

use super::build::{self, BuildInputs, BuildOptions, Progress};
use super::{Dashboard, HISTORY_POINTS};
use crate::data::corpus::Corpus;
use crate::data::store::{
    ActivationStore, CacheMeta, StreamPosition, complete_cache, read_cache_meta,
};
use crate::data::windows::{ContextWindows, WindowsPosition};
use crate::lm::LoadedModel;
use crate::run_log::History;
use crate::sae::BlockDiagSae;
use crate::train::{TrainConfig, checkpoint};

/// `n` context windows of `corpus` from `start` on (one pass, no wrap-around).
pub fn windows_from(
    corpus: &Corpus,
    loaded: &LoadedModel,
    context_size: usize,
    start: WindowsPosition,
    n: usize,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let stream = ContextWindows::new(
        corpus,
        &loaded.tokenizer,
        context_size,
        loaded.transformer.config.bos_token_id,
        start,
        false,
    )?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for item in stream.take(n) {
        out.push(item?.0);
    }
    Ok(out)
}

/// Held-out windows of a run: those after the last data its training read (never
/// trained on): after what it harvested, or for a run from an activation cache, after
/// what the cache's harvest read. When that went round the corpus, nothing is left after
/// it, or the cache does not say where it ended, the corpus start is used and the
/// description says so.
pub fn held_out_windows(
    config: &TrainConfig,
    checkpoint_dir: &Path,
    loaded: &LoadedModel,
    context_size: usize,
    n: usize,
) -> anyhow::Result<(Vec<Vec<u32>>, String)> {
    let corpus = Corpus::open(&config.dataset, config.text_column.as_deref())?;
    let (after, why) = match ActivationStore::saved_position(checkpoint_dir)? {
        StreamPosition::Windows(pos) => (
            (pos.corpus.epoch == 0).then_some(pos),
            "the run trained on the whole corpus",
        ),
        _ => cache_end(config),
    };
    let held_out = match after {
        Some(pos) => windows_from(&corpus, loaded, context_size, pos, n)?,
        None => Vec::new(),
    };
    if !held_out.is_empty() {
        let after = match config.activation_cache {
            Some(_) => "the activation cache the run trained from",
            None => "the data the run trained on",
        };
        return Ok((held_out, format!("held out: the corpus after {after}")));
    }
    let why = match after {
        Some(_) => "nothing is left after the data the run trained on",
        None => why,
    };
    let windows = windows_from(&corpus, loaded, context_size, WindowsPosition::default(), n)?;
    Ok((
        windows,
        format!("the corpus start ({why}, so these windows may have been trained on)"),
    ))
}

/// Where the harvest of the activation cache a run trained from ended in the run's corpus,
/// or why that is not known.
fn cache_end(config: &TrainConfig) -> (Option<WindowsPosition>, &'static str) {
    let Some(meta) = config.activation_cache.as_deref().map(read_cache_meta) else {
        return (None, "the run trained from an activation cache");
    };
    match meta {
        Err(_) => (None, "the activation cache the run trained from is gone"),
        Ok(meta) if !meta.of_corpus(&config.dataset) => (
            None,
            "the run trained from an activation cache of another corpus",
        ),
        Ok(CacheMeta { end: None, .. }) => (
            None,
            "the activation cache the run trained from does not record where its harvest \
             ended",
        ),
        Ok(CacheMeta { end: Some(end), .. }) if end.corpus.epoch > 0 => (
            None,
            "the activation cache the run trained from holds the whole corpus",
        ),
        Ok(CacheMeta { end, .. }) => (end, ""),
    }
}

/// Builds the dashboards of a run directory over at least `tokens` tokens of held-out
/// windows of `context_size` tokens (default: the run's context, at most 128): of the SAE
/// of `checkpoint` when given (a checkpoint directory of the run), else of the run's final
/// `sae/`, else of its latest checkpoint (a run still training). BOS positions count (as
/// `options.keep_bos`) when the run trained on them (`--keep-bos`) too. Of a run from an
/// activation cache, the LM's outputs the build reads that do not depend on the SAE are
/// kept in the cache's directory, for the dashboards of the other runs from it
/// ([`super::kept`]); the second value says what happened to them.
pub fn build_for_run(
    run_dir: &Path,
    checkpoint: Option<&Path>,
    loaded: &LoadedModel,
    tokens: usize,
    context_size: Option<usize>,
    options: &BuildOptions,
    progress: Progress,
) -> anyhow::Result<(Dashboard, Option<String>)> {
    let (ckpt, sae_dir) = checkpoint::run_sae(run_dir, checkpoint)?;
    let config = checkpoint::read_config(&ckpt)?;
    let options = &BuildOptions {
        keep_bos: options.keep_bos || !config.drop_bos,
        ..options.clone()
    };
    let sae = BlockDiagSae::load(&sae_dir, loaded.transformer.device())
        .with_context(|| format!("loading the run's SAE from {}", sae_dir.display()))?;
    let context = context_size.unwrap_or(config.context_size.min(128));
    let n_windows = tokens.div_ceil(context.max(1));
    progress("reading held-out windows", 0, n_windows);
    let (windows, from) = held_out_windows(&config, &ckpt, loaded, context, n_windows)?;
    let (history, _) = History::read(&run_dir.join("metrics.jsonl"))
        .with_context(|| format!("reading {}", run_dir.join("metrics.jsonl").display()))?;
    let history = history.subsampled(HISTORY_POINTS);
    let run_heads = history.steps.last().map(|s| {
        s.l0_per_head
            .iter()
            .zip(&s.explained_variance_per_head)
            .zip(&s.dead_per_head)
            .map(|((l0, ev), dead)| (*l0, *ev, *dead))
            .collect()
    });
    // A dense SAE's one block is the whole SAE: its score is the total one (the run's
    // per-head scores splice its reconstruction into one model head at a time).
    let model_config = &loaded.transformer.config;
    let dense = (sae.config).is_dense_over(model_config.n_heads, model_config.d_head);
    let ce_scores = history.evals.last().map(|e| match dense {
        true => vec![e.ce_score],
        false => e.per_head.iter().map(|h| h.ce_score).collect(),
    });
    let layer = config.layer(loaded.transformer.config.n_layers);
    let inputs = BuildInputs {
        loaded,
        sae: &sae,
        layer,
        z_convention: config.z_convention,
        windows,
        windows_from: from,
        sae_source: super::recorded_path(&sae_dir),
        run_config: serde_json::to_value(&config).ok(),
        history,
        run_heads,
        ce_scores,
        built_from: super::built_from(loaded, &sae_dir),
    };
    let keep_in = complete_cache(config.activation_cache.as_deref());
    build::build_keeping(&inputs, options, keep_in, progress)
}
