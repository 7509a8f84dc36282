//! One client connection: CONNECT, then the loop that reads packets, takes
//! deliveries from the session's mailbox and writes what both produce, in
//! batches, to the socket.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rookery_codec::{
    Ack, AckProperties, ByteString, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect,
    EncodeError, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use rookery_store::proto::{self, command::Kind, command_result::Kind as ResultKind};
use rookery_store::writer::now_ms;
use rookery_topic::{SharedFilter, validate_topic_filter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::hub::{
    ClientId, Hub, Mailbox, MailboxReceiver, PendingEnqueue, SessionEntry, SubEntry, ToConnection,
};
use crate::message::{Delivery, Message, expiry_at, qos_from};
use crate::outgoing::{Outgoing, Resend, Sent};
use crate::store::StoreUnavailable;
use crate::transport::{Accepted, BoxedStream};

/// Session Expiry Interval that never expires (MQTT-3.1.2-11 semantics for
/// 3.1.1's persistent sessions).
const NEVER_EXPIRES: u32 = u32::MAX;
/// How long a connection may wait for the socket to take a write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Store queue entries read at a time: a few windows' worth.
const QUEUE_READ: usize = 256;
/// What an idle connection keeps for reading: a CONNECT or a small packet
/// fits; a busy connection grows it (see `Connection::prepare_read`).
const IDLE_READ_BUFFER: usize = 256;
/// The read size of a connection whose last read filled its buffer.
const BUSY_READ_BUFFER: usize = 16 * 1024;
/// Above this a write buffer is given back after a flush.
const KEPT_WRITE_BUFFER: usize = 64 * 1024;
/// How long a closing connection keeps reading, see `Connection::linger`.
const LINGER: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; `will` when its reason was 0x04.
    Normal { will: bool, expiry_s: Option<u32> },
    /// The connection failed or broke a rule: the will is published.
    Abnormal,
    /// The client closed the connection without DISCONNECT (or it broke):
    /// the will is published.
    Closed,
    /// Another connection took the session over; the store knows already.
    TakenOver,
    /// The broker is stopping; the session stays with this edge's lease.
    Shutdown,
}

type Completion = Pin<Box<dyn Future<Output = Completed> + Send>>;

/// A publish whose store write finished.
#[derive(Debug)]
struct Completed {
    packet_id: Option<PacketId>,
    qos: QoS,
    local: Vec<(Mailbox, Delivery)>,
    /// Persistent targets online here: counted in their backlog until this
    /// completion is handled and dropped.
    _enqueuing: PendingEnqueue,
    outcome: Outcome,
}

/// How a QoS 1/2 publish's store write and forwards ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Committed and handed to every edge that holds a matching session.
    Done,
    /// A QoS 2 message the store had already accepted under this packet
    /// identifier: acknowledged again, delivered no second time.
    Duplicate,
    /// Certainly not taken (the session was taken over, ...).
    Refused(ReasonCode),
    /// The store or another edge did not answer: it may or may not have it.
    Unknown,
}

/// What the store's results say of a publish's commands.
fn publish_outcome(results: &[proto::CommandResult]) -> Outcome {
    let mut outcome = Outcome::Done;
    for result in results {
        match &result.kind {
            Some(ResultKind::Fenced(_) | ResultKind::NoSession(_)) => {
                return Outcome::Refused(ReasonCode::UnspecifiedError);
            }
            Some(ResultKind::Enqueued(enqueued)) if !enqueued.accepted => {
                outcome = Outcome::Duplicate;
            }
            _ => {}
        }
    }
    outcome
}

/// Serves one accepted connection until it ends.
pub async fn serve(hub: Arc<Hub>, accepted: Accepted) {
    let Accepted {
        stream,
        peer,
        listener,
        ..
    } = accepted;
    let mut connection = Connection {
        hub,
        stream,
        peer,
        read_buf: BytesMut::with_capacity(IDLE_READ_BUFFER),
        write_buf: BytesMut::new(),
        version: ProtocolVersion::V3_1_1,
    };
    let connect = match Box::pin(connection.read_connect()).await {
        Ok(Some(connect)) => connect,
        Ok(None) => return,
        Err(reason) => {
            tracing::debug!(%peer, %listener, %reason, "connection closed before CONNECT completed");
            return;
        }
    };
    let Some(session) = Box::pin(connection.accept(connect)).await else {
        let _ = connection.flush().await;
        return;
    };
    connection.hub.stats.connected();
    let client_id = session.client_id.clone();
    tracing::debug!(%peer, %listener, client_id = %client_id, "client connected");
    let mut session = session;
    let end = session.run(&mut connection).await;
    let _ = connection.flush().await;
    let client_closed = matches!(end, End::Normal { .. } | End::Closed);
    Box::pin(session.finish(&connection.hub, end)).await;
    connection.hub.stats.disconnected();
    if client_closed {
        let _ = connection.stream.shutdown().await;
    } else {
        Box::pin(connection.linger()).await;
    }
    tracing::debug!(%peer, client_id = %client_id, "client disconnected");
}

struct Connection {
    hub: Arc<Hub>,
    stream: BoxedStream,
    peer: SocketAddr,
    read_buf: BytesMut,
    write_buf: BytesMut,
    version: ProtocolVersion,
}

impl Connection {
    /// Waits for the first packet, which must be CONNECT (MQTT-3.1.0-1).
    async fn read_connect(&mut self) -> Result<Option<Box<Connect>>, String> {
        let deadline =
            Instant::now() + Duration::from_secs(self.hub.config.limits.connect_timeout_s);
        loop {
            match rookery_codec::decode(
                &mut self.read_buf,
                ProtocolVersion::V3_1_1,
                self.hub.config.limits.max_packet_size,
            ) {
                Ok(Some(Packet::Connect(connect))) => return Ok(Some(connect)),
                Ok(Some(other)) => {
                    protocol_error("first_packet_not_connect");
                    return Err(format!("first packet was {:?}", other.packet_type()));
                }
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocolVersion(level)) => {
                    // MQTT-3.1.2-2: CONNACK 0x01 in the 3.1.1 form, then close.
                    protocol_error("unsupported_protocol_version");
                    let connack = ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::UnsupportedProtocolVersion,
                        properties: ConnAckProperties::default(),
                    };
                    self.send(&Packet::ConnAck(Box::new(connack)));
                    let _ = self.flush().await;
                    return Err(format!("unsupported protocol level {level}"));
                }
                Err(error) => {
                    protocol_error(decode_error_label(&error));
                    return Err(error.to_string());
                }
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf))
                .await
                .map_err(|_| {
                    metrics::counter!("rookery_connect_timeouts_total").increment(1);
                    "no CONNECT within the connect timeout".to_owned()
                })?;
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => self.hub.stats.received(n),
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Handles CONNECT: validates it, takes the session over in the store and
    /// answers CONNACK. `None` when the connection is refused.
    async fn accept(&mut self, connect: Box<Connect>) -> Option<Session> {
        let hub = self.hub.clone();
        let limits = &hub.config.limits;
        self.version = connect.protocol;
        let v5 = connect.protocol.is_v5();
        let mut connack = ConnAckProperties::default();

        let mut client_id = connect.client_id.to_string();
        if client_id.is_empty() {
            // MQTT-3.1.3-8: 3.1.1 refuses an empty id with a persistent
            // session; 3.1 requires an id.
            if connect.protocol == ProtocolVersion::V3_1 || (!v5 && !connect.clean_start) {
                return self.refuse(ReasonCode::ClientIdentifierNotValid);
            }
            client_id = format!("rookery-{:016x}", rand_id());
            if v5 {
                // MQTT-3.2.2-16.
                connack.assigned_client_identifier = Some(ByteString::from(client_id.as_str()));
            }
        }
        if let Some(will) = &connect.will {
            if will.qos as u8 > limits.maximum_qos {
                return self.refuse(ReasonCode::QoSNotSupported);
            }
            if will.retain && !limits.retain_available {
                return self.refuse(ReasonCode::RetainNotSupported);
            }
            if !topic_within_limits(
                &will.topic,
                limits.max_topic_length,
                limits.max_topic_levels,
            ) {
                return self.refuse(ReasonCode::TopicNameInvalid);
            }
        }
        if connect.properties.authentication.method.is_some() {
            // No enhanced authentication method is offered (MQTT-4.12.0-1).
            return self.refuse(ReasonCode::BadAuthenticationMethod);
        }

        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            NEVER_EXPIRES
        };
        let expiry_s = requested_expiry.min(limits.max_session_expiry_s);
        if v5 && expiry_s != requested_expiry {
            connack.session_expiry_interval = Some(expiry_s);
        }

        let mut keep_alive = limits.server_keep_alive.unwrap_or(connect.keep_alive);
        if v5
            && limits.max_keep_alive < u16::MAX
            && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
        {
            keep_alive = limits.max_keep_alive;
        }
        if v5 && keep_alive != connect.keep_alive {
            connack.server_keep_alive = Some(keep_alive);
        }

        let now = now_ms();
        let will = connect.will.as_ref().map(|will| {
            let mut properties = will.properties.message.clone();
            let expires_at_ms = expiry_at(properties.message_expiry_interval.take(), now);
            let message = Message {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties,
                expires_at_ms,
                origin: Arc::from(client_id.as_str()),
            };
            proto::Will {
                message: Some(message.to_proto()),
                delay_s: will.properties.will_delay_interval.unwrap_or(0),
            }
        });

        let command = proto::Command {
            kind: Some(Kind::Connect(proto::Connect {
                client_id: client_id.clone(),
                edge_id: hub.edge_id.clone(),
                clean_start: connect.clean_start,
                expiry_interval_s: expiry_s,
                will,
                protocol_version: u32::from(connect.protocol.level()),
            })),
        };
        let connected = match hub.store.write_one(command).await {
            Ok(proto::CommandResult {
                kind: Some(ResultKind::Connected(connected)),
            }) => connected,
            Ok(other) => {
                tracing::error!(?other, "unexpected store answer to Connect");
                return self.refuse(ReasonCode::UnspecifiedError);
            }
            Err(error) => {
                tracing::warn!(%error, client_id, "refusing a client: the store is unavailable");
                return self.refuse(ReasonCode::ServerUnavailable);
            }
        };

        let client: ClientId = Arc::from(client_id.as_str());
        let connection_id = hub.next_connection_id();
        let (mailbox, receiver) = Mailbox::new(
            connection_id,
            hub.pause_threshold(),
            usize::from(limits.max_inflight),
        );
        let persistent = expiry_s > 0;
        // MQTT-3.1.4-3: a previous connection here is closed, 0x8E; the
        // index holds exactly the session's subscriptions as stored.
        let session = SessionEntry {
            epoch: connected.epoch,
            persistent,
            mailbox: Some(mailbox.clone()),
            remote_edge: None,
        };
        let subscriptions = connected.subscriptions.iter().map(|subscription| {
            let entry = crate::hub::sub_entry_from_proto(subscription.options.as_ref());
            (subscription.filter.clone(), entry)
        });
        if hub.attach(&client, session, subscriptions).is_err() {
            // A newer connection of the same client won the race.
            return self.refuse(ReasonCode::SessionTakenOver);
        }

        if v5 {
            connack.receive_maximum = NonZeroU16::new(limits.receive_maximum);
            if limits.maximum_qos < 2 {
                connack.maximum_qos = qos_from(u32::from(limits.maximum_qos));
            }
            connack.retain_available = Some(limits.retain_available);
            connack.maximum_packet_size = NonZeroU32::new(limits.max_packet_size);
            connack.topic_alias_maximum = Some(limits.topic_alias_maximum);
            connack.wildcard_subscription_available = Some(limits.wildcard_subscriptions);
            connack.subscription_identifiers_available = Some(limits.subscription_identifiers);
            connack.shared_subscription_available = Some(limits.shared_subscriptions);
        }
        self.send(&Packet::ConnAck(Box::new(ConnAck {
            // MQTT-3.2.2-2/3.
            session_present: connected.session_present,
            reason_code: ReasonCode::Success,
            properties: connack,
        })));

        let client_receive_maximum = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let window = client_receive_maximum.min(limits.max_inflight.max(1));
        let mut outgoing = Outgoing::new(
            usize::from(window),
            limits.max_queued_messages,
            limits.queue_overflow,
            connect.properties.topic_alias_maximum.unwrap_or(0),
            connect
                .properties
                .maximum_packet_size
                .map_or(rookery_codec::MAX_PACKET_SIZE, NonZeroU32::get),
        );
        if persistent || connected.session_present {
            outgoing.resume(connected.queue);
        }
        Some(Session {
            client_id: client,
            epoch: connected.epoch,
            persistent,
            expiry_s,
            requested_expiry_zero: requested_expiry == 0,
            keep_alive,
            connection_id,
            mailbox: receiver,
            outgoing,
            incoming_qos2: HashSet::new(),
            inbound_aliases: HashMap::new(),
            pending: FuturesOrdered::new(),
            discarded: Vec::new(),
            paused_on: Vec::new(),
            paused_until: None,
            own_mailbox: mailbox,
            acks: Vec::new(),
            receipts: Vec::new(),
            releases: Vec::new(),
            refill_due: false,
        })
    }

    /// Answers CONNECT with a refusal (MQTT-3.2.2-6: no session).
    fn refuse(&mut self, reason: ReasonCode) -> Option<Session> {
        metrics::counter!("rookery_connections_refused_total", "reason" => format!("{reason:?}"))
            .increment(1);
        self.send(&Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: reason,
            properties: ConnAckProperties::default(),
        })));
        None
    }

    /// Queues a packet for the next flush.
    fn send(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.version, &mut self.write_buf) {
            tracing::error!(%error, "could not encode a packet");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let len = self.write_buf.len();
        let write = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took no data for the write timeout",
                ));
            }
        }
        self.hub.stats.sent(len);
        if self.write_buf.capacity() > KEPT_WRITE_BUFFER {
            self.write_buf = BytesMut::new();
        } else {
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Sizes the read buffer for the next read: idle connections (most of
    /// them, in a large fleet) keep a small one; one whose last read filled
    /// the buffer gets room for a burst.
    fn prepare_read(&mut self, last_read: usize) {
        let spare = self.read_buf.capacity() - self.read_buf.len();
        if self.read_buf.is_empty()
            && last_read < IDLE_READ_BUFFER / 2
            && self.read_buf.capacity() > IDLE_READ_BUFFER * 4
        {
            self.read_buf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        } else if spare <= last_read / 2 || spare < 64 {
            let want = if last_read >= IDLE_READ_BUFFER / 2 {
                BUSY_READ_BUFFER
            } else {
                IDLE_READ_BUFFER
            };
            self.read_buf.reserve(want);
        }
    }

    /// Closes a connection the server ended: sends FIN, then reads and
    /// discards what the client still sends for a moment, so that the
    /// client reads the DISCONNECT before the socket is gone rather than
    /// a reset caused by its own unread packets.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER;
        let mut discard = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(deadline, self.stream.read(&mut discard)).await
        {
            if n == 0 {
                break;
            }
        }
    }

    /// Tells a 5.0 client why the server closes the connection.
    fn disconnect(&mut self, reason: ReasonCode) {
        if self.version.is_v5() {
            self.send(&Packet::Disconnect(Disconnect::new(reason)));
        }
    }
}

/// The state of a connected session.
struct Session {
    client_id: ClientId,
    epoch: u64,
    persistent: bool,
    expiry_s: u32,
    /// MQTT-3.14.2-2: a DISCONNECT may not raise an expiry that was 0.
    requested_expiry_zero: bool,
    keep_alive: u16,
    connection_id: u64,
    mailbox: MailboxReceiver,
    outgoing: Outgoing,
    /// QoS 2 packet ids received and not yet released (MQTT-4.3.3-9).
    incoming_qos2: HashSet<u16>,
    inbound_aliases: HashMap<u16, ByteString>,
    /// Publishes waiting on the store, answered in order.
    pending: FuturesOrdered<Completion>,
    /// Stored messages dropped as too large for the client, to acknowledge
    /// in the store.
    discarded: Vec<(PacketId, QoS)>,
    /// Backpressure: sessions this client's publishes filled; nothing more
    /// is read from it until they drain or `paused_until` passes.
    paused_on: Vec<Mailbox>,
    paused_until: Option<Instant>,
    /// This connection's own way in, to end it from a detached store write.
    own_mailbox: Mailbox,
    /// Store acknowledgements (PUBACK, PUBCOMP) of the packets read so far,
    /// queued to the store together after the read; nothing waits on them.
    acks: Vec<proto::Command>,
    /// PUBREC records of this read, committed before their PUBRELs go out.
    receipts: Vec<proto::Command>,
    releases: Vec<PacketId>,
    /// An acknowledgement freed a window slot: send more after the read.
    refill_due: bool,
}

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
}

impl Session {
    async fn run(&mut self, conn: &mut Connection) -> End {
        // Read the queue once more: messages queued between the store's
        // Connect and this session's registration were notified to nobody.
        if let Err(end) = Box::pin(self.send_stored(conn, true)).await {
            return end;
        }
        if Box::pin(conn.flush()).await.is_err() {
            return End::Closed;
        }
        // MQTT-3.1.2-22: 1.5 times the keep alive without a packet.
        let keep_alive =
            (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500));
        let far = Duration::from_secs(86_400 * 365);
        let mut deadline = Instant::now() + keep_alive.unwrap_or(far);
        let mut last_read = 0;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            conn.prepare_read(last_read);
            let paused = self.is_paused();
            if paused && self.paused_until.is_none() {
                let pause = Duration::from_millis(conn.hub.config.limits.publisher_pause_ms);
                self.paused_until = Some(Instant::now().checked_add(pause).unwrap_or(deadline));
                metrics::counter!("rookery_publisher_pauses_total").increment(1);
            }
            // One timer: a paused client is not read, so its silence says
            // nothing about keep alive; the pause's end is what is due then.
            let due = match self.paused_until {
                Some(resume_at) if paused => resume_at,
                _ => deadline,
            };
            // Moved only when something is due earlier, or after it fired:
            // moving it on every read would take the timer driver's lock per
            // packet.
            if timer.is_elapsed() || due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let input = tokio::select! {
                read = conn.stream.read_buf(&mut conn.read_buf), if !paused => Input::Read(read),
                mail = self.mailbox.recv() => Input::Mail(mail),
                Some(done) = self.pending.next(), if !self.pending.is_empty() => Input::Completed(done),
                () = &mut timer => if Instant::now() < due {
                    // Set for something earlier that is no longer due.
                    Input::Timer
                } else if paused {
                    Input::Resumed { drained: false }
                } else {
                    Input::KeepAliveExpired
                },
                () = room_in(&self.paused_on), if paused => Input::Resumed { drained: true },
            };
            let outcome = match input {
                Input::Read(Ok(0)) => Err(End::Closed),
                Input::Read(Ok(n)) => {
                    conn.hub.stats.received(n);
                    last_read = n;
                    if let Some(keep_alive) = keep_alive {
                        deadline = Instant::now() + keep_alive;
                    }
                    Box::pin(self.handle_packets(conn)).await
                }
                Input::Read(Err(_)) => Err(End::Closed),
                Input::Mail(Some(mail)) => self.handle_mail(conn, mail).await,
                Input::Mail(None) => Err(End::Shutdown),
                Input::Completed(done) => {
                    // Group commit completes many of this client's publishes
                    // at once: acknowledge every one that is ready, so that
                    // they leave in one write rather than one each.
                    let mut outcome = self.complete(conn, done);
                    while outcome.is_ok() {
                        match self.pending.next().now_or_never() {
                            Some(Some(done)) => outcome = self.complete(conn, done),
                            _ => break,
                        }
                    }
                    outcome
                }
                Input::Timer => Ok(()),
                Input::KeepAliveExpired => {
                    metrics::counter!("rookery_keep_alive_timeouts_total").increment(1);
                    conn.disconnect(ReasonCode::KeepAliveTimeout);
                    Err(End::Abnormal)
                }
                Input::Resumed { drained } => {
                    for mailbox in self.paused_on.drain(..) {
                        // Only a pause that ran out stalls a session: one that
                        // drained may look full again already (its backlog
                        // moves from mailbox to queue in two steps).
                        if !drained && mailbox.is_full() {
                            // Not drained within the pause: its overflow is
                            // dropped from now on instead of holding
                            // publishers back.
                            mailbox.stall();
                            metrics::counter!("rookery_sessions_stalled_total").increment(1);
                            let (mailbox_len, taken, stored) = mailbox.backlog_parts();
                            tracing::debug!(client_id = %self.client_id, mailbox_len, taken, stored, "a session did not drain within the publisher pause");
                        }
                    }
                    self.paused_until = None;
                    if let Some(keep_alive) = keep_alive {
                        deadline = Instant::now() + keep_alive;
                    }
                    // Packets already read wait in the buffer.
                    Box::pin(self.handle_packets(conn)).await
                }
            };
            // Take whatever else is already waiting before writing, so that a
            // burst goes out in one write.
            let outcome = match outcome {
                Ok(()) => self.drain_mailbox(conn).await,
                Err(end) => Err(end),
            };
            // Only a persistent session has a store queue to count.
            let stored = if self.persistent {
                self.outgoing.stored_backlog()
            } else {
                None
            };
            self.mailbox
                .report_taken(self.outgoing.memory_len(), stored);
            // Boxed: kept inline, the write and its timer would enlarge
            // every idle connection's task.
            let flushed = Box::pin(conn.flush()).await;
            match outcome {
                Err(end) => return end,
                Ok(()) if flushed.is_err() => return End::Closed,
                Ok(()) => {}
            }
        }
    }

    async fn drain_mailbox(&mut self, conn: &mut Connection) -> Result<(), End> {
        for _ in 0..1024 {
            match self.mailbox.try_recv() {
                Some(mail) => self.handle_mail(conn, mail).await?,
                None => break,
            }
        }
        Ok(())
    }

    async fn handle_mail(&mut self, conn: &mut Connection, mail: ToConnection) -> Result<(), End> {
        match mail {
            ToConnection::Deliver(delivery) => {
                if !self.outgoing.push(delivery) {
                    conn.hub.stats.dropped("queue_full");
                }
                self.send_ready(conn);
                Ok(())
            }
            ToConnection::Queued => Box::pin(self.send_stored(conn, true)).await,
            ToConnection::Close(reason) => {
                conn.disconnect(reason);
                Err(match reason {
                    ReasonCode::SessionTakenOver => End::TakenOver,
                    ReasonCode::ServerShuttingDown => End::Shutdown,
                    _ => End::Abnormal,
                })
            }
        }
    }

    /// Sends what the window allows from the in-memory queue.
    fn send_ready(&mut self, conn: &mut Connection) {
        let now = now_ms();
        while let Some(sent) = self.outgoing.next_memory(now) {
            self.write_publish(conn, sent);
        }
    }

    /// Reads the store queue of a persistent session (`queued`: the store
    /// says it has more) and sends new entries once their packet identifiers
    /// are recorded (so that a resend after any failure reuses them,
    /// MQTT-4.4.0-1).
    async fn send_stored(&mut self, conn: &mut Connection, queued: bool) -> Result<(), End> {
        if !self.persistent && !self.outgoing.has_stored() {
            return Ok(());
        }
        let hub = conn.hub.clone();
        if self.persistent {
            if queued {
                self.outgoing.store_has_news();
            }
            if let Some(after) = self.outgoing.store_read_from() {
                match hub
                    .store
                    .queue_after(&self.client_id, after, QUEUE_READ)
                    .await
                {
                    Ok(queue) => {
                        let complete = queue.len() < QUEUE_READ;
                        self.outgoing.merge_stored(queue, complete);
                    }
                    Err(error) => {
                        tracing::warn!(%error, client_id = %self.client_id, "reading the session queue failed");
                        return Ok(());
                    }
                }
            }
        }
        let batch = self.outgoing.next_stored(now_ms());
        let mut commands = Vec::new();
        for sent in &batch.fresh {
            if let Some(packet_id) = sent.packet_id {
                commands.push(self.mark_published(sent.seq, packet_id));
            }
        }
        for (seq, packet_id, qos) in &batch.expired {
            // Expired before it could be sent (MQTT-3.3.2-5): recorded as
            // sent and acknowledged, so the store drops it.
            commands.push(self.mark_published(*seq, *packet_id));
            commands.extend(self.ack_commands(*packet_id, *qos));
        }
        // Acknowledgements first: a packet identifier they free may be
        // reused by the records below.
        self.submit_acks(&hub);
        if !commands.is_empty() {
            let exactly_once = batch
                .fresh
                .iter()
                .any(|sent| sent.publish.qos == QoS::ExactlyOnce);
            if exactly_once {
                // A QoS 2 message goes out only with its packet identifier
                // committed: sent again after a failure under another one,
                // a receiver could take it twice.
                self.write_fenced(&hub, commands).await?;
            } else {
                // QoS 1 may arrive twice anyway; the record only has to
                // precede this session's later writes, which submission
                // order guarantees.
                self.submit_detached(&hub, commands);
            }
        }
        for resend in batch.resend {
            match resend {
                Resend::Publish(sent) => self.write_publish(conn, *sent),
                Resend::Release(packet_id) => conn.send(&Packet::PubRel(Ack::new(packet_id))),
            }
        }
        for sent in batch.fresh {
            self.write_publish(conn, sent);
        }
        // Stored messages too large for the client are acknowledged away.
        for (packet_id, qos) in std::mem::take(&mut self.discarded) {
            let commands = self.ack_commands(packet_id, qos);
            self.acks.extend(commands);
        }
        Ok(())
    }

    /// Whether this client is not to be read: its publishes filled other
    /// sessions. Never for its own session, which only its own
    /// acknowledgements (behind the publishes) can drain.
    fn is_paused(&mut self) -> bool {
        let own = self.connection_id;
        self.paused_on
            .retain(|mailbox| mailbox.connection_id != own);
        !self.paused_on.is_empty()
    }

    /// The session ends: what the client acknowledged is recorded, PUBRECs
    /// included (their PUBRELs are not sent; the store resends them).
    fn submit_last_records(&mut self, hub: &Hub) {
        self.submit_acks(hub);
        if !self.receipts.is_empty() {
            let receipts = std::mem::take(&mut self.receipts);
            self.submit_detached(hub, receipts);
        }
    }

    /// Queues the acknowledgements gathered so far to the store.
    fn submit_acks(&mut self, hub: &Hub) {
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            self.submit_detached(hub, acks);
        }
    }

    /// Queues a write that nothing waits for; its place in the store's order
    /// is taken now. If it fails, the session ends (as when an awaited write
    /// fails): carrying on would reuse packet identifiers the store still
    /// holds.
    fn submit_detached(&self, hub: &Hub, commands: Vec<proto::Command>) {
        let write = hub.store.submit(commands);
        let client_id = self.client_id.clone();
        let own = self.own_mailbox.clone();
        tokio::spawn(async move {
            let reason = match write.await {
                Ok(results)
                    if !results
                        .iter()
                        .any(|r| matches!(r.kind, Some(ResultKind::Fenced(_)))) =>
                {
                    return;
                }
                Ok(_) => ReasonCode::SessionTakenOver,
                Err(error) => {
                    tracing::warn!(%error, %client_id, "session write failed");
                    ReasonCode::ImplementationSpecificError
                }
            };
            own.close(reason);
        });
    }

    fn mark_published(&self, seq: u64, packet_id: PacketId) -> proto::Command {
        command(Kind::MarkPublished(proto::MarkPublished {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            seq,
            packet_id: u32::from(packet_id.get()),
        }))
    }

    /// The acknowledgements that complete a message of this QoS.
    fn ack_commands(&self, packet_id: PacketId, qos: QoS) -> Vec<proto::Command> {
        let kinds: &[proto::AckKind] = match qos {
            QoS::ExactlyOnce => &[proto::AckKind::Pubrec, proto::AckKind::Pubcomp],
            _ => &[proto::AckKind::Puback],
        };
        kinds
            .iter()
            .flat_map(|kind| self.acknowledge(packet_id, *kind))
            .collect()
    }

    /// A store write on behalf of this session; a fenced write means another
    /// connection owns the session now.
    async fn write_fenced(&mut self, hub: &Hub, commands: Vec<proto::Command>) -> Result<(), End> {
        match hub.store.write(commands).await {
            Ok(results) => {
                if results
                    .iter()
                    .any(|result| matches!(result.kind, Some(ResultKind::Fenced(_))))
                {
                    return Err(End::TakenOver);
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, client_id = %self.client_id, "session write failed");
                Err(End::Abnormal)
            }
        }
    }

    fn write_publish(&mut self, conn: &mut Connection, sent: Sent) {
        let Sent {
            mut publish,
            packet_id,
            ..
        } = sent;
        publish.packet_id = packet_id;
        let qos = publish.qos;
        let topic = publish.topic.clone();
        if conn.version.is_v5() {
            self.outgoing.apply_alias(&mut publish);
        }
        let packet = Packet::Publish(publish);
        match packet.encode_within(
            conn.version,
            self.outgoing.max_packet_size(),
            &mut conn.write_buf,
        ) {
            Ok(_) => conn.hub.stats.publish_sent(),
            Err(EncodeError::PacketTooLarge { .. }) => {
                // MQTT-3.1.2-25: a packet larger than the client's maximum is
                // discarded as if it had been sent.
                conn.hub.stats.dropped("packet_too_large");
                tracing::debug!(client_id = %self.client_id, %topic, "message larger than the client's maximum packet size dropped");
                if let Some(packet_id) = packet_id
                    && self.outgoing.forget(packet_id) == Some(true)
                {
                    self.discarded.push((packet_id, qos));
                }
            }
            Err(error) => tracing::error!(%error, "could not encode a PUBLISH"),
        }
    }

    async fn handle_packets(&mut self, conn: &mut Connection) -> Result<(), End> {
        let handled = self.decode_and_handle(conn).await;
        if handled.is_err() {
            // Acknowledged by the client before it went: not sent again.
            self.submit_last_records(&conn.hub.clone());
            return handled;
        }
        self.settle_acks(conn).await
    }

    /// What the acknowledgements of one read lead to: their store writes,
    /// PUBRELs once their PUBRECs are recorded, then more messages.
    async fn settle_acks(&mut self, conn: &mut Connection) -> Result<(), End> {
        let hub = conn.hub.clone();
        self.submit_acks(&hub);
        if !self.receipts.is_empty() {
            let receipts = std::mem::take(&mut self.receipts);
            self.write_fenced(&hub, receipts).await?;
            for packet_id in std::mem::take(&mut self.releases) {
                conn.send(&Packet::PubRel(Ack::new(packet_id)));
            }
        }
        if std::mem::take(&mut self.refill_due) {
            self.refill(conn).await?;
        }
        Ok(())
    }

    async fn decode_and_handle(&mut self, conn: &mut Connection) -> Result<(), End> {
        loop {
            let limits = &conn.hub.config.limits;
            let packet = match rookery_codec::decode(
                &mut conn.read_buf,
                conn.version,
                limits.max_packet_size,
            ) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => {
                    protocol_error(decode_error_label(&error));
                    tracing::debug!(client_id = %self.client_id, peer = %conn.peer, %error, "malformed packet");
                    conn.disconnect(error.reason_code());
                    return Err(End::Abnormal);
                }
            };
            self.handle_packet(conn, packet).await?;
            if self.is_paused() {
                // Backpressure: the rest stays in the buffer.
                break;
            }
        }
        Ok(())
    }

    async fn handle_packet(&mut self, conn: &mut Connection, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(publish) => self.on_publish(conn, publish).await,
            Packet::PubAck(ack) => {
                if let Some(stored) = self.outgoing.acknowledged(ack.packet_id, QoS::AtLeastOnce) {
                    if stored {
                        let commands = self.acknowledge(ack.packet_id, proto::AckKind::Puback);
                        self.acks.extend(commands);
                    }
                    self.refill_due = true;
                }
                Ok(())
            }
            Packet::PubRec(ack) => {
                match self
                    .outgoing
                    .received(ack.packet_id, ack.reason_code.is_error())
                {
                    Some((stored, release)) => {
                        if stored {
                            // Recorded before PUBREL goes out (after the
                            // read): after a failure the store resends
                            // PUBREL, never the PUBLISH. A refusing PUBREC
                            // ends the flow.
                            let mut commands =
                                self.acknowledge(ack.packet_id, proto::AckKind::Pubrec);
                            if !release {
                                commands.extend(
                                    self.acknowledge(ack.packet_id, proto::AckKind::Pubcomp),
                                );
                            }
                            self.receipts.extend(commands);
                            if release {
                                self.releases.push(ack.packet_id);
                            }
                        } else if release {
                            conn.send(&Packet::PubRel(Ack::new(ack.packet_id)));
                        }
                        if !release {
                            self.refill_due = true;
                        }
                    }
                    None if conn.version.is_v5() => {
                        conn.send(&Packet::PubRel(Ack {
                            packet_id: ack.packet_id,
                            reason_code: ReasonCode::PacketIdentifierNotFound,
                            properties: AckProperties::default(),
                        }));
                    }
                    None => conn.send(&Packet::PubRel(Ack::new(ack.packet_id))),
                }
                Ok(())
            }
            Packet::PubComp(ack) => {
                if let Some(stored) = self.outgoing.acknowledged(ack.packet_id, QoS::ExactlyOnce) {
                    if stored {
                        let commands = self.acknowledge(ack.packet_id, proto::AckKind::Pubcomp);
                        self.acks.extend(commands);
                    }
                    self.refill_due = true;
                }
                Ok(())
            }
            Packet::PubRel(ack) => self.on_pubrel(conn, ack).await,
            Packet::Subscribe(subscribe) => self.on_subscribe(conn, subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(conn, unsubscribe).await,
            Packet::PingReq => {
                conn.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                let expiry_s = disconnect.properties.session_expiry_interval;
                if self.requested_expiry_zero && expiry_s.is_some_and(|s| s > 0) {
                    // MQTT-3.14.2-2.
                    protocol_error("disconnect_expiry_raised");
                    conn.disconnect(ReasonCode::ProtocolError);
                    return Err(End::Abnormal);
                }
                Err(End::Normal {
                    will: disconnect.reason_code == ReasonCode::DisconnectWithWillMessage,
                    expiry_s,
                })
            }
            Packet::Connect(_) => {
                // MQTT-3.1.0-2: a second CONNECT is a protocol violation.
                protocol_error("second_connect");
                conn.disconnect(ReasonCode::ProtocolError);
                Err(End::Abnormal)
            }
            Packet::Auth(_) => {
                // Without an authentication method in CONNECT, AUTH is a
                // protocol error (MQTT-4.12.0-1).
                protocol_error("auth_without_method");
                conn.disconnect(ReasonCode::ProtocolError);
                Err(End::Abnormal)
            }
            other => {
                protocol_error("server_packet_from_client");
                tracing::debug!(client_id = %self.client_id, packet = ?other.packet_type(), "client sent a server-only packet");
                conn.disconnect(ReasonCode::ProtocolError);
                Err(End::Abnormal)
            }
        }
    }

    fn acknowledge(&self, packet_id: PacketId, kind: proto::AckKind) -> Vec<proto::Command> {
        vec![command(Kind::Acknowledge(proto::Acknowledge {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            packet_id: u32::from(packet_id.get()),
            kind: kind as i32,
        }))]
    }

    /// After an acknowledgement freed a slot: send more.
    async fn refill(&mut self, conn: &mut Connection) -> Result<(), End> {
        self.send_ready(conn);
        if self.outgoing.has_stored_waiting() {
            self.send_stored(conn, false).await?;
        }
        Ok(())
    }

    async fn on_publish(&mut self, conn: &mut Connection, publish: Publish) -> Result<(), End> {
        let hub = conn.hub.clone();
        let limits = &hub.config.limits;
        hub.stats.publish_received();
        if publish.qos as u8 > limits.maximum_qos {
            // MQTT-3.2.2-11.
            protocol_error("qos_not_supported");
            conn.disconnect(ReasonCode::QoSNotSupported);
            return Err(End::Abnormal);
        }
        if publish.retain && !limits.retain_available {
            // MQTT-3.2.2-14.
            protocol_error("retain_not_supported");
            conn.disconnect(ReasonCode::RetainNotSupported);
            return Err(End::Abnormal);
        }
        let topic = match publish.properties.topic_alias.map(NonZeroU16::get) {
            Some(alias) if alias > limits.topic_alias_maximum => {
                // MQTT-3.3.2-9.
                protocol_error("topic_alias_invalid");
                conn.disconnect(ReasonCode::TopicAliasInvalid);
                return Err(End::Abnormal);
            }
            Some(alias) if publish.topic.is_empty() => match self.inbound_aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => {
                    // MQTT-3.3.4-? an alias never set is a protocol error.
                    protocol_error("topic_alias_unknown");
                    conn.disconnect(ReasonCode::ProtocolError);
                    return Err(End::Abnormal);
                }
            },
            Some(alias) => {
                self.inbound_aliases.insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        if publish.qos != QoS::AtMostOnce {
            let waiting = self.pending.len() + self.incoming_qos2.len();
            if waiting >= usize::from(limits.receive_maximum) {
                // MQTT-3.3.4-9.
                protocol_error("receive_maximum_exceeded");
                conn.disconnect(ReasonCode::ReceiveMaximumExceeded);
                return Err(End::Abnormal);
            }
        }
        let packet_id = publish.packet_id;
        if publish.qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
            && self.incoming_qos2.contains(&id.get())
        {
            // MQTT-4.3.3-9: a retry of a QoS 2 PUBLISH not yet released is
            // acknowledged again and not delivered twice.
            conn.send(&Packet::PubRec(Ack::new(id)));
            return Ok(());
        }
        let refused =
            if !topic_within_limits(&topic, limits.max_topic_length, limits.max_topic_levels) {
                Some(ReasonCode::TopicNameInvalid)
            } else if topic.starts_with("$SYS/") || &*topic == "$SYS" {
                // $SYS belongs to the broker.
                Some(ReasonCode::NotAuthorized)
            } else {
                None
            };
        if let Some(reason) = refused {
            hub.stats.dropped("refused");
            self.answer_publish(conn, packet_id, publish.qos, Err(reason));
            return Ok(());
        }
        // A QoS 1/2 publish is acknowledged only by an edge in touch with the
        // store's quorum: cut off, its route table may miss a subscription
        // made elsewhere, and what it queues may never commit.
        if publish.qos != QoS::AtMostOnce && !hub.store.in_contact().await {
            hub.stats.dropped("store_unreachable");
            return self.fail_publish(
                conn,
                packet_id,
                publish.qos,
                ReasonCode::ImplementationSpecificError,
            );
        }

        let now = now_ms();
        let message = Arc::new(Message::from_publish(
            &publish,
            topic,
            self.client_id.clone(),
            now,
        ));
        let mut routes = hub.route(&message);
        let retain = message.retain;
        // A QoS 2 publish of a persistent session may be a retry the store
        // already took (after a failure, on another edge): it goes to other
        // edges only once the store has said it is new.
        let forward_after_store = publish.qos == QoS::ExactlyOnce && self.persistent;
        let forwarded = !routes.remote.is_empty();
        let later = if forward_after_store {
            std::mem::take(&mut routes.remote)
        } else {
            Vec::new()
        };
        // Sessions online on other edges get it now; a QoS 1/2 publisher's
        // acknowledgement waits until each of those edges has it.
        let confirmations = hub.forward(
            &message,
            std::mem::take(&mut routes.remote),
            publish.qos != QoS::AtMostOnce,
        );
        if retain {
            hub.retain(&message);
        }
        // A QoS 2 publish of a persistent session is recorded in the store
        // so that a retry after a failure is not accepted twice.
        let incoming = (publish.qos == QoS::ExactlyOnce && self.persistent)
            .then_some(packet_id)
            .flatten()
            .map(|id| proto::IncomingQos2 {
                client_id: self.client_id.to_string(),
                epoch: self.epoch,
                packet_id: u32::from(id.get()),
            });
        let needs_store = !routes.durable.is_empty() || incoming.is_some() || retain;
        if publish.qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
        {
            self.incoming_qos2.insert(id.get());
        }
        if !needs_store && confirmations.is_empty() && later.is_empty() {
            if routes.local.is_empty() && routes.durable.is_empty() && !forwarded {
                metrics::counter!("rookery_messages_unrouted_total").increment(1);
            }
            hub.deliver_local(routes.local, &mut self.paused_on);
            self.answer_publish(conn, packet_id, publish.qos, Ok(()));
            return Ok(());
        }
        let commands = hub.store_commands(&message, retain, routes.durable, incoming);
        let store = hub.store.clone();
        let qos = publish.qos;
        if qos == QoS::AtMostOnce {
            // The QoS 0 path never waits on the store: the retained copy is
            // written behind it.
            hub.deliver_local(routes.local, &mut self.paused_on);
            tokio::spawn(async move {
                if let Err(error) = store.write(commands).await {
                    tracing::warn!(%error, "storing a retained message failed");
                }
            });
            return Ok(());
        }
        let local = routes.local;
        let durable = PendingEnqueue::new(routes.durable_mailboxes, &mut self.paused_on);
        let hub = hub.clone();
        self.pending.push_back(Box::pin(async move {
            // Each edge holding a matching session must have it before the
            // acknowledgement, within the store's write bound.
            let bound = hub.store.write_timeout();
            let forwarded = async {
                let all = futures::future::join_all(confirmations);
                match tokio::time::timeout(bound, all).await {
                    Ok(confirmed) => confirmed.into_iter().all(|c| c == Ok(true)),
                    Err(_) => false,
                }
            };
            let written = async {
                if commands.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.write(commands).await
                }
            };
            let (written, mut forwarded) = futures::future::join(written, forwarded).await;
            let outcome = match written {
                Ok(results) => {
                    hub.count_store_drops(&results);
                    publish_outcome(&results)
                }
                Err(StoreUnavailable::Write(_) | StoreUnavailable::Read(_)) => Outcome::Unknown,
            };
            if outcome == Outcome::Done && !later.is_empty() {
                let confirmations = hub.forward(&message, later, true);
                let all = futures::future::join_all(confirmations);
                forwarded &= match tokio::time::timeout(bound, all).await {
                    Ok(confirmed) => confirmed.into_iter().all(|c| c == Ok(true)),
                    Err(_) => false,
                };
            }
            let outcome = if outcome == Outcome::Done && !forwarded {
                metrics::counter!("rookery_forward_unconfirmed_publishes_total").increment(1);
                Outcome::Unknown
            } else {
                outcome
            };
            Completed {
                packet_id,
                qos,
                local,
                _enqueuing: durable,
                outcome,
            }
        }));
        Ok(())
    }

    /// Sends the acknowledgement of a publish once it is routed (and stored
    /// where it had to be).
    fn complete(&mut self, conn: &mut Connection, done: Completed) -> Result<(), End> {
        match done.outcome {
            Outcome::Done => {
                conn.hub.deliver_local(done.local, &mut self.paused_on);
                self.answer_publish(conn, done.packet_id, done.qos, Ok(()));
                Ok(())
            }
            Outcome::Duplicate => {
                self.answer_publish(conn, done.packet_id, done.qos, Ok(()));
                Ok(())
            }
            Outcome::Refused(reason) => self.fail_publish(conn, done.packet_id, done.qos, reason),
            Outcome::Unknown if done.qos == QoS::ExactlyOnce => {
                // A refusal would free the packet identifier while the store
                // may hold the message under it: the client would reuse it
                // for a new message, which the store would then take for a
                // retry. Closing keeps the identifier: the client sends the
                // same PUBLISH again (DUP) and the store knows what it has.
                metrics::counter!("rookery_publishes_unconfirmed_total").increment(1);
                conn.disconnect(ReasonCode::ImplementationSpecificError);
                Err(End::Abnormal)
            }
            Outcome::Unknown => {
                metrics::counter!("rookery_publishes_unconfirmed_total").increment(1);
                self.fail_publish(
                    conn,
                    done.packet_id,
                    done.qos,
                    ReasonCode::ImplementationSpecificError,
                )
            }
        }
    }

    /// Tells the client its QoS 1/2 publish was not taken: a reason code in
    /// 5.0; 3.x has none, and acknowledging would claim what is not true, so
    /// the connection closes and the client sends it again.
    fn fail_publish(
        &mut self,
        conn: &mut Connection,
        packet_id: Option<PacketId>,
        qos: QoS,
        reason: ReasonCode,
    ) -> Result<(), End> {
        if conn.version.is_v5() {
            self.answer_publish(conn, packet_id, qos, Err(reason));
            return Ok(());
        }
        if qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
        {
            self.incoming_qos2.remove(&id.get());
        }
        Err(End::Abnormal)
    }

    fn answer_publish(
        &mut self,
        conn: &mut Connection,
        packet_id: Option<PacketId>,
        qos: QoS,
        result: Result<(), ReasonCode>,
    ) {
        let Some(packet_id) = packet_id else {
            return;
        };
        let reason_code = match result {
            Ok(()) => ReasonCode::Success,
            Err(reason) => reason,
        };
        if reason_code.is_error() && qos == QoS::ExactlyOnce {
            self.incoming_qos2.remove(&packet_id.get());
        }
        let ack = Ack {
            packet_id,
            // 3.x has no reason codes: a refused message is acknowledged and
            // dropped, as Mosquitto does.
            reason_code: if conn.version.is_v5() {
                reason_code
            } else {
                ReasonCode::Success
            },
            properties: AckProperties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => conn.send(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => conn.send(&Packet::PubRec(ack)),
        }
    }

    async fn on_pubrel(&mut self, conn: &mut Connection, ack: Ack) -> Result<(), End> {
        let known = self.incoming_qos2.remove(&ack.packet_id.get());
        if self.persistent {
            // Released in the store before PUBCOMP: the id may then be
            // reused for a new message.
            let commands = vec![command(Kind::ReleaseIncoming(proto::ReleaseIncoming {
                client_id: self.client_id.to_string(),
                epoch: self.epoch,
                packet_id: u32::from(ack.packet_id.get()),
            }))];
            self.write_fenced(&conn.hub.clone(), commands).await?;
        }
        let reason_code = if known || self.persistent || !conn.version.is_v5() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        conn.send(&Packet::PubComp(Ack {
            packet_id: ack.packet_id,
            reason_code,
            properties: AckProperties::default(),
        }));
        Ok(())
    }

    async fn on_subscribe(
        &mut self,
        conn: &mut Connection,
        subscribe: Subscribe,
    ) -> Result<(), End> {
        let hub = conn.hub.clone();
        let limits = &hub.config.limits;
        let v5 = conn.version.is_v5();
        let subscription_id = subscribe
            .properties
            .subscription_identifier
            .map_or(0, NonZeroU32::get);
        if subscription_id != 0 && !limits.subscription_identifiers {
            protocol_error("subscription_identifiers_not_supported");
            conn.disconnect(ReasonCode::SubscriptionIdentifiersNotSupported);
            return Err(End::Abnormal);
        }
        let mut reason_codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut accepted = Vec::new();
        for subscription in &subscribe.subscriptions {
            let filter = subscription.filter.as_ref();
            let shared = SharedFilter::parse(filter);
            let topic_filter = shared.as_ref().map_or(filter, |shared| shared.filter);
            let refusal = if validate_topic_filter(filter).is_err()
                || !topic_within_limits(filter, limits.max_topic_length, limits.max_topic_levels)
            {
                Some(ReasonCode::TopicFilterInvalid)
            } else if shared.is_some() && subscription.options.no_local {
                // MQTT-3.8.3-4.
                protocol_error("no_local_on_shared_subscription");
                conn.disconnect(ReasonCode::ProtocolError);
                return Err(End::Abnormal);
            } else if shared.is_some() && !limits.shared_subscriptions {
                Some(ReasonCode::SharedSubscriptionsNotSupported)
            } else if !limits.wildcard_subscriptions && topic_filter.contains(['+', '#']) {
                Some(ReasonCode::WildcardSubscriptionsNotSupported)
            } else {
                None
            };
            match refusal {
                Some(reason) => reason_codes.push(if v5 {
                    reason
                } else {
                    ReasonCode::UnspecifiedError
                }),
                None => {
                    let mut options = subscription.options;
                    // MQTT-3.8.4-? the granted QoS is at most the server's.
                    options.qos = options
                        .qos
                        .min(qos_from(u32::from(limits.maximum_qos)).unwrap_or(QoS::ExactlyOnce));
                    reason_codes.push(ReasonCode::granted(options.qos));
                    accepted.push((
                        subscription.filter.clone(),
                        SubEntry {
                            options,
                            subscription_id,
                        },
                    ));
                }
            }
        }
        let mut existed = vec![false; accepted.len()];
        if !accepted.is_empty() {
            // In effect at once: a message published by another client while
            // the store commits this SUBSCRIBE is delivered (clients expect
            // what Mosquitto does). Undone if the store refuses.
            let replaced: Vec<Option<SubEntry>> = accepted
                .iter()
                .map(|(filter, entry)| hub.subscribe(&self.client_id, filter, *entry))
                .collect();
            let command = command(Kind::Subscribe(proto::Subscribe {
                client_id: self.client_id.to_string(),
                epoch: self.epoch,
                subscriptions: accepted
                    .iter()
                    .map(|(filter, entry)| proto::Subscription {
                        filter: filter.to_string(),
                        options: Some(crate::hub::sub_entry_to_proto(entry)),
                    })
                    .collect(),
            }));
            match hub.store.write(vec![command]).await {
                Ok(results) => match results.into_iter().next().and_then(|r| r.kind) {
                    Some(ResultKind::Subscribed(subscribed)) => existed = subscribed.existed,
                    Some(ResultKind::Fenced(_)) => return Err(End::TakenOver),
                    other => {
                        tracing::warn!(?other, "unexpected store answer to Subscribe");
                        return Err(End::Abnormal);
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, client_id = %self.client_id, "subscribe failed");
                    for code in &mut reason_codes {
                        if !code.is_error() {
                            *code = ReasonCode::UnspecifiedError;
                        }
                    }
                    for ((filter, _), previous) in accepted.iter().zip(replaced) {
                        match previous {
                            Some(previous) => hub.subscribe(&self.client_id, filter, previous),
                            None => hub.unsubscribe(&self.client_id, filter),
                        };
                    }
                    accepted.clear();
                }
            }
        }
        metrics::gauge!("rookery_subscriptions").set(hub.subscription_count() as f64);
        conn.send(&Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            properties: AckProperties::default(),
        }));
        // Retained messages follow the SUBACK (MQTT-3.8.4-4's order),
        // never for shared subscriptions.
        let now = now_ms();
        for ((filter, entry), existed) in accepted
            .iter()
            .zip(existed.iter().copied().chain(std::iter::repeat(false)))
        {
            let send = match entry.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if !send || SharedFilter::parse(filter).is_some() {
                continue;
            }
            for message in hub.retained_for(filter, now) {
                let delivery = Delivery {
                    qos: message.qos.min(entry.options.qos),
                    // MQTT-3.3.1-9: sent because retained, so RETAIN is 1.
                    retain: true,
                    subscription_ids: if entry.subscription_id != 0 {
                        vec![entry.subscription_id]
                    } else {
                        Vec::new()
                    },
                    message,
                    shared_group: None,
                };
                if !self.outgoing.push(delivery) {
                    hub.stats.dropped("queue_full");
                }
            }
        }
        self.send_ready(conn);
        Ok(())
    }

    async fn on_unsubscribe(
        &mut self,
        conn: &mut Connection,
        unsubscribe: Unsubscribe,
    ) -> Result<(), End> {
        let hub = conn.hub.clone();
        let command = command(Kind::Unsubscribe(proto::Unsubscribe {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            filters: unsubscribe
                .filters
                .iter()
                .map(ToString::to_string)
                .collect(),
        }));
        let existed = match hub.store.write(vec![command]).await {
            Ok(results) => match results.into_iter().next().and_then(|r| r.kind) {
                Some(ResultKind::Unsubscribed(unsubscribed)) => unsubscribed.existed,
                Some(ResultKind::Fenced(_)) => return Err(End::TakenOver),
                other => {
                    tracing::warn!(?other, "unexpected store answer to Unsubscribe");
                    return Err(End::Abnormal);
                }
            },
            Err(error) => {
                tracing::warn!(%error, client_id = %self.client_id, "unsubscribe failed");
                return Err(End::Abnormal);
            }
        };
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for (index, filter) in unsubscribe.filters.iter().enumerate() {
            let removed = hub.unsubscribe(&self.client_id, filter).is_some();
            let existed = existed.get(index).copied().unwrap_or(removed) || removed;
            reason_codes.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        metrics::gauge!("rookery_subscriptions").set(hub.subscription_count() as f64);
        conn.send(&Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes,
            properties: AckProperties::default(),
        }));
        Ok(())
    }

    /// The shared-subscription messages this session will not acknowledge:
    /// in its queue, in flight, or still in its mailbox.
    fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = self.outgoing.take_shared();
        while let Some(next) = self.mailbox.try_recv() {
            if let ToConnection::Deliver(delivery) = next
                && delivery.shared_group.is_some()
            {
                taken.push(delivery);
            }
        }
        taken
    }

    /// Records how the connection ended: in the store (will, expiry) and in
    /// the hub's registry.
    async fn finish(&mut self, hub: &Arc<Hub>, end: End) {
        // Acknowledged by the client: not to be sent again.
        self.submit_last_records(hub);
        let (publish_will, expiry_s) = match end {
            End::TakenOver | End::Shutdown => {
                let persistent = self.persistent;
                hub.detach(&self.client_id, self.connection_id, persistent);
                if !persistent {
                    hub.redistribute(self.take_shared());
                }
                return;
            }
            End::Normal { will, expiry_s } => (will, expiry_s.unwrap_or(self.expiry_s)),
            End::Abnormal | End::Closed => (true, self.expiry_s),
        };
        let expiry_s = expiry_s.min(hub.config.limits.max_session_expiry_s);
        let persistent = expiry_s > 0;
        hub.detach(&self.client_id, self.connection_id, persistent);
        if !persistent {
            hub.redistribute(self.take_shared());
        }
        let command = command(Kind::Disconnect(proto::Disconnect {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            expiry_interval_s: expiry_s,
            publish_will,
        }));
        if let Err(error) = hub.store.write(vec![command]).await {
            tracing::warn!(%error, client_id = %self.client_id, "recording a disconnect failed");
        }
    }
}

/// Waits until none of `mailboxes` is full.
async fn room_in(mailboxes: &[Mailbox]) {
    for mailbox in mailboxes {
        mailbox.room().await;
    }
}

fn command(kind: Kind) -> proto::Command {
    proto::Command { kind: Some(kind) }
}

/// Counts a protocol violation by kind.
fn protocol_error(reason: &'static str) {
    metrics::counter!("rookery_protocol_errors_total", "reason" => reason).increment(1);
}

fn decode_error_label(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::PacketTooLarge { .. } => "packet_too_large",
        DecodeError::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
        _ => "malformed_packet",
    }
}

/// Whether a topic name or filter is within the configured length and depth.
fn topic_within_limits(topic: &str, max_length: usize, max_levels: usize) -> bool {
    topic.len() <= max_length && topic.split('/').count() <= max_levels
}

/// A random 64-bit value for assigned client identifiers.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
