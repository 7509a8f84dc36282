//! The broker's settings. Every field has a default that is safe without a
//! configuration file (listen on loopback only, like Mosquitto 2); the binary
//! fills them from flags, a TOML file and `ROOKERY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use rookery_auth::AuthConfig;
use serde::{Deserialize, Serialize};

/// Everything the edge needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This edge's name in the store (owner of its clients' sessions).
    pub edge_id: String,
    /// Where clients connect.
    pub listeners: Vec<ListenerConfig>,
    /// What clients are told in CONNACK and held to.
    pub limits: Limits,
    /// Seconds between `$SYS` updates; 0 turns `$SYS` off.
    pub sys_interval_s: u64,
    /// Who may connect and what each client may publish and subscribe to.
    pub auth: AuthConfig,
    /// Seconds a graceful stop (SIGTERM) may take in all: clients told and
    /// gone, their last writes and the store's leadership handed over.
    /// Below Kubernetes' default grace period of 30 s, so that the node
    /// exits before it is killed.
    pub shutdown_grace_s: u64,
    /// Where MQTT 5 clients are sent when this node stops: DISCONNECT 0x9C
    /// (Use another server) with this Server Reference, instead of 0x8B
    /// (Server shutting down).
    pub server_reference: Option<String>,
}

/// The default of [`BrokerConfig::shutdown_grace_s`].
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 25;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            edge_id: "rookery-1".into(),
            listeners: vec![ListenerConfig::default()],
            limits: Limits::default(),
            sys_interval_s: 10,
            auth: AuthConfig::default(),
            shutdown_grace_s: DEFAULT_SHUTDOWN_GRACE_S,
            server_reference: None,
        }
    }
}

/// How a listener carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The kind as configured: `tcp`, `tls`, `ws` or `wss`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and metrics (`tcp`, `tls`, ...); defaults to the kind.
    pub name: String,
    /// What the listener speaks: TCP, TLS, WebSocket or secure WebSocket.
    pub kind: ListenerKind,
    /// Where it listens.
    pub address: SocketAddr,
    /// Expect a PROXY protocol v1 or v2 header first (TCP and TLS listeners
    /// behind a load balancer); the client address it names is the peer's.
    pub proxy_protocol: bool,
    /// The HTTP path a WebSocket client must request.
    pub ws_path: String,
    /// Certificate and key of `tls` and `wss` listeners.
    pub tls: Option<TlsConfig>,
    /// A verified client certificate's identity (its first CN) is the
    /// client's username; username and password in CONNECT are ignored
    /// (Mosquitto's `use_identity_as_username`). Needs `require_client_cert`.
    pub use_identity_as_username: bool,
    /// Connections open at once on this listener; a connection over it is
    /// closed as soon as it is accepted. 0: no limit.
    pub max_connections: usize,
    /// New connections taken per second (bursts of up to one second's
    /// worth); above it the listener stops accepting for a while and
    /// connections wait in the kernel's backlog. 0: no limit.
    pub max_connection_rate: u32,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: String::new(),
            kind: ListenerKind::Tcp,
            address: SocketAddr::from(([127, 0, 0, 1], 1883)),
            proxy_protocol: false,
            ws_path: "/mqtt".into(),
            tls: None,
            use_identity_as_username: false,
            max_connections: 0,
            max_connection_rate: 0,
        }
    }
}

impl ListenerConfig {
    /// The name given, or the kind's.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.kind.as_str().into()
    }
}

/// TLS material of a listener, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that client certificates are verified against; when
    /// set, clients may present a certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca_file`).
    #[serde(default)]
    pub require_client_cert: bool,
}

/// What happens when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOverflow {
    /// Drop the message that does not fit (Mosquitto's behaviour).
    #[default]
    DropNewest,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

/// Protocol limits: announced in CONNACK where MQTT 5 has a property for
/// them, enforced for every protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// QoS 1 and 2 publishes a client may have unacknowledged towards the
    /// server (CONNACK Receive Maximum).
    pub receive_maximum: u16,
    /// QoS 1 and 2 messages in flight from the server to one session; the
    /// client's own Receive Maximum lowers it.
    pub max_inflight: u16,
    /// Messages queued for one session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes (topics and payloads) of the messages waiting in memory for one
    /// online session, in its mailbox and in its own queue each; over it,
    /// `queue_overflow` applies as when the queue is full. A message larger
    /// than this still passes an empty queue. 0: no limit.
    pub max_queued_bytes: usize,
    /// What to drop when the queue is full.
    pub queue_overflow: QueueOverflow,
    /// Backpressure: a publisher whose messages meet a session queue three
    /// quarters full stops being read until that queue drains, for at most
    /// this long; then the session counts as stalled and its overflow is
    /// dropped. 0 turns it off (publishers are never paused).
    pub publisher_pause_ms: u64,
    /// The largest packet accepted, in bytes (CONNACK Maximum Packet Size).
    pub max_packet_size: u32,
    /// The highest topic alias a client may use (CONNACK Topic Alias
    /// Maximum); 0 turns client aliases off.
    pub topic_alias_maximum: u16,
    /// The longest keep alive allowed, in seconds; a client asking for more
    /// (or for 0) is told this one as Server Keep Alive (5.0).
    pub max_keep_alive: u16,
    /// A keep alive imposed on every client (CONNACK Server Keep Alive).
    pub server_keep_alive: Option<u16>,
    /// The highest QoS accepted and granted (CONNACK Maximum QoS).
    pub maximum_qos: u8,
    /// Whether retained messages are kept (CONNACK Retain Available).
    pub retain_available: bool,
    /// Whether filters with `+` or `#` are accepted.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/...` filters are accepted.
    pub shared_subscriptions: bool,
    /// Whether subscription identifiers are accepted.
    pub subscription_identifiers: bool,
    /// The longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// The most levels a topic name or filter may have.
    pub max_topic_levels: usize,
    /// The longest session expiry interval granted, in seconds.
    pub max_session_expiry_s: u32,
    /// Seconds a new connection has to send its CONNECT.
    pub connect_timeout_s: u64,
    /// Connections open at once on this edge, every listener together;
    /// one over it is closed as soon as it is accepted. 0: no limit (but
    /// the process's file descriptors).
    pub max_connections: usize,
    /// Connections open at once from one client address (the one a PROXY
    /// header names, on listeners that take one). 0: no limit.
    pub max_connections_per_address: usize,
    /// The longest client identifier accepted, in bytes; a longer one is
    /// refused with CONNACK 0x85 (0x02 in 3.1.1), as MQTT-3.1.3-5 allows.
    pub max_client_id_length: usize,
    /// Subscriptions one session may hold; a SUBSCRIBE filter over it is
    /// refused with 0x97 Quota exceeded (0x80 in 3.1.1). 0: no limit.
    pub max_subscriptions: usize,
    /// PUBLISH packets per second one client may send, on average (bursts
    /// of one second's worth); above it the client is not read until the
    /// rate allows (backpressure, nothing dropped). 0: no limit.
    pub messages_rate: u32,
    /// Bytes per second one client may send, on average, as
    /// `messages_rate`. 0: no limit.
    pub bytes_rate: u64,
    /// Bytes of packets encoded for one client and not yet written to its
    /// socket; beyond it, deliveries wait in the session's queue
    /// (`max_queued_messages`) until the client reads.
    pub max_output_buffer: usize,
    /// Seconds a client may take none of the bytes the broker writes to it
    /// before it is disconnected (a client that stopped reading).
    pub send_timeout_s: u64,
    /// The most topics with a retained message, cluster-wide; a retained
    /// publish to a new topic beyond it is refused (0x97 to a 5.0 QoS 1/2
    /// publisher; otherwise the message is delivered but not retained).
    /// Replacing or clearing a retained topic always works. 0: no cap.
    pub max_retained_messages: u64,
    /// The most bytes (topic plus payload) of retained messages,
    /// cluster-wide, refused the same way. 0: no cap.
    pub max_retained_bytes: u64,
    /// The most persistent sessions (expiry above 0), online or offline,
    /// cluster-wide; a CONNECT that would create one more is refused with
    /// 0x97 Quota exceeded (0x03 Server unavailable in 3.1.1). Resuming an
    /// existing one always works. 0: no cap.
    pub max_persistent_sessions: u64,
    /// Seconds an MQTT 3.1/3.1.1 persistent session (clean session 0) is
    /// kept after its client disconnects, as Mosquitto's option of that
    /// name; unset, it is kept until the client cleans it (3.1.1's rule).
    /// 5.0 clients set their own Session Expiry Interval.
    pub persistent_client_expiration: Option<u32>,
    /// Seconds a persistent session that subscribed to a shared group may
    /// stay offline before the copies queued for it that it has not
    /// received (and QoS 1 ones it has not acknowledged) go to the group's
    /// other members; a reconnect within it gets them. 0: at once.
    pub shared_handoff_delay_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            receive_maximum: 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_overflow: QueueOverflow::DropNewest,
            publisher_pause_ms: 5000,
            max_packet_size: 1024 * 1024,
            topic_alias_maximum: 64,
            max_keep_alive: 65535,
            server_keep_alive: None,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_topic_length: 65535,
            max_topic_levels: 128,
            max_session_expiry_s: u32::MAX,
            connect_timeout_s: 10,
            max_connections: 0,
            max_connections_per_address: 0,
            max_client_id_length: 128,
            max_subscriptions: 10_000,
            messages_rate: 0,
            bytes_rate: 0,
            max_output_buffer: 1024 * 1024,
            send_timeout_s: 30,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            max_persistent_sessions: 1_000_000,
            persistent_client_expiration: None,
            shared_handoff_delay_s: 30,
        }
    }
}
