//! How an edge reaches the store: through the replica in its own process,
//! or, on an edge-only node, through the store nodes its seeds name.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rookery_store::network::Channels;
use rookery_store::{NodeId, StoreNode};
use tonic::transport::Channel;

use crate::membership::{ask_status, resolve};

/// Pause between rounds of looking for the leader.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// The way to the store.
#[derive(Debug, Clone)]
pub enum Access {
    /// A store replica in this process.
    Replica(Arc<StoreNode>),
    /// Store nodes elsewhere.
    Peers(Arc<Peers>),
}

/// Where the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaderAt {
    /// In this process.
    Here,
    /// At this store address.
    There(String),
}

impl Access {
    pub fn channels(&self) -> &Channels {
        match self {
            Access::Replica(node) => node.channels(),
            Access::Peers(peers) => &peers.channels,
        }
    }

    pub(crate) fn replica(&self) -> Option<&Arc<StoreNode>> {
        match self {
            Access::Replica(node) => Some(node),
            Access::Peers(_) => None,
        }
    }

    /// The leader, waiting up to `timeout` for one to be known.
    pub(crate) async fn leader(&self, timeout: Duration) -> Option<LeaderAt> {
        match self {
            Access::Replica(node) => {
                let at = |(id, address): (NodeId, String)| {
                    if id == node.node_id() {
                        LeaderAt::Here
                    } else {
                        LeaderAt::There(address)
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
            Access::Peers(peers) => peers.leader(timeout).await.map(LeaderAt::There),
        }
    }

    /// The leader is not at `address` after all: look again next time.
    pub(crate) fn leader_moved(&self, hint: Option<String>) {
        if let Access::Peers(peers) = self {
            *peers.leader_hint.lock() = hint.filter(|address| !address.is_empty());
        }
    }
}

/// The store nodes an edge-only node knows of through its seeds.
#[derive(Debug)]
pub struct Peers {
    seeds: Vec<String>,
    channels: Channels,
    leader_hint: Mutex<Option<String>>,
}

impl Peers {
    /// Store nodes named by `seeds` (`host:port`, names resolved on every
    /// look), reached from `local_address` when given.
    pub fn new(seeds: Vec<String>, local_address: Option<std::net::IpAddr>) -> Peers {
        Peers {
            seeds,
            channels: Channels::from_address(local_address),
            leader_hint: Mutex::new(None),
        }
    }

    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        self.channels
            .get(address)
            .map_err(|error| error.to_string())
    }

    /// Every store address the seeds name now.
    pub async fn addresses(&self) -> Vec<String> {
        resolve(&self.seeds).await.into_iter().collect()
    }

    /// The leader's store address, asking the seeds until one knows it.
    async fn leader(&self, timeout: Duration) -> Option<String> {
        if let Some(hint) = self.leader_hint.lock().clone() {
            return Some(hint);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The leader of the highest term any node knows: a leader cut off
            // from the others still names itself, at an older term.
            let mut best: Option<(u64, String)> = None;
            for address in self.addresses().await {
                if let Some(status) = ask_status(&self.channels, &address).await
                    && status.leader_id != 0
                    && !status.leader_address.is_empty()
                    && best.as_ref().is_none_or(|(term, _)| status.term > *term)
                {
                    best = Some((status.term, status.leader_address));
                }
            }
            if let Some((_, leader)) = best {
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
