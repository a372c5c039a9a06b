//! Dashboards: DFA against a float64 numpy reference (`tests/fixtures/dashboard/
//! make_dfa_reference.py`) and the identity `sum_s DFA + b_enc = pre` on GPT-2, gelu-2l
//! (TransformerLens .pth) and Llama (GQA); top-k examples, interval groups and histograms
//! against a brute-force pass over all tokens; logit effects against numpy; the file format
//! round trip and fuzzing; the Neuronpedia export; a run's dashboards end to end.

mod common;

use attn_saes::dashboard::build::{self, interval_bin, sample_key};
use attn_saes::dashboard::format::{Dashboard, DashboardError, ExampleGroup};
use attn_saes::dashboard::{BuildInputs, BuildOptions};
use attn_saes::lm::{self, HookRequest, LoadedModel, ZConvention};
use attn_saes::rng::Rng;
use attn_saes::sae::{Architecture, BlockDiagSae, SaeConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;

fn load(model: &str) -> LoadedModel {
    lm::load_model(&fixture(model).display().to_string(), &Device::flex()).unwrap()
}

fn inputs<'a>(
    loaded: &'a LoadedModel,
    sae: &'a BlockDiagSae,
    windows: Vec<Vec<u32>>,
) -> BuildInputs<'a> {
    BuildInputs {
        loaded,
        sae,
        layer: 1,
        z_convention: ZConvention::TransformerLens,
        windows,
        windows_from: "test windows".into(),
        sae_source: "test".into(),
        run_config: None,
        history: Default::default(),
        run_heads: None,
        ce_scores: None,
        built_from: None,
    }
}

fn build_quiet(inputs: &BuildInputs, opts: &BuildOptions) -> Dashboard {
    build::build(inputs, opts, &mut |_, _, _| {}).unwrap()
}

/// Random windows of `t` tokens starting with BOS.
fn random_windows(loaded: &LoadedModel, n: usize, t: usize, seed: u64) -> Vec<Vec<u32>> {
    let cfg = &loaded.transformer.config;
    let bos = cfg.bos_token_id.unwrap_or(0);
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut w = vec![bos];
            w.extend((1..t).map(|_| rng.below(cfg.d_vocab) as u32));
            w
        })
        .collect()
}

/// A random ReLU SAE for a model, with negative encoder biases so features are sparse.
fn random_sae(loaded: &LoadedModel, m: usize, seed: u64) -> BlockDiagSae {
    random_sae_with(loaded, m, seed, Architecture::Relu)
}

/// As [`random_sae`], with another activation (JumpReLU: thresholds from 0.2 to 2).
fn random_sae_with(
    loaded: &LoadedModel,
    m: usize,
    seed: u64,
    architecture: Architecture,
) -> BlockDiagSae {
    let cfg = &loaded.transformer.config;
    let mut rng = Rng::new(seed);
    let config = SaeConfig {
        n_heads: cfg.n_heads,
        d_head: cfg.d_head,
        features_per_head: m,
        architecture,
    };
    let device = Device::flex();
    let mut sae = BlockDiagSae::init(config, &mut rng, &device);
    let (h, d) = (cfg.n_heads, cfg.d_head);
    let w: Vec<f32> = (0..h * d * m).map(|_| rng.normal() as f32).collect();
    sae.w_enc = Tensor::from_data(TensorData::new(w, [h, d, m]), &device);
    let b: Vec<f32> = (0..h * m).map(|_| -(rng.uniform() as f32) * 1.5).collect();
    sae.b_enc = Tensor::from_data(TensorData::new(b, [h, m]), &device);
    sae.input_scale = (0..h).map(|i| 0.7 + 0.3 * i as f32).collect();
    let b: Vec<f32> = (0..h * d).map(|_| 0.1 * rng.normal() as f32).collect();
    sae.b_dec = Tensor::from_data(TensorData::new(b, [h, d]), &device);
    if sae.log_threshold.is_some() {
        let lt: Vec<f32> = (0..h * m)
            .map(|_| (0.2 + 1.8 * rng.uniform() as f32).ln())
            .collect();
        sae.log_threshold = Some(Tensor::from_data(TensorData::new(lt, [h, m]), &device));
    }
    sae
}

/// The SAE on windows run through the LM `per_forward` at a time, on the host: its
/// pre-activations and features `[n, H, m]`, inputs and reconstructions `[n, H, d]`.
struct SaeOn {
    pre: Vec<f32>,
    feats: Vec<f32>,
    x: Vec<f32>,
    recon: Vec<f32>,
}

fn sae_on(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    windows: &[Vec<u32>],
    per_forward: usize,
) -> SaeOn {
    let model = &loaded.transformer;
    let (h, d) = (sae.config.n_heads, sae.config.d_head);
    let host = |t: Tensor<3>| t.swap_dims(0, 1).into_data().try_to_vec::<f32>().unwrap();
    let mut all = SaeOn {
        pre: Vec::new(),
        feats: Vec::new(),
        x: Vec::new(),
        recon: Vec::new(),
    };
    for chunk in windows.chunks(per_forward) {
        let z = model
            .run(
                model.tokens(chunk).unwrap(),
                &HookRequest::hook_z(&[1]),
                None,
            )
            .unwrap()
            .hook_z
            .remove(&1)
            .unwrap();
        let n = chunk.iter().map(Vec::len).sum::<usize>();
        let x = sae.scale_input(z.reshape([n, h, d])); // [H, n, d]
        let out = sae.forward(x.clone()); // [H, n, m]
        all.pre.extend(host(out.pre));
        all.feats.extend(host(out.feats));
        all.x.extend(host(x));
        all.recon.extend(host(out.recon));
    }
    all
}

/// `sum_s DFA + b_enc = pre` at the target of every example, top and interval groups'.
fn check_dfa_identity(model: &str, sae: &BlockDiagSae, windows: Vec<Vec<u32>>) {
    let loaded = load(model);
    let opts = BuildOptions {
        top_k: 6,
        windows_per_forward: 3,
        interval_dfa: true,
        ..BuildOptions::default()
    };
    let inp = inputs(&loaded, sae, windows.clone());
    let d = build_quiet(&inp, &opts);
    let pre = sae_on(&loaded, sae, &windows, 1).pre;
    let b_enc = sae.b_enc.clone().into_data().try_to_vec::<f32>().unwrap();
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    let t = windows[0].len();
    let (mut checked, mut intervals, mut spread) = (0, 0, 0);
    let mut worst = 0f64;
    for (head, data) in d.heads.iter().enumerate() {
        for (f, feature) in data.features.iter().enumerate() {
            for e in &feature.examples {
                intervals += usize::from(e.group != ExampleGroup::Top);
                // Windows in the file are the used ones, in corpus order: find the original.
                let w = &d.windows[e.window as usize];
                let orig = windows.iter().position(|x| x == w).unwrap();
                let tok = orig * t + e.target as usize;
                let want = pre[(tok * h + head) * m + f] as f64;
                let got = e.dfa.iter().map(|&x| x as f64).sum::<f64>() + b_enc[head * m + f] as f64;
                assert_eq!(e.dfa.len(), e.target as usize + 1);
                worst = worst.max((got - want).abs());
                assert!(
                    (got - want).abs() < 1e-4,
                    "{model} head {head} feature {f}: sum DFA + b_enc = {got}, pre = {want}"
                );
                assert!((e.activation as f64 - want).abs() < 1e-4);
                // A dense SAE's DFA by model head adds up to the same; a per-head SAE has
                // none.
                match d.meta.dense_heads() {
                    Some(r) => {
                        assert_eq!(e.dfa_by_head.len(), r, "{model}");
                        let sum = e.dfa_by_head.iter().map(|&x| x as f64).sum::<f64>();
                        let by_head = sum + b_enc[head * m + f] as f64;
                        assert!((by_head - want).abs() < 1e-4, "{model}: by head {by_head}");
                        spread +=
                            usize::from(e.dfa_by_head.iter().filter(|x| **x != 0.0).count() > 1);
                    }
                    None => assert!(e.dfa_by_head.is_empty()),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(d.meta.dfa_by_head, d.meta.dense_heads().is_some());
    if d.meta.dfa_by_head {
        assert!(
            spread * 2 > checked,
            "{model}: {spread} of {checked} spread over heads"
        );
    }
    // Through the file (f16), by head included.
    let back = Dashboard::from_bytes(&d.to_bytes().unwrap()).unwrap();
    assert_eq!(back, d.quantized());
    println!(
        "{model}: DFA identity on {checked} examples ({intervals} of interval groups), max \
         error {worst:.2e}"
    );
    assert!(checked > 20, "{model}: only {checked} examples checked");
    assert!(
        intervals > 20,
        "{model}: only {intervals} interval examples checked"
    );
}

#[test]
fn dfa_sums_to_the_pre_activation_on_gpt2_gelu2l_llama_and_attention_only() {
    for model in [
        "gpt2_tiny",
        "gelu2l_tiny",
        "llama_tiny",
        "qwen2_tiny",
        "qwen3_tiny",
        "smollm3_tiny",
        "attn2l_tiny",
        "attn2l_noln_tiny",
    ] {
        let loaded = load(model);
        let sae = random_sae(&loaded, 10, 3);
        let windows = random_windows(&loaded, 7, 14, 11);
        check_dfa_identity(model, &sae, windows);
    }
}

/// Where features read from, end to end: layer 0 of `gpt2_heads`
/// (`tests/fixtures/make_heads_fixture.py`) has a previous-token head, a BOS head and a
/// self head, set by hand and checked in transformers' attention; so (nearly) every feature
/// of those heads must read from that source in the dashboard's DFA. Fails if DFA were
/// stored a position off, or the kinds mixed up.
#[test]
fn where_features_read_from_follows_the_heads_attention() {
    use attn_saes::dashboard::sources::{SourceKind, head_sources};
    let loaded = load("gpt2_heads");
    let sae = random_sae(&loaded, 24, 5);
    let windows = random_windows(&loaded, 12, 24, 21);
    let inp = BuildInputs {
        layer: 0,
        ..inputs(&loaded, &sae, windows)
    };
    let d = build_quiet(&inp, &BuildOptions::default());
    let sources: Vec<_> = (0..4)
        .map(|h| head_sources(&d.windows, &d.heads[h]))
        .collect();
    for (h, s) in sources.iter().enumerate() {
        println!("head {h}: {}", s.describe());
        assert!(s.features() >= 8, "head {h}: {}", s.describe());
    }
    let share = |h: usize, kinds: &[SourceKind]| {
        let s = &sources[h];
        kinds.iter().map(|&k| s.count(k)).sum::<u32>() as f64 / s.features() as f64
    };
    // At target 1 the previous token is BOS, which counts as the first token: features
    // that fire most there read from it.
    assert_eq!(share(0, &[SourceKind::Previous, SourceKind::First]), 1.0);
    assert!(share(0, &[SourceKind::Previous]) >= 0.75);
    assert!(share(1, &[SourceKind::First]) >= 0.9);
    assert!(share(2, &[SourceKind::Current]) >= 0.9);
    // The random head reads from elsewhere: not all previous, first or self.
    let firm = [SourceKind::Previous, SourceKind::First, SourceKind::Current];
    assert!(share(3, &firm) < 0.9);
    // Where the heads attend on the same tokens, by kind (target 1's previous token is BOS).
    let attention = |h: usize| d.meta.heads[h].attention.clone().unwrap();
    let t = 24.0;
    assert!((attention(0).share(SourceKind::Previous) - (t - 2.0) / (t - 1.0)).abs() < 0.01);
    assert!((attention(0).share(SourceKind::First) - 1.0 / (t - 1.0)).abs() < 0.01);
    assert!(attention(1).share(SourceKind::First) > 0.99);
    assert!(attention(2).share(SourceKind::Current) > 0.99);
    // The file carries each head's summary, and a viewer computing it from the file's
    // (f16) DFA gets the same.
    let back = Dashboard::from_bytes(&d.to_bytes().unwrap()).unwrap();
    for (h, s) in sources.iter().enumerate() {
        assert_eq!(back.meta.heads[h].reads_from.as_ref(), Some(s));
        assert_eq!(&head_sources(&back.windows, &back.heads[h]), s);
    }
    // The file keeps each head's random-token scores, as `heads` computes them.
    let kept = attn_saes::lm::head_scores::head_scores(
        &loaded.transformer,
        0,
        attn_saes::lm::head_scores::SEQUENCES,
        attn_saes::lm::head_scores::COPY_LEN,
        attn_saes::lm::head_scores::SEED,
    )
    .unwrap();
    for (h, s) in kept.iter().enumerate() {
        assert_eq!(back.meta.heads[h].random_tokens, Some(*s));
    }
    assert!(kept[0].previous > 0.99 && kept[1].first > 0.99 && kept[2].current > 0.99);
    // The same heads by their attention on repeated random tokens.
    let scores = attn_saes::lm::head_scores::head_scores(&loaded.transformer, 0, 4, 20, 3).unwrap();
    println!("head scores: {scores:?}");
    assert!(scores[0].previous > 0.99);
    assert!(scores[1].first > 0.99);
    assert!(scores[2].current > 0.99);
    assert!(scores.iter().all(|s| s.induction < 0.5));
}

/// Induction, end to end: layer 1's head 3 of `gpt2_heads` is an induction head built on
/// layer 0's previous-token head. On windows of BOS + R + R it attends, in the second
/// copy, to the token after the earlier copy of the current token, and to BOS in the first;
/// its features must read from there.
#[test]
fn an_induction_heads_features_read_from_the_token_after_the_earlier_copy() {
    use attn_saes::dashboard::sources::{SourceKind, head_sources};
    use attn_saes::lm::head_scores::{head_scores, repeated_sequences};
    let loaded = load("gpt2_heads");
    let cfg = &loaded.transformer.config;
    let len = 12;
    let windows = repeated_sequences(cfg.d_vocab, cfg.bos_token_id, 16, len, 9);
    let sae = random_sae(&loaded, 24, 7);
    let d = build_quiet(&inputs(&loaded, &sae, windows), &BuildOptions::default());
    let s = head_sources(&d.windows, &d.heads[3]);
    println!("layer 1 head 3: {}", s.describe());
    let n = s.features() as f64;
    assert!(n >= 12.0, "{}", s.describe());
    // Features that fire most in the first copy read from BOS: the head attends there.
    assert_eq!(
        (s.count(SourceKind::Induction) + s.count(SourceKind::First)) as f64,
        n,
        "{}",
        s.describe()
    );
    assert!(
        s.count(SourceKind::Induction) as f64 >= 0.5 * n,
        "{}",
        s.describe()
    );
    // Its attention on these windows: half the targets are in the second copy.
    let a = d.meta.heads[3].attention.clone().unwrap();
    let half = len as f64 / (2 * len) as f64;
    assert!(
        (a.share(SourceKind::Induction) - half).abs() < 0.02,
        "{a:?}"
    );
    assert!((a.share(SourceKind::First) - half).abs() < 0.02, "{a:?}");
    // The random-token score says the same; the layer's random heads do not.
    let scores = head_scores(&loaded.transformer, 1, 4, 20, 3).unwrap();
    println!("layer 1 scores: {scores:?}");
    assert!(scores[3].induction > 0.99);
    assert!(scores[..3].iter().all(|s| s.induction < 0.5));
}

/// `attn-saes heads`: the library's scores as JSON and a table, for one layer or every
/// layer (from one forward pass, equal to each layer's own); a layer the model lacks is an
/// error naming its layers.
#[test]
fn heads_command_writes_the_scores_and_refuses_a_missing_layer() {
    use attn_saes::lm::head_scores::{head_scores, layers_head_scores};
    let dir = TempDir::new("attn-saes-heads", "cli");
    let json = dir.join("scores.json");
    let model = fixture("gpt2_heads").display().to_string();
    let run = |layer: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"));
        cmd.args(["--device", "cpu", "heads", "--model", &model]);
        if let Some(layer) = layer {
            cmd.args(["--layer", layer]);
        }
        cmd.args(["--sequences", "4", "--len", "20", "--seed", "3", "--json"])
            .arg(&json)
            .output()
            .unwrap()
    };
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap() };
    let loaded = load("gpt2_heads");
    let layer = |l: usize| head_scores(&loaded.transformer, l, 4, 20, 3).unwrap();

    let out = run(Some("0"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Said before the work: its size, and a --len that does not fit shortened.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one forward pass over 4 sequences of 41 tokens"),
        "{stderr}"
    );
    let cfg = &loaded.transformer.config;
    let fits = attn_saes::lm::head_scores::copy_len(cfg, 100_000);
    assert!(fits < 100_000);
    let long = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args([
            "--device", "cpu", "heads", "--model", &model, "--layer", "0",
        ])
        .args(["--sequences", "1", "--len", "100000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&long.stderr);
    assert!(long.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--len 100000 shortened to {fits} random tokens per copy, to fit {}'s context of {} \
             positions",
            cfg.name, cfg.n_ctx
        )),
        "{stderr}"
    );
    let want = layer(0);
    assert_eq!(read(), serde_json::to_value(&want).unwrap());
    assert!(stdout.contains("2 x 20 random tokens"), "{stdout}");
    assert!(
        stdout.contains(&format!("    0     0 {:>9.3}", want[0].previous)),
        "{stdout}"
    );

    // Every layer.
    let out = run(None);
    assert!(out.status.success());
    let both = layers_head_scores(&loaded.transformer, &[0, 1], 4, 20, 3).unwrap();
    assert_eq!(both, vec![layer(0), layer(1)]);
    assert_eq!(read(), serde_json::to_value(&both).unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("    1     3 {:>9.3}", both[1][3].previous)),
        "{stdout}"
    );

    let out = run(Some("2"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has layers 0 to 1, not 2"), "{stderr}");
}

/// `text --upstream`: a source's DFA split by what wrote the residual stream there, every
/// head, feature and source of both windows at the last position, against the numpy float64
/// reference (`dashboard/make_dfa_reference.py`: each writer's output taken through LN1 with
/// its scale held, `W_V` and the encoder column), and each earlier head's part by the
/// position it read from; in the raw convention the parts (the value bias among them) sum
/// to the raw DFA; at layer 0 only the embeddings write.
#[test]
fn dfa_upstream_matches_the_numpy_reference() {
    use attn_saes::live::{Writer, upstream_of};
    let tl = ZConvention::TransformerLens;
    for (model, names) in [
        (
            "gpt2_tiny",
            &[
                "embedding",
                "positions",
                "L0 h0",
                "L0 h1",
                "L0 h2",
                "L0 h3",
                "MLP 0",
            ][..],
        ),
        (
            "llama_tiny",
            &["embedding", "L0 h0", "L0 h1", "L0 h2", "L0 h3", "MLP 0"],
        ),
    ] {
        for (device_name, device) in test_devices() {
            // On wgpu (lavapipe in CI) a sample: a feature in six, a source in five.
            let sampled =
                |f: usize, s: usize| device_name == "cpu" || (f % 6 == 1 && s.is_multiple_of(5));
            let (loaded, sae, r) = dfa_fixture(model, &device);
            let tokens = r.tokens("tokens");
            let (h, m, t) = (sae.config.n_heads, sae.config.features_per_head, 12);
            let up = &r.get("upstream").data; // [2, H, m, 12, C]
            let by = &r.get("upstream_by_source").data; // [H, m, 12, 1, H, 12]
            let dfa = &r.get("dfa").data; // [2, H, 12, 12, m]
            let gpt2 = model == "gpt2_tiny";
            let c = names.len() + usize::from(gpt2); // and the output biases last
            let (mut worst, mut worst_by, mut worst_dfa) = (0f64, 0f64, 0f64);
            for (b, ids) in tokens.chunks(t).enumerate() {
                for head in 0..h {
                    for f in 0..m {
                        for s in (0..t).filter(|&s| sampled(f, s)) {
                            let u = upstream_of(&loaded, &sae, (1, tl), ids, (head, f), (t - 1, s))
                                .unwrap();
                            let got: Vec<String> =
                                u.parts.iter().map(|p| p.writer.name()).collect();
                            assert_eq!(&got[..names.len()], names);
                            assert_eq!(u.parts.len(), c, "{got:?}");
                            if gpt2 {
                                assert_eq!(u.parts[c - 1].writer, Writer::OutputBiases);
                            }
                            let want_dfa = dfa[(((b * h + head) * t + t - 1) * t + s) * m + f];
                            worst_dfa = worst_dfa.max((u.dfa as f64 - want_dfa).abs());
                            for (k, part) in u.parts.iter().enumerate() {
                                let want = up[(((b * h + head) * m + f) * t + s) * c + k];
                                worst = worst.max((part.value as f64 - want).abs());
                                if let Writer::Head { head: h0, .. } = part.writer {
                                    assert_eq!(part.by_source.len(), s + 1);
                                    if b == 0 {
                                        let at = (((head * m + f) * t + s) * h + h0) * t;
                                        for (sp, v) in part.by_source.iter().enumerate() {
                                            worst_by =
                                                worst_by.max((*v as f64 - by[at + sp]).abs());
                                        }
                                        assert!(by[at + s + 1..at + t].iter().all(|x| *x == 0.0));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            println!(
                "{model} on {device_name}: parts {worst:.2e}, by source {worst_by:.2e}, dfa {worst_dfa:.2e}"
            );
            assert!(worst < 2e-5 && worst_by < 2e-5 && worst_dfa < 2e-5);

            // The raw convention: the parts and the value bias sum to the raw DFA.
            let ids = &tokens[..t];
            for (head, f, s) in [(0, 3, 0), (2, 7, 5), (3, 11, 11)] {
                let want = dfa_by_hand(&loaded, &sae, (1, ZConvention::Raw), ids, (head, f), s);
                let u = upstream_of(
                    &loaded,
                    &sae,
                    (1, ZConvention::Raw),
                    ids,
                    (head, f),
                    (t - 1, s),
                )
                .unwrap();
                let sum: f32 = u.parts.iter().map(|p| p.value).sum();
                assert!(
                    (sum - want).abs() < 1e-4 && (u.dfa - want).abs() < 1e-5,
                    "{sum} {want}"
                );
                let last = u.parts.last().unwrap();
                assert_eq!(last.writer == Writer::ValueBias, gpt2, "{last:?}");
            }
            // At layer 0 the embeddings alone.
            let u = upstream_of(&loaded, &sae, (0, tl), ids, (1, 2), (t - 1, 4)).unwrap();
            let got: Vec<String> = u.parts.iter().map(|p| p.writer.name()).collect();
            assert_eq!(got, names[..1 + usize::from(gpt2)]);
            let sum: f32 = u.parts.iter().map(|p| p.value).sum();
            let want = dfa_by_hand(&loaded, &sae, (0, tl), ids, (1, 2), 4);
            assert!((sum - want).abs() < 1e-5 && (u.dfa - want).abs() < 1e-5);
            // A source after the position is refused.
            let err = upstream_of(&loaded, &sae, (1, tl), ids, (0, 0), (3, 4)).unwrap_err();
            assert!(
                err.to_string().contains("a source is at or before"),
                "{err}"
            );
        }
    }
}

/// `text --upstream S --through 0,H0,S'`: a layer-0 head's term of the split, read from
/// `S'`, split in turn by what wrote the stream entering layer 0 there (the embeddings, and
/// GPT-2's layer-0 value bias, which the reference takes from the weights), against the
/// numpy float64 reference (`upstream2`, every head and source and every other feature in
/// window 0 on the CPU; a sample on wgpu); the step's value is the term it splits
/// (`upstream_by_source`); a step that does not go up, or reads from after its position,
/// is refused.
#[test]
fn dfa_two_steps_upstream_matches_the_numpy_reference() {
    use attn_saes::live::{Through, UpstreamAsk, upstream_through};
    let tl = ZConvention::TransformerLens;
    for (model, names) in [
        ("gpt2_tiny", &["embedding", "positions", "value bias"][..]),
        ("llama_tiny", &["embedding"]),
    ] {
        for (device_name, device) in test_devices() {
            let sampled = |f: usize, s: usize, sp: usize| match device_name {
                "cpu" => f.is_multiple_of(4),
                _ => f % 6 == 1 && s.is_multiple_of(5) && sp.is_multiple_of(4),
            };
            let (loaded, sae, r) = dfa_fixture(model, &device);
            let tokens = r.tokens("tokens");
            let (h, m, t) = (sae.config.n_heads, sae.config.features_per_head, 12);
            let up2 = &r.get("upstream2").data; // [H, m, 12, H, 12, C0]
            let by = &r.get("upstream_by_source").data; // [H, m, 12, 1, H, 12]
            let c = names.len();
            let ids = &tokens[..t];
            let (mut worst, mut worst_value, mut n) = (0f64, 0f64, 0);
            for head in 0..h {
                for f in 0..m {
                    for s in 0..t {
                        for h0 in 0..h {
                            for sp in (0..=s).filter(|&sp| sampled(f, s, sp)) {
                                let step = Through {
                                    layer: 0,
                                    head: h0,
                                    from: sp,
                                };
                                let ask = UpstreamAsk::new((head, f), (t - 1, s)).then(step);
                                let u =
                                    upstream_through(&loaded, &sae, (1, tl), ids, &ask).unwrap();
                                let got: Vec<String> =
                                    u.parts.iter().map(|p| p.writer.name()).collect();
                                assert_eq!(got, names);
                                assert_eq!((u.through.as_slice(), u.source), (&[step][..], s));
                                assert_eq!(u.split_at(1), (0, sp));
                                let at = (((head * m + f) * t + s) * h + h0) * t + sp;
                                worst_value = worst_value.max((u.dfa as f64 - by[at]).abs());
                                for (k, part) in u.parts.iter().enumerate() {
                                    let want = up2[at * c + k];
                                    worst = worst.max((part.value as f64 - want).abs());
                                }
                                n += 1;
                            }
                        }
                    }
                }
            }
            println!(
                "{model} on {device_name}: {n} splits, parts {worst:.2e}, value {worst_value:.2e}"
            );
            assert!(worst < 2e-5 && worst_value < 2e-5);
            // A step that does not go up a layer, or reads from after its position, refused.
            let step = |layer, from| Through {
                layer,
                head: 0,
                from,
            };
            for (through, says) in [
                (vec![step(1, 2)], "through L1 h0 from 2"),
                (vec![step(0, 6)], "through L0 h0 from 6"),
                (vec![step(0, 2), step(0, 1)], "through L0 h0 from 1"),
            ] {
                let ask = UpstreamAsk {
                    through,
                    ..UpstreamAsk::new((0, 0), (9, 5))
                };
                let err = upstream_through(&loaded, &sae, (1, tl), ids, &ask).unwrap_err();
                assert!(err.to_string().contains(says), "{err}");
            }
        }
    }
}

/// `UpstreamAsk::follow`: on a random 4-layer GPT-2 and Llama (a deeper path than the
/// fixtures' two layers allow), the path followed in one forward is the one taken by asking
/// for each step in turn, each step chosen here from the split before by the rule (the head
/// with the largest |part|, the position giving the largest |part| of its term, while that
/// term is at least 1% of the DFA from the source); a followed path after asked steps keeps
/// them.
#[test]
fn dfa_follow_takes_the_strongest_head_as_asking_each_step_does() {
    use attn_saes::live::{Through, Upstream, UpstreamAsk, Writer, upstream_through};
    let device = Device::flex();
    let (mut depths, mut stopped_early) = (std::collections::BTreeMap::new(), 0);
    for (fixture_model, seed) in [("gpt2_tiny", 3), ("llama_tiny", 4)] {
        let tiny = load(fixture_model);
        let mut config = tiny.transformer.config.clone();
        config.n_layers = 4;
        let loaded = LoadedModel {
            transformer: lm::load::random(config, seed, &device),
            tokenizer: tiny.tokenizer.clone(),
            source: tiny.source.clone(),
        };
        let sae = random_sae(&loaded, 6, seed);
        let ids = loaded
            .tokenizer
            .encode(TEXT, false)
            .unwrap()
            .get_ids()
            .to_vec();
        let (p, hook) = (ids.len() - 1, (3, ZConvention::TransformerLens));
        // The step the rule takes from `u`, chosen here.
        let rule = |u: &Upstream| -> Option<Through> {
            let heads = u
                .parts
                .iter()
                .filter(|w| matches!(w.writer, Writer::Head { .. }));
            let top = heads.max_by(|a, b| a.value.abs().total_cmp(&b.value.abs()))?;
            let Writer::Head { layer, head } = top.writer else {
                unreachable!()
            };
            let (from, term) = (top.by_source.iter().copied().enumerate())
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()).then(b.0.cmp(&a.0)))?;
            (term.abs() >= 0.01 * u.terms[0].abs()).then_some(Through { layer, head, from })
        };
        for (head, feature, source) in [(0, 0, 2), (1, 3, p), (2, 5, 5), (3, 1, 0), (1, 2, 7)] {
            let ask = UpstreamAsk::new((head, feature), (p, source));
            let split = |ask: &UpstreamAsk| upstream_through(&loaded, &sae, hook, &ids, ask);
            let followed = split(&ask.following()).unwrap();
            let mut by_hand = split(&ask).unwrap();
            while let Some(step) = rule(&by_hand) {
                let next = split(&by_hand.asked().then(step)).unwrap();
                // The step's term is the head's part read from that position.
                let Some(part) = (by_hand.parts.iter()).find(|w| {
                    w.writer
                        == Writer::Head {
                            layer: step.layer,
                            head: step.head,
                        }
                }) else {
                    panic!("no part of L{} h{}", step.layer, step.head)
                };
                assert!((next.dfa - part.by_source[step.from]).abs() < 1e-6);
                by_hand = next;
            }
            assert_eq!(followed.followed, by_hand.through.len());
            by_hand.followed = followed.followed;
            assert_eq!(
                followed, by_hand,
                "{fixture_model} {head},{feature} from {source}"
            );
            assert_eq!(followed.terms.len(), followed.through.len() + 1);
            *depths.entry(followed.through.len()).or_insert(0) += 1;
            let layer = followed.through.last().map_or(3, |s| s.layer);
            stopped_early += usize::from(layer > 0);
            // Following after a step asked for keeps it, and follows from there.
            if let Some(&first) = followed.through.first() {
                let after = split(&ask.then(first).following()).unwrap();
                assert_eq!(after.through, followed.through);
                assert_eq!(after.followed, followed.through.len() - 1);
                assert_eq!(after.parts, followed.parts);
            }
        }
    }
    // Paths of several lengths were followed, and some stopped before layer 0.
    eprintln!("followed paths by length: {depths:?}; {stopped_early} stopped above layer 0");
    assert!(
        depths.len() >= 2 && depths.keys().any(|&d| d >= 2),
        "{depths:?}"
    );
    assert!(stopped_early > 0);
}

/// The upstream split sums to the DFA it splits where no numpy reference covers it: a dense
/// SAE (one block reading every head's hook_z: its read at a source is every model head's
/// pattern and value together) on GPT-2 and Llama (grouped-query) fixtures, and per-head
/// SAEs on GELU-2L and the attention-only models (shortformer positions, which the residual
/// stream does not carry; one without LayerNorm). Each source's split sums to the DFA the
/// analysis gives from it, and a step further up through each layer-0 head and each
/// position it read from sums, with that head's value bias, to its term; attention-only
/// models list no MLP and no positions.
#[test]
fn dfa_upstream_sums_to_the_dfa_for_dense_saes_and_attention_only_models() {
    use attn_saes::live::{
        LiveAnalysis, Through, UpstreamAsk, Writer, upstream_of, upstream_through,
    };
    let device = Device::flex();
    let cases = [
        ("gpt2_tiny", true),
        ("llama_tiny", true),
        ("qwen2_tiny", false),
        ("qwen3_tiny", false),
        ("smollm3_tiny", false),
        ("gelu2l_tiny", false),
        ("attn2l_tiny", false),
        ("attn2l_noln_tiny", false),
    ];
    let conventions = [ZConvention::TransformerLens, ZConvention::Raw];
    for ((model, dense), conv) in cases.into_iter().flat_map(|c| conventions.map(|v| (c, v))) {
        let loaded = load(model);
        let cfg = &loaded.transformer.config;
        let (sae, head) = match dense {
            true => {
                let config = SaeConfig {
                    n_heads: 1,
                    d_head: cfg.n_heads * cfg.d_head,
                    features_per_head: 16,
                    architecture: Architecture::Relu,
                };
                (BlockDiagSae::init(config, &mut Rng::new(7), &device), 0)
            }
            false => (random_sae(&loaded, 10, 5), 1),
        };
        let attn_only = model.starts_with("attn2l");
        let a = LiveAnalysis::run(&loaded, &sae, 1, conv, TEXT).unwrap();
        let p = a.len() - 1;
        let (mut worst, mut worst_step, mut steps) = (0f32, 0f32, 0);
        for f in [0, 5, 9] {
            let dfa = a.dfa(head, f, p);
            for (s, &want) in dfa.iter().enumerate() {
                let feature = (head, f);
                let u = upstream_of(&loaded, &sae, (1, conv), &a.ids, feature, (p, s)).unwrap();
                let sum: f32 = u.parts.iter().map(|w| w.value).sum();
                worst = worst.max((sum - want).abs()).max((u.dfa - want).abs());
                let names: Vec<String> = u.parts.iter().map(|w| w.writer.name()).collect();
                let mlp_or_positions = (u.parts.iter())
                    .any(|w| matches!(w.writer, Writer::Mlp { .. } | Writer::Positions));
                assert_eq!(mlp_or_positions, !attn_only, "{model}: {names:?}");
                // The value's constant, which nothing upstream writes: in the raw convention
                // where the model has one (Llama, Qwen3 and SmolLM3 have none; Qwen2 its
                // value bias); in TransformerLens' only where it leaves the norm's bias in
                // hook_z (shortformer with LayerNorm).
                let constant = match conv {
                    ZConvention::Raw => {
                        !["llama_tiny", "qwen3_tiny", "smollm3_tiny"].contains(&model)
                    }
                    ZConvention::TransformerLens => model == "attn2l_tiny",
                };
                let last = u.parts.last().map(|w| w.writer);
                assert_eq!(
                    last == Some(Writer::ValueBias),
                    constant,
                    "{model} {conv:?}"
                );
                for w in &u.parts {
                    let Writer::Head { layer, head: h0 } = w.writer else {
                        continue;
                    };
                    for (from, &term) in w.by_source.iter().enumerate() {
                        let step = Through {
                            layer,
                            head: h0,
                            from,
                        };
                        let ask = UpstreamAsk::new(feature, (p, s)).then(step);
                        let v = upstream_through(&loaded, &sae, (1, conv), &a.ids, &ask).unwrap();
                        let sum: f32 = v.parts.iter().map(|w| w.value).sum();
                        worst_step = worst_step.max((sum - term).abs()).max((v.dfa - term).abs());
                        steps += 1;
                    }
                }
            }
            assert!(dfa.iter().any(|x| x.abs() > 1e-2), "{model} #{f}: {dfa:?}");
        }
        println!(
            "{model} {conv:?}: parts to DFA {worst:.2e}; {steps} steps further, {worst_step:.2e}"
        );
        assert!(worst < 1e-4 && worst_step < 1e-5, "{worst} {worst_step}");
    }
}

/// A tiny fixture model on `device`, its random dashboard SAE and its numpy reference
/// (`dashboard/make_dfa_reference.py`).
fn dfa_fixture(model: &str, device: &Device) -> (LoadedModel, BlockDiagSae, Reference) {
    let loaded = lm::load_model(&fixture(model).display().to_string(), device).unwrap();
    let sae = BlockDiagSae::load(&fixture(&format!("dashboard/{model}_sae")), device).unwrap();
    let r = Reference::load(&format!("dashboard/{model}_reference.safetensors"));
    (loaded, sae, r)
}

/// The DFA of `(head, feature)` at the window's last position from source `s`, from the
/// forward's pattern and value hooks and the encoder column: `A[t, s] scale v_s . W_enc`.
fn dfa_by_hand(
    loaded: &LoadedModel,
    sae: &BlockDiagSae,
    (layer, z_convention): (usize, ZConvention),
    ids: &[u32],
    (head, f): (usize, usize),
    s: usize,
) -> f32 {
    let model = &loaded.transformer;
    let hooks = HookRequest {
        pattern: vec![layer],
        values: vec![layer],
        z_convention,
        ..Default::default()
    };
    let mut cache = model
        .run(model.tokens(&[ids.to_vec()]).unwrap(), &hooks, None)
        .unwrap();
    let (t, h, dh) = (ids.len(), model.config.n_heads, model.config.d_head);
    let pattern = values(cache.pattern.remove(&layer).unwrap()); // [1, H, T, T]
    let v = values(cache.values.remove(&layer).unwrap()); // [1, T, H, dh]
    let w_enc = values(sae.w_enc.clone()); // [H, dh, m]
    let m = sae.config.features_per_head;
    let dot: f64 = (0..dh)
        .map(|k| v[(s * h + head) * dh + k] * w_enc[(head * dh + k) * m + f])
        .sum();
    (pattern[(head * t + t - 1) * t + s] * sae.input_scale[head] as f64 * dot) as f32
}

/// The values hook, DFA (of top and interval-group examples), activations and logit effects
/// against the numpy float64 forward.
#[test]
fn dfa_values_and_logit_effects_match_the_numpy_reference() {
    for model in ["gpt2_tiny", "llama_tiny"] {
        let loaded = load(model);
        let device = Device::flex();
        let sae = BlockDiagSae::load(&fixture(&format!("dashboard/{model}_sae")), &device).unwrap();
        let r = Reference::load(&format!("dashboard/{model}_reference.safetensors"));
        let tokens = r.tokens("tokens");
        let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
        let t = 12;
        let windows: Vec<Vec<u32>> = tokens.chunks(t).map(<[u32]>::to_vec).collect();
        // The hooks themselves.
        let model_ = &loaded.transformer;
        let hooks = HookRequest {
            pattern: vec![1],
            values: vec![1],
            hook_z: vec![1],
            ..Default::default()
        };
        let mut cache = model_
            .run(model_.tokens(&windows).unwrap(), &hooks, None)
            .unwrap();
        assert_close(
            &format!("{model} values"),
            &values(cache.values.remove(&1).unwrap()),
            &r.get("values").data,
            1e-4,
        );
        assert_close(
            &format!("{model} pattern"),
            &values(cache.pattern.remove(&1).unwrap()),
            &r.get("pattern").data,
            1e-5,
        );
        assert_close(
            &format!("{model} hook_z"),
            &values(cache.hook_z.remove(&1).unwrap()),
            &r.get("hook_z").data,
            1e-4,
        );

        let opts = BuildOptions {
            top_k: 2 * t, // every active position is a top example
            keep_bos: true,
            windows_per_forward: 1,
            interval_dfa: true,
            ..BuildOptions::default()
        };
        let inp = inputs(&loaded, &sae, windows.clone());
        let d = build_quiet(&inp, &opts);
        // Without `interval_dfa` the file is the same but for the interval examples' DFA.
        let mut without = d.clone();
        for f in without.heads.iter_mut().flat_map(|h| h.features.iter_mut()) {
            for e in f
                .examples
                .iter_mut()
                .filter(|e| e.group != ExampleGroup::Top)
            {
                e.dfa.clear();
            }
        }
        let plain = BuildOptions {
            interval_dfa: false,
            ..opts.clone()
        };
        assert_eq!(
            build_quiet(&inp, &plain),
            without,
            "{model}: only the DFA differs"
        );
        let pre = &r.get("pre").data; // [2, 12, H, m]
        let dfa = &r.get("dfa").data; // [2, H, 12, 12, m]
        let (mut n, mut n_interval) = (0, 0);
        let mut worst = 0f64;
        for head in 0..h {
            for f in 0..m {
                let feature = &d.heads[head].features[f];
                let active: Vec<(usize, usize)> = (0..2)
                    .flat_map(|b| (0..t).map(move |p| (b, p)))
                    .filter(|&(b, p)| pre[((b * t + p) * h + head) * m + f] > 0.0)
                    .collect();
                let tops: Vec<_> = feature
                    .examples
                    .iter()
                    .filter(|e| e.group == ExampleGroup::Top)
                    .collect();
                assert_eq!(
                    tops.len(),
                    active.len(),
                    "{model} {head}/{f}: every active position is a top example"
                );
                for e in tops {
                    let b = windows
                        .iter()
                        .position(|w| *w == d.windows[e.window as usize])
                        .unwrap();
                    let p = e.target as usize;
                    let want = pre[((b * t + p) * h + head) * m + f];
                    assert!(
                        (e.activation as f64 - want).abs() < 1e-4,
                        "{model}: activation {} vs {want}",
                        e.activation
                    );
                    for (s, &got) in e.dfa.iter().enumerate() {
                        let want = dfa[((((b * h + head) * t + p) * t) + s) * m + f];
                        worst = worst.max((got as f64 - want).abs());
                        assert!(
                            (got as f64 - want).abs() < 1e-4,
                            "{model}: DFA {got} vs {want}"
                        );
                    }
                    // The activation row along the window.
                    for &(q, a) in &e.activations {
                        let want = pre[((b * t + q as usize) * h + head) * m + f];
                        assert!((a as f64 - want).abs() < 1e-4);
                    }
                    let active_in_window = active.iter().filter(|x| x.0 == b).count();
                    assert_eq!(e.activations.len(), active_in_window);
                    n += 1;
                }
                // The interval groups' examples have the reference's DFA too.
                for e in (feature.examples.iter()).filter(|e| e.group != ExampleGroup::Top) {
                    let b = windows
                        .iter()
                        .position(|w| *w == d.windows[e.window as usize])
                        .unwrap();
                    let p = e.target as usize;
                    assert_eq!(e.dfa.len(), p + 1, "{model}: interval example's DFA");
                    for (s, &got) in e.dfa.iter().enumerate() {
                        let want = dfa[((((b * h + head) * t + p) * t) + s) * m + f];
                        worst = worst.max((got as f64 - want).abs());
                        assert!(
                            (got as f64 - want).abs() < 1e-4,
                            "{model}: interval DFA {got} vs {want}"
                        );
                    }
                    n_interval += 1;
                }
                // Logit effects: the reference row, top and bottom 10.
                let vocab = loaded.transformer.config.d_vocab;
                let row = &r.get("logit_effects").data[(head * m + f) * vocab..][..vocab];
                // The reference's 10 highest and lowest by a full sort (ties to the lower id).
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let ranked = |ids: &[usize]| -> Vec<(u32, f32)> {
                    ids.iter()
                        .take(10)
                        .map(|&i| (i as u32, row[i] as f32))
                        .collect()
                };
                let top = ranked(&order);
                order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
                let bottom = ranked(&order);
                let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(
                    ids(&feature.logit_top),
                    ids(&top),
                    "{model} {head}/{f} top logits"
                );
                assert_eq!(
                    ids(&feature.logit_bottom),
                    ids(&bottom),
                    "{model} {head}/{f} bottom logits"
                );
                for (got, want) in feature
                    .logit_top
                    .iter()
                    .zip(&top)
                    .chain(feature.logit_bottom.iter().zip(&bottom))
                {
                    assert!(
                        (got.1 - want.1).abs() < 1e-4,
                        "{model}: logit {} vs {}",
                        got.1,
                        want.1
                    );
                }
                assert_eq!(feature.logit_histogram.iter().sum::<u32>() as usize, vocab);
            }
        }
        println!(
            "{model}: {n} top and {n_interval} interval examples match numpy, max DFA error \
             {worst:.2e}"
        );
        assert!(n > 100 && n_interval > 20, "{n}, {n_interval}");
    }
}

/// Top-k examples, interval groups, histograms and densities against a brute-force pass
/// over every token with the SAE's own (burn) forward, in the same chunks, for every
/// activation: the builder's host encoder must give bit-identical activations.
#[test]
fn top_examples_and_interval_groups_match_brute_force() {
    let loaded = load("gpt2_tiny");
    for architecture in [
        Architecture::Relu,
        Architecture::TopK { k: 3 },
        Architecture::BatchTopK { k: 2 },
        Architecture::JumpRelu { bandwidth: 0.05 },
    ] {
        let sae = random_sae_with(&loaded, 16, 7, architecture);
        check_against_brute_force(&loaded, &sae);
    }
    // BatchTopK with its inference thresholds (from 0.2 to 2): each token on its own.
    let mut sae = random_sae_with(&loaded, 16, 7, Architecture::BatchTopK { k: 2 });
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    let mut rng = Rng::new(8);
    let t: Vec<f32> = (0..h * m)
        .map(|_| 0.2 + 1.8 * rng.uniform() as f32)
        .collect();
    sae.batch_threshold = Some(Tensor::from_data(
        TensorData::new(t, [h, m]),
        &Device::flex(),
    ));
    check_against_brute_force(&loaded, &sae);
    // A model whose end-of-text token is not its BOS (as Llama's): those positions are
    // never counted either.
    let mut loaded = load("gpt2_tiny");
    loaded.transformer.config.eos_token_ids = vec![7];
    check_against_brute_force(&loaded, &random_sae(&loaded, 16, 7));
}

fn check_against_brute_force(loaded: &LoadedModel, sae: &BlockDiagSae) {
    let arch = sae.config.architecture;
    let t = 16;
    let mut windows = random_windows(loaded, 23, t, 5);
    // End-of-text tokens other than BOS (a model whose EOS is not its BOS): separators in
    // every third window, never counted.
    let model = &loaded.transformer;
    let bos = model.config.bos_token_id.unwrap();
    let eos: Vec<u32> = (model.config.eos_token_ids.iter().copied())
        .filter(|&e| e != bos)
        .collect();
    if let Some(&e) = eos.first() {
        for w in windows.iter_mut().step_by(3) {
            w[5] = e;
        }
    }
    let masked = |tok: u32| tok == bos || eos.contains(&tok);
    let opts = BuildOptions {
        top_k: 5,
        n_intervals: 4,
        per_interval: 3,
        histogram_bins: 7,
        seed: 99,
        windows_per_forward: 4,
        ..BuildOptions::default()
    };
    let d = build_quiet(&inputs(loaded, sae, windows.clone()), &opts);
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    // Brute force: all activations, [n_tokens, H, m], in the builder's chunks.
    let brute = sae_on(loaded, sae, &windows, 4);
    let acts = &brute.feats;
    let tokens: Vec<u32> = windows.concat();
    let counted: Vec<usize> = (0..tokens.len()).filter(|&i| !masked(tokens[i])).collect();
    assert_eq!(d.meta.n_tokens as usize, counted.len());
    // Per-head L0 and explained variance (the builder sums reconstructions sparsely on
    // the host; here the SAE's dense decoder): 1 - sum|x - x_hat|^2 / sum|x - mean|^2.
    let dh = sae.config.d_head;
    for (head, summary) in d.meta.heads.iter().enumerate() {
        let row = |v: &[f32], i: usize| v[(i * h + head) * dh..][..dh].to_vec();
        let mut mean = vec![0f64; dh];
        for &i in &counted {
            for (mj, xj) in mean.iter_mut().zip(row(&brute.x, i)) {
                *mj += xj as f64 / counted.len() as f64;
            }
        }
        let (mut resid, mut total) = (0f64, 0f64);
        for &i in &counted {
            for ((xj, rj), mj) in row(&brute.x, i).iter().zip(row(&brute.recon, i)).zip(&mean) {
                resid += (*xj as f64 - rj as f64).powi(2);
                total += (*xj as f64 - mj).powi(2);
            }
        }
        let ev = 1.0 - resid / total;
        assert!(
            (summary.explained_variance - ev).abs() < 1e-5,
            "{arch:?} head {head}: EV {} vs {ev}",
            summary.explained_variance
        );
        let l0 = counted
            .iter()
            .map(|&i| {
                (0..m)
                    .filter(|&f| acts[(i * h + head) * m + f] > 0.0)
                    .count()
            })
            .sum::<usize>() as f64
            / counted.len() as f64;
        assert!((summary.l0 - l0).abs() < 1e-12, "{arch:?} head {head}: L0");
    }
    // Which features fire together: each feature's five features (of any head) of highest
    // positive Pearson correlation over the counted tokens, from every activation here.
    assert!(d.meta.cofiring);
    let total = h * m;
    let column = |g: usize| -> Vec<f64> {
        let (head, f) = (g / m, g % m);
        (counted.iter())
            .map(|&i| acts[(i * h + head) * m + f] as f64)
            .collect()
    };
    let columns: Vec<Vec<f64>> = (0..total).map(column).collect();
    let n = counted.len() as f64;
    let stats: Vec<(f64, f64)> = (columns.iter())
        .map(|c| {
            let mean = c.iter().sum::<f64>() / n;
            let var = c.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        })
        .collect();
    // Only features that fired on at least 5 tokens are listed, or have a list.
    let enough = |g: usize| columns[g].iter().filter(|&&x| x > 0.0).count() >= 5;
    let mut compared = 0;
    for a in 0..total {
        let listed = &d.heads[a / m].features[a % m].cofiring;
        let mut rs: Vec<(usize, f64)> = (0..total)
            .filter(|&b| b != a && enough(a) && enough(b))
            .filter(|&b| stats[a].1 > 0.0 && stats[b].1 > 0.0)
            .map(|b| {
                let cov = (columns[a].iter().zip(&columns[b]))
                    .map(|(x, y)| (x - stats[a].0) * (y - stats[b].0))
                    .sum::<f64>()
                    / n;
                (b, cov / (stats[a].1 * stats[b].1))
            })
            .filter(|&(_, r)| r > 0.0)
            .collect();
        rs.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        rs.truncate(5);
        assert_eq!(
            listed.len(),
            rs.len(),
            "{arch:?} feature {a}: {listed:?} vs {rs:?}"
        );
        for (k, (&(g, r), &(b, want))) in listed.iter().zip(&rs).enumerate() {
            assert!(
                (r as f64 - want).abs() < 1e-4,
                "{arch:?} feature {a} #{k}: r {r} vs {want}"
            );
            // The same feature unless two correlations tie within the tolerance.
            let tied = rs.iter().any(|&(c, q)| c != b && (q - want).abs() < 1e-4);
            assert!(
                g as usize == b || tied,
                "{arch:?} feature {a} #{k}: {g} vs {b}"
            );
            compared += 1;
        }
    }
    assert!(
        compared > total,
        "{arch:?}: only {compared} correlations compared"
    );
    let window_of = |e: &attn_saes::dashboard::format::Example| {
        windows
            .iter()
            .position(|w| *w == d.windows[e.window as usize])
            .unwrap()
    };
    let mut n_interval_examples = 0;
    for head in 0..h {
        for f in 0..m {
            let feature = &d.heads[head].features[f];
            let act = |i: usize| acts[(i * h + head) * m + f];
            let mut active: Vec<(f32, usize)> = counted
                .iter()
                .map(|&i| (act(i), i))
                .filter(|x| x.0 > 0.0)
                .collect();
            // Density, max.
            assert_eq!(
                feature.density,
                (active.len() as f64 / counted.len() as f64) as f32,
                "{arch:?} head {head} feature {f}: density"
            );
            let max = active.iter().map(|x| x.0).fold(0.0, f32::max);
            assert_eq!(feature.max_activation, max, "{arch:?}: max activation");
            // Top k: activation descending, earlier token first on ties.
            active.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want: Vec<(usize, f32)> =
                active.iter().take(opts.top_k).map(|x| (x.1, x.0)).collect();
            let got: Vec<(usize, f32)> = feature
                .examples
                .iter()
                .filter(|e| e.group == ExampleGroup::Top)
                .map(|e| (window_of(e) * t + e.target as usize, e.activation))
                .collect();
            assert_eq!(got, want, "{arch:?} head {head} feature {f}: top examples");
            // Histogram and interval counts: sum to the active count, bin by bin.
            let mut hist = vec![0u32; opts.histogram_bins];
            let mut counts = vec![0u32; opts.n_intervals];
            let mut bins: Vec<Vec<(u64, usize)>> = vec![Vec::new(); opts.n_intervals];
            for &(a, i) in &active {
                hist[interval_bin(a, max, opts.histogram_bins)] += 1;
                let b = interval_bin(a, max, opts.n_intervals);
                counts[b] += 1;
                bins[b].push((sample_key(opts.seed, i as u64, head, f), i));
            }
            assert_eq!(feature.activation_histogram, hist);
            assert_eq!(
                feature.activation_histogram.iter().sum::<u32>() as usize,
                active.len()
            );
            assert_eq!(feature.interval_counts, counts);
            for (b, mut keyed) in bins.into_iter().enumerate() {
                keyed.sort();
                let want: Vec<usize> = keyed.iter().take(opts.per_interval).map(|x| x.1).collect();
                let got: Vec<usize> = feature
                    .examples
                    .iter()
                    .filter(|e| e.group == ExampleGroup::Interval(b as u8))
                    .map(|e| window_of(e) * t + e.target as usize)
                    .collect();
                assert_eq!(got, want, "{arch:?} head {head} feature {f} interval {b}");
                n_interval_examples += got.len();
            }
            // Every example's activations along its window.
            for e in &feature.examples {
                let w = window_of(e);
                let want: Vec<(u16, f32)> = (0..t)
                    .filter(|&p| !masked(tokens[w * t + p]) && act(w * t + p) > 0.0)
                    .map(|p| (p as u16, act(w * t + p)))
                    .collect();
                assert_eq!(
                    e.activations, want,
                    "{arch:?}: activations along the window"
                );
                assert_eq!(e.activation, act(w * t + e.target as usize));
                assert!(
                    !masked(tokens[w * t + e.target as usize]),
                    "BOS and end-of-text are never examples"
                );
            }
        }
    }
    assert!(
        n_interval_examples > 100,
        "{arch:?}: {n_interval_examples} interval examples"
    );
}

/// Small dashboards' settings.
fn small_options() -> BuildOptions {
    BuildOptions {
        top_k: 3,
        n_intervals: 3,
        per_interval: 2,
        histogram_bins: 5,
        logit_k: 4,
        interval_dfa: true,
        upstream: true,
        ..BuildOptions::default()
    }
}

fn small_dashboard() -> Dashboard {
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 6, 1);
    let windows = random_windows(&loaded, 6, 10, 2);
    build_quiet(&inputs(&loaded, &sae, windows), &small_options())
}

#[test]
fn dashboard_file_round_trips_and_rejects_damage_without_panicking() {
    let d = small_dashboard();
    let bytes = d.to_bytes().unwrap();
    let back = Dashboard::from_bytes(&bytes).unwrap();
    let want = d.quantized();
    assert_eq!(back.meta, want.meta, "round trip: metadata");
    assert_eq!(back.windows, want.windows, "round trip: windows");
    assert_eq!(
        back.token_strings, want.token_strings,
        "round trip: token strings"
    );
    assert!(back == want, "round trip: heads (f16 fields rounded)");
    assert_eq!(
        back.to_bytes().unwrap(),
        bytes,
        "re-serialising gives the same bytes"
    );
    println!("small dashboard: {} bytes", bytes.len());

    // Truncation at every offset.
    for cut in 0..bytes.len() {
        assert!(
            Dashboard::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    // Bit flips: an error, or (a flip the checks cannot see) the same dashboard.
    let mut rng = Rng::new(17);
    let mut rejected = 0;
    for _ in 0..4000 {
        let mut damaged = bytes.clone();
        let i = rng.below(damaged.len());
        damaged[i] ^= 1 << rng.below(8);
        match Dashboard::from_bytes(&damaged) {
            Err(_) => rejected += 1,
            Ok(x) => assert_eq!(x, back, "a bit flip at {i} changed the content undetected"),
        }
    }
    println!("bit flips rejected: {rejected} of 4000");
    assert!(rejected > 3900);
}

/// Co-firing past its limits (here set low): the lists are over batches of windows spread
/// over the dashboard's (every 2nd here), the very lists a dashboard of those windows alone
/// has; nothing else changes; the file says how many tokens, which batches and why, and
/// `features --across` passes it on. Limits the first batch passes alone leave no lists, saying
/// why.
#[test]
fn cofiring_past_its_limits_lists_over_spread_windows_and_says_why() {
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 6, 1);
    let windows = random_windows(&loaded, 8, 10, 2);
    // Four batches of two windows.
    let opts = BuildOptions {
        windows_per_forward: 2,
        ..small_options()
    };
    let lists = |d: &Dashboard| -> Vec<Vec<(u32, f32)>> {
        (d.heads.iter())
            .flat_map(|h| h.features.iter().map(|f| f.cofiring.clone()))
            .collect()
    };
    let full = build_quiet(&inputs(&loaded, &sae, windows.clone()), &opts);
    assert!(full.meta.cofiring && full.meta.cofiring_limit.is_none());
    // Every active (token, feature) pair: the heads' L0 summed, times the tokens. At 60% of
    // them, the third batch does not fit beside the first two, so the builder keeps the
    // first, takes the third, and skips the fourth.
    let l0: f64 = full.meta.heads.iter().map(|h| h.l0).sum();
    let active = (l0 * full.meta.n_tokens as f64).round() as usize;
    let at = active * 6 / 10;
    let opts_part = BuildOptions {
        cofiring_limits: (at, u64::MAX),
        ..opts.clone()
    };
    let half = build_quiet(&inputs(&loaded, &sae, windows.clone()), &opts_part);
    let limit = half.meta.cofiring_limit.clone().expect("a limit reached");
    assert!(
        limit.why.contains(&format!("more than {at} active")),
        "{limit:?}"
    );
    assert!(half.meta.cofiring);
    assert_eq!((limit.every, limit.windows_per_batch), (2, 2), "{limit:?}");
    // The lists of a dashboard of just the windows of batches 0 and 2.
    let taken: Vec<_> = (windows.chunks(2).step_by(2)).flatten().cloned().collect();
    let d = build_quiet(&inputs(&loaded, &sae, taken), &opts);
    assert_eq!(d.meta.n_tokens, limit.tokens, "{limit:?}");
    assert_eq!(lists(&half), lists(&d), "batches 0 and 2's lists");
    assert!(lists(&half).iter().any(|l| !l.is_empty()));
    assert_ne!(lists(&half), lists(&full));
    // Nothing else changed.
    let strip = |d: &Dashboard| {
        let mut d = d.clone();
        d.meta.cofiring_limit = None;
        d.meta.cofiring = false;
        d.heads
            .iter_mut()
            .flat_map(|h| &mut h.features)
            .for_each(|f| f.cofiring.clear());
        d
    };
    assert!(strip(&half) == strip(&full), "more than co-firing changed");

    let dir = TempDir::new("attn-saes-cofiring", "limits");
    let features = |d: &Dashboard, args: &[&str]| {
        let path = dir.join("dashboard.safetensors");
        build::write(d, &path).unwrap();
        assert_eq!(build::read(&path).unwrap().meta, d.quantized().meta);
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["features", "--run"])
            .arg(&path)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = features(&half, &["--across", "2"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "over {} of the {} dashboard tokens, those of every 2nd batch of 2 windows (more \
             than {at} active",
            limit.tokens, half.meta.n_tokens
        )),
        "{said}"
    );
    // Limits the first batch alone passes: no lists, and why.
    for (limits, why) in [
        ((10, u64::MAX), "more than 10 active (token, feature) pairs"),
        ((usize::MAX, 100), "more than 1e2 products of activations"),
    ] {
        let d = build_quiet(
            &inputs(&loaded, &sae, windows.clone()),
            &BuildOptions {
                cofiring_limits: limits,
                ..opts.clone()
            },
        );
        assert!(!d.meta.cofiring, "{limits:?}");
        let limit = d.meta.cofiring_limit.clone().unwrap();
        assert!(limit.tokens == 0 && limit.why.contains(why), "{limit:?}");
        assert!(
            strip(&d) == strip(&full),
            "{limits:?}: more than co-firing changed"
        );
        let out = features(&d, &["--across", "3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    }
}

/// Rewrites field `key` of the file's metadata envelope with `f` (keeping the tensors; the
/// meta checksum is recomputed, so only the checks on content can catch the change).
fn with_metadata(
    bytes: &[u8],
    key: &str,
    f: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> Vec<u8> {
    use attn_saes::dashboard::format::{METADATA_KEY, checksum};
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut info = header.metadata().clone().unwrap();
    let mut envelope: serde_json::Value = serde_json::from_str(&info[METADATA_KEY]).unwrap();
    envelope[key] = f(&envelope[key]);
    let sum = checksum(envelope["meta"].as_str().unwrap().as_bytes());
    envelope["meta_checksum"] = serde_json::json!(sum);
    info.insert(METADATA_KEY.to_string(), envelope.to_string());
    safetensors::serialize(st.tensors(), Some(info)).unwrap()
}

#[test]
fn wrong_versions_formats_and_absurd_sizes_are_clear_errors() {
    let bytes = small_dashboard().to_bytes().unwrap();
    let newer = with_metadata(&bytes, "version", |_| 2.into());
    let e = Dashboard::from_bytes(&newer).unwrap_err();
    assert!(matches!(e, DashboardError::Version { found: 2 }), "{e}");
    assert!(e.to_string().contains("newer"), "{e}");
    let older = with_metadata(&bytes, "version", |_| 0.into());
    assert!(
        Dashboard::from_bytes(&older)
            .unwrap_err()
            .to_string()
            .contains("older")
    );
    let other = with_metadata(&bytes, "format", |_| "sae-vis".into());
    assert!(matches!(
        Dashboard::from_bytes(&other).unwrap_err(),
        DashboardError::WrongFormat(_)
    ));
    // Declared sizes that do not match the arrays, or absurd ones: errors, no allocation.
    for (from, to) in [
        (
            "\"features_per_head\":6",
            "\"features_per_head\":1073741824",
        ),
        ("\"features_per_head\":6", "\"features_per_head\":7"),
        ("\"n_heads\":4,\"d_head\"", "\"n_heads\":40000,\"d_head\""),
        ("\"context_size\":10", "\"context_size\":100000"),
        ("\"histogram_bins\":5", "\"histogram_bins\":500000000"),
    ] {
        let changed = with_metadata(&bytes, "meta", |m| {
            let m = m.as_str().unwrap();
            assert!(m.contains(from), "meta has {from}");
            m.replacen(from, to, 1).into()
        });
        let e = Dashboard::from_bytes(&changed).unwrap_err();
        println!("{to}: {e}");
    }
    // A header that declares a huge length.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(
        Dashboard::from_bytes(&huge).unwrap_err(),
        DashboardError::Container(_)
    ));

    // A file of another kind, or a copy cut short, says which; the commands that take a
    // dashboard file say it too, naming the file, before doing anything else (`serve` wrote
    // nothing and said Your text was off first).
    let other = b"# attn-saes\n\nBlock-diagonal sparse autoencoders\n".as_slice();
    let cut = &bytes[..bytes.len() - 100];
    for (file, says) in [
        (other, "does not start with a safetensors header"),
        (cut, "cut short"),
    ] {
        let e = Dashboard::from_bytes(file).unwrap_err().to_string();
        assert!(
            e.starts_with("not a dashboard file: ") && e.contains(says),
            "{e}"
        );
        let dir = TempDir::new("attn-saes-not-a-dashboard", "cli");
        let path = dir.join("given.safetensors");
        std::fs::write(&path, file).unwrap();
        for args in [
            vec!["serve", path.to_str().unwrap(), "--write-to"],
            vec!["features", "--run", path.to_str().unwrap()],
            vec!["compare", path.to_str().unwrap()],
        ] {
            let site = dir.join("site");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
                .args(&args)
                .args((args[0] == "serve").then_some(&site))
                .env("RUST_BACKTRACE", "0")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}: {said}");
            let want = format!("Error: {}: {e}", path.display());
            assert_eq!(said.trim(), want, "{args:?}");
            assert!(!site.exists());
        }
    }
}

/// SAEDashboard's batch layout, and each feature's vector the SAELens export's `W_dec` row
/// (written by `export_saelens` from the same SAE and read back here).
#[test]
fn neuronpedia_export_writes_the_saedashboard_batch_layout() {
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 6, 1);
    let windows = random_windows(&loaded, 6, 10, 2);
    let d = build_quiet(&inputs(&loaded, &sae, windows), &small_options());
    assert_eq!(
        d,
        small_dashboard(),
        "the same SAE and windows as small_dashboard"
    );
    let dir = std::env::temp_dir().join(format!("attn-saes-np-{}", std::process::id()));
    // An earlier export's files (more batches, explanations) are replaced; others stay.
    let stale = ["batch-99.json", "explanations/batch-0.jsonl.gz"];
    let kept = ["notes.txt", "batch-7x.json", "explanations/batch-1.json"];
    std::fs::create_dir_all(dir.join("explanations")).unwrap();
    for name in stale.iter().chain(&kept) {
        std::fs::write(dir.join(name), b"earlier").unwrap();
    }
    let no_labels = attn_saes::dashboard::labels::Labels::new(&d.meta);
    let n = attn_saes::dashboard::neuronpedia::export(&d, &dir, &no_labels).unwrap();
    for name in stale {
        assert!(
            !dir.join(name).exists(),
            "{name}: no labels, no explanations"
        );
    }
    for name in kept {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), b"earlier", "{name}");
    }
    let m = d.meta.sae.features_per_head;
    let live: Vec<(usize, usize)> = (0..d.heads.len())
        .flat_map(|h| (0..m).map(move |f| (h, f)))
        .filter(|&(h, f)| d.heads[h].features[f].density > 0.0)
        .collect();
    assert_eq!(n, live.len().div_ceil(128));
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch-0.json")).unwrap()).unwrap();
    let first = &batch[0];
    let (h, f) = live[0];
    let feature = &d.heads[h].features[f];
    assert_eq!(first["feature_index"], h * m + f);
    assert_eq!(first["pos_str"].as_array().unwrap().len(), 4);
    assert_eq!(first["pos_str"][0], d.token(feature.logit_top[0].0));
    assert_eq!(
        first["neg_values"][0].as_f64().unwrap() as f32,
        feature.logit_bottom[0].1
    );
    assert_eq!(
        first["freq_hist_data_bar_heights"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let acts = first["activations"].as_array().unwrap();
    assert_eq!(acts.len(), feature.examples.len());
    assert_eq!(
        acts[0]["bin_min"], -1.0,
        "the top group comes first, bin_min -1"
    );
    let e = &feature.examples[0];
    let values = acts[0]["values"].as_array().unwrap();
    assert_eq!(values.len(), d.meta.context_size);
    // Activations along the context and DFA as the file holds them (f16), each read back
    // as that f16 exactly, the rest of the context zeros.
    let f16 = |x: &serde_json::Value| half::f16::from_f64(x.as_f64().unwrap());
    let mut want = vec![0f32; d.meta.context_size];
    for &(p, a) in &e.activations {
        want[p as usize] = a;
    }
    let read: Vec<_> = values.iter().map(f16).collect();
    assert_eq!(
        read,
        want.iter()
            .map(|&a| half::f16::from_f32(a))
            .collect::<Vec<_>>()
    );
    assert!(want[e.target as usize] > 0.0);
    let dfa = acts[0]["dfa_values"].as_array().unwrap();
    assert_eq!(dfa.len(), d.meta.context_size);
    for (p, x) in dfa.iter().enumerate() {
        let a = e.dfa.get(p).copied().unwrap_or(0.0);
        assert_eq!(f16(x), half::f16::from_f32(a), "DFA at {p}");
    }
    // The head attribution: all in the feature's head; the vector: the folded SAELens row.
    let hook = attn_saes::sae::io::HookInfo {
        model_name: "gpt2_tiny".into(),
        hook_layer: 1,
        context_size: 10,
        prepend_bos: true,
        dataset_path: String::new(),
        z_convention: Default::default(),
    };
    let saelens = dir.join("saelens");
    sae.export_saelens(&saelens, &hook, None).unwrap();
    let (shape, w) = f32_array(&saelens.join("sae_weights.safetensors"), "W_dec");
    let d_in = shape[1];
    for x in batch.as_array().unwrap() {
        let global = x["feature_index"].as_u64().unwrap() as usize;
        let shares: Vec<f64> = (x["decoder_weights_dist"].as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = (0..d.heads.len())
            .map(|h| (h == global / m) as u8 as f64)
            .collect();
        assert_eq!(shares, want);
        let vector: Vec<f64> = (x["vector"].as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap())
            .collect();
        let row = &w[global * d_in..(global + 1) * d_in];
        assert_eq!(vector.len(), d_in);
        for (a, &b) in vector.iter().zip(row) {
            assert!((a - b as f64).abs() < 1e-6, "feature {global}: {a} vs {b}");
        }
    }
    // The groups' bins hold their examples: each interval example's activation at its
    // target lies in (bin_min, bin_max], the top group's at most the maximum; the bins'
    // shares are their counts over the tokens the feature fired on (density x tokens), and
    // sum to 1. DFA's maximum and target, the density and the histograms' bar centres.
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    for x in batch.as_array().unwrap() {
        let global = x["feature_index"].as_u64().unwrap() as usize;
        let f = &d.heads[global / m].features[global % m];
        let fired = (f.density as f64 * d.meta.n_tokens as f64).round();
        assert_eq!(f.interval_counts.iter().sum::<u32>() as f64, fired);
        assert_eq!(num(&x["frac_nonzero"]), f.density as f64);
        let mut shares = 0.0;
        let mut seen_bins = std::collections::BTreeSet::new();
        for (act, e) in x["activations"].as_array().unwrap().iter().zip(&f.examples) {
            let at = e.activation as f64;
            let (lo, hi) = (num(&act["bin_min"]), num(&act["bin_max"]));
            assert_eq!(act["qualifying_token_index"], e.target);
            match e.group {
                ExampleGroup::Top => {
                    assert_eq!(lo, -1.0);
                    assert_eq!(hi, f.max_activation as f64);
                    assert!(at <= hi + 1e-6);
                }
                ExampleGroup::Interval(i) => {
                    let width = f.max_activation as f64 / 3.0;
                    assert!((lo - width * i as f64).abs() < 1e-5, "bin {i}: {lo}");
                    assert!(
                        (hi - width * (i as f64 + 1.0)).abs() < 1e-5,
                        "bin {i}: {hi}"
                    );
                    assert!(
                        at > lo - 1e-5 && at <= hi + 1e-5,
                        "{at} in bin {i} ({lo}, {hi}]"
                    );
                    let share = num(&act["bin_contains"]);
                    assert!((share - f.interval_counts[i as usize] as f64 / fired).abs() < 1e-6);
                    if seen_bins.insert(i) {
                        shares += share;
                    }
                }
            }
            // Every example has its DFA, interval groups' too.
            assert_eq!(e.dfa.len(), e.target as usize + 1, "{:?}", e.group);
            let max = e.dfa.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(f16(&act["dfa_maxValue"]), half::f16::from_f32(max));
            assert_eq!(act["dfa_targetIndex"], e.target);
        }
        // Bins without examples (none of their tokens sampled) are not in the export.
        let without: f64 = (0..3u8)
            .filter(|i| !seen_bins.contains(i))
            .map(|i| f.interval_counts[i as usize] as f64 / fired)
            .sum();
        assert!(
            (shares + without - 1.0).abs() < 1e-5,
            "{shares} + {without}"
        );
        let bars: Vec<f64> = (x["freq_hist_data_bar_values"].as_array().unwrap().iter())
            .map(num)
            .collect();
        let step = f.max_activation as f64 / 5.0;
        for (i, b) in bars.iter().enumerate() {
            assert!((b - step * (i as f64 + 0.5)).abs() < 1e-5, "bar {i}: {b}");
        }
        assert_eq!(
            x["freq_hist_data_bar_heights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>() as f64,
            fired,
            "the activation histogram counts every token it fired on"
        );
    }
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run_settings.json")).unwrap())
            .unwrap();
    assert_eq!(settings["layer"], 1);
    assert_eq!(settings["hook_name"], "blocks.1.attn.hook_z");
    assert_eq!(settings["n_heads"], d.heads.len());
    assert_eq!(settings["features_per_head"], m);
    assert_eq!(settings["top_acts_group_size"], 3);
    assert_eq!(settings["n_quantiles"], 3);
    assert_eq!(settings["quantile_group_size"], 2);
    assert_eq!(settings["n_prompts_total"], 6);
    assert_eq!(settings["n_tokens_in_prompt"], 10);
    let skipped: Vec<usize> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("skipped_indexes.json")).unwrap())
            .unwrap();
    assert_eq!(skipped.len() + live.len(), d.heads.len() * m);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A tiny model, the dashboard fixtures' SAE for it and the effect reference's tokens. The
/// reference applies the SAE at every position, BOS too: an SAE that reads BOS.
fn effect_fixture(r: &Reference, model: &str) -> (LoadedModel, BlockDiagSae, Vec<u32>) {
    let sae = BlockDiagSae::load(&fixture(&format!("dashboard/{model}_sae")), &Device::flex());
    (
        load(model),
        BlockDiagSae {
            reads_bos: true,
            ..sae.unwrap()
        },
        r.tokens(&format!("{model}.tokens")),
    )
}

/// What removing a feature changes in the next-token predictions, against transformers in
/// float64 with the same feature taken out of z by a hook (`effect/make_effect_reference.py`):
/// the activations, both losses, and the probabilities of the tokens listed (with and
/// without the feature), rank by rank.
#[test]
fn feature_effect_matches_transformers_with_the_feature_removed() {
    use attn_saes::live::feature_effect;
    let r = Reference::load("effect/effect_reference.safetensors");
    for model in ["gpt2_tiny", "llama_tiny"] {
        let (loaded, sae, ids) = effect_fixture(&r, model);
        let pick = r.tokens(&format!("{model}.pick"));
        let (head, feature) = (pick[0] as usize, pick[1] as usize);
        let conv = ZConvention::TransformerLens;
        let e = feature_effect(&loaded, &sae, 1, conv, &ids, head, feature).unwrap();
        assert_eq!((e.head, e.feature), (head, feature));
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let want = |name: &str| r.get(&format!("{model}.{name}")).data.clone();
        assert_close(
            &format!("{model} activation"),
            &f64s(&e.activation),
            &want("activation"),
            1e-4,
        );
        assert_close(
            &format!("{model} loss"),
            &f64s(&e.loss),
            &want("loss"),
            1e-4,
        );
        assert_close(
            &format!("{model} ablated"),
            &f64s(&e.ablated),
            &want("ablated"),
            1e-4,
        );
        // The feature matters here (0.036 and 0.24 at most in the reference), so a removal
        // that did nothing would fail.
        let helps: Vec<f64> = (0..e.loss.len()).map(|p| e.helps(p) as f64).collect();
        let want_helps: Vec<f64> = want("ablated")
            .iter()
            .zip(want("loss"))
            .map(|(a, l)| a - l)
            .collect();
        assert!(want_helps.iter().any(|d| d.abs() > 0.03), "{want_helps:?}");
        assert_close(&format!("{model} helps"), &helps, &want_helps, 1e-4);
        let (logp, logp_ablated) = (want("logp"), want("logp_ablated"));
        let v = logp.len() / ids.len();
        let tol = 1e-5;
        for p in 0..ids.len() {
            let prob = |lp: &[f64], i: usize| lp[p * v + i].exp();
            let row: Vec<f64> = (0..v)
                .map(|i| prob(&logp, i) - prob(&logp_ablated, i))
                .collect();
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let check = |c: &attn_saes::live::TokenChange, rank: f64| {
                let i = c.id as usize;
                assert!(
                    (c.change() as f64 - rank).abs() < tol,
                    "{model} {p}: {c:?} vs {rank}"
                );
                assert!((c.clean as f64 - prob(&logp, i)).abs() < tol, "{model} {p}");
                assert!((c.ablated as f64 - prob(&logp_ablated, i)).abs() < tol);
            };
            for (i, c) in e.promotes[p].iter().enumerate() {
                check(c, sorted[i]);
            }
            for (i, c) in e.suppresses[p].iter().enumerate() {
                check(c, sorted[v - 1 - i]);
            }
            // Five each way wherever the reference has that many clear changes.
            if sorted[4] > tol {
                assert_eq!(e.promotes[p].len(), 5, "{model} {p}");
            }
            if sorted[v - 5] < -tol {
                assert_eq!(e.suppresses[p].len(), 5, "{model} {p}");
            }
        }
        assert!(e.promotes.iter().any(|l| l.len() == 5));
        // The activation tripled instead (`text --effect --scale 3`); scale 1 changes
        // nothing, bit for bit; scale 0 is the removal.
        use attn_saes::live::feature_effect_scaled;
        let scaled = |s| feature_effect_scaled(&loaded, &sae, 1, conv, &ids, (head, feature), s);
        let tripled = scaled(3.0).unwrap();
        assert_eq!(tripled.scale, 3.0);
        assert_close(
            &format!("{model} scaled"),
            &f64s(&tripled.ablated),
            &want("scaled"),
            1e-4,
        );
        assert!(
            (tripled.total() - e.total()).abs() > 0.01,
            "{model}: tripling is not removing"
        );
        let same = scaled(1.0).unwrap();
        assert_eq!(same.loss, same.ablated);
        assert_eq!(scaled(0.0).unwrap(), e);
        assert!(scaled(f32::NAN).is_err());
    }
}

/// A feature that never fires in the text changes nothing, bit for bit, and nothing before
/// a feature first fires changes either (the model is causal); an out-of-range feature is
/// an error naming the SAE's size.
#[test]
fn feature_effect_is_exactly_zero_where_the_feature_cannot_reach() {
    use attn_saes::live::feature_effect;
    let loaded = load("gpt2_tiny");
    let mut sae = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &Device::flex()).unwrap();
    let conv = ZConvention::TransformerLens;
    let ids = Reference::load("effect/effect_reference.safetensors").tokens("gpt2_tiny.tokens");
    // Feature 5 of head 2 silenced by its bias.
    let mut b_enc = values(sae.b_enc.clone());
    b_enc[2 * 12 + 5] = -1e6;
    sae.b_enc = Tensor::from_data(
        TensorData::new(
            b_enc.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
            [4, 12],
        ),
        &Device::flex(),
    );
    let e = feature_effect(&loaded, &sae, 1, conv, &ids, 2, 5).unwrap();
    assert!(e.activation.iter().all(|&a| a == 0.0));
    assert_eq!(e.loss, e.ablated);
    assert!(e.promotes.iter().chain(&e.suppresses).all(Vec::is_empty));
    // The feature that starts firing latest: no prediction before it can change, later
    // ones do.
    let e = (0..4)
        .flat_map(|h| (0..12).map(move |f| (h, f)))
        .map(|(h, f)| feature_effect(&loaded, &sae, 1, conv, &ids, h, f).unwrap())
        .filter(|e| e.first_firing().is_some())
        .max_by_key(|e| e.first_firing())
        .unwrap();
    let first = e.first_firing().unwrap();
    assert!(first > 1, "{first}");
    for p in 0..first {
        assert_eq!(e.loss[p], e.ablated[p], "position {p}");
    }
    assert!((first..e.loss.len()).any(|p| e.helps(p) != 0.0));
    let err = feature_effect(&loaded, &sae, 1, conv, &ids, 1, 12).unwrap_err();
    assert!(err.to_string().contains("4 heads of 12 features"), "{err}");
}

/// Each ranked feature's estimate against the reference's `[H, m]` values, within 1e-5 +
/// 1e-3 x |value|.
fn assert_estimates_match(
    what: &str,
    features: &[attn_saes::live::RankedFeature],
    want: &[f64],
    m: usize,
) {
    for f in features {
        let w = want[f.head * m + f.feature];
        assert!(
            (f.estimate as f64 - w).abs() <= 1e-5 + 1e-3 * w.abs(),
            "{what} head {} feature {}: {} vs {w}",
            f.head,
            f.feature,
            f.estimate
        );
    }
}

/// The first-order ranking of every feature on a text against torch autograd through the
/// same leaf (`effect/make_effect_reference.py`): each firing feature's estimate, largest
/// first; and the estimate is near the exact removal's change for the picked feature.
#[test]
fn feature_ranking_matches_torch_autograd() {
    use attn_saes::live::{feature_effect, rank_features};
    let r = Reference::load("effect/effect_reference.safetensors");
    for model in ["gpt2_tiny", "llama_tiny"] {
        let (loaded, sae, ids) = effect_fixture(&r, model);
        let conv = ZConvention::TransformerLens;
        let ranking = rank_features(&loaded, &sae, 1, conv, &ids).unwrap();
        assert_eq!(ranking.ids, ids);
        let want = &r.get(&format!("{model}.estimate")).data; // [H, m]
        let m = sae.config.features_per_head;
        let firing: Vec<usize> = (0..want.len()).filter(|&i| want[i] != 0.0).collect();
        assert_eq!(ranking.features.len(), firing.len(), "{model}");
        assert_estimates_match(model, &ranking.features, want, m);
        assert!(
            ranking
                .features
                .windows(2)
                .all(|w| w[0].estimate >= w[1].estimate)
        );
        // The picked feature: its firing count, and the estimate near the exact change
        // (-0.0569 against -0.0585 for gpt2_tiny, -0.127 against -0.142 for llama_tiny).
        let pick = r.tokens(&format!("{model}.pick"));
        let (head, feature) = (pick[0] as usize, pick[1] as usize);
        let ranked = ranking
            .features
            .iter()
            .find(|f| (f.head, f.feature) == (head, feature))
            .unwrap();
        let exact = feature_effect(&loaded, &sae, 1, conv, &ids, head, feature).unwrap();
        let fires = exact.activation.iter().filter(|&&a| a > 0.0).count();
        assert_eq!(ranked.fires as usize, fires);
        let total = exact.total();
        assert!(
            (ranked.estimate - total).abs() < 0.15 * total.abs(),
            "{model}: {} vs {total}",
            ranked.estimate
        );
    }
}

/// Ranking by an answer instead of the loss (`text --rank --answer [--against]`), against
/// torch autograd of the same objective (`effect/make_effect_reference.py`: the last
/// position's clean top two predictions): every firing feature's estimate of the fall in
/// the logit difference, and in the answer's log-probability; the objective's value; and
/// the exact change a removal gives, against the reference's log-probabilities with the
/// picked feature removed.
#[test]
fn feature_ranking_by_an_answer_matches_torch_autograd() {
    use attn_saes::live::{Objective, answer_objective, feature_effect_on, rank_features_for};
    let r = Reference::load("effect/effect_reference.safetensors");
    for model in ["gpt2_tiny", "llama_tiny"] {
        let (loaded, sae, ids) = effect_fixture(&r, model);
        let conv = ZConvention::TransformerLens;
        let asked = r.tokens(&format!("{model}.answer"));
        let (at, answer, against) = (asked[0] as usize, asked[1], asked[2]);
        assert_eq!(at, ids.len() - 1);
        // The tokens named by their text, as a user types them.
        let text = |id| attn_saes::lm::token_text(&loaded.tokenizer, id);
        let diff =
            answer_objective(&loaded, &ids, None, &text(answer), Some(&text(against))).unwrap();
        let Objective::Answer {
            at: got_at,
            answer: a,
            against: Some(b),
        } = &diff
        else {
            panic!("{diff:?}")
        };
        assert_eq!((*got_at, a.id, b.id), (at, answer, against), "{model}");
        let logprob = answer_objective(&loaded, &ids, Some(at), &text(answer), None).unwrap();
        let m = sae.config.features_per_head;
        let (logp, logp_ablated) = (
            &r.get(&format!("{model}.logp")).data,
            &r.get(&format!("{model}.logp_ablated")).data,
        );
        let v = logp.len() / ids.len();
        let row = |lp: &[f64], id: u32| lp[at * v + id as usize];
        for (objective, name, clean) in [
            (
                &diff,
                "estimate_logit_diff",
                row(logp, answer) - row(logp, against),
            ),
            (&logprob, "estimate_logprob", row(logp, answer)),
        ] {
            let ranking = rank_features_for(&loaded, &sae, 1, conv, &ids, objective).unwrap();
            assert_eq!(&ranking.objective, objective);
            let value = ranking.value.unwrap() as f64;
            assert!(
                (value - clean).abs() < 1e-4,
                "{model} {name}: {value} vs {clean}"
            );
            let want = &r.get(&format!("{model}.{name}")).data; // [H, m]
            let largest = want.iter().fold(0.0f64, |x, w| x.max(w.abs()));
            assert!(largest > 0.04, "{model} {name}: {largest}");
            let firing = (0..want.len()).filter(|&i| want[i] != 0.0).count();
            // Features firing only where the answer cannot see are ranked (at 0).
            assert!(ranking.features.len() >= firing, "{model} {name}");
            assert_estimates_match(&format!("{model} {name}"), &ranking.features, want, m);
        }
        // The exact change of the removal, the same objectives.
        let pick = r.tokens(&format!("{model}.pick"));
        let feature = (pick[0] as usize, pick[1] as usize);
        for (objective, clean, removed) in [
            (
                &diff,
                row(logp, answer) - row(logp, against),
                row(logp_ablated, answer) - row(logp_ablated, against),
            ),
            (&logprob, row(logp, answer), row(logp_ablated, answer)),
        ] {
            let e = feature_effect_on(
                &loaded,
                &sae,
                (1, conv),
                &ids,
                feature,
                0.0,
                Some(objective),
            )
            .unwrap();
            let (o, change) = e.objective.clone().unwrap();
            assert_eq!(&o, objective);
            assert!(
                (change.clean as f64 - clean).abs() < 1e-4,
                "{model}: {change:?}"
            );
            assert!(
                (change.changed as f64 - removed).abs() < 1e-4,
                "{model}: {change:?}"
            );
            // Everything else is the loss effect's.
            let plain = feature_effect_on(&loaded, &sae, (1, conv), &ids, feature, 0.0, None);
            assert_eq!(
                e,
                attn_saes::live::FeatureEffect {
                    objective: e.objective.clone(),
                    ..plain.unwrap()
                }
            );
        }
        // llama_tiny's picked feature moves the logit difference (by 0.088), so a change
        // read from the wrong rows would fail.
        if model == "llama_tiny" {
            assert!(
                (row(logp_ablated, answer) - row(logp_ablated, against) - row(logp, answer)
                    + row(logp, against))
                .abs()
                    > 0.05
            );
        }
        // What a user can get wrong: a position past the text, the same token twice.
        let err = answer_objective(&loaded, &ids, Some(ids.len()), &text(answer), None);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("the text has 12 tokens")
        );
        let err = answer_objective(&loaded, &ids, None, &text(answer), Some(&text(answer)));
        assert!(err.unwrap_err().to_string().contains("both"));
    }
}

/// The text the `text` command's tests run on.
const TEXT: &str = "When the cat and the dog went to the park, the dog gave a ball to the";

/// A gpt2_tiny run with dashboards in a fresh directory (kept while the first is held), with
/// its model and SAE loaded, for the `text` command's tests.
fn text_run(tag: &str) -> (TempDir, std::path::PathBuf, LoadedModel, BlockDiagSae) {
    let dir = TempDir::new(tag, "cli");
    let run = run_with_dashboard(&dir, 30);
    let loaded = load("gpt2_tiny");
    let sae = BlockDiagSae::load(&run.join("sae"), &Device::flex()).unwrap();
    (dir, run, loaded, sae)
}

/// `attn-saes --device cpu text RUN TEXT` with more arguments.
fn text_cli<'a>(
    run: &'a std::path::Path,
    text: &'a str,
) -> impl Fn(&[&str]) -> std::process::Output + 'a {
    move |more| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "text"])
            .arg(run)
            .arg(text)
            .args(more)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    }
}

/// `text --pick --upstream`: the JSON's split equals the library's for the source giving the
/// most (or the one asked), the text lists the writers with the positions heads read from,
/// and a source after the position is refused.
#[test]
fn text_command_takes_a_source_upstream() {
    use attn_saes::live::upstream_through;
    use attn_saes::live::{LiveAnalysis, Through, Upstream, UpstreamAsk, upstream_of};
    let (_dir, run, loaded, sae) = text_run("attn-saes-upstream");
    let text = TEXT;
    let cli = text_cli(&run, text);
    let conv = ZConvention::TransformerLens;
    let a = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
    let p = a.len() - 1;
    let h = (0..a.n_heads)
        .find(|&h| !a.active[h][p].is_empty())
        .unwrap();
    let f = a.active[h][p][0].0 as usize;
    let dfa = a.dfa(h, f, p);
    let strongest = (0..=p)
        .max_by(|&x, &y| dfa[x].abs().total_cmp(&dfa[y].abs()).then(y.cmp(&x)))
        .unwrap();
    let pick = format!("{p},{h},{f}");
    let shown = |more: &[&str]| -> Upstream {
        let out = cli(&[&["--pick", pick.as_str(), "--json"][..], more].concat());
        assert_succeeded(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        serde_json::from_value(v["upstream"].clone()).unwrap()
    };
    let library = |s| upstream_of(&loaded, &sae, (1, conv), &a.ids, (h, f), (p, s)).unwrap();
    let u = shown(&["--upstream"]);
    assert_eq!(u, library(strongest));
    assert!((u.dfa - dfa[strongest]).abs() < 1e-5);
    assert_eq!(shown(&["--upstream", "3"]), library(3));
    // Through layer 0's head 1 reading from position 2: the library's, whose value is that
    // head's term of the split from 3.
    let step = Through {
        layer: 0,
        head: 1,
        from: 2,
    };
    let through = shown(&["--upstream", "3", "--through", "0,1,2"]);
    let ask = UpstreamAsk::new((h, f), (p, 3)).then(step);
    let want = upstream_through(&loaded, &sae, (1, conv), &a.ids, &ask);
    assert_eq!(through, want.unwrap());
    let head = (library(3).parts.into_iter())
        .find(|w| w.writer.name() == "L0 h1")
        .unwrap();
    assert!((through.dfa - head.by_source[2]).abs() < 1e-6);
    let out = cli(&["--pick", &pick, "--upstream", "3", "--through", "0,1,2"]);
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "DFA from 3 {:?} through L0 h1 reading from 2 {:?} ({:+.4}) by what wrote the residual \
         stream entering layer 0 at 2",
        a.strings[3], a.strings[2], through.dfa
    );
    assert!(said.contains(&line), "{line}\n{said}");
    // --follow: the library's split followed up through the strongest heads, from a source
    // where that takes a step, and its path printed.
    let follow = |s: usize| UpstreamAsk::new((h, f), (p, s)).following();
    let source = (0..=p)
        .find(|&s| {
            let u = upstream_through(&loaded, &sae, (1, conv), &a.ids, &follow(s));
            u.unwrap().followed == 1
        })
        .expect("a source whose split follows a head");
    let at = source.to_string();
    let followed = shown(&["--upstream", &at, "--follow"]);
    let want = upstream_through(&loaded, &sae, (1, conv), &a.ids, &follow(source)).unwrap();
    assert_eq!(followed, want);
    let step = want.through[0];
    let out = cli(&["--pick", &pick, "--upstream", &at, "--follow"]);
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!(
            "Followed the strongest head up 1 step from the DFA from {source} {:?} ({:+.4})",
            a.strings[source], want.terms[0]
        ),
        format!(
            "  {:+.4} ({:+.1}%)  L0 h{} reading from {} {:?}",
            want.dfa,
            100.0 * want.dfa / want.terms[0],
            step.head,
            step.from,
            a.strings[step.from]
        ),
        "  stops: only the embeddings write layer 0's stream".to_string(),
    ] {
        assert!(said.contains(&line), "{line}\n{said}");
    }
    let out = cli(&["--pick", &pick, "--upstream", "3", "--through", "1,1,2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("through L1 h1 from 2: a step goes through a head of an earlier layer"),
        "{err}"
    );

    let out = cli(&["--pick", &pick, "--upstream"]);
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    let top = u.strongest(1)[0];
    let mut lines = vec![
        format!(
            "DFA from {strongest} {:?} ({:+.4}) by what wrote the residual stream entering layer 1",
            a.strings[strongest], u.dfa
        ),
        format!("  {:+.4}  {}", top.value, top.writer.name()),
    ];
    if let Some(head) = u.parts.iter().find(|x| !x.by_source.is_empty()) {
        let (q, v) = (head.by_source.iter().copied().enumerate())
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()).then(y.0.cmp(&x.0)))
            .unwrap();
        lines.push(format!(
            "  {:+.4}  {}, reading from {q} {:?} {v:+.4}",
            head.value,
            head.writer.name(),
            a.strings[q]
        ));
    }
    for line in lines {
        assert!(said.contains(&line), "{line}\n{said}");
    }
    let out = cli(&["--pick", &format!("3,{h},{f}"), "--upstream", "5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--upstream 5: a source is at or before the position picked (3)"),
        "{err}"
    );
}

/// `upstream --prompts`: on every prompt the source taken apart is the one `--from` names
/// (the largest |DFA|, the largest DFA, the answer's token) at the line's position (or the
/// last), and the split written to `--json` is the library's; each writer's mean, spread,
/// extremes and a head's parts by where it read from are those of the splits, computed
/// here in f64; the text prints the strongest mean; a line without an answer is refused
/// under `--from answer`, naming the line.
#[test]
fn upstream_command_spreads_the_splits_of_a_prompt_set() {
    use attn_saes::live::{LiveAnalysis, PromptSplit, UpstreamAsk, Writer};
    use attn_saes::live::{upstream_of, upstream_through};
    let (dir, run, loaded, sae) = text_run("attn-saes-upstream-prompts");
    let conv = ZConvention::TransformerLens;
    // Each line's answer: a token of its text (the tiny tokenizer splits most words), the
    // one at position 2 or 3.
    let answer = |text: &str, q: usize| {
        LiveAnalysis::run(&loaded, &sae, 1, conv, text)
            .unwrap()
            .strings[q]
            .clone()
    };
    let other = "When the dog and the cat went home, the cat gave a toy to the";
    let third = "The dog saw the cat, and then the cat saw the";
    let lines = [
        (TEXT, Some(9), answer(TEXT, 3)),
        (other, None, answer(other, 2)),
        (third, None, answer(third, 3)),
    ];
    let file = dir.join("prompts.jsonl");
    let text: Vec<String> = (lines.iter())
        .map(|(t, at, answer)| {
            serde_json::json!({"text": t, "at": at, "answer": answer}).to_string()
        })
        .collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let (head, f) = (1, 3);
    let mut chosen = Vec::new();
    for from in ["strongest", "largest", "answer"] {
        let out_json = dir.join(format!("upstream-{from}.json"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "upstream"])
            .arg(&run)
            .args(["1,3", "--prompts"])
            .arg(&file)
            .args(["--from", from, "--json"])
            .arg(&out_json)
            .output()
            .unwrap();
        assert_succeeded(&out);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
        let splits: Vec<PromptSplit> = serde_json::from_value(v["prompts"].clone()).unwrap();
        assert_eq!(splits.len(), lines.len());
        for ((text, at, answer), got) in lines.iter().zip(&splits) {
            let a = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
            let p = at.unwrap_or(a.len() - 1);
            let dfa = a.dfa(head, f, p);
            let s = match from {
                "strongest" => {
                    (0..=p).max_by(|&x, &y| dfa[x].abs().total_cmp(&dfa[y].abs()).then(y.cmp(&x)))
                }
                "largest" => (0..=p).max_by(|&x, &y| dfa[x].total_cmp(&dfa[y]).then(y.cmp(&x))),
                _ => a.strings.iter().position(|x| x == answer),
            }
            .unwrap();
            let want = upstream_of(&loaded, &sae, (1, conv), &a.ids, (head, f), (p, s)).unwrap();
            assert_eq!(got.upstream, want, "{from}: {text}");
            chosen.push((from, s));
            assert_eq!(got.source_token, a.strings[s]);
            assert_eq!(got.activation, a.activation(head, f, p));
        }
        // Each writer's spread, from the splits in f64.
        let n = splits.len() as f64;
        let spread = v["writers"].as_array().unwrap();
        assert_eq!(spread.len(), splits[0].upstream.parts.len());
        let number = |x: &serde_json::Value| x.as_f64().unwrap();
        let mut strongest = (0.0, String::new());
        for (k, w) in spread.iter().enumerate() {
            let parts: Vec<f64> = (splits.iter())
                .map(|x| x.upstream.parts[k].value as f64)
                .collect();
            let mean = parts.iter().sum::<f64>() / n;
            let sd = (parts.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            let close = |a: f64, b: f64| (a - b).abs() < 1e-6 + 1e-5 * b.abs();
            assert!(
                close(number(&w["mean"]), mean) && close(number(&w["sd"]), sd),
                "{w}"
            );
            let least = parts.iter().copied().fold(f64::INFINITY, f64::min);
            assert!(close(number(&w["min"]), least), "{w}");
            let writer = splits[0].upstream.parts[k].writer;
            if let Writer::Head { .. } = writer {
                let itself: f64 = (splits.iter())
                    .map(|x| x.upstream.parts[k].by_source[x.upstream.source] as f64)
                    .sum::<f64>()
                    / n;
                let reading = w["reading"].as_array().unwrap();
                assert!(close(number(&reading[0]), itself), "{w}");
                let all: f64 = reading.iter().map(number).sum();
                assert!(close(all, mean), "{w}");
            } else {
                assert!(w.get("reading").is_none(), "{w}");
            }
            if mean.abs() > strongest.0 {
                strongest = (mean.abs(), format!("{mean:+.4} ({sd:.4})"));
            }
        }
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&strongest.1), "{}\n{said}", strongest.1);
    }
    // The three rules took different sources apart somewhere.
    let of = |rule: &str| -> Vec<usize> {
        (chosen.iter())
            .filter(|c| c.0 == rule)
            .map(|c| c.1)
            .collect()
    };
    assert!(
        of("strongest") != of("answer") && of("largest") != of("answer"),
        "{chosen:?}"
    );
    // --follow: each prompt's split followed up through the strongest heads (the library's),
    // and the paths counted, here by hand: each step's head and whether it read from the
    // position before it, BOS or elsewhere (the first line twice, so that a path has two).
    let twice = format!("{}\n{}", text.join("\n"), text[0]);
    std::fs::write(&file, twice).unwrap();
    let out_json = dir.join("upstream-follow.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "upstream"])
        .arg(&run)
        .args(["1,3", "--prompts"])
        .arg(&file)
        .args(["--follow", "--json"])
        .arg(&out_json)
        .output()
        .unwrap();
    assert_succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    let splits: Vec<PromptSplit> = serde_json::from_value(v["prompts"].clone()).unwrap();
    let mut paths: Vec<(String, usize, Vec<f64>)> = Vec::new();
    for ((text, at, _), got) in lines.iter().chain(&lines[..1]).zip(&splits) {
        let a = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
        let p = at.unwrap_or(a.len() - 1);
        let ask = UpstreamAsk::new((head, f), (p, got.upstream.source)).following();
        let want = upstream_through(&loaded, &sae, (1, conv), &a.ids, &ask).unwrap();
        assert_eq!(got.upstream, want, "{text}");
        let mut before = want.source;
        let key: Vec<String> = (want.through.iter())
            .map(|t| {
                let reading = match t.from {
                    q if q == before => "itself",
                    0 => "BOS",
                    _ => "elsewhere",
                };
                before = t.from;
                format!("L{} h{} from {reading}", t.layer, t.head)
            })
            .collect();
        let key = match key.is_empty() {
            true => "no step (no head's term reaches 1% of the DFA)".to_string(),
            false => key.join(" -> "),
        };
        let terms = want.terms.iter().map(|&t| t as f64);
        match paths.iter_mut().find(|x| x.0 == key) {
            Some(x) => {
                x.1 += 1;
                x.2.iter_mut().zip(terms).for_each(|(s, t)| *s += t);
            }
            None => paths.push((key, 1, terms.collect())),
        }
    }
    paths.sort_by_key(|x| std::cmp::Reverse(x.1));
    let listed = v["paths"].as_array().unwrap();
    assert_eq!(listed.len(), paths.len(), "{listed:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    for (x, (key, n, sums)) in listed.iter().zip(&paths) {
        assert_eq!(x["prompts"].as_u64().unwrap() as usize, *n, "{x}");
        let means: Vec<f64> = sums.iter().map(|s| s / *n as f64).collect();
        let terms: Vec<f64> = (x["terms"].as_array().unwrap().iter())
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert_eq!(terms.len(), means.len());
        for (t, m) in terms.iter().zip(&means) {
            assert!((t - m).abs() < 1e-6 + 1e-5 * m.abs(), "{x}: {means:?}");
        }
        let shown: Vec<String> = means.iter().map(|m| format!("{m:+.4}")).collect();
        let line = format!("  {n:>3}  {key}  [{}]", shown.join(", "));
        assert!(said.contains(&line), "{line}\n{said}");
    }
    assert!(paths[0].1 >= 2, "{paths:?}");
    assert!(paths.iter().any(|x| x.0.starts_with('L')), "{paths:?}");

    // Under --from answer a line needs an answer.
    std::fs::write(&file, format!("{{\"text\": {:?}}}\n", TEXT)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "upstream"])
        .arg(&run)
        .args(["1,3", "--prompts"])
        .arg(&file)
        .args(["--from", "answer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: no \"answer\", and the source asked is the answer's token"),
        "{err}"
    );
}

/// `upstream RUN H,F --top-examples`: each of the feature's top examples in the run's
/// dashboard file taken apart at its top token from the source the dashboard marks (its
/// largest DFA, within the file's f16), and over them the split the file built with
/// `--upstream` holds (computed there by another path: one forward pass a window and the
/// products through `W_O` for every feature at once); with `--from strongest` a source of
/// either sign; `--from answer` and a feature that never fired are refused.
#[test]
fn upstream_command_takes_the_top_examples_apart_as_the_dashboard_file_holds() {
    use attn_saes::dashboard::format::{FeatureUpstream, OwnedDashboardFile};
    use attn_saes::live::{PromptsSpread, WriterSpread};
    let (dir, run, _, _) = text_run("attn-saes-upstream-top");
    let file = OwnedDashboardFile::read(&run.join("dashboard.safetensors")).unwrap();
    let upstream = |feature: &str, more: &[&str]| {
        let out_json = dir.join(format!("top-{feature}.json"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "upstream"])
            .arg(&run)
            .args([feature, "--top-examples", "--json"])
            .arg(&out_json)
            .args(more)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let spread = out.status.success().then(|| {
            let json = std::fs::read(&out_json).unwrap();
            serde_json::from_slice::<PromptsSpread>(&json).unwrap()
        });
        (out, spread)
    };
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
    let (mut checked, mut worst, mut dead, mut first) = (0, 0f32, None, None);
    for head in 0..file.n_heads() {
        let data = file.head(head).unwrap();
        for (f, fd) in data.features.iter().enumerate() {
            let top: Vec<_> = (fd.examples.iter())
                .filter(|e| e.group == ExampleGroup::Top)
                .collect();
            if top.is_empty() {
                dead.get_or_insert(format!("{head},{f}"));
            }
            let Some(want) = &fd.upstream else { continue };
            if checked >= 3 || top.len() < 3 {
                continue;
            }
            checked += 1;
            first.get_or_insert((head, f, want.clone()));
            let (out, spread) = upstream(&format!("{head},{f}"), &[]);
            assert_succeeded(&out);
            let spread = spread.unwrap();
            assert_eq!(spread.prompts.len(), top.len(), "h{head} #{f}");
            let bos = file.meta.model.bos_token_id;
            for (e, got) in top.iter().zip(&spread.prompts) {
                let u = &got.upstream;
                assert_eq!((u.head, u.feature, u.target), (head, f, e.target as usize));
                // The file's DFA is f16: the source is its largest within that rounding.
                let most = e.dfa.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert!(
                    e.dfa[u.source] >= most - 2e-3 * most.abs() - 1e-3,
                    "{e:?} {u:?}"
                );
                assert!((u.dfa - e.dfa[u.source]).abs() <= 1e-2 * most.abs() + 1e-3);
                // Its text: the window up to the target, BOS left out.
                let window = &file.windows[e.window as usize];
                let text: String = (window.iter().enumerate().take(e.target as usize + 1))
                    .filter(|&(q, &id)| !(q == 0 && Some(id) == bos))
                    .map(|(_, &id)| file.token(id))
                    .collect();
                assert_eq!(got.text, text);
            }
            let got = FeatureUpstream::of_spread(&spread);
            assert_eq!(got.examples, want.examples);
            assert!(close(got.dfa, want.dfa), "{} {}", got.dfa, want.dfa);
            assert_eq!(got.rest.0, want.rest.0);
            assert!(
                close(got.rest.1, want.rest.1),
                "{:?} {:?}",
                got.rest,
                want.rest
            );
            assert_eq!(got.writers.len(), want.writers.len());
            for (g, w) in got.writers.iter().zip(&want.writers) {
                assert_eq!(g.writer, w.writer, "h{head} #{f}: the order listed");
                let pairs = |x: &WriterSpread| {
                    let r = x.reading.unwrap_or_default();
                    [x.mean, x.sd, x.min, x.max, r[0], r[1], r[2]]
                };
                for (a, b) in pairs(g).into_iter().zip(pairs(w)) {
                    assert!(close(a, b), "h{head} #{f}: {g:?} against the file's {w:?}");
                    worst = worst.max((a - b).abs());
                }
            }
            // The text prints the file's strongest writer's mean.
            let said = String::from_utf8_lossy(&out.stdout);
            let first = &want.writers[0];
            assert!(said.contains(&first.writer.name()), "{said}");
            assert!(
                said.contains("top examples, each at its top token"),
                "{said}"
            );
            // Either sign: the source giving the most in size.
            let (out, spread) = upstream(&format!("{head},{f}"), &["--from", "strongest"]);
            assert_succeeded(&out);
            for (e, got) in top.iter().zip(&spread.unwrap().prompts) {
                let most = e.dfa.iter().map(|x| x.abs()).fold(0f32, f32::max);
                assert!(e.dfa[got.upstream.source].abs() >= most - 2e-3 * most - 1e-3);
            }
            // Followed up through the strongest heads: each example's path, counted over them.
            let (out, spread) = upstream(&format!("{head},{f}"), &["--follow"]);
            assert_succeeded(&out);
            let spread = spread.unwrap();
            assert_eq!(
                spread.paths.iter().map(|p| p.prompts).sum::<usize>(),
                top.len()
            );
            for p in &spread.prompts {
                assert_eq!(p.upstream.followed, p.upstream.through.len());
            }
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("its examples, the means"), "{said}");
        }
    }
    assert_eq!(checked, 3, "features with three top examples and a split");
    eprintln!("the file's split against the examples' own: at most {worst:.2e} apart");
    // A file without it (a copy, stripped): `features --feature` says how to get it, and
    // that command, on the file itself, gives what was stripped.
    let (head, f, want) = first.expect("a feature checked");
    let mut d = attn_saes::dashboard::build::read(&run.join("dashboard.safetensors")).unwrap();
    d.meta.upstream = None;
    for fd in d.heads.iter_mut().flat_map(|h| h.features.iter_mut()) {
        fd.upstream = None;
    }
    let stripped = dir.join("stripped.safetensors");
    attn_saes::dashboard::build::write(&d, &stripped).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["features", "--run"])
        .arg(&stripped)
        .args(["--feature", &format!("{head},{f}")])
        .output()
        .unwrap();
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    let asked = format!(
        "attn-saes upstream {} {head},{f} --top-examples",
        stripped.display()
    );
    assert!(
        said.contains(&asked) && !said.contains("written by "),
        "{said}"
    );
    let out_json = dir.join("from-the-file.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "upstream"])
        .arg(&stripped)
        .args([&format!("{head},{f}"), "--top-examples", "--json"])
        .arg(&out_json)
        .output()
        .unwrap();
    assert_succeeded(&out);
    let spread: PromptsSpread = serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    let got = FeatureUpstream::of_spread(&spread);
    assert_eq!(got.writers.len(), want.writers.len());
    for (g, w) in got.writers.iter().zip(&want.writers) {
        assert_eq!(g.writer, w.writer);
        assert!(close(g.mean, w.mean), "{g:?} against the file's {w:?}");
    }
    let (out, _) = upstream("0,0", &["--from", "answer"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--from answer needs --prompts"), "{said}");
    let dead = dead.expect("a feature that never fired");
    let (out, _) = upstream(&dead, &[]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("has no top examples"), "{said}");
}

/// `text --rank --answer --against` (and `--effect` with them): the JSON ranking and
/// effect equal the library's for the same objective, and the text says what was ranked
/// by, its value, and the removal's exact change; what is refused says why.
#[test]
fn text_command_ranks_by_an_answer_as_the_library_does() {
    use attn_saes::live::{FeatureEffect, FeatureRanking, answer_objective, feature_effect_on};
    use attn_saes::live::{rank_features_for, text_ids};
    let (_dir, run, loaded, sae) = text_run("attn-saes-answer");
    let text = TEXT;
    let cli = text_cli(&run, text);
    let conv = ZConvention::TransformerLens;
    let ids = text_ids(&loaded, text).unwrap();
    let at = ids.len() - 2; // the last " to"
    let objective = answer_objective(&loaded, &ids, Some(at), " the", Some(" a")).unwrap();
    let direct = rank_features_for(&loaded, &sae, 1, conv, &ids, &objective).unwrap();
    let value = direct.value.unwrap();
    let (h, f) = (direct.features[0].head, direct.features[0].feature);
    let hf = format!("{h},{f}");
    let asked = ["--answer", " the", "--against", " a", "--at"];
    let at_s = at.to_string();
    let out = cli(&[
        &asked[..],
        &[at_s.as_str(), "--rank", "1000", "--effect", &hf, "--json"],
    ]
    .concat());
    assert_succeeded(&out);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranking: FeatureRanking = serde_json::from_value(shown["ranking"].clone()).unwrap();
    assert_eq!(ranking, direct);
    let effect: FeatureEffect = serde_json::from_value(shown["effect"].clone()).unwrap();
    let exact = feature_effect_on(
        &loaded,
        &sae,
        (1, conv),
        &ids,
        (h, f),
        0.0,
        Some(&objective),
    )
    .unwrap();
    assert_eq!(effect, exact);
    let change = exact.objective.unwrap().1;
    // The same value from the effect's log-probabilities (their normaliser cancels).
    assert!((change.clean - value).abs() < 1e-5, "{change:?} vs {value}");
    // The text: what the estimates are of, the value, the exact change.
    let out = cli(&[&asked[..], &[at_s.as_str(), "--rank", "3", "--effect", &hf]].concat());
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    let of = format!("the logit of \" the\" less that of \" a\" after position {at}");
    for line in [
        format!("the estimated fall in {of} without each (first order"),
        format!(" {of} is {value:.4} here"),
        format!(
            "{of}: clean {:.4} -> removed {:.4}; the feature adds {:+.4} to it",
            change.clean,
            change.changed,
            change.helps()
        ),
        format!("head {h} feature {f}: {:+.4}", direct.features[0].estimate),
    ] {
        assert!(said.contains(&line), "{line}\n{said}");
    }
    // Without --against, the log-probability; --at defaults to the last token.
    let out = cli(&["--answer", " the", "--rank", "1000", "--json"]);
    assert_succeeded(&out);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranking: FeatureRanking = serde_json::from_value(shown["ranking"].clone()).unwrap();
    let last = answer_objective(&loaded, &ids, None, " the", None).unwrap();
    assert_eq!(
        ranking,
        rank_features_for(&loaded, &sae, 1, conv, &ids, &last).unwrap()
    );
    // Refused, saying why.
    for (args, why) in [
        (
            &["--answer", " the"][..],
            "--answer says what --rank ranks by",
        ),
        (
            &["--rank", "3", "--answer", " cat"],
            "\" cat\" is 2 tokens here (\" c\", \"at\")",
        ),
        (
            &["--rank", "3", "--answer", " the", "--at", "99"],
            "position 99: the text has",
        ),
        (&["--rank", "3", "--against", " a"], "--answer <TOKEN>"),
    ] {
        let out = cli(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

/// `rank --prompts FILE`: each prompt ranked by its own answer, the estimates averaged over
/// the prompts and the prompts each feature fires in counted, as the library's rankings of
/// each prompt give them; the values' mean and spread; a bad line or answer names its line.
#[test]
fn rank_prompts_averages_each_prompts_ranking_by_its_answer() {
    use attn_saes::live::{PromptsRanking, answer_objective, rank_features_for, text_ids};
    let dir = TempDir::new("attn-saes-prompts", "cli");
    let run = run_with_dashboard(&dir, 30);
    let prompts = [
        (
            "When the cat and the dog went to the park, the dog gave a ball to",
            " the",
            Some(" a"),
            None,
        ),
        (
            "The quick brown fox jumps over the lazy dog and the",
            " a",
            Some(" the"),
            Some(6),
        ),
        (
            "It was the best of times, it was the worst of",
            " the",
            None,
            None,
        ),
    ];
    let file = dir.join("prompts.jsonl");
    let lines: Vec<String> = (prompts.iter())
        .map(|(text, answer, against, at)| {
            serde_json::json!({"text": text, "answer": answer, "against": against, "at": at})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let json = dir.join("prompts.json");
    let cli = |file: &std::path::Path, json: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"));
        cmd.args(["--device", "cpu", "rank", "--top", "3", "--run"])
            .arg(&run)
            .arg("--prompts")
            .arg(file)
            .env("RUST_BACKTRACE", "0");
        if let Some(json) = json {
            cmd.arg("--json").arg(json);
        }
        cmd.output().unwrap()
    };
    let out = cli(&file, Some(&json));
    assert_succeeded(&out);
    let got: PromptsRanking = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Each prompt ranked alone, averaged here.
    let loaded = load("gpt2_tiny");
    let sae = BlockDiagSae::load(&run.join("sae"), &Device::flex()).unwrap();
    let conv = ZConvention::TransformerLens;
    let m = sae.config.features_per_head;
    let (mut sum, mut fired) = (vec![0.0f64; 4 * m], vec![0u32; 4 * m]);
    let mut values = Vec::new();
    for (i, (text, answer, against, at)) in prompts.iter().enumerate() {
        let ids = text_ids(&loaded, text).unwrap();
        let objective = answer_objective(&loaded, &ids, *at, answer, *against).unwrap();
        assert_eq!(got.objectives[i].0, objective, "prompt {i}");
        let r = rank_features_for(&loaded, &sae, 1, conv, &ids, &objective).unwrap();
        values.push(r.value.unwrap());
        for f in r.features {
            sum[f.head * m + f.feature] += f.estimate as f64;
            fired[f.head * m + f.feature] += 1;
        }
    }
    let got_values: Vec<f32> = got.objectives.iter().map(|o| o.1).collect();
    assert_eq!(got_values, values);
    let live = (0..4 * m).filter(|&i| fired[i] > 0).count();
    assert_eq!(got.features.len(), live);
    assert!(
        got.features.iter().any(|f| f.fires < 3),
        "some fire in fewer prompts"
    );
    for f in &got.features {
        let i = f.head * m + f.feature;
        assert_eq!(f.fires, fired[i], "head {} feature {}", f.head, f.feature);
        let want = sum[i] / 3.0;
        assert!(
            (f.estimate as f64 - want).abs() <= 1e-7 + 1e-6 * want.abs(),
            "head {} feature {}: {} vs {want}",
            f.head,
            f.feature,
            f.estimate
        );
    }
    assert!(
        got.features
            .windows(2)
            .all(|w| w[0].estimate >= w[1].estimate)
    );
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / 3.0;
    let sd = (values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / 2.0)
        .sqrt();
    let said = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "3 prompts; the answer's logit difference (or log-probability, without a token against \
         it): mean {mean:.4}, sd {sd:.4}"
    );
    assert!(said.contains(&line), "{line}\n{said}");
    let top = &got.features[0];
    let first = format!(
        "  head {} feature {}: {:+.4} (fires in {} of 3 prompts)",
        top.head, top.feature, top.estimate, top.fires
    );
    assert!(said.contains(&first), "{first}\n{said}");
    // What is refused names the line.
    for (line, why) in [
        ("{\"text\": \"a b\"}", "line 2: not {\"text\""),
        (
            "{\"text\": \"a b\", \"answer\": \" cat\"}",
            "\" cat\" is 2 tokens here",
        ),
    ] {
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, format!("{}\n{line}\n", lines[0])).unwrap();
        let out = cli(&bad, None);
        assert!(!out.status.success(), "{line}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why) && err.contains("bad.jsonl line 2"),
            "{line}: {err}"
        );
    }
    // --exact: the features printed removed from every prompt; each mean equals the
    // library's exact effects averaged here over all the prompts (where a feature does not
    // fire the command skips the run: the change is zero).
    let exact_json = dir.join("exact.json");
    let out = {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"));
        cmd.args(["--device", "cpu", "rank", "--top", "2", "--exact", "--run"])
            .arg(&run)
            .arg("--prompts")
            .arg(&file)
            .arg("--json")
            .arg(&exact_json);
        cmd.output().unwrap()
    };
    assert_succeeded(&out);
    let with_exact: PromptsRanking =
        serde_json::from_slice(&std::fs::read(&exact_json).unwrap()).unwrap();
    assert_eq!(with_exact.features, got.features);
    let n = got.features.len();
    let shown: Vec<(usize, usize)> = (got.features[..2].iter().filter(|f| f.estimate > 0.0))
        .chain(
            got.features[n - 2..]
                .iter()
                .rev()
                .filter(|f| f.estimate < 0.0),
        )
        .map(|f| (f.head, f.feature))
        .collect();
    let listed: Vec<(usize, usize)> = with_exact.exact.iter().map(|x| (x.0, x.1)).collect();
    assert_eq!(listed, shown);
    let said = String::from_utf8_lossy(&out.stdout);
    for &(head, feature, mean) in &with_exact.exact {
        let mut sum = 0.0f64;
        for (i, (text, answer, against, at)) in prompts.iter().enumerate() {
            let ids = text_ids(&loaded, text).unwrap();
            let objective = answer_objective(&loaded, &ids, *at, answer, *against).unwrap();
            let e = attn_saes::live::feature_effect_on(
                &loaded,
                &sae,
                (1, conv),
                &ids,
                (head, feature),
                0.0,
                Some(&objective),
            )
            .unwrap();
            let helps = e.objective.unwrap().1.helps();
            if e.activation.iter().all(|&a| a == 0.0) {
                assert_eq!(helps, 0.0, "prompt {i}");
            }
            sum += helps as f64;
        }
        let want = sum / 3.0;
        assert!(
            (mean as f64 - want).abs() <= 1e-7 + 1e-6 * want.abs(),
            "head {head} feature {feature}: {mean} vs {want}"
        );
        let estimate = got
            .features
            .iter()
            .find(|f| (f.head, f.feature) == (head, feature));
        let line = format!(
            "  head {head} feature {feature}: {:+.4}, exact {mean:+.4} (fires in",
            estimate.unwrap().estimate
        );
        assert!(said.contains(&line), "{line}\n{said}");
    }
    assert!(!with_exact.exact.is_empty());
    // Flags of the held-out ranking do not apply to prompts: refused, not ignored.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "rank", "--context-size", "16", "--run"])
        .arg(&run)
        .arg("--prompts")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--context-size and --keep-bos do not apply"),
        "{err}"
    );
    // The same prompts as one JSON array: the same ranking.
    let array = dir.join("prompts-array.json");
    std::fs::write(&array, format!("[{}]", lines.join(",\n"))).unwrap();
    let again = dir.join("again.json");
    assert_succeeded(&cli(&array, Some(&again)));
    let from_array: PromptsRanking =
        serde_json::from_slice(&std::fs::read(&again).unwrap()).unwrap();
    assert_eq!(from_array, got);
    std::fs::write(&array, format!("[{}, {{\"text\": \"a\"}}]", lines[0])).unwrap();
    let err = String::from_utf8_lossy(&cli(&array, None).stderr).into_owned();
    assert!(
        err.contains("prompts-array.json: not a JSON array of {\"text\""),
        "{err}"
    );
}

/// `features --effect H,F`: the JSON summary equals the library's on the feature's top
/// examples (their windows from the dashboard file); a feature the file lacks is an error.
#[test]
fn features_effect_command_matches_the_library_on_the_top_examples() {
    use attn_saes::dashboard::format::ExampleGroup;
    use attn_saes::live::{ExamplesEffect, effects_on_examples};
    let dir = TempDir::new("attn-saes-effect", "cli");
    let run = run_with_dashboard(&dir, 30);
    let d = build::read(&attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let (head, feature) = (0..d.heads.len())
        .flat_map(|h| (0..d.heads[h].features.len()).map(move |f| (h, f)))
        .max_by_key(|&(h, f)| d.heads[h].features[f].examples.len())
        .unwrap();
    let json = dir.join("effect.json");
    let cli = |hf: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "features", "--run"])
            .arg(&run)
            .args(["--effect", hf, "--json"])
            .arg(&json)
            .output()
            .unwrap()
    };
    let out = cli(&format!("{head},{feature}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed on its 20 top examples"),
        "{stdout}"
    );
    let got: ExamplesEffect = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let examples: Vec<(Vec<u32>, usize)> = d.heads[head].features[feature]
        .examples
        .iter()
        .filter(|e| e.group == ExampleGroup::Top)
        .map(|e| (d.windows[e.window as usize].clone(), e.target as usize))
        .collect();
    let loaded = load("gpt2_tiny");
    let sae = BlockDiagSae::load(&run.join("sae"), &Device::flex()).unwrap();
    let conv = ZConvention::TransformerLens;
    let effects = effects_on_examples(&loaded, &sae, 1, conv, &examples, head, feature).unwrap();
    let targets: Vec<usize> = examples.iter().map(|e| e.1).collect();
    assert_eq!(got, ExamplesEffect::of(&effects, &targets));
    assert!(got.window.iter().any(|&x| x != 0.0));
    let out = cli("0,999");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the dashboard has 4 heads x 32 features"),
        "{stderr}"
    );
}

/// `rank --run`: the JSON ranking equals the library's over the run's held-out windows,
/// and that (four windows a pass) equals each window ranked alone, summed.
#[test]
fn rank_command_sums_the_ranking_over_held_out_windows() {
    use attn_saes::live::{FeatureRanking, rank_features, rank_features_over};
    use attn_saes::train::checkpoint;
    let dir = TempDir::new("attn-saes-rank", "cli");
    let run = run_with_dashboard(&dir, 30);
    let json = dir.join("rank.json");
    let stdout = attn_saes_cli([
        "rank".as_ref(),
        "--run".as_ref(),
        run.as_os_str(),
        "--tokens".as_ref(),
        "80".as_ref(),
        "--top".as_ref(),
        "3".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let got: FeatureRanking = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "rank", "--tokens", "0", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr)
            .contains("invalid value '0' for '--tokens <TOKENS>': must be at least 1")
    );
    let (ckpt, sae_dir) = checkpoint::run_sae(&run, None).unwrap();
    let config = checkpoint::read_config(&ckpt).unwrap();
    let loaded = load("gpt2_tiny");
    let sae = BlockDiagSae::load(&sae_dir, &Device::flex()).unwrap();
    let context = config.context_size.min(128);
    let n = 80usize.div_ceil(context);
    let (windows, _) =
        attn_saes::dashboard::held_out_windows(&config, &ckpt, &loaded, context, n).unwrap();
    assert!(windows.len() > 4, "{} windows", windows.len());
    assert!(stdout.contains(&format!("on {} windows of {context} tokens", windows.len())));
    let conv = config.z_convention;
    let over = rank_features_over(&loaded, &sae, 1, conv, &windows, &mut |_, _| {}).unwrap();
    assert_eq!(got, over);
    let m = sae.config.features_per_head;
    let mut sum = vec![(0.0f64, 0u32); 4 * m];
    for w in &windows {
        for f in rank_features(&loaded, &sae, 1, conv, w).unwrap().features {
            let s = &mut sum[f.head * m + f.feature];
            s.0 += f.estimate as f64;
            s.1 += f.fires;
        }
    }
    assert_eq!(over.features.len(), sum.iter().filter(|s| s.1 > 0).count());
    for f in &over.features {
        let (estimate, fires) = sum[f.head * m + f.feature];
        assert_eq!(f.fires, fires);
        assert!(
            (f.estimate as f64 - estimate).abs() <= 1e-5 + 1e-4 * estimate.abs(),
            "head {} feature {}: {} vs {estimate}",
            f.head,
            f.feature,
            f.estimate
        );
    }
}

/// `rank --sae`: an SAE without a run (as `import` writes one, with its origin) is ranked
/// over the start of a corpus: the JSON equals the library's ranking over the windows
/// `dashboard --sae` reads, and so the effects that dashboard holds; with `--keep-bos` it is
/// the ranking of an SAE that reads BOS, and differs. `--run` and `--sae` together, or
/// neither, are refused.
#[test]
fn rank_sae_ranks_over_the_windows_dashboard_sae_reads() {
    use attn_saes::data::corpus::Corpus;
    use attn_saes::live::{FeatureRanking, rank_features_over};
    use attn_saes::sae::io::SaeOrigin;
    let dir = TempDir::new("attn-saes-rank", "sae");
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 8, 3);
    let origin = SaeOrigin {
        model: fixture("gpt2_tiny").display().to_string(),
        hook_layer: 1,
        z_convention: ZConvention::TransformerLens,
        keep_bos: false,
    };
    let sae_dir = dir.join("imported");
    sae.save_with_origin(&sae_dir, Some(&origin)).unwrap();
    let corpus = corpus(&dir);
    let cli = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu"])
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let (sae_arg, corpus_arg) = (sae_dir.to_str().unwrap(), corpus.to_str().unwrap());
    let shape = ["--tokens", "96", "--context-size", "32"];
    let rank = |keep_bos: bool| -> FeatureRanking {
        let json = dir.join(format!("rank-{keep_bos}.json"));
        let mut args = vec!["rank", "--sae", sae_arg, "--dataset", corpus_arg];
        args.extend(shape);
        args.extend(["--json", json.to_str().unwrap()]);
        if keep_bos {
            args.push("--keep-bos");
        }
        let out = cli(&args);
        assert_succeeded(&out);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!(
                "on 3 windows of 32 tokens (the start of {corpus_arg})"
            )),
            "{said}"
        );
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
    };
    let windows = {
        let c = Corpus::open(&corpus, None).unwrap();
        attn_saes::dashboard::windows_from(&c, &loaded, 32, Default::default(), 3).unwrap()
    };
    let conv = ZConvention::TransformerLens;
    let want = |reads_bos: bool| {
        let sae = BlockDiagSae {
            reads_bos,
            ..sae.clone()
        };
        rank_features_over(&loaded, &sae, 1, conv, &windows, &mut |_, _| {}).unwrap()
    };
    let got = rank(false);
    assert!(
        got.features.len() > 5,
        "{} features fired",
        got.features.len()
    );
    assert_eq!(got, want(false));
    let with_bos = rank(true);
    assert_eq!(with_bos, want(true));
    assert_ne!(with_bos, got);
    // The dashboard of the same windows holds the same estimates.
    let mut args = vec!["dashboard", "--sae", sae_arg, "--dataset", corpus_arg];
    args.extend(shape);
    assert_succeeded(&cli(&args));
    let d = build::read(&sae_dir.join("dashboard.safetensors")).unwrap();
    assert_eq!(d.meta.effects.as_ref().map(|e| e.windows), Some(3));
    for f in &got.features {
        assert_eq!(
            d.heads[f.head].features[f.feature].effect,
            Some(f.estimate),
            "head {} feature {}",
            f.head,
            f.feature
        );
    }
    // One of --run and --sae.
    for args in [
        vec!["rank", "--sae", sae_arg, "--run", sae_arg],
        vec!["rank", "--tokens", "32"],
    ] {
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && (stderr.contains("cannot be used with") || stderr.contains("give one of")),
            "{args:?}: {stderr}"
        );
    }
}

/// The key/value cache: a sequence run a position at a time after a prefill gives, at
/// each position, the logits of one whole forward over the sequence so far (batches of two
/// sequences, with and without a splice on one head).
#[test]
fn decoding_with_a_cache_gives_the_logits_of_whole_forwards() {
    use attn_saes::lm::{HeadSelection, KvCache, Splice};
    let r = Reference::load("effect/effect_reference.safetensors");
    // With an attention-only shortformer model too: its positions enter each layer's
    // queries and keys at their absolute positions.
    for model in ["gpt2_tiny", "llama_tiny", "attn2l_tiny"] {
        let loaded = load(model);
        let m = &loaded.transformer;
        let ids = match model {
            "attn2l_tiny" => {
                Reference::load("attn2l_tiny/reference.safetensors").tokens("seq1.tokens")
            }
            _ => r.tokens(&format!("{model}.tokens")),
        };
        let mut other = ids.clone();
        other[1..].reverse();
        let rows = [ids.clone(), other];
        let t = ids.len();
        let v = m.config.d_vocab;
        let (h, d) = (m.config.n_heads, m.config.d_head);
        let push: Tensor<4> = Tensor::<4>::ones([1, 1, h, d], m.device()) * 0.7;
        let add = move |z: Tensor<4>| z + push.clone();
        let splice = Splice {
            layer: 1,
            heads: HeadSelection::One(2),
            replace: &add,
        };
        for splice in [None, Some(&splice)] {
            let raw = HookRequest {
                logits: true,
                z_convention: ZConvention::Raw,
                ..Default::default()
            };
            let mut cache = KvCache::new();
            let prefill = 5;
            let first: Vec<Vec<u32>> = rows.iter().map(|r| r[..prefill].to_vec()).collect();
            let mut got = vec![
                m.decode(m.tokens(&first).unwrap(), &mut cache, splice)
                    .unwrap(),
            ];
            for p in prefill..t {
                let next: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[p]]).collect();
                got.push(
                    m.decode(m.tokens(&next).unwrap(), &mut cache, splice)
                        .unwrap(),
                );
            }
            assert_eq!(cache.len(), t);
            for (i, logits) in got.into_iter().enumerate() {
                let upto = prefill + i;
                let seqs: Vec<Vec<u32>> = rows.iter().map(|r| r[..upto].to_vec()).collect();
                let whole = m.run(m.tokens(&seqs).unwrap(), &raw, splice).unwrap();
                let want = values(
                    whole
                        .logits
                        .unwrap()
                        .slice([0..2, upto - 1..upto, 0..v])
                        .reshape([2 * v]),
                );
                let got = values(logits.reshape([2 * v]));
                assert_close(
                    &format!("{model} {} at {upto}", splice.is_some()),
                    &got,
                    &want,
                    1e-5,
                );
            }
            // A batch of another size is refused, not mixed in.
            let one = m.tokens(&[vec![ids[0]]]).unwrap();
            let err = m.decode(one, &mut cache, splice).unwrap_err();
            assert!(err.to_string().contains("holds 2 sequences"), "{err}");
        }
    }
}

/// `ids` up to and with the first of the end tokens `eos`, and whether there was one.
fn until_end(ids: Vec<u32>, eos: &[u32]) -> (Vec<u32>, bool) {
    match ids.iter().position(|t| eos.contains(t)) {
        Some(i) => (ids[..=i].to_vec(), true),
        None => (ids, false),
    }
}

/// Steered generation against transformers in float64, where every step is a whole forward
/// over the sequence so far (`steer/make_steer_reference.py`): the tokens chosen clean and
/// steered, and their probabilities (within `tol`), on `device`. The two continuations part
/// in the reference (at new token 1 and 5), so steering that did nothing, or steered BOS
/// too, or the wrong head, would fail. Strength 0 gives the clean continuation, bit for bit.
/// Sampled at temperature 0.8 with the reference's seed: the same tokens (SplitMix64 and the
/// inverse CDF written out in Python), which differ from the greedy ones. Clamped (the
/// feature's activation, read in TransformerLens' convention, held at a strength): at 0 (the
/// model without the feature) and at a strength where the reference's clamping and adding
/// part, the same tokens; held only where it fires, at a strength where that differs from
/// holding it everywhere, the same tokens. Two features steered at once, and the new tokens
/// only steered: the same tokens.
fn check_steering(device: &Device, tol: f64) {
    use attn_saes::live::{Steering, steer};
    let tl = lm::ZConvention::TransformerLens;
    let r = Reference::load("steer/steer_reference.safetensors");
    for model in ["gpt2_tiny", "llama_tiny"] {
        let loaded = lm::load_model(&fixture(model).display().to_string(), device).unwrap();
        let sae = BlockDiagSae::load(&fixture(&format!("dashboard/{model}_sae")), device).unwrap();
        let prompt = r.tokens(&format!("{model}.prompt"));
        let pick = r.tokens(&format!("{model}.pick"));
        let (head, feature) = (pick[0] as usize, pick[1] as usize);
        let strength = r.get(&format!("{model}.strength")).data[0] as f32;
        let clean = r.tokens(&format!("{model}.clean"));
        let n = clean.len();
        let greedy = Steering::greedy(head, feature, strength, n);
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        // A continuation against the reference's `{model}.{key}` tokens and `_prob`s, up to
        // and with the model's first end token (llama_tiny's top-k-and-top-p continuation
        // reaches it, 399, at new token 4; the reference does not stop there).
        let eos = loaded.transformer.config.eos_token_ids.clone();
        let same = |got: &attn_saes::live::Continuation, key: &str| {
            let (want, ended) = until_end(r.tokens(&format!("{model}.{key}")), &eos);
            assert_eq!((&got.ids, got.ended), (&want, ended), "{model} {key}");
            assert_close(
                &format!("{model} {key} prob"),
                &f64s(&got.prob),
                &r.get(&format!("{model}.{key}_prob")).data[..want.len()],
                tol,
            );
        };
        let s = steer(&loaded, &sae, 0, tl, &prompt, &greedy).unwrap();
        assert_eq!(s.steering, greedy);
        assert_eq!(s.prompt, prompt);
        for (row, got) in [("clean", &s.clean), ("steered", &s.steered)] {
            same(got, row);
            assert_eq!(got.tokens.len(), n);
            assert_eq!(got.text, loaded.tokenizer.decode(&got.ids, false).unwrap());
        }
        assert!(s.parts_at() < n, "{model}: the continuations never part");
        let zero = Steering::greedy(head, feature, 0.0, n);
        let zero = steer(&loaded, &sae, 0, tl, &prompt, &zero).unwrap();
        assert_eq!(zero.steered, zero.clean);
        assert_eq!(zero.clean, s.clean);
        let sampling = Steering {
            temperature: 0.8,
            seed: r.get(&format!("{model}.seed")).data[0] as u64,
            ..greedy.clone()
        };
        let sampled = steer(&loaded, &sae, 0, tl, &prompt, &sampling).unwrap();
        assert_eq!(sampled.steering, sampling);
        same(&sampled.clean, "sampled_clean");
        same(&sampled.steered, "sampled_steered");
        assert_ne!(
            sampled.clean.ids, s.clean.ids,
            "{model}: sampling is not greedy"
        );
        // Sampled from the nucleus of half the probability.
        let nucleus = Steering {
            temperature: 0.8,
            top_p: Some(0.5),
            seed: r.get(&format!("{model}.top_p_seed")).data[0] as u64,
            ..greedy.clone()
        };
        let got = steer(&loaded, &sae, 0, tl, &prompt, &nucleus).unwrap();
        assert_eq!(got.steering, nucleus);
        same(&got.clean, "top_p_clean");
        same(&got.steered, "top_p_steered");
        // From the 3 likeliest only; then from the 3 likeliest's nucleus of half their
        // probability (top-k first).
        for (key, top_p) in [("top_k", None), ("top_kp", Some(0.5))] {
            let cut = Steering {
                temperature: 0.8,
                top_k: Some(3),
                top_p,
                seed: r.get(&format!("{model}.{key}_seed")).data[0] as u64,
                ..greedy.clone()
            };
            let got = steer(&loaded, &sae, 0, tl, &prompt, &cut).unwrap();
            assert_eq!(got.steering, cut);
            same(&got.clean, &format!("{key}_clean"));
            same(&got.steered, &format!("{key}_steered"));
        }
        let pick = r.tokens(&format!("{model}.clamp_pick"));
        let strengths = &r.get(&format!("{model}.clamp_strength")).data;
        let want = r.get(&format!("{model}.clamped"));
        let probs = r.get(&format!("{model}.clamped_prob"));
        for (i, &held) in strengths.iter().enumerate() {
            let clamping = Steering {
                clamp: true,
                ..Steering::greedy(pick[0] as usize, pick[1] as usize, held as f32, n)
            };
            let got = steer(&loaded, &sae, 0, tl, &prompt, &clamping).unwrap();
            let want: Vec<u32> = want.data[i * n..][..n].iter().map(|&t| t as u32).collect();
            // llama_tiny's removal reaches its end token (399) at new token 4.
            let (want, ended) = until_end(want, &loaded.transformer.config.eos_token_ids);
            assert_eq!(got.steering, clamping);
            assert_eq!(got.clean.ids, clean, "{model} clean beside the clamped");
            assert_eq!(
                (&got.steered.ids, got.steered.ended),
                (&want, ended),
                "{model} clamped at {held}"
            );
            assert_close(
                &format!("{model} clamped at {held} prob"),
                &f64s(&got.steered.prob),
                &probs.data[i * n..][..want.len()],
                tol,
            );
        }
        // The new tokens only.
        let new_only = Steering {
            new_only: true,
            strength: r.get(&format!("{model}.new_only_strength")).data[0] as f32,
            ..greedy.clone()
        };
        let got = steer(&loaded, &sae, 0, tl, &prompt, &new_only).unwrap();
        assert_eq!(got.steering, new_only);
        same(&got.steered, "new_only");
        // From a position inside the prompt on.
        let from = Steering {
            from_position: Some(r.tokens(&format!("{model}.from_position_start"))[0] as usize),
            strength: r.get(&format!("{model}.from_position_strength")).data[0] as f32,
            ..greedy.clone()
        };
        let got = steer(&loaded, &sae, 0, tl, &prompt, &from).unwrap();
        assert_eq!(got.steering, from);
        assert_eq!(got.clean.ids, clean);
        same(&got.steered, "from_position");
        // Clamped, then added, where it fires only (continuations that differ from clamping
        // or adding the same feature everywhere at that strength, in the reference).
        for (key, clamp) in [("clamp_fires", true), ("add_fires", false)] {
            let pick = r.tokens(&format!("{model}.{key}_pick"));
            let strength = r.get(&format!("{model}.{key}_strength")).data[0] as f32;
            let fires = Steering {
                clamp,
                where_fires: true,
                ..Steering::greedy(pick[0] as usize, pick[1] as usize, strength, n)
            };
            let got = steer(&loaded, &sae, 0, tl, &prompt, &fires).unwrap();
            assert_eq!(got.steering, fires);
            assert_eq!(got.clean.ids, clean);
            same(&got.steered, key);
        }
        // Two features at once (GPT-2's in one head, Llama's in two).
        let pair = r.tokens(&format!("{model}.pair"));
        let strengths = &r.get(&format!("{model}.pair_strength")).data;
        let both = Steering {
            also: vec![(pair[2] as usize, pair[3] as usize, strengths[1] as f32)],
            ..Steering::greedy(pair[0] as usize, pair[1] as usize, strengths[0] as f32, n)
        };
        let got = steer(&loaded, &sae, 0, tl, &prompt, &both).unwrap();
        assert_eq!(got.steering, both);
        same(&got.steered, "paired");
    }
}

/// [`check_steering`] on the CPU backend; each continuation stops at an end-of-text token
/// (the reference's continuations cut after the first one, each on its own, the sampled
/// ones drawing the same numbers after the other has stopped); and bad requests are
/// errors that say what is wrong.
#[test]
fn steered_generation_matches_transformers_step_by_step() {
    use attn_saes::live::{Steering, steer};
    check_steering(&Device::flex(), 1e-5);
    let r = Reference::load("steer/steer_reference.safetensors");
    let mut loaded = load("gpt2_tiny");
    let prompt = r.tokens("gpt2_tiny.prompt");
    let pick = r.tokens("gpt2_tiny.pick");
    let strength = r.get("gpt2_tiny.strength").data[0] as f32;
    let greedy = Steering::greedy(pick[0] as usize, pick[1] as usize, strength, 12);
    let sampled = Steering {
        temperature: 0.8,
        seed: r.get("gpt2_tiny.seed").data[0] as u64,
        ..greedy.clone()
    };
    // 204: new token 6 clean, 1 steered; 178: new token 1 of the sampled steered one only.
    for (steering, rows, eos) in [
        (greedy, ["clean", "steered"], 204),
        (sampled, ["sampled_clean", "sampled_steered"], 178),
    ] {
        loaded.transformer.config.eos_token_ids = vec![eos];
        let sae = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &Device::flex()).unwrap();
        let tl = ZConvention::TransformerLens;
        let got = steer(&loaded, &sae, 0, tl, &prompt, &steering).unwrap();
        let [clean, steered] =
            rows.map(|row| until_end(r.tokens(&format!("gpt2_tiny.{row}")), &[eos]));
        assert!(
            clean.0.len() != steered.0.len(),
            "the reference should end them apart"
        );
        for (got, (want, ended)) in [(&got.clean, clean), (&got.steered, steered)] {
            assert_eq!((&got.ids, got.ended), (&want, ended), "ending at {eos}");
            assert_eq!(got.prob.len(), want.len());
        }
    }
    loaded.transformer.config.eos_token_ids.clear();
    let sae = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &Device::flex()).unwrap();
    let prompt = r.tokens("gpt2_tiny.prompt");
    let err = |s: Steering| {
        steer(
            &loaded,
            &sae,
            0,
            lm::ZConvention::TransformerLens,
            &prompt,
            &s,
        )
        .unwrap_err()
        .to_string()
    };
    let m = sae.config.features_per_head;
    let ok = Steering::greedy(1, 3, 1.0, 4);
    assert!(
        err(Steering {
            feature: m,
            ..ok.clone()
        })
        .contains(&format!("heads of {m} features"))
    );
    let nan = f32::NAN;
    assert!(
        err(Steering {
            strength: nan,
            ..ok.clone()
        })
        .contains("not a number")
    );
    assert!(
        err(Steering {
            temperature: -1.0,
            ..ok.clone()
        })
        .contains("0 (greedy) or more")
    );
    assert!(
        err(Steering {
            tokens: 0,
            ..ok.clone()
        })
        .contains("between 1 and")
    );
    // Sampled at a temperature, from the top P and the top K.
    let sampled = |temperature, top_p, top_k| Steering {
        temperature,
        top_p,
        top_k,
        ..ok.clone()
    };
    assert!(err(sampled(0.8, Some(1.5), None)).contains("above 0, at most 1"));
    assert!(err(sampled(0.8, Some(0.0), None)).contains("above 0, at most 1"));
    assert!(err(sampled(0.0, Some(0.5), None)).contains("top-p 0.5 is for sampling"));
    assert!(err(sampled(0.8, None, Some(0))).contains("at least 1"));
    assert!(err(sampled(0.0, None, Some(5))).contains("top-k 5 is for sampling"));
    let from = |p, new_only| Steering {
        from_position: Some(p),
        new_only,
        ..ok.clone()
    };
    assert!(err(from(1, true)).contains("not both"));
    let past = prompt.len() + ok.tokens;
    assert!(err(from(past, false)).contains(&format!("from position {past}: past the")));
    let n_ctx = loaded.transformer.config.n_ctx;
    assert!(
        err(Steering {
            tokens: n_ctx,
            ..ok.clone()
        })
        .contains("exceed the model's context")
    );
}

/// [`check_steering`] on wgpu (lavapipe in CI): the key/value cache and the steering on a
/// GPU backend.
#[test]
fn steered_generation_on_wgpu_matches_transformers() {
    let Some(device) = wgpu_device("steering on wgpu") else {
        return;
    };
    check_steering(&device, 1e-4);
}

/// `steer --json`: the library's continuation pair, at 4 times the feature's largest
/// dashboard activation by default, at `--strength 1.5x` 1.5 times it, at an activation
/// given as `--strength -2.5`, sampled (`--temperature 0.9 --seed 11`), clamped (`--clamp`
/// at 0 and at 2x), with a second `--feature` at its own strength, and at the new tokens
/// only (`--new-only`), sampled from the nucleus (`--top-p 0.3`) and from the 4 likeliest
/// (`--top-k 4`); two strengths for
/// three features are refused; without dashboards a multiple is an error that says what to
/// give.
#[test]
fn steer_command_continues_the_text_as_the_library_does() {
    use attn_saes::live::{Steered, Steering, steer, text_ids};
    let dir = TempDir::new("attn-saes-steer", "cli");
    let run = run_with_dashboard(&dir, 30);
    let d =
        attn_saes::dashboard::build::read(&attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    // The feature with the largest activation in the dashboards.
    let (head, feature, max) = (d.heads.iter().enumerate())
        .flat_map(|(h, hd)| {
            (hd.features.iter().enumerate()).map(move |(f, x)| (h, f, x.max_activation))
        })
        .fold((0, 0, 0.0f32), |b, x| if x.2 > b.2 { x } else { b });
    assert!(max > 0.0);
    let text = "The cat sat on the mat and the";
    let cli = |extra: &[&str], run: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "steer"])
            .arg(run)
            .args([
                text,
                "--feature",
                &format!("{head},{feature}"),
                "--tokens",
                "6",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let live = attn_saes::app::jobs::load_live(
        &attn_saes::app::jobs::LiveSource::Run(run.clone()),
        attn_saes::device::DeviceChoice::Cpu,
    )
    .unwrap();
    let (loaded, sae, layer) = (&live.loaded, &live.sae, live.layer);
    let ids = text_ids(loaded, text).unwrap();
    let sampled = ["--strength", "-2.5", "--temperature", "0.9", "--seed", "11"];
    // A second feature, in another head, steered with the first at its own strength.
    let other = ((head + 1) % d.heads.len(), 0);
    let second = format!("{},{}", other.0, other.1);
    let pair = [
        "--feature",
        &second,
        "--strength",
        "4x",
        "--strength",
        "-1.5",
    ];
    let greedy = |strength| Steering::greedy(head, feature, strength, 6);
    let cases = [
        (vec![], greedy(4.0 * max)),
        (vec!["--strength", "1.5x"], greedy(1.5 * max)),
        (vec!["--strength", "-2.5"], greedy(-2.5)),
        (
            sampled.to_vec(),
            Steering {
                temperature: 0.9,
                seed: 11,
                ..greedy(-2.5)
            },
        ),
        (
            vec!["--clamp", "--strength", "0"],
            Steering {
                clamp: true,
                ..greedy(0.0)
            },
        ),
        (
            vec!["--clamp", "--strength", "2x"],
            Steering {
                clamp: true,
                ..greedy(2.0 * max)
            },
        ),
        (
            vec!["--clamp", "--where-fires", "--strength", "2x"],
            Steering {
                clamp: true,
                where_fires: true,
                ..greedy(2.0 * max)
            },
        ),
        (
            vec!["--where-fires"],
            Steering {
                where_fires: true,
                ..greedy(4.0 * max)
            },
        ),
        (
            pair.to_vec(),
            Steering {
                also: vec![(other.0, other.1, -1.5)],
                ..greedy(4.0 * max)
            },
        ),
        (
            vec!["--new-only"],
            Steering {
                new_only: true,
                ..greedy(4.0 * max)
            },
        ),
        (
            vec!["--temperature", "1", "--top-p", "0.3", "--seed", "5"],
            Steering {
                temperature: 1.0,
                top_p: Some(0.3),
                seed: 5,
                ..greedy(4.0 * max)
            },
        ),
        (
            vec!["--from-position", "2"],
            Steering {
                from_position: Some(2),
                ..greedy(4.0 * max)
            },
        ),
        (
            vec!["--temperature", "1.2", "--top-k", "4", "--seed", "6"],
            Steering {
                temperature: 1.2,
                top_k: Some(4),
                seed: 6,
                ..greedy(4.0 * max)
            },
        ),
    ];
    for (extra, steering) in cases {
        let out = cli(&[extra.as_slice(), &["--json"]].concat(), &run);
        assert_succeeded(&out);
        let got: Steered = serde_json::from_slice(&out.stdout).unwrap();
        let want = steer(loaded, sae, layer, live.z_convention, &ids, &steering).unwrap();
        assert_eq!(got, want);
        let shown = cli(&extra, &run);
        let stdout = String::from_utf8_lossy(&shown.stdout);
        assert!(
            stdout.contains(&format!("{:?}", want.steered.text)),
            "{stdout}"
        );
    }
    let out = cli(
        &[
            &pair[..2],
            &["--feature", &second, "--strength", "1", "--strength", "2"],
        ]
        .concat(),
        &run,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one for all, or one each"));
    std::fs::remove_file(attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let out = cli(&[], &run);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --strength as an activation"));
    assert!(cli(&["--strength", "-2.5"], &run).status.success());
}

/// Two SAEs' features matched by decoder direction against numpy in float64
/// (`matching/make_matching_reference.py`: the GPT-2 and Llama fixture SAEs, 4 heads x 12
/// features): each feature's closest both ways, the cosines, the MMCS, and one feature's
/// five closest in order.
#[test]
fn matching_saes_agrees_with_numpy() {
    use attn_saes::sae::matching::{Direction, closest_to, match_saes};
    let r = Reference::load("matching/matching_reference.safetensors");
    let device = Device::flex();
    let a = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &device).unwrap();
    let b = BlockDiagSae::load(&fixture("dashboard/llama_tiny_sae"), &device).unwrap();
    let m = match_saes(&a, &b).unwrap();
    assert_eq!(m.heads.len(), 4);
    for (way, direction) in [("a_to_b", Direction::AToB), ("b_to_a", Direction::BToA)] {
        let idx = r.tokens(&format!("{way}_idx"));
        let got: Vec<u32> = m
            .heads
            .iter()
            .flat_map(|h| h.side(direction).iter().map(|c| c.feature))
            .collect();
        assert_eq!(got, idx, "{way}");
        let cos: Vec<f64> = (m.heads.iter())
            .flat_map(|h| h.side(direction).iter().map(|c| c.cosine as f64))
            .collect();
        assert_close(way, &cos, &r.get(&format!("{way}_cos")).data, 1e-5);
    }
    let mmcs = [
        m.mean_max(Direction::AToB, None).unwrap(),
        m.mean_max(Direction::BToA, None).unwrap(),
    ];
    assert_close("mmcs", &mmcs, &r.get("mmcs").data, 1e-5);
    let close = closest_to(&a, &b, (1, 3), 5).unwrap();
    let ids: Vec<u32> = close.iter().map(|c| c.feature).collect();
    assert_eq!(ids, r.tokens("closest"));
    let cos: Vec<f64> = close.iter().map(|c| c.cosine as f64).collect();
    assert_close("closest", &cos, &r.get("closest_cos").data, 1e-5);
}

/// An SAE matched with a copy whose features are shuffled within each head, rescaled, and
/// joined by extra random ones: every feature finds its twin (cosine 1) and the MMCS over
/// the live features (the twins) is 1; SAEs of other heads are refused.
#[test]
fn matching_finds_each_feature_in_a_shuffled_rescaled_copy() {
    use attn_saes::sae::matching::{Direction, match_saes};
    let device = Device::flex();
    let a = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &device).unwrap();
    let [h, m, d] = a.w_dec.dims();
    let w = values(a.w_dec.clone());
    let mut rng = Rng::new(4);
    let extra = 5;
    let mut copy = vec![0f32; h * (m + extra) * d];
    let mut twin = vec![vec![0u32; m]; h];
    for head in 0..h {
        // Feature f of A goes to position perm[f] of B.
        let mut perm: Vec<usize> = (0..m + extra).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        for (f, &to) in perm.iter().enumerate() {
            let row = &mut copy[(head * (m + extra) + to) * d..][..d];
            if f < m {
                let scale = 0.5 + rng.uniform() as f32;
                for (x, &y) in row.iter_mut().zip(&w[(head * m + f) * d..][..d]) {
                    *x = y as f32 * scale;
                }
                twin[head][f] = to as u32;
            } else {
                row.iter_mut().for_each(|x| *x = rng.normal() as f32);
            }
        }
    }
    let mut b = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &device).unwrap();
    b.w_dec = Tensor::from_data(TensorData::new(copy, [h, m + extra, d]), &device);
    b.config.features_per_head = m + extra;
    let got = match_saes(&a, &b).unwrap();
    let mut twin_of_b = vec![vec![false; m + extra]; h];
    for (head, hm) in got.heads.iter().enumerate() {
        assert_eq!(hm.a_to_b.len(), m);
        assert_eq!(hm.b_to_a.len(), m + extra);
        for (f, c) in hm.a_to_b.iter().enumerate() {
            assert_eq!(c.feature, twin[head][f], "head {head} feature {f}");
            assert!((c.cosine - 1.0).abs() < 1e-5, "{c:?}");
            assert_eq!(hm.b_to_a[c.feature as usize].feature as usize, f);
            twin_of_b[head][c.feature as usize] = true;
        }
    }
    let all_twins = got.mean_max(Direction::BToA, Some(&twin_of_b)).unwrap();
    assert!((all_twins - 1.0).abs() < 1e-5, "{all_twins}");
    assert!(got.mean_max(Direction::BToA, None).unwrap() < 0.99);
    b.config.d_head = d + 1;
    let err = match_saes(&a, &b).unwrap_err().to_string();
    assert!(err.contains("read different layers"), "{err}");
}

/// A dense SAE matched against a block-diagonal one of the same layer, both ways, against
/// cosines computed here in f64 with each head's feature written out as a direction of the
/// whole hook_z (zero outside its head): each feature's closest (the first of equals) and
/// cosine, the MMCS, `closest` in each SAE's own numbering, one feature's five closest each
/// way, and the JSON round trip. Three of the dense features are copies (rescaled, one with
/// a little of another head added) of head features, which must find them.
#[test]
fn matching_a_dense_sae_against_a_block_diagonal_one_agrees_with_f64() {
    use attn_saes::sae::matching::{Direction, SaeMatch, Side, closest_to, match_saes};
    let device = Device::flex();
    let block = BlockDiagSae::load(&fixture("dashboard/gpt2_tiny_sae"), &device).unwrap();
    let [h, m, d] = block.w_dec.dims();
    let w_block = values(block.w_dec.clone());
    let (n, dd) = (19, h * d);
    let mut rng = Rng::new(11);
    let mut w_dense: Vec<f64> = (0..n * dd).map(|_| rng.normal()).collect();
    // Dense 4 is head 2's feature 7 at 3x; dense 9 is head 0's 1 plus a little of head 3;
    // dense 15 is head 3's 11 at 0.5x.
    let copies = [
        (4, 2, 7, 3.0, 0.0),
        (9, 0, 1, 1.0, 0.05),
        (15, 3, 11, 0.5, 0.0),
    ];
    for &(i, head, f, scale, other) in &copies {
        let row = &mut w_dense[i * dd..(i + 1) * dd];
        row.iter_mut().for_each(|x| *x *= other);
        for k in 0..d {
            row[head * d + k] = scale * w_block[(head * m + f) * d + k];
        }
    }
    let mut dense = BlockDiagSae::init(
        SaeConfig {
            n_heads: 1,
            d_head: dd,
            features_per_head: n,
            architecture: Architecture::Relu,
        },
        &mut Rng::new(1),
        &device,
    );
    let as_f32: Vec<f32> = w_dense.iter().map(|&x| x as f32).collect();
    dense.w_dec = Tensor::from_data(TensorData::new(as_f32, [1, n, dd]), &device);
    let w_dense = values(dense.w_dec.clone());

    // cos[i][j]: dense feature i against head feature j = head * m + f.
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let row = &w_dense[i * dd..(i + 1) * dd];
            (0..h * m)
                .map(|j| {
                    let (head, other) = (j / m, &w_block[j * d..(j + 1) * d]);
                    let dot: f64 = (0..d).map(|k| row[head * d + k] * other[k]).sum();
                    dot / (norm(row) * norm(other))
                })
                .collect()
        })
        .collect();
    let first_max = |it: &mut dyn Iterator<Item = f64>| {
        it.enumerate().fold(
            (0, f64::NEG_INFINITY),
            |b, (i, c)| if c > b.1 { (i, c) } else { b },
        )
    };
    let from_dense: Vec<(usize, f64)> = (0..n)
        .map(|i| first_max(&mut cos[i].iter().copied()))
        .collect();
    let from_block: Vec<(usize, f64)> = (0..h * m)
        .map(|j| first_max(&mut (0..n).map(|i| cos[i][j])))
        .collect();
    for &(i, head, f, _, other) in &copies {
        assert_eq!(from_dense[i].0, head * m + f, "dense {i}");
        if other == 0.0 {
            assert!((from_dense[i].1 - 1.0).abs() < 1e-9);
            assert_eq!(from_block[head * m + f].0, i);
        }
    }
    let check = |what: &str, got: &[attn_saes::sae::matching::Closest], want: &[(usize, f64)]| {
        let ids: Vec<usize> = got.iter().map(|c| c.feature as usize).collect();
        let want_ids: Vec<usize> = want.iter().map(|c| c.0).collect();
        assert_eq!(ids, want_ids, "{what}");
        let c: Vec<f64> = got.iter().map(|c| c.cosine as f64).collect();
        let w: Vec<f64> = want.iter().map(|c| c.1).collect();
        assert_close(what, &c, &w, 1e-5);
    };
    let mean = |v: &[(usize, f64)]| v.iter().map(|c| c.1).sum::<f64>() / v.len() as f64;
    for (a, b, dense_side) in [(&dense, &block, Side::A), (&block, &dense, Side::B)] {
        let got = match_saes(a, b).unwrap();
        let x = got.across.expect("matched across");
        assert_eq!(
            (x.dense, x.n_heads, x.features_per_head),
            (dense_side, h, m)
        );
        assert_eq!(got.heads.len(), 1);
        let (a_to_b, b_to_a) = match dense_side {
            Side::A => (&from_dense, &from_block),
            Side::B => (&from_block, &from_dense),
        };
        check("a_to_b", &got.heads[0].a_to_b, a_to_b);
        check("b_to_a", &got.heads[0].b_to_a, b_to_a);
        let mmcs = [
            got.mean_max(Direction::AToB, None).unwrap(),
            got.mean_max(Direction::BToA, None).unwrap(),
        ];
        assert_close("mmcs", &mmcs, &[mean(a_to_b), mean(b_to_a)], 1e-6);
        // `closest` speaks each SAE's numbering: (head, f) for the block-diagonal one, (0, i)
        // for the dense one.
        let (to_block, to_dense) = match dense_side {
            Side::A => (Direction::AToB, Direction::BToA),
            Side::B => (Direction::BToA, Direction::AToB),
        };
        let ((bh, bf), c) = got.closest(to_block, (0, 4)).unwrap();
        assert_eq!((bh, bf), (2, 7));
        assert!((c - 1.0).abs() < 1e-5);
        let ((zero, i), _) = got.closest(to_dense, (3, 11)).unwrap();
        assert_eq!((zero, i), (0, 15));
        assert_eq!(
            got.closest(to_block, (1, 4)),
            None,
            "the dense SAE has one block"
        );
        assert_eq!(got.closest(to_dense, (h, 0)), None, "no head {h}");
        let json: SaeMatch = serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
        assert_eq!(json, got);
    }
    // One feature's five closest, each way.
    let mut order: Vec<usize> = (0..h * m).collect();
    order.sort_by(|&x, &y| cos[9][y].total_cmp(&cos[9][x]).then(x.cmp(&y)));
    let want: Vec<(usize, f64)> = order[..5].iter().map(|&j| (j, cos[9][j])).collect();
    check(
        "closest to dense 9",
        &closest_to(&dense, &block, (0, 9), 5).unwrap(),
        &want,
    );
    let j = 2 * m + 5;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| cos[y][j].total_cmp(&cos[x][j]).then(x.cmp(&y)));
    let want: Vec<(usize, f64)> = order[..5].iter().map(|&i| (i, cos[i][j])).collect();
    check(
        "closest to head 2's 5",
        &closest_to(&block, &dense, (2, 5), 5).unwrap(),
        &want,
    );
    let err = closest_to(&dense, &block, (1, 0), 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one block of 19 features (head 0)"), "{err}");
    // Plain matching still refuses SAEs of other heads.
    dense.config.d_head = dd + 1;
    assert!(match_saes(&dense, &block).is_err());
}

/// `attn-saes match A B --feature H,F --json F`: the JSON is the library's match, and the
/// printed MMCS and closest features are its.
#[test]
fn match_command_prints_and_writes_the_librarys_match() {
    use attn_saes::sae::matching::{Direction, SaeMatch, closest_to, match_saes};
    let dir = TempDir::new("attn-saes-match", "cli");
    let json = dir.join("match.json");
    let (pa, pb) = (
        fixture("dashboard/gpt2_tiny_sae"),
        fixture("dashboard/llama_tiny_sae"),
    );
    let stdout = attn_saes_cli([
        "match".as_ref(),
        pa.as_os_str(),
        pb.as_os_str(),
        "--feature".as_ref(),
        "1,3".as_ref(),
        "--threshold".as_ref(),
        "0.5".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let got: SaeMatch = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let device = Device::flex();
    let a = BlockDiagSae::load(&pa, &device).unwrap();
    let b = BlockDiagSae::load(&pb, &device).unwrap();
    let want = match_saes(&a, &b).unwrap();
    assert_eq!(got, want);
    let line = format!(
        "A->B {:.3}, B->A {:.3}",
        want.mean_max(Direction::AToB, None).unwrap(),
        want.mean_max(Direction::BToA, None).unwrap()
    );
    assert!(stdout.contains(&line), "{stdout}");
    let shared: usize = (want.heads.iter())
        .map(|h| h.a_to_b.iter().filter(|c| c.cosine >= 0.5).count())
        .sum();
    assert!(
        stdout.contains(&format!("in B: {shared} of 48")),
        "{stdout}"
    );
    let close = closest_to(&a, &b, (1, 3), 5).unwrap();
    let first = format!("closest in B #{} {:.3}", close[0].feature, close[0].cosine);
    assert!(stdout.contains(&first), "{stdout}");
}

/// Each feature's effect on the loss in the dashboard file: the library's ranking summed
/// over the dashboard's first windows holding `effect_tokens` tokens (0 for features that do
/// not fire there), through the file; none with `effect_tokens` 0, and a file whose meta
/// promises effects without the arrays is an error.
#[test]
fn dashboard_effects_are_the_ranking_over_its_first_windows() {
    use attn_saes::dashboard::format::Effects;
    use attn_saes::live::rank_features_over;
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 6, 1);
    let windows = random_windows(&loaded, 6, 10, 2);
    let opts = BuildOptions {
        effect_tokens: 25,
        ..small_options()
    };
    let d = build_quiet(&inputs(&loaded, &sae, windows.clone()), &opts);
    let back = Dashboard::from_bytes(&d.to_bytes().unwrap()).unwrap();
    // 25 tokens: three windows of 10.
    assert_eq!(
        back.meta.effects,
        Some(Effects {
            windows: 3,
            tokens: 30
        })
    );
    let conv = ZConvention::TransformerLens;
    // The ranking over the first three windows, as `[head][feature]` (0 where it does not
    // fire), and the dashboard's effects checked against it.
    let estimates = |sae: &BlockDiagSae| {
        let ranking =
            rank_features_over(&loaded, sae, 1, conv, &windows[..3], &mut |_, _| {}).unwrap();
        let mut want = vec![vec![0.0f32; 6]; 4];
        for f in &ranking.features {
            want[f.head][f.feature] = f.estimate;
        }
        (ranking, want)
    };
    let same = |d: &Dashboard, want: &[Vec<f32>]| {
        for (h, head) in d.heads.iter().enumerate() {
            for (f, fd) in head.features.iter().enumerate() {
                assert_eq!(fd.effect, Some(want[h][f]), "head {h} feature {f}");
            }
        }
    };
    let (ranking, want) = estimates(&sae);
    assert!(
        ranking.features.len() > 5,
        "{} features fire",
        ranking.features.len()
    );
    same(&back, &want);
    // `features` prints each feature's effect per 1000 tokens; `--by effect` lists each
    // head's live features with the largest effect either way, largest first.
    use attn_saes::dashboard::report::{FeatureReport, Strongest, report};
    let listed = report(&back, Strongest::Effect, 2, 2).features;
    assert_eq!(listed.len(), 8);
    for r in &listed {
        let want = want[r.head][r.feature] as f64 * 1000.0 / 30.0;
        assert!(
            (r.effect_per_thousand.unwrap() - want).abs() < 1e-9,
            "{r:?}"
        );
    }
    for (h, head) in back.heads.iter().enumerate() {
        let mut live: Vec<usize> = (0..6).filter(|&f| head.features[f].density > 0.0).collect();
        live.sort_by(|&a, &b| {
            want[h][b]
                .abs()
                .total_cmp(&want[h][a].abs())
                .then(a.cmp(&b))
        });
        let got: Vec<usize> = (listed.iter())
            .filter(|r| r.head == h)
            .map(|r| r.feature)
            .collect();
        assert_eq!(got, live[..2], "head {h}");
    }
    let pairs = |v: &[FeatureReport]| v.iter().map(|r| (r.head, r.feature)).collect::<Vec<_>>();
    let by_activation = report(&back, Strongest::Activation, 2, 2).features;
    assert_ne!(pairs(&by_activation), pairs(&listed));
    // Over all six windows the sums differ: the windows are the first ones asked for.
    let all = rank_features_over(&loaded, &sae, 1, conv, &windows, &mut |_, _| {}).unwrap();
    assert_ne!(all.features, ranking.features);
    // The windows start with BOS: the SAE is applied there when the dashboards count BOS
    // (`--keep-bos`), so the estimates are those of an SAE that reads BOS, and differ.
    let with_bos = build_quiet(
        &inputs(&loaded, &sae, windows.clone()),
        &BuildOptions {
            keep_bos: true,
            ..opts.clone()
        },
    );
    let (_, want_bos) = estimates(&BlockDiagSae {
        reads_bos: true,
        ..sae.clone()
    });
    same(&with_bos, &want_bos);
    assert_ne!(want_bos, want);
    // Of many windows the file keeps only those its few examples use, which need not be
    // the first: the effects are still over the first windows scanned (`rank`'s).
    let many = random_windows(&loaded, 200, 10, 7);
    let few = build_quiet(
        &inputs(&loaded, &sae, many.clone()),
        &BuildOptions {
            top_k: 1,
            n_intervals: 1,
            per_interval: 1,
            ..opts.clone()
        },
    );
    assert_ne!(
        few.windows[..3],
        many[..3],
        "the examples' windows begin elsewhere"
    );
    let first = rank_features_over(&loaded, &sae, 1, conv, &many[..3], &mut |_, _| {}).unwrap();
    assert!(first.features.len() > 5);
    let effects: Vec<(usize, usize, f32)> = (first.features.iter())
        .map(|f| {
            (
                f.head,
                f.feature,
                few.heads[f.head].features[f.feature].effect.unwrap(),
            )
        })
        .collect();
    let want: Vec<(usize, usize, f32)> = (first.features.iter())
        .map(|f| (f.head, f.feature, f.estimate))
        .collect();
    assert_eq!(effects, want);

    let none = build_quiet(
        &inputs(&loaded, &sae, windows),
        &BuildOptions {
            effect_tokens: 0,
            ..opts
        },
    );
    let none_bytes = none.to_bytes().unwrap();
    let none = Dashboard::from_bytes(&none_bytes).unwrap();
    assert_eq!(none.meta.effects, None);
    assert!(
        none.heads
            .iter()
            .flat_map(|h| &h.features)
            .all(|f| f.effect.is_none())
    );
    // Without the estimates, `--by effect` lists by activation.
    assert_eq!(
        pairs(&report(&none, Strongest::Effect, 2, 2).features),
        pairs(&report(&none, Strongest::Activation, 2, 2).features)
    );
    // The meta promises effects the file does not hold.
    let promised = with_metadata(&none_bytes, "meta", |meta| {
        let mut m: serde_json::Value = serde_json::from_str(meta.as_str().unwrap()).unwrap();
        m["meta"]["effects"] = serde_json::json!({"windows": 3, "tokens": 30});
        m.to_string().into()
    });
    let e = Dashboard::from_bytes(&promised).unwrap_err().to_string();
    assert!(e.contains("h0.effect"), "{e}");
}

/// Output into a pipe closed early (`attn-saes match A B | head -1`) ends the process by
/// SIGPIPE, quietly, not with a panic message.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "match"])
        .args([
            fixture("dashboard/gpt2_tiny_sae"),
            fixture("dashboard/llama_tiny_sae"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {stderr}", out.status);
}

/// The dashboard holds each head's decoder rows as the run's SAELens export has them (read
/// here with the safetensors crate), and the features closest to one are those `match`'s
/// `closest_to` finds within the same SAE, with the cosines computed here in f64; a file
/// without decoder rows (as written before them) reads with none, and a writer asked for
/// them without them is refused.
#[test]
fn the_dashboard_holds_the_decoder_rows_and_the_closest_features_agree_with_match() {
    use attn_saes::dashboard::format::OwnedDashboardFile;
    use attn_saes::sae::matching::closest_to;
    let dir = TempDir::new("attn-saes-dashboard", "closest");
    let run = run_with_dashboard(&dir, 30);
    let path = attn_saes::dashboard::run_dashboard_path(&run);
    let bytes = std::fs::read(&path).unwrap();
    let file = OwnedDashboardFile::new(bytes.clone()).unwrap();
    assert!(file.meta.decoder);
    let (shape, w_dec) = f32_array(&run.join("sae/sae.safetensors"), "W_dec");
    let (heads, m, d) = (shape[0], shape[1], shape[2]);
    let sae = BlockDiagSae::load(&run.join("sae"), &Device::flex()).unwrap();
    let saelens = run.join("saelens/sae_weights.safetensors");
    let (saelens_shape, saelens_w_dec) = f32_array(&saelens, "W_dec");
    let d_in = saelens_shape[1];
    let cosine = |h: usize, a: usize, b: usize| {
        let row = |f: usize| &w_dec[(h * m + f) * d..][..d];
        let (x, y) = (row(a), row(b));
        let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
        let n = |v: &[f32]| v.iter().map(|&p| p as f64 * p as f64).sum::<f64>().sqrt();
        dot / (n(x) * n(y))
    };
    for h in 0..heads {
        let head = file.head(h).unwrap();
        // The SAELens export's rows (the run's `saelens/`: dense, head h's block).
        let folded: Vec<f32> = (0..m)
            .flat_map(|f| saelens_w_dec[(h * m + f) * d_in + h * d..][..d].to_vec())
            .collect();
        let rows = head.decoder.as_deref().unwrap();
        for (a, b) in rows.iter().zip(&folded) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "h{h}: {a} vs {b}");
        }
        assert_eq!(rows.len(), folded.len());
        for f in [0, m / 2, m - 1] {
            let got = head.closest(f, 5);
            let theirs: Vec<_> = closest_to(&sae, &sae, (h, f), 6)
                .unwrap()
                .into_iter()
                .filter(|c| c.feature as usize != f)
                .take(5)
                .collect();
            assert_eq!(got.len(), 5);
            for (i, (&(g, cos), c)) in got.iter().zip(&theirs).enumerate() {
                assert!(
                    (cos as f64 - cosine(h, f, g)).abs() < 1e-6,
                    "h{h} #{f} -> #{g}"
                );
                assert!(
                    (cos - c.cosine).abs() < 1e-5,
                    "h{h} #{f}: {i}th {cos} vs {c:?}"
                );
                if i + 1 < got.len() {
                    assert!(cos >= got[i + 1].1);
                }
            }
            // Nothing left out is closer than the last listed.
            let last = got[4].1 as f64;
            let listed: Vec<usize> = got.iter().map(|x| x.0).collect();
            for g in (0..m).filter(|g| *g != f && !listed.contains(g)) {
                assert!(cosine(h, f, g) <= last + 1e-6, "h{h} #{f}: #{g} left out");
            }
        }
    }
    // As written before the decoder rows: none, and no closest features.
    let mut older = Dashboard::from_bytes(&bytes).unwrap();
    older.meta.decoder = false;
    older.heads.iter_mut().for_each(|h| h.decoder = None);
    let older = OwnedDashboardFile::new(older.to_bytes().unwrap()).unwrap();
    assert_eq!(older.head(1).unwrap().decoder, None);
    assert!(older.head(1).unwrap().closest(0, 5).is_empty());
    let mut missing = Dashboard::from_bytes(&bytes).unwrap();
    missing.heads[2].decoder = None;
    let err = missing.to_bytes().unwrap_err().to_string();
    assert!(err.contains("h2.decoder"), "{err}");
}

/// A random dense ReLU SAE for a model: one block over every head's hook_z side by side
/// (as `train --dense` trains and Kissane et al.'s SAEs are), with negative encoder biases.
fn random_dense_sae(loaded: &LoadedModel, m: usize, seed: u64) -> BlockDiagSae {
    let cfg = &loaded.transformer.config;
    let d = cfg.n_heads * cfg.d_head;
    let mut rng = Rng::new(seed);
    let config = SaeConfig {
        n_heads: 1,
        d_head: d,
        features_per_head: m,
        architecture: Architecture::Relu,
    };
    let device = Device::flex();
    let mut sae = BlockDiagSae::init(config, &mut rng, &device);
    // Entries of unit variance over a row of d give pre-activations of size sqrt(d): scaled
    // to the per-head SAEs' so that features fire on a fraction of tokens.
    let w: Vec<f32> = (0..d * m)
        .map(|_| rng.normal() as f32 / (cfg.n_heads as f32).sqrt())
        .collect();
    sae.w_enc = Tensor::from_data(TensorData::new(w, [1, d, m]), &device);
    let b: Vec<f32> = (0..m).map(|_| -(rng.uniform() as f32) * 1.5).collect();
    sae.b_enc = Tensor::from_data(TensorData::new(b, [1, m]), &device);
    sae.input_scale = vec![0.8];
    sae
}

/// The dense SAE that computes what the block-diagonal ReLU `sae` does: its blocks on the
/// diagonal of one `[H d, H m]` encoder and decoder, the per-head input scales moved into
/// the weights (input scale 1), so that dense feature `h m + f` is head `h`'s feature `f`.
fn dense_of(sae: &BlockDiagSae) -> BlockDiagSae {
    let (h, d, m) = (
        sae.config.n_heads,
        sae.config.d_head,
        sae.config.features_per_head,
    );
    let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    let (w_enc, w_dec) = (host(sae.w_enc.clone()), host(sae.w_dec.clone()));
    let b_enc = sae.b_enc.clone().into_data().try_to_vec::<f32>().unwrap();
    let b_dec = sae.b_dec.clone().into_data().try_to_vec::<f32>().unwrap();
    let (dd, dm) = (h * d, h * m);
    let mut enc = vec![0f32; dd * dm];
    let mut dec = vec![0f32; dm * dd];
    for head in 0..h {
        let s = sae.input_scale[head];
        for k in 0..d {
            for f in 0..m {
                enc[(head * d + k) * dm + head * m + f] = s * w_enc[(head * d + k) * m + f];
                dec[(head * m + f) * dd + head * d + k] = w_dec[(head * m + f) * d + k] / s;
            }
        }
    }
    let b_dec: Vec<f32> = (0..dd).map(|i| b_dec[i] / sae.input_scale[i / d]).collect();
    let device = Device::flex();
    let config = SaeConfig {
        n_heads: 1,
        d_head: dd,
        features_per_head: dm,
        architecture: sae.config.architecture,
    };
    let mut dense = BlockDiagSae::init(config, &mut Rng::new(0), &device);
    dense.w_enc = Tensor::from_data(TensorData::new(enc, [1, dd, dm]), &device);
    dense.w_dec = Tensor::from_data(TensorData::new(dec, [1, dm, dd]), &device);
    dense.b_enc = Tensor::from_data(TensorData::new(b_enc, [1, dm]), &device);
    dense.b_dec = Tensor::from_data(TensorData::new(b_dec, [1, dd]), &device);
    dense.input_scale = vec![1.0];
    dense
}

/// Dense SAEs' dashboards: DFA summed over the heads still adds up to the pre-activation
/// (GPT-2, gelu-2l, Llama with GQA), and examples, histograms, L0 and EV match the brute
/// force pass.
#[test]
fn dense_sae_dfa_sums_to_the_pre_activation_and_matches_brute_force() {
    for model in ["gpt2_tiny", "gelu2l_tiny", "llama_tiny", "attn2l_tiny"] {
        let loaded = load(model);
        let sae = random_dense_sae(&loaded, 24, 3);
        let windows = random_windows(&loaded, 7, 14, 11);
        check_dfa_identity(model, &sae, windows);
    }
    let loaded = load("gpt2_tiny");
    check_against_brute_force(&loaded, &random_dense_sae(&loaded, 20, 4));
}

/// `features --across` on a dense SAE: the pairs of features that write most to different
/// heads (by their decoder rows) with the highest r among the lists, as the test computes
/// them from the file; pairs within one head are left out.
#[test]
fn cofiring_across_a_dense_sae_goes_by_the_head_each_feature_writes_most() {
    let loaded = load("gpt2_tiny");
    let sae = random_dense_sae(&loaded, 24, 3);
    let windows = random_windows(&loaded, 12, 14, 11);
    let d = build_quiet(&inputs(&loaded, &sae, windows), &small_options());
    let heads = d.meta.dense_heads().unwrap();
    let writes = |g: usize| d.heads[0].writes_most(g, heads).unwrap();
    let mut want: Vec<((usize, usize), f32)> = Vec::new();
    let mut within = 0;
    for (a, feature) in d.heads[0].features.iter().enumerate() {
        for &(g, r) in &feature.cofiring {
            let b = g as usize;
            if writes(a) == writes(b) {
                within += 1;
                continue;
            }
            let key = (a.min(b), a.max(b));
            match want.iter_mut().find(|p| p.0 == key) {
                Some(p) => p.1 = p.1.max(r),
                None => want.push((key, r)),
            }
        }
    }
    want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    assert!(
        want.len() > 3 && within > 0,
        "{want:?}, {within} within a head"
    );
    // Every pair, in order.
    let got = attn_saes::dashboard::report::cofiring_across(&d, 1000, 1);
    let got: Vec<((usize, usize), f32)> = (got.iter())
        .map(|p| ((p.a.global, p.b.global), p.r))
        .collect();
    assert_eq!(got, want);
}

/// A block-diagonal SAE written as a dense one (its blocks on the diagonal) has the same
/// features, so its dense dashboards must show what the per-head ones show: densities, top
/// examples with their activations and DFA, histograms and logit effects of head `h`'s
/// feature `f` at dense feature `h m + f`, and head shares of 100% on head `h`. The dense
/// file leaves out what only a head has (where it attends, its random-token scores).
#[test]
fn a_block_diagonal_sae_written_dense_has_the_same_dashboards() {
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 8, 21);
    let dense = dense_of(&sae);
    let windows = random_windows(&loaded, 9, 12, 22);
    let opts = BuildOptions {
        top_k: 4,
        logit_k: 5,
        histogram_bins: 9,
        windows_per_forward: 4,
        ..BuildOptions::default()
    };
    let per_head = build_quiet(&inputs(&loaded, &sae, windows.clone()), &opts);
    let all = build_quiet(&inputs(&loaded, &dense, windows.clone()), &opts);
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    assert_eq!(all.meta.dense_heads(), Some(h));
    assert_eq!(per_head.meta.dense_heads(), None);
    assert_eq!(all.meta.block_name(0), "all heads");
    assert_eq!(per_head.meta.block_name(2), "head 2");
    assert_eq!(
        all.meta.shape_text(),
        format!("one dense block over {h} heads, {} features", h * m)
    );
    assert_eq!(
        per_head.meta.shape_text(),
        format!("{h} heads x {m} features")
    );
    assert_eq!(all.heads.len(), 1);
    assert_eq!(all.heads[0].features.len(), h * m);
    let l0: f64 = per_head.meta.heads.iter().map(|s| s.l0).sum();
    assert!((all.meta.heads[0].l0 - l0).abs() < 1e-9, "L0 {l0}");
    assert!(all.meta.heads[0].attention.is_none() && all.meta.heads[0].random_tokens.is_none());
    assert!(per_head.meta.heads[0].attention.is_some());
    let close = |a: f32, b: f32, what: &str| {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    };
    let tokens = |d: &Dashboard, e: &attn_saes::dashboard::format::Example| {
        (d.windows[e.window as usize].clone(), e.target)
    };
    let mut examples = 0;
    for head in 0..h {
        for f in 0..m {
            let what = format!("head {head} feature {f}");
            let (a, b) = (
                &per_head.heads[head].features[f],
                &all.heads[0].features[head * m + f],
            );
            assert_eq!(a.density, b.density, "{what}: density");
            close(a.max_activation, b.max_activation, &what);
            assert_eq!(a.activation_histogram, b.activation_histogram, "{what}");
            assert_eq!(a.interval_counts, b.interval_counts, "{what}");
            let top = |x: &attn_saes::dashboard::format::FeatureData| -> Vec<_> {
                x.examples
                    .iter()
                    .filter(|e| e.group == ExampleGroup::Top)
                    .cloned()
                    .collect()
            };
            let (ta, tb) = (top(a), top(b));
            assert_eq!(ta.len(), tb.len(), "{what}: top examples");
            for (ea, eb) in ta.iter().zip(&tb) {
                assert_eq!(tokens(&per_head, ea), tokens(&all, eb), "{what}: example");
                close(ea.activation, eb.activation, &what);
                assert_eq!(ea.dfa.len(), eb.dfa.len());
                for (x, y) in ea.dfa.iter().zip(&eb.dfa) {
                    close(*x, *y, &format!("{what}: DFA"));
                }
                // By head: all of it in the feature's own head.
                assert!(ea.dfa_by_head.is_empty());
                assert_eq!(eb.dfa_by_head.len(), h);
                let own: f32 = ea.dfa.iter().sum();
                for (k, &x) in eb.dfa_by_head.iter().enumerate() {
                    close(
                        x,
                        if k == head { own } else { 0.0 },
                        &format!("{what}: head {k}"),
                    );
                }
                examples += 1;
            }
            for (x, y) in [
                (&a.logit_top, &b.logit_top),
                (&a.logit_bottom, &b.logit_bottom),
            ] {
                assert_eq!(x.len(), y.len());
                for (p, q) in x.iter().zip(y) {
                    assert_eq!(p.0, q.0, "{what}: logit token");
                    close(p.1, q.1, &format!("{what}: logit effect"));
                }
            }
            let shares = all.heads[0].head_shares(head * m + f, h).unwrap();
            // It reads its own head only, as it writes it (when it has top examples).
            assert_eq!(a.read_shares(), None);
            if let Some(reads) = b.read_shares() {
                for (g, x) in reads.iter().enumerate() {
                    close(
                        *x,
                        if g == head { 1.0 } else { 0.0 },
                        &format!("{what}: reads"),
                    );
                }
            }
            let exported = attn_saes::dashboard::neuronpedia::feature_json(&all, 0, head * m + f);
            let exported = exported["decoder_weights_dist"].as_array().unwrap().clone();
            assert_eq!(exported.len(), h, "{what}: Neuronpedia's head attribution");
            for (g, (s, e)) in shares.iter().zip(exported).enumerate() {
                let want = if g == head { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-6, "{what}: share of head {g} {s}");
                assert!(
                    (e.as_f64().unwrap() - want as f64).abs() < 1e-6,
                    "{what}: exported {e}"
                );
            }
        }
    }
    assert!(examples > 3 * h * m, "only {examples} examples compared");
    // The interval groups' DFA by head (`--interval-dfa`): all of it in the feature's head.
    let with_intervals = BuildOptions {
        interval_dfa: true,
        ..opts.clone()
    };
    let all = build_quiet(&inputs(&loaded, &dense, windows.clone()), &with_intervals);
    let mut intervals = 0;
    for (g, fd) in all.heads[0].features.iter().enumerate() {
        let head = g / m;
        for e in fd.examples.iter().filter(|e| e.group != ExampleGroup::Top) {
            let own: f32 = e.dfa.iter().sum();
            assert_eq!(e.dfa_by_head.len(), h);
            for (k, &x) in e.dfa_by_head.iter().enumerate() {
                close(
                    x,
                    if k == head { own } else { 0.0 },
                    &format!("#{g}: head {k}"),
                );
            }
            intervals += 1;
        }
    }
    assert!(intervals > h * m, "only {intervals} interval examples");
    // Matched with the SAE it was written from, dense feature h m + f is head h's feature f
    // at cosine 1, both ways (it was refused: "the SAEs read different layers").
    use attn_saes::sae::matching::{Direction, match_saes};
    let (ab, ba) = (
        match_saes(&sae, &dense).unwrap(),
        match_saes(&dense, &sae).unwrap(),
    );
    for head in 0..h {
        for f in 0..m {
            for (matched, way, from, to) in [
                (&ab, Direction::AToB, (head, f), (0, head * m + f)),
                (&ab, Direction::BToA, (0, head * m + f), (head, f)),
                (&ba, Direction::AToB, (0, head * m + f), (head, f)),
                (&ba, Direction::BToA, (head, f), (0, head * m + f)),
            ] {
                let (got, cosine) = matched.closest(way, from).unwrap();
                assert_eq!(got, to, "{from:?} {way:?}");
                assert!((cosine - 1.0).abs() < 1e-5, "{from:?}: {cosine}");
            }
        }
    }
}

/// Your text's analysis of a dense SAE: the features firing at each position and their DFA
/// are those of the block-diagonal SAE it was written from (dense feature `h m + f` is head
/// `h`'s `f`, its DFA by head all in head `h`), and on a random dense SAE the DFA summed
/// over every head adds up to the pre-activation, as does its DFA by head (GPT-2, and Llama
/// with grouped-query attention).
#[test]
fn your_text_on_a_dense_sae_is_the_per_head_analysis() {
    use attn_saes::live::LiveAnalysis;
    let text = "The cat sat on the mat. The cat sat on the mat again.";
    let conv = ZConvention::TransformerLens;
    let loaded = load("gpt2_tiny");
    let sae = random_sae(&loaded, 8, 31);
    let dense = dense_of(&sae);
    let per_head = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
    let all = LiveAnalysis::run(&loaded, &dense, 1, conv, text).unwrap();
    let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
    assert_eq!((all.n_heads, all.features_per_head), (1, h * m));
    assert_eq!((all.dense_heads, per_head.dense_heads), (Some(h), None));
    assert_eq!(all.block_name(0), "all heads");
    let mut compared = 0;
    for p in 0..per_head.len() {
        let mut want: Vec<(u32, f32)> = (0..h)
            .flat_map(|head| {
                per_head.active[head][p]
                    .iter()
                    .map(move |&(f, a)| (head as u32 * m as u32 + f, a))
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let got = &all.active[0][p];
        assert_eq!(got.len(), want.len(), "position {p}");
        for (&(g, a), &(w, b)) in got.iter().zip(&want) {
            assert_eq!(g, w, "position {p}");
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            let (head, f) = (w as usize / m, w as usize % m);
            let (x, y) = (all.dfa(0, g as usize, p), per_head.dfa(head, f, p));
            assert_eq!(x.len(), y.len());
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "DFA {a} vs {b}");
            }
            // By head: all of it in the feature's own head, none by block-diagonal SAEs.
            let by_head = all.attribution(0, g as usize, p).by_head;
            assert_eq!(by_head.len(), h);
            let own: f32 = y.iter().sum();
            for (k, v) in by_head.iter().enumerate() {
                let want = if k == head { own } else { 0.0 };
                assert!(
                    (v - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "head {k}: {v}"
                );
            }
            assert!(per_head.attribution(head, f, p).by_head.is_empty());
            compared += 1;
        }
    }
    assert!(compared > 50, "only {compared} features compared");
    for model in ["gpt2_tiny", "llama_tiny"] {
        let loaded = load(model);
        let sae = random_dense_sae(&loaded, 24, 5);
        let a = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
        let b_enc = sae.b_enc.clone().into_data().try_to_vec::<f32>().unwrap();
        let mut checked = 0;
        for p in 1..a.len() {
            for f in (0..24).step_by(5) {
                let at = a.attribution(0, f, p);
                let sum: f32 = at.dfa.iter().sum::<f32>() + b_enc[f];
                assert!(
                    (sum - at.pre).abs() < 1e-4,
                    "{model} #{f} at {p}: {sum} vs {}",
                    at.pre
                );
                // The DFA by head adds up to the same, and more than one head has a part.
                let by_head: f32 = at.by_head.iter().sum::<f32>() + b_enc[f];
                assert!(
                    (by_head - at.pre).abs() < 1e-4,
                    "{model} #{f} at {p}: by head"
                );
                assert!(at.by_head.iter().filter(|v| v.abs() > 1e-6).count() > 1);
                checked += 1;
            }
        }
        assert!(checked > 40);
    }
}

/// Two lists of the tokens whose probabilities a feature changes most, in order: the same
/// changes, and the same tokens but where two changes tie within `TIE` (the dense SAE sums
/// in another order, so tied tokens may swap, or one may fall off the end for the other).
fn same_changes(
    what: &str,
    a: &[attn_saes::live::TokenChange],
    b: &[attn_saes::live::TokenChange],
) {
    const TIE: f32 = 1e-6;
    // A change within a tie of zero may be listed on one side only.
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    for y in &long[short.len()..] {
        assert!(
            y.change().abs() <= TIE,
            "{what}: token {} only on one side",
            y.id
        );
    }
    for (x, y) in a.iter().zip(b) {
        let (cx, cy) = (x.change(), y.change());
        assert!((cx - cy).abs() <= TIE, "{what}: change {cx} vs {cy}");
    }
    for x in a {
        match b.iter().find(|y| y.id == x.id) {
            Some(y) => assert!(
                (x.change() - y.change()).abs() <= TIE,
                "{what}: token {} changes {} vs {}",
                x.id,
                x.change(),
                y.change()
            ),
            // Left out of the other list only at a tie with its last token.
            None => {
                let last = b.last().map(|y| y.change()).unwrap_or(f32::NAN);
                assert!(
                    (x.change() - last).abs() <= TIE,
                    "{what}: token {} ({}) missing, last {last}",
                    x.id,
                    x.change()
                );
            }
        }
    }
}

/// Removing, scaling, ranking and steering with a dense SAE's feature change the model's run
/// as the block-diagonal SAE it was written from does with the same feature (dense feature
/// `h m + f` is head `h`'s `f`): the same activations, losses and token changes, the same
/// ranking and estimates, the same continuations (added, clamped where it fires, and with a
/// second feature). They refused a dense SAE. GPT-2, and Llama with grouped-query attention.
#[test]
fn effects_ranking_and_steering_of_a_dense_sae_are_the_per_head_ones() {
    use attn_saes::live::{
        FeatureEffect, LiveAnalysis, Steering, feature_effect_scaled, rank_features, steer,
        text_ids,
    };
    let text = "The cat sat on the mat. The cat sat on the mat again.";
    let conv = ZConvention::TransformerLens;
    let near = |what: &str, a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    };
    for model in ["gpt2_tiny", "llama_tiny"] {
        let loaded = load(model);
        let sae = random_sae(&loaded, 8, 31);
        let dense = dense_of(&sae);
        let (h, m) = (sae.config.n_heads, sae.config.features_per_head);
        let ids = text_ids(&loaded, text).unwrap();
        // Features that fire on the text, strongest first.
        let a = LiveAnalysis::run(&loaded, &sae, 1, conv, text).unwrap();
        let mut firing: Vec<(f32, usize, usize)> = (0..h)
            .flat_map(|head| {
                let a = &a;
                (0..a.len()).flat_map(move |p| {
                    a.active[head][p]
                        .iter()
                        .map(move |&(f, x)| (x, head, f as usize))
                })
            })
            .collect();
        firing.sort_by(|x, y| y.0.total_cmp(&x.0));
        firing.dedup_by_key(|x| (x.1, x.2));
        assert!(firing.len() >= 3, "{model}: {} features fire", firing.len());
        for &(_, head, f) in &firing[..3] {
            for scale in [0.0, 2.0] {
                let run = |s: &BlockDiagSae, feature| {
                    feature_effect_scaled(&loaded, s, 1, conv, &ids, feature, scale).unwrap()
                };
                let (x, y): (FeatureEffect, FeatureEffect) =
                    (run(&dense, (0, head * m + f)), run(&sae, (head, f)));
                let what = format!("{model} head {head} #{f} x{scale}");
                near(&format!("{what} activation"), &x.activation, &y.activation);
                assert!(y.activation.iter().any(|&v| v > 0.0), "{what}: fires");
                near(&format!("{what} loss"), &x.loss, &y.loss);
                near(&format!("{what} ablated"), &x.ablated, &y.ablated);
                let differs = (x.ablated.iter().zip(&x.loss)).any(|(a, b)| (a - b).abs() > 1e-4);
                assert!(differs, "{what}: the run changed");
                for (which, a, b) in [
                    ("promotes", &x.promotes, &y.promotes),
                    ("suppresses", &x.suppresses, &y.suppresses),
                ] {
                    for (p, (cx, cy)) in a.iter().zip(b).enumerate() {
                        same_changes(&format!("{what} {which} at {p}"), cx, cy);
                    }
                }
            }
        }
        // The ranking: the same features, estimates and counts.
        let (rd, rb) = (
            rank_features(&loaded, &dense, 1, conv, &ids).unwrap(),
            rank_features(&loaded, &sae, 1, conv, &ids).unwrap(),
        );
        assert_eq!(
            rd.features.len(),
            rb.features.len(),
            "{model}: features ranked"
        );
        assert!(rb.features.len() >= 3);
        for y in &rb.features {
            let x = (rd.features.iter())
                .find(|x| (x.head, x.feature) == (0, y.head * m + y.feature))
                .unwrap_or_else(|| panic!("{model}: {y:?} not ranked dense"));
            assert_eq!(x.fires, y.fires);
            near(&format!("{model} estimate"), &[x.estimate], &[y.estimate]);
        }
        // Steering: added everywhere; clamped where it fires with a second feature.
        let (f1, f2) = ((firing[0].1, firing[0].2), (firing[1].1, firing[1].2));
        let as_dense = |(head, f): (usize, usize)| (0, head * m + f);
        let greedy = Steering::greedy(f1.0, f1.1, 6.0, 5);
        let clamped = Steering {
            clamp: true,
            where_fires: true,
            also: vec![(f2.0, f2.1, 0.5)],
            ..Steering::greedy(f1.0, f1.1, 3.0, 5)
        };
        for (i, want) in [greedy, clamped].into_iter().enumerate() {
            let ((dh, df), (eh, ef)) = (as_dense(f1), as_dense(f2));
            let mut dense_steering = Steering {
                head: dh,
                feature: df,
                ..want.clone()
            };
            if !want.also.is_empty() {
                dense_steering.also = vec![(eh, ef, 0.5)];
            }
            let x = steer(&loaded, &dense, 1, conv, &ids, &dense_steering).unwrap();
            let y = steer(&loaded, &sae, 1, conv, &ids, &want).unwrap();
            assert_eq!(x.clean.ids, y.clean.ids, "{model} {i}");
            assert_eq!(x.steered.ids, y.steered.ids, "{model} {i}: steered");
            near(&format!("{model} {i} p"), &x.steered.prob, &y.steered.prob);
            assert_ne!(
                (y.steered.ids.clone(), y.steered.prob.clone()),
                (y.clean.ids.clone(), y.clean.prob.clone()),
                "{model} {i}: the steering changed nothing"
            );
        }
    }
}

/// An SAE trained without BOS (the default) is not applied at BOS, where the run never
/// read hook_z: Your text lists no features there and, elsewhere, what an SAE that reads BOS
/// lists; removing a feature leaves BOS's hook_z alone (checked against the model run with
/// the feature's part taken out of hook_z by hand at the other positions, and at every
/// position for the SAE that reads BOS); the ranking counts no firing at BOS, and each
/// feature's estimate loses only its BOS term. The feature removed fires at BOS, where
/// taking it out changes the losses, so a mask that did nothing would fail. GPT-2 and Llama.
#[test]
fn an_sae_trained_without_bos_is_not_applied_at_bos() {
    use attn_saes::live::{LiveAnalysis, feature_effect, rank_features, text_ids};
    use attn_saes::lm::{HeadSelection, HookRequest, Splice, per_token_ce};
    let text = "The cat sat on the mat. The cat sat on the mat again.";
    let conv = ZConvention::TransformerLens;
    for model in ["gpt2_tiny", "llama_tiny"] {
        let loaded = load(model);
        let skips = random_sae(&loaded, 8, 17);
        assert!(!skips.reads_bos, "an SAE reads BOS only when told");
        let reads = BlockDiagSae {
            reads_bos: true,
            ..skips.clone()
        };
        let (h, m) = (skips.config.n_heads, skips.config.features_per_head);
        let d = skips.config.d_head;
        let ids = text_ids(&loaded, text).unwrap();
        assert_eq!(Some(ids[0]), loaded.transformer.config.bos_token_id);
        let t = ids.len();

        // Your text.
        let a_skips = LiveAnalysis::run(&loaded, &skips, 1, conv, text).unwrap();
        let a_reads = LiveAnalysis::run(&loaded, &reads, 1, conv, text).unwrap();
        assert!(a_skips.skips_bos && a_skips.skipped(0) && !a_skips.skipped(1));
        assert!(!a_reads.skips_bos && !a_reads.skipped(0));
        for head in 0..h {
            assert!(a_skips.active[head][0].is_empty(), "{model} head {head}");
            assert_eq!(a_skips.active[head][1..], a_reads.active[head][1..]);
        }
        // The feature that fires most strongly at BOS.
        let (head, feature, _) = (0..h)
            .flat_map(|head| {
                a_reads.active[head][0]
                    .iter()
                    .map(move |&(f, a)| (head, f, a))
            })
            .max_by(|x, y| x.2.total_cmp(&y.2))
            .expect("some feature fires at BOS");
        let feature = feature as usize;

        // Removing it, against the model run with its part taken out by hand: at every
        // position after BOS, and at BOS too for the SAE that reads it.
        let skipped = feature_effect(&loaded, &skips, 1, conv, &ids, head, feature).unwrap();
        let read = feature_effect(&loaded, &reads, 1, conv, &ids, head, feature).unwrap();
        assert_eq!(skipped.activation[0], 0.0);
        assert!(read.activation[0] > 0.0);
        assert_eq!(skipped.activation[1..], read.activation[1..]);
        let row: Vec<f64> = values(skips.w_dec.clone())[(head * m + feature) * d..][..d].to_vec();
        let scale = skips.input_scale[head] as f64;
        let model_ = &loaded.transformer;
        let by_hand = |from: usize| -> Vec<f64> {
            let mut part = vec![0f32; t * h * d];
            for p in from..t {
                for j in 0..d {
                    part[(p * h + head) * d + j] =
                        (read.activation[p] as f64 * row[j] / scale) as f32;
                }
            }
            let part = Tensor::<4>::from_data(TensorData::new(part, [1, t, h, d]), model_.device());
            let remove = move |z: Tensor<4>| z - part.clone();
            let splice = Splice {
                layer: 1,
                heads: HeadSelection::All,
                replace: &remove,
            };
            let raw = HookRequest {
                logits: true,
                z_convention: ZConvention::Raw,
                ..Default::default()
            };
            let tokens = model_.tokens(std::slice::from_ref(&ids)).unwrap();
            let logits = model_
                .run(tokens.clone(), &raw, Some(&splice))
                .unwrap()
                .logits;
            values(per_token_ce(logits.unwrap(), tokens))
        };
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (after_bos, everywhere) = (by_hand(1), by_hand(0));
        assert_close(
            &format!("{model} skips BOS"),
            &f64s(&skipped.ablated),
            &after_bos,
            1e-4,
        );
        assert_close(
            &format!("{model} reads BOS"),
            &f64s(&read.ablated),
            &everywhere,
            1e-4,
        );
        let apart = (after_bos.iter().zip(&everywhere))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            apart > 1e-3,
            "{model}: removing at BOS changes little ({apart})"
        );

        // The ranking: no firing at BOS, and an estimate without its BOS term (the gradient
        // is the clean run's either way, so a feature silent at BOS keeps its estimate).
        let r_skips = rank_features(&loaded, &skips, 1, conv, &ids).unwrap();
        let r_reads = rank_features(&loaded, &reads, 1, conv, &ids).unwrap();
        let find = |r: &attn_saes::live::FeatureRanking, hf: (usize, usize)| {
            (r.features.iter())
                .find(|x| (x.head, x.feature) == hf)
                .cloned()
        };
        let mut differ = 0;
        for x in &r_reads.features {
            let hf = (x.head, x.feature);
            let at_bos = a_reads.active[x.head][0]
                .iter()
                .any(|&(f, _)| f as usize == x.feature);
            let fires = a_skips.active[x.head][1..]
                .iter()
                .filter(|on| on.iter().any(|&(f, _)| f as usize == x.feature))
                .count() as u32;
            assert_eq!(x.fires, fires + u32::from(at_bos), "{model} {hf:?}");
            match find(&r_skips, hf) {
                None => assert_eq!(fires, 0, "{model} {hf:?} fires after BOS"),
                Some(y) => {
                    assert_eq!(y.fires, fires, "{model} {hf:?}");
                    let same = (y.estimate - x.estimate).abs() <= 1e-6 + 1e-4 * x.estimate.abs();
                    if !at_bos {
                        assert!(same, "{model} {hf:?}: {} vs {}", y.estimate, x.estimate);
                    } else if !same {
                        differ += 1;
                    }
                }
            }
        }
        assert_eq!(r_skips.features.len(), {
            let mut n = 0;
            for head in 0..h {
                for f in 0..m {
                    let on = |p: &Vec<(u32, f32)>| p.iter().any(|&(g, _)| g as usize == f);
                    n += usize::from(a_skips.active[head][1..].iter().any(on));
                }
            }
            n
        });
        assert!(differ > 0, "{model}: no estimate lost a BOS term");
    }
}

/// The LM's outputs a build reads that do not depend on the SAE, kept in a directory
/// (beside an activation cache, for a sweep's runs): the first build writes them, a build
/// of another SAE over the same windows reads them, and every build's dashboard equals the
/// one built without keeping (to the bit). Files that disagree with a fresh computation of
/// the first pass are replaced; a file read is really read (a changed later one changes the
/// dashboard); a directory that cannot be written is said, and changes nothing.
#[test]
fn kept_lm_outputs_are_shared_by_the_dashboards_of_other_saes() {
    let loaded = load("gpt2_tiny");
    let (sae_a, sae_b) = (random_sae(&loaded, 6, 1), random_sae(&loaded, 6, 2));
    let windows = random_windows(&loaded, 11, 10, 3);
    // 3 passes of 4 windows; effects over 5 windows: 2 passes of 4.
    let opts = BuildOptions {
        windows_per_forward: 4,
        effect_tokens: 45,
        ..small_options()
    };
    let dir = TempDir::new("attn-saes-kept", "lm");
    let build_in = |sae: &BlockDiagSae, keep: Option<&std::path::Path>| {
        build::build_keeping(
            &inputs(&loaded, sae, windows.clone()),
            &opts,
            keep,
            &mut |_, _, _| {},
        )
        .unwrap()
    };
    let (fresh_a, none) = build_in(&sae_a, None);
    assert_eq!(none, None);
    assert_eq!(fresh_a.meta.effects.as_ref().map(|e| e.windows), Some(5));
    let (fresh_b, _) = build_in(&sae_b, None);
    assert_ne!(fresh_a, fresh_b);

    let (kept_a, notice) = build_in(&sae_a, Some(&dir));
    let kept: Vec<std::path::PathBuf> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept = &kept[0];
    assert!(
        kept.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("dashboard-lm-")
    );
    let mut files: Vec<String> = std::fs::read_dir(kept)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "effect-00000.safetensors",
            "effect-00001.safetensors",
            "key.json",
            "scan-00000.safetensors",
            "scan-00001.safetensors",
            "scan-00002.safetensors"
        ]
    );
    // 11 windows x 10 tokens: hook_z and values 4 x 16 floats each, patterns 4 x 10; the
    // effects' hook_z and gradient over 5 windows.
    let bytes = 4 * (110 * (2 * 64 + 4 * 10) + 50 * 2 * 64);
    assert_eq!(
        notice.as_deref(),
        Some(
            format!(
                "the LM's outputs over the dashboard windows kept in {} ({:.1} MB): the \
                 dashboards of other SAEs from this cache read them",
                kept.display(),
                bytes as f64 / 1e6
            )
            .as_str()
        )
    );
    assert_eq!(kept_a, fresh_a);
    // The files hold the LM's own outputs.
    let scan =
        attn_saes::lm::weights::WeightFile::open(&kept.join("scan-00001.safetensors")).unwrap();
    let model = &loaded.transformer;
    let mut cache = model
        .run(
            model.tokens(&windows[4..8]).unwrap(),
            &HookRequest {
                hook_z: vec![1],
                pattern: vec![1],
                z_convention: ZConvention::TransformerLens,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let z = cache.hook_z.remove(&1).unwrap();
    assert_eq!(scan.read("hook_z").unwrap().shape, z.dims().to_vec());
    assert_eq!(
        scan.read("hook_z").unwrap().data,
        attn_saes::files::host_vec(z).unwrap()
    );
    let pattern = cache.pattern.remove(&1).unwrap();
    assert_eq!(
        scan.read("pattern").unwrap().data,
        attn_saes::files::host_vec(pattern).unwrap()
    );

    // Another SAE reads them all (5 files) and gets its own dashboard.
    let (kept_b, notice) = build_in(&sae_b, Some(&dir));
    assert_eq!(
        notice.as_deref(),
        Some(
            format!(
                "the LM's outputs over the dashboard windows read from {} (5 files)",
                kept.display()
            )
            .as_str()
        )
    );
    assert_eq!(kept_b, fresh_b);

    // Read, not recomputed: a later scan file changed changes the dashboard; a missing
    // effect file is computed and written again.
    // Rewrites a kept scan file with its array `i` changed.
    let rewrite = |path: &std::path::Path, i: usize, change: &dyn Fn(&mut [f32])| {
        let file = attn_saes::lm::weights::WeightFile::open(path).unwrap();
        let mut arrays: Vec<attn_saes::files::NamedArray> = ["hook_z", "pattern", "values"]
            .iter()
            .map(|n| {
                let a = file.read(n).unwrap();
                attn_saes::files::NamedArray::new(*n, a.shape, a.data)
            })
            .collect();
        change(&mut arrays[i].data);
        attn_saes::files::write_safetensors(path, &arrays, None).unwrap();
    };
    let scan1 = kept.join("scan-00001.safetensors");
    let original = std::fs::read(&scan1).unwrap();
    rewrite(&scan1, 0, &|z| z.iter_mut().for_each(|x| *x *= 2.0));
    std::fs::remove_file(kept.join("effect-00001.safetensors")).unwrap();
    let (changed, notice) = build_in(&sae_b, Some(&dir));
    assert_ne!(changed, fresh_b);
    assert_eq!(changed.meta.effects, fresh_b.meta.effects);
    assert!(
        notice
            .as_deref()
            .is_some_and(|n| n.contains("(4 files; 1 more written, ")),
        "{notice:?}"
    );
    assert!(kept.join("effect-00001.safetensors").is_file());
    std::fs::write(&scan1, &original).unwrap();
    // The interval groups' DFA (pass 3) reads the scan files too: the second pass's
    // patterns doubled double the DFA of every interval example in its windows (4..8)
    // exactly, and leave the others' as they were.
    rewrite(&scan1, 1, &|p| p.iter_mut().for_each(|x| *x *= 2.0));
    let (doubled, _) = build_in(&sae_b, Some(&dir));
    std::fs::write(&scan1, &original).unwrap();
    let mut seen = [0, 0];
    for (head, fresh_head) in doubled.heads.iter().zip(&fresh_b.heads) {
        for (f, fresh_f) in head.features.iter().zip(&fresh_head.features) {
            for (e, fresh_e) in f.examples.iter().zip(&fresh_f.examples) {
                if e.group == ExampleGroup::Top {
                    continue;
                }
                assert_eq!((e.group, e.target), (fresh_e.group, fresh_e.target));
                let tokens = &doubled.windows[e.window as usize];
                assert_eq!(tokens, &fresh_b.windows[fresh_e.window as usize]);
                let in_pass = windows[4..8].contains(tokens);
                let want: Vec<f32> = (fresh_e.dfa.iter())
                    .map(|x| if in_pass { x * 2.0 } else { *x })
                    .collect();
                assert_eq!(e.dfa, want, "in the second pass: {in_pass}");
                seen[usize::from(in_pass)] += 1;
            }
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");

    // The first file no longer the LM's (another device's bits): all recomputed, replaced.
    let scan0 = kept.join("scan-00000.safetensors");
    rewrite(&scan0, 2, &|v| v[7] = f32::from_bits(v[7].to_bits() ^ 1));
    let (replaced, notice) = build_in(&sae_a, Some(&dir));
    assert_eq!(replaced, fresh_a);
    assert!(
        notice.as_deref().is_some_and(
            |n| n.contains("were of another model or device: recomputed and replaced in")
        ),
        "{notice:?}"
    );
    let (again, notice) = build_in(&sae_b, Some(&dir));
    assert_eq!(again, fresh_b);
    assert!(notice.unwrap().contains("read from"));

    // Somewhere that cannot be written: said, nothing else changes.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (unkept, notice) = build_in(&sae_a, Some(&file));
    assert_eq!(unkept, fresh_a);
    let notice = notice.unwrap();
    assert!(
        notice.starts_with("the LM's outputs over the dashboard windows were not kept in"),
        "{notice}"
    );
}

/// `dashboard --upstream`: each feature's writers over its top examples are what
/// `upstream_of` gives on each example (its window, target and largest DFA source, each
/// asked for alone: a forward pass each), summed by `spread_of` and listed by
/// `strongest_of`; on random 4-layer GPT-2 and Llama models hooked at layer 3 (more
/// writers than are listed), a 2-layer attention-only shortformer one (no MLPs, the value
/// bias kept in TransformerLens' hook_z), in both conventions; and they survive the file.
#[test]
fn dashboard_upstream_is_upstream_of_on_each_top_example_summed() {
    use attn_saes::dashboard::format::UPSTREAM_LISTED;
    use attn_saes::live::{Upstream, dfa_argmax, spread_of, strongest_of, upstream_of};
    let device = Device::flex();
    let cases = [
        ("gpt2_tiny", 4, ZConvention::TransformerLens),
        ("llama_tiny", 4, ZConvention::Raw),
        ("gpt2_tiny", 4, ZConvention::Raw),
        ("attn2l_tiny", 2, ZConvention::TransformerLens),
    ];
    for (fixture_model, n_layers, conv) in cases {
        let tiny = load(fixture_model);
        let loaded = match n_layers {
            2 => tiny,
            _ => {
                let mut config = tiny.transformer.config.clone();
                config.n_layers = n_layers;
                LoadedModel {
                    transformer: lm::load::random(config, 11, &device),
                    tokenizer: tiny.tokenizer.clone(),
                    source: tiny.source.clone(),
                }
            }
        };
        let layer = n_layers - 1;
        let sae = random_sae(&loaded, 8, 13);
        let windows = random_windows(&loaded, 5, 12, 17);
        let opts = BuildOptions {
            upstream: true,
            ..small_options()
        };
        let built = build_quiet(
            &BuildInputs {
                layer,
                z_convention: conv,
                ..inputs(&loaded, &sae, windows)
            },
            &opts,
        );
        let info = built.meta.upstream.as_ref().expect("the file's writers");
        // The file keeps them as they are (its DFA in f16: the check below takes the
        // sources from the build's own).
        let read = Dashboard::from_bytes(&built.to_bytes().unwrap()).unwrap();
        let upstreams = |d: &Dashboard| -> Vec<_> {
            (d.heads.iter())
                .flat_map(|h| h.features.iter().map(|f| f.upstream.clone()))
                .collect()
        };
        assert!(
            upstreams(&read) == upstreams(&built),
            "{fixture_model}: the round trip"
        );
        assert_eq!(read.meta.upstream, built.meta.upstream);
        let d = built.clone();
        let (mut worst, mut features, mut truncated) = (0f32, 0, 0);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
        for (head, data) in d.heads.iter().enumerate() {
            for (f, fd) in data.features.iter().enumerate() {
                let top: Vec<_> = (fd.examples.iter())
                    .filter(|e| e.group == ExampleGroup::Top)
                    .collect();
                let Some(got) = &fd.upstream else {
                    assert!(top.is_empty(), "h{head} #{f} has top examples and no split");
                    continue;
                };
                let splits: Vec<Upstream> = (top.iter())
                    .map(|e| {
                        let ids = &d.windows[e.window as usize];
                        let (source, _) = dfa_argmax(&e.dfa).unwrap();
                        let at = (e.target as usize, source);
                        upstream_of(&loaded, &sae, (layer, conv), ids, (head, f), at).unwrap()
                    })
                    .collect();
                let refs: Vec<&Upstream> = splits.iter().collect();
                let all = spread_of(&refs).unwrap();
                let writers: Vec<_> = all.iter().map(|w| w.writer).collect();
                assert_eq!(info.writers, writers, "{fixture_model}: the writers");
                let (listed, rest) = strongest_of(&all, UPSTREAM_LISTED);
                assert_eq!(got.examples as usize, top.len());
                let dfa = splits.iter().map(|u| u.dfa as f64).sum::<f64>() / top.len() as f64;
                assert!(close(got.dfa, dfa as f32), "{} {dfa}", got.dfa);
                assert_eq!(got.writers.len(), listed.len(), "h{head} #{f}");
                assert_eq!(got.rest.0, rest.0);
                assert!(close(got.rest.1, rest.1), "{:?} {rest:?}", got.rest);
                for (g, w) in got.writers.iter().zip(&listed) {
                    assert_eq!(g.writer, w.writer, "h{head} #{f}: the order listed");
                    let pairs = [
                        (g.mean, w.mean),
                        (g.sd, w.sd),
                        (g.min, w.min),
                        (g.max, w.max),
                    ];
                    let reading =
                        (g.reading.into_iter().flatten()).zip(w.reading.into_iter().flatten());
                    for (a, b) in pairs.into_iter().chain(reading) {
                        worst = worst.max((a - b).abs());
                        assert!(close(a, b), "h{head} #{f} {}: {g:?} {w:?}", w.writer.name());
                    }
                    assert_eq!(g.reading.is_some(), w.reading.is_some());
                }
                features += 1;
                truncated += usize::from(rest.0 > 0);
            }
        }
        println!(
            "{fixture_model} {conv:?}: {features} features, {truncated} with writers unlisted, \
             worst {worst:.2e}"
        );
        assert!(features >= 8, "{features} features with top examples");
        assert_eq!(
            truncated > 0,
            n_layers == 4,
            "more writers than listed at layer 3"
        );
    }
}
