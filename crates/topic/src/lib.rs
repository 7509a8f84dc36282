//! Topic names and topic filters for Rookery.
//!
//! This crate knows what a valid MQTT topic name and topic filter are, how a
//! filter matches a name (`+`, `#`, and the rule that `$`-topics are not matched
//! by a leading wildcard), what a shared subscription `$share/{group}/{filter}`
//! is, and keeps two indexes: subscriptions (which subscribers match a topic)
//! and retained topics (which retained topics match a new filter).
//!
//! It never does I/O and knows nothing of MQTT packets: the codec and the broker
//! sit above it. Start reading at [`validate_topic_name`] and
//! [`validate_topic_filter`], then [`topic_matches`], which defines matching;
//! [`SubscriptionIndex`] (the per-message path) and [`RetainedIndex`] must agree
//! with it, and the property tests in `tests/` check that they do.

#![forbid(unsafe_code)]

mod matching;
mod retained;
mod shared;
mod small_map;
mod subscriptions;
mod validate;

pub use matching::topic_matches;
pub use retained::RetainedIndex;
pub use shared::SharedFilter;
pub use subscriptions::{Match, SharedGroup, SubscriptionIndex};
pub use validate::{MAX_TOPIC_BYTES, TopicError, validate_topic_filter, validate_topic_name};
