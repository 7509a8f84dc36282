//! Property tests: the subscription index, the retained index and
//! `topic_matches` all agree with a naive matcher written here from MQTT 5.0
//! sections 4.7 and 4.8.2, over small random sets of filters and topics drawn
//! from a tiny alphabet so that matches (and near misses) are common.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rookery_topic::{
    Match, RetainedIndex, SubscriptionIndex, topic_matches, validate_topic_filter,
    validate_topic_name,
};

/// The reference: split both strings into levels and recurse. Written
/// independently of the crate (no shared helpers).
fn reference_matches(filter: &str, name: &str) -> bool {
    let filter = match filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_group, inner)) => inner,
        None => filter,
    };
    let f: Vec<&str> = filter.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    // MQTT-4.7.2-1
    if name.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    fn levels_match(f: &[&str], n: &[&str]) -> bool {
        match (f, n) {
            (["#"], _) => true,
            (["+", f_rest @ ..], [_, n_rest @ ..]) => levels_match(f_rest, n_rest),
            ([f_first, f_rest @ ..], [n_first, n_rest @ ..]) => {
                f_first == n_first && levels_match(f_rest, n_rest)
            }
            ([], []) => true,
            _ => false,
        }
    }
    levels_match(&f, &n)
}

fn name_level() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("")].prop_map(String::from)
}

fn first_name_level() -> impl Strategy<Value = String> {
    prop_oneof![3 => name_level(), 1 => Just("$s".to_string())]
}

/// Topic names of one to four levels, sometimes starting with a `$` level.
fn topic_name() -> impl Strategy<Value = String> {
    (
        first_name_level(),
        prop::collection::vec(name_level(), 0..4),
    )
        .prop_map(|(first, rest)| {
            std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join("/")
        })
        // Only the empty string: a name of one empty level is no topic name.
        .prop_filter("valid topic name", |name| validate_topic_name(name).is_ok())
}

fn filter_level() -> impl Strategy<Value = String> {
    prop_oneof![3 => name_level(), 2 => Just("+".to_string())]
}

/// Valid filters: exact, `+` and empty levels, an optional trailing `#`,
/// sometimes a `$` first level, sometimes shared under one of two groups.
fn topic_filter() -> impl Strategy<Value = String> {
    let first = prop_oneof![4 => filter_level(), 1 => Just("$s".to_string())];
    let plain = (
        first,
        prop::collection::vec(filter_level(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(first, rest, hash)| {
            let mut levels: Vec<String> = std::iter::once(first).chain(rest).collect();
            if hash {
                levels.push("#".to_string());
            }
            levels.join("/")
        });
    let plain = prop_oneof![10 => plain, 1 => Just("#".to_string())];
    (
        plain,
        prop_oneof![4 => Just(None), 1 => Just(Some("g")), 1 => Just(Some("h"))],
    )
        .prop_map(|(filter, share)| match share {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter,
        })
        // Only a filter of one empty level, shared or not, is refused.
        .prop_filter("valid topic filter", |filter| {
            validate_topic_filter(filter).is_ok()
        })
}

/// A row of a match, comparable with the model: (filter as subscribed, subscriber, value).
type Row = (String, u8, u32);

fn index_rows(index: &SubscriptionIndex<u8, u32>, topic: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut groups = BTreeSet::new();
    index.for_each_match(topic, |m| match m {
        Match::Plain {
            filter,
            subscriber,
            value,
        } => {
            rows.push((filter.to_string(), *subscriber, *value));
        }
        Match::Shared(group) => {
            // Each (group, filter) is one shared subscription: reported once.
            assert!(
                groups.insert(group.filter().to_string()),
                "{} twice",
                group.filter()
            );
            assert_eq!(
                group.filter(),
                format!("$share/{}/{}", group.group(), group.topic_filter())
            );
            assert_eq!(group.members().len(), group.len());
            assert!(!group.is_empty());
            for (subscriber, value) in group.members() {
                assert_eq!(group.get(subscriber), Some(value));
                rows.push((group.filter().to_string(), *subscriber, *value));
            }
        }
    });
    rows.sort();
    rows
}

fn model_rows(model: &BTreeMap<(String, u8), u32>, topic: &str) -> Vec<Row> {
    model
        .iter()
        .filter(|((filter, _), _)| reference_matches(filter, topic))
        .map(|((filter, subscriber), value)| (filter.clone(), *subscriber, *value))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generators_produce_valid_input(filter in topic_filter(), name in topic_name()) {
        prop_assert_eq!(validate_topic_filter(&filter), Ok(()));
        prop_assert_eq!(validate_topic_name(&name), Ok(()));
    }

    #[test]
    fn topic_matches_agrees_with_reference(filter in topic_filter(), name in topic_name()) {
        prop_assert_eq!(topic_matches(&filter, &name), reference_matches(&filter, &name));
    }

    #[test]
    fn subscription_index_agrees_with_reference(
        subscriptions in prop::collection::vec((topic_filter(), 0u8..4), 0..40),
        removals in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..30),
        topics in prop::collection::vec(topic_name(), 1..12),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut model = BTreeMap::new();
        for (value, (filter, subscriber)) in subscriptions.iter().enumerate() {
            let value = value as u32;
            let expected = model.insert((filter.clone(), *subscriber), value);
            prop_assert_eq!(index.insert(filter, *subscriber, value), expected);
        }
        prop_assert_eq!(index.len(), model.len());
        for topic in &topics {
            prop_assert_eq!(index_rows(&index, topic), model_rows(&model, topic), "topic {:?}", topic);
        }

        // Remove some subscriptions (and some that were never there), then check again.
        for (pick, present) in &removals {
            if subscriptions.is_empty() {
                break;
            }
            let (filter, subscriber) = pick.get(&subscriptions);
            let subscriber = if *present { *subscriber } else { subscriber + 4 };
            let expected = model.remove(&(filter.clone(), subscriber));
            prop_assert_eq!(index.remove(filter, &subscriber), expected);
            prop_assert_eq!(index.get(filter, &subscriber), None);
        }
        prop_assert_eq!(index.len(), model.len());
        for ((filter, subscriber), value) in &model {
            prop_assert_eq!(index.get(filter, subscriber), Some(value));
        }
        for topic in &topics {
            prop_assert_eq!(index_rows(&index, topic), model_rows(&model, topic), "topic {:?}", topic);
        }

        // Removing the rest leaves an empty index that matches nothing.
        for (filter, subscriber) in model.keys() {
            prop_assert!(index.remove(filter, subscriber).is_some());
        }
        prop_assert!(index.is_empty());
        for topic in &topics {
            prop_assert!(index_rows(&index, topic).is_empty());
        }
    }

    #[test]
    fn retained_index_agrees_with_reference(
        retained in prop::collection::vec(topic_name(), 0..40),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        filters in prop::collection::vec(topic_filter(), 1..12),
    ) {
        let mut index = RetainedIndex::new();
        let mut model = BTreeMap::new();
        for (value, topic) in retained.iter().enumerate() {
            let value = value as u32;
            prop_assert_eq!(index.insert(topic, value), model.insert(topic.clone(), value));
        }
        for pick in &removals {
            if retained.is_empty() {
                break;
            }
            let topic = pick.get(&retained);
            prop_assert_eq!(index.remove(topic), model.remove(topic));
        }
        prop_assert_eq!(index.len(), model.len());
        for topic in &retained {
            prop_assert_eq!(index.get(topic), model.get(topic));
        }
        for filter in &filters {
            let mut found = Vec::new();
            index.for_each_match(filter, |topic, value| found.push((topic.to_string(), *value)));
            found.sort();
            let expected: Vec<(String, u32)> = model
                .iter()
                .filter(|(topic, _)| reference_matches(filter, topic))
                .map(|(topic, value)| (topic.clone(), *value))
                .collect();
            prop_assert_eq!(found, expected, "filter {:?}", filter);
        }
    }
}

#[test]
fn reference_agrees_with_the_specification_examples() {
    assert!(reference_matches("sport/#", "sport"));
    assert!(reference_matches("sport/tennis/+", "sport/tennis/p1"));
    assert!(!reference_matches("sport/+", "sport"));
    assert!(reference_matches("+/+", "/finance"));
    assert!(!reference_matches("#", "$SYS/x"));
    assert!(reference_matches("$SYS/#", "$SYS/x"));
    assert!(reference_matches("$share/g/a/+", "a/b"));
}
