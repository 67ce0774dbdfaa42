//! How records are kept in the file: JSON, so they stay readable with any tool and a schema
//! change can be detected rather than misread.

use herald_core::protocol::{AckPolicy, Audience, ClientInfo, Priority, Publication, PublicationMeta, RawJson};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
pub struct StreamRecord {
    pub epoch: String,
    pub top: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub expires_ms: u64,
    pub offset: u64,
    pub epoch: String,
}

/// The part of any record the expiry sweep reads.
#[derive(Debug, Deserialize)]
pub struct Expiry {
    pub expires_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StoredPublication {
    pub expires_ms: u64,
    pub data: RawJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckPolicy>,
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CursorRecord {
    pub offset: u64,
    pub epoch: String,
}

impl StoredPublication {
    pub fn from_publication(publication: &Publication, expires_ms: u64) -> Self {
        let meta = publication.meta.as_deref();
        Self {
            expires_ms,
            data: publication.data.clone(),
            info: publication.info.clone(),
            offset: publication.offset,
            tags: publication.tags.clone(),
            time: publication.time,
            audience: meta.and_then(|m| m.audience.clone()),
            patch_data: meta.and_then(|m| m.patch_data.clone()),
            ack: meta.and_then(|m| m.ack),
            priority: meta.map_or(Priority::Normal, |m| m.priority),
        }
    }

    pub fn into_publication(self) -> Publication {
        let meta =
            (self.audience.is_some() || self.patch_data.is_some() || self.ack.is_some() || !self.priority.is_normal())
                .then(|| {
                    Arc::new(PublicationMeta {
                        audience: self.audience,
                        patch_data: self.patch_data,
                        ack: self.ack,
                        priority: self.priority,
                    })
                });
        Publication { data: self.data, info: self.info, offset: self.offset, tags: self.tags, time: self.time, meta }
    }
}
