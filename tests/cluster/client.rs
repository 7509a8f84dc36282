//! A raw MQTT client on `rookery_codec` (after `tests/e2e/raw.rs`): one TCP
//! connection, nothing done behind the test's back (no automatic
//! acknowledgements, pings or reconnections), so that a test sees exactly
//! which messages arrived, which were acknowledged, and how a connection
//! ended — a node killed under it, or a DISCONNECT with a reason code.
//!
//! Unlike the e2e client, the operations a failure can interrupt return a
//! `Result` instead of panicking: the failover tests reconnect and go on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rookery_codec::{
    Ack, ByteString, ConnAck, Connect, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{FAILOVER, TIMEOUT};

/// What a bounded read found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per read in a test; matching beats boxing
pub enum Read {
    /// A whole packet.
    Packet(Packet),
    /// The connection ended (end of stream, reset, or a malformed packet),
    /// and why.
    Closed(String),
    /// Nothing arrived in time.
    Nothing,
}

/// A CONNECT of `version` for `client_id` with a 60 s keep alive; `clean`
/// is Clean Session (3.1.1) or Clean Start (5.0).
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: ByteString::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A 3.1.1 CONNECT with Clean Session 0: the session outlives every
/// connection.
pub fn persistent_v311(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V3_1_1, client_id, false)
}

/// A 3.1.1 CONNECT with Clean Session 1.
pub fn clean_v311(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V3_1_1, client_id, true)
}

/// A 5.0 CONNECT with Clean Start 1 and no session expiry.
pub fn clean_v5(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V5, client_id, true)
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

/// A packet identifier; `id` must not be 0.
pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("packet identifiers are not 0")
}

/// The packet identifier for the `seq`-th message of a stream: 1 to 65535,
/// then again.
pub fn pid_for(seq: u64) -> u16 {
    u16::try_from(seq % 65_535).expect("below 65535") + 1
}

/// One raw MQTT connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
    addr: SocketAddr,
    /// Packets read while waiting for a particular one, returned by the next
    /// reads in arrival order.
    pending: VecDeque<Packet>,
}

impl Client {
    /// Connects with `connect` and returns the client and the CONNACK,
    /// whatever its reason code; an error if the TCP connection fails, or
    /// no CONNACK arrives within [`TIMEOUT`].
    pub async fn try_connect(
        addr: SocketAddr,
        connect: Connect,
    ) -> Result<(Client, ConnAck), String> {
        let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
            Err(_) => return Err(format!("connect to {addr}: timed out")),
        };
        stream.set_nodelay(true).ok();
        let mut client = Client {
            stream,
            buf: BytesMut::with_capacity(4096),
            version: connect.protocol,
            addr,
            pending: VecDeque::new(),
        };
        client.send(Packet::Connect(Box::new(connect))).await?;
        match client.read_wire(TIMEOUT).await {
            Read::Packet(Packet::ConnAck(connack)) => Ok((client, *connack)),
            Read::Packet(other) => Err(format!("{addr}: expected CONNACK, got {other:?}")),
            Read::Closed(why) => Err(format!("{addr}: closed before CONNACK: {why}")),
            Read::Nothing => Err(format!("{addr}: no CONNACK within {TIMEOUT:?}")),
        }
    }

    /// Connects with `connect` and checks that the broker accepted it.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Client, ConnAck) {
        let id = connect.client_id.clone();
        let (client, connack) = Client::try_connect(addr, connect)
            .await
            .unwrap_or_else(|e| panic!("connect {id}: {e}"));
        assert_eq!(
            connack.reason_code,
            ReasonCode::Success,
            "CONNACK to {id} at {addr}: {connack:?}"
        );
        (client, connack)
    }

    /// Connects until the broker accepts, retrying every 200 ms for up to
    /// [`FAILOVER`] (a node that has just started may still wait for its
    /// store); panics with the last error after that.
    pub async fn connect_retrying(addr: SocketAddr, connect: Connect) -> (Client, ConnAck) {
        let deadline = Instant::now() + FAILOVER;
        loop {
            let why = match Client::try_connect(addr, connect.clone()).await {
                Ok((client, connack)) if connack.reason_code == ReasonCode::Success => {
                    return (client, connack);
                }
                Ok((_, connack)) => format!("refused: {connack:?}"),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                panic!(
                    "connect {} to {addr}: not accepted within {FAILOVER:?}; last: {why}",
                    connect.client_id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The address this client connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one packet; an error if the connection is gone.
    pub async fn send(&mut self, packet: Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        packet
            .encode(self.version, &mut out)
            .unwrap_or_else(|e| panic!("encode {packet:?}: {e}"));
        match tokio::time::timeout(TIMEOUT, self.stream.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write to {}: {e}", self.addr)),
            Err(_) => Err(format!("write to {}: blocked for {TIMEOUT:?}", self.addr)),
        }
    }

    /// The next packet, or the connection's end, or nothing within `wait`.
    pub async fn read(&mut self, wait: Duration) -> Read {
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
                Err(e) => {
                    return Read::Closed(format!(
                        "the broker sent a malformed packet: {e} (buffer {:02x?})",
                        &self.buf[..]
                    ));
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(0)) => return Read::Closed(self.ended("end of stream")),
                Ok(Err(e)) => return Read::Closed(self.ended(&e.to_string())),
                Ok(Ok(_)) => {}
            }
        }
    }

    fn ended(&self, why: &str) -> String {
        if self.buf.is_empty() {
            format!("{}: {why}", self.addr)
        } else {
            format!(
                "{}: {why} after a partial packet {:02x?}",
                self.addr,
                &self.buf[..]
            )
        }
    }

    /// Reads until a packet that `pick` accepts, keeping the others for the
    /// next reads; an error if the connection ends or nothing is picked
    /// within `wait`.
    pub async fn read_until<T>(
        &mut self,
        wait: Duration,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, String> {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let packet = self.pending.remove(i).expect("index in range");
            return pick(&packet).ok_or_else(|| "picked twice".to_owned());
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_wire(left).await {
                Read::Packet(packet) => match pick(&packet) {
                    Some(found) => return Ok(found),
                    None => self.pending.push_back(packet),
                },
                Read::Closed(why) => return Err(format!("waiting for {what}: {why}")),
                Read::Nothing => {
                    return Err(format!(
                        "{}: no {what} within {wait:?}; other packets: {:?}",
                        self.addr, self.pending
                    ));
                }
            }
        }
    }

    /// Subscribes to `filter` at `qos` under packet identifier `id` and
    /// checks that `qos` was granted. Messages that arrive meanwhile are kept
    /// for the next reads.
    pub async fn subscribe(&mut self, id: u16, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            subscriptions: vec![Subscription {
                filter: ByteString::from(filter),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: SubscribeProperties::default(),
        }))
        .await
        .unwrap_or_else(|e| panic!("SUBSCRIBE {filter}: {e}"));
        let suback: SubAck = self
            .read_until(TIMEOUT, "SUBACK", |p| match p {
                Packet::SubAck(s) if s.packet_id == pid(id) => Some(s.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("SUBSCRIBE {filter}: {e}"));
        assert_eq!(
            suback.reason_codes,
            vec![ReasonCode::granted(qos)],
            "SUBACK to {filter}: {suback:?}"
        );
    }

    /// Publishes at QoS 0.
    pub async fn publish0(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.send(Packet::Publish(publish_packet(
            topic,
            QoS::AtMostOnce,
            0,
            payload,
        )))
        .await
    }

    /// Publishes at QoS 1 under `id` and waits up to `wait` for its PUBACK,
    /// which is returned whatever its reason code.
    pub async fn publish1(
        &mut self,
        id: u16,
        topic: &str,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Ack, String> {
        self.send(Packet::Publish(publish_packet(
            topic,
            QoS::AtLeastOnce,
            id,
            payload,
        )))
        .await?;
        self.read_until(wait, "PUBACK", |p| match p {
            Packet::PubAck(ack) if ack.packet_id == pid(id) => Some(ack.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes at QoS 2 under `id` and waits up to `wait` for its PUBREC,
    /// which is returned whatever its reason code. After a successful one
    /// the flow goes on with [`Client::release`].
    pub async fn publish2(
        &mut self,
        id: u16,
        topic: &str,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Ack, String> {
        self.send(Packet::Publish(publish_packet(
            topic,
            QoS::ExactlyOnce,
            id,
            payload,
        )))
        .await?;
        self.read_until(wait, "PUBREC", |p| match p {
            Packet::PubRec(ack) if ack.packet_id == pid(id) => Some(ack.clone()),
            _ => None,
        })
        .await
    }

    /// Releases the QoS 2 message sent under `id` (PUBREL) and waits up to
    /// `wait` for its PUBCOMP, which is returned whatever its reason code.
    pub async fn release(&mut self, id: u16, wait: Duration) -> Result<Ack, String> {
        self.send(Packet::PubRel(Ack::new(pid(id)))).await?;
        self.read_until(wait, "PUBCOMP", |p| match p {
            Packet::PubComp(ack) if ack.packet_id == pid(id) => Some(ack.clone()),
            _ => None,
        })
        .await
    }

    /// Acknowledges a received QoS 1 PUBLISH (nothing for QoS 0).
    pub async fn puback(&mut self, publish: &Publish) -> Result<(), String> {
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(Ack::new(id))).await,
            (QoS::AtMostOnce, _) => Ok(()),
            (qos, id) => panic!("these tests subscribe at QoS 0 and 1; got {qos:?} {id:?}"),
        }
    }

    /// A round trip (PINGREQ, PINGRESP): the connection is alive and the
    /// broker has processed everything sent before.
    pub async fn ping(&mut self) -> Result<(), String> {
        self.send(Packet::PingReq).await?;
        self.read_until(TIMEOUT, "PINGRESP", |p| {
            matches!(p, Packet::PingResp).then_some(())
        })
        .await
    }

    /// Reads until the connection ends and returns the packets that came
    /// before (typically none, or a DISCONNECT); panics if it has not ended
    /// within `wait`.
    pub async fn expect_closed(&mut self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut before: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_wire(left).await {
                Read::Closed(_) => return before,
                Read::Packet(packet) => before.push(packet),
                Read::Nothing => panic!(
                    "expected {} to close the connection within {wait:?}; got {before:?}",
                    self.addr
                ),
            }
        }
    }
}
