//! herald-client against a real Herald node on loopback.

mod common;

use common::*;
use herald_client::{
    filter, ChangeMode, Client, ConnectionState, Error, HistoryOptions, SubscribeOptions, SubscriptionEvent, TokenError,
};
use herald_core::Disconnect;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn connect_subscribe_publish_and_calls() {
    let server = TestServer::start(config()).await;
    let client = server.client("alice");
    let client_id = connected(&client).await;
    let mut news = client.subscribe("news", SubscribeOptions::new()).await.expect("subscribe");
    let SubscriptionEvent::Subscribed(subscribed) = next_event(&mut news).await else { panic!("subscribed first") };
    assert!(subscribed.recoverable && !subscribed.was_recovering, "{subscribed:?}");

    // From the server API and from the client itself.
    let offset = server.publish("news", json!({"data": {"n": 1}, "tags": {"kind": "api"}})).await;
    let publication = next_publication(&mut news).await;
    assert_eq!((publication.offset, data(&publication)), (offset, json!({"n": 1})));
    assert_eq!(publication.tags.get("kind").map(String::as_str), Some("api"));
    news.publish(&json!({"n": 2})).await.expect("client publish");
    let publication = next_publication(&mut news).await;
    assert_eq!(data(&publication), json!({"n": 2}));
    assert_eq!(publication.info.as_ref().map(|i| i.client.as_str()), Some(client_id.as_str()));
    assert_eq!(publication.info.as_ref().map(|i| i.user.as_str()), Some("alice"));

    let history = client.history("news", HistoryOptions { limit: 10, ..Default::default() }).await.expect("history");
    assert_eq!(history.publications.len(), 2);
    assert_eq!(history.offset, publication.offset);
    assert_eq!(history.epoch, subscribed.epoch);
    let presence = client.presence("news").await.expect("presence");
    assert_eq!(presence.get(&client_id).map(|i| i.user.as_str()), Some("alice"));
    let stats = client.presence_stats("news").await.expect("presence stats");
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    // RPC: typed results, and server errors with their code.
    server.node.on_rpc("sum", |_context, data| async move {
        let numbers: Vec<i64> = data
            .map(|raw| serde_json::from_str(raw.get()))
            .transpose()
            .map_err(|_| herald_core::ProtocolError::bad_request())?
            .unwrap_or_default();
        let total = serde_json::value::to_raw_value(&json!({"sum": numbers.iter().sum::<i64>()}))
            .map_err(|_| herald_core::ProtocolError::internal())?;
        Ok(Some(Arc::from(total)))
    });
    let answer: Value = client.rpc("sum", &[1, 2, 3]).await.expect("rpc");
    assert_eq!(answer, json!({"sum": 6}));
    let error = client.rpc::<_, Value>("nope", &json!({})).await.expect_err("unknown rpc");
    assert_eq!(error.code(), Some(108), "{error}");
    let error = client.rpc::<_, Value>("sum", &"not a list").await.expect_err("bad data");
    assert_eq!(error.code(), Some(107), "{error}");
    assert!(!error.is_temporary());

    // Refusals are errors with the server's code, and the client stays usable.
    let refused = client.subscribe("private:x", SubscribeOptions::new()).await.err().expect("refused");
    assert_eq!(refused.code(), Some(103), "{refused}");
    let again = client.subscribe("news", SubscribeOptions::new()).await.err().expect("already subscribed");
    assert!(matches!(again, Error::Invalid(_)), "{again}");

    news.unsubscribe().await.expect("unsubscribe");
    let stats = server.node.presence_stats("news").await.expect("presence stats");
    assert_eq!(stats.num_clients, 0);
    server.stop().await;
}

#[tokio::test]
async fn token_callback_renews_the_connection_before_expiry() {
    let server = TestServer::start(config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (fetched_tx, mut fetched) = tokio::sync::mpsc::unbounded_channel();
    let counter = calls.clone();
    let client = Client::builder(server.ws_url())
        .token_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let fetched = fetched_tx.clone();
            async move {
                let _ = fetched.send(n);
                // Expires in 3-4 s (whole seconds); the server closes an expired connection at once.
                Ok(token("carol", Some(4)))
            }
        })
        .build();
    let states = record_states(&client);
    client.connect();
    let client_id = connected(&client).await;
    let mut sub = client.subscribe("news", SubscribeOptions::new()).await.expect("subscribe");
    // The first token, then renewals: each before the previous one expired.
    for expected in 1..=3 {
        let n = tokio::time::timeout(WAIT, fetched.recv()).await.expect("token fetched in time").expect("callback");
        assert_eq!(n, expected);
    }
    // Past the first tokens' expiry, the same connection works.
    let offset = server.publish("news", json!({"data": "after renewals"})).await;
    assert_eq!(next_publication(&mut sub).await.offset, offset);
    assert_eq!(*client.state().borrow(), ConnectionState::Connected { client: client_id });
    let seen = states.lock().unwrap().clone();
    let connects = seen.iter().filter(|s| matches!(s, ConnectionState::Connected { .. })).count();
    assert_eq!(connects, 1, "the connection was replaced: {seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn subscription_token_callback_renews_before_expiry() {
    let server = TestServer::start(config()).await;
    let client = server.client("dave");
    let states = record_states(&client);
    let client_id = connected(&client).await;
    let (fetched_tx, mut fetched) = tokio::sync::mpsc::unbounded_channel();
    let options = SubscribeOptions::new().token_fn(move |channel: String| {
        let fetched = fetched_tx.clone();
        async move {
            let _ = fetched.send(channel.clone());
            Ok(sub_token("dave", &channel, 4))
        }
    });
    let mut private = client.subscribe("private:room", options).await.expect("subscribe with token");
    for _ in 0..3 {
        let channel = tokio::time::timeout(WAIT, fetched.recv()).await.expect("token in time").expect("callback");
        assert_eq!(channel, "private:room");
    }
    let offset = server.publish("private:room", json!({"data": 1})).await;
    assert_eq!(next_publication(&mut private).await.offset, offset);
    // Renewed with sub_refresh on the same connection, not by a 3006 disconnect and resubscribe.
    assert_eq!(*client.state().borrow(), ConnectionState::Connected { client: client_id });
    let seen = states.lock().unwrap().clone();
    let connects = seen.iter().filter(|s| matches!(s, ConnectionState::Connected { .. })).count();
    assert_eq!(connects, 1, "the connection was replaced: {seen:?}");
    let mut events = Vec::new();
    while let Ok(event) =
        tokio::time::timeout(Duration::from_millis(1), futures_util::StreamExt::next(&mut private)).await
    {
        events.push(event);
    }
    assert!(events.is_empty(), "no resubscribe: {events:?}");

    // A callback that refuses ends the subscribe with the token error.
    let refusing = SubscribeOptions::new()
        .token_fn(|_channel: String| async { Err(TokenError::Unauthorized("no access to this room".into())) });
    let error = client.subscribe("private:other", refusing).await.err().expect("refused");
    assert!(matches!(error, Error::Token(TokenError::Unauthorized(_))), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn tag_and_payload_filters_select_publications() {
    let server = TestServer::start(config()).await;
    let client = server.client("erin");
    connected(&client).await;
    let by_tag = SubscribeOptions::new().tag_filter(filter::tag_in("kind", ["task", "doc"]));
    let mut tagged = client.subscribe("work", by_tag).await.expect("tag filter");
    let other = server.client("frank");
    let by_field = SubscribeOptions::new()
        .filter(filter::and([filter::path_eq("/project", "7"), filter::not(filter::path_eq("/archived", "true"))]))
        .filter(filter::path("/priority", "gte", "9"));
    let mut fields = other.subscribe("work", by_field).await.expect("payload filter");

    let publications = [
        json!({"data": {"project": 7, "archived": false, "priority": 1}, "tags": {"kind": "task"}}), // both
        json!({"data": {"project": 7, "archived": true, "priority": 1}, "tags": {"kind": "chat"}}),  // neither
        json!({"data": {"project": 8, "priority": 10}, "tags": {"kind": "doc"}}),                    // both (priority)
        json!({"data": {"project": 8, "priority": 2}, "tags": {"kind": "doc"}}),                     // tag only
        json!({"data": {"project": "7"}}),                                                           // fields only
    ];
    let mut offsets = Vec::new();
    for body in publications {
        offsets.push(server.publish("work", body).await);
    }
    let mut seen_by_tag = Vec::new();
    for _ in 0..3 {
        seen_by_tag.push(next_publication(&mut tagged).await.offset);
    }
    assert_eq!(seen_by_tag, vec![offsets[0], offsets[2], offsets[3]]);
    let mut seen_by_field = Vec::new();
    for _ in 0..3 {
        seen_by_field.push(next_publication(&mut fields).await.offset);
    }
    assert_eq!(seen_by_field, vec![offsets[0], offsets[2], offsets[4]]);

    // A filter the server cannot compile is refused at subscribe time with 107 and where.
    let bad = SubscribeOptions::new().filter(filter::path("/x", "like", "y"));
    let error = client.subscribe("work2", bad).await.err().expect("bad filter");
    assert_eq!(error.code(), Some(107), "{error}");
    assert!(error.to_string().contains("like"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn patch_mode_receives_change_events_without_the_document() {
    let server = TestServer::start(config()).await;
    let client = server.client("grace");
    connected(&client).await;
    let mut compact = client.subscribe("tasks", SubscribeOptions::new().changes(ChangeMode::Patch)).await.unwrap();
    let other = server.client("heidi");
    let mut full = other.subscribe("tasks", SubscribeOptions::new().changes(ChangeMode::Full)).await.unwrap();
    let old = json!({"title": "Write docs", "status": "open"});
    let new = json!({"title": "Write docs", "status": "done"});
    let change = json!({"channel": "tasks", "entity_type": "task", "entity_id": "42", "change_type": "update",
        "old": old, "new": new});
    let answer = server.api("publish_change", change).await;
    assert!(answer.get("result").is_some(), "{answer}");

    let patch_form = data(&next_publication(&mut compact).await);
    assert!(patch_form.get("new").is_none(), "{patch_form}");
    assert_eq!(patch_form["patch"], json!([{"op": "replace", "path": "/status", "value": "done"}]));
    assert_eq!(patch_form["changed_fields"], json!(["status"]));
    let full_form = data(&next_publication(&mut full).await);
    assert_eq!(full_form["new"], new);
    assert_eq!(full_form["patch"], patch_form["patch"]);
    server.stop().await;
}

#[tokio::test]
async fn acknowledged_delivery_by_hand_automatically_and_not_at_all() {
    let server = TestServer::start(config()).await;
    let ignoring = server.client("ignorer");
    let automatic = server.client("auto");
    let manual = server.client("manual");
    let mut ignored = ignoring.subscribe("acks:room", SubscribeOptions::new()).await.unwrap();
    let mut auto = automatic.subscribe("acks:room", SubscribeOptions::new().auto_ack(true)).await.unwrap();
    let mut by_hand = manual.subscribe("acks:room", SubscribeOptions::new()).await.unwrap();
    let offset = server.publish("acks:room", json!({"data": {"vote": 1}, "requires_ack": true})).await;

    assert_eq!(next_publication(&mut auto).await.offset, offset);
    assert_eq!(next_publication(&mut by_hand).await.offset, offset);
    assert_eq!(by_hand.ack(offset).await.expect("ack"), 1);
    assert_eq!(next_publication(&mut ignored).await.offset, offset);

    // Unacknowledged: the server sends it again (same offset), the client drops the copies.
    eventually("redeliveries to the ignoring client", || ignored.duplicates_dropped() >= 3).await;
    eventually("the ignoring client's delivery expires", || {
        server.node.delivery_status("acks:room", offset).is_some_and(|s| !s.expired.is_empty())
    })
    .await;
    let status = server.node.delivery_status("acks:room", offset).expect("tracked");
    let users = |list: &[herald_server::acks::Recipient]| list.iter().map(|r| r.user.clone()).collect::<Vec<_>>();
    assert_eq!(users(&status.expired), vec!["ignorer"]);
    let mut acked = users(&status.acked);
    acked.sort();
    assert_eq!(acked, vec!["auto", "manual"]);
    assert!(status.acked.iter().all(|r| r.retries == 0), "{:?}", status.acked);
    assert!(status.pending.is_empty());
    assert_eq!((auto.duplicates_dropped(), by_hand.duplicates_dropped()), (0, 0));
    server.stop().await;
}

/// Nothing arrives for `period`: the check for "it did not reconnect".
async fn stays(client: &Client, period: Duration, expected: &ConnectionState) {
    let mut state = client.state();
    state.borrow_and_update();
    let changed = tokio::time::timeout(period, state.changed()).await;
    assert!(changed.is_err(), "state changed to {:?}", state.borrow());
    assert_eq!(&*state.borrow(), expected);
}

#[tokio::test]
async fn reconnect_codes_reconnect_and_terminal_codes_stop() {
    let server = TestServer::start(config()).await;
    for (code, user) in [(3001, "u3001"), (3011, "u3011"), (4000, "u4000"), (4499, "u4499")] {
        let client = server.client(user);
        let first = connected(&client).await;
        server.node.disconnect(user, "", &[], Disconnect::custom(code, "go away for a moment"));
        let state = wait_state(
            &client,
            "connected again",
            |s| matches!(s, ConnectionState::Connected { client } if *client != first),
        )
        .await;
        assert!(matches!(state, ConnectionState::Connected { .. }), "{code}: {state:?}");
    }
    for (code, user) in [(3500, "t3500"), (3503, "t3503"), (3999, "t3999"), (4500, "t4500"), (4999, "t4999")] {
        let client = server.client(user);
        connected(&client).await;
        server.node.disconnect(user, "", &[], Disconnect::custom(code, "stay away"));
        let expected = ConnectionState::Disconnected { code, reason: "stay away".into() };
        wait_state(&client, "disconnected", |s| *s == expected).await;
        // Ten times the longest reconnect delay: no attempt.
        stays(&client, Duration::from_secs(2), &expected).await;
        assert!(client.publish("news", &1).await.is_err());
        // The application may decide to connect again.
        client.connect();
        connected(&client).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn reconnect_recovers_missed_publications_once_in_order() {
    let server = TestServer::start(config()).await;
    let client = server.client("ivan");
    connected(&client).await;
    let mut sub = client.subscribe("feed", SubscribeOptions::new()).await.unwrap();
    next_event(&mut sub).await;
    let mut expected = Vec::new();
    for n in 0..3 {
        expected.push(server.publish("feed", json!({"data": {"n": n}})).await);
    }
    for offset in &expected[..3] {
        assert_eq!(next_publication(&mut sub).await.offset, *offset);
    }
    client.disconnect();
    wait_state(&client, "disconnected", |s| matches!(s, ConnectionState::Disconnected { .. })).await;
    for n in 3..8 {
        expected.push(server.publish("feed", json!({"data": {"n": n}})).await);
    }
    client.connect();
    let SubscriptionEvent::Subscribed(again) = next_event(&mut sub).await else { panic!("resubscribed") };
    assert!(again.was_recovering && again.recovered && again.publications == 5, "{again:?}");
    for n in 8..10 {
        expected.push(server.publish("feed", json!({"data": {"n": n}})).await);
    }
    for (n, offset) in expected.iter().enumerate().skip(3) {
        let publication = next_publication(&mut sub).await;
        assert_eq!((publication.offset, data(&publication)), (*offset, json!({"n": n})));
    }
    // And a server-initiated reconnect does the same.
    server.node.disconnect("ivan", "", &[], Disconnect::FORCE_RECONNECT);
    let SubscriptionEvent::Subscribed(again) = next_event(&mut sub).await else { panic!("resubscribed") };
    assert!(again.was_recovering && again.recovered, "{again:?}");
    let offset = server.publish("feed", json!({"data": {"n": 10}})).await;
    assert_eq!(next_publication(&mut sub).await.offset, offset);
    assert_eq!(sub.duplicates_dropped(), 0);
    server.stop().await;
}

#[tokio::test]
async fn failed_recovery_is_an_event_for_resync() {
    let server = TestServer::start(config()).await;
    let client = server.client("judy");
    connected(&client).await;
    let mut sub = client.subscribe("small:feed", SubscribeOptions::new()).await.unwrap();
    next_event(&mut sub).await;
    let first = server.publish("small:feed", json!({"data": 0})).await;
    assert_eq!(next_publication(&mut sub).await.offset, first);
    client.disconnect();
    wait_state(&client, "disconnected", |s| matches!(s, ConnectionState::Disconnected { .. })).await;
    // More than the history keeps (3): recovery cannot be complete.
    let mut last = 0;
    for n in 1..=6 {
        last = server.publish("small:feed", json!({"data": n})).await;
    }
    client.connect();
    let event = next_event(&mut sub).await;
    let SubscriptionEvent::RecoveryFailed(info) = event else { panic!("expected RecoveryFailed, got {event:?}") };
    assert!(info.was_recovering && !info.recovered && info.publications == 0, "{info:?}");
    assert_eq!(info.offset, last);
    // Live publications continue after it.
    let next = server.publish("small:feed", json!({"data": 7})).await;
    assert_eq!(next_publication(&mut sub).await.offset, next);
    server.stop().await;
}

#[tokio::test]
async fn first_subscribe_recovers_from_a_given_position() {
    let server = TestServer::start(config()).await;
    let client = server.client("kim");
    connected(&client).await;
    let mut offsets = Vec::new();
    for n in 0..4 {
        offsets.push(server.publish("log", json!({"data": n})).await);
    }
    let top = server.api("history", json!({"channel": "log", "limit": 0})).await;
    let epoch = top["result"]["epoch"].as_str().expect("epoch");
    let since = SubscribeOptions::new().since(offsets[1], epoch);
    let sub = client.subscribe("log", since).await.unwrap();
    let mut publications = sub.publications();
    for offset in &offsets[2..] {
        let publication = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut publications))
            .await
            .expect("in time")
            .expect("publication");
        assert_eq!(publication.offset, *offset);
    }
    server.stop().await;
}

#[tokio::test]
async fn calls_fail_clearly_when_not_connected() {
    let client = Client::builder("ws://127.0.0.1:9/connection/websocket").build();
    let error = client.publish("news", &1).await.expect_err("not connected");
    assert!(matches!(error, Error::Disconnected(_)), "{error}");
    let error = client.subscribe("news", SubscribeOptions::new()).await.err().expect("not connected");
    assert!(matches!(error, Error::Disconnected(_)), "{error}");
    // Connecting to nothing: attempts with growing, bounded delays and the error that ended each.
    let client = Client::builder("ws://127.0.0.1:9/connection/websocket")
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(100))
        .build();
    client.connect();
    let state =
        wait_state(&client, "third retry", |s| matches!(s, ConnectionState::Connecting { attempt: 3.., .. })).await;
    let ConnectionState::Connecting { retry_in: Some(delay), last_error: Some(error), .. } = state else {
        panic!("{state:?}")
    };
    assert!(delay >= Duration::from_millis(20) && delay <= Duration::from_millis(100), "{delay:?}");
    assert!(error.contains("127.0.0.1:9"), "{error}");
    client.disconnect();
    wait_state(&client, "stopped", |s| matches!(s, ConnectionState::Disconnected { code: 0, .. })).await;
}

#[tokio::test]
async fn an_application_that_falls_behind_loses_nothing_and_memory_stays_bounded() {
    let server = TestServer::start(config()).await;
    let client = Client::builder(server.ws_url()).token(token("slow", None)).event_buffer(8).build();
    client.connect();
    connected(&client).await;
    let mut sub = client.subscribe("firehose", SubscribeOptions::new()).await.unwrap();
    let mut expected = Vec::new();
    // Far more than the buffer holds, while the application reads nothing.
    for n in 0..60 {
        expected.push(server.publish("firehose", json!({"data": n})).await);
    }
    let mut received = Vec::new();
    while received.len() < expected.len() {
        match next_event(&mut sub).await {
            SubscriptionEvent::Publication(publication) => received.push(publication.offset),
            SubscriptionEvent::RecoveryFailed(info) => panic!("recovery failed: {info:?}"),
            _ => {}
        }
    }
    assert_eq!(received, expected);
    assert!(sub.overflows() >= 1, "the buffer never filled");
    // Live again afterwards.
    let offset = server.publish("firehose", json!({"data": "live"})).await;
    assert_eq!(next_publication(&mut sub).await.offset, offset);
    server.stop().await;
}

#[tokio::test]
async fn join_leave_events_and_server_unsubscribe_end_the_stream() {
    let server = TestServer::start(config()).await;
    let watcher = server.client("watcher");
    connected(&watcher).await;
    let mut room = watcher.subscribe("room", SubscribeOptions::new().join_leave(true)).await.unwrap();
    let SubscriptionEvent::Subscribed(_) = next_event(&mut room).await else { panic!("subscribed first") };
    let visitor = server.client("visitor");
    let visitor_id = connected(&visitor).await;
    let visit = visitor.subscribe("room", SubscribeOptions::new()).await.unwrap();
    // Its own join comes first, as Centrifugo sends it.
    let SubscriptionEvent::Join(own) = next_event(&mut room).await else { panic!("own join") };
    assert_eq!(own.user, "watcher");
    let SubscriptionEvent::Join(joined) = next_event(&mut room).await else { panic!("join") };
    assert_eq!((joined.user.as_str(), joined.client.as_str()), ("visitor", visitor_id.as_str()));
    drop(visit);
    let SubscriptionEvent::Leave(left) = next_event(&mut room).await else { panic!("leave") };
    assert_eq!(left.client, visitor_id);

    // The server API unsubscribes the watcher: the last event, then the stream ends.
    server.node.unsubscribe("watcher", "", "room").expect("api unsubscribe");
    let event = next_event(&mut room).await;
    let SubscriptionEvent::Unsubscribed { code, .. } = event else { panic!("expected Unsubscribed, got {event:?}") };
    assert_eq!(code, 2000);
    let end = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut room)).await.expect("ends in time");
    assert!(end.is_none(), "{end:?}");
    // The connection itself stays.
    assert!(matches!(*watcher.state().borrow(), ConnectionState::Connected { .. }));
    server.stop().await;
}
