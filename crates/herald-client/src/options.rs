//! How to connect and how to subscribe.

use crate::error::TokenError;
use futures_util::future::BoxFuture;
use herald_core::protocol::{FilterNode, RawJson, Since};
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Gives a fresh connection token (called before connecting when there is none or it expired, and
/// before it expires while connected).
pub type TokenFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, TokenError>> + Send + Sync>;

/// Gives a fresh subscription token for a channel.
pub type SubTokenFn = Arc<dyn Fn(String) -> BoxFuture<'static, Result<String, TokenError>> + Send + Sync>;

/// Client settings; build them with [`crate::Client::builder`].
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://host:port/connection/websocket`.
    pub url: String,
    pub token: Option<String>,
    pub token_fn: Option<TokenFn>,
    /// Connect `data`, given to the server's connect handling.
    pub data: Option<RawJson>,
    /// Client name and version, as the connect command reports them.
    pub name: String,
    pub version: String,
    /// Reconnect delays: attempt `n` waits `min + random(0..=min(max, min * 2^n))`, at most `max`.
    pub min_reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// Bound on the WebSocket handshake plus the connect reply, on each call's reply, and on a
    /// token callback.
    pub timeout: Duration,
    /// How late a server ping may be (after the interval announced in the connect reply) before
    /// the connection counts as dead and is replaced.
    pub max_server_ping_delay: Duration,
    /// Events buffered per subscription for the application. When it falls this far behind, the
    /// subscription is paused (unsubscribed) and resubscribed, recovering from the last
    /// publication delivered, once half the buffer is free: memory stays bounded and nothing is
    /// lost while history lasts.
    pub event_buffer: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_fn", &self.token_fn.is_some())
            .field("name", &self.name)
            .field("min_reconnect_delay", &self.min_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            token_fn: None,
            data: None,
            name: "herald-client-rs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // The defaults of centrifuge-js.
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
            max_server_ping_delay: Duration::from_secs(10),
            event_buffer: 10_000,
        }
    }
}

/// Turns an async closure into a [`TokenFn`].
pub(crate) fn token_fn<F, Fut>(f: F) -> TokenFn
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// How change events (`publish_change`) arrive: the full envelope with `new`, or only the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeMode {
    Full,
    Patch,
}

/// What to ask for when subscribing.
#[derive(Clone)]
pub struct SubscribeOptions {
    pub(crate) token: Option<String>,
    pub(crate) token_fn: Option<SubTokenFn>,
    pub(crate) tag_filter: Option<FilterNode>,
    pub(crate) filters: Vec<FilterNode>,
    pub(crate) changes: Option<ChangeMode>,
    pub(crate) resume: bool,
    pub(crate) data: Option<Map<String, Value>>,
    pub(crate) since: Option<Since>,
    pub(crate) recoverable: bool,
    pub(crate) join_leave: bool,
    pub(crate) auto_ack: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            token: None,
            token_fn: None,
            tag_filter: None,
            filters: Vec::new(),
            changes: None,
            resume: false,
            data: None,
            since: None,
            recoverable: true,
            join_leave: false,
            auto_ack: false,
        }
    }
}

impl SubscribeOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// A subscription token (private `$` channels).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Fetches subscription tokens when subscribing and before they expire.
    pub fn token_fn<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token_fn = Some(Arc::new(move |channel| Box::pin(f(channel))));
        self
    }

    /// Centrifugo's tag filter (`tf`): publications whose tags do not match are not sent. The
    /// namespace needs `allow_tags_filter`.
    pub fn tag_filter(mut self, node: FilterNode) -> Self {
        self.tag_filter = Some(node);
        self
    }

    /// Adds one of Herald's filters; a publication is sent when any of them matches (and the tag
    /// filter, if any). Comparisons may use `path` into the publication data.
    pub fn filter(mut self, node: FilterNode) -> Self {
        self.filters.push(node);
        self
    }

    /// Full change events (default) or only their patch.
    pub fn changes(mut self, mode: ChangeMode) -> Self {
        self.changes = Some(mode);
        self
    }

    /// Recover from the user's durable cursor (what it last acknowledged) when there is no
    /// position of our own.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// The application's own subscribe `data` (an object; Herald's options go under `herald`).
    pub fn data(mut self, data: Map<String, Value>) -> Self {
        self.data = Some(data);
        self
    }

    /// Recover publications after this position on the first subscribe.
    pub fn since(mut self, offset: u64, epoch: impl Into<String>) -> Self {
        self.since = Some(Since { offset, epoch: epoch.into() });
        self
    }

    /// Ask for a recoverable subscription (default true): after a reconnect the client asks for
    /// everything after the last offset it saw.
    pub fn recoverable(mut self, recoverable: bool) -> Self {
        self.recoverable = recoverable;
        self
    }

    /// Receive join and leave events.
    pub fn join_leave(mut self, join_leave: bool) -> Self {
        self.join_leave = join_leave;
        self
    }

    /// Acknowledge (`herald.ack`) each publication as the application takes it from the stream.
    pub fn auto_ack(mut self, auto_ack: bool) -> Self {
        self.auto_ack = auto_ack;
        self
    }

    /// The subscribe request's `data`: the application's object plus Herald's options.
    pub(crate) fn request_data(&self) -> Result<Option<RawJson>, String> {
        let mut herald = Map::new();
        if !self.filters.is_empty() {
            let filters = serde_json::to_value(&self.filters).map_err(|e| format!("filters: {e}"))?;
            herald.insert("filters".into(), filters);
        }
        match self.changes {
            Some(ChangeMode::Patch) => {
                herald.insert("changes".into(), "patch".into());
            }
            Some(ChangeMode::Full) => {
                herald.insert("changes".into(), "full".into());
            }
            None => {}
        }
        if self.resume {
            herald.insert("resume".into(), true.into());
        }
        let mut data = self.data.clone().unwrap_or_default();
        if !herald.is_empty() {
            if data.contains_key("herald") {
                return Err(
                    "subscribe data has its own \"herald\" key; use the options for filters, changes and resume".into(),
                );
            }
            data.insert("herald".into(), Value::Object(herald));
        }
        if data.is_empty() && self.data.is_none() {
            return Ok(None);
        }
        let raw = serde_json::value::to_raw_value(&data).map_err(|e| format!("subscribe data: {e}"))?;
        Ok(Some(RawJson::from(raw)))
    }
}
