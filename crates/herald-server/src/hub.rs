//! The hub: which connection is subscribed to which channel on this node, and fan-out to them.
//!
//! A publication is serialized once per channel and the same bytes are queued for every
//! subscriber. Subscriptions start "pending": publications are buffered until the subscribe reply
//! (with its recovered publications) is queued, so a client never sees a live publication before
//! its reply, nor a gap or duplicate between recovered and live ones.

use crate::metrics;
use crate::outbound::{pack_frames, ClientHandle, PublicationFrame, Queued};
use crate::view::{View, Viewer};
use bytes::Bytes;
use herald_core::protocol::Publication;
use herald_core::wire::{ByFormat, PushBody, WireFormat};
use parking_lot::{Mutex, RwLock};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The stream top the subscribe reply accounted for (0: none). A publication at or below
    /// it can still reach the hub after the subscription went live (it was visible in history
    /// while it waited in its channel's lane) and must not be delivered twice.
    floor: AtomicU64,
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
            floor: AtomicU64::new(0),
            pending: Mutex::new(Some(Vec::new())),
        })
    }

    /// Queues `frame` (holding `publications`), or buffers the publications while the
    /// subscription is pending.
    fn deliver(
        &self,
        publications: &[&Arc<Publication>],
        frame: &Arc<PublicationFrame>,
        writes: Option<&mut Vec<Arc<ClientHandle>>>,
    ) -> Delivery {
        // Fast path once live: no lock per delivery.
        if !self.live.load(Ordering::Acquire) {
            let mut pending = self.pending.lock();
            if let Some(buffer) = pending.as_mut() {
                buffer.extend(publications.iter().map(|p| Arc::clone(p)));
                return Delivery::Queued;
            }
            // It went live while this waited for the lock.
        }
        // Only now, after seeing it live: the floor is set before the subscription goes live,
        // and a broadcaster that read the floor first could miss it and deliver a publication
        // the subscribe reply already carried.
        if publications.iter().any(|p| self.covers(p)) {
            return Delivery::Covered;
        }
        let queued = match writes {
            Some(_) => self.client.offer_publication(frame.clone()),
            None => self.client.send_publication(frame.clone()),
        };
        match queued {
            Queued::Yes => Delivery::Queued,
            Queued::ToWrite => {
                if let Some(writes) = writes {
                    writes.push(self.client.clone());
                }
                Delivery::Queued
            }
            Queued::Shed | Queued::Refused => Delivery::NotQueued,
        }
    }

    /// Makes the subscription live. `finish` gets what was buffered and returns the frames to
    /// queue first (the subscribe reply, then any buffered publications it did not include);
    /// nothing published meanwhile can overtake them.
    pub fn go_live(&self, finish: impl FnOnce(Vec<Arc<Publication>>) -> Vec<Bytes>) {
        go_live_together(&[self], |mut buffered| finish(buffered.pop().unwrap_or_default()));
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Publications up to `offset` reached the client with its subscribe reply (recovered, or
    /// before its position); set before the subscription goes live.
    pub fn set_floor(&self, offset: u64) {
        self.floor.store(offset, Ordering::Relaxed);
    }

    /// True when the client already has this publication through its subscribe reply.
    fn covers(&self, publication: &Publication) -> bool {
        self.covers_offset(publication.offset)
    }

    fn covers_offset(&self, offset: u64) -> bool {
        offset != 0 && offset <= self.floor.load(Ordering::Relaxed)
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
    finish: impl FnOnce(Vec<Vec<Arc<Publication>>>) -> Vec<Bytes>,
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

/// What became of a frame for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Queued, or buffered while the subscription is pending.
    Queued,
    /// Shed, or the client is being disconnected as slow.
    NotQueued,
    /// The subscribe reply carried some of the publications: nothing was queued.
    Covered,
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

impl Broadcast {
    /// Counts what happened to one subscriber's delivery, and keeps the subscriber when the
    /// publication must be acknowledged (`track`, see [`needs_ack`]).
    fn count(&mut self, subscription: &Arc<Subscription>, queued: bool, track: bool) {
        if !queued {
            self.dropped += 1;
            return;
        }
        self.delivered += 1;
        if track {
            self.recipients.push(subscription.clone());
        }
    }
}

fn needs_ack(publication: &Publication) -> bool {
    publication.meta.as_ref().is_some_and(|m| m.ack.is_some())
}

/// A publication's serialized forms and parsed payload, made at most once per broadcast: the
/// full and the patch form, each in every wire format in use.
#[derive(Default)]
struct Forms {
    data: OnceCell<Option<serde_json::Value>>,
    full: ByFormat<OnceCell<Arc<PublicationFrame>>>,
    patch: ByFormat<OnceCell<Arc<PublicationFrame>>>,
}

/// Several publications of a batch packed into one frame for a subscriber.
struct Batched<'a> {
    indices: Vec<usize>,
    publications: Vec<&'a Arc<Publication>>,
    frame: Arc<PublicationFrame>,
}

impl<'a> Batched<'a> {
    fn new(
        format: WireFormat,
        channel: &Arc<str>,
        all: &'a [Arc<Publication>],
        included: &[(usize, &Arc<PublicationFrame>)],
    ) -> Self {
        let indices: Vec<usize> = included.iter().map(|(i, _)| *i).collect();
        let publications: Vec<&Arc<Publication>> = indices.iter().map(|&i| &all[i]).collect();
        let bytes = pack_frames(format, included.iter().map(|(_, f)| &f.bytes));
        let frame = publication_frame(bytes, channel, &publications, None);
        Self { indices, publications, frame }
    }
}

/// A frame holding `publications`, with what the outbound queue needs to know of it.
fn publication_frame(
    bytes: Bytes,
    channel: &Arc<str>,
    publications: &[&Arc<Publication>],
    conflate_key: Option<&str>,
) -> Arc<PublicationFrame> {
    let conflate = match (conflate_key, publications) {
        (Some(key), [publication]) => publication.tags.get(key).map(|value| Arc::from(value.as_str())),
        _ => None,
    };
    Arc::new(PublicationFrame {
        bytes,
        channel: channel.clone(),
        offsets: publications.iter().map(|p| p.offset).collect(),
        priority: publications.iter().map(|p| p.priority()).max().unwrap_or_default(),
        conflate,
    })
}

/// What `channels` reports for one channel on this node.
pub struct ChannelCount {
    pub channel: String,
    pub num_clients: u32,
}

/// Subscribers of one channel that share a view and a wire format: evaluated and serialized once
/// per publication.
struct Group {
    view: Arc<View>,
    format: WireFormat,
    members: HashMap<Arc<str>, Arc<Subscription>>,
}

/// Subscribers of one channel on this node, grouped by view.
#[derive(Default)]
struct ChannelSubscribers {
    groups: HashMap<(WireFormat, String), Group>,
    count: usize,
    /// The subscribers that asked for join/leave pushes, so a join costs what it sends rather
    /// than a pass over every subscriber of a large channel.
    join_leave: HashMap<Arc<str>, Arc<Subscription>>,
    /// When the channel last fanned out, in microseconds of the hub's clock.
    last_fan_out: AtomicU64,
}

impl ChannelSubscribers {
    fn all(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.groups.values().flat_map(|g| g.members.values())
    }
}

pub struct Hub {
    channels: Vec<RwLock<HashMap<String, ChannelSubscribers>>>,
    clients: RwLock<HashMap<Arc<str>, Arc<ClientHandle>>>,
    users: RwLock<HashMap<String, HashSet<Arc<str>>>>,
    /// Where the fan-out finds help for its direct writes (see `direct_write`).
    runtime: Option<tokio::runtime::Handle>,
    clock: std::time::Instant,
}

/// How long after a channel's previous fan-out a publication is written directly: 5 ms (200
/// publications/s on the channel). Closer ones are left to the connections' tasks.
const DIRECT_WRITE_AFTER_MICROS: u64 = 5_000;

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
            runtime: tokio::runtime::Handle::try_current().ok(),
            clock: std::time::Instant::now(),
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
        let format = subscription.client.format;
        let group = entry.groups.entry((format, subscription.view.key.clone())).or_insert_with(|| Group {
            view: subscription.view.clone(),
            format,
            members: HashMap::new(),
        });
        let id = subscription.client.id.clone();
        if subscription.join_leave {
            entry.join_leave.insert(id.clone(), subscription.clone());
        } else {
            entry.join_leave.remove(&id);
        }
        if group.members.insert(id, subscription).is_none() {
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
        entry.join_leave.remove(client_id);
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

    /// The connections subscribed to `channel` on this node.
    pub fn channel_clients(&self, channel: &str) -> Vec<Arc<ClientHandle>> {
        let shard = self.channels[shard_of(channel)].read();
        shard.get(channel).map(|c| c.all().map(|s| s.client.clone()).collect()).unwrap_or_default()
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

    /// Queues publications of `channel` for every subscriber on this node that may and wants to
    /// see them, returning what happened to each. Several publications go to each subscriber as
    /// one frame (a batch). Each group of subscribers with the same view costs one filter
    /// evaluation per publication; each form of a publication (full or patch) is serialized at
    /// most once, and a batch frame is packed once per group unless an audience makes it differ
    /// between members.
    ///
    /// `conflate_key` names the tag whose value lets a newer publication replace an older one
    /// still waiting in a slow subscriber's queue.
    pub fn broadcast(
        &self,
        channel: &str,
        publications: &[Arc<Publication>],
        conflate_key: Option<&str>,
    ) -> Vec<Broadcast> {
        let (outcomes, writes) = self.broadcast_queueing(channel, publications, conflate_key);
        crate::direct_write::Writes::run(writes, self.runtime.as_ref());
        outcomes
    }

    /// Queues the frames of [`Hub::broadcast`], and returns the idle connections it did not wake
    /// because the caller is to write to them directly (see `direct_write`).
    fn broadcast_queueing(
        &self,
        channel: &str,
        publications: &[Arc<Publication>],
        conflate_key: Option<&str>,
    ) -> (Vec<Broadcast>, Vec<Arc<ClientHandle>>) {
        let shard = self.channels[shard_of(channel)].read();
        let mut outcomes: Vec<Broadcast> = publications.iter().map(|_| Broadcast::default()).collect();
        let mut direct_writes = Vec::new();
        let Some(subscribers) = shard.get(channel) else { return (outcomes, direct_writes) };
        // A publication alone, well after the channel's previous one, is written at once by
        // this fan-out. Publications that come closer together (or several at once, queued up
        // behind a busy fan-out) are left to the connections' tasks: by the time those write,
        // they often have more to put in the same write.
        let now = self.clock.elapsed().as_micros() as u64;
        let previous = subscribers.last_fan_out.swap(now, Ordering::Relaxed);
        let direct = publications.len() == 1 && now.saturating_sub(previous) >= DIRECT_WRITE_AFTER_MICROS;
        let mut writes = direct.then_some(&mut direct_writes);
        for outcome in &mut outcomes {
            outcome.subscribers = subscribers.count;
        }
        let channel_name: Arc<str> = Arc::from(channel);
        let forms: Vec<Forms> = publications.iter().map(|_| Forms::default()).collect();
        // A frame of one publication carries the conflation key only when it goes out alone.
        let key_if_alone = if publications.len() == 1 { conflate_key } else { None };
        let mut passing: Vec<(usize, &Arc<PublicationFrame>)> = Vec::with_capacity(publications.len());
        for group in subscribers.groups.values() {
            passing.clear();
            for (index, publication) in publications.iter().enumerate() {
                let form = &forms[index];
                if !group.view.passes(publication, &form.data) {
                    continue;
                }
                let format = group.format;
                let frame = if group.view.uses_patch_form(publication) {
                    form.patch.get(format).get_or_init(|| {
                        let shaped = group.view.shape(publication);
                        let bytes = Bytes::from(format.push(channel, PushBody::Pub(&shaped)));
                        publication_frame(bytes, &channel_name, &[publication], key_if_alone)
                    })
                } else {
                    form.full.get(format).get_or_init(|| {
                        let bytes = Bytes::from(format.push(channel, PushBody::Pub(publication)));
                        publication_frame(bytes, &channel_name, &[publication], key_if_alone)
                    })
                };
                passing.push((index, frame));
            }
            match passing.as_slice() {
                [] => {}
                [(index, frame)] => {
                    let publication = &publications[*index];
                    let audience = publication.audience();
                    let outcome = &mut outcomes[*index];
                    let track = needs_ack(publication);
                    for subscription in group.members.values() {
                        if let Some(audience) = audience {
                            if !audience.admits(&subscription.viewer.user, &subscription.viewer.roles) {
                                continue;
                            }
                        }
                        match subscription.deliver(&[publication], frame, writes.as_deref_mut()) {
                            Delivery::Covered => {}
                            delivery => outcome.count(subscription, delivery == Delivery::Queued, track),
                        }
                    }
                }
                several => {
                    // Without audiences every member gets the same batch frame: pack it once.
                    let restricted = several.iter().any(|(i, _)| publications[*i].audience().is_some());
                    let shared =
                        (!restricted).then(|| Batched::new(group.format, &channel_name, publications, several));
                    // Offsets grow within a batch: one comparison per subscriber finds whether
                    // its subscribe reply covered any of them.
                    let lowest = several.iter().map(|(i, _)| publications[*i].offset).filter(|&o| o != 0).min();
                    for subscription in group.members.values() {
                        let delivery = if lowest.is_some_and(|offset| subscription.covers_offset(offset)) {
                            Delivery::Covered
                        } else {
                            let own;
                            let batched = match &shared {
                                Some(shared) => shared,
                                None => {
                                    let admitted: Vec<(usize, &Arc<PublicationFrame>)> = several
                                        .iter()
                                        .filter(|(i, _)| subscription.viewer.admitted(&publications[*i]))
                                        .copied()
                                        .collect();
                                    if admitted.is_empty() {
                                        continue;
                                    }
                                    own = Batched::new(group.format, &channel_name, publications, &admitted);
                                    &own
                                }
                            };
                            let delivery =
                                subscription.deliver(&batched.publications, &batched.frame, writes.as_deref_mut());
                            if delivery != Delivery::Covered {
                                for &index in &batched.indices {
                                    let queued = delivery == Delivery::Queued;
                                    outcomes[index].count(subscription, queued, needs_ack(&publications[index]));
                                }
                            }
                            delivery
                        };
                        if delivery == Delivery::Covered {
                            // Just subscribed: part of the batch came with the reply. The rest
                            // goes one by one (rare, so not worth a frame of its own).
                            for &(index, frame) in several {
                                let publication = &publications[index];
                                if !subscription.viewer.admitted(publication) {
                                    continue;
                                }
                                match subscription.deliver(&[publication], frame, writes.as_deref_mut()) {
                                    Delivery::Covered => {}
                                    delivery => outcomes[index].count(
                                        subscription,
                                        delivery == Delivery::Queued,
                                        needs_ack(publication),
                                    ),
                                }
                            }
                        }
                    }
                }
            }
        }
        metrics::deliveries(outcomes.iter().map(|o| o.delivered).sum());
        (outcomes, direct_writes)
    }

    /// One publication to every subscriber that may and wants to see it.
    pub fn broadcast_publication(&self, channel: &str, publication: &Arc<Publication>) -> Broadcast {
        self.broadcast(channel, std::slice::from_ref(publication), None).pop().unwrap_or_default()
    }

    /// A join or leave push (`body`) to the subscribers that asked for them.
    pub fn broadcast_join_leave(&self, channel: &str, body: PushBody<'_>) {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subscribers) = shard.get(channel) else { return };
        if subscribers.join_leave.is_empty() {
            return;
        }
        let mut frames: ByFormat<Option<Bytes>> = ByFormat::default();
        for subscription in subscribers.join_leave.values() {
            if subscription.is_live() {
                let format = subscription.client.format;
                let frame = frames.get_mut(format).get_or_insert_with(|| Bytes::from(format.push(channel, body)));
                subscription.client.send(frame.clone());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// A publication whose data is its offset.
    pub(crate) fn publication(offset: u64) -> Arc<Publication> {
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
        let handle = ClientHandle::new("c1", 1 << 20);
        let handle = Arc::new(handle);
        let subscription = Subscription::new(handle.clone(), false, View::everything(), Viewer::default());
        hub.add_subscription("ch", subscription.clone());
        for offset in 1..=3 {
            hub.broadcast_publication("ch", &publication(offset));
        }
        assert!(handle.try_batch().is_none(), "nothing reaches a pending subscriber");
        let mut seen_buffer = Vec::new();
        subscription.go_live(|buffered| {
            seen_buffer = buffered.iter().map(|p| p.offset).collect();
            vec![Bytes::from_static(b"reply")]
        });
        hub.broadcast_publication("ch", &publication(4));
        assert_eq!(seen_buffer, vec![1, 2, 3]);
        let frames: Vec<String> = handle
            .try_batch()
            .map(|b| b.frames.iter().map(|f| String::from_utf8_lossy(f.as_bytes()).into_owned()).collect())
            .unwrap_or_default();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], "reply");
        assert!(frames[1].contains(r#""offset":4"#), "{}", frames[1]);
    }

    #[test]
    fn what_the_subscribe_reply_covered_is_not_delivered_again() {
        let hub = Hub::new();
        let handle = Arc::new(ClientHandle::new("c1", 1 << 20));
        let subscription = Subscription::new(handle.clone(), false, View::everything(), Viewer::default());
        hub.add_subscription("ch", subscription.clone());
        // The reply accounted for the stream up to offset 3; offsets 2..=5 were still on their
        // way to the hub (queued in the channel's lane) when the subscription went live.
        subscription.set_floor(3);
        subscription.go_live(|_| Vec::new());
        hub.broadcast_publication("ch", &publication(2));
        hub.broadcast("ch", &[publication(3), publication(4), publication(5)], None);
        assert_eq!(handle.take_offsets(), vec![vec![4], vec![5]]);
    }

    /// A publication the subscribe reply carried, racing the subscription going live, reaches
    /// the client once: through the reply, never again live. (The broadcaster used to read the
    /// floor before it saw the subscription live, and could miss a floor set in between.)
    #[test]
    fn a_publication_racing_the_subscription_going_live_arrives_once() {
        let barrier = std::sync::Barrier::new(2);
        for _ in 0..3000 {
            let hub = Hub::new();
            let handle = Arc::new(ClientHandle::new("c1", 1 << 20));
            let subscription = Subscription::new(handle.clone(), false, View::everything(), Viewer::default());
            hub.add_subscription("ch", subscription.clone());
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    barrier.wait();
                    hub.broadcast_publication("ch", &publication(7));
                    hub.broadcast_publication("ch", &publication(8));
                });
                barrier.wait();
                // The history read for the reply saw the stream up to offset 7.
                subscription.go_live(|buffered| {
                    subscription.set_floor(7);
                    let mut frames = vec![Bytes::from_static(b"reply up to 7")];
                    for later in buffered.iter().filter(|p| p.offset > 7) {
                        frames.push(Bytes::from(format!("buffered {}", later.offset)));
                    }
                    frames
                });
            });
            let frames: Vec<String> = std::iter::from_fn(|| handle.try_batch())
                .flat_map(|batch| batch.frames)
                .map(|frame| String::from_utf8_lossy(frame.as_bytes()).into_owned())
                .collect();
            let live_7 = frames.iter().filter(|f| f.contains(r#""offset":7"#)).count();
            let eights = frames.iter().filter(|f| f.contains(r#""offset":8"#) || *f == "buffered 8").count();
            assert_eq!(live_7, 0, "offset 7 came with the reply and again live: {frames:?}");
            assert_eq!(eights, 1, "offset 8 exactly once: {frames:?}");
        }
    }

    #[test]
    fn last_unsubscribe_empties_the_channel() {
        let hub = Hub::new();
        let a = ClientHandle::new("a", 1024);
        let b = ClientHandle::new("b", 1024);
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
                let handle = ClientHandle::new(format!("c{i}"), 1 << 20);
                let handle = Arc::new(handle);
                let viewer = Viewer { user: user.to_string(), roles: Arc::from(roles.clone()) };
                let subscription = Subscription::new(handle.clone(), false, View::everything(), viewer.clone());
                hub.add_subscription("ch", subscription.clone());
                subscription.go_live(|_| Vec::new());
                inboxes.push((viewer, handle));
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
                    meta: Some(Arc::new(PublicationMeta { audience: audience.clone(), ..Default::default() })),
                }))
                .collect();
            for publication in &publications {
                hub.broadcast_publication("ch", publication);
            }
            // The same publications again, as one batch: each viewer gets one frame with exactly
            // the publications it is admitted to.
            hub.broadcast("ch", &publications, None);
            for (viewer, handle) in &mut inboxes {
                let admitted: Vec<u64> = publications
                    .iter()
                    .filter(|p| p.audience().is_none_or(|a| {
                        viewer.roles.iter().any(|r| r == "admin")
                            || (!viewer.user.is_empty() && a.users.contains(&viewer.user))
                            || viewer.roles.iter().any(|r| a.roles.contains(r))
                    }))
                    .map(|p| p.offset)
                    .collect();
                let frames = handle.try_batch().map(|b| b.frames).unwrap_or_default();
                let offsets_of = |frame: &crate::outbound::QueuedFrame| -> Vec<u64> {
                    frame.as_text().lines().map(|line| {
                        let value: serde_json::Value = serde_json::from_str(line).unwrap();
                        value["push"]["pub"]["offset"].as_u64().unwrap()
                    }).collect()
                };
                prop_assert!(frames.iter().all(|f| !f.as_text().contains("audience")));
                let expected_frames = admitted.len() + usize::from(!admitted.is_empty());
                prop_assert_eq!(frames.len(), expected_frames);
                let live: Vec<u64> = frames.iter().take(admitted.len()).flat_map(offsets_of).collect();
                prop_assert_eq!(&live, &admitted);
                let batched: Vec<u64> = frames.iter().skip(admitted.len()).flat_map(offsets_of).collect();
                prop_assert_eq!(&batched, &admitted);
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
