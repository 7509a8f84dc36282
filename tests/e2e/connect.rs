//! CONNECT and CONNACK (sections 3.1, 3.2): clean start and session present,
//! client identifiers, keep alive, session takeover, protocol versions.

use std::time::{Duration, Instant};

use rookery_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, at, connect_packet, persistent_v5, subscribe_packet};

use crate::clients::{V4Client, v4_options};
use crate::harness::{limited, shared, skip_on_mosquitto, unique};

/// Section 3.1.4: a client may send packets right after CONNECT without
/// waiting for CONNACK. A SUBSCRIBE that arrives in the same write as the
/// CONNECT (read together with it) is answered at once, not when the
/// client next sends something.
#[tokio::test]
async fn a_subscribe_sent_in_the_same_write_as_connect_is_answered() {
    let broker = shared();
    let topic = unique("pipelined/t");
    let mut bytes = bytes::BytesMut::new();
    for packet in [
        Packet::Connect(Box::new(connect_packet(V5, &unique("pipelined")))),
        Packet::Subscribe(subscribe_packet(
            1,
            &[(topic.as_str(), at(QoS::AtLeastOnce))],
        )),
    ] {
        packet.encode(V5, &mut bytes).expect("encode");
    }
    let mut client = RawClient::open(broker.addr(), V5).await;
    client.send_bytes(&bytes).await;
    assert_eq!(
        client.expect_connack().await.reason_code,
        ReasonCode::Success
    );
    match client.expect().await {
        Packet::SubAck(suback) => {
            assert_eq!(suback.reason_codes, vec![ReasonCode::GrantedQoS1]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// MQTT-3.2.2-2, MQTT-3.2.2-3: Session Present is 0 without a stored session
/// and 1 when a session is resumed; MQTT-3.1.2-4: Clean Start 1 discards it.
#[tokio::test]
async fn mqtt_3_2_2_3_session_present_is_1_only_when_a_stored_session_is_resumed() {
    let broker = shared();
    let id = unique("sp");
    let topic = unique("sp/t");

    let (mut client, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(!connack.session_present, "no session existed yet");
    client.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    client.disconnect().await;

    let (client, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(connack.session_present, "the session was kept for 60 s");
    client.disconnect().await;

    let mut clean = persistent_v5(&id, 60);
    clean.clean_start = true;
    let (mut client, connack) = RawClient::connect_ok(broker.addr(), clean).await;
    assert!(!connack.session_present, "clean start discards the session");
    // The discarded session's subscription is gone.
    let mut publisher = RawClient::v5(broker.addr(), &unique("sp-pub")).await;
    publisher.publish1(1, &topic, b"after clean start").await;
    client.expect_nothing().await;
}

/// MQTT 3.1.1, MQTT-3.2.2-1 to MQTT-3.2.2-3: the same rules for Clean Session,
/// seen through rumqttc.
#[tokio::test]
async fn mqtt_3_1_1_clean_session_0_resumes_the_session_and_1_discards_it() {
    let broker = shared();
    let id = unique("cs4");
    let mut options = v4_options(broker.addr(), &id);
    options.set_clean_session(false);

    let (mut client, connack) = V4Client::connect_with(options.clone()).await;
    assert!(!connack.session_present);
    client
        .subscribe(&unique("cs4/t"), rumqttc::QoS::AtLeastOnce)
        .await;
    client.disconnect().await;

    let (client, connack) = V4Client::connect_with(options.clone()).await;
    assert!(connack.session_present);
    client.disconnect().await;

    options.set_clean_session(true);
    let (client, connack) = V4Client::connect_with(options).await;
    assert!(!connack.session_present);
    client.disconnect().await;
}

/// MQTT-3.2.2-16: a 5.0 client with an empty client identifier is given one
/// in CONNACK, and MQTT-3.1.3-6: it is unique.
#[tokio::test]
async fn mqtt_3_2_2_16_empty_client_id_is_assigned_a_unique_identifier() {
    let broker = shared();
    let (mut first, connack) = RawClient::connect_ok(broker.addr(), connect_packet(V5, "")).await;
    let first_id = connack
        .properties
        .assigned_client_identifier
        .expect("CONNACK carries an Assigned Client Identifier");
    assert!(!first_id.is_empty());
    let (_second, connack) = RawClient::connect_ok(broker.addr(), connect_packet(V5, "")).await;
    let second_id = connack
        .properties
        .assigned_client_identifier
        .expect("CONNACK carries an Assigned Client Identifier");
    assert_ne!(first_id, second_id);
    // The second client did not take over the first one's session.
    first.ping().await;
}

/// MQTT 3.1.1, MQTT-3.1.3-6: a zero-byte client identifier with Clean Session
/// 1 is accepted, and each such client is a separate client.
#[tokio::test]
async fn mqtt_3_1_1_empty_client_id_with_clean_session_is_accepted() {
    let broker = shared();
    let mut first = RawClient::v311(broker.addr(), "").await;
    let mut second = RawClient::v311(broker.addr(), "").await;
    first.ping().await;
    second.ping().await;
}

/// MQTT 3.1.1, MQTT-3.1.3-8: a zero-byte client identifier with Clean Session
/// 0 is refused with return code 0x02 (identifier rejected) and closed.
#[tokio::test]
async fn mqtt_3_1_1_empty_client_id_without_clean_session_is_rejected_with_0x02() {
    let broker = shared();
    let mut connect = connect_packet(V3_1_1, "");
    connect.clean_start = false;
    let (mut client, connack) = RawClient::connect_with(broker.addr(), connect).await;
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!connack.session_present);
    assert!(client.expect_closed().await.is_empty());
}

/// MQTT-3.1.0-1: the first packet from a client must be CONNECT; anything
/// else closes the connection.
#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_other_than_connect_closes_the_connection() {
    let broker = shared();
    let mut client = RawClient::open(broker.addr(), V5).await;
    client.send(Packet::PingReq).await;
    assert!(client.expect_closed().await.is_empty());
}

/// MQTT-3.1.0-2: a second CONNECT is a Protocol Error that closes the connection.
#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let broker = shared();
    let id = unique("twice");
    let mut client = RawClient::v5(broker.addr(), &id).await;
    client
        .send(Packet::Connect(Box::new(connect_packet(V5, &id))))
        .await;
    client
        .expect_closed_with(&[ReasonCode::ProtocolError])
        .await;
}

/// MQTT 3.1.1 MQTT-3.1.2-2 (and 5.0 section 3.1.2.2): an unsupported protocol
/// level is answered with CONNACK 0x01 (0x84 in 5.0 form) and the connection
/// is closed.
#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_protocol_level_is_refused() {
    let broker = shared();
    let mut client = RawClient::open(broker.addr(), V3_1_1).await;
    // A 3.1.1-shaped CONNECT with protocol level 6.
    client
        .send_bytes(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'x',
        ])
        .await;
    let bytes = client.read_until_closed().await;
    let refusals: [&[u8]; 2] = [&[0x20, 0x02, 0x00, 0x01], &[0x20, 0x03, 0x00, 0x84, 0x00]];
    assert!(
        refusals.contains(&bytes.as_slice()),
        "expected CONNACK 0x01 or 0x84 and a close, got {bytes:02x?}"
    );
}

/// MQTT-3.1.2-3: the reserved flag of CONNECT must be 0, or the packet is
/// malformed and the connection closed.
#[tokio::test]
async fn mqtt_3_1_2_3_reserved_connect_flag_closes_the_connection() {
    let broker = shared();
    let mut client = RawClient::open(broker.addr(), V3_1_1).await;
    // A 3.1.1 CONNECT with flags 0x03: clean session and the reserved bit.
    client
        .send_bytes(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'x',
        ])
        .await;
    // Nothing, or a refusing CONNACK: never an accepted connection.
    for packet in client.expect_closed().await {
        match packet {
            Packet::ConnAck(connack) => assert!(connack.reason_code.is_error(), "{connack:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// MQTT-3.1.2-22 (3.1.1: MQTT-3.1.2-24): without any packet for one and a
/// half times the keep alive, the server closes the connection.
#[tokio::test]
async fn mqtt_3_1_2_22_silence_for_one_and_a_half_keep_alives_closes_the_connection() {
    let broker = shared();
    let mut connect = connect_packet(V5, &unique("ka"));
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    let start = Instant::now();
    client
        .expect_closed_with(&[ReasonCode::KeepAliveTimeout])
        .await;
    let waited = start.elapsed();
    // 1.5 s plus a margin for timer granularity; never before one keep alive.
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(3500),
        "closed only after {waited:?}"
    );
}

/// MQTT-3.1.2-20: a client that sends a packet (here PINGREQ) within each
/// keep alive stays connected, and MQTT-3.12.4-1: each PINGREQ gets a PINGRESP.
#[tokio::test]
async fn mqtt_3_12_4_1_pings_within_the_keep_alive_keep_the_connection_open() {
    let broker = shared();
    let mut connect = connect_packet(V5, &unique("ping"));
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.ping().await;
    }
}

/// MQTT-3.2.2-21: a keep alive above the server's maximum is replaced by the
/// Server Keep Alive in CONNACK.
#[tokio::test]
async fn mqtt_3_2_2_21_keep_alive_above_the_maximum_is_answered_with_server_keep_alive() {
    let broker = limited();
    let mut connect = connect_packet(V5, &unique("ska"));
    connect.keep_alive = 60;
    let (_client, connack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert_eq!(connack.properties.server_keep_alive, Some(20));
}

/// MQTT-3.1.4-3: a second connection with the same client identifier takes
/// the session over; the old connection gets DISCONNECT 0x8E (Session taken
/// over) and is closed.
#[tokio::test]
async fn mqtt_3_1_4_3_session_takeover_sends_disconnect_0x8e_to_the_old_connection() {
    // Mosquitto 2.0.11 closes the old connection without the DISCONNECT.
    if skip_on_mosquitto("it closes a taken-over 5.0 connection without DISCONNECT 0x8E") {
        return;
    }
    let broker = shared();
    let id = unique("take");
    let mut old = RawClient::v5(broker.addr(), &id).await;
    let _new = RawClient::v5(broker.addr(), &id).await;
    old.expect_disconnect(ReasonCode::SessionTakenOver).await;
}

/// MQTT-3.1.4-3 with MQTT-3.2.2-3: the connection that takes a session over
/// resumes it (Session Present 1, its subscriptions), and the old one is closed.
#[tokio::test]
async fn mqtt_3_1_4_3_session_takeover_hands_the_session_to_the_new_connection() {
    let broker = shared();
    let id = unique("takeover");
    let topic = unique("takeover/t");
    let (mut old, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    old.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;

    let (mut new, connack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(
        connack.session_present,
        "the new connection resumes the session"
    );
    old.expect_closed_with(&[ReasonCode::SessionTakenOver])
        .await;

    let mut publisher = RawClient::v5(broker.addr(), &unique("take-pub")).await;
    publisher
        .publish1(1, &topic, b"to the new connection")
        .await;
    let message = new.receive().await;
    assert_eq!(&message.payload[..], b"to the new connection");
}

/// MQTT 3.1.1, MQTT-3.1.4-2: the old connection of a taken-over client is
/// closed (3.1.1 has no server DISCONNECT).
#[tokio::test]
async fn mqtt_3_1_1_session_takeover_closes_the_old_connection() {
    let broker = shared();
    let id = unique("take4");
    let mut old = RawClient::v311(broker.addr(), &id).await;
    let mut new = RawClient::v311(broker.addr(), &id).await;
    assert!(old.expect_closed().await.is_empty());
    new.ping().await;
}

/// MQTT 3.1 (protocol name `MQIsdp`, level 3) clients connect and exchange messages.
#[tokio::test]
async fn mqtt_3_1_mqisdp_client_connects_subscribes_and_publishes() {
    let broker = shared();
    let id = unique("v31");
    let topic = unique("v31/t");
    let (mut client, connack) =
        RawClient::connect_ok(broker.addr(), connect_packet(V3_1, &id)).await;
    assert!(!connack.session_present);
    client.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) =
        RawClient::connect_ok(broker.addr(), connect_packet(V3_1, &unique("v31-pub"))).await;
    publisher.publish1(1, &topic, b"from 3.1").await;
    let message = client.receive().await;
    assert_eq!(&message.payload[..], b"from 3.1");
    assert_eq!(message.qos, QoS::AtLeastOnce);
    client.disconnect().await;
}

/// The 1.5x keep alive rule closes a 3.1.1 connection too (MQTT 3.1.1 MQTT-3.1.2-24),
/// without a DISCONNECT, which 3.1.1 servers never send.
#[tokio::test]
async fn mqtt_3_1_1_keep_alive_timeout_closes_without_disconnect() {
    let broker = shared();
    let mut connect = connect_packet(V3_1_1, &unique("ka4"));
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(client.expect_closed().await.is_empty());
}
