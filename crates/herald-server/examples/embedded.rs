//! Herald inside an existing axum application: the node's routes are merged into the app's own
//! router, and in-process code publishes domain events (here, process-monitoring samples) that
//! WebSocket clients receive.
//!
//! Run: `cargo run -p herald-server --example embedded`, then in another terminal
//! `cargo run -p herald -- subscribe monitoring:line-1 --url http://127.0.0.1:3000`
//! (the example runs in insecure mode, so no token is needed).

use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
struct Sample {
    item: &'static str,
    value: f64,
    sequence: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = herald_config::embedded_defaults();
    config.client.insecure = true;
    config.channel.namespaces.push(herald_config::Namespace {
        name: "monitoring".into(),
        options: config.channel.without_namespace.clone(),
    });
    let node = herald_server::Node::new(config)?;

    // RPC: clients can ask the application for the current control limits.
    node.on_rpc("control_limits", |_ctx, _data| async {
        let limits = serde_json::value::to_raw_value(&serde_json::json!({"lower": 9.5, "upper": 10.5}))
            .map_err(|_| herald_server::ProtocolError::internal())?;
        Ok(Some(limits.into()))
    });

    let app = Router::new().route("/", get(|| async { "my application" })).merge(node.router());

    // The domain event bus: in-process publishes, no HTTP round trip.
    let bus = node.clone();
    tokio::spawn(async move {
        let mut sequence = 0;
        loop {
            sequence += 1;
            let sample = Sample { item: "line-1", value: 10.0 + (sequence as f64).sin() / 2.0, sequence };
            if let Err(error) = bus.publish_json("monitoring:line-1", &sample).await {
                eprintln!("publish failed: {error}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("application with embedded Herald on http://127.0.0.1:3000 (ws://127.0.0.1:3000/connection/websocket)");
    herald_server::serve_app(node, app, listener, herald_server::shutdown_signal(), Duration::from_secs(10)).await?;
    Ok(())
}
