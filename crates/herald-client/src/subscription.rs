//! A subscription: a stream of its publications and of what happens to it.

use crate::connection::Request;
use crate::error::Error;
use futures_util::Stream;
use herald_core::protocol::{ClientInfo, Publication, RawJson};
use serde::Serialize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// The server accepted a subscribe (the first one or one after a reconnect).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Subscribed {
    pub epoch: String,
    /// The stream's top when subscribing.
    pub offset: u64,
    pub recoverable: bool,
    /// The client asked to recover from a position.
    pub was_recovering: bool,
    /// Everything after that position came with the reply (and is in the stream next).
    pub recovered: bool,
    /// How many publications the reply carried.
    pub publications: usize,
    pub expires: bool,
    pub ttl: u32,
}

/// What a subscription's stream yields, in the order things happened.
#[derive(Debug, Clone)]
pub enum SubscriptionEvent {
    /// Subscribed; recovered publications, if any, follow.
    Subscribed(Subscribed),
    /// Subscribed again after a reconnect, but the server could not return everything missed
    /// (another epoch, history trimmed, too many): publications were lost, resync the state from
    /// the source of truth. The stream continues with live publications.
    RecoveryFailed(Subscribed),
    /// A publication, never twice for one offset.
    Publication(Publication),
    /// The server shed these publications because the connection fell behind (Herald's gap
    /// signal): they will not arrive live. Those with an offset can be read from history
    /// (`history` with `since` just before them); ignore them when only the newest state matters.
    Gap {
        offsets: Vec<u64>,
        unnumbered: u64,
    },
    Join(ClientInfo),
    Leave(ClientInfo),
    /// A resubscribe failed with a temporary error; the client tries again with backoff.
    Error(Error),
    /// The subscription ended (server unsubscribe, or a permanent error on resubscribe); the
    /// stream ends after this.
    Unsubscribed {
        code: u32,
        reason: String,
    },
}

/// Counters a subscription keeps; shared with the connection task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) duplicates: AtomicU64,
    pub(crate) overflows: AtomicU64,
}

/// A live subscription. Dropping it unsubscribes.
///
/// As a [`Stream`] it yields [`SubscriptionEvent`]s; [`Subscription::publications`] keeps only the
/// publications.
pub struct Subscription {
    pub(crate) id: u64,
    pub(crate) channel: String,
    pub(crate) events: mpsc::Receiver<SubscriptionEvent>,
    pub(crate) requests: mpsc::UnboundedSender<Request>,
    pub(crate) auto_ack: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) client: crate::Client,
    pub(crate) unsubscribed: bool,
}

impl Subscription {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Publications the server sent again (acknowledged-delivery retries, overlaps after
    /// recovery) that were dropped because their offset was already delivered.
    pub fn duplicates_dropped(&self) -> u64 {
        self.counters.duplicates.load(Ordering::Relaxed)
    }

    /// How many times the application fell `event_buffer` events behind, so that the client
    /// paused the subscription and recovered it once the buffer drained.
    pub fn overflows(&self) -> u64 {
        self.counters.overflows.load(Ordering::Relaxed)
    }

    /// Acknowledges everything up to `offset` on this channel (`herald.ack`); answers how many
    /// deliveries that confirmed.
    pub async fn ack(&self, offset: u64) -> Result<u64, Error> {
        self.client.ack(&self.channel, offset).await
    }

    /// Publishes into this subscription's channel.
    pub async fn publish<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), Error> {
        self.client.publish(&self.channel, data).await
    }

    /// Unsubscribes and waits for the server's answer.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.unsubscribed = true;
        let (done, answer) = oneshot::channel();
        self.requests.send(Request::Unsubscribe { id: self.id, done: Some(done) }).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Only the publications, in order (the other events are dropped).
    pub fn publications(self) -> Pin<Box<dyn Stream<Item = Publication> + Send>> {
        Box::pin(futures_util::StreamExt::filter_map(self, |event| async move {
            match event {
                SubscriptionEvent::Publication(publication) => Some(publication),
                _ => None,
            }
        }))
    }
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.events.poll_recv(cx);
        if let Poll::Ready(Some(SubscriptionEvent::Publication(publication))) = &polled {
            if self.auto_ack && publication.offset > 0 {
                // Acknowledged when the application takes it, not when it arrived: a crash before
                // that leaves it unacknowledged, so the server delivers it again.
                let _ =
                    self.requests.send(Request::AutoAck { channel: self.channel.clone(), offset: publication.offset });
            }
        }
        polled
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.unsubscribed {
            let _ = self.requests.send(Request::Unsubscribe { id: self.id, done: None });
        }
    }
}

/// Decodes publication data.
pub fn decode<T: serde::de::DeserializeOwned>(data: &RawJson) -> Result<T, Error> {
    serde_json::from_str(data.get()).map_err(|e| Error::Decode(format!("publication data: {e}")))
}
