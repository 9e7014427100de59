//! Load generator for OpenAI-compatible servers (loopback only).
