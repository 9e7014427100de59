//! Request parameters → engine parameters, each invalid value a 400 naming its `param`.

use crate::engine::JobParams;
use crate::error::ApiError;
use crate::types::{SamplingFields, StopField};
use bitnet_engine::SamplingParams;

/// Parsed common parameters.
pub struct Common {
    /// Engine parameters (`max_tokens` still 0 when not given: see `max_tokens`).
    pub job: JobParams,
    /// `max_tokens` as given.
    pub max_tokens: Option<usize>,
    /// Choices.
    pub n: usize,
    /// SSE.
    pub stream: bool,
    /// Usage chunk at the end of a stream.
    pub include_usage: bool,
}

/// Most choices per request.
pub const MAX_N: usize = 16;

/// Validates the shared fields over the model's defaults.
pub fn common(
    f: &SamplingFields,
    max_tokens_alias: Option<i64>,
    defaults: &SamplingParams,
    vocab: usize,
) -> Result<Common, ApiError> {
    let mut s = defaults.clone();
    let finite = |name: &str, v: f32| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(ApiError::param(
                name,
                format!("`{name}` must be a finite number"),
            ))
        }
    };
    if let Some(t) = f.temperature {
        let t = finite("temperature", t)?;
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::param(
                "temperature",
                format!("`temperature` must be in [0, 2], got {t}"),
            ));
        }
        s.temperature = t;
    }
    if let Some(p) = f.top_p {
        let p = finite("top_p", p)?;
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("`top_p` must be in (0, 1], got {p}"),
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = f.top_k {
        if k < -1 {
            return Err(ApiError::param(
                "top_k",
                format!("`top_k` must be -1 or 0 (off) or positive, got {k}"),
            ));
        }
        s.top_k = k.max(0) as usize;
    }
    if let Some(p) = f.min_p {
        let p = finite("min_p", p)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::param(
                "min_p",
                format!("`min_p` must be in [0, 1], got {p}"),
            ));
        }
        s.min_p = p;
    }
    if let Some(r) = f.repetition_penalty {
        let r = finite("repetition_penalty", r)?;
        if r <= 0.0 {
            return Err(ApiError::param(
                "repetition_penalty",
                format!("`repetition_penalty` must be > 0, got {r}"),
            ));
        }
        s.repeat_penalty = r;
    }
    for (name, v, slot) in [
        (
            "presence_penalty",
            f.presence_penalty,
            &mut s.presence_penalty,
        ),
        (
            "frequency_penalty",
            f.frequency_penalty,
            &mut s.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            let v = finite(name, v)?;
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::param(
                    name,
                    format!("`{name}` must be in [-2, 2], got {v}"),
                ));
            }
            *slot = v;
        }
    }
    if let Some(bias) = &f.logit_bias {
        let mut list = Vec::with_capacity(bias.len());
        for (k, &v) in bias {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` keys must be token ids, got {k:?}"),
                )
            })?;
            if id as usize >= vocab {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` token {id} is outside the vocabulary of {vocab}"),
                ));
            }
            if !(v.is_finite() && (-100.0..=100.0).contains(&v)) {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` values must be in [-100, 100], got {v} for {id}"),
                ));
            }
            list.push((id, v));
        }
        list.sort_by_key(|e| e.0);
        s.logit_bias = list;
    }
    s.seed = f.seed.map(|v| v as u64);
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > 16 {
        return Err(ApiError::param(
            "stop",
            format!("`stop` takes at most 16 strings, got {}", stop.len()),
        ));
    }
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::param(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ))
        }
    };
    let (mt_name, mt) = match (f.max_tokens, max_tokens_alias) {
        (Some(v), _) => ("max_tokens", Some(v)),
        (None, Some(v)) => ("max_completion_tokens", Some(v)),
        (None, None) => ("max_tokens", None),
    };
    let max_tokens = match mt {
        None => None,
        Some(v) if v >= 1 => Some(v as usize),
        Some(v) => {
            return Err(ApiError::param(
                mt_name,
                format!("`{mt_name}` must be at least 1, got {v}"),
            ))
        }
    };
    let stream = f.stream.unwrap_or(false);
    let include_usage = f
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Common {
        job: JobParams {
            max_tokens: 0,
            sampling: s,
            stop,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            logprobs: None,
        },
        max_tokens,
        n,
        stream,
        include_usage,
    })
}

/// Fixes `max_tokens` for a prompt of `prompt` tokens: the requested value, else the rest of
/// the context; over the context is a 400 `context_length_exceeded` on `param`.
pub fn fit_context(
    param: &str,
    prompt: usize,
    max_tokens: Option<usize>,
    ctx: usize,
) -> Result<usize, ApiError> {
    if prompt == 0 {
        return Err(ApiError::param(param, format!("`{param}` is empty")));
    }
    match max_tokens {
        Some(m) if prompt + m > ctx => Err(ApiError::context_length(param, prompt, m, ctx)),
        Some(m) => Ok(m),
        None if prompt >= ctx => Err(ApiError::context_length(param, prompt, 1, ctx)),
        None => Ok(ctx - prompt),
    }
}
