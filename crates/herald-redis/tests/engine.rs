//! The Redis engine against a real Redis (127.0.0.1:6379), each test under a fresh key prefix:
//! the same expectations as the memory engine's tests, plus what only a shared engine has
//! (offsets under concurrent publishers on two engines, delivery across engines, gap filling,
//! presence expiry, cursors and the node registry).

use herald_core::api::NodeInfo;
use herald_core::protocol::{ClientInfo, Publication};
use herald_redis::{Keys, RedisEngine, RedisOptions};
use herald_server::engine::{
    Broker, BrokerEventHandler, HistoryFilter, NodeRegistry, NodeSnapshot, PresenceManager, PresenceStats,
    PublishOptions, StreamPosition,
};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

const REDIS: &str = "127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(10);

/// Redis when it answers; otherwise the test is skipped (or fails with HERALD_REQUIRE_SERVICES=1).
async fn redis_or_skip(test: &str) -> Option<String> {
    let reachable = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(REDIS)).await;
    if matches!(reachable, Ok(Ok(_))) {
        return Some(REDIS.to_owned());
    }
    if std::env::var("HERALD_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: Redis is not reachable at {REDIS} and HERALD_REQUIRE_SERVICES=1");
    }
    eprintln!("{test}: skipped, Redis is not reachable at {REDIS}");
    None
}

fn fresh_prefix() -> String {
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Publication(String, u64),
    Join(String, String),
    Leave(String, String),
    Resubscribe(String),
}

/// What the engine delivers, as a node's handler takes it: publications queued in a channel's
/// lane count as delivered only once the engine flushes the channel, so every test here also
/// checks that no path leaves a publication queued.
#[derive(Default)]
struct Collect {
    events: Mutex<Vec<Event>>,
    queued: Mutex<Vec<(String, u64)>>,
    changed: tokio::sync::Notify,
}

impl Collect {
    fn push(&self, event: Event) {
        self.events.lock().push(event);
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for the events, failing after [`WAIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let events = self.events.lock();
                if done(&events) {
                    return events.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; events: {:?}", self.events.lock());
            }
        }
    }

    fn offsets(&self, channel: &str) -> Vec<u64> {
        offsets(&self.events.lock(), channel)
    }
}

fn offsets(events: &[Event], channel: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Publication(c, offset) if c == channel => Some(*offset),
            _ => None,
        })
        .collect()
}

impl BrokerEventHandler for Collect {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
        self.push(Event::Publication(channel.to_owned(), publication.offset));
    }
    fn queue_publication(&self, channel: &str, publication: Arc<Publication>) {
        self.queued.lock().push((channel.to_owned(), publication.offset));
    }
    fn flush_publications(&self, channel: &str) {
        let mut queued = self.queued.lock();
        let (flushed, kept): (Vec<_>, Vec<_>) = queued.drain(..).partition(|(queued, _)| queued == channel);
        *queued = kept;
        drop(queued);
        for (channel, offset) in flushed {
            self.push(Event::Publication(channel, offset));
        }
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.push(Event::Join(channel.to_owned(), info.client.clone()));
    }
    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.push(Event::Leave(channel.to_owned(), info.client.clone()));
    }
    fn handle_resubscribe(&self, channel: &str) {
        self.push(Event::Resubscribe(channel.to_owned()));
    }
}

fn publication(n: u32) -> Publication {
    Publication {
        data: Arc::from(RawValue::from_string(n.to_string()).unwrap()),
        info: None,
        offset: 0,
        tags: Default::default(),
        time: 0,
        meta: None,
    }
}

fn kept(size: usize) -> PublishOptions {
    PublishOptions { history_size: size, history_ttl: Duration::from_secs(60), ..Default::default() }
}

async fn engine(address: &str, prefix: &str) -> (RedisEngine, Arc<Collect>) {
    engine_with(RedisOptions::new(address, prefix)).await
}

async fn engine_with(options: RedisOptions) -> (RedisEngine, Arc<Collect>) {
    let engine = RedisEngine::start(options).expect("engine starts");
    let collect = Arc::new(Collect::default());
    engine.register_handler(collect.clone());
    assert!(engine.wait_connected(WAIT).await, "pub/sub connects");
    (engine, collect)
}

/// Removes every key of a test's prefix.
async fn clean(address: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(format!("redis://{address}")) else { return };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else { return };
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}.*")).query_async(&mut connection).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut connection).await;
    }
}

#[tokio::test]
async fn offsets_increase_and_history_is_bounded() {
    let Some(address) = redis_or_skip("offsets_increase_and_history_is_bounded").await else { return };
    let prefix = fresh_prefix();
    let (broker, collect) = engine(&address, &prefix).await;
    broker.subscribe("c").await.unwrap();
    for n in 0..5 {
        broker.publish("c", publication(n), &kept(3)).await.unwrap();
    }
    let page = broker.history("c", &HistoryFilter::default()).await.unwrap();
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert_eq!(page.position.offset, 5);
    collect.wait_for("5 deliveries", |events| offsets_of(events, "c").len() == 5).await;
    assert_eq!(collect.offsets("c"), vec![1, 2, 3, 4, 5]);
    clean(&address, &prefix).await;
}

fn offsets_of(events: &[Event], channel: &str) -> Vec<u64> {
    offsets(events, channel)
}

#[tokio::test]
async fn since_detects_trimmed_history_and_wrong_epoch() {
    let Some(address) = redis_or_skip("since_detects_trimmed_history_and_wrong_epoch").await else { return };
    let prefix = fresh_prefix();
    let (broker, _) = engine(&address, &prefix).await;
    for n in 0..5 {
        broker.publish("c", publication(n), &kept(3)).await.unwrap();
    }
    let top = broker.history("c", &HistoryFilter { limit: Some(0), ..Default::default() }).await.unwrap();
    assert!(top.publications.is_empty());
    let ok = HistoryFilter {
        since: Some(StreamPosition { offset: 2, epoch: top.position.epoch.clone() }),
        ..Default::default()
    };
    let page = broker.history("c", &ok).await.unwrap();
    assert!(page.since_available);
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);

    let trimmed = HistoryFilter {
        since: Some(StreamPosition { offset: 1, epoch: top.position.epoch.clone() }),
        ..Default::default()
    };
    assert!(!broker.history("c", &trimmed).await.unwrap().since_available);

    let other_epoch =
        HistoryFilter { since: Some(StreamPosition { offset: 4, epoch: "nope".into() }), ..Default::default() };
    assert!(!broker.history("c", &other_epoch).await.unwrap().since_available);

    let ahead = HistoryFilter {
        since: Some(StreamPosition { offset: 9, epoch: top.position.epoch.clone() }),
        ..Default::default()
    };
    assert!(!broker.history("c", &ahead).await.unwrap().since_available);

    // A stream nobody published to: its epoch is fixed by the first read, and position 0 of
    // any epoch is recoverable, as in the memory engine.
    let fresh = broker
        .history(
            "fresh",
            &HistoryFilter { since: Some(StreamPosition { offset: 0, epoch: "old".into() }), ..Default::default() },
        )
        .await
        .unwrap();
    assert!(fresh.since_available);
    let again = broker.history("fresh", &HistoryFilter { limit: Some(0), ..Default::default() }).await.unwrap();
    assert_eq!(again.position, fresh.position);
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn reverse_and_limit() {
    let Some(address) = redis_or_skip("reverse_and_limit").await else { return };
    let prefix = fresh_prefix();
    let (broker, _) = engine(&address, &prefix).await;
    for n in 0..5 {
        broker.publish("c", publication(n), &kept(10)).await.unwrap();
    }
    let page = broker.history("c", &HistoryFilter { limit: Some(2), reverse: true, since: None }).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![5, 4]);
    let epoch = page.position.epoch.clone();
    let forward = broker.history("c", &HistoryFilter { limit: Some(2), reverse: false, since: None }).await.unwrap();
    assert_eq!(forward.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2]);
    let before = HistoryFilter { limit: Some(2), reverse: true, since: Some(StreamPosition { offset: 4, epoch }) };
    let page = broker.history("c", &before).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 2]);
    let data: Vec<String> = page.publications.iter().map(|p| p.data.get().to_owned()).collect();
    assert_eq!(data, vec!["2", "1"], "publications keep their data");
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn offsets_are_atomic_under_concurrent_publishers_on_two_engines() {
    let Some(address) = redis_or_skip("offsets_are_atomic_under_concurrent_publishers_on_two_engines").await else {
        return;
    };
    let prefix = fresh_prefix();
    let (first, _) = engine(&address, &prefix).await;
    let (second, _) = engine(&address, &prefix).await;
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let broker = if worker % 2 == 0 { first.clone() } else { second.clone() };
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..50 {
                let outcome = broker.publish("race", publication(worker * 1000 + n), &kept(1000)).await.unwrap();
                offsets.push(outcome.position.offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>(), "every offset handed out exactly once");
    let page = second.history("race", &HistoryFilter::default()).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), (1..=400).collect::<Vec<u64>>());
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn a_publish_on_one_engine_reaches_the_other_in_order() {
    let Some(address) = redis_or_skip("a_publish_on_one_engine_reaches_the_other_in_order").await else { return };
    let prefix = fresh_prefix();
    let (publisher, own) = engine(&address, &prefix).await;
    let (listener, remote) = engine(&address, &prefix).await;
    listener.subscribe("c").await.unwrap();
    listener.subscribe("other").await.unwrap();
    for n in 0..100 {
        publisher.publish("c", publication(n), &kept(1000)).await.unwrap();
    }
    publisher.publish("quiet", publication(0), &kept(10)).await.unwrap();
    remote.wait_for("100 deliveries", |events| offsets(events, "c").len() == 100).await;
    assert_eq!(remote.offsets("c"), (1..=100).collect::<Vec<u64>>());
    assert!(remote.offsets("quiet").is_empty(), "only channels with local subscribers are listened to");
    assert!(own.offsets("c").is_empty(), "the publishing engine has no subscribers");

    // Join and leave come once to each listening engine.
    let info = ClientInfo { user: "u".into(), client: "client-1".into(), ..Default::default() };
    publisher.publish_join("c", &info).await.unwrap();
    publisher.publish_leave("c", &info).await.unwrap();
    let events = remote.wait_for("join and leave", |events| events.iter().any(|e| matches!(e, Event::Leave(..)))).await;
    let joins: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Join(..) | Event::Leave(..))).collect();
    assert_eq!(joins, vec![&Event::Join("c".into(), "client-1".into()), &Event::Leave("c".into(), "client-1".into())]);

    // After the last unsubscribe nothing more comes.
    listener.unsubscribe("c").await.unwrap();
    publisher.publish("c", publication(0), &kept(1000)).await.unwrap();
    publisher.publish("other", publication(0), &kept(1000)).await.unwrap();
    remote.wait_for("the other channel", |events| offsets(events, "other") == vec![1]).await;
    assert_eq!(remote.offsets("c").len(), 100);
    clean(&address, &prefix).await;
}

/// Runs the publish script as a publish does, but announces on a channel nobody listens to:
/// to the engines the publication is a lost Pub/Sub message.
async fn publish_unannounced(address: &str, prefix: &str, channel: &str, size: usize) -> u64 {
    let keys = Keys::new(prefix);
    let client = redis::Client::open(format!("redis://{address}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut invocation = herald_redis::scripts::PUBLISH_SCRIPT.prepare_invoke();
    invocation
        .key(keys.stream(channel))
        .key(keys.meta(channel))
        .key("")
        .arg(r#"{"data":"lost"}"#)
        .arg(size)
        .arg(60_000)
        .arg(0)
        .arg("unused-epoch")
        .arg(format!("{prefix}.nobody-listens"))
        .arg(1000);
    let (offset, _, _): (u64, String, u8) = invocation.invoke_async(&mut connection).await.unwrap();
    offset
}

#[tokio::test]
async fn missed_pubsub_messages_are_filled_from_the_stream() {
    let Some(address) = redis_or_skip("missed_pubsub_messages_are_filled_from_the_stream").await else { return };
    let prefix = fresh_prefix();
    let (broker, collect) = engine(&address, &prefix).await;
    broker.subscribe("c").await.unwrap();
    broker.publish("c", publication(1), &kept(100)).await.unwrap();
    collect.wait_for("offset 1", |events| offsets(events, "c") == vec![1]).await;

    // Offsets 2 and 3 are never announced; 4 is: the engine delivers 2, 3, 4 in order.
    publish_unannounced(&address, &prefix, "c", 100).await;
    publish_unannounced(&address, &prefix, "c", 100).await;
    broker.publish("c", publication(4), &kept(100)).await.unwrap();
    collect.wait_for("offsets 1..4", |events| offsets(events, "c").len() == 4).await;
    assert_eq!(collect.offsets("c"), vec![1, 2, 3, 4]);

    // A lost last message (nothing after it) is caught up by the periodic check.
    publish_unannounced(&address, &prefix, "c", 100).await;
    collect.wait_for("offset 5 from the periodic check", |events| offsets(events, "c").len() == 5).await;
    assert_eq!(collect.offsets("c"), vec![1, 2, 3, 4, 5]);
    assert!(!collect.events.lock().iter().any(|e| matches!(e, Event::Resubscribe(_))));
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn a_gap_the_stream_no_longer_holds_makes_subscribers_resubscribe() {
    let Some(address) = redis_or_skip("a_gap_the_stream_no_longer_holds_makes_subscribers_resubscribe").await else {
        return;
    };
    let prefix = fresh_prefix();
    let (broker, collect) = engine(&address, &prefix).await;
    broker.subscribe("c").await.unwrap();
    broker.publish("c", publication(1), &kept(2)).await.unwrap();
    collect.wait_for("offset 1", |events| offsets(events, "c") == vec![1]).await;
    for _ in 0..3 {
        publish_unannounced(&address, &prefix, "c", 2).await;
    }
    // The stream keeps 4 and 5 only: 2 and 3 are gone.
    broker.publish("c", publication(5), &kept(2)).await.unwrap();
    collect.wait_for("a resubscribe", |events| events.contains(&Event::Resubscribe("c".into()))).await;
    broker.publish("c", publication(6), &kept(2)).await.unwrap();
    collect.wait_for("offset 6", |events| offsets(events, "c").contains(&6)).await;
    let delivered = collect.offsets("c");
    assert_eq!(delivered.first(), Some(&1));
    assert!(!delivered.contains(&2) && !delivered.contains(&3), "nothing invented: {delivered:?}");
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order: {delivered:?}");
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn idempotent_publish_is_delivered_once_across_engines() {
    let Some(address) = redis_or_skip("idempotent_publish_is_delivered_once_across_engines").await else { return };
    let prefix = fresh_prefix();
    let (first, collect) = engine(&address, &prefix).await;
    let (second, _) = engine(&address, &prefix).await;
    first.subscribe("c").await.unwrap();
    let options = PublishOptions { idempotency_key: Some("k1".into()), ..kept(10) };
    let one = first.publish("c", publication(1), &options).await.unwrap();
    let two = second.publish("c", publication(1), &options).await.unwrap();
    assert!(!one.deduplicated);
    assert!(two.deduplicated);
    assert_eq!(one.position, two.position);
    // Another key, and the same key on another channel, are publishes of their own.
    let other = PublishOptions { idempotency_key: Some("k2".into()), ..kept(10) };
    assert_eq!(first.publish("c", publication(2), &other).await.unwrap().position.offset, 2);
    assert!(!second.publish("d", publication(1), &options).await.unwrap().deduplicated);
    collect.wait_for("two deliveries", |events| offsets(events, "c").len() == 2).await;
    assert_eq!(collect.offsets("c"), vec![1, 2]);

    // Without history the first answer is remembered too.
    let unkept = PublishOptions { idempotency_key: Some("k3".into()), ..Default::default() };
    let first_answer = first.publish("c", publication(3), &unkept).await.unwrap();
    assert_eq!(first_answer.position.offset, 0);
    assert!(second.publish("c", publication(3), &unkept).await.unwrap().deduplicated);
    collect.wait_for("the unkept publication", |events| offsets(events, "c") == vec![1, 2, 0]).await;
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn publications_expire_after_their_own_ttl() {
    let Some(address) = redis_or_skip("publications_expire_after_their_own_ttl").await else { return };
    let prefix = fresh_prefix();
    let (broker, _) = engine(&address, &prefix).await;
    let options = PublishOptions { history_size: 10, history_ttl: Duration::from_millis(1000), ..Default::default() };
    broker.publish("c", publication(1), &options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    broker.publish("c", publication(2), &options).await.unwrap();
    // At 1.3 s the first (expired at 1 s) is gone and the second (expires at 1.6 s) is not.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let page = broker.history("c", &HistoryFilter::default()).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![2]);
    assert_eq!(page.position.offset, 2, "the top outlives the publications");
    let since_first = HistoryFilter {
        since: Some(StreamPosition { offset: 0, epoch: page.position.epoch.clone() }),
        ..Default::default()
    };
    assert!(!broker.history("c", &since_first).await.unwrap().since_available, "offset 1 expired");
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn history_removal_keeps_offsets_and_epoch() {
    let Some(address) = redis_or_skip("history_removal_keeps_offsets_and_epoch").await else { return };
    let prefix = fresh_prefix();
    let (broker, _) = engine(&address, &prefix).await;
    broker.publish("c", publication(1), &kept(10)).await.unwrap();
    let before = broker.history("c", &HistoryFilter::default()).await.unwrap();
    broker.remove_history("c").await.unwrap();
    let after = broker.history("c", &HistoryFilter::default()).await.unwrap();
    assert!(after.publications.is_empty());
    assert_eq!(after.position, before.position);
    let next = broker.publish("c", publication(2), &kept(10)).await.unwrap();
    assert_eq!(next.position, StreamPosition { offset: 2, epoch: before.position.epoch.clone() });
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn cursors_are_shared_and_never_move_back_within_an_epoch() {
    let Some(address) = redis_or_skip("cursors_are_shared_and_never_move_back_within_an_epoch").await else {
        return;
    };
    let prefix = fresh_prefix();
    let (first, _) = engine(&address, &prefix).await;
    let (second, _) = engine(&address, &prefix).await;
    assert_eq!(first.cursor("u1", "c").await.unwrap(), None);
    let at = |offset, epoch: &str| StreamPosition { offset, epoch: epoch.into() };
    first.save_cursor("u1", "c", &at(5, "e1")).await.unwrap();
    second.save_cursor("u1", "c", &at(3, "e1")).await.unwrap();
    assert_eq!(second.cursor("u1", "c").await.unwrap(), Some(at(5, "e1")));
    second.save_cursor("u1", "c", &at(2, "e2")).await.unwrap();
    assert_eq!(first.cursor("u1", "c").await.unwrap(), Some(at(2, "e2")));
    assert_eq!(first.cursor("u2", "c").await.unwrap(), None);
    clean(&address, &prefix).await;
}

fn client(user: &str, id: &str) -> ClientInfo {
    ClientInfo { user: user.into(), client: id.into(), ..Default::default() }
}

#[tokio::test]
async fn presence_aggregates_engines_and_drops_a_dead_ones_members() {
    let Some(address) = redis_or_skip("presence_aggregates_engines_and_drops_a_dead_ones_members").await else {
        return;
    };
    let prefix = fresh_prefix();
    let mut options = RedisOptions::new(&address, &prefix);
    options.presence_ttl = Duration::from_millis(1500);
    let (alive, _) = engine_with(options.clone()).await;
    let (doomed, _) = engine_with(options).await;
    alive.add_presence("c", "a", &client("u1", "a")).await.unwrap();
    alive.add_presence("c", "b", &client("u1", "b")).await.unwrap();
    doomed.add_presence("c", "d", &client("u2", "d")).await.unwrap();
    assert_eq!(doomed.presence_stats("c").await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
    alive.remove_presence("c", "a").await.unwrap();
    let members = doomed.presence("c").await.unwrap();
    assert_eq!(members.keys().cloned().collect::<Vec<_>>(), vec!["b", "d"]);
    assert_eq!(members["d"].user, "u2");

    // The alive engine's refreshes keep "b" well past the TTL; "d" goes with its engine.
    drop(doomed);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = alive.presence_stats("c").await.unwrap();
        if stats == (PresenceStats { num_clients: 1, num_users: 1 }) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dead engine's member never expired: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(alive.presence("c").await.unwrap().keys().cloned().collect::<Vec<_>>(), vec!["b"]);
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn nodes_register_with_heartbeats() {
    let Some(address) = redis_or_skip("nodes_register_with_heartbeats").await else { return };
    let prefix = fresh_prefix();
    let mut options = RedisOptions::new(&address, &prefix);
    options.node_ttl = Duration::from_millis(2000);
    let (engine, _) = engine_with(options).await;
    let registry = engine.registry();
    let snapshot = |uid: &str, clients: u32| NodeSnapshot {
        info: NodeInfo { uid: uid.into(), name: uid.into(), num_clients: clients, ..Default::default() },
        channels: [("news".to_owned(), clients)].into_iter().collect(),
    };
    registry.heartbeat(&snapshot("n1", 3)).await.unwrap();
    registry.heartbeat(&snapshot("n2", 4)).await.unwrap();
    let mut nodes = registry.nodes().await.unwrap();
    nodes.sort_by(|a, b| a.info.uid.cmp(&b.info.uid));
    assert_eq!(
        nodes.iter().map(|n| (n.info.uid.as_str(), n.info.num_clients)).collect::<Vec<_>>(),
        [("n1", 3), ("n2", 4)]
    );
    assert_eq!(nodes[1].channels["news"], 4);
    registry.deregister("n1").await.unwrap();
    assert_eq!(registry.nodes().await.unwrap().len(), 1);
    // n2 stops sending heartbeats: it drops out after node_ttl.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(registry.nodes().await.unwrap().is_empty());
    clean(&address, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_temporary_error() {
    // Nothing listens on this port: every call fails as unavailable instead of hanging.
    let mut options = RedisOptions::new("127.0.0.1:1", fresh_prefix());
    options.connect_timeout = Duration::from_millis(300);
    options.io_timeout = Duration::from_millis(500);
    let engine = RedisEngine::start(options).unwrap();
    engine.register_handler(Arc::new(Collect::default()));
    let error = engine.publish("c", publication(1), &kept(10)).await.unwrap_err();
    assert!(matches!(error, herald_server::engine::EngineError::Unavailable(_)), "{error}");
    assert!(matches!(engine.subscribe("c").await.unwrap_err(), herald_server::engine::EngineError::Unavailable(_)));
    let state = engine.state();
    assert_eq!(state.engine, "redis");
    assert!(!state.available, "{state:?}");
}

/// Our own `redis-server` without persistence on a free port: a restart empties it.
struct EphemeralRedis {
    child: Option<std::process::Child>,
    port: u16,
}

impl EphemeralRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut redis = Self { child: None, port };
        redis.spawn().then_some(redis)
    }

    fn spawn(&mut self) -> bool {
        let Ok(child) = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EphemeralRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_that_restarts_empty_makes_subscribers_resubscribe() {
    let Some(mut redis) = EphemeralRedis::start() else {
        assert!(
            std::env::var("HERALD_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "redis-server cannot be started and HERALD_REQUIRE_SERVICES=1"
        );
        eprintln!("a_redis_that_restarts_empty_makes_subscribers_resubscribe: skipped, redis-server cannot be started");
        return;
    };
    let mut options = RedisOptions::new(format!("127.0.0.1:{}", redis.port), fresh_prefix());
    options.io_timeout = Duration::from_millis(500);
    let (broker, collect) = engine_with(options).await;
    broker.subscribe("c").await.unwrap();
    for n in 0..3 {
        broker.publish("c", publication(n), &kept(10)).await.unwrap();
    }
    collect.wait_for("three deliveries", |events| offsets(events, "c").len() == 3).await;
    let before = broker.history("c", &HistoryFilter { limit: Some(0), ..Default::default() }).await.unwrap();

    redis.kill();
    let refused = broker.publish("c", publication(9), &kept(10)).await.unwrap_err();
    assert!(matches!(refused, herald_server::engine::EngineError::Unavailable(_)), "{refused}");
    assert!(redis.spawn(), "redis restarts");
    // The streams are gone: the engine finds out when it reconnects and tells the subscribers.
    collect.wait_for("a resubscribe", |events| events.contains(&Event::Resubscribe("c".into()))).await;
    let outcome = broker.publish("c", publication(4), &kept(10)).await.unwrap();
    assert_ne!(outcome.position.epoch, before.position.epoch, "a new epoch");
    assert_eq!(outcome.position.offset, 1);
    collect.wait_for("the first publication of the new epoch", |events| offsets(events, "c") == vec![1, 2, 3, 1]).await;
    assert!(broker.state().available);
}
