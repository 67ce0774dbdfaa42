//! Change events: an entity's create/update/delete/bulk change, published as an envelope that
//! carries an RFC 6902 JSON Patch from the old to the new document and the changed top-level
//! fields. Subscribers choose the full form (with `new`) or the compact patch-only form.

use crate::protocol::{Audience, RawJson};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Bulk,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Bulk => "bulk",
        }
    }
}

/// `POST /api/publish_change` and `Node::publish_change`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    pub channel: String,
    pub entity_type: String,
    #[serde(default)]
    pub entity_id: String,
    pub change_type: ChangeType,
    #[serde(default)]
    pub old: Option<Value>,
    #[serde(default)]
    pub new: Option<Value>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub feature_area: Option<String>,
    #[serde(default)]
    pub summary: Option<Value>,
    #[serde(default)]
    pub audience: Option<Audience>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Herald extension: how urgently slow subscribers must get it (default: the namespace's).
    #[serde(default)]
    pub priority: Option<crate::protocol::Priority>,
}

/// The envelope as subscribers see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeEnvelope {
    pub entity_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entity_id: String,
    pub change_type: ChangeType,
    pub changed_fields: Vec<String>,
    pub patch: json_patch::Patch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_area: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
}

/// A change ready to publish: both forms of the data, and the tags filters can use.
#[derive(Debug, Clone)]
pub struct PreparedChange {
    pub full: RawJson,
    pub patch_only: RawJson,
    pub tags: BTreeMap<String, String>,
}

/// Top-level fields that differ between two documents (all of them when either is not an object).
pub fn changed_fields(old: Option<&Value>, new: Option<&Value>) -> Vec<String> {
    let empty = Map::new();
    let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
    let new_map = new.and_then(Value::as_object).unwrap_or(&empty);
    let mut fields: Vec<String> =
        old_map.keys().chain(new_map.keys()).filter(|k| old_map.get(*k) != new_map.get(*k)).cloned().collect();
    fields.sort();
    fields.dedup();
    fields
}

/// A document's `id` field, as a string.
fn id_of(document: &Value) -> Option<String> {
    match document.get("id")? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

fn raw(value: &impl Serialize) -> Result<RawJson, String> {
    serde_json::value::to_raw_value(value).map(Arc::from).map_err(|e| e.to_string())
}

impl ChangeRequest {
    /// Checks the request and computes the patch; nothing is published when this fails.
    pub fn prepare(&self) -> Result<PreparedChange, String> {
        if self.entity_type.is_empty() {
            return Err("entity_type is required".into());
        }
        let (old, new) = (self.old.as_ref(), self.new.as_ref());
        match self.change_type {
            ChangeType::Create if new.is_none() => return Err("a create needs `new`".into()),
            ChangeType::Update if old.is_none() || new.is_none() => {
                return Err("an update needs `old` and `new`".into())
            }
            ChangeType::Delete if self.entity_id.is_empty() && old.and_then(id_of).is_none() => {
                return Err("a delete needs `entity_id`, or `old` with an `id`".into())
            }
            ChangeType::Bulk if self.summary.is_none() => return Err("a bulk change needs `summary`".into()),
            _ => {}
        }
        if self.change_type != ChangeType::Bulk && self.entity_id.is_empty() && self.change_type != ChangeType::Delete {
            return Err("entity_id is required".into());
        }
        let patch = match self.change_type {
            ChangeType::Create | ChangeType::Update => {
                json_patch::diff(old.unwrap_or(&Value::Null), new.unwrap_or(&Value::Null))
            }
            ChangeType::Delete | ChangeType::Bulk => json_patch::Patch(Vec::new()),
        };
        // Subscribers must know which entity went: a delete names it even when only `old` did.
        let entity_id = match (self.entity_id.is_empty(), self.change_type) {
            (true, ChangeType::Delete) => old.and_then(id_of).unwrap_or_default(),
            _ => self.entity_id.clone(),
        };
        let mut envelope = ChangeEnvelope {
            entity_type: self.entity_type.clone(),
            entity_id,
            change_type: self.change_type,
            changed_fields: changed_fields(old, new),
            patch,
            new: self.new.clone(),
            feature_area: self.feature_area.clone(),
            summary: self.summary.clone(),
        };
        let full = raw(&envelope)?;
        envelope.new = None;
        let patch_only = raw(&envelope)?;
        let mut tags = self.tags.clone();
        tags.insert("entity_type".into(), self.entity_type.clone());
        tags.insert("change_type".into(), self.change_type.as_str().into());
        if let Some(area) = &self.feature_area {
            tags.insert("feature_area".into(), area.clone());
        }
        Ok(PreparedChange { full, patch_only, tags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn request(change_type: ChangeType, old: Option<Value>, new: Option<Value>) -> ChangeRequest {
        ChangeRequest {
            channel: "c".into(),
            entity_type: "task".into(),
            entity_id: "1".into(),
            change_type,
            old,
            new,
            tags: BTreeMap::new(),
            feature_area: Some("billing".into()),
            summary: None,
            audience: None,
            idempotency_key: None,
            priority: None,
        }
    }

    #[test]
    fn update_envelope_in_both_forms() {
        let prepared = request(
            ChangeType::Update,
            Some(json!({"title": "a", "status": "open", "size": 3})),
            Some(json!({"title": "a", "status": "done", "size": 3, "owner": "u1"})),
        )
        .prepare()
        .unwrap();
        let full: Value = serde_json::from_str(prepared.full.get()).unwrap();
        assert_eq!(full["changed_fields"], json!(["owner", "status"]));
        assert_eq!(full["new"]["status"], json!("done"));
        let compact: Value = serde_json::from_str(prepared.patch_only.get()).unwrap();
        assert!(compact.get("new").is_none());
        assert_eq!(compact["patch"], full["patch"]);
        assert_eq!(prepared.tags["entity_type"], "task");
        assert_eq!(prepared.tags["change_type"], "update");
        assert_eq!(prepared.tags["feature_area"], "billing");
    }

    #[test]
    fn a_delete_names_its_entity_from_old_when_the_id_is_not_given() {
        let mut delete = request(ChangeType::Delete, Some(json!({"id": 7, "title": "gone"})), None);
        delete.entity_id.clear();
        let full: Value = serde_json::from_str(delete.prepare().unwrap().full.get()).unwrap();
        assert_eq!(full["entity_id"], json!("7"));
        let mut anonymous = request(ChangeType::Delete, Some(json!({"title": "no id"})), None);
        anonymous.entity_id.clear();
        assert!(anonymous.prepare().unwrap_err().contains("entity_id"));
    }

    #[test]
    fn missing_parts_are_refused() {
        assert!(request(ChangeType::Update, None, Some(json!({}))).prepare().is_err());
        assert!(request(ChangeType::Create, None, None).prepare().is_err());
        assert!(request(ChangeType::Bulk, None, None).prepare().is_err());
        let mut no_type = request(ChangeType::Create, None, Some(json!({})));
        no_type.entity_type.clear();
        assert!(no_type.prepare().is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c/~]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn applying_the_patch_to_old_gives_new(old in json_value(), new in json_value()) {
            let prepared = request(ChangeType::Update, Some(old.clone()), Some(new.clone())).prepare().unwrap();
            let envelope: ChangeEnvelope = serde_json::from_str(prepared.patch_only.get()).unwrap();
            let mut document = old;
            json_patch::patch(&mut document, &envelope.patch).unwrap();
            prop_assert_eq!(document, new);
        }
    }
}
