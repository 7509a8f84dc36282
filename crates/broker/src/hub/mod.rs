//! What every connection of this edge shares: the sessions it holds, the
//! subscription index that routes publishes to them, and the retained
//! messages. A publish is matched here once and handed to each matching
//! session's mailbox; QoS 1/2 messages for persistent sessions go to the
//! store first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use rookery_codec::{QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use rookery_store::proto;
use rookery_topic::{Match, RetainedIndex, SubscriptionIndex};
use tokio::sync::Notify;

use crate::config::BrokerConfig;
use crate::message::{Delivery, Message};
use crate::stats::Stats;
use crate::store::{Store, StoreUnavailable};

pub type ClientId = Arc<str>;

/// A subscription as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    pub options: SubscriptionOptions,
    /// 0 when the SUBSCRIBE carried none.
    pub subscription_id: u32,
}

/// What a connection task is told by the rest of the broker.
#[derive(Debug)]
pub enum ToConnection {
    /// Send this message.
    Deliver(Delivery),
    /// The store queued messages for this (persistent) session: read them.
    Queued,
    /// Close the connection, telling a 5.0 client why.
    Close(ReasonCode),
}

/// The way into one connection's task: a queue and a wake-up. No channel
/// type: an idle connection's mailbox holds no buffer at all (a tokio channel
/// allocates a block of slots up front), which matters at a million idle
/// connections.
#[derive(Debug, Clone)]
pub struct Mailbox {
    shared: Arc<MailboxShared>,
    pub connection_id: u64,
}

#[derive(Debug, Default)]
struct MailboxShared {
    queue: Mutex<VecDeque<ToConnection>>,
    /// Deliveries waiting: bounded by the session's queue limit.
    deliveries: AtomicUsize,
    wake: Notify,
    /// The connection is gone: nothing more is queued.
    closed: AtomicBool,
    /// Deliveries the connection has taken and not yet written (its own
    /// queue), as it last reported them.
    taken: AtomicUsize,
    /// A persistent session's store queue length (in flight included), as
    /// its connection last knew it (having read the queue to its end). Only
    /// the connection sets it: a publisher's figure could arrive after a
    /// newer report and hold others paused on a session already drained.
    stored: AtomicUsize,
    /// Store writes queuing messages for this session whose results are
    /// not known yet (see `PendingEnqueue`).
    enqueuing: AtomicUsize,
    /// Publishers pause while the backlog is at or above this; 0 never.
    pause_at: usize,
    /// The store queue's share that is the in-flight window (the store's
    /// limit adds it to the queue limit): not backlog.
    stored_in_flight: usize,
    /// Paused publishers wait here for the backlog to fall.
    room: Notify,
    /// A `Queued` notice waits in `queue`: one is enough.
    queued_notice: AtomicBool,
    /// Some publisher waits on `room`.
    awaited: AtomicBool,
    /// A publisher's pause ran out: the session is not draining, so nobody
    /// pauses for it (its overflow is dropped) until it does again.
    stalled: AtomicBool,
}

impl MailboxShared {
    fn push(&self, message: ToConnection) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let was_empty = {
            let mut queue = self.queue.lock();
            let was_empty = queue.is_empty();
            queue.push_back(message);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }
}

impl Mailbox {
    /// `pause_at`: the backlog at which publishers to this session pause
    /// (backpressure); 0 turns pausing off. `stored_in_flight`: the part of
    /// a store queue's length that is the in-flight window.
    pub fn new(
        connection_id: u64,
        pause_at: usize,
        stored_in_flight: usize,
    ) -> (Mailbox, MailboxReceiver) {
        let shared = Arc::new(MailboxShared {
            pause_at,
            stored_in_flight,
            ..MailboxShared::default()
        });
        (
            Mailbox {
                shared: shared.clone(),
                connection_id,
            },
            MailboxReceiver { shared },
        )
    }

    pub fn close(&self, reason: ReasonCode) {
        self.shared.push(ToConnection::Close(reason));
    }

    pub fn notify_queued(&self) {
        if !self.shared.queued_notice.swap(true, Ordering::AcqRel) {
            self.shared.push(ToConnection::Queued);
        }
    }

    /// Hands a delivery over unless the session's queue is full.
    fn deliver(&self, delivery: Delivery, limit: usize) -> bool {
        if self.shared.deliveries.load(Ordering::Relaxed) >= limit {
            return false;
        }
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        self.shared.push(ToConnection::Deliver(delivery))
    }

    /// Whether a publisher to this session should pause: its backlog is at
    /// the pause threshold and it is still draining.
    pub fn is_full(&self) -> bool {
        self.shared.above(self.shared.pause_at)
    }

    /// Resolves once the backlog is down to half the pause threshold (or the
    /// connection is gone): resuming at once would pause again a message
    /// later, waking the publisher per message.
    pub async fn room(&self) {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Paired with `MailboxReceiver::report_taken`: either it sees
            // this flag, or this check sees its lower backlog.
            self.shared.awaited.store(true, Ordering::SeqCst);
            if !self.shared.above(self.shared.resume_at()) {
                return;
            }
            notified.await;
        }
    }

    /// The backlog's parts (mailbox, connection's queue, store queue), for
    /// logs.
    pub fn backlog_parts(&self) -> (usize, usize, usize) {
        let shared = &self.shared;
        (
            shared.deliveries.load(Ordering::SeqCst),
            shared.taken.load(Ordering::SeqCst),
            shared.stored.load(Ordering::SeqCst),
        )
    }

    /// A publisher waited for this session as long as it may: until the
    /// backlog falls below the threshold, publishers no longer pause for it.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::Relaxed);
        // Other publishers paused for it stop waiting too.
        self.shared.awaited.store(false, Ordering::SeqCst);
        self.shared.room.notify_waiters();
    }
}

impl MailboxShared {
    /// Paused publishers resume when the backlog is below this.
    fn resume_at(&self) -> usize {
        self.pause_at.div_ceil(2)
    }

    /// Whether publishers should wait for this backlog to fall below `mark`.
    fn above(&self, mark: usize) -> bool {
        self.pause_at > 0
            && !self.closed.load(Ordering::Acquire)
            && !self.stalled.load(Ordering::Relaxed)
            && self.backlog() >= mark
    }

    fn end_enqueue(&self) {
        self.enqueuing.fetch_sub(1, Ordering::SeqCst);
        self.wake_if_room();
    }

    /// Wakes paused publishers once the backlog is below the resume mark.
    fn wake_if_room(&self) {
        if self.pause_at == 0 || self.backlog() >= self.resume_at() {
            return;
        }
        self.stalled.store(false, Ordering::Relaxed);
        if self.awaited.swap(false, Ordering::SeqCst) {
            self.room.notify_waiters();
        }
    }

    fn backlog(&self) -> usize {
        self.deliveries.load(Ordering::SeqCst)
            + self.taken.load(Ordering::SeqCst)
            + self.enqueuing.load(Ordering::SeqCst)
            + self
                .stored
                .load(Ordering::SeqCst)
                .saturating_sub(self.stored_in_flight)
    }
}

#[derive(Debug)]
pub struct MailboxReceiver {
    shared: Arc<MailboxShared>,
}

impl MailboxReceiver {
    /// The connection reports how many deliveries it holds unwritten, and
    /// the length of its store queue when it knows it (it has read the
    /// queue to its end); a backlog below the threshold wakes paused
    /// publishers.
    pub fn report_taken(&self, taken: usize, stored: Option<usize>) {
        let shared = &self.shared;
        shared.taken.store(taken, Ordering::SeqCst);
        if let Some(stored) = stored {
            shared.stored.store(stored, Ordering::SeqCst);
        }
        shared.wake_if_room();
    }

    pub async fn recv(&mut self) -> Option<ToConnection> {
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            // notify_one keeps a permit when nobody waits, so a push between
            // the check above and this wait is not missed.
            self.shared.wake.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Option<ToConnection> {
        let message = self.shared.queue.lock().pop_front()?;
        match message {
            ToConnection::Deliver(_) => {
                self.shared.deliveries.fetch_sub(1, Ordering::Relaxed);
            }
            // Cleared before the queue is read, so a later enqueue notifies
            // again.
            ToConnection::Queued => self.shared.queued_notice.store(false, Ordering::Release),
            ToConnection::Close(_) => {}
        }
        Some(message)
    }
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.queue.lock().clear();
        self.shared.room.notify_waiters();
    }
}

/// A session this edge knows: online here, online on another edge, or
/// persistent and offline.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub epoch: u64,
    /// Session expiry above 0: its QoS 1/2 messages are queued in the store.
    pub persistent: bool,
    pub mailbox: Option<Mailbox>,
    /// The edge holding the session's connection, when it is not this one.
    pub remote_edge: Option<Arc<str>>,
}

/// The routes of one session as the store's route table has them, without
/// this edge's own (its connections keep their subscriptions themselves).
#[derive(Debug, Default)]
struct ClusterRoutes {
    /// The other edge the session is online on, and its filters there.
    edge: Option<Arc<str>>,
    edge_filters: HashMap<String, SubEntry>,
    /// Filters whose QoS 1/2 messages queue in the store (persistent).
    queue_filters: HashMap<String, SubEntry>,
}

impl ClusterRoutes {
    fn is_empty(&self) -> bool {
        self.edge_filters.is_empty() && self.queue_filters.is_empty()
    }
}

/// Where one publish goes.
#[derive(Debug, Default)]
pub struct Routes {
    /// Online sessions served from memory (clean sessions, and QoS 0 to any).
    pub local: Vec<(Mailbox, Delivery)>,
    /// Persistent sessions whose copy is committed to the store first; the
    /// store notifies their connections (MessagesQueued).
    pub durable: Vec<proto::EnqueueTarget>,
    /// The mailboxes of `durable`'s sessions online here, in its order.
    pub durable_mailboxes: Vec<Option<Mailbox>>,
    /// Sessions online on other edges, by edge: forwarded there.
    pub remote: Vec<(Arc<str>, Vec<rookery_cluster::proto::Delivery>)>,
}

#[derive(Debug)]
pub struct Hub {
    pub config: Arc<BrokerConfig>,
    pub edge_id: String,
    /// Where other edges forward to this one (empty: nowhere).
    pub forward_address: String,
    pub store: Store,
    pub stats: Stats,
    index: RwLock<SubscriptionIndex<ClientId, SubEntry>>,
    /// Each session's filters, to clear them when the session ends.
    filters: Mutex<HashMap<ClientId, HashSet<String>>>,
    sessions: RwLock<HashMap<ClientId, SessionEntry>>,
    /// The store's routes of sessions not online here, to route to them.
    cluster_routes: Mutex<HashMap<ClientId, ClusterRoutes>>,
    retained: RwLock<RetainedIndex<Arc<Message>>>,
    /// Serializes the read-modify-write of a client id's registry entry
    /// around its store commands (connect, disconnect, takeover).
    pub client_lock: Mutex<()>,
    /// Streams to the other edges, and where each listens.
    forwarder: rookery_cluster::Forwarder,
    edge_addresses: Mutex<HashMap<Arc<str>, String>>,
    /// Round-robin position of each shared group, by its `$share/...` filter.
    /// Also the group's name shared by its deliveries (no allocation per
    /// message).
    shared_cursors: Mutex<HashMap<Arc<str>, usize>>,
    next_connection: AtomicU64,
}

impl Hub {
    pub fn new(
        config: Arc<BrokerConfig>,
        edge_id: String,
        forward_address: String,
        forward_source: Option<std::net::IpAddr>,
        store: Store,
    ) -> Self {
        let forwarder = rookery_cluster::Forwarder::from_address(forward_source);
        Hub {
            config,
            edge_id,
            forward_address,
            store,
            stats: Stats::default(),
            index: RwLock::new(SubscriptionIndex::new()),
            filters: Mutex::new(HashMap::new()),
            sessions: RwLock::new(HashMap::new()),
            cluster_routes: Mutex::new(HashMap::new()),
            retained: RwLock::new(RetainedIndex::new()),
            client_lock: Mutex::new(()),
            forwarder,
            edge_addresses: Mutex::new(HashMap::new()),
            shared_cursors: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Loads what the store holds: the route table (persistent sessions and
    /// sessions online on other edges), the retained messages and where the
    /// other edges listen.
    pub async fn load(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        for route in self.store.routes().await? {
            self.route_added(&route);
        }
        self.load_retained(now_ms).await?;
        self.load_edges().await
    }

    /// Reads the route table, the retained messages and the edges again,
    /// after notifications were missed.
    pub async fn reload(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        let routes = self.store.routes().await?;
        // Built aside and swapped in at once: a session leaving meanwhile
        // must not see an empty mirror.
        let mut mirror = HashMap::new();
        for route in &routes {
            mirror_into(&mut mirror, &self.edge_id, route);
        }
        let after: Vec<ClientId> = mirror.keys().cloned().collect();
        let before: Vec<ClientId> = {
            let mut cluster = self.cluster_routes.lock();
            let before = cluster.keys().cloned().collect();
            *cluster = mirror;
            before
        };
        for client in before.iter().chain(after.iter()) {
            self.follow_cluster_routes(client);
        }
        self.load_retained(now_ms).await?;
        self.load_edges().await
    }

    async fn load_retained(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        let messages = self.store.retained("#", now_ms).await?;
        let mut retained = self.retained.write();
        *retained = RetainedIndex::new();
        for message in messages {
            if let Some(message) = Message::from_proto(&message) {
                retained.insert(&message.topic.clone(), Arc::new(message));
            }
        }
        self.stats.set_retained(retained.len());
        Ok(())
    }

    async fn load_edges(&self) -> Result<(), StoreUnavailable> {
        for edge in self.store.edges().await? {
            self.edge_registered(&edge);
        }
        Ok(())
    }

    /// Where another edge listens for forwarded publishes.
    pub fn edge_registered(&self, edge: &proto::Edge) {
        let id: Arc<str> = Arc::from(edge.edge_id.as_str());
        let mut addresses = self.edge_addresses.lock();
        if edge.address.is_empty() {
            addresses.remove(&id);
        } else {
            addresses.insert(id, edge.address.clone());
        }
    }

    /// A route the store added: kept for sessions not online here.
    pub fn route_added(&self, route: &proto::Route) {
        if let Some(client) = self.mirror_route(route) {
            self.follow_cluster_routes(&client);
        }
    }

    /// Adds a route to the mirror; the session it belongs to, unless the
    /// route is this edge's own.
    fn mirror_route(&self, route: &proto::Route) -> Option<ClientId> {
        mirror_into(&mut self.cluster_routes.lock(), &self.edge_id, route)
    }

    /// A route the store removed.
    pub fn route_removed(&self, route: &proto::Route) {
        if route.edge_id == self.edge_id {
            return;
        }
        let client: ClientId = Arc::from(route.client_id.as_str());
        {
            let mut cluster = self.cluster_routes.lock();
            let Some(routes) = cluster.get_mut(&client) else {
                return;
            };
            if route.edge_id.is_empty() {
                routes.queue_filters.remove(&route.filter);
            } else if routes.edge.as_deref() == Some(route.edge_id.as_str()) {
                routes.edge_filters.remove(&route.filter);
                if routes.edge_filters.is_empty() {
                    routes.edge = None;
                }
            }
            if routes.is_empty() {
                cluster.remove(&client);
            }
        }
        self.follow_cluster_routes(&client);
    }

    /// Makes the index and registry hold what the store's routes say of a
    /// session that is not online here (one online here keeps its own).
    fn follow_cluster_routes(&self, client: &ClientId) {
        let _guard = self.client_lock.lock();
        if self
            .sessions
            .read()
            .get(client)
            .is_some_and(|session| session.mailbox.is_some())
        {
            return;
        }
        let wanted: HashMap<String, SubEntry> = {
            let cluster = self.cluster_routes.lock();
            match cluster.get(client) {
                Some(routes) => routes
                    .queue_filters
                    .iter()
                    .chain(routes.edge_filters.iter())
                    .map(|(filter, entry)| (filter.clone(), *entry))
                    .collect(),
                None => HashMap::new(),
            }
        };
        let (persistent, edge) = {
            let cluster = self.cluster_routes.lock();
            cluster.get(client).map_or((false, None), |routes| {
                (!routes.queue_filters.is_empty(), routes.edge.clone())
            })
        };
        let current: Vec<String> = self
            .filters
            .lock()
            .get(client)
            .map(|filters| filters.iter().cloned().collect())
            .unwrap_or_default();
        for filter in current {
            if !wanted.contains_key(&filter) {
                self.unsubscribe(client, &filter);
            }
        }
        for (filter, entry) in &wanted {
            self.subscribe(client, filter, *entry);
        }
        let mut sessions = self.sessions.write();
        if wanted.is_empty() {
            sessions.remove(client);
            self.filters.lock().remove(client);
            return;
        }
        let session = sessions.entry(client.clone()).or_insert(SessionEntry {
            epoch: 0,
            persistent,
            mailbox: None,
            remote_edge: None,
        });
        session.persistent = persistent;
        session.remote_edge = edge;
    }

    pub fn session(&self, client_id: &str) -> Option<SessionEntry> {
        self.sessions.read().get(client_id).cloned()
    }

    /// Registers an online session, returning the entry it replaced.
    pub fn register(&self, client_id: ClientId, entry: SessionEntry) -> Option<SessionEntry> {
        self.sessions.write().insert(client_id, entry)
    }

    /// Marks the session offline (kept while persistent), if `connection_id`
    /// still holds it.
    pub fn unregister(&self, client_id: &str, connection_id: u64, persistent: bool) -> bool {
        let mut sessions = self.sessions.write();
        let Some(entry) = sessions.get_mut(client_id) else {
            return false;
        };
        if entry.mailbox.as_ref().map(|m| m.connection_id) != Some(connection_id) {
            return false;
        }
        if persistent {
            entry.mailbox = None;
            entry.persistent = true;
        } else {
            sessions.remove(client_id);
        }
        true
    }

    /// After a session left this edge (and its own subscriptions were
    /// cleared): route to it as the store's routes say (it may be online on
    /// another edge already, or persistent).
    pub fn session_left(&self, client_id: &str) {
        let client: ClientId = Arc::from(client_id);
        if self.cluster_routes.lock().contains_key(&client) {
            self.follow_cluster_routes(&client);
        }
    }

    pub fn subscribe(&self, client: &ClientId, filter: &str, entry: SubEntry) -> Option<SubEntry> {
        self.filters
            .lock()
            .entry(client.clone())
            .or_default()
            .insert(filter.to_owned());
        self.index.write().insert(filter, client.clone(), entry)
    }

    pub fn unsubscribe(&self, client: &ClientId, filter: &str) -> Option<SubEntry> {
        if let Some(filters) = self.filters.lock().get_mut(client) {
            filters.remove(filter);
        }
        self.index.write().remove(filter, client)
    }

    /// Removes every subscription of a session from the index.
    pub fn clear_subscriptions(&self, client: &ClientId) {
        let Some(filters) = self.filters.lock().remove(client) else {
            return;
        };
        let mut index = self.index.write();
        for filter in filters {
            index.remove(&filter, client);
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.index.read().len()
    }

    /// Where a message goes: each matching session once, with the highest
    /// QoS and every subscription identifier of its matching subscriptions
    /// (MQTT-3.3.4-2, MQTT-3.3.4-3), and one member of each shared group.
    pub fn route(&self, message: &Arc<Message>) -> Routes {
        self.route_to(message, None)
    }

    /// Routes a message; with `only_group`, to one member of that shared
    /// group (`$share/...`) only.
    fn route_to(&self, message: &Arc<Message>, only_group: Option<&str>) -> Routes {
        let mut targets: Vec<(ClientId, Target)> = Vec::new();
        {
            let index = self.index.read();
            let sessions = self.sessions.read();
            index.for_each_match(&message.topic, |matched| match matched {
                Match::Plain { .. } if only_group.is_some() => {}
                Match::Shared(group) if only_group.is_some_and(|only| only != group.filter()) => {}
                Match::Plain {
                    subscriber, value, ..
                } => {
                    // MQTT-3.8.3-3: No Local.
                    if value.options.no_local && **subscriber == *message.origin {
                        return;
                    }
                    targets.push(target(subscriber, value));
                }
                Match::Shared(group) => {
                    let members = group.members();
                    let count = members.len();
                    let (start, group_name) = self.next_in_group(group.filter());
                    // Round robin, skipping members that can take nothing
                    // (offline clean sessions cannot exist; offline
                    // persistent ones queue only QoS 1/2), and preferring
                    // members whose queue is not full.
                    let mut candidates = (0..count)
                        .filter_map(|step| members.clone().nth((start + step) % count))
                        .filter(|(client, _)| {
                            sessions.get(*client).is_some_and(|session| {
                                session.mailbox.is_some()
                                    || session.remote_edge.is_some()
                                    || message.qos != QoS::AtMostOnce
                            })
                        });
                    let pick = candidates
                        .clone()
                        .find(|(client, _)| {
                            !sessions
                                .get(*client)
                                .and_then(|session| session.mailbox.as_ref())
                                .is_some_and(Mailbox::is_full)
                        })
                        .or_else(|| candidates.next());
                    if let Some((client, value)) = pick {
                        let (client, mut picked) = target(client, value);
                        picked.shared_group = Some(group_name);
                        targets.push((client, picked));
                    }
                }
            });
        }
        if targets.is_empty() {
            return Routes::default();
        }
        merge_targets(&mut targets);
        let sessions = self.sessions.read();
        let mut routes = Routes::default();
        for (client, target) in targets {
            let Some(session) = sessions.get(&client) else {
                continue;
            };
            let qos = message.qos.min(target.qos);
            // MQTT-3.3.1-12/13: the RETAIN flag is cleared unless the
            // subscription asked for it as published.
            let retain = message.retain && target.retain_as_published;
            if session.persistent && qos != QoS::AtMostOnce {
                routes.durable.push(proto::EnqueueTarget {
                    client_id: client.to_string(),
                    qos: u32::from(qos as u8),
                    retain,
                    subscription_ids: target.subscription_ids,
                });
                routes.durable_mailboxes.push(session.mailbox.clone());
            } else if let Some(edge) = &session.remote_edge
                && session.mailbox.is_none()
            {
                let delivery = rookery_cluster::proto::Delivery {
                    client_id: client.to_string(),
                    message: 0,
                    qos: u32::from(qos as u8),
                    retain,
                    subscription_ids: target.subscription_ids,
                    shared_group: target
                        .shared_group
                        .as_deref()
                        .unwrap_or_default()
                        .to_owned(),
                };
                match routes.remote.iter_mut().find(|(known, _)| known == edge) {
                    Some((_, deliveries)) => deliveries.push(delivery),
                    None => routes.remote.push((edge.clone(), vec![delivery])),
                }
            } else if let Some(mailbox) = &session.mailbox {
                routes.local.push((
                    mailbox.clone(),
                    Delivery {
                        message: message.clone(),
                        qos,
                        retain,
                        subscription_ids: target.subscription_ids,
                        shared_group: target.shared_group,
                    },
                ));
            }
        }
        routes
    }

    /// The next round-robin position of a shared group. Each group keeps its
    /// own, so groups matched by the same messages do not skew each other.
    fn next_in_group(&self, filter: &str) -> (usize, Arc<str>) {
        let mut cursors = self.shared_cursors.lock();
        if let Some((name, cursor)) = cursors.get_key_value(filter) {
            let (name, next) = (name.clone(), cursor.wrapping_add(1));
            cursors.insert(name.clone(), next);
            return (next, name);
        }
        let name: Arc<str> = Arc::from(filter);
        cursors.insert(name.clone(), 0);
        (0, name)
    }

    /// Hands in-memory deliveries to their sessions. A connection moves them
    /// into its own queue at once (where the overflow policy applies); this
    /// bound only catches a connection task that has stopped taking them.
    /// Sessions whose backlog reached the pause threshold are added to
    /// `full`: the publisher stops reading until they drain.
    pub fn deliver_local(&self, local: Vec<(Mailbox, Delivery)>, full: &mut Vec<Mailbox>) {
        let limits = &self.config.limits;
        let limit =
            (limits.max_queued_messages + usize::from(limits.max_inflight)).saturating_mul(2);
        for (mailbox, delivery) in local {
            if !mailbox.deliver(delivery, limit) {
                self.stats.dropped("queue_full");
            }
            add_if_full(full, &mailbox);
        }
    }

    /// The backlog at which publishers to a session pause: a quarter of the
    /// queue below its limit, so that the publishers already mid-packet fit
    /// in the rest; 0 (never) when backpressure is off.
    pub fn pause_threshold(&self) -> usize {
        let limits = &self.config.limits;
        if limits.publisher_pause_ms == 0 {
            return 0;
        }
        let queued = limits.max_queued_messages;
        (queued - queued / 4).max(1)
    }

    /// Sets or clears the retained message of its topic in memory
    /// (MQTT-3.3.1-5, MQTT-3.3.1-6).
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = self.retained.write();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(&message.topic, message.clone());
        }
        self.stats.set_retained(retained.len());
    }

    /// The retained messages a new subscription receives (MQTT-3.3.1-9..11).
    pub fn retained_for(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let mut found = Vec::new();
        self.retained.read().for_each_match(filter, |_, message| {
            if !message.expired(now_ms) {
                found.push(message.clone());
            }
        });
        found
    }

    /// The store commands a publish needs: its retained copy, and its copies
    /// queued for persistent sessions (with the publisher's QoS 2 packet
    /// identifier, recorded even when nobody is to receive it).
    pub fn store_commands(
        &self,
        message: &Message,
        retain: bool,
        durable: Vec<proto::EnqueueTarget>,
        incoming: Option<proto::IncomingQos2>,
    ) -> Vec<proto::Command> {
        let stored = (retain || !durable.is_empty()).then(|| message.to_proto());
        let mut commands = Vec::new();
        if retain {
            commands.push(proto::Command {
                kind: Some(proto::command::Kind::SetRetained(proto::SetRetained {
                    message: stored.clone(),
                })),
            });
        }
        if !durable.is_empty() || incoming.is_some() {
            let queued = if durable.is_empty() { None } else { stored };
            commands.push(self.enqueue_command(queued, durable, incoming));
        }
        commands
    }

    /// The store command that queues a message for persistent sessions, with
    /// this broker's queue limit and overflow policy.
    pub fn enqueue_command(
        &self,
        message: Option<proto::Message>,
        targets: Vec<proto::EnqueueTarget>,
        incoming: Option<proto::IncomingQos2>,
    ) -> proto::Command {
        let limits = &self.config.limits;
        proto::Command {
            kind: Some(proto::command::Kind::Enqueue(proto::Enqueue {
                message,
                targets,
                incoming,
                // The queue holds the in-flight window too.
                max_queued: u32::try_from(
                    limits.max_queued_messages + usize::from(limits.max_inflight),
                )
                .unwrap_or(u32::MAX),
                drop_oldest: limits.queue_overflow == crate::config::QueueOverflow::DropOldest,
            })),
        }
    }

    /// Hands a publish to the other edges holding its sessions. With
    /// `confirm`, one receiver per edge tells when that edge has them.
    pub fn forward(
        &self,
        message: &Message,
        remote: Vec<(Arc<str>, Vec<rookery_cluster::proto::Delivery>)>,
        confirm: bool,
    ) -> Vec<tokio::sync::oneshot::Receiver<bool>> {
        let mut confirmations = Vec::new();
        if remote.is_empty() {
            return confirmations;
        }
        let stored = message.to_proto();
        for (edge, deliveries) in remote {
            let Some(address) = self.edge_address(&edge) else {
                metrics::counter!("rookery_forward_dropped_total")
                    .increment(deliveries.len() as u64);
                tracing::debug!(%edge, "no address for an edge; its deliveries are dropped");
                continue;
            };
            let done = confirm.then(|| {
                let (done, confirmed) = tokio::sync::oneshot::channel();
                confirmations.push(confirmed);
                done
            });
            self.forwarder.send(
                &address,
                rookery_cluster::Outbound {
                    message: stored.clone(),
                    deliveries,
                    done,
                },
            );
        }
        confirmations
    }

    /// Where an edge's forwarding service listens, as it registered.
    fn edge_address(&self, edge: &Arc<str>) -> Option<String> {
        self.edge_addresses.lock().get(edge).cloned()
    }

    /// Delivers what another edge forwarded to sessions online here.
    pub fn deliver_forwarded(
        &self,
        messages: Vec<proto::Message>,
        deliveries: Vec<rookery_cluster::proto::Delivery>,
    ) {
        let messages: Vec<Option<Arc<Message>>> = messages
            .iter()
            .map(|message| Message::from_proto(message).map(Arc::new))
            .collect();
        let mut local = Vec::with_capacity(deliveries.len());
        {
            let sessions = self.sessions.read();
            for delivery in deliveries {
                let message = usize::try_from(delivery.message)
                    .ok()
                    .and_then(|index| messages.get(index))
                    .and_then(Option::as_ref);
                let (Some(message), Some(qos)) = (message, crate::message::qos_from(delivery.qos))
                else {
                    metrics::counter!("rookery_forward_invalid_total").increment(1);
                    continue;
                };
                let Some(mailbox) = sessions
                    .get(delivery.client_id.as_str())
                    .and_then(|session| session.mailbox.clone())
                else {
                    // Gone from this edge since the sender routed it.
                    metrics::counter!("rookery_forward_unrouted_total").increment(1);
                    continue;
                };
                local.push((
                    mailbox,
                    Delivery {
                        message: message.clone(),
                        qos,
                        retain: delivery.retain,
                        subscription_ids: delivery.subscription_ids,
                        shared_group: (!delivery.shared_group.is_empty())
                            .then(|| Arc::from(delivery.shared_group.as_str())),
                    },
                ));
            }
        }
        // No connection to pause here: the sending edge's publisher is
        // held by its stream instead.
        self.deliver_local(local, &mut Vec::new());
    }

    /// Hands the shared-subscription messages a departed session had not
    /// acknowledged to other members of their groups (the session is
    /// already unregistered, so it is not picked again).
    pub fn redistribute(&self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            let Some(group) = delivery.shared_group.as_deref() else {
                continue;
            };
            let routes = self.route_to(&delivery.message, Some(group));
            if routes.local.is_empty() && routes.remote.is_empty() && routes.durable.is_empty() {
                metrics::counter!("rookery_shared_redistribution_dropped_total").increment(1);
                continue;
            }
            metrics::counter!("rookery_shared_redistributed_total").increment(1);
            self.deliver_local(routes.local, &mut Vec::new());
            self.forward(&delivery.message, routes.remote, false);
            if !routes.durable.is_empty() {
                let commands = self.store_commands(&delivery.message, false, routes.durable, None);
                let written = self.store.submit(commands);
                tokio::spawn(async move {
                    if let Err(error) = written.await {
                        tracing::warn!(%error, "queuing a redistributed message failed");
                    }
                });
            }
        }
    }

    /// Counts what a store write's results report as dropped.
    pub fn count_store_drops(&self, results: &[proto::CommandResult]) {
        for result in results {
            if let Some(proto::command_result::Kind::Enqueued(enqueued)) = &result.kind {
                for _ in 0..enqueued.dropped {
                    self.stats.dropped("queue_full");
                }
            }
        }
    }

    /// Every mailbox, for shutdown.
    pub fn mailboxes(&self) -> Vec<Mailbox> {
        self.sessions
            .read()
            .values()
            .filter_map(|session| session.mailbox.clone())
            .collect()
    }
}

/// A store write queuing a message for persistent sessions, counted in the
/// backlog of those online here until its result is known (dropped), so
/// that a publisher pipelining its writes pauses before the store queue
/// overflows rather than after.
#[derive(Debug)]
pub struct PendingEnqueue {
    mailboxes: Vec<Option<Mailbox>>,
}

impl PendingEnqueue {
    /// Counts the write; sessions now nearly full are added to `full`.
    pub fn new(mailboxes: Vec<Option<Mailbox>>, full: &mut Vec<Mailbox>) -> Self {
        for mailbox in mailboxes.iter().flatten() {
            mailbox.shared.enqueuing.fetch_add(1, Ordering::SeqCst);
            add_if_full(full, mailbox);
        }
        PendingEnqueue { mailboxes }
    }
}

impl Drop for PendingEnqueue {
    fn drop(&mut self) {
        for mailbox in self.mailboxes.iter().flatten() {
            mailbox.shared.end_enqueue();
        }
    }
}

/// Adds a route of another edge (or a persistent session's) to `mirror`;
/// the session it belongs to, unless the route is `own_edge`'s.
fn mirror_into(
    mirror: &mut HashMap<ClientId, ClusterRoutes>,
    own_edge: &str,
    route: &proto::Route,
) -> Option<ClientId> {
    if route.edge_id == own_edge {
        return None;
    }
    let client: ClientId = Arc::from(route.client_id.as_str());
    let entry = sub_entry_from_proto(route.options.as_ref());
    let routes = mirror.entry(client.clone()).or_default();
    if route.edge_id.is_empty() {
        routes.queue_filters.insert(route.filter.clone(), entry);
    } else {
        let edge: Arc<str> = Arc::from(route.edge_id.as_str());
        if routes.edge.as_ref() != Some(&edge) {
            // Online on a new edge: the old edge's routes are gone (their
            // removals may still be on their way).
            routes.edge_filters.clear();
            routes.edge = Some(edge);
        }
        routes.edge_filters.insert(route.filter.clone(), entry);
    }
    Some(client)
}

fn add_if_full(full: &mut Vec<Mailbox>, mailbox: &Mailbox) {
    if mailbox.is_full()
        && !full
            .iter()
            .any(|known| known.connection_id == mailbox.connection_id)
    {
        full.push(mailbox.clone());
    }
}

#[derive(Debug)]
struct Target {
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
    /// Picked as a member of this shared group.
    shared_group: Option<Arc<str>>,
}

fn target(client: &ClientId, value: &SubEntry) -> (ClientId, Target) {
    let options = &value.options;
    (
        client.clone(),
        Target {
            qos: options.qos,
            retain_as_published: options.retain_as_published,
            subscription_ids: if value.subscription_id != 0 {
                vec![value.subscription_id]
            } else {
                Vec::new()
            },
            shared_group: None,
        },
    )
}

/// One target per session: a session matched by several of its
/// subscriptions gets the message once, at the highest QoS, with every
/// subscription identifier. Sorting keeps this O(n log n) for a publish that
/// fans out to many sessions.
fn merge_targets(targets: &mut Vec<(ClientId, Target)>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    targets.dedup_by(|(client, later), (kept_client, kept)| {
        if client != kept_client {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        // Also matched otherwise: not the group's alone to hand on.
        if kept.shared_group != later.shared_group {
            kept.shared_group = None;
        }
        true
    });
}

pub fn sub_entry_from_proto(options: Option<&proto::SubscriptionOptions>) -> SubEntry {
    let options = options.cloned().unwrap_or_default();
    SubEntry {
        options: SubscriptionOptions {
            qos: crate::message::qos_from(options.qos).unwrap_or(QoS::AtMostOnce),
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: match options.retain_handling {
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => RetainHandling::SendAtSubscribe,
            },
        },
        subscription_id: options.subscription_id,
    }
}

pub fn sub_entry_to_proto(entry: &SubEntry) -> proto::SubscriptionOptions {
    proto::SubscriptionOptions {
        qos: u32::from(entry.options.qos as u8),
        no_local: entry.options.no_local,
        retain_as_published: entry.options.retain_as_published,
        retain_handling: entry.options.retain_handling as u32,
        subscription_id: entry.subscription_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(qos: QoS, subscription_id: u32) -> SubEntry {
        SubEntry {
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            subscription_id,
        }
    }

    /// MQTT-3.3.4-2/3: overlapping subscriptions of one session give one
    /// message, at the highest QoS, with every subscription identifier.
    #[test]
    fn overlapping_subscriptions_merge_into_one_target_per_session() {
        let a: ClientId = Arc::from("a");
        let b: ClientId = Arc::from("b");
        let mut targets = vec![
            target(&a, &entry(QoS::AtMostOnce, 1)),
            target(&b, &entry(QoS::AtLeastOnce, 0)),
            target(&a, &entry(QoS::ExactlyOnce, 2)),
        ];
        merge_targets(&mut targets);
        assert_eq!(targets.len(), 2);
        let (client, merged) = &targets[0];
        assert_eq!(&**client, "a");
        assert_eq!(merged.qos, QoS::ExactlyOnce);
        let mut ids = merged.subscription_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(targets[1].1.qos, QoS::AtLeastOnce);
    }

    fn delivery() -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"m"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                expires_at_ms: 0,
                origin: Arc::from("p"),
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared_group: None,
        }
    }

    /// Whether `room` resolves at once.
    fn has_room(mailbox: &Mailbox) -> bool {
        futures::FutureExt::now_or_never(mailbox.room()).is_some()
    }

    /// A publisher pauses at the mark and resumes at half of it, whether the
    /// backlog waits in the mailbox or in the connection's own queue.
    #[test]
    fn publishers_pause_at_the_mark_and_resume_at_half_of_it() {
        let (mailbox, mut receiver) = Mailbox::new(1, 4, 0);
        for _ in 0..3 {
            assert!(mailbox.deliver(delivery(), 100));
        }
        assert!(!mailbox.is_full());
        assert!(mailbox.deliver(delivery(), 100));
        assert!(mailbox.is_full());
        assert!(!has_room(&mailbox));

        // The connection takes all four into its queue: still full.
        while receiver.try_recv().is_some() {}
        receiver.report_taken(4, Some(0));
        assert!(mailbox.is_full());
        // Three left: below the mark, not yet down to half of it.
        receiver.report_taken(3, Some(0));
        assert!(!mailbox.is_full());
        assert!(!has_room(&mailbox));
        receiver.report_taken(1, Some(0));
        assert!(has_room(&mailbox));
    }

    /// A session that did not drain is stalled: nobody pauses for it until
    /// it drains; a closed one never holds anyone.
    #[test]
    fn stalled_and_closed_sessions_hold_no_publisher() {
        let (mailbox, receiver) = Mailbox::new(1, 2, 0);
        receiver.report_taken(5, Some(0));
        assert!(mailbox.is_full());
        mailbox.stall();
        assert!(!mailbox.is_full());
        assert!(has_room(&mailbox));
        receiver.report_taken(0, Some(0));
        receiver.report_taken(5, Some(0));
        assert!(mailbox.is_full(), "draining ends the stall");
        drop(receiver);
        assert!(!mailbox.is_full());
        assert!(has_room(&mailbox));
    }

    /// A persistent session's backlog is its store queue beyond the
    /// in-flight window, plus the writes still queuing for it.
    #[test]
    fn store_queue_and_writes_in_flight_count_in_the_backlog() {
        let (mailbox, receiver) = Mailbox::new(1, 4, 32);
        let mut full = Vec::new();
        receiver.report_taken(0, Some(34));
        assert!(!mailbox.is_full());
        let first = PendingEnqueue::new(vec![Some(mailbox.clone())], &mut full);
        assert!(full.is_empty());
        let second = PendingEnqueue::new(vec![Some(mailbox.clone()), None], &mut full);
        assert_eq!(full.len(), 1, "34 - 32 stored + 2 in flight reach the mark");
        drop(first);
        assert!(!mailbox.is_full(), "a failed write no longer counts");
        // Committed: the connection reads it and reports the longer queue.
        drop(second);
        receiver.report_taken(0, Some(36));
        assert!(mailbox.is_full(), "the store queue is now 36 long");
        receiver.report_taken(0, Some(32));
        assert!(has_room(&mailbox));
    }

    /// A publisher parked in `room` is woken by the connection's report, by
    /// a store write finishing, by a stall and by the connection ending.
    #[tokio::test]
    async fn parked_publishers_are_woken() {
        let wait = std::time::Duration::from_secs(5);
        let (mailbox, receiver) = Mailbox::new(1, 4, 0);
        receiver.report_taken(4, Some(0));
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        receiver.report_taken(1, Some(0));
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        let mut full = Vec::new();
        let pending: Vec<_> = (0..4)
            .map(|_| PendingEnqueue::new(vec![Some(mailbox.clone())], &mut full))
            .collect();
        receiver.report_taken(0, Some(0));
        assert!(mailbox.is_full());
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        drop(pending);
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        receiver.report_taken(9, Some(0));
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        mailbox.stall();
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        receiver.report_taken(0, Some(0));
        receiver.report_taken(9, Some(0));
        assert!(mailbox.is_full(), "draining ended the stall");
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();
    }

    /// A hub on a single-voter store of its own, as edge `A`.
    async fn hub_on_a_store() -> (Hub, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = rookery_store::StoreNode::start(rookery_store::StoreConfig::new(
            1,
            dir.path().to_path_buf(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .await
        .expect("store starts");
        node.initialize_single().await.expect("single voter");
        let store = Store::new(
            rookery_cluster::Access::Replica(Arc::new(node)),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(1),
        );
        let hub = Hub::new(
            Arc::new(BrokerConfig::default()),
            "A".into(),
            String::new(),
            None,
            store,
        );
        (hub, dir)
    }

    fn route(filter: &str, edge: &str, client: &str, qos: u32) -> proto::Route {
        proto::Route {
            filter: filter.into(),
            edge_id: edge.into(),
            client_id: client.into(),
            options: Some(proto::SubscriptionOptions {
                qos,
                ..Default::default()
            }),
        }
    }

    fn message(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"m"),
            qos,
            retain: false,
            properties: Default::default(),
            expires_at_ms: 0,
            origin: Arc::from("p"),
        })
    }

    fn remote_clients(routes: &Routes) -> Vec<(String, String)> {
        routes
            .remote
            .iter()
            .flat_map(|(edge, deliveries)| {
                deliveries
                    .iter()
                    .map(move |d| (edge.to_string(), d.client_id.clone()))
            })
            .collect()
    }

    /// Sessions online on other edges are routed there; a persistent
    /// session's QoS 1/2 copy goes to the store whichever edge holds it; a
    /// session that moved is routed to its new edge only.
    #[tokio::test]
    async fn routes_follow_the_store_route_table_of_other_edges() {
        let (hub, _dir) = hub_on_a_store().await;
        hub.route_added(&route("a/#", "B", "clean", 1));
        hub.route_added(&route("a/#", "B", "durable", 1));
        hub.route_added(&route("a/#", "", "durable", 1));
        // This edge's own routes are its connections' business.
        hub.route_added(&route("a/#", "A", "mine", 1));

        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert_eq!(
            remote_clients(&routes),
            vec![("B".to_owned(), "clean".to_owned())]
        );
        let durable: Vec<&str> = routes
            .durable
            .iter()
            .map(|t| t.client_id.as_str())
            .collect();
        assert_eq!(durable, vec!["durable"]);
        assert!(routes.local.is_empty());

        // QoS 0 to a persistent session online elsewhere: forwarded.
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        let mut remote = remote_clients(&routes);
        remote.sort();
        assert_eq!(
            remote,
            vec![
                ("B".to_owned(), "clean".to_owned()),
                ("B".to_owned(), "durable".to_owned())
            ]
        );

        // `clean` reconnects on edge C; the removal of B's route comes later.
        hub.route_added(&route("a/#", "C", "clean", 1));
        hub.route_removed(&route("a/#", "B", "clean", 1));
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        let mut remote = remote_clients(&routes);
        remote.sort();
        assert_eq!(
            remote,
            vec![
                ("B".to_owned(), "durable".to_owned()),
                ("C".to_owned(), "clean".to_owned())
            ]
        );

        // `durable`'s edge dies: it stays a persistent, offline session.
        hub.route_removed(&route("a/#", "B", "durable", 1));
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        assert_eq!(
            remote_clients(&routes),
            vec![("C".to_owned(), "clean".to_owned())]
        );
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        let durable: Vec<&str> = routes
            .durable
            .iter()
            .map(|t| t.client_id.as_str())
            .collect();
        assert_eq!(durable, vec!["durable"]);

        // Its session ends: nothing is left of it.
        hub.route_removed(&route("a/#", "", "durable", 1));
        assert!(hub.session("durable").is_none());
        assert_eq!(hub.subscription_count(), 1);
    }

    /// A session online here ignores the store's stale routes of it, and is
    /// routed by them again once its connection leaves this edge.
    #[tokio::test]
    async fn a_session_online_here_takes_over_from_its_mirrored_routes() {
        let (hub, _dir) = hub_on_a_store().await;
        let client: ClientId = Arc::from("c");
        let (mailbox, _receiver) = Mailbox::new(7, 100, 0);
        hub.register(
            client.clone(),
            SessionEntry {
                epoch: 2,
                persistent: false,
                mailbox: Some(mailbox),
                remote_edge: None,
            },
        );
        hub.subscribe(&client, "a/#", entry(QoS::AtLeastOnce, 0));
        // The client's newer connection on B shows up before this one ends.
        hub.route_added(&route("a/#", "B", "c", 1));
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert_eq!(routes.local.len(), 1);
        assert!(routes.remote.is_empty());

        assert!(hub.unregister("c", 7, false));
        hub.clear_subscriptions(&client);
        hub.session_left("c");
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert!(routes.local.is_empty());
        assert_eq!(
            remote_clients(&routes),
            vec![("B".to_owned(), "c".to_owned())]
        );
    }
}
