//! Shared subscriptions, MQTT 5.0 section 4.8.2: `$share/{group}/{filter}`.
//! Each message matching `filter` goes to one member of the group rather than
//! to every subscriber; picking the member is the broker's business.

use crate::validate::SHARE_PREFIX;

/// A shared subscription filter split into its share name and topic filter,
/// borrowed from the subscribed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: subscriptions with the same group and filter share messages.
    pub group: &'a str,
    /// The topic filter that decides which messages the group receives.
    pub filter: &'a str,
}

impl<'a> SharedFilter<'a> {
    /// Splits `$share/{group}/{filter}`, or returns `None` when `filter` is an
    /// ordinary (non-shared) filter.
    ///
    /// This only splits: it does not check that the group or the filter is
    /// valid (`$share//a` gives an empty group). Run
    /// [`crate::validate_topic_filter`] on what a client sends first.
    pub fn parse(filter: &'a str) -> Option<Self> {
        let (group, filter) = filter.strip_prefix(SHARE_PREFIX)?.split_once('/')?;
        Some(SharedFilter { group, filter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_8_2_splits_group_and_filter() {
        assert_eq!(
            SharedFilter::parse("$share/consumers/sport/+/#"),
            Some(SharedFilter {
                group: "consumers",
                filter: "sport/+/#"
            })
        );
        assert_eq!(
            SharedFilter::parse("$share/g//"),
            Some(SharedFilter {
                group: "g",
                filter: "/"
            })
        );
        assert_eq!(
            SharedFilter::parse("$share/g/"),
            Some(SharedFilter {
                group: "g",
                filter: ""
            })
        );
    }

    #[test]
    fn ordinary_filters_are_not_shared() {
        for filter in [
            "sport/#",
            "$SYS/#",
            "$share",
            "$share/g",
            "$shared/g/a",
            "share/g/a",
            "",
        ] {
            assert_eq!(SharedFilter::parse(filter), None, "{filter}");
        }
    }
}
