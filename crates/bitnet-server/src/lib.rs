//! `bitnet serve`: an OpenAI-compatible HTTP server for BitNet b1.58 models.
//!
//! Chat and text completions (streamed over SSE or a WebSocket, or whole), tokenization,
//! models, health/readiness, Prometheus metrics and an OpenAPI document, in front of an engine
//! thread that batches all running sequences into one forward pass per step (continuous
//! batching), behind a bounded queue with deadlines and a KV-cache budget. Errors use the
//! OpenAI envelope and status codes of SERVING.md.

pub mod app;
pub mod batch;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod routes;
pub mod stream;
pub mod tenancy;
pub mod types;

pub use app::{serve, serve_on, ServeError};
pub use config::{ServeConfig, ServeOptions};
