//! Entity sync: a small API changes entities (tasks and comments in projects) and publishes
//! each change with Herald's `publish_change`, which computes the JSON Patch. Pages keep a live
//! copy: they load a snapshot that carries the stream position it was taken at, subscribe from
//! that position (nothing missed, nothing twice), and narrow the stream with filters. A client
//! that goes offline recovers what it missed; a device that lost its local state resumes from its
//! user's durable cursor (`herald.ack` + `{"herald": {"resume": true}}`).
//!
//! Run: `cargo run -p example-entity-sync`, then open http://127.0.0.1:3001/.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use herald_core::change::{ChangeRequest, ChangeType};
use herald_server::{HistoryFilter, Node};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

const CONFIG: &str = include_str!("../herald.toml");
const CHANNEL: &str = "sync:entities";
const ENTITY_TYPES: [&str; 2] = ["task", "comment"];

/// The application's data. It is locked across each change *and its publish*, so that a snapshot
/// and the stream position read with it always agree.
#[derive(Default)]
struct Store {
    entities: BTreeMap<String, Value>,
    next_id: u64,
}

struct App {
    node: Node,
    store: Mutex<Store>,
    secret: String,
}

type Shared = Arc<App>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no entity {id:?}"))
}

fn valid_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 32 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl App {
    async fn publish(&self, change: ChangeRequest) -> Result<u64, ApiError> {
        let result = self
            .node
            .publish_change(change)
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("publish_change: {e}")))?;
        Ok(result.offset)
    }
}

fn change(entity: &Value, change_type: ChangeType, old: Option<Value>, new: Option<Value>) -> ChangeRequest {
    let field = |name: &str| entity.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    ChangeRequest {
        channel: CHANNEL.into(),
        entity_type: field("entity_type"),
        entity_id: field("id"),
        change_type,
        old,
        new,
        // The tag lets subscribers filter by project without looking into the data.
        tags: BTreeMap::from([("project_id".to_owned(), field("project_id"))]),
        feature_area: Some("planning".into()),
        summary: None,
        audience: None,
        idempotency_key: None,
        priority: None,
    }
}

/// `GET /app/entities`: every entity, and the position of the change stream they reflect.
async fn snapshot(State(app): State<Shared>) -> Result<Json<Value>, ApiError> {
    let store = app.store.lock().await;
    let top = app
        .node
        .history(CHANNEL, HistoryFilter { since: None, limit: Some(0), reverse: false })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("stream position: {e}")))?;
    let entities: Vec<&Value> = store.entities.values().collect();
    Ok(Json(json!({"entities": entities, "position": {"offset": top.position.offset, "epoch": top.position.epoch}})))
}

/// The fields a client may set; `id` and `entity_type` are the server's.
fn editable(fields: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    for key in fields.keys() {
        if !["title", "status", "project_id", "text", "task_id"].contains(&key.as_str()) {
            return Err(bad_request(format!("unknown field {key:?}")));
        }
    }
    if let Some(project) = fields.get("project_id") {
        if !project.as_str().is_some_and(valid_name) {
            return Err(bad_request("project_id: 1 to 32 letters, digits, - or _"));
        }
    }
    Ok(fields)
}

#[derive(Deserialize)]
struct CreateInput {
    entity_type: String,
    project_id: String,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

async fn create(State(app): State<Shared>, Json(input): Json<CreateInput>) -> Result<Json<Value>, ApiError> {
    if !ENTITY_TYPES.contains(&input.entity_type.as_str()) {
        return Err(bad_request(format!("entity_type must be one of {ENTITY_TYPES:?}")));
    }
    let mut entity = editable(input.fields)?;
    if !valid_name(&input.project_id) {
        return Err(bad_request("project_id: 1 to 32 letters, digits, - or _"));
    }
    let mut store = app.store.lock().await;
    store.next_id += 1;
    let id = format!("{}-{}", &input.entity_type[..1], store.next_id);
    entity.insert("id".into(), json!(id));
    entity.insert("entity_type".into(), json!(input.entity_type));
    entity.insert("project_id".into(), json!(input.project_id));
    let entity = Value::Object(entity);
    let offset = app.publish(change(&entity, ChangeType::Create, None, Some(entity.clone()))).await?;
    store.entities.insert(id, entity.clone());
    Ok(Json(json!({"entity": entity, "offset": offset})))
}

async fn update(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Json(fields): Json<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let fields = editable(fields)?;
    let mut store = app.store.lock().await;
    let old = store.entities.get(&id).cloned().ok_or_else(|| not_found(&id))?;
    let mut new = old.clone();
    if let Some(object) = new.as_object_mut() {
        object.extend(fields);
    }
    // The change is tagged with the project it is in after the update, and with the one it left,
    // so that a view of that project hears that the entity left it.
    let mut request = change(&new, ChangeType::Update, Some(old.clone()), Some(new.clone()));
    if old["project_id"] != new["project_id"] {
        let previous = old["project_id"].as_str().unwrap_or_default().to_owned();
        request.tags.insert("previous_project_id".into(), previous);
    }
    let offset = app.publish(request).await?;
    store.entities.insert(id, new.clone());
    Ok(Json(json!({"entity": new, "offset": offset})))
}

async fn delete(State(app): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut store = app.store.lock().await;
    let old = store.entities.get(&id).cloned().ok_or_else(|| not_found(&id))?;
    let offset = app.publish(change(&old, ChangeType::Delete, Some(old.clone()), None)).await?;
    store.entities.remove(&id);
    Ok(Json(json!({"offset": offset})))
}

#[derive(Deserialize)]
struct BulkInput {
    project_id: String,
    status: String,
}

/// `POST /app/bulk`: sets the status of every task of a project, published as one `bulk` change
/// whose summary says what to apply.
async fn bulk(State(app): State<Shared>, Json(input): Json<BulkInput>) -> Result<Json<Value>, ApiError> {
    if !valid_name(&input.project_id) || input.status.is_empty() || input.status.len() > 32 {
        return Err(bad_request("project_id: 1 to 32 letters, digits, - or _; status: 1 to 32 characters"));
    }
    let mut store = app.store.lock().await;
    let ids: Vec<String> = store
        .entities
        .values()
        .filter(|e| e["entity_type"] == "task" && e["project_id"] == input.project_id.as_str())
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    let summary = json!({"ids": ids, "set": {"status": input.status}});
    let mut request =
        change(&json!({"entity_type": "task", "project_id": input.project_id}), ChangeType::Bulk, None, None);
    request.summary = Some(summary.clone());
    let offset = app.publish(request).await?;
    for id in &ids {
        if let Some(entity) = store.entities.get_mut(id) {
            entity["status"] = json!(input.status);
        }
    }
    Ok(Json(json!({"summary": summary, "offset": offset})))
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
}

/// Demo sign-in: anyone may be any user. A real application mints the token after its own login.
async fn token(State(app): State<Shared>, Query(query): Query<TokenQuery>) -> Result<Json<Value>, ApiError> {
    if !valid_name(&query.user) {
        return Err(bad_request("user: 1 to 32 letters, digits, - or _"));
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(app.secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"sub": query.user, "exp": exp}), &key)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign token: {e}")))?;
    Ok(Json(json!({"token": token})))
}

fn static_routes() -> Router<Shared> {
    let files: HashMap<&str, (&str, &str)> = HashMap::from([
        ("app.js", ("text/javascript", include_str!("../static/app.js"))),
        ("patch.js", ("text/javascript", include_str!("../static/patch.js"))),
        ("vendor/centrifuge.js", ("text/javascript", include_str!("../static/vendor/centrifuge.js"))),
    ]);
    let files = Arc::new(files);
    Router::new().route("/", get(|| async { Html(include_str!("../static/index.html")) })).route(
        "/static/{*path}",
        get(move |Path(path): Path<String>| {
            let files = files.clone();
            async move {
                match files.get(path.as_str()) {
                    Some((kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
                    None => (StatusCode::NOT_FOUND, "no such file").into_response(),
                }
            }
        }),
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
    let node = Node::new(config)?;
    let app = Arc::new(App { node: node.clone(), store: Mutex::new(Store::default()), secret });

    let routes = Router::new()
        .merge(static_routes())
        .route("/app/token", get(token))
        .route("/app/entities", get(snapshot).post(create))
        .route("/app/entities/{id}", patch(update).delete(delete))
        .route("/app/bulk", post(bulk))
        .with_state(app)
        .merge(node.router());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("example-entity-sync: open http://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    herald_server::serve_app(node, routes, listener, herald_server::shutdown_signal(), Duration::from_secs(10)).await?;
    Ok(())
}
