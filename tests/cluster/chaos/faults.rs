//! Inflicts the nemesis's planned faults on a running cluster, one at a
//! time: resolves the target, does it, holds it, undoes it, records it,
//! and waits for the store group to agree on a leader again.

use std::time::Duration;

use rookery_chaos::history::Event;
use rookery_chaos::nemesis::{FaultKind, PlannedFault};

use super::clients::{Edges, Recorder};
use crate::harness::Cluster;

/// The store nodes (both roles) and the edge-only node of the chaos
/// cluster.
pub const STORE_NODES: [usize; 3] = [1, 2, 3];
pub const EDGE_ONLY: usize = 4;
pub const ALL_NODES: [usize; 4] = [1, 2, 3, 4];

/// What a fault is done to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Node(usize),
    Calls { from: usize, to: usize },
}

/// Inflicts `fault`, holds it, undoes it; returns once the store group has
/// a leader every running store node names.
pub async fn inflict(
    cluster: &mut Cluster,
    edges: &Edges,
    recorder: &Recorder,
    fault: &PlannedFault,
) {
    let target = resolve(cluster, fault).await;
    let at = recorder.now();
    let hold = Duration::from_millis(fault.hold_ms);
    eprintln!(
        "chaos: {:>7.1} s  {} {} for {:.1} s",
        at as f64 / 1000.0,
        fault.kind,
        describe(target),
        hold.as_secs_f64()
    );
    match (fault.kind, target) {
        (FaultKind::Kill | FaultKind::KillLeader | FaultKind::KillFollowed, Target::Node(i)) => {
            edges.set(i, None);
            cluster.node_mut(i).kill9();
        }
        (FaultKind::PausePastLease | FaultKind::PausePastElection, Target::Node(i)) => {
            edges.set(i, None);
            cluster.node(i).pause();
        }
        (FaultKind::IsolateVoter | FaultKind::IsolateLeader, Target::Node(i)) => cluster.isolate(i),
        (FaultKind::CutEdge, Target::Node(i)) => {
            for store in STORE_NODES {
                cluster.block_calls(i, store);
            }
        }
        (FaultKind::OneWay, Target::Calls { from, to }) => cluster.block_calls(from, to),
        (kind, target) => unreachable!("{kind} planned against {target:?}"),
    }
    tokio::time::sleep(hold).await;
    match (fault.kind, target) {
        (FaultKind::Kill | FaultKind::KillLeader | FaultKind::KillFollowed, Target::Node(i)) => {
            // Restarting blocks while the node starts; other tasks go on.
            tokio::task::block_in_place(|| cluster.node_mut(i).restart());
            edges.set(i, cluster.node(i).listener("tcp"));
        }
        (FaultKind::PausePastLease | FaultKind::PausePastElection, Target::Node(i)) => {
            cluster.node(i).resume();
            edges.set(i, cluster.node(i).listener("tcp"));
        }
        _ => cluster.heal(),
    }
    recorder.record(Event::Fault {
        at,
        until: Some(recorder.now()),
        kind: fault.kind.name().to_owned(),
        target: describe(target),
        // Every node of the chaos cluster is an edge, named `n{i}`.
        edges: vec![match target {
            Target::Node(i) | Target::Calls { from: i, .. } => format!("n{i}"),
        }],
    });
    cluster.leader().await;
}

async fn resolve(cluster: &Cluster, fault: &PlannedFault) -> Target {
    let any = |candidates: &[usize]| Target::Node(fault.choose(candidates).unwrap_or(1));
    match fault.kind {
        FaultKind::Kill | FaultKind::PausePastLease | FaultKind::PausePastElection => {
            any(&ALL_NODES)
        }
        FaultKind::KillLeader | FaultKind::IsolateLeader => Target::Node(cluster.leader().await),
        FaultKind::KillFollowed => match cluster.followed_store(EDGE_ONLY) {
            Some(i) => Target::Node(i),
            None => any(&STORE_NODES),
        },
        FaultKind::IsolateVoter => any(&STORE_NODES),
        FaultKind::CutEdge => Target::Node(EDGE_ONLY),
        FaultKind::OneWay => {
            let pairs = [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)];
            let (from, to) = fault.choose(&pairs).unwrap_or((1, 2));
            Target::Calls { from, to }
        }
    }
}

fn describe(target: Target) -> String {
    match target {
        Target::Node(i) => format!("node {i}"),
        Target::Calls { from, to } => format!("node {from} -> node {to}"),
    }
}
