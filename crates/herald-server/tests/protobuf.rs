//! The Protobuf form of the client protocol with real sockets: a client that speaks it frame by
//! frame shares channels with JSON clients through every delivery path (a publication written by
//! the fan-out itself, bursts written by the connection's task, batch frames, join and leave,
//! acknowledged redelivery, the gap signal of a stalled client), and what is not Protobuf on such
//! a connection ends it with 3501.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_config::{Config, Namespace, NamespaceOptions};
use herald_core::protocol::Priority;
use herald_core::wire::proto;
use herald_server::Publish;
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client of the `centrifuge-protobuf` subprotocol that keeps every reply it has not consumed.
struct ProtobufClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    inbox: VecDeque<proto::Reply>,
    /// Replies per binary frame, in arrival order (a batch frame holds several).
    frame_sizes: Vec<usize>,
    closed: Option<u16>,
}

impl ProtobufClient {
    async fn open(server: &TestServer) -> Self {
        let mut request = server.ws_url().into_client_request().expect("a request");
        request.headers_mut().insert("sec-websocket-protocol", "centrifuge-protobuf".parse().expect("a header"));
        let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
        assert_eq!(
            response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()),
            Some(&b"centrifuge-protobuf"[..]),
            "the server names the subprotocol it speaks"
        );
        Self { socket, next_id: 0, inbox: VecDeque::new(), frame_sizes: Vec::new(), closed: None }
    }

    /// Opens a connection through a socket with a small receive buffer (see `common::Client`).
    async fn open_stalling(server: &TestServer) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let stream = socket.connect(server.addr).await.expect("tcp connect");
        let url = format!("{}?format=protobuf", server.ws_url());
        let (socket, _) =
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("websocket handshake");
        Self { socket, next_id: 0, inbox: VecDeque::new(), frame_sizes: Vec::new(), closed: None }
    }

    async fn connected(server: &TestServer, user: &str) -> Self {
        let mut client = Self::open(server).await;
        let reply = client
            .call(proto::Command {
                connect: Some(proto::ConnectRequest { token: token(user, None, &[]), ..Default::default() }),
                ..Default::default()
            })
            .await;
        assert!(reply.connect.is_some_and(|c| !c.client.is_empty()), "connected");
        client
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.socket.send(Message::Binary(bytes.into())).await.expect("send");
    }

    async fn send(&mut self, mut command: proto::Command) -> u32 {
        self.next_id += 1;
        command.id = self.next_id;
        self.send_bytes(command.encode_length_delimited_to_vec()).await;
        self.next_id
    }

    async fn call(&mut self, command: proto::Command) -> proto::Reply {
        let id = self.send(command).await;
        self.wait_for(&format!("reply {id}"), |reply| reply.id == id).await
    }

    async fn subscribe(&mut self, channel: &str, request: proto::SubscribeRequest) -> proto::SubscribeResult {
        let subscribe = proto::SubscribeRequest { channel: channel.into(), ..request };
        let reply = self.call(proto::Command { subscribe: Some(subscribe), ..Default::default() }).await;
        assert_eq!(reply.error, None, "subscribe to {channel}");
        reply.subscribe.expect("a subscribe result")
    }

    /// Reads one frame into the inbox (answering pings); false when the connection ended.
    async fn read_frame(&mut self) -> bool {
        let message = match tokio::time::timeout(WAIT, self.socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(_))) | Ok(None) => return false,
            Err(_) => panic!("no frame from the server within {WAIT:?}"),
        };
        match message {
            Message::Binary(mut bytes) => {
                let mut replies = 0;
                while !bytes.is_empty() {
                    let reply = proto::Reply::decode_length_delimited(&mut bytes).expect("length-delimited replies");
                    replies += 1;
                    if reply == proto::Reply::default() {
                        // The server's ping: answered with an empty command.
                        self.send_bytes(vec![0]).await;
                        continue;
                    }
                    self.inbox.push_back(reply);
                }
                self.frame_sizes.push(replies);
            }
            Message::Text(text) => panic!("a text frame on a Protobuf connection: {text}"),
            Message::Close(frame) => {
                self.closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                return false;
            }
            _ => {}
        }
        true
    }

    async fn wait_for(&mut self, what: &str, pred: impl Fn(&proto::Reply) -> bool) -> proto::Reply {
        loop {
            if let Some(position) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(position).expect("present");
            }
            assert!(self.read_frame().await, "connection closed ({:?}) while waiting for {what}", self.closed);
        }
    }

    /// The next publication of `channel`, and its data as JSON.
    async fn publication(&mut self, channel: &str) -> (proto::Publication, Value) {
        let reply = self
            .wait_for(&format!("a publication on {channel}"), |r| {
                r.push.as_ref().is_some_and(|p| p.channel == channel && p.publication.is_some())
            })
            .await;
        let publication = reply.push.and_then(|p| p.publication).expect("a publication");
        let data = serde_json::from_slice(&publication.data).expect("JSON data");
        (publication, data)
    }

    async fn closed(&mut self) -> u16 {
        while self.closed.is_none() {
            if !self.read_frame().await && self.closed.is_none() {
                return 1006;
            }
        }
        self.closed.expect("a close code")
    }
}

fn protobuf_config() -> Config {
    let mut config = config();
    config.client.queue_max_size = 60_000;
    config.client.recovery_max_publication_limit = 5000;
    config.websocket.write_timeout = Duration::from_secs(30);
    let namespace = |name: &str, options: NamespaceOptions| Namespace { name: name.into(), options };
    config.channel.namespaces.push(namespace(
        "batched",
        NamespaceOptions { batch_max_size: 5, batch_max_delay: Duration::from_secs(3600), ..open_namespace() },
    ));
    config.channel.namespaces.push(namespace(
        "rooms",
        NamespaceOptions {
            ack_timeout: Duration::from_millis(100),
            ack_max_retries: 3,
            allow_tags_filter: true,
            ..open_namespace()
        },
    ));
    config.channel.namespaces.push(namespace("deep", NamespaceOptions { history_size: 5000, ..open_namespace() }));
    config
}

#[tokio::test]
async fn protobuf_and_json_subscribers_get_the_same_publications_through_every_write_path() {
    let server = TestServer::start(protobuf_config()).await;
    let mut protobuf = ProtobufClient::connected(&server, "pb").await;
    let mut json = server.connected(&token("js", None, &[])).await;
    let result = protobuf.subscribe("news", Default::default()).await;
    assert!(!result.epoch.is_empty(), "the channel keeps history");
    json.call(json!({"subscribe": {"channel": "news"}})).await;

    // Alone and well apart (the fan-out writes them itself), then in bursts (the connections'
    // tasks write them, several per frame).
    let mut sent = Vec::new();
    for n in 0..5 {
        let data = json!({"n": n, "text": "ü ✓ 日本", "list": [n, null, true]});
        server.publish("news", data.clone()).await;
        sent.push(data);
        protobuf.publication("news").await;
        json.publication("news").await;
    }
    let mut burst = Vec::new();
    for n in 5..200 {
        let data = json!({"n": n});
        burst.push(Publish::json("news", &data).expect("json"));
        sent.push(data);
    }
    for publish in burst {
        server.node.publish(publish).await.expect("publish");
    }
    let mut via_protobuf = Vec::new();
    let mut via_json = Vec::new();
    for _ in 5..200 {
        let (publication, data) = protobuf.publication("news").await;
        via_protobuf.push((publication.offset, data));
        let publication = json.publication("news").await;
        via_json.push((publication["offset"].as_u64().expect("offset"), publication["data"].clone()));
    }
    assert_eq!(via_protobuf, via_json, "the same publications, offsets and data in both formats");
    assert_eq!(via_protobuf.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), sent[5..]);
    let offsets: Vec<u64> = via_protobuf.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (6..=200).collect::<Vec<u64>>(), "in order, once");

    // A Protobuf client's publish reaches the JSON subscriber with its author.
    let reply = protobuf
        .call(proto::Command {
            publish: Some(proto::PublishRequest { channel: "news".into(), data: br#"{"from":"protobuf"}"#.to_vec() }),
            ..Default::default()
        })
        .await;
    assert!(reply.error.is_none() && reply.publish.is_some(), "{reply:?}");
    let publication = json.publication("news").await;
    assert_eq!(publication["data"], json!({"from": "protobuf"}));
    assert_eq!(publication["info"]["user"], json!("pb"));
}

#[tokio::test]
async fn a_batch_goes_out_as_one_binary_frame_of_length_prefixed_replies() {
    let server = TestServer::start(protobuf_config()).await;
    let mut client = ProtobufClient::connected(&server, "u").await;
    client.subscribe("batched:settings", Default::default()).await;
    let frames_before = client.frame_sizes.len();
    for n in 1..=5 {
        server.publish("batched:settings", json!({"n": n})).await;
    }
    let mut offsets = Vec::new();
    for _ in 1..=5 {
        offsets.push(client.publication("batched:settings").await.0.offset);
    }
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    assert_eq!(client.frame_sizes[frames_before..], [5], "five publications, one frame");
}

#[tokio::test]
async fn join_leave_filters_and_acknowledged_redelivery_over_protobuf() {
    let server = TestServer::start(protobuf_config()).await;
    let mut watcher = ProtobufClient::connected(&server, "watcher").await;
    watcher
        .subscribe(
            "rooms:1",
            proto::SubscribeRequest {
                join_leave: true,
                // Herald's extension field: a JSON Pointer into the data instead of a tag.
                tf: Some(proto::FilterNode {
                    path: "/kind".into(),
                    cmp: "eq".into(),
                    val: "vote".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let mut guest = server.connected(&token("guest", None, &[])).await;
    guest.call(json!({"subscribe": {"channel": "rooms:1"}})).await;
    let joined_by = |user: &'static str| {
        move |reply: &proto::Reply| {
            let join = reply.push.as_ref().and_then(|p| p.join.as_ref());
            join.and_then(|j| j.info.as_ref()).is_some_and(|info| info.user == user && !info.client.is_empty())
        }
    };
    watcher.wait_for("the guest's join push", joined_by("guest")).await;

    server.api("publish", json!({"channel": "rooms:1", "data": {"kind": "chat"}})).await;
    server.api("publish", json!({"channel": "rooms:1", "data": {"kind": "vote"}, "requires_ack": true})).await;
    let (first, data) = watcher.publication("rooms:1").await;
    assert_eq!(data, json!({"kind": "vote"}), "the filter on the data's /kind let only the vote through");
    // Not acknowledged: it comes again, still in Protobuf.
    let (again, _) = watcher.publication("rooms:1").await;
    assert_eq!(again.offset, first.offset);
    let ack = proto::RpcRequest {
        method: "herald.ack".into(),
        data: json!({"channel": "rooms:1", "offset": first.offset}).to_string().into_bytes(),
    };
    let reply = watcher.call(proto::Command { rpc: Some(ack), ..Default::default() }).await;
    let acknowledged: Value = serde_json::from_slice(&reply.rpc.expect("an rpc result").data).expect("JSON");
    assert_eq!(acknowledged["acknowledged"], json!(1));

    guest.call(json!({"unsubscribe": {"channel": "rooms:1"}})).await;
    let leave = watcher.wait_for("a leave push", |r| r.push.as_ref().is_some_and(|p| p.leave.is_some())).await;
    assert_eq!(leave.push.and_then(|p| p.leave).and_then(|l| l.info).map(|i| i.user), Some("guest".into()));
}

#[tokio::test]
async fn a_stalled_protobuf_client_is_told_what_it_skipped() {
    let server = TestServer::start(protobuf_config()).await;
    let mut stalled = ProtobufClient::open_stalling(&server).await;
    let connect = proto::ConnectRequest { token: token("slow", None, &[]), ..Default::default() };
    stalled.call(proto::Command { connect: Some(connect), ..Default::default() }).await;
    stalled.subscribe("deep:firehose", Default::default()).await;
    let mut last = 0;
    for n in 1..=2000u64 {
        let mut publish = Publish::json("deep:firehose", &json!({"n": n, "pad": "x".repeat(8000)})).expect("json");
        publish.priority = Some(Priority::Low);
        last = server.node.publish(publish).await.expect("publish").offset;
    }
    let mut received = Vec::new();
    let mut gaps = BTreeSet::new();
    while (received.len() + gaps.len()) < last as usize {
        if stalled.inbox.is_empty() {
            assert!(stalled.read_frame().await, "still connected: shedding does not disconnect");
        }
        while let Some(reply) = stalled.inbox.pop_front() {
            let Some(push) = reply.push else { continue };
            if let Some(publication) = push.publication {
                received.push(publication.offset);
            } else if let Some(message) = push.message {
                let signal: Value = serde_json::from_slice(&message.data).expect("the gap signal is JSON");
                assert_eq!(signal["herald"]["gap"]["channel"], json!("deep:firehose"));
                for offset in signal["herald"]["gap"]["offsets"].as_array().expect("offsets") {
                    assert!(gaps.insert(offset.as_u64().expect("an offset")), "listed once");
                }
            }
        }
    }
    assert!(!gaps.is_empty(), "low publications were shed and signalled");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "what arrived is in order");
    let accounted: BTreeSet<u64> = received.iter().copied().chain(gaps.iter().copied()).collect();
    assert_eq!(accounted, (1..=last).collect(), "every publication arrived or was signalled");
}

#[tokio::test]
async fn what_is_not_protobuf_on_a_protobuf_connection_ends_it_with_3501() {
    let server = TestServer::start(protobuf_config()).await;
    let mut text = ProtobufClient::connected(&server, "u").await;
    text.socket.send(Message::Text(r#"{"id":2,"ping":{}}"#.into())).await.expect("send");
    assert_eq!(text.closed().await, 3501);

    let mut garbage = ProtobufClient::connected(&server, "u").await;
    // A length prefix promising more bytes than follow.
    garbage.send_bytes(vec![0x20, 0x08, 0x01]).await;
    assert_eq!(garbage.closed().await, 3501);

    // Non-JSON data is refused with "bad request"; the connection carries on.
    let mut client = ProtobufClient::connected(&server, "u").await;
    let publish = proto::PublishRequest { channel: "news".into(), data: vec![0xff, 0x00] };
    let reply = client.call(proto::Command { publish: Some(publish), ..Default::default() }).await;
    assert_eq!(reply.error.map(|e| e.code), Some(107));
    let reply = client.call(proto::Command { ping: Some(proto::PingRequest {}), ..Default::default() }).await;
    assert!(reply.ping.is_some(), "still connected");
}
