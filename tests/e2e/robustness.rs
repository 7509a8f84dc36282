//! Malformed and hostile input (sections 1.5, 2.1, 2.2, 4.13): the offending
//! connection is closed, with DISCONNECT and the right reason code where 5.0
//! allows it, and no other client notices.

use rookery_codec::ProtocolVersion::{V3_1_1, V5};
use rookery_codec::{ProtocolVersion, QoS, ReasonCode};
use rookery_testkit::RawClient;

use crate::harness::{Shared, shared, skip_on_mosquitto, unique};

/// A subscriber and a publisher on their own topic, to check that the
/// broker still serves others after a bad client.
struct Bystanders {
    topic: String,
    subscriber: RawClient,
    publisher: RawClient,
}

impl Bystanders {
    async fn new(broker: &Shared) -> Bystanders {
        let topic = unique("bystander/t");
        let mut subscriber = RawClient::v5(broker.addr(), &unique("by-sub")).await;
        subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
        let publisher = RawClient::v311(broker.addr(), &unique("by-pub")).await;
        Bystanders {
            topic,
            subscriber,
            publisher,
        }
    }

    /// Checks that a message still goes from the publisher to the subscriber.
    async fn still_served(&mut self, id: u16) {
        let payload = id.to_be_bytes();
        self.publisher.publish1(id, &self.topic, &payload).await;
        assert_eq!(&self.subscriber.receive().await.payload[..], &payload);
    }
}

/// Connects a `version` client, sends `bytes`, and checks that the broker
/// closes that connection (after a DISCONNECT with one of `reasons` in 5.0,
/// or nothing) while the bystanders are still served, and that new clients
/// can still connect.
async fn closes_only_the_offender(bytes: &[u8], version: ProtocolVersion, reasons: &[ReasonCode]) {
    let broker = shared();
    let mut bystanders = Bystanders::new(&broker).await;
    bystanders.still_served(1).await;
    let mut offender = match version {
        V5 => RawClient::v5(broker.addr(), &unique("bad")).await,
        _ => RawClient::v311(broker.addr(), &unique("bad")).await,
    };
    offender.send_bytes(bytes).await;
    offender.expect_closed_with(reasons).await;
    bystanders.still_served(2).await;
    let mut newcomer = RawClient::v5(broker.addr(), &unique("newcomer")).await;
    newcomer.ping().await;
}

/// MQTT-3.3.1-4: a PUBLISH with both QoS bits set is a Malformed Packet.
#[tokio::test]
async fn mqtt_3_3_1_4_publish_with_qos_3_is_malformed() {
    let publish_qos3 = [0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01];
    closes_only_the_offender(&publish_qos3, V5, &[ReasonCode::MalformedPacket]).await;
    closes_only_the_offender(&publish_qos3, V3_1_1, &[]).await;
}

/// MQTT-2.1.3-1: reserved fixed header flags that are not as specified (here
/// SUBSCRIBE with flags 0000 instead of 0010) make a Malformed Packet.
#[tokio::test]
async fn mqtt_2_1_3_1_wrong_fixed_header_flags_are_malformed() {
    let subscribe_flags_0 = [0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x00];
    closes_only_the_offender(&subscribe_flags_0, V5, &[ReasonCode::MalformedPacket]).await;
}

/// Section 2.1.2: packet type 0 is reserved; receiving it closes the connection.
#[tokio::test]
async fn mqtt_2_1_2_reserved_packet_type_0_closes_the_connection() {
    closes_only_the_offender(
        &[0x00, 0x00],
        V5,
        &[ReasonCode::MalformedPacket, ReasonCode::ProtocolError],
    )
    .await;
}

/// Section 1.5.5: a Remaining Length of more than four bytes is malformed.
#[tokio::test]
async fn mqtt_1_5_5_remaining_length_of_five_bytes_is_malformed() {
    closes_only_the_offender(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        V5,
        &[ReasonCode::MalformedPacket],
    )
    .await;
}

/// MQTT-1.5.4-1: a topic that is not well-formed UTF-8 is malformed.
#[tokio::test]
async fn mqtt_1_5_4_1_ill_formed_utf8_topic_is_malformed() {
    let publish_bad_utf8 = [0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00];
    closes_only_the_offender(&publish_bad_utf8, V5, &[ReasonCode::MalformedPacket]).await;
}

/// MQTT-1.5.4-2: a topic containing U+0000 is malformed.
#[tokio::test]
async fn mqtt_1_5_4_2_topic_with_a_null_character_is_malformed() {
    let publish_null = [0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00];
    closes_only_the_offender(&publish_null, V5, &[ReasonCode::MalformedPacket]).await;
}

/// MQTT-3.3.2-2: a topic name in PUBLISH must not contain wildcards.
#[tokio::test]
async fn mqtt_3_3_2_2_publish_to_a_wildcard_topic_closes_the_connection() {
    let publish_wildcard = [0x30, 0x05, 0x00, 0x02, b'a', b'+', 0x00];
    closes_only_the_offender(
        &publish_wildcard,
        V5,
        &[
            ReasonCode::MalformedPacket,
            ReasonCode::ProtocolError,
            ReasonCode::TopicNameInvalid,
        ],
    )
    .await;
}

/// MQTT-3.3.1-2: DUP must be 0 on a QoS 0 PUBLISH.
#[tokio::test]
async fn mqtt_3_3_1_2_dup_on_a_qos0_publish_closes_the_connection() {
    // Mosquitto 2.0.11 accepts the packet and carries on.
    if skip_on_mosquitto("it accepts DUP 1 on a QoS 0 PUBLISH") {
        return;
    }
    let publish_dup_qos0 = [0x38, 0x04, 0x00, 0x01, b't', 0x00];
    closes_only_the_offender(
        &publish_dup_qos0,
        V5,
        &[ReasonCode::MalformedPacket, ReasonCode::ProtocolError],
    )
    .await;
}

/// MQTT-2.2.1-3: a QoS 1 PUBLISH needs a non-zero packet identifier.
#[tokio::test]
async fn mqtt_2_2_1_3_qos1_publish_with_packet_identifier_0_closes_the_connection() {
    let publish_id_0 = [0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00];
    closes_only_the_offender(
        &publish_id_0,
        V5,
        &[ReasonCode::MalformedPacket, ReasonCode::ProtocolError],
    )
    .await;
}

/// MQTT-3.8.3-2: a SUBSCRIBE without any topic filter is a Protocol Error.
#[tokio::test]
async fn mqtt_3_8_3_2_subscribe_without_filters_closes_the_connection() {
    let empty_subscribe = [0x82, 0x03, 0x00, 0x01, 0x00];
    closes_only_the_offender(
        &empty_subscribe,
        V5,
        &[ReasonCode::MalformedPacket, ReasonCode::ProtocolError],
    )
    .await;
}

/// Section 3.2: CONNACK is a server-to-client packet; a client sending it
/// commits a protocol violation.
#[tokio::test]
async fn connack_from_a_client_closes_the_connection() {
    closes_only_the_offender(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        &[ReasonCode::MalformedPacket, ReasonCode::ProtocolError],
    )
    .await;
}

/// A client that stops in the middle of a packet holds up nobody else.
#[tokio::test]
async fn a_client_stalled_mid_packet_does_not_hold_up_others() {
    let broker = shared();
    let mut bystanders = Bystanders::new(&broker).await;
    let mut stalled = RawClient::v5(broker.addr(), &unique("stall")).await;
    // A PUBLISH announcing 1000 bytes, of which 3 arrive.
    stalled
        .send_bytes(&[0x30, 0xE8, 0x07, 0x00, 0x01, b't'])
        .await;
    for id in 1..=3 {
        bystanders.still_served(id).await;
    }
    drop(stalled);
}

/// Garbage instead of a CONNECT closes that connection only.
#[tokio::test]
async fn garbage_instead_of_connect_closes_only_that_connection() {
    let broker = shared();
    let mut bystanders = Bystanders::new(&broker).await;
    let mut garbage = RawClient::open(broker.addr(), V5).await;
    garbage
        .send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    garbage.expect_closed().await;
    bystanders.still_served(1).await;
}
