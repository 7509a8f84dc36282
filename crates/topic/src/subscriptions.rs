//! The subscription index: every subscription of every session, arranged as a
//! trie of topic levels so that a PUBLISH finds its subscribers by walking the
//! levels of its topic rather than testing every filter.
//!
//! Each trie node is one level of some filter. A node has exact children
//! (keyed by level text), at most one `+` child, the subscriptions whose
//! filter ends at the node, and the subscriptions whose filter is the node's
//! path followed by `/#`: those sit on the parent level because `a/#` also
//! matches `a`. Matching a topic of `n` levels visits at most the nodes on
//! paths that agree with it, and never allocates unless a topic meets more
//! than [`INLINE_BRANCHES`] pending `+` branches at once.

use std::fmt;
use std::hash::Hash;
use std::mem;

use crate::matching::{filter_path, split_level};
use crate::shared::SharedFilter;
use crate::small_map::SmallMap;

/// Pending `+` branches a match keeps on the stack before it spills to the
/// heap; real filters rarely have more than a handful of `+` levels.
const INLINE_BRANCHES: usize = 16;

/// Every subscription, keyed by topic filter and subscriber, with a value per
/// subscription chosen by the broker (QoS, no-local, retain-as-published,
/// subscription identifier, or a route to an edge).
///
/// A subscriber has at most one subscription per filter: inserting the same
/// filter for the same subscriber again replaces the value. Shared
/// subscriptions are inserted and removed under their full
/// `$share/{group}/{filter}` string and match by their `filter`.
///
/// Filters are expected to have passed [`crate::validate_topic_filter`]. The
/// index accepts any string without panicking, and then agrees with
/// [`crate::topic_matches`]: a `+` or `#` that is not a whole level, or a `#`
/// that is not the last, is ordinary text.
pub struct SubscriptionIndex<S, V> {
    root: Node<S, V>,
    len: usize,
}

/// One subscription, or one shared-subscription group, that a topic matched.
#[derive(Debug)]
pub enum Match<'a, S, V> {
    /// An ordinary subscription: the message goes to `subscriber`.
    Plain {
        /// The filter as subscribed.
        filter: &'a str,
        /// Who subscribed.
        subscriber: &'a S,
        /// The value stored with the subscription.
        value: &'a V,
    },
    /// A shared subscription group whose filter matched: the message goes to
    /// one of its members, which the broker picks.
    Shared(SharedGroup<'a, S, V>),
}

impl<'a, S, V> Match<'a, S, V> {
    /// The filter as subscribed: for a shared group, the whole
    /// `$share/{group}/{filter}` string.
    pub fn filter(&self) -> &'a str {
        match self {
            Match::Plain { filter, .. } => filter,
            Match::Shared(group) => group.filter(),
        }
    }
}

impl<S, V> Clone for Match<'_, S, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, V> Copy for Match<'_, S, V> {}

/// The members of one shared subscription, `$share/{group}/{filter}`, as one
/// match: the broker delivers each message to one member of each group.
///
/// Two subscriptions share messages only if both the group and the filter are
/// the same: `$share/g/a/+` and `$share/g/a/#` are two groups, and a message
/// on `a/b` goes to one member of each.
pub struct SharedGroup<'a, S, V> {
    group: &'a str,
    filter: &'a str,
    members: &'a SmallMap<S, V>,
}

impl<'a, S, V> SharedGroup<'a, S, V> {
    /// The share name.
    pub fn group(&self) -> &'a str {
        self.group
    }

    /// The whole shared filter as subscribed, `$share/{group}/{filter}`: the
    /// key to remove a member's subscription with.
    pub fn filter(&self) -> &'a str {
        self.filter
    }

    /// The topic filter inside the shared filter, the part that matched.
    pub fn topic_filter(&self) -> &'a str {
        SharedFilter::parse(self.filter).map_or(self.filter, |shared| shared.filter)
    }

    /// How many members the group has; never zero.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a group whose last member leaves is removed. Present
    /// because a `len` without it reads as an oversight.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members and their values, in an order that is stable while the
    /// group does not change. `members().nth(i)` is O(1) for groups of up to
    /// eight members and O(i) above, which suits round-robin picking.
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&'a S, &'a V)> + Clone + 'a {
        self.members.iter()
    }
}

impl<'a, S: Eq + Hash, V> SharedGroup<'a, S, V> {
    /// The value of one member, or `None` if `subscriber` is not in the group.
    pub fn get(&self, subscriber: &S) -> Option<&'a V> {
        self.members.get(subscriber)
    }
}

impl<S, V> Clone for SharedGroup<'_, S, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, V> Copy for SharedGroup<'_, S, V> {}

impl<S, V> fmt::Debug for SharedGroup<'_, S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("group", &self.group)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

struct Node<S, V> {
    children: SmallMap<Box<str>, Node<S, V>>,
    plus: Option<Box<Node<S, V>>>,
    /// Subscriptions whose filter ends at this level.
    here: Option<Box<Subscriptions<S, V>>>,
    /// Subscriptions whose filter is this level followed by `/#`.
    multi: Option<Box<Subscriptions<S, V>>>,
}

/// The subscriptions to one (non-shared) filter: ordinary ones and the groups
/// of shared ones.
struct Subscriptions<S, V> {
    /// Kept so that a match can say which filter it came from without
    /// rebuilding the string from the trie path.
    filter: Box<str>,
    plain: SmallMap<S, V>,
    shared: Vec<Group<S, V>>,
}

struct Group<S, V> {
    name: Box<str>,
    /// The whole `$share/{name}/{filter}` string.
    filter: Box<str>,
    members: SmallMap<S, V>,
}

/// One edge of a filter's path through the trie.
#[derive(Clone, Copy)]
enum Step<'f> {
    Plus,
    Exact(&'f str),
}

fn steps(path: Option<&str>) -> impl Iterator<Item = Step<'_>> {
    path.into_iter().flat_map(|p| p.split('/')).map(|level| {
        if level == "+" {
            Step::Plus
        } else {
            Step::Exact(level)
        }
    })
}

impl<S, V> Default for Node<S, V> {
    fn default() -> Self {
        Node {
            children: SmallMap::default(),
            plus: None,
            here: None,
            multi: None,
        }
    }
}

impl<S, V> Node<S, V> {
    /// How many things hang off this node; zero means it can be pruned.
    fn weight(&self) -> usize {
        self.children.len()
            + usize::from(self.plus.is_some())
            + usize::from(self.here.is_some())
            + usize::from(self.multi.is_some())
    }

    fn child(&self, step: Step<'_>) -> Option<&Node<S, V>> {
        match step {
            Step::Plus => self.plus.as_deref(),
            Step::Exact(level) => self.children.get(level),
        }
    }

    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Node<S, V>> {
        match step {
            Step::Plus => self.plus.as_deref_mut(),
            Step::Exact(level) => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, step: Step<'_>) -> &mut Node<S, V> {
        match step {
            Step::Plus => self.plus.get_or_insert_with(Box::default),
            Step::Exact(level) => {
                self.children
                    .get_or_insert_with(level, || level.into(), Node::default)
            }
        }
    }

    fn cut(&mut self, step: Step<'_>) {
        match step {
            Step::Plus => self.plus = None,
            Step::Exact(level) => {
                self.children.remove(level);
            }
        }
    }

    fn slot_mut(&mut self, multi: bool) -> &mut Option<Box<Subscriptions<S, V>>> {
        if multi {
            &mut self.multi
        } else {
            &mut self.here
        }
    }
}

// The derived drop would recurse once per level, and a filter may have tens of
// thousands of levels; tear the trie down with an explicit stack instead.
impl<S, V> Drop for Node<S, V> {
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.detach_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.detach_children(&mut stack);
        }
    }
}

impl<S, V> Node<S, V> {
    fn detach_children(&mut self, into: &mut Vec<Node<S, V>>) {
        into.extend(mem::take(&mut self.children).into_values());
        if let Some(plus) = self.plus.take() {
            into.push(*plus);
        }
    }
}

impl<S, V> Subscriptions<S, V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

impl<S: Eq + Hash + Clone, V> Default for SubscriptionIndex<S, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, V> fmt::Debug for SubscriptionIndex<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<S: Eq + Hash + Clone, V> SubscriptionIndex<S, V> {
    /// An empty index.
    pub fn new() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }

    /// The number of subscriptions: (filter, subscriber) pairs, each member
    /// of a shared group counting once.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `subscriber` to `filter` (ordinary, or shared as
    /// `$share/{group}/{filter}`) with `value`.
    ///
    /// Returns the value replaced when the subscriber already had a
    /// subscription to this exact filter string: MQTT-3.8.4-3 says the new
    /// subscription replaces the old one.
    pub fn insert(&mut self, filter: &str, subscriber: S, value: V) -> Option<V> {
        let shared = SharedFilter::parse(filter);
        let inner = shared.map_or(filter, |s| s.filter);
        let (path, multi) = filter_path(inner);
        let mut node = &mut self.root;
        for step in steps(path) {
            node = node.child_or_insert(step);
        }
        let subs = node.slot_mut(multi).get_or_insert_with(|| {
            Box::new(Subscriptions {
                filter: inner.into(),
                plain: SmallMap::default(),
                shared: Vec::new(),
            })
        });
        let replaced = match shared {
            None => subs.plain.insert(subscriber, value),
            Some(shared) => {
                let i = match subs.shared.iter().position(|g| *g.name == *shared.group) {
                    Some(i) => i,
                    None => {
                        subs.shared.push(Group {
                            name: shared.group.into(),
                            filter: filter.into(),
                            members: SmallMap::default(),
                        });
                        subs.shared.len() - 1
                    }
                };
                subs.shared[i].members.insert(subscriber, value)
            }
        };
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Unsubscribes `subscriber` from `filter`, given exactly as subscribed,
    /// and returns the value the subscription had, or `None` if there was no
    /// such subscription. Trie nodes left with nothing below them are removed,
    /// so that the index does not grow with filters nobody holds any more.
    pub fn remove(&mut self, filter: &str, subscriber: &S) -> Option<V> {
        let shared = SharedFilter::parse(filter);
        let inner = shared.map_or(filter, |s| s.filter);
        let (path, multi) = filter_path(inner);
        let mut node = &mut self.root;
        for step in steps(path) {
            node = node.child_mut(step)?;
        }
        let slot = node.slot_mut(multi);
        let subs = slot.as_deref_mut()?;
        let removed = match shared {
            None => subs.plain.remove(subscriber)?,
            Some(shared) => {
                let i = subs.shared.iter().position(|g| *g.name == *shared.group)?;
                let removed = subs.shared[i].members.remove(subscriber)?;
                if subs.shared[i].members.is_empty() {
                    subs.shared.swap_remove(i);
                }
                removed
            }
        };
        self.len -= 1;
        if subs.is_empty() {
            *slot = None;
            if node.weight() == 0 {
                self.prune(path);
            }
        }
        Some(removed)
    }

    /// Removes the chain of nodes that ends at the now empty node at `path`.
    ///
    /// Two walks from the root instead of recursion, so that depth costs no
    /// stack: the first finds the deepest node on the path that holds anything
    /// besides the path itself, the second cuts the path below it.
    fn prune(&mut self, path: Option<&str>) {
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, step) in steps(path).enumerate() {
            if depth == 0 || node.weight() > 1 {
                keep = depth;
            }
            let Some(next) = node.child(step) else {
                return;
            };
            node = next;
        }
        let mut node = &mut self.root;
        for (depth, step) in steps(path).enumerate() {
            if depth == keep {
                node.cut(step);
                return;
            }
            let Some(next) = node.child_mut(step) else {
                return;
            };
            node = next;
        }
    }

    /// The value of `subscriber`'s subscription to `filter` (given exactly as
    /// subscribed), if it has one.
    pub fn get(&self, filter: &str, subscriber: &S) -> Option<&V> {
        let shared = SharedFilter::parse(filter);
        let inner = shared.map_or(filter, |s| s.filter);
        let (path, multi) = filter_path(inner);
        let mut node = &self.root;
        for step in steps(path) {
            node = node.child(step)?;
        }
        let subs = if multi {
            node.multi.as_deref()
        } else {
            node.here.as_deref()
        }?;
        match shared {
            None => subs.plain.get(subscriber),
            Some(shared) => subs
                .shared
                .iter()
                .find(|g| *g.name == *shared.group)?
                .members
                .get(subscriber),
        }
    }

    /// Calls `f` once for every ordinary subscription whose filter matches
    /// `topic` and once for every shared group whose filter does, following
    /// [`crate::topic_matches`] (including MQTT-4.7.2-1 for `$` topics).
    ///
    /// A subscriber with several matching filters appears once per filter;
    /// MQTT 5.0 section 4.7 leaves it to the broker whether to deliver one
    /// copy or one per subscription. The order of calls is unspecified.
    /// `topic` should be a valid topic name; any string is safe.
    ///
    /// This is the per-message path: it does not allocate (unless a topic
    /// meets an unusual number of `+` levels at once) and visits only trie
    /// nodes on paths that agree with `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a, S, V>)) {
        let mut pending: Stack<(&'a Node<S, V>, Option<&str>), INLINE_BRANCHES> = Stack::new();
        let (first, rest) = split_level(topic);
        // MQTT-4.7.2-1: a leading `+` or `#` does not match a `$` topic.
        if !topic.starts_with('$') {
            emit(self.root.multi.as_deref(), &mut f);
            if let Some(plus) = self.root.plus.as_deref() {
                pending.push((plus, rest));
            }
        }
        if let Some(child) = self.root.children.get(first) {
            pending.push((child, rest));
        }
        while let Some((mut node, mut rest)) = pending.pop() {
            // Follow exact levels in this loop; only `+` branches wait on the stack.
            loop {
                emit(node.multi.as_deref(), &mut f);
                let Some(remaining) = rest else {
                    emit(node.here.as_deref(), &mut f);
                    break;
                };
                let (level, next) = split_level(remaining);
                if let Some(plus) = node.plus.as_deref() {
                    pending.push((plus, next));
                }
                match node.children.get(level) {
                    Some(child) => {
                        node = child;
                        rest = next;
                    }
                    None => break,
                }
            }
        }
    }
}

fn emit<'a, S, V>(subs: Option<&'a Subscriptions<S, V>>, f: &mut impl FnMut(Match<'a, S, V>)) {
    let Some(subs) = subs else {
        return;
    };
    for (subscriber, value) in subs.plain.iter() {
        f(Match::Plain {
            filter: &subs.filter,
            subscriber,
            value,
        });
    }
    for group in &subs.shared {
        f(Match::Shared(SharedGroup {
            group: &group.name,
            filter: &group.filter,
            members: &group.members,
        }));
    }
}

/// A LIFO stack that keeps its first `N` items inline and spills the rest to
/// the heap, so that the usual match allocates nothing.
struct Stack<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> Stack<T, N> {
    fn new() -> Self {
        Stack {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            None => self.spill.push(item),
        }
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len)?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every match as sorted `(filter, subscriber, value)` rows, shared groups
    /// flattened, so that tests can compare whole answers.
    fn matches(index: &SubscriptionIndex<&'static str, u32>, topic: &str) -> Vec<String> {
        let mut rows = Vec::new();
        index.for_each_match(topic, |m| match m {
            Match::Plain {
                filter,
                subscriber,
                value,
            } => {
                rows.push(format!("{filter} {subscriber} {value}"));
            }
            Match::Shared(group) => {
                for (subscriber, value) in group.members() {
                    rows.push(format!("{} {subscriber} {value}", group.filter()));
                }
            }
        });
        rows.sort();
        rows
    }

    fn is_pruned<S, V>(index: &SubscriptionIndex<S, V>) -> bool {
        index.root.weight() == 0
    }

    #[test]
    fn exact_plus_and_hash_filters_match() {
        let mut index = SubscriptionIndex::new();
        index.insert("sport/tennis/player1", "a", 1);
        index.insert("sport/tennis/+", "b", 2);
        index.insert("sport/#", "c", 3);
        index.insert("#", "d", 4);
        index.insert("+/+/+/+", "e", 5);
        assert_eq!(
            matches(&index, "sport/tennis/player1"),
            [
                "# d 4",
                "sport/# c 3",
                "sport/tennis/+ b 2",
                "sport/tennis/player1 a 1"
            ]
        );
        assert_eq!(matches(&index, "sport"), ["# d 4", "sport/# c 3"]);
        assert_eq!(matches(&index, "a/b/c/d"), ["# d 4", "+/+/+/+ e 5"]);
        assert_eq!(matches(&index, "a/b/c/d/e"), ["# d 4"]);
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_matches_parent_level() {
        let mut index = SubscriptionIndex::new();
        index.insert("sport/tennis/player1/#", "a", 1);
        assert_eq!(
            matches(&index, "sport/tennis/player1"),
            ["sport/tennis/player1/# a 1"]
        );
        assert_eq!(
            matches(&index, "sport/tennis/player1/score/x"),
            ["sport/tennis/player1/# a 1"]
        );
        assert!(matches(&index, "sport/tennis").is_empty());
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() {
        let mut index = SubscriptionIndex::new();
        index.insert("#", "a", 1);
        index.insert("+/monitor/Clients", "b", 2);
        index.insert("$SYS/#", "c", 3);
        index.insert("$SYS/monitor/+", "d", 4);
        index.insert("$share/g/#", "e", 5);
        assert_eq!(
            matches(&index, "$SYS/monitor/Clients"),
            ["$SYS/# c 3", "$SYS/monitor/+ d 4"]
        );
        assert_eq!(
            matches(&index, "x/monitor/Clients"),
            ["# a 1", "$share/g/# e 5", "+/monitor/Clients b 2"]
        );
    }

    #[test]
    fn empty_levels_are_levels() {
        let mut index = SubscriptionIndex::new();
        index.insert("a//b", "a", 1);
        index.insert("a/+/b", "b", 2);
        index.insert("+/a", "c", 3);
        index.insert("/#", "d", 4);
        assert_eq!(matches(&index, "a//b"), ["a/+/b b 2", "a//b a 1"]);
        assert_eq!(matches(&index, "/a"), ["+/a c 3", "/# d 4"]);
        assert_eq!(matches(&index, "/"), ["/# d 4"]);
        assert!(matches(&index, "a/b").is_empty());
    }

    #[test]
    fn mqtt_3_8_4_3_resubscribing_replaces_the_subscription() {
        let mut index = SubscriptionIndex::new();
        assert_eq!(index.insert("a/+", "x", 1), None);
        assert_eq!(index.insert("a/+", "x", 2), Some(1));
        assert_eq!(index.insert("$share/g/a/+", "x", 3), None);
        assert_eq!(index.insert("$share/g/a/+", "x", 4), Some(3));
        assert_eq!(index.len(), 2);
        assert_eq!(index.get("a/+", &"x"), Some(&2));
        assert_eq!(index.get("$share/g/a/+", &"x"), Some(&4));
        assert_eq!(matches(&index, "a/b"), ["$share/g/a/+ x 4", "a/+ x 2"]);
    }

    #[test]
    fn mqtt_4_8_2_shared_groups_match_once_with_all_members() {
        let mut index = SubscriptionIndex::new();
        index.insert("$share/g/a/+", "x", 1);
        index.insert("$share/g/a/+", "y", 2);
        index.insert("$share/h/a/+", "z", 3);
        // Same group, different filter: a separate shared subscription.
        index.insert("$share/g/a/#", "x", 4);
        index.insert("a/+", "x", 5);
        let mut groups = Vec::new();
        let mut plain = 0;
        index.for_each_match("a/b", |m| match m {
            Match::Plain { .. } => plain += 1,
            Match::Shared(g) => {
                let mut members: Vec<_> = g.members().map(|(s, v)| (*s, *v)).collect();
                members.sort();
                groups.push((g.group(), g.filter(), g.topic_filter(), g.len(), members));
            }
        });
        groups.sort();
        assert_eq!(plain, 1);
        assert_eq!(
            groups,
            [
                ("g", "$share/g/a/#", "a/#", 1, vec![("x", 4)]),
                ("g", "$share/g/a/+", "a/+", 2, vec![("x", 1), ("y", 2)]),
                ("h", "$share/h/a/+", "a/+", 1, vec![("z", 3)]),
            ]
        );
    }

    #[test]
    fn remove_returns_the_value_and_prunes_the_trie() {
        let mut index = SubscriptionIndex::new();
        let filters = [
            "a/b/c",
            "a/b/#",
            "a/+/c",
            "#",
            "+",
            "a//",
            "$share/g/a/b/c",
            "$share/h/#",
        ];
        for (i, filter) in filters.iter().enumerate() {
            index.insert(filter, "x", i);
            index.insert(filter, "y", i + 100);
        }
        assert_eq!(index.len(), 16);
        assert_eq!(index.remove("a/b/c", &"z"), None);
        assert_eq!(index.remove("a/b/d", &"x"), None);
        assert_eq!(index.remove("a/b/c/d/e", &"x"), None);
        assert_eq!(index.remove("$share/zz/a/b/c", &"x"), None);
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(index.remove(filter, &"x"), Some(i), "{filter}");
            assert_eq!(index.remove(filter, &"x"), None, "{filter}");
        }
        assert_eq!(index.len(), 8);
        assert!(!is_pruned(&index));
        for (i, filter) in filters.iter().enumerate().rev() {
            assert_eq!(index.remove(filter, &"y"), Some(i + 100), "{filter}");
        }
        assert!(index.is_empty());
        assert!(
            is_pruned(&index),
            "every node is gone once every subscription is"
        );
    }

    #[test]
    fn pruning_keeps_nodes_other_filters_need() {
        let mut index = SubscriptionIndex::new();
        index.insert("a/b/c/d", "x", 1);
        index.insert("a/b", "x", 2);
        index.insert("a/b/+/e", "x", 3);
        index.remove("a/b/c/d", &"x");
        assert_eq!(matches(&index, "a/b"), ["a/b x 2"]);
        assert_eq!(matches(&index, "a/b/c/e"), ["a/b/+/e x 3"]);
        index.remove("a/b", &"x");
        assert_eq!(matches(&index, "a/b/q/e"), ["a/b/+/e x 3"]);
        index.remove("a/b/+/e", &"x");
        assert!(is_pruned(&index));
    }

    #[test]
    fn wide_nodes_and_many_pending_branches() {
        let mut index = SubscriptionIndex::new();
        for i in 0..1000u32 {
            index.insert(&format!("d/{i}/cmd"), "x", i);
        }
        // More `+` branches than the inline stack holds.
        let mut filter = String::from("+");
        for _ in 0..40 {
            index.insert(&filter, "p", 0);
            filter.push_str("/+");
        }
        let deep = vec!["q"; 40].join("/");
        assert_eq!(matches(&index, &deep).len(), 1);
        assert_eq!(
            matches(&index, "d/999/cmd"),
            ["+/+/+ p 0", "d/999/cmd x 999"]
        );
        for i in 0..1000u32 {
            assert_eq!(index.remove(&format!("d/{i}/cmd"), &"x"), Some(i));
        }
        assert_eq!(index.len(), 40);
    }

    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        // 30,000 levels: within the 65,535-byte limit of a topic.
        let deep_plus = vec!["+"; 30_000].join("/");
        let deep_name = vec!["a"; 30_000].join("/");
        let mut index = SubscriptionIndex::new();
        index.insert(&deep_plus, "x", 1);
        index.insert(&deep_name, "y", 2);
        index.insert(&format!("{deep_name}/#"), "z", 3);
        let mut n = 0;
        index.for_each_match(&deep_name, |_| n += 1);
        assert_eq!(n, 3);
        assert_eq!(index.remove(&deep_name, &"y"), Some(2));
        drop(index);
    }

    #[test]
    fn any_string_is_safe() {
        let odd = [
            "", "/", "//", "#/#", "a/#/b", "+#", "$share/", "$share//", "$share/g", "\0", "#",
        ];
        let mut index = SubscriptionIndex::new();
        for (i, filter) in odd.iter().enumerate() {
            index.insert(filter, "x", i);
        }
        for topic in odd {
            index.for_each_match(topic, |m| {
                assert!(
                    crate::topic_matches(m.filter(), topic),
                    "{} {topic}",
                    m.filter()
                );
            });
        }
        for (i, filter) in odd.iter().enumerate() {
            assert_eq!(index.remove(filter, &"x"), Some(i), "{filter:?}");
        }
        assert!(is_pruned(&index));
    }
}
