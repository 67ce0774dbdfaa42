//! The client protocol over real WebSocket connections to a real server.

mod common;

use common::*;
use herald_core::protocol::Priority;
use herald_server::Publish;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn connect_with_token_subscribe_and_receive_api_publications() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let reply = client.call(json!({"connect": {"token": token("42", Some(3600), &[])}})).await;
    let connect = &reply["connect"];
    assert!(connect["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(connect["ping"], json!(25));
    assert_eq!(connect["pong"], json!(true));
    assert_eq!(connect["expires"], json!(true));

    let reply = client.call(json!({"subscribe": {"channel": "news"}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let result = server.publish("news", json!({"text": "hello"})).await;
    assert_eq!(result["offset"], json!(1));
    let publication = client.publication("news").await;
    assert_eq!(publication["data"], json!({"text": "hello"}));
    assert_eq!(publication["offset"], json!(1));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn several_commands_in_one_frame_get_all_replies() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let token = token("1", None, &[]);
    client
        .send_raw(&format!(
            "{}\n{}\n{}",
            json!({"id": 1, "connect": {"token": token}}),
            json!({"id": 2, "subscribe": {"channel": "a"}}),
            json!({"id": 3, "subscribe": {"channel": "b"}})
        ))
        .await;
    for id in 1..=3 {
        let reply = client.reply(id).await;
        assert!(reply.get("error").is_none(), "{reply}");
    }
}

#[tokio::test]
async fn missing_token_is_unauthorized_when_not_insecure() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let reply = client.call(json!({"connect": {}})).await;
    assert_eq!(reply["error"]["code"], json!(101));
    assert_eq!(client.closed().await.code, 3500);
}

#[tokio::test]
async fn anonymous_connect_in_insecure_mode() {
    let mut config = config();
    config.client.insecure = true;
    let server = TestServer::start(config).await;
    let mut client = server.connected("").await;
    // Insecure mode lets anyone into a private channel too.
    let reply = client.call(json!({"subscribe": {"channel": "$private"}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
}

#[tokio::test]
async fn invalid_tokens_disconnect_with_3500() {
    let server = TestServer::start(config()).await;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let wrong_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "1"}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"admin"}"#));
    let wrong_alg = format!("{}.{}.{}", b64(r#"{"alg":"RS256"}"#), b64(r#"{"sub":"1"}"#), b64("sig"));
    for bad in [wrong_secret, alg_none, wrong_alg, "garbage".to_owned()] {
        let mut client = server.client().await;
        client.send(json!({"connect": {"token": bad}})).await;
        assert_eq!(client.closed().await.code, 3500, "token {bad}");
    }
    // The server carries on.
    server.connected(&token("1", None, &[])).await;
}

#[tokio::test]
async fn expired_token_gets_error_109() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let reply = client.call(json!({"connect": {"token": token("1", Some(-10), &[])}})).await;
    assert_eq!(reply["error"]["code"], json!(109));
}

#[tokio::test]
async fn malformed_json_and_commands_before_connect_disconnect_with_3501() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    client.send_raw("{not json").await;
    assert_eq!(client.closed().await.code, 3501);

    let mut client = server.client().await;
    client.send(json!({"subscribe": {"channel": "news"}})).await;
    assert_eq!(client.closed().await.code, 3501);

    let mut client = server.client().await;
    client.send_raw(&"x".repeat(100_000)).await;
    assert_eq!(client.closed().await.code, 3501);

    server.connected(&token("1", None, &[])).await;
}

#[tokio::test]
async fn unknown_method_is_104_and_unknown_rpc_is_108() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    let reply = client.call(json!({"frobnicate": {}})).await;
    assert_eq!(reply["error"]["code"], json!(104));
    let reply = client.call(json!({"rpc": {"method": "nope", "data": {}}})).await;
    assert_eq!(reply["error"]["code"], json!(108));
    // Unknown fields inside a known command are ignored, for SDK forward compatibility.
    let reply = client.call(json!({"ping": {"future_field": 1}})).await;
    assert!(reply.get("ping").is_some(), "{reply}");
}

#[tokio::test]
async fn registered_rpc_answers() {
    let server = TestServer::start(config()).await;
    server.node.on_rpc("echo", |ctx, data| async move {
        let text =
            format!(r#"{{"user":"{}","got":{}}}"#, ctx.user, data.map(|d| d.get().to_owned()).unwrap_or("null".into()));
        Ok(Some(std::sync::Arc::from(serde_json::value::RawValue::from_string(text).unwrap())))
    });
    let mut client = server.connected(&token("7", None, &[])).await;
    let reply = client.call(json!({"rpc": {"method": "echo", "data": {"x": 1}}})).await;
    assert_eq!(reply["rpc"]["data"], json!({"user": "7", "got": {"x": 1}}));
}

#[tokio::test]
async fn channel_name_and_permission_errors() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    let code = |reply: serde_json::Value| reply["error"]["code"].clone();
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "x".repeat(300)}})).await), json!(107));
    assert_eq!(code(client.call(json!({"subscribe": {"channel": ""}})).await), json!(107));
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "nosuchns:room"}})).await), json!(102));
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "locked:room"}})).await), json!(103));
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "$secret"}})).await), json!(103));
    assert_eq!(code(client.call(json!({"publish": {"channel": "locked:room", "data": {}}})).await), json!(103));
    assert_eq!(code(client.call(json!({"history": {"channel": "locked:room", "limit": 1}})).await), json!(103));
    assert!(client.call(json!({"subscribe": {"channel": "news"}})).await.get("subscribe").is_some());
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "news"}})).await), json!(105));
    // User-limited channels: only the listed users.
    assert!(client.call(json!({"subscribe": {"channel": "dialog#1,2"}})).await.get("subscribe").is_some());
    assert_eq!(code(client.call(json!({"subscribe": {"channel": "dialog#2,3"}})).await), json!(103));
}

#[tokio::test]
async fn channel_limit_is_106() {
    let mut config = config();
    config.client.channel_limit = 2;
    let server = TestServer::start(config).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    for channel in ["a", "b"] {
        assert!(client.call(json!({"subscribe": {"channel": channel}})).await.get("subscribe").is_some());
    }
    let reply = client.call(json!({"subscribe": {"channel": "c"}})).await;
    assert_eq!(reply["error"]["code"], json!(106));
}

#[tokio::test]
async fn subscription_token_for_private_channel() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("5", None, &[])).await;
    let reply = client.call(json!({"subscribe": {"channel": "$vip", "token": sub_token("5", "$vip", Some(60))}})).await;
    assert_eq!(reply["subscribe"]["expires"], json!(true), "{reply}");
    let other_user =
        client.call(json!({"subscribe": {"channel": "$other", "token": sub_token("6", "$other", None)}})).await;
    assert_eq!(other_user["error"]["code"], json!(103));
    let expired =
        client.call(json!({"subscribe": {"channel": "$old", "token": sub_token("5", "$old", Some(-5))}})).await;
    assert_eq!(expired["error"]["code"], json!(109));
    let refreshed =
        client.call(json!({"sub_refresh": {"channel": "$vip", "token": sub_token("5", "$vip", Some(120))}})).await;
    assert!(refreshed["sub_refresh"]["ttl"].as_u64().is_some_and(|ttl| ttl > 60), "{refreshed}");
}

#[tokio::test]
async fn client_publish_carries_info_and_respects_namespace() {
    let server = TestServer::start(config()).await;
    let mut a = server.connected(&token("alice", None, &[])).await;
    let mut b = server.connected(&token("bob", None, &[])).await;
    b.call(json!({"subscribe": {"channel": "chat:room"}})).await;
    let reply = a.call(json!({"publish": {"channel": "chat:room", "data": {"msg": "hi"}}})).await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let publication = b.publication("chat:room").await;
    assert_eq!(publication["data"], json!({"msg": "hi"}));
    assert_eq!(publication["info"]["user"], json!("alice"));
    let missing_data = a.call(json!({"publish": {"channel": "chat:room"}})).await;
    assert_eq!(missing_data["error"]["code"], json!(107));
}

#[tokio::test]
async fn presence_and_join_leave() {
    let server = TestServer::start(config()).await;
    let mut watcher = server.connected(&token("w", None, &[])).await;
    watcher.call(json!({"subscribe": {"channel": "room", "join_leave": true}})).await;
    let mut joiner = server.connected(&token("j", None, &[])).await;
    joiner.call(json!({"subscribe": {"channel": "room"}})).await;
    // The watcher may first see its own join; wait for the joiner's.
    let join = watcher
        .wait_for("join of j", |v| {
            v["push"]["channel"] == json!("room") && v["push"]["join"]["info"]["user"] == json!("j")
        })
        .await;
    assert!(join["push"]["join"]["info"]["client"].as_str().is_some());

    let presence = watcher.call(json!({"presence": {"channel": "room"}})).await;
    let users: Vec<String> = presence["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users.len(), 2, "{presence}");
    assert!(users.contains(&"w".to_owned()) && users.contains(&"j".to_owned()));
    let stats = watcher.call(json!({"presence_stats": {"channel": "room"}})).await;
    assert_eq!(stats["presence_stats"], json!({"num_clients": 2, "num_users": 2}));

    joiner.call(json!({"unsubscribe": {"channel": "room"}})).await;
    let leave = watcher.push("room", "leave").await;
    assert_eq!(leave["info"]["user"], json!("j"));
    let stats = watcher.call(json!({"presence_stats": {"channel": "room"}})).await;
    assert_eq!(stats["presence_stats"]["num_clients"], json!(1));

    let not_subscribed = joiner.call(json!({"presence": {"channel": "room"}})).await;
    assert_eq!(not_subscribed["error"]["code"], json!(103));
}

#[tokio::test]
async fn history_limit_since_reverse() {
    let server = TestServer::start(config()).await;
    for n in 1..=5 {
        server.publish("feed", json!({"n": n})).await;
    }
    let mut client = server.connected(&token("1", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "feed"}})).await;
    let top = client.call(json!({"history": {"channel": "feed", "limit": 0}})).await;
    assert_eq!(top["history"]["offset"], json!(5));
    assert!(top["history"]["publications"].as_array().unwrap().is_empty());
    let epoch = top["history"]["epoch"].clone();

    let all = client.call(json!({"history": {"channel": "feed", "limit": -1}})).await;
    assert_eq!(all["history"]["publications"].as_array().unwrap().len(), 5);

    let since =
        client.call(json!({"history": {"channel": "feed", "limit": 10, "since": {"offset": 3, "epoch": epoch}}})).await;
    let offsets: Vec<u64> =
        since["history"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![4, 5]);

    let reverse = client.call(json!({"history": {"channel": "feed", "limit": 2, "reverse": true}})).await;
    let offsets: Vec<u64> =
        reverse["history"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![5, 4]);

    let bad_epoch =
        client.call(json!({"history": {"channel": "feed", "limit": 10, "since": {"offset": 3, "epoch": "zzz"}}})).await;
    assert_eq!(bad_epoch["error"]["code"], json!(112));
}

#[tokio::test]
async fn recovery_after_reconnect_returns_missed_publications() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    let reply = client.call(json!({"subscribe": {"channel": "stream", "recoverable": true}})).await;
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(reply["subscribe"]["recoverable"], json!(true));
    server.publish("stream", json!(1)).await;
    assert_eq!(client.publication("stream").await["offset"], json!(1));
    drop(client);

    for n in 2..=4 {
        server.publish("stream", json!(n)).await;
    }
    let mut client = server.connected(&token("1", None, &[])).await;
    let reply =
        client.call(json!({"subscribe": {"channel": "stream", "recover": true, "epoch": epoch, "offset": 1}})).await;
    assert_eq!(reply["subscribe"]["recovered"], json!(true), "{reply}");
    let data: Vec<_> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, vec![json!(2), json!(3), json!(4)]);

    let mut stale = server.connected(&token("1", None, &[])).await;
    let reply =
        stale.call(json!({"subscribe": {"channel": "stream", "recover": true, "epoch": "other", "offset": 1}})).await;
    assert_eq!(reply["subscribe"].get("recovered"), None, "{reply}");
    assert!(reply["subscribe"].get("publications").is_none());
}

/// Publishes continuously while clients subscribe with recovery: every client must see every
/// offset after its position exactly once and in order, across the recovered/live boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_has_no_gap_or_duplicate_while_publishing() {
    let mut config = config();
    // Retain and recover everything, so that "recovered: false" can only mean a real failure.
    config.channel.without_namespace.history_size = 10_000;
    config.client.recovery_max_publication_limit = 10_000;
    let server = TestServer::start(config).await;
    let total: u64 = 3_000;
    let node = server.node.clone();
    let publisher = tokio::spawn(async move {
        for n in 1..=total {
            node.publish_json("race", &json!({ "n": n })).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut checked = 0;
    let mut during_publishing = 0;
    while !publisher.is_finished() || checked == 0 {
        let top = server
            .node
            .history("race", herald_server::HistoryFilter { limit: Some(0), ..Default::default() })
            .await
            .unwrap();
        let start = top.position.offset.saturating_sub(3);
        let mut client = server.connected(&token("r", None, &[])).await;
        let reply = client
            .call(json!({"subscribe": {"channel": "race", "recover": true, "epoch": top.position.epoch, "offset": start}}))
            .await;
        assert_eq!(reply["subscribe"]["recovered"], json!(true), "{reply}");
        if !publisher.is_finished() {
            during_publishing += 1;
        }
        let mut offsets: Vec<u64> = reply["subscribe"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        let final_offset = total;
        while offsets.last().copied().unwrap_or(start) < final_offset {
            let publication = client.publication("race").await;
            offsets.push(publication["offset"].as_u64().unwrap());
        }
        let expected: Vec<u64> = (start + 1..=final_offset).collect();
        assert_eq!(offsets, expected, "gap or duplicate for a client recovering from {start}");
        checked += 1;
        if checked >= 8 {
            break;
        }
    }
    publisher.await.unwrap();
    assert!(during_publishing > 0, "no subscribe overlapped the publishing; the test proved nothing");
}

#[tokio::test]
async fn server_side_subscriptions_from_token() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let reply = client.call(json!({"connect": {"token": token("9", None, &["personal#9", "alerts"])}})).await;
    let subs = reply["connect"]["subs"].as_object().expect("subs in connect result");
    assert!(subs.contains_key("alerts") && subs.contains_key("personal#9"), "{reply}");
    server.publish("alerts", json!({"level": "high"})).await;
    assert_eq!(client.publication("alerts").await["data"], json!({"level": "high"}));
}

#[tokio::test]
async fn refresh_extends_connection_and_expiry_disconnects_with_3005() {
    let server = TestServer::start(config()).await;
    let mut client = server.client().await;
    let reply = client.call(json!({"connect": {"token": token("1", Some(2), &[])}})).await;
    assert_eq!(reply["connect"]["expires"], json!(true));
    let refreshed = client.call(json!({"refresh": {"token": token("1", Some(3600), &[])}})).await;
    assert!(refreshed["refresh"]["ttl"].as_u64().unwrap() > 3000, "{refreshed}");

    let mut expiring = server.client().await;
    expiring.call(json!({"connect": {"token": token("2", Some(1), &[])}})).await;
    assert_eq!(expiring.closed().await.code, 3005);
    // The refreshed one is still alive.
    assert!(client.call(json!({"ping": {}})).await.get("ping").is_some());
}

#[tokio::test]
async fn ping_pong_keeps_idle_connection_and_silence_gets_3012() {
    let mut config = config();
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let mut alive = server.connected(&token("1", None, &[])).await;
    let mut silent = server.connected(&token("2", None, &[])).await;
    silent.auto_pong = false;
    // The answering client lives through several ping intervals...
    while alive.pings_seen < 3 {
        assert!(alive.read_frame().await, "the answering client was disconnected: {:?}", alive.closed);
    }
    // ...while the silent one was cut off after its first unanswered ping.
    assert_eq!(silent.closed().await.code, 3012);
}

#[tokio::test]
async fn slow_client_is_disconnected_with_3008_on_high_priority_and_others_carry_on() {
    let mut config = config();
    config.client.queue_max_size = 64 * 1024;
    let server = TestServer::start(config).await;
    // A raw TCP client that completes the handshake and then never reads.
    let stalled_url = server.ws_url();
    let (mut stalled, _) = tokio_tungstenite::connect_async(&stalled_url).await.unwrap();
    use futures_util::SinkExt;
    let connect = json!({"id": 1, "connect": {"token": token("slow", None, &[])}});
    let subscribe = json!({"id": 2, "subscribe": {"channel": "firehose"}});
    stalled
        .send(tokio_tungstenite::tungstenite::Message::Text(format!("{connect}\n{subscribe}").into()))
        .await
        .unwrap();
    let mut healthy = server.connected(&token("ok", None, &[])).await;
    healthy.call(json!({"subscribe": {"channel": "firehose"}})).await;
    // Wait until the stalled client is subscribed (the hub counts it), then flood.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.node.channels("firehose").get("firehose").copied().unwrap_or(0) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "stalled client never subscribed");
        tokio::task::yield_now().await;
    }
    let big = "x".repeat(16 * 1024);
    let mut disconnected = false;
    for n in 0..2000u32 {
        // High priority is never shed: a client that cannot take it is disconnected.
        let mut publish = Publish::json("firehose", &json!({"n": n, "pad": big})).unwrap();
        publish.priority = Some(Priority::High);
        server.node.publish(publish).await.unwrap();
        assert_eq!(healthy.publication("firehose").await["data"]["n"], json!(n));
        if server.node.channels("firehose").get("firehose").copied().unwrap_or(0) == 1 {
            disconnected = true;
            break;
        }
    }
    assert!(disconnected, "the stalled client was never disconnected");
    let stats = server.node.channel_stats();
    assert!(stats["firehose"].dropped > 0, "drops are counted: {:?}", stats["firehose"]);
    // Read what the stalled client got: it ends with close code 3008.
    use futures_util::StreamExt;
    let mut code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, stalled.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(Some(frame)) = message {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(3008));
}

#[tokio::test]
async fn origin_check() {
    let mut config = config();
    config.client.allowed_origins = vec!["http://allowed.example".into()];
    let server = TestServer::start(config).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("origin", "http://allowed.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

#[tokio::test]
async fn shutdown_disconnects_clients_with_3001() {
    let server = TestServer::start(config()).await;
    let mut client = server.connected(&token("1", None, &[])).await;
    let node = server.node.clone();
    let stop = tokio::spawn(server.stop());
    assert_eq!(client.closed().await.code, 3001);
    stop.await.unwrap().unwrap();
    assert_eq!(node.info().num_clients, 0);
}
