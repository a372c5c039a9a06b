//! File helpers shared by checkpoints and exports: atomic writes and safetensors I/O.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A named f32 array for safetensors files.
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedArray {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        let name = name.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape/data mismatch"
        );
        Self { name, shape, data }
    }

    /// Reads a burn tensor back to the host.
    pub fn from_tensor<const D: usize>(
        name: impl Into<String>,
        t: burn::tensor::Tensor<D>,
    ) -> anyhow::Result<Self> {
        let shape = t.dims().to_vec();
        Ok(Self::new(name, shape, host_vec(t)?))
    }
}

/// Reads a tensor back to the host as f32 values (row-major).
pub fn host_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor back: {e:?}"))
}

/// A sibling temp path, so a rename onto `path` is atomic.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Flushes a directory's entries (renames into it) to disk. Best effort: directories
/// cannot be opened for syncing on every platform (Windows).
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

pub fn safetensors_bytes(
    arrays: &[NamedArray],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = arrays
        .iter()
        .map(|a| a.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = arrays
        .iter()
        .zip(&bytes)
        .map(|(a, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, a.shape.clone(), b)
                .map(|v| (a.name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Writes f32 arrays as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    arrays: &[NamedArray],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    write_atomic(path, &safetensors_bytes(arrays, metadata)?)
}

/// Whether two paths name the same existing file or directory (written relative, with
/// `..`, through a link); false when either does not exist.
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Writes a JSON value, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// Reads a JSON file into `T`, naming the file on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        crate::vfs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// The sha256 of `bytes`, as lowercase hex (the demo assets' checksums, the web page's
/// downloads).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
