//! What SUBSCRIBE and UNSUBSCRIBE lead to, decided without doing it: the
//! reason code of each filter, the subscriptions to record, and the retained
//! messages that follow the SUBACK.

use std::num::NonZeroU32;
use std::sync::Arc;

use rookery_codec::{ByteString, QoS, ReasonCode, RetainHandling, Subscribe};
use rookery_topic::{SharedFilter, validate_topic_filter};

use super::inbound::Violation;
use super::topic_within_limits;
use crate::config::Limits;
use crate::hub::SubEntry;
use crate::message::{Delivery, Message, qos_from};

/// The answer to a SUBSCRIBE and what it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Granted {
    /// One per filter, in order (SUBACK).
    pub reason_codes: Vec<ReasonCode>,
    /// The filters accepted, with what the session subscribes with.
    pub accepted: Vec<(ByteString, SubEntry)>,
}

impl Granted {
    /// The store did not record them: every filter fails, nothing is kept.
    pub fn store_failed(&mut self) {
        for code in &mut self.reason_codes {
            if !code.is_error() {
                *code = ReasonCode::UnspecifiedError;
            }
        }
        self.accepted.clear();
    }
}

/// Decides each filter of a SUBSCRIBE; a violation closes the connection.
/// `may_subscribe` asks the ACL about each valid filter.
pub(super) fn decide(
    subscribe: &Subscribe,
    limits: &Limits,
    v5: bool,
    may_subscribe: impl Fn(&str) -> bool,
) -> Result<Granted, Violation> {
    let subscription_id = subscribe
        .properties
        .subscription_identifier
        .map_or(0, NonZeroU32::get);
    if subscription_id != 0 && !limits.subscription_identifiers {
        // §3.8.2.1.2: a server that announced no subscription identifiers
        // closes the connection with 0xA1.
        return Err(Violation::new(
            ReasonCode::SubscriptionIdentifiersNotSupported,
            "subscription_identifiers_not_supported",
        ));
    }
    let mut granted = Granted {
        reason_codes: Vec::with_capacity(subscribe.subscriptions.len()),
        accepted: Vec::new(),
    };
    for subscription in &subscribe.subscriptions {
        let filter = subscription.filter.as_ref();
        let shared = SharedFilter::parse(filter);
        let valid = validate_topic_filter(filter).is_ok()
            && topic_within_limits(filter, limits.max_topic_length, limits.max_topic_levels);
        if valid && shared.is_some() && subscription.options.no_local {
            // MQTT-3.8.3-4.
            return Err(Violation::new(
                ReasonCode::ProtocolError,
                "no_local_on_shared_subscription",
            ));
        }
        let refused = if valid {
            unsupported(filter, shared.as_ref(), limits)
                // 0x80, not 0x87, in 5.0 too: both are allowed (3.9.3), and
                // clients that check SUBACK codes against 3.1.1's list (the
                // Eclipse Paho test client among them) reject 0x87.
                .or_else(|| (!may_subscribe(filter)).then_some(ReasonCode::UnspecifiedError))
        } else {
            Some(ReasonCode::TopicFilterInvalid)
        };
        match refused {
            Some(reason) => granted.reason_codes.push(if v5 {
                reason
            } else {
                // 3.1.1 has one failure code: 0x80.
                ReasonCode::UnspecifiedError
            }),
            None => {
                let mut options = subscription.options;
                // MQTT-3.2.2-10: any requested QoS is accepted and granted
                // up to the server's Maximum QoS.
                options.qos = options
                    .qos
                    .min(qos_from(u32::from(limits.maximum_qos)).unwrap_or(QoS::ExactlyOnce));
                granted.reason_codes.push(ReasonCode::granted(options.qos));
                granted.accepted.push((
                    subscription.filter.clone(),
                    SubEntry {
                        options,
                        subscription_id,
                    },
                ));
            }
        }
    }
    Ok(granted)
}

/// Which feature a valid filter asks for that the server does not offer.
fn unsupported(
    filter: &str,
    shared: Option<&SharedFilter<'_>>,
    limits: &Limits,
) -> Option<ReasonCode> {
    let topic_filter = shared.map_or(filter, |shared| shared.filter);
    if shared.is_some() && !limits.shared_subscriptions {
        Some(ReasonCode::SharedSubscriptionsNotSupported)
    } else if !limits.wildcard_subscriptions && topic_filter.contains(['+', '#']) {
        Some(ReasonCode::WildcardSubscriptionsNotSupported)
    } else {
        None
    }
}

/// The accepted subscriptions that receive the retained messages they match
/// after the SUBACK (MQTT-3.8.4-4's order), as each one's Retain Handling
/// asks: `existed` says which subscriptions the session had already. Never
/// shared subscriptions.
pub(super) fn retained_subscriptions<'a>(
    accepted: &'a [(ByteString, SubEntry)],
    existed: &[bool],
) -> Vec<&'a (ByteString, SubEntry)> {
    accepted
        .iter()
        .enumerate()
        .filter(|(index, (filter, entry))| {
            let existed = existed.get(*index).copied().unwrap_or(false);
            let send = match entry.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            send && SharedFilter::parse(filter).is_none()
        })
        .map(|(_, subscription)| subscription)
        .collect()
}

/// A retained message as a subscription receives it after SUBACK.
pub(super) fn retained_delivery(message: Arc<Message>, entry: &SubEntry) -> Delivery {
    Delivery {
        qos: message.qos.min(entry.options.qos),
        // MQTT-3.3.1-9: sent because retained, so RETAIN is 1.
        retain: true,
        subscription_ids: if entry.subscription_id != 0 {
            vec![entry.subscription_id]
        } else {
            Vec::new()
        },
        message,
        shared_group: None,
        receipt: 0,
    }
}

/// UNSUBACK's reason code for each filter: success where the store or this
/// edge held the subscription, 0x11 where neither did.
pub(super) fn unsubscribe_codes(
    filters: &[ByteString],
    existed_in_store: &[bool],
    mut removed_here: impl FnMut(&str) -> bool,
) -> Vec<ReasonCode> {
    filters
        .iter()
        .enumerate()
        .map(|(index, filter)| {
            let removed = removed_here(filter);
            if existed_in_store.get(index).copied().unwrap_or(removed) || removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_codec::{PacketId, SubscribeProperties, Subscription, SubscriptionOptions};

    fn options(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }

    fn subscribe(filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
        Subscribe {
            packet_id: PacketId::new(1).unwrap(),
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

    fn codes(packet: &Subscribe, limits: &Limits, v5: bool) -> Vec<ReasonCode> {
        decide(packet, limits, v5, allow_all).unwrap().reason_codes
    }

    fn allow_all(_: &str) -> bool {
        true
    }

    #[test]
    fn a_filter_the_acl_denies_gets_0x80_in_5_0_and_3_1_1() {
        let packet = subscribe(&[
            ("test/nosubscribe", options(QoS::AtLeastOnce)),
            ("test/other", options(QoS::AtLeastOnce)),
        ]);
        let deny = |filter: &str| filter != "test/nosubscribe";
        let v5 = decide(&packet, &Limits::default(), true, deny).unwrap();
        assert_eq!(
            v5.reason_codes,
            vec![ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
        );
        assert_eq!(v5.accepted.len(), 1);
        let v311 = decide(&packet, &Limits::default(), false, deny).unwrap();
        assert_eq!(
            v311.reason_codes,
            vec![ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
        );
    }

    #[test]
    fn mqtt_3_8_4_each_filter_gets_its_own_reason_code_in_order() {
        let packet = subscribe(&[
            ("a/+", options(QoS::AtLeastOnce)),
            ("a/#/b", options(QoS::AtMostOnce)),
            ("c", options(QoS::ExactlyOnce)),
        ]);
        let granted = decide(&packet, &Limits::default(), true, allow_all).unwrap();
        assert_eq!(
            granted.reason_codes,
            vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQoS2
            ]
        );
        let filters: Vec<&str> = granted.accepted.iter().map(|(f, _)| f.as_ref()).collect();
        assert_eq!(filters, vec!["a/+", "c"]);
    }

    #[test]
    fn a_3_1_1_client_gets_0x80_for_every_refused_filter() {
        let packet = subscribe(&[("a/#/b", options(QoS::AtMostOnce))]);
        assert_eq!(
            codes(&packet, &Limits::default(), false),
            vec![ReasonCode::UnspecifiedError]
        );
    }

    #[test]
    fn mqtt_3_2_2_10_a_requested_qos_above_the_maximum_is_granted_at_the_maximum() {
        let limits = Limits {
            maximum_qos: 1,
            ..Limits::default()
        };
        let packet = subscribe(&[("a", options(QoS::ExactlyOnce))]);
        let granted = decide(&packet, &limits, true, allow_all).unwrap();
        assert_eq!(granted.reason_codes, vec![ReasonCode::GrantedQoS1]);
        assert_eq!(granted.accepted[0].1.options.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn filters_beyond_the_topic_limits_are_invalid() {
        let limits = Limits {
            max_topic_levels: 2,
            ..Limits::default()
        };
        let packet = subscribe(&[("a/b/c", options(QoS::AtMostOnce))]);
        assert_eq!(
            codes(&packet, &limits, true),
            vec![ReasonCode::TopicFilterInvalid]
        );
    }

    #[test]
    fn unsupported_wildcards_and_shared_subscriptions_get_0xa2_and_0x9e() {
        let limits = Limits {
            wildcard_subscriptions: false,
            shared_subscriptions: false,
            ..Limits::default()
        };
        let packet = subscribe(&[
            ("a/+", options(QoS::AtMostOnce)),
            ("$share/g/a", options(QoS::AtMostOnce)),
            ("a", options(QoS::AtMostOnce)),
        ]);
        assert_eq!(
            codes(&packet, &limits, true),
            vec![
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::SharedSubscriptionsNotSupported,
                ReasonCode::Success
            ]
        );
    }

    #[test]
    fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
        let mut no_local = options(QoS::AtMostOnce);
        no_local.no_local = true;
        let packet = subscribe(&[("$share/g/a", no_local)]);
        let violation = decide(&packet, &Limits::default(), true, allow_all).unwrap_err();
        assert_eq!(violation.reason, ReasonCode::ProtocolError);
        // Even where shared subscriptions are off: the rule comes first.
        let off = Limits {
            shared_subscriptions: false,
            ..Limits::default()
        };
        assert!(decide(&packet, &off, true, allow_all).is_err());
        // An invalid filter is only refused.
        let invalid = subscribe(&[("$share/g/a/#/b", no_local)]);
        assert_eq!(
            codes(&invalid, &Limits::default(), true),
            vec![ReasonCode::TopicFilterInvalid]
        );
    }

    #[test]
    fn a_subscription_identifier_the_server_does_not_offer_closes_with_0xa1() {
        let limits = Limits {
            subscription_identifiers: false,
            ..Limits::default()
        };
        let mut packet = subscribe(&[("a", options(QoS::AtMostOnce))]);
        packet.properties.subscription_identifier = NonZeroU32::new(5);
        let violation = decide(&packet, &limits, true, allow_all).unwrap_err();
        assert_eq!(
            violation.reason,
            ReasonCode::SubscriptionIdentifiersNotSupported
        );
        let granted = decide(&packet, &Limits::default(), true, allow_all).unwrap();
        assert_eq!(granted.accepted[0].1.subscription_id, 5);
    }

    #[test]
    fn a_subscribe_the_store_did_not_record_fails_every_filter() {
        let packet = subscribe(&[
            ("a", options(QoS::AtLeastOnce)),
            ("a/#/b", options(QoS::AtMostOnce)),
        ]);
        let mut granted = decide(&packet, &Limits::default(), true, allow_all).unwrap();
        granted.store_failed();
        assert_eq!(
            granted.reason_codes,
            vec![ReasonCode::UnspecifiedError, ReasonCode::TopicFilterInvalid]
        );
        assert!(granted.accepted.is_empty());
    }

    fn retained_message(qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: "a".into(),
            payload: bytes::Bytes::from_static(b"r"),
            qos,
            retain: true,
            properties: Default::default(),
            expires_at_ms: 0,
            origin: Arc::from("p"),
        })
    }

    fn entry(qos: QoS, retain_handling: RetainHandling) -> SubEntry {
        SubEntry {
            options: SubscriptionOptions {
                qos,
                retain_handling,
                ..SubscriptionOptions::default()
            },
            subscription_id: 9,
        }
    }

    #[test]
    fn mqtt_3_3_1_9_retained_messages_follow_as_retain_handling_asks() {
        let accepted = vec![
            (
                ByteString::from("a"),
                entry(QoS::AtLeastOnce, RetainHandling::SendAtSubscribe),
            ),
            (
                ByteString::from("b"),
                entry(QoS::AtLeastOnce, RetainHandling::SendIfNew),
            ),
            (
                ByteString::from("c"),
                entry(QoS::AtLeastOnce, RetainHandling::SendIfNew),
            ),
            (
                ByteString::from("d"),
                entry(QoS::AtLeastOnce, RetainHandling::DoNotSend),
            ),
            (
                ByteString::from("$share/g/e"),
                entry(QoS::AtLeastOnce, RetainHandling::SendAtSubscribe),
            ),
        ];
        let existed = [true, true, false, false, false];
        let sent: Vec<&str> = retained_subscriptions(&accepted, &existed)
            .into_iter()
            .map(|(filter, _)| filter.as_ref())
            .collect();
        assert_eq!(
            sent,
            vec!["a", "c"],
            "existing b, d and the shared e get none"
        );
        let delivery = retained_delivery(retained_message(QoS::ExactlyOnce), &accepted[0].1);
        assert!(delivery.retain, "sent because retained");
        assert_eq!(delivery.qos, QoS::AtLeastOnce, "at most the granted QoS");
        assert_eq!(delivery.subscription_ids, vec![9]);
    }

    #[test]
    fn unsuback_says_success_where_the_store_or_this_edge_held_the_subscription() {
        let filters = [
            ByteString::from("a"),
            ByteString::from("b"),
            ByteString::from("c"),
        ];
        let codes = unsubscribe_codes(&filters, &[true, false], |filter| filter == "b");
        assert_eq!(
            codes,
            vec![
                ReasonCode::Success,
                ReasonCode::Success,
                ReasonCode::NoSubscriptionExisted
            ]
        );
    }
}
