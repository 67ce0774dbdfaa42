//! The server HTTP API over real HTTP, with real WebSocket clients observing its effects.

mod common;

use common::*;
use serde_json::json;

async fn raw_post(server: &TestServer, method: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().post(format!("http://{}/api/{method}", server.addr)).body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Authorization", format!("apikey {key}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn api_key_is_required() {
    let server = TestServer::start(config()).await;
    let (status, body) = raw_post(&server, "info", None, "{}").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], json!(101));
    let (status, _) = raw_post(&server, "info", Some("wrong"), "{}").await;
    assert_eq!(status, 401);
    let (status, body) = raw_post(&server, "info", Some(API_KEY), "{}").await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["nodes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_requests() {
    let server = TestServer::start(config()).await;
    let (status, body) = raw_post(&server, "publish", Some(API_KEY), "{broken").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!(107));
    let (status, body) = raw_post(&server, "nosuchmethod", Some(API_KEY), "{}").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], json!(104));
    let answer = server.api("publish", json!({"channel": "news"})).await;
    assert_eq!(answer["error"]["code"], json!(107));
    let answer = server.api("publish", json!({"channel": "nope:x", "data": {}})).await;
    assert_eq!(answer["error"]["code"], json!(102));
    let answer = server.api("history", json!({"channel": "nohistory:x"})).await;
    assert_eq!(answer["error"]["code"], json!(102));
    let (status, body) =
        raw_post(&server, "publish", Some(API_KEY), r#"{"channel": "news", "data": {}, "priority": "urgent"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!(107));
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("priority")), "{body}");
    let answer = server.api("publish", json!({"channel": "news", "data": {}, "priority": "low"})).await;
    assert!(answer.get("result").is_some(), "{answer}");
}

#[tokio::test]
async fn idempotent_publish_is_delivered_once() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "orders"}})).await;
    let first = server.api("publish", json!({"channel": "orders", "data": {"n": 1}, "idempotency_key": "k"})).await;
    let second = server.api("publish", json!({"channel": "orders", "data": {"n": 1}, "idempotency_key": "k"})).await;
    assert_eq!(first["result"], second["result"]);
    server.publish("orders", json!({"n": 2})).await;
    assert_eq!(client.publication("orders").await["data"], json!({"n": 1}));
    // The next one is n=2: the repeated publish was not delivered.
    assert_eq!(client.publication("orders").await["data"], json!({"n": 2}));
}

#[tokio::test]
async fn broadcast_and_batch() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "a"}})).await;
    client.call(json!({"subscribe": {"channel": "b"}})).await;
    let answer = server.api("broadcast", json!({"channels": ["a", "b", "bad:x"], "data": {"all": true}})).await;
    let responses = answer["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], json!(1));
    assert_eq!(responses[2]["error"]["code"], json!(102));
    assert_eq!(client.publication("a").await["data"], json!({"all": true}));
    assert_eq!(client.publication("b").await["data"], json!({"all": true}));

    let answer = server
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "a", "data": {"n": 1}}},
                {"presence_stats": {"channel": "a"}},
                {"unknown": {}}
            ]}),
        )
        .await;
    let replies = answer["replies"].as_array().unwrap();
    assert_eq!(replies[0]["publish"]["offset"], json!(2));
    assert_eq!(replies[1]["presence_stats"]["num_clients"], json!(1));
    assert_eq!(replies[2]["error"]["code"], json!(104));
}

#[tokio::test]
async fn history_presence_channels_and_history_remove() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("u1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "chat:1"}})).await;
    for n in 1..=3 {
        server.publish("chat:1", json!({"n": n})).await;
    }
    let history = server.api("history", json!({"channel": "chat:1", "limit": 2, "reverse": true})).await;
    let offsets: Vec<_> =
        history["result"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].clone()).collect();
    assert_eq!(offsets, vec![json!(3), json!(2)]);
    let presence = server.api("presence", json!({"channel": "chat:1"})).await;
    let clients = presence["result"]["presence"].as_object().unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients.values().next().unwrap()["user"], json!("u1"));
    let channels = server.api("channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(channels["result"]["channels"]["chat:1"]["num_clients"], json!(1));

    server.api("history_remove", json!({"channel": "chat:1"})).await;
    let history = server.api("history", json!({"channel": "chat:1", "limit": 10})).await;
    assert!(history["result"]["publications"].as_array().unwrap().is_empty());
    assert_eq!(history["result"]["offset"], json!(3), "the stream position survives history_remove");
}

#[tokio::test]
async fn server_side_subscribe_unsubscribe_disconnect() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("u7", None, &[])).await;
    let answer = server.api("subscribe", json!({"user": "u7", "channel": "updates"})).await;
    assert!(answer.get("result").is_some(), "{answer}");
    let push = client.push("updates", "subscribe").await;
    assert!(push.get("epoch").is_some(), "{push}");
    server.publish("updates", json!({"v": 1})).await;
    assert_eq!(client.publication("updates").await["data"], json!({"v": 1}));

    server.api("unsubscribe", json!({"user": "u7", "channel": "updates"})).await;
    let push = client.push("updates", "unsubscribe").await;
    assert_eq!(push["code"], json!(2000));

    server.api("disconnect", json!({"user": "u7", "disconnect": {"code": 4000, "reason": "bye"}})).await;
    let closed = client.closed().await;
    assert_eq!(closed, Closed { code: 4000, reason: "bye".into() });
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "m"}})).await;
    server.publish("m", json!(1)).await;
    client.publication("m").await;
    client.call(json!({"frobnicate": {}})).await;
    let mut bad = server.client().await;
    bad.send_raw("{bad json").await;
    assert_eq!(bad.closed().await.code, 3501);
    let health = reqwest::get(format!("http://{}/health", server.addr)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["engine"], json!({"engine": "memory", "available": true}), "{health}");
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr)).await.unwrap().text().await.unwrap();
    for name in [
        "herald_connections",
        "herald_subscriptions",
        "herald_publications_total",
        "herald_deliveries_total",
        "herald_errors_total",
        "herald_command_duration_seconds",
        "herald_engine_available",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    assert!(metrics.contains(r#"herald_errors_total{transport="client",code="104"}"#), "{metrics}");
    assert!(metrics.contains(r#"herald_bad_input_total{kind="malformed_json"}"#), "{metrics}");
    assert!(metrics.contains(r#"herald_disconnects_total{code="3501"}"#), "{metrics}");
}

#[tokio::test]
async fn shutdown_finishes_an_api_call_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(config()).await;
    let body = r#"{"channel":"news","data":{"last":"words"}}"#;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    // Half of the request is in; the server is told to stop; then the rest arrives.
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body.as_bytes()[..10]).await.unwrap();
    socket.flush().await.unwrap();
    let node = server.node.clone();
    let stopping = tokio::spawn(server.stop());
    tokio::time::timeout(WAIT, node.shutdown_token().cancelled()).await.expect("shutdown started");
    socket.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"result\"") {
        let read = tokio::time::timeout(WAIT, socket.read(&mut buffer)).await.expect("answer in time").unwrap();
        assert!(read > 0, "connection closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""offset":1"#), "{answer}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn parallel_batch_keeps_command_order_for_offsets_and_delivery() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "bulk"}})).await;
    let commands: Vec<_> = (1..=50).map(|n| json!({"publish": {"channel": "bulk", "data": {"n": n}}})).collect();
    let answer = server.api("batch", json!({"commands": commands, "parallel": true})).await;
    let offsets: Vec<u64> =
        answer["replies"].as_array().unwrap().iter().map(|r| r["publish"]["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=50).collect::<Vec<u64>>());
    for n in 1..=50 {
        assert_eq!(client.publication("bulk").await["data"]["n"], json!(n));
    }
}
