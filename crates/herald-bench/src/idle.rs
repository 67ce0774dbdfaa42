//! The `idle` scenario: open N subscriber connections (subscribed to one channel, answering the
//! server's pings), hold them, and report the server's resident memory per connection (before
//! and after, from /proc/PID/status) and the connection setup rate.

use crate::fanout::{self, Extra};
use crate::{procfs, Encoding, FanoutArgs, Target};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// Server under test.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,
    /// Server address (host:port); defaults as for `fanout`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Connections to open and hold (each subscribes to the channel).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold the connections once all are up, before measuring memory.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Bound for connecting all of them, in seconds (the hold comes on top).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Channel (herald), room (socketio) or subject (nats).
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
    /// The server's process id: required for the memory figures.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Local source addresses 127.0.0.2, ... (0: one per 5,000 connections).
    #[arg(long, default_value_t = 0)]
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

pub fn run(args: IdleArgs) -> Result<bool> {
    let json = args.json;
    let report = measure(args)?;
    if json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(report["status"] == "ok")
}

pub fn measure(args: IdleArgs) -> Result<Value> {
    let fanout_args = FanoutArgs {
        target: args.target,
        addr: args.addr.clone(),
        nats_tcp: "127.0.0.1:4222".to_owned(),
        publish_over: None,
        subscribers: args.connections,
        messages: 0,
        rate: 0,
        payload: 0,
        channel: args.channel.clone(),
        api_key: String::new(),
        token: args.token.clone(),
        timeout: args.timeout + args.duration,
        idle_timeout: 1,
        threads: args.threads,
        connect_concurrency: args.connect_concurrency,
        label: args.label.clone(),
        json: true,
        filters: 0,
        batch: 1,
        server_pid: args.server_pid,
        source_addrs: args.source_addrs,
        subscriber_addrs: Vec::new(),
        encoding: args.encoding,
    };
    let before = args.server_pid.and_then(procfs::rss_kib);
    let fds_before = args.server_pid.and_then(procfs::open_fds);
    let hold = Duration::from_secs(args.duration);
    let run = fanout::measure(fanout_args, Extra { hold: Some(hold), ..Extra::default() })
        .context("idle: opening the connections")?;
    let subscribed = run["subscribed"].as_u64().unwrap_or(0);
    let after = run["server_rss_kib"]["after_hold"].as_u64();
    let fds_held = run["server_open_fds_held"].as_u64();
    let connect_ms = run["connect_ms"].as_u64().unwrap_or(0);
    let per_connection = match (before, after) {
        (Some(before), Some(after)) if subscribed > 0 => {
            Some(((after.saturating_sub(before)) as f64 * 1024.0 / subscribed as f64).round())
        }
        _ => None,
    };
    let setup_rate = (subscribed as f64 / (connect_ms.max(1) as f64 / 1000.0)).round();
    let status = if subscribed < args.connections as u64 {
        format!("only {subscribed} of {} connections subscribed", args.connections)
    } else if args.server_pid.is_some() && per_connection.is_none() {
        "server memory could not be read".to_owned()
    } else {
        "ok".to_owned()
    };
    Ok(json!({
        "scenario": "idle",
        "label": run["label"],
        "target": args.target.name(),
        "encoding": args.encoding.name(),
        "addr": run["addr"],
        "connections": args.connections,
        "subscribed": subscribed,
        "held_seconds": args.duration,
        "connect_ms": connect_ms,
        "connect_p50_ms": run["connect_p50_ms"],
        "connect_p99_ms": run["connect_p99_ms"],
        "connections_per_sec": setup_rate,
        "source_addrs": run["source_addrs"],
        "server_rss_kib": {"before": before, "after_connect": run["server_rss_kib"]["after_connect"], "after_hold": after},
        "server_rss_bytes_per_connection": per_connection,
        "server_open_fds": {"before": fds_before, "held": fds_held},
        "status": status,
        "subscriber_errors": run["subscriber_errors"],
    }))
}

fn print_summary(report: &Value) {
    let kib = |v: &Value| v.as_u64().map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let rss = &report["server_rss_kib"];
    println!(
        "{} ({}): {} idle connections held {} s",
        report["label"].as_str().unwrap_or_default(),
        report["addr"].as_str().unwrap_or_default(),
        report["connections"],
        report["held_seconds"]
    );
    println!(
        "  setup:       {} subscribed in {} ms = {} connections/s (per connection p50 {} ms, p99 {} ms), {} source addresses",
        report["subscribed"],
        report["connect_ms"],
        report["connections_per_sec"],
        report["connect_p50_ms"],
        report["connect_p99_ms"],
        report["source_addrs"]
    );
    println!(
        "  server RSS:  before {}, after connect {}, after hold {}",
        kib(&rss["before"]),
        kib(&rss["after_connect"]),
        kib(&rss["after_hold"])
    );
    match report["server_rss_bytes_per_connection"].as_f64() {
        Some(bytes) => println!("  per conn:    {bytes:.0} bytes ({:.2} KiB)", bytes / 1024.0),
        None => println!("  per conn:    n/a (give --server-pid)"),
    }
    println!("  status:      {}", report["status"].as_str().unwrap_or_default());
    if let Some(errors) = report["subscriber_errors"].as_array().filter(|e| !e.is_empty()) {
        for error in errors {
            println!("  error:       {}", error.as_str().unwrap_or_default());
        }
    }
}
