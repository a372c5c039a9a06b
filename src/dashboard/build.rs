//! Dashboard stage: the builder. Turns a trained SAE into per-feature and per-head
//! dashboards over held-out context windows, every feature of every head at once.
//!
//! Two passes, one LM forward:
//! 1. Per chunk of windows: the LM to the hooked layer (`hook_z`, attention pattern and
//!    value vectors); on the host, per head in parallel: the SAE's encoder on the head's
//!    `hook_z` (tiles of rows, `encode_head`), firing counts, sums and maxima,
//!    reconstruction sums (L0, explained variance), a bounded top-k list per feature
//!    (with the feature's activations along the window and DFA by source position at the
//!    example's own target, filled in for the entries a window leaves in the lists once
//!    the window is scanned), and each token's nonzero activations appended to a
//!    per-head spill file.
//! 2. Per head, reading its spill file back window by window (the maxima are now known):
//!    activation histograms and interval groups (equal-width bins of `(0, max]`; in each
//!    bin the `per_interval` active tokens with the smallest seeded hash key, which is a
//!    uniform sample that a brute-force pass reproduces exactly).
//!
//! Memory stays bounded in the number of tokens (top-k lists, interval samples and
//! histograms are per feature; the window token ids, 4 bytes per token, are kept for the
//! examples); the spill files hold 8 bytes per active (token, feature) and are deleted at
//! the end. Logit effects (`W_dec[f] / s . (W_O[h] . W_U)`) are one product per block of
//! features on the host, each row summarised as it comes.
//!
//! What pass 1 and the effect estimate read of the LM does not depend on the SAE: with
//! [`build_keeping`] it is kept in a directory (beside an activation cache) and read back
//! by the builds of other SAEs over the same windows ([`super::kept`]).
//!
//! DFA, exactly: with `x = s z`, `pre = x W_enc + b_enc` and `z_d = sum_s A[d, s] v_s`,
//! `DFA(d, s) = A[d, s] (s v_s . W_enc[:, f])`, so `sum_s DFA(d, s) + b_enc[f] = pre(d)`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use rayon::prelude::*;

use super::format::{
    COFIRING_K, COFIRING_MAX_ACTIVATIONS, COFIRING_MAX_PRODUCTS, COFIRING_MIN_TOKENS,
    CofiringLimit, Dashboard, DashboardMeta, Effects, Example, ExampleGroup, FeatureData, HeadData,
    HeadSummary, ModelInfo, SaeInfo, Settings,
};
use crate::files::host_vec;
use crate::lm::{HookRequest, LoadedModel, ZConvention};
use crate::run_log::History;
use crate::sae::{Architecture, BlockDiagSae};
use crate::train::fused_cpu::{from_total_order_key, total_order_key};

/// How the dashboards are built.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub top_k: usize,
    pub n_intervals: usize,
    pub per_interval: usize,
    pub histogram_bins: usize,
    pub logit_k: usize,
    pub seed: u64,
    /// Count BOS positions as tokens (and show them as examples). End-of-text tokens are
    /// never counted.
    pub keep_bos: bool,
    /// Context windows per LM forward pass.
    pub windows_per_forward: usize,
    /// Where the spill files go (a temp directory is made inside and removed after).
    pub scratch_dir: PathBuf,
    /// Estimate each feature's effect on the loss over the first windows holding this many
    /// tokens (`live::rank_features_over`; one backward pass a window); 0: not at all.
    pub effect_tokens: usize,
    /// Give the interval groups' examples their DFA too (pass 3: their windows' patterns and
    /// values from the kept LM outputs where the build keeps them, else the model run
    /// again); the top examples always have it.
    pub interval_dfa: bool,
    /// Past how many active (token, feature) pairs kept, or products of activations to
    /// sum, the co-firing lists take fewer batches of windows, spread over them
    /// ([`COFIRING_MAX_ACTIVATIONS`], [`COFIRING_MAX_PRODUCTS`]).
    pub cofiring_limits: (usize, u64),
    /// Take each top example's DFA from its largest source apart by what wrote the residual
    /// stream there, and give each feature the writers' spread over its examples
    /// ([`super::upstream`]; the windows holding top examples run through the model again).
    pub upstream: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            top_k: 20,
            n_intervals: 10,
            per_interval: 5,
            histogram_bins: 50,
            logit_k: 10,
            seed: 0,
            keep_bos: false,
            windows_per_forward: 8,
            scratch_dir: std::env::temp_dir(),
            effect_tokens: super::DEFAULT_EFFECT_TOKENS,
            interval_dfa: false,
            cofiring_limits: (COFIRING_MAX_ACTIVATIONS, COFIRING_MAX_PRODUCTS),
            upstream: false,
        }
    }
}

/// What the dashboards are built from.
pub struct BuildInputs<'a> {
    pub loaded: &'a LoadedModel,
    pub sae: &'a BlockDiagSae,
    pub layer: usize,
    pub z_convention: ZConvention,
    /// Held-out context windows, all of one length.
    pub windows: Vec<Vec<u32>>,
    /// Where the windows come from, in words (recorded in the file).
    pub windows_from: String,
    pub sae_source: String,
    pub run_config: Option<serde_json::Value>,
    pub history: History,
    /// The run's last metrics per head, if any: `(l0, explained variance, dead)`.
    pub run_heads: Option<Vec<(f64, f64, usize)>>,
    /// The run's last CE loss score per head, if any.
    pub ce_scores: Option<Vec<f64>>,
    /// The model's and SAE's files ([`super::built_from`]).
    pub built_from: Option<super::format::BuiltFrom>,
}

/// Progress of a build: `(phase, done, total)`.
pub type Progress<'p> = &'p mut dyn FnMut(&str, usize, usize);

use super::dfa::{dfa_by_head, dfa_from_products, part_sums, sum_parts};
use super::kept::{Kept, KeptKey};
use super::sources;

/// The seeded hash key of an active (token, feature): interval groups keep the smallest.
pub fn sample_key(seed: u64, token: u64, head: usize, feature: usize) -> u64 {
    let mut x = seed
        ^ token.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((head as u64) << 40 | feature as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    // splitmix64 finaliser
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The interval-group bin of an activation `a > 0` given the feature's maximum.
pub fn interval_bin(a: f32, max: f32, n: usize) -> usize {
    (((a / max) * n as f32) as usize).min(n - 1)
}

/// One candidate example while building.
#[derive(Clone)]
struct Candidate {
    activation: f32,
    /// Global token index: `window * context + position`.
    token: u64,
    activations: Vec<(u16, f32)>,
    dfa: Vec<f32>,
    /// A dense block's DFA summed over the sources, by model head (empty otherwise).
    dfa_by_head: Vec<f32>,
}

impl Candidate {
    /// Order of preference: higher activation, then earlier token.
    fn better_than(&self, other: &Candidate) -> bool {
        self.activation > other.activation
            || (self.activation == other.activation && self.token < other.token)
    }
}

/// The least preferred entry of a non-empty list.
fn worst_index(list: &[Candidate]) -> usize {
    let mut worst = 0;
    for (i, c) in list.iter().enumerate().skip(1) {
        if list[worst].better_than(c) {
            worst = i;
        }
    }
    worst
}

/// How one head's pre-activations become activations on the host.
#[derive(Clone, Copy)]
enum HostActivation<'a> {
    Relu,
    /// Each feature's threshold `exp(log_threshold)`, [m].
    Jump(&'a [f32]),
    TopK(usize),
    BatchTopK(usize),
    /// BatchTopK with its inference thresholds, [m]: ReLU at or above each.
    AtLeast(&'a [f32]),
}

/// One head's encoder parameters on the host.
struct HeadEncoder<'a> {
    /// [d, m]
    w_enc: &'a [f32],
    /// [m]
    b_enc: &'a [f32],
    act: HostActivation<'a>,
}

/// One head's activations `[n, m]` on its inputs `x_h` `[n, d]`, written into `out`, as
/// `BlockDiagSae::encode` makes them: the encoder product (gemm, as burn's CPU backend
/// takes it), plus the bias, then the activation, in f32. Tiles of rows are finished
/// while they are in cache; BatchTopK's threshold, over the whole chunk, comes after.
fn encode_head(
    x_h: &[f32],
    d: usize,
    enc: &HeadEncoder,
    out: &mut Vec<f32>,
    scratch: &mut Vec<i32>,
) {
    const TILE: usize = 64;
    let m = enc.b_enc.len();
    let n = x_h.len() / d;
    out.resize(n * m, 0.0);
    let relu = |row: &mut [f32]| {
        for v in row {
            *v = if *v > 0.0 { *v } else { 0.0 };
        }
    };
    for r0 in (0..n).step_by(TILE) {
        let rows = TILE.min(n - r0);
        let tile = &mut out[r0 * m..(r0 + rows) * m];
        crate::train::fused_cpu::matmul(
            rows,
            m,
            d,
            tile,
            false,
            &x_h[r0 * d..(r0 + rows) * d],
            (d, 1),
            enc.w_enc,
            (m, 1),
        );
        for row in tile.chunks_exact_mut(m) {
            for (v, &b) in row.iter_mut().zip(enc.b_enc) {
                *v += b;
            }
            match enc.act {
                HostActivation::Relu => relu(row),
                HostActivation::Jump(theta) => {
                    for (v, &t) in row.iter_mut().zip(theta) {
                        *v = if *v > t { *v } else { 0.0 };
                    }
                }
                HostActivation::TopK(k) => {
                    let kth = crate::train::fused_cpu::kth_largest(row, k.min(m), scratch);
                    for v in row.iter_mut() {
                        *v = if *v >= kth { *v } else { 0.0 };
                    }
                    relu(row);
                }
                HostActivation::AtLeast(cut) => {
                    for (v, &t) in row.iter_mut().zip(cut) {
                        *v = if *v >= t { v.max(0.0) } else { 0.0 };
                    }
                }
                HostActivation::BatchTopK(_) => {}
            }
        }
    }
    if let HostActivation::BatchTopK(k) = enc.act {
        let kth = crate::train::fused_cpu::kth_largest(out, (k * n).min(n * m), scratch);
        for v in out.iter_mut() {
            *v = if *v >= kth { *v } else { 0.0 };
        }
        relu(out);
    }
}

/// Per-head state of pass 1.
struct HeadPass1 {
    counts: Vec<u64>,
    max: Vec<f32>,
    top: Vec<Vec<Candidate>>,
    /// Activation of the worst entry of each full top-k list (-inf while not full).
    top_floor: Vec<f32>,
    /// Squared residual, sum of x, sum of ||x||^2 over counted tokens.
    resid: f64,
    sum_x: Vec<f64>,
    sum_sq: f64,
    spill: BufWriter<std::fs::File>,
    spill_path: PathBuf,
    /// The chunk's activations of this head, [n, m], and selection scratch (reused).
    feats: Vec<f32>,
    scratch: Vec<i32>,
    /// Attention from the counted tokens (past position 0) by kind of source, and their
    /// number ([`sources::add_attention`]).
    attention: [f64; 6],
    attention_rows: u64,
}

/// One chunk's host arrays.
struct Chunk<'c> {
    /// [H, n, d] SAE input.
    x: &'c [f32],
    /// [b, H, T, T]
    pattern: &'c [f32],
    /// [b, T, H, d]
    values: &'c [f32],
    /// The n token ids, window after window.
    tokens: &'c [u32],
    /// Whether each of the n tokens counts.
    counted: &'c [bool],
    /// Global index of the chunk's first token.
    first_token: u64,
}

struct Dims {
    /// SAE blocks, and the width of each.
    h: usize,
    d: usize,
    m: usize,
    t: usize,
    /// Model heads per SAE block: 1 for a block-diagonal SAE, every head for a dense one
    /// (whose block reads the heads' hook_z side by side, `d = heads x d_head`).
    per_block: usize,
}

impl HeadPass1 {
    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        head: usize,
        chunk: &Chunk,
        dims: &Dims,
        enc: &HeadEncoder,
        decoder: (&[f32], &[f32]),
        scale: f32,
        top_k: usize,
    ) -> std::io::Result<()> {
        let d = dims.d;
        let n = chunk.counted.len();
        let x_h = &chunk.x[head * n * d..(head + 1) * n * d];
        let mut feats = std::mem::take(&mut self.feats);
        encode_head(x_h, d, enc, &mut feats, &mut self.scratch);
        let result = self.walk(head, chunk, dims, &feats, enc.w_enc, decoder, scale, top_k);
        self.feats = feats;
        let (h, t) = (dims.h, dims.t);
        // Where a head attends is the block's own summary only when the block is one head.
        if dims.per_block != 1 {
            return result;
        }
        for (w, window) in chunk.tokens.chunks(t).enumerate() {
            for target in (1..t).filter(|&p| chunk.counted[w * t + p]) {
                let row = &chunk.pattern[((w * h + head) * t + target) * t..][..t];
                sources::add_attention(window, row, target, &mut self.attention);
                self.attention_rows += 1;
            }
        }
        result
    }

    /// Pass 1 over one head's activations `feats_h` [n, m] of a chunk, window by window.
    /// Top-list entries are made with the activation and token alone; once a window is
    /// scanned, the entries it left in the lists get their activation rows (from the
    /// window's actives sorted by feature) and DFA (one product for all of them,
    /// [`Self::fill_window`]).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        head: usize,
        chunk: &Chunk,
        dims: &Dims,
        feats_h: &[f32],
        w_enc_h: &[f32],
        decoder: (&[f32], &[f32]),
        scale: f32,
        top_k: usize,
    ) -> std::io::Result<()> {
        let Dims { d, m, t, .. } = *dims;
        let n = chunk.counted.len();
        let x_h = &chunk.x[head * n * d..(head + 1) * n * d];
        // The reconstruction is summed on the host over the token's active features only
        // (for explained variance): W_dec [m, d] and b_dec [d] of this head.
        let (w_dec_h, b_dec_h) = decoder;
        let mut recon = vec![0f64; d];
        let mut record: Vec<u8> = Vec::new();
        // This window's actives (feature, position, activation) and the features whose
        // lists took one of its tokens.
        let mut actives: Vec<(u32, u16, f32)> = Vec::new();
        let mut entered: Vec<u32> = Vec::new();
        for w in 0..n / t {
            actives.clear();
            entered.clear();
            for p in 0..t {
                let i = w * t + p;
                record.clear();
                if !chunk.counted[i] {
                    self.spill.write_all(&0u32.to_le_bytes())?;
                    continue;
                }
                for (r, &b) in recon.iter_mut().zip(b_dec_h) {
                    *r = b as f64;
                }
                let row = &feats_h[i * m..(i + 1) * m];
                let mut active = 0u32;
                for (f, &a) in row.iter().enumerate() {
                    if a <= 0.0 {
                        continue;
                    }
                    active += 1;
                    for (r, &w) in recon.iter_mut().zip(&w_dec_h[f * d..(f + 1) * d]) {
                        *r += a as f64 * w as f64;
                    }
                    record.extend_from_slice(&(f as u32).to_le_bytes());
                    record.extend_from_slice(&a.to_le_bytes());
                    actives.push((f as u32, p as u16, a));
                    self.counts[f] += 1;
                    if a > self.max[f] {
                        self.max[f] = a;
                    }
                    // A full list takes only a strictly higher activation: ties go to the
                    // earlier token, already in the list.
                    if a <= self.top_floor[f] {
                        continue;
                    }
                    let list = &mut self.top[f];
                    let cand = Candidate {
                        activation: a,
                        token: chunk.first_token + i as u64,
                        activations: Vec::new(),
                        dfa: Vec::new(),
                        dfa_by_head: Vec::new(),
                    };
                    if list.len() < top_k {
                        list.push(cand);
                    } else {
                        let worst = worst_index(list);
                        list[worst] = cand;
                    }
                    if list.len() == top_k {
                        self.top_floor[f] = list[worst_index(list)].activation;
                    }
                    entered.push(f as u32);
                }
                let xi = &x_h[i * d..(i + 1) * d];
                for ((&x, &r), sum) in xi.iter().zip(&recon).zip(&mut self.sum_x) {
                    let x = x as f64;
                    self.resid += (x - r) * (x - r);
                    *sum += x;
                    self.sum_sq += x * x;
                }
                self.spill.write_all(&active.to_le_bytes())?;
                self.spill.write_all(&record)?;
            }
            if !entered.is_empty() {
                entered.sort_unstable();
                entered.dedup();
                self.fill_window(head, chunk, dims, w, &actives, &entered, w_enc_h, scale);
            }
        }
        Ok(())
    }

    /// Gives the top-list entries window `w` left (in the lists of `entered`) their
    /// activation rows and DFA by source position: `A[target, s] * scale * (v_s .
    /// W_enc[:, f])`, the products `v_s . W_enc[:, f]` for every source and entry at once.
    #[allow(clippy::too_many_arguments)]
    fn fill_window(
        &mut self,
        head: usize,
        chunk: &Chunk,
        dims: &Dims,
        w: usize,
        actives: &[(u32, u16, f32)],
        entered: &[u32],
        w_enc_h: &[f32],
        scale: f32,
    ) {
        let Dims { h, d, m, t, .. } = *dims;
        let first = chunk.first_token + (w * t) as u64;
        let in_window = |c: &Candidate| (first..first + t as u64).contains(&c.token);
        // The window's actives by feature, positions in order.
        let (start, by_feature) =
            crate::train::fused_cpu::group_by_feature(actives, m, |&(f, p, a)| {
                (f as usize, (p, a))
            });
        // The entries to fill: (feature, index in its list, target).
        let mut jobs: Vec<(usize, usize, usize)> = Vec::new();
        for &f in entered {
            let f = f as usize;
            for (j, c) in self.top[f].iter().enumerate() {
                if in_window(c) {
                    jobs.push((f, j, (c.token - first) as usize));
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        // Per model head `g` of the block: u[s, j] = v_s . W_enc[g's rows, f_j] for s up to
        // the last target, [rows, c]; each entry's DFA sums `A_g[target, s] * scale * u`
        // over the block's heads (one head for a block-diagonal SAE).
        let c = jobs.len();
        let rows = jobs.iter().map(|j| j.2).max().unwrap_or(0) + 1;
        let r = dims.per_block;
        let (dm, hm) = (d / r, h * r);
        let mut enc_cols = vec![0f32; c * dm];
        let mut u = vec![0f32; rows * c];
        for g in 0..r {
            let mh = head * r + g;
            for (col, &(f, _, _)) in enc_cols.chunks_exact_mut(dm).zip(&jobs) {
                for (k, e) in col.iter_mut().enumerate() {
                    *e = w_enc_h[(g * dm + k) * m + f];
                }
            }
            let values = &chunk.values[(w * t * hm + mh) * dm..];
            crate::train::fused_cpu::matmul(
                rows,
                c,
                dm,
                &mut u,
                false,
                values,
                (hm * dm, 1),
                &enc_cols,
                (1, dm),
            );
            for (j, &(f, slot, target)) in jobs.iter().enumerate() {
                let pattern = &chunk.pattern[((w * hm + mh) * t + target) * t..][..t];
                let dfa = dfa_from_products(pattern, |s| u[s * c + j], scale, target);
                let entry = &mut self.top[f][slot];
                if g == 0 {
                    entry.dfa_by_head.clear();
                }
                if r > 1 {
                    entry.dfa_by_head.push(dfa.iter().sum());
                }
                if g == 0 {
                    entry.dfa = dfa;
                } else {
                    entry.dfa.iter_mut().zip(dfa).for_each(|(a, b)| *a += b);
                }
            }
        }
        for &(f, slot, _) in &jobs {
            let entry = &mut self.top[f][slot];
            let range = start[f] as usize..start[f + 1] as usize;
            entry.activations = by_feature[range].to_vec();
        }
    }
}

/// Pass 3: gives every interval-group example its DFA by source position, as the top
/// examples have it ([`HeadPass1::fill_window`]: `A[target, s] * scale * (v_s . W_enc[:,
/// f])`, summed over a dense block's heads). Interval examples are drawn after the scan (the
/// bins are fractions of each feature's maximum), so the layer's pattern and values of the
/// windows that hold one are taken again, scan pass by scan pass: from the pass's file where
/// `kept` holds the LM's outputs, else from the model run again on those windows.
fn add_interval_dfa(
    head_data: &mut [HeadData],
    inputs: &BuildInputs,
    dims: &Dims,
    w_enc: &[f32],
    (opts, kept): (&BuildOptions, &Kept),
    progress: Progress,
) -> anyhow::Result<()> {
    let Dims { h, d, m, t, .. } = *dims;
    let r = dims.per_block;
    let (dm, hm) = (d / r, h * r);
    // Window -> its interval examples, `(head, feature, index among the feature's)`.
    let mut jobs: BTreeMap<u32, Vec<(usize, usize, usize)>> = BTreeMap::new();
    for (head, data) in head_data.iter().enumerate() {
        for (f, feature) in data.features.iter().enumerate() {
            for (i, e) in feature.examples.iter().enumerate() {
                if matches!(e.group, ExampleGroup::Interval(_)) {
                    jobs.entry(e.window).or_default().push((head, f, i));
                }
            }
        }
    }
    let model = &inputs.loaded.transformer;
    let (layer, scale) = (inputs.layer, &inputs.sae.input_scale);
    let (mh, md) = (model.config.n_heads, model.config.d_head);
    let per = opts.windows_per_forward.max(1);
    // The windows with their interval examples' DFA from `pattern` `[b, H, t, t]` and
    // `values` `[b, t, H, d_head]`, at the rows `at` gives.
    let fill =
        |head_data: &mut [HeadData], at: &[(u32, usize)], pattern: &[f32], values: &[f32]| {
            let work: Vec<(usize, usize, usize, usize)> = (at.iter())
                .flat_map(|&(w, b)| jobs[&w].iter().map(move |&(head, f, i)| (b, head, f, i)))
                .collect();
            let data: &[HeadData] = head_data;
            let dfas: Vec<(Vec<f32>, Vec<f32>)> = work
                .par_iter()
                .map(|&(b, head, f, i)| {
                    let target = data[head].features[f].examples[i].target as usize;
                    let parts = dfa_by_head(
                        w_enc,
                        (head, f, m),
                        (r, dm),
                        |mh| &pattern[((b * hm + mh) * t + target) * t..][..t],
                        |mh, s| &values[((b * t + s) * hm + mh) * dm..][..dm],
                        scale[head],
                        target,
                    );
                    (sum_parts(&parts, target + 1), part_sums(&parts))
                })
                .collect();
            for (&(_, head, f, i), (dfa, by_head)) in work.iter().zip(dfas) {
                let e = &mut head_data[head].features[f].examples[i];
                e.dfa = dfa;
                e.dfa_by_head = by_head;
            }
        };
    let (n_windows, mut done) = (jobs.len(), 0);
    const STAGE: &str = "attribution of the interval groups";
    // Scan pass by scan pass from its kept file, where `kept` holds them; the other windows
    // through the model again, `windows_per_forward` at a time.
    let mut by_pass: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for &w in jobs.keys() {
        by_pass.entry(w as usize / per).or_default().push(w);
    }
    let mut from_lm: Vec<u32> = Vec::new();
    for (pass, in_it) in by_pass {
        let rows = per.min(inputs.windows.len() - pass * per);
        let shapes = [
            ("pattern", vec![rows, mh, t, t]),
            ("values", vec![rows, t, mh, md]),
        ];
        match kept.saved(&format!("scan-{pass:05}"), &shapes).as_deref() {
            Some([pattern, values]) => {
                progress(STAGE, done, n_windows);
                let at: Vec<(u32, usize)> = in_it
                    .iter()
                    .map(|&w| (w, w as usize - pass * per))
                    .collect();
                fill(head_data, &at, pattern, values);
                done += at.len();
            }
            _ => from_lm.extend(in_it),
        }
    }
    for batch in from_lm.chunks(per) {
        progress(STAGE, done, n_windows);
        let tokens: Vec<Vec<u32>> = (batch.iter())
            .map(|&w| inputs.windows[w as usize].clone())
            .collect();
        let hooks = HookRequest {
            pattern: vec![layer],
            values: vec![layer],
            z_convention: inputs.z_convention,
            ..Default::default()
        };
        let mut cache = model.run(model.tokens(&tokens)?, &hooks, None)?;
        let pattern = host_vec(cache.pattern.remove(&layer).context("no pattern")?)?;
        let values = host_vec(cache.values.remove(&layer).context("no values")?)?;
        let at: Vec<(u32, usize)> = batch.iter().enumerate().map(|(b, &w)| (w, b)).collect();
        fill(head_data, &at, &pattern, &values);
        done += batch.len();
    }
    progress(STAGE, n_windows, n_windows);
    Ok(())
}

/// Which features fire together: each counted token's active features, batch of windows
/// by batch, from which [`Cofiring::top`] sums the products of the pairs that fired
/// together. Pairs that never did have a negative correlation, so a sparse sum loses none
/// that count. Where the next batch would pass [`BuildOptions::cofiring_limits`], it keeps
/// every other batch of those it holds and takes every other one from then on (doubling
/// the stride as often as needed), so the lists are over batches spread evenly over the
/// dashboard's windows rather than over its first ones, and it says why. If the first batch
/// alone passes the limits there are no lists (a later one that does is not taken, and the
/// stride doubles past it).
struct Cofiring {
    total: usize,
    /// The batches kept, by index.
    kept: Vec<CofiringBatch>,
    /// Batches taken: those whose index is a multiple of this.
    every: usize,
    limits: (usize, u64),
    /// The limit a batch would have passed, once one would have.
    full: Option<String>,
}

/// One batch of windows' counted tokens in [`Cofiring`].
struct CofiringBatch {
    /// The batch's place among the dashboard's.
    index: usize,
    /// Each token's end in `actives`.
    ends: Vec<usize>,
    /// The active (feature, activation) pairs, token after token.
    actives: Vec<(u32, f32)>,
    /// The products of activations they add.
    products: u64,
}

impl Cofiring {
    fn new(total: usize, limits: (usize, u64)) -> Self {
        Self {
            limits,
            total,
            kept: Vec::new(),
            every: 1,
            full: None,
        }
    }

    /// The first batch passed the limits alone: no lists. (Once one is held, the first
    /// always is.)
    fn given_up(&self) -> bool {
        self.full.is_some() && self.kept.is_empty()
    }

    /// The active (token, feature) pairs held.
    fn held(&self) -> usize {
        self.kept.iter().map(|k| k.actives.len()).sum()
    }

    /// The tokens taken.
    fn tokens(&self) -> u64 {
        self.kept.iter().map(|k| k.ends.len() as u64).sum()
    }

    /// The record of a limit reached, if one was.
    fn limit(&self, windows_per_batch: usize) -> Option<CofiringLimit> {
        self.full.clone().map(|why| CofiringLimit {
            tokens: self.tokens(),
            why,
            every: self.every as u64,
            windows_per_batch: windows_per_batch as u64,
        })
    }

    /// Batch `index`'s counted tokens, from every block's activations `[n, m]`, if the
    /// stride takes it.
    fn add(&mut self, index: usize, feats: &[&[f32]], counted: &[bool], m: usize) {
        if self.given_up() || !index.is_multiple_of(self.every) {
            return;
        }
        let (mut actives, mut ends, mut products) = (Vec::new(), Vec::new(), 0u64);
        for (i, _) in counted.iter().enumerate().filter(|c| *c.1) {
            let from = actives.len();
            for (block, f) in feats.iter().enumerate() {
                let row = &f[i * m..(i + 1) * m];
                let on = row.iter().enumerate().filter(|(_, v)| **v > 0.0);
                actives.extend(on.map(|(j, &v)| ((block * m + j) as u32, v)));
            }
            let active = (actives.len() - from) as u64;
            products += active * active;
            ends.push(actives.len());
        }
        loop {
            let summed: u64 = self.kept.iter().map(|k| k.products).sum();
            let why = if self.held() + actives.len() > self.limits.0 {
                format!(
                    "more than {} active (token, feature) pairs to keep",
                    self.limits.0
                )
            } else if summed + products > self.limits.1 {
                format!(
                    "more than {:.0e} products of activations to sum",
                    self.limits.1 as f64
                )
            } else {
                self.kept.push(CofiringBatch {
                    index,
                    ends,
                    actives,
                    products,
                });
                return;
            };
            self.full = Some(why);
            if self.kept.is_empty() {
                return;
            }
            self.every *= 2;
            let every = self.every;
            self.kept.retain(|k| k.index.is_multiple_of(every));
            if !index.is_multiple_of(every) {
                return;
            }
        }
    }

    /// Each feature's [`COFIRING_K`] features of highest positive Pearson correlation over
    /// the tokens taken (ties by index), among the features that fired on at least
    /// [`COFIRING_MIN_TOKENS`] tokens (two that fired once, on the same token, correlate
    /// fully and say nothing); none for a feature that fired on fewer.
    fn top(self, progress: Progress) -> Vec<Vec<(u32, f32)>> {
        let n = self.tokens().max(1) as f64;
        // The batches' tokens one after another: each token's pairs are
        // `actives[offsets[t]..offsets[t + 1]]`.
        let (mut offsets, mut actives) = (vec![0usize], Vec::with_capacity(self.held()));
        for batch in self.kept {
            let base = actives.len();
            offsets.extend(batch.ends.iter().map(|e| base + e));
            actives.extend(batch.actives);
        }
        let (mut count, mut sum, mut sum_sq) = (
            vec![0u64; self.total],
            vec![0f64; self.total],
            vec![0f64; self.total],
        );
        for &(a, v) in &actives {
            let (a, v) = (a as usize, v as f64);
            count[a] += 1;
            sum[a] += v;
            sum_sq[a] += v * v;
        }
        let stats: Vec<(f64, f64)> = (0..self.total)
            .map(|a| match count[a] >= COFIRING_MIN_TOKENS {
                true => {
                    let mean = sum[a] / n;
                    (mean, (sum_sq[a] / n - mean * mean).max(0.0).sqrt())
                }
                false => (0.0, 0.0),
            })
            .collect();
        // Each feature's tokens (index into `offsets`) and activations, by counting sort.
        let mut starts = Vec::with_capacity(self.total + 1);
        starts.push(0usize);
        for &c in &count {
            starts.push(starts.last().unwrap() + c as usize);
        }
        let mut fill = starts.clone();
        let mut by_feature = vec![(0u32, 0f32); actives.len()];
        for (token, w) in offsets.windows(2).enumerate() {
            for &(a, v) in &actives[w[0]..w[1]] {
                by_feature[fill[a as usize]] = (token as u32, v);
                fill[a as usize] += 1;
            }
        }
        drop(fill);
        // In chunks of features, to show progress.
        const STAGE: &str = "features that fire together";
        const CHUNK: usize = 2048;
        let mut lists = Vec::with_capacity(self.total);
        for from in (0..self.total).step_by(CHUNK) {
            progress(STAGE, from, self.total);
            let chunk = (from..(from + CHUNK).min(self.total)).into_par_iter();
            lists.par_extend(chunk.map_init(
                || (vec![0f64; self.total], Vec::<u32>::new()),
                |(cross, touched), a| {
                    let (ma, sa) = stats[a];
                    if sa <= 0.0 {
                        return Vec::new();
                    }
                    for &(token, va) in &by_feature[starts[a]..starts[a + 1]] {
                        let token = token as usize;
                        let row = &actives[offsets[token]..offsets[token + 1]];
                        for &(b, vb) in row {
                            let c = &mut cross[b as usize];
                            if *c == 0.0 {
                                touched.push(b);
                            }
                            *c += va as f64 * vb as f64;
                        }
                    }
                    touched.sort_unstable();
                    let mut best: Vec<(u32, f32)> = Vec::with_capacity(COFIRING_K + 1);
                    for &b in touched.iter() {
                        let c = std::mem::take(&mut cross[b as usize]);
                        let (mb, sb) = stats[b as usize];
                        if b as usize == a || sb <= 0.0 {
                            continue;
                        }
                        let r = ((c / n - ma * mb) / (sa * sb)) as f32;
                        if r <= 0.0 || (best.len() == COFIRING_K && r <= best[COFIRING_K - 1].1) {
                            continue;
                        }
                        let at = best.partition_point(|&(_, q)| q >= r);
                        best.insert(at, (b, r));
                        best.truncate(COFIRING_K);
                    }
                    touched.clear();
                    best
                },
            ));
        }
        progress(STAGE, self.total, self.total);
        lists
    }
}

/// Per-head results of pass 2.
struct HeadPass2 {
    histograms: Vec<Vec<u32>>,
    interval_counts: Vec<Vec<u32>>,
    /// Per feature, per bin: up to `per_interval` (key, candidate), any order.
    samples: Vec<Vec<Vec<(u64, Candidate)>>>,
}

/// Reads one token's record from a spill file.
fn read_record(r: &mut impl Read, out: &mut Vec<(u32, f32)>) -> std::io::Result<()> {
    let mut b4 = [0u8; 4];
    r.read_exact(&mut b4)?;
    let n = u32::from_le_bytes(b4) as usize;
    out.clear();
    let mut buf = vec![0u8; n * 8];
    r.read_exact(&mut buf)?;
    for c in buf.chunks_exact(8) {
        let f = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let a = f32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        out.push((f, a));
    }
    Ok(())
}

fn pass2(
    path: &Path,
    head: usize,
    n_windows: usize,
    max: &[f32],
    dims: &Dims,
    opts: &BuildOptions,
) -> anyhow::Result<HeadPass2> {
    let (m, t) = (dims.m, dims.t);
    let (bins, ni, per) = (opts.histogram_bins, opts.n_intervals, opts.per_interval);
    let mut out = HeadPass2 {
        histograms: vec![vec![0; bins]; m],
        interval_counts: vec![vec![0; ni]; m],
        samples: vec![vec![Vec::new(); ni]; m],
    };
    let mut reader = BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut window: Vec<Vec<(u32, f32)>> = vec![Vec::new(); t];
    for w in 0..n_windows {
        for rec in window.iter_mut() {
            read_record(&mut reader, rec).with_context(|| format!("reading {}", path.display()))?;
        }
        for (p, rec) in window.iter().enumerate() {
            let token = (w * t + p) as u64;
            for &(f, a) in rec {
                let f = f as usize;
                let mx = max[f];
                out.histograms[f][interval_bin(a, mx, bins)] += 1;
                let bin = interval_bin(a, mx, ni);
                out.interval_counts[f][bin] += 1;
                let key = sample_key(opts.seed, token, head, f);
                let sample = &mut out.samples[f][bin];
                let worst = (sample.len() == per)
                    .then(|| (0..per).max_by_key(|&q| sample[q].0).unwrap_or(0));
                if let Some(wi) = worst
                    && sample[wi].0 <= key
                {
                    continue;
                }
                let activations = window
                    .iter()
                    .enumerate()
                    .filter_map(|(q, r)| {
                        r.binary_search_by_key(&(f as u32), |x| x.0)
                            .ok()
                            .map(|j| (q as u16, r[j].1))
                    })
                    .collect();
                let cand = Candidate {
                    activation: a,
                    token,
                    activations,
                    dfa: Vec::new(),
                    dfa_by_head: Vec::new(),
                };
                match worst {
                    Some(wi) => sample[wi] = (key, cand),
                    None => sample.push((key, cand)),
                }
            }
        }
    }
    Ok(out)
}

/// Logit effects of one head's features (`w_dec_h`, its `[m, d]` decoder rows on the host):
/// top and bottom `k` tokens (ties by id), a histogram over the vocabulary and its range.
///
/// `(W_dec[f] / s) W_O[h] W_U` is taken as `(W_dec[f] / s) (W_O[h] W_U)`: the head's
/// `[d_head, vocab]` product once (on the device), then `m x d_head x vocab`
/// multiply-adds on the host instead of `m x d_model x vocab` (12x fewer at gpt2-small's
/// 64 vs 768), in blocks of rows that each thread summarises from its own reused buffer
/// (nothing of `[m, vocab]` is allocated or read back).
#[allow(clippy::type_complexity)]
fn logit_effects(
    inputs: &BuildInputs,
    head: usize,
    w_dec_h: &[f32],
    opts: &BuildOptions,
) -> anyhow::Result<Vec<(Vec<(u32, f32)>, Vec<(u32, f32)>, Vec<u32>, (f32, f32))>> {
    const ROWS: usize = 64;
    let model = &inputs.loaded.transformer;
    let sae = inputs.sae;
    let d = sae.config.d_head;
    let vocab = model.config.d_vocab;
    let k = opts.logit_k.min(vocab);
    let bins = opts.histogram_bins;
    // The head's W_dec [m, d] in hook_z units.
    let scale = sae.input_scale[head];
    let w_dec: Vec<f32> = w_dec_h.iter().map(|w| w / scale).collect();
    // [d, vocab]: what a unit of the block's z does to the logits (its heads' W_O rows
    // stacked: the whole W_O for a dense SAE).
    let r = model.config.n_heads / sae.config.n_heads;
    let w_o = (0..r)
        .map(|g| model.w_o_head(inputs.layer, head * r + g))
        .collect::<Result<Vec<_>, _>>()?;
    let head_logits = host_vec(burn::prelude::Tensor::cat(w_o, 0).matmul(model.unembed()))?;
    let blocks: Vec<Vec<_>> = w_dec
        .par_chunks(ROWS * d)
        .map_init(Vec::new, |logits: &mut Vec<f32>, rows| {
            let n = rows.len() / d;
            logits.resize(n * vocab, 0.0);
            crate::train::fused_cpu::matmul(
                n,
                vocab,
                d,
                logits,
                false,
                rows,
                (d, 1),
                &head_logits,
                (vocab, 1),
            );
            logits
                .chunks_exact(vocab)
                .map(|row| summarise_logits(row, k, bins))
                .collect()
        })
        .collect();
    Ok(blocks.into_iter().flatten().collect())
}

/// Keeps in `list` (sorted best first, at most `k`) the best entries seen so far, where
/// `key` orders them (higher is better) and, on equal keys, the lower id (seen first)
/// wins.
fn keep_best(list: &mut Vec<(i32, u32)>, k: usize, key: i32, id: u32) {
    if list.len() == k && list.last().is_none_or(|&(worst, _)| key <= worst) {
        return;
    }
    let at = list.partition_point(|&(other, _)| other >= key);
    list.insert(at, (key, id));
    list.truncate(k);
}

/// Top and bottom `k` entries of a logit row (ties broken by the lower id, order as
/// `f32::total_cmp`), a `bins`-bin histogram over `[min, max]` and that range.
///
/// One pass keeps the running top and bottom `k` and the range, a block of entries at a
/// time: a block whose largest and smallest keys cannot enter either list (nearly every
/// block once the lists fill) costs only its vectorised key, min and max. A second pass
/// bins the row.
#[allow(clippy::type_complexity)]
pub fn summarise_logits(
    row: &[f32],
    k: usize,
    bins: usize,
) -> (Vec<(u32, f32)>, Vec<(u32, f32)>, Vec<u32>, (f32, f32)) {
    const BLOCK: usize = 64;
    let k = k.min(row.len());
    let mut top: Vec<(i32, u32)> = Vec::with_capacity(k + 1);
    // The bottom entries under the reversed key (`!key` reverses an i32's order).
    let mut bottom: Vec<(i32, u32)> = Vec::with_capacity(k + 1);
    let (mut key_lo, mut key_hi) = (i32::MAX, i32::MIN);
    let mut keys = [0i32; BLOCK];
    for (b, block) in row.chunks(BLOCK).enumerate() {
        let (mut lo, mut hi) = (i32::MAX, i32::MIN);
        for (key, &v) in keys.iter_mut().zip(block) {
            *key = total_order_key(v);
            lo = lo.min(*key);
            hi = hi.max(*key);
        }
        key_lo = key_lo.min(lo);
        key_hi = key_hi.max(hi);
        let full = top.len() == k;
        let enters_top = !full || top.last().is_some_and(|&(worst, _)| hi > worst);
        let enters_bottom = !full || bottom.last().is_some_and(|&(worst, _)| !lo > worst);
        if !enters_top && !enters_bottom {
            continue;
        }
        for (j, &key) in keys[..block.len()].iter().enumerate() {
            let id = (b * BLOCK + j) as u32;
            keep_best(&mut top, k, key, id);
            keep_best(&mut bottom, k, !key, id);
        }
    }
    let entries = |list: Vec<(i32, u32)>| -> Vec<(u32, f32)> {
        list.into_iter()
            .map(|(_, i)| (i, row[i as usize]))
            .collect()
    };
    // The range ignores NaNs, as `f32::min`/`max` do; the keys order them outside it.
    let (mut lo, mut hi) = (from_total_order_key(key_lo), from_total_order_key(key_hi));
    if row.is_empty() {
        (lo, hi) = (f32::INFINITY, f32::NEG_INFINITY);
    } else if lo.is_nan() || hi.is_nan() {
        lo = row.iter().copied().fold(f32::INFINITY, f32::min);
        hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    let mut hist = vec![0u32; bins];
    let width = (hi - lo).max(f32::MIN_POSITIVE);
    for &v in row {
        let b = (((v - lo) / width) * bins as f32) as usize;
        hist[b.min(bins - 1)] += 1;
    }
    (entries(top), entries(bottom), hist, (lo, hi))
}

/// Builds the dashboards of every feature of `inputs.sae`.
pub fn build(
    inputs: &BuildInputs,
    opts: &BuildOptions,
    progress: Progress,
) -> anyhow::Result<Dashboard> {
    build_keeping(inputs, opts, None, progress).map(|(d, _)| d)
}

/// [`build`], with the LM's outputs it reads that do not depend on the SAE kept in (or
/// read from) a directory in `keep_in` ([`super::kept`]): the dashboards of other SAEs of
/// the layer over the same windows then skip the LM. Also gives what happened to them, in
/// words.
pub fn build_keeping(
    inputs: &BuildInputs,
    opts: &BuildOptions,
    keep_in: Option<&Path>,
    progress: Progress,
) -> anyhow::Result<(Dashboard, Option<String>)> {
    let model = &inputs.loaded.transformer;
    let mc = &model.config;
    let sae = inputs.sae;
    let (h, d, m) = (
        sae.config.n_heads,
        sae.config.d_head,
        sae.config.features_per_head,
    );
    // One block per head, or one dense block over every head.
    sae.check_fits(&mc.name, mc.n_heads, mc.d_head)?;
    let per_block = mc.n_heads / h;
    ensure!(
        !inputs.windows.is_empty(),
        "no context windows to build dashboards on"
    );
    ensure!(
        opts.top_k > 0 && opts.n_intervals > 0 && opts.n_intervals < 255 && opts.histogram_bins > 0,
        "top-k, interval count (1..254) and histogram bins must be positive"
    );
    let t = inputs.windows[0].len();
    ensure!(
        inputs.windows.iter().all(|w| w.len() == t) && t <= u16::MAX as usize,
        "context windows must all have one length (at most 65535)"
    );
    let dims = Dims {
        h,
        d,
        m,
        t,
        per_block,
    };
    let layer = inputs.layer;
    let per = opts.windows_per_forward.max(1);
    let n_windows = inputs.windows.len();
    let effect_windows = match opts.effect_tokens {
        0 => 0,
        e => e.div_ceil(t.max(1)).min(n_windows),
    };
    let mut kept = match keep_in {
        Some(base) => {
            let (hd, floats) = ((mc.n_heads * mc.d_head) as u64, |n: usize| (n * t) as u64);
            let bytes = 4
                * (floats(n_windows) * (2 * hd + (mc.n_heads * t) as u64)
                    + floats(effect_windows) * 2 * hd);
            let key = KeptKey {
                model: mc.name.clone(),
                layer,
                z_convention: inputs.z_convention,
                scan_windows: per,
                effect_windows: crate::live::WINDOWS_PER_PASS,
                windows: inputs.windows.clone(),
            };
            Kept::in_dir(base, &key, bytes)?
        }
        None => Kept::off(),
    };
    let bos = mc.bos_token_id;
    // End-of-text tokens (a pre-tokenized corpus's separators or padding) are never
    // counted, as SAEDashboard masks them: one would stand for the document boundary in
    // every feature's top examples. (Where EOS is BOS, `keep_bos` decides.)
    let eos: Vec<u32> = (mc.eos_token_ids.iter().copied())
        .filter(|&e| Some(e) != bos)
        .collect();

    // Unique per build: builds may run concurrently in one process.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let scratch = opts.scratch_dir.join(format!(
        ".attn-saes-dashboard-{}-{}",
        std::process::id(),
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = (|| -> anyhow::Result<Dashboard> {
        let w_enc = host_vec(sae.w_enc.clone())?; // [H, d, m]
        let b_enc = host_vec(sae.b_enc.clone())?; // [H, m]
        // JumpReLU's thresholds as `jumprelu` computes them.
        let theta = match (sae.config.architecture, &sae.log_threshold) {
            (Architecture::JumpRelu { .. }, Some(lt)) => host_vec(lt.clone().exp())?,
            _ => Vec::new(),
        };
        // BatchTopK's inference thresholds, as `BlockDiagSae::encode` uses them.
        let cut = match (sae.config.architecture, &sae.batch_threshold) {
            (Architecture::BatchTopK { .. }, Some(t)) => host_vec(t.clone())?,
            _ => Vec::new(),
        };
        let encoders: Vec<HeadEncoder> = (0..h)
            .map(|head| HeadEncoder {
                w_enc: &w_enc[head * d * m..(head + 1) * d * m],
                b_enc: &b_enc[head * m..(head + 1) * m],
                act: match (sae.config.architecture, theta.is_empty()) {
                    (Architecture::JumpRelu { .. }, false) => {
                        HostActivation::Jump(&theta[head * m..(head + 1) * m])
                    }
                    // Without thresholds, `encode` takes JumpReLU at zero threshold.
                    (Architecture::Relu | Architecture::JumpRelu { .. }, _) => HostActivation::Relu,
                    (Architecture::TopK { k }, _) => HostActivation::TopK(k),
                    (Architecture::BatchTopK { .. }, _) if !cut.is_empty() => {
                        HostActivation::AtLeast(&cut[head * m..(head + 1) * m])
                    }
                    (Architecture::BatchTopK { k }, _) => HostActivation::BatchTopK(k),
                },
            })
            .collect();
        let w_dec = host_vec(sae.w_dec.clone())?; // [H, m, d]
        let b_dec = host_vec(sae.b_dec.clone())?; // [H, d]
        let mut heads: Vec<HeadPass1> = (0..h)
            .map(|head| -> anyhow::Result<HeadPass1> {
                let spill_path = scratch.join(format!("head{head}.bin"));
                let file = std::fs::File::create(&spill_path)
                    .with_context(|| format!("creating {}", spill_path.display()))?;
                Ok(HeadPass1 {
                    counts: vec![0; m],
                    max: vec![0.0; m],
                    top: vec![Vec::new(); m],
                    top_floor: vec![f32::NEG_INFINITY; m],
                    resid: 0.0,
                    sum_x: vec![0.0; d],
                    sum_sq: 0.0,
                    spill: BufWriter::with_capacity(1 << 20, file),
                    spill_path,
                    feats: Vec::new(),
                    scratch: Vec::new(),
                    attention: [0.0; 6],
                    attention_rows: 0,
                })
            })
            .collect::<anyhow::Result<_>>()?;

        // Which features fire together, over the tokens that fit its limits.
        let mut cofiring = Cofiring::new(h * m, opts.cofiring_limits);
        // Pass 1.
        let mut n_counted: u64 = 0;
        for (c, batch) in inputs.windows.chunks(per).enumerate() {
            progress("scanning tokens", c * per * t, n_windows * t);
            let b = batch.len();
            let n = b * t;
            let (mh, md) = (mc.n_heads, mc.d_head);
            let shapes = [
                ("hook_z", vec![b, t, mh, md]),
                ("pattern", vec![b, mh, t, t]),
                ("values", vec![b, t, mh, md]),
            ];
            let mut lm = || -> anyhow::Result<Vec<Vec<f32>>> {
                let hooks = HookRequest {
                    hook_z: vec![layer],
                    pattern: vec![layer],
                    values: vec![layer],
                    z_convention: inputs.z_convention,
                    ..Default::default()
                };
                let mut cache = model.run(model.tokens(batch)?, &hooks, None)?;
                Ok(vec![
                    host_vec(cache.hook_z.remove(&layer).context("no hook_z")?)?,
                    host_vec(cache.pattern.remove(&layer).context("no pattern")?)?,
                    host_vec(cache.values.remove(&layer).context("no values")?)?,
                ])
            };
            let [z, pattern, values]: [Vec<f32>; 3] = kept
                .get(&format!("scan-{c:05}"), &shapes, &mut lm)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("the LM's outputs are not hook_z, pattern, values"))?;
            // The encoder runs on the host, head by head (`encode_head`), on `s z` by
            // head `[H, n, d]` (as `scale_input`); the reconstruction is summed there
            // sparsely.
            let x_host = scaled_by_head(&z, n, h, d, &sae.input_scale);
            drop(z);
            let flat: Vec<u32> = batch.iter().flatten().copied().collect();
            let counted: Vec<bool> = flat
                .iter()
                .map(|&tok| (opts.keep_bos || Some(tok) != bos) && !eos.contains(&tok))
                .collect();
            n_counted += counted.iter().filter(|&&c| c).count() as u64;
            let chunk = Chunk {
                x: &x_host,
                pattern: &pattern,
                values: &values,
                tokens: &flat,
                counted: &counted,
                first_token: (c * per * t) as u64,
            };
            heads
                .par_iter_mut()
                .enumerate()
                .try_for_each(|(head, state)| {
                    state.observe(
                        head,
                        &chunk,
                        &dims,
                        &encoders[head],
                        (
                            &w_dec[head * m * d..(head + 1) * m * d],
                            &b_dec[head * d..(head + 1) * d],
                        ),
                        sae.input_scale[head],
                        opts.top_k,
                    )
                })
                .context("writing the dashboard spill files")?;
            let feats: Vec<&[f32]> = heads.iter().map(|s| s.feats.as_slice()).collect();
            cofiring.add(c, &feats, &counted, m);
        }
        progress("scanning tokens", n_windows * t, n_windows * t);
        let cofiring_limit = cofiring.limit(per);
        let with_cofiring = cofiring.tokens() > 0;
        let mut together = match with_cofiring {
            true => cofiring.top(progress),
            false => Vec::new(),
        }
        .into_iter();
        ensure!(
            n_counted > 0,
            "the dashboard windows hold no tokens besides BOS and end-of-text"
        );
        for state in &mut heads {
            state.spill.flush()?;
            // The activation buffers are not needed past the scan.
            state.feats = Vec::new();
            state.scratch = Vec::new();
        }

        // Pass 2 and logit effects, head by head.
        let mut head_data = Vec::with_capacity(h);
        let mut summaries = Vec::with_capacity(h);
        let mut used_windows = BTreeSet::new();
        let mut used_tokens = BTreeSet::new();
        // Pass 2 reads each head's spill file; heads in parallel.
        progress("histograms, interval groups", 0, h);
        let pass2s: Vec<HeadPass2> = heads
            .par_iter()
            .enumerate()
            .map(|(head, state)| pass2(&state.spill_path, head, n_windows, &state.max, &dims, opts))
            .collect::<anyhow::Result<_>>()?;
        for (head, (state, p2)) in heads.into_iter().zip(pass2s).enumerate() {
            progress("logit effects", head, h);
            drop(state.spill);
            let _ = std::fs::remove_file(&state.spill_path);
            let logits = logit_effects(inputs, head, &w_dec[head * m * d..][..m * d], opts)?;
            let mut features = Vec::with_capacity(m);
            let mut density = Vec::with_capacity(m);
            for (f, (top, (hist, (counts, samples)))) in state
                .top
                .into_iter()
                .zip(
                    p2.histograms
                        .into_iter()
                        .zip(p2.interval_counts.into_iter().zip(p2.samples)),
                )
                .enumerate()
            {
                let mut top = top;
                top.sort_by(|a, b| {
                    if a.better_than(b) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                });
                let mut examples: Vec<Example> = Vec::new();
                let to_example = |c: Candidate, group| Example {
                    group,
                    window: (c.token / t as u64) as u32,
                    target: (c.token % t as u64) as u16,
                    activation: c.activation,
                    activations: c.activations,
                    dfa: c.dfa,
                    dfa_by_head: c.dfa_by_head,
                };
                examples.extend(top.into_iter().map(|c| to_example(c, ExampleGroup::Top)));
                for (bin, mut sample) in samples.into_iter().enumerate() {
                    sample.sort_by_key(|s| s.0);
                    examples.extend(
                        sample
                            .into_iter()
                            .map(|(_, c)| to_example(c, ExampleGroup::Interval(bin as u8))),
                    );
                }
                for e in &examples {
                    used_windows.insert(e.window);
                }
                let (logit_top, logit_bottom, logit_histogram, logit_range) = logits[f].clone();
                for &(id, _) in logit_top.iter().chain(&logit_bottom) {
                    used_tokens.insert(id);
                }
                let dens = state.counts[f] as f64 / n_counted as f64;
                density.push(dens);
                features.push(FeatureData {
                    density: dens as f32,
                    max_activation: state.max[f],
                    activation_histogram: hist,
                    interval_counts: counts,
                    logit_top,
                    logit_bottom,
                    logit_histogram,
                    logit_range,
                    examples,
                    effect: None,
                    cofiring: together.next().unwrap_or_default(),
                    upstream: None,
                });
            }
            let nf = n_counted as f64;
            let centered = state.sum_sq - state.sum_x.iter().map(|s| s * s).sum::<f64>() / nf;
            let live: Vec<f64> = density.iter().copied().filter(|&x| x > 0.0).collect();
            summaries.push(HeadSummary {
                head,
                l0: state.counts.iter().sum::<u64>() as f64 / nf,
                explained_variance: 1.0 - state.resid / centered.max(1e-30),
                never_fired: m - live.len(),
                density_histogram: crate::train::metrics::density_histogram(&live, 40),
                run_l0: inputs
                    .run_heads
                    .as_ref()
                    .and_then(|r| r.get(head))
                    .map(|r| r.0),
                run_explained_variance: inputs
                    .run_heads
                    .as_ref()
                    .and_then(|r| r.get(head))
                    .map(|r| r.1),
                run_dead: inputs
                    .run_heads
                    .as_ref()
                    .and_then(|r| r.get(head))
                    .map(|r| r.2),
                ce_score: inputs.ce_scores.as_ref().and_then(|c| c.get(head)).copied(),
                reads_from: None,
                random_tokens: None,
                attention: (state.attention_rows > 0).then(|| sources::HeadAttention {
                    mass: state.attention.map(|a| a / state.attention_rows as f64),
                }),
            });
            // The decoder rows as the SAELens export folds them: unit direction over the
            // head's input scale (an activation there times the row is its part of hook_z).
            let scale = sae.input_scale[head];
            let decoder = (w_dec[head * m * d..][..m * d].chunks_exact(d))
                .flat_map(|row| {
                    let norm = row.iter().map(|&x| x * x).sum::<f32>().sqrt().max(1e-12);
                    row.iter().map(move |&x| x / norm / scale)
                })
                .collect();
            head_data.push(HeadData {
                features,
                decoder: Some(decoder),
            });
        }
        progress("logit effects", h, h);
        if opts.interval_dfa {
            add_interval_dfa(
                &mut head_data,
                inputs,
                &dims,
                &w_enc,
                (opts, &kept),
                progress,
            )?;
        }

        let upstream = match opts.upstream {
            true => super::upstream::add_upstream(
                &mut head_data,
                (inputs.loaded, sae),
                (layer, inputs.z_convention),
                &inputs.windows,
                per,
                progress,
            )?,
            false => None,
        };

        // Keep the windows examples use, renumbered, and the strings of every token used.
        let remap: BTreeMap<u32, u32> = used_windows
            .iter()
            .enumerate()
            .map(|(i, &w)| (w, i as u32))
            .collect();
        for head in &mut head_data {
            for f in &mut head.features {
                for e in &mut f.examples {
                    e.window = remap[&e.window];
                }
            }
        }
        let windows: Vec<Vec<u32>> = used_windows
            .iter()
            .map(|&w| inputs.windows[w as usize].clone())
            .collect();
        used_tokens.extend(windows.iter().flatten().copied());
        let tokenizer = &inputs.loaded.tokenizer;
        let token_strings = used_tokens
            .into_iter()
            .map(|id| {
                let s = crate::lm::token_text(tokenizer, id);
                (id, s)
            })
            .collect();
        // The model's own head scores (one short forward pass); a context too short for
        // them leaves them out.
        let random_tokens = (per_block == 1)
            .then(|| {
                crate::lm::head_scores::head_scores(
                    model,
                    layer,
                    crate::lm::head_scores::SEQUENCES,
                    crate::lm::head_scores::COPY_LEN,
                    crate::lm::head_scores::SEED,
                )
            })
            .and_then(Result::ok);
        for (h, (summary, head)) in summaries.iter_mut().zip(&head_data).enumerate() {
            summary.reads_from = Some(sources::head_sources(&windows, head));
            summary.random_tokens = random_tokens.as_ref().and_then(|s| s.get(h)).copied();
        }
        let arch = sae.config.architecture;
        Ok(Dashboard {
            meta: DashboardMeta {
                built_from: inputs.built_from.clone(),
                model: ModelInfo {
                    name: mc.name.clone(),
                    n_layers: mc.n_layers,
                    n_heads: mc.n_heads,
                    n_kv_heads: mc.n_kv_heads,
                    d_head: mc.d_head,
                    d_model: mc.d_model,
                    d_vocab: mc.d_vocab,
                    bos_token_id: mc.bos_token_id,
                },
                hook_layer: layer,
                z_convention: format!("{:?}", inputs.z_convention),
                sae: SaeInfo {
                    n_heads: h,
                    d_head: d,
                    features_per_head: m,
                    architecture: arch.name().to_string(),
                    source: inputs.sae_source.clone(),
                },
                run_config: inputs.run_config.clone(),
                settings: Settings {
                    top_k: opts.top_k,
                    n_intervals: opts.n_intervals,
                    per_interval: opts.per_interval,
                    histogram_bins: opts.histogram_bins,
                    logit_k: opts.logit_k.min(mc.d_vocab),
                    seed: opts.seed,
                    keep_bos: opts.keep_bos,
                    windows_from: inputs.windows_from.clone(),
                },
                context_size: t,
                n_windows_scanned: n_windows,
                n_tokens: n_counted,
                heads: summaries,
                history: inputs.history.clone(),
                effects: None,
                decoder: true,
                dfa_by_head: dims.per_block > 1,
                cofiring: with_cofiring,
                cofiring_limit,
                upstream,
            },
            windows,
            token_strings,
            heads: head_data,
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let mut dashboard = result?;
    if effect_windows > 0 {
        add_effects(&mut dashboard, inputs, effect_windows, &mut kept, progress)?;
    }
    Ok((dashboard, kept.notice()))
}

/// `z` `[n, h, d]` scaled by `scale[h]` into `[h, n, d]`.
fn scaled_by_head(z: &[f32], n: usize, h: usize, d: usize, scale: &[f32]) -> Vec<f32> {
    let mut x = vec![0.0f32; z.len()];
    for (head, out) in x.chunks_exact_mut(n * d).enumerate() {
        for (i, row) in out.chunks_exact_mut(d).enumerate() {
            let from = &z[(i * h + head) * d..][..d];
            row.iter_mut()
                .zip(from)
                .for_each(|(o, &v)| *o = v * scale[head]);
        }
    }
    x
}

/// Each feature's first-order effect on the loss (`live::rank_features_over`), summed over
/// the first `n` windows scanned (not only those the examples keep: `rank`'s windows),
/// into the dashboard; the LM's part through `kept`.
fn add_effects(
    d: &mut Dashboard,
    inputs: &BuildInputs,
    n: usize,
    kept: &mut Kept,
    progress: Progress,
) -> anyhow::Result<()> {
    let t = d.meta.context_size;
    // BOS positions count as the examples do.
    let sae = crate::sae::BlockDiagSae {
        reads_bos: d.meta.settings.keep_bos,
        ..inputs.sae.clone()
    };
    let (model, at) = (inputs.loaded, (inputs.layer, inputs.z_convention));
    let ranking = crate::live::rank_features_from(
        inputs.loaded,
        &sae,
        &inputs.windows[..n],
        &mut |done, of| progress("estimating each feature's effect on the loss", done, of),
        &mut |pass, chunk| kept.lm_gradient(model, at, pass, chunk),
    )?;
    for head in &mut d.heads {
        head.features.iter_mut().for_each(|f| f.effect = Some(0.0));
    }
    for f in ranking.features {
        d.heads[f.head].features[f.feature].effect = Some(f.estimate);
    }
    d.meta.effects = Some(Effects {
        windows: n,
        tokens: (n * t) as u64,
    });
    Ok(())
}

/// Writes a dashboard file atomically.
pub fn write(dashboard: &Dashboard, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::files::write_atomic(path, &dashboard.to_bytes()?)
}

/// Reads a dashboard file.
pub fn read(path: &Path) -> anyhow::Result<Dashboard> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Dashboard::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The co-firing builder's stride: batches of one token with `active[i]` features on,
    /// the active pairs kept limited to 3. Past the limit it keeps every other batch it
    /// holds and takes every other one; a batch that passes the limit alone is not taken and
    /// the stride doubles past it; a first batch that does leaves no lists.
    #[test]
    fn cofiring_doubles_its_stride_past_its_limits() {
        let m = 8;
        let feed = |active: &[usize]| {
            let mut c = Cofiring::new(m, (3, u64::MAX));
            for (i, &n) in active.iter().enumerate() {
                let row: Vec<f32> = (0..m).map(|j| if j < n { 1.0 } else { 0.0 }).collect();
                c.add(i, &[row.as_slice()], &[true], m);
            }
            let kept: Vec<usize> = c.kept.iter().map(|k| k.index).collect();
            (kept, c.every, c.given_up(), c.full.is_some())
        };
        // Batch 3 passes the limit: {0, 2} kept, then 4 taken, 5 skipped; batch 6 passes it
        // again: {0, 4}, and 6 is off the new stride.
        assert_eq!(feed(&[1; 7]), (vec![0, 4], 4, false, true));
        // Within the limit throughout: every batch, no limit reached.
        assert_eq!(feed(&[1; 3]), (vec![0, 1, 2], 1, false, false));
        // Batch 2 alone passes it: not taken, the stride doubles past it (to 4), and batch 4
        // is taken again.
        assert_eq!(feed(&[1, 1, 5, 1, 1]), (vec![0, 4], 4, false, true));
        // The first batch alone passes it: no lists, whatever follows.
        assert_eq!(feed(&[5, 1, 1]), (vec![], 1, true, true));
    }

    /// `summarise_logits` against a full sort by `total_cmp` (ties to the lower id), on
    /// rows with many ties, signed zeros, infinities and NaNs, for `k` below, at and above the
    /// row's length.
    #[test]
    fn logit_summary_matches_a_full_sort() {
        let mut rng = crate::rng::Rng::new(5);
        for trial in 0..300 {
            let len = 1 + rng.below(300);
            let levels = 1 + rng.below(if trial % 3 == 0 { 4 } else { 1000 });
            let mut row: Vec<f32> = (0..len)
                .map(|_| (rng.below(levels) as f32 - levels as f32 / 2.0) * 0.25)
                .collect();
            if trial % 5 == 0 {
                row[rng.below(len)] = -0.0;
                row[rng.below(len)] = f32::INFINITY;
                row[rng.below(len)] = f32::NEG_INFINITY;
            }
            if trial % 7 == 0 {
                row[rng.below(len)] = if trial % 2 == 0 { f32::NAN } else { -f32::NAN };
            }
            for k in [0, 1, 3, 10, len, len + 2] {
                let (top, bottom, hist, range) = summarise_logits(&row, k, 7);
                let mut ids: Vec<u32> = (0..len as u32).collect();
                let value = |i: &u32| row[*i as usize];
                ids.sort_by(|a, b| value(b).total_cmp(&value(a)).then(a.cmp(b)));
                let want_top: Vec<(u32, f32)> =
                    ids.iter().take(k).map(|&i| (i, value(&i))).collect();
                ids.sort_by(|a, b| value(a).total_cmp(&value(b)).then(a.cmp(b)));
                let want_bottom: Vec<(u32, f32)> =
                    ids.iter().take(k).map(|&i| (i, value(&i))).collect();
                // Compared by bits: NaN entries are ranked like any other.
                let bits = |v: Vec<(u32, f32)>| -> Vec<(u32, u32)> {
                    v.into_iter().map(|(i, x)| (i, x.to_bits())).collect()
                };
                assert_eq!(bits(top), bits(want_top), "trial {trial} k {k}: top");
                assert_eq!(
                    bits(bottom),
                    bits(want_bottom),
                    "trial {trial} k {k}: bottom"
                );
                let lo = row.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(range, (lo, hi));
                assert_eq!(hist.iter().sum::<u32>() as usize, len);
            }
        }
    }
}
