//! The hub: which connection is subscribed to which channel on this node, and fan-out to them.
//!
//! A publication is serialized once per channel and the same bytes are queued for every
//! subscriber. Subscriptions start "pending": publications are buffered until the subscribe reply
//! (with its recovered publications) is queued, so a client never sees a live publication before
//! its reply, nor a gap or duplicate between recovered and live ones.

use crate::metrics;
use crate::outbound::ClientHandle;
use crate::view::{View, Viewer};
use axum::extract::ws::Utf8Bytes;
use herald_core::protocol::{reply, ClientInfo, Publication};
use parking_lot::{Mutex, RwLock};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::shard::{shard_of, SHARDS};

/// One connection's subscription to one channel, as the fan-out path sees it.
pub struct Subscription {
    pub client: Arc<ClientHandle>,
    /// Whether this subscriber wants join/leave pushes.
    pub join_leave: bool,
    pub view: Arc<View>,
    pub viewer: Viewer,
    live: AtomicBool,
    /// Publications that arrived before the subscribe reply was queued; `None` once live.
    pending: Mutex<Option<Vec<Arc<Publication>>>>,
}

impl Subscription {
    pub fn new(client: Arc<ClientHandle>, join_leave: bool, view: Arc<View>, viewer: Viewer) -> Arc<Self> {
        Arc::new(Self {
            client,
            join_leave,
            view,
            viewer,
            live: AtomicBool::new(false),
            pending: Mutex::new(Some(Vec::new())),
        })
    }

    /// Queues (or buffers, while pending) a publication; false when it was dropped.
    fn deliver(&self, publication: &Arc<Publication>, frame: &Utf8Bytes) -> bool {
        // Fast path once live: no lock per delivery.
        if self.live.load(Ordering::Acquire) {
            return self.client.send(frame.clone());
        }
        let mut pending = self.pending.lock();
        match pending.as_mut() {
            Some(buffer) => {
                buffer.push(publication.clone());
                true
            }
            None => {
                drop(pending);
                self.client.send(frame.clone())
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

/// What one broadcast did.
#[derive(Default)]
pub struct Broadcast {
    pub subscribers: usize,
    pub delivered: usize,
    /// Subscribers whose queue was full (they are being disconnected as slow and will recover).
    pub dropped: usize,
    /// Who got a publication that requires acknowledgement.
    pub recipients: Vec<Arc<Subscription>>,
}

/// What `channels` reports for one channel on this node.
pub struct ChannelCount {
    pub channel: String,
    pub num_clients: u32,
}

/// Subscribers of one channel that share a view: evaluated and serialized once per publication.
struct Group {
    view: Arc<View>,
    members: HashMap<String, Arc<Subscription>>,
}

/// Subscribers of one channel on this node, grouped by view.
#[derive(Default)]
struct ChannelSubscribers {
    groups: HashMap<String, Group>,
    count: usize,
}

impl ChannelSubscribers {
    fn all(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.groups.values().flat_map(|g| g.members.values())
    }
}

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
        let entry = shard.entry(channel.to_owned()).or_default();
        let group = entry
            .groups
            .entry(subscription.view.key.clone())
            .or_insert_with(|| Group { view: subscription.view.clone(), members: HashMap::new() });
        if group.members.insert(subscription.client.id.clone(), subscription).is_none() {
            entry.count += 1;
        }
        first
    }

    /// Removes a subscription; true when the channel has no subscribers left on this node.
    pub fn remove_subscription(&self, channel: &str, client_id: &str) -> bool {
        let mut shard = self.channels[shard_of(channel)].write();
        let Some(entry) = shard.get_mut(channel) else { return false };
        let Some(key) = entry.groups.iter().find(|(_, g)| g.members.contains_key(client_id)).map(|(k, _)| k.clone())
        else {
            return false;
        };
        if let Some(group) = entry.groups.get_mut(&key) {
            group.members.remove(client_id);
            entry.count -= 1;
            if group.members.is_empty() {
                entry.groups.remove(&key);
            }
        }
        if entry.count == 0 {
            shard.remove(channel);
            return true;
        }
        false
    }

    pub fn num_subscribers(&self, channel: &str) -> usize {
        self.channels[shard_of(channel)].read().get(channel).map_or(0, |c| c.count)
    }

    pub fn num_subscriptions(&self) -> usize {
        self.channels.iter().map(|shard| shard.read().values().map(|c| c.count).sum::<usize>()).sum()
    }

    pub fn channels(&self) -> Vec<ChannelCount> {
        let mut out = Vec::new();
        for shard in &self.channels {
            for (channel, subscribers) in shard.read().iter() {
                out.push(ChannelCount { channel: channel.clone(), num_clients: subscribers.count as u32 });
            }
        }
        out
    }

    /// Queues a publication for every subscriber of `channel` on this node that may and wants to
    /// see it. Each group of subscribers with the same view costs one filter evaluation; each
    /// form of the publication (full or patch) is serialized at most once.
    pub fn broadcast_publication(&self, channel: &str, publication: &Arc<Publication>) -> Broadcast {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subscribers) = shard.get(channel) else { return Broadcast::default() };
        let track = publication.meta.as_ref().is_some_and(|m| m.ack.is_some());
        let mut recipients = Vec::new();
        let mut dropped = 0;
        let data = OnceCell::new();
        let full = OnceCell::new();
        let patch = OnceCell::new();
        let audience = publication.audience();
        let mut delivered = 0;
        for group in subscribers.groups.values() {
            if !group.view.passes(publication, &data) {
                continue;
            }
            let frame = if group.view.uses_patch_form(publication) {
                patch.get_or_init(|| {
                    Utf8Bytes::from(reply::push(channel, "pub", group.view.shape(publication).as_ref()))
                })
            } else {
                full.get_or_init(|| Utf8Bytes::from(reply::push(channel, "pub", publication.as_ref())))
            };
            for subscription in group.members.values() {
                if let Some(audience) = audience {
                    if !audience.admits(&subscription.viewer.user, &subscription.viewer.roles) {
                        continue;
                    }
                }
                if !subscription.deliver(publication, frame) {
                    dropped += 1;
                    continue;
                }
                delivered += 1;
                if track {
                    recipients.push(subscription.clone());
                }
            }
        }
        metrics::deliveries(delivered);
        Broadcast { subscribers: subscribers.count, delivered, dropped, recipients }
    }

    pub fn broadcast_join_leave(&self, channel: &str, kind: &str, info: &ClientInfo) {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subscribers) = shard.get(channel) else { return };
        let frame = Utf8Bytes::from(reply::push(channel, kind, &reply::JoinLeave { info }));
        for subscription in subscribers.all() {
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
            meta: None,
        })
    }

    #[test]
    fn pending_subscription_buffers_until_its_reply_is_queued() {
        let hub = Hub::new();
        let (handle, mut outgoing, _control) = ClientHandle::new("c1".into(), 1 << 20);
        let subscription = Subscription::new(Arc::new(handle), false, View::everything(), Viewer::default());
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
        assert!(
            hub.add_subscription("ch", Subscription::new(Arc::new(a), false, View::everything(), Viewer::default()))
        );
        assert!(
            !hub.add_subscription("ch", Subscription::new(Arc::new(b), false, View::everything(), Viewer::default()))
        );
        assert!(!hub.remove_subscription("ch", "a"));
        assert!(hub.remove_subscription("ch", "b"));
        assert!(hub.channels().is_empty());
    }
}

#[cfg(test)]
mod audience_properties {
    use super::*;
    use crate::outbound::Outgoing;
    use herald_core::protocol::{Audience, PublicationMeta};
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    const USERS: &[&str] = &["", "u1", "u2", "u3"];
    const ROLES: &[&str] = &["admin", "support", "ops"];

    fn names(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop::sample::select(pool), 0..3).prop_map(|v| v.into_iter().map(String::from).collect())
    }

    fn audience() -> impl Strategy<Value = Option<Audience>> {
        prop::option::of((names(USERS), names(ROLES)).prop_map(|(users, roles)| Audience { users, roles }))
    }

    proptest! {
        /// Nobody ever receives a publication outside its audience, live or through the
        /// history/recovery path, and everybody inside it receives it.
        #[test]
        fn nobody_outside_the_audience_receives(
            viewers in prop::collection::vec((prop::sample::select(USERS), names(ROLES)), 1..6),
            audiences in prop::collection::vec(audience(), 1..12),
        ) {
            let hub = Hub::new();
            let mut inboxes = Vec::new();
            for (i, (user, roles)) in viewers.iter().enumerate() {
                let (handle, outgoing, control) = ClientHandle::new(format!("c{i}"), 1 << 20);
                let viewer = Viewer { user: user.to_string(), roles: Arc::from(roles.clone()) };
                let subscription = Subscription::new(Arc::new(handle), false, View::everything(), viewer.clone());
                hub.add_subscription("ch", subscription.clone());
                subscription.go_live(|_| Vec::new());
                inboxes.push((viewer, outgoing, control));
            }
            let publications: Vec<Arc<Publication>> = audiences
                .iter()
                .enumerate()
                .map(|(i, audience)| Arc::new(Publication {
                    data: Arc::from(RawValue::from_string(i.to_string()).unwrap()),
                    info: None,
                    offset: i as u64 + 1,
                    tags: Default::default(),
                    time: 0,
                    meta: Some(Arc::new(PublicationMeta { audience: audience.clone(), patch_data: None, ack: None })),
                }))
                .collect();
            for publication in &publications {
                hub.broadcast_publication("ch", publication);
            }
            for (viewer, outgoing, _) in &mut inboxes {
                let mut live = Vec::new();
                while let Ok(Outgoing::Frame(frame)) = outgoing.try_recv() {
                    let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                    prop_assert!(!frame.as_str().contains("audience"));
                    live.push(value["push"]["pub"]["offset"].as_u64().unwrap());
                }
                let admitted: Vec<u64> = publications
                    .iter()
                    .filter(|p| p.audience().is_none_or(|a| {
                        viewer.roles.iter().any(|r| r == "admin")
                            || (!viewer.user.is_empty() && a.users.contains(&viewer.user))
                            || viewer.roles.iter().any(|r| a.roles.contains(r))
                    }))
                    .map(|p| p.offset)
                    .collect();
                prop_assert_eq!(&live, &admitted);
                let through_history: Vec<u64> = publications
                    .iter()
                    .filter_map(|p| viewer.visible(&View::everything(), p))
                    .map(|p| p.offset)
                    .collect();
                prop_assert_eq!(&through_history, &admitted);
            }
        }
    }
}
