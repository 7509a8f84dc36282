//! The permissions claim, in either of EMQX's forms, into
//! [`TopicPermissions`]; a rule that cannot be applied exactly is refused.

use serde_json::{Map, Value};

use super::JwtError;
use crate::acl::{PermissionRule, TopicPermissions};

/// Permissions from the ACL claim, in either of EMQX's forms.
pub(super) fn parse_permissions(claim: &Value) -> Result<TopicPermissions, JwtError> {
    let rules = match claim {
        Value::Array(items) => {
            let mut rules = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let parsed = parse_rule(item)
                    .map_err(|problem| JwtError::Acl(format!("rule {}: {problem}", index + 1)))?;
                rules.extend(parsed);
            }
            rules
        }
        Value::Object(lists) => parse_topic_lists(lists).map_err(JwtError::Acl)?,
        _ => {
            return Err(JwtError::Acl(
                "expected a list of rules, or an object of `pub`, `sub` and `all` lists".into(),
            ));
        }
    };
    Ok(TopicPermissions::new(rules))
}

/// The fields a rule of the list form may have.
const RULE_FIELDS: [&str; 6] = ["permission", "action", "topic", "topics", "qos", "retain"];

/// One rule of the list form; `topics` gives one rule per topic.
fn parse_rule(item: &Value) -> Result<Vec<PermissionRule>, String> {
    let Value::Object(fields) = item else {
        return Err("not an object".into());
    };
    if let Some(field) = fields
        .keys()
        .find(|key| !RULE_FIELDS.contains(&key.as_str()))
    {
        return Err(format!("`{field}` is not supported"));
    }
    let allow = match fields.get("permission").and_then(Value::as_str) {
        Some("allow") => true,
        Some("deny") => false,
        _ => return Err("`permission` must be \"allow\" or \"deny\"".into()),
    };
    let (publish, subscribe) = match fields.get("action").and_then(Value::as_str) {
        Some("publish" | "pub") => (true, false),
        Some("subscribe" | "sub") => (false, true),
        Some("all") => (true, true),
        _ => return Err("`action` must be \"publish\", \"subscribe\" or \"all\"".into()),
    };
    check_all_qos(fields.get("qos"))?;
    check_any_retain(fields.get("retain"))?;
    let topics: Vec<&str> = match (fields.get("topic"), fields.get("topics")) {
        (Some(Value::String(topic)), None) => vec![topic],
        (None, Some(Value::Array(topics))) => topics
            .iter()
            .map(|topic| topic.as_str().ok_or("`topics` must hold strings"))
            .collect::<Result<_, _>>()?,
        (Some(_), Some(_)) => return Err("both `topic` and `topics`".into()),
        _ => return Err("`topic` must be a string, or `topics` a list of strings".into()),
    };
    topics
        .into_iter()
        .map(|topic| {
            Ok(PermissionRule {
                allow,
                publish,
                subscribe,
                filter: parse_topic(topic)?,
            })
        })
        .collect()
}

/// `qos` may be left out, or list every level: Rookery's rules do not
/// distinguish QoS, and a narrower rule applied to every QoS could grant
/// more than meant.
fn check_all_qos(qos: Option<&Value>) -> Result<(), String> {
    let levels: Vec<Option<u64>> = match qos {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(levels)) => levels.iter().map(qos_level).collect(),
        Some(Value::String(levels)) => levels
            .split(',')
            .map(|level| level.trim().parse().ok())
            .collect(),
        Some(level) => vec![qos_level(level)],
    };
    if levels.iter().any(|level| !matches!(level, Some(0..=2))) {
        return Err("`qos` must hold levels 0, 1 and 2".into());
    }
    if (0..=2).all(|wanted| levels.contains(&Some(wanted))) {
        Ok(())
    } else {
        Err("a `qos` restriction is not supported (leave `qos` out)".into())
    }
}

fn qos_level(level: &Value) -> Option<u64> {
    match level {
        Value::String(level) => level.parse().ok(),
        level => level.as_u64(),
    }
}

/// `retain` may be left out or be `"all"`, for the same reason as `qos`.
fn check_any_retain(retain: Option<&Value>) -> Result<(), String> {
    match retain {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(retain)) if retain == "all" => Ok(()),
        Some(_) => Err("a `retain` restriction is not supported (leave `retain` out)".into()),
    }
}

/// The old form: topics allowed for publishing, subscribing, or both.
fn parse_topic_lists(lists: &Map<String, Value>) -> Result<Vec<PermissionRule>, String> {
    let mut rules = Vec::new();
    for (key, topics) in lists {
        let (publish, subscribe) = match key.as_str() {
            "pub" => (true, false),
            "sub" => (false, true),
            "all" => (true, true),
            _ => return Err(format!("`{key}` is not `pub`, `sub` or `all`")),
        };
        let Value::Array(topics) = topics else {
            return Err(format!("`{key}` must be a list of topics"));
        };
        for topic in topics {
            let topic = topic
                .as_str()
                .ok_or_else(|| format!("`{key}` must hold strings"))?;
            rules.push(PermissionRule {
                allow: true,
                publish,
                subscribe,
                filter: parse_topic(topic)?,
            });
        }
    }
    Ok(rules)
}

/// A rule's topic filter, with EMQX's placeholders `${clientid}` and
/// `${username}` left for [`TopicPermissions`] to replace. `eq TOPIC`
/// (EMQX: the topic as written, matched without wildcards) is the same as
/// `TOPIC` when it has neither wildcards nor placeholders, and refused
/// otherwise.
fn parse_topic(raw: &str) -> Result<String, String> {
    if let Some(literal) = raw.strip_prefix("eq ") {
        if literal.contains(['+', '#']) || literal.contains("${") {
            return Err(format!(
                "`{raw}`: an `eq` topic with wildcards or placeholders is not supported"
            ));
        }
        return valid_filter(raw, literal).map(|()| literal.to_string());
    }
    let plain = raw.replace("${clientid}", "c").replace("${username}", "u");
    if plain.contains("${") {
        return Err(format!(
            "`{raw}`: only the placeholders ${{clientid}} and ${{username}} are supported"
        ));
    }
    // With a placeholder present, `%c` and `%u` would be replaced too
    // (Mosquitto's patterns share the code); EMQX 5 keeps them as written.
    if plain != raw && (raw.contains("%c") || raw.contains("%u")) {
        return Err(format!(
            "`{raw}`: `%c` or `%u` beside a placeholder is not supported"
        ));
    }
    valid_filter(raw, &plain)?;
    Ok(raw.to_string())
}

fn valid_filter(raw: &str, filter: &str) -> Result<(), String> {
    rookery_topic::validate_topic_filter(filter)
        .map_err(|_| format!("`{raw}` is not a valid topic filter"))
}
