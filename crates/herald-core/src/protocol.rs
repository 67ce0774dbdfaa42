//! The Centrifugo client protocol v2 in its JSON form: commands from clients, replies and pushes
//! from the server.
//!
//! Requests ignore fields they do not know, as the Go server does, so that newer SDKs keep working;
//! a command that names no known method is answered with error 104.

use crate::codes::ProtocolError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// An opaque JSON value kept exactly as the publisher sent it; shared, never re-encoded.
pub type RawJson = Arc<RawValue>;

/// Serde's default for `Option<RawJson>` fields would turn JSON `null` into `None`; payloads keep it.
fn is_none<T>(v: &Option<T>) -> bool {
    v.is_none()
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One command from a client. Exactly one method field is expected; the first present one wins.
/// Clients serialize it: absent methods and a zero id are left out, so `Command::default()` is the
/// pong `{}`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Command {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(skip_serializing_if = "is_none")]
    pub connect: Option<ConnectRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub subscribe: Option<SubscribeRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub publish: Option<PublishRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub presence: Option<PresenceRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub history: Option<HistoryRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub ping: Option<Empty>,
    #[serde(skip_serializing_if = "is_none")]
    pub send: Option<SendRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub rpc: Option<RpcRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub refresh: Option<RefreshRequest>,
    #[serde(skip_serializing_if = "is_none")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// The method a command asks for, with its request.
#[derive(Debug)]
pub enum Method {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(UnsubscribeRequest),
    Publish(PublishRequest),
    Presence(PresenceRequest),
    PresenceStats(PresenceStatsRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// `{}`: the client's answer to a server ping.
    Pong,
    /// A command naming no method this server knows.
    Unknown,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
            Method::Pong => "pong",
            Method::Unknown => "unknown",
        }
    }
}

impl Command {
    /// Splits the command into its id and method. A command with an id but no method is unknown;
    /// one with neither is a pong.
    pub fn into_method(self) -> (u32, Method) {
        let id = self.id;
        let method = if let Some(r) = self.connect {
            Method::Connect(r)
        } else if let Some(r) = self.subscribe {
            Method::Subscribe(r)
        } else if let Some(r) = self.unsubscribe {
            Method::Unsubscribe(r)
        } else if let Some(r) = self.publish {
            Method::Publish(r)
        } else if let Some(r) = self.presence {
            Method::Presence(r)
        } else if let Some(r) = self.presence_stats {
            Method::PresenceStats(r)
        } else if let Some(r) = self.history {
            Method::History(r)
        } else if self.ping.is_some() {
            Method::Ping
        } else if let Some(r) = self.send {
            Method::Send(r)
        } else if let Some(r) = self.rpc {
            Method::Rpc(r)
        } else if let Some(r) = self.refresh {
            Method::Refresh(r)
        } else if let Some(r) = self.sub_refresh {
            Method::SubRefresh(r)
        } else if id == 0 {
            Method::Pong
        } else {
            Method::Unknown
        };
        (id, method)
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ConnectRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeRequest>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub headers: HashMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recover: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub join_leave: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delta: String,
    #[serde(skip_serializing_if = "is_none")]
    pub tf: Option<FilterNode>,
}

/// A tag filter: a leaf compares one tag, inner nodes combine children.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterNode {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// A tag name (Centrifugo).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Herald extension: a JSON Pointer into the publication data, instead of `key`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub val: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<FilterNode>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Option<RawJson>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct PresenceRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct PresenceStatsRequest {
    #[serde(default)]
    pub channel: String,
}

/// `since` in history requests: a position in a stream.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    /// Absent means "no publications, just the stream top", as does 0.
    #[serde(default)]
    pub limit: i64,
    #[serde(skip_serializing_if = "is_none")]
    pub since: Option<Since>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct SendRequest {
    pub data: Option<RawJson>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RpcRequest {
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub method: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

// ---------------------------------------------------------------------------------------------
// Server -> client

/// Who published or joined: sent in publications, join/leave pushes and presence.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default, skip_serializing_if = "is_none")]
    pub conn_info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "is_none")]
    pub chan_info: Option<RawJson>,
}

/// Who may receive a publication (Herald extension): listed users, holders of listed roles, and
/// always the `admin` role. Absent means every subscriber.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The role that sees every publication regardless of its audience.
pub const ADMIN_ROLE: &str = "admin";

impl Audience {
    pub fn admits(&self, user: &str, roles: &[String]) -> bool {
        roles.iter().any(|r| r == ADMIN_ROLE)
            || (!user.is_empty() && self.users.iter().any(|u| u == user))
            || roles.iter().any(|r| self.roles.contains(r))
    }
}

/// How urgently a publication must reach a subscriber that falls behind (Herald extension).
/// Under backpressure `low` is shed first, then `normal`; `high` and `critical` are never shed
/// (a client that cannot take them is disconnected and recovers), and `critical` publications are
/// confirmed by each recipient when the channel keeps history.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Whether a slow subscriber may skip it (with a gap signal) rather than be disconnected.
    pub fn sheddable(self) -> bool {
        self <= Priority::Normal
    }

    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a priority (critical, high, normal, low)"))
    }
}

/// What the server keeps with a publication besides what clients see.
#[derive(Debug, Clone, Default)]
pub struct PublicationMeta {
    /// Who may receive it; never sent to clients.
    pub audience: Option<Audience>,
    /// The compact form of a change event's data, for subscribers in patch mode.
    pub patch_data: Option<RawJson>,
    /// Live recipients must acknowledge it (`herald.ack`); unacknowledged ones get it again.
    pub ack: Option<AckPolicy>,
    pub priority: Priority,
}

/// How a publication that requires confirmation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckPolicy {
    /// Milliseconds before the first retry; each retry doubles it.
    pub timeout_ms: u64,
    pub max_retries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub data: RawJson,
    #[serde(default, skip_serializing_if = "is_none")]
    pub info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub time: u64,
    #[serde(skip)]
    pub meta: Option<Arc<PublicationMeta>>,
}

impl Publication {
    pub fn audience(&self) -> Option<&Audience> {
        self.meta.as_ref().and_then(|m| m.audience.as_ref())
    }

    pub fn priority(&self) -> Priority {
        self.meta.as_ref().map_or(Priority::Normal, |m| m.priority)
    }

    /// The same publication with other data (patch mode), sharing everything else.
    pub fn with_data(&self, data: RawJson) -> Self {
        Self {
            data,
            info: self.info.clone(),
            offset: self.offset,
            tags: self.tags.clone(),
            time: self.time,
            meta: None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub time: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Arc<Publication>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceResult {
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "is_none")]
    pub data: Option<RawJson>,
}

/// An empty JSON object, the result of unsubscribe, publish and ping.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EmptyResult {}

/// Builds reply frames. Each reply is one JSON object; frames join several with `\n`.
pub mod reply {
    use super::*;

    #[derive(Serialize)]
    struct Ok<'a, T: Serialize> {
        id: u32,
        #[serde(flatten)]
        result: Named<'a, T>,
    }

    struct Named<'a, T> {
        method: &'a str,
        result: &'a T,
    }

    impl<T: Serialize> Serialize for Named<'_, T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(self.method, self.result)?;
            map.end()
        }
    }

    /// `{"id": id, "<method>": result}`.
    pub fn result<T: Serialize>(id: u32, method: &str, result: &T) -> String {
        let reply = Ok { id, result: Named { method, result } };
        // Serializing our own structs into a Vec cannot fail.
        serde_json::to_string(&reply).unwrap_or_default()
    }

    #[derive(Serialize)]
    struct Err<'a> {
        id: u32,
        error: &'a ProtocolError,
    }

    /// `{"id": id, "error": {...}}`.
    pub fn error(id: u32, error: &ProtocolError) -> String {
        serde_json::to_string(&Err { id, error }).unwrap_or_default()
    }

    #[derive(Serialize)]
    struct PushEnvelope<'a, T: Serialize> {
        push: PushBody<'a, T>,
    }

    #[derive(Serialize)]
    struct PushBody<'a, T: Serialize> {
        #[serde(skip_serializing_if = "str::is_empty")]
        channel: &'a str,
        #[serde(flatten)]
        body: Named<'a, T>,
    }

    /// `{"push": {"channel": channel, "<kind>": body}}`.
    pub fn push<T: Serialize>(channel: &str, kind: &str, body: &T) -> String {
        let push = PushEnvelope { push: PushBody { channel, body: Named { method: kind, result: body } } };
        serde_json::to_string(&push).unwrap_or_default()
    }

    #[derive(Serialize)]
    pub struct JoinLeave<'a> {
        pub info: &'a ClientInfo,
    }

    #[derive(Serialize)]
    pub struct Unsubscribe<'a> {
        pub code: u32,
        pub reason: &'a str,
    }

    #[derive(Serialize)]
    pub struct Message<'a> {
        pub data: &'a RawValue,
    }

    #[derive(Serialize)]
    pub struct Disconnect<'a> {
        pub code: u16,
        pub reason: &'a str,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (u32, Method) {
        serde_json::from_str::<Command>(s).unwrap().into_method()
    }

    #[test]
    fn empty_object_is_pong_and_idless_unknown_is_pong_too() {
        assert!(matches!(parse("{}"), (0, Method::Pong)));
    }

    #[test]
    fn unknown_method_with_id() {
        assert!(matches!(parse(r#"{"id":3,"frobnicate":{}}"#), (3, Method::Unknown)));
    }

    #[test]
    fn subscribe_with_recovery_fields() {
        let (id, m) =
            parse(r#"{"id":2,"subscribe":{"channel":"news","recover":true,"epoch":"xyz","offset":7,"flag":1}}"#);
        assert_eq!(id, 2);
        let Method::Subscribe(s) = m else { panic!("expected subscribe") };
        assert_eq!(s.channel, "news");
        assert!(s.recover);
        assert_eq!(s.epoch, "xyz");
        assert_eq!(s.offset, 7);
    }

    #[test]
    fn reply_and_push_shapes() {
        let r = reply::result(5, "publish", &EmptyResult {});
        assert_eq!(r, r#"{"id":5,"publish":{}}"#);
        let e = reply::error(6, &ProtocolError::permission_denied());
        assert_eq!(e, r#"{"id":6,"error":{"code":103,"message":"permission denied"}}"#);
        let data: RawJson = Arc::from(RawValue::from_string(r#"{"a":1}"#.into()).unwrap());
        let p = Publication { data, info: None, offset: 3, tags: Default::default(), time: 0, meta: None };
        let push = reply::push("news", "pub", &p);
        assert_eq!(push, r#"{"push":{"channel":"news","pub":{"data":{"a":1},"offset":3}}}"#);
    }
}
