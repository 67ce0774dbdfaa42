//! The single-node engine: streams, history and presence in this process's memory.
//!
//! Each channel's stream has its own lock, held while an offset is assigned, the publication is
//! stored and handed to the node. That makes delivery order equal offset order for every
//! subscriber, and a history read can never observe a publication the hub has not yet seen.

use super::*;
use parking_lot::{Mutex, RwLock};
use rand::distr::{Alphanumeric, SampleString};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::Instant;

use crate::shard::{shard_of, SHARDS};

/// A fresh random epoch: a stream whose history was lost gets one, so old offsets mean nothing.
pub fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 8)
}

struct Stream {
    epoch: String,
    /// The last offset visible to history reads and delivered to the node.
    top: u64,
    /// The last offset handed out; ahead of `top` while a durable engine commits.
    assigned: u64,
    retained: VecDeque<(Instant, Arc<Publication>)>,
    last_publish: Instant,
}

impl Stream {
    fn new() -> Self {
        Self { epoch: new_epoch(), top: 0, assigned: 0, retained: VecDeque::new(), last_publish: Instant::now() }
    }

    fn drop_expired(&mut self, now: Instant) {
        while self.retained.front().is_some_and(|(expires, _)| *expires <= now) {
            self.retained.pop_front();
        }
    }
}

struct IdempotentResult {
    expires: Instant,
    position: StreamPosition,
}

/// In-memory broker: ordered streams with bounded history, and idempotent publishes.
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    streams: Vec<RwLock<HashMap<String, Arc<Mutex<Stream>>>>>,
    idempotency: Mutex<HashMap<(String, String), IdempotentResult>>,
    cursors: Mutex<HashMap<(String, String), StreamPosition>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self {
            handler: OnceLock::new(),
            streams: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            idempotency: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
        }
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        let shard = &self.streams[shard_of(channel)];
        if let Some(stream) = shard.read().get(channel) {
            return stream.clone();
        }
        shard.write().entry(channel.to_owned()).or_insert_with(|| Arc::new(Mutex::new(Stream::new()))).clone()
    }

    fn existing_stream(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.streams[shard_of(channel)].read().get(channel).cloned()
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerEventHandler>, EngineError> {
        self.handler.get().ok_or_else(|| EngineError::Internal("broker has no handler registered".into()))
    }

    /// Hands out the next offset (a new epoch first when the stream's meta TTL passed).
    fn assign(stream: &mut Stream, options: &PublishOptions, now: Instant) -> StreamPosition {
        stream.drop_expired(now);
        let idle = now.duration_since(stream.last_publish);
        if !options.history_meta_ttl.is_zero()
            && stream.top > 0
            && stream.assigned == stream.top
            && idle > options.history_meta_ttl
        {
            *stream = Stream::new();
        }
        stream.assigned += 1;
        stream.last_publish = now;
        StreamPosition { offset: stream.assigned, epoch: stream.epoch.clone() }
    }

    fn make_visible(
        stream: &mut Stream,
        handler: &Arc<dyn BrokerEventHandler>,
        channel: &str,
        publication: Arc<Publication>,
        options: &PublishOptions,
        now: Instant,
    ) {
        stream.top = publication.offset;
        stream.retained.push_back((now + options.history_ttl, publication.clone()));
        while stream.retained.len() > options.history_size {
            stream.retained.pop_front();
        }
        // Delivered by `flush_publications` once the stream lock is released.
        handler.queue_publication(channel, publication);
    }

    /// For durable engines: reserves the next offset of `channel` and runs `then` with it while
    /// the stream is locked, so whatever `then` enqueues is in offset order. The publication
    /// becomes visible only with [`MemoryBroker::deliver_reserved`], after it is durable.
    pub fn reserve<R>(&self, channel: &str, options: &PublishOptions, then: impl FnOnce(&StreamPosition) -> R) -> R {
        let stream = self.stream(channel);
        let mut stream = stream.lock();
        let position = Self::assign(&mut stream, options, Instant::now());
        then(&position)
    }

    /// Makes a reserved publication visible to history and queues it for delivery; must be
    /// called in reservation order per channel, and followed by [`MemoryBroker::flush`].
    pub fn deliver_reserved(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<(), EngineError> {
        let handler = self.handler()?;
        let stream = self.stream(channel);
        let mut stream = stream.lock();
        Self::make_visible(&mut stream, handler, channel, Arc::new(publication), options, Instant::now());
        Ok(())
    }

    /// Delivers what [`MemoryBroker::deliver_reserved`] queued for `channel`.
    pub fn flush(&self, channel: &str) -> Result<(), EngineError> {
        self.handler()?.flush_publications(channel);
        Ok(())
    }

    /// Delivers a publication that keeps no history (no offset).
    pub fn deliver_unstored(&self, channel: &str, mut publication: Publication) -> Result<(), EngineError> {
        publication.offset = 0;
        self.handler()?.handle_publication(channel, Arc::new(publication));
        Ok(())
    }

    /// Rebuilds a stream after a restart: its epoch, top offset and retained publications, each
    /// with the instant it expires.
    pub fn restore(&self, channel: &str, epoch: String, top: u64, retained: Vec<(Instant, Arc<Publication>)>) {
        let stream = self.stream(channel);
        let mut stream = stream.lock();
        stream.epoch = epoch;
        stream.top = top;
        stream.assigned = top;
        stream.retained = retained.into();
    }

    /// Sets a cursor, never moving it backwards within an epoch (acknowledgements are cumulative).
    pub fn set_cursor(&self, user: &str, channel: &str, position: StreamPosition) {
        let mut cursors = self.cursors.lock();
        let entry = cursors.entry((user.to_owned(), channel.to_owned())).or_insert_with(|| position.clone());
        if entry.epoch != position.epoch || entry.offset < position.offset {
            *entry = position;
        }
    }

    /// Drops a channel's retained publications; offsets and epoch stay, as in Centrifugo.
    pub fn clear_history(&self, channel: &str) {
        if let Some(stream) = self.existing_stream(channel) {
            stream.lock().retained.clear();
        }
    }

    /// Remembers an idempotent publish (durable engines restore these after a restart).
    pub fn remember(&self, channel: &str, key: &str, position: StreamPosition, expires: Instant) {
        self.idempotency.lock().insert((channel.to_owned(), key.to_owned()), IdempotentResult { expires, position });
    }

    pub fn remembered(&self, channel: &str, key: &str, now: Instant) -> Option<StreamPosition> {
        let mut map = self.idempotency.lock();
        // Pruning on each lookup keeps the map bounded by the publish rate times the window.
        if map.len() > 1024 {
            map.retain(|_, r| r.expires > now);
        }
        map.get(&(channel.to_owned(), key.to_owned())).filter(|r| r.expires > now).map(|r| r.position.clone())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        // A second registration is a programming error in the embedding code; the first one stays.
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let handler = self.handler()?;
        let now = Instant::now();
        if let Some(key) = &options.idempotency_key {
            if let Some(position) = self.remembered(channel, key, now) {
                return Ok(PublishOutcome { position, deduplicated: true });
            }
        }
        let position = if options.history_size == 0 {
            // No offset to order by: the lane keeps the order publications were queued in, and
            // what queues behind a fan-out goes out with it.
            publication.offset = 0;
            handler.queue_publication(channel, Arc::new(publication));
            if !options.defer_fan_out {
                handler.flush_publications(channel);
            }
            StreamPosition::default()
        } else {
            let stream = self.stream(channel);
            let mut stream = stream.lock();
            let position = Self::assign(&mut stream, options, now);
            publication.offset = position.offset;
            Self::make_visible(&mut stream, handler, channel, Arc::new(publication), options, now);
            drop(stream);
            if !options.defer_fan_out {
                handler.flush_publications(channel);
            }
            position
        };
        if let Some(key) = &options.idempotency_key {
            self.idempotency.lock().insert(
                (channel.to_owned(), key.clone()),
                IdempotentResult { expires: now + IDEMPOTENCY_WINDOW, position: position.clone() },
            );
        }
        Ok(PublishOutcome { position, deduplicated: false })
    }

    /// Publishing takes no await at all.
    fn orders_on_first_poll(&self) -> bool {
        true
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.handler()?.handle_join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.handler()?.handle_leave(channel, info);
        Ok(())
    }

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryPage, EngineError> {
        let Some(stream) = self.existing_stream(channel) else {
            // Reading a stream creates its epoch, so a later recovery can tell "nothing published
            // yet" from "history lost".
            let stream = self.stream(channel);
            let stream = stream.lock();
            let since_available = filter.since.as_ref().is_none_or(|s| s.epoch == stream.epoch || s.offset == 0);
            return Ok(HistoryPage {
                publications: Vec::new(),
                position: StreamPosition { offset: 0, epoch: stream.epoch.clone() },
                since_available,
            });
        };
        let mut stream = stream.lock();
        stream.drop_expired(Instant::now());
        let position = StreamPosition { offset: stream.top, epoch: stream.epoch.clone() };
        let mut page = HistoryPage { publications: Vec::new(), position, since_available: true };
        if let Some(since) = &filter.since {
            let first_retained = stream.retained.front().map_or(stream.top + 1, |(_, p)| p.offset);
            let trimmed = !filter.reverse && since.offset + 1 < first_retained;
            if since.epoch != stream.epoch || since.offset > stream.top || trimmed {
                page.since_available = false;
                return Ok(page);
            }
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(page);
        }
        let retained = stream.retained.iter().map(|(_, p)| p);
        page.publications = match (&filter.since, filter.reverse) {
            (None, false) => retained.take(limit).cloned().collect(),
            (None, true) => retained.rev().take(limit).cloned().collect(),
            (Some(since), false) => retained.filter(|p| p.offset > since.offset).take(limit).cloned().collect(),
            // Reverse from a position walks back from just before it, as Centrifugo does.
            (Some(since), true) => retained.rev().filter(|p| p.offset < since.offset).take(limit).cloned().collect(),
        };
        Ok(page)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.clear_history(channel);
        Ok(())
    }

    async fn save_cursor(&self, user: &str, channel: &str, position: &StreamPosition) -> Result<(), EngineError> {
        self.set_cursor(user, channel, position.clone());
        Ok(())
    }

    async fn cursor(&self, user: &str, channel: &str) -> Result<Option<StreamPosition>, EngineError> {
        Ok(self.cursors.lock().get(&(user.to_owned(), channel.to_owned())).cloned())
    }
}

/// In-memory presence: who is subscribed to each channel on this node.
pub struct MemoryPresence {
    channels: Vec<RwLock<HashMap<String, HashSet<Present>>>>,
}

/// A present client, found by its client id: the set's key is the info's own `client` field,
/// not a second copy of the id (every subscriber of a presence channel holds one entry).
struct Present(ClientInfo);

impl PartialEq for Present {
    fn eq(&self, other: &Self) -> bool {
        self.0.client == other.0.client
    }
}

impl Eq for Present {}

impl std::hash::Hash for Present {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.client.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Present {
    fn borrow(&self) -> &str {
        &self.0.client
    }
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self { channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn add_presence(&self, channel: &str, client_id: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let mut info = info.clone();
        if info.client != client_id {
            info.client = client_id.to_owned();
        }
        self.channels[shard_of(channel)].write().entry(channel.to_owned()).or_default().replace(Present(info));
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client_id: &str) -> Result<(), EngineError> {
        let mut shard = self.channels[shard_of(channel)].write();
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client_id);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError> {
        Ok(self.channels[shard_of(channel)]
            .read()
            .get(channel)
            .map(|clients| clients.iter().map(|present| (present.0.client.clone(), present.0.clone())).collect())
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let shard = self.channels[shard_of(channel)].read();
        let Some(clients) = shard.get(channel) else { return Ok(PresenceStats::default()) };
        let users: HashSet<&str> = clients.iter().map(|present| present.0.user.as_str()).collect();
        Ok(PresenceStats { num_clients: clients.len() as u32, num_users: users.len() as u32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, u64)>>);

    impl BrokerEventHandler for Collect {
        fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
            self.0.lock().push((channel.to_owned(), publication.offset));
        }
        fn handle_join(&self, _: &str, _: &ClientInfo) {}
        fn handle_leave(&self, _: &str, _: &ClientInfo) {}
        fn handle_resubscribe(&self, _: &str) {}
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

    fn broker() -> (MemoryBroker, Arc<Collect>) {
        let broker = MemoryBroker::new();
        let collect = Arc::new(Collect::default());
        broker.register_handler(collect.clone());
        (broker, collect)
    }

    #[tokio::test]
    async fn offsets_increase_and_history_is_bounded() {
        let (broker, collect) = broker();
        for n in 0..5 {
            broker.publish("c", publication(n), &kept(3)).await.unwrap();
        }
        let page = broker.history("c", &HistoryFilter::default()).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(page.position.offset, 5);
        assert_eq!(collect.0.lock().len(), 5);
    }

    #[tokio::test]
    async fn since_detects_trimmed_history_and_wrong_epoch() {
        let (broker, _) = broker();
        for n in 0..5 {
            broker.publish("c", publication(n), &kept(3)).await.unwrap();
        }
        let top = broker.history("c", &HistoryFilter { limit: Some(0), ..Default::default() }).await.unwrap();
        let ok = HistoryFilter {
            since: Some(StreamPosition { offset: 2, epoch: top.position.epoch.clone() }),
            ..Default::default()
        };
        let page = broker.history("c", &ok).await.unwrap();
        assert!(page.since_available);
        assert_eq!(page.publications.len(), 3);

        let trimmed = HistoryFilter {
            since: Some(StreamPosition { offset: 1, epoch: top.position.epoch.clone() }),
            ..Default::default()
        };
        assert!(!broker.history("c", &trimmed).await.unwrap().since_available);

        let other_epoch =
            HistoryFilter { since: Some(StreamPosition { offset: 4, epoch: "nope".into() }), ..Default::default() };
        assert!(!broker.history("c", &other_epoch).await.unwrap().since_available);
    }

    #[tokio::test]
    async fn reverse_and_limit() {
        let (broker, _) = broker();
        for n in 0..5 {
            broker.publish("c", publication(n), &kept(10)).await.unwrap();
        }
        let page = broker.history("c", &HistoryFilter { limit: Some(2), reverse: true, since: None }).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![5, 4]);
    }

    #[tokio::test]
    async fn idempotent_publish_is_delivered_once() {
        let (broker, collect) = broker();
        let options = PublishOptions { idempotency_key: Some("k1".into()), ..kept(10) };
        let first = broker.publish("c", publication(1), &options).await.unwrap();
        let second = broker.publish("c", publication(1), &options).await.unwrap();
        assert!(!first.deduplicated);
        assert!(second.deduplicated);
        assert_eq!(first.position, second.position);
        assert_eq!(collect.0.lock().len(), 1);
    }

    #[tokio::test]
    async fn presence_counts_unique_users() {
        let presence = MemoryPresence::new();
        let info =
            |user: &str, client: &str| ClientInfo { user: user.into(), client: client.into(), ..Default::default() };
        presence.add_presence("c", "a", &info("u1", "a")).await.unwrap();
        presence.add_presence("c", "b", &info("u1", "b")).await.unwrap();
        presence.add_presence("c", "d", &info("u2", "d")).await.unwrap();
        assert_eq!(presence.presence_stats("c").await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
        presence.remove_presence("c", "a").await.unwrap();
        assert_eq!(presence.presence("c").await.unwrap().len(), 2);
    }

    /// A handler with lanes: queued publications leave in one group per flush.
    #[derive(Default)]
    struct Lanes {
        queued: Mutex<Vec<u64>>,
        flushed: Mutex<Vec<Vec<u64>>>,
    }

    impl BrokerEventHandler for Lanes {
        fn handle_publication(&self, _: &str, publication: Arc<Publication>) {
            self.flushed.lock().push(vec![publication.offset]);
        }
        fn queue_publication(&self, _: &str, publication: Arc<Publication>) {
            self.queued.lock().push(publication.offset);
        }
        fn flush_publications(&self, _: &str) {
            let group = std::mem::take(&mut *self.queued.lock());
            if !group.is_empty() {
                self.flushed.lock().push(group);
            }
        }
        fn handle_join(&self, _: &str, _: &ClientInfo) {}
        fn handle_leave(&self, _: &str, _: &ClientInfo) {}
        fn handle_resubscribe(&self, _: &str) {}
    }

    #[tokio::test]
    async fn a_deferred_fan_out_waits_for_the_callers_flush() {
        let broker = MemoryBroker::new();
        let lanes = Arc::new(Lanes::default());
        broker.register_handler(lanes.clone());
        broker.publish("c", publication(1), &kept(10)).await.unwrap();
        assert_eq!(*lanes.flushed.lock(), vec![vec![1]], "flushed by publish itself");
        let deferred = PublishOptions { defer_fan_out: true, ..kept(10) };
        for n in 2..=4 {
            broker.publish("c", publication(n), &deferred).await.unwrap();
        }
        let unkept = PublishOptions { defer_fan_out: true, ..Default::default() };
        broker.publish("c", publication(5), &unkept).await.unwrap();
        assert_eq!(lanes.flushed.lock().len(), 1, "deferred publishes only queue");
        lanes.flush_publications("c");
        assert_eq!(*lanes.flushed.lock(), vec![vec![1], vec![2, 3, 4, 0]]);
    }
}
