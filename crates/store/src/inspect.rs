//! Reads for operators (the Admin service's operations API): sessions and
//! clients, subscriptions and retained messages, one page at a time.
//!
//! Every list reads a bounded number of records whatever it is asked: at
//! most [`MAX_PAGE`] items, from at most [`SCAN_PER_PAGE`] records (a
//! pattern that matches few ids stops there and says where to go on). A
//! page ends with a cursor, the last key it read, hex-encoded: the next
//! page starts after it, so that paging returns every record present
//! throughout exactly once even while others come and go. The order is the
//! store's key order (client ids sort by length, then bytes).

use crate::StoreError;
use crate::db::{Reader, decode};
use crate::keys::{self, cf};
use crate::machine::{RetainedPage, read_retained_page};
use crate::proto::{
    Edge, GetSessionInfoResponse, Message, RetainedInfo, Route, Session, SessionInfo, Subscription,
    SubscriptionInfo,
};

/// Items a page holds when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// Items a page holds at most.
pub const MAX_PAGE: usize = 1000;
/// Records a page reads at most (besides one point read per item).
pub const SCAN_PER_PAGE: usize = 10_000;
/// Subscriptions a session's details list at most.
pub const MAX_SESSION_SUBSCRIPTIONS: usize = 10_000;
/// Bytes of a retained message's payload a list shows.
pub const PAYLOAD_PREVIEW: usize = 256;

/// A page's size: the default for 0, at most [`MAX_PAGE`].
pub fn page_size(limit: u32) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

/// A cursor that is not one this module made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: pass the next_cursor of the previous page unchanged")]
pub struct BadCursor(pub String);

/// The key a cursor stands for (`None` for the empty cursor: from the
/// start).
pub fn parse_cursor(cursor: &str) -> Result<Option<Vec<u8>>, BadCursor> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || BadCursor(cursor.to_owned());
    if !cursor.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..cursor.len())
        .step_by(2)
        .map(|i| {
            cursor
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>, _>>()
        .map(Some)
}

/// The cursor of a key.
pub fn make_cursor(key: &[u8]) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One page of a list: its items and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` when nothing more can follow.
    pub next: Option<String>,
}

impl<T> Page<T> {
    fn empty() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}

/// Reads `family` from `start` (inclusive) to `end` (exclusive), keeping
/// what `take` makes of each record, until `limit` items or `scan` records.
/// The page's cursor is the last key read when more may follow.
fn scan_page<T>(
    reader: &impl Reader,
    family: &'static str,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    scan: usize,
    mut take: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
) -> Result<Page<T>, StoreError> {
    let records = reader.scan_range(family, start, end, scan.max(1))?;
    let read_all = records.len() < scan.max(1);
    let mut page = Page::empty();
    let count = records.len();
    for (position, (key, value)) in records.into_iter().enumerate() {
        if let Some(item) = take(&key, &value)? {
            page.items.push(item);
        }
        let last = position + 1 == count;
        if page.items.len() >= limit && !(last && read_all) {
            page.next = Some(make_cursor(&key));
            return Ok(page);
        }
        if last && !read_all {
            page.next = Some(make_cursor(&key));
        }
    }
    Ok(page)
}

/// Where a scan of `[start, end)` begins after `cursor`: the key right
/// after it, unless that is before `start`.
fn resume(start: &[u8], cursor: Option<&[u8]>) -> Vec<u8> {
    match cursor {
        Some(cursor) if cursor >= start => {
            let mut after = cursor.to_vec();
            after.push(0);
            after
        }
        _ => start.to_vec(),
    }
}

/// Whether a client id matches an operator's pattern: a glob with `*` (any
/// run) and `?` (any one character) over the whole id, or, without either,
/// a substring of it. The empty pattern matches everything.
pub fn id_matches(pattern: &str, id: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return id.contains(pattern);
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let id: Vec<char> = id.chars().collect();
    // Iterative glob with one backtrack point (the last `*`): linear in
    // practice, never exponential.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < id.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == '?' || c == id[i] => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((star_p, star_i)) => {
                    p = star_p + 1;
                    i = star_i + 1;
                    star = Some((star_p, star_i + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// What sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery<'a> {
    /// Only sessions online on an edge.
    pub online: bool,
    /// Only clients on this edge (id or configured name); implies online.
    pub edge: &'a str,
    /// Only client ids matching this pattern ([`id_matches`]).
    pub pattern: &'a str,
    /// Items wanted.
    pub limit: usize,
    /// Continue after this key.
    pub cursor: Option<&'a [u8]>,
}

/// A session as lists show it: without its will's message.
fn session_info(mut session: Session) -> SessionInfo {
    let will_topic = session
        .will
        .take()
        .and_then(|will| will.message)
        .map(|message| message.topic)
        .unwrap_or_default();
    SessionInfo {
        session: Some(session),
        will_topic,
    }
}

/// Whether an edge id names the edge an operator gave: the id itself, or
/// its configured name (the id is `name.incarnation`).
pub fn edge_matches(wanted: &str, edge_id: &str) -> bool {
    edge_id == wanted
        || edge_id.strip_prefix(wanted).is_some_and(|rest| {
            rest.starts_with('.') && rest[1..].bytes().all(|b| b.is_ascii_digit())
        })
}

/// One page of sessions: every session, or the online ones (from the
/// sessions each edge holds), or one edge's.
pub fn list_sessions(
    reader: &impl Reader,
    query: &SessionQuery<'_>,
) -> Result<Page<SessionInfo>, StoreError> {
    let limit = query.limit.max(1);
    let matches = |client_id: &str| id_matches(query.pattern, client_id);
    if !query.online && query.edge.is_empty() {
        let start = resume(b"", query.cursor);
        return scan_page(
            reader,
            cf::SESSIONS,
            &start,
            None,
            limit,
            SCAN_PER_PAGE,
            |_, value| {
                let session: Session = decode(cf::SESSIONS, value)?;
                Ok(matches(&session.client_id).then(|| session_info(session)))
            },
        );
    }
    // An online client's session, by its `edge_sessions` key.
    let online_session = |key: &[u8]| -> Result<Option<SessionInfo>, StoreError> {
        let Some((edge_id, rest)) = keys::take_str(key) else {
            return Ok(None);
        };
        let Some((client_id, _)) = keys::take_str(rest) else {
            return Ok(None);
        };
        if !matches(&client_id) {
            return Ok(None);
        }
        let session = reader.get_message::<Session>(cf::SESSIONS, &keys::client(&client_id))?;
        Ok(session
            .filter(|session| session.edge_id == edge_id)
            .map(session_info))
    };
    if query.edge.is_empty() {
        let start = resume(b"", query.cursor);
        return scan_page(
            reader,
            cf::EDGE_SESSIONS,
            &start,
            None,
            limit,
            SCAN_PER_PAGE,
            |key, _| online_session(key),
        );
    }
    // One edge by name may be several incarnations (a restarted edge whose
    // old lease has not lapsed yet): their ranges, in key order.
    let mut prefixes: Vec<Vec<u8>> = crate::machine::read_edges(reader)?
        .into_iter()
        .filter(|edge| edge_matches(query.edge, &edge.edge_id))
        .map(|edge| keys::edge(&edge.edge_id))
        .collect();
    prefixes.sort();
    let mut page = Page::empty();
    for (position, prefix) in prefixes.iter().enumerate() {
        let end = keys::prefix_end(prefix);
        if let (Some(cursor), Some(end)) = (query.cursor, end.as_deref())
            && cursor >= end
        {
            continue;
        }
        let start = resume(prefix, query.cursor);
        let part = scan_page(
            reader,
            cf::EDGE_SESSIONS,
            &start,
            end.as_deref(),
            limit - page.items.len(),
            SCAN_PER_PAGE,
            |key, _| online_session(key),
        )?;
        page.items.extend(part.items);
        if part.next.is_some() {
            page.next = part.next;
            return Ok(page);
        }
        if page.items.len() >= limit {
            if position + 1 < prefixes.len() {
                // Full at the end of this edge's range: the next page goes on
                // after every key of it (a client id is UTF-8, so no key
                // continues with 0xFF).
                let mut past = prefix.clone();
                past.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
                page.next = Some(make_cursor(&past));
            }
            return Ok(page);
        }
    }
    Ok(page)
}

/// A session with its subscriptions, the store's counts of its queue and
/// the edge holding it; `info` is absent when there is no such session.
pub fn session_details(
    reader: &impl Reader,
    client_id: &str,
) -> Result<GetSessionInfoResponse, StoreError> {
    let Some(session) = reader.get_message::<Session>(cf::SESSIONS, &keys::client(client_id))?
    else {
        return Ok(GetSessionInfoResponse::default());
    };
    let prefix = keys::client(client_id);
    let end = keys::prefix_end(&prefix);
    let records = reader.scan_range(
        cf::SUBSCRIPTIONS,
        &prefix,
        end.as_deref(),
        MAX_SESSION_SUBSCRIPTIONS + 1,
    )?;
    let subscriptions_truncated = records.len() > MAX_SESSION_SUBSCRIPTIONS;
    let mut subscriptions = Vec::with_capacity(records.len());
    for (key, value) in records.into_iter().take(MAX_SESSION_SUBSCRIPTIONS) {
        if let Some(filter) = keys::subscription_filter(&key, client_id) {
            subscriptions.push(Subscription {
                filter,
                options: Some(decode(cf::SUBSCRIPTIONS, &value)?),
            });
        }
    }
    // Packet identifiers are 16-bit: at most 65,535 in flight.
    let in_flight = reader
        .scan_range(cf::INFLIGHT, &prefix, end.as_deref(), usize::from(u16::MAX))?
        .len();
    let store_in_flight = u32::try_from(in_flight).unwrap_or(u32::MAX);
    let store_queued = session.queue_len.saturating_sub(store_in_flight);
    let edge = if session.edge_id.is_empty() {
        None
    } else {
        reader.get_message::<Edge>(cf::EDGES, &keys::edge(&session.edge_id))?
    };
    Ok(GetSessionInfoResponse {
        info: Some(session_info(session)),
        subscriptions,
        subscriptions_truncated,
        store_in_flight,
        store_queued,
        edge,
    })
}

/// What subscriptions to list.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionQuery<'a> {
    /// Only this client's.
    pub client_id: &'a str,
    /// Only this exact filter.
    pub filter: &'a str,
    /// Items wanted.
    pub limit: usize,
    /// Continue after this key.
    pub cursor: Option<&'a [u8]>,
}

/// One page of subscriptions: every one (by client), one client's, or one
/// filter's (from the route table, which is keyed by filter).
pub fn list_subscriptions(
    reader: &impl Reader,
    query: &SubscriptionQuery<'_>,
) -> Result<Page<SubscriptionInfo>, StoreError> {
    let limit = query.limit.max(1);
    let edge_of = |client_id: &str| -> Result<String, StoreError> {
        Ok(reader
            .get_message::<Session>(cf::SESSIONS, &keys::client(client_id))?
            .map(|session| session.edge_id)
            .unwrap_or_default())
    };
    if query.client_id.is_empty() && !query.filter.is_empty() {
        // A subscription has a route to its edge while online and one to
        // its store queue while persistent: a persistent session online
        // is listed once, from its queue route.
        let prefix = keys::route_filter(query.filter);
        let end = keys::prefix_end(&prefix);
        let start = resume(&prefix, query.cursor);
        return scan_page(
            reader,
            cf::ROUTES,
            &start,
            end.as_deref(),
            limit,
            SCAN_PER_PAGE,
            |_, value| {
                let route: Route = decode(cf::ROUTES, value)?;
                if route.filter != query.filter {
                    return Ok(None);
                }
                let edge_id = if route.edge_id.is_empty() {
                    edge_of(&route.client_id)?
                } else {
                    let queued = keys::session_route(&route.filter, &route.client_id);
                    if reader.get(cf::ROUTES, &queued)?.is_some() {
                        return Ok(None);
                    }
                    route.edge_id
                };
                Ok(Some(SubscriptionInfo {
                    client_id: route.client_id,
                    filter: route.filter,
                    options: route.options,
                    edge_id,
                }))
            },
        );
    }
    let (prefix, end) = if query.client_id.is_empty() {
        (Vec::new(), None)
    } else {
        let prefix = keys::client(query.client_id);
        let end = keys::prefix_end(&prefix);
        (prefix, end)
    };
    let start = resume(&prefix, query.cursor);
    // The client's edge, looked up once per client of the page.
    let mut last_edge: Option<(String, String)> = None;
    scan_page(
        reader,
        cf::SUBSCRIPTIONS,
        &start,
        end.as_deref(),
        limit,
        SCAN_PER_PAGE,
        |key, value| {
            let Some((client_id, filter)) = keys::split_subscription(key) else {
                return Ok(None);
            };
            if !query.filter.is_empty() && filter != query.filter {
                return Ok(None);
            }
            let edge_id = match &last_edge {
                Some((client, edge)) if *client == client_id => edge.clone(),
                _ => {
                    let edge = edge_of(&client_id)?;
                    last_edge = Some((client_id.clone(), edge.clone()));
                    edge
                }
            };
            Ok(Some(SubscriptionInfo {
                client_id,
                filter,
                options: Some(decode(cf::SUBSCRIPTIONS, value)?),
                edge_id,
            }))
        },
    )
}

/// One page of the retained messages matching `filter` (`#` when empty),
/// payloads cut to [`PAYLOAD_PREVIEW`] bytes. The cursor is the last topic
/// read.
pub fn list_retained(
    reader: &impl Reader,
    filter: &str,
    limit: usize,
    cursor: Option<&[u8]>,
    now_ms: u64,
) -> Result<Page<RetainedInfo>, StoreError> {
    let filter = if filter.is_empty() { "#" } else { filter };
    let after = cursor.map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let RetainedPage {
        messages,
        resume_after,
    } = read_retained_page(
        reader,
        filter,
        after.as_deref(),
        limit.max(1),
        SCAN_PER_PAGE,
        now_ms,
    )?;
    let items = messages
        .into_iter()
        .map(|mut message: Message| {
            let payload_size = u32::try_from(message.payload.len()).unwrap_or(u32::MAX);
            message.payload.truncate(PAYLOAD_PREVIEW);
            RetainedInfo {
                message: Some(message),
                payload_size,
            }
        })
        .collect();
    Ok(Page {
        items,
        next: resume_after.map(|topic| make_cursor(topic.as_bytes())),
    })
}

/// The retained message of one topic, unless it expired.
pub fn retained_message(
    reader: &impl Reader,
    topic: &str,
    now_ms: u64,
) -> Result<Option<Message>, StoreError> {
    Ok(reader
        .get_message::<Message>(cf::RETAINED, topic.as_bytes())?
        .filter(|message| message.expires_at_ms == 0 || message.expires_at_ms > now_ms))
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
