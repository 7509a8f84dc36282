//! The running edge: its listeners, the task that follows the store's
//! notifications, the lease that tells the store this edge is alive, and
//! `$SYS`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_codec::{ByteString, MessageProperties, QoS, ReasonCode};
use rookery_store::proto::{self, command::Kind, edge_event};
use rookery_store::writer::now_ms;
use tokio::task::JoinHandle;

use crate::auth::{Gatekeeper, ListenerAuth};
use crate::config::{BrokerConfig, ListenerConfig};
use crate::hub::Hub;
use crate::message::Message;
use crate::store::{Store, StoreEvent, StoreEvents, StoreUnavailable};
use crate::transport::{
    ConnectionLimits, Listener, ListenerOptions, TlsCertificates, TransportError,
};

/// How long the store keeps this edge's clients after its last renewal.
pub(crate) const LEASE: Duration = Duration::from_secs(10);
/// How long a start waits for the store to take its first reads and writes
/// (a node restarted after a crash may find an election under way).
const START_STORE_WAIT: Duration = Duration::from_secs(60);

/// Runs one of the start's store operations until it succeeds, for up to
/// [`START_STORE_WAIT`]: a node killed while it led the store group comes
/// back thinking it still leads, and its first write fails when it learns
/// of the new term; that is an election to wait out, not a reason to exit.
async fn starting<T, F, Fut>(what: &str, mut operation: F) -> Result<T, StoreUnavailable>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreUnavailable>>,
{
    let give_up = tokio::time::Instant::now() + START_STORE_WAIT;
    loop {
        match operation().await {
            Err(error) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(%error, "the start could not {what} yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done => return done,
        }
    }
}

/// How long a shutdown without a drain first waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often a drain looks for connections that attached since it told
/// the others to go.
const DRAIN_LOOK_AGAIN: Duration = Duration::from_millis(20);
/// How long the forwarding service outlives a drain: other edges may still
/// forward a publish they matched before they applied this edge's last
/// routes' removal, and a QoS 1/2 publisher there waits for its answer.
const FORWARD_LINGER: Duration = Duration::from_millis(200);

/// Why the edge did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A client listener could not be bound or configured.
    #[error("listener: {0}")]
    Transport(#[from] TransportError),
    /// The store did not answer the edge's registration or loads.
    #[error(transparent)]
    Store(#[from] StoreUnavailable),
    /// The forwarding listener could not be bound.
    #[error("forwarding listener: {0}")]
    Forward(String),
    /// A file of `[broker.auth]` could not be loaded.
    #[error("[broker.auth]: {0}")]
    Auth(#[from] rookery_auth::LoadError),
}

/// How this edge takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where other edges forward publishes to this one; `None` for a node
    /// alone (nothing is forwarded to it).
    pub forward_listen: Option<SocketAddr>,
    /// The address other edges use, when not the bound one.
    pub forward_advertise: Option<String>,
    /// How long a store write may take before it fails (a store without a
    /// quorum must not hold a publisher forever).
    pub write_timeout: Duration,
    /// QoS 1/2 publishes are acknowledged only while the store's quorum was
    /// heard from within this bound (or answers a check).
    pub quorum_contact: Duration,
    /// Mutual TLS on the forwarding listener and on streams to other edges.
    pub security: rookery_store::ClusterSecurity,
    /// The bytes one other edge's forwarding link may hold.
    pub forward_queue_bytes: usize,
    /// Bytes of store writes this edge may have without an answer before
    /// the clients with writes outstanding stop being read; 0: no bound.
    pub max_write_bytes_in_flight: usize,
}

/// The default of [`ClusterOptions::max_write_bytes_in_flight`]: 64 MiB,
/// hundreds of thousands of small writes (group commit's best case) and
/// still 64 publishes of the largest default packet.
pub const DEFAULT_MAX_WRITE_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            forward_listen: None,
            forward_advertise: None,
            write_timeout: Duration::from_secs(5),
            quorum_contact: Duration::from_secs(1),
            security: rookery_store::ClusterSecurity::default(),
            forward_queue_bytes: rookery_cluster::forward::DEFAULT_QUEUE_BYTES,
            max_write_bytes_in_flight: DEFAULT_MAX_WRITE_BYTES_IN_FLIGHT,
        }
    }
}

/// A running edge. Dropping it without [`Broker::shutdown`] stops nothing
/// cleanly: the tasks end with the runtime.
#[derive(Debug)]
pub struct Broker {
    hub: Arc<Hub>,
    addrs: Vec<(String, SocketAddr)>,
    /// The TLS listeners' certificates, for reloads.
    certificates: Vec<TlsCertificates>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The forwarding service and the task that follows the store: they
    /// outlive a drain.
    background: Vec<JoinHandle<()>>,
    /// Renews the lease; ends when the edge drains.
    lease: JoinHandle<()>,
    /// Publishes `$SYS`; ends when the edge drains.
    sys: Option<JoinHandle<()>>,
    /// When the drain ended, once it has.
    drained_at: Option<Instant>,
    /// Whether other edges forward to this one.
    forwarding: bool,
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Clients connected when it began.
    pub clients: usize,
    /// Clients still connected when its deadline came (0 normally).
    pub left: u64,
    /// Whether the store took the lease's release (the store then ends, at
    /// its next tick, whatever sessions this edge still held).
    pub lease_released: bool,
    /// From its start to the last client gone and the lease released.
    pub took: Duration,
}

impl Broker {
    /// Loads the session state from the store, registers this edge and opens
    /// the listeners.
    pub async fn start(
        config: BrokerConfig,
        store: rookery_cluster::Access,
        cluster: ClusterOptions,
    ) -> Result<Broker, BrokerError> {
        // Each start is a new incarnation: the previous one's clients are
        // disconnected by the store when its lease lapses (wills fire,
        // expiry starts), as after a crash.
        let edge_id = format!("{}.{}", config.edge_id, now_ms());
        let gatekeeper = Arc::new(Gatekeeper::load(&config.auth)?);
        let config = Arc::new(config);
        let store = Store::new(
            store,
            cluster.write_timeout,
            cluster.quorum_contact,
            cluster.max_write_bytes_in_flight,
        );
        let (forward_listener, forward_address) = bind_forwarding(&cluster).await?;
        // Events first: nothing committed after the route table is read
        // below is missed.
        let events = starting("subscribe to store notifications", || {
            store.events(edge_id.clone())
        })
        .await?;
        starting("register the edge", || {
            store.write_one(register_edge(&edge_id, &forward_address, None, LEASE))
        })
        .await?;
        // Forwarding streams leave from the address the edge listens on
        // (not the advertised one, which may not be local).
        let forwarder = rookery_cluster::Forwarder::new(rookery_cluster::ForwardSettings {
            local_address: cluster
                .forward_listen
                .map(|address| address.ip())
                .filter(|ip| !ip.is_unspecified()),
            security: cluster.security.clone(),
            queue_bytes: cluster.forward_queue_bytes,
            lanes: rookery_cluster::forward::default_lanes(),
        });
        let hub = Arc::new(Hub::new(
            config.clone(),
            edge_id.clone(),
            forward_address.clone(),
            forwarder,
            store.clone(),
            gatekeeper,
        ));
        starting("read the route table", || hub.load(now_ms())).await?;

        // Bind every listener before starting anything that holds the store,
        // so a taken port fails the start cleanly.
        let options = ListenerOptions {
            handshake_timeout: Duration::from_secs(config.limits.connect_timeout_s.max(1)),
            max_packet_size: config.limits.max_packet_size,
            connections: ConnectionLimits::new(&config.limits),
        };
        let mut listeners = Vec::new();
        for listener_config in &config.listeners {
            hub.stats.register_listener(&listener_config.display_name());
            let auth = ListenerAuth::of(&config.auth, listener_config);
            if auth.anonymous_allowed && !listener_config.address.ip().is_loopback() {
                tracing::warn!(
                    listener = %listener_config.display_name(),
                    address = %listener_config.address,
                    "anonymous clients are allowed on a listener off loopback (allow_anonymous = true)"
                );
            }
            listeners.push((
                Listener::bind_with(listener_config, options.clone()).await?,
                auth,
            ));
        }

        let mut background = Vec::new();
        let forwarding = forward_listener.is_some();
        if let Some(listener) = forward_listener {
            // With TLS, a peer without a certificate of the cluster CA is
            // refused in the handshake, before any batch is read.
            let server = cluster
                .security
                .server()
                .map_err(|error| BrokerError::Forward(error.to_string()))?;
            tracing::info!(listener = "forward", address = %forward_address, tls = cluster.security.tls.is_some(), "listener ready");
            background.push(tokio::spawn(serve_forwarding(
                hub.clone(),
                server,
                listener,
            )));
        }
        background.push(tokio::spawn(follow_store(hub.clone(), events)));
        let lease = tokio::spawn(renew_lease(hub.clone()));
        background.push(tokio::spawn(report_gauges(hub.clone())));
        let sys = (config.sys_interval_s > 0).then(|| tokio::spawn(publish_sys(hub.clone())));

        let certificates = listeners
            .iter()
            .filter_map(|(listener, _)| listener.certificates())
            .collect();
        let (addrs, accept_tasks) = accept_connections(&hub, listeners);
        tracing::info!(edge_id, "broker started");
        Ok(Broker {
            hub,
            addrs,
            certificates,
            accept_tasks,
            background,
            lease,
            sys,
            drained_at: None,
            forwarding,
        })
    }

    /// A handle for the operations API: what this edge knows of its clients.
    pub fn inspector(&self) -> Inspector {
        Inspector {
            hub: Arc::downgrade(&self.hub),
        }
    }

    /// What the node's readiness probe asks of this edge.
    pub fn probe(&self) -> EdgeProbe {
        EdgeProbe {
            store: self.hub.store.clone(),
        }
    }

    /// Bound addresses, one per listener, in configuration order.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.addrs.clone()
    }

    /// Loads the password, SCRAM, ACL and JWT files of `auth` again, for
    /// new connections and for every later check of connected clients; on
    /// failure the policy in force stays and the error says why.
    /// Reads the certificate, key and client CA files of every TLS
    /// listener in `listeners` (matched by name) again; connections open
    /// keep theirs, new handshakes use the new ones. All are read before
    /// any is swapped: on failure nothing changes and the error says why.
    pub fn reload_certificates(&self, listeners: &[ListenerConfig]) -> Result<(), TransportError> {
        let mut loaded = Vec::new();
        for certificates in &self.certificates {
            let settings = listeners
                .iter()
                .find(|config| config.display_name() == certificates.listener())
                .and_then(|config| config.tls.as_ref());
            if let Some(settings) = settings {
                loaded.push((certificates, certificates.load(settings)?));
            }
        }
        for (certificates, new) in loaded {
            certificates.install(new);
        }
        Ok(())
    }

    pub fn reload_auth(
        &self,
        auth: &rookery_auth::AuthConfig,
    ) -> Result<(), rookery_auth::LoadError> {
        self.hub.gatekeeper.reload(auth)
    }

    /// Drains the edge for a planned stop, by `deadline`: the listeners stop
    /// accepting; every client is told (MQTT 5: DISCONNECT 0x8B Server
    /// shutting down, or 0x9C Use another server with the Server Reference
    /// `server_reference` when set; 3.x: the socket closes) once the
    /// publishes it sent are answered; each session records its end in the
    /// store (wills as for any close by the server); then the edge gives up
    /// its lease, so that the store ends at once what it still held. The
    /// forwarding service and the store's notifications go on until
    /// [`Broker::shutdown`].
    pub async fn drain(&mut self, deadline: Instant) -> Drained {
        let started = Instant::now();
        for task in &self.accept_tasks {
            task.abort();
        }
        if let Some(sys) = self.sys.take() {
            sys.abort();
        }
        let reason = if self.hub.config.server_reference.is_some() {
            ReasonCode::UseAnotherServer
        } else {
            ReasonCode::ServerShuttingDown
        };
        let mut told = std::collections::HashSet::new();
        let mut first = true;
        loop {
            // Again each round: a connection accepted before the listeners
            // closed may attach after the first round.
            for mailbox in self.hub.mailboxes() {
                if told.insert(mailbox.connection_id) {
                    mailbox.close(reason);
                }
            }
            if std::mem::take(&mut first) {
                tracing::info!(
                    clients = told.len(),
                    ?reason,
                    "draining: clients told to go"
                );
            }
            let connected = self.hub.stats.clients_connected.load(Ordering::Relaxed);
            if connected == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(
                DRAIN_LOOK_AGAIN.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        let left = self.hub.stats.clients_connected.load(Ordering::Relaxed);
        self.lease.abort();
        let release = register_edge(
            &self.hub.edge_id,
            &self.hub.forward_address,
            None,
            Duration::ZERO,
        );
        let released = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.hub.store.write_one(release),
        )
        .await;
        let lease_released = matches!(released, Ok(Ok(_)));
        if !lease_released {
            tracing::warn!(
                "the store did not take this edge's lease release: its sessions end when the \
                 lease lapses ({LEASE:?})"
            );
        }
        self.drained_at = Some(Instant::now());
        Drained {
            clients: told.len(),
            left,
            lease_released,
            took: started.elapsed(),
        }
    }

    /// Stops the edge: drains it first unless [`Broker::drain`] did (then
    /// within a few seconds), lets the forwarding service answer what other
    /// edges still send for a moment, and stops every task.
    pub async fn shutdown(mut self) {
        let drained_at = match self.drained_at {
            Some(at) => at,
            None => {
                self.drain(Instant::now() + SHUTDOWN_GRACE).await;
                Instant::now()
            }
        };
        if self.forwarding {
            tokio::time::sleep_until((drained_at + FORWARD_LINGER).into()).await;
        }
        for task in &self.background {
            task.abort();
        }
    }
}

/// A running edge's readiness, outliving neither the edge nor its shutdown
/// (it holds only the edge's store client).
#[derive(Debug, Clone)]
pub struct EdgeProbe {
    store: Store,
}

impl EdgeProbe {
    /// Whether the store's quorum is within reach: heard from within the
    /// quorum-contact bound, or answering a check now (bounded by the write
    /// timeout). The route table is loaded before the edge starts, and kept
    /// current from then on.
    pub async fn reaches_store_quorum(&self) -> bool {
        self.store.in_contact().await
    }
}

/// Receives what other edges forward to this one's sessions, checked as
/// this edge checks its own clients' publishes (`forwarded`).
struct ForwardSink(Arc<Hub>);

impl rookery_cluster::DeliverySink for ForwardSink {
    fn deliver(
        &self,
        messages: Vec<proto::Message>,
        deliveries: Vec<rookery_cluster::proto::Delivery>,
    ) -> Option<rookery_cluster::Holdback> {
        let deliveries = crate::forwarded::admit(&messages, deliveries, &self.0.config.limits);
        self.0.deliver_forwarded(messages, deliveries)
    }

    fn inspect(&self, client_id: &str) -> rookery_cluster::proto::InspectResponse {
        inspect(&self.0, client_id)
    }
}

/// What this edge knows of a client's connection (`rookery ctl clients
/// show`): nothing when the client has no connection here.
fn inspect(hub: &Hub, client_id: &str) -> rookery_cluster::proto::InspectResponse {
    let Some(session) = hub.session(client_id) else {
        return rookery_cluster::proto::InspectResponse::default();
    };
    let Some(mailbox) = session.mailbox else {
        return rookery_cluster::proto::InspectResponse::default();
    };
    let (in_flight, queued, stored) = mailbox.figures();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    rookery_cluster::proto::InspectResponse {
        online: true,
        epoch: session.epoch,
        in_flight: count(in_flight),
        queued: count(queued),
        stored: count(stored),
    }
}

/// A handle on a running edge for the operations API: what it knows of its
/// clients' connections. Cheap to clone; it keeps nothing alive (a stopped
/// edge lets its store go, and is then seen holding no client).
#[derive(Debug, Clone)]
pub struct Inspector {
    hub: std::sync::Weak<Hub>,
}

impl Inspector {
    /// This edge's id (its configured name and incarnation), while it runs.
    pub fn edge_id(&self) -> Option<String> {
        self.hub.upgrade().map(|hub| hub.edge_id.clone())
    }

    /// The client's connection on this edge, if it has one here.
    pub fn inspect(&self, client_id: &str) -> rookery_cluster::proto::InspectResponse {
        match self.hub.upgrade() {
            Some(hub) => inspect(&hub, client_id),
            None => rookery_cluster::proto::InspectResponse::default(),
        }
    }
}

async fn serve_forwarding(
    hub: Arc<Hub>,
    server: tonic::transport::Server,
    listener: tokio::net::TcpListener,
) {
    let service = rookery_cluster::forward::service(Arc::new(ForwardSink(hub)));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(error) = server
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(%error, "the forwarding service failed");
    }
}

/// Registers the edge (or renews its lease) for `lease`; a lease of zero
/// gives it up (the store's next tick ends what the edge still holds).
fn register_edge(
    edge_id: &str,
    address: &str,
    stats: Option<proto::EdgeStats>,
    lease: Duration,
) -> proto::Command {
    proto::Command {
        kind: Some(Kind::RegisterEdge(proto::RegisterEdge {
            edge_id: edge_id.to_owned(),
            address: address.to_owned(),
            stats,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        })),
    }
}

async fn renew_lease(hub: Arc<Hub>) {
    let mut interval = tokio::time::interval(LEASE / 4);
    interval.tick().await;
    loop {
        interval.tick().await;
        let stats = &hub.stats;
        let value = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let figures = proto::EdgeStats {
            clients_connected: value(&stats.clients_connected),
            messages_received: value(&stats.messages_received),
            messages_sent: value(&stats.messages_sent),
            bytes_received: value(&stats.bytes_received),
            bytes_sent: value(&stats.bytes_sent),
        };
        let renewal = register_edge(&hub.edge_id, &hub.forward_address, Some(figures), LEASE);
        match hub.store.write_one(renewal).await {
            Ok(proto::CommandResult {
                kind: Some(proto::command_result::Kind::EdgeRegistered(registered)),
            }) if registered.lapsed => release_connections(&hub),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "renewing the edge lease failed"),
        }
    }
}

/// The store let this edge's lease lapse (no renewal committed within it:
/// the edge was paused, or cut off, or no leader took its writes) and took
/// its sessions offline: their wills handed out, their expiry started, and
/// no notification about them sent here any more. Their connections would
/// get nothing while their store queues fill, so each is closed, and its
/// client connects again to own its session.
fn release_connections(hub: &Hub) {
    let mailboxes = hub.mailboxes();
    metrics::counter!("rookery_edge_lease_lapsed_total").increment(1);
    tracing::warn!(
        connections = mailboxes.len(),
        "the store let this edge's lease lapse and took its sessions offline; \
         closing their connections so that their clients connect again"
    );
    for mailbox in mailboxes {
        mailbox.release();
    }
}

/// Acts on what the store tells this edge, in commit order.
async fn follow_store(hub: Arc<Hub>, mut events: StoreEvents) {
    while let Some(event) = events.next().await {
        on_store_event(&hub, event).await;
    }
    tracing::debug!("the store stopped sending notifications");
}

/// Publishes a message that does not come from a connection (a will, `$SYS`):
/// routed like any other, stored where it must be.
pub(crate) async fn publish_internal(hub: &Hub, message: Arc<Message>, store_retained: bool) {
    let mut routes = hub.route(&message);
    match (message.retain, store_retained) {
        (true, true) => hub.retain_locally(&message),
        (true, false) => hub.retain(&message),
        (false, _) => {}
    }
    // `$SYS` is this node's own: its subscribers on other edges read theirs.
    if !message.topic.starts_with("$SYS/") {
        hub.forward(
            &message,
            std::mem::take(&mut routes.remote),
            false,
            0,
            &mut Vec::new(),
        );
    }
    let commands = hub.store_commands(
        &message,
        message.retain && store_retained,
        routes.durable,
        None,
    );
    if !commands.is_empty() {
        match hub.store.write(commands).await {
            Ok(results) => {
                hub.count_store_drops(&results);
                hub.retained_outcome(&message, &results);
            }
            Err(error) => {
                tracing::warn!(%error, topic = %message.topic, "storing a message failed")
            }
        }
    }
    // Wills and $SYS have no connection to pause.
    hub.deliver_local(routes.local, &mut Vec::new());
}

/// How often the gauges read from the hub are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Keeps the gauges that are read from the hub current: the subscription
/// index changes with every session that ends and every route mirrored
/// from another edge, not only with this edge's SUBSCRIBEs.
async fn report_gauges(hub: Arc<Hub>) {
    let mut interval = tokio::time::interval(GAUGES_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        hub.stats.set_subscriptions(hub.subscription_count());
    }
}

async fn publish_sys(hub: Arc<Hub>) {
    let started = Instant::now();
    let version = format!("rookery version {}", env!("CARGO_PKG_VERSION"));
    let mut interval = tokio::time::interval(Duration::from_secs(hub.config.sys_interval_s));
    loop {
        interval.tick().await;
        let stats = &hub.stats;
        let value =
            |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed).to_string();
        let topics = [
            ("$SYS/broker/version", version.clone()),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                value(&stats.clients_connected),
            ),
            (
                "$SYS/broker/messages/received",
                value(&stats.messages_received),
            ),
            ("$SYS/broker/messages/sent", value(&stats.messages_sent)),
            ("$SYS/broker/bytes/received", value(&stats.bytes_received)),
            ("$SYS/broker/bytes/sent", value(&stats.bytes_sent)),
            (
                "$SYS/broker/publish/messages/dropped",
                value(&stats.publish_dropped),
            ),
            (
                "$SYS/broker/retained messages/count",
                value(&stats.retained_messages),
            ),
            (
                "$SYS/broker/subscriptions/count",
                hub.subscription_count().to_string(),
            ),
        ];
        let mut topics: Vec<(String, String)> = topics
            .into_iter()
            .map(|(topic, payload)| (topic.to_owned(), payload))
            .collect();
        topics.extend(cluster_sys(&hub).await);
        for (topic, payload) in topics {
            let message = Arc::new(Message {
                topic: ByteString::from(topic.as_str()),
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                expires_at_ms: 0,
                origin: Arc::from(""),
            });
            // $SYS values are the broker's current ones: kept in memory, not
            // in the store.
            publish_internal(&hub, message, false).await;
        }
    }
}

/// The cluster as this node's store replica sees it, from the figures each
/// edge reports with its lease renewal: totals under `$SYS/cluster/`, and
/// each live edge's own under `$SYS/cluster/edges/{edge}/` (the same on
/// every node, a few seconds old).
async fn cluster_sys(hub: &Hub) -> Vec<(String, String)> {
    let edges = match hub.store.edges().await {
        Ok(edges) => edges,
        Err(error) => {
            tracing::debug!(%error, "reading the edge table for $SYS");
            return Vec::new();
        }
    };
    let now = now_ms();
    let live: Vec<&proto::Edge> = edges
        .iter()
        .filter(|edge| edge.lease_expires_at_ms > now)
        .collect();
    let figures = |stats: &proto::EdgeStats| {
        [
            ("clients/connected", stats.clients_connected),
            ("messages/received", stats.messages_received),
            ("messages/sent", stats.messages_sent),
            ("bytes/received", stats.bytes_received),
            ("bytes/sent", stats.bytes_sent),
        ]
    };
    let mut total = proto::EdgeStats::default();
    let mut topics = vec![(
        "$SYS/cluster/edges/count".to_owned(),
        live.len().to_string(),
    )];
    for edge in &live {
        let stats = edge.stats.unwrap_or_default();
        total.clients_connected += stats.clients_connected;
        total.messages_received += stats.messages_received;
        total.messages_sent += stats.messages_sent;
        total.bytes_received += stats.bytes_received;
        total.bytes_sent += stats.bytes_sent;
        // The configured name, without the incarnation suffix.
        let name = edge
            .edge_id
            .rsplit_once('.')
            .map_or(edge.edge_id.as_str(), |(name, _)| name);
        for (key, value) in figures(&stats) {
            topics.push((
                format!("$SYS/cluster/edges/{name}/{key}"),
                value.to_string(),
            ));
        }
    }
    for (key, value) in figures(&total) {
        topics.push((format!("$SYS/cluster/{key}"), value.to_string()));
    }
    topics
}

/// What to do with one store event.
pub(crate) async fn on_store_event(hub: &Arc<Hub>, event: StoreEvent) {
    match event {
        StoreEvent::Edge(edge_event::Kind::SessionTakenOver(taken)) => {
            // `taken.epoch` is the epoch that was taken over: the connection
            // holding it (or an older one) closes; a newer one stays.
            if let Some(session) = hub.session(&taken.client_id)
                && session.epoch <= taken.epoch
                && let Some(mailbox) = session.mailbox
            {
                mailbox.close(ReasonCode::SessionTakenOver);
            }
        }
        StoreEvent::Edge(edge_event::Kind::SessionKicked(kicked)) => {
            // As a takeover: the connection holding that epoch (or an older
            // one) closes; one that connected since stays.
            if let Some(session) = hub.session(&kicked.client_id)
                && session.epoch <= kicked.epoch
                && let Some(mailbox) = session.mailbox
            {
                tracing::info!(
                    client_id = kicked.client_id,
                    session_deleted = kicked.session_ended,
                    "an operator disconnects the client"
                );
                mailbox.close(ReasonCode::AdministrativeAction);
            }
        }
        StoreEvent::Edge(edge_event::Kind::MessagesQueued(queued)) => {
            if let Some(mailbox) = hub.session(&queued.client_id).and_then(|s| s.mailbox) {
                mailbox.notify_queued();
            }
        }
        StoreEvent::Edge(edge_event::Kind::WillDue(will)) => {
            // Behind the notifications: its store write waits out elections.
            tokio::spawn(crate::wills::publish_due(hub.clone(), will));
        }
        StoreEvent::Edge(edge_event::Kind::SharedCopiesDue(due)) => {
            tokio::spawn(crate::shared_handoff::hand_on(hub.clone(), due));
        }
        StoreEvent::RouteAdded(route) => hub.route_added(&route),
        StoreEvent::EdgeRegistered(edge) => hub.edge_registered(&edge),
        StoreEvent::RouteRemoved(route) => hub.route_removed(&route),
        StoreEvent::Retained(message) => {
            if let Some(message) = Message::from_proto(&message) {
                hub.retain(&Arc::new(message));
            }
        }
        StoreEvent::Lagged => {
            metrics::counter!("rookery_store_events_lagged_total").increment(1);
            tracing::warn!(
                "store notifications were missed; persistent sessions re-read their queues"
            );
            for mailbox in hub.mailboxes() {
                mailbox.notify_queued();
            }
            match hub.store.wills_handed_to(&hub.edge_id) {
                Ok(wills) => {
                    for will in wills {
                        tokio::spawn(crate::wills::publish_due(hub.clone(), will));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the wills handed to this edge failed")
                }
            }
            // Route and retained changes may be among what was missed.
            if let Err(error) = hub.reload(now_ms()).await {
                tracing::warn!(%error, "reading the route table again failed");
            }
        }
    }
}

/// Binds the forwarding listener, if configured, and the address other edges
/// are told to forward to (the advertised one, or the bound one).
async fn bind_forwarding(
    cluster: &ClusterOptions,
) -> Result<(Option<tokio::net::TcpListener>, String), BrokerError> {
    let Some(address) = cluster.forward_listen else {
        return Ok((None, String::new()));
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| BrokerError::Forward(format!("{address}: {error}")))?;
    let advertised = match &cluster.forward_advertise {
        Some(advertised) => advertised.clone(),
        None => listener
            .local_addr()
            .map_err(|error| BrokerError::Forward(error.to_string()))?
            .to_string(),
    };
    Ok((Some(listener), advertised))
}

/// Starts one accept loop per listener, each connection in a task of its
/// own; the bound addresses in configuration order, and the loops.
fn accept_connections(
    hub: &Arc<Hub>,
    listeners: Vec<(Listener, ListenerAuth)>,
) -> (Vec<(String, SocketAddr)>, Vec<JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut accept_tasks = Vec::new();
    for (mut listener, auth) in listeners {
        let name = listener.name().to_owned();
        let address = listener.local_addr();
        addrs.push((name.clone(), address));
        let hub = hub.clone();
        accept_tasks.push(tokio::spawn(async move {
            while let Some(accepted) = listener.accept().await {
                tokio::spawn(crate::connection::serve(hub.clone(), accepted, auth));
            }
        }));
        tracing::debug!(listener = %name, %address, anonymous = auth.anonymous_allowed, "listening");
    }
    (addrs, accept_tasks)
}
