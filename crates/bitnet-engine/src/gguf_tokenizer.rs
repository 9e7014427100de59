//! Tokenizers from GGUF metadata: `gpt2` byte-level BPE (tokens, types, merges; the split
//! pattern from `tokenizer.ggml.pre`) and `llama` SentencePiece (tokens, scores, types).

use crate::error::{Error, Result};
use crate::spm::{PieceType, SpmOptions, SpmPiece, SpmTokenizer};
use crate::tokenizer::{GPT2_SPLIT, LLAMA3_SPLIT};
use bitnet_formats::gguf::{GgufFile, MetaValue};
use serde_json::{json, Map, Value};

/// A tokenizer backend built from GGUF metadata.
pub enum GgufBackend {
    /// Byte-level BPE through the `tokenizers` crate.
    Hf(Box<tokenizers::Tokenizer>),
    /// SentencePiece.
    Spm(Box<SpmTokenizer>),
}

fn err(f: &GgufFile, message: String) -> Error {
    Error::Tokenizer {
        path: f.path().to_path_buf(),
        message,
    }
}

fn array<'a>(f: &'a GgufFile, key: &str) -> Result<&'a [MetaValue]> {
    f.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| err(f, format!("metadata `{key}` is missing or not an array")))
}

/// The backend and whether BOS is added by default.
pub fn backend_from_gguf(f: &GgufFile) -> Result<(GgufBackend, bool)> {
    let model = f.get_str("tokenizer.ggml.model").ok_or_else(|| {
        err(
            f,
            "no tokenizer.ggml.model: the file carries no tokenizer".into(),
        )
    })?;
    let tokens: Vec<&str> = array(f, "tokenizer.ggml.tokens")?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| err(f, "tokenizer.ggml.tokens holds a non-string".into()))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match f
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a
            .iter()
            .map(|v| v.as_f64().map_or(1, |x| x as i64))
            .collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(
            f,
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    match model {
        "gpt2" => {
            let llama3 = matches!(
                f.get_str("tokenizer.ggml.pre"),
                None | Some("llama-bpe") | Some("llama3") | Some("default")
            );
            let tj = gpt2_tokenizer_json(&f.metadata).map_err(|e| err(f, e.to_string()))?;
            let t: tokenizers::Tokenizer = tj
                .to_string()
                .parse()
                .map_err(|e| err(f, format!("cannot build the BPE tokenizer: {e}")))?;
            Ok((GgufBackend::Hf(Box::new(t)), llama3))
        }
        "llama" => {
            let scores: Vec<f32> =
                match f.get("tokenizer.ggml.scores").and_then(MetaValue::as_array) {
                    Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    None => vec![0.0; tokens.len()],
                };
            if scores.len() != tokens.len() {
                return Err(err(
                    f,
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let pieces: Vec<SpmPiece> = tokens
                .iter()
                .zip(&scores)
                .zip(&types)
                .map(|((t, &score), &ty)| SpmPiece {
                    piece: t.to_string(),
                    score,
                    kind: PieceType::from_number(ty as u64).unwrap_or(PieceType::Normal),
                })
                .collect();
            let byte_fallback = pieces.iter().any(|p| p.kind == PieceType::Byte);
            let id = |k: &str| f.get_u64(k).map(|v| v as u32);
            let opts = SpmOptions {
                add_dummy_prefix: f
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(MetaValue::as_bool)
                    .unwrap_or(true),
                // llama.cpp does not collapse whitespace for GGUF SentencePiece vocabularies.
                remove_extra_whitespaces: false,
                byte_fallback,
                unk_id: id("tokenizer.ggml.unknown_token_id"),
                bos_id: id("tokenizer.ggml.bos_token_id"),
                eos_id: id("tokenizer.ggml.eos_token_id"),
                ..SpmOptions::default()
            };
            Ok((
                GgufBackend::Spm(Box::new(SpmTokenizer::from_pieces(pieces, opts)?)),
                true,
            ))
        }
        other => Err(err(
            f,
            format!("tokenizer.ggml.model {other:?} is not supported (supported: gpt2, llama)"),
        )),
    }
}

/// A `tokenizer.json` for a GGUF `gpt2` vocabulary (tokens, types, merges, `pre`).
pub fn gpt2_tokenizer_json(meta: &[(String, MetaValue)]) -> Result<Value> {
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let bad = |m: String| Error::Tokenizer {
        path: "GGUF tokenizer.ggml.*".into(),
        message: m,
    };
    let tokens: Vec<&str> = get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .ok_or_else(|| bad("no tokenizer.ggml.tokens".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad("tokenizer.ggml.tokens holds a non-string".into()))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
        Some(a) => a
            .iter()
            .map(|v| v.as_f64().map_or(1, |x| x as i64))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = get("tokenizer.ggml.pre").and_then(MetaValue::as_str);
    let (pattern, llama3) = match pre {
        None | Some("llama-bpe") | Some("llama3") | Some("default") => (LLAMA3_SPLIT, true),
        Some("gpt-2") | Some("gpt2") => (GPT2_SPLIT, false),
        Some(other) => {
            return Err(bad(format!(
            "tokenizer.ggml.pre {other:?} is not supported (supported: absent, llama-bpe, gpt-2)"
        )))
        }
    };
    let merges: Vec<Value> = match get("tokenizer.ggml.merges").and_then(MetaValue::as_array) {
        Some(m) => m
            .iter()
            .filter_map(|v| v.as_str().map(|s| Value::String(s.to_string())))
            .collect(),
        None => Vec::new(),
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .enumerate()
    {
        match ty {
            3 | 4 => added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3
            })),
            _ => {
                vocab.insert(t.to_string(), json!(i));
            }
        }
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": llama3, "vocab": vocab, "merges": merges}
    }))
}
