//! Validation of topic names (what a PUBLISH carries) and topic filters (what a
//! SUBSCRIBE carries), MQTT 5.0 section 4.7 (the same rules hold for 3.1.1).

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// MQTT-4.7.3-1: topic names and filters are at least one character long.
    #[error("topic is empty")]
    Empty,
    /// MQTT-4.7.3-3: a topic is a UTF-8 string of at most 65,535 bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// MQTT-4.7.3-2: no U+0000 in a topic.
    #[error("topic contains U+0000")]
    NullCharacter,
    /// MQTT-3.3.2-2: a topic name in PUBLISH contains no wildcard characters.
    #[error("topic name contains a wildcard character")]
    WildcardInName,
    /// MQTT-4.7.1-1: `#` is the last character and stands alone in its level.
    #[error("'#' is not alone in the last level of the filter")]
    MisplacedMultiLevelWildcard,
    /// MQTT-4.7.1-2: `+` occupies a whole level.
    #[error("'+' does not occupy a whole level of the filter")]
    MisplacedSingleLevelWildcard,
    /// MQTT-4.8.2-1: a share name is at least one character long.
    #[error("shared subscription has an empty share name")]
    EmptyShareName,
    /// MQTT-4.8.2-2: a share name contains no `/`, `+` or `#`.
    #[error("shared subscription share name contains '/', '+' or '#'")]
    InvalidShareName,
    /// MQTT-4.8.2-1: `$share/{ShareName}/` is followed by a topic filter.
    #[error("shared subscription has no topic filter")]
    MissingSharedFilter,
}

/// The largest topic in bytes (MQTT-4.7.3-3, the length prefix of a UTF-8 string).
pub const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// Checks a topic name, the topic a message is published to.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as it appears in SUBSCRIBE or UNSUBSCRIBE, including
/// the `$share/{group}/{filter}` form of a shared subscription.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let (group, inner) = rest.split_once('/').ok_or(if rest.is_empty() {
            TopicError::EmptyShareName
        } else {
            TopicError::MissingSharedFilter
        })?;
        if group.is_empty() {
            return Err(TopicError::EmptyShareName);
        }
        if group.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::InvalidShareName);
        }
        if inner.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        return check_filter_levels(inner);
    }
    check_filter_levels(filter)
}

/// The prefix that marks a shared subscription (MQTT 5.0 section 4.8.2).
pub(crate) const SHARE_PREFIX: &str = "$share/";

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if topic.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

fn check_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_mqtt_4_7() {
        assert_eq!(validate_topic_name("a/b/c"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/broker"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name(&"x".repeat(65_536)),
            Err(TopicError::TooLong)
        );
        assert_eq!(validate_topic_name(&"x".repeat(65_535)), Ok(()));
    }

    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_is_last_and_alone() {
        for ok in ["#", "a/#", "/#", "+/#", "a/b/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedMultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_fills_its_level() {
        for ok in ["+", "+/+", "a/+/b", "/+", "+/"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a+", "a/+b", "++", "a/b+/c"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedSingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_8_2_shared_subscription_syntax() {
        assert_eq!(validate_topic_filter("$share/g/a/+"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g/#"), Ok(()));
        assert_eq!(
            validate_topic_filter("$share//a"),
            Err(TopicError::EmptyShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/"),
            Err(TopicError::EmptyShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/g"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            validate_topic_filter("$share/g/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            validate_topic_filter("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/g#/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            validate_topic_filter("$share/g/a#"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        // `$share` without the slash is an ordinary filter.
        assert_eq!(validate_topic_filter("$shared/x"), Ok(()));
    }
}
