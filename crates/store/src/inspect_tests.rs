//! The operators' reads: every page bounded, every record once across
//! pages, filters and patterns as documented.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::bytes::Bytes;

use super::*;
use crate::db::{Db, Txn};
use crate::machine::apply_batch;
use crate::proto::{
    self, Command, CommandBatch, SubscriptionOptions, command::Kind, command_result::Kind as Result,
};

const T0: u64 = 1_700_000_000_000;

struct Store {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    index: u64,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        Store {
            _dir: dir,
            db,
            index: 1,
        }
    }

    fn apply(&mut self, kinds: Vec<Kind>) -> Vec<Result> {
        let batch = CommandBatch {
            now_ms: T0,
            commands: kinds
                .into_iter()
                .map(|kind| Command { kind: Some(kind) })
                .collect(),
        };
        let mut txn = Txn::new(&self.db);
        let results = apply_batch(&mut txn, self.index, &batch, &mut Vec::new()).unwrap();
        self.db.raw().write(txn.into_batch().unwrap()).unwrap();
        self.index += 1;
        results.into_iter().map(|r| r.kind.unwrap()).collect()
    }

    /// Connects a client on `edge` with `expiry_s`; its epoch.
    fn connect(&mut self, client_id: &str, edge: &str, expiry_s: u32) -> u64 {
        let connect = Kind::Connect(proto::Connect {
            client_id: client_id.into(),
            edge_id: edge.into(),
            expiry_interval_s: expiry_s,
            protocol_version: 5,
            ..proto::Connect::default()
        });
        match self.apply(vec![connect]).remove(0) {
            Result::Connected(connected) => connected.epoch,
            other => panic!("{other:?}"),
        }
    }

    fn subscribe(&mut self, client_id: &str, epoch: u64, filter: &str) {
        self.apply(vec![Kind::Subscribe(proto::Subscribe {
            client_id: client_id.into(),
            epoch,
            subscriptions: vec![proto::Subscription {
                filter: filter.into(),
                options: Some(SubscriptionOptions {
                    qos: 1,
                    ..SubscriptionOptions::default()
                }),
            }],
        })]);
    }

    fn disconnect(&mut self, client_id: &str, epoch: u64, expiry_s: u32) {
        self.apply(vec![Kind::Disconnect(proto::Disconnect {
            client_id: client_id.into(),
            epoch,
            expiry_interval_s: expiry_s,
            publish_will: false,
            records_lost: false,
        })]);
    }

    fn register(&mut self, edge: &str) {
        self.apply(vec![Kind::RegisterEdge(proto::RegisterEdge {
            edge_id: edge.into(),
            address: format!("{edge}:7000"),
            lease_ms: 10_000,
            stats: None,
        })]);
    }
}

fn ids(page: &Page<SessionInfo>) -> Vec<String> {
    page.items
        .iter()
        .map(|info| info.session.as_ref().unwrap().client_id.clone())
        .collect()
}

/// Pages through a list until its cursor runs out; every page's items.
fn all_pages<T>(
    mut page_at: impl FnMut(Option<&[u8]>) -> Page<T>,
    limit: usize,
) -> (Vec<T>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = page_at(cursor.as_deref());
        assert!(page.items.len() <= limit, "a page over its limit");
        pages += 1;
        assert!(pages < 1000, "paging does not end");
        items.extend(page.items);
        match page.next {
            Some(next) => cursor = parse_cursor(&next).unwrap(),
            None => return (items, pages),
        }
    }
}

#[test]
fn cursors_round_trip_and_bad_ones_are_refused() {
    let key = vec![0, 3, b'a', 0xFF, 0x10];
    assert_eq!(parse_cursor(&make_cursor(&key)).unwrap(), Some(key));
    assert_eq!(parse_cursor("").unwrap(), None);
    assert!(parse_cursor("abc").is_err());
    assert!(parse_cursor("zz").is_err());
    assert!(parse_cursor("é1").is_err());
}

#[test]
fn page_sizes_default_and_are_capped() {
    assert_eq!(page_size(0), DEFAULT_PAGE);
    assert_eq!(page_size(7), 7);
    assert_eq!(page_size(1_000_000), MAX_PAGE);
}

#[test]
fn patterns_are_globs_or_substrings() {
    assert!(id_matches("", "anything"));
    assert!(id_matches("sens", "my-sensor-7"));
    assert!(!id_matches("sens", "pump"));
    assert!(id_matches("sensor-*", "sensor-7"));
    assert!(!id_matches("sensor-*", "my-sensor-7"));
    assert!(id_matches("*-7", "my-sensor-7"));
    assert!(id_matches("s?n*r-?", "sensor-7"));
    assert!(id_matches("*a*b*c*", "xxaxxbxxcxx"));
    assert!(!id_matches("*a*b*c", "xxaxxbxxcxx"));
    assert!(id_matches("*", ""));
    assert!(!id_matches("?", ""));
}

#[test]
fn edges_match_by_id_or_by_configured_name() {
    assert!(edge_matches("node-1.1700000000000", "node-1.1700000000000"));
    assert!(edge_matches("node-1", "node-1.1700000000000"));
    assert!(!edge_matches("node-1", "node-10.1700000000000"));
    assert!(!edge_matches("node", "node-1.1700000000000"));
}

/// Paging returns every session exactly once over several pages, in key
/// order, however the page size divides the total.
#[test]
fn session_pages_return_every_session_once() {
    let mut store = Store::new();
    let mut expected = BTreeSet::new();
    for i in 0..53 {
        let client = format!("client-{i}");
        let epoch = store.connect(&client, "e1", 3_600);
        if i % 3 == 0 {
            store.disconnect(&client, epoch, 3_600);
        }
        expected.insert(client);
    }
    for limit in [1, 7, 53, 100] {
        let (items, pages) = all_pages(
            |cursor| {
                let query = SessionQuery {
                    limit,
                    cursor,
                    ..SessionQuery::default()
                };
                list_sessions(&*store.db, &query).unwrap()
            },
            limit,
        );
        let seen: Vec<String> = items
            .iter()
            .map(|info| info.session.as_ref().unwrap().client_id.clone())
            .collect();
        assert_eq!(seen.len(), 53, "limit {limit}: {seen:?}");
        assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(pages, 53usize.div_ceil(limit).max(1), "limit {limit}");
    }
}

/// A session deleted between two pages is simply not listed; the others
/// are each listed once.
#[test]
fn paging_survives_changes_between_pages() {
    let mut store = Store::new();
    for i in 0..10 {
        store.connect(&format!("c{i}"), "e1", 60);
    }
    fn query(cursor: Option<&[u8]>) -> SessionQuery<'_> {
        SessionQuery {
            limit: 4,
            cursor,
            ..SessionQuery::default()
        }
    }
    let first = list_sessions(&*store.db, &query(None)).unwrap();
    assert_eq!(ids(&first), ["c0", "c1", "c2", "c3"]);
    store.apply(vec![Kind::DiscardSession(proto::DiscardSession {
        client_id: "c5".into(),
    })]);
    store.connect("c10", "e1", 60);
    // Going on from the first page's cursor: c5 is gone, c10 (longer, so
    // later in key order) is in, and the first page's are not seen again.
    let mut cursor = parse_cursor(first.next.as_deref().unwrap()).unwrap();
    let mut rest = Vec::new();
    while let Some(at) = cursor {
        let page = list_sessions(&*store.db, &query(Some(&at))).unwrap();
        rest.extend(ids(&page));
        cursor = page.next.map(|next| parse_cursor(&next).unwrap().unwrap());
    }
    assert_eq!(rest, ["c4", "c6", "c7", "c8", "c9", "c10"]);
}

#[test]
fn clients_are_the_online_sessions_and_filter_by_edge_and_pattern() {
    let mut store = Store::new();
    store.register("node-1.100");
    store.register("node-1.200");
    store.register("node-2.100");
    let a = store.connect("sensor-a", "node-1.100", 60);
    store.connect("sensor-b", "node-1.200", 60);
    store.connect("pump-c", "node-1.200", 60);
    store.connect("sensor-d", "node-2.100", 0);
    store.disconnect("sensor-a", a, 60);

    let list = |online, edge, pattern| {
        let query = SessionQuery {
            online,
            edge,
            pattern,
            limit: 10,
            cursor: None,
        };
        let mut seen = ids(&list_sessions(&*store.db, &query).unwrap());
        seen.sort();
        seen
    };
    assert_eq!(
        list(false, "", ""),
        ["pump-c", "sensor-a", "sensor-b", "sensor-d"]
    );
    assert_eq!(list(true, "", ""), ["pump-c", "sensor-b", "sensor-d"]);
    assert_eq!(list(true, "", "sensor"), ["sensor-b", "sensor-d"]);
    assert_eq!(
        list(false, "", "sensor-?"),
        ["sensor-a", "sensor-b", "sensor-d"]
    );
    // Both incarnations of node-1 by name; one by id.
    assert_eq!(list(true, "node-1", ""), ["pump-c", "sensor-b"]);
    assert_eq!(list(false, "node-1.200", "pump*"), ["pump-c"]);
    assert_eq!(list(true, "node-2", ""), ["sensor-d"]);
    assert!(list(true, "node-3", "").is_empty());

    // Paging across the two incarnations' ranges, one client a page.
    let (items, _) = all_pages(
        |cursor| {
            let query = SessionQuery {
                edge: "node-1",
                limit: 1,
                cursor,
                ..SessionQuery::default()
            };
            list_sessions(&*store.db, &query).unwrap()
        },
        1,
    );
    assert_eq!(items.len(), 2);
}

/// A pattern matching few ids still reads a bounded number of records per
/// page: the page may come back short, with a cursor to go on.
#[test]
fn a_sparse_pattern_reads_a_bounded_page() {
    let mut store = Store::new();
    let total = SCAN_PER_PAGE + 5;
    let kinds: Vec<Kind> = (0..total)
        .map(|i| {
            Kind::Connect(proto::Connect {
                client_id: format!("c{i:06}"),
                edge_id: "e1".into(),
                expiry_interval_s: 60,
                ..proto::Connect::default()
            })
        })
        .collect();
    store.apply(kinds);
    let query = SessionQuery {
        pattern: "c01000*",
        limit: 5,
        ..SessionQuery::default()
    };
    let first = list_sessions(&*store.db, &query).unwrap();
    assert!(first.items.is_empty(), "{:?}", ids(&first));
    let cursor = parse_cursor(first.next.as_deref().unwrap()).unwrap();
    let second = list_sessions(
        &*store.db,
        &SessionQuery {
            cursor: cursor.as_deref(),
            ..query
        },
    )
    .unwrap();
    assert_eq!(
        ids(&second),
        ["c010000", "c010001", "c010002", "c010003", "c010004"]
    );
}

#[test]
fn session_details_have_subscriptions_counts_and_edge() {
    let mut store = Store::new();
    store.register("e1");
    let epoch = store.connect("c1", "e1", 60);
    store.subscribe("c1", epoch, "a/#");
    store.subscribe("c1", epoch, "b");
    for _ in 0..3 {
        store.apply(vec![Kind::Enqueue(proto::Enqueue {
            message: Some(proto::Message {
                topic: "a/x".into(),
                payload: Bytes::from_static(b"m"),
                qos: 1,
                ..proto::Message::default()
            }),
            targets: vec![proto::EnqueueTarget {
                client_id: "c1".into(),
                qos: 1,
                ..proto::EnqueueTarget::default()
            }],
            ..proto::Enqueue::default()
        })]);
    }
    store.apply(vec![Kind::MarkPublished(proto::MarkPublished {
        client_id: "c1".into(),
        epoch,
        seq: 1,
        packet_id: 9,
    })]);
    let details = session_details(&*store.db, "c1").unwrap();
    let filters: Vec<&str> = details
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["a/#", "b"]);
    assert!(!details.subscriptions_truncated);
    assert_eq!((details.store_in_flight, details.store_queued), (1, 2));
    assert_eq!(details.edge.unwrap().edge_id, "e1");
    assert!(
        session_details(&*store.db, "nobody")
            .unwrap()
            .info
            .is_none()
    );
}

#[test]
fn subscriptions_list_by_client_by_filter_and_all_once() {
    let mut store = Store::new();
    // c1 persistent and online (two routes per filter), c2 clean and online,
    // c3 persistent and offline.
    let c1 = store.connect("c1", "e1", 60);
    let c2 = store.connect("c2", "e2", 0);
    let c3 = store.connect("c3", "e1", 60);
    for (client, epoch) in [("c1", c1), ("c2", c2), ("c3", c3)] {
        store.subscribe(client, epoch, "t/+");
    }
    store.subscribe("c1", c1, "other");
    store.disconnect("c3", c3, 60);

    let list = |client_id, filter, limit| {
        all_pages(
            |cursor| {
                let query = SubscriptionQuery {
                    client_id,
                    filter,
                    limit,
                    cursor,
                };
                list_subscriptions(&*store.db, &query).unwrap()
            },
            limit,
        )
        .0
        .into_iter()
        .map(|s| format!("{} {} {}", s.client_id, s.filter, s.edge_id))
        .collect::<Vec<_>>()
    };
    assert_eq!(
        list("", "", 1),
        ["c1 other e1", "c1 t/+ e1", "c2 t/+ e2", "c3 t/+ "]
    );
    assert_eq!(list("c1", "", 10), ["c1 other e1", "c1 t/+ e1"]);
    assert_eq!(list("c1", "t/+", 10), ["c1 t/+ e1"]);
    let mut by_filter = list("", "t/+", 1);
    by_filter.sort();
    assert_eq!(by_filter, ["c1 t/+ e1", "c2 t/+ e2", "c3 t/+ "]);
    assert!(list("", "t/x", 10).is_empty());
}

#[test]
fn retained_lists_show_previews_and_get_shows_the_whole_payload() {
    let mut store = Store::new();
    let big = vec![b'x'; PAYLOAD_PREVIEW * 4];
    for (topic, payload) in [
        ("a/1", b"one".to_vec()),
        ("a/2", big.clone()),
        ("b/1", b"three".to_vec()),
    ] {
        store.apply(vec![Kind::SetRetained(proto::SetRetained {
            message: Some(proto::Message {
                topic: topic.into(),
                payload: Bytes::from(payload),
                retain: true,
                ..proto::Message::default()
            }),
            ..proto::SetRetained::default()
        })]);
    }
    let (items, pages) = all_pages(
        |cursor| list_retained(&*store.db, "", 1, cursor, T0).unwrap(),
        1,
    );
    assert_eq!(pages, 3);
    let topics: Vec<&str> = items
        .iter()
        .map(|i| i.message.as_ref().unwrap().topic.as_str())
        .collect();
    assert_eq!(topics, ["a/1", "a/2", "b/1"]);
    assert_eq!(items[1].payload_size as usize, big.len());
    assert_eq!(
        items[1].message.as_ref().unwrap().payload.len(),
        PAYLOAD_PREVIEW
    );
    let (a, _) = all_pages(
        |cursor| list_retained(&*store.db, "a/+", 10, cursor, T0).unwrap(),
        10,
    );
    assert_eq!(a.len(), 2);
    let whole = retained_message(&*store.db, "a/2", T0).unwrap().unwrap();
    assert_eq!(whole.payload.len(), big.len());
    assert!(retained_message(&*store.db, "a/3", T0).unwrap().is_none());
}
