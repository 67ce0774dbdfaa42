//! What other parts of the node hold of a connection: its outbound queue and a way to tell its
//! session task to subscribe, unsubscribe or disconnect.
//!
//! The queue is bounded in bytes (`client.queue_max_size`; the writer holds at most one more
//! batch of up to [`PACK_LIMIT`] while a write is under way, and an empty queue always takes one
//! frame, however large, so a big recovery reply fits). When a client falls behind, the queue
//! degrades in a fixed order instead of growing: an update superseded by a newer one with the same
//! conflation key is replaced first, then `low` publications are shed (oldest first), then
//! `normal` ones. `high` and `critical` publications and protocol replies are never shed: when
//! they cannot be queued the client is disconnected with 3008 and recovers from history. Every
//! shed publication is listed in a gap signal that goes out ahead of the next frames.

use crate::congestion::{Congestion, BACKED_UP_SHARE};
use crate::direct_write::Sent;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use herald_core::protocol::{Priority, SubscribeRequest};
use herald_core::wire::{PushBody, WireFormat};
use herald_core::Disconnect;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;

/// Frames larger than this are written alone rather than packed with others.
pub const PACK_LIMIT: usize = 64 * 1024;

/// Most skipped offsets remembered per channel before the client is disconnected as slow
/// instead: the gap signal stays small, and a client this far behind is better off recovering.
const MAX_GAP_OFFSETS: usize = 10_000;

/// Orders for the connection's session task from the rest of the node (server API, shutdown,
/// the slow-client guard).
#[derive(Debug)]
pub enum Control {
    Subscribe(Box<SubscribeRequest>),
    Unsubscribe { channel: String, code: u32, reason: String },
    Disconnect(Disconnect),
}

/// A publication frame and what it is, for shedding and gap signals; shared by every subscriber
/// it is queued for (one reference count per queued delivery). A batch frame carries several
/// offsets of one channel.
#[derive(Debug, Clone)]
pub struct PublicationFrame {
    pub bytes: Bytes,
    pub channel: Arc<str>,
    pub offsets: Vec<u64>,
    pub priority: Priority,
    /// The conflation key's value: a newer frame with the same value replaces this one while
    /// both wait in the queue.
    pub conflate: Option<Arc<str>>,
}

/// A frame waiting in a connection's queue, or taken by its writer.
#[derive(Debug, Clone)]
pub enum QueuedFrame {
    /// A reply or other protocol frame: never shed.
    Reply(Bytes),
    Publication(Arc<PublicationFrame>),
}

impl QueuedFrame {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            QueuedFrame::Reply(bytes) => bytes,
            QueuedFrame::Publication(publication) => &publication.bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// A JSON frame's text, for tests that read what was queued.
    #[cfg(test)]
    pub(crate) fn as_text(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("a JSON frame")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publication(&self) -> Option<&Arc<PublicationFrame>> {
        match self {
            QueuedFrame::Reply(_) => None,
            QueuedFrame::Publication(publication) => Some(publication),
        }
    }
}

/// What happened to a frame handed to [`ClientHandle::send_publication`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// Shed to stay within the queue limit; listed in the next gap signal.
    Shed,
    /// The client is being disconnected as slow (or is closing); it will recover from history.
    Refused,
    /// Queued in an idle queue without waking the task: see [`ClientHandle::offer_publication`].
    ToWrite,
}

/// Why a publication left the queue without being written, for metrics.
#[derive(Debug, Clone, Copy)]
enum ShedReason {
    QueueFull,
    Conflated,
}

impl ShedReason {
    fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::Conflated => "conflated",
        }
    }
}

/// Offsets a client will not receive live, per channel.
#[derive(Debug, Default)]
struct Gap {
    offsets: Vec<u64>,
    /// Shed publications of channels without history have no offset to list.
    unnumbered: u64,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<QueuedFrame>,
    /// Bytes queued and not yet taken by the writer.
    bytes: usize,
    /// Queued entries that carry a conflation key; the replace scan runs only when some do.
    conflatable: u32,
    /// Queued publication entries per priority (low, normal, high, critical): shedding scans only
    /// for a priority that is there, and stops once none is left.
    per_priority: [u32; 4],
    gaps: BTreeMap<Arc<str>, Gap>,
    close: Option<Disconnect>,
    /// The connection's socket, for frames the fan-out writes itself (see `direct_write`); set
    /// by the connection's task, which takes it away before it closes the socket.
    socket: Option<RawFd>,
    /// The task is writing (or its WebSocket library may write): frames must queue behind.
    writer_busy: bool,
    /// What the socket did not take of a frame written directly: the task writes it first.
    partial: Option<Vec<u8>>,
    /// Counted in the node's backed-up connections (see `congestion`).
    backed_up: bool,
}

/// What the writer takes from the queue in one go: frames to pack into as few WebSocket frames
/// as possible, then possibly the end.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<QueuedFrame>,
    pub close: Option<Disconnect>,
    /// The rest of a frame written directly, to write as it is before anything else.
    pub partial: Option<Vec<u8>>,
}

pub struct ClientHandle {
    pub id: Arc<str>,
    /// How this connection's frames are encoded: every frame queued here is in this form.
    pub format: WireFormat,
    user: OnceLock<String>,
    queue: Mutex<Queue>,
    /// Orders for the session task. A deque that allocates only when used, rather than a
    /// channel whose first block costs every idle connection a couple of kilobytes.
    controls: Mutex<VecDeque<Control>>,
    /// Orders waiting: the task checks this on every wake, and a busy connection wakes for
    /// every batch, so it should not need the lock to find none.
    pending_controls: AtomicUsize,
    /// The connection's one task, which both writes the queue and carries out the orders: a
    /// single waker is cheaper to wake than a `Notify` (no lock) and smaller to hold.
    task: AtomicWaker,
    queue_max_bytes: usize,
    /// Where this queue counts while it is backed up (publish backpressure); `None` for a
    /// handle outside a node's connections.
    congestion: Option<Arc<Congestion>>,
    overflowed: AtomicBool,
    /// Set by the socket's read readiness (the handle is the waker the reader registers, see
    /// the `Wake` impl): a busy connection is woken for every batch, and looking at the socket
    /// each time cost tokio's readiness lock and tungstenite's read path for nothing.
    read_ready: AtomicBool,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        if let Some(congestion) = &self.congestion {
            if self.queue.get_mut().backed_up {
                congestion.drained();
            }
        }
    }
}

/// The waker the connection task gives the socket's read side: it marks the socket readable and
/// wakes the task, which then reads. Made once per connection from its `Arc<ClientHandle>`.
impl std::task::Wake for ClientHandle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read_ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ClientHandle {
    pub fn new(id: impl Into<Arc<str>>, queue_max_bytes: usize) -> Self {
        Self {
            id: id.into(),
            format: WireFormat::Json,
            user: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            controls: Mutex::new(VecDeque::new()),
            pending_controls: AtomicUsize::new(0),
            task: AtomicWaker::new(),
            queue_max_bytes,
            congestion: None,
            overflowed: AtomicBool::new(false),
            read_ready: AtomicBool::new(true),
        }
    }

    /// A handle for a connection that speaks `format`.
    pub fn with_format(mut self, format: WireFormat) -> Self {
        self.format = format;
        self
    }

    /// A handle whose queue counts in `congestion` while it is backed up.
    pub fn with_congestion(mut self, congestion: Arc<Congestion>) -> Self {
        self.congestion = Some(congestion);
        self
    }

    /// Counts the queue in (or out of) the node's backed-up connections as it crosses a
    /// quarter of its limit up (or an eighth down): a flag flip, and an atomic only on a change.
    fn track_backlog(&self, queue: &mut Queue) {
        let Some(congestion) = &self.congestion else { return };
        let mark = self.queue_max_bytes / BACKED_UP_SHARE;
        if !queue.backed_up && queue.bytes >= mark {
            queue.backed_up = true;
            congestion.backed_up();
        } else if queue.backed_up && queue.bytes < mark / 2 {
            queue.backed_up = false;
            congestion.drained();
        }
    }

    /// The authenticated user; empty for anonymous connections and before connect.
    pub fn user(&self) -> &str {
        self.user.get().map_or("", String::as_str)
    }

    pub fn set_user(&self, user: String) {
        // Connect happens once per connection; a second call keeps the first identity.
        let _ = self.user.set(user);
    }

    /// Queues a reply or protocol push. These are never shed: when one does not fit even after
    /// shedding, the client is disconnected as slow. Returns false when it was not queued.
    pub fn send(&self, frame: Bytes) -> bool {
        self.enqueue(QueuedFrame::Reply(frame), false) == Queued::Yes
    }

    /// Queues a publication frame, degrading the queue by priority when it is full.
    pub fn send_publication(&self, publication: Arc<PublicationFrame>) -> Queued {
        self.enqueue(QueuedFrame::Publication(publication), false)
    }

    /// Like [`ClientHandle::send_publication`], for a fan-out that writes to idle connections
    /// itself: [`Queued::ToWrite`] instead of waking the task means the caller must call
    /// [`ClientHandle::write_now`] (see `direct_write`).
    pub fn offer_publication(&self, publication: Arc<PublicationFrame>) -> Queued {
        self.enqueue(QueuedFrame::Publication(publication), true)
    }

    fn enqueue(&self, entry: QueuedFrame, offer: bool) -> Queued {
        if self.overflowed.load(Ordering::Relaxed) {
            return Queued::Refused;
        }
        let mut queue = self.queue.lock();
        if queue.close.is_some() {
            return Queued::Refused;
        }
        if queue.conflatable > 0 {
            if let Some(publication) = entry.publication().filter(|p| p.conflate.is_some()) {
                queue.replace_superseded(publication);
            }
        }
        let size = entry.len();
        let fits = |queue: &Queue| queue.bytes == 0 || queue.bytes + size <= self.queue_max_bytes;
        if !fits(&queue) {
            // Shed what this entry outranks or equals, lowest priority and oldest first.
            let ceiling = match entry.publication() {
                Some(p) if p.priority.sheddable() => p.priority,
                _ => Priority::Normal,
            };
            for priority in [Priority::Low, Priority::Normal] {
                if priority > ceiling {
                    break;
                }
                queue.shed(priority, size, self.queue_max_bytes);
                if fits(&queue) {
                    break;
                }
            }
        }
        if !fits(&queue) {
            self.track_backlog(&mut queue);
            match entry.publication() {
                Some(p) if p.priority.sheddable() => {
                    queue.record_gap(p, ShedReason::QueueFull);
                    let over = queue.gap_overflowed();
                    drop(queue);
                    if over {
                        self.overflow();
                    } else {
                        self.task.wake();
                    }
                    return Queued::Shed;
                }
                _ => {
                    drop(queue);
                    self.overflow();
                    return Queued::Refused;
                }
            }
        }
        let was_idle = queue.entries.is_empty() && queue.gaps.is_empty();
        let to_write = offer && was_idle && queue.idle_socket().is_some();
        queue.push(entry);
        self.track_backlog(&mut queue);
        let over = queue.gap_overflowed();
        drop(queue);
        if over {
            self.overflow();
            return Queued::Refused;
        }
        // The task registers its waker before it finds the queue empty, so one wake per
        // empty-to-busy change is enough.
        if to_write {
            return Queued::ToWrite;
        }
        if was_idle {
            self.task.wake();
        }
        Queued::Yes
    }

    /// Writes what is queued straight to the socket when the task is not writing, or wakes the
    /// task to write it. Whatever the socket does not take is left to the task.
    pub fn write_now(&self) {
        let mut queue = self.queue.lock();
        let Some(fd) = queue.idle_socket_with_frames() else {
            drop(queue);
            self.task.wake();
            return;
        };
        let count = queue.frames_per_write();
        let frames = queue.entries.iter().take(count).map(QueuedFrame::as_bytes);
        let outcome = crate::direct_write::send(fd, self.format, frames);
        if matches!(outcome, Ok(Sent::All | Sent::Part(_))) {
            for _ in 0..count {
                queue.remove(0);
            }
            self.track_backlog(&mut queue);
        }
        match outcome {
            // One write takes at most `PACK_LIMIT` bytes: what a large fan-out queued beyond
            // that is the task's to write, and no later enqueue wakes it (the queue is not idle).
            Ok(Sent::All) if !queue.entries.is_empty() => {
                drop(queue);
                self.task.wake();
            }
            Ok(Sent::All) => {}
            Ok(Sent::Part(rest)) => {
                queue.partial = Some(rest);
                drop(queue);
                self.task.wake();
            }
            Ok(Sent::Nothing) => {
                drop(queue);
                self.task.wake();
            }
            Err(_) => {
                // The task meets the error on its own write and ends the connection.
                queue.socket = None;
                drop(queue);
                self.task.wake();
            }
        }
    }

    /// The client cannot keep up with what must reach it: what is queued is dropped (it will
    /// recover from history) and the session is told to disconnect with 3008.
    fn overflow(&self) {
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            crate::metrics::slow_client();
            {
                let mut queue = self.queue.lock();
                // The rest of a frame already started must still go out, or the close frame
                // after it would land inside it.
                let kept = Queue {
                    close: queue.close.take(),
                    socket: queue.socket,
                    writer_busy: queue.writer_busy,
                    partial: queue.partial.take(),
                    backed_up: queue.backed_up,
                    ..Queue::default()
                };
                *queue = kept;
                self.track_backlog(&mut queue);
            }
            self.control(Control::Disconnect(Disconnect::SLOW));
        }
    }

    /// The connection task's waker: woken when frames arrive in an empty queue, on close, and
    /// on every order. Register before looking, so that nothing arriving in between is missed.
    pub fn register_task(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// Takes up to about [`PACK_LIMIT`] bytes of queued frames (always at least one frame), led
    /// by the gap signals of what was shed meanwhile (or, first of all, the rest of a frame the
    /// fan-out started). From then until it finds the queue empty, the task is the socket's
    /// only writer.
    pub fn try_batch(&self) -> Option<Batch> {
        let mut queue = self.queue.lock();
        if queue.entries.is_empty() && queue.gaps.is_empty() && queue.close.is_none() && queue.partial.is_none() {
            queue.writer_busy = false;
            return None;
        }
        queue.writer_busy = true;
        let mut batch = Batch::default();
        if let Some(partial) = queue.partial.take() {
            batch.partial = Some(partial);
            return Some(batch);
        }
        for (channel, gap) in std::mem::take(&mut queue.gaps) {
            batch.frames.push(QueuedFrame::Reply(Bytes::from(gap_signal(self.format, &channel, &gap))));
        }
        for _ in 0..queue.frames_per_write() {
            batch.frames.extend(queue.remove(0));
        }
        self.track_backlog(&mut queue);
        if queue.entries.is_empty() {
            batch.close = queue.close.clone();
        }
        Some(batch)
    }

    /// Lets the fan-out write to `socket` itself while nothing is queued (see `direct_write`).
    /// The caller keeps the socket open until [`ClientHandle::detach_socket`] returns.
    pub fn attach_socket(&self, socket: RawFd) {
        self.queue.lock().socket = Some(socket);
    }

    /// No more direct writes: once this returns, none is under way and the socket may close.
    pub fn detach_socket(&self) {
        self.queue.lock().socket = None;
    }

    /// The task is about to use the socket (a read may make its WebSocket library write a
    /// reply): direct writes wait until it finds the queue empty again.
    pub fn claim_socket(&self) {
        self.queue.lock().writer_busy = true;
    }

    /// The task is done with the socket: direct writes may resume unless frames are queued,
    /// which the task is then woken to write.
    pub fn release_socket(&self) {
        let mut queue = self.queue.lock();
        if queue.entries.is_empty() && queue.gaps.is_empty() && queue.partial.is_none() {
            queue.writer_busy = false;
        } else {
            drop(queue);
            self.task.wake();
        }
    }

    /// Flush what is queued, then close with this code.
    pub fn close(&self, disconnect: Disconnect) {
        let mut queue = self.queue.lock();
        if queue.close.is_none() {
            queue.close = Some(disconnect);
        }
        drop(queue);
        self.task.wake();
    }

    pub fn control(&self, order: Control) {
        let mut controls = self.controls.lock();
        controls.push_back(order);
        self.pending_controls.store(controls.len(), Ordering::Release);
        drop(controls);
        self.task.wake();
    }

    pub fn try_control(&self) -> Option<Control> {
        if self.pending_controls.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut controls = self.controls.lock();
        let order = controls.pop_front();
        self.pending_controls.store(controls.len(), Ordering::Release);
        order
    }

    /// Takes the mark left by [`ClientHandle`]'s read waker: true when the socket may have become
    /// readable since the last look (and at first), so the task reads only then.
    pub fn take_read_ready(&self) -> bool {
        self.read_ready.swap(false, Ordering::AcqRel)
    }

    /// Reading returned something: more may be buffered without the socket waking again.
    pub fn keep_read_ready(&self) {
        self.read_ready.store(true, Ordering::Release);
    }

    /// True once the queue overflowed: the writer discards what is still queued.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
impl ClientHandle {
    /// Takes what is queued and returns the publication offsets of each frame, in order.
    pub(crate) fn take_offsets(&self) -> Vec<Vec<u64>> {
        let frames = self.try_batch().map(|batch| batch.frames).unwrap_or_default();
        let offset = |line: &str| -> u64 {
            let reply: serde_json::Value = serde_json::from_str(line).expect("queued frames are JSON lines");
            reply["push"]["pub"]["offset"].as_u64().expect("a publication push")
        };
        frames.iter().map(|frame| String::from_utf8_lossy(frame.as_bytes()).lines().map(offset).collect()).collect()
    }
}

fn priority_index(priority: Priority) -> usize {
    Priority::ALL.iter().position(|p| *p == priority).unwrap_or(1)
}

impl Queue {
    /// The socket, when a frame may be written to it directly now.
    fn idle_socket(&self) -> Option<RawFd> {
        let idle = self.entries.is_empty()
            && self.gaps.is_empty()
            && self.partial.is_none()
            && !self.writer_busy
            && self.close.is_none();
        self.socket.filter(|_| idle)
    }

    /// The socket, when frames are queued (and nothing else) for a direct write now.
    fn idle_socket_with_frames(&self) -> Option<RawFd> {
        let ready = !self.entries.is_empty()
            && self.gaps.is_empty()
            && self.partial.is_none()
            && !self.writer_busy
            && self.close.is_none();
        self.socket.filter(|_| ready)
    }

    /// How many of the frames at the front go out in one write: up to about [`PACK_LIMIT`]
    /// bytes, and always at least one.
    fn frames_per_write(&self) -> usize {
        let mut taken = 0;
        self.entries
            .iter()
            .take_while(|entry| {
                let fits = taken == 0 || taken + entry.len() <= PACK_LIMIT;
                taken += entry.len();
                fits
            })
            .count()
    }

    fn push(&mut self, entry: QueuedFrame) {
        self.bytes += entry.len();
        if let Some(publication) = entry.publication() {
            self.per_priority[priority_index(publication.priority)] += 1;
            if publication.conflate.is_some() {
                self.conflatable += 1;
            }
        }
        self.entries.push_back(entry);
    }

    fn remove(&mut self, index: usize) -> Option<QueuedFrame> {
        let entry = self.entries.remove(index)?;
        self.bytes -= entry.len();
        if let Some(publication) = entry.publication() {
            self.per_priority[priority_index(publication.priority)] -= 1;
            if publication.conflate.is_some() {
                self.conflatable -= 1;
            }
        }
        Some(entry)
    }

    /// Drops the queued frame that `newer` supersedes (same channel and conflation key).
    fn replace_superseded(&mut self, newer: &PublicationFrame) {
        let position = self.entries.iter().position(|entry| {
            entry.publication().is_some_and(|queued| {
                queued.conflate.is_some() && queued.conflate == newer.conflate && queued.channel == newer.channel
            })
        });
        if let Some(entry) = position.and_then(|i| self.remove(i)) {
            if let Some(publication) = entry.publication() {
                // Superseded, not lost: the newer value is on its way, so no gap is signalled.
                crate::metrics::shed(publication.priority, ShedReason::Conflated.as_str());
            }
        }
    }

    /// Sheds queued publications of exactly `priority`, oldest first, until `incoming` bytes fit.
    fn shed(&mut self, priority: Priority, incoming: usize, limit: usize) {
        let mut index = 0;
        let count = priority_index(priority);
        while self.per_priority[count] > 0
            && index < self.entries.len()
            && self.bytes > 0
            && self.bytes + incoming > limit
        {
            let matches = self.entries[index].publication().is_some_and(|p| p.priority == priority);
            if !matches {
                index += 1;
                continue;
            }
            let Some(entry) = self.remove(index) else { break };
            if let Some(publication) = entry.publication() {
                self.record_gap(publication, ShedReason::QueueFull);
            }
        }
    }

    fn record_gap(&mut self, publication: &PublicationFrame, reason: ShedReason) {
        crate::metrics::shed(publication.priority, reason.as_str());
        let gap = self.gaps.entry(publication.channel.clone()).or_default();
        for &offset in &publication.offsets {
            if offset == 0 {
                gap.unnumbered += 1;
            } else {
                gap.offsets.push(offset);
            }
        }
    }

    fn gap_overflowed(&self) -> bool {
        self.gaps.values().any(|gap| gap.offsets.len() > MAX_GAP_OFFSETS)
    }
}

/// Several frames as one, the way the protocol sends several replies at once: JSON lines joined
/// by newlines, Protobuf replies one after the other (each carries its length).
pub fn pack_frames<'a>(format: WireFormat, frames: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let frames = frames.map(|frame| &frame[..]);
    let total = crate::ws_writer::joined_len(format, frames.clone());
    Bytes::from(crate::ws_writer::joined(format, &[], frames, total))
}

/// Herald's gap signal: a `message` push (which stock SDKs hand to the application's `message`
/// handler and otherwise ignore) naming the publications of one channel that were shed.
fn gap_signal(format: WireFormat, channel: &str, gap: &Gap) -> Vec<u8> {
    #[derive(Serialize)]
    struct GapBody<'a> {
        channel: &'a str,
        offsets: Vec<u64>,
        #[serde(skip_serializing_if = "is_zero")]
        unnumbered: u64,
    }
    #[derive(Serialize)]
    struct Herald<'a> {
        gap: GapBody<'a>,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        herald: Herald<'a>,
    }
    let mut offsets = gap.offsets.clone();
    offsets.sort_unstable();
    let data = Data { herald: Herald { gap: GapBody { channel, offsets, unnumbered: gap.unnumbered } } };
    // Serializing our own structs cannot fail.
    let data = serde_json::value::to_raw_value(&data).unwrap_or_default();
    format.push("", PushBody::Message(&data))
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn publication(channel: &str, offset: u64, priority: Priority) -> Arc<PublicationFrame> {
        // Same size for every offset below a million, so the limits below count frames.
        let pad = " ".repeat(6 - offset.to_string().len());
        let bytes =
            Bytes::from(format!("{{\"push\":{{\"channel\":\"{channel}\",\"pub\":{{\"offset\":{offset}{pad}}}}}}}"));
        Arc::new(PublicationFrame {
            bytes,
            channel: Arc::from(channel),
            offsets: vec![offset],
            priority,
            conflate: None,
        })
    }

    fn frame_size() -> usize {
        publication("ch", 1, Priority::Normal).bytes.len()
    }

    fn offsets_in(batch: &Batch) -> Vec<u64> {
        batch
            .frames
            .iter()
            .filter_map(|f| serde_json::from_slice::<Value>(f.as_bytes()).ok())
            .filter_map(|v| v["push"]["pub"]["offset"].as_u64())
            .collect()
    }

    fn gaps_in(batch: &Batch) -> Vec<u64> {
        batch
            .frames
            .iter()
            .filter_map(|f| serde_json::from_slice::<Value>(f.as_bytes()).ok())
            .filter_map(|v| v["push"]["message"]["data"]["herald"]["gap"]["offsets"].as_array().cloned())
            .flatten()
            .filter_map(|o| o.as_u64())
            .collect()
    }

    #[test]
    fn sheds_low_before_normal_and_never_high() {
        // Room for exactly four frames.
        let handle = ClientHandle::new("c", frame_size() * 4);
        let priorities = [Priority::Low, Priority::Normal, Priority::Low, Priority::High];
        for (i, priority) in priorities.into_iter().enumerate() {
            assert_eq!(handle.send_publication(publication("ch", i as u64 + 1, priority)), Queued::Yes);
        }
        // A normal sheds the oldest low (1); another normal sheds the next low (3); a third
        // normal sheds the oldest normal (5 goes in place of 2).
        for offset in [5, 6, 7] {
            assert_eq!(handle.send_publication(publication("ch", offset, Priority::Normal)), Queued::Yes);
        }
        // A low cannot shed normals or highs: it is shed itself.
        assert_eq!(handle.send_publication(publication("ch", 8, Priority::Low)), Queued::Shed);
        let batch = handle.try_batch().expect("something is queued");
        assert_eq!(gaps_in(&batch), vec![1, 2, 3, 8]);
        assert_eq!(offsets_in(&batch), vec![4, 5, 6, 7]);
        assert!(!handle.overflowed());
    }

    #[test]
    fn a_high_publication_that_cannot_fit_disconnects_the_client() {
        let handle = ClientHandle::new("c", frame_size() * 2);
        for offset in [1, 2] {
            assert_eq!(handle.send_publication(publication("ch", offset, Priority::Critical)), Queued::Yes);
        }
        assert_eq!(handle.send_publication(publication("ch", 3, Priority::High)), Queued::Refused);
        assert!(handle.overflowed());
        assert!(matches!(handle.try_control(), Some(Control::Disconnect(d)) if d.code == Disconnect::SLOW.code));
        assert!(handle.try_batch().is_none(), "the backlog is dropped; the client recovers it");
    }

    #[test]
    fn a_newer_update_replaces_the_queued_one_with_the_same_key() {
        let handle = ClientHandle::new("c", 1 << 20);
        for (offset, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
            let p = publication("ch", offset, Priority::Normal);
            let p = Arc::new(PublicationFrame { conflate: Some(Arc::from(key)), ..(*p).clone() });
            assert_eq!(handle.send_publication(p), Queued::Yes);
        }
        let batch = handle.try_batch().expect("queued");
        assert_eq!(offsets_in(&batch), vec![2, 4]);
        assert!(gaps_in(&batch).is_empty(), "superseded updates are not gaps");
    }

    #[test]
    fn replies_are_never_shed_and_taken_frames_free_the_queue() {
        let handle = ClientHandle::new("c", frame_size() * 2);
        handle.send_publication(publication("ch", 1, Priority::Low));
        let reply = || Bytes::from("x".repeat(frame_size()));
        assert!(handle.send(reply()));
        let batch = handle.try_batch().expect("queued");
        assert_eq!(batch.frames.len(), 2);
        // Taken frames no longer count: two more fit, and a reply sheds the queued low.
        assert_eq!(handle.send_publication(publication("ch", 2, Priority::Low)), Queued::Yes);
        assert!(handle.send(reply()));
        assert!(handle.send(reply()));
        // With nothing left to shed, a reply that does not fit disconnects the client.
        assert!(!handle.send(reply()));
        assert!(handle.overflowed());
        assert!(matches!(handle.try_control(), Some(Control::Disconnect(_))));
    }

    #[test]
    fn an_empty_queue_takes_one_frame_larger_than_the_limit() {
        let handle = ClientHandle::new("c", 16);
        assert!(handle.send(Bytes::from("r".repeat(1000))), "a large recovery reply still goes out");
        assert!(!handle.send(Bytes::from("more")));
    }
}
