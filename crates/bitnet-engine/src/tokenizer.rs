//! Tokenizer of a checkpoint directory: `tokenizer.json` (the `tokenizers` crate) plus the special
//! tokens and chat template of `tokenizer_config.json` and the EOS list of
//! `generation_config.json`.

use crate::config::{id_list, read_json, ModelConfig};
use crate::error::{Error, Result};
use crate::spm::{PieceType, SpmTokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The Llama-3 pre-tokenizer split pattern (BITNET.md).
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split pattern.
pub const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

/// A tokenizer with the model's special tokens: `tokenizer.json` (the `tokenizers` crate), a
/// SentencePiece `tokenizer.model`, or the vocabulary embedded in a GGUF file.
pub struct Tokenizer {
    backend: Backend,
    path: PathBuf,
    bos_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    /// Control / user-defined pieces matched whole in SentencePiece input, longest first.
    specials: Vec<(String, u32)>,
}

/// A token string from `tokenizer_config.json`: a plain string or an `AddedToken` object.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads the tokenizer of checkpoint `dir` for a model with `config` (`tokenizer.json`, else
    /// a SentencePiece `tokenizer.model`; a `.gguf` path reads the embedded vocabulary).
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        if dir.is_file() {
            let f = bitnet_formats::gguf::GgufFile::open(dir)?;
            return Self::from_gguf(&f, config);
        }
        let path = dir.join("tokenizer.json");
        let sp = dir.join("tokenizer.model");
        let backend = if path.is_file() {
            let t = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Backend::Hf(Box::new(t))
        } else if sp.is_file() {
            Backend::Spm(Box::new(SpmTokenizer::from_file(&sp)?))
        } else {
            return Err(Error::NotFound {
                path,
                what: "tokenizer (tokenizer.json or tokenizer.model)",
            });
        };
        let path = if sp.is_file() && !path.is_file() {
            sp
        } else {
            path
        };

        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            read_json(&tc_path)?
        } else {
            Value::Null
        };
        let bos_token = token_string(tc.get("bos_token"));
        let eos_token = token_string(tc.get("eos_token"));
        let chat_template = match tc.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            Some(_) => {
                return Err(Error::InvalidField {
                    path: tc_path,
                    field: "chat_template".into(),
                    message: "expected a string or a list of {name, template}".into(),
                })
            }
        };
        // SentencePiece models add BOS unless told otherwise (LlamaTokenizer's default).
        let add_bos_default = matches!(backend, Backend::Spm(_));
        let add_bos = tc
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(add_bos_default);

        let gc_path = dir.join("generation_config.json");
        let gc = if gc_path.is_file() {
            read_json(&gc_path)?
        } else {
            Value::Null
        };
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.extend(id_list(gc.get("eos_token_id"), &gc_path, "eos_token_id")?);
        let mut t = Tokenizer {
            backend,
            path,
            bos_id: None,
            bos_token,
            eos_token,
            eos_ids,
            add_bos,
            chat_template,
            specials: Vec::new(),
        };
        t.finish(config.bos_token_id);
        Ok(t)
    }

    /// The tokenizer embedded in a GGUF file (`tokenizer.ggml.model` `gpt2` or `llama`).
    pub fn from_gguf(f: &bitnet_formats::gguf::GgufFile, config: &ModelConfig) -> Result<Self> {
        let (backend, add_bos_default) = crate::gguf_tokenizer::backend_from_gguf(f)?;
        let backend = match backend {
            crate::gguf_tokenizer::GgufBackend::Hf(t) => Backend::Hf(t),
            crate::gguf_tokenizer::GgufBackend::Spm(t) => Backend::Spm(t),
        };
        let tok_str = |id: Option<u64>| -> Option<String> {
            let id = id? as usize;
            f.get("tokenizer.ggml.tokens")?
                .as_array()?
                .get(id)?
                .as_str()
                .map(String::from)
        };
        let bos_id = f.get_u64("tokenizer.ggml.bos_token_id");
        let eos_id = f.get_u64("tokenizer.ggml.eos_token_id");
        let arch = f.get_str("general.architecture").unwrap_or_default();
        let mut chat_template = f.get_str("tokenizer.chat_template").map(String::from);
        // Microsoft's 2B-4T GGUF carries a converter placeholder, not the trained format.
        if matches!(arch, "bitnet-b1.58" | "bitnet-25")
            && chat_template
                .as_deref()
                .is_some_and(|t| t.contains("BITNETAssistant"))
        {
            chat_template = None;
        }
        let mut eos_ids = config.eos_token_ids.clone();
        if let Some(e) = f.get_u64("tokenizer.ggml.eot_token_id") {
            eos_ids.push(e as u32);
        }
        let mut t = Tokenizer {
            backend,
            path: f.path().to_path_buf(),
            bos_id: None,
            bos_token: tok_str(bos_id),
            eos_token: tok_str(eos_id),
            eos_ids,
            add_bos: f
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(add_bos_default),
            chat_template,
            specials: Vec::new(),
        };
        t.finish(bos_id.map(|b| b as u32));
        Ok(t)
    }

    /// Resolves special ids once the backend is known.
    fn finish(&mut self, config_bos: Option<u32>) {
        if let Some(id) = self.eos_token.as_deref().and_then(|t| self.token_to_id(t)) {
            self.eos_ids.push(id);
        }
        // Llama-3 vocabularies end chat turns with <|eot_id|> (2B-4T's trained format).
        if let Some(id) = self.token_to_id("<|eot_id|>") {
            self.eos_ids.push(id);
        }
        self.eos_ids.sort_unstable();
        self.eos_ids.dedup();
        self.bos_id = self
            .bos_token
            .as_deref()
            .and_then(|t| self.token_to_id(t))
            .or(config_bos);
        if let Backend::Spm(s) = &self.backend {
            let mut sp: Vec<(String, u32)> = s
                .pieces()
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    matches!(p.kind, PieceType::Control | PieceType::UserDefined)
                        && !p.piece.is_empty()
                })
                .map(|(i, p)| (p.piece.clone(), i as u32))
                .collect();
            sp.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            self.specials = sp;
        }
        if self.bos_token.is_none() {
            self.bos_token = self.bos_id.and_then(|b| self.id_to_token(b));
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Encodes `text`; with `add_special`, adds BOS as the tokenizer's post-processor (or
    /// `add_bos_token`) says. Special-token strings in the text (e.g. from a chat template)
    /// become their ids. Chat-template output already holds its BOS: pass `false`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids = match &self.backend {
            Backend::Hf(t) => t
                .encode(text, add_special)
                .map_err(|e| self.err(e))?
                .get_ids()
                .to_vec(),
            Backend::Spm(s) => {
                let mut ids = Vec::new();
                let mut rest = text;
                while !rest.is_empty() {
                    // The earliest special piece in `rest` (longest at that position).
                    let hit = self
                        .specials
                        .iter()
                        .filter_map(|(p, id)| rest.find(p.as_str()).map(|at| (at, p.len(), *id)))
                        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                    match hit {
                        Some((at, len, id)) => {
                            if at > 0 {
                                ids.extend(s.encode(&rest[..at]));
                            }
                            ids.push(id);
                            rest = &rest[at + len..];
                        }
                        None => {
                            ids.extend(s.encode(rest));
                            rest = "";
                        }
                    }
                }
                ids
            }
        };
        if add_special && self.add_bos {
            if let Some(b) = self.bos_id {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text, skipping special tokens when asked.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.backend {
            Backend::Hf(t) => t.decode(ids, skip_special).map_err(|e| self.err(e)),
            Backend::Spm(s) => Ok(s.decode(ids, skip_special)),
        }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(s) => s.vocab_size(),
        }
    }
    /// Id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(t) => t.token_to_id(token),
            Backend::Spm(s) => s.token_to_id(token),
        }
    }
    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Spm(s) => s.id_to_piece(id).map(String::from),
        }
    }
    /// BOS id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }
    /// BOS string (for chat templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }
    /// EOS string (for chat templates).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
    /// Every id that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }
    /// The chat template of `tokenizer_config.json` (or GGUF metadata), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Model kind of the tokenizer ("BPE", "SentencePiece BPE", …). Read off the model's type:
    /// serializing the model for its `type` field (as this once did) copied the whole
    /// vocabulary, and `tokenizers` warned that a vocabulary whose special tokens live only
    /// among the added tokens (GGUF files, `create-model`'s) "could be corrupted".
    pub fn kind(&self) -> String {
        use tokenizers::models::ModelWrapper;
        match &self.backend {
            Backend::Hf(t) => match t.get_model() {
                ModelWrapper::BPE(_) => "BPE",
                ModelWrapper::WordPiece(_) => "WordPiece",
                ModelWrapper::WordLevel(_) => "WordLevel",
                ModelWrapper::Unigram(_) => "Unigram",
            }
            .into(),
            Backend::Spm(_) => "SentencePiece BPE".into(),
        }
    }
}

/// Incremental detokenizer: turns a stream of ids into text chunks that are always whole UTF-8
/// characters, even when one character spans several byte-level tokens.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    /// Starts after `context` (the last prompt tokens), which gives decoders that strip a leading
    /// space the left context they need.
    pub fn new(context: &[u32]) -> Self {
        let ctx = &context[context.len().saturating_sub(4)..];
        StreamDecoder {
            ids: ctx.to_vec(),
            prefix: 0,
            read: ctx.len(),
        }
    }

    /// Adds one id; returns the new text once it forms whole characters.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let delta = match now.get(before.len()..) {
                Some(d) if now.starts_with(&before) => d.to_string(),
                _ => now.chars().skip(before.chars().count()).collect(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(Some(delta));
        }
        Ok(None)
    }

    /// Text still held back (an incomplete character at the end of the stream), lossily decoded.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(now
            .get(before.len()..)
            .filter(|d| !d.is_empty())
            .map(String::from))
    }
}
