//! Listeners over real sockets on 127.0.0.1, one test per promise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use super::*;
use crate::config::TlsConfig;

/// Generous bound on every wait, so that a broken listener fails the test
/// instead of hanging it. Not a performance assertion.
const PATIENCE: Duration = Duration::from_secs(20);
/// Long enough never to fire during a test.
const NO_TIMEOUT: Duration = Duration::from_secs(3600);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("gave up waiting")
}

fn listener_config(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig {
        kind,
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ListenerConfig::default()
    }
}

/// Accepts in a task of its own, as the broker does, and hands connections
/// over a channel.
fn serve(mut listener: Listener) -> mpsc::UnboundedReceiver<Accepted> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(accepted) = listener.accept().await {
            if tx.send(accepted).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    within(rx.recv()).await.expect("listener stopped")
}

/// Bytes written on one side arrive on the other, both ways.
async fn assert_round_trip<C, S>(client: &mut C, server: &mut S)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c,
    ];
    client.write_all(&connect).await.unwrap();
    client.flush().await.unwrap();
    let mut got = [0u8; 12];
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, connect);

    let connack = [0x20, 0x02, 0x00, 0x00];
    server.write_all(&connack).await.unwrap();
    server.flush().await.unwrap();
    let mut got = [0u8; 4];
    within(client.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, connack);
}

/// Certificates and keys for a test, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: CertificateDer<'static>,
    client_ca: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            server.signing_key.serialize_pem(),
        )
        .unwrap();

        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "Rookery test client CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("client-ca.pem"), ca_cert.pem()).unwrap();

        Pki {
            dir,
            server_cert: server.cert.der().clone(),
            client_ca: Issuer::new(ca, ca_key),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls_config(&self, client_ca: bool, require_client_cert: bool) -> TlsConfig {
        TlsConfig {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_ca_file: client_ca.then(|| self.path("client-ca.pem")),
            require_client_cert,
        }
    }

    /// A client certificate for `common_name`, signed by the client CA.
    fn client_identity(
        &self,
        common_name: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.client_ca).unwrap();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    fn connector(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        alpn: &[&[u8]],
    ) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_cert.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Binds `config` and serves it: the address to connect to and the
/// connections that come out.
async fn start(
    config: &ListenerConfig,
    timeout: Duration,
) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = Listener::bind(config, timeout).await.unwrap();
    (listener.local_addr(), serve(listener))
}

/// Asserts that the server closes `stream` without sending anything.
async fn assert_closed_by_server<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 16];
    match within(stream.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected the connection closed, read {:?}", &buf[..n]),
    }
}

fn ws_request(
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&'static str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://localhost:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(subprotocol),
        );
    }
    request
}

fn binary(bytes: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(bytes))
}

// ---- TCP ----

/// The broker accepts in a task of its own and hands connections to
/// others: checked at compile time.
#[allow(dead_code)]
fn accept_and_accepted_are_send(listener: &mut Listener, accepted: Accepted) {
    fn is_send<T: Send>(_: T) {}
    is_send(listener.accept());
    is_send(accepted);
}

#[tokio::test]
async fn tcp_round_trip_reports_the_socket_peer_and_the_listener_name() {
    let (addr, mut rx) = start(&listener_config(ListenerKind::Tcp), NO_TIMEOUT).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.peer, client.local_addr().unwrap());
    assert_eq!(&*accepted.listener, "tcp");
    assert_eq!(accepted.client_cert_subject, None);
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn the_configured_name_is_used() {
    let config = ListenerConfig {
        name: "edge-plain".into(),
        ..listener_config(ListenerKind::Tcp)
    };
    let listener = Listener::bind(&config, NO_TIMEOUT).await.unwrap();
    assert_eq!(listener.name(), "edge-plain");
    let addr = listener.local_addr();
    let mut rx = serve(listener);
    let _client = TcpStream::connect(addr).await.unwrap();
    assert_eq!(&*next(&mut rx).await.listener, "edge-plain");
}

#[tokio::test]
async fn accept_returns_none_after_close_and_the_port_is_released() {
    let mut listener = Listener::bind(&listener_config(ListenerKind::Tcp), NO_TIMEOUT)
        .await
        .unwrap();
    let addr = listener.local_addr();
    listener.close();
    assert!(within(listener.accept()).await.is_none());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_taken_port_fails_bind_naming_the_address() {
    let first = Listener::bind(&listener_config(ListenerKind::Tcp), NO_TIMEOUT)
        .await
        .unwrap();
    let config = ListenerConfig {
        address: first.local_addr(),
        ..listener_config(ListenerKind::Tcp)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, TransportError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&first.local_addr().to_string()),
        "{err}"
    );
}

// ---- PROXY protocol ----

#[tokio::test]
async fn proxy_v1_header_sets_the_peer_and_keeps_the_bytes_after_it() {
    let config = ListenerConfig {
        proxy_protocol: true,
        ..listener_config(ListenerKind::Tcp)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Header and MQTT in one segment, as a load balancer may send them.
    let mut first = b"PROXY TCP4 203.0.113.50 10.1.2.3 51234 1883\r\n".to_vec();
    first.extend_from_slice(&[0xc0, 0x00]);
    client.write_all(&first).await.unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.peer, "203.0.113.50:51234".parse().unwrap());
    let mut got = [0u8; 2];
    within(accepted.stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, [0xc0, 0x00]);
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn proxy_v2_header_before_tls_sets_the_peer_and_the_handshake_follows() {
    let pki = Pki::new();
    let config = ListenerConfig {
        proxy_protocol: true,
        tls: Some(pki.tls_config(false, false)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let source: SocketAddr = "[2001:db8::77]:40001".parse().unwrap();
    let destination: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let mut client = pki
        .connector(None, &[])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.peer, source);
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn proxy_v2_local_keeps_the_socket_peer() {
    let config = ListenerConfig {
        proxy_protocol: true,
        ..listener_config(ListenerKind::Tcp)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&header).await.unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.peer, client.local_addr().unwrap());
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn a_connection_without_proxy_header_is_closed_and_not_returned() {
    let config = ListenerConfig {
        proxy_protocol: true,
        ..listener_config(ListenerKind::Tcp)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let mut bare = TcpStream::connect(addr).await.unwrap();
    bare.write_all(&[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T'])
        .await
        .unwrap();
    assert_closed_by_server(&mut bare).await;

    // The next, well-formed connection is the first one returned.
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 1883\r\n")
        .await
        .unwrap();
    let accepted = next(&mut rx).await;
    assert_eq!(accepted.peer, "192.0.2.1:1111".parse().unwrap());
}

// ---- TLS ----

#[tokio::test]
async fn tls_round_trip_with_a_self_signed_certificate_and_mqtt_alpn() {
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(false, false)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = pki
        .connector(None, &[b"mqtt"])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(b"mqtt".as_slice()));
    let mut accepted = next(&mut rx).await;
    assert_eq!(&*accepted.listener, "tls");
    assert_eq!(accepted.client_cert_subject, None);
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn tls_client_offering_another_alpn_protocol_is_still_accepted() {
    // AWS IoT style clients offer only "x-amzn-mqtt-ca".
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(false, false)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = pki
        .connector(None, &[b"x-amzn-mqtt-ca"])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), None);
    let mut accepted = next(&mut rx).await;
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn required_client_certificate_refuses_anonymous_and_reports_the_subject() {
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(true, true)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;

    // Without a certificate: refused. Under TLS 1.3 the client learns it on
    // its first read, after its own side of the handshake completed.
    let tcp = TcpStream::connect(addr).await.unwrap();
    if let Ok(mut anonymous) = pki.connector(None, &[]).connect(localhost(), tcp).await {
        let _ = anonymous.write_all(&[0xc0, 0x00]).await;
        let _ = anonymous.flush().await;
        assert_closed_by_server(&mut anonymous).await;
    }

    // With a certificate from the CA: accepted, first, with its subject.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = pki
        .connector(Some(pki.client_identity("sensor-17")), &[])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.client_cert_subject.as_deref(), Some("sensor-17"));
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn optional_client_certificate_lets_anonymous_clients_in() {
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(true, false)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = pki
        .connector(None, &[])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(accepted.client_cert_subject, None);
    assert_round_trip(&mut client, &mut accepted.stream).await;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let _client = pki
        .connector(Some(pki.client_identity("gateway-2")), &[])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let accepted = next(&mut rx).await;
    assert_eq!(accepted.client_cert_subject.as_deref(), Some("gateway-2"));
}

#[tokio::test]
async fn a_missing_certificate_file_fails_bind_naming_the_file() {
    let pki = Pki::new();
    let mut tls = pki.tls_config(false, false);
    tls.cert_file = pki.path("nowhere.pem");
    let config = ListenerConfig {
        tls: Some(tls),
        ..listener_config(ListenerKind::Tls)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("nowhere.pem"), "{err}");
}

#[tokio::test]
async fn a_key_file_without_a_key_fails_bind_naming_the_file() {
    let pki = Pki::new();
    let mut tls = pki.tls_config(false, false);
    tls.key_file = pki.path("server.pem");
    let config = ListenerConfig {
        tls: Some(tls),
        ..listener_config(ListenerKind::Wss)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, TransportError::NoPrivateKey { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("server.pem"), "{err}");
}

#[tokio::test]
async fn tls_settings_that_cannot_work_fail_bind() {
    let err = Listener::bind(&listener_config(ListenerKind::Tls), NO_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::MissingTls { .. }), "{err:?}");

    let pki = Pki::new();
    let mut tls = pki.tls_config(false, true);
    tls.client_ca_file = None;
    let config = ListenerConfig {
        tls: Some(tls),
        ..listener_config(ListenerKind::Tls)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, TransportError::ClientCaMissing { .. }),
        "{err:?}"
    );

    // A key that is not the certificate's.
    let other = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).unwrap();
    std::fs::write(pki.path("other.key"), other.signing_key.serialize_pem()).unwrap();
    let mut tls = pki.tls_config(false, false);
    tls.key_file = pki.path("other.key");
    let config = ListenerConfig {
        tls: Some(tls),
        ..listener_config(ListenerKind::Tls)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, TransportError::CertificateKey { .. }),
        "{err:?}"
    );
}

// ---- WebSocket ----

#[tokio::test]
async fn websocket_round_trip_with_packets_split_and_joined_across_frames() {
    let (addr, mut rx) = start(&listener_config(ListenerKind::Ws), NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, response) =
        tokio_tungstenite::client_async(ws_request(addr, "/mqtt", Some("mqtt")), tcp)
            .await
            .unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "mqtt"
    );
    let mut accepted = next(&mut rx).await;
    assert_eq!(&*accepted.listener, "ws");
    assert_eq!(accepted.peer.ip(), addr.ip());

    // CONNECT split over three frames, then PINGREQ and DISCONNECT in one.
    let connect = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c,
    ];
    client.send(binary(&connect[..1])).await.unwrap();
    client.send(binary(&connect[1..7])).await.unwrap();
    client.send(binary(&connect[7..])).await.unwrap();
    client
        .send(binary(&[0xc0, 0x00, 0xe0, 0x00]))
        .await
        .unwrap();
    let mut got = [0u8; 16];
    within(accepted.stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got[..12], connect);
    assert_eq!(&got[12..], [0xc0, 0x00, 0xe0, 0x00]);

    accepted
        .stream
        .write_all(&[0x20, 0x02, 0x00, 0x00])
        .await
        .unwrap();
    accepted.stream.flush().await.unwrap();
    let reply = within(client.next()).await.unwrap().unwrap();
    assert_eq!(reply, binary(&[0x20, 0x02, 0x00, 0x00]));

    // A close frame ends the byte stream.
    client.close(None).await.unwrap();
    let mut rest = Vec::new();
    within(accepted.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn websocket_accepts_the_mqttv31_subprotocol() {
    let (addr, mut rx) = start(&listener_config(ListenerKind::Ws), NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_client, response) =
        tokio_tungstenite::client_async(ws_request(addr, "/mqtt", Some("mqttv3.1")), tcp)
            .await
            .unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "mqttv3.1"
    );
    next(&mut rx).await;
}

#[tokio::test]
async fn websocket_on_a_wrong_path_is_refused_with_404_and_not_returned() {
    let config = ListenerConfig {
        ws_path: "/broker".into(),
        ..listener_config(ListenerKind::Ws)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused =
        tokio_tungstenite::client_async(ws_request(addr, "/mqtt", Some("mqtt")), tcp).await;
    match refused {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::NOT_FOUND),
        other => panic!("expected 404, got {other:?}"),
    }

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_client, _) =
        tokio_tungstenite::client_async(ws_request(addr, "/broker", Some("mqtt")), tcp)
            .await
            .unwrap();
    let accepted = next(&mut rx).await;
    assert_eq!(&*accepted.listener, "ws");
}

#[tokio::test]
async fn websocket_offering_only_foreign_subprotocols_is_refused() {
    let (addr, _rx) = start(&listener_config(ListenerKind::Ws), NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused =
        tokio_tungstenite::client_async(ws_request(addr, "/mqtt", Some("chat")), tcp).await;
    match refused {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        other => panic!("expected 400, got {other:?}"),
    }
}

#[tokio::test]
async fn secure_websocket_round_trip_with_client_certificate() {
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(true, true)),
        ..listener_config(ListenerKind::Wss)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .connector(Some(pki.client_identity("browser-1")), &[b"http/1.1"])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let mut request = ws_request(addr, "/mqtt", Some("mqtt"));
    *request.uri_mut() = format!("wss://localhost:{}/mqtt", addr.port())
        .parse()
        .unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let mut accepted = next(&mut rx).await;
    assert_eq!(&*accepted.listener, "wss");
    assert_eq!(accepted.client_cert_subject.as_deref(), Some("browser-1"));

    client.send(binary(&[0xc0, 0x00])).await.unwrap();
    let mut got = [0u8; 2];
    within(accepted.stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, [0xc0, 0x00]);
    accepted.stream.write_all(&[0xd0, 0x00]).await.unwrap();
    accepted.stream.flush().await.unwrap();
    assert_eq!(
        within(client.next()).await.unwrap().unwrap(),
        binary(&[0xd0, 0x00])
    );
}

#[tokio::test]
async fn a_ws_path_without_leading_slash_fails_bind() {
    let config = ListenerConfig {
        ws_path: "mqtt".into(),
        ..listener_config(ListenerKind::Ws)
    };
    let err = Listener::bind(&config, NO_TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, TransportError::InvalidWsPath { .. }),
        "{err:?}"
    );
}

// ---- Handshake timeout ----

#[tokio::test]
async fn a_silent_client_does_not_block_the_next_one() {
    let pki = Pki::new();
    let config = ListenerConfig {
        tls: Some(pki.tls_config(false, false)),
        ..listener_config(ListenerKind::Tls)
    };
    let (addr, mut rx) = start(&config, NO_TIMEOUT).await;
    // Connects and never says a word; its handshake waits for the timeout.
    let _silent = TcpStream::connect(addr).await.unwrap();
    tokio::task::yield_now().await;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = pki
        .connector(None, &[])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let mut accepted = next(&mut rx).await;
    assert_round_trip(&mut client, &mut accepted.stream).await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let config = ListenerConfig {
        proxy_protocol: true,
        ..listener_config(ListenerKind::Tcp)
    };
    let (addr, mut rx) = start(&config, Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_closed_by_server(&mut silent).await;
    assert!(rx.try_recv().is_err());
}
