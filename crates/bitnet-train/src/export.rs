//! What a trainer checkpoint carries besides weights, and exports of it: a Hugging Face
//! checkpoint in the 2B-4T packed convention and GGUF, both through the engine's converters
//! (ternarized with the exact absmean the trainer's forward uses).

use crate::error::{Error, Result};
use bitnet_engine::convert::gguf_out::{write_gguf, ConvertReport, GgufOptions};
use bitnet_engine::convert::hf_out::{config_json, write_hf};
use bitnet_engine::convert::Parts;
use bitnet_engine::model::AbsMean;
use bitnet_engine::ModelConfig;
use serde_json::json;
use std::path::Path;

/// The chat template written for tokenizers that come without one: `Role: text` turns.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Internal(format!("serializing {}: {e}", path.display())))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Writes `config.json` (float master weights: `quantization_mode: online`),
/// `generation_config.json`, `tokenizer.json` and `tokenizer_config.json` into `dir`, so the
/// checkpoint runs in the engine as it is.
pub fn write_run_files(config: &ModelConfig, tokenizer: &Path, dir: &Path) -> Result<()> {
    write_json(&dir.join("config.json"), &config_json(config, "online"))?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_ids,
            "do_sample": true,
            "temperature": 0.8,
            "top_p": 0.95,
            "repetition_penalty": 1.1
        }),
    )?;
    let dst = dir.join("tokenizer.json");
    let same = std::fs::canonicalize(tokenizer).ok() == std::fs::canonicalize(&dst).ok();
    if !same {
        std::fs::copy(tokenizer, &dst).map_err(|e| Error::io(tokenizer, e))?;
    }
    let src_tc = tokenizer.with_file_name("tokenizer_config.json");
    let dst_tc = dir.join("tokenizer_config.json");
    if src_tc.is_file() {
        if std::fs::canonicalize(&src_tc).ok() != std::fs::canonicalize(&dst_tc).ok() {
            std::fs::copy(&src_tc, &dst_tc).map_err(|e| Error::io(&src_tc, e))?;
        }
    } else {
        let tok = crate::data::load_tokenizer(tokenizer)?;
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        write_json(
            &dst_tc,
            &json!({
                "bos_token": name(config.bos_token_id),
                "eos_token": name(config.eos_token_ids.first().copied()),
                "chat_template": DEFAULT_CHAT_TEMPLATE,
                "model_max_length": config.max_position_embeddings,
                "tokenizer_class": "PreTrainedTokenizerFast"
            }),
        )?;
    }
    Ok(())
}

/// Reads a trainer checkpoint (or any float-weight checkpoint) as format-neutral parts.
pub fn read_parts(checkpoint: &Path) -> Result<Parts> {
    Ok(Parts::from_hf_dir(checkpoint, AbsMean::Exact)?)
}

/// Exports `checkpoint` as a Hugging Face directory in the 2B-4T packed convention (uint8 weights,
/// `weight_scale`, `quantization_mode: offline`), with the checkpoint's tokenizer and generation config.
pub fn export_hf(checkpoint: &Path, out: &Path) -> Result<()> {
    let parts = read_parts(checkpoint)?;
    Ok(write_hf(&parts, out)?)
}

/// Exports `checkpoint` as a GGUF file with the engine's writer (which re-reads and verifies
/// every ternary tensor).
pub fn export_gguf(checkpoint: &Path, out: &Path, opts: GgufOptions) -> Result<ConvertReport> {
    let parts = read_parts(checkpoint)?;
    Ok(write_gguf(&parts, opts, out, |_, _, _| {})?)
}
