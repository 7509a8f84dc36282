//! Raft RPCs to other store nodes over tonic, and the shared cache of gRPC
//! channels to them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::proto::RaftPayload;
use crate::proto::raft_client::RaftClient;
use crate::security::ClusterSecurity;
use crate::{NodeId, TypeConfig};

/// How long a connection attempt to a peer may take before the RPC fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// gRPC channels by peer address, shared by Raft replication and request
/// forwarding. A tonic channel reconnects by itself, so one per peer lives as
/// long as the node. Every channel speaks mutual TLS when the cluster's
/// security says so, and membership requests carry its admin token.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    by_address: Arc<Mutex<HashMap<String, Channel>>>,
    /// The source address of connections to peers: the node's own listen
    /// address, so that peers (and firewalls) see which node calls.
    local_address: Option<IpAddr>,
    security: ClusterSecurity,
}

impl Channels {
    /// Channels whose connections leave from `local_address` (`None`: the
    /// system picks), secured as `security` says.
    pub fn new(local_address: Option<IpAddr>, security: ClusterSecurity) -> Self {
        Channels {
            by_address: Arc::default(),
            local_address,
            security,
        }
    }

    /// The TLS and admin credential these channels use.
    pub fn security(&self) -> &ClusterSecurity {
        &self.security
    }

    /// The channel to `address`, made (connecting lazily) on first use.
    pub fn get(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .security
            .endpoint(address)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.local_address)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Openraft's network factory: a connection per peer over the shared channels.
#[derive(Debug, Clone)]
pub struct Network {
    channels: Channels,
}

impl Network {
    /// A factory whose connections use `channels`.
    pub fn new(channels: Channels) -> Self {
        Network { channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            channel: self.channels.get(&node.addr).map_err(|e| e.to_string()),
        }
    }
}

/// Raft RPCs to one peer, each a gRPC call carrying a postcard payload.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    /// An invalid address is reported by every RPC rather than at creation,
    /// which openraft's factory cannot fail.
    channel: Result<Channel, String>,
}

impl PeerConnection {
    fn client(&self) -> Result<RaftClient<Channel>, NetworkError> {
        self.channel
            .clone()
            .map(RaftClient::new)
            .map_err(|e| NetworkError::new(&std::io::Error::other(e)))
    }

    fn request<T: Serialize>(
        payload: &T,
        option: &RPCOption,
    ) -> Result<tonic::Request<RaftPayload>, NetworkError> {
        let data = postcard::to_allocvec(payload).map_err(|e| NetworkError::new(&e))?;
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(option.hard_ttl());
        Ok(request)
    }

    // openraft's own error type is what RaftNetwork must return.
    #[allow(clippy::result_large_err)]
    fn response<T, E>(
        &self,
        result: Result<tonic::Response<RaftPayload>, tonic::Status>,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = result.map_err(status_error)?.into_inner();
        let reply: Result<T, E> = postcard::from_bytes(&payload.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// An unreachable peer makes openraft back off; other failures are retried.
#[allow(clippy::result_large_err)]
fn status_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let request = Self::request(&rpc, &option)?;
        let result = self.client()?.append_entries(request).await;
        self.response(result)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let request = Self::request(&rpc, &option)?;
        let result = self.client()?.install_snapshot(request).await;
        self.response(result)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let request = Self::request(&rpc, &option)?;
        let result = self.client()?.vote(request).await;
        self.response(result)
    }
}
