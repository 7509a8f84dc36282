//! A raw MQTT client: one connection (TCP, or any byte stream such as TLS
//! or [`crate::WsIo`]), packets encoded and decoded with `rookery_codec`,
//! nothing done behind the test's back (no automatic acknowledgements, pings,
//! retries or reconnections). It shows what a client library hides: exact
//! reason codes, DUP flags, packet identifiers, properties, malformed input,
//! and how a connection ended.
//!
//! Two families of operations:
//! - plain ones (`connect_ok`, `expect_puback`, `publish1`, `subscribe_ok`,
//!   ...) for conformance tests: the next packet must be the one expected,
//!   and anything else, including a malformed packet from the broker or a
//!   connection that ends mid-packet, panics with what was expected;
//! - `try_` ones (and [`RawClient::read`], [`RawClient::read_until`]) for
//!   tests that go on after a failure, such as a node killed under the
//!   client: they return a [`ClientError`] or [`Read::Closed`], and keep the
//!   packets that arrive while they wait for another for the next reads.
//!
//! Every wait is bounded: by [`TIMEOUT`], or by the wait a caller gives.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rookery_codec::{
    Ack, ByteString, ConnAck, Connect, DecodeError, Disconnect, Packet, PacketId, ProtocolVersion,
    Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties,
    Subscription, SubscriptionOptions, Unsubscribe, UnsubscribeProperties, decode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{QUIET, TIMEOUT};

/// A byte stream MQTT can run over: TCP, TLS, a WebSocket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Io for T {}

/// What a bounded read found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per read in a test; matching beats boxing
pub enum Read {
    /// A whole packet.
    Packet(Packet),
    /// The connection ended, and how.
    Closed(Ended),
    /// Nothing arrived in time.
    Nothing,
}

/// How a connection ended, as a read found it.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// The broker closed it between two packets.
    #[error("{addr}: end of stream")]
    Closed {
        /// The broker's address.
        addr: SocketAddr,
    },
    /// It failed (was reset) between two packets.
    #[error("{addr}: {source}")]
    Failed {
        /// The broker's address.
        addr: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// It ended, closed or failed, in the middle of a packet.
    #[error("{addr}: ended after a partial packet {partial:02x?}")]
    Truncated {
        /// The broker's address.
        addr: SocketAddr,
        /// The bytes of the packet that never finished.
        partial: Vec<u8>,
    },
    /// The broker sent bytes that are no MQTT packet.
    #[error("{addr}: the broker sent a malformed packet: {error} (buffer {buffer:02x?})")]
    Malformed {
        /// The broker's address.
        addr: SocketAddr,
        /// What the codec found wrong.
        error: DecodeError,
        /// The bytes that did not decode.
        buffer: Vec<u8>,
    },
}

impl Ended {
    /// Whether the connection ended between whole packets, as a broker
    /// closes one; not when the broker sent something broken.
    pub fn is_clean(&self) -> bool {
        matches!(self, Ended::Closed { .. } | Ended::Failed { .. })
    }
}

/// Why a `try_` operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The broker's address.
        addr: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// The TCP connection was not opened within [`TIMEOUT`].
    #[error("connect to {addr}: timed out")]
    ConnectTimeout {
        /// The broker's address.
        addr: SocketAddr,
    },
    /// A write failed.
    #[error("write to {addr}: {source}")]
    Write {
        /// The broker's address.
        addr: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// A write did not finish within [`TIMEOUT`].
    #[error("write to {addr}: blocked for {TIMEOUT:?}")]
    WriteBlocked {
        /// The broker's address.
        addr: SocketAddr,
    },
    /// The connection ended while the client waited for `what`.
    #[error("waiting for {what}: {ended}")]
    Ended {
        /// What the client waited for.
        what: String,
        /// How the connection ended.
        ended: Ended,
    },
    /// `what` did not arrive in time.
    #[error("{addr}: no {what} within {wait:?}; other packets: {others:?}")]
    NotWithin {
        /// The broker's address.
        addr: SocketAddr,
        /// What the client waited for.
        what: String,
        /// How long it waited.
        wait: Duration,
        /// The packets that came instead, kept for the next reads.
        others: Vec<Packet>,
    },
    /// Another packet came where only `what` may.
    #[error("{addr}: expected {what}, got {got:?}")]
    Unexpected {
        /// The broker's address.
        addr: SocketAddr,
        /// What was expected.
        what: &'static str,
        /// What came.
        got: Box<Packet>,
    },
}

/// A CONNECT of `version` for `client_id` with a clean start (Clean Session
/// in 3.1.1) and a 60 s keep alive.
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

/// A 3.1.1 CONNECT with Clean Session 1.
pub fn clean_v311(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V3_1_1, client_id)
}

/// A 5.0 CONNECT with Clean Start 1 and no session expiry.
pub fn clean_v5(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V5, client_id)
}

/// A 3.1.1 CONNECT with Clean Session 0: the session outlives every
/// connection.
pub fn persistent_v311(client_id: &str) -> Connect {
    Connect {
        clean_start: false,
        ..clean_v311(client_id)
    }
}

/// A 5.0 CONNECT that resumes (Clean Start 0) a session kept for `expiry_s`
/// seconds after the connection closes.
pub fn persistent_v5(client_id: &str, expiry_s: u32) -> Connect {
    let mut connect = clean_v5(client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(expiry_s);
    connect
}

/// A PUBLISH without properties; `id` is ignored for QoS 0.
pub fn publish_packet(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
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

/// A SUBSCRIBE under packet identifier `id` to each filter with its
/// options, without properties.
pub fn subscribe_packet(id: u16, filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
    Subscribe {
        packet_id: pid(id),
        subscriptions: filters
            .iter()
            .map(|(filter, options)| Subscription {
                filter: ByteString::from(*filter),
                options: *options,
            })
            .collect(),
        properties: SubscribeProperties::default(),
    }
}

/// A packet identifier; `id` must not be 0.
pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or_else(|| panic!("packet identifiers are not 0"))
}

/// The packet identifier for the `seq`-th message of a stream: 1 to 65535,
/// then again.
pub fn pid_for(seq: u64) -> u16 {
    // Below 65535 after the remainder, so the cast keeps every bit.
    (seq % 65_535) as u16 + 1
}

/// Subscription options with `qos` and nothing else set.
pub fn at(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// One raw MQTT connection; see the module for its two families of
/// operations.
#[derive(Debug)]
pub struct RawClient {
    stream: Box<dyn Io>,
    buf: BytesMut,
    /// How packets are encoded and decoded.
    version: ProtocolVersion,
    /// Where the stream leads, for messages.
    addr: SocketAddr,
    /// Packets read while waiting for another, returned by the next reads in
    /// arrival order.
    pending: VecDeque<Packet>,
}

impl RawClient {
    /// Opens a TCP connection to `addr` without sending anything; `version`
    /// is how packets will be encoded and decoded.
    pub async fn try_open(addr: SocketAddr, version: ProtocolVersion) -> Result<Self, ClientError> {
        let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Err(_) => return Err(ClientError::ConnectTimeout { addr }),
        };
        stream.set_nodelay(true).ok();
        Ok(RawClient::over(Box::new(stream), version, addr))
    }

    /// [`RawClient::try_open`], panicking if the connection fails.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        RawClient::try_open(addr, version)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client over an established byte stream (TLS, WebSocket) to `addr`.
    pub fn over(stream: Box<dyn Io>, version: ProtocolVersion, addr: SocketAddr) -> RawClient {
        RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            version,
            addr,
            pending: VecDeque::new(),
        }
    }

    /// Connects with `connect` and returns the client and the CONNACK,
    /// whatever its reason code; an error if the connection fails or its
    /// first packet is not a CONNACK within [`TIMEOUT`].
    pub async fn try_connect(
        addr: SocketAddr,
        connect: Connect,
    ) -> Result<(RawClient, ConnAck), ClientError> {
        let mut client = RawClient::try_open(addr, connect.protocol).await?;
        client.try_send(Packet::Connect(Box::new(connect))).await?;
        match client.read(TIMEOUT).await {
            Read::Packet(Packet::ConnAck(connack)) => Ok((client, *connack)),
            Read::Packet(other) => Err(ClientError::Unexpected {
                addr,
                what: "CONNACK",
                got: Box::new(other),
            }),
            Read::Closed(ended) => Err(ClientError::Ended {
                what: "CONNACK".to_owned(),
                ended,
            }),
            Read::Nothing => Err(client.not_within("CONNACK", TIMEOUT)),
        }
    }

    /// [`RawClient::try_connect`], panicking if it fails.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let id = connect.client_id.clone();
        RawClient::try_connect(addr, connect)
            .await
            .unwrap_or_else(|e| panic!("connect {id}: {e}"))
    }

    /// Connects with `connect` and checks that the broker accepted it.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let id = connect.client_id.clone();
        let (client, connack) = RawClient::connect_with(addr, connect).await;
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "CONNACK to {id} at {addr}: {connack:?}"
        );
        (client, connack)
    }

    /// Connects until the broker accepts, retrying every 200 ms for up to
    /// `limit` (a node that has just started may still wait for its store);
    /// panics with the last error after that.
    pub async fn connect_retrying(
        addr: SocketAddr,
        connect: Connect,
        limit: Duration,
    ) -> (RawClient, ConnAck) {
        let deadline = Instant::now() + limit;
        loop {
            let why = match RawClient::try_connect(addr, connect.clone()).await {
                Ok((client, connack)) if connack.reason_code == ReasonCode::Success => {
                    return (client, connack);
                }
                Ok((_, connack)) => format!("refused: {connack:?}"),
                Err(why) => why.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "connect {} to {addr}: not accepted within {limit:?}; last: {why}",
                    connect.client_id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Connects a 5.0 client `client_id` with a clean start.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, clean_v5(client_id)).await.0
    }

    /// Connects a 3.1.1 client `client_id` with a clean session.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, clean_v311(client_id)).await.0
    }

    /// The address this client connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one packet; an error if the connection is gone. Panics if the
    /// codec refuses to encode it (a mistake of the test).
    pub async fn try_send(&mut self, packet: Packet) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        packet
            .encode(self.version, &mut out)
            .unwrap_or_else(|e| panic!("encode {packet:?}: {e}"));
        self.write(&out).await
    }

    /// Sends one packet. A broker may already have closed the connection:
    /// the test sees that on its next read.
    pub async fn send(&mut self, packet: Packet) {
        let _ = self.try_send(packet).await;
    }

    /// Sends bytes as they are, for packets the codec refuses to encode; a
    /// failed write shows on the next read, as for [`RawClient::send`].
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.write(bytes).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let addr = self.addr;
        let write = async {
            self.stream.write_all(bytes).await?;
            // A WebSocket sends what was written only on flush.
            self.stream.flush().await
        };
        match tokio::time::timeout(TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ClientError::Write { addr, source }),
            Err(_) => Err(ClientError::WriteBlocked { addr }),
        }
    }

    /// The next packet (one kept by an earlier wait first), or the
    /// connection's end, or nothing within `wait`.
    pub async fn read(&mut self, wait: Duration) -> Read {
        match self.pending.pop_front() {
            Some(packet) => Read::Packet(packet),
            None => self.read_wire(wait).await,
        }
    }

    /// [`RawClient::read`], but a malformed packet from the broker, or a
    /// connection that ends mid-packet, panics: in a conformance test that
    /// is a failure whatever the test expects next.
    pub async fn read_checked(&mut self, wait: Duration) -> Read {
        match self.read(wait).await {
            Read::Closed(ended) if !ended.is_clean() => panic!("{ended}"),
            read => read,
        }
    }

    async fn read_wire(&mut self, wait: Duration) -> Read {
        let deadline = Instant::now() + wait;
        loop {
            match decode(&mut self.buf, self.version, u32::MAX) {
                Ok(Some(packet)) => return Read::Packet(packet),
                Ok(None) => {}
                Err(error) => {
                    return Read::Closed(Ended::Malformed {
                        addr: self.addr,
                        error,
                        buffer: self.buf.to_vec(),
                    });
                }
            }
            let ending = match tokio::time::timeout_at(
                deadline,
                self.stream.read_buf(&mut self.buf),
            )
            .await
            {
                Err(_) => return Read::Nothing,
                Ok(Ok(0)) => None,
                Ok(Err(e)) => Some(e),
                Ok(Ok(_)) => continue,
            };
            let addr = self.addr;
            return Read::Closed(match ending {
                _ if !self.buf.is_empty() => Ended::Truncated {
                    addr,
                    partial: self.buf.to_vec(),
                },
                None => Ended::Closed { addr },
                Some(source) => Ended::Failed { addr, source },
            });
        }
    }

    /// Reads until a packet that `pick` accepts, keeping the others for the
    /// next reads; an error if the connection ends or nothing is picked
    /// within `wait`. `what` names the packet for the error.
    pub async fn read_until<T>(
        &mut self,
        wait: Duration,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, ClientError> {
        for i in 0..self.pending.len() {
            if let Some(found) = pick(&self.pending[i]) {
                self.pending.remove(i);
                return Ok(found);
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_wire(left).await {
                Read::Packet(packet) => match pick(&packet) {
                    Some(found) => return Ok(found),
                    None => self.pending.push_back(packet),
                },
                Read::Closed(ended) => {
                    let what = what.to_owned();
                    return Err(ClientError::Ended { what, ended });
                }
                Read::Nothing => return Err(self.not_within(what, wait)),
            }
        }
    }

    fn not_within(&self, what: &str, wait: Duration) -> ClientError {
        ClientError::NotWithin {
            addr: self.addr,
            what: what.to_owned(),
            wait,
            others: self.pending.iter().cloned().collect(),
        }
    }

    /// Reads raw bytes until the broker closes the connection, for answers
    /// this client cannot decode (a CONNACK to an unknown protocol level).
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
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
        match self.read_checked(TIMEOUT).await {
            Read::Packet(packet) => packet,
            Read::Closed(ended) => panic!("expected a packet; the connection ended: {ended}"),
            Read::Nothing => panic!("expected a packet; nothing arrived in {TIMEOUT:?}"),
        }
    }

    /// The next packet, which `pick` must accept.
    async fn expect_kind<T>(&mut self, what: &str, pick: impl FnOnce(&Packet) -> Option<T>) -> T {
        let packet = self.expect().await;
        pick(&packet).unwrap_or_else(|| panic!("expected {what}, got {packet:?}"))
    }

    /// The next packet, which must be an acknowledgement of `kind`.
    async fn expect_ack(&mut self, kind: PublishAck) -> Ack {
        self.expect_kind(kind.name(), |p| kind.of(p).cloned()).await
    }

    /// The next packet, which must be a CONNACK.
    pub async fn expect_connack(&mut self) -> ConnAck {
        self.expect_kind("CONNACK", |p| match p {
            Packet::ConnAck(connack) => Some((**connack).clone()),
            _ => None,
        })
        .await
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self) -> Publish {
        self.expect_kind("PUBLISH", |p| match p {
            Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// The next packet, which must be a PUBACK.
    pub async fn expect_puback(&mut self) -> Ack {
        self.expect_ack(PublishAck::Ack).await
    }

    /// The next packet, which must be a PUBREC.
    pub async fn expect_pubrec(&mut self) -> Ack {
        self.expect_ack(PublishAck::Received).await
    }

    /// The next packet, which must be a PUBREL.
    pub async fn expect_pubrel(&mut self) -> Ack {
        self.expect_ack(PublishAck::Release).await
    }

    /// The next packet, which must be a PUBCOMP.
    pub async fn expect_pubcomp(&mut self) -> Ack {
        self.expect_ack(PublishAck::Complete).await
    }

    /// Checks that nothing arrives for [`QUIET`].
    pub async fn expect_nothing(&mut self) {
        match self.read_checked(QUIET).await {
            Read::Nothing => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection, within [`TIMEOUT`], and
    /// returns the packets it sent before closing (typically none, a CONNACK
    /// or a DISCONNECT).
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        self.expect_closed_within(TIMEOUT).await
    }

    /// [`RawClient::expect_closed`] with a wait of `wait`.
    pub async fn expect_closed_within(&mut self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_checked(left).await {
                Read::Closed(_) => return before,
                Read::Packet(packet) => before.push(packet),
                Read::Nothing => panic!(
                    "expected {} to close the connection within {wait:?}; got {before:?}",
                    self.addr
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
    /// returns the SUBACK, which must be the next packet and answer `id`.
    pub async fn subscribe(
        &mut self,
        id: u16,
        filter: &str,
        options: SubscriptionOptions,
    ) -> SubAck {
        self.subscribe_with(id, &[(filter, options)], SubscribeProperties::default())
            .await
    }

    /// Subscribes to several filters at once, with SUBSCRIBE properties, as
    /// [`RawClient::subscribe`] does.
    pub async fn subscribe_with(
        &mut self,
        id: u16,
        filters: &[(&str, SubscriptionOptions)],
        properties: SubscribeProperties,
    ) -> SubAck {
        let subscribe = Subscribe {
            properties,
            ..subscribe_packet(id, filters)
        };
        self.send(Packet::Subscribe(subscribe)).await;
        let suback = self
            .expect_kind("SUBACK", |p| match p {
                Packet::SubAck(suback) => Some(suback.clone()),
                _ => None,
            })
            .await;
        assert_eq!(suback.packet_id, pid(id), "SUBACK for another SUBSCRIBE");
        suback
    }

    /// Subscribes to `filter` at `qos` and checks that `qos` was granted.
    pub async fn subscribe_ok(&mut self, id: u16, filter: &str, qos: QoS) {
        let suback = self.subscribe(id, filter, at(qos)).await;
        assert_granted(&suback, filter, qos);
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
        assert_granted(&suback, filter, qos);
    }

    /// Subscribes to `filter` at `qos` and checks that `qos` was granted,
    /// keeping the packets that arrive before the SUBACK (a resumed
    /// session's messages) for the next reads.
    pub async fn subscribe_amid_traffic(&mut self, id: u16, filter: &str, qos: QoS) {
        let subscribe = subscribe_packet(id, &[(filter, at(qos))]);
        let suback = async {
            self.try_send(Packet::Subscribe(subscribe)).await?;
            self.read_until(TIMEOUT, "SUBACK", |p| match p {
                Packet::SubAck(s) if s.packet_id == pid(id) => Some(s.clone()),
                _ => None,
            })
            .await
        };
        let suback = suback
            .await
            .unwrap_or_else(|e| panic!("SUBSCRIBE {filter}: {e}"));
        assert_granted(&suback, filter, qos);
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
        let _ = self.try_publish0(topic, payload).await;
    }

    /// Publishes at QoS 0; an error if the connection is gone.
    pub async fn try_publish0(&mut self, topic: &str, payload: &[u8]) -> Result<(), ClientError> {
        let publish = publish_packet(topic, QoS::AtMostOnce, 0, payload);
        self.try_send(Packet::Publish(publish)).await
    }

    /// Publishes at QoS 1 under `id` and waits for the PUBACK, which must be
    /// the next packet.
    pub async fn publish1(&mut self, id: u16, topic: &str, payload: &[u8]) -> Ack {
        let publish = publish_packet(topic, QoS::AtLeastOnce, id, payload);
        self.send(Packet::Publish(publish)).await;
        let ack = self.expect_puback().await;
        assert_eq!(ack.packet_id, pid(id), "PUBACK for another PUBLISH");
        ack
    }

    /// Publishes at `qos` (1 or 2) under `id` and waits up to `wait` for its
    /// PUBACK (QoS 1) or PUBREC (QoS 2), which is returned whatever its
    /// reason code. After a successful PUBREC the flow goes on with
    /// [`RawClient::try_release`].
    pub async fn try_publish(
        &mut self,
        qos: QoS,
        id: u16,
        topic: &str,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Ack, ClientError> {
        let answer = match qos {
            QoS::AtLeastOnce => PublishAck::Ack,
            QoS::ExactlyOnce => PublishAck::Received,
            QoS::AtMostOnce => panic!("QoS 0 is not acknowledged: use try_publish0"),
        };
        let publish = publish_packet(topic, qos, id, payload);
        self.try_send(Packet::Publish(publish)).await?;
        self.await_ack(wait, answer, id).await
    }

    /// Releases the QoS 2 message sent under `id` (PUBREL) and waits up to
    /// `wait` for its PUBCOMP, which is returned whatever its reason code.
    pub async fn try_release(&mut self, id: u16, wait: Duration) -> Result<Ack, ClientError> {
        self.try_send(Packet::PubRel(Ack::new(pid(id)))).await?;
        self.await_ack(wait, PublishAck::Complete, id).await
    }

    /// Reads until the acknowledgement of `kind` for packet identifier `id`,
    /// keeping other packets for later.
    async fn await_ack(
        &mut self,
        wait: Duration,
        kind: PublishAck,
        id: u16,
    ) -> Result<Ack, ClientError> {
        let id = pid(id);
        self.read_until(wait, kind.name(), |p| {
            kind.of(p).filter(|ack| ack.packet_id == id).cloned()
        })
        .await
    }

    /// Publishes `publish` (QoS 1 or 2) and completes its flow; each answer
    /// must be the next packet.
    pub async fn publish_flow(&mut self, publish: Publish) {
        let Some(id) = publish.packet_id else {
            panic!("publish_flow is for QoS 1 and 2; got {publish:?}")
        };
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

    /// Receives a PUBLISH and acknowledges it as its QoS requires (QoS 2 up
    /// to PUBCOMP).
    pub async fn receive(&mut self) -> Publish {
        let publish = self.expect_publish().await;
        self.ack(&publish).await;
        publish
    }

    /// Acknowledges a received PUBLISH: PUBACK, or PUBREC and then
    /// PUBREL/PUBCOMP. Messages that come before the PUBREL are kept for the
    /// next reads.
    pub async fn ack(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(Ack::new(id))).await;
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

    /// Acknowledges a received QoS 1 PUBLISH (nothing for QoS 0); an error
    /// if the connection is gone. QoS 2 needs [`RawClient::ack`].
    pub async fn try_puback(&mut self, publish: &Publish) -> Result<(), ClientError> {
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.try_send(Packet::PubAck(Ack::new(id))).await,
            (QoS::AtMostOnce, _) => Ok(()),
            (qos, id) => panic!("try_puback answers QoS 0 and 1; got {qos:?} {id:?}"),
        }
    }

    /// A round trip (PINGREQ, PINGRESP, which must be the next packet):
    /// everything sent before it has been processed by the broker when this
    /// returns.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.expect().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// A round trip (PINGREQ, PINGRESP), keeping other packets for later:
    /// the connection is alive and the broker has processed everything sent
    /// before.
    pub async fn try_ping(&mut self) -> Result<(), ClientError> {
        self.try_send(Packet::PingReq).await?;
        self.read_until(TIMEOUT, "PINGRESP", |p| {
            matches!(p, Packet::PingResp).then_some(())
        })
        .await
    }

    /// Sends a normal DISCONNECT and closes the connection.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        self.close().await;
    }

    /// Closes the connection without a DISCONNECT (an abnormal close).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The four acknowledgements of the QoS 1 and 2 flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishAck {
    /// PUBACK.
    Ack,
    /// PUBREC.
    Received,
    /// PUBREL.
    Release,
    /// PUBCOMP.
    Complete,
}

impl PublishAck {
    /// The packet's name, for messages.
    fn name(self) -> &'static str {
        match self {
            PublishAck::Ack => "PUBACK",
            PublishAck::Received => "PUBREC",
            PublishAck::Release => "PUBREL",
            PublishAck::Complete => "PUBCOMP",
        }
    }

    /// `packet`'s acknowledgement, if it is one of this kind.
    fn of(self, packet: &Packet) -> Option<&Ack> {
        match (self, packet) {
            (PublishAck::Ack, Packet::PubAck(ack))
            | (PublishAck::Received, Packet::PubRec(ack))
            | (PublishAck::Release, Packet::PubRel(ack))
            | (PublishAck::Complete, Packet::PubComp(ack)) => Some(ack),
            _ => None,
        }
    }
}

/// Checks that `suback` granted `qos` to its one filter.
fn assert_granted(suback: &SubAck, filter: &str, qos: QoS) {
    assert_eq!(
        suback.reason_codes,
        vec![ReasonCode::granted(qos)],
        "SUBACK to {filter}: {suback:?}"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::DuplexStream;

    use super::*;

    const BROKER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1883);

    /// A 5.0 client over an in-memory pipe, and the broker's end of it.
    fn piped() -> (RawClient, DuplexStream) {
        let (client, broker) = tokio::io::duplex(64 * 1024);
        (
            RawClient::over(Box::new(client), ProtocolVersion::V5, BROKER),
            broker,
        )
    }

    fn encoded(packets: &[Packet]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for packet in packets {
            packet.encode(ProtocolVersion::V5, &mut out).unwrap();
        }
        out.to_vec()
    }

    #[test]
    fn packet_identifiers_of_a_stream_run_from_1_to_65535_and_wrap() {
        assert_eq!(pid_for(0), 1);
        assert_eq!(pid_for(65_534), 65_535);
        assert_eq!(pid_for(65_535), 1);
    }

    #[test]
    fn builders_set_what_their_names_say() {
        assert!(clean_v5("a").clean_start);
        assert!(!persistent_v311("a").clean_start);
        assert_eq!(persistent_v311("a").protocol, ProtocolVersion::V3_1_1);
        let resumed = persistent_v5("a", 30);
        assert!(!resumed.clean_start);
        assert_eq!(resumed.properties.session_expiry_interval, Some(30));
        assert_eq!(
            publish_packet("t", QoS::AtMostOnce, 7, b"x").packet_id,
            None
        );
        assert_eq!(
            publish_packet("t", QoS::AtLeastOnce, 7, b"x").packet_id,
            Some(pid(7))
        );
    }

    #[tokio::test]
    async fn packets_wanted_later_are_kept_in_arrival_order() {
        let (mut client, mut broker) = piped();
        let one = publish_packet("a", QoS::AtMostOnce, 0, b"1");
        let two = publish_packet("b", QoS::AtMostOnce, 0, b"2");
        broker
            .write_all(&encoded(&[
                Packet::Publish(one.clone()),
                Packet::PingResp,
                Packet::Publish(two.clone()),
            ]))
            .await
            .unwrap();
        client
            .read_until(TIMEOUT, "PINGRESP", |p| {
                matches!(p, Packet::PingResp).then_some(())
            })
            .await
            .unwrap();
        assert_eq!(client.expect_publish().await, one);
        assert_eq!(client.expect_publish().await, two);
    }

    #[tokio::test]
    async fn a_close_between_packets_is_clean_and_one_mid_packet_is_not() {
        let (mut client, broker) = piped();
        drop(broker);
        match client.read(TIMEOUT).await {
            Read::Closed(ended) => assert!(ended.is_clean(), "{ended}"),
            other => panic!("expected a close, got {other:?}"),
        }

        let (mut client, mut broker) = piped();
        broker.write_all(&[0x30, 0x05, 0x00]).await.unwrap();
        drop(broker);
        match client.read(TIMEOUT).await {
            Read::Closed(Ended::Truncated { partial, .. }) => {
                assert_eq!(partial, [0x30, 0x05, 0x00])
            }
            other => panic!("expected a truncated packet, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_malformed_packet_is_reported_and_fails_a_checked_read() {
        let (mut client, mut broker) = piped();
        // Packet type 0 is reserved [MQTT-2.1.3-1].
        broker.write_all(&[0x00, 0x00]).await.unwrap();
        assert!(matches!(
            client.read(TIMEOUT).await,
            Read::Closed(Ended::Malformed { .. })
        ));
        let checked = tokio::spawn(async move { client.read_checked(TIMEOUT).await });
        assert!(checked.await.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn a_wait_that_times_out_names_what_came_instead() {
        let (mut client, mut broker) = piped();
        broker
            .write_all(&encoded(&[Packet::PingResp]))
            .await
            .unwrap();
        let error = client
            .try_publish(QoS::AtLeastOnce, 3, "t", b"x", Duration::from_millis(50))
            .await
            .unwrap_err();
        match &error {
            ClientError::NotWithin { what, others, .. } => {
                assert_eq!(what, "PUBACK");
                assert_eq!(others, &[Packet::PingResp]);
            }
            other => panic!("expected NotWithin, got {other:?}"),
        }
        // What the broker was sent: the PUBLISH under identifier 3.
        let mut sent = BytesMut::new();
        broker.read_buf(&mut sent).await.unwrap();
        let publish = decode(&mut sent, ProtocolVersion::V5, u32::MAX).unwrap();
        assert_eq!(
            publish,
            Some(Packet::Publish(publish_packet(
                "t",
                QoS::AtLeastOnce,
                3,
                b"x"
            )))
        );
    }

    #[tokio::test]
    async fn an_acknowledgement_for_another_identifier_is_not_taken() {
        let (mut client, mut broker) = piped();
        broker
            .write_all(&encoded(&[
                Packet::PubAck(Ack::new(pid(1))),
                Packet::PubAck(Ack::new(pid(2))),
            ]))
            .await
            .unwrap();
        let ack = client
            .try_publish(QoS::AtLeastOnce, 2, "t", b"x", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(ack.packet_id, pid(2));
        assert_eq!(client.expect_puback().await.packet_id, pid(1));
    }
}
