//! The server HTTP API: `POST /api/<method>` with `X-API-Key` or `Authorization: apikey <key>`.
//!
//! Answers follow Centrifugo: HTTP 200 with `{"result": ...}` or `{"error": {"code", "message"}}`;
//! a missing or wrong key is HTTP 401, a body that is not the method's JSON is HTTP 400.

use crate::client::history_filter;
use crate::metrics;
use crate::node::{Node, Publish};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use herald_core::api::*;
use herald_core::protocol::{RawJson, SubscribeRequest as ClientSubscribeRequest};
use herald_core::{Disconnect, ProtocolError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;

fn key_matches(headers: &HeaderMap, key: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-api-key") == Some(key) {
        return true;
    }
    header("authorization")
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, value)| scheme.eq_ignore_ascii_case("apikey") && value.trim() == key)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// `{"result": result}` or `{"error": error}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Answer<T: Serialize> {
    Result(T),
    Error(ProtocolError),
}

/// Why a call failed: a body that is not the method's JSON (the caller's bug, HTTP 400, as
/// Centrifugo answers) or a refusal (HTTP 200 with the error).
enum CallError {
    MalformedBody(ProtocolError),
    Refused(ProtocolError),
}

impl From<ProtocolError> for CallError {
    fn from(error: ProtocolError) -> Self {
        CallError::Refused(error)
    }
}

impl CallError {
    fn into_error(self) -> ProtocolError {
        match self {
            CallError::MalformedBody(error) | CallError::Refused(error) => error,
        }
    }
}

type Outcome = Result<Box<RawValue>, CallError>;

fn to_raw<T: Serialize>(value: &T) -> Outcome {
    serde_json::value::to_raw_value(value).map_err(|_| ProtocolError::internal().into())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    // The field's path makes the message actionable: `priority: unknown variant "urgent"...`.
    let malformed = |message: String| CallError::MalformedBody(ProtocolError::bad_request().with_message(message));
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        malformed(if path == "." {
            format!("invalid request: {}", e.inner())
        } else {
            format!("invalid request: {path}: {}", e.inner())
        })
    })?;
    deserializer.end().map_err(|e| malformed(format!("invalid request: {e}")))?;
    Ok(value)
}

pub async fn handler(
    State(node): State<Node>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &node.config().http_api;
    if !config.insecure && (config.key.is_empty() || !key_matches(&headers, &config.key)) {
        metrics::error("api", 101);
        tracing::info!(%method, "server API call without a valid key");
        return json_response(
            StatusCode::UNAUTHORIZED,
            serde_json::to_vec(&Answer::<()>::Error(ProtocolError::unauthorized())).unwrap_or_default(),
        );
    }
    let started = Instant::now();
    let Some(name) = method_name(&method) else {
        metrics::error("api", 104);
        return json_response(
            StatusCode::NOT_FOUND,
            serde_json::to_vec(&Answer::<()>::Error(ProtocolError::method_not_found())).unwrap_or_default(),
        );
    };
    let outcome = call(&node, name, &body).await;
    metrics::api_call(name, started.elapsed());
    match outcome {
        // Centrifugo answers batch with its replies at the top level, and `cent` expects that.
        Ok(result) if name == "batch" => json_response(StatusCode::OK, result.get().as_bytes().to_vec()),
        Ok(result) => json_response(StatusCode::OK, serde_json::to_vec(&Answer::Result(result)).unwrap_or_default()),
        Err(failure) => {
            let status =
                if matches!(failure, CallError::MalformedBody(_)) { StatusCode::BAD_REQUEST } else { StatusCode::OK };
            let error = failure.into_error();
            metrics::error("api", error.code);
            tracing::info!(method = name, code = error.code, message = %error.message, "server API call refused");
            json_response(status, serde_json::to_vec(&Answer::<()>::Error(error)).unwrap_or_default())
        }
    }
}

const METHODS: &[&str] = &[
    "publish",
    "publish_change",
    "stats",
    "delivery_status",
    "broadcast",
    "batch",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
];

fn method_name(method: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|m| *m == method)
}

fn payload(data: Option<RawJson>, b64data: &str) -> Result<RawJson, ProtocolError> {
    if let Some(data) = data {
        return Ok(data);
    }
    if !b64data.is_empty() {
        // JSON transports carry binary payloads base64-decoded only when they are JSON themselves.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64data)
            .map_err(|e| ProtocolError::bad_request().with_message(format!("b64data: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| ProtocolError::bad_request().with_message("b64data is not UTF-8 JSON"))?;
        let raw = RawValue::from_string(text)
            .map_err(|_| ProtocolError::bad_request().with_message("b64data is not JSON"))?;
        return Ok(Arc::from(raw));
    }
    Err(ProtocolError::bad_request().with_message("data required"))
}

async fn publish(node: &Node, request: PublishRequest) -> Result<PublishResult, ProtocolError> {
    let mut publish = Publish::new(request.channel, payload(request.data, &request.b64data)?);
    publish.tags = request.tags;
    publish.skip_history = request.skip_history;
    publish.idempotency_key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
    publish.audience = request.audience;
    publish.requires_ack = request.requires_ack;
    publish.priority = request.priority;
    node.inner.publish(publish, "api").await
}

#[derive(Serialize)]
struct BroadcastResult {
    responses: Vec<Answer<PublishResult>>,
}

#[derive(Serialize)]
struct Empty {}

/// Answers one API call. A call that publishes waits once for delivery capacity (see
/// `congestion`), however many publications it makes.
async fn call(node: &Node, method: &'static str, body: &[u8]) -> Outcome {
    if matches!(method, "publish" | "broadcast" | "publish_change" | "batch") {
        node.inner.wait_for_delivery_capacity().await;
    }
    dispatch(node, method, body).await
}

async fn dispatch(node: &Node, method: &'static str, body: &[u8]) -> Outcome {
    match method {
        "publish" => to_raw(&publish(node, parse(body)?).await?),
        "broadcast" => {
            let request: BroadcastRequest = parse(body)?;
            if request.channels.is_empty() {
                return Err(ProtocolError::bad_request().with_message("channels required").into());
            }
            let data = payload(request.data, &request.b64data)?;
            let mut responses = Vec::with_capacity(request.channels.len());
            for channel in request.channels {
                let single = PublishRequest {
                    channel,
                    data: Some(data.clone()),
                    b64data: String::new(),
                    skip_history: request.skip_history,
                    tags: request.tags.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    audience: request.audience.clone(),
                    requires_ack: request.requires_ack,
                    priority: request.priority,
                };
                responses.push(match publish(node, single).await {
                    Ok(result) => Answer::Result(result),
                    Err(error) => Answer::Error(error),
                });
            }
            to_raw(&BroadcastResult { responses })
        }
        "batch" => {
            let request: BatchRequest = parse(body)?;
            let commands = request.commands.into_iter().map(|command| async move {
                let mut entries = command.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((name, args)), None) => match method_name(&name).filter(|m| *m != "batch") {
                        Some(inner) => match Box::pin(dispatch(node, inner, args.get().as_bytes())).await {
                            Ok(result) => serde_json::json!({ inner: result }),
                            Err(failure) => serde_json::json!({ "error": failure.into_error() }),
                        },
                        None => serde_json::json!({ "error": ProtocolError::method_not_found() }),
                    },
                    _ => {
                        serde_json::json!({ "error": ProtocolError::bad_request().with_message("a batch command names exactly one method") })
                    }
                }
            });
            // In parallel, publishes of one batch share durable commits (group commit); each
            // still takes its offset in command order, since offsets are assigned before the
            // first wait.
            let replies = if request.parallel {
                futures_util::future::join_all(commands).await
            } else {
                let mut replies = Vec::new();
                for command in commands {
                    replies.push(command.await);
                }
                replies
            };
            to_raw(&serde_json::json!({ "replies": replies }))
        }
        "subscribe" => {
            let request: SubscribeRequest = parse(body)?;
            if request.user.is_empty() && request.client.is_empty() {
                return Err(ProtocolError::bad_request().with_message("user or client required").into());
            }
            let mut sub = ClientSubscribeRequest { channel: request.channel, data: request.data, ..Default::default() };
            if let Some(since) = request.recover_since {
                sub.recover = true;
                sub.offset = since.offset;
                sub.epoch = since.epoch;
            }
            node.subscribe(&request.user, &request.client, sub)?;
            to_raw(&Empty {})
        }
        "unsubscribe" => {
            let request: UnsubscribeRequest = parse(body)?;
            if request.user.is_empty() && request.client.is_empty() {
                return Err(ProtocolError::bad_request().with_message("user or client required").into());
            }
            node.unsubscribe(&request.user, &request.client, &request.channel)?;
            to_raw(&Empty {})
        }
        "disconnect" => {
            let request: DisconnectRequest = parse(body)?;
            if request.user.is_empty() && request.client.is_empty() {
                return Err(ProtocolError::bad_request().with_message("user or client required").into());
            }
            let disconnect = match request.disconnect {
                Some(d) if d.code != 0 => {
                    if !(3000..5000).contains(&d.code) {
                        return Err(ProtocolError::bad_request()
                            .with_message("disconnect code must be in 3000..4999")
                            .into());
                    }
                    let reason = if d.reason.is_empty() {
                        Disconnect::from_code(d.code).map(|k| k.reason.to_string()).unwrap_or_default()
                    } else {
                        d.reason
                    };
                    Disconnect::custom(d.code, reason)
                }
                _ => Disconnect::FORCE_NO_RECONNECT,
            };
            node.disconnect(&request.user, &request.client, &request.whitelist, disconnect);
            to_raw(&Empty {})
        }
        "presence" => {
            let request: ChannelRequest = parse(body)?;
            to_raw(&PresenceResult { presence: node.presence(&request.channel).await? })
        }
        "presence_stats" => {
            let request: ChannelRequest = parse(body)?;
            let stats = node.presence_stats(&request.channel).await?;
            to_raw(&serde_json::json!({ "num_clients": stats.num_clients, "num_users": stats.num_users }))
        }
        "history" => {
            let request: HistoryRequest = parse(body)?;
            let max = node.config().client.history_max_publication_limit;
            let filter = history_filter(request.limit, request.since, request.reverse, max);
            let page = node.history(&request.channel, filter).await?;
            if !page.since_available {
                return Err(ProtocolError::unrecoverable_position().into());
            }
            to_raw(&HistoryResult {
                publications: page.publications,
                epoch: page.position.epoch,
                offset: page.position.offset,
            })
        }
        "history_remove" => {
            let request: ChannelRequest = parse(body)?;
            node.remove_history(&request.channel).await?;
            to_raw(&Empty {})
        }
        "channels" => {
            let request: ChannelsRequest = parse(body)?;
            let channels = node
                .cluster_channels(&request.pattern)
                .await?
                .into_iter()
                .map(|(name, num_clients)| (name, ChannelInfo { num_clients }))
                .collect();
            to_raw(&ChannelsResult { channels })
        }
        "info" => to_raw(&InfoResult { nodes: node.cluster_info().await? }),
        "publish_change" => {
            let request: herald_core::change::ChangeRequest = parse(body)?;
            to_raw(&node.inner.publish(Publish::change(request)?, "api").await?)
        }
        "delivery_status" => {
            let request: DeliveryStatusRequest = parse(body)?;
            node.channel_options(&request.channel)?;
            match node.delivery_status(&request.channel, request.offset) {
                Some(status) => to_raw(&status),
                None => Err(ProtocolError::new(102, "no tracked delivery at this channel and offset").into()),
            }
        }
        "stats" => {
            let request: StatsRequest = parse(body)?;
            let channels: std::collections::BTreeMap<_, _> = node
                .channel_stats()
                .into_iter()
                .filter(|(name, _)| request.channel.is_empty() || crate::node::glob_match(&request.channel, name))
                .collect();
            let mut answer = serde_json::json!({ "channels": channels });
            if !request.tag.is_empty() {
                answer["groups"] = serde_json::json!(node.tag_stats(&request.tag));
            }
            to_raw(&answer)
        }
        _ => Err(ProtocolError::method_not_found().into()),
    }
}
