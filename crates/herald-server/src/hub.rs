//! The hub: which connection is subscribed to which channel on this node, and fan-out to them.
//!
//! A publication is serialized once per channel and the same bytes are queued for every
//! subscriber. Subscriptions start "pending": publications are buffered until the subscribe reply
//! (with its recovered publications) is queued, so a client never sees a live publication before
//! its reply, nor a gap or duplicate between recovered and live ones.

use crate::metrics;
use crate::outbound::ClientHandle;
use axum::extract::ws::Utf8Bytes;
use herald_core::protocol::{reply, ClientInfo, Publication};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::shard::{shard_of, SHARDS};

/// One connection's subscription to one channel, as the fan-out path sees it.
pub struct Subscription {
    pub client: Arc<ClientHandle>,
    /// Whether this subscriber wants join/leave pushes.
    pub join_leave: bool,
    live: AtomicBool,
    /// Publications that arrived before the subscribe reply was queued; `None` once live.
    pending: Mutex<Option<Vec<Arc<Publication>>>>,
}

impl Subscription {
    pub fn new(client: Arc<ClientHandle>, join_leave: bool) -> Arc<Self> {
        Arc::new(Self { client, join_leave, live: AtomicBool::new(false), pending: Mutex::new(Some(Vec::new())) })
    }

    fn deliver(&self, publication: &Arc<Publication>, frame: &Utf8Bytes) {
        // Fast path once live: no lock per delivery.
        if self.live.load(Ordering::Acquire) {
            self.client.send(frame.clone());
            return;
        }
        let mut pending = self.pending.lock();
        match pending.as_mut() {
            Some(buffer) => buffer.push(publication.clone()),
            None => {
                drop(pending);
                self.client.send(frame.clone());
            }
        }
    }

    /// Makes the subscription live. `finish` gets what was buffered and returns the frames to
    /// queue first (the subscribe reply, then any buffered publications it did not include);
    /// nothing published meanwhile can overtake them.
    pub fn go_live(&self, finish: impl FnOnce(Vec<Arc<Publication>>) -> Vec<Utf8Bytes>) {
        go_live_together(&[self], |mut buffered| finish(buffered.pop().unwrap_or_default()));
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// Makes several subscriptions of one connection live at once (server-side subscriptions in a
/// connect reply): `finish` gets each one's buffer, in order, and returns the frames to queue
/// before any of them sees a live publication.
///
/// Holding several pending locks cannot deadlock: a broadcaster holds at most one of them, only
/// for a non-blocking queue push.
pub fn go_live_together(
    subscriptions: &[&Subscription],
    finish: impl FnOnce(Vec<Vec<Arc<Publication>>>) -> Vec<Utf8Bytes>,
) {
    let mut guards: Vec<_> = subscriptions.iter().map(|s| s.pending.lock()).collect();
    let buffered = guards.iter_mut().map(|g| g.take().unwrap_or_default()).collect();
    if let Some(first) = subscriptions.first() {
        for frame in finish(buffered) {
            first.client.send(frame);
        }
    }
    for subscription in subscriptions {
        subscription.live.store(true, Ordering::Release);
    }
}

/// What `channels` reports for one channel on this node.
pub struct ChannelCount {
    pub channel: String,
    pub num_clients: u32,
}

/// Subscribers of one channel on this node, by client id.
type ChannelSubscribers = HashMap<String, Arc<Subscription>>;

pub struct Hub {
    channels: Vec<RwLock<HashMap<String, ChannelSubscribers>>>,
    clients: RwLock<HashMap<String, Arc<ClientHandle>>>,
    users: RwLock<HashMap<String, HashSet<String>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            clients: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
        }
    }

    pub fn add_client(&self, client: Arc<ClientHandle>) {
        self.users.write().entry(client.user().to_owned()).or_default().insert(client.id.clone());
        self.clients.write().insert(client.id.clone(), client);
    }

    pub fn remove_client(&self, client: &ClientHandle) {
        self.clients.write().remove(&client.id);
        let mut users = self.users.write();
        if let Some(ids) = users.get_mut(client.user()) {
            ids.remove(&client.id);
            if ids.is_empty() {
                users.remove(client.user());
            }
        }
    }

    pub fn client(&self, id: &str) -> Option<Arc<ClientHandle>> {
        self.clients.read().get(id).cloned()
    }

    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        let users = self.users.read();
        let clients = self.clients.read();
        users.get(user).map(|ids| ids.iter().filter_map(|id| clients.get(id).cloned()).collect()).unwrap_or_default()
    }

    pub fn all_clients(&self) -> Vec<Arc<ClientHandle>> {
        self.clients.read().values().cloned().collect()
    }

    pub fn num_clients(&self) -> usize {
        self.clients.read().len()
    }

    pub fn num_users(&self) -> usize {
        self.users.read().len()
    }

    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users.read().get(user).map_or(0, HashSet::len)
    }

    /// Registers a subscription; true when it is this node's first subscriber of the channel.
    pub fn add_subscription(&self, channel: &str, subscription: Arc<Subscription>) -> bool {
        let mut shard = self.channels[shard_of(channel)].write();
        let first = !shard.contains_key(channel);
        shard.entry(channel.to_owned()).or_default().insert(subscription.client.id.clone(), subscription);
        first
    }

    /// Removes a subscription; true when the channel has no subscribers left on this node.
    pub fn remove_subscription(&self, channel: &str, client_id: &str) -> bool {
        let mut shard = self.channels[shard_of(channel)].write();
        let Some(subscribers) = shard.get_mut(channel) else { return false };
        if subscribers.remove(client_id).is_none() {
            return false;
        }
        if subscribers.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    pub fn num_subscribers(&self, channel: &str) -> usize {
        self.channels[shard_of(channel)].read().get(channel).map_or(0, HashMap::len)
    }

    pub fn num_subscriptions(&self) -> usize {
        self.channels.iter().map(|shard| shard.read().values().map(HashMap::len).sum::<usize>()).sum()
    }

    pub fn channels(&self) -> Vec<ChannelCount> {
        let mut out = Vec::new();
        for shard in &self.channels {
            for (channel, subscribers) in shard.read().iter() {
                out.push(ChannelCount { channel: channel.clone(), num_clients: subscribers.len() as u32 });
            }
        }
        out
    }

    /// Queues a publication for every subscriber of `channel` on this node.
    pub fn broadcast_publication(&self, channel: &str, publication: &Arc<Publication>) {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subscribers) = shard.get(channel) else { return };
        let frame = Utf8Bytes::from(reply::push(channel, "pub", publication.as_ref()));
        for subscription in subscribers.values() {
            subscription.deliver(publication, &frame);
        }
        metrics::deliveries(subscribers.len());
    }

    pub fn broadcast_join_leave(&self, channel: &str, kind: &str, info: &ClientInfo) {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subscribers) = shard.get(channel) else { return };
        let frame = Utf8Bytes::from(reply::push(channel, kind, &reply::JoinLeave { info }));
        for subscription in subscribers.values() {
            if subscription.join_leave && subscription.is_live() {
                subscription.client.send(frame.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outgoing;
    use serde_json::value::RawValue;

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            data: Arc::from(RawValue::from_string(offset.to_string()).unwrap()),
            info: None,
            offset,
            tags: Default::default(),
            time: 0,
        })
    }

    #[test]
    fn pending_subscription_buffers_until_its_reply_is_queued() {
        let hub = Hub::new();
        let (handle, mut outgoing, _control) = ClientHandle::new("c1".into(), 1 << 20);
        let subscription = Subscription::new(Arc::new(handle), false);
        hub.add_subscription("ch", subscription.clone());
        for offset in 1..=3 {
            hub.broadcast_publication("ch", &publication(offset));
        }
        assert!(outgoing.try_recv().is_err(), "nothing reaches a pending subscriber");
        let mut seen_buffer = Vec::new();
        subscription.go_live(|buffered| {
            seen_buffer = buffered.iter().map(|p| p.offset).collect();
            vec![Utf8Bytes::from_static("reply")]
        });
        hub.broadcast_publication("ch", &publication(4));
        assert_eq!(seen_buffer, vec![1, 2, 3]);
        let frames: Vec<String> = std::iter::from_fn(|| match outgoing.try_recv() {
            Ok(Outgoing::Frame(f)) => Some(f.as_str().to_owned()),
            _ => None,
        })
        .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], "reply");
        assert!(frames[1].contains(r#""offset":4"#), "{}", frames[1]);
    }

    #[test]
    fn last_unsubscribe_empties_the_channel() {
        let hub = Hub::new();
        let (a, _, _) = ClientHandle::new("a".into(), 1024);
        let (b, _, _) = ClientHandle::new("b".into(), 1024);
        assert!(hub.add_subscription("ch", Subscription::new(Arc::new(a), false)));
        assert!(!hub.add_subscription("ch", Subscription::new(Arc::new(b), false)));
        assert!(!hub.remove_subscription("ch", "a"));
        assert!(hub.remove_subscription("ch", "b"));
        assert!(hub.channels().is_empty());
    }
}
