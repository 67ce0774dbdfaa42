//! The live nodes: each node stores its snapshot (info, counts, channels) in a hash, with its
//! expiry time in a sorted set; a node that stops sending heartbeats drops out after `node_ttl`.

use crate::Inner;
use async_trait::async_trait;
use herald_server::engine::{EngineError, NodeRegistry, NodeSnapshot};
use std::sync::Arc;
use std::time::Duration;

pub struct RedisRegistry {
    inner: Arc<Inner>,
}

impl RedisRegistry {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl NodeRegistry for RedisRegistry {
    async fn heartbeat(&self, snapshot: &NodeSnapshot) -> Result<(), EngineError> {
        let json = serde_json::to_string(snapshot).map_err(|e| EngineError::Internal(format!("node snapshot: {e}")))?;
        let keys = &self.inner.keys;
        crate::add_expiring(
            &self.inner,
            keys.nodes_expiry(),
            keys.nodes(),
            &snapshot.info.uid,
            &json,
            self.inner.options.node_ttl,
        )
        .await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), EngineError> {
        let keys = &self.inner.keys;
        crate::remove_expiring(&self.inner, keys.nodes_expiry(), keys.nodes(), node_id).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSnapshot>, EngineError> {
        let keys = &self.inner.keys;
        let members = crate::live_members(&self.inner, keys.nodes_expiry(), keys.nodes()).await?;
        let mut nodes = Vec::with_capacity(members.len());
        for (id, json) in members {
            match serde_json::from_str::<NodeSnapshot>(&json) {
                Ok(snapshot) => nodes.push(snapshot),
                Err(error) => tracing::warn!(node = %id, %error, "undecodable node snapshot skipped"),
            }
        }
        Ok(nodes)
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.inner.options.node_ttl / 3).max(Duration::from_millis(100))
    }
}
