//! An edge's writes to the store, in the order it submits them.
//!
//! A session relies on order: it queues its acknowledgements without waiting
//! and later reuses their packet identifiers, so a later write must never
//! commit before an earlier one. On the leader's own node the group-commit
//! writer keeps that order; elsewhere, the writes travel on one `Submit`
//! stream to the leader, which queues them in arrival order. One task (the
//! router) hands every write to whichever of the two leads now, so no two
//! paths race.
//!
//! A write may fail (no leader found, the leader changed under it, no quorum
//! answered within the timeout). [`WriteFailed`] says whether it certainly
//! was never proposed to Raft or may have committed (or may yet). A write
//! that may have committed is never sent again here: sent twice, it could be
//! applied twice. Callers decide: a publisher is told with a reason code, a
//! session whose detached write failed ends.
//!
//! A write the leader did not take is held and sent again, within the
//! write timeout, instead of failing: a node that hands its leadership over
//! (a planned restart, `TransferLeader`) or no longer leads answers each
//! write it did not propose with a certain "not proposed" (the writer's
//! refusal, or a write stream ended with every unanswered write given back,
//! `rookery_store::service::unproposed`), and the router waits for the next
//! leader. Order holds because the router sends nothing after a given-back
//! write anywhere else before that write: a node that refuses one write of a
//! stream refuses every later one (it stops reading the stream), writes
//! given back go first, in their order, and before writing to another node
//! the router waits (briefly, `SWITCH_WAIT`) for the stream it leaves to
//! answer what it holds. A write given back after the router moved on
//! anyway fails, unsent, as never proposed. Writes a refused leader did take
//! are committed by it before it hands over (it waits for them), and
//! whatever a leader of an older term commits precedes what the new leader
//! commits.
//!
//! A publisher's writes go further: its client sends a publish that failed
//! again, after the ones that followed it, so one that commits on the next
//! leader while an earlier one was lost would be stored out of order
//! (MQTT-4.6.0-6). Writes submitted on one [`WriteChain`] are therefore not
//! sent once an earlier one of the chain has failed, until the caller has
//! heard of that failure ([`WriteChain::mend`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rookery_store::StoreNode;
use rookery_store::proto::{
    Command, CommandResult, SubmitRequest, SubmitResponse, store_client::StoreClient,
};
use rookery_store::service::{Unproposed, unproposed};
use rookery_store::writer::{Refusal, WriteError, now_ms};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::{Access, BadStoreAddress, LeaderAt, Peers};

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
    /// No store node named a leader that took the write within the write
    /// timeout.
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
    /// The leader gave the write back unproposed (it was handing over, or
    /// no longer led) after later writes had gone to another leader:
    /// sending it now could put it behind them, so it is not sent again.
    #[error(
        "the store node at {address} did not take the write ({reason}), and later writes went elsewhere"
    )]
    GivenBack {
        /// The node's store address.
        address: String,
        /// Why it did not take it.
        reason: String,
    },
    /// An earlier write of its [`WriteChain`] failed: sent now, it could
    /// commit ahead of that one's retry.
    #[error("an earlier write of the same publisher failed")]
    EarlierFailed,
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
/// Where a write's outcome goes; a failure breaks the write's chain first,
/// so that whatever the router sends next sees it.
struct OutcomeSender {
    sender: oneshot::Sender<Result<Vec<CommandResult>, WriteFailed>>,
    chain: Option<Link>,
}

impl OutcomeSender {
    fn send(
        self,
        outcome: Result<Vec<CommandResult>, WriteFailed>,
    ) -> Result<(), Result<Vec<CommandResult>, WriteFailed>> {
        if outcome.is_err()
            && let Some(link) = &self.chain
        {
            link.fail();
        }
        self.sender.send(outcome)
    }
}

/// The writes of one publisher (a connection's publishes), which commit in
/// submission order or not at all: once one fails, those submitted before
/// the caller heard of it ([`WriteChain::mend`]) fail unsent
/// (`NotProposed::EarlierFailed`).
#[derive(Debug, Default)]
pub struct WriteChain {
    /// Raised by each mend: writes submitted since are not held back by a
    /// failure heard of before.
    generation: AtomicU64,
    /// One above the latest generation a write of which failed (0: none).
    broken: AtomicU64,
}

impl WriteChain {
    /// A new chain, unbroken.
    pub fn new() -> Arc<WriteChain> {
        Arc::default()
    }

    /// The caller has heard of the failures so far (its client sends the
    /// failed writes again, or never): writes submitted from now on go.
    pub fn mend(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A write submitted now.
    fn link(self: &Arc<Self>) -> Link {
        Link {
            chain: self.clone(),
            generation: self.generation.load(Ordering::SeqCst),
        }
    }
}

/// One write's place in its [`WriteChain`].
#[derive(Debug, Clone)]
struct Link {
    chain: Arc<WriteChain>,
    generation: u64,
}

impl Link {
    /// Whether a write submitted with it, or after it, failed before the
    /// caller mended the chain.
    fn broken(&self) -> bool {
        self.chain.broken.load(Ordering::SeqCst) > self.generation
    }

    fn fail(&self) {
        self.chain
            .broken
            .fetch_max(self.generation + 1, Ordering::SeqCst);
    }
}

/// How long the router waits, before writing to another node, for the
/// stream it leaves to answer what it holds (a write that stream gives
/// back later fails instead of being sent again out of order). A node that
/// hands over answers at once; one that is cut off never does.
const SWITCH_WAIT: Duration = Duration::from_millis(300);

/// How many write timeouts a resendable write may take, resends included:
/// an election (1.5–4 s) fits inside.
const RESEND_PATIENCE: u32 = 3;

/// The pause before a write that was not taken is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How long a node that said it hands its leadership over is not written
/// to (unless it is named the leader again after that).
const AVOID_FOR: Duration = Duration::from_millis(500);

/// A write waiting in the router's queue, or held by it for a leader.
struct QueuedWrite {
    commands: Vec<Command>,
    outcome: OutcomeSender,
    /// When the router gives it up unsent: a little before its caller stops
    /// waiting, so that the caller hears "not proposed" rather than a
    /// timeout.
    deadline: Instant,
    /// Why it was last not taken, told if it is given up.
    not_taken: Option<NotProposed>,
    /// Whether it may be sent again after it may have committed: applying
    /// it twice, in order with the writes after it, changes nothing (see
    /// [`LeaderWrites::submit_resendable`]).
    resendable: bool,
    /// How the stream it was sent on broke: it may have committed.
    broke: Option<MayHaveCommitted>,
    /// Counts it as in the router until dropped.
    _routed: Routed,
}

impl QueuedWrite {
    /// Gives the write up unsent: it was never proposed, unless it was sent
    /// before on a stream that broke.
    fn give_up(self, timeout: Duration) {
        let why = match self.broke {
            Some(broke) => broke.into(),
            None => self
                .not_taken
                .unwrap_or(NotProposed::NoLeader(timeout))
                .into(),
        };
        let _ = self.outcome.send(Err(why));
    }
}

/// A write counted in [`LeaderWrites::routed`] while the router has it:
/// queued, held, or sent on a stream and not yet answered. While any is,
/// writes do not go straight to the replica in this process.
struct Routed(Arc<AtomicUsize>);

impl Routed {
    fn new(count: &Arc<AtomicUsize>) -> Routed {
        count.fetch_add(1, Ordering::SeqCst);
        Routed(count.clone())
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes to the store through its leader, in submission order.
#[derive(Debug, Clone)]
pub struct LeaderWrites {
    queue: mpsc::UnboundedSender<QueuedWrite>,
    /// On an edge-only node, where the router finds the leader (told when a
    /// write goes unanswered).
    peers: Option<Arc<Peers>>,
    timeout: Duration,
    contact: Arc<QuorumContact>,
    /// While the replica in this process leads, writes go straight to its
    /// group-commit writer (in order there), not through the router, unless
    /// the router has writes that must go first.
    local_replica: Option<Arc<LocalReplica>>,
    /// Writes the router has (see [`Routed`]).
    routed: Arc<AtomicUsize>,
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
        let peers = match &access {
            Access::Peers(peers) => Some(peers.clone()),
            Access::Replica(_) => None,
        };
        tokio::spawn(route_writes(access, queued, timeout));
        let writes = LeaderWrites {
            queue,
            peers,
            timeout,
            contact: Arc::default(),
            local_replica,
            routed: Arc::default(),
        };
        tokio::spawn(keep_contact(
            writes.queue.downgrade(),
            writes.peers.clone(),
            writes.contact.clone(),
            writes.routed.clone(),
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
        self.submit_as(commands, false, None)
    }

    /// As [`LeaderWrites::submit`], for one of a publisher's writes: not
    /// sent if an earlier write of `chain` failed since the chain was last
    /// mended (see [`WriteChain`]).
    pub fn submit_chained(
        &self,
        commands: Vec<Command>,
        chain: &Arc<WriteChain>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, WriteFailed>> + Send + 'static {
        self.submit_as(commands, false, Some(chain.link()))
    }

    /// As [`LeaderWrites::submit`], for a write that may be applied twice:
    /// applied again after the writes that followed it (in their order),
    /// it changes nothing. A session's records are (acknowledgements name
    /// the message, packet identifiers are recorded only forward). When the
    /// stream to a remote leader breaks with it unanswered (the leader
    /// died), it is sent again, ahead of every later write, to the next
    /// leader, instead of failing, within [`RESEND_PATIENCE`] write timeouts:
    /// an election costs its sessions a pause, not their connections.
    pub fn submit_resendable(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, WriteFailed>> + Send + 'static {
        self.submit_as(commands, true, None)
    }

    fn submit_as(
        &self,
        mut commands: Vec<Command>,
        resendable: bool,
        chain: Option<Link>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, WriteFailed>> + Send + 'static {
        if chain.as_ref().is_some_and(Link::broken) {
            return futures::future::Either::Left(futures::future::Either::Left(
                futures::future::ready(Err(NotProposed::EarlierFailed.into())),
            ));
        }
        let timeout = if resendable {
            self.timeout * RESEND_PATIENCE
        } else {
            self.timeout
        };
        let contact = self.contact.clone();
        let expected = commands.len();
        // Straight to the replica in this process while it leads, unless the
        // router holds writes that must commit first.
        if let Some(replica) = self
            .local_replica
            .as_ref()
            .filter(|replica| replica.leading.load(Ordering::Acquire))
            && !commands.is_empty()
            && self.routed.load(Ordering::SeqCst) == 0
        {
            match replica.node.try_submit(commands) {
                Ok(outcome) => {
                    let written = async move {
                        match tokio::time::timeout(timeout, outcome).await {
                            Ok(Ok(outcome)) => Ok(outcome.results),
                            Ok(Err(error)) => Err(local_write_failed(error)),
                            Err(_) => Err(MayHaveCommitted::TimedOut(timeout).into()),
                        }
                    };
                    // A publisher's write breaks its chain as soon as the
                    // writer fails it, not when its caller next polls: the
                    // router may be about to send the writes after it, given
                    // back by this node, to the next leader.
                    let answered = match chain {
                        None => futures::future::Either::Left(written),
                        Some(link) => {
                            let (sender, answer) = oneshot::channel();
                            tokio::spawn(async move {
                                let outcome = written.await;
                                let _ = OutcomeSender {
                                    sender,
                                    chain: Some(link),
                                }
                                .send(outcome);
                            });
                            futures::future::Either::Right(async move {
                                answer.await.unwrap_or_else(|_| {
                                    Err(MayHaveCommitted::OutcomeDropped.into())
                                })
                            })
                        }
                    };
                    return futures::future::Either::Left(futures::future::Either::Right(
                        async move {
                            let outcome = answered.await;
                            if outcome.is_ok() {
                                contact.confirmed();
                            }
                            outcome.and_then(|results| one_result_per_command(expected, results))
                        },
                    ));
                }
                // Not taken (it hands over, or no longer leads): the router
                // holds it for the next leader.
                Err(refused) => commands = refused.commands,
            }
        }
        let (sender, result) = oneshot::channel();
        let write = QueuedWrite {
            commands,
            outcome: OutcomeSender { sender, chain },
            deadline: Instant::now() + timeout.saturating_sub(give_up_margin(timeout)),
            not_taken: None,
            resendable,
            broke: None,
            _routed: Routed::new(&self.routed),
        };
        let queued = self.queue.send(write).is_ok();
        let peers = self.peers.clone();
        futures::future::Either::Right(async move {
            if !queued {
                return Err(NotProposed::RouterStopped.into());
            }
            let outcome = match tokio::time::timeout(timeout, result).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(MayHaveCommitted::OutcomeDropped.into()),
                Err(_) => {
                    // A leader cut off from its voters but not from this
                    // edge takes writes and never answers: look for the
                    // leader again (the seeds name a newer term's), instead
                    // of writing to it until it steps down.
                    if let Some(peers) = peers {
                        peers.forget_leader();
                    }
                    Err(MayHaveCommitted::TimedOut(timeout).into())
                }
            };
            if outcome.is_ok() {
                contact.confirmed();
            }
            outcome.and_then(|results| one_result_per_command(expected, results))
        })
    }
}

/// How much before its caller's timeout the router gives a held write up.
fn give_up_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(100))
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

/// What a failure of the group-commit writer in this process means, once
/// the writer took the write.
fn local_write_failed(error: WriteError) -> WriteFailed {
    match error {
        // Refused before it was queued.
        WriteError::TooLarge => NotProposed::TooLarge.into(),
        WriteError::NotProposed(refusal) => NotProposed::GivenBack {
            address: "this node".into(),
            reason: refusal.to_string(),
        }
        .into(),
        WriteError::ForwardToLeader { .. } => MayHaveCommitted::LeaderChanged.into(),
        // Raft stopped, before or after the proposal: not known which.
        WriteError::Raft(reason) => MayHaveCommitted::Raft(reason).into(),
    }
}

/// What one write stream shares with its reader task.
#[derive(Default)]
struct StreamShared {
    /// Writes sent and not yet answered, by id; `None` once the stream has
    /// ended.
    unanswered: Mutex<Option<BTreeMap<u64, QueuedWrite>>>,
    /// Woken when the last unanswered write is answered, and at the end.
    quiet: Notify,
}

/// The open stream to a leader on another node.
struct RemoteLeader {
    /// Tells this stream's end from another's.
    id: u64,
    address: String,
    requests: mpsc::Sender<SubmitRequest>,
    shared: Arc<StreamShared>,
    next_id: u64,
}

/// How a stream ended, from its reader task to the router.
struct StreamEnded {
    stream: u64,
    address: String,
    /// With `unproposed`: the writes the node never proposed, in submission
    /// order. (Without it, the reader failed what was unanswered.)
    given_back: Vec<QueuedWrite>,
    unproposed: Option<Unproposed>,
}

impl RemoteLeader {
    /// Whether the stream has ended, and whether it has writes unanswered.
    fn state(&self) -> (bool, bool) {
        match self.shared.unanswered.lock().as_ref() {
            None => (true, false),
            Some(unanswered) => (self.requests.is_closed(), !unanswered.is_empty()),
        }
    }

    /// Hands a write to the stream; the stream's reader delivers its
    /// outcome. A write the stream could not take comes back.
    async fn send(&mut self, write: QueuedWrite) -> Result<(), QueuedWrite> {
        let id = self.next_id;
        self.next_id += 1;
        // Kept until answered: a node that gives it back unproposed has it
        // sent again.
        let commands = write.commands.clone();
        {
            let mut unanswered = self.shared.unanswered.lock();
            match unanswered.as_mut() {
                Some(unanswered) => {
                    unanswered.insert(id, write);
                }
                None => return Err(write),
            }
        }
        let request = SubmitRequest { id, commands };
        if self.requests.send(request).await.is_err() {
            // Never sent: it comes back unless the reader took it with the
            // stream's end (then the end's event has it).
            let unsent = self
                .shared
                .unanswered
                .lock()
                .as_mut()
                .and_then(|u| u.remove(&id));
            if let Some(write) = unsent {
                return Err(write);
            }
        }
        Ok(())
    }
}

/// Where the router sends the next write.
enum Target {
    /// The replica in this process leads.
    Local(Arc<StoreNode>),
    /// The node at this store address leads.
    Remote(String),
}

/// What the router does with a stream it leaves.
enum Left {
    /// Nothing came back: the next write goes on.
    Clear,
    /// Writes came back and go first.
    GivenBack,
}

/// The one task that hands every write, in order, to the leader: the
/// replica in this process, or one stream per remote leader (kept open
/// while that node leads).
struct Router {
    access: Access,
    timeout: Duration,
    /// Writes to send before anything queued, the next one first.
    held: VecDeque<QueuedWrite>,
    stream: Option<RemoteLeader>,
    streams_opened: u64,
    ended: mpsc::UnboundedSender<StreamEnded>,
    /// A node that said it hands its leadership over, until when it is not
    /// written to.
    avoid: Option<(String, Instant)>,
    /// Not before then is a write that was not taken tried again.
    pause_until: Option<Instant>,
}

async fn route_writes(
    access: Access,
    mut queued: mpsc::UnboundedReceiver<QueuedWrite>,
    timeout: Duration,
) {
    let (ended, mut ends) = mpsc::unbounded_channel();
    let mut router = Router {
        access,
        timeout,
        held: VecDeque::new(),
        stream: None,
        streams_opened: 0,
        ended,
        avoid: None,
        pause_until: None,
    };
    loop {
        while let Ok(end) = ends.try_recv() {
            router.stream_ended(end);
        }
        if router.held.is_empty() {
            tokio::select! {
                biased;
                Some(end) = ends.recv() => router.stream_ended(end),
                write = queued.recv() => match write {
                    Some(write) => router.held.push_back(write),
                    None => return,
                },
            }
            continue;
        }
        router.send_next(&mut ends).await;
    }
}

impl Router {
    /// Sends the next held write where the leader is, or holds it (for a
    /// moment) if no leader takes it now, or gives it up at its deadline.
    async fn send_next(&mut self, ends: &mut mpsc::UnboundedReceiver<StreamEnded>) {
        if let Some(until) = self.pause_until.take() {
            tokio::time::sleep_until(until).await;
        }
        let Some(deadline) = self.held.front().map(|write| write.deadline) else {
            return;
        };
        let now = Instant::now();
        if now >= deadline {
            if let Some(write) = self.held.pop_front() {
                write.give_up(self.timeout);
            }
            return;
        }
        let Some(leader) = self.find_leader(deadline).await else {
            if let Some(write) = self.held.pop_front() {
                write.give_up(self.timeout);
            }
            return;
        };
        // Anywhere but the open stream to this leader: that stream answers
        // (or gives back) what it holds first.
        let keep = match &leader {
            Target::Local(_) => None,
            Target::Remote(address) => Some(address.clone()),
        };
        if let Left::GivenBack = self.leave_stream(keep.as_deref(), ends).await {
            return;
        }
        if self
            .held
            .front()
            .is_some_and(|write| write.outcome.chain.as_ref().is_some_and(Link::broken))
        {
            if let Some(write) = self.held.pop_front() {
                let _ = write.outcome.send(Err(NotProposed::EarlierFailed.into()));
            }
            return;
        }
        match leader {
            Target::Local(node) => self.write_locally(&node),
            Target::Remote(address) => self.write_remotely(address).await,
        }
    }

    /// The leader, waiting until `deadline` for one that is not avoided.
    async fn find_leader(&self, deadline: Instant) -> Option<Target> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let leader = self.access.leader(left).await?;
            let avoided = self.avoid.as_ref().is_some_and(|(address, until)| {
                address == leader.address() && Instant::now() < *until
            });
            if !avoided {
                return Some(match leader {
                    LeaderAt::LocalReplica(node) => Target::Local(node.clone()),
                    LeaderAt::Remote(address) => Target::Remote(address),
                });
            }
            // It is handing over: look again shortly (edge-only nodes ask
            // the seeds).
            self.access.leader_lost(leader.address());
            if Instant::now() + RETRY_PAUSE >= deadline {
                return None;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The next write, on the leader in this process.
    fn write_locally(&mut self, node: &Arc<StoreNode>) {
        let Some(mut write) = self.held.pop_front() else {
            return;
        };
        if write.commands.is_empty() {
            // A quorum check: not on a node that would refuse a write.
            if let Some(refusal) = node.refusal() {
                self.not_taken(write, node.address(), &refusal);
                return;
            }
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
        let commands = std::mem::take(&mut write.commands);
        match node.try_submit(commands) {
            Ok(outcome) => {
                // Queued in the writer's order: no longer the router's.
                let QueuedWrite {
                    outcome: sender, ..
                } = write;
                tokio::spawn(async move {
                    let result = outcome
                        .await
                        .map(|outcome| outcome.results)
                        .map_err(local_write_failed);
                    let _ = sender.send(result);
                });
            }
            Err(refused) => {
                write.commands = refused.commands;
                self.not_taken(write, node.address(), &refused.refusal);
            }
        }
    }

    /// A write the node at `address` did not take: held, first, to be
    /// tried again after a pause.
    fn not_taken(&mut self, mut write: QueuedWrite, address: &str, refusal: &Refusal) {
        if *refusal == Refusal::HandingOver {
            self.avoid = Some((address.to_owned(), Instant::now() + AVOID_FOR));
        }
        write.not_taken = Some(NotProposed::GivenBack {
            address: address.to_owned(),
            reason: refusal.to_string(),
        });
        self.held.push_front(write);
        self.pause_until = Some(Instant::now() + RETRY_PAUSE);
    }

    /// The next write, on the stream to the leader at `address` (opened if
    /// needed).
    async fn write_remotely(&mut self, address: String) {
        if self.stream.is_none() {
            self.streams_opened += 1;
            match open_stream(&self.access, &address, self.streams_opened, &self.ended).await {
                Ok(stream) => self.stream = Some(stream),
                Err(error) => {
                    // Nothing was sent: the write waits for a leader that
                    // takes it.
                    self.access.leader_lost(&address);
                    if let NotProposed::StreamRefused { status, .. } = &error
                        && unproposed(status) == Some(Unproposed::HandingOver)
                    {
                        self.avoid = Some((address.clone(), Instant::now() + AVOID_FOR));
                    }
                    if let Some(write) = self.held.front_mut() {
                        write.not_taken = Some(error);
                    }
                    self.pause_until = Some(Instant::now() + RETRY_PAUSE);
                    return;
                }
            }
        }
        let (Some(stream), Some(write)) = (self.stream.as_mut(), self.held.pop_front()) else {
            return;
        };
        if let Err(unsent) = stream.send(write).await {
            // The stream had ended: the write goes first again, after what
            // the stream gives back (`leave_stream`, next time).
            self.held.push_front(unsent);
        }
    }

    /// Before writing anywhere but the open stream to `keep`: the current
    /// stream, if any, is left once it has answered what it holds, has
    /// ended (what it gave back then goes first), or `SWITCH_WAIT` has
    /// passed (what it gives back later fails).
    async fn leave_stream(
        &mut self,
        keep: Option<&str>,
        ends: &mut mpsc::UnboundedReceiver<StreamEnded>,
    ) -> Left {
        let Some(stream) = self.stream.as_ref() else {
            return Left::Clear;
        };
        let (ended, _) = stream.state();
        if !ended && keep == Some(stream.address.as_str()) {
            return Left::Clear;
        }
        let shared = stream.shared.clone();
        let id = stream.id;
        let limit = Instant::now() + SWITCH_WAIT;
        loop {
            let quiet = shared.quiet.notified();
            tokio::pin!(quiet);
            quiet.as_mut().enable();
            let (ended, waiting) = self
                .stream
                .as_ref()
                .map_or((true, false), RemoteLeader::state);
            if ended {
                break;
            }
            if !waiting || Instant::now() >= limit {
                if waiting {
                    tracing::info!(leader = %self.stream.as_ref().map_or("", |s| s.address.as_str()), "moving on from a write stream that did not answer within {SWITCH_WAIT:?}");
                }
                // Dropped: the edge's side of the stream closes.
                self.stream = None;
                return Left::Clear;
            }
            tokio::select! {
                () = &mut quiet => {}
                () = tokio::time::sleep_until(limit) => {}
            }
        }
        // It ended: its reader sends how, right after.
        let before = self.held.len();
        let waited = tokio::time::timeout(SWITCH_WAIT, async {
            while let Some(end) = ends.recv().await {
                let mine = end.stream == id;
                self.stream_ended(end);
                if mine {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            self.stream = None;
        }
        if self.held.len() > before {
            Left::GivenBack
        } else {
            Left::Clear
        }
    }

    /// A stream ended. What it gave back unproposed goes first, in order,
    /// if the router has written nowhere else since; else it fails.
    fn stream_ended(&mut self, end: StreamEnded) {
        let current = self.stream.as_ref().is_some_and(|s| s.id == end.stream);
        if current {
            self.stream = None;
        }
        let reason = match &end.unproposed {
            Some(Unproposed::HandingOver) => {
                self.avoid = Some((end.address.clone(), Instant::now() + AVOID_FOR));
                Refusal::HandingOver.to_string()
            }
            Some(Unproposed::NotLeader { .. }) => "it does not lead".to_owned(),
            // Resendable writes of a stream that broke.
            None => "the stream broke".to_owned(),
        };
        if end.given_back.is_empty() {
            return;
        }
        if current {
            metrics::counter!("rookery_store_writes_resent_total")
                .increment(end.given_back.len() as u64);
            for mut write in end.given_back.into_iter().rev() {
                write.not_taken = Some(NotProposed::GivenBack {
                    address: end.address.clone(),
                    reason: reason.clone(),
                });
                self.held.push_front(write);
            }
            self.pause_until = Some(Instant::now() + RETRY_PAUSE);
        } else {
            for write in end.given_back {
                let failed = match write.broke {
                    Some(broke) => broke.into(),
                    None => NotProposed::GivenBack {
                        address: end.address.clone(),
                        reason: reason.clone(),
                    }
                    .into(),
                };
                let _ = write.outcome.send(Err(failed));
            }
        }
    }
}

/// Checks the quorum whenever nothing has confirmed it for `fresh_for`, so
/// that an edge cut off from the store knows within about that bound.
/// Ends with the last [`LeaderWrites`] handle (it holds only a weak one),
/// so that the router lets go of the store when the edge stops.
async fn keep_contact(
    queue: mpsc::WeakUnboundedSender<QueuedWrite>,
    peers: Option<Arc<Peers>>,
    contact: Arc<QuorumContact>,
    routed: Arc<AtomicUsize>,
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
            peers: peers.clone(),
            timeout,
            contact: contact.clone(),
            local_replica: None,
            routed: routed.clone(),
        };
        if writes.contact(fresh_for / 2) != StoreContact::Fresh && !writes.check_quorum().await {
            tracing::debug!("the store's quorum did not answer");
        }
    }
}

/// Buffered requests on one stream before the router waits for the leader.
const STREAM_BUFFER: usize = 4096;

/// Opens write stream `id` to the leader at `address` and starts the task
/// that reads its answers and tells `ended` how it ended. Nothing is sent
/// on it yet, so a failure here leaves every write unproposed.
async fn open_stream(
    access: &Access,
    address: &str,
    id: u64,
    ended: &mpsc::UnboundedSender<StreamEnded>,
) -> Result<RemoteLeader, NotProposed> {
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
    let shared = Arc::new(StreamShared {
        unanswered: Mutex::new(Some(BTreeMap::new())),
        quiet: Notify::new(),
    });
    let reader = shared.clone();
    let leader = address.to_owned();
    let access = access.clone();
    let ended = ended.clone();
    tokio::spawn(async move {
        let (why, given_back) = loop {
            match replies.message().await {
                Ok(Some(reply)) => {
                    if reply.not_leader {
                        access.leader_moved(Some(reply.leader_address.clone()));
                    }
                    let (waiter, quiet) = {
                        let mut unanswered = reader.unanswered.lock();
                        let waiter = unanswered.as_mut().and_then(|u| u.remove(&reply.id));
                        (waiter, unanswered.as_ref().is_some_and(BTreeMap::is_empty))
                    };
                    if let Some(waiter) = waiter {
                        let _ = waiter.outcome.send(outcome_of(reply, &leader));
                    }
                    if quiet {
                        reader.quiet.notify_waiters();
                    }
                }
                Ok(None) => break ("the leader closed the stream".to_owned(), None),
                Err(status) => break (status.message().to_owned(), unproposed(&status)),
            }
        };
        let unanswered = reader.unanswered.lock().take().unwrap_or_default();
        reader.quiet.notify_waiters();
        match &given_back {
            Some(Unproposed::NotLeader {
                leader_address: Some(hint),
            }) => access.leader_moved(Some(hint.clone())),
            _ => access.leader_lost(&leader),
        }
        let given_back_writes = if given_back.is_some() {
            tracing::debug!(leader = %leader, reason = %why, unanswered = unanswered.len(), "the store node gave the writes of a stream back unproposed");
            unanswered.into_values().collect()
        } else {
            tracing::info!(leader = %leader, reason = %why, "the write stream to the store leader ended");
            // Whatever was in flight may or may not have committed: the
            // resendable writes go again, in order; the others fail.
            let mut resent = Vec::new();
            for (_, mut waiter) in unanswered {
                let broke = MayHaveCommitted::StreamBroke {
                    address: leader.clone(),
                    reason: why.clone(),
                };
                if waiter.resendable {
                    waiter.broke = Some(broke);
                    resent.push(waiter);
                } else {
                    let _ = waiter.outcome.send(Err(broke.into()));
                }
            }
            resent
        };
        let _ = ended.send(StreamEnded {
            stream: id,
            address: leader,
            given_back: given_back_writes,
            unproposed: given_back,
        });
    });
    tracing::debug!(leader = %address, "opened a write stream to the store leader");
    Ok(RemoteLeader {
        id,
        address: address.to_owned(),
        requests,
        shared,
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
    use rookery_store::writer::Refusal;

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
        /// Commits this many writes, then stops reading the stream and ends
        /// it saying that every write it did not answer was never proposed
        /// and that `successor` leads (as a store node that stops leading,
        /// or hands over, does); later streams are refused alike.
        GivesBackAfter { commits: usize, successor: String },
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

    /// The status a store node ends a write stream with when it stops
    /// taking writes, naming `successor` as the leader.
    fn given_back(successor: &str) -> Status {
        rookery_store::service::unproposed_status(&Refusal::NotLeader {
            leader: Some((2, openraft::BasicNode::new(successor))),
        })
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
            match &self.conduct {
                Conduct::RefusesStreams => {
                    return Err(Status::unavailable("this fake refuses write streams"));
                }
                Conduct::GivesBackAfter { commits, successor }
                    if self.received.lock().len() >= *commits =>
                {
                    return Err(given_back(successor));
                }
                _ => {}
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
                    if let Conduct::GivesBackAfter {
                        commits: n,
                        successor,
                    } = &fake.conduct
                        && commits >= *n
                    {
                        // Read no further; what was read after the last
                        // commit is given back unanswered.
                        let _ = replies.send(Err(given_back(successor))).await;
                        return;
                    }
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
                            Conduct::GivesBackAfter { .. } => true,
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

    /// A leader that stops taking writes (it hands its leadership over, or
    /// no longer leads) answers what it took, gives the rest of the stream
    /// back unproposed and names its successor: every write of a session
    /// that queued them without waiting commits, none fails, and they
    /// commit in submission order across the two leaders.
    #[tokio::test]
    async fn writes_given_back_by_a_leader_that_steps_down_commit_on_its_successor_in_order() {
        let successor = FakeLeader::new(Conduct::Commits);
        let successor_address = successor.serve().await;
        let old = FakeLeader::new(Conduct::GivesBackAfter {
            commits: 20,
            successor: successor_address,
        });
        let writes = writes_to(Some(&old.serve().await), Duration::from_secs(10));

        let first: Vec<_> = (0..50).map(|n| writes.submit(write(n))).collect();
        let mut outcomes = futures::future::join_all(first).await;
        let second: Vec<_> = (50..100).map(|n| writes.submit(write(n))).collect();
        outcomes.extend(futures::future::join_all(second).await);

        assert_eq!(old.received(), (0..20).collect::<Vec<_>>());
        assert_eq!(successor.received(), (20..100).collect::<Vec<_>>());
        for (n, outcome) in (0u64..).zip(outcomes) {
            match outcome {
                Ok(results) => assert_eq!(results, vec![committed(n)]),
                Err(failed) => panic!("write {n} failed: {failed}"),
            }
        }
    }

    /// A write held for a leader that never comes is given up before its
    /// caller's timeout, as never proposed, with the last reason it was not
    /// taken.
    #[tokio::test]
    async fn a_write_no_leader_takes_is_given_up_as_never_proposed_in_time() {
        let nobody = FakeLeader::new(Conduct::GivesBackAfter {
            commits: 0,
            successor: String::new(),
        });
        let timeout = Duration::from_millis(500);
        let writes = writes_to(Some(&nobody.serve().await), timeout);
        let started = Instant::now();
        let failed = writes.submit(write(1)).await.unwrap_err();
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        assert!(!failed.may_have_committed(), "{failed}");
        assert!(nobody.received().is_empty());
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

    /// Tried again until its deadline (the leader may come back, or
    /// another be found), then refused with why.
    #[tokio::test]
    async fn a_write_whose_stream_the_leader_refused_was_never_proposed() {
        let leader = FakeLeader::new(Conduct::RefusesStreams);
        let writes = writes_to(Some(&leader.serve().await), Duration::from_millis(500));
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

    /// A leader that breaks its stream after reading a write (it dies),
    /// the one that succeeds it, and writes going to the first.
    async fn dying_leader_and_successor() -> (FakeLeader, FakeLeader, String, Access, LeaderWrites)
    {
        let successor = FakeLeader::new(Conduct::Commits);
        let successor_address = successor.serve().await;
        let old = FakeLeader::new(Conduct::BreaksAfterReading);
        let access = Access::Peers(Arc::new(Peers::new(Vec::new(), None, Default::default())));
        access.leader_moved(Some(old.serve().await));
        let writes = LeaderWrites::new(access.clone(), Duration::from_secs(2), Duration::MAX);
        (old, successor, successor_address, access, writes)
    }

    /// Waits until `leader` has read a write.
    async fn until_read(leader: &FakeLeader) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while leader.received().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the old leader never read the write"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A resendable write (a session's records) whose stream broke after it
    /// was sent (the leader died) goes again to the next leader, ahead of
    /// the writes submitted after it, instead of failing.
    #[tokio::test]
    async fn a_resendable_write_lost_with_its_stream_commits_on_the_next_leader_first() {
        let (old, successor, successor_address, access, writes) =
            dying_leader_and_successor().await;

        let first = writes.submit_resendable(write(1));
        until_read(&old).await;
        let later = writes.submit_resendable(write(2));
        access.leader_moved(Some(successor_address));
        assert_eq!(first.await.unwrap(), vec![committed(1)]);
        assert_eq!(later.await.unwrap(), vec![committed(2)]);
        assert_eq!(old.received(), vec![1]);
        assert_eq!(successor.received(), vec![1, 2]);
    }

    /// MQTT-4.6.0-6: a publisher's write submitted after an earlier one of
    /// its chain was lost with its stream (the leader died), before the
    /// publisher heard of that, is not sent: its client sends the lost one
    /// again, which must not land behind it. Other writes go on; once the
    /// publisher has heard (mend), its writes go again.
    #[tokio::test]
    async fn a_write_behind_a_failed_one_of_its_chain_is_not_sent_until_mended() {
        let (old, successor, successor_address, access, writes) =
            dying_leader_and_successor().await;
        let chain = WriteChain::new();

        let first = writes.submit_chained(write(1), &chain);
        until_read(&old).await;
        access.leader_moved(Some(successor_address));
        assert!(first.await.unwrap_err().may_have_committed());
        let later = writes.submit_chained(write(2), &chain).await.unwrap_err();
        assert!(
            matches!(later, WriteFailed::NotProposed(NotProposed::EarlierFailed)),
            "{later}"
        );
        assert_eq!(writes.submit(write(3)).await.unwrap(), vec![committed(3)]);
        chain.mend();
        assert_eq!(
            writes.submit_chained(write(4), &chain).await.unwrap(),
            vec![committed(4)]
        );
        assert_eq!(successor.received(), vec![3, 4]);
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
