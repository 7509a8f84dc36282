//! Group commit: concurrent writes to a node are coalesced into one Raft entry.
//!
//! While a few entries are being replicated, new writes queue up; the next
//! entry takes everything queued. Under load one entry (one replication round,
//! one apply) carries many writers' commands, and each writer gets back the
//! results of its own commands.
//!
//! The writer also decides, before anything reaches Raft, whether this node
//! takes a write at all ([`Writer::try_submit`]): not while it does not lead,
//! and not while it is handing leadership over ([`Writer::close`]). Such a
//! refusal is certain (nothing was proposed), unlike a failure reported by
//! Raft after the proposal, so a caller may send the write again elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::BasicNode;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::machine::MAX_COMMANDS_PER_BATCH;
use crate::proto::{Command, CommandBatch, CommandResult};
use crate::{NodeId, Raft, TypeConfig};

/// How a node turns writes into Raft entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCommit {
    /// Coalesce queued writes into one entry, with at most `in_flight` entries
    /// being committed at once.
    On {
        /// Entries being committed at once, at most (at least 1).
        in_flight: usize,
    },
    /// One entry per write (for comparison in benchmarks).
    Off,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit::On { in_flight: 2 }
    }
}

/// Commands of one entry at most; a larger single write still goes alone.
const MAX_COMMANDS_PER_ENTRY: usize = 4096;

/// What a committed write returns.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// One result per command of the write, in order.
    pub results: Vec<CommandResult>,
    /// The log index of the entry that carried the write.
    pub log_index: u64,
}

/// Why a node did not take a write: nothing was proposed to Raft, so the
/// write has not committed and never will.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This node is handing its leadership to another voter, or stopping:
    /// writes go to the next leader.
    #[error("this node is handing leadership over and takes no new writes")]
    HandingOver,
    /// This node does not lead, as far as it knows now.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader this node knows of: its id and node.
        leader: Option<(NodeId, BasicNode)>,
    },
}

/// A write the node did not take, with its commands given back.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// The commands, untouched.
    pub commands: Vec<Command>,
}

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Refused before it reached Raft (see [`Refusal`]): certainly not
    /// committed.
    #[error("the write was not proposed: {0}")]
    NotProposed(Refusal),
    /// Raft answered that this node does not lead. Openraft answers so both
    /// when it refuses a proposal and when a newer leader removed a proposed
    /// entry from this node's log (which another node holding it may still
    /// commit): whether it was proposed is not known.
    #[error("this node is not the leader")]
    ForwardToLeader {
        /// The leader this node knows of: its id and node.
        leader: Option<(NodeId, BasicNode)>,
    },
    /// The write has more commands than one entry may carry; nothing was proposed.
    #[error("a write carries at most {MAX_COMMANDS_PER_BATCH} commands")]
    TooLarge,
    /// Raft failed or the store is stopping; the write may have committed or not.
    #[error("raft: {0}")]
    Raft(String),
}

struct PendingWrite {
    commands: Vec<Command>,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    /// Counts the write as taken until it is answered.
    taken: Taken,
}

/// What decides whether the node takes writes, shared by the writer's clones.
struct Gate {
    /// This node's Raft metrics: whether it leads now.
    metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    /// Closed while leadership is handed over, and for good once the node
    /// drains: writes are refused.
    closed: watch::Sender<bool>,
    /// Mirrors `closed`, read on every write (paired with `taken`).
    closed_now: AtomicBool,
    /// Writes taken and not yet answered.
    taken: AtomicUsize,
    /// Signalled when `taken` drops to zero.
    settled: Notify,
}

/// A write counted in [`Gate::taken`] until dropped.
struct Taken(Arc<Gate>);

impl Drop for Taken {
    fn drop(&mut self) {
        if self.0.taken.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// The group-commit writer of one node; clones share its queue.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<PendingWrite>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("closed", &self.is_closed())
            .field("taken", &self.gate.taken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the task that turns queued writes into entries of `raft`.
    pub fn spawn(raft: Raft, mode: GroupCommit) -> Writer {
        let (queue, pending) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate {
            metrics: raft.metrics(),
            closed: watch::Sender::new(false),
            closed_now: AtomicBool::new(false),
            taken: AtomicUsize::new(0),
            settled: Notify::new(),
        });
        tokio::spawn(propose_queued_writes(raft, mode, pending));
        Writer { queue, gate }
    }

    /// Commits the commands as one unit and returns their results once they
    /// are applied on this node.
    pub async fn write(&self, commands: Vec<Command>) -> Result<WriteOutcome, WriteError> {
        self.submit(commands).await
    }

    /// Queues the commands now and returns what resolves to their results.
    /// Writes submitted one after another commit in that order, whether or
    /// not the caller awaits each one: a session can queue an
    /// acknowledgement and go on, and a later write that reuses the packet
    /// identifier still lands after it.
    pub fn submit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<WriteOutcome, WriteError>> + Send + 'static {
        let queued = self
            .try_submit(commands)
            .map_err(|refused| WriteError::NotProposed(refused.refusal));
        async move { queued?.await }
    }

    /// Queues the commands now, as [`Writer::submit`] does, unless this node
    /// does not take writes now: then they come back at once, with why, and
    /// nothing was proposed (a later write may still be taken; callers that
    /// keep an order must not send one before this one went elsewhere).
    pub fn try_submit(
        &self,
        commands: Vec<Command>,
    ) -> Result<impl Future<Output = Result<WriteOutcome, WriteError>> + Send + 'static, Refused>
    {
        if commands.len() > MAX_COMMANDS_PER_BATCH {
            return Ok(futures::future::Either::Left(std::future::ready(Err(
                WriteError::TooLarge,
            ))));
        }
        // Counted before the gate is read: `settle` reads the count after
        // closing the gate, so a write either sees the gate closed or is
        // waited for (both sides sequentially consistent).
        self.gate.taken.fetch_add(1, Ordering::SeqCst);
        let taken = Taken(self.gate.clone());
        if let Some(refusal) = self.refusal() {
            drop(taken);
            return Err(Refused { refusal, commands });
        }
        let (reply, outcome) = oneshot::channel();
        let queued = self
            .queue
            .send(PendingWrite {
                commands,
                reply,
                taken,
            })
            .map(|()| outcome)
            .map_err(|_| shutting_down());
        Ok(futures::future::Either::Right(async move {
            queued?.await.map_err(|_| shutting_down())?
        }))
    }

    /// Why this node would refuse a write now, if it would: it is handing
    /// over, or does not lead. A quorum check on a node asks the same.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.gate.closed_now.load(Ordering::SeqCst) {
            return Some(Refusal::HandingOver);
        }
        let metrics = self.gate.metrics.borrow();
        if metrics.state.is_leader() {
            return None;
        }
        let leader = metrics.current_leader.and_then(|id| {
            let node = metrics.membership_config.membership().get_node(&id)?;
            Some((id, node.clone()))
        });
        Some(Refusal::NotLeader { leader })
    }

    /// Stops taking writes (each is refused with [`Refusal::HandingOver`])
    /// until [`Writer::open`]; writes already taken go on to their outcome
    /// ([`Writer::settled`] waits for them).
    pub fn close(&self) {
        self.gate.closed_now.store(true, Ordering::SeqCst);
        self.gate.closed.send_replace(true);
    }

    /// Takes writes again after [`Writer::close`].
    pub fn open(&self) {
        self.gate.closed_now.store(false, Ordering::SeqCst);
        self.gate.closed.send_replace(false);
    }

    /// Whether the writer is closed now.
    pub fn is_closed(&self) -> bool {
        self.gate.closed_now.load(Ordering::SeqCst)
    }

    /// Follows whether the writer is closed (the write streams of a closed
    /// node end, so that their edges go to the next leader).
    pub fn closed_watch(&self) -> watch::Receiver<bool> {
        self.gate.closed.subscribe()
    }

    /// Waits until every write taken has its outcome (committed or failed).
    pub async fn settled(&self) {
        loop {
            let notified = self.gate.settled.notified();
            if self.gate.taken.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

fn shutting_down() -> WriteError {
    WriteError::Raft("the store is shutting down".into())
}

/// Takes queued writes in order, each batch of them one Raft entry, with at
/// most `in_flight` entries waiting for their commit at once.
async fn propose_queued_writes(
    raft: Raft,
    mode: GroupCommit,
    mut pending: mpsc::UnboundedReceiver<PendingWrite>,
) {
    let in_flight = match mode {
        GroupCommit::On { in_flight } => in_flight.max(1),
        // Without coalescing, concurrency is only bounded by the writers.
        GroupCommit::Off => Semaphore::MAX_PERMITS,
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = pending.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut writes = vec![first];
        if mode != GroupCommit::Off {
            let mut commands = writes[0].commands.len();
            while commands < MAX_COMMANDS_PER_ENTRY {
                match pending.try_recv() {
                    Ok(write) => {
                        commands += write.commands.len();
                        writes.push(write);
                    }
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!("rookery_store_writes_per_entry").record(writes.len() as f64);
        let mut lengths = Vec::with_capacity(writes.len());
        let mut commands = Vec::new();
        let mut replies = Vec::with_capacity(writes.len());
        let mut taken = Vec::with_capacity(writes.len());
        for write in writes {
            lengths.push(write.commands.len());
            commands.extend(write.commands);
            replies.push(write.reply);
            taken.push(write.taken);
        }
        let batch = CommandBatch {
            now_ms: now_ms(),
            commands,
        };
        // Proposed here, in queue order; only the wait for the commit runs
        // concurrently with the next entries.
        let committed = raft.client_write_ff(batch).await;
        tokio::spawn(async move {
            let result = match committed {
                Ok(receiver) => match receiver.await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                        Err(WriteError::ForwardToLeader {
                            leader: forward.leader_id.zip(forward.leader_node),
                        })
                    }
                    Ok(Err(other)) => Err(WriteError::Raft(other.to_string())),
                    Err(_) => Err(WriteError::Raft("raft stopped before committing".into())),
                },
                Err(fatal) => Err(WriteError::Raft(fatal.to_string())),
            };
            reply_all(replies, lengths, result);
            // Answered: no longer counted as taken.
            drop(taken);
            drop(slot);
        });
    }
}

/// Hands each writer the results of its own commands.
fn reply_all(
    replies: Vec<oneshot::Sender<Result<WriteOutcome, WriteError>>>,
    lengths: Vec<usize>,
    result: Result<ClientWriteResponse<TypeConfig>, WriteError>,
) {
    match result {
        Ok(response) => {
            let log_index = response.log_id.index;
            let mut results = response.data.into_iter();
            for (reply, length) in replies.into_iter().zip(lengths) {
                let own: Vec<CommandResult> = results.by_ref().take(length).collect();
                let _ = reply.send(Ok(WriteOutcome {
                    results: own,
                    log_index,
                }));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// The encoded size of a write's commands, in bytes: what it weighs in the
/// queues on its way to the log.
pub fn encoded_size(commands: &[Command]) -> usize {
    commands.iter().map(prost::Message::encoded_len).sum()
}

/// Milliseconds since the Unix epoch on the proposing node's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
