//! A map that is a short vector while small and a hash map once large.
//!
//! Most trie nodes have one child and most filters one subscriber, so a hash
//! map per node would cost an allocation and a hash per lookup for nothing;
//! a few nodes (`devices/` with a child per device, a filter every client
//! shares) are wide, and a linear scan there would make subscribing quadratic.

use std::borrow::Borrow;
use std::collections::{HashMap, hash_map};
use std::hash::Hash;
use std::{mem, slice, vec};

/// Above this many entries the vector becomes a hash map.
const SPILL: usize = 8;
/// Below this many entries the hash map goes back to a vector (hysteresis, so
/// that a node hovering around the limit does not convert on every change).
const UNSPILL: usize = 4;

pub(crate) enum SmallMap<K, V> {
    Vec(Vec<(K, V)>),
    // Boxed so that the map costs every node 24 bytes (a `Vec`), not 48: the
    // extra pointer is only followed at the rare wide node.
    #[allow(clippy::box_collection, reason = "keeps the common small case small")]
    Map(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Vec(Vec::new())
    }
}

impl<K, V> SmallMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Vec(v) => v.len(),
            SmallMap::Map(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::Vec(v) => Iter::Vec(v.iter()),
            SmallMap::Map(m) => Iter::Map(m.iter()),
        }
    }

    pub(crate) fn into_values(self) -> IntoValues<K, V> {
        match self {
            SmallMap::Vec(v) => IntoValues::Vec(v.into_iter()),
            SmallMap::Map(m) => IntoValues::Map((*m).into_values()),
        }
    }
}

impl<K: Hash + Eq, V> SmallMap<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Map(m) => m.get(key),
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => v
                .iter_mut()
                .find(|(k, _)| (*k).borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Map(m) => m.get_mut(key),
        }
    }

    /// The value under `key`, inserted by `make` (under the key `make_key`
    /// builds) when absent: the key is only built when it is stored.
    pub(crate) fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let SmallMap::Vec(v) = self
            && !v.iter().any(|(k, _)| k.borrow() == key)
        {
            self.spill_if_full();
        }
        match self {
            SmallMap::Vec(v) => {
                let i = match v.iter().position(|(k, _)| k.borrow() == key) {
                    Some(i) => i,
                    None => {
                        push_exact(v, (make_key(), make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            // Building the key before knowing it is absent costs an allocation
            // per subscribe under a wide node; the stable HashMap API has no way
            // to look up by borrowed key and insert by owned key in one step.
            SmallMap::Map(m) => m.entry(make_key()).or_insert_with(make),
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(slot) = self.get_mut(&key) {
            return Some(mem::replace(slot, value));
        }
        self.spill_if_full();
        match self {
            SmallMap::Vec(v) => push_exact(v, (key, value)),
            SmallMap::Map(m) => {
                m.insert(key, value);
            }
        }
        None
    }

    /// Turns a full vector into a hash map; called only before adding a key
    /// known to be absent.
    fn spill_if_full(&mut self) {
        if let SmallMap::Vec(v) = self
            && v.len() >= SPILL
        {
            *self = SmallMap::Map(Box::new(mem::take(v).into_iter().collect()));
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                Some(v.swap_remove(i).1)
            }
            SmallMap::Map(m) => {
                let removed = m.remove(key);
                if m.len() < UNSPILL {
                    let small: Vec<(K, V)> = mem::take(&mut **m).into_iter().collect();
                    *self = SmallMap::Vec(small);
                }
                removed
            }
        }
    }
}

/// Pushes without the usual doubling: a `Vec` grows from zero to four slots
/// on its first push, and most nodes hold one entry for good, so doubling
/// would triple the memory of a large index. The extra copies are bounded by
/// [`SPILL`].
fn push_exact<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(1);
    }
    v.push(item);
}

/// Borrowing iterator over a [`SmallMap`], in no particular order.
pub(crate) enum Iter<'a, K, V> {
    Vec(slice::Iter<'a, (K, V)>),
    Map(hash_map::Iter<'a, K, V>),
}

impl<K, V> Clone for Iter<'_, K, V> {
    fn clone(&self) -> Self {
        match self {
            Iter::Vec(i) => Iter::Vec(i.clone()),
            Iter::Map(i) => Iter::Map(i.clone()),
        }
    }
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Vec(i) => i.next().map(|(k, v)| (k, v)),
            Iter::Map(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Vec(i) => i.size_hint(),
            Iter::Map(i) => i.size_hint(),
        }
    }

    // Forwarded so that picking the n-th member of a small shared group is O(1).
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        match self {
            Iter::Vec(i) => i.nth(n).map(|(k, v)| (k, v)),
            Iter::Map(i) => i.nth(n),
        }
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

/// Owning iterator over the values of a [`SmallMap`].
pub(crate) enum IntoValues<K, V> {
    Vec(vec::IntoIter<(K, V)>),
    Map(hash_map::IntoValues<K, V>),
}

impl<K, V> Iterator for IntoValues<K, V> {
    type Item = V;

    fn next(&mut self) -> Option<V> {
        match self {
            IntoValues::Vec(i) => i.next().map(|(_, v)| v),
            IntoValues::Map(i) => i.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_to_a_hash_map_and_back_without_losing_entries() {
        let mut m: SmallMap<u32, u32> = SmallMap::default();
        for i in 0..100 {
            assert_eq!(m.insert(i, i * 10), None);
        }
        assert!(matches!(m, SmallMap::Map(_)));
        assert_eq!(m.insert(7, 7), Some(70));
        for i in 0..98 {
            assert!(m.remove(&i).is_some());
        }
        assert!(matches!(m, SmallMap::Vec(_)));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&98), Some(&980));
        assert_eq!(*m.get_or_insert_with(&5, || 5, || 55), 55);
        assert_eq!(*m.get_or_insert_with(&5, || 5, || 0), 55);
        let mut values: Vec<u32> = m.into_values().collect();
        values.sort_unstable();
        assert_eq!(values, [55, 980, 990]);
    }

    #[test]
    fn is_as_small_as_a_vec() {
        assert_eq!(
            size_of::<SmallMap<Box<str>, u64>>(),
            size_of::<Vec<(Box<str>, u64)>>()
        );
    }

    #[test]
    fn get_or_insert_with_spills_when_full() {
        let mut m: SmallMap<Box<str>, u32> = SmallMap::default();
        for i in 0..20u32 {
            let key = i.to_string();
            *m.get_or_insert_with(key.as_str(), || key.as_str().into(), || 0) += i;
        }
        assert!(matches!(m, SmallMap::Map(_)));
        assert_eq!(m.len(), 20);
        assert_eq!(m.get("19"), Some(&19));
        let mut one: SmallMap<u32, u32> = SmallMap::default();
        one.insert(1, 1);
        assert!(matches!(&one, SmallMap::Vec(v) if v.capacity() == 1));
        assert_eq!(m.iter().len(), 20);
    }
}
