//! `GET /v1/stream`: a WebSocket that takes one chat-completion request as its first message
//! and answers with the same `chat.completion.chunk` objects as the SSE stream, one JSON text
//! message each, then a final usage chunk, then closes. Errors are the envelope, then close.

use super::start;
use crate::app::AppState;
use crate::error::ApiError;
use crate::stream::Payload;
use crate::tenancy::Caller;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;
use std::time::Duration;

/// Upgrades to a WebSocket streaming one chat completion. With `--auth`, the key goes in
/// `Authorization: Bearer KEY`, or — for browsers, which cannot set it — as the subprotocol
/// `openai-insecure-api-key.KEY` beside `bitnet.v1` (the one the server answers with).
#[utoipa::path(get, path = "/v1/stream", responses(
    (status = 101, description = "WebSocket: send a chat-completion request as the first text message; \
     receive chat.completion.chunk objects, then a usage chunk, then a close frame")))]
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ws: WebSocketUpgrade,
) -> Response {
    // A browser that sends its key as a subprotocol must get one of its protocols back (never
    // the key's): `bitnet.v1` when offered.
    ws.max_message_size(state.config.body_limit)
        .protocols(["bitnet.v1"])
        .on_upgrade(move |socket| run(state, caller, socket))
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.chars().take(100).collect::<String>().into(),
        })))
        .await;
}

async fn run(state: Arc<AppState>, caller: Caller, mut socket: WebSocket) {
    let first = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await;
    let body = match first {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().as_bytes().to_vec(),
        Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
        Ok(_) => return close(socket, 1008, "expected a chat-completion request").await,
        Err(_) => return close(socket, 1008, "no request within 30 s").await,
    };
    let prepared = match super::chat::prepare(&state, &body, true) {
        Ok(p) => p,
        Err(e) => return fail(socket, e).await,
    };
    let mut session = match start(&state, &caller, prepared).await {
        Ok(s) => s.session,
        Err(e) => return fail(socket, e).await,
    };
    loop {
        tokio::select! {
            item = session.next() => match item {
                Some(Payload::Json(j)) => {
                    if socket.send(Message::Text(j.into())).await.is_err() {
                        return; // client gone: dropping the session cancels the job
                    }
                }
                Some(Payload::Error(e)) => {
                    let _ = socket.send(Message::Text(e.into())).await;
                    return close(socket, 1011, "generation failed").await;
                }
                Some(Payload::Done) | None => return close(socket, 1000, "done").await,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}

async fn fail(mut socket: WebSocket, e: ApiError) {
    let _ = socket.send(Message::Text(e.to_json().into())).await;
    let code = if e.status.is_server_error() {
        1013
    } else {
        1008
    };
    close(socket, code, &e.message).await;
}
