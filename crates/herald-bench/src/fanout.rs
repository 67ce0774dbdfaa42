//! The fan-out scenario: connect N subscribers, wait until every subscription is confirmed,
//! publish M messages, wait for the deliveries (bounded), report.

use crate::net::{self, Sources};
use crate::procfs::{self, RssSampler};
use crate::readers::Readers;
use crate::subscribe;
use crate::{publish, FanoutArgs, PublishOver, Target};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What every task of a run reads.
pub struct Shared {
    pub args: FanoutArgs,
    pub addr: String,
    pub publish_over: PublishOver,
    /// First deliveries so far, over all subscribers.
    pub progress: AtomicU64,
    pub started: Instant,
    /// Local addresses the subscribers bind to, in turn.
    pub sources: Sources,
    /// Subscribers that stop reading once subscribed (the `slow` scenario); 0 in a plain run.
    pub slow_count: usize,
    /// SO_RCVBUF of the subscribers that stop reading.
    pub slow_recv_buffer: u32,
}

impl Shared {
    /// True for the `slow_count` subscribers, spread evenly over the indexes, that stop reading.
    pub fn is_slow(&self, index: usize) -> bool {
        spread_evenly(index, self.slow_count, self.args.subscribers)
    }
}

/// True for `count` of the indexes 0..n, evenly spaced (the last of each run of n/count).
fn spread_evenly(index: usize, count: usize, n: usize) -> bool {
    let n = n.max(1);
    count > 0 && (index + 1) * count / n > index * count / n
}

/// What a scenario adds to a fan-out run besides its arguments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extra {
    pub slow_count: usize,
    pub slow_recv_buffer: u32,
    /// Keep the subscribers connected this long after they subscribed, before publishing (and
    /// measure the server's memory then): the `idle` scenario, with no publications.
    pub hold: Option<Duration>,
}

static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the clock shared by the publisher and the subscribers (one process).
pub fn now_ns() -> u64 {
    ns_since_start(Instant::now())
}

/// `at` on that clock (a subscriber reads the clock once and needs it both ways).
pub fn ns_since_start(at: Instant) -> u64 {
    at.saturating_duration_since(*CLOCK.get_or_init(Instant::now)).as_nanos() as u64
}

/// Client WebSocket settings: small buffers (thousands of connections in one process).
/// tungstenite zero-fills `read_buffer_size` bytes before every read: at 16 KiB that memset was
/// ~10% of the load generator's CPU at 100 publications/s, for deliveries of ~200 bytes.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

/// Runs the scenario and prints the report; `Ok(false)` when the run was not clean (status other
/// than "ok": subscribers that did not subscribe, publications not accepted, deliveries missing).
pub fn run(args: FanoutArgs) -> Result<bool> {
    let json = args.json;
    let report = measure(args, Extra::default())?;
    if json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(report["status"] == "ok")
}

/// Runs the scenario and returns its report (the JSON line of `--json`).
pub fn measure(args: FanoutArgs, extra: Extra) -> Result<Value> {
    net::ensure_open_files(args.subscribers + 1)?;
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(args.connect_concurrency >= 1, "--connect-concurrency must be at least 1");
    args.encoding.check(args.target)?;
    let publish_over = args.publish_over.unwrap_or(match args.target {
        Target::Herald | Target::Socketio => PublishOver::Http,
        Target::Nats => PublishOver::Tcp,
    });
    match (args.target, publish_over) {
        (Target::Herald | Target::Socketio, PublishOver::Tcp) => {
            anyhow::bail!("--publish-over tcp is for nats only")
        }
        (Target::Nats, PublishOver::Http) => anyhow::bail!("nats has no HTTP publish: use tcp or ws"),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let addr = args.addr.clone().unwrap_or_else(|| {
        match args.target {
            Target::Herald => "127.0.0.1:8000",
            Target::Socketio => "127.0.0.1:3000",
            Target::Nats => "127.0.0.1:9222",
        }
        .to_owned()
    });
    let sources = Sources::for_server(net::host_of(&addr), args.source_addrs, args.subscribers)?;
    anyhow::ensure!(extra.slow_count <= args.subscribers, "more slow subscribers than subscribers");
    anyhow::ensure!(extra.slow_count == 0 || args.filters == 0, "slow subscribers and --filters do not combine");
    now_ns();
    let shared = Arc::new(Shared {
        args,
        addr,
        publish_over,
        progress: AtomicU64::new(0),
        started: Instant::now(),
        sources,
        slow_count: extra.slow_count,
        slow_recv_buffer: extra.slow_recv_buffer,
    });
    let report = runtime.block_on(scenario(shared.clone(), extra.hold));
    // Subscriber sockets still closing must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    report
}

async fn scenario(shared: Arc<Shared>, hold: Option<Duration>) -> Result<Value> {
    let args = &shared.args;
    let deadline = shared.started + Duration::from_secs(args.timeout);

    // Connect and subscribe, at most `connect_concurrency` handshakes at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(args.subscribers.max(1));
    let connect_slots = Arc::new(Semaphore::new(args.connect_concurrency));
    let readers = Arc::new(Readers::start(args.threads, shared.clone(), deadline)?);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for index in 0..args.subscribers {
        let task = subscribe::run(
            index,
            shared.clone(),
            readers.clone(),
            connect_slots.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            deadline,
        );
        tasks.push(tokio::spawn(task));
    }
    drop(ready_tx);
    let (mut ready, mut failed) = (0usize, 0usize);
    while ready + failed < args.subscribers {
        match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
            Ok(Some(true)) => ready += 1,
            Ok(Some(false)) => failed += 1,
            _ => break,
        }
    }
    let connect_time = shared.started.elapsed();
    let rss_sampler = args.server_pid.map(RssSampler::start);
    let rss_after_connect = args.server_pid.and_then(procfs::rss_kib);
    let (mut rss_held, mut fds_held) = (None, None);
    if let Some(hold) = hold {
        tokio::time::sleep_until((Instant::now() + hold).min(deadline).into()).await;
        rss_held = args.server_pid.and_then(procfs::rss_kib);
        fds_held = args.server_pid.and_then(procfs::open_fds);
    }
    if ready < args.subscribers {
        eprintln!(
            "herald-bench: only {ready} of {} subscribers subscribed ({failed} failed); publishing anyway, \
             the others count as missing",
            args.subscribers
        );
    }

    // Publish.
    let cpu_before = args.server_pid.and_then(procfs::cpu_seconds);
    let published = publish::run(shared.clone(), deadline).await;
    let expected = expected_deliveries(args, published.accepted, shared.slow_count);

    // Wait for deliveries: until all arrived, the deadline, or no progress for `idle_timeout`.
    let idle_limit = Duration::from_secs(args.idle_timeout);
    let (mut last_count, mut last_change) = (shared.progress.load(Ordering::Relaxed), Instant::now());
    let mut drain_end = "all delivered";
    loop {
        let count = shared.progress.load(Ordering::Relaxed);
        if count >= expected {
            break;
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if Instant::now() >= deadline {
            drain_end = "timeout";
            break;
        }
        if last_change.elapsed() >= idle_limit {
            drain_end = "idle";
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = args.server_pid.and_then(procfs::cpu_seconds);
    let rss_peak = rss_sampler.as_ref().map(RssSampler::peak_kib);
    drop(rss_sampler);
    let _ = stop_tx.send(true);

    // Merge the subscribers' counts.
    let mut latency = subscribe::latency_histogram()?;
    let mut connect = subscribe::latency_histogram()?;
    let (mut unique, mut duplicates, mut out_of_order, mut unexpected, mut unjoined) = (0u64, 0u64, 0u64, 0u64, 0usize);
    let (mut slow_disconnected, mut slow_deliveries) = (0usize, 0u64);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut errors: Vec<String> = Vec::new();
    // Subscribers that never subscribed end with the stop; the others are with the readers.
    let join_deadline = Instant::now() + Duration::from_secs(5);
    let mut locals = Vec::new();
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(join_deadline.into(), task).await {
            Ok(Ok(failed)) => locals.extend(failed),
            Ok(Err(_)) => unjoined += 1,
            Err(_) => {
                abort.abort();
                unjoined += 1;
            }
        }
    }
    locals.extend(tokio::task::spawn_blocking(move || readers.finish()).await.context("reader threads")?);
    for local in locals {
        if local.slow {
            slow_disconnected += usize::from(local.slow_disconnected);
            slow_deliveries += local.unique;
            continue;
        }
        unique += local.unique;
        duplicates += local.duplicates;
        out_of_order += local.out_of_order;
        unexpected += local.unexpected;
        if let Some(local_latency) = &local.latency {
            latency.add(local_latency)?;
        }
        if let Some(after) = local.ready_after {
            connect.saturating_record((after.as_micros() as u64).max(1));
        }
        first = [first, local.first_at].into_iter().flatten().min();
        last = [last, local.last_at].into_iter().flatten().max();
        if let Some(error) = local.error {
            errors.push(error);
        }
    }
    let window = match (first, last) {
        (Some(first), Some(last)) if last > first => last - first,
        _ => published.elapsed,
    };
    let per_second = unique as f64 / window.as_secs_f64().max(1e-9);
    let server_cpu = cpu_before.zip(cpu_after).map(|(before, after)| after - before);
    let missing = expected.saturating_sub(unique);
    let status = if ready < args.subscribers {
        format!("only {ready} of {} subscribers subscribed", args.subscribers)
    } else if published.published < args.messages {
        format!("only {} of {} publications sent before the timeout", published.published, args.messages)
    } else if published.accepted < published.published {
        format!("{} publications refused", published.published - published.accepted)
    } else if missing > 0 {
        format!("{missing} deliveries missing ({drain_end})")
    } else {
        "ok".to_owned()
    };
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    errors.sort();
    errors.dedup();
    errors.truncate(5);
    Ok(json!({
        "label": args.label.clone().unwrap_or_else(|| crate::default_label(args.target, args.encoding)),
        "target": args.target.name(),
        "encoding": args.encoding.name(),
        "addr": shared.addr,
        "publish_over": format!("{:?}", shared.publish_over).to_lowercase(),
        "subscribers": args.subscribers,
        "subscribed": ready,
        "messages": args.messages,
        "rate": args.rate,
        "payload_bytes": args.payload,
        "threads": args.threads,
        "published": published.published,
        "accepted": published.accepted,
        "publish_error": published.first_error,
        "expected_deliveries": expected,
        "deliveries": unique,
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "unexpected": unexpected,
        "deliveries_per_sec": per_second.round(),
        "window_ms": window.as_millis(),
        "publishes_per_sec": (published.accepted as f64 / published.elapsed.as_secs_f64().max(1e-9)).round(),
        "connect_ms": connect_time.as_millis(),
        "connect_p50_ms": ms(connect.value_at_quantile(0.5)),
        "connect_p99_ms": ms(connect.value_at_quantile(0.99)),
        "filters": args.filters,
        "server_cpu_seconds": server_cpu.map(|cpu| (cpu * 100.0).round() / 100.0),
        "server_cpu_us_per_publication": server_cpu.map(|cpu| (cpu * 1e6 / published.accepted.max(1) as f64).round()),
        "latency_ms": {
            "p50": ms(latency.value_at_quantile(0.50)),
            "p90": ms(latency.value_at_quantile(0.90)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
        },
        "source_addrs": shared.sources.len(),
        "server_rss_kib": {
            "after_connect": rss_after_connect,
            "after_hold": rss_held,
            "peak": rss_peak,
        },
        "server_open_fds_held": fds_held,
        "slow_subscribers": shared.slow_count,
        "slow_disconnected": slow_disconnected,
        "slow_deliveries": slow_deliveries,
        "status": status,
        "subscriber_errors": errors,
        "subscribers_unjoined": unjoined,
    }))
}

/// Deliveries the accepted publications should make to the subscribers that read: every one
/// gets every publication, or with `--filters F`, publication k reaches the subscribers i with
/// i mod F == k mod F.
fn expected_deliveries(args: &FanoutArgs, accepted: u64, slow_count: usize) -> u64 {
    if args.filters == 0 {
        return accepted * (args.subscribers - slow_count) as u64;
    }
    let (f, n) = (args.filters as u64, args.subscribers as u64);
    let in_group = |g: u64| n / f + u64::from(g < n % f);
    (0..f).map(|g| count_in_class(accepted, f, g) * in_group(g)).sum()
}

/// How many k in 1..=accepted have k mod f == g.
fn count_in_class(accepted: u64, f: u64, g: u64) -> u64 {
    let first = if g == 0 { f } else { g };
    if first > accepted {
        0
    } else {
        (accepted - first) / f + 1
    }
}

fn print_summary(report: &Value) {
    let num = |v: &Value| v.as_f64().unwrap_or_default();
    let lat = &report["latency_ms"];
    println!(
        "{} ({}, publish over {}): {} subscribers{} x {} messages at {}",
        report["label"].as_str().unwrap_or_default(),
        report["addr"].as_str().unwrap_or_default(),
        report["publish_over"].as_str().unwrap_or_default(),
        report["subscribers"],
        match report["encoding"].as_str() {
            Some("protobuf") => " (protobuf)",
            _ => "",
        },
        report["messages"],
        match report["rate"].as_u64() {
            Some(0) => "the acknowledged rate".to_owned(),
            rate => format!("{}/s", rate.unwrap_or_default()),
        },
    );
    println!(
        "  connect:     {} of {} subscribed in {} ms (per subscriber p50 {} ms, p99 {} ms)",
        report["subscribed"],
        report["subscribers"],
        report["connect_ms"],
        num(&report["connect_p50_ms"]),
        num(&report["connect_p99_ms"]),
    );
    println!(
        "  publish:     {} sent, {} accepted, {:.0}/s",
        report["published"],
        report["accepted"],
        num(&report["publishes_per_sec"])
    );
    println!(
        "  deliveries:  {} of {} expected, {} missing, {} duplicates, {} out of order",
        report["deliveries"],
        report["expected_deliveries"],
        report["missing"],
        report["duplicates"],
        report["out_of_order"]
    );
    if report["publish_over"] == "http" && report["rate"] != 0 && report["out_of_order"] != 0 {
        println!("               (out of order by sequence number: concurrent HTTP publishes may reach the server in another order)");
    }
    println!("  throughput:  {:.0} deliveries/s over {} ms", num(&report["deliveries_per_sec"]), report["window_ms"]);
    println!(
        "  latency:     p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        num(&lat["p50"]),
        num(&lat["p90"]),
        num(&lat["p99"]),
        num(&lat["p999"]),
        num(&lat["max"])
    );
    if let Some(peak) = report["server_rss_kib"]["peak"].as_u64() {
        println!("  server RSS:  peak {:.1} MiB", peak as f64 / 1024.0);
    }
    if let Some(cpu) = report["server_cpu_us_per_publication"].as_f64() {
        println!("  server CPU:  {cpu:.0} us per publication");
    }
    if let Some(error) = report["publish_error"].as_str() {
        println!("  publisher:   {error}");
    }
    println!("  status:      {}", report["status"].as_str().unwrap_or_default());
    if let Some(errors) = report["subscriber_errors"].as_array().filter(|e| !e.is_empty()) {
        for error in errors {
            println!("  error:       {}", error.as_str().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{count_in_class, spread_evenly};

    #[test]
    fn slow_subscribers_are_spread_evenly() {
        let slow: Vec<usize> = (0..1000).filter(|&i| spread_evenly(i, 10, 1000)).collect();
        assert_eq!(slow, [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]);
        assert_eq!((0..7).filter(|&i| spread_evenly(i, 3, 7)).count(), 3);
        assert!((0..10).all(|i| !spread_evenly(i, 0, 10)));
        assert!((0..10).all(|i| spread_evenly(i, 10, 10)));
    }

    #[test]
    fn counts_publications_per_filter_group() {
        // 1..=10 mod 4: g0 {4,8}, g1 {1,5,9}, g2 {2,6,10}, g3 {3,7}
        assert_eq!([0, 1, 2, 3].map(|g| count_in_class(10, 4, g)), [2, 3, 3, 2]);
        assert_eq!(count_in_class(0, 4, 1), 0);
        assert_eq!(count_in_class(3, 4, 0), 0);
    }
}
