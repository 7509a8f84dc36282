//! Rookery's own promises beyond the spec: the defaults of its limits (issue
//! 4: in-flight window 32, queue 1000 dropping the newest, topic levels 128,
//! and the CONNACK values of `rookery_broker::config::Limits`), its metrics
//! endpoint, and `$SYS` topics in Mosquitto's style (which Mosquitto itself
//! passes, so that test runs against both).

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU32};

use rookery_codec::ProtocolVersion::V5;
use rookery_codec::{Packet, QoS};
use rookery_testkit::{RawClient, Read, connect_packet, persistent_v5, publish_packet};

use crate::harness::{Broker, QUIET, TIMEOUT, limited, shared, skip_unless_rookery, unique};

/// Rookery announces its default limits in CONNACK, and every capability
/// property explicitly (absent would also mean "available" to a client).
#[tokio::test]
async fn rookery_connack_announces_its_default_limits_and_capabilities() {
    if skip_unless_rookery("Rookery's default limits") {
        return;
    }
    let broker = shared();
    let (_client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V5, &unique("defaults"))).await;
    let p = connack.properties;
    assert_eq!(p.receive_maximum, NonZeroU16::new(1024), "{p:?}");
    assert_eq!(p.topic_alias_maximum, Some(64), "{p:?}");
    assert_eq!(p.maximum_packet_size, NonZeroU32::new(1024 * 1024), "{p:?}");
    // MQTT-3.2.2-9: Maximum QoS is sent only below 2.
    assert_eq!(p.maximum_qos, None, "{p:?}");
    assert_eq!(p.retain_available, Some(true), "{p:?}");
    assert_eq!(p.wildcard_subscription_available, Some(true), "{p:?}");
    assert_eq!(p.shared_subscription_available, Some(true), "{p:?}");
    assert_eq!(p.subscription_identifiers_available, Some(true), "{p:?}");
}

/// At most 32 QoS 1 messages are in flight to one session by default, even
/// when the client's Receive Maximum allows more; each PUBACK lets one more go.
#[tokio::test]
async fn rookery_in_flight_window_defaults_to_32_messages() {
    if skip_unless_rookery("the default in-flight window") {
        return;
    }
    let broker = shared();
    let topic = unique("window/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("window-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("window-pub")).await;
    for i in 1..=40u16 {
        publisher.publish1(i, &topic, &i.to_be_bytes()).await;
    }
    let mut in_flight = Vec::new();
    for _ in 0..32 {
        in_flight.push(subscriber.expect_publish().await);
    }
    subscriber.expect_nothing().await;
    subscriber.ack(&in_flight[0]).await;
    let next = subscriber.expect_publish().await;
    assert_eq!(&next.payload[..], &33u16.to_be_bytes());
    subscriber.expect_nothing().await;
}

/// An offline session queues at most 1000 messages by default and drops the
/// newest beyond that: what it receives on reconnect is the oldest messages,
/// in order. (Whether the in-flight window of 32 counts on top of the queue
/// while offline is left open: 1000 or 1032 messages.)
#[tokio::test]
async fn rookery_offline_queue_defaults_to_1000_messages_dropping_the_newest() {
    if skip_unless_rookery("the default queue length and overflow policy") {
        return;
    }
    let broker = shared();
    let id = unique("queue");
    let topic = unique("queue/t");
    let (mut subscriber, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 600)).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    subscriber.disconnect().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("queue-pub")).await;
    const SENT: u16 = 1100;
    for i in 0..SENT {
        publisher
            .send(Packet::Publish(publish_packet(
                &topic,
                QoS::AtLeastOnce,
                i + 1,
                &i.to_be_bytes(),
            )))
            .await;
        if i % 100 == 99 {
            for _ in 0..100 {
                publisher.expect_puback().await;
            }
        }
    }

    let (mut subscriber, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&id, 600)).await;
    assert!(connack.session_present);
    let mut received = Vec::new();
    while let Read::Packet(packet) = subscriber.read_checked(QUIET).await {
        let Packet::Publish(message) = packet else {
            panic!("unexpected {packet:?}");
        };
        subscriber.ack(&message).await;
        received.push(u16::from_be_bytes([message.payload[0], message.payload[1]]));
    }
    let n = received.len();
    assert!(n == 1000 || n == 1032, "{n} messages kept");
    assert_eq!(
        received,
        (0..n as u16).collect::<Vec<_>>(),
        "the oldest, in order"
    );
}

/// A topic of more than 128 levels (the default maximum) is refused: not
/// delivered, and answered with an error PUBACK, a DISCONNECT or a close.
#[tokio::test]
async fn rookery_topic_with_more_than_128_levels_is_refused() {
    if skip_unless_rookery("the default maximum of topic levels") {
        return;
    }
    let broker = shared();
    let root = unique("deep");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("deep-sub")).await;
    subscriber
        .subscribe_ok(1, &format!("{root}/#"), QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("deep-pub")).await;
    let deep = format!("{root}{}", "/l".repeat(128));
    publisher
        .send(Packet::Publish(publish_packet(
            &deep,
            QoS::AtLeastOnce,
            1,
            b"too deep",
        )))
        .await;
    match publisher.read_checked(TIMEOUT).await {
        Read::Packet(Packet::PubAck(ack)) => assert!(ack.reason_code.is_error(), "{ack:?}"),
        Read::Packet(Packet::Disconnect(d)) => assert!(d.reason_code.is_error(), "{d:?}"),
        Read::Closed(_) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    subscriber.expect_nothing().await;
    // The limit is not off by one: 128 levels are fine.
    let mut publisher = RawClient::v5(broker.addr(), &unique("deep-pub")).await;
    let deepest = format!("{root}{}", "/l".repeat(127));
    publisher.publish1(1, &deepest, b"deep enough").await;
    assert_eq!(&subscriber.receive().await.payload[..], b"deep enough");
}

/// The Prometheus endpoint counts what clients did: connections, messages
/// received and sent (not `$SYS`), bytes.
#[tokio::test]
async fn rookery_metrics_endpoint_counts_connections_messages_and_bytes() {
    if skip_unless_rookery("the metrics endpoint") {
        return;
    }
    // A broker of its own, so that the counts are this test's alone.
    let broker = Broker::start();
    let topic = unique("metrics/t");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("metrics-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("metrics-pub")).await;
    for id in 1..=3 {
        publisher.publish1(id, &topic, b"counted").await;
        subscriber.receive().await;
    }
    assert_eq!(broker.metric("rookery_messages_received_total").await, 3.0);
    assert_eq!(broker.metric("rookery_messages_sent_total").await, 3.0);
    assert_eq!(broker.metric("rookery_clients_connected").await, 2.0);
    assert_eq!(broker.metric("rookery_connections_total").await, 2.0);
    assert!(broker.metric("rookery_bytes_received_total").await > 0.0);
    assert!(broker.metric("rookery_bytes_sent_total").await > 0.0);
}

/// `$SYS` topics in Mosquitto's style report clients connected, messages and
/// bytes received and sent, uptime and version.
#[tokio::test]
async fn sys_topics_report_clients_messages_bytes_uptime_and_version() {
    let broker = limited();
    let mut client = RawClient::v5(broker.addr(), &unique("sys")).await;
    client
        .subscribe_ok(1, "$SYS/broker/#", QoS::AtMostOnce)
        .await;
    let wanted = [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/uptime",
        "$SYS/broker/version",
    ];
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // The first (retained) values may predate this client: wait for an
    // update that counts it.
    let counts_this_client = |seen: &BTreeMap<String, String>| {
        seen.get("$SYS/broker/clients/connected")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    };
    while !wanted.iter().all(|t| seen.contains_key(*t)) || !counts_this_client(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.read_checked(left).await {
            Read::Packet(Packet::Publish(message)) => {
                let payload = String::from_utf8_lossy(&message.payload).into_owned();
                seen.insert(message.topic.to_string(), payload);
            }
            other => panic!("waiting for {wanted:?}, got {other:?}; seen {seen:?}"),
        }
    }
    for counter in &wanted[1..5] {
        let value = seen[*counter].trim();
        assert!(value.parse::<u64>().is_ok(), "{counter} = {value:?}");
    }
    assert!(!seen["$SYS/broker/version"].is_empty());
}
