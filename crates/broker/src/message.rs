//! An application message as the broker routes it, and its store form.

use std::sync::Arc;

use bytes::Bytes;
use rookery_codec::{ByteString, MessageProperties, Publish, PublishProperties, QoS};
use rookery_store::proto;

/// A message once accepted from its publisher (or a will): shared by every
/// session it is delivered to.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: ByteString,
    /// The application payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// Properties passed through to subscribers; the expiry interval is kept
    /// as `expires_at_ms` instead and recomputed on each send.
    pub properties: MessageProperties,
    /// When it expires, ms since the Unix epoch; 0 never (MQTT-3.3.2-5).
    pub expires_at_ms: u64,
    /// The publisher's client id, for No Local (MQTT-3.8.3-3).
    pub origin: Arc<str>,
}

impl Message {
    /// The message of a PUBLISH received at `now_ms` (alias already resolved
    /// into `topic`).
    pub fn from_publish(
        publish: &Publish,
        topic: ByteString,
        origin: Arc<str>,
        now_ms: u64,
    ) -> Self {
        let mut properties = publish.properties.message.clone();
        let expires_at_ms = expiry_at(properties.message_expiry_interval.take(), now_ms);
        Message {
            topic,
            payload: publish.payload.clone(),
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at_ms,
            origin,
        }
    }

    /// Whether its Message Expiry Interval has run out at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// The Message Expiry Interval to send at `now_ms`: what is left of it,
    /// rounded up (MQTT-3.3.2-6).
    pub fn remaining_expiry_s(&self, now_ms: u64) -> Option<u32> {
        (self.expires_at_ms != 0).then(|| {
            let left_ms = self.expires_at_ms.saturating_sub(now_ms);
            u32::try_from(left_ms.div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }

    /// The PUBLISH that carries this message to a subscriber.
    pub fn to_publish(
        &self,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        now_ms: u64,
    ) -> Publish {
        let mut message = self.properties.clone();
        message.message_expiry_interval = self.remaining_expiry_s(now_ms);
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id: None,
            properties: PublishProperties {
                topic_alias: None,
                subscription_identifiers: subscription_ids
                    .iter()
                    .filter_map(|id| std::num::NonZeroU32::new(*id))
                    .collect(),
                message,
            },
            payload: self.payload.clone(),
        }
    }

    /// The message in the store's wire format.
    pub fn to_proto(&self) -> proto::Message {
        proto::Message {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: u32::from(self.qos as u8),
            retain: self.retain,
            // Encoding only fails for lengths no decoded packet can have.
            properties: self.properties.to_bytes().unwrap_or_default(),
            expires_at_ms: self.expires_at_ms,
            origin_client_id: self.origin.to_string(),
        }
    }

    /// The message a store record holds; `None` if the record is damaged.
    pub fn from_proto(message: &proto::Message) -> Option<Self> {
        Some(Message {
            topic: ByteString::from(message.topic.as_str()),
            payload: message.payload.clone(),
            qos: qos_from(message.qos)?,
            retain: message.retain,
            properties: MessageProperties::from_bytes(message.properties.clone()).ok()?,
            expires_at_ms: message.expires_at_ms,
            origin: Arc::from(message.origin_client_id.as_str()),
        })
    }
}

/// The absolute expiry of an interval in seconds starting at `now_ms`.
pub fn expiry_at(interval_s: Option<u32>, now_ms: u64) -> u64 {
    interval_s.map_or(0, |s| now_ms.saturating_add(u64::from(s) * 1000))
}

/// The QoS a wire value stands for; `None` above 2.
pub fn qos_from(value: u32) -> Option<QoS> {
    u8::try_from(value).ok().and_then(QoS::from_bits)
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message, shared with its other deliveries.
    pub message: Arc<Message>,
    /// The lower of the message's QoS and the subscription's (MQTT-3.8.4-8).
    pub qos: QoS,
    /// The RETAIN flag to send (MQTT-3.3.1-12/13, retain as published).
    pub retain: bool,
    /// The identifiers of the subscriptions it matched (MQTT-3.3.4-3).
    pub subscription_ids: Vec<u32>,
    /// The `$share/{group}/{filter}` it was picked for: if the session ends
    /// before acknowledging it, another member of the group gets it.
    pub shared_group: Option<Arc<str>>,
    /// The store's receipt of a persistent session's QoS 2 publish, the
    /// same for each retry of it; 0 for any other message. A session takes
    /// a receipt once ([`crate::outgoing::Outgoing::push`]).
    pub receipt: u64,
}

impl Delivery {
    /// The bytes it holds while queued, as `max_queued_bytes` counts them:
    /// the message's topic and payload.
    pub fn queued_bytes(&self) -> usize {
        self.message.topic.len() + self.message.payload.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(expires_at_ms: u64) -> Message {
        Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                ..MessageProperties::default()
            },
            expires_at_ms,
            origin: Arc::from("c"),
        }
    }

    #[test]
    fn mqtt_3_3_2_6_expiry_sent_is_what_is_left_rounded_up() {
        let message = message(10_000);
        assert_eq!(message.remaining_expiry_s(2_500), Some(8));
        assert_eq!(message.remaining_expiry_s(9_999), Some(1));
        assert!(message.expired(10_000));
        assert_eq!(self::message(0).remaining_expiry_s(5), None);
    }

    #[test]
    fn store_form_round_trips() {
        let original = message(1234);
        assert_eq!(Message::from_proto(&original.to_proto()).unwrap(), original);
    }
}
