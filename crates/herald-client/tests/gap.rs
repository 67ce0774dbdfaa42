//! Herald's gap signal end to end: a proxy stalls the connection between a real node and the
//! client, the node sheds low-priority publications for it, and once the proxy lets data through
//! again the client reports the shed offsets as a `Gap` event, in order with the publications.

mod common;

use common::*;
use herald_client::{Client, SubscribeOptions, SubscriptionEvent};
use herald_core::protocol::Priority;
use herald_server::Publish;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Far more than loopback socket buffers hold, so a stalled reader backs up into the server's
/// queue (as in herald-server's delivery tests).
const FLOOD: u64 = 2000;
const PAD: usize = 8000;

/// A TCP proxy to `target` whose server-to-client direction stops while `paused` is true.
async fn stalling_proxy(target: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let (paused, pause) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
            let (mut client_read, mut client_write) = inbound.into_split();
            let (mut server_read, mut server_write) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let mut pause = pause.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    if pause.wait_for(|paused| !paused).await.is_err() {
                        return;
                    }
                    match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_publications_arrive_as_a_gap_event_in_order() {
    let mut config = config();
    config.client.queue_max_size = 60_000;
    // The stalled connection must stay up while the test publishes.
    config.websocket.write_timeout = Duration::from_secs(30);
    let server = TestServer::start(config).await;
    let (proxy, paused) = stalling_proxy(server.addr).await;
    let client = Client::builder(format!("ws://{proxy}/connection/websocket")).token(token("lagging", None)).build();
    client.connect();
    let first_client = connected(&client).await;
    let mut sub = client.subscribe("ticks", SubscribeOptions::new()).await.expect("subscribe");
    let SubscriptionEvent::Subscribed(_) = next_event(&mut sub).await else { panic!("subscribed first") };

    paused.send_replace(true);
    let mut last = 0;
    for n in 1..=FLOOD {
        let mut publish = Publish::json("ticks", &json!({"n": n, "pad": "x".repeat(PAD)})).expect("json");
        publish.priority = Some(Priority::Low);
        last = server.node.publish(publish).await.expect("publish").offset;
    }
    paused.send_replace(false);

    let mut received = Vec::new();
    let mut gaps = BTreeSet::new();
    let mut gap_events = 0;
    while received.len() + gaps.len() < FLOOD as usize {
        match next_event(&mut sub).await {
            SubscriptionEvent::Publication(publication) => {
                assert!(!gaps.contains(&publication.offset), "{} was signalled as shed", publication.offset);
                received.push(publication.offset);
            }
            SubscriptionEvent::Gap { offsets, unnumbered } => {
                assert_eq!(unnumbered, 0, "the channel has history, so every shed publication has an offset");
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "ascending: {offsets:?}");
                for offset in offsets {
                    assert!(!received.contains(&offset), "{offset} was delivered and signalled as shed");
                    assert!(gaps.insert(offset), "{offset} signalled twice");
                }
                gap_events += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(gap_events >= 1 && !gaps.is_empty(), "the stalled connection was shed and told so");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "publications in order, once each");
    let accounted: BTreeSet<u64> = received.iter().copied().chain(gaps.iter().copied()).collect();
    assert_eq!(accounted, (1..=last).collect::<BTreeSet<u64>>(), "every offset delivered or signalled");
    // Shedding kept the connection.
    assert_eq!(connected(&client).await, first_client);
    server.stop().await;
}
