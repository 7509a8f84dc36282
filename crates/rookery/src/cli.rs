//! The command line. Each flag overrides the configuration file and the
//! `ROOKERY_<SECTION>__<KEY>` variables; each flag can also be given as its
//! own environment variable (`--data-dir` is `ROOKERY_DATA_DIR`).
//!
//! No flag has a clap default: an absent flag must leave the lower layers'
//! value alone. The defaults are in [`crate::config`] and the help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, OptionalAddr, Role};

/// Rookery: a clustered MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
#[derive(Debug, Parser)]
#[command(name = "rookery", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a broker: the MQTT listeners and the embedded, durable session
    /// store.
    ///
    /// With no options it listens for MQTT on 127.0.0.1:1883 only, keeps its
    /// data in ./rookery-data and serves Prometheus metrics on
    /// 127.0.0.1:9883 (with /healthz, /readyz and the admin API). Settings come from, lowest first: defaults, the
    /// --config file, ROOKERY_<SECTION>__<KEY> environment variables, then
    /// these flags (each also readable from the variable shown).
    Serve(ServeArgs),
    /// Looks at or changes the store group of a running cluster.
    Cluster(ClusterArgs),
    /// Operates a running node or cluster through its HTTP API: cluster
    /// status and membership, clients, sessions, subscriptions, retained
    /// messages, the log filter and backups.
    ///
    /// Any node answers for the whole cluster. Tables by default, the API's
    /// JSON with --json. Off loopback the API needs a bearer token
    /// (--token-file, or the [http] admin_token_file of --config).
    Ctl(CtlArgs),
    /// Starts a new store group from a backup (`rookery ctl backup`): the
    /// backup is copied into a new data directory, where this node is the
    /// group's single voter; `rookery serve` on that directory then serves
    /// the backup's sessions and retained messages, and other nodes can
    /// join it.
    Restore(RestoreArgs),
    /// Adds or changes a user of a password file ([broker.auth]
    /// password_file), or deletes one.
    ///
    /// The password is read from the terminal without echo (asked twice),
    /// or from the first line of stdin with --password-stdin. FILE gets an
    /// argon2id hash and FILE.scram a SCRAM-SHA-256 verifier; other users'
    /// lines, Mosquitto's $6$ and $7$ hashes among them, are kept unchanged.
    /// Both files are replaced atomically and are readable by their owner
    /// only (mode 0600).
    Passwd(PasswdArgs),
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The password file. It must exist unless --create is given.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The user to add, change or delete.
    #[arg(value_name = "USER")]
    pub username: String,

    /// Start FILE and FILE.scram afresh, dropping every other user (as
    /// mosquitto_passwd -c does).
    #[arg(short = 'c', long, conflicts_with = "delete")]
    pub create: bool,

    /// Delete USER from FILE and FILE.scram.
    #[arg(short = 'D', long)]
    pub delete: bool,

    /// Read the password from the first line of stdin instead of the
    /// terminal (for scripts).
    #[arg(long, conflicts_with = "delete")]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The store address (store.listen / store.advertise) of any node of
    /// the cluster; requests that need the leader are forwarded to it.
    /// [default: the configuration's store.advertise or store.listen, else
    /// 127.0.0.1:7883]
    #[arg(long, env = "ROOKERY_STORE", value_name = "HOST:PORT")]
    pub store: Option<String>,

    /// A node's configuration file: its [cluster.tls] certificate (needed
    /// when the cluster uses TLS) and cluster.admin_token_file (needed by
    /// `remove` when the cluster has one) are used to reach the store. The
    /// ROOKERY_CLUSTER__... variables apply as for `rookery serve`.
    #[arg(short, long, env = "ROOKERY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Prints the node's view: leader, term, log, voters and learners.
    Status,
    /// Removes a node from the store group (it stops voting and receiving
    /// the log); stop its process afterwards. The remaining voters keep a
    /// majority only if enough of them are up.
    Remove {
        /// The node id to remove.
        node_id: u64,
    },
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's HTTP API. [default: the [http] listen address of
    /// --config, else http://127.0.0.1:9883]
    #[arg(long, env = "ROOKERY_CTL_URL", value_name = "URL", global = true)]
    pub url: Option<String>,

    /// A file holding the API's bearer token (its first line), needed off
    /// loopback. [default: the [http] admin_token_file of --config]
    #[arg(
        long,
        env = "ROOKERY_CTL_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    pub token_file: Option<PathBuf>,

    /// A node's configuration file, for the defaults of --url and
    /// --token-file.
    #[arg(
        short,
        long,
        env = "ROOKERY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The store group: status and membership.
    #[command(subcommand)]
    Cluster(CtlCluster),
    /// Connected clients.
    #[command(subcommand)]
    Clients(CtlClients),
    /// Sessions, online and offline.
    #[command(subcommand)]
    Sessions(CtlSessions),
    /// Subscriptions.
    #[command(subcommand)]
    Subscriptions(CtlSubscriptions),
    /// Retained messages.
    #[command(subcommand)]
    Retained(CtlRetained),
    /// This node's log filter, changed at run time (until its restart).
    #[command(subcommand, name = "log-level")]
    LogLevel(CtlLogLevel),
    /// Writes a consistent checkpoint of this node's store replica to DIR
    /// on the node's file system (a new directory); `rookery restore`
    /// starts a new group from it.
    Backup {
        /// A new directory on the node (relative to its working directory).
        dir: PathBuf,
    },
    /// Asks the node whether it is alive (/healthz), or ready for clients
    /// (/readyz) with --ready; exits 0 if so and 1 if not, within 5 s: for
    /// a container's HEALTHCHECK and for scripts.
    Health {
        /// Ask /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlCluster {
    /// Voters, learners, the leader, and each node's applied index and lag.
    Status,
    /// Makes a node a voter: a learner already, or added as one first
    /// (then --address is needed) and promoted once it has caught up.
    AddVoter {
        /// The node id.
        node: u64,
        /// Its store address (store.advertise), if it is not a member yet.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
    },
    /// Adds a node as a learner (it receives the log but does not vote);
    /// returns once it has caught up.
    AddLearner {
        /// The node id.
        node: u64,
        /// Its store address (store.advertise).
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
    },
    /// Removes a node, voter or learner, from the group; stop its process
    /// afterwards. Refused if the voters left would have no majority up.
    Remove {
        /// The node id.
        node: u64,
    },
    /// Hands the store leadership to another voter (once it holds the
    /// whole log); writes pause for the handover instead of failing.
    TransferLeader {
        /// The voter to lead.
        node: u64,
    },
}

/// How much of a list to print.
#[derive(Debug, Args)]
pub struct Paging {
    /// Print at most N items (fetched in pages of at most 1,000).
    #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "all")]
    pub limit: usize,
    /// Print every item, however many pages that takes.
    #[arg(long)]
    pub all: bool,
    /// Start after the end of an earlier list (the cursor it printed).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CtlClients {
    /// Connected clients (sessions online on an edge).
    List {
        /// Only the clients of this edge (its name, or its full id).
        #[arg(long, value_name = "EDGE")]
        edge: Option<String>,
        /// Only client ids matching PATTERN: a glob with * and ?, or
        /// else a substring.
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One connected client: its edge, address, protocol, keep alive, when
    /// it connected, subscriptions, and messages in flight and queued.
    Show {
        /// The client id.
        id: String,
    },
    /// Disconnects a client (DISCONNECT 0x98, Administrative Action, to
    /// MQTT 5 clients); its session stays and it may reconnect.
    Kick {
        /// The client id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlSessions {
    /// Sessions, online and offline (persistent sessions outlive their
    /// connection).
    List {
        /// Only client ids matching PATTERN: a glob with * and ?, or
        /// else a substring.
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One session with its subscriptions and queue.
    Show {
        /// The client id.
        id: String,
    },
    /// Deletes a session with its subscriptions and queued messages; an
    /// online client is disconnected first (its will is published).
    Delete {
        /// The client id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlSubscriptions {
    /// Subscriptions, all or those with one exact filter or of one client.
    List {
        /// Only subscriptions with exactly this topic filter.
        #[arg(long, value_name = "FILTER")]
        topic: Option<String>,
        /// Only this client's subscriptions.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlRetained {
    /// Retained messages whose topic matches FILTER (default #), payloads
    /// shortened.
    List {
        /// A topic filter. [default: #]
        filter: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One retained message, whole.
    Get {
        /// Its topic.
        topic: String,
    },
    /// Deletes a retained message, on every node.
    Delete {
        /// Its topic.
        topic: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlLogLevel {
    /// Replaces this node's log filter, e.g. `debug` or
    /// `info,rookery_store=debug`; a restart goes back to the
    /// configuration's.
    Set {
        /// An EnvFilter directive list.
        filter: String,
    },
    /// Prints this node's log filter.
    Get,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup's directory (written by `rookery ctl backup`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,

    /// The new node's configuration file: its node_id, data_dir and store
    /// address (store.advertise, else store.listen) are those of the new
    /// group's voter.
    #[arg(short, long, env = "ROOKERY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The new data directory (absent or empty). [default: the
    /// configuration's data_dir]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The restored node's id. [default: the configuration's node_id]
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,

    /// The store address other nodes reach the restored node at.
    /// [default: the configuration's store.advertise, else store.listen]
    #[arg(long, value_name = "HOST:PORT")]
    pub store_address: Option<String>,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(short, long, env = "ROOKERY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen for MQTT over plain TCP at ADDR, e.g. 0.0.0.0:1883 or
    /// [::]:1883; port 0 picks a free port. Repeat the flag (or separate
    /// addresses with commas in the variable) for several listeners, named
    /// tcp, tcp-2, ... These replace every listener of the configuration
    /// file. [default: 127.0.0.1:1883]
    #[arg(
        short,
        long,
        env = "ROOKERY_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// The directory of the store's database; created if missing. A restart
    /// with the same directory resumes every session, subscription, queued
    /// and retained message. [default: ./rookery-data]
    #[arg(long, env = "ROOKERY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// This node's id in the store's Raft group. A data directory keeps the
    /// id it was created with. [default: 1]
    #[arg(long, env = "ROOKERY_NODE_ID", value_name = "N")]
    pub node_id: Option<u64>,

    /// What this node runs, comma-separated: `store` (a replica of the
    /// session store), `edge` (the MQTT listeners), or both. One container
    /// image serves every role this way. [default: store,edge]
    #[arg(
        long,
        env = "ROOKERY_ROLES",
        value_name = "ROLES",
        value_enum,
        value_delimiter = ','
    )]
    pub roles: Vec<Role>,

    /// What to log: a level (error, warn, info, debug, trace) or a filter
    /// such as info,rookery_store=debug. Overrides RUST_LOG. [default: info,openraft=warn]
    #[arg(long, env = "ROOKERY_LOG_LEVEL", value_name = "FILTER", value_parser = parse_filter)]
    pub log_level: Option<String>,

    /// How to write log lines to stderr. [default: text]
    #[arg(long, env = "ROOKERY_LOG_FORMAT", value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// The node's HTTP listener, or `off`: Prometheus metrics at /metrics,
    /// the probes /healthz and /readyz, and the admin API under /api/v1/.
    /// [default: 127.0.0.1:9883]
    #[arg(long, env = "ROOKERY_HTTP_LISTEN", value_name = "ADDR|off")]
    pub http_listen: Option<OptionalAddr>,

    /// The old name of --http-listen, still accepted.
    #[arg(
        long,
        env = "ROOKERY_METRICS_LISTEN",
        value_name = "ADDR|off",
        hide = true
    )]
    pub metrics_listen: Option<OptionalAddr>,

    /// The store's gRPC address (Raft and session API). A single node only
    /// needs loopback. [default: 127.0.0.1:7883]
    #[arg(long, env = "ROOKERY_STORE_LISTEN", value_name = "ADDR")]
    pub store_listen: Option<SocketAddr>,
}

fn parse_filter(filter: &str) -> Result<String, String> {
    EnvFilter::try_new(filter)
        .map(|_| filter.to_owned())
        .map_err(|error| error.to_string())
}
