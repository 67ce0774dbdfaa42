//! The `slow` scenario: the fan-out run twice against the same server, first with every
//! subscriber reading (the baseline), then with a share of them that stop reading once subscribed
//! (a 4 KiB receive buffer, so they push back on the server at once). Reports the healthy
//! subscribers' p99 against the baseline's and the server's peak resident memory in both runs.
//! With `--rounds K` the two runs alternate K times and the medians are compared: on a noisy
//! machine one pair of runs minutes apart measures the machine more than the server.

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
    /// Baseline and slowed runs alternate this many times; the report compares the median p99s
    /// (each side's figures are those of its median run).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
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
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let mut baselines = Vec::with_capacity(args.rounds);
    let mut slowed_runs = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let baseline = fanout::measure(args.fanout.clone(), Extra::default())
            .with_context(|| format!("slow: baseline run {round}"))?;
        baselines.push(baseline);
        let extra = Extra { slow_count, slow_recv_buffer: args.slow_recv_buffer, hold: None };
        let slowed = fanout::measure(args.fanout.clone(), extra)
            .with_context(|| format!("slow: run {round} with slow subscribers"))?;
        slowed_runs.push(slowed);
    }
    let p99 = |run: &Value| run["latency_ms"]["p99"].as_f64();
    let baseline_p99s: Vec<Option<f64>> = baselines.iter().map(p99).collect();
    let healthy_p99s: Vec<Option<f64>> = slowed_runs.iter().map(p99).collect();
    let baseline = median_run(&baselines);
    let slowed = median_run(&slowed_runs);
    let rise = match (p99(baseline), p99(slowed)) {
        (Some(base), Some(slow)) if base > 0.0 => Some(((slow / base - 1.0) * 1000.0).round() / 10.0),
        _ => None,
    };
    let first_failure = |runs: &[Value]| runs.iter().find(|run| run["status"] != "ok").cloned();
    let status = match (first_failure(&baselines), first_failure(&slowed_runs)) {
        (None, None) => "ok".to_owned(),
        (None, Some(run)) => format!("slow run: {}", run["status"].as_str().unwrap_or("?")),
        (Some(run), _) => format!("baseline: {}", run["status"].as_str().unwrap_or("?")),
    };
    let sum = |runs: &[Value], key: &str| runs.iter().filter_map(|run| run[key].as_u64()).sum::<u64>();
    let peak = |runs: &[Value]| runs.iter().filter_map(|run| run["server_rss_kib"]["peak"].as_u64()).max();
    let rss = |runs: &[Value], run: &Value| {
        let mut rss = run["server_rss_kib"].clone();
        if let (Some(object), Some(peak)) = (rss.as_object_mut(), peak(runs)) {
            object.insert("peak".to_owned(), json!(peak));
        }
        rss
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
        "rounds": args.rounds,
        "baseline_p99s_ms": baseline_p99s,
        "healthy_p99s_ms": healthy_p99s,
        "baseline_latency_ms": baseline["latency_ms"],
        "healthy_latency_ms": slowed["latency_ms"],
        "p99_rise_percent": rise,
        "baseline_deliveries_per_sec": baseline["deliveries_per_sec"],
        "healthy_deliveries_per_sec": slowed["deliveries_per_sec"],
        "healthy_missing": sum(&slowed_runs, "missing"),
        "slow_disconnected": sum(&slowed_runs, "slow_disconnected"),
        "slow_deliveries": sum(&slowed_runs, "slow_deliveries"),
        "baseline_server_rss_kib": rss(&baselines, baseline),
        "server_rss_kib": rss(&slowed_runs, slowed),
        "status": status,
        "baseline": baseline,
        "slowed": slowed,
    }))
}

/// The run with the median p99 (the lower middle one for an even count), so that the figures
/// reported for a side all come from one run.
fn median_run(runs: &[Value]) -> &Value {
    let mut ordered: Vec<&Value> = runs.iter().collect();
    ordered.sort_by(|a, b| {
        let p99 = |run: &Value| run["latency_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY);
        p99(a).total_cmp(&p99(b))
    });
    ordered[(ordered.len() - 1) / 2]
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
        "  p99 rise:    {}%; healthy missing {}; slow subscribers disconnected by the server {} of {} (all rounds)",
        report["p99_rise_percent"],
        report["healthy_missing"],
        report["slow_disconnected"],
        report["slow_subscribers"].as_u64().unwrap_or(0) * report["rounds"].as_u64().unwrap_or(1)
    );
    if report["rounds"].as_u64().unwrap_or(1) > 1 {
        println!(
            "  rounds:      {} (medians above); baseline p99s {} ms, healthy p99s {} ms",
            report["rounds"], report["baseline_p99s_ms"], report["healthy_p99s_ms"]
        );
    }
    println!("  status:      {}", report["status"].as_str().unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::median_run;
    use serde_json::json;

    #[test]
    fn the_median_run_is_picked_by_p99() {
        let runs: Vec<_> = [30.0, 10.0, 20.0, 50.0].iter().map(|p99| json!({"latency_ms": {"p99": p99}})).collect();
        assert_eq!(median_run(&runs)["latency_ms"]["p99"], 20.0);
        assert_eq!(median_run(&runs[..3])["latency_ms"]["p99"], 20.0);
        // A run without a p99 (nothing arrived) sorts last.
        let with_failed = vec![json!({"latency_ms": {}}), json!({"latency_ms": {"p99": 5.0}})];
        assert_eq!(median_run(&with_failed)["latency_ms"]["p99"], 5.0);
    }
}
