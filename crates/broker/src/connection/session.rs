//! The protocol core of one connected session: what the client sends and
//! what the server sends it, as state changes. No socket, no store, no
//! waiting: a handler writes the packets it answers with to the `Outbox`
//! and returns what the I/O side must do (a store write, routing a
//! publish); `run` performs it.

use rookery_auth::Access;
use rookery_codec::{
    Ack, AckProperties, Disconnect, EncodeError, Packet, PacketId, Publish, QoS, ReasonCode,
    Subscribe, Unsubscribe,
};
use rookery_store::proto;

use super::inbound::{Admitted, Inbound, Violation};
use super::negotiate::Granted;
use super::outbox::Outbox;
use super::publish::{self, Reply};
use super::records::SessionRecords;
use crate::auth::Authorizer;
use crate::config::Limits;
use crate::hub::ClientId;
use crate::outgoing::{Outgoing, ReadyPublish, Resend, StoredBatch};
use crate::stats::Stats;

/// Why a connection ended; it decides the will and the session's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent DISCONNECT; `will` when its reason was 0x04.
    ClientDisconnected { will: bool, expiry_s: Option<u32> },
    /// The server closed it: a rule broken, keep alive expired, a store
    /// write failed. The will is published.
    ServerClosed,
    /// The socket closed or broke without DISCONNECT: the will is published.
    ConnectionLost,
    /// Another connection took the session over; the store knows already.
    TakenOver,
    /// The store took the session offline itself (this edge's lease
    /// lapsed); it knows already.
    Released,
    /// The broker is stopping (it drains): the client was told, and the
    /// will is published, as for any close by the server.
    Shutdown,
}

/// What the core reads of the broker: its limits, and the counters it
/// keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules<'a> {
    /// The protocol limits in force.
    pub limits: &'a Limits,
    /// The broker's counters.
    pub stats: &'a Stats,
}

/// What the I/O side must do for a packet the core could not finish alone.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing more: the answers, if any, are in the outbox.
    Handled,
    /// A PUBLISH admitted with its topic resolved: route it.
    Publish(Publish, rookery_codec::ByteString),
    /// Record the subscriptions, then answer.
    Subscribe(Subscribe),
    /// Drop the subscriptions, then answer.
    Unsubscribe(Unsubscribe),
    /// PUBREL: commit the release (persistent sessions), then send PUBCOMP;
    /// for a persistent 5.0 session, the store's answer says whether it
    /// held the identifier, and PUBCOMP says 0x92 if it did not.
    Release {
        record: Option<proto::Command>,
        pubcomp: Ack,
    },
}

/// The state of a connected session.
#[derive(Debug)]
pub(super) struct Session {
    /// The session's identity in the store, for its records.
    pub records: SessionRecords,
    /// Session expiry above 0: its QoS 1/2 messages are queued in the store.
    pub persistent: bool,
    /// The session expiry interval granted at CONNECT.
    pub expiry_s: u32,
    /// MQTT-3.14.2-2: a DISCONNECT may not raise an expiry that was 0.
    requested_expiry_zero: bool,
    /// Seconds of keep alive in force; 0: none.
    pub keep_alive: u16,
    /// This connection's number, to tell it from a newer one of the client.
    pub connection_id: u64,
    /// The server-to-client flow.
    pub outgoing: Outgoing,
    /// The client-to-server flow.
    pub inbound: Inbound,
    /// Stored messages dropped as too large for the client, to acknowledge
    /// in the store.
    discarded: Vec<(PacketId, QoS, u64)>,
    /// Store acknowledgements (PUBACK, PUBCOMP) of the packets read so far,
    /// queued to the store together after the read; nothing waits on them.
    acks: Vec<proto::Command>,
    /// PUBREC records of this read, committed before their PUBRELs go out.
    receipts: Vec<proto::Command>,
    releases: Vec<PacketId>,
    /// An acknowledgement freed a window slot: send more after the read.
    refill_due: bool,
    /// What the client may publish, subscribe to and be sent.
    pub authorizer: Authorizer,
}

impl Session {
    /// The session a CONNECT was granted, under the store's `epoch`.
    pub fn new(
        granted: &Granted,
        client_id: ClientId,
        epoch: u64,
        connection_id: u64,
        limits: &Limits,
        authorizer: Authorizer,
    ) -> Session {
        Session {
            records: SessionRecords::new(client_id, epoch),
            persistent: granted.persistent(),
            expiry_s: granted.expiry_s,
            requested_expiry_zero: granted.requested_expiry_zero,
            keep_alive: granted.keep_alive,
            connection_id,
            outgoing: Outgoing::new(
                usize::from(granted.window),
                limits.max_queued_messages,
                limits.queue_overflow,
                granted.client_alias_maximum,
                granted.client_max_packet_size,
            )
            .with_max_queued_bytes(limits.max_queued_bytes),
            inbound: Inbound::default(),
            discarded: Vec::new(),
            acks: Vec::new(),
            receipts: Vec::new(),
            releases: Vec::new(),
            refill_due: false,
            authorizer,
        }
    }

    /// The session's client id.
    pub fn client_id(&self) -> &ClientId {
        self.records.client_id()
    }

    /// Handles one packet from the client. `awaiting_store`: its QoS 1/2
    /// publishes still waiting on the store.
    pub fn handle(
        &mut self,
        packet: Packet,
        rules: Rules<'_>,
        awaiting_store: usize,
        out: &mut Outbox,
    ) -> Result<Step, End> {
        match packet {
            Packet::Publish(publish) => self.admit(publish, rules, awaiting_store, out),
            Packet::PubAck(ack) => {
                self.completed(ack.packet_id, QoS::AtLeastOnce);
                Ok(Step::Handled)
            }
            Packet::PubRec(ack) => {
                self.received(&ack, out);
                Ok(Step::Handled)
            }
            Packet::PubComp(ack) => {
                self.completed(ack.packet_id, QoS::ExactlyOnce);
                Ok(Step::Handled)
            }
            Packet::PubRel(ack) => Ok(self.release(ack.packet_id, out.is_v5())),
            Packet::Subscribe(subscribe) => {
                let filters = subscribe.subscriptions.iter().map(|s| &s.filter);
                filters_not_empty(filters, out)?;
                Ok(Step::Subscribe(subscribe))
            }
            Packet::Unsubscribe(unsubscribe) => {
                filters_not_empty(&unsubscribe.filters, out)?;
                Ok(Step::Unsubscribe(unsubscribe))
            }
            Packet::PingReq => {
                out.send(&Packet::PingResp);
                Ok(Step::Handled)
            }
            Packet::Disconnect(disconnect) => Err(self.disconnected(&disconnect, out)),
            Packet::Connect(_) => {
                // MQTT-3.1.0-2: a second CONNECT is a protocol violation.
                Err(violated(
                    Violation::new(ReasonCode::ProtocolError, "second_connect"),
                    out,
                ))
            }
            Packet::Auth(_) => {
                // Without an authentication method in CONNECT, AUTH is a
                // protocol error (MQTT-4.12.0-1).
                Err(violated(
                    Violation::new(ReasonCode::ProtocolError, "auth_without_method"),
                    out,
                ))
            }
            other => {
                tracing::debug!(client_id = %self.client_id(), packet = ?other.packet_type(), "client sent a server-only packet");
                Err(violated(
                    Violation::new(ReasonCode::ProtocolError, "server_packet_from_client"),
                    out,
                ))
            }
        }
    }

    /// A PUBLISH: checked against the rules, answered at once when it is a
    /// QoS 2 retry or refused; otherwise handed on to be routed.
    fn admit(
        &mut self,
        publish: Publish,
        rules: Rules<'_>,
        awaiting_store: usize,
        out: &mut Outbox,
    ) -> Result<Step, End> {
        rules
            .stats
            .publish_received(publish.qos, publish.payload.len());
        let topic = match self.inbound.admit(&publish, rules.limits, awaiting_store) {
            Ok(Admitted::New { topic }) => topic,
            Ok(Admitted::Qos2Retry(packet_id)) => {
                // MQTT-4.3.3-9: acknowledged again, not delivered twice.
                out.send(&Packet::PubRec(Ack::new(packet_id)));
                return Ok(Step::Handled);
            }
            Err(violation) => return Err(violated(violation, out)),
        };
        let refused = publish::refusal(&topic, rules.limits).or_else(|| {
            // 3.1.1 has no way to say so: the publish is acknowledged and
            // dropped, as Mosquitto does.
            (!self.authorizer.may(&topic, Access::Write)).then_some(ReasonCode::NotAuthorized)
        });
        if let Some(reason) = refused {
            rules.stats.dropped("refused");
            self.reply(
                publish.packet_id,
                publish.qos,
                Reply::refused(reason, out.is_v5()),
                out,
            )?;
            return Ok(Step::Handled);
        }
        Ok(Step::Publish(publish, topic))
    }

    /// Answers a QoS 1/2 publish; a refusal frees a QoS 2 identifier.
    pub fn reply(
        &mut self,
        packet_id: Option<PacketId>,
        qos: QoS,
        reply: Reply,
        out: &mut Outbox,
    ) -> Result<(), End> {
        let Some(packet_id) = packet_id else {
            return Ok(());
        };
        match reply {
            Reply::Ack(reason_code) => {
                if reason_code.is_error() && qos == QoS::ExactlyOnce {
                    self.inbound.release_qos2(packet_id);
                }
                let ack = Ack {
                    packet_id,
                    reason_code,
                    properties: AckProperties::default(),
                };
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => out.send(&Packet::PubAck(ack)),
                    QoS::ExactlyOnce => out.send(&Packet::PubRec(ack)),
                }
                Ok(())
            }
            Reply::Close(reason) => {
                out.disconnect(reason);
                Err(End::ServerClosed)
            }
        }
    }

    /// PUBACK or PUBCOMP of a message sent to the client.
    fn completed(&mut self, packet_id: PacketId, qos: QoS) {
        let Some(stored) = self.outgoing.acknowledged(packet_id, qos) else {
            return;
        };
        if let Some(seq) = stored {
            let kind = match qos {
                QoS::ExactlyOnce => proto::AckKind::Pubcomp,
                _ => proto::AckKind::Puback,
            };
            self.acks
                .push(self.records.acknowledge(packet_id, kind, seq));
        }
        self.refill_due = true;
    }

    /// PUBREC of a QoS 2 message sent to the client.
    fn received(&mut self, ack: &Ack, out: &mut Outbox) {
        let packet_id = ack.packet_id;
        match self
            .outgoing
            .received(packet_id, ack.reason_code.is_error())
        {
            Some((stored, release)) => {
                if let Some(seq) = stored {
                    // Recorded before PUBREL goes out (after the read): after
                    // a failure the store resends PUBREL, never the PUBLISH.
                    // A refusing PUBREC ends the flow.
                    self.receipts.push(self.records.acknowledge(
                        packet_id,
                        proto::AckKind::Pubrec,
                        seq,
                    ));
                    if release {
                        self.releases.push(packet_id);
                    } else {
                        self.receipts.push(self.records.acknowledge(
                            packet_id,
                            proto::AckKind::Pubcomp,
                            seq,
                        ));
                    }
                } else if release {
                    out.send(&Packet::PubRel(Ack::new(packet_id)));
                }
                if !release {
                    self.refill_due = true;
                }
            }
            // MQTT-4.3.3: an unknown identifier is released with 0x92 (5.0).
            None if out.is_v5() => out.send(&Packet::PubRel(Ack {
                packet_id,
                reason_code: ReasonCode::PacketIdentifierNotFound,
                properties: AckProperties::default(),
            })),
            None => out.send(&Packet::PubRel(Ack::new(packet_id))),
        }
    }

    /// PUBREL of a client's QoS 2 publish: released in the store before
    /// PUBCOMP (persistent sessions), so the identifier may carry a new
    /// message only once the store knows. A persistent session's PUBCOMP
    /// says Success here; the store's answer may turn it into 0x92
    /// ([`Session::pubcomp_after_release`]).
    fn release(&mut self, packet_id: PacketId, v5: bool) -> Step {
        let known = self.inbound.release_qos2(packet_id);
        let reason_code = if known || self.persistent || !v5 {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        Step::Release {
            record: self
                .persistent
                .then(|| self.records.release_incoming(packet_id)),
            pubcomp: Ack {
                packet_id,
                reason_code,
                properties: AckProperties::default(),
            },
        }
    }

    /// The PUBCOMP of a persistent session's PUBREL once the store has
    /// released it: `held` is whether the store held the identifier. One it
    /// did not hold is 0x92 in 5.0, never Success: the PUBREL may follow a
    /// PUBREC that refused the message (a client that ignores the refusal,
    /// or one answered after a reconnection), and Success would tell the
    /// client a message was taken that no one will receive. After a lost
    /// PUBCOMP the store has released the identifier already, and 0x92 is
    /// "not an error during recovery" (MQTT 5 §3.7.2.1).
    pub fn pubcomp_after_release(mut pubcomp: Ack, held: bool, v5: bool) -> Ack {
        if !held && v5 {
            pubcomp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        pubcomp
    }

    /// DISCONNECT from the client.
    fn disconnected(&mut self, disconnect: &Disconnect, out: &mut Outbox) -> End {
        let expiry_s = disconnect.properties.session_expiry_interval;
        if self.requested_expiry_zero && expiry_s.is_some_and(|s| s > 0) {
            // MQTT-3.14.2-2.
            return violated(
                Violation::new(ReasonCode::ProtocolError, "disconnect_expiry_raised"),
                out,
            );
        }
        End::ClientDisconnected {
            will: disconnect.reason_code == ReasonCode::DisconnectWithWillMessage,
            expiry_s,
        }
    }

    /// The store acknowledgements gathered so far, to queue (nothing waits
    /// on them).
    pub fn take_acks(&mut self) -> Vec<proto::Command> {
        std::mem::take(&mut self.acks)
    }

    /// The PUBREC records of this read, to commit before `send_releases`.
    pub fn take_receipts(&mut self) -> Vec<proto::Command> {
        std::mem::take(&mut self.receipts)
    }

    /// The PUBRELs whose PUBRECs are committed.
    pub fn send_releases(&mut self, out: &mut Outbox) {
        for packet_id in self.releases.drain(..) {
            out.send(&Packet::PubRel(Ack::new(packet_id)));
        }
    }

    /// Whether an acknowledgement freed a slot of the window since the last
    /// call.
    pub fn take_refill_due(&mut self) -> bool {
        std::mem::take(&mut self.refill_due)
    }

    /// Writes what the window allows from the in-memory queue.
    pub fn send_ready(&mut self, now_ms: u64, out: &mut Outbox, stats: &Stats) {
        while out.room_for_more()
            && let Some(ready) = self.outgoing.next_memory(now_ms)
        {
            self.write_publish(ready, out, stats);
        }
    }

    /// The store records a batch of stored messages needs before it is
    /// written: packet identifiers of fresh messages, and acknowledgements
    /// of the expired ones (MQTT-3.3.2-5). Whether any fresh one is QoS 2.
    pub fn stored_records(&mut self, batch: &StoredBatch) -> (Vec<proto::Command>, bool) {
        let mut commands = Vec::new();
        for ready in &batch.fresh {
            if let Some(packet_id) = ready.packet_id {
                commands.push(self.records.mark_published(ready.seq, packet_id));
            }
        }
        for (seq, packet_id, qos) in &batch.expired {
            // Expired before it could be sent: recorded as sent and
            // acknowledged, so the store drops it.
            commands.push(self.records.mark_published(*seq, *packet_id));
            commands.extend(self.records.completion(*packet_id, *qos, *seq));
        }
        let exactly_once = batch
            .fresh
            .iter()
            .any(|ready| ready.publish.qos == QoS::ExactlyOnce);
        (commands, exactly_once)
    }

    /// Writes a batch of stored messages whose records are committed:
    /// resends first (MQTT-4.4.0-1), then fresh ones. Those too large for
    /// the client are acknowledged away in the store.
    pub fn write_stored(&mut self, batch: StoredBatch, out: &mut Outbox, stats: &Stats) {
        for resend in batch.resend {
            match resend {
                Resend::Publish(ready) => self.write_publish(*ready, out, stats),
                Resend::Release(packet_id) => out.send(&Packet::PubRel(Ack::new(packet_id))),
            }
        }
        for ready in batch.fresh {
            self.write_publish(ready, out, stats);
        }
        for (packet_id, qos, seq) in std::mem::take(&mut self.discarded) {
            let commands = self.records.completion(packet_id, qos, seq);
            self.acks.extend(commands);
        }
    }

    fn write_publish(&mut self, ready: ReadyPublish, out: &mut Outbox, stats: &Stats) {
        let ReadyPublish {
            mut publish,
            packet_id,
            ..
        } = ready;
        publish.packet_id = packet_id;
        let qos = publish.qos;
        let topic = publish.topic.clone();
        if !self.authorizer.may(&topic, Access::Read) {
            // Matched by a subscription the ACL allowed, on a topic it does
            // not: discarded as if it had been sent.
            stats.dropped("not_authorized");
            self.discard(packet_id, qos);
            return;
        }
        if out.is_v5() {
            self.outgoing.apply_alias(&mut publish);
        }
        let payload = publish.payload.len();
        match out.publish(publish, self.outgoing.max_packet_size()) {
            Ok(()) => stats.publish_sent(qos, payload),
            Err(EncodeError::PacketTooLarge { .. }) => {
                // MQTT-3.1.2-25: a packet larger than the client's maximum is
                // discarded as if it had been sent.
                stats.dropped("packet_too_large");
                tracing::debug!(client_id = %self.client_id(), %topic, "message larger than the client's maximum packet size dropped");
                self.discard(packet_id, qos);
            }
            Err(error) => tracing::error!(%error, "could not encode a PUBLISH"),
        }
    }

    /// A message not sent is forgotten; a stored one is acknowledged away
    /// in the store.
    fn discard(&mut self, packet_id: Option<PacketId>, qos: QoS) {
        if let Some(packet_id) = packet_id
            && let Some(Some(seq)) = self.outgoing.forget(packet_id)
        {
            self.discarded.push((packet_id, qos, seq));
        }
    }
}

/// MQTT-4.7.3-1: a topic filter is at least one character long. An empty
/// one parses (a zero-length string) but the protocol does not allow it: a
/// Protocol Error (MQTT 5.0 section 1.2), which closes the connection
/// (MQTT-4.13.1-1; 3.1.1: MQTT-4.8.0-1), not a SUBACK 0x8F, which is for a
/// well-formed filter the server refuses.
fn filters_not_empty<'a>(
    filters: impl IntoIterator<Item = &'a rookery_codec::ByteString>,
    out: &mut Outbox,
) -> Result<(), End> {
    if filters.into_iter().any(|filter| filter.is_empty()) {
        return Err(violated(
            Violation::new(ReasonCode::ProtocolError, "empty_topic_filter"),
            out,
        ));
    }
    Ok(())
}

/// A rule the client broke: counted, told to a 5.0 client, and the
/// connection ends.
pub(super) fn violated(violation: Violation, out: &mut Outbox) -> End {
    super::protocol_error(violation.label);
    out.disconnect(violation.reason);
    End::ServerClosed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use rookery_codec::{
        ByteString, Connect, ConnectProperties, DisconnectProperties, ProtocolVersion,
        PublishProperties,
    };
    use rookery_store::proto::DeliveryStage;

    use super::*;
    use crate::connection::negotiate::negotiate;
    use crate::message::{Delivery, Message};

    fn connected(
        protocol: ProtocolVersion,
        clean_start: bool,
        limits: &Limits,
    ) -> (Session, Outbox) {
        let mut connect = Connect {
            protocol,
            clean_start,
            keep_alive: 0,
            client_id: ByteString::from("c"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        if protocol.is_v5() && !clean_start {
            connect.properties.session_expiry_interval = Some(60);
        }
        let granted = negotiate(&connect, limits, String::new, false).unwrap();
        let mut out = Outbox::new();
        out.set_version(protocol);
        (
            Session::new(
                &granted,
                Arc::from("c"),
                1,
                1,
                limits,
                Authorizer::unrestricted("c"),
            ),
            out,
        )
    }

    fn message(topic: &str, qos: QoS) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"m"),
            qos,
            retain: false,
            properties: Default::default(),
            expires_at_ms: 0,
            origin: Arc::from("p"),
        }
    }

    fn publish(topic: &str, qos: QoS, id: u16) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from(topic),
            packet_id: PacketId::new(id),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"m"),
        }
    }

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).unwrap()
    }

    /// An acknowledgement of `id` with a reason code.
    fn ack_with(id: u16, reason_code: ReasonCode) -> Ack {
        Ack {
            reason_code,
            ..Ack::new(pid(id))
        }
    }

    fn handle(session: &mut Session, packet: Packet, out: &mut Outbox) -> Result<Step, End> {
        let limits = Limits::default();
        let stats = Stats::default();
        let rules = Rules {
            limits: &limits,
            stats: &stats,
        };
        session.handle(packet, rules, 0, out)
    }

    /// A QoS 2 message of the store queue sent before a reconnect: resent
    /// with DUP under its packet identifier.
    fn resumed_in_flight(session: &mut Session, out: &mut Outbox, id: u16) {
        session.outgoing.resume(
            vec![proto::QueuedMessage {
                seq: 1,
                qos: 2,
                stage: DeliveryStage::Published as i32,
                packet_id: u32::from(id),
                message: Some(message("t", QoS::ExactlyOnce).to_proto()),
                ..proto::QueuedMessage::default()
            }],
            0,
        );
        let batch = session.outgoing.next_stored(0);
        session.write_stored(batch, out, &Stats::default());
    }

    #[test]
    fn mqtt_3_12_4_1_pingreq_is_answered_with_pingresp() {
        let (mut session, mut out) = connected(ProtocolVersion::V3_1_1, true, &Limits::default());
        assert!(matches!(
            handle(&mut session, Packet::PingReq, &mut out),
            Ok(Step::Handled)
        ));
        assert_eq!(out.take_packets(), vec![Packet::PingResp]);
    }

    #[test]
    fn mqtt_3_1_0_2_a_second_connect_closes_the_connection_with_0x82() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let connect = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteString::from("c"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }));
        assert_eq!(
            handle(&mut session, connect, &mut out).unwrap_err(),
            End::ServerClosed
        );
        assert_eq!(
            out.take_packets(),
            vec![Packet::Disconnect(Disconnect::new(
                ReasonCode::ProtocolError
            ))]
        );
    }

    fn subscribe_to(filters: &[&str]) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            subscriptions: filters
                .iter()
                .map(|filter| rookery_codec::Subscription {
                    filter: ByteString::from(*filter),
                    options: rookery_codec::SubscriptionOptions::default(),
                })
                .collect(),
            properties: Default::default(),
        })
    }

    fn unsubscribe_from(filters: &[&str]) -> Packet {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            filters: filters.iter().map(|f| ByteString::from(*f)).collect(),
            properties: Default::default(),
        })
    }

    #[test]
    fn mqtt_4_7_3_1_an_empty_filter_in_subscribe_or_unsubscribe_closes_with_0x82() {
        for packet in [
            subscribe_to(&[""]),
            subscribe_to(&["a", ""]),
            unsubscribe_from(&[""]),
            unsubscribe_from(&["a", ""]),
        ] {
            let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
            assert_eq!(
                handle(&mut session, packet.clone(), &mut out).unwrap_err(),
                End::ServerClosed,
                "{packet:?}"
            );
            assert_eq!(
                out.take_packets(),
                vec![Packet::Disconnect(Disconnect::new(
                    ReasonCode::ProtocolError
                ))]
            );
            // 3.1.1 has no DISCONNECT from the server: the connection closes.
            let (mut session, mut out) =
                connected(ProtocolVersion::V3_1_1, true, &Limits::default());
            assert_eq!(
                handle(&mut session, packet, &mut out).unwrap_err(),
                End::ServerClosed
            );
            assert!(out.take_packets().is_empty());
        }
    }

    #[test]
    fn mqtt_4_7_3_1_filters_of_one_character_are_handed_on() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let subscribe = handle(&mut session, subscribe_to(&["a", "#"]), &mut out);
        assert!(matches!(subscribe, Ok(Step::Subscribe(_))));
        let unsubscribe = handle(&mut session, unsubscribe_from(&["+"]), &mut out);
        assert!(matches!(unsubscribe, Ok(Step::Unsubscribe(_))));
        assert!(out.take_packets().is_empty());
    }

    #[test]
    fn mqtt_4_12_0_1_auth_without_an_authentication_method_is_a_protocol_error() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let auth = Packet::Auth(rookery_codec::Auth::default());
        assert_eq!(
            handle(&mut session, auth, &mut out).unwrap_err(),
            End::ServerClosed
        );
    }

    #[test]
    fn a_server_only_packet_from_the_client_is_a_protocol_error_and_3_x_is_told_nothing() {
        let (mut session, mut out) = connected(ProtocolVersion::V3_1_1, true, &Limits::default());
        assert_eq!(
            handle(&mut session, Packet::PingResp, &mut out).unwrap_err(),
            End::ServerClosed
        );
        assert!(
            out.take_packets().is_empty(),
            "3.x has no server DISCONNECT"
        );
    }

    #[test]
    fn mqtt_3_14_2_2_a_disconnect_may_not_raise_an_expiry_that_was_0() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let mut raised = Disconnect::new(ReasonCode::Success);
        raised.properties = DisconnectProperties {
            session_expiry_interval: Some(10),
            ..DisconnectProperties::default()
        };
        assert_eq!(
            handle(&mut session, Packet::Disconnect(raised), &mut out).unwrap_err(),
            End::ServerClosed
        );
        let (mut session, mut out) = connected(ProtocolVersion::V5, false, &Limits::default());
        let mut with_will = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
        with_will.properties.session_expiry_interval = Some(10);
        assert_eq!(
            handle(&mut session, Packet::Disconnect(with_will), &mut out).unwrap_err(),
            End::ClientDisconnected {
                will: true,
                expiry_s: Some(10)
            }
        );
    }

    #[test]
    fn a_publish_to_sys_is_refused_with_0x87_in_5_0_and_acknowledged_in_3_x() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let step = handle(
            &mut session,
            Packet::Publish(publish("$SYS/x", QoS::AtLeastOnce, 4)),
            &mut out,
        );
        assert!(matches!(step, Ok(Step::Handled)));
        assert_eq!(
            out.take_packets(),
            vec![Packet::PubAck(ack_with(4, ReasonCode::NotAuthorized))]
        );
        let (mut session, mut out) = connected(ProtocolVersion::V3_1_1, true, &Limits::default());
        handle(
            &mut session,
            Packet::Publish(publish("$SYS/x", QoS::ExactlyOnce, 4)),
            &mut out,
        )
        .ok();
        assert_eq!(out.take_packets(), vec![Packet::PubRec(Ack::new(pid(4)))]);
    }

    #[test]
    fn mqtt_4_3_3_9_a_qos2_retry_before_pubrel_is_answered_with_pubrec_only() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        let first = handle(
            &mut session,
            Packet::Publish(publish("t", QoS::ExactlyOnce, 9)),
            &mut out,
        );
        assert!(matches!(first, Ok(Step::Publish(_, _))));
        session.inbound.hold_qos2(pid(9));
        let retry = handle(
            &mut session,
            Packet::Publish(publish("t", QoS::ExactlyOnce, 9)),
            &mut out,
        );
        assert!(matches!(retry, Ok(Step::Handled)), "not routed again");
        assert_eq!(out.take_packets(), vec![Packet::PubRec(Ack::new(pid(9)))]);
    }

    #[test]
    fn a_refused_qos2_publish_frees_its_packet_identifier() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        session.inbound.hold_qos2(pid(2));
        let reply = Reply::Ack(ReasonCode::ImplementationSpecificError);
        session
            .reply(Some(pid(2)), QoS::ExactlyOnce, reply, &mut out)
            .unwrap();
        assert!(!session.inbound.release_qos2(pid(2)), "already freed");
        let closed = session.reply(
            Some(pid(3)),
            QoS::AtLeastOnce,
            Reply::Close(ReasonCode::ImplementationSpecificError),
            &mut out,
        );
        assert_eq!(closed, Err(End::ServerClosed));
    }

    #[test]
    fn mqtt_4_3_3_a_pubrel_is_answered_with_pubcomp_after_its_release_is_recorded() {
        // A persistent session records the release in the store first.
        let (mut session, mut out) = connected(ProtocolVersion::V5, false, &Limits::default());
        session.inbound.hold_qos2(pid(5));
        match handle(&mut session, Packet::PubRel(Ack::new(pid(5))), &mut out) {
            Ok(Step::Release { record, pubcomp }) => {
                assert!(record.is_some());
                assert_eq!(pubcomp.reason_code, ReasonCode::Success);
            }
            other => panic!("expected a release, got {other:?}"),
        }
        // A clean session with an unknown identifier: 0x92, nothing stored.
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        match handle(&mut session, Packet::PubRel(Ack::new(pid(6))), &mut out) {
            Ok(Step::Release { record, pubcomp }) => {
                assert!(record.is_none());
                assert_eq!(pubcomp.reason_code, ReasonCode::PacketIdentifierNotFound);
            }
            other => panic!("expected a release, got {other:?}"),
        }
    }

    #[test]
    fn a_persistent_sessions_pubrel_the_store_did_not_hold_is_answered_0x92_in_5_0() {
        // PUBREL after a refusing PUBREC (MQTT 5 §3.7.2.1): never Success.
        let pubcomp = Ack::new(pid(5));
        assert_eq!(
            Session::pubcomp_after_release(pubcomp.clone(), false, true).reason_code,
            ReasonCode::PacketIdentifierNotFound
        );
        assert_eq!(
            Session::pubcomp_after_release(pubcomp.clone(), true, true).reason_code,
            ReasonCode::Success
        );
        // 3.x PUBCOMP has no reason code.
        assert_eq!(
            Session::pubcomp_after_release(pubcomp, false, false).reason_code,
            ReasonCode::Success
        );
    }

    #[test]
    fn a_puback_frees_the_window_and_a_memory_message_needs_no_store_record() {
        let limits = Limits::default();
        let (mut session, mut out) = connected(ProtocolVersion::V3_1_1, true, &limits);
        session.outgoing.push(Delivery {
            message: Arc::new(message("t", QoS::AtLeastOnce)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared_group: None,
            receipt: 0,
        });
        session.send_ready(0, &mut out, &Stats::default());
        let sent = out.take_packets();
        let Some(Packet::Publish(sent)) = sent.first() else {
            panic!("expected a PUBLISH, got {sent:?}");
        };
        let id = sent.packet_id.unwrap();
        handle(&mut session, Packet::PubAck(Ack::new(id)), &mut out).unwrap();
        assert!(session.take_refill_due());
        assert!(session.take_acks().is_empty());
        // A second PUBACK of the same identifier matches nothing.
        handle(&mut session, Packet::PubAck(Ack::new(id)), &mut out).unwrap();
        assert!(!session.take_refill_due());
    }

    #[test]
    fn mqtt_4_4_0_1_a_resumed_qos2_message_is_recorded_at_pubrec_before_pubrel_goes_out() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, false, &Limits::default());
        resumed_in_flight(&mut session, &mut out, 7);
        let resent = out.take_packets();
        assert!(
            matches!(resent.as_slice(), [Packet::Publish(p)] if p.dup && p.packet_id == PacketId::new(7)),
            "resent with DUP under its identifier: {resent:?}"
        );
        handle(&mut session, Packet::PubRec(Ack::new(pid(7))), &mut out).unwrap();
        assert!(out.take_packets().is_empty(), "PUBREL waits for the record");
        assert_eq!(session.take_receipts().len(), 1);
        session.send_releases(&mut out);
        assert_eq!(out.take_packets(), vec![Packet::PubRel(Ack::new(pid(7)))]);
        handle(&mut session, Packet::PubComp(Ack::new(pid(7))), &mut out).unwrap();
        assert_eq!(session.take_acks().len(), 1, "PUBCOMP recorded");
        assert!(session.take_refill_due());
    }

    #[test]
    fn a_refusing_pubrec_ends_the_flow_without_pubrel() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, false, &Limits::default());
        resumed_in_flight(&mut session, &mut out, 8);
        out.take_packets();
        let refusing = ack_with(8, ReasonCode::UnspecifiedError);
        handle(&mut session, Packet::PubRec(refusing), &mut out).unwrap();
        assert_eq!(
            session.take_receipts().len(),
            2,
            "PUBREC and PUBCOMP recorded"
        );
        session.send_releases(&mut out);
        assert!(out.take_packets().is_empty());
        assert!(session.take_refill_due());
    }

    #[test]
    fn a_pubrec_for_an_unknown_identifier_is_released_with_0x92_in_5_0() {
        let (mut session, mut out) = connected(ProtocolVersion::V5, true, &Limits::default());
        handle(&mut session, Packet::PubRec(Ack::new(pid(3))), &mut out).unwrap();
        assert_eq!(
            out.take_packets(),
            vec![Packet::PubRel(ack_with(
                3,
                ReasonCode::PacketIdentifierNotFound
            ))]
        );
        let (mut session, mut out) = connected(ProtocolVersion::V3_1_1, true, &Limits::default());
        handle(&mut session, Packet::PubRec(Ack::new(pid(3))), &mut out).unwrap();
        assert_eq!(out.take_packets(), vec![Packet::PubRel(Ack::new(pid(3)))]);
    }

    #[test]
    fn mqtt_3_1_2_25_a_message_larger_than_the_clients_maximum_is_dropped_as_if_sent() {
        let limits = Limits::default();
        let (mut session, mut out) = connected(ProtocolVersion::V5, false, &limits);
        session.outgoing = Outgoing::new(4, 10, limits.queue_overflow, 0, 20);
        session.outgoing.resume(
            vec![proto::QueuedMessage {
                seq: 1,
                qos: 1,
                stage: DeliveryStage::Published as i32,
                packet_id: 4,
                message: Some(message("a/long/topic/name", QoS::AtLeastOnce).to_proto()),
                ..proto::QueuedMessage::default()
            }],
            0,
        );
        let batch = session.outgoing.next_stored(0);
        session.write_stored(batch, &mut out, &Stats::default());
        assert!(out.take_packets().is_empty());
        assert_eq!(
            session.take_acks().len(),
            1,
            "acknowledged away in the store"
        );
    }
}
