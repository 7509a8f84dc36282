//! A raw-packet MQTT client: one TCP connection, packets encoded and decoded
//! with `rookery_codec`, nothing done behind the test's back (no automatic
//! acknowledgements, pings or retries). For the corner cases a client library
//! hides: malformed input, exact reason codes, DUP flags, packet identifiers
//! and properties.
//!
//! Every read is bounded by [`TIMEOUT`]; an unexpected packet, a malformed
//! packet from the broker or a timeout panics with what was expected.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rookery_codec::{
    Ack, ByteString, ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, Unsubscribe, UnsubscribeProperties, decode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{QUIET, TIMEOUT};

/// What a bounded read found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per read in a test; matching beats boxing
pub enum Read {
    /// A whole packet.
    Packet(Packet),
    /// The broker closed the connection (end of stream or reset).
    Closed,
    /// Nothing arrived in time.
    Nothing,
}

/// A byte stream MQTT can run over: TCP, TLS, a WebSocket bridge.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// One raw MQTT connection.
#[derive(Debug)]
pub struct RawClient {
    stream: Box<dyn Io>,
    buf: BytesMut,
    version: ProtocolVersion,
    /// Packets read while waiting for a particular one (a PUBREL), returned
    /// by the next reads.
    pending: VecDeque<Packet>,
}

/// A CONNECT of `version` for `client_id` with a clean start and a 60 s keep alive.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A 5.0 CONNECT that resumes (clean start 0) a session kept for `expiry_s`
/// seconds after the connection closes.
pub fn persistent_v5(client_id: &str, expiry_s: u32) -> Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(expiry_s);
    connect
}

/// A PUBLISH without properties; `id` is ignored for QoS 0.
pub fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from(topic),
        packet_id: if qos == QoS::AtMostOnce {
            None
        } else {
            PacketId::new(id)
        },
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A packet identifier; `id` must not be 0.
pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("packet identifiers are not 0")
}

/// Subscription options with `qos` and nothing else set.
pub fn at(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

impl RawClient {
    /// Opens a TCP connection without sending anything; `version` is how the
    /// broker's packets will be decoded.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        RawClient::over(Box::new(stream), version)
    }

    /// A client over an established byte stream (TLS, WebSocket).
    pub fn over(stream: Box<dyn Io>, version: ProtocolVersion) -> RawClient {
        RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            version,
            pending: VecDeque::new(),
        }
    }

    /// Connects with `connect` and returns the client and the CONNACK,
    /// whatever its reason code.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::open(addr, connect.protocol).await;
        client.send(Packet::Connect(Box::new(connect))).await;
        let connack = client.expect_connack().await;
        (client, connack)
    }

    /// Connects with `connect` and checks that the broker accepted it.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let (client, connack) = RawClient::connect_with(addr, connect).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "CONNACK {connack:?}"
        );
        (client, connack)
    }

    /// Connects a 5.0 client `client_id` with a clean start.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, connect_packet(ProtocolVersion::V5, client_id))
            .await
            .0
    }

    /// Connects a 3.1.1 client `client_id` with a clean session.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, connect_packet(ProtocolVersion::V3_1_1, client_id))
            .await
            .0
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet
            .encode(self.version, &mut out)
            .unwrap_or_else(|e| panic!("encode {packet:?}: {e}"));
        self.send_bytes(&out).await;
    }

    /// Sends bytes as they are, for packets the codec refuses to encode.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // A broker may already have closed the connection; the test sees that
        // on its next read.
        let _ = tokio::time::timeout(TIMEOUT, self.stream.write_all(bytes)).await;
    }

    /// Reads the next packet, or finds the connection closed, or nothing within `wait`.
    pub async fn read_within(&mut self, wait: Duration) -> Read {
        match self.pending.pop_front() {
            Some(packet) => Read::Packet(packet),
            None => self.read_wire(wait).await,
        }
    }

    async fn read_wire(&mut self, wait: Duration) -> Read {
        let deadline = Instant::now() + wait;
        loop {
            match decode(&mut self.buf, self.version, u32::MAX) {
                Ok(Some(packet)) => return Read::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!(
                    "the broker sent a malformed packet: {e} (buffer {:02x?})",
                    &self.buf[..]
                ),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if self.buf.is_empty() {
                        return Read::Closed;
                    }
                    return match decode(&mut self.buf, self.version, u32::MAX) {
                        Ok(Some(packet)) => Read::Packet(packet),
                        _ => panic!(
                            "connection closed after a partial packet {:02x?}",
                            &self.buf[..]
                        ),
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads raw bytes until the broker closes the connection, for answers
    /// this client cannot decode (a CONNACK to an unknown protocol level).
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!(
                    "expected a close within {TIMEOUT:?}; got {:02x?}",
                    &self.buf[..]
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return self.buf.split().to_vec(),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet, within [`TIMEOUT`].
    pub async fn expect(&mut self) -> Packet {
        match self.read_within(TIMEOUT).await {
            Read::Packet(packet) => packet,
            Read::Closed => panic!("expected a packet; the broker closed the connection"),
            Read::Nothing => panic!("expected a packet; nothing arrived in {TIMEOUT:?}"),
        }
    }

    /// The next packet, which must be a CONNACK.
    pub async fn expect_connack(&mut self) -> ConnAck {
        match self.read_within(TIMEOUT).await {
            Read::Packet(Packet::ConnAck(connack)) => *connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.expect().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBACK.
    pub async fn expect_puback(&mut self) -> Ack {
        match self.expect().await {
            Packet::PubAck(ack) => ack,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBREC.
    pub async fn expect_pubrec(&mut self) -> Ack {
        match self.expect().await {
            Packet::PubRec(ack) => ack,
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBREL.
    pub async fn expect_pubrel(&mut self) -> Ack {
        match self.expect().await {
            Packet::PubRel(ack) => ack,
            other => panic!("expected PUBREL, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBCOMP.
    pub async fn expect_pubcomp(&mut self) -> Ack {
        match self.expect().await {
            Packet::PubComp(ack) => ack,
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }

    /// Checks that nothing arrives for [`QUIET`].
    pub async fn expect_nothing(&mut self) {
        match self.read_within(QUIET).await {
            Read::Nothing => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection and returns the packets
    /// it sent before closing (typically none, a CONNACK or a DISCONNECT).
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        loop {
            match self.read_within(TIMEOUT).await {
                Read::Closed => return before,
                Read::Packet(packet) => before.push(packet),
                Read::Nothing => panic!(
                    "expected the broker to close the connection within {TIMEOUT:?}; got {before:?}"
                ),
            }
        }
    }

    /// Reads until the broker closes the connection, and checks that it sent
    /// nothing before closing, or (5.0) a DISCONNECT with one of `reasons`.
    pub async fn expect_closed_with(&mut self, reasons: &[ReasonCode]) {
        let before = self.expect_closed().await;
        match before.as_slice() {
            [] => {}
            [Packet::Disconnect(d)] if self.version.is_v5() && reasons.contains(&d.reason_code) => {
            }
            other => {
                panic!("expected the connection closed (DISCONNECT {reasons:?}), got {other:?}")
            }
        }
    }

    /// Reads until the broker closes the connection, and checks that it sent
    /// a DISCONNECT with `reason` first.
    pub async fn expect_disconnect(&mut self, reason: ReasonCode) -> Disconnect {
        let before = self.expect_closed().await;
        match before.as_slice() {
            [Packet::Disconnect(d)] if d.reason_code == reason => d.clone(),
            other => panic!("expected DISCONNECT {reason:?} and a close, got {other:?}"),
        }
    }

    /// Subscribes to `filter` with `options` under packet identifier `id` and
    /// returns the SUBACK (which must answer `id`).
    pub async fn subscribe(
        &mut self,
        id: u16,
        filter: &str,
        options: SubscriptionOptions,
    ) -> SubAck {
        self.subscribe_with(id, &[(filter, options)], SubscribeProperties::default())
            .await
    }

    /// Subscribes to several filters at once, with SUBSCRIBE properties.
    pub async fn subscribe_with(
        &mut self,
        id: u16,
        filters: &[(&str, SubscriptionOptions)],
        properties: SubscribeProperties,
    ) -> SubAck {
        let subscriptions = filters
            .iter()
            .map(|(filter, options)| Subscription {
                filter: ByteString::from(*filter),
                options: *options,
            })
            .collect();
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            subscriptions,
            properties,
        }))
        .await;
        match self.expect().await {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, pid(id), "SUBACK for another SUBSCRIBE");
                suback
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to `filter` at `qos` and checks that `qos` was granted.
    pub async fn subscribe_ok(&mut self, id: u16, filter: &str, qos: QoS) {
        let suback = self.subscribe(id, filter, at(qos)).await;
        assert_eq!(
            suback.reason_codes,
            vec![ReasonCode::granted(qos)],
            "SUBACK {suback:?}"
        );
    }

    /// Subscribes with a subscription identifier (5.0) and checks the grant.
    pub async fn subscribe_id(&mut self, id: u16, filter: &str, qos: QoS, sub_id: u32) {
        let properties = SubscribeProperties {
            subscription_identifier: NonZeroU32::new(sub_id),
            ..SubscribeProperties::default()
        };
        let suback = self
            .subscribe_with(id, &[(filter, at(qos))], properties)
            .await;
        assert_eq!(
            suback.reason_codes,
            vec![ReasonCode::granted(qos)],
            "SUBACK {suback:?}"
        );
    }

    /// Unsubscribes from `filter` and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, id: u16, filter: &str) {
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(id),
            filters: vec![ByteString::from(filter)],
            properties: UnsubscribeProperties::default(),
        }))
        .await;
        match self.expect().await {
            Packet::UnsubAck(ack) => assert_eq!(ack.packet_id, pid(id)),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 0.
    pub async fn publish0(&mut self, topic: &str, payload: &[u8]) {
        self.send(Packet::Publish(publish(topic, QoS::AtMostOnce, 0, payload)))
            .await;
    }

    /// Publishes at QoS 1 under `id` and waits for the PUBACK.
    pub async fn publish1(&mut self, id: u16, topic: &str, payload: &[u8]) -> Ack {
        self.send(Packet::Publish(publish(
            topic,
            QoS::AtLeastOnce,
            id,
            payload,
        )))
        .await;
        let ack = self.expect_puback().await;
        assert_eq!(ack.packet_id, pid(id), "PUBACK for another PUBLISH");
        ack
    }

    /// Publishes `publish` (QoS 1 or 2) and completes its flow.
    pub async fn publish_flow(&mut self, publish: Publish) {
        let id = publish.packet_id.expect("QoS 1 or 2");
        let qos = publish.qos;
        self.send(Packet::Publish(publish)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert_eq!(self.expect_puback().await.packet_id, id),
            QoS::ExactlyOnce => {
                assert_eq!(self.expect_pubrec().await.packet_id, id);
                self.send(Packet::PubRel(Ack::new(id))).await;
                assert_eq!(self.expect_pubcomp().await.packet_id, id);
            }
        }
    }

    /// Receives a PUBLISH and acknowledges it as its QoS requires (QoS 2 up to PUBCOMP).
    pub async fn receive(&mut self) -> Publish {
        let publish = self.expect_publish().await;
        self.ack(&publish).await;
        publish
    }

    /// Acknowledges a received PUBLISH: PUBACK, or PUBREC and then PUBREL/PUBCOMP.
    pub async fn ack(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(Ack::new(id))).await;
                // Other messages may come before the PUBREL; keep them for later.
                loop {
                    match self.read_wire(TIMEOUT).await {
                        Read::Packet(Packet::PubRel(rel)) if rel.packet_id == id => break,
                        Read::Packet(other) => self.pending.push_back(other),
                        other => panic!("expected PUBREL {id:?}, got {other:?}"),
                    }
                }
                self.send(Packet::PubComp(Ack::new(id))).await;
            }
        }
    }

    /// Sends a normal DISCONNECT and closes the connection.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        self.close().await;
    }

    /// Closes the TCP connection without a DISCONNECT (an abnormal close).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// A round trip (PINGREQ, PINGRESP): everything sent before it has been
    /// processed by the broker when this returns.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.expect().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}
