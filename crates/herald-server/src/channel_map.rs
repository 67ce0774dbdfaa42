//! A session's subscriptions by channel, sized for the usual handful.
//!
//! A `HashMap` allocates room for at least three entries, about 300 bytes, for a connection's
//! one subscription; every idle connection pays it. A vector grown one entry at a time holds one
//! subscription in a quarter of that, and a linear search over the few channels a connection
//! subscribes to (`client.channel_limit` bounds them) is as fast as hashing the name.

pub struct ChannelMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<V> ChannelMap<V> {
    fn position(&self, channel: &str) -> Option<usize> {
        self.entries.iter().position(|(name, _)| name == channel)
    }

    pub fn contains_key(&self, channel: &str) -> bool {
        self.position(channel).is_some()
    }

    pub fn get(&self, channel: &str) -> Option<&V> {
        self.entries.iter().find(|(name, _)| name == channel).map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, channel: &str) -> Option<&mut V> {
        self.entries.iter_mut().find(|(name, _)| name == channel).map(|(_, value)| value)
    }

    /// Inserts or replaces; returns the value it replaced.
    pub fn insert(&mut self, channel: String, value: V) -> Option<V> {
        if let Some(index) = self.position(&channel) {
            return Some(std::mem::replace(&mut self.entries[index].1, value));
        }
        if self.entries.len() == self.entries.capacity() {
            // Doubling from one, not from the four a `Vec` starts with.
            self.entries.reserve_exact(self.entries.len().max(1));
        }
        self.entries.push((channel, value));
        None
    }

    pub fn remove(&mut self, channel: &str) -> Option<V> {
        let index = self.position(channel)?;
        Some(self.entries.swap_remove(index).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(name, _)| name)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelMap;

    #[test]
    fn behaves_as_a_map() {
        let mut map = ChannelMap::default();
        assert_eq!(map.insert("a".to_owned(), 1), None);
        assert_eq!(map.insert("b".to_owned(), 2), None);
        assert_eq!(map.insert("a".to_owned(), 3), Some(1));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), Some(&3));
        *map.get_mut("b").expect("b is there") += 10;
        assert_eq!(map.get("b"), Some(&12));
        assert!(map.contains_key("b") && !map.contains_key("c"));
        assert_eq!(map.remove("a"), Some(3));
        assert_eq!(map.remove("a"), None);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(map.values().sum::<i32>(), 12);
    }

    #[test]
    fn one_entry_allocates_one_slot() {
        let mut map = ChannelMap::default();
        map.insert("only".to_owned(), 0u64);
        assert_eq!(map.entries.capacity(), 1);
        for n in 0..100 {
            map.insert(format!("c{n}"), n);
        }
        assert_eq!(map.len(), 101);
        assert!((0..100).all(|n| map.get(&format!("c{n}")) == Some(&n)));
    }
}
