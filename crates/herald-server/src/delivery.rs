//! From the broker to the hub: where a namespace's conflation window and batching window hold
//! publications back before they fan out, and where each fan-out is counted and tracked for
//! acknowledgement.
//!
//! Channels of namespaces without either option go straight to the hub, so their latency is
//! unchanged. For the others, each channel has a window guarded by its own lock, held while
//! publications are handed on, so what leaves a window stays in stream order.
//!
//! - Conflation (`conflate_key`, `conflate_window`) throttles a channel: the first publication
//!   goes out at once and opens a window; during it publications are held, a newer one replacing
//!   the held one with the same key value; when the window ends what is held goes out in offset
//!   order and a new window opens, until one passes with nothing held.
//! - Batching (`batch_max_size`, `batch_max_delay`) holds publications until that many wait or
//!   the first waited that long, then sends them to each subscriber as one frame.
//!
//! Publications of the other channels fan out through a lane per channel: the engine queues
//! each in stream order under its own lock and then flushes the channel. A publication queued
//! while another publisher is fanning the channel out is taken by that publisher and sent with
//! whatever else queued meanwhile, one frame per subscriber: under load a subscriber costs one
//! queue entry, one wake and one write for many publications, and nobody waits for the channel
//! longer than before. Alone on its channel, a publication goes out at once, by itself.

use crate::acks::AckTracker;
use crate::engine::BrokerEventHandler;
use crate::hub::Hub;
use crate::shard::{shard_of, SHARDS};
use crate::stats::{Outcome, Stats};
use herald_config::{Config, NamespaceOptions};
use herald_core::channel::ChannelName;
use herald_core::protocol::{ClientInfo, Publication};
use herald_core::wire::PushBody;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(crate) struct HubDelivery {
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    acks: Arc<AckTracker>,
    config: Config,
    /// Where window timers run; without a runtime (a node built outside tokio) nothing is held.
    runtime: Option<tokio::runtime::Handle>,
    windows: Mutex<HashMap<String, Arc<Mutex<ChannelWindow>>>>,
    /// Channels with publications queued or being fanned out, sharded by channel name.
    lanes: Vec<Mutex<HashMap<String, Lane>>>,
    this: Weak<HubDelivery>,
}

/// A channel's publications waiting to fan out, and whether a caller is fanning them out.
#[derive(Default)]
struct Lane {
    queued: Vec<Arc<Publication>>,
    flushing: bool,
}

/// Most publications that queued up behind a fan-out and go to a subscriber as one frame.
const MAX_COMBINED: usize = 64;

/// Rounds one caller fans out for others before a task takes over, so that a publish call does
/// not wait on a busy channel without end.
const ROUNDS_BEFORE_HANDOFF: usize = 8;

/// What a channel's windows hold.
#[derive(Default)]
struct ChannelWindow {
    conflation_open: bool,
    /// Held during the conflation window: at most one per conflation key value.
    held: Vec<Arc<Publication>>,
    batch: Vec<Arc<Publication>>,
    /// Bumped on each batch flush, so a timer set for an earlier batch does nothing.
    batch_generation: u64,
}

impl ChannelWindow {
    fn idle(&self) -> bool {
        !self.conflation_open && self.held.is_empty() && self.batch.is_empty()
    }
}

impl HubDelivery {
    pub fn new(hub: Arc<Hub>, stats: Arc<Stats>, acks: Arc<AckTracker>, config: Config) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new_cyclic(|this| Self {
            hub,
            stats,
            acks,
            config,
            runtime,
            windows: Mutex::new(HashMap::new()),
            lanes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            this: this.clone(),
        })
    }

    fn options(&self, channel: &str) -> Option<&NamespaceOptions> {
        self.config.namespace_options(ChannelName::parse(channel).namespace)
    }

    pub fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
        let Some(options) = self.options(channel) else {
            return self.deliver(channel, &[publication], None);
        };
        let (conflating, batching) = windows(options);
        if (!conflating && !batching) || self.runtime.is_none() {
            let key = conflating.then_some(options.conflate_key.as_str());
            return self.deliver(channel, &[publication], key);
        }
        let window = self.window(channel);
        let mut state = window.lock();
        if conflating {
            if state.conflation_open {
                hold_latest(&mut state.held, publication, &options.conflate_key);
                return;
            }
            state.conflation_open = true;
            self.after(options.conflate_window, channel, Timer::Conflation);
        }
        self.forward(channel, &mut state, options, vec![publication]);
    }

    /// Queues a publication in its channel's lane; channels whose namespace holds publications
    /// back (conflation, batching) take it at once instead.
    pub fn queue_publication(&self, channel: &str, publication: Arc<Publication>) {
        let holds_back =
            self.options(channel).map(windows).is_some_and(|(conflating, batching)| conflating || batching);
        if holds_back {
            return self.handle_publication(channel, publication);
        }
        let mut lanes = self.lanes[shard_of(channel)].lock();
        match lanes.get_mut(channel) {
            Some(lane) => lane.queued.push(publication),
            None => {
                lanes.insert(channel.to_owned(), Lane { queued: vec![publication], flushing: false });
            }
        }
    }

    /// Fans out what is queued for `channel`, round after round, unless another caller is at it.
    pub fn flush_publications(&self, channel: &str) {
        self.flush_lane(channel, false);
    }

    /// `flushing`: this caller already owns the lane (a task that took over).
    fn flush_lane(&self, channel: &str, mut flushing: bool) {
        loop {
            for _ in 0..ROUNDS_BEFORE_HANDOFF {
                let queued = {
                    let mut lanes = self.lanes[shard_of(channel)].lock();
                    let Some(lane) = lanes.get_mut(channel) else { return };
                    if lane.flushing && !flushing {
                        return;
                    }
                    if lane.queued.is_empty() {
                        lanes.remove(channel);
                        return;
                    }
                    lane.flushing = true;
                    flushing = true;
                    std::mem::take(&mut lane.queued)
                };
                self.deliver_combined(channel, &queued);
            }
            if let Some(runtime) = &self.runtime {
                let this = self.this.clone();
                let channel = channel.to_owned();
                runtime.spawn(async move {
                    if let Some(delivery) = this.upgrade() {
                        delivery.flush_lane(&channel, true);
                    }
                });
                return;
            }
        }
    }

    /// Fans out publications that queued up together: consecutive ones of the same priority
    /// share a frame per subscriber, so that shedding still goes by priority. A publication with
    /// an audience goes alone: its frame is the same for every admitted subscriber, where a
    /// shared frame would have to be packed per subscriber.
    fn deliver_combined(&self, channel: &str, queued: &[Arc<Publication>]) {
        let mut start = 0;
        while start < queued.len() {
            let first = &queued[start];
            let mut end = start + 1;
            if first.audience().is_none() {
                while end < queued.len()
                    && end - start < MAX_COMBINED
                    && queued[end].audience().is_none()
                    && queued[end].priority() == first.priority()
                {
                    end += 1;
                }
            }
            self.deliver(channel, &queued[start..end], None);
            start = end;
        }
    }

    /// Hands publications leaving the conflation stage to the batch stage, or to the hub.
    fn forward(
        &self,
        channel: &str,
        state: &mut ChannelWindow,
        options: &NamespaceOptions,
        publications: Vec<Arc<Publication>>,
    ) {
        let key = (!options.conflate_key.is_empty()).then_some(options.conflate_key.as_str());
        if !windows(options).1 {
            // Each on its own, so a slow subscriber's queue can still replace superseded ones.
            for publication in publications {
                self.deliver(channel, &[publication], key);
            }
            return;
        }
        let was_empty = state.batch.is_empty();
        state.batch.extend(publications);
        if state.batch.len() >= options.batch_max_size {
            state.batch_generation += 1;
            let batch = std::mem::take(&mut state.batch);
            for chunk in batch.chunks(options.batch_max_size) {
                self.deliver(channel, chunk, None);
            }
        } else if was_empty {
            self.after(options.batch_max_delay, channel, Timer::Batch(state.batch_generation));
        }
    }

    fn on_timer(&self, channel: &str, timer: Timer) {
        let Some(options) = self.options(channel) else { return };
        let window = self.window(channel);
        {
            let mut state = window.lock();
            match timer {
                Timer::Conflation => {
                    let held = std::mem::take(&mut state.held);
                    if held.is_empty() {
                        state.conflation_open = false;
                    } else {
                        self.after(options.conflate_window, channel, Timer::Conflation);
                        self.forward(channel, &mut state, options, held);
                    }
                }
                Timer::Batch(generation) => {
                    if generation == state.batch_generation && !state.batch.is_empty() {
                        state.batch_generation += 1;
                        let batch = std::mem::take(&mut state.batch);
                        self.deliver(channel, &batch, None);
                    }
                }
            }
        }
        self.forget_if_idle(channel, window);
    }

    fn window(&self, channel: &str) -> Arc<Mutex<ChannelWindow>> {
        self.windows.lock().entry(channel.to_owned()).or_default().clone()
    }

    /// Drops an idle channel's window, unless someone else is about to use it: clones are only
    /// taken under the map lock, so the count cannot grow while it is held.
    fn forget_if_idle(&self, channel: &str, window: Arc<Mutex<ChannelWindow>>) {
        let mut windows = self.windows.lock();
        if Arc::strong_count(&window) == 2 && window.lock().idle() {
            windows.remove(channel);
        }
    }

    fn after(&self, delay: Duration, channel: &str, timer: Timer) {
        let Some(runtime) = &self.runtime else { return };
        let this = self.this.clone();
        let channel = channel.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(delivery) = this.upgrade() {
                delivery.on_timer(&channel, timer);
            }
        });
    }

    fn deliver(&self, channel: &str, publications: &[Arc<Publication>], conflate_key: Option<&str>) {
        let outcomes = self.hub.broadcast(channel, publications, conflate_key);
        for (publication, broadcast) in publications.iter().zip(outcomes) {
            let outcome = Outcome {
                subscribers: broadcast.subscribers,
                delivered: broadcast.delivered,
                dropped: broadcast.dropped,
            };
            self.stats.record(channel, publication, &outcome);
            if let Some(policy) = publication.meta.as_ref().and_then(|m| m.ack) {
                self.acks.track(
                    channel,
                    publication,
                    broadcast.recipients,
                    Duration::from_millis(policy.timeout_ms),
                    policy.max_retries,
                );
            }
        }
    }
}

impl BrokerEventHandler for HubDelivery {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
        HubDelivery::handle_publication(self, channel, publication);
    }
    fn queue_publication(&self, channel: &str, publication: Arc<Publication>) {
        HubDelivery::queue_publication(self, channel, publication);
    }
    fn flush_publications(&self, channel: &str) {
        HubDelivery::flush_publications(self, channel);
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.hub.broadcast_join_leave(channel, PushBody::Join(info));
    }
    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.hub.broadcast_join_leave(channel, PushBody::Leave(info));
    }
    fn handle_resubscribe(&self, channel: &str) {
        let clients = self.hub.channel_clients(channel);
        tracing::warn!(%channel, subscribers = clients.len(), "stream lost publications; subscribers must resubscribe");
        for client in clients {
            client.control(crate::outbound::Control::Unsubscribe {
                channel: channel.to_owned(),
                code: herald_core::codes::unsubscribe::INSUFFICIENT_STATE,
                reason: "insufficient state".into(),
            });
        }
    }
}

/// Whether a namespace has a conflation window, and whether it has a batching window.
fn windows(options: &NamespaceOptions) -> (bool, bool) {
    let conflating = !options.conflate_key.is_empty() && !options.conflate_window.is_zero();
    let batching = options.batch_max_size > 0 && !options.batch_max_delay.is_zero();
    (conflating, batching)
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Conflation,
    Batch(u64),
}

/// Holds `publication`, dropping a held one it supersedes (same value of the `key` tag).
/// Publications without the tag are all kept. Order stays by offset.
fn hold_latest(held: &mut Vec<Arc<Publication>>, publication: Arc<Publication>, key: &str) {
    if let Some(value) = publication.tags.get(key) {
        if let Some(index) = held.iter().position(|p| p.tags.get(key) == Some(value)) {
            let superseded = held.remove(index);
            crate::metrics::shed(superseded.priority(), "conflated");
        }
    }
    held.push(publication);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Subscription;
    use crate::outbound::ClientHandle;
    use crate::view::{View, Viewer};
    use herald_core::protocol::{Priority, PublicationMeta};

    fn publication(offset: u64, priority: Priority) -> Arc<Publication> {
        let meta = Some(Arc::new(PublicationMeta { priority, ..Default::default() }));
        Arc::new(Publication { meta, ..(*crate::hub::tests::publication(offset)).clone() })
    }

    fn delivery_with_subscriber() -> (Arc<HubDelivery>, Arc<ClientHandle>) {
        let hub = Arc::new(Hub::new());
        let client = Arc::new(ClientHandle::new("c", 1 << 20));
        let subscription = Subscription::new(client.clone(), false, View::everything(), Viewer::default());
        hub.add_subscription("ch", subscription.clone());
        subscription.go_live(|_| Vec::new());
        let delivery = HubDelivery::new(hub, Arc::default(), Arc::default(), herald_config::embedded_defaults());
        (delivery, client)
    }

    #[test]
    fn a_publication_alone_goes_out_by_itself_at_once() {
        let (delivery, client) = delivery_with_subscriber();
        delivery.queue_publication("ch", publication(1, Priority::Normal));
        delivery.flush_publications("ch");
        assert_eq!(client.take_offsets(), vec![vec![1]]);
        assert!(delivery.lanes.iter().all(|shard| shard.lock().is_empty()), "an idle channel keeps no lane");
    }

    #[test]
    fn publications_queued_behind_a_fan_out_share_a_frame_per_priority() {
        let (delivery, client) = delivery_with_subscriber();
        let priorities = [Priority::Normal, Priority::Normal, Priority::Low, Priority::Low, Priority::Normal];
        for (i, priority) in priorities.into_iter().enumerate() {
            delivery.queue_publication("ch", publication(i as u64 + 1, priority));
        }
        delivery.flush_publications("ch");
        assert_eq!(client.take_offsets(), vec![vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[test]
    fn a_caller_that_finds_the_lane_busy_leaves_its_publication_to_the_flusher() {
        let (delivery, client) = delivery_with_subscriber();
        delivery.queue_publication("ch", publication(1, Priority::Normal));
        delivery.lanes[shard_of("ch")].lock().get_mut("ch").unwrap().flushing = true;
        delivery.flush_publications("ch");
        assert!(client.take_offsets().is_empty(), "another caller is flushing the channel");
        delivery.queue_publication("ch", publication(2, Priority::Normal));
        delivery.flush_lane("ch", true);
        assert_eq!(client.take_offsets(), vec![vec![1, 2]]);
    }
}
