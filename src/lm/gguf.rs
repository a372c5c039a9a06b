//! LM weights: GGUF reader (header, metadata, tensors, dequantisation, tokenizer).
//!
//! [`GgufFile::open`] parses and validates the header, the metadata key/value
//! pairs and the tensor table of a GGUF (version 2 or 3, little-endian) file.
//! Tensor data is not kept in memory: [`GgufFile::tensor`] reads one tensor's
//! bytes with a seek and dequantises them to `f32` ([`SUPPORTED_TYPES`]: the float
//! types, Q4_0 to Q8_0, the K-quants Q2_K to Q6_K, IQ4_NL and IQ4_XS). [`GgufFile::tokenizer`] rebuilds a Hugging
//! Face `tokenizers` tokenizer from the `tokenizer.ggml.*` metadata
//! (byte-level BPE, `tokenizer.ggml.model = "gpt2"`).
//!
//! Every error carries the path of the file it came from; a truncated or
//! corrupt file gives an error, never a panic, and no allocation is sized
//! from a count in the file before that count has been checked against the
//! file's length.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::dequant::{self, BLOCK_TYPES};

/// Default alignment of the tensor data section (`general.alignment`).
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// Tensor types [`GgufFile::tensor`] can dequantise: the float types, then the block types
/// of `dequant` (the K-quants of `Q4_K_M`-style files among them).
pub const SUPPORTED_TYPES: [GgmlType; 15] = {
    let mut all = [GgmlType::F32; 15];
    all[1] = GgmlType::F16;
    all[2] = GgmlType::BF16;
    let mut i = 0;
    while i < BLOCK_TYPES.len() {
        all[3 + i] = BLOCK_TYPES[i];
        i += 1;
    }
    all
};

/// Llama 3's pre-tokenizer split (its tokenizer.json's, llama.cpp's `LLAMA3`): English
/// contractions in either case, letters with at most one other character before them,
/// digits in groups of up to three, other symbols with a space before them, line breaks,
/// and spaces (all but the last of a run, which goes with what follows).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's (its tokenizer.json's, llama.cpp's `QWEN2`): Llama 3's with digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (guards the recursion).
const MAX_ARRAY_DEPTH: u32 = 16;
/// Largest `Vec` capacity reserved up front from a count read in the file.
const MAX_PREALLOC: usize = 1 << 16;

/// Errors from reading a GGUF file. Each carries the file's path.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: I/O error: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")", .path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{}: unsupported GGUF version {version} (supported: 2, 3){hint}", .path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{}: truncated file: {what} needs {needed} bytes at offset {offset}, but the file is {file_len} bytes long",
        .path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{}: malformed GGUF: {msg}", .path.display())]
    Malformed { path: PathBuf, msg: String },
    #[error("{}: no tensor named '{tensor}'", .path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{}: tensor '{tensor}' has unsupported type {type_name} (supported: {})",
        .path.display(),
        supported_type_names()
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        type_name: String,
    },
    #[error("{}: missing metadata key '{key}'", .path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key '{key}' is {found}, expected {expected}", .path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: unsupported tokenizer (tokenizer.ggml.model = '{model}', tokenizer.ggml.pre = '{pre}'); supported: model 'gpt2' (byte-level BPE) with pre 'smollm', 'llama-bpe', 'qwen2', 'gpt2' or 'default'", .path.display())]
    UnsupportedTokenizer {
        path: PathBuf,
        model: String,
        pre: String,
    },
    #[error("{}: cannot build tokenizer: {msg}", .path.display())]
    Tokenizer { path: PathBuf, msg: String },
}

fn supported_type_names() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits, as `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number (float or integer), as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type ("u32", "string", "array", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }
}

/// ggml tensor types, with their ids as stored in GGUF.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    /// An id this reader does not know.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        use GgmlType::*;
        match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            40 => NVFP4,
            41 => Q1_0,
            other => Other(other),
        }
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
            NVFP4 => 40,
            Q1_0 => 41,
            Other(id) => id,
        }
    }

    /// ggml's name for the type ("Q4_K", ...); `TYPE_<id>` for unknown ids.
    pub fn name(self) -> String {
        use GgmlType::*;
        let s = match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
            Other(id) => return format!("TYPE_{id}"),
        };
        s.to_string()
    }

    /// `(elements per block, bytes per block)`, as in ggml's type traits;
    /// `None` for unknown ids.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        use GgmlType::*;
        Some(match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (256, 56),
            BF16 => (1, 2),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            MXFP4 => (32, 17),
            NVFP4 => (64, 36),
            Q1_0 => (128, 18),
            Other(_) => return None,
        })
    }

    pub fn is_supported(self) -> bool {
        SUPPORTED_TYPES.contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as stored: fastest-varying first (ggml's `ne`).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (slowest-varying first), i.e. `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements; checked against overflow by [`GgufFile::open`].
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of the data in bytes; `None` for an unknown type.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, size) = self.ggml_type.block_layout()?;
        Some(self.n_elements() / block * size)
    }
}

/// A parsed GGUF file: header, metadata and tensor table. Tensor data is
/// read from disk on demand.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    path: PathBuf,
    alignment: u64,
    data_start: u64,
    file_len: u64,
    index: HashMap<String, usize>,
}

/// Bounds-checked little-endian reader over the file, tracking the offset.
struct Reader<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl<'p, R: Read> Reader<'p, R> {
    fn io(&self, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn malformed(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn ensure(&self, needed: u64, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        if needed > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos,
                needed,
                file_len: self.len,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        self.ensure(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(&|| format!("length of {}", what()))?;
        self.ensure(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| {
            self.malformed(format!(
                "{} is not valid UTF-8 (ending at offset {})",
                what(),
                self.pos
            ))
        })
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the
    /// rest of the file.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(self.malformed(format!(
                "{} claims {count} entries at offset {}, more than the remaining {} bytes can hold",
                what(),
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn value(
        &mut self,
        type_id: u32,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue, GgufError> {
        Ok(match type_id {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(self.malformed(format!(
                        "{} is a bool with byte value {b} (expected 0 or 1)",
                        what()
                    )));
                }
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!(
                        "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                let elem_type = self.u32(&|| format!("element type of {}", what()))?;
                let min_size = value_min_size(elem_type).ok_or_else(|| {
                    self.malformed(format!("{} has unknown element type {elem_type}", what()))
                })?;
                let count = self.u64(&|| format!("length of {}", what()))?;
                self.check_count(count, min_size, what)?;
                let mut items = Vec::with_capacity((count as usize).min(MAX_PREALLOC));
                for i in 0..count {
                    items.push(self.value(elem_type, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.malformed(format!("{} has unknown value type {other}", what())));
            }
        })
    }
}

/// Smallest encoded size of a value of GGUF value type `type_id`, or `None`
/// for an unknown type.
fn value_min_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses a GGUF header of a file of `len` bytes read from `inner`
/// (positioned at the start of the file); `path` names it in errors and is
/// where [`GgufFile::tensor`] reads the data from.
fn parse<R: Read>(path: &Path, inner: R, len: u64) -> Result<GgufFile, GgufError> {
    read_header(&mut Reader {
        inner,
        pos: 0,
        len,
        path,
    })
}

fn read_header<R: Read>(r: &mut Reader<'_, R>) -> Result<GgufFile, GgufError> {
    let path = r.path.to_path_buf();
    let magic: [u8; 4] = r.array(&|| "magic".into())?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic { path, found: magic });
    }
    let version = r.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        let hint = if matches!(version.swap_bytes(), 2 | 3) {
            " (this looks like a big-endian file, which is not supported)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion {
            path,
            version,
            hint,
        });
    }
    let n_tensors = r.u64(&|| "tensor count".into())?;
    let n_kv = r.u64(&|| "metadata count".into())?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a
    // tensor info at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    r.check_count(n_kv, 13, &|| "metadata count".into())?;
    r.check_count(n_tensors, 24, &|| "tensor count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let type_id = r.u32(&|| format!("type of metadata '{key}'"))?;
        let value = r.value(type_id, 0, &|| format!("metadata '{key}'"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.malformed(format!("duplicate metadata key '{key}'")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(r.malformed(format!(
                    "general.alignment must be a power of two, got {v:?}"
                )));
            }
        },
    };

    let mut tensors = Vec::with_capacity((n_tensors as usize).min(MAX_PREALLOC));
    let mut index = HashMap::new();
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = r.u32(&|| format!("n_dims of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(r.malformed(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let ggml_type = GgmlType::from_id(r.u32(&|| format!("type of tensor '{name}'"))?);
        let offset = r.u64(&|| format!("data offset of tensor '{name}'"))?;
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(r.malformed(format!("duplicate tensor name '{name}'")));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let data_start = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.malformed("data section offset overflows"))?;

    let file = GgufFile {
        version,
        metadata,
        tensors,
        path,
        alignment,
        data_start,
        file_len: r.len,
        index,
    };
    file.validate_tensors()?;
    Ok(file)
}

impl GgufFile {
    /// Parses and validates the header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (file, len) = crate::vfs::open(path).map_err(io)?;
        parse(path, file, len)
    }

    fn malformed(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Checks element counts, block alignment, and that each tensor's data
    /// lies inside the file without overlapping another.
    fn validate_tensors(&self) -> Result<(), GgufError> {
        let mut ranges = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let mut n: u64 = 1;
            for &d in &t.dims {
                n = n
                    .checked_mul(d)
                    .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
                    .ok_or_else(|| {
                        self.malformed(format!(
                            "tensor '{}' has too many elements (dims {:?})",
                            t.name, t.dims
                        ))
                    })?;
            }
            if t.offset % self.alignment != 0 {
                return Err(self.malformed(format!(
                    "tensor '{}' data offset {} is not a multiple of the alignment {}",
                    t.name, t.offset, self.alignment
                )));
            }
            let start = self.data_start.checked_add(t.offset);
            let Some((block, size)) = t.ggml_type.block_layout() else {
                // Unknown type: its size is unknown, so only the start can be checked.
                if start.is_none_or(|s| s > self.file_len) {
                    return Err(self.malformed(format!(
                        "tensor '{}' data offset {} is past the end of the file",
                        t.name, t.offset
                    )));
                }
                continue;
            };
            let ne0 = t.dims.first().copied().unwrap_or(1);
            if ne0 % block != 0 {
                return Err(self.malformed(format!(
                    "tensor '{}' of type {} has a row length {ne0} that is not a multiple of the block size {block}",
                    t.name, t.ggml_type
                )));
            }
            let n_bytes = (n / block).checked_mul(size);
            let end = start.zip(n_bytes).and_then(|(s, b)| s.checked_add(b));
            match (start, end) {
                (Some(start), Some(end)) if end <= self.file_len => {
                    if end > start {
                        ranges.push((start, end, &t.name));
                    }
                }
                _ => {
                    return Err(self.malformed(format!(
                        "tensor '{}' data (offset {}, {} bytes of {}) runs past the end of the file ({} bytes, data section at {})",
                        t.name,
                        t.offset,
                        n_bytes.map_or_else(|| "too many".to_string(), |b| b.to_string()),
                        t.ggml_type,
                        self.file_len,
                        self.data_start
                    )));
                }
            }
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(self.malformed(format!(
                    "data of tensors '{}' and '{}' overlap",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Row-major shape and dequantised `f32` data of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let unsupported = || GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            type_name: info.ggml_type.name(),
        };
        if !info.ggml_type.is_supported() {
            return Err(unsupported());
        }
        let bytes = self.read_data(info)?;
        let n = info.n_elements() as usize;
        let data = match info.ggml_type {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            ty => dequant::dequantize(ty, &bytes, n).ok_or_else(unsupported)?,
        };
        Ok((info.shape(), data))
    }

    /// Table entry and raw (still quantised) data bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&GgufTensorInfo, Vec<u8>), GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        Ok((info, self.read_data(info)?))
    }

    fn read_data(&self, info: &GgufTensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let n_bytes = info.n_bytes().ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            type_name: info.ggml_type.name(),
        })?;
        let start = self.data_start.saturating_add(info.offset);
        let (mut file, len) = crate::vfs::open(&self.path).map_err(io)?;
        if start.saturating_add(n_bytes) > len {
            return Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor '{}' (file changed since open?)", info.name),
                offset: start,
                needed: n_bytes,
                file_len: len,
            });
        }
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = vec![0u8; n_bytes as usize];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &GgufValue) -> GgufError {
        let found = match v {
            GgufValue::String(_) | GgufValue::Array(_) => v.type_name().to_string(),
            _ => format!("{} {v:?}", v.type_name()),
        };
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found,
        }
    }

    /// A non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// A numeric value (float or integer).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[GgufValue], GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, "an array", v))
    }

    /// `general.architecture` (e.g. "llama").
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.token_id("tokenizer.ggml.bos_token_id")
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.token_id("tokenizer.ggml.eos_token_id")
    }

    /// Whether a BOS token should be prepended to prompts
    /// (`tokenizer.ggml.add_bos_token`; when absent, true only for the
    /// sentencepiece "llama" tokenizer model, as in llama.cpp). The tokenizer
    /// from [`GgufFile::tokenizer`] never adds it by itself.
    pub fn add_bos(&self) -> bool {
        match self
            .get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool)
        {
            Some(b) => b,
            None => self
                .get("tokenizer.ggml.model")
                .and_then(GgufValue::as_str)
                .is_some_and(|m| m == "llama"),
        }
    }

    /// Builds a Hugging Face tokenizer from the `tokenizer.ggml.*` metadata.
    ///
    /// Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with
    /// `tokenizer.ggml.pre` "smollm" (digits split individually, then GPT-2
    /// byte-level splitting), "llama-bpe" (Llama 3's split), "qwen2" (Qwen2's split after
    /// Unicode NFC, as its tokenizer.json has it), or "gpt2" / "default" / absent (plain
    /// GPT-2 byte-level). Tokens of type 3 (control) become special added tokens,
    /// type 4 (user-defined) plain added tokens. No BOS/EOS post-processing
    /// is attached: see [`GgufFile::add_bos`] and [`GgufFile::bos_token_id`].
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, GgufError> {
        use tokenizers::SplitDelimiterBehavior;
        use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
        use tokenizers::models::bpe::{BPE, Vocab};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::{AddedToken, PreTokenizerWrapper};

        let model = self.get_str("tokenizer.ggml.model")?;
        let pre = match self.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => self.get_str("tokenizer.ggml.pre")?,
        };
        let unsupported = || GgufError::UnsupportedTokenizer {
            path: self.path.clone(),
            model: model.to_string(),
            pre: pre.to_string(),
        };
        if model != "gpt2" {
            return Err(unsupported());
        }
        let tok_err = |msg: String| GgufError::Tokenizer {
            path: self.path.clone(),
            msg,
        };
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            "llama-bpe" | "qwen2" => {
                let pattern = if pre == "qwen2" {
                    QWEN2_SPLIT
                } else {
                    LLAMA3_SPLIT
                };
                let split = Split::new(
                    SplitPattern::Regex(pattern.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(format!("the '{pre}' split: {e}")))?;
                let bytes = ByteLevel::new(false, true, false);
                Sequence::new(vec![split.into(), bytes.into()]).into()
            }
            _ => return Err(unsupported()),
        };

        let tokens = self.get_array("tokenizer.ggml.tokens")?;
        let n_tokens = u32::try_from(tokens.len())
            .map_err(|_| tok_err(format!("{} tokens is too many", tokens.len())))?;
        let mut vocab = Vocab::with_capacity(tokens.len());
        let mut token_strs = Vec::with_capacity(tokens.len());
        for (id, t) in (0..n_tokens).zip(tokens) {
            let s = t
                .as_str()
                .ok_or_else(|| tok_err(format!("token {id} is not a string")))?;
            vocab.entry(s.to_string()).or_insert(id);
            token_strs.push(s);
        }

        let merges_v = self.get_array("tokenizer.ggml.merges")?;
        let mut merges = Vec::with_capacity(merges_v.len());
        for (i, m) in merges_v.iter().enumerate() {
            let (a, b) = m
                .as_str()
                .and_then(|s| s.split_once(' '))
                .ok_or_else(|| tok_err(format!("merge {i} is not a string \"a b\": {m:?}")))?;
            merges.push((a.to_string(), b.to_string()));
        }

        // Llama 3 takes a piece that is a whole token as it is, before any merge (its
        // tokenizer.json's `ignore_merges`, llama.cpp's for this pre-tokenizer).
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre == "llama-bpe")
            .build()
            .map_err(|e| tok_err(format!("BPE model: {e}")))?;
        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        if pre == "qwen2" {
            (tokenizer.with_normalizer(Some(tokenizers::normalizers::unicode::NFC)))
                .map_err(|e| tok_err(format!("NFC normalizer: {e}")))?;
        }
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        if self.get("tokenizer.ggml.token_type").is_some() {
            let types = self.get_array("tokenizer.ggml.token_type")?;
            if types.len() != token_strs.len() {
                return Err(tok_err(format!(
                    "tokenizer.ggml.token_type has {} entries but there are {} tokens",
                    types.len(),
                    token_strs.len()
                )));
            }
            let mut special = Vec::new();
            let mut added = Vec::new();
            let mut seen = HashSet::new();
            for (tok, ty) in token_strs.iter().zip(types) {
                match ty.as_i64() {
                    Some(3) if seen.insert(*tok) => special.push(AddedToken::from(*tok, true)),
                    Some(4) if seen.insert(*tok) => added.push(AddedToken::from(*tok, false)),
                    Some(_) => {}
                    None => return Err(tok_err(format!("token type {ty:?} is not an integer"))),
                }
            }
            tokenizer
                .add_special_tokens(special)
                .map_err(|e| tok_err(format!("special tokens: {e}")))?;
            tokenizer
                .add_tokens(added)
                .map_err(|e| tok_err(format!("added tokens: {e}")))?;
        }
        for (what, id) in [("bos", self.bos_token_id()), ("eos", self.eos_token_id())] {
            if let Some(id) = id
                && id >= n_tokens
            {
                return Err(tok_err(format!(
                    "{what}_token_id {id} is out of range ({n_tokens} tokens)"
                )));
            }
        }
        Ok(tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");
    const SMOLLM2_REFERENCE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/reference.json"
    );

    fn fixture(name: &str) -> PathBuf {
        let p = Path::new(FIXTURES).join(name);
        assert!(
            p.exists(),
            "missing fixture {} (run tests/fixtures/gguf/make_gguf_fixtures.py)",
            p.display()
        );
        p
    }

    /// A unique path in the temp dir, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str, bytes: &[u8]) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "gguf-test-{}-{}-{tag}.gguf",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, bytes).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        parse(
            Path::new("mem.gguf"),
            Cursor::new(bytes),
            bytes.len() as u64,
        )
    }

    /// Minimal GGUF v3 writer for hand-made test files.
    #[derive(Default)]
    struct Writer {
        kvs: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        n_tensors: u64,
        data: Vec<u8>,
    }
    fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    impl Writer {
        fn kv_raw(&mut self, key: &str, type_id: u32, payload: &[u8]) -> &mut Self {
            put_str(&mut self.kvs, key);
            self.kvs.extend(type_id.to_le_bytes());
            self.kvs.extend(payload);
            self.n_kv += 1;
            self
        }
        fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
            let mut p = Vec::new();
            put_str(&mut p, v);
            self.kv_raw(key, 8, &p)
        }
        fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.kv_raw(key, 4, &v.to_le_bytes())
        }
        fn kv_strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
            let mut p = 8u32.to_le_bytes().to_vec();
            p.extend((v.len() as u64).to_le_bytes());
            for s in v {
                put_str(&mut p, s);
            }
            self.kv_raw(key, 9, &p)
        }
        fn kv_i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
            let mut p = 5u32.to_le_bytes().to_vec();
            p.extend((v.len() as u64).to_le_bytes());
            for x in v {
                p.extend(x.to_le_bytes());
            }
            self.kv_raw(key, 9, &p)
        }
        fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, data: &[u8]) -> &mut Self {
            while !self.data.len().is_multiple_of(32) {
                self.data.push(0);
            }
            put_str(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(type_id.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(data);
            self.n_tensors += 1;
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(self.n_tensors.to_le_bytes());
            b.extend(self.n_kv.to_le_bytes());
            b.extend(&self.kvs);
            b.extend(&self.infos);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(&self.data);
            b
        }
    }

    fn load_expected() -> (GgufFile, serde_json::Value, Vec<u8>) {
        let file = GgufFile::open(&fixture("types.gguf")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("types_expected.json")).unwrap())
                .unwrap();
        let st = std::fs::read(fixture("types_expected.safetensors")).unwrap();
        (file, json, st)
    }

    #[test]
    fn dequantises_every_type_like_the_reference() {
        let (file, json, st) = load_expected();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        let tensors = json["tensors"].as_object().expect("json 'tensors' object");
        assert!(!tensors.is_empty());
        let order: Vec<&str> = json["tensor_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, order);
        assert_eq!(
            u64::from(file.version),
            json["gguf_version"].as_u64().unwrap()
        );
        assert_eq!(file.alignment(), json["alignment"].as_u64().unwrap());
        let mut types_seen = HashSet::new();
        for (name, meta) in tensors {
            let info = file
                .tensor_info(name)
                .unwrap_or_else(|| panic!("no {name}"));
            assert_eq!(info.ggml_type.name(), meta["ggml_type"].as_str().unwrap());
            assert_eq!(
                u64::from(info.ggml_type.id()),
                meta["ggml_type_id"].as_u64().unwrap()
            );
            let ints = |key: &str| -> Vec<u64> {
                meta[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect()
            };
            assert_eq!(info.dims, ints("gguf_dims"), "{name}");
            let shape: Vec<usize> = ints("shape").iter().map(|&d| d as usize).collect();
            assert_eq!(info.shape(), shape, "{name}");
            assert_eq!(info.n_bytes(), meta["nbytes"].as_u64(), "{name}");
            assert_eq!(Some(info.offset), meta["data_offset"].as_u64(), "{name}");
            types_seen.insert(info.ggml_type);

            let (shape, data) = file.tensor(name).unwrap();
            let view = st.tensor(name).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            assert_eq!(shape, view.shape(), "{name}");
            let expected: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(data.len(), expected.len(), "{name}");
            // Bit for bit: the same f32 operations in the same order as gguf-py's.
            for (i, (a, e)) in data.iter().zip(&expected).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    e.to_bits(),
                    "{name}[{i}]: got {a}, expected {e}"
                );
            }
        }
        for t in SUPPORTED_TYPES {
            assert!(types_seen.contains(&t), "fixture lacks a {t} tensor");
        }
        assert!(file.tensors.iter().any(|t| t.dims.len() == 1));
        assert!(file.tensors.iter().any(|t| t.dims.len() == 3));
    }

    fn json_matches(v: &GgufValue, j: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (v, j) {
            (GgufValue::Bool(b), J::Bool(e)) => b == e,
            (GgufValue::String(s), J::String(e)) => s == e,
            (GgufValue::Array(a), J::Array(e)) => {
                a.len() == e.len() && a.iter().zip(e).all(|(x, y)| json_matches(x, y))
            }
            (GgufValue::F32(x), J::Number(n)) => n.as_f64().is_some_and(|e| *x == e as f32),
            (GgufValue::F64(x), J::Number(n)) => n.as_f64().is_some_and(|e| *x == e),
            (_, J::Number(n)) => match (v.as_i64(), n.as_i64(), v.as_u64(), n.as_u64()) {
                (Some(a), Some(b), _, _) => a == b,
                (_, _, Some(a), Some(b)) => a == b,
                _ => false,
            },
            _ => false,
        }
    }

    #[test]
    fn metadata_matches_the_reference() {
        let (file, json, _) = load_expected();
        let meta = json["metadata"]
            .as_object()
            .expect("json 'metadata' object");
        for (key, expected) in meta {
            let v = file.get(key).unwrap_or_else(|| panic!("missing key {key}"));
            assert!(json_matches(v, expected), "{key}: {v:?} vs {expected}");
        }
        assert_eq!(file.metadata.len(), meta.len(), "same set of keys");
        // gguf-py's type names ("uint8", "float32", ...) vs ours ("u8", "f32", ...).
        let short = |t: &str| {
            t.replace("uint", "u")
                .replace("int", "i")
                .replace("float", "f")
        };
        let types = json["metadata_types"].as_object().unwrap();
        let mut kinds = HashSet::new();
        for (key, t) in types {
            let v = &file.metadata[key];
            assert_eq!(v.type_name(), short(t.as_str().unwrap()), "{key}");
            kinds.insert(v.type_name());
        }
        for (key, t) in json["metadata_array_element_types"].as_object().unwrap() {
            let items = file.metadata[key].as_array().unwrap();
            assert!(!items.is_empty(), "{key}");
            for item in items {
                assert_eq!(item.type_name(), short(t.as_str().unwrap()), "{key}");
            }
        }
        for kind in [
            "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
            "f64",
        ] {
            assert!(kinds.contains(kind), "fixture lacks a {kind} value");
        }
        assert_eq!(
            file.architecture().unwrap(),
            meta["general.architecture"].as_str().unwrap()
        );
    }

    #[test]
    fn getters_name_the_key() {
        let (file, _, _) = load_expected();
        let e = file.get_u64("no.such.key").unwrap_err().to_string();
        assert!(e.contains("no.such.key") && e.contains("types.gguf"), "{e}");
        let e = file.get_str("no.such.key").unwrap_err().to_string();
        assert!(e.contains("no.such.key"), "{e}");
        let e = file
            .get_f64("general.architecture")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("general.architecture") && e.contains("string"),
            "{e}"
        );
        assert!(file.get("general.architecture").is_some());
        assert_eq!(file.alignment(), GGUF_DEFAULT_ALIGNMENT);
        assert_eq!(file.data_start() % file.alignment(), 0);
    }

    #[test]
    fn missing_tensor_is_named() {
        let (file, _, _) = load_expected();
        let e = file.tensor("no.such.tensor").unwrap_err();
        assert!(matches!(e, GgufError::MissingTensor { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("no.such.tensor") && msg.contains("types.gguf"),
            "{msg}"
        );
    }

    #[test]
    fn unsupported_type_error_names_the_type() {
        let file = GgufFile::open(&fixture("unsupported.gguf")).unwrap();
        let t = file
            .tensors
            .iter()
            .find(|t| !t.ggml_type.is_supported())
            .expect("an unsupported tensor");
        let e = file.tensor(&t.name).unwrap_err();
        let msg = e.to_string();
        let GgufError::UnsupportedType { type_name, .. } = &e else {
            panic!("{msg}")
        };
        assert_eq!(*type_name, t.ggml_type.name());
        assert_eq!(type_name, "IQ2_XXS", "{msg}");
        assert!(msg.contains("unsupported.gguf"), "{msg}");
        assert!(msg.contains(&t.name), "{msg}");
        assert!(
            msg.contains(
                "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, \
                 Q5_K, Q6_K, IQ4_NL, IQ4_XS)"
            ),
            "{msg}"
        );
        // The raw bytes are still readable, and so are the other tensors.
        let (info, raw) = file.tensor_bytes(&t.name).unwrap();
        assert_eq!(Some(raw.len() as u64), info.n_bytes());
        for t in file.tensors.iter().filter(|t| t.ggml_type.is_supported()) {
            file.tensor(&t.name).unwrap();
        }
    }

    #[test]
    fn truncated_files_give_errors() {
        let bytes = std::fs::read(fixture("types.gguf")).unwrap();
        let file = parse_bytes(&bytes).unwrap();
        let data_end = file
            .tensors
            .iter()
            .map(|t| file.data_start() + t.offset + t.n_bytes().unwrap())
            .max()
            .unwrap();
        assert!(data_end as usize <= bytes.len());
        // Every cut before the end of the last tensor's data must fail: byte by
        // byte through the header, metadata and tensor infos, then in strides.
        let header_end = file.data_start() as usize;
        let cuts = (0..header_end).chain((header_end..data_end as usize).step_by(7));
        for cut in cuts {
            match parse_bytes(&bytes[..cut]) {
                Ok(_) => panic!("truncation at {cut} of {} was accepted", bytes.len()),
                Err(e) => assert!(e.to_string().starts_with("mem.gguf: "), "{e}"),
            }
        }
        // Through the real file path too: inside the header, the metadata,
        // the tensor infos and the data.
        let first_info = bytes
            .windows(file.tensors[0].name.len())
            .position(|w| w == file.tensors[0].name.as_bytes())
            .unwrap();
        for cut in [
            10,
            40,
            first_info + 2,
            header_end + 5,
            data_end as usize - 1,
        ] {
            let tmp = TempFile::new("trunc", &bytes[..cut]);
            let msg = GgufFile::open(&tmp.0).unwrap_err().to_string();
            assert!(msg.contains(&*tmp.0.to_string_lossy()), "{msg}");
        }
    }

    #[test]
    fn bad_magic_and_version() {
        let mut bytes = std::fs::read(fixture("types.gguf")).unwrap();
        bytes[0] = b'X';
        let tmp = TempFile::new("magic", &bytes);
        let e = GgufFile::open(&tmp.0).unwrap_err();
        assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
        assert!(e.to_string().contains("not a GGUF file"));

        let mut bytes = std::fs::read(fixture("types.gguf")).unwrap();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        let e = parse_bytes(&bytes).unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
            "{e}"
        );
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(
            parse_bytes(&bytes)
                .unwrap_err()
                .to_string()
                .contains("big-endian")
        );
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(parse_bytes(&bytes).is_ok(), "version 2 has the same layout");

        let e = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(e, GgufError::Io { .. }));
        assert!(
            e.to_string().starts_with("/nonexistent/model.gguf: "),
            "{e}"
        );
    }

    #[test]
    fn huge_counts_are_rejected_without_allocating() {
        let header = |n_tensors: u64, n_kv: u64| {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(n_tensors.to_le_bytes());
            b.extend(n_kv.to_le_bytes());
            b
        };
        for (t, k) in [(u64::MAX, 0), (0, u64::MAX), (1 << 40, 1 << 40)] {
            let e = parse_bytes(&header(t, k)).unwrap_err();
            assert!(matches!(e, GgufError::Malformed { .. }), "{e}");
        }
        // A string claiming u64::MAX bytes.
        let mut b = header(0, 1);
        b.extend(u64::MAX.to_le_bytes());
        b.extend([0u8; 64]);
        assert!(matches!(parse_bytes(&b), Err(GgufError::Truncated { .. })));
        // An array claiming 2^60 u8 elements.
        let mut w = Writer::default();
        let mut p = 0u32.to_le_bytes().to_vec();
        p.extend((1u64 << 60).to_le_bytes());
        p.extend([0u8; 64]);
        w.kv_raw("arr", 9, &p);
        assert!(matches!(
            parse_bytes(&w.bytes()),
            Err(GgufError::Malformed { .. })
        ));
        // Arrays nested past the depth limit.
        let mut p = Vec::new();
        for _ in 0..100 {
            p.extend(9u32.to_le_bytes());
            p.extend(1u64.to_le_bytes());
        }
        p.extend(0u32.to_le_bytes());
        p.extend(0u64.to_le_bytes());
        let mut w = Writer::default();
        w.kv_raw("nested", 9, &p);
        let e = parse_bytes(&w.bytes()).unwrap_err().to_string();
        assert!(e.contains("deeper"), "{e}");
    }

    #[test]
    fn corrupt_fields_are_rejected() {
        let bad = |w: &Writer, what: &str| {
            let e = parse_bytes(&w.bytes()).unwrap_err().to_string();
            assert!(e.contains(what), "expected '{what}' in: {e}");
        };
        let mut w = Writer::default();
        w.kv_raw("k", 13, &[0; 16]);
        bad(&w, "unknown value type 13");
        let mut w = Writer::default();
        w.kv_raw("k", 7, &[2]);
        bad(&w, "bool");
        let mut w = Writer::default();
        w.kv_raw("k", 8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
        bad(&w, "UTF-8");
        let mut w = Writer::default();
        w.kv_u32("k", 1).kv_u32("k", 2);
        bad(&w, "duplicate metadata key");
        let mut w = Writer::default();
        w.kv_u32("general.alignment", 24);
        bad(&w, "power of two");
        let mut w = Writer::default();
        w.tensor("a", &[4], 0, &[0; 16])
            .tensor("a", &[4], 0, &[0; 16]);
        bad(&w, "duplicate tensor name");
        let mut w = Writer::default();
        w.tensor("a", &[1, 1, 1, 1, 1], 0, &[0; 4]);
        bad(&w, "dimensions");
        let mut w = Writer::default();
        w.tensor("a", &[u64::MAX, 2], 0, &[0; 4]);
        bad(&w, "too many elements");
        let mut w = Writer::default();
        w.tensor("a", &[33], 8, &[0; 34]);
        bad(&w, "block size");
        let mut w = Writer::default();
        w.tensor("a", &[1000], 0, &[0; 16]);
        bad(&w, "past the end");
        // Overlapping data: the second tensor's offset is rewritten to 0.
        let mut w = Writer::default();
        w.tensor("a", &[8], 0, &[0; 32])
            .tensor("b", &[8], 0, &[0; 32]);
        let at = w.infos.len() - 8;
        w.infos[at..].copy_from_slice(&0u64.to_le_bytes());
        bad(&w, "overlap");
        // Misaligned offset.
        let mut w = Writer::default();
        w.tensor("a", &[8], 0, &[0; 64]);
        let at = w.infos.len() - 8;
        w.infos[at..].copy_from_slice(&4u64.to_le_bytes());
        bad(&w, "alignment");
    }

    /// A 0-dimensional tensor (n_dims = 0) is a scalar, as in llama.cpp's reader (every
    /// `ne` defaults to 1): one element, row-major shape `[]`, read without a panic. A
    /// quantised scalar is refused by name (not a whole block); loaders that need a matrix
    /// refuse a scalar by name too (tests/bad_input.rs).
    #[test]
    fn zero_dimensional_tensor_is_a_scalar() {
        let mut w = Writer::default();
        w.tensor("scalar", &[], 0, &1.5f32.to_le_bytes());
        let tmp = TempFile::new("scalar", &w.bytes());
        let f = GgufFile::open(&tmp.0).unwrap();
        let info = f.tensor_info("scalar").unwrap();
        assert!(info.dims.is_empty() && info.shape().is_empty());
        assert_eq!((info.n_elements(), info.n_bytes()), (1, Some(4)));
        assert_eq!(f.tensor("scalar").unwrap(), (vec![], vec![1.5]));

        let mut w = Writer::default();
        w.tensor("q", &[], 8, &[0; 34]);
        let e = parse_bytes(&w.bytes()).unwrap_err().to_string();
        assert!(e.contains("'q'") && e.contains("block size"), "{e}");
    }

    #[test]
    fn custom_alignment_and_unknown_type() {
        let mut w = Writer::default();
        w.kv_u32("general.alignment", 64);
        w.tensor("x", &[2, 2], 0, &[0; 16]);
        let mut b = w.bytes();
        // Re-pad the data section to 64 bytes.
        let header_len = b.len() - 16;
        let pad = header_len.next_multiple_of(64) - header_len;
        let data = b.split_off(header_len);
        b.extend(std::iter::repeat_n(0u8, pad));
        b.extend(&data);
        let f = parse_bytes(&b).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_start() % 64, 0);

        let mut w = Writer::default();
        w.tensor("mystery", &[4], 999, &[0; 16]);
        let tmp = TempFile::new("unknown", &w.bytes());
        let f = GgufFile::open(&tmp.0).unwrap();
        assert_eq!(f.tensors[0].ggml_type, GgmlType::Other(999));
        let e = f.tensor("mystery").unwrap_err().to_string();
        assert!(e.contains("TYPE_999"), "{e}");
    }

    #[test]
    fn random_corruption_never_panics() {
        let bytes = std::fs::read(fixture("types.gguf")).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let header_end = parse_bytes(&bytes).unwrap().data_start() as usize;
        for round in 0..2000 {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % header_end as u64) as usize;
                b[at] = next() as u8;
            }
            // Parsing from memory for all; through a file (so tensors can be
            // read) for some.
            if let Ok(f) = parse_bytes(&b)
                && round % 10 == 0
            {
                let tmp = TempFile::new("fuzz", &b);
                let f = GgufFile {
                    path: tmp.0.clone(),
                    ..f
                };
                for t in &f.tensors {
                    let _ = f.tensor(&t.name);
                }
            }
        }
    }

    /// GPT-2's byte -> unicode table.
    fn byte_chars() -> Vec<char> {
        let mut bs: Vec<u32> = (b'!'..=b'~')
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .map(u32::from)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut table = vec![' '; 256];
        for (b, c) in bs.into_iter().zip(cs) {
            table[b as usize] = char::from_u32(c).unwrap();
        }
        table
    }

    fn tiny_tokenizer_file(pre: Option<&str>, model: &str) -> Writer {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ hello", "1 2"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|endoftext|>".into());
        tokens.push("<extra>".into());
        let mut types = vec![1; tokens.len()];
        let n = types.len();
        types[n - 2] = 3;
        types[n - 1] = 4;
        let toks: Vec<&str> = tokens.iter().map(|s| s.as_str()).collect();
        let mut w = Writer::default();
        w.kv_str("tokenizer.ggml.model", model)
            .kv_strs("tokenizer.ggml.tokens", &toks)
            .kv_strs("tokenizer.ggml.merges", &merges)
            .kv_i32s("tokenizer.ggml.token_type", &types)
            .kv_u32("tokenizer.ggml.bos_token_id", n as u32 - 2)
            .kv_u32("tokenizer.ggml.eos_token_id", n as u32 - 2);
        if let Some(pre) = pre {
            w.kv_str("tokenizer.ggml.pre", pre);
        }
        w
    }

    fn ids_of(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    /// Llama 3's pre-tokenizer (`llama-bpe`): contractions in either case, digits in groups
    /// of three, a run of spaces split before its last, line breaks apart from the spaces
    /// after them; GPT-2's regex splits the same text otherwise.
    #[test]
    fn llama3_pre_tokenizer_splits_as_llama3_does() {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let pieces = |pre: &str| {
            let f = parse_bytes(&tiny_tokenizer_file(Some(pre), "gpt2").bytes()).unwrap();
            let tok = f.tokenizer().unwrap();
            let mut s = PreTokenizedString::from("I'M 12345 don't\n\n  x");
            tok.get_pre_tokenizer()
                .unwrap()
                .pre_tokenize(&mut s)
                .unwrap();
            (s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter())
            .map(|(piece, _, _)| piece.to_string())
            .collect::<Vec<_>>()
        };
        assert_eq!(
            pieces("llama-bpe"),
            ["I", "'M", "Ġ", "123", "45", "Ġdon", "'t", "ĊĊ", "Ġ", "Ġx"]
        );
        assert_eq!(
            pieces("gpt2"),
            ["I", "'", "M", "Ġ12345", "Ġdon", "'t", "ĊĊĠ", "Ġx"]
        );
        let f = parse_bytes(&tiny_tokenizer_file(Some("llama-bpe"), "gpt2").bytes()).unwrap();
        let tok = f.tokenizer().unwrap();
        let id = |b: u8| {
            byte_chars()
                .iter()
                .position(|&c| c == byte_chars()[b as usize])
                .unwrap() as u32
        };
        // "hello", " hello", " ", "123" (the "12" merge, then "3").
        assert_eq!(
            ids_of(&tok, "hello hello 123"),
            [259, 260, id(b' '), 261, id(b'3')]
        );
    }

    #[test]
    fn tiny_byte_level_bpe_tokenizer() {
        let ch = byte_chars();
        let id = |b: u8| ch.iter().position(|&c| c == ch[b as usize]).unwrap() as u32;
        // Ids: 256 bytes, then merges "he"=256, "ll"=257, "hell"=258,
        // "hello"=259, "Ġhello"=260, "12"=261, then <|endoftext|>=262, <extra>=263.
        let f = parse_bytes(&tiny_tokenizer_file(Some("smollm"), "gpt2").bytes()).unwrap();
        assert_eq!(f.bos_token_id(), Some(262));
        assert!(!f.add_bos());
        let tok = f.tokenizer().unwrap();
        let text = "hello hello 123<|endoftext|>x<extra>";
        // smollm: digits split one by one, so "1 2" never merges.
        let smollm = [
            259,
            260,
            id(b' '),
            id(b'1'),
            id(b'2'),
            id(b'3'),
            262,
            id(b'x'),
            263,
        ];
        assert_eq!(ids_of(&tok, text), smollm);
        assert_eq!(tok.decode(&smollm, false).unwrap(), text);
        assert_eq!(
            tok.decode(&smollm, true).unwrap(),
            "hello hello 123x<extra>"
        );

        for pre in [None, Some("gpt2"), Some("default")] {
            let f = parse_bytes(&tiny_tokenizer_file(pre, "gpt2").bytes()).unwrap();
            let tok = f.tokenizer().unwrap();
            let gpt2 = [259, 260, id(b' '), 261, id(b'3'), 262, id(b'x'), 263];
            assert_eq!(ids_of(&tok, text), gpt2, "pre {pre:?}");
        }

        let f = parse_bytes(&tiny_tokenizer_file(Some("smollm"), "llama").bytes()).unwrap();
        let e = f.tokenizer().unwrap_err();
        assert!(matches!(e, GgufError::UnsupportedTokenizer { .. }), "{e}");
        assert!(e.to_string().contains("'llama'"), "{e}");
        assert!(f.add_bos());
        let f = parse_bytes(&tiny_tokenizer_file(Some("deepseek-llm"), "gpt2").bytes()).unwrap();
        assert!(matches!(
            f.tokenizer(),
            Err(GgufError::UnsupportedTokenizer { .. })
        ));
        let f = parse_bytes(&Writer::default().bytes()).unwrap();
        let e = f.tokenizer().unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
    }

    fn smollm2_model() -> Option<PathBuf> {
        let Some(home) = std::env::var_os("HOME") else {
            eprintln!("skipped: HOME is not set");
            return None;
        };
        let model =
            Path::new(&home).join(".cache/attn-saes/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model.exists() {
            eprintln!("skipped: {} is absent", model.display());
            return None;
        }
        Some(model)
    }

    /// The real SmolLM2 GGUF: header, one tensor of each type it uses, and
    /// the special tokens.
    #[test]
    fn smollm2_file_opens_and_dequantises() {
        let Some(model) = smollm2_model() else {
            return;
        };
        let file = GgufFile::open(&model).unwrap();
        assert_eq!(file.architecture().unwrap(), "llama");
        assert_eq!(file.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 576);
        assert!(file.tensors.iter().all(|t| t.ggml_type.is_supported()));
        for (name, shape) in [
            ("blk.0.attn_q.weight", vec![576, 576]),
            ("blk.0.attn_norm.weight", vec![576]),
        ] {
            let (s, data) = file.tensor(name).unwrap();
            assert_eq!(s, shape, "{name}");
            assert!(
                data.iter().all(|x| x.is_finite() && x.abs() < 100.0),
                "{name}"
            );
            assert!(data.iter().any(|&x| x != 0.0), "{name}");
        }
        assert_eq!(file.bos_token_id(), Some(1));
        assert!(!file.add_bos());
        let tok = file.tokenizer().unwrap();
        let ids = ids_of(&tok, "<|im_start|>user\nHi<|im_end|>");
        assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2), "{ids:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>"
        );
        let ids = ids_of(&tok, " 2024");
        assert_eq!(ids.len(), 5, "digits are split one by one: {ids:?}");
    }

    /// Token ids from the real SmolLM2 GGUF against transformers' reference.
    #[test]
    fn smollm2_tokenizer_matches_transformers() {
        let Some(model) = smollm2_model() else {
            return;
        };
        if !Path::new(SMOLLM2_REFERENCE).exists() {
            eprintln!("skipped: {SMOLLM2_REFERENCE} is absent");
            return;
        }
        let file = GgufFile::open(&model).unwrap();
        let tok = file.tokenizer().unwrap();
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(SMOLLM2_REFERENCE).unwrap()).unwrap();
        let cases = reference_cases(&reference);
        assert!(!cases.is_empty(), "no cases found in {SMOLLM2_REFERENCE}");
        for (text, ids) in cases {
            assert_eq!(ids_of(&tok, &text), ids, "text {text:?}");
            // Byte-level decoding is lossless.
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "decoding {ids:?}");
        }
    }

    /// (text, ids) pairs: the objects with "text" and "ids" (or
    /// "input_ids"/"token_ids") in any list, at the top level or under any key
    /// (make_reference.py writes `sentences`, `tricky` and a paragraph).
    fn reference_cases(v: &serde_json::Value) -> Vec<(String, Vec<u32>)> {
        let case = |c: &serde_json::Value| {
            let text = c.get("text")?.as_str()?.to_string();
            let ids = ["ids", "input_ids", "token_ids"]
                .iter()
                .find_map(|k| c.get(*k))?
                .as_array()?
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<_>>>()?;
            Some((text, ids))
        };
        let mut cases: Vec<_> = case(v).into_iter().collect();
        match v {
            serde_json::Value::Array(items) => cases.extend(items.iter().flat_map(reference_cases)),
            serde_json::Value::Object(map) => cases.extend(map.values().flat_map(reference_cases)),
            _ => {}
        }
        cases
    }
}
