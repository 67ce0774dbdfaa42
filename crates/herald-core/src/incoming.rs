//! Server frames as a client reads them: replies to commands and pushes.
//!
//! The server writes these with [`crate::protocol::reply`]; clients (the `herald-client` crate,
//! benchmarks, tests) decode each `\n`-separated line of a frame into a [`Reply`]. Unknown fields
//! are ignored so that a client keeps working against a newer server.

use crate::codes::ProtocolError;
use crate::protocol::{
    ClientInfo, ConnectResult, EmptyResult, HistoryResult, PresenceResult, PresenceStatsResult, Publication, RawJson,
    RefreshResult, RpcResult, SubRefreshResult, SubscribeResult,
};
use serde::Deserialize;

/// One line of a server frame: a reply (`id` set, one result or `error`), a push (`push` set, no
/// id), or a server ping (`{}`: nothing set).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reply {
    pub id: u32,
    pub error: Option<ProtocolError>,
    pub push: Option<Push>,
    pub connect: Option<ConnectResult>,
    pub subscribe: Option<SubscribeResult>,
    pub unsubscribe: Option<EmptyResult>,
    pub publish: Option<EmptyResult>,
    pub presence: Option<PresenceResult>,
    pub presence_stats: Option<PresenceStatsResult>,
    pub history: Option<HistoryResult>,
    pub ping: Option<EmptyResult>,
    pub rpc: Option<RpcResult>,
    pub refresh: Option<RefreshResult>,
    pub sub_refresh: Option<SubRefreshResult>,
}

impl Reply {
    /// `{}`: the server's heartbeat, to be answered with `{}` when the connect result said `pong`.
    pub fn is_ping(&self) -> bool {
        self.id == 0 && self.push.is_none() && self.error.is_none()
    }
}

/// `{"push": {"channel": ..., "<kind>": {...}}}`: something the server sends unasked.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Push {
    pub channel: String,
    #[serde(rename = "pub")]
    pub publication: Option<Publication>,
    pub join: Option<JoinLeave>,
    pub leave: Option<JoinLeave>,
    pub unsubscribe: Option<Unsubscribe>,
    /// A server-side subscription was added (server API `subscribe`).
    pub subscribe: Option<SubscribeResult>,
    pub message: Option<Message>,
    pub disconnect: Option<Disconnect>,
}

/// Join and leave pushes: who came or went.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct JoinLeave {
    #[serde(default)]
    pub info: ClientInfo,
}

/// The server ended a subscription; from code 2500 on the client should subscribe again.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Unsubscribe {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

impl Unsubscribe {
    pub fn resubscribe(&self) -> bool {
        self.code >= crate::codes::unsubscribe::INSUFFICIENT_STATE
    }
}

/// An asynchronous message to the connection (server `send`, and Herald's gap signal).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub data: RawJson,
}

impl Message {
    /// Herald's gap signal, when this message is one: `{"herald": {"gap": {...}}}`.
    pub fn gap(&self) -> Option<GapSignal> {
        #[derive(Deserialize)]
        struct Herald {
            gap: GapSignal,
        }
        #[derive(Deserialize)]
        struct Data {
            herald: Herald,
        }
        serde_json::from_str::<Data>(self.data.get()).ok().map(|data| data.herald.gap)
    }
}

/// Publications of a channel the server shed for this connection because it fell behind (Herald
/// extension): they will not arrive live; history still has those with an offset.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct GapSignal {
    pub channel: String,
    /// Ascending.
    #[serde(default)]
    pub offsets: Vec<u64>,
    /// Shed publications of channels without history, which have no offset.
    #[serde(default)]
    pub unnumbered: u64,
}

/// A disconnect announced in a push rather than in the WebSocket close frame.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Disconnect {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{reply, Command, ConnectRequest, EmptyResult, SubscribeRequest};

    #[test]
    fn server_frames_decode() {
        let ping: Reply = serde_json::from_str("{}").unwrap();
        assert!(ping.is_ping());
        let result: Reply = serde_json::from_str(&reply::result(4, "publish", &EmptyResult {})).unwrap();
        assert_eq!(result.id, 4);
        assert!(result.publish.is_some() && !result.is_ping());
        let error: Reply = serde_json::from_str(&reply::error(5, &ProtocolError::too_many_requests())).unwrap();
        assert_eq!(error.error, Some(ProtocolError::too_many_requests()));
        let line =
            r#"{"push":{"channel":"news","pub":{"data":{"a":[1, 2]},"offset":3,"tags":{"k":"v"},"delta":false}}}"#;
        let push: Reply = serde_json::from_str(line).unwrap();
        let push = push.push.unwrap();
        assert_eq!(push.channel, "news");
        let publication = push.publication.unwrap();
        assert_eq!((publication.offset, publication.data.get()), (3, r#"{"a":[1, 2]}"#));
        let unsubscribe: Reply =
            serde_json::from_str(r#"{"push":{"channel":"c","unsubscribe":{"code":2500,"reason":"x"}}}"#).unwrap();
        assert!(unsubscribe.push.unwrap().unsubscribe.unwrap().resubscribe());
        let gap = r#"{"push":{"message":{"data":{"herald":{"gap":{"channel":"jobs","offsets":[41,42,57]}}}}}}"#;
        let gap: Reply = serde_json::from_str(gap).unwrap();
        let signal = gap.push.unwrap().message.unwrap().gap().unwrap();
        assert_eq!(signal, GapSignal { channel: "jobs".into(), offsets: vec![41, 42, 57], unnumbered: 0 });
        let application: Reply = serde_json::from_str(r#"{"push":{"message":{"data":{"hello":1}}}}"#).unwrap();
        assert!(application.push.unwrap().message.unwrap().gap().is_none());
    }

    #[test]
    fn client_commands_serialize_compactly() {
        assert_eq!(serde_json::to_string(&Command::default()).unwrap(), "{}");
        let command = Command {
            id: 1,
            connect: Some(ConnectRequest { token: "t".into(), ..Default::default() }),
            subscribe: Some(SubscribeRequest {
                channel: "news".into(),
                recover: true,
                offset: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&command).unwrap(),
            r#"{"id":1,"connect":{"token":"t"},"subscribe":{"channel":"news","recover":true,"offset":7}}"#
        );
    }
}
