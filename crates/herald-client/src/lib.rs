//! A Rust client for Herald (and any Centrifugo-compatible server): the client protocol v2 in
//! JSON over WebSocket.
//!
//! - connect with a token or a token callback; the connection (and subscription) tokens are
//!   renewed before they expire;
//! - subscriptions as [`futures_util::Stream`]s, with Herald's filters and change-event modes;
//! - automatic reconnect with exponential backoff and jitter; subscriptions come back recovering
//!   from the last offset seen, duplicates are dropped by offset, and a failed recovery is an event
//!   so the application can resync;
//! - acknowledged delivery (`herald.ack`), by hand or automatically;
//! - publish, history, presence, presence stats and RPC calls with typed results and errors.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use herald_client::{Client, SubscribeOptions, SubscriptionEvent};
//!
//! # async fn run() -> Result<(), herald_client::Error> {
//! let client = Client::builder("ws://127.0.0.1:8000/connection/websocket").token("<jwt>").build();
//! client.connect();
//! let mut news = client.subscribe("news", SubscribeOptions::new()).await?;
//! while let Some(event) = news.next().await {
//!     if let SubscriptionEvent::Publication(publication) = event {
//!         println!("{} {}", publication.offset, publication.data.get());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/clients/rust.md` for a guide.

mod connection;
mod error;
pub mod filter;
mod options;
mod subscription;

pub use connection::backoff;
pub use error::{Error, TokenError};
pub use herald_core::protocol::{ClientInfo, FilterNode, Publication, RawJson, Since};
pub use options::{ChangeMode, ClientConfig, SubTokenFn, SubscribeOptions, TokenFn};
pub use subscription::{decode, Subscribed, Subscription, SubscriptionEvent};

use connection::{Actor, Request, ACK_METHOD};
use herald_core::incoming::Reply;
use herald_core::protocol::{
    Command, HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest, RpcRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Disconnect codes of the client itself (the server's are 3000 and up).
pub mod codes {
    /// `disconnect()` was called, or `connect()` not yet.
    pub const DISCONNECT_CALLED: u16 = 0;
    /// The token callback said the user may not connect, or the token expired and there is no
    /// callback to renew it.
    pub const UNAUTHORIZED: u16 = 1;
    /// The server refused the connect command with a permanent error.
    pub const CONNECT_REFUSED: u16 = 2;
}

/// Where the connection is; watch it with [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected and not trying: before `connect()`, after `disconnect()`, or after the
    /// server closed with a terminal code (3500–3999, 4500–4999) or the client gave up
    /// ([`codes`]).
    Disconnected {
        code: u16,
        reason: String,
    },
    /// Connecting: `attempt` failed attempts so far; `retry_in` is set while waiting before the
    /// next one, with the error that ended the last.
    Connecting {
        attempt: u32,
        retry_in: Option<Duration>,
        last_error: Option<String>,
    },
    Connected {
        client: String,
    },
}

/// Options of a history call.
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// How many publications; 0 answers only the stream's top position, negative as many as the
    /// server allows.
    pub limit: i64,
    /// Only publications after this position.
    pub since: Option<Since>,
    /// Newest first.
    pub reverse: bool,
}

/// A page of history.
pub type History = herald_core::protocol::HistoryResult;

/// Presence: who is subscribed, by client id.
pub type Presence = BTreeMap<String, ClientInfo>;

/// How many clients and distinct users are subscribed.
pub type PresenceStats = herald_core::protocol::PresenceStatsResult;

/// Builds a [`Client`].
pub struct ClientBuilder {
    config: ClientConfig,
}

impl ClientBuilder {
    /// A static connection token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Fetches connection tokens: before connecting when there is none or it expired, and before
    /// it expires while connected (the connect reply says when).
    pub fn token_fn<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.config.token_fn = Some(options::token_fn(f));
        self
    }

    /// Reconnect delays: attempt `n` waits `min + random(0..=min(max, min * 2^n))`, at most
    /// `max`. Defaults 0.5 s and 20 s.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.config.min_reconnect_delay = min;
        self.config.max_reconnect_delay = max.max(min);
        self
    }

    /// Bound on connecting, on each call's reply and on token callbacks (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// How late a server ping may be, after the interval the connect reply announced, before the
    /// connection counts as dead and is replaced (default 10 s).
    pub fn max_server_ping_delay(mut self, delay: Duration) -> Self {
        self.config.max_server_ping_delay = delay;
        self
    }

    /// Events buffered per subscription (default 10 000); see [`ClientConfig::event_buffer`].
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.config.event_buffer = events.max(2);
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Connect `data` for the server.
    pub fn data<T: Serialize>(mut self, data: &T) -> Result<Self, Error> {
        let raw = serde_json::value::to_raw_value(data).map_err(|e| Error::Invalid(format!("connect data: {e}")))?;
        self.config.data = Some(RawJson::from(raw));
        Ok(self)
    }

    /// Everything at once.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// The client, not connected yet: call [`Client::connect`]. Needs a Tokio runtime.
    pub fn build(self) -> Client {
        let config = Arc::new(self.config);
        let (requests, inbox) = mpsc::unbounded_channel();
        let state = Arc::new(watch::Sender::new(ConnectionState::Disconnected {
            code: codes::DISCONNECT_CALLED,
            reason: "not connected yet".into(),
        }));
        tokio::spawn(Actor::new(config.clone(), inbox, state.clone()).run());
        Client { inner: Arc::new(Inner { requests, state, config, next_subscription: AtomicU64::new(1) }) }
    }
}

struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    state: Arc<watch::Sender<ConnectionState>>,
    config: Arc<ClientConfig>,
    next_subscription: AtomicU64,
}

/// A connection to a Herald server, kept up in the background. Cheap to clone; the connection
/// closes when the last clone and the last [`Subscription`] are dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// `url` is the WebSocket endpoint, `ws://host:port/connection/websocket`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder { config: ClientConfig::new(url) }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Starts connecting (and reconnecting after failures) in the background.
    pub fn connect(&self) {
        self.inner.state.send_if_modified(|state| {
            if matches!(state, ConnectionState::Disconnected { .. }) {
                *state = ConnectionState::Connecting { attempt: 0, retry_in: None, last_error: None };
                true
            } else {
                false
            }
        });
        let _ = self.inner.requests.send(Request::Connect);
    }

    /// Closes the connection and stops reconnecting; subscriptions stay and come back on the next
    /// [`Client::connect`].
    pub fn disconnect(&self) {
        let _ = self.inner.requests.send(Request::Disconnect);
    }

    /// The connection state, as it changes.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Waits until connected and answers the client id; fails when the client stops trying
    /// (terminal disconnect, `disconnect()`, no `connect()` yet).
    pub async fn connected(&self) -> Result<String, Error> {
        let mut state = self.state();
        loop {
            match &*state.borrow_and_update() {
                ConnectionState::Connected { client } => return Ok(client.clone()),
                ConnectionState::Disconnected { code, reason } => {
                    return Err(Error::Disconnected(format!("{reason} ({code})")))
                }
                ConnectionState::Connecting { .. } => {}
            }
            state.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Subscribes and waits for the server's answer. While disconnected, it waits for the
    /// connection; wrap it in a timeout if that matters.
    pub async fn subscribe(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let channel = channel.into();
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::channel(self.inner.config.event_buffer.max(2));
        let (ready, answer) = oneshot::channel();
        let counters = Arc::new(subscription::Counters::default());
        let auto_ack = options.auto_ack;
        self.inner
            .requests
            .send(Request::Subscribe {
                id,
                channel: channel.clone(),
                options: Box::new(options),
                events: events_tx,
                counters: counters.clone(),
                ready,
            })
            .map_err(|_| Error::Closed)?;
        // Made before waiting, so that a dropped (timed out) subscribe unsubscribes.
        let mut subscription = Subscription {
            id,
            channel,
            events,
            requests: self.inner.requests.clone(),
            auto_ack,
            counters,
            client: self.clone(),
            unsubscribed: false,
        };
        match answer.await {
            Ok(Ok(_)) => Ok(subscription),
            Ok(Err(error)) => {
                subscription.unsubscribed = true;
                Err(error)
            }
            Err(_) => {
                subscription.unsubscribed = true;
                Err(Error::Closed)
            }
        }
    }

    async fn call(&self, command: Command) -> Result<Reply, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner.requests.send(Request::Call { command: Box::new(command), reply }).map_err(|_| Error::Closed)?;
        let timeout = self.inner.config.timeout;
        let reply = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => reply?,
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => return Err(Error::Timeout(timeout)),
        };
        match reply.error {
            Some(error) => Err(Error::Server(error)),
            None => Ok(reply),
        }
    }

    /// Publishes JSON into a channel (the namespace must allow client publishing).
    pub async fn publish<T: Serialize + ?Sized>(&self, channel: &str, data: &T) -> Result<(), Error> {
        let raw = serde_json::value::to_raw_value(data).map_err(|e| Error::Invalid(format!("publish data: {e}")))?;
        let request = PublishRequest { channel: channel.into(), data: Some(RawJson::from(raw)) };
        self.call(Command { publish: Some(request), ..Default::default() }).await?;
        Ok(())
    }

    pub async fn history(&self, channel: &str, options: HistoryOptions) -> Result<History, Error> {
        let request = HistoryRequest {
            channel: channel.into(),
            limit: options.limit,
            since: options.since,
            reverse: options.reverse,
        };
        let reply = self.call(Command { history: Some(request), ..Default::default() }).await?;
        reply.history.ok_or_else(|| Error::Decode("history reply without a result".into()))
    }

    pub async fn presence(&self, channel: &str) -> Result<Presence, Error> {
        let request = PresenceRequest { channel: channel.into() };
        let reply = self.call(Command { presence: Some(request), ..Default::default() }).await?;
        reply.presence.map(|p| p.presence).ok_or_else(|| Error::Decode("presence reply without a result".into()))
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        let request = PresenceStatsRequest { channel: channel.into() };
        let reply = self.call(Command { presence_stats: Some(request), ..Default::default() }).await?;
        reply.presence_stats.ok_or_else(|| Error::Decode("presence_stats reply without a result".into()))
    }

    /// An RPC with JSON data, answering the raw result data.
    pub async fn rpc_raw(&self, method: &str, data: Option<RawJson>) -> Result<Option<RawJson>, Error> {
        let request = RpcRequest { method: method.into(), data };
        let reply = self.call(Command { rpc: Some(request), ..Default::default() }).await?;
        reply.rpc.map(|r| r.data).ok_or_else(|| Error::Decode("rpc reply without a result".into()))
    }

    /// An RPC with typed data and result.
    pub async fn rpc<T: Serialize + ?Sized, R: DeserializeOwned>(&self, method: &str, data: &T) -> Result<R, Error> {
        let raw = serde_json::value::to_raw_value(data).map_err(|e| Error::Invalid(format!("rpc data: {e}")))?;
        let answer = self.rpc_raw(method, Some(RawJson::from(raw))).await?;
        let text = answer.as_ref().map_or("null", |raw| raw.get());
        serde_json::from_str(text).map_err(|e| Error::Decode(format!("rpc {method} result {text}: {e}")))
    }

    /// Acknowledges everything up to `offset` on `channel` (Herald's acknowledged delivery);
    /// answers how many deliveries that confirmed.
    pub async fn ack(&self, channel: &str, offset: u64) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Acknowledged {
            acknowledged: u64,
        }
        let answer: Acknowledged =
            self.rpc(ACK_METHOD, &serde_json::json!({ "channel": channel, "offset": offset })).await?;
        Ok(answer.acknowledged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_between_min_and_max() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(20));
        for attempt in 0..40 {
            for _ in 0..50 {
                let delay = backoff(attempt, min, max);
                let ceiling = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
                assert!(delay >= min && delay <= max, "attempt {attempt}: {delay:?}");
                assert!(delay <= min + ceiling, "attempt {attempt}: {delay:?} above {ceiling:?}");
            }
        }
        // Jitter: many draws for one attempt are not all equal.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(3, min, max)).collect();
        assert!(draws.len() > 1);
        // Late attempts reach the cap.
        assert!((0..200).any(|_| backoff(30, min, max) == max));
    }

    #[test]
    fn subscribe_data_carries_herald_options_next_to_application_data() {
        let mut app = serde_json::Map::new();
        app.insert("room".into(), "blue".into());
        let options = SubscribeOptions::new()
            .data(app)
            .filter(filter::path_eq("/new/project_id", "7"))
            .changes(ChangeMode::Patch)
            .resume(true);
        let data = options.request_data().unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(data.get()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"room": "blue", "herald": {
                "filters": [{"path": "/new/project_id", "cmp": "eq", "val": "7"}],
                "changes": "patch", "resume": true}})
        );
        assert!(SubscribeOptions::new().request_data().unwrap().is_none());
        let mut clash = serde_json::Map::new();
        clash.insert("herald".into(), serde_json::json!({}));
        assert!(SubscribeOptions::new().data(clash).resume(true).request_data().is_err());
    }
}
