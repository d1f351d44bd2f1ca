//! A size-bounded map with first-in-first-out eviction, so the session counters
//! and the data cache cannot grow without limit whatever clients send.

use std::collections::{HashMap, VecDeque};

/// String-keyed map holding at most `capacity` entries; inserting a new key into a
/// full map evicts the oldest inserted key. Overwriting a key keeps its place.
pub(crate) struct BoundedMap<V> {
    capacity: usize,
    map: HashMap<String, V>,
    /// Keys in insertion order; always the same key set as `map`.
    order: VecDeque<String>,
}

impl<V> BoundedMap<V> {
    /// An empty map; a capacity of 0 is raised to 1 so an insert always sticks.
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedMap {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The value under `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// Mutable access to the value under `key`, if any.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Inserts or overwrites; evicts the oldest key first when a new key would
    /// exceed the capacity.
    pub(crate) fn insert(&mut self, key: String, value: V) {
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    /// Number of entries (only the tests need it).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_when_full() {
        let mut m = BoundedMap::new(2);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.insert("a".into(), 10); // overwrite keeps "a" oldest
        m.insert("c".into(), 3);
        assert_eq!(m.len(), 2);
        assert!(m.get("a").is_none());
        assert_eq!(m.get("b"), Some(&2));
        assert_eq!(m.get("c"), Some(&3));
        if let Some(v) = m.get_mut("c") {
            *v += 1;
        }
        assert_eq!(m.get("c"), Some(&4));
    }

    #[test]
    fn zero_capacity_still_holds_one() {
        let mut m = BoundedMap::new(0);
        m.insert("a".into(), ());
        m.insert("b".into(), ());
        assert_eq!(m.len(), 1);
        assert!(m.get("b").is_some());
    }
}
