//! The web viewer in a real browser: builds it (scripts/build-web.sh), serves a tiny run's
//! dashboard with `attn-saes serve`, and drives headless Chromium with playwright-core
//! (tests/web/browser.mjs): open by `?url=` and by the file input, move to a head and a
//! feature by keyboard, to Curves and back by clicks, read the selection the page exposes
//! (with a feature's label, which `serve` serves beside the dashboard, and a compared
//! run's, which it serves beside that one),
//! screenshot; a truncated file and a missing URL show errors in the page.
//!
//! Needs Debian's `chromium` and `npm ci` in tests/web. Without them the test says so and
//! passes, unless ATTN_SAES_REQUIRE_BROWSER=1 (as in CI), where it fails.

mod common;

use std::path::Path;
use std::process::Command;

use attn_saes::dashboard::format::OwnedDashboardFile;

use common::browser::*;
use common::*;

#[test]
fn web_viewer_opens_navigates_and_reports_errors_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    build_web();
    let wasm = std::fs::metadata(root().join("web/dist/attn_saes_bg.wasm")).unwrap();
    eprintln!("viewer wasm: {} bytes", wasm.len());

    let dir = TempDir::new("attn-saes-web", "viewer");
    let run = run_with_dashboard(&dir, 30);
    let file = attn_saes::dashboard::run_dashboard_path(&run);
    let bytes = std::fs::read(&file).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    // A second run (fewer steps) to compare with, under a name of its own.
    let dir_b = TempDir::new("attn-saes-web", "viewer-b");
    let run_b = run_with_dashboard(&dir_b, 12);
    let compare = dir.join("run-b.safetensors");
    std::fs::copy(attn_saes::dashboard::run_dashboard_path(&run_b), &compare).unwrap();

    // A label for head 3's feature 5 beside the run's dashboard (`serve` serves it).
    let labels_file = attn_saes::dashboard::labels::labels_path(&file);
    let meta = OwnedDashboardFile::new(bytes.clone()).unwrap().meta;
    let mut labels = attn_saes::dashboard::labels::Labels::new(&meta);
    labels.set(3, 5, "reads the token before").unwrap();
    labels.write(&labels_file).unwrap();

    // And one for run B's head 2 feature 0 beside its dashboard (`serve --compare` serves
    // it beside B's): the page keeps it with B, shown once B is opened from A.
    let b_file = attn_saes::dashboard::run_dashboard_path(&run_b);
    let b_meta = OwnedDashboardFile::new(std::fs::read(&b_file).unwrap())
        .unwrap()
        .meta;
    let mut b_labels = attn_saes::dashboard::labels::Labels::new(&b_meta);
    b_labels.set(2, 0, "run B's feature").unwrap();
    b_labels
        .write(&attn_saes::dashboard::labels::labels_path(&b_file))
        .unwrap();

    // And another beside the copy of B's dashboard, which Compare… picks with it.
    let mut picked = attn_saes::dashboard::labels::Labels::new(&b_meta);
    picked.set(2, 0, "picked with run B").unwrap();
    picked
        .write(&attn_saes::dashboard::labels::labels_path(&compare))
        .unwrap();

    let server = Server::start_with(&run, &[Path::new("--compare"), &run_b]);
    assert!(
        server
            .url
            .ends_with("&compare=compare/0/run.safetensors&live=compare/0/live.json"),
        "{}",
        server.url
    );
    let url = server.base.clone();

    let shots = dir.join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root().join("tests/web/browser.mjs"))
        .args([&url, file.to_str().unwrap(), corrupt.to_str().unwrap()])
        .arg(&shots)
        .arg(&compare)
        .arg(&server.url)
        .output()
        .unwrap();
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser steps failed: {text}");
    let result: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let step = |name: &str| result["steps"][name].as_str().unwrap_or("").to_string();

    // What the page shows is what the file holds.
    let d = OwnedDashboardFile::new(bytes).unwrap();
    let (h, m) = (d.meta.sae.n_heads, d.meta.sae.features_per_head);
    assert!(step("urlStatus").contains(&format!("{h} heads x {m} features")));
    assert!(step("fileStatus").contains(&format!("{h} heads x {m} features")));
    // Head 2 after two ArrowRight; ArrowDown moves to the next feature in density order.
    let head2 = d.head(2).unwrap();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| {
        let (da, db) = (head2.features[a].density, head2.features[b].density);
        db.total_cmp(&da).then(a.cmp(&b))
    });
    for (name, rank) in [("afterRight", 0), ("afterDown", 1)] {
        let f = order[rank];
        let want = format!(
            "view Features · head 2 · feature {f} · density {:.3e}",
            head2.features[f].density
        );
        assert_eq!(step(name), want, "{name}");
    }
    // ?feature=3,5 opens that feature, with its label; 3,9999 says the file has no such
    // feature.
    let head3 = d.head(3).unwrap();
    assert_eq!(
        step("linkedSelection"),
        format!(
            "view Features · head 3 · feature 5 · density {:.3e} · label \"reads the token \
             before\"",
            head3.features[5].density
        )
    );
    // A label given in the page, then Save labels: the download holds the served label and
    // the new one, for this SAE.
    assert_eq!(step("unsavedAfterLabel"), "true");
    assert_eq!(step("labelsDownloadName"), "dashboard.labels.json");
    assert_eq!(step("unsavedAfterSave"), "false");
    let saved = std::fs::read(shots.join("saved.labels.json")).unwrap();
    let saved = attn_saes::dashboard::labels::Labels::parse(&saved, &meta).unwrap();
    let listed: Vec<(usize, usize, &str)> = saved.iter().collect();
    assert_eq!(
        listed,
        [(3, 5, "reads the token before"), (3, 6, "the next one")]
    );
    assert!(
        step("linkedMissing").contains(&format!(
            "no head 3 feature 9999: the dashboard has {h} heads x {m} features"
        )),
        "{}",
        step("linkedMissing")
    );
    assert_eq!(result["consoleErrorsBeforeBadInput"], 0, "{result}");
    assert!(
        step("corruptStatus").starts_with("corrupt.safetensors: "),
        "{}",
        step("corruptStatus")
    );
    assert!(
        step("missingStatus").contains("404"),
        "{}",
        step("missingStatus")
    );
    assert_eq!(step("stillWorks"), "string");
    assert!(
        step("noSimdStatus").contains("no WebAssembly SIMD"),
        "{}",
        step("noSimdStatus")
    );
    assert_eq!(step("noSimdViewer"), "undefined");
    assert!(step("curvesSelection").starts_with("view Curves"));
    assert_eq!(step("backToFeatures"), step("afterDown"));
    // Compare…: the page draws run B's curves beside the open file's (A's), and its last
    // logged step is the one B's file records.
    assert!(
        step("compareStatus").starts_with("comparing with run-b.safetensors"),
        "{}",
        step("compareStatus")
    );
    assert!(step("compareSelection").starts_with("view Curves"));
    assert!(
        step("compareStatus").ends_with(", 1 feature labels"),
        "{}",
        step("compareStatus")
    );
    assert!(
        step("comparedOpened").ends_with(" · label \"picked with run B\""),
        "{}",
        step("comparedOpened")
    );
    let shown = &result["curvesShown"];
    let b = OwnedDashboardFile::new(std::fs::read(&compare).unwrap()).unwrap();
    for (row, file) in [(&shown["open"], &d), (&shown["compared"][0], &b)] {
        let last = file.meta.history.steps.last().unwrap();
        assert_eq!(row["last"]["step"], last.step, "{shown}");
        assert_eq!(row["last"]["l0"].as_f64().unwrap(), last.l0, "{shown}");
    }
    assert_eq!(shown["compared"][0]["name"], "run-b.safetensors");
    // ?compare=URL, from `serve --compare`: run B's file beside the run's.
    let by_url = &result["compareByUrl"];
    assert_eq!(by_url["compared"][0]["name"], "run.safetensors", "{by_url}");
    for (row, file) in [(&by_url["open"], &d), (&by_url["compared"][0], &b)] {
        let last = file.meta.history.steps.last().unwrap();
        assert_eq!(row["last"]["step"], last.step, "{by_url}");
        assert_eq!(row["last"]["l0"].as_f64().unwrap(), last.l0, "{by_url}");
    }
    assert_eq!(shown["compared"][0]["last"]["step"], 12);
    // The compared run opened at head 2 feature 0 (as a click on its closest features
    // does): run B open, the run compared instead.
    let opened = &result["openedCompared"];
    assert_eq!(opened["shown"]["open"]["last"]["step"], 12, "{opened}");
    assert_eq!(
        opened["shown"]["compared"][0]["name"], "dashboard.safetensors",
        "{opened}"
    );
    assert_eq!(
        opened["shown"]["compared"][0]["last"]["step"], 30,
        "{opened}"
    );
    // The run's label typed before is still unsaved (the run kept), so leaving would ask.
    assert_eq!(opened["unsaved"], true, "{opened}");
    // Save labels, with the compared run open: its labels, under its name.
    assert_eq!(step("comparedLabelsName"), "run.labels.json");
    let saved = std::fs::read(shots.join("compared.labels.json")).unwrap();
    let saved = attn_saes::dashboard::labels::Labels::parse(&saved, &b_meta).unwrap();
    assert_eq!(saved, b_labels);
    let said = opened["selection"].as_str().unwrap();
    assert!(
        said.contains("view Features · head 2 · feature 0 ·")
            && said.ends_with(" · label \"run B's feature\""),
        "{said}"
    );
    for png in [
        "web-features.png",
        "web-curves.png",
        "web-file.png",
        "web-compare.png",
    ] {
        let n = colours(&shots.join(png));
        assert!(n > 50, "{png} looks blank ({n} colours)");
    }
}
