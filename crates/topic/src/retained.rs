//! The retained-message index: the last retained message of each topic,
//! arranged as a trie of topic levels so that a new subscription finds the
//! retained messages its filter matches by walking only the branches the
//! filter allows (an exact level follows one child, `+` every child, `#` the
//! whole subtree) instead of testing every retained topic.

use std::fmt;
use std::mem;
use std::ops::ControlFlow;

use crate::matching::split_level;
use crate::shared::SharedFilter;
use crate::small_map::{self, SmallMap};

/// Retained messages keyed by topic name, with a value per topic chosen by the
/// broker (the message itself, or a reference to where it is stored).
///
/// Topics are expected to have passed [`crate::validate_topic_name`]; any
/// string is stored literally and never causes a panic.
pub struct RetainedIndex<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: SmallMap<Box<str>, Node<V>>,
    /// The retained value of the topic that ends at this level, with the
    /// topic kept whole so that matches can name it without rebuilding it.
    /// Inline rather than boxed: one pointer less to chase per match.
    retained: Option<(Box<str>, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: SmallMap::default(),
            retained: None,
        }
    }
}

impl<V> Node<V> {
    fn weight(&self) -> usize {
        self.children.len() + usize::from(self.retained.is_some())
    }
}

// The derived drop would recurse once per level; see the subscription index.
impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<V>> = mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(mem::take(&mut node.children).into_values());
        }
    }
}

impl<V> Default for RetainedIndex<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A pending wildcard in a match: the children of one node still to visit.
enum Frame<'a, 'f, V> {
    /// A `+` level: match each child against the rest of the filter.
    Plus {
        children: small_map::Iter<'a, Box<str>, Node<V>>,
        rest: Option<&'f str>,
        root: bool,
    },
    /// A `#` level: every topic in each child's subtree matches.
    Subtree {
        children: small_map::Iter<'a, Box<str>, Node<V>>,
        root: bool,
    },
}

impl<V> RetainedIndex<V> {
    /// An empty index.
    pub fn new() -> Self {
        RetainedIndex {
            root: Node::default(),
            len: 0,
        }
    }

    /// The number of retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic has a retained message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Retains `value` for `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node
                .children
                .get_or_insert_with(level, || level.into(), Node::default);
        }
        match &mut node.retained {
            Some((_, retained)) => Some(mem::replace(retained, value)),
            slot @ None => {
                *slot = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Forgets the retained value of `topic` (a retained PUBLISH with an empty
    /// payload, MQTT-3.3.1-6) and returns it. Levels left empty are removed.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        let (_, value) = node.retained.take()?;
        self.len -= 1;
        if node.weight() == 0 {
            self.prune(topic);
        }
        Some(value)
    }

    /// Removes the chain of nodes ending at the now empty node of `topic`:
    /// find the deepest node on the path that holds anything else, then cut
    /// below it (two walks, no recursion, so depth costs no stack).
    fn prune(&mut self, topic: &str) {
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == 0 || node.weight() > 1 {
                keep = depth;
            }
            let Some(next) = node.children.get(level) else {
                return;
            };
            node = next;
        }
        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == keep {
                node.children.remove(level);
                return;
            }
            let Some(next) = node.children.get_mut(level) else {
                return;
            };
            node = next;
        }
    }

    /// The retained value of `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.retained.as_ref().map(|(_, value)| value)
    }

    /// Calls `f` with the topic and value of every retained message whose
    /// topic `filter` matches, following [`crate::topic_matches`]: `$` topics
    /// are not matched by a leading wildcard (MQTT-4.7.2-1), and a shared
    /// filter `$share/{group}/{filter}` matches by its `filter`.
    ///
    /// MQTT 5.0 (section 4.8.2) sends no retained messages on a new shared
    /// subscription; that is the broker's decision, so this index matches a
    /// shared filter like any other. The order of calls is unspecified.
    ///
    /// Only branches the filter allows are visited. A filter with wildcards
    /// keeps a small stack (one entry per wildcard level being walked), which
    /// may allocate: this runs once per subscription, not per message.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a str, &'a V)) {
        // Never stopped early: nothing to report.
        let _ = self.for_each_match_while(filter, |topic, value| {
            f(topic, value);
            ControlFlow::Continue(())
        });
    }

    /// As [`RetainedIndex::for_each_match`], stopping as soon as `f` says
    /// so (a caller that wants only the first few matches does not walk the
    /// rest). Whether it stopped early.
    pub fn for_each_match_while<'a>(
        &'a self,
        filter: &str,
        mut f: impl FnMut(&'a str, &'a V) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let filter = SharedFilter::parse(filter).map_or(filter, |shared| shared.filter);
        let mut stack: Vec<Frame<'a, '_, V>> = Vec::new();
        descend(&self.root, Some(filter), true, &mut stack, &mut f)?;
        while let Some(frame) = stack.last_mut() {
            match frame {
                Frame::Plus {
                    children,
                    rest,
                    root,
                } => {
                    let rest = *rest;
                    let root = *root;
                    match next_child(children, root) {
                        Some(child) => descend(child, rest, false, &mut stack, &mut f)?,
                        None => {
                            stack.pop();
                        }
                    }
                }
                Frame::Subtree { children, root } => match next_child(children, *root) {
                    Some(child) => {
                        emit(child, &mut f)?;
                        if !child.children.is_empty() {
                            stack.push(Frame::Subtree {
                                children: child.children.iter(),
                                root: false,
                            });
                        }
                    }
                    None => {
                        stack.pop();
                    }
                },
            }
        }
        ControlFlow::Continue(())
    }
}

/// The next child a wildcard may follow: at the root, not into `$` topics
/// (MQTT-4.7.2-1).
fn next_child<'a, V>(
    children: &mut small_map::Iter<'a, Box<str>, Node<V>>,
    root: bool,
) -> Option<&'a Node<V>> {
    children
        .find(|(level, _)| !(root && level.starts_with('$')))
        .map(|(_, child)| child)
}

/// Matches `node` against the rest of a filter: exact levels are followed
/// here, and a wildcard level leaves a frame for the main loop.
fn descend<'a, 'f, V>(
    mut node: &'a Node<V>,
    mut rest: Option<&'f str>,
    mut root: bool,
    stack: &mut Vec<Frame<'a, 'f, V>>,
    f: &mut impl FnMut(&'a str, &'a V) -> ControlFlow<()>,
) -> ControlFlow<()> {
    loop {
        let Some(remaining) = rest else {
            return emit(node, f);
        };
        let (level, next) = split_level(remaining);
        if level == "#" && next.is_none() {
            // `#` matches the parent level too: `a/#` matches `a`.
            emit(node, f)?;
            stack.push(Frame::Subtree {
                children: node.children.iter(),
                root,
            });
            return ControlFlow::Continue(());
        }
        if level == "+" {
            stack.push(Frame::Plus {
                children: node.children.iter(),
                rest: next,
                root,
            });
            return ControlFlow::Continue(());
        }
        match node.children.get(level) {
            Some(child) => {
                node = child;
                rest = next;
                root = false;
            }
            None => return ControlFlow::Continue(()),
        }
    }
}

fn emit<'a, V>(
    node: &'a Node<V>,
    f: &mut impl FnMut(&'a str, &'a V) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match &node.retained {
        Some((topic, value)) => f(topic, value),
        None => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(index: &RetainedIndex<u32>, filter: &str) -> Vec<String> {
        let mut rows = Vec::new();
        index.for_each_match(filter, |topic, value| rows.push(format!("{topic} {value}")));
        rows.sort();
        rows
    }

    fn sample() -> RetainedIndex<u32> {
        let mut index = RetainedIndex::new();
        for (i, topic) in [
            "sport",
            "sport/tennis",
            "sport/tennis/p1",
            "sport/golf/p1",
            "/x",
            "a//b",
            "$SYS/up",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(index.insert(topic, i as u32), None);
        }
        index
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut index = sample();
        assert_eq!(index.len(), 7);
        assert_eq!(index.get("sport/tennis"), Some(&1));
        assert_eq!(index.get("sport/ten"), None);
        assert_eq!(index.insert("sport/tennis", 10), Some(1));
        assert_eq!(index.len(), 7);
        assert_eq!(index.remove("sport/tennis"), Some(10));
        assert_eq!(index.remove("sport/tennis"), None);
        assert_eq!(index.get("sport/tennis/p1"), Some(&2));
        assert_eq!(index.len(), 6);
    }

    #[test]
    fn exact_plus_and_hash_filters() {
        let index = sample();
        assert_eq!(matches(&index, "sport/tennis"), ["sport/tennis 1"]);
        assert_eq!(
            matches(&index, "sport/+/p1"),
            ["sport/golf/p1 3", "sport/tennis/p1 2"]
        );
        assert_eq!(matches(&index, "sport/+"), ["sport/tennis 1"]);
        assert_eq!(
            matches(&index, "sport/#"),
            [
                "sport 0",
                "sport/golf/p1 3",
                "sport/tennis 1",
                "sport/tennis/p1 2"
            ]
        );
        assert_eq!(matches(&index, "+/+"), ["/x 4", "sport/tennis 1"]);
        assert_eq!(matches(&index, "a/+/b"), ["a//b 5"]);
        assert_eq!(matches(&index, "nothing/#"), Vec::<String>::new());
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() {
        let index = sample();
        assert!(!matches(&index, "#").iter().any(|m| m.starts_with('$')));
        assert_eq!(matches(&index, "#").len(), 6);
        assert_eq!(matches(&index, "+/up"), Vec::<String>::new());
        assert_eq!(matches(&index, "$SYS/#"), ["$SYS/up 6"]);
        assert_eq!(matches(&index, "$SYS/+"), ["$SYS/up 6"]);
    }

    #[test]
    fn shared_filters_match_by_their_topic_filter() {
        let index = sample();
        assert_eq!(matches(&index, "$share/g/sport/+"), ["sport/tennis 1"]);
        assert_eq!(matches(&index, "$share/g/#").len(), 6);
    }

    #[test]
    fn remove_prunes_every_empty_level() {
        let mut index = sample();
        for topic in [
            "sport",
            "sport/tennis",
            "sport/tennis/p1",
            "sport/golf/p1",
            "/x",
            "a//b",
        ] {
            assert!(index.remove(topic).is_some(), "{topic}");
        }
        assert_eq!(index.root.weight(), 1, "only $SYS is left");
        assert!(index.remove("$SYS/up").is_some());
        assert_eq!(index.root.weight(), 0);
        assert!(index.is_empty());
    }

    #[test]
    fn a_walk_stops_as_soon_as_the_caller_says_so() {
        let index = sample();
        let mut seen = 0;
        let stopped = index.for_each_match_while("#", |_, _| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(stopped, ControlFlow::Break(()));
        assert_eq!(seen, 2);
        let mut all = 0;
        let finished = index.for_each_match_while("sport/#", |_, _| {
            all += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(finished, ControlFlow::Continue(()));
        assert_eq!(all, 4);
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["a"; 30_000].join("/");
        let mut index = RetainedIndex::new();
        index.insert(&deep, 1);
        index.insert(&format!("{deep}/b"), 2);
        assert_eq!(matches(&index, "#").len(), 2);
        assert_eq!(matches(&index, &format!("{deep}/+")).len(), 1);
        assert_eq!(index.remove(&deep), Some(1));
        drop(index);
    }
}
