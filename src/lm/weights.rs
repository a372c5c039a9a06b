//! LM weights: a uniform view of named tensors in safetensors, PyTorch `.pth` and GGUF files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;

use super::gguf::GgufFile;

/// Everything that can go wrong while locating or reading model weights.
/// Every variant names the file (and the tensor) it is about.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid {format} file: {message}")]
    Format {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{path}: tensor '{tensor}' is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "{path}: tensor '{tensor}' has dtype {dtype}, which is not supported (use F32, F16 or BF16)"
    )]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: bad model config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{dir}: no model weights found (looked for {looked_for})")]
    NoWeights { dir: PathBuf, looked_for: String },
    #[error("model '{reference}' not found locally. {hint}")]
    NotFound { reference: String, hint: String },
    #[error("downloading '{reference}' failed: {message}")]
    Download { reference: String, message: String },
    #[error(transparent)]
    Gguf(#[from] super::gguf::GgufError),
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
}

/// A host-side f32 array with its row-major shape, as read from a weight file.
#[derive(Debug, Clone)]
pub struct HostArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostArray {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn into_tensor<const D: usize>(self, device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }
}

/// A Hugging Face directory's weights: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` names (`weight_map`: tensor -> file), which checkpoints
/// over about 5 GB come in (Llama 3.2 3B and up). Each shard is opened when a tensor of it
/// is first read, and only the last one opened stays open.
pub struct HfWeights(HfFiles);

enum HfFiles {
    Single(WeightFile),
    Sharded {
        dir: PathBuf,
        shard_of: BTreeMap<String, String>,
        open: std::cell::RefCell<Option<(String, WeightFile)>>,
    },
}

/// The single-file weights of a Hugging Face directory.
pub const HF_WEIGHTS: &str = "model.safetensors";
/// The index of a sharded one.
pub const HF_WEIGHTS_INDEX: &str = "model.safetensors.index.json";

impl HfWeights {
    /// `dir`'s weights; an error names what is missing (the file, the index, or a shard
    /// the index names) or wrong in the index, before any shard is read.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join(HF_WEIGHTS);
        let index = dir.join(HF_WEIGHTS_INDEX);
        let missing = |what: String| LoadError::NoWeights {
            dir: dir.to_path_buf(),
            looked_for: what,
        };
        if crate::vfs::exists(&single) {
            return Ok(Self(HfFiles::Single(WeightFile::open(&single)?)));
        }
        if !crate::vfs::exists(&index) {
            return Err(missing(format!(
                "{HF_WEIGHTS} (or {HF_WEIGHTS_INDEX} and the shards it names)"
            )));
        }
        let bad = |message: String| LoadError::Format {
            path: index.clone(),
            format: "safetensors index",
            message,
        };
        let bytes = crate::vfs::read(&index).map_err(|source| LoadError::Io {
            path: index.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let map = (json.get("weight_map").and_then(|m| m.as_object()))
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        if map.is_empty() {
            return Err(bad("\"weight_map\" is empty".into()));
        }
        let mut shard_of = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("the file of '{tensor}' is not a string")))?;
            // A shard is a file beside the index, never a path elsewhere.
            if Path::new(file).file_name().and_then(|n| n.to_str()) != Some(file)
                || !file.ends_with(".safetensors")
            {
                return Err(bad(format!(
                    "'{file}' (for '{tensor}') is not a .safetensors file name"
                )));
            }
            shard_of.insert(tensor.clone(), file.to_string());
        }
        let shards: std::collections::BTreeSet<&String> = shard_of.values().collect();
        if let Some(absent) = shards.iter().find(|f| !crate::vfs::exists(&dir.join(f))) {
            return Err(missing(format!("{absent} (named by {HF_WEIGHTS_INDEX})")));
        }
        Ok(Self(HfFiles::Sharded {
            dir: dir.to_path_buf(),
            shard_of,
            open: Default::default(),
        }))
    }

    /// Whether the weights hold tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        match &self.0 {
            HfFiles::Single(file) => file.contains(name),
            HfFiles::Sharded { shard_of, .. } => shard_of.contains_key(name),
        }
    }

    /// Reads a tensor and checks its shape, from its shard where the weights are sharded.
    pub fn read_shaped(&self, name: &str, expected: &[usize]) -> Result<HostArray, LoadError> {
        let (dir, shard_of, open) = match &self.0 {
            HfFiles::Single(file) => return file.read_shaped(name, expected),
            HfFiles::Sharded {
                dir,
                shard_of,
                open,
            } => (dir, shard_of, open),
        };
        let shard = shard_of.get(name).ok_or_else(|| LoadError::MissingTensor {
            path: dir.join(HF_WEIGHTS_INDEX),
            tensor: name.to_string(),
        })?;
        let mut open = open.borrow_mut();
        if open.as_ref().is_none_or(|(f, _)| f != shard) {
            *open = None; // the shard before is dropped before the next is read
            *open = Some((shard.clone(), WeightFile::open(&dir.join(shard))?));
        }
        let (_, file) = open.as_ref().expect("opened above");
        file.read_shaped(name, expected)
    }
}

enum Backing {
    Safetensors(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Pytorch(Box<pytorch_reader::PytorchReader>),
    Gguf(Box<GgufFile>),
}

/// A weight file opened for reading named tensors.
pub struct WeightFile {
    path: PathBuf,
    backing: Backing,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let backing = match ext {
            "safetensors" => {
                let bytes = crate::vfs::read(path).map_err(|source| LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                // Validate the header now so errors surface at open.
                safetensors::SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Format {
                    path: path.to_path_buf(),
                    format: "safetensors",
                    message: e.to_string(),
                })?;
                Backing::Safetensors(bytes)
            }
            #[cfg(target_arch = "wasm32")]
            "pth" | "pt" | "bin" => {
                return Err(LoadError::Format {
                    path: path.to_path_buf(),
                    format: "PyTorch checkpoint",
                    message: "PyTorch checkpoints are read on the desktop only".into(),
                });
            }
            #[cfg(not(target_arch = "wasm32"))]
            "pth" | "pt" | "bin" => {
                let reader =
                    pytorch_reader::PytorchReader::new(path).map_err(|e| LoadError::Format {
                        path: path.to_path_buf(),
                        format: "PyTorch checkpoint",
                        message: e.to_string(),
                    })?;
                Backing::Pytorch(Box::new(reader))
            }
            "gguf" => Backing::Gguf(Box::new(GgufFile::open(path)?)),
            other => {
                return Err(LoadError::Format {
                    path: path.to_path_buf(),
                    format: "weights",
                    message: format!(
                        "unknown extension '{other}' (expected .safetensors, .pth, .pt or .gguf)"
                    ),
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            backing,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.backing {
            Backing::Gguf(g) => Some(g),
            _ => None,
        }
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        match &self.backing {
            Backing::Safetensors(bytes) => safetensors::SafeTensors::deserialize(bytes)
                .map(|st| st.names().into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            #[cfg(not(target_arch = "wasm32"))]
            Backing::Pytorch(r) => r.keys(),
            Backing::Gguf(g) => g.tensors.iter().map(|t| t.name.clone()).collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names().iter().any(|n| n == name)
    }

    /// Reads a tensor as f32 with its row-major shape.
    pub fn read(&self, name: &str) -> Result<HostArray, LoadError> {
        let missing = || LoadError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        };
        let dtype_err = |dtype: String| LoadError::Dtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype,
        };
        match &self.backing {
            Backing::Safetensors(bytes) => {
                let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
                    LoadError::Format {
                        path: self.path.clone(),
                        format: "safetensors",
                        message: e.to_string(),
                    }
                })?;
                let view = st.tensor(name).map_err(|_| missing())?;
                let data = match view.dtype() {
                    safetensors::Dtype::F32 => decode_f32(view.data()),
                    safetensors::Dtype::F16 => decode_f16(view.data()),
                    safetensors::Dtype::BF16 => decode_bf16(view.data()),
                    other => return Err(dtype_err(format!("{other:?}"))),
                };
                Ok(HostArray::new(view.shape().to_vec(), data))
            }
            #[cfg(not(target_arch = "wasm32"))]
            Backing::Pytorch(r) => {
                let t = r.get(name).ok_or_else(missing)?;
                let bytes = t.read().map_err(|source| LoadError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                let data = match t.dtype() {
                    pytorch_reader::DType::F32 => decode_f32(&bytes),
                    pytorch_reader::DType::F16 => decode_f16(&bytes),
                    pytorch_reader::DType::BF16 => decode_bf16(&bytes),
                    other => return Err(dtype_err(format!("{other:?}"))),
                };
                Ok(HostArray::new(t.shape().to_vec(), data))
            }
            Backing::Gguf(g) => {
                let (shape, data) = g.tensor(name)?;
                Ok(HostArray::new(shape, data))
            }
        }
    }

    /// Reads a tensor and checks its shape.
    pub fn read_shaped(&self, name: &str, expected: &[usize]) -> Result<HostArray, LoadError> {
        let array = self.read(name)?;
        if array.shape != expected {
            return Err(LoadError::Shape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: array.shape,
            });
        }
        Ok(array)
    }

    /// Reads a tensor, checks its shape and puts it on `device`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, LoadError> {
        Ok(self.read_shaped(name, &expected)?.into_tensor(device))
    }
}

fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn decode_f16(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

fn decode_bf16(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Reads a JSON config file into a map.
pub fn read_json_config(path: &Path) -> Result<BTreeMap<String, serde_json::Value>, LoadError> {
    let text = crate::vfs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        message: format!("not a JSON object: {e}"),
    })
}
