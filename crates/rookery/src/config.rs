//! The node's configuration: one TOML document, layered with figment.
//!
//! Layers, lowest first: the defaults below, the TOML file (`--config`), the
//! environment (`RUST_LOG` for `log.level`, then `ROOKERY_<SECTION>__<KEY>`),
//! then the command-line flags (each flag's own variable such as
//! `ROOKERY_DATA_DIR` counts as the flag). The result is validated as a whole;
//! every problem is reported with the key that causes it.
//!
//! The `[broker]` section is [`rookery_broker::BrokerConfig`] itself, so the
//! file and the edge can never disagree about a field.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rookery_broker::{BrokerConfig, ListenerConfig, ListenerKind};
use rookery_store::writer::GroupCommit;
use rookery_store::{AdminToken, ClusterSecurity, ClusterTls, SecurityError, StoreConfig};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::cli::ServeArgs;

/// The prefix of every environment variable Rookery reads.
pub const ENV_PREFIX: &str = "ROOKERY_";

/// Environment variables that belong to a command-line flag (read by clap,
/// without the prefix). The section variables (`ROOKERY_LOG__LEVEL`) never
/// collide with them: sections are separated by a double underscore.
pub const FLAG_VARIABLES: &[&str] = &[
    "CONFIG",
    "LISTEN",
    "DATA_DIR",
    "NODE_ID",
    "ROLES",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "METRICS_LISTEN",
    "HTTP_LISTEN",
    "STORE_LISTEN",
];

/// The sections an environment variable may set (`ROOKERY_BROKER__...`).
/// Other `ROOKERY_*` variables are ignored, not rejected: Kubernetes gives
/// every pod `ROOKERY_SERVICE_HOST`, `ROOKERY_PORT`, ... for a service named
/// `rookery`.
const ENV_SECTIONS: &[&str] = &["log", "http", "metrics", "store", "cluster", "broker"];

/// The largest MQTT packet: a 5-byte fixed header and the largest remaining
/// length, 268,435,455 (MQTT 5.0, 1.5.5).
const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455 + 5;

/// The smallest byte cap of a forwarding link: a few small publishes.
const MIN_FORWARD_QUEUE_BYTES: u64 = 64 * 1024;

/// Everything `rookery serve` runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id in the store's Raft group.
    pub node_id: u64,
    /// The store's RocksDB database and snapshots live here.
    pub data_dir: PathBuf,
    /// What this node runs: a store replica, an edge, or both (the default).
    pub roles: Vec<Role>,
    pub log: LogConfig,
    /// The node's HTTP listener: metrics, probes and the admin API.
    pub http: HttpConfig,
    /// The old name of `[http] listen`, still read.
    pub metrics: MetricsConfig,
    pub store: StoreSection,
    /// How the node finds and joins its cluster.
    pub cluster: ClusterSection,
    /// The edge: listeners, limits, `$SYS`.
    pub broker: BrokerConfig,
}

/// A part a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A replica of the session store (a Raft voter or learner).
    Store,
    /// MQTT listeners and routing.
    Edge,
}

/// Peers, group formation and edge-to-edge forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Store addresses (`host:port`) of the other store nodes; a DNS name
    /// resolving to several addresses (a Kubernetes headless service) names
    /// them all. Empty: a node alone.
    pub seeds: Vec<String>,
    /// A new group forms once this many store nodes see each other (the one
    /// with the lowest node id initializes it). Give every initial voter the
    /// same value: the number of initial voters.
    pub bootstrap_expect: usize,
    /// Join a running group as a voter (true) or stay a learner.
    pub voter: bool,
    /// How long a new node looks for its group before giving up.
    pub join_timeout_s: u64,
    /// Where other edges forward publishes to this one (gRPC), or `off`
    /// for a node alone.
    pub forward_listen: OptionalAddr,
    /// The forwarding address other edges use, when not the bound one.
    pub forward_advertise: Option<String>,
    /// How long a store write may take; a QoS 1/2 publish whose write does
    /// not commit in time (no quorum) is refused with a reason code.
    pub write_timeout_ms: u64,
    /// An edge acknowledges QoS 1/2 publishes only while it has heard from
    /// the store's quorum within this bound (or a check answers at once).
    pub quorum_contact_ms: u64,
    /// The bytes the forwarding link to one other edge may hold (queued,
    /// or sent and not yet acknowledged); beyond it QoS 1/2 publishes are
    /// not acknowledged and QoS 0 ones dropped.
    pub forward_queue_bytes: u64,
    /// A file holding the secret that membership changes (joins, `rookery
    /// cluster remove`) carry; without it they are taken from loopback
    /// addresses only.
    pub admin_token_file: Option<PathBuf>,
    /// Mutual TLS on the store's gRPC port and the forwarding port, and on
    /// every call to them; plaintext when absent.
    pub tls: Option<ClusterTlsSection>,
    /// Bytes of store writes an edge may have without an answer yet; at
    /// the limit, clients with writes outstanding are not read until it
    /// falls (backpressure). 0: no bound.
    pub max_write_bytes_in_flight: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            seeds: Vec::new(),
            bootstrap_expect: 1,
            voter: true,
            join_timeout_s: 300,
            forward_listen: OptionalAddr(None),
            forward_advertise: None,
            write_timeout_ms: 5000,
            quorum_contact_ms: 1000,
            forward_queue_bytes: rookery_cluster::forward::DEFAULT_QUEUE_BYTES as u64,
            admin_token_file: None,
            tls: None,
            max_write_bytes_in_flight: rookery_broker::DEFAULT_MAX_WRITE_BYTES_IN_FLIGHT,
        }
    }
}

/// `[cluster.tls]`: the cluster CA and this node's certificate and key
/// (PEM). Every node certificate carries `server_name` as a DNS name, and
/// can serve and be a client (extended key usages serverAuth and
/// clientAuth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsSection {
    /// The CA that signs every node's certificate; peers must chain to it.
    pub ca_file: PathBuf,
    /// This node's certificate (and any intermediates after it).
    pub cert_file: PathBuf,
    /// This node's private key.
    pub key_file: PathBuf,
    /// The name peers are verified against, whatever address they are
    /// reached at.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    rookery_store::security::DEFAULT_SERVER_NAME.to_owned()
}

impl Default for Config {
    fn default() -> Self {
        let node_id = 1;
        Config {
            node_id,
            data_dir: PathBuf::from("./rookery-data"),
            roles: vec![Role::Store, Role::Edge],
            log: LogConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            store: StoreSection::default(),
            cluster: ClusterSection::default(),
            broker: BrokerConfig {
                edge_id: default_edge_id(node_id),
                ..BrokerConfig::default()
            },
        }
    }
}

/// The edge id used when `broker.edge_id` is not set.
fn default_edge_id(node_id: u64) -> String {
    format!("rookery-{node_id}")
}

/// `info`, except openraft's, whose info lines narrate every election and
/// shutdown step.
pub const DEFAULT_LOG_LEVEL: &str = "info,openraft=warn";

/// Where logs go (always stderr) and how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing `EnvFilter`: `info`, `debug`, `info,rookery_store=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (`... INFO rookery: listener ready listener=tcp ...`).
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The node's HTTP listener: `/metrics`, the probes `/healthz` and
/// `/readyz`, and the admin API under `/api/v1/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the HTTP listener binds, or `off`.
    pub listen: OptionalAddr,
    /// The bearer token the admin API requires when `listen` is off
    /// loopback (without one, the API refuses every request there).
    /// Unset: `cluster.admin_token_file`, when that is set.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: OptionalAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9883)))),
            admin_token_file: None,
        }
    }
}

/// `[metrics] listen`: the name `[http] listen` had before the listener
/// also served probes and the admin API. Kept so that old files work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<OptionalAddr>,
}

/// A socket address that can be turned off: written as `127.0.0.1:9883` or
/// `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(OptionalAddr(None));
        }
        s.parse::<SocketAddr>().map(|addr| OptionalAddr(Some(addr))).map_err(|_| {
            format!("`{s}` is neither a socket address (like 127.0.0.1:9883 or [::1]:9883) nor `off`")
        })
    }
}

impl TryFrom<String> for OptionalAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<OptionalAddr> for String {
    fn from(addr: OptionalAddr) -> String {
        addr.to_string()
    }
}

impl fmt::Display for OptionalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// The embedded store: its gRPC server, Raft timing and group commit. The
/// defaults are [`StoreConfig::new`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Where the store's gRPC server (Raft, session API, admin) listens.
    pub listen: SocketAddr,
    /// The address other nodes reach this one at; the bound `listen`
    /// address when unset.
    pub advertise: Option<String>,
    /// Coalesce concurrent writes into one Raft entry.
    pub group_commit: bool,
    /// With group commit, how many entries may be committing at once.
    pub group_commit_in_flight: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is taken after this many log entries; the log before it
    /// is then purged.
    pub snapshot_after_entries: u64,
    /// How often the leader checks for expired leases, sessions, wills and
    /// retained messages.
    pub tick_interval_ms: u64,
    /// Writes one edge's write stream may have waiting to commit on this
    /// node; at the limit the stream is not read until one commits.
    pub max_submit_in_flight: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], 7883));
        let store = StoreConfig::new(1, PathBuf::new(), listen);
        let (group_commit, group_commit_in_flight) = match store.group_commit {
            GroupCommit::On { in_flight } => (true, in_flight),
            GroupCommit::Off => (false, 2),
        };
        StoreSection {
            listen,
            advertise: store.advertise,
            group_commit,
            group_commit_in_flight,
            heartbeat_interval_ms: millis(store.heartbeat_interval),
            election_timeout_min_ms: millis(store.election_timeout.0),
            election_timeout_max_ms: millis(store.election_timeout.1),
            snapshot_after_entries: store.snapshot_after_entries,
            tick_interval_ms: store.tick_interval.map_or(500, millis),
            max_submit_in_flight: store.max_submit_in_flight,
        }
    }
}

/// The address to advertise for a listener bound to every interface
/// (`0.0.0.0:7883`) when none is configured: the host name with the port, as
/// peers can use no wildcard address. In a container or pod the host name is
/// the container's or pod's own. `None` for a listener on one address (it is
/// its own advertised address) or on a port the OS picks.
fn advertised_by_hostname(listen: SocketAddr) -> Option<String> {
    if !listen.ip().is_unspecified() || listen.port() == 0 {
        return None;
    }
    let uname = rustix::system::uname();
    let host = uname.nodename().to_str().ok()?.trim();
    (!host.is_empty()).then(|| format!("{host}:{}", listen.port()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// How the store node finds its group.
    pub fn discovery(&self) -> rookery_cluster::Discovery {
        rookery_cluster::Discovery {
            seeds: self.cluster.seeds.clone(),
            bootstrap_expect: self.cluster.bootstrap_expect,
            voter: self.cluster.voter,
        }
    }

    /// How the edge takes part in the cluster (with no TLS or token: see
    /// [`Config::cluster_security`]).
    pub fn cluster_options(&self) -> rookery_broker::ClusterOptions {
        rookery_broker::ClusterOptions {
            forward_listen: self.cluster.forward_listen.0,
            forward_advertise: self.cluster.forward_advertise.clone().or_else(|| {
                self.cluster
                    .forward_listen
                    .0
                    .and_then(advertised_by_hostname)
            }),
            write_timeout: Duration::from_millis(self.cluster.write_timeout_ms),
            quorum_contact: Duration::from_millis(self.cluster.quorum_contact_ms),
            security: ClusterSecurity::default(),
            forward_queue_bytes: usize::try_from(self.cluster.forward_queue_bytes)
                .unwrap_or(usize::MAX),
            max_write_bytes_in_flight: self.cluster.max_write_bytes_in_flight,
        }
    }

    /// Reads and checks the cluster's TLS files and admin token.
    pub fn cluster_security(&self) -> Result<ClusterSecurity, SecurityError> {
        let tls = match &self.cluster.tls {
            Some(t) => Some(Arc::new(ClusterTls::load(
                &t.ca_file,
                &t.cert_file,
                &t.key_file,
                &t.server_name,
            )?)),
            None => None,
        };
        let admin_token = match &self.cluster.admin_token_file {
            Some(path) => Some(AdminToken::read(path)?),
            None => None,
        };
        Ok(ClusterSecurity { tls, admin_token })
    }

    /// What to warn about once logging is up: cluster ports reachable from
    /// other hosts in plaintext, without authentication, and joins that
    /// will be refused for want of an admin token.
    fn cluster_warnings(&self) -> Vec<String> {
        let beyond_loopback = |address: SocketAddr| !address.ip().is_loopback();
        let mut exposed = Vec::new();
        if self.has_role(Role::Store) && beyond_loopback(self.store.listen) {
            exposed.push(format!("store.listen {}", self.store.listen));
        }
        if let Some(forward) = self.cluster.forward_listen.0
            && self.has_role(Role::Edge)
            && beyond_loopback(forward)
        {
            exposed.push(format!("cluster.forward_listen {forward}"));
        }
        let mut warnings = Vec::new();
        if self.cluster.tls.is_none() && !exposed.is_empty() {
            let verb = if exposed.len() == 1 { "is" } else { "are" };
            warnings.push(format!(
                "SECURITY: {} {verb} reachable beyond loopback and [cluster.tls] is not set: the \
                 cluster's ports are neither encrypted nor authenticated, and any host that \
                 reaches them can read queued messages, write to the store (Raft included) and \
                 push publishes to clients. Set [cluster.tls] (docs/configuration.md) or keep \
                 them on a private network",
                exposed.join(" and ")
            ));
        }
        if self.cluster.admin_token_file.is_none()
            && self.has_role(Role::Store)
            && beyond_loopback(self.store.listen)
        {
            warnings.push(
                "no cluster.admin_token_file: membership changes (a node joining a running \
                 group, `rookery cluster remove`) are accepted from loopback addresses only"
                    .to_owned(),
            );
        }
        warnings
    }

    /// The store node's settings.
    pub fn store_config(&self) -> StoreConfig {
        let s = &self.store;
        let mut store = StoreConfig::new(self.node_id, self.data_dir.clone(), s.listen);
        store.advertise = s
            .advertise
            .clone()
            .or_else(|| advertised_by_hostname(s.listen));
        store.heartbeat_interval = Duration::from_millis(s.heartbeat_interval_ms);
        store.election_timeout = (
            Duration::from_millis(s.election_timeout_min_ms),
            Duration::from_millis(s.election_timeout_max_ms),
        );
        store.snapshot_after_entries = s.snapshot_after_entries;
        store.group_commit = if s.group_commit {
            GroupCommit::On {
                in_flight: s.group_commit_in_flight,
            }
        } else {
            GroupCommit::Off
        };
        store.tick_interval = Some(Duration::from_millis(s.tick_interval_ms));
        store.max_submit_in_flight = s.max_submit_in_flight;
        store
    }
}

/// A configuration that loaded and validated, with what is worth telling the
/// operator once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value has the wrong type or an unknown key, in the file, the
    /// environment or a flag.
    #[error("{}", describe_figment(.0))]
    Load(Box<figment::Error>),
    /// The values parse but do not make a working broker.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One invalid setting: its key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Renders every error figment collected as `key: what (where)`, one a line.
fn describe_figment(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = e.metadata.as_ref().map(|md| match &md.source {
                Some(source) => format!("{} {source}", md.name),
                None => md.name.to_string(),
            });
            let mut line = String::new();
            if !key.is_empty() {
                line.push_str(&key);
                line.push_str(": ");
            }
            line.push_str(&e.kind.to_string());
            if let Some(origin) = origin {
                line.push_str(&format!(" (in {origin})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads the layers named in `args` and the environment, and validates the
/// result.
pub fn load(args: &ServeArgs) -> Result<Loaded, ConfigError> {
    let figment = figment(args)?;
    let mut config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    // The edge id follows the node id unless it is set explicitly.
    if figment.find_value("broker.edge_id").is_err() {
        config.broker.edge_id = default_edge_id(config.node_id);
    }
    let renamed = take_old_metrics_listen(&mut config, figment.find_value("http.listen").is_ok());
    config.validate()?;
    let mut warnings = config.cluster_warnings();
    warnings.extend(renamed);
    warnings.extend(ignored_variables());
    Ok(Loaded { config, warnings })
}

/// Moves `[metrics] listen` (the old name) to `[http] listen`, with a
/// warning. Where both are set, `http.listen` wins (so a flag overrides
/// an old file).
fn take_old_metrics_listen(config: &mut Config, http_listen_given: bool) -> Option<String> {
    let old = config.metrics.listen.take()?;
    if http_listen_given {
        return (old != config.http.listen).then(|| {
            format!(
                "metrics.listen ({old}) is ignored: http.listen ({}), its new name, is set too",
                config.http.listen
            )
        });
    }
    config.http.listen = old;
    Some(
        "[metrics] listen is now [http] listen (it also serves /healthz, /readyz and the admin API); the old name still works".into(),
    )
}

/// The layers, lowest first.
fn figment(args: &ServeArgs) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = &args.config {
        // `Toml::file` would search parent directories and skip a missing
        // file silently; a file named on the command line must exist.
        std::fs::metadata(path).map_err(|source| ConfigError::File {
            path: path.clone(),
            source,
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(Env::raw().only(&["RUST_LOG"]).map(|_| "log.level".into()))
        .merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| section_variable(key.as_str()))
                .split("__"),
        );
    Ok(merge_flags(figment, args))
}

/// Whether `key` (a variable's name without the prefix) sets a key of a
/// section: `BROKER__LIMITS__MAX_INFLIGHT`.
fn section_variable(key: &str) -> bool {
    match key.split_once("__") {
        Some((section, _)) => ENV_SECTIONS
            .iter()
            .any(|known| section.eq_ignore_ascii_case(known)),
        None => false,
    }
}

/// `ROOKERY_*` variables that look like a mistyped section variable
/// (`ROOKERY_BROKER_EDGE_ID` for `ROOKERY_BROKER__EDGE_ID`): they are
/// ignored, and the operator is told so.
fn ignored_variables() -> Vec<String> {
    let mut warnings: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| {
            let key = name.strip_prefix(ENV_PREFIX)?;
            if section_variable(key) || FLAG_VARIABLES.contains(&key) {
                return None;
            }
            let section = ENV_SECTIONS
                .iter()
                .find(|s| key.to_ascii_lowercase().starts_with(&format!("{s}_")))?;
            let rest = &key[section.len() + 1..];
            Some(format!(
                "environment variable {name} is ignored; sections and keys are separated by \
                 two underscores: {ENV_PREFIX}{}__{rest}",
                section.to_ascii_uppercase()
            ))
        })
        .collect();
    warnings.sort();
    warnings
}

/// The flags given on the command line (or their own variables), on top.
fn merge_flags(mut figment: Figment, args: &ServeArgs) -> Figment {
    if let Some(node_id) = args.node_id {
        figment = figment.merge(Serialized::default("node_id", node_id));
    }
    if let Some(data_dir) = &args.data_dir {
        figment = figment.merge(Serialized::default("data_dir", data_dir));
    }
    if !args.roles.is_empty() {
        figment = figment.merge(Serialized::default("roles", &args.roles));
    }
    if let Some(level) = &args.log_level {
        figment = figment.merge(Serialized::default("log.level", level));
    }
    if let Some(format) = args.log_format {
        figment = figment.merge(Serialized::default("log.format", format));
    }
    // `--http-listen` wins over its old name `--metrics-listen`.
    if let Some(listen) = args.http_listen.or(args.metrics_listen) {
        figment = figment.merge(Serialized::default("http.listen", listen));
    }
    if let Some(listen) = args.store_listen {
        figment = figment.merge(Serialized::default("store.listen", listen));
    }
    if !args.listen.is_empty() {
        figment = figment.merge(Serialized::default(
            "broker.listeners",
            flag_listeners(&args.listen),
        ));
    }
    figment
}

/// Plain TCP listeners named `tcp`, `tcp-2`, `tcp-3`, ...
fn flag_listeners(addresses: &[SocketAddr]) -> Vec<ListenerConfig> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, address)| ListenerConfig {
            name: if i == 0 {
                "tcp".into()
            } else {
                format!("tcp-{}", i + 1)
            },
            kind: ListenerKind::Tcp,
            address: *address,
            ..ListenerConfig::default()
        })
        .collect()
}

impl Config {
    /// Every problem of the whole configuration, or none.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.into(),
                message,
            })
        };

        if self.data_dir.as_os_str().is_empty() {
            problem("data_dir", "must not be empty".into());
        } else if self.data_dir.is_file() {
            problem(
                "data_dir",
                format!("{} is a file, not a directory", self.data_dir.display()),
            );
        }
        if let Err(error) = EnvFilter::try_new(&self.log.level) {
            problem(
                "log.level",
                format!("`{}` is not a log filter: {error}", self.log.level),
            );
        }
        self.validate_store(&mut problem);
        self.validate_cluster(&mut problem);
        self.validate_broker(&mut problem);
        self.validate_addresses(&mut problem);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_store(&self, problem: &mut impl FnMut(&str, String)) {
        let s = &self.store;
        if s.group_commit_in_flight == 0 {
            problem("store.group_commit_in_flight", "must be at least 1".into());
        }
        if s.heartbeat_interval_ms == 0 {
            problem("store.heartbeat_interval_ms", "must be at least 1".into());
        }
        if s.election_timeout_min_ms <= s.heartbeat_interval_ms {
            problem(
                "store.election_timeout_min_ms",
                format!(
                    "must be longer than store.heartbeat_interval_ms ({})",
                    s.heartbeat_interval_ms
                ),
            );
        }
        if s.election_timeout_max_ms <= s.election_timeout_min_ms {
            problem(
                "store.election_timeout_max_ms",
                format!(
                    "must be longer than store.election_timeout_min_ms ({})",
                    s.election_timeout_min_ms
                ),
            );
        }
        if s.snapshot_after_entries == 0 {
            problem("store.snapshot_after_entries", "must be at least 1".into());
        }
        if s.tick_interval_ms == 0 {
            problem("store.tick_interval_ms", "must be at least 1".into());
        }
        if s.max_submit_in_flight == 0 {
            problem("store.max_submit_in_flight", "must be at least 1".into());
        }
        if s.advertise.as_deref().is_some_and(|a| a.trim().is_empty()) {
            problem(
                "store.advertise",
                "must not be empty (leave it out to advertise the bound address)".into(),
            );
        }
    }

    fn validate_cluster(&self, problem: &mut impl FnMut(&str, String)) {
        let c = &self.cluster;
        if self.roles.is_empty() {
            problem(
                "roles",
                "name at least one of \"store\" and \"edge\"".into(),
            );
        } else if !self.has_role(Role::Store) && c.seeds.is_empty() {
            problem(
                "roles",
                "an edge without the store role reaches the store through cluster.seeds, \
                 which names no store node"
                    .into(),
            );
        }
        if c.bootstrap_expect == 0 {
            problem("cluster.bootstrap_expect", "must be at least 1".into());
        }
        if c.bootstrap_expect > 1 && c.seeds.is_empty() {
            problem(
                "cluster.bootstrap_expect",
                format!(
                    "{} voters are expected but cluster.seeds names no peers",
                    c.bootstrap_expect
                ),
            );
        }
        if let Some(seed) = c.seeds.iter().find(|seed| !seed.contains(':')) {
            problem("cluster.seeds", format!("`{seed}` is not host:port"));
        }
        if !c.seeds.is_empty() && self.has_role(Role::Edge) && c.forward_listen.0.is_none() {
            problem(
                "cluster.forward_listen",
                "an edge in a cluster must listen for other edges' forwarded publishes".into(),
            );
        }
        if c.write_timeout_ms == 0 {
            problem("cluster.write_timeout_ms", "must be at least 1".into());
        }
        if c.quorum_contact_ms < 2 {
            problem("cluster.quorum_contact_ms", "must be at least 2".into());
        }
        if c.forward_advertise
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            problem("cluster.forward_advertise", "must not be empty".into());
        }
        if c.forward_queue_bytes < MIN_FORWARD_QUEUE_BYTES {
            problem(
                "cluster.forward_queue_bytes",
                format!(
                    "is {}; it must be at least {MIN_FORWARD_QUEUE_BYTES}",
                    c.forward_queue_bytes
                ),
            );
        }
        self.validate_cluster_security(problem);
    }

    /// The cluster's TLS files and admin token must be there and usable at
    /// start, not at the first handshake or join.
    fn validate_cluster_security(&self, problem: &mut impl FnMut(&str, String)) {
        let c = &self.cluster;
        let mut present = true;
        if let Some(tls) = &c.tls {
            for (key, path) in [
                ("cluster.tls.ca_file", &tls.ca_file),
                ("cluster.tls.cert_file", &tls.cert_file),
                ("cluster.tls.key_file", &tls.key_file),
            ] {
                present &= check_file(key, path, problem);
            }
            if present
                && let Err(error) = ClusterTls::load(
                    &tls.ca_file,
                    &tls.cert_file,
                    &tls.key_file,
                    &tls.server_name,
                )
            {
                problem("cluster.tls", error.to_string());
            }
        }
        if let Some(path) = &c.admin_token_file
            && check_file("cluster.admin_token_file", path, problem)
            && let Err(error) = AdminToken::read(path)
        {
            problem("cluster.admin_token_file", error.to_string());
        }
    }

    /// Whether this node plays `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whose metrics this node exports: the node's own, and its roles'.
    pub fn metric_owners(&self) -> Vec<crate::catalog::Owner> {
        let mut owners = vec![crate::catalog::Owner::Node];
        if self.has_role(Role::Store) {
            owners.push(crate::catalog::Owner::Store);
        }
        if self.has_role(Role::Edge) {
            owners.push(crate::catalog::Owner::Edge);
        }
        owners
    }

    fn validate_broker(&self, problem: &mut impl FnMut(&str, String)) {
        let b = &self.broker;
        if b.edge_id.trim().is_empty() {
            problem("broker.edge_id", "must not be empty".into());
        }
        if b.shutdown_grace_s == 0 {
            problem(
                "broker.shutdown_grace_s",
                "must be at least 1: a drain needs time to send clients away and hand the \
                 store's leadership over"
                    .into(),
            );
        }
        if b.server_reference
            .as_deref()
            .is_some_and(|reference| reference.trim().is_empty())
        {
            problem(
                "broker.server_reference",
                "must not be empty (leave it out to send clients DISCONNECT 0x8B)".into(),
            );
        }
        if b.listeners.is_empty() {
            problem(
                "broker.listeners",
                "at least one listener is needed (or --listen ADDR)".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, listener) in b.listeners.iter().enumerate() {
            let key = format!("broker.listeners[{i}]");
            let name = listener.display_name();
            if !names.insert(name.clone()) {
                problem(
                    &format!("{key}.name"),
                    format!("`{name}` names two listeners; give each a distinct name"),
                );
            }
            validate_listener(&key, listener, problem);
        }

        validate_auth(&b.auth, problem);

        let l = &b.limits;
        if l.receive_maximum == 0 {
            problem(
                "broker.limits.receive_maximum",
                "must be at least 1 (MQTT 5.0, 3.2.2.3.3)".into(),
            );
        }
        if l.max_inflight == 0 {
            problem("broker.limits.max_inflight", "must be at least 1".into());
        }
        if l.maximum_qos > 2 {
            problem(
                "broker.limits.maximum_qos",
                format!("is {}; a QoS is 0, 1 or 2", l.maximum_qos),
            );
        }
        if l.max_packet_size < 2 {
            problem(
                "broker.limits.max_packet_size",
                format!(
                    "is {}; the smallest MQTT packet is 2 bytes",
                    l.max_packet_size
                ),
            );
        } else if l.max_packet_size > MQTT_MAX_PACKET_SIZE {
            problem(
                "broker.limits.max_packet_size",
                format!(
                    "is {}; no MQTT packet is larger than {MQTT_MAX_PACKET_SIZE} bytes",
                    l.max_packet_size
                ),
            );
        }
        if l.max_topic_length == 0 || l.max_topic_length > 65535 {
            problem(
                "broker.limits.max_topic_length",
                format!(
                    "is {}; it must be between 1 and 65535 (an MQTT string's limit)",
                    l.max_topic_length
                ),
            );
        }
        if l.max_topic_levels == 0 {
            problem(
                "broker.limits.max_topic_levels",
                "must be at least 1".into(),
            );
        }
        if l.connect_timeout_s == 0 {
            problem(
                "broker.limits.connect_timeout_s",
                "must be at least 1".into(),
            );
        }
        validate_client_limits(l, problem);
        if l.persistent_client_expiration == Some(0) {
            problem(
                "broker.limits.persistent_client_expiration",
                "must be at least 1 second; leave it out for sessions that never expire".into(),
            );
        }
    }

    /// Two sockets on one address (other than port 0) cannot both bind.
    fn validate_addresses(&self, problem: &mut impl FnMut(&str, String)) {
        let mut sockets: Vec<(String, SocketAddr)> = Vec::new();
        if let Some(http) = self.http.listen.0 {
            sockets.push(("http.listen".into(), http));
        }
        sockets.push(("store.listen".into(), self.store.listen));
        if let Some(forward) = self.cluster.forward_listen.0 {
            sockets.push(("cluster.forward_listen".into(), forward));
        }
        for (i, listener) in self.broker.listeners.iter().enumerate() {
            sockets.push((format!("broker.listeners[{i}].address"), listener.address));
        }
        for (i, (key, address)) in sockets.iter().enumerate() {
            if address.port() == 0 {
                continue;
            }
            if let Some((first, _)) = sockets[..i].iter().find(|(_, other)| other == address) {
                problem(key, format!("{address} is already taken by {first}"));
            }
        }
    }
}

fn validate_auth(auth: &rookery_auth::AuthConfig, problem: &mut impl FnMut(&str, String)) {
    if let Some(file) = &auth.password_file {
        check_file("broker.auth.password_file", file, problem);
    }
    if let Some(file) = &auth.acl_file {
        check_file("broker.auth.acl_file", file, problem);
    }
    if let Some(jwt) = &auth.jwt {
        use rookery_auth::JwtAlgorithm;
        let (key, file) = match jwt.algorithm {
            JwtAlgorithm::Hs256 => ("broker.auth.jwt.secret_file", &jwt.secret_file),
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                ("broker.auth.jwt.public_key_file", &jwt.public_key_file)
            }
        };
        match file {
            Some(file) => {
                check_file(key, file, problem);
            }
            None => problem(key, "is needed by the algorithm chosen".into()),
        }
        if jwt.username_claim.is_empty() {
            problem("broker.auth.jwt.username_claim", "must not be empty".into());
        }
    }
}

fn validate_listener(key: &str, listener: &ListenerConfig, problem: &mut impl FnMut(&str, String)) {
    let encrypted = matches!(listener.kind, ListenerKind::Tls | ListenerKind::Wss);
    let kind = listener.kind.as_str();
    match (&listener.tls, encrypted) {
        (None, true) => problem(
            &format!("{key}.tls"),
            format!(
                "a `{kind}` listener needs a [broker.listeners.tls] section with cert_file and \
                 key_file"
            ),
        ),
        (Some(_), false) => problem(
            &format!("{key}.tls"),
            format!("a `{kind}` listener does not use TLS; use kind `tls` or `wss`, or remove it"),
        ),
        (Some(tls), true) => {
            check_file(&format!("{key}.tls.cert_file"), &tls.cert_file, problem);
            check_file(&format!("{key}.tls.key_file"), &tls.key_file, problem);
            match &tls.client_ca_file {
                Some(ca) => {
                    check_file(&format!("{key}.tls.client_ca_file"), ca, problem);
                }
                None if tls.require_client_cert => problem(
                    &format!("{key}.tls.require_client_cert"),
                    "needs client_ca_file: the CA that client certificates are verified against"
                        .into(),
                ),
                None => {}
            }
        }
        (None, false) => {}
    }
    if listener.use_identity_as_username
        && !listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.require_client_cert)
    {
        problem(
            &format!("{key}.use_identity_as_username"),
            "needs tls.require_client_cert = true (and client_ca_file): without a verified \
             certificate there is no identity"
                .into(),
        );
    }
    if matches!(listener.kind, ListenerKind::Ws | ListenerKind::Wss)
        && !listener.ws_path.starts_with('/')
    {
        problem(
            &format!("{key}.ws_path"),
            format!("`{}` must start with `/`", listener.ws_path),
        );
    }
}

/// The limits on what one client may do.
fn validate_client_limits(l: &rookery_broker::Limits, problem: &mut impl FnMut(&str, String)) {
    // MQTT-3.1.3-5: a server must allow identifiers of 1 to 23 bytes.
    if l.max_client_id_length < 23 || l.max_client_id_length > 65535 {
        problem(
            "broker.limits.max_client_id_length",
            format!(
                "is {}; it must be between 23 (MQTT-3.1.3-5: every server accepts 23 bytes) \
                 and 65535 (an MQTT string's limit)",
                l.max_client_id_length
            ),
        );
    }
    if l.max_output_buffer == 0 {
        problem(
            "broker.limits.max_output_buffer",
            "must be at least 1 (one packet is always written, however large)".into(),
        );
    }
    if l.send_timeout_s == 0 {
        problem("broker.limits.send_timeout_s", "must be at least 1".into());
    }
}

/// A TLS file must be there at start, not at the first handshake. Whether
/// it is.
fn check_file(key: &str, path: &Path, problem: &mut impl FnMut(&str, String)) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => true,
        Ok(_) => {
            problem(key, format!("{} is not a file", path.display()));
            false
        }
        Err(error) => {
            problem(key, format!("{}: {error}", path.display()));
            false
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
