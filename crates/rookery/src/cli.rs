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

use crate::config::{LogFormat, OptionalAddr};

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
