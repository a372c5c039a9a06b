//! LM weights: resolves a model reference (local path, Hugging Face cache, or hub download).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::weights::{HF_WEIGHTS_INDEX, LoadError};

pub use super::expand_alias;

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Where the Hugging Face cache lives (`$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn hf_cache() -> hf_hub::Cache {
    hf_hub::Cache::from_env()
}

fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".pth") || name.ends_with(".gguf")
}

/// Which files a model directory on the hub needs, given its `config.json` text and
/// the repository's file list.
fn needed_files(config: Option<&serde_json::Value>, siblings: &[String]) -> Vec<String> {
    let mut files = vec!["config.json".to_string()];
    let tl_format = config.is_some_and(|c| c.get("n_layers").is_some());
    if tl_format {
        // TransformerLens checkpoints: the final `.pth` only.
        if let Some(f) = siblings.iter().find(|f| f.ends_with("final.pth")) {
            files.push(f.clone());
        } else if let Some(f) = siblings.iter().find(|f| f.ends_with(".pth")) {
            files.push(f.clone());
        }
    } else if siblings.iter().any(|f| f == "model.safetensors") {
        files.push("model.safetensors".into());
    } else if siblings.iter().any(|f| f == HF_WEIGHTS_INDEX) {
        // A sharded checkpoint: the index and its shards (`model-00001-of-00002.safetensors`).
        files.push(HF_WEIGHTS_INDEX.into());
        files.extend(
            (siblings.iter())
                .filter(|f| {
                    !f.contains('/') && f.starts_with("model-") && f.ends_with(".safetensors")
                })
                .cloned(),
        );
    }
    for extra in ["tokenizer.json", "tokenizer_config.json"] {
        if siblings.iter().any(|f| f == extra) {
            files.push(extra.into());
        }
    }
    files
}

fn not_found(repo: &str, why: &str) -> LoadError {
    let cache = hf_cache().path().display().to_string();
    LoadError::NotFound {
        reference: repo.to_string(),
        hint: format!(
            "{why}. Download it on a machine with internet access, e.g. \
             `huggingface-cli download {repo} config.json model.safetensors tokenizer.json` \
             (TransformerLens models: the `*final.pth` file instead of model.safetensors), \
             and copy the cache to {cache} or pass the directory with the files as --model DIR."
        ),
    }
}

/// Resolves `reference` to a local file or directory holding the model:
/// an existing path, then the Hugging Face cache, then (when online) a hub download with a
/// progress bar.
pub fn resolve(reference: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(reference);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let repo = expand_alias(reference);
    if !repo.contains('/') || path.is_absolute() || reference.starts_with('.') {
        return Err(LoadError::NotFound {
            reference: reference.to_string(),
            hint: "It is neither an existing path nor a Hugging Face repository id \
                   (ORG/NAME, or an alias such as gpt2 or gelu-2l)."
                .into(),
        });
    }
    if let Some(dir) = cached_snapshot(&hf_cache(), repo) {
        return Ok(dir);
    }
    if offline() {
        return Err(not_found(
            repo,
            "HF_HUB_OFFLINE is set and it is not in the cache",
        ));
    }
    download(repo)
}

/// A snapshot directory in the HF cache that holds `config.json` and some weights.
fn cached_snapshot(cache: &hf_hub::Cache, repo: &str) -> Option<PathBuf> {
    let cached = cache.model(repo.to_string()).get("config.json")?;
    let dir = cached.parent()?.to_path_buf();
    let has_weights = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .any(|e| is_weight_file(&e.file_name().to_string_lossy()));
    has_weights.then_some(dir)
}

fn download(repo: &str) -> Result<PathBuf, LoadError> {
    let fail = |e: &dyn std::fmt::Display| not_found(repo, &format!("downloading failed ({e})"));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| fail(&e))?;
    let model = api.model(repo.to_string());
    let info = model.info().map_err(|e| fail(&e))?;
    let siblings: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let config_path = model.get("config.json").map_err(|e| fail(&e))?;
    let config: Option<serde_json::Value> = std::fs::read_to_string(&config_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    for file in needed_files(config.as_ref(), &siblings) {
        eprintln!("fetching {repo}/{file}");
        model.get(&file).map_err(|e| LoadError::Download {
            reference: format!("{repo}/{file}"),
            message: e.to_string(),
        })?;
    }
    config_path
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fail(&"cache path has no parent"))
}

/// Resolves a tokenizer reference (a directory, a `tokenizer.json`, or a hub repository such
/// as `NeelNanda/gpt-neox-tokenizer-digits`) to a `tokenizer.json` path.
pub fn resolve_tokenizer(reference: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(reference);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let file = path.join("tokenizer.json");
        return if file.exists() {
            Ok(file)
        } else {
            Err(LoadError::NoWeights {
                dir: path.to_path_buf(),
                looked_for: "tokenizer.json".into(),
            })
        };
    }
    if let Some(p) = hf_cache()
        .model(reference.to_string())
        .get("tokenizer.json")
    {
        return Ok(p);
    }
    if offline() {
        return Err(not_found(
            reference,
            "HF_HUB_OFFLINE is set and it is not in the cache",
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| not_found(reference, &e.to_string()))?;
    api.model(reference.to_string())
        .get("tokenizer.json")
        .map_err(|e| not_found(reference, &format!("downloading failed ({e})")))
}

/// One SAE in a hub repository: a SAELens folder (`DIR/cfg.json` and
/// `DIR/sae_weights.safetensors`; `DIR` is empty at the top) or Kissane et al.'s `NAME.pt`
/// with `NAME_cfg.json`.
#[derive(Debug, Clone, PartialEq)]
enum SaeEntry {
    Folder(String),
    StateDict(String),
}

impl SaeEntry {
    fn name(&self) -> &str {
        match self {
            Self::Folder(d) if d.is_empty() => ".",
            Self::Folder(d) | Self::StateDict(d) => d,
        }
    }

    /// The files to fetch, then the one to import (the folder or the `.pt`).
    fn files(&self) -> (Vec<String>, String) {
        match self {
            Self::Folder(d) => {
                let at = |f: &str| match d.is_empty() {
                    true => f.to_string(),
                    false => format!("{d}/{f}"),
                };
                (
                    vec![at("cfg.json"), at("sae_weights.safetensors")],
                    d.clone(),
                )
            }
            Self::StateDict(f) => {
                let stem = f.trim_end_matches(".pth").trim_end_matches(".pt");
                (vec![f.clone(), format!("{stem}_cfg.json")], f.clone())
            }
        }
    }

    /// Whether the name says layer `l`: SAELens' `blocks.L.` or Kissane et al.'s `_L{L}_`.
    fn is_layer(&self, l: usize) -> bool {
        let n = self.name();
        n.split('/')
            .any(|part| part.starts_with(&format!("blocks.{l}.")))
            || n.contains(&format!("_L{l}_"))
    }
}

/// The SAEs a repository's file list holds.
fn sae_entries(files: &[String]) -> Vec<SaeEntry> {
    let has = |f: &str| files.iter().any(|g| g == f);
    let mut out = Vec::new();
    for f in files {
        if let Some(dir) = f.strip_suffix("cfg.json") {
            let dir = dir.trim_end_matches('/');
            let weights = match dir.is_empty() {
                true => "sae_weights.safetensors".to_string(),
                false => format!("{dir}/sae_weights.safetensors"),
            };
            if (dir.is_empty() || f.ends_with("/cfg.json")) && has(&weights) {
                out.push(SaeEntry::Folder(dir.to_string()));
            }
        } else if f.ends_with(".pt") || f.ends_with(".pth") {
            let entry = SaeEntry::StateDict(f.clone());
            if entry.files().0.iter().all(|g| has(g)) {
                out.push(entry);
            }
        }
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

/// The entries at `path` (a folder or file in the repository; empty: any) of `layer`.
/// A path that names no entry but is SAELens' id of a layer's hook_z SAE (`blocks.5.hook_z`,
/// as its releases name them) picks that layer's.
fn fitting<'a>(path: &str, layer: Option<usize>, entries: &'a [SaeEntry]) -> Vec<&'a SaeEntry> {
    let path = path.trim_matches('/');
    let at = |e: &&SaeEntry| {
        path.is_empty() || e.name() == path || e.name().starts_with(&format!("{path}/"))
    };
    let (by_path, layer) = match crate::sae::io::hook_z_layer(path) {
        Some(l) if !entries.iter().any(|e| at(&e)) && layer.is_none_or(|k| k == l) => {
            (false, Some(l))
        }
        _ => (true, layer),
    };
    entries
        .iter()
        .filter(|e| !by_path || at(e))
        .filter(|e| layer.is_none_or(|l| e.is_layer(l)))
        .collect()
}

/// SAELens' release names of attention SAEs this tool reads, as hub repositories.
pub fn sae_release(reference: &str) -> String {
    let (release, rest) = reference.split_once('/').unwrap_or((reference, ""));
    let repo = match release {
        "gpt2-small-hook-z-kk" => "ckkissane/attn-saes-gpt2-small-all-layers",
        _ => return reference.to_string(),
    };
    match rest.is_empty() {
        true => repo.to_string(),
        false => format!("{repo}/{rest}"),
    }
}

/// Picks the SAE `path` names (a folder or file in the repository; empty: any) of `layer`
/// (if given) among `entries`: exactly one, or an error listing the candidates.
fn pick_sae(
    repo: &str,
    path: &str,
    layer: Option<usize>,
    entries: &[SaeEntry],
) -> anyhow::Result<SaeEntry> {
    let path = path.trim_matches('/');
    let fits = fitting(path, layer, entries);
    let list = |es: &[&SaeEntry]| {
        let mut s: Vec<String> = es
            .iter()
            .take(30)
            .map(|e| format!("  {}", e.name()))
            .collect();
        if es.len() > 30 {
            s.push(format!("  ... and {} more", es.len() - 30));
        }
        s.join("\n")
    };
    let asked = match (path.is_empty(), layer) {
        (true, None) => String::new(),
        (false, None) => format!(" at '{path}'"),
        (true, Some(l)) => format!(" of layer {l}"),
        (false, Some(l)) => format!(" at '{path}' of layer {l}"),
    };
    match fits.as_slice() {
        [one] => Ok((*one).clone()),
        [] if entries.is_empty() => anyhow::bail!(
            "{repo} holds no SAE this tool reads (a SAELens folder with cfg.json and \
             sae_weights.safetensors, or NAME.pt with NAME_cfg.json)"
        ),
        [] => anyhow::bail!(
            "{repo} holds no SAE{asked}; it holds:\n{}",
            list(&entries.iter().collect::<Vec<_>>())
        ),
        many => anyhow::bail!(
            "{repo} holds {} SAEs{asked}: name one as {repo}/PATH{}:\n{}",
            many.len(),
            if layer.is_none() {
                " or give --hook-layer"
            } else {
                ""
            },
            list(many)
        ),
    }
}

/// The snapshot directory `refs/main` points to in the Hugging Face cache, if it exists.
fn cached_snapshot_dir(repo: &str) -> Option<PathBuf> {
    let folder = hf_cache()
        .path()
        .join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    let dir = folder.join("snapshots").join(rev.trim());
    dir.is_dir().then_some(dir)
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// Resolves an SAE for `import`: an existing path (a SAELens folder or a `.pt`), or a hub
/// repository `ORG/NAME` with an optional path in it (`ORG/NAME/blocks.5.attn.hook_z`,
/// `ORG/NAME/FILE.pt`, or SAELens' id `ORG/NAME/blocks.L.hook_z`), whose SAE of `layer` is
/// picked when it holds several (SAELens' `blocks.L.` folders, Kissane et al.'s `_L{L}_`
/// files). SAELens' release `gpt2-small-hook-z-kk` names Kissane et al.'s repository. Looked up in the Hugging Face
/// cache first, then downloaded with a progress bar unless `HF_HUB_OFFLINE` is set.
pub fn resolve_sae(reference: &str, layer: Option<usize>) -> anyhow::Result<PathBuf> {
    let path = Path::new(reference);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let reference = &sae_release(reference);
    let path = Path::new(reference);
    let mut parts = reference.splitn(3, '/');
    let (Some(org), Some(name)) = (parts.next(), parts.next()) else {
        anyhow::bail!(
            "{reference} does not exist, and it is not a Hugging Face repository id \
             (ORG/NAME, or ORG/NAME/PATH to one SAE in it)"
        );
    };
    anyhow::ensure!(
        !org.is_empty() && !name.is_empty() && !path.is_absolute() && !reference.starts_with('.'),
        "{reference} does not exist"
    );
    let repo = format!("{org}/{name}");
    let inner = parts.next().unwrap_or("");
    // The cached snapshot, if any: a chosen SAE whose files are all there is used as is.
    if let Some(snapshot) = cached_snapshot_dir(&repo) {
        // One or several SAEs that fit are answered from the cache; none, by the hub.
        let entries = sae_entries(&files_under(&snapshot));
        let none_fits = fitting(inner, layer, &entries).is_empty();
        if !none_fits || offline() {
            let picked = pick_sae(&repo, inner, layer, &entries).map_err(|e| match none_fits {
                true => anyhow::anyhow!(
                    "{e}\n(in its cached snapshot {}; HF_HUB_OFFLINE is set, so the hub was not \
                     asked)",
                    snapshot.display()
                ),
                false => e,
            })?;
            return Ok(snapshot.join(picked.files().1));
        }
    } else if offline() {
        anyhow::bail!(
            "HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache ({}); \
             download it on a machine with internet access (`huggingface-cli download \
             {repo}`) and copy the cache here",
            hf_cache().path().display()
        );
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .with_context(|| format!("reaching the Hugging Face hub for {repo}"))?;
    let model = api.model(repo.clone());
    let info = model
        .info()
        .with_context(|| format!("listing {repo} on the Hugging Face hub"))?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let entry = pick_sae(&repo, inner, layer, &sae_entries(&files))?;
    let (fetch, import) = entry.files();
    let mut snapshot = None;
    for f in &fetch {
        eprintln!("fetching {repo}/{f}");
        let local = model
            .get(f)
            .with_context(|| format!("downloading {repo}/{f}"))?;
        // `local` is SNAPSHOT/f: the snapshot is `f`'s depth above it.
        let depth = f.split('/').count();
        snapshot = local.ancestors().nth(depth).map(Path::to_path_buf);
    }
    let snapshot = snapshot.context("no file fetched")?;
    Ok(snapshot.join(import))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tl_repos_fetch_the_final_checkpoint_only() {
        let cfg = serde_json::json!({"n_layers": 2});
        let siblings = vec![
            "config.json".to_string(),
            "model_1000.pth".into(),
            "model_final.pth".into(),
        ];
        assert_eq!(
            needed_files(Some(&cfg), &siblings),
            vec!["config.json", "model_final.pth"]
        );
    }

    #[test]
    fn hf_repos_fetch_safetensors_and_tokenizer() {
        let cfg = serde_json::json!({"n_layer": 12});
        let siblings = vec![
            "config.json".to_string(),
            "model.safetensors".into(),
            "pytorch_model.bin".into(),
            "tokenizer.json".into(),
        ];
        assert_eq!(
            needed_files(Some(&cfg), &siblings),
            vec!["config.json", "model.safetensors", "tokenizer.json"]
        );
    }

    #[test]
    fn sharded_hf_repos_fetch_the_index_and_every_shard() {
        let cfg = serde_json::json!({"model_type": "llama"});
        let siblings: Vec<String> = [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "original/consolidated.00.pth",
            "tokenizer.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            needed_files(Some(&cfg), &siblings),
            vec![
                "config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "tokenizer.json"
            ]
        );
    }

    #[test]
    fn finds_models_in_the_hf_cache_layout() {
        let root = std::env::temp_dir().join(format!("attn-saes-hfcache-{}", std::process::id()));
        let snap = root.join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("models--org--tiny/refs")).unwrap();
        std::fs::write(root.join("models--org--tiny/refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "x").unwrap();
        let cache = hf_hub::Cache::new(root.clone());
        assert_eq!(cached_snapshot(&cache, "org/tiny"), Some(snap.clone()));
        assert_eq!(cached_snapshot(&cache, "org/other"), None);
        std::fs::remove_file(snap.join("model.safetensors")).unwrap();
        assert_eq!(
            cached_snapshot(&cache, "org/tiny"),
            None,
            "config without weights"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    fn names(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn sae_repositories_list_their_saes_and_pick_one_by_path_or_layer() {
        // ARENA-like SAELens folders, one at the top, Kissane-like state dicts, and files
        // that are not SAEs (a folder without weights, a .pt without its config).
        let files = names(&[
            "README.md",
            "blocks.0.attn.hook_z/cfg.json",
            "blocks.0.attn.hook_z/sae_weights.safetensors",
            "blocks.0.attn.hook_z-v2/cfg.json",
            "blocks.0.attn.hook_z-v2/sae_weights.safetensors",
            "blocks.0.attn.hook_z-v2/sparsity.safetensors",
            "blocks.1.attn.hook_z/cfg.json",
            "blocks.1.attn.hook_z/sae_weights.safetensors",
            "blocks.2.attn.hook_z/cfg.json",
            "gpt2-small_L5_Hcat_z_v9.pt",
            "gpt2-small_L5_Hcat_z_v9_cfg.json",
            "gpt2-small_L6_Hcat_z_v9.pt",
            "gpt2-small_L15_Hcat_z_v9.pt",
            "gpt2-small_L15_Hcat_z_v9_cfg.json",
        ]);
        let entries = sae_entries(&files);
        let listed: Vec<&str> = entries.iter().map(SaeEntry::name).collect();
        assert_eq!(
            listed,
            [
                "blocks.0.attn.hook_z",
                "blocks.0.attn.hook_z-v2",
                "blocks.1.attn.hook_z",
                "gpt2-small_L15_Hcat_z_v9.pt",
                "gpt2-small_L5_Hcat_z_v9.pt",
            ]
        );
        let pick = |path: &str, layer| pick_sae("o/r", path, layer, &entries);
        assert_eq!(
            pick("", Some(1)).unwrap(),
            SaeEntry::Folder("blocks.1.attn.hook_z".into())
        );
        assert_eq!(
            pick("", Some(5)).unwrap(),
            SaeEntry::StateDict("gpt2-small_L5_Hcat_z_v9.pt".into())
        );
        assert_eq!(
            pick("blocks.0.attn.hook_z-v2/", None).unwrap(),
            SaeEntry::Folder("blocks.0.attn.hook_z-v2".into())
        );
        let many = format!("{:#}", pick("", Some(0)).unwrap_err());
        assert!(many.contains("holds 2 SAEs of layer 0"), "{many}");
        let none = format!("{:#}", pick("", Some(6)).unwrap_err());
        assert!(none.contains("no SAE of layer 6"), "{none}");
        // What each entry fetches: the folder's two files, the state dict and its config.
        assert_eq!(
            pick("", Some(15)).unwrap().files(),
            (
                names(&[
                    "gpt2-small_L15_Hcat_z_v9.pt",
                    "gpt2-small_L15_Hcat_z_v9_cfg.json"
                ]),
                "gpt2-small_L15_Hcat_z_v9.pt".to_string()
            )
        );
        // A repository that is one SAELens folder.
        let top = sae_entries(&names(&["cfg.json", "sae_weights.safetensors"]));
        let one = pick_sae("o/r", "", None, &top).unwrap();
        assert_eq!(one, SaeEntry::Folder(String::new()));
        assert_eq!(
            one.files(),
            (
                names(&["cfg.json", "sae_weights.safetensors"]),
                String::new()
            )
        );
        // SAELens' ids pick a layer where no entry has that name.
        assert_eq!(
            pick("blocks.5.hook_z", None).unwrap(),
            SaeEntry::StateDict("gpt2-small_L5_Hcat_z_v9.pt".into())
        );
        assert_eq!(
            pick("blocks.1.hook_z", None).unwrap(),
            SaeEntry::Folder("blocks.1.attn.hook_z".into())
        );
        assert!(
            pick("blocks.5.hook_z", Some(1)).is_err(),
            "two layers asked"
        );
        assert_eq!(
            sae_release("gpt2-small-hook-z-kk/blocks.5.hook_z"),
            "ckkissane/attn-saes-gpt2-small-all-layers/blocks.5.hook_z"
        );
        assert_eq!(
            sae_release("gpt2-small-hook-z-kk"),
            "ckkissane/attn-saes-gpt2-small-all-layers"
        );
        assert_eq!(sae_release("org/name"), "org/name");
        let empty = format!("{:#}", pick_sae("o/r", "", None, &[]).unwrap_err());
        assert!(empty.contains("holds no SAE this tool reads"), "{empty}");
    }
}
