//! PUBLISH and its acknowledgements (sections 3.3 to 3.7, 4.3 to 4.7): QoS 0,
//! 1 and 2 in both directions, redelivery of unacknowledged messages,
//! ordering, topic matching, SUBSCRIBE and UNSUBSCRIBE.

use rookery_codec::ProtocolVersion::V3_1_1;
use rookery_codec::{Ack, Connect, Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, at, connect_packet, persistent_v5, pid, publish_packet};

use crate::clients::{V4Client, V5Client};
use crate::harness::{Broker, shared, unique};

/// A QoS 0 message reaches a 3.1.1 subscriber (rumqttc on both ends).
#[tokio::test]
async fn qos0_message_reaches_a_v311_subscriber() {
    let broker = shared();
    let topic = unique("q0/t");
    let mut subscriber = V4Client::connect(broker.addr(), &unique("q0-sub")).await;
    subscriber.subscribe(&topic, rumqttc::QoS::AtMostOnce).await;
    let mut publisher = V4Client::connect(broker.addr(), &unique("q0-pub")).await;
    publisher
        .publish(&topic, rumqttc::QoS::AtMostOnce, false, b"zero")
        .await;
    let message = subscriber.expect_publish().await;
    assert_eq!(message.topic, topic);
    assert_eq!(&message.payload[..], b"zero");
    assert_eq!(message.qos, rumqttc::QoS::AtMostOnce);
}

/// QoS 1 and QoS 2 messages complete their flows with a 3.1.1 publisher and
/// subscriber (rumqttc on both ends).
#[tokio::test]
async fn qos1_and_qos2_messages_reach_a_v311_subscriber() {
    let broker = shared();
    let topic = unique("q12/t");
    let mut subscriber = V4Client::connect(broker.addr(), &unique("q12-sub")).await;
    subscriber
        .subscribe(&topic, rumqttc::QoS::ExactlyOnce)
        .await;
    let mut publisher = V4Client::connect(broker.addr(), &unique("q12-pub")).await;
    publisher
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"one")
        .await;
    publisher
        .publish(&topic, rumqttc::QoS::ExactlyOnce, false, b"two")
        .await;
    let first = subscriber.expect_publish().await;
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"one"[..], rumqttc::QoS::AtLeastOnce)
    );
    let second = subscriber.expect_publish().await;
    assert_eq!(
        (&second.payload[..], second.qos),
        (&b"two"[..], rumqttc::QoS::ExactlyOnce)
    );
    subscriber.expect_no_publish().await;
}

/// Section 4.3.2: a QoS 1 message is acknowledged to its publisher and
/// delivered at QoS 1 with a packet identifier (rumqttc 5.0 on both ends).
#[tokio::test]
async fn mqtt_4_3_2_qos1_message_is_acknowledged_and_delivered() {
    let broker = shared();
    let topic = unique("q1/t");
    let mut subscriber = V5Client::connect(broker.addr(), &unique("q1-sub")).await;
    subscriber
        .subscribe(&topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut publisher = V5Client::connect(broker.addr(), &unique("q1-pub")).await;
    publisher
        .publish(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            b"one",
        )
        .await;
    let message = subscriber.expect_publish().await;
    assert_eq!(&message.topic[..], topic.as_bytes());
    assert_eq!(&message.payload[..], b"one");
    assert_eq!(message.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    assert_ne!(message.pkid, 0);
    assert!(!message.dup);
}

/// Section 4.3.3: a QoS 2 message is delivered exactly once (rumqttc 5.0 on
/// both ends).
#[tokio::test]
async fn mqtt_4_3_3_qos2_message_is_delivered_exactly_once() {
    let broker = shared();
    let topic = unique("q2/t");
    let mut subscriber = V5Client::connect(broker.addr(), &unique("q2-sub")).await;
    subscriber
        .subscribe(&topic, rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
        .await;
    let mut publisher = V5Client::connect(broker.addr(), &unique("q2-pub")).await;
    publisher
        .publish(
            &topic,
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
            false,
            b"two",
        )
        .await;
    let message = subscriber.expect_publish().await;
    assert_eq!(&message.payload[..], b"two");
    assert_eq!(message.qos, rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
    subscriber.expect_no_publish().await;
}

/// Section 4.3.3 (MQTT-4.3.3-9 ff.): a QoS 2 PUBLISH sent again with DUP
/// before the PUBREL is acknowledged again but not delivered again; the
/// server's own QoS 2 flow to the subscriber is PUBLISH, PUBREC, PUBREL, PUBCOMP.
#[tokio::test]
async fn mqtt_4_3_3_resent_qos2_publish_is_delivered_once() {
    let broker = shared();
    let topic = unique("q2dup/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("q2dup-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("q2dup-pub")).await;

    let mut message = publish_packet(&topic, QoS::ExactlyOnce, 7, b"once");
    publisher.send(Packet::Publish(message.clone())).await;
    assert_eq!(publisher.expect_pubrec().await.packet_id, pid(7));
    message.dup = true;
    publisher.send(Packet::Publish(message)).await;
    assert_eq!(publisher.expect_pubrec().await.packet_id, pid(7));
    publisher.send(Packet::PubRel(Ack::new(pid(7)))).await;
    assert_eq!(publisher.expect_pubcomp().await.packet_id, pid(7));

    let delivered = subscriber.receive().await;
    assert_eq!(&delivered.payload[..], b"once");
    assert_eq!(delivered.qos, QoS::ExactlyOnce);
    subscriber.expect_nothing().await;
}

/// Section 3.8.4: a message is delivered at the lower of its own QoS and the
/// QoS granted to the subscription.
#[tokio::test]
async fn mqtt_3_8_4_delivery_qos_is_the_lower_of_message_and_subscription_qos() {
    let broker = shared();
    let topic = unique("qmin/t");
    let mut subscribers = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut subscriber = RawClient::v5(broker.addr(), &unique("qmin-sub")).await;
        subscriber.subscribe_ok(1, &topic, qos).await;
        subscribers.push((qos, subscriber));
    }
    let mut publisher = RawClient::v5(broker.addr(), &unique("qmin-pub")).await;
    for (id, qos) in [
        (1, QoS::ExactlyOnce),
        (2, QoS::AtLeastOnce),
        (3, QoS::AtMostOnce),
    ] {
        let message = publish_packet(&topic, qos, id, format!("{qos:?}").as_bytes());
        if qos == QoS::AtMostOnce {
            publisher.send(Packet::Publish(message)).await;
        } else {
            publisher.publish_flow(message).await;
        }
    }
    // Order across QoS levels is not promised (MQTT-4.6.0-6), so match by payload.
    for (granted, subscriber) in &mut subscribers {
        let mut got = Vec::new();
        for _ in 0..3 {
            let message = subscriber.receive().await;
            got.push((
                String::from_utf8_lossy(&message.payload).into_owned(),
                message.qos,
            ));
        }
        got.sort();
        let mut expected: Vec<(String, QoS)> =
            [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce]
                .into_iter()
                .map(|sent| (format!("{sent:?}"), sent.min(*granted)))
                .collect();
        expected.sort();
        assert_eq!(got, expected, "{granted:?} subscription");
    }
}

/// MQTT-4.6.0-6: messages of one QoS from one publisher to one topic reach a
/// subscriber in the order they were published (an Ordered Topic).
#[tokio::test]
async fn mqtt_4_6_0_messages_on_a_topic_arrive_in_publish_order() {
    let broker = shared();
    let topic = unique("order/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("order-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("order-pub")).await;
    for i in 1..=30u16 {
        publisher
            .send(Packet::Publish(publish_packet(
                &topic,
                QoS::AtLeastOnce,
                i,
                &i.to_be_bytes(),
            )))
            .await;
    }
    for i in 1..=30u16 {
        let message = subscriber.receive().await;
        assert_eq!(
            &message.payload[..],
            &i.to_be_bytes(),
            "message {i} out of order"
        );
    }
    for _ in 1..=30 {
        publisher.expect_puback().await;
    }
}

/// MQTT-4.6.0-6 when some messages wait for the store and others need
/// nothing: every other QoS 1 message is retained (committed to the store
/// before it is delivered), the rest go only to a clean subscriber here.
/// The ones that need nothing must not overtake those that wait.
#[tokio::test]
async fn mqtt_4_6_0_messages_that_need_nothing_do_not_overtake_those_waiting_for_the_store() {
    let broker = shared();
    let topic = unique("order/retained");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("order-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("order-pub")).await;
    for i in 1..=30u16 {
        let mut publish = publish_packet(&topic, QoS::AtLeastOnce, i, &i.to_be_bytes());
        publish.retain = i % 2 == 1;
        publisher.send(Packet::Publish(publish)).await;
    }
    for i in 1..=30u16 {
        let message = subscriber.receive().await;
        assert_eq!(
            &message.payload[..],
            &i.to_be_bytes(),
            "message {i} out of order (odd ones are retained)"
        );
        subscriber.ack(&message).await;
    }
    for _ in 1..=30 {
        publisher.expect_puback().await;
    }
}

/// MQTT-4.4.0-1 and MQTT-3.3.1-1: a QoS 1 message a persistent session did not
/// acknowledge is sent again on reconnect, with DUP 1 and its original packet
/// identifier (5.0).
#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_qos1_message_is_resent_with_dup_on_reconnect() {
    let broker = shared();
    let id = unique("redo");
    redelivery_of_unacknowledged_qos1(&broker, persistent_v5(&id, 60)).await;
}

/// The same rule for a 3.1.1 client with Clean Session 0 (3.1.1 MQTT-4.4.0-1).
#[tokio::test]
async fn mqtt_3_1_1_unacknowledged_qos1_message_is_resent_with_dup_on_reconnect() {
    let broker = shared();
    let mut connect = connect_packet(V3_1_1, &unique("redo4"));
    connect.clean_start = false;
    redelivery_of_unacknowledged_qos1(&broker, connect).await;
}

async fn redelivery_of_unacknowledged_qos1(broker: &Broker, connect: Connect) {
    let topic = unique("redo/t");
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), connect.clone()).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("redo-pub")).await;
    publisher.publish1(1, &topic, b"unacked").await;
    let first = subscriber.expect_publish().await;
    assert!(!first.dup, "first delivery has DUP 0");
    subscriber.close().await;

    let (mut subscriber, connack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(connack.session_present);
    let again = subscriber.expect_publish().await;
    assert!(again.dup, "a redelivery has DUP 1: {again:?}");
    assert_eq!(
        again.packet_id, first.packet_id,
        "the original packet identifier"
    );
    assert_eq!(again.payload, first.payload);
    subscriber.ack(&again).await;
    subscriber.expect_nothing().await;
}

/// MQTT-4.4.0-1: a PUBREL the subscriber did not complete is sent again on
/// reconnect (not the PUBLISH it already acknowledged with PUBREC).
#[tokio::test]
async fn mqtt_4_4_0_1_uncompleted_pubrel_is_resent_on_reconnect() {
    let broker = shared();
    let id = unique("rel");
    let topic = unique("rel/t");
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    subscriber.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("rel-pub")).await;
    publisher
        .publish_flow(publish_packet(&topic, QoS::ExactlyOnce, 1, b"two"))
        .await;
    let message = subscriber.expect_publish().await;
    let packet_id = message.packet_id.expect("QoS 2 has a packet identifier");
    subscriber.send(Packet::PubRec(Ack::new(packet_id))).await;
    assert_eq!(subscriber.expect_pubrel().await.packet_id, packet_id);
    subscriber.close().await;

    let (mut subscriber, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(connack.session_present);
    assert_eq!(subscriber.expect_pubrel().await.packet_id, packet_id);
    subscriber.send(Packet::PubComp(Ack::new(packet_id))).await;
    subscriber.expect_nothing().await;
}

/// Section 4.3.3 with 4.4: a publisher whose connection dropped after PUBREC
/// completes the QoS 2 flow with PUBREL on reconnect; the message is delivered
/// once.
#[tokio::test]
async fn mqtt_4_3_3_qos2_flow_completes_after_the_publisher_reconnects() {
    let broker = shared();
    let id = unique("pubrel");
    let topic = unique("pubrel/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("pubrel-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;

    let (mut publisher, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    publisher
        .send(Packet::Publish(publish_packet(
            &topic,
            QoS::ExactlyOnce,
            9,
            b"exactly once",
        )))
        .await;
    assert_eq!(publisher.expect_pubrec().await.packet_id, pid(9));
    publisher.close().await;

    let (mut publisher, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(connack.session_present);
    publisher.send(Packet::PubRel(Ack::new(pid(9)))).await;
    let pubcomp = publisher.expect_pubcomp().await;
    assert_eq!(pubcomp.packet_id, pid(9));
    assert_eq!(pubcomp.reason_code, ReasonCode::Success);

    let message = subscriber.receive().await;
    assert_eq!(&message.payload[..], b"exactly once");
    subscriber.expect_nothing().await;
}

/// MQTT 5 §3.7.2.1 with 4.3.3: a QoS 2 PUBLISH refused with an error PUBREC
/// is not taken, and a PUBREL sent for it all the same (paho-mqtt 2 ignores
/// PUBREC's reason code and releases) is answered 0x92 (Packet Identifier
/// not found), never Success, on a persistent session too: on the refusing
/// connection, and on the next one when the first ended before the PUBREL
/// was answered. With Success the client takes the message for delivered
/// though no subscriber ever gets it (the compose fault test's "lost"
/// acknowledged QoS 2 messages: refused while the store leader was down).
#[tokio::test]
async fn mqtt_4_3_3_a_pubrel_after_a_refusing_pubrec_is_answered_0x92_not_success() {
    let broker = shared();
    let id = unique("refused-q2");
    // Refused by rule here; the store refuses alike when it cannot commit.
    let topic = "$SYS/refused";
    let (mut publisher, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    let pubrec = qos2_publish(&mut publisher, 3, topic).await;
    assert_eq!(pubrec.reason_code, ReasonCode::NotAuthorized);
    let pubcomp = release(&mut publisher, 3).await;
    assert_eq!(pubcomp.reason_code, ReasonCode::PacketIdentifierNotFound);

    let pubrec = qos2_publish(&mut publisher, 4, topic).await;
    assert_eq!(pubrec.reason_code, ReasonCode::NotAuthorized);
    publisher.close().await;
    let (mut publisher, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(connack.session_present);
    let pubcomp = release(&mut publisher, 4).await;
    assert_eq!(pubcomp.reason_code, ReasonCode::PacketIdentifierNotFound);

    // An identifier the store holds is still released with Success.
    let pubrec = qos2_publish(&mut publisher, 4, &unique("refused-q2/ok")).await;
    assert!(!pubrec.reason_code.is_error(), "{pubrec:?}");
    let pubcomp = release(&mut publisher, 4).await;
    assert_eq!(pubcomp.reason_code, ReasonCode::Success);
}

/// A QoS 2 PUBLISH under `id` and its PUBREC, whatever its reason code.
async fn qos2_publish(publisher: &mut RawClient, id: u16, topic: &str) -> Ack {
    publisher
        .try_publish(QoS::ExactlyOnce, id, topic, b"q2", rookery_testkit::TIMEOUT)
        .await
        .expect("PUBREC")
}

/// PUBREL for `id` and its PUBCOMP, whatever its reason code.
async fn release(publisher: &mut RawClient, id: u16) -> Ack {
    publisher
        .try_release(id, rookery_testkit::TIMEOUT)
        .await
        .expect("PUBCOMP")
}

/// MQTT-3.1.2-5 ff.: QoS 1 and QoS 2 messages published while a persistent
/// session is offline are queued and delivered, in order, on reconnect.
#[tokio::test]
async fn persistent_session_receives_messages_published_while_offline() {
    let broker = shared();
    let id = unique("offline");
    let topic = unique("offline/t");
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    subscriber.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;
    subscriber.disconnect().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("offline-pub")).await;
    publisher.publish1(1, &topic, b"first").await;
    publisher
        .publish_flow(publish_packet(&topic, QoS::ExactlyOnce, 2, b"second"))
        .await;

    let (mut subscriber, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(connack.session_present);
    // Order across QoS levels is not promised (MQTT-4.6.0-6), so compare the sets.
    let mut got = Vec::new();
    for _ in 0..2 {
        let message = subscriber.receive().await;
        assert!(!message.dup, "never sent before, so DUP 0: {message:?}");
        got.push((message.payload, message.qos));
    }
    got.sort_by_key(|(_, qos)| *qos);
    assert_eq!(
        got,
        vec![
            (bytes::Bytes::from_static(b"first"), QoS::AtLeastOnce),
            (bytes::Bytes::from_static(b"second"), QoS::ExactlyOnce),
        ]
    );
    subscriber.expect_nothing().await;
}

/// Section 4.7: `+` matches one level, `#` any number of levels including the
/// parent, and MQTT-4.7.2-1: filters starting with a wildcard do not match
/// topics starting with `$`.
#[tokio::test]
async fn mqtt_4_7_2_1_wildcards_match_levels_but_not_dollar_topics() {
    // Its own broker: a `#` subscription on the shared one would see every test.
    let broker = Broker::start();
    let root = unique("wild");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("wild-sub")).await;
    subscriber.subscribe_ok(1, "#", QoS::AtMostOnce).await;
    subscriber.subscribe_ok(2, "+/a/+", QoS::AtMostOnce).await;
    let mut dollar = RawClient::v5(broker.addr(), &unique("wild-dollar")).await;
    dollar
        .subscribe_ok(1, &format!("${root}/#"), QoS::AtMostOnce)
        .await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("wild-pub")).await;
    publisher.publish0(&format!("${root}/a/b"), b"dollar").await;
    publisher.publish0(&format!("{root}/a/b"), b"plain").await;
    publisher.ping().await;

    // The `$` topic reaches only the subscription that names it.
    let message = dollar.expect_publish().await;
    assert_eq!(&message.payload[..], b"dollar");
    // `#` and `+/a/+` both match the plain topic: one or two copies, never the `$` one.
    let mut plain = 0;
    loop {
        match subscriber.read_checked(crate::harness::QUIET).await {
            Read::Packet(Packet::Publish(message)) => {
                assert!(!message.topic.starts_with('$'), "{message:?}");
                assert_eq!(&message.payload[..], b"plain");
                plain += 1;
            }
            Read::Nothing => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&plain),
        "{plain} copies of the plain message"
    );
}

/// Section 3.10.4: after UNSUBACK, messages on the filter are no longer sent.
#[tokio::test]
async fn mqtt_3_10_4_unsubscribe_stops_delivery() {
    let broker = shared();
    let topic = unique("unsub/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("unsub-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    subscriber.unsubscribe(2, &topic).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("unsub-pub")).await;
    publisher.publish1(1, &topic, b"nobody").await;
    subscriber.expect_nothing().await;
}

/// MQTT-3.8.4-3: subscribing again to the same filter replaces the
/// subscription (here its QoS) rather than adding a second one.
#[tokio::test]
async fn mqtt_3_8_4_3_subscribing_again_replaces_the_subscription() {
    let broker = shared();
    let topic = unique("resub/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("resub-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;
    subscriber.subscribe_ok(2, &topic, QoS::AtMostOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("resub-pub")).await;
    publisher.publish1(1, &topic, b"once at QoS 0").await;
    let message = subscriber.expect_publish().await;
    assert_eq!(message.qos, QoS::AtMostOnce);
    subscriber.expect_nothing().await;
}

/// Section 3.9.3: a SUBACK answers each filter of a SUBSCRIBE, in order.
#[tokio::test]
async fn mqtt_3_9_3_suback_has_one_reason_code_per_filter_in_order() {
    let broker = shared();
    let topic = unique("suback/t");
    let mut client = RawClient::v5(broker.addr(), &unique("suback")).await;
    let suback = client
        .subscribe_with(
            1,
            &[
                (&format!("{topic}/2"), at(QoS::ExactlyOnce)),
                (&format!("{topic}/0"), at(QoS::AtMostOnce)),
                (&format!("{topic}/1"), at(QoS::AtLeastOnce)),
            ],
            Default::default(),
        )
        .await;
    assert_eq!(
        suback.reason_codes,
        vec![
            ReasonCode::GrantedQoS2,
            ReasonCode::Success,
            ReasonCode::GrantedQoS1
        ]
    );
}
