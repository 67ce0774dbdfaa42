//! `herald-bench compare SCENARIO`: runs one scenario against Herald and each peer in turn, in
//! one run on this machine (each server started here on free ports and stopped by its PID, or
//! given by address), and prints the figures side by side with Herald-versus-peer ratios.
//!
//! Herald targets: `herald` (durable engine), `herald-memory` (in-memory engine) and
//! `herald-protobuf` (the durable engine, subscribers speaking the Protobuf client protocol; the
//! publisher stays on JSON). The first Herald row that ran cleanly is the baseline of the ratios;
//! every further clean Herald row gets its own table of ratios against the same peers.

use crate::churn::{self, ChurnArgs};
use crate::idle::{self, IdleArgs};
use crate::servers::{self, Install, Server};
use crate::slow::{self, SlowArgs};
use crate::{fanout, Encoding, FanoutArgs, Target};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Targets in order, among herald (durable engine), herald-memory (in-memory engine),
    /// herald-protobuf (durable engine, subscribers over Protobuf), socketio and nats. The first
    /// whose name starts with "herald" is the baseline of the ratios; each further herald target
    /// gets its own ratios against the peers.
    #[arg(long, value_delimiter = ',', default_value = "herald,herald-memory,socketio,nats")]
    pub targets: Vec<String>,
    /// Herald binary to start.
    #[arg(long, default_value = "target/release/herald")]
    pub herald_bin: PathBuf,
    /// Use a Herald running at this address (host:port) instead of starting one (for every
    /// herald target).
    #[arg(long)]
    pub herald_addr: Option<String>,
    /// PID of the Herald at --herald-addr (for CPU and memory figures).
    #[arg(long)]
    pub herald_pid: Option<u32>,
    /// Use a Socket.IO server running at this address instead of starting one.
    #[arg(long)]
    pub socketio_addr: Option<String>,
    #[arg(long)]
    pub socketio_pid: Option<u32>,
    /// Use a NATS WebSocket listener at this address instead of starting nats-server.
    #[arg(long)]
    pub nats_addr: Option<String>,
    /// Plain TCP address of the NATS at --nats-addr.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats_tcp: String,
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// Directory with socketio-server.js and nats-ws.conf (default: shared/peers found upwards).
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// node_modules with socket.io installed.
    #[arg(long, default_value = "/tmp/peers/node/node_modules")]
    pub node_modules: PathBuf,
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// Logs, configs and Herald's data directory of the servers started here.
    #[arg(long, default_value = "/tmp/herald-bench-compare")]
    pub work_dir: PathBuf,
    /// Print one JSON document instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON document to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Fan-out throughput (see `herald-bench fanout`).
    Fanout(FanoutArgs),
    /// Publish-to-receive latency (see `herald-bench latency`).
    #[command(mut_arg("rate", |a| a.default_value("100")), mut_arg("messages", |a| a.default_value("1000")))]
    Latency(FanoutArgs),
    /// Idle connections: server memory per connection, setup rate.
    Idle(IdleArgs),
    /// Connects and disconnects per second.
    Churn(ChurnArgs),
    /// Subscribers that stop reading: the others' p99 and server memory.
    Slow(SlowArgs),
}

/// A figure compared between targets.
struct Metric {
    title: &'static str,
    /// JSON pointer into the scenario's report.
    pointer: &'static str,
    higher_is_better: bool,
    /// False for a figure shown without a ratio (a count, a percentage).
    ratio: bool,
}

const fn metric(title: &'static str, pointer: &'static str, higher_is_better: bool) -> Metric {
    Metric { title, pointer, higher_is_better, ratio: true }
}

const fn shown(title: &'static str, pointer: &'static str) -> Metric {
    Metric { title, pointer, higher_is_better: false, ratio: false }
}

fn metrics(scenario: &Scenario) -> (&'static str, Vec<Metric>) {
    match scenario {
        Scenario::Fanout(_) => (
            "fanout",
            vec![
                metric("deliveries/s", "/deliveries_per_sec", true),
                metric("p50 ms", "/latency_ms/p50", false),
                metric("p99 ms", "/latency_ms/p99", false),
                metric("server CPU µs/pub", "/server_cpu_us_per_publication", false),
                shown("missing", "/missing"),
            ],
        ),
        Scenario::Latency(_) => (
            "latency",
            vec![
                metric("p50 ms", "/latency_ms/p50", false),
                metric("p90 ms", "/latency_ms/p90", false),
                metric("p99 ms", "/latency_ms/p99", false),
                metric("p99.9 ms", "/latency_ms/p999", false),
                metric("max ms", "/latency_ms/max", false),
            ],
        ),
        Scenario::Idle(_) => (
            "idle",
            vec![
                shown("connections", "/subscribed"),
                metric("RSS bytes/conn", "/server_rss_bytes_per_connection", false),
                metric("connections/s", "/connections_per_sec", true),
            ],
        ),
        Scenario::Churn(_) => (
            "churn",
            vec![
                metric("connects/s", "/connects_per_sec", true),
                metric("handshake p50 ms", "/handshake_ms/p50", false),
                metric("handshake p99 ms", "/handshake_ms/p99", false),
                shown("failures", "/failures"),
            ],
        ),
        Scenario::Slow(_) => (
            "slow",
            vec![
                metric("baseline p99 ms", "/baseline_latency_ms/p99", false),
                metric("healthy p99 ms", "/healthy_latency_ms/p99", false),
                shown("p99 rise %", "/p99_rise_percent"),
                metric("baseline RSS peak KiB", "/baseline_server_rss_kib/peak", false),
                metric("server RSS peak KiB", "/server_rss_kib/peak", false),
                shown("slow disconnected", "/slow_disconnected"),
            ],
        ),
    }
}

pub fn run(args: CompareArgs) -> Result<bool> {
    crate::net::raise_open_file_limit()?;
    let install = Install {
        herald_bin: args.herald_bin.clone(),
        peers_dir: args.peers_dir.clone().unwrap_or_else(servers::default_peers_dir),
        node_modules: args.node_modules.clone(),
        nats_server: args.nats_server.clone(),
        work_dir: args.work_dir.clone(),
    };
    let started_at = utc_now();
    let mut rows = Vec::new();
    for label in &args.targets {
        eprintln!("herald-bench compare: {label}");
        let row = match server_for(label, &args, &install) {
            Ok(server) => match measure(&args.scenario, &server) {
                Ok(report) => report,
                Err(error) => json!({"label": label, "status": format!("error: {error:#}")}),
            },
            Err(error) => json!({"label": label, "status": format!("not started: {error:#}")}),
        };
        if row["status"] != "ok" {
            eprintln!("herald-bench compare: {label}: {}", row["status"].as_str().unwrap_or("?"));
        }
        rows.push(row);
    }
    let (name, metrics) = metrics(&args.scenario);
    let ratios = advantages(&rows, &metrics);
    let all_ok = rows.iter().all(|row| row["status"] == "ok");
    let document = json!({
        "scenario": name,
        "started": started_at,
        "rows": rows,
        // The first Herald row against the peers, then each further Herald row against them.
        "herald_advantage": ratios.first().cloned().unwrap_or_else(|| json!({})),
        "other_herald_advantages": ratios.get(1..).unwrap_or_default(),
    });
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{document}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{document}");
    } else {
        println!("{}", render(name, &started_at, &rows, &metrics, &ratios));
    }
    Ok(all_ok)
}

fn server_for(label: &str, args: &CompareArgs, install: &Install) -> Result<Server> {
    let external = match label {
        "herald" | "herald-memory" | "herald-protobuf" => {
            args.herald_addr.clone().map(|addr| (Target::Herald, addr, None, args.herald_pid))
        }
        "socketio" => args.socketio_addr.clone().map(|addr| (Target::Socketio, addr, None, args.socketio_pid)),
        "nats" => args.nats_addr.clone().map(|addr| (Target::Nats, addr, Some(args.nats_tcp.clone()), args.nats_pid)),
        _ => None,
    };
    match external {
        Some((target, addr, nats_tcp, pid)) => Ok(Server::external(label, target, addr, nats_tcp, pid)),
        None => Server::start(label, install),
    }
}

/// The encoding of a target's subscribers: Protobuf for `herald-protobuf`, the scenario's
/// `--encoding` for the other Herald targets, the peer's own protocol (JSON here) for the peers.
fn encoding_for(server: &Server, requested: Encoding) -> Encoding {
    match server.target {
        Target::Herald if server.label == "herald-protobuf" => Encoding::Protobuf,
        Target::Herald => requested,
        Target::Socketio | Target::Nats => Encoding::Json,
    }
}

fn for_server(mut args: FanoutArgs, server: &Server) -> FanoutArgs {
    args.encoding = encoding_for(server, args.encoding);
    args.target = server.target;
    args.addr = Some(server.addr.clone());
    if let Some(tcp) = &server.nats_tcp {
        args.nats_tcp = tcp.clone();
    }
    args.server_pid = server.pid;
    args.label = Some(server.label.clone());
    args.json = true;
    args
}

fn measure(scenario: &Scenario, server: &Server) -> Result<Value> {
    match scenario {
        Scenario::Fanout(args) | Scenario::Latency(args) => {
            fanout::measure(for_server(args.clone(), server), fanout::Extra::default())
        }
        Scenario::Idle(args) => {
            let mut args = args.clone();
            args.encoding = encoding_for(server, args.encoding);
            args.target = server.target;
            args.addr = Some(server.addr.clone());
            args.server_pid = server.pid;
            args.label = Some(server.label.clone());
            idle::measure(args)
        }
        Scenario::Churn(args) => {
            let mut args = args.clone();
            args.encoding = encoding_for(server, args.encoding);
            args.target = server.target;
            args.addr = Some(server.addr.clone());
            args.server_pid = server.pid;
            args.label = Some(server.label.clone());
            churn::measure(args)
        }
        Scenario::Slow(args) => {
            let mut args = args.clone();
            args.fanout = for_server(args.fanout, server);
            slow::measure(args)
        }
    }
}

fn label(row: &Value) -> &str {
    row["label"].as_str().unwrap_or("?")
}

fn is_herald(row: &Value) -> bool {
    label(row).starts_with("herald")
}

/// The ratio tables: one per Herald row that ran cleanly, in order (the first is the baseline,
/// `herald_advantage`), each against every peer (the rows that are not Herald).
fn advantages(rows: &[Value], metrics: &[Metric]) -> Vec<Value> {
    rows.iter()
        .filter(|row| is_herald(row) && row["status"] == "ok")
        .map(|base| advantage_of(base, rows, metrics))
        .collect()
}

/// For every peer and figure, how many times better the Herald row `base` is (> 1: Herald
/// better): the peer's value over Herald's where lower is better, Herald's over the peer's where
/// higher is better.
fn advantage_of(base: &Value, rows: &[Value], metrics: &[Metric]) -> Value {
    let mut out = serde_json::Map::new();
    for row in rows.iter().filter(|row| !is_herald(row)) {
        let mut per_metric = serde_json::Map::new();
        for metric in metrics.iter().filter(|m| m.ratio) {
            let ratio = advantage(base.pointer(metric.pointer), row.pointer(metric.pointer), metric.higher_is_better);
            per_metric
                .insert(metric.title.to_owned(), ratio.map_or(Value::Null, |r| json!((r * 100.0).round() / 100.0)));
        }
        out.insert(label(row).to_owned(), Value::Object(per_metric));
    }
    json!({"baseline": label(base), "peers": out})
}

fn advantage(herald: Option<&Value>, peer: Option<&Value>, higher_is_better: bool) -> Option<f64> {
    let (herald, peer) = (herald?.as_f64()?, peer?.as_f64()?);
    let (numerator, denominator) = if higher_is_better { (herald, peer) } else { (peer, herald) };
    (denominator > 0.0 && numerator.is_finite()).then(|| numerator / denominator)
}

fn render(name: &str, started: &str, rows: &[Value], metrics: &[Metric], ratios: &[Value]) -> String {
    let mut out = format!("{name}, started {started}\n\n| target | status |");
    for metric in metrics {
        out.push_str(&format!(" {} |", metric.title));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---:|".repeat(metrics.len()));
    out.push('\n');
    for row in rows {
        out.push_str(&format!("| {} | {} |", label(row), row["status"].as_str().unwrap_or("?")));
        for metric in metrics {
            out.push_str(&format!(" {} |", figure(row.pointer(metric.pointer))));
        }
        out.push('\n');
    }
    for table in ratios {
        let base = table["baseline"].as_str().unwrap_or("herald");
        let Some(peers) = table["peers"].as_object().filter(|p| !p.is_empty()) else { continue };
        let rated: Vec<&Metric> = metrics.iter().filter(|m| m.ratio).collect();
        out.push_str(&format!("\nHerald advantage ({base} versus each peer; > 1 means {base} is better):\n\n| peer |"));
        for metric in &rated {
            out.push_str(&format!(" {} |", metric.title));
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(rated.len()));
        out.push('\n');
        for (peer, values) in peers {
            out.push_str(&format!("| {peer} |"));
            for metric in &rated {
                let value = values[metric.title].as_f64().map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
                out.push_str(&format!(" {value} |"));
            }
            out.push('\n');
        }
    }
    out
}

fn figure(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(v) if v.fract() == 0.0 && v.abs() >= 1000.0 => crate::table::thousands(v),
        Some(v) => format!("{v}"),
        None => "n/a".to_owned(),
    }
}

/// The current time in UTC, `YYYY-MM-DD HH:MM:SS UTC`, from the system clock.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::{advantage, advantages, encoding_for, metric, render, utc_now};
    use crate::servers::Server;
    use crate::{Encoding, Target};
    use serde_json::json;

    #[test]
    fn herald_advantage_is_above_one_when_herald_is_better() {
        assert_eq!(advantage(Some(&json!(500.0)), Some(&json!(100.0)), true), Some(5.0));
        assert_eq!(advantage(Some(&json!(10.0)), Some(&json!(20.0)), false), Some(2.0));
        assert_eq!(advantage(Some(&json!(0.0)), Some(&json!(20.0)), false), None);
        assert_eq!(advantage(None, Some(&json!(20.0)), false), None);
        let rows = [
            json!({"label": "herald", "status": "ok", "deliveries_per_sec": 300.0}),
            json!({"label": "nats", "status": "ok", "deliveries_per_sec": 100.0}),
        ];
        let ratios = advantages(&rows, &[metric("deliveries/s", "/deliveries_per_sec", true)]);
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0]["baseline"], "herald");
        assert_eq!(ratios[0]["peers"]["nats"]["deliveries/s"], 3.0);
    }

    #[test]
    fn each_further_herald_row_gets_its_own_ratios() {
        let metrics = [metric("deliveries/s", "/deliveries_per_sec", true), metric("p99 ms", "/latency_ms/p99", false)];
        let row = |label: &str, status: &str, rate: f64, p99: f64| json!({"label": label, "status": status, "deliveries_per_sec": rate, "latency_ms": {"p99": p99}});
        let rows = [
            row("herald", "ok", 300.0, 2.0),
            row("herald-protobuf", "ok", 400.0, 1.0),
            row("nats", "ok", 100.0, 4.0),
            row("socketio", "error: not started", 0.0, 0.0),
        ];
        let ratios = advantages(&rows, &metrics);
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios[0]["baseline"], "herald");
        assert_eq!(ratios[0]["peers"]["nats"]["deliveries/s"], 3.0);
        assert_eq!(ratios[0]["peers"]["nats"]["p99 ms"], 2.0);
        assert!(ratios[0]["peers"].get("herald-protobuf").is_none(), "Herald rows are not peers");
        assert_eq!(ratios[1]["baseline"], "herald-protobuf");
        assert_eq!(ratios[1]["peers"]["nats"]["deliveries/s"], 4.0);
        assert_eq!(ratios[1]["peers"]["nats"]["p99 ms"], 4.0);
        let table = render("fanout", "now", &rows, &metrics, &ratios);
        assert!(table.contains("Herald advantage (herald versus each peer"), "{table}");
        assert!(table.contains("Herald advantage (herald-protobuf versus each peer"), "{table}");
        assert!(table.contains("| nats | 4.00x | 4.00x |"), "{table}");

        // A failed first Herald row leaves the baseline to the next one.
        let rows =
            [row("herald", "error", 0.0, 0.0), row("herald-protobuf", "ok", 400.0, 1.0), row("nats", "ok", 100.0, 4.0)];
        let ratios = advantages(&rows, &metrics);
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0]["baseline"], "herald-protobuf");
        // Only Herald rows: nothing to compare with, no ratio table.
        let rows = [row("herald", "ok", 300.0, 2.0), row("herald-protobuf", "ok", 400.0, 1.0)];
        let table = render("fanout", "now", &rows, &metrics, &advantages(&rows, &metrics));
        assert!(!table.contains("advantage"), "{table}");
    }

    #[test]
    fn herald_protobuf_runs_its_subscribers_over_protobuf() {
        let server = |label: &str, target| Server::external(label, target, "127.0.0.1:1".into(), None, None);
        let herald_protobuf = server("herald-protobuf", Target::Herald);
        assert_eq!(encoding_for(&herald_protobuf, Encoding::Json), Encoding::Protobuf);
        assert_eq!(encoding_for(&server("herald", Target::Herald), Encoding::Json), Encoding::Json);
        assert_eq!(encoding_for(&server("herald-memory", Target::Herald), Encoding::Protobuf), Encoding::Protobuf);
        assert_eq!(encoding_for(&server("nats", Target::Nats), Encoding::Protobuf), Encoding::Json);
    }

    #[test]
    fn formats_utc_dates() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-12-01 19:00:00 UTC".len(), "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}
