//! How an edge reaches the store: through the replica in its own process,
//! or, on an edge-only node, through the store nodes its seeds name.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rookery_store::network::Channels;
use rookery_store::proto::StatusResponse;
use rookery_store::{NodeId, StoreNode};
use tonic::transport::Channel;

use crate::membership::{ask_status, resolve};

/// Pause between rounds of looking for the leader.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// A store address that cannot be made into a gRPC channel (it is not a
/// valid `host:port`).
#[derive(Debug, thiserror::Error)]
#[error("store address {address:?} is not usable: {source}")]
pub struct BadStoreAddress {
    /// The address as given.
    pub address: String,
    /// Why tonic refused it.
    #[source]
    pub source: tonic::transport::Error,
}

/// The way to the store.
#[derive(Debug, Clone)]
pub enum Access {
    /// A store replica in this process.
    Replica(Arc<StoreNode>),
    /// Store nodes elsewhere.
    Peers(Arc<Peers>),
}

/// Where the leader is.
#[derive(Debug, Clone)]
pub(crate) enum LeaderAt<'a> {
    /// The replica in this process leads.
    LocalReplica(&'a Arc<StoreNode>),
    /// Another store node leads, at this store address.
    Remote(String),
}

impl LeaderAt<'_> {
    /// The leader's store address.
    pub(crate) fn address(&self) -> &str {
        match self {
            LeaderAt::LocalReplica(node) => node.address(),
            LeaderAt::Remote(address) => address,
        }
    }
}

impl Access {
    /// The gRPC channels to store nodes, one per address, shared by every
    /// user of this access.
    pub fn channels(&self) -> &Channels {
        match self {
            Access::Replica(node) => node.channels(),
            Access::Peers(peers) => &peers.channels,
        }
    }

    /// The channel to the store node at `address` (connected lazily).
    pub fn channel(&self, address: &str) -> Result<Channel, BadStoreAddress> {
        channel(self.channels(), address)
    }

    /// The store replica in this process, if there is one.
    pub(crate) fn replica(&self) -> Option<&Arc<StoreNode>> {
        match self {
            Access::Replica(node) => Some(node),
            Access::Peers(_) => None,
        }
    }

    /// The leader, waiting up to `timeout` for one to be known.
    pub(crate) async fn leader(&self, timeout: Duration) -> Option<LeaderAt<'_>> {
        match self {
            Access::Replica(node) => {
                let at = |(id, address): (NodeId, String)| {
                    if id == node.node_id() {
                        LeaderAt::LocalReplica(node)
                    } else {
                        LeaderAt::Remote(address)
                    }
                };
                if let Some(leader) = node.leader() {
                    return Some(at(leader));
                }
                let mut watch = node.raft().metrics();
                let elected =
                    tokio::time::timeout(timeout, watch.wait_for(|m| m.current_leader.is_some()))
                        .await
                        .is_ok();
                if elected { node.leader().map(at) } else { None }
            }
            Access::Peers(peers) => peers.leader(timeout).await.map(LeaderAt::Remote),
        }
    }

    /// The leader is not where it was thought to be: it is at `hint` (a
    /// store address), or, without one, to be looked for again next time.
    pub(crate) fn leader_moved(&self, hint: Option<String>) {
        if let Access::Peers(peers) = self {
            *peers.leader_hint.lock() = hint.filter(|address| !address.is_empty());
        }
    }

    /// The store node at `address` is out of reach: look for the leader
    /// again next time, unless it was since found elsewhere (an old
    /// leader's stream may end after the writes moved on to the new one).
    pub(crate) fn leader_lost(&self, address: &str) {
        if let Access::Peers(peers) = self {
            let mut hint = peers.leader_hint.lock();
            if hint.as_deref() == Some(address) {
                *hint = None;
            }
        }
    }
}

/// The store nodes an edge-only node knows of through its seeds.
#[derive(Debug)]
pub struct Peers {
    seeds: Vec<String>,
    channels: Channels,
    /// Where the leader was last found or said to be; asked first.
    leader_hint: Mutex<Option<String>>,
}

impl Peers {
    /// Store nodes named by `seeds` (`host:port`, names resolved on every
    /// look), reached from `local_address` when given, secured as
    /// `security` says.
    pub fn new(
        seeds: Vec<String>,
        local_address: Option<std::net::IpAddr>,
        security: rookery_store::ClusterSecurity,
    ) -> Peers {
        Peers {
            seeds,
            channels: Channels::new(local_address, security),
            leader_hint: Mutex::new(None),
        }
    }

    /// The channel to the store node at `address` (connected lazily).
    pub fn channel(&self, address: &str) -> Result<Channel, BadStoreAddress> {
        channel(&self.channels, address)
    }

    /// Every store address the seeds name now.
    pub async fn addresses(&self) -> Vec<String> {
        resolve(&self.seeds).await.into_iter().collect()
    }

    /// How far each store node the seeds name has applied the log, asked
    /// of all at once (a second at most); a node that does not answer is
    /// left out.
    pub async fn applied_indices(&self) -> Vec<(String, u64)> {
        let addresses = self.addresses().await;
        let answers = futures::future::join_all(
            addresses
                .iter()
                .map(|address| ask_status(&self.channels, address)),
        )
        .await;
        addresses
            .into_iter()
            .zip(answers)
            .filter_map(|(address, status)| Some((address, status?.applied_index)))
            .collect()
    }

    /// Looks for the leader again next time: a write to where it was found
    /// went unanswered.
    pub(crate) fn forget_leader(&self) {
        *self.leader_hint.lock() = None;
    }

    /// The leader's store address: where it was last found if anywhere,
    /// else asking the seeds until one knows it.
    async fn leader(&self, timeout: Duration) -> Option<String> {
        if let Some(hint) = self.leader_hint.lock().clone() {
            return Some(hint);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut answers = Vec::new();
            for address in self.addresses().await {
                if let Some(status) = ask_status(&self.channels, &address).await {
                    answers.push(status);
                }
            }
            if let Some(leader) = leader_of_highest_term(answers) {
                *self.leader_hint.lock() = Some(leader.clone());
                return Some(leader);
            }
            if tokio::time::Instant::now() + LOOK_AGAIN > deadline {
                return None;
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }
}

/// The channel to the store node at `address`, from `channels`.
pub(crate) fn channel(channels: &Channels, address: &str) -> Result<Channel, BadStoreAddress> {
    channels.get(address).map_err(|source| BadStoreAddress {
        address: address.to_owned(),
        source,
    })
}

/// The store address of the leader that the store nodes' answers name at
/// the highest term (the first such answer on a tie). A leader cut off from
/// the others still names itself, at an older term than the one that
/// replaced it.
fn leader_of_highest_term(answers: impl IntoIterator<Item = StatusResponse>) -> Option<String> {
    let mut best: Option<(u64, String)> = None;
    for status in answers {
        if status.leader_id != 0
            && !status.leader_address.is_empty()
            && best.as_ref().is_none_or(|(term, _)| status.term > *term)
        {
            best = Some((status.term, status.leader_address));
        }
    }
    best.map(|(_, leader)| leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(leader_id: NodeId, leader_address: &str, term: u64) -> StatusResponse {
        StatusResponse {
            leader_id,
            leader_address: leader_address.to_owned(),
            term,
            ..StatusResponse::default()
        }
    }

    fn edge_only() -> Access {
        Access::Peers(Arc::new(Peers::new(Vec::new(), None, Default::default())))
    }

    #[test]
    fn the_leader_named_at_the_highest_term_wins() {
        let answers = [
            names(1, "n1:7000", 3),
            names(2, "n2:7000", 5),
            names(1, "n1:7000", 4),
        ];
        assert_eq!(leader_of_highest_term(answers).as_deref(), Some("n2:7000"));
    }

    /// A leader cut off by a partition still names itself; the others
    /// moved on to a newer term, whichever node answers first.
    #[test]
    fn a_cut_off_leader_of_an_older_term_is_not_chosen() {
        let answers = [names(1, "n1:7000", 2), names(3, "n3:7000", 3)];
        assert_eq!(leader_of_highest_term(answers).as_deref(), Some("n3:7000"));
    }

    #[test]
    fn on_a_tie_the_first_answer_is_kept() {
        let answers = [names(2, "n2:7000", 4), names(2, "other-name:7000", 4)];
        assert_eq!(leader_of_highest_term(answers).as_deref(), Some("n2:7000"));
    }

    #[test]
    fn answers_without_a_usable_leader_name_none() {
        let answers = [names(0, "n1:7000", 9), names(2, "", 9)];
        assert_eq!(leader_of_highest_term(answers), None);
        assert_eq!(leader_of_highest_term([]), None);
    }

    #[tokio::test]
    async fn a_leader_hint_is_used_without_asking_the_seeds() {
        let access = edge_only();
        access.leader_moved(Some("n2:7000".into()));
        let leader = access.leader(Duration::ZERO).await;
        assert!(matches!(leader, Some(LeaderAt::Remote(address)) if address == "n2:7000"));
    }

    #[tokio::test]
    async fn an_empty_hint_means_look_again() {
        let access = edge_only();
        access.leader_moved(Some("n2:7000".into()));
        // A node that does not lead but knows no leader answers an empty
        // address.
        access.leader_moved(Some(String::new()));
        assert!(access.leader(Duration::ZERO).await.is_none());
        access.leader_moved(Some("n2:7000".into()));
        access.leader_moved(None);
        assert!(access.leader(Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn losing_an_old_leader_keeps_the_newer_hint() {
        let access = edge_only();
        access.leader_moved(Some("n2:7000".into()));
        access.leader_lost("n1:7000");
        let leader = access.leader(Duration::ZERO).await;
        assert!(matches!(leader, Some(LeaderAt::Remote(address)) if address == "n2:7000"));
        access.leader_lost("n2:7000");
        assert!(access.leader(Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn a_store_address_that_is_not_host_and_port_is_refused() {
        let access = edge_only();
        assert!(access.channel("127.0.0.1:7000").is_ok());
        let refused = access.channel("not an address").unwrap_err();
        assert_eq!(refused.address, "not an address");
    }
}
