//! `herald-bench`: fan-out load against Herald (or Centrifugo) and the peers in `shared/peers`
//! (Socket.IO, NATS over WebSocket), with the same scenario and the same client code paths:
//! N subscribers on one channel, one publisher, deliveries per second and publish-to-receive
//! latency from a timestamp in the payload. Every loop is bounded in time.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "herald-bench", about = "Fan-out benchmark: one publisher, N WebSocket subscribers")]
struct Args {
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    /// Server address (host:port). Defaults: herald 127.0.0.1:8000, socketio 127.0.0.1:3000, nats ws 127.0.0.1:9222.
    #[arg(long)]
    addr: Option<String>,
    /// NATS plain TCP address for publishing.
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats_tcp: String,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Publications per second; 0 publishes each as soon as the previous was accepted.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Payload padding in bytes (besides sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Herald: server API key (not needed against `herald serve --dev`).
    #[arg(long, default_value = "")]
    api_key: String,
    /// Herald: connection token (not needed against `herald serve --dev`).
    #[arg(long, default_value = "")]
    token: String,
    /// Give up after this many seconds and report what arrived.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// Herald: spread subscribers over this many distinct filters (tag `group` = g0..gN-1);
    /// publication k carries group g(k mod N), so each reaches subscribers/N subscribers.
    #[arg(long, default_value_t = 0)]
    filters: usize,
    /// Herald: send publications in `batch` API calls of this many (parallel), as fast as accepted.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Report the server's CPU time per publication, read from /proc/PID/stat.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Target {
    Herald,
    Socketio,
    Nats,
}

static START: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One subscriber's own counts, merged at the end so that recording costs no shared lock.
struct Local {
    received: u64,
    latency: Histogram<u64>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Local {
    fn new() -> Result<Self> {
        Ok(Self { received: 0, latency: Histogram::new_with_bounds(1, 60_000_000, 3)?, first_at: None, last_at: None })
    }

    fn record(&mut self, sent_ns: u64, progress: &AtomicU64) {
        let micros = now_ns().saturating_sub(sent_ns) / 1000;
        let _ = self.latency.record(micros.max(1));
        self.received += 1;
        let now = Instant::now();
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Finds `"ts":<n>` in a payload without parsing the rest (cheap, and the same for every peer).
fn timestamp_in(text: &str) -> Option<u64> {
    let at = text.find("\"ts\":")? + 5;
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn subscriber(
    index: usize,
    args: Arc<Args>,
    addr: String,
    progress: Arc<AtomicU64>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Local> {
    let mut local = Local::new()?;
    let url = match args.target {
        Target::Herald => format!("ws://{addr}/connection/websocket"),
        Target::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&room={}", args.channel),
        Target::Nats => format!("ws://{addr}"),
    };
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.with_context(|| format!("connect {url}"))?;
    match args.target {
        Target::Herald => {
            let frame = format!(
                "{}\n{}",
                json!({"id": 1, "connect": {"token": args.token}}),
                if args.filters > 0 {
                    let group = format!("g{}", index % args.filters);
                    let filters = json!([{"key": "group", "cmp": "eq", "val": group}]);
                    json!({"id": 2, "subscribe": {"channel": args.channel, "data": {"herald": {"filters": filters}}}})
                } else {
                    json!({"id": 2, "subscribe": {"channel": args.channel}})
                }
            );
            socket.send(Message::Text(frame.into())).await?;
        }
        Target::Socketio => {}
        Target::Nats => {
            let frame = format!("CONNECT {{\"verbose\":false}}\r\nSUB {} 1\r\n", args.channel);
            socket.send(Message::Text(frame.into())).await?;
            let _ = ready.send(()).await;
        }
    }
    let mut announced = args.target == Target::Nats;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = stop.changed() => break,
        };
        let Some(message) = message else { break };
        let text = match message? {
            Message::Text(text) => text.to_string(),
            Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        match args.target {
            Target::Herald => {
                for line in text.split('\n') {
                    if line == "{}" {
                        socket.send(Message::Text("{}".into())).await?;
                    } else if line.starts_with("{\"push\"") {
                        if let Some(ts) = timestamp_in(line) {
                            local.record(ts, &progress);
                        }
                    } else if !announced && line.contains("\"id\":2") {
                        if line.contains("\"error\"") {
                            bail!("subscribe refused: {line}");
                        }
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                }
            }
            Target::Socketio => {
                if text.starts_with('0') {
                    socket.send(Message::Text("40".into())).await?;
                } else if text == "2" {
                    socket.send(Message::Text("3".into())).await?;
                } else if text.starts_with("40") && !announced {
                    announced = true;
                    let _ = ready.send(()).await;
                } else if let Some(event) = text.strip_prefix("42") {
                    // 42["msg","{\"ts\":...}"]: the payload is a JSON string inside the array.
                    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(event) {
                        if let Some(ts) = items.get(1).and_then(Value::as_str).and_then(timestamp_in) {
                            local.record(ts, &progress);
                        }
                    }
                }
            }
            Target::Nats => {
                if text.starts_with("PING") {
                    socket.send(Message::Text("PONG\r\n".into())).await?;
                }
                for ts in text.split("MSG ").skip(1).filter_map(timestamp_in) {
                    local.record(ts, &progress);
                }
            }
        }
    }
    Ok(local)
}

/// User plus system CPU seconds a process has used (Linux `/proc/PID/stat`, in clock ticks of
/// 1/100 s, the value on every Linux this runs on).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

fn payload(seq: u64, padding: &str) -> String {
    format!("{{\"seq\":{seq},\"ts\":{},\"pad\":\"{padding}\"}}", now_ns())
}

/// Publishes through Herald's `batch` method, `args.batch` publications per call, up to 64 calls
/// in flight.
async fn publish_batches(args: Arc<Args>, addr: String) -> Result<(u64, Duration)> {
    let padding = "x".repeat(args.payload);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut accepted = 0;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut seq = 1;
    while seq <= args.messages {
        let last = (seq + args.batch as u64 - 1).min(args.messages);
        let commands: Vec<String> = (seq..=last)
            .map(|n| format!("{{\"publish\":{{\"channel\":\"{}\",\"data\":{}}}}}", args.channel, payload(n, &padding)))
            .collect();
        seq = last + 1;
        let mut request = http
            .post(format!("http://{addr}/api/batch"))
            .body(format!("{{\"parallel\":true,\"commands\":[{}]}}", commands.join(",")));
        if !args.api_key.is_empty() {
            request = request.header("X-API-Key", &args.api_key);
        }
        while in_flight.len() >= 64 {
            if let Some(Ok(Some(count))) = in_flight.join_next().await {
                accepted += count;
            }
        }
        in_flight.spawn(async move {
            let text = request.send().await.ok()?.text().await.ok()?;
            let answer: Value = serde_json::from_str(&text).ok()?;
            let replies = answer.get("replies")?.as_array()?;
            Some(replies.iter().filter(|r| r.get("publish").is_some()).count() as u64)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok(Some(count)) = done {
            accepted += count;
        }
    }
    Ok((accepted, started.elapsed()))
}

async fn publish_all(args: Arc<Args>, addr: String) -> Result<(u64, Duration)> {
    if args.batch > 1 && args.target == Target::Herald {
        return publish_batches(args, addr).await;
    }
    let padding = "x".repeat(args.payload);
    let http = reqwest::Client::new();
    let mut nats = if args.target == Target::Nats {
        Some(tokio::net::TcpStream::connect(&args.nats_tcp).await.context("NATS TCP")?)
    } else {
        None
    };
    if let Some(stream) = nats.as_mut() {
        stream.write_all(b"CONNECT {\"verbose\":false}\r\n").await?;
    }
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let started = Instant::now();
    let mut accepted = 0;
    // At a fixed rate, HTTP publishes go out on schedule without waiting for earlier answers
    // (at most 256 in flight), so a slow answer does not lower the offered rate.
    let mut in_flight = tokio::task::JoinSet::new();
    for seq in 1..=args.messages {
        if let Some(interval) = interval {
            let due = started + interval * (seq as u32 - 1);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = payload(seq, &padding);
        match args.target {
            Target::Nats => {
                let stream = nats.as_mut().context("NATS stream")?;
                stream.write_all(format!("PUB {} {}\r\n{body}\r\n", args.channel, body.len()).as_bytes()).await?;
                accepted += 1;
            }
            Target::Herald | Target::Socketio => {
                let request = if args.target == Target::Herald {
                    let tags = if args.filters > 0 {
                        format!(",\"tags\":{{\"group\":\"g{}\"}}", seq as usize % args.filters)
                    } else {
                        String::new()
                    };
                    let mut request = http
                        .post(format!("http://{addr}/api/publish"))
                        .body(format!("{{\"channel\":\"{}\",\"data\":{body}{tags}}}", args.channel));
                    if !args.api_key.is_empty() {
                        request = request.header("X-API-Key", &args.api_key);
                    }
                    request
                } else {
                    http.post(format!("http://{addr}/publish?room={}", args.channel)).body(body)
                };
                let send = async move {
                    let response = request.send().await.ok()?;
                    let ok = response.status().is_success();
                    let text = response.text().await.ok()?;
                    Some(ok && !text.contains("\"error\""))
                };
                if interval.is_none() {
                    accepted += u64::from(send.await == Some(true));
                } else {
                    while in_flight.len() >= 256 {
                        if let Some(Ok(Some(true))) = in_flight.join_next().await {
                            accepted += 1;
                        }
                    }
                    in_flight.spawn(send);
                }
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok(Some(true)) = done {
            accepted += 1;
        }
    }
    if let Some(stream) = nats.as_mut() {
        stream.flush().await?;
    }
    Ok((accepted, started.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    START.get_or_init(Instant::now);
    let addr = args.addr.clone().unwrap_or_else(|| {
        match args.target {
            Target::Herald => "127.0.0.1:8000",
            Target::Socketio => "127.0.0.1:3000",
            Target::Nats => "127.0.0.1:9222",
        }
        .to_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.subscribers.max(1));
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for index in 0..args.subscribers {
        let (args, addr, progress, ready, stop) =
            (args.clone(), addr.clone(), progress.clone(), ready_tx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            subscriber(index, args, addr, progress, ready, stop)
                .await
                .map_err(|error| eprintln!("subscriber: {error:#}"))
                .ok()
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < args.subscribers {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => bail!("only {ready} of {} subscribers ready before the timeout", args.subscribers),
        }
    }
    let connect_time = connect_started.elapsed();
    // NATS has no subscribe acknowledgement; a round trip through the server orders it.
    if args.target == Target::Nats {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let (accepted, publish_time) = publish_all(args.clone(), addr).await?;
    let expected = if args.filters > 0 {
        // Publication k reaches the subscribers of group k mod N.
        (1..=accepted)
            .map(|k| (0..args.subscribers).filter(|i| i % args.filters == k as usize % args.filters).count() as u64)
            .sum()
    } else {
        accepted * args.subscribers as u64
    };
    // A progress check every 20 ms bounds the wait; the figures come from the subscribers' clocks.
    while progress.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut received, mut first, mut last) = (0u64, None::<Instant>, None::<Instant>);
    for task in tasks {
        if let Ok(Some(local)) = task.await {
            received += local.received;
            histogram.add(&local.latency)?;
            first = match (first, local.first_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last = match (last, local.last_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let server_cpu = match (cpu_before, args.server_pid.and_then(process_cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let window = match (first, last) {
        (Some(first), Some(last)) if last > first => last - first,
        _ => publish_time,
    };
    let per_second = received as f64 / window.as_secs_f64().max(1e-9);
    let report = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "subscribers": args.subscribers,
        "messages": args.messages,
        "rate": args.rate,
        "payload_bytes": args.payload,
        "accepted": accepted,
        "expected_deliveries": expected,
        "deliveries": received,
        "missing": expected.saturating_sub(received),
        "deliveries_per_sec": per_second.round(),
        "publishes_per_sec": (accepted as f64 / publish_time.as_secs_f64().max(1e-9)).round(),
        "connect_ms": connect_time.as_millis(),
        "filters": args.filters,
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_publication": server_cpu.map(|cpu| (cpu * 1e6 / accepted.max(1) as f64).round()),
        "latency_ms": {
            "p50": histogram.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": histogram.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": histogram.value_at_quantile(0.99) as f64 / 1000.0,
            "max": histogram.max() as f64 / 1000.0,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{:>8}: {} subscribers x {} messages at {}/s: {} of {} deliveries ({} missing), {:.0} deliveries/s, \
             latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms, {} subscribers connected in {} ms",
            report["target"].as_str().unwrap_or_default(),
            args.subscribers,
            args.messages,
            args.rate,
            received,
            expected,
            report["missing"],
            per_second,
            report["latency_ms"]["p50"].as_f64().unwrap_or_default(),
            report["latency_ms"]["p90"].as_f64().unwrap_or_default(),
            report["latency_ms"]["p99"].as_f64().unwrap_or_default(),
            report["latency_ms"]["max"].as_f64().unwrap_or_default(),
            args.subscribers,
            connect_time.as_millis(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timestamp_in;

    #[test]
    fn finds_the_timestamp_in_any_wrapping() {
        assert_eq!(timestamp_in(r#"{"push":{"pub":{"data":{"seq":1,"ts":12345,"pad":"x"}}}}"#), Some(12345));
        assert_eq!(timestamp_in(r#"MSG bench 1 30\r\n{"seq":1,"ts":77,"pad":""}"#), Some(77));
        assert_eq!(timestamp_in("no timestamp"), None);
    }
}
