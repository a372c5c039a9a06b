//! `attn-saes serve`: the built web viewer (`web/dist/`) and one dashboard file on a local
//! HTTP server, so a run can be viewed in a browser with one command; with the model and
//! SAE the dashboard was built from (and `live.json`, their manifest with sha256 sums), so
//! the page's Your text runs them in the browser. Only a fixed set of names is served (no
//! paths from the request reach the file system).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::dashboard::format::{DashboardMeta, FileRecord};

/// The viewer's files, as `scripts/build-web.sh` writes them.
pub const VIEWER_FILES: [&str; 4] = [
    "index.html",
    "read-body.js",
    "attn_saes.js",
    "attn_saes_bg.wasm",
];
/// The name the dashboard is served under.
pub const DASHBOARD_NAME: &str = "dashboard.safetensors";

/// The inference bundle's files under the web directory (optional: without them the page
/// browses dashboards only).
pub const LIVE_FILES: [&str; 4] = [
    "live.js",
    "live-worker.js",
    "live/attn_saes_live.js",
    "live/attn_saes_live_bg.wasm",
];
/// The manifest's name.
pub const MANIFEST_NAME: &str = "live.json";
/// The served dashboard's labels, when it has them.
pub const LABELS_NAME: &str = "dashboard.labels.json";

/// What is served.
#[derive(Debug, Clone)]
pub struct Site {
    pub web_dir: PathBuf,
    pub dashboard: PathBuf,
    pub live: Option<LiveSite>,
    /// Other runs' dashboards, whose curves the page draws beside the dashboard's: URL
    /// path (`/compare/0/l1-1.safetensors`) -> file.
    pub compared: Vec<(String, PathBuf)>,
    /// The compared runs' models and SAEs for Your text, where they could be served: the
    /// manifest's URL path (`/compare/0/live.json`) and what it names (see
    /// [`compared_live_site`]).
    pub compared_live: Vec<(String, LiveSite)>,
}

/// The model and SAE files served for the page's live analysis (under `live/model/` and
/// `live/sae/`), and their manifest.
#[derive(Debug, Clone)]
pub struct LiveSite {
    /// URL path (`/live/model/model.gguf`) -> file.
    pub files: Vec<(String, PathBuf)>,
    pub manifest: String,
    /// Files whose sha256 differs from what the dashboard records.
    pub changed: Vec<String>,
}

/// One served file in the manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    pub name: String,
    /// Relative to the manifest.
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// `live.json`: what the page downloads for Your text, and how to run it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub model_name: String,
    pub model: Vec<ManifestFile>,
    pub sae: Vec<ManifestFile>,
    pub layer: usize,
    /// `TransformerLens` or `Raw`.
    pub z_convention: String,
    /// Whether the SAE reads BOS positions (the dashboard counted them); absent in
    /// manifests written before: the SAE's own record then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_bos: Option<bool>,
}

/// The model and SAE the dashboard with header `meta` was built from (the SAE of the run at
/// `path` when it is a run directory), as files to serve with their manifest. The model
/// must be local and in a form the browser reads ([`crate::dashboard::browser_files`]).
/// Files that differ from what the dashboard records are listed in `LiveSite::changed`
/// (the page refuses them).
pub fn live_site(path: &Path, meta: &DashboardMeta) -> anyhow::Result<LiveSite> {
    live_site_under(path, meta, "", &[])
}

/// A TransformerLens checkpoint's `.pth` (whose sha256 is `sha`) as the browser reads it:
/// its weights in `model.safetensors` (converted once, into the cache under that sum).
fn browser_safetensors(pth: &Path, sha: &str) -> anyhow::Result<PathBuf> {
    let out = crate::assets::cache_dir()
        .join("browser")
        .join(&sha[..16])
        .join("model.safetensors");
    if !out.is_file() {
        std::fs::create_dir_all(out.parent().unwrap())?;
        eprintln!(
            "converting {} for the browser: {}",
            pth.display(),
            out.display()
        );
        crate::lm::pth_as_safetensors(pth, &out)
            .with_context(|| format!("converting {} to safetensors", pth.display()))?;
    }
    Ok(out)
}

/// The manifest's URL path for the `i`-th compared dashboard's model and SAE.
pub fn compared_manifest_url(i: usize) -> String {
    format!("/compare/{i}/{MANIFEST_NAME}")
}

/// [`live_site`] for the `i`-th compared run (`path`, its dashboard's header `meta`), served
/// under `/compare/{i}/` with its manifest at [`compared_manifest_url`]; a file the site
/// serves already (`served`: URL path -> file; the open run's model, mostly) is not served
/// again: the manifest names it where it is.
pub fn compared_live_site(
    i: usize,
    path: &Path,
    meta: &DashboardMeta,
    served: &[(String, PathBuf)],
) -> anyhow::Result<LiveSite> {
    live_site_under(path, meta, &format!("compare/{i}/"), served)
}

/// [`live_site`] with its files under `prefix` (a directory of URL paths, "" or ending in
/// `/`, where the manifest is too), but for the files in `served`.
fn live_site_under(
    path: &Path,
    meta: &DashboardMeta,
    prefix: &str,
    served: &[(String, PathBuf)],
) -> anyhow::Result<LiveSite> {
    let sae_dir = if path.is_dir() {
        crate::train::checkpoint::run_sae(path, None)?.1
    } else {
        meta.sae_dir(path)
    };
    let model = crate::lm::hub::resolve(&meta.model.name)?;
    let (model_files, sae_files) = crate::dashboard::browser_files(&model, &sae_dir)?;
    let recorded = meta.built_from.clone().unwrap_or_default();
    // Files that differ from what the dashboard records.
    let mut changed = Vec::new();
    let mut check = |paths: &[PathBuf], records: &[FileRecord], recorded: &[FileRecord]| {
        for (p, r) in paths.iter().zip(records) {
            if (recorded.iter()).any(|x| x.name == r.name && x.sha256 != r.sha256) {
                changed.push(p.display().to_string());
            }
        }
    };
    let mut model_files = model_files;
    let mut model_records = crate::dashboard::file_records(&model_files)?;
    let sae_records = crate::dashboard::file_records(&sae_files)?;
    check(&model_files, &model_records, &recorded.model);
    check(&sae_files, &sae_records, &recorded.sae);
    // A TransformerLens `.pth`, which the browser cannot read, goes as safetensors: checked
    // against the record as it is (above), then served converted.
    if let Some(i) = (model_files.iter()).position(|p| p.extension().is_some_and(|e| e == "pth")) {
        model_files[i] = browser_safetensors(&model_files[i], &model_records[i].sha256)?;
        model_records[i] = crate::dashboard::file_records(&model_files[i..=i])?.remove(0);
    }
    let mut files = Vec::new();
    let mut listed = |group: &str, paths: &[PathBuf], records: Vec<FileRecord>| {
        paths
            .iter()
            .zip(records)
            .map(|(p, r)| {
                // Relative to the manifest, which is at `/{prefix}live.json`.
                let url = match served.iter().find(|(_, file)| file == p) {
                    Some((at, _)) => {
                        let up = "../".repeat(prefix.matches('/').count());
                        format!("{up}{}", at.trim_start_matches('/'))
                    }
                    None => {
                        let url = format!("live/{group}/{}", r.name);
                        files.push((format!("/{prefix}{url}"), p.clone()));
                        url
                    }
                };
                ManifestFile {
                    name: r.name,
                    url,
                    sha256: r.sha256,
                    size: r.size,
                }
            })
            .collect::<Vec<_>>()
    };
    let manifest = Manifest {
        model_name: meta.model.name.clone(),
        model: listed("model", &model_files, model_records),
        sae: listed("sae", &sae_files, sae_records),
        layer: meta.hook_layer,
        z_convention: meta.z_convention.clone(),
        keep_bos: Some(meta.settings.keep_bos),
    };
    Ok(LiveSite {
        files,
        manifest: serde_json::to_string_pretty(&manifest)?,
        changed,
    })
}

/// The web viewer's directory: `explicit`, else `$ATTN_SAES_WEB_DIR`, else `web/dist` under
/// the current directory, else under this checkout. Errors (saying how to build it) when
/// none holds the viewer's files.
pub fn find_web_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::var_os("ATTN_SAES_WEB_DIR")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from("web/dist"),
                Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist"),
            ])
            .collect(),
    };
    candidates
        .iter()
        .find(|dir| VIEWER_FILES.iter().all(|f| dir.join(f).is_file()))
        .cloned()
        .with_context(|| {
            format!(
                "the web viewer is not built (looked in {}): run scripts/build-web.sh (it adds \
                 the wasm32 target and wasm-bindgen-cli if missing), or pass --web-dir",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The dashboard file of `path`: a run directory's, or the file itself; an error when
/// there is none (its contents are not read).
pub fn dashboard_file_of(path: &Path) -> anyhow::Result<PathBuf> {
    let file = if path.is_dir() {
        crate::dashboard::run_dashboard_path(path)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        bail!(
            "{} does not exist (build it with `attn-saes dashboard --run RUN_DIR`)",
            file.display()
        );
    }
    Ok(file)
}

/// The dashboard file of `path` (as [`dashboard_file_of`]), read and checked: a file the
/// page could not open is refused here, saying why.
pub fn read_dashboard_of(
    path: &Path,
) -> anyhow::Result<(PathBuf, crate::dashboard::format::OwnedDashboardFile)> {
    let file = dashboard_file_of(path)?;
    let dashboard = crate::dashboard::format::OwnedDashboardFile::read(&file)?;
    Ok((file, dashboard))
}

/// The dashboards of `paths` (run directories or dashboard files) to serve for the page to
/// compare with: each under `/compare/{i}/{name}.safetensors`, `name` being the run
/// directory's name or the file's stem (characters other than letters, digits, `.`, `_`
/// and `-` become `_`), which the page shows, with their headers (read and checked once).
pub fn compared_files(
    paths: &[PathBuf],
) -> anyhow::Result<Vec<((String, PathBuf), DashboardMeta)>> {
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (file, dashboard) = read_dashboard_of(path)?;
            let named = if path.is_dir() {
                path.file_name()
            } else {
                path.file_stem()
            };
            let name: String = named
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .map(|c| match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
                    _ => '_',
                })
                .collect();
            let name = if name.is_empty() { "run".into() } else { name };
            let url = format!("/compare/{i}/{name}.safetensors");
            Ok(((url, file), dashboard.meta))
        })
        .collect()
}

/// Where the page asks for the labels of the compared dashboard served at `url`
/// (`/compare/0/l1-1.labels.json` for `/compare/0/l1-1.safetensors`).
pub fn compared_labels_url(url: &str) -> String {
    let stem = url.strip_suffix(".safetensors").unwrap_or(url);
    format!("{stem}.labels.json")
}

/// `url` with a `&compare=` parameter for each compared dashboard.
pub fn compare_url(url: &str, compared: &[(String, PathBuf)]) -> String {
    compared.iter().fold(url.to_string(), |url, (path, _)| {
        format!("{url}&compare={}", path.trim_start_matches('/'))
    })
}

/// Binds `host:port` (port 0: any free port) and returns the listener with the viewer's
/// URL for the dashboard.
pub fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind((host, port)).with_context(|| {
        format!("cannot listen on {host}:{port} (in use? choose another with --port)")
    })?;
    let addr = listener.local_addr()?;
    Ok((listener, format!("http://{addr}/?url={DASHBOARD_NAME}")))
}

/// The viewer's URL with the live analysis's manifest.
pub fn live_url(url: &str) -> String {
    format!("{url}&live={MANIFEST_NAME}")
}

/// What `serve --write-to DIR` writes the viewer's page as: `index.html` there is a page
/// that opens it on the site's dashboard (see [`write_static`]).
pub const STATIC_VIEWER: &str = "viewer.html";
/// The first line of a static site's `index.html`: marks a directory `write_static` may
/// replace.
const STATIC_MARK: &str = "<!doctype html><!-- attn-saes serve --write-to -->";

/// The query that opens `site` in the viewer: its dashboard, the live manifest when it
/// has one, the compared dashboards, and their live manifests (further `live=` parameters:
/// the page loads the one for the dashboard open).
pub fn site_query(site: &Site) -> String {
    let url = format!("url={DASHBOARD_NAME}");
    let url = match &site.live {
        Some(_) => live_url(&url),
        None => url,
    };
    let url = compare_url(&url, &site.compared);
    site.compared_live.iter().fold(url, |url, (manifest, _)| {
        format!("{url}&live={}", manifest.trim_start_matches('/'))
    })
}

/// One file of a static site: where it goes and what it holds.
pub enum StaticFile {
    Copy(PathBuf),
    /// A dashboard file: copied, or rewritten by [`published`].
    Dashboard(PathBuf),
    Bytes(Vec<u8>),
}

/// What `serve` serves for `site`, as files under their URL paths (without the leading
/// `/`), for [`write_static`]: the viewer's page as [`STATIC_VIEWER`] and an `index.html`
/// that opens it with [`site_query`] (and whatever the visitor's address adds, such as
/// `?feature=H,F`); the dashboard's labels when they are the dashboard's, else an empty
/// set (so no request fails), and each compared dashboard's beside it likewise. `labels`
/// is that labels file's JSON, `compared_labels` the compared dashboards' in their order.
pub fn static_files(
    site: &Site,
    labels: String,
    compared_labels: Vec<String>,
) -> Vec<(String, StaticFile)> {
    let query = site_query(site);
    let index = format!(
        "{STATIC_MARK}\n<meta charset=\"utf-8\"><title>attn-saes</title>\n<script>\n\
         const p = new URLSearchParams('{query}');\n\
         for (const [k, v] of new URLSearchParams(location.search)) {{\n\
         \x20 if (k === 'compare') p.append(k, v); else p.set(k, v);\n}}\n\
         location.replace('{STATIC_VIEWER}?' + p.toString());\n</script>\n\
         <a href=\"{STATIC_VIEWER}?{query}\">Open the viewer</a>\n"
    );
    let mut files = vec![
        (
            "index.html".to_string(),
            StaticFile::Bytes(index.into_bytes()),
        ),
        (
            STATIC_VIEWER.to_string(),
            StaticFile::Copy(site.web_dir.join("index.html")),
        ),
    ];
    let web = VIEWER_FILES[1..]
        .iter()
        .chain(LIVE_FILES.iter().filter(|_| site.live.is_some()));
    files.extend(web.map(|n| (n.to_string(), StaticFile::Copy(site.web_dir.join(n)))));
    files.push((
        DASHBOARD_NAME.into(),
        StaticFile::Dashboard(site.dashboard.clone()),
    ));
    files.push((LABELS_NAME.into(), StaticFile::Bytes(labels.into_bytes())));
    let at = |url: &str| url.trim_start_matches('/').to_string();
    if let Some(live) = &site.live {
        files.push((
            MANIFEST_NAME.into(),
            StaticFile::Bytes(live.manifest.clone().into_bytes()),
        ));
    }
    for ((url, file), labels) in site.compared.iter().zip(compared_labels) {
        files.push((at(url), StaticFile::Dashboard(file.clone())));
        let labels = StaticFile::Bytes(labels.into_bytes());
        files.push((at(&compared_labels_url(url)), labels));
    }
    for (url, live) in &site.compared_live {
        let manifest = StaticFile::Bytes(live.manifest.clone().into_bytes());
        files.push((at(url), manifest));
    }
    let compared_live = site.compared_live.iter().map(|(_, live)| live);
    let live = site
        .live
        .iter()
        .chain(compared_live)
        .flat_map(|live| &live.files);
    files.extend(live.map(|(url, file)| (at(url), StaticFile::Copy(file.clone()))));
    files
}

/// `files` ([`static_files`]) as a page on the web should hold them: the dashboards (the
/// site's and the compared ones) and the manifests without the local directories their
/// metadata names (the model's and SAE's paths, the run's config:
/// [`crate::dashboard::format::DashboardMeta::published`]); everything else as it is.
pub fn published(files: Vec<(String, StaticFile)>) -> anyhow::Result<Vec<(String, StaticFile)>> {
    use crate::dashboard::format::{Dashboard, published_name};
    files
        .into_iter()
        .map(|(path, file)| {
            let file = match file {
                StaticFile::Dashboard(from) => {
                    let bytes = std::fs::read(&from)
                        .with_context(|| format!("reading {}", from.display()))?;
                    let mut d = Dashboard::from_bytes(&bytes)
                        .with_context(|| format!("reading {}", from.display()))?;
                    d.meta = d.meta.published();
                    StaticFile::Bytes(d.to_bytes()?)
                }
                // The site's manifest and the compared runs' (`compare/{i}/live.json`).
                StaticFile::Bytes(bytes) if path.rsplit('/').next() == Some(MANIFEST_NAME) => {
                    let mut manifest: Manifest = serde_json::from_slice(&bytes)?;
                    manifest.model_name = published_name(&manifest.model_name);
                    StaticFile::Bytes(serde_json::to_string_pretty(&manifest)?.into_bytes())
                }
                file => file,
            };
            Ok((path, file))
        })
        .collect()
}

/// Writes `files` ([`static_files`]) into the directory `dir` for any static web server,
/// returning each file's path and size. They are written into a sibling directory first
/// and moved into place at the end, so a failure leaves `dir` as it was; an existing `dir`
/// is replaced only when it is empty or an earlier static site (its `index.html` is one
/// this wrote), never otherwise.
pub fn write_static(
    files: &[(String, StaticFile)],
    dir: &Path,
) -> anyhow::Result<Vec<(String, u64)>> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        let ours = std::fs::read_to_string(dir.join("index.html"))
            .is_ok_and(|t| t.starts_with(STATIC_MARK));
        if !empty && !ours {
            bail!(
                "{} exists and is not a site written by `serve --write-to`: choose another \
                 directory (nothing was written)",
                dir.display()
            );
        }
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let partial = dir.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    let written = copy_into(files, &partial);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    let written = written?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&partial, dir)
        .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))?;
    Ok(written)
}

fn copy_into(files: &[(String, StaticFile)], partial: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut written = Vec::new();
    for (path, file) in files {
        let to = partial.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let size = match file {
            StaticFile::Copy(from) | StaticFile::Dashboard(from) => std::fs::copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?,
            StaticFile::Bytes(bytes) => {
                std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
                bytes.len() as u64
            }
        };
        written.push((path.clone(), size));
    }
    Ok(written)
}

/// Serves `site` on `listener` until the process ends, one thread per connection.
pub fn serve(listener: TcpListener, site: Site) -> anyhow::Result<()> {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &site);
        });
    }
    Ok(())
}

/// What a request gets: a file or bytes held in memory (the manifest).
#[derive(Debug, PartialEq)]
enum Body {
    File(PathBuf),
    Bytes(Vec<u8>),
    /// A file that may be absent: then 204 No Content (which a browser's console does not
    /// report as an error, as it does a 404).
    Optional(PathBuf),
}

const OCTETS: &str = "application/octet-stream";

/// The body and content type for a request path, if it is one of the served names.
fn route(site: &Site, path: &str) -> Option<(Body, &'static str)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path == format!("/{DASHBOARD_NAME}") {
        return Some((Body::File(site.dashboard.clone()), OCTETS));
    }
    // The dashboard's labels (`attn-saes label`), when it has them.
    if path == format!("/{LABELS_NAME}") {
        let file = crate::dashboard::labels::labels_path(&site.dashboard);
        return Some((Body::Optional(file), "application/json"));
    }
    if let Some((_, file)) = site.compared.iter().find(|(url, _)| url == path) {
        return Some((Body::File(file.clone()), OCTETS));
    }
    // A compared dashboard's labels, beside it as the page asks for them.
    let compared_labels = |(url, _): &&(String, PathBuf)| compared_labels_url(url) == path;
    if let Some((_, file)) = site.compared.iter().find(compared_labels) {
        let file = crate::dashboard::labels::labels_path(file);
        return Some((Body::Optional(file), "application/json"));
    }
    // The models and SAEs for Your text: the dashboard's, and the compared ones'.
    let main = site
        .live
        .iter()
        .map(|live| (format!("/{MANIFEST_NAME}"), live));
    let compared = site
        .compared_live
        .iter()
        .map(|(url, live)| (url.clone(), live));
    for (manifest, live) in main.chain(compared) {
        if path == manifest {
            let json = "application/json";
            return Some((Body::Bytes(live.manifest.clone().into_bytes()), json));
        }
        if let Some((_, file)) = live.files.iter().find(|(url, _)| url == path) {
            return Some((Body::File(file.clone()), OCTETS));
        }
    }
    let name = match path {
        "/" | "/index.html" => "index.html",
        p => VIEWER_FILES
            .iter()
            .chain(&LIVE_FILES)
            .find(|n| p.strip_prefix('/') == Some(**n))?,
    };
    let kind = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/wasm",
    };
    Some((Body::File(site.web_dir.join(name)), kind))
}

fn handle(mut stream: TcpStream, site: &Site) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            true,
        );
    }
    let body = route(site, path).and_then(|(body, kind)| match body {
        Body::File(file) => Some(("200 OK", std::fs::read(file).ok()?, kind)),
        Body::Bytes(bytes) => Some(("200 OK", bytes, kind)),
        Body::Optional(file) => Some(match std::fs::read(file) {
            Ok(bytes) => ("200 OK", bytes, kind),
            Err(_) => ("204 No Content", Vec::new(), kind),
        }),
    });
    match body {
        Some((status, bytes, kind)) => respond(&mut stream, status, kind, &bytes, method == "GET"),
        None => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            true,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            web_dir: PathBuf::from("/srv/dist"),
            dashboard: PathBuf::from("/runs/x/dashboard.safetensors"),
            live: Some(LiveSite {
                files: vec![("/live/model/m.gguf".into(), PathBuf::from("/models/m.gguf"))],
                manifest: "{}".into(),
                changed: vec![],
            }),
            compared: vec![(
                "/compare/0/l1-1.safetensors".into(),
                PathBuf::from("/runs/l1-1/dashboard.safetensors"),
            )],
            compared_live: vec![(
                compared_manifest_url(0),
                LiveSite {
                    files: vec![(
                        "/compare/0/live/sae/sae.safetensors".into(),
                        PathBuf::from("/runs/l1-1/sae/sae.safetensors"),
                    )],
                    manifest: "{\"compared\":0}".into(),
                    changed: vec![],
                },
            )],
        }
    }

    fn file(path: &str) -> Body {
        Body::File(PathBuf::from(path))
    }

    /// A static site holds what `serve` serves, at the same paths: every file but the
    /// two pages and the labels is what the route gives for its path; the labels are at the
    /// paths where `serve` serves the labels files beside the dashboards.
    #[test]
    fn a_static_site_holds_the_served_files_at_their_paths() {
        let s = site();
        let files = static_files(&s, "{\"labels\":1}".into(), vec!["{\"labels\":2}".into()]);
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "index.html",
                "viewer.html",
                "read-body.js",
                "attn_saes.js",
                "attn_saes_bg.wasm",
                "live.js",
                "live-worker.js",
                "live/attn_saes_live.js",
                "live/attn_saes_live_bg.wasm",
                "dashboard.safetensors",
                "dashboard.labels.json",
                "live.json",
                "compare/0/l1-1.safetensors",
                "compare/0/l1-1.labels.json",
                "compare/0/live.json",
                "live/model/m.gguf",
                "compare/0/live/sae/sae.safetensors",
            ]
        );
        for (path, content) in &files {
            let served = route(&s, &format!("/{path}")).map(|r| r.0);
            match (path.as_str(), content) {
                ("index.html", StaticFile::Bytes(page)) => {
                    let page = String::from_utf8(page.clone()).unwrap();
                    assert!(page.starts_with(STATIC_MARK));
                    let query = "url=dashboard.safetensors&live=live.json\
                                 &compare=compare/0/l1-1.safetensors&live=compare/0/live.json";
                    assert!(page.contains(&format!("'{query}'")), "{page}");
                    assert!(page.contains(&format!("\"viewer.html?{query}\"")), "{page}");
                }
                ("viewer.html", StaticFile::Copy(from)) => {
                    assert_eq!(served, None);
                    assert_eq!(
                        route(&s, "/index.html").unwrap().0,
                        Body::File(from.clone())
                    );
                }
                ("dashboard.labels.json", StaticFile::Bytes(b)) => {
                    assert_eq!(b, b"{\"labels\":1}");
                    let beside = PathBuf::from("/runs/x/dashboard.labels.json");
                    assert_eq!(served, Some(Body::Optional(beside)));
                }
                ("compare/0/l1-1.labels.json", StaticFile::Bytes(b)) => {
                    assert_eq!(b, b"{\"labels\":2}");
                    let beside = PathBuf::from("/runs/l1-1/dashboard.labels.json");
                    assert_eq!(served, Some(Body::Optional(beside)));
                }
                (
                    "dashboard.safetensors" | "compare/0/l1-1.safetensors",
                    StaticFile::Dashboard(from),
                ) => {
                    assert_eq!(served, Some(Body::File(from.clone())), "{path}")
                }
                (_, StaticFile::Copy(from)) => {
                    assert_eq!(served, Some(Body::File(from.clone())), "{path}")
                }
                (_, StaticFile::Bytes(b)) => {
                    assert_eq!(served, Some(Body::Bytes(b.clone())), "{path}")
                }
                (_, StaticFile::Dashboard(_)) => panic!("{path} is not a dashboard"),
            }
        }
        // The dashboards are marked as such (`published` rewrites them).
        let dashboards = files
            .iter()
            .filter(|(_, f)| matches!(f, StaticFile::Dashboard(_)));
        assert_eq!(dashboards.count(), 2);
        // Without live: neither the inference bundle nor the manifest.
        let s = Site {
            live: None,
            compared_live: vec![],
            ..site()
        };
        let files = static_files(&s, String::new(), vec![String::new()]);
        assert!(
            !files
                .iter()
                .any(|(p, _)| p.starts_with("live") || p.ends_with("live-worker.js"))
        );
        assert!(
            site_query(&s)
                .ends_with("url=dashboard.safetensors&compare=compare/0/l1-1.safetensors")
        );
    }

    /// `write_static` writes the files, replaces an earlier site (its stale files gone),
    /// and refuses a directory of other files or a missing source, leaving it as it was.
    #[test]
    fn write_static_replaces_only_its_own_sites_and_leaves_nothing_on_failure() {
        let root = std::env::temp_dir().join(format!("attn-saes-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let source = root.join("source.bin");
        std::fs::write(&source, b"weights").unwrap();
        let index = || {
            (
                "index.html".to_string(),
                StaticFile::Bytes(format!("{STATIC_MARK}\n").into_bytes()),
            )
        };
        let dir = root.join("site");
        let first = [
            index(),
            ("a/b.bin".into(), StaticFile::Copy(source.clone())),
            ("stale.txt".into(), StaticFile::Bytes(b"old".to_vec())),
        ];
        let written = write_static(&first, &dir).unwrap();
        assert_eq!(written[1], ("a/b.bin".to_string(), 7));
        assert_eq!(std::fs::read(dir.join("a/b.bin")).unwrap(), b"weights");
        // Again, without stale.txt: an earlier site is replaced whole.
        write_static(&first[..2], &dir).unwrap();
        assert!(!dir.join("stale.txt").exists());
        assert!(dir.join("a/b.bin").is_file());
        // A missing source: an error, the earlier site untouched, no partial directory.
        let missing = [
            index(),
            ("x.bin".into(), StaticFile::Copy(root.join("nope"))),
        ];
        assert!(write_static(&missing, &dir).is_err());
        assert!(dir.join("a/b.bin").is_file() && !dir.join("x.bin").exists());
        assert!(!root.join(".site.partial").exists());
        // A directory of other files is refused, untouched.
        let other = root.join("docs");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("index.html"), "<p>mine</p>").unwrap();
        let e = write_static(&first, &other).unwrap_err().to_string();
        assert!(e.contains("is not a site written by"), "{e}");
        assert_eq!(
            std::fs::read_to_string(other.join("index.html")).unwrap(),
            "<p>mine</p>"
        );
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
        // An empty directory is taken.
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        write_static(&first, &empty).unwrap();
        assert!(empty.join("stale.txt").is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn only_the_viewer_files_and_the_dashboard_are_routed() {
        let s = site();
        assert_eq!(route(&s, "/").unwrap().0, file("/srv/dist/index.html"));
        assert_eq!(
            route(&s, "/?url=dashboard.safetensors").unwrap().0,
            file("/srv/dist/index.html")
        );
        assert_eq!(
            route(&s, "/attn_saes_bg.wasm").unwrap().1,
            "application/wasm"
        );
        assert_eq!(
            route(&s, "/live/attn_saes_live.js").unwrap(),
            (
                file("/srv/dist/live/attn_saes_live.js"),
                "text/javascript; charset=utf-8"
            )
        );
        assert_eq!(
            route(&s, "/dashboard.safetensors").unwrap().0,
            Body::File(s.dashboard.clone())
        );
        assert_eq!(
            route(&s, "/dashboard.labels.json").unwrap().0,
            Body::Optional(PathBuf::from("/runs/x/dashboard.labels.json"))
        );
        assert_eq!(
            route(&s, "/live.json").unwrap().0,
            Body::Bytes(b"{}".to_vec())
        );
        assert_eq!(
            route(&s, "/live/model/m.gguf").unwrap().0,
            file("/models/m.gguf")
        );
        assert_eq!(
            route(&s, "/compare/0/l1-1.safetensors").unwrap(),
            (
                file("/runs/l1-1/dashboard.safetensors"),
                "application/octet-stream"
            )
        );
        assert_eq!(
            compare_url("http://h/?url=dashboard.safetensors", &s.compared),
            "http://h/?url=dashboard.safetensors&compare=compare/0/l1-1.safetensors"
        );
        for bad in [
            "/compare/1/l1-1.safetensors",
            "/compare/0/../l1-1.safetensors",
            "/compare/0/",
            "/compare/",
            "/live/model/../m.gguf",
            "/live/model/other.gguf",
            "/live/sae/m.gguf",
            "/live/",
            "/live",
            "/../Cargo.toml",
            "/%2e%2e/etc/passwd",
            "/etc/passwd",
            "//attn_saes.js",
            "/web/dist/index.html",
            "/dashboard.safetensors/..",
            "",
        ] {
            assert!(route(&s, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_missing_viewer_says_how_to_build_it_and_a_missing_dashboard_how_to_make_it() {
        let dir = std::env::temp_dir().join(format!("attn-saes-noweb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = format!("{:#}", find_web_dir(Some(&dir)).unwrap_err());
        assert!(err.contains("run scripts/build-web.sh"), "{err}");
        let err = format!("{:#}", dashboard_file_of(&dir).unwrap_err());
        assert!(err.contains("attn-saes dashboard --run"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
