//! The chaos run's MQTT clients: publishers, subscribers, will clients and
//! the will watcher. Each records what it did and saw into one
//! [`Recorder`], reconnects to the next edge when its connection ends, and
//! resumes its session as the protocol says: a persistent publisher sends
//! its unacknowledged PUBLISHes again with DUP=1 and its unanswered PUBRELs
//! (MQTT-4.4.0-1); a QoS 2 receiver does not take a PUBLISH whose packet
//! identifier awaits its PUBREL as a new message (MQTT-4.3.3-9).
//!
//! Nothing here panics on what the broker does: a refusal, a close or a
//! silence is recorded and the client goes on; only the checker judges.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rookery_chaos::history::{Event, History, MessageId, Millis, named_publish, payload};
use rookery_codec::{
    Ack, Connect, Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Will,
};
use rookery_testkit::{
    RawClient, Read, at, clean_v5, connect_packet, persistent_v5, pid_for, publish_packet,
    subscribe_packet,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a publisher waits for an acknowledgement before it takes the
/// connection for dead: longer than a store write timeout plus an edge's
/// lease, which a PUBACK may legitimately wait for.
const ACK_WAIT: Duration = Duration::from_secs(25);

/// A subscriber that has heard nothing this long sends PINGREQ ...
const PING_AFTER: Duration = Duration::from_secs(4);

/// ... and takes the connection for dead without a PINGRESP this long after.
const PING_WAIT: Duration = Duration::from_secs(6);

/// A session outlives its connection for this long.
const SESSION_EXPIRY_S: u32 = 3_600;

/// Topics route probes go to; subscribers take no record of them.
const PROBE_PREFIX: &str = "probe/";

/// Every client's shared record of the run.
#[derive(Debug, Clone)]
pub struct Recorder {
    started: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            history: Arc::default(),
        }
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, event: Event) {
        self.lock().push(event);
    }

    /// How many deliveries and wills have been recorded so far.
    pub fn arrivals(&self) -> usize {
        self.lock()
            .events
            .iter()
            .filter(|e| matches!(e, Event::Delivered { .. } | Event::WillPublished { .. }))
            .count()
    }

    pub fn history(&self) -> History {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The MQTT listeners clients may connect to: node index, its name in the
/// history, and its address while it is up (not killed, not paused).
#[derive(Debug, Clone, Default)]
pub struct Edges(Arc<Mutex<Vec<Edge>>>);

#[derive(Debug)]
struct Edge {
    node: usize,
    name: String,
    address: Option<SocketAddr>,
}

impl Edges {
    pub fn set(&self, node: usize, address: Option<SocketAddr>) {
        let mut edges = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match edges.iter_mut().find(|edge| edge.node == node) {
            Some(edge) => edge.address = address,
            None => edges.push(Edge {
                node,
                name: format!("n{node}"),
                address,
            }),
        }
    }

    /// The up edges: name and address.
    pub fn up(&self) -> Vec<(String, SocketAddr)> {
        let edges = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        edges
            .iter()
            .filter_map(|edge| edge.address.map(|a| (edge.name.clone(), a)))
            .collect()
    }

    /// The `turn`-th up edge, round robin.
    fn pick(&self, turn: usize) -> Option<(String, SocketAddr)> {
        let up = self.up();
        let n = up.len();
        (n > 0).then(|| up[turn % n].clone())
    }

    /// The current address of the edge named `name`, if it is up.
    fn address_of(&self, name: &str) -> Option<SocketAddr> {
        self.up()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }
}

/// Connects to the next up edge after `turn`, with the CONNECT `attempt`
/// makes for each try, until one accepts or `stop` is set: the client, its
/// CONNACK's Session Present and the edge's name.
async fn connect_somewhere(
    edges: &Edges,
    turn: &mut usize,
    mut attempt: impl FnMut() -> Connect,
    stop: &AtomicBool,
) -> Option<(RawClient, bool, String)> {
    while !stop.load(Ordering::Relaxed) {
        *turn += 1;
        if let Some((name, address)) = edges.pick(*turn)
            && let Ok((client, connack)) = RawClient::try_connect(address, attempt()).await
            && connack.reason_code == ReasonCode::Success
        {
            return Some((client, connack.session_present, name));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn qos_number(qos: QoS) -> u8 {
    qos as u8
}

/// What a publisher sends.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    pub name: String,
    pub qos: QoS,
    pub persistent: bool,
    /// Sent to in turn.
    pub topics: Vec<String>,
    pub retain: bool,
    /// Between two new messages.
    pub interval: Duration,
    /// At most this many unacknowledged at once.
    pub window: usize,
}

/// An unacknowledged publish.
#[derive(Debug)]
struct InFlight {
    publish: Publish,
    id: MessageId,
    /// PUBREC arrived and PUBREL went out: awaiting PUBCOMP.
    released: bool,
    since: Instant,
}

/// Runs a publisher until `stop`, then waits (bounded) for what it has in
/// flight and disconnects normally.
pub fn spawn_publisher(
    plan: PublisherPlan,
    edges: Edges,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut turn = plan.name.len();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut first = true;
        let never = AtomicBool::new(false);
        let mut stopped_at: Option<Instant> = None;
        loop {
            let mut connect = if plan.persistent {
                persistent_v5(&plan.name, SESSION_EXPIRY_S)
            } else {
                clean_v5(&plan.name)
            };
            connect.clean_start = !plan.persistent || first;
            // After `stop`, only to finish what is in flight.
            let give_up = if stop.load(Ordering::Relaxed) && in_flight.is_empty() {
                &*stop
            } else {
                &never
            };
            let Some((mut client, session_present, edge)) =
                connect_somewhere(&edges, &mut turn, || connect.clone(), give_up).await
            else {
                return;
            };
            first = false;
            recorder.record(Event::Connected {
                at: recorder.now(),
                client: plan.name.clone(),
                edge,
                persistent: plan.persistent,
                session_present,
                will: false,
            });
            if plan.persistent && session_present {
                for entry in &mut in_flight {
                    entry.since = Instant::now();
                    let packet = if entry.released {
                        Packet::PubRel(Ack::new(entry.publish.packet_id.unwrap_or_else(|| {
                            unreachable!("QoS 1/2 publishes carry a packet identifier")
                        })))
                    } else {
                        Packet::Publish(Publish {
                            dup: true,
                            ..entry.publish.clone()
                        })
                    };
                    let _ = client.try_send(packet).await;
                }
            } else {
                // The session is new: what was in flight was never
                // acknowledged and is owed to nobody.
                in_flight.clear();
            }
            let mut next_send = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) {
                    let since = *stopped_at.get_or_insert_with(Instant::now);
                    if in_flight.is_empty() || since.elapsed() > ACK_WAIT {
                        end_connection(client, &recorder, &plan.name, true).await;
                        return;
                    }
                } else if in_flight.len() < plan.window && Instant::now() >= next_send {
                    let id = MessageId {
                        publisher: plan.name.clone(),
                        seq,
                    };
                    let topic = &plan.topics[(seq as usize) % plan.topics.len()];
                    let mut publish =
                        publish_packet(topic, plan.qos, pid_for(seq), &payload(&id, 64));
                    publish.retain = plan.retain;
                    seq += 1;
                    next_send += plan.interval;
                    recorder.record(Event::Sent {
                        at: recorder.now(),
                        id: id.clone(),
                        topic: topic.clone(),
                        qos: qos_number(plan.qos),
                        retain: plan.retain,
                    });
                    let sent = client.try_send(Packet::Publish(publish.clone())).await;
                    if plan.qos != QoS::AtMostOnce {
                        in_flight.push_back(InFlight {
                            publish,
                            id,
                            released: false,
                            since: Instant::now(),
                        });
                    }
                    if sent.is_err() {
                        break;
                    }
                    continue;
                }
                let wait = if in_flight.len() < plan.window && !stop.load(Ordering::Relaxed) {
                    next_send
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1))
                } else {
                    Duration::from_millis(200)
                };
                match client.read(wait.min(Duration::from_millis(200))).await {
                    Read::Packet(Packet::PubAck(ack)) => {
                        if let Some(entry) = take(&mut in_flight, &ack) {
                            record_answer(&recorder, entry.id, ack.reason_code);
                        }
                    }
                    Read::Packet(Packet::PubRec(ack)) => {
                        if ack.reason_code.is_error() {
                            if let Some(entry) = take(&mut in_flight, &ack) {
                                record_answer(&recorder, entry.id, ack.reason_code);
                            }
                        } else if let Some(entry) = in_flight
                            .iter_mut()
                            .find(|e| e.publish.packet_id == Some(ack.packet_id))
                        {
                            entry.released = true;
                            if client
                                .try_send(Packet::PubRel(Ack::new(ack.packet_id)))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                    Read::Packet(Packet::PubComp(ack)) => {
                        if let Some(entry) = take(&mut in_flight, &ack) {
                            record_answer(&recorder, entry.id, ack.reason_code);
                        }
                    }
                    Read::Packet(Packet::Disconnect(_)) | Read::Closed(_) => break,
                    Read::Packet(_) => {}
                    Read::Nothing => {
                        if in_flight
                            .front()
                            .is_some_and(|e| e.since.elapsed() > ACK_WAIT)
                        {
                            eprintln!(
                                "chaos: {} had no acknowledgement in {ACK_WAIT:?}; reconnecting",
                                plan.name
                            );
                            break;
                        }
                    }
                }
            }
            end_connection(client, &recorder, &plan.name, false).await;
        }
    })
}

/// Removes the in-flight publish `ack` answers.
fn take(in_flight: &mut VecDeque<InFlight>, ack: &Ack) -> Option<InFlight> {
    let at = in_flight
        .iter()
        .position(|e| e.publish.packet_id == Some(ack.packet_id))?;
    in_flight.remove(at)
}

fn record_answer(recorder: &Recorder, id: MessageId, reason: ReasonCode) {
    let at = recorder.now();
    recorder.record(if reason.is_error() {
        Event::Refused {
            at,
            id,
            reason: reason.as_u8(),
        }
    } else {
        Event::Acked { at, id }
    });
}

/// What a subscriber records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Deliveries of the publishers' messages.
    Messages,
    /// Wills, as [`Event::WillPublished`].
    Wills,
}

/// A deliberate fault in a subscriber's record, to show that the checker
/// catches what a broker that lost or duplicated a message would look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// Acknowledge one QoS 1 message of the persistent QoS 1 publisher
    /// (from its 20th on) and keep no record of it: a lost message.
    SwallowOne,
    /// Record one QoS 2 delivery (from the 20th on) twice: a duplicate.
    RecordTwice,
}

/// What a subscriber subscribes to.
#[derive(Debug, Clone)]
pub struct SubscriberPlan {
    pub name: String,
    pub persistent: bool,
    pub version: ProtocolVersion,
    pub filters: Vec<(String, QoS)>,
    pub role: Role,
    pub plant: Option<Plant>,
    /// When (ms into the run) it goes away for good: its socket closes
    /// without DISCONNECT and it never connects again, leaving its
    /// persistent session behind.
    pub leaves_at: Option<Millis>,
}

/// Will-connection numbers: (client, attempt) -> the client's connection
/// number, once that attempt's CONNACK arrived.
pub type Attempts = Arc<Mutex<HashMap<(String, u64), u64>>>;

/// Runs a subscriber until `stop`; returns the publishes it planted.
pub fn spawn_subscriber(
    plan: SubscriberPlan,
    edges: Edges,
    recorder: Recorder,
    attempts: Attempts,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<MessageId>> {
    tokio::spawn(async move {
        let mut planted = Vec::new();
        let mut turn = plan.name.len() + 1;
        let mut first = true;
        // QoS 2 packet identifiers received, PUBREC sent, PUBREL awaited:
        // part of the session's state (MQTT-4.3.3-9).
        let mut awaiting_release: HashSet<u16> = HashSet::new();
        let probe_topic = format!("{PROBE_PREFIX}{}", plan.name);
        loop {
            let mut connect = if plan.persistent {
                match plan.version {
                    ProtocolVersion::V5 => persistent_v5(&plan.name, SESSION_EXPIRY_S),
                    _ => Connect {
                        clean_start: false,
                        ..connect_packet(plan.version, &plan.name)
                    },
                }
            } else {
                connect_packet(plan.version, &plan.name)
            };
            // A 5.0 session starts afresh and outlives the connection
            // (Clean Start 1 and an expiry); a 3.1.1 one with Clean Session
            // 1 would end with its connection (MQTT-3.1.2-6).
            connect.clean_start =
                !plan.persistent || (first && plan.version == ProtocolVersion::V5);
            let Some((mut client, session_present, edge)) =
                connect_somewhere(&edges, &mut turn, || connect.clone(), &stop).await
            else {
                return planted;
            };
            recorder.record(Event::Connected {
                at: recorder.now(),
                client: plan.name.clone(),
                edge: edge.clone(),
                persistent: plan.persistent,
                session_present,
                will: false,
            });
            // Routes to probe before the subscriptions count as in place.
            let mut probing: Option<Probing> = None;
            if !(plan.persistent && session_present) {
                awaiting_release.clear();
                let mut filters: Vec<(&str, rookery_codec::SubscriptionOptions)> = plan
                    .filters
                    .iter()
                    .map(|(f, q)| (f.as_str(), at(*q)))
                    .collect();
                filters.push((probe_topic.as_str(), at(QoS::AtMostOnce)));
                if client
                    .try_send(Packet::Subscribe(subscribe_packet(1, &filters)))
                    .await
                    .is_err()
                {
                    end_connection(client, &recorder, &plan.name, false).await;
                    continue;
                }
                probing = Some(Probing::awaiting_suback());
            }
            first = false;
            let mut last_heard = Instant::now();
            let mut ping_sent: Option<Instant> = None;
            loop {
                if stop.load(Ordering::Relaxed) {
                    if let Some(probing) = probing.take() {
                        probing.abort();
                    }
                    // The run ended while this connection lived: no record.
                    client.close().await;
                    return planted;
                }
                if plan.leaves_at.is_some_and(|at| recorder.now() >= at) {
                    if let Some(probing) = probing.take() {
                        probing.abort();
                    }
                    end_connection(client, &recorder, &plan.name, false).await;
                    return planted;
                }
                if let Some(p) = &mut probing
                    && p.started
                {
                    p.refresh(&edges, &probe_topic);
                    if p.done() {
                        let in_place = recorder.now();
                        for (filter, qos) in &plan.filters {
                            recorder.record(Event::Subscribed {
                                at: in_place,
                                client: plan.name.clone(),
                                filter: filter.clone(),
                                qos: qos_number(*qos),
                            });
                        }
                        if let Some(p) = probing.take() {
                            p.abort();
                        }
                    }
                }
                let read = client.read(Duration::from_millis(250)).await;
                if !matches!(read, Read::Nothing) {
                    last_heard = Instant::now();
                    ping_sent = None;
                }
                match read {
                    Read::Packet(Packet::SubAck(suback)) => {
                        let granted = suback.reason_codes.iter().all(|c| !c.is_error());
                        match &mut probing {
                            Some(p) if granted => p.start(&edges, &probe_topic),
                            _ => {
                                eprintln!("chaos: {} subscription refused: {suback:?}", plan.name);
                                break;
                            }
                        }
                    }
                    Read::Packet(Packet::Publish(publish)) => {
                        if publish.topic.starts_with(PROBE_PREFIX) {
                            if let Some(p) = &mut probing {
                                p.heard(&publish.payload);
                            }
                        } else {
                            let new = match (publish.qos, publish.packet_id) {
                                (QoS::ExactlyOnce, Some(id)) => awaiting_release.insert(id.get()),
                                _ => true,
                            };
                            if new {
                                record_arrival(
                                    &plan,
                                    &recorder,
                                    &attempts,
                                    &publish,
                                    &edge,
                                    &mut planted,
                                );
                            }
                        }
                        let answer = match (publish.qos, publish.packet_id) {
                            (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(Ack::new(id))),
                            (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(Ack::new(id))),
                            _ => None,
                        };
                        if let Some(answer) = answer
                            && client.try_send(answer).await.is_err()
                        {
                            break;
                        }
                    }
                    Read::Packet(Packet::PubRel(ack)) => {
                        awaiting_release.remove(&ack.packet_id.get());
                        if client
                            .try_send(Packet::PubComp(Ack::new(ack.packet_id)))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Read::Packet(Packet::Disconnect(_)) | Read::Closed(_) => break,
                    Read::Packet(_) => {}
                    Read::Nothing => match ping_sent {
                        Some(sent) if sent.elapsed() > PING_WAIT => {
                            eprintln!("chaos: {} had no PINGRESP from {edge}", plan.name);
                            break;
                        }
                        None if last_heard.elapsed() > PING_AFTER => {
                            ping_sent = Some(Instant::now());
                            if client.try_send(Packet::PingReq).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    },
                }
            }
            if let Some(p) = probing.take() {
                p.abort();
            }
            end_connection(client, &recorder, &plan.name, false).await;
        }
    })
}

/// Ends a connection, with DISCONNECT 0x00 when `clean` (no will), and
/// records it.
async fn end_connection(mut client: RawClient, recorder: &Recorder, name: &str, clean: bool) {
    if clean {
        let _ = client
            .try_send(Packet::Disconnect(Disconnect::default()))
            .await;
    }
    client.close().await;
    recorder.record(Event::Disconnected {
        at: recorder.now(),
        client: name.to_owned(),
        clean,
    });
}

fn record_arrival(
    plan: &SubscriberPlan,
    recorder: &Recorder,
    attempts: &Attempts,
    publish: &Publish,
    edge: &str,
    planted: &mut Vec<MessageId>,
) {
    let id = named_publish(&publish.payload);
    if plan.role == Role::Wills {
        let Some(id) = id else {
            eprintln!("chaos: a will names no connection: {publish:?}");
            return;
        };
        let connection = attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(id.publisher.clone(), id.seq))
            .copied();
        match connection {
            Some(connection) => recorder.record(Event::WillPublished {
                at: recorder.now(),
                client: id.publisher,
                connection,
                dup: publish.dup,
            }),
            // The broker took the connection but its CONNACK never
            // arrived: the client never counted it.
            None => eprintln!("chaos: the will of {id}, an attempt without CONNACK"),
        }
        return;
    }
    let delivered = Event::Delivered {
        at: recorder.now(),
        client: plan.name.clone(),
        id: id.clone(),
        topic: publish.topic.to_string(),
        qos: qos_number(publish.qos),
        dup: publish.dup,
        edge: edge.to_owned(),
    };
    let eligible =
        |id: &Option<MessageId>| planted.is_empty() && id.as_ref().is_some_and(|id| id.seq >= 20);
    match plan.plant {
        Some(Plant::SwallowOne)
            if eligible(&id)
                && publish.qos == QoS::AtLeastOnce
                && id
                    .as_ref()
                    .is_some_and(|id| id.publisher == "pub-q1-persistent") =>
        {
            planted.extend(id);
        }
        Some(Plant::RecordTwice) if eligible(&id) && publish.qos == QoS::ExactlyOnce => {
            planted.extend(id);
            recorder.record(delivered.clone());
            recorder.record(delivered);
        }
        _ => recorder.record(delivered),
    }
}

/// A subscriber's wait for its new subscriptions to be routed from every
/// up edge: a prober on each publishes QoS 0 messages naming its edge to
/// the subscriber's probe topic until one arrives.
#[derive(Debug)]
struct Probing {
    started: bool,
    /// Edges not yet heard from, with their prober.
    waiting: HashMap<String, JoinHandle<()>>,
    heard: BTreeSet<String>,
}

impl Probing {
    fn awaiting_suback() -> Probing {
        Probing {
            started: false,
            waiting: HashMap::new(),
            heard: BTreeSet::new(),
        }
    }

    fn start(&mut self, edges: &Edges, topic: &str) {
        self.started = true;
        self.refresh(edges, topic);
    }

    /// Probes every up edge not heard from yet; forgets edges gone down
    /// (they load the routes when they start again).
    fn refresh(&mut self, edges: &Edges, topic: &str) {
        let up: Vec<String> = edges.up().into_iter().map(|(name, _)| name).collect();
        self.waiting.retain(|name, prober| {
            let keep = up.contains(name);
            if !keep {
                prober.abort();
            }
            keep
        });
        for name in up {
            if !self.heard.contains(&name) && !self.waiting.contains_key(&name) {
                let prober = spawn_prober(edges.clone(), name.clone(), topic.to_owned());
                self.waiting.insert(name, prober);
            }
        }
    }

    fn heard(&mut self, payload: &[u8]) {
        let name = String::from_utf8_lossy(payload).into_owned();
        if let Some(prober) = self.waiting.remove(&name) {
            prober.abort();
        }
        self.heard.insert(name);
    }

    fn done(&self) -> bool {
        self.started && self.waiting.is_empty()
    }

    fn abort(self) {
        for prober in self.waiting.into_values() {
            prober.abort();
        }
    }
}

fn spawn_prober(edges: Edges, edge: String, topic: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let payload = Bytes::from(edge.clone());
        loop {
            let Some(address) = edges.address_of(&edge) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let client_id = format!("prober-{}-{edge}", topic.replace('/', "-"));
            let Ok((mut client, connack)) =
                RawClient::try_connect(address, clean_v5(&client_id)).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if connack.reason_code != ReasonCode::Success {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let mut probe = publish_packet(&topic, QoS::AtMostOnce, 0, b"");
            probe.payload = payload.clone();
            while client
                .try_send(Packet::Publish(probe.clone()))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// A client with a will that connects, stays a while, and leaves either
/// with a normal DISCONNECT or by dropping the connection, again and again.
#[derive(Debug, Clone)]
pub struct WillPlan {
    pub name: String,
    pub will_topic: String,
    pub seed: u64,
}

pub fn spawn_will_client(
    plan: WillPlan,
    edges: Edges,
    recorder: Recorder,
    attempts: Attempts,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(plan.seed);
        let mut turn = plan.name.len() + 2;
        let mut attempt = 0u64;
        let mut connections = 0u64;
        loop {
            // Each try names itself in its will: the broker may take a try
            // whose CONNACK never arrives, and publish its will.
            let next_try = || {
                attempt += 1;
                let id = MessageId {
                    publisher: plan.name.clone(),
                    seq: attempt,
                };
                let mut connect = clean_v5(&plan.name);
                connect.will = Some(Will {
                    topic: plan.will_topic.as_str().into(),
                    payload: Bytes::from(payload(&id, 0)),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Default::default(),
                });
                connect
            };
            let Some((mut client, session_present, name)) =
                connect_somewhere(&edges, &mut turn, next_try, &stop).await
            else {
                return;
            };
            connections += 1;
            attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((plan.name.clone(), attempt), connections);
            recorder.record(Event::Connected {
                at: recorder.now(),
                client: plan.name.clone(),
                edge: name,
                persistent: false,
                session_present,
                will: true,
            });
            let stay = Instant::now() + Duration::from_millis(rng.u64(1_000..5_000));
            let mut broken = false;
            while Instant::now() < stay && !stop.load(Ordering::Relaxed) {
                match client.read(Duration::from_millis(250)).await {
                    Read::Closed(_) | Read::Packet(Packet::Disconnect(_)) => {
                        broken = true;
                        break;
                    }
                    _ => {}
                }
            }
            let clean = !broken && (stop.load(Ordering::Relaxed) || rng.bool());
            end_connection(client, &recorder, &plan.name, clean).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// What every up edge holds as the retained message of each of `topics`,
/// recorded as [`Event::RetainedSeen`].
pub async fn record_retained(edges: &Edges, recorder: &Recorder, topics: &[String]) {
    for (name, address) in edges.up() {
        let client_id = format!("retained-reader-{name}");
        let Ok((mut client, _)) = RawClient::try_connect(address, clean_v5(&client_id)).await
        else {
            eprintln!("chaos: could not read the retained messages of {name}");
            continue;
        };
        let filter = "retained/#";
        if client
            .try_send(Packet::Subscribe(subscribe_packet(
                1,
                &[(filter, at(QoS::AtLeastOnce))],
            )))
            .await
            .is_err()
        {
            continue;
        }
        let mut held: HashMap<String, Option<MessageId>> = HashMap::new();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Read::Packet(Packet::Publish(publish)) =
                client.read(Duration::from_millis(200)).await
            {
                if publish.retain {
                    held.insert(publish.topic.to_string(), named_publish(&publish.payload));
                }
                if let Some(id) = publish.packet_id {
                    let _ = client.try_send(Packet::PubAck(Ack::new(id))).await;
                }
            }
        }
        let at = recorder.now();
        for topic in topics {
            recorder.record(Event::RetainedSeen {
                at,
                edge: name.clone(),
                topic: topic.clone(),
                id: held.remove(topic).flatten(),
            });
        }
        client.close().await;
    }
}
