//! Settings sync: application settings kept identical in every open tab. A change is published
//! to `settings:global`; a preset changes ten settings at once and Herald delivers them as one
//! batch (one WebSocket frame). Settings and Herald's history live on disk, so after a server
//! restart the tabs reconnect (backoff 3 s to 30 s) and recover whatever they missed, including
//! the hot-reload notice the server publishes when it (re)loads its settings.
//!
//! Run: `cargo run -p example-settings-sync`, open http://127.0.0.1:3003/ in two tabs, change
//! something, stop the server with Ctrl-C and start it again.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use herald_server::{HistoryFilter, Node, Publish};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

const CONFIG: &str = include_str!("../herald.toml");
const CHANNEL: &str = "settings:global";

/// Every setting, its allowed values and its default.
const SCHEMA: [(&str, &[&str], &str); 12] = [
    ("theme", &["light", "dark", "high-contrast"], "light"),
    ("density", &["comfortable", "compact"], "comfortable"),
    ("font_size", &["small", "medium", "large"], "medium"),
    ("language", &["en", "de", "fr"], "en"),
    ("notifications", &["all", "mentions", "none"], "all"),
    ("sound", &["on", "off"], "on"),
    ("animations", &["on", "off"], "on"),
    ("sidebar", &["expanded", "collapsed"], "expanded"),
    ("start_page", &["inbox", "dashboard", "calendar"], "inbox"),
    ("autosave", &["on", "off"], "on"),
    ("timezone", &["local", "utc"], "local"),
    ("beta_features", &["on", "off"], "off"),
];

/// Presets: ten settings each, applied as one batch.
fn preset(name: &str) -> Option<[(&'static str, &'static str); 10]> {
    match name {
        "focus" => Some([
            ("theme", "dark"),
            ("density", "compact"),
            ("font_size", "medium"),
            ("notifications", "none"),
            ("sound", "off"),
            ("animations", "off"),
            ("sidebar", "collapsed"),
            ("start_page", "dashboard"),
            ("autosave", "on"),
            ("beta_features", "off"),
        ]),
        "accessible" => Some([
            ("theme", "high-contrast"),
            ("density", "comfortable"),
            ("font_size", "large"),
            ("notifications", "mentions"),
            ("sound", "on"),
            ("animations", "off"),
            ("sidebar", "expanded"),
            ("start_page", "inbox"),
            ("autosave", "on"),
            ("timezone", "local"),
        ]),
        _ => None,
    }
}

/// What is kept in `settings.json` next to Herald's store.
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    values: BTreeMap<String, String>,
    /// How many times the server (re)loaded the settings: shown in the hot-reload notice.
    generation: u64,
}

struct App {
    node: Node,
    file: PathBuf,
    /// Held across each change, its publish and the file write, so that snapshots and the
    /// stream agree.
    saved: Mutex<Saved>,
    secret: String,
}

type Shared = Arc<App>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn internal(what: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {error}"))
}

fn check(key: &str, value: &str) -> Result<(), ApiError> {
    match SCHEMA.iter().find(|(name, _, _)| *name == key) {
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no setting {key:?}"))),
        Some((_, allowed, _)) if !allowed.contains(&value) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("{key} must be one of {allowed:?}")))
        }
        Some(_) => Ok(()),
    }
}

fn load(file: &std::path::Path) -> anyhow::Result<Saved> {
    let mut saved: Saved = match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved::default(),
        Err(error) => anyhow::bail!("{}: {error}", file.display()),
    };
    for (key, _, default) in SCHEMA {
        saved.values.entry(key.to_owned()).or_insert_with(|| default.to_owned());
    }
    saved.values.retain(|key, value| check(key, value).is_ok());
    Ok(saved)
}

fn store(file: &std::path::Path, saved: &Saved) -> std::io::Result<()> {
    let temporary = file.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(saved)?)?;
    std::fs::rename(&temporary, file)
}

impl App {
    /// Publishes these setting changes (concurrently: the durable store commits them together and
    /// Herald's batching sends them in one frame), then saves the file.
    async fn apply(&self, saved: &mut Saved, changes: &[(&str, &str)]) -> Result<u64, ApiError> {
        let publishes = changes.iter().map(|(key, value)| {
            let event = json!({"kind": "setting", "key": key, "value": value});
            let node = self.node.clone();
            async move {
                let mut publish = Publish::json(CHANNEL, &event).map_err(|e| internal("encode", e))?;
                publish.tags.insert("key".into(), key.to_string());
                node.publish(publish).await.map_err(|e| internal("publish", e))
            }
        });
        let results = futures_util::future::join_all(publishes).await;
        let mut last = 0;
        for ((key, value), result) in changes.iter().zip(results) {
            last = last.max(result?.offset);
            saved.values.insert(key.to_string(), value.to_string());
        }
        store(&self.file, saved).map_err(|e| internal("save settings", e))?;
        Ok(last)
    }

    /// Tells every tab the server (re)loaded its settings, with the values it now has.
    async fn announce_reload(&self, saved: &Saved) -> Result<(), ApiError> {
        let notice = json!({"kind": "reload", "generation": saved.generation, "values": saved.values});
        self.node
            .publish(Publish::json(CHANNEL, &notice).map_err(|e| internal("encode", e))?)
            .await
            .map_err(|e| internal("publish", e))?;
        Ok(())
    }
}

/// `GET /app/settings`: the values and the stream position they reflect.
async fn snapshot(State(app): State<Shared>) -> Result<Json<Value>, ApiError> {
    let saved = app.saved.lock().await;
    let top = app
        .node
        .history(CHANNEL, HistoryFilter { since: None, limit: Some(0), reverse: false })
        .await
        .map_err(|e| internal("stream position", e))?;
    let schema: Vec<Value> = SCHEMA.iter().map(|(key, allowed, _)| json!({"key": key, "allowed": allowed})).collect();
    Ok(Json(json!({
        "values": saved.values, "generation": saved.generation, "schema": schema,
        "position": {"offset": top.position.offset, "epoch": top.position.epoch},
    })))
}

#[derive(Deserialize)]
struct ValueInput {
    value: String,
}

async fn set(
    State(app): State<Shared>,
    Path(key): Path<String>,
    Json(input): Json<ValueInput>,
) -> Result<Json<Value>, ApiError> {
    check(&key, &input.value)?;
    let mut saved = app.saved.lock().await;
    let offset = app.apply(&mut saved, &[(key.as_str(), input.value.as_str())]).await?;
    Ok(Json(json!({"offset": offset})))
}

async fn apply_preset(State(app): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let changes = preset(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no preset {name:?}; try focus or accessible")))?;
    let mut saved = app.saved.lock().await;
    let offset = app.apply(&mut saved, &changes).await?;
    Ok(Json(json!({"offset": offset, "changed": changes.len()})))
}

/// `POST /app/reload`: re-reads `settings.json` (edited by hand, or by a deploy) and tells the tabs.
async fn reload(State(app): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut saved = app.saved.lock().await;
    let mut fresh = load(&app.file).map_err(|e| internal("reload", e))?;
    fresh.generation = saved.generation + 1;
    store(&app.file, &fresh).map_err(|e| internal("save settings", e))?;
    *saved = fresh;
    app.announce_reload(&saved).await?;
    Ok(Json(json!({"generation": saved.generation})))
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
}

/// Demo sign-in: anyone may be any user. A real application mints the token after its own login.
async fn token(State(app): State<Shared>, Query(query): Query<TokenQuery>) -> Result<Json<Value>, ApiError> {
    let user = query.user.trim();
    if user.is_empty() || user.len() > 32 || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ApiError(StatusCode::BAD_REQUEST, "user: 1 to 32 letters, digits, - or _".into()));
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(app.secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"sub": user, "exp": exp}), &key)
        .map_err(|e| internal("sign token", e))?;
    Ok(Json(json!({"token": token})))
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
    let secret = config.client.token.hmac_secret_key.clone();
    let data_dir = PathBuf::from(&config.storage.data_dir);
    let durable = herald_store::DurableBroker::open(herald_store::StoreOptions::from_config(&config))
        .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let recovered = durable.recovered().clone();
    let node = Node::builder(config).broker(Arc::new(durable)).build()?;

    let file = data_dir.join("settings.json");
    let mut saved = load(&file)?;
    saved.generation += 1;
    store(&file, &saved)?;
    let app = Arc::new(App { node: node.clone(), file, saved: Mutex::new(Saved::default()), secret });
    if let Err(ApiError(_, message)) = app.announce_reload(&saved).await {
        anyhow::bail!("cannot announce the settings: {message}");
    }
    *app.saved.lock().await = saved;

    let routes = Router::new()
        .merge(static_routes())
        .route("/app/token", get(token))
        .route("/app/settings", get(snapshot))
        .route("/app/settings/{key}", put(set))
        .route("/app/presets/{name}", post(apply_preset))
        .route("/app/reload", post(reload))
        .with_state(app)
        .merge(node.router());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!(
        "example-settings-sync: {} publications kept in {} ({} streams)",
        recovered.publications,
        data_dir.display(),
        recovered.streams
    );
    println!("example-settings-sync: open http://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    herald_server::serve_app(node, routes, listener, herald_server::shutdown_signal(), Duration::from_secs(10)).await?;
    Ok(())
}
