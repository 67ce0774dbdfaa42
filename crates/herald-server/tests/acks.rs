//! Acknowledged delivery: redelivery with backoff, expiry, the delivery audit, durable cursors.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn ack_config() -> herald_config::Config {
    let mut config = config();
    let mut options = open_namespace();
    options.ack_timeout = Duration::from_millis(100);
    options.ack_max_retries = 3;
    config.channel.namespaces.push(herald_config::Namespace { name: "rooms".into(), options });
    config.channel.namespaces.push(herald_config::Namespace { name: "ops".into(), options: open_namespace() });
    config.delivery.expired_channel = "ops:ack-expired".into();
    config
}

#[tokio::test]
async fn unacknowledged_publications_are_retried_with_growing_intervals_then_expire() {
    let server = TestServer::start(ack_config()).await;
    let (expired_tx, mut expired_rx) = tokio::sync::mpsc::unbounded_channel();
    server.node.on_ack_expired(move |channel, offset, recipient| {
        let _ = expired_tx.send((channel.to_owned(), offset, recipient.user.clone()));
    });
    let mut ignoring = server.connected(&token("ignorer", None, &[])).await;
    let mut acking = server.connected(&token("acker", None, &[])).await;
    let mut operator = server.connected(&token("operator", None, &[])).await;
    operator.call(json!({"subscribe": {"channel": "ops:ack-expired"}})).await;
    for client in [&mut ignoring, &mut acking] {
        client.call(json!({"subscribe": {"channel": "rooms:1"}})).await;
    }
    let answer =
        server.api("publish", json!({"channel": "rooms:1", "data": {"vote": "skip"}, "requires_ack": true})).await;
    let offset = answer["result"]["offset"].as_u64().unwrap();

    let first = acking.publication("rooms:1").await;
    assert_eq!(first["offset"], json!(offset));
    let reply =
        acking.call(json!({"rpc": {"method": "herald.ack", "data": {"channel": "rooms:1", "offset": offset}}})).await;
    assert_eq!(reply["rpc"]["data"]["acknowledged"], json!(1), "{reply}");

    // The ignoring client gets the same publication (same offset) four times: once, then 3 retries.
    let mut arrivals = Vec::new();
    for _ in 0..4 {
        let publication = ignoring.publication("rooms:1").await;
        assert_eq!(publication["offset"], json!(offset));
        arrivals.push(Instant::now());
    }
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "intervals must grow: {gaps:?}");

    // Then it expires: the operators' hook hears it, and the audit says so.
    let expired = tokio::time::timeout(WAIT, expired_rx.recv()).await.expect("expiry in time").expect("expiry");
    assert_eq!(expired, ("rooms:1".to_owned(), offset, "ignorer".to_owned()));
    let event = operator.publication("ops:ack-expired").await;
    assert_eq!(event["data"]["channel"], json!("rooms:1"));
    assert_eq!(event["data"]["offset"], json!(offset));
    assert_eq!(event["data"]["user"], json!("ignorer"));
    assert_eq!(event["data"]["state"], json!("expired"));
    let status = server.api("delivery_status", json!({"channel": "rooms:1", "offset": offset})).await;
    let result = &status["result"];
    assert_eq!(result["expired"][0]["user"], json!("ignorer"));
    assert_eq!(result["expired"][0]["retries"], json!(3));
    assert_eq!(result["acked"][0]["user"], json!("acker"));
    assert!(result["pending"].as_array().unwrap().is_empty());

    // The acking client saw it exactly once: anything retried would be queued before this reply.
    acking.call(json!({"ping": {}})).await;
    assert!(
        acking.pending().iter().all(|m| m.get("push").is_none()),
        "acking client got a retry: {:?}",
        acking.pending()
    );
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr)).await.unwrap().text().await.unwrap();
    for name in ["herald_acks_total", "herald_ack_retries_total", "herald_ack_expired_total", "herald_acks_pending"] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn durable_cursor_resumes_a_user_on_a_fresh_client() {
    let server = TestServer::start(ack_config()).await;
    let mut phone = server.connected(&token("dana", None, &[])).await;
    phone.call(json!({"subscribe": {"channel": "rooms:2"}})).await;
    for n in 1..=5 {
        server.publish("rooms:2", json!({"n": n})).await;
    }
    for _ in 0..5 {
        phone.publication("rooms:2").await;
    }
    let reply = phone.call(json!({"rpc": {"method": "herald.ack", "data": {"channel": "rooms:2", "offset": 3}}})).await;
    assert!(reply.get("rpc").is_some(), "{reply}");
    drop(phone);
    for n in 6..=8 {
        server.publish("rooms:2", json!({"n": n})).await;
    }
    // A new device with no local state: it resumes from the cursor, exactly 4 onward.
    let mut laptop = server.connected(&token("dana", None, &[])).await;
    let reply = laptop.call(json!({"subscribe": {"channel": "rooms:2", "data": {"herald": {"resume": true}}}})).await;
    assert_eq!(reply["subscribe"]["recovered"], json!(true), "{reply}");
    let values: Vec<_> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["data"]["n"].clone()).collect();
    assert_eq!(values, vec![json!(4), json!(5), json!(6), json!(7), json!(8)]);

    // Bad acknowledgements are refused clearly.
    let bad = laptop.call(json!({"rpc": {"method": "herald.ack", "data": {"channel": "rooms:2"}}})).await;
    assert_eq!(bad["error"]["code"], json!(107), "{bad}");
    let bad = laptop.call(json!({"rpc": {"method": "herald.ack", "data": {"channel": "nope:x", "offset": 1}}})).await;
    assert_eq!(bad["error"]["code"], json!(102), "{bad}");
}
