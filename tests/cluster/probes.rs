//! `/readyz` on a cluster (issue 16): a node is ready only while it can
//! serve its role. A node whose peers are gone (no store quorum) turns
//! unready, while `/healthz` stays ok (a restart would not help it), and is
//! ready again once its peers are back.

use std::net::SocketAddr;
use std::time::Duration;

use rookery_testkit::{http_get, http_status};
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER};

/// Polls `path` at `http` until it answers `status`; panics with the last
/// answer after [`FAILOVER`].
async fn await_status(http: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let answer = http_get(http, path)
            .await
            .unwrap_or_else(|error| error.to_string());
        if http_status(&answer) == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{path} at {http} did not answer {status} within {FAILOVER:?}; last:\n{answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_node_without_its_store_quorum_is_unready_but_live_until_the_quorum_is_back() {
    let mut cluster = Cluster::start(3);
    let http = |cluster: &Cluster, i: usize| {
        cluster
            .node(i)
            .listener("metrics")
            .expect("the node's HTTP listener")
    };
    for i in 1..=3 {
        await_status(http(&cluster, i), "/readyz", 200).await;
    }

    cluster.node_mut(2).kill9();
    cluster.node_mut(3).kill9();
    let unready = await_status(http(&cluster, 1), "/readyz", 503).await;
    assert!(unready.contains(r#""ok":false"#), "{unready}");
    let live = http_get(http(&cluster, 1), "/healthz").await.unwrap();
    assert_eq!(http_status(&live), 200, "{live}");

    cluster.restart(&[2, 3]);
    for i in 1..=3 {
        await_status(http(&cluster, i), "/readyz", 200).await;
    }
}
