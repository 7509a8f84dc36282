//! What the probes report: whether this node is alive (`/healthz`) and
//! whether it can serve its role now (`/readyz`).
//!
//! Liveness fails only when the node cannot recover by itself: its store
//! replica's Raft core stopped on a storage error (a full disk, say). The
//! node then also exits non-zero (see `serve`), so that the orchestrator
//! restarts it; until then every client would be refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rookery_broker::EdgeProbe;
use rookery_store::StoreNode;
use serde::Serialize;

/// How long `/readyz` waits for an edge's check of the store's quorum.
const QUORUM_CHECK_WAIT: Duration = Duration::from_secs(2);

/// The node's state as the probes see it. Shared by `serve` (which fills
/// it in as the node starts and drains) and the HTTP listener.
#[derive(Debug, Default)]
pub struct Health {
    /// Every part of the node has started and its listeners are bound.
    started: AtomicBool,
    /// A drain began: the node takes no new work.
    draining: AtomicBool,
    /// Why the node cannot go on, once it cannot.
    failed: Mutex<Option<String>>,
    /// Weak: the store stops once the broker has let go of it, and must
    /// not wait for the probes.
    store: Mutex<Option<Weak<StoreNode>>>,
    /// Dropped when a drain begins: it holds the edge's store client.
    edge: Mutex<Option<EdgeProbe>>,
}

/// One check of a probe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was seen, in a few words.
    pub detail: String,
}

/// A probe's answer: `ok` when every check passed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub status: &'static str,
    pub checks: Vec<Check>,
}

impl Report {
    fn of(checks: Vec<Check>) -> Report {
        let ok = checks.iter().all(|check| check.ok);
        Report {
            status: if ok { "ok" } else { "fail" },
            checks,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// The store replica the probes look at (a node with the store role).
    pub fn watch_store(&self, store: &Arc<StoreNode>) {
        *lock(&self.store) = Some(Arc::downgrade(store));
    }

    /// The edge the probes look at (a node with the edge role).
    pub fn watch_edge(&self, edge: EdgeProbe) {
        *lock(&self.edge) = Some(edge);
    }

    fn store(&self) -> Option<Arc<StoreNode>> {
        lock(&self.store).as_ref().and_then(Weak::upgrade)
    }

    /// Every role has started and its listeners are bound.
    pub fn started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// A drain began: `/readyz` fails from now on, so that load balancers
    /// and Kubernetes stop sending new clients here.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        // Ready is false from now on whatever the edge says; letting its
        // store client go lets the store shut down without waiting.
        lock(&self.edge).take();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The node cannot go on: `/healthz` fails from now on.
    pub fn fail(&self, why: String) {
        lock(&self.failed).get_or_insert(why);
        lock(&self.edge).take();
    }

    /// `/healthz`: the runtime answers (this runs on it) and nothing has
    /// failed for good.
    pub fn liveness(&self) -> Report {
        let failed = lock(&self.failed).clone();
        let mut checks = vec![Check {
            name: "process",
            ok: failed.is_none(),
            detail: failed.unwrap_or_else(|| "running".into()),
        }];
        if let Some(store) = self.store() {
            checks.push(store_core(&store));
        }
        Report::of(checks)
    }

    /// `/readyz`: alive, started, not draining, and each role can serve: a
    /// store replica is a member of its group and knows a leader; an edge
    /// reaches the store's quorum.
    pub async fn readiness(&self) -> Report {
        let mut checks = self.liveness().checks;
        checks.push(if self.is_draining() {
            Check {
                name: "drain",
                ok: false,
                detail: "draining: shutting down".into(),
            }
        } else if self.started.load(Ordering::Acquire) {
            Check {
                name: "listeners",
                ok: true,
                detail: "bound".into(),
            }
        } else {
            Check {
                name: "listeners",
                ok: false,
                detail: "starting".into(),
            }
        });
        if self.is_draining() {
            return Report::of(checks);
        }
        if let Some(store) = self.store() {
            checks.push(store_membership(&store).await);
        }
        let edge = lock(&self.edge).clone();
        if let Some(edge) = edge {
            let reached = tokio::time::timeout(QUORUM_CHECK_WAIT, edge.reaches_store_quorum())
                .await
                .unwrap_or(false);
            checks.push(Check {
                name: "edge",
                ok: reached,
                detail: if reached {
                    "reaches the store's quorum".into()
                } else {
                    "cannot reach the store's quorum".into()
                },
            });
        }
        Report::of(checks)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the replica's Raft core still runs.
fn store_core(store: &StoreNode) -> Check {
    let metrics = store.raft().metrics().borrow().clone();
    match &metrics.running_state {
        Ok(()) => Check {
            name: "store_core",
            ok: true,
            detail: "running".into(),
        },
        Err(fatal) => Check {
            name: "store_core",
            ok: false,
            detail: format!("raft stopped: {fatal}"),
        },
    }
}

/// Whether the replica belongs to its group and knows the group's leader;
/// a leader must also still have its quorum (openraft 0.9 keeps a leader
/// that lost its majority in the leader state).
async fn store_membership(store: &StoreNode) -> Check {
    let metrics = store.raft().metrics().borrow().clone();
    if metrics.state.is_leader() {
        let confirmed = tokio::time::timeout(QUORUM_CHECK_WAIT, store.raft().ensure_linearizable())
            .await
            .is_ok_and(|answer| answer.is_ok());
        return Check {
            name: "store",
            ok: confirmed,
            detail: if confirmed {
                format!("leader with a quorum, term {}", metrics.current_term)
            } else {
                "leader without a quorum".into()
            },
        };
    }
    let member = metrics
        .membership_config
        .membership()
        .get_node(&store.node_id())
        .is_some();
    let (ok, detail) = match (member, metrics.current_leader) {
        (false, _) => (false, "not a member of the store group yet".to_owned()),
        (true, None) => (false, "no store leader known".to_owned()),
        (true, Some(leader)) => (
            true,
            format!("member; leader {leader}, term {}", metrics.current_term),
        ),
    };
    Check {
        name: "store",
        ok,
        detail,
    }
}
