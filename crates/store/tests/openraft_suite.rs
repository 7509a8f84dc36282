//! Openraft's own storage conformance suite run against the RocksDB
//! `LogStore` and `StateMachine`, each case on a fresh database, plus the one
//! thing the suite cannot check: state from normal entries in a snapshot.

// The suite reports a failed case by panicking; setup failures do the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder, StorageError};
use rookery_store::db::Db;
use rookery_store::log_store::LogStore;
use rookery_store::machine::read_retained;
use rookery_store::proto::{Command, CommandBatch};
use rookery_store::state_machine::{Applied, StateMachine};
use rookery_store::{NodeId, StoreError, TypeConfig};
use tempfile::TempDir;
use tokio::sync::broadcast;

mod support;
use support::set_retained;

struct Opened {
    db: Arc<Db>,
    log_store: LogStore,
    state_machine: StateMachine,
    applied: broadcast::Receiver<Arc<Applied>>,
}

/// Opens a database, its log store and state machine under `dir`.
fn open(dir: &Path) -> Result<Opened, StoreError> {
    let db = Db::open(&dir.join("db"))?;
    let log_store = LogStore::new(db.clone())?;
    let (sender, applied) = broadcast::channel(16);
    let state_machine = StateMachine::new(db.clone(), dir.join("snapshots"), sender)?;
    Ok(Opened {
        db,
        log_store,
        state_machine,
        applied,
    })
}

/// Opens a fresh database in its own temporary directory per suite case.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::from(e).write())?;
        let opened = open(dir.path()).map_err(StoreError::write)?;
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

/// A plain test, not `#[tokio::test]`: the suite runs every case on a fresh
/// Tokio runtime of its own.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).unwrap();
}

fn normal(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 0, index),
        payload: EntryPayload::Normal(CommandBatch {
            now_ms: 1,
            commands,
        }),
    }
}

fn retained_topics(db: &Db) -> Vec<String> {
    read_retained(db, "#", 1)
        .unwrap()
        .into_iter()
        .map(|message| message.topic)
        .collect()
}

/// The suite applies only blank and membership entries and transfers a
/// snapshot without state records. Here normal entries change the state, and
/// installing the leader's snapshot replaces the follower's differing state.
#[tokio::test]
async fn a_snapshot_carries_state_from_normal_entries() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path()).unwrap();
    let mut follower = open(follower_dir.path()).unwrap();

    let replies = leader
        .state_machine
        .apply([normal(1, vec![set_retained("a/b"), set_retained("c/d")])])
        .await
        .unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].len(), 2, "one result per command");
    follower
        .state_machine
        .apply([
            normal(1, vec![set_retained("stale/topic")]),
            normal(2, vec![]),
        ])
        .await
        .unwrap();

    let built = leader
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 0, 1)));
    let Snapshot { meta, snapshot } = leader
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();

    let mut receiving = follower
        .state_machine
        .begin_receiving_snapshot()
        .await
        .unwrap();
    *receiving = *snapshot;
    follower
        .state_machine
        .install_snapshot(&meta, receiving)
        .await
        .unwrap();

    assert_eq!(retained_topics(&follower.db), ["a/b", "c/d"]);
    assert_eq!(
        follower.state_machine.applied_state().await.unwrap(),
        leader.state_machine.applied_state().await.unwrap(),
    );
    let installed = follower
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(installed.meta, meta);
    assert_eq!(installed.snapshot.get_ref(), built.snapshot.get_ref());

    // Watchers of the follower learn that the state was replaced.
    let mut last = None;
    while let Ok(applied) = follower.applied.try_recv() {
        last = Some(applied);
    }
    let last = last.expect("install publishes to watchers");
    assert!(last.reset);
    assert_eq!(last.log_index, 1);
}
