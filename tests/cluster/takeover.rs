//! Session takeover across edges (MQTT-3.1.4-3): a client identifier
//! belongs to one connection in the whole cluster; a CONNECT with it on
//! another edge closes the old connection, with DISCONNECT 0x8E (Session
//! taken over) for a 5.0 client.

use std::time::Duration;

use rookery_codec::{Packet, ReasonCode};
use rookery_testkit::{RawClient, Read, clean_v5};

use crate::harness::{Cluster, QUIET, TIMEOUT, within};

/// MQTT-3.1.4-3 across edges: client X connected (5.0) on node 1 receives
/// DISCONNECT 0x8E and is closed when X connects on node 2; the new
/// connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_edges_closes_the_old_connection() {
    let cluster = Cluster::start(3);
    within(Duration::from_secs(60), async {
        let (mut first, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v5("X")).await;
        first.try_ping().await.expect("the first connection is up");
        let (mut second, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v5("X")).await;

        let before_close = first.expect_closed_within(TIMEOUT).await;
        match before_close.as_slice() {
            [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SessionTakenOver => {}
            other => panic!(
                "expected DISCONNECT 0x8E (Session taken over) and a close on node 1, got {other:?}"
            ),
        }

        // The old edge must not take the identifier back (no ping-pong).
        tokio::time::sleep(QUIET).await;
        match second.read(QUIET).await {
            Read::Nothing => {}
            other => panic!("the new connection on node 2 got {other:?}"),
        }
        second
            .try_ping()
            .await
            .unwrap_or_else(|e| panic!("the new connection on node 2: {e}"));
    })
    .await;
}
