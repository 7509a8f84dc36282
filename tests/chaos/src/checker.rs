//! Judges a [`History`]: every rule below is a guarantee Rookery makes, and
//! a run fails on any violation, each naming the message it concerns.
//!
//! - **Lost**: an acknowledged QoS 1/2 publish reaches every subscription
//!   that matched it (granted QoS 1 or 2, in place before it was sent):
//!   always for a persistent session; for a clean session, when that
//!   subscriber's connection lived to the end of the run.
//! - **Duplicated**: no QoS 2 delivery of one publish twice to one session
//!   (a clean session lives as long as its connection).
//! - **Reordered**: per subscriber, publisher and topic, each publish
//!   arrives the first time after those sent before it in the same
//!   publisher session (MQTT 4.6: a persistent session's across its
//!   connections; a clean one's within its connection: what a connection
//!   that ended had in flight may still land after what the next sends);
//!   a QoS 1 redelivery of one already received is allowed.
//! - **Shared groups**: an acknowledged QoS 1/2 publish that matched a
//!   `$share` group reaches at least one of its members, and a QoS 2 one
//!   exactly one. (A member must not also hold a plain subscription
//!   matching the same topics: a delivery cannot say which it came by.)
//! - **Wills**: a will is published at most once per connection (a QoS 1
//!   will sent to the watcher again with DUP, after the watcher's connection
//!   failed, is a redelivery: [`Report::will_redeliveries`]), never for
//!   one that ended with a normal DISCONNECT, and at least once for one that
//!   ended otherwise, given time ([`Rules::will_within`]). One exception,
//!   counted apart in [`Report::wills_after_unrecorded_disconnect`]: a
//!   normal DISCONNECT taken by an edge while a fault had killed, paused or
//!   cut it off from the store. MQTT's DISCONNECT has no answer, so the
//!   edge may hold it unrecorded when the store, after the edge's lease,
//!   takes the connection for dead and publishes the will: a lease cannot
//!   tell a dead edge from a cut-off one.
//! - **Retained**: at the end every edge holds the same retained message
//!   per topic, one that was sent with RETAIN on it; none where one was
//!   acknowledged.
//! - **Never sent**: nothing is delivered that no publisher sent, or on
//!   another topic than it was sent on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use rookery_topic::{SharedFilter, topic_matches};

use crate::history::{Event, History, MessageId, Millis};

/// What the checker may assume of the run.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A connection that ended without a normal DISCONNECT this long before
    /// the run's last event must have had its will published (its will
    /// delay, the edge's lease and a Tick all fit in it).
    pub will_within: Millis,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            will_within: 30_000,
        }
    }
}

/// One broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged publish never reached a subscription owed it.
    Lost {
        /// The publish.
        id: MessageId,
        /// The subscriber.
        client: String,
        /// The filter that matched it.
        filter: String,
    },
    /// A QoS 2 publish reached one session more than once.
    Duplicated {
        /// The publish.
        id: MessageId,
        /// The subscriber.
        client: String,
        /// How many times.
        times: usize,
    },
    /// A publish arrived, the first time, after a later one of the same
    /// publisher and topic.
    Reordered {
        /// The publish that came late.
        id: MessageId,
        /// The subscriber.
        client: String,
        /// The topic.
        topic: String,
        /// The highest sequence number of that publisher on that topic
        /// the subscriber had received before it.
        after: u64,
    },
    /// A delivery names no publish that was sent on its topic.
    NeverSent {
        /// The subscriber.
        client: String,
        /// The topic it arrived on.
        topic: String,
        /// What its payload named, if anything.
        id: Option<MessageId>,
    },
    /// An acknowledged publish reached no member of a shared group.
    SharedMissed {
        /// The publish.
        id: MessageId,
        /// The group's filter, `$share/{group}/...`.
        group: String,
    },
    /// A QoS 2 publish reached more than one member of a shared group.
    SharedDuplicated {
        /// The publish.
        id: MessageId,
        /// The group's filter.
        group: String,
        /// The members it reached.
        members: Vec<String>,
    },
    /// A connection's will was published more than once.
    WillTwice {
        /// Whose will.
        client: String,
        /// Which connection of the client (from 1).
        connection: u64,
        /// How many times.
        times: usize,
    },
    /// A will was published for a connection that ended normally (or for
    /// one that had no will).
    WillUnwarranted {
        /// Whose will.
        client: String,
        /// Which connection.
        connection: u64,
    },
    /// A connection with a will ended without a normal DISCONNECT and its
    /// will never came.
    WillMissing {
        /// Whose will.
        client: String,
        /// Which connection.
        connection: u64,
    },
    /// The edges hold different retained messages for a topic.
    RetainedDiverged {
        /// The topic.
        topic: String,
        /// What each edge holds.
        held: Vec<(String, Option<MessageId>)>,
    },
    /// An edge holds a retained message nobody sent with RETAIN on that
    /// topic.
    RetainedNeverSent {
        /// The topic.
        topic: String,
        /// The edge.
        edge: String,
        /// What it holds.
        id: MessageId,
    },
    /// No edge holds a retained message for a topic where one was
    /// acknowledged.
    RetainedLost {
        /// The topic.
        topic: String,
        /// The last acknowledged retained publish on it.
        id: MessageId,
    },
}

impl Violation {
    /// Which guarantee it breaks, as the summary counts them.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Lost { .. } => "lost",
            Violation::Duplicated { .. } => "duplicated",
            Violation::Reordered { .. } => "reordered",
            Violation::NeverSent { .. } => "never sent",
            Violation::SharedMissed { .. } | Violation::SharedDuplicated { .. } => "shared group",
            Violation::WillTwice { .. }
            | Violation::WillUnwarranted { .. }
            | Violation::WillMissing { .. } => "wills",
            Violation::RetainedDiverged { .. }
            | Violation::RetainedNeverSent { .. }
            | Violation::RetainedLost { .. } => "retained",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { id, client, filter } => write!(
                f,
                "lost: {id} was acknowledged but never reached {client} (subscribed to {filter})"
            ),
            Violation::Duplicated { id, client, times } => {
                write!(f, "duplicated: QoS 2 {id} reached {client} {times} times")
            }
            Violation::Reordered {
                id,
                client,
                topic,
                after,
            } => write!(
                f,
                "reordered: {id} reached {client} on {topic} after #{after} of the same publisher"
            ),
            Violation::NeverSent { client, topic, id } => match id {
                Some(id) => write!(f, "never sent: {client} received {id} on {topic}"),
                None => write!(
                    f,
                    "never sent: {client} received a message naming no publish on {topic}"
                ),
            },
            Violation::SharedMissed { id, group } => {
                write!(
                    f,
                    "shared group missed: {id} was acknowledged but reached no member of {group}"
                )
            }
            Violation::SharedDuplicated { id, group, members } => write!(
                f,
                "shared group duplicated: QoS 2 {id} reached {} members of {group}: {}",
                members.len(),
                members.join(", ")
            ),
            Violation::WillTwice {
                client,
                connection,
                times,
            } => write!(
                f,
                "will published {times} times for {client}'s connection {connection}"
            ),
            Violation::WillUnwarranted { client, connection } => write!(
                f,
                "will published for {client}'s connection {connection}, which ended normally or had none"
            ),
            Violation::WillMissing { client, connection } => write!(
                f,
                "will missing: {client}'s connection {connection} ended without DISCONNECT and its will never came"
            ),
            Violation::RetainedDiverged { topic, held } => {
                write!(f, "retained state diverged on {topic}:")?;
                for (edge, id) in held {
                    match id {
                        Some(id) => write!(f, " {edge}={id}")?,
                        None => write!(f, " {edge}=none")?,
                    }
                }
                Ok(())
            }
            Violation::RetainedNeverSent { topic, edge, id } => write!(
                f,
                "retained never sent: {edge} holds {id} as {topic}'s retained message"
            ),
            Violation::RetainedLost { topic, id } => write!(
                f,
                "retained lost: {id} was acknowledged as {topic}'s retained message and no edge holds one"
            ),
        }
    }
}

/// What the checker found: figures, and every violation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Events in the history.
    pub operations: usize,
    /// Publishes sent, acknowledged, refused.
    pub sent: usize,
    /// See `sent`.
    pub acked: usize,
    /// See `sent`.
    pub refused: usize,
    /// Deliveries, redeliveries included.
    pub delivered: usize,
    /// QoS 1 deliveries of a publish the session had already received
    /// (allowed).
    pub redelivered: usize,
    /// Faults by kind.
    pub faults: BTreeMap<String, usize>,
    /// Per fault kind, the longest time between two acknowledgements (of any
    /// publisher) around a fault of that kind: from the last before it to
    /// the first after it, or to the run's end if none came.
    pub longest_unacknowledged: BTreeMap<String, Millis>,
    /// Wills published after a normal DISCONNECT that an edge took while
    /// under a fault (see the module): not violations, shown apart.
    pub wills_after_unrecorded_disconnect: usize,
    /// Wills that arrived again with DUP (allowed, as QoS 1 redeliveries).
    pub will_redeliveries: usize,
    /// Every broken guarantee.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of one [`Violation::kind`].
    fn count(&self, kind: &str) -> usize {
        self.violations
            .iter()
            .filter(|violation| violation.kind() == kind)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "operations {}: sent {}, acknowledged {}, refused {}, delivered {} ({} QoS 1 redeliveries)",
            self.operations, self.sent, self.acked, self.refused, self.delivered, self.redelivered
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, n)| match self.longest_unacknowledged.get(kind) {
                Some(gap) => format!(
                    "{kind} {n} (longest without an acknowledgement {:.1} s)",
                    *gap as f64 / 1000.0
                ),
                None => format!("{kind} {n}"),
            })
            .collect();
        writeln!(
            f,
            "faults: {}",
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        )?;
        writeln!(
            f,
            "lost {}, QoS 2 duplicated {}, reordered {}, never sent {}, shared group {}, wills {}, retained {}",
            self.count("lost"),
            self.count("duplicated"),
            self.count("reordered"),
            self.count("never sent"),
            self.count("shared group"),
            self.count("wills"),
            self.count("retained"),
        )?;
        if self.will_redeliveries > 0 {
            writeln!(
                f,
                "wills sent again with DUP after the watcher's connection failed (allowed, QoS 1): {}",
                self.will_redeliveries
            )?;
        }
        if self.wills_after_unrecorded_disconnect > 0 {
            writeln!(
                f,
                "wills after a normal DISCONNECT an edge under a fault took (allowed): {}",
                self.wills_after_unrecorded_disconnect
            )?;
        }
        const SHOWN: usize = 50;
        for violation in self.violations.iter().take(SHOWN) {
            writeln!(f, "  {violation}")?;
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.violations.len() - SHOWN)?;
        }
        write!(f, "{}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

/// A publish as its publisher sent it.
#[derive(Debug, Clone)]
struct SentMessage {
    at: Millis,
    topic: String,
    qos: u8,
    retain: bool,
    /// The publisher's session when it was sent: 0 for a persistent one,
    /// else its connection number.
    session: u64,
}

/// One connection of a client.
#[derive(Debug, Clone)]
struct Connection {
    /// The edge it was made to.
    edge: String,
    persistent: bool,
    will: bool,
    /// When it ended, and whether normally; `None` while it lived on.
    ended: Option<(Millis, bool)>,
}

/// A session: its client, and for a clean session the connection number
/// (0 for a persistent one, which outlives its connections).
type Session<'h> = (&'h str, u64);

/// The history, indexed.
#[derive(Debug, Default)]
struct Index<'h> {
    sent: HashMap<&'h MessageId, SentMessage>,
    acked: HashMap<&'h MessageId, Millis>,
    connections: HashMap<&'h str, Vec<Connection>>,
    /// Each subscription: client, filter, granted QoS, when in place, and
    /// the client's connection number then.
    subscriptions: Vec<(&'h str, &'h str, u8, Millis, u64)>,
    /// Each delivery that names a sent publish: client, publish, QoS, and
    /// the client's connection number.
    deliveries: Vec<(&'h str, &'h MessageId, u8, u64)>,
    last_at: Millis,
}

impl<'h> Index<'h> {
    fn new(history: &'h History, report: &mut Report) -> Index<'h> {
        let mut index = Index::default();
        for event in &history.events {
            index.last_at = index.last_at.max(event.at());
            match event {
                Event::Sent {
                    at,
                    id,
                    topic,
                    qos,
                    retain,
                } => {
                    report.sent += 1;
                    let connection = index.connection_number(&id.publisher);
                    let session = index.session_key(&id.publisher, connection).1;
                    index.sent.insert(
                        id,
                        SentMessage {
                            at: *at,
                            topic: topic.clone(),
                            qos: *qos,
                            retain: *retain,
                            session,
                        },
                    );
                }
                Event::Acked { at, id } => {
                    report.acked += 1;
                    index.acked.entry(id).or_insert(*at);
                }
                Event::Refused { .. } => report.refused += 1,
                Event::Connected {
                    client,
                    edge,
                    persistent,
                    will,
                    ..
                } => index
                    .connections
                    .entry(client.as_str())
                    .or_default()
                    .push(Connection {
                        edge: edge.clone(),
                        persistent: *persistent,
                        will: *will,
                        ended: None,
                    }),
                Event::Disconnected { at, client, clean } => {
                    if let Some(last) = index
                        .connections
                        .get_mut(client.as_str())
                        .and_then(|connections| connections.last_mut())
                        && last.ended.is_none()
                    {
                        last.ended = Some((*at, *clean));
                    }
                }
                Event::Subscribed {
                    at,
                    client,
                    filter,
                    qos,
                } => {
                    let connection = index.connection_number(client);
                    index.subscriptions.push((
                        client.as_str(),
                        filter.as_str(),
                        *qos,
                        *at,
                        connection,
                    ));
                }
                Event::Delivered {
                    client,
                    id,
                    topic,
                    qos,
                    ..
                } => {
                    report.delivered += 1;
                    let sent_here = id
                        .as_ref()
                        .and_then(|id| index.sent.get(id).map(|sent| (id, sent)));
                    match sent_here {
                        Some((id, sent)) if sent.topic == *topic => {
                            let connection = index.connection_number(client);
                            index
                                .deliveries
                                .push((client.as_str(), id, *qos, connection));
                        }
                        _ => report.violations.push(Violation::NeverSent {
                            client: client.clone(),
                            topic: topic.clone(),
                            id: id.clone(),
                        }),
                    }
                }
                Event::Fault { kind, .. } => *report.faults.entry(kind.clone()).or_default() += 1,
                Event::WillPublished { .. } | Event::RetainedSeen { .. } => {}
            }
        }
        index
    }

    /// The number (from 1) of the client's latest connection; 0 before any.
    fn connection_number(&self, client: &str) -> u64 {
        self.connections
            .get(client)
            .map_or(0, |connections| connections.len() as u64)
    }

    /// The client's connection number `n` (from 1).
    fn connection(&self, client: &str, n: u64) -> Option<&Connection> {
        let i = usize::try_from(n.checked_sub(1)?).ok()?;
        self.connections.get(client)?.get(i)
    }

    /// Whether the session `client` had at connection `n` is persistent.
    fn persistent(&self, client: &str, n: u64) -> bool {
        self.connection(client, n)
            .is_some_and(|connection| connection.persistent)
    }

    /// The session a delivery at connection `n` went to: one per client for
    /// a persistent session, one per connection for a clean one.
    fn session_key(&self, client: &'h str, n: u64) -> Session<'h> {
        if self.persistent(client, n) {
            (client, 0)
        } else {
            (client, n)
        }
    }
}

/// Judges `history` under `rules`.
pub fn check(history: &History, rules: Rules) -> Report {
    let mut report = Report {
        operations: history.events.len(),
        ..Report::default()
    };
    let index = Index::new(history, &mut report);
    check_lost(&index, &mut report);
    check_duplicates_and_order(&index, &mut report);
    check_shared_groups(&index, &mut report);
    check_wills(history, &index, rules, &mut report);
    check_retained(history, &index, &mut report);
    measure_unacknowledged(history, &index, &mut report);
    report
}

/// Acknowledged publishes that a plain subscription was owed and that
/// never reached it.
fn check_lost(index: &Index<'_>, report: &mut Report) {
    let received: HashSet<(&str, &MessageId)> = index
        .deliveries
        .iter()
        .map(|(client, id, _, _)| (*client, *id))
        .collect();
    let mut reported = HashSet::new();
    let mut acked: Vec<(&&MessageId, &Millis)> = index.acked.iter().collect();
    acked.sort();
    for &(client, filter, granted, in_place, connection) in &index.subscriptions {
        if granted == 0 || SharedFilter::parse(filter).is_some() {
            continue;
        }
        if !index.persistent(client, connection) {
            // A clean session is owed only what was sent while the
            // connection that subscribed lived, if it lived to the end.
            let lived = index
                .connection(client, connection)
                .is_some_and(|c| c.ended.is_none());
            if !lived {
                continue;
            }
        }
        for &(id, _) in &acked {
            let Some(sent) = index.sent.get(*id) else {
                continue;
            };
            if sent.qos == 0 || sent.at <= in_place || !topic_matches(filter, &sent.topic) {
                continue;
            }
            if !received.contains(&(client, *id)) && reported.insert((client, *id)) {
                report.violations.push(Violation::Lost {
                    id: (*id).clone(),
                    client: client.to_owned(),
                    filter: filter.to_owned(),
                });
            }
        }
    }
}

/// QoS 2 publishes delivered twice to one session, and publishes that
/// arrived the first time after a later one of their publisher and topic.
fn check_duplicates_and_order(index: &Index<'_>, report: &mut Report) {
    let mut qos2_times: BTreeMap<(Session<'_>, &MessageId), usize> = BTreeMap::new();
    // Per session, publisher (and its session) and topic: what arrived,
    // and the highest.
    type Stream<'h> = (Session<'h>, &'h str, u64, &'h str);
    let mut streams: HashMap<Stream<'_>, (HashSet<u64>, u64)> = HashMap::new();
    let mut unordered = OnlyThrough::new(index, groups_with_a_member_gone(index));
    for &(client, id, qos, connection) in &index.deliveries {
        let session = index.session_key(client, connection);
        let Some(sent) = index.sent.get(id) else {
            continue;
        };
        if qos == 2 {
            *qos2_times.entry((session, id)).or_default() += 1;
        }
        if unordered.test(client, &sent.topic) {
            // A group that lost a member hands that member's copies to the
            // others after later ones: MQTT 5.0 section 4.8.2 moves them,
            // and no order is owed across members.
            continue;
        }
        let (seen, highest) = streams
            .entry((
                session,
                id.publisher.as_str(),
                sent.session,
                sent.topic.as_str(),
            ))
            .or_insert_with(|| (HashSet::new(), 0));
        if !seen.insert(id.seq) {
            if qos != 2 {
                report.redelivered += 1;
            }
            continue;
        }
        if seen.len() > 1 && id.seq < *highest {
            report.violations.push(Violation::Reordered {
                id: id.clone(),
                client: client.to_owned(),
                topic: sent.topic.clone(),
                after: *highest,
            });
        }
        *highest = (*highest).max(id.seq);
    }
    for (((client, _), id), times) in qos2_times {
        if times > 1 {
            report.violations.push(Violation::Duplicated {
                id: id.clone(),
                client: client.to_owned(),
                times,
            });
        }
    }
}

/// The shared filters a member of which went away for good: its last
/// connection ended and it never connected again.
fn groups_with_a_member_gone<'h>(index: &Index<'h>) -> HashSet<&'h str> {
    index
        .subscriptions
        .iter()
        .filter(|(client, filter, ..)| {
            SharedFilter::parse(filter).is_some()
                && index
                    .connections
                    .get(client)
                    .and_then(|connections| connections.last())
                    .is_some_and(|last| last.ended.is_some())
        })
        .map(|(_, filter, ..)| *filter)
        .collect()
}

/// Per client and topic: whether every subscription of the client that
/// matches the topic is one of `shared` (computed once per pair: a run
/// delivers hundreds of thousands of messages on a few dozen topics).
struct OnlyThrough<'h> {
    shared: HashSet<&'h str>,
    filters: HashMap<&'h str, BTreeSet<&'h str>>,
    known: HashMap<(&'h str, &'h str), bool>,
}

impl<'h> OnlyThrough<'h> {
    fn new(index: &Index<'h>, shared: HashSet<&'h str>) -> Self {
        let mut filters: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for &(client, filter, ..) in &index.subscriptions {
            filters.entry(client).or_default().insert(filter);
        }
        OnlyThrough {
            shared,
            filters,
            known: HashMap::new(),
        }
    }

    fn test(&mut self, client: &'h str, topic: &'h str) -> bool {
        if self.shared.is_empty() {
            return false;
        }
        if let Some(known) = self.known.get(&(client, topic)) {
            return *known;
        }
        let matching: Vec<&str> = self
            .filters
            .get(client)
            .into_iter()
            .flatten()
            .copied()
            .filter(|filter| {
                let topic_filter = SharedFilter::parse(filter).map_or(*filter, |f| f.filter);
                topic_matches(topic_filter, topic)
            })
            .collect();
        let only = !matching.is_empty() && matching.iter().all(|f| self.shared.contains(f));
        self.known.insert((client, topic), only);
        only
    }
}

/// Shared groups: each acknowledged publish that matched a group reached a
/// member, and a QoS 2 one only one.
fn check_shared_groups(index: &Index<'_>, report: &mut Report) {
    // Each group: its members, and when its first member was in place.
    let mut groups: BTreeMap<&str, (BTreeSet<&str>, Millis, u8)> = BTreeMap::new();
    for &(client, filter, granted, in_place, _) in &index.subscriptions {
        if SharedFilter::parse(filter).is_none() {
            continue;
        }
        let group = groups
            .entry(filter)
            .or_insert_with(|| (BTreeSet::new(), in_place, granted));
        group.0.insert(client);
        group.1 = group.1.min(in_place);
        group.2 = group.2.max(granted);
    }
    // Each message: the sessions it reached, at the highest QoS each.
    let mut reached: HashMap<&MessageId, BTreeMap<&str, u8>> = HashMap::new();
    for &(client, id, qos, _) in &index.deliveries {
        let highest = reached.entry(id).or_default().entry(client).or_default();
        *highest = (*highest).max(qos);
    }
    let mut acked: Vec<&&MessageId> = index.acked.keys().collect();
    acked.sort();
    for (filter, (members, in_place, granted)) in &groups {
        if *granted == 0 {
            continue;
        }
        for id in &acked {
            let Some(sent) = index.sent.get(**id) else {
                continue;
            };
            if sent.qos == 0 || sent.at <= *in_place || !topic_matches(filter, &sent.topic) {
                continue;
            }
            let got: Vec<(&str, u8)> = reached
                .get(**id)
                .map(|clients| {
                    clients
                        .iter()
                        .filter(|(client, _)| members.contains(*client))
                        .map(|(client, qos)| (*client, *qos))
                        .collect()
                })
                .unwrap_or_default();
            // Exactly once among the members that got it at QoS 2: a copy
            // delivered at QoS 1 (a member subscribed at QoS 1) may also go
            // to another member once the first one left without
            // acknowledging it (MQTT 5.0 section 4.8.2).
            let at_qos2: Vec<String> = got
                .iter()
                .filter(|(_, qos)| *qos == 2)
                .map(|(client, _)| (*client).to_owned())
                .collect();
            if got.is_empty() {
                report.violations.push(Violation::SharedMissed {
                    id: (**id).clone(),
                    group: (*filter).to_owned(),
                });
            } else if at_qos2.len() > 1 && sent.qos == 2 && *granted == 2 {
                report.violations.push(Violation::SharedDuplicated {
                    id: (**id).clone(),
                    group: (*filter).to_owned(),
                    members: at_qos2,
                });
            }
        }
    }
}

/// Wills: at most once per connection, only for one that ended otherwise
/// than normally, and always for such a one given time.
fn check_wills(history: &History, index: &Index<'_>, rules: Rules, report: &mut Report) {
    // Per connection: arrivals, and those without DUP. A QoS 1 will sent
    // again with DUP (the watcher's connection failed before its
    // acknowledgement was recorded) is a redelivery, as for any QoS 1
    // message, not a second publication.
    let mut arrivals: BTreeMap<(&str, u64), (usize, usize)> = BTreeMap::new();
    for event in &history.events {
        if let Event::WillPublished {
            client,
            connection,
            dup,
            ..
        } = event
        {
            let counts = arrivals.entry((client.as_str(), *connection)).or_default();
            counts.0 += 1;
            if !dup {
                counts.1 += 1;
            }
        }
    }
    let mut published: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for (key, (all, fresh)) in arrivals {
        let times = fresh.max(1);
        report.will_redeliveries += all - times;
        published.insert(key, times);
    }
    // When each edge was under a fault: from, until (the run's end if never
    // undone).
    let mut troubled: Vec<(&str, Millis, Millis)> = Vec::new();
    for event in &history.events {
        if let Event::Fault {
            at, until, edges, ..
        } = event
        {
            for edge in edges {
                troubled.push((edge.as_str(), *at, until.unwrap_or(index.last_at)));
            }
        }
    }
    let unrecorded = |c: &Connection| match c.ended {
        Some((ended, true)) => troubled
            .iter()
            .any(|&(edge, from, until)| edge == c.edge && (from..=until).contains(&ended)),
        _ => false,
    };
    for (&(client, n), &times) in &published {
        let connection = index.connection(client, n);
        let warranted =
            connection.is_some_and(|c| c.will && c.ended.is_none_or(|(_, clean)| !clean));
        if !warranted && connection.is_some_and(|c| c.will && unrecorded(c)) {
            report.wills_after_unrecorded_disconnect += 1;
        } else if !warranted {
            report.violations.push(Violation::WillUnwarranted {
                client: client.to_owned(),
                connection: n,
            });
        } else if times > 1 {
            report.violations.push(Violation::WillTwice {
                client: client.to_owned(),
                connection: n,
                times,
            });
        }
    }
    let mut clients: Vec<(&&str, &Vec<Connection>)> = index.connections.iter().collect();
    clients.sort_by_key(|(client, _)| **client);
    for (client, connections) in clients {
        for (i, connection) in connections.iter().enumerate() {
            let n = i as u64 + 1;
            let Some((ended, clean)) = connection.ended else {
                continue;
            };
            if connection.will
                && !clean
                && ended.saturating_add(rules.will_within) <= index.last_at
                && !published.contains_key(&(*client, n))
            {
                report.violations.push(Violation::WillMissing {
                    client: (*client).to_owned(),
                    connection: n,
                });
            }
        }
    }
}

/// Retained state at the end: the same on every edge, sent with RETAIN on
/// its topic, present where one was acknowledged.
fn check_retained(history: &History, index: &Index<'_>, report: &mut Report) {
    let mut held: BTreeMap<&str, Vec<(String, Option<MessageId>)>> = BTreeMap::new();
    for event in &history.events {
        if let Event::RetainedSeen {
            edge, topic, id, ..
        } = event
        {
            held.entry(topic.as_str())
                .or_default()
                .push((edge.clone(), id.clone()));
        }
    }
    for (topic, values) in held {
        let distinct: BTreeSet<&Option<MessageId>> = values.iter().map(|(_, id)| id).collect();
        if distinct.len() > 1 {
            report.violations.push(Violation::RetainedDiverged {
                topic: topic.to_owned(),
                held: values.clone(),
            });
        }
        for (edge, id) in &values {
            if let Some(id) = id
                && !index
                    .sent
                    .get(id)
                    .is_some_and(|sent| sent.retain && sent.topic == topic)
            {
                report.violations.push(Violation::RetainedNeverSent {
                    topic: topic.to_owned(),
                    edge: edge.clone(),
                    id: id.clone(),
                });
            }
        }
        if values.iter().all(|(_, id)| id.is_none()) {
            let last_acked = index
                .acked
                .iter()
                .filter(|(id, _)| {
                    index
                        .sent
                        .get(**id)
                        .is_some_and(|sent| sent.retain && sent.topic == topic)
                })
                .max_by_key(|(id, at)| (**at, (**id).clone()));
            if let Some((id, _)) = last_acked {
                report.violations.push(Violation::RetainedLost {
                    topic: topic.to_owned(),
                    id: (*id).clone(),
                });
            }
        }
    }
}

/// Per fault kind, the longest time between two acknowledgements around
/// one of its faults (see [`Report::longest_unacknowledged`]).
fn measure_unacknowledged(history: &History, index: &Index<'_>, report: &mut Report) {
    let mut acks: Vec<Millis> = index.acked.values().copied().collect();
    acks.sort_unstable();
    acks.dedup();
    for event in &history.events {
        let Event::Fault {
            at, until, kind, ..
        } = event
        else {
            continue;
        };
        let (start, end) = (*at, until.unwrap_or(*at));
        // The last acknowledgement before the fault, those during it, and
        // the first after it (the run's end when none came).
        let from = acks.partition_point(|&ack| ack < start).saturating_sub(1);
        let after = acks.partition_point(|&ack| ack <= end);
        let mut around = acks[from..(after + 1).min(acks.len())].to_vec();
        if after == acks.len() {
            around.push(index.last_at);
        }
        let longest = around
            .windows(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .max()
            .unwrap_or(0);
        let entry = report
            .longest_unacknowledged
            .entry(kind.clone())
            .or_default();
        *entry = (*entry).max(longest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(publisher: &str, seq: u64) -> MessageId {
        MessageId {
            publisher: publisher.into(),
            seq,
        }
    }

    /// A history written the way a harness records one.
    #[derive(Default)]
    struct Script {
        history: History,
        now: Millis,
    }

    impl Script {
        fn tick(&mut self) -> Millis {
            self.now += 10;
            self.now
        }

        fn connect(&mut self, client: &str, persistent: bool, will: bool) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Connected {
                at,
                client: client.into(),
                edge: "n1".into(),
                persistent,
                session_present: false,
                will,
            });
            self
        }

        fn disconnect(&mut self, client: &str, clean: bool) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Disconnected {
                at,
                client: client.into(),
                clean,
            });
            self
        }

        fn subscribe(&mut self, client: &str, filter: &str, qos: u8) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Subscribed {
                at,
                client: client.into(),
                filter: filter.into(),
                qos,
            });
            self
        }

        fn send(&mut self, publisher: &str, seq: u64, topic: &str, qos: u8) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Sent {
                at,
                id: id(publisher, seq),
                topic: topic.into(),
                qos,
                retain: false,
            });
            self
        }

        fn ack(&mut self, publisher: &str, seq: u64) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Acked {
                at,
                id: id(publisher, seq),
            });
            self
        }

        fn deliver(
            &mut self,
            client: &str,
            publisher: &str,
            seq: u64,
            topic: &str,
            qos: u8,
        ) -> &mut Self {
            let at = self.tick();
            self.history.push(Event::Delivered {
                at,
                client: client.into(),
                id: Some(id(publisher, seq)),
                topic: topic.into(),
                qos,
                dup: false,
                edge: "n1".into(),
            });
            self
        }

        fn check(&self) -> Report {
            check(&self.history, Rules::default())
        }
    }

    fn violations(report: &Report) -> Vec<String> {
        report.violations.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_clean_run_passes() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t/#", 2);
        for seq in 0..3 {
            s.send("pub", seq, "t/a", 1)
                .ack("pub", seq)
                .deliver("sub", "pub", seq, "t/a", 1);
        }
        // A redelivery of QoS 1 is allowed.
        s.deliver("sub", "pub", 1, "t/a", 1);
        let report = s.check();
        assert!(report.passed(), "{report}");
        assert_eq!(
            (
                report.sent,
                report.acked,
                report.delivered,
                report.redelivered
            ),
            (3, 3, 4, 1)
        );
    }

    #[test]
    fn an_acknowledged_message_a_persistent_session_never_got_is_lost_and_named() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t/+", 1);
        s.send("pub", 0, "t/a", 1)
            .ack("pub", 0)
            .deliver("sub", "pub", 0, "t/a", 1);
        s.send("pub", 1, "t/a", 1).ack("pub", 1);
        // Refused, or not matching, or sent before the subscription: owed
        // to nobody.
        s.send("pub", 2, "t/a", 1);
        s.send("pub", 3, "u/a", 1).ack("pub", 3);
        // The session reconnects: still owed.
        s.disconnect("sub", false).connect("sub", true, false);
        assert_eq!(
            violations(&s.check()),
            ["lost: pub#1 was acknowledged but never reached sub (subscribed to t/+)"]
        );
    }

    #[test]
    fn a_clean_session_is_owed_only_while_its_connection_lives() {
        let mut s = Script::default();
        s.connect("gone", false, false).subscribe("gone", "t", 1);
        s.connect("stays", false, false).subscribe("stays", "t", 1);
        s.send("pub", 0, "t", 1).ack("pub", 0);
        s.disconnect("gone", false);
        assert_eq!(
            violations(&s.check()),
            ["lost: pub#0 was acknowledged but never reached stays (subscribed to t)"]
        );
    }

    #[test]
    fn qos0_subscriptions_and_qos0_publishes_are_owed_nothing() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t", 0);
        s.connect("sub1", true, false).subscribe("sub1", "t", 1);
        s.send("pub", 0, "t", 1)
            .ack("pub", 0)
            .deliver("sub1", "pub", 0, "t", 1);
        s.send("pub", 1, "t", 0);
        assert!(s.check().passed());
    }

    #[test]
    fn a_qos2_message_twice_in_one_session_is_a_duplicate_but_not_across_clean_sessions() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t", 2);
        s.send("pub", 0, "t", 2).ack("pub", 0);
        s.deliver("sub", "pub", 0, "t", 2);
        s.disconnect("sub", false).connect("sub", true, false);
        s.deliver("sub", "pub", 0, "t", 2);
        // Downgraded to QoS 1 by its subscription: a redelivery.
        s.connect("sub1", true, false).subscribe("sub1", "t", 1);
        s.send("pub", 1, "t", 2).ack("pub", 1);
        s.deliver("sub", "pub", 1, "t", 2);
        s.deliver("sub1", "pub", 1, "t", 1)
            .deliver("sub1", "pub", 1, "t", 1);
        // Two clean sessions of one client are two sessions.
        s.connect("clean", false, false).subscribe("clean", "c", 2);
        s.send("pub", 2, "c", 2)
            .ack("pub", 2)
            .deliver("clean", "pub", 2, "c", 2);
        s.disconnect("clean", false).connect("clean", false, false);
        s.deliver("clean", "pub", 2, "c", 2);
        assert_eq!(
            violations(&s.check()),
            ["duplicated: QoS 2 pub#0 reached sub 2 times"]
        );
    }

    #[test]
    fn a_message_that_arrives_after_a_later_one_of_its_stream_is_reordered() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t/#", 1);
        for seq in 0..4 {
            s.send("pub", seq, "t/a", 1).ack("pub", seq);
        }
        s.send("pub", 4, "t/b", 1).ack("pub", 4);
        // Another topic is another stream: t/b's #4 first is fine.
        s.deliver("sub", "pub", 4, "t/b", 1);
        s.deliver("sub", "pub", 0, "t/a", 1)
            .deliver("sub", "pub", 2, "t/a", 1)
            .deliver("sub", "pub", 1, "t/a", 1)
            // A redelivery of #0 after #2 is allowed.
            .deliver("sub", "pub", 0, "t/a", 1)
            .deliver("sub", "pub", 3, "t/a", 1);
        assert_eq!(
            violations(&s.check()),
            ["reordered: pub#1 reached sub on t/a after #2 of the same publisher"]
        );
    }

    /// A clean-session publisher's connection that ended may have had a
    /// publish in flight that lands after what its next connection sends;
    /// a persistent session's streams go on across its connections.
    #[test]
    fn order_is_kept_within_a_publisher_session() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t/#", 1);
        for publisher in ["clean", "persistent"] {
            let persistent = publisher == "persistent";
            s.connect(publisher, persistent, false);
            s.send(publisher, 0, "t/a", 1);
            s.disconnect(publisher, false)
                .connect(publisher, persistent, false);
            s.send(publisher, 1, "t/a", 1).ack(publisher, 1);
            s.deliver("sub", publisher, 1, "t/a", 1)
                .deliver("sub", publisher, 0, "t/a", 1);
        }
        assert_eq!(
            violations(&s.check()),
            ["reordered: persistent#0 reached sub on t/a after #1 of the same publisher"]
        );
    }

    /// Order across a group's members is owed to nobody once a member left
    /// for good: its copies go to the others after later ones (MQTT 5.0
    /// section 4.8.2). A group whose members all stay is still judged, and
    /// so is a member's own plain subscription.
    #[test]
    fn a_group_that_lost_a_member_is_not_judged_on_order() {
        let mut s = Script::default();
        for (member, group) in [("m1", "g"), ("gone", "g"), ("n1", "h")] {
            s.connect(member, true, false)
                .subscribe(member, &format!("$share/{group}/t/+"), 1);
        }
        s.subscribe("m1", "u/plain", 1);
        s.disconnect("gone", false);
        for seq in 0..2 {
            s.send("pub", seq, "t/a", 1).ack("pub", seq);
            s.send("pub", seq + 10, "u/plain", 1).ack("pub", seq + 10);
        }
        s.deliver("m1", "pub", 1, "t/a", 1)
            .deliver("m1", "pub", 0, "t/a", 1)
            .deliver("n1", "pub", 1, "t/a", 1)
            .deliver("n1", "pub", 0, "t/a", 1)
            .deliver("m1", "pub", 11, "u/plain", 1)
            .deliver("m1", "pub", 10, "u/plain", 1);
        assert_eq!(
            violations(&s.check()),
            [
                "reordered: pub#0 reached n1 on t/a after #1 of the same publisher",
                "reordered: pub#10 reached m1 on u/plain after #11 of the same publisher",
            ]
        );
    }

    #[test]
    fn a_delivery_nobody_sent_is_caught() {
        let mut s = Script::default();
        s.connect("sub", true, false).subscribe("sub", "t/#", 1);
        s.send("pub", 0, "t/a", 1)
            .ack("pub", 0)
            .deliver("sub", "pub", 0, "t/a", 1);
        s.deliver("sub", "pub", 0, "t/b", 1);
        s.deliver("sub", "ghost", 7, "t/a", 1);
        let at = s.tick();
        s.history.push(Event::Delivered {
            at,
            client: "sub".into(),
            id: None,
            topic: "t/a".into(),
            qos: 1,
            dup: false,
            edge: "n1".into(),
        });
        assert_eq!(
            violations(&s.check()),
            [
                "never sent: sub received pub#0 on t/b",
                "never sent: sub received ghost#7 on t/a",
                "never sent: sub received a message naming no publish on t/a",
            ]
        );
    }

    #[test]
    fn a_shared_group_gets_each_message_once_at_qos2_and_at_least_once_at_qos1() {
        let mut s = Script::default();
        for member in ["m1", "m2"] {
            s.connect(member, true, false)
                .subscribe(member, "$share/g/t", 2)
                .subscribe(member, "$share/h/u", 1);
        }
        s.send("pub", 0, "t", 2)
            .ack("pub", 0)
            .deliver("m1", "pub", 0, "t", 2);
        s.send("pub", 1, "t", 2).ack("pub", 1);
        s.send("pub", 2, "t", 2)
            .ack("pub", 2)
            .deliver("m1", "pub", 2, "t", 2)
            .deliver("m2", "pub", 2, "t", 2);
        s.send("pub", 3, "u", 1)
            .ack("pub", 3)
            .deliver("m1", "pub", 3, "u", 1)
            .deliver("m2", "pub", 3, "u", 1);
        // A member subscribed at QoS 1 that left without acknowledging its
        // copy: the copy may go to another member (MQTT 5.0 section 4.8.2).
        s.connect("m3", true, false)
            .subscribe("m3", "$share/g/t", 1);
        s.send("pub", 4, "t", 2)
            .ack("pub", 4)
            .deliver("m3", "pub", 4, "t", 1)
            .deliver("m1", "pub", 4, "t", 2);
        assert_eq!(
            violations(&s.check()),
            [
                "shared group missed: pub#1 was acknowledged but reached no member of $share/g/t",
                "shared group duplicated: QoS 2 pub#2 reached 2 members of $share/g/t: m1, m2",
            ]
        );
    }

    #[test]
    fn wills_come_once_for_connections_that_died_and_never_for_clean_ends() {
        let mut s = Script::default();
        s.connect("died", true, true).disconnect("died", false);
        s.connect("died", true, true).disconnect("died", false);
        s.connect("left", true, true).disconnect("left", true);
        s.connect("silent", true, true).disconnect("silent", false);
        s.connect("again", true, true).disconnect("again", false);
        let will = |s: &mut Script, client: &str, connection, dup| {
            let at = s.tick();
            s.history.push(Event::WillPublished {
                at,
                client: client.into(),
                connection,
                dup,
            });
        };
        will(&mut s, "died", 1, false);
        will(&mut s, "died", 2, false);
        will(&mut s, "died", 2, false);
        will(&mut s, "left", 1, false);
        // Sent again with DUP after the watcher's connection failed: a QoS 1
        // redelivery, not a second publication.
        will(&mut s, "again", 1, false);
        will(&mut s, "again", 1, true);
        // Long after: the silent one's will is overdue.
        s.now += Rules::default().will_within;
        s.send("pub", 0, "x", 0);
        assert_eq!(
            violations(&s.check()),
            [
                "will published 2 times for died's connection 2",
                "will published for left's connection 1, which ended normally or had none",
                "will missing: silent's connection 1 ended without DISCONNECT and its will never came",
            ]
        );
        assert_eq!(s.check().will_redeliveries, 1);
    }

    /// A normal DISCONNECT taken by an edge under a fault may never reach
    /// the store: its will is counted apart. On a healthy edge, or on
    /// another edge than the one under the fault, it is a violation.
    #[test]
    fn a_will_after_a_disconnect_an_edge_under_a_fault_took_is_counted_apart() {
        let mut s = Script::default();
        s.connect("calm", true, true).disconnect("calm", true);
        let at = s.tick();
        s.history.push(Event::Fault {
            at,
            until: Some(at + 25),
            kind: "cut edge".into(),
            target: "node 1".into(),
            edges: vec!["n1".into()],
        });
        s.connect("cut", true, true).disconnect("cut", true);
        s.history.push(Event::Fault {
            at: s.now + 1,
            until: Some(s.now + 100),
            kind: "cut edge".into(),
            target: "node 2".into(),
            edges: vec!["n2".into()],
        });
        s.connect("elsewhere", true, true)
            .disconnect("elsewhere", true);
        for client in ["calm", "cut", "elsewhere"] {
            let at = s.tick();
            s.history.push(Event::WillPublished {
                at,
                client: client.into(),
                connection: 1,
                dup: false,
            });
        }
        let report = s.check();
        assert_eq!(report.wills_after_unrecorded_disconnect, 1);
        assert_eq!(
            violations(&report),
            [
                "will published for calm's connection 1, which ended normally or had none",
                "will published for elsewhere's connection 1, which ended normally or had none",
            ]
        );
        assert!(report.to_string().contains("(allowed): 1"), "{report}");
    }

    #[test]
    fn retained_state_must_agree_and_come_from_a_retained_publish() {
        let mut s = Script::default();
        let retained = |s: &mut Script, seq, topic: &str| {
            let at = s.tick();
            s.history.push(Event::Sent {
                at,
                id: id("pub", seq),
                topic: topic.into(),
                qos: 1,
                retain: true,
            });
            s.ack("pub", seq);
        };
        retained(&mut s, 0, "r/a");
        retained(&mut s, 1, "r/a");
        retained(&mut s, 2, "r/b");
        retained(&mut s, 3, "r/c");
        s.send("pub", 4, "r/c", 1).ack("pub", 4);
        let seen = |s: &mut Script, edge: &str, topic: &str, seq: Option<u64>| {
            let at = s.tick();
            s.history.push(Event::RetainedSeen {
                at,
                edge: edge.into(),
                topic: topic.into(),
                id: seq.map(|seq| id("pub", seq)),
            });
        };
        seen(&mut s, "n1", "r/a", Some(1));
        seen(&mut s, "n2", "r/a", Some(0));
        seen(&mut s, "n1", "r/b", None);
        seen(&mut s, "n2", "r/b", None);
        seen(&mut s, "n1", "r/c", Some(4));
        assert_eq!(
            violations(&s.check()),
            [
                "retained state diverged on r/a: n1=pub#1 n2=pub#0",
                "retained lost: pub#2 was acknowledged as r/b's retained message and no edge holds one",
                "retained never sent: n1 holds pub#4 as r/c's retained message",
            ]
        );
    }

    #[test]
    fn the_summary_counts_faults_and_the_longest_wait_for_an_acknowledgement() {
        let mut s = Script::default();
        s.send("pub", 0, "t", 1).ack("pub", 0);
        s.now = 1_000;
        let at = s.tick();
        s.history.push(Event::Fault {
            at,
            until: Some(at + 100),
            kind: "kill".into(),
            target: "node 2".into(),
            edges: vec!["n2".into()],
        });
        s.send("pub", 1, "t", 1);
        s.now = 4_000;
        s.ack("pub", 1);
        let report = s.check();
        assert_eq!(report.faults.get("kill"), Some(&1));
        // From the last acknowledgement before it (at 20) to the first after.
        assert_eq!(
            report.longest_unacknowledged.get("kill"),
            Some(&(4_010 - 20))
        );
        let text = report.to_string();
        assert!(
            text.contains("kill 1 (longest without an acknowledgement 4.0 s)"),
            "{text}"
        );
        assert!(text.ends_with("PASSED"), "{text}");
    }
}
