//! A real server on an ephemeral loopback port and a raw WebSocket client that speaks the
//! protocol frame by frame, for integration tests.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use herald_config::{Config, Namespace, NamespaceOptions};
use herald_server::Node;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-key";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

/// Every option that tests rely on, set explicitly.
pub fn config() -> Config {
    let mut config = Config::default();
    config.http_server.address = "127.0.0.1".into();
    config.http_server.port = 0;
    config.client.token.hmac_secret_key = SECRET.into();
    config.client.ping_interval = Duration::from_secs(25);
    config.client.pong_timeout = Duration::from_secs(8);
    config.client.channel_limit = 128;
    config.client.queue_max_size = 1 << 20;
    config.client.expired_close_delay = Duration::from_secs(0);
    config.client.expired_sub_close_delay = Duration::from_secs(0);
    config.client.history_max_publication_limit = 300;
    config.client.recovery_max_publication_limit = 300;
    config.http_api.key = API_KEY.into();
    config.websocket.message_size_limit = 65536;
    config.websocket.write_timeout = Duration::from_secs(1);
    config.shutdown.timeout = Duration::from_secs(5);
    config.prometheus.enabled = true;
    config.health.enabled = true;
    config.channel.max_length = 255;
    config.channel.without_namespace = open_namespace();
    config.channel.namespaces = vec![
        Namespace { name: "chat".into(), options: open_namespace() },
        Namespace {
            name: "locked".into(),
            options: NamespaceOptions { history_size: 10, history_ttl: Duration::from_secs(60), ..Default::default() },
        },
    ];
    config
}

/// Subscribe, publish, presence, join/leave, history and recovery allowed for clients.
pub fn open_namespace() -> NamespaceOptions {
    NamespaceOptions {
        presence: true,
        join_leave: true,
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        allow_recovery: true,
        allow_positioning: true,
        allow_subscribe_for_client: true,
        allow_publish_for_client: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
        allow_user_limited_channels: true,
        ..Default::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Node,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let node = Node::new(config).expect("node");
        Self::start_node(node).await
    }

    pub async fn start_node(node: Node) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let timeout = node.config().shutdown.timeout;
        let task = tokio::spawn(herald_server::serve(
            node.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
            timeout,
        ));
        Self { addr, node, task, stop: Some(stop) }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::open(&self.ws_url()).await
    }

    /// A connected client (insecure servers accept an empty token).
    pub async fn connected(&self, token: &str) -> Client {
        let mut client = self.client().await;
        let reply = client.call(json!({"connect": {"token": token}})).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        client
    }

    pub async fn api(&self, method: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/{method}", self.addr))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api request");
        response.json().await.expect("api json")
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let answer = self.api("publish", json!({"channel": channel, "data": data})).await;
        assert!(answer.get("result").is_some(), "publish failed: {answer}");
        answer["result"].clone()
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("server stops in time")
            .expect("join")
    }
}

pub fn token(user: &str, exp_in: Option<i64>, channels: &[&str]) -> String {
    let now = herald_server::auth::unix_now() as i64;
    let mut claims = json!({"sub": user});
    if let Some(delta) = exp_in {
        claims["exp"] = json!(now + delta);
    }
    if !channels.is_empty() {
        claims["channels"] = json!(channels);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

pub fn sub_token(user: &str, channel: &str, exp_in: Option<i64>) -> String {
    let now = herald_server::auth::unix_now() as i64;
    let mut claims = json!({"sub": user, "channel": channel});
    if let Some(delta) = exp_in {
        claims["exp"] = json!(now + delta);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// What the server ended the connection with.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    inbox: VecDeque<Value>,
    pub closed: Option<Closed>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
    pub pings_seen: usize,
}

impl Client {
    pub async fn open(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
        Self { socket, next_id: 0, inbox: VecDeque::new(), closed: None, auto_pong: true, pings_seen: 0 }
    }

    /// A client whose socket takes little from the network before the server must queue: with
    /// it, a client that stops reading backs up into the server's queue quickly.
    pub async fn open_with_small_receive_buffer(url: &str) -> Self {
        let address = url.trim_start_matches("ws://").split('/').next().expect("host:port");
        let address: SocketAddr = address.parse().expect("a loopback socket address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let stream = socket.connect(address).await.expect("tcp connect");
        let (socket, _) =
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("websocket handshake");
        Self { socket, next_id: 0, inbox: VecDeque::new(), closed: None, auto_pong: true, pings_seen: 0 }
    }

    /// The next text frame exactly as the server sent it (several messages may share one).
    pub async fn next_text_frame(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no frame from the server within {WAIT:?}"))
                .expect("connection open")
                .expect("frame");
            if let Message::Text(text) = message {
                return text.to_string();
            }
        }
    }

    /// Sends a WebSocket ping, which the server's WebSocket library answers as it reads.
    pub async fn send_ping(&mut self) {
        self.socket.send(Message::Ping(vec![1u8].into())).await.expect("send ping");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket.send(Message::Text(text.to_owned().into())).await.expect("send");
    }

    /// Sends a command with the next id and returns that id.
    pub async fn send(&mut self, mut command: Value) -> u32 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        self.send_raw(&command.to_string()).await;
        self.next_id
    }

    /// Reads one frame into the inbox; false when the connection ended.
    pub async fn read_frame(&mut self) -> bool {
        let message = match tokio::time::timeout(WAIT, self.socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(_))) | Ok(None) => return false,
            Err(_) => panic!("no frame from the server within {WAIT:?}"),
        };
        match message {
            Message::Text(text) => {
                for line in text.split('\n').filter(|l| !l.is_empty()) {
                    let value: Value = serde_json::from_str(line).expect("server sent JSON");
                    if value.as_object().is_some_and(|o| o.is_empty()) {
                        self.pings_seen += 1;
                        if self.auto_pong {
                            self.send_raw("{}").await;
                        }
                        continue;
                    }
                    self.inbox.push_back(value);
                }
            }
            Message::Close(frame) => {
                self.closed = Some(frame.map_or(Closed { code: 1005, reason: String::new() }, |f| Closed {
                    code: u16::from(f.code),
                    reason: f.reason.to_string(),
                }));
                return false;
            }
            _ => {}
        }
        true
    }

    /// Waits for a message matching `pred`, keeping others for later.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(pos) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(pos).expect("present");
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; inbox: {:?}", self.inbox);
            }
            if !self.read_frame().await {
                panic!("connection closed ({:?}) while waiting for {what}; inbox: {:?}", self.closed, self.inbox);
            }
        }
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        self.wait_for(&format!("reply {id}"), |v| v["id"] == json!(id)).await
    }

    pub async fn call(&mut self, command: Value) -> Value {
        let id = self.send(command).await;
        self.reply(id).await
    }

    pub async fn push(&mut self, channel: &str, kind: &str) -> Value {
        self.wait_for(&format!("{kind} push on {channel}"), |v| {
            v["push"]["channel"] == json!(channel) && v["push"].get(kind).is_some()
        })
        .await["push"][kind]
            .clone()
    }

    pub async fn publication(&mut self, channel: &str) -> Value {
        self.push(channel, "pub").await
    }

    /// Waits for the server to close the connection and returns the close frame.
    pub async fn closed(&mut self) -> Closed {
        while self.closed.is_none() {
            if !self.read_frame().await && self.closed.is_none() {
                return Closed { code: 1006, reason: "closed without a close frame".into() };
            }
        }
        self.closed.take().expect("close frame")
    }

    /// Takes the oldest received message not yet consumed.
    pub fn next_pending(&mut self) -> Option<Value> {
        self.inbox.pop_front()
    }

    /// The frames received and not yet consumed.
    pub fn pending(&self) -> &VecDeque<Value> {
        &self.inbox
    }
}
