//! Pub/Sub: one connection per shard, each channel hashed to one shard. A shard listens only to
//! channels with subscribers on this node, and delivers each channel's publications in offset
//! order without gaps or duplicates:
//!
//! - the next offset is delivered; an offset already delivered is dropped;
//! - anything else (a skipped offset, another epoch) makes the node catch up from the stream;
//! - after a reconnection, and every few seconds, each channel's stream top is compared with what
//!   was delivered, so a lost last message is also caught up;
//! - when the stream no longer has what is missing (trimmed, expired, or a new epoch after Redis
//!   lost its data), the node's subscribers are told to resubscribe and recover.

use crate::{Inner, StreamRead};
use herald_core::protocol::ClientInfo;
use herald_server::engine::{EngineError, StreamPosition};
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each channel's stream top is compared with what this node delivered.
const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// How soon a failed check is tried again.
const RETRY_CHECK: Duration = Duration::from_millis(200);

/// Channels per SUBSCRIBE command when a connection is re-made.
const SUBSCRIBE_BATCH: usize = 1000;

struct ChannelState {
    /// Local subscriptions of the hub (the broker's subscribe calls minus its unsubscribe calls).
    refs: usize,
    /// The last position delivered to the node; `None` until the first subscribe read the top.
    last: Option<StreamPosition>,
    /// Publications that came before `last` was known.
    early: Vec<Incoming>,
}

pub(crate) struct Shard {
    index: usize,
    channels: Mutex<HashMap<String, ChannelState>>,
    /// The connection's sink while connected. The async lock also keeps SUBSCRIBE/UNSUBSCRIBE in
    /// the order of the subscription counts.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Woken at each delivery, for history reads waiting for delivery to catch up.
    delivered: tokio::sync::Notify,
}

impl Shard {
    pub(crate) fn new(index: usize) -> Self {
        Self {
            index,
            channels: Mutex::new(HashMap::new()),
            sink: tokio::sync::Mutex::new(None),
            delivered: tokio::sync::Notify::new(),
        }
    }
}

/// A publication as it came over Pub/Sub.
struct Incoming {
    offset: u64,
    epoch: String,
    payload: Vec<u8>,
}

enum Message {
    Publication(Incoming),
    Join(ClientInfo),
    Leave(ClientInfo),
}

fn parse(payload: &[u8]) -> Result<Message, String> {
    let split = payload.iter().position(|b| *b == b'\n').ok_or("no header line")?;
    let (header, body) = (&payload[..split], &payload[split + 1..]);
    let info = || serde_json::from_slice::<ClientInfo>(body).map_err(|e| format!("client info: {e}"));
    match header {
        b"j" => Ok(Message::Join(info()?)),
        b"l" => Ok(Message::Leave(info()?)),
        _ => {
            let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
            let (offset, epoch) = header.split_once(':').ok_or("header is not offset:epoch")?;
            let offset = offset.parse().map_err(|_| format!("bad offset {offset:?}"))?;
            Ok(Message::Publication(Incoming { offset, epoch: epoch.to_owned(), payload: body.to_vec() }))
        }
    }
}

/// Channels whose publications were queued in the node's lanes and must still fan out. The
/// fan-out happens when this is dropped, on every path out (an error or a cancelled read
/// included): publications are queued under the shard's lock, to keep their order, and fan out
/// after it is released, and those of a burst of messages go to each subscriber together.
struct Flushes<'a> {
    inner: &'a Inner,
    channels: Vec<String>,
}

impl<'a> Flushes<'a> {
    fn new(inner: &'a Inner) -> Self {
        Self { inner, channels: Vec::new() }
    }

    fn note(&mut self, channel: &str) {
        if !self.channels.iter().any(|noted| noted == channel) {
            self.channels.push(channel.to_owned());
        }
    }
}

impl Drop for Flushes<'_> {
    fn drop(&mut self) {
        let Some(handler) = self.inner.handler() else { return };
        for channel in self.channels.drain(..) {
            handler.flush_publications(&channel);
        }
    }
}

/// Messages handled before their channels fan out when more are already waiting.
const BURST: usize = 64;

fn unavailable(what: &str) -> EngineError {
    EngineError::Unavailable(format!("redis pub/sub {what}"))
}

pub(crate) async fn subscribe(inner: &Inner, shard: &Shard, channel: &str) -> Result<(), EngineError> {
    let mut sink = shard.sink.lock().await;
    {
        let mut channels = shard.channels.lock();
        let state =
            channels.entry(channel.to_owned()).or_insert(ChannelState { refs: 0, last: None, early: Vec::new() });
        state.refs += 1;
        if state.refs > 1 {
            return Ok(());
        }
    }
    let subscribed = match sink.as_mut() {
        None => Err(unavailable("is not connected")),
        Some(sink) => {
            match tokio::time::timeout(inner.options.io_timeout, sink.subscribe(inner.keys.pubsub(channel))).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(crate::engine_error("subscribe", error)),
                Err(_) => Err(unavailable("subscribe timed out")),
            }
        }
    };
    if let Err(error) = subscribed {
        release(shard, channel);
        return Err(error);
    }
    drop(sink);
    // Listening first, then reading the top: whatever is published after the read arrives.
    let read = match inner.read_stream(channel, "top", 0, 0).await {
        Ok(read) => read,
        Err(error) => {
            if let Err(undo) = unsubscribe(inner, shard, channel).await {
                tracing::warn!(%channel, error = %undo, "unsubscribe after a failed subscribe failed");
            }
            return Err(error);
        }
    };
    let early = {
        let mut channels = shard.channels.lock();
        let Some(state) = channels.get_mut(channel) else { return Ok(()) };
        if state.last.is_none() {
            state.last = Some(read.position);
        }
        std::mem::take(&mut state.early)
    };
    let mut flushes = Flushes::new(inner);
    for incoming in early {
        deliver_in_order(inner, shard, channel, incoming, &mut flushes).await;
    }
    Ok(())
}

/// Drops one subscription count; true when it was the last.
fn release(shard: &Shard, channel: &str) -> bool {
    let mut channels = shard.channels.lock();
    let Some(state) = channels.get_mut(channel) else { return false };
    state.refs = state.refs.saturating_sub(1);
    if state.refs == 0 {
        channels.remove(channel);
        return true;
    }
    false
}

pub(crate) async fn unsubscribe(inner: &Inner, shard: &Shard, channel: &str) -> Result<(), EngineError> {
    let mut sink = shard.sink.lock().await;
    if !release(shard, channel) {
        return Ok(());
    }
    // Without a connection there is nothing to undo: a new connection subscribes only to the
    // channels still listed.
    let Some(sink) = sink.as_mut() else { return Ok(()) };
    match tokio::time::timeout(inner.options.io_timeout, sink.unsubscribe(inner.keys.pubsub(channel))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(crate::engine_error("unsubscribe", error)),
        Err(_) => Err(unavailable("unsubscribe timed out")),
    }
}

/// What this node delivered of `channel`, once it caught up with `top` (or after a short wait);
/// `None` when the node does not listen to the channel.
pub(crate) async fn delivered_position(shard: &Shard, channel: &str, top: &StreamPosition) -> Option<StreamPosition> {
    let deadline = tokio::time::Instant::now() + crate::CATCH_UP_WAIT;
    loop {
        let notified = shard.delivered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let channels = shard.channels.lock();
            let last = channels.get(channel)?.last.clone()?;
            if last.epoch != top.epoch || last.offset >= top.offset {
                return Some(last);
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return shard.channels.lock().get(channel)?.last.clone();
        }
    }
}

/// Delivers `incoming` if it is the next offset, drops it if it was delivered, and otherwise
/// catches the channel up from the stream (which holds `incoming` too).
async fn deliver_in_order(inner: &Inner, shard: &Shard, channel: &str, incoming: Incoming, flushes: &mut Flushes<'_>) {
    {
        let mut channels = shard.channels.lock();
        let Some(state) = channels.get_mut(channel) else { return };
        let Some(last) = state.last.as_mut() else {
            state.early.push(incoming);
            return;
        };
        if last.epoch == incoming.epoch {
            if incoming.offset <= last.offset {
                return;
            }
            if incoming.offset == last.offset + 1 {
                last.offset = incoming.offset;
                // Under the lock, as every path that advances `last`: deliveries stay in order.
                deliver(inner, channel, incoming.offset, &incoming.payload, flushes);
                drop(channels);
                shard.delivered.notify_waiters();
                return;
            }
        }
    }
    metrics::counter!("herald_redis_gap_fills_total").increment(1);
    tracing::debug!(%channel, offset = incoming.offset, "out-of-order publication; catching up from the stream");
    if let Err(error) = catch_up(inner, shard, channel, flushes).await {
        tracing::warn!(%channel, %error, "cannot catch up from the stream; retrying with the next publication");
    }
}

/// Queues a publication in the node's lane for `channel`; it fans out when `flushes` is dropped.
fn deliver(inner: &Inner, channel: &str, offset: u64, payload: &[u8], flushes: &mut Flushes<'_>) {
    let Some(handler) = inner.handler() else { return };
    match crate::decode_publication(offset, payload) {
        Ok(publication) => {
            handler.queue_publication(channel, Arc::new(publication));
            flushes.note(channel);
        }
        Err(error) => tracing::error!(%channel, offset, %error, "undecodable publication skipped"),
    }
}

/// Reads what this node has not delivered of `channel` and delivers it in order; tells the
/// node's subscribers to resubscribe when part of it is gone.
async fn catch_up(inner: &Inner, shard: &Shard, channel: &str, flushes: &mut Flushes<'_>) -> Result<(), EngineError> {
    let Some(last) = shard.channels.lock().get(channel).and_then(|s| s.last.clone()) else { return Ok(()) };
    let read = inner.read_stream(channel, "forward", last.offset, 0).await?;
    apply_catch_up(inner, shard, channel, read, flushes);
    Ok(())
}

fn apply_catch_up(inner: &Inner, shard: &Shard, channel: &str, read: StreamRead, flushes: &mut Flushes<'_>) {
    let mut lost = false;
    let mut deliveries = Vec::new();
    {
        let mut channels = shard.channels.lock();
        let Some(state) = channels.get_mut(channel) else { return };
        let Some(last) = state.last.as_mut() else { return };
        if read.position.epoch != last.epoch {
            // A new epoch: the offsets delivered so far mean nothing any more.
            lost = last.offset > 0 || read.position.offset > 0;
            *last = read.position.clone();
        } else {
            for publication in &read.publications {
                if publication.offset == last.offset + 1 {
                    last.offset = publication.offset;
                    deliveries.push(publication.clone());
                } else if publication.offset > last.offset + 1 {
                    break;
                }
            }
            if read.position.offset > last.offset {
                // The stream no longer holds the next offset: trimmed or expired.
                lost = true;
                last.offset = read.position.offset;
            }
        }
        // Delivered under the lock: the other paths that deliver this channel check and advance
        // `last` under it too, so deliveries stay in order.
        if let Some(handler) = inner.handler() {
            for publication in deliveries {
                handler.queue_publication(channel, publication);
                flushes.note(channel);
            }
        }
    }
    shard.delivered.notify_waiters();
    if lost {
        metrics::counter!("herald_redis_resubscribes_total").increment(1);
        if let Some(handler) = inner.handler() {
            handler.handle_resubscribe(channel);
        }
    }
}

/// Compares every listened channel's stream top with what was delivered and catches up the ones
/// behind (one pipelined read of the meta hashes, then a stream read per channel behind).
async fn check_all(inner: &Inner, shard: &Shard) -> Result<(), EngineError> {
    let listened: Vec<(String, StreamPosition)> = shard
        .channels
        .lock()
        .iter()
        .filter_map(|(channel, state)| Some((channel.clone(), state.last.clone()?)))
        .collect();
    for chunk in listened.chunks(512) {
        let mut pipe = redis::pipe();
        for (channel, _) in chunk {
            pipe.cmd("HMGET").arg(inner.keys.meta(channel)).arg("s").arg("e");
        }
        let mut connection = inner.connection();
        let tops: Vec<(Option<u64>, Option<String>)> =
            inner.call("stream check", pipe.query_async(&mut connection)).await?;
        for ((channel, last), (top, epoch)) in chunk.iter().zip(tops) {
            let behind = match epoch {
                // Nothing was ever published with history here, so nothing was lost.
                None => last.offset > 0,
                Some(epoch) => epoch != last.epoch || top.unwrap_or(0) > last.offset,
            };
            if behind {
                catch_up(inner, shard, channel, &mut Flushes::new(inner)).await?;
            }
        }
    }
    Ok(())
}

async fn handle(inner: &Inner, shard: &Shard, message: redis::Msg, flushes: &mut Flushes<'_>) {
    let Some(channel) = message.get_channel_name().strip_prefix(&inner.keys.pubsub_prefix()).map(str::to_owned) else {
        return;
    };
    let parsed = match parse(message.get_payload_bytes()) {
        Ok(parsed) => parsed,
        Err(reason) => {
            tracing::error!(%channel, %reason, "undecodable pub/sub message skipped");
            return;
        }
    };
    if !shard.channels.lock().contains_key(&channel) {
        return;
    }
    let Some(handler) = inner.handler() else { return };
    match parsed {
        Message::Join(info) => handler.handle_join(&channel, &info),
        Message::Leave(info) => handler.handle_leave(&channel, &info),
        // Without history there is no order to keep or recover.
        Message::Publication(incoming) if incoming.offset == 0 => {
            deliver(inner, &channel, 0, &incoming.payload, flushes)
        }
        Message::Publication(incoming) => deliver_in_order(inner, shard, &channel, incoming, flushes).await,
    }
}

/// Connects, resubscribes to the shard's channels, catches them up, then delivers messages; on
/// a lost connection starts over with a growing delay.
pub(crate) async fn run(inner: Weak<Inner>, shard: Arc<Shard>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(50);
    let mut reported = false;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let connected =
            match tokio::time::timeout(strong.options.connect_timeout, strong.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => Ok(pubsub),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no connection within {:?}", strong.options.connect_timeout)),
            };
        let resubscribed = match connected {
            Ok(pubsub) => {
                let (sink, stream) = pubsub.split();
                resubscribe(&strong, &shard, sink).await.map(|channels| (stream, channels))
            }
            Err(error) => Err(error),
        };
        let (mut stream, channels) = match resubscribed {
            Ok(connected) => connected,
            Err(error) => {
                if !reported {
                    tracing::warn!(shard = shard.index, %error, "redis pub/sub connection failed; retrying");
                    reported = true;
                }
                drop(strong);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        strong.pubsub_connected(true);
        if reported {
            tracing::info!(shard = shard.index, channels, "redis pub/sub connection restored");
        }
        delay = Duration::from_millis(50);
        // Whatever was published while this node was not listening is in the streams. The
        // command connection may still hold the broken socket: a failed check is soon retried.
        let mut next_check = match check_all(&strong, &shard).await {
            Ok(()) => tokio::time::Instant::now() + CHECK_PERIOD,
            Err(error) => {
                tracing::debug!(shard = shard.index, %error, "catching up after reconnecting failed; retrying");
                tokio::time::Instant::now() + RETRY_CHECK
            }
        };
        drop(strong);
        loop {
            use futures_util::{FutureExt, StreamExt};
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let Some(strong) = inner.upgrade() else { return };
                    let mut flushes = Flushes::new(&strong);
                    handle(&strong, &shard, message, &mut flushes).await;
                    // Messages already received join this one: what they queue in a channel's
                    // lane goes to each subscriber as one frame.
                    let mut ended = false;
                    for _ in 1..BURST {
                        match stream.next().now_or_never() {
                            Some(Some(message)) => handle(&strong, &shard, message, &mut flushes).await,
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    drop(flushes);
                    if ended {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_check) => {
                    let Some(strong) = inner.upgrade() else { return };
                    next_check = match check_all(&strong, &shard).await {
                        Ok(()) => tokio::time::Instant::now() + CHECK_PERIOD,
                        Err(error) => {
                            tracing::warn!(shard = shard.index, %error, "stream check failed; retrying");
                            tokio::time::Instant::now() + RETRY_CHECK
                        }
                    };
                }
                _ = shutdown.cancelled() => return,
            }
        }
        *shard.sink.lock().await = None;
        let Some(strong) = inner.upgrade() else { return };
        strong.pubsub_connected(false);
        tracing::warn!(shard = shard.index, "redis pub/sub connection lost; reconnecting");
        reported = true;
    }
}

/// Subscribes a new connection to every listed channel and installs its sink.
async fn resubscribe(inner: &Inner, shard: &Shard, mut sink: PubSubSink) -> Result<usize, String> {
    let mut installed = shard.sink.lock().await;
    let names: Vec<String> = shard.channels.lock().keys().map(|c| inner.keys.pubsub(c)).collect();
    for batch in names.chunks(SUBSCRIBE_BATCH) {
        match tokio::time::timeout(inner.options.io_timeout, sink.subscribe(batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("subscribe: {error}")),
            Err(_) => return Err("subscribe timed out".into()),
        }
    }
    *installed = Some(sink);
    Ok(names.len())
}
