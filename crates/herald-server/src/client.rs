//! One connection's protocol session: authentication, subscriptions and command handling.
//!
//! The session is owned by its connection task, so its state needs no locks; the rest of the
//! node reaches it through [`Control`] orders.

use crate::auth::{unix_now, TokenError};
use crate::channel_map::ChannelMap;
use crate::engine::{HistoryFilter, HistoryPage, StreamPosition};
use crate::hub::{go_live_together, Subscription};
use crate::metrics;
use crate::node::{NodeInner, Publish, RpcContext};
use crate::outbound::{ClientHandle, Control};
use crate::view::{View, Viewer};
use bytes::Bytes;
use herald_config::NamespaceOptions;
use herald_core::channel::ChannelName;
use herald_core::protocol::{
    ClientInfo, ConnectRequest, ConnectResult, HistoryRequest, HistoryResult, Method, PresenceResult,
    PresenceStatsResult, Publication, PublishRequest, RawJson, RefreshRequest, RefreshResult, RpcRequest, RpcResult,
    SubRefreshRequest, SubRefreshResult, SubscribeRequest, SubscribeResult,
};
use herald_core::wire::{PushBody, ResultBody, WireFormat};
use herald_core::{Disconnect, ProtocolError};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

struct ClientSubscription {
    view: Arc<View>,
    expires_at: Option<u64>,
    chan_info: Option<RawJson>,
    presence: bool,
    join_leave: bool,
}

/// A subscription registered in the hub whose reply is not yet queued.
struct PreparedSubscription {
    channel: String,
    subscription: Arc<Subscription>,
    history: Option<HistoryPage>,
    recovering: bool,
    recoverable: bool,
    positioned: bool,
    expires_at: Option<u64>,
    recovery_limit: usize,
}

impl PreparedSubscription {
    /// The subscribe result and the live publications that must follow it, given what arrived
    /// while the history was read. Publications up to the stream top read are either recovered
    /// or were before the subscription point; later ones are new, each exactly once.
    fn finish(&self, buffered: Vec<Arc<Publication>>) -> (SubscribeResult, Vec<Arc<Publication>>) {
        let subscription = &self.subscription;
        let visible = |p: &Arc<Publication>| subscription.viewer.visible(&subscription.view, p);
        let mut result = SubscribeResult { was_recovering: self.recovering, ..Default::default() };
        if let Some((expires, ttl)) = ttl_of(self.expires_at) {
            result.expires = expires;
            result.ttl = ttl;
        }
        let Some(page) = &self.history else {
            return (result, buffered.iter().filter_map(visible).collect());
        };
        let top = page.position.offset;
        subscription.set_floor(top);
        let newer: Vec<Arc<Publication>> = buffered.iter().filter(|p| p.offset > top).filter_map(visible).collect();
        result.epoch = page.position.epoch.clone();
        result.recoverable = self.recoverable;
        result.positioned = self.positioned;
        result.offset = top;
        if self.recovering {
            // Filtered-out and foreign-audience publications are skipped, not counted.
            let recovered: Vec<Arc<Publication>> = page.publications.iter().filter_map(visible).collect();
            if page.since_available && recovered.len() <= self.recovery_limit {
                result.recovered = true;
                result.publications = recovered;
                result.publications.extend(newer);
                result.offset = result.publications.last().map_or(top, |p| p.offset.max(top));
                return (result, Vec::new());
            }
            metrics::bad_input("unrecoverable_position");
        }
        (result, newer)
    }
}

/// Seconds until `expires_at` as (expires, ttl) for results; `None` when it never expires.
fn ttl_of(expires_at: Option<u64>) -> Option<(bool, u32)> {
    expires_at.map(|at| (true, at.saturating_sub(unix_now()).min(u64::from(u32::MAX)) as u32))
}

fn publication_frames<'a>(
    format: WireFormat,
    channel: &'a str,
    publications: &'a [Arc<Publication>],
) -> impl Iterator<Item = Bytes> + 'a {
    publications.iter().map(move |p| Bytes::from(format.push(channel, PushBody::Pub(p))))
}

/// Most client publishes of one connection waiting for the engine at once; the connection reads
/// no further commands until the oldest is answered.
const PUBLISHES_IN_FLIGHT: usize = 1024;

/// Most publications a burst of client publishes defers before they fan out.
const DEFERRED_PUBLISHES: usize = 64;

type PublishFuture = Pin<Box<dyn Future<Output = Result<(), ProtocolError>> + Send>>;

/// A client publish whose reply has not gone out: still waiting for the engine, or done behind
/// one that is.
struct InFlightPublish {
    id: u32,
    started: Instant,
    state: PublishState,
}

enum PublishState {
    /// In a mutex only so that the session stays `Sync` (its commands borrow it across awaits);
    /// it is reached through `get_mut`, never locked.
    Waiting(parking_lot::Mutex<PublishFuture>),
    Done(Result<(), ProtocolError>),
}

pub(crate) struct Session {
    node: Arc<NodeInner>,
    handle: Arc<ClientHandle>,
    authenticated: bool,
    user: String,
    conn_info: Option<RawJson>,
    roles: Arc<[String]>,
    expires_at: Option<u64>,
    subscriptions: ChannelMap<ClientSubscription>,
    /// Made when the client first publishes: most connections never do, and each byte here is
    /// held by every idle one.
    pipeline: Option<Box<Pipeline>>,
}

/// A connection's publishes on their way through the engine.
#[derive(Default)]
struct Pipeline {
    /// Publishes in flight, in the order the client sent them.
    publishes: VecDeque<InFlightPublish>,
    /// Channels whose fan-out this session's publishes put off (see [`Session::flush_deferred`]).
    deferred_flushes: Vec<String>,
    /// Publishes since the last flush of what was deferred.
    deferred_publishes: usize,
}

impl Pipeline {
    /// The oldest publish, if it is done: replies go out in the order the client sent.
    fn pop_done(&mut self) -> Option<(u32, Instant, Result<(), ProtocolError>)> {
        let done = self.publishes.pop_front_if(|publish| matches!(publish.state, PublishState::Done(_)))?;
        match done.state {
            PublishState::Done(result) => Some((done.id, done.started, result)),
            PublishState::Waiting(_) => None,
        }
    }
}

type CommandResult = Result<(), Disconnect>;

/// The built-in RPC method of acknowledged delivery.
const ACK_METHOD: &str = "herald.ack";

impl Session {
    pub fn new(node: Arc<NodeInner>, handle: Arc<ClientHandle>) -> Self {
        Self {
            node,
            handle,
            authenticated: false,
            user: String::new(),
            conn_info: None,
            roles: Arc::from(Vec::new()),
            expires_at: None,
            subscriptions: ChannelMap::default(),
            pipeline: None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    fn insecure(&self) -> bool {
        self.node.config.client.insecure
    }

    fn send(&self, id: u32, result: ResultBody<'_>) {
        self.handle.send(Bytes::from(self.handle.format.result(id, result)));
    }

    fn send_error(&self, id: u32, method: &'static str, error: &ProtocolError) {
        tracing::info!(client = %self.handle.id, user = %self.user, method, code = error.code, message = %error.message, "command refused");
        metrics::error("client", error.code);
        self.handle.send(Bytes::from(self.handle.format.error(id, error)));
    }

    /// Handles one WebSocket frame of commands in the connection's format: JSON lines, or
    /// length-prefixed Protobuf commands.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> CommandResult {
        let format = self.handle.format;
        for decoded in format.commands(frame) {
            let decoded = match decoded {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::info!(client = %self.handle.id, message = %error.message, "malformed command");
                    metrics::bad_input(match format {
                        WireFormat::Json => "malformed_json",
                        WireFormat::Protobuf => "malformed_protobuf",
                    });
                    return Err(Disconnect::BAD_REQUEST);
                }
            };
            let command = match decoded {
                Ok(command) => command,
                Err((id, error)) => {
                    // Well-formed, but a field is unusable (data that is not JSON): refused
                    // like any other bad request, in order with the replies before it.
                    metrics::bad_input("unusable_command_field");
                    self.settle_publishes().await;
                    if id == 0 {
                        tracing::info!(client = %self.handle.id, message = %error.message, "command without id refused");
                    } else {
                        self.send_error(id, "command", &error);
                    }
                    continue;
                }
            };
            let (id, method) = command.into_method();
            let name = method.name();
            let started = Instant::now();
            // A publish is timed when its reply goes out, which may be after later commands.
            let publish = matches!(method, Method::Publish(_));
            if !publish && !matches!(method, Method::Pong) {
                // Whatever a client sends after its publishes sees them done, as it would if
                // each had waited for its reply.
                self.settle_publishes().await;
            }
            self.handle_command(id, method, started).await?;
            if !publish {
                metrics::command(name, started.elapsed());
            }
        }
        Ok(())
    }

    /// Starts a client publish. With an engine that fixes the order when a publish starts
    /// ([`Broker::orders_on_first_poll`](crate::engine::Broker::orders_on_first_poll)), up to
    /// [`PUBLISHES_IN_FLIGHT`] wait for the engine at once, so one connection can publish at
    /// the engine's rate rather than one per commit round trip; replies still go out in order.
    async fn publish_command(&mut self, id: u32, request: PublishRequest, started: Instant) {
        let publish = match self.prepare_publish(request.channel, request.data) {
            Ok(publish) => publish,
            Err(error) => return self.in_order(InFlightPublish { id, started, state: PublishState::Done(Err(error)) }),
        };
        if !self.node.broker.orders_on_first_poll() {
            self.node.wait_for_delivery_capacity().await;
            let result = self.node.publish(publish, "client").await.map(|_| ());
            return self.reply_publish(id, started, result);
        }
        if self.node.publishers_must_wait() {
            // What the burst deferred goes out first; replies to what is done meanwhile still
            // go out while this publish waits for the queues to drain.
            self.flush_deferred();
            let node = self.node.clone();
            let capacity = node.wait_for_delivery_capacity();
            tokio::pin!(capacity);
            std::future::poll_fn(|cx| {
                let _ = self.poll_publishes(cx);
                capacity.as_mut().poll(cx)
            })
            .await;
        }
        if self.in_flight() >= PUBLISHES_IN_FLIGHT {
            std::future::poll_fn(|cx| {
                let _ = self.poll_publishes(cx);
                if self.in_flight() < PUBLISHES_IN_FLIGHT {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        // The fan-out waits for the end of the client's burst, so that what the burst queues in
        // the channel's lane goes to each subscriber together.
        let pipeline = self.pipeline.get_or_insert_with(Box::default);
        if !pipeline.deferred_flushes.contains(&publish.channel) {
            pipeline.deferred_flushes.push(publish.channel.clone());
        }
        let node = self.node.clone();
        let mut future: PublishFuture =
            Box::pin(async move { node.publish_with(publish, "client", true).await.map(|_| ()) });
        // This first poll fixes the publication's place in its channel's stream.
        let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        pipeline.deferred_publishes += 1;
        if pipeline.deferred_publishes >= DEFERRED_PUBLISHES {
            self.flush_deferred();
        }
        let state = match first {
            Poll::Ready(result) => PublishState::Done(result),
            Poll::Pending => PublishState::Waiting(parking_lot::Mutex::new(future)),
        };
        self.in_order(InFlightPublish { id, started, state });
    }

    fn in_flight(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |pipeline| pipeline.publishes.len())
    }

    /// Replies to a publish at once when nothing is ahead of it, otherwise after those ahead.
    fn in_order(&mut self, publish: InFlightPublish) {
        match publish.state {
            PublishState::Done(result) if self.in_flight() == 0 => {
                self.reply_publish(publish.id, publish.started, result)
            }
            _ => self.pipeline.get_or_insert_with(Box::default).publishes.push_back(publish),
        }
    }

    fn reply_publish(&self, id: u32, started: Instant, result: Result<(), ProtocolError>) {
        match result {
            Ok(()) => self.send(id, ResultBody::Publish),
            Err(error) => self.send_error(id, "publish", &error),
        }
        metrics::command("publish", started.elapsed());
    }

    /// Moves the publishes in flight on and replies to those done, oldest first. Ready once
    /// none is in flight.
    pub fn poll_publishes(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pipeline) = self.pipeline.as_deref_mut().filter(|p| !p.publishes.is_empty()) else {
            return Poll::Ready(());
        };
        for publish in pipeline.publishes.iter_mut() {
            if let PublishState::Waiting(future) = &mut publish.state {
                if let Poll::Ready(result) = future.get_mut().as_mut().poll(cx) {
                    publish.state = PublishState::Done(result);
                }
            }
        }
        while let Some((id, started, result)) = self.pipeline.as_deref_mut().and_then(Pipeline::pop_done) {
            self.reply_publish(id, started, result);
        }
        if self.in_flight() == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Fans out what this session's publishes queued and deferred. Called once the client's
    /// burst ends (nothing more to read), before any other command, and every
    /// [`DEFERRED_PUBLISHES`].
    pub fn flush_deferred(&mut self) {
        let Some(pipeline) = self.pipeline.as_deref_mut() else { return };
        pipeline.deferred_publishes = 0;
        for channel in pipeline.deferred_flushes.drain(..) {
            self.node.delivery.flush_publications(&channel);
        }
    }

    /// Fans out what is deferred and waits until every publish in flight is answered.
    pub async fn settle_publishes(&mut self) {
        self.flush_deferred();
        std::future::poll_fn(|cx| self.poll_publishes(cx)).await
    }

    async fn handle_command(&mut self, id: u32, method: Method, started: Instant) -> CommandResult {
        if !self.authenticated {
            return match method {
                Method::Connect(request) => self.connect(id, request).await,
                other => {
                    tracing::info!(client = %self.handle.id, method = other.name(), "command before connect");
                    metrics::bad_input("command_before_connect");
                    Err(Disconnect::BAD_REQUEST)
                }
            };
        }
        match method {
            Method::Connect(_) => {
                tracing::info!(client = %self.handle.id, "second connect on one connection");
                metrics::bad_input("second_connect");
                Err(Disconnect::BAD_REQUEST)
            }
            Method::Subscribe(request) => {
                self.subscribe_command(id, request).await;
                Ok(())
            }
            Method::Unsubscribe(request) => {
                self.unsubscribe(&request.channel, None).await;
                self.send(id, ResultBody::Unsubscribe);
                Ok(())
            }
            Method::Publish(request) => {
                self.publish_command(id, request, started).await;
                Ok(())
            }
            Method::Presence(request) => {
                match self.presence(&request.channel).await {
                    Ok(presence) => self.send(id, ResultBody::Presence(&PresenceResult { presence })),
                    Err(error) => self.send_error(id, "presence", &error),
                }
                Ok(())
            }
            Method::PresenceStats(request) => {
                match self.presence_stats(&request.channel).await {
                    Ok(result) => self.send(id, ResultBody::PresenceStats(&result)),
                    Err(error) => self.send_error(id, "presence_stats", &error),
                }
                Ok(())
            }
            Method::History(request) => {
                match self.history(request).await {
                    Ok(result) => self.send(id, ResultBody::History(&result)),
                    Err(error) => self.send_error(id, "history", &error),
                }
                Ok(())
            }
            Method::Ping => {
                self.send(id, ResultBody::Ping);
                Ok(())
            }
            Method::Pong => Ok(()),
            Method::Send(request) => {
                let handler = self.node.message_handler.read().clone();
                if let Some(handler) = handler {
                    handler(self.rpc_context(""), request.data);
                }
                Ok(())
            }
            Method::Rpc(request) if request.method == ACK_METHOD => {
                match self.ack(request).await {
                    Ok(result) => self.send(id, ResultBody::Rpc(&result)),
                    Err(error) => self.send_error(id, "rpc", &error),
                }
                Ok(())
            }
            Method::Rpc(request) => {
                self.rpc(id, request);
                Ok(())
            }
            Method::Refresh(request) => self.refresh(id, request),
            Method::SubRefresh(request) => {
                match self.sub_refresh(request) {
                    Ok(result) => self.send(id, ResultBody::SubRefresh(&result)),
                    Err(error) => self.send_error(id, "sub_refresh", &error),
                }
                Ok(())
            }
            Method::Unknown => {
                metrics::bad_input("unknown_method");
                self.send_error(id, "unknown", &ProtocolError::method_not_found());
                Ok(())
            }
        }
    }

    fn client_info(&self, chan_info: Option<RawJson>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.handle.id.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    fn rpc_context(&self, method: &str) -> RpcContext {
        RpcContext { client_id: self.handle.id.to_string(), user: self.user.clone(), method: method.to_owned() }
    }

    // -----------------------------------------------------------------------------------------
    // connect, refresh

    async fn connect(&mut self, id: u32, request: ConnectRequest) -> CommandResult {
        let config = &self.node.config.client;
        let mut server_channels: Vec<String> = Vec::new();
        if !request.token.is_empty() {
            match self.node.tokens.verify_connect(&request.token) {
                Ok(claims) => {
                    self.user = claims.sub.clone();
                    self.conn_info = claims.info.clone();
                    self.roles = Arc::from(claims.roles.clone());
                    self.expires_at = claims.expires_at();
                    server_channels.extend(claims.channels.iter().cloned());
                    let mut from_subs: Vec<String> = claims.subs.keys().cloned().collect();
                    from_subs.sort();
                    server_channels.extend(from_subs);
                    if self.user.is_empty() && config.disallow_anonymous_connection_tokens {
                        self.send_error(id, "connect", &ProtocolError::unauthorized());
                        return Err(Disconnect::custom(3500, "anonymous tokens are not allowed"));
                    }
                }
                Err(TokenError::Expired) => {
                    // The SDK asks its application for a fresh token and reconnects.
                    self.send_error(id, "connect", &ProtocolError::token_expired());
                    return Ok(());
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::info!(client = %self.handle.id, %reason, "invalid connection token");
                    metrics::bad_input("invalid_token");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        } else if !(config.insecure || config.allow_anonymous_connect_without_token) {
            self.send_error(id, "connect", &ProtocolError::unauthorized().with_message("connection token required"));
            return Err(Disconnect::custom(3500, "unauthorized"));
        }
        if config.connection_limit > 0 && self.node.hub.num_clients() >= config.connection_limit {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if config.user_connection_limit > 0
            && !self.user.is_empty()
            && self.node.hub.user_connection_count(&self.user) >= config.user_connection_limit
        {
            self.send_error(id, "connect", &ProtocolError::limit_exceeded());
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if server_channels.len() > config.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT);
        }

        self.authenticated = true;
        self.handle.set_user(self.user.clone());
        self.node.hub.add_client(self.handle.clone());

        let mut result = ConnectResult {
            client: self.handle.id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ping: config.ping_interval.as_secs().max(1) as u32,
            pong: !config.pong_timeout.is_zero(),
            session: self.handle.id.to_string(),
            node: self.node.id.clone(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ..Default::default()
        };
        if let Some((expires, ttl)) = ttl_of(self.expires_at) {
            result.expires = expires;
            result.ttl = ttl;
        }

        // Server-side subscriptions: the client's positions (from `subs`) drive their recovery.
        let mut prepared = Vec::new();
        for channel in server_channels {
            if self.subscriptions.contains_key(&channel)
                || prepared.iter().any(|p: &PreparedSubscription| p.channel == channel)
            {
                continue;
            }
            let mut sub_request = request.subs.get(&channel).cloned().unwrap_or_default();
            sub_request.channel = channel.clone();
            match self.prepare_subscription(&sub_request, true).await {
                Ok(p) => prepared.push(p),
                Err(error) => {
                    tracing::warn!(client = %self.handle.id, %channel, %error, "server-side subscription from token failed")
                }
            }
        }
        let subscriptions: Vec<&Subscription> = prepared.iter().map(|p| p.subscription.as_ref()).collect();
        if subscriptions.is_empty() {
            self.send(id, ResultBody::Connect(&result));
        } else {
            let mut result = Some(result);
            let format = self.handle.format;
            go_live_together(&subscriptions, |buffers| {
                let mut result = result.take().unwrap_or_default();
                let mut after = Vec::new();
                for (p, buffered) in prepared.iter().zip(buffers) {
                    let (sub_result, newer) = p.finish(buffered);
                    result.subs.insert(p.channel.clone(), sub_result);
                    after.extend(publication_frames(format, &p.channel, &newer).collect::<Vec<_>>());
                }
                let mut frames = vec![Bytes::from(format.result(id, ResultBody::Connect(&result)))];
                frames.extend(after);
                frames
            });
        }
        for p in prepared {
            self.complete_subscription(p).await;
        }
        tracing::debug!(client = %self.handle.id, user = %self.user, "connected");
        Ok(())
    }

    fn refresh(&mut self, id: u32, request: RefreshRequest) -> CommandResult {
        if request.token.is_empty() {
            self.send_error(id, "refresh", &ProtocolError::bad_request().with_message("token required"));
            return Ok(());
        }
        match self.node.tokens.verify_connect(&request.token) {
            Ok(claims) if claims.sub == self.user => {
                self.expires_at = claims.expires_at();
                if claims.info.is_some() {
                    self.conn_info = claims.info;
                }
                let (expires, ttl) = ttl_of(self.expires_at).unwrap_or((false, 0));
                self.send(
                    id,
                    ResultBody::Refresh(&RefreshResult {
                        client: self.handle.id.to_string(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        expires,
                        ttl,
                    }),
                );
                Ok(())
            }
            Ok(_) => {
                tracing::info!(client = %self.handle.id, "refresh token names another user");
                Err(Disconnect::INVALID_TOKEN)
            }
            Err(TokenError::Expired) => Err(Disconnect::EXPIRED),
            Err(TokenError::Invalid(reason)) => {
                tracing::info!(client = %self.handle.id, %reason, "invalid refresh token");
                metrics::bad_input("invalid_token");
                Err(Disconnect::INVALID_TOKEN)
            }
        }
    }

    /// When the session must next check for expiry, if anything expires.
    pub fn next_expiry_check(&self) -> Option<Instant> {
        let client = &self.node.config.client;
        let conn = self.expires_at.map(|at| (at, client.expired_close_delay));
        let subs =
            self.subscriptions.values().filter_map(|s| s.expires_at.map(|at| (at, client.expired_sub_close_delay)));
        conn.into_iter()
            .chain(subs)
            .map(|(at, delay)| {
                let wait = Duration::from_secs(at.saturating_sub(unix_now())) + delay;
                Instant::now() + wait
            })
            .min()
    }

    /// Disconnects an expired connection or subscription that was not refreshed in time.
    pub fn check_expiry(&self) -> CommandResult {
        let now = unix_now();
        let client = &self.node.config.client;
        if let Some(at) = self.expires_at {
            if at + client.expired_close_delay.as_secs() <= now {
                return Err(Disconnect::EXPIRED);
            }
        }
        for s in self.subscriptions.values() {
            if let Some(at) = s.expires_at {
                if at + client.expired_sub_close_delay.as_secs() <= now {
                    return Err(Disconnect::SUBSCRIPTION_EXPIRED);
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // subscribe, unsubscribe

    async fn subscribe_command(&mut self, id: u32, request: SubscribeRequest) {
        match self.prepare_subscription(&request, false).await {
            Ok(prepared) => {
                let format = self.handle.format;
                prepared.subscription.clone().go_live(|buffered| {
                    let (result, newer) = prepared.finish(buffered);
                    let mut frames = vec![Bytes::from(format.result(id, ResultBody::Subscribe(&result)))];
                    frames.extend(publication_frames(format, &prepared.channel, &newer));
                    frames
                });
                self.complete_subscription(prepared).await;
            }
            Err(error) => self.send_error(id, "subscribe", &error),
        }
    }

    /// A subscription ordered by the server API: announced with a `subscribe` push.
    async fn server_subscribe(&mut self, request: SubscribeRequest) {
        if self.subscriptions.contains_key(&request.channel) {
            return;
        }
        match self.prepare_subscription(&request, true).await {
            Ok(prepared) => {
                let format = self.handle.format;
                prepared.subscription.clone().go_live(|buffered| {
                    let (result, newer) = prepared.finish(buffered);
                    let mut frames = vec![Bytes::from(format.push(&prepared.channel, PushBody::Subscribe(&result)))];
                    frames.extend(publication_frames(format, &prepared.channel, &newer));
                    frames
                });
                self.complete_subscription(prepared).await;
            }
            Err(error) => {
                tracing::warn!(client = %self.handle.id, channel = %request.channel, %error, "server subscribe failed")
            }
        }
    }

    fn check_subscribe_permission(
        &self,
        request: &SubscribeRequest,
        options: &NamespaceOptions,
    ) -> Result<(Option<u64>, Option<RawJson>), ProtocolError> {
        let name = ChannelName::parse(&request.channel);
        let anonymous = self.user.is_empty();
        if !request.token.is_empty() {
            let claims = self.node.tokens.verify_subscribe(&request.token).map_err(|e| match e {
                TokenError::Expired => ProtocolError::token_expired(),
                TokenError::Invalid(reason) => {
                    tracing::info!(client = %self.handle.id, %reason, "invalid subscription token");
                    metrics::bad_input("invalid_token");
                    ProtocolError::permission_denied().with_message("invalid subscription token")
                }
            })?;
            if claims.sub != self.user || claims.channel != request.channel {
                return Err(ProtocolError::permission_denied()
                    .with_message("subscription token is for another user or channel"));
            }
            return Ok((claims.expires_at(), claims.info));
        }
        if options.allow_user_limited_channels && name.allowed_users.is_some() {
            return if name.user_allowed(&self.user) {
                Ok((None, None))
            } else {
                Err(ProtocolError::permission_denied())
            };
        }
        if self.insecure() {
            return Ok((None, None));
        }
        if name.private {
            return Err(ProtocolError::permission_denied().with_message("subscription token required"));
        }
        let allowed =
            if anonymous { options.allow_subscribe_for_anonymous } else { options.allow_subscribe_for_client };
        if allowed {
            Ok((None, None))
        } else {
            Err(ProtocolError::permission_denied())
        }
    }

    async fn prepare_subscription(
        &mut self,
        request: &SubscribeRequest,
        server_side: bool,
    ) -> Result<PreparedSubscription, ProtocolError> {
        let node = self.node.clone();
        let options = node.channel_options(&request.channel)?;
        let (expires_at, chan_info) =
            if server_side { (None, None) } else { self.check_subscribe_permission(request, options)? };
        if let Some(at) = expires_at {
            if at <= unix_now() {
                return Err(ProtocolError::token_expired());
            }
        }
        if self.subscriptions.contains_key(&request.channel) {
            return Err(ProtocolError::already_subscribed());
        }
        if self.subscriptions.len() >= node.config.client.channel_limit {
            return Err(ProtocolError::limit_exceeded().with_message("channel limit reached"));
        }
        let view = View::from_request(request.tf.as_ref(), request.data.as_ref())
            .map_err(|reason| ProtocolError::bad_request().with_message(reason))?;
        if request.tf.is_some() && !options.allow_tags_filter && !self.insecure() {
            return Err(ProtocolError::bad_request().with_message("tag filters (tf) are not allowed in this namespace"));
        }
        // `herald.resume`: recover from the user's durable cursor when the client has no position.
        let mut since =
            request.recover.then(|| StreamPosition { offset: request.offset, epoch: request.epoch.clone() });
        if view.resume && since.is_none() && !self.user.is_empty() {
            since = node.broker.cursor(&self.user, &request.channel).await.map_err(|_| ProtocolError::internal())?;
        }
        let history_on = options.history_size > 0;
        let recoverable = history_on
            && (options.force_recovery || (options.allow_recovery && (request.recoverable || since.is_some())));
        let recovering = recoverable && since.is_some();
        let positioned = history_on && (options.force_positioning || (options.allow_positioning && request.positioned));
        let join_leave = options.join_leave && (request.join_leave || options.force_push_join_leave);

        let viewer = Viewer { user: self.user.clone(), roles: self.roles.clone() };
        let subscription = Subscription::new(self.handle.clone(), join_leave, view, viewer);
        if node.hub.add_subscription(&request.channel, subscription.clone()) {
            if let Err(error) = node.broker.subscribe(&request.channel).await {
                node.hub.remove_subscription(&request.channel, &self.handle.id);
                tracing::error!(channel = %request.channel, %error, "broker subscribe failed");
                return Err(ProtocolError::internal());
            }
        }
        let recovery_limit = node.config.client.recovery_max_publication_limit;
        let history = if history_on {
            let filter = if recovering {
                HistoryFilter {
                    since: since.clone(),
                    // Everything retained: filters decide what counts against the limit.
                    limit: None,
                    reverse: false,
                }
            } else {
                HistoryFilter { since: None, limit: Some(0), reverse: false }
            };
            match node.broker.history(&request.channel, &filter).await {
                Ok(page) => Some(page),
                Err(error) => {
                    self.drop_hub_subscription(&request.channel).await;
                    tracing::error!(channel = %request.channel, %error, "history read for subscribe failed");
                    return Err(ProtocolError::internal());
                }
            }
        } else {
            None
        };
        self.subscriptions.insert(
            request.channel.clone(),
            ClientSubscription {
                view: subscription.view.clone(),
                expires_at,
                chan_info,
                presence: options.presence,
                join_leave: options.join_leave,
            },
        );
        metrics::subscription_added();
        Ok(PreparedSubscription {
            channel: request.channel.clone(),
            subscription,
            history,
            recovering,
            recoverable,
            positioned,
            expires_at,
            recovery_limit,
        })
    }

    /// After the reply is queued: presence and join announcements.
    async fn complete_subscription(&mut self, prepared: PreparedSubscription) {
        let Some(sub) = self.subscriptions.get(&prepared.channel) else { return };
        let info = self.client_info(sub.chan_info.clone());
        if sub.presence {
            if let Err(error) = self.node.presence.add_presence(&prepared.channel, &self.handle.id, &info).await {
                tracing::error!(channel = %prepared.channel, %error, "presence add failed");
            }
        }
        if sub.join_leave {
            if let Err(error) = self.node.broker.publish_join(&prepared.channel, &info).await {
                tracing::error!(channel = %prepared.channel, %error, "join publish failed");
            }
        }
    }

    async fn drop_hub_subscription(&self, channel: &str) {
        if self.node.hub.remove_subscription(channel, &self.handle.id) {
            if let Err(error) = self.node.broker.unsubscribe(channel).await {
                tracing::warn!(%channel, %error, "broker unsubscribe failed");
            }
        }
    }

    /// Removes a subscription; with `push`, tells the client why with an unsubscribe push.
    async fn unsubscribe(&mut self, channel: &str, push: Option<(u32, &str)>) {
        let Some(sub) = self.subscriptions.remove(channel) else { return };
        metrics::subscription_removed();
        self.drop_hub_subscription(channel).await;
        if let Some((code, reason)) = push {
            let body = PushBody::Unsubscribe { code, reason };
            self.handle.send(Bytes::from(self.handle.format.push(channel, body)));
        }
        let info = self.client_info(sub.chan_info.clone());
        if sub.presence {
            if let Err(error) = self.node.presence.remove_presence(channel, &self.handle.id).await {
                tracing::error!(%channel, %error, "presence remove failed");
            }
        }
        if sub.join_leave {
            if let Err(error) = self.node.broker.publish_leave(channel, &info).await {
                tracing::error!(%channel, %error, "leave publish failed");
            }
        }
    }

    fn sub_refresh(&mut self, request: SubRefreshRequest) -> Result<SubRefreshResult, ProtocolError> {
        if !self.subscriptions.contains_key(&request.channel) {
            return Err(ProtocolError::permission_denied().with_message("not subscribed"));
        }
        let claims = self.node.tokens.verify_subscribe(&request.token).map_err(|e| match e {
            TokenError::Expired => ProtocolError::token_expired(),
            TokenError::Invalid(_) => ProtocolError::permission_denied().with_message("invalid subscription token"),
        })?;
        if claims.sub != self.user || claims.channel != request.channel {
            return Err(
                ProtocolError::permission_denied().with_message("subscription token is for another user or channel")
            );
        }
        let expires_at = claims.expires_at();
        if let Some(sub) = self.subscriptions.get_mut(&request.channel) {
            sub.expires_at = expires_at;
        }
        let (expires, ttl) = ttl_of(expires_at).unwrap_or((false, 0));
        Ok(SubRefreshResult { expires, ttl })
    }

    // -----------------------------------------------------------------------------------------
    // publish, presence, history, rpc

    /// Namespace permission for client-side publish/presence/history: for any client, for
    /// subscribers, and whether anonymous users count.
    fn allowed(&self, channel: &str, for_client: bool, for_subscriber: bool, for_anonymous: bool) -> bool {
        if self.insecure() {
            return true;
        }
        if self.user.is_empty() && !for_anonymous {
            return false;
        }
        for_client || (for_subscriber && self.subscriptions.contains_key(channel))
    }

    fn prepare_publish(&self, channel: String, data: Option<RawJson>) -> Result<Publish, ProtocolError> {
        let options = self.node.channel_options(&channel)?;
        let data = data.ok_or_else(|| ProtocolError::bad_request().with_message("publish needs data"))?;
        if !self.allowed(
            &channel,
            options.allow_publish_for_client,
            options.allow_publish_for_subscriber,
            options.allow_publish_for_anonymous,
        ) {
            return Err(ProtocolError::permission_denied());
        }
        let chan_info = self.subscriptions.get(&channel).and_then(|s| s.chan_info.clone());
        let mut publish = Publish::new(channel, data);
        publish.info = Some(self.client_info(chan_info));
        Ok(publish)
    }

    fn check_presence_access(&self, channel: &str) -> Result<(), ProtocolError> {
        let options = self.node.channel_options(channel)?;
        if !options.presence {
            return Err(ProtocolError::not_available());
        }
        if !self.allowed(
            channel,
            options.allow_presence_for_client,
            options.allow_presence_for_subscriber,
            options.allow_presence_for_anonymous,
        ) {
            return Err(ProtocolError::permission_denied());
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, ProtocolError> {
        self.check_presence_access(channel)?;
        self.node.presence.presence(channel).await.map_err(|_| ProtocolError::internal())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, ProtocolError> {
        self.check_presence_access(channel)?;
        let stats = self.node.presence.presence_stats(channel).await.map_err(|_| ProtocolError::internal())?;
        Ok(PresenceStatsResult { num_clients: stats.num_clients, num_users: stats.num_users })
    }

    async fn history(&self, request: HistoryRequest) -> Result<HistoryResult, ProtocolError> {
        let options = self.node.channel_options(&request.channel)?;
        if options.history_size == 0 {
            return Err(ProtocolError::not_available());
        }
        if !self.allowed(
            &request.channel,
            options.allow_history_for_client,
            options.allow_history_for_subscriber,
            options.allow_history_for_anonymous,
        ) {
            return Err(ProtocolError::permission_denied());
        }
        let filter = history_filter(
            request.limit,
            request.since,
            request.reverse,
            self.node.config.client.history_max_publication_limit,
        );
        let page = self.node.broker.history(&request.channel, &filter).await.map_err(|_| ProtocolError::internal())?;
        if !page.since_available {
            return Err(ProtocolError::unrecoverable_position());
        }
        // History shows what this connection's subscription would have shown live.
        let everything = View::everything();
        let view = self.subscriptions.get(&request.channel).map_or(&everything, |s| &s.view);
        let viewer = Viewer { user: self.user.clone(), roles: self.roles.clone() };
        let publications = page.publications.iter().filter_map(|p| viewer.visible(view, p)).collect();
        Ok(HistoryResult { publications, epoch: page.position.epoch, offset: page.position.offset })
    }

    /// `herald.ack {"channel", "offset"}`: confirms everything up to the offset on the channel
    /// for this connection and its user, and moves the user's durable cursor there.
    async fn ack(&self, request: RpcRequest) -> Result<RpcResult, ProtocolError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ack {
            channel: String,
            offset: u64,
        }
        let data = request.data.ok_or_else(|| ProtocolError::bad_request().with_message("herald.ack needs data"))?;
        let ack: Ack = serde_json::from_str(data.get())
            .map_err(|e| ProtocolError::bad_request().with_message(format!("herald.ack: {e}")))?;
        self.node.channel_options(&ack.channel)?;
        let confirmed = self.node.acks.ack(&ack.channel, ack.offset, &self.user, &self.handle.id);
        if !self.user.is_empty() {
            let top = self
                .node
                .broker
                .history(&ack.channel, &HistoryFilter { limit: Some(0), ..Default::default() })
                .await
                .map_err(|_| ProtocolError::internal())?;
            let offset = ack.offset.min(top.position.offset);
            let cursor = StreamPosition { offset, epoch: top.position.epoch };
            self.node
                .broker
                .save_cursor(&self.user, &ack.channel, &cursor)
                .await
                .map_err(|_| ProtocolError::internal())?;
        }
        let data = serde_json::value::to_raw_value(&serde_json::json!({ "acknowledged": confirmed }))
            .map_err(|_| ProtocolError::internal())?;
        Ok(RpcResult { data: Some(Arc::from(data)) })
    }

    fn rpc(&self, id: u32, request: RpcRequest) {
        let handler = self.node.rpc_handlers.read().get(&request.method).cloned();
        let Some(handler) = handler else {
            self.send_error(
                id,
                "rpc",
                &ProtocolError::not_available().with_message(format!("no rpc method {:?}", request.method)),
            );
            return;
        };
        let context = self.rpc_context(&request.method);
        let handle = self.handle.clone();
        // RPCs may be slow; they must not hold up the connection's other commands.
        tokio::spawn(async move {
            let frame = match handler(context, request.data).await {
                Ok(data) => handle.format.result(id, ResultBody::Rpc(&RpcResult { data })),
                Err(error) => {
                    metrics::error("client", error.code);
                    handle.format.error(id, &error)
                }
            };
            handle.send(Bytes::from(frame));
        });
    }

    // -----------------------------------------------------------------------------------------
    // orders from the node, and the end

    pub async fn handle_control(&mut self, order: Control) -> CommandResult {
        match order {
            Control::Disconnect(disconnect) => Err(disconnect),
            Control::Subscribe(request) => {
                if self.authenticated {
                    self.server_subscribe(*request).await;
                }
                Ok(())
            }
            Control::Unsubscribe { channel, code, reason } => {
                self.unsubscribe(&channel, Some((code, &reason))).await;
                Ok(())
            }
        }
    }

    /// Releases everything the connection held in the node.
    pub async fn close(&mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel, None).await;
        }
        if self.authenticated {
            self.node.hub.remove_client(&self.handle);
        }
    }
}

/// History request limits: 0 reads the top only, negative or absent-with-since reads up to the
/// configured maximum, larger values are capped at it.
pub(crate) fn history_filter(
    limit: i64,
    since: Option<herald_core::protocol::Since>,
    reverse: bool,
    max: usize,
) -> HistoryFilter {
    let limit = if limit < 0 { max } else { (limit as usize).min(max) };
    HistoryFilter {
        since: since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
        limit: Some(limit),
        reverse,
    }
}
