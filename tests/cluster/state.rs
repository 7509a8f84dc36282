//! State the cluster keeps for every edge: retained messages set on one
//! edge and cleared on another, `$SYS/cluster/` figures, and the messages in
//! flight to a shared subscription's member when that member goes away.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rookery_codec::{Packet, Publish, QoS};
use rookery_testkit::{RawClient, Read, clean_v5, persistent_v5, publish_packet};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, Options, QUIET, TIMEOUT, within};
use crate::traffic::{ACK_WAIT, await_route, ranges, seq_of, unique_id};

/// Publishes a retained QoS 1 message on `topic` from a new client at
/// `addr` and checks its PUBACK.
async fn publish_retained(addr: SocketAddr, topic: &str, payload: &[u8]) {
    let (mut client, _) = RawClient::connect_ok(addr, clean_v5(&unique_id("retainer"))).await;
    let mut publish = publish_packet(topic, QoS::AtLeastOnce, 1, payload);
    publish.retain = true;
    client
        .try_send(Packet::Publish(publish))
        .await
        .unwrap_or_else(|e| panic!("retained PUBLISH at {addr}: {e}"));
    let ack = client
        .read_until(ACK_WAIT, "PUBACK", |p| match p {
            Packet::PubAck(ack) => Some(ack.clone()),
            _ => None,
        })
        .await
        .unwrap_or_else(|e| panic!("retained PUBLISH at {addr}: {e}"));
    assert!(
        ack.reason_code.as_u8() < 0x80,
        "PUBACK of the retained message at {addr}: {ack:?}"
    );
}

/// What a new subscriber to `topic` at `addr` receives within [`QUIET`] of
/// its SUBACK: the retained message, if there is one.
async fn retained_for_new_subscriber(addr: SocketAddr, topic: &str) -> Option<Publish> {
    let (mut client, _) = RawClient::connect_ok(addr, clean_v5(&unique_id("late"))).await;
    client
        .subscribe_amid_traffic(1, topic, QoS::AtLeastOnce)
        .await;
    let deadline = Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.read(left).await {
            Read::Packet(Packet::Publish(p)) if p.topic == topic => {
                client.try_puback(&p).await.expect("PUBACK");
                return Some(p);
            }
            Read::Packet(_) => {}
            Read::Closed(why) => panic!("the new subscriber at {addr}: {why}"),
            Read::Nothing => return None,
        }
    }
}

/// Three nodes (publishing `$SYS` every second): a retained QoS 1 message
/// published on node 1 is sent, with the RETAIN flag, to a new subscriber
/// on node 3; an empty retained message published on node 2 clears it, and
/// a new subscriber on node 3 then gets nothing. A subscriber on node 2 to
/// `$SYS/cluster/edges/count` sees the three edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_cluster_sys_are_seen_on_every_edge() {
    let cluster = Cluster::start_with(
        3,
        Options {
            extra_toml: "[broker]\nsys_interval_s = 1".into(),
            ..Options::default()
        },
    );
    within(Duration::from_secs(120), async {
        let topic = "r/kept";
        publish_retained(cluster.node(1).mqtt_addr(), topic, b"kept").await;
        // The retained message reaches node 3's replica a little after the
        // PUBACK: a new subscriber every QUIET until one gets it.
        let node3 = cluster.node(3).mqtt_addr();
        let started = Instant::now();
        let mut attempts = 0;
        let retained = loop {
            attempts += 1;
            if let Some(p) = retained_for_new_subscriber(node3, topic).await {
                break p;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{attempts} new subscribers on node 3 within {TIMEOUT:?}: none got the message retained on node 1"
            );
        };
        eprintln!(
            "retained message seen on node 3 by subscriber {attempts} after {:?}",
            started.elapsed()
        );
        assert!(retained.retain, "RETAIN flag on node 3: {retained:?}");
        assert_eq!(&retained.payload[..], b"kept", "{retained:?}");

        publish_retained(cluster.node(2).mqtt_addr(), topic, b"").await;
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match retained_for_new_subscriber(node3, topic).await {
                None => break,
                Some(p) => assert!(
                    started.elapsed() < TIMEOUT,
                    "{attempts} new subscribers on node 3 within {TIMEOUT:?} still got a retained message after node 2 cleared it: {p:?}"
                ),
            }
        }
        eprintln!(
            "retained message cleared on node 3 for subscriber {attempts} after {:?}",
            started.elapsed()
        );

        let (mut sys, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v5("sys-watcher")).await;
        sys.subscribe_amid_traffic(1, "$SYS/cluster/edges/count", QoS::AtMostOnce)
            .await;
        let mut seen = Vec::new();
        let deadline = Instant::now() + FAILOVER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sys.read(left).await {
                Read::Packet(Packet::Publish(p)) if p.topic == "$SYS/cluster/edges/count" => {
                    sys.try_puback(&p).await.expect("PUBACK");
                    let value = String::from_utf8_lossy(&p.payload).into_owned();
                    if value == "3" {
                        break;
                    }
                    seen.push(value);
                }
                Read::Packet(_) => {}
                Read::Closed(why) => panic!("the $SYS subscriber on node 2: {why}"),
                Read::Nothing => panic!(
                    "$SYS/cluster/edges/count on node 2 was not 3 within {FAILOVER:?}; values seen: {seen:?}"
                ),
            }
        }
    })
    .await;
}

/// Runs a shared-group member that acknowledges every message and records
/// the numbers of those on `sh/...`; the task ends with why its connection
/// closed.
fn acknowledging_member(
    mut member: RawClient,
) -> (Arc<Mutex<Vec<u64>>>, tokio::task::JoinHandle<String>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let got = Arc::clone(&got);
        tokio::spawn(async move {
            loop {
                match member.read(Duration::from_millis(100)).await {
                    Read::Packet(Packet::Publish(p)) => {
                        if p.topic.starts_with("sh/") {
                            let seq = seq_of(&p).expect("a numbered payload");
                            got.lock().expect("the member's numbers").push(seq);
                        }
                        if let Err(why) = member.try_puback(&p).await {
                            return why.to_string();
                        }
                    }
                    Read::Packet(_) | Read::Nothing => {}
                    Read::Closed(why) => return why.to_string(),
                }
            }
        })
    };
    (got, task)
}

/// Publishes the numbers in `seqs` at QoS 1 on `sh/x` and checks each PUBACK.
async fn publish_numbered(publisher: &mut RawClient, seqs: std::ops::Range<u64>, at: &str) {
    for seq in seqs {
        let ack = publisher
            .try_publish(
                QoS::AtLeastOnce,
                rookery_testkit::pid_for(seq),
                "sh/x",
                seq.to_string().as_bytes(),
                ACK_WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("publish {seq} on {at}: {e}"));
        assert_eq!(ack.reason_code.as_u8(), 0, "PUBACK of {seq}: {ack:?}");
    }
}

/// Reads a member's `sh/...` messages without acknowledging them until it and
/// the acknowledging member `others` have `total` between them, or nothing
/// more comes; returns their numbers.
async fn read_unacknowledged(
    member: &mut RawClient,
    others: &Mutex<Vec<u64>>,
    total: usize,
) -> BTreeSet<u64> {
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let others_count = others.lock().expect("the other member's numbers").len();
        if got.len() + others_count >= total || Instant::now() > deadline {
            return got;
        }
        match member.read(QUIET).await {
            Read::Packet(Packet::Publish(p)) if p.topic.starts_with("sh/") => {
                got.insert(seq_of(&p).expect("a numbered payload"));
            }
            Read::Packet(_) | Read::Nothing => {}
            Read::Closed(why) => {
                panic!("the member that does not acknowledge was disconnected: {why}")
            }
        }
    }
}

/// Connects each member to its node, subscribes it to `$share/g/sh/#` at
/// QoS 1, and waits until node `from` routes to it.
async fn join_shared_group<const N: usize>(
    cluster: &Cluster,
    from: SocketAddr,
    members: [(usize, rookery_codec::Connect); N],
) -> Vec<RawClient> {
    let mut joined = Vec::new();
    for (node, connect) in members {
        let addr = cluster.node(node).mqtt_addr();
        let probe = format!("probe/{}", connect.client_id);
        let (mut member, _) = RawClient::connect_ok(addr, connect).await;
        member
            .subscribe_amid_traffic(1, "$share/g/sh/#", QoS::AtLeastOnce)
            .await;
        // A plain subscription after the shared one: once it routes from
        // `from`, that node has applied the shared one too.
        member
            .subscribe_amid_traffic(2, &probe, QoS::AtMostOnce)
            .await;
        await_route(from, &mut member, &probe).await;
        joined.push(member);
    }
    joined
}

/// Waits until the acknowledging member B has every number in `all`, within
/// `limit`; panics naming what is missing and which of it A held.
async fn expect_all(
    b_got: &Mutex<Vec<u64>>,
    b_task: &tokio::task::JoinHandle<String>,
    all: &BTreeSet<u64>,
    a_held: &BTreeSet<u64>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let b_now: BTreeSet<u64> = b_got.lock().expect("B's numbers").iter().copied().collect();
        if b_now.is_superset(all) {
            return;
        }
        if Instant::now() > deadline || b_task.is_finished() {
            let missing: BTreeSet<u64> = all.difference(&b_now).copied().collect();
            let lost_from_a: BTreeSet<u64> = a_held.intersection(&missing).copied().collect();
            panic!(
                "B did not get every message within {limit:?} of A leaving: missing {}; \
                 of those, A had received without acknowledging {}; B's connection {}",
                ranges(&missing),
                ranges(&lost_from_a),
                if b_task.is_finished() {
                    "ended"
                } else {
                    "is up"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shared subscription `$share/g/sh/#` at QoS 1, clean sessions: member A
/// on node 1 reads its messages but never acknowledges them, member B on
/// node 2 acknowledges; 40 messages published on node 3 are split between
/// them. When A's connection drops (no DISCONNECT), the messages it never
/// acknowledged go to B: B ends up with all 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departing_shared_member_hands_its_unacknowledged_messages_to_the_others() {
    let cluster = Cluster::start(3);
    within(Duration::from_secs(120), async {
        let from = cluster.node(3).mqtt_addr();
        let mut members = join_shared_group(
            &cluster,
            from,
            [(1, clean_v5("member-a")), (2, clean_v5("member-b"))],
        )
        .await;
        let b = members.pop().expect("B");
        let mut a = members.pop().expect("A");

        // B acknowledges everything and records the numbers it receives.
        let (b_got, b_task) = acknowledging_member(b);

        let (mut publisher, _) = RawClient::connect_ok(from, clean_v5("share-pub")).await;
        publish_numbered(&mut publisher, 0..40, "node 3").await;

        // A reads (without acknowledging) until nothing more comes.
        let a_got = read_unacknowledged(&mut a, &b_got, 40).await;
        let b_before: BTreeSet<u64> = b_got.lock().expect("B's numbers").iter().copied().collect();
        eprintln!(
            "before A leaves: A has {} unacknowledged ({}), B has {}",
            a_got.len(),
            ranges(&a_got),
            ranges(&b_before)
        );
        assert!(
            !a_got.is_empty(),
            "member A on node 1 received none of the 40 messages (B: {}); the test needs A to hold some",
            ranges(&b_before)
        );

        // A goes away abruptly: its socket closes without a DISCONNECT.
        drop(a);

        let all: BTreeSet<u64> = (0..40).collect();
        expect_all(&b_got, &b_task, &all, &a_got, FAILOVER).await;
        let b_all = b_got.lock().expect("B's numbers").clone();
        eprintln!(
            "B received {} messages ({} duplicates) after A left",
            b_all.len(),
            b_all.len() - all.len()
        );
        b_task.abort();
    })
    .await;
}

/// MQTT 5.0 section 4.8.2, persistent members: A (on node 1, session expiry
/// one hour) reads its share of 40 messages without acknowledging them; B
/// (node 2, clean) acknowledges. A back within `shared_handoff_delay_s` gets
/// its copies again (DUP, MQTT-3.3.1-1) and B none of them; while A stays
/// away, new messages go to B only, and once the delay has passed A's
/// unacknowledged copies move to B too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_8_2_a_persistent_shared_member_that_stays_away_hands_its_copies_on() {
    let cluster = Cluster::start_with(
        3,
        Options {
            extra_toml: "[broker.limits]\nshared_handoff_delay_s = 4\n".into(),
            ..Options::default()
        },
    );
    within(Duration::from_secs(150), async {
        let from = cluster.node(3).mqtt_addr();
        let a_connect = persistent_v5("member-a", 3600);
        let mut members = join_shared_group(
            &cluster,
            from,
            [(1, a_connect.clone()), (2, clean_v5("member-b"))],
        )
        .await;
        let b = members.pop().expect("B");
        let mut a = members.pop().expect("A");
        let (b_got, b_task) = acknowledging_member(b);
        let (mut publisher, _) = RawClient::connect_ok(from, clean_v5("share-pub")).await;
        publish_numbered(&mut publisher, 0..40, "node 3").await;
        let a_got = read_unacknowledged(&mut a, &b_got, 40).await;
        assert!(
            !a_got.is_empty(),
            "A received none of the 40 messages; the test needs some"
        );

        // Away for less than the delay: A's copies wait for it.
        a.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut a, connack) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), a_connect.clone()).await;
        assert!(connack.session_present, "A's session resumes");
        let mut again = BTreeSet::new();
        while again.len() < a_got.len() {
            let p = a.expect_publish().await;
            assert!(
                p.dup,
                "MQTT-3.3.1-1: a copy A was sent before comes with DUP: {p:?}"
            );
            again.insert(seq_of(&p).expect("a numbered payload"));
        }
        assert_eq!(again, a_got, "A gets again what it had not acknowledged");
        let b_has: BTreeSet<u64> = b_got.lock().expect("B's numbers").iter().copied().collect();
        assert!(
            b_has.is_disjoint(&a_got),
            "B got copies of A's back within the delay: {}",
            ranges(&b_has.intersection(&a_got).copied().collect())
        );

        // Away for good: new messages go to B, A's copies after the delay.
        a.close().await;
        publish_numbered(&mut publisher, 40..60, "node 3").await;
        let all: BTreeSet<u64> = (0..60).collect();
        expect_all(&b_got, &b_task, &all, &a_got, FAILOVER).await;
        let b_all = b_got.lock().expect("B's numbers").clone();
        eprintln!(
            "A held {} ({}); B received {} messages, {} twice",
            a_got.len(),
            ranges(&a_got),
            b_all.len(),
            b_all.len() - all.len()
        );

        // A's session is still there, with nothing left of the group's.
        let (mut a, connack) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), a_connect).await;
        assert!(connack.session_present);
        match a.read(QUIET).await {
            Read::Packet(Packet::Publish(p)) => {
                panic!("A got a copy that was moved to B: {p:?}")
            }
            Read::Closed(why) => panic!("A's connection closed: {why}"),
            Read::Packet(_) | Read::Nothing => {}
        }
        b_task.abort();
    })
    .await;
}
