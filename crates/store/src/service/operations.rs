//! The Admin service's operations API (`rookery ctl` and the HTTP API):
//! cluster status with every member's progress, paged reads of sessions,
//! subscriptions and retained messages from this node's applied state, and
//! the operators' writes (kick, delete a session, delete a retained
//! message) through Raft on the leader.
//!
//! Reads are this replica's: any node answers for the whole cluster, a
//! follower at most a few entries behind. A write is forwarded to the
//! leader like a membership change, and answered once this node has applied
//! it, so that the operator's next read here sees it.

use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::admin::AdminService;
use super::guard;
use crate::db::Db;
use crate::inspect::{self, Page};
use crate::proto::{
    self, Command, CommandResult, admin_client::AdminClient, command::Kind,
    command_result::Kind as ResultKind,
};
use crate::writer::{Refusal, WriteError, now_ms};
use crate::{NodeId, StoreError};

/// How long a member has to answer for the cluster status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write's answer waits for this node to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(5);

fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "an operations read failed");
    Status::internal(error.to_string())
}

fn bad_cursor(cursor: &str) -> Result<Option<Vec<u8>>, Status> {
    inspect::parse_cursor(cursor).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// Runs a read of this node's database off the async runtime.
async fn read<T: Send + 'static>(
    db: &Arc<Db>,
    read: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || read(&db))
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(internal)
}

fn cursor_of<T>(page: &Page<T>) -> String {
    page.next.clone().unwrap_or_default()
}

/// One write's command and what its result answers.
type Answer<R> = Box<dyn FnOnce(CommandResult, u64) -> Result<R, Status> + Send>;

impl AdminService {
    /// Writes one operator command through the leader: here when this node
    /// leads, else the request goes to the leader once (with this node's
    /// admin credential); either way the answer waits until this node has
    /// applied the write.
    async fn write_on_leader<T, R>(
        &self,
        request: Request<T>,
        command: Command,
        answer: Answer<R>,
        log_index_of: impl FnOnce(&R) -> u64,
        at_leader: impl AsyncFnOnce(Channel, Request<T>) -> Result<Response<R>, Status>,
    ) -> Result<Response<R>, Status> {
        guard::authorize(self.node.channels.security(), &request)?;
        let reply = match self.node.writer.write(vec![command]).await {
            Ok(mut outcome) => {
                let result = outcome.results.pop().unwrap_or_default();
                answer(result, outcome.log_index)?
            }
            Err(
                WriteError::ForwardToLeader { leader }
                | WriteError::NotProposed(Refusal::NotLeader { leader }),
            ) => {
                let security = self.node.channels.security().clone();
                let at_leader = async move |channel, mut request| {
                    security.authorize(&mut request);
                    at_leader(channel, request).await
                };
                self.node
                    .forward_to_leader(request, leader, at_leader)
                    .await?
                    .into_inner()
            }
            Err(WriteError::NotProposed(refusal)) => {
                return Err(super::unproposed_status(&refusal));
            }
            Err(WriteError::TooLarge) => {
                return Err(Status::invalid_argument(WriteError::TooLarge.to_string()));
            }
            // Not proposed, or its outcome unknown: the operator retries.
            Err(other) => return Err(Status::unavailable(other.to_string())),
        };
        self.applied_here(log_index_of(&reply)).await;
        Ok(Response::new(reply))
    }

    /// Waits (bounded) until this node has applied `log_index`.
    async fn applied_here(&self, log_index: u64) {
        let mut watch = self.node.raft.metrics();
        let applied = watch.wait_for(|metrics| {
            metrics
                .last_applied
                .is_some_and(|log_id| log_id.index >= log_index)
        });
        if tokio::time::timeout(APPLY_WAIT, applied).await.is_err() {
            tracing::warn!(
                log_index,
                "an operator's write is committed but not yet applied on this node"
            );
        }
    }

    pub(super) async fn cluster_status_here(
        &self,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let own = self.status_now();
        let members: Vec<(NodeId, BasicNode, bool)> = {
            let metrics = self.node.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            membership
                .nodes()
                .map(|(id, node)| {
                    let voter = membership.voter_ids().any(|voter| voter == *id);
                    (*id, node.clone(), voter)
                })
                .collect()
        };
        let asked = members.into_iter().map(|(id, node, voter)| {
            let own = own.clone();
            let channels = self.node.channels.clone();
            async move {
                let answer = if id == own.node_id {
                    Ok(own)
                } else {
                    ask_status(&channels, &node.addr).await
                };
                let member = proto::Member {
                    node_id: id,
                    address: node.addr,
                };
                match answer {
                    Ok(status) => proto::NodeStatus {
                        member: Some(member),
                        voter,
                        status: Some(status),
                        ..proto::NodeStatus::default()
                    },
                    Err(error) => proto::NodeStatus {
                        member: Some(member),
                        voter,
                        error,
                        ..proto::NodeStatus::default()
                    },
                }
            }
        });
        let mut nodes = futures::future::join_all(asked).await;
        // The leader's own answer says how far each member has replicated.
        let leader = nodes
            .iter()
            .filter_map(|node| node.status.as_ref())
            .filter(|status| status.state == "leader")
            .max_by_key(|status| status.term)
            .cloned();
        let (leader_id, leader_address, term, leader_last) = match &leader {
            Some(status) => (
                status.node_id,
                own_address(&nodes, status.node_id),
                status.term,
                status.last_log_index,
            ),
            None => (own.leader_id, own.leader_address.clone(), own.term, 0),
        };
        if let Some(leader) = &leader {
            for node in &mut nodes {
                let id = node.member.as_ref().map_or(0, |member| member.node_id);
                if id == leader.node_id {
                    node.matched_known = true;
                    node.matched_index = leader.last_log_index;
                    continue;
                }
                if let Some(progress) = leader
                    .replication
                    .iter()
                    .find(|progress| progress.node_id == id && progress.known)
                {
                    node.matched_known = true;
                    node.matched_index = progress.matched_index;
                    node.lag = leader.last_log_index.saturating_sub(progress.matched_index);
                }
            }
        }
        Ok(Response::new(proto::ClusterStatusResponse {
            node_id: own.node_id,
            leader_id,
            leader_address,
            term,
            leader_last_log_index: leader_last,
            nodes,
        }))
    }

    pub(super) async fn list_sessions_here(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        let request = request.into_inner();
        let cursor = bad_cursor(&request.cursor)?;
        let page = read(&self.node.db, move |db| {
            let query = inspect::SessionQuery {
                online: request.online,
                edge: &request.edge,
                pattern: &request.pattern,
                limit: inspect::page_size(request.limit),
                cursor: cursor.as_deref(),
            };
            inspect::list_sessions(db, &query)
        })
        .await?;
        Ok(Response::new(proto::ListSessionsResponse {
            next_cursor: cursor_of(&page),
            sessions: page.items,
        }))
    }

    pub(super) async fn get_session_info_here(
        &self,
        request: Request<proto::GetSessionInfoRequest>,
    ) -> Result<Response<proto::GetSessionInfoResponse>, Status> {
        let client_id = request.into_inner().client_id;
        let details = read(&self.node.db, move |db| {
            inspect::session_details(db, &client_id)
        })
        .await?;
        Ok(Response::new(details))
    }

    pub(super) async fn kick_client_here(
        &self,
        request: Request<proto::KickClientRequest>,
    ) -> Result<Response<proto::KickClientResponse>, Status> {
        let client_id = request.get_ref().client_id.clone();
        let command = Command {
            kind: Some(Kind::Kick(proto::Kick {
                client_id: client_id.clone(),
            })),
        };
        let answer: Answer<proto::KickClientResponse> =
            Box::new(move |result, log_index| match result.kind {
                Some(ResultKind::Kicked(kicked)) => Ok(proto::KickClientResponse {
                    edge_id: kicked.edge_id,
                    log_index,
                }),
                Some(ResultKind::NoSession(_)) => Err(Status::not_found(format!(
                    "no client {client_id:?} is connected"
                ))),
                other => Err(unexpected(other)),
            });
        self.write_on_leader(
            request,
            command,
            answer,
            |reply| reply.log_index,
            async |channel, request| AdminClient::new(channel).kick_client(request).await,
        )
        .await
    }

    pub(super) async fn delete_session_here(
        &self,
        request: Request<proto::DeleteSessionRequest>,
    ) -> Result<Response<proto::DeleteSessionResponse>, Status> {
        let client_id = request.get_ref().client_id.clone();
        let command = Command {
            kind: Some(Kind::DiscardSession(proto::DiscardSession {
                client_id: client_id.clone(),
            })),
        };
        let answer: Answer<proto::DeleteSessionResponse> =
            Box::new(move |result, log_index| match result.kind {
                Some(ResultKind::Kicked(kicked)) => Ok(proto::DeleteSessionResponse {
                    kicked_edge_id: kicked.edge_id,
                    log_index,
                }),
                Some(ResultKind::Applied(_)) => Ok(proto::DeleteSessionResponse {
                    kicked_edge_id: String::new(),
                    log_index,
                }),
                Some(ResultKind::NoSession(_)) => {
                    Err(Status::not_found(format!("no session {client_id:?}")))
                }
                other => Err(unexpected(other)),
            });
        self.write_on_leader(
            request,
            command,
            answer,
            |reply| reply.log_index,
            async |channel, request| AdminClient::new(channel).delete_session(request).await,
        )
        .await
    }

    pub(super) async fn list_subscriptions_here(
        &self,
        request: Request<proto::ListSubscriptionsRequest>,
    ) -> Result<Response<proto::ListSubscriptionsResponse>, Status> {
        let request = request.into_inner();
        let cursor = bad_cursor(&request.cursor)?;
        let page = read(&self.node.db, move |db| {
            let query = inspect::SubscriptionQuery {
                client_id: &request.client_id,
                filter: &request.filter,
                limit: inspect::page_size(request.limit),
                cursor: cursor.as_deref(),
            };
            inspect::list_subscriptions(db, &query)
        })
        .await?;
        Ok(Response::new(proto::ListSubscriptionsResponse {
            next_cursor: cursor_of(&page),
            subscriptions: page.items,
        }))
    }

    pub(super) async fn list_retained_here(
        &self,
        request: Request<proto::ListRetainedRequest>,
    ) -> Result<Response<proto::ListRetainedResponse>, Status> {
        let request = request.into_inner();
        if !request.filter.is_empty() {
            rookery_topic::validate_topic_filter(&request.filter)
                .map_err(|error| Status::invalid_argument(format!("filter: {error}")))?;
        }
        let cursor = bad_cursor(&request.cursor)?;
        let now = now_ms();
        let page = read(&self.node.db, move |db| {
            inspect::list_retained(
                db,
                &request.filter,
                inspect::page_size(request.limit),
                cursor.as_deref(),
                now,
            )
        })
        .await?;
        Ok(Response::new(proto::ListRetainedResponse {
            next_cursor: cursor_of(&page),
            messages: page.items,
        }))
    }

    pub(super) async fn get_retained_message_here(
        &self,
        request: Request<proto::GetRetainedMessageRequest>,
    ) -> Result<Response<proto::GetRetainedMessageResponse>, Status> {
        let topic = request.into_inner().topic;
        let now = now_ms();
        let message = read(&self.node.db, move |db| {
            inspect::retained_message(db, &topic, now)
        })
        .await?;
        Ok(Response::new(proto::GetRetainedMessageResponse { message }))
    }

    pub(super) async fn delete_retained_here(
        &self,
        request: Request<proto::DeleteRetainedRequest>,
    ) -> Result<Response<proto::DeleteRetainedResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        if topic.is_empty() {
            return Err(Status::invalid_argument("a topic is required"));
        }
        // Deleting what is not there would still tell every edge: say so
        // instead (a message retained meanwhile elsewhere is deleted by a
        // second call).
        let lookup = topic.clone();
        let now = now_ms();
        let present = read(&self.node.db, move |db| {
            inspect::retained_message(db, &lookup, now)
        })
        .await?;
        if present.is_none() {
            return Err(Status::not_found(format!(
                "no message is retained on {topic:?}"
            )));
        }
        // MQTT-3.3.1-6: an empty retained payload clears the topic; every
        // edge drops its copy when it applies the entry.
        let command = Command {
            kind: Some(Kind::SetRetained(proto::SetRetained {
                message: Some(proto::Message {
                    topic,
                    retain: true,
                    ..proto::Message::default()
                }),
                ..proto::SetRetained::default()
            })),
        };
        let answer: Answer<proto::DeleteRetainedResponse> =
            Box::new(|result, log_index| match result.kind {
                Some(ResultKind::Applied(_)) => Ok(proto::DeleteRetainedResponse { log_index }),
                other => Err(unexpected(other)),
            });
        self.write_on_leader(
            request,
            command,
            answer,
            |reply| reply.log_index,
            async |channel, request| AdminClient::new(channel).delete_retained(request).await,
        )
        .await
    }
}

fn unexpected(result: Option<ResultKind>) -> Status {
    tracing::error!(?result, "unexpected result of an operator's write");
    Status::internal(format!("unexpected result {result:?}"))
}

/// The address the members' list gives `node_id`.
fn own_address(nodes: &[proto::NodeStatus], node_id: NodeId) -> String {
    nodes
        .iter()
        .filter_map(|node| node.member.as_ref())
        .find(|member| member.node_id == node_id)
        .map(|member| member.address.clone())
        .unwrap_or_default()
}

/// A member's status, or why it did not answer.
async fn ask_status(
    channels: &crate::network::Channels,
    address: &str,
) -> Result<proto::StatusResponse, String> {
    let channel = channels.get(address).map_err(|error| error.to_string())?;
    let mut admin = AdminClient::new(channel);
    match tokio::time::timeout(STATUS_TIMEOUT, admin.status(proto::StatusRequest {})).await {
        Ok(Ok(status)) => Ok(status.into_inner()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err(format!("no answer within {STATUS_TIMEOUT:?}")),
    }
}
