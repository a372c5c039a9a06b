//! Trainer: CE-loss evaluation. Runs the LM clean, with hook_z of the hooked layer replaced
//! by the SAE reconstruction, and zero-ablated; total and per head (one head spliced).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use burn::prelude::*;

use crate::lm::{HeadSelection, Prefix, Splice, Transformer, ZConvention};
use crate::sae::BlockDiagSae;

pub use crate::run_log::{EvalMetrics, HeadEval, HeadWindowLosses, WindowLosses};

/// Mean over windows (they have one length, so the mean of the window means).
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean CE of each window of `tokens` `[batch, pos]`, `[batch]`, with `splice` applied.
pub fn window_ce(
    model: &Transformer,
    tokens: &Tensor<2, Int>,
    conv: ZConvention,
    splice: Option<&Splice>,
) -> anyhow::Result<Vec<f64>> {
    let prefix = model.prefix(tokens.clone(), 0)?;
    window_ce_from(model, &prefix, tokens, conv, splice)
}

/// [`window_ce`] run from `prefix`, which holds `tokens`' stream entering a layer at or
/// before the splice's.
fn window_ce_from(
    model: &Transformer,
    prefix: &Prefix,
    tokens: &Tensor<2, Int>,
    conv: ZConvention,
    splice: Option<&Splice>,
) -> anyhow::Result<Vec<f64>> {
    let ce = model.ce_from(prefix, tokens, conv, splice)?.mean_dim(1);
    Ok(crate::files::host_vec(ce)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// The CE loss score with its spread over context windows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoreSpread {
    pub windows: usize,
    /// `L_zero - L_clean`: mean over windows and its standard error.
    pub zero_cost: (f64, f64),
    /// `L_sae - L_clean`: mean and standard error.
    pub sae_cost: (f64, f64),
    /// The score over all windows and its jackknife standard error.
    pub score: (f64, f64),
}

/// Mean and standard error of a sample.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mu = mean(v);
    let var = v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mu, (var / n).sqrt())
}

/// [`ScoreSpread`] from per-window losses (clean, with the SAE, zero-ablated): a jackknife
/// over windows, since the score is a ratio of means (a plain average of per-window ratios
/// would be dominated by windows where ablation costs nothing).
pub fn spread_of(clean: &[f64], with: &[f64], zero: &[f64]) -> ScoreSpread {
    spread(&WindowLosses {
        clean: clean.to_vec(),
        sae: with.to_vec(),
        zero: zero.to_vec(),
    })
}

/// [`spread_of`] the losses an evaluation records.
fn spread(losses: &WindowLosses) -> ScoreSpread {
    let cost = |a: &[f64]| {
        mean_se(
            &a.iter()
                .zip(&losses.clean)
                .map(|(x, c)| x - c)
                .collect::<Vec<_>>(),
        )
    };
    ScoreSpread {
        windows: losses.clean.len(),
        zero_cost: cost(&losses.zero),
        sae_cost: cost(&losses.sae),
        score: losses.jackknife_score(),
    }
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

/// CE loss clean / with the SAE / zero-ablated on `tokens` `[batch, pos]`, total and per
/// head, and the whole-layer score's spread over windows from the same passes.
pub fn evaluate_with_spread(
    model: &Transformer,
    sae: &BlockDiagSae,
    tokens: Tensor<2, Int>,
    layer: usize,
    conv: ZConvention,
    keep_bos: bool,
    step: usize,
) -> anyhow::Result<(EvalMetrics, ScoreSpread)> {
    let no_count = &mut |_, _| {};
    Baseline::new(model, tokens, layer, conv, no_count)?
        .evaluate(model, sae, keep_bos, step, no_count)
}

/// Bumped when what a saved baseline's losses mean changes (2: each head's zero-ablated
/// losses per window, not their mean).
const BASELINE_FORMAT: u32 = 2;

/// What a saved baseline's losses are of; the file's name is a digest of it.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct BaselineKey {
    format: u32,
    /// attn-saes's version.
    version: String,
    model: String,
    layer: usize,
    conv: ZConvention,
    n_heads: usize,
    windows: Vec<Vec<u32>>,
}

/// A baseline's losses as [`Baseline::kept_in`] keeps them (JSON; f64 round-trips exactly).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedBaseline {
    key: BaselineKey,
    clean: Vec<f64>,
    zero: Vec<f64>,
    zero_per_head: Vec<Vec<f64>>,
}

/// Called with `(passes done, of)` as an evaluation's passes end.
pub type Passes<'a> = &'a mut dyn FnMut(usize, usize);

/// What [`Baseline::kept_in`] did with its file.
#[derive(Debug, Clone, PartialEq)]
pub enum BaselineFile {
    /// The zero-ablated losses were read from it.
    Read(PathBuf),
    /// There was none (or it was unreadable): computed and written.
    Written(PathBuf),
    /// Its clean losses differed from a fresh pass's (other weights, another device):
    /// computed and written over it.
    Replaced(PathBuf),
    /// Computed, but the file could not be written (the error).
    NotWritten(PathBuf, String),
}

impl BaselineFile {
    /// A line for the run's notices.
    pub fn describe(&self) -> String {
        match self {
            Self::Read(p) => format!(
                "evaluation baseline (clean and zero-ablated losses) read from {}",
                p.display()
            ),
            Self::Written(p) => format!("evaluation baseline saved to {}", p.display()),
            Self::Replaced(p) => format!(
                "evaluation baseline in {} was of other clean losses (other weights or \
                 device): recomputed and replaced",
                p.display()
            ),
            Self::NotWritten(p, e) => format!(
                "evaluation baseline not saved to {} (each run computes it): {e}",
                p.display()
            ),
        }
    }
}

/// The part of an evaluation the SAE does not touch: the stream entering the layer (the
/// blocks before it, run once for every pass) and the losses clean, zero-ablated and with
/// each head zero-ablated, 2 + heads of an evaluation's 3 + 2 x heads passes. A run's
/// evaluations share it (same model, windows, layer and convention), so the trainer
/// computes it once.
pub struct Baseline {
    prefix: Prefix,
    tokens: Tensor<2, Int>,
    layer: usize,
    conv: ZConvention,
    /// Per window.
    clean: Vec<f64>,
    /// Per window, every head zero-ablated.
    zero: Vec<f64>,
    /// Per head, per window, that head zero-ablated.
    zero_per_head: Vec<Vec<f64>>,
}

impl Baseline {
    /// The prefix and the losses clean and zero-ablated, calling `passes(done, of)` after
    /// each of its 2 + heads passes.
    pub fn new(
        model: &Transformer,
        tokens: Tensor<2, Int>,
        layer: usize,
        conv: ZConvention,
        passes: Passes,
    ) -> anyhow::Result<Self> {
        let mut b = Self::clean_only(model, tokens, layer, conv, passes)?;
        b.ablate(model, passes)?;
        Ok(b)
    }

    /// The prefix and the clean losses (1 pass); the zero-ablated losses left empty.
    fn clean_only(
        model: &Transformer,
        tokens: Tensor<2, Int>,
        layer: usize,
        conv: ZConvention,
        passes: Passes,
    ) -> anyhow::Result<Self> {
        let prefix = model.prefix(tokens.clone(), layer)?;
        let clean = window_ce_from(model, &prefix, &tokens, conv, None)?;
        passes(1, 2 + model.config.n_heads);
        Ok(Self {
            prefix,
            tokens,
            layer,
            conv,
            clean,
            zero: Vec::new(),
            zero_per_head: Vec::new(),
        })
    }

    /// The zero-ablated losses, every head and each head (1 + heads passes).
    fn ablate(&mut self, model: &Transformer, passes: Passes) -> anyhow::Result<()> {
        let of = 2 + model.config.n_heads;
        let mut zero_of = |heads, done| {
            let splice = Splice::zero_ablate(self.layer, heads);
            let losses =
                window_ce_from(model, &self.prefix, &self.tokens, self.conv, Some(&splice));
            passes(done, of);
            losses
        };
        self.zero = zero_of(HeadSelection::All, 2)?;
        self.zero_per_head = (0..model.config.n_heads)
            .map(|h| zero_of(HeadSelection::One(h), 3 + h))
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// [`Baseline::new`] for the windows `ids`, with its losses kept in a file in `dir` (an
    /// activation cache's, which runs of a sweep share): where the file holds this model's,
    /// windows', layer's and convention's losses and a fresh clean pass gives its clean
    /// losses to the bit (the same weights, on the same kind of device), the zero-ablated
    /// losses are read, 1 pass instead of 2 + heads; otherwise they are computed and the
    /// file (re)written (`dir` created if missing). A file that cannot be written is
    /// reported, not an error.
    pub fn kept_in(
        model: &Transformer,
        ids: &[Vec<u32>],
        layer: usize,
        conv: ZConvention,
        dir: &Path,
        passes: Passes,
    ) -> anyhow::Result<(Self, BaselineFile)> {
        let key = BaselineKey {
            format: BASELINE_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            model: model.config.name.clone(),
            layer,
            conv,
            n_heads: model.config.n_heads,
            windows: ids.to_vec(),
        };
        let digest = crate::files::sha256_hex(&serde_json::to_vec(&key)?);
        let path = dir.join(format!("eval-baseline-{}.json", &digest[..16]));
        let mut b = Self::clean_only(model, model.tokens(ids)?, layer, conv, passes)?;
        let saved = path
            .exists()
            .then(|| crate::files::read_json::<SavedBaseline>(&path).ok())
            .flatten()
            .filter(|s| s.key == key && s.zero_per_head.len() == key.n_heads)
            .filter(|s| (s.zero_per_head.iter()).all(|z| z.len() == ids.len()));
        let same_clean = |s: &SavedBaseline| {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            bits(&s.clean) == bits(&b.clean)
        };
        let state = match saved {
            Some(s) if same_clean(&s) => {
                (b.zero, b.zero_per_head) = (s.zero, s.zero_per_head);
                return Ok((b, BaselineFile::Read(path)));
            }
            Some(_) => BaselineFile::Replaced,
            None => BaselineFile::Written,
        };
        b.ablate(model, passes)?;
        let saved = SavedBaseline {
            key,
            clean: b.clean.clone(),
            zero: b.zero.clone(),
            zero_per_head: b.zero_per_head.clone(),
        };
        let written = std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .and_then(|()| crate::files::write_json(&path, &saved));
        let file = match written {
            Ok(()) => state(path),
            Err(e) => BaselineFile::NotWritten(path, format!("{e:#}")),
        };
        Ok((b, file))
    }

    /// The evaluation of `sae` (an SAE of this baseline's layer): its 1 + heads passes,
    /// calling `passes(done, of)` after each.
    pub fn evaluate(
        &self,
        model: &Transformer,
        sae: &BlockDiagSae,
        keep_bos: bool,
        step: usize,
        passes: Passes,
    ) -> anyhow::Result<(EvalMetrics, ScoreSpread)> {
        let replace = |z: Tensor<4>| sae_replace(sae, z, keep_bos);
        let of = 1 + model.config.n_heads;
        let mut with_sae = |heads, done| {
            let splice = Splice {
                layer: self.layer,
                heads,
                replace: &replace,
            };
            let losses =
                window_ce_from(model, &self.prefix, &self.tokens, self.conv, Some(&splice));
            passes(done, of);
            losses
        };
        let with = with_sae(HeadSelection::All, 1)?;
        let (ce_clean, ce_sae, ce_zero) = (mean(&self.clean), mean(&with), mean(&self.zero));
        let mut per_head = Vec::new();
        // The spreads are of the per-window losses recorded.
        let of_windows = |sae, zero: &Vec<f64>| WindowLosses {
            clean: self.clean.clone(),
            sae,
            zero: zero.clone(),
        };
        for (h, zero) in self.zero_per_head.iter().enumerate() {
            let with = with_sae(HeadSelection::One(h), 2 + h)?;
            let (s, z) = (mean(&with), mean(zero));
            let losses = of_windows(with, zero);
            per_head.push(HeadEval {
                ce_sae: s,
                ce_zero: z,
                ce_score: score(ce_clean, s, z),
                ce_score_se: Some(losses.jackknife_score().1),
                window_losses: Some(HeadWindowLosses {
                    sae: losses.sae,
                    zero: losses.zero,
                }),
            });
        }
        let losses = of_windows(with, &self.zero);
        let spread = spread(&losses);
        let metrics = EvalMetrics {
            step,
            ce_clean,
            ce_sae,
            ce_zero,
            ce_score: score(ce_clean, ce_sae, ce_zero),
            per_head,
            ce_score_se: Some(spread.score.1),
            windows: Some(spread.windows),
            window_losses: Some(losses),
        };
        Ok((metrics, spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::sae::{Architecture, SaeConfig};

    /// A random 3-layer GPT-2 of 4 heads of 16 and a 97-token vocabulary.
    fn small_model(seed: u64) -> Transformer {
        let config = crate::lm::TransformerConfig {
            n_layers: 3,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 4,
            d_head: 16,
            d_mlp: 128,
            d_vocab: 97,
            n_ctx: 32,
            ..crate::lm::load::gpt2_small_config()
        };
        crate::lm::load::random(config, seed, &Device::flex())
    }

    /// A baseline kept in a directory is computed and written once, then read (its
    /// zero-ablated losses: a file whose clean losses match is trusted for them), and
    /// recomputed over a file of other clean losses, of another layer, or unreadable; an
    /// unwritable directory costs nothing but the file. Computed losses are always
    /// [`Baseline::new`]'s.
    #[test]
    fn a_kept_baseline_is_read_back_only_for_the_same_clean_losses() {
        let model = small_model(5);
        let ids: Vec<Vec<u32>> = (0..3u32)
            .map(|w| (0..12).map(|p| (w * 17 + p * 5 + 2) % 97).collect())
            .collect();
        let conv = ZConvention::TransformerLens;
        let dir = std::env::temp_dir().join(format!("attn-saes-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fresh = |layer| {
            Baseline::new(
                &model,
                model.tokens(&ids).unwrap(),
                layer,
                conv,
                &mut |_, _| {},
            )
            .unwrap()
        };
        let same = |a: &Baseline, b: &Baseline| {
            assert_eq!((&a.clean, &a.zero), (&b.clean, &b.zero));
            assert_eq!(a.zero_per_head, b.zero_per_head);
        };
        let kept =
            |layer| Baseline::kept_in(&model, &ids, layer, conv, &dir, &mut |_, _| {}).unwrap();
        let want = fresh(1);
        let (b, file) = kept(1);
        let BaselineFile::Written(path) = file else {
            panic!("{file:?}")
        };
        same(&b, &want);
        let (b, file) = kept(1);
        assert_eq!(file, BaselineFile::Read(path.clone()));
        same(&b, &want);
        // The zero-ablated losses come from the file (doubled there, doubled here).
        let mut saved: SavedBaseline = crate::files::read_json(&path).unwrap();
        saved.zero.iter_mut().for_each(|x| *x *= 2.0);
        saved.zero_per_head[3][1] *= 2.0;
        crate::files::write_json(&path, &saved).unwrap();
        let (b, file) = kept(1);
        assert_eq!(file, BaselineFile::Read(path.clone()));
        assert_eq!(
            b.zero,
            want.zero.iter().map(|x| x * 2.0).collect::<Vec<_>>()
        );
        assert_eq!(b.zero_per_head[3][1], want.zero_per_head[3][1] * 2.0);
        // Clean losses one ulp off (other weights, another device): recomputed, rewritten.
        saved.clean[1] = f64::from_bits(saved.clean[1].to_bits() + 1);
        crate::files::write_json(&path, &saved).unwrap();
        let (b, file) = kept(1);
        assert_eq!(file, BaselineFile::Replaced(path.clone()));
        same(&b, &want);
        assert_eq!(kept(1).1, BaselineFile::Read(path.clone()));
        // Another layer has a file of its own; an unreadable file is rewritten.
        let (b, file) = kept(2);
        let BaselineFile::Written(other) = file else {
            panic!("{file:?}")
        };
        assert_ne!(other, path);
        same(&b, &fresh(2));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(kept(1).1, BaselineFile::Written(path.clone()));
        // A directory that cannot hold it (here a file's path).
        let not_dir = path.clone();
        let (b, file) = Baseline::kept_in(&model, &ids, 1, conv, &not_dir, &mut |_, _| {}).unwrap();
        assert!(matches!(file, BaselineFile::NotWritten(..)), "{file:?}");
        same(&b, &want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A baseline computed once gives each of two SAEs the evaluation a fresh
    /// `evaluate_with_spread` gives it, to the bit, and its cached losses are those of whole
    /// forwards from the tokens (clean, every head and each head zero-ablated).
    #[test]
    fn a_shared_baseline_gives_each_sae_a_fresh_evaluation() {
        let device = Device::flex();
        let model = small_model(3);
        let ids: Vec<Vec<u32>> = (0..3u32)
            .map(|w| (0..20).map(|p| (w * 31 + p * 7 + 1) % 97).collect())
            .collect();
        let tokens = model.tokens(&ids).unwrap();
        let (layer, conv) = (1, ZConvention::TransformerLens);
        let baseline = Baseline::new(&model, tokens.clone(), layer, conv, &mut |_, _| {}).unwrap();
        let whole = |splice: Option<&Splice>| window_ce(&model, &tokens, conv, splice).unwrap();
        assert_eq!(baseline.clean, whole(None));
        assert_eq!(
            baseline.zero,
            whole(Some(&Splice::zero_ablate(layer, HeadSelection::All)))
        );
        for h in 0..4 {
            let zero_h = whole(Some(&Splice::zero_ablate(layer, HeadSelection::One(h))));
            assert_eq!(baseline.zero_per_head[h], zero_h, "head {h}");
        }
        let mut evals = Vec::new();
        for seed in [1, 2] {
            let sae_config = SaeConfig {
                n_heads: 4,
                d_head: 16,
                features_per_head: 24,
                architecture: Architecture::Relu,
            };
            let sae = BlockDiagSae::init(sae_config, &mut Rng::new(seed), &device);
            let shared = baseline
                .evaluate(&model, &sae, true, 7, &mut |_, _| {})
                .unwrap();
            let fresh =
                evaluate_with_spread(&model, &sae, tokens.clone(), layer, conv, true, 7).unwrap();
            assert_eq!(shared, fresh, "SAE {seed}");
            // Each number is that of a whole forward with that splice.
            let replace = |z: Tensor<4>| sae_replace(&sae, z, true);
            // Per window.
            let spliced = |heads| {
                whole(Some(&Splice {
                    layer,
                    heads,
                    replace: &replace,
                }))
            };
            let e = &shared.0;
            assert_eq!(e.ce_clean, mean(&baseline.clean));
            assert_eq!(e.ce_zero, mean(&baseline.zero));
            assert_eq!(e.ce_sae, mean(&spliced(HeadSelection::All)));
            for (h, head) in e.per_head.iter().enumerate() {
                assert_eq!(
                    head.ce_sae,
                    mean(&spliced(HeadSelection::One(h))),
                    "head {h}"
                );
                assert_eq!(head.ce_zero, mean(&baseline.zero_per_head[h]));
                // Each head's score's spread: over the windows' losses clean, with the SAE
                // spliced into that head alone, and that head zero-ablated.
                let want = spread_of(
                    &baseline.clean,
                    &spliced(HeadSelection::One(h)),
                    &baseline.zero_per_head[h],
                );
                assert_eq!(head.ce_score_se, Some(want.score.1), "head {h}");
                // Its per-window losses, those of the whole forwards.
                let want = HeadWindowLosses {
                    sae: spliced(HeadSelection::One(h)),
                    zero: baseline.zero_per_head[h].clone(),
                };
                assert_eq!(head.window_losses.as_ref(), Some(&want), "head {h}");
            }
            assert!(e.ce_sae != e.ce_clean && e.ce_sae != e.ce_zero, "{e:?}");
            // The score's spread is over the windows' losses clean, with the SAE spliced
            // into every head, and zero-ablated.
            let want = spread_of(
                &baseline.clean,
                &spliced(HeadSelection::All),
                &baseline.zero,
            );
            assert_eq!((e.ce_score_se, e.windows), (Some(want.score.1), Some(3)));
            assert_eq!(
                e.score_spread(3),
                format!(" +- {:.3} (3 windows)", want.score.1)
            );
            // Its per-window losses are those of the whole forwards.
            let want = WindowLosses {
                clean: baseline.clean.clone(),
                sae: spliced(HeadSelection::All),
                zero: baseline.zero.clone(),
            };
            assert_eq!(e.window_losses.as_ref(), Some(&want));
            evals.push(shared.0);
        }
        // The two evaluations pair (one baseline): the difference of their scores.
        let d = crate::run_log::score_difference(&evals[0], &evals[1]).unwrap();
        let want = evals[1].ce_score - evals[0].ce_score;
        assert!((d.difference - want).abs() < 1e-12, "{d:?} against {want}");
        assert!(want.abs() > 1e-3 && d.se > 0.0 && d.windows == 3, "{d:?}");
        // And each head's, the difference of its scores (a ratio of sums there, of means
        // here: a head whose ablation costs little divides rounding by a small number).
        for (h, x) in d.per_head.iter().flatten().enumerate() {
            let want = evals[1].per_head[h].ce_score - evals[0].per_head[h].ce_score;
            assert!(
                (x.difference - want).abs() < 1e-9,
                "head {h}: {x:?} against {want}"
            );
        }
        assert_eq!(d.per_head.map(|p| p.len()), Some(4));
    }

    /// The jackknife on a case worked by hand: three windows, zero-ablation costs 1, 2, 3,
    /// SAE costs 0.5, 0.5, 0.5.
    #[test]
    fn score_spread_is_the_ratio_of_means_with_a_jackknife_error() {
        let clean = [1.0, 1.0, 1.0];
        let with = [1.5, 1.5, 1.5];
        let zero = [2.0, 3.0, 4.0];
        let s = spread_of(&clean, &with, &zero);
        assert!((s.score.0 - 0.75).abs() < 1e-12, "(6 - 1.5) / 6");
        // Leave-one-out scores: (5-1)/5, (4-1)/4, (3-1)/3.
        let loo = [0.8, 0.75, 2.0 / 3.0];
        let m = loo.iter().sum::<f64>() / 3.0;
        let want = (2.0 / 3.0 * loo.iter().map(|r| (r - m).powi(2)).sum::<f64>()).sqrt();
        assert!((s.score.1 - want).abs() < 1e-12);
        assert!(
            (s.zero_cost.0 - 2.0).abs() < 1e-12
                && (s.zero_cost.1 - (1.0f64 / 3.0).sqrt()).abs() < 1e-12
        );
        assert_eq!(s.sae_cost, (0.5, 0.0));
    }
}
