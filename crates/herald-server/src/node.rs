//! The node: configuration, hub, engine and the operations both the client protocol, the server
//! API and embedding code use (publish, history, presence, subscribe/unsubscribe/disconnect).

use crate::acks::AckTracker;
use crate::auth::TokenVerifier;
use crate::congestion::Congestion;
use crate::delivery::HubDelivery;
use crate::engine::memory::{MemoryBroker, MemoryPresence};
use crate::engine::{
    Broker, EngineError, EngineState, HistoryFilter, HistoryPage, NodeRegistry, NodeSnapshot, PresenceManager,
    PresenceStats, PublishOptions, StreamPosition,
};
use crate::hub::Hub;
use crate::metrics;
use crate::outbound::Control;
use crate::stats::{Counters, GroupCounters, Stats};
use futures_util::future::BoxFuture;
use herald_config::{Config, NamespaceOptions};
use herald_core::api::{NodeInfo, PublishResult};
use herald_core::change::ChangeRequest;
use herald_core::channel::{self, ChannelName};
use herald_core::protocol::{
    AckPolicy, Audience, ClientInfo, Priority, Publication, PublicationMeta, RawJson, SubscribeRequest,
};
use herald_core::{Disconnect, ProtocolError};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use regex::Regex;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Who is calling an RPC handler.
#[derive(Debug, Clone)]
pub struct RpcContext {
    pub client_id: String,
    pub user: String,
    pub method: String,
}

pub type RpcHandler = Arc<
    dyn Fn(RpcContext, Option<RawJson>) -> BoxFuture<'static, Result<Option<RawJson>, ProtocolError>> + Send + Sync,
>;

/// Receives `send` messages from clients (fire and forget).
pub type MessageHandler = Arc<dyn Fn(RpcContext, Option<RawJson>) + Send + Sync>;

/// A publication to make, with everything optional beyond channel and data.
#[derive(Debug, Clone)]
pub struct Publish {
    pub channel: String,
    pub data: RawJson,
    pub tags: BTreeMap<String, String>,
    pub info: Option<ClientInfo>,
    pub skip_history: bool,
    pub idempotency_key: Option<String>,
    /// Only these users/roles (and admins) receive it; `None` is everyone.
    pub audience: Option<Audience>,
    /// The compact form of a change event, for subscribers in patch mode.
    pub patch_data: Option<RawJson>,
    /// Live recipients must acknowledge it (also forced by the namespace's `require_ack`).
    pub requires_ack: bool,
    /// How urgently slow subscribers must get it; `None` takes the namespace's default.
    pub priority: Option<Priority>,
}

impl Publish {
    pub fn new(channel: impl Into<String>, data: RawJson) -> Self {
        Self {
            channel: channel.into(),
            data,
            tags: BTreeMap::new(),
            info: None,
            skip_history: false,
            idempotency_key: None,
            audience: None,
            patch_data: None,
            requires_ack: false,
            priority: None,
        }
    }

    /// A change event: the full envelope as data, the patch-only envelope for patch mode, and
    /// the automatic tags. Fails, publishing nothing, when the change is incomplete.
    pub fn change(request: ChangeRequest) -> Result<Self, ProtocolError> {
        let prepared = request.prepare().map_err(|reason| ProtocolError::bad_request().with_message(reason))?;
        let mut publish = Self::new(request.channel, prepared.full);
        publish.tags = prepared.tags;
        publish.patch_data = Some(prepared.patch_only);
        publish.audience = request.audience;
        publish.idempotency_key = request.idempotency_key;
        publish.priority = request.priority;
        Ok(publish)
    }

    /// Serializes any value as the payload.
    pub fn json(channel: impl Into<String>, data: &impl Serialize) -> Result<Self, ProtocolError> {
        let text = serde_json::to_string(data).map_err(|e| ProtocolError::bad_request().with_message(e.to_string()))?;
        let raw = RawValue::from_string(text).map_err(|e| ProtocolError::bad_request().with_message(e.to_string()))?;
        Ok(Self::new(channel, Arc::from(raw)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
}

pub(crate) struct NodeInner {
    pub id: String,
    pub name: String,
    pub config: Config,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    /// The handler registered with the broker: sessions flush the lanes they deferred here.
    pub delivery: Arc<HubDelivery>,
    pub presence: Arc<dyn PresenceManager>,
    /// The other nodes of a cluster; `None` for a node alone.
    pub registry: Option<Arc<dyn NodeRegistry>>,
    pub tokens: TokenVerifier,
    pub rpc_handlers: RwLock<HashMap<String, RpcHandler>>,
    pub message_handler: RwLock<Option<MessageHandler>>,
    pub started: Instant,
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
    /// How many connections' queues are backed up: publishes wait while many are.
    pub congestion: Arc<Congestion>,
    pub prometheus: Option<PrometheusHandle>,
    pub stats: Arc<Stats>,
    pub acks: Arc<AckTracker>,
    channel_regexes: HashMap<String, Regex>,
}

/// A Herald node. Cheap to clone; all clones are the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub struct NodeBuilder {
    config: Config,
    broker: Option<Arc<dyn Broker>>,
    presence: Option<Arc<dyn PresenceManager>>,
    registry: Option<Arc<dyn NodeRegistry>>,
    name: Option<String>,
}

impl NodeBuilder {
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    pub fn presence(mut self, presence: Arc<dyn PresenceManager>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Makes the node one of a cluster: it sends heartbeats, and `info`/`channels` cover all nodes.
    pub fn registry(mut self, registry: Arc<dyn NodeRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn build(self) -> Result<Node, NodeError> {
        let config = self.config;
        let token = &config.client.token;
        let tokens = TokenVerifier::new(
            &token.hmac_secret_key,
            &token.rsa_public_key,
            &token.ecdsa_public_key,
            &token.audience,
            &token.issuer,
        )
        .map_err(NodeError::Config)?;
        let mut channel_regexes = HashMap::new();
        let namespaces = std::iter::once(("", &config.channel.without_namespace))
            .chain(config.channel.namespaces.iter().map(|ns| (ns.name.as_str(), &ns.options)));
        for (name, options) in namespaces {
            if !options.channel_regex.is_empty() {
                let regex = Regex::new(&options.channel_regex)
                    .map_err(|e| NodeError::Config(format!("channel_regex of namespace {name:?}: {e}")))?;
                channel_regexes.insert(name.to_owned(), regex);
            }
        }
        let hub = Arc::new(Hub::new());
        let broker = self.broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()));
        let stats = Arc::new(Stats::default());
        let acks = Arc::new(AckTracker::default());
        let delivery = HubDelivery::new(hub.clone(), stats.clone(), acks.clone(), config.clone());
        broker.register_handler(delivery.clone());
        let presence = self.presence.unwrap_or_else(|| Arc::new(MemoryPresence::new()));
        let id = uuid::Uuid::new_v4().to_string();
        let name = self.name.unwrap_or_else(|| format!("herald-{}", &id[..8]));
        Ok(Node {
            inner: Arc::new(NodeInner {
                id,
                name,
                config,
                hub,
                broker,
                delivery,
                presence,
                registry: self.registry,
                tokens,
                rpc_handlers: RwLock::new(HashMap::new()),
                message_handler: RwLock::new(None),
                started: Instant::now(),
                shutdown: CancellationToken::new(),
                connections: TaskTracker::new(),
                congestion: Arc::default(),
                prometheus: metrics::install(),
                stats,
                acks,
                channel_regexes,
            }),
        }
        .with_ack_ticker()
        .with_heartbeat())
    }
}

impl Node {
    /// Retries and expires acknowledged deliveries while the node lives (when built inside a
    /// tokio runtime; a node built elsewhere does no redelivery), and publishes each expiry to
    /// `delivery.expired_channel` when one is configured.
    fn with_ack_ticker(self) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return self };
        let node = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let idle = Duration::from_millis(100);
            loop {
                let Some(inner) = node.upgrade() else { return };
                let (next, expired) = inner.acks.tick();
                let channel = &inner.config.delivery.expired_channel;
                if !channel.is_empty() {
                    for event in &expired {
                        let published = match Publish::json(channel.clone(), event) {
                            Ok(publish) => inner.publish(publish, "node").await,
                            Err(error) => Err(error),
                        };
                        if let Err(error) = published {
                            tracing::error!(%channel, %error, "cannot publish an ack expiry event");
                        }
                    }
                }
                drop(inner);
                let wait = next.map_or(idle, |at| at.saturating_duration_since(Instant::now()).min(idle));
                tokio::time::sleep(wait).await;
            }
        });
        self
    }
}

/// Engine failures are temporary errors for callers: an unreachable engine says so, so clients
/// and API callers retry instead of treating the publish as lost or refused.
pub(crate) fn engine_error(error: EngineError) -> ProtocolError {
    match error {
        EngineError::Unavailable(reason) => {
            tracing::warn!(%reason, "engine unavailable");
            metrics::engine_unavailable();
            ProtocolError::internal().with_message("engine unavailable, retry later")
        }
        EngineError::Internal(reason) => {
            tracing::error!(%reason, "engine call failed");
            ProtocolError::internal()
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Node {
    /// Sends this node's snapshot to the registry while the node lives, and takes it out at
    /// shutdown (when built inside a tokio runtime and part of a cluster).
    fn with_heartbeat(self) -> Self {
        let Some(registry) = self.inner.registry.clone() else { return self };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return self };
        let node = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        let id = self.inner.id.clone();
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(registry.heartbeat_interval());
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                let Some(inner) = node.upgrade() else { return };
                let snapshot = Node { inner }.snapshot();
                if let Err(error) = registry.heartbeat(&snapshot).await {
                    tracing::warn!(%error, "node heartbeat failed");
                }
            }
            if let Err(error) = registry.deregister(&id).await {
                tracing::warn!(%error, "node deregistration failed");
            }
        });
        self
    }

    fn snapshot(&self) -> NodeSnapshot {
        NodeSnapshot { info: self.info(), channels: self.channels("") }
    }

    /// A node with the in-memory engine.
    pub fn new(config: Config) -> Result<Self, NodeError> {
        Self::builder(config).build()
    }

    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder { config, broker: None, presence: None, registry: None, name: None }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Registers a handler for client `rpc` calls with this method name.
    pub fn on_rpc<F, Fut>(&self, method: impl Into<String>, handler: F)
    where
        F: Fn(RpcContext, Option<RawJson>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<RawJson>, ProtocolError>> + Send + 'static,
    {
        let handler: RpcHandler = Arc::new(move |ctx, data| Box::pin(handler(ctx, data)));
        self.inner.rpc_handlers.write().insert(method.into(), handler);
    }

    /// Registers the handler for client `send` messages.
    pub fn on_message(&self, handler: impl Fn(RpcContext, Option<RawJson>) + Send + Sync + 'static) {
        *self.inner.message_handler.write() = Some(Arc::new(handler));
    }

    /// The options of the channel's namespace, after validating the name.
    pub fn channel_options(&self, channel: &str) -> Result<&NamespaceOptions, ProtocolError> {
        self.inner.channel_options(channel)
    }

    /// Publishes a JSON-serializable value: the in-process domain event bus entry point.
    pub async fn publish_json(&self, channel: &str, data: &impl Serialize) -> Result<PublishResult, ProtocolError> {
        self.publish(Publish::json(channel, data)?).await
    }

    /// Publishes an entity change with its computed JSON Patch.
    pub async fn publish_change(&self, request: ChangeRequest) -> Result<PublishResult, ProtocolError> {
        self.publish(Publish::change(request)?).await
    }

    /// Connections whose outbound queue is backed up now; while a quarter of them (and at least
    /// 16) are, publishes wait for the queues to drain (see `herald_server::congestion`).
    pub fn backed_up_connections(&self) -> usize {
        self.inner.congestion.backed_up_count()
    }

    pub async fn publish(&self, publish: Publish) -> Result<PublishResult, ProtocolError> {
        self.inner.wait_for_delivery_capacity().await;
        self.inner.publish(publish, "node").await
    }

    pub async fn history(&self, channel: &str, filter: HistoryFilter) -> Result<HistoryPage, ProtocolError> {
        let options = self.inner.channel_options(channel)?;
        if options.history_size == 0 {
            return Err(ProtocolError::not_available().with_message("history is not enabled for this channel"));
        }
        self.inner.broker.history(channel, &filter).await.map_err(engine_error)
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), ProtocolError> {
        self.inner.channel_options(channel)?;
        self.inner.broker.remove_history(channel).await.map_err(engine_error)
    }

    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, ProtocolError> {
        let options = self.inner.channel_options(channel)?;
        if !options.presence {
            return Err(ProtocolError::not_available().with_message("presence is not enabled for this channel"));
        }
        self.inner.presence.presence(channel).await.map_err(engine_error)
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ProtocolError> {
        let options = self.inner.channel_options(channel)?;
        if !options.presence {
            return Err(ProtocolError::not_available().with_message("presence is not enabled for this channel"));
        }
        self.inner.presence.presence_stats(channel).await.map_err(engine_error)
    }

    /// Channels with subscribers on this node, with their counts, matching an optional
    /// glob-like pattern (`*` matches any run of characters).
    pub fn channels(&self, pattern: &str) -> BTreeMap<String, u32> {
        self.inner
            .hub
            .channels()
            .into_iter()
            .filter(|c| pattern.is_empty() || glob_match(pattern, &c.channel))
            .map(|c| (c.channel, c.num_clients))
            .collect()
    }

    /// Delivery statistics per channel with current subscriber counts.
    pub fn channel_stats(&self) -> BTreeMap<String, Counters> {
        let mut channels = self.inner.stats.channels();
        let pending = self.inner.acks.pending_by_channel();
        for (name, counters) in channels.iter_mut() {
            counters.subscribers = self.inner.hub.num_subscribers(name) as u64;
            counters.acks_pending = pending.get(name).copied().unwrap_or(0);
        }
        channels
    }

    /// Who acknowledged, who is pending (with retries) and who expired, for a publication that
    /// requires acknowledgement; `None` when it is not tracked on this node.
    pub fn delivery_status(&self, channel: &str, offset: u64) -> Option<crate::acks::DeliveryStatus> {
        self.inner.acks.status(channel, offset)
    }

    /// Called for each delivery that ran out of retries.
    pub fn on_ack_expired(&self, handler: impl Fn(&str, u64, &crate::acks::Recipient) + Send + Sync + 'static) {
        self.inner.acks.on_expired(Arc::new(handler));
    }

    /// The same statistics grouped by the values of one publication tag.
    pub fn tag_stats(&self, tag: &str) -> BTreeMap<String, GroupCounters> {
        let mut groups = self.inner.stats.by_tag(tag);
        for group in groups.values_mut() {
            group.counters.subscribers = group.channels.iter().map(|c| self.inner.hub.num_subscribers(c) as u64).sum();
        }
        groups
    }

    pub fn info(&self) -> NodeInfo {
        let hub = &self.inner.hub;
        NodeInfo {
            uid: self.inner.id.clone(),
            name: self.inner.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            num_clients: hub.num_clients() as u32,
            num_users: hub.num_users() as u32,
            num_subs: hub.num_subscriptions() as u32,
            num_channels: hub.channels().len() as u32,
            uptime: self.inner.started.elapsed().as_secs(),
        }
    }

    /// Every live node of the cluster (this one with its current counts); this node alone
    /// without a registry.
    pub async fn cluster_info(&self) -> Result<Vec<NodeInfo>, ProtocolError> {
        let own = self.info();
        let Some(registry) = &self.inner.registry else { return Ok(vec![own]) };
        let mut nodes: Vec<NodeInfo> = registry
            .nodes()
            .await
            .map_err(engine_error)?
            .into_iter()
            .map(|s| s.info)
            .filter(|info| info.uid != own.uid)
            .collect();
        nodes.push(own);
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uid.cmp(&b.uid)));
        Ok(nodes)
    }

    /// Channels with subscribers on any node, with the sum of their counts (other nodes as of
    /// their last heartbeat), matching an optional glob-like pattern.
    pub async fn cluster_channels(&self, pattern: &str) -> Result<BTreeMap<String, u32>, ProtocolError> {
        let mut channels = self.channels(pattern);
        let Some(registry) = &self.inner.registry else { return Ok(channels) };
        for snapshot in registry.nodes().await.map_err(engine_error)? {
            if snapshot.info.uid == self.inner.id {
                continue;
            }
            for (channel, count) in snapshot.channels {
                if pattern.is_empty() || glob_match(pattern, &channel) {
                    *channels.entry(channel).or_insert(0) += count;
                }
            }
        }
        Ok(channels)
    }

    /// Whether the engine can serve calls now.
    pub fn engine_state(&self) -> EngineState {
        self.inner.broker.state()
    }

    /// Subscribes connections of `user` (or the one `client`) to a channel, server-side.
    pub fn subscribe(&self, user: &str, client: &str, request: SubscribeRequest) -> Result<(), ProtocolError> {
        self.inner.channel_options(&request.channel)?;
        for handle in self.inner.targets(user, client) {
            handle.control(Control::Subscribe(Box::new(request.clone())));
        }
        Ok(())
    }

    pub fn unsubscribe(&self, user: &str, client: &str, channel: &str) -> Result<(), ProtocolError> {
        self.inner.channel_options(channel)?;
        for handle in self.inner.targets(user, client) {
            handle.control(Control::Unsubscribe {
                channel: channel.to_owned(),
                code: herald_core::codes::unsubscribe::SERVER,
                reason: "server unsubscribe".into(),
            });
        }
        Ok(())
    }

    /// Disconnects connections of `user` (or the one `client`), sparing `whitelist`ed client ids.
    pub fn disconnect(&self, user: &str, client: &str, whitelist: &[String], disconnect: Disconnect) {
        for handle in self.inner.targets(user, client) {
            if !whitelist.iter().any(|id| **id == *handle.id) {
                handle.control(Control::Disconnect(disconnect.clone()));
            }
        }
    }

    /// The `/connection/websocket`, `/api`, `/health` and `/metrics` routes, to serve alone or
    /// merge into an application's own axum `Router`.
    pub fn router(&self) -> axum::Router {
        crate::router::router(self.clone())
    }

    /// A token that is cancelled when the node starts shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Disconnects every client with 3001 (so they reconnect elsewhere) and waits up to
    /// `timeout` for their sessions to end.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.shutdown.cancel();
        for client in self.inner.hub.all_clients() {
            client.control(Control::Disconnect(Disconnect::SHUTDOWN));
        }
        self.inner.connections.close();
        if tokio::time::timeout(timeout, self.inner.connections.wait()).await.is_err() {
            tracing::warn!(remaining = self.inner.connections.len(), "shutdown timeout: connections still open");
        }
    }
}

impl NodeInner {
    pub fn channel_options(&self, channel: &str) -> Result<&NamespaceOptions, ProtocolError> {
        channel::validate(channel, self.config.channel.max_length)
            .map_err(|reason| ProtocolError::bad_request().with_message(reason))?;
        let name = ChannelName::parse(channel);
        let options = self.config.namespace_options(name.namespace).ok_or_else(ProtocolError::unknown_channel)?;
        if let Some(regex) = self.channel_regexes.get(name.namespace) {
            let rest = channel.strip_prefix('$').unwrap_or(channel).split_once(':').map_or(channel, |(_, rest)| rest);
            if !regex.is_match(rest) {
                return Err(ProtocolError::unknown_channel().with_message("channel name does not match channel_regex"));
            }
        }
        Ok(options)
    }

    pub fn publish_options(
        options: &NamespaceOptions,
        skip_history: bool,
        idempotency_key: Option<String>,
    ) -> PublishOptions {
        PublishOptions {
            history_size: if skip_history { 0 } else { options.history_size },
            history_ttl: options.history_ttl,
            history_meta_ttl: options.history_meta_ttl,
            idempotency_key,
            defer_fan_out: false,
        }
    }

    pub async fn publish(&self, publish: Publish, source: &'static str) -> Result<PublishResult, ProtocolError> {
        self.publish_with(publish, source, false).await
    }

    /// Waits (at most `client.publish_backpressure_wait`) while a large share of the connections' queues
    /// are backed up: the server as a whole is behind, and more publications now would only be
    /// shed from clients that read as fast as they are written to. Called once per request of
    /// a publisher (an API call, however many channels it names; a client's publish; a
    /// library's `Node::publish`), never by the node's own events.
    pub async fn wait_for_delivery_capacity(&self) {
        if self.publishers_must_wait() {
            let connections = || self.connections.len();
            self.congestion.wait_for_capacity(connections, self.config.client.publish_backpressure_wait).await;
        }
    }

    /// Backpressure is on and the server is congested now: a publisher's next request waits.
    pub fn publishers_must_wait(&self) -> bool {
        !self.config.client.publish_backpressure_wait.is_zero() && self.congestion.is_congested(self.connections.len())
    }

    /// `defer_fan_out`: the caller flushes the channel with `delivery.flush_publications` once
    /// its burst is over (see [`PublishOptions::defer_fan_out`]).
    pub async fn publish_with(
        &self,
        publish: Publish,
        source: &'static str,
        defer_fan_out: bool,
    ) -> Result<PublishResult, ProtocolError> {
        let options = self.channel_options(&publish.channel)?;
        let publish_options = PublishOptions {
            defer_fan_out,
            ..Self::publish_options(options, publish.skip_history, publish.idempotency_key)
        };
        if let Some(audience) = &publish.audience {
            if audience.users.is_empty() && audience.roles.is_empty() {
                return Err(ProtocolError::bad_request().with_message("audience names no users and no roles"));
            }
        }
        let priority = match publish.priority {
            Some(priority) => priority,
            None => options.default_priority.parse().map_err(|reason: String| {
                ProtocolError::internal().with_message(format!("default_priority of {:?}: {reason}", publish.channel))
            })?,
        };
        let keeps_history = options.history_size > 0 && !publish.skip_history;
        // Critical publications are confirmed by each recipient wherever history can back the
        // redelivery; elsewhere they are still never shed.
        let confirmed =
            publish.requires_ack || options.require_ack || (priority == Priority::Critical && keeps_history);
        let ack = confirmed.then_some(AckPolicy {
            timeout_ms: options.ack_timeout.as_millis() as u64,
            max_retries: options.ack_max_retries,
        });
        if ack.is_some() && !keeps_history {
            return Err(ProtocolError::bad_request().with_message("acknowledged delivery needs history on the channel"));
        }
        let meta = (publish.audience.is_some()
            || publish.patch_data.is_some()
            || ack.is_some()
            || !priority.is_normal())
        .then(|| {
            Arc::new(PublicationMeta { audience: publish.audience, patch_data: publish.patch_data, ack, priority })
        });
        let publication = Publication {
            data: publish.data,
            info: publish.info,
            offset: 0,
            tags: publish.tags,
            time: unix_millis(),
            meta,
        };
        let outcome =
            self.broker.publish(&publish.channel, publication, &publish_options).await.map_err(engine_error)?;
        if !outcome.deduplicated {
            metrics::publication(source);
        }
        let StreamPosition { offset, epoch } = outcome.position;
        Ok(PublishResult { offset, epoch })
    }

    fn targets(&self, user: &str, client: &str) -> Vec<Arc<crate::outbound::ClientHandle>> {
        if !client.is_empty() {
            self.hub.client(client).into_iter().filter(|c| user.is_empty() || c.user() == user).collect()
        } else {
            self.hub.user_clients(user)
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{glob_match, Node};
    use std::time::{Duration, Instant};

    /// A node whose every connection (none) counts as backed up sixteen times over: congested.
    fn congested_node(publish_backpressure_wait: Duration) -> Node {
        let mut config = herald_config::embedded_defaults();
        config.client.publish_backpressure_wait = publish_backpressure_wait;
        let node = Node::new(config).expect("node");
        for _ in 0..crate::congestion::MIN_BACKED_UP {
            node.inner.congestion.backed_up();
        }
        node
    }

    #[tokio::test]
    async fn publishes_wait_for_a_congested_server_up_to_the_configured_bound() {
        let bound = Duration::from_millis(40);
        let node = congested_node(bound);
        let started = Instant::now();
        node.publish_json("news", &serde_json::json!({"n": 1})).await.expect("published after the wait");
        assert!(started.elapsed() >= bound, "waited its bound: {:?}", started.elapsed());
    }

    #[test]
    fn glob() {
        assert!(glob_match("chat:*", "chat:room"));
        assert!(!glob_match("chat:*", "news"));
        assert!(glob_match("*room*", "chat:room1"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
