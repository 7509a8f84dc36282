//! Backpressure (Rookery's own promise, issue 6): a publisher whose messages
//! meet a nearly full session queue is paused (not read) instead of having
//! acknowledged QoS 1 messages dropped, and a subscriber that does not drain
//! at all stops holding publishers back after `publisher_pause_ms`.

use std::time::Duration;

use rookery_codec::{Ack, Packet, QoS};
use rookery_testkit::{RawClient, Read, persistent_v5, publish_packet};

use crate::harness::{Broker, QUIET, Settings, TIMEOUT, skip_unless_rookery, unique};

const MESSAGES: u16 = 100;
/// With 10 queued and 32 in flight, a subscriber that reads nothing holds
/// 42 of the 100 messages; without backpressure the other 58 are dropped.
const QUEUED: usize = 10;
const DROPPED_QUEUE_FULL: &str = r#"rookery_messages_dropped_total{reason="queue_full"}"#;

/// A broker with a small session queue and a publisher pause of `pause_ms`.
fn broker_pausing_for(pause_ms: u64) -> Broker {
    Broker::start_with(Settings {
        max_queued_messages: Some(QUEUED),
        publisher_pause_ms: Some(pause_ms),
        ..Settings::default()
    })
}

async fn publish_all(publisher: &mut RawClient, topic: &str) {
    for id in 1..=MESSAGES {
        let message = publish_packet(topic, QoS::AtLeastOnce, id, &id.to_be_bytes());
        publisher.send(Packet::Publish(message)).await;
    }
}

/// PUBACKs arriving within `wait` of each other, by packet id order.
async fn pubacks(publisher: &mut RawClient, wait: Duration) -> Vec<u16> {
    let mut acked = Vec::new();
    loop {
        match publisher.read_checked(wait).await {
            Read::Packet(Packet::PubAck(Ack { packet_id, .. })) => acked.push(packet_id.get()),
            Read::Nothing => return acked,
            other => panic!("publisher: expected PUBACK, got {other:?}"),
        }
    }
}

/// Reads and acknowledges `MESSAGES` messages and checks they are 1..=100 in
/// order (MQTT-4.6.0-6: ordered per topic).
async fn receive_all_in_order(subscriber: &mut RawClient) {
    for expected in 1..=MESSAGES {
        let message = subscriber.receive().await;
        assert_eq!(
            &message.payload[..],
            &expected.to_be_bytes(),
            "message {expected} missing or out of order"
        );
    }
}

#[tokio::test]
async fn rookery_pauses_a_qos1_publisher_for_a_slow_subscriber_instead_of_dropping() {
    slow_subscriber_loses_nothing(false).await;
}

/// The same for a persistent session, whose messages wait in the store.
#[tokio::test]
async fn rookery_pauses_a_qos1_publisher_for_a_slow_persistent_subscriber() {
    slow_subscriber_loses_nothing(true).await;
}

async fn slow_subscriber_loses_nothing(persistent: bool) {
    if skip_unless_rookery("publisher backpressure") {
        return;
    }
    // A pause longer than the test may take: only the subscriber's draining
    // can let the publisher go on, not the pause running out.
    let broker = broker_pausing_for(60_000);
    let topic = unique("backpressure/slow");
    let subscriber_id = unique("slow-sub");
    let mut subscriber = if persistent {
        RawClient::connect_ok(broker.addr(), persistent_v5(&subscriber_id, 600))
            .await
            .0
    } else {
        RawClient::v5(broker.addr(), &subscriber_id).await
    };
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("fast-pub")).await;
    publish_all(&mut publisher, &topic).await;

    // The subscriber reads nothing for a while: the publisher is paused
    // with most of its messages unacknowledged.
    let early = pubacks(&mut publisher, Duration::from_secs(1)).await;
    assert!(
        early.len() < usize::from(MESSAGES),
        "all {MESSAGES} acknowledged while the subscriber read nothing: no backpressure"
    );

    receive_all_in_order(&mut subscriber).await;
    let late = pubacks(&mut publisher, QUIET).await;
    let mut acked: Vec<u16> = early.into_iter().chain(late).collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=MESSAGES).collect::<Vec<_>>());
    subscriber.expect_nothing().await;

    assert_eq!(broker.metric(DROPPED_QUEUE_FULL).await, 0.0);
    assert!(broker.metric("rookery_publisher_pauses_total").await >= 1.0);
}

#[tokio::test]
async fn rookery_stops_pausing_for_a_subscriber_that_does_not_drain() {
    if skip_unless_rookery("publisher backpressure") {
        return;
    }
    let broker = broker_pausing_for(300);
    let topic = unique("backpressure/stuck");
    let mut stuck = RawClient::v5(broker.addr(), &unique("stuck-sub")).await;
    stuck.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut reader = RawClient::v5(broker.addr(), &unique("reading-sub")).await;
    reader.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("pub")).await;
    publish_all(&mut publisher, &topic).await;

    // The subscriber that reads gets everything although the other one
    // never reads: after one pause the stuck session's overflow is dropped.
    tokio::time::timeout(TIMEOUT, receive_all_in_order(&mut reader))
        .await
        .expect("the reading subscriber was held back by the stuck one");
    let mut acked = pubacks(&mut publisher, QUIET).await;
    acked.sort_unstable();
    assert_eq!(acked, (1..=MESSAGES).collect::<Vec<_>>());

    assert!(broker.metric("rookery_sessions_stalled_total").await >= 1.0);
    // What the stuck subscriber was given is still delivered, in order, and
    // everything else was dropped for it, counted.
    let mut kept = Vec::new();
    while let Read::Packet(Packet::Publish(message)) = stuck.read_checked(QUIET).await {
        stuck.ack(&message).await;
        kept.push(u16::from_be_bytes([message.payload[0], message.payload[1]]));
    }
    assert_eq!(kept.first(), Some(&1));
    assert!(
        kept.windows(2).all(|w| w[0] < w[1]),
        "out of order: {kept:?}"
    );
    let dropped = broker.metric(DROPPED_QUEUE_FULL).await;
    assert_eq!(dropped as usize, usize::from(MESSAGES) - kept.len());
}

/// A client that subscribes to its own messages and outpaces itself is not
/// paused for its own session: only its acknowledgements, queued behind its
/// publishes, could drain it, so it would wait out the whole pause. Its
/// overflow is dropped by the queue policy instead (counted), and what it
/// gets comes in order.
#[tokio::test]
async fn rookery_never_pauses_a_client_for_its_own_session() {
    if skip_unless_rookery("publisher backpressure") {
        return;
    }
    let broker = broker_pausing_for(60_000);
    let topic = unique("backpressure/self");
    let mut client = RawClient::v5(broker.addr(), &unique("echo")).await;
    client.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    publish_all(&mut client, &topic).await;

    let (mut delivered, mut acked) = (Vec::new(), 0);
    loop {
        // Everything is acknowledged well within the 60 s pause.
        let wait = if acked < MESSAGES { TIMEOUT } else { QUIET };
        match client.read_checked(wait).await {
            Read::Packet(Packet::Publish(message)) => {
                client.ack(&message).await;
                delivered.push(u16::from_be_bytes([message.payload[0], message.payload[1]]));
            }
            Read::Packet(Packet::PubAck(_)) => acked += 1,
            Read::Nothing if acked == MESSAGES => break,
            other => panic!(
                "after {} deliveries and {acked} PUBACKs: {other:?}",
                delivered.len()
            ),
        }
    }
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "out of order: {delivered:?}"
    );
    let dropped = broker.metric(DROPPED_QUEUE_FULL).await;
    assert_eq!(dropped as usize, usize::from(MESSAGES) - delivered.len());
}
