//! The Raft service: openraft's RPCs between store nodes, each payload a
//! postcard-encoded openraft message.

use tonic::{Request, Response, Status};

use crate::Raft;
use crate::proto::{self, RaftPayload, TimeoutNowRequest, TimeoutNowResponse};

/// The Raft service: hands peers' RPCs to this node's Raft.
pub struct RaftService {
    raft: Raft,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

impl RaftService {
    /// The service for `raft`.
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode_payload<T: serde::de::DeserializeOwned>(
    request: Request<RaftPayload>,
) -> Result<T, Status> {
    postcard::from_bytes(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn encode_payload<T: serde::Serialize>(reply: &T) -> Result<Response<RaftPayload>, Status> {
    let data = postcard::to_allocvec(reply).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let reply = self.raft.append_entries(decode_payload(request)?).await;
        encode_payload(&reply)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let reply = self.raft.vote(decode_payload(request)?).await;
        encode_payload(&reply)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let reply = self.raft.install_snapshot(decode_payload(request)?).await;
        encode_payload(&reply)
    }

    async fn timeout_now(
        &self,
        request: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowResponse>, Status> {
        let reply = crate::handover::timeout_now(&self.raft, request.into_inner()).await;
        Ok(Response::new(reply))
    }
}
