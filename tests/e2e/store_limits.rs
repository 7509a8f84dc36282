//! Limits that hold under attack in the store and the retained path (issue
//! 15): the retained-message cap, paced retained delivery, the persistent
//! session cap, 3.1.1 persistent session expiry, and backpressure on a flood
//! of retained publishes. Each test starts a broker of its own with the
//! limit it checks; all are Rookery's own promises.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rookery_codec::ProtocolVersion::{V3_1_1, V5};
use rookery_codec::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, clean_v5, persistent_v5, persistent_v311, publish_packet};

use crate::harness::{Broker, QUIET, Settings, TIMEOUT, skip_unless_rookery, unique};

/// A broker with these `[broker.limits]` lines besides the defaults.
fn broker_with(limits: &[&str]) -> Broker {
    Broker::start_with(Settings {
        rookery_limits: limits.iter().map(|line| (*line).to_owned()).collect(),
        ..Settings::default()
    })
}

fn retained(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
    let mut message = publish_packet(topic, qos, id, payload);
    message.retain = true;
    message
}

/// Publishes a retained message at QoS 1 and returns its PUBACK's reason.
async fn retain1(client: &mut RawClient, id: u16, topic: &str, payload: &[u8]) -> ReasonCode {
    client
        .send(Packet::Publish(retained(
            topic,
            QoS::AtLeastOnce,
            id,
            payload,
        )))
        .await;
    let ack = client.expect_puback().await;
    assert_eq!(ack.packet_id.get(), id);
    ack.reason_code
}

/// Every retained message a new subscription to `filter` receives, by topic
/// and payload.
async fn retained_now(broker: &Broker, filter: &str) -> Vec<(String, Vec<u8>)> {
    let mut subscriber = RawClient::v5(broker.addr(), &unique("look")).await;
    subscriber.subscribe_ok(1, filter, QoS::AtMostOnce).await;
    let mut found = Vec::new();
    while let Read::Packet(packet) = subscriber.read_checked(QUIET).await {
        let Packet::Publish(message) = packet else {
            panic!("unexpected {packet:?}");
        };
        found.push((message.topic.to_string(), message.payload.to_vec()));
    }
    found.sort();
    found
}

/// With `max_retained_messages = 3`, a 5.0 QoS 1 retained publish to a
/// fourth topic is refused with PUBACK 0x97 Quota exceeded and delivered to
/// nobody; replacing and clearing existing topics still work, and clearing
/// one makes room. A 3.1.1 publisher cannot be told: its message is
/// delivered, only not retained; so is a QoS 0 one.
#[tokio::test]
async fn the_retained_cap_refuses_a_new_topic_with_0x97_and_still_replaces_an_existing_one() {
    if skip_unless_rookery("the retained-message cap") {
        return;
    }
    let broker = broker_with(&["max_retained_messages = 3"]);
    let mut watcher = RawClient::v5(broker.addr(), "watcher").await;
    watcher.subscribe_ok(1, "cap/#", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), "cap-pub").await;
    for (id, topic) in [(1, "cap/1"), (2, "cap/2"), (3, "cap/3")] {
        assert_eq!(
            retain1(&mut publisher, id, topic, b"v1").await,
            ReasonCode::Success
        );
        assert_eq!(&watcher.receive().await.topic[..], topic);
    }

    assert_eq!(
        retain1(&mut publisher, 4, "cap/4", b"v1").await,
        ReasonCode::QuotaExceeded
    );
    watcher.expect_nothing().await;

    assert_eq!(
        retain1(&mut publisher, 5, "cap/1", b"v2").await,
        ReasonCode::Success
    );
    assert_eq!(&watcher.receive().await.payload[..], b"v2");
    assert_eq!(
        retain1(&mut publisher, 6, "cap/2", b"").await,
        ReasonCode::Success
    );
    watcher.receive().await;
    assert_eq!(
        retain1(&mut publisher, 7, "cap/4", b"v1").await,
        ReasonCode::Success
    );
    watcher.receive().await;

    // Full again: 3.1.1 and QoS 0 messages to new topics are delivered but
    // not retained.
    let mut old = RawClient::v311(broker.addr(), "cap-311").await;
    old.send(Packet::Publish(retained(
        "cap/5",
        QoS::AtLeastOnce,
        1,
        b"v1",
    )))
    .await;
    assert_eq!(old.expect_puback().await.reason_code, ReasonCode::Success);
    assert_eq!(&watcher.receive().await.topic[..], "cap/5");
    publisher
        .send(Packet::Publish(retained(
            "cap/6",
            QoS::AtMostOnce,
            0,
            b"v1",
        )))
        .await;
    assert_eq!(&watcher.receive().await.topic[..], "cap/6");
    publisher.ping().await;

    let kept = retained_now(&broker, "cap/#").await;
    assert_eq!(
        kept,
        vec![
            ("cap/1".to_owned(), b"v2".to_vec()),
            ("cap/3".to_owned(), b"v1".to_vec()),
            ("cap/4".to_owned(), b"v1".to_vec()),
        ]
    );
    assert!(broker.metric("rookery_retained_refused_total").await >= 3.0);
}

/// Sends `count` retained QoS 0 messages to `{root}/{n}` in large writes,
/// then one retained QoS 1 message whose PUBACK says every one before it
/// is stored (a session's store writes commit in order).
async fn flood_retained(
    client: &mut RawClient,
    version: ProtocolVersion,
    root: &str,
    count: usize,
) {
    let mut batch = BytesMut::new();
    for n in 0..count {
        let publish = retained(&format!("{root}/{n}"), QoS::AtMostOnce, 0, b"payload");
        Packet::Publish(publish)
            .encode(version, &mut batch)
            .unwrap();
        if batch.len() > 64 * 1024 {
            client.send_bytes(&batch.split()).await;
        }
    }
    client.send_bytes(&batch).await;
    let last = retained(&format!("{root}/last"), QoS::AtLeastOnce, 1, b"payload");
    client.send(Packet::Publish(last)).await;
    // The broker may still be working through what TCP buffered.
    client
        .read_until(Duration::from_secs(120), "PUBACK", |packet| {
            matches!(packet, Packet::PubAck(_)).then_some(())
        })
        .await
        .expect("the flood's last PUBACK");
}

/// Reads retained messages until `expected` distinct topics arrived,
/// acknowledging each as its QoS asks; panics if the flow stops first.
async fn receive_distinct(subscriber: &mut RawClient, expected: usize) -> HashSet<String> {
    let mut topics = HashSet::new();
    while topics.len() < expected {
        match subscriber.read_checked(TIMEOUT).await {
            Read::Packet(Packet::Publish(message)) => {
                assert!(message.retain, "sent because retained");
                subscriber.ack(&message).await;
                topics.insert(message.topic.to_string());
            }
            other => panic!("after {} of {expected} messages: {other:?}", topics.len()),
        }
    }
    topics
}

/// A `#` subscriber receives every one of 20,000 retained messages, 20 times
/// its queue of `max_queued_messages` (1000 by default): they are paced
/// through its queue, a page at a time, instead of cut off at its length
/// (MQTT-3.3.1-9: a new subscription receives the retained messages that
/// match it). At QoS 0 as fast as it reads, at QoS 1 at the pace of its
/// acknowledgements; and the SUBSCRIBE itself is answered at once.
#[tokio::test]
async fn a_hash_subscriber_receives_all_retained_messages_beyond_its_queue() {
    if skip_unless_rookery("retained delivery paced through the session's queue") {
        return;
    }
    const N: usize = 20_000;
    let broker = broker_with(&[]);
    let mut publisher = RawClient::v5(broker.addr(), "bulk-pub").await;
    flood_retained(&mut publisher, V5, "bulk", N).await;

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut subscriber = RawClient::v5(broker.addr(), &unique("bulk-sub")).await;
        let asked = Instant::now();
        subscriber.subscribe_ok(1, "#", qos).await;
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "SUBACK took {:?}",
            asked.elapsed()
        );
        let topics = receive_distinct(&mut subscriber, N + 1).await;
        assert!(topics.contains("bulk/0") && topics.contains(&format!("bulk/{}", N - 1)));
        subscriber.expect_nothing().await;
    }
    assert_eq!(
        broker
            .metric(r#"rookery_messages_dropped_total{reason="queue_full"}"#)
            .await,
        0.0,
        "nothing cut off at the queue's length"
    );
    assert!(
        broker
            .metric("rookery_retained_paged_subscriptions_total")
            .await
            >= 2.0
    );
}

/// A 3.1.1 persistent session (Clean Session 0) is kept while its client is
/// away for less than `persistent_client_expiration` and gone after it:
/// the next CONNECT gets Session Present 0 (MQTT-3.2.2-2 / 3.1.1
/// MQTT-3.2.2-3) and no subscription survives.
#[tokio::test]
async fn an_expired_3_1_1_persistent_session_is_gone_after_persistent_client_expiration() {
    if skip_unless_rookery("persistent_client_expiration") {
        return;
    }
    let broker = broker_with(&["persistent_client_expiration = 2"]);
    let (mut client, connack) = RawClient::connect_ok(broker.addr(), persistent_v311("old")).await;
    assert!(!connack.session_present);
    client.subscribe_ok(1, "old/t", QoS::AtLeastOnce).await;
    client.disconnect().await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (client, connack) = RawClient::connect_ok(broker.addr(), persistent_v311("old")).await;
    assert!(connack.session_present, "kept within the expiration");
    client.disconnect().await;

    // Two seconds, and the store's tick (every 500 ms) with room to spare.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (mut client, connack) = RawClient::connect_ok(broker.addr(), persistent_v311("old")).await;
    assert!(!connack.session_present, "expired");
    let mut publisher = RawClient::v311(broker.addr(), "old-pub").await;
    publisher.publish1(1, "old/t", b"after").await;
    client.expect_nothing().await;
    assert_eq!(
        broker
            .metric(r#"rookery_store_sessions_expired_total{protocol="3"}"#)
            .await,
        1.0
    );
}

/// With `max_persistent_sessions = 2`, a CONNECT that would create a third
/// persistent session is refused: CONNACK 0x97 Quota exceeded (5.0), 0x03
/// Server unavailable (3.1.1). A clean session still connects, and an
/// existing persistent session still resumes.
#[tokio::test]
async fn the_persistent_session_cap_refuses_the_next_new_one() {
    if skip_unless_rookery("the persistent-session cap") {
        return;
    }
    let broker = broker_with(&["max_persistent_sessions = 2"]);
    let (first, _) = RawClient::connect_ok(broker.addr(), persistent_v5("p1", 600)).await;
    let (second, _) = RawClient::connect_ok(broker.addr(), persistent_v311("p2")).await;

    let (_, refused) = RawClient::connect_with(broker.addr(), persistent_v5("p3", 600)).await;
    assert_eq!(refused.reason_code, ReasonCode::QuotaExceeded);
    assert!(!refused.session_present);
    let (_, refused) = RawClient::connect_with(broker.addr(), persistent_v311("p3")).await;
    assert_eq!(
        refused.reason_code,
        ReasonCode::ServerUnavailable,
        "0x03 in 3.1.1"
    );

    RawClient::connect_ok(broker.addr(), clean_v5("clean")).await;
    first.disconnect().await;
    second.close().await;
    let (_, resumed) = RawClient::connect_ok(broker.addr(), persistent_v5("p1", 600)).await;
    assert!(resumed.session_present);
    let (_, resumed) = RawClient::connect_ok(broker.addr(), persistent_v311("p2")).await;
    assert!(resumed.session_present);
    assert_eq!(
        broker
            .metric("rookery_persistent_sessions_refused_total")
            .await,
        2.0
    );
}

/// 200,000 QoS 0 retained publishes as fast as TCP takes them (to 200,000
/// topics, beyond `max_retained_messages`) are held back by the store's
/// pace instead of queued: the broker's resident memory stays within a
/// generous bound of where it started (the flood that found this took it
/// from 117 MB to 535 MB), and the cap keeps what is retained.
#[tokio::test]
async fn a_flood_of_qos0_retained_publishes_keeps_memory_bounded() {
    if skip_unless_rookery("backpressure on store writes") {
        return;
    }
    const FLOOD: usize = 200_000;
    const CAP: usize = 10_000;
    const BOUND: u64 = 100 * 1024 * 1024;
    let broker = broker_with(&[&format!("max_retained_messages = {CAP}")]);
    let before = broker.rss_bytes().expect("the broker's VmRSS");
    let mut publisher = RawClient::v311(broker.addr(), "flood").await;
    let flood = flood_retained(&mut publisher, V3_1_1, "flood", FLOOD);
    let peak = watch_peak_rss(&broker, flood).await;
    let grew = peak.saturating_sub(before);
    assert!(
        grew < BOUND,
        "resident memory grew by {} MB during the flood (from {} MB)",
        grew >> 20,
        before >> 20
    );
    let kept = retained_now(&broker, "flood/#").await;
    assert_eq!(kept.len(), CAP, "the cap holds what is retained");
    assert!(broker.metric("rookery_retained_refused_total").await > 0.0);
}

/// Runs `work` while sampling the broker's resident memory every 50 ms;
/// the peak seen.
async fn watch_peak_rss(broker: &Broker, work: impl Future<Output = ()>) -> u64 {
    let mut peak = broker.rss_bytes().unwrap_or(0);
    tokio::pin!(work);
    let mut every = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = &mut work => break,
            _ = every.tick() => peak = peak.max(broker.rss_bytes().unwrap_or(0)),
        }
    }
    peak.max(broker.rss_bytes().unwrap_or(0))
}
