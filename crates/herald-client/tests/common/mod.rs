//! A real Herald node on an ephemeral loopback port, and helpers to wait for client events with a
//! timeout.
#![allow(dead_code)]

use futures_util::StreamExt;
use herald_client::{Client, ConnectionState, Publication, Subscription, SubscriptionEvent};
use herald_config::{Config, Namespace, NamespaceOptions};
use herald_server::Node;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

pub const SECRET: &str = "client-test-secret";
pub const API_KEY: &str = "client-test-key";
pub const WAIT: Duration = Duration::from_secs(10);

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
        allow_tags_filter: true,
        ..Default::default()
    }
}

pub fn config() -> Config {
    let mut config = Config::default();
    config.http_server.address = "127.0.0.1".into();
    config.http_server.port = 0;
    config.client.token.hmac_secret_key = SECRET.into();
    config.client.ping_interval = Duration::from_secs(25);
    config.client.pong_timeout = Duration::from_secs(8);
    config.client.expired_close_delay = Duration::from_secs(0);
    config.client.expired_sub_close_delay = Duration::from_secs(0);
    config.client.recovery_max_publication_limit = 300;
    config.http_api.key = API_KEY.into();
    config.shutdown.timeout = Duration::from_secs(5);
    config.channel.without_namespace = open_namespace();
    let mut acks = open_namespace();
    acks.ack_timeout = Duration::from_millis(100);
    acks.ack_max_retries = 3;
    let small = NamespaceOptions { history_size: 3, ..open_namespace() };
    let private = NamespaceOptions { allow_subscribe_for_client: false, ..open_namespace() };
    config.channel.namespaces = vec![
        Namespace { name: "acks".into(), options: acks },
        Namespace { name: "small".into(), options: small },
        Namespace { name: "private".into(), options: private },
    ];
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Node,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let node = Node::new(config).expect("node");
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
        Self { addr, node, stop: Some(stop), task }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// A client with a token for `user`, quick to reconnect, connecting.
    pub fn client(&self, user: &str) -> Client {
        let client = Client::builder(self.ws_url())
            .token(token(user, None))
            .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
            .build();
        client.connect();
        client
    }

    pub async fn api(&self, method: &str, body: Value) -> Value {
        reqwest::Client::new()
            .post(format!("http://{}/api/{method}", self.addr))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api request")
            .json()
            .await
            .expect("api json")
    }

    /// Publishes through the server API and answers the offset.
    pub async fn publish(&self, channel: &str, body: Value) -> u64 {
        let mut body = body;
        body["channel"] = json!(channel);
        let answer = self.api("publish", body).await;
        answer["result"]["offset"].as_u64().unwrap_or_else(|| panic!("publish failed: {answer}"))
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }
}

/// An HS256 connection token; `exp_in` seconds from now when given.
pub fn token(user: &str, exp_in: Option<u64>) -> String {
    let mut claims = json!({"sub": user});
    if let Some(seconds) = exp_in {
        claims["exp"] = json!(herald_server::auth::unix_now() + seconds);
    }
    sign(&claims)
}

pub fn sub_token(user: &str, channel: &str, exp_in: u64) -> String {
    sign(&json!({"sub": user, "channel": channel, "exp": herald_server::auth::unix_now() + exp_in}))
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// The next event of a subscription, within [`WAIT`].
pub async fn next_event(subscription: &mut Subscription) -> SubscriptionEvent {
    match tokio::time::timeout(WAIT, subscription.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("subscription {} ended", subscription.channel()),
        Err(_) => panic!("no event on {} within {WAIT:?}", subscription.channel()),
    }
}

/// The next publication, skipping other events.
pub async fn next_publication(subscription: &mut Subscription) -> Publication {
    loop {
        if let SubscriptionEvent::Publication(publication) = next_event(subscription).await {
            return publication;
        }
    }
}

pub fn data(publication: &Publication) -> Value {
    serde_json::from_str(publication.data.get()).expect("publication data is JSON")
}

/// Waits until the connection state satisfies `pred`, and answers it.
pub async fn wait_state(client: &Client, what: &str, pred: impl Fn(&ConnectionState) -> bool) -> ConnectionState {
    let mut state = client.state();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let current = state.borrow_and_update().clone();
            if pred(&current) {
                return current;
            }
            if state.changed().await.is_err() {
                panic!("the client is gone while waiting for {what}");
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("state never became {what}; it is {:?}", client.state().borrow()))
}

pub async fn connected(client: &Client) -> String {
    match tokio::time::timeout(WAIT, client.connected()).await {
        Ok(Ok(id)) => id,
        Ok(Err(error)) => panic!("connect failed: {error}"),
        Err(_) => panic!("not connected within {WAIT:?}: {:?}", client.state().borrow()),
    }
}

/// Polls a condition that has no event of its own (server-side audit, counters), within [`WAIT`].
pub async fn eventually<F: Fn() -> bool>(what: &str, condition: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Records every connection state the client goes through.
pub fn record_states(client: &Client) -> std::sync::Arc<std::sync::Mutex<Vec<ConnectionState>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![client.state().borrow().clone()]));
    let mut state = client.state();
    let log = seen.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let current = state.borrow_and_update().clone();
            log.lock().expect("state log").push(current);
        }
    });
    seen
}
