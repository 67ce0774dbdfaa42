//! A client's publishes wait for the engine together and are still answered in order.
//!
//! The engine here delivers each publication at once (the in-memory broker) but answers a
//! publish only when the test opens its gate, so the tests see which publishes were in the
//! engine at the same time and in what order their replies left, without timing anything.

mod common;

use async_trait::async_trait;
use common::*;
use herald_config::{Namespace, NamespaceOptions};
use herald_core::protocol::{ClientInfo, Publication};
use herald_server::engine::memory::MemoryBroker;
use herald_server::engine::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryPage, PublishOptions, PublishOutcome, StreamPosition,
};
use herald_server::Node;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

/// The in-memory broker whose publish answers wait for a permit.
struct GatedBroker {
    inner: MemoryBroker,
    gate: Semaphore,
    /// Publishes the engine has taken and not yet answered.
    waiting: watch::Sender<usize>,
}

impl GatedBroker {
    fn new() -> Arc<Self> {
        Arc::new(Self { inner: MemoryBroker::new(), gate: Semaphore::new(0), waiting: watch::channel(0).0 })
    }

    async fn until_waiting(&self, count: usize) {
        let mut waiting = self.waiting.subscribe();
        tokio::time::timeout(WAIT, waiting.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} publishes never waited in the engine together"))
            .expect("broker alive");
    }
}

#[async_trait]
impl Broker for GatedBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        self.inner.register_handler(handler);
    }
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.unsubscribe(channel).await
    }
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let outcome = self.inner.publish(channel, publication, options).await?;
        self.waiting.send_modify(|n| *n += 1);
        self.gate.acquire().await.map_err(|_| EngineError::Unavailable("gate closed".into()))?.forget();
        self.waiting.send_modify(|n| *n -= 1);
        Ok(outcome)
    }
    fn orders_on_first_poll(&self) -> bool {
        true
    }
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_join(channel, info).await
    }
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_leave(channel, info).await
    }
    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryPage, EngineError> {
        self.inner.history(channel, filter).await
    }
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.remove_history(channel).await
    }
    async fn save_cursor(&self, user: &str, channel: &str, position: &StreamPosition) -> Result<(), EngineError> {
        self.inner.save_cursor(user, channel, position).await
    }
    async fn cursor(&self, user: &str, channel: &str) -> Result<Option<StreamPosition>, EngineError> {
        self.inner.cursor(user, channel).await
    }
}

/// A server on the gated engine and a client connected to it.
async fn gated() -> (Arc<GatedBroker>, TestServer, Client) {
    let broker = GatedBroker::new();
    let mut config = config();
    config.client.insecure = true;
    let node = Node::builder(config).broker(broker.clone()).build().expect("node");
    let server = TestServer::start_node(node).await;
    let client = server.connected("").await;
    (broker, server, client)
}

/// Sends a publish of `{"n": n}` and returns its id.
async fn publish(client: &mut Client, channel: &str, n: u64) -> u64 {
    u64::from(client.send(json!({"publish": {"channel": channel, "data": {"n": n}}})).await)
}

/// Reads until `count` replies arrived and returns them in arrival order; publications are kept
/// in the inbox.
async fn replies(client: &mut Client, count: usize) -> Vec<Value> {
    let mut replies = Vec::new();
    while replies.len() < count {
        replies.push(client.wait_for("a reply", |v| v.get("id").is_some()).await);
    }
    replies
}

fn ids(replies: &[Value]) -> Vec<u64> {
    replies.iter().map(|reply| reply["id"].as_u64().expect("numeric id")).collect()
}

#[tokio::test]
async fn publishes_of_one_connection_wait_together_and_are_answered_in_order() {
    let (broker, server, mut client) = gated().await;
    client.call(json!({"subscribe": {"channel": "chat:pipe"}})).await;

    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(publish(&mut client, "chat:pipe", n).await);
    }
    // Answered one at a time, the second publish would not reach the engine before the first
    // was answered, and this would time out.
    broker.until_waiting(3).await;
    for n in 0..3 {
        let publication = client.publication("chat:pipe").await;
        assert_eq!(publication["data"]["n"], json!(n), "publications in the order sent: {publication}");
        assert_eq!(publication["offset"], json!(n + 1));
    }
    // The engine answers the last first; the replies still leave in the order sent.
    broker.gate.add_permits(3);
    let answers = replies(&mut client, 3).await;
    assert!(answers.iter().all(|reply| reply.get("error").is_none()), "refused: {answers:?}");
    assert_eq!(ids(&answers), sent);
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_command_after_publishes_waits_for_their_answers() {
    let (broker, server, mut client) = gated().await;
    let first = publish(&mut client, "chat:after", 1).await;
    let second = publish(&mut client, "chat:after", 2).await;
    broker.until_waiting(2).await;
    let history = client.send(json!({"history": {"channel": "chat:after", "limit": -1}})).await;
    broker.gate.add_permits(2);
    let answers = replies(&mut client, 3).await;
    assert_eq!(ids(&answers), [first, second, u64::from(history)]);
    let data: Vec<&Value> = answers[2]["history"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("a history page: {}", answers[2]))
        .iter()
        .map(|publication| &publication["data"]["n"])
        .collect();
    assert_eq!(data, [&json!(1), &json!(2)], "history read after both publishes");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_refused_publish_is_answered_in_its_place() {
    let (broker, server, mut client) = gated().await;
    let first = publish(&mut client, "chat:refused", 1).await;
    broker.until_waiting(1).await;
    // No data: refused before it reaches the engine, but answered after the one ahead of it.
    let refused = client.send(json!({"publish": {"channel": "chat:refused"}})).await;
    let ping = client.send(json!({"ping": {}})).await;
    broker.gate.add_permits(1);
    let order: Vec<(u64, bool)> = replies(&mut client, 3)
        .await
        .iter()
        .map(|r| (r["id"].as_u64().expect("id"), r.get("error").is_some()))
        .collect();
    assert_eq!(order, [(first, false), (u64::from(refused), true), (u64::from(ping), false)]);
    server.stop().await.expect("stopped");
}

/// The in-memory engine fans out as it publishes; a client's burst is fanned out when the burst
/// ends (nothing more to read), so everything arrives, in order, and a lone publish after it
/// goes out by itself. The same with a channel that keeps no history (no offsets to order by).
#[tokio::test]
async fn a_burst_of_client_publishes_reaches_subscribers_in_order() {
    let mut config = config();
    config.client.insecure = true;
    config
        .channel
        .namespaces
        .push(Namespace { name: "live".into(), options: NamespaceOptions { history_size: 0, ..open_namespace() } });
    let server = TestServer::start(config).await;
    for channel in ["chat:burst", "live:burst"] {
        let mut subscriber = server.connected("").await;
        subscriber.call(json!({"subscribe": {"channel": channel}})).await;
        let mut publisher = server.connected("").await;
        let burst: Vec<String> = (1..=150)
            .map(|n| json!({"id": 100 + n, "publish": {"channel": channel, "data": {"n": n}}}).to_string())
            .collect();
        publisher.send_raw(&burst.join("\n")).await;
        let answers = replies(&mut publisher, 150).await;
        assert_eq!(ids(&answers), (101..=250).collect::<Vec<u64>>());
        for n in 1..=150 {
            let publication = subscriber.publication(channel).await;
            assert_eq!(publication["data"]["n"], json!(n), "in the order published on {channel}: {publication}");
        }
        publisher.call(json!({"publish": {"channel": channel, "data": {"n": "lone"}}})).await;
        assert_eq!(subscriber.publication(channel).await["data"]["n"], json!("lone"));
    }
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_publish_before_connect_ends_the_connection_and_publishes_nothing() {
    let mut config = config();
    config.client.insecure = true;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    client.send(json!({"publish": {"channel": "chat:early", "data": {"n": 1}}})).await;
    assert_eq!(client.closed().await.code, 3501);
    let history = server.api("history", json!({"channel": "chat:early", "limit": -1})).await;
    assert_eq!(history["result"]["publications"].as_array().map(Vec::len).unwrap_or(0), 0, "{history}");
    server.stop().await.expect("stopped");
}
