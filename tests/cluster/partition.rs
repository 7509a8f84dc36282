//! A store minority cut off from the majority by the proxies in front of the
//! store nodes (node processes and MQTT listeners stay up). The guarantee:
//! the minority never acknowledges a QoS 1/2 publish it cannot commit; it
//! refuses it with a reason code within `cluster.write_timeout_ms`, keeps
//! QoS 0 flowing between its own clients, and nothing the majority
//! acknowledged is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, clean_v5, persistent_v5};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, Options, QUIET, TIMEOUT, within};
use crate::traffic::{Publisher, Stream, Subscriber, await_route, ranges};

/// How long a store write may take in these clusters.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an edge goes on acknowledging after it last heard from the
/// store's quorum.
const QUORUM_CONTACT: Duration = Duration::from_millis(500);

/// The store leader is cut off (the hardest minority: it still believes it
/// leads). QoS 1 publishes on its edge, from `quorum_contact_ms` after the
/// cut, get PUBACK with an error reason code within the write timeout (plus
/// a margin for the machine), never success, even with no subscriber (its
/// route table may miss one made on the majority side); a QoS 0 message between two of its own clients
/// still arrives; the majority elects a leader and acknowledges a stream of
/// QoS 1 messages throughout, every one of which reaches a persistent
/// subscriber after the cut heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_refuses_qos1_within_a_bound_and_loses_nothing() {
    let cluster = partitionable_cluster();
    within(Duration::from_secs(180), async {
        let minority = cluster.leader().await;
        let majority: Vec<usize> = (1..=3).filter(|&n| n != minority).collect();
        let (sub_node, pub_node) = (majority[0], majority[1]);
        eprintln!(
            "store leader: node {minority} (to be cut off); subscriber on node {sub_node}, \
             publisher on node {pub_node}"
        );
        let sub_addr = cluster.node(sub_node).mqtt_addr();
        let pub_addr = cluster.node(pub_node).mqtt_addr();
        let minority_addr = cluster.node(minority).mqtt_addr();

        let (subscriber, _) = Subscriber::persistent(
            sub_addr,
            "partition-sub",
            "p",
            pub_addr,
            "p/x",
            vec![sub_addr],
        )
        .await;
        // Two clients of the minority's edge, connected before the cut (a
        // CONNECT needs the store).
        let (mut local_sub, _) =
            RawClient::connect_ok(minority_addr, clean_v5("minority-sub")).await;
        local_sub
            .subscribe_amid_traffic(1, "local/#", QoS::AtMostOnce)
            .await;
        let (mut minority_pub, _) =
            RawClient::connect_ok(minority_addr, clean_v5("minority-pub")).await;

        let publisher = Publisher::spawn(Stream {
            addr: pub_addr,
            topic: "p/x".into(),
            count: None,
            pace: Duration::from_millis(5),
            reconnect: true,
        });
        subscriber.await_distinct(50).await;

        cluster.isolate(minority);
        let cut_at = Instant::now();
        eprintln!("cut node {minority} off");

        // QoS 1 on the minority, once the contact bound has passed: refused,
        // within the write timeout, never acknowledged.
        tokio::time::sleep(QUORUM_CONTACT).await;
        let bound = WRITE_TIMEOUT + Duration::from_secs(3);
        for id in 1..=3u16 {
            let sent = Instant::now();
            let ack = minority_pub
                .try_publish(
                    QoS::AtLeastOnce,
                    id,
                    "m/x",
                    format!("minority {id}").as_bytes(),
                    bound,
                )
                .await
                .unwrap_or_else(|e| {
                    panic!("no PUBACK from the cut-off node within {bound:?}: {e}")
                });
            eprintln!(
                "minority PUBACK {id}: {:?} after {:?}",
                ack.reason_code,
                sent.elapsed()
            );
            assert!(
                ack.reason_code.is_error(),
                "the cut-off node acknowledged a QoS 1 publish it cannot commit: {ack:?}"
            );
        }

        // QoS 0 between two clients of the minority's edge still flows.
        minority_pub
            .try_publish0("local/x", b"still here")
            .await
            .expect("QoS 0 publish on the cut-off node");
        let delivered = local_sub
            .read_until(TIMEOUT, "the QoS 0 message", |p| match p {
                Packet::Publish(publish) if &*publish.topic == "local/x" => Some(()),
                _ => None,
            })
            .await;
        assert!(
            delivered.is_ok(),
            "QoS 0 between clients of the cut-off node stopped: {delivered:?}"
        );

        // The majority went on acknowledging.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.heal();
        eprintln!("healed after {:?}", cut_at.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let published = publisher.stop().await;
        let acked = published.acked_seqs();
        let after_cut = published
            .acked
            .iter()
            .filter(|(_, sent)| *sent > cut_at + WRITE_TIMEOUT)
            .count();
        eprintln!(
            "published: {} acknowledged ({after_cut} sent after the cut had settled), \
             {} refused, {} unconfirmed",
            acked.len(),
            published.refused.len(),
            published.unconfirmed.len()
        );
        assert!(
            after_cut > 0,
            "the majority acknowledged nothing while the leader was cut off"
        );
        let complete = subscriber
            .wait_until(FAILOVER, |r| acked.is_subset(&r.distinct()))
            .await;
        let received = subscriber.stop().await;
        let missing: Vec<u64> = acked.difference(&received.distinct()).copied().collect();
        assert!(
            complete && missing.is_empty(),
            "acknowledged messages never reached the subscriber: {}",
            ranges(&missing.into_iter().collect())
        );
    })
    .await;
}

/// A persistent 5.0 session's QoS 2 publish that a cut-off store leader's
/// edge refuses (PUBREC 0x83: it cannot reach the quorum) is not taken. A
/// client that releases it all the same, as paho-mqtt 2 does whatever
/// PUBREC's reason code, never hears PUBCOMP Success for it: not from the
/// cut-off edge (it cannot record the release), and not after reconnecting
/// to the majority, where the store holds no such identifier (0x92). A
/// persistent subscriber on the majority never receives it, and gets the
/// messages published before and after. (The compose fault test once
/// counted 5 such messages as acknowledged and lost around a leader kill.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qos2_publish_released_all_the_same_is_never_completed_with_success() {
    let cluster = partitionable_cluster();
    within(Duration::from_secs(120), async {
        let minority = cluster.leader().await;
        let majority: Vec<usize> = (1..=3).filter(|&n| n != minority).collect();
        let sub_addr = cluster.node(majority[0]).mqtt_addr();
        let minority_addr = cluster.node(minority).mqtt_addr();
        let failover_addr = cluster.node(majority[1]).mqtt_addr();
        eprintln!(
            "store leader: node {minority} (to be cut off, the publisher's); subscriber on \
             node {}, the publisher moves to node {}",
            majority[0], majority[1]
        );

        let (mut subscriber, _) =
            RawClient::connect_ok(sub_addr, persistent_v5("refused-q2-sub", 600)).await;
        subscriber.subscribe_ok(1, "r/#", QoS::ExactlyOnce).await;
        await_route(minority_addr, &mut subscriber, "r/probe").await;
        let publisher_id = "refused-q2-pub";
        let (mut publisher, _) =
            RawClient::connect_ok(minority_addr, persistent_v5(publisher_id, 600)).await;
        publish_completed(&mut publisher, 1, "r/before").await;

        cluster.isolate(minority);
        eprintln!("cut node {minority} off");
        tokio::time::sleep(QUORUM_CONTACT).await;
        let bound = WRITE_TIMEOUT + Duration::from_secs(3);
        let pubrec = publisher
            .try_publish(QoS::ExactlyOnce, 2, "r/refused", b"refused", bound)
            .await
            .unwrap_or_else(|e| panic!("no PUBREC from the cut-off node within {bound:?}: {e}"));
        eprintln!("PUBREC from the cut-off node: {:?}", pubrec.reason_code);
        assert!(
            pubrec.reason_code.is_error(),
            "the cut-off node took a QoS 2 publish it cannot commit: {pubrec:?}"
        );
        // Released all the same, as paho-mqtt does: the cut-off node cannot
        // record it and closes, or says it does not hold it.
        match publisher.try_release(2, bound).await {
            Ok(pubcomp) => assert_eq!(
                pubcomp.reason_code,
                ReasonCode::PacketIdentifierNotFound,
                "PUBCOMP from the cut-off node for a refused publish"
            ),
            Err(e) => eprintln!("no PUBCOMP from the cut-off node: {e}"),
        }
        drop(publisher);

        // The client resends its PUBREL on its next connection
        // (MQTT-4.4.0-1), on the majority side.
        let (mut publisher, connack) =
            RawClient::connect_retrying(failover_addr, persistent_v5(publisher_id, 600), FAILOVER)
                .await;
        assert!(connack.session_present, "{connack:?}");
        let pubcomp = publisher
            .try_release(2, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("no PUBCOMP on the majority: {e}"));
        assert_eq!(
            pubcomp.reason_code,
            ReasonCode::PacketIdentifierNotFound,
            "PUBCOMP Success for a QoS 2 publish the store never took"
        );
        publish_completed(&mut publisher, 3, "r/after").await;
        cluster.heal();

        // Both messages taken, then a moment for anything late. The cut may
        // end the subscriber's connection (a write of its own was on its way
        // to the old leader): its session resumes.
        let mut received = BTreeSet::new();
        let deadline = Instant::now() + FAILOVER;
        loop {
            let wait = if received.len() < 2 {
                deadline.saturating_duration_since(Instant::now())
            } else {
                QUIET * 3
            };
            match subscriber.read(wait).await {
                Read::Packet(Packet::Publish(publish)) => {
                    subscriber.ack(&publish).await;
                    if &*publish.topic != "r/probe" {
                        received.insert(publish.topic.to_string());
                    }
                }
                Read::Packet(_) => {}
                Read::Nothing => break,
                Read::Closed(ended) => {
                    eprintln!("the subscriber's connection ended ({ended:?}); it reconnects");
                    let connect = persistent_v5("refused-q2-sub", 600);
                    (subscriber, _) =
                        RawClient::connect_retrying(sub_addr, connect, FAILOVER).await;
                }
            }
        }
        let expected: BTreeSet<String> = ["r/before", "r/after"].map(String::from).into();
        assert_eq!(received, expected);
    })
    .await;
}

/// Three nodes, each store and edge, with a proxy in front of each store
/// node (so that one can be cut off) and this file's short write timeout
/// and quorum contact bound.
fn partitionable_cluster() -> Cluster {
    Cluster::start_with(
        3,
        Options {
            store_proxies: true,
            cluster_toml: format!(
                "write_timeout_ms = {}\nquorum_contact_ms = {}",
                WRITE_TIMEOUT.as_millis(),
                QUORUM_CONTACT.as_millis()
            ),
            ..Options::default()
        },
    )
}

/// A QoS 2 flow that must complete with Success at each step.
async fn publish_completed(publisher: &mut RawClient, id: u16, topic: &str) {
    let pubrec = publisher
        .try_publish(QoS::ExactlyOnce, id, topic, topic.as_bytes(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("PUBREC {id}: {e}"));
    assert!(!pubrec.reason_code.is_error(), "PUBREC {id}: {pubrec:?}");
    let pubcomp = publisher
        .try_release(id, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("PUBCOMP {id}: {e}"));
    assert_eq!(pubcomp.reason_code, ReasonCode::Success, "PUBCOMP {id}");
}
