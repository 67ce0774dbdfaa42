//! The `slow` scenario: the fan-out run twice against the same server, first with every
//! subscriber reading (the baseline), then with a share of them that stop reading once subscribed
//! (a 4 KiB receive buffer, so they push back on the server at once). Reports the healthy
//! subscribers' p99 against the baseline's and the server's peak resident memory in both runs.

use crate::fanout::{self, Extra};
use crate::FanoutArgs;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Clone, Debug)]
pub struct SlowArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Share of the subscribers that stop reading (0.01 = 1%).
    #[arg(long, default_value_t = 0.01)]
    pub slow_share: f64,
    /// Receive buffer (SO_RCVBUF) of the subscribers that stop reading, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub slow_recv_buffer: u32,
}

pub fn run(args: SlowArgs) -> Result<bool> {
    let json = args.fanout.json;
    let report = measure(args)?;
    if json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(report["status"] == "ok")
}

pub fn measure(args: SlowArgs) -> Result<Value> {
    anyhow::ensure!((0.0..1.0).contains(&args.slow_share), "--slow-share must be in [0, 1)");
    let slow_count = (args.fanout.subscribers as f64 * args.slow_share).round() as usize;
    let baseline = fanout::measure(args.fanout.clone(), Extra::default()).context("slow: the baseline run")?;
    let extra = Extra { slow_count, slow_recv_buffer: args.slow_recv_buffer, hold: None };
    let slowed = fanout::measure(args.fanout.clone(), extra).context("slow: the run with slow subscribers")?;
    let p99 = |run: &Value| run["latency_ms"]["p99"].as_f64();
    let rise = match (p99(&baseline), p99(&slowed)) {
        (Some(base), Some(slow)) if base > 0.0 => Some(((slow / base - 1.0) * 1000.0).round() / 10.0),
        _ => None,
    };
    let status = match (baseline["status"].as_str(), slowed["status"].as_str()) {
        (Some("ok"), Some("ok")) => "ok".to_owned(),
        (Some("ok"), other) => format!("slow run: {}", other.unwrap_or("?")),
        (other, _) => format!("baseline: {}", other.unwrap_or("?")),
    };
    Ok(json!({
        "scenario": "slow",
        "label": slowed["label"],
        "target": slowed["target"],
        "addr": slowed["addr"],
        "subscribers": args.fanout.subscribers,
        "slow_subscribers": slow_count,
        "slow_recv_buffer": args.slow_recv_buffer,
        "messages": args.fanout.messages,
        "rate": args.fanout.rate,
        "payload_bytes": args.fanout.payload,
        "baseline_latency_ms": baseline["latency_ms"],
        "healthy_latency_ms": slowed["latency_ms"],
        "p99_rise_percent": rise,
        "baseline_deliveries_per_sec": baseline["deliveries_per_sec"],
        "healthy_deliveries_per_sec": slowed["deliveries_per_sec"],
        "healthy_missing": slowed["missing"],
        "slow_disconnected": slowed["slow_disconnected"],
        "slow_deliveries": slowed["slow_deliveries"],
        "baseline_server_rss_kib": baseline["server_rss_kib"],
        "server_rss_kib": slowed["server_rss_kib"],
        "status": status,
        "baseline": baseline,
        "slowed": slowed,
    }))
}

fn print_summary(report: &Value) {
    let lat = |key: &str, q: &str| report[key][q].as_f64().unwrap_or(f64::NAN);
    let peak =
        |key: &str| report[key]["peak"].as_u64().map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "{} ({}): {} subscribers, {} of them stop reading; {} messages at {}/s",
        report["label"].as_str().unwrap_or_default(),
        report["addr"].as_str().unwrap_or_default(),
        report["subscribers"],
        report["slow_subscribers"],
        report["messages"],
        report["rate"]
    );
    println!(
        "  baseline:    p50 {} ms, p99 {} ms, max {} ms; server RSS peak {}",
        lat("baseline_latency_ms", "p50"),
        lat("baseline_latency_ms", "p99"),
        lat("baseline_latency_ms", "max"),
        peak("baseline_server_rss_kib")
    );
    println!(
        "  with slow:   p50 {} ms, p99 {} ms, max {} ms (healthy subscribers); server RSS peak {}",
        lat("healthy_latency_ms", "p50"),
        lat("healthy_latency_ms", "p99"),
        lat("healthy_latency_ms", "max"),
        peak("server_rss_kib")
    );
    println!(
        "  p99 rise:    {}%; healthy missing {}; slow subscribers disconnected by the server {} of {}",
        report["p99_rise_percent"], report["healthy_missing"], report["slow_disconnected"], report["slow_subscribers"]
    );
    println!("  status:      {}", report["status"].as_str().unwrap_or_default());
}
