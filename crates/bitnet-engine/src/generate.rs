//! Text generation: prefill, then sample/decode token by token, streaming whole UTF-8 text,
//! stopping at an EOS id, a stop string or the token limit.

use crate::error::{Error, Result};
use crate::forward::{KvCache, RunState, DEFAULT_MAX_BATCH};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::time::Instant;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Keep going through EOS ids (for reference comparisons).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The OpenAI-style name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Generated text (up to, not including, a matched stop string).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens actually run (after reusing a cached prefix).
    pub prompt_tokens_run: usize,
    /// Seconds spent in prefill.
    pub prefill_secs: f64,
    /// Seconds spent generating after prefill.
    pub decode_secs: f64,
}

/// Holds a model's KV cache and scratch buffers across generations (multi-turn chat reuses the
/// common prefix of the previous conversation).
pub struct Generator<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    n_ctx: usize,
    cache: KvCache,
    state: RunState,
    cached: Vec<u32>,
}

impl<'m> Generator<'m> {
    /// A generator with a context of `n_ctx` tokens (at most the model's).
    pub fn new(model: &'m Model, tok: &'m Tokenizer, n_ctx: Option<usize>) -> Self {
        let max = model.config.max_position_embeddings;
        let n_ctx = n_ctx.unwrap_or(max).min(max);
        Generator {
            model,
            tok,
            n_ctx,
            cache: KvCache::new(&model.config, 0),
            state: RunState::new(&model.config, DEFAULT_MAX_BATCH, n_ctx),
            cached: Vec::new(),
        }
    }

    /// The same generator over a KV cache of element type `ty` (f32 by default); whatever was
    /// cached is dropped.
    pub fn with_kv_type(mut self, ty: crate::KvType) -> Self {
        self.cache = KvCache::with_type(&self.model.config, 0, ty);
        self.cached.clear();
        self
    }

    /// Context window in tokens.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Generates after `prompt` (token ids, BOS included as the model expects), calling `on_text`
    /// with each new piece of text.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let need = prompt.len() + params.max_tokens;
        if need > self.n_ctx {
            return Err(Error::ContextOverflow {
                prompt_tokens: prompt.len(),
                max_tokens: params.max_tokens,
                n_ctx: self.n_ctx,
            });
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        let mut sampler = Sampler::new(params.sampling.clone(), vocab)?;
        sampler.observe(prompt);

        // Reuse the cached prefix; at least one prompt token must run to produce logits.
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        self.cache.reserve(need);

        let t0 = Instant::now();
        let fresh = &prompt[common..];
        self.cached.extend_from_slice(fresh);
        let logits = self
            .model
            .forward_last(fresh, &mut self.cache, &mut self.state);
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                self.cached.clear();
                self.cache.truncate(0);
                return Err(e);
            }
        };
        let mut logits_buf = logits.to_vec();
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();

        let mut stream = StreamDecoder::new(prompt);
        let mut stops = StopMatcher::new(&params.stop);
        let mut tokens = Vec::with_capacity(params.max_tokens);
        let mut finish = FinishReason::Length;
        for step in 0..params.max_tokens {
            let id = sampler.sample(&mut logits_buf);
            if !params.ignore_eos && self.tok.eos_ids().contains(&id) {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(id);
            sampler.accept(id);
            if let Some(piece) = stream.push(self.tok, id)? {
                if stops.push(&piece, &mut on_text) {
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if step + 1 == params.max_tokens {
                break;
            }
            self.cached.push(id);
            let l = self
                .model
                .forward_last(&[id], &mut self.cache, &mut self.state)?;
            logits_buf.copy_from_slice(l);
        }
        if finish == FinishReason::Length {
            if let Some(rest) = stream.flush(self.tok)? {
                if stops.push(&rest, &mut on_text) {
                    finish = FinishReason::Stop;
                }
            }
        }
        if finish == FinishReason::Length || !stops.matched {
            stops.finish(&mut on_text);
        }
        Ok(Generation {
            tokens,
            text: stops.text,
            finish_reason: finish,
            prompt_tokens_run: fresh.len(),
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
        })
    }
}

/// Streams text through, holding back any tail that could begin a stop string.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    matched: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.to_vec(),
            text: String::new(),
            emitted: 0,
            matched: false,
        }
    }

    /// Adds text; returns true when a stop string completed (text is cut before it).
    pub fn push(&mut self, piece: &str, on_text: &mut impl FnMut(&str)) -> bool {
        let search_from = self
            .emitted
            .saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let from = floor_char(&self.text, search_from);
                self.text[from..].find(s.as_str()).map(|i| from + i)
            })
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            if at > self.emitted {
                on_text(&self.text[self.emitted..]);
            }
            self.emitted = at;
            self.matched = true;
            return true;
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && self.text.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let upto = self.text.len() - hold;
        if upto > self.emitted {
            on_text(&self.text[self.emitted..upto]);
            self.emitted = upto;
        }
        false
    }

    /// Whether a stop string matched.
    pub fn matched(&self) -> bool {
        self.matched
    }

    /// All text accepted so far (cut before a matched stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Emits whatever was held back.
    pub fn finish(&mut self, on_text: &mut impl FnMut(&str)) {
        if self.text.len() > self.emitted {
            on_text(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Greedy decode of `n` tokens after `prompt`, returning the prompt logits (`[T, vocab]`), the
/// tokens and the logits that chose each (`[n, vocab]`), through the KV cache, EOS ignored: the
/// layout of the fixtures' reference outputs.
pub fn greedy_with_logits(
    model: &Model,
    prompt: &[u32],
    n: usize,
) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>)> {
    let vocab = model.config.vocab_size;
    let n_ctx = model.config.max_position_embeddings;
    if prompt.len() + n > n_ctx {
        return Err(Error::ContextOverflow {
            prompt_tokens: prompt.len(),
            max_tokens: n,
            n_ctx,
        });
    }
    let mut cache = KvCache::new(&model.config, prompt.len() + n);
    let mut state = RunState::new(&model.config, DEFAULT_MAX_BATCH, prompt.len() + n);
    let mut prompt_logits = Vec::with_capacity(prompt.len() * vocab);
    model.forward_all(prompt, &mut cache, &mut state, &mut prompt_logits)?;
    let mut tokens = Vec::with_capacity(n);
    let mut step_logits = Vec::with_capacity(n * vocab);
    if n > 0 {
        step_logits.extend_from_slice(&prompt_logits[(prompt.len() - 1) * vocab..]);
    }
    for i in 0..n {
        let row = &step_logits[i * vocab..(i + 1) * vocab];
        let id = crate::compare::argmax(row) as u32;
        tokens.push(id);
        if i + 1 < n {
            let l = model.forward_last(&[id], &mut cache, &mut state)?;
            step_logits.extend_from_slice(l);
        }
    }
    Ok((prompt_logits, tokens, step_logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        let mut hit = false;
        for p in pieces {
            if m.push(p, &mut |s| out.push_str(s)) {
                hit = true;
                break;
            }
        }
        if !hit {
            m.finish(&mut |s| out.push_str(s));
        }
        (out, m.text, hit)
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "D tail"]),
            ("abc ".into(), "abc ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["abc E", "x"]),
            ("abc Ex".into(), "abc Ex".into(), false)
        );
        assert_eq!(
            run(&["\n\n", "ü"], &["hé", "llo ü!"]),
            ("héllo ".into(), "héllo ".into(), true)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), "ab".into(), false));
    }
}
