//! The store's gRPC services, each in the file named for it: [`RaftService`]
//! between store nodes (`raft.rs`), [`StoreService`], the session API for
//! edges: writes, reads and event streams (`store.rs`), and [`AdminService`],
//! membership administration (`admin.rs`) with the operators' reads and
//! writes (`operations.rs`). What they share is here.
//!
//! A follower answers edges as the leader would: it forwards writes and
//! linearizable reads to the leader it knows and relays the answer. A request
//! that was already forwarded once is not forwarded again, so a stale leader
//! hint cannot make requests circle; the caller gets `UNAVAILABLE` and retries.

mod admin;
mod guard;
mod operations;
mod raft;
mod store;

use std::sync::Arc;

use openraft::BasicNode;
use tokio::sync::broadcast;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::db::Db;
use crate::network::Channels;
use crate::state_machine::Applied;
use crate::writer::Writer;
use crate::{NodeId, Raft};

pub use admin::AdminService;
pub use guard::{NoMajority, keeps_majority};
pub use raft::RaftService;
pub use store::StoreService;

/// Marks a request a follower forwarded, so the receiver never forwards it on.
const FORWARDED: &str = "x-rookery-forwarded";

/// Metadata of the status that ends a write stream (or refuses a write)
/// because the node does not take writes now: every write of the stream not
/// answered before it was never proposed, and may be sent again elsewhere.
/// Its value says why: `handing-over` or `not-leader`.
const UNPROPOSED: &str = "x-rookery-unproposed";
/// Metadata with the store address of the leader the refusing node knows.
const LEADER_HINT: &str = "x-rookery-leader";

/// Why a node gave back the writes of a stream unproposed, as an edge reads
/// it from the stream's final status (see [`unproposed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unproposed {
    /// The node hands its leadership over or stops: go to the next leader.
    HandingOver,
    /// The node does not lead; the leader's store address if it knows it.
    NotLeader {
        /// The leader's store address, as the refusing node knows it.
        leader_address: Option<String>,
    },
}

/// The status that refuses a write, or ends a write stream, for `refusal`.
pub fn unproposed_status(refusal: &crate::writer::Refusal) -> Status {
    use crate::writer::Refusal;
    let mut status = Status::unavailable(format!("not proposed: {refusal}"));
    let (why, leader) = match refusal {
        Refusal::HandingOver => ("handing-over", None),
        Refusal::NotLeader { leader } => ("not-leader", leader.as_ref()),
    };
    let metadata = status.metadata_mut();
    metadata.insert(UNPROPOSED, tonic::metadata::MetadataValue::from_static(why));
    if let Some((_, node)) = leader
        && let Ok(address) = node.addr.parse()
    {
        metadata.insert(LEADER_HINT, address);
    }
    status
}

/// Whether `status` says that the writes it answers (or every unanswered
/// write of the stream it ends) were never proposed, and why. `None` for any
/// other status: what it answers may have committed.
pub fn unproposed(status: &Status) -> Option<Unproposed> {
    let why = status.metadata().get(UNPROPOSED)?.to_str().ok()?;
    match why {
        "handing-over" => Some(Unproposed::HandingOver),
        "not-leader" => Some(Unproposed::NotLeader {
            leader_address: status
                .metadata()
                .get(LEADER_HINT)
                .and_then(|value| value.to_str().ok())
                .filter(|address| !address.is_empty())
                .map(str::to_owned),
        }),
        _ => None,
    }
}

/// Handles to the parts of one store node that the Store and Admin services
/// work with (Raft, database, writer, peer channels, applied-entry feed).
#[derive(Clone)]
pub struct NodeHandles {
    /// This node's Raft handle.
    pub raft: Raft,
    /// This node's database, read for what it has applied.
    pub db: Arc<Db>,
    /// This node's group-commit writer.
    pub writer: Writer,
    /// gRPC channels to other store nodes, for forwarding to the leader.
    pub channels: Channels,
    /// What each applied entry changed, for the event streams.
    pub applied: broadcast::Sender<Arc<Applied>>,
    /// Since when this node leads; one leadership hand-over at a time.
    pub leadership: Arc<crate::handover::Leadership>,
}

impl std::fmt::Debug for NodeHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandles").finish_non_exhaustive()
    }
}

impl NodeHandles {
    /// Sends a request on to the leader and relays its answer, once: the
    /// request goes out marked as forwarded, and one that arrived so marked
    /// (or finds no leader known) is refused with `UNAVAILABLE` instead.
    /// `call` makes the gRPC call over the channel to the leader.
    async fn forward_to_leader<T, R>(
        &self,
        request: Request<T>,
        leader: Option<(NodeId, BasicNode)>,
        call: impl AsyncFnOnce(Channel, Request<T>) -> Result<Response<R>, Status>,
    ) -> Result<Response<R>, Status> {
        if request.metadata().contains_key(FORWARDED) {
            return Err(Status::unavailable(
                "not the leader (request already forwarded once)",
            ));
        }
        let Some((leader_id, node)) = leader else {
            return Err(Status::unavailable("no leader is known; retry"));
        };
        metrics::counter!("rookery_store_forwarded_requests_total").increment(1);
        tracing::debug!(leader_id, address = %node.addr, "forwarding a request to the leader");
        let channel = self
            .channels
            .get(&node.addr)
            .map_err(|e| Status::unavailable(format!("leader address {}: {e}", node.addr)))?;
        let mut forwarded = Request::new(request.into_inner());
        forwarded
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        call(channel, forwarded).await
    }
}
