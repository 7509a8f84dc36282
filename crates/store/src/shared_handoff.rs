//! A persistent shared-subscription member that stays away: its queued
//! copies go to the group's other members.
//!
//! Edges pick online members first, so a member that left gets new copies
//! only while no member is online. What it holds already waits for
//! `shared_handoff_after_ms` (a quick reconnect keeps it), then the store
//! offers the movable copies to a live edge (`SharedCopiesDue`); the edge
//! routes each one to an online member of its group and writes it back as
//! an `Enqueue` with `handoff`, which moves the copy only while it is still
//! in the offline member's queue. Like a will, a copy is thus moved once,
//! whichever edges were told of it.
//!
//! Movable: copies not yet sent, and QoS 1 copies sent but not acknowledged
//! (MQTT 5.0 section 4.8.2: the Server MAY send those to another member).
//! A QoS 2 copy already sent stays: the Server MUST complete its delivery to
//! that member when it reconnects (MQTT-4.8.2-4), and never send it to
//! another (MQTT-4.8.2-5).

use crate::StoreError;
use crate::db::{Reader, decode};
use crate::keys::{self, TimerKind, cf};
use crate::proto::{self, DeliveryStage, QueuedMessage, Session, StoredMessage, edge_event};

use super::Machine;

/// How long the edge offered the copies has to move them before the store
/// offers what is left again (also while no member is online to take them).
const SHARED_UNANSWERED_MS: u64 = 15_000;
/// The next offer after one that did not hold every movable copy.
const SHARED_NEXT_BATCH_MS: u64 = 2_000;
/// The most copies, and payload bytes, one offer carries (at least one
/// copy): a notification, not a bulk transfer.
const SHARED_COPIES_PER_OFFER: usize = 256;
const SHARED_BYTES_PER_OFFER: usize = 1 << 20;

/// When an offline session's shared copies are due to move.
fn handoff_due_ms(session: &Session) -> u64 {
    session
        .disconnected_at_ms
        .max(1)
        .saturating_add(session.shared_handoff_after_ms)
}

/// Whether a queue entry may go to another member of its group.
fn movable(entry: &QueuedMessage) -> bool {
    if entry.shared_group.is_empty() {
        return false;
    }
    entry.stage == DeliveryStage::Queued as i32
        || (entry.stage == DeliveryStage::Published as i32 && entry.qos == 1)
}

impl Machine<'_, '_> {
    /// Arms the timer that hands an offline session's shared copies on, at
    /// `shared_handoff_after_ms` after it went offline (idempotent: the key
    /// is that instant).
    pub(super) fn schedule_shared_handoff(&mut self, session: &Session) {
        if session.shared_handoff_after_ms == 0 || !session.edge_id.is_empty() {
            return;
        }
        self.txn.put(
            cf::TIMERS,
            keys::timer(
                handoff_due_ms(session),
                TimerKind::SharedHandoff,
                &session.client_id,
            ),
            Vec::new(),
        );
    }

    /// The handoff timer of `client_id` is due: its movable copies are
    /// offered to a live edge, and offered again later until none is left.
    pub(super) fn offer_shared_copies(&mut self, client_id: &str) -> Result<(), StoreError> {
        let Some(session) = self.session(client_id)? else {
            return Ok(());
        };
        if !session.edge_id.is_empty() || session.shared_handoff_after_ms == 0 {
            return Ok(());
        }
        if handoff_due_ms(&session) > self.now_ms {
            // A timer of an earlier time offline; this one's is armed.
            return Ok(());
        }
        let mut copies = Vec::new();
        let mut bytes = 0usize;
        let mut complete = true;
        for (_, value) in self.txn.scan_prefix(cf::QUEUES, &keys::client(client_id))? {
            let mut entry: QueuedMessage = decode(cf::QUEUES, &value)?;
            if !movable(&entry) {
                continue;
            }
            if copies.len() >= SHARED_COPIES_PER_OFFER || bytes >= SHARED_BYTES_PER_OFFER {
                complete = false;
                break;
            }
            entry.message = self
                .txn
                .get_message::<StoredMessage>(cf::MESSAGES, &keys::message(entry.message_id))?
                .and_then(|stored| stored.message);
            let Some(message) = &entry.message else {
                continue;
            };
            if message.expires_at_ms != 0 && message.expires_at_ms <= self.now_ms {
                continue;
            }
            bytes = bytes.saturating_add(message.payload.len());
            copies.push(entry);
        }
        if copies.is_empty() {
            return Ok(());
        }
        let again_ms = if complete {
            SHARED_UNANSWERED_MS
        } else {
            SHARED_NEXT_BATCH_MS
        };
        self.txn.put(
            cf::TIMERS,
            keys::timer(
                self.now_ms.saturating_add(again_ms),
                TimerKind::SharedHandoff,
                client_id,
            ),
            Vec::new(),
        );
        if let Some(edge_id) = self.live_edge(None)? {
            self.emit_edge(
                &edge_id,
                edge_event::Kind::SharedCopiesDue(proto::SharedCopiesDue {
                    client_id: client_id.to_owned(),
                    epoch: session.epoch,
                    copies,
                }),
            );
        }
        Ok(())
    }

    /// Removes the queue entry `handoff` names, if it may still move: its
    /// session is offline with the same epoch (it has not come back for
    /// it) and the entry is still movable. Returns the message's id.
    pub(super) fn take_shared_copy(
        &mut self,
        handoff: &proto::QueueRef,
    ) -> Result<Option<u64>, StoreError> {
        let Some(mut session) = self.session(&handoff.client_id)? else {
            return Ok(None);
        };
        if !session.edge_id.is_empty() || session.epoch != handoff.epoch {
            return Ok(None);
        }
        let key = keys::queue_entry(&handoff.client_id, handoff.seq);
        let Some(entry) = self.txn.get_message::<QueuedMessage>(cf::QUEUES, &key)? else {
            return Ok(None);
        };
        if !movable(&entry) {
            return Ok(None);
        }
        self.txn.delete(cf::QUEUES, key);
        if entry.stage == DeliveryStage::Published as i32 {
            let inflight = keys::packet(&handoff.client_id, entry.packet_id);
            if self.txn.get(cf::INFLIGHT, &inflight)?.as_deref()
                == Some(handoff.seq.to_be_bytes().as_slice())
            {
                self.txn.delete(cf::INFLIGHT, inflight);
            }
        }
        self.unreference(entry.message_id)?;
        session.queue_len = session.queue_len.saturating_sub(1);
        self.save_session(&session);
        Ok(Some(entry.message_id))
    }
}
