//! The edge's view of the session store: writes go to the store's leader in
//! submission order (on this node or over the cluster's write stream); reads
//! and notifications come from the store replica in this process, which has
//! applied every entry it notifies about.

use std::sync::Arc;

use rookery_cluster::{LeaderWrites, StoreContact};
use rookery_store::machine::{self, Event};
use rookery_store::proto::{self, Command, CommandResult, edge_event};
use rookery_store::{StoreError, StoreNode};
use tokio::sync::broadcast;

/// Why the store did not take a write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreUnavailable {
    #[error("session store: {0}")]
    Write(String),
    #[error("session store read: {0}")]
    Read(String),
}

impl From<StoreError> for StoreUnavailable {
    fn from(error: StoreError) -> Self {
        StoreUnavailable::Read(error.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    node: Arc<StoreNode>,
    writes: LeaderWrites,
    contact_bound: std::time::Duration,
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
    /// Events were missed: the edge must read its state again.
    Lagged,
}

impl Store {
    /// `write_timeout` bounds each write (a store without a quorum);
    /// `contact_bound`: how long after the quorum was last heard from this
    /// edge still acknowledges QoS 1/2 publishes without checking again.
    pub fn new(
        node: Arc<StoreNode>,
        write_timeout: std::time::Duration,
        contact_bound: std::time::Duration,
    ) -> Self {
        let writes = LeaderWrites::new(node.clone(), write_timeout, contact_bound);
        Store {
            node,
            writes,
            contact_bound,
        }
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
        metrics::counter!("rookery_store_writes_total").increment(1);
        let outcome = self.writes.submit(commands);
        async move {
            outcome.await.map_err(|error| {
                metrics::counter!("rookery_store_write_failures_total").increment(1);
                StoreUnavailable::Write(error.to_string())
            })
        }
    }

    /// The entries of a session's queue after position `after`, at most
    /// `limit` of them.
    pub fn queue_after(
        &self,
        client_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<proto::QueuedMessage>, StoreUnavailable> {
        Ok(machine::read_queue_after(
            self.node.local_db(),
            client_id,
            after,
            limit,
        )?)
    }

    /// One command's result.
    pub async fn write_one(&self, command: Command) -> Result<CommandResult, StoreUnavailable> {
        self.write(vec![command])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreUnavailable::Write("no result".into()))
    }

    /// Where another edge's forwarding service listens, if it is alive.
    pub fn edge_address(&self, edge_id: &str) -> Result<Option<String>, StoreUnavailable> {
        Ok(machine::read_edge(self.node.local_db(), edge_id)?
            .map(|edge| edge.address)
            .filter(|address| !address.is_empty()))
    }

    /// The edges of the cluster as this replica knows them.
    pub fn edges(&self) -> Result<Vec<proto::Edge>, StoreUnavailable> {
        Ok(machine::read_edges(self.node.local_db())?)
    }

    pub fn routes(&self) -> Result<Vec<proto::Route>, StoreUnavailable> {
        Ok(machine::read_routes(self.node.local_db())?)
    }

    pub fn retained(
        &self,
        filter: &str,
        now_ms: u64,
    ) -> Result<Vec<proto::Message>, StoreUnavailable> {
        Ok(machine::read_retained(
            self.node.local_db(),
            filter,
            now_ms,
        )?)
    }

    /// Events for `edge_id`, in commit order.
    pub fn events(&self, edge_id: String) -> StoreEvents {
        StoreEvents {
            applied: self.node.subscribe_applied(),
            edge_id,
            pending: std::collections::VecDeque::new(),
        }
    }
}

#[derive(Debug)]
pub struct StoreEvents {
    applied: broadcast::Receiver<Arc<rookery_store::state_machine::Applied>>,
    edge_id: String,
    pending: std::collections::VecDeque<StoreEvent>,
}

impl StoreEvents {
    /// The next event; `None` when the store has stopped.
    pub async fn next(&mut self) -> Option<StoreEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let applied = match self.applied.recv().await {
                Ok(applied) => applied,
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(StoreEvent::Lagged),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if applied.reset {
                self.pending.push_back(StoreEvent::Lagged);
            }
            for event in &applied.events {
                match event {
                    Event::Edge { edge_id, event } if *edge_id == self.edge_id => {
                        self.pending.push_back(StoreEvent::Edge(event.clone()));
                    }
                    Event::RouteAdded(route) => {
                        self.pending
                            .push_back(StoreEvent::RouteAdded(route.clone()));
                    }
                    Event::RouteRemoved(route) => {
                        self.pending
                            .push_back(StoreEvent::RouteRemoved(route.clone()));
                    }
                    Event::Retained(message) => {
                        self.pending
                            .push_back(StoreEvent::Retained(message.clone()));
                    }
                    Event::Edge { .. } => {}
                }
            }
        }
    }
}
