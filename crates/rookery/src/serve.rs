//! `rookery serve`: the embedded store and the edge in one process.
//!
//! Start order: the HTTP listener (metrics, probes), store node (forming a single-voter group
//! on a new data directory, resuming on an old one), wait for the store to
//! lead, then the broker's listeners. Stop order, on SIGTERM or SIGINT, all
//! within `broker.shutdown_grace_s` (a drain): readiness fails at once; the
//! edge stops accepting, sends its clients away and gives up its lease; the
//! store takes no more writes and, if it leads, hands its leadership to
//! another voter; then everything stops and the process exits 0.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rookery_broker::Broker;
use rookery_cluster::{Access, Peers};
use rookery_store::{NodeId, StoreNode};

use crate::config::{Config, Role};
use crate::health::Health;
use crate::http::{HttpServer, HttpState};

/// How long a store may take to elect itself leader of its own group.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Exit code of a second signal that cuts shutdown short.
const FORCED_EXIT: i32 = 1;

/// Why the node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve HTTP (metrics, probes, admin API) on {address}: {message}")]
    Http {
        address: std::net::SocketAddr,
        message: String,
    },
    #[error("the http.admin_token_file: {0}")]
    HttpToken(rookery_store::SecurityError),
    #[error("the store failed and cannot go on: {0}")]
    StoreFailed(String),
    #[error("cannot start the store in {} (store.listen {listen}): {message}", data_dir.display())]
    StoreStart {
        data_dir: PathBuf,
        listen: std::net::SocketAddr,
        message: String,
    },
    #[error("the store group: {0}")]
    StoreGroup(String),
    #[error("cannot start the broker: {0}")]
    Broker(String),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("the cluster's TLS or admin token: {0}")]
    Security(#[from] rookery_store::SecurityError),
}

/// Runs until SIGTERM or SIGINT, then shuts down in order. On SIGHUP the
/// configuration is read again with `reload` and what can change without
/// a restart takes effect.
pub async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, crate::config::ConfigError>,
) -> Result<(), ServeError> {
    // Before anything binds: a signal during start-up is then seen once the
    // node is up, and stops it in order, instead of killing it half-started.
    let mut signals = Signals::new().map_err(ServeError::Signals)?;

    // Read once: every cluster port and client of this node uses it.
    let security = config.cluster_security()?;

    let health = Health::new();
    let api = crate::http::api::ApiState::new(
        config.has_role(Role::Store),
        config.cluster.seeds.clone(),
        security.clone(),
        config
            .cluster
            .forward_listen
            .0
            .map(|address| address.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    let http = match config.http.listen.0 {
        Some(address) => Some(start_http(address, &config, health.clone(), api.clone()).await?),
        None => None,
    };

    let store = if config.has_role(Role::Store) {
        let mut store_config = config.store_config();
        store_config.security = security.clone();
        let store = StoreNode::start(store_config.clone())
            .await
            .map_err(|error| ServeError::StoreStart {
                data_dir: store_config.data_dir.clone(),
                listen: store_config.listen,
                message: error.to_string(),
            })?;
        if let Err(error) = form_or_resume_group(&store, &config).await {
            store.shutdown().await;
            return Err(error);
        }
        let store = Arc::new(store);
        health.watch_store(&store);
        api.attach_store(&store);
        Some(store)
    } else {
        None
    };

    let broker = if config.has_role(Role::Edge) {
        let access = match &store {
            Some(node) => Access::Replica(node.clone()),
            // An edge-only node: the store nodes its seeds name, called
            // from the address it forwards on.
            None => Access::Peers(Arc::new(Peers::new(
                config.cluster.seeds.clone(),
                config
                    .cluster
                    .forward_listen
                    .0
                    .map(|address| address.ip())
                    .filter(|ip| !ip.is_unspecified()),
                security.clone(),
            ))),
        };
        let mut options = config.cluster_options();
        options.security = security.clone();
        let started = Broker::start(config.broker.clone(), access, options).await;
        match started {
            Ok(broker) => Some(broker),
            Err(error) => {
                if let Some(store) = store {
                    store.shutdown().await;
                }
                return Err(ServeError::Broker(error.to_string()));
            }
        }
    } else {
        None
    };
    for (listener, address) in broker.iter().flat_map(Broker::local_addrs) {
        tracing::info!(listener = %listener, address = %address, "listener ready");
    }
    if let Some(broker) = &broker {
        health.watch_edge(broker.probe());
        api.attach_edge(broker.inspector());
    }
    health.started();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = config.node_id,
        edge_id = %config.broker.edge_id,
        "rookery ready"
    );

    let stopped = loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                "SIGHUP" => reload_settings(broker.as_ref(), &reload),
                signal => break Ok(signal),
            },
            why = store_failure(store.as_deref()) => break Err(why),
        }
    };
    let signal = match stopped {
        Ok(signal) => signal,
        Err(why) => {
            // Nothing can be written any more: every client would be
            // refused. Exiting non-zero lets the orchestrator restart the
            // node, which recovers once the cause (a full disk) is gone.
            health.fail(format!("the store stopped: {why}"));
            tracing::error!(%why, "the store's Raft core stopped; exiting so that the node is restarted");
            if let Some(broker) = broker {
                broker.shutdown().await;
            }
            if let Some(store) = store {
                store.shutdown().await;
            }
            return Err(ServeError::StoreFailed(why));
        }
    };
    // Readiness fails first: load balancers stop sending clients here.
    health.begin_drain();
    let grace = Duration::from_secs(config.broker.shutdown_grace_s);
    tracing::info!(
        signal,
        grace_s = grace.as_secs(),
        "draining; a second signal exits at once"
    );
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "second signal: exiting without finishing shutdown");
        std::process::exit(FORCED_EXIT);
    });
    drain(broker, store, std::time::Instant::now(), grace).await;
    if let Some(http) = http {
        http.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A planned stop, within `grace` of `started`: the edge first (its
/// clients go, their sessions' last writes and the lease's release reach
/// the store), then the store (no more writes; a leader hands over), then
/// both stop. The edge leaves the store a part of the grace period, so
/// that clients that do not go cannot keep the leadership from moving.
async fn drain(
    mut broker: Option<Broker>,
    store: Option<Arc<StoreNode>>,
    started: std::time::Instant,
    grace: Duration,
) {
    let deadline = started + grace;
    let store_share = (grace / 4).min(Duration::from_secs(3));
    if let Some(broker) = broker.as_mut() {
        let drained = broker.drain(deadline - store_share).await;
        if drained.left > 0 {
            tracing::warn!(
                clients = drained.clients,
                left = drained.left,
                "the grace period ended before every client had gone"
            );
        }
        tracing::info!(
            clients = drained.clients,
            lease_released = drained.lease_released,
            took_ms = drained.took.as_millis() as u64,
            "edge drained"
        );
    }
    if let Some(store) = &store {
        let within = deadline.saturating_duration_since(std::time::Instant::now());
        match store.drain(within).await {
            Ok(Some(handed)) => tracing::info!(
                to = handed.leader_id,
                term = handed.term,
                took_ms = handed.took.as_millis() as u64,
                "store leadership handed over"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %error,
                "the store leadership was not handed over: the other voters elect a leader once \
                 their lease of this one lapses"
            ),
        }
    }
    if let Some(broker) = broker {
        broker.shutdown().await;
    }
    if let Some(store) = store {
        store.shutdown().await;
    }
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drained");
}

/// Installs the metrics recorder and serves metrics, probes and the admin
/// API at `address`.
async fn start_http(
    address: std::net::SocketAddr,
    config: &Config,
    health: Arc<Health>,
    api: crate::http::api::ApiState,
) -> Result<HttpServer, ServeError> {
    let token_file = config
        .http
        .admin_token_file
        .as_ref()
        .or(config.cluster.admin_token_file.as_ref());
    let admin_token = token_file
        .map(|path| rookery_store::AdminToken::read(path))
        .transpose()
        .map_err(ServeError::HttpToken)?;
    let metrics = crate::exporter::install(&config.metric_owners(), config.data_dir.clone())
        .map_err(|message| ServeError::Http { address, message })?;
    let state = HttpState {
        health,
        metrics,
        admin_token,
        loopback: address.ip().is_loopback(),
        api,
    };
    let server = HttpServer::start(address, state)
        .await
        .map_err(|error| ServeError::Http {
            address,
            message: error.to_string(),
        })?;
    tracing::info!(listener = "http", address = %server.address, "listener ready");
    Ok(server)
}

/// Resolves when the store replica's Raft core has stopped on its own (a
/// storage error such as a full disk), with why; never without a store.
async fn store_failure(store: Option<&StoreNode>) -> String {
    let Some(store) = store else {
        return std::future::pending().await;
    };
    let mut watch = store.raft().metrics();
    loop {
        if let Err(fatal) = &watch.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if watch.changed().await.is_err() {
            return "the Raft core ended".into();
        }
    }
}

/// Puts the node in its group: resumes the one its data directory belongs
/// to, forms a new one (alone, or with `cluster.bootstrap_expect` peers), or
/// joins a running one; then waits for the group to have a leader, so that
/// the first client is served rather than told the store is unavailable.
async fn form_or_resume_group(store: &StoreNode, config: &Config) -> Result<(), ServeError> {
    let within = Duration::from_secs(config.cluster.join_timeout_s);
    let joined = rookery_cluster::form_or_join(store, &config.discovery(), within)
        .await
        .map_err(|error| ServeError::StoreGroup(error.to_string()))?;
    // Before waiting for a leader: a node that moved hears from none until
    // the group records its new address.
    tokio::spawn(rookery_cluster::keep_address_current(
        rookery_cluster::OwnAddress {
            raft: store.raft().clone(),
            node_id: store.node_id(),
            address: store.address().to_owned(),
            channels: store.channels().clone(),
            seeds: config.cluster.seeds.clone(),
        },
    ));
    match joined {
        rookery_cluster::Joined::Resumed => {
            tracing::info!(data_dir = %config.data_dir.display(), "resuming the store group from its data directory")
        }
        rookery_cluster::Joined::Formed => {
            tracing::info!(data_dir = %config.data_dir.display(), "formed a new store group")
        }
        rookery_cluster::Joined::Added => tracing::info!("joined a running store group"),
    }

    // The membership the node loaded (or was just given) names its voters.
    let raft = store.raft();
    let node_id = store.node_id();
    let mut watch = raft.metrics();
    let _ = tokio::time::timeout(
        LEADER_WAIT,
        watch.wait_for(|m| {
            m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        }),
    )
    .await;
    let (voters, member) = {
        let metrics = watch.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        (voters, membership.get_node(&node_id).is_some())
    };
    if !member {
        return Err(ServeError::StoreGroup(format!(
            "{} belongs to a group whose voters are {voters:?}, and this node is {node_id}; \
             start it with the node id its data directory was created with (--node-id)",
            config.data_dir.display()
        )));
    }

    // Alone, this node must lead (a vote it loaded may still name a leader
    // from before the restart); in a group, any leader will do.
    let alone = voters.len() == 1 && voters.contains(&node_id);
    let elected = tokio::time::timeout(
        LEADER_WAIT,
        watch.wait_for(|m| {
            if alone {
                m.current_leader == Some(node_id) && m.state.is_leader()
            } else {
                m.current_leader.is_some()
            }
        }),
    )
    .await
    .is_ok_and(|result| result.is_ok());
    if elected {
        return Ok(());
    }
    if alone {
        return Err(ServeError::StoreGroup(format!(
            "this node is the group's only voter but did not become leader within {LEADER_WAIT:?}"
        )));
    }
    // Other voters may still be starting; the broker waits for the store
    // per request.
    tracing::warn!(?voters, "no store leader yet; starting the broker anyway");
    Ok(())
}

/// SIGHUP: the password, SCRAM, ACL and JWT files and the TLS listeners'
/// certificates are read again (also from a changed `[broker.auth]`). A reload that fails keeps what is in
/// force and says why; no connection is dropped either way.
fn reload_settings(
    broker: Option<&Broker>,
    reload: &impl Fn() -> Result<Config, crate::config::ConfigError>,
) {
    let config = match reload() {
        Ok(config) => config,
        Err(error) => {
            metrics::counter!("rookery_reloads_total", "result" => "failed").increment(1);
            tracing::error!(%error, "reload failed: the configuration does not load; nothing changed");
            return;
        }
    };
    if let Some(broker) = broker {
        if let Err(error) = broker.reload_auth(&config.broker.auth) {
            metrics::counter!("rookery_reloads_total", "result" => "failed").increment(1);
            tracing::error!(%error, "reload failed: the auth policy in force stays");
            return;
        }
        if let Err(error) = broker.reload_certificates(&config.broker.listeners) {
            metrics::counter!("rookery_reloads_total", "result" => "failed").increment(1);
            tracing::error!(%error, "reload failed: the listeners' certificates in force stay");
            return;
        }
    }
    metrics::counter!("rookery_reloads_total", "result" => "ok").increment(1);
    tracing::info!("reloaded: passwords, ACL, JWT keys and listener certificates");
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, as one stream.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// The name of the next signal received.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
