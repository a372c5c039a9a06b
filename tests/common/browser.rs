//! Helpers for the browser tests (tests/web_viewer.rs, tests/web_live.rs): the tools they
//! need, the web build, `attn-saes serve` as a child process, blank-screenshot checks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why the browser tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
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

/// Whether the browser test can run; when it cannot, says why and returns false, unless
/// ATTN_SAES_REQUIRE_BROWSER is set (as in CI), where it panics.
pub fn browser_available() -> bool {
    let Some(why) = missing_tools() else {
        return true;
    };
    assert!(
        std::env::var_os("ATTN_SAES_REQUIRE_BROWSER").is_none(),
        "ATTN_SAES_REQUIRE_BROWSER is set but {why}"
    );
    eprintln!("skipping the browser test: {why}");
    false
}

/// Builds the web viewer and the inference bundle (scripts/build-web.sh), once per test
/// binary: its tests run in parallel, and two builds at once write over each other.
pub fn build_web() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let build = Command::new(root().join("scripts/build-web.sh"))
            .status()
            .expect("running scripts/build-web.sh");
        assert!(build.success(), "scripts/build-web.sh failed");
    });
}

/// `attn-saes serve` on a free port, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The URL it says to open.
    pub url: String,
}

impl Server {
    pub fn start(path: &Path) -> Self {
        Self::start_with(path, &[])
    }

    /// With more `serve` arguments (`--compare OTHER`).
    pub fn start_with(path: &Path, args: &[&Path]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["serve", path.to_str().unwrap(), "--port", "0", "--web-dir"])
            .arg(root().join("web/dist"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let url = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .inspect(|l| eprintln!("serve: {l}"))
            .find_map(|l| {
                Some(
                    l[l.find("http://")?..]
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            })
            .expect("serve prints the URL");
        let base = url[..url.find("/?").expect("a URL with a query")].to_string();
        Self { child, base, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Distinct colours of a PNG (a blank page has a handful).
pub fn colours(png: &Path) -> usize {
    let out = Command::new("convert")
        .arg(png)
        .args(["-format", "%k", "info:"])
        .output()
        .expect("ImageMagick's convert (apt install imagemagick)");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A plain static file server over `dir` on a free port (as GitHub Pages or
/// `python3 -m http.server` would be: the file at the request's path, a content type by
/// extension, 404 otherwise), for a site `serve --write-to` wrote. Runs until the test
/// process ends. Returns `http://127.0.0.1:PORT`.
pub fn static_server(dir: &Path) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split(['?', '#']).next().unwrap_or("/");
                let path = if path.ends_with('/') {
                    format!("{path}index.html")
                } else {
                    path.to_string()
                };
                let file = dir.join(path.trim_start_matches('/'));
                let found = (!path.contains(".."))
                    .then(|| std::fs::read(&file).ok())
                    .flatten();
                let kind = match file.extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html",
                    Some("js") => "text/javascript",
                    Some("wasm") => "application/wasm",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                let (status, body) = match found {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            });
        }
    });
    base
}
