//! Herald embedded in an axum service as the event bus of a process-monitoring application.
//!
//! Domain events (samples, rule violations, acknowledgements, control-limit updates) go onto an
//! in-process [`bus::EventBus`]; its handlers each run in their own task: `herald` forwards them to
//! browsers with `Node::publish` (one channel per monitored item, `items:<item>`, plus `alerts:all`
//! for everyone), `audit` counts them, and `pager` simulates a buggy integration that panics on
//! some violations, without disturbing the other two. Ctrl-C (SIGINT/SIGTERM) stops taking new
//! events, lets every handler finish what was queued, and only then disconnects the browsers.
//!
//! Run: `cargo run -p example-event-bus`, then open http://127.0.0.1:3005/?user=ops.

mod bus;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bus::EventBus;
use herald_core::protocol::Priority;
use herald_server::{Node, Publish};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONFIG: &str = include_str!("../herald.toml");
const ITEMS: [&str; 3] = ["line-1", "line-2", "line-3"];

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum DomainEvent {
    Sample { item: String, value: f64, sequence: u64 },
    Violation { id: u64, item: String, value: f64, limit: &'static str },
    Acknowledged { violation_id: u64, by: String },
    ControlLimits { item: String, lower: f64, upper: f64 },
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct Limits {
    lower: f64,
    upper: f64,
}

struct App {
    bus: Arc<EventBus<DomainEvent>>,
    limits: RwLock<HashMap<String, Limits>>,
    sequence: AtomicU64,
    violation_ids: AtomicU64,
    secret: String,
}

type Shared = Arc<App>;

/// An HTTP error answer: the status and a message saying what was wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

fn check_item(item: &str) -> Result<(), ApiError> {
    if ITEMS.contains(&item) {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, format!("unknown item {item:?}; items are {ITEMS:?}")))
    }
}

impl App {
    fn emit(&self, event: DomainEvent) -> Result<(), ApiError> {
        self.bus.publish(event).map_err(|closed| error(StatusCode::SERVICE_UNAVAILABLE, closed.to_string()))
    }

    /// A measurement: the sample itself, plus a violation when it is outside the control limits.
    fn ingest(&self, item: String, value: f64) -> Result<(), ApiError> {
        check_item(&item)?;
        if !value.is_finite() {
            return Err(error(StatusCode::BAD_REQUEST, "value must be a finite number"));
        }
        let limits = self.limits.read().get(&item).copied().unwrap_or(Limits { lower: 9.0, upper: 11.0 });
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        self.emit(DomainEvent::Sample { item: item.clone(), value, sequence })?;
        let broken = if value > limits.upper {
            Some("upper")
        } else if value < limits.lower {
            Some("lower")
        } else {
            None
        };
        if let Some(limit) = broken {
            let id = self.violation_ids.fetch_add(1, Ordering::Relaxed) + 1;
            self.emit(DomainEvent::Violation { id, item, value, limit })?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct SampleInput {
    item: String,
    value: f64,
}

/// `POST /app/samples`: one sample or a list of them (a data logger's upload).
#[derive(Deserialize)]
#[serde(untagged)]
enum SamplesInput {
    One(SampleInput),
    Many(Vec<SampleInput>),
}

async fn post_samples(State(app): State<Shared>, Json(input): Json<SamplesInput>) -> Response {
    let samples = match input {
        SamplesInput::One(sample) => vec![sample],
        SamplesInput::Many(samples) => samples,
    };
    let count = samples.len();
    // All or nothing: a bad sample in an upload is refused before any is taken.
    for sample in &samples {
        if let Err(refused) = check_item(&sample.item) {
            return refused.into_response();
        }
        if !sample.value.is_finite() {
            return error(StatusCode::BAD_REQUEST, format!("{}: value must be a finite number", sample.item))
                .into_response();
        }
    }
    for sample in samples {
        if let Err(refused) = app.ingest(sample.item, sample.value) {
            return refused.into_response();
        }
    }
    Json(json!({"accepted": count})).into_response()
}

#[derive(Deserialize)]
struct AckInput {
    by: String,
}

async fn acknowledge(State(app): State<Shared>, Path(id): Path<u64>, Json(input): Json<AckInput>) -> Response {
    let by = input.by.trim().to_owned();
    if by.is_empty() || by.len() > 64 {
        return error(StatusCode::BAD_REQUEST, "by: 1 to 64 characters").into_response();
    }
    if id == 0 || id > app.violation_ids.load(Ordering::Relaxed) {
        return error(StatusCode::NOT_FOUND, format!("no violation {id}")).into_response();
    }
    match app.emit(DomainEvent::Acknowledged { violation_id: id, by }) {
        Ok(()) => Json(json!({})).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn put_limits(State(app): State<Shared>, Path(item): Path<String>, Json(limits): Json<Limits>) -> Response {
    if let Err(refused) = check_item(&item) {
        return refused.into_response();
    }
    if !(limits.lower.is_finite() && limits.upper.is_finite() && limits.lower < limits.upper) {
        return error(StatusCode::BAD_REQUEST, "limits must be finite numbers with lower < upper").into_response();
    }
    app.limits.write().insert(item.clone(), limits);
    match app.emit(DomainEvent::ControlLimits { item, lower: limits.lower, upper: limits.upper }) {
        Ok(()) => Json(json!({})).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn get_limits(State(app): State<Shared>) -> Json<BTreeMap<String, Limits>> {
    let limits = app.limits.read();
    Json(
        ITEMS
            .iter()
            .map(|item| (item.to_string(), limits.get(*item).copied().unwrap_or(Limits { lower: 9.0, upper: 11.0 })))
            .collect(),
    )
}

async fn handlers(State(app): State<Shared>) -> Json<Vec<bus::HandlerStatus>> {
    Json(app.bus.statuses())
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
}

/// Demo sign-in: anyone may be any user. A real application mints the token after its own login.
async fn token(State(app): State<Shared>, Query(query): Query<TokenQuery>) -> Response {
    let user = query.user.trim();
    if user.is_empty() || user.len() > 32 || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return error(StatusCode::BAD_REQUEST, "user: 1 to 32 letters, digits, - or _").into_response();
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(app.secret.as_bytes());
    match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"sub": user, "exp": exp}), &key) {
        Ok(token) => Json(json!({"token": token})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign token: {e}")).into_response(),
    }
}

/// Where each domain event goes in Herald, and how urgently.
fn to_publication(event: &DomainEvent) -> Result<Publish, herald_server::ProtocolError> {
    let (channel, priority) = match event {
        DomainEvent::Sample { item, .. } => (format!("items:{item}"), Priority::Normal),
        DomainEvent::ControlLimits { item, .. } => (format!("items:{item}"), Priority::High),
        DomainEvent::Violation { .. } | DomainEvent::Acknowledged { .. } => ("alerts:all".to_owned(), Priority::High),
    };
    let mut publish = Publish::json(channel, event)?;
    publish.priority = Some(priority);
    Ok(publish)
}

fn register_handlers(bus: &EventBus<DomainEvent>, node: &Node) {
    let herald = node.clone();
    bus.register("herald", move |event| {
        let node = herald.clone();
        async move {
            let publish = to_publication(&event).map_err(|e| format!("{event:?}: {e}"))?;
            node.publish(publish).await.map(|_| ()).map_err(|e| format!("publish {event:?}: {e}"))
        }
    });

    let counts: Arc<RwLock<BTreeMap<&'static str, u64>>> = Arc::default();
    bus.register("audit", move |event| {
        let counts = counts.clone();
        async move {
            let kind = match event {
                DomainEvent::Sample { .. } => "sample",
                DomainEvent::Violation { .. } => "violation",
                DomainEvent::Acknowledged { .. } => "acknowledged",
                DomainEvent::ControlLimits { .. } => "control_limits",
            };
            *counts.write().entry(kind).or_default() += 1;
            Ok(())
        }
    });

    // A deliberately buggy integration: nobody is on call for line-3, and the code assumes there
    // always is someone. Its panics are caught by the bus; the other handlers never notice.
    let on_call: HashMap<&'static str, &'static str> = HashMap::from([("line-1", "dana"), ("line-2", "sam")]);
    bus.register("pager", move |event| {
        let contact = match &event {
            DomainEvent::Violation { item, .. } => Some(on_call[item.as_str()]),
            _ => None,
        };
        async move {
            if let Some(contact) = contact {
                tracing::info!(%contact, "paging");
            }
            Ok(())
        }
    });
}

/// Background samples so that the page moves without a data logger (`SIMULATE_SAMPLES_MS=0`
/// turns it off).
fn simulate(app: Shared, every: Duration) {
    tokio::spawn(async move {
        let mut tick: u64 = 0;
        loop {
            tokio::time::sleep(every).await;
            tick += 1;
            for (n, item) in ITEMS.iter().enumerate() {
                let value = 10.0
                    + ((tick as f64) / 3.0 + n as f64).sin() * 0.8
                    + if tick.is_multiple_of(17) { 1.5 } else { 0.0 };
                if app.ingest(item.to_string(), value).is_err() {
                    return; // shutting down
                }
            }
        }
    });
}

fn static_routes() -> Router<Shared> {
    let script = |body: &'static str| ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body);
    Router::new()
        .route("/", get(|| async { Html(include_str!("../static/index.html")) }))
        .route("/app.js", get(move || async move { script(include_str!("../static/app.js")) }))
        .route(
            "/vendor/centrifuge.js",
            get(move || async move { script(include_str!("../static/vendor/centrifuge.js")) }),
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let loaded = herald_config::load_str(CONFIG, herald_config::Format::Toml, std::env::vars())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let config = loaded.config;
    let address = format!("{}:{}", config.http_server.address, config.http_server.port);
    let shutdown_timeout = config.shutdown.timeout;
    let secret = config.client.token.hmac_secret_key.clone();
    let node = Node::new(config)?;

    let bus = EventBus::new();
    register_handlers(&bus, &node);
    let app = Arc::new(App {
        bus: bus.clone(),
        limits: RwLock::new(HashMap::new()),
        sequence: AtomicU64::new(0),
        violation_ids: AtomicU64::new(0),
        secret,
    });
    let simulate_every: u64 = std::env::var("SIMULATE_SAMPLES_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    if simulate_every > 0 {
        simulate(app.clone(), Duration::from_millis(simulate_every));
    }

    let routes = Router::new()
        .merge(static_routes())
        .route("/app/token", get(token))
        .route("/app/samples", post(post_samples))
        .route("/app/violations/{id}/ack", post(acknowledge))
        .route("/app/limits", get(get_limits))
        .route("/app/limits/{item}", post(put_limits))
        .route("/app/handlers", get(handlers))
        .with_state(app)
        .merge(node.router());

    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("example-event-bus: open http://{}/?user=ops", listener.local_addr()?);
    std::io::stdout().flush()?;
    // Herald disconnects the browsers once this resolves, so it resolves only after the bus has
    // delivered everything that was queued when the signal came.
    let drained_then_stop = async move {
        herald_server::shutdown_signal().await;
        let pending = bus.shutdown(shutdown_timeout).await;
        println!("example-event-bus: drained {pending} queued events; disconnecting clients");
        let _ = std::io::stdout().flush();
    };
    herald_server::serve_app(node, routes, listener, drained_then_stop, shutdown_timeout).await?;
    println!("example-event-bus: stopped");
    Ok(())
}
