//! A store node restarted under another address (a pod recreated with a new
//! IP that it advertises, a host renamed, an operator changing
//! `store.advertise`) must have its group record the new one: the leader
//! only ever calls the address in the membership, so until then the node
//! hears nothing, and the next failure of another voter costs the majority.
//!
//! The node notices it itself, from the membership it loaded, and asks its
//! group (through any peer that answers; a follower passes the request to
//! the leader) to record its advertised address. The leader first checks
//! that the node answering there is this node, then commits the new
//! address. Members named by DNS names need none of this when only their
//! IP changes: names are resolved again on every connection.

use std::collections::BTreeSet;
use std::time::Duration;

use rookery_store::network::Channels;
use rookery_store::proto::{AddLearnerRequest, Member, admin_client::AdminClient};
use rookery_store::{NodeId, Raft};

use crate::membership::resolve;

/// How often the node compares its recorded address with its own.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one request to record the new address may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the node is, and where it looks for its group.
#[derive(Clone)]
pub struct OwnAddress {
    /// The node's Raft.
    pub raft: Raft,
    /// The node's id.
    pub node_id: NodeId,
    /// The store address it advertises now.
    pub address: String,
    /// Its channels to the other store nodes (TLS and admin token).
    pub channels: Channels,
    /// `cluster.seeds`: where to look besides the members it knows.
    pub seeds: Vec<String>,
}

impl std::fmt::Debug for OwnAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnAddress")
            .field("node_id", &self.node_id)
            .field("address", &self.address)
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

/// Keeps the group's record of this node's address equal to the address it
/// advertises, until its Raft stops. Run it as a task of its own.
pub async fn keep_address_current(own: OwnAddress) {
    let mut told = false;
    loop {
        let (recorded, others) = {
            let metrics = own.raft.metrics().borrow().clone();
            if metrics.running_state.is_err() {
                return;
            }
            let membership = metrics.membership_config.membership();
            let recorded = membership
                .get_node(&own.node_id)
                .map(|node| node.addr.clone());
            let others: Vec<String> = membership
                .nodes()
                .filter(|(id, _)| **id != own.node_id)
                .map(|(_, node)| node.addr.clone())
                .collect();
            (recorded, others)
        };
        match recorded {
            Some(recorded) if recorded != own.address => {
                if !told {
                    told = true;
                    tracing::warn!(
                        recorded = %recorded,
                        advertised = %own.address,
                        "the store group knows this node by another address; asking it to record the new one"
                    );
                }
                if record_address(&own, others).await {
                    tracing::info!(address = %own.address, "the store group records this node's new address");
                    told = false;
                }
            }
            _ => told = false,
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Asks the peers, one after the other, until one has the group record this
/// node's address; whether one did.
async fn record_address(own: &OwnAddress, members: Vec<String>) -> bool {
    let mut peers: BTreeSet<String> = members.into_iter().collect();
    peers.extend(resolve(&own.seeds).await);
    peers.remove(&own.address);
    for peer in peers {
        let Ok(channel) = own.channels.get(&peer) else {
            continue;
        };
        let mut request = tonic::Request::new(AddLearnerRequest {
            member: Some(Member {
                node_id: own.node_id,
                address: own.address.clone(),
            }),
        });
        request.set_timeout(ASK_TIMEOUT);
        own.channels.security().authorize(&mut request);
        let asked =
            tokio::time::timeout(ASK_TIMEOUT, AdminClient::new(channel).add_learner(request)).await;
        match asked {
            Ok(Ok(_)) => return true,
            Ok(Err(status)) => {
                tracing::debug!(%peer, why = status.message(), "a peer did not record this node's address")
            }
            Err(_) => tracing::debug!(%peer, "a peer did not answer within {ASK_TIMEOUT:?}"),
        }
    }
    false
}
