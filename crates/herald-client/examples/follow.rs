//! Follows a channel: prints each publication, acknowledges it, and reports connection changes.
//!
//! Against a development server (`herald serve --dev`):
//!
//! ```text
//! cargo run -p herald-client --example follow -- ws://127.0.0.1:8000/connection/websocket news
//! herald publish news '{"hello": "world"}' --tag kind=greeting
//! ```
//!
//! With `HERALD_TOKEN` set, it connects with that token; `KIND=greeting` keeps only publications
//! tagged `kind=greeting` (the namespace needs `allow_tags_filter`).

use futures_util::StreamExt;
use herald_client::{filter, Client, ConnectionState, SubscribeOptions, SubscriptionEvent};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8000/connection/websocket".into());
    let channel = args.next().unwrap_or_else(|| "news".into());

    let mut builder =
        Client::builder(url).name("follow-example").reconnect_delay(Duration::from_secs(3), Duration::from_secs(30));
    if let Ok(token) = std::env::var("HERALD_TOKEN") {
        builder = builder.token(token);
    }
    let client = builder.build();

    // Connection changes, as they happen.
    let mut state = client.state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            match &*state.borrow_and_update() {
                ConnectionState::Connected { client } => eprintln!("connected as {client}"),
                ConnectionState::Connecting { attempt, retry_in: Some(delay), last_error } => {
                    eprintln!(
                        "connection lost ({}); attempt {attempt} in {delay:.1?}",
                        last_error.as_deref().unwrap_or("?")
                    )
                }
                ConnectionState::Connecting { .. } => eprintln!("connecting..."),
                ConnectionState::Disconnected { code, reason } => eprintln!("disconnected for good: {code} {reason}"),
            }
        }
    });
    client.connect();

    let mut options = SubscribeOptions::new().auto_ack(true);
    if let Ok(kind) = std::env::var("KIND") {
        options = options.tag_filter(filter::tag_eq("kind", &kind));
    }
    let mut subscription = client.subscribe(channel.as_str(), options).await?;
    while let Some(event) = subscription.next().await {
        match event {
            SubscriptionEvent::Publication(publication) => {
                println!("{} {}", publication.offset, publication.data.get());
            }
            SubscriptionEvent::Subscribed(info) => {
                eprintln!("subscribed to {channel} at {}:{} (recovered {})", info.epoch, info.offset, info.publications)
            }
            SubscriptionEvent::RecoveryFailed(info) => {
                eprintln!("missed publications could not be recovered (now at {}): reload your state", info.offset)
            }
            SubscriptionEvent::Unsubscribed { code, reason } => {
                eprintln!("unsubscribed: {code} {reason}");
                break;
            }
            other => eprintln!("{other:?}"),
        }
    }
    Ok(())
}
