//! Publications written straight to idle sockets by the fan-out, and everything else written by
//! the connections' tasks, on the same connections at once: every frame arrives whole, once and
//! in order, also for readers with small receive buffers that fall behind for moments. (That a
//! busy task keeps the socket to itself is checked directly in `direct_write`'s unit tests.)

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const SUBSCRIBERS: usize = 12;
const TOTAL: u64 = 240;
/// Publications larger than a lagging reader's receive buffer.
const PAD: usize = 6000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_task_writes_never_interleave_or_reorder_a_connections_frames() {
    let server = TestServer::start(config()).await;
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let lagging = i % 2 == 1;
        let mut client = if lagging {
            let mut client = Client::open_with_small_receive_buffer(&server.ws_url()).await;
            let reply = client.call(json!({"connect": {"token": token(&format!("u{i}"), None, &[])}})).await;
            assert!(reply.get("connect").is_some(), "{reply}");
            client
        } else {
            server.connected(&token(&format!("u{i}"), None, &[])).await
        };
        let reply = client.call(json!({"subscribe": {"channel": "mix"}})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            let mut asked = Vec::new();
            while (offsets.len() as u64) < TOTAL {
                let publication = client.publication("mix").await;
                offsets.push(publication["offset"].as_u64().expect("an offset"));
                if offsets.len() % 10 == 0 {
                    // The server answers the ping as it reads, and the history reply is queued for
                    // the task, both while publications are being written directly.
                    client.send_ping().await;
                    asked.push(client.send(json!({"history": {"channel": "mix", "limit": 0}})).await);
                    if lagging {
                        // Falls behind for a moment, so that writes find its socket full.
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }
            for id in asked {
                let reply = client.reply(id).await;
                assert!(reply.get("history").is_some(), "{reply}");
            }
            offsets
        }));
    }
    // Four back to back go through the connections' tasks; the first after a pause is written
    // by the fan-out itself (a channel quiet for 5 ms).
    let pad = "x".repeat(PAD);
    for n in 1..=TOTAL {
        server.node.publish_json("mix", &json!({ "n": n, "pad": pad })).await.expect("publish");
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
    }
    for reader in readers {
        let offsets = reader.await.expect("a reader");
        assert_eq!(offsets, (1..=TOTAL).collect::<Vec<_>>(), "every publication once, in order");
    }
}
