//! Routing between edges: a message published on one node reaches the
//! subscribers on the others, in order (MQTT 4.6), and a shared subscription
//! is balanced over its members cluster-wide, whichever edge they are on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rookery_codec::{Packet, QoS};
use rookery_testkit::{RawClient, Read, clean_v5, clean_v311};
use tokio::time::Instant;

use crate::harness::{Cluster, QUIET, TIMEOUT, within};
use crate::traffic::{ACK_WAIT, await_route, seq_of};

/// Three nodes form a cluster; a clean-session subscriber on node 2 receives,
/// in order (MQTT 4.6: per publisher and topic), all 100 QoS 1 messages
/// published on node 1, and a QoS 0 message too (delivered at QoS 0, the
/// lower of the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forms_and_routes_between_edges() {
    let cluster = Cluster::start(3);
    within(Duration::from_secs(90), async {
        let (mut subscriber, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v311("routed-sub")).await;
        subscriber.subscribe_amid_traffic(1, "t/#", QoS::AtLeastOnce).await;
        await_route(cluster.node(1).mqtt_addr(), &mut subscriber, "t/probe").await;

        let (mut publisher, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v311("routed-pub")).await;
        let sending = tokio::spawn(async move {
            for seq in 0..100u64 {
                let ack = publisher
                    .try_publish(
                        QoS::AtLeastOnce,
                        rookery_testkit::pid_for(seq),
                        "t/x",
                        seq.to_string().as_bytes(),
                        ACK_WAIT,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish {seq} on node 1: {e}"));
                assert_eq!(ack.reason_code.as_u8(), 0, "PUBACK of {seq}: {ack:?}");
            }
            publisher
        });

        let mut seqs = Vec::new();
        while seqs.len() < 100 {
            match subscriber.read(TIMEOUT).await {
                Read::Packet(Packet::Publish(p)) => {
                    subscriber.try_puback(&p).await.expect("PUBACK");
                    if p.topic == "t/x" {
                        assert_eq!(p.qos, QoS::AtLeastOnce, "{p:?}");
                        seqs.push(seq_of(&p).expect("a numbered payload"));
                    }
                }
                Read::Packet(_) => {}
                Read::Closed(why) => panic!("the subscriber's connection ended: {why}"),
                Read::Nothing => panic!(
                    "the subscriber on node 2 received {} of 100 messages, then nothing for {TIMEOUT:?}: {seqs:?}",
                    seqs.len()
                ),
            }
        }
        let mut publisher = sending.await.expect("the publisher");
        let expected: Vec<u64> = (0..100).collect();
        assert_eq!(seqs, expected, "received on node 2, in order");

        publisher
            .try_publish0("t/zero", b"qos0")
            .await
            .expect("publish at QoS 0");
        let zero = subscriber
            .read_until(TIMEOUT, "the QoS 0 message", |p| match p {
                Packet::Publish(p) if p.topic == "t/zero" => Some(p.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("QoS 0 from node 1 to node 2: {e}"));
        assert_eq!(zero.qos, QoS::AtMostOnce);
        assert_eq!(&zero.payload[..], b"qos0");
    })
    .await;
}

/// Shared subscriptions are balanced cluster-wide: three members of
/// `$share/g/s/#`, one on each node, share the 600 messages two publishers
/// (on nodes 1 and 3) send; each gets its share, 200 ± 20, and every message
/// goes to exactly one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_is_balanced_across_edges() {
    let cluster = Cluster::start(3);
    within(Duration::from_secs(120), async {
        let mut members = Vec::new();
        for node in 1..=3 {
            let addr = cluster.node(node).mqtt_addr();
            let (mut member, _) = RawClient::connect_ok(addr, clean_v5(&format!("member-{node}"))).await;
            member.subscribe_amid_traffic(1, "$share/g/s/#", QoS::AtLeastOnce).await;
            // A plain subscription made after the shared one: once it routes
            // from a node, that node has applied the shared one too (both
            // go through the store's log in order).
            member
                .subscribe_amid_traffic(2, &format!("probe/{node}"), QoS::AtMostOnce)
                .await;
            members.push(member);
        }
        for publishing in [1, 3] {
            for (i, member) in members.iter_mut().enumerate() {
                let from = cluster.node(publishing).mqtt_addr();
                await_route(from, member, &format!("probe/{}", i + 1)).await;
            }
        }

        let mut publishers = Vec::new();
        for node in [1, 3] {
            let addr = cluster.node(node).mqtt_addr();
            publishers.push(tokio::spawn(async move {
                let (mut publisher, _) =
                    RawClient::connect_ok(addr, clean_v5(&format!("share-pub-{node}"))).await;
                for seq in 0..300u64 {
                    let payload = format!("{node}-{seq}");
                    let ack = publisher
                        .try_publish(
                            QoS::AtLeastOnce,
                            rookery_testkit::pid_for(seq),
                            &format!("s/{node}"),
                            payload.as_bytes(),
                            ACK_WAIT,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("publish {payload} on node {node}: {e}"));
                    assert!(ack.reason_code.as_u8() < 0x80, "PUBACK of {payload}: {ack:?}");
                }
            }));
        }

        let total = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        for (i, mut member) in members.into_iter().enumerate() {
            let total = Arc::clone(&total);
            let stop = Arc::clone(&stop);
            receivers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    match member.read(Duration::from_millis(200)).await {
                        Read::Packet(Packet::Publish(p)) => {
                            member.try_puback(&p).await.expect("PUBACK");
                            if p.topic.starts_with("s/") {
                                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Read::Packet(_) => {}
                        Read::Closed(why) => panic!("member {} disconnected: {why}", i + 1),
                        Read::Nothing if stop.load(Ordering::Relaxed) => return got,
                        Read::Nothing => {}
                    }
                }
            }));
        }
        for publisher in publishers {
            publisher.await.expect("a publisher");
        }
        // Every message was acknowledged: wait for all 600 to arrive, then a
        // little longer for any extra delivery.
        let deadline = Instant::now() + TIMEOUT;
        while total.load(Ordering::Relaxed) < 600 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(QUIET).await;
        stop.store(true, Ordering::Relaxed);

        let mut counts = Vec::new();
        let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
        for receiver in receivers {
            let got = receiver.await.expect("a member");
            counts.push(got.len());
            for payload in got {
                *deliveries.entry(payload).or_default() += 1;
            }
        }
        eprintln!("messages per member (nodes 1, 2, 3): {counts:?}");
        let duplicated: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicated.is_empty(), "delivered to more than one member: {duplicated:?}");
        let missing: Vec<String> = [1, 3]
            .iter()
            .flat_map(|node| (0..300).map(move |seq| format!("{node}-{seq}")))
            .filter(|payload| !deliveries.contains_key(payload))
            .collect();
        assert!(missing.is_empty(), "{} messages reached no member: {missing:?}", missing.len());
        assert_eq!(counts.iter().sum::<usize>(), 600, "{counts:?}");
        for (i, count) in counts.iter().enumerate() {
            assert!(
                (180..=220).contains(count),
                "member {} (on node {}) got {count} of 600 messages; each should get 200 ± 20: {counts:?}",
                i + 1,
                i + 1
            );
        }
    })
    .await;
}
