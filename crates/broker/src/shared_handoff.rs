//! Moving an offline persistent member's shared-subscription copies to the
//! group's online members, when the store says they are due
//! (`SharedCopiesDue`, after `shared_handoff_delay_s`).
//!
//! Each copy is routed to one online member of its group and written back
//! as an `Enqueue` with `handoff`: the store moves it (out of the offline
//! member's queue, into a persistent target's) only while it is still there,
//! so a copy offered to two edges, or offered again after a lost answer,
//! moves once. Sessions the store does not serve get the copy only from the
//! edge whose write moved it, under the message's id as receipt.

use std::sync::Arc;

use rookery_store::proto::{self, command::Kind, command_result::Kind as ResultKind};

use crate::hub::{Hub, Routes};
use crate::message::Message;
use crate::wills::{deliver_with_receipt, write_patiently};

/// Routes and moves the copies the store offers this edge. A copy no
/// member is online to take stays where it is; the store offers it again.
pub(crate) async fn hand_on(hub: Arc<Hub>, due: proto::SharedCopiesDue) {
    let mut moves: Vec<(Arc<Message>, Routes, u64)> = Vec::new();
    let mut commands = Vec::new();
    for copy in due.copies {
        let Some(message) = copy.message.as_ref().and_then(Message::from_proto) else {
            continue;
        };
        let message = Arc::new(message);
        let mut routes = hub.route_handed_off(&message, &copy.shared_group);
        if routes.local.is_empty() && routes.remote.is_empty() && routes.durable.is_empty() {
            continue;
        }
        let durable = std::mem::take(&mut routes.durable);
        let stored = (!durable.is_empty()).then(|| message.to_proto());
        let mut command = hub.enqueue_command(stored, durable, None);
        if let Some(Kind::Enqueue(enqueue)) = &mut command.kind {
            enqueue.handoff = Some(proto::QueueRef {
                client_id: due.client_id.clone(),
                epoch: due.epoch,
                seq: copy.seq,
            });
        }
        commands.push(command);
        moves.push((message, routes, copy.message_id));
    }
    if commands.is_empty() {
        tracing::debug!(
            client_id = due.client_id,
            "no member of its shared groups is online to take an offline member's copies"
        );
        return;
    }
    let written = write_patiently(&hub, commands, "moving shared copies").await;
    let Some(results) = written.results else {
        return;
    };
    hub.count_store_drops(&results);
    let mut moved = 0u64;
    for ((message, routes, message_id), result) in moves.into_iter().zip(&results) {
        let moved_here = matches!(
            &result.kind,
            Some(ResultKind::Enqueued(enqueued)) if enqueued.accepted
        );
        // A "not moved" after an attempt whose answer was lost may be this
        // edge's own move: delivered again under the same receipt, which a
        // session takes once.
        if moved_here || written.earlier_may_have_committed {
            moved += u64::from(moved_here);
            deliver_with_receipt(&hub, &message, routes, message_id);
        }
    }
    metrics::counter!("rookery_shared_handed_off_total").increment(moved);
    tracing::info!(
        client_id = due.client_id,
        moved,
        "shared-subscription copies of an offline member moved to other members"
    );
}
