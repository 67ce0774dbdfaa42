//! What one subscriber may and wants to see of a channel: the audience check (a security
//! boundary, enforced on every path), its filter, and the form of change events.
//!
//! The same [`Viewer::visible`] decides for live delivery, recovery and history, so the three
//! can never disagree.

use herald_core::filter::{Filter, FilterError, Target};
use herald_core::protocol::{FilterNode, Publication, RawJson};
use serde::Deserialize;
use serde_json::Value;
use std::cell::OnceCell;
use std::sync::Arc;

/// A subscriber's filter and change-event form. Subscribers with equal keys share one evaluation
/// and one serialized frame per publication.
#[derive(Debug, Default)]
pub struct View {
    pub key: String,
    pub filter: Option<Filter>,
    /// Change events without the full `new` document.
    pub patch_mode: bool,
    /// Recover from the user's durable cursor (subscribe-time only; not part of the key).
    pub resume: bool,
}

/// Herald's subscription options, sent by stock SDKs in the subscribe request's `data`:
/// `{"herald": {"filters": [FilterNode, ...], "changes": "patch" | "full", "resume": true}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeraldOptions {
    #[serde(default)]
    filters: Option<Vec<FilterNode>>,
    #[serde(default)]
    changes: Option<String>,
    #[serde(default)]
    resume: bool,
}

#[derive(Debug, Default, Deserialize)]
struct SubscribeData {
    #[serde(default)]
    herald: Option<HeraldOptions>,
}

impl View {
    pub fn everything() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Builds a view from a subscribe request's `tf` and `data`; errors are for a 107 reply.
    pub fn from_request(tf: Option<&FilterNode>, data: Option<&RawJson>) -> Result<Arc<Self>, String> {
        let options = match data {
            Some(raw) => match serde_json::from_str::<SubscribeData>(raw.get()) {
                Ok(data) => data.herald.unwrap_or_default(),
                // Data that is not Herald's object belongs to the application: ignore it.
                Err(_) if !raw.get().contains("\"herald\"") => HeraldOptions::default(),
                Err(e) => return Err(format!("data.herald: {e}")),
            },
            None => HeraldOptions::default(),
        };
        let patch_mode = match options.changes.as_deref() {
            None | Some("full") => false,
            Some("patch") => true,
            Some(other) => return Err(format!("data.herald.changes: {other:?} is not \"full\" or \"patch\"")),
        };
        let describe = |prefix: &str, e: FilterError| format!("{prefix}: {e}");
        let tags = tf.map(Filter::compile).transpose().map_err(|e| describe("tf", e))?;
        let fields = options
            .filters
            .as_deref()
            .map(Filter::any_of)
            .transpose()
            .map_err(|e| describe("data.herald.filters", e))?;
        let filter = match (tags, fields) {
            (Some(a), Some(b)) => Some(a.and(b)),
            (a, b) => a.or(b),
        };
        let key = format!("{}|{}", filter.as_ref().map_or("", Filter::key), if patch_mode { "patch" } else { "full" });
        Ok(Arc::new(Self { key, filter, patch_mode, resume: options.resume }))
    }

    /// Whether the publication's content passes the filter. `data` caches the parsed payload
    /// across views of one publication.
    pub fn passes(&self, publication: &Publication, data: &OnceCell<Option<Value>>) -> bool {
        let Some(filter) = &self.filter else { return true };
        let data = if filter.needs_data() {
            data.get_or_init(|| serde_json::from_str(publication.data.get()).ok()).as_ref()
        } else {
            None
        };
        filter.matches(&Target { tags: &publication.tags, data })
    }

    /// The publication in the form this view sends.
    pub fn shape(&self, publication: &Arc<Publication>) -> Arc<Publication> {
        match publication.meta.as_ref().and_then(|m| m.patch_data.as_ref()) {
            Some(patch) if self.patch_mode => Arc::new(publication.with_data(patch.clone())),
            _ => publication.clone(),
        }
    }

    pub fn uses_patch_form(&self, publication: &Publication) -> bool {
        self.patch_mode && publication.meta.as_ref().is_some_and(|m| m.patch_data.is_some())
    }
}

/// Who is subscribed, for audience checks.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub user: String,
    pub roles: Arc<[String]>,
}

impl Viewer {
    pub fn admitted(&self, publication: &Publication) -> bool {
        publication.audience().is_none_or(|audience| audience.admits(&self.user, &self.roles))
    }

    /// The publication as this viewer receives it through `view`, or `None`.
    pub fn visible(&self, view: &View, publication: &Arc<Publication>) -> Option<Arc<Publication>> {
        if !self.admitted(publication) || !view.passes(publication, &OnceCell::new()) {
            return None;
        }
        Some(view.shape(publication))
    }
}
