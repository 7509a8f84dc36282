//! What `/metrics` says about clients and messages, broken down the way the
//! dashboard shows it: by QoS, by listener and protocol version, payload
//! bytes, and the messages in flight to clients.

use std::time::Duration;

use rookery_codec::QoS;
use rookery_testkit::RawClient;
use tokio::time::Instant;

use crate::harness::{Broker, TIMEOUT, skip_unless_rookery, unique};

/// Waits until `series` reads `expected` (gauges follow a connection's
/// turn, not the packet); panics with the last value after [`TIMEOUT`].
async fn settles(broker: &Broker, series: &str, expected: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = broker.metric(series).await;
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value}, not {expected}, after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_break_traffic_down_by_qos_protocol_and_listener() {
    if skip_unless_rookery("the metrics endpoint") {
        return;
    }
    // A broker of its own, so that the counts are this test's alone.
    let broker = Broker::start();
    let topic = unique("metrics/q");
    let mut subscriber = RawClient::v5(broker.addr(), &unique("m-sub")).await;
    subscriber.subscribe_ok(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v311(broker.addr(), &unique("m-pub")).await;
    settles(
        &broker,
        r#"rookery_clients_connected{listener="tcp",protocol="5.0"}"#,
        1.0,
    )
    .await;
    settles(
        &broker,
        r#"rookery_clients_connected{listener="tcp",protocol="3.1.1"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        broker
            .metric(r#"rookery_connections_total{listener="tcp",protocol="3.1"}"#)
            .await,
        0.0
    );

    publisher.publish0(&topic, b"zero").await;
    publisher.publish1(1, &topic, b"one, longer").await;
    let zero = subscriber.expect_publish().await;
    assert_eq!(zero.qos, QoS::AtMostOnce);
    // Received and not acknowledged yet: in flight.
    let one = subscriber.expect_publish().await;
    assert_eq!(one.qos, QoS::AtLeastOnce);
    settles(&broker, "rookery_messages_inflight", 1.0).await;
    subscriber.ack(&one).await;
    settles(&broker, "rookery_messages_inflight", 0.0).await;
    assert_eq!(broker.metric("rookery_messages_queued").await, 0.0);

    let counts = [
        (r#"rookery_messages_received_total{qos="0"}"#, 1.0),
        (r#"rookery_messages_received_total{qos="1"}"#, 1.0),
        (r#"rookery_messages_received_total{qos="2"}"#, 0.0),
        (r#"rookery_messages_sent_total{qos="0"}"#, 1.0),
        (r#"rookery_messages_sent_total{qos="1"}"#, 1.0),
        (r#"rookery_payload_bytes_received_total{qos="0"}"#, 4.0),
        (r#"rookery_payload_bytes_received_total{qos="1"}"#, 11.0),
        (r#"rookery_payload_bytes_sent_total{qos="1"}"#, 11.0),
        (
            r#"rookery_connections_total{listener="tcp",protocol="5.0"}"#,
            1.0,
        ),
        (
            r#"rookery_connections_total{listener="tcp",protocol="3.1.1"}"#,
            1.0,
        ),
    ];
    for (series, expected) in counts {
        assert_eq!(broker.metric(series).await, expected, "{series}");
    }

    publisher.disconnect().await;
    settles(
        &broker,
        r#"rookery_clients_connected{listener="tcp",protocol="3.1.1"}"#,
        0.0,
    )
    .await;
    assert_eq!(
        broker
            .metric(r#"rookery_clients_connected{listener="tcp",protocol="5.0"}"#)
            .await,
        1.0
    );
}
