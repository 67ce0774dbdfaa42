//! Acknowledged delivery (Herald extension): publications that require confirmation are tracked
//! per recipient; a recipient that does not acknowledge in time gets the same publication (same
//! offset) again, with exponential backoff and jitter, up to a retry limit; then the delivery is
//! recorded as expired. The audit answers who acknowledged, who is pending, who expired.
//!
//! Clients acknowledge with the RPC `herald.ack {"channel", "offset"}`, cumulative per channel:
//! everything up to the offset is confirmed. A user's acknowledgement covers all of that user's
//! connections (a reconnecting client gets a new client id).

use crate::hub::Subscription;
use crate::metrics;
use bytes::Bytes;
use herald_core::protocol::Publication;
use herald_core::wire::{ByFormat, PushBody};
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Audit records kept per node; the oldest go first beyond this.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckState {
    Pending,
    Acked,
    Expired,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recipient {
    pub user: String,
    pub client: String,
    pub state: AckState,
    pub retries: u32,
}

struct Delivery {
    recipient: Recipient,
    /// Where to push a retry; gone once the connection closed.
    subscription: Weak<Subscription>,
}

struct Tracked {
    /// The publication's push in each wire format its recipients speak (JSON, Protobuf).
    frames: ByFormat<Option<Bytes>>,
    timeout: Duration,
    max_retries: u32,
    deliveries: Vec<Delivery>,
}

/// When to look at one delivery again.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    channel: String,
    offset: u64,
    client: String,
}

#[derive(Default)]
struct State {
    /// (channel, offset) -> tracked publication.
    tracked: BTreeMap<(String, u64), Tracked>,
    due: BinaryHeap<Reverse<Due>>,
    /// Insertion order, for bounding `tracked`.
    order: std::collections::VecDeque<(String, u64)>,
}

/// A delivery that ran out of retries; also published to `delivery.expired_channel`.
#[derive(Debug, Clone, Serialize)]
pub struct Expired {
    pub channel: String,
    pub offset: u64,
    #[serde(flatten)]
    pub recipient: Recipient,
}

/// What `delivery_status` answers.
#[derive(Debug, Default, Serialize)]
pub struct DeliveryStatus {
    pub acked: Vec<Recipient>,
    pub pending: Vec<Recipient>,
    pub expired: Vec<Recipient>,
}

/// Called with (channel, offset, recipient) when a delivery expires.
pub type ExpiryHandler = Arc<dyn Fn(&str, u64, &Recipient) + Send + Sync>;

#[derive(Default)]
pub struct AckTracker {
    state: Mutex<State>,
    on_expired: Mutex<Option<ExpiryHandler>>,
}

fn backoff(timeout: Duration, retries: u32) -> Duration {
    let base = timeout.saturating_mul(1u32 << retries.min(16));
    // Up to 20% jitter so that many clients retried together do not stay together.
    let jitter = rand::rng().random_range(0..=base.as_millis().max(1) as u64 / 5);
    base + Duration::from_millis(jitter)
}

impl AckTracker {
    pub fn on_expired(&self, handler: ExpiryHandler) {
        *self.on_expired.lock() = Some(handler);
    }

    /// Starts tracking a publication delivered live to `recipients`.
    pub fn track(
        &self,
        channel: &str,
        publication: &Publication,
        recipients: Vec<Arc<Subscription>>,
        timeout: Duration,
        max_retries: u32,
    ) {
        if recipients.is_empty() || publication.offset == 0 {
            return;
        }
        let mut frames: ByFormat<Option<Bytes>> = ByFormat::default();
        for subscription in &recipients {
            let format = subscription.client.format;
            frames.get_mut(format).get_or_insert_with(|| Bytes::from(format.push(channel, PushBody::Pub(publication))));
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        let key = (channel.to_owned(), publication.offset);
        let mut deliveries = Vec::with_capacity(recipients.len());
        for subscription in recipients {
            let client = subscription.client.id.to_string();
            state.due.push(Reverse(Due {
                at: now + backoff(timeout, 0),
                channel: channel.to_owned(),
                offset: publication.offset,
                client: client.clone(),
            }));
            deliveries.push(Delivery {
                recipient: Recipient {
                    user: subscription.viewer.user.clone(),
                    client,
                    state: AckState::Pending,
                    retries: 0,
                },
                subscription: Arc::downgrade(&subscription),
            });
            metrics::ack_pending(1.0);
        }
        state.tracked.insert(key.clone(), Tracked { frames, timeout, max_retries, deliveries });
        state.order.push_back(key);
        while state.tracked.len() > MAX_TRACKED {
            let Some(oldest) = state.order.pop_front() else { break };
            if let Some(dropped) = state.tracked.remove(&oldest) {
                let pending = dropped.deliveries.iter().filter(|d| d.recipient.state == AckState::Pending).count();
                metrics::ack_pending(-(pending as f64));
            }
        }
    }

    /// A cumulative acknowledgement by a connection (and its user) on a channel.
    pub fn ack(&self, channel: &str, offset: u64, user: &str, client: &str) -> usize {
        let mut state = self.state.lock();
        let mut confirmed = 0;
        for ((_, _), tracked) in state.tracked.range_mut((channel.to_owned(), 0)..=(channel.to_owned(), offset)) {
            for delivery in &mut tracked.deliveries {
                let same = delivery.recipient.client == client || (!user.is_empty() && delivery.recipient.user == user);
                if same && delivery.recipient.state == AckState::Pending {
                    delivery.recipient.state = AckState::Acked;
                    confirmed += 1;
                }
            }
        }
        metrics::acks(confirmed);
        metrics::ack_pending(-(confirmed as f64));
        confirmed
    }

    /// Retries what is due and expires what ran out of retries. Returns when to call again and
    /// what expired.
    pub fn tick(&self) -> (Option<Instant>, Vec<Expired>) {
        let now = Instant::now();
        let mut expired: Vec<Expired> = Vec::new();
        let next = {
            let mut state = self.state.lock();
            while state.due.peek().is_some_and(|Reverse(d)| d.at <= now) {
                let Some(Reverse(due)) = state.due.pop() else { break };
                let Some(tracked) = state.tracked.get_mut(&(due.channel.clone(), due.offset)) else { continue };
                let frames = tracked.frames.clone();
                let (timeout, max_retries) = (tracked.timeout, tracked.max_retries);
                let Some(delivery) = tracked.deliveries.iter_mut().find(|d| d.recipient.client == due.client) else {
                    continue;
                };
                if delivery.recipient.state != AckState::Pending {
                    continue;
                }
                if delivery.recipient.retries >= max_retries {
                    delivery.recipient.state = AckState::Expired;
                    expired.push(Expired {
                        channel: due.channel.clone(),
                        offset: due.offset,
                        recipient: delivery.recipient.clone(),
                    });
                    continue;
                }
                delivery.recipient.retries += 1;
                let retries = delivery.recipient.retries;
                // A closed connection is not retried by push: it recovers from history when it
                // comes back, and its user's acknowledgement still counts.
                if let Some(subscription) = delivery.subscription.upgrade() {
                    if let Some(frame) = frames.get(subscription.client.format) {
                        subscription.client.send(frame.clone());
                    }
                    metrics::ack_retry();
                }
                state.due.push(Reverse(Due { at: now + backoff(timeout, retries), ..due }));
            }
            state.due.peek().map(|Reverse(d)| d.at)
        };
        if !expired.is_empty() {
            metrics::ack_pending(-(expired.len() as f64));
            let handler = self.on_expired.lock().clone();
            for Expired { channel, offset, recipient } in &expired {
                metrics::ack_expired();
                tracing::warn!(%channel, offset, user = %recipient.user, client = %recipient.client, retries = recipient.retries, "acknowledged delivery expired");
                if let Some(handler) = &handler {
                    handler(channel, *offset, recipient);
                }
            }
        }
        (next, expired)
    }

    pub fn status(&self, channel: &str, offset: u64) -> Option<DeliveryStatus> {
        let state = self.state.lock();
        let tracked = state.tracked.get(&(channel.to_owned(), offset))?;
        let mut status = DeliveryStatus::default();
        for delivery in &tracked.deliveries {
            let recipient = delivery.recipient.clone();
            match recipient.state {
                AckState::Pending => status.pending.push(recipient),
                AckState::Acked => status.acked.push(recipient),
                AckState::Expired => status.expired.push(recipient),
            }
        }
        Some(status)
    }

    /// Pending acknowledgements per channel (for stats).
    pub fn pending_by_channel(&self) -> HashMap<String, u64> {
        let state = self.state.lock();
        let mut out = HashMap::new();
        for ((channel, _), tracked) in &state.tracked {
            let pending = tracked.deliveries.iter().filter(|d| d.recipient.state == AckState::Pending).count() as u64;
            if pending > 0 {
                *out.entry(channel.clone()).or_insert(0) += pending;
            }
        }
        out
    }
}
