//! Unit tests of the state machine's commands, time driven by the batches.

use super::*;
use crate::db::Db;
use crate::proto::Command;

fn batch(now_ms: u64, kinds: Vec<CommandKind>) -> CommandBatch {
    CommandBatch {
        now_ms,
        commands: kinds
            .into_iter()
            .map(|kind| Command { kind: Some(kind) })
            .collect(),
    }
}

#[test]
fn a_connect_creates_a_session_and_a_second_takes_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let connect = |edge: &str| {
        CommandKind::Connect(proto::Connect {
            client_id: "c1".into(),
            edge_id: edge.into(),
            expiry_interval_s: 60,
            ..proto::Connect::default()
        })
    };
    let mut events = Vec::new();
    let mut txn = Txn::new(&db);
    let first = apply_batch(&mut txn, 1, &batch(1_000, vec![connect("e1")]), &mut events).unwrap();
    db.raw().write(txn.into_batch().unwrap()).unwrap();
    let Some(ResultKind::Connected(first)) = &first[0].kind else {
        panic!("{first:?}")
    };
    assert!(!first.session_present);

    let mut txn = Txn::new(&db);
    let second = apply_batch(&mut txn, 2, &batch(2_000, vec![connect("e2")]), &mut events).unwrap();
    let Some(ResultKind::Connected(second)) = &second[0].kind else {
        panic!("{second:?}")
    };
    assert!(second.session_present);
    assert!(second.epoch > first.epoch);
    assert_eq!(second.previous_edge_id, "e1");
    assert!(events.contains(&Event::Edge {
        edge_id: "e1".into(),
        event: edge_event::Kind::SessionTakenOver(proto::SessionTakenOver {
            client_id: "c1".into(),
            epoch: first.epoch,
        }),
    }));
}
