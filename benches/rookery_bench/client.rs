//! One benchmark client: a lean MQTT client on tokio built on the codec.
//!
//! Each client is one task that owns its connection and runs one loop
//! ([`Client::drive`]): it reads whatever arrived, decodes every whole packet
//! in the buffer and answers it (acknowledgements go into the write buffer),
//! writes the write buffer in as few system calls as the socket takes, and
//! fills that buffer with new PUBLISH packets as the rate and the in-flight
//! window allow. A publish is a copy of a packet encoded once by the codec
//! with its packet identifier, sequence number and send time patched in: no
//! allocation per message on either side.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rookery_codec::{
    Ack, ByteString, ConnAck, Connect, ConnectProperties, DecodeError, Disconnect, EncodeError,
    MAX_PACKET_SIZE, Packet, ProtocolVersion, Publish, QoS, ReasonCode, decode,
};
use rookery_testkit::{at, connect_packet, publish_packet, subscribe_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

use crate::cli::{Mode, Settings};
use crate::payload::{self, Header};
use crate::tracker::SeqTracker;
use crate::transport::{DialError, Dialer, Transport};

/// Most bytes of new publishes queued for one write.
const MAX_BATCH: usize = 64 * 1024;
/// Read buffer growth for clients that carry messages.
const READ_CHUNK: usize = 64 * 1024;
/// Read buffer growth for idle clients.
const IDLE_READ_CHUNK: usize = 256;
/// Latency samples a subscriber collects before it adds them to the
/// process's histogram under its lock.
const LATENCY_BATCH: usize = 1024;
/// Longest latency the histogram holds: one hour, in nanoseconds.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// How often a busy client updates the process-wide counters the drain
/// watches: often enough for the drain, rarely enough that clients on
/// different threads do not contend for them.
pub const SYNC_NS: u64 = 10_000_000;
/// Time allowed to say goodbye (DISCONNECT) when a run ends.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong with one client's connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP, TLS or WebSocket setup failed.
    #[error("{0}")]
    Dial(#[from] DialError),
    /// The connection failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// A step took longer than --connect-timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The broker closed the connection.
    #[error("broker closed the connection")]
    Closed,
    /// CONNACK refused the connection.
    #[error("CONNACK refused: {0:?}")]
    Refused(ReasonCode),
    /// SUBACK refused the subscription.
    #[error("SUBACK refused: {0:?}")]
    SubscribeRefused(ReasonCode),
    /// The broker sent DISCONNECT.
    #[error("broker sent DISCONNECT: {0:?}")]
    Disconnected(ReasonCode),
    /// The broker sent bytes that are not a valid packet.
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a topic or payload too large).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// The broker sent a packet a client never expects.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The broker's Maximum QoS is below --qos.
    #[error("broker grants at most QoS {0}")]
    QosNotAvailable(u8),
}

impl ClientError {
    /// The error as counted in the report: connections failing the same way
    /// give the same text (OS errors carry no addresses or ports).
    pub fn kind(&self) -> String {
        self.to_string()
    }
}

/// Where the run is; the process's coordinator moves every client along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and subscribing.
    Setup,
    /// Publishing from `start` until `until` (and, for subscribers, the clock
    /// that --reconnect-at counts from).
    Publish {
        /// When publishing starts.
        start: Instant,
        /// When it stops.
        until: Instant,
    },
    /// Say goodbye and report.
    Disconnect,
}

/// What a client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Connects and stays connected.
    Idle,
    /// Publishes to a topic.
    Publisher {
        /// The topic.
        topic: String,
    },
    /// Subscribes to a filter.
    Subscriber {
        /// The filter.
        filter: String,
    },
}

/// One client to run.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Index within its role: the `%i` of its topic or filter, and the
    /// publisher id in its payloads.
    pub index: u32,
    /// Number over all clients of the run: picks the source address.
    pub client_no: u64,
    /// MQTT client identifier.
    pub client_id: String,
    /// What it does.
    pub role: Role,
}

/// The first connection's outcome, sent once per client to the launcher.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `None` when the client connected (and subscribed); else the error kind.
    pub error: Option<String>,
    /// When, in nanoseconds since the Unix epoch.
    pub at_ns: u64,
}

/// What every client of a process shares.
#[derive(Debug)]
pub struct Shared {
    /// The run's settings.
    pub settings: Arc<Settings>,
    /// Opens connections.
    pub dialer: Dialer,
    /// Stamped in every payload.
    pub run_id: u32,
    /// The run whose messages subscribers count; other runs' are foreign.
    /// `None` (the `sub` scenario) counts every run's, each publisher of
    /// each run as its own source.
    pub accept_run: Option<u32>,
    /// Bounds the connections being set up at once.
    pub connecting: Arc<Semaphore>,
    /// When a subscriber last received a message, nanoseconds since the
    /// Unix epoch; clients update it at most every [`SYNC_NS`] while busy.
    pub last_receive_ns: AtomicU64,
    /// QoS 1 and 2 publishes not yet fully acknowledged, all publishers;
    /// exact once publishing has ended, up to [`SYNC_NS`] behind before.
    pub unacked: AtomicI64,
    /// End-to-end latency of every received benchmark message, nanoseconds.
    pub latency: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Shared state for a process's clients.
    pub fn new(settings: Arc<Settings>, dialer: Dialer, run_id: u32) -> Self {
        let connecting = Arc::new(Semaphore::new(settings.max_connecting as usize));
        let accept_run = (!matches!(settings.mode, Mode::Sub { .. })).then_some(run_id);
        Self {
            accept_run,
            settings,
            dialer,
            run_id,
            connecting,
            last_receive_ns: AtomicU64::new(0),
            unacked: AtomicI64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }
}

/// An empty latency histogram: 1 ns to an hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds within hdrhistogram's limits: creation cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds"))
}

/// Publisher counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubCounts {
    /// PUBLISH packets written.
    pub sent: u64,
    /// QoS 1 and 2 publishes whose flow completed (PUBACK, or PUBCOMP).
    pub acked: u64,
    /// Publishes the broker answered with an error reason code (5.0).
    pub rejected: u64,
    /// QoS 1 and 2 publishes still unacknowledged at the end.
    pub unacked: u64,
    /// Acknowledgements for packet identifiers not in flight.
    pub unexpected_acks: u64,
}

/// A message source: a publisher of a run. One run's sources are its
/// publishers; a `sub` run may hear several `pub` runs at once.
pub fn source_key(run_id: u32, publisher: u32) -> u64 {
    (u64::from(run_id) << 32) | u64::from(publisher)
}

/// Who receives: a subscriber on its own, or a shared group as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReceiverKey {
    /// An ordinary subscriber, by index.
    Plain(u32),
    /// A shared subscription, by its whole `$share/{group}/{filter}`.
    Shared(String),
}

/// What a subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct SubResult {
    /// Per source (see [`source_key`]), the sequence numbers received.
    pub trackers: Vec<(u64, SeqTracker)>,
    /// PUBLISH packets delivered (QoS 2 re-sends before PUBREL excluded).
    pub received: u64,
    /// Of those, payloads of other runs or not benchmark payloads at all.
    pub foreign: u64,
}

/// A client's account at the end of the run.
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// Its role.
    pub role: Role,
    /// Why the connection ended early after it was ready, if it did.
    pub error: Option<String>,
    /// Publisher counters.
    pub publish: PubCounts,
    /// Who receives, for subscribers.
    pub receiver: Option<ReceiverKey>,
    /// Subscriber results.
    pub subscribe: SubResult,
    /// When it first received a message, nanoseconds since the Unix epoch
    /// (0: never).
    pub first_receive_ns: u64,
    /// When it last received a message.
    pub last_receive_ns: u64,
    /// Reconnections made to resume the session.
    pub reconnects: u64,
    /// Of those, how many found the session (CONNACK Session Present).
    pub resumed: u64,
}

/// Packet identifiers in use: one bit for each of the 65,535.
#[derive(Debug, Clone)]
struct IdSet(Box<[u64]>);

impl IdSet {
    fn new() -> Self {
        Self(vec![0; 1024].into_boxed_slice())
    }

    fn slot(id: u16) -> (usize, u64) {
        (usize::from(id >> 6), 1 << (id & 63))
    }

    /// Adds `id`; false if it was there.
    fn insert(&mut self, id: u16) -> bool {
        let (word, bit) = Self::slot(id);
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    /// Removes `id`; false if it was not there.
    fn remove(&mut self, id: u16) -> bool {
        let (word, bit) = Self::slot(id);
        let present = self.0[word] & bit != 0;
        self.0[word] &= !bit;
        present
    }

    fn contains(&self, id: u16) -> bool {
        let (word, bit) = Self::slot(id);
        self.0[word] & bit != 0
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }
}

/// A hasher for publisher ids: one multiplication.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A PUBLISH encoded once, with where its per-message fields sit.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// The whole packet.
    pub bytes: Vec<u8>,
    /// Offset of the packet identifier (QoS 1 and 2).
    pub packet_id_at: Option<usize>,
    /// Offset of the payload.
    pub payload_at: usize,
}

impl PublishTemplate {
    /// Encodes the PUBLISH publisher `publisher` sends to `topic`.
    pub fn new(
        version: ProtocolVersion,
        qos: QoS,
        topic: &str,
        size: usize,
        publisher: u32,
        run_id: u32,
    ) -> Result<Self, EncodeError> {
        let mut payload = vec![0; size];
        Header {
            run_id,
            publisher,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut payload);
        // Packet identifier 1 is a placeholder: each copy gets its own.
        let packet = Packet::Publish(publish_packet(topic, qos, 1, &payload));
        let mut bytes = BytesMut::new();
        packet.encode(version, &mut bytes)?;
        // The fixed header: one byte, then the remaining length's 1 to 4 bytes.
        let length_bytes = bytes[1..]
            .iter()
            .position(|byte| byte & 0x80 == 0)
            .map_or(4, |at| at + 1);
        let header_len = 1 + length_bytes;
        Ok(Self {
            packet_id_at: (qos != QoS::AtMostOnce).then_some(header_len + 2 + topic.len()),
            payload_at: bytes.len() - size,
            bytes: bytes.to_vec(),
        })
    }
}

/// A publisher's state.
#[derive(Debug)]
struct Publisher {
    template: PublishTemplate,
    qos: QoS,
    /// In-flight window: --inflight, lowered by the broker's Receive Maximum.
    window: u32,
    inflight: u32,
    rate: Option<f64>,
    /// The publishing window, once the phase says so.
    start: Option<Instant>,
    until: Option<Instant>,
    active: bool,
    seq: u64,
    next_id: u16,
    /// QoS 1: awaiting PUBACK; QoS 2: awaiting PUBREC.
    awaiting_ack: Option<IdSet>,
    /// QoS 2: PUBREL sent, awaiting PUBCOMP.
    awaiting_comp: Option<IdSet>,
    counts: PubCounts,
}

impl Publisher {
    /// Queues as many publishes as the batch size, the window and the rate
    /// allow now; returns how many.
    fn fill(&mut self, wbuf: &mut BytesMut, now: Instant) -> u64 {
        if !self.active {
            return 0;
        }
        let (Some(start), Some(until)) = (self.start, self.until) else {
            return 0;
        };
        if now >= until {
            self.active = false;
            return 0;
        }
        let len = self.template.bytes.len();
        let room = MAX_BATCH.saturating_sub(wbuf.len()) / len;
        let mut n = if room == 0 && wbuf.is_empty() {
            1
        } else {
            room
        } as u64;
        if self.qos != QoS::AtMostOnce {
            n = n.min(u64::from(self.window.saturating_sub(self.inflight)));
        }
        if let Some(rate) = self.rate {
            let due = (now.saturating_duration_since(start).as_secs_f64() * rate) as u64 + 1;
            n = n.min(due.saturating_sub(self.seq));
        }
        if n == 0 {
            return 0;
        }
        let sent_ns = payload::now_ns();
        wbuf.reserve(len * n as usize);
        let mut queued = 0;
        for _ in 0..n {
            let id = match self.template.packet_id_at {
                Some(_) => match self.allocate_id() {
                    Some(id) => Some(id),
                    None => break,
                },
                None => None,
            };
            let at = wbuf.len();
            wbuf.extend_from_slice(&self.template.bytes);
            let packet = &mut wbuf[at..];
            if let (Some(id), Some(id_at)) = (id, self.template.packet_id_at) {
                packet[id_at..id_at + 2].copy_from_slice(&id.to_be_bytes());
            }
            payload::stamp(&mut packet[self.template.payload_at..], self.seq, sent_ns);
            self.seq += 1;
            queued += 1;
        }
        self.counts.sent += queued;
        if self.qos != QoS::AtMostOnce {
            self.inflight += queued as u32;
        }
        queued
    }

    /// The next packet identifier not in flight.
    fn allocate_id(&mut self) -> Option<u16> {
        let awaiting = self.awaiting_ack.as_mut()?;
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            let in_comp = self
                .awaiting_comp
                .as_ref()
                .is_some_and(|set| set.contains(id));
            if !in_comp && awaiting.insert(id) {
                return Some(id);
            }
        }
        None
    }

    /// When the next publish is due, if the publisher waits for time (not
    /// for acknowledgements, not for the socket).
    fn next_due(&self) -> Option<Instant> {
        if !self.active {
            return None;
        }
        let until = self.until?;
        let due = match (self.rate, self.start) {
            (Some(rate), Some(start))
                if self.qos == QoS::AtMostOnce || self.inflight < self.window =>
            {
                Some(start + Duration::from_secs_f64(self.seq as f64 / rate))
            }
            _ => None,
        };
        Some(due.map_or(until, |due| due.min(until)))
    }

    /// PUBACK (QoS 1); true when it completed a flow.
    fn on_puback(&mut self, ack: &Ack) -> bool {
        let completed = self.qos == QoS::AtLeastOnce
            && self
                .awaiting_ack
                .as_mut()
                .is_some_and(|set| set.remove(ack.packet_id.get()));
        if completed {
            self.complete(ack.reason_code);
        } else {
            self.counts.unexpected_acks += 1;
        }
        completed
    }

    /// PUBREC (QoS 2): answers PUBREL unless the broker refused the message;
    /// true when a refusal completed the flow.
    fn on_pubrec(
        &mut self,
        ack: &Ack,
        version: ProtocolVersion,
        wbuf: &mut BytesMut,
    ) -> Result<bool, ClientError> {
        let id = ack.packet_id.get();
        let (Some(awaiting), Some(comp)) = (&mut self.awaiting_ack, &mut self.awaiting_comp) else {
            self.counts.unexpected_acks += 1;
            return Ok(false);
        };
        if awaiting.remove(id) {
            if ack.reason_code.is_error() {
                // MQTT-4.3.3: a PUBREC with an error ends the flow.
                self.complete(ack.reason_code);
                return Ok(true);
            }
            comp.insert(id);
        } else if !comp.contains(id) {
            self.counts.unexpected_acks += 1;
            return Ok(false);
        }
        Packet::PubRel(Ack::new(ack.packet_id)).encode(version, wbuf)?;
        Ok(false)
    }

    /// PUBCOMP (QoS 2); true when it completed a flow.
    fn on_pubcomp(&mut self, ack: &Ack) -> bool {
        let completed = self
            .awaiting_comp
            .as_mut()
            .is_some_and(|set| set.remove(ack.packet_id.get()));
        if completed {
            self.complete(ack.reason_code);
        } else {
            self.counts.unexpected_acks += 1;
        }
        completed
    }

    fn complete(&mut self, reason: ReasonCode) {
        self.inflight = self.inflight.saturating_sub(1);
        if reason.is_error() {
            self.counts.rejected += 1;
        } else {
            self.counts.acked += 1;
        }
    }
}

/// A subscriber's state.
#[derive(Debug)]
struct Subscriber {
    filter: String,
    qos: QoS,
    /// QoS 2 publishes received and PUBREC'd, awaiting PUBREL: a re-send of
    /// one of them is not delivered again.
    awaiting_rel: Option<IdSet>,
    trackers: HashMap<u64, SeqTracker, BuildHasherDefault<IdHasher>>,
    latencies: Vec<u64>,
    received: u64,
    foreign: u64,
    /// The SUBACK awaited, and by when.
    suback_due: Option<Instant>,
    /// When to drop the connection and resume the session, once.
    reconnect_at: Option<Instant>,
    reconnect_done: bool,
}

impl Subscriber {
    /// Delivers one PUBLISH; returns false for a QoS 2 re-send not delivered again.
    fn on_publish(
        &mut self,
        publish: &Publish,
        run_id: Option<u32>,
        now_ns: u64,
        version: ProtocolVersion,
        wbuf: &mut BytesMut,
    ) -> Result<bool, ClientError> {
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(id)) => {
                Packet::PubAck(Ack::new(id)).encode(version, wbuf)?;
            }
            (QoS::ExactlyOnce, Some(id)) => {
                Packet::PubRec(Ack::new(id)).encode(version, wbuf)?;
                let awaiting = self.awaiting_rel.get_or_insert_with(IdSet::new);
                if !awaiting.insert(id.get()) {
                    return Ok(false);
                }
            }
            // The codec guarantees a packet identifier exactly for QoS 1 and 2.
            (_, None) => return Err(ClientError::Protocol("PUBLISH without packet identifier")),
        }
        self.received += 1;
        match Header::read(&publish.payload) {
            Ok(header)
                if run_id.is_none_or(|run_id| header.run_id == run_id) && header.seq < u64::MAX =>
            {
                self.trackers
                    .entry(source_key(header.run_id, header.publisher))
                    .or_default()
                    .record(header.seq);
                self.latencies.push(
                    now_ns
                        .saturating_sub(header.sent_ns)
                        .clamp(1, MAX_LATENCY_NS),
                );
            }
            _ => self.foreign += 1,
        }
        Ok(true)
    }

    fn flush_latencies(&mut self, shared: &Shared) {
        if self.latencies.is_empty() {
            return;
        }
        let mut histogram = shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for value in self.latencies.drain(..) {
            // Values are clamped into the histogram's range above.
            let _ = histogram.record(value);
        }
    }
}

/// The two halves of a connection.
struct Link {
    reader: ReadHalf<Transport>,
    writer: WriteHalf<Transport>,
}

/// Why [`Client::drive`] returned.
enum Exit {
    /// The run is over; the client said goodbye.
    Done,
    /// Time to drop the connection and resume the session.
    Reconnect,
    /// The connection failed.
    Failed(ClientError),
}

/// One client: its connection buffers and its role's state.
struct Client {
    shared: Arc<Shared>,
    spec: ClientSpec,
    version: ProtocolVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    read_chunk: usize,
    publisher: Option<Publisher>,
    subscriber: Option<Subscriber>,
    outcomes: Option<mpsc::UnboundedSender<Outcome>>,
    permit: Option<OwnedSemaphorePermit>,
    ready: bool,
    wrote_since_ping: bool,
    ping_every: Option<Duration>,
    next_ping: Instant,
    reconnects: u64,
    resumed: u64,
    /// When this client first and last received a message.
    first_delivery_ns: u64,
    last_delivery_ns: u64,
    /// When it last updated the shared counters, and what it told them.
    synced_ns: u64,
    synced_delivery_ns: u64,
    synced_inflight: u32,
}

/// Runs one client from connection to report.
pub async fn run_client(
    spec: ClientSpec,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) -> ClientReport {
    let permit = shared.connecting.clone().acquire_owned().await.ok();
    let settings = shared.settings.clone();
    let mut client = Client::new(spec, shared, outcomes, permit);
    let connect_deadline = Instant::now() + settings.connect_timeout;
    let mut link = match timeout(
        settings.connect_timeout,
        client.establish(!settings.persistent, true, connect_deadline),
    )
    .await
    {
        Ok(Ok(link)) => link,
        Ok(Err(error)) => return client.fail(&error),
        Err(_) => return client.fail(&ClientError::Timeout("CONNACK")),
    };
    let mut error = None;
    loop {
        match client.drive(&mut link, &mut phase).await {
            Exit::Done => break,
            Exit::Failed(failure) => {
                if !client.ready {
                    return client.fail(&failure);
                }
                error = Some(failure.kind());
                break;
            }
            Exit::Reconnect => {
                client.goodbye(&mut link).await;
                tokio::time::sleep(settings.reconnect_pause).await;
                client.reconnects += 1;
                let deadline = Instant::now() + settings.connect_timeout;
                match timeout(
                    settings.connect_timeout,
                    client.establish(false, false, deadline),
                )
                .await
                {
                    Ok(Ok(new_link)) => link = new_link,
                    Ok(Err(failure)) => {
                        error = Some(format!("reconnect: {}", failure.kind()));
                        break;
                    }
                    Err(_) => {
                        error = Some("reconnect: timed out".to_owned());
                        break;
                    }
                }
            }
        }
    }
    client.finish(error)
}

impl Client {
    fn new(
        spec: ClientSpec,
        shared: Arc<Shared>,
        outcomes: mpsc::UnboundedSender<Outcome>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let settings = &shared.settings;
        let qos = settings.qos;
        let publisher = match &spec.role {
            Role::Publisher { .. } => Some(Publisher {
                // Replaced by the real template in `establish`.
                template: PublishTemplate {
                    bytes: Vec::new(),
                    packet_id_at: None,
                    payload_at: 0,
                },
                qos,
                window: u32::from(settings.inflight),
                inflight: 0,
                rate: settings.rate,
                start: None,
                until: None,
                active: false,
                seq: 0,
                next_id: 1,
                awaiting_ack: (qos != QoS::AtMostOnce).then(IdSet::new),
                awaiting_comp: (qos == QoS::ExactlyOnce).then(IdSet::new),
                counts: PubCounts::default(),
            }),
            _ => None,
        };
        let subscriber = match &spec.role {
            Role::Subscriber { filter } => Some(Subscriber {
                filter: filter.clone(),
                qos,
                awaiting_rel: None,
                trackers: HashMap::default(),
                latencies: Vec::with_capacity(LATENCY_BATCH),
                received: 0,
                foreign: 0,
                suback_due: None,
                reconnect_at: None,
                reconnect_done: false,
            }),
            _ => None,
        };
        let read_chunk = if matches!(spec.role, Role::Idle) {
            IDLE_READ_CHUNK
        } else {
            READ_CHUNK
        };
        let ping_every = (settings.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(settings.keep_alive) * 750));
        Self {
            version: settings.version,
            shared,
            spec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_chunk,
            publisher,
            subscriber,
            outcomes: Some(outcomes),
            permit,
            ready: false,
            wrote_since_ping: false,
            ping_every,
            next_ping: Instant::now(),
            reconnects: 0,
            resumed: 0,
            first_delivery_ns: 0,
            last_delivery_ns: 0,
            synced_ns: 0,
            synced_delivery_ns: 0,
            synced_inflight: 0,
        }
    }

    /// Opens a connection, sends CONNECT, awaits CONNACK and, if the session
    /// does not already hold it, sends SUBSCRIBE (its SUBACK is awaited in
    /// [`Client::drive`]).
    async fn establish(
        &mut self,
        clean_start: bool,
        first: bool,
        deadline: Instant,
    ) -> Result<Link, ClientError> {
        let settings = self.shared.settings.clone();
        let subscriber = matches!(self.spec.role, Role::Subscriber { .. });
        let transport = self
            .shared
            .dialer
            .dial(self.spec.client_no, subscriber)
            .await?;
        let (reader, writer) = tokio::io::split(transport);
        let mut link = Link { reader, writer };
        self.rbuf.clear();
        self.wbuf.clear();
        let v5 = self.version.is_v5();
        let connect = Connect {
            clean_start,
            keep_alive: settings.keep_alive,
            username: settings.username.as_deref().map(ByteString::from),
            password: settings
                .password
                .as_ref()
                .map(|password| Bytes::copy_from_slice(password.as_bytes())),
            properties: ConnectProperties {
                session_expiry_interval: (v5 && settings.session_expiry > 0)
                    .then_some(settings.session_expiry),
                ..ConnectProperties::default()
            },
            ..connect_packet(self.version, &self.spec.client_id)
        };
        Packet::Connect(Box::new(connect)).encode(self.version, &mut self.wbuf)?;
        link.writer.write_all_buf(&mut self.wbuf).await?;
        link.writer.flush().await?;
        let connack = self.read_connack(&mut link).await?;
        if connack.reason_code.is_error() {
            return Err(ClientError::Refused(connack.reason_code));
        }
        if let Some(maximum) = connack.properties.maximum_qos
            && maximum < settings.qos
            && !matches!(self.spec.role, Role::Idle)
        {
            return Err(ClientError::QosNotAvailable(maximum as u8));
        }
        let resumed = !clean_start && connack.session_present;
        if !first && resumed {
            self.resumed += 1;
        }
        if let Some(publisher) = &mut self.publisher
            && let Role::Publisher { topic } = &self.spec.role
        {
            publisher.template = PublishTemplate::new(
                self.version,
                settings.qos,
                topic,
                settings.size,
                self.spec.index,
                self.shared.run_id,
            )?;
            if let Some(maximum) = connack.properties.receive_maximum {
                publisher.window = publisher.window.min(u32::from(maximum.get()));
            }
        }
        if let Some(subscriber) = &mut self.subscriber {
            if !resumed {
                // A new session holds no QoS 2 state.
                if let Some(awaiting) = &mut subscriber.awaiting_rel {
                    awaiting.clear();
                }
            }
            // The first connection always subscribes (a session left by an
            // earlier run may hold another filter); a resumed one does not.
            if first || !resumed {
                let filter = (subscriber.filter.as_str(), at(subscriber.qos));
                Packet::Subscribe(subscribe_packet(1, &[filter]))
                    .encode(self.version, &mut self.wbuf)?;
                subscriber.suback_due = Some(deadline);
                return Ok(link);
            }
        }
        if first {
            self.signal_ready();
        }
        Ok(link)
    }

    async fn read_connack(&mut self, link: &mut Link) -> Result<ConnAck, ClientError> {
        loop {
            if let Some(packet) = decode(&mut self.rbuf, self.version, MAX_PACKET_SIZE)? {
                return match packet {
                    Packet::ConnAck(connack) => Ok(*connack),
                    Packet::Disconnect(disconnect) => {
                        Err(ClientError::Disconnected(disconnect.reason_code))
                    }
                    _ => Err(ClientError::Protocol("expected CONNACK")),
                };
            }
            self.rbuf.reserve(IDLE_READ_CHUNK);
            if link.reader.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Reports the first connection ready to the launcher, once.
    fn signal_ready(&mut self) {
        self.ready = true;
        self.permit = None;
        if let Some(outcomes) = self.outcomes.take() {
            let _ = outcomes.send(Outcome {
                error: None,
                at_ns: payload::now_ns(),
            });
        }
    }

    /// The client's loop over one connection.
    async fn drive(&mut self, link: &mut Link, phase: &mut watch::Receiver<Phase>) -> Exit {
        let current = *phase.borrow_and_update();
        if self.apply_phase(current) {
            return self.goodbye(link).await;
        }
        self.next_ping = Instant::now() + self.ping_every.unwrap_or(Duration::from_secs(86_400));
        // Packets that arrived in the same read as the CONNACK (a resumed
        // session's queued messages often do) are handled before waiting
        // for more: the broker may be waiting for their acknowledgements.
        if !self.rbuf.is_empty()
            && let Err(error) = self.on_read()
        {
            return Exit::Failed(error);
        }
        let mut timer_at = self.next_wake();
        let mut timer = pin!(sleep_until(timer_at));
        loop {
            let now = Instant::now();
            if let Some(publisher) = &mut self.publisher {
                let was_active = publisher.active;
                publisher.fill(&mut self.wbuf, now);
                if was_active && !publisher.active {
                    // Publishing just ended: the drain needs the exact count.
                    self.sync_shared(payload::now_ns());
                }
            }
            let wake = self.next_wake();
            if wake != timer_at {
                timer.as_mut().reset(wake);
                timer_at = wake;
            }
            if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
                self.rbuf.reserve(self.read_chunk);
            }
            // In this order: a phase change first, then writing (answers
            // keep the broker's windows moving; the write buffer only holds
            // what reading or the window let in, so reading is not starved),
            // then reading, then timers.
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    let next = match changed {
                        Ok(()) => *phase.borrow_and_update(),
                        // The coordinator is gone: end.
                        Err(_) => Phase::Disconnect,
                    };
                    if self.apply_phase(next) {
                        return self.goodbye(link).await;
                    }
                }
                written = link.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    match written {
                        Ok(0) => return Exit::Failed(ClientError::Closed),
                        Ok(_) => self.wrote_since_ping = true,
                        Err(error) => return Exit::Failed(error.into()),
                    }
                    // TLS and WebSocket buffer inside; TCP flushes for free.
                    if self.wbuf.is_empty()
                        && let Err(error) = link.writer.flush().await
                    {
                        return Exit::Failed(error.into());
                    }
                }
                read = link.reader.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => return Exit::Failed(ClientError::Closed),
                    Ok(_) => {
                        if let Err(error) = self.on_read() {
                            return Exit::Failed(error);
                        }
                    }
                    Err(error) => return Exit::Failed(error.into()),
                },
                () = &mut timer => {
                    if let Some(exit) = self.on_timer(Instant::now()) {
                        return exit;
                    }
                }
            }
        }
    }

    /// Applies a phase; true when the client should disconnect.
    fn apply_phase(&mut self, phase: Phase) -> bool {
        match phase {
            Phase::Setup => false,
            Phase::Publish { start, until } => {
                if let Some(publisher) = &mut self.publisher
                    && publisher.start.is_none()
                {
                    publisher.start = Some(start);
                    publisher.until = Some(until);
                    publisher.active = true;
                }
                if let Some(subscriber) = &mut self.subscriber
                    && subscriber.reconnect_at.is_none()
                    && !subscriber.reconnect_done
                {
                    subscriber.reconnect_at =
                        self.shared.settings.reconnect_at.map(|at| start + at);
                }
                false
            }
            Phase::Disconnect => true,
        }
    }

    /// The earliest time something is due: a ping, a paced publish, the end
    /// of publishing, a SUBACK deadline, a reconnection.
    fn next_wake(&self) -> Instant {
        let mut wake = self.next_ping;
        if let Some(due) = self.publisher.as_ref().and_then(Publisher::next_due) {
            wake = wake.min(due);
        }
        if let Some(subscriber) = &self.subscriber {
            for due in [subscriber.suback_due, subscriber.reconnect_at]
                .into_iter()
                .flatten()
            {
                wake = wake.min(due);
            }
        }
        wake
    }

    fn on_timer(&mut self, now: Instant) -> Option<Exit> {
        if let Some(subscriber) = &mut self.subscriber {
            if subscriber.suback_due.is_some_and(|due| now >= due) {
                return Some(Exit::Failed(ClientError::Timeout("SUBACK")));
            }
            if subscriber.reconnect_at.is_some_and(|at| now >= at) {
                subscriber.reconnect_at = None;
                subscriber.reconnect_done = true;
                return Some(Exit::Reconnect);
            }
        }
        if let Some(publisher) = &mut self.publisher
            && publisher.until.is_some_and(|until| now >= until)
        {
            publisher.active = false;
        }
        self.sync_shared(payload::now_ns());
        if now >= self.next_ping {
            if let Some(every) = self.ping_every {
                if !self.wrote_since_ping {
                    // PINGREQ cannot fail to encode.
                    let _ = Packet::PingReq.encode(self.version, &mut self.wbuf);
                }
                self.wrote_since_ping = false;
                self.next_ping = now + every;
            } else {
                self.next_ping = now + Duration::from_secs(86_400);
            }
        }
        None
    }

    /// Decodes and answers every whole packet in the read buffer.
    fn on_read(&mut self) -> Result<(), ClientError> {
        let now_ns = payload::now_ns();
        let mut delivered = 0;
        let version = self.version;
        let run_id = self.shared.accept_run;
        while let Some(packet) = decode(&mut self.rbuf, version, MAX_PACKET_SIZE)? {
            match packet {
                Packet::Publish(publish) => match &mut self.subscriber {
                    Some(subscriber) => {
                        if subscriber.on_publish(
                            &publish,
                            run_id,
                            now_ns,
                            version,
                            &mut self.wbuf,
                        )? {
                            delivered += 1;
                        }
                    }
                    None => {
                        return Err(ClientError::Protocol(
                            "PUBLISH to a client that did not subscribe",
                        ));
                    }
                },
                Packet::PubAck(ack) => {
                    if let Some(publisher) = &mut self.publisher {
                        publisher.on_puback(&ack);
                    }
                }
                Packet::PubRec(ack) => {
                    if let Some(publisher) = &mut self.publisher {
                        publisher.on_pubrec(&ack, version, &mut self.wbuf)?;
                    }
                }
                Packet::PubComp(ack) => {
                    if let Some(publisher) = &mut self.publisher {
                        publisher.on_pubcomp(&ack);
                    }
                }
                Packet::PubRel(ack) => {
                    if let Some(awaiting) = self
                        .subscriber
                        .as_mut()
                        .and_then(|subscriber| subscriber.awaiting_rel.as_mut())
                    {
                        awaiting.remove(ack.packet_id.get());
                    }
                    // Answered whether or not it was known (MQTT-4.3.3-11).
                    Packet::PubComp(Ack::new(ack.packet_id)).encode(version, &mut self.wbuf)?;
                }
                Packet::SubAck(suback) => {
                    let Some(subscriber) = &mut self.subscriber else {
                        return Err(ClientError::Protocol("SUBACK without SUBSCRIBE"));
                    };
                    if subscriber.suback_due.take().is_none() {
                        return Err(ClientError::Protocol("SUBACK without SUBSCRIBE"));
                    }
                    match suback.reason_codes.first() {
                        Some(code) if code.is_error() => {
                            return Err(ClientError::SubscribeRefused(*code));
                        }
                        Some(_) => {}
                        None => return Err(ClientError::Protocol("empty SUBACK")),
                    }
                    if !self.ready {
                        self.signal_ready();
                    }
                }
                Packet::PingResp => {}
                Packet::Disconnect(disconnect) => {
                    return Err(ClientError::Disconnected(disconnect.reason_code));
                }
                Packet::UnsubAck(_) => {
                    return Err(ClientError::Protocol("UNSUBACK without UNSUBSCRIBE"));
                }
                Packet::Auth(_) => return Err(ClientError::Protocol("AUTH not asked for")),
                Packet::Connect(_)
                | Packet::ConnAck(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq => {
                    return Err(ClientError::Protocol(
                        "client-to-server packet from the broker",
                    ));
                }
            }
        }
        if delivered > 0 {
            if self.first_delivery_ns == 0 {
                self.first_delivery_ns = now_ns;
            }
            self.last_delivery_ns = now_ns;
            if let Some(subscriber) = &mut self.subscriber
                && subscriber.latencies.len() >= LATENCY_BATCH
            {
                subscriber.flush_latencies(&self.shared);
            }
        }
        self.sync_shared(now_ns);
        Ok(())
    }

    /// Brings the process-wide counters up to date: at most every
    /// [`SYNC_NS`], but at every change once this client's publishing has
    /// ended, so that the drain sees the last acknowledgement at once.
    fn sync_shared(&mut self, now_ns: u64) {
        let finished_publishing = self
            .publisher
            .as_ref()
            .is_some_and(|publisher| !publisher.active && publisher.start.is_some());
        if !finished_publishing && now_ns.saturating_sub(self.synced_ns) < SYNC_NS {
            return;
        }
        self.synced_ns = now_ns;
        if self.last_delivery_ns > self.synced_delivery_ns {
            self.synced_delivery_ns = self.last_delivery_ns;
            self.shared
                .last_receive_ns
                .fetch_max(self.last_delivery_ns, Ordering::Relaxed);
        }
        if let Some(publisher) = &self.publisher
            && publisher.inflight != self.synced_inflight
        {
            let delta = i64::from(publisher.inflight) - i64::from(self.synced_inflight);
            self.synced_inflight = publisher.inflight;
            self.shared.unacked.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Sends DISCONNECT and closes; the session stays if it is persistent.
    async fn goodbye(&mut self, link: &mut Link) -> Exit {
        let _ = Packet::Disconnect(Disconnect::default()).encode(self.version, &mut self.wbuf);
        let _ = timeout(GOODBYE_TIMEOUT, async {
            link.writer.write_all_buf(&mut self.wbuf).await?;
            link.writer.shutdown().await
        })
        .await;
        self.wbuf.clear();
        Exit::Done
    }

    /// The report of a client whose first connection failed.
    fn fail(mut self, error: &ClientError) -> ClientReport {
        if let Some(outcomes) = self.outcomes.take() {
            let _ = outcomes.send(Outcome {
                error: Some(error.kind()),
                at_ns: payload::now_ns(),
            });
        }
        self.finish(None)
    }

    fn finish(mut self, error: Option<String>) -> ClientReport {
        // Whatever this client still had in flight will never be
        // acknowledged now: the drain must not wait for it.
        if self.synced_inflight > 0 {
            self.shared
                .unacked
                .fetch_sub(i64::from(self.synced_inflight), Ordering::Relaxed);
            self.synced_inflight = 0;
        }
        let mut publish = PubCounts::default();
        if let Some(publisher) = &self.publisher {
            publish = publisher.counts;
            publish.unacked = u64::from(publisher.inflight);
        }
        let mut subscribe = SubResult::default();
        let mut receiver = None;
        if let Some(subscriber) = &mut self.subscriber {
            subscriber.flush_latencies(&self.shared);
            subscribe.received = subscriber.received;
            subscribe.foreign = subscriber.foreign;
            subscribe.trackers = subscriber.trackers.drain().collect();
            receiver = Some(
                if rookery_topic::SharedFilter::parse(&subscriber.filter).is_some() {
                    ReceiverKey::Shared(subscriber.filter.clone())
                } else {
                    ReceiverKey::Plain(self.spec.index)
                },
            );
        }
        ClientReport {
            role: self.spec.role.clone(),
            error,
            publish,
            receiver,
            subscribe,
            first_receive_ns: self.first_delivery_ns,
            last_receive_ns: self.last_delivery_ns,
            reconnects: self.reconnects,
            resumed: self.resumed,
        }
    }
}

#[cfg(test)]
mod tests {
    use rookery_codec::PacketId;

    use super::*;

    fn publisher(qos: QoS, window: u32, rate: Option<f64>) -> Publisher {
        Publisher {
            template: PublishTemplate::new(ProtocolVersion::V5, qos, "bench/7", 64, 7, 99).unwrap(),
            qos,
            window,
            inflight: 0,
            rate,
            start: None,
            until: None,
            active: false,
            seq: 0,
            next_id: 1,
            awaiting_ack: (qos != QoS::AtMostOnce).then(IdSet::new),
            awaiting_comp: (qos == QoS::ExactlyOnce).then(IdSet::new),
            counts: PubCounts::default(),
        }
    }

    fn start(publisher: &mut Publisher, now: Instant) {
        publisher.start = Some(now);
        publisher.until = Some(now + Duration::from_secs(10));
        publisher.active = true;
    }

    fn decode_all(mut wire: BytesMut, version: ProtocolVersion) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = decode(&mut wire, version, MAX_PACKET_SIZE).unwrap() {
            packets.push(packet);
        }
        assert!(wire.is_empty());
        packets
    }

    #[test]
    fn template_patches_decode_as_the_codec_encodes() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                // 200 bytes makes the remaining length two bytes long.
                let template = PublishTemplate::new(version, qos, "a/b", 200, 3, 42).unwrap();
                let mut wire = BytesMut::from(&template.bytes[..]);
                if let Some(at) = template.packet_id_at {
                    wire[at..at + 2].copy_from_slice(&513u16.to_be_bytes());
                }
                payload::stamp(&mut wire[template.payload_at..], 77, 88);
                let packets = decode_all(wire, version);
                let [Packet::Publish(publish)] = &packets[..] else {
                    panic!("{packets:?}");
                };
                assert_eq!(publish.qos, qos);
                assert_eq!(&*publish.topic, "a/b");
                assert_eq!(publish.payload.len(), 200);
                let expected_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(513).unwrap());
                assert_eq!(publish.packet_id, expected_id);
                assert_eq!(
                    Header::read(&publish.payload).unwrap(),
                    Header {
                        run_id: 42,
                        publisher: 3,
                        seq: 77,
                        sent_ns: 88
                    }
                );
            }
        }
    }

    #[test]
    fn qos1_publisher_stops_at_its_window_and_resumes_on_puback() {
        let mut publisher = publisher(QoS::AtLeastOnce, 4, None);
        let now = Instant::now();
        start(&mut publisher, now);
        let mut wbuf = BytesMut::new();
        assert_eq!(publisher.fill(&mut wbuf, now), 4);
        assert_eq!(publisher.fill(&mut wbuf, now), 0, "window is full");
        let packets = decode_all(wbuf.split(), ProtocolVersion::V5);
        let ids: Vec<u16> = packets
            .iter()
            .map(|packet| match packet {
                Packet::Publish(publish) => publish.packet_id.unwrap().get(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert!(publisher.on_puback(&Ack::new(PacketId::new(2).unwrap())));
        // A second PUBACK for the same id, or one never sent, is unexpected.
        assert!(!publisher.on_puback(&Ack::new(PacketId::new(2).unwrap())));
        assert!(!publisher.on_puback(&Ack::new(PacketId::new(99).unwrap())));
        assert_eq!(publisher.counts.unexpected_acks, 2);
        assert_eq!(publisher.fill(&mut wbuf, now), 1);
        let [Packet::Publish(publish)] = &decode_all(wbuf.split(), ProtocolVersion::V5)[..] else {
            panic!();
        };
        assert_eq!(publish.packet_id.unwrap().get(), 5);
        assert_eq!(Header::read(&publish.payload).unwrap().seq, 4);
        assert_eq!((publisher.counts.sent, publisher.counts.acked), (5, 1));
    }

    #[test]
    fn qos2_publisher_releases_on_pubrec_and_completes_on_pubcomp() {
        let mut publisher = publisher(QoS::ExactlyOnce, 2, None);
        let now = Instant::now();
        start(&mut publisher, now);
        let mut wbuf = BytesMut::new();
        assert_eq!(publisher.fill(&mut wbuf, now), 2);
        wbuf.clear();
        let id = PacketId::new(1).unwrap();
        assert!(
            !publisher
                .on_pubrec(&Ack::new(id), ProtocolVersion::V5, &mut wbuf)
                .unwrap()
        );
        assert_eq!(
            decode_all(wbuf.split(), ProtocolVersion::V5),
            [Packet::PubRel(Ack::new(id))]
        );
        // Still in flight until PUBCOMP: the window stays full.
        assert_eq!(publisher.fill(&mut wbuf, now), 0);
        assert!(publisher.on_pubcomp(&Ack::new(id)));
        assert_eq!(publisher.counts.acked, 1);
        // A PUBCOMP for an id never released is unexpected.
        assert!(!publisher.on_pubcomp(&Ack::new(PacketId::new(2).unwrap())));
        assert_eq!(publisher.counts.unexpected_acks, 1);
        // Id 1 is free again but the allocator moves on to 3.
        assert_eq!(publisher.fill(&mut wbuf, now), 1);
        let [Packet::Publish(publish)] = &decode_all(wbuf.split(), ProtocolVersion::V5)[..] else {
            panic!();
        };
        assert_eq!(publish.packet_id.unwrap().get(), 3);
    }

    #[test]
    fn a_refusing_pubrec_ends_the_flow_without_pubrel() {
        let mut publisher = publisher(QoS::ExactlyOnce, 2, None);
        let now = Instant::now();
        start(&mut publisher, now);
        let mut wbuf = BytesMut::new();
        publisher.fill(&mut wbuf, now);
        wbuf.clear();
        let mut refusal = Ack::new(PacketId::new(1).unwrap());
        refusal.reason_code = ReasonCode::QuotaExceeded;
        assert!(
            publisher
                .on_pubrec(&refusal, ProtocolVersion::V5, &mut wbuf)
                .unwrap()
        );
        assert!(wbuf.is_empty());
        assert_eq!(publisher.counts.rejected, 1);
    }

    #[test]
    fn a_paced_publisher_sends_what_is_due_and_stops_at_the_end() {
        let mut publisher = publisher(QoS::AtMostOnce, 64, Some(100.0));
        let now = Instant::now();
        start(&mut publisher, now);
        let mut wbuf = BytesMut::new();
        // At the start, message 0 is due.
        assert_eq!(publisher.fill(&mut wbuf, now), 1);
        assert_eq!(publisher.fill(&mut wbuf, now), 0);
        assert_eq!(publisher.next_due(), Some(now + Duration::from_millis(10)));
        // 55 ms later, messages 1 to 5 are due.
        assert_eq!(
            publisher.fill(&mut wbuf, now + Duration::from_millis(55)),
            5
        );
        assert_eq!(publisher.fill(&mut wbuf, now + Duration::from_secs(11)), 0);
        assert!(!publisher.active);
        assert_eq!(publisher.next_due(), None);
    }

    #[test]
    fn an_unbounded_publisher_fills_one_batch_at_a_time() {
        let mut publisher = publisher(QoS::AtMostOnce, 64, None);
        let now = Instant::now();
        start(&mut publisher, now);
        let mut wbuf = BytesMut::new();
        let queued = publisher.fill(&mut wbuf, now);
        let len = publisher.template.bytes.len();
        assert_eq!(queued as usize, MAX_BATCH / len);
        assert_eq!(publisher.fill(&mut wbuf, now), 0);
        let packets = decode_all(wbuf.split(), ProtocolVersion::V5);
        for (seq, packet) in packets.iter().enumerate() {
            let Packet::Publish(publish) = packet else {
                panic!()
            };
            assert_eq!(Header::read(&publish.payload).unwrap().seq, seq as u64);
        }
    }

    #[test]
    fn packet_ids_skip_those_still_in_flight_after_wrapping() {
        let mut publisher = publisher(QoS::AtLeastOnce, 10, None);
        publisher.next_id = u16::MAX;
        publisher.awaiting_ack.as_mut().unwrap().insert(1);
        assert_eq!(publisher.allocate_id(), Some(u16::MAX));
        assert_eq!(publisher.allocate_id(), Some(2));
    }

    fn subscriber(qos: QoS) -> Subscriber {
        Subscriber {
            filter: "bench/#".to_owned(),
            qos,
            awaiting_rel: None,
            trackers: HashMap::default(),
            latencies: Vec::new(),
            received: 0,
            foreign: 0,
            suback_due: None,
            reconnect_at: None,
            reconnect_done: false,
        }
    }

    fn message(qos: QoS, id: u16, run_id: u32, seq: u64) -> Publish {
        let template =
            PublishTemplate::new(ProtocolVersion::V5, qos, "bench/1", 32, 1, run_id).unwrap();
        let mut wire = BytesMut::from(&template.bytes[..]);
        if let Some(at) = template.packet_id_at {
            wire[at..at + 2].copy_from_slice(&id.to_be_bytes());
        }
        payload::stamp(&mut wire[template.payload_at..], seq, 1000);
        match decode(&mut wire, ProtocolVersion::V5, MAX_PACKET_SIZE).unwrap() {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscriber_acknowledges_and_counts_qos1_duplicates() {
        let mut subscriber = subscriber(QoS::AtLeastOnce);
        let mut wbuf = BytesMut::new();
        let v5 = ProtocolVersion::V5;
        for (id, seq) in [(1, 0), (2, 1), (3, 1), (4, 2)] {
            assert!(
                subscriber
                    .on_publish(
                        &message(QoS::AtLeastOnce, id, 5, seq),
                        Some(5),
                        2000,
                        v5,
                        &mut wbuf
                    )
                    .unwrap()
            );
        }
        let acks = decode_all(wbuf.split(), v5);
        assert_eq!(acks.len(), 4);
        assert!(
            acks.iter()
                .all(|packet| matches!(packet, Packet::PubAck(_)))
        );
        let tracker = &subscriber.trackers[&source_key(5, 1)];
        assert_eq!((tracker.distinct(), tracker.duplicated), (3, 1));
        assert_eq!(subscriber.latencies, [1000; 4]);
    }

    #[test]
    fn subscriber_delivers_a_qos2_message_once_until_pubrel() {
        let mut subscriber = subscriber(QoS::ExactlyOnce);
        let mut wbuf = BytesMut::new();
        let v5 = ProtocolVersion::V5;
        let first = message(QoS::ExactlyOnce, 9, 5, 0);
        assert!(
            subscriber
                .on_publish(&first, Some(5), 2000, v5, &mut wbuf)
                .unwrap()
        );
        // The broker re-sends before our PUBREC reached it: PUBREC again, no delivery.
        assert!(
            !subscriber
                .on_publish(&first, Some(5), 2000, v5, &mut wbuf)
                .unwrap()
        );
        let id = PacketId::new(9).unwrap();
        assert_eq!(
            decode_all(wbuf.split(), v5),
            [Packet::PubRec(Ack::new(id)), Packet::PubRec(Ack::new(id))]
        );
        assert_eq!(subscriber.received, 1);
        assert_eq!(subscriber.trackers[&source_key(5, 1)].duplicated, 0);
    }

    #[test]
    fn other_runs_messages_are_foreign() {
        let mut subscriber = subscriber(QoS::AtMostOnce);
        let mut wbuf = BytesMut::new();
        subscriber
            .on_publish(
                &message(QoS::AtMostOnce, 0, 4, 0),
                Some(5),
                2000,
                ProtocolVersion::V5,
                &mut wbuf,
            )
            .unwrap();
        assert_eq!((subscriber.received, subscriber.foreign), (1, 1));
        assert!(subscriber.trackers.is_empty());
    }

    #[test]
    fn a_sub_run_counts_every_run_as_its_own_source() {
        let mut subscriber = subscriber(QoS::AtMostOnce);
        let mut wbuf = BytesMut::new();
        let v5 = ProtocolVersion::V5;
        for run_id in [4, 5] {
            for seq in 0..3 {
                let message = message(QoS::AtMostOnce, 0, run_id, seq);
                subscriber
                    .on_publish(&message, None, 2000, v5, &mut wbuf)
                    .unwrap();
            }
        }
        assert_eq!(subscriber.foreign, 0);
        assert_eq!(subscriber.trackers.len(), 2);
        assert_eq!(subscriber.trackers[&source_key(4, 1)].distinct(), 3);
        assert_eq!(subscriber.trackers[&source_key(5, 1)].duplicated, 0);
    }
}
