//! Feature labels (`dashboard::labels`, `attn-saes label`): kept beside a dashboard file,
//! for the SAE it was built from (its sha256, checked here against the weights themselves),
//! read back as written; files that are not labels, are for another SAE, name a feature the
//! dashboard lacks or label one twice are refused with a message and left as they are.

mod common;

use std::path::Path;

use attn_saes::dashboard::format::{DashboardMeta, OwnedDashboardFile};
use attn_saes::dashboard::labels::{Labels, MAX_LABEL_CHARS, labels_path};
use common::*;
use serde_json::{Value, json};

fn meta_of(run: &Path) -> DashboardMeta {
    let bytes = std::fs::read(attn_saes::dashboard::run_dashboard_path(run)).unwrap();
    OwnedDashboardFile::new(bytes).unwrap().meta
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn labels_round_trip_and_files_that_do_not_fit_are_refused() {
    let dir = TempDir::new("attn-saes-labels", "lib");
    let run = run_with_dashboard(&dir, 5);
    let meta = meta_of(&run);
    let (heads, features) = (meta.sae.n_heads, meta.sae.features_per_head);
    let file = labels_path(&attn_saes::dashboard::run_dashboard_path(&run));
    assert_eq!(file, run.join("dashboard.labels.json"));

    // No file: no labels, for the SAE the dashboard was built from.
    let mut labels = Labels::read(&file, &meta).unwrap();
    assert!(labels.is_empty());
    let sae_sha = sha256(&run.join("sae/sae.safetensors"));
    assert_eq!(labels.sae_sha256.as_deref(), Some(sae_sha.as_str()));

    // Setting: whether anything changed; trimmed, line breaks made spaces; empty removes.
    assert!(labels.set(1, 3, "  previous token\nof 'the'  ").unwrap());
    assert_eq!(labels.get(1, 3), Some("previous token of 'the'"));
    assert!(!labels.set(1, 3, "previous token of 'the'").unwrap());
    assert!(labels.set(heads - 1, features - 1, "last").unwrap());
    assert!(labels.set(0, 0, "first").unwrap());
    assert!(labels.set(0, 0, "").unwrap());
    assert!(!labels.set(0, 0, " ").unwrap());
    assert_eq!(labels.get(0, 0), None);
    let long = "x".repeat(MAX_LABEL_CHARS + 1);
    assert!(labels.set(0, 1, &long).unwrap_err().0.contains("at most"));
    let err = labels.set(heads, 0, "x").unwrap_err().0;
    assert!(err.contains(&format!("head {heads}")), "{err}");
    let err = labels.set(0, features, "x").unwrap_err().0;
    assert!(err.contains(&format!("feature {features}")), "{err}");
    assert_eq!(labels.len(), 2);

    // Written whole (nothing left beside it), in the documented shape, read back the same.
    labels.write(&file).unwrap();
    assert!(!run.join("dashboard.labels.json.tmp").exists());
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({
            "format": "attn-saes feature labels",
            "version": 1,
            "sae_sha256": sae_sha,
            "labels": [
                {"head": 1, "feature": 3, "label": "previous token of 'the'"},
                {"head": heads - 1, "feature": features - 1, "label": "last"},
            ],
        })
    );
    assert_eq!(Labels::read(&file, &meta).unwrap(), labels);
    let listed: Vec<(usize, usize, &str)> = labels.iter().collect();
    assert_eq!(
        listed,
        [
            (1, 3, "previous token of 'the'"),
            (heads - 1, features - 1, "last")
        ]
    );

    // Refused, each with its reason.
    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut v = written.clone();
        edit(&mut v);
        Labels::parse(serde_json::to_string(&v).unwrap().as_bytes(), &meta)
            .unwrap_err()
            .0
    };
    let other = "0".repeat(64);
    let err = refused(&|v| v["sae_sha256"] = json!(other));
    assert!(
        err.contains("for another SAE") && err.contains("000000000000…"),
        "{err}"
    );
    assert!(refused(&|v| v["version"] = json!(2)).contains("newer attn-saes"));
    assert!(refused(&|v| v["format"] = json!("something else")).contains("not an attn-saes"));
    let err = refused(&|v| v["labels"][1]["head"] = json!(heads));
    assert!(
        err.contains(&format!("the dashboard has {heads} heads")),
        "{err}"
    );
    let err = refused(&|v| v["labels"][1] = v["labels"][0].clone());
    assert!(err.contains("head 1 feature 3 is labelled twice"), "{err}");
    assert!(refused(&|v| v["labels"][0]["label"] = json!(" ")).contains("an empty label"));
    let err = refused(&|v| v["labels"][0]["label"] = json!(long));
    assert!(
        err.contains("head 1 feature 3") && err.contains("at most"),
        "{err}"
    );
    let err = Labels::parse(b"{\"labels\": 1", &meta).unwrap_err().0;
    assert!(err.contains("not an attn-saes labels file"), "{err}");
    // The file's name in what `read` says.
    std::fs::write(&file, b"[]").unwrap();
    let err = Labels::read(&file, &meta).unwrap_err().0;
    assert!(err.starts_with(&file.display().to_string()), "{err}");
    // Labels without an SAE sha256 (written by hand) are taken, and get the dashboard's.
    let mut v = written.clone();
    v.as_object_mut().unwrap().remove("sae_sha256");
    let taken = Labels::parse(serde_json::to_string(&v).unwrap().as_bytes(), &meta).unwrap();
    assert_eq!(taken, labels);
}

#[test]
fn the_label_command_sets_prints_lists_and_clears_and_features_shows_them() {
    let dir = TempDir::new("attn-saes-labels", "cli");
    let run = run_with_dashboard(&dir, 5);
    let r = run.to_str().unwrap();
    let file = run.join("dashboard.labels.json");
    let stdout = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    assert!(stdout(cli(&["label", r])).starts_with("no labels for"));
    // The strongest feature of head 2 by max activation: the one `features` lists first.
    let d =
        attn_saes::dashboard::build::read(&attn_saes::dashboard::run_dashboard_path(&run)).unwrap();
    let strongest = (0..d.heads[2].features.len())
        .max_by(|&a, &b| {
            let x = |f: usize| d.heads[2].features[f].max_activation;
            x(a).total_cmp(&x(b)).then(b.cmp(&a))
        })
        .unwrap();
    let hf = format!("2,{strongest}");
    let said = stdout(cli(&["label", r, &hf, "fires on commas"]));
    assert!(
        said.contains("fires on commas") && said.contains("1 label)"),
        "{said}"
    );
    let said = stdout(cli(&["label", r, "0,1", "second"]));
    assert!(said.contains("2 labels)"), "{said}");
    let labels = Labels::read(&file, &meta_of(&run)).unwrap();
    assert_eq!(labels.get(2, strongest), Some("fires on commas"));
    assert_eq!(labels.get(0, 1), Some("second"));
    assert_eq!(
        stdout(cli(&["label", r])),
        format!("head 0 feature 1: second\nhead 2 feature {strongest}: fires on commas\n")
    );
    assert_eq!(
        stdout(cli(&["label", r, "0,1"])),
        "head 0 feature 1: second\n"
    );
    // `features` prints it in the feature's line, and in its JSON.
    let json = dir.join("report.json");
    let report = stdout(cli(&[
        "features",
        "--run",
        r,
        "--per-head",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert!(
        report.contains(&format!(
            "head 2 feature {strongest} \"fires on commas\" (global"
        )),
        "{report}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let listed = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["head"] == 2)
        .unwrap();
    assert_eq!(listed["feature"], strongest);
    assert_eq!(listed["label"], "fires on commas");
    // `features --feature`: that feature's report, with its label and the features of its
    // head closest to it (as the file's decoder rows give them), labelled too.
    let closest = d.heads[2].closest(strongest, 5);
    let (g, _) = closest[0];
    stdout(cli(&["label", r, &format!("2,{g}"), "its neighbour"]));
    let one = dir.join("one.json");
    let said = stdout(cli(&[
        "features",
        "--run",
        r,
        "--feature",
        &hf,
        "--top",
        "2",
        "--json",
        one.to_str().unwrap(),
    ]));
    let listed: Vec<String> = (closest.iter().enumerate())
        .map(|(i, (g, cos))| match i {
            0 => format!("#{g} {cos:.2} \"its neighbour\""),
            _ => format!("#{g} {cos:.2}"),
        })
        .collect();
    assert!(
        said.starts_with(&format!(
            "head 2 feature {strongest} \"fires on commas\" (global"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("    closest in its head: {}\n", listed.join(", "))),
        "{said}"
    );
    let one: Value = serde_json::from_slice(&std::fs::read(&one).unwrap()).unwrap();
    assert_eq!(one["label"], "fires on commas");
    assert_eq!(one["examples"].as_array().unwrap().len(), 2);
    let closest_json: Vec<(usize, f32)> = serde_json::from_value(one["closest"].clone()).unwrap();
    assert_eq!(closest_json, closest);
    // And the features it fires with (as the file gives them), by head, in both.
    let m = d.meta.sae.features_per_head;
    let with: Vec<(usize, usize, f32)> = (d.heads[2].features[strongest].cofiring.iter())
        .map(|&(g, r)| (g as usize / m, g as usize % m, r))
        .collect();
    assert!(!with.is_empty());
    let labels_after = Labels::read(&file, &meta_of(&run)).unwrap();
    let named: Vec<String> = (with.iter())
        .map(|(h, f, r)| {
            let label = labels_after.get(*h, *f).map(|l| format!(" {l:?}"));
            format!("h{h} #{f} {r:.2}{}", label.unwrap_or_default())
        })
        .collect();
    assert!(
        said.contains(&format!("    fires with {} (Pearson", named.join(", "))),
        "{said}"
    );
    let with_json: Vec<(usize, usize, f32)> =
        serde_json::from_value(one["fires_with"].clone()).unwrap();
    assert_eq!(with_json, with);
    // And what wrote what it reads (the tests' run is built with `--upstream`): the file's
    // 4 largest writers and the DFA mean in its line, the whole split in the JSON.
    let u = (d.heads[2].features[strongest].upstream.as_ref()).expect("its upstream split");
    let writers: Vec<String> = (u.writers.iter().take(4))
        .map(|w| format!("{} {:+.4}", w.writer.name(), w.mean))
        .collect();
    assert!(
        said.contains(&format!(
            "    written by {} (means over {} top examples of their DFA from the largest \
             source, {:+.4})",
            writers.join(", "),
            u.examples,
            u.dfa
        )),
        "{said}"
    );
    let up = &one["upstream"];
    assert_eq!(up["examples"], u.examples);
    assert_eq!(up["writers"].as_array().unwrap().len(), u.writers.len());
    for (w, j) in u.writers.iter().zip(up["writers"].as_array().unwrap()) {
        let back: attn_saes::live::WriterSpread = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(&back, w);
    }
    // `features --across 3`: the 3 pairs of features of different heads listed as firing
    // together with the highest r (each pair once), as the file's lists give them.
    let mut pairs: Vec<((usize, usize), f32)> = Vec::new();
    for (h, head) in d.heads.iter().enumerate() {
        for (f, feature) in head.features.iter().enumerate() {
            for &(g, r) in &feature.cofiring {
                let (a, b) = (h * m + f, g as usize);
                if b / m != h {
                    let key = (a.min(b), a.max(b));
                    match pairs.iter_mut().find(|p| p.0 == key) {
                        Some(p) => p.1 = p.1.max(r),
                        None => pairs.push((key, r)),
                    }
                }
            }
        }
    }
    pairs.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    pairs.truncate(3);
    assert!(
        !pairs.is_empty(),
        "features of different heads fire together"
    );
    // A feature of the first pair labelled (not the one labelled already): the printed
    // report and the JSON say so.
    let (side, a) = match pairs[0].0 {
        (a, b) if a == 2 * m + strongest => ("b", b),
        (a, _) => ("a", a),
    };
    let (ha, fa) = (a / m, a % m);
    stdout(cli(&["label", r, &format!("{ha},{fa}"), "fires across"]));
    let across = dir.join("across.json");
    let said = stdout(cli(&[
        "features",
        "--run",
        r,
        "--across",
        "3",
        "--json",
        across.to_str().unwrap(),
    ]));
    let listed: Value = serde_json::from_slice(&std::fs::read(&across).unwrap()).unwrap();
    assert_eq!(listed[0][side]["label"], "fires across");
    assert!(
        said.contains(&format!("head {ha} feature {fa} \"fires across\"")),
        "{said}"
    );
    stdout(cli(&["label", r, &format!("{ha},{fa}"), "--clear"]));
    let listed: Vec<((usize, usize), f32)> = (listed.as_array().unwrap().iter())
        .map(|p| {
            let g = |x: &Value| x["global"].as_u64().unwrap() as usize;
            ((g(&p["a"]), g(&p["b"])), p["r"].as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(listed, pairs);
    assert!(said.contains(&format!("r {:.3}\n", pairs[0].1)), "{said}");
    let err = stderr(cli(&["features", "--run", r, "--feature", "4,0"]));
    assert!(
        err.contains("the dashboard has 4 heads x 32 features"),
        "{err}"
    );
    stdout(cli(&["label", r, &format!("2,{g}"), "--clear"]));

    // `text --pick` and `text --rank`, and `rank`, name labelled features by their labels.
    let text = "The cat sat on the mat, and the dog sat on the rug.";
    let shown: Value =
        serde_json::from_str(&stdout(cli(&["text", r, text, "--rank", "1000", "--json"]))).unwrap();
    let first = &shown["ranking"]["features"][0];
    let (h, f) = (
        first["head"].as_u64().unwrap(),
        first["feature"].as_u64().unwrap(),
    );
    let in_text = (h, f);
    let last = shown["tokens"]["ids"].as_array().unwrap().len() - 1;
    stdout(cli(&["label", r, &format!("{h},{f}"), "ranked first"]));
    let pick = format!("{last},{h},{f}");
    let said = stdout(cli(&["text", r, text, "--pick", &pick, "--rank", "1000"]));
    let named = format!("head {h} feature {f} \"ranked first\"");
    assert!(
        said.contains(&format!("{named} at {last}: activation")),
        "{said}"
    );
    assert!(said.contains(&format!("  {named}: ")), "{said}");
    let ranked = dir.join("rank.json");
    let rank = |json: Option<&Path>| {
        let mut args = vec!["rank", "--run", r, "--top", "1000", "--tokens", "64"];
        if let Some(json) = json {
            args.extend(["--json", json.to_str().unwrap()]);
        }
        stdout(cli(&args))
    };
    rank(Some(&ranked));
    let ranked: Value = serde_json::from_slice(&std::fs::read(&ranked).unwrap()).unwrap();
    let first = &ranked["features"][0];
    let (h, f) = (
        first["head"].as_u64().unwrap(),
        first["feature"].as_u64().unwrap(),
    );
    stdout(cli(&[
        "label",
        r,
        &format!("{h},{f}"),
        "ranked first on held-out text",
    ]));
    let said = rank(None);
    let named = format!("  head {h} feature {f} \"ranked first on held-out text\": ");
    assert!(said.contains(&named), "{said}");
    for (h, f) in [in_text, (h, f)] {
        stdout(cli(&["label", r, &format!("{h},{f}"), "--clear"]));
    }

    // Clearing, and what is refused.
    assert!(stdout(cli(&["label", r, "0,1", "--clear"])).contains("label removed"));
    assert!(stdout(cli(&["label", r, "0,1", "--clear"])).contains("has no label"));
    assert!(stderr(cli(&["label", r, "9,1", "x"])).contains("head 9: the dashboard has 4 heads"));
    assert!(stderr(cli(&["label", r, "0,1", " "])).contains("`--clear` removes one"));
    assert!(stderr(cli(&["label", r, "--clear"])).contains("<FEATURE>"));
    let missing = dir.join("nowhere");
    assert!(stderr(cli(&["label", missing.to_str().unwrap()])).contains("does not exist"));
    // Labels for another SAE: refused, the file left as it was; `features` says so and
    // reports without them.
    let text = std::fs::read_to_string(&file).unwrap();
    let sha = labels.sae_sha256.clone().unwrap();
    let other = text.replace(&sha, &"0".repeat(64));
    std::fs::write(&file, &other).unwrap();
    assert!(stderr(cli(&["label", r, "1,1", "x"])).contains("for another SAE"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), other);
    let out = cli(&["features", "--run", r, "--per-head", "1"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("labels not shown") && err.contains("for another SAE"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("fires on commas"));
    // The Neuronpedia export leaves them out (and says why), then, back with this SAE's
    // sha256, carries each as a row of Neuronpedia's explanation exports.
    let export = |np: &Path| {
        let np = np.to_str().unwrap();
        cli(&[
            "dashboard",
            "--run",
            r,
            "--tokens",
            "128",
            "--export-neuronpedia",
            np,
        ])
    };
    let np = dir.join("np-other");
    let out = export(&np);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("labels not exported") && err.contains("for another SAE"),
        "{err}"
    );
    assert!(np.join("batch-0.json").exists() && !np.join("explanations").exists());
    std::fs::write(&file, &text).unwrap();
    stdout(cli(&["label", r, "1,2", "says \"hi\" \u{2014} \u{2713}"]));
    let labels = Labels::read(&file, &meta_of(&run)).unwrap();
    assert!(labels.len() >= 2, "{labels:?}");
    let np = dir.join("np");
    let said = stdout(export(&np));
    assert!(
        said.contains(&format!("wrote {} labels as explanations", labels.len())),
        "{said}"
    );
    let gz = std::fs::read(np.join("explanations").join("batch-0.jsonl.gz")).unwrap();
    let mut rows = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut rows).unwrap();
    let meta = meta_of(&run);
    let m = meta.sae.features_per_head;
    let want: Vec<Value> = (labels.iter())
        .map(|(h, f, label)| {
            json!({
                "modelId": attn_saes::dashboard::format::published_name(&meta.model.name),
                "layer": format!("{}-att-attn-saes", meta.hook_layer),
                "index": (h * m + f).to_string(),
                "description": label,
            })
        })
        .collect();
    let got: Vec<Value> = (rows.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(rows.contains(&format!("\"index\":\"{}\"", m + 2)), "{rows}");
    // No local directory in what is meant for upload (the fixture model's is absolute).
    assert!(
        Path::new(&meta.model.name).is_absolute(),
        "{}",
        meta.model.name
    );
    let settings = std::fs::read_to_string(np.join("run_settings.json")).unwrap();
    for (name, text) in [("explanations", &rows), ("run_settings.json", &settings)] {
        assert!(!text.contains(&meta.model.name), "{name}: {text}");
    }
    // The feature batches are the same with labels and without.
    for name in ["batch-0.json", "skipped_indexes.json", "run_settings.json"] {
        let read = |d: &Path| std::fs::read(d.join(name)).unwrap();
        assert_eq!(read(&np), read(&dir.join("np-other")), "{name}");
    }
    // `export --neuronpedia` writes the same from the dashboard file as it is, without
    // rebuilding it (from the run directory or the file itself).
    let names = |d: &Path| {
        let mut v: Vec<String> = (std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let file_of_run = attn_saes::dashboard::run_dashboard_path(&run);
    for (i, from) in [run.as_path(), file_of_run.as_path()]
        .into_iter()
        .enumerate()
    {
        let again = dir.join(format!("np-export-{i}"));
        let said = stdout(cli(&[
            "export",
            "--run",
            from.to_str().unwrap(),
            "--neuronpedia",
            again.to_str().unwrap(),
        ]));
        assert!(
            said.contains(&format!("wrote {} labels", labels.len())),
            "{said}"
        );
        assert_eq!(names(&again), names(&np));
        for name in names(&np)
            .iter()
            .filter(|n| n.ends_with(".json"))
            .chain([&"explanations/batch-0.jsonl.gz".to_string()])
        {
            let read = |d: &Path| std::fs::read(d.join(name)).unwrap();
            assert!(read(&again) == read(&np), "{name}");
        }
    }
    // A run without a dashboard file, and a run that does not exist.
    let bare = dir.join("bare-run");
    std::fs::create_dir_all(&bare).unwrap();
    for (run, says) in [
        (&bare, "no dashboard file to export"),
        (&missing, "nowhere does not exist"),
    ] {
        let said = stderr(cli(&[
            "export",
            "--run",
            run.to_str().unwrap(),
            "--neuronpedia",
            dir.join("np-none").to_str().unwrap(),
        ]));
        assert!(said.contains(says), "{said}");
        assert!(!dir.join("np-none").exists());
    }
    assert!(stderr(cli(&["export", "--run", r])).contains("--out"));
}

/// `b` as a copy of the directory `a`, recursively.
fn copy_dir(a: &Path, b: &Path) {
    std::fs::create_dir_all(b).unwrap();
    for entry in std::fs::read_dir(a).unwrap() {
        let entry = entry.unwrap();
        let to = b.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &to),
            false => drop(std::fs::copy(entry.path(), &to).unwrap()),
        }
    }
}

/// A run's SAE arrays by name: shape and values.
fn sae_arrays(run: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let path = run.join("sae/sae.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    (names.into_iter())
        .map(|name| {
            let (shape, values) = f32_array(&path, name);
            (name.to_string(), shape, values)
        })
        .collect()
}

/// `label B --from A`: A's labels go to B's features whose decoder directions are closest,
/// at a cosine of at least the threshold, and not over B's own. B is A with every head's features in
/// reverse order (so a label of feature f lands on m-1-f, at cosine 1) and one of those
/// decoder rows turned away (so its label stays behind); what is copied is checked against
/// cosines computed here from the weights.
#[test]
fn labels_are_copied_to_the_closest_features_of_another_sae() {
    let dir = TempDir::new("attn-saes-labels", "from");
    let a = run_with_dashboard(&dir, 30);
    let b = dir.join("run-b");
    copy_dir(&a, &b);
    std::fs::remove_file(b.join("dashboard.safetensors")).unwrap();
    // B's SAE: features reversed within each head; head 2's row for A's feature `turned`
    // rolled by one element of d_head.
    let arrays = sae_arrays(&a);
    let shape = |name: &str| arrays.iter().find(|x| x.0 == name).unwrap().1.clone();
    let (heads, d, m) = {
        let s = shape("W_dec");
        (s[0], s[2], s[1])
    };
    assert!(
        !arrays.iter().any(|x| x.0.contains("threshold")),
        "a ReLU SAE"
    );
    let meta_a = meta_of(&a);
    let live: Vec<usize> = (0..m)
        .filter(|&f| {
            let file = OwnedDashboardFile::new(
                std::fs::read(attn_saes::dashboard::run_dashboard_path(&a)).unwrap(),
            )
            .unwrap();
            file.head(2).unwrap().features[f].max_activation > 0.0
        })
        .collect();
    let (kept_apart, turned, taken) = (live[0], live[1], live[2]);
    let mut flipped = Vec::new();
    for (name, s, values) in &arrays {
        let mut out = values.clone();
        match name.as_str() {
            "W_enc" => {
                for (h, k, f) in itertools(heads, d, m) {
                    out[(h * d + k) * m + f] = values[(h * d + k) * m + (m - 1 - f)];
                }
            }
            "b_enc" => {
                for h in 0..heads {
                    for f in 0..m {
                        out[h * m + f] = values[h * m + (m - 1 - f)];
                    }
                }
            }
            "W_dec" => {
                for (h, f, k) in itertools(heads, m, d) {
                    out[(h * m + f) * d + k] = values[(h * m + (m - 1 - f)) * d + k];
                }
                let row = (2 * m + (m - 1 - turned)) * d;
                out[row..row + d].rotate_right(1);
            }
            _ => {}
        }
        flipped.push((name.clone(), s.clone(), out));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = (flipped.iter())
        .map(|(name, s, v)| {
            let bytes: &[u8] = bytemuck_f32(v);
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &b.join("sae/sae.safetensors")).unwrap();
    let out = cli(&["dashboard", "--run", b.to_str().unwrap(), "--tokens", "128"]);
    assert_succeeded(&out);

    // A's labels; B's own label on where A's `taken` lands.
    let labels_a = labels_path(&attn_saes::dashboard::run_dashboard_path(&a));
    let mut la = Labels::new(&meta_a);
    for (f, text) in [
        (kept_apart, "first"),
        (turned, "turned away"),
        (taken, "taken"),
    ] {
        la.set(2, f, text).unwrap();
    }
    la.set(0, 1, "head 0's").unwrap();
    la.write(&labels_a).unwrap();
    let (ra, rb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = cli(&["label", rb, &format!("2,{}", m - 1 - taken), "B's own"]);
    assert_succeeded(&out);
    let mut want = Labels::read(
        &labels_path(&attn_saes::dashboard::run_dashboard_path(&b)),
        &meta_of(&b),
    )
    .unwrap();
    assert_eq!(want.get(2, m - 1 - taken), Some("B's own"));
    let out = cli(&["label", rb, "--from", ra, "--threshold", "0.995"]);
    assert_succeeded(&out);
    let said = String::from_utf8(out.stdout).unwrap();

    // What should happen, from cosines computed here: each labelled feature of A to its
    // closest feature of B's head (the lowest index on a tie), copied at 0.995 or more (the
    // tiny SAE's features are alike: a turned row is still within 0.98 of another).
    let w_a = &arrays.iter().find(|x| x.0 == "W_dec").unwrap().2;
    let w_b = &flipped.iter().find(|x| x.0 == "W_dec").unwrap().2;
    let row = |w: &[f32], h: usize, f: usize| -> Vec<f64> {
        w[(h * m + f) * d..][..d]
            .iter()
            .map(|&x| x as f64)
            .collect()
    };
    let cosine = |x: &[f64], y: &[f64]| {
        let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        let n = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        dot / (n(x) * n(y))
    };
    let mut copied = 0;
    for (h, f, text) in la.iter() {
        let here = row(w_a, h, f);
        let (best, cos) = (0..m)
            .map(|g| (g, cosine(&here, &row(w_b, h, g))))
            .fold((0, f64::MIN), |b, x| if x.1 > b.1 { x } else { b });
        assert!(
            (cos - 0.995).abs() > 1e-4,
            "a cosine too near the threshold"
        );
        if text != "turned away" {
            assert_eq!((best, (cos * 1e6).round()), (m - 1 - f, 1e6), "{text}");
        }
        if cos >= 0.995 && want.get(h, best).is_none() {
            want.set(h, best, text).unwrap();
            copied += 1;
        }
    }
    let got = Labels::read(
        &labels_path(&attn_saes::dashboard::run_dashboard_path(&b)),
        &meta_of(&b),
    )
    .unwrap();
    assert_eq!(got, want, "{said}");
    assert_eq!(
        got.get(2, m - 1 - taken),
        Some("B's own"),
        "not written over"
    );
    assert_eq!(got.get(2, m - 1 - kept_apart), Some("first"));
    assert_eq!(copied, 2, "{said}");
    assert!(
        said.contains(&format!("copied 2 of 4 labels from {}", labels_a.display())),
        "{said}"
    );
    assert!(
        said.contains("not copied: 1 onto a label already there, 1 without a feature that close"),
        "{said}"
    );
    // Again: the labels copied are there already, counted, not listed as "kept" (they were
    // listed as kept over themselves, "kept ... own label X, not X").
    let out = cli(&["label", rb, "--from", ra, "--threshold", "0.995"]);
    assert_succeeded(&out);
    let again = String::from_utf8(out.stdout).unwrap();
    assert_eq!(again.matches("  kept ").count(), 1, "{again}");
    assert!(
        again.contains(&format!(
            "copied 0 of 4 labels from {} to {} (cosine at least 0.995); not copied: 1 onto a \
             label already there, 1 without a feature that close, 2 already labelled so\n",
            labels_a.display(),
            labels_path(&attn_saes::dashboard::run_dashboard_path(&b)).display()
        )),
        "{again}"
    );
    // `match --feature` names the labels on both sides: A's feature's, and B's for its
    // closest features that have one (the reversed index, at cosine 1).
    let out = cli(&["match", ra, rb, "--feature", &format!("2,{taken}")]);
    assert_succeeded(&out);
    let said = String::from_utf8(out.stdout).unwrap();
    let line = format!(
        "Head 2 feature {taken} of A \"taken\": closest in B #{} 1.000 \"B's own\",",
        m - 1 - taken
    );
    assert!(said.contains(&line), "{said}");
    // Labelling a labelled feature says what it replaces.
    let out = cli(&["label", rb, &format!("2,{}", m - 1 - taken), "B's newer"]);
    assert_succeeded(&out);
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with(&format!(
            "head 2 feature {} was labelled \"B's own\"\nhead 2 feature {}: B's newer (",
            m - 1 - taken,
            m - 1 - taken
        )),
        "{said}"
    );
    // Without labels there, or with a feature given too: errors that say so.
    std::fs::remove_file(&labels_a).unwrap();
    let out = cli(&["label", rb, "--from", ra]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no labels to copy"));
    let out = cli(&["label", rb, "1,1", "--from", ra]);
    assert!(!out.status.success());
}

/// `(i, j, k)` over `0..x`, `0..y`, `0..z`.
fn itertools(x: usize, y: usize, z: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..x).flat_map(move |i| (0..y).flat_map(move |j| (0..z).map(move |k| (i, j, k))))
}

/// The bytes of `v` (little-endian f32).
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any alignment of u8 is fine; the slice covers exactly
    // the vector's memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A labels file is read by the browser too: truncated at every byte, with random bytes
/// flipped, or with hostile strings where the file has strings, reading it gives labels or
/// an error, never a panic; and what it gives, written again, reads back the same.
#[test]
fn damaged_or_hostile_labels_files_are_errors_not_panics() {
    let dir = TempDir::new("attn-saes-labels", "fuzz");
    let run = run_with_dashboard(&dir, 5);
    let meta = meta_of(&run);
    let mut labels = Labels::new(&meta);
    labels.set(1, 3, "prévious tokén — ✓").unwrap();
    labels.set(3, 7, "x").unwrap();
    let good = labels.to_json().into_bytes();
    let check = |bytes: &[u8]| {
        let read = std::panic::catch_unwind(|| Labels::parse(bytes, &meta));
        let read =
            read.unwrap_or_else(|_| panic!("a panic on {:?}", String::from_utf8_lossy(bytes)));
        if let Ok(l) = read {
            let again = Labels::parse(l.to_json().as_bytes(), &meta).unwrap();
            assert_eq!(again, l);
        }
    };
    for n in 0..good.len() {
        check(&good[..n]);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (state >> 61);
        }
        check(&bytes);
    }
    // Hostile values where the file has strings and numbers.
    let text = String::from_utf8(good).unwrap();
    let sha = labels.sae_sha256.clone().unwrap();
    for hostile in [
        text.replace(&sha, "a✓✓✓✓✓✓✓✓✓✓✓✓✓"),
        text.replace(&sha, ""),
        text.replace("\"head\": 3", "\"head\": 18446744073709551615"),
        text.replace("\"head\": 3", "\"head\": -1"),
        text.replace("\"version\": 1", "\"version\": 4294967296"),
        text.replace("\"x\"", "\"\\u0000\\u001b[31m\""),
    ] {
        check(hostile.as_bytes());
    }
    let err = Labels::parse(text.replace(&sha, "a✓✓✓✓✓✓✓✓✓✓✓✓✓").as_bytes(), &meta).unwrap_err();
    assert!(err.0.contains("sha256 a✓✓✓✓✓✓✓✓✓✓✓…"), "{err}");
}
