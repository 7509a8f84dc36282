//! MQTT over each kind of listener: TLS (with optional client certificates),
//! WebSocket and secure WebSocket (section 6, subprotocol `mqtt`), and plain
//! TCP behind a load balancer's PROXY protocol header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rookery_codec::ProtocolVersion::V5;
use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::ws::mqtt_ws_request;
use rookery_testkit::{Io, RawClient, Read, connect_packet, ws_connect};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    Broker, Listener, Settings, TIMEOUT, TlsPem, skip_on_mosquitto, skip_unless_rookery, unique,
};

/// A test CA, a server certificate for `localhost` and a client certificate,
/// both issued by the CA.
struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
    client: CertificateDer<'static>,
    client_key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rookery e2e CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec!["client.e2e".to_owned()]).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "e2e client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("client certificate");

        Pki {
            ca: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client: client.der().clone(),
            client_key: PrivatePkcs8KeyDer::from(client_key.serialize_der()),
        }
    }

    /// The server side of a TLS listener; `client_ca` asks for client
    /// certificates (`Some(true)`: requires one).
    fn listener(&self, client_ca: Option<bool>) -> TlsPem {
        TlsPem {
            cert: self.server_pem.clone(),
            key: self.server_key_pem.clone(),
            client_ca: client_ca.map(|required| (self.ca_pem.clone(), required)),
            identity_as_username: false,
        }
    }

    /// A client that trusts the CA, presenting the client certificate if
    /// `with_certificate`.
    fn connector(&self, with_certificate: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("trust the CA");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let config = if with_certificate {
            builder
                .with_client_auth_cert(
                    vec![self.client.clone()],
                    PrivateKeyDer::Pkcs8(self.client_key.clone_key()),
                )
                .expect("client certificate")
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(config))
    }
}

/// The address of `broker`'s listener `name`.
fn listener(broker: &Broker, name: &str) -> SocketAddr {
    broker
        .listener(name)
        .unwrap_or_else(|| panic!("no `{name}` listener is ready"))
}

/// A TCP connection to `broker`'s listener `name`.
async fn tcp(broker: &Broker, name: &str) -> TcpStream {
    let addr = listener(broker, name);
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).ok();
    stream
}

/// A TLS connection to `localhost` at the listener `name`; `Err` if the
/// handshake fails.
async fn tls(
    broker: &Broker,
    name: &str,
    connector: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = tcp(broker, name).await;
    let server = ServerName::try_from("localhost").expect("a DNS name");
    tokio::time::timeout(TIMEOUT, connector.connect(server, stream))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Opens a WebSocket at `/mqtt` on the listener at `addr` over `stream`,
/// asking for the `mqtt` subprotocol, checks that the server chose it
/// (MQTT-6.0.0-4), and returns a byte stream whose bytes travel in binary
/// frames (MQTT-6.0.0-1).
async fn websocket<S>(stream: S, scheme: &str, addr: SocketAddr) -> Box<dyn Io>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let url = format!("{scheme}://localhost:{}/mqtt", addr.port());
    let (ws, response) = tokio::time::timeout(TIMEOUT, ws_connect(stream, &url))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt"),
        "MQTT-6.0.0-4: the server selects the `mqtt` subprotocol"
    );
    Box::new(ws)
}

/// Connects a 5.0 client over `io` (to the listener at `addr`) and checks
/// that messages go both ways between it and a plain TCP client.
async fn round_trip(broker: &Broker, addr: SocketAddr, io: Box<dyn Io>) {
    let there = unique("over/there");
    let back = unique("over/back");
    let mut client = RawClient::over(io, V5, addr);
    client
        .send(Packet::Connect(Box::new(connect_packet(
            V5,
            &unique("over"),
        ))))
        .await;
    assert_eq!(
        client.expect_connack().await.reason_code,
        ReasonCode::Success
    );
    client.subscribe_ok(1, &there, QoS::AtLeastOnce).await;
    let mut peer = RawClient::v5(broker.addr(), &unique("over-peer")).await;
    peer.subscribe_ok(1, &back, QoS::AtLeastOnce).await;
    peer.publish1(2, &there, b"across").await;
    assert_eq!(&client.receive().await.payload[..], b"across");
    client.publish1(2, &back, b"and back").await;
    assert_eq!(&peer.receive().await.payload[..], b"and back");
    client.disconnect().await;
}

/// A TLS listener serves MQTT with its certificate and key.
#[tokio::test]
async fn tls_listener_serves_mqtt() {
    let pki = Pki::new();
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Tls(pki.listener(None))],
        ..Settings::default()
    });
    let stream = tls(&broker, "tls", &pki.connector(false))
        .await
        .expect("TLS handshake");
    round_trip(&broker, listener(&broker, "tls"), Box::new(stream)).await;
}

/// A TLS listener that requires client certificates refuses a client
/// without one and serves a client with one issued by its CA.
#[tokio::test]
async fn tls_listener_requiring_client_certificates_refuses_clients_without_one() {
    let pki = Pki::new();
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Tls(pki.listener(Some(true)))],
        ..Settings::default()
    });
    // With TLS 1.3 the client may finish its handshake before the server
    // rejects it; then the first read fails.
    if let Ok(stream) = tls(&broker, "tls", &pki.connector(false)).await {
        let mut client = RawClient::over(Box::new(stream), V5, listener(&broker, "tls"));
        client
            .send(Packet::Connect(Box::new(connect_packet(
                V5,
                &unique("nocert"),
            ))))
            .await;
        match client.read_checked(TIMEOUT).await {
            Read::Closed(_) => {}
            other => panic!("expected the connection refused, got {other:?}"),
        }
    }
    let stream = tls(&broker, "tls", &pki.connector(true))
        .await
        .expect("TLS handshake with a client certificate");
    round_trip(&broker, listener(&broker, "tls"), Box::new(stream)).await;
}

/// `use_identity_as_username`: the certificate's CN is the username, and a
/// client known by its certificate may only use its own client ids, so a
/// valid certificate does not let it take over another client's session.
#[tokio::test]
async fn a_certificate_identity_binds_the_client_id() {
    let pki = Pki::new();
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Tls(TlsPem {
            identity_as_username: true,
            ..pki.listener(Some(true))
        })],
        ..Settings::default()
    });
    let addr = listener(&broker, "tls");
    let mut codes = Vec::new();
    for client_id in ["e2e client", "e2e client-7", "victim"] {
        let stream = tls(&broker, "tls", &pki.connector(true))
            .await
            .expect("TLS handshake with a client certificate");
        let mut client = RawClient::over(Box::new(stream), V5, addr);
        client
            .send(Packet::Connect(Box::new(connect_packet(V5, client_id))))
            .await;
        codes.push(client.expect_connack().await.reason_code);
    }
    assert_eq!(codes[..2], [ReasonCode::Success, ReasonCode::Success]);
    if !skip_on_mosquitto("Mosquitto does not bind client ids to certificate identities") {
        assert_eq!(codes[2], ReasonCode::NotAuthorized);
    }
}

/// SIGHUP reloads a TLS listener's certificate: new handshakes get the new
/// one, the connection already open stays, and a broken key file keeps
/// the certificate in force.
#[tokio::test]
async fn sighup_reloads_a_tls_listeners_certificate_without_dropping_connections() {
    if skip_unless_rookery("reloading Rookery's certificates") {
        return;
    }
    let (old, new) = (Pki::new(), Pki::new());
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Tls(old.listener(None))],
        ..Settings::default()
    });
    let addr = listener(&broker, "tls");
    let stream = tls(&broker, "tls", &old.connector(false))
        .await
        .expect("TLS handshake with the first certificate");
    let mut open = RawClient::over(Box::new(stream), V5, addr);
    open.send(Packet::Connect(Box::new(connect_packet(
        V5,
        &unique("tls-open"),
    ))))
    .await;
    open.expect_connack().await;

    std::fs::write(broker.dir().join("tls.crt"), &new.server_pem).expect("new certificate");
    std::fs::write(broker.dir().join("tls.key"), &new.server_key_pem).expect("new key");
    broker.signal(rookery_testkit::Signal::Hup);
    wait_for_reload(&broker, "ok").await;
    tls(&broker, "tls", &new.connector(false))
        .await
        .expect("TLS handshake with the reloaded certificate");
    assert!(
        tls(&broker, "tls", &old.connector(false)).await.is_err(),
        "the old certificate is no longer served"
    );
    open.ping().await;

    std::fs::write(broker.dir().join("tls.key"), "not a key").expect("break the key");
    broker.signal(rookery_testkit::Signal::Hup);
    wait_for_reload(&broker, "failed").await;
    tls(&broker, "tls", &new.connector(false))
        .await
        .expect("the certificate in force stays after a failed reload");
}

async fn wait_for_reload(broker: &Broker, result: &str) {
    let series = format!("rookery_reloads_total{{result=\"{result}\"}}");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while broker.metric(&series).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MQTT-6.0.0-2 and MQTT-6.0.0-4: a WebSocket listener speaks the `mqtt`
/// subprotocol and reassembles a packet split over frames.
#[tokio::test]
async fn mqtt_6_0_0_2_websocket_listener_serves_mqtt_across_frame_boundaries() {
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Ws],
        ..Settings::default()
    });
    let addr = broker.listener("ws").expect("a ws listener");
    let io = websocket(tcp(&broker, "ws").await, "ws", addr).await;
    let mut client = RawClient::over(io, V5, addr);
    // CONNECT in two frames.
    let mut connect = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(V5, &unique("ws-split"))))
        .encode(V5, &mut connect)
        .expect("encode CONNECT");
    let (head, tail) = connect.split_at(7);
    client.send_bytes(head).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send_bytes(tail).await;
    assert_eq!(
        client.expect_connack().await.reason_code,
        ReasonCode::Success
    );
    client.disconnect().await;

    let io = websocket(tcp(&broker, "ws").await, "ws", addr).await;
    round_trip(&broker, addr, io).await;
}

/// MQTT-6.0.0-1: MQTT goes in binary frames; a text frame closes the connection.
#[tokio::test]
async fn mqtt_6_0_0_1_websocket_text_frame_closes_the_connection() {
    // Mosquitto 2.0.11 keeps the connection open after a text frame.
    if skip_on_mosquitto("it does not close a WebSocket connection on a text frame") {
        return;
    }
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Ws],
        ..Settings::default()
    });
    let addr = broker.listener("ws").expect("a ws listener");
    let request = mqtt_ws_request(&format!("ws://localhost:{}/mqtt", addr.port()))
        .expect("a WebSocket request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp(&broker, "ws").await)
        .await
        .expect("WebSocket handshake");
    let mut connect = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(V5, &unique("ws-text"))))
        .encode(V5, &mut connect)
        .expect("encode CONNECT");
    ws.send(Message::binary(connect.to_vec()))
        .await
        .expect("send CONNECT");
    match tokio::time::timeout(TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Binary(_)))) => {}
        other => panic!("expected CONNACK in a binary frame, got {other:?}"),
    }
    ws.send(Message::text("PINGREQ?"))
        .await
        .expect("send a text frame");
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Err(_) => panic!("expected the connection closed within {TIMEOUT:?}"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            // A DISCONNECT (5.0) may come first.
            Ok(Some(Ok(Message::Binary(bytes)))) => assert_eq!(bytes.first(), Some(&0xE0)),
            Ok(Some(Ok(other))) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A secure WebSocket listener serves MQTT over WebSocket over TLS.
#[tokio::test]
async fn secure_websocket_listener_serves_mqtt() {
    let pki = Pki::new();
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Wss(pki.listener(None))],
        ..Settings::default()
    });
    let addr = broker.listener("wss").expect("a wss listener");
    let stream = tls(&broker, "wss", &pki.connector(false))
        .await
        .expect("TLS handshake");
    let io = websocket(stream, "wss", addr).await;
    round_trip(&broker, addr, io).await;
}

/// A TCP listener behind a load balancer takes a PROXY protocol v1 (text)
/// or v2 (binary) header before MQTT, and refuses a connection without one.
#[tokio::test]
async fn proxy_protocol_listener_takes_v1_and_v2_headers_and_refuses_a_connection_without() {
    if skip_unless_rookery("the PROXY protocol (Mosquitto has none)") {
        return;
    }
    let broker = Broker::start_with(Settings {
        listeners: vec![Listener::Proxy],
        ..Settings::default()
    });
    let mut v1 = tcp(&broker, "proxy").await;
    v1.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1883\r\n")
        .await
        .expect("send a v1 header");
    round_trip(&broker, listener(&broker, "proxy"), Box::new(v1)).await;

    let mut v2 = tcp(&broker, "proxy").await;
    let mut header = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&[203, 0, 113, 8, 127, 0, 0, 1]);
    header.extend_from_slice(&40001u16.to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    v2.write_all(&header).await.expect("send a v2 header");
    round_trip(&broker, listener(&broker, "proxy"), Box::new(v2)).await;

    let bare_stream = Box::new(tcp(&broker, "proxy").await);
    let mut bare = RawClient::over(bare_stream, V5, listener(&broker, "proxy"));
    bare.send(Packet::Connect(Box::new(connect_packet(
        V5,
        &unique("bare"),
    ))))
    .await;
    match bare.read_checked(TIMEOUT).await {
        Read::Closed(_) => {}
        other => panic!("expected a connection without a PROXY header refused, got {other:?}"),
    }
}
