//! The Admin service: membership administration (initialize, add a learner,
//! change the voters, remove a node) and the node's Raft status.
//!
//! Membership changes run on the leader: a follower forwards them once,
//! with its own admin credential. Every node they reach first checks the
//! caller's credential; the leader also refuses a change that would leave
//! the group without a replicating majority (`guard`).

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, ChangeMembers};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::NodeHandles;
use super::guard::{self, VoterChange};
use crate::handover::{HandOverError, hand_over};
use crate::proto::{self, AdminResponse, admin_client::AdminClient};
use crate::{NodeId, TypeConfig};

/// How long a `TransferLeader` may take: the leader's lease (0.8 s by
/// default) with more than three voters, plus the catch-up and the election.
const TRANSFER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The Admin service: membership changes and status.
#[derive(Debug)]
pub struct AdminService {
    pub(super) node: NodeHandles,
    node_id: NodeId,
    address: String,
}

/// Openraft's answer to a membership change proposed on this node.
type ChangeOutcome =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

impl AdminService {
    /// The service of node `node_id`, which other nodes reach at `address`.
    pub fn new(node: NodeHandles, node_id: NodeId, address: String) -> Self {
        AdminService {
            node,
            node_id,
            address,
        }
    }

    /// The leader, when this node knows it is another node. Membership
    /// changes go there before openraft sees them: a follower answers "a
    /// configuration change is in progress" ahead of "not the leader" while
    /// the leader's previous change is still being replicated to it.
    fn other_leader(&self) -> Option<(NodeId, BasicNode)> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let leader = metrics.current_leader.filter(|id| *id != self.node_id)?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node))
    }

    /// Runs a membership change where the leader is: `change` here when no
    /// other node is known to lead, else `at_leader` forwards the request to
    /// the leader once; so does a change openraft refuses for not leading.
    /// `change` may refuse with a status of its own before proposing.
    async fn change_on_leader<T>(
        &self,
        request: Request<T>,
        change: impl AsyncFnOnce() -> Result<ChangeOutcome, Status>,
        at_leader: impl AsyncFnOnce(Channel, Request<T>) -> Result<Response<AdminResponse>, Status>,
    ) -> Result<Response<AdminResponse>, Status> {
        // The caller's credential is checked here; the leader then checks
        // this node's, which the forwarded request carries instead.
        let security = self.node.channels.security().clone();
        let at_leader = async move |channel, mut request| {
            security.authorize(&mut request);
            at_leader(channel, request).await
        };
        if let Some(leader) = self.other_leader() {
            return self
                .node
                .forward_to_leader(request, Some(leader), at_leader)
                .await;
        }
        match change().await? {
            Ok(response) => Ok(Response::new(AdminResponse {
                log_index: response.log_id.index,
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let leader = forward.leader_id.zip(forward.leader_node);
                self.node
                    .forward_to_leader(request, leader, at_leader)
                    .await
            }
            Err(error) => Err(Status::failed_precondition(error.to_string())),
        }
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn initialize(
        &self,
        request: Request<proto::InitializeRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        let members = BTreeMap::from([(self.node_id, BasicNode::new(&self.address))]);
        self.node
            .raft
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(AdminResponse { log_index: 0 }))
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        let member = request
            .get_ref()
            .member
            .clone()
            .ok_or_else(|| Status::invalid_argument("member is required"))?;
        let add = async || {
            guard::check_learner(&self.node.channels, &member).await?;
            let learner = BasicNode::new(&member.address);
            if let Some(recorded) = self.recorded_address(member.node_id)
                && recorded != member.address
            {
                // The node moved (a pod recreated with a new address, a
                // renamed host): the group must reach it at its new
                // address, or it never hears from the leader again. The
                // check above proved the node there is this node.
                tracing::info!(
                    node = member.node_id,
                    from = %recorded,
                    to = %member.address,
                    "a store member's address changed; recording the new one"
                );
                let moved = BTreeMap::from([(member.node_id, learner)]);
                let change = self
                    .node
                    .raft
                    .change_membership(ChangeMembers::SetNodes(moved), true);
                return Ok(change.await);
            }
            let added = self.node.raft.add_learner(member.node_id, learner, true);
            Ok(added.await)
        };
        self.change_on_leader(request, add, async |channel, request| {
            AdminClient::new(channel).add_learner(request).await
        })
        .await
    }

    async fn change_membership(
        &self,
        request: Request<proto::ChangeMembershipRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        let voters: BTreeSet<NodeId> = request.get_ref().voters.iter().copied().collect();
        let retain = !request.get_ref().remove_others;
        let (change, voter_change) = if request.get_ref().add {
            (
                ChangeMembers::AddVoterIds(voters.clone()),
                VoterChange::Add(voters),
            )
        } else {
            (
                ChangeMembers::ReplaceAllVoters(voters.clone()),
                VoterChange::Replace(voters),
            )
        };
        let change = async || {
            guard::check_majority(&self.node, &voter_change).await?;
            Ok(self.node.raft.change_membership(change, retain).await)
        };
        self.change_on_leader(request, change, async |channel, request| {
            AdminClient::new(channel).change_membership(request).await
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        let node_id = request.get_ref().node_id;
        let remove = async || {
            let is_voter = {
                let metrics = self.node.raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                if membership.get_node(&node_id).is_none() {
                    return Err(Status::not_found(format!(
                        "node {node_id} is not in the group"
                    )));
                }
                membership.voter_ids().any(|voter| voter == node_id)
            };
            let change = if is_voter {
                guard::check_majority(&self.node, &VoterChange::Remove(node_id)).await?;
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
            };
            // `retain = false`: a removed voter does not stay on as a learner.
            Ok(self.node.raft.change_membership(change, false).await)
        };
        self.change_on_leader(request, remove, async |channel, request| {
            AdminClient::new(channel).remove_node(request).await
        })
        .await
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(self.status_now()))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        if let Some(leader) = self.other_leader() {
            // The leader checks this node's credential, as for membership.
            let security = self.node.channels.security().clone();
            return self
                .node
                .forward_to_leader(request, Some(leader), async move |channel, mut request| {
                    security.authorize(&mut request);
                    AdminClient::new(channel).transfer_leader(request).await
                })
                .await;
        }
        let to = Some(request.get_ref().node_id).filter(|id| *id != 0);
        match hand_over(&self.node, to, TRANSFER_WITHIN).await {
            Ok(handed) => Ok(Response::new(proto::TransferLeaderResponse {
                leader_id: handed.leader_id,
                leader_address: handed.leader_address,
                term: handed.term,
            })),
            Err(HandOverError::NotLeader { .. }) => {
                Err(Status::unavailable("no leader is known; retry"))
            }
            Err(refused @ (HandOverError::NotAVoter(_) | HandOverError::NoOtherVoter)) => {
                Err(Status::failed_precondition(refused.to_string()))
            }
            Err(failed) => Err(Status::unavailable(failed.to_string())),
        }
    }

    // ---- The operations API: each in operations.rs -----------------------

    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        self.cluster_status_here().await
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        self.list_sessions_here(request).await
    }

    async fn get_session_info(
        &self,
        request: Request<proto::GetSessionInfoRequest>,
    ) -> Result<Response<proto::GetSessionInfoResponse>, Status> {
        self.get_session_info_here(request).await
    }

    async fn kick_client(
        &self,
        request: Request<proto::KickClientRequest>,
    ) -> Result<Response<proto::KickClientResponse>, Status> {
        self.kick_client_here(request).await
    }

    async fn delete_session(
        &self,
        request: Request<proto::DeleteSessionRequest>,
    ) -> Result<Response<proto::DeleteSessionResponse>, Status> {
        self.delete_session_here(request).await
    }

    async fn list_subscriptions(
        &self,
        request: Request<proto::ListSubscriptionsRequest>,
    ) -> Result<Response<proto::ListSubscriptionsResponse>, Status> {
        self.list_subscriptions_here(request).await
    }

    async fn list_retained(
        &self,
        request: Request<proto::ListRetainedRequest>,
    ) -> Result<Response<proto::ListRetainedResponse>, Status> {
        self.list_retained_here(request).await
    }

    async fn get_retained_message(
        &self,
        request: Request<proto::GetRetainedMessageRequest>,
    ) -> Result<Response<proto::GetRetainedMessageResponse>, Status> {
        self.get_retained_message_here(request).await
    }

    async fn delete_retained(
        &self,
        request: Request<proto::DeleteRetainedRequest>,
    ) -> Result<Response<proto::DeleteRetainedResponse>, Status> {
        self.delete_retained_here(request).await
    }
    // ---- end of the operations API ----------------------------------------
}

impl AdminService {
    /// The address the membership this node knows records for `node_id`.
    fn recorded_address(&self, node_id: NodeId) -> Option<String> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership.get_node(&node_id).map(|node| node.addr.clone())
    }

    /// This node's Raft status; on the leader, with each member's progress.
    pub(super) fn status_now(&self) -> proto::StatusResponse {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let member = |id: &NodeId, node: &BasicNode| proto::Member {
            node_id: *id,
            address: node.addr.clone(),
        };
        let voters: Vec<proto::Member> = membership
            .nodes()
            .filter(|(id, _)| membership.voter_ids().any(|voter| voter == **id))
            .map(|(id, node)| member(id, node))
            .collect();
        let learners: Vec<proto::Member> = membership
            .nodes()
            .filter(|(id, _)| !membership.voter_ids().any(|voter| voter == **id))
            .map(|(id, node)| member(id, node))
            .collect();
        let leader_id = metrics.current_leader.unwrap_or(0);
        let leader_address = metrics
            .current_leader
            .and_then(|leader| membership.get_node(&leader))
            .map(|node| node.addr.clone())
            .unwrap_or_default();
        let replication = metrics
            .replication
            .iter()
            .flatten()
            .map(|(node_id, matched)| proto::Progress {
                node_id: *node_id,
                known: matched.is_some(),
                matched_index: matched.map_or(0, |log_id| log_id.index),
            })
            .collect();
        proto::StatusResponse {
            node_id: metrics.id,
            leader_id,
            leader_address,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            voters,
            learners,
            state: format!("{:?}", metrics.state).to_lowercase(),
            replication,
            address: self.address.clone(),
        }
    }
}
