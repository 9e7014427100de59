//! Tokenizer metadata for GGUF files, written the way llama.cpp's converter writes it:
//! `tokenizer.ggml.model` `gpt2` (byte-level BPE from `tokenizer.json`: tokens, token types,
//! merges, `pre`) or `llama` (SentencePiece `tokenizer.model`: tokens, scores, token types).

use super::TokenizerSource;
use crate::config::{read_json, ModelConfig};
use crate::error::{Error, Result};
use crate::spm::{PieceType, SpmTokenizer};
use crate::tokenizer::{Tokenizer, LLAMA3_SPLIT};
use bitnet_formats::gguf::{MetaValue, MetaValueType};
use serde_json::Value;
use std::path::Path;

fn strings(v: Vec<String>) -> MetaValue {
    MetaValue::Array(
        MetaValueType::String,
        v.into_iter().map(MetaValue::String).collect(),
    )
}

/// GGUF token type number of a SentencePiece piece type.
pub fn piece_type_number(t: PieceType) -> i32 {
    match t {
        PieceType::Normal => 1,
        PieceType::Unknown => 2,
        PieceType::Control => 3,
        PieceType::UserDefined => 4,
        PieceType::Unused => 5,
        PieceType::Byte => 6,
    }
}

/// Tokenizer metadata (and files to copy) of a Hugging Face checkpoint directory.
pub fn from_hf_dir(dir: &Path, config: &ModelConfig) -> Result<TokenizerSource> {
    let tj = dir.join("tokenizer.json");
    let sp = dir.join("tokenizer.model");
    let mut meta = Vec::new();
    let mut files = Vec::new();
    for name in [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        if dir.join(name).is_file() {
            files.push(dir.join(name));
        }
    }
    if !tj.is_file() && !sp.is_file() {
        tracing::warn!(
            "{}: no tokenizer.json or tokenizer.model; the output carries no tokenizer",
            dir.display()
        );
        return Ok(TokenizerSource {
            gguf: meta,
            hf_files: files,
        });
    }
    let tok = Tokenizer::load(dir, config)?;
    if tj.is_file() {
        gpt2_meta(&tj, &tok, &mut meta)?;
    } else {
        let spm = SpmTokenizer::from_file(&sp)?;
        meta.push((
            "tokenizer.ggml.model".into(),
            MetaValue::String("llama".into()),
        ));
        meta.push((
            "tokenizer.ggml.pre".into(),
            MetaValue::String("default".into()),
        ));
        let p = spm.pieces();
        meta.push((
            "tokenizer.ggml.tokens".into(),
            strings(p.iter().map(|x| x.piece.clone()).collect()),
        ));
        meta.push((
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(
                MetaValueType::F32,
                p.iter().map(|x| MetaValue::F32(x.score)).collect(),
            ),
        ));
        meta.push((
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(
                MetaValueType::I32,
                p.iter()
                    .map(|x| MetaValue::I32(piece_type_number(x.kind)))
                    .collect(),
            ),
        ));
    }
    if let Some(b) = tok.bos_id() {
        meta.push(("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(b)));
    }
    let eos = tok
        .eos_token()
        .and_then(|t| tok.token_to_id(t))
        .or_else(|| config.eos_token_ids.first().copied());
    if let Some(e) = eos {
        meta.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(e)));
    }
    if sp.is_file() && !tj.is_file() {
        if let Some(u) = tok.token_to_id("<unk>") {
            meta.push(("tokenizer.ggml.unknown_token_id".into(), MetaValue::U32(u)));
        }
    }
    let probe = tok.encode("a", true)?;
    let add_bos = tok.bos_id().is_some() && probe.first() == tok.bos_id().as_ref();
    meta.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(add_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".into(),
        MetaValue::Bool(false),
    ));
    if let Some(t) = tok.chat_template() {
        meta.push((
            "tokenizer.chat_template".into(),
            MetaValue::String(t.to_string()),
        ));
    }
    Ok(TokenizerSource {
        gguf: meta,
        hf_files: files,
    })
}

/// `gpt2` metadata from a byte-level BPE `tokenizer.json`.
fn gpt2_meta(path: &Path, tok: &Tokenizer, meta: &mut Vec<(String, MetaValue)>) -> Result<()> {
    let v = read_json(path)?;
    let bad = |m: &str| Error::Tokenizer {
        path: path.to_path_buf(),
        message: m.to_string(),
    };
    let model = v.get("model").ok_or_else(|| bad("no `model`"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad("only BPE tokenizer.json models can be written to GGUF"));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `model.vocab`"))?;
    let n = tok.vocab_size();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad("vocab ids must be integers"))? as usize;
        if id >= n {
            return Err(bad(&format!(
                "vocab id {id} beyond the vocabulary size {n}"
            )));
        }
        tokens[id] = Some(t.clone());
    }
    for a in v
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            continue;
        };
        let id = id as usize;
        if id < n {
            tokens[id] = Some(content.to_string());
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            types[id] = if special { 3 } else { 4 };
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) if p.len() == 2 => {
                Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
            }
            _ => None,
        })
        .collect();
    let text =
        serde_json::to_string(v.get("pre_tokenizer").unwrap_or(&Value::Null)).unwrap_or_default();
    let llama3 = serde_json::to_string(LLAMA3_SPLIT).unwrap_or_default();
    let pre = if text.contains(llama3.trim_matches('"')) {
        "llama-bpe"
    } else {
        "gpt-2"
    };
    meta.push((
        "tokenizer.ggml.model".into(),
        MetaValue::String("gpt2".into()),
    ));
    meta.push(("tokenizer.ggml.pre".into(), MetaValue::String(pre.into())));
    meta.push(("tokenizer.ggml.tokens".into(), strings(tokens)));
    meta.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(
            MetaValueType::I32,
            types.into_iter().map(MetaValue::I32).collect(),
        ),
    ));
    meta.push(("tokenizer.ggml.merges".into(), strings(merges)));
    Ok(())
}
