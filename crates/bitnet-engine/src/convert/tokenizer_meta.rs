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

fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn pb_tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    pb_varint(out, (field << 3) | wire);
}

fn pb_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    pb_tag(out, field, 2);
    pb_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A SentencePiece `tokenizer.model` (BPE, identity normalization, whitespace kept as
/// llama.cpp treats GGUF vocabularies) for the pieces of a GGUF `llama` vocabulary.
pub fn spm_model_bytes(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
    add_dummy_prefix: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for ((t, &s), &ty) in tokens.iter().zip(scores).zip(types) {
        let mut p = Vec::new();
        pb_bytes(&mut p, 1, t.as_bytes());
        pb_tag(&mut p, 2, 5);
        p.extend_from_slice(&s.to_le_bytes());
        pb_tag(&mut p, 3, 0);
        pb_varint(&mut p, ty.clamp(1, 6) as u64);
        pb_bytes(&mut out, 1, &p);
    }
    let mut trainer = Vec::new();
    pb_tag(&mut trainer, 3, 0);
    pb_varint(&mut trainer, 2); // BPE
    pb_tag(&mut trainer, 35, 0);
    pb_varint(&mut trainer, types.contains(&6) as u64); // byte_fallback
    pb_bytes(&mut out, 2, &trainer);
    let mut norm = Vec::new();
    pb_bytes(&mut norm, 1, b"identity");
    pb_tag(&mut norm, 3, 0);
    pb_varint(&mut norm, add_dummy_prefix as u64);
    pb_tag(&mut norm, 4, 0);
    pb_varint(&mut norm, 0); // remove_extra_whitespaces
    pb_tag(&mut norm, 5, 0);
    pb_varint(&mut norm, 1); // escape_whitespaces
    pb_bytes(&mut out, 3, &norm);
    out
}

/// Writes tokenizer files into an HF directory from GGUF `tokenizer.*` metadata:
/// `tokenizer.json` (gpt2) or `tokenizer.model` (llama), plus `tokenizer_config.json` and
/// `generation_config.json`.
pub fn write_hf_tokenizer_from_gguf(meta: &[(String, MetaValue)], dir: &Path) -> Result<()> {
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let Some(model) = get("tokenizer.ggml.model").and_then(MetaValue::as_str) else {
        return Ok(());
    };
    let tokens: Vec<&str> = get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(|a| a.iter().filter_map(MetaValue::as_str).collect())
        .unwrap_or_default();
    let types: Vec<i32> = get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i32).collect())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let io = |p: &Path, e| Error::io(p, e);
    match model {
        "llama" => {
            let scores: Vec<f32> = get("tokenizer.ggml.scores")
                .and_then(MetaValue::as_array)
                .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            let prefix = get("tokenizer.ggml.add_space_prefix")
                .and_then(MetaValue::as_bool)
                .unwrap_or(true);
            let p = dir.join("tokenizer.model");
            std::fs::write(&p, spm_model_bytes(&tokens, &scores, &types, prefix))
                .map_err(|e| io(&p, e))?;
        }
        "gpt2" => {
            let tj = crate::gguf_tokenizer::gpt2_tokenizer_json(meta)?;
            let p = dir.join("tokenizer.json");
            std::fs::write(&p, tj.to_string()).map_err(|e| io(&p, e))?;
        }
        _ => return Ok(()),
    }
    let id = |k: &str| get(k).and_then(MetaValue::as_u64);
    let tok = |i: Option<u64>| {
        i.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let mut tc = serde_json::Map::new();
    tc.insert(
        "bos_token".into(),
        json_opt(tok(id("tokenizer.ggml.bos_token_id"))),
    );
    tc.insert(
        "eos_token".into(),
        json_opt(tok(id("tokenizer.ggml.eos_token_id"))),
    );
    if let Some(b) = get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool) {
        tc.insert("add_bos_token".into(), Value::Bool(b));
    }
    if let Some(t) = get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        tc.insert("chat_template".into(), Value::String(t.to_string()));
    }
    let p = dir.join("tokenizer_config.json");
    std::fs::write(&p, Value::Object(tc).to_string()).map_err(|e| io(&p, e))?;
    let gc = serde_json::json!({
        "bos_token_id": id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": id("tokenizer.ggml.eos_token_id"),
        "do_sample": false
    });
    let p = dir.join("generation_config.json");
    std::fs::write(&p, gc.to_string()).map_err(|e| io(&p, e))
}

fn json_opt(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::String)
}
