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

async fn health() -> impl IntoResponse {
    (StatusCode::OK, [("content-type", "application/json")], "{}")
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    match &node.inner.prometheus {
        Some(handle) => (StatusCode::OK, handle.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder owned by the embedding application").into_response(),
    }
}
