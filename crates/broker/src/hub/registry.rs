//! The session registry: every session this edge knows, each session's
//! filters, and the subscription index built from them, behind one lock.
//! Each change is one method that takes the lock once, so the sessions and
//! the index never disagree: a connection attaches (newer epochs only) and
//! detaches through the same two methods however it ends, and a session not
//! online here follows the store's mirrored routes under the same lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use rookery_codec::{QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use rookery_store::proto;
use rookery_topic::SubscriptionIndex;

use super::ClientId;
use super::mailbox::Mailbox;
use super::mirror::{ClusterMirror, MirroredSession};

/// A subscription as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    /// The options the SUBSCRIBE gave (or the store recorded).
    pub options: SubscriptionOptions,
    /// 0 when the SUBSCRIBE carried none.
    pub subscription_id: u32,
}

/// A session this edge knows: online here, online on another edge, or
/// persistent and offline.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// The store's fencing epoch of the connection that holds it (0 for a
    /// session known only from the store's routes).
    pub epoch: u64,
    /// Session expiry above 0: its QoS 1/2 messages are queued in the store.
    pub persistent: bool,
    /// The connection holding the session on this edge.
    pub mailbox: Option<Mailbox>,
    /// The edge holding the session's connection, when it is not this one.
    pub remote_edge: Option<Arc<str>>,
}

/// `attach` was refused: a newer connection of the client holds its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a newer connection of this client holds its session")]
pub struct Superseded;

/// The registry: its one lock and what it guards. Lock order: this lock,
/// then the mirror's (`follow` reads the mirror under it); nothing that
/// holds another hub lock takes this one.
#[derive(Debug, Default)]
pub(super) struct Registry {
    state: RwLock<Registered>,
}

/// What the registry's lock guards; read through [`Registry::read`], changed
/// only by the registry's methods.
#[derive(Debug, Default)]
pub(super) struct Registered {
    sessions: HashMap<ClientId, SessionEntry>,
    /// Each session's filters, to clear them when the session ends.
    filters: HashMap<ClientId, HashSet<String>>,
    index: SubscriptionIndex<ClientId, SubEntry>,
}

impl Registered {
    /// The session of a client, if this edge knows it.
    pub(super) fn session(&self, client: &str) -> Option<&SessionEntry> {
        self.sessions.get(client)
    }

    /// The subscription index, for matching.
    pub(super) fn index(&self) -> &SubscriptionIndex<ClientId, SubEntry> {
        &self.index
    }

    fn subscribe(&mut self, client: &ClientId, filter: &str, entry: SubEntry) -> Option<SubEntry> {
        self.filters
            .entry(client.clone())
            .or_default()
            .insert(filter.to_owned());
        self.index.insert(filter, client.clone(), entry)
    }

    fn unsubscribe(&mut self, client: &ClientId, filter: &str) -> Option<SubEntry> {
        if let Some(filters) = self.filters.get_mut(client) {
            filters.remove(filter);
        }
        self.index.remove(filter, client)
    }

    /// Removes every subscription of a session from the index.
    fn clear_subscriptions(&mut self, client: &ClientId) {
        let Some(filters) = self.filters.remove(client) else {
            return;
        };
        for filter in filters {
            self.index.remove(&filter, client);
        }
    }

    /// Makes the session and its subscriptions what the store's routes say
    /// of it (nothing when it has none), unless it is online here: its
    /// connection keeps its own.
    fn follow(&mut self, client: &ClientId, mirrored: Option<MirroredSession>) {
        if self.is_online_here(client) {
            return;
        }
        let Some(mirrored) = mirrored else {
            self.clear_subscriptions(client);
            self.sessions.remove(client);
            return;
        };
        let current: Vec<String> = self
            .filters
            .get(client)
            .map(|filters| filters.iter().cloned().collect())
            .unwrap_or_default();
        for filter in current {
            if !mirrored.filters.contains_key(&filter) {
                self.unsubscribe(client, &filter);
            }
        }
        for (filter, entry) in &mirrored.filters {
            self.subscribe(client, filter, *entry);
        }
        let session = self.sessions.entry(client.clone()).or_insert(SessionEntry {
            epoch: 0,
            persistent: mirrored.persistent,
            mailbox: None,
            remote_edge: None,
        });
        session.persistent = mirrored.persistent;
        session.remote_edge = mirrored.edge;
    }

    fn is_online_here(&self, client: &str) -> bool {
        self.sessions
            .get(client)
            .is_some_and(|session| session.mailbox.is_some())
    }
}

impl Registry {
    /// A read view for matching; held briefly (writers wait for it).
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Registered> {
        self.state.read()
    }

    /// Puts a connection in charge of its client's session, unless a newer
    /// one holds it: the previous connection is closed with 0x8E
    /// (MQTT-3.1.4-3) and the index holds exactly `subscriptions`.
    pub(super) fn attach(
        &self,
        client: &ClientId,
        entry: SessionEntry,
        subscriptions: impl IntoIterator<Item = (String, SubEntry)>,
    ) -> Result<(), Superseded> {
        let previous = {
            let mut state = self.state.write();
            if state
                .sessions
                .get(client)
                .is_some_and(|current| current.epoch > entry.epoch)
            {
                return Err(Superseded);
            }
            let previous = state.sessions.insert(client.clone(), entry);
            state.clear_subscriptions(client);
            for (filter, entry) in subscriptions {
                state.subscribe(client, &filter, entry);
            }
            previous
        };
        if let Some(old) = previous.and_then(|previous| previous.mailbox) {
            old.close(ReasonCode::SessionTakenOver);
        }
        Ok(())
    }

    /// Ends a connection's hold on its session, if it still has it: a
    /// persistent session stays (offline, with its subscriptions), another
    /// goes with its subscriptions; then the session is routed as `mirror`
    /// says (it may be online on another edge already). Whether this
    /// connection held the session.
    pub(super) fn detach(
        &self,
        client: &ClientId,
        connection_id: u64,
        persistent: bool,
        mirror: &ClusterMirror,
    ) -> bool {
        let mut state = self.state.write();
        let Some(session) = state.sessions.get_mut(client) else {
            return false;
        };
        if session.mailbox.as_ref().map(|m| m.connection_id) != Some(connection_id) {
            return false;
        }
        if persistent {
            session.mailbox = None;
            session.persistent = true;
        } else {
            state.sessions.remove(client);
            state.clear_subscriptions(client);
        }
        // Only when the mirror knows it: a persistent session of this edge
        // that the mirror has not heard of yet is kept as it is.
        if let Some(mirrored) = mirror.session(client) {
            state.follow(client, Some(mirrored));
        }
        true
    }

    /// Routes to a session not online here as `mirror` now says.
    pub(super) fn follow(&self, client: &ClientId, mirror: &ClusterMirror) {
        let mut state = self.state.write();
        if state.is_online_here(client) {
            return;
        }
        let mirrored = mirror.session(client);
        state.follow(client, mirrored);
    }

    /// Adds or replaces a subscription of a session; the one it replaced.
    pub(super) fn subscribe(
        &self,
        client: &ClientId,
        filter: &str,
        entry: SubEntry,
    ) -> Option<SubEntry> {
        self.state.write().subscribe(client, filter, entry)
    }

    /// Removes a subscription of a session; the one removed.
    pub(super) fn unsubscribe(&self, client: &ClientId, filter: &str) -> Option<SubEntry> {
        self.state.write().unsubscribe(client, filter)
    }

    /// How many subscriptions a session holds, and which of `filters` are
    /// among them.
    pub(super) fn held<'a>(
        &self,
        client: &ClientId,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> (usize, Vec<bool>) {
        let state = self.state.read();
        let Some(own) = state.filters.get(client) else {
            return (0, filters.into_iter().map(|_| false).collect());
        };
        let held = filters.into_iter().map(|f| own.contains(f)).collect();
        (own.len(), held)
    }

    /// Subscriptions in the index, all sessions together.
    pub(super) fn subscription_count(&self) -> usize {
        self.state.read().index.len()
    }

    /// A copy of a client's session.
    pub(super) fn session(&self, client: &str) -> Option<SessionEntry> {
        self.state.read().sessions.get(client).cloned()
    }

    /// The mailbox of every connection online here.
    pub(super) fn mailboxes(&self) -> Vec<Mailbox> {
        self.state
            .read()
            .sessions
            .values()
            .filter_map(|session| session.mailbox.clone())
            .collect()
    }
}

/// A subscription as the store records it, as the index keeps it.
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

/// A subscription as the index keeps it, as the store records it.
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
    use crate::hub::fixtures::{entry, route};
    use crate::hub::mailbox::{MailboxReceiver, ToConnection};
    use rookery_topic::Match;

    const EDGE: &str = "A";

    fn client(id: &str) -> ClientId {
        Arc::from(id)
    }

    fn online(epoch: u64, connection_id: u64, persistent: bool) -> (SessionEntry, MailboxReceiver) {
        let (mailbox, receiver) = Mailbox::new(connection_id, 0, 0);
        let session = SessionEntry {
            epoch,
            persistent,
            mailbox: Some(mailbox),
            remote_edge: None,
        };
        (session, receiver)
    }

    fn stored(filters: &[&str]) -> Vec<(String, SubEntry)> {
        filters
            .iter()
            .map(|filter| ((*filter).to_owned(), entry(QoS::AtLeastOnce, 0)))
            .collect()
    }

    /// The filters the index holds for a client.
    fn filters_of(registry: &Registry, client: &str) -> Vec<String> {
        let mut filters: Vec<String> = registry
            .read()
            .filters
            .get(client)
            .map(|filters| filters.iter().cloned().collect())
            .unwrap_or_default();
        filters.sort();
        filters
    }

    /// The clients a topic is routed to by the index.
    fn matched(registry: &Registry, topic: &str) -> Vec<String> {
        let mut clients = Vec::new();
        registry.read().index.for_each_match(topic, |matched| {
            if let Match::Plain { subscriber, .. } = matched {
                clients.push(subscriber.to_string());
            }
        });
        clients.sort();
        clients
    }

    fn connection_id_of(registry: &Registry, client: &str) -> Option<u64> {
        registry
            .session(client)
            .and_then(|session| session.mailbox)
            .map(|mailbox| mailbox.connection_id)
    }

    /// A connection whose CONNECT the store answered before a newer one's
    /// (a race between edges or connections) does not take the session back.
    #[test]
    fn attach_refuses_an_older_epoch() {
        let registry = Registry::default();
        let c = client("c");
        let (newer, _newer_receiver) = online(5, 1, false);
        registry.attach(&c, newer, stored(&["a"])).unwrap();
        let (older, mut older_receiver) = online(4, 2, false);
        assert_eq!(registry.attach(&c, older, stored(&["b"])), Err(Superseded));
        assert_eq!(connection_id_of(&registry, "c"), Some(1));
        assert_eq!(filters_of(&registry, "c"), vec!["a"]);
        assert!(older_receiver.try_recv().is_none());
    }

    /// MQTT-3.1.4-3: the existing connection of the client is closed with
    /// 0x8E when a new one takes its session over.
    #[test]
    fn attach_replaces_the_session_and_closes_the_previous_connection_with_0x8e() {
        let registry = Registry::default();
        let c = client("c");
        let (first, mut first_receiver) = online(1, 1, true);
        registry.attach(&c, first, stored(&["a"])).unwrap();
        let (second, mut second_receiver) = online(2, 2, true);
        registry.attach(&c, second, stored(&["a"])).unwrap();
        assert_eq!(connection_id_of(&registry, "c"), Some(2));
        assert!(matches!(
            first_receiver.try_recv(),
            Some(ToConnection::Close(ReasonCode::SessionTakenOver))
        ));
        assert!(second_receiver.try_recv().is_none());
    }

    /// The index holds exactly the session's subscriptions as stored: none
    /// of the previous connection's that the store no longer has.
    #[test]
    fn attach_makes_the_index_hold_exactly_the_stored_subscriptions() {
        let registry = Registry::default();
        let c = client("c");
        let (first, _first_receiver) = online(1, 1, true);
        registry.attach(&c, first, stored(&["a", "b"])).unwrap();
        registry.subscribe(&c, "late", entry(QoS::AtMostOnce, 0));
        let (second, _second_receiver) = online(2, 2, true);
        registry.attach(&c, second, stored(&["b", "c"])).unwrap();
        assert_eq!(filters_of(&registry, "c"), vec!["b", "c"]);
        assert!(matched(&registry, "a").is_empty());
        assert!(matched(&registry, "late").is_empty());
        assert_eq!(matched(&registry, "c"), vec!["c"]);
        assert_eq!(registry.subscription_count(), 2);
    }

    /// A connection taken over by a newer one on this edge ends later:
    /// the newer connection's session and subscriptions are untouched.
    #[test]
    fn detach_by_a_connection_that_no_longer_holds_the_session_changes_nothing() {
        let registry = Registry::default();
        let mirror = ClusterMirror::default();
        let c = client("c");
        let (first, _first_receiver) = online(1, 1, false);
        registry.attach(&c, first, stored(&["a"])).unwrap();
        let (second, _second_receiver) = online(2, 2, false);
        registry.attach(&c, second, stored(&["a"])).unwrap();
        mirror.add(EDGE, &route("a", "B", "c", 1));

        assert!(!registry.detach(&c, 1, false, &mirror));
        assert_eq!(connection_id_of(&registry, "c"), Some(2));
        assert_eq!(filters_of(&registry, "c"), vec!["a"]);
        assert!(!registry.detach(&client("unknown"), 1, false, &mirror));
    }

    /// A clean session ends with its connection: nothing is left of it.
    #[test]
    fn detach_of_a_clean_session_removes_it_with_its_subscriptions() {
        let registry = Registry::default();
        let c = client("c");
        let (session, _receiver) = online(1, 1, false);
        registry.attach(&c, session, stored(&["a", "b/#"])).unwrap();
        registry.subscribe(&c, "x", entry(QoS::AtMostOnce, 0));

        assert!(registry.detach(&c, 1, false, &ClusterMirror::default()));
        assert!(registry.session("c").is_none());
        assert!(filters_of(&registry, "c").is_empty());
        assert_eq!(registry.subscription_count(), 0);
    }

    /// A persistent session outlives its connection: offline, its
    /// subscriptions still route its QoS 1/2 messages to the store.
    #[test]
    fn detach_of_a_persistent_session_keeps_it_offline_with_its_subscriptions() {
        let registry = Registry::default();
        let c = client("c");
        let (session, _receiver) = online(1, 1, true);
        registry.attach(&c, session, stored(&["a", "b/#"])).unwrap();

        assert!(registry.detach(&c, 1, true, &ClusterMirror::default()));
        let session = registry.session("c").unwrap();
        assert!(session.persistent);
        assert!(session.mailbox.is_none());
        assert_eq!(filters_of(&registry, "c"), vec!["a", "b/#"]);
        assert_eq!(matched(&registry, "b/x"), vec!["c"]);
    }

    /// A client that already reconnected on another edge (its routes there
    /// mirrored) is routed there as soon as its connection here ends.
    #[test]
    fn after_detach_a_client_online_on_another_edge_is_routed_there() {
        let registry = Registry::default();
        let mirror = ClusterMirror::default();
        let c = client("c");
        let (session, _receiver) = online(1, 1, false);
        registry.attach(&c, session, stored(&["here"])).unwrap();
        mirror.add(EDGE, &route("there/#", "B", "c", 1));
        // Online here: the mirrored routes wait.
        registry.follow(&c, &mirror);
        assert_eq!(filters_of(&registry, "c"), vec!["here"]);

        assert!(registry.detach(&c, 1, false, &mirror));
        let session = registry.session("c").unwrap();
        assert_eq!(session.remote_edge.as_deref(), Some("B"));
        assert!(session.mailbox.is_none());
        assert!(!session.persistent);
        assert_eq!(filters_of(&registry, "c"), vec!["there/#"]);
        assert_eq!(matched(&registry, "there/x"), vec!["c"]);
    }
}
