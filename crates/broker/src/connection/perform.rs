//! The I/O side of the steps the protocol core returns: routing a publish
//! through the hub and committing what it needs, recording subscriptions,
//! reading and recording a persistent session's store queue, and the
//! session's store writes (awaited, or queued in order and not awaited).

use std::sync::Arc;

use rookery_auth::Access;
use rookery_codec::{
    AckProperties, ByteString, Packet, PacketId, Publish, QoS, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use rookery_store::proto::{self, command_result::Kind as ResultKind};
use rookery_store::writer::now_ms;

use super::publish::{EdgeDeliveries, Outcome, Plan, Reply, receipt_of};
use super::retain_publish::Claim;
use super::run::Live;
use super::session::{End, Session, Step};
use super::subscribe;
use crate::hub::{Hub, Mailbox, PendingEnqueue};
use crate::message::{Delivery, Message};

/// Store queue entries read at a time: a few windows' worth.
const QUEUE_READ: usize = 256;

/// How long after a failed read of its store queue a persistent session
/// reads it again by itself: the notice that led to the read is spent, and
/// the next may be long in coming.
const QUEUE_READ_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A publish whose store write and forwards finished.
#[derive(Debug)]
pub(super) struct Completed {
    packet_id: Option<PacketId>,
    qos: QoS,
    local: Vec<(Mailbox, Delivery)>,
    /// Persistent targets online here: counted in their backlog until this
    /// completion is handled and dropped.
    _enqueuing: PendingEnqueue,
    outcome: Outcome,
    /// The store's receipt of a persistent session's QoS 2 publish; 0 if
    /// none.
    receipt: u64,
}

impl Live {
    /// Performs a step the core returned.
    pub(super) async fn perform(&mut self, step: Step) -> Result<(), End> {
        match step {
            Step::Handled => Ok(()),
            Step::Publish(publish, topic) => self.publish(publish, topic).await,
            Step::Subscribe(subscribe) => self.subscribe(subscribe).await,
            Step::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe).await,
            Step::Release { record, pubcomp } => {
                let pubcomp = match record {
                    Some(record) => {
                        let results = self.write_fenced(vec![record]).await?;
                        let held = matches!(
                            results.first().and_then(|r| r.kind.as_ref()),
                            Some(ResultKind::Acknowledged(ack)) if ack.matched
                        );
                        Session::pubcomp_after_release(pubcomp, held, self.socket.out.is_v5())
                    }
                    None => pubcomp,
                };
                self.socket.out.send(&Packet::PubComp(pubcomp));
                Ok(())
            }
        }
    }

    /// Routes an admitted publish and commits what it needs; a QoS 1/2
    /// publish that waits on the store or other edges is answered when
    /// its completion comes (`complete`).
    async fn publish(&mut self, publish: Publish, topic: ByteString) -> Result<(), End> {
        let hub = self.hub.clone();
        let (qos, packet_id) = (publish.qos, publish.packet_id);
        let v5 = self.socket.out.is_v5();
        // A QoS 1/2 publish is acknowledged only by an edge in touch with the
        // store's quorum: cut off, its route table may miss a subscription
        // made elsewhere, and what it queues may never commit.
        if qos != QoS::AtMostOnce && !hub.store.in_contact().await {
            hub.stats.dropped("store_unreachable");
            let reply = Reply::failed(rookery_codec::ReasonCode::ImplementationSpecificError, v5);
            return self
                .session
                .reply(packet_id, qos, reply, &mut self.socket.out);
        }
        let client_id = self.client_id().clone();
        let message = Arc::new(Message::from_publish(&publish, topic, client_id, now_ms()));
        let retain = match self.claim_retained(&message, qos, v5).await {
            Claim::Unneeded => message.retain,
            Claim::Claimed => false,
            Claim::Refused(reply) => {
                return self
                    .session
                    .reply(packet_id, qos, reply, &mut self.socket.out);
            }
        };
        // The SUBSCRIBEs read before this publish take effect first.
        self.hub.subscribes_settled().await;
        let mut plan = Plan::new(hub.route(&message), qos, packet_id, self.session.persistent);
        // Sessions online on other edges get it now; a QoS 1/2 publisher's
        // acknowledgement waits until each of those edges has it.
        let needs_store = plan.needs_store(retain);
        let forward_now = std::mem::take(&mut plan.forward_now);
        let confirmations = hub.forward(
            &message,
            forward_now,
            qos != QoS::AtMostOnce,
            self.session.connection_id,
            &mut self.paused_on_links,
        );
        if retain {
            hub.retain_locally(&message);
        }
        if let Some(id) = packet_id.filter(|_| qos == QoS::ExactlyOnce) {
            self.session.inbound.hold_qos2(id);
        }
        if !needs_store && confirmations.is_empty() && plan.forward_after_store.is_empty() {
            if plan.unrouted {
                metrics::counter!("rookery_messages_unrouted_total").increment(1);
            }
            if qos != QoS::AtMostOnce && !self.pending.is_empty() {
                // MQTT-4.6.0-6: behind this connection's publishes that wait
                // for the store or a forward (same topic, other routes: a
                // retained one, a subscriber that came or went).
                let done = Completed {
                    packet_id,
                    qos,
                    local: plan.local,
                    _enqueuing: PendingEnqueue::new(Vec::new(), &mut self.paused_on),
                    outcome: Outcome::Done,
                    receipt: 0,
                };
                self.pending.push_back(Box::pin(std::future::ready(done)));
                return Ok(());
            }
            hub.deliver_local(plan.local, &mut self.paused_on);
            let reply = Reply::Ack(rookery_codec::ReasonCode::Success);
            return self
                .session
                .reply(packet_id, qos, reply, &mut self.socket.out);
        }
        if !needs_store && plan.forward_after_store.is_empty() {
            // Only other edges to wait for (a clean session's QoS 1/2 publish
            // to subscribers there): a future much smaller than a commit's,
            // which keeps the allocator out of the cross-edge path.
            let bound = hub.store.write_timeout();
            let local = plan.local;
            let enqueuing = PendingEnqueue::new(Vec::new(), &mut self.paused_on);
            self.pending.push_back(Box::pin(async move {
                let confirmed = all_confirmed(confirmations, bound).await;
                if !confirmed {
                    metrics::counter!("rookery_forward_unconfirmed_publishes_total").increment(1);
                }
                Completed {
                    packet_id,
                    qos,
                    local,
                    _enqueuing: enqueuing,
                    outcome: Outcome::Done.with_forwards(confirmed),
                    receipt: 0,
                }
            }));
            return Ok(());
        }
        let incoming = plan
            .record_qos2
            .map(|id| self.session.records.incoming_qos2(id));
        let commands = hub.store_commands(&message, retain, plan.durable, incoming);
        if qos == QoS::AtMostOnce {
            // The QoS 0 path never waits on the store: the retained copy is
            // written behind it.
            hub.deliver_local(plan.local, &mut self.paused_on);
            self.write_behind(commands, message);
            return Ok(());
        }
        let enqueuing = PendingEnqueue::new(plan.durable_mailboxes, &mut self.paused_on);
        let (after, then) = if plan.forward_after_store.is_empty() {
            (None, None)
        } else {
            let (then, next) = tokio::sync::oneshot::channel();
            (self.forwarded_last.replace(next), Some(then))
        };
        let commit = Commit {
            hub,
            message,
            commands,
            confirmations,
            forward_after_store: plan.forward_after_store,
            after,
            then,
            v5,
            chain: self.write_chain.clone(),
            lane: self.session.connection_id,
        };
        let local = plan.local;
        self.pending.push_back(Box::pin(async move {
            let (outcome, receipt) = commit.run().await;
            Completed {
                packet_id,
                qos,
                local,
                _enqueuing: enqueuing,
                outcome,
                receipt,
            }
        }));
        Ok(())
    }

    /// Answers a publish whose store write and forwards finished.
    pub(super) fn complete(&mut self, done: Completed) -> Result<(), End> {
        if done.outcome == Outcome::Unknown {
            metrics::counter!("rookery_publishes_unconfirmed_total").increment(1);
        }
        if matches!(done.outcome, Outcome::Unknown | Outcome::Refused(_)) {
            // Answered now (the client sends it again, or never): what it
            // publishes next may be written.
            self.write_chain.mend();
        }
        if done.outcome.delivers(done.receipt) {
            let mut local = done.local;
            for (_, delivery) in &mut local {
                delivery.receipt = done.receipt;
            }
            self.hub.deliver_local(local, &mut self.paused_on);
        }
        let reply = Reply::to(done.outcome, done.qos, self.socket.out.is_v5());
        self.session
            .reply(done.packet_id, done.qos, reply, &mut self.socket.out)
    }

    /// Records the accepted subscriptions (in effect here at once, undone
    /// if the store refuses), answers SUBACK, then sends the retained
    /// messages they match.
    async fn subscribe(&mut self, packet: Subscribe) -> Result<(), End> {
        let hub = self.hub.clone();
        let v5 = self.socket.out.is_v5();
        let authorizer = &self.session.authorizer;
        let may_subscribe = |filter: &str| authorizer.may(filter, Access::Subscribe);
        let mut granted = match subscribe::decide(&packet, &hub.config.limits, v5, may_subscribe) {
            Ok(granted) => granted,
            Err(violation) => {
                return Err(super::session::violated(violation, &mut self.socket.out));
            }
        };
        self.limit_subscriptions(&mut granted);
        let mut existed = Vec::new();
        if !granted.accepted.is_empty() {
            let client = self.client_id().clone();
            // In effect at once: a message published by another client while
            // the store commits this SUBSCRIBE is delivered (clients expect
            // what Mosquitto does).
            let replaced: Vec<_> = granted
                .accepted
                .iter()
                .map(|(filter, entry)| hub.subscribe(&client, filter, *entry))
                .collect();
            // In effect: publishes need not wait for it any longer.
            self.arriving = None;
            let command = self.session.records.subscribe(&granted.accepted);
            match hub.store.write(vec![command]).await {
                Ok(results) => match results.into_iter().next().and_then(|r| r.kind) {
                    Some(ResultKind::Subscribed(subscribed)) => existed = subscribed.existed,
                    Some(ResultKind::Fenced(_)) => return Err(self.taken_over()),
                    other => {
                        tracing::warn!(?other, "unexpected store answer to Subscribe");
                        return Err(End::ServerClosed);
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, client_id = %client, "subscribe failed");
                    for ((filter, _), previous) in granted.accepted.iter().zip(replaced) {
                        match previous {
                            Some(previous) => hub.subscribe(&client, filter, previous),
                            None => hub.unsubscribe(&client, filter),
                        };
                    }
                    granted.store_failed();
                }
            }
        }
        self.socket.out.send(&Packet::SubAck(SubAck {
            packet_id: packet.packet_id,
            reason_codes: granted.reason_codes,
            properties: AckProperties::default(),
        }));
        self.send_retained(&granted.accepted, &existed);
        self.send_ready();
        Ok(())
    }

    /// Drops subscriptions in the store, then here, and answers UNSUBACK.
    async fn unsubscribe(&mut self, packet: Unsubscribe) -> Result<(), End> {
        let hub = self.hub.clone();
        let command = self.session.records.unsubscribe(&packet.filters);
        let existed = match hub.store.write(vec![command]).await {
            Ok(results) => match results.into_iter().next().and_then(|r| r.kind) {
                Some(ResultKind::Unsubscribed(unsubscribed)) => unsubscribed.existed,
                Some(ResultKind::Fenced(_)) => return Err(self.taken_over()),
                other => {
                    tracing::warn!(?other, "unexpected store answer to Unsubscribe");
                    return Err(End::ServerClosed);
                }
            },
            Err(error) => {
                tracing::warn!(%error, client_id = %self.client_id(), "unsubscribe failed");
                return Err(End::ServerClosed);
            }
        };
        self.retained.forget(&packet.filters);
        let client = self.client_id().clone();
        let reason_codes = subscribe::unsubscribe_codes(&packet.filters, &existed, |filter| {
            hub.unsubscribe(&client, filter).is_some()
        });
        self.socket.out.send(&Packet::UnsubAck(UnsubAck {
            packet_id: packet.packet_id,
            reason_codes,
            properties: AckProperties::default(),
        }));
        Ok(())
    }

    /// Sends what the window allows from the in-memory queue.
    pub(super) fn send_ready(&mut self) {
        self.session
            .send_ready(now_ms(), &mut self.socket.out, &self.hub.stats);
    }

    /// Reads the store queue of a persistent session (`queued`: the store
    /// says it has more) and sends new entries once their packet identifiers
    /// are recorded (so that a resend after any failure reuses them,
    /// MQTT-4.4.0-1).
    pub(super) async fn send_stored(&mut self, queued: bool) -> Result<(), End> {
        let outgoing = &mut self.session.outgoing;
        if !self.session.persistent && !outgoing.has_stored() {
            return Ok(());
        }
        if self.session.persistent {
            if queued {
                outgoing.store_has_news();
            }
            if let Some(after) = outgoing.store_read_from() {
                let client_id = self.session.client_id().clone();
                match self
                    .hub
                    .store
                    .queue_after(&client_id, after, QUEUE_READ)
                    .await
                {
                    Ok(read) if read.session_epoch > self.session.records.epoch() => {
                        // A newer CONNECT holds the session, and the notice
                        // of that takeover did not reach this edge (it was
                        // between two store nodes): this connection's writes
                        // would be fenced, and the store notifies the new
                        // holder's edge, not this one.
                        tracing::info!(
                            %client_id,
                            epoch = self.session.records.epoch(),
                            newer = read.session_epoch,
                            "the session was taken over; closing this connection"
                        );
                        return Err(self.taken_over());
                    }
                    Ok(read) => {
                        let complete = read.entries.len() < QUEUE_READ;
                        self.session.outgoing.merge_stored(read.entries, complete);
                    }
                    Err(error) => {
                        tracing::warn!(%error, %client_id, "reading the session queue failed");
                        let own = self.own_mailbox.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(QUEUE_READ_RETRY).await;
                            own.notify_queued();
                        });
                        return Ok(());
                    }
                }
            }
        }
        let batch = self.session.outgoing.next_stored(now_ms());
        let (commands, exactly_once) = self.session.stored_records(&batch);
        // Acknowledgements first: a packet identifier they free may be
        // reused by the records below.
        self.submit_acks();
        if !commands.is_empty() {
            if exactly_once {
                // A QoS 2 message goes out only with its packet identifier
                // committed: sent again after a failure under another one, a
                // receiver could take it twice.
                self.write_fenced(commands).await?;
            } else {
                // QoS 1 may arrive twice anyway; the record only has to
                // precede this session's later writes, which submission
                // order guarantees.
                self.submit_detached(commands);
            }
        }
        self.session
            .write_stored(batch, &mut self.socket.out, &self.hub.stats);
        Ok(())
    }

    /// What the acknowledgements of one read lead to: their store writes,
    /// PUBRELs once their PUBRECs are recorded, then more messages.
    pub(super) async fn settle_acks(&mut self) -> Result<(), End> {
        self.submit_acks();
        let receipts = self.session.take_receipts();
        if !receipts.is_empty() {
            self.write_fenced(receipts).await?;
            self.session.send_releases(&mut self.socket.out);
        }
        if self.session.take_refill_due() {
            // An acknowledgement freed a slot: send more.
            self.send_ready();
            if self.session.outgoing.has_stored_waiting() {
                self.send_stored(false).await?;
            }
        }
        Ok(())
    }

    /// The session ends: what the client acknowledged is recorded, PUBRECs
    /// included (their PUBRELs are not sent; the store resends them).
    pub(super) fn submit_last_records(&mut self) {
        self.submit_acks();
        let receipts = self.session.take_receipts();
        if !receipts.is_empty() {
            self.submit_detached(receipts);
        }
    }

    /// Queues the acknowledgements gathered so far to the store.
    fn submit_acks(&mut self) {
        let acks = self.session.take_acks();
        if !acks.is_empty() {
            self.submit_detached(acks);
        }
    }

    /// Queues a write of this session's records that nothing waits for; its
    /// place in the store's order is taken now. One lost with a dying store
    /// leader is sent again to the next (`Store::submit_records`). If it
    /// fails all the same, the session ends (as when an awaited write
    /// fails): carrying on would reuse packet identifiers the store still
    /// holds.
    fn submit_detached(&mut self, commands: Vec<proto::Command>) {
        let write = self.hub.store.submit_records(commands);
        let client_id = self.client_id().clone();
        let own = self.own_mailbox.clone();
        let outcome = self.detached_records.start();
        tokio::spawn(async move {
            let reason = match write.await {
                Ok(results) if !fenced(&results) => return,
                Ok(_) => rookery_codec::ReasonCode::SessionTakenOver,
                Err(error) => {
                    outcome.failed();
                    tracing::warn!(%error, %client_id, "session write failed");
                    rookery_codec::ReasonCode::ImplementationSpecificError
                }
            };
            own.close(reason);
        });
    }

    /// A store write of this session's records, awaited (sent again to the
    /// next leader if the leader dies with it), and its results; a fenced
    /// write means another connection owns the session now.
    pub(super) async fn write_fenced(
        &mut self,
        commands: Vec<proto::Command>,
    ) -> Result<Vec<proto::CommandResult>, End> {
        match self.hub.store.submit_records(commands).await {
            Ok(results) if fenced(&results) => Err(self.taken_over()),
            Ok(results) => Ok(results),
            Err(error) => {
                self.detached_records.failed();
                tracing::warn!(%error, client_id = %self.client_id(), "session write failed");
                Err(End::ServerClosed)
            }
        }
    }

    /// Another connection holds the session now (MQTT-3.1.4-3): a 5.0 client
    /// is told with DISCONNECT 0x8E (Session taken over) before the close.
    fn taken_over(&mut self) -> End {
        self.socket
            .out
            .disconnect(rookery_codec::ReasonCode::SessionTakenOver);
        End::TakenOver
    }
}

/// Whether the store refused a write because another connection holds the
/// session now.
fn fenced(results: &[proto::CommandResult]) -> bool {
    results
        .iter()
        .any(|result| matches!(result.kind, Some(ResultKind::Fenced(_))))
}

/// What a QoS 1/2 publish must finish before it is acknowledged: its store
/// write and its forwards, each within the store's write bound.
struct Commit {
    hub: Arc<Hub>,
    message: Arc<Message>,
    commands: Vec<proto::Command>,
    confirmations: Vec<tokio::sync::oneshot::Receiver<bool>>,
    forward_after_store: Vec<EdgeDeliveries>,
    /// With `forward_after_store`: the previous such publish of this
    /// connection says whether it went out (or never will); this one
    /// forwards only after it, and only if it did (MQTT-4.6.0-6).
    after: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// Tells the next one.
    then: Option<tokio::sync::oneshot::Sender<bool>>,
    v5: bool,
    /// The connection's publishes, in order or not at all.
    chain: Arc<rookery_cluster::WriteChain>,
    /// The forwarding lane of the connection's publishes.
    lane: u64,
}

impl Commit {
    /// The outcome, and the store's receipt of a persistent session's QoS 2
    /// publish (0 if none).
    async fn run(self) -> (Outcome, u64) {
        let Commit {
            hub,
            message,
            commands,
            confirmations,
            forward_after_store,
            after,
            then,
            v5,
            chain,
            lane,
        } = self;
        let forwarded_any = !confirmations.is_empty();
        let written = async {
            if commands.is_empty() {
                Ok(Vec::new())
            } else {
                hub.store.write_chained(commands, &chain).await
            }
        };
        let bound = hub.store.write_timeout();
        let (written, mut confirmed) =
            futures::future::join(written, all_confirmed(confirmations, bound)).await;
        let (outcome, receipt) = match written {
            Ok(results) => {
                hub.count_store_drops(&results);
                // A 3.x or replacing publisher's retained copy refused at a
                // cap: the message itself is delivered all the same.
                hub.retained_outcome(&message, &results);
                (Outcome::of_results(&results), receipt_of(&results))
            }
            Err(error) => (
                Outcome::of_failed_write(error.may_have_committed(), forwarded_any),
                0,
            ),
        };
        if outcome == Outcome::Duplicate && receipt != 0 {
            // The attempt the store took first may have failed before it
            // reached the other edges; they drop a receipt they have had.
            metrics::counter!("rookery_qos2_retries_delivered_again_total").increment(1);
        }
        let earlier_went_out = match after {
            Some(earlier) => earlier.await.unwrap_or(false),
            None => true,
        };
        let outcome = outcome.behind(receipt, earlier_went_out);
        // Whether the client sends this one again: then it goes out after
        // whatever this connection forwards meanwhile.
        let sent_again = outcome.sent_again(v5);
        let mut later = Vec::new();
        if outcome.delivers(receipt) && !forward_after_store.is_empty() {
            let mut forward_after_store = forward_after_store;
            for (_, deliveries) in &mut forward_after_store {
                for delivery in deliveries {
                    delivery.receipt = receipt;
                }
            }
            // Not paused for: the publisher's acknowledgement waits for
            // these edges anyway.
            later = hub.forward(&message, forward_after_store, true, lane, &mut Vec::new());
        }
        // Handed to the forwarding links (which keep their order) before the
        // next one is let go.
        if let Some(then) = then {
            let _ = then.send(!sent_again);
        }
        confirmed &= all_confirmed(later, bound).await;
        if outcome == Outcome::Done && !confirmed {
            metrics::counter!("rookery_forward_unconfirmed_publishes_total").increment(1);
        }
        (outcome.with_forwards(confirmed), receipt)
    }
}

/// Whether every edge confirmed having the publish within `bound`.
async fn all_confirmed(
    mut confirmations: Vec<tokio::sync::oneshot::Receiver<bool>>,
    bound: std::time::Duration,
) -> bool {
    if confirmations.len() <= 1 {
        // The usual case (one other edge): no list of futures to allocate.
        let Some(only) = confirmations.pop() else {
            return true;
        };
        return matches!(tokio::time::timeout(bound, only).await, Ok(Ok(true)));
    }
    let all = futures::future::join_all(confirmations);
    match tokio::time::timeout(bound, all).await {
        Ok(confirmed) => confirmed.into_iter().all(|c| c == Ok(true)),
        Err(_) => false,
    }
}
