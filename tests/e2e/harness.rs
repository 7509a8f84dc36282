//! Starts the broker under test as a child process and stops it again.
//!
//! The default target is the real `rookery` binary of this package (or
//! `ROOKERY_E2E_BIN`, e.g. a release build); `ROOKERY_E2E_BROKER=mosquitto`
//! runs the same tests against Mosquitto 2 (`/usr/sbin/mosquitto`, or
//! `ROOKERY_E2E_MOSQUITTO`) as a reference broker, to check that a test expects
//! what the spec says rather than what Rookery happens to do.
//!
//! Every broker gets a fresh temporary directory (data directory and
//! configuration), listens on a loopback port chosen by the OS, and has its
//! output captured: a test that fails prints the broker's log. Every wait is
//! bounded by [`TIMEOUT`], so a broken broker fails a test instead of hanging
//! it. Brokers that tests share are started once per test binary and ended by
//! a small watchdog process when the test binary exits. The process handling
//! (ready lines, signals, the watchdog) is `rookery_testkit::process`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rookery_testkit::{Process, Signal, Watchdog, free_port};
pub use rookery_testkit::{QUIET, TIMEOUT};

/// The broker the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The `rookery` binary of this package (the default, and what CI runs).
    Rookery,
    /// Mosquitto 2, the reference broker.
    Mosquitto,
}

/// The broker selected by `ROOKERY_E2E_BROKER` (`rookery` or `mosquitto`).
pub fn target() -> Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    *TARGET.get_or_init(|| match std::env::var("ROOKERY_E2E_BROKER").as_deref() {
        Ok("mosquitto") => Target::Mosquitto,
        Ok("rookery") | Ok("") | Err(_) => Target::Rookery,
        Ok(other) => panic!("ROOKERY_E2E_BROKER={other}: expected `rookery` or `mosquitto`"),
    })
}

/// Whether to skip a test of something only Rookery promises (its defaults,
/// its metrics); says why on stderr when it skips.
pub fn skip_unless_rookery(what: &str) -> bool {
    let skip = target() != Target::Rookery;
    if skip {
        eprintln!("skipped: {what} is Rookery-specific");
    }
    skip
}

/// Whether to skip a test because the reference broker itself deviates from
/// the spec there; `why` names the deviation.
pub fn skip_on_mosquitto(why: &str) -> bool {
    let skip = target() == Target::Mosquitto;
    if skip {
        eprintln!("skipped against Mosquitto: {why}");
    }
    skip
}

/// A name unique within this test run, for client identifiers and topics.
/// Short enough for MQTT 3.1's 23-character client identifiers.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Settings a test needs beyond the broker's defaults. `None` keeps the
/// default. Each is written into the target broker's own configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// QoS 1 and 2 publishes a client may have unacknowledged (CONNACK Receive Maximum).
    pub receive_maximum: Option<u16>,
    /// The largest packet the broker accepts (CONNACK Maximum Packet Size).
    pub max_packet_size: Option<u32>,
    /// The highest topic alias a client may use (CONNACK Topic Alias Maximum).
    pub topic_alias_maximum: Option<u16>,
    /// The longest keep alive granted (CONNACK Server Keep Alive above it).
    pub max_keep_alive: Option<u16>,
    /// The highest QoS accepted (CONNACK Maximum QoS).
    pub maximum_qos: Option<u8>,
    /// Whether retained messages are supported (CONNACK Retain Available).
    pub retain_available: Option<bool>,
    /// Messages queued for one session beyond the in-flight window.
    pub max_queued_messages: Option<usize>,
    /// How long a publisher is paused for a full session queue (Rookery only).
    pub publisher_pause_ms: Option<u64>,
    /// Seconds between `$SYS` updates.
    pub sys_interval_s: Option<u64>,
    /// Connections open at once from one address (Rookery only).
    pub max_connections_per_address: Option<usize>,
    /// Subscriptions one session may hold (Rookery only).
    pub max_subscriptions: Option<usize>,
    /// PUBLISH packets per second one client may send (Rookery only).
    pub messages_rate: Option<u32>,
    /// Seconds a client may take no data before it is disconnected
    /// (Rookery only).
    pub send_timeout_s: Option<u64>,
    /// Bytes a session's mailbox and queue may each hold.
    pub max_queued_bytes: Option<usize>,
    /// Listeners besides the plain TCP one (named `tcp`).
    pub listeners: Vec<Listener>,
    /// Authentication and ACLs, in the files' own (Mosquitto's) formats.
    pub auth: Option<Auth>,
    /// The TCP listener's address instead of `127.0.0.1:0` (Rookery only).
    pub listen: Option<&'static str>,
    /// TOML appended to Rookery's configuration; `{dir}` in it is the
    /// broker's directory, where [`Settings::files`] are.
    pub extra_toml: Option<String>,
    /// Files written into the broker's directory before it starts.
    pub files: Vec<(String, Vec<u8>)>,
    /// More `[broker.limits]` keys, as `key = value` lines (Rookery only).
    pub rookery_limits: Vec<String>,
    /// The HTTP listener's address instead of a free loopback port
    /// (Rookery only); its port must be free.
    pub http_listen: Option<SocketAddr>,
}

/// `[broker.auth]` for Rookery, `allow_anonymous`, `password_file` and
/// `acl_file` for Mosquitto: both read the same file formats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Whether clients without credentials are let in.
    pub allow_anonymous: bool,
    /// The password file's text (`user:hash` lines).
    pub password_file: Option<String>,
    /// The ACL file's text.
    pub acl_file: Option<String>,
    /// SCRAM-SHA-256 verifiers, written beside the password file (Rookery).
    pub scram_file: Option<String>,
}

impl Auth {
    /// Writes the files into `dir`; their paths.
    fn write(&self, dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
        let write = |name: &str, text: &Option<String>| {
            text.as_ref().map(|text| {
                let path = dir.join(name);
                std::fs::write(&path, text).expect("write an auth file");
                path
            })
        };
        write("passwords.scram", &self.scram_file);
        (
            write("passwords", &self.password_file),
            write("acl", &self.acl_file),
        )
    }
}

/// A listener besides the plain TCP one; [`Broker::listener`] finds it by
/// [`Listener::name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// MQTT over TLS, named `tls`.
    Tls(TlsPem),
    /// MQTT over WebSocket at `/mqtt`, named `ws`.
    Ws,
    /// MQTT over WebSocket over TLS at `/mqtt`, named `wss`.
    Wss(TlsPem),
    /// Plain TCP expecting a PROXY protocol header first, named `proxy`
    /// (Rookery only: Mosquitto has no PROXY protocol).
    Proxy,
}

impl Listener {
    /// The listener's name in the broker's configuration and ready lines.
    pub fn name(&self) -> &'static str {
        match self {
            Listener::Tls(_) => "tls",
            Listener::Ws => "ws",
            Listener::Wss(_) => "wss",
            Listener::Proxy => "proxy",
        }
    }
}

/// A TLS listener's certificate and key, and optionally the CA that client
/// certificates are verified against, as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The server's certificate (chain).
    pub cert: String,
    /// The server's private key.
    pub key: String,
    /// The CA of client certificates, and whether a client must present one.
    pub client_ca: Option<(String, bool)>,
    /// The client certificate's CN is the username.
    pub identity_as_username: bool,
}

/// Paths of a [`TlsPem`] written into the broker's directory.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<(PathBuf, bool)>,
}

impl TlsPem {
    fn write(&self, dir: &Path, name: &str) -> TlsFiles {
        let write = |file: String, pem: &str| {
            let path = dir.join(file);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        TlsFiles {
            cert: write(format!("{name}.crt"), &self.cert),
            key: write(format!("{name}.key"), &self.key),
            client_ca: self
                .client_ca
                .as_ref()
                .map(|(ca, required)| (write(format!("{name}-ca.crt"), ca), *required)),
        }
    }
}

/// A running broker under test, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Broker {
    settings: Settings,
    dir: tempfile::TempDir,
    process: Process,
    addr: SocketAddr,
}

impl Broker {
    /// Starts a broker with its defaults in a fresh directory.
    pub fn start() -> Broker {
        Broker::start_with(Settings::default())
    }

    /// Starts a broker with `settings` in a fresh directory.
    pub fn start_with(settings: Settings) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("rookery-e2e-")
            .tempdir()
            .expect("create the broker's temporary directory");
        let mut broker = Broker {
            settings,
            dir,
            process: Process::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        broker.launch();
        broker
    }

    /// The broker's directory (its configuration and files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends the broker `signal`.
    pub fn signal(&self, signal: Signal) {
        self.process.send(signal);
    }

    /// The address of the MQTT TCP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's resident memory now, in KiB (`VmRSS` of
    /// `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.process.pid().expect("the broker is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// The address a named listener reported ready (`tcp`, `metrics`, ...),
    /// waiting for its line for up to [`TIMEOUT`].
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(addr) = self.process.listener(name) {
                return Some(addr);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the broker has written to stderr and stdout so far, over all
    /// of its restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The broker's resident memory now, in bytes (`VmRSS` of
    /// `/proc/PID/status`); `None` when it is not running.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()?)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Kills the broker with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        if target() == Target::Mosquitto {
            // Mosquitto saves its database after it acknowledges, so a kill
            // right after a PUBACK can lose the message. Rookery acknowledges
            // only what is committed and gets no such grace.
            thread::sleep(Duration::from_millis(300));
        }
        self.process.kill9();
    }

    /// Stops the broker with SIGTERM and returns how it exited; SIGKILL if it
    /// has not exited within [`TIMEOUT`].
    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        self.process.sigterm()
    }

    /// Starts the broker again on the same data directory (after [`Broker::kill9`]
    /// or [`Broker::sigterm`]). The listener address may change.
    pub fn restart(&mut self) {
        assert!(
            !self.process.is_running(),
            "restart of a broker that is running"
        );
        self.process.note("---- restarted ----");
        self.launch();
    }

    /// The value of one series on the broker's Prometheus endpoint, e.g.
    /// `rookery_messages_dropped_total{reason="queue_full"}`; 0 when the
    /// broker has not reported it (yet).
    pub async fn metric(&self, series: &str) -> f64 {
        let addr = self
            .listener("metrics")
            .expect("a `listener ready listener=metrics address=...` line in the log");
        rookery_testkit::metric(addr, series)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(&mut self) {
        let names: Vec<&'static str> = std::iter::once("tcp")
            .chain(self.settings.listeners.iter().map(Listener::name))
            .collect();
        let (mut command, metrics, mosquitto_ports) = match target() {
            Target::Rookery => {
                // Chosen here, so that the address is known before the log
                // says it.
                let metrics = self.settings.http_listen.unwrap_or_else(|| {
                    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)))
                });
                (self.rookery_command(metrics), Some(metrics), None)
            }
            Target::Mosquitto => {
                let ports: Vec<u16> = names
                    .iter()
                    .map(|_| free_port(Ipv4Addr::LOCALHOST))
                    .collect();
                (self.mosquitto_command(&ports), None, Some(ports))
            }
        };
        // Shared brokers live in statics that are never dropped: the watchdog
        // stops them gracefully when the test binary exits.
        let watchdog = Watchdog::Term {
            grace: Duration::from_secs(3),
        };
        self.process.spawn(&mut command, self.dir.path(), watchdog);
        if let Some(metrics) = metrics {
            self.process.set_listener("metrics", metrics);
        }
        for (i, name) in names.iter().enumerate() {
            let ready = match &mosquitto_ports {
                None => self.wait_for_listener(name),
                Some(ports) => self.wait_for_port(ports[i]),
            };
            match ready {
                Ok(addr) => {
                    self.process.set_listener(name, addr);
                    if *name == "tcp" {
                        self.addr = addr;
                    }
                }
                Err(why) => {
                    let log = self.log();
                    self.process.send(Signal::Kill);
                    self.process.reap(TIMEOUT);
                    panic!("the broker did not become ready: {why}\n---- broker log ----\n{log}");
                }
            }
        }
    }

    fn rookery_command(&mut self, metrics: SocketAddr) -> Command {
        let data = self.dir.path().join("data");
        let config = self.dir.path().join("rookery.toml");
        let mut toml = rookery_config(&self.settings, self.dir.path());
        toml.push_str(&rookery_listeners(
            &self.settings.listeners,
            self.dir.path(),
        ));
        if let Some(extra) = &self.settings.extra_toml {
            toml.push_str(&extra.replace("{dir}", &self.dir.path().display().to_string()));
        }
        for (name, bytes) in &self.settings.files {
            std::fs::write(self.dir.path().join(name), bytes).expect("write a broker file");
        }
        std::fs::write(&config, toml).expect("write rookery.toml");
        let binary = std::env::var_os("ROOKERY_E2E_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rookery")));
        let mut command = Command::new(binary);
        command.arg("serve");
        if self.settings.listeners.is_empty() {
            // Otherwise the configuration names every listener: `--listen`
            // would replace them all.
            command.args(["--listen", self.settings.listen.unwrap_or("127.0.0.1:0")]);
        }
        command
            .arg("--data-dir")
            .arg(&data)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(["--store-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command
    }

    fn mosquitto_command(&self, ports: &[u16]) -> Command {
        // Mosquitto started as root drops to the `mosquitto` user, which must
        // still write its persistence file here.
        let _ = std::fs::set_permissions(
            self.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        let config = self.dir.path().join("mosquitto.conf");
        let mut conf = mosquitto_config(&self.settings, ports[0], self.dir.path());
        for (listener, port) in self.settings.listeners.iter().zip(&ports[1..]) {
            conf.push_str(&mosquitto_listener(listener, *port, self.dir.path()));
        }
        std::fs::write(&config, conf).expect("write mosquitto.conf");
        let binary = std::env::var_os("ROOKERY_E2E_MOSQUITTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
        let mut command = Command::new(binary);
        command.arg("-c").arg(&config);
        command
    }

    fn wait_for_listener(&mut self, name: &str) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(addr) = self.process.listener(name) {
                return Ok(addr);
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "no `listener ready listener={name}` line in {TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_port(&mut self, port: u16) -> Result<SocketAddr, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(addr);
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(format!("nothing listening on {addr} after {TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn check_running(&mut self) -> Result<(), String> {
        self.process
            .check_running()
            .map_err(|why| format!("the broker: {why}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- broker log ----\n{}\n---- end of broker log ----",
                self.log()
            );
        }
        if self.process.is_running() {
            self.process.send(Signal::Term);
            if self.process.reap(Duration::from_secs(5)).is_none() {
                eprintln!("the broker ignored SIGTERM for 5 s; killed");
            }
        }
    }
}

/// A broker shared by the tests of this binary; prints the tail of its log
/// when the test holding it fails.
#[derive(Debug)]
pub struct Shared(&'static Broker);

impl std::ops::Deref for Shared {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        self.0
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if thread::panicking() {
            let tail = self.0.process.log_tail(200);
            eprintln!("---- shared broker log (last {} lines) ----", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
            eprintln!("---- end of broker log ----");
        }
    }
}

/// The shared broker with default settings. Tests that use it keep to their
/// own client identifiers and topics ([`unique`]).
pub fn shared() -> Shared {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    Shared(BROKER.get_or_init(Broker::start))
}

/// The settings of [`limited`]: small limits a test can reach quickly.
pub fn limited_settings() -> Settings {
    Settings {
        receive_maximum: Some(8),
        max_packet_size: Some(4096),
        topic_alias_maximum: Some(4),
        max_keep_alive: Some(20),
        sys_interval_s: Some(1),
        ..Settings::default()
    }
}

/// The shared broker with [`limited_settings`].
pub fn limited() -> Shared {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    Shared(BROKER.get_or_init(|| Broker::start_with(limited_settings())))
}

/// The shared broker that supports at most QoS 1 and no retained messages.
pub fn restricted() -> Shared {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    Shared(BROKER.get_or_init(|| {
        Broker::start_with(Settings {
            maximum_qos: Some(1),
            retain_available: Some(false),
            ..Settings::default()
        })
    }))
}

/// Rookery's configuration file for `settings`: the `[broker]` section is
/// `rookery_broker::BrokerConfig`, its limits `[broker.limits]`.
fn rookery_config(settings: &Settings, dir: &Path) -> String {
    let mut broker = String::new();
    let mut limits = String::new();
    if let Some(v) = settings.sys_interval_s {
        writeln!(broker, "sys_interval_s = {v}").ok();
    }
    if let Some(v) = settings.receive_maximum {
        writeln!(limits, "receive_maximum = {v}").ok();
    }
    if let Some(v) = settings.max_packet_size {
        writeln!(limits, "max_packet_size = {v}").ok();
    }
    if let Some(v) = settings.topic_alias_maximum {
        writeln!(limits, "topic_alias_maximum = {v}").ok();
    }
    if let Some(v) = settings.max_keep_alive {
        writeln!(limits, "max_keep_alive = {v}").ok();
    }
    if let Some(v) = settings.maximum_qos {
        writeln!(limits, "maximum_qos = {v}").ok();
    }
    if let Some(v) = settings.retain_available {
        writeln!(limits, "retain_available = {v}").ok();
    }
    if let Some(v) = settings.max_queued_messages {
        writeln!(limits, "max_queued_messages = {v}").ok();
    }
    if let Some(v) = settings.publisher_pause_ms {
        writeln!(limits, "publisher_pause_ms = {v}").ok();
    }
    if let Some(v) = settings.max_connections_per_address {
        writeln!(limits, "max_connections_per_address = {v}").ok();
    }
    if let Some(v) = settings.max_subscriptions {
        writeln!(limits, "max_subscriptions = {v}").ok();
    }
    if let Some(v) = settings.messages_rate {
        writeln!(limits, "messages_rate = {v}").ok();
    }
    if let Some(v) = settings.max_queued_bytes {
        writeln!(limits, "max_queued_bytes = {v}").ok();
    }
    if let Some(v) = settings.send_timeout_s {
        writeln!(limits, "send_timeout_s = {v}").ok();
    }
    for line in &settings.rookery_limits {
        writeln!(limits, "{line}").ok();
    }
    let mut config = String::new();
    if !broker.is_empty() {
        writeln!(config, "[broker]\n{broker}").ok();
    }
    if !limits.is_empty() {
        writeln!(config, "[broker.limits]\n{limits}").ok();
    }
    if let Some(auth) = &settings.auth {
        let (passwords, acl) = auth.write(dir);
        writeln!(config, "[broker.auth]").ok();
        writeln!(config, "allow_anonymous = {}", auth.allow_anonymous).ok();
        // Tests refuse many clients; the delay is checked elsewhere.
        writeln!(config, "failure_delay_ms = 10").ok();
        if let Some(path) = passwords {
            writeln!(config, "password_file = {:?}", path.display().to_string()).ok();
        }
        if let Some(path) = acl {
            writeln!(config, "acl_file = {:?}", path.display().to_string()).ok();
        }
    }
    config
}

/// Mosquitto's configuration for `settings`, listening on `port`, persisting
/// into `dir` after every change (so that `kill -9` loses nothing).
fn mosquitto_config(settings: &Settings, port: u16, dir: &Path) -> String {
    let mut conf = String::new();
    writeln!(conf, "listener {port} 127.0.0.1").ok();
    match &settings.auth {
        None => {
            writeln!(conf, "allow_anonymous true").ok();
        }
        Some(auth) => {
            let (passwords, acl) = auth.write(dir);
            writeln!(conf, "allow_anonymous {}", auth.allow_anonymous).ok();
            if let Some(path) = passwords {
                writeln!(conf, "password_file {}", path.display()).ok();
            }
            if let Some(path) = acl {
                writeln!(conf, "acl_file {}", path.display()).ok();
            }
        }
    }
    writeln!(conf, "persistence true").ok();
    writeln!(conf, "persistence_location {}/", dir.display()).ok();
    writeln!(conf, "autosave_interval 1").ok();
    writeln!(conf, "autosave_on_changes true").ok();
    writeln!(conf, "log_dest stderr").ok();
    writeln!(conf, "log_type all").ok();
    if let Some(v) = settings.receive_maximum {
        // Mosquitto announces max_inflight_messages as its Receive Maximum.
        writeln!(conf, "max_inflight_messages {v}").ok();
    }
    if let Some(v) = settings.max_packet_size {
        writeln!(conf, "max_packet_size {v}").ok();
    }
    if let Some(v) = settings.topic_alias_maximum {
        writeln!(conf, "max_topic_alias {v}").ok();
    }
    if let Some(v) = settings.max_keep_alive {
        writeln!(conf, "max_keepalive {v}").ok();
    }
    if let Some(v) = settings.maximum_qos {
        writeln!(conf, "max_qos {v}").ok();
    }
    if let Some(v) = settings.retain_available {
        writeln!(conf, "retain_available {v}").ok();
    }
    if let Some(v) = settings.max_queued_messages {
        writeln!(conf, "max_queued_messages {v}").ok();
    }
    if let Some(v) = settings.sys_interval_s {
        writeln!(conf, "sys_interval {v}").ok();
    }
    conf
}

/// `[[broker.listeners]]` entries for the plain TCP listener and `listeners`;
/// empty when there are no extra listeners (then `--listen` makes the TCP one).
fn rookery_listeners(listeners: &[Listener], dir: &Path) -> String {
    if listeners.is_empty() {
        return String::new();
    }
    let mut toml = String::new();
    let mut entry = |name: &str, kind: &str, extra: String| {
        writeln!(
            toml,
            "\n[[broker.listeners]]\nname = \"{name}\"\nkind = \"{kind}\"\naddress = \"127.0.0.1:0\"\n{extra}"
        )
        .ok();
    };
    entry("tcp", "tcp", String::new());
    let tls = |pem: &TlsPem, name: &str| {
        let files = pem.write(dir, name);
        let mut table = format!(
            "tls = {{ cert_file = {:?}, key_file = {:?}",
            files.cert.display().to_string(),
            files.key.display().to_string()
        );
        if let Some((ca, required)) = files.client_ca {
            write!(
                table,
                ", client_ca_file = {:?}, require_client_cert = {required}",
                ca.display().to_string()
            )
            .ok();
        }
        table.push_str(" }\n");
        if pem.identity_as_username {
            table.push_str("use_identity_as_username = true\n");
        }
        table
    };
    for listener in listeners {
        let name = listener.name();
        match listener {
            Listener::Tls(pem) => entry(name, "tls", tls(pem, name)),
            Listener::Ws => entry(name, "ws", "ws_path = \"/mqtt\"\n".into()),
            Listener::Wss(pem) => entry(
                name,
                "wss",
                format!("ws_path = \"/mqtt\"\n{}", tls(pem, name)),
            ),
            Listener::Proxy => entry(name, "tcp", "proxy_protocol = true\n".into()),
        }
    }
    toml
}

/// A Mosquitto `listener` block for `listener` on `port`.
fn mosquitto_listener(listener: &Listener, port: u16, dir: &Path) -> String {
    let mut conf = format!("\nlistener {port} 127.0.0.1\n");
    let mut tls = |pem: &TlsPem, name: &str| {
        let files = pem.write(dir, name);
        writeln!(conf, "certfile {}", files.cert.display()).ok();
        writeln!(conf, "keyfile {}", files.key.display()).ok();
        if let Some((ca, required)) = files.client_ca {
            writeln!(conf, "cafile {}", ca.display()).ok();
            writeln!(conf, "require_certificate {required}").ok();
        }
        if pem.identity_as_username {
            writeln!(conf, "use_identity_as_username true").ok();
        }
    };
    match listener {
        Listener::Tls(pem) => tls(pem, "tls"),
        Listener::Wss(pem) => {
            tls(pem, "wss");
            conf.push_str("protocol websockets\n");
        }
        Listener::Ws => conf.push_str("protocol websockets\n"),
        Listener::Proxy => panic!("Mosquitto has no PROXY protocol listener"),
    }
    conf
}

#[test]
fn settings_become_each_brokers_configuration() {
    let settings = limited_settings();
    let toml = rookery_config(&settings, Path::new("/tmp/x"));
    assert!(toml.starts_with("[broker]\nsys_interval_s = 1\n"), "{toml}");
    assert!(
        toml.contains("[broker.limits]\nreceive_maximum = 8\n"),
        "{toml}"
    );
    let conf = mosquitto_config(&settings, 1883, Path::new("/tmp/x"));
    assert!(conf.contains("listener 1883 127.0.0.1\n"), "{conf}");
    assert!(conf.contains("max_packet_size 4096\n"), "{conf}");
}
