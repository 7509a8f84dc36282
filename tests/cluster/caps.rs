//! The store's caps hold for the whole cluster, not per edge: the retained
//! message cap and the persistent-session cap are decided by the store from
//! totals every replica keeps alike. And an edge-only node pages a new
//! subscription's retained messages from the store node it follows.

use std::collections::BTreeSet;
use std::time::Duration;

use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, persistent_v5, publish_packet};

use crate::harness::{Cluster, Options, QUIET, Roles, within};

/// Publishes a retained QoS 1 message and returns its PUBACK's reason.
async fn retain1(client: &mut RawClient, id: u16, topic: &str, payload: &[u8]) -> ReasonCode {
    let mut publish = publish_packet(topic, QoS::AtLeastOnce, id, payload);
    publish.retain = true;
    client.send(Packet::Publish(publish)).await;
    client.expect_puback().await.reason_code
}

/// Three retained topics and two persistent sessions at most, cluster-wide:
/// each edge (two store-and-edge nodes and an edge-only node) takes one
/// retained topic, and the next new topic is refused with 0x97 on any of
/// them while replacing one still works; the third persistent session is
/// refused with CONNACK 0x97 whichever edge it comes to. A `#` subscriber on
/// the edge-only node, whose queue holds only two messages, gets all three
/// retained messages (read from its store node a page at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_hold_across_edges_and_an_edge_only_node_pages_retained_messages() {
    let cluster = Cluster::start_with(
        3,
        Options {
            roles: vec![Roles::Both, Roles::Both, Roles::Edge],
            extra_toml: "[broker.limits]\nmax_retained_messages = 3\n\
                         max_persistent_sessions = 2\nmax_queued_messages = 2\n"
                .into(),
            ..Options::default()
        },
    );
    within(Duration::from_secs(120), async {
        let mut publishers = Vec::new();
        for i in 1..=3 {
            let addr = cluster.node(i).mqtt_addr();
            publishers.push(RawClient::v5(addr, &format!("cap-pub-{i}")).await);
        }
        for (i, publisher) in publishers.iter_mut().enumerate() {
            let topic = format!("c/{}", i + 1);
            assert_eq!(
                retain1(publisher, 1, &topic, b"v1").await,
                ReasonCode::Success,
                "{topic} on node {}",
                i + 1
            );
        }
        for publisher in &mut publishers {
            assert_eq!(
                retain1(publisher, 2, "c/4", b"v1").await,
                ReasonCode::QuotaExceeded
            );
        }
        assert_eq!(
            retain1(&mut publishers[1], 3, "c/2", b"v2").await,
            ReasonCode::Success
        );

        let edge_only = cluster.node(3).mqtt_addr();
        let mut subscriber = RawClient::v5(edge_only, "cap-sub").await;
        subscriber.subscribe_ok(1, "c/#", QoS::AtLeastOnce).await;
        let mut received = BTreeSet::new();
        while let Read::Packet(packet) = subscriber.read_checked(QUIET * 3).await {
            let Packet::Publish(message) = packet else {
                panic!("unexpected {packet:?}");
            };
            subscriber.ack(&message).await;
            received.insert((message.topic.to_string(), message.payload.to_vec()));
        }
        let expected: BTreeSet<(String, Vec<u8>)> = [("c/1", "v1"), ("c/2", "v2"), ("c/3", "v1")]
            .iter()
            .map(|(topic, payload)| ((*topic).to_owned(), payload.as_bytes().to_vec()))
            .collect();
        assert_eq!(received, expected);
        assert!(
            cluster
                .node(3)
                .metric("rookery_retained_paged_subscriptions_total")
                .await
                >= 1.0,
            "three retained messages for a queue of two are paged"
        );

        let (_first, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), persistent_v5("cap-p1", 600)).await;
        let (_second, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), persistent_v5("cap-p2", 600)).await;
        for i in 1..=3 {
            let (_, refused) =
                RawClient::connect_with(cluster.node(i).mqtt_addr(), persistent_v5("cap-p3", 600))
                    .await;
            assert_eq!(refused.reason_code, ReasonCode::QuotaExceeded, "node {i}");
        }
    })
    .await;
}
