//! The store side of a client's publishes, held within the store's caps
//! and its write budget.
//!
//! - A QoS 0 retained message is written to the store behind the publish
//!   (the publisher never waits on it), but a client has at most Receive
//!   Maximum such writes outstanding, the bound its QoS 1/2 publishes
//!   waiting on the store have: beyond it the client is not read until one
//!   finishes. Neither is a client with writes outstanding while the edge's
//!   budget of writes in flight is spent (`write_budget`).
//! - A retained message for a new topic beyond `max_retained_messages` or
//!   `max_retained_bytes` is refused by the store. A 5.0 client publishing
//!   at QoS 1/2 is told 0x97 Quota exceeded, and then nobody receives the
//!   message: its topic is claimed in the store before it is routed. Any
//!   other publisher cannot be told, so its message is delivered and only
//!   the retained copy is dropped (counted).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use rookery_codec::{QoS, ReasonCode};
use rookery_store::proto;

use super::publish::{Outcome, Reply};
use super::run::Live;
use crate::message::Message;

/// A store write nothing waits for, with what follows its outcome.
pub(super) type Behind = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What claiming a retained topic in the store decided for a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Nothing to claim: the publish goes on as it is.
    Unneeded,
    /// The store has the message retained already: not written again.
    Claimed,
    /// The publish is answered with this and goes nowhere.
    Refused(Reply),
}

/// How the store's backpressure stands for a client at one turn of its loop.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreHold {
    /// The client is not read (`held_by_store`).
    pub held: bool,
    /// It was held at the last turn and is not now.
    pub released: bool,
    /// Held while the edge's write budget is spent: the budget's room is
    /// worth waiting for (held for its own writes alone, the client waits
    /// for those instead).
    pub budget_spent: bool,
}

/// Counts a client held back by its store writes, and says so once.
fn count_store_hold() {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    metrics::counter!("rookery_store_backpressure_pauses_total").increment(1);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "a client was not read while its store writes were outstanding (Receive Maximum \
             retained QoS 0 writes, or the edge's write budget spent); it is read again as \
             they finish (logged once; counted in rookery_store_backpressure_pauses_total)"
        );
    }
}

impl Live {
    /// For a 5.0 QoS 1/2 retained publish to a topic not retained here, the
    /// store first retains it (or refuses it at a cap) before the message
    /// goes anywhere, so that a refused publish reaches nobody.
    pub(super) async fn claim_retained(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        v5: bool,
    ) -> Claim {
        let hub = &self.hub;
        if !message.retain
            || qos == QoS::AtMostOnce
            || !v5
            || message.payload.is_empty()
            || hub.has_retained(&message.topic)
        {
            return Claim::Unneeded;
        }
        let command = hub.set_retained_command(message.to_proto());
        match hub.store.write(vec![command]).await {
            Ok(results) if hub.retained_outcome(message, &results) => {
                Claim::Refused(Reply::Ack(ReasonCode::QuotaExceeded))
            }
            Ok(_) => {
                hub.retain(message);
                Claim::Claimed
            }
            Err(error) => {
                tracing::warn!(%error, client_id = %self.client_id(), "retaining a message failed");
                let outcome = Outcome::of_failed_write(error.may_have_committed(), false);
                Claim::Refused(Reply::to(outcome, qos, v5))
            }
        }
    }

    /// Writes a QoS 0 publish's retained copy behind it: queued in the
    /// store's order now, its outcome handled when it comes.
    pub(super) fn write_behind(&mut self, commands: Vec<proto::Command>, message: Arc<Message>) {
        let hub = self.hub.clone();
        let write = hub.store.submit(commands);
        self.behind.push(Box::pin(async move {
            match write.await {
                Ok(results) => {
                    hub.retained_outcome(&message, &results);
                }
                Err(error) => tracing::warn!(%error, "storing a retained message failed"),
            }
        }));
    }

    /// Whether the client is not to be read for its store writes: as many
    /// QoS 0 retained writes outstanding as Receive Maximum allows, or
    /// writes outstanding while the edge's write budget is spent.
    pub(super) fn held_by_store(&self) -> bool {
        let limit = usize::from(self.hub.config.limits.receive_maximum).max(1);
        let outstanding = !self.behind.is_empty() || !self.pending.is_empty();
        self.behind.len() >= limit || (outstanding && self.hub.store.budget().is_congested())
    }

    /// Where the store's backpressure leaves this client now; a new hold is
    /// counted.
    pub(super) fn store_hold(&mut self) -> StoreHold {
        let held = self.held_by_store();
        if held && !self.store_held {
            count_store_hold();
        }
        let released = self.store_held && !held;
        self.store_held = held;
        StoreHold {
            held,
            released,
            budget_spent: held && self.hub.store.budget().is_congested(),
        }
    }

    /// The connection ends: its writes behind still finish (their outcome
    /// still counts), in a task of their own.
    pub(super) fn finish_behind(&mut self) {
        let behind = std::mem::take(&mut self.behind);
        if !behind.is_empty() {
            tokio::spawn(behind.count());
        }
    }
}
