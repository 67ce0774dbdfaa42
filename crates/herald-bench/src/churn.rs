//! The `churn` scenario: for `--duration` seconds, `--concurrency` workers each connect, finish
//! the protocol handshake (Herald: connect and subscribe replies, in JSON or with `--encoding
//! protobuf` in Protobuf; Socket.IO: the namespace
//! connect packet; NATS: PONG after SUB), close, and start again, at most `--rate` per second
//! over all. Reports connects and disconnects per second, handshake latency, and the server's
//! memory and open descriptors before and after (a leak shows as growth).

use crate::fanout::ws_config;
use crate::net::{self, SocketOptions, Sources};
use crate::protobuf::{self, Incoming};
use crate::{nats, procfs, subscribe, Encoding, Target};
use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    /// Server under test.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,
    /// Server address (host:port); defaults as for `fanout`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Seconds to churn for.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Connections being opened or closed at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Connections per second at most over all workers (0: as fast as they go).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Bound for one connection's handshake and close, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Channel (herald), room (socketio) or subject (nats) each connection subscribes to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Herald: connection token (empty: insecure mode / `herald serve --dev`).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Herald only: the client protocol's form the connections speak, json or protobuf
    /// (`?format=protobuf`). In `compare` it applies to the herald targets (its
    /// `herald-protobuf` target always uses protobuf).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: Encoding,
    /// The server's process id, for its memory and open descriptors before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Local source addresses 127.0.0.2, ...: sockets closed by the client wait in TIME_WAIT
    /// for a minute, holding their port, so churn needs more of them than a steady run.
    #[arg(long, default_value_t = 8)]
    pub source_addrs: usize,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Name of this run in the output (default: the target).
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ChurnArgs) -> Result<bool> {
    let json = args.json;
    let report = measure(args)?;
    if json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(report["status"] == "ok")
}

struct Counts {
    connects: AtomicU64,
    disconnects: AtomicU64,
    failures: AtomicU64,
    tickets: AtomicU64,
}

struct Worker {
    handshake: Histogram<u64>,
    first_error: Option<String>,
}

pub fn measure(args: ChurnArgs) -> Result<Value> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    args.encoding.check(args.target)?;
    net::ensure_open_files(args.concurrency)?;
    let addr = args.addr.clone().unwrap_or_else(|| default_addr(args.target).to_owned());
    let sources = Sources::for_server(net::host_of(&addr), args.source_addrs, args.concurrency)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let rss_before = args.server_pid.and_then(procfs::rss_kib);
    let fds_before = args.server_pid.and_then(procfs::open_fds);
    let counts = Arc::new(Counts {
        connects: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
    });
    let args = Arc::new(args);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let workers: Vec<Worker> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|index| {
                tokio::spawn(worker(index, args.clone(), addr.clone(), sources.clone(), counts.clone(), started, end))
            })
            .collect();
        let mut workers = Vec::new();
        for task in tasks {
            if let Ok(worker) = task.await {
                workers.push(worker);
            }
        }
        workers
    });
    let elapsed = started.elapsed();
    // Closed connections leave the server's books shortly after the close handshake.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = args.server_pid.and_then(procfs::rss_kib);
    let fds_after = args.server_pid.and_then(procfs::open_fds);
    runtime.shutdown_timeout(Duration::from_secs(2));

    let mut handshake = subscribe::latency_histogram()?;
    let mut errors = Vec::new();
    for worker in &workers {
        handshake.add(&worker.handshake)?;
        errors.extend(worker.first_error.clone());
    }
    errors.sort();
    errors.dedup();
    errors.truncate(5);
    let connects = counts.connects.load(Ordering::Relaxed);
    let disconnects = counts.disconnects.load(Ordering::Relaxed);
    let failures = counts.failures.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    let status = if connects == 0 {
        "no connection succeeded".to_owned()
    } else if failures > 0 {
        format!("{failures} connections failed")
    } else {
        "ok".to_owned()
    };
    Ok(json!({
        "scenario": "churn",
        "label": args.label.clone().unwrap_or_else(|| crate::default_label(args.target, args.encoding)),
        "target": args.target.name(),
        "encoding": args.encoding.name(),
        "addr": addr,
        "duration_s": (seconds * 100.0).round() / 100.0,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "connects": connects,
        "disconnects": disconnects,
        "failures": failures,
        "connects_per_sec": (connects as f64 / seconds).round(),
        "disconnects_per_sec": (disconnects as f64 / seconds).round(),
        "handshake_ms": {
            "p50": ms(handshake.value_at_quantile(0.5)),
            "p99": ms(handshake.value_at_quantile(0.99)),
            "max": ms(handshake.max()),
        },
        "source_addrs": sources.len(),
        "server_rss_kib": {"before": rss_before, "after": rss_after},
        "server_open_fds": {"before": fds_before, "after": fds_after},
        "status": status,
        "errors": errors,
    }))
}

pub fn default_addr(target: Target) -> &'static str {
    match target {
        Target::Herald => "127.0.0.1:8000",
        Target::Socketio => "127.0.0.1:3000",
        Target::Nats => "127.0.0.1:9222",
    }
}

async fn worker(
    index: usize,
    args: Arc<ChurnArgs>,
    addr: String,
    sources: Sources,
    counts: Arc<Counts>,
    started: Instant,
    end: Instant,
) -> Worker {
    let mut worker = Worker {
        handshake: subscribe::latency_histogram().expect("constant histogram bounds are valid"),
        first_error: None,
    };
    let url = subscribe::url(args.target, args.encoding, &addr, &args.channel);
    let bound = Duration::from_secs(args.timeout.max(1));
    // Each worker walks the source addresses from its own starting point.
    let mut cycle = index;
    loop {
        if args.rate > 0 {
            let ticket = counts.tickets.fetch_add(1, Ordering::Relaxed);
            let due = started + Duration::from_secs_f64(ticket as f64 / args.rate as f64);
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if Instant::now() >= end {
            break;
        }
        let options = SocketOptions { source: sources.pick(cycle), recv_buffer: None };
        cycle += args.concurrency;
        let began = Instant::now();
        let opened = tokio::time::timeout(bound, async {
            let mut socket = net::ws_connect(&url, options, ws_config()).await?;
            handshake(&mut socket, &args).await?;
            anyhow::Ok(socket)
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("handshake timed out after {bound:?}")));
        let mut socket = match opened {
            Ok(socket) => socket,
            Err(error) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                worker.first_error.get_or_insert_with(|| format!("{error:#}"));
                continue;
            }
        };
        worker.handshake.saturating_record((began.elapsed().as_micros() as u64).max(1));
        counts.connects.fetch_add(1, Ordering::Relaxed);
        // Close handshake: our close, then the server's, then the end of the stream.
        let closed = tokio::time::timeout(bound, async {
            socket.close(None).await?;
            while let Some(message) = socket.next().await {
                message?;
            }
            anyhow::Ok(())
        })
        .await;
        match closed {
            Ok(Ok(())) => {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            // A server may drop the TCP connection right after its close frame.
            Ok(Err(error)) if is_reset(&error) => {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                worker.first_error.get_or_insert_with(|| format!("close: {error:#}"));
            }
            Err(_) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                worker.first_error.get_or_insert_with(|| format!("close timed out after {bound:?}"));
            }
        }
    }
    worker
}

fn is_reset(error: &anyhow::Error) -> bool {
    let text = error.to_string();
    text.contains("reset") || text.contains("Connection closed normally") || text.contains("AlreadyClosed")
}

/// The protocol handshake of one connection, until the server confirmed the subscription.
async fn handshake(socket: &mut WebSocketStream<TcpStream>, args: &ChurnArgs) -> Result<()> {
    let over_protobuf = args.target == Target::Herald && args.encoding == Encoding::Protobuf;
    match args.target {
        Target::Herald if over_protobuf => {
            let payload = protobuf::handshake(&args.token, &args.channel, None);
            socket.send(Message::Binary(payload.into())).await?;
        }
        Target::Herald => {
            let connect = json!({"id": 1, "connect": {"token": args.token}});
            let subscribe = json!({"id": 2, "subscribe": {"channel": args.channel}});
            socket.send(Message::Text(format!("{connect}\n{subscribe}").into())).await?;
        }
        Target::Socketio => {}
        Target::Nats => {
            let frame =
                format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\nPING\r\n", args.channel);
            socket.send(Message::Text(frame.into())).await?;
        }
    }
    let mut reader = nats::Reader::default();
    while let Some(message) = socket.next().await {
        let (data, binary) = match message? {
            Message::Text(text) => (text.as_bytes().to_vec(), false),
            Message::Binary(bytes) => (bytes.to_vec(), true),
            Message::Close(frame) => bail!("closed by the server during the handshake: {frame:?}"),
            _ => continue,
        };
        match args.target {
            Target::Herald if over_protobuf => {
                anyhow::ensure!(binary, "text frame on a Protobuf connection");
                for message in protobuf::messages(&data) {
                    match protobuf::incoming(message?)? {
                        Incoming::Ping => socket.send(Message::Binary(protobuf::PONG.to_vec().into())).await?,
                        Incoming::Publication(_) | Incoming::OtherPush => {}
                        Incoming::Reply(reply) => {
                            if let Some(refusal) = protobuf::refusal(&reply) {
                                bail!(refusal);
                            }
                            if reply.id == 2 {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Target::Herald => {
                for line in std::str::from_utf8(&data)?.split('\n').filter(|line| !line.is_empty()) {
                    let reply: Value = serde_json::from_str(line).with_context(|| format!("bad frame {line}"))?;
                    if let Some(error) = reply.get("error") {
                        bail!("command {} refused: {error}", reply["id"]);
                    }
                    if reply["id"] == 2 {
                        return Ok(());
                    }
                }
            }
            Target::Socketio => {
                let text = std::str::from_utf8(&data)?;
                if text.starts_with("40") {
                    return Ok(());
                } else if text.starts_with('0') {
                    socket.send(Message::Text("40".into())).await?;
                } else if text.starts_with("44") {
                    bail!("refused by the server: {text}");
                }
            }
            Target::Nats => {
                let (mut pong, mut error) = (false, None);
                reader.feed(&data, |event| match event {
                    nats::Event::Pong => pong = true,
                    nats::Event::Err(message) => error = Some(message.to_owned()),
                    nats::Event::Ping | nats::Event::Msg(_) => {}
                })?;
                if let Some(error) = error {
                    bail!("NATS error: {error}");
                }
                if pong {
                    return Ok(());
                }
            }
        }
    }
    bail!("connection closed during the handshake")
}

fn print_summary(report: &Value) {
    let hs = &report["handshake_ms"];
    println!(
        "{} ({}): churn for {} s, {} at once{}",
        report["label"].as_str().unwrap_or_default(),
        report["addr"].as_str().unwrap_or_default(),
        report["duration_s"],
        report["concurrency"],
        match report["rate"].as_u64() {
            Some(0) | None => String::new(),
            Some(rate) => format!(", at most {rate}/s"),
        }
    );
    println!(
        "  connects:    {} ({}/s), disconnects {} ({}/s), failures {}",
        report["connects"],
        report["connects_per_sec"],
        report["disconnects"],
        report["disconnects_per_sec"],
        report["failures"]
    );
    println!("  handshake:   p50 {} ms, p99 {} ms, max {} ms", hs["p50"], hs["p99"], hs["max"]);
    let rss = &report["server_rss_kib"];
    let fds = &report["server_open_fds"];
    println!(
        "  server:      RSS {} -> {} KiB, open files {} -> {}",
        rss["before"], rss["after"], fds["before"], fds["after"]
    );
    println!("  status:      {}", report["status"].as_str().unwrap_or_default());
    if let Some(errors) = report["errors"].as_array().filter(|e| !e.is_empty()) {
        for error in errors {
            println!("  error:       {}", error.as_str().unwrap_or_default());
        }
    }
}
