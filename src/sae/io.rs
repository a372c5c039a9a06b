//! SAE stage: file formats. Our own (stacked per-head tensors + `sae_config.json`),
//! SAELens (dense zero-padded matrices, `cfg.json`, `sparsity.safetensors`) both ways,
//! and the seed fork's `enc_blocks.{h}` / `dec_blocks.{h}` state dicts.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::{Architecture, BlockDiagSae, SaeConfig};
use crate::files::{NamedArray, host_vec as host, read_json, write_json, write_safetensors};
use crate::lm::weights::{HostArray, WeightFile};

pub const WEIGHTS_FILE: &str = "sae.safetensors";
pub const CONFIG_FILE: &str = "sae_config.json";

/// Where an SAE was trained: written into exports so that tools can find the hook.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HookInfo {
    pub model_name: String,
    pub hook_layer: usize,
    pub context_size: usize,
    pub prepend_bos: bool,
    pub dataset_path: String,
    /// Which hook_z the SAE reads (recorded in the export's `attn_saes` block, so that an
    /// import knows it).
    pub z_convention: crate::lm::ZConvention,
}

/// What an SAE was trained on, recorded beside its shape in `sae_config.json` (as an
/// `origin` key that older readers ignore).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SaeOrigin {
    /// The model's name as loaded (e.g. `gpt2`, a GGUF's path).
    pub model: String,
    pub hook_layer: usize,
    pub z_convention: crate::lm::ZConvention,
    /// Trained on BOS positions too (`--keep-bos`); false in files written before this was
    /// recorded, as training's default is.
    #[serde(default)]
    pub keep_bos: bool,
}

/// `sae_config.json` with the origin beside the shape.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConfigFile {
    #[serde(flatten)]
    config: SaeConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<SaeOrigin>,
}

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

impl BlockDiagSae {
    /// The SAE's tensors as host arrays, in our stacked layout.
    pub fn to_arrays(&self) -> anyhow::Result<Vec<NamedArray>> {
        let h = self.config.n_heads;
        let mut arrays = vec![
            NamedArray::from_tensor("W_enc", self.w_enc.clone())?,
            NamedArray::from_tensor("b_enc", self.b_enc.clone())?,
            NamedArray::from_tensor("W_dec", self.w_dec.clone())?,
            NamedArray::from_tensor("b_dec", self.b_dec.clone())?,
            NamedArray::new("input_scale", vec![h], self.input_scale.clone()),
        ];
        if let Some(lt) = &self.log_threshold {
            arrays.push(NamedArray::from_tensor("log_threshold", lt.clone())?);
        }
        if let Some(t) = &self.batch_threshold {
            arrays.push(NamedArray::from_tensor("batch_threshold", t.clone())?);
        }
        Ok(arrays)
    }

    /// Builds an SAE from stacked host arrays (checked against `config`).
    pub fn from_arrays(
        config: SaeConfig,
        file: &WeightFile,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let (h, d, m) = (config.n_heads, config.d_head, config.features_per_head);
        let get = |name: &str, shape: &[usize]| -> anyhow::Result<HostArray> {
            Ok(file.read_shaped(name, shape)?)
        };
        Ok(Self {
            w_enc: get("W_enc", &[h, d, m])?.into_tensor(device),
            b_enc: get("b_enc", &[h, m])?.into_tensor(device),
            w_dec: get("W_dec", &[h, m, d])?.into_tensor(device),
            b_dec: get("b_dec", &[h, d])?.into_tensor(device),
            input_scale: get("input_scale", &[h])?.data,
            log_threshold: match config.architecture {
                Architecture::JumpRelu { .. } => {
                    Some(get("log_threshold", &[h, m])?.into_tensor(device))
                }
                _ => None,
            },
            // Files written before BatchTopK kept its thresholds have none.
            batch_threshold: match config.architecture {
                Architecture::BatchTopK { .. } if file.contains("batch_threshold") => {
                    Some(get("batch_threshold", &[h, m])?.into_tensor(device))
                }
                _ => None,
            },
            reads_bos: false,
            config,
        })
    }

    /// Saves in our format: `dir/sae.safetensors` + `dir/sae_config.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.save_with_origin(dir, None)
    }

    /// Saves in our format, recording what the SAE was trained on.
    pub fn save_with_origin(&self, dir: &Path, origin: Option<&SaeOrigin>) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_safetensors(&dir.join(WEIGHTS_FILE), &self.to_arrays()?, None)?;
        write_json(
            &dir.join(CONFIG_FILE),
            &ConfigFile {
                config: self.config.clone(),
                origin: origin.cloned(),
            },
        )
    }

    /// What the SAE in `dir` was trained on, if its `sae_config.json` says.
    pub fn read_origin(dir: &Path) -> anyhow::Result<Option<SaeOrigin>> {
        Ok(read_json::<ConfigFile>(&dir.join(CONFIG_FILE))?.origin)
    }

    /// Checks that the SAE reads hook_z of a model with these heads: one block per head,
    /// or one dense block over all of them.
    pub fn check_fits(&self, model: &str, n_heads: usize, d_head: usize) -> anyhow::Result<()> {
        let c = &self.config;
        let per_head = c.n_heads == n_heads && c.d_head == d_head;
        anyhow::ensure!(
            per_head || c.is_dense_over(n_heads, d_head),
            "the SAE ({} of {}) does not fit hook_z of {model} ({n_heads} heads x {d_head}): \
             it was trained on another model",
            match c.n_heads {
                1 => "one block".to_string(),
                n => format!("{n} blocks"),
            },
            c.d_head
        );
        Ok(())
    }

    /// Loads our format from a directory; it reads BOS positions when its origin says it
    /// was trained on them.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let ConfigFile { config, origin } = read_json(&dir.join(CONFIG_FILE))?;
        let file = WeightFile::open(&dir.join(WEIGHTS_FILE))?;
        Ok(Self {
            reads_bos: origin.is_some_and(|o| o.keep_bos),
            ..Self::from_arrays(config, &file, device)?
        })
    }

    /// Exports to a SAELens folder: the SAE is folded (unit-norm decoder, no input scale)
    /// and written as dense `W_enc [d_in, d_sae]` / `W_dec [d_sae, d_in]` with zero
    /// off-diagonal blocks. `log10_density` (length d_sae), if given, goes to
    /// `sparsity.safetensors`.
    pub fn export_saelens(
        &self,
        dir: &Path,
        hook: &HookInfo,
        log10_density: Option<&[f32]>,
    ) -> anyhow::Result<()> {
        let folded = self.fold();
        let cfg = &folded.config;
        let (h, d, m) = (cfg.n_heads, cfg.d_head, cfg.features_per_head);
        let (d_in, d_sae) = (cfg.d_in(), cfg.d_sae());
        let w_enc = host(folded.w_enc.clone())?;
        let w_dec = host(folded.w_dec.clone())?;
        let mut dense_enc = vec![0f32; d_in * d_sae];
        let mut dense_dec = vec![0f32; d_sae * d_in];
        for head in 0..h {
            for j in 0..d {
                for i in 0..m {
                    let v_enc = w_enc[(head * d + j) * m + i];
                    dense_enc[(head * d + j) * d_sae + head * m + i] = v_enc;
                    let v_dec = w_dec[(head * m + i) * d + j];
                    dense_dec[(head * m + i) * d_in + head * d + j] = v_dec;
                }
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut arrays = vec![
            NamedArray::new("W_enc", vec![d_in, d_sae], dense_enc),
            NamedArray::new("b_enc", vec![d_sae], host(folded.b_enc.clone())?),
            NamedArray::new("W_dec", vec![d_sae, d_in], dense_dec),
            NamedArray::new("b_dec", vec![d_in], host(folded.b_dec.clone())?),
        ];
        if let Some(lt) = &folded.log_threshold {
            let threshold = host(lt.clone().exp())?;
            arrays.push(NamedArray::new("threshold", vec![d_sae], threshold));
        }
        // A BatchTopK SAE with its inference thresholds runs in SAELens as JumpReLU.
        if let Some(t) = &folded.batch_threshold {
            arrays.push(NamedArray::new("threshold", vec![d_sae], host(t.clone())?));
        }
        write_safetensors(&dir.join("sae_weights.safetensors"), &arrays, None)?;
        if let Some(density) = log10_density {
            ensure!(
                density.len() == d_sae,
                "sparsity has {} entries, expected {d_sae}",
                density.len()
            );
            write_safetensors(
                &dir.join("sparsity.safetensors"),
                &[NamedArray::new("sparsity", vec![d_sae], density.to_vec())],
                None,
            )?;
        }
        let hook_name = format!("blocks.{}.attn.hook_z", hook.hook_layer);
        let k = match (cfg.architecture, &folded.batch_threshold) {
            (Architecture::TopK { k }, _) | (Architecture::BatchTopK { k }, None) => Some(k),
            _ => None,
        };
        let cfg_json = serde_json::json!({
            "architecture": match (cfg.architecture, &folded.batch_threshold) {
                (Architecture::Relu, _) => "standard",
                (Architecture::JumpRelu { .. }, _) => "jumprelu",
                // SAELens runs a BatchTopK SAE at inference as JumpReLU with its
                // thresholds; without them, as TopK.
                (Architecture::BatchTopK { .. }, Some(_)) => "jumprelu",
                _ => "topk",
            },
            "d_in": d_in,
            "d_sae": d_sae,
            "k": k,
            "activation_fn_kwargs": k.map(|k| serde_json::json!({"k": k})).unwrap_or(serde_json::json!({})),
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": false,
            "normalize_activations": "none",
            "reshape_activations": "hook_z",
            "hook_name": hook_name,
            "hook_layer": hook.hook_layer,
            "hook_head_index": null,
            "model_name": hook.model_name,
            "context_size": hook.context_size,
            "prepend_bos": hook.prepend_bos,
            "dataset_path": hook.dataset_path,
            "metadata": {
                "model_name": hook.model_name,
                "hook_name": hook_name,
                "hook_head_index": null,
                "context_size": hook.context_size,
                "prepend_bos": hook.prepend_bos,
                "dataset_path": hook.dataset_path,
            },
            "attn_saes": {
                "n_heads": h,
                "d_head": d,
                "features_per_head": m,
                "block_diagonal": h > 1,
                "training_architecture": cfg.architecture,
                "z_convention": hook.z_convention,
            },
        });
        write_json(&dir.join("cfg.json"), &cfg_json)
    }

    /// What an SAELens folder written by this tool (`export`, `train`'s `saelens/`) records in
    /// its `attn_saes` block: the heads its SAE is block-diagonal over (1: dense) and, when
    /// the block names the hook_z convention, where it was trained. `None` for other folders.
    pub fn saelens_recorded(dir: &Path) -> anyhow::Result<Option<(usize, Option<SaeOrigin>)>> {
        let cfg: serde_json::Value = read_json(&dir.join("cfg.json"))?;
        let Some(ours) = cfg.get("attn_saes") else {
            return Ok(None);
        };
        let heads = ours.get("n_heads").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
        let z_convention = ours
            .get("z_convention")
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let model = cfg.get("model_name").and_then(|v| v.as_str());
        let layer = cfg.get("hook_layer").and_then(|v| v.as_u64());
        let origin = match (model, layer, z_convention) {
            (Some(model), Some(layer), Some(z_convention)) if !model.is_empty() => {
                Some(SaeOrigin {
                    model: model.to_string(),
                    hook_layer: layer as usize,
                    z_convention,
                    keep_bos: false,
                })
            }
            _ => None,
        };
        Ok(Some((heads, origin)))
    }

    /// Where a SAELens folder from elsewhere says its SAE was trained, if it is an attention
    /// hook_z SAE: its `model_name` (a TransformerLens name, mapped to the hub repository as
    /// `--model` takes it) and the layer of its `hook_name`, in TransformerLens' hook_z
    /// convention, which SAELens trains on. BOS is recorded as not read (SAELens' configs
    /// do not say). `None` when the config names no model or no hook_z.
    pub fn saelens_origin(dir: &Path) -> anyhow::Result<Option<SaeOrigin>> {
        let cfg: serde_json::Value = read_json(&dir.join("cfg.json"))?;
        let model = cfg.get("model_name").and_then(|v| v.as_str());
        let hook = ["hook_name", "hook_point"]
            .iter()
            .find_map(|k| cfg.get(*k).and_then(|v| v.as_str()));
        Ok(match (model, hook.and_then(hook_z_layer)) {
            (Some(model), Some(layer)) if !model.is_empty() => Some(SaeOrigin {
                model: crate::lm::expand_alias(model).to_string(),
                hook_layer: layer,
                z_convention: crate::lm::ZConvention::TransformerLens,
                keep_bos: false,
            }),
            _ => None,
        })
    }

    /// Imports a SAELens folder (`cfg.json` + `sae_weights.safetensors`) as a hook_z SAE.
    /// If the dense matrices are block-diagonal over `n_heads` heads it becomes a
    /// block-diagonal SAE; otherwise a dense one (`n_heads = 1`), e.g. Kissane et al.'s.
    /// `apply_b_dec_to_input` is folded into `b_enc`.
    pub fn import_saelens(dir: &Path, n_heads: usize, device: &Device) -> anyhow::Result<Self> {
        let cfg_path = dir.join("cfg.json");
        let cfg: serde_json::Value = read_json(&cfg_path)?;
        let get_usize = |k: &str| config_usize(&cfg, &cfg_path, k);
        let (d_in, d_sae) = (get_usize("d_in")?, get_usize("d_sae")?);
        let norm = cfg
            .get("normalize_activations")
            .and_then(|v| v.as_str())
            .unwrap_or("none");
        if norm != "none" {
            bail!(
                "{}: normalize_activations '{norm}' needs a scaling factor the folder does not \
                 hold; export the SAE with the factor folded in",
                cfg_path.display()
            );
        }
        let arch_name = cfg
            .get("architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("standard");
        let k = cfg.get("k").and_then(|v| v.as_u64()).or_else(|| {
            cfg.pointer("/activation_fn_kwargs/k")
                .and_then(|v| v.as_u64())
        });
        let architecture = match (arch_name, k) {
            ("standard", _) => Architecture::Relu,
            ("topk", Some(k)) | ("batchtopk", Some(k)) => Architecture::TopK { k: k as usize },
            ("jumprelu", _) => Architecture::JumpRelu {
                bandwidth: cfg
                    .get("jumprelu_bandwidth")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.001),
            },
            (other, _) => bail!(
                "{}: architecture '{other}' is not supported (standard, topk)",
                cfg_path.display()
            ),
        };
        let apply_b_dec = cfg
            .get("apply_b_dec_to_input")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let file = WeightFile::open(&dir.join("sae_weights.safetensors"))?;
        let threshold = match architecture {
            Architecture::JumpRelu { .. } => Some(file.read_shaped("threshold", &[d_sae])?.data),
            _ => None,
        };
        let dense = DenseSae::read(&file, d_in, d_sae, apply_b_dec)?;
        Ok(dense.into_heads(n_heads, architecture, threshold, device))
    }

    /// Imports Kissane et al.'s attention SAEs (SAELens release `gpt2-small-hook-z-kk`,
    /// `ckkissane/attn-saes-gpt2-small-all-layers`): a PyTorch state dict `NAME.pt` with
    /// SAELens' dense `W_enc`, `b_enc`, `W_dec`, `b_dec` and a `NAME_cfg.json` beside it
    /// (`act_name`, `act_size`, `dict_size`, `layer`, `model_name`). ReLU on `(x - b_dec)
    /// W_enc + b_enc`; one dense SAE over the heads unless block-diagonal over `n_heads`.
    /// The origin comes from the config: the model (its TransformerLens name mapped to the
    /// hub repository, as `--model` takes it) and the layer, read in TransformerLens' hook_z
    /// convention; the config does not say whether BOS positions were trained on, so the
    /// SAE is recorded as not reading them (the dashboards leave BOS out anyway).
    pub fn import_kissane(
        path: &Path,
        n_heads: usize,
        device: &Device,
    ) -> anyhow::Result<(Self, SaeOrigin)> {
        let cfg_path = kissane_config_path(path);
        ensure!(
            cfg_path.is_file(),
            "{} needs its config {} beside it (Kissane et al.'s layout: NAME.pt and \
             NAME_cfg.json)",
            path.display(),
            cfg_path.display()
        );
        let cfg: serde_json::Value = read_json(&cfg_path)?;
        let get_usize = |k: &str| config_usize(&cfg, &cfg_path, k);
        let (d_in, d_sae) = (get_usize("act_size")?, get_usize("dict_size")?);
        let act_name = cfg.get("act_name").and_then(|v| v.as_str()).unwrap_or("");
        let layer = hook_z_layer(act_name).with_context(|| {
            format!(
                "{}: act_name '{act_name}' is not an attention hook_z (blocks.L.attn.hook_z)",
                cfg_path.display()
            )
        })?;
        if let Some(l) = cfg.get("layer").and_then(|v| v.as_u64()) {
            ensure!(
                l as usize == layer,
                "{}: layer {l} differs from act_name '{act_name}'",
                cfg_path.display()
            );
        }
        let model = cfg
            .get("model_name")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{}: missing 'model_name'", cfg_path.display()))?;
        let file = WeightFile::open(path)?;
        let dense = DenseSae::read(&file, d_in, d_sae, true)?;
        let sae = dense.into_heads(n_heads, Architecture::Relu, None, device);
        let origin = SaeOrigin {
            model: crate::lm::expand_alias(model).to_string(),
            hook_layer: layer,
            z_convention: crate::lm::ZConvention::TransformerLens,
            keep_bos: false,
        };
        Ok((sae, origin))
    }

    /// Reads the seed fork's state dict (`enc_blocks.{h}.weight [m, d_head]`,
    /// `enc_blocks.{h}.bias`, `dec_blocks.{h}.weight [d_head, m]`, `dec_blocks.{h}.bias`)
    /// from a `.pt`/`.pth` or `.safetensors` file.
    pub fn import_seed(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let file = WeightFile::open(path)?;
        let names = file.names();
        let n_heads = (0..)
            .take_while(|h| names.iter().any(|n| n == &format!("enc_blocks.{h}.weight")))
            .count();
        ensure!(
            n_heads > 0,
            "{}: no 'enc_blocks.0.weight' tensor: not a seed-format SAE",
            path.display()
        );
        let first = file.read("enc_blocks.0.weight")?;
        ensure!(
            first.shape.len() == 2,
            "{}: enc_blocks.0.weight is not a matrix",
            path.display()
        );
        let (m, d) = (first.shape[0], first.shape[1]);
        let (mut enc, mut b_enc, mut dec, mut b_dec) = (vec![], vec![], vec![], vec![]);
        for h in 0..n_heads {
            let we = file.read_shaped(&format!("enc_blocks.{h}.weight"), &[m, d])?;
            enc.extend(crate::lm::load::transpose(&we).data); // [d, m]
            b_enc.extend(
                file.read_shaped(&format!("enc_blocks.{h}.bias"), &[m])?
                    .data,
            );
            let wd = file.read_shaped(&format!("dec_blocks.{h}.weight"), &[d, m])?;
            dec.extend(crate::lm::load::transpose(&wd).data); // [m, d]
            b_dec.extend(
                file.read_shaped(&format!("dec_blocks.{h}.bias"), &[d])?
                    .data,
            );
        }
        Ok(Self {
            config: SaeConfig {
                n_heads,
                d_head: d,
                features_per_head: m,
                architecture: Architecture::Relu,
            },
            w_enc: tensor(enc, [n_heads, d, m], device),
            b_enc: tensor(b_enc, [n_heads, m], device),
            w_dec: tensor(dec, [n_heads, m, d], device),
            b_dec: tensor(b_dec, [n_heads, d], device),
            input_scale: vec![1.0; n_heads],
            log_threshold: None,
            batch_threshold: None,
            reads_bos: false,
        })
    }
}

/// A dense SAELens-layout SAE as read from a file: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
/// `W_dec [d_sae, d_in]`, `b_dec [d_in]`, with `b_dec` already folded out of the input.
struct DenseSae {
    d_in: usize,
    d_sae: usize,
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
}

impl DenseSae {
    /// Reads the four tensors; with `apply_b_dec` (SAELens' `apply_b_dec_to_input`), the
    /// input's `- b_dec` is folded into `b_enc`:
    /// `act((x - b_dec) W_enc + b_enc) = act(x W_enc + (b_enc - b_dec W_enc))`.
    fn read(
        file: &WeightFile,
        d_in: usize,
        d_sae: usize,
        apply_b_dec: bool,
    ) -> anyhow::Result<Self> {
        let w_enc = file.read_shaped("W_enc", &[d_in, d_sae])?.data;
        let mut b_enc = file.read_shaped("b_enc", &[d_sae])?.data;
        let w_dec = file.read_shaped("W_dec", &[d_sae, d_in])?.data;
        let b_dec = file.read_shaped("b_dec", &[d_in])?.data;
        if apply_b_dec {
            for (j, &bd) in b_dec.iter().enumerate() {
                if bd != 0.0 {
                    let row = &w_enc[j * d_sae..(j + 1) * d_sae];
                    for (b, w) in b_enc.iter_mut().zip(row) {
                        *b -= bd * w;
                    }
                }
            }
        }
        Ok(Self {
            d_in,
            d_sae,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        })
    }

    /// Our stacked layout: `n_heads` blocks if the matrices are block-diagonal over them,
    /// else one dense block.
    fn into_heads(
        self,
        n_heads: usize,
        architecture: Architecture,
        threshold: Option<Vec<f32>>,
        device: &Device,
    ) -> BlockDiagSae {
        let (d_in, d_sae, w_enc, w_dec) = (self.d_in, self.d_sae, &self.w_enc, &self.w_dec);
        let block = n_heads > 1
            && d_in % n_heads == 0
            && d_sae % n_heads == 0
            && is_block_diagonal(w_enc, w_dec, d_in, d_sae, n_heads);
        let h = if block { n_heads } else { 1 };
        let (d, m) = (d_in / h, d_sae / h);
        let mut enc = vec![0f32; h * d * m];
        let mut dec = vec![0f32; h * m * d];
        for head in 0..h {
            for j in 0..d {
                for i in 0..m {
                    enc[(head * d + j) * m + i] = w_enc[(head * d + j) * d_sae + head * m + i];
                    dec[(head * m + i) * d + j] = w_dec[(head * m + i) * d_in + head * d + j];
                }
            }
        }
        BlockDiagSae {
            config: SaeConfig {
                n_heads: h,
                d_head: d,
                features_per_head: m,
                architecture,
            },
            w_enc: tensor(enc, [h, d, m], device),
            b_enc: tensor(self.b_enc, [h, m], device),
            w_dec: tensor(dec, [h, m, d], device),
            b_dec: tensor(self.b_dec, [h, d], device),
            input_scale: vec![1.0; h],
            log_threshold: threshold.map(|t| {
                tensor(
                    t.iter().map(|v| v.max(1e-30).ln()).collect(),
                    [h, m],
                    device,
                )
            }),
            batch_threshold: None,
            reads_bos: false,
        }
    }
}

/// The integer `key` of the JSON config read from `path`.
fn config_usize(cfg: &serde_json::Value, path: &Path, key: &str) -> anyhow::Result<usize> {
    cfg.get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .with_context(|| format!("{}: missing integer '{key}'", path.display()))
}

/// `NAME_cfg.json` beside Kissane et al.'s `NAME.pt`.
pub fn kissane_config_path(pt: &Path) -> std::path::PathBuf {
    let stem = pt.file_stem().unwrap_or_default().to_string_lossy();
    pt.with_file_name(format!("{stem}_cfg.json"))
}

/// The layer of an attention hook_z hook name: `blocks.L.attn.hook_z` (TransformerLens) or
/// `blocks.L.hook_z` (SAELens' ids for it).
pub fn hook_z_layer(hook_name: &str) -> Option<usize> {
    let rest = hook_name.strip_prefix("blocks.")?;
    let (layer, hook) = rest.split_once('.')?;
    matches!(hook, "attn.hook_z" | "hook_z")
        .then(|| layer.parse().ok())
        .flatten()
}

/// True when every entry outside the `n_heads` diagonal blocks is zero.
fn is_block_diagonal(
    w_enc: &[f32],
    w_dec: &[f32],
    d_in: usize,
    d_sae: usize,
    n_heads: usize,
) -> bool {
    let (d, m) = (d_in / n_heads, d_sae / n_heads);
    let enc_ok = (0..d_in).all(|r| {
        let head = r / d;
        w_enc[r * d_sae..(r + 1) * d_sae]
            .iter()
            .enumerate()
            .all(|(c, &v)| v == 0.0 || c / m == head)
    });
    enc_ok
        && (0..d_sae).all(|r| {
            let head = r / m;
            w_dec[r * d_in..(r + 1) * d_in]
                .iter()
                .enumerate()
                .all(|(c, &v)| v == 0.0 || c / d == head)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_z_layers_are_read_from_hook_names() {
        assert_eq!(hook_z_layer("blocks.5.attn.hook_z"), Some(5));
        assert_eq!(hook_z_layer("blocks.11.hook_z"), Some(11));
        assert_eq!(hook_z_layer("blocks.5.hook_resid_pre"), None);
        assert_eq!(hook_z_layer("blocks.x.attn.hook_z"), None);
        assert_eq!(hook_z_layer("blocks.5.attn.hook_z.extra"), None);
    }

    #[test]
    fn foreign_saelens_folders_say_where_they_were_trained_if_hook_z() {
        let dir = std::env::temp_dir().join(format!("attn-saes-origin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let origin = |cfg: serde_json::Value| {
            std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
            BlockDiagSae::saelens_origin(&dir).unwrap()
        };
        let o = origin(serde_json::json!({
            "model_name": "gpt2-small", "hook_name": "blocks.5.attn.hook_z", "d_in": 768
        }))
        .unwrap();
        assert_eq!(
            (o.model.as_str(), o.hook_layer),
            ("openai-community/gpt2", 5)
        );
        assert_eq!(o.z_convention, crate::lm::ZConvention::TransformerLens);
        // Older SAELens configs name the hook `hook_point`.
        let o = origin(serde_json::json!({
            "model_name": "gelu-2l", "hook_point": "blocks.1.attn.hook_z"
        }))
        .unwrap();
        assert_eq!(
            (o.model.as_str(), o.hook_layer),
            ("NeelNanda/GELU_2L512W_C4_Code", 1)
        );
        // ARENA's attention SAEs (`callummcdougall/arena-demos-attn2l`) name
        // TransformerLens' attention-only demo model.
        let o = origin(serde_json::json!({
            "model_name": "attn-only-2l-demo", "hook_name": "blocks.0.attn.hook_z"
        }))
        .unwrap();
        assert_eq!(
            (o.model.as_str(), o.hook_layer),
            ("NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr", 0)
        );
        assert_eq!(
            origin(serde_json::json!({
                "model_name": "gpt2-small", "hook_name": "blocks.5.hook_resid_pre"
            })),
            None
        );
        assert_eq!(
            origin(serde_json::json!({"hook_name": "blocks.5.attn.hook_z"})),
            None
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
