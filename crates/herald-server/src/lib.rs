//! Herald's node: a Centrifugo-compatible real-time server that can also be embedded.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let node = herald_server::Node::new(herald_config::embedded_defaults())?;
//! let app = axum::Router::new().merge(node.router());
//! node.publish_json("news", &serde_json::json!({"hello": "world"})).await?;
//! # let _ = app; Ok(()) }
//! ```

pub mod acks;
pub mod api;
pub mod auth;
mod channel_map;
mod client;
pub mod congestion;
mod delivery;
mod direct_write;
pub mod engine;
pub mod hub;
mod metrics;
pub mod node;
pub mod outbound;
mod router;
pub mod server;
mod shard;
pub mod stats;
pub mod view;
mod websocket;
mod ws_upgrade;
mod ws_writer;

pub use engine::{HistoryFilter, HistoryPage, StreamPosition};
pub use herald_config::Config;
pub use herald_core::{Disconnect, ProtocolError};
pub use node::{Node, NodeBuilder, NodeError, Publish, RpcContext};
pub use server::{serve, serve_app, shutdown_signal};
