//! The seams between the hub and where publications, history and presence live.
//!
//! A [`Broker`] orders publications of a channel, keeps their history and delivers them to every
//! node interested in the channel; a [`PresenceManager`] knows who is in a channel. The in-memory
//! engine serves one node; durable and Redis engines implement the same traits so the hub and
//! client code never change.

pub mod memory;

use async_trait::async_trait;
use herald_core::api::NodeInfo;
use herald_core::protocol::{ClientInfo, Publication};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A position in a channel's stream. `epoch` changes only when the stream's history was lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("engine error: {0}")]
    Internal(String),
}

/// How a publication is kept.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// 0 disables history: the publication gets no offset and cannot be recovered.
    pub history_size: usize,
    pub history_ttl: Duration,
    /// How long the stream's epoch and top offset outlive its last publication; zero keeps them.
    pub history_meta_ttl: Duration,
    /// A repeated key within [`IDEMPOTENCY_WINDOW`] returns the first result without delivering.
    pub idempotency_key: Option<String>,
    /// The caller flushes the channel's fan-out itself (`flush_publications` on the node's
    /// handler) once its burst of publishes is over, so that what the burst queued goes to each
    /// subscriber together. An engine that fans out inside `publish` only queues; the others may
    /// ignore it (a flush with nothing queued does nothing).
    pub defer_fan_out: bool,
}

/// How long `idempotency_key` remembers a publish.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    pub position: StreamPosition,
    /// True when an earlier publish with the same idempotency key answered instead.
    pub deduplicated: bool,
}

/// Which part of a stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only publications after this position; an epoch mismatch makes the read fail as unrecoverable.
    pub since: Option<StreamPosition>,
    /// `Some(0)` reads only the stream top; `None` reads everything retained.
    pub limit: Option<usize>,
    pub reverse: bool,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    /// The stream top at the moment of the read.
    pub position: StreamPosition,
    /// False when `since` could not be honoured: another epoch, or publications after it were
    /// already trimmed. The publications are then empty.
    pub since_available: bool,
}

/// Receives what a broker delivers to this node. Called in stream order per channel.
pub trait BrokerEventHandler: Send + Sync + 'static {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>);
    /// Takes a publication in stream order without delivering it yet: an engine calls this
    /// under its per-channel order lock, then [`BrokerEventHandler::flush_publications`] once
    /// the lock is released. Publications queued while another caller is flushing the channel
    /// go out together with that caller's, so publishers under load no longer wait for each
    /// other's fan-out. By default it delivers at once.
    fn queue_publication(&self, channel: &str, publication: Arc<Publication>) {
        self.handle_publication(channel, publication);
    }
    /// Delivers what was queued for `channel` (nothing, if another caller is delivering it and
    /// will take it).
    fn flush_publications(&self, _channel: &str) {}
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
    /// The broker lost publications of `channel` it cannot fill from history (trimmed, or the
    /// stream got a new epoch): this node's subscribers must resubscribe and recover.
    fn handle_resubscribe(&self, channel: &str);
}

/// Whether the engine can serve calls now, for `/health` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineState {
    /// `memory`, `redb`, `redis`.
    pub engine: &'static str,
    pub available: bool,
    /// Why it is unavailable (the last connection error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Installs the node's handler; called once before anything is published.
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>);

    /// This node now has subscribers of `channel` (a cluster broker starts listening).
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// This node has no more subscribers of `channel`.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// Orders, stores (per `options`) and delivers a publication; its `offset` is assigned here.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError>;

    /// True when `publish` fixes the publication's place in its channel's stream before the
    /// returned future first returns `Pending`. A client connection may then have several
    /// publishes waiting for the engine at once and still keep their order; with an engine that
    /// orders later (a networked one), each waits for the previous one's answer.
    fn orders_on_first_poll(&self) -> bool {
        false
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError>;
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError>;

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryPage, EngineError>;
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;

    /// Stores a user's durable cursor: the last position it acknowledged on a channel.
    async fn save_cursor(&self, user: &str, channel: &str, position: &StreamPosition) -> Result<(), EngineError>;
    /// A user's durable cursor on a channel, if it acknowledged anything there.
    async fn cursor(&self, user: &str, channel: &str) -> Result<Option<StreamPosition>, EngineError>;

    /// In-process engines are always available; a networked one reports its connection.
    fn state(&self) -> EngineState {
        EngineState { engine: "memory", available: true, error: None }
    }
}

/// What one node tells the others in its heartbeat.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeSnapshot {
    pub info: NodeInfo,
    /// Channels with subscribers on that node, with their counts.
    pub channels: BTreeMap<String, u32>,
}

/// The nodes of a cluster: each registers itself with a heartbeat and expires when it stops.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Publishes this node's snapshot; it stays listed for the registry's TTL.
    async fn heartbeat(&self, snapshot: &NodeSnapshot) -> Result<(), EngineError>;
    /// Removes this node at a graceful shutdown, so it does not linger until its TTL.
    async fn deregister(&self, node_id: &str) -> Result<(), EngineError>;
    /// The live nodes as of their last heartbeats (this one included once it sent one).
    async fn nodes(&self) -> Result<Vec<NodeSnapshot>, EngineError>;
    /// How often `heartbeat` must be called.
    fn heartbeat_interval(&self) -> Duration;
}

#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    async fn add_presence(&self, channel: &str, client_id: &str, info: &ClientInfo) -> Result<(), EngineError>;
    async fn remove_presence(&self, channel: &str, client_id: &str) -> Result<(), EngineError>;
    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError>;
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError>;
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}
