//! `bitnet train-tokenizer`: a byte-level BPE trained with the `tokenizers` crate's trainer, in
//! the layout of Llama 3 tokenizers (its split pattern, byte-level alphabet, special tokens after
//! the merges, BOS added by the post-processor), so the engine and transformers load it as is.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// Llama 3's pre-tokenizer split pattern.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special tokens appended after the learned vocabulary: BOS, EOS, end of turn.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"];

/// Trains a byte-level BPE of `vocab_size` tokens in all (special tokens included) on `files`
/// (plain text, or JSONL whose `text` fields are used) and writes it to `out`, with a
/// `tokenizer_config.json` beside it. Returns the final vocabulary size.
pub fn train_tokenizer(files: &[PathBuf], vocab_size: usize, out: &Path) -> Result<usize> {
    let err = |message: String| Error::Tokenizer {
        path: out.to_path_buf(),
        message,
    };
    let min = 256 + SPECIAL_TOKENS.len() + 1;
    if vocab_size < min {
        return Err(Error::Option {
            option: "vocab",
            message: format!(
                "{vocab_size} is below {min} (256 bytes, the special tokens, one merge)"
            ),
        });
    }
    if files.is_empty() {
        return Err(Error::Option {
            option: "files",
            message: "give at least one text file".into(),
        });
    }
    // Documents go through the same reader as training, so JSONL files train on their text.
    let mut docs = Vec::new();
    for f in files {
        docs.extend(crate::data::read_documents(f)?);
    }
    let skeleton = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": {}, "merges": []}
    });
    let mut tok: tokenizers::Tokenizer = skeleton
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| err(format!("building the BPE skeleton: {e}")))?;
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab_size - SPECIAL_TOKENS.len())
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    tok.train(&mut trainer, docs.iter())
        .map_err(|e| err(format!("training: {e}")))?;
    tok.add_special_tokens(SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(|e| err(format!("adding the special tokens: {e}")))?;
    let bos = SPECIAL_TOKENS[0];
    let bos_id = tok
        .token_to_id(bos)
        .ok_or_else(|| err("BOS was not added".into()))?;
    let mut v: Value = serde_json::from_str(
        &tok.to_string(false)
            .map_err(|e| err(format!("serializing: {e}")))?,
    )
    .map_err(|e| err(format!("re-reading: {e}")))?;
    v["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(&v).map_err(|e| err(e.to_string()))?;
    std::fs::write(out, text).map_err(|e| Error::io(out, e))?;
    let written = crate::data::load_tokenizer(out)?;
    let tc = json!({
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "chat_template": crate::export::DEFAULT_CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast"
    });
    let tc_path = out.with_file_name("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&tc).map_err(|e| err(e.to_string()))?;
    std::fs::write(&tc_path, text + "\n").map_err(|e| Error::io(&tc_path, e))?;
    Ok(written.get_vocab_size(true))
}

/// The BOS and EOS ids of a tokenizer trained here (or any with the Llama 3 special tokens).
pub fn special_ids(tok: &tokenizers::Tokenizer) -> (Option<u32>, Vec<u32>) {
    let bos = tok.token_to_id(SPECIAL_TOKENS[0]);
    let eos = [SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]]
        .iter()
        .filter_map(|s| tok.token_to_id(s))
        .collect();
    (bos, eos)
}
