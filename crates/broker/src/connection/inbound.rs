//! The client-to-server flow of one connection: its topic aliases, its QoS 2
//! packet identifiers not yet released, and the rules a PUBLISH must keep
//! before the server takes it (the mirror of `Outgoing`).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU16;

use rookery_codec::{ByteString, PacketId, Publish, QoS, ReasonCode};

use crate::config::Limits;

/// A rule the client broke: the connection closes with `reason` (told to a
/// 5.0 client in DISCONNECT) and the violation is counted by `label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Violation {
    /// The DISCONNECT reason code.
    pub reason: ReasonCode,
    /// The `reason` label of `rookery_protocol_errors_total`.
    pub label: &'static str,
}

impl Violation {
    /// A violation closed with `reason`, counted as `label`.
    pub const fn new(reason: ReasonCode, label: &'static str) -> Self {
        Violation { reason, label }
    }
}

/// What an admitted PUBLISH is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admitted {
    /// A message to route, to `topic` (the alias resolved).
    New { topic: ByteString },
    /// A retry of a QoS 2 PUBLISH not yet released (MQTT-4.3.3-9): answered
    /// with PUBREC again and not delivered twice.
    Qos2Retry(PacketId),
}

/// The state a connection keeps of what the client sends.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    aliases: HashMap<u16, ByteString>,
    /// QoS 2 packet ids received and not yet released (MQTT-4.3.3-9).
    unreleased: HashSet<u16>,
}

impl Inbound {
    /// Checks a PUBLISH against the limits and resolves its topic alias.
    /// `awaiting_store`: the client's QoS 1/2 publishes still waiting on the
    /// store, which count against Receive Maximum with the unreleased ones.
    pub fn admit(
        &mut self,
        publish: &Publish,
        limits: &Limits,
        awaiting_store: usize,
    ) -> Result<Admitted, Violation> {
        if publish.qos as u8 > limits.maximum_qos {
            // MQTT-3.2.2-11: above the Maximum QoS of CONNACK.
            return Err(Violation::new(
                ReasonCode::QoSNotSupported,
                "qos_not_supported",
            ));
        }
        if publish.retain && !limits.retain_available {
            // MQTT-3.2.2-14.
            return Err(Violation::new(
                ReasonCode::RetainNotSupported,
                "retain_not_supported",
            ));
        }
        let topic = self.resolve_alias(publish, limits)?;
        if publish.qos != QoS::AtMostOnce
            && awaiting_store + self.unreleased.len() >= usize::from(limits.receive_maximum)
        {
            // MQTT-3.3.4-9: more unacknowledged QoS 1/2 publishes than the
            // Receive Maximum the server announced.
            return Err(Violation::new(
                ReasonCode::ReceiveMaximumExceeded,
                "receive_maximum_exceeded",
            ));
        }
        if publish.qos == QoS::ExactlyOnce
            && let Some(id) = publish.packet_id
            && self.unreleased.contains(&id.get())
        {
            return Ok(Admitted::Qos2Retry(id));
        }
        Ok(Admitted::New { topic })
    }

    /// The topic a PUBLISH goes to: its own, or the one its alias stands
    /// for; a topic with an alias sets the alias.
    fn resolve_alias(
        &mut self,
        publish: &Publish,
        limits: &Limits,
    ) -> Result<ByteString, Violation> {
        match publish.properties.topic_alias.map(NonZeroU16::get) {
            Some(alias) if alias > limits.topic_alias_maximum => {
                // MQTT-3.3.2-9: above the Topic Alias Maximum of CONNACK.
                Err(Violation::new(
                    ReasonCode::TopicAliasInvalid,
                    "topic_alias_invalid",
                ))
            }
            Some(alias) if publish.topic.is_empty() => match self.aliases.get(&alias) {
                Some(topic) => Ok(topic.clone()),
                // §3.3.2.3.4: an empty topic name with an alias this
                // connection never set has no topic: a protocol error
                // (aliases do not outlive a connection, MQTT-3.3.2-7).
                None => Err(Violation::new(
                    ReasonCode::ProtocolError,
                    "topic_alias_unknown",
                )),
            },
            Some(alias) => {
                self.aliases.insert(alias, publish.topic.clone());
                Ok(publish.topic.clone())
            }
            None => Ok(publish.topic.clone()),
        }
    }

    /// A QoS 2 publish under `packet_id` was taken: its retries are
    /// answered, not delivered, until PUBREL.
    pub fn hold_qos2(&mut self, packet_id: PacketId) {
        self.unreleased.insert(packet_id.get());
    }

    /// PUBREL, or a refused QoS 2 publish: the identifier is free again.
    /// Whether it was held.
    pub fn release_qos2(&mut self, packet_id: PacketId) -> bool {
        self.unreleased.remove(&packet_id.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rookery_codec::PublishProperties;

    fn publish(topic: &str, qos: QoS, id: u16, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from(topic),
            packet_id: PacketId::new(id),
            properties: PublishProperties {
                topic_alias: alias.and_then(NonZeroU16::new),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"m"),
        }
    }

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).unwrap()
    }

    fn new(topic: &str) -> Admitted {
        Admitted::New {
            topic: ByteString::from(topic),
        }
    }

    #[test]
    fn mqtt_3_2_2_11_a_publish_above_the_maximum_qos_is_refused_with_0x9b() {
        let limits = Limits {
            maximum_qos: 1,
            ..Limits::default()
        };
        let refused =
            Inbound::default().admit(&publish("t", QoS::ExactlyOnce, 1, None), &limits, 0);
        assert_eq!(
            refused.map_err(|v| v.reason),
            Err(ReasonCode::QoSNotSupported)
        );
        let taken = Inbound::default().admit(&publish("t", QoS::AtLeastOnce, 1, None), &limits, 0);
        assert_eq!(taken, Ok(new("t")));
    }

    #[test]
    fn mqtt_3_2_2_14_a_retained_publish_without_retain_available_is_refused_with_0x9a() {
        let limits = Limits {
            retain_available: false,
            ..Limits::default()
        };
        let mut retained = publish("t", QoS::AtMostOnce, 0, None);
        retained.retain = true;
        let refused = Inbound::default().admit(&retained, &limits, 0);
        assert_eq!(
            refused.map_err(|v| v.reason),
            Err(ReasonCode::RetainNotSupported)
        );
    }

    #[test]
    fn mqtt_3_3_2_9_an_alias_above_the_maximum_is_refused_with_0x94() {
        let limits = Limits {
            topic_alias_maximum: 2,
            ..Limits::default()
        };
        let mut inbound = Inbound::default();
        let refused = inbound.admit(&publish("t", QoS::AtMostOnce, 0, Some(3)), &limits, 0);
        assert_eq!(
            refused.map_err(|v| v.reason),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            inbound.admit(&publish("t", QoS::AtMostOnce, 0, Some(2)), &limits, 0),
            Ok(new("t"))
        );
    }

    #[test]
    fn an_alias_set_by_a_topic_stands_for_it_until_set_again() {
        let limits = Limits::default();
        let mut inbound = Inbound::default();
        assert_eq!(
            inbound.admit(&publish("a/b", QoS::AtMostOnce, 0, Some(1)), &limits, 0),
            Ok(new("a/b"))
        );
        assert_eq!(
            inbound.admit(&publish("", QoS::AtMostOnce, 0, Some(1)), &limits, 0),
            Ok(new("a/b"))
        );
        inbound
            .admit(&publish("c", QoS::AtMostOnce, 0, Some(1)), &limits, 0)
            .ok();
        assert_eq!(
            inbound.admit(&publish("", QoS::AtMostOnce, 0, Some(1)), &limits, 0),
            Ok(new("c"))
        );
    }

    #[test]
    fn an_empty_topic_with_an_alias_never_set_is_a_protocol_error() {
        let refused = Inbound::default().admit(
            &publish("", QoS::AtMostOnce, 0, Some(1)),
            &Limits::default(),
            0,
        );
        assert_eq!(
            refused,
            Err(Violation::new(
                ReasonCode::ProtocolError,
                "topic_alias_unknown"
            ))
        );
    }

    #[test]
    fn mqtt_3_3_4_9_more_unacknowledged_publishes_than_receive_maximum_is_0x93() {
        let limits = Limits {
            receive_maximum: 2,
            ..Limits::default()
        };
        let mut inbound = Inbound::default();
        // One waits on the store, one QoS 2 waits for PUBREL: the window is full.
        inbound.hold_qos2(pid(7));
        let refused = inbound.admit(&publish("t", QoS::AtLeastOnce, 1, None), &limits, 1);
        assert_eq!(
            refused.map_err(|v| v.reason),
            Err(ReasonCode::ReceiveMaximumExceeded)
        );
        // QoS 0 is not counted.
        assert_eq!(
            inbound.admit(&publish("t", QoS::AtMostOnce, 0, None), &limits, 1),
            Ok(new("t"))
        );
        // PUBREL frees a slot.
        assert!(inbound.release_qos2(pid(7)));
        assert_eq!(
            inbound.admit(&publish("t", QoS::AtLeastOnce, 1, None), &limits, 1),
            Ok(new("t"))
        );
    }

    #[test]
    fn mqtt_4_3_3_9_a_qos2_retry_before_pubrel_is_answered_not_delivered_again() {
        let limits = Limits::default();
        let mut inbound = Inbound::default();
        let first = publish("t", QoS::ExactlyOnce, 5, None);
        assert_eq!(inbound.admit(&first, &limits, 0), Ok(new("t")));
        let id = pid(5);
        inbound.hold_qos2(id);
        assert_eq!(
            inbound.admit(&first, &limits, 0),
            Ok(Admitted::Qos2Retry(id))
        );
        assert!(inbound.release_qos2(id));
        assert!(!inbound.release_qos2(id), "released once");
        assert_eq!(inbound.admit(&first, &limits, 0), Ok(new("t")));
    }
}
