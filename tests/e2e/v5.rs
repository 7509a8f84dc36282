//! What MQTT 5.0 added: message expiry, topic aliases, flow control (Receive
//! Maximum), Maximum Packet Size, subscription identifiers, No Local, shared
//! subscriptions, message properties passed through, and the capabilities a
//! server announces in CONNACK.

use std::collections::{BTreeSet, HashMap};
use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use rookery_codec::ProtocolVersion::V5;
use rookery_codec::{Ack, ByteString, Packet, PacketId, QoS, ReasonCode, SubscriptionOptions};
use rookery_testkit::{RawClient, Read, at, connect_packet, persistent_v5, pid, publish_packet};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::clients::V5Client;
use crate::harness::{limited, restricted, shared, skip_on_mosquitto, unique};

/// MQTT-3.3.2-5 and MQTT-3.3.2-6: a queued message whose Message Expiry
/// Interval has passed is not delivered, and one still alive is delivered
/// with the interval reduced by the time it waited.
#[tokio::test]
async fn mqtt_3_3_2_6_message_expiry_drops_expired_messages_and_reduces_the_rest() {
    let broker = shared();
    let id = unique("mexp");
    let topic = unique("mexp/t");
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    subscriber.close().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("mexp-pub")).await;
    let mut short = publish_packet(&topic, QoS::AtLeastOnce, 1, b"short");
    short.properties.message.message_expiry_interval = Some(1);
    publisher.publish_flow(short).await;
    let mut long = publish_packet(&topic, QoS::AtLeastOnce, 2, b"long");
    long.properties.message.message_expiry_interval = Some(30);
    publisher.publish_flow(long).await;
    // Past the short interval, with a margin for a one-second clock.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    let message = subscriber.receive().await;
    assert_eq!(
        &message.payload[..],
        b"long",
        "the expired message was dropped"
    );
    let left = message
        .properties
        .message
        .message_expiry_interval
        .expect("a Message Expiry Interval");
    assert!(
        (1..=28).contains(&left),
        "30 s less the 2.5 s it waited, got {left}"
    );
    subscriber.expect_nothing().await;
}

/// MQTT-3.3.2-12 ff.: a client may replace a topic name by a Topic Alias it
/// set earlier on the same connection; subscribers see the full topic.
#[tokio::test]
async fn mqtt_3_3_2_12_topic_alias_from_a_client_stands_for_its_topic() {
    let broker = shared();
    let first = unique("alias/a");
    let second = unique("alias/b");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("alias-sub")).await;
    subscriber.subscribe_ok(1, &first, QoS::AtLeastOnce).await;
    subscriber.subscribe_ok(2, &second, QoS::AtLeastOnce).await;
    let (mut publisher, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("alias-pub"))).await;
    assert!(
        connack.properties.topic_alias_maximum.unwrap_or(0) >= 1,
        "this test needs topic aliases: {connack:?}"
    );
    let alias = NonZeroU16::new(1);
    let sends = [
        (&first[..], 1, b"set"),
        ("", 2, b"use"),
        (&second[..], 3, b"new"),
        ("", 4, b"re-"),
    ];
    for (topic, id, payload) in sends {
        let mut message = publish_packet("", QoS::AtLeastOnce, id, payload);
        message.topic = ByteString::from(topic);
        message.properties.topic_alias = alias;
        publisher.publish_flow(message).await;
    }
    for (topic, payload) in [
        (&first, b"set"),
        (&first, b"use"),
        (&second, b"new"),
        (&second, b"re-"),
    ] {
        let message = subscriber.receive().await;
        assert_eq!(
            (&message.topic[..], &message.payload[..]),
            (&topic[..], &payload[..])
        );
        assert_eq!(
            message.properties.topic_alias, None,
            "this subscriber allowed no aliases"
        );
    }
}

/// MQTT-3.3.2-9 with section 3.3.2.3.4: a Topic Alias above the server's
/// Topic Alias Maximum gets DISCONNECT 0x94 (Topic Alias invalid).
#[tokio::test]
async fn mqtt_3_3_2_9_topic_alias_above_the_maximum_gets_disconnect_0x94() {
    let broker = limited();
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("alias-big"))).await;
    assert_eq!(connack.properties.topic_alias_maximum, Some(4));
    let mut message = publish_packet(&unique("alias-big/t"), QoS::AtMostOnce, 0, b"x");
    message.properties.topic_alias = NonZeroU16::new(5);
    client.send(Packet::Publish(message)).await;
    client
        .expect_disconnect(ReasonCode::TopicAliasInvalid)
        .await;
}

/// Section 3.3.2.3.4: an empty topic with a Topic Alias that has no mapping
/// yet is a Protocol Error.
#[tokio::test]
async fn mqtt_3_3_2_3_4_unknown_topic_alias_is_a_protocol_error() {
    let broker = shared();
    let mut client = RawClient::v5(broker.addr(), &unique("alias-unknown")).await;
    let mut message = publish_packet("", QoS::AtMostOnce, 0, b"x");
    message.properties.topic_alias = NonZeroU16::new(1);
    client.send(Packet::Publish(message)).await;
    client.expect_disconnect(ReasonCode::ProtocolError).await;
}

/// MQTT-3.1.2-26 and MQTT-3.1.2-27: the server sends no Topic Alias to a
/// client that allowed none, and none above the client's Topic Alias
/// Maximum; every alias it does use resolves to the right topic.
#[tokio::test]
async fn mqtt_3_1_2_26_server_topic_aliases_respect_the_client_maximum() {
    let broker = shared();
    let root = unique("salias");
    let mut none = RawClient::v5(broker.addr(), &unique("salias-none")).await;
    none.subscribe_ok(1, &format!("{root}/#"), QoS::AtMostOnce)
        .await;
    let mut connect = connect_packet(V5, &unique("salias-two"));
    connect.properties.topic_alias_maximum = Some(2);
    let (mut two, _) = RawClient::connect_ok(broker.addr(), connect).await;
    two.subscribe_ok(1, &format!("{root}/#"), QoS::AtMostOnce)
        .await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("salias-pub")).await;
    let topics: Vec<String> = (0..4).map(|i| format!("{root}/{i}")).collect();
    for round in 0..3 {
        for topic in &topics {
            publisher.publish1(1, topic, &[round]).await;
        }
    }
    // Order across topics is not promised (section 4.6), so compare the sets.
    let mut expected: Vec<(String, u8)> = (0..3u8)
        .flat_map(|round| topics.iter().map(move |t| (t.clone(), round)))
        .collect();
    expected.sort();
    let mut plain = Vec::new();
    for _ in 0..expected.len() {
        let message = none.expect_publish().await;
        assert_eq!(message.properties.topic_alias, None, "{message:?}");
        plain.push((message.topic.to_string(), message.payload[0]));
    }
    plain.sort();
    assert_eq!(plain, expected);

    let mut aliases: HashMap<u16, ByteString> = HashMap::new();
    let mut resolved = Vec::new();
    for _ in 0..expected.len() {
        let message = two.expect_publish().await;
        let topic = match message.properties.topic_alias {
            None => message.topic.clone(),
            Some(alias) => {
                assert!(alias.get() <= 2, "alias {alias} above the maximum 2");
                if message.topic.is_empty() {
                    aliases
                        .get(&alias.get())
                        .cloned()
                        .expect("an alias set before")
                } else {
                    aliases.insert(alias.get(), message.topic.clone());
                    message.topic.clone()
                }
            }
        };
        resolved.push((topic.to_string(), message.payload[0]));
    }
    resolved.sort();
    assert_eq!(resolved, expected);
}

/// MQTT-3.3.4-9: the server has at most the client's Receive Maximum QoS 1
/// and 2 messages unacknowledged towards it; each PUBACK lets one more go.
#[tokio::test]
async fn mqtt_3_3_4_9_server_respects_the_client_receive_maximum() {
    // Mosquitto 2.0.11 sends two more messages after one PUBACK, so three are
    // in flight towards a client whose Receive Maximum is 2.
    if skip_on_mosquitto("it exceeds the client's Receive Maximum after a PUBACK") {
        return;
    }
    let broker = shared();
    let topic = unique("rmax/t");
    let mut connect = connect_packet(V5, &unique("rmax-sub"));
    connect.properties.receive_maximum = NonZeroU16::new(2);
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), connect).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("rmax-pub")).await;
    for i in 1..=5u16 {
        publisher.publish1(i, &topic, &[i as u8]).await;
    }
    let first = subscriber.expect_publish().await;
    let second = subscriber.expect_publish().await;
    subscriber.expect_nothing().await;
    subscriber.ack(&first).await;
    let third = subscriber.expect_publish().await;
    subscriber.expect_nothing().await;
    subscriber.ack(&second).await;
    subscriber.ack(&third).await;
    let fourth = subscriber.receive().await;
    let fifth = subscriber.receive().await;
    let order: Vec<u8> = [first, second, third, fourth, fifth]
        .iter()
        .map(|m| m.payload[0])
        .collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5]);
}

/// Section 3.3.4: a client that sends more unacknowledged QoS 2 publishes than
/// the server's Receive Maximum gets DISCONNECT 0x93 (Receive Maximum exceeded).
#[tokio::test]
async fn mqtt_3_3_4_client_exceeding_the_server_receive_maximum_gets_disconnect_0x93() {
    // Mosquitto 2.0.11 answers the extra publish with PUBREC 0x97 (Quota
    // exceeded) and keeps the connection.
    if skip_on_mosquitto("it answers PUBREC 0x97 instead of DISCONNECT 0x93") {
        return;
    }
    let broker = limited();
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("rmax-over"))).await;
    let maximum = connack
        .properties
        .receive_maximum
        .expect("the limited broker announces its Receive Maximum")
        .get();
    assert_eq!(maximum, 8);
    let topic = unique("rmax-over/t");
    for id in 1..=maximum {
        client
            .send(Packet::Publish(publish_packet(
                &topic,
                QoS::ExactlyOnce,
                id,
                b"held",
            )))
            .await;
        // No PUBREL: each stays unacknowledged until PUBCOMP.
        assert_eq!(client.expect_pubrec().await.packet_id, pid(id));
    }
    client
        .send(Packet::Publish(publish_packet(
            &topic,
            QoS::ExactlyOnce,
            maximum + 1,
            b"one too many",
        )))
        .await;
    client
        .expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
}

/// Section 3.2.2.3.6: a packet larger than the server's Maximum Packet Size
/// gets DISCONNECT 0x95 (Packet too large).
#[tokio::test]
async fn mqtt_3_2_2_3_6_packet_above_the_server_maximum_gets_disconnect_0x95() {
    let broker = limited();
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("big"))).await;
    assert_eq!(
        connack.properties.maximum_packet_size,
        NonZeroU32::new(4096)
    );
    client
        .send(Packet::Publish(publish_packet(
            &unique("big/t"),
            QoS::AtMostOnce,
            0,
            &[0; 5000],
        )))
        .await;
    client.expect_disconnect(ReasonCode::PacketTooLarge).await;
}

/// MQTT-3.1.2-24 and MQTT-3.1.2-25: a message larger than the client's Maximum
/// Packet Size is not sent to it (the client stays connected and gets the
/// next message that fits).
#[tokio::test]
async fn mqtt_3_1_2_25_message_above_the_client_maximum_packet_size_is_not_sent() {
    let broker = shared();
    let topic = unique("cbig/t");
    let mut connect = connect_packet(V5, &unique("cbig-sub"));
    connect.properties.maximum_packet_size = NonZeroU32::new(256);
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), connect).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("cbig-pub")).await;
    publisher.publish1(1, &topic, &[7; 1000]).await;
    publisher.publish1(2, &topic, b"fits").await;
    let message = subscriber.receive().await;
    assert_eq!(&message.payload[..], b"fits");
    subscriber.expect_nothing().await;
}

/// MQTT-3.3.4-3 to MQTT-3.3.4-5: a message carries the Subscription
/// Identifiers of the subscriptions it matched (all of them in one copy, or
/// each in its own copy), and none for a subscription without one.
#[tokio::test]
async fn mqtt_3_3_4_3_messages_carry_the_subscription_identifiers_they_matched() {
    let broker = shared();
    let root = unique("subid");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("subid-sub")).await;
    subscriber
        .subscribe_id(1, &format!("{root}/+"), QoS::AtLeastOnce, 7)
        .await;
    subscriber
        .subscribe_id(2, &format!("{root}/#"), QoS::AtLeastOnce, 300)
        .await;
    subscriber
        .subscribe_ok(3, &format!("{root}-none/x"), QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("subid-pub")).await;

    publisher.publish1(1, &format!("{root}/x"), b"both").await;
    let mut seen = BTreeSet::new();
    let mut copies = 0;
    loop {
        match subscriber.read_checked(crate::harness::QUIET).await {
            Read::Packet(Packet::Publish(message)) => {
                copies += 1;
                subscriber.ack(&message).await;
                let ids = &message.properties.subscription_identifiers;
                assert!(!ids.is_empty(), "{message:?}");
                seen.extend(ids.iter().map(|id| id.get()));
            }
            Read::Nothing => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, BTreeSet::from([7, 300]), "in {copies} copies");
    assert!(copies <= 2);

    publisher
        .publish1(2, &format!("{root}-none/x"), b"no id")
        .await;
    let message = subscriber.receive().await;
    assert_eq!(&message.payload[..], b"no id");
    assert_eq!(message.properties.subscription_identifiers, vec![]);
    subscriber.expect_nothing().await;
}

/// MQTT-3.8.3-3: with No Local a client's own messages are not sent back to it.
#[tokio::test]
async fn mqtt_3_8_3_3_no_local_does_not_send_a_client_its_own_messages() {
    let broker = shared();
    let topic = unique("nolocal/t");
    let mut client = RawClient::v5(broker.addr(), &unique("nolocal")).await;
    let options = SubscriptionOptions {
        no_local: true,
        ..at(QoS::AtLeastOnce)
    };
    client.subscribe(1, &topic, options).await;
    client.publish1(2, &topic, b"mine").await;
    client.expect_nothing().await;
    let mut other = RawClient::v5(broker.addr(), &unique("nolocal-other")).await;
    other.publish1(1, &topic, b"theirs").await;
    assert_eq!(&client.receive().await.payload[..], b"theirs");
}

/// MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
#[tokio::test]
async fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    // Mosquitto 2.0.11 grants the subscription.
    if skip_on_mosquitto("it accepts No Local on a shared subscription") {
        return;
    }
    let broker = shared();
    let mut client = RawClient::v5(broker.addr(), &unique("nolocal-share")).await;
    let options = SubscriptionOptions {
        no_local: true,
        ..at(QoS::AtLeastOnce)
    };
    let filter = format!("$share/g/{}", unique("nolocal-share/t"));
    client
        .send(Packet::Subscribe(rookery_codec::Subscribe {
            packet_id: pid(1),
            subscriptions: vec![rookery_codec::Subscription {
                filter: ByteString::from(filter),
                options,
            }],
            properties: Default::default(),
        }))
        .await;
    client.expect_disconnect(ReasonCode::ProtocolError).await;
}

/// Section 4.8.2: a shared subscription delivers each message to one member
/// of its group, spreading them over the members; every group and every
/// ordinary subscription gets its own copy.
#[tokio::test]
async fn mqtt_4_8_2_shared_subscription_gives_each_message_to_one_member_of_the_group() {
    let broker = shared();
    let topic = unique("share/t");
    let group = unique("g");
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut member = RawClient::v5(broker.addr(), &unique("share-m")).await;
        member
            .subscribe_ok(1, &format!("$share/{group}/{topic}"), QoS::AtLeastOnce)
            .await;
        members.push(member);
    }
    let mut alone = RawClient::v5(broker.addr(), &unique("share-alone")).await;
    alone
        .subscribe_ok(
            1,
            &format!("$share/{}/{topic}", unique("g")),
            QoS::AtLeastOnce,
        )
        .await;
    let mut plain = RawClient::v5(broker.addr(), &unique("share-plain")).await;
    plain.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("share-pub")).await;
    const MESSAGES: u8 = 20;
    for i in 0..MESSAGES {
        publisher.publish1(u16::from(i) + 1, &topic, &[i]).await;
    }

    let mut received = Vec::new();
    for member in &mut members {
        let mut mine = Vec::new();
        while let Read::Packet(packet) = member.read_checked(crate::harness::QUIET).await {
            let Packet::Publish(message) = packet else {
                panic!("unexpected {packet:?}");
            };
            member.ack(&message).await;
            mine.push(message.payload[0]);
        }
        received.push(mine);
    }
    let mut all: Vec<u8> = received.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..MESSAGES).collect::<Vec<_>>(),
        "each message exactly once: {received:?}"
    );
    assert!(
        received.iter().all(|mine| !mine.is_empty()),
        "spread over the members: {received:?}"
    );

    for expected in 0..MESSAGES {
        assert_eq!(
            alone.receive().await.payload[0],
            expected,
            "another group gets all"
        );
        assert_eq!(
            plain.receive().await.payload[0],
            expected,
            "a plain subscriber gets all"
        );
    }
}

/// MQTT-3.3.2-4, MQTT-3.3.2-15 to MQTT-3.3.2-20: the Payload Format
/// Indicator, Content Type, Response Topic, Correlation Data and User
/// Properties (in order) reach the subscriber unchanged (rumqttc on both ends).
#[tokio::test]
async fn mqtt_3_3_2_message_properties_are_forwarded_unchanged() {
    let broker = shared();
    let topic = unique("props/t");
    let mut subscriber = V5Client::connect(broker.addr(), &unique("props-sub")).await;
    subscriber
        .subscribe(&topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut publisher = V5Client::connect(broker.addr(), &unique("props-pub")).await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\xffrequest-17")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..PublishProperties::default()
    };
    publisher
        .publish_with(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "héllo".as_bytes(),
            properties.clone(),
        )
        .await;
    let message = subscriber.expect_publish().await;
    assert_eq!(&message.payload[..], "héllo".as_bytes());
    let got = message.properties.expect("properties");
    assert_eq!(
        got.payload_format_indicator,
        properties.payload_format_indicator
    );
    assert_eq!(got.content_type, properties.content_type);
    assert_eq!(got.response_topic, properties.response_topic);
    assert_eq!(got.correlation_data, properties.correlation_data);
    assert_eq!(got.user_properties, properties.user_properties);
}

/// Section 3.2.2.3: the limits a server is configured with are announced in
/// CONNACK (Receive Maximum, Maximum Packet Size, Topic Alias Maximum).
#[tokio::test]
async fn mqtt_3_2_2_3_connack_announces_the_configured_limits() {
    let broker = limited();
    let (_client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("limits"))).await;
    let properties = connack.properties;
    assert_eq!(properties.receive_maximum, NonZeroU16::new(8));
    assert_eq!(properties.maximum_packet_size, NonZeroU32::new(4096));
    assert_eq!(properties.topic_alias_maximum, Some(4));
}

/// MQTT-3.2.2-9 and MQTT-3.2.2-10: a server that supports only QoS 1 says so
/// in CONNACK, and still accepts a SUBSCRIBE at QoS 2 (granting QoS 1).
#[tokio::test]
async fn mqtt_3_2_2_9_server_below_qos_2_announces_maximum_qos_and_downgrades_subscriptions() {
    let broker = restricted();
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("maxqos"))).await;
    assert_eq!(connack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    let suback = client
        .subscribe(1, &unique("maxqos/t"), at(QoS::ExactlyOnce))
        .await;
    assert_eq!(suback.reason_codes, vec![ReasonCode::GrantedQoS1]);
}

/// Section 3.3.1.2 with MQTT-3.2.2-11: a PUBLISH above the server's Maximum
/// QoS gets DISCONNECT 0x9B (QoS not supported).
#[tokio::test]
async fn mqtt_3_2_2_11_publish_above_the_maximum_qos_gets_disconnect_0x9b() {
    let broker = restricted();
    let mut client = RawClient::v5(broker.addr(), &unique("qos2-refused")).await;
    client
        .send(Packet::Publish(publish_packet(
            &unique("qos2-refused/t"),
            QoS::ExactlyOnce,
            1,
            b"x",
        )))
        .await;
    client.expect_disconnect(ReasonCode::QoSNotSupported).await;
}

/// MQTT-3.2.2-14 with section 3.3.1.3: a server without retained messages
/// says so in CONNACK, and a retained PUBLISH gets DISCONNECT 0x9A.
#[tokio::test]
async fn mqtt_3_2_2_14_retain_unavailable_is_announced_and_retained_publish_gets_0x9a() {
    let broker = restricted();
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("noretain"))).await;
    assert_eq!(connack.properties.retain_available, Some(false));
    let mut message = publish_packet(&unique("noretain/t"), QoS::AtMostOnce, 0, b"x");
    message.retain = true;
    client.send(Packet::Publish(message)).await;
    client
        .expect_disconnect(ReasonCode::RetainNotSupported)
        .await;
}

/// Section 3.4.2.1: a PUBACK with an error reason code from a subscriber
/// still ends that message's flow (no redelivery on the same connection).
#[tokio::test]
async fn mqtt_3_4_2_1_puback_with_an_error_reason_ends_the_flow() {
    let broker = shared();
    let topic = unique("puberr/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("puberr-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("puberr-pub")).await;
    publisher.publish1(1, &topic, b"refused").await;
    let message = subscriber.expect_publish().await;
    let id: PacketId = message.packet_id.expect("QoS 1");
    let mut ack = Ack::new(id);
    ack.reason_code = ReasonCode::ImplementationSpecificError;
    subscriber.send(Packet::PubAck(ack)).await;
    publisher.publish1(2, &topic, b"next").await;
    let next = subscriber.receive().await;
    assert_eq!(&next.payload[..], b"next");
    subscriber.expect_nothing().await;
}
