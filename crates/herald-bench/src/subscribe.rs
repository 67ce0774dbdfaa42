//! One subscriber: connects, subscribes, announces readiness, then counts publications (unique,
//! duplicate, out of order) and records publish-to-receive latency until told to stop.

use crate::fanout::{ns_since_start, Shared};
use crate::net::SocketOptions;
use crate::protobuf::{self, Incoming};
use crate::readers::{Readers, Subscribed};
use crate::wire::{self, Message};
use crate::{nats, Encoding, FanoutArgs, Target};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

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

    /// Bytes arrived: the deliveries of one read arrived together, so the clock is read once
    /// for all of them (twice per delivery was a noticeable share of the load generator's CPU
    /// with a server that packs many deliveries per frame).
    pub fn arrived(&mut self) {
        let now = Instant::now();
        self.arrival = (ns_since_start(now), now);
    }

    /// Adds the deliveries of the last message to the run's shared progress: one atomic add per
    /// message, not one per delivery on a counter every subscriber shares.
    pub fn report_progress(&mut self, shared: &Shared) {
        if self.uncounted > 0 {
            shared.progress.fetch_add(self.uncounted, Ordering::Relaxed);
            self.uncounted = 0;
        }
    }

    /// Records one delivered payload, given the text the sequence number and timestamp are in.
    fn record(&mut self, text: &[u8], patterns: &Patterns) {
        let (received_ns, now) = self.arrival;
        let Some((seq, sent_ns)) = seq_and_ts(text, patterns) else {
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

/// The unsigned number right after the first occurrence of `pattern` in `text`, and where it
/// ends (no JSON parse: cheap and the same cost for every target).
pub fn number_after(text: &[u8], pattern: &Finder<'_>) -> Option<(u64, usize)> {
    let start = pattern.find(text)? + pattern.needle().len();
    let (value, digits) = leading_number(&text[start..])?;
    Some((value, start + digits))
}

/// The unsigned number `text` starts with, and how many digits it took; `None` when it does
/// not start with a digit or the number does not fit in a `u64`. Up to 19 digits always fit,
/// so those are summed without overflow checks: a checked multiply per digit was a tenth of the
/// load generator's CPU at saturation (two numbers of 5-20 digits per delivery).
fn leading_number(text: &[u8]) -> Option<(u64, usize)> {
    const ALWAYS_FITS: usize = 19;
    let digits = text.iter().take_while(|byte| byte.is_ascii_digit()).count();
    let number = &text[..digits];
    let value = if digits == 0 {
        return None;
    } else if digits <= ALWAYS_FITS {
        number.iter().fold(0u64, |value, &byte| value.wrapping_mul(10).wrapping_add(u64::from(byte - b'0')))
    } else {
        number.iter().try_fold(0u64, |value, &byte| value.checked_mul(10)?.checked_add(u64::from(byte - b'0')))?
    };
    Some((value, digits))
}

/// The sequence number and send time of a delivery. When `text` is the publisher's payload
/// itself (a NATS message, a Protobuf publication's data), it starts `{"seq":N,"ts":T` (see
/// `publish::payload`) and both are read in place; otherwise (a JSON push, a Socket.IO event)
/// they are searched for, the timestamp right after the sequence number.
fn seq_and_ts(text: &[u8], patterns: &Patterns) -> Option<(u64, u64)> {
    let in_place = || {
        let rest = text.strip_prefix(b"{\"seq\":")?;
        let (seq, digits) = leading_number(rest)?;
        let (ts, _) = leading_number(rest[digits..].strip_prefix(b",\"ts\":")?)?;
        Some((seq, ts))
    };
    if let Some(numbers) = in_place() {
        return Some(numbers);
    }
    let (seq, after) = number_after(text, &patterns.seq)?;
    let (ts, _) = number_after(&text[after..], &patterns.ts)?;
    Some((seq, ts))
}

/// The data of a publication push as Herald writes it, `{"push":{"channel":"<name>","pub":{"data":`
/// then the data: read in place like a Protobuf publication's data, rather than searched for.
/// `None` for anything else (other pushes, replies, or a channel name with escapes), which the
/// caller then searches.
fn publication_data(line: &[u8]) -> Option<&[u8]> {
    let channel = line.strip_prefix(b"{\"push\":{\"channel\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', channel)?;
    if channel[end] != b'"' {
        return None;
    }
    channel[end + 1..].strip_prefix(b",\"pub\":{\"data\":")
}

/// Where a Herald push says what it carries: `{"push":{"channel":"...","pub":...` names it
/// right after the channel, so only the start of the line is searched.
const PUSH_KIND_WITHIN: usize = 512;

/// The WebSocket URL of `target`; for Herald, `encoding` picks the client protocol's form.
pub fn url(target: Target, encoding: Encoding, addr: &str, channel: &str) -> String {
    match target {
        Target::Herald => match encoding {
            Encoding::Json => format!("ws://{addr}/connection/websocket"),
            Encoding::Protobuf => format!("ws://{addr}/connection/websocket?format=protobuf"),
        },
        Target::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&room={channel}"),
        Target::Nats => format!("ws://{addr}"),
    }
}

/// What a subscriber does with each message from its server, the same while it sets up and
/// once a reader thread reads it: records deliveries, answers pings, notices the subscription's
/// confirmation and refusals.
pub struct Protocol {
    target: Target,
    encoding: Encoding,
    nats: nats::Reader,
    /// The server confirmed the subscription.
    pub subscribed: bool,
}

impl Protocol {
    pub fn new(target: Target, encoding: Encoding) -> Self {
        Self { target, encoding, nats: nats::Reader::default(), subscribed: false }
    }

    /// Handles one message; frames to send back go to `replies`.
    pub fn on_message(&mut self, message: Message<'_>, local: &mut Local, replies: &mut Vec<Vec<u8>>) -> Result<()> {
        let data = match message {
            Message::Text(data) | Message::Binary(data) => data,
            Message::Ping(payload) => {
                replies.push(wire::pong_frame(payload));
                return Ok(());
            }
            Message::Pong => return Ok(()),
            Message::Close(code) => bail!("closed by the server with code {code}"),
        };
        let binary = matches!(message, Message::Binary(_));
        match self.target {
            Target::Herald if self.encoding == Encoding::Protobuf => {
                anyhow::ensure!(binary, "text frame on a Protobuf connection");
                for message in protobuf::messages(data) {
                    match protobuf::incoming(message?)? {
                        // The data's JSON as the publisher sent it: read in place, not decoded.
                        Incoming::Publication(data) => local.record(data, &PLAIN),
                        Incoming::Ping => replies.push(wire::binary_frame(&protobuf::PONG)),
                        Incoming::OtherPush => {}
                        Incoming::Reply(reply) => {
                            if let Some(refusal) = protobuf::refusal(&reply) {
                                bail!(refusal);
                            }
                            if reply.id == 2 {
                                self.subscribed = true;
                            }
                        }
                    }
                }
            }
            Target::Herald => {
                anyhow::ensure!(!binary, "binary frame from a JSON server");
                for line in lines(data) {
                    if let Some(data) = publication_data(line) {
                        local.record(data, &PLAIN);
                    } else if line.starts_with(b"{\"push\"") {
                        if PUBLICATION.find(&line[..line.len().min(PUSH_KIND_WITHIN)]).is_some() {
                            local.record(line, &PLAIN);
                        }
                    } else if line == b"{}" {
                        replies.push(wire::text_frame("{}"));
                    } else if !line.is_empty() {
                        let reply: Value = serde_json::from_slice(line)
                            .with_context(|| format!("bad frame {}", String::from_utf8_lossy(line)))?;
                        if let Some(error) = reply.get("error") {
                            bail!("command {} refused: {error}", reply["id"]);
                        }
                        if reply["id"] == 2 {
                            self.subscribed = true;
                        }
                    }
                }
            }
            Target::Socketio => {
                anyhow::ensure!(!binary, "binary frame from engine.io");
                if data.starts_with(b"42") {
                    local.record(data, &ESCAPED);
                } else if data == b"2" {
                    replies.push(wire::text_frame("3"));
                } else if data.starts_with(b"40") {
                    self.subscribed = true;
                } else if data.starts_with(b"0") {
                    replies.push(wire::text_frame("40"));
                } else if data.starts_with(b"41") || data.starts_with(b"44") || data == b"1" {
                    bail!("disconnected by the server: {}", String::from_utf8_lossy(data));
                }
            }
            Target::Nats => {
                let (mut pings, mut pong, mut error) = (0, false, None);
                self.nats.feed(data, |event| match event {
                    nats::Event::Msg(payload) => local.record(payload, &PLAIN),
                    nats::Event::Ping => pings += 1,
                    nats::Event::Pong => pong = true,
                    nats::Event::Err(message) => error = Some(message.to_owned()),
                })?;
                if let Some(error) = error {
                    bail!("NATS error: {error}");
                }
                replies.extend((0..pings).map(|_| wire::text_frame("PONG\r\n")));
                // PONG comes back after the server processed SUB: the subscription's confirmation.
                self.subscribed |= pong;
            }
        }
        Ok(())
    }
}

/// The newline-separated replies of a frame, found with `memchr`.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', data).chain(std::iter::once(data.len()));
    ends.map(move |end| {
        let line = &data[start..end];
        start = end + 1;
        line
    })
}

/// Runs one subscriber until it is subscribed and hands its connection to the reader threads;
/// `ready` gets `true` then, or `false` if it failed before. Returns its counts when it failed
/// (the reader threads return the others').
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    readers: Arc<Readers>,
    connect_slots: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Option<Local> {
    let mut local = Local::new(shared.args.messages);
    local.slow = shared.is_slow(index);
    let setup = tokio::select! {
        biased;
        () = run_ended(stop, deadline) => Err(anyhow::anyhow!("the run ended before the subscription was confirmed")),
        setup = subscribe(index, &shared, &connect_slots, &mut local) => setup,
    };
    let handed = setup.and_then(|(connection, protocol)| {
        let stream = connection.stream.into_std().context("taking the socket from tokio")?;
        local.ready_after = Some(shared.started.elapsed());
        let subscribed = Subscribed {
            stream,
            frames: connection.frames,
            protocol,
            local: std::mem::replace(&mut local, Local::new(0)),
        };
        readers.hand_over(index, subscribed)
    });
    match handed {
        Ok(()) => {
            let _ = ready.send(true).await;
            None
        }
        Err(error) => {
            local.error = Some(format!("{error:#}"));
            let _ = ready.send(false).await;
            Some(local)
        }
    }
}

/// Connects, subscribes and reads until the subscription is confirmed (bounded by `deadline`
/// through the caller).
async fn subscribe(
    index: usize,
    shared: &Shared,
    connect_slots: &Semaphore,
    local: &mut Local,
) -> Result<(wire::Connection, Protocol)> {
    let args = &shared.args;
    let _permit = connect_slots.acquire().await.context("connection slots closed")?;
    let addr = match args.subscriber_addrs.as_slice() {
        [] => &shared.addr,
        addrs => &addrs[index % addrs.len()],
    };
    let options = SocketOptions {
        source: shared.sources.pick(index),
        recv_buffer: local.slow.then_some(shared.slow_recv_buffer),
    };
    let url = url(args.target, args.encoding, addr, &args.channel);
    let mut connection = wire::Connection::open(&url, options).await?;
    match (args.target, args.encoding) {
        (Target::Herald, Encoding::Json) => {
            let subscribe = match subscribe_data(args, index) {
                Some(data) => json!({"id": 2, "subscribe": {"channel": args.channel, "data": data}}),
                None => json!({"id": 2, "subscribe": {"channel": args.channel}}),
            };
            let frame = format!("{}\n{subscribe}", json!({"id": 1, "connect": {"token": args.token}}));
            connection.send(&wire::text_frame(&frame)).await?;
        }
        (Target::Herald, Encoding::Protobuf) => {
            let data = subscribe_data(args, index).map(|data| data.to_string().into_bytes());
            let payload = protobuf::handshake(&args.token, &args.channel, data);
            connection.send(&wire::binary_frame(&payload)).await?;
        }
        // The server sends the engine.io open packet first; the room is joined from the URL.
        (Target::Socketio, _) => {}
        (Target::Nats, _) => {
            let frame =
                format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\nPING\r\n", args.channel);
            connection.send(&wire::text_frame(&frame)).await?;
        }
    }
    let mut protocol = Protocol::new(args.target, args.encoding);
    let (mut buf, mut replies) = (Vec::with_capacity(4096), Vec::new());
    // Messages that came with the handshake response (Socket.IO's open packet, which waits
    // for an answer) are handled before anything else is read.
    local.arrived();
    connection.frames.feed(&[], |message| protocol.on_message(message, local, &mut replies))?;
    loop {
        for reply in replies.drain(..) {
            connection.send(&reply).await?;
        }
        if protocol.subscribed {
            return Ok((connection, protocol));
        }
        local.arrived();
        connection.read(&mut buf, |message| protocol.on_message(message, local, &mut replies)).await?;
    }
}

/// The `data` of subscriber `index`'s subscribe command with `--filters`: its group's filter
/// (JSON in both encodings; Protobuf carries it as the bytes of that JSON).
fn subscribe_data(args: &FanoutArgs, index: usize) -> Option<Value> {
    (args.filters > 0).then(|| {
        let group = format!("g{}", index % args.filters);
        json!({"herald": {"filters": [{"key": "group", "cmp": "eq", "val": group}]}})
    })
}

/// Resolves when the run is told to stop or its deadline passes.
async fn run_ended(mut stop: watch::Receiver<bool>, deadline: Instant) {
    tokio::select! {
        _ = stop.changed() => {}
        _ = tokio::time::sleep_until(deadline.into()) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{leading_number, lines, number_after, publication_data, seq_and_ts, Local, Protocol, ESCAPED, PLAIN};
    use crate::wire::{self, Message};
    use crate::{Encoding, Target};
    use herald_core::wire::proto::{self, Publication, Push, Reply};
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    fn publication_reply(data: &[u8], offset: u64) -> Reply {
        Reply {
            push: Some(Push {
                channel: "bench".into(),
                publication: Some(Publication { data: data.to_vec(), offset, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_json_publication_push_is_read_in_place() {
        let push = br#"{"push":{"channel":"bench","pub":{"data":{"seq":8,"ts":99},"offset":8,"time":1}}}"#;
        assert_eq!(publication_data(push), Some(&br#"{"seq":8,"ts":99},"offset":8,"time":1}}}"#[..]));
        assert_eq!(seq_and_ts(publication_data(push).unwrap(), &PLAIN), Some((8, 99)));
        let escaped = br#"{"push":{"channel":"a\"b","pub":{"data":{"seq":8,"ts":99}}}}"#;
        assert_eq!(publication_data(escaped), None, "escapes are left to the search");
        assert_eq!(publication_data(br#"{"push":{"channel":"c","join":{"info":{}}}}"#), None);
        assert_eq!(publication_data(br#"{"id":2,"subscribe":{}}"#), None);
    }

    #[test]
    fn the_payload_is_read_in_place_or_searched() {
        assert_eq!(seq_and_ts(br#"{"seq":7,"ts":12345,"pad":"x"}"#, &PLAIN), Some((7, 12345)), "a payload");
        let push = br#"{"push":{"channel":"c","pub":{"data":{"seq":8,"ts":99,"pad":"x"},"offset":8}}}"#;
        assert_eq!(seq_and_ts(push, &PLAIN), Some((8, 99)), "a JSON push");
        assert_eq!(seq_and_ts(br#"{"seq":7,"other":1,"ts":5}"#, &PLAIN), Some((7, 5)), "searched when not in place");
        assert_eq!(seq_and_ts(br#"{"seq":,"ts":5}"#, &PLAIN), None);
        assert_eq!(seq_and_ts(br#"{"seq":99999999999999999999,"ts":5}"#, &PLAIN), None, "overflow");
    }

    #[test]
    fn records_protobuf_publications_and_answers_pings() {
        let mut protocol = Protocol::new(Target::Herald, Encoding::Protobuf);
        let mut local = Local::new(10);
        let mut replies = Vec::new();
        let subscribed = Reply { id: 2, subscribe: Some(proto::SubscribeResult::default()), ..Default::default() };
        let mut frame = Reply { id: 1, connect: Some(proto::ConnectResult::default()), ..Default::default() }
            .encode_length_delimited_to_vec();
        frame.extend(subscribed.encode_length_delimited_to_vec());
        protocol.on_message(Message::Binary(&frame), &mut local, &mut replies).unwrap();
        assert!(protocol.subscribed);
        assert!(replies.is_empty());

        let push = publication_reply(br#"{"seq":7,"ts":12345,"p":"xx"}"#, 3).encode_length_delimited_to_vec();
        protocol.on_message(Message::Binary(&push), &mut local, &mut replies).unwrap();
        assert_eq!((local.unique, local.unexpected, local.max_seq), (1, 0, 7));
        assert_ne!(local.seen[0] & (1 << 7), 0, "seq 7 recorded");
        assert!(replies.is_empty());

        // A ping (the empty reply) between two publications in one frame, the second a duplicate.
        let mut frame = publication_reply(br#"{"seq":2,"ts":1}"#, 4).encode_length_delimited_to_vec();
        frame.push(0);
        frame.extend(push);
        protocol.on_message(Message::Binary(&frame), &mut local, &mut replies).unwrap();
        assert_eq!((local.unique, local.duplicates, local.out_of_order), (2, 1, 1));
        assert_eq!(replies.len(), 1);
        assert_eq!(wire::parse_client_frame(&replies[0]), (OpCode::Data(Data::Binary), vec![0]));
    }

    #[test]
    fn protobuf_refusals_and_text_frames_are_errors() {
        let mut protocol = Protocol::new(Target::Herald, Encoding::Protobuf);
        let (mut local, mut replies) = (Local::new(10), Vec::new());
        let refused = Reply {
            id: 2,
            error: Some(proto::Error { code: 103, message: "permission denied".into(), ..Default::default() }),
            ..Default::default()
        };
        let frame = refused.encode_length_delimited_to_vec();
        let error = protocol.on_message(Message::Binary(&frame), &mut local, &mut replies).unwrap_err();
        assert!(error.to_string().contains("103 permission denied"), "{error}");
        assert!(protocol.on_message(Message::Text(b"{}"), &mut local, &mut replies).is_err());
        assert!(protocol.on_message(Message::Binary(&[5, 1]), &mut local, &mut replies).is_err(), "truncated");
        assert!(!protocol.subscribed);
        // The JSON protocol refuses binary frames as before.
        let mut json = Protocol::new(Target::Herald, Encoding::Json);
        assert!(json.on_message(Message::Binary(&[0]), &mut local, &mut replies).is_err());
    }

    #[test]
    fn finds_numbers_in_any_wrapping() {
        let herald = r#"{"push":{"channel":"b","pub":{"data":{"seq":7,"ts":12345,"pad":"x"},"offset":7}}}"#;
        assert_eq!(number_after(herald.as_bytes(), &PLAIN.ts).map(|(n, _)| n), Some(12345));
        assert_eq!(number_after(herald.as_bytes(), &PLAIN.seq).map(|(n, _)| n), Some(7));
        let socketio = r#"42["msg","{\"seq\":3,\"ts\":77,\"pad\":\"\"}"]"#;
        assert_eq!(number_after(socketio.as_bytes(), &ESCAPED.seq), Some((3, 20)));
        assert_eq!(number_after(socketio.as_bytes(), &ESCAPED.ts).map(|(n, _)| n), Some(77));
        assert_eq!(number_after(b"no timestamp", &PLAIN.ts), None);
        assert_eq!(number_after(br#"{"ts":}"#, &PLAIN.ts), None);
        assert_eq!(number_after(br#"{"ts":99999999999999999999}"#, &PLAIN.ts), None, "overflow");
    }

    #[test]
    fn reads_leading_numbers_up_to_u64_max() {
        assert_eq!(leading_number(b"0,"), Some((0, 1)));
        assert_eq!(leading_number(b"123456}"), Some((123456, 6)));
        assert_eq!(leading_number(b"9999999999999999999"), Some((9_999_999_999_999_999_999, 19)));
        assert_eq!(leading_number(b"18446744073709551615,"), Some((u64::MAX, 20)));
        assert_eq!(leading_number(b"18446744073709551616"), None, "u64::MAX + 1");
        assert_eq!(leading_number(b"000000000000000000001"), Some((1, 21)), "leading zeros fit");
        assert_eq!(leading_number(b",1"), None);
        assert_eq!(leading_number(b""), None);
    }

    #[test]
    fn splits_frames_into_lines() {
        let split = |data: &'static [u8]| lines(data).collect::<Vec<_>>();
        assert_eq!(split(b"a\nbc\n"), [&b"a"[..], b"bc", b""]);
        assert_eq!(split(b"{}"), [&b"{}"[..]]);
    }
}
