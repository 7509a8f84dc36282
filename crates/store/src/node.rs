//! One store node: its RocksDB directory, its Raft instance, its gRPC server,
//! its group-commit writer, and the ticker that advances the state machine's
//! time while it leads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::db::{Db, Reader, decode};
use crate::handover::{HandOverError, HandedOver, Leadership};
use crate::keys::{self, cf};
use crate::log_store::LogStore;
use crate::network::{Channels, Network};
use crate::proto::{
    self, admin_server::AdminServer, raft_server::RaftServer, store_server::StoreServer,
};
use crate::security::ClusterSecurity;
use crate::service::{AdminService, NodeHandles, RaftService, StoreService};
use crate::state_machine::StateMachine;
use crate::writer::{GroupCommit, Refusal, Refused, WriteError, WriteOutcome, Writer, now_ms};
use crate::{NodeId, Raft, StoreError};

/// How long a stopping node lets in-flight gRPC calls finish.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(1);

/// Applied entries a watcher may fall behind by before its stream is cut.
const APPLIED_EVENTS_BUFFER: usize = 4096;

/// How to start one store node.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This node's id in the group, unique in it.
    pub node_id: NodeId,
    /// The RocksDB directory and the snapshot files live here.
    pub data_dir: PathBuf,
    /// Where the gRPC server listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The address other nodes use to reach this one; the bound listen
    /// address when `None`.
    pub advertise: Option<String>,
    /// How often a leader sends heartbeats to its followers.
    pub heartbeat_interval: Duration,
    /// The range (min, max) a follower's election timeout is drawn from.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many entries since the last one; the
    /// log before it is then purged.
    pub snapshot_after_entries: u64,
    /// Whether and how writes are coalesced into Raft entries.
    pub group_commit: GroupCommit,
    /// How often the leader applies a Tick (lease, session, will and retained
    /// expiry); `None` disables the ticker (tests drive time themselves).
    pub tick_interval: Option<Duration>,
    /// Mutual TLS on the gRPC server and on calls to peers, and the admin
    /// token of membership changes; neither by default.
    pub security: ClusterSecurity,
    /// Writes one edge's `Submit` stream may have waiting for their commit;
    /// at the limit the stream is not read until one completes, so a flood
    /// holds its sender back instead of queuing here without bound.
    pub max_submit_in_flight: usize,
}

impl StoreConfig {
    /// The defaults for node `node_id`: 100 ms heartbeats, a 400-800 ms
    /// election timeout, a snapshot every 10,000 entries, a Tick every 500 ms.
    pub fn new(node_id: NodeId, data_dir: PathBuf, listen: SocketAddr) -> Self {
        StoreConfig {
            node_id,
            data_dir,
            listen,
            advertise: None,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_after_entries: 10_000,
            group_commit: GroupCommit::default(),
            tick_interval: Some(Duration::from_millis(500)),
            security: ClusterSecurity::default(),
            max_submit_in_flight: DEFAULT_MAX_SUBMIT_IN_FLIGHT,
        }
    }
}

/// The default of [`StoreConfig::max_submit_in_flight`]: twice what one
/// Raft entry carries at most, so that group commit always has a full next
/// entry queued while the previous one commits.
pub const DEFAULT_MAX_SUBMIT_IN_FLIGHT: usize = 8192;

/// What a shutdown stops.
struct Stopping {
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
    ticker: Option<JoinHandle<()>>,
    leader_gauges: JoinHandle<()>,
}

/// A running store node: Raft, its database, its gRPC server and its tasks.
pub struct StoreNode {
    node_id: NodeId,
    address: String,
    raft: Raft,
    db: Arc<Db>,
    writer: Writer,
    applied: broadcast::Sender<Arc<crate::state_machine::Applied>>,
    /// Taken by the first shutdown.
    stopping: std::sync::Mutex<Option<Stopping>>,
    snapshots_installed: Arc<AtomicU64>,
    channels: Channels,
    handles: NodeHandles,
}

impl std::fmt::Debug for StoreNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreNode")
            .field("node_id", &self.node_id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl StoreNode {
    /// Opens the data directory (creating it on first start), starts Raft from
    /// what is on disk, and serves gRPC. A new node is not part of any group
    /// until it is initialized or added by a leader.
    pub async fn start(config: StoreConfig) -> Result<StoreNode, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let db = Db::open(&config.data_dir.join("rocksdb"))?;
        let log_store = LogStore::new(db.clone())?;
        let (applied, _) = broadcast::channel(APPLIED_EVENTS_BUFFER);
        let state_machine = StateMachine::new(
            db.clone(),
            config.data_dir.join("snapshots"),
            applied.clone(),
        )?;
        let snapshots_installed = state_machine.snapshots_installed();
        // Peers see calls come from this node's own address (unless it
        // listens on all of them).
        let source = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
        let channels = Channels::new(source, config.security.clone());

        let raft_config = Config {
            cluster_name: "rookery-store".into(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min: millis(config.election_timeout.0),
            election_timeout_max: millis(config.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.snapshot_after_entries / 10,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;

        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(channels.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;

        let listener = TcpListener::bind(config.listen).await?;
        let bound = listener.local_addr()?;
        let address = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let writer = Writer::spawn(raft.clone(), config.group_commit);
        let leadership = Arc::new(Leadership::default());
        tokio::spawn(leadership.clone().follow(raft.clone()));
        let handles = NodeHandles {
            raft: raft.clone(),
            db: db.clone(),
            writer: writer.clone(),
            channels: channels.clone(),
            applied: applied.clone(),
            leadership,
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        let (stop_server, stopped) = oneshot::channel::<()>();
        // With TLS, a peer without a certificate signed by the cluster CA is
        // refused in the handshake, before any service sees a request.
        let router = config
            .security
            .server()
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .tcp_nodelay(true)
            .add_service(RaftServer::new(RaftService::new(raft.clone())))
            .add_service(StoreServer::new(StoreService::new(
                handles.clone(),
                config.max_submit_in_flight,
            )))
            .add_service(AdminServer::new(AdminService::new(
                handles.clone(),
                config.node_id,
                address.clone(),
            )));
        let incoming = TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(%error, "store gRPC server failed");
            }
        });
        let ticker = config.tick_interval.map(|interval| {
            tokio::spawn(tick_while_leading(
                raft.clone(),
                db.clone(),
                writer.clone(),
                interval,
            ))
        });
        let leader_gauges = tokio::spawn(crate::report::report(
            raft.clone(),
            db.clone(),
            config.data_dir.join("snapshots"),
            config.election_timeout.1,
        ));
        tracing::info!(
            node_id = config.node_id,
            %address,
            tls = config.security.tls.is_some(),
            "store node started"
        );
        Ok(StoreNode {
            node_id: config.node_id,
            address,
            raft,
            db,
            writer,
            applied,
            stopping: std::sync::Mutex::new(Some(Stopping {
                stop_server,
                server,
                ticker,
                leader_gauges,
            })),
            snapshots_installed,
            channels,
            handles,
        })
    }

    /// This node's id in the group.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address other nodes and edges reach this node's gRPC server at.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// This node's Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The leader this node knows of: its id and store address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())?;
        Some((leader, address))
    }

    /// gRPC channels to other store nodes, shared with Raft.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Makes this node the single voter of a new group (the embedded
    /// default). Refused if the node already belongs to a group.
    pub async fn initialize_single(&self) -> Result<(), StoreError> {
        let members = BTreeMap::from([(self.node_id, BasicNode::new(&self.address))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    /// Writes commands through this node's group-commit writer (in process,
    /// without gRPC). Refused (`NotProposed`) on a follower.
    pub async fn write(&self, commands: Vec<proto::Command>) -> Result<WriteOutcome, WriteError> {
        self.writer.write(commands).await
    }

    /// Queues a write now (see `Writer::submit`: writes commit in the order
    /// they were submitted) and returns what resolves to its outcome.
    pub fn submit(
        &self,
        commands: Vec<proto::Command>,
    ) -> impl Future<Output = Result<WriteOutcome, WriteError>> + Send + 'static {
        self.writer.submit(commands)
    }

    /// Queues a write now, as [`StoreNode::submit`] does, unless this node
    /// does not take writes now (it does not lead, or hands over): then the
    /// commands come back at once, never proposed.
    pub fn try_submit(
        &self,
        commands: Vec<proto::Command>,
    ) -> Result<impl Future<Output = Result<WriteOutcome, WriteError>> + Send + 'static, Refused>
    {
        self.writer.try_submit(commands)
    }

    /// Why this node would refuse a write now, if it would.
    pub fn refusal(&self) -> Option<Refusal> {
        self.writer.refusal()
    }

    /// Hands this node's leadership to voter `to` (`None`: the one furthest
    /// along the log) within `within`; see [`crate::handover`]. An operator
    /// moves the leadership this way; the node goes on as a follower.
    pub async fn hand_over(
        &self,
        to: Option<NodeId>,
        within: Duration,
    ) -> Result<HandedOver, HandOverError> {
        crate::handover::hand_over(&self.handles, to, within).await
    }

    /// Prepares a planned stop: the node takes no write from now on (edges
    /// send theirs to the next leader), lets those it took commit and, if it
    /// leads, hands the leadership to another voter, all within `within`.
    /// `Ok(None)` when it did not lead (or was the only voter).
    pub async fn drain(&self, within: Duration) -> Result<Option<HandedOver>, HandOverError> {
        self.writer.close();
        let leads = self.raft.metrics().borrow().state.is_leader();
        if leads {
            let handed = self.hand_over(None, within).await;
            self.end_streams();
            match handed {
                Ok(handed) => return Ok(Some(handed)),
                // Alone: nobody to hand over to; what it took still commits.
                Err(HandOverError::NoOtherVoter) => {}
                Err(error) => return Err(error),
            }
        }
        self.end_streams();
        if tokio::time::timeout(within, self.writer.settled())
            .await
            .is_err()
        {
            return Err(HandOverError::Unsettled(within));
        }
        Ok(None)
    }

    /// Ends the node's event streams (`Follow`, `WatchRoutes`,
    /// `WatchEdge`): their edges follow another store node.
    fn end_streams(&self) {
        self.handles.stopping.send_replace(true);
    }

    /// Reads from this node's applied state without a leadership check.
    pub fn local_db(&self) -> &Db {
        &self.db
    }

    /// Snapshots received from a leader and installed since this start.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    /// A feed of what each entry applied on this node changed, from now on.
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<crate::state_machine::Applied>> {
        self.applied.subscribe()
    }

    /// Stops serving, then stops Raft. Whatever still holds the node gets
    /// errors from then on; a second call does nothing.
    pub async fn shutdown(&self) {
        let Some(mut stopping) = self
            .stopping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        if let Some(ticker) = stopping.ticker.take() {
            ticker.abort();
        }
        stopping.leader_gauges.abort();
        self.end_streams();
        let _ = stopping.stop_server.send(());
        // Open streams (watches) would hold a graceful stop forever.
        if tokio::time::timeout(SERVER_STOP_GRACE, &mut stopping.server)
            .await
            .is_err()
        {
            stopping.server.abort();
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Advances the state machine's clock while this node leads: lease, session,
/// will and retained-message expiry all happen in the Tick command.
async fn tick_while_leading(raft: Raft, db: Arc<Db>, writer: Writer, interval: Duration) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The term this node leads in, and when it took office.
    let mut office: Option<(u64, u64)> = None;
    loop {
        timer.tick().await;
        let (leading, term) = {
            let metrics = raft.metrics().borrow().clone();
            (
                metrics.current_leader == Some(metrics.id),
                metrics.current_term,
            )
        };
        if !leading {
            office = None;
            continue;
        }
        let leader_since_ms = match office {
            Some((in_term, since)) if in_term == term => since,
            _ => {
                let since = now_ms();
                office = Some((term, since));
                since
            }
        };
        // An idle store should not write (and fsync) a Tick twice a second
        // forever: propose one only when the leader's state has something due.
        match tick_due(&db, now_ms(), leader_since_ms) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(error) => tracing::warn!(%error, "reading what a tick would do"),
        }
        let tick = proto::Command {
            kind: Some(proto::command::Kind::Tick(proto::Tick { leader_since_ms })),
        };
        if let Err(error) = writer.write(vec![tick]).await {
            tracing::debug!(%error, "tick not committed");
        }
    }
}

/// Whether a Tick at `now_ms` would change anything: a timer is due, an edge
/// lease has lapsed, or a due will waits for an edge.
fn tick_due(db: &Db, now_ms: u64, leader_since_ms: u64) -> Result<bool, StoreError> {
    let first_timer = db.scan_range(cf::TIMERS, b"", None, 1)?;
    if first_timer
        .first()
        .and_then(|(key, _)| keys::parse_timer(key))
        .is_some_and(|(at, _, _)| at <= now_ms)
    {
        return Ok(true);
    }
    for (_, value) in db.scan_range(cf::EDGES, b"", None, usize::MAX)? {
        let edge: proto::Edge = decode(cf::EDGES, &value)?;
        if crate::machine::lease_lapsed(&edge, now_ms, leader_since_ms) {
            return Ok(true);
        }
    }
    for (_, value) in db.scan_range(cf::WILLS, b"", None, usize::MAX)? {
        let will: proto::PendingWill = decode(cf::WILLS, &value)?;
        if will.assigned_edge_id.is_empty() && will.fire_at_ms <= now_ms {
            return Ok(true);
        }
    }
    Ok(false)
}
