//! Rooms: participants join and leave a room (presence counts from Herald's presence and
//! join/leave pushes), vote, control a shared playback, and send announcements that every
//! participant must confirm.
//!
//! Room actions are RPCs handled in this process (`rooms.vote`, `rooms.playback`,
//! `rooms.announce`), which publish to the room's channel with a priority: votes are `normal`,
//! playback `high` (never shed for a slow participant), announcements `critical` (acknowledged
//! delivery: each participant calls `herald.ack`; `/api/delivery_status` shows who confirmed).
//!
//! Run: `cargo run -p example-rooms`, then open http://127.0.0.1:3004/?user=alice&room=lobby and
//! the same with `user=bob` in another window.

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use herald_core::protocol::{Priority, RawJson};
use herald_server::{Node, ProtocolError, Publish, RpcContext};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONFIG: &str = include_str!("../herald.toml");
const VOTE_OPTIONS: [&str; 3] = ["A", "B", "C"];

/// Votes per room: user -> option. A user's new vote replaces the previous one.
#[derive(Default)]
struct Votes {
    rooms: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl Votes {
    fn cast(&self, room: &str, user: &str, option: &str) -> BTreeMap<String, u32> {
        let mut rooms = self.rooms.lock();
        let votes = rooms.entry(room.to_owned()).or_default();
        votes.insert(user.to_owned(), option.to_owned());
        let mut tally: BTreeMap<String, u32> = VOTE_OPTIONS.iter().map(|o| (o.to_string(), 0)).collect();
        for option in votes.values() {
            *tally.entry(option.clone()).or_default() += 1;
        }
        tally
    }
}

#[derive(Deserialize)]
struct VoteRequest {
    room: String,
    option: String,
}

#[derive(Deserialize)]
struct PlaybackRequest {
    room: String,
    action: String,
    #[serde(default)]
    position: f64,
}

#[derive(Deserialize)]
struct AnnounceRequest {
    room: String,
    text: String,
}

/// What every room event carries on the wire.
#[derive(Serialize)]
struct RoomEvent<'a, T: Serialize> {
    kind: &'a str,
    by: &'a str,
    #[serde(flatten)]
    body: T,
}

fn parse<T: for<'de> Deserialize<'de>>(data: Option<RawJson>) -> Result<T, ProtocolError> {
    let raw = data.ok_or_else(|| ProtocolError::bad_request().with_message("missing RPC data"))?;
    serde_json::from_str(raw.get()).map_err(|e| ProtocolError::bad_request().with_message(format!("bad RPC data: {e}")))
}

fn reply(value: serde_json::Value) -> Result<Option<RawJson>, ProtocolError> {
    let raw = serde_json::value::to_raw_value(&value).map_err(|_| ProtocolError::internal())?;
    Ok(Some(raw.into()))
}

/// Publishes one room event with a priority and answers the RPC with its offset.
async fn publish_event(
    node: &Node,
    room: &str,
    event: &impl Serialize,
    priority: Priority,
) -> Result<Option<RawJson>, ProtocolError> {
    let mut publish = Publish::json(format!("rooms:{room}"), event)?;
    publish.priority = Some(priority);
    publish.tags.insert("priority".into(), priority.as_str().into());
    let result = node.publish(publish).await?;
    reply(json!({"offset": result.offset}))
}

fn register_room_rpcs(node: &Node, votes: Arc<Votes>) {
    let publisher = node.clone();
    node.on_rpc("rooms.vote", move |ctx: RpcContext, data| {
        let (node, votes) = (publisher.clone(), votes.clone());
        async move {
            let request: VoteRequest = parse(data)?;
            if !VOTE_OPTIONS.contains(&request.option.as_str()) {
                return Err(
                    ProtocolError::bad_request().with_message(format!("option must be one of {VOTE_OPTIONS:?}"))
                );
            }
            node.channel_options(&format!("rooms:{}", request.room))?;
            let tally = votes.cast(&request.room, &ctx.user, &request.option);
            let body = json!({"option": request.option, "tally": tally});
            publish_event(&node, &request.room, &RoomEvent { kind: "vote", by: &ctx.user, body }, Priority::Normal)
                .await
        }
    });
    let publisher = node.clone();
    node.on_rpc("rooms.playback", move |ctx: RpcContext, data| {
        let node = publisher.clone();
        async move {
            let request: PlaybackRequest = parse(data)?;
            if !["play", "pause", "seek"].contains(&request.action.as_str()) {
                return Err(ProtocolError::bad_request().with_message("action must be play, pause or seek"));
            }
            if !request.position.is_finite() || request.position < 0.0 {
                return Err(ProtocolError::bad_request().with_message("position must be a non-negative number"));
            }
            let body = json!({"action": request.action, "position": request.position});
            publish_event(&node, &request.room, &RoomEvent { kind: "playback", by: &ctx.user, body }, Priority::High)
                .await
        }
    });
    let publisher = node.clone();
    node.on_rpc("rooms.announce", move |ctx: RpcContext, data| {
        let node = publisher.clone();
        async move {
            let request: AnnounceRequest = parse(data)?;
            let text = request.text.trim();
            if text.is_empty() || text.chars().count() > 200 {
                return Err(ProtocolError::bad_request().with_message("text must have 1 to 200 characters"));
            }
            let body = json!({"text": text});
            publish_event(
                &node,
                &request.room,
                &RoomEvent { kind: "announce", by: &ctx.user, body },
                Priority::Critical,
            )
            .await
        }
    });
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
}

/// Demo sign-in: anyone may be any user. A real application mints the token after its own login.
fn token_route(secret: String) -> Router {
    Router::new().route(
        "/app/token",
        get(move |Query(query): Query<TokenQuery>| {
            let secret = secret.clone();
            async move {
                let user = query.user.trim();
                let valid = !user.is_empty()
                    && user.len() <= 32
                    && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return (StatusCode::BAD_REQUEST, "user: 1 to 32 letters, digits, - or _").into_response();
                }
                let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
                let claims = Claims { sub: user.to_owned(), exp };
                let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
                match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
                    Ok(token) => Json(json!({"token": token})).into_response(),
                    Err(error) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign token: {error}")).into_response()
                    }
                }
            }
        }),
    )
}

fn static_routes() -> Router {
    let script = |body: &'static str| ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body);
    Router::new()
        .route("/", get(|| async { Html(include_str!("../static/index.html")) }))
        .route("/app.js", get(move || async move { script(include_str!("../static/app.js")) }))
        .route(
            "/vendor/centrifuge.js",
            get(move || async move { script(include_str!("../static/vendor/centrifuge.js")) }),
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let loaded = herald_config::load_str(CONFIG, herald_config::Format::Toml, std::env::vars())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let config = loaded.config;
    let address = format!("{}:{}", config.http_server.address, config.http_server.port);
    let secret = config.client.token.hmac_secret_key.clone();
    let node = Node::new(config)?;
    register_room_rpcs(&node, Arc::new(Votes::default()));

    let app = Router::new().merge(static_routes()).merge(token_route(secret)).merge(node.router());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("example-rooms: open http://{}/?user=alice&room=lobby", listener.local_addr()?);
    std::io::stdout().flush()?;
    herald_server::serve_app(node, app, listener, herald_server::shutdown_signal(), Duration::from_secs(10)).await?;
    Ok(())
}
