//! Activation store: streams context windows through the LM (stopping at the hooked layer),
//! keeps a shuffle buffer of hook_z rows refilled at half (old and new mixed, as SAELens
//! does), and serves `[batch_tokens, n_heads, d_head]` batches. Can also read from, and
//! write, an on-disk activation cache of safetensors shards.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::corpus::Corpus;
use super::windows::{ContextWindows, WindowsPosition};
use crate::files::{NamedArray, read_json, write_json, write_safetensors};
use crate::lm::weights::WeightFile;
use crate::lm::{HookRequest, Transformer, ZConvention};
use crate::rng::Rng;

/// What the store harvests and how it batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreConfig {
    pub hook_layer: usize,
    pub context_size: usize,
    /// Tokens per training batch.
    pub batch_tokens: usize,
    /// Shuffle buffer size, in training batches.
    pub n_batches_in_buffer: usize,
    /// Context windows per LM forward pass.
    pub windows_per_forward: usize,
    /// Leave the BOS position out of the training data.
    pub drop_bos: bool,
    pub z_convention: ZConvention,
}

/// Where rows come from. (One per store: the size difference between variants is moot.)
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    Lm {
        model: &'a Transformer,
        corpus: &'a Corpus,
        tokenizer: &'a tokenizers::Tokenizer,
        windows: ContextWindows<&'a tokenizers::Tokenizer>,
    },
    Cache(CacheReader),
    /// Chunks harvested ahead by a thread (see [`ActivationStore::from_lm_background`]), in
    /// the same order the inline harvester would produce them.
    Background(std::sync::mpsc::Receiver<anyhow::Result<(Vec<f32>, WindowsPosition)>>),
}

/// Everything needed to resume the store exactly: buffer contents, RNG and stream position.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoreState {
    pub rng: Rng,
    pub position: StreamPosition,
    pub tokens_harvested: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StreamPosition {
    #[default]
    Start,
    Windows(WindowsPosition),
    /// Shard index and row offset within it.
    Cache {
        shard: usize,
        row: usize,
        epoch: u64,
    },
}

/// Where a background harvest's thread spends its time (nanoseconds, shared with it).
#[derive(Default)]
struct HarvestClock {
    /// Forward passes, with hook_z read back to the host.
    forward: std::sync::atomic::AtomicU64,
    /// Waiting for the trainer to take a chunk (`ahead` chunks already waiting).
    blocked: std::sync::atomic::AtomicU64,
}

/// Seconds a store spent getting rows, for a run's account of its time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SourceTime {
    /// The trainer's thread getting rows from the source: waiting for the background
    /// harvest's next chunk, harvesting inline, or reading the cache.
    pub waiting: f64,
    /// The background harvest's thread: its forward passes (hook_z read back included), and
    /// its waits for the trainer to take a chunk.
    pub harvest: Option<(f64, f64)>,
}

pub struct ActivationStore<'a> {
    config: StoreConfig,
    source: Source<'a>,
    n_heads: usize,
    d_head: usize,
    /// Rows of `n_heads * d_head` values.
    buffer: Vec<f32>,
    rng: Rng,
    position: StreamPosition,
    tokens_harvested: u64,
    device: Device,
    /// Seconds spent in [`ActivationStore::harvest_chunk`].
    source_seconds: f64,
    /// The background harvest's clock, once there is one.
    harvest_clock: Option<std::sync::Arc<HarvestClock>>,
}

impl<'a> ActivationStore<'a> {
    /// A store that harvests from `model` over `corpus` windows, from `start` on.
    pub fn from_lm(
        config: StoreConfig,
        model: &'a Transformer,
        corpus: &'a Corpus,
        tokenizer: &'a tokenizers::Tokenizer,
        start: WindowsPosition,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let mc = &model.config;
        ensure!(
            config.hook_layer < mc.n_layers,
            "--hook-layer {} does not exist: {} has layers 0 to {}",
            config.hook_layer,
            mc.name,
            mc.n_layers.saturating_sub(1)
        );
        ensure!(
            config.context_size >= 2 && config.context_size <= mc.n_ctx,
            "--context-size {} must be between 2 and the model's context ({})",
            config.context_size,
            mc.n_ctx
        );
        let windows = ContextWindows::new(
            corpus,
            tokenizer,
            config.context_size,
            mc.bos_token_id,
            start,
            true,
        )?;
        Ok(Self {
            n_heads: mc.n_heads,
            d_head: mc.d_head,
            source: Source::Lm {
                model,
                corpus,
                tokenizer,
                windows,
            },
            buffer: Vec::new(),
            rng: Rng::new(seed),
            position: StreamPosition::Windows(start),
            tokens_harvested: 0,
            source_seconds: 0.0,
            harvest_clock: None,
            device: device.clone(),
            config,
        })
    }

    /// Moves an LM store's harvesting onto a thread of `scope`, which runs up to `ahead`
    /// forward passes ahead while the caller trains, so harvesting and training overlap.
    /// The chunks arrive in the inline order: the data, and so the SAE, are the same.
    /// A cache store is returned unchanged.
    pub fn in_background<'scope>(
        mut self,
        scope: &'scope std::thread::Scope<'scope, 'a>,
        ahead: usize,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead.max(1));
        let source = std::mem::replace(&mut self.source, Source::Background(rx));
        let Source::Lm {
            model, mut windows, ..
        } = source
        else {
            self.source = source;
            return self;
        };
        let config = self.config.clone();
        let clock = std::sync::Arc::new(HarvestClock::default());
        self.harvest_clock = Some(clock.clone());
        let add = |to: &std::sync::atomic::AtomicU64, since: std::time::Instant| {
            let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            to.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        };
        scope.spawn(move || {
            loop {
                let started = std::time::Instant::now();
                let chunk = harvest_windows(model, &mut windows, &config);
                add(&clock.forward, started);
                let failed = chunk.is_err();
                // The store going away closes the channel: stop.
                let started = std::time::Instant::now();
                if tx.send(chunk).is_err() || failed {
                    break;
                }
                add(&clock.blocked, started);
            }
        });
        self
    }

    /// A store that reads a cache written by [`write_cache`], for training on `model`
    /// (whose `hook_z` rows are `n_heads x d_head`): a cache of another shape is an error.
    pub fn from_cache_for_model(
        config: StoreConfig,
        dir: &Path,
        model: &crate::lm::TransformerConfig,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let store = Self::from_cache(config, dir, seed, device)?;
        store.check_row_shape(model.n_heads, model.d_head, &model.name)?;
        Ok(store)
    }

    /// The cache's metadata, when the store reads one.
    pub fn cache_meta(&self) -> Option<&CacheMeta> {
        match &self.source {
            Source::Cache(reader) => Some(&reader.meta),
            _ => None,
        }
    }

    /// Checks that the store serves rows of `n_heads x d_head` (the shape `model` expects).
    pub fn check_row_shape(
        &self,
        n_heads: usize,
        d_head: usize,
        model: &str,
    ) -> anyhow::Result<()> {
        if (self.n_heads, self.d_head) == (n_heads, d_head) {
            return Ok(());
        }
        let source = match &self.source {
            Source::Cache(reader) => format!("the activation cache {}", reader.dir.display()),
            _ => "the activation store".to_string(),
        };
        bail!(
            "{source} holds hook_z rows of {} heads x d_head {}, but {model} has {n_heads} \
             heads x d_head {d_head}; harvest the cache from the same model",
            self.n_heads,
            self.d_head
        )
    }

    /// A store that reads a cache written by [`write_cache`]. The cache's own metadata
    /// is checked for consistency; [`from_cache_for_model`](Self::from_cache_for_model)
    /// also checks its row shape against the model's.
    pub fn from_cache(
        config: StoreConfig,
        dir: &Path,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let reader = CacheReader::open(dir)?;
        let meta = &reader.meta;
        ensure!(
            meta.hook_layer == config.hook_layer && meta.z_convention == config.z_convention,
            "{}: cache holds layer {} ({:?}), but training asks for layer {} ({:?})",
            dir.display(),
            meta.hook_layer,
            meta.z_convention,
            config.hook_layer,
            config.z_convention
        );
        Ok(Self {
            n_heads: meta.n_heads,
            d_head: meta.d_head,
            source: Source::Cache(reader),
            buffer: Vec::new(),
            rng: Rng::new(seed),
            position: StreamPosition::Cache {
                shard: 0,
                row: 0,
                epoch: 0,
            },
            tokens_harvested: 0,
            source_seconds: 0.0,
            harvest_clock: None,
            device: device.clone(),
            config,
        })
    }

    pub fn row_len(&self) -> usize {
        self.n_heads * self.d_head
    }

    fn rows(&self) -> usize {
        self.buffer.len() / self.row_len()
    }

    fn capacity_rows(&self) -> usize {
        self.config.batch_tokens * self.config.n_batches_in_buffer.max(1)
    }

    pub fn tokens_harvested(&self) -> u64 {
        self.tokens_harvested
    }

    /// The seconds spent getting rows so far.
    pub fn source_time(&self) -> SourceTime {
        let secs = |ns: &std::sync::atomic::AtomicU64| {
            ns.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
        };
        SourceTime {
            waiting: self.source_seconds,
            harvest: self
                .harvest_clock
                .as_ref()
                .map(|c| (secs(&c.forward), secs(&c.blocked))),
        }
    }

    /// Harvests one chunk of rows from the source, appended to `out`, timed.
    fn harvest_chunk(&mut self, out: &mut Vec<f32>) -> anyhow::Result<usize> {
        let started = std::time::Instant::now();
        let rows = self.harvest_chunk_untimed(out);
        self.source_seconds += started.elapsed().as_secs_f64();
        rows
    }

    fn harvest_chunk_untimed(&mut self, out: &mut Vec<f32>) -> anyhow::Result<usize> {
        let row_len = self.row_len();
        match &mut self.source {
            Source::Lm { model, windows, .. } => {
                let (values, pos) = harvest_windows(model, windows, &self.config)?;
                self.position = StreamPosition::Windows(pos);
                let rows = values.len() / row_len;
                out.extend(values);
                self.tokens_harvested += rows as u64;
                Ok(rows)
            }
            Source::Background(rx) => {
                let (values, pos) = rx
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the background harvester stopped"))??;
                self.position = StreamPosition::Windows(pos);
                let rows = values.len() / row_len;
                out.extend(values);
                self.tokens_harvested += rows as u64;
                Ok(rows)
            }
            Source::Cache(reader) => {
                let StreamPosition::Cache { shard, row, epoch } = &mut self.position else {
                    bail!("cache store has a non-cache position");
                };
                let (values, next) = reader.read_from(*shard, *row, self.config.batch_tokens)?;
                let rows = values.len() / row_len;
                out.extend(values);
                if let Some((s, r)) = next {
                    *shard = s;
                    *row = r;
                } else {
                    *shard = 0;
                    *row = 0;
                    *epoch += 1;
                }
                self.tokens_harvested += rows as u64;
                Ok(rows)
            }
        }
    }

    /// Fills the buffer to capacity and shuffles it (old and new rows mixed).
    fn refill(&mut self) -> anyhow::Result<()> {
        let row_len = self.row_len();
        let mut buffer = std::mem::take(&mut self.buffer);
        let target = self.capacity_rows();
        while buffer.len() / row_len < target {
            if self.harvest_chunk(&mut buffer)? == 0 {
                bail!("the activation source gave no rows");
            }
        }
        shuffle_rows(&mut buffer, row_len, &mut self.rng);
        self.buffer = buffer;
        Ok(())
    }

    /// The next host batch, `batch_tokens` rows of `n_heads * d_head`.
    pub fn next_rows(&mut self) -> anyhow::Result<Vec<f32>> {
        if self.rows() < self.capacity_rows() / 2 || self.rows() < self.config.batch_tokens {
            self.refill()?;
        }
        let take = self.config.batch_tokens * self.row_len();
        let split = self.buffer.len() - take;
        Ok(self.buffer.split_off(split))
    }

    /// The next batch on the device, `[batch_tokens, n_heads, d_head]`.
    pub fn next_batch(&mut self) -> anyhow::Result<Tensor<3>> {
        let rows = self.next_rows()?;
        Ok(Tensor::from_data(
            TensorData::new(rows, [self.config.batch_tokens, self.n_heads, self.d_head]),
            &self.device,
        ))
    }

    /// Mean of `||z||` over the whole row and per head, over `n_batches` batches; used for
    /// input normalisation. Consumes the batches.
    pub fn mean_norms(&mut self, n_batches: usize) -> anyhow::Result<(f64, Vec<f64>)> {
        let (h, d) = (self.n_heads, self.d_head);
        let (mut total, mut per_head, mut count) = (0f64, vec![0f64; h], 0usize);
        for _ in 0..n_batches {
            let rows = self.next_rows()?;
            for row in rows.chunks_exact(h * d) {
                let mut sq = 0f64;
                for (head, part) in row.chunks_exact(d).enumerate() {
                    let s: f64 = part.iter().map(|&v| (v as f64) * (v as f64)).sum();
                    per_head[head] += s.sqrt();
                    sq += s;
                }
                total += sq.sqrt();
                count += 1;
            }
        }
        let n = count.max(1) as f64;
        Ok((total / n, per_head.into_iter().map(|s| s / n).collect()))
    }

    /// Saves the buffer and stream state into `dir` (for exact resume).
    pub fn save_state(&self, dir: &Path) -> anyhow::Result<()> {
        write_safetensors(
            &dir.join("store_buffer.safetensors"),
            &[NamedArray::new(
                "rows",
                vec![self.rows(), self.row_len()],
                self.buffer.clone(),
            )],
            None,
        )?;
        write_json(
            &dir.join("store_state.json"),
            &StoreState {
                rng: self.rng,
                position: self.position.clone(),
                tokens_harvested: self.tokens_harvested,
            },
        )
    }

    /// The data position a checkpoint directory's store state was saved at.
    pub fn saved_position(dir: &Path) -> anyhow::Result<StreamPosition> {
        Ok(read_json::<StoreState>(&dir.join("store_state.json"))?.position)
    }

    /// Restores what [`save_state`](Self::save_state) wrote.
    pub fn restore_state(&mut self, dir: &Path) -> anyhow::Result<()> {
        let state_path = dir.join("store_state.json");
        let state: StoreState = read_json(&state_path)?;
        // A cache position is checked first, so a bad one changes nothing.
        if let (Source::Cache(reader), StreamPosition::Cache { shard, row, .. }) =
            (&self.source, &state.position)
        {
            reader.check_position(*shard, *row).with_context(|| {
                format!(
                    "{}: saved cache position is out of range",
                    state_path.display()
                )
            })?;
        }
        let file = WeightFile::open(&dir.join("store_buffer.safetensors"))?;
        let rows = file.read("rows")?;
        ensure!(
            rows.shape.len() == 2 && rows.shape[1] == self.row_len(),
            "{}: buffer rows have shape {:?}, expected [_, {}]",
            dir.display(),
            rows.shape,
            self.row_len()
        );
        self.buffer = rows.data;
        self.rng = state.rng;
        self.tokens_harvested = state.tokens_harvested;
        match (&mut self.source, &state.position) {
            (
                Source::Lm {
                    model,
                    corpus,
                    tokenizer,
                    windows,
                },
                StreamPosition::Windows(pos),
            ) => {
                *windows = ContextWindows::new(
                    corpus,
                    *tokenizer,
                    self.config.context_size,
                    model.config.bos_token_id,
                    *pos,
                    true,
                )?;
            }
            (Source::Lm { .. }, StreamPosition::Start) => {}
            // The background harvester cannot be moved: it must have been started where the
            // checkpoint left off.
            (Source::Background(_), StreamPosition::Windows(pos))
                if self.position == StreamPosition::Windows(*pos) => {}
            // Checked above.
            (Source::Cache(_), StreamPosition::Cache { .. }) => {}
            _ => bail!(
                "{}: saved data position does not match the data source",
                dir.display()
            ),
        }
        self.position = state.position;
        Ok(())
    }
}

/// One LM forward over the next `windows_per_forward` windows: hook_z rows (BOS dropped if
/// configured) and the stream position after the last window used.
fn harvest_windows(
    model: &Transformer,
    windows: &mut ContextWindows<&tokenizers::Tokenizer>,
    config: &StoreConfig,
) -> anyhow::Result<(Vec<f32>, WindowsPosition)> {
    let mut batch = Vec::with_capacity(config.windows_per_forward);
    let mut end = None;
    for item in windows.by_ref().take(config.windows_per_forward) {
        let (window, pos) = item?;
        batch.push(window);
        end = Some(pos);
    }
    let Some(end) = end else {
        bail!("the corpus gave no context windows (is it empty?)");
    };
    let hooks = HookRequest {
        hook_z: vec![config.hook_layer],
        z_convention: config.z_convention,
        ..Default::default()
    };
    let tokens = model.tokens(&batch)?;
    let mut cache = model.run(tokens, &hooks, None)?;
    let z = cache
        .hook_z
        .remove(&config.hook_layer)
        .context("hook_z missing")?;
    let [n, t, h, d] = z.dims();
    let first = usize::from(config.drop_bos);
    let z = z.slice([0..n, first..t, 0..h, 0..d]);
    Ok((crate::files::host_vec(z)?, end))
}

/// Fisher-Yates over rows of `row_len` values.
fn shuffle_rows(buffer: &mut [f32], row_len: usize, rng: &mut Rng) {
    let rows = buffer.len() / row_len;
    let mut tmp = vec![0f32; row_len];
    for i in (1..rows).rev() {
        let j = rng.below(i + 1);
        if i != j {
            tmp.copy_from_slice(&buffer[i * row_len..(i + 1) * row_len]);
            buffer.copy_within(j * row_len..(j + 1) * row_len, i * row_len);
            buffer[j * row_len..(j + 1) * row_len].copy_from_slice(&tmp);
        }
    }
}

/// Describes an activation cache directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheMeta {
    pub model_name: String,
    pub hook_layer: usize,
    pub z_convention: ZConvention,
    pub n_heads: usize,
    pub d_head: usize,
    pub context_size: usize,
    pub drop_bos: bool,
    pub dataset: String,
    pub shard_rows: Vec<usize>,
    /// Context windows at the corpus's start that the harvest skipped: the ones a run
    /// holds out for its CE evaluation (`--eval-windows`). Absent in caches written before
    /// harvests skipped them: those start at the corpus's first window.
    #[serde(default)]
    pub held_out_windows: Option<usize>,
    /// Where the harvest's stream of windows stood when it ended: the corpus from there on
    /// was never harvested (a dashboard of a run from the cache takes its windows there).
    /// Absent in caches written before harvests recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<WindowsPosition>,
}

impl CacheMeta {
    /// Whether the cache was harvested from `dataset` (the same file or directory, or the
    /// same path where either cannot be resolved).
    pub fn of_corpus(&self, dataset: &Path) -> bool {
        let own = Path::new(&self.dataset);
        crate::files::same_path(own, dataset) || own == dataset
    }

    /// Refuses a cache that holds windows a run evaluates on: the first `eval_windows`
    /// windows of `context_size` tokens of `dataset`, when that is the cache's corpus.
    pub fn check_held_out(
        &self,
        dir: &Path,
        dataset: &Path,
        context_size: usize,
        eval_windows: usize,
    ) -> anyhow::Result<()> {
        if eval_windows == 0 || !self.of_corpus(dataset) {
            return Ok(());
        }
        let skipped = self.held_out_windows.unwrap_or(0);
        if self.context_size == context_size && skipped >= eval_windows {
            return Ok(());
        }
        let holds = match self.held_out_windows {
            None => "starts at the corpus's first window (it was harvested before harvests \
                     skipped the held-out windows)"
                .to_string(),
            Some(n) if self.context_size != context_size => format!(
                "skipped {n} windows of {} tokens, not this run's {context_size}-token ones",
                self.context_size
            ),
            Some(n) => format!("skipped only {n} windows"),
        };
        bail!(
            "{}: the cache {holds}, but this run holds out the first {eval_windows} windows of \
             {} for its CE evaluation (--eval-windows), so it would be evaluated on data it \
             trained on: harvest the cache again with this run's --eval-windows and \
             --context-size, or train with --eval-windows 0",
            dir.display(),
            dataset.display()
        )
    }
}

pub const CACHE_META: &str = "activations.json";

fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("shard_{i:05}.safetensors"))
}

/// (shard index, row within it).
type ShardRow = (usize, usize);

struct CacheReader {
    dir: PathBuf,
    meta: CacheMeta,
    loaded: Option<(usize, Vec<f32>)>,
}

/// The metadata of the activation cache in `dir`, checked (shards listed, sizes positive):
/// an error says what is wrong, before anything else is done with the cache.
pub fn read_cache_meta(dir: &Path) -> anyhow::Result<CacheMeta> {
    let meta: CacheMeta = read_json(&dir.join(CACHE_META)).with_context(|| {
        format!(
            "{} is not an activation cache (run `attn-saes harvest`)",
            dir.display()
        )
    })?;
    let meta_path = dir.join(CACHE_META);
    ensure!(
        !meta.shard_rows.is_empty(),
        "{}: the cache has no shards",
        meta_path.display()
    );
    ensure!(
        meta.n_heads > 0 && meta.d_head > 0,
        "{}: n_heads ({}) and d_head ({}) must be positive",
        meta_path.display(),
        meta.n_heads,
        meta.d_head
    );
    ensure!(
        meta.n_heads.checked_mul(meta.d_head).is_some(),
        "{}: n_heads ({}) x d_head ({}) is too large",
        meta_path.display(),
        meta.n_heads,
        meta.d_head
    );
    if let Some(i) = meta.shard_rows.iter().position(|&rows| rows == 0) {
        bail!(
            "{}: shard_rows[{i}] is 0 (every shard holds at least one row)",
            meta_path.display()
        );
    }
    Ok(meta)
}

/// `dir` where it holds a complete activation cache (its metadata reads and checks).
pub fn complete_cache(dir: Option<&Path>) -> Option<&Path> {
    dir.filter(|d| read_cache_meta(d).is_ok())
}

impl CacheReader {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            meta: read_cache_meta(dir)?,
            loaded: None,
        })
    }

    /// Checks that (shard, row) is a row of the cache.
    fn check_position(&self, shard: usize, row: usize) -> anyhow::Result<()> {
        let n_shards = self.meta.shard_rows.len();
        let Some(&rows) = self.meta.shard_rows.get(shard) else {
            bail!(
                "{}: shard {shard} does not exist (the cache has {n_shards} shards)",
                self.dir.display()
            );
        };
        ensure!(
            row < rows,
            "{}: row {row} is past the end of shard {shard} ({rows} rows)",
            self.dir.display()
        );
        Ok(())
    }

    /// Up to `max_rows` rows from (shard, row); returns the values and the next position
    /// (`None` at the end of the cache).
    fn read_from(
        &mut self,
        shard: usize,
        row: usize,
        max_rows: usize,
    ) -> anyhow::Result<(Vec<f32>, Option<ShardRow>)> {
        self.check_position(shard, row)?;
        let row_len = self.meta.n_heads * self.meta.d_head;
        if self.loaded.as_ref().map(|(i, _)| *i) != Some(shard) {
            let path = shard_path(&self.dir, shard);
            let file = WeightFile::open(&path)?;
            let rows = file.read_shaped(
                "hook_z",
                &[
                    self.meta.shard_rows[shard],
                    self.meta.n_heads,
                    self.meta.d_head,
                ],
            )?;
            self.loaded = Some((shard, rows.data));
        }
        let data = &self
            .loaded
            .as_ref()
            .map(|(_, d)| d)
            .context("shard not loaded")?;
        let total = self.meta.shard_rows[shard];
        let end = row.saturating_add(max_rows).min(total);
        let values = data[row * row_len..end * row_len].to_vec();
        let next = if end < total {
            Some((shard, end))
        } else if shard + 1 < self.meta.shard_rows.len() {
            Some((shard + 1, 0))
        } else {
            None
        };
        Ok((values, next))
    }
}

/// `harvest --shard-tokens`' default: rows per shard file.
pub const DEFAULT_SHARD_TOKENS: usize = 65_536;

/// Where a harvest stopped part way goes on from (`harvest-state.json`, written after each
/// shard, removed once the cache is complete).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HarvestState {
    /// The cache's metadata: the harvest's settings, and the shards written so far.
    pub meta: CacheMeta,
    pub shard_tokens: usize,
    /// The window stream's position before the forward the next shard's first row comes
    /// from, and how many of that forward's rows the shards already hold.
    pub resume_from: WindowsPosition,
    pub rows_done: usize,
}

pub const HARVEST_STATE: &str = "harvest-state.json";

impl HarvestState {
    /// The state of a harvest stopped part way in `dir`, if any.
    pub fn read(dir: &Path) -> Option<Self> {
        read_json(&dir.join(HARVEST_STATE)).ok()
    }

    /// "a harvest stopped after N tokens (S shards)".
    pub fn describe(&self) -> String {
        let shards = match self.meta.shard_rows.len() {
            1 => "1 shard".to_string(),
            n => format!("{n} shards"),
        };
        format!(
            "a harvest stopped after {} tokens ({shards})",
            self.meta.shard_rows.iter().sum::<usize>()
        )
    }

    /// The state of a harvest stopped part way in `dir` that `meta`'s settings and
    /// `shard_tokens` continue (its shards still there, fewer rows than `total_tokens`).
    pub fn to_resume(
        dir: &Path,
        meta: &CacheMeta,
        shard_tokens: usize,
        total_tokens: usize,
    ) -> Option<Self> {
        let state = Self::read(dir)?;
        // The settings: the metadata less what the harvest writes.
        let settings = |m: &CacheMeta| CacheMeta {
            shard_rows: Vec::new(),
            end: None,
            ..m.clone()
        };
        let rows: usize = state.meta.shard_rows.iter().sum();
        let shards = (0..state.meta.shard_rows.len()).all(|i| shard_path(dir, i).is_file());
        (settings(&state.meta) == settings(meta)
            && state.shard_tokens == shard_tokens
            && rows < total_tokens
            && shards)
            .then_some(state)
    }
}

/// Harvests `total_tokens` hook_z rows from the LM into `dir` as safetensors shards of
/// `shard_tokens` rows each (unshuffled, in corpus order). `on_progress` gets the rows
/// harvested so far (at most `total_tokens`) after each of the LM's forwards; its error
/// stops the harvest (a stop asked for) and is returned. A
/// cache already in `dir` stops being one first (its metadata is removed), so a harvest
/// that stops or fails part way never leaves old metadata over new shards. After each
/// shard, [`HarvestState`] says where to go on from: with `resume` (a stopped harvest's
/// state; `store` then starts at its `resume_from`), the harvest keeps its shards and
/// goes on, writing what an unstopped harvest would have.
pub fn write_cache(
    store: &mut ActivationStore,
    meta_base: CacheMeta,
    dir: &Path,
    total_tokens: usize,
    shard_tokens: usize,
    resume: Option<&HarvestState>,
    mut on_progress: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<CacheMeta> {
    // Zero would write empty shards forever.
    ensure!(shard_tokens > 0, "--shard-tokens must be positive");
    ensure!(total_tokens > 0, "--tokens must be positive");
    ensure!(
        (meta_base.n_heads, meta_base.d_head) == (store.n_heads, store.d_head),
        "cache metadata says {} heads x d_head {}, but the store harvests {} x {}",
        meta_base.n_heads,
        meta_base.d_head,
        store.n_heads,
        store.d_head
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (meta_path, state_path) = (dir.join(CACHE_META), dir.join(HARVEST_STATE));
    // A resumed harvest keeps its state until its next shard replaces it.
    for old in [&meta_path]
        .into_iter()
        .chain(resume.is_none().then_some(&state_path))
    {
        if old.exists() {
            std::fs::remove_file(old)
                .with_context(|| format!("removing {} to harvest anew", old.display()))?;
        }
    }
    let position = |store: &ActivationStore| match store.position {
        StreamPosition::Windows(pos) => Ok(pos),
        _ => Err(anyhow::anyhow!("a harvest reads the LM")),
    };
    let row_len = store.row_len();
    let mut meta = meta_base;
    meta.shard_rows = resume
        .map(|r| r.meta.shard_rows.clone())
        .unwrap_or_default();
    let mut written: usize = meta.shard_rows.iter().sum();
    ensure!(
        written < total_tokens,
        "the stopped harvest already holds {written} of the {total_tokens} tokens asked for"
    );
    // The last forward: where it started, its rows, and where the stream is after it
    // (set by the first forward, which comes before any shard is cut).
    let start = position(store)?;
    let mut chunk = (start, 0usize, start);
    let mut skip = resume.map_or(0, |r| r.rows_done);
    let mut pending: Vec<f32> = Vec::new();
    while written < total_tokens {
        while pending.len() / row_len < shard_tokens.min(total_tokens - written) {
            let before = position(store)?;
            let rows = store.harvest_chunk(&mut pending)?;
            if rows == 0 {
                bail!("the activation source gave no rows");
            }
            chunk = (before, rows, position(store)?);
            // Resumed: the first forward's rows the shards already hold.
            let dropped = std::mem::take(&mut skip).min(rows);
            pending.drain(..dropped * row_len);
            on_progress(total_tokens.min(written + pending.len() / row_len))?;
        }
        let rows = shard_tokens.min(total_tokens - written);
        let rest = pending.split_off(rows * row_len);
        let shard = std::mem::replace(&mut pending, rest);
        let i = meta.shard_rows.len();
        write_safetensors(
            &shard_path(dir, i),
            &[NamedArray::new(
                "hook_z",
                vec![rows, meta.n_heads, meta.d_head],
                shard,
            )],
            None,
        )?;
        meta.shard_rows.push(rows);
        written += rows;
        // The rows left over all come from the last forward (the ones before it were
        // fewer than a shard takes).
        let (resume_from, rows_done) = match pending.len() / row_len {
            0 => (chunk.2, 0),
            left => (chunk.0, chunk.1 - left),
        };
        let state = HarvestState {
            meta: meta.clone(),
            shard_tokens,
            resume_from,
            rows_done,
        };
        write_json(&state_path, &state)?;
    }
    meta.end = Some(chunk.2);
    // The metadata file marks the cache complete; it is written last.
    write_json(&meta_path, &meta)?;
    let _ = std::fs::remove_file(&state_path);
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_keeps_every_row() {
        let mut buf: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let mut rng = Rng::new(3);
        shuffle_rows(&mut buf, 3, &mut rng);
        let mut firsts: Vec<i32> = buf.chunks(3).map(|r| r[0] as i32).collect();
        for r in buf.chunks(3) {
            assert_eq!(r[1], r[0] + 1.0);
            assert_eq!(r[2], r[0] + 2.0);
        }
        assert_ne!(firsts, (0..100).map(|i| i * 3).collect::<Vec<_>>());
        firsts.sort();
        assert_eq!(firsts, (0..100).map(|i| i * 3).collect::<Vec<_>>());
    }
}
