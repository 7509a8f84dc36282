//! The I/O loop of a connected session: it waits on the socket, the
//! session's mailbox, the publishes waiting on the store and one timer, and
//! performs what the protocol core asks for. Backpressure lives here: a
//! publisher whose messages filled other sessions is not read until they
//! drain, a client over its publish rate is not read until the rate allows,
//! and deliveries held back for a full outbox are sent after the flush.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use rookery_codec::ReasonCode;
use tokio::time::Instant;

use super::lazy::Lazy;
use super::limits::PublishRate;
use super::perform::Completed;
use super::retain_publish::{Behind, StoreHold};
use super::retained_feed::RetainedFeed;
use super::session::{End, Rules, Session, Step};
use super::socket::Socket;
use super::{decode_error_label, disconnect_reason, protocol_error};
use crate::hub::{ArrivalTicket, ClientId, Hub, Mailbox, MailboxReceiver, ToConnection};
use crate::stats::{ClientGauge, OutgoingReport};
use crate::transport::ConnectionPermit;

/// Between two attempts to record how a connection ended.
const DISCONNECT_RECORD_RETRY: Duration = Duration::from_millis(500);

/// The timer's deadline while nothing is due: a connection without keep
/// alive is never timed out.
const NOTHING_DUE: Duration = Duration::from_secs(86_400 * 365);

/// A publish's store write and forwards, resolving to what they did.
pub(super) type Completion = Pin<Box<dyn Future<Output = Completed> + Send>>;

/// A connected session with everything it waits on.
pub(super) struct Live {
    pub(super) hub: Arc<Hub>,
    pub(super) socket: Socket,
    pub(super) session: Session,
    pub(super) mailbox: MailboxReceiver,
    /// This connection's own way in, to end it from a detached store write.
    pub(super) own_mailbox: Mailbox,
    /// Publishes waiting on the store, answered in order.
    pub(super) pending: Lazy<FuturesOrdered<Completion>>,
    /// Whether the last publish forwarded only after its store write (a
    /// persistent session's QoS 2) went out, or never will: the next such
    /// publish waits for it before it forwards (MQTT-4.6.0-6).
    pub(super) forwarded_last: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// This connection's publishes' store writes: none is sent after an
    /// earlier one failed until that failure is answered (MQTT-4.6.0-6).
    pub(super) write_chain: Arc<rookery_cluster::WriteChain>,
    /// Whether a write of this session's records failed: the store may
    /// then hold as queued a message this connection sent (told with its
    /// Disconnect, once the writes not waited for settled).
    pub(super) detached_records: super::records::DetachedRecords,
    /// Backpressure: sessions this client's publishes filled; nothing more
    /// is read from it until they drain or `paused_until` passes.
    pub(super) paused_on: Vec<Mailbox>,
    /// The same for links to other edges its publishes filled.
    pub(super) paused_on_links: Vec<rookery_cluster::Congested>,
    paused_until: Option<Instant>,
    /// `messages_rate` and `bytes_rate`, when either is set.
    /// Boxed: most brokers set no rate, and every connection pays for
    /// this field's size.
    rate: Option<Box<PublishRate>>,
    /// Store writes of QoS 0 retained publishes, not waited for.
    pub(super) behind: Lazy<FuturesUnordered<Behind>>,
    /// Backpressure: the store's writes held this client at the last turn
    /// (see `store_hold`).
    pub(super) store_held: bool,
    /// Retained messages still to send after SUBACK, a page at a time.
    pub(super) retained: RetainedFeed,
    /// Held from the read that brought a SUBSCRIBE until its filters are
    /// in the index, or until this connection waits on anything: publishes
    /// matched meanwhile wait for it (see `hub::arrivals`).
    pub(super) arriving: Option<ArrivalTicket>,
    /// This client's place in `rookery_clients_connected`; given back when
    /// the connection ends.
    client_gauge: Option<ClientGauge>,
    /// What this connection last added to the in-flight and queued gauges.
    outgoing_report: OutgoingReport,
    /// The connection's place in the connection limits, given back when
    /// `Live` is dropped.
    _permit: ConnectionPermit,
}

/// What woke the loop.
enum Input {
    Read(std::io::Result<usize>),
    Mail(Option<ToConnection>),
    Completed(Completed),
    KeepAliveExpired,
    /// The timer fired for nothing that is due now.
    Timer,
    /// The sessions this publisher was paused for drained, or the pause ran
    /// out (`drained` false).
    Resumed {
        drained: bool,
    },
    /// The client is within its publish rate again.
    Unthrottled,
    /// Deliveries were held back for room in the outbox, which the last
    /// flush emptied.
    Refill,
    /// A store write not waited for finished, or the store's write budget
    /// has room again: the client may be read again.
    StoreRoom,
    /// The session's queue has room for the next page of retained messages.
    RetainedPage,
}

impl Live {
    /// A session accepted on `socket`, fed by `mailbox`. Boxed: an idle
    /// connection's task holds this and little else, and a `Live` taken by
    /// value into an async fn would be kept twice in its future (the
    /// argument and the moved local).
    pub fn new(
        hub: Arc<Hub>,
        socket: Socket,
        session: Session,
        mailbox: MailboxReceiver,
        own_mailbox: Mailbox,
        client_gauge: ClientGauge,
        permit: ConnectionPermit,
    ) -> Box<Self> {
        Box::new(Live {
            client_gauge: Some(client_gauge),
            outgoing_report: OutgoingReport::default(),
            socket,
            session,
            mailbox,
            own_mailbox,
            pending: Lazy::default(),
            forwarded_last: None,
            write_chain: rookery_cluster::WriteChain::new(),
            detached_records: Default::default(),
            paused_on: Vec::new(),
            paused_on_links: Vec::new(),
            paused_until: None,
            arriving: None,
            behind: Lazy::default(),
            store_held: false,
            retained: RetainedFeed::default(),
            rate: PublishRate::new(&hub.config.limits).map(Box::new),
            _permit: permit,
            hub,
        })
    }

    /// The session's client id.
    pub fn client_id(&self) -> &ClientId {
        self.session.client_id()
    }

    /// What the core reads of the broker.
    pub(super) fn rules(hub: &Hub) -> Rules<'_> {
        Rules {
            limits: &hub.config.limits,
            stats: &hub.stats,
        }
    }

    /// Runs the session to its end, records the end and closes the socket.
    pub async fn serve(mut self: Box<Self>) {
        let end = self.run().await;
        let _ = self.socket.flush(&self.hub.stats).await;
        let client_closed = matches!(end, End::ClientDisconnected { .. } | End::ConnectionLost);
        Box::pin(self.finish(end)).await;
        self.outgoing_report.clear(&self.hub.stats);
        if let Some(gauge) = self.client_gauge.take() {
            self.hub.stats.disconnected(gauge);
        }
        if client_closed {
            self.socket.shutdown().await;
        } else {
            Box::pin(self.socket.linger()).await;
        }
        tracing::debug!(peer = %self.socket.peer, client_id = %self.client_id(), "client disconnected");
    }

    // Over 80 lines: one select over every input and the bookkeeping that
    // must happen around it each turn (timer, pause, report, flush); split,
    // the order of those steps would be spread over several functions.
    async fn run(&mut self) -> End {
        // Read the queue once more: messages queued between the store's
        // Connect and this session's registration were notified to nobody.
        if let Err(end) = Box::pin(self.send_stored(true)).await {
            return end;
        }
        // A client need not wait for CONNACK (section 3.1.4): what it sent
        // behind CONNECT may be read already, and no read will announce it.
        if let Err(end) = Box::pin(self.handle_packets()).await {
            let _ = self.socket.flush(&self.hub.stats).await;
            return end;
        }
        if Box::pin(self.socket.flush(&self.hub.stats)).await.is_err() {
            return End::ConnectionLost;
        }
        // MQTT-3.1.2-22: 1.5 times the keep alive without a packet.
        let keep_alive = (self.session.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(self.session.keep_alive) * 1500));
        let mut deadline = Instant::now() + keep_alive.unwrap_or(NOTHING_DUE);
        let mut last_read = 0;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            self.socket.prepare_read(last_read);
            let paused = self.is_paused();
            if paused && self.paused_until.is_none() {
                let pause = Duration::from_millis(self.hub.config.limits.publisher_pause_ms);
                self.paused_until = Some(Instant::now().checked_add(pause).unwrap_or(deadline));
                metrics::counter!("rookery_publisher_pauses_total").increment(1);
            }
            let (due, held_until) = self.due(paused, deadline);
            // Left set until a refill runs: another input may come first.
            let refill = self.socket.out.is_held_back();
            // Moved only when something is due earlier, or after it fired:
            // moving it on every read would take the timer driver's lock per
            // packet.
            if timer.is_elapsed() || due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let StoreHold {
                held,
                released,
                budget_spent,
            } = self.store_hold();
            let retained_due = self.retained_due();
            let input = if released {
                // The packets the hold left in the buffer are handled now,
                // not when the client sends more.
                Input::StoreRoom
            } else {
                tokio::select! {
                read = self.socket.read(), if !paused && !held && held_until.is_none() => Input::Read(read),
                mail = self.mailbox.recv() => Input::Mail(mail),
                Some(done) = self.pending.next(), if !self.pending.is_empty() => Input::Completed(done),
                () = &mut timer => if Instant::now() < due {
                    // Set for something earlier that is no longer due.
                    Input::Timer
                } else if held_until.is_some_and(|until| Instant::now() >= until) {
                    Input::Unthrottled
                } else if paused {
                    Input::Resumed { drained: false }
                } else if held {
                    // Not read while the store holds it: its silence says
                    // nothing about keep alive.
                    Input::StoreRoom
                } else {
                    Input::KeepAliveExpired
                },
                () = room_in(&self.paused_on, &self.paused_on_links), if paused => Input::Resumed { drained: true },
                () = std::future::ready(()), if refill => Input::Refill,
                Some(()) = self.behind.next(), if !self.behind.is_empty() => Input::StoreRoom,
                () = self.hub.store.budget().room(), if budget_spent => Input::StoreRoom,
                () = std::future::ready(()), if retained_due => Input::RetainedPage,
                }
            };
            let heard_from = matches!(input, Input::Read(Ok(n)) if n > 0)
                || matches!(
                    input,
                    Input::Resumed { .. } | Input::Unthrottled | Input::StoreRoom
                );
            if heard_from && let Some(keep_alive) = keep_alive {
                deadline = Instant::now() + keep_alive;
            }
            if let Input::Read(Ok(n)) = input {
                last_read = n;
            }
            let outcome = self.on_input(input).await;
            // Take whatever else is already waiting before writing, so that a
            // burst goes out in one write.
            let outcome = match outcome {
                Ok(()) => self.drain_mailbox().await,
                Err(end) => Err(end),
            };
            // Only a persistent session has a store queue to count.
            let stored = if self.session.persistent {
                self.session.outgoing.stored_backlog()
            } else {
                None
            };
            self.mailbox
                .report_taken(self.session.outgoing.memory_len(), stored);
            self.outgoing_report.update(
                &self.hub.stats,
                self.session.outgoing.inflight_len(),
                self.session.outgoing.queued_len(),
            );
            self.mailbox
                .report_in_flight(self.session.outgoing.inflight_len());
            // Boxed: kept inline, the write and its timer would enlarge
            // every idle connection's task.
            let flushed = Box::pin(self.socket.flush(&self.hub.stats)).await;
            match outcome {
                Err(end) => return end,
                Ok(()) if flushed.is_err() => return End::ConnectionLost,
                Ok(()) => {}
            }
        }
    }

    /// What the loop's one timer is for, and until when the client is held
    /// for its publish rate. A paused or held client is not read, so its
    /// silence says nothing about keep alive: the end of the pause or hold
    /// is what is due then, not `deadline`.
    fn due(&mut self, paused: bool, deadline: Instant) -> (Instant, Option<Instant>) {
        let held_until = self.rate.as_deref_mut().and_then(PublishRate::held_until);
        let due = match self.paused_until {
            Some(resume_at) if paused => resume_at,
            _ => deadline,
        };
        let due = match held_until {
            Some(until) if paused => due.min(until),
            Some(until) => until,
            None => due,
        };
        (due, held_until)
    }

    /// Handles what woke the loop.
    async fn on_input(&mut self, input: Input) -> Result<(), End> {
        match input {
            Input::Read(Ok(0)) | Input::Read(Err(_)) => Err(End::ConnectionLost),
            Input::Read(Ok(n)) => {
                self.hub.stats.received(n);
                if let Some(rate) = self.rate.as_mut() {
                    rate.read(n, self.session.client_id());
                }
                self.order_after_earlier_reads().await;
                Box::pin(self.handle_packets()).await
            }
            Input::Mail(Some(mail)) => self.handle_mail(mail).await,
            Input::Mail(None) => Err(End::Shutdown),
            Input::Completed(done) => {
                // Group commit completes many of this client's publishes at
                // once: acknowledge every one that is ready, so that they
                // leave in one write rather than one each.
                let mut outcome = self.complete(done);
                while outcome.is_ok() {
                    match self.pending.next().now_or_never() {
                        Some(Some(done)) => outcome = self.complete(done),
                        _ => break,
                    }
                }
                outcome
            }
            Input::Timer => Ok(()),
            Input::KeepAliveExpired => {
                metrics::counter!("rookery_keep_alive_timeouts_total").increment(1);
                self.socket.out.disconnect(ReasonCode::KeepAliveTimeout);
                Err(End::ServerClosed)
            }
            Input::Resumed { drained } => {
                self.resume(drained);
                // Packets already read wait in the buffer.
                Box::pin(self.handle_packets()).await
            }
            Input::Unthrottled => Box::pin(self.handle_packets()).await,
            Input::Refill => {
                self.socket.out.retry_held_back();
                self.send_ready();
                Ok(())
            }
            Input::StoreRoom => {
                if self.is_paused() || self.held_by_store() {
                    return Ok(());
                }
                // Packets already read wait in the buffer.
                Box::pin(self.handle_packets()).await
            }
            Input::RetainedPage => Box::pin(self.next_retained_page()).await,
        }
    }

    /// Clients count on a subscription routing as soon as the server has
    /// read the SUBSCRIBE, even for a PUBLISH that another client sends an
    /// instant later (Mosquitto, one thread, does that; MQTT orders nothing
    /// between connections). A SUBSCRIBE just read holds a ticket that
    /// publishes matched meanwhile wait for (`hub::arrivals`). A PUBLISH just
    /// read lets the connections woken with it read first: the runtime
    /// polls the last task woken first, so without this yield a publisher
    /// woken together with a subscriber is matched before the subscriber
    /// has read anything.
    async fn order_after_earlier_reads(&mut self) {
        let buffered = self.socket.buffered();
        if buffered.subscribe() && self.arriving.is_none() {
            self.arriving = Some(self.hub.subscribe_arriving());
        }
        if buffered.publish() {
            tokio::task::yield_now().await;
        }
    }

    /// A pause ended: sessions that did not drain within it are stalled.
    fn resume(&mut self, drained: bool) {
        let client_id = self.session.client_id();
        for mailbox in self.paused_on.drain(..) {
            // Only a pause that ran out stalls a session: one that drained
            // may look full again already (its backlog moves from mailbox to
            // queue in two steps).
            // Not drained within the pause: its overflow is dropped from now
            // on instead of holding publishers back.
            if !drained && mailbox.stall_if_full() {
                let (mailbox_len, taken, stored) = mailbox.backlog_parts();
                tracing::debug!(%client_id, mailbox_len, taken, stored, "a session did not drain within the publisher pause");
            }
        }
        for link in self.paused_on_links.drain(..) {
            if !drained && link.is_full() {
                // The other edge is not taking what is sent: beyond the
                // link's cap publishes are refused or dropped (counted in
                // rookery_forward_queue_full_total) instead of holding
                // publishers back.
                link.stall();
                tracing::debug!(%client_id, "a link to another edge did not drain within the publisher pause");
            }
        }
        self.paused_until = None;
    }

    async fn drain_mailbox(&mut self) -> Result<(), End> {
        for _ in 0..1024 {
            match self.mailbox.try_recv() {
                Some(mail) => self.handle_mail(mail).await?,
                None => break,
            }
        }
        Ok(())
    }

    async fn handle_mail(&mut self, mail: ToConnection) -> Result<(), End> {
        match mail {
            ToConnection::Deliver(delivery) => {
                if !self.session.outgoing.push(delivery) {
                    self.hub.stats.dropped("queue_full");
                }
                self.send_ready();
                Ok(())
            }
            ToConnection::Queued => Box::pin(self.send_stored(true)).await,
            ToConnection::Close(
                reason @ (ReasonCode::ServerShuttingDown | ReasonCode::UseAnotherServer),
            ) => {
                // The edge drains: the publishes read so far are answered
                // first, so that the client need not send them again. One
                // whose outcome closes the connection has said why already.
                self.settle_pending().await?;
                match (reason, &self.hub.config.server_reference) {
                    (ReasonCode::UseAnotherServer, Some(server)) => {
                        self.socket.out.disconnect_to(reason, server);
                    }
                    _ => self.socket.out.disconnect(ReasonCode::ServerShuttingDown),
                }
                Err(End::Shutdown)
            }
            ToConnection::Released => {
                // The store counts the client as gone (its will handed out,
                // its expiry started), so it must connect again to own its
                // session; nothing is recorded for this connection.
                self.socket
                    .out
                    .disconnect(ReasonCode::ImplementationSpecificError);
                Err(End::Released)
            }
            ToConnection::Close(reason) => {
                self.socket.out.disconnect(reason);
                Err(match reason {
                    ReasonCode::SessionTakenOver => End::TakenOver,
                    _ => End::ServerClosed,
                })
            }
        }
    }

    /// Decodes and handles every whole packet read, then settles what their
    /// acknowledgements lead to.
    async fn handle_packets(&mut self) -> Result<(), End> {
        let handled = self.decode_and_handle().await;
        self.arriving = None;
        if handled.is_err() {
            // Acknowledged by the client before it went: not sent again.
            self.submit_last_records();
            return handled;
        }
        self.settle_acks().await
    }

    async fn decode_and_handle(&mut self) -> Result<(), End> {
        loop {
            if self.is_paused()
                || self
                    .rate
                    .as_deref_mut()
                    .is_some_and(PublishRate::messages_held)
            {
                // Paused, or over the message rate: the rest stays in the
                // buffer.
                break;
            }
            let max_packet_size = self.hub.config.limits.max_packet_size;
            let packet = match self.socket.decode(max_packet_size) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => {
                    protocol_error(decode_error_label(&error));
                    tracing::debug!(client_id = %self.client_id(), peer = %self.socket.peer, %error, "malformed packet");
                    self.socket.out.disconnect(disconnect_reason(&error));
                    return Err(End::ServerClosed);
                }
            };
            let hub = self.hub.clone();
            let publish = matches!(packet, rookery_codec::Packet::Publish(_));
            let step = self.session.handle(
                packet,
                Live::rules(&hub),
                self.pending.len(),
                &mut self.socket.out,
            )?;
            if !matches!(step, Step::Handled | Step::Subscribe(_)) {
                // It may wait (on the store, on other SUBSCRIBEs): publishes
                // elsewhere must not wait on that.
                self.arriving = None;
            }
            self.perform(step).await?;
            if publish && let Some(rate) = self.rate.as_mut() {
                rate.published(self.session.client_id());
            }
            if self.is_paused() || self.held_by_store() {
                // Backpressure: the rest stays in the buffer.
                break;
            }
        }
        Ok(())
    }

    /// Whether this client is not to be read: its publishes filled other
    /// sessions. Never for its own session, which only its own
    /// acknowledgements (behind the publishes) can drain.
    fn is_paused(&mut self) -> bool {
        let own = self.session.connection_id;
        self.paused_on
            .retain(|mailbox| mailbox.connection_id != own);
        !self.paused_on.is_empty() || !self.paused_on_links.is_empty()
    }

    /// Answers every publish waiting on the store or on other edges (each
    /// bounded by the store's write timeout); an answer that ends the
    /// connection ends it.
    async fn settle_pending(&mut self) -> Result<(), End> {
        while let Some(done) = self.pending.next().await {
            self.complete(done)?;
        }
        Ok(())
    }

    /// Records how the connection ended: in the store (will, expiry) and in
    /// the hub's registry.
    async fn finish(&mut self, end: End) {
        // Acknowledged by the client: not to be sent again.
        self.submit_last_records();
        self.finish_behind();
        let limits = &self.hub.config.limits;
        let (publish_will, expiry_s) = match end {
            // The store knows already: nothing to record there.
            End::TakenOver | End::Released => (None, self.session.expiry_s),
            End::ClientDisconnected { will, expiry_s } => {
                (Some(will), expiry_s.unwrap_or(self.session.expiry_s))
            }
            // Closed by the server, a drain included (MQTT-3.1.2-8: the
            // will is published unless the client said DISCONNECT 0x00), or
            // lost.
            End::ServerClosed | End::ConnectionLost | End::Shutdown => {
                (Some(true), self.session.expiry_s)
            }
        };
        let expiry_s = expiry_s.min(limits.max_session_expiry_s);
        let persistent = expiry_s > 0;
        self.hub
            .detach(self.client_id(), self.session.connection_id, persistent);
        if !persistent {
            let shared = self.take_shared();
            self.hub.redistribute(shared);
        }
        let Some(publish_will) = publish_will else {
            return;
        };
        if !publish_will {
            // Should a takeover reach the store before this record, the
            // store hands the will to this edge, which discards it.
            self.hub
                .normal_ends
                .record(self.client_id(), self.session.records.epoch());
        }
        // Each write ends within a few write timeouts (`submit_records`).
        let records_lost = self
            .detached_records
            .lost_when_settled(3 * crate::broker::LEASE)
            .await;
        let command = self
            .session
            .records
            .disconnect(expiry_s, publish_will, records_lost);
        match self.hub.store.write(vec![command.clone()]).await {
            Ok(results) => disconnect_recorded(&self.hub, self.client_id(), &results),
            Err(error) => {
                tracing::info!(%error, client_id = %self.client_id(), "recording a disconnect failed; retrying");
                // Retried behind the connection, which closes now.
                let hub = self.hub.clone();
                let client_id = self.client_id().clone();
                tokio::spawn(async move {
                    match record_disconnect(&hub, &client_id, command).await {
                        Ok(results) => disconnect_recorded(&hub, &client_id, &results),
                        Err(error) => {
                            tracing::warn!(%error, %client_id, "recording a disconnect failed")
                        }
                    }
                });
            }
        }
    }

    /// The shared-subscription messages this session will not acknowledge:
    /// in its queue, in flight, or still in its mailbox.
    fn take_shared(&mut self) -> Vec<crate::message::Delivery> {
        let mut taken = self.session.outgoing.take_shared();
        while let Some(next) = self.mailbox.try_recv() {
            if let ToConnection::Deliver(delivery) = next
                && delivery.shared_group.is_some()
            {
                taken.push(delivery);
            }
        }
        taken
    }
}

/// Writes how the connection ended, again and again while the store
/// cannot be reached (an election, this edge cut off for a while):
/// until it is written the store counts the connection as live, so a
/// client's normal DISCONNECT would still publish its will once this
/// edge's lease lapsed or the edge died (MQTT-3.1.2-10). The record is
/// fenced by the session's epoch, so a late one cannot touch a newer
/// connection's session. Gives up after a few leases: by then the store
/// has taken the session offline itself.
async fn record_disconnect(
    hub: &Hub,
    client_id: &ClientId,
    command: rookery_store::proto::Command,
) -> Result<Vec<rookery_store::proto::CommandResult>, crate::store::StoreUnavailable> {
    let give_up = Instant::now() + 3 * crate::broker::LEASE;
    loop {
        tokio::time::sleep(DISCONNECT_RECORD_RETRY).await;
        metrics::counter!("rookery_disconnect_record_retries_total").increment(1);
        match hub.store.write(vec![command.clone()]).await {
            Err(error) if Instant::now() < give_up => {
                tracing::debug!(%error, %client_id, "recording a disconnect failed; retrying");
            }
            written => return written,
        }
    }
}

/// What this edge keeps of a session once its disconnect is recorded.
fn disconnect_recorded(
    hub: &Hub,
    client_id: &ClientId,
    results: &[rookery_store::proto::CommandResult],
) {
    // An operator deleted the session (`rookery ctl sessions delete`): what
    // this edge kept of it goes too.
    if results.iter().any(|result| {
        matches!(
            result.kind,
            Some(rookery_store::proto::command_result::Kind::NoSession(_))
        )
    }) {
        hub.session_ended(client_id);
    }
}

/// Waits until none of `mailboxes` and `links` is full.
async fn room_in(mailboxes: &[Mailbox], links: &[rookery_cluster::Congested]) {
    crate::hub::room_in(mailboxes).await;
    for link in links {
        link.room().await;
    }
}
