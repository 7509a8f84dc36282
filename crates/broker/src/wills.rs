//! Publishing the wills the store hands to this edge, once each.
//!
//! A due will is handed to one live edge at a time, but it can reach two: an
//! edge whose lease lapsed while it was publishing (paused, cut off) and the
//! edge the store handed it to next, or an edge told again by a replica that
//! had not caught up. The store decides: it queues and retains a will only
//! while it is pending, in the write that ends it, and only the edge whose
//! write ended it delivers it to the sessions the store does not serve
//! (under the will's id as receipt, which a session takes once,
//! [`crate::outgoing::Outgoing::push`], in case that edge's own lost answer
//! made it write twice).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rookery_store::proto::{self, command::Kind, command_result::Kind as ResultKind};

use crate::hub::Hub;
use crate::message::Message;

/// How long a normal DISCONNECT is remembered here: as long as this edge
/// retries recording it, after which the store has taken the session
/// offline itself.
const NORMAL_ENDS_KEPT: Duration = Duration::from_secs(30);

/// How long a will's (or shared copies') store write is retried (an
/// election, this edge cut off for a while). Until it is written the will
/// stays pending for this edge.
const WILL_WRITE_PATIENCE: Duration = Duration::from_secs(300);
/// Between two attempts.
const WILL_WRITE_RETRY: Duration = Duration::from_millis(500);

/// The connections on this edge that ended lately with a normal DISCONNECT
/// (Reason Code 0x00): the store hands a takeover's will to the old
/// connection's edge, which may know of a DISCONNECT the store has not
/// recorded yet (MQTT-3.1.2-10).
#[derive(Debug, Default)]
pub struct NormalEnds {
    ends: Mutex<Ends>,
}

#[derive(Debug, Default)]
struct Ends {
    /// Client id → the epoch of its connection that ended normally, and
    /// when.
    latest: HashMap<Arc<str>, (u64, Instant)>,
    /// The same, oldest first, to forget them in order.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl NormalEnds {
    /// The connection of `client_id` with `epoch` ended with a normal
    /// DISCONNECT.
    pub fn record(&self, client_id: &Arc<str>, epoch: u64) {
        let now = Instant::now();
        let mut ends = self.ends.lock();
        while let Some((at, _)) = ends.order.front()
            && now.duration_since(*at) >= NORMAL_ENDS_KEPT
        {
            if let Some((at, client)) = ends.order.pop_front()
                && ends
                    .latest
                    .get(&client)
                    .is_some_and(|(_, last)| *last == at)
            {
                ends.latest.remove(&client);
            }
        }
        ends.latest.insert(client_id.clone(), (epoch, now));
        ends.order.push_back((now, client_id.clone()));
    }

    /// Whether the connection of `client_id` with `epoch` ended here with a
    /// normal DISCONNECT.
    pub fn ended_normally(&self, client_id: &str, epoch: u64) -> bool {
        self.ends
            .lock()
            .latest
            .get(client_id)
            .is_some_and(|(ended, at)| *ended == epoch && at.elapsed() < NORMAL_ENDS_KEPT)
    }
}

/// Publishes a will the store handed to this edge, or discards it if its
/// connection ended here with a normal DISCONNECT, and ends it in the store.
/// The store decides first: the sessions it does not serve get the will only
/// if this edge's write was the one that ended it (an edge told again, from
/// a replica that had not caught up, must not deliver it a second time to a
/// subscriber that has reconnected since).
pub(crate) async fn publish_due(hub: Arc<Hub>, due: proto::WillDue) {
    let will = proto::WillRef {
        client_id: due.client_id.clone(),
        will_id: due.will_id,
    };
    let message = if hub.normal_ends.ended_normally(&due.client_id, due.epoch) {
        metrics::counter!("rookery_wills_discarded_total").increment(1);
        tracing::info!(
            client_id = due.client_id,
            "the will of a connection that ended with a normal DISCONNECT is discarded \
             (MQTT-3.1.2-10)"
        );
        None
    } else {
        due.message
            .as_ref()
            .and_then(Message::from_proto)
            .map(Arc::new)
    };
    let mut routes = message.as_ref().map(|message| hub.route(message));
    let mut commands = match (&message, &mut routes) {
        // Retained on every edge once the store has taken it (its event).
        (Some(message), Some(routes)) => hub.store_commands(
            message,
            message.retain,
            std::mem::take(&mut routes.durable),
            None,
        ),
        _ => Vec::new(),
    };
    if !commands
        .iter()
        .any(|command| matches!(command.kind, Some(Kind::Enqueue(_))))
    {
        commands.push(hub.enqueue_command(None, Vec::new(), None));
    }
    for command in &mut commands {
        match &mut command.kind {
            Some(Kind::Enqueue(enqueue)) => enqueue.will = Some(will.clone()),
            Some(Kind::SetRetained(set)) => set.will = Some(will.clone()),
            _ => {}
        }
    }
    let written = write_patiently(&hub, commands, "a will").await;
    let Some(results) = written.results else {
        return;
    };
    let mine_may_have_committed = written.earlier_may_have_committed;
    hub.count_store_drops(&results);
    let ended_here = !published_before(&results);
    if let (Some(message), Some(routes)) = (&message, routes) {
        hub.retained_outcome(message, &results);
        if delivers(ended_here, mine_may_have_committed) {
            metrics::counter!("rookery_wills_published_total").increment(1);
            deliver_with_receipt(&hub, message, routes, due.will_id);
        }
    }
    if !ended_here && !mine_may_have_committed {
        metrics::counter!("rookery_wills_published_again_total").increment(1);
        tracing::info!(
            client_id = due.client_id,
            will_id = due.will_id,
            epoch = due.epoch,
            "a will was handed to this edge that had been published already"
        );
    }
}

/// A store write retried until it is answered.
pub(crate) struct Written {
    /// The answer; None if the store stayed unreachable for
    /// [`WILL_WRITE_PATIENCE`] (the store hands the work out again).
    pub results: Option<Vec<proto::CommandResult>>,
    /// Whether an earlier attempt may have committed: then a "done
    /// already" in the answer may be this edge's own doing.
    pub earlier_may_have_committed: bool,
}

/// Writes what the store handed this edge to do (a will, shared copies),
/// retrying through elections and cuts: until it is written the work stays
/// this edge's.
pub(crate) async fn write_patiently(
    hub: &Hub,
    commands: Vec<proto::Command>,
    what: &'static str,
) -> Written {
    let give_up = Instant::now() + WILL_WRITE_PATIENCE;
    let mut earlier_may_have_committed = false;
    loop {
        match hub.store.write(commands.clone()).await {
            Ok(results) => {
                return Written {
                    results: Some(results),
                    earlier_may_have_committed,
                };
            }
            Err(error) if Instant::now() < give_up => {
                earlier_may_have_committed |= error.may_have_committed();
                tracing::debug!(%error, what, "a store write failed; retrying");
                tokio::time::sleep(WILL_WRITE_RETRY).await;
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    what,
                    "a store write failed; the store keeps the work pending and hands it out again"
                );
                return Written {
                    results: None,
                    earlier_may_have_committed,
                };
            }
        }
    }
}

/// Whether this edge delivers a will to the sessions the store does not
/// serve: when its write ended the will, or may have (an earlier attempt's
/// answer was lost), in which case a copy that arrives twice carries the
/// will's id as receipt, which a session takes once.
fn delivers(ended_here: bool, mine_may_have_committed: bool) -> bool {
    ended_here || mine_may_have_committed
}

/// Hands a message the store decided on (a will, a moved shared copy) to
/// the sessions online here and on other edges, under `receipt`, which a
/// session takes once.
pub(crate) fn deliver_with_receipt(
    hub: &Hub,
    message: &Arc<Message>,
    mut routes: crate::hub::Routes,
    receipt: u64,
) {
    for (_, delivery) in &mut routes.local {
        delivery.receipt = receipt;
    }
    for (_, deliveries) in &mut routes.remote {
        for delivery in deliveries {
            delivery.receipt = receipt;
        }
    }
    hub.forward(message, routes.remote, false, 0, &mut Vec::new());
    hub.deliver_local(routes.local, &mut Vec::new());
}

/// Whether the store says the will had been published already.
fn published_before(results: &[proto::CommandResult]) -> bool {
    results.iter().any(
        |result| matches!(&result.kind, Some(ResultKind::Enqueued(enqueued)) if !enqueued.accepted),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A will the store says another edge published is not delivered again
    /// (its subscribers may have reconnected since, with no memory of its
    /// receipt); one this edge's own lost answer may have ended is.
    #[test]
    fn only_the_edge_that_ended_a_will_delivers_it() {
        assert!(delivers(true, false));
        assert!(delivers(false, true));
        assert!(!delivers(false, false));
    }

    #[test]
    fn a_normal_end_is_known_for_its_epoch_only() {
        let ends = NormalEnds::default();
        let client: Arc<str> = Arc::from("c1");
        ends.record(&client, 7);
        assert!(ends.ended_normally("c1", 7));
        assert!(!ends.ended_normally("c1", 8), "another connection's will");
        assert!(!ends.ended_normally("c2", 7));
        ends.record(&client, 9);
        assert!(!ends.ended_normally("c1", 7), "the latest end replaces it");
        assert!(ends.ended_normally("c1", 9));
    }
}
