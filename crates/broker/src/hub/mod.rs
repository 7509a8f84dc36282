//! What every connection of this edge shares: the sessions it holds, the
//! subscription index that routes publishes to them, and the retained
//! messages. A publish is matched here once and handed to each matching
//! session's mailbox; QoS 1/2 messages for persistent sessions go to the
//! store first.
//!
//! `Hub` is the facade over its parts, each in its own file:
//! - `registry`: the sessions, their filters and the subscription index,
//!   behind one lock; connections `attach` and `detach` through it.
//! - `routing`: matching a publish ([`Hub::route`]) and handing it to
//!   mailboxes, other edges and the store.
//! - `mirror`: the store's routes of sessions not online here, and where
//!   the other edges listen.
//! - `mailbox`: the way into a connection's task, and backpressure.
//! - `retained`: the retained messages.
//! - `arrivals`: SUBSCRIBEs read but not yet in the index, which a publish
//!   matched meanwhile waits for.
//!
//! Lock order (a lock is only taken while holding those before it):
//! 1. the registry's `RwLock` (sessions, filters and index together);
//! 2. the mirror's route `Mutex` (read under the registry's write lock when
//!    a session follows the store's routes), or the shared groups' cursors
//!    (under the registry's read lock while matching).
//!
//! Everything else is a leaf taken alone: the mirror's edge addresses, the
//! retained messages, a mailbox's queue, the arrivals' tickets. Nothing
//! holding a lock of the second rank or a leaf takes the registry's, so no
//! cycle can form.

mod arrivals;
mod mailbox;
mod mirror;
mod registry;
mod retained;
mod routing;

#[cfg(test)]
mod fixtures;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use arrivals::ArrivalTicket;
pub use mailbox::{Mailbox, MailboxReceiver, PendingEnqueue, ToConnection, room_in};
pub use registry::{SessionEntry, SubEntry, Superseded, sub_entry_from_proto, sub_entry_to_proto};
pub use routing::Routes;

use crate::auth::Gatekeeper;
use crate::config::BrokerConfig;
use crate::stats::Stats;
use crate::store::{Store, StoreUnavailable};
use arrivals::Arrivals;
use mirror::ClusterMirror;
use registry::Registry;
use retained::Retained;
use routing::SharedCursors;

/// A client identifier, shared by the registry's maps and the index.
pub type ClientId = Arc<str>;

/// The longest a publish waits for a SUBSCRIBE read before it to take
/// effect. Its connection holds the wait only while it decodes and checks
/// the packets it read, never across I/O, so only a starved thread reaches
/// this.
const SUBSCRIBE_WAIT: Duration = Duration::from_millis(10);

/// What every connection of this edge shares (see the module's doc).
#[derive(Debug)]
pub struct Hub {
    /// The broker's configuration.
    pub config: Arc<BrokerConfig>,
    /// This edge's id in the store (this incarnation's).
    pub edge_id: String,
    /// Where other edges forward to this one (empty: nowhere).
    pub forward_address: String,
    /// The session store.
    pub store: Store,
    /// This edge's counters.
    pub stats: Stats,
    /// Who may connect, and what each client may do.
    pub gatekeeper: Arc<Gatekeeper>,
    registry: Registry,
    mirror: ClusterMirror,
    retained: Retained,
    /// Streams to the other edges.
    forwarder: rookery_cluster::Forwarder,
    shared_cursors: SharedCursors,
    next_connection: AtomicU64,
    arrivals: Arc<Arrivals>,
    /// The connections that ended here lately with a normal DISCONNECT.
    pub normal_ends: crate::wills::NormalEnds,
}

impl Hub {
    /// A hub with nothing loaded yet (see [`Hub::load`]) that forwards to
    /// other edges through `forwarder`.
    pub fn new(
        config: Arc<BrokerConfig>,
        edge_id: String,
        forward_address: String,
        forwarder: rookery_cluster::Forwarder,
        store: Store,
        gatekeeper: Arc<Gatekeeper>,
    ) -> Self {
        Hub {
            config,
            edge_id,
            forward_address,
            store,
            stats: Stats::default(),
            gatekeeper,
            registry: Registry::default(),
            mirror: ClusterMirror::default(),
            retained: Retained::default(),
            forwarder,
            shared_cursors: SharedCursors::default(),
            next_connection: AtomicU64::new(1),
            arrivals: Arc::default(),
            normal_ends: crate::wills::NormalEnds::default(),
        }
    }

    /// A new connection's id, unique on this edge.
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

    /// A copy of a client's session as this edge knows it.
    pub fn session(&self, client_id: &str) -> Option<SessionEntry> {
        self.registry.session(client_id)
    }

    /// Puts a new connection in charge of its client's session, atomically:
    /// refused if a connection with a newer epoch holds it; otherwise the
    /// previous connection here is closed with 0x8E (MQTT-3.1.4-3) and the
    /// index holds exactly `subscriptions` (the session's, as stored).
    pub fn attach(
        &self,
        client: &ClientId,
        entry: SessionEntry,
        subscriptions: impl IntoIterator<Item = (String, SubEntry)>,
    ) -> Result<(), Superseded> {
        self.registry.attach(client, entry, subscriptions)
    }

    /// Ends a connection's hold on its session, however the connection
    /// ended, atomically: if `connection_id` still holds it, the session is
    /// kept offline (`persistent`) or removed with its subscriptions, then
    /// routed as the store's mirrored routes say. Whether it held it.
    pub fn detach(&self, client: &ClientId, connection_id: u64, persistent: bool) -> bool {
        self.registry
            .detach(client, connection_id, persistent, &self.mirror)
    }

    /// Adds or replaces a session's subscription; the one it replaced.
    pub fn subscribe(&self, client: &ClientId, filter: &str, entry: SubEntry) -> Option<SubEntry> {
        self.registry.subscribe(client, filter, entry)
    }

    /// A ticket for a SUBSCRIBE just read from a socket: publishes matched
    /// from now on wait for it (see [`Hub::subscribes_settled`]). Return it
    /// (drop it) once its filters are in the index, or before the
    /// connection waits on anything.
    pub fn subscribe_arriving(&self) -> ArrivalTicket {
        self.arrivals.draw()
    }

    /// Waits, at most [`SUBSCRIBE_WAIT`], until the SUBSCRIBEs this edge
    /// has read so far are in the index, so that a publish matched next
    /// reaches them.
    pub async fn subscribes_settled(&self) {
        self.arrivals.settled(SUBSCRIBE_WAIT).await;
    }

    /// Removes a session's subscription; the one removed.
    pub fn unsubscribe(&self, client: &ClientId, filter: &str) -> Option<SubEntry> {
        self.registry.unsubscribe(client, filter)
    }

    /// Subscriptions in the index, all sessions together.
    pub fn subscription_count(&self) -> usize {
        self.registry.subscription_count()
    }

    /// How many subscriptions a session holds, and which of `filters` are
    /// among them.
    pub fn subscriptions_held<'a>(
        &self,
        client: &ClientId,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> (usize, Vec<bool>) {
        self.registry.held(client, filters)
    }

    /// Every mailbox, for shutdown.
    pub fn mailboxes(&self) -> Vec<Mailbox> {
        self.registry.mailboxes()
    }
}
