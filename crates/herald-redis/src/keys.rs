//! Key and Pub/Sub channel names. Everything starts with the configured prefix. A channel's
//! stream, meta and idempotency keys share the hash tag `{channel}`, so the publish script's keys
//! stay in one slot should Redis Cluster be supported later.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{channel}}}", self.prefix)
    }

    pub fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{channel}}}", self.prefix)
    }

    /// The channel's length goes first so that no (channel, key) pair collides with another.
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}.idempotency.{}.{{{channel}}}.{key}", self.prefix, channel.len())
    }

    pub fn pubsub_prefix(&self) -> String {
        format!("{}.channel.", self.prefix)
    }

    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}.channel.{channel}", self.prefix)
    }

    pub fn presence(&self, channel: &str) -> String {
        format!("{}.presence.{{{channel}}}", self.prefix)
    }

    pub fn presence_expiry(&self, channel: &str) -> String {
        format!("{}.presence-expiry.{{{channel}}}", self.prefix)
    }

    pub fn cursors(&self, user: &str) -> String {
        format!("{}.cursors.{user}", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    pub fn nodes_expiry(&self) -> String {
        format!("{}.nodes-expiry", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn idempotency_keys_of_different_pairs_differ() {
        let keys = Keys::new("p");
        assert_ne!(keys.idempotency("a:b", "c"), keys.idempotency("a", "b}.c"));
        assert_ne!(keys.idempotency("a", "b.c"), keys.idempotency("a}.1.b", "c"));
        assert_eq!(keys.stream("news"), "p.stream.{news}");
    }
}
