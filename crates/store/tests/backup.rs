//! A backup of a store replica restored into a new group: the restored node
//! alone is its leader, with the backup's state, takes new writes, and a
//! node that joins receives the state as a snapshot (the log before the
//! restore is gone).

// Test helpers outside #[test] functions: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rookery_store::backup::{BackupError, backup, restore};
use rookery_store::inspect::retained_message;
use rookery_store::proto::{self, Command, command::Kind};
use rookery_store::{StoreConfig, StoreNode};

mod support;
use support::set_retained;

const WAIT: Duration = Duration::from_secs(20);

fn config(id: u64, dir: &Path, listen: SocketAddr) -> StoreConfig {
    let mut config = StoreConfig::new(id, dir.to_path_buf(), listen);
    config.tick_interval = None;
    config
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(client_id: &str) -> Command {
    Command {
        kind: Some(Kind::Connect(proto::Connect {
            client_id: client_id.into(),
            edge_id: "edge-1".into(),
            expiry_interval_s: 3600,
            protocol_version: 5,
            ..proto::Connect::default()
        })),
    }
}

async fn await_leader(node: &StoreNode) {
    let id = node.node_id();
    tokio::time::timeout(
        WAIT,
        node.raft()
            .metrics()
            .wait_for(|m| m.current_leader == Some(id) && m.state.is_leader()),
    )
    .await
    .expect("the node leads")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_a_new_group_that_others_join() {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));

    // A single-voter group with a session and a retained message.
    let original = StoreNode::start(config(1, &dir.path().join("n1"), listen))
        .await
        .unwrap();
    original.initialize_single().await.unwrap();
    await_leader(&original).await;
    original
        .write(vec![connect("c1"), set_retained("kept/1")])
        .await
        .unwrap();
    let taken = backup(original.local_db(), 1, &dir.path().join("backup"), 7).unwrap();
    assert!(taken.applied_index > 0);
    assert_eq!(taken.voters, vec![1]);
    assert!(matches!(
        backup(original.local_db(), 1, &dir.path().join("backup"), 7),
        Err(BackupError::Exists(_))
    ));
    original.shutdown().await;

    // Restored as node 5 at another address.
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let data = dir.path().join("restored");
    let restored = restore(&dir.path().join("backup"), &data, 5, &address).unwrap();
    assert_eq!(restored.backup, taken);
    assert_eq!((restored.sessions, restored.retained), (1, 1));
    let leader = StoreNode::start(config(5, &data, SocketAddr::from(([127, 0, 0, 1], port))))
        .await
        .unwrap();
    await_leader(&leader).await;
    assert!(
        retained_message(leader.local_db(), "kept/1", 0)
            .unwrap()
            .is_some()
    );
    let session = rookery_store::machine::read_session(leader.local_db(), "c1").unwrap();
    assert!(session.session.is_some(), "the session was restored");
    // The new group commits.
    let written = leader.write(vec![set_retained("new/1")]).await.unwrap();
    assert!(written.log_index > taken.applied_index);

    // A fresh node joins as a learner and gets everything.
    let joiner = StoreNode::start(config(6, &dir.path().join("n6"), listen))
        .await
        .unwrap();
    leader
        .raft()
        .add_learner(6, openraft::BasicNode::new(joiner.address()), true)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let has = |topic| {
            retained_message(joiner.local_db(), topic, 0)
                .unwrap()
                .is_some()
        };
        if has("kept/1") && has("new/1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the joined node did not get the restored state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        joiner.snapshots_installed(),
        1,
        "the state came as a snapshot"
    );
    joiner.shutdown().await;
    leader.shutdown().await;
}
