//! Labels a researcher gives features ("copies the name after 'Mr'"), kept in a small JSON
//! file beside the dashboard file (`dashboard.labels.json` beside `dashboard.safetensors`),
//! so that rebuilding the dashboards keeps them and the dashboard file itself is never
//! rewritten. The file records the sha256 of the SAE weights the labels describe (from the
//! dashboard's `built_from`): labels written for another SAE (a run retrained in the same
//! directory) are refused, not shown against features they do not describe.
//!
//! ```json
//! {"format": "attn-saes feature labels", "version": 1, "sae_sha256": "…",
//!  "labels": [{"head": 3, "feature": 406, "label": "induction: copies the name"}]}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::DashboardMeta;

/// The `format` field of a labels file.
pub const FORMAT: &str = "attn-saes feature labels";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// The longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 500;
/// The largest labels file read (a browser loads it too).
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Why labels cannot be read, set or written (the file, when there is one, named).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelsError(pub String);

impl std::fmt::Display for LabelsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabelsError {}

type Result<T> = std::result::Result<T, LabelsError>;

/// Fails with the message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(LabelsError(format!($($msg)+)));
        }
    };
}

/// The labels file of a dashboard file: its name with `.labels.json` for its extension.
pub fn labels_path(dashboard: &Path) -> PathBuf {
    dashboard.with_extension("labels.json")
}

/// The sha256 of the SAE weights a dashboard was built from (`sae.safetensors` in its
/// `built_from`), when it records one.
pub fn sae_sha256(meta: &DashboardMeta) -> Option<String> {
    let sae = &meta.built_from.as_ref()?.sae;
    let weights = sae.iter().find(|r| r.name.ends_with(".safetensors"))?;
    Some(weights.sha256.clone())
}

/// A dashboard's feature labels: at most one per `(head, feature)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    /// The SAE the labels describe (see [`sae_sha256`]), when known.
    pub sae_sha256: Option<String>,
    /// Heads and features per head of the dashboard.
    shape: (usize, usize),
    labels: BTreeMap<(usize, usize), String>,
}

#[derive(Serialize, Deserialize)]
struct LabelsFile {
    format: String,
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sae_sha256: Option<String>,
    labels: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    head: usize,
    feature: usize,
    label: String,
}

/// `label` with line breaks, tabs and other control characters made spaces, then trimmed; an
/// error if it is too long.
fn clean(label: &str) -> Result<String> {
    let spaced: String = (label.chars())
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let label = spaced.trim().to_string();
    let n = label.chars().count();
    ensure!(
        n <= MAX_LABEL_CHARS,
        "a label of {n} characters: at most {MAX_LABEL_CHARS}"
    );
    Ok(label)
}

impl Labels {
    /// No labels yet, for the SAE of the dashboard `meta` describes.
    pub fn new(meta: &DashboardMeta) -> Self {
        Self {
            sae_sha256: sae_sha256(meta),
            shape: (meta.sae.n_heads, meta.sae.features_per_head),
            labels: BTreeMap::new(),
        }
    }

    /// Reads a labels file's bytes for the dashboard `meta` describes: an error (nothing
    /// taken) for another format or a newer version, labels for another SAE, a head or
    /// feature the dashboard lacks, a feature labelled twice or a label too long.
    pub fn parse(bytes: &[u8], meta: &DashboardMeta) -> Result<Self> {
        ensure!(
            bytes.len() <= MAX_FILE_BYTES,
            "{} bytes: a labels file is at most {MAX_FILE_BYTES}",
            bytes.len()
        );
        let file: LabelsFile = serde_json::from_slice(bytes)
            .map_err(|e| LabelsError(format!("not an attn-saes labels file: {e}")))?;
        ensure!(
            file.format == FORMAT,
            "format {:?}: not an attn-saes labels file ({FORMAT:?})",
            file.format
        );
        ensure!(
            file.version <= VERSION,
            "version {}: written by a newer attn-saes (this one reads version {VERSION})",
            file.version
        );
        let mut labels = Self::new(meta);
        if let (Some(theirs), Some(ours)) = (&file.sae_sha256, &labels.sae_sha256) {
            ensure!(
                theirs == ours,
                "the labels are for another SAE (sha256 {}…; the dashboard's is {}…): a run \
                 retrained in the same directory, or dashboards built from a checkpoint, have \
                 other features; move the file away to label these afresh",
                theirs.chars().take(12).collect::<String>(),
                ours.chars().take(12).collect::<String>()
            );
        }
        labels.sae_sha256 = labels.sae_sha256.or(file.sae_sha256);
        for e in file.labels {
            let (h, f) = (e.head, e.feature);
            labels.check(h, f)?;
            let label = clean(&e.label)
                .map_err(|why| LabelsError(format!("head {h} feature {f}: {why}")))?;
            ensure!(!label.is_empty(), "head {h} feature {f}: an empty label");
            ensure!(
                labels.labels.insert((h, f), label).is_none(),
                "head {h} feature {f} is labelled twice"
            );
        }
        Ok(labels)
    }

    /// The labels in `path` for the dashboard `meta` describes ([`Self::parse`]), none when
    /// there is no such file.
    pub fn read(path: &Path, meta: &DashboardMeta) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes, meta)
                .map_err(|e| LabelsError(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new(meta)),
            Err(e) => Err(LabelsError(format!("reading {}: {e}", path.display()))),
        }
    }

    /// The file's JSON.
    pub fn to_json(&self) -> String {
        let file = LabelsFile {
            format: FORMAT.into(),
            version: VERSION,
            sae_sha256: self.sae_sha256.clone(),
            labels: (self.labels.iter())
                .map(|(&(head, feature), label)| Entry {
                    head,
                    feature,
                    label: label.clone(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&file).expect("labels serialise") + "\n"
    }

    /// Writes the labels to `path` whole or not at all (a temporary file beside it, then
    /// renamed over it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let failed = |e: std::io::Error| LabelsError(format!("writing {}: {e}", path.display()));
        std::fs::write(&tmp, self.to_json()).map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }

    /// An error for a head or feature the dashboard lacks.
    pub fn check(&self, head: usize, feature: usize) -> Result<()> {
        let (heads, features) = self.shape;
        ensure!(head < heads, "head {head}: the dashboard has {heads} heads");
        ensure!(
            feature < features,
            "feature {feature}: the dashboard has {features} features per head"
        );
        Ok(())
    }

    /// The label of `feature` of `head`, if it has one.
    pub fn get(&self, head: usize, feature: usize) -> Option<&str> {
        self.labels.get(&(head, feature)).map(String::as_str)
    }

    /// Labels `feature` of `head` (trimmed, line breaks made spaces; an empty label removes
    /// it). Returns whether anything changed; an error for a feature the dashboard lacks or
    /// a label too long.
    pub fn set(&mut self, head: usize, feature: usize, label: &str) -> Result<bool> {
        self.check(head, feature)?;
        let label = clean(label)?;
        let before = match label.is_empty() {
            true => self.labels.remove(&(head, feature)),
            false => self.labels.insert((head, feature), label.clone()),
        };
        Ok(before.as_deref() != Some(label.as_str()).filter(|l| !l.is_empty()))
    }

    /// Every label, `(head, feature, label)`, by head then feature.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize, &str)> {
        self.labels.iter().map(|(&(h, f), l)| (h, f, l.as_str()))
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}
