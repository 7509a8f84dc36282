//! The command line: four subcommands sharing one set of connection, load
//! and reporting options, turned into one checked [`Settings`] value that
//! the rest of the program reads.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rookery_codec::{ProtocolVersion, QoS};
use rookery_topic::{validate_topic_filter, validate_topic_name};

use crate::payload::HEADER_LEN;

/// The placeholder a topic or filter pattern replaces with the client index.
pub const INDEX_PLACEHOLDER: &str = "%i";

/// rookery-bench: an MQTT load generator that measures throughput, loss and
/// end-to-end latency, and reports its own CPU use beside the broker's.
#[derive(Debug, Parser)]
#[command(name = "rookery-bench", version, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The four scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open --count connections at --connect-rate and hold them for
    /// --duration: connect rate, failures, broker memory per connection.
    Conn(ConnArgs),
    /// Publish from --count clients for --duration.
    Pub(PubArgs),
    /// Subscribe --count clients and receive for --duration; loss is seen as
    /// gaps in each publisher's sequence.
    Sub(SubArgs),
    /// Subscribers first, then publishers for --duration, then drain, then
    /// one report with loss counted against what was sent.
    Run(RunArgs),
}

/// `conn`: idle connections.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub count: u32,
    /// Options every subcommand shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `pub`: publishers only.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Publishing clients.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: u32,
    /// What and how fast to publish.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Options every subcommand shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `sub`: subscribers only.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Subscribing clients.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub count: u32,
    /// What to subscribe to.
    #[command(flatten)]
    pub subscribe: SubscribeArgs,
    /// Options every subcommand shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `run`: subscribers and publishers together.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Publishing clients.
    #[arg(long, default_value_t = 10)]
    pub pubs: u32,
    /// Subscribing clients.
    #[arg(long, default_value_t = 1)]
    pub subs: u32,
    /// What and how fast to publish.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// What to subscribe to.
    #[command(flatten)]
    pub subscribe: SubscribeArgs,
    /// Options every subcommand shares.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Publishing options.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic to publish to; `%i` is replaced by the publisher's index.
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub topic: String,
    /// Payload size in bytes (at least the 28-byte header).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second per publisher; 0 publishes as fast as the broker
    /// takes them (QoS 1 and 2 within the --inflight window).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// QoS 1 and 2 messages a publisher may have unacknowledged; the broker's
    /// Receive Maximum (5.0) lowers it.
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
}

/// Subscribing options.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Topic filter to subscribe to; `%i` is replaced by the subscriber's
    /// index. Wildcards and `$share/{group}/{filter}` work.
    #[arg(short = 'f', long, default_value = "bench/#")]
    pub filter: String,
}

/// How a client reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (subprotocol `mqtt`) over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl TransportKind {
    /// Whether the transport runs TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }
}

/// The MQTT protocol level on the command line: `3.1.1` or `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttVersion(pub ProtocolVersion);

impl FromStr for MqttVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "3.1.1" | "311" | "4" => Ok(Self(ProtocolVersion::V3_1_1)),
            "5" | "5.0" => Ok(Self(ProtocolVersion::V5)),
            other => Err(format!("`{other}`: expected 3.1.1 or 5")),
        }
    }
}

/// A shard of the client indexes: this process takes index `i` when
/// `i % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's shard, from 0.
    pub index: u32,
    /// How many shards (processes) there are.
    pub count: u32,
}

impl Shard {
    /// The whole index space in one process.
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    /// Whether client index `i` belongs to this shard.
    pub fn owns(self, i: u32) -> bool {
        i % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected K/N"))?;
        let index: u32 = index.parse().map_err(|_| format!("`{text}`: bad K"))?;
        let count: u32 = count.parse().map_err(|_| format!("`{text}`: bad N"))?;
        if count == 0 || index >= count {
            return Err(format!("`{text}`: K must be below N and N above 0"));
        }
        Ok(Self { index, count })
    }
}

/// Options every subcommand shares.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Broker host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// Subscribers connect to this host instead (default: --host): another
    /// node of a cluster, so that every message crosses between edges.
    #[arg(long)]
    pub sub_host: Option<String>,
    /// Subscribers connect to this port instead (default: --port).
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// Transport.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// HTTP path of the WebSocket endpoint.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// PEM file of CA certificates to verify the broker's certificate with.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Do not verify the broker's certificate (TLS and WSS).
    #[arg(long)]
    pub insecure: bool,
    /// Name to verify the broker's certificate against (default: --host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long = "mqtt", default_value = "5", value_name = "VERSION")]
    pub mqtt: MqttVersion,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// New connections per second over all processes; 0 is as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Connections being set up at once, per process.
    #[arg(long, default_value_t = 256)]
    pub max_connecting: u32,
    /// Seconds a connection (and its SUBSCRIBE) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Keep alive in seconds; idle clients ping at three quarters of it.
    #[arg(short = 'k', long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Persistent sessions: Clean Session 0 (3.1.1), or Clean Start 0 with a
    /// Session Expiry Interval (5.0).
    #[arg(long)]
    pub persistent: bool,
    /// Session Expiry Interval in seconds (5.0); default 3600 with
    /// --persistent, 0 without.
    #[arg(long)]
    pub session_expiry: Option<u32>,
    /// Seconds into publishing at which every subscriber disconnects and,
    /// after --reconnect-pause, resumes its session (needs --persistent).
    #[arg(long)]
    pub reconnect_at: Option<f64>,
    /// Milliseconds a subscriber stays away before it resumes.
    #[arg(long, default_value_t = 1000)]
    pub reconnect_pause: u64,
    /// Seconds to publish (`pub`, `run`), receive (`sub`) or hold (`conn`).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most seconds to wait after publishing for acknowledgements and late
    /// messages.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Draining ends early once no message has arrived for this many
    /// milliseconds and every publish is acknowledged.
    #[arg(long, default_value_t = 1000)]
    pub drain_idle: u64,
    /// Local addresses to connect from, round robin: a list and ranges, e.g.
    /// `127.0.0.1-127.0.0.8` or `127.0.0.2,127.0.0.3`. Each gives about 28k
    /// ephemeral ports.
    #[arg(long, value_name = "LIST")]
    pub source_ips: Option<String>,
    /// Spread the clients over this many child processes (each holds at most
    /// the per-process open-file limit); the parent merges their reports.
    #[arg(long, default_value_t = 1)]
    pub processes: u32,
    /// Runtime worker threads per process (default: cores / processes).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also write the report as JSON to FILE, or to standard output with `-`.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// The broker's process id: its CPU and memory are reported beside ours.
    /// Several, comma-separated (a cluster's nodes), are summed.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    /// Client identifiers are this prefix, a role letter and the index
    /// (`bench-p3`, `bench-s0`, `bench-c12`).
    #[arg(long, default_value = "bench-")]
    pub client_id_prefix: String,
    /// User name for CONNECT.
    #[arg(long)]
    pub username: Option<String>,
    /// Password for CONNECT.
    #[arg(long)]
    pub password: Option<String>,
    /// Internal: run as shard K of N under a parent process.
    #[arg(long, hide = true)]
    pub shard: Option<Shard>,
    /// Internal: the run id the parent chose.
    #[arg(long, hide = true)]
    pub run_id: Option<u32>,
}

/// Which scenario, with its client counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Idle connections.
    Conn {
        /// Connections.
        count: u32,
    },
    /// Publishers only.
    Pub {
        /// Publishers.
        pubs: u32,
    },
    /// Subscribers only.
    Sub {
        /// Subscribers.
        subs: u32,
    },
    /// Both.
    Run {
        /// Publishers.
        pubs: u32,
        /// Subscribers.
        subs: u32,
    },
}

impl Mode {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conn { .. } => "conn",
            Self::Pub { .. } => "pub",
            Self::Sub { .. } => "sub",
            Self::Run { .. } => "run",
        }
    }

    /// Publishers in the whole run.
    pub fn pubs(self) -> u32 {
        match self {
            Self::Pub { pubs } | Self::Run { pubs, .. } => pubs,
            Self::Conn { .. } | Self::Sub { .. } => 0,
        }
    }

    /// Subscribers in the whole run.
    pub fn subs(self) -> u32 {
        match self {
            Self::Sub { subs } | Self::Run { subs, .. } => subs,
            Self::Conn { .. } | Self::Pub { .. } => 0,
        }
    }
}

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scenario.
    pub mode: Mode,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Where subscribers connect (the broker's host and port unless set).
    pub sub_host: String,
    /// See `sub_host`.
    pub sub_port: u16,
    /// Transport.
    pub transport: TransportKind,
    /// WebSocket path.
    pub ws_path: String,
    /// CA file for TLS.
    pub cafile: Option<PathBuf>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// Name to verify the certificate against.
    pub server_name: String,
    /// MQTT version.
    pub version: ProtocolVersion,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Publish topic pattern.
    pub topic: String,
    /// Subscription filter pattern.
    pub filter: String,
    /// Payload size.
    pub size: usize,
    /// Messages per second per publisher; `None` is unbounded.
    pub rate: Option<f64>,
    /// QoS 1/2 window per publisher.
    pub inflight: u16,
    /// Connections per second over all processes; `None` is unbounded.
    pub connect_rate: Option<f64>,
    /// Connections being set up at once per process.
    pub max_connecting: u32,
    /// Time a connection may take.
    pub connect_timeout: Duration,
    /// Keep alive.
    pub keep_alive: u16,
    /// Persistent sessions.
    pub persistent: bool,
    /// Session Expiry Interval (5.0).
    pub session_expiry: u32,
    /// When subscribers drop and resume, from the start of publishing.
    pub reconnect_at: Option<Duration>,
    /// How long they stay away.
    pub reconnect_pause: Duration,
    /// Publish, receive or hold time.
    pub duration: Duration,
    /// Longest drain.
    pub drain: Duration,
    /// Quiet time that ends draining.
    pub drain_idle: Duration,
    /// Local addresses to bind, round robin; empty lets the kernel choose.
    pub source_ips: Vec<IpAddr>,
    /// Child processes (1: run here).
    pub processes: u32,
    /// Worker threads of this process.
    pub threads: usize,
    /// JSON report destination.
    pub json: Option<String>,
    /// Broker processes to watch, summed (none: no broker figures).
    pub broker_pid: Vec<u32>,
    /// Client identifier prefix.
    pub client_id_prefix: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// This process's shard.
    pub shard: Shard,
    /// Whether this process is a child reporting to a parent.
    pub is_child: bool,
    /// The run id stamped in payloads.
    pub run_id: Option<u32>,
}

impl Settings {
    /// Checks the parsed command line and builds the settings.
    pub fn from_cli(cli: Cli) -> Result<Self, String> {
        let empty_filter = || SubscribeArgs {
            filter: "bench/#".to_owned(),
        };
        let empty_publish = || PublishArgs {
            topic: "bench/%i".to_owned(),
            size: 64,
            rate: 0.0,
            inflight: 64,
        };
        let (mode, publish, subscribe, common) = match cli.command {
            Command::Conn(args) => (
                Mode::Conn { count: args.count },
                empty_publish(),
                empty_filter(),
                args.common,
            ),
            Command::Pub(args) => (
                Mode::Pub { pubs: args.count },
                args.publish,
                empty_filter(),
                args.common,
            ),
            Command::Sub(args) => (
                Mode::Sub { subs: args.count },
                empty_publish(),
                args.subscribe,
                args.common,
            ),
            Command::Run(args) => (
                Mode::Run {
                    pubs: args.pubs,
                    subs: args.subs,
                },
                args.publish,
                args.subscribe,
                args.common,
            ),
        };
        let qos = QoS::from_bits(common.qos).ok_or("--qos must be 0, 1 or 2")?;
        if publish.size < HEADER_LEN {
            return Err(format!(
                "--size {} is below the {HEADER_LEN}-byte payload header",
                publish.size
            ));
        }
        if publish.inflight == 0 {
            return Err("--inflight must be at least 1".to_owned());
        }
        let seconds = |name: &str, value: f64, min: f64| -> Result<Duration, String> {
            if value.is_finite() && value >= min && value <= 86_400.0 {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(format!("--{name} {value}: expected {min} to 86400 seconds"))
            }
        };
        let duration = seconds("duration", common.duration, 0.001)?;
        let drain = seconds("drain", common.drain, 0.0)?;
        let connect_timeout = seconds("connect-timeout", common.connect_timeout, 0.001)?;
        let reconnect_at = common
            .reconnect_at
            .map(|at| seconds("reconnect-at", at, 0.0))
            .transpose()?;
        if reconnect_at.is_some() && !common.persistent {
            return Err("--reconnect-at resumes sessions: it needs --persistent".to_owned());
        }
        let rate = positive_rate("rate", publish.rate)?;
        let connect_rate = positive_rate("connect-rate", common.connect_rate)?;
        if common.processes == 0 || common.processes > 64 {
            return Err("--processes must be 1 to 64".to_owned());
        }
        if (common.sub_host.is_some() || common.sub_port.is_some())
            && common.transport != TransportKind::Tcp
        {
            // TLS would check the subscribers' node against --host's name,
            // and WebSocket would send it in the request.
            return Err("--sub-host and --sub-port work over --transport tcp only".to_owned());
        }
        if common.transport.is_tls() && common.cafile.is_none() && !common.insecure {
            return Err("TLS needs --cafile FILE or --insecure".to_owned());
        }
        if mode.pubs() > 0 {
            check_pattern(&publish.topic, false)?;
        }
        if mode.subs() > 0 {
            check_pattern(&subscribe.filter, true)?;
        }
        let source_ips = match &common.source_ips {
            Some(list) => parse_source_ips(list)?,
            None => Vec::new(),
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let processes = if common.shard.is_some() {
            1
        } else {
            common.processes
        };
        let threads = common
            .threads
            .unwrap_or_else(|| (cores / processes as usize).max(1))
            .max(1);
        let session_expiry =
            common
                .session_expiry
                .unwrap_or(if common.persistent { 3600 } else { 0 });
        Ok(Self {
            mode,
            server_name: common
                .server_name
                .clone()
                .unwrap_or_else(|| common.host.clone()),
            sub_host: common.sub_host.unwrap_or_else(|| common.host.clone()),
            sub_port: common.sub_port.unwrap_or(common.port),
            host: common.host,
            port: common.port,
            transport: common.transport,
            ws_path: common.ws_path,
            cafile: common.cafile,
            insecure: common.insecure,
            version: common.mqtt.0,
            qos,
            topic: publish.topic,
            filter: subscribe.filter,
            size: publish.size,
            rate,
            inflight: publish.inflight,
            connect_rate,
            max_connecting: common.max_connecting.max(1),
            connect_timeout,
            keep_alive: common.keep_alive,
            persistent: common.persistent,
            session_expiry,
            reconnect_at,
            reconnect_pause: Duration::from_millis(common.reconnect_pause),
            duration,
            drain,
            drain_idle: Duration::from_millis(common.drain_idle),
            source_ips,
            processes,
            threads,
            json: common.json,
            broker_pid: common.broker_pid,
            client_id_prefix: common.client_id_prefix,
            username: common.username,
            password: common.password,
            is_child: common.shard.is_some(),
            shard: common.shard.unwrap_or(Shard::WHOLE),
            run_id: common.run_id,
        })
    }

    /// The publish topic of publisher `index`.
    pub fn topic_of(&self, index: u32) -> String {
        expand(&self.topic, index)
    }

    /// The subscription filter of subscriber `index`.
    pub fn filter_of(&self, index: u32) -> String {
        expand(&self.filter, index)
    }

    /// This process's share of the connect rate.
    pub fn local_connect_rate(&self) -> Option<f64> {
        self.connect_rate
            .map(|rate| rate / f64::from(self.shard.count))
    }
}

/// A rate option: 0 means unbounded (`None`); negative or not finite is refused.
fn positive_rate(name: &str, value: f64) -> Result<Option<f64>, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("--{name} {value}: expected 0 or more"));
    }
    Ok((value > 0.0).then_some(value))
}

/// Replaces every `%i` in `pattern` with `index`.
pub fn expand(pattern: &str, index: u32) -> String {
    if pattern.contains(INDEX_PLACEHOLDER) {
        pattern.replace(INDEX_PLACEHOLDER, &index.to_string())
    } else {
        pattern.to_owned()
    }
}

/// Checks a topic or filter pattern as it will be for some index.
fn check_pattern(pattern: &str, is_filter: bool) -> Result<(), String> {
    let sample = expand(pattern, 0);
    let checked = if is_filter {
        validate_topic_filter(&sample)
    } else {
        validate_topic_name(&sample)
    };
    checked.map_err(|error| {
        let what = if is_filter { "filter" } else { "topic" };
        format!("{what} `{pattern}`: {error}")
    })
}

/// Parses `--source-ips`: comma-separated addresses and inclusive IPv4 ranges
/// `A-B`, at most 65,536 addresses in all.
pub fn parse_source_ips(list: &str) -> Result<Vec<IpAddr>, String> {
    const MOST: usize = 65_536;
    let mut ips = Vec::new();
    for item in list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if let Some((from, to)) = item.split_once('-') {
            let parse = |text: &str| {
                text.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("`{text}` in --source-ips is not an IPv4 address"))
            };
            let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
            if from > to || (to - from) as usize >= MOST {
                return Err(format!("--source-ips range `{item}` is empty or too long"));
            }
            ips.extend((from..=to).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            ips.push(
                item.parse()
                    .map_err(|_| format!("`{item}` in --source-ips is not an address"))?,
            );
        }
        if ips.len() > MOST {
            return Err("--source-ips names more than 65536 addresses".to_owned());
        }
    }
    if ips.is_empty() {
        return Err("--source-ips is empty".to_owned());
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &str) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(args.split_whitespace()).map_err(|e| e.to_string())?;
        Settings::from_cli(cli)
    }

    #[test]
    fn run_defaults_are_a_small_fan_in() {
        let s = settings("rookery-bench run").unwrap();
        assert_eq!(s.mode, Mode::Run { pubs: 10, subs: 1 });
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 1883));
        assert_eq!(s.version, ProtocolVersion::V5);
        assert_eq!(s.qos, QoS::AtMostOnce);
        assert_eq!((s.size, s.rate, s.inflight), (64, None, 64));
        assert_eq!(s.topic_of(7), "bench/7");
        assert_eq!(s.filter_of(7), "bench/#");
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.session_expiry, 0);
        assert_eq!(s.shard, Shard::WHOLE);
        assert!(!s.is_child);
    }

    /// Subscribers go where publishers go unless told otherwise, and only
    /// over TCP elsewhere.
    #[test]
    fn subscribers_connect_to_another_node_over_tcp_only() {
        let s = settings("rookery-bench run --host 127.0.0.2 -p 2883").unwrap();
        assert_eq!((s.sub_host.as_str(), s.sub_port), ("127.0.0.2", 2883));
        let s = settings("rookery-bench run -p 2883 --sub-host 127.0.0.3 --sub-port 3883").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 2883));
        assert_eq!((s.sub_host.as_str(), s.sub_port), ("127.0.0.3", 3883));
        let refused = settings("rookery-bench run --transport ws --sub-port 3883").unwrap_err();
        assert!(refused.contains("tcp only"), "{refused}");
    }

    #[test]
    fn every_option_parses() {
        let s = settings(
            "rookery-bench run --pubs 50 --subs 50 -t bench/%i/x -f $share/g/bench/%i/+ -s 256 \
             -r 100 --inflight 8 --host localhost -p 2883 --transport wss --ws-path /ws \
             --insecure --server-name example --mqtt 3.1.1 -q 2 --connect-rate 0 \
             --max-connecting 10 --connect-timeout 2.5 -k 30 --persistent --reconnect-at 3 \
             --reconnect-pause 500 -d 5 --drain 2 --drain-idle 200 \
             --source-ips 127.0.0.1-127.0.0.3,127.0.0.9 --processes 4 --threads 3 --json - \
             --broker-pid 42 --client-id-prefix x- --username u --password p",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Run { pubs: 50, subs: 50 });
        assert_eq!(s.topic_of(3), "bench/3/x");
        assert_eq!(s.filter_of(3), "$share/g/bench/3/+");
        assert_eq!((s.size, s.rate, s.inflight), (256, Some(100.0), 8));
        assert_eq!((s.host.as_str(), s.port), ("localhost", 2883));
        assert_eq!(s.transport, TransportKind::Wss);
        assert_eq!(s.ws_path, "/ws");
        assert!(s.insecure);
        assert_eq!(s.server_name, "example");
        assert_eq!(s.version, ProtocolVersion::V3_1_1);
        assert_eq!(s.qos, QoS::ExactlyOnce);
        assert_eq!(s.connect_rate, None);
        assert_eq!(s.max_connecting, 10);
        assert_eq!(s.connect_timeout, Duration::from_millis(2500));
        assert_eq!(s.keep_alive, 30);
        assert!(s.persistent);
        assert_eq!(s.session_expiry, 3600);
        assert_eq!(s.reconnect_at, Some(Duration::from_secs(3)));
        assert_eq!(s.reconnect_pause, Duration::from_millis(500));
        assert_eq!(s.duration, Duration::from_secs(5));
        assert_eq!(s.drain, Duration::from_secs(2));
        assert_eq!(s.drain_idle, Duration::from_millis(200));
        assert_eq!(s.source_ips.len(), 4);
        assert_eq!((s.processes, s.threads), (4, 3));
        assert_eq!(s.json.as_deref(), Some("-"));
        assert_eq!(s.broker_pid, vec![42]);
        assert_eq!(s.client_id_prefix, "x-");
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.password.as_deref(), Some("p"));
    }

    #[test]
    fn conn_pub_and_sub_take_a_count() {
        assert_eq!(
            settings("rookery-bench conn -c 2000").unwrap().mode,
            Mode::Conn { count: 2000 }
        );
        assert_eq!(
            settings("rookery-bench pub -c 3 -q 1").unwrap().mode,
            Mode::Pub { pubs: 3 }
        );
        assert_eq!(
            settings("rookery-bench sub -c 4 -f a/+").unwrap().mode,
            Mode::Sub { subs: 4 }
        );
    }

    #[test]
    fn a_child_runs_its_shard_in_one_process() {
        let s = settings("rookery-bench run --processes 4 --processes 1 --shard 2/4 --run-id 9")
            .unwrap();
        assert!(s.is_child);
        assert_eq!(s.shard, Shard { index: 2, count: 4 });
        assert_eq!(s.processes, 1);
        assert_eq!(s.run_id, Some(9));
        assert!(s.shard.owns(6) && !s.shard.owns(7));
    }

    #[test]
    fn bad_options_are_refused() {
        for args in [
            "rookery-bench run -q 3",
            "rookery-bench run -s 10",
            "rookery-bench run --inflight 0",
            "rookery-bench run -d 0",
            "rookery-bench run -r -1",
            "rookery-bench run --transport tls",
            "rookery-bench run --mqtt 4.0",
            "rookery-bench run --processes 0",
            "rookery-bench run --reconnect-at 2",
            "rookery-bench run -t bench/#",
            "rookery-bench run -f bench/#/x",
            "rookery-bench run --source-ips 127.0.0.9-127.0.0.1",
            "rookery-bench run --source-ips nonsense",
            "rookery-bench run --shard 4/4",
        ] {
            assert!(settings(args).is_err(), "{args} was accepted");
        }
    }

    #[test]
    fn source_ip_ranges_expand_inclusively() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(ips[7], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8)));
        let ips = parse_source_ips("127.0.0.1, ::1,127.0.1.255-127.0.2.0").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], IpAddr::V4(Ipv4Addr::new(127, 0, 2, 0)));
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.0-127.1.0.0").is_err());
    }

    #[test]
    fn patterns_replace_every_placeholder() {
        assert_eq!(expand("a/%i/b/%i", 12), "a/12/b/12");
        assert_eq!(expand("plain", 12), "plain");
    }
}
