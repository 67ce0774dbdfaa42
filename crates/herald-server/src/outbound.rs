//! What other parts of the node hold of a connection: its bounded outbound queue and a way to
//! tell its session task to subscribe, unsubscribe or disconnect.

use axum::extract::ws::Utf8Bytes;
use herald_core::protocol::SubscribeRequest;
use herald_core::Disconnect;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// Something for the connection's writer: a serialized reply or push, or the end.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Utf8Bytes),
    /// Flush what is queued, then close with this code.
    Close(Disconnect),
}

/// Orders for the connection's session task from the rest of the node (server API, shutdown,
/// the slow-client guard).
#[derive(Debug)]
pub enum Control {
    Subscribe(Box<SubscribeRequest>),
    Unsubscribe { channel: String, code: u32, reason: String },
    Disconnect(Disconnect),
}

pub struct ClientHandle {
    pub id: String,
    user: OnceLock<String>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    queued_bytes: AtomicUsize,
    queue_max_bytes: usize,
    overflowed: AtomicBool,
}

impl ClientHandle {
    pub fn new(
        id: String,
        queue_max_bytes: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Outgoing>, mpsc::UnboundedReceiver<Control>) {
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let handle = Self {
            id,
            user: OnceLock::new(),
            outgoing,
            control,
            queued_bytes: AtomicUsize::new(0),
            queue_max_bytes,
            overflowed: AtomicBool::new(false),
        };
        (handle, outgoing_rx, control_rx)
    }

    /// The authenticated user; empty for anonymous connections and before connect.
    pub fn user(&self) -> &str {
        self.user.get().map_or("", String::as_str)
    }

    pub fn set_user(&self, user: String) {
        // Connect happens once per connection; a second call keeps the first identity.
        let _ = self.user.set(user);
    }

    /// Queues a frame unless the queue is over its byte limit, in which case the connection is
    /// told to disconnect as slow: it will reconnect and recover instead of growing memory.
    /// Returns false when the frame was dropped because the client could not keep up.
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let queued = self.queued_bytes.fetch_add(frame.len(), Ordering::AcqRel) + frame.len();
        if queued > self.queue_max_bytes {
            // The backlog is dropped rather than flushed: the client will recover it from history.
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                crate::metrics::slow_client();
                let _ = self.control.send(Control::Disconnect(Disconnect::SLOW));
            }
            return false;
        }
        self.outgoing.send(Outgoing::Frame(frame)).is_ok()
    }

    /// Called by the writer once a frame left the process.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn close(&self, disconnect: Disconnect) {
        let _ = self.outgoing.send(Outgoing::Close(disconnect));
    }

    pub fn control(&self, order: Control) {
        let _ = self.control.send(order);
    }

    /// True once the queue overflowed: the writer discards what is still queued.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}
