//! Wills across the cluster: when an edge dies, the store treats its
//! clients as disconnected once the edge's lease (10 s) lapses, and their
//! wills are published (MQTT-3.1.2-8: the network connection closed without
//! a DISCONNECT) to subscribers on the other edges.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::{ByteString, Packet, QoS, Will, WillProperties};
use rookery_testkit::{RawClient, clean_v5};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, within};
use crate::traffic::await_route;

/// A client with a QoS 1 will on a store follower's edge; a watcher
/// subscribed on another node receives the will within 30 s of that edge's
/// kill with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_fires_when_its_edge_dies() {
    let mut cluster = Cluster::start(3);
    within(Duration::from_secs(120), async {
        let leader = cluster.leader().await;
        let will_node = [2, 3, 1]
            .into_iter()
            .find(|&n| n != leader)
            .expect("two followers");
        let watch_node = [1, 2, 3]
            .into_iter()
            .find(|&n| n != will_node)
            .expect("another node");
        eprintln!(
            "store leader: node {leader}; will on node {will_node} (to be killed), \
             watcher on node {watch_node}"
        );

        let (mut watcher, _) = RawClient::connect_ok(
            cluster.node(watch_node).mqtt_addr(),
            clean_v5("will-watcher"),
        )
        .await;
        watcher
            .subscribe_amid_traffic(1, "will/#", QoS::AtLeastOnce)
            .await;

        let mut connect = clean_v5("will-holder");
        connect.will = Some(Will {
            topic: ByteString::from("will/holder"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let will_addr = cluster.node(will_node).mqtt_addr();
        let (mut holder, _) = RawClient::connect_ok(will_addr, connect).await;
        // The watcher's subscription routes from the will's node; the will
        // holder's session is in the store (a PINGRESP: its CONNECT is done).
        await_route(will_addr, &mut watcher, "will/probe").await;
        holder
            .try_ping()
            .await
            .expect("the will holder is connected");

        cluster.node_mut(will_node).kill9();
        let killed_at = Instant::now();
        let will = watcher
            .read_until(FAILOVER, "the will", |p| match p {
                Packet::Publish(p) if p.topic == "will/holder" => Some(p.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("node {will_node} was killed: {e}"));
        eprintln!("the will arrived {:?} after the kill", killed_at.elapsed());
        assert_eq!(&will.payload[..], b"gone");
        assert_eq!(will.qos, QoS::AtLeastOnce, "{will:?}");
        watcher.try_puback(&will).await.expect("PUBACK the will");
        drop(holder);
    })
    .await;
}
