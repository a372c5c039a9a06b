//! Dashboard stage: export for the Python ecosystem, in the SAEDashboard batch JSON layout
//! that Neuronpedia imports: `batch-N.json` (128 features each, global feature indices
//! `head * m + feature`), `skipped_indexes.json` (features that never fired on the
//! dashboard tokens) and `run_settings.json`; with labels, `explanations/batch-0.jsonl.gz`
//! in the layout of Neuronpedia's own explanation exports. Reads only the dashboard file
//! (and its labels).

use serde_json::{Value, json};

use super::format::{Dashboard, ExampleGroup, FeatureData};

/// Features per batch file, as SAEDashboard writes them.
pub const FEATURES_PER_BATCH: usize = 128;

/// Bar centres of `bins` equal bins over `[lo, hi]`.
fn centres(lo: f32, hi: f32, bins: usize) -> Vec<f32> {
    (0..bins)
        .map(|i| lo + (hi - lo) * (i as f32 + 0.5) / bins as f32)
        .collect()
}

/// `x` as the dashboard file stores activations along a context and DFA (f16), written as
/// the decimal with the fewest significant digits (at most 5) that reads back as that f16:
/// the export holds exactly what the file does, in fewer characters than the f32 printing
/// (`0.01233` for 0.0123291015625, not `0.012329102`). Zero stays `0.0`.
pub fn f16_shortest(x: f32) -> f64 {
    use half::f16;
    // Every f16's shortest decimal, found once: 65536 of them.
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let h = f16::from_bits(bits);
                let v = h.to_f32();
                if v == 0.0 || !v.is_finite() {
                    return v as f64;
                }
                // With `digits` significant digits: `v` rounded, else the decimal a unit of
                // the last digit above or below it (at a power of two the f16s below are
                // closer together than those above, so the rounded one can miss).
                let decimal = |x: f64, digits: usize| -> f64 {
                    let text = format!("{:.*e}", digits - 1, x);
                    text.parse().expect("a formatted float parses")
                };
                (1..=5)
                    .flat_map(|digits| {
                        let rounded = decimal(v as f64, digits);
                        let text = format!("{rounded:e}");
                        let exponent: i32 =
                            text.split('e').nth(1).unwrap_or("0").parse().unwrap_or(0);
                        let unit = 10f64.powi(exponent + 1 - digits as i32);
                        [
                            rounded,
                            decimal(rounded + unit, digits),
                            decimal(rounded - unit, digits),
                        ]
                    })
                    .find(|&back| f16::from_f64(back) == h)
                    .unwrap_or(v as f64)
            })
            .collect()
    });
    table[f16::from_f32(x).to_bits() as usize]
}

/// One feature in SAEDashboard's batch layout. Activations along the examples' contexts and
/// DFA are written as the file holds them ([`f16_shortest`]); everything else as f32.
pub fn feature_json(d: &Dashboard, head: usize, feature: usize) -> Value {
    let m = d.meta.sae.features_per_head;
    let f: &FeatureData = &d.heads[head].features[feature];
    let s = &d.meta.settings;
    let strs = |v: &[(u32, f32)]| v.iter().map(|(id, _)| d.token(*id)).collect::<Vec<_>>();
    let vals = |v: &[(u32, f32)]| v.iter().map(|(_, x)| *x).collect::<Vec<_>>();
    let active: u32 = f.interval_counts.iter().sum();
    let bin_width = f.max_activation / s.n_intervals as f32;
    let activations: Vec<Value> = f
        .examples
        .iter()
        .map(|e| {
            let window = &d.windows[e.window as usize];
            let mut values = vec![0f32; window.len()];
            for &(p, a) in &e.activations {
                values[p as usize] = a;
            }
            let (bin_min, bin_max, bin_contains) = match e.group {
                ExampleGroup::Top => (
                    -1.0,
                    f.max_activation,
                    s.top_k as f32 / active.max(1) as f32,
                ),
                ExampleGroup::Interval(i) => (
                    bin_width * i as f32,
                    bin_width * (i as f32 + 1.0),
                    f.interval_counts[i as usize] as f32 / active.max(1) as f32,
                ),
            };
            let short = |v: &[f32]| v.iter().map(|&x| f16_shortest(x)).collect::<Vec<_>>();
            let mut obj = json!({
                "bin_min": bin_min,
                "bin_max": bin_max,
                "bin_contains": bin_contains,
                "tokens": window.iter().map(|&id| d.token(id)).collect::<Vec<_>>(),
                "values": short(&values),
                "qualifying_token_index": e.target,
            });
            if !e.dfa.is_empty() {
                let mut dfa = vec![0f32; window.len()];
                dfa[..e.dfa.len()].copy_from_slice(&e.dfa);
                let max = e.dfa.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                obj["dfa_values"] = json!(short(&dfa));
                obj["dfa_maxValue"] = json!(f16_shortest(max));
                obj["dfa_targetIndex"] = json!(e.target);
            }
            obj
        })
        .collect();
    let (lo, hi) = f.logit_range;
    // Each head's share of the decoder norm (SAEDashboard's head attribution): all of it in
    // the feature's head, or for a dense SAE's feature its row's share in each head's part.
    // The vector: the decoder row in its head's block of `hook_z` flattened, zeros elsewhere
    // (the SAELens export's `W_dec` row), when the file holds the rows.
    let n_heads = d.meta.sae.n_heads;
    let shares: Vec<f32> = match d.meta.dense_heads() {
        Some(heads) => (d.heads[head].head_shares(feature, heads)).unwrap_or_default(),
        None => (0..n_heads).map(|h| (h == head) as u8 as f32).collect(),
    };
    let vector: Vec<f32> = match &d.heads[head].decoder {
        Some(rows) => {
            let dh = d.meta.sae.d_head;
            let mut v = vec![0f32; n_heads * dh];
            v[head * dh..(head + 1) * dh].copy_from_slice(&rows[feature * dh..][..dh]);
            v
        }
        None => Vec::new(),
    };
    json!({
        "feature_index": head * m + feature,
        "neg_str": strs(&f.logit_bottom),
        "neg_values": vals(&f.logit_bottom),
        "pos_str": strs(&f.logit_top),
        "pos_values": vals(&f.logit_top),
        "frac_nonzero": f.density,
        "freq_hist_data_bar_values": centres(0.0, f.max_activation, s.histogram_bins),
        "freq_hist_data_bar_heights": f.activation_histogram,
        "logits_hist_data_bar_values": centres(lo, hi, s.histogram_bins),
        "logits_hist_data_bar_heights": f.logit_histogram,
        "n_prompts_total": d.meta.n_windows_scanned,
        "n_tokens_in_prompt": d.meta.context_size,
        "dataset": d.meta.settings.windows_from,
        "decoder_weights_dist": shares,
        "vector": vector,
        "activations": activations,
    })
}

/// The Neuronpedia source id the explanations name, as its attention SAEs' ids go
/// (`5-att-kk`): the hooked layer, `att`, and this tool's name.
pub fn source_id(d: &Dashboard) -> String {
    format!("{}-att-attn-saes", d.meta.hook_layer)
}

/// One label as a row of Neuronpedia's explanation exports: `modelId` (the model's name, a
/// local path cut to its file name), `layer` (the source
/// id, [`source_id`]), `index` (the global feature index, a string, as Neuronpedia keeps
/// it) and `description`.
pub fn explanation_json(d: &Dashboard, head: usize, feature: usize, label: &str) -> Value {
    json!({
        "modelId": super::format::published_name(&d.meta.model.name),
        "layer": source_id(d),
        "index": (head * d.meta.sae.features_per_head + feature).to_string(),
        "description": label,
    })
}

/// Removes the files of `dir` named `batch-N` + `extension` (N a number), the names an
/// export writes there; nothing else. A missing directory has none.
#[cfg(not(target_arch = "wasm32"))]
fn remove_earlier(dir: &std::path::Path, extension: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let number = name
            .strip_prefix("batch-")
            .and_then(|n| n.strip_suffix(extension));
        if number.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing {} (an earlier export)", path.display()))?;
        }
    }
    Ok(())
}

/// Writes the export into `dir`, with `labels` (when there are any) as
/// `explanations/batch-0.jsonl.gz`, one row per label by global index. Returns the number
/// of feature batch files.
#[cfg(not(target_arch = "wasm32"))]
pub fn export(
    d: &Dashboard,
    dir: &std::path::Path,
    labels: &super::labels::Labels,
) -> anyhow::Result<usize> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // An earlier export here is replaced, not mixed in: its batch files (more of them, for
    // another SAE) and its explanations (labels since cleared) would otherwise stay.
    remove_earlier(dir, ".json")?;
    remove_earlier(&dir.join("explanations"), ".jsonl.gz")?;
    let m = d.meta.sae.features_per_head;
    let all: Vec<(usize, usize)> = (0..d.heads.len())
        .flat_map(|h| (0..m).map(move |f| (h, f)))
        .collect();
    let (live, dead): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|&(h, f)| d.heads[h].features[f].density > 0.0);
    let mut n = 0;
    for (i, batch) in live.chunks(FEATURES_PER_BATCH).enumerate() {
        let features: Vec<Value> = batch.iter().map(|&(h, f)| feature_json(d, h, f)).collect();
        let path = dir.join(format!("batch-{i}.json"));
        crate::files::write_atomic(&path, serde_json::to_string(&features)?.as_bytes())?;
        n += 1;
    }
    let skipped: Vec<usize> = dead.iter().map(|&(h, f)| h * m + f).collect();
    crate::files::write_atomic(
        &dir.join("skipped_indexes.json"),
        serde_json::to_string(&skipped)?.as_bytes(),
    )?;
    let settings = json!({
        "model_id": super::format::published_name(&d.meta.model.name),
        "layer": d.meta.hook_layer,
        "hook_name": format!("blocks.{}.attn.hook_z", d.meta.hook_layer),
        "n_heads": d.meta.sae.n_heads,
        "features_per_head": m,
        "feature_index": "head * features_per_head + feature",
        "n_prompts_total": d.meta.n_windows_scanned,
        "n_tokens_in_prompt": d.meta.context_size,
        "dataset": d.meta.settings.windows_from,
        "n_features_at_a_time": FEATURES_PER_BATCH,
        "top_acts_group_size": d.meta.settings.top_k,
        "quantile_group_size": d.meta.settings.per_interval,
        "n_quantiles": d.meta.settings.n_intervals,
    });
    crate::files::write_json(&dir.join("run_settings.json"), &settings)?;
    if !labels.is_empty() {
        use std::io::Write;
        let mut rows = String::new();
        for (h, f, label) in labels.iter() {
            rows += &serde_json::to_string(&explanation_json(d, h, f, label))?;
            rows.push('\n');
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(rows.as_bytes())?;
        let explanations = dir.join("explanations");
        std::fs::create_dir_all(&explanations)
            .with_context(|| format!("creating {}", explanations.display()))?;
        crate::files::write_atomic(&explanations.join("batch-0.jsonl.gz"), &gz.finish()?)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use half::f16;

    /// Significant digits of `x` as Rust prints an f64 (shortest round trip), `1.233e-2`.
    fn digits(x: f64) -> usize {
        let text = format!("{:e}", x.abs());
        let mantissa = text.split('e').next().unwrap();
        mantissa.chars().filter(char::is_ascii_digit).count()
    }

    /// Every finite f16: its export reads back as it (a round trip), and no decimal with
    /// one significant digit fewer does (both neighbours of it at that many digits, the
    /// only candidates, read back as other f16s).
    #[test]
    fn f16_shortest_reads_back_exactly_with_no_digit_to_spare() {
        let mut longest = 0;
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            if !h.is_finite() || h.to_f32() == 0.0 {
                continue;
            }
            let x = super::f16_shortest(h.to_f32());
            assert_eq!(f16::from_f64(x), h, "{x} for {h}");
            let p = digits(x);
            longest = longest.max(p);
            if p == 1 {
                continue;
            }
            let v = h.to_f64();
            let exponent: i32 = format!("{v:e}").split('e').nth(1).unwrap().parse().unwrap();
            let scale = 10f64.powi(exponent - (p as i32 - 2));
            for shorter in [(v / scale).floor() * scale, (v / scale).ceil() * scale] {
                assert_ne!(f16::from_f64(shorter), h, "{shorter} is shorter than {x}");
            }
        }
        assert_eq!(longest, 5);
        // Zero and the examples of the docs.
        assert_eq!(super::f16_shortest(0.0).to_string(), "0");
        let doc = f16::from_f64(0.0123291015625);
        assert_eq!(doc.to_f64(), 0.0123291015625);
        assert_eq!(super::f16_shortest(doc.to_f32()), 0.01233);
    }
}
