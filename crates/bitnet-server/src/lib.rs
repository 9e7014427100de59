//! OpenAI-compatible server.
