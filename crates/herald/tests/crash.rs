//! Nothing acknowledged is lost across `kill -9`: a numbered stream is published through the HTTP
//! API while recovering subscribers are connected; the server is killed at a random point and
//! restarted on the same data directory; every subscriber ends with every acknowledged publish,
//! in order, without gaps or duplicates.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::HERALD;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "crash-secret";
const API_KEY: &str = "crash-key";

fn start(data_dir: &std::path::Path) -> (Child, String) {
    let mut command = Command::new(HERALD);
    command
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(data_dir)
        .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .env("HERALD_HTTP_API_KEY", API_KEY)
        .env("HERALD_STORAGE_FSYNC", "always")
        .stderr(Stdio::null());
    let server = common::spawn_listening(command, WAIT);
    (server.child, server.url)
}

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A subscriber that keeps its stream position and recovers after reconnecting.
struct Subscriber {
    received: Vec<(u64, u64)>,
    epoch: String,
}

impl Subscriber {
    /// Connects, subscribes (recovering from the last position when there is one) and reads
    /// publications until the connection ends or `until` publications are in.
    async fn session(&mut self, base: &str, until: Option<u64>, mut ready: Option<tokio::sync::oneshot::Sender<()>>) {
        let url = format!("{}/connection/websocket", base.replacen("http://", "ws://", 1));
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else { return };
        let mut subscribe = json!({"channel": "numbers", "recoverable": true});
        if let Some((offset, _)) = self.received.last() {
            subscribe["recover"] = json!(true);
            subscribe["offset"] = json!(offset);
            subscribe["epoch"] = json!(self.epoch);
        }
        let frame = format!(
            "{}\n{}",
            json!({"id": 1, "connect": {"token": token("u")}}),
            json!({"id": 2, "subscribe": subscribe})
        );
        if socket.send(Message::Text(frame.into())).await.is_err() {
            return;
        }
        loop {
            if until.is_some_and(|n| self.received.iter().any(|(_, v)| *v == n)) {
                return;
            }
            let message = match tokio::time::timeout(WAIT, socket.next()).await {
                Ok(Some(Ok(message))) => message,
                _ => return,
            };
            let Message::Text(text) = message else { continue };
            for line in text.split('\n').filter(|l| !l.is_empty()) {
                let value: Value = serde_json::from_str(line).expect("JSON from server");
                if value.as_object().is_some_and(|o| o.is_empty()) {
                    let _ = socket.send(Message::Text("{}".into())).await;
                }
                if let Some(result) = value.get("subscribe") {
                    if let Some(recovered) = result.get("was_recovering") {
                        assert_eq!(
                            result.get("recovered"),
                            Some(&json!(true)),
                            "recovery failed: {value} ({recovered})"
                        );
                    }
                    self.epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
                    for publication in result["publications"].as_array().into_iter().flatten() {
                        self.take(publication);
                    }
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                if let Some(publication) = value.pointer("/push/pub") {
                    self.take(publication);
                }
            }
        }
    }

    fn take(&mut self, publication: &Value) {
        let offset = publication["offset"].as_u64().expect("offset");
        let n = publication["data"]["n"].as_u64().expect("n");
        self.received.push((offset, n));
    }
}

async fn publish(client: &reqwest::Client, base: &str, n: u64) -> bool {
    let answer = client
        .post(format!("{base}/api/publish"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"channel": "numbers", "data": {"n": n}}))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(response) => response.json::<Value>().await.is_ok_and(|v| v.get("result").is_some()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_acknowledged() {
    let http = reqwest::Client::new();
    for round in 0..3u64 {
        let data_dir = std::env::temp_dir().join(format!("herald-crash-{}-{round}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let (mut child, base) = start(&data_dir);
        let mut subscribers: Vec<Subscriber> =
            (0..2).map(|_| Subscriber { received: Vec::new(), epoch: String::new() }).collect();
        // First sessions run until the kill ends them; publishing starts once both are subscribed.
        let mut sessions = Vec::new();
        for mut subscriber in subscribers.drain(..) {
            let base = base.clone();
            let (ready, subscribed) = tokio::sync::oneshot::channel();
            sessions.push(tokio::spawn(async move {
                subscriber.session(&base, None, Some(ready)).await;
                subscriber
            }));
            tokio::time::timeout(WAIT, subscribed).await.expect("subscribed in time").expect("subscribed");
        }
        // Concurrent publishers, so that the kill lands while commits are in flight.
        let kill_after = 20 + (std::process::id() as u64 * 7 + round * 31) % 150;
        let next = Arc::new(AtomicU64::new(1));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(tokio::sync::Notify::new());
        let mut publishers = Vec::new();
        for _ in 0..3 {
            let (http, base, next, acknowledged, stop, reached) =
                (http.clone(), base.clone(), next.clone(), acknowledged.clone(), stop.clone(), reached.clone());
            publishers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if publish(&http, &base, n).await {
                        let count = {
                            let mut acknowledged = acknowledged.lock().expect("lock");
                            acknowledged.push(n);
                            acknowledged.len() as u64
                        };
                        if count == kill_after {
                            reached.notify_one();
                        }
                    }
                }
            }));
        }
        tokio::time::timeout(Duration::from_secs(30), reached.notified()).await.expect("publishing stalled");
        child.kill().expect("kill -9");
        let _ = child.wait();
        stop.store(true, Ordering::Relaxed);
        for publisher in publishers {
            publisher.await.expect("publisher");
        }
        let mut acknowledged = acknowledged.lock().expect("lock").clone();
        let n = next.load(Ordering::Relaxed);
        // A publish racing the kill may or may not have been committed; it was not acknowledged.
        for session in sessions {
            subscribers.push(session.await.expect("session"));
        }

        let (mut child, base) = start(&data_dir);
        for extra in 1..=20 {
            if publish(&http, &base, n + extra).await {
                acknowledged.push(n + extra);
            }
        }
        let last = *acknowledged.last().expect("something acknowledged");
        for subscriber in &mut subscribers {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !subscriber.received.iter().any(|(_, v)| *v == last) {
                assert!(tokio::time::Instant::now() < deadline, "subscriber never caught up to {last}");
                subscriber.session(&base, Some(last), None).await;
            }
            let offsets: Vec<u64> = subscriber.received.iter().map(|(o, _)| *o).collect();
            let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
            assert_eq!(offsets, expected, "round {round}: gap or duplicate in offsets");
            let values: Vec<u64> = subscriber.received.iter().map(|(_, v)| *v).collect();
            for n in &acknowledged {
                assert!(values.contains(n), "round {round}: acknowledged publish {n} lost (kill after {kill_after})");
            }
            let mut unique = values.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), values.len(), "round {round}: a publication arrived twice");
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}
