//! A rolling restart under load: each node of a 3-node cluster (store
//! voter and edge) in turn SIGTERMed and restarted on its data directory,
//! the leader among them, while every node has QoS 1 and QoS 2 publishers
//! and subscribers on persistent sessions (5.0, Clean Start 0, a session
//! expiry), each subscriber on another node than its publisher. A client
//! whose node stops is sent away (DISCONNECT 0x8B) and resumes its session
//! on another node; a publisher sends its unacknowledged message again
//! (DUP), or its PUBREL once PUBREC came.
//!
//! What a planned restart must not do: lose a message that was
//! acknowledged (PUBACK, or PUBCOMP at QoS 2), hand a QoS 2 message to a
//! subscriber twice (the subscriber is a correct receiver, MQTT-4.3.3: it
//! keeps the identifiers it answered with PUBREC until PUBREL, across its
//! connections), disconnect a client on a node that is not restarting,
//! refuse a publish, or make a moved session wait long. Each restart's
//! figures are printed: how long the node took to exit, how long its
//! clients took to resume elsewhere, and how long publishes were refused
//! (none: that too is checked).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rookery_codec::{Ack, Packet, QoS, ReasonCode};
use rookery_testkit::{
    RawClient, Read, at, persistent_v5, pid_for, publish_packet, subscribe_packet,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, TIMEOUT, within};
use crate::traffic::{await_route, ranges, seq_of};

/// Session expiry of every client: long enough to outlive the test.
const EXPIRY_S: u32 = 600;

/// The pause after each acknowledged message.
const PACE: Duration = Duration::from_millis(10);

/// How long a publisher waits for an acknowledgement. A draining node
/// answers what it read before it sends its clients away.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// How long a moved session may take to resume on another node (the
/// independent check allows 2 s; a debug build on a loaded machine gets
/// more).
const RESUME_BOUND: Duration = Duration::from_secs(5);

/// The nodes' MQTT addresses (index 0 is node 1); `None` while a node
/// stops and restarts, so that clients reconnect elsewhere.
#[derive(Clone, Debug)]
struct Nodes(Arc<Mutex<Vec<Option<SocketAddr>>>>);

impl Nodes {
    fn of(cluster: &Cluster, n: usize) -> Nodes {
        Nodes(Arc::new(Mutex::new(
            (1..=n).map(|i| Some(cluster.node(i).mqtt_addr())).collect(),
        )))
    }

    fn set(&self, node: usize, addr: Option<SocketAddr>) {
        self.0.lock().unwrap()[node - 1] = addr;
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.0.lock().unwrap()[node - 1].expect("the node runs")
    }

    /// The first running node from `from` on (1-based, wrapping).
    fn pick(&self, from: usize) -> Option<(usize, SocketAddr)> {
        let nodes = self.0.lock().unwrap();
        let n = nodes.len();
        (0..n)
            .map(|k| (from - 1 + k) % n)
            .find_map(|i| nodes[i].map(|addr| (i + 1, addr)))
    }
}

/// One connection of a client.
#[derive(Debug, Clone)]
struct Connection {
    node: usize,
    at: Instant,
    session_present: bool,
    /// When and why it ended, unless the test stopped the client.
    ended: Option<(Instant, String)>,
}

/// What one client did.
#[derive(Debug, Default, Clone)]
struct Record {
    connections: Vec<Connection>,
    /// Publishers: the sequence numbers acknowledged (PUBACK or PUBCOMP).
    acked: Vec<u64>,
    /// Publishers: the numbers refused, the reason code, and when.
    refused: Vec<(u64, u8, Instant)>,
    /// Subscribers: the numbers handed to the application, in order.
    handed: Vec<u64>,
    /// What went wrong that is not a connection's end.
    errors: Vec<String>,
}

impl Record {
    fn ended(&mut self, why: String) {
        if let Some(last) = self.connections.last_mut()
            && last.ended.is_none()
        {
            last.ended = Some((Instant::now(), why));
        }
    }
}

/// A client in a task of its own.
struct Client {
    name: String,
    qos: QoS,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Client {
    fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    async fn stop(self) -> (String, QoS, Record) {
        self.stop.store(true, Ordering::Release);
        match tokio::time::timeout(ACK_WAIT + TIMEOUT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}'s task failed: {e}", self.name),
            Err(_) => panic!("{}'s task did not stop", self.name),
        }
        let record = self.record.lock().unwrap().clone();
        (self.name, self.qos, record)
    }
}

/// Connects `client_id`'s persistent session to the first running node
/// from `home` on, retrying until it is accepted or `stop`; records the
/// connection.
async fn connect(
    nodes: &Nodes,
    home: usize,
    client_id: &str,
    record: &Mutex<Record>,
    stop: &AtomicBool,
) -> Option<RawClient> {
    let deadline = Instant::now() + FAILOVER;
    while !stop.load(Ordering::Acquire) {
        if let Some((node, addr)) = nodes.pick(home) {
            match RawClient::try_connect(addr, persistent_v5(client_id, EXPIRY_S)).await {
                Ok((client, connack)) if connack.reason_code == ReasonCode::Success => {
                    record.lock().unwrap().connections.push(Connection {
                        node,
                        at: Instant::now(),
                        session_present: connack.session_present,
                        ended: None,
                    });
                    return Some(client);
                }
                Ok((_, connack)) => record
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("node {node} refused the connection: {connack:?}")),
                Err(why) => record
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("connecting to node {node}: {why}")),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{client_id} found no node to connect to within {FAILOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// What a publisher waits for.
enum Answer {
    Ack(Ack),
    Disconnect(ReasonCode),
}

/// Reads until the answer `pick` wants for packet identifier `id`, or a
/// DISCONNECT.
async fn answer(
    client: &mut RawClient,
    id: u16,
    pick: fn(&Packet) -> Option<&Ack>,
) -> Result<Answer, String> {
    let id = rookery_testkit::pid(id);
    client
        .read_until(ACK_WAIT, "acknowledgement", |packet| match packet {
            Packet::Disconnect(disconnect) => Some(Answer::Disconnect(disconnect.reason_code)),
            packet => pick(packet)
                .filter(|ack| ack.packet_id == id)
                .map(|ack| Answer::Ack(ack.clone())),
        })
        .await
        .map_err(|e| e.to_string())
}

fn puback(packet: &Packet) -> Option<&Ack> {
    match packet {
        Packet::PubAck(ack) => Some(ack),
        _ => None,
    }
}

fn pubrec(packet: &Packet) -> Option<&Ack> {
    match packet {
        Packet::PubRec(ack) => Some(ack),
        _ => None,
    }
}

fn pubcomp(packet: &Packet) -> Option<&Ack> {
    match packet {
        Packet::PubComp(ack) => Some(ack),
        _ => None,
    }
}

/// Where a message's flow is.
#[derive(Clone, Copy)]
enum Stage {
    /// PUBLISH to send (again, with DUP, after a reconnection).
    Publish { dup: bool },
    /// PUBREC came: PUBREL to send (again after a reconnection).
    Release,
}

/// A publisher on the persistent session `client_id`, home node `home`:
/// numbered messages on `topic` at `qos`, one at a time.
fn publisher(nodes: Nodes, home: usize, qos: QoS, topic: String, client_id: String) -> Client {
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (record, stop, client_id) = (record.clone(), stop.clone(), client_id.clone());
        async move {
            let mut client: Option<RawClient> = None;
            let mut seq = 0u64;
            'messages: while !stop.load(Ordering::Acquire) {
                let id = pid_for(seq);
                let mut stage = Stage::Publish { dup: false };
                loop {
                    if client.is_none() {
                        client = connect(&nodes, home, &client_id, &record, &stop).await;
                    }
                    let Some(connection) = client.as_mut() else {
                        break 'messages;
                    };
                    let answered = match stage {
                        Stage::Publish { dup } => {
                            let mut publish =
                                publish_packet(&topic, qos, id, seq.to_string().as_bytes());
                            publish.dup = dup;
                            let pick = if qos == QoS::ExactlyOnce {
                                pubrec
                            } else {
                                puback
                            };
                            match connection.try_send(Packet::Publish(publish)).await {
                                Ok(()) => answer(connection, id, pick).await,
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Stage::Release => {
                            let release = Packet::PubRel(Ack::new(rookery_testkit::pid(id)));
                            match connection.try_send(release).await {
                                Ok(()) => answer(connection, id, pubcomp).await,
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    };
                    let why = match answered {
                        Ok(Answer::Ack(ack)) if ack.reason_code.as_u8() >= 0x80 => {
                            record.lock().unwrap().refused.push((
                                seq,
                                ack.reason_code.as_u8(),
                                Instant::now(),
                            ));
                            break;
                        }
                        Ok(Answer::Ack(_)) => match stage {
                            Stage::Publish { .. } if qos == QoS::ExactlyOnce => {
                                stage = Stage::Release;
                                continue;
                            }
                            _ => {
                                record.lock().unwrap().acked.push(seq);
                                break;
                            }
                        },
                        Ok(Answer::Disconnect(reason)) => format!("DISCONNECT {reason:?}"),
                        Err(why) => why,
                    };
                    // Sent again on the next connection.
                    record.lock().unwrap().ended(why);
                    client = None;
                    if let Stage::Publish { .. } = stage {
                        stage = Stage::Publish { dup: true };
                    }
                }
                seq += 1;
                tokio::time::sleep(PACE).await;
            }
            if let Some(client) = client {
                client.disconnect().await;
            }
        }
    });
    Client {
        name: client_id,
        qos,
        record,
        stop,
        task,
    }
}

/// A subscriber on the persistent session `client_id` whose first
/// connection (`client`, subscribed) is on node `home`: it records the
/// numbers on `topic` and, at QoS 2, hands each message to the application
/// once per PUBREC/PUBREL exchange (MQTT-4.3.3).
fn subscriber(
    nodes: Nodes,
    home: usize,
    client: RawClient,
    qos: QoS,
    topic: String,
    client_id: String,
    record: Arc<Mutex<Record>>,
) -> Client {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (record, stop, client_id) = (record.clone(), stop.clone(), client_id.clone());
        async move {
            let mut client = Some(client);
            // Session state: identifiers answered with PUBREC, not released.
            let mut unreleased: HashSet<u16> = HashSet::new();
            while !stop.load(Ordering::Acquire) {
                if client.is_none() {
                    client = connect(&nodes, home, &client_id, &record, &stop).await;
                }
                let Some(connection) = client.as_mut() else {
                    break;
                };
                let sent = match connection.read(Duration::from_millis(100)).await {
                    Read::Packet(Packet::Publish(publish)) => {
                        let wanted = publish.topic == topic.as_str();
                        let seq = seq_of(&publish);
                        match (publish.qos, publish.packet_id) {
                            (QoS::ExactlyOnce, Some(id)) => {
                                if unreleased.insert(id.get()) && wanted {
                                    record.lock().unwrap().handed.extend(seq);
                                }
                                connection.try_send(Packet::PubRec(Ack::new(id))).await
                            }
                            (QoS::AtLeastOnce, Some(id)) => {
                                if wanted {
                                    record.lock().unwrap().handed.extend(seq);
                                }
                                connection.try_send(Packet::PubAck(Ack::new(id))).await
                            }
                            _ => Ok(()),
                        }
                    }
                    Read::Packet(Packet::PubRel(release)) => {
                        unreleased.remove(&release.packet_id.get());
                        connection
                            .try_send(Packet::PubComp(Ack::new(release.packet_id)))
                            .await
                    }
                    Read::Packet(Packet::Disconnect(disconnect)) => {
                        record
                            .lock()
                            .unwrap()
                            .ended(format!("DISCONNECT {:?}", disconnect.reason_code));
                        client = None;
                        continue;
                    }
                    Read::Packet(_) | Read::Nothing => Ok(()),
                    Read::Closed(why) => {
                        record.lock().unwrap().ended(why.to_string());
                        client = None;
                        continue;
                    }
                };
                if let Err(why) = sent {
                    record.lock().unwrap().ended(why.to_string());
                    client = None;
                }
            }
            if let Some(client) = client {
                client.disconnect().await;
            }
        }
    });
    Client {
        name: client_id,
        qos,
        record,
        stop,
        task,
    }
}

/// One restart's timeline.
#[derive(Debug)]
struct Restart {
    node: usize,
    was_leader: bool,
    /// SIGTERM sent.
    began: Instant,
    /// The process had exited, this long after SIGTERM.
    exited_after: Duration,
    /// Ready again.
    back: Instant,
}

impl Restart {
    /// Whether a connection of node `node` may end at `t`: while this
    /// restart stops it (its clients are sent away).
    fn covers(&self, node: usize, t: Instant) -> bool {
        node == self.node && t >= self.began && t <= self.back
    }
}

/// Waits until every subscriber has received `more` messages beyond what
/// it had.
async fn traffic_flows(subscribers: &[Client], more: usize) {
    let start: Vec<usize> = subscribers
        .iter()
        .map(|s| s.record().handed.len())
        .collect();
    let deadline = Instant::now() + FAILOVER;
    loop {
        let behind: Vec<&str> = subscribers
            .iter()
            .zip(&start)
            .filter(|(s, n)| s.record().handed.len() < *n + more)
            .map(|(s, _)| s.name.as_str())
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic reached {behind:?} within {FAILOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node restarted in turn (the store leader first) under QoS 1 and
/// QoS 2 load from persistent sessions: nothing acknowledged is lost, no
/// QoS 2 message reaches a subscriber twice, no client of a node that is
/// not restarting is disconnected, every moved session resumes (session
/// present) on another node within `RESUME_BOUND`, and each node exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_qos1_and_qos2_load_loses_nothing_and_disturbs_no_other_node() {
    let mut cluster = Cluster::start(3);
    within(Duration::from_secs(150), async {
        let nodes = Nodes::of(&cluster, 3);
        let leader = cluster.leader().await;

        // Node i publishes on roll/q{1,2}/i/m; the QoS 1 subscriber is on
        // the next node, the QoS 2 one on the node after.
        let mut subscribers = Vec::new();
        for i in 1..=3 {
            for (qos, level, offset) in [(QoS::AtLeastOnce, 1, 1), (QoS::ExactlyOnce, 2, 2)] {
                let home = (i - 1 + offset) % 3 + 1;
                let client_id = format!("roll-sub-q{level}-{i}");
                let record = Arc::new(Mutex::new(Record::default()));
                let (mut client, connack) =
                    RawClient::connect_ok(nodes.addr(home), persistent_v5(&client_id, EXPIRY_S))
                        .await;
                record.lock().unwrap().connections.push(Connection {
                    node: home,
                    at: Instant::now(),
                    session_present: connack.session_present,
                    ended: None,
                });
                let filter = format!("roll/q{level}/{i}/#");
                client
                    .send(Packet::Subscribe(subscribe_packet(
                        1,
                        &[(&filter, at(qos))],
                    )))
                    .await;
                match client.expect().await {
                    Packet::SubAck(suback) => assert_eq!(
                        suback.reason_codes,
                        vec![ReasonCode::granted(qos)],
                        "{client_id}"
                    ),
                    other => panic!("{client_id}: expected SUBACK, got {other:?}"),
                }
                await_route(
                    nodes.addr(i),
                    &mut client,
                    &format!("roll/q{level}/{i}/probe"),
                )
                .await;
                subscribers.push(subscriber(
                    nodes.clone(),
                    home,
                    client,
                    qos,
                    format!("roll/q{level}/{i}/m"),
                    client_id,
                    record,
                ));
            }
        }
        let mut publishers = Vec::new();
        for i in 1..=3 {
            for (qos, level) in [(QoS::AtLeastOnce, 1), (QoS::ExactlyOnce, 2)] {
                publishers.push(publisher(
                    nodes.clone(),
                    i,
                    qos,
                    format!("roll/q{level}/{i}/m"),
                    format!("roll-pub-q{level}-{i}"),
                ));
            }
        }
        traffic_flows(&subscribers, 20).await;

        // The leader first, then a follower, then the last node (whatever
        // it is by then): planned restarts of both kinds.
        let mut remaining: Vec<usize> = (1..=3).collect();
        let mut restarts = Vec::new();
        while !remaining.is_empty() {
            let current = cluster.leader().await;
            let pick = if restarts.is_empty() {
                remaining.iter().position(|&n| n == leader)
            } else {
                remaining.iter().position(|&n| n != current)
            };
            let node = remaining.remove(pick.unwrap_or(0));
            let was_leader = current == node;
            nodes.set(node, None);
            let began = Instant::now();
            let status = cluster.node_mut(node).sigterm();
            let exited_after = began.elapsed();
            assert!(
                status.is_some_and(|status| status.success()),
                "node {node} did not exit 0 after SIGTERM: {status:?}"
            );
            cluster.node_mut(node).restart();
            let back = Instant::now();
            nodes.set(node, Some(cluster.node(node).mqtt_addr()));
            restarts.push(Restart {
                node,
                was_leader,
                began,
                exited_after,
                back,
            });
            traffic_flows(&subscribers, 20).await;
        }

        let mut published = BTreeMap::new();
        for publisher in publishers {
            let (name, qos, record) = publisher.stop().await;
            published.insert(name, (qos, record));
        }
        // Every acknowledged number reaches its subscriber.
        for (i, subscriber) in subscribers.iter().enumerate() {
            let (node, level) = (i / 2 + 1, i % 2 + 1);
            let acked: BTreeSet<u64> = published[&format!("roll-pub-q{level}-{node}")]
                .1
                .acked
                .iter()
                .copied()
                .collect();
            let arrived = async {
                loop {
                    let handed: BTreeSet<u64> =
                        subscriber.record().handed.iter().copied().collect();
                    if acked.is_subset(&handed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tokio::time::timeout(FAILOVER, arrived).await;
        }
        let mut received = BTreeMap::new();
        for subscriber in subscribers {
            let (name, qos, record) = subscriber.stop().await;
            received.insert(name, (qos, record));
        }

        for node in 1..=3 {
            for line in cluster.node(node).log().lines() {
                if line.contains("handed over") || line.contains("drained") {
                    eprintln!("node {node}: {line}");
                }
            }
        }
        report_and_check(&restarts, &published, &received);
    })
    .await;
}

/// Prints each restart's figures and checks the run.
fn report_and_check(
    restarts: &[Restart],
    published: &BTreeMap<String, (QoS, Record)>,
    received: &BTreeMap<String, (QoS, Record)>,
) {
    let everyone: Vec<(&String, &Record)> = published
        .iter()
        .chain(received)
        .map(|(name, (_, record))| (name, record))
        .collect();
    let mut problems = Vec::new();
    for restart in restarts {
        let refused: Vec<Instant> = published
            .values()
            .flat_map(|(_, record)| &record.refused)
            .map(|(_, _, when)| *when)
            .filter(|when| *when >= restart.began && *when <= restart.back + FAILOVER / 10)
            .collect();
        let refused_for = match (refused.iter().min(), refused.iter().max()) {
            (Some(first), Some(last)) => format!(
                "{} refused over {:?}",
                refused.len(),
                last.duration_since(*first)
            ),
            _ => "none refused".to_owned(),
        };
        // Each client sent away by this restart, and when it resumed.
        let mut resumed = Vec::new();
        for (name, record) in &everyone {
            for (k, connection) in record.connections.iter().enumerate() {
                let Some((ended, _)) = &connection.ended else {
                    continue;
                };
                if !restart.covers(connection.node, *ended) {
                    continue;
                }
                match record.connections.get(k + 1) {
                    Some(next) if next.session_present => {
                        resumed.push(next.at.duration_since(restart.began));
                    }
                    Some(next) => problems.push(format!(
                        "{name} reconnected to node {} without its session",
                        next.node
                    )),
                    None => problems.push(format!("{name} never reconnected")),
                }
            }
        }
        let slowest = resumed.iter().max().copied().unwrap_or_default();
        if !refused.is_empty() {
            problems.push(format!(
                "publishes were refused while node {} restarted: {refused_for}",
                restart.node
            ));
        }
        eprintln!(
            "node {}{}: exited {:?} after SIGTERM, back after {:?}; {} sessions moved, \
             resumed within {slowest:?} of SIGTERM; publishes: {refused_for}",
            restart.node,
            if restart.was_leader {
                " (store leader)"
            } else {
                ""
            },
            restart.exited_after,
            restart.back.duration_since(restart.began),
            resumed.len(),
        );
        if slowest > RESUME_BOUND {
            problems.push(format!(
                "sessions moved off node {} took {slowest:?} to resume",
                restart.node
            ));
        }
    }

    // No client of a node that was not restarting lost its connection.
    for (name, record) in &everyone {
        for connection in &record.connections {
            if let Some((ended, why)) = &connection.ended
                && !restarts.iter().any(|r| r.covers(connection.node, *ended))
            {
                problems.push(format!(
                    "{name} was disconnected from node {}, which was not restarting: {why}",
                    connection.node
                ));
            }
        }
    }

    for (name, (qos, record)) in published {
        let level = if *qos == QoS::ExactlyOnce { 2 } else { 1 };
        let node = name.rsplit('-').next().unwrap_or_default();
        let subscriber = format!("roll-sub-q{level}-{node}");
        let handed = &received[&subscriber].1.handed;
        let distinct: BTreeSet<u64> = handed.iter().copied().collect();
        let lost: BTreeSet<u64> = record
            .acked
            .iter()
            .copied()
            .filter(|seq| !distinct.contains(seq))
            .collect();
        let duplicates = handed.len() - distinct.len();
        eprintln!(
            "{name}: {} acknowledged, {} refused {:x?}; {subscriber}: {} received, {} duplicates",
            record.acked.len(),
            record.refused.len(),
            record
                .refused
                .iter()
                .map(|(_, reason, _)| *reason)
                .collect::<BTreeSet<_>>(),
            handed.len(),
            duplicates
        );
        if !lost.is_empty() {
            problems.push(format!(
                "{subscriber} lost acknowledged messages: {}",
                ranges(&lost)
            ));
        }
        if *qos == QoS::ExactlyOnce && duplicates > 0 {
            let mut seen = BTreeSet::new();
            let twice: BTreeSet<u64> = handed
                .iter()
                .copied()
                .filter(|s| !seen.insert(*s))
                .collect();
            problems.push(format!(
                "{subscriber} was handed QoS 2 messages twice: {}",
                ranges(&twice)
            ));
        }
        if record.acked.len() < 50 {
            problems.push(format!(
                "{name} got only {} messages through",
                record.acked.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the rolling restart went wrong:\n{}\nconnections: {:#?}",
        problems.join("\n"),
        everyone
            .iter()
            .map(|(name, record)| (name, &record.connections, &record.errors))
            .collect::<Vec<_>>()
    );
}
