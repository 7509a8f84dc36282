//! One connection's protocol core driven by arbitrary bytes, as a client
//! would send them, for the `connection` fuzz target (`crates/broker/fuzz`,
//! behind the `fuzzing` feature). No socket, store or hub: this stands in
//! for `run` and `perform`, with the same calls into the core. Every
//! publish the client sends comes back to it as a delivery (as if it had
//! subscribed to everything), from memory or, for a persistent session,
//! through a pretend store queue, so that the acknowledgements it sends
//! meet real packets in flight.
//!
//! The first input byte picks the start: a CONNECT of the input's own (or
//! none), or one prepared for 3.1.1 or 5.0, clean or persistent, under
//! default or small limits; the second how many bytes each read brings.
//! What the core writes must always decode as the client's version.

use std::sync::Arc;

use bytes::BytesMut;
use rookery_codec::{
    AckProperties, ByteString, Connect, ConnectProperties, DecodeError, Packet, PacketId,
    ProtocolVersion, Publish, QoS, ReasonCode, SubAck, UnsubAck,
};
use rookery_store::proto::{self, DeliveryStage};

use super::negotiate::negotiate;
use super::outbox::Outbox;
use super::publish::{Outcome, Reply};
use super::session::{End, Rules, Session, Step, violated};
use super::subscribe;
use crate::config::Limits;
use crate::message::{Delivery, Message};
use crate::stats::Stats;

/// Runs one connection over `data` (see the module); panics only on a bug.
pub fn drive(data: &[u8]) {
    let [mode, read_size, input @ ..] = data else {
        return;
    };
    let limits = if mode & 0x80 == 0 {
        Limits::default()
    } else {
        small_limits()
    };
    let mut stream = BytesMut::new();
    if let Some(connect) = prepared_connect(*mode) {
        // A prepared CONNECT encodes: it is built from valid parts.
        if Packet::Connect(Box::new(connect))
            .encode(ProtocolVersion::V3_1_1, &mut stream)
            .is_err()
        {
            return;
        }
    }
    stream.extend_from_slice(input);
    let read_size = usize::from(read_size % 64) + 1;
    let mut reads = stream.chunks(read_size);
    let mut buf = BytesMut::new();
    let Some(mut driven) = connect(&mut reads, &mut buf, &limits) else {
        return;
    };
    loop {
        let ended = driven.handle_packets(&mut buf, &limits);
        driven.check_output();
        if ended.is_err() {
            return;
        }
        match reads.next() {
            Some(read) => buf.extend_from_slice(read),
            None => return,
        }
    }
}

/// The CONNECT the first input byte asks for, if any.
fn prepared_connect(mode: u8) -> Option<Connect> {
    let (protocol, clean_start, expiry) = match mode & 0x07 {
        1 => (ProtocolVersion::V3_1_1, true, None),
        2 => (ProtocolVersion::V3_1_1, false, None),
        3 => (ProtocolVersion::V5, true, None),
        4 => (ProtocolVersion::V5, false, Some(600)),
        5 => (ProtocolVersion::V3_1, true, None),
        _ => return None,
    };
    Some(Connect {
        protocol,
        clean_start,
        keep_alive: 30,
        client_id: ByteString::from("fuzz"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: expiry,
            ..ConnectProperties::default()
        },
    })
}

/// Limits small enough for short inputs to reach them.
fn small_limits() -> Limits {
    Limits {
        receive_maximum: 2,
        max_inflight: 2,
        max_queued_messages: 4,
        max_packet_size: 128,
        topic_alias_maximum: 2,
        max_keep_alive: 10,
        maximum_qos: 1,
        retain_available: false,
        wildcard_subscriptions: false,
        shared_subscriptions: false,
        subscription_identifiers: false,
        max_topic_length: 16,
        max_topic_levels: 3,
        max_session_expiry_s: 60,
        ..Limits::default()
    }
}

/// Reads until a CONNECT decodes and is granted, as `Socket::read_connect`
/// and `accept` do; `None` when the connection ends first.
fn connect<'a>(
    reads: &mut impl Iterator<Item = &'a [u8]>,
    buf: &mut BytesMut,
    limits: &Limits,
) -> Option<Driven> {
    let connect = loop {
        match rookery_codec::decode(buf, ProtocolVersion::V3_1_1, limits.max_packet_size) {
            Ok(Some(Packet::Connect(connect))) => break connect,
            // MQTT-3.1.0-1: anything else first ends the connection.
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => buf.extend_from_slice(reads.next()?),
        }
    };
    let mut out = Outbox::new();
    out.set_version(connect.protocol);
    let granted = negotiate(&connect, limits, || "assigned".to_owned(), false).ok()?;
    let client_id: Arc<str> = Arc::from(granted.client_id.as_str());
    let session = Session::new(
        &granted,
        client_id,
        1,
        1,
        limits,
        crate::auth::Authorizer::unrestricted("fuzz"),
    );
    Some(Driven {
        session,
        out,
        stats: Stats::default(),
        now_ms: 1_000,
        awaiting_store: Vec::new(),
        queued: Vec::new(),
        next_seq: 1,
    })
}

/// A connected session and what stands in for its I/O side.
struct Driven {
    session: Session,
    out: Outbox,
    stats: Stats,
    now_ms: u64,
    /// QoS 1/2 publishes whose pretend store write has not finished.
    awaiting_store: Vec<(Option<PacketId>, QoS, Outcome)>,
    /// A persistent session's deliveries not yet read from the pretend
    /// store queue.
    queued: Vec<proto::QueuedMessage>,
    next_seq: u64,
}

impl Driven {
    /// Decodes and handles every whole packet read, then what the pretend
    /// store finished meanwhile, as one turn of the I/O loop.
    fn handle_packets(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<(), End> {
        self.now_ms += 100;
        loop {
            let packet =
                match rookery_codec::decode(buf, self.out.version(), limits.max_packet_size) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(error) => return Err(self.malformed(&error)),
                };
            let rules = Rules {
                limits,
                stats: &self.stats,
            };
            let step =
                self.session
                    .handle(packet, rules, self.awaiting_store.len(), &mut self.out)?;
            self.perform(step, limits)?;
        }
        self.complete_publishes()?;
        self.settle_acks();
        self.send_stored();
        Ok(())
    }

    fn malformed(&mut self, error: &DecodeError) -> End {
        self.out.disconnect(super::disconnect_reason(error));
        End::ServerClosed
    }

    /// What `perform` does for a step, with the store and hub pretended.
    fn perform(&mut self, step: Step, limits: &Limits) -> Result<(), End> {
        let v5 = self.out.is_v5();
        match step {
            Step::Handled => {}
            Step::Publish(publish, topic) => self.publish(publish, topic),
            Step::Subscribe(packet) => {
                let granted = match subscribe::decide(&packet, limits, v5, |_| true) {
                    Ok(granted) => granted,
                    Err(violation) => return Err(violated(violation, &mut self.out)),
                };
                self.out.send(&Packet::SubAck(SubAck {
                    packet_id: packet.packet_id,
                    reason_codes: granted.reason_codes,
                    properties: AckProperties::default(),
                }));
            }
            Step::Unsubscribe(packet) => {
                let reason_codes = subscribe::unsubscribe_codes(&packet.filters, &[], |_| false);
                self.out.send(&Packet::UnsubAck(UnsubAck {
                    packet_id: packet.packet_id,
                    reason_codes,
                    properties: AckProperties::default(),
                }));
            }
            Step::Release { pubcomp, .. } => self.out.send(&Packet::PubComp(pubcomp)),
        }
        Ok(())
    }

    /// Routes a publish back to this session; a QoS 1/2 one is answered
    /// when its pretend store write finishes, with the outcome its first
    /// payload byte picks.
    fn publish(&mut self, publish: Publish, topic: ByteString) {
        let (qos, packet_id) = (publish.qos, publish.packet_id);
        if let Some(id) = packet_id.filter(|_| qos == QoS::ExactlyOnce) {
            self.session.inbound.hold_qos2(id);
        }
        let origin = self.session.client_id().clone();
        let message = Arc::new(Message::from_publish(&publish, topic, origin, self.now_ms));
        if self.session.persistent && qos != QoS::AtMostOnce {
            self.queued.push(proto::QueuedMessage {
                seq: self.next_seq,
                qos: u32::from(qos as u8),
                stage: DeliveryStage::Queued as i32,
                message: Some(message.to_proto()),
                ..proto::QueuedMessage::default()
            });
            self.next_seq += 1;
        } else if !self.session.outgoing.push(Delivery {
            message,
            qos,
            retain: publish.retain,
            subscription_ids: Vec::new(),
            shared_group: None,
            receipt: 0,
        }) {
            self.stats.dropped("queue_full");
        }
        if qos == QoS::AtMostOnce {
            return;
        }
        let outcome = match publish.payload.first().map(|byte| byte % 8) {
            Some(1) => Outcome::Duplicate,
            Some(2) => Outcome::Refused(ReasonCode::UnspecifiedError),
            Some(3) => Outcome::Unknown,
            _ => Outcome::Done,
        };
        self.awaiting_store.push((packet_id, qos, outcome));
    }

    /// Answers the publishes whose store writes finished, in order.
    fn complete_publishes(&mut self) -> Result<(), End> {
        for (packet_id, qos, outcome) in std::mem::take(&mut self.awaiting_store) {
            let reply = Reply::to(outcome, qos, self.out.is_v5());
            self.session.reply(packet_id, qos, reply, &mut self.out)?;
        }
        Ok(())
    }

    /// What acknowledgements lead to, as `settle_acks` does.
    fn settle_acks(&mut self) {
        self.session.take_acks();
        if !self.session.take_receipts().is_empty() {
            self.session.send_releases(&mut self.out);
        }
        if self.session.take_refill_due() {
            self.session
                .send_ready(self.now_ms, &mut self.out, &self.stats);
        }
        self.session
            .send_ready(self.now_ms, &mut self.out, &self.stats);
    }

    /// Reads the pretend store queue and sends what the window allows, as
    /// `send_stored` does.
    fn send_stored(&mut self) {
        if !self.session.persistent {
            return;
        }
        if !self.queued.is_empty() {
            self.session.outgoing.store_has_news();
        }
        if self.session.outgoing.store_read_from().is_some() {
            let queue = std::mem::take(&mut self.queued);
            self.session.outgoing.merge_stored(queue, true);
        }
        let batch = self.session.outgoing.next_stored(self.now_ms);
        let _records = self.session.stored_records(&batch);
        self.session.take_acks();
        self.session.write_stored(batch, &mut self.out, &self.stats);
    }

    /// Everything written decodes as packets of the client's version, and
    /// is then taken as flushed.
    fn check_output(&mut self) {
        let mut written = BytesMut::from(self.out.pending());
        loop {
            let decoded = rookery_codec::decode(&mut written, self.out.version(), u32::MAX);
            assert!(
                decoded.is_ok(),
                "the server wrote a packet its client cannot read: {decoded:?}"
            );
            if !matches!(decoded, Ok(Some(_))) {
                break;
            }
        }
        assert!(written.is_empty(), "the server wrote a partial packet");
        self.out.written();
    }
}

#[cfg(test)]
mod tests {
    use super::drive;

    /// Inputs the fuzzer should reach anyway; kept as a smoke test of the
    /// driver itself.
    #[test]
    fn the_driver_runs_a_whole_session() {
        // Mode 3: 5.0, clean. SUBSCRIBE "a", PUBLISH QoS 1 and 2 to "a",
        // PUBREL, PINGREQ, DISCONNECT, one byte per read.
        let session: &[u8] = &[
            0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x02, // SUBSCRIBE
            0x32, 0x07, 0x00, 0x01, b'a', 0x00, 0x02, 0x00, b'x', // PUBLISH 1
            0x34, 0x07, 0x00, 0x01, b'a', 0x00, 0x03, 0x00, b'y', // PUBLISH 2
            0x62, 0x02, 0x00, 0x03, // PUBREL
            0xC0, 0x00, // PINGREQ
            0xE0, 0x00, // DISCONNECT
        ];
        for mode in [1u8, 2, 3, 4, 5, 0x83, 0x84] {
            for read_size in [0u8, 7, 63] {
                drive(&[&[mode, read_size][..], session].concat());
            }
        }
        drive(&[]);
        drive(&[0]);
        drive(&[0, 0, 0x10, 0x00]);
    }

    /// Crashes the fuzzer found, replayed (each once made `drive` panic).
    #[test]
    fn inputs_that_crashed_before() {
        // A 5.0 session, then a second CONNECT with protocol level 0x4D:
        // DISCONNECT 0x84, which DISCONNECT cannot carry (now 0x82).
        drive(&[
            0x24, 0x11, 0x10, 0x10, 0x00, 0x04, 0x00, 0x11, 0x10, 0x10, 0x00, 0x4D, 0x51, 0x04,
            0x4D, 0x61, 0x2F, 0x62, 0x00, 0x02, 0x03, 0x23, 0x54, 0x54, 0x04,
        ]);
    }
}
