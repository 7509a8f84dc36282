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
use rookery_store::proto::{
    AddLearnerRequest, ChangeMembershipRequest, Member, StatusRequest, StatusResponse,
    admin_client::AdminClient,
};
use rookery_store::{NodeId, StoreNode};
use tokio::time::Instant;

/// How long one status question to a peer may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds of asking the peers.
const ROUND: Duration = Duration::from_millis(300);
/// How often a node still waiting for peers says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

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

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("raft: {0}")]
    Raft(String),
    #[error("no group formed or found within {0:?}; check cluster.seeds and bootstrap_expect")]
    TimedOut(Duration),
}

/// Puts `node` in a group, waiting up to `within`.
pub async fn form_or_join(
    node: &StoreNode,
    discovery: &Discovery,
    within: Duration,
) -> Result<Joined, MembershipError> {
    let raft = node.raft();
    if raft
        .is_initialized()
        .await
        .map_err(|e| MembershipError::Raft(e.to_string()))?
    {
        return Ok(Joined::Resumed);
    }
    if discovery.seeds.is_empty() && discovery.bootstrap_expect <= 1 {
        node.initialize_single()
            .await
            .map_err(|e| MembershipError::Raft(e.to_string()))?;
        return Ok(Joined::Formed);
    }
    let deadline = Instant::now() + within;
    let mut next_log = Instant::now() + WAITING_LOG_EVERY;
    loop {
        if is_member(node) {
            return Ok(Joined::Added);
        }
        let peers = ask_peers(node, &discovery.seeds).await;
        if let Some((address, status)) = peers.iter().find(|(_, s)| s.leader_id != 0) {
            match join(node, address, status, discovery.voter).await {
                Ok(()) => return Ok(Joined::Added),
                Err(why) => {
                    tracing::info!(peer = %address, %why, "joining the store group failed; retrying")
                }
            }
        } else {
            let mut fresh: BTreeMap<NodeId, String> = peers
                .iter()
                .filter(|(_, s)| s.voters.is_empty() && s.learners.is_empty())
                .map(|(address, s)| (s.node_id, address.clone()))
                .collect();
            fresh.insert(node.node_id(), node.address().to_owned());
            let lowest = fresh.keys().next().copied();
            if fresh.len() >= discovery.bootstrap_expect.max(1) && lowest == Some(node.node_id()) {
                let members: BTreeMap<NodeId, BasicNode> = fresh
                    .iter()
                    .map(|(id, address)| (*id, BasicNode::new(address)))
                    .collect();
                tracing::info!(voters = ?fresh, "forming a new store group");
                raft.initialize(members)
                    .await
                    .map_err(|e| MembershipError::Raft(e.to_string()))?;
                return Ok(Joined::Formed);
            }
            if Instant::now() >= next_log {
                next_log = Instant::now() + WAITING_LOG_EVERY;
                tracing::info!(
                    seen = ?fresh.keys().collect::<Vec<_>>(),
                    expect = discovery.bootstrap_expect,
                    "waiting for store peers to form a group"
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(MembershipError::TimedOut(within));
        }
        tokio::time::sleep(ROUND).await;
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
) -> Result<(), String> {
    let channel = node.channels().get(peer).map_err(|e| e.to_string())?;
    let mut admin = AdminClient::new(channel);
    tracing::info!(
        peer,
        leader = status.leader_id,
        "joining the store group as a learner"
    );
    admin
        .add_learner(AddLearnerRequest {
            member: Some(Member {
                node_id: node.node_id(),
                address: node.address().to_owned(),
            }),
        })
        .await
        .map_err(|s| s.message().to_owned())?;
    if voter {
        tracing::info!("becoming a voter of the store group");
        admin
            .change_membership(ChangeMembershipRequest {
                voters: vec![node.node_id()],
                remove_others: false,
                add: true,
            })
            .await
            .map_err(|s| s.message().to_owned())?;
    }
    Ok(())
}
