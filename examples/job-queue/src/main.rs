//! Job queue: users submit jobs to an API; a separate worker process runs them and publishes
//! what happens (started, retried, completed, failed) and the queue positions through Herald's
//! HTTP API. Job events carry `audience: {users: [owner]}`, so each user's page sees only their
//! own jobs while an admin (token role `admin`) sees all; queue positions are for everyone,
//! `low` priority and conflated per job, so a slow client skips stale positions.
//!
//! Run: `cargo run -p example-job-queue` (it starts the worker as a child process), then open
//! http://127.0.0.1:3002/?user=alice and http://127.0.0.1:3002/admin.html.
//! The worker alone: `cargo run -p example-job-queue -- worker --app http://127.0.0.1:3002`.

mod worker;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_server::{Node, Publish};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Notify};

const CONFIG: &str = include_str!("../herald.toml");
pub const KINDS: [&str; 3] = ["ok", "flaky", "broken"];

/// A job as the API stores it; `seq` grows with every event, so a page that merges a snapshot
/// with live events keeps the newest.
#[derive(Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub user: String,
    pub kind: String,
    pub status: String,
    pub attempt: u32,
    pub seq: u64,
}

#[derive(Default)]
struct Queue {
    jobs: BTreeMap<u64, Job>,
    waiting: VecDeque<u64>,
    next_id: u64,
}

struct App {
    node: Node,
    queue: Mutex<Queue>,
    arrived: Notify,
    secret: String,
}

type Shared = Arc<App>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
}

/// The caller of the app's own endpoints, from the same token it connects to Herald with.
fn caller(app: &App, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let unauthorized = |why: &str| ApiError(StatusCode::UNAUTHORIZED, why.to_owned());
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthorized("missing Authorization: Bearer"))?;
    let token =
        value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| unauthorized("bad Authorization"))?;
    let key = jsonwebtoken::DecodingKey::from_secret(app.secret.as_bytes());
    let data = jsonwebtoken::decode::<Claims>(token, &key, &jsonwebtoken::Validation::default())
        .map_err(|e| unauthorized(&format!("invalid token: {e}")))?;
    Ok(data.claims)
}

/// Publishes a queue position in-process (the worker publishes the same shape over HTTP).
async fn publish_position(node: &Node, job_id: u64, position: usize) {
    let Ok(mut publish) = Publish::json("queue:positions", &json!({"job_id": job_id, "position": position})) else {
        return;
    };
    publish.tags.insert("job_id".into(), job_id.to_string());
    if let Err(error) = node.publish(publish).await {
        tracing::error!(%error, job_id, "cannot publish queue position");
    }
}

#[derive(Deserialize)]
struct SubmitInput {
    kind: String,
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

/// `POST /app/jobs {kind, count?}`: queues jobs for the caller.
async fn submit(State(app): State<Shared>, headers: HeaderMap, Json(input): Json<SubmitInput>) -> Response {
    let claims = match caller(&app, &headers) {
        Ok(claims) => claims,
        Err(error) => return error.into_response(),
    };
    if !KINDS.contains(&input.kind.as_str()) || !(1..=100).contains(&input.count) {
        return ApiError(StatusCode::BAD_REQUEST, format!("kind must be one of {KINDS:?}, count 1 to 100"))
            .into_response();
    }
    let mut queued = Vec::new();
    let mut queue = app.queue.lock().await;
    for _ in 0..input.count {
        queue.next_id += 1;
        let job = Job {
            id: queue.next_id,
            user: claims.sub.clone(),
            kind: input.kind.clone(),
            status: "queued".into(),
            attempt: 0,
            seq: 1,
        };
        queue.jobs.insert(job.id, job.clone());
        queue.waiting.push_back(job.id);
        queued.push((job, queue.waiting.len()));
    }
    // Published while the queue is locked: no claim (and so no newer position) can come between.
    for (job, position) in &queued {
        let event = json!({"kind": "queued", "job": job});
        let mut publish = match Publish::json("jobs:events", &event) {
            Ok(publish) => publish,
            Err(error) => return ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        };
        publish.audience = Some(herald_core::protocol::Audience { users: vec![job.user.clone()], roles: vec![] });
        if let Err(error) = app.node.publish(publish).await {
            return ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("publish: {error}")).into_response();
        }
        publish_position(&app.node, job.id, *position).await;
    }
    drop(queue);
    app.arrived.notify_one();
    Json(json!({"jobs": queued.into_iter().map(|(job, _)| job).collect::<Vec<_>>()})).into_response()
}

/// `GET /app/jobs`: the caller's jobs, or every job for an admin.
async fn list(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let claims = match caller(&app, &headers) {
        Ok(claims) => claims,
        Err(error) => return error.into_response(),
    };
    let admin = claims.roles.iter().any(|r| r == "admin");
    let queue = app.queue.lock().await;
    let jobs: Vec<&Job> = queue.jobs.values().filter(|job| admin || job.user == claims.sub).collect();
    let waiting: Vec<u64> = queue.waiting.iter().copied().collect();
    Json(json!({"jobs": jobs, "waiting": waiting})).into_response()
}

fn worker_key_ok(app: &App, headers: &HeaderMap) -> bool {
    let expected = &app.node.config().http_api.key;
    headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

/// `POST /app/worker/claim`: the next job and the queue behind it; waits up to 10 s for one.
async fn claim(State(app): State<Shared>, headers: HeaderMap) -> Response {
    if !worker_key_ok(&app, &headers) {
        return ApiError(StatusCode::UNAUTHORIZED, "worker endpoints need X-API-Key".into()).into_response();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let arrived = app.arrived.notified();
        {
            let mut queue = app.queue.lock().await;
            if let Some(id) = queue.waiting.pop_front() {
                let waiting: Vec<u64> = queue.waiting.iter().copied().collect();
                if let Some(job) = queue.jobs.get(&id).cloned() {
                    return Json(json!({"job": job, "waiting": waiting})).into_response();
                }
            }
        }
        // Nothing waiting: answer "no job" at the deadline, or at once when the server stops, so
        // that a long poll never holds up a graceful shutdown.
        let stopping = app.node.shutdown_token();
        tokio::select! {
            _ = arrived => {}
            _ = tokio::time::sleep_until(deadline) => return StatusCode::NO_CONTENT.into_response(),
            _ = stopping.cancelled() => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// `POST /app/worker/report`: the worker records a job's new state (it publishes it itself).
async fn report(State(app): State<Shared>, headers: HeaderMap, Json(update): Json<Job>) -> Response {
    if !worker_key_ok(&app, &headers) {
        return ApiError(StatusCode::UNAUTHORIZED, "worker endpoints need X-API-Key".into()).into_response();
    }
    let mut queue = app.queue.lock().await;
    match queue.jobs.get_mut(&update.id) {
        Some(job) if update.seq > job.seq => {
            job.status = update.status;
            job.attempt = update.attempt;
            job.seq = update.seq;
            Json(json!({})).into_response()
        }
        Some(_) => Json(json!({"stale": true})).into_response(),
        None => ApiError(StatusCode::NOT_FOUND, format!("no job {}", update.id)).into_response(),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
    #[serde(default)]
    role: Option<String>,
}

/// Demo sign-in: anyone may be any user, even an admin. A real application mints the token
/// after its own login and decides the roles itself.
async fn token(State(app): State<Shared>, Query(query): Query<TokenQuery>) -> Response {
    let user = query.user.trim();
    if user.is_empty() || user.len() > 32 || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return ApiError(StatusCode::BAD_REQUEST, "user: 1 to 32 letters, digits, - or _".into()).into_response();
    }
    let roles: Vec<String> = match query.role.as_deref() {
        None | Some("") => vec![],
        Some("admin") => vec!["admin".into()],
        Some(other) => return ApiError(StatusCode::BAD_REQUEST, format!("unknown role {other:?}")).into_response(),
    };
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let claims = Claims { sub: user.to_owned(), exp, roles };
    let key = jsonwebtoken::EncodingKey::from_secret(app.secret.as_bytes());
    match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
        Ok(token) => Json(json!({"token": token})).into_response(),
        Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign token: {e}")).into_response(),
    }
}

fn static_routes() -> Router<Shared> {
    let script = |body: &'static str| ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body);
    Router::new()
        .route("/", get(|| async { Html(include_str!("../static/index.html")) }))
        .route("/admin.html", get(|| async { Html(include_str!("../static/admin.html")) }))
        .route("/jobs.js", get(move || async move { script(include_str!("../static/jobs.js")) }))
        .route(
            "/vendor/centrifuge.js",
            get(move || async move { script(include_str!("../static/vendor/centrifuge.js")) }),
        )
}

async fn serve() -> anyhow::Result<()> {
    let loaded = herald_config::load_str(CONFIG, herald_config::Format::Toml, std::env::vars())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let config = loaded.config;
    let address = format!("{}:{}", config.http_server.address, config.http_server.port);
    let secret = config.client.token.hmac_secret_key.clone();
    let api_key = config.http_api.key.clone();
    let node = Node::new(config)?;
    let app = Arc::new(App { node: node.clone(), queue: Mutex::default(), arrived: Notify::new(), secret });
    let routes = Router::new()
        .merge(static_routes())
        .route("/app/token", get(token))
        .route("/app/jobs", get(list).post(submit))
        .route("/app/worker/claim", post(claim))
        .route("/app/worker/report", post(report))
        .with_state(app)
        .merge(node.router());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let local = listener.local_addr()?;

    // The worker is another process; it talks to this one over HTTP only.
    let mut worker = None;
    if std::env::var("JOB_QUEUE_WORKER").as_deref() != Ok("0") {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["worker", "--app", &format!("http://{local}")])
            .env("HERALD_HTTP_API_KEY", &api_key)
            .kill_on_drop(true)
            .spawn()?;
        println!("example-job-queue: worker process {} started", child.id().unwrap_or_default());
        worker = Some(child);
    }
    println!("example-job-queue: open http://{local}/?user=alice (admin: http://{local}/admin.html)");
    std::io::stdout().flush()?;
    herald_server::serve_app(node, routes, listener, herald_server::shutdown_signal(), Duration::from_secs(10)).await?;
    if let Some(mut child) = worker {
        let _ = child.kill().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve().await,
        Some("worker") => worker::run(worker::Options::from_args(&args[1..])?).await,
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; use no argument (API and worker) or `worker --app URL`")
        }
    }
}
