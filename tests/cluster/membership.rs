//! Changing the store group of a running cluster: a node added to it (it
//! joins as a learner, then becomes a voter) and removed again with
//! `rookery cluster remove`, while a QoS 1 stream between two other edges
//! keeps flowing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rookery_codec::{Packet, QoS};
use rookery_testkit::{RawClient, clean_v5};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, Roles, TIMEOUT, within};
use crate::traffic::{ACK_WAIT, Publisher, Stream, Subscriber, await_route, ranges};

/// Runs `rookery cluster --store STORE ARGS...`; its exit status and its
/// stdout and stderr together.
pub(crate) async fn admin(store: SocketAddr, args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .arg("cluster")
            .arg("--store")
            .arg(store.to_string())
            .args(&args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("run rookery cluster {args:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .expect("the admin command's thread")
}

/// The voters that `rookery cluster status` at `store` lists (`voter N at
/// ADDR` lines), and its whole output.
async fn voters(store: SocketAddr) -> (BTreeSet<u64>, String) {
    let (ok, text) = admin(store, &["status"]).await;
    let voters = if ok {
        text.lines()
            .filter_map(|line| line.strip_prefix("voter "))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    } else {
        BTreeSet::new()
    };
    (voters, text)
}

/// Polls `rookery cluster status` at `store` until `done` holds for its
/// voters, for up to [`FAILOVER`]; panics with the last output after that.
async fn await_voters(store: SocketAddr, what: &str, done: impl Fn(&BTreeSet<u64>) -> bool) {
    let started = Instant::now();
    loop {
        let (voters, text) = voters(store).await;
        if done(&voters) {
            eprintln!(
                "{what} after {:?} (status at {store}):\n{text}",
                started.elapsed()
            );
            return;
        }
        if started.elapsed() > FAILOVER {
            panic!("not {what} within {FAILOVER:?}; last status at {store}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `subscriber` has `more` distinct numbers beyond what it had:
/// the stream flows.
async fn await_flow(subscriber: &Subscriber, more: usize, when: &str) {
    let before = subscriber.distinct_count();
    assert!(
        subscriber
            .wait_until(TIMEOUT, |r| r.distinct().len() >= before + more)
            .await,
        "{when}: the stream stopped; {} messages received before, {} after {TIMEOUT:?}; {:?}",
        before,
        subscriber.distinct_count(),
        subscriber.received().errors
    );
}

/// Three nodes run a QoS 1 stream from node 1 to a subscriber on node 2; a
/// fourth node (store and edge) started with the same seeds joins the
/// running group and `rookery cluster status` lists it as a voter; `rookery
/// cluster remove 4` takes it out again (exit status 0, no longer listed);
/// the stream never stops and every acknowledged message arrives; after
/// node 4 is stopped the three nodes still route QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_node_joins_a_running_cluster_and_is_removed_without_downtime() {
    let mut cluster = Cluster::start(3);
    within(Duration::from_secs(180), async {
        let store1 = cluster.node(1).store_addr();
        let sub_addr = cluster.node(2).mqtt_addr();
        let (subscriber, _) = Subscriber::persistent(
            sub_addr,
            "membership-sub",
            "m",
            cluster.node(1).mqtt_addr(),
            "m/stream",
            vec![sub_addr],
        )
        .await;
        let publisher = Publisher::spawn(Stream {
            addr: cluster.node(1).mqtt_addr(),
            topic: "m/stream".into(),
            count: None,
            pace: Duration::from_millis(10),
            reconnect: true,
        });
        await_flow(&subscriber, 20, "before node 4 joins").await;

        let added = tokio::task::block_in_place(|| cluster.add_node(Roles::Both));
        assert_eq!(added, 4, "the new node's index");
        let store4 = cluster.node(4).store_addr();
        await_voters(store1, "node 4 a voter", |v| {
            *v == BTreeSet::from([1, 2, 3, 4])
        })
        .await;
        await_flow(&subscriber, 20, "after node 4 joined").await;

        let (ok, text) = admin(store1, &["remove", "4"]).await;
        assert!(ok, "rookery cluster --store {store1} remove 4 failed:\n{text}");
        eprintln!("remove 4: {text}");
        for store in [store1, cluster.node(2).store_addr()] {
            await_voters(store, "node 4 removed", |v| *v == BTreeSet::from([1, 2, 3])).await;
        }
        let (_, text) = admin(store1, &["status"]).await;
        assert!(
            !text.lines().any(|l| l.starts_with("learner 4 ")),
            "node 4 is still a learner:\n{text}"
        );
        await_flow(&subscriber, 20, "after node 4 was removed").await;

        let status = tokio::task::block_in_place(|| cluster.node_mut(4).sigterm());
        eprintln!("node 4 (store {store4}) stopped with SIGTERM: {status:?}");
        await_flow(&subscriber, 20, "after node 4 was stopped").await;

        let published = publisher.stop().await;
        let acked: BTreeSet<u64> = published.acked.iter().map(|(seq, _)| *seq).collect();
        let arrived = subscriber
            .wait_until(TIMEOUT, |r| acked.is_subset(&r.distinct()))
            .await;
        let received = subscriber.stop().await;
        let missing: BTreeSet<u64> = acked.difference(&received.distinct()).copied().collect();
        eprintln!(
            "published: {} acknowledged, {} refused, {} unconfirmed, {} connections; errors {:?}",
            acked.len(),
            published.refused.len(),
            published.unconfirmed.len(),
            published.connections,
            published.errors
        );
        assert!(
            arrived && missing.is_empty(),
            "acknowledged messages that never reached the subscriber on node 2: {}; subscriber errors {:?}",
            ranges(&missing),
            received.errors
        );
        assert!(
            published.refused.is_empty() && published.unconfirmed.is_empty(),
            "the stream had downtime: refused {:?}, unconfirmed {:?}, errors {:?}",
            published.refused,
            published.unconfirmed,
            published.errors
        );

        // The three remaining nodes still serve QoS 1 across edges.
        let (mut last, _) =
            RawClient::connect_ok(cluster.node(3).mqtt_addr(), clean_v5("membership-last")).await;
        last.subscribe_amid_traffic(1, "after/#", QoS::AtLeastOnce).await;
        await_route(cluster.node(1).mqtt_addr(), &mut last, "after/probe").await;
        let (mut sender, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v5("membership-send")).await;
        let ack = sender
            .try_publish(QoS::AtLeastOnce, 1, "after/x", b"still here", ACK_WAIT)
            .await
            .unwrap_or_else(|e| panic!("QoS 1 on node 1 after node 4 left: {e}"));
        assert_eq!(ack.reason_code.as_u8(), 0, "PUBACK after node 4 left: {ack:?}");
        let got = last
            .read_until(TIMEOUT, "the message published after node 4 left", |p| match p {
                Packet::Publish(p) if p.topic == "after/x" => Some(p.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("node 3 after node 4 left: {e}"));
        assert_eq!(&got.payload[..], b"still here");
        last.try_puback(&got).await.expect("PUBACK");
    })
    .await;
}
