//! Herald's Redis engine: several nodes behind a load balancer share streams, history, presence,
//! cursors, idempotency keys and the list of live nodes through one Redis (or Valkey) server.
//!
//! - A publish runs one Lua script ([`scripts`]) that takes the next offset of the channel's
//!   stream, appends the publication to a Redis stream (trimmed to `history_size`, expiring with
//!   `history_ttl`), answers a repeated idempotency key with the first result, and PUBLISHes the
//!   publication with its offset and epoch. Every node therefore sees the same offsets.
//! - A node listens on Pub/Sub only for channels with local subscribers, over several Pub/Sub
//!   connections (each channel hashed to one, [`pubsub`]). Per channel it remembers the last
//!   offset it delivered: a publication that skips offsets is preceded by the missing ones read
//!   from the stream, one already delivered is dropped, and after a reconnection every channel is
//!   caught up from the stream. When the missing part is gone (trimmed, or a new epoch), the
//!   node's subscribers are told to resubscribe (unsubscribe code 2500) and recover.
//! - Presence entries live in a hash with a sorted set of expiry times per channel; the owning
//!   node refreshes its entries, so a dead node's members expire after `presence_ttl`.
//! - Each node registers itself (with its counts and channels) under a heartbeat ([`registry`]).

pub mod keys;
mod pubsub;
mod registry;
pub mod scripts;

use async_trait::async_trait;
use herald_core::protocol::{AckPolicy, Audience, ClientInfo, Priority, Publication, PublicationMeta, RawJson};
use herald_server::engine::memory::new_epoch;
use herald_server::engine::{
    Broker, BrokerEventHandler, EngineError, EngineState, HistoryFilter, HistoryPage, PresenceManager, PresenceStats,
    PublishOptions, PublishOutcome, StreamPosition, IDEMPOTENCY_WINDOW,
};
pub use keys::Keys;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use registry::RedisRegistry;

/// How long the epoch of a stream that was only read (never published) is kept: reads do not
/// know the channel's `history_meta_ttl`, and a publish sets the real expiry.
const READ_META_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a history read of a subscribed channel waits for this node's Pub/Sub delivery to
/// catch up with the stream top, so a subscriber never gets a publication both in its reply and
/// live.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// Connection settings and tunables.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub address: String,
    pub prefix: String,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub db: u16,
    pub user: String,
    pub password: String,
    pub presence_ttl: Duration,
    pub pubsub_shards: usize,
    pub node_ttl: Duration,
}

impl RedisOptions {
    pub fn from_config(config: &herald_config::RedisEngine) -> Self {
        Self {
            address: config.address.first().cloned().unwrap_or_default(),
            prefix: config.prefix.clone(),
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            db: config.db,
            user: config.user.clone(),
            password: config.password.clone(),
            presence_ttl: config.presence_ttl,
            pubsub_shards: config.pubsub_shards.max(1),
            node_ttl: config.node_ttl,
        }
    }

    /// Defaults for `address` with a key prefix (tests use a fresh one each).
    pub fn new(address: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut options = Self::from_config(&herald_config::RedisEngine::default());
        options.address = address.into();
        options.prefix = prefix.into();
        options
    }

    fn client(&self) -> Result<redis::Client, EngineError> {
        let address =
            if self.address.contains("://") { self.address.clone() } else { format!("redis://{}", self.address) };
        let info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(address.as_str())
            .map_err(|e| EngineError::Internal(format!("engine.redis.address {address:?}: {e}")))?;
        let mut settings = info.redis_settings().clone();
        if self.db != 0 {
            settings = settings.set_db(i64::from(self.db));
        }
        if !self.user.is_empty() {
            settings = settings.set_username(&self.user);
        }
        if !self.password.is_empty() {
            settings = settings.set_password(&self.password);
        }
        let info = info.set_redis_settings(settings);
        redis::Client::open(info).map_err(|e| EngineError::Internal(format!("redis client for {address:?}: {e}")))
    }
}

/// The publication as stored in the stream and sent over Pub/Sub, without its offset (which the
/// script assigns) and with what the server keeps besides what clients see.
#[derive(Serialize, Deserialize)]
struct WirePublication {
    data: RawJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patch_data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<AckPolicy>,
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    priority: Priority,
}

fn encode_publication(publication: &Publication) -> Result<String, EngineError> {
    let meta = publication.meta.as_deref();
    let wire = WirePublication {
        data: publication.data.clone(),
        info: publication.info.clone(),
        tags: publication.tags.clone(),
        time: publication.time,
        audience: meta.and_then(|m| m.audience.clone()),
        patch_data: meta.and_then(|m| m.patch_data.clone()),
        ack: meta.and_then(|m| m.ack),
        priority: meta.map_or(Priority::Normal, |m| m.priority),
    };
    serde_json::to_string(&wire).map_err(|e| EngineError::Internal(format!("cannot encode a publication: {e}")))
}

fn decode_publication(offset: u64, payload: &[u8]) -> Result<Publication, EngineError> {
    let wire: WirePublication = serde_json::from_slice(payload)
        .map_err(|e| EngineError::Internal(format!("undecodable publication at offset {offset}: {e}")))?;
    let meta =
        (wire.audience.is_some() || wire.patch_data.is_some() || wire.ack.is_some() || !wire.priority.is_normal())
            .then(|| {
                Arc::new(PublicationMeta {
                    audience: wire.audience,
                    patch_data: wire.patch_data,
                    ack: wire.ack,
                    priority: wire.priority,
                })
            });
    Ok(Publication { data: wire.data, info: wire.info, offset, tags: wire.tags, time: wire.time, meta })
}

/// Connection failures are temporary (callers retry); anything else is a bug or bad data.
fn engine_error(context: &str, error: RedisError) -> EngineError {
    let temporary = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        );
    if temporary {
        EngineError::Unavailable(format!("redis {context}: {error}"))
    } else {
        EngineError::Internal(format!("redis {context}: {error}"))
    }
}

/// What the engine knows about reaching Redis.
#[derive(Default)]
struct Health {
    /// Pub/Sub shards currently without a connection.
    pubsub_down: AtomicUsize,
    /// The last command failure, until a command succeeds again.
    command_error: Mutex<Option<String>>,
}

pub(crate) struct Inner {
    pub(crate) keys: Keys,
    pub(crate) options: RedisOptions,
    pub(crate) client: redis::Client,
    pub(crate) connection: ConnectionManager,
    pub(crate) handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    pub(crate) shards: Vec<Arc<pubsub::Shard>>,
    health: Health,
    /// Presence entries this node owns and refreshes: (channel, client id) -> info JSON.
    presence: Mutex<HashMap<(String, String), String>>,
    /// Held by a refresh and by removals, so a refresh cannot re-add an entry removed meanwhile.
    presence_refresh: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The engine: implements [`Broker`] and [`PresenceManager`]; [`RedisEngine::registry`] gives
/// the [`herald_server::engine::NodeRegistry`]. Cheap to clone.
#[derive(Clone)]
pub struct RedisEngine {
    pub(crate) inner: Arc<Inner>,
}

impl RedisEngine {
    /// Starts the engine: connections are made lazily and re-made after an outage, so this
    /// succeeds while Redis is down (calls then fail as unavailable). Must run inside tokio.
    pub fn start(options: RedisOptions) -> Result<Self, EngineError> {
        let client = options.client()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.io_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| engine_error("connection", e))?;
        let shards = (0..options.pubsub_shards).map(|index| Arc::new(pubsub::Shard::new(index))).collect();
        let inner = Arc::new(Inner {
            keys: Keys::new(&options.prefix),
            options,
            client,
            connection,
            handler: OnceLock::new(),
            shards,
            health: Health::default(),
            presence: Mutex::new(HashMap::new()),
            presence_refresh: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
        });
        inner.health.pubsub_down.store(inner.shards.len(), Ordering::Relaxed);
        for shard in &inner.shards {
            tokio::spawn(pubsub::run(Arc::downgrade(&inner), shard.clone(), inner.shutdown.clone()));
        }
        tokio::spawn(refresh_presence(Arc::downgrade(&inner), inner.shutdown.clone()));
        Ok(Self { inner })
    }

    /// The node registry sharing this engine's connection and prefix.
    pub fn registry(&self) -> RedisRegistry {
        RedisRegistry::new(self.inner.clone())
    }

    /// Waits until every Pub/Sub connection is up (for tests and start-up checks).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.health.pubsub_down.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Inner {
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Runs a command future with the I/O timeout, recording whether Redis answered.
    pub(crate) async fn call<T>(
        &self,
        context: &str,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        let outcome = match tokio::time::timeout(self.options.io_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(engine_error(context, error)),
            Err(_) => Err(EngineError::Unavailable(format!(
                "redis {context}: no answer within {:?}",
                self.options.io_timeout
            ))),
        };
        match &outcome {
            Ok(_) => {
                let mut last = self.health.command_error.lock();
                if last.is_some() {
                    tracing::info!("redis answers again");
                    *last = None;
                }
            }
            Err(EngineError::Unavailable(reason)) => *self.health.command_error.lock() = Some(reason.clone()),
            Err(EngineError::Internal(_)) => {}
        }
        outcome
    }

    pub(crate) fn pubsub_connected(&self, connected: bool) {
        if connected {
            self.health.pubsub_down.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.health.pubsub_down.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn handler(&self) -> Option<&Arc<dyn BrokerEventHandler>> {
        self.handler.get()
    }

    fn shard(&self, channel: &str) -> &Arc<pubsub::Shard> {
        &self.shards[shard_of(channel) % self.shards.len()]
    }

    /// Reads a stream through the history script. `mode` is "top", "forward" or "reverse".
    pub(crate) async fn read_stream(
        &self,
        channel: &str,
        mode: &str,
        bound: u64,
        count: usize,
    ) -> Result<StreamRead, EngineError> {
        let mut invocation = scripts::HISTORY_SCRIPT.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .key(self.keys.meta(channel))
            .arg(new_epoch())
            .arg(mode)
            .arg(bound)
            .arg(count)
            .arg(READ_META_TTL.as_millis() as u64);
        let mut connection = self.connection();
        let reply: Vec<Value> = self.call("history", invocation.invoke_async(&mut connection)).await?;
        StreamRead::parse(channel, reply)
    }
}

/// What the history script answered.
pub(crate) struct StreamRead {
    pub position: StreamPosition,
    /// The first retained offset (`top + 1` when nothing is retained).
    pub first_retained: u64,
    /// The stream did not exist before this read.
    pub created: bool,
    pub publications: Vec<Arc<Publication>>,
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

impl StreamRead {
    fn parse(channel: &str, reply: Vec<Value>) -> Result<Self, EngineError> {
        let bad = || EngineError::Internal(format!("unexpected history script reply for {channel:?}"));
        if reply.len() < 4 {
            return Err(bad());
        }
        let top = as_u64(&reply[0]).ok_or_else(bad)?;
        let epoch = as_string(&reply[1]).ok_or_else(bad)?;
        let first_retained = as_u64(&reply[2]).ok_or_else(bad)?;
        let created = as_u64(&reply[3]).ok_or_else(bad)? == 1;
        let mut publications = Vec::with_capacity((reply.len() - 4) / 2);
        for pair in reply[4..].chunks(2) {
            let [offset, payload] = pair else { return Err(bad()) };
            let offset = as_u64(offset).ok_or_else(bad)?;
            let Value::BulkString(payload) = payload else { return Err(bad()) };
            publications.push(Arc::new(decode_publication(offset, payload)?));
        }
        Ok(Self { position: StreamPosition { offset: top, epoch }, first_retained, created, publications })
    }
}

/// FNV-1a, as the hub shards channels.
fn shard_of(key: &str) -> usize {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as usize
}

#[async_trait]
impl Broker for RedisEngine {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        // A second registration is a programming error in the embedding code; the first one stays.
        let _ = self.inner.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        pubsub::subscribe(&self.inner, self.inner.shard(channel), channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        pubsub::unsubscribe(&self.inner, self.inner.shard(channel), channel).await
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let inner = &self.inner;
        let payload = encode_publication(&publication)?;
        let idempotency = options.idempotency_key.as_deref().map(|key| inner.keys.idempotency(channel, key));
        let mut invocation = scripts::PUBLISH_SCRIPT.prepare_invoke();
        invocation
            .key(inner.keys.stream(channel))
            .key(inner.keys.meta(channel))
            .key(idempotency.unwrap_or_default())
            .arg(payload)
            .arg(options.history_size)
            .arg(options.history_ttl.as_millis() as u64)
            .arg(options.history_meta_ttl.as_millis() as u64)
            .arg(new_epoch())
            .arg(inner.keys.pubsub(channel))
            .arg(IDEMPOTENCY_WINDOW.as_millis() as u64);
        let mut connection = inner.connection();
        let reply: (u64, String, u8) = inner.call("publish", invocation.invoke_async(&mut connection)).await?;
        let (offset, epoch, deduplicated) = reply;
        Ok(PublishOutcome { position: StreamPosition { offset, epoch }, deduplicated: deduplicated == 1 })
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.publish_control(channel, 'j', info).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.publish_control(channel, 'l', info).await
    }

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryPage, EngineError> {
        let limit = filter.limit.unwrap_or(0);
        let (mode, bound, count) = match (&filter.since, filter.reverse, filter.limit) {
            (_, _, Some(0)) => ("top", 0, 0),
            (None, false, _) => ("forward", 0, limit),
            (None, true, _) => ("reverse", 0, limit),
            (Some(since), false, _) => ("forward", since.offset, limit),
            // Reverse from a position walks back from just before it, as Centrifugo does; a
            // zero offset has nothing before it.
            (Some(since), true, _) if since.offset == 0 => ("top", 0, 0),
            (Some(since), true, _) => ("reverse", since.offset, limit),
        };
        let read = self.inner.read_stream(channel, mode, bound, count).await?;
        let mut page =
            HistoryPage { publications: read.publications, position: read.position.clone(), since_available: true };
        if let Some(since) = &filter.since {
            let available = if read.created {
                since.epoch == read.position.epoch || since.offset == 0
            } else {
                let trimmed = !filter.reverse && since.offset + 1 < read.first_retained;
                since.epoch == read.position.epoch && since.offset <= read.position.offset && !trimmed
            };
            if !available {
                page.since_available = false;
                page.publications.clear();
                return Ok(page);
            }
        }
        // A node subscribed to the channel delivers through Pub/Sub, a little behind the stream:
        // the page must not run ahead of what this node delivered, or a new subscriber would get
        // a publication both in its reply and live.
        let delivered = pubsub::delivered_position(self.inner.shard(channel), channel, &page.position).await;
        if let Some(delivered) = delivered {
            if delivered.epoch == page.position.epoch && delivered.offset < page.position.offset {
                page.position.offset = delivered.offset;
                page.publications.retain(|p| p.offset <= delivered.offset);
            }
        }
        Ok(page)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut connection = self.inner.connection();
        let stream = self.inner.keys.stream(channel);
        let _: () =
            self.inner.call("history remove", redis::cmd("DEL").arg(&stream).query_async(&mut connection)).await?;
        Ok(())
    }

    async fn save_cursor(&self, user: &str, channel: &str, position: &StreamPosition) -> Result<(), EngineError> {
        let mut invocation = scripts::SAVE_CURSOR_SCRIPT.prepare_invoke();
        invocation.key(self.inner.keys.cursors(user)).arg(channel).arg(position.offset).arg(&position.epoch);
        let mut connection = self.inner.connection();
        let _: i64 = self.inner.call("save cursor", invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn cursor(&self, user: &str, channel: &str) -> Result<Option<StreamPosition>, EngineError> {
        let mut connection = self.inner.connection();
        let key = self.inner.keys.cursors(user);
        let stored: Option<String> =
            self.inner.call("cursor", redis::cmd("HGET").arg(&key).arg(channel).query_async(&mut connection)).await?;
        let Some(stored) = stored else { return Ok(None) };
        let (offset, epoch) = stored
            .split_once(':')
            .and_then(|(offset, epoch)| Some((offset.parse().ok()?, epoch.to_owned())))
            .ok_or_else(|| EngineError::Internal(format!("malformed cursor {stored:?} of {user:?} on {channel:?}")))?;
        Ok(Some(StreamPosition { offset, epoch }))
    }

    fn state(&self) -> EngineState {
        let health = &self.inner.health;
        let down = health.pubsub_down.load(Ordering::Acquire);
        let command_error = health.command_error.lock().clone();
        let error = match (down, command_error) {
            (_, Some(error)) => Some(error),
            (0, None) => None,
            (down, None) => Some(format!("{down} of {} pub/sub connections are down", self.inner.shards.len())),
        };
        EngineState { engine: "redis", available: error.is_none(), error }
    }
}

impl RedisEngine {
    async fn publish_control(&self, channel: &str, kind: char, info: &ClientInfo) -> Result<(), EngineError> {
        let json = serde_json::to_string(info).map_err(|e| EngineError::Internal(format!("client info: {e}")))?;
        let message = format!("{kind}\n{json}");
        let mut connection = self.inner.connection();
        let channel = self.inner.keys.pubsub(channel);
        let _: i64 = self
            .inner
            .call("join/leave", redis::cmd("PUBLISH").arg(&channel).arg(message).query_async(&mut connection))
            .await?;
        Ok(())
    }

    async fn live_members(&self, zset: String, hash: String) -> Result<Vec<(String, String)>, EngineError> {
        live_members(&self.inner, zset, hash).await
    }
}

pub(crate) async fn live_members(
    inner: &Inner,
    zset: String,
    hash: String,
) -> Result<Vec<(String, String)>, EngineError> {
    let mut invocation = scripts::LIVE_MEMBERS_SCRIPT.prepare_invoke();
    invocation.key(zset).key(hash);
    let mut connection = inner.connection();
    let flat: Vec<String> = inner.call("live members", invocation.invoke_async(&mut connection)).await?;
    Ok(flat.chunks(2).filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone()))).collect())
}

pub(crate) async fn add_expiring(
    inner: &Inner,
    zset: String,
    hash: String,
    member: &str,
    info: &str,
    ttl: Duration,
) -> Result<(), EngineError> {
    let mut invocation = scripts::ADD_EXPIRING_SCRIPT.prepare_invoke();
    invocation.key(zset).key(hash).arg(member).arg(info).arg(ttl.as_millis() as u64);
    let mut connection = inner.connection();
    let _: i64 = inner.call("add", invocation.invoke_async(&mut connection)).await?;
    Ok(())
}

pub(crate) async fn remove_expiring(
    inner: &Inner,
    zset: String,
    hash: String,
    member: &str,
) -> Result<(), EngineError> {
    let mut invocation = scripts::REMOVE_EXPIRING_SCRIPT.prepare_invoke();
    invocation.key(zset).key(hash).arg(member);
    let mut connection = inner.connection();
    let _: i64 = inner.call("remove", invocation.invoke_async(&mut connection)).await?;
    Ok(())
}

#[async_trait]
impl PresenceManager for RedisEngine {
    async fn add_presence(&self, channel: &str, client_id: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let json = serde_json::to_string(info).map_err(|e| EngineError::Internal(format!("client info: {e}")))?;
        // Remembered first: if Redis is down now, the next refresh adds it.
        self.inner.presence.lock().insert((channel.to_owned(), client_id.to_owned()), json.clone());
        let keys = &self.inner.keys;
        add_expiring(
            &self.inner,
            keys.presence_expiry(channel),
            keys.presence(channel),
            client_id,
            &json,
            self.inner.options.presence_ttl,
        )
        .await
    }

    async fn remove_presence(&self, channel: &str, client_id: &str) -> Result<(), EngineError> {
        let _no_refresh = self.inner.presence_refresh.lock().await;
        self.inner.presence.lock().remove(&(channel.to_owned(), client_id.to_owned()));
        let keys = &self.inner.keys;
        remove_expiring(&self.inner, keys.presence_expiry(channel), keys.presence(channel), client_id).await
    }

    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError> {
        let keys = &self.inner.keys;
        let members = self.live_members(keys.presence_expiry(channel), keys.presence(channel)).await?;
        let mut out = BTreeMap::new();
        for (client, json) in members {
            match serde_json::from_str::<ClientInfo>(&json) {
                Ok(info) => {
                    out.insert(client, info);
                }
                Err(error) => tracing::warn!(%channel, %client, %error, "undecodable presence entry skipped"),
            }
        }
        Ok(out)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let presence = self.presence(channel).await?;
        let users: HashSet<&str> = presence.values().map(|info| info.user.as_str()).collect();
        Ok(PresenceStats { num_clients: presence.len() as u32, num_users: users.len() as u32 })
    }
}

/// Re-adds this node's presence entries every third of `presence_ttl`, so they outlive a
/// missed refresh but not a dead node.
async fn refresh_presence(inner: std::sync::Weak<Inner>, shutdown: CancellationToken) {
    let Some(period) = inner.upgrade().map(|i| i.options.presence_ttl / 3) else { return };
    let mut ticker = tokio::time::interval(period.max(Duration::from_millis(50)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let _no_removals = inner.presence_refresh.lock().await;
        let entries: Vec<((String, String), String)> =
            inner.presence.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if entries.is_empty() {
            continue;
        }
        if let Err(error) = refresh_batch(&inner, &entries).await {
            tracing::warn!(%error, entries = entries.len(), "presence refresh failed; retrying next period");
        }
    }
}

async fn refresh_batch(inner: &Inner, entries: &[((String, String), String)]) -> Result<(), EngineError> {
    let script = &scripts::ADD_EXPIRING_SCRIPT;
    let mut connection = inner.connection();
    // Loading first makes EVALSHA safe in a pipeline, also right after a Redis restart.
    let hash: String = inner.call("script load", script.prepare_invoke().load_async(&mut connection)).await?;
    let ttl = inner.options.presence_ttl.as_millis() as u64;
    for chunk in entries.chunks(512) {
        let mut pipe = redis::pipe();
        for ((channel, client), json) in chunk {
            pipe.cmd("EVALSHA")
                .arg(&hash)
                .arg(2)
                .arg(inner.keys.presence_expiry(channel))
                .arg(inner.keys.presence(channel))
                .arg(client)
                .arg(json)
                .arg(ttl)
                .ignore();
        }
        let _: () = inner.call("presence refresh", pipe.query_async(&mut connection)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_the_connection_settings() {
        let mut options = RedisOptions::new("10.0.0.5:6390", "p");
        options.db = 3;
        options.user = "herald".into();
        options.password = "secret".into();
        let client = options.client().unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.addr().to_string(), "10.0.0.5:6390");
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().username(), Some("herald"));
        assert_eq!(info.redis_settings().password(), Some("secret"));

        let url = RedisOptions::new("redis://:pw@127.0.0.1:6379/2", "p").client().unwrap();
        assert_eq!(url.get_connection_info().redis_settings().db(), 2, "a URL keeps its own settings");
        assert!(RedisOptions::new("redis://[::1", "p").client().is_err(), "a bad address is an error, not a panic");
    }

    #[test]
    fn publications_keep_what_the_server_needs_across_nodes() {
        let publication = Publication {
            data: Arc::from(serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap()),
            info: Some(ClientInfo { user: "u".into(), client: "c".into(), ..Default::default() }),
            offset: 7,
            tags: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
            time: 42,
            meta: Some(Arc::new(PublicationMeta {
                audience: Some(Audience { users: vec!["u".into()], ..Default::default() }),
                patch_data: None,
                ack: Some(AckPolicy { timeout_ms: 100, max_retries: 2 }),
                priority: Priority::High,
            })),
        };
        let encoded = encode_publication(&publication).unwrap();
        assert!(!encoded.contains("offset"), "the script assigns the offset: {encoded}");
        let decoded = decode_publication(9, encoded.as_bytes()).unwrap();
        assert_eq!(decoded.offset, 9);
        assert_eq!(decoded.data.get(), r#"{"a":1}"#);
        assert_eq!(decoded.tags, publication.tags);
        assert_eq!(decoded.time, 42);
        let meta = decoded.meta.expect("meta");
        assert_eq!(meta.audience.as_ref().map(|a| a.users.clone()), Some(vec!["u".to_owned()]));
        assert_eq!(meta.ack, Some(AckPolicy { timeout_ms: 100, max_retries: 2 }));
        assert_eq!(meta.priority, Priority::High);
        assert!(decode_publication(1, b"not json").is_err());
    }
}
