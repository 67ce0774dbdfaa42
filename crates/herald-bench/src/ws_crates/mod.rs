//! `herald-bench ws-crates`: the WebSocket crate choice by measurement. For each crate it starts
//! this binary's `ws-crates-server` (one process per crate, so that memory is the crate's),
//! then (1) opens `--connections` idle connections and reads the server's resident memory per
//! connection and the setup rate, (2) keeps `--fanout-connections` of them and has the server
//! fan out `--frames` pre-encoded text frames to all, packed (Herald's shape) and then each as
//! its own message, measuring frames delivered per second. The clients are the same for every
//! crate (tokio-tungstenite, counting newline-separated frames).

pub mod server;

use crate::fanout::ws_config;
use crate::net::{self, SocketOptions, Sources};
use crate::procfs;
use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use server::Crate;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct WsCratesArgs {
    /// Crates to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "axum,tokio-websockets,fastwebsockets")]
    pub crates: Vec<Crate>,
    /// Idle connections for the memory figure.
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub connections: usize,
    /// Connections kept for the fan-out figures (the first of the idle ones).
    #[arg(long, default_value_t = 1000)]
    pub fanout_connections: usize,
    /// Frames the server fans out to every connection, per mode.
    #[arg(long, default_value_t = 1000)]
    pub frames: u64,
    /// Approximate size of one frame in bytes.
    #[arg(long, default_value_t = 140)]
    pub frame_bytes: usize,
    /// Seconds to let the idle connections settle before reading the server's memory.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Bound for each phase in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Tokio worker threads of the server (and of this load generator).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Print one JSON line per crate instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: WsCratesArgs) -> Result<bool> {
    anyhow::ensure!(args.fanout_connections <= args.connections, "--fanout-connections exceeds --connections");
    net::ensure_open_files(args.connections + 2)?;
    let started = crate::compare::utc_now();
    let mut rows = Vec::new();
    for &implementation in &args.crates {
        eprintln!("herald-bench ws-crates: {}", implementation.name());
        let row = measure(&args, implementation)
            .unwrap_or_else(|error| json!({"crate": implementation.name(), "status": format!("error: {error:#}")}));
        if args.json {
            println!("{row}");
        }
        rows.push(row);
    }
    if !args.json {
        print_table(&args, &started, &rows);
    }
    Ok(rows.iter().all(|row| row["status"] == "ok"))
}

/// A `ws-crates-server` child, killed by its PID when dropped.
struct ServerProcess {
    child: Child,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_ports() -> Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn measure(args: &WsCratesArgs, implementation: Crate) -> Result<Value> {
    let (port, control_port) = free_ports()?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut command = Command::new(exe);
    command.args(["ws-crates-server", "--port", &port.to_string(), "--control-port", &control_port.to_string()]);
    command.args(["--threads", &args.threads.to_string(), "--crate"]);
    command.arg(implementation.to_possible_value_name());
    let child = command.stdin(Stdio::null()).spawn().context("starting ws-crates-server")?;
    let server = ServerProcess { child };
    let pid = server.child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(phases(args, implementation, port, control_port, pid));
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    result
}

trait PossibleValueName {
    fn to_possible_value_name(&self) -> String;
}

impl PossibleValueName for Crate {
    fn to_possible_value_name(&self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(String::new, |value| value.get_name().to_owned())
    }
}

struct Control {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Control {
    async fn connect(port: u16) -> Result<Self> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => {
                    let (read, write) = stream.into_split();
                    return Ok(Self { lines: BufReader::new(read).lines(), write });
                }
                Err(error) if Instant::now() >= until => bail!("server control port {port}: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn ask(&mut self, command: &str) -> Result<String> {
        self.write.write_all(format!("{command}\n").as_bytes()).await?;
        let answer = self.lines.next_line().await?.context("control connection closed")?;
        anyhow::ensure!(!answer.starts_with("error"), "server: {answer}");
        Ok(answer)
    }

    /// Waits until the server has exactly `count` connections registered.
    async fn wait_count(&mut self, count: usize, until: Instant) -> Result<()> {
        loop {
            let now: usize = self.ask("count").await?.parse().context("count answer")?;
            if now == count {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("server has {now} connections, expected {count}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn phases(args: &WsCratesArgs, implementation: Crate, port: u16, control_port: u16, pid: u32) -> Result<Value> {
    let mut control = Control::connect(control_port).await?;
    let bound = Duration::from_secs(args.timeout);
    let rss_before = procfs::rss_kib(pid).context("reading the server's memory")?;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let sources = Sources::for_server("127.0.0.1", 0, args.connections)?;
    let received = Arc::new(AtomicU64::new(0));

    // (1) Idle connections: setup rate and memory.
    let slots = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_started = Instant::now();
    let mut connecting = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let (slots, url) = (slots.clone(), url.clone());
        let options = SocketOptions { source: sources.pick(index), recv_buffer: None };
        connecting.push(tokio::spawn(async move {
            let _permit = slots.acquire().await?;
            tokio::time::timeout(bound, net::ws_connect(&url, options, ws_config())).await.context("timed out")?
        }));
    }
    let mut sockets = Vec::with_capacity(args.connections);
    for task in connecting {
        sockets.push(task.await.context("connect task")??);
    }
    let connect_elapsed = connect_started.elapsed();
    control.wait_count(args.connections, Instant::now() + bound).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss_idle = procfs::rss_kib(pid).context("reading the server's memory")?;

    // (2) Fan-out to the first `fanout_connections`, whose readers count frames.
    sockets.truncate(args.fanout_connections);
    control.wait_count(args.fanout_connections, Instant::now() + bound).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (received, mut stop) = (received.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    let message = tokio::select! {
                        _ = stop.changed() => break,
                        message = socket.next() => message,
                    };
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            let frames = newlines(text.as_bytes()) + 1;
                            received.fetch_add(frames, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
            })
        })
        .collect();
    let expected = args.frames * args.fanout_connections as u64;
    let mut modes = serde_json::Map::new();
    for (mode, pack) in [("packed", true), ("unpacked", false)] {
        let base = received.load(Ordering::Relaxed);
        let cpu_before = procfs::cpu_seconds(pid);
        let started = Instant::now();
        control.ask(&format!("fanout {} {} {}", args.frames, args.frame_bytes, u8::from(pack))).await?;
        let until = started + bound;
        while received.load(Ordering::Relaxed) - base < expected && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        let got = received.load(Ordering::Relaxed) - base;
        let cpu = procfs::cpu_seconds(pid).zip(cpu_before).map(|(after, before)| after - before);
        anyhow::ensure!(got >= expected, "{mode}: {got} of {expected} frames arrived within {bound:?}");
        modes.insert(
            mode.to_owned(),
            json!({
                "frames_per_sec": (got as f64 / elapsed.as_secs_f64()).round(),
                "elapsed_ms": elapsed.as_millis(),
                "server_cpu_ns_per_frame": cpu.map(|cpu| (cpu * 1e9 / got as f64).round()),
            }),
        );
    }
    let _ = stop_tx.send(true);
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    let per_connection = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / args.connections.max(1) as f64;
    Ok(json!({
        "crate": implementation.name(),
        "connections": args.connections,
        "connections_per_sec": (args.connections as f64 / connect_elapsed.as_secs_f64()).round(),
        "server_rss_kib": {"before": rss_before, "idle": rss_idle},
        "server_rss_bytes_per_connection": per_connection.round(),
        "fanout_connections": args.fanout_connections,
        "frames": args.frames,
        "frame_bytes": args.frame_bytes,
        "packed": modes["packed"],
        "unpacked": modes["unpacked"],
        "status": "ok",
    }))
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

fn print_table(args: &WsCratesArgs, started: &str, rows: &[Value]) {
    println!(
        "WebSocket crates, started {started}: {} idle connections; fan-out of {} frames of ~{} bytes to {} connections",
        args.connections, args.frames, args.frame_bytes, args.fanout_connections
    );
    println!();
    println!(
        "| crate | RSS bytes/idle conn | connections/s | packed frames/s | packed server CPU ns/frame | unpacked frames/s | unpacked server CPU ns/frame | status |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let n = |v: &Value| v.as_f64().map_or("n/a".to_owned(), crate::table::thousands);
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row["crate"].as_str().unwrap_or("?"),
            n(&row["server_rss_bytes_per_connection"]),
            n(&row["connections_per_sec"]),
            n(&row["packed"]["frames_per_sec"]),
            n(&row["packed"]["server_cpu_ns_per_frame"]),
            n(&row["unpacked"]["frames_per_sec"]),
            n(&row["unpacked"]["server_cpu_ns_per_frame"]),
            row["status"].as_str().unwrap_or("?"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::newlines;

    #[test]
    fn counts_packed_frames() {
        assert_eq!(newlines(b"{}"), 0);
        assert_eq!(newlines(b"{}\n{}\n{}"), 2);
    }
}
