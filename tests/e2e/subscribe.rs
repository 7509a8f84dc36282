//! SUBSCRIBE and UNSUBSCRIBE as a client sees them: when a subscription
//! starts to route, and the filters that are no filters at all.

use std::time::Duration;

use rookery_codec::ProtocolVersion::{self, V3_1_1, V5};
use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, at, pid, publish_packet, subscribe_packet};

use crate::harness::{Broker, Shared, shared, unique};

/// How long both connections rest between rounds: each round starts from
/// idle connections, as after a CONNACK or SUBACK.
const IDLE: Duration = Duration::from_millis(2);

/// Rounds of the race below.
const ROUNDS: usize = 100;

/// Deliveries of [`ROUNDS`] the race must reach: Mosquitto's in the issue's
/// measurement (94 and 99 of 100 for 3.1.1 and 5.0). Not all of them: this
/// broker reads its sockets on several threads, and B's connection may not
/// have been polled at all when A's publish is matched (the thread holding
/// it was held off, or the kernel made A's socket readable first); what
/// has been read, it waits for. On 2 loaded cores this test measured 95 to
/// 100 (1.6 misses on average), 59 to 83 before the fix, Mosquitto 100.
const MIN_DELIVERED: usize = 94;

/// How long to look for a message that the broker wrote together with an
/// answer already read: it is in the client's buffer, or nowhere.
const ALREADY_WRITTEN: Duration = Duration::from_millis(50);

/// A subscription routes as soon as the broker has read the SUBSCRIBE: B
/// writes SUBSCRIBE and, without waiting for the SUBACK, A publishes to
/// the topic, and B gets the message. MQTT orders nothing between two
/// connections, but clients and test suites (Paho's
/// `test_request_response`) count on it.
#[tokio::test]
async fn a_subscription_routes_as_soon_as_the_subscribe_is_read_3_1_1() {
    let broker = Broker::start();
    let delivered = subscribe_then_publish_at_once(&broker, V3_1_1).await;
    assert!(
        delivered >= MIN_DELIVERED,
        "{delivered} of {ROUNDS} messages reached the new subscriber"
    );
}

/// The same race with 5.0 clients.
#[tokio::test]
async fn a_subscription_routes_as_soon_as_the_subscribe_is_read_5_0() {
    let broker = Broker::start();
    let delivered = subscribe_then_publish_at_once(&broker, V5).await;
    assert!(
        delivered >= MIN_DELIVERED,
        "{delivered} of {ROUNDS} messages reached the new subscriber"
    );
}

/// Runs [`ROUNDS`] rounds of "B subscribes to a new topic, A publishes one
/// QoS 1 message to it at once"; how many messages B received.
async fn subscribe_then_publish_at_once(broker: &Broker, version: ProtocolVersion) -> usize {
    let connect = |name: &str| rookery_testkit::connect_packet(version, &unique(name));
    let (mut a, _) = RawClient::connect_ok(broker.addr(), connect("race-a")).await;
    let (mut b, _) = RawClient::connect_ok(broker.addr(), connect("race-b")).await;
    let prefix = unique("race");
    let mut delivered = 0;
    for round in 1..=ROUNDS {
        let id = u16::try_from(round).unwrap();
        let topic = format!("{prefix}/{round}");
        let subscribe = subscribe_packet(id, &[(&topic, at(QoS::AtLeastOnce))]);
        b.send(Packet::Subscribe(subscribe)).await;
        let publish = publish_packet(&topic, QoS::AtLeastOnce, id, b"m");
        a.send(Packet::Publish(publish)).await;
        assert_eq!(a.expect_puback().await.packet_id, pid(id));
        // The broker routed the message (or not) before it sent the PUBACK;
        // a PINGRESP asked for now comes with it or after it.
        let mut received = false;
        let mut answered = (false, false);
        b.send(Packet::PingReq).await;
        while answered != (true, true) {
            match b.expect().await {
                Packet::SubAck(suback) => {
                    assert_eq!(suback.packet_id, pid(id));
                    assert_eq!(suback.reason_codes, vec![ReasonCode::GrantedQoS1]);
                    answered.0 = true;
                }
                Packet::PingResp => answered.1 = true,
                Packet::Publish(message) => received |= take(&mut b, &message, &topic).await,
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        while !received {
            match b.read(ALREADY_WRITTEN).await {
                Read::Packet(Packet::Publish(message)) => {
                    received = take(&mut b, &message, &topic).await;
                }
                Read::Nothing => break,
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        delivered += usize::from(received);
        // Both connections idle before the next round, as after a SUBACK:
        // everything sent so far is handled when the PINGRESPs are back.
        a.ping().await;
        b.ping().await;
        tokio::time::sleep(IDLE).await;
    }
    eprintln!("{version:?}: {delivered} of {ROUNDS} delivered");
    delivered
}

/// Acknowledges a message B received; whether it is this round's.
async fn take(b: &mut RawClient, message: &rookery_codec::Publish, topic: &str) -> bool {
    b.ack(message).await;
    &message.topic[..] == topic
}

/// The 5.0 reason codes a server may close with for an empty filter: it
/// parses, so by section 1.2's definitions it is a Protocol Error (0x82,
/// what Rookery sends); Mosquitto says Malformed Packet (0x81).
const EMPTY_FILTER_REASONS: [ReasonCode; 2] =
    [ReasonCode::ProtocolError, ReasonCode::MalformedPacket];

/// MQTT-4.7.3-1: topic filters are at least one character long. A
/// SUBSCRIBE with an empty filter closes the connection (MQTT-4.13.1-1;
/// 3.1.1: MQTT-4.8.0-1) instead of being answered, even next to a valid
/// filter.
#[tokio::test]
async fn mqtt_4_7_3_1_a_subscribe_with_an_empty_topic_filter_closes_the_connection() {
    let broker = shared();
    // Packet identifier 1, then the filters: "" alone, or "a" and "".
    let cases: [(ProtocolVersion, &[u8]); 4] = [
        (V3_1_1, &[0x82, 0x05, 0, 1, 0, 0, 1]),
        (V3_1_1, &[0x82, 0x09, 0, 1, 0, 1, b'a', 1, 0, 0, 1]),
        (V5, &[0x82, 0x06, 0, 1, 0, 0, 0, 1]),
        (V5, &[0x82, 0x0A, 0, 1, 0, 0, 1, b'a', 1, 0, 0, 1]),
    ];
    for (version, subscribe) in cases {
        let mut client = connected(&broker, version, "empty-sub").await;
        client.send_bytes(subscribe).await;
        client.expect_closed_with(&EMPTY_FILTER_REASONS).await;
    }
}

/// MQTT-4.7.3-1 for UNSUBSCRIBE: an empty filter closes the connection.
#[tokio::test]
async fn mqtt_4_7_3_1_an_unsubscribe_with_an_empty_topic_filter_closes_the_connection() {
    let broker = shared();
    let cases: [(ProtocolVersion, &[u8]); 2] = [
        (V3_1_1, &[0xA2, 0x04, 0, 1, 0, 0]),
        (V5, &[0xA2, 0x05, 0, 1, 0, 0, 0]),
    ];
    for (version, unsubscribe) in cases {
        let mut client = connected(&broker, version, "empty-unsub").await;
        client.send_bytes(unsubscribe).await;
        client.expect_closed_with(&EMPTY_FILTER_REASONS).await;
    }
}

/// A client of `version` connected with a clean session.
async fn connected(broker: &Shared, version: ProtocolVersion, name: &str) -> RawClient {
    let connect = rookery_testkit::connect_packet(version, &unique(name));
    RawClient::connect_ok(broker.addr(), connect).await.0
}
