//! herald-client and `herald subscribe` across a server crash: the real `herald serve` binary on a
//! data directory is killed (SIGKILL) mid-stream and restarted on the same port; clients reconnect
//! with backoff and end with every publication exactly once, in order.

use futures_util::StreamExt;
use herald_client::{Client, ConnectionState, SubscribeOptions, SubscriptionEvent};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::HERALD;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "restart-secret";
const API_KEY: &str = "restart-key";

struct Server {
    child: Child,
}

impl Server {
    /// `herald serve` on `port` and `data_dir`, once it listens.
    fn start(port: u16, data_dir: &std::path::Path) -> Self {
        let mut command = Command::new(HERALD);
        command
            .args(["serve", "--address", "127.0.0.1", "--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
            .env("HERALD_HTTP_API_KEY", API_KEY)
            .env("HERALD_STORAGE_FSYNC", "always")
            .stderr(Stdio::null());
        Self { child: common::spawn_listening(command, WAIT).child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn publish(http: &reqwest::Client, port: u16, channel: &str, n: u64) -> u64 {
    let answer: Value = http
        .post(format!("http://127.0.0.1:{port}/api/publish"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"channel": channel, "data": {"n": n}}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("publish request")
        .json()
        .await
        .expect("publish answer");
    answer["result"]["offset"].as_u64().unwrap_or_else(|| panic!("publish failed: {answer}"))
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-client-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_a_crash_and_receives_everything_once_in_order() {
    const BEFORE: u64 = 30;
    const AFTER: u64 = 30;
    let dir = data_dir("lib");
    let port = free_port();
    let mut server = Server::start(port, &dir);
    let http = reqwest::Client::new();
    let (min, max) = (Duration::from_millis(200), Duration::from_millis(1500));
    let client = Client::builder(format!("ws://127.0.0.1:{port}/connection/websocket"))
        .token(token("reader"))
        .reconnect_delay(min, max)
        .build();
    let mut state = client.state();
    client.connect();
    let mut sub = client.subscribe("numbers", SubscribeOptions::new()).await.expect("subscribe");

    let mut received: Vec<(u64, u64)> = Vec::new();
    let take = |event: SubscriptionEvent, received: &mut Vec<(u64, u64)>| match event {
        SubscriptionEvent::Publication(publication) => {
            let data: Value = serde_json::from_str(publication.data.get()).expect("JSON data");
            received.push((publication.offset, data["n"].as_u64().expect("n")));
        }
        SubscriptionEvent::RecoveryFailed(info) => panic!("recovery failed: {info:?}"),
        _ => {}
    };
    for n in 0..BEFORE {
        publish(&http, port, "numbers", n).await;
    }
    // Killed while publications may still be on their way to the client.
    while received.len() < (BEFORE / 2) as usize {
        let event = tokio::time::timeout(WAIT, sub.next()).await.expect("publication in time").expect("stream");
        take(event, &mut received);
    }
    server.kill();

    // The client retries with backoff while the server is down.
    let mut delays = Vec::new();
    tokio::time::timeout(WAIT, async {
        while delays.len() < 3 {
            state.changed().await.expect("client alive");
            if let ConnectionState::Connecting { retry_in: Some(delay), .. } = &*state.borrow_and_update() {
                delays.push(*delay);
            }
        }
    })
    .await
    .expect("reconnect attempts in time");
    assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");

    let _server = Server::start(port, &dir);
    for n in BEFORE..BEFORE + AFTER {
        publish(&http, port, "numbers", n).await;
    }
    while received.last().is_none_or(|(_, n)| *n < BEFORE + AFTER - 1) {
        let event = tokio::time::timeout(WAIT, sub.next()).await.expect("publication in time").expect("stream");
        take(event, &mut received);
    }
    let numbers: Vec<u64> = received.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, (0..BEFORE + AFTER).collect::<Vec<_>>(), "every publication once, in order");
    assert!(received.windows(2).all(|w| w[1].0 > w[0].0), "offsets strictly increase: {received:?}");
    assert!(matches!(*client.state().borrow(), ConnectionState::Connected { .. }));
    drop(sub);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_subscribe_rides_out_a_crash() {
    const TOTAL: u64 = 20;
    let dir = data_dir("cli");
    let port = free_port();
    let mut server = Server::start(port, &dir);
    let http = reqwest::Client::new();
    let mut subscriber = Command::new(HERALD)
        .args(["subscribe", "events", "--count", &TOTAL.to_string(), "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--token", &token("cli"), "--reconnect-min", "100ms", "--reconnect-max", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald subscribe");
    let stderr = subscriber.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_line = |what: &str| loop {
        let line = lines.recv_timeout(WAIT).unwrap_or_else(|_| panic!("herald subscribe never said {what:?}"));
        if line.contains(what) {
            return line;
        }
    };
    wait_line("subscribed to events");
    for n in 0..TOTAL / 2 {
        publish(&http, port, "events", n).await;
    }
    server.kill();
    wait_line("reconnecting in");
    let _server = Server::start(port, &dir);
    for n in TOTAL / 2..TOTAL {
        publish(&http, port, "events", n).await;
    }
    let resubscribed = wait_line("subscribed to events again");
    assert!(resubscribed.contains("\"recovered\":true"), "{resubscribed}");
    let status = tokio::task::spawn_blocking(move || {
        let mut output = String::new();
        subscriber.stdout.take().expect("stdout").read_to_string(&mut output).expect("read");
        (subscriber.wait().expect("wait"), output)
    });
    let (status, output) = tokio::time::timeout(WAIT, status).await.expect("subscriber exits").expect("join");
    assert!(status.success(), "{status}");
    let numbers: Vec<u64> = output
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line")["data"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(numbers, (0..TOTAL).collect::<Vec<_>>(), "{output}");
    let _ = std::fs::remove_dir_all(&dir);
}
