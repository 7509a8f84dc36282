//! An edge's writes to the store, in the order it submits them.
//!
//! A session relies on order: it queues its acknowledgements without waiting
//! and later reuses their packet identifiers, so a later write must never
//! commit before an earlier one. On the leader's own node the group-commit
//! writer keeps that order; elsewhere, the writes travel on one `Submit`
//! stream to the leader, which queues them in arrival order. One task hands
//! every write to whichever of the two leads now, so no two paths race.
//!
//! A write may fail (no leader found, the leader changed under it, no quorum
//! answered within the timeout). [`WriteFailed`] says whether it certainly
//! was never proposed to Raft or may have committed (or may yet); a failed
//! write is not retried here either way. Callers decide: a publisher is told
//! with a reason code, a session whose detached write failed ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rookery_store::StoreNode;
use rookery_store::proto::{
    Command, CommandResult, SubmitRequest, SubmitResponse, store_client::StoreClient,
};
use rookery_store::writer::{WriteError, now_ms};

use crate::access::{Access, BadStoreAddress, LeaderAt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// Why a write did not commit, split by whether it may have committed all
/// the same: only a write that certainly was never proposed to Raft may be
/// treated as refused (and retried at once).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailed {
    /// The write never reached Raft: it has not committed and never will.
    #[error("the write was not proposed: {0}")]
    NotProposed(#[from] NotProposed),
    /// The write was handed on towards the leader and then lost sight of:
    /// it may have committed, or may still.
    #[error("the write may have committed: {0}")]
    MayHaveCommitted(#[from] MayHaveCommitted),
}

impl WriteFailed {
    /// Whether the write may have committed (or may yet); false only when
    /// it certainly never reached Raft.
    pub fn may_have_committed(&self) -> bool {
        match self {
            WriteFailed::NotProposed(_) => false,
            WriteFailed::MayHaveCommitted(_) => true,
        }
    }
}

/// How a write failed before it was proposed to Raft.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotProposed {
    /// No store node named a leader within the write timeout.
    #[error("no store leader was found within {0:?}")]
    NoLeader(Duration),
    /// The edge's write router has stopped (the edge is shutting down).
    #[error("the edge's write router has stopped")]
    RouterStopped,
    /// The leader's store address cannot be reached by gRPC at all.
    #[error(transparent)]
    BadLeaderAddress(Arc<BadStoreAddress>),
    /// The leader did not open a write stream (unreachable, or refused it);
    /// nothing had been sent on it.
    #[error("the store leader at {address} did not open a write stream: {}", .status.message())]
    StreamRefused {
        /// The leader's store address.
        address: String,
        /// What the gRPC call answered.
        status: tonic::Status,
    },
    /// The write stream to the leader had ended before the write was sent.
    #[error(
        "the write stream to the store leader at {address} had ended before the write was sent"
    )]
    StreamEnded {
        /// The leader's store address.
        address: String,
    },
    /// The write carries more commands than one write may.
    #[error(
        "a write carries at most {} commands",
        rookery_store::machine::MAX_COMMANDS_PER_BATCH
    )]
    TooLarge,
    /// A quorum check (which proposes nothing) on the leader in this
    /// process failed: the leader could not confirm its quorum.
    #[error("the leader could not confirm its quorum: {0}")]
    QuorumUnconfirmed(String),
}

/// How a write failed after it was handed on towards the leader: it may
/// have committed, or may still.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MayHaveCommitted {
    /// No outcome within the write timeout; the write may still be on its
    /// way, in order.
    #[error("the store did not answer within {0:?}")]
    TimedOut(Duration),
    /// The node the write was handed to no longer leads. Openraft answers
    /// the same `ForwardToLeader` when it refuses a proposal and when a newer
    /// leader removes a proposed entry from this node's log, which another
    /// node that holds the entry may still commit; the two cannot be told
    /// apart.
    #[error("the store leader changed under the write")]
    LeaderChanged,
    /// The write stream to the leader broke after the write was sent.
    #[error(
        "the write stream to the store leader at {address} broke after the write was sent: {reason}"
    )]
    StreamBroke {
        /// The leader's store address.
        address: String,
        /// How the stream ended.
        reason: String,
    },
    /// The leader answered the write with an error.
    #[error("the store leader at {address} failed the write: {reason}")]
    LeaderFailed {
        /// The leader's store address.
        address: String,
        /// The leader's error, as it sent it.
        reason: String,
    },
    /// Raft in this process failed the write (it stopped, or lost the
    /// commit's outcome).
    #[error("raft: {0}")]
    Raft(String),
    /// The write's outcome was dropped on the way back (the router or the
    /// replica stopped).
    #[error("the write's outcome was dropped before it was known")]
    OutcomeDropped,
    /// The store committed the write but answered a different number of
    /// results than it carried commands.
    #[error("the store answered {received} results for {expected} commands")]
    ResultsMismatch {
        /// Commands in the write.
        expected: usize,
        /// Results in the answer.
        received: usize,
    },
}

/// Where a queued write's outcome goes.
type OutcomeSender = oneshot::Sender<Result<Vec<CommandResult>, WriteFailed>>;

/// A write waiting in the router's queue.
struct QueuedWrite {
    commands: Vec<Command>,
    outcome: OutcomeSender,
}

/// Writes to the store through its leader, in submission order.
#[derive(Debug, Clone)]
pub struct LeaderWrites {
    queue: mpsc::UnboundedSender<QueuedWrite>,
    timeout: Duration,
    contact: Arc<QuorumContact>,
    /// While the replica in this process leads, writes go straight to its
    /// group-commit writer (in order there), not through the router.
    local_replica: Option<Arc<LocalReplica>>,
}

/// The store replica in this process, and whether it leads now.
#[derive(Debug)]
struct LocalReplica {
    node: Arc<StoreNode>,
    leading: AtomicBool,
}

/// Keeps `LocalReplica::leading` current; ends with the last handle (it
/// holds a weak one, so that the store can stop).
async fn follow_leadership(replica: std::sync::Weak<LocalReplica>) {
    let Some(mut watch) = replica
        .upgrade()
        .map(|replica| replica.node.raft().metrics())
    else {
        return;
    };
    loop {
        let leading = watch.borrow_and_update().state.is_leader();
        match replica.upgrade() {
            Some(replica) => replica.leading.store(leading, Ordering::Release),
            None => return,
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// When this edge last knew the store's leader to have a quorum behind it.
#[derive(Debug, Default)]
struct QuorumContact {
    /// ms since the Unix epoch of the last committed write or quorum check.
    confirmed_at_ms: AtomicU64,
    /// The last check failed: the store is out of reach until one succeeds.
    lost: AtomicBool,
}

impl QuorumContact {
    fn confirmed(&self) {
        self.confirmed_at_ms.store(now_ms(), Ordering::Release);
        self.lost.store(false, Ordering::Release);
    }
}

/// How often an edge that has not heard from a quorum for a while checks.
const CONTACT_CHECK_EVERY: Duration = Duration::from_millis(250);

/// What an edge knows of its contact with the store's quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreContact {
    /// A write committed or a quorum check passed within the bound.
    Fresh,
    /// Nothing confirmed within the bound; a check is worth waiting for.
    Stale,
    /// The last check failed: the store is out of reach.
    Lost,
}

impl LeaderWrites {
    /// Writes through the store `access` reaches. `timeout` bounds each
    /// write: a store without a quorum refuses within it instead of holding a
    /// publisher forever. Contact with the quorum is checked in the
    /// background once nothing confirmed it for `fresh_for`.
    pub fn new(access: Access, timeout: Duration, fresh_for: Duration) -> LeaderWrites {
        let local_replica = access.replica().map(|node| {
            let replica = Arc::new(LocalReplica {
                node: node.clone(),
                leading: AtomicBool::new(false),
            });
            tokio::spawn(follow_leadership(Arc::downgrade(&replica)));
            replica
        });
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(route_writes(access, queued, timeout));
        let writes = LeaderWrites {
            queue,
            timeout,
            contact: Arc::default(),
            local_replica,
        };
        tokio::spawn(keep_contact(
            writes.queue.downgrade(),
            writes.contact.clone(),
            timeout,
            fresh_for,
        ));
        writes
    }

    /// Whether the store's quorum was heard from within `fresh_for`.
    pub fn contact(&self, fresh_for: Duration) -> StoreContact {
        let age = now_ms().saturating_sub(self.contact.confirmed_at_ms.load(Ordering::Acquire));
        if u128::from(age) <= fresh_for.as_millis() {
            StoreContact::Fresh
        } else if self.contact.lost.load(Ordering::Acquire) {
            StoreContact::Lost
        } else {
            StoreContact::Stale
        }
    }

    /// Asks the leader whether it still has a quorum (no log entry is
    /// written); true when it does, within the write timeout.
    pub async fn check_quorum(&self) -> bool {
        // A check travels as a write without commands; only whether it
        // passed matters (it commits nothing, whatever its error says).
        let confirmed = self.submit(Vec::new()).await.is_ok();
        if !confirmed {
            self.contact.lost.store(true, Ordering::Release);
        }
        confirmed
    }

    /// Queues the commands now; the future resolves to their results, one
    /// per command. Writes commit in submission order whether or not each
    /// future is awaited.
    pub fn submit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, WriteFailed>> + Send + 'static {
        let timeout = self.timeout;
        let contact = self.contact.clone();
        let expected = commands.len();
        if let Some(replica) = self
            .local_replica
            .as_ref()
            .filter(|replica| replica.leading.load(Ordering::Acquire))
            && !commands.is_empty()
        {
            let outcome = replica.node.submit(commands);
            return futures::future::Either::Left(async move {
                let outcome = match tokio::time::timeout(timeout, outcome).await {
                    Ok(Ok(outcome)) => Ok(outcome.results),
                    Ok(Err(error)) => Err(local_write_failed(error)),
                    Err(_) => Err(MayHaveCommitted::TimedOut(timeout).into()),
                };
                if outcome.is_ok() {
                    contact.confirmed();
                }
                outcome.and_then(|results| one_result_per_command(expected, results))
            });
        }
        let (outcome, result) = oneshot::channel();
        let queued = self.queue.send(QueuedWrite { commands, outcome }).is_ok();
        futures::future::Either::Right(async move {
            if !queued {
                return Err(NotProposed::RouterStopped.into());
            }
            let outcome = match tokio::time::timeout(timeout, result).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(MayHaveCommitted::OutcomeDropped.into()),
                Err(_) => Err(MayHaveCommitted::TimedOut(timeout).into()),
            };
            if outcome.is_ok() {
                contact.confirmed();
            }
            outcome.and_then(|results| one_result_per_command(expected, results))
        })
    }
}

/// The results of a committed write, checked to be one per command (callers
/// pair them up).
fn one_result_per_command(
    expected: usize,
    results: Vec<CommandResult>,
) -> Result<Vec<CommandResult>, WriteFailed> {
    if results.len() == expected {
        Ok(results)
    } else {
        Err(MayHaveCommitted::ResultsMismatch {
            expected,
            received: results.len(),
        }
        .into())
    }
}

/// What a failure of the group-commit writer in this process means.
fn local_write_failed(error: WriteError) -> WriteFailed {
    match error {
        // Refused before it was queued.
        WriteError::TooLarge => NotProposed::TooLarge.into(),
        WriteError::ForwardToLeader { .. } => MayHaveCommitted::LeaderChanged.into(),
        // Raft stopped, before or after the proposal: not known which.
        WriteError::Raft(reason) => MayHaveCommitted::Raft(reason).into(),
    }
}

/// Writes sent on a stream and not yet answered, by id; `None` once the
/// stream has ended.
type Unanswered = Arc<Mutex<Option<HashMap<u64, OutcomeSender>>>>;

/// The open stream to a leader on another node.
struct RemoteLeader {
    address: String,
    requests: mpsc::Sender<SubmitRequest>,
    unanswered: Unanswered,
    next_id: u64,
}

impl RemoteLeader {
    fn is_open(&self) -> bool {
        self.unanswered.lock().is_some() && !self.requests.is_closed()
    }

    /// Hands a write to the stream; the stream's reader delivers its outcome.
    async fn send(&mut self, write: QueuedWrite) {
        let id = self.next_id;
        self.next_id += 1;
        {
            let mut unanswered = self.unanswered.lock();
            match unanswered.as_mut() {
                Some(unanswered) => {
                    unanswered.insert(id, write.outcome);
                }
                None => {
                    let ended = NotProposed::StreamEnded {
                        address: self.address.clone(),
                    };
                    let _ = write.outcome.send(Err(ended.into()));
                    return;
                }
            }
        }
        let request = SubmitRequest {
            id,
            commands: write.commands,
        };
        if self.requests.send(request).await.is_err()
            && let Some(outcome) = self.unanswered.lock().as_mut().and_then(|u| u.remove(&id))
        {
            let ended = NotProposed::StreamEnded {
                address: self.address.clone(),
            };
            let _ = outcome.send(Err(ended.into()));
        }
    }
}

/// The one task that hands every queued write, in queue order, to the
/// leader: the replica in this process, or one stream per remote leader
/// (kept open while that node leads).
async fn route_writes(
    access: Access,
    mut queued: mpsc::UnboundedReceiver<QueuedWrite>,
    timeout: Duration,
) {
    let mut remote: Option<RemoteLeader> = None;
    while let Some(write) = queued.recv().await {
        let address = match access.leader(timeout).await {
            None => {
                let _ = write
                    .outcome
                    .send(Err(NotProposed::NoLeader(timeout).into()));
                continue;
            }
            Some(LeaderAt::LocalReplica(node)) => {
                write_on_local_leader(node, write);
                continue;
            }
            Some(LeaderAt::Remote(address)) => address,
        };
        let reusable = remote
            .take()
            .filter(|open| open.address == address && open.is_open());
        let open = match reusable {
            Some(open) => open,
            None => match open_stream(&access, &address).await {
                Ok(open) => open,
                Err(error) => {
                    access.leader_lost(&address);
                    let _ = write.outcome.send(Err(error.into()));
                    continue;
                }
            },
        };
        remote.insert(open).send(write).await;
    }
}

/// A write (or, with no commands, a quorum check) on the leader in this
/// process.
fn write_on_local_leader(node: &Arc<StoreNode>, write: QueuedWrite) {
    if write.commands.is_empty() {
        let raft = node.raft().clone();
        tokio::spawn(async move {
            let checked = raft
                .ensure_linearizable()
                .await
                .map(|_| Vec::new())
                .map_err(|error| NotProposed::QuorumUnconfirmed(error.to_string()).into());
            let _ = write.outcome.send(checked);
        });
        return;
    }
    let outcome = node.submit(write.commands);
    tokio::spawn(async move {
        let result = outcome
            .await
            .map(|outcome| outcome.results)
            .map_err(local_write_failed);
        let _ = write.outcome.send(result);
    });
}

/// Checks the quorum whenever nothing has confirmed it for `fresh_for`, so
/// that an edge cut off from the store knows within about that bound.
/// Ends with the last [`LeaderWrites`] handle (it holds only a weak one),
/// so that the router lets go of the store when the edge stops.
async fn keep_contact(
    queue: mpsc::WeakUnboundedSender<QueuedWrite>,
    contact: Arc<QuorumContact>,
    timeout: Duration,
    fresh_for: Duration,
) {
    let mut ticks = tokio::time::interval(CONTACT_CHECK_EVERY.min(fresh_for / 2));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Before the first contact, the age counts from now: the edge has been
    // out of touch since it started.
    let started_ms = now_ms();
    let age = metrics::gauge!("rookery_store_quorum_contact_age_seconds");
    loop {
        ticks.tick().await;
        let Some(queue) = queue.upgrade() else {
            return;
        };
        let confirmed_ms = contact
            .confirmed_at_ms
            .load(Ordering::Acquire)
            .max(started_ms);
        age.set(now_ms().saturating_sub(confirmed_ms) as f64 / 1000.0);
        let writes = LeaderWrites {
            queue,
            timeout,
            contact: contact.clone(),
            local_replica: None,
        };
        if writes.contact(fresh_for / 2) != StoreContact::Fresh && !writes.check_quorum().await {
            tracing::debug!("the store's quorum did not answer");
        }
    }
}

/// Buffered requests on one stream before the router waits for the leader.
const STREAM_BUFFER: usize = 4096;

/// Opens a write stream to the leader at `address` and starts the task that
/// reads its answers. Nothing is sent on it yet, so a failure here leaves
/// every write unproposed.
async fn open_stream(access: &Access, address: &str) -> Result<RemoteLeader, NotProposed> {
    let channel = access
        .channel(address)
        .map_err(|error| NotProposed::BadLeaderAddress(Arc::new(error)))?;
    let (requests, outgoing) = mpsc::channel(STREAM_BUFFER);
    let mut client = StoreClient::new(channel);
    let mut replies = client
        .submit(ReceiverStream::new(outgoing))
        .await
        .map_err(|status| NotProposed::StreamRefused {
            address: address.to_owned(),
            status,
        })?
        .into_inner();
    let unanswered: Unanswered = Arc::new(Mutex::new(Some(HashMap::new())));
    let reader_unanswered = unanswered.clone();
    let leader = address.to_owned();
    let access = access.clone();
    tokio::spawn(async move {
        let why = loop {
            match replies.message().await {
                Ok(Some(reply)) => {
                    if reply.not_leader {
                        access.leader_moved(Some(reply.leader_address.clone()));
                    }
                    let waiter = reader_unanswered
                        .lock()
                        .as_mut()
                        .and_then(|u| u.remove(&reply.id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(outcome_of(reply, &leader));
                    }
                }
                Ok(None) => break "the leader closed the stream".to_owned(),
                Err(status) => break status.message().to_owned(),
            }
        };
        tracing::info!(leader = %leader, reason = %why, "the write stream to the store leader ended");
        access.leader_lost(&leader);
        // Whatever was in flight may or may not have committed.
        if let Some(unanswered) = reader_unanswered.lock().take() {
            for (_, waiter) in unanswered {
                let broke = MayHaveCommitted::StreamBroke {
                    address: leader.clone(),
                    reason: why.clone(),
                };
                let _ = waiter.send(Err(broke.into()));
            }
        }
    });
    tracing::debug!(leader = %address, "opened a write stream to the store leader");
    Ok(RemoteLeader {
        address: address.to_owned(),
        requests,
        unanswered,
        next_id: 1,
    })
}

/// A remote leader's answer to one write.
fn outcome_of(reply: SubmitResponse, leader: &str) -> Result<Vec<CommandResult>, WriteFailed> {
    if reply.not_leader {
        // The store's writer answered `ForwardToLeader` (see
        // `MayHaveCommitted::LeaderChanged`).
        return Err(MayHaveCommitted::LeaderChanged.into());
    }
    if !reply.error.is_empty() {
        return Err(MayHaveCommitted::LeaderFailed {
            address: leader.to_owned(),
            reason: reply.error,
        }
        .into());
    }
    Ok(reply.results)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use futures::Stream;
    use rookery_store::proto::store_server::{Store, StoreServer};
    use rookery_store::proto::{self, command, command_result};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::access::Peers;

    /// What a fake leader does with the writes it reads.
    #[derive(Debug, Clone)]
    enum Conduct {
        /// Commits every write.
        Commits,
        /// Commits this many writes, then answers every later one that it
        /// no longer leads and that `successor` does.
        StepsDownAfter { commits: usize, successor: String },
        /// Does not open a write stream.
        RefusesStreams,
        /// Reads one write, then breaks the stream without answering it.
        BreaksAfterReading,
        /// Reads every write and answers none.
        Silent,
    }

    /// A store leader on 127.0.0.1 that speaks the `Submit` stream only and
    /// records every write it reads. A write is one command whose edge id
    /// is its submission number; a committed write's result echoes it.
    #[derive(Debug, Clone)]
    struct FakeLeader {
        conduct: Conduct,
        /// Submission numbers of the writes read, in arrival order (quorum
        /// checks left out).
        received: Arc<Mutex<Vec<u64>>>,
        /// Write streams opened.
        streams: Arc<AtomicUsize>,
    }

    impl FakeLeader {
        fn new(conduct: Conduct) -> Self {
            FakeLeader {
                conduct,
                received: Arc::default(),
                streams: Arc::default(),
            }
        }

        fn received(&self) -> Vec<u64> {
            self.received.lock().clone()
        }

        fn streams(&self) -> usize {
            self.streams.load(Ordering::SeqCst)
        }

        /// Serves on a free port; returns its store address.
        async fn serve(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(StoreServer::new(self.clone()))
                    .serve_with_incoming(incoming),
            );
            address
        }
    }

    fn write(n: u64) -> Vec<Command> {
        let register = proto::RegisterEdge {
            edge_id: n.to_string(),
            ..proto::RegisterEdge::default()
        };
        vec![Command {
            kind: Some(command::Kind::RegisterEdge(register)),
        }]
    }

    fn submission_number(command: &Command) -> Option<u64> {
        match &command.kind {
            Some(command::Kind::RegisterEdge(register)) => register.edge_id.parse().ok(),
            _ => None,
        }
    }

    fn committed(n: u64) -> CommandResult {
        CommandResult {
            kind: Some(command_result::Kind::Fenced(proto::Fenced {
                current_epoch: n,
            })),
        }
    }

    type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    fn not_in_the_fake<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not part of the fake leader"))
    }

    #[tonic::async_trait]
    impl Store for FakeLeader {
        type SubmitStream = Replies<SubmitResponse>;
        type WatchRoutesStream = Replies<proto::RouteEvent>;
        type WatchEdgeStream = Replies<proto::EdgeEvent>;
        type FollowStream = Replies<proto::FollowEvent>;

        async fn submit(
            &self,
            request: Request<Streaming<SubmitRequest>>,
        ) -> Result<Response<Self::SubmitStream>, Status> {
            if matches!(self.conduct, Conduct::RefusesStreams) {
                return Err(Status::unavailable("this fake refuses write streams"));
            }
            self.streams.fetch_add(1, Ordering::SeqCst);
            let mut requests = request.into_inner();
            let (replies, outgoing) = mpsc::channel(STREAM_BUFFER);
            let fake = self.clone();
            tokio::spawn(async move {
                let mut commits = 0;
                while let Ok(Some(request)) = requests.message().await {
                    let numbers: Vec<u64> = request
                        .commands
                        .iter()
                        .filter_map(submission_number)
                        .collect();
                    let mut reply = SubmitResponse {
                        id: request.id,
                        ..SubmitResponse::default()
                    };
                    if !numbers.is_empty() {
                        fake.received.lock().extend(&numbers);
                        let commit = match &fake.conduct {
                            Conduct::Commits => true,
                            Conduct::StepsDownAfter { commits: n, .. } => commits < *n,
                            Conduct::BreaksAfterReading => {
                                let broken = Status::internal("the fake broke the stream");
                                let _ = replies.send(Err(broken)).await;
                                return;
                            }
                            Conduct::Silent | Conduct::RefusesStreams => continue,
                        };
                        if commit {
                            commits += 1;
                            reply.results = numbers.into_iter().map(committed).collect();
                        } else if let Conduct::StepsDownAfter { successor, .. } = &fake.conduct {
                            reply.not_leader = true;
                            reply.error = "not the leader".into();
                            reply.leader_address = successor.clone();
                        }
                    }
                    // (A quorum check, without commands, passes.)
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
        }

        async fn write(
            &self,
            _: Request<proto::WriteRequest>,
        ) -> Result<Response<proto::WriteResponse>, Status> {
            not_in_the_fake()
        }

        async fn get_session(
            &self,
            _: Request<proto::GetSessionRequest>,
        ) -> Result<Response<proto::GetSessionResponse>, Status> {
            not_in_the_fake()
        }

        async fn list_routes(
            &self,
            _: Request<proto::ListRoutesRequest>,
        ) -> Result<Response<proto::ListRoutesResponse>, Status> {
            not_in_the_fake()
        }

        async fn get_retained(
            &self,
            _: Request<proto::GetRetainedRequest>,
        ) -> Result<Response<proto::GetRetainedResponse>, Status> {
            not_in_the_fake()
        }

        async fn watch_routes(
            &self,
            _: Request<proto::WatchRoutesRequest>,
        ) -> Result<Response<Self::WatchRoutesStream>, Status> {
            not_in_the_fake()
        }

        async fn watch_edge(
            &self,
            _: Request<proto::WatchEdgeRequest>,
        ) -> Result<Response<Self::WatchEdgeStream>, Status> {
            not_in_the_fake()
        }

        async fn follow(
            &self,
            _: Request<proto::FollowRequest>,
        ) -> Result<Response<Self::FollowStream>, Status> {
            not_in_the_fake()
        }

        async fn read_queue(
            &self,
            _: Request<proto::ReadQueueRequest>,
        ) -> Result<Response<proto::ReadQueueResponse>, Status> {
            not_in_the_fake()
        }

        async fn list_edges(
            &self,
            _: Request<proto::ListEdgesRequest>,
        ) -> Result<Response<proto::ListEdgesResponse>, Status> {
            not_in_the_fake()
        }
    }

    /// Writes from an edge-only node that knows the leader at `leader` (as
    /// a seed would have named it). Contact counts as fresh for ever, so no
    /// background quorum check reaches the fakes.
    fn writes_to(leader: Option<&str>, timeout: Duration) -> LeaderWrites {
        let access = Access::Peers(Arc::new(Peers::new(Vec::new(), None, Default::default())));
        access.leader_moved(leader.map(str::to_owned));
        LeaderWrites::new(access, timeout, Duration::MAX)
    }

    /// A session queues writes without waiting; when the leader changes,
    /// every write still reaches a leader in submission order: a prefix goes
    /// to the old one (which commits some and refuses the rest), the
    /// remainder to the new one, and no write overtakes an earlier one.
    #[tokio::test]
    async fn submission_order_is_kept_across_a_leader_change() {
        let successor = FakeLeader::new(Conduct::Commits);
        let successor_address = successor.serve().await;
        let old = FakeLeader::new(Conduct::StepsDownAfter {
            commits: 20,
            successor: successor_address,
        });
        let writes = writes_to(Some(&old.serve().await), Duration::from_secs(10));

        let mut first: Vec<_> = (0..50).map(|n| writes.submit(write(n))).collect();
        let rest_of_first = first.split_off(21);
        let first_refused = first.pop().unwrap().await;
        // The first refusal named the successor; more writes queue while the
        // rest of the first fifty may still be on their way to the old one.
        let second: Vec<_> = (50..100).map(|n| writes.submit(write(n))).collect();
        let mut outcomes = futures::future::join_all(first).await;
        outcomes.push(first_refused);
        outcomes.extend(futures::future::join_all(rest_of_first).await);
        outcomes.extend(futures::future::join_all(second).await);

        let to_old = old.received();
        let moved_at = to_old.len() as u64;
        assert!((21..=50).contains(&moved_at), "moved at {moved_at}");
        assert_eq!(to_old, (0..moved_at).collect::<Vec<_>>());
        assert_eq!(successor.received(), (moved_at..100).collect::<Vec<_>>());
        for (n, outcome) in (0u64..).zip(outcomes) {
            match outcome {
                Ok(results) => {
                    assert!(n < 20 || n >= moved_at, "write {n} committed");
                    assert_eq!(results, vec![committed(n)]);
                }
                Err(failed) => {
                    assert!((20..moved_at).contains(&n), "write {n} failed: {failed}");
                    assert!(matches!(
                        failed,
                        WriteFailed::MayHaveCommitted(MayHaveCommitted::LeaderChanged)
                    ));
                }
            }
        }
        // One stream per leader, kept while it leads.
        assert_eq!((old.streams(), successor.streams()), (1, 1));
    }

    #[tokio::test]
    async fn a_write_with_no_leader_to_go_to_was_never_proposed() {
        let writes = writes_to(None, Duration::from_millis(100));
        let failed = writes.submit(write(1)).await.unwrap_err();
        assert!(
            matches!(failed, WriteFailed::NotProposed(NotProposed::NoLeader(_))),
            "{failed}"
        );
        assert!(!failed.may_have_committed());
    }

    #[tokio::test]
    async fn a_write_whose_stream_the_leader_refused_was_never_proposed() {
        let leader = FakeLeader::new(Conduct::RefusesStreams);
        let writes = writes_to(Some(&leader.serve().await), Duration::from_secs(10));
        let failed = writes.submit(write(1)).await.unwrap_err();
        assert!(
            matches!(
                failed,
                WriteFailed::NotProposed(NotProposed::StreamRefused { .. })
            ),
            "{failed}"
        );
        assert!(!failed.may_have_committed());
    }

    #[tokio::test]
    async fn a_write_lost_with_its_stream_after_sending_may_have_committed() {
        let leader = FakeLeader::new(Conduct::BreaksAfterReading);
        let writes = writes_to(Some(&leader.serve().await), Duration::from_secs(10));
        let failed = writes.submit(write(1)).await.unwrap_err();
        assert_eq!(leader.received(), vec![1]);
        assert!(
            matches!(
                failed,
                WriteFailed::MayHaveCommitted(MayHaveCommitted::StreamBroke { .. })
            ),
            "{failed}"
        );
        assert!(failed.may_have_committed());
    }

    #[tokio::test]
    async fn a_write_the_leader_never_answered_may_have_committed() {
        let leader = FakeLeader::new(Conduct::Silent);
        let timeout = Duration::from_millis(300);
        let writes = writes_to(Some(&leader.serve().await), timeout);
        let failed = writes.submit(write(1)).await.unwrap_err();
        assert_eq!(leader.received(), vec![1]);
        assert!(
            matches!(failed, WriteFailed::MayHaveCommitted(MayHaveCommitted::TimedOut(t)) if t == timeout),
            "{failed}"
        );
        assert!(failed.may_have_committed());
    }

    #[test]
    fn a_commit_answered_with_too_few_results_is_not_passed_off_as_complete() {
        let short = one_result_per_command(2, vec![committed(1)]).unwrap_err();
        assert!(short.may_have_committed());
        assert_eq!(
            one_result_per_command(1, vec![committed(1)]).unwrap(),
            vec![committed(1)]
        );
    }
}
