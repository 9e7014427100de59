//! Training data: plain text files (documents separated by blank lines) or JSONL files (one
//! document per line, in a `text` field), tokenized with a `tokenizer.json` into one token stream
//! in which every document starts with BOS. The last documents (a fixed fraction) are held out.
//! Batches are windows of the stream at positions drawn from a generator seeded by
//! `(seed, step)`, so a resumed run draws the same batches as an uninterrupted one.

use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Reads the documents of one file.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut docs = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                message: format!("line {}: invalid JSON: {e}", i + 1),
            })?;
            match v.get("text") {
                Some(serde_json::Value::String(s)) => docs.push(s.clone()),
                _ => {
                    return Err(Error::Data {
                        path: path.to_path_buf(),
                        message: format!("line {}: expected an object with a string `text`", i + 1),
                    })
                }
            }
        }
    } else {
        let mut cur = String::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                if !cur.is_empty() {
                    docs.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push_str(line);
                cur.push('\n');
            }
        }
        if !cur.is_empty() {
            docs.push(cur);
        }
    }
    if docs.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            message: "no text found".into(),
        });
    }
    Ok(docs)
}

/// Tokenized training and held-out streams.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Training tokens.
    pub train: Vec<u32>,
    /// Held-out tokens.
    pub heldout: Vec<u32>,
    /// Documents in each part.
    pub docs: (usize, usize),
}

/// Loads a tokenizer file.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Tokenizes `files` (in order) with `tokenizer`, prefixing each document with `bos`; the last
/// `heldout_frac` of the documents (at least one when there are two or more) form the held-out
/// stream. Token ids must be below `vocab_size`.
pub fn build_corpus(
    files: &[PathBuf],
    tokenizer: &tokenizers::Tokenizer,
    tokenizer_path: &Path,
    bos: Option<u32>,
    heldout_frac: f32,
    vocab_size: usize,
) -> Result<Corpus> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(read_documents(f)?);
    }
    let n_held = if docs.len() >= 2 && heldout_frac > 0.0 {
        ((docs.len() as f32 * heldout_frac).round() as usize).clamp(1, docs.len() - 1)
    } else {
        0
    };
    let split = docs.len() - n_held;
    let encodings = tokenizer
        .encode_batch(docs.iter().map(String::as_str).collect::<Vec<_>>(), false)
        .map_err(|e| Error::Tokenizer {
            path: tokenizer_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (i, enc) in encodings.iter().enumerate() {
        let out = if i < split { &mut train } else { &mut heldout };
        out.extend(bos);
        out.extend_from_slice(enc.get_ids());
    }
    if let Some(&bad) = train
        .iter()
        .chain(&heldout)
        .find(|&&t| t as usize >= vocab_size)
    {
        return Err(Error::Tokenizer {
            path: tokenizer_path.to_path_buf(),
            message: format!(
                "produces token id {bad}, outside the model's vocab_size {vocab_size}: raise \
                 vocab_size in the config to at least the tokenizer's size"
            ),
        });
    }
    Ok(Corpus {
        train,
        heldout,
        docs: (split, n_held),
    })
}

/// `batch` windows of `seq + 1` tokens of `stream` for optimizer step `step` and micro-batch
/// `micro`, row-major `[batch, seq + 1]`.
pub fn train_batch(
    stream: &[u32],
    seq: usize,
    batch: usize,
    seed: u64,
    step: usize,
    micro: usize,
) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((micro as u64) << 48),
    );
    let max_start = stream.len().saturating_sub(seq + 1);
    let mut out = Vec::with_capacity(batch * (seq + 1));
    for _ in 0..batch {
        let s = if max_start == 0 {
            0
        } else {
            rng.random_range(0..=max_start)
        };
        out.extend_from_slice(&stream[s..s + seq + 1]);
    }
    out
}

/// Consecutive non-overlapping windows of `seq + 1` tokens of `stream`, at most `max` of them.
pub fn eval_windows(stream: &[u32], seq: usize, max: usize) -> Vec<Vec<u32>> {
    stream
        .chunks_exact(seq + 1)
        .take(max)
        .map(<[u32]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let s: Vec<u32> = (0..1000).collect();
        assert_eq!(
            train_batch(&s, 8, 4, 1, 5, 0),
            train_batch(&s, 8, 4, 1, 5, 0)
        );
        assert_ne!(
            train_batch(&s, 8, 4, 1, 5, 0),
            train_batch(&s, 8, 4, 1, 6, 0)
        );
        assert_ne!(
            train_batch(&s, 8, 4, 1, 5, 0),
            train_batch(&s, 8, 4, 1, 5, 1)
        );
        let b = train_batch(&s, 8, 4, 1, 5, 0);
        assert_eq!(b.len(), 4 * 9);
        for w in b.chunks(9) {
            assert!(
                w.windows(2).all(|p| p[1] == p[0] + 1),
                "windows are contiguous"
            );
        }
    }

    #[test]
    fn text_and_jsonl_documents() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.txt");
        std::fs::write(&t, "one\ntwo\n\n\nthree\n").unwrap();
        assert_eq!(read_documents(&t).unwrap(), vec!["one\ntwo\n", "three\n"]);
        let j = dir.path().join("b.jsonl");
        std::fs::write(&j, "{\"text\":\"x\"}\n\n{\"text\":\"y\"}\n").unwrap();
        assert_eq!(read_documents(&j).unwrap(), vec!["x", "y"]);
        std::fs::write(&j, "{\"text\":\"x\"}\n{\"body\":1}\n").unwrap();
        let e = read_documents(&j).unwrap_err().to_string();
        assert!(e.contains("b.jsonl") && e.contains("line 2"), "{e}");
    }
}
