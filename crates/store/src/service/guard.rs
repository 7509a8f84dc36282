//! What a membership change must pass before it is proposed: the caller's
//! admin credential, and, after the change, a majority of voters that
//! replicate from the leader now. A change that breaks either is refused
//! with a status naming why, counted in
//! `rookery_store_membership_refused_total{reason}` and logged once per
//! reason.
//!
//! Why the majority check: openraft proposes a voter change as a joint
//! configuration that needs a quorum of the old and of the new voters. A
//! new voter set whose majority cannot be reached never commits, and the
//! group, on restart too, waits for nodes that will never answer.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics};
use tokio::time::Instant;
use tonic::{Request, Status};

use super::NodeHandles;
use crate::NodeId;
use crate::network::Channels;
use crate::proto::{Member, StatusRequest, admin_client::AdminClient};
use crate::security::ClusterSecurity;

/// How long the voters a change keeps have to show that they replicate
/// from the leader: acknowledge a fresh entry. Several heartbeats and an
/// election timeout at the default settings.
const REPLICATION_PROBE: Duration = Duration::from_secs(3);

/// How long a node to be added as a learner has to answer.
const LEARNER_PROBE: Duration = Duration::from_secs(3);

/// Counts and logs (once per reason) a refused membership change.
fn refused(reason: &'static str, status: Status) -> Status {
    metrics::counter!("rookery_store_membership_refused_total", "reason" => reason).increment(1);
    if crate::once::first_time("rookery_store_membership_refused_total", reason) {
        tracing::warn!(
            reason,
            why = status.message(),
            "a membership change was refused (logged once per reason; every refusal is counted \
             in rookery_store_membership_refused_total)"
        );
    } else {
        tracing::debug!(
            reason,
            why = status.message(),
            "a membership change was refused"
        );
    }
    status
}

/// Whether `request` may change the membership: it carries the admin token
/// when one is configured; without one, it comes from a loopback address
/// (a node alone, or every node on one host).
pub(super) fn authorize<T>(security: &ClusterSecurity, request: &Request<T>) -> Result<(), Status> {
    match &security.admin_token {
        Some(token) if token.admits(request) => Ok(()),
        Some(_) => Err(refused(
            "admin_token",
            Status::unauthenticated(
                "membership changes need the cluster's admin token \
                 (`authorization: Bearer ...`, cluster.admin_token_file)",
            ),
        )),
        None if from_loopback(request.remote_addr()) => Ok(()),
        None => Err(refused(
            "not_loopback",
            Status::permission_denied(
                "no cluster.admin_token_file is configured: membership changes are taken from \
                 loopback addresses only",
            ),
        )),
    }
}

/// Whether a peer address is a loopback one (an IPv4 loopback address
/// mapped into IPv6 too). Unknown peers are not.
fn from_loopback(peer: Option<std::net::SocketAddr>) -> bool {
    peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback())
}

/// A change of the voters, as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VoterChange {
    /// These join the current voters.
    Add(BTreeSet<NodeId>),
    /// These become the voters.
    Replace(BTreeSet<NodeId>),
    /// This one stops voting.
    Remove(NodeId),
}

/// The voters after `change` to `current`.
pub(super) fn voters_after(current: &BTreeSet<NodeId>, change: &VoterChange) -> BTreeSet<NodeId> {
    match change {
        VoterChange::Add(added) => current.union(added).copied().collect(),
        VoterChange::Replace(voters) => voters.clone(),
        VoterChange::Remove(node) => current.iter().copied().filter(|v| v != node).collect(),
    }
}

/// A voter set without a replicating majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMajority {
    /// The voters.
    pub voters: BTreeSet<NodeId>,
    /// Those of them that replicate from the leader.
    pub replicating: BTreeSet<NodeId>,
    /// How many must.
    pub needed: usize,
}

impl std::fmt::Display for NoMajority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "after this change the voters would be {:?}; a majority of them ({}) must be \
             replicating from the leader, and only {:?} are",
            self.voters, self.needed, self.replicating
        )
    }
}

/// Whether a majority of `voters` is among `replicating` (an empty voter
/// set has none).
pub fn keeps_majority(
    voters: &BTreeSet<NodeId>,
    replicating: &BTreeSet<NodeId>,
) -> Result<(), NoMajority> {
    let live: BTreeSet<NodeId> = voters.intersection(replicating).copied().collect();
    let needed = voters.len() / 2 + 1;
    if !voters.is_empty() && live.len() >= needed {
        Ok(())
    } else {
        Err(NoMajority {
            voters: voters.clone(),
            replicating: live,
            needed,
        })
    }
}

/// The nodes that have acknowledged the entry at `index`: the leader
/// itself, and those its replication reports matched at or past it.
fn caught_up(metrics: &RaftMetrics<NodeId, BasicNode>, index: u64) -> BTreeSet<NodeId> {
    let mut nodes = BTreeSet::from([metrics.id]);
    if let Some(replication) = &metrics.replication {
        nodes.extend(
            replication
                .iter()
                .filter(|(_, matched)| matched.is_some_and(|log_id| log_id.index >= index))
                .map(|(id, _)| *id),
        );
    }
    nodes
}

/// Refuses `change` unless the voters after it keep a majority that
/// replicates from this node, the leader, now: it commits a probe entry
/// (on an idle group a dead node's last acknowledgement would still look
/// current) and waits, bounded, until enough of them acknowledge it. On a
/// node that does not lead this does nothing: openraft refuses the change
/// there and it goes to the leader, which checks.
pub(super) async fn check_majority(node: &NodeHandles, change: &VoterChange) -> Result<(), Status> {
    let (leading, voters) = {
        let metrics = node.raft.metrics().borrow().clone();
        let current: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        (metrics.state.is_leader(), voters_after(&current, change))
    };
    if !leading {
        return Ok(());
    }
    let probe = tokio::time::timeout(REPLICATION_PROBE, node.writer.write(Vec::new())).await;
    let index = match probe {
        Ok(Ok(outcome)) => outcome.log_index,
        Ok(Err(error)) => return Err(Status::unavailable(format!("probing the voters: {error}"))),
        Err(_) => {
            return Err(refused(
                "no_majority",
                Status::failed_precondition(format!(
                    "the group has no quorum now: a probe entry did not commit within \
                     {REPLICATION_PROBE:?}"
                )),
            ));
        }
    };
    let deadline = Instant::now() + REPLICATION_PROBE;
    let mut watch = node.raft.metrics();
    loop {
        let replicating = caught_up(&watch.borrow_and_update(), index);
        match keeps_majority(&voters, &replicating) {
            Ok(()) => return Ok(()),
            Err(no) if Instant::now() >= deadline => {
                return Err(refused(
                    "no_majority",
                    Status::failed_precondition(format!(
                        "refused: {no} (acknowledged a probe entry within {REPLICATION_PROBE:?})"
                    )),
                ));
            }
            Err(_) => {}
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, watch.changed()).await {
            return Err(Status::unavailable("raft stopped"));
        }
    }
}

/// Refuses to add `member` as a learner unless a store node answers at its
/// address, as that node id: a learner nobody answers for would be
/// replicated to forever, and is one step from a voter that breaks the
/// majority.
pub(super) async fn check_learner(channels: &Channels, member: &Member) -> Result<(), Status> {
    let channel = channels.get(&member.address).map_err(|error| {
        Status::invalid_argument(format!("address {:?}: {error}", member.address))
    })?;
    let mut request = Request::new(StatusRequest {});
    request.set_timeout(LEARNER_PROBE);
    let answer = tokio::time::timeout(LEARNER_PROBE, AdminClient::new(channel).status(request))
        .await
        .map_err(|_| format!("no answer within {LEARNER_PROBE:?}"))
        .and_then(|answer| answer.map_err(|status| status.message().to_owned()));
    match answer {
        Ok(status) if status.get_ref().node_id == member.node_id => Ok(()),
        Ok(status) => Err(refused(
            "learner_mismatch",
            Status::failed_precondition(format!(
                "the store node at {} is node {}, not node {}",
                member.address,
                status.get_ref().node_id,
                member.node_id
            )),
        )),
        Err(why) => Err(refused(
            "learner_unreachable",
            Status::failed_precondition(format!(
                "no store node answers at {} (node {}): {why}",
                member.address, member.node_id
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_majority_of_the_new_voters_must_replicate() {
        assert!(keeps_majority(&set(&[1]), &set(&[1])).is_ok());
        assert!(keeps_majority(&set(&[1, 2, 3]), &set(&[1, 3])).is_ok());
        assert!(keeps_majority(&set(&[1, 2, 3, 4, 5]), &set(&[2, 4, 5])).is_ok());
        let lost = keeps_majority(&set(&[1, 2, 3]), &set(&[1])).unwrap_err();
        assert_eq!(lost.needed, 2);
        assert_eq!(lost.replicating, set(&[1]));
    }

    /// The attack this guards against: a dead address added as a learner,
    /// then made a voter beside the single live one.
    #[test]
    fn two_voters_with_one_dead_have_no_majority() {
        let after = voters_after(&set(&[1]), &VoterChange::Add(set(&[9])));
        assert_eq!(after, set(&[1, 9]));
        let lost = keeps_majority(&after, &set(&[1])).unwrap_err();
        assert_eq!(lost.needed, 2);
        assert!(lost.to_string().contains("{1, 9}"), "{lost}");
    }

    #[test]
    fn an_even_voter_set_needs_more_than_half() {
        assert!(keeps_majority(&set(&[1, 2, 3, 4]), &set(&[1, 2])).is_err());
        assert!(keeps_majority(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3])).is_ok());
    }

    #[test]
    fn replicating_nodes_outside_the_new_voters_do_not_count() {
        let after = voters_after(&set(&[1, 2, 3]), &VoterChange::Replace(set(&[4, 5, 6])));
        assert!(keeps_majority(&after, &set(&[1, 2, 3, 4])).is_err());
        assert!(keeps_majority(&after, &set(&[1, 4, 5])).is_ok());
    }

    #[test]
    fn no_voters_is_no_majority() {
        assert!(keeps_majority(&set(&[]), &set(&[1, 2])).is_err());
    }

    /// Removing a live voter from three when another is dead leaves two
    /// voters, one of them dead: refused.
    #[test]
    fn removing_a_live_voter_beside_a_dead_one_is_refused() {
        let after = voters_after(&set(&[1, 2, 3]), &VoterChange::Remove(2));
        assert_eq!(after, set(&[1, 3]));
        assert!(keeps_majority(&after, &set(&[1, 2])).is_err());
        let after = voters_after(&set(&[1, 2, 3]), &VoterChange::Remove(3));
        assert!(keeps_majority(&after, &set(&[1, 2])).is_ok());
    }

    #[test]
    fn without_a_token_only_loopback_peers_may_change_membership() {
        let at = |address: &str| Some(address.parse().unwrap());
        assert!(from_loopback(at("127.0.0.1:7000")));
        assert!(from_loopback(at("127.0.0.3:7000")));
        assert!(from_loopback(at("[::1]:7000")));
        assert!(from_loopback(at("[::ffff:127.0.0.1]:7000")));
        assert!(!from_loopback(at("10.0.0.7:7000")));
        assert!(!from_loopback(at("[::ffff:10.0.0.7]:7000")));
        assert!(!from_loopback(None));
    }

    #[test]
    fn with_a_token_a_request_without_it_is_refused_even_from_loopback() {
        let token = crate::AdminToken::new("0123456789abcdef-admin").unwrap();
        let security = ClusterSecurity {
            tls: None,
            admin_token: Some(token.clone()),
        };
        let bare = Request::new(());
        let refused = authorize(&security, &bare).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let mut signed = Request::new(());
        token.authorize(&mut signed);
        assert!(authorize(&security, &signed).is_ok());
        // No token configured and no peer address known: refused.
        let open = ClusterSecurity::default();
        let refused = authorize(&open, &bare).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
}
