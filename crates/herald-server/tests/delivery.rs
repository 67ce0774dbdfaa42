//! Delivery under load with real sockets: priority shedding and the gap signal, critical
//! publications that are never shed, batching windows, conflation, and a stalled client that
//! does not hold up a healthy one. Every check is on what the clients receive, in order; none on
//! wall-clock time.

mod common;

use common::*;
use herald_config::{Config, Namespace, NamespaceOptions};
use herald_core::protocol::Priority;
use herald_server::Publish;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Payload size of the flood and of the publications whose fate the tests follow.
const PAD: usize = 8000;
/// Seven frames of about 8,080 bytes fit, eight do not.
const QUEUE: usize = 60_000;
/// Far more than loopback socket buffers hold, so a client that stops reading backs up into the
/// server's queue.
const FLOOD: u32 = 2000;

fn delivery_config() -> Config {
    let mut config = config();
    config.client.queue_max_size = QUEUE;
    config.client.recovery_max_publication_limit = 5000;
    // A stalled reader must stay connected while the test publishes.
    config.websocket.write_timeout = Duration::from_secs(30);
    let deep = NamespaceOptions { history_size: 5000, ..open_namespace() };
    config.channel.namespaces.push(Namespace { name: "deep".into(), options: deep });
    config.channel.namespaces.push(Namespace {
        name: "batched".into(),
        options: NamespaceOptions {
            batch_max_size: 10,
            batch_max_delay: Duration::from_secs(3600),
            ..open_namespace()
        },
    });
    config.channel.namespaces.push(Namespace {
        name: "windowed".into(),
        options: NamespaceOptions {
            batch_max_size: 100,
            batch_max_delay: Duration::from_millis(50),
            ..open_namespace()
        },
    });
    config.channel.namespaces.push(Namespace {
        name: "positions".into(),
        options: NamespaceOptions {
            conflate_key: "task".into(),
            conflate_window: Duration::from_secs(2),
            ..open_namespace()
        },
    });
    config
}

async fn publish(server: &TestServer, channel: &str, n: u64, priority: Priority) -> u64 {
    let mut publish = Publish::json(channel, &json!({"n": n, "pad": "x".repeat(PAD)})).expect("json");
    publish.priority = Some(priority);
    server.node.publish(publish).await.expect("publish").offset
}

/// A subscribed client that will stop reading after this.
async fn stalled_subscriber(server: &TestServer, channel: &str) -> Client {
    let mut client = Client::open_with_small_receive_buffer(&server.ws_url()).await;
    let reply = client.call(json!({"connect": {"token": token("stalled", None, &[])}})).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let reply = client.call(json!({"subscribe": {"channel": channel}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    client
}

/// What a client got of a channel once it reads again: publication offsets in arrival order,
/// offsets named by gap signals, and whether it was closed (and how).
#[derive(Debug, Default)]
struct Received {
    offsets: Vec<u64>,
    gaps: BTreeSet<u64>,
    closed: Option<u16>,
}

/// Reads until every offset up to `last` is accounted for (received or signalled as a gap), or
/// the connection closes.
async fn drain(client: &mut Client, channel: &str, last: u64) -> Received {
    let mut received = Received::default();
    loop {
        let accounted = received.offsets.len() + received.gaps.len();
        if accounted as u64 >= last {
            return received;
        }
        if client.pending().is_empty() && !client.read_frame().await {
            received.closed = client.closed.as_ref().map(|c| c.code);
            return received;
        }
        while let Some(message) = client.next_pending() {
            if message["push"]["channel"] == json!(channel) {
                if let Some(offset) = message["push"]["pub"]["offset"].as_u64() {
                    received.offsets.push(offset);
                }
            }
            let gap = &message["push"]["message"]["data"]["herald"]["gap"];
            if gap["channel"] == json!(channel) {
                for offset in gap["offsets"].as_array().into_iter().flatten() {
                    assert!(received.gaps.insert(offset.as_u64().expect("offset")), "gap listed twice: {offset}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_stalled_client_sheds_low_then_normal_with_a_gap_signal_and_keeps_every_high() {
    let server = TestServer::start(delivery_config()).await;
    let mut stalled = stalled_subscriber(&server, "firehose").await;
    // Fill the sockets and then the queue with low-priority publications.
    for n in 1..=FLOOD as u64 {
        publish(&server, "firehose", n, Priority::Low).await;
    }
    // Each of these sheds the oldest queued low: the queue now holds one low and these six.
    let mut normals = Vec::new();
    for n in 0..4 {
        normals.push(publish(&server, "firehose", 10_000 + n, Priority::Normal).await);
    }
    let highs = [
        publish(&server, "firehose", 20_000, Priority::High).await,
        publish(&server, "firehose", 20_001, Priority::Critical).await,
    ];
    // No low is left to shed: the first sheds the last low, the second the oldest normal.
    normals.push(publish(&server, "firehose", 10_004, Priority::Normal).await);
    normals.push(publish(&server, "firehose", 10_005, Priority::Normal).await);
    // A low cannot shed normals or highs: it is shed itself.
    let last_low = publish(&server, "firehose", 30_000, Priority::Low).await;

    let got = drain(&mut stalled, "firehose", last_low).await;
    assert_eq!(got.closed, None, "shedding keeps the client connected");
    assert!(got.offsets.windows(2).all(|w| w[0] < w[1]), "in order, without duplicates");
    let received: BTreeSet<u64> = got.offsets.iter().copied().collect();
    assert!(received.is_disjoint(&got.gaps), "nothing both received and signalled as skipped");
    let accounted: BTreeSet<u64> = received.union(&got.gaps).copied().collect();
    assert_eq!(accounted, (1..=last_low).collect(), "every publication is received or signalled as a gap");
    for high in highs {
        assert!(received.contains(&high), "high and critical publications are never shed");
    }
    assert!(got.gaps.contains(&normals[0]), "the oldest normal goes once no low is left");
    for normal in &normals[1..] {
        assert!(received.contains(normal), "newer normals are kept: {normal}");
    }
    assert!(got.gaps.contains(&last_low));
    let lows_shed = got.gaps.iter().filter(|&&o| o <= FLOOD as u64).count();
    assert!(lows_shed > 0, "the backlog of lows was shed first");
}

#[tokio::test]
async fn critical_publications_are_never_shed_the_client_is_disconnected_and_recovers_them() {
    let server = TestServer::start(delivery_config()).await;
    let mut stalled = stalled_subscriber(&server, "deep:alerts").await;
    let mut last = 0;
    for n in 1..=1000 {
        last = publish(&server, "deep:alerts", n, Priority::Critical).await;
    }
    let got = drain(&mut stalled, "deep:alerts", last).await;
    assert_eq!(got.closed, Some(3008), "a client that cannot take critical publications is disconnected as slow");
    assert!(got.gaps.is_empty(), "critical publications are never shed: {:?}", got.gaps);
    assert!(got.offsets.windows(2).all(|w| w[1] == w[0] + 1), "what arrived has no holes");
    let seen = got.offsets.last().copied().unwrap_or(0);
    assert!(seen < last, "the stall was real");

    // It comes back and recovers everything it missed.
    let mut back = server.connected(&token("stalled", None, &[])).await;
    let epoch = server.node.history("deep:alerts", Default::default()).await.expect("history").position.epoch;
    let reply = back
        .call(json!({"subscribe": {"channel": "deep:alerts", "recover": true, "offset": seen, "epoch": epoch}}))
        .await;
    let result = &reply["subscribe"];
    assert_eq!(result["recovered"], json!(true), "{}", short(result));
    let recovered: Vec<u64> =
        result["publications"].as_array().expect("publications").iter().filter_map(|p| p["offset"].as_u64()).collect();
    assert_eq!(recovered, (seen + 1..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_once_a_write_is_stuck_past_the_write_timeout() {
    let mut config = delivery_config();
    // Far shorter than the first ping (12.5-25 s), which used to be what noticed the stuck write.
    config.websocket.write_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut stalled = stalled_subscriber(&server, "stuck").await;
    assert_eq!(server.node.channels("stuck").get("stuck"), Some(&1));
    let mut published = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    // Publishes until the server lets the connection go: normal publications are shed, never a
    // reason to disconnect, so only the stuck write can end it. Yielding lets the connection's
    // task write (and get stuck) between publications.
    while server.node.channels("stuck").contains_key("stuck") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed after {published} publications: the stuck write was not timed out"
        );
        publish(&server, "stuck", published, Priority::Normal).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Whatever the socket still held arrives, then the connection ends.
    let got = drain(&mut stalled, "stuck", u64::MAX).await;
    assert!(got.offsets.len() < published as usize, "it was closed before receiving everything");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_a_healthy_one() {
    let server = TestServer::start(delivery_config()).await;
    let mut stalled = stalled_subscriber(&server, "shared").await;
    let mut healthy = server.connected(&token("healthy", None, &[])).await;
    healthy.call(json!({"subscribe": {"channel": "shared"}})).await;
    // The healthy client receives each publication, in order, while the other one reads nothing.
    let mut last = 0;
    for n in 1..=FLOOD as u64 {
        last = publish(&server, "shared", n, Priority::Normal).await;
        let publication = healthy.publication("shared").await;
        assert_eq!(publication["offset"], json!(last));
        assert_eq!(publication["data"]["n"], json!(n));
    }
    // The stalled one fell behind all along: it is told what it skipped.
    let got = drain(&mut stalled, "shared", last).await;
    assert_eq!(got.closed, None);
    assert!(!got.gaps.is_empty(), "the stalled client was shed and told so");
}

/// A metric's value from `/metrics` (0 before it is first recorded).
async fn metric(server: &TestServer, name: &str) -> f64 {
    let url = format!("http://{}/metrics", server.addr);
    let text = reqwest::get(url).await.expect("metrics").text().await.expect("metrics text");
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn publishes_wait_while_a_quarter_of_the_connections_are_backed_up() {
    const STALLED: usize = herald_server::congestion::MIN_BACKED_UP;
    // Queues far larger than what a connection's writer takes in one go (64 KiB), so a stalled
    // connection stays backed up while its blocked write inches on.
    let mut config = delivery_config();
    config.client.queue_max_size = 1 << 20;
    // Short, so the publishes made while the sockets fill up do not add up to seconds.
    config.client.publish_backpressure_wait = Duration::from_millis(10);
    let server = TestServer::start(config).await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_subscriber(&server, "jam").await);
    }
    assert_eq!(metric(&server, "herald_publish_backpressure_total").await, 0.0);
    // Every subscriber stops reading. Past what the kernel can hold for a connection (its
    // largest send buffer, and the peer's receive window) plus a quarter of the queue limit,
    // every connection there is must be backed up, and stays so.
    let kernel_holds = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20)
        + 64 * 1024;
    let enough = (kernel_holds + (1 << 20) / 4) / PAD + 2;
    for n in 1..=enough as u64 {
        publish(&server, "jam", n, Priority::Low).await;
    }
    assert_eq!(server.node.backed_up_connections(), STALLED, "all backed up");
    // Now a publish waits (its full bound: nobody drains these queues).
    let last = publish(&server, "jam", 0, Priority::Low).await;
    let waits = metric(&server, "herald_publish_backpressure_total").await;
    assert!(waits >= 1.0, "the publish waited");
    // An API call waits once, however many channels it publishes to.
    assert_eq!(server.node.backed_up_connections(), STALLED, "still all backed up");
    let reply = server.api("broadcast", json!({"channels": ["spare1", "spare2", "spare3"], "data": {}})).await;
    assert_eq!(reply["result"]["responses"].as_array().map(Vec::len), Some(3), "{reply}");
    assert_eq!(metric(&server, "herald_publish_backpressure_total").await, waits + 1.0, "one wait per call");

    // Once they read again, their queues drain and publishes go straight through.
    for client in &mut stalled {
        let got = drain(client, "jam", last).await;
        assert_eq!(got.closed, None, "low publications were shed, not the clients");
    }
    assert_eq!(server.node.backed_up_connections(), 0, "all drained");
    let waits = metric(&server, "herald_publish_backpressure_total").await;
    publish(&server, "jam", 1, Priority::Low).await;
    assert_eq!(metric(&server, "herald_publish_backpressure_total").await, waits, "no wait once drained");
}

#[tokio::test]
async fn a_full_batch_goes_out_as_one_frame() {
    let server = TestServer::start(delivery_config()).await;
    let mut client = server.connected(&token("u", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "batched:settings"}})).await;
    for n in 1..=10 {
        server.publish("batched:settings", json!({"n": n})).await;
    }
    let frame = client.next_text_frame().await;
    let offsets = publication_offsets(&frame, "batched:settings");
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "ten publications in one frame: {frame}");
    // The eleventh starts a new batch, which waits for nine more (or the hour-long delay).
    server.publish("batched:settings", json!({"n": 11})).await;
    for n in 12..=20 {
        server.publish("batched:settings", json!({"n": n})).await;
    }
    let frame = client.next_text_frame().await;
    assert_eq!(publication_offsets(&frame, "batched:settings"), (11..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_window_sends_what_arrived_in_it_as_one_frame() {
    let server = TestServer::start(delivery_config()).await;
    let mut client = server.connected(&token("u", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "windowed:prefs"}})).await;
    // Published in-process, so all three land well inside the 50 ms window.
    let publications: Vec<Publish> =
        (1..=3).map(|n| Publish::json("windowed:prefs", &json!({"n": n})).expect("json")).collect();
    for publish in publications {
        server.node.publish(publish).await.expect("publish");
    }
    let frame = client.next_text_frame().await;
    assert_eq!(publication_offsets(&frame, "windowed:prefs"), vec![1, 2, 3], "{frame}");
}

#[tokio::test]
async fn conflation_delivers_the_first_update_then_only_the_latest_per_key() {
    let server = TestServer::start(delivery_config()).await;
    let mut client = server.connected(&token("u", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "positions:queue"}})).await;
    let updates = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4), ("b", 2), ("a", 5)];
    for (task, position) in updates {
        let mut publish = Publish::json("positions:queue", &json!({"task": task, "position": position})).expect("json");
        publish.tags.insert("task".into(), task.into());
        server.node.publish(publish).await.expect("publish");
    }
    // First a:1 at once; at the window's end the latest of each task, in stream order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let publication = client.publication("positions:queue").await;
        seen.push((publication["offset"].as_u64().expect("offset"), publication["data"].clone()));
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![1, 6, 7]);
    assert_eq!(seen[1].1, json!({"task": "b", "position": 2}));
    assert_eq!(seen[2].1, json!({"task": "a", "position": 5}));
    // History keeps everything.
    let history = server.node.history("positions:queue", Default::default()).await.expect("history");
    assert_eq!(history.publications.len(), updates.len());
    // Nothing else was delivered: the next publication after the window is the next one seen.
    let mut marker = Publish::json("positions:queue", &json!({"marker": true})).expect("json");
    marker.tags.insert("task".into(), "c".into());
    let marker_offset = server.node.publish(marker).await.expect("publish").offset;
    let next = client.publication("positions:queue").await;
    assert_eq!(next["offset"], json!(marker_offset));
}

fn publication_offsets(frame: &str, channel: &str) -> Vec<u64> {
    frame
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["push"]["channel"] == json!(channel))
        .filter_map(|v| v["push"]["pub"]["offset"].as_u64())
        .collect()
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    text.chars().take(300).collect()
}
