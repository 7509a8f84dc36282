//! The edge's view of the session store. Writes go to the store's leader in
//! submission order (on this node or over the cluster's write stream).
//! Reads and notifications come from one store replica: the one in this
//! process, or, on an edge-only node, the store node it follows. That
//! replica has applied every entry it notifies about, so a read that follows
//! a notification sees what it announced.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rookery_cluster::{
    Access, BadStoreAddress, LeaderWrites, MayHaveCommitted, StoreContact, WriteChain, WriteFailed,
};
use rookery_store::StoreError;
use rookery_store::machine::{self, Event, RetainedPage};
use rookery_store::proto::{self, Command, CommandResult, edge_event, store_client::StoreClient};
use rookery_store::writer::encoded_size;
use tokio::sync::{broadcast, mpsc};

use crate::write_budget::WriteBudget;

/// How long an edge-only node waits for a store node to follow.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer an edge-only node reads from a store node.
pub(crate) const READ_LIMIT: usize = 512 * 1024 * 1024;
/// Notifications an edge-only node may hold before it stops reading.
const FOLLOW_BUFFER: usize = 4096;

/// Why the store did not take a write or answer a read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreUnavailable {
    /// A write failed; the cause says whether it may have committed.
    #[error("session store: {0}")]
    Write(#[from] WriteFailed),
    /// A read failed (it changed nothing).
    #[error("session store read: {0}")]
    Read(#[from] ReadFailed),
}

impl StoreUnavailable {
    /// Whether what failed may have changed the store all the same: a write
    /// that may have committed (or may yet). False for a write that was
    /// never proposed, which may be refused and retried, and for a read.
    pub fn may_have_committed(&self) -> bool {
        match self {
            StoreUnavailable::Write(failed) => failed.may_have_committed(),
            StoreUnavailable::Read(_) => false,
        }
    }
}

/// Why a read from the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadFailed {
    /// The replica in this process could not read its state.
    #[error("the local replica: {0}")]
    LocalReplica(Arc<StoreError>),
    /// The store node this edge follows answered with an error.
    #[error("the followed store node: {}", .0.message())]
    Remote(tonic::Status),
    /// An edge-only node has no store node to read from yet.
    #[error("not following a store node")]
    NotFollowing,
    /// The followed store node's address cannot be reached by gRPC.
    #[error(transparent)]
    BadAddress(Arc<BadStoreAddress>),
    /// No store node could be followed within the bound.
    #[error("no store node to follow within {0:?}")]
    NothingToFollow(Duration),
}

impl From<StoreError> for StoreUnavailable {
    fn from(error: StoreError) -> Self {
        StoreUnavailable::Read(ReadFailed::LocalReplica(Arc::new(error)))
    }
}

impl From<tonic::Status> for StoreUnavailable {
    fn from(status: tonic::Status) -> Self {
        StoreUnavailable::Read(ReadFailed::Remote(status))
    }
}

/// The session store as this edge sees it: ordered writes through the
/// leader, reads and notifications from one replica.
#[derive(Debug, Clone)]
pub struct Store {
    access: Access,
    /// Writes in flight from this edge (backpressure, see `write_budget`).
    budget: Arc<WriteBudget>,
    /// On an edge-only node: the store node whose state it reads and
    /// follows.
    home: Arc<Mutex<Option<String>>>,
    writes: LeaderWrites,
    contact_bound: Duration,
    write_timeout: Duration,
    meters: Arc<WriteMeters>,
}

/// The Prometheus handles of the edge's store writes.
#[derive(Debug)]
struct WriteMeters {
    writes: metrics::Counter,
    failures: metrics::Counter,
    duration: metrics::Histogram,
}

impl WriteMeters {
    fn new() -> Self {
        WriteMeters {
            writes: metrics::counter!("rookery_store_writes_total"),
            failures: metrics::counter!("rookery_store_write_failures_total"),
            duration: metrics::histogram!("rookery_store_write_duration_seconds"),
        }
    }
}

/// What the store tells this edge.
#[derive(Debug)]
pub enum StoreEvent {
    /// A notification addressed to this edge.
    Edge(edge_event::Kind),
    /// A route appeared (a session subscribed, connected or resumed).
    RouteAdded(proto::Route),
    /// A route went away (a session ended, or unsubscribed).
    RouteRemoved(proto::Route),
    /// A retained message was set or cleared (on any edge).
    Retained(proto::Message),
    /// An edge registered, or moved: where to forward to it.
    EdgeRegistered(proto::Edge),
    /// Events were missed: the edge must read its state again.
    Lagged,
}

/// How a write goes to the leader (see [`LeaderWrites`]).
enum Kind<'a> {
    /// In order with every other write.
    Plain,
    /// A session's records: sent again if the leader died with them.
    Records,
    /// A publisher's: not sent after an earlier one of its chain failed.
    Chained(&'a Arc<WriteChain>),
}

impl Store {
    /// The store through `access`. `write_timeout` bounds each write (a
    /// store without a quorum); `contact_bound`: how long after the quorum
    /// was last heard from this edge still acknowledges QoS 1/2 publishes
    /// without checking again. `max_write_bytes_in_flight`: the budget of
    /// writes without an answer yet (0: none).
    pub fn new(
        access: Access,
        write_timeout: Duration,
        contact_bound: Duration,
        max_write_bytes_in_flight: usize,
    ) -> Self {
        let writes = LeaderWrites::new(access.clone(), write_timeout, contact_bound);
        Store {
            access,
            budget: WriteBudget::new(max_write_bytes_in_flight),
            home: Arc::default(),
            writes,
            contact_bound,
            write_timeout,
            meters: Arc::new(WriteMeters::new()),
        }
    }

    /// How long a write may take.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// The budget of writes in flight from this edge.
    pub fn budget(&self) -> &WriteBudget {
        &self.budget
    }

    /// Whether the store's quorum is within reach: heard from within the
    /// bound, or answering a check now (which waits at most the write
    /// timeout). False at once while the last check failed.
    pub async fn in_contact(&self) -> bool {
        match self.writes.contact(self.contact_bound) {
            StoreContact::Fresh => true,
            StoreContact::Lost => false,
            StoreContact::Stale => self.writes.check_quorum().await,
        }
    }

    /// Commits the commands (one Raft entry with other concurrent writes) and
    /// returns one result per command.
    pub async fn write(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, StoreUnavailable> {
        self.submit(commands).await
    }

    /// Queues the commands now, to commit after every write queued before
    /// them; the returned future need not be awaited for that.
    pub fn submit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, StoreUnavailable>> + Send + 'static {
        self.submit_as(commands, Kind::Plain)
    }

    /// As [`Store::submit`], for a session's records (packet identifiers
    /// sent, acknowledgements, releases): applied twice, in order with what
    /// followed them, they change nothing, so a write lost with a dying
    /// leader is sent again to the next one instead of failing
    /// (`LeaderWrites::submit_resendable`).
    pub fn submit_records(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, StoreUnavailable>> + Send + 'static {
        self.submit_as(commands, Kind::Records)
    }

    /// As [`Store::write`], for a publish of a connection: not sent once an
    /// earlier publish of `chain` failed, until the connection has heard of
    /// that (`WriteChain::mend`), so that a publish its client sends again
    /// is not stored behind later ones (MQTT-4.6.0-6).
    pub async fn write_chained(
        &self,
        commands: Vec<Command>,
        chain: &Arc<WriteChain>,
    ) -> Result<Vec<CommandResult>, StoreUnavailable> {
        self.submit_as(commands, Kind::Chained(chain)).await
    }

    fn submit_as(
        &self,
        commands: Vec<Command>,
        kind: Kind<'_>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, StoreUnavailable>> + Send + 'static {
        let meters = self.meters.clone();
        meters.writes.increment(1);
        let started = std::time::Instant::now();
        let charge = self.budget.charge(encoded_size(&commands));
        let outcome = match kind {
            Kind::Records => futures::future::Either::Left(self.writes.submit_resendable(commands)),
            Kind::Plain => futures::future::Either::Right(futures::future::Either::Left(
                self.writes.submit(commands),
            )),
            Kind::Chained(chain) => futures::future::Either::Right(futures::future::Either::Right(
                self.writes.submit_chained(commands, chain),
            )),
        };
        async move {
            let outcome = outcome.await;
            drop(charge);
            // Failed writes too: a write that timed out took that long.
            meters.duration.record(started.elapsed().as_secs_f64());
            outcome.map_err(|error| {
                meters.failures.increment(1);
                StoreUnavailable::Write(error)
            })
        }
    }

    /// One command's result.
    pub async fn write_one(&self, command: Command) -> Result<CommandResult, StoreUnavailable> {
        self.write(vec![command])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                // `LeaderWrites` answers one result per command; kept typed
                // rather than assumed.
                let missing = MayHaveCommitted::ResultsMismatch {
                    expected: 1,
                    received: 0,
                };
                StoreUnavailable::Write(missing.into())
            })
    }

    /// The store node an edge-only node reads from.
    fn home_client(&self) -> Result<StoreClient<tonic::transport::Channel>, StoreUnavailable> {
        let home = self.home.lock().clone().ok_or(ReadFailed::NotFollowing)?;
        let channel = self
            .access
            .channel(&home)
            .map_err(|error| ReadFailed::BadAddress(Arc::new(error)))?;
        // A queue read or the retained messages may be larger than gRPC's
        // default 4 MiB.
        Ok(StoreClient::new(channel).max_decoding_message_size(READ_LIMIT))
    }

    /// The entries of a session's queue after position `after`, at most
    /// `limit` of them, and the session's epoch where they were read.
    pub async fn queue_after(
        &self,
        client_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<proto::ReadQueueResponse, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(proto::ReadQueueResponse {
                entries: machine::read_queue_after(node.local_db(), client_id, after, limit)?,
                session_epoch: machine::read_session_epoch(node.local_db(), client_id)?
                    .unwrap_or(0),
            }),
            Access::Peers(_) => {
                let request = proto::ReadQueueRequest {
                    client_id: client_id.to_owned(),
                    after,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                };
                // Bounded: a followed node that stopped answering would hold
                // the session's connection until HTTP/2 keep-alive gave up.
                let mut client = self.home_client()?;
                match tokio::time::timeout(self.write_timeout, client.read_queue(request)).await {
                    Ok(answer) => Ok(answer?.into_inner()),
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "no answer within {:?}",
                        self.write_timeout
                    ))
                    .into()),
                }
            }
        }
    }

    /// The due wills handed to this edge that no edge has ended, from this
    /// node's replica, to publish after this edge may have missed their
    /// notices. Without a replica, the node this edge follows sends them as
    /// notices whenever the edge starts following it: none here.
    pub fn wills_handed_to(&self, edge_id: &str) -> Result<Vec<proto::WillDue>, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(machine::read_wills_handed_to(node.local_db(), edge_id)?),
            Access::Peers(_) => Ok(Vec::new()),
        }
    }

    /// The edges of the cluster as the followed replica knows them.
    pub async fn edges(&self) -> Result<Vec<proto::Edge>, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(machine::read_edges(node.local_db())?),
            Access::Peers(_) => Ok(self
                .home_client()?
                .list_edges(proto::ListEdgesRequest {})
                .await?
                .into_inner()
                .edges),
        }
    }

    /// The route table as the followed replica knows it.
    pub async fn routes(&self) -> Result<Vec<proto::Route>, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(machine::read_routes(node.local_db())?),
            Access::Peers(_) => Ok(self
                .home_client()?
                .list_routes(proto::ListRoutesRequest { local: true })
                .await?
                .into_inner()
                .routes),
        }
    }

    /// The retained messages whose topics `filter` matches, unexpired at
    /// `now_ms`.
    pub async fn retained(
        &self,
        filter: &str,
        now_ms: u64,
    ) -> Result<Vec<proto::Message>, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(machine::read_retained(node.local_db(), filter, now_ms)?),
            Access::Peers(_) => Ok(self
                .home_client()?
                .get_retained(proto::GetRetainedRequest {
                    filter: filter.to_owned(),
                    local: true,
                    ..proto::GetRetainedRequest::default()
                })
                .await?
                .into_inner()
                .messages),
        }
    }

    /// A page of the retained messages `filter` matches, in topic order:
    /// at most `limit`, from the first topic after `after`.
    pub async fn retained_page(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RetainedPage, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(machine::read_retained_page(
                node.local_db(),
                filter,
                after,
                limit,
                limit.saturating_mul(machine::RETAINED_SCAN_PER_MATCH),
                now_ms,
            )?),
            Access::Peers(_) => {
                let request = proto::GetRetainedRequest {
                    filter: filter.to_owned(),
                    local: true,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX).max(1),
                    after: after.unwrap_or_default().to_owned(),
                };
                let page = self
                    .home_client()?
                    .get_retained(request)
                    .await?
                    .into_inner();
                Ok(RetainedPage {
                    messages: page.messages,
                    resume_after: page.more.then_some(page.resume_after),
                })
            }
        }
    }

    /// Events for `edge_id`, in commit order. An edge-only node follows a
    /// store node first (it reads from that node afterwards).
    pub async fn events(&self, edge_id: String) -> Result<StoreEvents, StoreUnavailable> {
        match &self.access {
            Access::Replica(node) => Ok(StoreEvents::Replica {
                applied: node.subscribe_applied(),
                edge_id,
                pending: VecDeque::new(),
            }),
            Access::Peers(peers) => {
                let (sender, receiver) = mpsc::channel(FOLLOW_BUFFER);
                let (ready, first) = tokio::sync::oneshot::channel();
                tokio::spawn(crate::follow::follow(
                    peers.clone(),
                    self.home.clone(),
                    edge_id,
                    sender,
                    Some(ready),
                ));
                match tokio::time::timeout(FOLLOW_TIMEOUT, first).await {
                    Ok(Ok(())) => Ok(StoreEvents::Remote(receiver)),
                    _ => Err(ReadFailed::NothingToFollow(FOLLOW_TIMEOUT).into()),
                }
            }
        }
    }
}

/// The stream of what the store tells this edge (see [`Store::events`]).
#[derive(Debug)]
pub enum StoreEvents {
    /// From the replica in this process.
    Replica {
        applied: broadcast::Receiver<Arc<rookery_store::state_machine::Applied>>,
        edge_id: String,
        pending: VecDeque<StoreEvent>,
    },
    /// From the store node this edge follows.
    Remote(mpsc::Receiver<StoreEvent>),
}

impl StoreEvents {
    /// The next event; `None` when the store has stopped.
    pub async fn next(&mut self) -> Option<StoreEvent> {
        let (applied, edge_id, pending) = match self {
            StoreEvents::Remote(receiver) => return receiver.recv().await,
            StoreEvents::Replica {
                applied,
                edge_id,
                pending,
            } => (applied, edge_id, pending),
        };
        loop {
            if let Some(event) = pending.pop_front() {
                return Some(event);
            }
            let applied = match applied.recv().await {
                Ok(applied) => applied,
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(StoreEvent::Lagged),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if applied.reset {
                pending.push_back(StoreEvent::Lagged);
            }
            for event in &applied.events {
                match event {
                    Event::Edge { edge_id: to, event } if to == edge_id => {
                        pending.push_back(StoreEvent::Edge(event.clone()));
                    }
                    Event::Edge { .. } => {}
                    Event::RouteAdded(route) => {
                        pending.push_back(StoreEvent::RouteAdded(route.clone()));
                    }
                    Event::RouteRemoved(route) => {
                        pending.push_back(StoreEvent::RouteRemoved(route.clone()));
                    }
                    Event::Retained(message) => {
                        pending.push_back(StoreEvent::Retained(message.clone()));
                    }
                    Event::EdgeRegistered(edge) => {
                        pending.push_back(StoreEvent::EdgeRegistered(edge.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_cluster::NotProposed;

    /// Only a write that may have committed is an unknown outcome; a write
    /// never proposed and a read changed nothing.
    #[test]
    fn only_a_write_that_may_have_committed_says_so() {
        let never_proposed = StoreUnavailable::Write(NotProposed::NoLeader(Duration::ZERO).into());
        assert!(!never_proposed.may_have_committed());
        let timed_out =
            StoreUnavailable::Write(MayHaveCommitted::TimedOut(Duration::from_secs(1)).into());
        assert!(timed_out.may_have_committed());
        assert!(!StoreUnavailable::Read(ReadFailed::NotFollowing).may_have_committed());
    }
}
