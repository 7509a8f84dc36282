//! The key layout of the state machine's column families.
//!
//! Every key starts with the value the store will later be sharded by: the
//! client id for session data, the topic or filter for topic data. Strings are
//! length-prefixed (u16, big-endian) so that one client's keys form a single
//! contiguous range that no other client id can fall into ("ab" never prefixes
//! "abc"'s keys). Integers are big-endian so that they sort numerically.

/// Column families of the state machine. The snapshot carries exactly these.
pub mod cf {
    /// Applied log id and membership.
    pub const SM_META: &str = "sm_meta";
    /// client id → `Session`.
    pub const SESSIONS: &str = "sessions";
    /// client id, filter → `SubscriptionOptions`.
    pub const SUBSCRIPTIONS: &str = "subscriptions";
    /// client id, seq → `QueuedMessage` (without its message).
    pub const QUEUES: &str = "queues";
    /// client id, packet id → seq of the in-flight queue entry.
    pub const INFLIGHT: &str = "inflight";
    /// client id, packet id → empty: incoming QoS 2 packet ids not yet released.
    pub const INCOMING: &str = "incoming";
    /// message id → `StoredMessage`.
    pub const MESSAGES: &str = "messages";
    /// filter, target → `Route`.
    pub const ROUTES: &str = "routes";
    /// topic → `Message`.
    pub const RETAINED: &str = "retained";
    /// edge id → `Edge`.
    pub const EDGES: &str = "edges";
    /// edge id, client id → empty: the sessions an edge holds online.
    pub const EDGE_SESSIONS: &str = "edge_sessions";
    /// client id → `PendingWill`.
    pub const WILLS: &str = "wills";
    /// due time, kind, subject → empty: what a Tick must look at.
    pub const TIMERS: &str = "timers";
    /// counter name → u64 (big-endian): totals the caps are checked against
    /// (retained topics and bytes, persistent sessions), kept with every
    /// change so that a cap costs no scan.
    pub const COUNTERS: &str = "counters";

    /// The state machine's column families, in snapshot order. The index of a
    /// family here is its tag in the snapshot format: append only.
    pub const STATE: [&str; 14] = [
        SM_META,
        SESSIONS,
        SUBSCRIPTIONS,
        QUEUES,
        INFLIGHT,
        INCOMING,
        MESSAGES,
        ROUTES,
        RETAINED,
        EDGES,
        EDGE_SESSIONS,
        WILLS,
        TIMERS,
        COUNTERS,
    ];

    /// Raft log entries, by index.
    pub const LOG: &str = "log";
    /// Vote, committed log id, last purged log id.
    pub const RAFT_META: &str = "raft_meta";
}

/// Appends a length-prefixed string. Client ids and topics are at most 65,535
/// bytes by the MQTT wire format, so the u16 prefix always fits.
pub fn push_str(key: &mut Vec<u8>, value: &str) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&value.as_bytes()[..usize::from(len)]);
}

/// The key of a client's session, and the prefix of all its other keys.
pub fn client(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    push_str(&mut key, client_id);
    key
}

/// A client's subscription to a filter: (client, filter).
pub fn subscription(client_id: &str, filter: &str) -> Vec<u8> {
    let mut key = client(client_id);
    key.extend_from_slice(filter.as_bytes());
    key
}

/// The filter back from a subscription key.
pub fn subscription_filter(key: &[u8], client_id: &str) -> Option<String> {
    let rest = key.get(2 + client_id.len()..)?;
    String::from_utf8(rest.to_vec()).ok()
}

/// A length-prefixed string read back from the start of `key`, and the
/// rest of the key after it.
pub fn take_str(key: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let bytes = key.get(2..2 + len)?;
    let value = String::from_utf8(bytes.to_vec()).ok()?;
    Some((value, &key[2 + len..]))
}

/// The client id and the filter back from a subscription key.
pub fn split_subscription(key: &[u8]) -> Option<(String, String)> {
    let (client_id, rest) = take_str(key)?;
    let filter = String::from_utf8(rest.to_vec()).ok()?;
    Some((client_id, filter))
}

/// An entry of a client's queue, by sequence number: (client, seq).
pub fn queue_entry(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A client's packet identifier (in flight or incoming): (client, packet id).
pub fn packet(client_id: &str, packet_id: u32) -> Vec<u8> {
    let mut key = client(client_id);
    // Packet identifiers are 16-bit on the wire; the proto carries u32.
    key.extend_from_slice(&(packet_id as u16).to_be_bytes());
    key
}

/// A stored message, by id.
pub fn message(message_id: u64) -> Vec<u8> {
    message_id.to_be_bytes().to_vec()
}

// Route kinds, so that a filter's edge routes and session routes group.
/// The kind byte of a route to an online session on an edge.
pub const ROUTE_TO_EDGE: u8 = b'e';
/// The kind byte of a route to a persistent session's store queue.
pub const ROUTE_TO_SESSION: u8 = b's';

/// The prefix of every route of one filter.
pub fn route_filter(filter: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + filter.len() + 32);
    push_str(&mut key, filter);
    key
}

/// A route to an online session on an edge: (filter, edge, client).
pub fn edge_route(filter: &str, edge_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = route_filter(filter);
    key.push(ROUTE_TO_EDGE);
    push_str(&mut key, edge_id);
    push_str(&mut key, client_id);
    key
}

/// A route to a persistent session: (filter, client).
pub fn session_route(filter: &str, client_id: &str) -> Vec<u8> {
    let mut key = route_filter(filter);
    key.push(ROUTE_TO_SESSION);
    push_str(&mut key, client_id);
    key
}

/// A registered edge, and the prefix of the sessions it holds.
pub fn edge(edge_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + edge_id.len());
    push_str(&mut key, edge_id);
    key
}

/// A session an edge holds online: (edge, client).
pub fn edge_session(edge_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = edge(edge_id);
    push_str(&mut key, client_id);
    key
}

/// Reads the client id back from an `edge_session` key.
pub fn edge_session_client(key: &[u8], edge_id: &str) -> Option<String> {
    let rest = key.get(2 + edge_id.len()..)?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let bytes = rest.get(2..2 + len)?;
    String::from_utf8(bytes.to_vec()).ok()
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// An offline session reaches its expiry.
    SessionExpiry,
    /// A will's delay ends.
    Will,
    /// A retained message expires.
    RetainedExpiry,
    /// An offline session's shared-subscription copies are due to go to
    /// the other members of their groups.
    SharedHandoff,
}

impl TimerKind {
    fn tag(self) -> u8 {
        match self {
            TimerKind::SessionExpiry => b'S',
            TimerKind::Will => b'W',
            TimerKind::RetainedExpiry => b'R',
            TimerKind::SharedHandoff => b'H',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'S' => Some(TimerKind::SessionExpiry),
            b'W' => Some(TimerKind::Will),
            b'R' => Some(TimerKind::RetainedExpiry),
            b'H' => Some(TimerKind::SharedHandoff),
            _ => None,
        }
    }
}

/// A timer: (due time, kind, subject), so that timers sort by due time.
pub fn timer(at_ms: u64, kind: TimerKind, subject: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 1 + 2 + subject.len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.push(kind.tag());
    push_str(&mut key, subject);
    key
}

/// A timer key taken apart: due time, kind and subject.
pub fn parse_timer(key: &[u8]) -> Option<(u64, TimerKind, String)> {
    let at = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let kind = TimerKind::from_tag(*key.get(8)?)?;
    let len = usize::from(u16::from_be_bytes([*key.get(9)?, *key.get(10)?]));
    let subject = String::from_utf8(key.get(11..11 + len)?.to_vec()).ok()?;
    Some((at, kind, subject))
}

/// The smallest key greater than every key starting with `prefix`, for range
/// scans and range deletes; `None` when no such key exists (all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_clients_keys_never_fall_in_anothers_range() {
        let ab = client("ab");
        let abc_sub = subscription("abc", "x");
        assert!(!abc_sub.starts_with(&ab));
        assert!(subscription("ab", "x").starts_with(&ab));
    }

    #[test]
    fn queue_entries_sort_by_sequence() {
        assert!(queue_entry("c", 2) < queue_entry("c", 10));
        assert!(queue_entry("c", 255) < queue_entry("c", 256));
    }

    #[test]
    fn timers_sort_by_due_time_and_parse_back() {
        let early = timer(5, TimerKind::Will, "zzz");
        let late = timer(6, TimerKind::SessionExpiry, "aaa");
        assert!(early < late);
        assert_eq!(
            parse_timer(&late),
            Some((6, TimerKind::SessionExpiry, "aaa".to_string()))
        );
    }

    #[test]
    fn edge_session_keys_give_back_the_client() {
        let key = edge_session("edge-1", "client/7");
        assert_eq!(
            edge_session_client(&key, "edge-1").as_deref(),
            Some("client/7")
        );
    }

    #[test]
    fn subscription_keys_split_into_client_and_filter() {
        let key = subscription("client/7", "a/+/#");
        assert_eq!(
            split_subscription(&key),
            Some(("client/7".to_string(), "a/+/#".to_string()))
        );
        assert_eq!(split_subscription(&[0, 5, b'a']), None);
        let key = client("c");
        let (id, rest) = take_str(&key).unwrap();
        assert_eq!((id.as_str(), rest), ("c", [].as_slice()));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
