//! Group commit: concurrent writes to a node are coalesced into one Raft entry.
//!
//! While a few entries are being replicated, new writes queue up; the next
//! entry takes everything queued. Under load one entry (one replication round,
//! one apply) carries many writers' commands, and each writer gets back the
//! results of its own commands.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::BasicNode;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node does not lead; nothing was proposed.
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
}

/// The group-commit writer of one node; clones share its queue.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<PendingWrite>,
}

impl Writer {
    /// Starts the task that turns queued writes into entries of `raft`.
    pub fn spawn(raft: Raft, mode: GroupCommit) -> Writer {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(propose_queued_writes(raft, mode, pending));
        Writer { queue }
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
        let queued = if commands.len() > MAX_COMMANDS_PER_BATCH {
            Err(WriteError::TooLarge)
        } else {
            let (reply, outcome) = oneshot::channel();
            self.queue
                .send(PendingWrite { commands, reply })
                .map(|()| outcome)
                .map_err(|_| shutting_down())
        };
        async move { queued?.await.map_err(|_| shutting_down())? }
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
    let writes_per_entry = metrics::histogram!("rookery_store_writes_per_entry");
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
        writes_per_entry.record(writes.len() as f64);
        let mut lengths = Vec::with_capacity(writes.len());
        let mut commands = Vec::new();
        let mut replies = Vec::with_capacity(writes.len());
        for write in writes {
            lengths.push(write.commands.len());
            commands.extend(write.commands);
            replies.push(write.reply);
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
