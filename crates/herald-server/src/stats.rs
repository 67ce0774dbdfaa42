//! Per-channel delivery statistics, and the same grouped by a tag value (the per-project sync
//! status of the entity-sync scenario). Counted where publications reach this node's hub.

use herald_core::protocol::Publication;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// Subscribers on this node now (filled in when reported).
    pub subscribers: u64,
    pub publications: u64,
    pub last_offset: u64,
    /// Publications queued to subscribers.
    pub deliveries: u64,
    /// Subscriber-publication pairs not sent because of a filter or the audience.
    pub withheld: u64,
    /// Publications dropped for subscribers that could not keep up (disconnected with 3008).
    pub dropped: u64,
    /// Acknowledgements awaited (acknowledged delivery is not enabled on this node yet).
    pub acks_pending: u64,
}

impl Counters {
    fn record(&mut self, publication: &Publication, outcome: &Outcome) {
        self.publications += 1;
        self.last_offset = self.last_offset.max(publication.offset);
        self.deliveries += outcome.delivered as u64;
        self.dropped += outcome.dropped as u64;
        self.withheld += outcome.subscribers.saturating_sub(outcome.delivered + outcome.dropped) as u64;
    }
}

/// What one publication's fan-out did on this node.
pub struct Outcome {
    pub subscribers: usize,
    pub delivered: usize,
    pub dropped: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GroupCounters {
    #[serde(flatten)]
    pub counters: Counters,
    pub channels: BTreeSet<String>,
}

#[derive(Default)]
pub struct Stats {
    channels: Mutex<HashMap<String, Counters>>,
    /// tag key -> tag value -> counters of publications carrying that tag.
    tags: Mutex<HashMap<String, HashMap<String, GroupCounters>>>,
}

impl Stats {
    pub fn record(&self, channel: &str, publication: &Publication, outcome: &Outcome) {
        // Look up before inserting: names are allocated once per channel or tag value, not once
        // per publication.
        {
            let mut channels = self.channels.lock();
            match channels.get_mut(channel) {
                Some(counters) => counters.record(publication, outcome),
                None => channels.entry(channel.to_owned()).or_default().record(publication, outcome),
            }
        }
        if publication.tags.is_empty() {
            return;
        }
        let mut tags = self.tags.lock();
        for (key, value) in &publication.tags {
            let values = match tags.get_mut(key) {
                Some(values) => values,
                None => tags.entry(key.clone()).or_default(),
            };
            let group = match values.get_mut(value) {
                Some(group) => group,
                None => values.entry(value.clone()).or_default(),
            };
            group.counters.record(publication, outcome);
            if !group.channels.contains(channel) {
                group.channels.insert(channel.to_owned());
            }
        }
    }

    pub fn channels(&self) -> BTreeMap<String, Counters> {
        self.channels.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Groups by the values of one tag.
    pub fn by_tag(&self, tag: &str) -> BTreeMap<String, GroupCounters> {
        self.tags
            .lock()
            .get(tag)
            .map(|values| values.iter().map(|(value, counters)| (value.clone(), counters.clone())).collect())
            .unwrap_or_default()
    }
}
