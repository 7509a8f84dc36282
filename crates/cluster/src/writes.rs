//! An edge's writes to the store, in the order it submits them.
//!
//! A session relies on order: it queues its acknowledgements without waiting
//! and later reuses their packet identifiers, so a later write must never
//! commit before an earlier one. On the leader's own node the group-commit
//! writer keeps that order; elsewhere, the writes travel on one `Submit`
//! stream to the leader, which queues them in arrival order. One task hands
//! every write to whichever of the two leads now, so no two paths race.
//!
//! A write may fail (the leader changed under it, no quorum answered within
//! the timeout); a failed write is not retried here, because it may have
//! committed. Callers decide: a publisher is told with a reason code, a
//! session whose detached write failed ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rookery_store::StoreNode;
use rookery_store::proto::{
    Command, CommandResult, SubmitRequest, SubmitResponse, store_client::StoreClient,
};
use rookery_store::writer::now_ms;

use crate::access::{Access, LeaderAt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// Why a write did not commit, or may not have.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailed {
    #[error("no store leader within {0:?}")]
    NoLeader(Duration),
    #[error("the store did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the store leader changed before the write was proposed")]
    LeaderChanged,
    #[error("the stream to the store leader broke: {0}")]
    Stream(String),
    #[error("store: {0}")]
    Store(String),
}

type Reply = oneshot::Sender<Result<Vec<CommandResult>, WriteFailed>>;

struct Pending {
    commands: Vec<Command>,
    reply: Reply,
}

/// Writes to the store through its leader, in submission order.
#[derive(Debug, Clone)]
pub struct LeaderWrites {
    queue: mpsc::UnboundedSender<Pending>,
    timeout: Duration,
    contact: Arc<Contact>,
    /// The replica in this process: while it leads, writes go straight to
    /// its group-commit writer (in order there), not through the router.
    here: Option<Arc<Here>>,
}

#[derive(Debug)]
struct Here {
    node: Arc<StoreNode>,
    leading: AtomicBool,
}

/// Keeps `Here::leading` current; ends with the last handle (it holds a
/// weak one, so that the store can stop).
async fn follow_leadership(here: std::sync::Weak<Here>) {
    let Some(mut watch) = here.upgrade().map(|here| here.node.raft().metrics()) else {
        return;
    };
    loop {
        let leading = watch.borrow_and_update().state.is_leader();
        match here.upgrade() {
            Some(here) => here.leading.store(leading, Ordering::Release),
            None => return,
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// When this edge last knew the store's leader to have a quorum behind it.
#[derive(Debug, Default)]
struct Contact {
    /// ms since the Unix epoch of the last committed write or quorum check.
    confirmed_at_ms: AtomicU64,
    /// The last check failed: the store is out of reach until one succeeds.
    lost: AtomicBool,
}

impl Contact {
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
    /// Writes through the store `access` reaches. `timeout` bounds each write: a store without a quorum refuses within
    /// it instead of holding a publisher forever. Contact with the quorum is
    /// checked in the background once nothing confirmed it for `fresh_for`.
    pub fn new(access: Access, timeout: Duration, fresh_for: Duration) -> LeaderWrites {
        let here = access.replica().map(|node| {
            let here = Arc::new(Here {
                node: node.clone(),
                leading: AtomicBool::new(false),
            });
            tokio::spawn(follow_leadership(Arc::downgrade(&here)));
            here
        });
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(route_writes(access, pending, timeout));
        let writes = LeaderWrites {
            queue,
            timeout,
            contact: Arc::default(),
            here,
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
        let confirmed = self.submit(Vec::new()).await.is_ok();
        if !confirmed {
            self.contact.lost.store(true, Ordering::Release);
        }
        confirmed
    }

    /// Queues the commands now; the future resolves to their results. Writes
    /// commit in submission order whether or not each future is awaited.
    pub fn submit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, WriteFailed>> + Send + 'static {
        let timeout = self.timeout;
        let contact = self.contact.clone();
        if let Some(here) = self
            .here
            .as_ref()
            .filter(|here| here.leading.load(Ordering::Acquire))
            && !commands.is_empty()
        {
            let outcome = here.node.submit(commands);
            return futures::future::Either::Left(async move {
                let outcome = match tokio::time::timeout(timeout, outcome).await {
                    Ok(Ok(outcome)) => Ok(outcome.results),
                    Ok(Err(rookery_store::writer::WriteError::ForwardToLeader { .. })) => {
                        Err(WriteFailed::LeaderChanged)
                    }
                    Ok(Err(other)) => Err(WriteFailed::Store(other.to_string())),
                    Err(_) => Err(WriteFailed::TimedOut(timeout)),
                };
                if outcome.is_ok() {
                    contact.confirmed();
                }
                outcome
            });
        }
        let (reply, result) = oneshot::channel();
        let queued = self.queue.send(Pending { commands, reply }).is_ok();
        futures::future::Either::Right(async move {
            if !queued {
                return Err(WriteFailed::Stream("the write router has stopped".into()));
            }
            let outcome = match tokio::time::timeout(timeout, result).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(WriteFailed::Stream("the write was dropped".into())),
                Err(_) => Err(WriteFailed::TimedOut(timeout)),
            };
            if outcome.is_ok() {
                contact.confirmed();
            }
            outcome
        })
    }
}

/// Writes sent on a stream and not yet answered, by id; `None` once the
/// stream has ended.
type Waiting = Arc<Mutex<Option<HashMap<u64, Reply>>>>;

/// The open stream to a leader on another node.
struct RemoteLeader {
    address: String,
    requests: mpsc::Sender<SubmitRequest>,
    waiting: Waiting,
    next_id: u64,
}

impl RemoteLeader {
    fn is_open(&self) -> bool {
        self.waiting.lock().is_some() && !self.requests.is_closed()
    }
}

async fn route_writes(
    access: Access,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    timeout: Duration,
) {
    let mut remote: Option<RemoteLeader> = None;
    while let Some(write) = pending.recv().await {
        let Some(leader) = access.leader(timeout).await else {
            let _ = write.reply.send(Err(WriteFailed::NoLeader(timeout)));
            continue;
        };
        let address = match (leader, access.replica()) {
            (LeaderAt::Here, Some(node)) => {
                write_here(node, write);
                continue;
            }
            (LeaderAt::There(address), _) => address,
            (LeaderAt::Here, None) => {
                let _ = write.reply.send(Err(WriteFailed::NoLeader(timeout)));
                continue;
            }
        };
        let reuse = remote
            .as_ref()
            .is_some_and(|open| open.address == address && open.is_open());
        if !reuse {
            match open_stream(&access, &address).await {
                Ok(open) => remote = Some(open),
                Err(error) => {
                    remote = None;
                    access.leader_moved(None);
                    let _ = write.reply.send(Err(error));
                    continue;
                }
            }
        }
        let Some(open) = remote.as_mut() else {
            let _ = write
                .reply
                .send(Err(WriteFailed::Stream("no stream".into())));
            continue;
        };
        let id = open.next_id;
        open.next_id += 1;
        {
            let mut waiting = open.waiting.lock();
            match waiting.as_mut() {
                Some(waiting) => {
                    waiting.insert(id, write.reply);
                }
                None => {
                    let _ = write.reply.send(Err(WriteFailed::Stream("closed".into())));
                    continue;
                }
            }
        }
        let request = SubmitRequest {
            id,
            commands: write.commands,
        };
        if open.requests.send(request).await.is_err()
            && let Some(reply) = open.waiting.lock().as_mut().and_then(|w| w.remove(&id))
        {
            let _ = reply.send(Err(WriteFailed::Stream("closed".into())));
        }
    }
}

/// A write (or, with no commands, a quorum check) on the leader in this
/// process.
fn write_here(node: &Arc<StoreNode>, write: Pending) {
    if write.commands.is_empty() {
        let raft = node.raft().clone();
        tokio::spawn(async move {
            let checked = raft
                .ensure_linearizable()
                .await
                .map(|_| Vec::new())
                .map_err(|error| WriteFailed::Store(error.to_string()));
            let _ = write.reply.send(checked);
        });
        return;
    }
    let outcome = node.submit(write.commands);
    tokio::spawn(async move {
        let result = outcome
            .await
            .map(|outcome| outcome.results)
            .map_err(|error| match error {
                rookery_store::writer::WriteError::ForwardToLeader { .. } => {
                    WriteFailed::LeaderChanged
                }
                other => WriteFailed::Store(other.to_string()),
            });
        let _ = write.reply.send(result);
    });
}

/// Checks the quorum whenever nothing has confirmed it for `fresh_for`, so
/// that an edge cut off from the store knows within about that bound.
/// Ends with the last [`LeaderWrites`] handle (it holds only a weak one),
/// so that the router lets go of the store when the edge stops.
async fn keep_contact(
    queue: mpsc::WeakUnboundedSender<Pending>,
    contact: Arc<Contact>,
    timeout: Duration,
    fresh_for: Duration,
) {
    let mut ticks = tokio::time::interval(CONTACT_CHECK_EVERY.min(fresh_for / 2));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(queue) = queue.upgrade() else {
            return;
        };
        let writes = LeaderWrites {
            queue,
            timeout,
            contact: contact.clone(),
            here: None,
        };
        if writes.contact(fresh_for / 2) != StoreContact::Fresh && !writes.check_quorum().await {
            tracing::debug!("the store's quorum did not answer");
        }
    }
}

/// Buffered requests on one stream before the router waits for the leader.
const STREAM_BUFFER: usize = 4096;

async fn open_stream(access: &Access, address: &str) -> Result<RemoteLeader, WriteFailed> {
    let channel = access
        .channels()
        .get(address)
        .map_err(|error| WriteFailed::Stream(format!("{address}: {error}")))?;
    let (requests, outgoing) = mpsc::channel(STREAM_BUFFER);
    let mut client = StoreClient::new(channel);
    let mut replies = client
        .submit(ReceiverStream::new(outgoing))
        .await
        .map_err(|status| WriteFailed::Stream(format!("{address}: {}", status.message())))?
        .into_inner();
    let waiting: Arc<Mutex<Option<HashMap<u64, Reply>>>> =
        Arc::new(Mutex::new(Some(HashMap::new())));
    let reader_waiting = waiting.clone();
    let leader = address.to_owned();
    let access = access.clone();
    tokio::spawn(async move {
        let why = loop {
            match replies.message().await {
                Ok(Some(reply)) => {
                    if reply.not_leader {
                        access.leader_moved(Some(reply.leader_address.clone()));
                    }
                    let waiter = reader_waiting
                        .lock()
                        .as_mut()
                        .and_then(|w| w.remove(&reply.id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(result_of(reply));
                    }
                }
                Ok(None) => break "the leader closed the stream".to_owned(),
                Err(status) => break status.message().to_owned(),
            }
        };
        tracing::info!(leader = %leader, reason = %why, "the write stream to the store leader ended");
        access.leader_moved(None);
        // Whatever was in flight may or may not have committed.
        if let Some(waiting) = reader_waiting.lock().take() {
            for (_, waiter) in waiting {
                let _ = waiter.send(Err(WriteFailed::Stream(why.clone())));
            }
        }
    });
    tracing::debug!(leader = %address, "opened a write stream to the store leader");
    Ok(RemoteLeader {
        address: address.to_owned(),
        requests,
        waiting,
        next_id: 1,
    })
}

fn result_of(reply: SubmitResponse) -> Result<Vec<CommandResult>, WriteFailed> {
    if reply.not_leader {
        return Err(WriteFailed::LeaderChanged);
    }
    if !reply.error.is_empty() {
        return Err(WriteFailed::Store(reply.error));
    }
    Ok(reply.results)
}
