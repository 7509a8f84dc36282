//! Retained messages (section 3.3.1.3): kept per topic, sent to new
//! subscriptions, replaced, cleared by an empty payload, and the 5.0
//! subscription options Retain As Published and Retain Handling.

use rookery_codec::{Publish, QoS, RetainHandling, SubscriptionOptions};
use rookery_testkit::{RawClient, at, publish_packet};

use crate::clients::V4Client;
use crate::harness::{shared, unique};

fn retained(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
    let mut message = publish_packet(topic, qos, id, payload);
    message.retain = true;
    message
}

/// Sends a retained message and waits until the broker has taken it
/// (PUBACK), so that a later subscription finds it.
async fn retain(publisher: &mut RawClient, id: u16, topic: &str, payload: &[u8]) {
    publisher
        .publish_flow(retained(topic, QoS::AtLeastOnce, id, payload))
        .await;
}

/// MQTT-3.3.1-5 ff. (3.1.1: MQTT-3.3.1-6 and MQTT-3.3.1-8): a retained message
/// is sent to a new subscription, with RETAIN 1, also through a wildcard.
#[tokio::test]
async fn mqtt_3_3_1_5_retained_message_is_sent_to_a_new_subscription() {
    let broker = shared();
    let root = unique("ret");
    let mut publisher = RawClient::v5(broker.addr(), &unique("ret-pub")).await;
    retain(&mut publisher, 1, &format!("{root}/a"), b"kept").await;

    let mut subscriber = RawClient::v5(broker.addr(), &unique("ret-sub")).await;
    subscriber
        .subscribe_ok(1, &format!("{root}/+"), QoS::AtLeastOnce)
        .await;
    let message = subscriber.receive().await;
    assert_eq!(&message.topic[..], format!("{root}/a"));
    assert_eq!(&message.payload[..], b"kept");
    assert!(
        message.retain,
        "sent because of a new subscription: RETAIN 1"
    );
    subscriber.expect_nothing().await;
}

/// The same through rumqttc for a 3.1.1 subscriber (3.1.1 MQTT-3.3.1-8).
#[tokio::test]
async fn mqtt_3_1_1_retained_message_is_sent_to_a_new_subscription() {
    let broker = shared();
    let topic = unique("ret4/t");
    let mut publisher = V4Client::connect(broker.addr(), &unique("ret4-pub")).await;
    publisher
        .publish(&topic, rumqttc::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut subscriber = V4Client::connect(broker.addr(), &unique("ret4-sub")).await;
    subscriber
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
        .await;
    let message = subscriber.expect_publish().await;
    assert_eq!(&message.payload[..], b"kept");
    assert!(message.retain);
}

/// MQTT-3.3.1-5: a new retained message replaces the one kept for its topic.
#[tokio::test]
async fn mqtt_3_3_1_5_a_retained_message_replaces_the_previous_one() {
    let broker = shared();
    let topic = unique("rep/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("rep-pub")).await;
    retain(&mut publisher, 1, &topic, b"old").await;
    retain(&mut publisher, 2, &topic, b"new").await;
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rep-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    assert_eq!(&subscriber.receive().await.payload[..], b"new");
    subscriber.expect_nothing().await;
}

/// MQTT-3.3.1-6 and MQTT-3.3.1-7: a retained PUBLISH with an empty payload is
/// delivered as usual but removes the retained message, and is not kept itself.
#[tokio::test]
async fn mqtt_3_3_1_6_empty_retained_payload_clears_the_retained_message() {
    let broker = shared();
    let topic = unique("clear/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("clear-pub")).await;
    retain(&mut publisher, 1, &topic, b"soon gone").await;
    let mut live = RawClient::v5(broker.addr(), &unique("clear-live")).await;
    live.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    assert_eq!(&live.receive().await.payload[..], b"soon gone");

    retain(&mut publisher, 2, &topic, b"").await;
    let cleared = live.receive().await;
    assert!(
        cleared.payload.is_empty(),
        "the empty message is delivered as usual"
    );

    let mut late = RawClient::v5(broker.addr(), &unique("clear-late")).await;
    late.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    late.expect_nothing().await;
}

/// MQTT-3.3.1-12 (3.1.1: MQTT-3.3.1-9): a retained message forwarded to an
/// existing subscription (Retain As Published 0) has RETAIN 0.
#[tokio::test]
async fn mqtt_3_3_1_12_retain_flag_is_0_on_messages_to_existing_subscriptions() {
    let broker = shared();
    let topic = unique("rap0/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rap0-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut subscriber4 = RawClient::v311(broker.addr(), &unique("rap0-sub4")).await;
    subscriber4.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("rap0-pub")).await;
    retain(&mut publisher, 1, &topic, b"live").await;
    assert!(!subscriber.receive().await.retain);
    assert!(!subscriber4.receive().await.retain);
    // Clean up the shared broker's retained store.
    retain(&mut publisher, 2, &topic, b"").await;
}

/// MQTT-3.3.1-13: with Retain As Published 1 a forwarded message keeps the
/// RETAIN flag it was published with.
#[tokio::test]
async fn mqtt_3_3_1_13_retain_as_published_keeps_the_retain_flag() {
    let broker = shared();
    let topic = unique("rap1/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rap1-sub")).await;
    let options = SubscriptionOptions {
        retain_as_published: true,
        ..at(QoS::AtLeastOnce)
    };
    subscriber.subscribe(1, &topic, options).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("rap1-pub")).await;
    retain(&mut publisher, 1, &topic, b"retained").await;
    publisher.publish1(2, &topic, b"plain").await;
    let first = subscriber.receive().await;
    assert_eq!((&first.payload[..], first.retain), (&b"retained"[..], true));
    let second = subscriber.receive().await;
    assert_eq!((&second.payload[..], second.retain), (&b"plain"[..], false));
}

/// MQTT-3.3.1-9: Retain Handling 0 sends the retained messages on every
/// SUBSCRIBE, also when the subscription already exists.
#[tokio::test]
async fn mqtt_3_3_1_9_retain_handling_0_sends_retained_messages_on_every_subscribe() {
    let broker = shared();
    let topic = unique("rh0/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("rh0-pub")).await;
    retain(&mut publisher, 1, &topic, b"again").await;
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rh0-sub")).await;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribe,
        ..at(QoS::AtLeastOnce)
    };
    for id in 1..=2 {
        subscriber.subscribe(id, &topic, options).await;
        let message = subscriber.receive().await;
        assert_eq!(
            (&message.payload[..], message.retain),
            (&b"again"[..], true)
        );
    }
}

/// MQTT-3.3.1-10: Retain Handling 1 sends the retained messages only if the
/// subscription did not exist before.
#[tokio::test]
async fn mqtt_3_3_1_10_retain_handling_1_sends_retained_messages_only_to_a_new_subscription() {
    let broker = shared();
    let topic = unique("rh1/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("rh1-pub")).await;
    retain(&mut publisher, 1, &topic, b"once").await;
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rh1-sub")).await;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..at(QoS::AtLeastOnce)
    };
    subscriber.subscribe(1, &topic, options).await;
    assert_eq!(&subscriber.receive().await.payload[..], b"once");
    subscriber.subscribe(2, &topic, options).await;
    subscriber.expect_nothing().await;
}

/// MQTT-3.3.1-11: Retain Handling 2 sends no retained messages; later
/// messages are delivered as usual.
#[tokio::test]
async fn mqtt_3_3_1_11_retain_handling_2_sends_no_retained_messages() {
    let broker = shared();
    let topic = unique("rh2/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("rh2-pub")).await;
    retain(&mut publisher, 1, &topic, b"not for you").await;
    let mut subscriber = RawClient::v5(broker.addr(), &unique("rh2-sub")).await;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..at(QoS::AtLeastOnce)
    };
    subscriber.subscribe(1, &topic, options).await;
    publisher.publish1(2, &topic, b"live").await;
    let message = subscriber.receive().await;
    assert_eq!(
        &message.payload[..],
        b"live",
        "no retained message came first"
    );
    subscriber.expect_nothing().await;
}

/// A retained message is stored at the QoS it was published with and
/// delivered at the lower of that and the subscription's QoS.
#[tokio::test]
async fn retained_message_is_delivered_at_the_lower_of_its_qos_and_the_subscriptions() {
    let broker = shared();
    let topic = unique("retq/t");
    let mut publisher = RawClient::v5(broker.addr(), &unique("retq-pub")).await;
    publisher
        .publish_flow(retained(&topic, QoS::ExactlyOnce, 1, b"two"))
        .await;
    let mut q1 = RawClient::v5(broker.addr(), &unique("retq-q1")).await;
    q1.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    assert_eq!(q1.receive().await.qos, QoS::AtLeastOnce);
    let mut q2 = RawClient::v5(broker.addr(), &unique("retq-q2")).await;
    q2.subscribe_ok(1, &topic, QoS::ExactlyOnce).await;
    assert_eq!(q2.receive().await.qos, QoS::ExactlyOnce);
}
