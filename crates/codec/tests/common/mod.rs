//! Proptest strategies that build packets valid for a protocol version, shared
//! by the codec's integration tests.
//!
//! "Valid" means what the decoder accepts and gives back unchanged: for 3.1 and
//! 3.1.1 no properties and only the reason codes those versions can express;
//! for 5.0 every property present sometimes, reason codes drawn from those the
//! packet type may carry, strings of well-formed UTF-8 without U+0000
//! (multi-byte characters included), topic names that pass
//! `rookery_topic::validate_topic_name`.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use rookery_codec::{
    Ack, AckProperties, Auth, AuthProperties, Authentication, ByteString, ConnAck,
    ConnAckProperties, Connect, ConnectProperties, Disconnect, DisconnectProperties,
    MAX_VARIABLE_INTEGER, MessageProperties, Packet, PacketId, PacketType, PayloadFormat,
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscribeProperties, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties,
};

/// Every protocol version the codec speaks.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Any protocol version.
pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

/// A character of a topic level: no U+0000, no `/`, no wildcard. Mostly
/// ASCII, often two-, three- and four-byte characters. Built without filters,
/// so deep runs (`PROPTEST_CASES=100000`) reject nothing.
fn level_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => select(vec![' ', '$', '\u{1}', '\u{7f}']),
        2 => select(vec!['é', 'ß', 'Ж', '€', '中', '\u{FFFD}', '😀', '\u{10FFFF}']),
        1 => any::<char>().prop_map(|c| if matches!(c, '\0' | '/' | '+' | '#') { 'x' } else { c }),
    ]
}

/// A character allowed in an MQTT string other than a topic: no U+0000.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![8 => level_char(), 1 => select(vec!['/', '+', '#'])]
}

/// A UTF-8 string of up to `max_chars` characters, without U+0000.
pub fn text(max_chars: usize) -> impl Strategy<Value = ByteString> {
    vec(text_char(), 0..=max_chars).prop_map(|chars| ByteString::from(String::from_iter(chars)))
}

/// Binary data.
pub fn binary(max_len: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max_len).prop_map(Bytes::from)
}

fn topic_level() -> impl Strategy<Value = String> {
    vec(level_char(), 0..6).prop_map(String::from_iter)
}

/// A topic name: one or more levels, possibly empty ones, never wildcards.
pub fn topic_name() -> impl Strategy<Value = ByteString> {
    vec(topic_level(), 1..5).prop_map(|levels| {
        let mut name = levels.join("/");
        if name.is_empty() {
            name.push('t');
        }
        debug_assert!(
            rookery_topic::validate_topic_name(&name).is_ok(),
            "{name:?}"
        );
        ByteString::from(name)
    })
}

/// A topic filter: levels, `+` levels, maybe a trailing `#`, maybe shared.
pub fn topic_filter() -> impl Strategy<Value = ByteString> {
    let level = prop_oneof![3 => topic_level(), 1 => Just("+".to_owned())];
    (
        option::of(vec(level_char(), 1..4)),
        vec(level, 1..4),
        any::<bool>(),
    )
        .prop_map(|(share, levels, multi)| {
            let mut filter = String::new();
            if let Some(group) = share {
                filter.push_str("$share/");
                filter.extend(group);
                filter.push('/');
            }
            let levels = levels.join("/");
            if levels.is_empty() && !multi {
                filter.push('t');
            }
            filter.push_str(&levels);
            if multi {
                filter.push_str("/#");
            }
            debug_assert!(
                rookery_topic::validate_topic_filter(&filter).is_ok(),
                "{filter:?}"
            );
            ByteString::from(filter)
        })
}

/// A packet identifier: never zero.
pub fn packet_id() -> impl Strategy<Value = PacketId> {
    nonzero_u16().prop_map(PacketId::from)
}

fn nonzero_u16() -> impl Strategy<Value = NonZeroU16> {
    (0..u16::MAX).prop_map(|value| NonZeroU16::MIN.saturating_add(value))
}

fn nonzero_u32() -> impl Strategy<Value = NonZeroU32> {
    (0..u32::MAX).prop_map(|value| NonZeroU32::MIN.saturating_add(value))
}

/// A Subscription Identifier: 1 to 268,435,455, in one to four bytes.
fn subscription_identifier() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        0..127u32,
        127..16_383u32,
        16_383..2_097_151u32,
        2_097_151..MAX_VARIABLE_INTEGER
    ]
    .prop_map(|value| NonZeroU32::MIN.saturating_add(value))
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

/// Every reason code a 5.0 packet of `packet_type` may carry.
pub fn reason_codes_for(packet_type: PacketType) -> Vec<ReasonCode> {
    (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|code| code.allowed_in(packet_type))
        .collect()
}

fn reason_code(packet_type: PacketType) -> impl Strategy<Value = ReasonCode> {
    select(reason_codes_for(packet_type))
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    // Names may repeat: a User Property is allowed more than once, even with the same name.
    vec((text(6), text(6)), 0..3)
}

fn message_properties() -> impl Strategy<Value = MessageProperties> {
    (
        option::of(select(vec![
            PayloadFormat::Unspecified,
            PayloadFormat::Utf8,
        ])),
        option::of(any::<u32>()),
        option::of(text(8)),
        option::of(topic_name()),
        option::of(binary(8)),
        user_properties(),
    )
        .prop_map(
            |(
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            )| MessageProperties {
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        )
}

/// Authentication Data only ever comes with an Authentication Method.
fn authentication() -> impl Strategy<Value = Authentication> {
    option::of((text(8), option::of(binary(8)))).prop_map(|auth| match auth {
        Some((method, data)) => Authentication {
            method: Some(method),
            data,
        },
        None => Authentication::default(),
    })
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    let properties = if version.is_v5() {
        (option::of(any::<u32>()), message_properties())
            .prop_map(|(will_delay_interval, message)| WillProperties {
                will_delay_interval,
                message,
            })
            .boxed()
    } else {
        Just(WillProperties::default()).boxed()
    };
    (topic_name(), binary(16), qos(), any::<bool>(), properties).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    )
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(nonzero_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        authentication(),
        user_properties(),
    )
        .prop_map(
            |(
                session_expiry_interval,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                request_response_information,
                request_problem_information,
                authentication,
                user_properties,
            )| ConnectProperties {
                session_expiry_interval,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                request_response_information,
                request_problem_information,
                authentication,
                user_properties,
            },
        )
}

/// A CONNECT whose `protocol` is `version`.
pub fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let properties = if version.is_v5() {
        connect_properties().boxed()
    } else {
        Just(ConnectProperties::default()).boxed()
    };
    (
        any::<bool>(),
        any::<u16>(),
        text(12),
        option::of(will(version)),
        option::of(text(8)),
        option::of(binary(8)),
        properties,
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // MQTT-3.1.2-22: before 5.0 a password needs a user name.
                let username = match (&username, &password) {
                    (None, Some(_)) if !version.is_v5() => Some(ByteString::from_static("user")),
                    _ => username,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let limits = (
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        option::of(nonzero_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
    );
    let texts = (
        option::of(text(12)),
        option::of(text(12)),
        user_properties(),
        option::of(text(12)),
        option::of(text(12)),
        authentication(),
    );
    (limits, texts).prop_map(
        |(
            (
                session_expiry_interval,
                receive_maximum,
                maximum_qos,
                retain_available,
                maximum_packet_size,
                topic_alias_maximum,
                wildcard_subscription_available,
                subscription_identifiers_available,
                shared_subscription_available,
                server_keep_alive,
            ),
            (
                assigned_client_identifier,
                reason_string,
                user_properties,
                response_information,
                server_reference,
                authentication,
            ),
        )| ConnAckProperties {
            session_expiry_interval,
            receive_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            assigned_client_identifier,
            topic_alias_maximum,
            reason_string,
            user_properties,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            server_keep_alive,
            response_information,
            server_reference,
            authentication,
        },
    )
}

/// A CONNACK; 3.x return codes are those of 3.1.1 table 3.1.
pub fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let outcome = if version.is_v5() {
        (reason_code(PacketType::ConnAck), connack_properties()).boxed()
    } else {
        (
            (0..=5u8).prop_filter_map("return code", ReasonCode::from_v3_connack),
            Just(ConnAckProperties::default()),
        )
            .boxed()
    };
    (any::<bool>(), outcome)
        .prop_map(|(session_present, (reason_code, properties))| {
            // MQTT-3.2.2-6 (5.0), MQTT-3.2.2-4 (3.1.1): a refusal has no session.
            let session_present = session_present && reason_code == ReasonCode::Success;
            Packet::ConnAck(Box::new(ConnAck {
                session_present,
                reason_code,
                properties,
            }))
        })
        .boxed()
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(nonzero_u16()),
        vec(subscription_identifier(), 0..4),
        message_properties(),
    )
        .prop_map(
            |(topic_alias, subscription_identifiers, message)| PublishProperties {
                topic_alias,
                subscription_identifiers,
                message,
            },
        )
}

/// A PUBLISH: a packet identifier exactly when QoS > 0, DUP only then; in 5.0
/// an empty topic name when a Topic Alias stands for it.
pub fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let properties = if version.is_v5() {
        publish_properties().boxed()
    } else {
        Just(PublishProperties::default()).boxed()
    };
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        properties,
        binary(64),
    )
        .prop_map(
            |(qos, dup, retain, topic, alias_only, id, properties, payload)| {
                let topic = if alias_only && properties.topic_alias.is_some() {
                    ByteString::new()
                } else {
                    topic
                };
                let packet_id = (qos != QoS::AtMostOnce).then_some(id);
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id,
                    properties,
                    payload,
                })
            },
        )
        .boxed()
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text(12)), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP, as `packet_type` says.
pub fn ack(version: ProtocolVersion, packet_type: PacketType) -> BoxedStrategy<Packet> {
    let outcome = if version.is_v5() {
        (reason_code(packet_type), ack_properties()).boxed()
    } else {
        Just((ReasonCode::Success, AckProperties::default())).boxed()
    };
    (packet_id(), outcome)
        .prop_map(move |(packet_id, (reason_code, properties))| {
            let ack = Ack {
                packet_id,
                reason_code,
                properties,
            };
            match packet_type {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        })
        .boxed()
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version.is_v5() {
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ]),
        )
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed()
    }
}

/// A SUBSCRIBE with one to four filters.
pub fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let properties = if version.is_v5() {
        (option::of(subscription_identifier()), user_properties())
            .prop_map(
                |(subscription_identifier, user_properties)| SubscribeProperties {
                    subscription_identifier,
                    user_properties,
                },
            )
            .boxed()
    } else {
        Just(SubscribeProperties::default()).boxed()
    };
    let subscription = (topic_filter(), subscription_options(version))
        .prop_map(|(filter, options)| Subscription { filter, options });
    (packet_id(), vec(subscription, 1..5), properties)
        .prop_map(|(packet_id, subscriptions, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions,
                properties,
            })
        })
        .boxed()
}

/// A SUBACK with one to four codes; 3.x codes are 0, 1, 2 and 0x80.
pub fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let (codes, properties) = if version.is_v5() {
        (
            reason_code(PacketType::SubAck).boxed(),
            ack_properties().boxed(),
        )
    } else {
        (
            select(vec![0x00, 0x01, 0x02, 0x80u8])
                .prop_filter_map("return code", ReasonCode::from_v3_suback)
                .boxed(),
            Just(AckProperties::default()).boxed(),
        )
    };
    (packet_id(), vec(codes, 1..5), properties)
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

/// An UNSUBSCRIBE with one to four filters.
pub fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let properties = if version.is_v5() {
        user_properties()
            .prop_map(|user_properties| UnsubscribeProperties { user_properties })
            .boxed()
    } else {
        Just(UnsubscribeProperties::default()).boxed()
    };
    (packet_id(), vec(topic_filter(), 1..5), properties)
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

/// An UNSUBACK: in 5.0 one to four codes, in 3.x none.
pub fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let outcome = if version.is_v5() {
        (
            vec(reason_code(PacketType::UnsubAck), 1..5),
            ack_properties(),
        )
            .boxed()
    } else {
        Just((Vec::new(), AckProperties::default())).boxed()
    };
    (packet_id(), outcome)
        .prop_map(|(packet_id, (reason_codes, properties))| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

/// PINGREQ.
pub fn pingreq(_: ProtocolVersion) -> BoxedStrategy<Packet> {
    Just(Packet::PingReq).boxed()
}

/// PINGRESP.
pub fn pingresp(_: ProtocolVersion) -> BoxedStrategy<Packet> {
    Just(Packet::PingResp).boxed()
}

/// A DISCONNECT: in 3.x always the empty one.
pub fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    let properties = (
        option::of(any::<u32>()),
        option::of(text(12)),
        user_properties(),
        option::of(text(12)),
    )
        .prop_map(
            |(session_expiry_interval, reason_string, user_properties, server_reference)| {
                DisconnectProperties {
                    session_expiry_interval,
                    reason_string,
                    user_properties,
                    server_reference,
                }
            },
        );
    (reason_code(PacketType::Disconnect), properties)
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// An AUTH (5.0 only).
pub fn auth() -> BoxedStrategy<Packet> {
    let properties = (authentication(), option::of(text(12)), user_properties()).prop_map(
        |(authentication, reason_string, user_properties)| AuthProperties {
            authentication,
            reason_string,
            user_properties,
        },
    );
    (reason_code(PacketType::Auth), properties)
        .prop_map(|(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// Any packet valid for `version`: every type, AUTH only in 5.0.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut kinds = vec![
        connect(version),
        connack(version),
        publish(version),
        ack(version, PacketType::PubAck),
        ack(version, PacketType::PubRec),
        ack(version, PacketType::PubRel),
        ack(version, PacketType::PubComp),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        pingreq(version),
        pingresp(version),
        disconnect(version),
    ];
    if version.is_v5() {
        kinds.push(auth());
    }
    proptest::strategy::Union::new(kinds).boxed()
}

/// A version and a packet valid for it.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| (Just(version), packet(version)))
}
