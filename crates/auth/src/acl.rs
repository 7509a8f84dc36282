//! Topic permissions: Mosquitto's `acl_file` format, read unchanged, and the
//! permission lists a JWT may carry.
//!
//! The file's rules, as Mosquitto 2 applies them:
//! - `topic [read|write|readwrite|deny] FILTER` lines before the first
//!   `user` line apply to anonymous clients; after `user NAME`, to that user.
//!   The access defaults to `readwrite`.
//! - `pattern [access] FILTER` lines apply to every client, with `%c`
//!   replaced by the client id and `%u` by the username. A client id or
//!   username holding `+`, `#` or `/` never matches a pattern that names it,
//!   so it cannot widen its own permissions.
//! - `deny` wins over any grant; with no grant, access is denied.
//! - `#` comments, blank lines and leading spaces are ignored.
//!
//! Reading a message checks its topic. Subscribing checks the filter the way
//! Mosquitto does: a grant must cover every topic the filter can match (`a/#`
//! covers `a/+`, not the reverse), and a deny refuses the subscription when
//! it covers the whole filter; a subscription a deny covers only in part
//! (`#` with `deny secret`) is accepted, and its messages on denied topics
//! are not sent, since reading is checked for every message.

use std::borrow::Cow;
use std::collections::HashMap;

use rookery_topic::topic_matches;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Be sent a message published to this topic name.
    Read,
    /// Subscribe with this topic filter.
    Subscribe,
    /// Publish to this topic name (also a will's topic).
    Write,
}

/// A line of an ACL file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct AclError {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// What a rule grants, or that it denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn parse(word: &str) -> Option<Grant> {
        match word {
            "read" => Some(Grant::Read),
            "write" => Some(Grant::Write),
            "readwrite" => Some(Grant::ReadWrite),
            "deny" => Some(Grant::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _)
                | (Grant::Read, Access::Read | Access::Subscribe)
                | (Grant::Write, Access::Write)
        )
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: String,
}

/// Who is asking: the substitutions of `pattern` lines, and which `user`
/// block applies.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The authenticated username; `None` for an anonymous client.
    pub username: Option<&'a str>,
    /// The client identifier.
    pub client_id: &'a str,
}

/// A parsed `acl_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads an ACL file's text.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |problem: &str| AclError {
                line: index + 1,
                problem: problem.into(),
            };
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(keyword, rest)| (keyword, rest.trim_start()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a name"));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(&error)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                _ => return Err(error("expected `user`, `topic` or `pattern`")),
            }
        }
        Ok(acl)
    }

    /// Whether `subject` may do `access` on `topic` (a topic name for
    /// [`Access::Read`] and [`Access::Write`], a filter for
    /// [`Access::Subscribe`]).
    pub fn allows(&self, subject: Subject<'_>, topic: &str, access: Access) -> bool {
        let own = match subject.username {
            Some(username) => self.users.get(username).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        // One pass, no allocation but a pattern's substitution: a deny
        // ends it, a grant is remembered.
        let mut granted = false;
        let own = own
            .iter()
            .map(|rule| (rule.grant, Cow::Borrowed(rule.filter.as_str())));
        let patterns = self
            .patterns
            .iter()
            .map(|rule| (rule.grant, substitute(&rule.filter, subject)));
        for (grant, filter) in own
            .map(|(grant, filter)| (grant, Some(filter)))
            .chain(patterns)
        {
            let Some(filter) = filter else {
                // A deny that cannot name this client still denies: a client
                // id with `/` must not slip past `deny devices/%c/private/#`.
                if grant == Grant::Deny {
                    return false;
                }
                continue;
            };
            if !applies(&filter, topic, access) {
                continue;
            }
            if grant == Grant::Deny {
                return false;
            }
            granted |= grant.grants(access);
        }
        granted
    }
}

/// `[access] FILTER`; the filter may contain spaces only after an access
/// word, as in Mosquitto.
fn parse_rule(rest: &str) -> Result<Rule, &'static str> {
    if rest.is_empty() {
        return Err("a topic filter is missing");
    }
    let (first, after) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(first, after)| (first, after.trim_start()));
    let (grant, filter) = match Grant::parse(first) {
        Some(grant) if !after.is_empty() => (grant, after),
        Some(_) => return Err("a topic filter is missing after the access"),
        None => (Grant::ReadWrite, rest),
    };
    if rookery_topic::validate_topic_filter(&filter.replace("%c", "c").replace("%u", "u")).is_err()
    {
        return Err("not a valid topic filter");
    }
    Ok(Rule {
        grant,
        filter: filter.to_string(),
    })
}

/// A pattern's filter with `%c` and `%u` replaced; `None` when the subject
/// has no username for `%u`, or a value that would add levels or wildcards.
fn substitute<'f>(filter: &'f str, subject: Subject<'_>) -> Option<Cow<'f, str>> {
    let safe = |value: &str| !value.contains(['+', '#', '/']);
    if !filter.contains('%') {
        return Some(Cow::Borrowed(filter));
    }
    let mut result = filter.to_string();
    if filter.contains("%c") {
        if !safe(subject.client_id) {
            return None;
        }
        result = result.replace("%c", subject.client_id);
    }
    if filter.contains("%u") {
        let username = subject.username.filter(|username| safe(username))?;
        result = result.replace("%u", username);
    }
    Some(Cow::Owned(result))
}

/// Whether a rule's filter is about `topic`: matching for a name, covering
/// for a subscription's filter.
fn applies(filter: &str, topic: &str, access: Access) -> bool {
    match access {
        Access::Read | Access::Write => topic_matches(filter, topic),
        Access::Subscribe => filter_covers(filter, topic),
    }
}

/// Whether every topic `filter` can match is matched by `rule` (level by
/// level: `#` covers the rest, `+` covers one level but not `#`, text covers
/// only the same text). A `$` topic is covered only by a rule naming `$`
/// itself (MQTT-4.7.2-1).
fn filter_covers(rule: &str, filter: &str) -> bool {
    let filter = rookery_topic::SharedFilter::parse(filter).map_or(filter, |shared| shared.filter);
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    let mut first = true;
    loop {
        let dollar = first && filter.starts_with('$');
        match (rule_levels.next(), filter_levels.next()) {
            (Some("#"), _) if !dollar => return true,
            (Some("+"), Some(level)) if !dollar && level != "#" => {}
            (Some(rule_level), Some(level)) if rule_level == level && rule_level != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Permissions carried by a token: an ordered list of rules, the first that
/// matches decides, and what none matches is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPermissions {
    rules: Vec<PermissionRule>,
}

/// One rule of [`TopicPermissions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRule {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// Whether the rule is about publishing.
    pub publish: bool,
    /// Whether the rule is about subscribing (and so reading).
    pub subscribe: bool,
    /// The topic filter; `${username}` and `${clientid}` are replaced.
    pub filter: String,
}

impl TopicPermissions {
    /// Permissions made of `rules`, in order.
    pub fn new(rules: Vec<PermissionRule>) -> TopicPermissions {
        TopicPermissions { rules }
    }

    /// Whether `subject` may do `access` on `topic`.
    pub fn allows(&self, subject: Subject<'_>, topic: &str, access: Access) -> bool {
        for rule in &self.rules {
            let about = match access {
                Access::Write => rule.publish,
                Access::Read | Access::Subscribe => rule.subscribe,
            };
            if !about {
                continue;
            }
            let Some(filter) = expand_placeholders(&rule.filter, subject) else {
                // As in the ACL file: a deny that cannot name this client
                // still denies.
                if rule.allow {
                    continue;
                }
                return false;
            };
            if applies(&filter, topic, access) {
                return rule.allow;
            }
        }
        false
    }
}

/// EMQX's placeholders; a value with `+`, `#` or `/` never matches.
fn expand_placeholders<'f>(filter: &'f str, subject: Subject<'_>) -> Option<Cow<'f, str>> {
    if !filter.contains("${") {
        return Some(Cow::Borrowed(filter));
    }
    let mosquitto_style = filter
        .replace("${clientid}", "%c")
        .replace("${username}", "%u");
    substitute(&mosquitto_style, subject).map(|expanded| Cow::Owned(expanded.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: Subject<'static> = Subject {
        username: None,
        client_id: "c1",
    };

    fn user(name: &'static str) -> Subject<'static> {
        Subject {
            username: Some(name),
            client_id: "c1",
        }
    }

    /// The ACL the Paho suites run with: everything but `test/nosubscribe`.
    const PAHO: &str = "topic readwrite #\ntopic deny test/nosubscribe\n";

    #[test]
    fn a_deny_refuses_its_topic_and_its_exact_subscription() {
        let acl = Acl::parse(PAHO).unwrap();
        assert!(!acl.allows(ANON, "test/nosubscribe", Access::Subscribe));
        assert!(!acl.allows(ANON, "test/nosubscribe", Access::Read));
        assert!(!acl.allows(ANON, "test/nosubscribe", Access::Write));
        assert!(acl.allows(ANON, "TopicA/B", Access::Write));
    }

    #[test]
    fn a_wider_subscription_is_accepted_and_its_denied_topics_are_not_read() {
        let acl = Acl::parse(PAHO).unwrap();
        assert!(acl.allows(ANON, "#", Access::Subscribe));
        assert!(acl.allows(ANON, "test/+", Access::Subscribe));
        assert!(!acl.allows(ANON, "test/nosubscribe", Access::Read));
        assert!(acl.allows(ANON, "test/other", Access::Read));
    }

    #[test]
    fn topics_before_any_user_apply_to_anonymous_clients_only() {
        let acl = Acl::parse("topic read public/#\nuser alice\ntopic write alice/#\n").unwrap();
        assert!(acl.allows(ANON, "public/x", Access::Read));
        assert!(!acl.allows(user("alice"), "public/x", Access::Read));
        assert!(acl.allows(user("alice"), "alice/x", Access::Write));
        assert!(!acl.allows(user("alice"), "alice/x", Access::Read));
        assert!(!acl.allows(user("bob"), "alice/x", Access::Write));
        assert!(!acl.allows(ANON, "alice/x", Access::Write));
    }

    #[test]
    fn access_defaults_to_readwrite_and_filters_may_hold_spaces() {
        let acl = Acl::parse("user alice\ntopic a/b\ntopic read with space/x\n").unwrap();
        assert!(acl.allows(user("alice"), "a/b", Access::Read));
        assert!(acl.allows(user("alice"), "a/b", Access::Write));
        assert!(acl.allows(user("alice"), "with space/x", Access::Read));
    }

    #[test]
    fn patterns_apply_to_everyone_with_client_id_and_username() {
        let acl =
            Acl::parse("pattern readwrite devices/%c/#\npattern read users/%u/inbox\n").unwrap();
        assert!(acl.allows(ANON, "devices/c1/temp", Access::Write));
        assert!(!acl.allows(ANON, "devices/c2/temp", Access::Write));
        assert!(acl.allows(user("alice"), "users/alice/inbox", Access::Read));
        assert!(!acl.allows(ANON, "users/alice/inbox", Access::Read));
    }

    #[test]
    fn a_wildcard_in_a_client_id_never_widens_a_pattern() {
        let acl = Acl::parse("pattern readwrite devices/%c/#\n").unwrap();
        for id in ["+", "#", "a/b"] {
            let subject = Subject {
                username: None,
                client_id: id,
            };
            assert!(!acl.allows(subject, "devices/x/y", Access::Write), "{id}");
            assert!(!acl.allows(subject, "devices/#", Access::Subscribe), "{id}");
        }
    }

    #[test]
    fn a_deny_pattern_that_cannot_name_the_client_still_denies() {
        let acl =
            Acl::parse("pattern deny devices/%c/private/#\ntopic readwrite devices/#\n").unwrap();
        let slashed = Subject {
            username: None,
            client_id: "a/b",
        };
        assert!(!acl.allows(slashed, "devices/a/b/private/x", Access::Read));
        assert!(acl.allows(ANON, "devices/c1/public", Access::Read));
        assert!(!acl.allows(ANON, "devices/c1/private/x", Access::Read));
    }

    #[test]
    fn a_subscription_needs_a_grant_covering_the_whole_filter() {
        let acl = Acl::parse("topic read a/#\ntopic read b/+/c\n").unwrap();
        assert!(acl.allows(ANON, "a/#", Access::Subscribe));
        assert!(acl.allows(ANON, "a/+/x", Access::Subscribe));
        assert!(acl.allows(ANON, "b/+/c", Access::Subscribe));
        assert!(acl.allows(ANON, "b/x/c", Access::Subscribe));
        assert!(!acl.allows(ANON, "#", Access::Subscribe));
        assert!(!acl.allows(ANON, "b/#", Access::Subscribe));
        assert!(!acl.allows(ANON, "b/x/+", Access::Subscribe));
        assert!(acl.allows(ANON, "$share/g/a/x", Access::Subscribe));
        assert!(!acl.allows(ANON, "$share/g/c", Access::Subscribe));
    }

    #[test]
    fn hash_does_not_grant_sys_topics() {
        // MQTT-4.7.2-1: a leading wildcard does not match a `$` topic.
        let acl = Acl::parse("topic readwrite #\n").unwrap();
        assert!(!acl.allows(ANON, "$SYS/#", Access::Subscribe));
        assert!(!acl.allows(ANON, "$SYS/broker/uptime", Access::Read));
        let acl = Acl::parse("topic read $SYS/#\n").unwrap();
        assert!(acl.allows(ANON, "$SYS/#", Access::Subscribe));
        assert!(acl.allows(ANON, "$SYS/broker/uptime", Access::Read));
    }

    #[test]
    fn no_grant_means_no_access() {
        let acl = Acl::parse("").unwrap();
        assert!(!acl.allows(ANON, "a", Access::Read));
        assert!(!acl.allows(user("x"), "a", Access::Write));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        assert_eq!(Acl::parse("topic read a\nfoo bar\n").unwrap_err().line, 2);
        assert_eq!(Acl::parse("user\n").unwrap_err().line, 1);
        assert_eq!(Acl::parse("topic read\n").unwrap_err().line, 1);
        assert_eq!(Acl::parse("topic read a/#/b\n").unwrap_err().line, 1);
    }

    #[test]
    fn token_permissions_take_the_first_matching_rule() {
        let permissions = TopicPermissions::new(vec![
            PermissionRule {
                allow: false,
                publish: true,
                subscribe: true,
                filter: "t/secret".into(),
            },
            PermissionRule {
                allow: true,
                publish: true,
                subscribe: false,
                filter: "t/${clientid}/#".into(),
            },
            PermissionRule {
                allow: true,
                publish: false,
                subscribe: true,
                filter: "t/#".into(),
            },
        ]);
        assert!(!permissions.allows(ANON, "t/secret", Access::Read));
        assert!(permissions.allows(ANON, "t/c1/x", Access::Write));
        assert!(!permissions.allows(ANON, "t/c2/x", Access::Write));
        assert!(permissions.allows(ANON, "t/#", Access::Subscribe));
        assert!(!permissions.allows(ANON, "u/x", Access::Read));
    }
}
