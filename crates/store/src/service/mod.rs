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
