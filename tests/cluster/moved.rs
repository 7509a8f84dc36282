//! A store member restarted at a new address: a pod recreated with another
//! IP, a host renamed. The group must record the new address by itself, or
//! the leader never reaches the member again and the next failure of another
//! voter costs the majority.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rookery_codec::QoS;
use rookery_testkit::{RawClient, clean_v5, free_port};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, within};
use crate::membership::admin;
use crate::traffic::ACK_WAIT;

/// Polls `rookery cluster status` at `store` until it lists `line`, for up
/// to [`FAILOVER`]; panics with the last output after that.
async fn await_status_line(store: SocketAddr, line: &str) {
    let started = Instant::now();
    loop {
        let (ok, text) = admin(store, &["status"]).await;
        if ok && text.lines().any(|l| l == line) {
            eprintln!("`{line}` after {:?}", started.elapsed());
            return;
        }
        if started.elapsed() > FAILOVER {
            panic!("`{line}` not listed within {FAILOVER:?}; last status at {store}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Node 3 of three is stopped and started again with its store on another
/// address. The group records the new address (`rookery cluster status`
/// lists it); with node 2 then killed, nodes 1 and 3 still make a
/// majority: QoS 1 publishes are acknowledged, and node 3 applies every
/// entry the leader has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_member_restarted_at_a_new_address_is_recorded_there_and_keeps_the_majority() {
    let mut cluster = Cluster::start(3);
    within(Duration::from_secs(150), async {
        let store1 = cluster.node(1).store_addr();
        let old = cluster.node(3).store_addr();
        let new_ip = Ipv4Addr::new(127, 0, 0, 103);
        let new = SocketAddr::from((new_ip, free_port(new_ip)));
        tokio::task::block_in_place(|| {
            let node = cluster.node_mut(3);
            node.sigterm();
            node.move_store(new);
            node.restart();
        });
        eprintln!("node 3's store moved from {old} to {new}");
        await_status_line(store1, &format!("voter 3 at {new}")).await;

        tokio::task::block_in_place(|| cluster.node_mut(2).kill9());
        let leader = cluster.leader().await;
        assert_ne!(leader, 2, "the killed node cannot lead");

        let (mut publisher, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v5("moved-pub")).await;
        for id in 1..=20u16 {
            let ack = publisher
                .try_publish(QoS::AtLeastOnce, id, "moved/x", b"after the move", ACK_WAIT)
                .await
                .unwrap_or_else(|e| {
                    panic!("QoS 1 publish {id} with nodes 1 and 3 left (leader {leader}): {e}")
                });
            assert_eq!(ack.reason_code.as_u8(), 0, "PUBACK {id}: {ack:?}");
        }

        // Node 3 holds what the two-node majority committed.
        let leader_applied = cluster
            .node(leader)
            .metric("rookery_store_raft_applied_index")
            .await;
        let deadline = Instant::now() + FAILOVER;
        loop {
            let applied = cluster
                .node(3)
                .metric("rookery_store_raft_applied_index")
                .await;
            if applied >= leader_applied {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 3 applied up to {applied}, the leader (node {leader}) {leader_applied}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
