//! Bytes on the wire for a change event in patch mode versus full mode: entities of about 1 KB,
//! 10 KB and 100 KB with 1, 2 or 3 top-level fields changed. Prints a markdown table.
//!
//! Run: `cargo run --release -p herald-core --example change_sizes`

use herald_core::change::{ChangeRequest, ChangeType};
use herald_core::protocol::{reply, Publication};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// An entity of roughly `bytes` bytes: 20 fields of text plus small ones.
fn entity(bytes: usize) -> Value {
    let mut fields = Map::new();
    fields.insert("id".into(), json!("task-42"));
    fields.insert("status".into(), json!("open"));
    fields.insert("priority".into(), json!(3));
    fields.insert("assignee".into(), json!("user-7"));
    for i in 0..20 {
        fields.insert(format!("text_{i}"), json!("lorem ipsum ".repeat(bytes / 20 / 12 + 1)));
    }
    Value::Object(fields)
}

fn wire_size(channel: &str, data: &serde_json::value::RawValue, offset: u64) -> usize {
    let publication = Publication {
        data: std::sync::Arc::from(data.to_owned()),
        info: None,
        offset,
        tags: BTreeMap::new(),
        time: 0,
        meta: None,
    };
    reply::push(channel, "pub", &publication).len()
}

fn main() {
    println!("| entity | fields changed | full mode bytes | patch mode bytes | patch / full |");
    println!("|---|---|---|---|---|");
    for size in [1_000, 10_000, 100_000] {
        let old = entity(size);
        for changed in 1..=3 {
            let mut new = old.clone();
            let changes = [("status", json!("done")), ("priority", json!(1)), ("assignee", json!("user-9"))];
            for (field, value) in changes.iter().take(changed) {
                new[*field] = value.clone();
            }
            let request = ChangeRequest {
                channel: "project:p1".into(),
                entity_type: "task".into(),
                entity_id: "task-42".into(),
                change_type: ChangeType::Update,
                old: Some(old.clone()),
                new: Some(new),
                tags: BTreeMap::new(),
                feature_area: None,
                summary: None,
                audience: None,
                idempotency_key: None,
                priority: None,
            };
            let prepared = match request.prepare() {
                Ok(prepared) => prepared,
                Err(error) => {
                    eprintln!("prepare failed: {error}");
                    return;
                }
            };
            let full = wire_size("project:p1", &prepared.full, 7);
            let patch = wire_size("project:p1", &prepared.patch_only, 7);
            let actual = serde_json::to_string(&old).map(|s| s.len()).unwrap_or(0);
            println!("| {actual} B | {changed} | {full} | {patch} | {:.4} |", patch as f64 / full as f64);
        }
    }
}
