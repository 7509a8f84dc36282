//! Edge-only nodes: stateless edges in front of a store group of their own
//! (three store-only nodes), reaching the store through their seeds: they
//! write through the leader and follow one store node for notifications and
//! reads, and go on through a kill of the store leader.

use std::time::Duration;

use crate::harness::{Cluster, Options, Roles, within};
use crate::traffic::{Publisher, Stream, Subscriber};

/// Three store-only nodes and two edge-only nodes: a persistent QoS 1
/// subscriber on one edge receives every message a publisher on the other
/// edge got a PUBACK for, while the store leader is killed with SIGKILL
/// mid-stream (both edges switch to another store node and to the new
/// leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_only_nodes_lose_nothing_when_the_store_leader_dies() {
    let mut cluster = Cluster::start_with(
        5,
        Options {
            roles: vec![
                Roles::Store,
                Roles::Store,
                Roles::Store,
                Roles::Edge,
                Roles::Edge,
            ],
            ..Options::default()
        },
    );
    within(Duration::from_secs(180), async {
        let leader = cluster.leader().await;
        eprintln!("store leader: node {leader} (to be killed); edges: nodes 4 and 5");
        let sub_addr = cluster.node(5).mqtt_addr();
        let pub_addr = cluster.node(4).mqtt_addr();

        let (subscriber, _) = Subscriber::persistent(
            sub_addr,
            "edge-only-sub",
            "e",
            pub_addr,
            "e/x",
            vec![sub_addr],
        )
        .await;
        let publisher = Publisher::spawn(Stream {
            addr: pub_addr,
            topic: "e/x".into(),
            count: None,
            pace: Duration::from_millis(2),
            reconnect: true,
        });
        // The stream between the edges has started.
        subscriber.await_distinct(100).await;
        cluster.node_mut(leader).kill9();
        let killed_at = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let published = publisher.stop().await;
        let acked = published.acked_seqs();
        eprintln!(
            "published: {} acknowledged, {} refused, {} unconfirmed",
            acked.len(),
            published.refused.len(),
            published.unconfirmed.len()
        );
        subscriber.stop_when_all_arrived(&acked).await;
        let after_kill = published
            .acked
            .iter()
            .filter(|(_, sent)| *sent > killed_at)
            .count();
        assert!(
            after_kill > 0,
            "nothing published after the leader's kill was acknowledged: the edges did not \
             find the new leader"
        );
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader, "the killed node still leads");
    })
    .await;
}
