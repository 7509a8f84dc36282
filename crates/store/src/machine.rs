//! The state machine's commands: what each one does to the session state.
//!
//! Applying is deterministic: the time is the batch's `now_ms`, ids come from
//! the log index and the command's position, and nothing reads a replica's
//! clock or randomness. Every replica applies the same entry to the same state.

use std::collections::{BTreeMap, BTreeSet};

use rookery_topic::topic_matches;

use crate::StoreError;
use crate::db::{Reader, Txn, decode};
use crate::keys::{self, TimerKind, cf};
use crate::proto::{
    self, AckKind, CommandBatch, CommandResult, DeliveryStage, Edge, Message, PendingWill,
    QueuedMessage, Route, Session, StoredMessage, Subscription, SubscriptionOptions, Will,
    command::Kind as CommandKind, command_result::Kind as ResultKind, edge_event,
};
use quota::RetainedChange;
pub use quota::{Counter, read_counter, retained_size};

/// Session Expiry Interval meaning "never expires" (MQTT-3.1.2-11 / 3.3.2.3.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// Timers a single Tick handles at most, so one entry stays small; the rest
/// wait for the next Tick.
const TIMERS_PER_TICK: usize = 10_000;

/// How long a live edge has to end a will handed to it before the store
/// hands it out again.
const WILL_UNANSWERED_MS: u64 = 15_000;

/// `sm_meta` key of the next will's id.
const NEXT_WILL_ID: &[u8] = b"next_will_id";
/// Set in every will id; command ids (`unique_id`) stay below it.
const WILL_ID_BIT: u64 = 1 << 63;

/// Something a watcher must hear about once the entry is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A route entered the route table (or changed its options).
    RouteAdded(Route),
    /// A route left the route table.
    RouteRemoved(Route),
    /// A retained message was set, or cleared (empty payload): edges keep
    /// a copy of the retained messages for new subscriptions.
    Retained(Message),
    /// An edge registered for the first time or at a new address: other
    /// edges forward to it there.
    EdgeRegistered(Edge),
    /// Something one edge must act on (a takeover, queued messages, a due
    /// will).
    Edge {
        /// The edge to tell.
        edge_id: String,
        /// What to tell it.
        event: edge_event::Kind,
    },
}

/// Applies one log entry's batch and returns one result per command.
pub fn apply_batch(
    txn: &mut Txn<'_>,
    log_index: u64,
    batch: &CommandBatch,
    events: &mut Vec<Event>,
) -> Result<Vec<CommandResult>, StoreError> {
    let mut results = Vec::with_capacity(batch.commands.len());
    for (position, command) in batch.commands.iter().enumerate() {
        let mut machine = Machine {
            txn: &mut *txn,
            now_ms: batch.now_ms,
            id: unique_id(log_index, position),
            events: &mut *events,
        };
        let kind = match &command.kind {
            Some(kind) => machine.apply(kind)?,
            // An empty command from a newer edge: nothing to do.
            None => ResultKind::Applied(proto::Applied {}),
        };
        results.push(CommandResult { kind: Some(kind) });
    }
    Ok(results)
}

/// An id no other command ever gets: epochs and message ids. Larger for later
/// commands, so epochs only grow.
fn unique_id(log_index: u64, position: usize) -> u64 {
    (log_index << 20) | (position as u64 & 0xF_FFFF)
}

/// The most commands one batch may carry for the ids given to its commands
/// (epochs, message ids) to stay unique.
pub const MAX_COMMANDS_PER_BATCH: usize = 1 << 20;

struct Machine<'t, 'a> {
    txn: &'t mut Txn<'a>,
    now_ms: u64,
    id: u64,
    events: &'t mut Vec<Event>,
}

fn applied() -> ResultKind {
    ResultKind::Applied(proto::Applied {})
}

impl Machine<'_, '_> {
    fn apply(&mut self, command: &CommandKind) -> Result<ResultKind, StoreError> {
        match command {
            CommandKind::RegisterEdge(register) => {
                let edge = Edge {
                    edge_id: register.edge_id.clone(),
                    address: register.address.clone(),
                    lease_expires_at_ms: self.now_ms.saturating_add(register.lease_ms),
                    stats: register.stats,
                    lease_ms: register.lease_ms,
                };
                let known = self
                    .txn
                    .get_message::<Edge>(cf::EDGES, &keys::edge(&edge.edge_id))?;
                let lapsed = known.is_none();
                if known.is_none_or(|known| known.address != edge.address) {
                    self.events.push(Event::EdgeRegistered(edge.clone()));
                }
                self.txn
                    .put_message(cf::EDGES, keys::edge(&edge.edge_id), &edge);
                Ok(ResultKind::EdgeRegistered(proto::EdgeRegistered { lapsed }))
            }
            CommandKind::Tick(tick) => self.tick(tick.leader_since_ms),
            CommandKind::Connect(connect) => self.connect(connect),
            CommandKind::Disconnect(disconnect) => {
                let mut session =
                    match self.owned_session(&disconnect.client_id, disconnect.epoch)? {
                        Ok(session) => session,
                        Err(refusal) => return Ok(refusal),
                    };
                session.lost_with_edge |= disconnect.records_lost;
                self.go_offline(
                    &mut session,
                    disconnect.expiry_interval_s,
                    disconnect.publish_will,
                )?;
                Ok(applied())
            }
            CommandKind::Subscribe(subscribe) => self.subscribe(subscribe),
            CommandKind::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            CommandKind::Enqueue(enqueue) => self.enqueue(enqueue),
            CommandKind::MarkPublished(mark) => {
                if let Err(refusal) = self.owned_session(&mark.client_id, mark.epoch)? {
                    return Ok(refusal);
                }
                let key = keys::queue_entry(&mark.client_id, mark.seq);
                let Some(mut entry) = self.txn.get_message::<QueuedMessage>(cf::QUEUES, &key)?
                else {
                    return Ok(ResultKind::Acknowledged(proto::Acknowledged {
                        matched: false,
                    }));
                };
                // Only forward: a record that reaches the store again (an
                // edge resends a session's records that may have committed
                // when the leader died) cannot undo a later step.
                let queued = entry.stage == DeliveryStage::Queued as i32;
                let same = entry.stage == DeliveryStage::Published as i32
                    && entry.packet_id == mark.packet_id;
                if !queued && !same {
                    return Ok(ResultKind::Acknowledged(proto::Acknowledged {
                        matched: false,
                    }));
                }
                entry.stage = DeliveryStage::Published as i32;
                entry.packet_id = mark.packet_id;
                self.txn.put_message(cf::QUEUES, key, &entry);
                self.txn.put(
                    cf::INFLIGHT,
                    keys::packet(&mark.client_id, mark.packet_id),
                    mark.seq.to_be_bytes().to_vec(),
                );
                Ok(ResultKind::Acknowledged(proto::Acknowledged {
                    matched: true,
                }))
            }
            CommandKind::Acknowledge(ack) => self.acknowledge(ack),
            CommandKind::ReleaseIncoming(release) => {
                if let Err(refusal) = self.owned_session(&release.client_id, release.epoch)? {
                    return Ok(refusal);
                }
                let key = keys::packet(&release.client_id, release.packet_id);
                let matched = self.txn.get(cf::INCOMING, &key)?.is_some();
                self.txn.delete(cf::INCOMING, key);
                Ok(ResultKind::Acknowledged(proto::Acknowledged { matched }))
            }
            CommandKind::SetRetained(set) => self.set_retained(set),
            CommandKind::WillPublished(done) => {
                let key = will_key(&done.client_id, done.will_id);
                self.txn.delete(cf::WILLS, key);
                Ok(applied())
            }
            CommandKind::Kick(kick) => {
                let Some(session) = self.session(&kick.client_id)? else {
                    return Ok(ResultKind::NoSession(proto::NoSession {}));
                };
                if session.edge_id.is_empty() {
                    return Ok(ResultKind::NoSession(proto::NoSession {}));
                }
                // The session stays as it is: the connection's end, which
                // the edge records with its usual Disconnect, takes it
                // offline (will, expiry) as for any connection the server
                // closes.
                Ok(self.kick(&session, false))
            }
            CommandKind::DiscardSession(discard) => self.discard_session(&discard.client_id),
        }
    }

    /// Tells the edge holding `session` to close its connection with 0x98
    /// (Administrative Action).
    fn kick(&mut self, session: &Session, session_ended: bool) -> ResultKind {
        self.emit_edge(
            &session.edge_id,
            edge_event::Kind::SessionKicked(proto::SessionKicked {
                client_id: session.client_id.clone(),
                epoch: session.epoch,
                session_ended,
            }),
        );
        ResultKind::Kicked(proto::Kicked {
            edge_id: session.edge_id.clone(),
            epoch: session.epoch,
        })
    }

    /// Deletes a session for an operator. An online one is kicked first,
    /// and its will goes out as when a takeover ends a session: the server
    /// closed the connection (MQTT-3.1.2-8).
    fn discard_session(&mut self, client_id: &str) -> Result<ResultKind, StoreError> {
        let Some(mut session) = self.session(client_id)? else {
            return Ok(ResultKind::NoSession(proto::NoSession {}));
        };
        let mut result = applied();
        if !session.edge_id.is_empty() {
            result = self.kick(&session, true);
            let holding_edge = session.edge_id.clone();
            if let Some(will) = session.will.take() {
                self.fire_will_now(client_id, will, session.epoch, Some(&holding_edge))?;
            }
            self.take_offline_routes(&mut session)?;
        }
        self.end_session(&session)?;
        Ok(result)
    }

    /// The session, if `epoch` is its current one; otherwise the refusal to
    /// return (MQTT-3.1.4-3: a taken-over connection changes nothing).
    fn owned_session(
        &self,
        client_id: &str,
        epoch: u64,
    ) -> Result<Result<Session, ResultKind>, StoreError> {
        Ok(match self.session(client_id)? {
            None => Err(ResultKind::NoSession(proto::NoSession {})),
            Some(session) if session.epoch != epoch => Err(ResultKind::Fenced(proto::Fenced {
                current_epoch: session.epoch,
            })),
            Some(session) => Ok(session),
        })
    }

    fn session(&self, client_id: &str) -> Result<Option<Session>, StoreError> {
        self.txn.get_message(cf::SESSIONS, &keys::client(client_id))
    }

    fn save_session(&mut self, session: &Session) {
        self.txn
            .put_message(cf::SESSIONS, keys::client(&session.client_id), session);
    }

    fn connect(&mut self, connect: &proto::Connect) -> Result<ResultKind, StoreError> {
        let mut previous = self.session(&connect.client_id)?;
        if self.persistent_sessions_full(
            previous.as_ref(),
            connect.expiry_interval_s,
            connect.max_persistent_sessions,
        )? {
            // Refused before anything changes: a connection holding the
            // client id keeps it.
            return Ok(ResultKind::QuotaExceeded(proto::QuotaExceeded {}));
        }
        let mut previous_edge_id = String::new();
        // Its last connection's records of what it sent may be incomplete.
        let may_have_sent = previous
            .as_ref()
            .is_some_and(|old| !old.edge_id.is_empty() || old.lost_with_edge);
        // How far its queue went while that connection lived.
        let may_have_sent_below_seq = match previous.as_ref() {
            Some(old) if !old.edge_id.is_empty() => old.next_seq,
            Some(old) => old.offline_from_seq,
            None => 0,
        };
        // A session with expiry 0 ends with its connection, which a takeover
        // closes: the new connection cannot resume it.
        let mut ended_by_takeover = false;

        if let Some(old) = previous.as_mut()
            && !old.edge_id.is_empty()
        {
            // Takeover (MQTT-3.1.4-3): the old connection is told to close
            // with 0x8E and its will goes out if it is due now.
            previous_edge_id = old.edge_id.clone();
            self.emit_edge(
                &old.edge_id,
                edge_event::Kind::SessionTakenOver(proto::SessionTakenOver {
                    client_id: old.client_id.clone(),
                    epoch: old.epoch,
                }),
            );
            ended_by_takeover = old.expiry_interval_s == 0;
            let ending = connect.clean_start || ended_by_takeover;
            if let Some(will) = old.will.take()
                && (will.delay_s == 0 || ending)
            {
                // Handed to the old connection's edge while it lives: the
                // client may have left it with a normal DISCONNECT that edge
                // could not record yet (MQTT-3.1.2-10), which it alone knows.
                self.fire_will_now(&old.client_id, will, old.epoch, Some(&old.edge_id))?;
            }
            self.take_offline_routes(old)?;
        }

        let resumable = previous.filter(|old| !self.expired(old));
        let session_present;
        let mut session = match resumable {
            Some(old) if !connect.clean_start && !ended_by_takeover => {
                // MQTT-3.1.3-9: reconnecting within the will delay cancels it.
                self.take_delayed_wills(&old.client_id)?;
                session_present = true;
                old
            }
            old => {
                if let Some(old) = old {
                    self.end_session(&old)?;
                } else if let Some(stale) = self.session(&connect.client_id)? {
                    // Expired but not yet swept by a Tick.
                    self.end_session(&stale)?;
                }
                session_present = false;
                Session {
                    client_id: connect.client_id.clone(),
                    next_seq: 1,
                    ..Session::default()
                }
            }
        };

        let subscriptions = self.subscriptions(&session.client_id)?;
        let routes_before = self.routes_of(&session, &subscriptions);
        // The expiry timer of the offline session, before its expiry is
        // cleared below.
        if let Some(timer) = self.session_timer(&session) {
            self.txn.delete(cf::TIMERS, timer);
        }
        session.edge_id = connect.edge_id.clone();
        session.epoch = self.id;
        session.expiry_interval_s = connect.expiry_interval_s;
        session.expires_at_ms = 0;
        session.will = connect.will.clone();
        session.protocol_version = connect.protocol_version;
        session.client_address = connect.client_address.clone();
        session.listener = connect.listener.clone();
        session.username = connect.username.clone();
        session.keep_alive_s = connect.keep_alive_s;
        session.connected_at_ms = self.now_ms;
        session.disconnected_at_ms = 0;
        session.lost_with_edge = false;
        session.shared_handoff_after_ms = connect.shared_handoff_after_ms;
        let routes_after = self.routes_of(&session, &subscriptions);
        self.replace_routes(routes_before, routes_after);
        self.txn.put(
            cf::EDGE_SESSIONS,
            keys::edge_session(&session.edge_id, &session.client_id),
            Vec::new(),
        );
        self.save_session_counted(&session)?;

        let queue = self.take_deliverable_queue(&session.client_id)?;
        Ok(ResultKind::Connected(proto::Connected {
            epoch: session.epoch,
            session_present,
            previous_edge_id,
            subscriptions,
            queue,
            may_have_sent: session_present && may_have_sent,
            queue_next_seq: session.next_seq,
            may_have_sent_below_seq: if session_present && may_have_sent {
                may_have_sent_below_seq
            } else {
                0
            },
        }))
    }

    /// An offline session whose expiry has passed.
    fn expired(&self, session: &Session) -> bool {
        session.edge_id.is_empty()
            && session.expires_at_ms != 0
            && session.expires_at_ms <= self.now_ms
    }

    /// Takes a session offline after a DISCONNECT or the loss of its edge:
    /// its will is published or scheduled, and its expiry starts.
    fn go_offline(
        &mut self,
        session: &mut Session,
        expiry_interval_s: u32,
        publish_will: bool,
    ) -> Result<(), StoreError> {
        let holding_edge = session.edge_id.clone();
        let subscriptions = self.subscriptions(&session.client_id)?;
        let routes_before = self.routes_of(session, &subscriptions);
        if !holding_edge.is_empty() {
            self.txn.delete(
                cf::EDGE_SESSIONS,
                keys::edge_session(&holding_edge, &session.client_id),
            );
        }
        if !holding_edge.is_empty() {
            session.disconnected_at_ms = self.now_ms;
            session.offline_from_seq = session.next_seq;
        }
        session.edge_id.clear();
        // A session already offline (its edge's lease lapsed before its
        // DISCONNECT arrived) has an expiry that the new interval replaces.
        if let Some(timer) = self.session_timer(session) {
            self.txn.delete(cf::TIMERS, timer);
        }
        session.expires_at_ms = 0;
        session.expiry_interval_s = expiry_interval_s;
        if let Some(will) = session.will.take()
            && publish_will
        {
            if will.delay_s == 0 || expiry_interval_s == 0 {
                self.fire_will_now(&session.client_id, will, session.epoch, Some(&holding_edge))?;
            } else {
                // MQTT-3.1.3-9: the will waits for its delay or the end of
                // the session, whichever comes first.
                let delay_s = will.delay_s.min(expiry_interval_s);
                let fire_at_ms = self.now_ms.saturating_add(u64::from(delay_s) * 1000);
                self.schedule_will(&session.client_id, will, session.epoch, fire_at_ms)?;
            }
        }
        if expiry_interval_s == 0 {
            self.replace_routes(routes_before, BTreeMap::new());
            return self.end_session(session);
        }
        if expiry_interval_s != NEVER_EXPIRES {
            session.expires_at_ms = self
                .now_ms
                .saturating_add(u64::from(expiry_interval_s) * 1000);
            if let Some(timer) = self.session_timer(session) {
                self.txn.put(cf::TIMERS, timer, Vec::new());
            }
        }
        self.schedule_shared_handoff(session);
        let routes_after = self.routes_of(session, &subscriptions);
        self.replace_routes(routes_before, routes_after);
        self.save_session_counted(session)
    }

    /// Removes the routes that point at the session's edge and forgets which
    /// edge held it; the session itself is saved by the caller.
    fn take_offline_routes(&mut self, session: &mut Session) -> Result<(), StoreError> {
        if session.edge_id.is_empty() {
            return Ok(());
        }
        let subscriptions = self.subscriptions(&session.client_id)?;
        let before = self.routes_of(session, &subscriptions);
        self.txn.delete(
            cf::EDGE_SESSIONS,
            keys::edge_session(&session.edge_id, &session.client_id),
        );
        session.edge_id.clear();
        let after = self.routes_of(session, &subscriptions);
        self.replace_routes(before, after);
        Ok(())
    }

    fn session_timer(&self, session: &Session) -> Option<Vec<u8>> {
        (session.expires_at_ms != 0).then(|| {
            keys::timer(
                session.expires_at_ms,
                TimerKind::SessionExpiry,
                &session.client_id,
            )
        })
    }

    /// Deletes a session and everything it owns. A will still waiting for its
    /// delay goes out now: the session's end ends the delay (MQTT-3.1.3-9).
    fn end_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let client_id = session.client_id.as_str();
        for (will, epoch) in self.take_delayed_wills(client_id)? {
            self.fire_will_now(client_id, will, epoch, None)?;
        }
        let subscriptions = self.subscriptions(client_id)?;
        let routes = self.routes_of(session, &subscriptions);
        self.replace_routes(routes, BTreeMap::new());
        for subscription in &subscriptions {
            self.txn.delete(
                cf::SUBSCRIPTIONS,
                keys::subscription(client_id, &subscription.filter),
            );
        }
        for (key, value) in self.txn.scan_prefix(cf::QUEUES, &keys::client(client_id))? {
            let entry: QueuedMessage = decode(cf::QUEUES, &value)?;
            self.unreference(entry.message_id)?;
            self.txn.delete(cf::QUEUES, key);
        }
        for family in [cf::INFLIGHT, cf::INCOMING] {
            for (key, _) in self.txn.scan_prefix(family, &keys::client(client_id))? {
                self.txn.delete(family, key);
            }
        }
        if !session.edge_id.is_empty() {
            self.txn.delete(
                cf::EDGE_SESSIONS,
                keys::edge_session(&session.edge_id, client_id),
            );
        }
        if let Some(timer) = self.session_timer(session) {
            self.txn.delete(cf::TIMERS, timer);
        }
        self.delete_session_counted(client_id)
    }

    /// Removes the wills still waiting for their delay, with their timers,
    /// and returns them with their connections' epochs. A will whose delay
    /// has passed is due (MQTT-3.1.2-8) even if no Tick has handed it to an
    /// edge yet, and stays.
    fn take_delayed_wills(&mut self, client_id: &str) -> Result<Vec<(Will, u64)>, StoreError> {
        let mut delayed = Vec::new();
        for (key, value) in self.txn.scan_prefix(cf::WILLS, &keys::client(client_id))? {
            let pending: PendingWill = decode(cf::WILLS, &value)?;
            if pending.assigned_edge_id.is_empty() && pending.fire_at_ms > self.now_ms {
                self.txn.delete(cf::WILLS, key);
                self.txn.delete(
                    cf::TIMERS,
                    keys::timer(pending.fire_at_ms, TimerKind::Will, client_id),
                );
                delayed.extend(pending.will.map(|will| (will, pending.epoch)));
            }
        }
        Ok(delayed)
    }

    fn schedule_will(
        &mut self,
        client_id: &str,
        will: Will,
        epoch: u64,
        fire_at_ms: u64,
    ) -> Result<(), StoreError> {
        let will_id = self.next_will_id()?;
        let pending = PendingWill {
            client_id: client_id.to_owned(),
            will: Some(will),
            fire_at_ms,
            assigned_edge_id: String::new(),
            will_id,
            epoch,
            handed_at_ms: 0,
        };
        self.txn
            .put_message(cf::WILLS, will_key(client_id, will_id), &pending);
        self.txn.put(
            cf::TIMERS,
            keys::timer(fire_at_ms, TimerKind::Will, client_id),
            Vec::new(),
        );
        Ok(())
    }

    /// An id no other will gets, nor any command (the top bit is set): one
    /// command may fire many wills (a Tick, for every client of a dead
    /// edge), and edges deliver each will's copies under its id as receipt.
    ///
    /// The counter is state like any other, so it lives in a family that
    /// snapshots carry (`counters`). It was once kept in `sm_meta`, which
    /// they do not: a replica that installed a snapshot started again at 0,
    /// gave the next will another id than the other replicas did, and its
    /// edge's hand-out then matched no will on the leader, so the will was
    /// never published. A store from then is read at its old place once.
    fn next_will_id(&mut self) -> Result<u64, StoreError> {
        let stored = match self.txn.get(cf::COUNTERS, NEXT_WILL_ID)? {
            Some(bytes) => Some(bytes),
            None => self.txn.get(cf::SM_META, NEXT_WILL_ID)?,
        };
        let next = stored
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        self.txn.put(
            cf::COUNTERS,
            NEXT_WILL_ID.to_vec(),
            (next + 1).to_be_bytes().to_vec(),
        );
        Ok(WILL_ID_BIT | next)
    }

    /// Records a will as due and hands it to a live edge to publish, the
    /// preferred one if it is alive. With no live edge it waits for a Tick.
    fn fire_will_now(
        &mut self,
        client_id: &str,
        will: Will,
        epoch: u64,
        preferred_edge: Option<&str>,
    ) -> Result<(), StoreError> {
        let will_id = self.next_will_id()?;
        let mut pending = PendingWill {
            client_id: client_id.to_owned(),
            will: Some(will),
            fire_at_ms: self.now_ms,
            assigned_edge_id: String::new(),
            will_id,
            epoch,
            handed_at_ms: 0,
        };
        self.assign_will(&mut pending, preferred_edge)?;
        self.txn
            .put_message(cf::WILLS, will_key(client_id, pending.will_id), &pending);
        Ok(())
    }

    fn assign_will(
        &mut self,
        pending: &mut PendingWill,
        preferred_edge: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(edge_id) = self.live_edge(preferred_edge)? else {
            return Ok(());
        };
        pending.assigned_edge_id = edge_id.clone();
        pending.handed_at_ms = self.now_ms;
        self.emit_edge(
            &edge_id,
            edge_event::Kind::WillDue(proto::WillDue {
                client_id: pending.client_id.clone(),
                message: pending.will.as_ref().and_then(|will| will.message.clone()),
                will_id: pending.will_id,
                epoch: pending.epoch,
            }),
        );
        Ok(())
    }

    /// The preferred edge if its lease holds, else the first live edge.
    fn live_edge(&self, preferred: Option<&str>) -> Result<Option<String>, StoreError> {
        if let Some(preferred) = preferred.filter(|edge| !edge.is_empty())
            && let Some(edge) = self
                .txn
                .get_message::<Edge>(cf::EDGES, &keys::edge(preferred))?
            && edge.lease_expires_at_ms > self.now_ms
        {
            return Ok(Some(edge.edge_id));
        }
        for (_, value) in self.txn.scan_range(cf::EDGES, b"", None, usize::MAX)? {
            let edge: Edge = decode(cf::EDGES, &value)?;
            if edge.lease_expires_at_ms > self.now_ms {
                return Ok(Some(edge.edge_id));
            }
        }
        Ok(None)
    }

    fn tick(&mut self, leader_since_ms: u64) -> Result<ResultKind, StoreError> {
        // Dead edges: their clients are disconnected without a DISCONNECT,
        // so wills fire (MQTT-3.1.2-8) and session expiry starts.
        let mut dead_edges = Vec::new();
        for (_, value) in self.txn.scan_range(cf::EDGES, b"", None, usize::MAX)? {
            let edge: Edge = decode(cf::EDGES, &value)?;
            if lease_lapsed(&edge, self.now_ms, leader_since_ms) {
                dead_edges.push(edge.edge_id);
            }
        }
        for edge_id in &dead_edges {
            self.txn.delete(cf::EDGES, keys::edge(edge_id));
            // Registered nowhere now: the other edges forget its address
            // (else every edge restart, a new incarnation, would add one).
            self.events.push(Event::EdgeRegistered(Edge {
                edge_id: edge_id.clone(),
                ..Edge::default()
            }));
            for (key, _) in self
                .txn
                .scan_prefix(cf::EDGE_SESSIONS, &keys::edge(edge_id))?
            {
                let Some(client_id) = keys::edge_session_client(&key, edge_id) else {
                    continue;
                };
                self.txn.delete(cf::EDGE_SESSIONS, key);
                if let Some(mut session) = self.session(&client_id)?
                    && session.edge_id == *edge_id
                {
                    session.lost_with_edge = true;
                    let expiry = session.expiry_interval_s;
                    self.go_offline(&mut session, expiry, true)?;
                }
            }
        }

        let due_end = self.now_ms.saturating_add(1).to_be_bytes();
        let timers = self
            .txn
            .scan_range(cf::TIMERS, b"", Some(&due_end), TIMERS_PER_TICK)?;
        for (key, _) in timers {
            self.txn.delete(cf::TIMERS, key.clone());
            let Some((_, kind, subject)) = keys::parse_timer(&key) else {
                continue;
            };
            match kind {
                TimerKind::SessionExpiry => {
                    if let Some(session) = self.session(&subject)?
                        && self.expired(&session)
                    {
                        quota::count_expired(&session);
                        self.end_session(&session)?;
                    }
                }
                TimerKind::Will => {
                    // The will is handed out by the sweep below.
                }
                TimerKind::SharedHandoff => self.offer_shared_copies(&subject)?,
                TimerKind::RetainedExpiry => {
                    let key = subject.into_bytes();
                    if let Some(message) = self.txn.get_message::<Message>(cf::RETAINED, &key)?
                        && message.expires_at_ms != 0
                        && message.expires_at_ms <= self.now_ms
                    {
                        self.count_retained(Some(&message), None, 0, 0)?;
                        self.txn.delete(cf::RETAINED, key);
                    }
                }
            }
        }

        // Due wills not yet with a live edge: newly due, never assigned for
        // want of an edge, or assigned to an edge that died. A will its live
        // edge has not ended for a while is handed out again (that edge may
        // have missed the notice while it changed the store node it
        // follows): publishing a will twice queues it once, and sessions
        // drop a second copy.
        for (key, value) in self.txn.scan_range(cf::WILLS, b"", None, usize::MAX)? {
            let mut pending: PendingWill = decode(cf::WILLS, &value)?;
            if pending.fire_at_ms > self.now_ms {
                continue;
            }
            let unassigned = pending.assigned_edge_id.is_empty()
                || dead_edges.contains(&pending.assigned_edge_id);
            let handed_at_ms = pending.handed_at_ms.max(pending.fire_at_ms);
            let unanswered = self.now_ms.saturating_sub(handed_at_ms) >= WILL_UNANSWERED_MS;
            if unassigned || unanswered {
                let preferred = std::mem::take(&mut pending.assigned_edge_id);
                let preferred = (!unassigned).then_some(preferred.as_str());
                self.assign_will(&mut pending, preferred)?;
                self.txn.put_message(cf::WILLS, key, &pending);
            }
        }
        Ok(applied())
    }

    fn subscribe(&mut self, subscribe: &proto::Subscribe) -> Result<ResultKind, StoreError> {
        let session = match self.owned_session(&subscribe.client_id, subscribe.epoch)? {
            Ok(session) => session,
            Err(refusal) => return Ok(refusal),
        };
        let mut existed = Vec::with_capacity(subscribe.subscriptions.len());
        for subscription in &subscribe.subscriptions {
            let key = keys::subscription(&session.client_id, &subscription.filter);
            let old = self
                .txn
                .get_message::<SubscriptionOptions>(cf::SUBSCRIPTIONS, &key)?;
            existed.push(old.is_some());
            let before = old
                .map(|options| {
                    self.routes_of(
                        &session,
                        &[Subscription {
                            filter: subscription.filter.clone(),
                            options: Some(options),
                        }],
                    )
                })
                .unwrap_or_default();
            let options = subscription.options.unwrap_or_default();
            self.txn.put_message(cf::SUBSCRIPTIONS, key, &options);
            // Routed with the options as stored, so that later route diffs,
            // computed from the stored subscriptions, agree with these.
            let stored = Subscription {
                filter: subscription.filter.clone(),
                options: Some(options),
            };
            let after = self.routes_of(&session, std::slice::from_ref(&stored));
            self.replace_routes(before, after);
        }
        Ok(ResultKind::Subscribed(proto::Subscribed { existed }))
    }

    fn unsubscribe(&mut self, unsubscribe: &proto::Unsubscribe) -> Result<ResultKind, StoreError> {
        let session = match self.owned_session(&unsubscribe.client_id, unsubscribe.epoch)? {
            Ok(session) => session,
            Err(refusal) => return Ok(refusal),
        };
        let mut existed = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let key = keys::subscription(&session.client_id, filter);
            let old = self
                .txn
                .get_message::<SubscriptionOptions>(cf::SUBSCRIPTIONS, &key)?;
            existed.push(old.is_some());
            if let Some(options) = old {
                let before = self.routes_of(
                    &session,
                    &[Subscription {
                        filter: filter.clone(),
                        options: Some(options),
                    }],
                );
                self.replace_routes(before, BTreeMap::new());
                self.txn.delete(cf::SUBSCRIPTIONS, key);
            }
        }
        Ok(ResultKind::Unsubscribed(proto::Unsubscribed { existed }))
    }

    fn enqueue(&mut self, enqueue: &proto::Enqueue) -> Result<ResultKind, StoreError> {
        if let Some(will) = &enqueue.will {
            let key = will_key(&will.client_id, will.will_id);
            let accepted = self.txn.get(cf::WILLS, &key)?.is_some();
            let answer = ResultKind::Enqueued(proto::Enqueued {
                accepted,
                queued: 0,
                dropped: 0,
                receipt: will.will_id,
            });
            if !accepted {
                // Published already, by an edge this will was handed to
                // before.
                return Ok(answer);
            }
            self.txn.delete(cf::WILLS, key);
            if enqueue.message.is_none() {
                return Ok(answer);
            }
        }
        let mut handed_off = None;
        if let Some(handoff) = &enqueue.handoff {
            handed_off = self.take_shared_copy(handoff)?;
            if handed_off.is_none() {
                // Moved already, or its member came back for it.
                return Ok(ResultKind::Enqueued(proto::Enqueued {
                    accepted: false,
                    queued: 0,
                    dropped: 0,
                    receipt: 0,
                }));
            }
        }
        if let Some(incoming) = &enqueue.incoming {
            if let Err(refusal) = self.owned_session(&incoming.client_id, incoming.epoch)? {
                return Ok(refusal);
            }
            let key = keys::packet(&incoming.client_id, incoming.packet_id);
            if let Some(held) = self.txn.get(cf::INCOMING, &key)? {
                // A retried QoS 2 PUBLISH (MQTT-4.3.3-9): acknowledged again,
                // accepted once; its receipt lets edges deliver it again to
                // whoever the first attempt may not have reached.
                let receipt = <[u8; 8]>::try_from(held.as_slice()).map_or(0, u64::from_le_bytes);
                return Ok(ResultKind::Enqueued(proto::Enqueued {
                    accepted: false,
                    queued: 0,
                    dropped: 0,
                    receipt,
                }));
            }
            self.txn
                .put(cf::INCOMING, key, self.id.to_le_bytes().to_vec());
        }
        let receipt = match (&enqueue.will, &enqueue.incoming, handed_off) {
            (Some(will), _, _) => will.will_id,
            (None, Some(_), _) => self.id,
            (None, None, Some(message_id)) => message_id,
            (None, None, None) => 0,
        };
        let Some(message) = &enqueue.message else {
            return Ok(ResultKind::Enqueued(proto::Enqueued {
                accepted: true,
                queued: 0,
                dropped: 0,
                receipt,
            }));
        };
        if message.expires_at_ms != 0 && message.expires_at_ms <= self.now_ms {
            return Ok(ResultKind::Enqueued(proto::Enqueued {
                accepted: true,
                queued: 0,
                dropped: 0,
                receipt,
            }));
        }
        let message_id = self.id;
        let mut queued = 0u32;
        let mut dropped = 0u32;
        let mut notified = BTreeSet::new();
        for target in &enqueue.targets {
            let Some(mut session) = self.session(&target.client_id)? else {
                continue;
            };
            if enqueue.max_queued != 0 && session.queue_len >= enqueue.max_queued {
                dropped += 1;
                if !(enqueue.drop_oldest && self.drop_oldest_queued(&mut session)?) {
                    continue;
                }
            }
            let entry = QueuedMessage {
                seq: session.next_seq,
                message_id,
                qos: target.qos,
                retain: target.retain,
                subscription_ids: target.subscription_ids.clone(),
                stage: DeliveryStage::Queued as i32,
                packet_id: 0,
                message: None,
                shared_group: target.shared_group.clone(),
            };
            self.txn.put_message(
                cf::QUEUES,
                keys::queue_entry(&session.client_id, session.next_seq),
                &entry,
            );
            session.next_seq += 1;
            session.queue_len += 1;
            if !entry.shared_group.is_empty() && session.edge_id.is_empty() {
                // Picked while no member was online.
                self.schedule_shared_handoff(&session);
            }
            self.save_session(&session);
            queued += 1;
            if !session.edge_id.is_empty()
                && notified.insert((session.edge_id.clone(), session.client_id.clone()))
            {
                self.emit_edge(
                    &session.edge_id,
                    edge_event::Kind::MessagesQueued(proto::MessagesQueued {
                        client_id: session.client_id.clone(),
                        epoch: session.epoch,
                    }),
                );
            }
        }
        if queued > 0 {
            let stored = StoredMessage {
                message: Some(message.clone()),
                references: queued,
            };
            self.txn
                .put_message(cf::MESSAGES, keys::message(message_id), &stored);
        }
        Ok(ResultKind::Enqueued(proto::Enqueued {
            accepted: true,
            queued,
            dropped,
            receipt,
        }))
    }

    /// Drops the oldest message of a full queue that has not been sent yet;
    /// false if every entry is in flight.
    fn drop_oldest_queued(&mut self, session: &mut Session) -> Result<bool, StoreError> {
        let client_id = session.client_id.clone();
        for (key, value) in self
            .txn
            .scan_prefix(cf::QUEUES, &keys::client(&client_id))?
        {
            let entry: QueuedMessage = decode(cf::QUEUES, &value)?;
            if entry.stage == DeliveryStage::Queued as i32 {
                self.txn.delete(cf::QUEUES, key);
                self.unreference(entry.message_id)?;
                session.queue_len = session.queue_len.saturating_sub(1);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One entry left a session's queue.
    fn queue_shrunk(&mut self, client_id: &str) -> Result<(), StoreError> {
        if let Some(mut session) = self.session(client_id)? {
            session.queue_len = session.queue_len.saturating_sub(1);
            self.save_session(&session);
        }
        Ok(())
    }

    fn acknowledge(&mut self, ack: &proto::Acknowledge) -> Result<ResultKind, StoreError> {
        if let Err(refusal) = self.owned_session(&ack.client_id, ack.epoch)? {
            return Ok(refusal);
        }
        let inflight_key = keys::packet(&ack.client_id, ack.packet_id);
        let not_matched = ResultKind::Acknowledged(proto::Acknowledged { matched: false });
        let Some(seq) = self.txn.get(cf::INFLIGHT, &inflight_key)? else {
            return Ok(not_matched);
        };
        let Ok(seq) = <[u8; 8]>::try_from(seq.as_slice()).map(u64::from_be_bytes) else {
            return Ok(not_matched);
        };
        if ack.seq != 0 && ack.seq != seq {
            // The packet identifier is another message's now.
            return Ok(not_matched);
        }
        let queue_key = keys::queue_entry(&ack.client_id, seq);
        let Some(mut entry) = self
            .txn
            .get_message::<QueuedMessage>(cf::QUEUES, &queue_key)?
        else {
            self.txn.delete(cf::INFLIGHT, inflight_key);
            return Ok(not_matched);
        };
        match AckKind::try_from(ack.kind).unwrap_or(AckKind::Puback) {
            AckKind::Pubrec => {
                entry.stage = DeliveryStage::Released as i32;
                self.txn.put_message(cf::QUEUES, queue_key, &entry);
            }
            AckKind::Puback | AckKind::Pubcomp => {
                self.txn.delete(cf::QUEUES, queue_key);
                self.txn.delete(cf::INFLIGHT, inflight_key);
                self.unreference(entry.message_id)?;
                self.queue_shrunk(&ack.client_id)?;
            }
        }
        Ok(ResultKind::Acknowledged(proto::Acknowledged {
            matched: true,
        }))
    }

    fn set_retained(&mut self, set: &proto::SetRetained) -> Result<ResultKind, StoreError> {
        let Some(message) = &set.message else {
            return Ok(applied());
        };
        if let Some(will) = &set.will
            && self
                .txn
                .get(cf::WILLS, &will_key(&will.client_id, will.will_id))?
                .is_none()
        {
            // A will published already: a later retained message on its
            // topic stays.
            return Ok(applied());
        }
        let key = message.topic.as_bytes().to_vec();
        let old = self.txn.get_message::<Message>(cf::RETAINED, &key)?;
        // MQTT-3.3.1-6/7: an empty retained payload clears the topic.
        let new = (!message.payload.is_empty()).then_some(message);
        let change = self.count_retained(old.as_ref(), new, set.max_messages, set.max_bytes)?;
        if change == RetainedChange::Refuse {
            return Ok(ResultKind::QuotaExceeded(proto::QuotaExceeded {}));
        }
        self.events.push(Event::Retained(message.clone()));
        if new.is_none() {
            self.txn.delete(cf::RETAINED, key);
            return Ok(applied());
        }
        if message.expires_at_ms != 0 {
            self.txn.put(
                cf::TIMERS,
                keys::timer(
                    message.expires_at_ms,
                    TimerKind::RetainedExpiry,
                    &message.topic,
                ),
                Vec::new(),
            );
        }
        self.txn.put_message(cf::RETAINED, key, message);
        Ok(applied())
    }

    fn unreference(&mut self, message_id: u64) -> Result<(), StoreError> {
        let key = keys::message(message_id);
        let Some(mut stored) = self.txn.get_message::<StoredMessage>(cf::MESSAGES, &key)? else {
            return Ok(());
        };
        stored.references = stored.references.saturating_sub(1);
        if stored.references == 0 {
            self.txn.delete(cf::MESSAGES, key);
        } else {
            self.txn.put_message(cf::MESSAGES, key, &stored);
        }
        Ok(())
    }

    fn subscriptions(&self, client_id: &str) -> Result<Vec<Subscription>, StoreError> {
        read_subscriptions(&*self.txn, client_id)
    }

    /// The queue to send on connect. Messages that expired before being sent
    /// are dropped (MQTT-3.3.2-5); ones already in flight are completed.
    fn take_deliverable_queue(
        &mut self,
        client_id: &str,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut queue = Vec::new();
        for entry in read_queue(&*self.txn, client_id)? {
            let expired = entry.message.as_ref().is_some_and(|message| {
                message.expires_at_ms != 0 && message.expires_at_ms <= self.now_ms
            });
            if expired && entry.stage == DeliveryStage::Queued as i32 {
                self.txn
                    .delete(cf::QUEUES, keys::queue_entry(client_id, entry.seq));
                self.unreference(entry.message_id)?;
                self.queue_shrunk(client_id)?;
            } else {
                queue.push(entry);
            }
        }
        Ok(queue)
    }

    /// The routes a session's subscriptions put in the route table: to its
    /// edge while online, to its store queue while it is persistent.
    fn routes_of(
        &self,
        session: &Session,
        subscriptions: &[Subscription],
    ) -> BTreeMap<Vec<u8>, Route> {
        let mut routes = BTreeMap::new();
        for subscription in subscriptions {
            if !session.edge_id.is_empty() {
                routes.insert(
                    keys::edge_route(&subscription.filter, &session.edge_id, &session.client_id),
                    Route {
                        filter: subscription.filter.clone(),
                        edge_id: session.edge_id.clone(),
                        client_id: session.client_id.clone(),
                        options: subscription.options,
                    },
                );
            }
            if session.expiry_interval_s > 0 {
                routes.insert(
                    keys::session_route(&subscription.filter, &session.client_id),
                    Route {
                        filter: subscription.filter.clone(),
                        edge_id: String::new(),
                        client_id: session.client_id.clone(),
                        options: subscription.options,
                    },
                );
            }
        }
        routes
    }

    /// Writes the difference between two sets of routes, and tells watchers.
    fn replace_routes(
        &mut self,
        before: BTreeMap<Vec<u8>, Route>,
        after: BTreeMap<Vec<u8>, Route>,
    ) {
        for (key, route) in &before {
            if !after.contains_key(key) {
                self.txn.delete(cf::ROUTES, key.clone());
                self.events.push(Event::RouteRemoved(route.clone()));
            }
        }
        for (key, route) in after {
            if before.get(&key) != Some(&route) {
                self.txn.put_message(cf::ROUTES, key, &route);
                self.events.push(Event::RouteAdded(route));
            }
        }
    }

    fn emit_edge(&mut self, edge_id: &str, event: edge_event::Kind) {
        self.events.push(Event::Edge {
            edge_id: edge_id.to_owned(),
            event,
        });
    }
}

fn will_key(client_id: &str, will_id: u64) -> Vec<u8> {
    keys::queue_entry(client_id, will_id)
}

/// A session's subscriptions, in filter order.
pub fn read_subscriptions(
    reader: &impl Reader,
    client_id: &str,
) -> Result<Vec<Subscription>, StoreError> {
    let mut subscriptions = Vec::new();
    for (key, value) in reader.scan_prefix(cf::SUBSCRIPTIONS, &keys::client(client_id))? {
        let Some(filter) = keys::subscription_filter(&key, client_id) else {
            continue;
        };
        subscriptions.push(Subscription {
            filter,
            options: Some(decode(cf::SUBSCRIPTIONS, &value)?),
        });
    }
    Ok(subscriptions)
}

/// Whether `edge`'s lease has lapsed at `now_ms` under a leader in office
/// since `leader_since_ms`: its time has passed, and so has a full lease
/// since the leader took office (an election, and a leader that had been
/// cut off, leave edges no leader to renew with: they are not dead for it).
pub fn lease_lapsed(edge: &Edge, now_ms: u64, leader_since_ms: u64) -> bool {
    edge.lease_expires_at_ms <= now_ms && leader_since_ms.saturating_add(edge.lease_ms) <= now_ms
}

/// The epoch of `client_id`'s session, if there is one.
pub fn read_session_epoch(
    reader: &impl Reader,
    client_id: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(reader
        .get_message::<Session>(cf::SESSIONS, &keys::client(client_id))?
        .map(|session| session.epoch))
}

/// A session's queue in order, each entry with its message.
pub fn read_queue(reader: &impl Reader, client_id: &str) -> Result<Vec<QueuedMessage>, StoreError> {
    read_queue_after(reader, client_id, None, usize::MAX)
}

/// At most `limit` entries of a session's queue, in order, from the first
/// one after position `after` (from the start without one): a connection
/// reads only what is new to it.
pub fn read_queue_after(
    reader: &impl Reader,
    client_id: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let prefix = keys::client(client_id);
    let start = match after {
        Some(u64::MAX) => return Ok(Vec::new()),
        Some(seq) => keys::queue_entry(client_id, seq + 1),
        None => prefix.clone(),
    };
    let end = keys::prefix_end(&prefix);
    let mut queue = Vec::new();
    for (_, value) in reader.scan_range(cf::QUEUES, &start, end.as_deref(), limit)? {
        let mut entry: QueuedMessage = decode(cf::QUEUES, &value)?;
        entry.message = reader
            .get_message::<StoredMessage>(cf::MESSAGES, &keys::message(entry.message_id))?
            .and_then(|stored| stored.message);
        queue.push(entry);
    }
    Ok(queue)
}

/// A session with its subscriptions and queue, as a read returns it.
pub fn read_session(
    reader: &impl Reader,
    client_id: &str,
) -> Result<proto::GetSessionResponse, StoreError> {
    let session = reader.get_message::<Session>(cf::SESSIONS, &keys::client(client_id))?;
    if session.is_none() {
        return Ok(proto::GetSessionResponse::default());
    }
    Ok(proto::GetSessionResponse {
        session,
        subscriptions: read_subscriptions(reader, client_id)?,
        queue: read_queue(reader, client_id)?,
    })
}

/// The due wills handed to `edge_id` that no edge has ended yet, as
/// `WillDue` notices: an edge that may have missed its notices (it changed
/// the store node it follows, or fell behind) publishes them.
pub fn read_wills_handed_to(
    reader: &impl Reader,
    edge_id: &str,
) -> Result<Vec<proto::WillDue>, StoreError> {
    let mut due = Vec::new();
    for (_, value) in reader.scan_range(cf::WILLS, b"", None, usize::MAX)? {
        let pending: PendingWill = decode(cf::WILLS, &value)?;
        if pending.assigned_edge_id == edge_id {
            due.push(proto::WillDue {
                client_id: pending.client_id,
                message: pending.will.and_then(|will| will.message),
                will_id: pending.will_id,
                epoch: pending.epoch,
            });
        }
    }
    Ok(due)
}

/// Every registered edge whose lease has not been swept yet.
pub fn read_edges(reader: &impl Reader) -> Result<Vec<Edge>, StoreError> {
    reader
        .scan_range(cf::EDGES, b"", None, usize::MAX)?
        .into_iter()
        .map(|(_, value)| decode(cf::EDGES, &value))
        .collect()
}

/// The whole route table.
pub fn read_routes(reader: &impl Reader) -> Result<Vec<Route>, StoreError> {
    reader
        .scan_range(cf::ROUTES, b"", None, usize::MAX)?
        .into_iter()
        .map(|(_, value)| decode(cf::ROUTES, &value))
        .collect()
}

/// The retained messages matching a filter that have not expired. Only the
/// range of topics sharing the filter's literal prefix is read.
pub fn read_retained(
    reader: &impl Reader,
    filter: &str,
    now_ms: u64,
) -> Result<Vec<Message>, StoreError> {
    let page = read_retained_page(reader, filter, None, usize::MAX, usize::MAX, now_ms)?;
    Ok(page.messages)
}

/// Records a page of retained messages reads per message it may return: a
/// page of a filter that matches few of the topics it must read stops there
/// and says where to go on.
pub const RETAINED_SCAN_PER_MATCH: usize = 8;

/// One page of the retained messages a filter matches, in topic order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetainedPage {
    /// The matching, unexpired messages of this page.
    pub messages: Vec<Message>,
    /// Where the next page starts (after this topic), or `None`: no more.
    pub resume_after: Option<String>,
}

/// Retained messages matching `filter` from the first topic after `after`,
/// in topic order: at most `limit` of them, reading at most `scan` records
/// (a filter with a leading wildcard reads topics it does not match), so
/// that one page costs a bounded amount whatever the filter.
pub fn read_retained_page(
    reader: &impl Reader,
    filter: &str,
    after: Option<&str>,
    limit: usize,
    scan: usize,
    now_ms: u64,
) -> Result<RetainedPage, StoreError> {
    let mut literal = filter
        .find(['+', '#'])
        .map_or(filter, |wildcard| &filter[..wildcard]);
    // `a/#` also matches its parent level `a` (MQTT 5 §4.7.1.2), which does
    // not start with `a/`.
    if filter.ends_with('#') {
        literal = literal.strip_suffix('/').unwrap_or(literal);
    }
    let end = keys::prefix_end(literal.as_bytes());
    // The smallest key after `after` is `after` followed by a zero byte.
    let start = match after {
        Some(after) if after.as_bytes() >= literal.as_bytes() => {
            let mut start = after.as_bytes().to_vec();
            start.push(0);
            start
        }
        _ => literal.as_bytes().to_vec(),
    };
    let (limit, scan) = (limit.max(1), scan.max(1));
    let records = reader.scan_range(cf::RETAINED, &start, end.as_deref(), scan)?;
    let read_all = records.len() < scan;
    let mut page = RetainedPage::default();
    let mut last = None;
    for (key, value) in records {
        if page.messages.len() >= limit {
            // Full: the next page starts after the last topic taken.
            return Ok(RetainedPage {
                resume_after: last,
                ..page
            });
        }
        let Ok(topic) = String::from_utf8(key) else {
            continue;
        };
        if topic_matches(filter, &topic) {
            let message: Message = decode(cf::RETAINED, &value)?;
            if message.expires_at_ms == 0 || message.expires_at_ms > now_ms {
                page.messages.push(message);
            }
        }
        last = Some(topic);
    }
    if !read_all {
        page.resume_after = last;
    }
    Ok(page)
}

#[path = "quota.rs"]
mod quota;

#[path = "shared_handoff.rs"]
mod shared_handoff;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
