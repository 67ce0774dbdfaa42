//! The node's HTTP routes.

use crate::node::Node;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::Router;

pub fn router(node: Node) -> Router {
    let config = node.config();
    let mut router = Router::new()
        .route("/connection/websocket", any(crate::websocket::handler))
        .route("/api/{method}", post(crate::api::handler));
    if config.health.enabled {
        router = router.route("/health", get(health));
    }
    if config.prometheus.enabled {
        router = router.route("/metrics", get(metrics));
    }
    router.with_state(node)
}

/// Always 200 while the process serves (connected clients stay connected through an engine
/// outage, so restarting the node would only hurt); the body says whether the engine is
/// reachable, for readiness checks: `{"engine": {"engine": "redis", "available": false, "error": "..."}}`.
async fn health(State(node): State<Node>) -> impl IntoResponse {
    let body = serde_json::json!({ "engine": node.engine_state() }).to_string();
    (StatusCode::OK, [("content-type", "application/json")], body)
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    crate::metrics::engine_state(&node.engine_state());
    match &node.inner.prometheus {
        Some(handle) => (StatusCode::OK, handle.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder owned by the embedding application").into_response(),
    }
}
