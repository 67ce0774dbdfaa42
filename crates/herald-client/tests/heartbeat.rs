//! Heartbeats against a scripted server: the client answers pings, and replaces a connection
//! that went silent.

use futures_util::{SinkExt, StreamExt};
use herald_client::{Client, ConnectionState};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// What the scripted server saw on each connection.
#[derive(Debug, PartialEq)]
enum Seen {
    Connect { connection: usize },
    Pong { connection: usize },
}

/// Accepts connections; answers connect announcing a 1 s ping interval, pings once, waits for
/// the pong, then says nothing more.
async fn silent_server() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/connection/websocket", listener.local_addr().expect("addr"));
    let (seen, report) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut connection = 0;
        while let Ok((stream, _)) = listener.accept().await {
            connection += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                let Some(Ok(Message::Text(text))) = socket.next().await else { return };
                let command: Value = serde_json::from_str(text.as_str()).expect("connect command is JSON");
                assert!(command.get("connect").is_some(), "{command}");
                let _ = seen.send(Seen::Connect { connection });
                let reply = format!(
                    r#"{{"id":{},"connect":{{"client":"c{connection}","ping":1,"pong":true}}}}"#,
                    command["id"]
                );
                let _ = socket.send(Message::Text(reply.into())).await;
                let _ = socket.send(Message::Text("{}".into())).await;
                if let Some(Ok(Message::Text(text))) = socket.next().await {
                    if text.as_str() == "{}" {
                        let _ = seen.send(Seen::Pong { connection });
                    }
                }
                // Silence, with the socket open: only the client's heartbeat check can notice.
                while socket.next().await.is_some() {}
            });
        }
    });
    (url, report)
}

async fn next(report: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, report.recv()).await.expect("in time").expect("server running")
}

#[tokio::test]
async fn answers_pings_and_replaces_a_silent_connection() {
    let (url, mut report) = silent_server().await;
    let client = Client::builder(url)
        .max_server_ping_delay(Duration::from_millis(300))
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(50))
        .build();
    let mut state = client.state();
    client.connect();
    assert_eq!(next(&mut report).await, Seen::Connect { connection: 1 });
    assert_eq!(next(&mut report).await, Seen::Pong { connection: 1 });
    // 1 s + 0.3 s after the last frame the connection is presumed dead and replaced.
    let started = tokio::time::Instant::now();
    let error = tokio::time::timeout(WAIT, async {
        loop {
            state.changed().await.expect("client alive");
            if let ConnectionState::Connecting { last_error: Some(error), .. } = &*state.borrow_and_update() {
                return error.clone();
            }
        }
    })
    .await
    .expect("reconnecting in time");
    assert!(error.contains("presumed dead"), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(1200), "too early: {:?}", started.elapsed());
    assert_eq!(next(&mut report).await, Seen::Connect { connection: 2 });
    assert_eq!(next(&mut report).await, Seen::Pong { connection: 2 });
}
