//! The client protocol's two wire formats: the JSON of [`crate::protocol`] and its Protobuf form,
//! Centrifugo's `centrifuge-protobuf` WebSocket subprotocol (the Swift, Kotlin and Dart SDKs, and
//! centrifuge-js's protobuf build, speak it).
//!
//! Both formats carry the same model: commands decode into [`protocol::Command`], and replies and
//! pushes are encoded from the same result structs, so the server handles a command once
//! whatever the format of its connection.
//!
//! # Framing
//!
//! JSON frames are WebSocket text frames of newline-separated objects. Protobuf frames are binary
//! frames of one or more messages back to back, each prefixed by its length as a varint
//! (Protobuf's length-delimited form): `Command`s from the client, `Reply`s from the server. The
//! server's ping is an empty `Reply`, so its length-delimited form is the single byte `0x00`; the
//! client's pong is an empty `Command` (also `0x00`), which decodes to [`protocol::Method::Pong`].
//!
//! # Payloads stay JSON
//!
//! Herald keeps publication and request data as JSON text ([`protocol::RawJson`]): it filters,
//! patches and stores it as JSON, and clients of either format share the same publications. So
//! the Protobuf `bytes` fields `data`, `conn_info` and `chan_info` carry that JSON text's bytes.
//! Decoding, empty bytes mean no value, and anything else must be JSON: a command whose data is
//! not is refused with error 107 (bad request) rather than stored as something JSON clients could
//! not read.
//!
//! # Herald extensions
//!
//! Fields of the JSON model that Centrifugo's `client.proto` lacks get numbers from 1000 up, so
//! they never collide with fields Centrifugo adds later:
//!
//! | message      | field  | number | meaning                                                     |
//! |--------------|--------|--------|-------------------------------------------------------------|
//! | `FilterNode` | `path` | 1000   | a JSON Pointer into the publication data, instead of `key`  |
//!
//! # Differences between the formats
//!
//! * The server-side subscription push carries the whole `SubscribeResult` in JSON; Centrifugo's
//!   Protobuf `Subscribe` push has only `recoverable`, `epoch`, `offset`, `positioned` and `data`.
//! * `HistoryRequest.limit` is an `int32` in Protobuf (an `i64` in the model).
//! * Centrifugo fields Herald does not implement (`flag`, `delta`, Publication `channel`/`key`,
//!   ...) are declared in [`proto`] so they decode, and are ignored.

use crate::codes::ProtocolError;
use crate::protocol::{
    self, reply, ClientInfo, Command, ConnectResult, EmptyResult, HistoryResult, PresenceResult, PresenceStatsResult,
    Publication, RawJson, RefreshResult, RpcResult, SubRefreshResult, SubscribeResult,
};
use prost::Message as _;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The WebSocket subprotocol a client names to speak Protobuf.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// Centrifugo's `client.proto` (package `centrifugal.centrifuge.protocol`), written by hand so that
/// building Herald needs no `protoc`. Field numbers are the wire contract; names are Rust's
/// (`RPCRequest` is [`RpcRequest`](proto::RpcRequest), Push's `pub` is
/// [`Push::publication`](proto::Push::publication)).
pub mod proto {
    use std::collections::{BTreeMap, HashMap};

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(bool, tag = "3")]
        pub temporary: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Command {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "4")]
        pub connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub subscribe: Option<SubscribeRequest>,
        #[prost(message, optional, tag = "6")]
        pub unsubscribe: Option<UnsubscribeRequest>,
        #[prost(message, optional, tag = "7")]
        pub publish: Option<PublishRequest>,
        #[prost(message, optional, tag = "8")]
        pub presence: Option<PresenceRequest>,
        #[prost(message, optional, tag = "9")]
        pub presence_stats: Option<PresenceStatsRequest>,
        #[prost(message, optional, tag = "10")]
        pub history: Option<HistoryRequest>,
        #[prost(message, optional, tag = "11")]
        pub ping: Option<PingRequest>,
        #[prost(message, optional, tag = "12")]
        pub send: Option<SendRequest>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcRequest>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshRequest>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshRequest>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Reply {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "2")]
        pub error: Option<Error>,
        #[prost(message, optional, tag = "4")]
        pub push: Option<Push>,
        #[prost(message, optional, tag = "5")]
        pub connect: Option<ConnectResult>,
        #[prost(message, optional, tag = "6")]
        pub subscribe: Option<SubscribeResult>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<UnsubscribeResult>,
        #[prost(message, optional, tag = "8")]
        pub publish: Option<PublishResult>,
        #[prost(message, optional, tag = "9")]
        pub presence: Option<PresenceResult>,
        #[prost(message, optional, tag = "10")]
        pub presence_stats: Option<PresenceStatsResult>,
        #[prost(message, optional, tag = "11")]
        pub history: Option<HistoryResult>,
        #[prost(message, optional, tag = "12")]
        pub ping: Option<PingResult>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcResult>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshResult>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshResult>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Push {
        #[prost(int64, tag = "1")]
        pub id: i64,
        #[prost(string, tag = "2")]
        pub channel: String,
        /// `pub` in `client.proto`.
        #[prost(message, optional, tag = "4")]
        pub publication: Option<Publication>,
        #[prost(message, optional, tag = "5")]
        pub join: Option<Join>,
        #[prost(message, optional, tag = "6")]
        pub leave: Option<Leave>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Unsubscribe>,
        #[prost(message, optional, tag = "8")]
        pub message: Option<Message>,
        #[prost(message, optional, tag = "9")]
        pub subscribe: Option<Subscribe>,
        #[prost(message, optional, tag = "10")]
        pub connect: Option<Connect>,
        #[prost(message, optional, tag = "11")]
        pub disconnect: Option<Disconnect>,
        #[prost(message, optional, tag = "12")]
        pub refresh: Option<Refresh>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ClientInfo {
        #[prost(string, tag = "1")]
        pub user: String,
        #[prost(string, tag = "2")]
        pub client: String,
        #[prost(bytes = "vec", tag = "3")]
        pub conn_info: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub chan_info: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Publication {
        #[prost(bytes = "vec", tag = "4")]
        pub data: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        pub info: Option<ClientInfo>,
        #[prost(uint64, tag = "6")]
        pub offset: u64,
        // A BTreeMap like the model's, so encoding is deterministic and needs no rehashing.
        #[prost(btree_map = "string, string", tag = "7")]
        pub tags: BTreeMap<String, String>,
        #[prost(bool, tag = "8")]
        pub delta: bool,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "9")]
        pub time: i64,
        #[prost(string, tag = "10")]
        pub channel: String,
        #[prost(string, tag = "11")]
        pub key: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Join {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Leave {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Unsubscribe {
        #[prost(uint32, tag = "2")]
        pub code: u32,
        #[prost(string, tag = "3")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Subscribe {
        #[prost(bool, tag = "1")]
        pub recoverable: bool,
        #[prost(string, tag = "4")]
        pub epoch: String,
        #[prost(uint64, tag = "5")]
        pub offset: u64,
        #[prost(bool, tag = "6")]
        pub positioned: bool,
        #[prost(bytes = "vec", tag = "7")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Message {
        #[prost(bytes = "vec", tag = "1")]
        pub data: Vec<u8>,
    }

    /// The connect push of unidirectional transports; Herald does not send it, but a client
    /// decoding Herald's replies should not trip over it.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Connect {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bytes = "vec", tag = "3")]
        pub data: Vec<u8>,
        #[prost(btree_map = "string, message", tag = "4")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(bool, tag = "5")]
        pub expires: bool,
        #[prost(uint32, tag = "6")]
        pub ttl: u32,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
        #[prost(int64, tag = "11")]
        pub time: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Disconnect {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub reason: String,
        #[prost(bool, tag = "3")]
        pub reconnect: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Refresh {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
        // HashMaps like the model's request maps, so decoding moves them over as they are.
        #[prost(map = "string, message", tag = "3")]
        pub subs: HashMap<String, SubscribeRequest>,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub version: String,
        #[prost(map = "string, string", tag = "6")]
        pub headers: HashMap<String, String>,
        #[prost(int64, tag = "7")]
        pub flag: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ConnectResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
        #[prost(bytes = "vec", tag = "5")]
        pub data: Vec<u8>,
        #[prost(btree_map = "string, message", tag = "6")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
        #[prost(int64, tag = "11")]
        pub time: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RefreshRequest {
        #[prost(string, tag = "1")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RefreshResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
        #[prost(bool, tag = "3")]
        pub recover: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(uint64, tag = "7")]
        pub offset: u64,
        #[prost(bytes = "vec", tag = "8")]
        pub data: Vec<u8>,
        #[prost(bool, tag = "9")]
        pub positioned: bool,
        #[prost(bool, tag = "10")]
        pub recoverable: bool,
        #[prost(bool, tag = "11")]
        pub join_leave: bool,
        #[prost(string, tag = "12")]
        pub delta: String,
        #[prost(message, optional, tag = "13")]
        pub tf: Option<FilterNode>,
        #[prost(int64, tag = "14")]
        pub flag: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubscribeResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
        #[prost(bool, tag = "3")]
        pub recoverable: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(message, repeated, tag = "7")]
        pub publications: Vec<Publication>,
        #[prost(bool, tag = "8")]
        pub recovered: bool,
        #[prost(uint64, tag = "9")]
        pub offset: u64,
        #[prost(bool, tag = "10")]
        pub positioned: bool,
        #[prost(bytes = "vec", tag = "11")]
        pub data: Vec<u8>,
        #[prost(bool, tag = "12")]
        pub was_recovering: bool,
        #[prost(bool, tag = "13")]
        pub delta: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubRefreshRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubRefreshResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct UnsubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct UnsubscribeResult {}

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PublishRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PublishResult {}

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceResult {
        #[prost(btree_map = "string, message", tag = "1")]
        pub presence: BTreeMap<String, ClientInfo>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceStatsRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceStatsResult {
        #[prost(uint32, tag = "1")]
        pub num_clients: u32,
        #[prost(uint32, tag = "2")]
        pub num_users: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct StreamPosition {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(string, tag = "2")]
        pub epoch: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HistoryRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(int32, tag = "7")]
        pub limit: i32,
        #[prost(message, optional, tag = "8")]
        pub since: Option<StreamPosition>,
        #[prost(bool, tag = "9")]
        pub reverse: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HistoryResult {
        #[prost(message, repeated, tag = "1")]
        pub publications: Vec<Publication>,
        #[prost(string, tag = "2")]
        pub epoch: String,
        #[prost(uint64, tag = "3")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PingRequest {}

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PingResult {}

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RpcRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub data: Vec<u8>,
        #[prost(string, tag = "2")]
        pub method: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RpcResult {
        #[prost(bytes = "vec", tag = "1")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SendRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct FilterNode {
        #[prost(string, tag = "1")]
        pub op: String,
        #[prost(string, tag = "2")]
        pub key: String,
        #[prost(string, tag = "3")]
        pub cmp: String,
        #[prost(string, tag = "4")]
        pub val: String,
        #[prost(string, repeated, tag = "5")]
        pub vals: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub nodes: Vec<FilterNode>,
        /// Herald extension: a JSON Pointer into the publication data, instead of `key`.
        #[prost(string, tag = "1000")]
        pub path: String,
    }
}

/// How a connection's frames are encoded, chosen once when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireFormat {
    #[default]
    Json,
    Protobuf,
}

/// One value per wire format: what a server makes at most once per format in use, such as a
/// publication's bytes in each form.
#[derive(Debug, Default, Clone)]
pub struct ByFormat<T>([T; 2]);

impl<T> ByFormat<T> {
    fn index(format: WireFormat) -> usize {
        match format {
            WireFormat::Json => 0,
            WireFormat::Protobuf => 1,
        }
    }

    pub fn get(&self, format: WireFormat) -> &T {
        &self.0[Self::index(format)]
    }

    pub fn get_mut(&mut self, format: WireFormat) -> &mut T {
        &mut self.0[Self::index(format)]
    }
}

/// A command result to encode (what `reply::result(id, "<method>", &result)` encodes in JSON).
#[derive(Debug, Clone, Copy)]
pub enum ResultBody<'a> {
    Connect(&'a ConnectResult),
    Subscribe(&'a SubscribeResult),
    Unsubscribe,
    Publish,
    Presence(&'a PresenceResult),
    PresenceStats(&'a PresenceStatsResult),
    History(&'a HistoryResult),
    Ping,
    Rpc(&'a RpcResult),
    Refresh(&'a RefreshResult),
    SubRefresh(&'a SubRefreshResult),
}

/// A push to encode (what `reply::push(channel, "<kind>", &body)` encodes in JSON).
#[derive(Debug, Clone, Copy)]
pub enum PushBody<'a> {
    Pub(&'a Publication),
    Join(&'a ClientInfo),
    Leave(&'a ClientInfo),
    Unsubscribe {
        code: u32,
        reason: &'a str,
    },
    Message(&'a RawValue),
    /// A server-side subscription; JSON sends the SubscribeResult as the `subscribe` push body;
    /// Protobuf maps it to `Subscribe` (recoverable, epoch, offset, positioned, data).
    Subscribe(&'a SubscribeResult),
}

/// One command decoded from a frame: the command, or (its id, why it is refused) when it is
/// well-formed but a field is unacceptable (e.g. non-JSON data).
pub type Decoded = Result<Command, (u32, ProtocolError)>;

impl WireFormat {
    /// A reply carrying a command's result.
    pub fn result(self, id: u32, body: ResultBody<'_>) -> Vec<u8> {
        match self {
            WireFormat::Json => json_result(id, body).into_bytes(),
            WireFormat::Protobuf => encode(&protobuf_result(id, body)),
        }
    }

    /// A reply refusing a command.
    pub fn error(self, id: u32, error: &ProtocolError) -> Vec<u8> {
        match self {
            WireFormat::Json => reply::error(id, error).into_bytes(),
            WireFormat::Protobuf => encode(&proto::Reply { id, error: Some(error.into()), ..Default::default() }),
        }
    }

    /// Something the server sends unasked; an empty `channel` is left out.
    pub fn push(self, channel: &str, body: PushBody<'_>) -> Vec<u8> {
        match self {
            WireFormat::Json => json_push(channel, body).into_bytes(),
            WireFormat::Protobuf => {
                encode(&proto::Reply { push: Some(protobuf_push(channel, body)), ..Default::default() })
            }
        }
    }

    /// The server's heartbeat: `{}` in JSON, an empty Reply (0x00) in Protobuf.
    pub fn ping(self) -> &'static [u8] {
        match self {
            WireFormat::Json => b"{}",
            WireFormat::Protobuf => &[0],
        }
    }

    /// What goes between replies packed in one frame: b"\n" in JSON, nothing in Protobuf (each reply carries its length).
    pub fn separator(self) -> &'static [u8] {
        match self {
            WireFormat::Json => b"\n",
            WireFormat::Protobuf => b"",
        }
    }

    /// Whether frames of this format are WebSocket text (JSON) or binary (Protobuf) frames.
    pub fn is_text(self) -> bool {
        self == WireFormat::Json
    }

    /// The commands of one frame, decoded one at a time as the caller handles them (a frame
    /// usually holds one or two; decoding them all up front cost every connection a heap block
    /// of commands at connect, and the holes those left measurably raised idle memory).
    ///
    /// A part of the frame that cannot be read (malformed JSON line, malformed or truncated
    /// Protobuf) yields an error and ends the iteration: the caller disconnects, since whatever
    /// followed the bad part cannot be trusted either. A command that is well-formed but has an
    /// unusable field is yielded as `Ok(Err((id, error)))` in its place, so the caller answers it
    /// and goes on.
    pub fn commands(self, frame: &[u8]) -> Commands<'_> {
        let state = match self {
            WireFormat::Json => match std::str::from_utf8(frame) {
                // Split and trimmed exactly as the server did before there were two formats.
                Ok(text) => CommandsState::Json(text.split('\n')),
                Err(_) => CommandsState::Failed(malformed("malformed command: not UTF-8")),
            },
            WireFormat::Protobuf => CommandsState::Protobuf(frame),
        };
        Commands { state }
    }

    /// Every command of one frame (see [`WireFormat::commands`]), or the first error.
    pub fn decode_commands(self, frame: &[u8]) -> Result<Vec<Decoded>, ProtocolError> {
        self.commands(frame).collect()
    }
}

/// The commands of one frame: see [`WireFormat::commands`].
pub struct Commands<'a> {
    state: CommandsState<'a>,
}

enum CommandsState<'a> {
    Json(std::str::Split<'a, char>),
    /// What is left of the frame.
    Protobuf(&'a [u8]),
    /// The frame could not be read at all: this error comes next, then nothing.
    Failed(ProtocolError),
    Done,
}

fn malformed(message: impl Into<String>) -> ProtocolError {
    ProtocolError::bad_request().with_message(message)
}

impl Iterator for Commands<'_> {
    type Item = Result<Decoded, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = match &mut self.state {
            CommandsState::Json(lines) => {
                let line = lines.map(str::trim).find(|line| !line.is_empty())?;
                serde_json::from_str::<Command>(line).map(Ok).map_err(|e| malformed(format!("malformed command: {e}")))
            }
            CommandsState::Protobuf(frame) => {
                if frame.is_empty() {
                    return None;
                }
                // Advances `frame` past the command, so the next one starts where this one ended.
                proto::Command::decode_length_delimited(frame)
                    .map(|command| {
                        let id = command.id;
                        Command::try_from(command).map_err(|e| (id, e))
                    })
                    .map_err(|e| malformed(format!("malformed protobuf command: {e}")))
            }
            CommandsState::Failed(_) => match std::mem::replace(&mut self.state, CommandsState::Done) {
                CommandsState::Failed(error) => Err(error),
                _ => return None,
            },
            CommandsState::Done => return None,
        };
        if item.is_err() {
            self.state = CommandsState::Done;
        }
        Some(item)
    }
}

fn json_result(id: u32, body: ResultBody<'_>) -> String {
    match body {
        ResultBody::Connect(r) => reply::result(id, "connect", r),
        ResultBody::Subscribe(r) => reply::result(id, "subscribe", r),
        ResultBody::Unsubscribe => reply::result(id, "unsubscribe", &EmptyResult {}),
        ResultBody::Publish => reply::result(id, "publish", &EmptyResult {}),
        ResultBody::Presence(r) => reply::result(id, "presence", r),
        ResultBody::PresenceStats(r) => reply::result(id, "presence_stats", r),
        ResultBody::History(r) => reply::result(id, "history", r),
        ResultBody::Ping => reply::result(id, "ping", &EmptyResult {}),
        ResultBody::Rpc(r) => reply::result(id, "rpc", r),
        ResultBody::Refresh(r) => reply::result(id, "refresh", r),
        ResultBody::SubRefresh(r) => reply::result(id, "sub_refresh", r),
    }
}

fn json_push(channel: &str, body: PushBody<'_>) -> String {
    match body {
        PushBody::Pub(p) => reply::push(channel, "pub", p),
        PushBody::Join(info) => reply::push(channel, "join", &reply::JoinLeave { info }),
        PushBody::Leave(info) => reply::push(channel, "leave", &reply::JoinLeave { info }),
        PushBody::Unsubscribe { code, reason } => {
            reply::push(channel, "unsubscribe", &reply::Unsubscribe { code, reason })
        }
        PushBody::Message(data) => reply::push(channel, "message", &reply::Message { data }),
        PushBody::Subscribe(r) => reply::push(channel, "subscribe", r),
    }
}

/// Empty results are still sent as present (empty) messages: the field that is set is what tells
/// the client which method the reply answers.
fn protobuf_result(id: u32, body: ResultBody<'_>) -> proto::Reply {
    let mut reply = proto::Reply { id, ..Default::default() };
    match body {
        ResultBody::Connect(r) => reply.connect = Some(r.into()),
        ResultBody::Subscribe(r) => reply.subscribe = Some(r.into()),
        ResultBody::Unsubscribe => reply.unsubscribe = Some(proto::UnsubscribeResult {}),
        ResultBody::Publish => reply.publish = Some(proto::PublishResult {}),
        ResultBody::Presence(r) => reply.presence = Some(r.into()),
        ResultBody::PresenceStats(r) => {
            reply.presence_stats =
                Some(proto::PresenceStatsResult { num_clients: r.num_clients, num_users: r.num_users })
        }
        ResultBody::History(r) => reply.history = Some(r.into()),
        ResultBody::Ping => reply.ping = Some(proto::PingResult {}),
        ResultBody::Rpc(r) => reply.rpc = Some(proto::RpcResult { data: json_bytes(r.data.as_deref()) }),
        ResultBody::Refresh(r) => reply.refresh = Some(r.into()),
        ResultBody::SubRefresh(r) => {
            reply.sub_refresh = Some(proto::SubRefreshResult { expires: r.expires, ttl: r.ttl })
        }
    }
    reply
}

fn protobuf_push(channel: &str, body: PushBody<'_>) -> proto::Push {
    let mut push = proto::Push { channel: channel.to_owned(), ..Default::default() };
    match body {
        PushBody::Pub(p) => push.publication = Some(p.into()),
        PushBody::Join(info) => push.join = Some(proto::Join { info: Some(info.into()) }),
        PushBody::Leave(info) => push.leave = Some(proto::Leave { info: Some(info.into()) }),
        PushBody::Unsubscribe { code, reason } => {
            push.unsubscribe = Some(proto::Unsubscribe { code, reason: reason.to_owned() })
        }
        PushBody::Message(data) => push.message = Some(proto::Message { data: data.get().as_bytes().to_vec() }),
        PushBody::Subscribe(r) => {
            push.subscribe = Some(proto::Subscribe {
                recoverable: r.recoverable,
                epoch: r.epoch.clone(),
                offset: r.offset,
                positioned: r.positioned,
                data: json_bytes(r.data.as_deref()),
            })
        }
    }
    push
}

/// The length-delimited form, in a buffer sized once from the encoded length.
fn encode(reply: &proto::Reply) -> Vec<u8> {
    reply.encode_length_delimited_to_vec()
}

fn json_bytes(value: Option<&RawValue>) -> Vec<u8> {
    value.map_or_else(Vec::new, |v| v.get().as_bytes().to_vec())
}

/// Publication and server times are milliseconds since the epoch: far below `i64::MAX`, but a
/// corrupt value saturates rather than turning negative.
fn wire_time(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl From<&ProtocolError> for proto::Error {
    fn from(e: &ProtocolError) -> Self {
        Self { code: e.code, message: e.message.clone(), temporary: e.temporary }
    }
}

impl From<&ClientInfo> for proto::ClientInfo {
    fn from(info: &ClientInfo) -> Self {
        Self {
            user: info.user.clone(),
            client: info.client.clone(),
            conn_info: json_bytes(info.conn_info.as_deref()),
            chan_info: json_bytes(info.chan_info.as_deref()),
        }
    }
}

impl From<&Publication> for proto::Publication {
    fn from(p: &Publication) -> Self {
        Self {
            data: p.data.get().as_bytes().to_vec(),
            info: p.info.as_ref().map(Into::into),
            offset: p.offset,
            tags: p.tags.clone(),
            time: wire_time(p.time),
            ..Default::default()
        }
    }
}

fn publications(list: &[Arc<Publication>]) -> Vec<proto::Publication> {
    list.iter().map(|p| p.as_ref().into()).collect()
}

impl From<&SubscribeResult> for proto::SubscribeResult {
    fn from(r: &SubscribeResult) -> Self {
        Self {
            expires: r.expires,
            ttl: r.ttl,
            recoverable: r.recoverable,
            epoch: r.epoch.clone(),
            publications: publications(&r.publications),
            recovered: r.recovered,
            offset: r.offset,
            positioned: r.positioned,
            data: json_bytes(r.data.as_deref()),
            was_recovering: r.was_recovering,
            delta: false,
        }
    }
}

impl From<&ConnectResult> for proto::ConnectResult {
    fn from(r: &ConnectResult) -> Self {
        Self {
            client: r.client.clone(),
            version: r.version.clone(),
            expires: r.expires,
            ttl: r.ttl,
            data: json_bytes(r.data.as_deref()),
            subs: r.subs.iter().map(|(channel, sub)| (channel.clone(), sub.into())).collect(),
            ping: r.ping,
            pong: r.pong,
            session: r.session.clone(),
            node: r.node.clone(),
            time: wire_time(r.time),
        }
    }
}

impl From<&PresenceResult> for proto::PresenceResult {
    fn from(r: &PresenceResult) -> Self {
        Self { presence: r.presence.iter().map(|(client, info)| (client.clone(), info.into())).collect() }
    }
}

impl From<&HistoryResult> for proto::HistoryResult {
    fn from(r: &HistoryResult) -> Self {
        Self { publications: publications(&r.publications), epoch: r.epoch.clone(), offset: r.offset }
    }
}

impl From<&RefreshResult> for proto::RefreshResult {
    fn from(r: &RefreshResult) -> Self {
        Self { client: r.client.clone(), version: r.version.clone(), expires: r.expires, ttl: r.ttl }
    }
}

// ---------------------------------------------------------------------------------------------
// Client -> server

fn not_json() -> ProtocolError {
    ProtocolError::bad_request().with_message("data must be JSON")
}

/// Empty bytes are an absent value (proto3 cannot tell them apart); anything else must be JSON.
fn json_payload(bytes: &[u8]) -> Result<Option<RawJson>, ProtocolError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let raw = serde_json::from_slice::<Box<RawValue>>(bytes).map_err(|_| not_json())?;
    Ok(Some(Arc::from(raw)))
}

impl TryFrom<proto::Command> for Command {
    type Error = ProtocolError;

    fn try_from(c: proto::Command) -> Result<Self, ProtocolError> {
        Ok(Command {
            id: c.id,
            connect: c.connect.map(TryInto::try_into).transpose()?,
            subscribe: c.subscribe.map(TryInto::try_into).transpose()?,
            unsubscribe: c.unsubscribe.map(|r| protocol::UnsubscribeRequest { channel: r.channel }),
            publish: c.publish.map(TryInto::try_into).transpose()?,
            presence: c.presence.map(|r| protocol::PresenceRequest { channel: r.channel }),
            presence_stats: c.presence_stats.map(|r| protocol::PresenceStatsRequest { channel: r.channel }),
            history: c.history.map(Into::into),
            ping: c.ping.map(|_| protocol::Empty {}),
            send: c.send.map(TryInto::try_into).transpose()?,
            rpc: c.rpc.map(TryInto::try_into).transpose()?,
            refresh: c.refresh.map(|r| protocol::RefreshRequest { token: r.token }),
            sub_refresh: c.sub_refresh.map(|r| protocol::SubRefreshRequest { channel: r.channel, token: r.token }),
        })
    }
}

impl TryFrom<proto::PublishRequest> for protocol::PublishRequest {
    type Error = ProtocolError;

    fn try_from(r: proto::PublishRequest) -> Result<Self, ProtocolError> {
        Ok(Self { data: json_payload(&r.data)?, channel: r.channel })
    }
}

impl TryFrom<proto::SendRequest> for protocol::SendRequest {
    type Error = ProtocolError;

    fn try_from(r: proto::SendRequest) -> Result<Self, ProtocolError> {
        Ok(Self { data: json_payload(&r.data)? })
    }
}

impl TryFrom<proto::RpcRequest> for protocol::RpcRequest {
    type Error = ProtocolError;

    fn try_from(r: proto::RpcRequest) -> Result<Self, ProtocolError> {
        Ok(Self { data: json_payload(&r.data)?, method: r.method })
    }
}

impl TryFrom<proto::ConnectRequest> for protocol::ConnectRequest {
    type Error = ProtocolError;

    fn try_from(r: proto::ConnectRequest) -> Result<Self, ProtocolError> {
        Ok(Self {
            token: r.token,
            data: json_payload(&r.data)?,
            subs: r
                .subs
                .into_iter()
                .map(|(channel, sub)| Ok((channel, sub.try_into()?)))
                .collect::<Result<_, ProtocolError>>()?,
            name: r.name,
            version: r.version,
            headers: r.headers,
        })
    }
}

impl TryFrom<proto::SubscribeRequest> for protocol::SubscribeRequest {
    type Error = ProtocolError;

    fn try_from(r: proto::SubscribeRequest) -> Result<Self, ProtocolError> {
        Ok(Self {
            data: json_payload(&r.data)?,
            channel: r.channel,
            token: r.token,
            recover: r.recover,
            epoch: r.epoch,
            offset: r.offset,
            positioned: r.positioned,
            recoverable: r.recoverable,
            join_leave: r.join_leave,
            delta: r.delta,
            tf: r.tf.map(Into::into),
        })
    }
}

impl From<proto::FilterNode> for protocol::FilterNode {
    fn from(n: proto::FilterNode) -> Self {
        Self {
            op: n.op,
            key: n.key,
            path: n.path,
            cmp: n.cmp,
            val: n.val,
            vals: n.vals,
            nodes: n.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::HistoryRequest> for protocol::HistoryRequest {
    fn from(r: proto::HistoryRequest) -> Self {
        Self {
            channel: r.channel,
            limit: i64::from(r.limit),
            since: r.since.map(|s| protocol::Since { offset: s.offset, epoch: s.epoch }),
            reverse: r.reverse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Method;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn raw(json: &str) -> RawJson {
        Arc::from(RawValue::from_string(json.to_owned()).expect("valid JSON"))
    }

    fn decode_reply(bytes: &[u8]) -> proto::Reply {
        let mut rest = bytes;
        let reply = proto::Reply::decode_length_delimited(&mut rest).expect("a length-delimited Reply");
        assert!(rest.is_empty(), "exactly one Reply");
        reply
    }

    fn info() -> ClientInfo {
        ClientInfo {
            user: "u1".into(),
            client: "c1".into(),
            conn_info: Some(raw(r#"{"name":"Ann"}"#)),
            chan_info: None,
        }
    }

    fn publication() -> Publication {
        Publication {
            data: raw(r#"{"a":1}"#),
            info: Some(info()),
            offset: 42,
            tags: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            time: 1_700_000_000_123,
            meta: None,
        }
    }

    fn proto_info() -> proto::ClientInfo {
        proto::ClientInfo {
            user: "u1".into(),
            client: "c1".into(),
            conn_info: br#"{"name":"Ann"}"#.to_vec(),
            chan_info: Vec::new(),
        }
    }

    fn proto_publication() -> proto::Publication {
        proto::Publication {
            data: br#"{"a":1}"#.to_vec(),
            info: Some(proto_info()),
            offset: 42,
            tags: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            time: 1_700_000_000_123,
            ..Default::default()
        }
    }

    fn subscribe_result() -> SubscribeResult {
        SubscribeResult {
            expires: true,
            ttl: 60,
            recoverable: true,
            epoch: "ep".into(),
            publications: vec![Arc::new(publication())],
            recovered: true,
            offset: 42,
            positioned: true,
            data: Some(raw(r#""welcome""#)),
            was_recovering: true,
        }
    }

    fn proto_subscribe_result() -> proto::SubscribeResult {
        proto::SubscribeResult {
            expires: true,
            ttl: 60,
            recoverable: true,
            epoch: "ep".into(),
            publications: vec![proto_publication()],
            recovered: true,
            offset: 42,
            positioned: true,
            data: br#""welcome""#.to_vec(),
            was_recovering: true,
            delta: false,
        }
    }

    fn connect_result() -> ConnectResult {
        ConnectResult {
            client: "c1".into(),
            version: "1.0".into(),
            expires: true,
            ttl: 30,
            data: Some(raw("[1,2]")),
            subs: BTreeMap::from([("news".to_owned(), subscribe_result())]),
            ping: 25,
            pong: true,
            session: "s".into(),
            node: "n".into(),
            time: 1_700_000_000_000,
        }
    }

    fn history_result() -> HistoryResult {
        HistoryResult { publications: vec![Arc::new(publication())], epoch: "ep".into(), offset: 42 }
    }

    fn presence_result() -> PresenceResult {
        PresenceResult { presence: BTreeMap::from([("c1".to_owned(), info())]) }
    }

    #[test]
    fn every_result_round_trips_through_protobuf() {
        let connect = connect_result();
        let subscribe = subscribe_result();
        let presence = presence_result();
        let stats = PresenceStatsResult { num_clients: 3, num_users: 2 };
        let history = history_result();
        let rpc = RpcResult { data: Some(raw(r#"{"ok":true}"#)) };
        let refresh = RefreshResult { client: "c1".into(), version: "1.0".into(), expires: true, ttl: 9 };
        let sub_refresh = SubRefreshResult { expires: true, ttl: 8 };
        let cases: Vec<(ResultBody<'_>, proto::Reply)> = vec![
            (
                ResultBody::Connect(&connect),
                proto::Reply {
                    connect: Some(proto::ConnectResult {
                        client: "c1".into(),
                        version: "1.0".into(),
                        expires: true,
                        ttl: 30,
                        data: b"[1,2]".to_vec(),
                        subs: BTreeMap::from([("news".to_owned(), proto_subscribe_result())]),
                        ping: 25,
                        pong: true,
                        session: "s".into(),
                        node: "n".into(),
                        time: 1_700_000_000_000,
                    }),
                    ..Default::default()
                },
            ),
            (
                ResultBody::Subscribe(&subscribe),
                proto::Reply { subscribe: Some(proto_subscribe_result()), ..Default::default() },
            ),
            (
                ResultBody::Unsubscribe,
                proto::Reply { unsubscribe: Some(proto::UnsubscribeResult {}), ..Default::default() },
            ),
            (ResultBody::Publish, proto::Reply { publish: Some(proto::PublishResult {}), ..Default::default() }),
            (
                ResultBody::Presence(&presence),
                proto::Reply {
                    presence: Some(proto::PresenceResult {
                        presence: BTreeMap::from([("c1".to_owned(), proto_info())]),
                    }),
                    ..Default::default()
                },
            ),
            (
                ResultBody::PresenceStats(&stats),
                proto::Reply {
                    presence_stats: Some(proto::PresenceStatsResult { num_clients: 3, num_users: 2 }),
                    ..Default::default()
                },
            ),
            (
                ResultBody::History(&history),
                proto::Reply {
                    history: Some(proto::HistoryResult {
                        publications: vec![proto_publication()],
                        epoch: "ep".into(),
                        offset: 42,
                    }),
                    ..Default::default()
                },
            ),
            (ResultBody::Ping, proto::Reply { ping: Some(proto::PingResult {}), ..Default::default() }),
            (
                ResultBody::Rpc(&rpc),
                proto::Reply { rpc: Some(proto::RpcResult { data: br#"{"ok":true}"#.to_vec() }), ..Default::default() },
            ),
            (
                ResultBody::Refresh(&refresh),
                proto::Reply {
                    refresh: Some(proto::RefreshResult {
                        client: "c1".into(),
                        version: "1.0".into(),
                        expires: true,
                        ttl: 9,
                    }),
                    ..Default::default()
                },
            ),
            (
                ResultBody::SubRefresh(&sub_refresh),
                proto::Reply {
                    sub_refresh: Some(proto::SubRefreshResult { expires: true, ttl: 8 }),
                    ..Default::default()
                },
            ),
        ];
        for (index, (body, mut expected)) in cases.into_iter().enumerate() {
            let id = index as u32 + 1;
            expected.id = id;
            assert_eq!(decode_reply(&WireFormat::Protobuf.result(id, body)), expected, "{body:?}");
        }
    }

    #[test]
    fn empty_results_are_present_so_the_client_knows_the_method() {
        // id 7 (field 1 varint) then publish (field 8, length 0): 08 07 42 00, prefixed by 4.
        assert_eq!(WireFormat::Protobuf.result(7, ResultBody::Publish), [4, 0x08, 7, 0x42, 0]);
    }

    #[test]
    fn error_round_trips_through_protobuf() {
        let reply = decode_reply(&WireFormat::Protobuf.error(9, &ProtocolError::too_many_requests()));
        let expected = proto::Error { code: 111, message: "too many requests".into(), temporary: true };
        assert_eq!(reply, proto::Reply { id: 9, error: Some(expected), ..Default::default() });
    }

    #[test]
    fn every_push_round_trips_through_protobuf() {
        let publication = publication();
        let info = info();
        let subscribe = subscribe_result();
        let message = raw(r#"{"herald":{"gap":{"channel":"news","offsets":[1]}}}"#);
        let cases: Vec<(PushBody<'_>, proto::Push)> = vec![
            (PushBody::Pub(&publication), proto::Push { publication: Some(proto_publication()), ..Default::default() }),
            (
                PushBody::Join(&info),
                proto::Push { join: Some(proto::Join { info: Some(proto_info()) }), ..Default::default() },
            ),
            (
                PushBody::Leave(&info),
                proto::Push { leave: Some(proto::Leave { info: Some(proto_info()) }), ..Default::default() },
            ),
            (
                PushBody::Unsubscribe { code: 2500, reason: "insufficient state" },
                proto::Push {
                    unsubscribe: Some(proto::Unsubscribe { code: 2500, reason: "insufficient state".into() }),
                    ..Default::default()
                },
            ),
            (
                PushBody::Message(&message),
                proto::Push {
                    message: Some(proto::Message { data: message.get().as_bytes().to_vec() }),
                    ..Default::default()
                },
            ),
            (
                PushBody::Subscribe(&subscribe),
                proto::Push {
                    subscribe: Some(proto::Subscribe {
                        recoverable: true,
                        epoch: "ep".into(),
                        offset: 42,
                        positioned: true,
                        data: br#""welcome""#.to_vec(),
                    }),
                    ..Default::default()
                },
            ),
        ];
        for (body, mut expected) in cases {
            expected.channel = "news".into();
            let reply = decode_reply(&WireFormat::Protobuf.push("news", body));
            assert_eq!(reply, proto::Reply { push: Some(expected), ..Default::default() }, "{body:?}");
        }
    }

    #[test]
    fn push_without_channel_leaves_it_empty() {
        let data = raw("1");
        let reply = decode_reply(&WireFormat::Protobuf.push("", PushBody::Message(&data)));
        let push = reply.push.expect("a push");
        assert_eq!(push.channel, "");
        assert_eq!(push.message, Some(proto::Message { data: b"1".to_vec() }));
    }

    #[test]
    fn json_forms_are_the_reply_module_output() {
        let json = WireFormat::Json;
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("JSON is UTF-8");
        let connect = connect_result();
        let subscribe = subscribe_result();
        let presence = presence_result();
        let stats = PresenceStatsResult { num_clients: 3, num_users: 2 };
        let history = history_result();
        let rpc = RpcResult { data: Some(raw(r#"{"ok":true}"#)) };
        let refresh = RefreshResult { client: "c1".into(), version: "1.0".into(), expires: false, ttl: 0 };
        let sub_refresh = SubRefreshResult { expires: true, ttl: 8 };
        let results = [
            (json.result(1, ResultBody::Connect(&connect)), reply::result(1, "connect", &connect)),
            (json.result(2, ResultBody::Subscribe(&subscribe)), reply::result(2, "subscribe", &subscribe)),
            (json.result(3, ResultBody::Unsubscribe), reply::result(3, "unsubscribe", &EmptyResult {})),
            (json.result(4, ResultBody::Publish), reply::result(4, "publish", &EmptyResult {})),
            (json.result(5, ResultBody::Presence(&presence)), reply::result(5, "presence", &presence)),
            (json.result(6, ResultBody::PresenceStats(&stats)), reply::result(6, "presence_stats", &stats)),
            (json.result(7, ResultBody::History(&history)), reply::result(7, "history", &history)),
            (json.result(8, ResultBody::Ping), reply::result(8, "ping", &EmptyResult {})),
            (json.result(9, ResultBody::Rpc(&rpc)), reply::result(9, "rpc", &rpc)),
            (json.result(10, ResultBody::Refresh(&refresh)), reply::result(10, "refresh", &refresh)),
            (json.result(11, ResultBody::SubRefresh(&sub_refresh)), reply::result(11, "sub_refresh", &sub_refresh)),
        ];
        for (ours, theirs) in results {
            assert_eq!(text(ours), theirs);
        }
        assert_eq!(text(json.result(4, ResultBody::Publish)), r#"{"id":4,"publish":{}}"#);

        let error = ProtocolError::permission_denied();
        assert_eq!(text(json.error(6, &error)), reply::error(6, &error));

        let p = publication();
        let info = info();
        let data = raw(r#"{"x":[1]}"#);
        let pushes = [
            (json.push("news", PushBody::Pub(&p)), reply::push("news", "pub", &p)),
            (json.push("news", PushBody::Join(&info)), reply::push("news", "join", &reply::JoinLeave { info: &info })),
            (
                json.push("news", PushBody::Leave(&info)),
                reply::push("news", "leave", &reply::JoinLeave { info: &info }),
            ),
            (
                json.push("news", PushBody::Unsubscribe { code: 2000, reason: "server" }),
                reply::push("news", "unsubscribe", &reply::Unsubscribe { code: 2000, reason: "server" }),
            ),
            (json.push("", PushBody::Message(&data)), reply::push("", "message", &reply::Message { data: &data })),
            (json.push("news", PushBody::Subscribe(&subscribe)), reply::push("news", "subscribe", &subscribe)),
        ];
        for (ours, theirs) in pushes {
            assert_eq!(text(ours), theirs);
        }
    }

    #[test]
    fn heartbeat_separator_and_frame_kind() {
        assert_eq!(WireFormat::Json.ping(), b"{}");
        assert_eq!(WireFormat::Protobuf.ping(), [0]);
        assert_eq!(decode_reply(WireFormat::Protobuf.ping()), proto::Reply::default());
        assert_eq!(WireFormat::Json.separator(), b"\n");
        assert!(WireFormat::Protobuf.separator().is_empty());
        assert!(WireFormat::Json.is_text());
        assert!(!WireFormat::Protobuf.is_text());
        assert_eq!(WireFormat::default(), WireFormat::Json);
    }

    fn frame(commands: &[proto::Command]) -> Vec<u8> {
        commands.iter().flat_map(|c| c.encode_length_delimited_to_vec()).collect()
    }

    fn methods(decoded: Vec<Decoded>) -> Vec<(u32, Method)> {
        decoded.into_iter().map(|d| d.expect("accepted").into_method()).collect()
    }

    #[test]
    fn protobuf_frame_of_every_command_decodes() {
        let filter = proto::FilterNode {
            op: "and".into(),
            nodes: vec![
                proto::FilterNode { key: "kind".into(), cmp: "eq".into(), val: "a".into(), ..Default::default() },
                proto::FilterNode {
                    path: "/price".into(),
                    cmp: "in".into(),
                    vals: vec!["1".into(), "2".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let commands = [
            proto::Command {
                id: 1,
                connect: Some(proto::ConnectRequest {
                    token: "jwt".into(),
                    data: br#"{"hello":1}"#.to_vec(),
                    subs: HashMap::from([(
                        "news".to_owned(),
                        proto::SubscribeRequest { recover: true, offset: 5, epoch: "e".into(), ..Default::default() },
                    )]),
                    name: "swift".into(),
                    version: "0.1".into(),
                    headers: HashMap::from([("x-a".to_owned(), "b".to_owned())]),
                    flag: 1,
                }),
                ..Default::default()
            },
            proto::Command {
                id: 2,
                subscribe: Some(proto::SubscribeRequest {
                    channel: "quotes".into(),
                    recover: true,
                    epoch: "ep".into(),
                    offset: 17,
                    join_leave: true,
                    tf: Some(filter),
                    ..Default::default()
                }),
                ..Default::default()
            },
            proto::Command {
                id: 3,
                publish: Some(proto::PublishRequest { channel: "chat".into(), data: br#"{"text":"hi"}"#.to_vec() }),
                ..Default::default()
            },
            proto::Command {
                id: 4,
                history: Some(proto::HistoryRequest {
                    channel: "chat".into(),
                    limit: 10,
                    since: Some(proto::StreamPosition { offset: 3, epoch: "ep".into() }),
                    reverse: true,
                }),
                ..Default::default()
            },
            proto::Command {
                id: 5,
                rpc: Some(proto::RpcRequest { data: b"[1]".to_vec(), method: "herald.ack".into() }),
                ..Default::default()
            },
            proto::Command { send: Some(proto::SendRequest { data: b"\"ping\"".to_vec() }), ..Default::default() },
            proto::Command { id: 6, ping: Some(proto::PingRequest {}), ..Default::default() },
            proto::Command {
                id: 7,
                presence: Some(proto::PresenceRequest { channel: "chat".into() }),
                ..Default::default()
            },
            proto::Command {
                id: 8,
                presence_stats: Some(proto::PresenceStatsRequest { channel: "chat".into() }),
                ..Default::default()
            },
            proto::Command {
                id: 9,
                refresh: Some(proto::RefreshRequest { token: "jwt2".into() }),
                ..Default::default()
            },
            proto::Command {
                id: 10,
                sub_refresh: Some(proto::SubRefreshRequest { channel: "chat".into(), token: "st".into() }),
                ..Default::default()
            },
            proto::Command {
                id: 11,
                unsubscribe: Some(proto::UnsubscribeRequest { channel: "chat".into() }),
                ..Default::default()
            },
            proto::Command::default(),
        ];
        let decoded = WireFormat::Protobuf.decode_commands(&frame(&commands)).expect("well-formed frame");
        let mut methods = methods(decoded).into_iter();
        let mut next = || methods.next().expect("one method per command");

        let (1, Method::Connect(c)) = next() else { panic!("connect") };
        assert_eq!(c.token, "jwt");
        assert_eq!(c.data.as_deref().map(RawValue::get), Some(r#"{"hello":1}"#));
        assert_eq!((c.name.as_str(), c.version.as_str()), ("swift", "0.1"));
        assert_eq!(c.headers.get("x-a").map(String::as_str), Some("b"));
        let sub = &c.subs["news"];
        assert!(sub.recover);
        assert_eq!((sub.offset, sub.epoch.as_str()), (5, "e"));
        assert!(sub.data.is_none(), "empty bytes are no data");

        let (2, Method::Subscribe(s)) = next() else { panic!("subscribe") };
        assert_eq!(s.channel, "quotes");
        assert!(s.recover && s.join_leave);
        assert_eq!((s.epoch.as_str(), s.offset), ("ep", 17));
        let tf = s.tf.expect("a filter");
        assert_eq!(tf.op, "and");
        assert_eq!(
            tf.nodes[0],
            protocol::FilterNode { key: "kind".into(), cmp: "eq".into(), val: "a".into(), ..Default::default() }
        );
        assert_eq!(
            tf.nodes[1],
            protocol::FilterNode {
                path: "/price".into(),
                cmp: "in".into(),
                vals: vec!["1".into(), "2".into()],
                ..Default::default()
            }
        );

        let (3, Method::Publish(p)) = next() else { panic!("publish") };
        assert_eq!(p.channel, "chat");
        assert_eq!(p.data.as_deref().map(RawValue::get), Some(r#"{"text":"hi"}"#));

        let (4, Method::History(h)) = next() else { panic!("history") };
        assert_eq!((h.channel.as_str(), h.limit, h.reverse), ("chat", 10, true));
        assert_eq!(h.since, Some(protocol::Since { offset: 3, epoch: "ep".into() }));

        let (5, Method::Rpc(r)) = next() else { panic!("rpc") };
        assert_eq!(r.method, "herald.ack");
        assert_eq!(r.data.as_deref().map(RawValue::get), Some("[1]"));

        let (0, Method::Send(s)) = next() else { panic!("send") };
        assert_eq!(s.data.as_deref().map(RawValue::get), Some("\"ping\""));

        assert!(matches!(next(), (6, Method::Ping)));
        assert!(matches!(next(), (7, Method::Presence(r)) if r.channel == "chat"));
        assert!(matches!(next(), (8, Method::PresenceStats(r)) if r.channel == "chat"));
        assert!(matches!(next(), (9, Method::Refresh(r)) if r.token == "jwt2"));
        assert!(matches!(next(), (10, Method::SubRefresh(r)) if r.channel == "chat" && r.token == "st"));
        assert!(matches!(next(), (11, Method::Unsubscribe(r)) if r.channel == "chat"));
        assert!(matches!(next(), (0, Method::Pong)));
        assert!(methods.next().is_none());
    }

    #[test]
    fn empty_protobuf_command_is_a_pong() {
        let decoded = WireFormat::Protobuf.decode_commands(&[0]).expect("well-formed");
        assert!(matches!(methods(decoded).as_slice(), [(0, Method::Pong)]));
        assert!(WireFormat::Protobuf.decode_commands(&[]).expect("nothing to decode").is_empty());
    }

    #[test]
    fn non_json_data_refuses_that_command_only() {
        let commands = [
            proto::Command {
                id: 3,
                publish: Some(proto::PublishRequest { channel: "chat".into(), data: vec![0xff, 0x00, 0x01] }),
                ..Default::default()
            },
            proto::Command {
                id: 4,
                connect: Some(proto::ConnectRequest {
                    subs: HashMap::from([(
                        "news".to_owned(),
                        proto::SubscribeRequest { data: b"{not json".to_vec(), ..Default::default() },
                    )]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            proto::Command { id: 5, ping: Some(proto::PingRequest {}), ..Default::default() },
        ];
        let mut decoded =
            WireFormat::Protobuf.decode_commands(&frame(&commands)).expect("well-formed frame").into_iter();
        for id in [3, 4] {
            let Some(Err((refused, error))) = decoded.next() else { panic!("command {id} refused") };
            assert_eq!(refused, id);
            assert_eq!(error.code, 107);
            assert!(error.message.contains("JSON"), "{}", error.message);
        }
        let Some(Ok(ping)) = decoded.next() else { panic!("the ping after them is accepted") };
        assert!(matches!(ping.into_method(), (5, Method::Ping)));
    }

    #[test]
    fn truncated_or_garbage_protobuf_frame_is_a_bad_request() {
        let whole = proto::Command {
            id: 1,
            publish: Some(proto::PublishRequest { channel: "chat".into(), data: b"{}".to_vec() }),
            ..Default::default()
        }
        .encode_length_delimited_to_vec();
        let garbage: [&[u8]; 4] = [
            &whole[..whole.len() - 1],
            // A length prefix promising more than the frame holds.
            &[0x7f, 0x08, 0x01],
            // A varint that never ends.
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            // A field with wire type 7, which does not exist.
            &[0x01, 0x0f],
        ];
        for bad in garbage {
            let error = WireFormat::Protobuf.decode_commands(bad).expect_err("refused");
            assert_eq!(error.code, 107, "{bad:?}");
        }
        let mut tail = whole.clone();
        tail.extend_from_slice(&whole[..3]);
        assert_eq!(WireFormat::Protobuf.decode_commands(&tail).expect_err("truncated second command").code, 107);
    }

    #[test]
    fn json_frames_split_into_lines_as_before() {
        let frame =
            b"{\"id\":1,\"ping\":{}}\n\n  \r\n{\"id\":2,\"publish\":{\"channel\":\"c\",\"data\":{\"a\":1}}}\r\n{}\n";
        let decoded = methods(WireFormat::Json.decode_commands(frame).expect("well-formed"));
        assert_eq!(decoded.len(), 3, "blank lines skipped");
        assert!(matches!(decoded[0], (1, Method::Ping)));
        assert!(
            matches!(&decoded[1], (2, Method::Publish(p)) if p.data.as_deref().map(RawValue::get) == Some(r#"{"a":1}"#))
        );
        assert!(matches!(decoded[2], (0, Method::Pong)));

        assert!(WireFormat::Json.decode_commands(b"").expect("empty").is_empty());
        assert!(WireFormat::Json.decode_commands("\u{a0}\n".as_bytes()).expect("whitespace only").is_empty());
        for bad in [&b"{\"id\":1,\"ping\":{}}\n{\"id\":"[..], b"not json", b"\xff\xfe"] {
            assert_eq!(WireFormat::Json.decode_commands(bad).expect_err("malformed").code, 107);
        }
    }

    #[test]
    fn commands_before_a_malformed_part_come_first_then_the_error_ends_the_frame() {
        for (format, frame) in [
            (WireFormat::Json, b"{\"id\":1,\"ping\":{}}\n{\"id\":".to_vec()),
            (WireFormat::Protobuf, {
                let mut frame = proto::Command { id: 1, ping: Some(proto::PingRequest {}), ..Default::default() }
                    .encode_length_delimited_to_vec();
                frame.extend([0x20, 0x08]);
                frame
            }),
        ] {
            let mut commands = format.commands(&frame);
            let first = commands.next().expect("a first command").expect("readable").expect("usable");
            assert!(matches!(first.into_method(), (1, Method::Ping)), "{format:?}");
            assert_eq!(commands.next().expect("then the error").expect_err("malformed").code, 107, "{format:?}");
            assert!(commands.next().is_none(), "nothing after the error ({format:?})");
        }
    }

    const DATA: &[&str] = &["null", "0", "-1.5e3", r#""text""#, "[1,2,3]", r#"{"a":{"b":[true,false]}}"#, "{}"];

    proptest! {
        #[test]
        fn publications_survive_protobuf(
            data in proptest::sample::select(DATA),
            offset in any::<u64>(),
            time in 0..=i64::MAX as u64,
            tags in proptest::collection::btree_map("[a-z]{0,6}", ".{0,8}", 0..4),
            user in proptest::option::of("[a-z0-9]{0,8}"),
        ) {
            let publication = Publication {
                data: raw(data),
                info: user.map(|user| ClientInfo { user, client: "c".into(), conn_info: None, chan_info: Some(raw(data)) }),
                offset,
                tags,
                time,
                meta: None,
            };
            let reply = decode_reply(&WireFormat::Protobuf.push("ch", PushBody::Pub(&publication)));
            let push = reply.push.expect("a push");
            prop_assert_eq!(push.channel.as_str(), "ch");
            let got = push.publication.expect("a publication");
            prop_assert_eq!(&got.data[..], data.as_bytes());
            prop_assert_eq!(got.offset, publication.offset);
            prop_assert_eq!(got.time, publication.time as i64);
            prop_assert_eq!(&got.tags, &publication.tags);
            prop_assert_eq!(got.info.as_ref().map(|i| i.user.as_str()), publication.info.as_ref().map(|i| i.user.as_str()));
            prop_assert_eq!(
                got.info.as_ref().map(|i| i.chan_info.as_slice()),
                publication.info.as_ref().map(|_| data.as_bytes())
            );
            prop_assert!(got.info.as_ref().is_none_or(|i| i.conn_info.is_empty()));
        }
    }
}
