//! Three `herald serve` processes on one Redis (`engine.type = redis`), each test under a fresh
//! key prefix, with raw WebSocket clients on different nodes:
//! - a publish on any node reaches the subscribers of every node, in order; `info` lists the
//!   nodes and `channels` adds up their subscribers;
//! - `kill -9` of a node mid-stream: its clients reconnect to another node and recover
//!   everything, without gap or duplicate;
//! - presence covers every node, drops a dead node's members after `presence_ttl`, and a join
//!   reaches each subscriber once;
//! - a Redis restart mid-stream (our own `redis-server` with an append-only file, never the
//!   shared one on 6379): clients stay connected, publishes during the outage fail with a
//!   temporary error, and nothing acknowledged is lost;
//! - an acknowledgement (`herald.ack`) on one node moves the user's cursor for every node;
//! - a Redis that restarts empty: clients get an unsubscribe push with code 2500, resubscribe and
//!   learn `recovered: false` on a new epoch, and get what follows.
//!
//! Without Redis on 127.0.0.1:6379 (and `redis-server` for the restart test) the tests are
//! skipped, unless HERALD_REQUIRE_SERVICES=1.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::HERALD;
const REDIS: &str = "127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "cluster-secret";
const API_KEY: &str = "cluster-key";

/// One test at a time: each runs three servers (and maybe a Redis) on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn required() -> bool {
    std::env::var("HERALD_REQUIRE_SERVICES").as_deref() == Ok("1")
}

async fn redis_or_skip(test: &str) -> bool {
    let reachable = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(REDIS)).await;
    if matches!(reachable, Ok(Ok(_))) {
        return true;
    }
    assert!(!required(), "{test}: Redis is not reachable at {REDIS} and HERALD_REQUIRE_SERVICES=1");
    eprintln!("{test}: skipped, Redis is not reachable at {REDIS}");
    false
}

fn fresh_prefix() -> String {
    format!("herald-cluster-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A `herald serve` process; killed with SIGKILL when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(redis: &str, prefix: &str, name: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{prefix}-{name}.log"));
        let stderr = std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null());
        let mut command = Command::new(HERALD);
        command
            .args(["serve", "--port", "0"])
            .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
            .env("HERALD_HTTP_API_KEY", API_KEY)
            .env("HERALD_ENGINE_TYPE", "redis")
            .env("HERALD_ENGINE_REDIS_ADDRESS", redis)
            .env("HERALD_ENGINE_REDIS_PREFIX", prefix)
            .env("HERALD_ENGINE_REDIS_PRESENCE_TTL", "3s")
            .env("HERALD_ENGINE_REDIS_NODE_TTL", "3s")
            .env("HERALD_ENGINE_REDIS_IO_TIMEOUT", "1s")
            .env("HERALD_CHANNEL_WITHOUT_NAMESPACE_HISTORY_SIZE", "1000")
            .env("HERALD_CLIENT_RECOVERY_MAX_PUBLICATION_LIMIT", "1000")
            .env("HERALD_LOG_LEVEL", "info")
            .stderr(stderr);
        let common::Listening { child, url, .. } = common::try_spawn_listening(command, WAIT)
            .unwrap_or_else(|e| panic!("herald {name} did not start ({e}); see {}", log.display()));
        Self { child, url }
    }

    fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

fn cluster(redis: &str, prefix: &str) -> Vec<Server> {
    (0..3).map(|i| Server::start(redis, prefix, &format!("node{i}"))).collect()
}

async fn clean(redis: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(format!("redis://{redis}")) else { return };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else { return };
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}.*")).query_async(&mut connection).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut connection).await;
    }
}

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn api(http: &reqwest::Client, base: &str, method: &str, body: Value) -> Result<Value, String> {
    let response = http
        .post(format!("{base}/api/{method}"))
        .header("X-API-Key", API_KEY)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    response.json::<Value>().await.map_err(|e| e.to_string())
}

/// Publishes `{"n": n}` with idempotency key `n`, trying the nodes in turn (from `first`) until
/// one acknowledges it; a retry of an ambiguous failure is then deduplicated, not repeated.
/// Returns the temporary errors seen on the way.
async fn publish_until_acknowledged(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    channel: &str,
    n: u64,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    for attempt in 0.. {
        let base = &urls[(first + attempt) % urls.len()];
        let body = json!({"channel": channel, "data": {"n": n}, "idempotency_key": format!("n-{n}")});
        match api(http, base, "publish", body).await {
            Ok(answer) if answer.get("result").is_some() => return errors,
            Ok(answer) => errors.push(answer["error"].clone()),
            Err(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "publish {n} never acknowledged: {errors:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    errors
}

/// A client that keeps its stream position and recovers when it reconnects.
#[derive(Default)]
struct Subscriber {
    user: String,
    channel: String,
    received: Vec<(u64, u64)>,
    epoch: String,
    sessions: usize,
}

impl Subscriber {
    fn new(user: &str, channel: &str) -> Self {
        Self { user: user.into(), channel: channel.into(), ..Default::default() }
    }

    fn has(&self, n: u64) -> bool {
        self.received.iter().any(|(_, v)| *v == n)
    }

    /// One connection: subscribes (recovering from the last position when there is one) and
    /// reads until the connection ends, `until` arrived, or nothing came for [`WAIT`].
    async fn session(&mut self, base: &str, until: u64, mut ready: Option<tokio::sync::oneshot::Sender<()>>) {
        let url = format!("{}/connection/websocket", base.replacen("http://", "ws://", 1));
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else { return };
        self.sessions += 1;
        let mut subscribe = json!({"channel": self.channel, "recoverable": true, "join_leave": true});
        if let Some((offset, _)) = self.received.last() {
            subscribe["recover"] = json!(true);
            subscribe["offset"] = json!(offset);
            subscribe["epoch"] = json!(self.epoch);
        }
        let frame = format!(
            "{}\n{}",
            json!({"id": 1, "connect": {"token": token(&self.user)}}),
            json!({"id": 2, "subscribe": subscribe})
        );
        if socket.send(Message::Text(frame.into())).await.is_err() {
            return;
        }
        while !self.has(until) {
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
                if let Some(error) = value.get("error") {
                    panic!("{} got an error: {error}", self.user);
                }
                if let Some(result) = value.get("subscribe") {
                    if result.get("was_recovering").is_some() {
                        assert_eq!(result.get("recovered"), Some(&json!(true)), "recovery failed: {value}");
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
                if let Some(unsubscribe) = value.pointer("/push/unsubscribe") {
                    panic!("{} was unsubscribed: {unsubscribe}", self.user);
                }
            }
        }
    }

    fn take(&mut self, publication: &Value) {
        let offset = publication["offset"].as_u64().expect("offset");
        let n = publication["data"]["n"].as_u64().expect("n");
        self.received.push((offset, n));
    }

    /// Every number below `count`, once, in order, with consecutive offsets.
    fn assert_complete(&self, count: u64) {
        let values: Vec<u64> = self.received.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, (0..count).collect::<Vec<u64>>(), "{}: gap, duplicate or reorder", self.user);
        let offsets: Vec<u64> = self.received.iter().map(|(o, _)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{}: offsets {offsets:?}", self.user);
    }
}

/// Runs a subscriber's sessions against `urls` in turn until it has `until`, for at most 60 s.
fn spawn_subscriber(
    mut subscriber: Subscriber,
    urls: Vec<String>,
    until: u64,
) -> (tokio::task::JoinHandle<Subscriber>, tokio::sync::oneshot::Receiver<()>) {
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut ready = Some(ready);
        let mut attempt = 0;
        while !subscriber.has(until) {
            assert!(tokio::time::Instant::now() < deadline, "{} never got {until}", subscriber.user);
            let base = &urls[attempt % urls.len()];
            subscriber.session(base, until, ready.take()).await;
            attempt += 1;
        }
        subscriber
    });
    (task, subscribed)
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = check().await;
        match outcome {
            Ok(()) => return,
            Err(last) if tokio::time::Instant::now() >= deadline => panic!("timed out waiting for {what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_subscribers_on_every_node_in_order() {
    let _serial = SERIAL.lock().await;
    if !redis_or_skip("a_publish_on_any_node_reaches_subscribers_on_every_node_in_order").await {
        return;
    }
    let prefix = fresh_prefix();
    let nodes = cluster(REDIS, &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    const COUNT: u64 = 150;
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for j in 0..2 {
            let (task, subscribed) =
                spawn_subscriber(Subscriber::new(&format!("u{i}{j}"), "numbers"), vec![url.clone()], COUNT - 1);
            tokio::time::timeout(WAIT, subscribed).await.expect("subscribed in time").expect("subscribed");
            tasks.push(task);
        }
    }
    for n in 0..COUNT {
        let errors = publish_until_acknowledged(&http, &urls, n as usize, "numbers", n).await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    for task in tasks {
        let subscriber = task.await.expect("subscriber");
        subscriber.assert_complete(COUNT);
        assert_eq!(subscriber.sessions, 1);
    }

    wait_until("info to list the three nodes", || {
        let (http, base) = (http.clone(), urls[0].clone());
        async move {
            let info = api(&http, &base, "info", json!({})).await?;
            let nodes = info["result"]["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len() == 3 {
                Ok(())
            } else {
                Err(info.to_string())
            }
        }
    })
    .await;
    wait_until("channels to add up the nodes' subscribers", || {
        let (http, base) = (http.clone(), urls[1].clone());
        async move {
            let channels = api(&http, &base, "channels", json!({})).await?;
            // The sessions ended, so nobody is subscribed any more.
            if channels["result"]["channels"].get("numbers").is_none() {
                Ok(())
            } else {
                Err(channels.to_string())
            }
        }
    })
    .await;
    clean(REDIS, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_recover_on_another_node() {
    let _serial = SERIAL.lock().await;
    if !redis_or_skip("a_killed_nodes_clients_recover_on_another_node").await {
        return;
    }
    let prefix = fresh_prefix();
    let mut nodes = cluster(REDIS, &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    const COUNT: u64 = 300;
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for j in 0..2 {
            // Each client starts on its node and falls back to the next ones.
            let order: Vec<String> = (0..3).map(|k| urls[(i + k) % 3].clone()).collect();
            let (task, subscribed) =
                spawn_subscriber(Subscriber::new(&format!("u{i}{j}"), "numbers"), order, COUNT - 1);
            tokio::time::timeout(WAIT, subscribed).await.expect("subscribed in time").expect("subscribed");
            tasks.push((i, task));
        }
        let _ = url;
    }
    let mut live = urls.clone();
    for n in 0..COUNT {
        if n == COUNT / 3 {
            nodes[0].kill();
            live.retain(|u| *u != urls[0]);
        }
        publish_until_acknowledged(&http, &live, n as usize, "numbers", n).await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for (node, task) in tasks {
        let subscriber = task.await.expect("subscriber");
        subscriber.assert_complete(COUNT);
        if node == 0 {
            assert!(subscriber.sessions >= 2, "{} reconnected after the kill", subscriber.user);
        } else {
            assert_eq!(subscriber.sessions, 1, "{} stayed connected", subscriber.user);
        }
    }
    wait_until("info to drop the dead node", || {
        let (http, base) = (http.clone(), urls[1].clone());
        async move {
            let info = api(&http, &base, "info", json!({})).await?;
            let nodes = info["result"]["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len() == 2 {
                Ok(())
            } else {
                Err(info.to_string())
            }
        }
    })
    .await;
    clean(REDIS, &prefix).await;
}

/// A client subscribed to the presence channel; keeps reading (and answering pings) until
/// aborted, recording joins (`join:<user>`) and publications (`pub`) when given a log.
async fn presence_member(
    base: &str,
    user: &str,
    joins: Option<Arc<parking_lot::Mutex<Vec<String>>>>,
) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/connection/websocket", base.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token(user)}}),
        json!({"id": 2, "subscribe": {"channel": "room", "join_leave": true}})
    );
    socket.send(Message::Text(frame.into())).await.expect("send");
    // Wait for the subscribe reply so the member is counted before this returns.
    loop {
        let message =
            tokio::time::timeout(WAIT, socket.next()).await.expect("reply in time").expect("open").expect("ok");
        let Message::Text(text) = message else { continue };
        if text.split('\n').any(|line| line.contains(r#""id":2"#)) {
            assert!(!text.contains("error"), "{text}");
            break;
        }
    }
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else { continue };
            for line in text.split('\n').filter(|l| !l.is_empty()) {
                let Ok(value) = serde_json::from_str::<Value>(line) else { continue };
                if value.as_object().is_some_and(|o| o.is_empty()) {
                    let _ = socket.send(Message::Text("{}".into())).await;
                }
                let Some(joins) = &joins else { continue };
                if let Some(user) = value.pointer("/push/join/info/user").and_then(Value::as_str) {
                    joins.lock().push(format!("join:{user}"));
                }
                if value.pointer("/push/pub").is_some() {
                    joins.lock().push("pub".to_owned());
                }
            }
        }
    })
}

async fn presence_stats(http: &reqwest::Client, base: &str) -> Result<(u64, u64), String> {
    let answer = api(http, base, "presence_stats", json!({"channel": "room"})).await?;
    let result = &answer["result"];
    match (result["num_clients"].as_u64(), result["num_users"].as_u64()) {
        (Some(clients), Some(users)) => Ok((clients, users)),
        _ => Err(answer.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_forgets_a_dead_nodes_members() {
    let _serial = SERIAL.lock().await;
    if !redis_or_skip("presence_spans_nodes_and_forgets_a_dead_nodes_members").await {
        return;
    }
    let prefix = fresh_prefix();
    let mut nodes = cluster(REDIS, &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    let joins = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut members = vec![presence_member(&urls[0], "observer", Some(joins.clone())).await];
    for (i, url) in urls.iter().enumerate() {
        for j in 0..2 {
            members.push(presence_member(url, &format!("u{i}{j}"), None).await);
        }
    }
    // One user on two nodes counts once.
    members.push(presence_member(&urls[2], "u00", None).await);
    // Presence is added right after each subscribe reply; then every node sees all of it.
    for base in &urls {
        wait_until("presence of every node's members", || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                match presence_stats(&http, &base).await? {
                    (8, 7) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    // channels adds up the nodes (the others as of their last heartbeat), and info counts them.
    wait_until("channels and info to cover every node", || {
        let (http, base) = (http.clone(), urls[1].clone());
        async move {
            let channels = api(&http, &base, "channels", json!({"pattern": "ro*"})).await?;
            let info = api(&http, &base, "info", json!({})).await?;
            let clients: u64 = info["result"]["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter_map(|n| n["num_clients"].as_u64()).sum())
                .unwrap_or(0);
            if channels["result"]["channels"]["room"]["num_clients"] == json!(8) && clients == 8 {
                Ok(())
            } else {
                Err(format!("{channels} {info}"))
            }
        }
    })
    .await;
    let answer = api(&http, &urls[1], "presence", json!({"channel": "room"})).await.unwrap();
    assert_eq!(answer["result"]["presence"].as_object().map(|p| p.len()), Some(8), "{answer}");

    // Each join reached the observer once, from its own node, however many nodes listen: a
    // publication made after every join was seen comes through the same Pub/Sub channel, so a
    // duplicate join would be in before it.
    let expected: Vec<&str> =
        vec!["join:observer", "join:u00", "join:u00", "join:u01", "join:u10", "join:u11", "join:u20", "join:u21"];
    wait_until("the observer to see the joins", || {
        let joins = joins.clone();
        async move {
            let seen = joins.lock().clone();
            if seen.len() >= 8 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        }
    })
    .await;
    publish_until_acknowledged(&http, &urls, 1, "room", 0).await;
    wait_until("the observer to get the publication", || {
        let joins = joins.clone();
        async move {
            if joins.lock().iter().any(|e| e == "pub") {
                Ok(())
            } else {
                Err(format!("{:?}", joins.lock()))
            }
        }
    })
    .await;
    let mut seen: Vec<String> = joins.lock().iter().filter(|e| e.starts_with("join:")).cloned().collect();
    seen.sort();
    assert_eq!(seen, expected);

    // kill -9 of node 2: its three members expire after presence_ttl; the others stay.
    nodes[2].kill();
    wait_until("presence to drop the dead node's members", || {
        let (http, base) = (http.clone(), urls[0].clone());
        async move {
            match presence_stats(&http, &base).await? {
                (5, 5) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    wait_until("channels to forget the dead node", || {
        let (http, base) = (http.clone(), urls[0].clone());
        async move {
            let channels = api(&http, &base, "channels", json!({})).await?;
            if channels["result"]["channels"]["room"]["num_clients"] == json!(5) {
                Ok(())
            } else {
                Err(channels.to_string())
            }
        }
    })
    .await;
    // Well past the TTL the live nodes' refreshes keep their members.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(presence_stats(&http, &urls[1]).await.unwrap(), (5, 5));
    for member in members {
        member.abort();
    }
    clean(REDIS, &prefix).await;
}

/// Our own Redis on a free port with an append-only file fsynced at every write, so a restart
/// keeps what it acknowledged. Killed when dropped.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
    persistent: bool,
}

impl OwnRedis {
    /// `persistent`: with the append-only file; without it a restart empties Redis.
    fn start(persistent: bool) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("herald-redis-{port}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut redis = Self { child: None, port, dir, persistent };
        redis.spawn().then_some(redis)
    }

    fn spawn(&mut self) -> bool {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", appendonly, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = OwnRedis::start(true) else {
        assert!(!required(), "redis-server cannot be started and HERALD_REQUIRE_SERVICES=1");
        eprintln!("a_redis_restart_mid_stream_loses_nothing_acknowledged: skipped, redis-server cannot be started");
        return;
    };
    let prefix = fresh_prefix();
    let nodes = cluster(&redis.address(), &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    const COUNT: u64 = 200;
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let (task, subscribed) =
            spawn_subscriber(Subscriber::new(&format!("u{i}"), "numbers"), vec![url.clone()], COUNT - 1);
        tokio::time::timeout(WAIT, subscribed).await.expect("subscribed in time").expect("subscribed");
        tasks.push(task);
    }
    let mut temporary = Vec::new();
    for n in 0..COUNT {
        if n == COUNT / 3 {
            redis.kill();
            // A publish while Redis is down fails, clearly and temporarily, on every node.
            for base in &urls {
                let body = json!({"channel": "numbers", "data": {"n": n}, "idempotency_key": format!("n-{n}")});
                let answer = api(&http, base, "publish", body).await.expect("an answer, not a hang");
                assert_eq!(answer["error"]["code"], json!(100), "{answer}");
                assert_eq!(answer["error"]["temporary"], json!(true), "{answer}");
                temporary.push(answer);
            }
            let health: Value =
                http.get(format!("{}/health", urls[0])).send().await.expect("health").json().await.expect("json");
            assert_eq!(health["engine"]["available"], json!(false), "{health}");
            // An outage of a second: the nodes keep retrying their connections meanwhile.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(redis.spawn(), "redis restarts");
        }
        publish_until_acknowledged(&http, &urls, n as usize, "numbers", n).await;
    }
    assert!(temporary.iter().all(|a| a["error"]["message"].as_str().is_some_and(|m| m.contains("unavailable"))));
    for task in tasks {
        let subscriber = task.await.expect("subscriber");
        subscriber.assert_complete(COUNT);
        assert_eq!(subscriber.sessions, 1, "{} stayed connected through the outage", subscriber.user);
    }
    wait_until("health to report redis back", || {
        let (http, base) = (http.clone(), urls[2].clone());
        async move {
            let health: Value = http
                .get(format!("{base}/health"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if health["engine"]["available"] == json!(true) {
                Ok(())
            } else {
                Err(health.to_string())
            }
        }
    })
    .await;
    drop(nodes);
}

/// Reads frames until one line satisfies `wanted`, answering pings; fails after [`WAIT`].
async fn read_until(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("connection closed waiting for {what}"))
            .expect("websocket");
        let Message::Text(text) = message else { continue };
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let value: Value = serde_json::from_str(line).expect("JSON from server");
            if value.as_object().is_some_and(|o| o.is_empty()) {
                let _ = socket.send(Message::Text("{}".into())).await;
            }
            if wanted(&value) {
                return value;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarts_empty_makes_clients_resubscribe() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = OwnRedis::start(false) else {
        assert!(!required(), "redis-server cannot be started and HERALD_REQUIRE_SERVICES=1");
        eprintln!("a_redis_that_restarts_empty_makes_clients_resubscribe: skipped, redis-server cannot be started");
        return;
    };
    let prefix = fresh_prefix();
    let nodes = cluster(&redis.address(), &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    let url = format!("{}/connection/websocket", urls[1].replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token("u")}}),
        json!({"id": 2, "subscribe": {"channel": "numbers", "recoverable": true}})
    );
    socket.send(Message::Text(frame.into())).await.expect("send");
    let reply = read_until(&mut socket, "the subscribe reply", |v| v["id"] == json!(2)).await;
    let epoch = reply["subscribe"]["epoch"].as_str().expect("epoch").to_owned();
    for n in 0..3 {
        publish_until_acknowledged(&http, &urls, n as usize, "numbers", n).await;
    }
    read_until(&mut socket, "publication 3", |v| v.pointer("/push/pub/offset") == Some(&json!(3))).await;

    redis.kill();
    assert!(redis.spawn(), "redis restarts");
    // History is gone: the node tells the client to resubscribe (2500), the connection stays.
    let push = read_until(&mut socket, "the unsubscribe push", |v| v.pointer("/push/unsubscribe").is_some()).await;
    assert_eq!(push["push"]["unsubscribe"]["code"], json!(2500), "{push}");
    let resubscribe =
        json!({"id": 3, "subscribe": {"channel": "numbers", "recover": true, "offset": 3, "epoch": epoch}});
    socket.send(Message::Text(resubscribe.to_string().into())).await.expect("send");
    let reply = read_until(&mut socket, "the resubscribe reply", |v| v["id"] == json!(3)).await;
    assert_eq!(reply["subscribe"]["was_recovering"], json!(true), "{reply}");
    assert_eq!(reply["subscribe"].get("recovered"), None, "recovered: false is omitted: {reply}");
    assert_ne!(reply["subscribe"]["epoch"], json!(epoch), "a new epoch: {reply}");
    publish_until_acknowledged(&http, &urls, 0, "numbers", 3).await;
    let publication = read_until(&mut socket, "the next publication", |v| v.pointer("/push/pub").is_some()).await;
    assert_eq!(publication["push"]["pub"]["data"]["n"], json!(3), "{publication}");
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_on_one_node_moves_the_cursor_for_every_node() {
    let _serial = SERIAL.lock().await;
    if !redis_or_skip("an_acknowledgement_on_one_node_moves_the_cursor_for_every_node").await {
        return;
    }
    let prefix = fresh_prefix();
    let nodes = cluster(REDIS, &prefix);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    let connect = |base: &str| {
        let url = format!("{}/connection/websocket", base.replacen("http://", "ws://", 1));
        async move { tokio_tungstenite::connect_async(&url).await.expect("connect").0 }
    };
    let mut phone = connect(&urls[0]).await;
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token("reader")}}),
        json!({"id": 2, "subscribe": {"channel": "inbox", "recoverable": true}})
    );
    phone.send(Message::Text(frame.into())).await.expect("send");
    read_until(&mut phone, "the subscribe reply", |v| v["id"] == json!(2)).await;
    for n in 0..5 {
        publish_until_acknowledged(&http, &urls, n as usize, "inbox", n).await;
    }
    read_until(&mut phone, "publication 5", |v| v.pointer("/push/pub/offset") == Some(&json!(5))).await;
    let ack = json!({"id": 3, "rpc": {"method": "herald.ack", "data": {"channel": "inbox", "offset": 3}}});
    phone.send(Message::Text(ack.to_string().into())).await.expect("send");
    let reply = read_until(&mut phone, "the ack reply", |v| v["id"] == json!(3)).await;
    assert!(reply.get("error").is_none(), "{reply}");

    // The same user on another node, with no position of its own: `resume` recovers after the
    // cursor the first node stored in Redis.
    let mut laptop = connect(&urls[2]).await;
    let resume = json!({"channel": "inbox", "data": {"herald": {"resume": true}}});
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token("reader")}}),
        json!({"id": 2, "subscribe": resume})
    );
    laptop.send(Message::Text(frame.into())).await.expect("send");
    let reply = read_until(&mut laptop, "the resume reply", |v| v["id"] == json!(2)).await;
    let result = &reply["subscribe"];
    assert_eq!(result["recovered"], json!(true), "{reply}");
    let offsets: Vec<u64> =
        result["publications"].as_array().into_iter().flatten().filter_map(|p| p["offset"].as_u64()).collect();
    assert_eq!(offsets, vec![4, 5], "{reply}");
    drop(nodes);
    clean(REDIS, &prefix).await;
}
