//! Corpus stage: streams documents from text, directories, JSONL and Parquet files.
//!
//! [`Corpus::open`] inspects a path once (listing directories, reading Parquet
//! footers) and [`Corpus::documents`] then streams [`Document`]s without ever
//! holding more than one bounded piece of a file in memory:
//!
//! | file name                                   | read as                         | item    |
//! |---------------------------------------------|---------------------------------|---------|
//! | `*.parquet`                                 | one document per row            | row     |
//! | `*.jsonl`, `*.json`, `*.ndjson` (+ `.gz`)   | JSON Lines, one object per line | line    |
//! | `*.gz` (other)                              | gzip-compressed plain text      | chunk   |
//! | anything else (`*.txt`, no extension, ...)  | plain UTF-8 text                | chunk   |
//!
//! **Invalid UTF-8** in text (plain text, JSONL lines, Parquet strings) does not stop
//! the stream: each invalid sequence is replaced with U+FFFD, exactly as
//! [`String::from_utf8_lossy`] would replace it in the whole file, and counted
//! ([`Documents::replaced_utf8`]). The first time a file needs a replacement a
//! warning naming the file is printed on stderr (once per file per process).
//!
//! A directory is read recursively: every regular file (or symlink to one) in
//! it, sorted by path, each read according to its own name; entries whose name
//! starts with `.` are skipped and symlinked directories are not followed.
//!
//! **Plain text** is one logical document per file, but streamed in chunks so a
//! huge file is never loaded whole: a chunk ends at the first blank line after
//! [`TEXT_CHUNK_TARGET_BYTES`], or — for text without blank lines — at the
//! first line end after [`TEXT_CHUNK_MAX_BYTES`] (a single line longer than
//! that is cut at a character boundary). Chunks keep the text verbatim, so
//! concatenating a file's chunks gives the file back. Each chunk is yielded as
//! its own [`Document`].
//!
//! **JSON Lines / Parquet** take the value of the column `text_column`, or, when
//! none is given, the first of `text`, `tokens`, `input_ids` that exists. A
//! string value becomes [`Document::Text`]; a list of non-negative integers
//! becomes [`Document::Tokens`] (pre-tokenized data). Null values, empty
//! strings and empty lists are skipped (they contribute no tokens anyway), as
//! are blank JSONL lines. Parquet is read through the column reader API one
//! small batch of rows at a time, a row group after another.
//!
//! Positions: every document comes with the [`CorpusPosition`] just *after* it;
//! passing that position to [`Corpus::documents`] resumes with the next
//! document. Resuming inside a file re-reads (plain text, JSONL, gzip) or skips
//! (Parquet: whole row groups via the footer) the items before it. After the
//! last item of a file the position is normalised to the start of the next file
//! (and, when repeating, from the end of the corpus to the start of the next
//! epoch), so a checkpoint never points at an exhausted file.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use flate2::read::MultiGzDecoder;
use parquet::basic::{Repetition, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArrayType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::SchemaDescriptor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A plain-text chunk ends at the first blank line once it holds this many bytes.
pub const TEXT_CHUNK_TARGET_BYTES: usize = 64 * 1024;
/// A plain-text chunk without a blank line ends at the first line end after
/// this many bytes (a longer single line is cut at a character boundary).
pub const TEXT_CHUNK_MAX_BYTES: usize = 256 * 1024;

/// Longest JSON Lines line accepted, in bytes (without its newline): a file without
/// newlines (a binary file, or JSON that is not one object per line) is an error instead
/// of being read into memory whole.
pub const MAX_JSONL_LINE_BYTES: usize = 256 << 20;

/// Column / field names tried, in order, when no text column is given.
pub const DEFAULT_COLUMNS: [&str; 3] = ["text", "tokens", "input_ids"];

/// Rows decoded from a Parquet column per read.
const PARQUET_BATCH_ROWS: usize = 256;

/// One unit of the corpus handed to the tokens stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// Raw text, to be tokenised.
    Text(String),
    /// Already tokenised ids (Parquet/JSONL `tokens` or `input_ids`).
    Tokens(Vec<u32>),
}

/// A place in the corpus stream: item `item` (line, row or text chunk, counted
/// from 0) of file `file` (index into [`Corpus::files`]) in pass `epoch`.
///
/// Positions yielded with documents point just after the document, so they
/// can be checkpointed and passed back to [`Corpus::documents`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CorpusPosition {
    pub file: usize,
    pub item: u64,
    pub epoch: u64,
}

/// Errors of the corpus stage; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("corpus path {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("corpus directory {} contains no files (hidden files are skipped)", path.display())]
    EmptyDirectory { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: line {line} is not valid JSON: {message}", path.display())]
    Json {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: line {line} has no field {wanted} (fields: {available})", path.display())]
    MissingField {
        path: PathBuf,
        line: u64,
        wanted: String,
        available: String,
    },
    #[error("{}: line {line}: field `{field}` must be a string or a list of token ids, found {found}", path.display())]
    BadField {
        path: PathBuf,
        line: u64,
        field: String,
        found: String,
    },
    #[error("{}: parquet file has no column {wanted} (columns: {available})", path.display())]
    MissingColumn {
        path: PathBuf,
        wanted: String,
        available: String,
    },
    #[error("{}: parquet column `{column}` is {found}; expected a string column or a list of integer token ids", path.display())]
    UnsupportedColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{}: cannot read parquet: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{}: line {line} is longer than {limit} bytes (JSON Lines must hold one document per line)",
        path.display()
    )]
    LineTooLong {
        path: PathBuf,
        line: u64,
        limit: usize,
    },
    #[error("corpus {} yielded no documents in a whole pass", path.display())]
    NoDocuments { path: PathBuf },
}

impl CorpusError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn parquet(path: &Path, source: ParquetError) -> Self {
        Self::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }

    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

type Result<T, E = CorpusError> = std::result::Result<T, E>;

/// How a file is read, decided from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    GzText,
    Jsonl,
    GzJsonl,
    Parquet,
}

impl Format {
    fn detect(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let is_json = |n: &str| {
            [".jsonl", ".json", ".ndjson"]
                .iter()
                .any(|e| n.ends_with(e))
        };
        if name.ends_with(".parquet") {
            Self::Parquet
        } else if let Some(inner) = name.strip_suffix(".gz") {
            if is_json(inner) {
                Self::GzJsonl
            } else {
                Self::GzText
            }
        } else if is_json(&name) {
            Self::Jsonl
        } else {
            Self::Text
        }
    }
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    format: Format,
}

/// A set of corpus files, opened and checked by [`Corpus::open`].
#[derive(Debug, Clone)]
pub struct Corpus {
    root: PathBuf,
    files: Arc<[SourceFile]>,
    text_column: Option<String>,
}

impl Corpus {
    /// Opens a corpus file or directory (see the module docs for the formats).
    ///
    /// `text_column` names the JSONL field / Parquet column to read; `None`
    /// tries `text`, then `tokens`, then `input_ids`. Parquet footers are read
    /// and their column checked here, so schema problems surface immediately.
    pub fn open(path: &Path, text_column: Option<&str>) -> Result<Corpus> {
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CorpusError::NotFound {
                path: path.to_path_buf(),
            },
            _ => CorpusError::io(path, e),
        })?;
        let paths = if meta.is_dir() {
            let mut paths = Vec::new();
            collect_files(path, &mut paths)?;
            if paths.is_empty() {
                return Err(CorpusError::EmptyDirectory {
                    path: path.to_path_buf(),
                });
            }
            paths.sort();
            paths
        } else {
            vec![path.to_path_buf()]
        };
        let files: Vec<SourceFile> = paths
            .into_iter()
            .map(|path| SourceFile {
                format: Format::detect(&path),
                path,
            })
            .collect();
        for file in files.iter().filter(|f| f.format == Format::Parquet) {
            ParquetRows::open(&file.path, text_column)?;
        }
        Ok(Corpus {
            root: path.to_path_buf(),
            files: files.into(),
            text_column: text_column.map(str::to_owned),
        })
    }

    /// The path the corpus was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files of the corpus in reading order; [`CorpusPosition::file`] indexes this.
    pub fn files(&self) -> impl ExactSizeIterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Streams documents starting at `start`. With `repeat` the stream loops
    /// over the corpus forever, counting passes in [`CorpusPosition::epoch`];
    /// without it the stream ends after the last file (of `start`'s epoch).
    ///
    /// The stream stops after yielding its first error.
    pub fn documents(&self, start: CorpusPosition, repeat: bool) -> Documents {
        let mut documents = Documents {
            root: self.root.clone(),
            files: Arc::clone(&self.files),
            text_column: self.text_column.clone(),
            repeat,
            next: start,
            reader: None,
            last: None,
            empty_visits: 0,
            visit_had_documents: false,
            finished: false,
            replaced_utf8: 0,
        };
        documents.normalise();
        documents
    }
}

/// Appends all regular, non-hidden files below `dir` to `out`.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| CorpusError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CorpusError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| CorpusError::io(&path, e))?;
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else if file_type.is_file() {
            out.push(path);
        } else if file_type.is_symlink() {
            // Follow links to files; links to directories are skipped (cycles).
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// Iterator over `(position after the document, document)`; see [`Corpus::documents`].
pub struct Documents {
    root: PathBuf,
    files: Arc<[SourceFile]>,
    text_column: Option<String>,
    repeat: bool,
    /// Where the next document is read from.
    next: CorpusPosition,
    /// Reader of `files[next.file]`, positioned at `next.item`.
    reader: Option<ItemReader>,
    /// File index and item index of the last yielded document.
    last: Option<(usize, u64)>,
    /// Consecutive file visits that produced no document (to stop an endless
    /// loop over an empty corpus).
    empty_visits: usize,
    visit_had_documents: bool,
    finished: bool,
    /// Invalid UTF-8 sequences replaced with U+FFFD in the documents yielded so far.
    replaced_utf8: u64,
}

impl Documents {
    /// How many invalid UTF-8 sequences were replaced with U+FFFD in the documents this
    /// stream has yielded so far (see the module docs).
    pub fn replaced_utf8(&self) -> u64 {
        self.replaced_utf8
    }

    /// The position the next document will be read from.
    pub fn resume_position(&self) -> CorpusPosition {
        self.next
    }

    /// Path and item index (line, row or chunk) of the most recently yielded
    /// document, for error messages and logs.
    pub fn last_source(&self) -> Option<(&Path, u64)> {
        self.last
            .and_then(|(file, item)| Some((self.files.get(file)?.path.as_path(), item)))
    }

    fn normalise(&mut self) {
        if self.repeat && self.next.file >= self.files.len() {
            self.next = CorpusPosition {
                file: 0,
                item: 0,
                epoch: self.next.epoch + 1,
            };
        }
    }

    fn finish_file(&mut self) {
        self.reader = None;
        if self.visit_had_documents {
            self.empty_visits = 0;
        } else {
            self.empty_visits += 1;
        }
        self.visit_had_documents = false;
        self.next.file += 1;
        self.next.item = 0;
        self.normalise();
    }

    fn fail(&mut self, error: CorpusError) -> Option<Result<(CorpusPosition, Document)>> {
        self.finished = true;
        self.reader = None;
        Some(Err(error))
    }
}

impl Iterator for Documents {
    type Item = Result<(CorpusPosition, Document)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            if self.next.file >= self.files.len() {
                self.finished = true;
                return None;
            }
            if self.repeat && self.empty_visits > self.files.len() {
                let path = self.root.clone();
                return self.fail(CorpusError::NoDocuments { path });
            }
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => {
                    let file = &self.files[self.next.file];
                    let opened = ItemReader::open(file, self.text_column.as_deref())
                        .and_then(|mut r| r.skip_to(self.next.item).map(|()| r));
                    match opened {
                        Ok(reader) => self.reader.insert(reader),
                        Err(e) => return self.fail(e),
                    }
                }
            };
            match reader.next_item() {
                None => self.finish_file(),
                Some(Err(e)) => return self.fail(e),
                Some(Ok(ReadItem {
                    index,
                    document,
                    replaced,
                })) => {
                    let at_end = reader.at_end();
                    if replaced > 0 {
                        self.replaced_utf8 += replaced;
                        warn_invalid_utf8_once(&self.files[self.next.file], index, replaced);
                    }
                    self.visit_had_documents = true;
                    self.last = Some((self.next.file, index));
                    self.next.item = index + 1;
                    if at_end {
                        self.finish_file();
                    }
                    return Some(Ok((self.next, document)));
                }
            }
        }
    }
}

/// One item read from a file: its index (line, row or chunk), the document, and the
/// number of invalid UTF-8 sequences replaced with U+FFFD in it.
struct ReadItem {
    index: u64,
    document: Document,
    replaced: u64,
}

type Item = Result<ReadItem>;

/// Files already warned about invalid UTF-8, so each is reported once per process (a
/// repeating stream, or a second stream over the same corpus, reads a file again).
static WARNED_INVALID_UTF8: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Prints, the first time `file` has any, how many invalid UTF-8 sequences item `index`
/// of it had replaced.
fn warn_invalid_utf8_once(file: &SourceFile, index: u64, replaced: u64) {
    let mut warned = WARNED_INVALID_UTF8
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !warned.insert(file.path.clone()) {
        return;
    }
    let item = match file.format {
        Format::Text | Format::GzText => format!("text chunk {index}"),
        Format::Jsonl | Format::GzJsonl => format!("line {}", index + 1),
        Format::Parquet => format!("row {index}"),
    };
    let plural = if replaced == 1 { "" } else { "s" };
    eprintln!(
        "warning: {}: replaced {replaced} invalid UTF-8 sequence{plural} with U+FFFD in {item}; \
         later replacements in this file are counted but not reported",
        file.path.display()
    );
}

/// `bytes` as text with every invalid UTF-8 sequence replaced by U+FFFD (as
/// [`String::from_utf8_lossy`] does), and the number of sequences replaced.
fn decode_lossy(bytes: &[u8]) -> (Cow<'_, str>, u64) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (Cow::Borrowed(text), 0);
    }
    let mut text = String::with_capacity(bytes.len() + 2);
    let mut replaced = 0;
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push(char::REPLACEMENT_CHARACTER);
            replaced += 1;
        }
    }
    (Cow::Owned(text), replaced)
}

/// [`decode_lossy`] of an owned buffer, without copying valid text.
fn decode_lossy_owned(bytes: Vec<u8>) -> (String, u64) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, 0),
        Err(e) => {
            let (text, replaced) = decode_lossy(e.as_bytes());
            (text.into_owned(), replaced)
        }
    }
}

/// Length of an incomplete but so far valid UTF-8 sequence at the end of `bytes` (a
/// character cut by a length limit, which the bytes that follow may finish); 0 if none.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes, so an unfinished one is at most 3.
    for len in 1..=bytes.len().min(3) {
        let start = bytes.len() - len;
        // Skip continuation bytes (10xxxxxx) back to the candidate first byte.
        if bytes[start] & 0xC0 != 0x80 {
            return match std::str::from_utf8(&bytes[start..]) {
                Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => len,
                _ => 0,
            };
        }
    }
    0
}

/// A reader of one file's items with one item of look-ahead.
struct ItemReader {
    source: Source,
    peeked: Option<Option<Item>>,
}

enum Source {
    Text(TextChunks),
    Jsonl(JsonLines),
    Parquet(Box<ParquetRows>),
}

impl ItemReader {
    fn open(file: &SourceFile, text_column: Option<&str>) -> Result<Self> {
        let path = &file.path;
        let open = || -> Result<BufReader<File>> {
            Ok(BufReader::new(
                File::open(path).map_err(|e| CorpusError::io(path, e))?,
            ))
        };
        let gunzip = |r: BufReader<File>| -> Box<dyn BufRead + Send> {
            Box::new(BufReader::new(MultiGzDecoder::new(r)))
        };
        let source = match file.format {
            Format::Text => Source::Text(TextChunks::new(path, Box::new(open()?))),
            Format::GzText => Source::Text(TextChunks::new(path, gunzip(open()?))),
            Format::Jsonl => Source::Jsonl(JsonLines::new(path, Box::new(open()?), text_column)),
            Format::GzJsonl => Source::Jsonl(JsonLines::new(path, gunzip(open()?), text_column)),
            Format::Parquet => Source::Parquet(Box::new(ParquetRows::open(path, text_column)?)),
        };
        Ok(Self {
            source,
            peeked: None,
        })
    }

    /// Moves past the items before index `item`.
    fn skip_to(&mut self, item: u64) -> Result<()> {
        match &mut self.source {
            Source::Text(t) => {
                while t.index < item {
                    match t.next_chunk() {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => break,
                    }
                }
                Ok(())
            }
            Source::Jsonl(j) => j.skip_lines(item),
            Source::Parquet(p) => p.skip_rows(item),
        }
    }

    fn next_item(&mut self) -> Option<Item> {
        if let Some(peeked) = self.peeked.take() {
            return peeked;
        }
        match &mut self.source {
            Source::Text(t) => t.next_chunk(),
            Source::Jsonl(j) => j.next_line(),
            Source::Parquet(p) => p.next_row(),
        }
    }

    /// Whether the file has no items left (a pending error counts as an item).
    fn at_end(&mut self) -> bool {
        if self.peeked.is_none() {
            let item = self.next_item();
            self.peeked = Some(item);
        }
        matches!(self.peeked, Some(None))
    }
}

/// Plain text split into paragraph-aligned chunks.
struct TextChunks {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    /// Bytes of a character cut by the length limit, carried to the next chunk.
    carry: Vec<u8>,
    /// Index of the next chunk.
    index: u64,
    done: bool,
}

impl TextChunks {
    fn new(path: &Path, reader: Box<dyn BufRead + Send>) -> Self {
        Self {
            path: path.to_path_buf(),
            reader,
            carry: Vec::new(),
            index: 0,
            done: false,
        }
    }

    fn next_chunk(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        let mut buf = std::mem::take(&mut self.carry);
        let mut eof = false;
        loop {
            let line_start = buf.len();
            let read = (&mut self.reader)
                .take(TEXT_CHUNK_MAX_BYTES as u64)
                .read_until(b'\n', &mut buf);
            match read {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(CorpusError::io(&self.path, e)));
                }
            }
            let line = &buf[line_start..];
            let blank_line = line.ends_with(b"\n") && line.iter().all(u8::is_ascii_whitespace);
            if (blank_line && buf.len() >= TEXT_CHUNK_TARGET_BYTES)
                || buf.len() >= TEXT_CHUNK_MAX_BYTES
            {
                break;
            }
        }
        if eof {
            self.done = true;
        }
        if buf.is_empty() {
            return None;
        }
        // A multi-byte character cut by the length limit is finished in the next chunk, so
        // decoding chunk by chunk replaces exactly what decoding the whole file would.
        if !eof {
            let tail = incomplete_utf8_tail(&buf);
            if tail > 0 && tail < buf.len() {
                self.carry = buf.split_off(buf.len() - tail);
            }
        }
        let (text, replaced) = decode_lossy_owned(buf);
        let index = self.index;
        self.index += 1;
        Some(Ok(ReadItem {
            index,
            document: Document::Text(text),
            replaced,
        }))
    }
}

/// JSON Lines with one object per line.
struct JsonLines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    column: Option<String>,
    /// Index of the next line.
    line: u64,
    buf: Vec<u8>,
    /// Longest line accepted ([`MAX_JSONL_LINE_BYTES`]; smaller in tests).
    max_line_bytes: usize,
}

impl JsonLines {
    fn new(path: &Path, reader: Box<dyn BufRead + Send>, column: Option<&str>) -> Self {
        Self {
            path: path.to_path_buf(),
            reader,
            column: column.map(str::to_owned),
            line: 0,
            buf: Vec::new(),
            max_line_bytes: MAX_JSONL_LINE_BYTES,
        }
    }

    /// Reads the next line into `buf`; `false` at end of file. A line longer than
    /// `max_line_bytes` is an error (read no further than one byte past the limit).
    fn read_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let limit = self.max_line_bytes;
        // The limit, plus the newline.
        let cap = u64::try_from(limit).map_or(u64::MAX, |l| l.saturating_add(1));
        let n = (&mut self.reader)
            .take(cap)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| CorpusError::io(&self.path, e))?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buf.len() > limit && !self.buf.ends_with(b"\n") {
            return Err(CorpusError::LineTooLong {
                path: self.path.clone(),
                line: self.line,
                limit,
            });
        }
        Ok(true)
    }

    fn skip_lines(&mut self, item: u64) -> Result<()> {
        while self.line < item && self.read_line()? {}
        Ok(())
    }

    fn next_line(&mut self) -> Option<Item> {
        loop {
            match self.read_line() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            let index = self.line - 1;
            let (text, replaced) = decode_lossy(&self.buf);
            match self.parse_line(&text, index + 1) {
                Ok(Some(document)) => {
                    return Some(Ok(ReadItem {
                        index,
                        document,
                        replaced,
                    }));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Parses `text`, line number `line` (1-based); `None` for blank lines and null or
    /// empty values.
    fn parse_line(&self, text: &str, line: u64) -> Result<Option<Document>> {
        let text = text.trim_ascii();
        if text.is_empty() {
            return Ok(None);
        }
        let json_error = |message: String| CorpusError::Json {
            path: self.path.clone(),
            line,
            message,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| json_error(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(json_error(format!(
                "expected an object, found {}",
                json_kind(&value)
            )));
        };
        let candidates: Vec<&str> = match &self.column {
            Some(column) => vec![column.as_str()],
            None => DEFAULT_COLUMNS.to_vec(),
        };
        let Some((field, value)) = candidates
            .iter()
            .find_map(|&name| object.get(name).map(|v| (name, v)))
        else {
            return Err(CorpusError::MissingField {
                path: self.path.clone(),
                line,
                wanted: describe_candidates(&candidates),
                available: list_or_none(object.keys().map(String::as_str)),
            });
        };
        let bad_field = |found: String| CorpusError::BadField {
            path: self.path.clone(),
            line,
            field: field.to_owned(),
            found,
        };
        match value {
            Value::Null => Ok(None),
            Value::String(text) if text.is_empty() => Ok(None),
            Value::String(text) => Ok(Some(Document::Text(text.clone()))),
            Value::Array(items) if items.is_empty() => Ok(None),
            Value::Array(items) => {
                let tokens = items
                    .iter()
                    .map(|item| {
                        item.as_u64()
                            .and_then(|id| u32::try_from(id).ok())
                            .ok_or_else(|| bad_field(format!("a list containing {item}")))
                    })
                    .collect::<Result<Vec<u32>>>()?;
                Ok(Some(Document::Tokens(tokens)))
            }
            other => Err(bad_field(json_kind(other).to_owned())),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// "`text`" or "`text`, `tokens` or `input_ids`".
fn describe_candidates(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// What a Parquet document column holds.
#[derive(Debug, Clone, Copy)]
enum ColumnKind {
    /// A top-level string (BYTE_ARRAY) column.
    Text,
    /// A top-level list of INT32/INT64; `element_nullable` when a list element
    /// itself may be null (definition level `max - 1`).
    Tokens { element_nullable: bool },
}

enum TypedColumn {
    Bytes(ColumnReaderImpl<ByteArrayType>),
    Int32(ColumnReaderImpl<Int32Type>),
    Int64(ColumnReaderImpl<Int64Type>),
}

/// Rows of one Parquet column, decoded a batch at a time.
struct ParquetRows {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    /// Index of the leaf column among the file's columns.
    column: usize,
    kind: ColumnKind,
    max_def_level: i16,
    /// First row index of each row group, plus the total row count at the end.
    group_starts: Vec<u64>,
    /// Row group read by `column_reader` (or the next one to open).
    group: usize,
    column_reader: Option<TypedColumn>,
    /// Index of the next row `column_reader` decodes.
    next_row: u64,
    buffered: VecDeque<ReadItem>,
    def_levels: Vec<i16>,
    rep_levels: Vec<i16>,
}

/// Runs `f`, turning a panic into an error: the parquet crate asserts (and indexes out of
/// bounds) on some corrupt files instead of returning errors.
fn parquet_guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CorpusError::invalid(
            path,
            format!("corrupt parquet data (the parquet reader failed: {message})"),
        ))
    })
}

impl ParquetRows {
    fn open(path: &Path, wanted: Option<&str>) -> Result<Self> {
        parquet_guard(path, || Self::open_unguarded(path, wanted))
    }

    fn open_unguarded(path: &Path, wanted: Option<&str>) -> Result<Self> {
        let file = File::open(path).map_err(|e| CorpusError::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| CorpusError::parquet(path, e))?;
        let metadata = reader.metadata();
        let schema = metadata.file_metadata().schema_descr();
        let (column, kind) = resolve_column(path, schema, wanted)?;
        let max_def_level = schema.column(column).max_def_level();
        let group_starts =
            row_group_starts(path, metadata.row_groups().iter().map(|g| g.num_rows()))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            column,
            kind,
            max_def_level,
            group_starts,
            group: 0,
            column_reader: None,
            next_row: 0,
            buffered: VecDeque::new(),
            def_levels: Vec::new(),
            rep_levels: Vec::new(),
        })
    }

    fn num_groups(&self) -> usize {
        self.group_starts.len() - 1
    }

    fn parquet_error(&self, e: ParquetError) -> CorpusError {
        CorpusError::parquet(&self.path, e)
    }

    /// Positions the reader so the next row decoded is row `row`, skipping
    /// whole row groups without reading them.
    fn skip_rows(&mut self, row: u64) -> Result<()> {
        let path = self.path.clone();
        parquet_guard(&path, || self.skip_rows_unguarded(row))
    }

    fn skip_rows_unguarded(&mut self, row: u64) -> Result<()> {
        while self.group < self.num_groups() && self.group_starts[self.group + 1] <= row {
            self.group += 1;
        }
        self.next_row = self.group_starts[self.group];
        self.column_reader = None;
        self.buffered.clear();
        if self.group < self.num_groups() && row > self.next_row {
            self.open_group()?;
            let wanted = usize::try_from(row - self.next_row)
                .map_err(|_| CorpusError::invalid(&self.path, "row index out of range"))?;
            let skipped = match &mut self.column_reader {
                Some(TypedColumn::Bytes(r)) => r.skip_records(wanted),
                Some(TypedColumn::Int32(r)) => r.skip_records(wanted),
                Some(TypedColumn::Int64(r)) => r.skip_records(wanted),
                None => Ok(0),
            }
            .map_err(|e| self.parquet_error(e))?;
            self.next_row += skipped as u64;
        }
        Ok(())
    }

    fn open_group(&mut self) -> Result<()> {
        let group = self
            .reader
            .get_row_group(self.group)
            .map_err(|e| CorpusError::parquet(&self.path, e))?;
        let column = group
            .get_column_reader(self.column)
            .map_err(|e| CorpusError::parquet(&self.path, e))?;
        self.column_reader = Some(match column {
            ColumnReader::ByteArrayColumnReader(r) => TypedColumn::Bytes(r),
            ColumnReader::Int32ColumnReader(r) => TypedColumn::Int32(r),
            ColumnReader::Int64ColumnReader(r) => TypedColumn::Int64(r),
            _ => {
                return Err(CorpusError::invalid(
                    &self.path,
                    "document column changed physical type between row groups",
                ));
            }
        });
        self.next_row = self.group_starts[self.group];
        Ok(())
    }

    fn next_row(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Some(Ok(item));
            }
            if self.column_reader.is_none() {
                if self.group >= self.num_groups() {
                    return None;
                }
                let path = self.path.clone();
                if let Err(e) = parquet_guard(&path, || self.open_group()) {
                    self.group = self.num_groups();
                    return Some(Err(e));
                }
            }
            let path = self.path.clone();
            match parquet_guard(&path, || self.read_batch()) {
                Ok(0) => {
                    self.column_reader = None;
                    self.group += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    self.column_reader = None;
                    self.group = self.num_groups();
                    return Some(Err(e));
                }
            }
        }
    }

    /// Decodes up to [`PARQUET_BATCH_ROWS`] rows into `buffered`; returns the
    /// number of rows read (0 at the end of the row group).
    fn read_batch(&mut self) -> Result<usize> {
        self.def_levels.clear();
        self.rep_levels.clear();
        let (def, rep) = (&mut self.def_levels, &mut self.rep_levels);
        let first_row = self.next_row;
        let rows = match (&mut self.column_reader, self.kind) {
            (Some(TypedColumn::Bytes(r)), ColumnKind::Text) => {
                let mut values = Vec::new();
                let (rows, _, _) = r
                    .read_records(PARQUET_BATCH_ROWS, Some(&mut *def), None, &mut values)
                    .map_err(|e| CorpusError::parquet(&self.path, e))?;
                // Without definition levels (a required column) every row has a value.
                let max_def = self.max_def_level;
                let present = |i: usize| max_def == 0 || def.get(i) == Some(&max_def);
                let mut values = values.into_iter();
                for i in (0..rows).filter(|&i| present(i)) {
                    let row = first_row + i as u64;
                    let value = values.next().ok_or_else(|| {
                        CorpusError::invalid(&self.path, format!("row {row}: missing value"))
                    })?;
                    let (text, replaced) = decode_lossy(value.data());
                    if !text.is_empty() {
                        self.buffered.push_back(ReadItem {
                            index: row,
                            document: Document::Text(text.into_owned()),
                            replaced,
                        });
                    }
                }
                rows
            }
            (Some(TypedColumn::Int32(r)), ColumnKind::Tokens { element_nullable }) => {
                let mut values = Vec::new();
                let (rows, _, _) = r
                    .read_records(
                        PARQUET_BATCH_ROWS,
                        Some(&mut *def),
                        Some(&mut *rep),
                        &mut values,
                    )
                    .map_err(|e| CorpusError::parquet(&self.path, e))?;
                let values = values.into_iter().map(i64::from);
                let levels = Levels {
                    def,
                    rep,
                    max_def: self.max_def_level,
                    element_nullable,
                };
                levels.split_lists(&self.path, first_row, values, &mut self.buffered)?;
                rows
            }
            (Some(TypedColumn::Int64(r)), ColumnKind::Tokens { element_nullable }) => {
                let mut values = Vec::new();
                let (rows, _, _) = r
                    .read_records(
                        PARQUET_BATCH_ROWS,
                        Some(&mut *def),
                        Some(&mut *rep),
                        &mut values,
                    )
                    .map_err(|e| CorpusError::parquet(&self.path, e))?;
                let levels = Levels {
                    def,
                    rep,
                    max_def: self.max_def_level,
                    element_nullable,
                };
                levels.split_lists(
                    &self.path,
                    first_row,
                    values.into_iter(),
                    &mut self.buffered,
                )?;
                rows
            }
            _ => {
                return Err(CorpusError::invalid(
                    &self.path,
                    "document column changed type between row groups",
                ));
            }
        };
        self.next_row += rows as u64;
        Ok(rows)
    }
}

/// First row index of each row group, plus the total row count at the end, from the row
/// counts of a Parquet footer. A negative count, or a total past `i64::MAX` (Parquet's
/// own limit, which also keeps every row index + a batch within `u64`), is an error.
fn row_group_starts(path: &Path, counts: impl IntoIterator<Item = i64>) -> Result<Vec<u64>> {
    let mut starts = vec![0u64];
    let mut total: i64 = 0;
    for (group, count) in counts.into_iter().enumerate() {
        if count < 0 {
            return Err(CorpusError::invalid(
                path,
                format!("row group {group} has a negative row count ({count})"),
            ));
        }
        total = total.checked_add(count).ok_or_else(|| {
            CorpusError::invalid(
                path,
                format!(
                    "row counts overflow: row groups 0..={group} hold more than {} rows",
                    i64::MAX
                ),
            )
        })?;
        starts.push(total as u64);
    }
    Ok(starts)
}

/// Definition / repetition levels of a batch of list records.
struct Levels<'a> {
    def: &'a [i16],
    rep: &'a [i16],
    max_def: i16,
    element_nullable: bool,
}

impl Levels<'_> {
    /// Splits a batch of whole list records into token documents, skipping
    /// null and empty lists.
    fn split_lists(
        &self,
        path: &Path,
        first_row: u64,
        mut values: impl Iterator<Item = i64>,
        out: &mut VecDeque<ReadItem>,
    ) -> Result<()> {
        let mut row = first_row;
        let mut current: Vec<u32> = Vec::new();
        let mut started = false;
        for (&def, &rep) in self.def.iter().zip(self.rep) {
            if rep == 0 {
                if started {
                    if !current.is_empty() {
                        out.push_back(ReadItem {
                            index: row,
                            document: Document::Tokens(std::mem::take(&mut current)),
                            replaced: 0,
                        });
                    }
                    row += 1;
                }
                started = true;
            }
            if def == self.max_def {
                let value = values.next().ok_or_else(|| {
                    CorpusError::invalid(path, format!("row {row}: missing list value"))
                })?;
                let id = u32::try_from(value).map_err(|_| {
                    CorpusError::invalid(
                        path,
                        format!("row {row}: token id {value} does not fit in u32"),
                    )
                })?;
                current.push(id);
            } else if self.element_nullable && def == self.max_def - 1 {
                return Err(CorpusError::invalid(
                    path,
                    format!("row {row}: null token id in list"),
                ));
            }
        }
        if started && !current.is_empty() {
            out.push_back(ReadItem {
                index: row,
                document: Document::Tokens(current),
                replaced: 0,
            });
        }
        Ok(())
    }
}

/// Finds the leaf column holding documents and how to read it.
fn resolve_column(
    path: &Path,
    schema: &SchemaDescriptor,
    wanted: Option<&str>,
) -> Result<(usize, ColumnKind)> {
    let top_level: Vec<&str> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let candidates: Vec<&str> = match wanted {
        Some(column) => vec![column],
        None => DEFAULT_COLUMNS.to_vec(),
    };
    let Some(name) = candidates.iter().copied().find(|c| top_level.contains(c)) else {
        return Err(CorpusError::MissingColumn {
            path: path.to_path_buf(),
            wanted: describe_candidates(&candidates),
            available: list_or_none(top_level.into_iter()),
        });
    };
    let unsupported = |found: String| CorpusError::UnsupportedColumn {
        path: path.to_path_buf(),
        column: name.to_owned(),
        found,
    };
    let leaves: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| schema.column(i).path().parts().first().map(String::as_str) == Some(name))
        .collect();
    let [leaf] = leaves[..] else {
        return Err(unsupported(format!(
            "a group of {} leaf columns",
            leaves.len()
        )));
    };
    let descr = schema.column(leaf);
    let physical = descr.physical_type();
    let kind = match (descr.max_rep_level(), physical) {
        (0, PhysicalType::BYTE_ARRAY) => ColumnKind::Text,
        (1, PhysicalType::INT32 | PhysicalType::INT64) => {
            let leaf_type = descr.self_type();
            let element_nullable = leaf_type.get_basic_info().has_repetition()
                && leaf_type.get_basic_info().repetition() == Repetition::OPTIONAL;
            ColumnKind::Tokens { element_nullable }
        }
        (0, other) => return Err(unsupported(format!("a scalar {other} column"))),
        (1, other) => return Err(unsupported(format!("a list of {other}"))),
        (depth, other) => {
            return Err(unsupported(format!("{other} nested {depth} lists deep")));
        }
    };
    Ok((leaf, kind))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir.
    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "attn-saes-corpus-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, contents).unwrap();
    }

    fn write_gz(path: &Path, contents: &str) {
        let file = File::create(path).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(contents.as_bytes()).unwrap();
        encoder.finish().unwrap();
    }

    /// Column data for the test Parquet writer, one entry per row.
    pub(crate) enum Col {
        /// `optional binary (UTF8)`.
        Str(Vec<Option<&'static str>>),
        /// `required binary (UTF8)`.
        ReqStr(Vec<&'static str>),
        /// `optional int64`.
        Int(Vec<Option<i64>>),
        /// Legacy 2-level `repeated int32` (no LIST group).
        Repeated(Vec<Vec<i32>>),
        /// 3-level `optional group (LIST) { repeated group list { optional int32 element } }`.
        List32(Vec<Option<Vec<i32>>>),
        /// Same with `required int64` elements.
        List64(Vec<Option<Vec<i64>>>),
    }

    /// Levels for the standard 3-level LIST encoding of an optional list
    /// (`value_def` 3 for optional elements, 2 for required ones).
    fn list_levels<T: Copy>(
        rows: &[Option<Vec<T>>],
        value_def: i16,
    ) -> (Vec<T>, Vec<i16>, Vec<i16>) {
        let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            match row {
                None => {
                    def.push(0);
                    rep.push(0);
                }
                Some(list) if list.is_empty() => {
                    def.push(1);
                    rep.push(0);
                }
                Some(list) => {
                    for (j, &v) in list.iter().enumerate() {
                        values.push(v);
                        def.push(value_def);
                        rep.push(i16::from(j > 0));
                    }
                }
            }
        }
        (values, def, rep)
    }

    /// Writes a Parquet file; `groups` holds, per row group, one `Col` per schema column.
    pub(crate) fn write_parquet(path: &Path, schema: &str, groups: Vec<Vec<Col>>) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().build());
        let file = File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        for group in groups {
            let mut rg = writer.next_row_group().unwrap();
            for data in group {
                let mut col = rg.next_column().unwrap().unwrap();
                match data {
                    Col::Str(rows) => {
                        let values: Vec<ByteArray> =
                            rows.iter().flatten().map(|s| ByteArray::from(*s)).collect();
                        let def: Vec<i16> = rows.iter().map(|r| i16::from(r.is_some())).collect();
                        col.typed::<ByteArrayType>()
                            .write_batch(&values, Some(&def), None)
                            .unwrap();
                    }
                    Col::ReqStr(rows) => {
                        let values: Vec<ByteArray> =
                            rows.iter().map(|s| ByteArray::from(*s)).collect();
                        col.typed::<ByteArrayType>()
                            .write_batch(&values, None, None)
                            .unwrap();
                    }
                    Col::Repeated(rows) => {
                        // Max definition level 1: 0 marks an empty list.
                        let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                        for row in rows {
                            if row.is_empty() {
                                def.push(0);
                                rep.push(0);
                            }
                            for (j, v) in row.into_iter().enumerate() {
                                values.push(v);
                                def.push(1);
                                rep.push(i16::from(j > 0));
                            }
                        }
                        col.typed::<Int32Type>()
                            .write_batch(&values, Some(&def), Some(&rep))
                            .unwrap();
                    }
                    Col::Int(rows) => {
                        let values: Vec<i64> = rows.iter().flatten().copied().collect();
                        let def: Vec<i16> = rows.iter().map(|r| i16::from(r.is_some())).collect();
                        col.typed::<Int64Type>()
                            .write_batch(&values, Some(&def), None)
                            .unwrap();
                    }
                    Col::List32(rows) => {
                        let (values, def, rep) = list_levels(&rows, 3);
                        col.typed::<Int32Type>()
                            .write_batch(&values, Some(&def), Some(&rep))
                            .unwrap();
                    }
                    Col::List64(rows) => {
                        let (values, def, rep) = list_levels(&rows, 2);
                        col.typed::<Int64Type>()
                            .write_batch(&values, Some(&def), Some(&rep))
                            .unwrap();
                    }
                }
                col.close().unwrap();
            }
            rg.close().unwrap();
        }
        writer.close().unwrap();
    }

    pub(crate) const TEXT_SCHEMA: &str =
        "message schema { optional binary text (UTF8); optional int64 id; }";

    fn collect(corpus: &Corpus, start: CorpusPosition) -> Vec<(CorpusPosition, Document)> {
        corpus
            .documents(start, false)
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    fn docs(corpus: &Corpus) -> Vec<Document> {
        collect(corpus, CorpusPosition::default())
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    fn text(s: &str) -> Document {
        Document::Text(s.to_owned())
    }

    fn pos(file: usize, item: u64, epoch: u64) -> CorpusPosition {
        CorpusPosition { file, item, epoch }
    }

    /// Deterministic pseudo-random numbers for generated test data.
    pub(crate) struct Lcg(pub u64);
    impl Lcg {
        pub(crate) fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Text of lines and blank-line separated paragraphs, about `bytes` long.
    pub(crate) fn generated_text(bytes: usize, blank_lines: bool, seed: u64) -> String {
        let words = [
            "alpha", "beta", "gamma", "délta", "ε", "zeta", "eta", "θήτα",
        ];
        let mut rng = Lcg(seed);
        let mut out = String::new();
        while out.len() < bytes {
            for _ in 0..1 + rng.next(8) {
                for w in 0..1 + rng.next(15) {
                    if w > 0 {
                        out.push(' ');
                    }
                    out.push_str(words[rng.next(words.len() as u64) as usize]);
                }
                out.push('\n');
            }
            if blank_lines {
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn small_text_file_is_one_document() {
        let dir = temp_dir("small-text");
        let path = dir.join("a.txt");
        write(&path, "first line\n\nsecond paragraph\n");
        let corpus = Corpus::open(&path, None).unwrap();
        assert_eq!(corpus.files().collect::<Vec<_>>(), vec![path.as_path()]);
        let got = collect(&corpus, CorpusPosition::default());
        // The position after the last item is normalised to the next file.
        assert_eq!(
            got,
            vec![(pos(1, 0, 0), text("first line\n\nsecond paragraph\n"))]
        );
        // Unknown extensions are text too; empty files have no documents.
        write(&dir.join("README"), "hello");
        assert_eq!(
            docs(&Corpus::open(&dir.join("README"), None).unwrap()),
            vec![text("hello")]
        );
        write(&dir.join("empty.txt"), "");
        assert!(docs(&Corpus::open(&dir.join("empty.txt"), None).unwrap()).is_empty());
    }

    fn chunk_texts(path: &Path) -> Vec<String> {
        docs(&Corpus::open(path, None).unwrap())
            .into_iter()
            .map(|d| match d {
                Document::Text(t) => t,
                Document::Tokens(_) => panic!("expected text"),
            })
            .collect()
    }

    #[test]
    fn large_text_is_chunked_at_paragraphs() {
        let dir = temp_dir("chunks");
        let content = generated_text(600 * 1024, true, 1);
        let path = dir.join("big.txt");
        write(&path, &content);
        let chunks = chunk_texts(&path);
        assert!(chunks.len() >= 8, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), content);
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(chunk.len() >= TEXT_CHUNK_TARGET_BYTES);
            assert!(chunk.len() < TEXT_CHUNK_TARGET_BYTES + 4096);
            assert!(chunk.ends_with("\n\n"), "chunk must end at a blank line");
        }
        // The same through gzip.
        let gz = dir.join("big.txt.gz");
        write_gz(&gz, &content);
        assert_eq!(chunk_texts(&gz), chunks);
    }

    #[test]
    fn text_without_blank_lines_is_chunked_at_lines_and_chars() {
        let dir = temp_dir("lines");
        let content = generated_text(700 * 1024, false, 2);
        let path = dir.join("lines.txt");
        write(&path, &content);
        let chunks = chunk_texts(&path);
        assert!(chunks.len() >= 2);
        assert_eq!(chunks.concat(), content);
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(chunk.len() >= TEXT_CHUNK_MAX_BYTES && chunk.ends_with('\n'));
        }
        // One huge line of 2-byte characters, cut at an odd byte limit: the
        // split character moves whole into the next chunk.
        let line = format!("x{}", "é".repeat(400 * 1024));
        let path = dir.join("line.txt");
        write(&path, &line);
        let chunks = chunk_texts(&path);
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= TEXT_CHUNK_MAX_BYTES));
        assert_eq!(chunks.concat(), line);
    }

    #[test]
    fn jsonl_documents_and_positions() {
        let dir = temp_dir("jsonl");
        let content = concat!(
            "{\"text\": \"hello world\", \"id\": 1}\n",
            "\n",
            "{\"text\": null}\n",
            "{\"text\": \"\"}\n",
            "{\"text\": \"second\"}\r\n",
            "{\"tokens\": [1, 2, 3]}\n",
            "{\"text\": \"last, no newline\"}"
        );
        let path = dir.join("data.jsonl");
        write(&path, content);
        let corpus = Corpus::open(&path, None).unwrap();
        assert_eq!(
            collect(&corpus, CorpusPosition::default()),
            vec![
                (pos(0, 1, 0), text("hello world")),
                (pos(0, 5, 0), text("second")),
                (pos(0, 6, 0), Document::Tokens(vec![1, 2, 3])),
                (pos(1, 0, 0), text("last, no newline")),
            ]
        );
        // A custom field, and the same file gzipped with a .json extension.
        let path = dir.join("custom.json.gz");
        write_gz(
            &path,
            "{\"content\": \"a\", \"text\": \"b\"}\n{\"content\": [7]}\n",
        );
        let corpus = Corpus::open(&path, Some("content")).unwrap();
        assert_eq!(docs(&corpus), vec![text("a"), Document::Tokens(vec![7])]);
    }

    #[test]
    fn parquet_text_and_token_columns() {
        let dir = temp_dir("parquet");
        let path = dir.join("text.parquet");
        write_parquet(
            &path,
            TEXT_SCHEMA,
            vec![
                vec![
                    Col::Str(vec![Some("a"), None, Some("b")]),
                    Col::Int(vec![Some(1), Some(2), None]),
                ],
                vec![Col::Str(vec![Some("")]), Col::Int(vec![Some(3)])],
                vec![
                    Col::Str(vec![Some("c"), Some("ünïcode")]),
                    Col::Int(vec![None, None]),
                ],
            ],
        );
        let corpus = Corpus::open(&path, None).unwrap();
        assert_eq!(
            collect(&corpus, CorpusPosition::default()),
            vec![
                (pos(0, 1, 0), text("a")),
                (pos(0, 3, 0), text("b")),
                (pos(0, 5, 0), text("c")),
                (pos(1, 0, 0), text("ünïcode")),
            ]
        );

        let schema = "message schema { optional group input_ids (LIST) { repeated group list { optional int32 element; } } }";
        let path = dir.join("ids32.parquet");
        write_parquet(
            &path,
            schema,
            vec![
                vec![Col::List32(vec![Some(vec![5, 6]), None, Some(vec![])])],
                vec![Col::List32(vec![Some(vec![7]), Some(vec![8, 9, 10])])],
            ],
        );
        assert_eq!(
            collect(
                &Corpus::open(&path, None).unwrap(),
                CorpusPosition::default()
            ),
            vec![
                (pos(0, 1, 0), Document::Tokens(vec![5, 6])),
                (pos(0, 4, 0), Document::Tokens(vec![7])),
                (pos(1, 0, 0), Document::Tokens(vec![8, 9, 10])),
            ]
        );

        let schema = "message schema { optional binary text (UTF8); optional group tokens (LIST) { repeated group list { required int64 element; } } }";
        let path = dir.join("ids64.parquet");
        let long: Vec<i64> = (0..5000).collect();
        write_parquet(
            &path,
            schema,
            vec![vec![
                Col::Str(vec![Some("ignored"), Some("ignored")]),
                Col::List64(vec![Some(long.clone()), Some(vec![1])]),
            ]],
        );
        let expected = vec![
            Document::Tokens(long.iter().map(|&t| t as u32).collect()),
            Document::Tokens(vec![1]),
        ];
        assert_eq!(
            docs(&Corpus::open(&path, Some("tokens")).unwrap()),
            expected
        );

        let path = dir.join("required.parquet");
        let schema = "message schema { required binary body (UTF8); repeated int32 ids; }";
        write_parquet(
            &path,
            schema,
            vec![
                vec![
                    Col::ReqStr(vec!["x", "y"]),
                    Col::Repeated(vec![vec![], vec![4, 5]]),
                ],
                vec![Col::ReqStr(vec!["z"]), Col::Repeated(vec![vec![6]])],
            ],
        );
        assert_eq!(
            docs(&Corpus::open(&path, Some("body")).unwrap()),
            ["x", "y", "z"].map(text).to_vec()
        );
        assert_eq!(
            collect(
                &Corpus::open(&path, Some("ids")).unwrap(),
                CorpusPosition::default()
            ),
            vec![
                (pos(0, 2, 0), Document::Tokens(vec![4, 5])),
                (pos(1, 0, 0), Document::Tokens(vec![6])),
            ]
        );
    }

    #[test]
    fn parquet_batches_and_skips_within_large_row_groups() {
        let dir = temp_dir("parquet-large");
        let path = dir.join("large.parquet");
        let rows = |g: usize, n: usize| -> Vec<Option<&'static str>> {
            (0..n)
                .map(|r| {
                    let s: &'static str = Box::leak(format!("g{g} r{r}").into());
                    (r % 10 != 3).then_some(s)
                })
                .collect()
        };
        write_parquet(
            &path,
            TEXT_SCHEMA,
            vec![
                vec![Col::Str(rows(0, 1000)), Col::Int(vec![None; 1000])],
                vec![Col::Str(rows(1, 700)), Col::Int(vec![None; 700])],
            ],
        );
        let corpus = Corpus::open(&path, None).unwrap();
        let all = collect(&corpus, CorpusPosition::default());
        assert_eq!(all.len(), 1530);
        assert_eq!(all[0], (pos(0, 1, 0), text("g0 r0")));
        assert_eq!(all[900], (pos(0, 1001, 0), text("g1 r0")));
        for i in [0, 255, 256, 600, 899, 900, 1200, 1528, 1529] {
            assert_eq!(
                collect(&corpus, all[i].0),
                all[i + 1..],
                "after document {i}"
            );
        }
    }

    #[test]
    fn directory_is_read_recursively_in_path_order() {
        let dir = temp_dir("dir");
        write(&dir.join("b.txt"), "b");
        write(&dir.join("a.txt"), "a.txt");
        write(&dir.join("a/z.jsonl"), "{\"text\": \"a/z\"}\n");
        write(&dir.join("a/y/x.txt"), "a/y/x");
        write(&dir.join(".hidden"), "hidden");
        write(&dir.join("c/.git/config"), "hidden dir");
        write_parquet(
            &dir.join("c/d.parquet"),
            TEXT_SCHEMA,
            vec![vec![Col::Str(vec![Some("c/d")]), Col::Int(vec![None])]],
        );
        let corpus = Corpus::open(&dir, None).unwrap();
        let names: Vec<String> = corpus
            .files()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["a/y/x.txt", "a/z.jsonl", "a.txt", "b.txt", "c/d.parquet"]
        );
        assert_eq!(
            docs(&corpus),
            ["a/y/x", "a/z", "a.txt", "b", "c/d"].map(text).to_vec()
        );
    }

    /// A directory mixing every format, several items per file.
    pub(crate) fn mixed_corpus(name: &str) -> PathBuf {
        let dir = temp_dir(name);
        write(&dir.join("1.txt"), generated_text(150 * 1024, true, 3));
        write(&dir.join("2.txt"), "");
        let lines: String = (0..30)
            .map(|i| format!("{{\"text\": \"line {i} {}\"}}\n", "word ".repeat(i % 7)))
            .collect();
        write(&dir.join("3.jsonl"), lines);
        let groups = (0..4)
            .map(|g| {
                let rows: Vec<Option<&'static str>> = (0..5)
                    .map(|r| {
                        let s: &'static str =
                            Box::leak(format!("row {g}.{r} {}", "tok ".repeat(r * 3)).into());
                        (r != 2).then_some(s)
                    })
                    .collect();
                vec![Col::Str(rows), Col::Int(vec![None; 5])]
            })
            .collect();
        write_parquet(&dir.join("4.parquet"), TEXT_SCHEMA, groups);
        write(&dir.join("5.txt"), "tail");
        dir
    }

    #[test]
    fn resuming_from_any_position_continues_identically() {
        let dir = mixed_corpus("resume");
        let corpus = Corpus::open(&dir, None).unwrap();
        let all = collect(&corpus, CorpusPosition::default());
        assert!(all.len() > 40);
        for (i, (position, _)) in all.iter().enumerate() {
            let rest = collect(&corpus, *position);
            assert_eq!(rest, all[i + 1..], "resuming after document {i}");
        }
        // Positions inside a file that is past its end, or past the corpus.
        assert_eq!(
            collect(&corpus, pos(1, 7, 0)),
            collect(&corpus, pos(2, 0, 0))
        );
        assert!(collect(&corpus, pos(6, 0, 0)).is_empty());
    }

    #[test]
    fn repeat_loops_over_epochs() {
        let dir = mixed_corpus("repeat");
        let corpus = Corpus::open(&dir, None).unwrap();
        let one_pass = collect(&corpus, CorpusPosition::default());
        let n = one_pass.len();
        let looped: Vec<_> = corpus
            .documents(CorpusPosition::default(), true)
            .take(3 * n)
            .collect::<Result<_>>()
            .unwrap();
        for (i, (position, document)) in looped.iter().enumerate() {
            let (p, d) = &one_pass[i % n];
            assert_eq!(document, d);
            let epoch = (i / n) as u64;
            if i % n == n - 1 {
                // The last document of a pass points at the next epoch.
                assert_eq!(*position, pos(0, 0, epoch + 1));
            } else {
                assert_eq!(*position, CorpusPosition { epoch, ..*p });
            }
        }
        // Resume across an epoch boundary.
        let resumed: Vec<_> = corpus
            .documents(looped[n - 3].0, true)
            .take(10)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(resumed, looped[n - 2..n + 8]);
    }

    fn open_err(path: &Path, column: Option<&str>) -> String {
        Corpus::open(path, column).unwrap_err().to_string()
    }

    fn first_err(path: &Path, column: Option<&str>) -> CorpusError {
        let corpus = Corpus::open(path, column).unwrap();
        let mut documents = corpus.documents(CorpusPosition::default(), false);
        let error = documents.find_map(|r| r.err()).expect("expected an error");
        assert!(documents.next().is_none(), "stream ends after an error");
        error
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = temp_dir("errors");
        let missing = dir.join("nope.txt");
        let msg = open_err(&missing, None);
        assert!(matches!(
            Corpus::open(&missing, None),
            Err(CorpusError::NotFound { .. })
        ));
        assert!(
            msg.contains("nope.txt") && msg.contains("does not exist"),
            "{msg}"
        );

        let empty = dir.join("empty");
        write(&empty.join(".only-hidden"), "x");
        let msg = open_err(&empty, None);
        assert!(matches!(
            Corpus::open(&empty, None),
            Err(CorpusError::EmptyDirectory { .. })
        ));
        assert!(msg.contains("empty") && msg.contains("no files"), "{msg}");

        let bad = dir.join("bad.jsonl");
        write(
            &bad,
            "{\"text\": \"ok\"}\n\n{\"text\": \"unterminated\n{\"text\": \"x\"}\n",
        );
        let error = first_err(&bad, None);
        assert!(
            matches!(error, CorpusError::Json { line: 3, .. }),
            "{error:?}"
        );
        let msg = error.to_string();
        assert!(msg.contains("bad.jsonl") && msg.contains("line 3"), "{msg}");

        let nofield = dir.join("nofield.jsonl");
        write(
            &nofield,
            "{\"text\": \"ok\"}\n{\"body\": \"x\", \"url\": \"u\"}\n",
        );
        let msg = first_err(&nofield, None).to_string();
        assert!(
            msg.contains("nofield.jsonl") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(
            msg.contains("`text`, `tokens` or `input_ids`") && msg.contains("body, url"),
            "{msg}"
        );
        let msg = first_err(&nofield, Some("body")).to_string();
        assert!(msg.contains("line 1") && msg.contains("`body`"), "{msg}");

        let badtype = dir.join("badtype.jsonl");
        write(&badtype, "{\"text\": 5}\n");
        let msg = first_err(&badtype, None).to_string();
        assert!(
            msg.contains("badtype.jsonl") && msg.contains("a number"),
            "{msg}"
        );

        let nocol = dir.join("nocol.parquet");
        write_parquet(
            &nocol,
            "message schema { optional binary content (UTF8); optional int64 url; }",
            vec![vec![Col::Str(vec![Some("x")]), Col::Int(vec![Some(1)])]],
        );
        let msg = open_err(&nocol, None);
        assert!(
            msg.contains("nocol.parquet") && msg.contains("content, url"),
            "{msg}"
        );
        let msg = open_err(&nocol, Some("body"));
        assert!(msg.contains("`body`"), "{msg}");
        let msg = open_err(&nocol, Some("url"));
        assert!(msg.contains("`url`") && msg.contains("INT64"), "{msg}");

        // Directory errors surface at open (parquet) or while streaming, naming the file.
        let mixed = dir.join("mixed");
        write(&mixed.join("a.txt"), "fine");
        fs::copy(&nocol, mixed.join("b.parquet")).unwrap();
        let msg = open_err(&mixed, None);
        assert!(msg.contains("b.parquet"), "{msg}");

        let garbage = dir.join("garbage.parquet");
        write(&garbage, "not parquet at all");
        let msg = open_err(&garbage, None);
        assert!(msg.contains("garbage.parquet"), "{msg}");
    }

    /// Documents and the replacement count of the file at `path`, read to the end.
    fn docs_and_replaced(path: &Path) -> (Vec<Document>, u64) {
        let corpus = Corpus::open(path, None).unwrap();
        let mut documents = corpus.documents(CorpusPosition::default(), false);
        let docs = documents
            .by_ref()
            .map(|r| r.map(|(_, d)| d))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        (docs, documents.replaced_utf8())
    }

    /// Invalid UTF-8 in plain text and JSONL becomes U+FFFD, one per invalid sequence as
    /// `String::from_utf8_lossy` does, and is counted; the stream goes on.
    #[test]
    fn invalid_utf8_is_replaced_and_counted() {
        let dir = temp_dir("lossy");
        let latin1 = dir.join("latin1.txt");
        write(&latin1, b"caf\xe9 cr\xe8me \xf0\x9f\n");
        let (docs, replaced) = docs_and_replaced(&latin1);
        assert_eq!(docs, vec![text("caf\u{FFFD} cr\u{FFFD}me \u{FFFD}\n")]);
        assert_eq!(replaced, 3);

        // JSONL: a line with a bad byte inside the string, then a clean line.
        let jsonl = dir.join("bad.jsonl");
        write(&jsonl, b"{\"text\": \"a\xffb\xc3\"}\n{\"text\": \"ok\"}\n");
        let (docs, replaced) = docs_and_replaced(&jsonl);
        assert_eq!(docs, vec![text("a\u{FFFD}b\u{FFFD}"), text("ok")]);
        assert_eq!(replaced, 2);

        let clean = dir.join("clean.txt");
        write(&clean, "déjà vu\n");
        assert_eq!(docs_and_replaced(&clean).1, 0);
    }

    /// Text cut into chunks decodes as the whole file would, also when a character or an
    /// invalid sequence straddles the length cut.
    #[test]
    fn lossy_decoding_is_the_same_across_chunk_cuts() {
        let dir = temp_dir("lossy-cuts");
        // One line of 3 x the chunk limit, no newline: cut at TEXT_CHUNK_MAX_BYTES each.
        let mut bytes = vec![b'a'; 3 * TEXT_CHUNK_MAX_BYTES + 10];
        let cut = TEXT_CHUNK_MAX_BYTES;
        // A valid euro sign across the first cut, an unfinished 4-byte sequence across the
        // second (one U+FFFD), a lone continuation byte and a bad lead byte elsewhere.
        bytes[cut - 1..cut + 2].copy_from_slice("€".as_bytes());
        bytes[2 * cut - 2..2 * cut].copy_from_slice(b"\xf0\x9f");
        bytes[100] = 0x80;
        bytes[2 * cut + 50] = 0xc0;
        // An unfinished sequence at the very end.
        let n = bytes.len();
        bytes[n - 2..].copy_from_slice(b"\xe2\x82");
        let path = dir.join("long.txt");
        write(&path, &bytes);
        let (docs, replaced) = docs_and_replaced(&path);
        assert!(docs.len() >= 3, "{} chunks", docs.len());
        let joined: String = docs
            .iter()
            .map(|d| match d {
                Document::Text(t) => t.as_str(),
                Document::Tokens(_) => panic!("text expected"),
            })
            .collect();
        let whole = String::from_utf8_lossy(&bytes);
        assert_eq!(joined, whole);
        assert_eq!(replaced, 4);
        assert_eq!(whole.matches('\u{FFFD}').count(), 4);
        assert!(joined.contains('€'));
    }

    #[test]
    fn incomplete_tail_finds_only_unfinished_characters() {
        assert_eq!(incomplete_utf8_tail(b""), 0);
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("caf\u{e9}".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(b"ab\xc3"), 1);
        assert_eq!(incomplete_utf8_tail(b"ab\xe2\x82"), 2);
        assert_eq!(incomplete_utf8_tail(b"ab\xf0\x9f\x98"), 3);
        // Invalid rather than unfinished: nothing to carry.
        assert_eq!(incomplete_utf8_tail(b"ab\x80"), 0);
        assert_eq!(incomplete_utf8_tail(b"ab\xe0\x80"), 0);
        assert_eq!(incomplete_utf8_tail(b"\x80\x80\x80"), 0);
    }

    /// A JSONL line longer than the cap is an error naming the file and line, read no
    /// further than the cap (here 64 bytes instead of 256 MiB).
    #[test]
    fn overlong_jsonl_line_is_an_error() {
        let dir = temp_dir("long-line");
        let path = dir.join("long.jsonl");
        let ok = format!("{{\"text\": \"{}\"}}", "x".repeat(52));
        assert_eq!(ok.len(), 64);
        let long = format!("{{\"text\": \"{}\"}}", "y".repeat(53));
        write(&path, format!("{ok}\n{ok}\n{long}\n{ok}\n"));
        let read = |max_line_bytes: usize| -> Vec<Result<u64>> {
            let mut lines = JsonLines::new(
                &path,
                Box::new(BufReader::new(File::open(&path).unwrap())),
                None,
            );
            lines.max_line_bytes = max_line_bytes;
            // Up to the first error, where a `Documents` stream stops.
            let mut out = Vec::new();
            while let Some(result) = lines.next_line() {
                let failed = result.is_err();
                out.push(result.map(|item| item.index));
                if failed {
                    break;
                }
            }
            out
        };
        let results = read(64);
        assert_eq!(results.len(), 3, "two lines, then the error");
        assert_eq!(results[0].as_ref().unwrap(), &0);
        assert_eq!(results[1].as_ref().unwrap(), &1);
        let err = results[2].as_ref().unwrap_err();
        assert!(
            matches!(err, CorpusError::LineTooLong { line: 3, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("long.jsonl") && msg.contains("line 3") && msg.contains("64 bytes"),
            "{msg}"
        );
        // A last line without a newline, exactly at the cap, is fine.
        write(&path, &ok);
        assert!(read(64).iter().all(|r| r.is_ok()));
        write(&path, &long);
        assert!(read(64)[0].is_err());
        // The real cap reads the file.
        write(&path, format!("{ok}\n{long}\n"));
        assert!(read(MAX_JSONL_LINE_BYTES).iter().all(|r| r.is_ok()));
    }

    #[test]
    fn parquet_row_counts_are_checked() {
        let path = Path::new("rows.parquet");
        assert_eq!(row_group_starts(path, [3, 0, 5]).unwrap(), vec![0, 3, 3, 8]);
        assert_eq!(row_group_starts(path, []).unwrap(), vec![0]);
        let msg = row_group_starts(path, [i64::MAX, 1])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("rows.parquet") && msg.contains("overflow"),
            "{msg}"
        );
        // Three groups of i64::MAX rows would also wrap a u64 total.
        assert!(row_group_starts(path, [i64::MAX; 3]).is_err());
        let msg = row_group_starts(path, [2, -1]).unwrap_err().to_string();
        assert!(
            msg.contains("row group 1") && msg.contains("negative"),
            "{msg}"
        );
    }

    #[test]
    fn repeating_an_empty_corpus_stops_with_an_error() {
        let dir = temp_dir("no-docs");
        write(&dir.join("a.txt"), "");
        write(&dir.join("b.jsonl"), "\n{\"text\": null}\n");
        let corpus = Corpus::open(&dir, None).unwrap();
        assert!(docs(&corpus).is_empty());
        let results: Vec<_> = corpus.documents(pos(1, 1, 0), true).collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(results[0], Err(CorpusError::NoDocuments { .. })));
    }
}
