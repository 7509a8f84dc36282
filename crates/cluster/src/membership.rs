//! How a store node finds its group: resume from its data directory, form a
//! new group with the peers it was told about, or join a running one.
//!
//! Peers come from seed addresses (`host:port`); a name that resolves to
//! several addresses (a Kubernetes headless service) names them all. A new
//! group forms once `bootstrap_expect` store nodes, none in a group yet, can
//! see each other: the one with the lowest node id initializes it with all of
//! them as voters (as Consul's `bootstrap_expect`). A node that finds a group
//! with a leader asks to be added: first as a learner, which catches up, then
//! as a voter unless it is configured to stay a learner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{Fatal, InitializeError, RaftError};
use rookery_store::proto::{
    AddLearnerRequest, ChangeMembershipRequest, Member, StatusRequest, StatusResponse,
    admin_client::AdminClient,
};
use rookery_store::{NodeId, StoreError, StoreNode};
use tokio::time::Instant;

use crate::access::{BadStoreAddress, channel};

/// How long one status question to a peer may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds of asking the peers.
const ASK_AGAIN: Duration = Duration::from_millis(300);
/// How often a node still waiting for peers says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

/// How a store node finds its peers and what it becomes among them.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Store addresses of peers, `host:port`; names may resolve to several.
    pub seeds: Vec<String>,
    /// Voters a new group waits for before forming.
    pub bootstrap_expect: usize,
    /// Join as a voter (true) or stay a learner.
    pub voter: bool,
}

/// How the node came to be in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// Its data directory already belonged to a group.
    Resumed,
    /// It formed a new group (alone, or with the expected peers).
    Formed,
    /// It was added to a running group (by itself or by the forming node).
    Added,
}

/// Why a node did not get into a group.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Raft in this process has stopped.
    #[error("raft: {0}")]
    Raft(#[from] Fatal<NodeId>),
    /// Forming the single-voter group (the embedded default) failed.
    #[error("forming a single-voter group: {0}")]
    FormAlone(#[source] StoreError),
    /// Forming a group with the expected peers failed.
    #[error("forming a group with its peers: {0}")]
    Form(#[from] RaftError<NodeId, InitializeError<NodeId, BasicNode>>),
    /// Nothing came of asking the peers within the join timeout.
    #[error("no group formed or found within {0:?}; check cluster.seeds and bootstrap_expect")]
    TimedOut(Duration),
}

/// Why one attempt to join a running group failed (the node asks again).
#[derive(Debug, thiserror::Error)]
pub enum JoinFailed {
    /// The peer's address is not a usable `host:port`.
    #[error(transparent)]
    BadPeerAddress(#[from] BadStoreAddress),
    /// The group did not add this node as a learner.
    #[error("adding this node as a learner: {}", .0.message())]
    AddLearner(tonic::Status),
    /// The group did not make this (caught-up) learner a voter.
    #[error("making this node a voter: {}", .0.message())]
    BecomeVoter(tonic::Status),
}

/// What a node does before asking any peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Its data directory belongs to a group already.
    Resume,
    /// No peers to wait for: it is the single voter of a new group.
    FormAlone,
    /// Ask the peers until it forms or joins a group.
    AskPeers,
}

/// How a node starts, from whether its data directory belongs to a group
/// and what it was told about peers.
fn how_to_start(initialized: bool, discovery: &Discovery) -> Start {
    if initialized {
        Start::Resume
    } else if discovery.seeds.is_empty() && discovery.bootstrap_expect <= 1 {
        Start::FormAlone
    } else {
        Start::AskPeers
    }
}

/// What a node does after one round of asking its peers.
#[derive(Debug, Clone, PartialEq)]
enum NextStep<'a> {
    /// A peer knows a leader: ask its group to take this node.
    Join {
        /// The peer's store address.
        peer: &'a str,
        /// What the peer answered.
        status: &'a StatusResponse,
    },
    /// Enough nodes outside any group see each other and this one has the
    /// lowest id: it forms the group with all of them as voters.
    Form {
        /// Every such node's id and store address, this one included.
        voters: BTreeMap<NodeId, String>,
    },
    /// Too few nodes yet, or another one forms the group: ask again.
    Wait {
        /// The ids of the nodes outside any group seen so far, this one
        /// included.
        seen: Vec<NodeId>,
    },
}

/// The next step of node `own_id` (at `own_address`), waiting for
/// `bootstrap_expect` voters, from what its peers answered. A peer in a
/// group without a leader (an election under way) neither counts towards a
/// new group nor can take the node yet.
fn next_step<'a>(
    own_id: NodeId,
    own_address: &str,
    bootstrap_expect: usize,
    peers: &'a [(String, StatusResponse)],
) -> NextStep<'a> {
    if let Some((peer, status)) = peers.iter().find(|(_, status)| status.leader_id != 0) {
        return NextStep::Join { peer, status };
    }
    let mut outside: BTreeMap<NodeId, String> = peers
        .iter()
        .filter(|(_, status)| status.voters.is_empty() && status.learners.is_empty())
        .map(|(address, status)| (status.node_id, advertised(address, status)))
        .collect();
    outside.insert(own_id, own_address.to_owned());
    let lowest = outside.keys().next().copied();
    if outside.len() >= bootstrap_expect.max(1) && lowest == Some(own_id) {
        NextStep::Form { voters: outside }
    } else {
        NextStep::Wait {
            seen: outside.into_keys().collect(),
        }
    }
}

/// The address a peer is to be recorded by: the one it advertises (a name
/// that stays when its IP changes), not the one its seed name resolved to;
/// the asked address when it does not say (a node from before it did).
fn advertised(asked: &str, status: &StatusResponse) -> String {
    if status.address.is_empty() {
        asked.to_owned()
    } else {
        status.address.clone()
    }
}

/// Puts `node` in a group, waiting up to `within`.
pub async fn form_or_join(
    node: &StoreNode,
    discovery: &Discovery,
    within: Duration,
) -> Result<Joined, MembershipError> {
    let raft = node.raft();
    match how_to_start(raft.is_initialized().await?, discovery) {
        Start::Resume => return Ok(Joined::Resumed),
        Start::FormAlone => {
            node.initialize_single()
                .await
                .map_err(MembershipError::FormAlone)?;
            return Ok(Joined::Formed);
        }
        Start::AskPeers => {}
    }
    let deadline = Instant::now() + within;
    let mut next_log = Instant::now() + WAITING_LOG_EVERY;
    loop {
        if is_member(node) {
            return Ok(Joined::Added);
        }
        let peers = ask_peers(node, &discovery.seeds).await;
        match next_step(
            node.node_id(),
            node.address(),
            discovery.bootstrap_expect,
            &peers,
        ) {
            NextStep::Join { peer, status } => {
                match join(node, peer, status, discovery.voter).await {
                    Ok(()) => return Ok(Joined::Added),
                    Err(why) => {
                        tracing::info!(peer = %peer, %why, "joining the store group failed; retrying")
                    }
                }
            }
            NextStep::Form { voters } => {
                let members: BTreeMap<NodeId, BasicNode> = voters
                    .iter()
                    .map(|(id, address)| (*id, BasicNode::new(address)))
                    .collect();
                tracing::info!(voters = ?voters, "forming a new store group");
                raft.initialize(members).await?;
                return Ok(Joined::Formed);
            }
            NextStep::Wait { seen } => {
                if Instant::now() >= next_log {
                    next_log = Instant::now() + WAITING_LOG_EVERY;
                    tracing::info!(
                        seen = ?seen,
                        expect = discovery.bootstrap_expect,
                        "waiting for store peers to form a group"
                    );
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(MembershipError::TimedOut(within));
        }
        tokio::time::sleep(ASK_AGAIN).await;
    }
}

/// Whether this node has been given a membership that names it.
fn is_member(node: &StoreNode) -> bool {
    let metrics = node.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    membership.get_node(&node.node_id()).is_some()
}

/// The status of every peer that answers, by address (this node excluded).
async fn ask_peers(node: &StoreNode, seeds: &[String]) -> Vec<(String, StatusResponse)> {
    let addresses = resolve(seeds).await;
    let mut answers = Vec::new();
    for address in addresses {
        if address == node.address() {
            continue;
        }
        if let Some(status) = ask_status(node.channels(), &address).await
            && status.node_id != node.node_id()
        {
            answers.push((address, status));
        }
    }
    answers
}

/// A store node's status, if it answers within a second.
pub async fn ask_status(
    channels: &rookery_store::network::Channels,
    address: &str,
) -> Option<StatusResponse> {
    let channel = channels.get(address).ok()?;
    let asked = tokio::time::timeout(
        STATUS_TIMEOUT,
        AdminClient::new(channel).status(StatusRequest {}),
    )
    .await;
    match asked {
        Ok(Ok(status)) => Some(status.into_inner()),
        _ => None,
    }
}

/// Every address the seeds name, once each.
pub async fn resolve(seeds: &[String]) -> BTreeSet<String> {
    let mut addresses = BTreeSet::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(found) => addresses.extend(found.map(|address| address.to_string())),
            Err(error) => tracing::debug!(%seed, %error, "a seed did not resolve"),
        }
    }
    addresses
}

/// Asks the group `peer` belongs to to take this node.
async fn join(
    node: &StoreNode,
    peer: &str,
    status: &StatusResponse,
    voter: bool,
) -> Result<(), JoinFailed> {
    let channel = channel(node.channels(), peer)?;
    let security = node.channels().security();
    let mut admin = AdminClient::new(channel);
    tracing::info!(
        peer,
        leader = status.leader_id,
        "joining the store group as a learner"
    );
    // Membership changes carry the cluster's admin token.
    let mut add = tonic::Request::new(AddLearnerRequest {
        member: Some(Member {
            node_id: node.node_id(),
            address: node.address().to_owned(),
        }),
    });
    security.authorize(&mut add);
    admin
        .add_learner(add)
        .await
        .map_err(JoinFailed::AddLearner)?;
    if voter {
        tracing::info!("becoming a voter of the store group");
        let mut promote = tonic::Request::new(ChangeMembershipRequest {
            voters: vec![node.node_id()],
            remove_others: false,
            add: true,
        });
        security.authorize(&mut promote);
        admin
            .change_membership(promote)
            .await
            .map_err(JoinFailed::BecomeVoter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(seeds: &[&str], bootstrap_expect: usize) -> Discovery {
        Discovery {
            seeds: seeds.iter().map(|seed| (*seed).to_owned()).collect(),
            bootstrap_expect,
            voter: true,
        }
    }

    fn member(node_id: NodeId) -> Member {
        Member {
            node_id,
            address: format!("n{node_id}:7000"),
        }
    }

    /// A peer outside any group.
    fn outside(node_id: NodeId) -> (String, StatusResponse) {
        let status = StatusResponse {
            node_id,
            ..StatusResponse::default()
        };
        (format!("n{node_id}:7000"), status)
    }

    /// A peer in a group of `voters`, led by `leader_id` (0: none known).
    fn grouped(node_id: NodeId, leader_id: NodeId, voters: &[NodeId]) -> (String, StatusResponse) {
        let status = StatusResponse {
            node_id,
            leader_id,
            leader_address: if leader_id == 0 {
                String::new()
            } else {
                format!("n{leader_id}:7000")
            },
            voters: voters.iter().copied().map(member).collect(),
            ..StatusResponse::default()
        };
        (format!("n{node_id}:7000"), status)
    }

    #[test]
    fn a_node_whose_data_belongs_to_a_group_resumes_it() {
        assert_eq!(how_to_start(true, &discovery(&[], 1)), Start::Resume);
        assert_eq!(
            how_to_start(true, &discovery(&["n2:7000"], 3)),
            Start::Resume
        );
    }

    /// The embedded default: no seeds, nothing to wait for.
    #[test]
    fn a_node_with_no_peers_to_wait_for_forms_a_group_alone() {
        assert_eq!(how_to_start(false, &discovery(&[], 0)), Start::FormAlone);
        assert_eq!(how_to_start(false, &discovery(&[], 1)), Start::FormAlone);
    }

    #[test]
    fn a_node_with_seeds_or_expected_peers_asks_them() {
        assert_eq!(
            how_to_start(false, &discovery(&["n2:7000"], 1)),
            Start::AskPeers
        );
        assert_eq!(how_to_start(false, &discovery(&[], 3)), Start::AskPeers);
    }

    #[test]
    fn a_node_joins_through_a_peer_that_knows_a_leader() {
        let peers = [
            outside(3),
            grouped(2, 5, &[4, 5, 6]),
            grouped(7, 5, &[4, 5, 6]),
        ];
        match next_step(1, "n1:7000", 3, &peers) {
            NextStep::Join { peer, status } => {
                assert_eq!(peer, "n2:7000");
                assert_eq!(status.leader_id, 5);
            }
            other => panic!("expected to join, got {other:?}"),
        }
    }

    /// As Consul's `bootstrap_expect`: the node with the lowest id forms the
    /// group, with every node it saw as a voter.
    #[test]
    fn the_lowest_of_enough_ungrouped_nodes_forms_the_group_with_all_of_them() {
        let peers = [outside(2), outside(3)];
        let expected: BTreeMap<NodeId, String> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, format!("n{id}:7000")))
            .collect();
        assert_eq!(
            next_step(1, "n1:7000", 3, &peers),
            NextStep::Form { voters: expected }
        );
    }

    /// A seed name resolves to IP addresses; the group must record the
    /// names the nodes advertise, or a member recreated with a new IP (every
    /// pod restart) is never reached again.
    #[test]
    fn a_group_formed_from_seeds_records_the_advertised_names_not_the_resolved_ips() {
        let mut peers = [outside(2), outside(3)];
        for (address, status) in &mut peers {
            status.address = format!("rk{}:7883", status.node_id);
            *address = format!("172.18.0.{}:7883", status.node_id + 3);
        }
        let expected: BTreeMap<NodeId, String> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, format!("rk{id}:7883")))
            .collect();
        assert_eq!(
            next_step(1, "rk1:7883", 3, &peers),
            NextStep::Form { voters: expected }
        );
    }

    #[test]
    fn a_node_that_is_not_the_lowest_waits_for_the_lowest_to_form_the_group() {
        let peers = [outside(1), outside(3)];
        assert_eq!(
            next_step(2, "n2:7000", 3, &peers),
            NextStep::Wait {
                seen: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn too_few_ungrouped_nodes_wait() {
        let peers = [outside(2)];
        assert_eq!(
            next_step(1, "n1:7000", 3, &peers),
            NextStep::Wait { seen: vec![1, 2] }
        );
    }

    /// A group in an election names no leader yet: its members neither count
    /// towards a new group (that would make two groups) nor can take the
    /// node.
    #[test]
    fn members_of_a_group_without_a_leader_are_not_counted_towards_a_new_one() {
        let peers = [outside(2), grouped(3, 0, &[3, 4, 5])];
        assert_eq!(
            next_step(1, "n1:7000", 3, &peers),
            NextStep::Wait { seen: vec![1, 2] }
        );
    }

    #[test]
    fn a_learner_of_a_group_is_not_counted_towards_a_new_one() {
        let mut learner = outside(3);
        learner.1.learners = vec![member(3)];
        let peers = [outside(2), learner];
        assert_eq!(
            next_step(1, "n1:7000", 3, &peers),
            NextStep::Wait { seen: vec![1, 2] }
        );
    }

    #[test]
    fn expecting_no_peers_counts_as_expecting_this_node_alone() {
        assert_eq!(
            next_step(4, "n4:7000", 0, &[]),
            NextStep::Form {
                voters: BTreeMap::from([(4, "n4:7000".to_owned())])
            }
        );
    }
}
