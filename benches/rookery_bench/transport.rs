//! Reaching the broker: TCP from a chosen local address, optionally TLS
//! (tokio-rustls) and optionally WebSocket (the test kit's [`WsIo`] over
//! tokio-tungstenite, subprotocol `mqtt`). Whatever the layers, a connection is one [`Transport`]: a byte
//! stream the MQTT client reads and writes.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rookery_testkit::{WsIo, ws_connect};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cli::{Settings, TransportKind};

/// Why a connection could not be set up below MQTT.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The host name did not resolve to a usable address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TCP or TLS failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS settings are unusable (CA file, server name).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The WebSocket upgrade failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
}

/// Opens connections to the broker as the settings say. Built once per run.
pub struct Dialer {
    addr: SocketAddr,
    /// Where subscribers connect (`addr` unless `--sub-host`/`--sub-port`).
    sub_addr: SocketAddr,
    kind: TransportKind,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    ws_url: String,
    source_ips: Vec<IpAddr>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("addr", &self.addr)
            .field("kind", &self.kind)
            .field("ws_url", &self.ws_url)
            .field("source_ips", &self.source_ips.len())
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Resolves the broker address and prepares TLS.
    pub async fn new(settings: &Settings) -> Result<Self, DialError> {
        let want_v4 = settings.source_ips.first().is_none_or(IpAddr::is_ipv4);
        let resolve = |host: &str, port: u16| {
            let target = format!("{host}:{port}");
            async move {
                let found = tokio::net::lookup_host(&target)
                    .await?
                    .find(|addr| addr.is_ipv4() == want_v4);
                found.ok_or(DialError::Resolve(target))
            }
        };
        let addr = resolve(&settings.host, settings.port).await?;
        let sub_addr = resolve(&settings.sub_host, settings.sub_port).await?;
        let tls = if settings.transport.is_tls() {
            let config = tls_config(settings)?;
            let name = ServerName::try_from(settings.server_name.clone())
                .map_err(|e| DialError::TlsSetup(format!("server name: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let scheme = if settings.transport.is_tls() {
            "wss"
        } else {
            "ws"
        };
        Ok(Self {
            addr,
            sub_addr,
            kind: settings.transport,
            tls,
            ws_url: format!(
                "{scheme}://{}:{}{}",
                settings.host, settings.port, settings.ws_path
            ),
            source_ips: settings.source_ips.clone(),
        })
    }

    /// Opens connection number `client_no` (which picks the local address,
    /// round robin) through every layer, to the subscribers' address for a
    /// subscriber.
    pub async fn dial(&self, client_no: u64, subscriber: bool) -> Result<Transport, DialError> {
        let addr = if subscriber { self.sub_addr } else { self.addr };
        let tcp = self.tcp(client_no, addr).await?;
        Ok(match (self.kind, &self.tls) {
            (TransportKind::Tcp, _) => Transport::Tcp(tcp),
            (TransportKind::Tls, Some((connector, name))) => {
                Transport::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
            (TransportKind::Ws, _) => Transport::Ws(Box::new(self.upgrade(tcp).await?)),
            (TransportKind::Wss, Some((connector, name))) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                Transport::Wss(Box::new(self.upgrade(tls).await?))
            }
            (TransportKind::Tls | TransportKind::Wss, None) => {
                return Err(DialError::TlsSetup("no TLS configuration".to_owned()));
            }
        })
    }

    async fn tcp(&self, client_no: u64, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.source_ips.is_empty() {
            let at = (client_no % self.source_ips.len() as u64) as usize;
            socket.bind(SocketAddr::new(self.source_ips[at], 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn upgrade<S>(&self, stream: S) -> Result<WsIo<S>, DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (ws, _response) = ws_connect(stream, &self.ws_url)
            .await
            .map_err(|e| DialError::WebSocket(e.to_string()))?;
        Ok(ws)
    }
}

/// The rustls client configuration: the CA file's roots, or no verification
/// of the chain and name with `--insecure` (signatures are still checked).
fn tls_config(settings: &Settings) -> Result<ClientConfig, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DialError::TlsSetup(e.to_string()))?;
    if settings.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    if let Some(path) = &settings.cafile {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| DialError::TlsSetup(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| DialError::TlsSetup(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| DialError::TlsSetup(format!("{}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(DialError::TlsSetup(
            "no CA certificate: give --cafile FILE or --insecure".to_owned(),
        ));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure`: accepts any certificate chain for any name, but still checks
/// that the handshake is signed by the certificate presented.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An open connection to the broker, whatever its layers.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TCP.
    Ws(Box<WsIo<TcpStream>>),
    /// WebSocket over TLS.
    Wss(Box<WsIo<TlsStream<TcpStream>>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Wss(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Wss(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Wss(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Wss(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
