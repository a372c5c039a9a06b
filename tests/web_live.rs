//! Your text in a real browser: `attn-saes serve` serves a tiny run's dashboard with the
//! model and SAE it was built from; headless Chromium (tests/web/live.mjs) loads them into
//! the page's inference bundle, on WebGPU (SwiftShader, forced with ?backend=webgpu: the
//! page passes over software adapters by default) and in a browser without a WebGPU adapter
//! (the CPU fallback), types a prompt into the Your text box and clicks Run (then runs it
//! again through the page's function), and picks a feature. What the Your text view
//! shows must equal the native CLI's `attn-saes text --json` for the same text: the same
//! tokens and active features per head and position, activations, DFA and pre-activation
//! within 1e-4 + 1e-3 x |value| (f32 sums in another order on another backend), and so
//! must the picked feature's effect (`text --effect`: the losses with and without it, the
//! probabilities of the tokens listed, rank by rank), its DFA from its strongest source
//! split by what wrote the residual stream there (`text --upstream`), and the ranking of every firing
//! feature (`text --rank`), and the feature's effect on its top examples (`features
//! --effect`), and the text continued clean and steered by it, sampled (`steer
//! --temperature 0.8 --seed 7 --clamp`: the same tokens, their probabilities within the
//! tolerance), and continued with every steering option at once, asked as JSON
//! (`attnSaes.live_steer_json`: two features, the new tokens only, top-k and top-p; `steer`
//! with the same flags). Also: a
//! second visit reads the model from the browser's cache, a manifest with a wrong sha256 is
//! refused with a message, and so is a model file one bit off the one the dashboard
//! records (its sha256, checked here against the files themselves).
//! A second test writes the run's site with `serve --write-to` and opens it from a plain
//! static file server: the feature its address names, with its label, and Your text as the
//! CLI gives it. A third writes the site of dashboards rebuilt with `--keep-bos` for a run
//! trained without BOS: the page's Your text reads BOS as the manifest says, as the CLI's
//! `text` on that dashboard file does.
//!
//! Needs what tests/web_viewer.rs needs; skips (saying why) without them, unless
//! ATTN_SAES_REQUIRE_BROWSER=1 (as in CI).

mod common;

use std::process::Command;

use common::browser::*;
use common::*;
use serde_json::Value;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps.";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 + 1e-3 * b.abs()
}

fn native_text(
    run: &std::path::Path,
    pick: Option<(usize, usize, usize)>,
    effect: Option<(usize, usize)>,
) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attn-saes"));
    cmd.args([
        "text",
        run.to_str().unwrap(),
        PROMPT,
        "--json",
        "--device",
        "cpu",
    ]);
    if let Some((p, h, f)) = pick {
        // With its DFA from the strongest source taken upstream.
        cmd.args(["--pick", &format!("{p},{h},{f}"), "--upstream"]);
    }
    if let Some((h, f)) = effect {
        cmd.args(["--effect", &format!("{h},{f}"), "--rank", "1"]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "attn-saes text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first feature listed at the text's last token (of the first head with one), in
/// `text --json`'s output.
fn feature_at_the_last_token(native: &Value) -> (usize, usize) {
    let heads = native["tokens"]["active"].as_array().unwrap();
    (0..heads.len())
        .find_map(|h| {
            let last = heads[h].as_array()?.last()?.as_array()?;
            Some((h, last.first()?[0].as_u64()? as usize))
        })
        .expect("a feature on at the last token")
}

/// The browser's tokens and features equal the CLI's (activations within the tolerance;
/// a feature within the tolerance of zero may be on in one and off in the other).
fn assert_same_tokens(what: &str, page: &Value, native: &Value) {
    assert_eq!(page["ids"], native["ids"], "{what}: token ids");
    assert_eq!(page["strings"], native["strings"], "{what}: token strings");
    let heads = native["active"].as_array().unwrap();
    let mut compared = 0;
    for (h, positions) in heads.iter().enumerate() {
        for (p, feats) in positions.as_array().unwrap().iter().enumerate() {
            let list = |v: &Value| -> Vec<(u64, f64)> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| (x[0].as_u64().unwrap(), x[1].as_f64().unwrap()))
                    .collect()
            };
            let (ours, theirs) = (list(&page["active"][h][p]), list(feats));
            for (f, a) in &theirs {
                match ours.iter().find(|x| x.0 == *f) {
                    Some((_, b)) => {
                        assert!(close(*b, *a), "{what}: head {h} pos {p} #{f}: {b} vs {a}");
                        compared += 1;
                    }
                    None => assert!(close(0.0, *a), "{what}: head {h} pos {p}: #{f} ({a}) off"),
                }
            }
            for (f, b) in &ours {
                if !theirs.iter().any(|x| x.0 == *f) {
                    assert!(close(*b, 0.0), "{what}: head {h} pos {p}: #{f} ({b}) on");
                }
            }
        }
    }
    assert!(
        compared > 20,
        "{what}: only {compared} active features compared"
    );
}

/// The page's upstream split equals the CLI's: the same feature, positions and steps, the
/// same writers in the same order, each part (and a head's by source) within the tolerance.
fn assert_same_split(name: &str, ours: &Value, theirs: &Value) {
    for key in ["head", "feature", "target", "source", "through"] {
        assert_eq!(ours[key], theirs[key], "{name}: upstream {key}");
    }
    let number = |v: &Value| v.as_f64().unwrap();
    assert!(
        close(number(&ours["dfa"]), number(&theirs["dfa"])),
        "{name}: {ours}"
    );
    let (a, b) = (
        ours["parts"].as_array().unwrap(),
        theirs["parts"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{name}: upstream writers");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["writer"], y["writer"], "{name}");
        let what = format!("{name}: upstream {}", y["writer"]);
        assert!(close(number(&x["value"]), number(&y["value"])), "{what}");
        let sources = |w: &Value| w["by_source"].as_array().cloned().unwrap_or_default();
        let (xs, ys) = (sources(x), sources(y));
        assert_eq!(xs.len(), ys.len(), "{what}: by source");
        for (u, v) in xs.iter().zip(&ys) {
            assert!(close(number(u), number(v)), "{what}: by source {u} vs {v}");
        }
    }
}

/// tests/web/site.mjs on the static site in `site` (served by a plain file server): opens
/// `feature`, runs [`PROMPT`] through Your text, with `other` a dashboard file to open too,
/// and returns what it printed.
fn site_steps(
    site: &std::path::Path,
    (head, feature): (usize, usize),
    other: Option<&std::path::Path>,
) -> Value {
    let base = static_server(site);
    let out = Command::new("node")
        .arg(root().join("tests/web/site.mjs"))
        .arg(&base)
        .arg(format!("{head},{feature}"))
        .arg(PROMPT)
        .args(other)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser steps failed: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn your_text_in_the_browser_matches_the_cli_on_webgpu_and_the_cpu_fallback() {
    if !browser_available() {
        return;
    }
    build_web();
    for f in [
        "live.js",
        "live-worker.js",
        "live/attn_saes_live.js",
        "live/attn_saes_live_bg.wasm",
    ] {
        assert!(root().join("web/dist").join(f).is_file(), "web/dist/{f}");
    }
    let dir = TempDir::new("attn-saes-web", "live");
    let run = run_with_dashboard(&dir, 30);

    // The native reference, and a (position, head, feature) to pick: the strongest
    // feature of the head with the most features on at the last token.
    let native = native_text(&run, None, None);
    let tokens = &native["tokens"];
    let last = tokens["ids"].as_array().unwrap().len() - 1;
    let heads = tokens["active"].as_array().unwrap();
    let head = (0..heads.len())
        .max_by_key(|&h| heads[h][last].as_array().unwrap().len())
        .unwrap();
    let feature = heads[head][last][0][0].as_u64().expect("a feature on") as usize;
    let native = native_text(&run, Some((last, head, feature)), Some((head, feature)));
    // `features --effect` on the same feature's top examples.
    let examples_json = dir.join("examples.json");
    let out = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["--device", "cpu", "features", "--run"])
        .arg(&run)
        .args(["--effect", &format!("{head},{feature}"), "--json"])
        .arg(&examples_json)
        .output()
        .unwrap();
    assert_succeeded(&out);
    let native_examples: Value =
        serde_json::from_slice(&std::fs::read(&examples_json).unwrap()).unwrap();
    // The dashboard file's split of the feature over its top examples (`--upstream`).
    let file_split = {
        let d = attn_saes::dashboard::build::read(&run.join("dashboard.safetensors")).unwrap();
        let split = d.heads[head].features[feature].upstream.clone();
        serde_json::to_value(split.expect("the file's split")).unwrap()
    };
    // `steer` with the same feature, strength (held: clamped), length, temperature and seed
    // as the page is asked for.
    let hf = format!("{head},{feature}");
    // `steer RUN PROMPT --feature HEAD,FEATURE ... --json`, read.
    let steer_cli = |more: &[&str]| -> Value {
        let run = run.to_str().unwrap();
        let args = [&["steer", run, PROMPT, "--feature", &hf, "--json"], more].concat();
        serde_json::from_str(&attn_saes_cli(args)).unwrap()
    };
    let native_steer = steer_cli(&[
        "--strength",
        "2.5",
        "--tokens",
        "6",
        "--temperature",
        "0.8",
        "--seed",
        "7",
        "--clamp",
    ]);
    // A steering with every option, asked of the page as JSON (`live_steer_json`): the
    // pick added at 8x its largest dashboard activation with another head's strongest
    // feature at the last token at -8x, at the new tokens only, sampled at 0.9 from the 20
    // likeliest and their top 0.9: what `steer` with those flags says it did.
    let other = (0..heads.len())
        .filter(|&h| h != head)
        .find_map(|h| Some((h, heads[h][last].as_array()?.first()?[0].as_u64()? as usize)))
        .expect("another head with a feature on");
    let native_every = steer_cli(&[
        "--strength",
        "8x",
        "--feature",
        &format!("{},{}", other.0, other.1),
        "--strength",
        "-8x",
        "--new-only",
        "--tokens",
        "6",
        "--temperature",
        "0.9",
        "--seed",
        "3",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
    ]);
    let every_option: attn_saes::live::Steering =
        serde_json::from_value(native_every.clone()).unwrap();
    let (strength, other_strength) = (every_option.strength, every_option.also[0].2);
    assert!(strength > 0.0 && other_strength < 0.0);
    assert_eq!(
        every_option,
        attn_saes::live::Steering {
            also: vec![(other.0, other.1, other_strength)],
            new_only: true,
            temperature: 0.9,
            seed: 3,
            top_p: Some(0.9),
            top_k: Some(20),
            ..attn_saes::live::Steering::greedy(head, feature, strength, 6)
        },
        "steer's flags ask for that steering"
    );

    // The dashboard records the sha256 of the model's and SAE's files (computed here
    // independently, with sha2 over the files themselves).
    let bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let meta = attn_saes::dashboard::format::OwnedDashboardFile::new(bytes)
        .unwrap()
        .meta;
    let built_from = meta.built_from.expect("the dashboard records its files");
    let sha = |p: &std::path::Path| -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(p).unwrap());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    };
    let names: Vec<&str> = built_from.model.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    for r in &built_from.model {
        assert_eq!(
            r.sha256,
            sha(&fixture("gpt2_tiny").join(&r.name)),
            "{}",
            r.name
        );
    }
    let names: Vec<&str> = built_from.sae.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["sae_config.json", "sae.safetensors"]);
    for r in &built_from.sae {
        assert_eq!(r.sha256, sha(&run.join("sae").join(&r.name)), "{}", r.name);
    }
    let want = &native["pick"];
    // Ranked by an answer (" the" against " a" after the last token), and the picked
    // feature's effect on it, as `text --answer` gives them.
    let answer = serde_json::json!({"answer": " the", "against": " a"});
    let native_answer: Value = serde_json::from_str(&attn_saes_cli([
        "text",
        run.to_str().unwrap(),
        PROMPT,
        "--json",
        "--effect",
        &format!("{head},{feature}"),
        "--rank",
        "1",
        "--answer",
        " the",
        "--against",
        " a",
    ]))
    .unwrap();

    // A prompt set ranked over (`rank --prompts`), one line with its answer's position.
    let prompt_set = [
        r#"{"text": "When the cat and the dog went to the park, the dog gave a ball to", "answer": " the", "against": " a"}"#,
        r#"{"text": "The dog saw the cat, and then the cat went to", "answer": " a", "against": " the"}"#,
        r#"{"text": "When the dog and the cat went home, the cat gave a toy to the", "answer": " the", "at": 14}"#,
    ]
    .join("\n");
    let (prompts_file, prompts_json) = (dir.join("prompts.jsonl"), dir.join("prompts-ranked.json"));
    std::fs::write(&prompts_file, &prompt_set).unwrap();
    attn_saes_cli([
        "rank",
        "--run",
        run.to_str().unwrap(),
        "--prompts",
        prompts_file.to_str().unwrap(),
        "--exact",
        "--top",
        "8",
        "--json",
        prompts_json.to_str().unwrap(),
    ]);
    let native_prompts: Value =
        serde_json::from_slice(&std::fs::read(&prompts_json).unwrap()).unwrap();
    // The picked feature's DFA taken apart upstream on each of those prompts, from each
    // one's strongest source (`upstream --prompts`).
    let spread_json = dir.join("prompts-spread.json");
    attn_saes_cli([
        "upstream",
        run.to_str().unwrap(),
        &format!("{head},{feature}"),
        "--prompts",
        prompts_file.to_str().unwrap(),
        "--json",
        spread_json.to_str().unwrap(),
    ]);
    let native_spread: Value =
        serde_json::from_slice(&std::fs::read(&spread_json).unwrap()).unwrap();
    // Prompt-set files the page opens: that one, and one whose second line is no prompt.
    let bad_file = dir.join("bad-prompts.jsonl");
    let bad_set = format!(
        "{}\n{{\"answer\": \" a\"}}\n",
        prompt_set.lines().next().unwrap()
    );
    std::fs::write(&bad_file, &bad_set).unwrap();
    let prompt_files = [&prompts_file, &bad_file].map(|f| f.display().to_string());

    // The split taken a step further up through the layer-0 head term with the largest
    // magnitude (`text --through`).
    let split: attn_saes::live::Upstream =
        serde_json::from_value(native["upstream"].clone()).unwrap();
    let (layer, head0, from) = (split.parts.iter())
        .filter_map(|w| match w.writer {
            attn_saes::live::Writer::Head { layer, head } => {
                let (from, v) = w.reading_from(1)[0];
                Some((layer, head, from, v.abs()))
            }
            _ => None,
        })
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .map(|x| (x.0, x.1, x.2))
        .expect("a head among the writers");
    let through = serde_json::json!({"layer": layer, "head": head0, "from": from});
    // `text --json --pick --upstream` from the same source, with `more`.
    let (pick, source) = (format!("{last},{head},{feature}"), split.source.to_string());
    let upstream_json = |more: &[&str]| -> Value {
        let mut args = vec!["text", run.to_str().unwrap(), PROMPT, "--json", "--pick"];
        args.extend([pick.as_str(), "--upstream", source.as_str()]);
        serde_json::from_str(&attn_saes_cli(args.into_iter().chain(more.iter().copied()))).unwrap()
    };
    let native_through = upstream_json(&["--through", &format!("{layer},{head0},{from}")]);
    // And followed up through the strongest heads from there (`text --follow`): a step, on
    // this text.
    let native_followed = upstream_json(&["--follow"]);
    assert_eq!(
        native_followed["upstream"]["followed"], 1,
        "{native_followed}"
    );

    let server = Server::start(&run);
    assert!(
        server.url.ends_with("&live=live.json"),
        "serve offers Your text: {}",
        server.url
    );
    let shots = dir.join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let picked: Vec<String> = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|n| fixture("gpt2_tiny").join(n))
        .chain(["sae_config.json", "sae.safetensors"].map(|n| run.join("sae").join(n)))
        .map(|p| p.display().to_string())
        .collect();
    let out = Command::new("node")
        .env("LIVE_FILES", serde_json::to_string(&picked).unwrap())
        .env("LIVE_STEER", serde_json::to_string(&every_option).unwrap())
        .env("LIVE_ANSWER", answer.to_string())
        .env("LIVE_UPSTREAM", native["upstream"]["source"].to_string())
        .env("LIVE_THROUGH", format!("[{through}]"))
        .env("LIVE_FOLLOW", "1")
        .env("LIVE_PROMPTS", &prompt_set)
        .env(
            "LIVE_PROMPT_FILES",
            serde_json::to_string(&prompt_files).unwrap(),
        )
        .env(
            "LIVE_SPREAD",
            serde_json::json!({"head": head, "feature": feature, "from": "strongest"}).to_string(),
        )
        .arg(root().join("tests/web/live.mjs"))
        .arg(&server.base)
        .arg(&shots)
        .arg(PROMPT)
        .arg(format!("[{last},{head},{feature}]"))
        .output()
        .unwrap();
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser steps failed: {text}");
    let result: Value = serde_json::from_str(text.trim()).unwrap();

    for (name, backend) in [("webgpu", "WebGPU"), ("cpu", "CPU")] {
        let r = &result["runs"][name];
        eprintln!(
            "{name}: {} | model + SAE loaded in {:.0} ms; run to features shown: {:.0} ms \
             first ({} tries of the clicks), {:.0} ms second ({} tokens)",
            r["status"],
            r["bundleLoadMs"].as_f64().unwrap(),
            r["firstMs"].as_f64().unwrap(),
            r["firstAttempts"],
            r["secondMs"].as_f64().unwrap(),
            r["tokens"]["ids"].as_array().unwrap().len()
        );
        eprintln!(
            "{name}: the page's longest main-thread task: {} ms loading, {} / {} ms in the \
             first / second run",
            r["longestMainTaskLoadingMs"],
            r["firstLongestMainTaskMs"],
            r["secondLongestMainTaskMs"]
        );
        // The inference bundle runs in a worker: the page itself never fetches it.
        let fetched = &r["bundleFetchedByPage"];
        assert_eq!(
            fetched,
            &serde_json::json!([]),
            "{name}: the page fetched {fetched}"
        );
        let status = r["status"].as_str().unwrap();
        assert!(
            status.contains(&format!("on {backend}")),
            "{name}: {status}"
        );
        assert_same_tokens(name, &r["tokens"], tokens);
        let got = &r["pick"];
        for key in ["position", "head", "feature"] {
            assert_eq!(got[key], want[key], "{name}: pick {key}");
        }
        for key in ["activation", "pre"] {
            let (a, b) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(close(a, b), "{name}: {key} {a} vs {b}");
        }
        let (a, b) = (
            got["dfa"].as_array().unwrap(),
            want["dfa"].as_array().unwrap(),
        );
        assert_eq!(a.len(), last + 1, "{name}: DFA over every source");
        assert_eq!(a.len(), b.len());
        for (s, (x, y)) in a.iter().zip(b).enumerate() {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(close(x, y), "{name}: DFA at source {s}: {x} vs {y}");
        }
        // The feature's effect: the same losses with and without it, the same changes.
        assert_eq!(r["effectStatus"], "ready", "{name}");
        let (got, want) = (&r["effect"], &native["effect"]);
        assert_eq!(got["ids"], want["ids"], "{name}: effect ids");
        for key in ["activation", "loss", "ablated"] {
            let (a, b) = (got[key].as_array().unwrap(), want[key].as_array().unwrap());
            assert_eq!(a.len(), b.len(), "{name}: effect {key}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(close(x, y), "{name}: effect {key} at {i}: {x} vs {y}");
            }
        }
        let helps = |e: &Value, p: usize| {
            e["ablated"][p].as_f64().unwrap() - e["loss"][p].as_f64().unwrap()
        };
        assert!((0..last).any(|p| helps(want, p).abs() > 1e-3), "{want}");
        for key in ["promotes", "suppresses"] {
            for p in 0..=last {
                let (a, b) = (
                    got[key][p].as_array().unwrap(),
                    want[key][p].as_array().unwrap(),
                );
                let change =
                    |c: &Value| c["clean"].as_f64().unwrap() - c["ablated"].as_f64().unwrap();
                for (x, y) in a.iter().zip(b) {
                    let (x, y) = (change(x), change(y));
                    assert!(close(x, y), "{name}: {key} at {p}: {x} vs {y}");
                }
            }
        }
        // The effect on the picked feature's top examples: the same as the CLI's.
        assert_eq!(r["examplesStatus"], "ready", "{name}");
        for key in ["at_target", "window"] {
            let (a, b) = (
                r["examples"][key].as_array().unwrap(),
                native_examples[key].as_array().unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{name}: {key}");
            assert!(a.len() > 4, "{name}: {} examples", a.len());
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                assert!(
                    close(x, y) || (x.is_nan() && y.is_nan()),
                    "{name}: {key} {x} vs {y}"
                );
            }
        }
        // What wrote what it reads over its top examples, asked of the model: the split the
        // dashboard file (built with it) holds for the feature.
        assert_eq!(r["splitStatus"], "ready", "{name}");
        let split = &r["split"];
        let number = |v: &Value| v.as_f64().unwrap();
        assert_eq!(split["examples"], file_split["examples"], "{name}");
        assert!(close(number(&split["dfa"]), number(&file_split["dfa"])));
        assert_eq!(split["rest"][0], file_split["rest"][0], "{name}");
        assert!(close(
            number(&split["rest"][1]),
            number(&file_split["rest"][1])
        ));
        let (a, b) = (
            split["writers"].as_array().unwrap(),
            file_split["writers"].as_array().unwrap(),
        );
        assert!(a.len() > 2 && a.len() == b.len(), "{name}: {split}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["writer"], y["writer"], "{name}: the writers' order");
            for key in ["mean", "sd", "min", "max"] {
                assert!(
                    close(number(&x[key]), number(&y[key])),
                    "{name}: {x} vs {y}"
                );
            }
        }
        // The pick's DFA from its strongest source taken upstream: the same writers, in the
        // same order, with the same parts (and a head's parts by the positions it read
        // from) within the tolerance.
        assert_eq!(r["upstreamStatus"], "ready", "{name}");
        assert_same_split(name, &r["upstream"], &native["upstream"]);
        let parts = native["upstream"]["parts"].as_array().unwrap();
        assert!(parts.iter().any(|w| w["by_source"].is_array()), "{parts:?}");
        // And further up through a head: the same as `text --through`.
        assert_eq!(r["throughStatus"], "ready", "{name}");
        assert_eq!(
            r["through"]["through"],
            serde_json::json!([through]),
            "{name}"
        );
        assert_same_split(name, &r["through"], &native_through["upstream"]);
        // And followed up through the strongest heads: the same path and split as `text
        // --follow`'s, each step's term within the tolerance.
        assert_eq!(r["followStatus"], "ready", "{name}");
        let theirs = &native_followed["upstream"];
        assert_eq!(r["followed"]["followed"], theirs["followed"], "{name}");
        assert_same_split(name, &r["followed"], theirs);
        let terms = |u: &Value| u["terms"].as_array().unwrap().clone();
        assert_eq!(terms(&r["followed"]).len(), 2, "{name}");
        for (x, y) in terms(&r["followed"]).iter().zip(&terms(theirs)) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(close(x, y), "{name}: term {x} vs {y}");
        }
        let refused = r["throughRefused"].as_str().unwrap();
        assert!(refused.contains("not a list of steps"), "{name}: {refused}");
        // The ranking: the same features, estimates within the tolerance.
        assert_eq!(r["rankingStatus"], "ready", "{name}");
        let key = |f: &Value| (f["head"].as_u64().unwrap(), f["feature"].as_u64().unwrap());
        let ours = r["ranking"]["features"].as_array().unwrap();
        let theirs = native["ranking"]["features"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: features ranked");
        assert!(theirs.len() > 20, "{name}: {} ranked", theirs.len());
        for f in theirs {
            let g = ours
                .iter()
                .find(|g| key(g) == key(f))
                .expect("the same features");
            let (a, b) = (
                g["estimate"].as_f64().unwrap(),
                f["estimate"].as_f64().unwrap(),
            );
            assert!(close(a, b), "{name}: estimate of {:?}: {a} vs {b}", key(f));
            assert_eq!(g["fires"], f["fires"], "{name}: {:?}", key(f));
        }
        // Ranked by the answer: the same objective, value and features, estimates within
        // the tolerance; the effect asked after it gives the answer's change too.
        assert_eq!(r["answerRankingStatus"], "ready", "{name}");
        // Your text's controls show what was asked.
        let by = &r["answerRankBy"];
        assert_eq!(
            (&by["answer"], &by["against"]),
            (&answer["answer"], &answer["against"])
        );
        let (ours, theirs) = (&r["answerRanking"], &native_answer["ranking"]);
        assert_eq!(ours["objective"], theirs["objective"], "{name}");
        assert_eq!(ours["objective"]["kind"], "answer", "{name}");
        let value = |r: &Value| r["value"].as_f64().unwrap();
        assert!(
            close(value(ours), value(theirs)),
            "{name}: {ours} vs {theirs}"
        );
        let (a, b) = (
            ours["features"].as_array().unwrap(),
            theirs["features"].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}: features ranked by the answer");
        for f in b {
            let g = a
                .iter()
                .find(|g| key(g) == key(f))
                .expect("the same features");
            let (x, y) = (
                g["estimate"].as_f64().unwrap(),
                f["estimate"].as_f64().unwrap(),
            );
            assert!(
                close(x, y),
                "{name}: answer estimate of {:?}: {x} vs {y}",
                key(f)
            );
        }
        // Over the prompt set: each prompt's objective and value, and every feature's mean
        // estimate and count, as `rank --prompts --json` gives them.
        assert_eq!(r["promptsStatus"], "ready", "{name}");
        let (ours, theirs) = (&r["prompts"], &native_prompts);
        let (a, b) = (
            ours["objectives"].as_array().unwrap(),
            theirs["objectives"].as_array().unwrap(),
        );
        assert_eq!(a.len(), 3, "{name}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x[0], y[0], "{name}: a prompt's objective");
            let (x, y) = (x[1].as_f64().unwrap(), y[1].as_f64().unwrap());
            assert!(close(x, y), "{name}: a prompt's value {x} vs {y}");
        }
        let (a, b) = (
            ours["features"].as_array().unwrap(),
            theirs["features"].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}: features ranked over the prompts");
        assert!(b.len() > 20, "{name}: {} ranked", b.len());
        for f in b {
            let g = (a.iter().find(|g| key(g) == key(f))).expect("the same features");
            assert_eq!(g["fires"], f["fires"], "{name}: {:?}", key(f));
            let (x, y) = (
                g["estimate"].as_f64().unwrap(),
                f["estimate"].as_f64().unwrap(),
            );
            assert!(
                close(x, y),
                "{name}: mean estimate of {:?}: {x} vs {y}",
                key(f)
            );
        }
        let refused = r["promptsRefused"].as_str().unwrap();
        assert!(
            refused.contains("the prompt set line 2: not {\"text\""),
            "{name}: {refused}"
        );
        // The listed features' exact changes (8 each way, as `rank --prompts --exact --top
        // 8`): the same features in the same order, changes within the tolerance. The
        // bundle told the page how far each request got: all of it, at the end.
        assert_eq!(r["exactStatus"], "ready", "{name}");
        let (a, b) = (
            r["exact"].as_array().unwrap(),
            native_prompts["exact"].as_array().unwrap(),
        );
        let n = b.len();
        assert_eq!(r["exactProgress"], serde_json::json!([n, n]), "{name}");
        assert_eq!(r["promptsProgress"], serde_json::json!([3, 3]), "{name}");
        assert_eq!(r["spreadProgress"], serde_json::json!([3, 3]), "{name}");
        assert_eq!(a.len(), b.len(), "{name}: exact changes");
        assert!(b.len() > 8, "{name}: {} exact changes", b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (&x[0], &x[1]),
                (&y[0], &y[1]),
                "{name}: the feature removed"
            );
            let (p, q) = (x[2].as_f64().unwrap(), y[2].as_f64().unwrap());
            assert!(close(p, q), "{name}: exact change of {x}: {p} vs {q}");
        }
        // Taken apart upstream over the set: each prompt's split (the same source, writers
        // and parts within the tolerance) and each writer's spread over them.
        assert_eq!(r["spreadStatus"], "ready", "{name}");
        let (ours, theirs) = (&r["spread"], &native_spread);
        let (a, b) = (
            ours["prompts"].as_array().unwrap(),
            theirs["prompts"].as_array().unwrap(),
        );
        assert_eq!(a.len(), 3, "{name}: prompts taken apart");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["source_token"], y["source_token"], "{name}");
            let (p, q) = (
                x["activation"].as_f64().unwrap(),
                y["activation"].as_f64().unwrap(),
            );
            assert!(close(p, q), "{name}: activation {p} vs {q}");
            assert_same_split(name, &x["upstream"], &y["upstream"]);
        }
        let (a, b) = (
            ours["writers"].as_array().unwrap(),
            theirs["writers"].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}: writers spread");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["writer"], y["writer"], "{name}");
            for k in ["mean", "sd", "min", "max"] {
                let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(close(p, q), "{name}: {} {k} {p} vs {q}", y["writer"]);
            }
        }
        // The prompt-set files picked: their text in the box, the status line saying so.
        let files = r["promptFiles"].as_array().unwrap();
        assert_eq!(files[0]["set"], prompt_set.as_str(), "{name}");
        let said = &files[0]["said"];
        assert_eq!(said["error"], false, "{name}: {said}");
        let good = "3 prompts from prompts.jsonl in Your text's prompt set";
        assert!(
            said["text"].as_str().unwrap().starts_with(good),
            "{name}: {said}"
        );
        assert_eq!(files[1]["set"], bad_set.as_str(), "{name}");
        let said = &files[1]["said"];
        assert_eq!(said["error"], true, "{name}: {said}");
        let bad = "bad-prompts.jsonl line 2: not {\"text\"";
        assert!(
            said["text"].as_str().unwrap().contains(bad),
            "{name}: {said}"
        );
        let refused = r["spreadRefused"].as_str().unwrap();
        assert!(
            refused.contains("from \"biggest\": one of"),
            "{name}: {refused}"
        );
        assert_eq!(r["answerEffectStatus"], "ready", "{name}");
        let (ours, theirs) = (
            &r["answerEffect"]["objective"],
            &native_answer["effect"]["objective"],
        );
        assert_eq!(ours[0], theirs[0], "{name}: the effect's objective");
        for k in ["clean", "changed"] {
            let (x, y) = (ours[1][k].as_f64().unwrap(), theirs[1][k].as_f64().unwrap());
            assert!(close(x, y), "{name}: the answer {k}: {x} vs {y}");
        }
        // The steered continuations: the same tokens both ways, probabilities within the
        // tolerance, for the same steering.
        for (status, ours, theirs) in [
            ("steerStatus", &r["steer"], &native_steer),
            ("steerAllStatus", &r["steerAll"], &native_every),
        ] {
            assert_eq!(r[status], "ready", "{name}: {status}");
            for row in ["clean", "steered"] {
                let (ours, theirs) = (&ours[row], &theirs[row]);
                assert_eq!(ours["ids"], theirs["ids"], "{name}: {status} {row} tokens");
                assert_eq!(ours["text"], theirs["text"], "{name}: {status} {row} text");
                let probs = |v: &Value| -> Vec<f64> {
                    v["prob"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                };
                for (a, b) in probs(ours).into_iter().zip(probs(theirs)) {
                    assert!(close(a, b), "{name}: {status} {row} probability {a} vs {b}");
                }
            }
            let steering =
                |v: &Value| serde_json::from_value::<attn_saes::live::Steering>(v.clone()).unwrap();
            assert_eq!(steering(ours), steering(theirs), "{name}: {status}");
        }
        assert_eq!(r["steer"]["clamp"], true, "{name}: held, not added");
        assert_ne!(
            r["steerAll"]["steered"]["ids"], r["steerAll"]["clean"]["ids"],
            "{name}: the steering with every option changes the continuation"
        );
        let refused = r["steerJsonRefused"].as_str().unwrap();
        assert!(refused.contains("not a steering"), "{name}: {refused}");
        let order = &r["attributionOrder"];
        assert!(
            order["stale"].as_str().unwrap().contains("a newer text"),
            "{name}: {order}"
        );
        assert_eq!(order["freshDfa"], order["tokens"], "{name}: {order}");
        let png = shots.join(format!("live-{name}.png"));
        let n = colours(&png);
        assert!(n > 50, "{} looks blank ({n} colours)", png.display());
    }
    // Without a WebGPU adapter, or with only a software one, the page says it runs on the
    // CPU and why.
    let cpu = result["runs"]["cpu"]["status"].as_str().unwrap();
    assert!(
        cpu.contains("no WebGPU adapter"),
        "the CPU fallback says why: {cpu}"
    );
    let software = result["softwareAdapterStatus"].as_str().unwrap();
    assert!(
        software.contains("software adapter") && software.contains("on CPU"),
        "{software}"
    );
    assert_eq!(result["secondVisitFromCache"], true, "{result}");
    let refused = result["wrongShaStatus"].as_str().unwrap();
    assert!(
        refused.starts_with("failed: ")
            && refused.contains("sha256")
            && refused.contains("refused"),
        "{refused}"
    );
    assert_eq!(result["wrongShaShown"].as_str().unwrap(), refused);
    let refused = result["notTheDashboardsStatus"].as_str().unwrap();
    assert!(
        refused.starts_with("failed: ") && refused.contains("not the file the open dashboard"),
        "{refused}"
    );
    let no_worker = result["noWorkerStatus"].as_str().unwrap();
    assert!(
        no_worker.starts_with("failed: the inference worker stopped")
            && no_worker.contains("module workers"),
        "{no_worker}"
    );
    // Three model files and two SAE files, each checked against the dashboard's records,
    // downloaded or picked with Model + SAE….
    assert_eq!(result["checkedAgainstDashboard"], 5, "{result}");
    let picked = result["pickedStatus"].as_str().unwrap();
    assert!(picked.starts_with("ready: "), "{picked}");
    assert_eq!(result["pickedChecked"], 5, "{result}");
    assert_eq!(result["consoleErrors"], serde_json::json!([]), "{result}");
}

/// `serve --write-to DIR` writes a site for any static host: on a plain file server (no
/// `attn-saes`), its index.html opens the viewer on the dashboard at `?feature=H,F` with
/// the feature's label, the page loads the model and SAE from the site's copies (their
/// sha256 checked against the dashboard's record) and Your text shows what `text --json`
/// gives for the same text, with no console errors.
#[test]
fn a_static_site_opens_a_feature_and_runs_your_text_as_the_cli_does() {
    if !browser_available() {
        return;
    }
    build_web();
    let dir = TempDir::new("attn-saes-web", "site");
    let run = run_with_dashboard(&dir, 30);
    let native = native_text(&run, None, None);
    let (head, feature) = feature_at_the_last_token(&native);
    let dashboard = attn_saes::dashboard::run_dashboard_path(&run);
    let file =
        attn_saes::dashboard::format::OwnedDashboardFile::new(std::fs::read(&dashboard).unwrap())
            .unwrap();
    let density = file.head(head).unwrap().features[feature].density;
    let meta = file.meta;
    let mut labels = attn_saes::dashboard::labels::Labels::new(&meta);
    labels.set(head, feature, "on the site").unwrap();
    labels
        .write(&attn_saes::dashboard::labels::labels_path(&dashboard))
        .unwrap();

    // Another run to compare with: opened from the page, Your text's model is not its.
    let dir_b = TempDir::new("attn-saes-web", "site-b");
    let run_b = run_with_dashboard(&dir_b, 12);
    // With a label for its head 0 feature 0 (where the page opens it), published beside it.
    let b_file = attn_saes::dashboard::run_dashboard_path(&run_b);
    let b_meta = attn_saes::dashboard::format::OwnedDashboardFile::read(&b_file)
        .unwrap()
        .meta;
    let mut b_labels = attn_saes::dashboard::labels::Labels::new(&b_meta);
    b_labels.set(0, 0, "run B on the site").unwrap();
    b_labels
        .write(&attn_saes::dashboard::labels::labels_path(&b_file))
        .unwrap();
    let site = dir.join("site");
    let out = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["serve", run.to_str().unwrap(), "--web-dir"])
        .arg(root().join("web/dist"))
        .arg("--compare")
        .arg(&run_b)
        .arg("--write-to")
        .arg(&site)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("with the model and SAE for Your text"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The site's dashboard is the run's but for the local directories its metadata names:
    // the same features, examples and windows; the model by its directory's name; neither
    // the repository's nor the run's directory anywhere in the file or the manifest.
    let published = std::fs::read(site.join("dashboard.safetensors")).unwrap();
    let ours = attn_saes::dashboard::format::Dashboard::from_bytes(&published).unwrap();
    let theirs =
        attn_saes::dashboard::format::Dashboard::from_bytes(&std::fs::read(&dashboard).unwrap())
            .unwrap();
    assert_eq!(ours.meta, theirs.meta.published());
    assert_eq!(ours.meta.model.name, "gpt2_tiny");
    assert!(theirs.meta.model.name.starts_with(root().to_str().unwrap()));
    assert_eq!(
        (&ours.heads, &ours.windows, &ours.token_strings),
        (&theirs.heads, &theirs.windows, &theirs.token_strings)
    );
    let manifest_text = std::fs::read_to_string(site.join("live.json")).unwrap();
    let original = std::fs::read(&dashboard).unwrap();
    let names =
        |bytes: &[u8], local: &str| bytes.windows(local.len()).any(|w| w == local.as_bytes());
    for local in [root(), dir.to_path_buf()] {
        let local = local.display().to_string();
        let found = |bytes: &[u8]| names(bytes, &local);
        assert!(found(&original), "the run's dashboard names {local}");
        assert!(
            !found(&published) && !found(manifest_text.as_bytes()),
            "{local}"
        );
    }
    // Nor in the compared run's dashboard and manifest.
    let compared_manifest = std::fs::read(site.join("compare/0/live.json")).unwrap();
    let compared_dashboard = std::fs::read(site.join("compare/0/run.safetensors")).unwrap();
    for local in [root(), dir_b.to_path_buf()] {
        let local = local.display().to_string();
        let found = |bytes: &[u8]| names(bytes, &local);
        assert!(found(&std::fs::read(&b_file).unwrap()), "{local}");
        assert!(
            !found(&compared_manifest) && !found(&compared_dashboard),
            "{local}"
        );
    }
    let manifest: attn_saes::serve::Manifest = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(manifest.model_name, "gpt2_tiny");
    assert_eq!(manifest.keep_bos, Some(meta.settings.keep_bos));
    let built_from = meta.built_from.clone().unwrap();
    for (listed, recorded) in [
        (&manifest.model, &built_from.model),
        (&manifest.sae, &built_from.sae),
    ] {
        assert_eq!(listed.len(), recorded.len());
        for (file, record) in listed.iter().zip(recorded) {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(std::fs::read(site.join(&file.url)).unwrap());
            let sha: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!((&file.name, &sha), (&record.name, &record.sha256));
        }
    }

    // The site's SAE must be the one the dashboard was built from: with its weights
    // changed since, the page would refuse it, so `--write-to` refuses too and writes
    // nothing; `--no-live` (the dashboards alone) still writes. (On a copy of the run.)
    let copy = dir.join("changed");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&run)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let mut weights = std::fs::read(copy.join("sae/sae.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(copy.join("sae/sae.safetensors"), weights).unwrap();
    let write_to = |to: &std::path::Path, more: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["serve", copy.to_str().unwrap(), "--web-dir"])
            .arg(root().join("web/dist"))
            .args(more)
            .arg("--write-to")
            .arg(to)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let refused = dir.join("site-refused");
    let out = write_to(&refused, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("sha256 differs"),
        "{said}"
    );
    assert!(!refused.exists(), "nothing written");
    let out = write_to(&refused, &["--no-live"]);
    assert_succeeded(&out);
    assert!(refused.join("dashboard.safetensors").is_file() && !refused.join("live.json").exists());

    // The compared run's model and SAE are published for Your text: its SAE under
    // compare/0/, its model (the run's) not twice but named where the run's is.
    let compared: attn_saes::serve::Manifest =
        serde_json::from_slice(&std::fs::read(site.join("compare/0/live.json")).unwrap()).unwrap();
    for file in &compared.model {
        assert!(file.url.starts_with("../../live/model/"), "{}", file.url);
    }
    let b_sae = b_meta.built_from.clone().unwrap().sae;
    for file in &compared.sae {
        let record = b_sae.iter().find(|r| r.name == file.name).unwrap();
        use sha2::Digest;
        let bytes = std::fs::read(site.join("compare/0").join(&file.url)).unwrap();
        let sha: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, record.sha256, "{}", file.name);
    }
    assert!(!site.join("compare/0/live/model").exists());
    // A third run's dashboard, which the site has no model and SAE for.
    let dir_c = TempDir::new("attn-saes-web", "site-c");
    let other = dir.join("other.safetensors");
    let run_c = run_with_dashboard(&dir_c, 20);
    std::fs::copy(attn_saes::dashboard::run_dashboard_path(&run_c), &other).unwrap();

    let result = site_steps(&site, (head, feature), Some(&other));
    let location = result["location"].as_str().unwrap();
    assert!(
        location.starts_with("/viewer.html?url=dashboard.safetensors&live=live.json")
            && location.ends_with(&format!("feature={head}%2C{feature}")),
        "{location}"
    );
    let selection = result["selection"].as_str().unwrap();
    assert!(
        selection.contains(&format!(
            "head {head} · feature {feature} · density {density:.3e} · label \"on the site\""
        )),
        "{selection}"
    );
    eprintln!("static site: {}", result["liveStatus"]);
    assert_same_tokens("static site", &result["shown"]["tokens"], &native["tokens"]);
    // The compared run opened (as a click on its closest features does): the page loads its
    // model and SAE, and Your text shows what the CLI's `text` on that run does; the run
    // opened again: its own again.
    assert_eq!(result["swapped"]["open"], "run.safetensors", "{result}");
    assert_eq!(result["swapped"]["matches"], true, "{result}");
    // The same model both times: kept, and only the SAE loaded.
    for step in ["swapped", "back"] {
        assert_eq!(result[step]["keptModel"], true, "{step}");
        eprintln!("{step}: loaded in {} ms", result[step]["loadMs"]);
    }
    let native_b = native_text(&run_b, None, None);
    let shown_b = &result["swapped"]["shown"]["tokens"];
    assert_same_tokens("the compared run", shown_b, &native_b["tokens"]);
    assert_ne!(
        shown_b["active"], result["shown"]["tokens"]["active"],
        "the two SAEs fire alike"
    );
    let said = result["swapped"]["selection"].as_str().unwrap_or_default();
    assert!(
        said.contains("head 0 · feature 0 ·") && said.ends_with(" · label \"run B on the site\""),
        "{said}"
    );
    let published = std::fs::read(site.join("compare/0/run.labels.json")).unwrap();
    let published = attn_saes::dashboard::labels::Labels::parse(&published, &b_meta).unwrap();
    assert_eq!(published, b_labels);
    assert_eq!(result["back"]["open"], "dashboard.safetensors", "{result}");
    assert_eq!(result["back"]["matches"], true, "{result}");
    let shown_a = &result["back"]["shown"]["tokens"];
    assert_same_tokens("the run again", shown_a, &native["tokens"]);
    // A dashboard opened as a file, whose model and SAE the site does not have: Your text
    // says the loaded ones are another dashboard's.
    assert_eq!(result["other"]["open"], "other.safetensors", "{result}");
    assert_eq!(result["other"]["matches"], false, "{result}");
    assert_eq!(result["consoleErrors"], serde_json::json!([]), "{result}");
}

/// Dashboards rebuilt with `--keep-bos` for a run trained without BOS: the site's manifest
/// says so (`keep_bos`, which the SAE's own origin does not), and the page's Your text
/// applies the SAE at BOS as the CLI's `text` on that dashboard file does, where `text` on
/// the run, which follows its training, leaves BOS alone.
#[test]
fn a_site_of_dashboards_built_with_keep_bos_reads_bos_as_the_cli_does() {
    if !browser_available() {
        return;
    }
    build_web();
    let dir = TempDir::new("attn-saes-web", "keep-bos");
    let run = run_with_dashboard(&dir, 30);
    let sae_origin = attn_saes::sae::BlockDiagSae::read_origin(&run.join("sae"))
        .unwrap()
        .unwrap();
    assert!(!sae_origin.keep_bos, "trained without BOS");
    let run_s = run.to_str().unwrap();
    attn_saes_cli(["dashboard", "--run", run_s, "--keep-bos"]);
    let dashboard = attn_saes::dashboard::run_dashboard_path(&run);
    let meta = attn_saes::dashboard::format::OwnedDashboardFile::read(&dashboard)
        .unwrap()
        .meta;
    assert!(meta.settings.keep_bos);
    let by_file = native_text(&dashboard, None, None);
    let by_run = native_text(&run, None, None);
    let at_bos = |v: &Value| -> usize {
        (v["active"].as_array().unwrap().iter())
            .map(|h| h[0].as_array().unwrap().len())
            .sum()
    };
    assert!(
        at_bos(&by_file["tokens"]) > 0,
        "the dashboard file's SAE reads BOS"
    );
    assert_eq!(at_bos(&by_run["tokens"]), 0, "the run's leaves BOS alone");
    // A labelled feature for the page to open (site.mjs waits for its label).
    let heads = by_file["tokens"]["active"].as_array().unwrap();
    let (head, feature) = (0..heads.len())
        .find_map(|h| Some((h, heads[h][0].as_array()?.first()?[0].as_u64()? as usize)))
        .unwrap();
    let mut labels = attn_saes::dashboard::labels::Labels::new(&meta);
    labels.set(head, feature, "fires at BOS").unwrap();
    labels
        .write(&attn_saes::dashboard::labels::labels_path(&dashboard))
        .unwrap();
    let site = dir.join("site");
    let out = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["serve", run_s, "--web-dir"])
        .arg(root().join("web/dist"))
        .arg("--write-to")
        .arg(&site)
        .output()
        .unwrap();
    assert_succeeded(&out);
    let manifest: attn_saes::serve::Manifest =
        serde_json::from_slice(&std::fs::read(site.join("live.json")).unwrap()).unwrap();
    assert_eq!(manifest.keep_bos, Some(true));
    let result = site_steps(&site, (head, feature), None);
    let shown = &result["shown"]["tokens"];
    assert!(at_bos(shown) > 0, "the page applies the SAE at BOS");
    assert_same_tokens("keep-bos site", shown, &by_file["tokens"]);
    assert_eq!(result["consoleErrors"], serde_json::json!([]), "{result}");
}

/// An SAE on an attention-only model with shortformer positions (`attn2l_tiny`, a
/// TransformerLens `.pth`, which `serve` converts to safetensors for the page): the site's
/// page loads that model in the browser and its Your text gives the CLI's features, token by
/// token.
#[test]
fn a_site_of_an_attention_only_model_runs_your_text_as_the_cli_does() {
    if !browser_available() {
        return;
    }
    build_web();
    let dir = TempDir::new("attn-saes-web", "attn-only");
    let run = run_with_dashboard_of(attn_saes::train::TrainConfig {
        model: fixture("attn2l_tiny").display().to_string(),
        ..config(&dir, 30)
    });
    let native = native_text(&run, None, None);
    let (head, feature) = feature_at_the_last_token(&native);
    let dashboard = attn_saes::dashboard::run_dashboard_path(&run);
    let meta = attn_saes::dashboard::format::OwnedDashboardFile::read(&dashboard)
        .unwrap()
        .meta;
    let mut labels = attn_saes::dashboard::labels::Labels::new(&meta);
    labels.set(head, feature, "attention only").unwrap();
    labels
        .write(&attn_saes::dashboard::labels::labels_path(&dashboard))
        .unwrap();
    let site = dir.join("site");
    let out = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["serve", run.to_str().unwrap(), "--web-dir"])
        .arg(root().join("web/dist"))
        .arg("--write-to")
        .arg(&site)
        .env("ATTN_SAES_CACHE", dir.join("cache"))
        .output()
        .unwrap();
    assert_succeeded(&out);
    // The page reads no PyTorch files: the site has the checkpoint's weights as safetensors,
    // the same tensors (the boolean masks left out).
    let pth =
        attn_saes::lm::weights::WeightFile::open(&fixture("attn2l_tiny/model_final.pth")).unwrap();
    let served =
        attn_saes::lm::weights::WeightFile::open(&site.join("live/model/model.safetensors"))
            .unwrap();
    let mut names = served.names();
    names.sort();
    let mut floats: Vec<String> = (pth.names().into_iter())
        .filter(|n| !n.ends_with(".mask"))
        .collect();
    floats.sort();
    assert_eq!(names, floats);
    for n in &names {
        let (a, b) = (pth.read(n).unwrap(), served.read(n).unwrap());
        assert_eq!((a.shape, a.data), (b.shape, b.data), "{n}");
    }
    let result = site_steps(&site, (head, feature), None);
    assert_same_tokens(
        "attention-only site",
        &result["shown"]["tokens"],
        &native["tokens"],
    );
    assert_eq!(result["consoleErrors"], serde_json::json!([]), "{result}");
}
