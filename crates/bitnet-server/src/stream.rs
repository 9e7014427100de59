//! Engine events → response bodies: streamed chunks (SSE or WebSocket messages) or one
//! collected response, for chat and text completions alike.

use crate::engine::{Event, Finish, TokenLogprob};
use crate::error::ApiError;
use crate::types::*;
use bitnet_engine::Tokenizer;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Which API shape to produce.
#[derive(Clone, Debug)]
pub enum Kind {
    /// `chat.completion(.chunk)`.
    Chat,
    /// `text_completion`, with the text to echo before each choice (empty: no echo).
    Completion {
        /// Prompt text per choice index when `echo` is set.
        echo: Vec<String>,
    },
}

/// One streamed item.
#[derive(Debug)]
pub enum Payload {
    /// A chunk object, serialized.
    Json(String),
    /// The end (`[DONE]` over SSE).
    Done,
    /// An error after the response started: the envelope, serialized; the stream then ends.
    Error(String),
}

/// One generation request's response state.
pub struct Session {
    /// Response id (`chatcmpl-…` / `cmpl-…`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
    /// System fingerprint.
    pub fingerprint: String,
    /// Kind.
    pub kind: Kind,
    /// Choices.
    pub choices: usize,
    /// Send the usage chunk.
    pub include_usage: bool,
    /// Prompt tokens (all prompts, counted once per choice).
    pub prompt_tokens: usize,
    /// Tokenizer for logprob token texts.
    pub tok: Arc<Tokenizer>,
    /// Receiver of the engine's events.
    pub rx: UnboundedReceiver<Event>,
    completion_tokens: usize,
    done: usize,
    started: bool,
    ended: bool,
    pending: VecDeque<Payload>,
    offsets: Vec<usize>,
    last_finish: Option<Finish>,
    meter: Option<crate::tenancy::Metering>,
}

/// What one choice produced (non-streaming).
#[derive(Default)]
struct Collected {
    text: String,
    finish: Option<Finish>,
    logprobs: Vec<TokenLogprob>,
}

impl Session {
    /// A session over `rx`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        created: u64,
        model: String,
        fingerprint: String,
        kind: Kind,
        choices: usize,
        include_usage: bool,
        prompt_tokens: usize,
        tok: Arc<Tokenizer>,
        rx: UnboundedReceiver<Event>,
    ) -> Self {
        Session {
            id,
            created,
            model,
            fingerprint,
            kind,
            choices,
            include_usage,
            prompt_tokens,
            tok,
            rx,
            completion_tokens: 0,
            done: 0,
            started: false,
            ended: false,
            pending: VecDeque::new(),
            offsets: vec![0; choices],
            last_finish: None,
            meter: None,
        }
    }

    /// Meters this request: its usage row is written when it ends (before the last bytes
    /// go to the client), or when it is dropped (client gone).
    pub fn set_metering(&mut self, m: crate::tenancy::Metering) {
        self.meter = Some(m);
    }

    /// The engine refused the request before it started: its usage row carries no tokens
    /// and the prompt tokens charged at admission are given back.
    pub fn meter_refused(&mut self, status: u16) {
        if let Some(m) = self.meter.as_mut() {
            m.refused(status);
        }
    }

    fn meter_token(&mut self) {
        if let Some(m) = self.meter.as_mut() {
            m.token();
        }
    }

    fn meter_end(&mut self, ok: bool, status: u16) {
        let completion = self.completion_tokens;
        let reason = if ok {
            self.last_finish.map(Finish::as_str).unwrap_or("stop")
        } else {
            "error"
        };
        if let Some(m) = self.meter.as_mut() {
            m.finish(ok.then_some(completion), status, reason);
        }
    }

    /// Waits until the engine admits the request; a rejection (queue deadline, shutdown) or
    /// a timeout is the error to answer with.
    pub async fn admitted(&mut self, timeout: Duration) -> Result<(), ApiError> {
        let wait = async {
            match self.rx.recv().await {
                Some(Event::Admitted) => Ok(()),
                Some(Event::Rejected(e)) => Err(e),
                Some(Event::Failed(m)) => Err(ApiError::internal(m)),
                Some(_) => Err(ApiError::internal(
                    "unexpected engine event before admission",
                )),
                None => Err(ApiError::internal("the engine stopped")),
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::overloaded(
                "The request was not admitted in time",
                timeout.as_secs().clamp(1, 30),
            )),
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.tok.decode(&[id], false).unwrap_or_default()
    }

    fn chat_logprobs(&self, lp: &TokenLogprob) -> LogprobEntry {
        let token = self.token_text(lp.id);
        LogprobEntry {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(id, logprob)| {
                    let token = self.token_text(id);
                    TopLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob,
                    }
                })
                .collect(),
        }
    }

    fn completion_logprobs(&self, lps: &[TokenLogprob], mut offset: usize) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        for lp in lps {
            let token = self.token_text(lp.id);
            out.text_offset.push(offset);
            offset += token.chars().count();
            out.tokens.push(token);
            out.token_logprobs.push(lp.logprob);
            let mut top = HashMap::new();
            for &(id, l) in &lp.top {
                top.insert(self.token_text(id), l);
            }
            out.top_logprobs.push(top);
        }
        out
    }

    fn chunk_json(
        &self,
        index: usize,
        text: Option<String>,
        lp: Option<&TokenLogprob>,
        finish: Option<Finish>,
        role: bool,
    ) -> String {
        let fr = finish.map(Finish::as_str);
        let res = match &self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![ChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: role.then_some("assistant"),
                        content: text,
                    },
                    logprobs: lp.map(|l| ChatLogprobs {
                        content: vec![self.chat_logprobs(l)],
                    }),
                    finish_reason: fr,
                }],
                usage: None,
            }),
            Kind::Completion { .. } => {
                let text = text.unwrap_or_default();
                let offset = self.offsets.get(index).copied().unwrap_or(0);
                serde_json::to_string(&Completion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.model.clone(),
                    system_fingerprint: self.fingerprint.clone(),
                    choices: vec![CompletionChoice {
                        index,
                        text,
                        logprobs: lp
                            .map(|l| self.completion_logprobs(std::slice::from_ref(l), offset)),
                        finish_reason: fr,
                    }],
                    usage: None,
                })
            }
        };
        res.unwrap_or_default()
    }

    fn usage_json(&self) -> String {
        let res = match &self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![],
                usage: Some(self.usage()),
            }),
            Kind::Completion { .. } => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![],
                usage: Some(self.usage()),
            }),
        };
        res.unwrap_or_default()
    }

    /// The next streamed item; `None` after the end.
    pub async fn next(&mut self) -> Option<Payload> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Some(p);
            }
            if self.ended {
                return None;
            }
            if !self.started {
                self.started = true;
                for i in 0..self.choices {
                    let first = match &self.kind {
                        Kind::Chat => self.chunk_json(i, Some(String::new()), None, None, true),
                        Kind::Completion { echo } => match echo.get(i) {
                            Some(t) if !t.is_empty() => {
                                self.offsets[i] = t.chars().count();
                                self.chunk_json(i, Some(t.clone()), None, None, false)
                            }
                            _ => continue,
                        },
                    };
                    self.pending.push_back(Payload::Json(first));
                }
                continue;
            }
            match self.rx.recv().await {
                Some(Event::Token {
                    index,
                    text,
                    logprob,
                    ..
                }) => {
                    self.meter_token();
                    let chunk =
                        self.chunk_json(index, Some(text.clone()), logprob.as_ref(), None, false);
                    if let Some(o) = self.offsets.get_mut(index) {
                        *o += text.chars().count();
                    }
                    return Some(Payload::Json(chunk));
                }
                Some(Event::Done {
                    index,
                    finish,
                    completion_tokens,
                }) => {
                    self.completion_tokens += completion_tokens;
                    self.done += 1;
                    self.last_finish = Some(finish);
                    let content = match self.kind {
                        Kind::Chat => None,
                        Kind::Completion { .. } => Some(String::new()),
                    };
                    let chunk = self.chunk_json(index, content, None, Some(finish), false);
                    self.pending.push_back(Payload::Json(chunk));
                    if self.done == self.choices {
                        // The usage row is journaled before the client sees the end.
                        self.meter_end(true, 200);
                        if self.include_usage {
                            self.pending.push_back(Payload::Json(self.usage_json()));
                        }
                        self.pending.push_back(Payload::Done);
                        self.ended = true;
                    }
                }
                Some(Event::Admitted) => {}
                Some(Event::Rejected(e)) => {
                    self.ended = true;
                    self.meter_end(false, e.status.as_u16());
                    return Some(Payload::Error(e.to_json()));
                }
                Some(Event::Failed(m)) => {
                    self.ended = true;
                    self.meter_end(false, 500);
                    return Some(Payload::Error(ApiError::internal(m).to_json()));
                }
                None => {
                    self.ended = true;
                    self.meter_end(false, 500);
                    return Some(Payload::Error(
                        ApiError::internal("the engine stopped").to_json(),
                    ));
                }
            }
        }
    }

    /// Collects the whole answer (non-streaming).
    pub async fn collect(mut self) -> Result<serde_json::Value, ApiError> {
        let mut out: Vec<Collected> = (0..self.choices).map(|_| Collected::default()).collect();
        while self.done < self.choices {
            match self.rx.recv().await {
                Some(Event::Token {
                    index,
                    text,
                    logprob,
                    ..
                }) => {
                    self.meter_token();
                    if let Some(c) = out.get_mut(index) {
                        c.text.push_str(&text);
                        c.logprobs.extend(logprob);
                    }
                }
                Some(Event::Done {
                    index,
                    finish,
                    completion_tokens,
                }) => {
                    self.completion_tokens += completion_tokens;
                    self.done += 1;
                    self.last_finish = Some(finish);
                    if let Some(c) = out.get_mut(index) {
                        c.finish = Some(finish);
                    }
                }
                Some(Event::Admitted) => {}
                Some(Event::Rejected(e)) => {
                    self.meter_end(false, e.status.as_u16());
                    return Err(e);
                }
                Some(Event::Failed(m)) => {
                    self.meter_end(false, 500);
                    return Err(ApiError::internal(m));
                }
                None => {
                    self.meter_end(false, 500);
                    return Err(ApiError::internal("the engine stopped"));
                }
            }
        }
        self.meter_end(true, 200);
        let usage = self.usage();
        let value = match &self.kind {
            Kind::Chat => serde_json::to_value(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: out
                    .iter()
                    .enumerate()
                    .map(|(index, c)| ChatChoice {
                        index,
                        message: ChatMessageOut {
                            role: "assistant",
                            content: c.text.clone(),
                        },
                        logprobs: (!c.logprobs.is_empty()).then(|| ChatLogprobs {
                            content: c.logprobs.iter().map(|l| self.chat_logprobs(l)).collect(),
                        }),
                        finish_reason: c.finish.unwrap_or(Finish::Abort).as_str(),
                    })
                    .collect(),
                usage,
            }),
            Kind::Completion { echo } => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: out
                    .iter()
                    .enumerate()
                    .map(|(index, c)| {
                        let prefix = echo.get(index).cloned().unwrap_or_default();
                        let offset = prefix.chars().count();
                        CompletionChoice {
                            index,
                            text: prefix + &c.text,
                            logprobs: (!c.logprobs.is_empty())
                                .then(|| self.completion_logprobs(&c.logprobs, offset)),
                            finish_reason: Some(c.finish.unwrap_or(Finish::Abort).as_str()),
                        }
                    })
                    .collect(),
                usage: Some(usage),
            }),
        };
        value.map_err(|e| ApiError::internal(format!("serializing the response: {e}")))
    }
}
