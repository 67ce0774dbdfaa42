//! The WebSocket transport at `/connection/websocket`: origin check, the reader loop that drives
//! a [`Session`], heartbeats, and the writer that packs queued frames together.

use crate::client::Session;
use crate::metrics;
use crate::node::{glob_match, Node};
use crate::outbound::{pack_frames, ClientHandle};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use herald_core::Disconnect;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A connection that has not sent `connect` by then is closed as stale.
const STALE_CLOSE_DELAY: Duration = Duration::from_secs(10);

pub async fn handler(
    State(node): State<Node>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&node.config().client.allowed_origins, &headers) {
        metrics::bad_input("origin_not_allowed");
        tracing::info!(origin = ?headers.get("origin"), "websocket origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let protobuf = query.get("format").is_some_and(|f| f == "protobuf");
    let limit = node.config().websocket.message_size_limit;
    // Small buffers: an idle connection should cost kilobytes, not the 128 KiB read buffer
    // tungstenite allocates by default. Clients send small commands, so 1 KiB (measured: 7.2 KB
    // per idle connection against 10.3 KB with 4 KiB) costs a few more reads only for large
    // client publishes. Frames are flushed as they are written anyway.
    let upgrade = upgrade.read_buffer_size(1024).write_buffer_size(0);
    upgrade.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        let tracker = node.inner.connections.clone();
        tracker.track_future(serve_connection(node, socket, protobuf)).await
    })
}

/// Browsers send `Origin`; other clients usually don't and are let through. A browser origin is
/// accepted when it matches `client.allowed_origins` (with `*` wildcards) or the request's host.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else { return true };
    let origin = origin.to_ascii_lowercase();
    if allowed.iter().any(|pattern| glob_match(&pattern.to_ascii_lowercase(), &origin)) {
        return true;
    }
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let origin_host = origin.split_once("://").map_or(origin.as_str(), |(_, rest)| rest);
    !host.is_empty() && origin_host == host
}

async fn serve_connection(node: Node, socket: WebSocket, protobuf: bool) {
    let (sink, mut stream) = socket.split();
    // Only what the loop needs: a copy of the whole configuration would cost every connection.
    let client = &node.config().client;
    let (ping_interval, pong_timeout) = (client.ping_interval, client.pong_timeout);
    let client_id = uuid::Uuid::new_v4().to_string();
    let handle = Arc::new(ClientHandle::new(client_id, client.queue_max_size));
    let writer = tokio::spawn(write_loop(sink, handle.clone(), node.config().websocket.write_timeout));
    metrics::connection_opened();

    let mut session = Session::new(node.inner.clone(), handle.clone());
    let shutdown = node.shutdown_token();
    let first_ping = {
        let half = ping_interval / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
    };
    let mut next_ping = Instant::now() + first_ping;
    let mut pong_deadline: Option<Instant> = None;
    let stale_deadline = Instant::now() + STALE_CLOSE_DELAY;
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);

    let outcome: Result<(), Disconnect> = if protobuf {
        Err(Disconnect::INAPPROPRIATE_PROTOCOL)
    } else {
        loop {
            let expiry = session.next_expiry_check().map(Instant::from_std).unwrap_or(far_future);
            let connected = session.is_authenticated();
            tokio::select! {
                message = stream.next() => {
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            pong_deadline = None;
                            if let Err(disconnect) = Box::pin(session.handle_frame(text.as_str())).await {
                                break Err(disconnect);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            metrics::bad_input("binary_frame");
                            tracing::info!(client = %handle.id, "binary frame on a JSON connection");
                            break Err(Disconnect::BAD_REQUEST);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => pong_deadline = None,
                        Some(Ok(Message::Close(_))) | None => break Ok(()),
                        Some(Err(error)) => {
                            // Oversized frames surface here as capacity errors.
                            let text = error.to_string();
                            tracing::info!(client = %handle.id, error = %text, "websocket read failed");
                            if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                                metrics::bad_input("frame_too_large");
                                break Err(Disconnect::custom(3501, "message too big"));
                            }
                            break Ok(());
                        }
                    }
                }
                order = handle.next_control() => {
                    // Boxed, like frame handling: an idle connection's task holds only the loop.
                    if let Err(disconnect) = Box::pin(session.handle_control(order)).await {
                        break Err(disconnect);
                    }
                }
                _ = tokio::time::sleep_until(next_ping), if connected => {
                    handle.send(Utf8Bytes::from_static("{}"));
                    next_ping = Instant::now() + ping_interval;
                    if !pong_timeout.is_zero() && pong_deadline.is_none() {
                        pong_deadline = Some(Instant::now() + pong_timeout);
                    }
                }
                _ = tokio::time::sleep_until(pong_deadline.unwrap_or(far_future)), if pong_deadline.is_some() => {
                    break Err(Disconnect::NO_PONG);
                }
                _ = tokio::time::sleep_until(stale_deadline), if !connected => {
                    break Err(Disconnect::STALE);
                }
                _ = tokio::time::sleep_until(expiry) => {
                    if let Err(disconnect) = session.check_expiry() {
                        break Err(disconnect);
                    }
                }
                _ = shutdown.cancelled() => break Err(Disconnect::SHUTDOWN),
            }
        }
    };

    let disconnect = outcome.err().unwrap_or(Disconnect::CONNECTION_CLOSED);
    tracing::debug!(client = %handle.id, code = disconnect.code, reason = %disconnect.reason, "disconnecting");
    // Counted before the close frame leaves, so whoever sees the close also sees the count.
    metrics::disconnect(disconnect.code);
    handle.close(disconnect);
    Box::pin(session.close()).await;
    metrics::connection_closed();
    drop(session);
    drop(handle);
    // The writer ends after the close frame, or when its write timeout gives up on the peer.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

type Sink = SplitSink<WebSocket, Message>;

/// Writes what the connection's queue holds, packing everything waiting into one WebSocket frame
/// (newline-separated, as the protocol allows) so a busy connection costs one write per batch.
async fn write_loop(mut sink: Sink, handle: Arc<ClientHandle>, timeout: Duration) {
    loop {
        let batch = handle.next_batch().await;
        if handle.overflowed() {
            if batch.close.is_some() {
                close(&mut sink, batch.close, timeout).await;
                return;
            }
            continue;
        }
        if let Some(text) = pack(batch.frames) {
            let sent = tokio::time::timeout(timeout, sink.send(Message::Text(text))).await;
            if !matches!(sent, Ok(Ok(()))) {
                metrics::disconnect(Disconnect::WRITE_ERROR.code);
                return;
            }
        }
        if batch.close.is_some() {
            close(&mut sink, batch.close, timeout).await;
            return;
        }
    }
}

fn pack(mut frames: Vec<Utf8Bytes>) -> Option<Utf8Bytes> {
    if frames.len() <= 1 {
        return frames.pop();
    }
    Some(pack_frames(frames.iter()))
}

async fn close(sink: &mut Sink, disconnect: Option<Disconnect>, timeout: Duration) {
    if let Some(disconnect) = disconnect {
        let frame = CloseFrame { code: disconnect.code, reason: Utf8Bytes::from(disconnect.reason.to_string()) };
        let _ = tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(timeout, sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;
    use axum::http::HeaderMap;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("origin", origin.parse().unwrap());
        h.insert("host", host.parse().unwrap());
        h
    }

    #[test]
    fn origins() {
        assert!(origin_allowed(&[], &HeaderMap::new()));
        assert!(origin_allowed(&[], &headers("http://localhost:8000", "localhost:8000")));
        assert!(!origin_allowed(&[], &headers("http://evil.example", "localhost:8000")));
        assert!(origin_allowed(&["http://*.example".into()], &headers("http://app.example", "localhost:8000")));
        assert!(origin_allowed(&["*".into()], &headers("http://any", "localhost:8000")));
    }
}

#[cfg(test)]
mod memory {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds its reader and writer futures: frame and order handling are
    /// boxed so they do not inflate them (they were 4 KiB before).
    #[test]
    fn an_idle_connection_keeps_its_tasks_small() {
        assert!(future_size(serve_connection) <= 1536, "reader: {} bytes", future_size(serve_connection));
        assert!(future_size(write_loop) <= 768, "writer: {} bytes", future_size(write_loop));
    }
}
