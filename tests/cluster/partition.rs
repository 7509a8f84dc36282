//! A store minority cut off from the majority by the proxies in front of the
//! store nodes (node processes and MQTT listeners stay up). The guarantee:
//! the minority never acknowledges a QoS 1/2 publish it cannot commit; it
//! refuses it with a reason code within `cluster.write_timeout_ms`, keeps
//! QoS 0 flowing between its own clients, and nothing the majority
//! acknowledged is lost.

use std::time::Duration;

use rookery_codec::{Packet, QoS};
use rookery_testkit::{RawClient, clean_v5};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, Options, TIMEOUT, within};
use crate::traffic::{Publisher, Stream, Subscriber, ranges};

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
    let cluster = Cluster::start_with(
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
    );
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
