//! Listeners: turn accepted sockets into plain byte streams of MQTT, whatever
//! the wire — TCP, TLS, WebSocket or WebSocket over TLS, each optionally
//! preceded by a PROXY protocol header from a load balancer.
//!
//! A [`Listener`] runs every connection's handshakes (PROXY header, TLS,
//! WebSocket upgrade) in a task of its own, bounded by a timeout, so a slow
//! or silent client never holds up the others; [`Listener::accept`] hands
//! out only connections whose handshakes completed, as an [`Accepted`].
//! Failed handshakes are logged and counted here and go no further.
//! Connection limits act here too, before any MQTT byte is read: the
//! edge's, the listener's and the client address's maximum of open
//! connections, and the listener's accept rate (`admission`).
//!
//! This module knows nothing of MQTT packets: above it, a connection reads
//! and writes bytes. Start reading at [`Listener::bind`]; the wire formats
//! live in the submodules `proxy`, `tls` and `ws`.

mod admission;
mod proxy;
mod tls;
mod ws;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use arc_swap::ArcSwap;

use crate::config::{ListenerConfig, ListenerKind, TlsConfig};
pub use admission::{ConnectionLimits, ConnectionPermit};
use admission::{Gate, Refusal};
use proxy::ProxyError;
use tls::TlsSetup;

/// A client connection's byte stream, whatever carries it.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ClientStream for T {}

/// A client connection's byte stream, boxed so that every listener kind
/// hands out the same type.
pub type BoxedStream = Box<dyn ClientStream>;

/// A connection whose handshakes completed, ready for MQTT.
pub struct Accepted {
    /// MQTT bytes in and out.
    pub stream: BoxedStream,
    /// The client's address: the one a PROXY header named, when there was
    /// one, else the socket's peer.
    pub peer: SocketAddr,
    /// The listener's [`ListenerConfig::display_name`].
    pub listener: Arc<str>,
    /// Subject of a verified client certificate (first CN or the subject as
    /// a string), if any.
    pub client_cert_subject: Option<String>,
    /// The connection's place in the connection limits: keep it as long
    /// as the connection lives.
    pub permit: ConnectionPermit,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("peer", &self.peer)
            .field("listener", &self.listener)
            .field("client_cert_subject", &self.client_cert_subject)
            .finish_non_exhaustive()
    }
}

/// Why a listener could not start. Each says which listener or file.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is taken, not local, or not allowed.
    #[error("listener {listener}: cannot listen on {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: io::Error,
    },
    /// A `tls` or `wss` listener without certificate and key.
    #[error("listener {listener}: a {kind} listener needs tls.cert_file and tls.key_file")]
    MissingTls {
        listener: String,
        kind: &'static str,
    },
    /// A WebSocket path that no request could have.
    #[error("listener {listener}: ws_path {path:?} must start with '/'")]
    InvalidWsPath { listener: String, path: String },
    /// `require_client_cert` without `client_ca_file` to check them against.
    #[error("listener {listener}: tls.require_client_cert needs tls.client_ca_file")]
    ClientCaMissing { listener: String },
    /// A PEM file that cannot be read or parsed.
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file without any certificate in it.
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    /// A key file without a key in it.
    #[error("{}: no private key found (PKCS#8, PKCS#1 or SEC1 PEM expected)", path.display())]
    NoPrivateKey { path: PathBuf },
    /// A client CA certificate that cannot serve as a trust anchor.
    #[error("{}: unusable CA certificate: {source}", path.display())]
    CaCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    /// Client certificate verification could not be set up from these CAs.
    #[error("{}: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate chain and the key do not make a usable pair.
    #[error("{} with {}: {source}", cert_file.display(), key_file.display())]
    CertificateKey {
        cert_file: PathBuf,
        key_file: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused the settings.
    #[error("listener {listener}: TLS settings: {source}")]
    Tls {
        listener: String,
        source: rustls::Error,
    },
}

/// Handshakes in progress at most per listener; beyond it the listener
/// stops taking connections from the backlog until some finish (each ends
/// by its timeout at the latest).
const MAX_PENDING_HANDSHAKES: usize = 4096;

/// Pause after an accept error such as EMFILE, which would otherwise repeat
/// at once and spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every listener of an edge shares.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// How long a connection's handshakes (PROXY header, TLS, WebSocket
    /// upgrade) may take.
    pub handshake_timeout: Duration,
    /// The largest MQTT packet accepted: a WebSocket frame or message
    /// larger than this is refused as soon as its header says so.
    pub max_packet_size: u32,
    /// The edge's connection counts, shared by its listeners.
    pub connections: Arc<ConnectionLimits>,
}

impl ListenerOptions {
    /// Options with no limit but the handshake timeout.
    pub fn unlimited(handshake_timeout: Duration) -> Self {
        ListenerOptions {
            handshake_timeout,
            max_packet_size: rookery_codec::MAX_PACKET_SIZE,
            connections: ConnectionLimits::unlimited(),
        }
    }
}

/// One listening socket and the handshakes it has in progress.
pub struct Listener {
    name: Arc<str>,
    local_addr: SocketAddr,
    /// `None` once closed.
    socket: Option<TcpListener>,
    handshakes: JoinSet<Option<Accepted>>,
    handshake: Arc<Handshake>,
    gate: Gate,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .field("open", &self.socket.is_some())
            .field("handshakes", &self.handshakes.len())
            .field("handshake", &self.handshake)
            .field("gate", &self.gate)
            .finish()
    }
}

impl Listener {
    /// [`Listener::bind_with`] without connection limits.
    pub async fn bind(
        config: &ListenerConfig,
        handshake_timeout: Duration,
    ) -> Result<Listener, TransportError> {
        Listener::bind_with(config, ListenerOptions::unlimited(handshake_timeout)).await
    }

    /// Binds the socket and loads TLS material now, so a bad certificate
    /// path or a taken port fails at startup with a clear error.
    pub async fn bind_with(
        config: &ListenerConfig,
        options: ListenerOptions,
    ) -> Result<Listener, TransportError> {
        let name: Arc<str> = config.display_name().into();
        let kind = config.kind.as_str();
        let tls = match config.kind {
            ListenerKind::Tls | ListenerKind::Wss => {
                let settings = config
                    .tls
                    .as_ref()
                    .ok_or_else(|| TransportError::MissingTls {
                        listener: name.to_string(),
                        kind,
                    })?;
                let advertise_mqtt = config.kind == ListenerKind::Tls;
                Some(TlsCertificates {
                    listener: Arc::clone(&name),
                    advertise_mqtt,
                    setup: Arc::new(ArcSwap::from_pointee(TlsSetup::load(
                        &name,
                        settings,
                        advertise_mqtt,
                    )?)),
                })
            }
            ListenerKind::Tcp | ListenerKind::Ws => {
                if config.tls.is_some() {
                    warn!(listener = %name, kind, "tls settings ignored: the listener is not tls or wss");
                }
                None
            }
        };
        let ws_path = match config.kind {
            ListenerKind::Ws | ListenerKind::Wss => {
                if !config.ws_path.starts_with('/') {
                    return Err(TransportError::InvalidWsPath {
                        listener: name.to_string(),
                        path: config.ws_path.clone(),
                    });
                }
                Some(config.ws_path.clone())
            }
            ListenerKind::Tcp | ListenerKind::Tls => None,
        };

        let bind_error = |source| TransportError::Bind {
            listener: name.to_string(),
            address: config.address,
            source,
        };
        let socket = TcpListener::bind(config.address)
            .await
            .map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        info!(
            listener = %name,
            kind,
            address = %local_addr,
            proxy_protocol = config.proxy_protocol,
            max_connections = config.max_connections,
            max_connection_rate = config.max_connection_rate,
            "listening"
        );

        register_metrics(&name);
        let gate = Gate::new(Arc::clone(&name), config, options.connections);
        Ok(Listener {
            handshake: Arc::new(Handshake {
                listener: Arc::clone(&name),
                proxy_protocol: config.proxy_protocol,
                tls,
                ws_path,
                ws_max_message: usize::try_from(options.max_packet_size).unwrap_or(usize::MAX),
                timeout: options.handshake_timeout,
                connections: Arc::clone(gate.edge()),
            }),
            name,
            local_addr,
            socket: Some(socket),
            handshakes: JoinSet::new(),
            gate,
        })
    }

    /// The certificates of a `tls` or `wss` listener, to reload them.
    pub fn certificates(&self) -> Option<TlsCertificates> {
        self.handshake.tls.clone()
    }

    /// The address bound (with the port the system chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's name in logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next connection whose handshakes (PROXY header, TLS, WebSocket
    /// upgrade) completed. Handshakes run concurrently in their own tasks so
    /// a slow or silent client never blocks others; each is bounded by the
    /// handshake timeout. A failed handshake is logged and counted
    /// (`rookery_handshake_failures_total{listener, reason}`), never
    /// returned. Returns `None` only after [`close`](Self::close).
    ///
    /// Sockets are taken from the backlog, and their handshakes started,
    /// while this is awaited: call it in a loop, handing each connection to
    /// a task of its own. A socket over a connection limit is closed at
    /// once; over the accept rate, sockets are left in the backlog for a
    /// while. Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self) -> Option<Accepted> {
        loop {
            let socket = self.socket.as_ref()?;
            let paused_until = self.gate.paused_until();
            let room = self.handshakes.len() < MAX_PENDING_HANDSHAKES && paused_until.is_none();
            tokio::select! {
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Some(accepted)) => return Some(accepted),
                    Ok(None) => {}
                    Err(e) if e.is_panic() => {
                        warn!(listener = %self.name, error = %e, "handshake task panicked");
                    }
                    Err(_) => {}
                },
                incoming = socket.accept(), if room => match incoming {
                    Ok((tcp, peer)) => {
                        // Refused: the socket is dropped (closed) unread.
                        if let Some(permit) = self.gate.admit(peer) {
                            let handshake = Arc::clone(&self.handshake);
                            self.handshakes.spawn(handshake.run(tcp, peer, permit));
                        }
                    }
                    Err(e) => after_accept_error(&self.name, e).await,
                },
                () = sleep_until_some(paused_until), if paused_until.is_some() => {}
            }
        }
    }

    /// Stops accepting (drops the socket) and abandons the handshakes in
    /// progress; [`accept`](Self::accept) returns `None` from now on.
    pub fn close(&mut self) {
        if self.socket.take().is_some() {
            info!(listener = %self.name, "listener closed");
        }
        // Dropping the set aborts its tasks.
        self.handshakes = JoinSet::new();
    }
}

/// Sleeps until `until`; never resolves for `None` (its select branch is
/// disabled then anyway).
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Logs and counts an accept error; pauses after those that would recur at
/// once (out of file descriptors or memory) rather than spin.
async fn after_accept_error(listener: &Arc<str>, error: io::Error) {
    metrics::counter!("rookery_accept_errors_total", "listener" => Arc::clone(listener))
        .increment(1);
    match error.kind() {
        // The one connection went away before it was taken: nothing to wait for.
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {
            debug!(listener = %listener, %error, "accept failed");
        }
        _ => {
            warn!(listener = %listener, %error, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
    }
}

/// What every connection of one listener goes through before MQTT.
/// A TLS listener's certificate, key and client CAs, swapped whole on
/// reload: a handshake in progress finishes with the ones it started with.
#[derive(Debug, Clone)]
pub struct TlsCertificates {
    listener: Arc<str>,
    advertise_mqtt: bool,
    setup: Arc<ArcSwap<TlsSetup>>,
}

impl TlsCertificates {
    /// The listener these are for.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Reads and checks `settings`' files, without putting them in force.
    pub fn load(&self, settings: &TlsConfig) -> Result<LoadedCertificates, TransportError> {
        TlsSetup::load(&self.listener, settings, self.advertise_mqtt).map(LoadedCertificates)
    }

    /// Puts `loaded` in force: new handshakes use it.
    pub fn install(&self, loaded: LoadedCertificates) {
        self.setup.store(Arc::new(loaded.0));
    }
}

/// Certificates read and checked by [`TlsCertificates::load`], not yet in
/// force.
#[derive(Debug)]
pub struct LoadedCertificates(TlsSetup);

struct Handshake {
    listener: Arc<str>,
    proxy_protocol: bool,
    tls: Option<TlsCertificates>,
    /// `Some` for WebSocket listeners: the path clients must request.
    ws_path: Option<String>,
    /// The largest WebSocket frame or message taken (`max_packet_size`).
    ws_max_message: usize,
    timeout: Duration,
    /// Where the client's address is counted.
    connections: Arc<ConnectionLimits>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("proxy_protocol", &self.proxy_protocol)
            .field("tls", &self.tls.is_some())
            .field("ws_path", &self.ws_path)
            .field("ws_max_message", &self.ws_max_message)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why one connection's handshake failed.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("handshake timed out")]
    Timeout,
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("WebSocket upgrade: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// Not a handshake failure: a connection limit refused the client's
    /// address (counted and logged apart).
    #[error("connection limit")]
    Limited(Refusal),
}

/// Registers a listener's series at 0, so that they are exported (and a
/// dashboard or alert built on them finds them) before their first event.
fn register_metrics(listener: &Arc<str>) {
    metrics::counter!("rookery_accept_errors_total", "listener" => Arc::clone(listener))
        .increment(0);
    metrics::counter!(
        "rookery_connection_rate_limited_total",
        "listener" => Arc::clone(listener),
    )
    .increment(0);
    for refusal in [Refusal::Edge, Refusal::Listener, Refusal::Address] {
        metrics::counter!(
            "rookery_connections_limited_total",
            "listener" => Arc::clone(listener),
            "limit" => refusal.label(),
        )
        .increment(0);
    }
    for reason in ["timeout", "proxy", "tls", "websocket", "limited"] {
        metrics::counter!(
            "rookery_handshake_failures_total",
            "listener" => Arc::clone(listener),
            "reason" => reason,
        )
        .increment(0);
    }
}

impl HandshakeError {
    /// The `reason` label of `rookery_handshake_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Proxy(_) => "proxy",
            HandshakeError::Tls(_) => "tls",
            HandshakeError::WebSocket(_) => "websocket",
            HandshakeError::Limited(_) => "limited",
        }
    }
}

impl Handshake {
    /// The task of one accepted socket: its handshakes within the timeout,
    /// or a logged and counted failure.
    async fn run(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: ConnectionPermit,
    ) -> Option<Accepted> {
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(listener = %self.listener, %peer, %error, "cannot set TCP_NODELAY");
        }
        let establish = self.establish(tcp, peer, permit);
        let outcome = match tokio::time::timeout(self.timeout, establish).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(HandshakeError::Timeout),
        };
        match outcome {
            Ok(accepted) => {
                debug!(listener = %self.listener, peer = %accepted.peer, "connection accepted");
                Some(accepted)
            }
            Err(HandshakeError::Limited(refusal)) => {
                admission::refused(&self.listener, &self.connections, refusal, peer);
                None
            }
            Err(error) => {
                let reason = error.reason();
                debug!(listener = %self.listener, %peer, reason, %error, "handshake failed");
                metrics::counter!(
                    "rookery_handshake_failures_total",
                    "listener" => Arc::clone(&self.listener),
                    "reason" => reason,
                )
                .increment(1);
                None
            }
        }
    }

    async fn establish(
        &self,
        mut tcp: TcpStream,
        socket_peer: SocketAddr,
        mut permit: ConnectionPermit,
    ) -> Result<Accepted, HandshakeError> {
        let peer = if self.proxy_protocol {
            proxy::read_header(&mut tcp).await?.unwrap_or(socket_peer)
        } else {
            socket_peer
        };
        // Counted by the client's address, before TLS or anything else
        // costs this process work.
        permit
            .claim_address(peer.ip())
            .map_err(HandshakeError::Limited)?;
        let mut client_cert_subject = None;
        let stream: BoxedStream = match (&self.tls, &self.ws_path) {
            (None, None) => Box::new(tcp),
            (Some(tls), None) => {
                let setup = tls.setup.load_full();
                let tls = setup.accept(tcp).await.map_err(HandshakeError::Tls)?;
                client_cert_subject = tls::client_subject(&tls);
                Box::new(tls)
            }
            (None, Some(path)) => Box::new(ws::accept(tcp, path, self.ws_max_message).await?),
            (Some(tls), Some(path)) => {
                let setup = tls.setup.load_full();
                let tls = setup.accept(tcp).await.map_err(HandshakeError::Tls)?;
                client_cert_subject = tls::client_subject(&tls);
                Box::new(ws::accept(tls, path, self.ws_max_message).await?)
            }
        };
        Ok(Accepted {
            stream,
            peer,
            listener: Arc::clone(&self.listener),
            client_cert_subject,
            permit,
        })
    }
}
