//! The `sdk` scenario: subscribers built on the `herald-client` crate, so the figures are what an
//! application using Herald's Rust client sees (its reconnect, recovery and duplicate dropping
//! included), not what a bare protocol reader sees. One publisher over the HTTP API at a fixed
//! rate; every subscriber measures publish-to-receive latency from a timestamp in the payload
//! and counts missing and duplicate publications by sequence number.

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use herald_client::{Client, SubscribeOptions, SubscriptionEvent};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct SdkArgs {
    /// Herald's address (host:port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: String,
    /// Subscribers, each its own herald-client connection.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub subscribers: usize,
    /// Publications.
    #[arg(short = 'm', long, default_value_t = 500)]
    pub messages: u64,
    /// Publications per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Server API key (empty for `herald serve --dev`).
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Connection token (empty for `--dev`).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Bound of the whole run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
}

/// What one subscriber saw.
struct Seen {
    latency: Histogram<u64>,
    received: Vec<bool>,
    duplicates: u64,
}

pub fn run(args: SdkArgs) -> Result<bool> {
    if args.rate == 0 {
        bail!("--rate must be greater than zero");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let report = runtime.block_on(measure(&args))?;
    if args.json {
        println!("{report}");
    } else {
        println!(
            "herald-client ({}): {} subscribers x {} messages at {}/s",
            args.addr, args.subscribers, args.messages, args.rate
        );
        println!(
            "  deliveries:  {} of {} expected, {} missing, {} duplicates",
            report["delivered"], report["expected"], report["missing"], report["duplicates"]
        );
        println!(
            "  latency:     p50 {} ms, p99 {} ms, max {} ms",
            report["latency_ms"]["p50"], report["latency_ms"]["p99"], report["latency_ms"]["max"]
        );
        println!("  status:      {}", report["status"].as_str().unwrap_or("?"));
    }
    Ok(report["status"] == "ok")
}

async fn measure(args: &SdkArgs) -> Result<Value> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + Duration::from_secs(args.timeout));
    let url = format!("ws://{}/connection/websocket", args.addr);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for index in 0..args.subscribers {
        let mut builder = Client::builder(url.clone()).name("herald-bench");
        if !args.token.is_empty() {
            builder = builder.token(args.token.clone());
        }
        let client = builder.build();
        client.connect();
        let subscription =
            tokio::time::timeout_at(deadline, client.subscribe(args.channel.as_str(), SubscribeOptions::new()))
                .await
                .with_context(|| format!("subscriber {index}: timed out subscribing"))?
                .with_context(|| format!("subscriber {index}: subscribe"))?;
        let messages = args.messages;
        subscribers.push(tokio::spawn(async move {
            let mut seen = Seen {
                latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
                received: vec![false; messages as usize],
                duplicates: 0,
            };
            let mut subscription = subscription;
            let mut left = messages;
            while left > 0 {
                let event = match tokio::time::timeout_at(deadline, subscription.next()).await {
                    Ok(Some(event)) => event,
                    Ok(None) | Err(_) => break,
                };
                let SubscriptionEvent::Publication(publication) = event else { continue };
                let Ok(payload) = serde_json::from_str::<Value>(publication.data.get()) else { continue };
                let (Some(seq), Some(sent_us)) = (payload["seq"].as_u64(), payload["sent_us"].as_u64()) else {
                    continue;
                };
                let now_us = started.elapsed().as_micros() as u64;
                let _ = seen.latency.record(now_us.saturating_sub(sent_us).max(1));
                match seen.received.get_mut(seq as usize) {
                    Some(slot) if *slot => seen.duplicates += 1,
                    Some(slot) => {
                        *slot = true;
                        left -= 1;
                    }
                    None => {}
                }
            }
            drop(client);
            seen
        }));
    }

    let http = reqwest::Client::new();
    let publish_url = format!("http://{}/api/publish", args.addr);
    let publish_start = tokio::time::Instant::now();
    let mut refused = 0u64;
    for seq in 0..args.messages {
        let due = publish_start + Duration::from_secs_f64(seq as f64 / args.rate as f64);
        if due > deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        let body = json!({
            "channel": args.channel,
            "data": {"seq": seq, "sent_us": started.elapsed().as_micros() as u64, "pad": "x".repeat(100)},
        });
        let mut request = http.post(&publish_url).json(&body);
        if !args.api_key.is_empty() {
            request = request.header("X-API-Key", &args.api_key);
        }
        let answered = request.send().await.ok().map(|r| r.status().is_success());
        if answered != Some(true) {
            refused += 1;
        }
    }

    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let (mut delivered, mut duplicates) = (0u64, 0u64);
    for subscriber in subscribers {
        let seen = subscriber.await.context("subscriber task")?;
        latency.add(&seen.latency).context("merging latencies")?;
        delivered += seen.received.iter().filter(|r| **r).count() as u64;
        duplicates += seen.duplicates;
    }
    let expected = args.messages * args.subscribers as u64;
    let missing = expected - delivered;
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    let status = if refused > 0 {
        format!("{refused} publications refused")
    } else if missing > 0 || duplicates > 0 {
        "missing or duplicate deliveries".to_owned()
    } else {
        "ok".to_owned()
    };
    Ok(json!({
        "scenario": "sdk",
        "subscribers": args.subscribers,
        "messages": args.messages,
        "rate": args.rate,
        "expected": expected,
        "delivered": delivered,
        "missing": missing,
        "duplicates": duplicates,
        "latency_ms": {
            "p50": ms(latency.value_at_quantile(0.5)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "max": ms(latency.max()),
        },
        "status": status,
    }))
}
