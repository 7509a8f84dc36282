//! Will messages (sections 3.1.2.5 to 3.1.2.7, 3.1.3.2 to 3.1.3.4): published
//! when a connection ends abnormally, suppressed by a normal DISCONNECT,
//! delayed by the Will Delay Interval, retained on request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_codec::ProtocolVersion::{V3_1_1, V5};
use rookery_codec::{
    ByteString, Connect, Disconnect, Packet, PayloadFormat, QoS, ReasonCode, Will, WillProperties,
};
use rookery_testkit::{RawClient, Read, connect_packet, publish_packet};

use crate::clients::V5Client;
use crate::harness::{TIMEOUT, shared, unique};

/// `connect` with a will of `payload` on `topic` at QoS 1.
fn with_will(mut connect: Connect, topic: &str, payload: &[u8]) -> Connect {
    connect.will = Some(Will {
        topic: ByteString::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    connect
}

/// A subscriber to `topic` at QoS 1.
async fn watcher(addr: std::net::SocketAddr, topic: &str) -> RawClient {
    let mut watcher = RawClient::v5(addr, &unique("will-watch")).await;
    watcher.subscribe_ok(1, topic, QoS::AtLeastOnce).await;
    watcher
}

/// MQTT-3.1.2-8: the will is published when the network connection closes
/// without a DISCONNECT, at the will's QoS (here seen through rumqttc).
#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_connection_closes_without_disconnect() {
    let broker = shared();
    let topic = unique("will/t");
    let mut watcher = V5Client::connect(broker.addr(), &unique("will-watch")).await;
    watcher
        .subscribe(&topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let connect = with_will(connect_packet(V5, &unique("will")), &topic, b"gone");
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    let will = watcher.expect_publish().await;
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    assert!(!will.retain);
}

/// MQTT 3.1.1 MQTT-3.1.2-8: the same for a 3.1.1 client.
#[tokio::test]
async fn mqtt_3_1_1_will_is_published_when_the_connection_closes_without_disconnect() {
    let broker = shared();
    let topic = unique("will4/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let connect = with_will(connect_packet(V3_1_1, &unique("will4")), &topic, b"gone");
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    assert_eq!(&watcher.receive().await.payload[..], b"gone");
}

/// MQTT-3.1.2-10 (and MQTT-3.14.4-3): a normal DISCONNECT discards the will.
#[tokio::test]
async fn mqtt_3_1_2_10_normal_disconnect_discards_the_will() {
    let broker = shared();
    for version in [V3_1_1, V5] {
        let topic = unique("nowill/t");
        let mut watcher = watcher(broker.addr(), &topic).await;
        let connect = with_will(connect_packet(version, &unique("nowill")), &topic, b"never");
        let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
        client.send(Packet::Disconnect(Disconnect::default())).await;
        assert!(client.expect_closed().await.is_empty());
        // The broker has handled the DISCONNECT; a marker published now
        // must be the first and only message the watcher sees.
        let mut marker = RawClient::v5(broker.addr(), &unique("nowill-marker")).await;
        marker.publish1(1, &topic, b"marker").await;
        assert_eq!(
            &watcher.receive().await.payload[..],
            b"marker",
            "{version:?}"
        );
        watcher.expect_nothing().await;
    }
}

/// Section 3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will
/// Message) asks the server to publish the will.
#[tokio::test]
async fn mqtt_3_14_2_1_disconnect_with_reason_0x04_publishes_the_will() {
    let broker = shared();
    let topic = unique("will04/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let connect = with_will(connect_packet(V5, &unique("will04")), &topic, b"asked for");
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client
        .send(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage,
        )))
        .await;
    assert_eq!(&watcher.receive().await.payload[..], b"asked for");
}

/// MQTT-3.1.2-8: a connection the server closes for a protocol error also
/// publishes the will.
#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_server_closes_for_a_protocol_error() {
    let broker = shared();
    let topic = unique("willerr/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let connect = with_will(connect_packet(V5, &unique("willerr")), &topic, b"broken");
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    // A PUBLISH with both QoS bits set (MQTT-3.3.1-4): malformed.
    client
        .send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01])
        .await;
    client.expect_closed().await;
    assert_eq!(&watcher.receive().await.payload[..], b"broken");
}

/// MQTT-3.1.2-8 with MQTT-3.1.2-22: a keep alive timeout publishes the will.
#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_after_a_keep_alive_timeout() {
    let broker = shared();
    let topic = unique("willka/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(connect_packet(V5, &unique("willka")), &topic, b"silent");
    connect.keep_alive = 1;
    let (_client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    assert_eq!(&watcher.receive().await.payload[..], b"silent");
}

/// MQTT-3.1.2-17 (3.1.1: MQTT-3.1.2-17): a will with Will Retain 1 is
/// published as a retained message.
#[tokio::test]
async fn mqtt_3_1_2_17_will_retain_publishes_a_retained_will() {
    let broker = shared();
    let topic = unique("willret/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(connect_packet(V5, &unique("willret")), &topic, b"kept");
    if let Some(will) = connect.will.as_mut() {
        will.retain = true;
    }
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    watcher.receive().await;

    let mut late = RawClient::v5(broker.addr(), &unique("willret-late")).await;
    late.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let retained = late.receive().await;
    assert_eq!(
        (&retained.payload[..], retained.retain),
        (&b"kept"[..], true)
    );
    // Clean up the shared broker's retained store.
    let mut cleaner = RawClient::v5(broker.addr(), &unique("willret-clean")).await;
    let mut clear = publish_packet(&topic, QoS::AtLeastOnce, 1, b"");
    clear.retain = true;
    cleaner.publish_flow(clear).await;
}

/// Section 3.1.3.2: the will carries its properties (payload format, content
/// type, response topic, correlation data, user properties) to subscribers.
#[tokio::test]
async fn mqtt_3_1_3_2_will_properties_are_published_with_the_will() {
    let broker = shared();
    let topic = unique("willprop/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(connect_packet(V5, &unique("willprop")), &topic, b"{}");
    let message = &mut connect.will.as_mut().expect("a will").properties.message;
    message.payload_format_indicator = Some(PayloadFormat::Utf8);
    message.content_type = Some(ByteString::from("application/json"));
    message.response_topic = Some(ByteString::from("reply/here"));
    message.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
    message.user_properties = vec![
        (ByteString::from("k"), ByteString::from("1")),
        (ByteString::from("k"), ByteString::from("2")),
    ];
    let expected = message.clone();
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    let will = watcher.receive().await;
    assert_eq!(will.properties.message, expected);
}

/// MQTT-3.1.3-9: the will is published only after the Will Delay Interval.
#[tokio::test]
async fn mqtt_3_1_3_9_will_delay_interval_delays_the_will() {
    let broker = shared();
    let topic = unique("willdelay/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(connect_packet(V5, &unique("willdelay")), &topic, b"late");
    connect.properties.session_expiry_interval = Some(60);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(2);
    }
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    let closed = Instant::now();
    let will = watcher.receive().await;
    assert_eq!(&will.payload[..], b"late");
    let waited = closed.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "published after {waited:?}"
    );
}

/// MQTT-3.1.3-9: a client that reconnects within the Will Delay Interval
/// prevents its will from being published.
#[tokio::test]
async fn mqtt_3_1_3_9_reconnecting_within_the_will_delay_suppresses_the_will() {
    let broker = shared();
    let topic = unique("willback/t");
    let id = unique("willback");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(connect_packet(V5, &id), &topic, b"never");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(1);
    }
    let (client, _) = RawClient::connect_ok(broker.addr(), connect.clone()).await;
    client.close().await;
    connect.will = None;
    let (client, connack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(connack.session_present);
    // Past the delay, with a margin for a one-second timer.
    match watcher.read_checked(Duration::from_millis(2500)).await {
        Read::Nothing => {}
        other => panic!("expected no will, got {other:?}"),
    }
    client.disconnect().await;
}

/// Section 3.1.3.2.2: the will is published when the session ends, even if
/// the Will Delay Interval has not passed.
#[tokio::test]
async fn mqtt_3_1_3_9_will_is_published_when_the_session_expires_before_the_will_delay() {
    let broker = shared();
    let topic = unique("willexp/t");
    let mut watcher = watcher(broker.addr(), &topic).await;
    let mut connect = with_will(
        connect_packet(V5, &unique("willexp")),
        &topic,
        b"session over",
    );
    connect.properties.session_expiry_interval = Some(1);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(3600);
    }
    let (client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    client.close().await;
    match watcher.read_checked(TIMEOUT).await {
        Read::Packet(Packet::Publish(will)) => assert_eq!(&will.payload[..], b"session over"),
        other => panic!("expected the will when the session expired, got {other:?}"),
    }
}
