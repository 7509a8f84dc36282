//! Backpressure across edges (issue 19): a QoS 0 publisher whose messages go
//! to a slow subscriber on another edge is paused, as one on the subscriber's
//! own edge is, instead of having its messages dropped on the forwarding link
//! or at the subscriber's queue.

use std::time::Duration;

use rookery_codec::{Packet, QoS};
use rookery_testkit::{RawClient, Read, clean_v311};

use crate::harness::{Cluster, Options, TIMEOUT, within};
use crate::traffic::await_route;

/// About 40 MB: more than the sockets on the way can hold, so that the
/// publisher must be held back somewhere for nothing to be lost.
const MESSAGES: u64 = 40_000;
const PAYLOAD: usize = 1024;

/// The publisher on node 1 sends 40,000 QoS 0 messages of 1 KiB as fast as
/// it can to a subscriber on node 2 that reads nothing for two seconds, then
/// reads everything. Its queue (100 messages) and the link between the edges
/// (64 KiB) fill within the first few hundred messages; the pause (two
/// minutes) is longer than the test, so only the subscriber's draining lets
/// the publisher go on. Every message arrives, in order (MQTT-4.6.0-6), and
/// nothing is dropped on either edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_to_a_slow_subscriber_on_another_edge_is_paused_not_dropped() {
    let cluster = Cluster::start_with(
        2,
        Options {
            extra_toml: "[broker.limits]\nmax_queued_messages = 100\n\
                         publisher_pause_ms = 120000\n"
                .into(),
            cluster_toml: "forward_queue_bytes = 65536".into(),
            ..Options::default()
        },
    );
    within(Duration::from_secs(150), async {
        let (mut subscriber, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v311("slow-remote-sub")).await;
        subscriber
            .subscribe_amid_traffic(1, "bp/#", QoS::AtMostOnce)
            .await;
        await_route(cluster.node(1).mqtt_addr(), &mut subscriber, "bp/probe").await;

        let (mut publisher, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v311("fast-pub")).await;
        let sending = tokio::spawn(async move {
            let mut payload = vec![0u8; PAYLOAD];
            for seq in 0..MESSAGES {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                publisher
                    .try_publish0("bp/x", &payload)
                    .await
                    .unwrap_or_else(|e| panic!("publish {seq} on node 1: {e}"));
            }
            publisher
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !sending.is_finished(),
            "the publisher sent all {MESSAGES} messages while nothing was read: it was never held back"
        );

        let mut expected = 0u64;
        while expected < MESSAGES {
            match subscriber.read(TIMEOUT).await {
                Read::Packet(Packet::Publish(p)) if p.topic == "bp/x" => {
                    let seq = p
                        .payload
                        .get(..8)
                        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                        .map(u64::from_be_bytes);
                    assert_eq!(
                        seq,
                        Some(expected),
                        "message {expected} missing or out of order (got {seq:?})"
                    );
                    expected += 1;
                }
                Read::Packet(_) => {}
                Read::Closed(why) => panic!("the subscriber's connection ended: {why}"),
                Read::Nothing => panic!(
                    "the subscriber on node 2 received {expected} of {MESSAGES}, then nothing for {TIMEOUT:?}"
                ),
            }
        }
        let _publisher = sending.await.expect("the publisher");

        let publishing_edge = cluster.node(1);
        let receiving_edge = cluster.node(2);
        assert!(
            publishing_edge.metric("rookery_publisher_pauses_total").await >= 1.0,
            "the publisher was never paused"
        );
        for series in [
            "rookery_forward_queue_full_total",
            "rookery_forward_dropped_total",
        ] {
            assert_eq!(publishing_edge.metric(series).await, 0.0, "node 1: {series}");
        }
        assert_eq!(
            receiving_edge.metric("rookery_messages_dropped_total").await,
            0.0,
            "node 2: rookery_messages_dropped_total"
        );
    })
    .await;
}
