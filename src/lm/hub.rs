//! LM weights: resolves a model reference (local path, Hugging Face cache, or hub download).

use std::path::{Path, PathBuf};

use super::weights::LoadError;

/// Short names users type, mapped to hub repositories.
pub fn expand_alias(reference: &str) -> &str {
    match reference {
        "gpt2" | "gpt2-small" => "openai-community/gpt2",
        "gpt2-medium" => "openai-community/gpt2-medium",
        "gpt2-large" => "openai-community/gpt2-large",
        "gpt2-xl" => "openai-community/gpt2-xl",
        "distilgpt2" => "distilbert/distilgpt2",
        "gelu-1l" => "NeelNanda/GELU_1L512W_C4_Code",
        "gelu-2l" => "NeelNanda/GELU_2L512W_C4_Code",
        "gelu-3l" => "NeelNanda/GELU_3L512W_C4_Code",
        "gelu-4l" => "NeelNanda/GELU_4L512W_C4_Code",
        other => other,
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Where the Hugging Face cache lives (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or
/// `~/.cache/huggingface/hub`).
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
}
