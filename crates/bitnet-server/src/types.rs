//! Request and response bodies of the OpenAI-compatible API (the shapes of SERVING.md), with
//! OpenAPI schemas. Unknown request fields are ignored, as OpenAI does.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

/// `stop`: one string or a list.
#[derive(Deserialize, ToSchema, Clone, Debug)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Up to 4 stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, ToSchema, Clone, Debug, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Sampling and length parameters shared by both completion endpoints.
#[derive(Deserialize, ToSchema, Clone, Debug, Default)]
pub struct SamplingFields {
    /// Tokens to generate at most (default: the rest of the context).
    pub max_tokens: Option<i64>,
    /// Softmax temperature in [0, 2]; 0 is greedy (default 1).
    pub temperature: Option<f32>,
    /// Nucleus sampling in (0, 1].
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (0 or -1 = off).
    pub top_k: Option<i64>,
    /// Drop tokens less likely than min_p × the most likely one.
    pub min_p: Option<f32>,
    /// Multiplicative penalty (> 0) for tokens in the prompt or output (1 = off).
    pub repetition_penalty: Option<f32>,
    /// In [-2, 2].
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Seed: the same seed and parameters give the same output.
    pub seed: Option<i64>,
    /// Stop strings (not included in the output).
    pub stop: Option<StopField>,
    /// Choices to generate (1..=16).
    pub n: Option<i64>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Keep generating through end-of-sequence tokens (vLLM extension, for benchmarks).
    pub ignore_eos: Option<bool>,
    /// End-user id (accepted, recorded nowhere).
    pub user: Option<String>,
}

/// Message content: a string or a list of text parts.
#[derive(Deserialize, ToSchema, Clone, Debug)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `{"type":"text","text":…}` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// An input chat message.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The content (null is allowed for assistant turns).
    pub content: Option<MessageContent>,
    /// Participant name (ignored).
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct ChatRequest {
    /// The model id (see `GET /v1/models`).
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Alias of `max_tokens` (newer OpenAI name).
    pub max_completion_tokens: Option<i64>,
    /// Return log probabilities of the output tokens.
    pub logprobs: Option<bool>,
    /// Most likely alternatives per position (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
    /// Sampling and length parameters.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: text, a list of texts, token ids, or a list of token-id lists.
#[derive(Deserialize, ToSchema, Clone, Debug)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    Text(String),
    /// Several prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct CompletionRequest {
    /// The model id.
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptField,
    /// Prepend the prompt to the output text.
    pub echo: Option<bool>,
    /// Log probabilities of the output tokens plus this many alternatives (0..=5).
    pub logprobs: Option<i64>,
    /// Sampling and length parameters.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Token counts.
#[derive(Serialize, ToSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

/// One alternative of a chat logprob entry.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token text.
    pub bytes: Vec<u8>,
}

/// One chat logprob entry.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct LogprobEntry {
    /// Token text.
    pub token: String,
    /// Natural log of its probability under the model.
    pub logprob: f32,
    /// UTF-8 bytes of the token text.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat `logprobs`.
#[derive(Serialize, ToSchema, Clone, Debug, Default)]
pub struct ChatLogprobs {
    /// One entry per output token.
    pub content: Vec<LogprobEntry>,
}

/// The assistant's message.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// One chat choice.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ChatChoice {
    /// Choice index.
    pub index: usize,
    /// The message.
    pub message: ChatMessageOut,
    /// Log probabilities, or null.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, or `abort` (cancelled at shutdown).
    pub finish_reason: &'static str,
}

/// `chat.completion`.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// Build and kernel identifier.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// The delta of a chunk.
#[derive(Serialize, ToSchema, Clone, Debug, Default)]
pub struct ChatDelta {
    /// `assistant` in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chunk.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: usize,
    /// New text.
    pub delta: ChatDelta,
    /// Log probabilities of this chunk's tokens, or null.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the last chunk of the choice.
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion.chunk`.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ChatChunk {
    /// Same on every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Same on every chunk.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// Build and kernel identifier.
    pub system_fingerprint: String,
    /// Choices (empty in the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Null, except in the final usage chunk.
    pub usage: Option<Usage>,
}

/// Legacy completion `logprobs`.
#[derive(Serialize, ToSchema, Clone, Debug, Default)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per position.
    pub top_logprobs: Vec<HashMap<String, f32>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// One completion choice (also the chunk choice when streaming).
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct CompletionChoice {
    /// Choice index.
    pub index: usize,
    /// The text (new text, when streaming).
    pub text: String,
    /// Log probabilities, or null.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length`, `abort`, or null in a streaming chunk before the end.
    pub finish_reason: Option<&'static str>,
}

/// `text_completion` (and its streaming chunks).
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// Build and kernel identifier.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (null in streaming chunks, except the usage chunk).
    pub usage: Option<Usage>,
}

/// One model of `GET /v1/models`.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ModelCard {
    /// The id to put in `model`.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds (server start).
    pub created: u64,
    /// `bitnet-rust`.
    pub owned_by: &'static str,
    /// Context length in tokens.
    pub max_model_len: usize,
}

/// `GET /v1/models`.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The served models.
    pub data: Vec<ModelCard>,
}

/// `POST /tokenize`: `prompt` (or llama-server's `content`), or chat `messages`.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct TokenizeRequest {
    /// The model id (optional).
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// llama-server's name for `prompt`.
    pub content: Option<String>,
    /// A conversation, rendered with the chat template first.
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Add BOS (and other special tokens) as the tokenizer specifies (default true; false for
    /// `messages`, whose template adds them).
    pub add_special_tokens: Option<bool>,
}

/// Tokenization result.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Context length.
    pub max_model_len: usize,
    /// The ids.
    pub tokens: Vec<u32>,
}

/// `POST /detokenize`.
#[derive(Deserialize, ToSchema, Clone, Debug)]
pub struct DetokenizeRequest {
    /// The model id (optional).
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// Detokenization result.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// `GET /health` and `GET /ready`.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct HealthResponse {
    /// `ok`, `ready` or `loading`.
    pub status: &'static str,
}
