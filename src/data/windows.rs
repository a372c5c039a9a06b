//! Tokens stage: turns documents into fixed-size context windows with BOS.
//!
//! # Convention (SAELens, `prepend_bos=True`)
//!
//! [`ContextWindows`] reproduces SAELens's
//! `sae_lens.tokenization_and_batching.concat_and_batch_sequences` (with its
//! helper `_add_tokens_to_batch`) exactly as
//! `ActivationsStore._iterate_tokenized_sequences` calls it for a dataset that
//! is not pre-tokenised, with the default config (`prepend_bos=True`,
//! `sequence_separator_token="bos"`, `disable_concat_sequences=False`; checked
//! against SAELens commit 91ca16cc, `sae_lens/training/activations_store.py`
//! and `sae_lens/config.py`):
//!
//! * `begin_batch_token_id = BOS`: every window starts with BOS — unless the
//!   token that would follow it already is BOS, in which case that token is
//!   position 0 instead (no doubled BOS);
//! * `sequence_separator_token_id = BOS`: when a document starts inside a
//!   window, a BOS goes between it and the previous document (again skipped
//!   when the document itself starts with BOS). A separator may be the last
//!   token of a window; the next window then still begins with its own BOS;
//! * `begin_sequence_token_id = None`: nothing else is added at document
//!   starts, so a document starting exactly at a window start gets just the
//!   window's BOS;
//! * documents are tokenised without special tokens (SAELens calls
//!   `model.to_tokens(row, prepend_bos=False, truncate=False)`), long
//!   documents run on into the next windows, empty documents contribute
//!   nothing (not even a separator), and the final partial window is dropped.
//!
//! With `bos = None` windows are a plain concatenation of document tokens
//! (SAELens with `prepend_bos=False` and `sequence_separator_token=None`).
//!
//! Pre-tokenised documents ([`Document::Tokens`]) go through the same
//! concatenation; note that SAELens instead uses pre-tokenised rows as they
//! are (truncated to the context size). Rows that already start with BOS get
//! no extra BOS, as above.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::corpus::{Corpus, CorpusError, CorpusPosition, Document, Documents};

/// Turns text into token ids, without adding special tokens.
pub trait TextEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
}

impl TextEncoder for tokenizers::Tokenizer {
    /// Encodes without special tokens. Fails if the tokenizer truncates or pads
    /// (e.g. a `tokenizer.json` with a `truncation` section): that would cut
    /// documents; clear it with `with_truncation(None)` / `with_padding(None)`.
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        if self.get_truncation().is_some() || self.get_padding().is_some() {
            return Err(
                "tokenizer has truncation or padding enabled; disable both to tokenise corpus documents"
                    .to_owned(),
            );
        }
        let encoding = (**self)
            .encode_fast(text, false)
            .map_err(|e| e.to_string())?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for &T {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        (**self).encode(text)
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for std::sync::Arc<T> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        (**self).encode(text)
    }
}

/// Where a [`ContextWindows`] stream stands between two windows: the corpus
/// position the pending document is read from, and how many of its tokens
/// have already gone into windows. (The pending document is re-read and
/// re-tokenised on resume.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WindowsPosition {
    pub corpus: CorpusPosition,
    pub offset: u64,
}

/// Errors of the tokens stage.
#[derive(Debug, thiserror::Error)]
pub enum WindowsError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("cannot tokenise {} (item {item}): {message}", path.display())]
    Encode {
        path: PathBuf,
        item: u64,
        message: String,
    },
    #[error("context size {context_size} is too small (need at least {minimum})")]
    ContextSize { context_size: usize, minimum: usize },
    #[error(
        "cannot resume: {} (item {item}) has {tokens} tokens but the saved offset is {offset}; did the corpus or tokenizer change?",
        path.display()
    )]
    ResumeOffset {
        path: PathBuf,
        item: u64,
        tokens: usize,
        offset: u64,
    },
    #[error("corpus {} produced no tokens in a whole pass", path.display())]
    NoTokens { path: PathBuf },
}

/// Iterator of `(window, position after it)`: windows of exactly
/// `context_size` tokens built as described in the module docs.
pub struct ContextWindows<E> {
    documents: Documents,
    root: PathBuf,
    encoder: E,
    context_size: usize,
    bos: Option<u32>,
    /// Tokens of the pending document and how many of them are used.
    tokens: Vec<u32>,
    offset: usize,
    /// Position the pending document is read from / the position after it.
    doc_start: CorpusPosition,
    doc_end: CorpusPosition,
    /// Saved offset to apply to the first document (resume).
    resume_offset: Option<u64>,
    /// The window being filled (SAELens's `batch`; empty means `None`).
    window: Vec<u32>,
    /// Epoch (of the position after the document) of the last document that
    /// produced tokens, to stop a repeating stream over a token-less corpus.
    last_tokens_epoch: u64,
    finished: bool,
}

impl<E: TextEncoder> ContextWindows<E> {
    /// Starts (or resumes, from a position yielded earlier) a window stream
    /// over `corpus`. With `repeat` the corpus is read in epochs forever.
    ///
    /// `context_size` must be at least 1, or 2 with a BOS token.
    pub fn new(
        corpus: &Corpus,
        encoder: E,
        context_size: usize,
        bos: Option<u32>,
        start: WindowsPosition,
        repeat: bool,
    ) -> Result<Self, WindowsError> {
        let minimum = if bos.is_some() { 2 } else { 1 };
        if context_size < minimum {
            return Err(WindowsError::ContextSize {
                context_size,
                minimum,
            });
        }
        Ok(Self {
            documents: corpus.documents(start.corpus, repeat),
            root: corpus.root().to_path_buf(),
            encoder,
            context_size,
            bos,
            tokens: Vec::new(),
            offset: 0,
            doc_start: start.corpus,
            doc_end: start.corpus,
            resume_offset: (start.offset > 0).then_some(start.offset),
            window: Vec::with_capacity(context_size),
            last_tokens_epoch: start.corpus.epoch,
            finished: false,
        })
    }

    /// The first `n` windows of `corpus` (fewer if it is shorter) and the position after
    /// them: held-out evaluation windows, or a sample to inspect.
    pub fn first(
        corpus: &Corpus,
        encoder: E,
        context_size: usize,
        bos: Option<u32>,
        n: usize,
    ) -> Result<(Vec<Vec<u32>>, WindowsPosition), WindowsError> {
        let mut windows = Vec::with_capacity(n);
        let mut end = WindowsPosition::default();
        for item in Self::new(corpus, encoder, context_size, bos, end, false)?.take(n) {
            let (window, pos) = item?;
            windows.push(window);
            end = pos;
        }
        Ok((windows, end))
    }

    /// Invalid UTF-8 sequences replaced with U+FFFD in the documents read so far (see
    /// [`Documents::replaced_utf8`]).
    pub fn replaced_utf8(&self) -> u64 {
        self.documents.replaced_utf8()
    }

    /// The position to resume from to continue after the last yielded window.
    pub fn resume_position(&self) -> WindowsPosition {
        if self.offset >= self.tokens.len() {
            WindowsPosition {
                corpus: self.doc_end,
                offset: 0,
            }
        } else {
            WindowsPosition {
                corpus: self.doc_start,
                offset: self.offset as u64,
            }
        }
    }

    /// One step of SAELens's `_add_tokens_to_batch` with
    /// `begin_batch_token_id = sequence_separator_token_id = bos` and
    /// `begin_sequence_token_id = None`. Requires unused tokens and a window
    /// that is not full.
    fn add_tokens(&mut self) {
        // At a window start BOS is the begin-batch token, otherwise it is the
        // separator (this branch is only reached at a document start then);
        // both are skipped when the next token already is BOS.
        if let Some(bos) = self.bos
            && self.tokens[self.offset] != bos
        {
            self.window.push(bos);
        }
        let needed = self.context_size - self.window.len();
        let end = self.tokens.len().min(self.offset + needed);
        self.window
            .extend_from_slice(&self.tokens[self.offset..end]);
        self.offset = end;
    }

    /// Path and item index of the pending document, for errors.
    fn source(&self) -> (PathBuf, u64) {
        self.documents.last_source().map_or_else(
            || (self.root.clone(), 0),
            |(path, item)| (path.to_path_buf(), item),
        )
    }

    /// Reads and tokenises the next document; `Ok(false)` at the end of the corpus.
    fn load_document(&mut self) -> Result<bool, WindowsError> {
        let Some(next) = self.documents.next() else {
            return Ok(false);
        };
        let (after, document) = next?;
        self.doc_start = self.doc_end;
        self.doc_end = after;
        self.tokens = match document {
            Document::Text(text) => self.encoder.encode(&text).map_err(|message| {
                let (path, item) = self.source();
                WindowsError::Encode {
                    path,
                    item,
                    message,
                }
            })?,
            Document::Tokens(tokens) => tokens,
        };
        self.offset = 0;
        if let Some(offset) = self.resume_offset.take() {
            let (path, item) = self.source();
            self.offset = usize::try_from(offset)
                .ok()
                .filter(|&o| o <= self.tokens.len())
                .ok_or(WindowsError::ResumeOffset {
                    path,
                    item,
                    tokens: self.tokens.len(),
                    offset,
                })?;
        }
        if self.offset < self.tokens.len() {
            self.last_tokens_epoch = after.epoch;
        } else if after.epoch >= self.last_tokens_epoch + 2 {
            return Err(WindowsError::NoTokens {
                path: self.root.clone(),
            });
        }
        Ok(true)
    }
}

impl<E: TextEncoder> Iterator for ContextWindows<E> {
    type Item = Result<(Vec<u32>, WindowsPosition), WindowsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            if self.offset < self.tokens.len() {
                self.add_tokens();
                if self.window.len() == self.context_size {
                    let window =
                        std::mem::replace(&mut self.window, Vec::with_capacity(self.context_size));
                    return Some(Ok((window, self.resume_position())));
                }
                continue;
            }
            match self.load_document() {
                Ok(true) => {}
                // The trailing partial window is dropped, as in SAELens.
                Ok(false) => {
                    self.finished = true;
                    return None;
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::corpus::TEXT_CHUNK_TARGET_BYTES;
    use super::super::corpus::tests::{Lcg, generated_text, mixed_corpus, temp_dir, write};
    use super::*;
    use std::path::Path;
    use std::str::FromStr;

    const BOS: u32 = 256;

    /// Test encoder: one token per UTF-8 byte (so 256 is free for BOS).
    struct Bytes;
    impl TextEncoder for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(u32::from).collect())
        }
    }

    /// A literal port of SAELens's `concat_and_batch_sequences` /
    /// `_add_tokens_to_batch` (sae_lens/tokenization_and_batching.py,
    /// `disable_concat_sequences=False`), used as the reference.
    fn saelens_reference(
        docs: &[Vec<u32>],
        context_size: usize,
        begin_batch: Option<u32>,
        begin_sequence: Option<u32>,
        separator: Option<u32>,
    ) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut batch: Option<Vec<u32>> = None;
        for tokens in docs {
            let mut offset = 0;
            let mut is_start_of_sequence = true;
            while tokens.len() > offset {
                let mut prefix: Vec<u32> = Vec::new();
                let mut first = tokens[offset];
                if is_start_of_sequence
                    && let Some(b) = begin_sequence
                    && first != b
                {
                    prefix.insert(0, b);
                    first = b;
                }
                let slice = |from: usize, n: usize| {
                    &tokens[from.min(tokens.len())..(from + n).min(tokens.len())]
                };
                match batch.take() {
                    None => {
                        if let Some(b) = begin_batch
                            && first != b
                        {
                            prefix.insert(0, b);
                        }
                        let needed = context_size.saturating_sub(prefix.len());
                        let mut b = prefix[..prefix.len().min(context_size)].to_vec();
                        b.extend_from_slice(slice(offset, needed));
                        batch = Some(b);
                        offset += needed;
                    }
                    Some(mut b) => {
                        if let Some(s) = separator
                            && first != s
                        {
                            prefix.insert(0, s);
                        }
                        let needed = context_size.saturating_sub(b.len() + prefix.len());
                        let prefix_needed = context_size.saturating_sub(b.len());
                        b.extend_from_slice(&prefix[..prefix.len().min(prefix_needed)]);
                        b.extend_from_slice(slice(offset, needed));
                        batch = Some(b);
                        offset += needed;
                    }
                }
                is_start_of_sequence = false;
                if batch.as_ref().is_some_and(|b| b.len() == context_size) {
                    out.extend(batch.take());
                }
            }
        }
        out
    }

    fn windows<E: TextEncoder>(
        corpus: &Corpus,
        encoder: E,
        context_size: usize,
        bos: Option<u32>,
    ) -> Vec<Vec<u32>> {
        ContextWindows::new(
            corpus,
            encoder,
            context_size,
            bos,
            WindowsPosition::default(),
            false,
        )
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect()
    }

    /// Writes token documents as JSONL `tokens` rows.
    fn token_corpus(dir: &Path, docs: &[Vec<u32>]) -> Corpus {
        let lines: String = docs
            .iter()
            .map(|d| format!("{{\"tokens\": {d:?}}}\n"))
            .collect();
        let path = dir.join("tokens.jsonl");
        write(&path, lines);
        Corpus::open(&path, None).unwrap()
    }

    #[test]
    fn hand_worked_example() {
        let dir = temp_dir("windows-hand");
        let path = dir.join("docs.jsonl");
        write(
            &path,
            "{\"text\": \"abc\"}\n{\"text\": \"de\"}\n{\"text\": \"fghij\"}\n",
        );
        let corpus = Corpus::open(&path, None).unwrap();
        let t = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        let b = vec![BOS];
        // [B a b c] [B d e B] [B f g h], and "ij" is dropped as a partial window.
        let expected = vec![
            [b.clone(), t("abc")].concat(),
            [b.clone(), t("de"), b.clone()].concat(),
            [b, t("fgh")].concat(),
        ];
        assert_eq!(windows(&corpus, Bytes, 4, Some(BOS)), expected);
        // Without BOS: plain concatenation.
        assert_eq!(windows(&corpus, Bytes, 4, None), vec![t("abcd"), t("efgh")]);
    }

    #[test]
    fn matches_a_literal_port_of_saelens() {
        let dir = temp_dir("windows-reference");
        let mut rng = Lcg(7);
        let docs: Vec<Vec<u32>> = (0..300)
            .map(|_| {
                let len = match rng.next(10) {
                    0 => 0,
                    1 => 40 + rng.next(100) as usize,
                    _ => 1 + rng.next(12) as usize,
                };
                let mut doc: Vec<u32> = (0..len).map(|_| rng.next(50) as u32).collect();
                // Some documents start with BOS or contain it.
                if !doc.is_empty() && rng.next(8) == 0 {
                    doc[0] = BOS;
                }
                if doc.len() > 3 && rng.next(8) == 0 {
                    doc[2] = BOS;
                }
                doc
            })
            .collect();
        let corpus = token_corpus(&dir, &docs);
        for context_size in [2, 3, 4, 5, 7, 16, 33, 128] {
            let expected = saelens_reference(&docs, context_size, Some(BOS), None, Some(BOS));
            assert!(!expected.is_empty());
            assert_eq!(
                windows(&corpus, Bytes, context_size, Some(BOS)),
                expected,
                "ctx {context_size}"
            );
            let expected = saelens_reference(&docs, context_size, None, None, None);
            assert_eq!(
                windows(&corpus, Bytes, context_size, None),
                expected,
                "ctx {context_size}"
            );
        }
    }

    #[test]
    fn windows_are_exact_start_with_bos_and_keep_every_token_in_order() {
        let dir = mixed_corpus("windows-props");
        let corpus = Corpus::open(&dir, None).unwrap();
        let docs: Vec<Vec<u32>> = corpus
            .documents(CorpusPosition::default(), false)
            .map(|r| match r.unwrap().1 {
                Document::Text(t) => Bytes.encode(&t).unwrap(),
                Document::Tokens(t) => t,
            })
            .filter(|d| !d.is_empty())
            .collect();
        let flat: Vec<u32> = docs.concat();
        let mut doc_starts = vec![false; flat.len() + 1];
        let mut at = 0;
        for d in &docs {
            doc_starts[at] = true;
            at += d.len();
        }
        for context_size in [2, 3, 64, 1000] {
            let all = windows(&corpus, Bytes, context_size, Some(BOS));
            // Walk the windows against the flat token list.
            let mut next = 0; // index into `flat` of the next expected token
            for window in &all {
                assert_eq!(window.len(), context_size);
                assert_eq!(window[0], BOS);
                for i in 1..window.len() {
                    if window[i] == BOS {
                        // A separator: only right before a document start, inside a window.
                        assert!(doc_starts[next] && next > 0, "stray BOS");
                        assert_ne!(window[i - 1], BOS);
                    } else {
                        assert_eq!(window[i], flat[next], "token {next}");
                        if doc_starts[next] && next > 0 && i > 1 {
                            assert_eq!(window[i - 1], BOS, "missing separator before token {next}");
                        }
                        next += 1;
                    }
                }
            }
            // Nothing lost but the final partial window, nothing duplicated.
            let kept: Vec<u32> = all.concat().into_iter().filter(|&t| t != BOS).collect();
            assert_eq!(kept, flat[..kept.len()]);
            assert!(flat.len() - kept.len() < context_size);
        }
    }

    #[test]
    fn resuming_continues_identically() {
        let dir = mixed_corpus("windows-resume");
        let corpus = Corpus::open(&dir, None).unwrap();
        let stream = |start: WindowsPosition, n: usize| -> Vec<(Vec<u32>, WindowsPosition)> {
            ContextWindows::new(&corpus, Bytes, 100, Some(BOS), start, true)
                .unwrap()
                .take(n)
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let all = stream(WindowsPosition::default(), 7000);
        let epochs: Vec<u64> = all.iter().map(|(_, p)| p.corpus.epoch).collect();
        assert!(
            epochs.last() > Some(&2),
            "the stream should loop several times"
        );
        let mut checked = 0;
        for k in (0..all.len() - 20).step_by(97).chain(
            // Around every epoch boundary.
            (1..all.len() - 20).filter(|&k| epochs[k] != epochs[k - 1]),
        ) {
            let saved = serde_json::to_string(&all[k].1).unwrap();
            let restored: WindowsPosition = serde_json::from_str(&saved).unwrap();
            assert_eq!(
                stream(restored, 20),
                all[k + 1..k + 21],
                "resume after window {k}"
            );
            checked += 1;
        }
        assert!(checked > 70);
        // Positions inside documents and at document ends both occur.
        assert!(all.iter().any(|(_, p)| p.offset > 0));
        assert!(all.iter().any(|(_, p)| p.offset == 0));
    }

    const TOKENIZER_JSON: &str = r#"{
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 1, "content": "<bos>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [1], "tokens": ["<bos>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "<unk>",
                  "vocab": {"<unk>": 0, "<bos>": 1, "the": 2, "cat": 3, "sat": 4, "on": 5, "mat": 6}}
    }"#;

    #[test]
    fn tokenizer_encoder_adds_no_special_tokens() {
        let tokenizer = tokenizers::Tokenizer::from_str(TOKENIZER_JSON).unwrap();
        // The post-processor would add <bos>; the corpus encoder must not.
        let with_special = (*tokenizer).encode("the cat", true).unwrap();
        assert_eq!(with_special.get_ids(), [1, 2, 3]);
        assert_eq!(
            TextEncoder::encode(&tokenizer, "the cat sat on the dog").unwrap(),
            [2, 3, 4, 5, 2, 0]
        );

        let dir = temp_dir("windows-tokenizer");
        let path = dir.join("docs.jsonl");
        write(
            &path,
            "{\"text\": \"the cat sat\"}\n{\"text\": \"on the mat\"}\n{\"text\": \"the cat\"}\n",
        );
        let corpus = Corpus::open(&path, None).unwrap();
        assert_eq!(
            windows(&corpus, &tokenizer, 5, Some(1)),
            vec![vec![1, 2, 3, 4, 1], vec![1, 5, 2, 6, 1]]
        );

        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(tokenizers::TruncationParams::default()))
            .unwrap();
        let error = ContextWindows::new(
            &corpus,
            truncating,
            5,
            Some(1),
            WindowsPosition::default(),
            false,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
        let msg = error.to_string();
        assert!(
            msg.contains("docs.jsonl") && msg.contains("truncation"),
            "{msg}"
        );
    }

    /// A corpus file with invalid UTF-8 gives the same windows as the same file with
    /// U+FFFD in their place (`String::from_utf8_lossy`), and counts the replacements.
    /// (Files under one chunk each: a longer file's chunk cuts fall at byte counts, which
    /// replacement changes; that its chunks decode as the whole file is tested in corpus.)
    #[test]
    fn invalid_utf8_gives_the_windows_of_its_lossy_text() {
        let dir = temp_dir("windows-lossy");
        let mut rng = Lcg(11);
        let mut expected_replaced = 0;
        for (i, seed) in [7, 8, 9].into_iter().enumerate() {
            let mut bytes = generated_text(40 * 1024, true, seed).into_bytes();
            assert!(!String::from_utf8_lossy(&bytes).contains('\u{FFFD}'));
            // Non-ASCII bytes at random places: lone continuation bytes, lead bytes
            // without their continuation, broken characters. Never a newline, so the
            // lines and paragraphs stay.
            for _ in 0..40 {
                let at = rng.next(bytes.len() as u64) as usize;
                bytes[at] = 0x80 + rng.next(0x80) as u8;
            }
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            assert!(lossy.len() < TEXT_CHUNK_TARGET_BYTES, "one chunk per file");
            expected_replaced += lossy.matches('\u{FFFD}').count() as u64;
            write(&dir.join(format!("messy/{i}.txt")), &bytes);
            write(&dir.join(format!("clean/{i}.txt")), &lossy);
        }
        assert!(expected_replaced > 60, "{expected_replaced}");

        let run = |sub: &str| -> (Vec<Vec<u32>>, u64) {
            let corpus = Corpus::open(&dir.join(sub), None).unwrap();
            let mut stream = ContextWindows::new(
                &corpus,
                Bytes,
                128,
                Some(BOS),
                WindowsPosition::default(),
                false,
            )
            .unwrap();
            let windows: Vec<Vec<u32>> = stream.by_ref().map(|r| r.unwrap().0).collect();
            (windows, stream.replaced_utf8())
        };
        let (messy, replaced) = run("messy");
        let (clean, clean_replaced) = run("clean");
        assert!(messy.len() > 900, "{} windows", messy.len());
        assert_eq!(messy.len(), clean.len());
        let first_difference = messy.iter().zip(&clean).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "windows differ");
        // The replacement characters are in the windows (3 bytes each with this encoder).
        let fffd = [0xEF, 0xBF, 0xBD];
        let in_windows: usize = messy
            .iter()
            .map(|w| w.windows(3).filter(|t| t.iter().eq(fffd.iter())).count())
            .sum();
        assert!(in_windows > 0);
        assert_eq!(replaced, expected_replaced);
        assert_eq!(clean_replaced, 0);
    }

    #[test]
    fn streams_can_move_to_a_loader_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<ContextWindows<tokenizers::Tokenizer>>();
        assert_send::<Documents>();
    }

    #[test]
    fn errors() {
        let dir = temp_dir("windows-errors");
        let path = dir.join("docs.jsonl");
        write(&path, "{\"text\": \"abc\"}\n{\"text\": \"de\"}\n");
        let corpus = Corpus::open(&path, None).unwrap();
        let start = WindowsPosition::default();
        for (context_size, bos) in [(1, Some(BOS)), (0, None)] {
            let result = ContextWindows::new(&corpus, Bytes, context_size, bos, start, false);
            assert!(matches!(result, Err(WindowsError::ContextSize { .. })));
        }
        // A single-token window without BOS is fine.
        assert_eq!(windows(&corpus, Bytes, 1, None).len(), 5);

        // A saved offset beyond the document: the corpus or tokenizer changed.
        let bad = WindowsPosition {
            corpus: CorpusPosition {
                file: 0,
                item: 1,
                epoch: 0,
            },
            offset: 3,
        };
        let error = ContextWindows::new(&corpus, Bytes, 2, Some(BOS), bad, false)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                error,
                WindowsError::ResumeOffset {
                    item: 1,
                    tokens: 2,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("docs.jsonl"));

        struct Failing;
        impl TextEncoder for Failing {
            fn encode(&self, _: &str) -> Result<Vec<u32>, String> {
                Err("boom".to_owned())
            }
        }
        let error = ContextWindows::new(&corpus, Failing, 2, Some(BOS), start, false)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        let msg = error.to_string();
        assert!(
            msg.contains("docs.jsonl") && msg.contains("item 0") && msg.contains("boom"),
            "{msg}"
        );

        // Repeating over a corpus whose documents have no tokens stops.
        struct Nothing;
        impl TextEncoder for Nothing {
            fn encode(&self, _: &str) -> Result<Vec<u32>, String> {
                Ok(Vec::new())
            }
        }
        let results: Vec<_> = ContextWindows::new(&corpus, Nothing, 2, Some(BOS), start, true)
            .unwrap()
            .collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(results[0], Err(WindowsError::NoTokens { .. })));
    }
}
