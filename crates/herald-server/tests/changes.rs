//! Change events with JSON Patch, subscription filters and the server-enforced audience, over
//! real sockets.

mod common;

use common::*;
use serde_json::{json, Value};

fn token_with_roles(user: &str, roles: &[&str]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "roles": roles}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn change(entity_id: &str, change_type: &str, old: Value, new: Value) -> Value {
    json!({
        "channel": "project:p1", "entity_type": "task", "entity_id": entity_id, "change_type": change_type,
        "old": old, "new": new, "feature_area": "planning", "tags": {"project_id": "p1"}
    })
}

fn project_config() -> herald_config::Config {
    let mut config = config();
    let mut options = open_namespace();
    options.allow_tags_filter = true;
    config.channel.namespaces.push(herald_config::Namespace { name: "project".into(), options });
    config
}

#[tokio::test]
async fn patch_mode_and_full_mode_receive_their_form() {
    let server = TestServer::start(project_config()).await;
    let mut full = server.connected(&token("a", None, &[])).await;
    let mut compact = server.connected(&token("b", None, &[])).await;
    full.call(json!({"subscribe": {"channel": "project:p1"}})).await;
    let reply =
        compact.call(json!({"subscribe": {"channel": "project:p1", "data": {"herald": {"changes": "patch"}}}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");

    let old = json!({"title": "Write docs", "status": "open", "body": "x".repeat(2000)});
    let new = json!({"title": "Write docs", "status": "done", "body": "x".repeat(2000)});
    let answer = server.api("publish_change", change("t1", "update", old.clone(), new.clone())).await;
    assert_eq!(answer["result"]["offset"], json!(1), "{answer}");

    let data = full.publication("project:p1").await["data"].clone();
    assert_eq!(data["new"], new);
    assert_eq!(data["changed_fields"], json!(["status"]));
    assert_eq!(data["patch"], json!([{"op": "replace", "path": "/status", "value": "done"}]));
    let publication = compact.publication("project:p1").await;
    assert!(publication["data"].get("new").is_none(), "{publication}");
    assert_eq!(publication["data"]["patch"], data["patch"]);
    assert_eq!(publication["tags"]["change_type"], json!("update"));
    assert_eq!(publication["tags"]["entity_type"], json!("task"));
    assert_eq!(publication["tags"]["feature_area"], json!("planning"));
    // Applying the patch to the old document gives the new one.
    let mut document = old;
    let patch: json_patch::Patch = serde_json::from_value(publication["data"]["patch"].clone()).unwrap();
    json_patch::patch(&mut document, &patch).unwrap();
    assert_eq!(document, new);
}

#[tokio::test]
async fn filters_select_live_recovered_and_history_publications() {
    let server = TestServer::start(project_config()).await;
    let mut tasks = server.connected(&token("a", None, &[])).await;
    // Several filters mean OR: deletes of anything, or changes in the billing area.
    let filters = json!({"herald": {"filters": [
        {"key": "change_type", "cmp": "eq", "val": "delete"},
        {"path": "/feature_area", "cmp": "eq", "val": "billing"}
    ]}});
    let reply =
        tasks.call(json!({"subscribe": {"channel": "project:p1", "data": filters.clone(), "recoverable": true}})).await;
    let epoch = reply["subscribe"]["epoch"].clone();
    let mut tagged = server.connected(&token("b", None, &[])).await;
    tagged
        .call(json!({"subscribe": {"channel": "project:p1", "tf": {"key": "entity_type", "cmp": "eq", "val": "doc"}}}))
        .await;

    let mut billing = change("t2", "update", json!({"a": 1}), json!({"a": 2}));
    billing["feature_area"] = json!("billing");
    let mut doc = change("d1", "create", Value::Null, json!({"a": 1}));
    doc["entity_type"] = json!("doc");
    server.api("publish_change", change("t1", "update", json!({"a": 1}), json!({"a": 2}))).await; // offset 1: nobody
    server.api("publish_change", billing.clone()).await; // offset 2: tasks
    server.api("publish_change", doc).await; // offset 3: tagged
    server.api("publish_change", change("t3", "delete", json!({"a": 1}), Value::Null)).await; // offset 4: tasks

    assert_eq!(tasks.publication("project:p1").await["offset"], json!(2));
    assert_eq!(tasks.publication("project:p1").await["offset"], json!(4));
    assert_eq!(tagged.publication("project:p1").await["offset"], json!(3));

    // History through the subscription shows the same selection.
    let history = tasks.call(json!({"history": {"channel": "project:p1", "limit": -1}})).await;
    let offsets: Vec<_> =
        history["history"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].clone()).collect();
    assert_eq!(offsets, vec![json!(2), json!(4)]);

    // Recovery from offset 0 with the same filters: the same selection, nothing else.
    drop(tasks);
    server.api("publish_change", billing).await; // offset 5: tasks
    let mut again = server.connected(&token("a", None, &[])).await;
    let reply = again
        .call(json!({"subscribe": {"channel": "project:p1", "data": filters, "recover": true, "epoch": epoch, "offset": 2}}))
        .await;
    assert_eq!(reply["subscribe"]["recovered"], json!(true), "{reply}");
    let offsets: Vec<_> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].clone()).collect();
    assert_eq!(offsets, vec![json!(4), json!(5)]);
}

#[tokio::test]
async fn audience_is_enforced_live_in_history_and_in_recovery() {
    let server = TestServer::start(project_config()).await;
    let mut alice = server.connected(&token_with_roles("alice", &[])).await;
    let mut bob = server.connected(&token_with_roles("bob", &["support"])).await;
    let mut admin = server.connected(&token_with_roles("root", &["admin"])).await;
    let mut carol = server.connected(&token_with_roles("carol", &[])).await;
    for client in [&mut alice, &mut bob, &mut admin, &mut carol] {
        let reply = client.call(json!({"subscribe": {"channel": "jobs", "recoverable": true}})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
    let publish = |data: Value, audience: Value| {
        let mut body = json!({"channel": "jobs", "data": data});
        if !audience.is_null() {
            body["audience"] = audience;
        }
        body
    };
    server.api("publish", publish(json!({"task": "alice-1"}), json!({"users": ["alice"]}))).await;
    server.api("publish", publish(json!({"task": "support-1"}), json!({"roles": ["support"]}))).await;
    server.api("publish", publish(json!({"queue_position": 3}), Value::Null)).await;

    let public = json!({"queue_position": 3});
    let expectations = [
        ("alice", vec![json!({"task": "alice-1"}), public.clone()]),
        ("bob", vec![json!({"task": "support-1"}), public.clone()]),
        ("root", vec![json!({"task": "alice-1"}), json!({"task": "support-1"}), public.clone()]),
        ("carol", vec![public.clone()]),
    ];
    for (client, (name, expected)) in [&mut alice, &mut bob, &mut admin, &mut carol].into_iter().zip(expectations) {
        let mut live = Vec::new();
        for _ in 0..expected.len() {
            live.push(client.publication("jobs").await["data"].clone());
        }
        assert_eq!(live, expected, "live for {name}");
        let history = client.call(json!({"history": {"channel": "jobs", "limit": -1}})).await;
        let data: Vec<_> =
            history["history"]["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
        assert_eq!(data, expected, "history for {name}");
        assert!(client.pending().iter().all(|m| m.get("push").is_none()), "{name} got more: {:?}", client.pending());
    }

    // Recovery: carol reconnects and recovers from the start; she gets only the public one.
    let top = server.api("history", json!({"channel": "jobs", "limit": 0})).await;
    let epoch = top["result"]["epoch"].clone();
    drop(carol);
    let mut carol = server.connected(&token_with_roles("carol", &[])).await;
    let reply =
        carol.call(json!({"subscribe": {"channel": "jobs", "recover": true, "epoch": epoch, "offset": 0}})).await;
    let data: Vec<_> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, vec![json!({"queue_position": 3})], "{reply}");
    // The audience itself is never sent to clients.
    assert!(!reply.to_string().contains("audience"));
}

#[tokio::test]
async fn bad_changes_filters_and_audiences_are_refused_and_publish_nothing() {
    let server = TestServer::start(project_config()).await;
    let mut client = server.connected(&token("a", None, &[])).await;
    for (data, reason) in [
        (json!({"herald": {"filters": [{"key": "k", "cmp": "like", "val": "x"}]}}), "unknown cmp"),
        (json!({"herald": {"filters": [{"path": "no-slash", "cmp": "eq", "val": "x"}]}}), "JSON Pointer"),
        (json!({"herald": {"changes": "diff"}}), "changes"),
        (json!({"herald": {"filterz": []}}), "data.herald"),
    ] {
        let reply = client.call(json!({"subscribe": {"channel": "project:p1", "data": data}})).await;
        assert_eq!(reply["error"]["code"], json!(107), "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(reason), "{reply}");
    }
    // A tag filter where the namespace does not allow it.
    let reply =
        client.call(json!({"subscribe": {"channel": "news", "tf": {"key": "k", "cmp": "eq", "val": "v"}}})).await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");

    let missing_new = server.api("publish_change", change("t1", "update", json!({"a": 1}), Value::Null)).await;
    assert_eq!(missing_new["error"]["code"], json!(107), "{missing_new}");
    let mut unknown_type = change("t1", "update", json!({}), json!({}));
    unknown_type["change_type"] = json!("upsert");
    let answer = server.api("publish_change", unknown_type).await;
    assert_eq!(answer["error"]["code"], json!(107), "{answer}");
    let answer = server.api("publish", json!({"channel": "jobs", "data": {}, "audience": {"users": "alice"}})).await;
    assert_eq!(answer["error"]["code"], json!(107), "{answer}");
    let answer = server.api("publish", json!({"channel": "jobs", "data": {}, "audience": {}})).await;
    assert_eq!(answer["error"]["code"], json!(107), "{answer}");
    // Nothing was published half-way.
    for channel in ["project:p1", "jobs"] {
        let top = server.api("history", json!({"channel": channel, "limit": 0})).await;
        assert_eq!(top["result"]["offset"], json!(0), "{channel}: {top}");
    }
}

#[tokio::test]
async fn stats_per_channel_and_per_project() {
    let server = TestServer::start(project_config()).await;
    let mut client = server.connected(&token("a", None, &[])).await;
    client.call(json!({"subscribe": {"channel": "project:p1"}})).await;
    for n in 0..3 {
        server.api("publish_change", change(&format!("t{n}"), "create", Value::Null, json!({"n": n}))).await;
    }
    let mut other = change("x", "create", Value::Null, json!({}));
    other["channel"] = json!("project:p2");
    other["tags"] = json!({"project_id": "p2"});
    server.api("publish_change", other).await;
    for _ in 0..3 {
        client.publication("project:p1").await;
    }
    let stats = server.api("stats", json!({"tag": "project_id"})).await;
    let p1 = &stats["result"]["channels"]["project:p1"];
    assert_eq!(p1["publications"], json!(3), "{stats}");
    assert_eq!(p1["last_offset"], json!(3));
    assert_eq!(p1["deliveries"], json!(3));
    assert_eq!(p1["subscribers"], json!(1));
    assert_eq!(stats["result"]["groups"]["p1"]["publications"], json!(3));
    assert_eq!(stats["result"]["groups"]["p2"]["publications"], json!(1));
    assert_eq!(stats["result"]["groups"]["p2"]["subscribers"], json!(0));
}
