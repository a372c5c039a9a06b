//! The web viewer in a real browser: builds it (scripts/build-web.sh), serves a tiny run's
//! dashboard with `attn-saes serve`, and drives headless Chromium with playwright-core
//! (tests/web/browser.mjs): open by `?url=` and by the file input, move to a head and a
//! feature by keyboard, to Curves and back by clicks, read the selection the page exposes,
//! screenshot; a truncated file and a missing URL show errors in the page.
//!
//! Needs Debian's `chromium` and `npm ci` in tests/web. Without them the test says so and
//! passes, unless ATTN_SAES_REQUIRE_BROWSER=1 (as in CI), where it fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium} (apt install chromium)"));
    }
    if !root()
        .join("tests/web/node_modules/playwright-core")
        .is_dir()
    {
        return Some("no playwright-core (cd tests/web && npm ci)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    None
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Distinct colours of a PNG (a blank page has a handful).
fn colours(png: &Path) -> usize {
    let out = Command::new("convert")
        .arg(png)
        .args(["-format", "%k", "info:"])
        .output()
        .expect("ImageMagick's convert (apt install imagemagick)");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn web_viewer_opens_navigates_and_reports_errors_in_headless_chromium() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var_os("ATTN_SAES_REQUIRE_BROWSER").is_none(),
            "ATTN_SAES_REQUIRE_BROWSER is set but {why}"
        );
        eprintln!("skipping the browser test: {why}");
        return;
    }
    let build = Command::new(root().join("scripts/build-web.sh"))
        .status()
        .expect("running scripts/build-web.sh");
    assert!(build.success(), "scripts/build-web.sh failed");
    let wasm = std::fs::metadata(root().join("web/dist/attn_saes_bg.wasm")).unwrap();
    eprintln!("viewer wasm: {} bytes", wasm.len());

    let dir = TempDir::new("attn-saes-web", "viewer");
    let run = run_with_dashboard(&dir, 30);
    let file = attn_saes::dashboard::run_dashboard_path(&run);
    let bytes = std::fs::read(&file).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
        .args(["serve", run.to_str().unwrap(), "--port", "0", "--web-dir"])
        .arg(root().join("web/dist"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let at = l.find("http://")?;
            let end = l[at..].find("/?")? + at;
            Some(l[at..end].to_string())
        })
        .expect("serve prints the URL");

    let shots = dir.join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root().join("tests/web/browser.mjs"))
        .args([&url, file.to_str().unwrap(), corrupt.to_str().unwrap()])
        .arg(&shots)
        .output()
        .unwrap();
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser steps failed: {text}");
    let result: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let step = |name: &str| result["steps"][name].as_str().unwrap_or("").to_string();

    // What the page shows is what the file holds.
    let d = attn_saes::dashboard::format::OwnedDashboardFile::new(bytes).unwrap();
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
    assert!(step("curvesSelection").starts_with("view Curves"));
    assert_eq!(step("backToFeatures"), step("afterDown"));
    for png in ["web-features.png", "web-curves.png", "web-file.png"] {
        let n = colours(&shots.join(png));
        assert!(n > 50, "{png} looks blank ({n} colours)");
    }
}
