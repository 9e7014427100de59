//! Tokenizer of a checkpoint directory: `tokenizer.json` (the `tokenizers` crate) plus the special
//! tokens and chat template of `tokenizer_config.json` and the EOS list of
//! `generation_config.json`.

use crate::config::{id_list, read_json, ModelConfig};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A tokenizer with the model's special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
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
    /// Loads the tokenizer of checkpoint `dir` for a model with `config`.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            let sp = dir.join("tokenizer.model");
            return Err(if sp.is_file() {
                Error::Tokenizer {
                    path: sp,
                    message:
                        "SentencePiece tokenizer.model is not supported yet; provide tokenizer.json"
                            .into(),
                }
            } else {
                Error::NotFound {
                    path,
                    what: "tokenizer (tokenizer.json)",
                }
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;

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
        let add_bos = tc
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let gc_path = dir.join("generation_config.json");
        let gc = if gc_path.is_file() {
            read_json(&gc_path)?
        } else {
            Value::Null
        };
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.extend(id_list(gc.get("eos_token_id"), &gc_path, "eos_token_id")?);
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        // Llama-3 vocabularies end chat turns with <|eot_id|> (2B-4T's trained format).
        if let Some(id) = inner.token_to_id("<|eot_id|>") {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let bos_id = bos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .or(config.bos_token_id);
        Ok(Tokenizer {
            inner,
            path,
            bos_id,
            bos_token,
            eos_token,
            eos_ids,
            add_bos,
            chat_template,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Encodes `text`; with `add_special`, adds BOS as the tokenizer's post-processor (or
    /// `add_bos_token`) says. Chat-template output already holds its specials: pass `false`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| self.err(e))?;
        let mut ids = enc.get_ids().to_vec();
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
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.err(e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// Id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
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
    /// The chat template of `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Model kind of the tokenizer ("BPE", …).
    pub fn kind(&self) -> String {
        let v = serde_json::to_value(self.inner.get_model()).unwrap_or(Value::Null);
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string()
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
