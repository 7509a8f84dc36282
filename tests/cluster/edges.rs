//! Edge-only nodes: stateless edges in front of a store group of their own
//! (three store-only nodes), reaching the store through their seeds: they
//! write through the leader and follow one store node for notifications and
//! reads, and go on through a kill of the store leader.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::{Packet, QoS, ReasonCode, Will};
use rookery_store::proto::{TransferLeaderRequest, admin_client::AdminClient};
use rookery_testkit::{RawClient, Read, clean_v5, persistent_v5};
use tonic::transport::Endpoint;

use crate::harness::{Cluster, FAILOVER, Options, QUIET, within};
use crate::traffic::{Publisher, Stream, Subscriber, await_route, unique_id};

/// Three store-only nodes and two edge-only nodes: a persistent QoS 1
/// subscriber on one edge receives every message a publisher on the other
/// edge got a PUBACK for, while the store leader is killed with SIGKILL
/// mid-stream (both edges switch to another store node and to the new
/// leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_only_nodes_lose_nothing_when_the_store_leader_dies() {
    let mut cluster = stores_and_edges(2, false);
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

/// Three store-only nodes (1 to 3) and `edges` edge-only nodes (4 on),
/// with a fault-injecting proxy in front of each store node when
/// `store_proxies`.
fn stores_and_edges(edges: usize, store_proxies: bool) -> Cluster {
    Cluster::start_stores_and_edges(
        edges,
        Options {
            store_proxies,
            ..Options::default()
        },
    )
}

/// The store node (its index) that edge-only node `edge` follows now.
fn followed_store(cluster: &Cluster, edge: usize) -> usize {
    cluster.followed_store(edge).unwrap_or_else(|| {
        panic!(
            "node {edge} follows no store node:\n{}",
            cluster.node(edge).log()
        )
    })
}

/// The store node `edge` follows, made a follower first if it leads (the
/// test is about a follower that stops applying; a cut-off leader is
/// another fault).
async fn followed_follower(cluster: &Cluster, edge: usize) -> usize {
    let followed = followed_store(cluster, edge);
    if cluster.leader().await == followed {
        let store = cluster.node(followed).store_addr();
        let channel = Endpoint::from_shared(format!("http://{store}"))
            .expect("a store endpoint")
            .connect_lazy();
        AdminClient::new(channel)
            .transfer_leader(TransferLeaderRequest { node_id: 0 })
            .await
            .unwrap_or_else(|status| panic!("moving the leadership off node {followed}: {status}"));
        let deadline = tokio::time::Instant::now() + FAILOVER;
        while cluster.leader().await == followed {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {followed} still leads {FAILOVER:?} after handing over"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    followed
}

/// An edge-only node reads and hears from the one store node it follows.
/// Cut that node off from the other store nodes but not from the edge, and
/// it stops applying the log while its stream to the edge stays open: the
/// edge must notice (its applied index stays behind the others') and follow
/// another node, so that a persistent subscriber on the edge goes on
/// receiving what a publisher there had acknowledged. Before, it received
/// nothing more while its store queue filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_only_node_leaves_a_followed_store_node_that_stopped_applying() {
    let cluster = stores_and_edges(1, true);
    within(Duration::from_secs(180), async {
        let edge = 4;
        let addr = cluster.node(edge).mqtt_addr();
        let (subscriber, _) =
            Subscriber::persistent(addr, "behind-sub", "b", addr, "b/x", vec![addr]).await;
        let publisher = Publisher::spawn(Stream {
            addr,
            topic: "b/x".into(),
            count: None,
            pace: Duration::from_millis(5),
            reconnect: true,
        });
        subscriber.await_distinct(50).await;
        let followed = followed_follower(&cluster, edge).await;
        let others: Vec<usize> = (1..=3).filter(|&n| n != followed).collect();
        eprintln!(
            "the edge follows store node {followed} (leader: node {}); cutting it off from \
             nodes {others:?}",
            cluster.leader().await
        );
        cluster.isolate_from(followed, &others);
        let cut_at = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let published = publisher.stop().await;
        let acked = published.acked_seqs();
        let after_cut = published
            .acked
            .iter()
            .filter(|(_, sent)| *sent > cut_at)
            .count();
        eprintln!(
            "published: {} acknowledged ({after_cut} after the cut), {} refused, {} unconfirmed",
            acked.len(),
            published.refused.len(),
            published.unconfirmed.len()
        );
        assert!(after_cut > 0, "nothing was acknowledged after the cut");
        subscriber.stop_when_all_arrived(&acked).await;
        let now_followed = followed_store(&cluster, edge);
        assert_ne!(
            now_followed, followed,
            "the edge still follows the node that was cut off"
        );
        assert!(
            cluster
                .node(edge)
                .metric("rookery_store_followed_node_behind_total")
                .await
                >= 1.0
        );
    })
    .await;
}

/// A takeover whose notice never reaches the old connection's edge: that
/// edge follows a store node cut off from the others, which never applies
/// the new CONNECT nor tells of it. Once the edge follows another node and
/// reads its persistent sessions' queues again, it must see the newer epoch
/// and close the old connection with DISCONNECT 0x8E (MQTT-3.1.4-3), instead
/// of keeping it open while the store sends the session's messages to the
/// new holder's edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_notice_was_missed_still_closes_the_old_connection() {
    let cluster = stores_and_edges(2, true);
    within(Duration::from_secs(120), async {
        let (old_edge, new_edge) = (4, 5);
        let client_id = "missed-takeover";
        let (mut first, _) = RawClient::connect_ok(
            cluster.node(old_edge).mqtt_addr(),
            persistent_v5(client_id, 600),
        )
        .await;
        first.try_ping().await.expect("the first connection is up");
        let followed = followed_follower(&cluster, old_edge).await;
        let others: Vec<usize> = (1..=3).filter(|&n| n != followed).collect();
        eprintln!("node {old_edge} follows store node {followed}: cutting it off from {others:?}");
        cluster.isolate_from(followed, &others);
        let (_second, _) = RawClient::connect_retrying(
            cluster.node(new_edge).mqtt_addr(),
            persistent_v5(client_id, 600),
            FAILOVER,
        )
        .await;
        eprintln!("the client connected again on node {new_edge}");
        let before_close = first.expect_closed_within(FAILOVER).await;
        match before_close.as_slice() {
            [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SessionTakenOver => {}
            other => panic!(
                "expected DISCONNECT 0x8E (Session taken over) and a close on node {old_edge}, \
                 got {other:?}"
            ),
        }
    })
    .await;
}

/// An edge paused past its lease (10 s): the store's Tick takes its
/// sessions offline (wills out, expiry started) and stops notifying it
/// about them. When it runs again and renews its lease, the store says the
/// lease had lapsed, and the edge closes those connections (DISCONNECT
/// 0x83) so that their clients connect again. Before, an idle persistent
/// subscriber stayed connected to it and never received what was published
/// for it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_paused_past_its_lease_closes_the_connections_the_store_took_offline() {
    let cluster = stores_and_edges(2, false);
    within(Duration::from_secs(120), async {
        let (pub_edge, sub_edge) = (4, 5);
        let pub_addr = cluster.node(pub_edge).mqtt_addr();
        let sub_addr = cluster.node(sub_edge).mqtt_addr();
        let client_id = "lapsed-sub";
        let (mut subscriber, _) =
            RawClient::connect_ok(sub_addr, persistent_v5(client_id, 600)).await;
        subscriber.subscribe_ok(1, "l/#", QoS::AtLeastOnce).await;
        await_route(pub_addr, &mut subscriber, "l/probe").await;
        // Idle: no write of its connection is in flight when the edge stops.
        tokio::time::sleep(QUIET).await;
        cluster.node(sub_edge).pause();
        tokio::time::sleep(Duration::from_secs(13)).await;
        cluster.node(sub_edge).resume();

        let before_close = subscriber.expect_closed_within(FAILOVER).await;
        match before_close.as_slice() {
            [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ImplementationSpecificError => {}
            other => panic!(
                "expected DISCONNECT 0x83 and a close from the edge whose lease lapsed, got {other:?}"
            ),
        }
        let (mut publisher, _) =
            RawClient::connect_ok(pub_addr, clean_v5(&unique_id("lapsed-pub"))).await;
        let ack = publisher.publish1(1, "l/after", b"after").await;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        // Its session is whole: the message waits in it and arrives.
        let (mut subscriber, connack) =
            RawClient::connect_retrying(sub_addr, persistent_v5(client_id, 600), FAILOVER).await;
        assert!(connack.session_present);
        // Probes sent before the pause may come first.
        loop {
            let publish = subscriber.expect_publish().await;
            if publish.topic == "l/after" {
                break;
            }
        }
        assert!(
            cluster
                .node(sub_edge)
                .metric("rookery_edge_lease_lapsed_total")
                .await
                >= 1.0
        );
    })
    .await;
}

/// The store leader cut off from the other voters but not from the edge:
/// it takes the edge's writes and never commits them, while the others
/// elect a new leader. The edge must look for the leader again once its
/// writes go unanswered (the seeds name the newer term's) instead of
/// writing to the old one until it steps down: publishes are acknowledged
/// again within a few write timeouts, and a persistent subscriber on the
/// edge gets every acknowledged message. Before, the edge's writes timed
/// out for as long as the cut lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_only_node_moves_its_writes_off_a_leader_cut_off_from_the_voters() {
    let cluster = stores_and_edges(1, true);
    within(Duration::from_secs(180), async {
        let addr = cluster.node(4).mqtt_addr();
        let (subscriber, _) =
            Subscriber::persistent(addr, "cut-leader-sub", "c", addr, "c/x", vec![addr]).await;
        let publisher = Publisher::spawn(Stream {
            addr,
            topic: "c/x".into(),
            count: None,
            pace: Duration::from_millis(5),
            reconnect: true,
        });
        subscriber.await_distinct(50).await;
        let leader = cluster.leader().await;
        let others: Vec<usize> = (1..=3).filter(|&n| n != leader).collect();
        eprintln!("cutting the store leader, node {leader}, off from nodes {others:?}");
        cluster.isolate_from(leader, &others);
        let cut_at = tokio::time::Instant::now();
        // Two write timeouts (5 s each) and an election fit in this.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let published = publisher.stop().await;
        let acked = published.acked_seqs();
        let after_cut: Vec<Duration> = published
            .acked
            .iter()
            .filter(|(_, sent)| *sent > cut_at)
            .map(|(_, sent)| *sent - cut_at)
            .collect();
        eprintln!(
            "published: {} acknowledged ({} sent after the cut, the first {:?} after it), \
             {} refused, {} unconfirmed",
            acked.len(),
            after_cut.len(),
            after_cut.first(),
            published.refused.len(),
            published.unconfirmed.len()
        );
        assert!(
            !after_cut.is_empty(),
            "nothing published in the 15 s after the leader's cut was acknowledged"
        );
        subscriber.stop_when_all_arrived(&acked).await;
    })
    .await;
}

/// MQTT-3.1.2-10: a client that leaves with a normal DISCONNECT while its
/// edge cannot reach the store still has its will discarded. The edge
/// records the disconnect once the store answers again; before, the store
/// kept counting the connection as live, and the edge's death later
/// published the will (found by the chaos run). A second client, still
/// connected when the edge dies, shows that wills do come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_10_a_normal_disconnect_the_store_could_not_hear_yet_still_discards_the_will() {
    // Writes give up after 2 s, well inside the cut below, which itself
    // stays well inside the edge's 10 s lease.
    let mut cluster = Cluster::start_edges_to_cut(2);
    within(Duration::from_secs(120), async {
        let edge = cluster.node(4).mqtt_addr();
        let mut watcher = will_watcher(cluster.node(5).mqtt_addr(), edge).await;
        let (leaving, _) = RawClient::connect_ok(edge, with_will("leaving")).await;
        let (staying, _) = RawClient::connect_ok(edge, with_will("staying")).await;

        for store in 1..=3 {
            cluster.block_calls(4, store);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        leaving.disconnect().await;
        // Longer than a write timeout, so that the first record fails;
        // shorter than the edge's lease: the store keeps its clients.
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.heal();
        // The retried record lands within a write timeout of the heal.
        tokio::time::sleep(Duration::from_secs(6)).await;
        cluster.node_mut(4).kill9();
        drop(staying);

        // The store takes the dead edge's sessions offline once its lease
        // lapses, and publishes their wills: only `staying`'s.
        expect_only_will(&mut watcher, "will/staying", FAILOVER).await;
    })
    .await;
}

/// MQTT-3.1.2-10 around a takeover: a client leaves one edge with a normal
/// DISCONNECT that edge cannot record yet (its calls to the store leader
/// fail) and connects again on another edge. The takeover reaches the store
/// first, which still counts the old connection as live; it hands the old
/// connection's will to that connection's edge, which knows of the
/// DISCONNECT and discards the will. Before, the new connection's edge
/// published it at once (found by the chaos run). A client that drops its
/// connection afterwards shows that wills do come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_10_a_takeover_ahead_of_the_disconnect_record_publishes_no_will() {
    let cluster = Cluster::start_edges_to_cut(2);
    within(Duration::from_secs(120), async {
        let (old_edge, new_edge) = (cluster.node(4).mqtt_addr(), cluster.node(5).mqtt_addr());
        let mut watcher = will_watcher(new_edge, old_edge).await;
        let (leaving, _) = RawClient::connect_ok(old_edge, with_will("leaving")).await;

        // The old edge still hears the store node it follows, but its writes
        // to the leader fail.
        let followed = followed_follower(&cluster, 4).await;
        let leader = cluster.leader().await;
        assert_ne!(leader, followed);
        cluster.block_calls(4, leader);
        tokio::time::sleep(Duration::from_millis(500)).await;
        leaving.disconnect().await;
        let (_back, connack) = RawClient::connect_ok(new_edge, clean_v5("leaving")).await;
        assert_eq!(connack.reason_code, ReasonCode::Success);
        // Shorter than the old edge's lease: the store keeps it alive.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.heal();
        tokio::time::sleep(Duration::from_secs(3)).await;

        let (dropping, _) = RawClient::connect_ok(old_edge, with_will("dropping")).await;
        drop(dropping);
        expect_only_will(&mut watcher, "will/dropping", FAILOVER).await;
    })
    .await;
}

/// A takeover's will is handed to the old connection's edge; if that edge
/// cannot hear the store just then (cut off for less than its lease), it
/// learns of the will when it follows a store node again and publishes it
/// at once (MQTT-3.1.2-8: the old connection ended without DISCONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_handed_to_an_edge_that_was_cut_off_is_published_when_it_hears_again() {
    let cluster = Cluster::start_edges_to_cut(2);
    within(Duration::from_secs(120), async {
        let (old_edge, new_edge) = (cluster.node(4).mqtt_addr(), cluster.node(5).mqtt_addr());
        let mut watcher = will_watcher(new_edge, old_edge).await;
        let (dropping, _) = RawClient::connect_ok(old_edge, with_will("dropping")).await;

        for store in 1..=3 {
            cluster.block_calls(4, store);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(dropping);
        // The takeover reaches the store before the old edge's record of
        // the lost connection, and hands the will to the old edge.
        let (_back, _) = RawClient::connect_ok(new_edge, clean_v5("dropping")).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.heal();

        expect_only_will(&mut watcher, "will/dropping", Duration::from_secs(8)).await;
    })
    .await;
}

/// A clean 5.0 CONNECT of `client_id` with a QoS 1 will on `will/{client_id}`.
fn with_will(client_id: &str) -> rookery_codec::Connect {
    let mut connect = clean_v5(client_id);
    connect.will = Some(Will {
        topic: format!("will/{client_id}").as_str().into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    connect
}

/// A clean 5.0 subscriber to `will/#` on `at`, which messages published on
/// `from` reach.
async fn will_watcher(at: std::net::SocketAddr, from: std::net::SocketAddr) -> RawClient {
    let (mut watcher, _) = RawClient::connect_ok(at, clean_v5("will-watcher")).await;
    watcher.subscribe_ok(1, "will/#", QoS::AtLeastOnce).await;
    await_route(from, &mut watcher, "will/probe").await;
    watcher
}

/// The next message `watcher` receives, within `limit`, is the will on
/// `topic`, and nothing follows it for 5 s (no will after a normal
/// DISCONNECT, none twice).
async fn expect_only_will(watcher: &mut RawClient, topic: &str, limit: Duration) {
    let publish = match watcher.read(limit).await {
        Read::Packet(Packet::Publish(publish)) => publish,
        other => panic!("no will within {limit:?}: {other:?}"),
    };
    watcher.ack(&publish).await;
    assert_eq!(publish.topic, topic, "another will came first: {publish:?}");
    match watcher.read(Duration::from_secs(5)).await {
        Read::Nothing => {}
        other => panic!("a will after a normal DISCONNECT, or one twice: {other:?}"),
    }
}
