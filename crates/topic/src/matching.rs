//! Matching one topic filter against one topic name, MQTT 5.0 section 4.7
//! (the same rules hold for 3.1.1), and the level-splitting helpers the two
//! indexes share with it so that all three agree on what a level is.

use crate::shared::SharedFilter;

/// Whether the subscription `filter` matches the topic `name` a message was
/// published to.
///
/// - `+` matches exactly one whole level, including an empty one.
/// - `#` as the last level matches any number of levels, including none: `a/#`
///   matches `a` itself (MQTT 5.0 section 4.7.1.2).
/// - A name starting with `$` is not matched by a filter whose first level is a
///   wildcard (MQTT-4.7.2-1): `#` does not match `$SYS/uptime`.
/// - Empty levels are levels: `a//b` has three, `/a` has two.
/// - A shared subscription `$share/{group}/{filter}` matches by its `filter`.
///
/// Both arguments are expected to have passed [`crate::validate_topic_filter`]
/// and [`crate::validate_topic_name`]. Any other string gives a defined answer
/// and never a panic: a `+` or `#` that is not a whole level (or a `#` that is
/// not the last level) is compared as ordinary text.
///
/// The indexes agree with this function; use it to check one subscription, and
/// [`crate::SubscriptionIndex`] to find every subscription a message matches.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    let filter = SharedFilter::parse(filter).map_or(filter, |shared| shared.filter);
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    let dollar = name.starts_with('$');
    let mut first = true;
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) if filter_levels.clone().next().is_none() => {
                // MQTT-4.7.2-1: no leading wildcard for `$` topics.
                return !(first && dollar);
            }
            (Some("+"), Some(_)) if !(first && dollar) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Splits off the first level of a topic or filter: `("a", Some("b/c"))` for
/// `a/b/c`, `("c", None)` for `c`. `None` means there is no further level,
/// which differs from `Some("")` (a trailing empty level, as in `a/`).
pub(crate) fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

/// A filter as a path in a trie: the levels to walk (`None` for the filter
/// `#`, which has none) and whether it ends in a multi-level wildcard, which is
/// stored at the node of its parent level because it also matches that level.
pub(crate) fn filter_path(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(parent) = filter.strip_suffix("/#") {
        (Some(parent), true)
    } else {
        (Some(filter), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_examples() {
        let f = "sport/tennis/player1/#";
        assert!(topic_matches(f, "sport/tennis/player1"));
        assert!(topic_matches(f, "sport/tennis/player1/ranking"));
        assert!(topic_matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!topic_matches(f, "sport/tennis/player2"));
        assert!(!topic_matches(f, "sport/tennis"));
        // "sport/#" also matches the singular "sport", since # includes the parent level.
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("#", "sport/tennis"));
        assert!(topic_matches("#", "/"));
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_examples() {
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!topic_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(topic_matches("+/tennis/#", "sport/tennis/player1"));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() {
        assert!(!topic_matches("#", "$SYS/monitor/Clients"));
        assert!(!topic_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!topic_matches("+", "$SYS"));
        assert!(topic_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/#", "$SYS"));
        // Only the first level counts: a `$` further on is ordinary text.
        assert!(topic_matches("a/+", "a/$b"));
        assert!(topic_matches("#", "a/$b"));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(topic_matches("a//b", "a//b"));
        assert!(topic_matches("a/+/b", "a//b"));
        assert!(!topic_matches("a/b", "a//b"));
        assert!(topic_matches("+/a", "/a"));
        assert!(topic_matches("/#", "/a/b"));
        assert!(topic_matches("+/+", "/"));
        assert!(!topic_matches("+", "/"));
        assert!(topic_matches("a/", "a/"));
        assert!(!topic_matches("a", "a/"));
    }

    #[test]
    fn mqtt_4_7_3_topics_are_case_sensitive() {
        assert!(!topic_matches("ACCOUNTS", "Accounts"));
        assert!(topic_matches("Accounts", "Accounts"));
    }

    #[test]
    fn mqtt_4_8_2_shared_subscription_matches_by_its_filter() {
        assert!(topic_matches("$share/g/sport/+", "sport/tennis"));
        assert!(!topic_matches("$share/g/sport/+", "$share/g/sport/tennis"));
        assert!(!topic_matches("$share/g/#", "$SYS/x"));
        // Not shared without the group's slash: compared as ordinary text.
        assert!(topic_matches("$share/g", "$share/g"));
    }

    #[test]
    fn malformed_filters_are_compared_as_text_without_panicking() {
        assert!(topic_matches("a/#/b", "a/#/b"));
        assert!(!topic_matches("a/#/b", "a/x/b"));
        assert!(topic_matches("a+", "a+"));
        assert!(!topic_matches("a+", "ab"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("+", ""));
    }

    #[test]
    fn filter_path_puts_multi_level_wildcard_on_its_parent() {
        assert_eq!(filter_path("#"), (None, true));
        assert_eq!(filter_path("a/#"), (Some("a"), true));
        assert_eq!(filter_path("/#"), (Some(""), true));
        assert_eq!(filter_path("a/b"), (Some("a/b"), false));
        assert_eq!(filter_path("a#"), (Some("a#"), false));
        assert_eq!(split_level("a/"), ("a", Some("")));
        assert_eq!(split_level(""), ("", None));
    }
}
