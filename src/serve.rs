//! `attn-saes serve`: the built web viewer (`web/dist/`) and one dashboard file on a local
//! HTTP server, so a run can be viewed in a browser with one command. Only a fixed set of
//! names is served (no paths from the request reach the file system).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The viewer's files, as `scripts/build-web.sh` writes them.
pub const VIEWER_FILES: [&str; 3] = ["index.html", "attn_saes.js", "attn_saes_bg.wasm"];
/// The name the dashboard is served under.
pub const DASHBOARD_NAME: &str = "dashboard.safetensors";

/// What is served.
#[derive(Debug, Clone)]
pub struct Site {
    pub web_dir: PathBuf,
    pub dashboard: PathBuf,
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

/// The dashboard file of `path`: a run directory's, or the file itself.
pub fn dashboard_of(path: &Path) -> anyhow::Result<PathBuf> {
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

/// Binds `host:port` (port 0: any free port) and returns the listener with the viewer's
/// URL for the dashboard.
pub fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind((host, port)).with_context(|| {
        format!("cannot listen on {host}:{port} (in use? choose another with --port)")
    })?;
    let addr = listener.local_addr()?;
    Ok((listener, format!("http://{addr}/?url={DASHBOARD_NAME}")))
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

/// The file and content type for a request path, if it is one of the served names.
fn route(site: &Site, path: &str) -> Option<(PathBuf, &'static str)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let name = match path {
        "/" | "/index.html" => "index.html",
        "/attn_saes.js" => "attn_saes.js",
        "/attn_saes_bg.wasm" => "attn_saes_bg.wasm",
        p if p == format!("/{DASHBOARD_NAME}") => {
            return Some((site.dashboard.clone(), "application/octet-stream"));
        }
        _ => return None,
    };
    let kind = match name {
        "index.html" => "text/html; charset=utf-8",
        "attn_saes.js" => "text/javascript; charset=utf-8",
        _ => "application/wasm",
    };
    Some((site.web_dir.join(name), kind))
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
    let body = route(site, path).and_then(|(file, kind)| Some((std::fs::read(file).ok()?, kind)));
    match body {
        Some((bytes, kind)) => respond(&mut stream, "200 OK", kind, &bytes, method == "GET"),
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
        }
    }

    #[test]
    fn only_the_viewer_files_and_the_dashboard_are_routed() {
        let s = site();
        assert_eq!(
            route(&s, "/").unwrap().0,
            PathBuf::from("/srv/dist/index.html")
        );
        assert_eq!(
            route(&s, "/?url=dashboard.safetensors").unwrap().0,
            PathBuf::from("/srv/dist/index.html")
        );
        assert_eq!(
            route(&s, "/attn_saes_bg.wasm").unwrap().1,
            "application/wasm"
        );
        assert_eq!(route(&s, "/dashboard.safetensors").unwrap().0, s.dashboard);
        for bad in [
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
        let err = format!("{:#}", dashboard_of(&dir).unwrap_err());
        assert!(err.contains("attn-saes dashboard --run"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
