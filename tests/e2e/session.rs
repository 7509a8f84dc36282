//! Session lifetime (section 4.1, 3.1.2.11.2, 3.14.2.2.2) and durability:
//! sessions, their queued messages, subscriptions and retained messages
//! survive `kill -9` and a restart; SIGTERM tells 5.0 clients with
//! DISCONNECT 0x8B.

use std::time::Duration;

use rookery_codec::ProtocolVersion::V3_1_1;
use rookery_codec::{Disconnect, Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, connect_packet, persistent_v5, publish_packet};

use crate::harness::{Broker, Settings, shared, skip_on_mosquitto, skip_unless_rookery, unique};

/// MQTT-3.1.2-23 (section 3.1.2.11.2): without a Session Expiry Interval (0)
/// the session ends when the connection closes.
#[tokio::test]
async fn mqtt_3_1_2_23_session_without_expiry_ends_with_the_connection() {
    let broker = shared();
    let id = unique("noexp");
    let mut connect = persistent_v5(&id, 0);
    connect.properties.session_expiry_interval = None;
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect.clone()).await;
    client
        .subscribe_ok(1, &unique("noexp/t"), QoS::AtLeastOnce)
        .await;
    client.disconnect().await;
    let (_client, connack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(!connack.session_present);
}

/// MQTT-3.1.2-23: the session is kept for the Session Expiry Interval after
/// the connection closes, and no longer.
#[tokio::test]
async fn mqtt_3_1_2_23_session_is_kept_for_its_expiry_interval_and_then_discarded() {
    let broker = shared();
    let id = unique("exp");
    let (mut client, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 1)).await;
    client
        .subscribe_ok(1, &unique("exp/t"), QoS::AtLeastOnce)
        .await;
    client.close().await;
    let (client, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 1)).await;
    assert!(connack.session_present, "reconnected within the interval");
    client.close().await;
    // One second of expiry, plus a margin for a one-second timer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_client, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 1)).await;
    assert!(!connack.session_present, "the session expired");
}

/// Section 3.14.2.2.2: a DISCONNECT may lower the Session Expiry Interval;
/// 0 ends the session with the connection.
#[tokio::test]
async fn mqtt_3_14_2_2_disconnect_with_session_expiry_0_ends_the_session() {
    let broker = shared();
    let id = unique("dexp");
    let (mut client, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    client
        .subscribe_ok(1, &unique("dexp/t"), QoS::AtLeastOnce)
        .await;
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(0);
    client.send(Packet::Disconnect(disconnect)).await;
    assert!(client.expect_closed().await.is_empty());
    let (_client, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(!connack.session_present);
}

/// Section 3.14.2.2.2: a DISCONNECT that sets a non-zero Session Expiry
/// Interval when CONNECT had 0 is a Protocol Error.
#[tokio::test]
async fn mqtt_3_14_2_2_disconnect_raising_session_expiry_from_0_is_a_protocol_error() {
    let broker = shared();
    let mut client = RawClient::v5(broker.addr(), &unique("raise")).await;
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(60);
    client.send(Packet::Disconnect(disconnect)).await;
    client
        .expect_closed_with(&[ReasonCode::ProtocolError])
        .await;
}

/// Persistent sessions survive `kill -9` of the broker: QoS 1 and QoS 2
/// messages queued for an offline session, and a message sent but not
/// acknowledged (resent with DUP 1), are delivered after a restart.
#[tokio::test]
async fn queued_and_unacknowledged_messages_survive_kill_9_and_restart() {
    let mut broker = Broker::start();
    let topic = "durable/queue";
    let (mut subscriber, _) =
        RawClient::connect_ok(broker.addr(), persistent_v5("durable-sub", 3600)).await;
    subscriber.subscribe_ok(1, topic, QoS::ExactlyOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), "durable-pub").await;
    publisher
        .publish_flow(publish_packet(topic, QoS::AtLeastOnce, 1, b"in flight"))
        .await;
    let in_flight = subscriber.expect_publish().await;
    assert_eq!(&in_flight.payload[..], b"in flight");
    subscriber.close().await;
    for (id, qos, payload) in [
        (2, QoS::AtLeastOnce, &b"queued 1"[..]),
        (3, QoS::ExactlyOnce, &b"queued 2"[..]),
        (4, QoS::AtLeastOnce, &b"queued 3"[..]),
    ] {
        // Acknowledged (PUBACK, PUBREC) means committed.
        publisher
            .publish_flow(publish_packet(topic, qos, id, payload))
            .await;
    }

    broker.kill9();
    broker.restart();

    let (mut subscriber, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5("durable-sub", 3600)).await;
    assert!(connack.session_present, "the session survived");
    // MQTT-4.4.0-1: the unacknowledged message first, as it was sent, then
    // the queue (in order per QoS, MQTT-4.6.0-6).
    let again = subscriber.receive().await;
    assert_eq!(&again.payload[..], b"in flight");
    assert!(again.dup, "a redelivery has DUP 1");
    assert_eq!(again.packet_id, in_flight.packet_id);
    let mut queued = Vec::new();
    for _ in 0..3 {
        let message = subscriber.receive().await;
        queued.push((
            String::from_utf8_lossy(&message.payload).into_owned(),
            message.qos,
        ));
    }
    queued.sort();
    assert_eq!(
        queued,
        vec![
            ("queued 1".to_owned(), QoS::AtLeastOnce),
            ("queued 2".to_owned(), QoS::ExactlyOnce),
            ("queued 3".to_owned(), QoS::AtLeastOnce),
        ]
    );
    subscriber.expect_nothing().await;
}

/// Subscriptions of persistent sessions and retained messages survive
/// `kill -9` and a restart.
#[tokio::test]
async fn subscriptions_and_retained_messages_survive_kill_9_and_restart() {
    let mut broker = Broker::start();
    let (mut subscriber, _) =
        RawClient::connect_ok(broker.addr(), persistent_v5("keep-sub", 3600)).await;
    subscriber
        .subscribe_ok(1, "keep/live", QoS::AtLeastOnce)
        .await;
    subscriber.close().await;
    let mut publisher = RawClient::v5(broker.addr(), "keep-pub").await;
    let mut retained = publish_packet("keep/retained", QoS::AtLeastOnce, 1, b"still here");
    retained.retain = true;
    publisher.publish_flow(retained).await;

    broker.kill9();
    broker.restart();

    let (mut subscriber, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5("keep-sub", 3600)).await;
    assert!(connack.session_present);
    let mut publisher = RawClient::v5(broker.addr(), "keep-pub").await;
    publisher.publish1(1, "keep/live", b"after restart").await;
    assert_eq!(&subscriber.receive().await.payload[..], b"after restart");

    let mut late = RawClient::v5(broker.addr(), "keep-late").await;
    late.subscribe_ok(1, "keep/retained", QoS::AtLeastOnce)
        .await;
    let message = late.receive().await;
    assert_eq!(
        (&message.payload[..], message.retain),
        (&b"still here"[..], true)
    );
}

/// SIGTERM shuts the broker down cleanly: a 5.0 client is told with
/// DISCONNECT 0x8B (Server shutting down), a 3.1.1 client's connection is
/// closed, and the process exits with success.
#[tokio::test]
async fn sigterm_sends_disconnect_0x8b_to_v5_clients_and_exits_cleanly() {
    // Mosquitto 2.0.11 closes 5.0 connections on SIGTERM without a DISCONNECT.
    if skip_on_mosquitto("it sends no DISCONNECT 0x8B on SIGTERM") {
        return;
    }
    let mut broker = Broker::start();
    let mut v5 = RawClient::v5(broker.addr(), "term-5").await;
    let mut v311 = RawClient::v311(broker.addr(), "term-4").await;
    let status = broker
        .sigterm()
        .expect("the broker exited within the timeout");
    v5.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    assert!(v311.expect_closed().await.is_empty());
    assert!(status.success(), "exit status {status}");
}

/// With `broker.server_reference` set, SIGTERM sends 5.0 clients
/// DISCONNECT 0x9C (Use another server) naming that server, so that they
/// reconnect there; a 3.1.1 client's connection is closed. The broker exits
/// 0 promptly (no client, no peer: nothing to wait for).
#[tokio::test]
async fn sigterm_sends_v5_clients_to_the_server_reference() {
    if skip_unless_rookery("broker.server_reference") {
        return;
    }
    let mut broker = Broker::start_with(Settings {
        extra_toml: Some("[broker]\nserver_reference = \"mqtt-b.example:1883\"\n".into()),
        ..Settings::default()
    });
    let mut v5 = RawClient::v5(broker.addr(), "ref-5").await;
    let mut v311 = RawClient::v311(broker.addr(), "ref-4").await;
    let started = std::time::Instant::now();
    let status = broker
        .sigterm()
        .expect("the broker exited within the timeout");
    let took = started.elapsed();
    let disconnect = v5.expect_disconnect(ReasonCode::UseAnotherServer).await;
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("mqtt-b.example:1883")
    );
    assert!(v311.expect_closed().await.is_empty());
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(3), "SIGTERM to exit: {took:?}");
}

/// After SIGTERM a restart on the same data directory resumes the persistent
/// sessions of 5.0 and 3.1.1 clients, with their subscriptions.
#[tokio::test]
async fn sigterm_and_restart_resume_persistent_sessions() {
    let mut broker = Broker::start();
    let (mut v5, _) = RawClient::connect_ok(broker.addr(), persistent_v5("resume-5", 3600)).await;
    v5.subscribe_ok(1, "resume/t", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V3_1_1, "resume-4");
    connect.clean_start = false;
    let (mut v311, _) = RawClient::connect_ok(broker.addr(), connect.clone()).await;
    v311.subscribe_ok(1, "resume/t", QoS::AtLeastOnce).await;
    broker
        .sigterm()
        .expect("the broker exited within the timeout");
    v5.expect_closed_with(&[ReasonCode::ServerShuttingDown])
        .await;
    v311.expect_closed().await;

    broker.restart();
    let (mut v5, connack) =
        RawClient::connect_ok(broker.addr(), persistent_v5("resume-5", 3600)).await;
    assert!(connack.session_present);
    let (mut v311, connack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(connack.session_present);
    let mut publisher = RawClient::v5(broker.addr(), "resume-pub").await;
    publisher.publish1(1, "resume/t", b"after restart").await;
    assert_eq!(&v5.receive().await.payload[..], b"after restart");
    assert_eq!(&v311.receive().await.payload[..], b"after restart");
}
