//! Publishes another edge forwarded, checked on arrival like a client's:
//! another edge (or whoever reaches the forwarding port) is not trusted to
//! have applied this edge's rules. A message with a topic that is not a
//! valid topic name (MQTT-4.7.3-1, MQTT-4.7.3-2, MQTT-3.3.2-2), beyond this
//! edge's topic limits, under `$SYS` (the broker's own, never a
//! publisher's), or larger than this edge's `max_packet_size`, is dropped
//! with its deliveries, counted in `rookery_forward_rejected_total{reason}`
//! and logged once per reason.

use rookery_cluster::proto::Delivery;
use rookery_store::proto::Message;

use crate::config::Limits;

/// Why a forwarded message is not delivered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Not a valid topic name, or beyond this edge's topic limits.
    TopicInvalid,
    /// A `$SYS` topic: the broker's own.
    SysTopic,
    /// Larger, as a PUBLISH, than this edge's `max_packet_size`.
    TooLarge,
}

impl Rejection {
    fn reason(self) -> &'static str {
        match self {
            Rejection::TopicInvalid => "topic_invalid",
            Rejection::SysTopic => "sys_topic",
            Rejection::TooLarge => "too_large",
        }
    }
}

/// Whether this edge refuses a forwarded message, and why.
pub(crate) fn rejection(message: &Message, limits: &Limits) -> Option<Rejection> {
    let topic = message.topic.as_str();
    if rookery_topic::validate_topic_name(topic).is_err()
        || topic.len() > limits.max_topic_length
        || topic.split('/').count() > limits.max_topic_levels
    {
        Some(Rejection::TopicInvalid)
    } else if topic == "$SYS" || topic.starts_with("$SYS/") {
        Some(Rejection::SysTopic)
    } else if publish_size(message) > limits.max_packet_size as usize {
        Some(Rejection::TooLarge)
    } else {
        None
    }
}

/// The size of the smallest PUBLISH that carries `message`: fixed header,
/// topic, packet identifier at QoS 1/2, properties when there are any, and
/// the payload. The publisher's own packet was at least this large, so a
/// message its edge took under the same limit is never refused here.
fn publish_size(message: &Message) -> usize {
    let properties = if message.properties.is_empty() {
        0
    } else {
        varint_len(message.properties.len()) + message.properties.len()
    };
    let packet_id = if message.qos > 0 { 2 } else { 0 };
    let remaining = 2 + message.topic.len() + packet_id + properties + message.payload.len();
    1 + varint_len(remaining) + remaining
}

/// The bytes of MQTT's variable byte integer for `value`.
fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Drops from a forwarded batch the deliveries of messages this edge
/// refuses, counting and logging (once per reason) each refused message.
pub(crate) fn admit(
    messages: &[Message],
    deliveries: Vec<Delivery>,
    limits: &Limits,
) -> Vec<Delivery> {
    let refused: Vec<Option<Rejection>> = messages
        .iter()
        .map(|message| rejection(message, limits))
        .collect();
    for (message, rejection) in messages.iter().zip(&refused) {
        let Some(rejection) = rejection else {
            continue;
        };
        metrics::counter!("rookery_forward_rejected_total", "reason" => rejection.reason())
            .increment(1);
        if rookery_store::once::first_time("rookery_forward_rejected_total", rejection.reason()) {
            tracing::warn!(
                reason = rejection.reason(),
                topic = %message.topic,
                bytes = message.payload.len(),
                "a forwarded publish was refused (logged once per reason; counted in \
                 rookery_forward_rejected_total)"
            );
        } else {
            tracing::debug!(reason = rejection.reason(), topic = %message.topic, "a forwarded publish was refused");
        }
    }
    if refused.iter().all(Option::is_none) {
        return deliveries;
    }
    deliveries
        .into_iter()
        .filter(|delivery| {
            // An index out of range is left to the hub, which counts it.
            usize::try_from(delivery.message)
                .ok()
                .and_then(|index| refused.get(index))
                .is_none_or(Option::is_none)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(topic: &str, payload: usize) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: Bytes::from(vec![b'x'; payload]),
            qos: 1,
            ..Message::default()
        }
    }

    fn to(message: u32, client: &str) -> Delivery {
        Delivery {
            client_id: client.to_owned(),
            message,
            qos: 1,
            ..Delivery::default()
        }
    }

    /// A forwarded `$SYS` message is not delivered: clients cannot publish
    /// there, and another edge (or a peer on the forwarding port) must not
    /// either.
    #[test]
    fn sys_topics_are_refused() {
        let limits = Limits::default();
        assert_eq!(
            rejection(&message("$SYS/forged", 1), &limits),
            Some(Rejection::SysTopic)
        );
        assert_eq!(
            rejection(&message("$SYS", 1), &limits),
            Some(Rejection::SysTopic)
        );
        assert_eq!(rejection(&message("$SYSTEM/x", 1), &limits), None);
        assert_eq!(rejection(&message("a/b", 1), &limits), None);
    }

    /// MQTT-4.7.3-1 (at least one character), MQTT-4.7.3-2 (no U+0000),
    /// MQTT-3.3.2-2 (no wildcards in a topic name), and this edge's limits.
    #[test]
    fn invalid_topic_names_are_refused() {
        let limits = Limits {
            max_topic_levels: 3,
            ..Limits::default()
        };
        for topic in ["", "a/+/b", "a/#", "nul\0", "a/b/c/d"] {
            assert_eq!(
                rejection(&message(topic, 1), &limits),
                Some(Rejection::TopicInvalid),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn a_message_larger_than_this_edges_maximum_packet_is_refused() {
        let limits = Limits {
            max_packet_size: 1000,
            ..Limits::default()
        };
        // 1 + 2 (remaining length) + 2 + 3 ("a/b") + 2 (packet id) + 990.
        assert_eq!(publish_size(&message("a/b", 990)), 1000);
        assert_eq!(rejection(&message("a/b", 990), &limits), None);
        assert_eq!(
            rejection(&message("a/b", 991), &limits),
            Some(Rejection::TooLarge)
        );
    }

    #[test]
    fn only_the_deliveries_of_refused_messages_are_dropped() {
        let messages = [message("$SYS/forged", 1), message("ok", 1)];
        let deliveries = vec![to(0, "a"), to(1, "a"), to(0, "b"), to(7, "c")];
        let admitted = admit(&messages, deliveries, &Limits::default());
        let kept: Vec<(u32, &str)> = admitted
            .iter()
            .map(|d| (d.message, d.client_id.as_str()))
            .collect();
        assert_eq!(kept, [(1, "a"), (7, "c")]);
    }
}
