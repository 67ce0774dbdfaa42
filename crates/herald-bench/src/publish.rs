//! The publisher: M publications at a fixed rate (or each after the previous one was
//! acknowledged), over HTTP, NATS TCP or a client WebSocket connection. Bounded by the deadline.

use crate::fanout::{now_ns, ws_config, Shared};
use crate::{nats, subscribe, Encoding, PublishOver, Target};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// HTTP requests in flight at most at a fixed rate (publishes go out on schedule without
/// waiting for earlier answers, so one slow answer does not lower the offered rate).
const HTTP_IN_FLIGHT: usize = 256;
/// `batch` API calls in flight at most.
const BATCH_IN_FLIGHT: usize = 64;

#[derive(Default)]
pub struct Outcome {
    /// Publications sent.
    pub published: u64,
    /// Publications the server acknowledged (NATS at a fixed rate: all sent before a PONG).
    pub accepted: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Outcome {
    fn error(&mut self, error: impl std::fmt::Display) {
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

pub async fn run(shared: Arc<Shared>, deadline: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let args = &shared.args;
    let result = match shared.publish_over {
        PublishOver::Http if args.target == Target::Herald && args.batch > 1 => {
            http_batches(&shared, deadline, &mut outcome).await
        }
        PublishOver::Http => http(&shared, deadline, &mut outcome).await,
        PublishOver::Tcp => nats_tcp(&shared, deadline, &mut outcome).await,
        PublishOver::Ws => websocket(&shared, deadline, &mut outcome).await,
    };
    if let Err(error) = result {
        outcome.error(format!("{error:#}"));
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// The payload every target carries: sequence number, send time on the shared clock, padding.
fn payload(seq: u64, padding: &str) -> String {
    format!("{{\"seq\":{seq},\"ts\":{},\"pad\":\"{padding}\"}}", now_ns())
}

/// When publication `seq` (from 1) is due at `rate` per second.
fn due(start: Instant, rate: u64, seq: u64) -> Instant {
    start + Duration::from_secs_f64((seq - 1) as f64 / rate as f64)
}

/// Sleeps until publication `seq` is due; false when the deadline comes first.
async fn wait_turn(start: Instant, rate: u64, seq: u64, deadline: Instant) -> bool {
    if rate > 0 {
        tokio::time::sleep_until(due(start, rate, seq).min(deadline).into()).await;
    }
    Instant::now() < deadline
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(HTTP_IN_FLIGHT).build()?)
}

async fn http(shared: &Shared, deadline: Instant, outcome: &mut Outcome) -> Result<()> {
    let args = &shared.args;
    let client = http_client()?;
    let padding = "x".repeat(args.payload);
    let channel = serde_json::to_string(&args.channel)?;
    let url = match args.target {
        Target::Herald => format!("http://{}/api/publish", shared.addr),
        _ => format!("http://{}/publish?room={}", shared.addr, args.channel),
    };
    let herald = args.target == Target::Herald;
    let mut in_flight = JoinSet::new();
    let start = Instant::now();
    for seq in 1..=args.messages {
        if !wait_turn(start, args.rate, seq, deadline).await {
            break;
        }
        let body = if herald {
            let tags = if args.filters > 0 {
                format!(",\"tags\":{{\"group\":\"g{}\"}}", seq as usize % args.filters)
            } else {
                String::new()
            };
            format!("{{\"channel\":{channel},\"data\":{}{tags}}}", payload(seq, &padding))
        } else {
            payload(seq, &padding)
        };
        let mut request = client.post(&url).body(body).timeout(deadline.saturating_duration_since(Instant::now()));
        if herald && !args.api_key.is_empty() {
            request = request.header("X-API-Key", &args.api_key);
        }
        let send = async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {text}"));
            }
            if herald {
                let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                if let Some(error) = answer.get("error") {
                    return Err(format!("publish refused: {error}"));
                }
            }
            Ok(())
        };
        outcome.published += 1;
        if args.rate == 0 {
            tally(outcome, send.await);
        } else {
            while in_flight.len() >= HTTP_IN_FLIGHT {
                if let Some(done) = in_flight.join_next().await {
                    tally(outcome, done.unwrap_or_else(|e| Err(e.to_string())));
                }
            }
            in_flight.spawn(send);
        }
    }
    // Every request has the deadline as its timeout, so this ends.
    while let Some(done) = in_flight.join_next().await {
        tally(outcome, done.unwrap_or_else(|e| Err(e.to_string())));
    }
    Ok(())
}

fn tally(outcome: &mut Outcome, result: std::result::Result<(), String>) {
    match result {
        Ok(()) => outcome.accepted += 1,
        Err(error) => outcome.error(error),
    }
}

/// Herald's `batch` method, `args.batch` publications per call (parallel), up to
/// `BATCH_IN_FLIGHT` calls in flight, as fast as accepted.
async fn http_batches(shared: &Shared, deadline: Instant, outcome: &mut Outcome) -> Result<()> {
    let args = &shared.args;
    let client = http_client()?;
    let padding = "x".repeat(args.payload);
    let channel = serde_json::to_string(&args.channel)?;
    let mut in_flight = JoinSet::new();
    let mut seq = 1;
    while seq <= args.messages && Instant::now() < deadline {
        let last = (seq + args.batch as u64 - 1).min(args.messages);
        let commands: Vec<String> = (seq..=last)
            .map(|n| format!("{{\"publish\":{{\"channel\":{channel},\"data\":{}}}}}", payload(n, &padding)))
            .collect();
        outcome.published += last + 1 - seq;
        seq = last + 1;
        let mut request = client
            .post(format!("http://{}/api/batch", shared.addr))
            .body(format!("{{\"parallel\":true,\"commands\":[{}]}}", commands.join(",")))
            .timeout(deadline.saturating_duration_since(Instant::now()));
        if !args.api_key.is_empty() {
            request = request.header("X-API-Key", &args.api_key);
        }
        while in_flight.len() >= BATCH_IN_FLIGHT {
            if let Some(Ok(count)) = in_flight.join_next().await {
                outcome.accepted += count;
            }
        }
        in_flight.spawn(async move {
            let Ok(response) = request.send().await else { return 0 };
            let Ok(answer) = response.json::<Value>().await else { return 0 };
            let replies = answer.get("replies").and_then(Value::as_array);
            replies.map_or(0, |replies| replies.iter().filter(|r| r.get("publish").is_some()).count() as u64)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        outcome.accepted += done.unwrap_or(0);
    }
    if outcome.accepted < outcome.published {
        outcome.error("some batch publishes were not acknowledged");
    }
    Ok(())
}

enum NatsIn {
    Ping,
    Pong,
    Err(String),
}

/// NATS `PUB` over plain TCP. At rate 0 every PUB is followed by a PING and the next waits for
/// the PONG (the server processed the PUB); at a fixed rate one PING/PONG at the end confirms all.
async fn nats_tcp(shared: &Shared, deadline: Instant, outcome: &mut Outcome) -> Result<()> {
    let args = &shared.args;
    let stream = tokio::time::timeout_at(deadline.into(), tokio::net::TcpStream::connect(&args.nats_tcp))
        .await
        .context("timed out connecting to NATS")?
        .with_context(|| format!("NATS TCP {}", args.nats_tcp))?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut parser = nats::Reader::default();
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let fed = parser.feed(&buf[..n], |event| {
                let _ = events_tx.send(match event {
                    nats::Event::Ping => NatsIn::Ping,
                    nats::Event::Pong => NatsIn::Pong,
                    nats::Event::Err(message) => NatsIn::Err(message.to_owned()),
                    nats::Event::Msg(_) => return,
                });
            });
            if fed.is_err() {
                break;
            }
        }
    });
    let result = async {
        write.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n").await?;
        nats_pong(&mut events, &mut write, deadline).await?;
        let padding = "x".repeat(args.payload);
        let start = Instant::now();
        for seq in 1..=args.messages {
            if !wait_turn(start, args.rate, seq, deadline).await {
                break;
            }
            let body = payload(seq, &padding);
            let mut frame = format!("PUB {} {}\r\n{body}\r\n", args.channel, body.len());
            if args.rate == 0 {
                frame.push_str("PING\r\n");
            }
            tokio::time::timeout_at(deadline.into(), write.write_all(frame.as_bytes()))
                .await
                .context("write timed out")??;
            outcome.published += 1;
            if args.rate == 0 {
                nats_pong(&mut events, &mut write, deadline).await?;
                outcome.accepted += 1;
            } else {
                while let Ok(event) = events.try_recv() {
                    match event {
                        NatsIn::Ping => write.write_all(b"PONG\r\n").await?,
                        NatsIn::Pong => {}
                        NatsIn::Err(message) => bail!("NATS error: {message}"),
                    }
                }
            }
        }
        if args.rate > 0 {
            write.write_all(b"PING\r\n").await?;
            nats_pong(&mut events, &mut write, deadline).await?;
            outcome.accepted = outcome.published;
        }
        anyhow::Ok(())
    }
    .await;
    reader.abort();
    result
}

async fn nats_pong(
    events: &mut mpsc::UnboundedReceiver<NatsIn>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    deadline: Instant,
) -> Result<()> {
    loop {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await.context("timed out waiting for PONG")? {
            Some(NatsIn::Pong) => return Ok(()),
            Some(NatsIn::Ping) => write.write_all(b"PONG\r\n").await?,
            Some(NatsIn::Err(message)) => bail!("NATS error: {message}"),
            None => bail!("NATS connection closed"),
        }
    }
}

/// Publishing over a client WebSocket connection: Herald `publish` commands (each answered),
/// NATS `PUB` (PING/PONG as for TCP), Socket.IO `publish` events (never answered).
async fn websocket(shared: &Shared, deadline: Instant, outcome: &mut Outcome) -> Result<()> {
    let args = &shared.args;
    let target = args.target;
    // The Socket.IO publisher joins no room, so it does not receive its own messages.
    let url = match target {
        Target::Socketio => format!("ws://{}/socket.io/?EIO=4&transport=websocket", shared.addr),
        // JSON whatever the subscribers' encoding: mixed publishers and subscribers are a real setup.
        _ => subscribe::url(target, Encoding::Json, &shared.addr, &args.channel),
    };
    let connect = tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), true);
    let (mut socket, _) = tokio::time::timeout_at(deadline.into(), connect)
        .await
        .context("publisher: timed out connecting")?
        .with_context(|| format!("publisher: connect {url}"))?;
    match target {
        Target::Herald => {
            let connect = json!({"id": 1, "connect": {"token": args.token}}).to_string();
            socket.send(Message::Text(connect.into())).await?;
        }
        Target::Nats => {
            let connect = "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n";
            socket.send(Message::Text(connect.into())).await?;
        }
        Target::Socketio => {}
    }
    let channel = serde_json::to_string(&args.channel)?;
    let padding = "x".repeat(args.payload);
    let mut parser = nats::Reader::default();
    let (mut connected, mut start) = (false, Instant::now());
    let (mut next_seq, mut awaiting, mut final_ping) = (1u64, 0u64, false);
    loop {
        let sent_all = next_seq > args.messages;
        if connected && sent_all && awaiting == 0 {
            if target == Target::Nats && args.rate > 0 && !final_ping {
                socket.send(Message::Text("PING\r\n".into())).await?;
                (final_ping, awaiting) = (true, 1);
                continue;
            }
            break;
        }
        let can_send = connected && !sent_all && (args.rate > 0 || awaiting == 0);
        let due = if args.rate > 0 { due(start, args.rate, next_seq) } else { Instant::now() };
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline.into()) => bail!("publisher: timed out"),
            _ = tokio::time::sleep_until(due.into()), if can_send => {
                let body = payload(next_seq, &padding);
                let frame = match target {
                    Target::Herald => {
                        format!("{{\"id\":{},\"publish\":{{\"channel\":{channel},\"data\":{body}}}}}", next_seq + 10)
                    }
                    Target::Nats => {
                        let ping = if args.rate == 0 { "PING\r\n" } else { "" };
                        format!("PUB {} {}\r\n{body}\r\n{ping}", args.channel, body.len())
                    }
                    Target::Socketio => format!("42{}", json!(["publish", {"room": args.channel, "data": body}])),
                };
                socket.send(Message::Text(frame.into())).await?;
                outcome.published += 1;
                next_seq += 1;
                match target {
                    Target::Herald => awaiting += 1,
                    Target::Nats if args.rate == 0 => awaiting += 1,
                    Target::Nats => {}
                    Target::Socketio => outcome.accepted += 1,
                }
            }
            message = socket.next() => {
                let Some(message) = message else { bail!("publisher: connection closed") };
                let (text, bytes) = match message? {
                    Message::Text(text) => (Some(text), None),
                    Message::Binary(bytes) => (None, Some(bytes)),
                    Message::Close(frame) => bail!("publisher: closed by the server: {frame:?}"),
                    _ => continue,
                };
                match target {
                    Target::Herald => {
                        let text = text.context("binary frame from a JSON server")?;
                        for line in text.as_str().split('\n').filter(|line| !line.is_empty()) {
                            if line == "{}" {
                                socket.send(Message::Text("{}".into())).await?;
                                continue;
                            }
                            let reply: Value = serde_json::from_str(line).with_context(|| format!("bad frame {line}"))?;
                            let id = reply["id"].as_u64().unwrap_or(0);
                            if id == 1 {
                                if let Some(error) = reply.get("error") {
                                    bail!("publisher: connect refused: {error}");
                                }
                                (connected, start) = (true, Instant::now());
                            } else if id > 10 {
                                awaiting = awaiting.saturating_sub(1);
                                match reply.get("error") {
                                    Some(error) => outcome.error(format!("publish refused: {error}")),
                                    None => outcome.accepted += 1,
                                }
                            }
                        }
                    }
                    Target::Nats => {
                        let data: &[u8] = match (&text, &bytes) {
                            (Some(text), _) => text.as_bytes(),
                            (_, Some(bytes)) => bytes,
                            _ => continue,
                        };
                        let (mut pings, mut pongs, mut error) = (0, 0u64, None);
                        parser.feed(data, |event| match event {
                            nats::Event::Ping => pings += 1,
                            nats::Event::Pong => pongs += 1,
                            nats::Event::Err(message) => error = Some(message.to_owned()),
                            nats::Event::Msg(_) => {}
                        })?;
                        if let Some(error) = error {
                            bail!("NATS error: {error}");
                        }
                        for _ in 0..pings {
                            socket.send(Message::Text("PONG\r\n".into())).await?;
                        }
                        for _ in 0..pongs {
                            if !connected {
                                (connected, start) = (true, Instant::now());
                            } else if final_ping {
                                awaiting = 0;
                                outcome.accepted = outcome.published;
                            } else {
                                awaiting = awaiting.saturating_sub(1);
                                outcome.accepted += 1;
                            }
                        }
                    }
                    Target::Socketio => {
                        let text = text.context("binary frame from engine.io")?;
                        let text = text.as_str();
                        if text == "2" {
                            socket.send(Message::Text("3".into())).await?;
                        } else if text.starts_with('0') {
                            socket.send(Message::Text("40".into())).await?;
                        } else if text.starts_with("40") {
                            (connected, start) = (true, Instant::now());
                        } else if text.starts_with("41") || text.starts_with("44") || text == "1" {
                            bail!("publisher: disconnected by the server: {text}");
                        }
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
    Ok(())
}
