//! Request and result shapes of the server HTTP API (`POST /api/<method>`), as Centrifugo's
//! `api.proto` defines them, so `cent` and `cent.js` work unchanged.

use crate::protocol::{Audience, Priority, RawJson, Since};
pub use crate::protocol::{HistoryResult, PresenceResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64data: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_history: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idempotency_key: String,
    /// Herald extension: only these users/roles (and admins) receive the publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    /// Herald extension: live recipients must acknowledge it (`herald.ack`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_ack: bool,
    /// Herald extension: critical, high, normal or low (default: the namespace's
    /// `default_priority`). Slow subscribers shed low, then normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct BroadcastRequest {
    #[serde(default)]
    pub channels: Vec<String>,
    pub data: Option<RawJson>,
    #[serde(default)]
    pub b64data: String,
    #[serde(default)]
    pub skip_history: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub audience: Option<Audience>,
    #[serde(default)]
    pub requires_ack: bool,
    #[serde(default)]
    pub priority: Option<Priority>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
    pub info: Option<RawJson>,
    pub data: Option<RawJson>,
    pub recover_since: Option<Since>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DisconnectTarget {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DisconnectRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub whitelist: Vec<String>,
    pub disconnect: Option<DisconnectTarget>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i64,
    pub since: Option<Since>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelsRequest {
    #[serde(default)]
    pub pattern: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ChannelInfo {
    pub num_clients: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct ChannelsResult {
    pub channels: BTreeMap<String, ChannelInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u32,
    pub num_users: u32,
    pub num_subs: u32,
    pub num_channels: u32,
    pub uptime: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct InfoResult {
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Default, Deserialize)]
pub struct BatchRequest {
    #[serde(default)]
    pub commands: Vec<HashMap<String, Box<serde_json::value::RawValue>>>,
    #[serde(default)]
    pub parallel: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct StatsRequest {
    /// Group the statistics by the values of this publication tag.
    #[serde(default)]
    pub tag: String,
    /// Only channels matching this pattern (`*` wildcards).
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeliveryStatusRequest {
    pub channel: String,
    pub offset: u64,
}
