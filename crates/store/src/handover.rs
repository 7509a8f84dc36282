//! Handing the leadership to another voter, for a planned stop (a drain) or
//! an operator's `TransferLeader`.
//!
//! Openraft 0.9 has no leadership transfer (0.10 has), so this does the
//! nearest thing it allows, Raft's own recipe (the thesis's TimeoutNow):
//!
//! 1. the leader stops taking writes ([`Writer::close`]): each is refused
//!    before it reaches Raft, so its edge sends it again to the next leader
//!    (nothing ambiguous, nothing applied twice);
//! 2. it lets every write it took commit ([`Writer::settled`]);
//! 3. it waits until the chosen voter holds its whole log;
//! 4. it asks that voter to start an election now (`Raft.TimeoutNow`).
//!
//! A voter refuses votes while its leader lease (`election_timeout_max`
//! since it last heard from the leader) runs, and openraft offers no way to
//! end it early. The leader's own vote is not renewed by its heartbeats,
//! though: once it has led for longer than the lease, it grants the vote,
//! and with the candidate's own that is a majority of three voters (or two).
//! With more voters the leader first stops its heartbeats and lets the
//! others' leases run out (about `election_timeout_max`, during which no
//! write is taken) before the election.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics};
use tokio::time::Instant;

use crate::proto::{TimeoutNowRequest, TimeoutNowResponse, raft_client::RaftClient};
use crate::service::NodeHandles;
use crate::writer::Writer;
use crate::{NodeId, Raft};

/// Added to the leader lease before counting on it having run out: the
/// followers measured it from a little after the leader's last message.
const LEASE_MARGIN: Duration = Duration::from_millis(100);

/// The bound on one TimeoutNow call.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause before asking the chosen voter again after it refused.
const ASK_AGAIN: Duration = Duration::from_millis(20);

/// When this node became leader (of which term), and the lock that lets one
/// hand-over run at a time.
#[derive(Debug, Default)]
pub struct Leadership {
    since: Mutex<Option<(u64, Instant)>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Leadership {
    /// Records when this node became leader, from its Raft metrics; ends
    /// when Raft stops.
    pub(crate) async fn follow(self: std::sync::Arc<Self>, raft: Raft) {
        let mut watch = raft.metrics();
        loop {
            {
                let metrics = watch.borrow_and_update();
                let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
                if metrics.state.is_leader() {
                    let term = metrics.current_term;
                    if since.is_none_or(|(led, _)| led != term) {
                        *since = Some((term, Instant::now()));
                    }
                } else {
                    *since = None;
                }
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    }

    /// How long this node has led in `term`, if it leads in it.
    fn leading_for(&self, term: u64) -> Option<Duration> {
        let since = *self.since.lock().unwrap_or_else(PoisonError::into_inner);
        since
            .filter(|(led, _)| *led == term)
            .map(|(_, at)| at.elapsed())
    }
}

/// A hand-over that happened: who leads now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOver {
    /// The new leader.
    pub leader_id: NodeId,
    /// Its store address.
    pub leader_address: String,
    /// The term it leads in.
    pub term: u64,
    /// From the call to the new leader known here.
    pub took: Duration,
}

/// Why the leadership was not handed over. This node takes writes again
/// (unless it was closed before, as when it drains).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOverError {
    /// This node does not lead; the leader it knows of.
    #[error("this node does not lead (the leader is {})", .leader.map_or("unknown".to_owned(), |id| format!("node {id}")))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The group has no other voter.
    #[error("the group has no other voter to hand the leadership to")]
    NoOtherVoter,
    /// The node asked for is not a voter of the group.
    #[error("node {0} is not a voter of the group")]
    NotAVoter(NodeId),
    /// The writes this node took did not all reach an outcome in time.
    #[error("the writes this node took did not commit within {0:?}")]
    Unsettled(Duration),
    /// The chosen voter did not hold the whole log in time.
    #[error("node {node} did not catch up with the log within {within:?}")]
    Behind {
        /// The voter.
        node: NodeId,
        /// The bound.
        within: Duration,
    },
    /// The chosen voter did not start an election.
    #[error("node {node} did not start an election: {reason}")]
    NotStarted {
        /// The voter.
        node: NodeId,
        /// Its answer, or why it could not be asked.
        reason: String,
    },
    /// No other node was known to lead in time (an election may still end).
    #[error("no new leader was known within {0:?}")]
    NoNewLeader(Duration),
}

/// Takes writes again when dropped, unless the writer was closed already.
struct ReopenOnDrop<'a> {
    writer: &'a Writer,
    reopen: bool,
}

impl Drop for ReopenOnDrop<'_> {
    fn drop(&mut self) {
        if self.reopen {
            self.writer.open();
        }
    }
}

/// Sends heartbeats again when dropped, if they were stopped.
struct HeartbeatsOnDrop<'a> {
    raft: &'a Raft,
    stopped: bool,
}

impl Drop for HeartbeatsOnDrop<'_> {
    fn drop(&mut self) {
        if self.stopped {
            self.raft.runtime_config().heartbeat(true);
        }
    }
}

/// Hands this node's leadership to voter `to` (`None`: the voter furthest
/// along the log), within `within`. See the module's description.
pub async fn hand_over(
    node: &NodeHandles,
    to: Option<NodeId>,
    within: Duration,
) -> Result<HandedOver, HandOverError> {
    let started = Instant::now();
    let deadline = started + within;
    let _one = node.leadership.one_at_a_time.lock().await;
    let metrics = node.raft.metrics().borrow().clone();
    let me = metrics.id;
    if !metrics.state.is_leader() {
        return Err(HandOverError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    let term = metrics.current_term;
    let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let target = match to {
        Some(id) if id == me => return Ok(leader_of(&metrics, started)),
        Some(id) if voters.contains(&id) => id,
        Some(id) => return Err(HandOverError::NotAVoter(id)),
        None => furthest_voter(&metrics, &voters).ok_or(HandOverError::NoOtherVoter)?,
    };
    let Some(address) = metrics
        .membership_config
        .membership()
        .get_node(&target)
        .map(|node| node.addr.clone())
    else {
        return Err(HandOverError::NotAVoter(target));
    };
    tracing::info!(
        from = me,
        to = target,
        term,
        "handing the store leadership over"
    );

    let _reopen = ReopenOnDrop {
        writer: &node.writer,
        reopen: !node.writer.is_closed(),
    };
    node.writer.close();
    if tokio::time::timeout_at(deadline, node.writer.settled())
        .await
        .is_err()
    {
        return Err(HandOverError::Unsettled(within));
    }

    // The election needs a majority: the candidate, this node once its own
    // vote is older than the lease, and with more than three voters others
    // whose leases must run out first.
    let lease = Duration::from_millis(node.raft.config().election_timeout_max) + LEASE_MARGIN;
    let majority = voters.len() / 2 + 1;
    let _heartbeats = if majority > 2 {
        node.raft.runtime_config().heartbeat(false);
        sleep_until_or(Instant::now() + lease, deadline).await;
        HeartbeatsOnDrop {
            raft: &node.raft,
            stopped: true,
        }
    } else {
        if let Some(led) = node.leadership.leading_for(term)
            && led < lease
        {
            sleep_until_or(Instant::now() + (lease - led), deadline).await;
        }
        HeartbeatsOnDrop {
            raft: &node.raft,
            stopped: false,
        }
    };

    let last_log_index = node.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let mut watch = node.raft.metrics();
    let caught_up = tokio::time::timeout_at(
        deadline,
        watch.wait_for(|m| matched_index(m, target) >= last_log_index),
    )
    .await
    .is_ok_and(|result| result.is_ok());
    if !caught_up {
        return Err(HandOverError::Behind {
            node: target,
            within,
        });
    }

    let request = TimeoutNowRequest {
        term,
        leader_id: me,
        last_log_index,
    };
    loop {
        match ask_to_elect(node, &address, request).await {
            Ok(()) => break,
            Err(reason) if Instant::now() + ASK_AGAIN >= deadline => {
                return Err(HandOverError::NotStarted {
                    node: target,
                    reason,
                });
            }
            Err(reason) => {
                tracing::debug!(to = target, %reason, "the voter did not start an election yet");
                tokio::time::sleep(ASK_AGAIN).await;
            }
        }
    }

    let elected = tokio::time::timeout_at(
        deadline,
        watch.wait_for(|m| m.current_leader.is_some_and(|leader| leader != me)),
    )
    .await
    .is_ok_and(|result| result.is_ok());
    if !elected {
        return Err(HandOverError::NoNewLeader(within));
    }
    let handed = leader_of(&watch.borrow(), started);
    metrics::counter!("rookery_store_leader_handovers_total").increment(1);
    metrics::histogram!("rookery_store_leader_handover_seconds").record(handed.took.as_secs_f64());
    tracing::info!(
        from = me,
        to = handed.leader_id,
        term = handed.term,
        took_ms = handed.took.as_millis() as u64,
        "the store leadership was handed over"
    );
    Ok(handed)
}

/// Sleeps until `until`, or `deadline` if that is earlier.
async fn sleep_until_or(until: Instant, deadline: Instant) {
    tokio::time::sleep_until(until.min(deadline)).await;
}

/// The leader `metrics` name, as a hand-over's outcome.
fn leader_of(metrics: &RaftMetrics<NodeId, BasicNode>, started: Instant) -> HandedOver {
    let leader_id = metrics.current_leader.unwrap_or(metrics.id);
    HandedOver {
        leader_id,
        leader_address: metrics
            .membership_config
            .membership()
            .get_node(&leader_id)
            .map(|node| node.addr.clone())
            .unwrap_or_default(),
        term: metrics.current_term,
        took: started.elapsed(),
    }
}

/// The log index the leader's replication to `node` has matched.
fn matched_index(metrics: &RaftMetrics<NodeId, BasicNode>, node: NodeId) -> u64 {
    metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&node).copied().flatten())
        .map_or(0, |log_id| log_id.index)
}

/// The voter other than this node that the leader's replication has taken
/// furthest along the log (the lowest id on a tie).
fn furthest_voter(
    metrics: &RaftMetrics<NodeId, BasicNode>,
    voters: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .filter(|voter| *voter != metrics.id)
        .max_by_key(|voter| (matched_index(metrics, *voter), std::cmp::Reverse(*voter)))
}

/// Asks the voter at `address` to start an election now.
async fn ask_to_elect(
    node: &NodeHandles,
    address: &str,
    request: TimeoutNowRequest,
) -> Result<(), String> {
    let channel = node.channels.get(address).map_err(|e| e.to_string())?;
    let mut client = RaftClient::new(channel);
    match tokio::time::timeout(CALL_TIMEOUT, client.timeout_now(request)).await {
        Ok(Ok(reply)) if reply.get_ref().refused.is_empty() => Ok(()),
        Ok(Ok(reply)) => Err(reply.into_inner().refused),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The chosen voter's side of a hand-over: starts an election if the
/// request comes from the leader it follows, in its term, and it holds the
/// log the leader had.
pub(crate) async fn timeout_now(raft: &Raft, request: TimeoutNowRequest) -> TimeoutNowResponse {
    let refused = |reason: String| TimeoutNowResponse { refused: reason };
    let metrics = raft.metrics().borrow().clone();
    if !metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|voter| voter == metrics.id)
    {
        return refused("this node is not a voter".into());
    }
    if metrics.current_term != request.term || metrics.current_leader != Some(request.leader_id) {
        return refused(format!(
            "this node follows {:?} in term {}, not node {} in term {}",
            metrics.current_leader, metrics.current_term, request.leader_id, request.term
        ));
    }
    let last = metrics.last_log_index.unwrap_or(0);
    if last < request.last_log_index {
        return refused(format!(
            "this node holds the log up to {last}, not {}",
            request.last_log_index
        ));
    }
    match raft.trigger().elect().await {
        Ok(()) => {
            tracing::info!(
                from = request.leader_id,
                term = request.term,
                "the leader hands over: starting an election"
            );
            TimeoutNowResponse::default()
        }
        Err(fatal) => refused(fatal.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_counts_only_the_term_it_led() {
        let leadership = Leadership::default();
        assert_eq!(leadership.leading_for(3), None);
        *leadership.since.lock().unwrap() = Some((3, Instant::now()));
        assert!(leadership.leading_for(3).is_some());
        assert_eq!(leadership.leading_for(4), None);
    }
}
