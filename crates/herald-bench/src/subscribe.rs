//! One subscriber: connects, subscribes, announces readiness, then counts publications (unique,
//! duplicate, out of order) and records publish-to-receive latency until told to stop.

use crate::fanout::{now_ns, ws_config, Shared};
use crate::nats;
use crate::net::{self, SocketOptions};
use crate::Target;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Highest latency the histograms track (microseconds); larger values count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A histogram of microseconds, 1 µs to an hour at three significant digits: what every scenario
/// records latencies and handshake times in, so that they merge.
pub fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
}

/// One subscriber's own counts, merged at the end so that recording costs no shared lock.
pub struct Local {
    /// First deliveries of a publication (what "received" means in the report).
    pub unique: u64,
    /// Publications delivered more than once to this subscriber.
    pub duplicates: u64,
    /// Deliveries whose sequence number is lower than one already received.
    pub out_of_order: u64,
    /// Pushes without a readable sequence number and timestamp, or with one never published.
    pub unexpected: u64,
    max_seq: u64,
    seen: Vec<u64>,
    /// When the message being read arrived (shared clock nanoseconds, and as an `Instant`).
    arrival: (u64, Instant),
    /// Deliveries recorded but not yet added to the run's progress.
    uncounted: u64,
    /// Made before the first publication (`Local::new` with messages > 0), never at the first
    /// delivery: allocating 1,000 histograms of ~200 KB while the first publications arrive delayed
    /// them by up to 100 ms and, being 1% of the deliveries, set the p99. An idle subscriber
    /// (no messages) holds none.
    pub latency: Option<Histogram<u64>>,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// From the start of the run until this subscriber's subscription was confirmed.
    pub ready_after: Option<Duration>,
    pub error: Option<String>,
    /// This subscriber stopped reading once subscribed (the `slow` scenario).
    pub slow: bool,
    /// A slow subscriber found its connection closed by the server when it read again at the end.
    pub slow_disconnected: bool,
}

impl Local {
    pub fn new(messages: u64) -> Self {
        let (latency, error) = if messages == 0 {
            (None, None)
        } else {
            match latency_histogram() {
                Ok(histogram) => (Some(histogram), None),
                Err(error) => (None, Some(format!("latency histogram: {error}"))),
            }
        };
        Self {
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
            max_seq: 0,
            seen: vec![0; (messages as usize).div_ceil(64) + 1],
            arrival: (0, Instant::now()),
            uncounted: 0,
            latency,
            first_at: None,
            last_at: None,
            ready_after: None,
            error,
            slow: false,
            slow_disconnected: false,
        }
    }

    /// A WebSocket message arrived: its deliveries arrived together, so the clock is read once
    /// for all of them (twice per delivery was a noticeable share of the load generator's CPU
    /// with a server that packs many deliveries per frame).
    fn arrived(&mut self) {
        self.arrival = (now_ns(), Instant::now());
    }

    /// Adds the deliveries of the last message to the run's shared progress: one atomic add per
    /// message, not one per delivery on a counter every subscriber shares.
    fn report_progress(&mut self, shared: &Shared) {
        if self.uncounted > 0 {
            shared.progress.fetch_add(self.uncounted, Ordering::Relaxed);
            self.uncounted = 0;
        }
    }

    /// Records one delivered payload, given the text the sequence number and timestamp are in.
    fn record(&mut self, text: &str, patterns: &Patterns) {
        let (received_ns, now) = self.arrival;
        let (Some(seq), Some(sent_ns)) = (number_after(text, &patterns.seq), number_after(text, &patterns.ts)) else {
            self.unexpected += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seq == 0 || word >= self.seen.len() {
            self.unexpected += 1;
            return;
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if seq < self.max_seq {
            self.out_of_order += 1;
        }
        self.max_seq = self.max_seq.max(seq);
        self.unique += 1;
        let latency_us = (received_ns.saturating_sub(sent_ns) / 1000).max(1);
        if let Some(latency) = &mut self.latency {
            latency.saturating_record(latency_us);
        }
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.uncounted += 1;
    }
}

/// How the sequence number and timestamp look inside a delivery: plain JSON for Herald and
/// NATS, a JSON string inside the Socket.IO event array (escaped quotes) for Socket.IO. The
/// searchers are built once: building one per delivery (`str::find`) was a tenth of the load
/// generator's CPU at saturation.
pub struct Patterns {
    seq: Finder<'static>,
    ts: Finder<'static>,
}

impl Patterns {
    fn new(seq: &'static str, ts: &'static str) -> Self {
        Self { seq: Finder::new(seq), ts: Finder::new(ts) }
    }
}

pub static PLAIN: LazyLock<Patterns> = LazyLock::new(|| Patterns::new("\"seq\":", "\"ts\":"));
pub static ESCAPED: LazyLock<Patterns> = LazyLock::new(|| Patterns::new("\\\"seq\\\":", "\\\"ts\\\":"));
/// Marks a Herald push that carries a publication.
static PUBLICATION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"pub\""));

/// The unsigned number right after the first occurrence of `pattern` in `text` (no JSON parse:
/// cheap and the same cost for every target).
pub fn number_after(text: &str, pattern: &Finder<'_>) -> Option<u64> {
    let at = pattern.find(text.as_bytes())? + pattern.needle().len();
    let digits = text.as_bytes()[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    text[at..at + digits].parse().ok()
}

pub fn url(target: Target, addr: &str, channel: &str) -> String {
    match target {
        Target::Herald => format!("ws://{addr}/connection/websocket"),
        Target::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&room={channel}"),
        Target::Nats => format!("ws://{addr}"),
    }
}

/// Runs one subscriber until `stop` or `deadline`; `ready` gets `true` once its subscription is
/// confirmed, or `false` if it failed before that.
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    connect_slots: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Local {
    let mut local = Local::new(shared.args.messages);
    local.slow = shared.is_slow(index);
    let mut announced = false;
    if let Err(error) =
        session(index, &shared, &connect_slots, &ready, stop, deadline, &mut local, &mut announced).await
    {
        local.error = Some(format!("{error:#}"));
        if !announced {
            let _ = ready.send(false).await;
        }
    }
    local
}

#[allow(clippy::too_many_arguments)]
async fn session(
    index: usize,
    shared: &Shared,
    connect_slots: &Semaphore,
    ready: &mpsc::Sender<bool>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
    local: &mut Local,
    announced: &mut bool,
) -> Result<()> {
    let args = &shared.args;
    let mut permit = Some(
        tokio::time::timeout_at(deadline.into(), connect_slots.acquire())
            .await
            .context("timed out waiting for a connection slot")??,
    );
    let addr = match args.subscriber_addrs.as_slice() {
        [] => &shared.addr,
        addrs => &addrs[index % addrs.len()],
    };
    let url = url(args.target, addr, &args.channel);
    let options = SocketOptions {
        source: shared.sources.pick(index),
        recv_buffer: local.slow.then_some(shared.slow_recv_buffer),
    };
    let connect = net::ws_connect(&url, options, ws_config());
    let mut socket = tokio::time::timeout_at(deadline.into(), connect).await.context("timed out connecting")??;
    match args.target {
        Target::Herald => {
            let subscribe = if args.filters > 0 {
                let group = format!("g{}", index % args.filters);
                let filters = json!([{"key": "group", "cmp": "eq", "val": group}]);
                json!({"id": 2, "subscribe": {"channel": args.channel, "data": {"herald": {"filters": filters}}}})
            } else {
                json!({"id": 2, "subscribe": {"channel": args.channel}})
            };
            let frame = format!("{}\n{subscribe}", json!({"id": 1, "connect": {"token": args.token}}));
            socket.send(Message::Text(frame.into())).await?;
        }
        // The server sends the engine.io open packet first; the room is joined from the URL.
        Target::Socketio => {}
        // PONG comes back after the server processed SUB: that is the subscription's confirmation.
        Target::Nats => {
            let frame =
                format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\nPING\r\n", args.channel);
            socket.send(Message::Text(frame.into())).await?;
        }
    }
    let mut nats_reader = nats::Reader::default();
    let mut announce = |local: &mut Local, announced: &mut bool| {
        *announced = true;
        local.ready_after = Some(shared.started.elapsed());
        permit.take();
        ready.try_send(true).is_ok()
    };
    // One future for the whole session: a timer and a watch waiter registered per delivery cost
    // the load generator more than parsing the delivery did.
    let ended = run_ended(stop, deadline);
    tokio::pin!(ended);
    loop {
        // What the last message delivered counts before waiting for the next one.
        local.report_progress(shared);
        if *announced && local.slow {
            return stall(socket, ended, local).await;
        }
        let message = tokio::select! {
            biased;
            _ = &mut ended => break,
            message = socket.next() => message,
        };
        let Some(message) = message else { bail!("connection closed by the server") };
        local.arrived();
        let (text, bytes) = match message? {
            Message::Text(text) => (Some(text), None),
            Message::Binary(bytes) => (None, Some(bytes)),
            Message::Close(frame) => bail!("closed by the server: {frame:?}"),
            _ => continue,
        };
        match args.target {
            Target::Herald => {
                let text = text.context("binary frame from a JSON server")?;
                for line in text.as_str().split('\n') {
                    if line.starts_with("{\"push\"") {
                        if PUBLICATION.find(line.as_bytes()).is_some() {
                            local.record(line, &PLAIN);
                        }
                    } else if line == "{}" {
                        socket.send(Message::Text("{}".into())).await?;
                    } else if !line.is_empty() {
                        let reply: Value = serde_json::from_str(line).with_context(|| format!("bad frame {line}"))?;
                        if let Some(error) = reply.get("error") {
                            bail!("command {} refused: {error}", reply["id"]);
                        }
                        if reply["id"] == 2 && !*announced {
                            announce(local, announced);
                        }
                    }
                }
            }
            Target::Socketio => {
                let text = text.context("binary frame from engine.io")?;
                let text = text.as_str();
                if text.starts_with("42") {
                    local.record(text, &ESCAPED);
                } else if text == "2" {
                    socket.send(Message::Text("3".into())).await?;
                } else if text.starts_with('0') {
                    socket.send(Message::Text("40".into())).await?;
                } else if text.starts_with("40") {
                    if !*announced {
                        announce(local, announced);
                    }
                } else if text.starts_with("41") || text.starts_with("44") || text == "1" {
                    bail!("disconnected by the server: {text}");
                }
            }
            Target::Nats => {
                let data: &[u8] = match (&text, &bytes) {
                    (Some(text), _) => text.as_bytes(),
                    (_, Some(bytes)) => bytes,
                    _ => continue,
                };
                let (mut pings, mut pong, mut error) = (0, false, None);
                nats_reader.feed(data, |event| match event {
                    nats::Event::Msg(payload) => local.record(&String::from_utf8_lossy(payload), &PLAIN),
                    nats::Event::Ping => pings += 1,
                    nats::Event::Pong => pong = true,
                    nats::Event::Err(message) => error = Some(message.to_owned()),
                })?;
                if let Some(error) = error {
                    bail!("NATS error: {error}");
                }
                for _ in 0..pings {
                    socket.send(Message::Text("PONG\r\n".into())).await?;
                }
                if pong && !*announced {
                    announce(local, announced);
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
    Ok(())
}

/// Resolves when the run is told to stop or its deadline passes.
async fn run_ended(mut stop: watch::Receiver<bool>, deadline: Instant) {
    tokio::select! {
        _ = stop.changed() => {}
        _ = tokio::time::sleep_until(deadline.into()) => {}
    }
}

/// A subscriber that stopped reading: holds its connection unread until the run ends, then reads
/// what is left (bounded) to learn whether the server closed it meanwhile.
async fn stall(
    mut socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ended: Pin<&mut impl Future<Output = ()>>,
    local: &mut Local,
) -> Result<()> {
    ended.await;
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(drain_until, socket.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                local.slow_disconnected = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{number_after, ESCAPED, PLAIN};

    #[test]
    fn finds_numbers_in_any_wrapping() {
        let herald = r#"{"push":{"channel":"b","pub":{"data":{"seq":7,"ts":12345,"pad":"x"},"offset":7}}}"#;
        assert_eq!(number_after(herald, &PLAIN.ts), Some(12345));
        assert_eq!(number_after(herald, &PLAIN.seq), Some(7));
        let socketio = r#"42["msg","{\"seq\":3,\"ts\":77,\"pad\":\"\"}"]"#;
        assert_eq!(number_after(socketio, &ESCAPED.seq), Some(3));
        assert_eq!(number_after(socketio, &ESCAPED.ts), Some(77));
        assert_eq!(number_after("no timestamp", &PLAIN.ts), None);
        assert_eq!(number_after(r#"{"ts":}"#, &PLAIN.ts), None);
    }
}
