//! The LM's outputs a dashboard build reads that do not depend on the SAE (the scanned
//! windows' hook_z, attention patterns and value vectors; hook_z and the loss's gradient at
//! it over the effect windows), kept in a directory beside an activation cache so that the
//! dashboards of the other SAEs trained from it (a sweep's runs) skip the LM.
//!
//! `DIR/dashboard-lm-HASH/` holds `key.json` (what the outputs are of: format, attn-saes
//! version, model, layer, z convention, the passes' sizes, the windows' digest; HASH is a
//! digest of it), `scan-NNNNN.safetensors` per pass of the scan and
//! `effect-NNNNN.safetensors` per pass of the effect estimate. A build computes its first
//! file's outputs anyway: the directory's files are read only when they equal those to the
//! bit (the same weights on the same kind of device); otherwise every file is recomputed
//! and replaced. A file that cannot be written is reported, not an error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{NamedArray, write_json, write_safetensors};
use crate::lm::ZConvention;
use crate::lm::weights::WeightFile;

/// Bumped when what the files hold changes.
const FORMAT: u32 = 1;

/// Past this many bytes (long windows' attention patterns grow as the square of their
/// length) the outputs are not kept.
pub const KEEP_LIMIT_BYTES: u64 = 4 << 30;

/// What kept outputs are of.
#[derive(Serialize)]
pub struct KeptKey {
    pub model: String,
    pub layer: usize,
    pub z_convention: ZConvention,
    /// Windows per pass of the scan and of the effect estimate.
    pub scan_windows: usize,
    pub effect_windows: usize,
    /// The windows' token ids.
    #[serde(skip)]
    pub windows: Vec<Vec<u32>>,
}

/// `key.json` as read back ([`Kept::find_effects`]).
#[derive(Deserialize)]
struct SavedKey {
    format: u32,
    version: String,
    model: String,
    layer: usize,
    z_convention: ZConvention,
    effect_windows: usize,
    n_windows: usize,
    context_size: usize,
    windows_sha256: String,
}

#[derive(Serialize)]
struct KeyFile<'a> {
    format: u32,
    version: &'a str,
    #[serde(flatten)]
    key: &'a KeptKey,
    n_windows: usize,
    context_size: usize,
    windows_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Nothing computed yet: the first file decides.
    Unchecked,
    /// The first file equalled a fresh computation: files are read.
    Reading,
    /// Every file is computed and written.
    Writing { replaced: bool },
    /// Nothing kept (none asked for, too large, or a write failed).
    Off,
}

/// Kept LM outputs in one directory, or none ([`Kept::off`]).
pub struct Kept {
    dir: PathBuf,
    state: State,
    /// Whether files are written (and replaced); a reader ([`Kept::find_effects`]) only
    /// reads.
    writes: bool,
    files_read: usize,
    files_written: usize,
    bytes: u64,
    why_not: Option<String>,
}

impl Kept {
    /// Nothing kept: [`Kept::get`] computes every time.
    pub fn off() -> Self {
        Self {
            dir: PathBuf::new(),
            state: State::Off,
            writes: true,
            files_read: 0,
            files_written: 0,
            bytes: 0,
            why_not: None,
        }
    }

    /// Outputs of `key` kept in a directory in `base`; `bytes`: about what they take.
    pub fn in_dir(base: &Path, key: &KeptKey, bytes: u64) -> anyhow::Result<Self> {
        let file = KeyFile {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION"),
            key,
            n_windows: key.windows.len(),
            context_size: key.windows.first().map_or(0, Vec::len),
            windows_sha256: windows_sha256(&key.windows),
        };
        let digest = crate::files::sha256_hex(&serde_json::to_vec(&file)?);
        let dir = base.join(format!("dashboard-lm-{}", &digest[..16]));
        let mut kept = Self {
            dir,
            state: State::Unchecked,
            ..Self::off()
        };
        if bytes > KEEP_LIMIT_BYTES {
            kept.state = State::Off;
            kept.why_not = Some(format!(
                "they would take {:.1} GB (more than {} GB)",
                bytes as f64 / 1e9,
                KEEP_LIMIT_BYTES >> 30
            ));
        } else if !kept.dir.join("key.json").is_file() {
            // Written first, so that the directory says what it holds.
            if let Err(e) = std::fs::create_dir_all(&kept.dir)
                .map_err(anyhow::Error::from)
                .and_then(|_| write_json(&kept.dir.join("key.json"), &file))
            {
                kept.fail(e);
            }
        }
        Ok(kept)
    }

    /// The effect estimate's kept LM outputs (hook_z and the loss's gradient at it, per pass
    /// of [`crate::live::WINDOWS_PER_PASS`] windows) of a dashboard whose windows begin
    /// with `windows`, of this model, layer and z convention, in a directory in `base`, for
    /// reading alone: `dashboard_windows(n)` gives the first `n` windows the dashboards
    /// would scan, against which a directory's windows are checked (by their digest). None
    /// where no directory holds them. As for a build, its files are read only once the
    /// first one asked for equals a fresh computation to the bit.
    pub fn find_effects(
        base: &Path,
        (model, layer, z_convention): (&str, usize, ZConvention),
        windows: &[Vec<u32>],
        dashboard_windows: &mut dyn FnMut(usize) -> anyhow::Result<Vec<Vec<u32>>>,
    ) -> Option<Self> {
        let context = windows.first().map_or(0, Vec::len);
        let entries = std::fs::read_dir(base).ok()?;
        let dirs = entries.flatten().map(|e| e.path()).filter(|p| {
            (p.file_name().and_then(|n| n.to_str())).is_some_and(|n| n.starts_with("dashboard-lm-"))
        });
        for dir in dirs {
            let Ok(key) = crate::files::read_json::<SavedKey>(&dir.join("key.json")) else {
                continue;
            };
            let fits = key.format == FORMAT
                && key.version == env!("CARGO_PKG_VERSION")
                && (key.model.as_str(), key.layer, key.z_convention)
                    == (model, layer, z_convention)
                && key.effect_windows == crate::live::WINDOWS_PER_PASS
                && key.context_size == context
                && key.n_windows >= windows.len();
            if !fits {
                continue;
            }
            let Ok(all) = dashboard_windows(key.n_windows) else {
                continue;
            };
            if all.starts_with(windows) && windows_sha256(&all) == key.windows_sha256 {
                return Some(Self {
                    dir,
                    state: State::Unchecked,
                    writes: false,
                    ..Self::off()
                });
            }
        }
        None
    }

    /// hook_z and the summed loss's gradient at it over `chunk`, the windows of the effect
    /// estimate's pass `pass` ([`crate::live::lm_gradient`]), through the kept files.
    pub fn lm_gradient(
        &mut self,
        loaded: &crate::lm::LoadedModel,
        (layer, z_convention): (usize, ZConvention),
        pass: usize,
        chunk: &[Vec<u32>],
    ) -> anyhow::Result<[burn::tensor::Tensor<4>; 2]> {
        let mc = &loaded.transformer.config;
        let t = chunk.first().map_or(0, Vec::len);
        let shape = vec![chunk.len(), t, mc.n_heads, mc.d_head];
        let shapes = [("hook_z", shape.clone()), ("grad", shape.clone())];
        let host = self.get(&format!("effect-{pass:05}"), &shapes, &mut || {
            let lm = crate::live::lm_gradient(loaded, layer, z_convention, chunk)?;
            lm.into_iter().map(crate::files::host_vec).collect()
        })?;
        let device = loaded.transformer.device();
        let mut tensors = host.into_iter().map(|v| {
            burn::tensor::Tensor::<4>::from_data(
                burn::tensor::TensorData::new(v, shape.clone()),
                device,
            )
        });
        match (tensors.next(), tensors.next()) {
            (Some(z), Some(grad)) => Ok([z, grad]),
            _ => anyhow::bail!("the LM's outputs are not hook_z and its gradient"),
        }
    }

    /// The arrays `shapes` names of the file `name` once this build's files can be trusted
    /// (read after the first one's check, or written by this build), for a later pass over
    /// the same outputs; none otherwise. Not counted among the files read.
    pub fn saved(&self, name: &str, shapes: &[(&str, Vec<usize>)]) -> Option<Vec<Vec<f32>>> {
        matches!(self.state, State::Reading | State::Writing { .. })
            .then(|| read(&self.dir.join(format!("{name}.safetensors")), shapes))
            .flatten()
    }

    fn fail(&mut self, e: anyhow::Error) {
        self.state = State::Off;
        self.why_not = Some(format!("{e:#}"));
    }

    /// The arrays `shapes` names of the file `name`: read where the directory holds them
    /// (once its first file has equalled a fresh computation), else `fresh()`'s (in the
    /// order of `shapes`), written to the directory.
    pub fn get(
        &mut self,
        name: &str,
        shapes: &[(&str, Vec<usize>)],
        fresh: &mut dyn FnMut() -> anyhow::Result<Vec<Vec<f32>>>,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let path = self.dir.join(format!("{name}.safetensors"));
        if self.state == State::Reading
            && let Some(saved) = read(&path, shapes)
        {
            self.files_read += 1;
            return Ok(saved);
        }
        let computed = fresh()?;
        anyhow::ensure!(
            computed.len() == shapes.len()
                && (computed.iter().zip(shapes))
                    .all(|(v, (_, s))| v.len() == s.iter().product::<usize>()),
            "{name}: the LM's outputs are not of the shapes expected"
        );
        if self.state == State::Unchecked {
            self.state = match read(&path, shapes) {
                Some(saved) if same_bits(&saved, &computed) => {
                    self.files_read += 1;
                    State::Reading
                }
                // A reader leaves other outputs as they are, and reads none of them.
                _ if !self.writes => State::Off,
                Some(_) => {
                    // Another device's or model's: none of the files can be read.
                    for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                        let p = entry.path();
                        if p.extension().is_some_and(|e| e == "safetensors") {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    State::Writing { replaced: true }
                }
                None => State::Writing { replaced: false },
            };
            if self.state == State::Reading {
                return Ok(computed);
            }
        }
        if self.state != State::Off && self.writes {
            let arrays: Vec<NamedArray> = (shapes.iter().zip(&computed))
                .map(|((n, s), v)| NamedArray::new(*n, s.clone(), v.clone()))
                .collect();
            match write_safetensors(&path, &arrays, None) {
                Ok(()) => {
                    self.files_written += 1;
                    self.bytes += computed.iter().map(|v| v.len() as u64 * 4).sum::<u64>();
                }
                Err(e) => self.fail(e),
            }
        }
        Ok(computed)
    }

    /// What happened, in words (none where nothing was asked for).
    pub fn notice(&self) -> Option<String> {
        let dir = self.dir.display();
        if let Some(why) = &self.why_not {
            return Some(format!(
                "the LM's outputs over the dashboard windows were not kept in {dir}: {why}"
            ));
        }
        let mb = self.bytes as f64 / 1e6;
        match self.state {
            State::Off | State::Unchecked => None,
            State::Reading if self.files_written == 0 => Some(format!(
                "the LM's outputs over the dashboard windows read from {dir} ({})",
                files(self.files_read)
            )),
            State::Reading => Some(format!(
                "the LM's outputs over the dashboard windows read from {dir} ({}; {} more \
                 written, {mb:.1} MB)",
                files(self.files_read),
                self.files_written
            )),
            State::Writing { replaced } => Some(format!(
                "the LM's outputs over the dashboard windows {} {dir} ({mb:.1} MB): the \
                 dashboards of other SAEs from this cache read them",
                match replaced {
                    true => "were of another model or device: recomputed and replaced in",
                    false => "kept in",
                }
            )),
        }
    }
}

/// The digest `key.json` records of the windows' token ids.
fn windows_sha256(windows: &[Vec<u32>]) -> String {
    let ids: Vec<u8> = (windows.iter().flatten())
        .flat_map(|i| i.to_le_bytes())
        .collect();
    crate::files::sha256_hex(&ids)
}

fn files(n: usize) -> String {
    match n {
        1 => "1 file".into(),
        n => format!("{n} files"),
    }
}

/// The arrays of a kept file, where it holds them all at the shapes asked for.
fn read(path: &Path, shapes: &[(&str, Vec<usize>)]) -> Option<Vec<Vec<f32>>> {
    if !path.is_file() {
        return None;
    }
    let file = WeightFile::open(path).ok()?;
    shapes
        .iter()
        .map(|(name, shape)| {
            let a = file.read(name).ok()?;
            (a.shape == *shape).then_some(a.data)
        })
        .collect()
}

fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}
