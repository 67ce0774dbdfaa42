//! Herald as a library: merged into an application's axum router, publishing from in-process code.

mod common;

use axum::routing::get;
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn node_routes_merge_into_an_application_router() {
    let node = herald_server::Node::new(config()).unwrap();
    let app = axum::Router::new().route("/app", get(|| async { "application route" })).merge(node.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(herald_server::serve_app(
        node.clone(),
        app,
        listener,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    let body = reqwest::get(format!("http://{addr}/app")).await.unwrap().text().await.unwrap();
    assert_eq!(body, "application route");

    let mut client = Client::open(&format!("ws://{addr}/connection/websocket")).await;
    client.call(json!({"connect": {"token": token("1", None, &[])}})).await;
    client.call(json!({"subscribe": {"channel": "monitoring"}})).await;
    // The in-process event bus: a domain event published from Rust code.
    #[derive(serde::Serialize)]
    struct Violation {
        rule: &'static str,
        value: f64,
    }
    let result = node.publish_json("monitoring", &Violation { rule: "above-ucl", value: 10.7 }).await.unwrap();
    assert_eq!(result.offset, 1);
    assert_eq!(client.publication("monitoring").await["data"], json!({"rule": "above-ucl", "value": 10.7}));

    stop.send(()).unwrap();
    assert_eq!(client.closed().await.code, 3001);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn send_messages_reach_the_application_handler() {
    let server = TestServer::start(config()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    server.node.on_message(move |ctx, data| {
        let _ = tx.send((ctx.user, data.map(|d| d.get().to_owned())));
    });
    let mut client = server.connected(&token("u1", None, &[])).await;
    client.send_raw(r#"{"send":{"data":{"hello":"app"}}}"#).await;
    let (user, data) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(user, "u1");
    assert_eq!(data.as_deref(), Some(r#"{"hello":"app"}"#));
}
