//! The Store service, the session API edges call: writes (`Write`, and
//! `Submit`, a stream that keeps submission order), reads (sessions, routes,
//! retained messages, queues, edges) and the event streams (`WatchRoutes`,
//! `Follow`, `WatchEdge`).
//!
//! A follower forwards writes and linearizable reads to the leader once; the
//! reads marked `local`, the queue and edge reads and the streams are served
//! from this node's applied state.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::NodeHandles;
use crate::machine::{self, Event};
use crate::proto::{self, EdgeEvent, RouteEvent, store_client::StoreClient};
use crate::state_machine::{Applied, applied_index};
use crate::writer::{Refusal, WriteError, Writer, now_ms};
use crate::{NodeId, Raft, StoreError};

/// Events a watch stream may queue for a slow reader before it is cut off.
const WATCH_BUFFER: usize = 1024;

type LeaderCheckError = RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>;

/// The reply to an empty request of a submit stream: whether this node leads
/// with a quorum behind it now.
fn quorum_response(id: u64, checked: Result<(), LeaderCheckError>) -> proto::SubmitResponse {
    let mut reply = proto::SubmitResponse {
        id,
        ..proto::SubmitResponse::default()
    };
    match checked {
        Ok(_) => {}
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            reply.error = "not the leader".into();
            reply.not_leader = true;
            reply.leader_address = forward
                .leader_node
                .map(|node| node.addr)
                .unwrap_or_default();
        }
        Err(other) => reply.error = other.to_string(),
    }
    reply
}

/// The reply to one write of a submit stream.
fn submit_response(
    id: u64,
    outcome: Result<crate::writer::WriteOutcome, WriteError>,
) -> proto::SubmitResponse {
    let mut reply = proto::SubmitResponse {
        id,
        ..proto::SubmitResponse::default()
    };
    match outcome {
        Ok(outcome) => {
            reply.results = outcome.results;
            reply.log_index = outcome.log_index;
        }
        Err(WriteError::ForwardToLeader { leader }) => {
            reply.error = "not the leader".into();
            reply.not_leader = true;
            reply.leader_address = leader.map(|(_, node)| node.addr).unwrap_or_default();
        }
        Err(error) => reply.error = error.to_string(),
    }
    reply
}

/// The next applied entry for a stream, or `None` once the stream must end:
/// the store stopped or is stopping, or the watcher fell behind, or (with
/// `ends_on_reset`, for streams that mirror state) a snapshot replaced the
/// state; the client is told to watch again (here or elsewhere).
async fn next_applied<T>(
    applied: &mut broadcast::Receiver<Arc<Applied>>,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
    sender: &mpsc::Sender<Result<T, Status>>,
    ends_on_reset: bool,
) -> Option<Arc<Applied>> {
    let why = tokio::select! {
        received = applied.recv() => match received {
            Ok(next) if ends_on_reset && next.reset => {
                Status::aborted("the store installed a snapshot; watch again")
            }
            Ok(next) => return Some(next),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Status::aborted("the watcher fell behind; watch again")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        },
        // A node that stops ends its streams first, so that their edges
        // follow another node at once (and the server stops without
        // waiting for them).
        () = stopped(stopping) => Status::unavailable("this store node is stopping; watch another"),
    };
    let _ = sender.send(Err(why)).await;
    None
}

/// Resolves once the node stops (never if it cannot tell).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "store read failed");
    Status::internal(error.to_string())
}

/// What one write of a submit stream resolves to.
type SubmitAnswer = Pin<Box<dyn Future<Output = proto::SubmitResponse> + Send>>;

/// Serves one edge's submit stream. Each write is queued with the writer as
/// it is read (so writes commit in arrival order) and answered when it
/// commits; replies carry the request's id, so they may leave in any order.
/// At most `max_in_flight` writes and quorum checks wait at once, all in this
/// one task: at the limit the stream is not read until one completes, and
/// HTTP/2 flow control then holds the sending edge back, instead of a task
/// per request queuing without bound.
///
/// When this node stops taking writes (it does not lead, or hands its
/// leadership over: the writer refuses a request, or closes) the stream is
/// read no further: the writes already taken are answered, then the stream
/// ends with a status that says every request not answered was never
/// proposed ([`super::unproposed_status`]), so the edge sends them again, in
/// order, to the next leader.
async fn serve_submit(
    mut requests: tonic::Streaming<proto::SubmitRequest>,
    writer: Writer,
    raft: Raft,
    sender: mpsc::Sender<Result<proto::SubmitResponse, Status>>,
    max_in_flight: usize,
) {
    let mut in_flight: FuturesUnordered<SubmitAnswer> = FuturesUnordered::new();
    let mut closed = writer.closed_watch();
    let mut reading = true;
    let mut held_back = false;
    let mut refused: Option<Refusal> = None;
    loop {
        let room = in_flight.len() < max_in_flight.max(1);
        if !room && !held_back {
            submit_held_back(max_in_flight);
        }
        held_back = !room;
        tokio::select! {
            request = requests.message(), if reading && room => match request {
                Ok(Some(request)) => match answer(request, &writer, &raft) {
                    Ok(reply) => in_flight.push(reply),
                    Err(refusal) => {
                        reading = false;
                        refused = Some(refusal);
                    }
                },
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "a submit stream ended");
                    reading = false;
                }
            },
            // An idle stream ends too, so that its edge moves on before it
            // writes (and the server can stop without waiting for it).
            Ok(()) = closed_now(&mut closed), if reading => {
                reading = false;
                refused = Some(Refusal::HandingOver);
            }
            Some(reply) = in_flight.next() => {
                if sender.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            else => break,
        }
    }
    if let Some(refusal) = refused {
        let _ = sender.send(Err(super::unproposed_status(&refusal))).await;
    }
}

/// Resolves once the writer is closed (an error once it is gone).
async fn closed_now(closed: &mut tokio::sync::watch::Receiver<bool>) -> Result<(), ()> {
    closed
        .wait_for(|closed| *closed)
        .await
        .map(|_| ())
        .map_err(|_| ())
}

/// Queues one request of a submit stream and resolves to its reply; a
/// request this node does not take now is refused (nothing proposed).
fn answer(
    request: proto::SubmitRequest,
    writer: &Writer,
    raft: &Raft,
) -> Result<SubmitAnswer, Refusal> {
    let id = request.id;
    if request.commands.is_empty() {
        // No write: the edge asks whether this leader still has a quorum (a
        // read index, nothing in the log). A node that would refuse a write
        // refuses the check alike, so the edge asks the next leader.
        if let Some(refusal) = writer.refusal() {
            return Err(refusal);
        }
        let raft = raft.clone();
        return Ok(Box::pin(async move {
            quorum_response(id, raft.ensure_linearizable().await.map(|_| ()))
        }));
    }
    // Queued here, in arrival order, before the next request is read.
    let outcome = writer
        .try_submit(request.commands)
        .map_err(|refused| refused.refusal)?;
    Ok(Box::pin(async move { submit_response(id, outcome.await) }))
}

/// Counts a submit stream that reached its limit, and says so once.
fn submit_held_back(max_in_flight: usize) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    metrics::counter!("rookery_store_submit_held_back_total").increment(1);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            max_in_flight,
            "an edge's write stream reached store.max_submit_in_flight writes waiting to \
             commit; it is read again as they commit (logged once; counted in \
             rookery_store_submit_held_back_total)"
        );
    }
}

/// The Store service, the session API edges call.
#[derive(Debug)]
pub struct StoreService {
    node: NodeHandles,
    max_submit_in_flight: usize,
}

impl StoreService {
    /// The service over this node's handles; each submit stream may have
    /// `max_submit_in_flight` writes waiting to commit.
    pub fn new(node: NodeHandles, max_submit_in_flight: usize) -> Self {
        StoreService {
            node,
            max_submit_in_flight,
        }
    }

    /// Waits until this node may serve a linearizable read, or names the
    /// leader that can.
    async fn read_barrier(&self) -> Result<Option<(NodeId, BasicNode)>, Status> {
        match self.node.raft.ensure_linearizable().await {
            Ok(_) => Ok(None),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                match forward.leader_id.zip(forward.leader_node) {
                    Some(leader) => Ok(Some(leader)),
                    None => Err(Status::unavailable("no leader is known; retry")),
                }
            }
            Err(other) => Err(Status::unavailable(other.to_string())),
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl proto::store_server::Store for StoreService {
    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let commands = request.get_ref().commands.clone();
        match self.node.writer.write(commands).await {
            Ok(outcome) => Ok(Response::new(proto::WriteResponse {
                results: outcome.results,
                log_index: outcome.log_index,
            })),
            Err(
                WriteError::ForwardToLeader { leader }
                | WriteError::NotProposed(Refusal::NotLeader { leader }),
            ) => {
                self.node
                    .forward_to_leader(request, leader, async |channel, request| {
                        StoreClient::new(channel).write(request).await
                    })
                    .await
            }
            Err(WriteError::NotProposed(refusal)) => Err(super::unproposed_status(&refusal)),
            Err(WriteError::TooLarge) => {
                Err(Status::invalid_argument(WriteError::TooLarge.to_string()))
            }
            Err(WriteError::Raft(reason)) => Err(Status::unavailable(reason)),
        }
    }

    type SubmitStream = EventStream<proto::SubmitResponse>;

    async fn submit(
        &self,
        request: Request<tonic::Streaming<proto::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        // A node handing over sends its edges on at once (nothing was sent).
        if self.node.writer.is_closed() {
            return Err(super::unproposed_status(&Refusal::HandingOver));
        }
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(serve_submit(
            request.into_inner(),
            self.node.writer.clone(),
            self.node.raft.clone(),
            sender,
            self.max_submit_in_flight,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_session(
        &self,
        request: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::GetSessionResponse>, Status> {
        if let Some(leader) = self.read_barrier().await? {
            return self
                .node
                .forward_to_leader(request, Some(leader), async |channel, request| {
                    StoreClient::new(channel).get_session(request).await
                })
                .await;
        }
        machine::read_session(&*self.node.db, &request.get_ref().client_id)
            .map(Response::new)
            .map_err(internal)
    }

    async fn list_routes(
        &self,
        request: Request<proto::ListRoutesRequest>,
    ) -> Result<Response<proto::ListRoutesResponse>, Status> {
        if !request.get_ref().local
            && let Some(leader) = self.read_barrier().await?
        {
            return self
                .node
                .forward_to_leader(request, Some(leader), async |channel, request| {
                    StoreClient::new(channel).list_routes(request).await
                })
                .await;
        }
        let applied_index = applied_index(&self.node.db).map_err(internal)?;
        let routes = machine::read_routes(&*self.node.db).map_err(internal)?;
        Ok(Response::new(proto::ListRoutesResponse {
            routes,
            applied_index,
        }))
    }

    async fn get_retained(
        &self,
        request: Request<proto::GetRetainedRequest>,
    ) -> Result<Response<proto::GetRetainedResponse>, Status> {
        if !request.get_ref().local
            && let Some(leader) = self.read_barrier().await?
        {
            return self
                .node
                .forward_to_leader(request, Some(leader), async |channel, request| {
                    StoreClient::new(channel).get_retained(request).await
                })
                .await;
        }
        let request = request.get_ref();
        if request.limit == 0 {
            let messages = machine::read_retained(&*self.node.db, &request.filter, now_ms())
                .map_err(internal)?;
            return Ok(Response::new(proto::GetRetainedResponse {
                messages,
                ..proto::GetRetainedResponse::default()
            }));
        }
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let after = (!request.after.is_empty()).then_some(request.after.as_str());
        let page = machine::read_retained_page(
            &*self.node.db,
            &request.filter,
            after,
            limit,
            limit.saturating_mul(machine::RETAINED_SCAN_PER_MATCH),
            now_ms(),
        )
        .map_err(internal)?;
        Ok(Response::new(proto::GetRetainedResponse {
            messages: page.messages,
            more: page.resume_after.is_some(),
            resume_after: page.resume_after.unwrap_or_default(),
        }))
    }

    type WatchRoutesStream = EventStream<RouteEvent>;

    /// The table as of an applied index, then every change after it. Changes
    /// between that index and the table read may arrive again; they are
    /// idempotent (add and remove by key), so a cache that applies them in
    /// order ends where the store is. A watcher that falls behind, or a node
    /// that installs a snapshot, ends the stream: the caller watches again.
    async fn watch_routes(
        &self,
        _request: Request<proto::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let mut applied = self.node.applied.subscribe();
        let mut stopping = self.node.stopping.subscribe();
        let start_index = applied_index(&self.node.db).map_err(internal)?;
        let routes = machine::read_routes(&*self.node.db).map_err(internal)?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let _ = sender.try_send(Ok(RouteEvent {
            snapshot: true,
            added: routes,
            removed: Vec::new(),
            applied_index: start_index,
        }));
        tokio::spawn(async move {
            loop {
                let Some(next) = next_applied(&mut applied, &mut stopping, &sender, true).await
                else {
                    return;
                };
                if next.log_index <= start_index {
                    continue;
                }
                let mut event = RouteEvent {
                    snapshot: false,
                    added: Vec::new(),
                    removed: Vec::new(),
                    applied_index: next.log_index,
                };
                for change in &next.events {
                    match change {
                        Event::RouteAdded(route) => event.added.push(route.clone()),
                        Event::RouteRemoved(route) => event.removed.push(route.clone()),
                        Event::Edge { .. } | Event::Retained(_) | Event::EdgeRegistered(_) => {}
                    }
                }
                if event.added.is_empty() && event.removed.is_empty() {
                    continue;
                }
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    type FollowStream = EventStream<proto::FollowEvent>;

    async fn follow(
        &self,
        request: Request<proto::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        use proto::follow_event::Kind as Follow;
        let edge_id = request.into_inner().edge_id;
        // Subscribed before `ready` goes out: what the edge reads after it
        // cannot miss a change.
        let mut applied = self.node.applied.subscribe();
        let mut stopping = self.node.stopping.subscribe();
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let _ = sender.try_send(Ok(proto::FollowEvent {
            kind: Some(Follow::Ready(true)),
        }));
        // Wills handed to the edge while it followed no node (or another):
        // it missed their notices. A will sent twice is published once.
        for due in machine::read_wills_handed_to(&*self.node.db, &edge_id).map_err(internal)? {
            let kind = Follow::Edge(EdgeEvent {
                kind: Some(proto::edge_event::Kind::WillDue(due)),
            });
            if sender
                .try_send(Ok(proto::FollowEvent { kind: Some(kind) }))
                .is_err()
            {
                // More than the stream's buffer: the rest come when the
                // store hands them out again.
                break;
            }
        }
        tokio::spawn(async move {
            loop {
                let Some(next) = next_applied(&mut applied, &mut stopping, &sender, true).await
                else {
                    return;
                };
                for change in &next.events {
                    let kind = match change {
                        Event::Edge {
                            edge_id: addressee,
                            event,
                        } if *addressee == edge_id => Follow::Edge(EdgeEvent {
                            kind: Some(event.clone()),
                        }),
                        Event::Edge { .. } => continue,
                        Event::RouteAdded(route) => Follow::RouteAdded(route.clone()),
                        Event::RouteRemoved(route) => Follow::RouteRemoved(route.clone()),
                        Event::Retained(message) => Follow::Retained(message.clone()),
                        Event::EdgeRegistered(edge) => Follow::EdgeRegistered(edge.clone()),
                    };
                    let event = proto::FollowEvent { kind: Some(kind) };
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn read_queue(
        &self,
        request: Request<proto::ReadQueueRequest>,
    ) -> Result<Response<proto::ReadQueueResponse>, Status> {
        let request = request.into_inner();
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let entries =
            machine::read_queue_after(&*self.node.db, &request.client_id, request.after, limit)
                .map_err(internal)?;
        let session_epoch = machine::read_session_epoch(&*self.node.db, &request.client_id)
            .map_err(internal)?
            .unwrap_or(0);
        Ok(Response::new(proto::ReadQueueResponse {
            entries,
            session_epoch,
        }))
    }

    async fn list_edges(
        &self,
        _request: Request<proto::ListEdgesRequest>,
    ) -> Result<Response<proto::ListEdgesResponse>, Status> {
        let edges = machine::read_edges(&*self.node.db).map_err(internal)?;
        Ok(Response::new(proto::ListEdgesResponse { edges }))
    }

    type WatchEdgeStream = EventStream<EdgeEvent>;

    async fn watch_edge(
        &self,
        request: Request<proto::WatchEdgeRequest>,
    ) -> Result<Response<Self::WatchEdgeStream>, Status> {
        let edge_id = request.into_inner().edge_id;
        let mut applied = self.node.applied.subscribe();
        let mut stopping = self.node.stopping.subscribe();
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let Some(next) = next_applied(&mut applied, &mut stopping, &sender, false).await
                else {
                    return;
                };
                for change in &next.events {
                    if let Event::Edge {
                        edge_id: addressee,
                        event,
                    } = change
                        && *addressee == edge_id
                    {
                        let event = EdgeEvent {
                            kind: Some(event.clone()),
                        };
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
