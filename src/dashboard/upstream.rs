//! Dashboard stage: what wrote what each feature reads, over its top examples
//! ([`FeatureData::upstream`](super::format::FeatureData::upstream)). Each top example's
//! DFA from the source the dashboards mark (its largest attribution) is split by the
//! writers of the residual stream entering the hooked layer there, as `live::upstream_of`
//! splits one (`attn-saes upstream --from largest` over the examples), then each writer's
//! parts are summarised over the feature's examples as `upstream --prompts` does over a
//! prompt set (`live::spread_of`).
//!
//! One split costs `upstream_of` a forward pass and a few products; here every example of a
//! window shares one forward pass, and the products that do not depend on the position are
//! taken once for every feature. With the norm's scale `sigma_s` at the source held, a
//! feature reads the stream there through `w_s = (A / sigma_s) q_f`, `q_f` its encoder
//! column taken back through `W_V` and the norm's weight (and centred, for LayerNorm), so
//! an earlier head's part is `(A / sigma_s) z_s . (W_O q_f)`: `W_O q_f` for every feature
//! and earlier head is one product a layer, and each example is then a few dot products on
//! the host. Block-diagonal SAEs only (a dense SAE's feature reads every head, each through
//! its own pattern).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::build::Progress;
use super::format::{ExampleGroup, FeatureUpstream, HeadData, UPSTREAM_LISTED, UpstreamInfo};
use crate::files::host_vec;
use crate::live::{Writer, WriterSpread};
use crate::lm::transformer::Norm;
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

/// The most bytes the per-feature products through each earlier head's `W_O` may take
/// (features x earlier layers x heads x d_head floats); past it the split is left out and
/// the build says so.
pub const MAX_PRODUCT_BYTES: usize = 2 << 30;

/// The stage's name in the build's progress.
pub const STAGE: &str = "what wrote what each feature reads";

/// One top example to take apart: its feature (block, feature), target and source.
#[derive(Clone, Copy)]
struct Job {
    head: usize,
    feature: usize,
    target: usize,
    source: usize,
}

/// One example's split: each writer's part, in [`UpstreamInfo::writers`]' order, and each
/// earlier head's part read from the source itself and from BOS.
struct Split {
    parts: Vec<f32>,
    reading: Vec<[f32; 2]>,
}

/// Sums over a feature's examples, writer by writer (f64).
struct Sums {
    n: u32,
    sum: Vec<f64>,
    squares: Vec<f64>,
    min: Vec<f32>,
    max: Vec<f32>,
    reading: Vec<[f64; 2]>,
    dfa: f64,
}

impl Sums {
    fn new(writers: usize, heads: usize) -> Self {
        Self {
            n: 0,
            sum: vec![0.0; writers],
            squares: vec![0.0; writers],
            min: vec![f32::INFINITY; writers],
            max: vec![f32::NEG_INFINITY; writers],
            reading: vec![[0.0; 2]; heads],
            dfa: 0.0,
        }
    }

    fn add(&mut self, split: &Split) {
        self.n += 1;
        for (k, &v) in split.parts.iter().enumerate() {
            self.sum[k] += v as f64;
            self.squares[k] += (v as f64).powi(2);
            self.min[k] = self.min[k].min(v);
            self.max[k] = self.max[k].max(v);
        }
        for (r, x) in self.reading.iter_mut().zip(&split.reading) {
            r[0] += x[0] as f64;
            r[1] += x[1] as f64;
        }
        self.dfa += split.parts.iter().map(|&v| v as f64).sum::<f64>();
    }

    /// Every writer's spread, as `live::spread_of` gives it (the sd over n - 1).
    fn spread(&self, writers: &[Writer]) -> Vec<WriterSpread> {
        let n = self.n as f64;
        let mut head = 0;
        (writers.iter().enumerate())
            .map(|(k, &writer)| {
                let mean = self.sum[k] / n;
                let var = (self.squares[k] - n * mean * mean).max(0.0) / (n - 1.0).max(1.0);
                let reading = matches!(writer, Writer::Head { .. }).then(|| {
                    let [itself, bos] = self.reading[head].map(|x| x / n);
                    head += 1;
                    [itself, bos, mean - itself - bos].map(|x| x as f32)
                });
                WriterSpread {
                    writer,
                    mean: mean as f32,
                    sd: var.sqrt() as f32,
                    min: self.min[k],
                    max: self.max[k],
                    reading,
                }
            })
            .collect()
    }
}

/// Gives every feature with top examples its [`FeatureUpstream`]; `None` (nothing changed)
/// for a dense SAE, or where the products would pass [`MAX_PRODUCT_BYTES`] (said on
/// stderr). `head_data`'s windows are still the dashboard's indices into `windows`.
pub(super) fn add_upstream(
    head_data: &mut [HeadData],
    (loaded, sae): (&LoadedModel, &BlockDiagSae),
    (layer, z_convention): (usize, ZConvention),
    windows: &[Vec<u32>],
    per: usize,
    progress: Progress,
) -> anyhow::Result<Option<UpstreamInfo>> {
    let model = &loaded.transformer;
    let cfg = &model.config;
    let (nh, dh, dm) = (cfg.n_heads, cfg.d_head, cfg.d_model);
    let m = sae.config.features_per_head;
    if sae.config.n_heads != nh || sae.config.d_head != dh {
        return Ok(None);
    }
    let bytes = nh * m * layer * nh * dh * 4;
    if bytes > MAX_PRODUCT_BYTES {
        eprintln!(
            "what wrote what each feature reads: left out (its products through every earlier \
             head would take {:.1} GB, over {:.1} GB)",
            bytes as f64 / 1e9,
            MAX_PRODUCT_BYTES as f64 / 1e9
        );
        return Ok(None);
    }
    let f32s = |x: Tensor<1>| host_vec(x.cast(DType::F32));
    let block = &model.blocks[layer];

    // q_f for every feature, [nh m, dm]: its encoder column (times the head's input scale)
    // through its head's W_V, then the norm's weight, centred for LayerNorm.
    let gamma = match &block.norm1 {
        Norm::Layer { w, .. } | Norm::Rms { w, .. } => Some(f32s(w.clone())?),
        Norm::Identity => None,
    };
    let mut q = Vec::with_capacity(nh * m * dm);
    for head in 0..nh {
        let enc = sae.w_enc.clone().slice([head..head + 1, 0..dh, 0..m]);
        let enc = enc.reshape([dh, m]).cast(DType::F32) * sae.input_scale[head];
        let r = crate::live::w_v_of(model, layer, head).matmul(enc); // [dm, m]
        let r = host_vec(r.transpose())?;
        for row in r.chunks_exact(dm) {
            let mut row = row.to_vec();
            crate::live::back_through_norm(&block.norm1, gamma.as_deref(), 1.0, &mut row);
            q.extend(row);
        }
    }
    // The value's constant each feature reads where the DFA holds it, per unit of pattern.
    let mut constant = None;
    if crate::live::constant_kept(model, layer, z_convention) {
        let fold = match (&block.attn.z_fold, z_convention) {
            (Some(f), ZConvention::TransformerLens) => Some(host_vec(f.clone().cast(DType::F32))?),
            _ => None,
        };
        let w_enc = host_vec(sae.w_enc.clone())?;
        let mut per_feature = Vec::with_capacity(nh * m);
        for head in 0..nh {
            let Some(c) = crate::live::value_constant(model, layer, head) else {
                break;
            };
            let mut c = f32s(c)?;
            if let Some(f) = &fold {
                c.iter_mut().zip(&f[head * dh..]).for_each(|(x, b)| *x -= b);
            }
            let scale = sae.input_scale[head];
            per_feature.extend((0..m).map(|f| {
                (0..dh)
                    .map(|j| c[j] * w_enc[(head * dh + j) * m + f] * scale)
                    .sum::<f32>()
            }));
        }
        constant = (per_feature.len() == nh * m).then_some(per_feature);
    }
    // W_O q_f for every feature and earlier layer, [l][nh m, nh dh], and b_O . q_f.
    let q_t = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(q.clone(), [nh * m, dm]),
        model.device(),
    );
    let (mut through_o, mut b_o) = (Vec::with_capacity(layer), Vec::new());
    for l in 0..layer {
        let attn = &model.blocks[l].attn;
        let w_o = attn.w_o.clone().cast(DType::F32); // [nh dh, dm]
        through_o.push(host_vec(q_t.clone().matmul(w_o.transpose()))?);
        if let Some(b) = &attn.b_o {
            let b = b.clone().cast(DType::F32).reshape([dm, 1]);
            b_o.push(host_vec(q_t.clone().matmul(b))?);
        }
    }
    drop(q_t);

    // The writers, in `live::upstream_of`'s order.
    let embed_rows = model.embed_parts(0, 0).len();
    let mut writers: Vec<Writer> = [Writer::Embedding, Writer::Positions][..embed_rows].to_vec();
    let mlp: Vec<bool> = (0..layer).map(|l| model.blocks[l].mlp.is_some()).collect();
    for (l, &has_mlp) in mlp.iter().enumerate() {
        writers.extend((0..nh).map(|head| Writer::Head { layer: l, head }));
        if has_mlp {
            writers.push(Writer::Mlp { layer: l });
        }
    }
    if !b_o.is_empty() {
        writers.push(Writer::OutputBiases);
    }
    if constant.is_some() {
        writers.push(Writer::ValueBias);
    }

    // The top examples, by window, each from its largest attribution.
    let mut jobs: BTreeMap<u32, Vec<Job>> = BTreeMap::new();
    for (head, data) in head_data.iter().enumerate() {
        for (feature, fd) in data.features.iter().enumerate() {
            for e in (fd.examples.iter()).filter(|e| e.group == ExampleGroup::Top) {
                let Some((source, _)) = crate::live::dfa_argmax(&e.dfa) else {
                    continue;
                };
                jobs.entry(e.window).or_default().push(Job {
                    head,
                    feature,
                    target: e.target as usize,
                    source,
                });
            }
        }
    }
    let mut sums: HashMap<usize, Sums> = HashMap::new();
    let in_windows: Vec<u32> = jobs.keys().copied().collect();
    let t = windows.first().map_or(0, Vec::len);
    let norm = &block.norm1;
    for (c, batch) in in_windows.chunks(per.max(1)).enumerate() {
        progress(STAGE, c * per.max(1), in_windows.len());
        let tokens: Vec<Vec<u32>> = (batch.iter())
            .map(|&w| windows[w as usize].clone())
            .collect();
        let hooks = HookRequest {
            hook_z: (0..layer).collect(),
            pattern: (0..=layer).collect(),
            values: (0..layer).collect(),
            resid_post: (0..layer).collect(),
            z_convention: ZConvention::Raw,
            ..Default::default()
        };
        let mut cache = model.run(model.tokens(&tokens)?, &hooks, None)?;
        let take4 = |map: &mut BTreeMap<usize, Tensor<4>>, l: usize| {
            map.remove(&l).context("no hook").and_then(host_vec)
        };
        let (mut z, mut pattern, mut values, mut post) = (vec![], vec![], vec![], vec![]);
        for l in 0..layer {
            z.push(take4(&mut cache.hook_z, l)?);
            values.push(take4(&mut cache.values, l)?);
            pattern.push(take4(&mut cache.pattern, l)?);
            post.push(host_vec(
                cache.resid_post.remove(&l).context("no residual")?,
            )?);
        }
        let pattern_at = take4(&mut cache.pattern, layer)?;
        drop(cache);
        // The embeddings' rows at each source taken apart.
        let mut embeds: HashMap<(usize, usize), Vec<Vec<f32>>> = HashMap::new();
        for (b, &w) in batch.iter().enumerate() {
            for job in &jobs[&w] {
                if let std::collections::hash_map::Entry::Vacant(e) = embeds.entry((b, job.source))
                {
                    let rows = model.embed_parts(windows[w as usize][job.source], job.source);
                    e.insert(rows.into_iter().map(host_vec).collect::<Result<_, _>>()?);
                }
            }
        }
        let work: Vec<(usize, Job)> = (batch.iter().enumerate())
            .flat_map(|(b, w)| jobs[w].iter().map(move |&j| (b, j)))
            .collect();
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        let splits: Vec<Split> = work
            .par_iter()
            .map(|&(b, job)| {
                let (s, g) = (job.source, job.head * m + job.feature);
                let q = &q[g * dm..][..dm];
                let rows = &embeds[&(b, s)];
                let entering: Vec<f32> = match layer {
                    0 => (0..dm).map(|k| rows.iter().map(|r| r[k]).sum()).collect(),
                    _ => post[layer - 1][(b * t + s) * dm..][..dm].to_vec(),
                };
                let a = pattern_at[((b * nh + job.head) * t + job.target) * t + s];
                let c = a / crate::live::norm_scale(norm, &entering);
                let mut parts = Vec::with_capacity(writers.len());
                let mut reading = Vec::with_capacity(layer * nh);
                let mut before = 0f32;
                for r in rows {
                    let v = dot(r, q);
                    parts.push(c * v);
                    before += v;
                }
                for l in 0..layer {
                    let through = &through_o[l][g * nh * dh..][..nh * dh];
                    let z = &z[l][(b * t + s) * nh * dh..][..nh * dh];
                    let mut heads = 0f32;
                    for hh in 0..nh {
                        let u = &through[hh * dh..][..dh];
                        let v = dot(&z[hh * dh..][..dh], u);
                        heads += v;
                        parts.push(c * v);
                        let row = &pattern[l][((b * nh + hh) * t + s) * t..][..t];
                        let value_at = |p: usize| &values[l][((b * t + p) * nh + hh) * dh..][..dh];
                        let itself = row[s] * dot(value_at(s), u);
                        let bos = match s {
                            0 => 0.0,
                            _ => row[0] * dot(value_at(0), u),
                        };
                        reading.push([c * itself, c * bos]);
                    }
                    let after = dot(&post[l][(b * t + s) * dm..][..dm], q);
                    let bias = b_o.get(l).map_or(0.0, |x| x[g]);
                    if mlp[l] {
                        parts.push(c * (after - before - heads - bias));
                    }
                    before = after;
                }
                if !b_o.is_empty() {
                    parts.push(c * b_o.iter().map(|x| x[g]).sum::<f32>());
                }
                if let Some(k) = &constant {
                    parts.push(a * k[g]);
                }
                Split { parts, reading }
            })
            .collect();
        for ((_, job), split) in work.iter().zip(&splits) {
            (sums.entry(job.head * m + job.feature))
                .or_insert_with(|| Sums::new(writers.len(), layer * nh))
                .add(split);
        }
    }
    progress(STAGE, in_windows.len(), in_windows.len());
    for (g, s) in sums {
        let spread = s.spread(&writers);
        let (listed, rest) = crate::live::strongest_of(&spread, UPSTREAM_LISTED);
        head_data[g / m].features[g % m].upstream = Some(FeatureUpstream {
            examples: s.n,
            dfa: (s.dfa / s.n as f64) as f32,
            writers: listed.into_iter().cloned().collect(),
            rest,
        });
    }
    Ok(Some(UpstreamInfo { writers }))
}
