//! Message streams for the cluster tests: a publisher that numbers its
//! messages and records which were acknowledged, a subscriber that records
//! every number it receives and reconnects (resuming its session) when its
//! connection ends, and a probe that waits until a subscription made on one
//! node routes messages published on another.
//!
//! Payloads are decimal sequence numbers, so that what was received can be
//! compared with what was acknowledged, number by number.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rookery_codec::{Connect, Packet, Publish, QoS, ReasonCode};
use rookery_testkit::{RawClient, Read, clean_v311, persistent_v311, pid_for};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{FAILOVER, TIMEOUT};

/// How long a publisher waits for each PUBACK before it counts the message
/// as unconfirmed. Longer than the store's write timeout and an edge's
/// lease: a PUBACK may legitimately wait for either.
pub const ACK_WAIT: Duration = Duration::from_secs(20);

/// Parses a payload written by a [`Publisher`].
pub fn seq_of(publish: &Publish) -> Option<u64> {
    std::str::from_utf8(&publish.payload).ok()?.parse().ok()
}

/// Publishes QoS 0 probes on `probe_topic` from a client of its own at
/// `from` until `subscriber` receives one (acknowledging what it reads, and
/// keeping nothing): the subscription `subscriber` made is then routed from
/// that node. Route tables reach the other edges through the store's log, a
/// little after the SUBACK. Panics after [`FAILOVER`].
pub async fn await_route(from: SocketAddr, subscriber: &mut RawClient, probe_topic: &str) {
    let (mut prober, _) =
        RawClient::connect_retrying(from, clean_v311(&unique_id("probe")), FAILOVER).await;
    let started = Instant::now();
    let deadline = started + FAILOVER;
    loop {
        prober
            .try_publish0(probe_topic, b"probe")
            .await
            .unwrap_or_else(|e| panic!("probe from {from}: {e}"));
        let round = Instant::now() + Duration::from_millis(100);
        loop {
            let left = round.saturating_duration_since(Instant::now());
            match subscriber.read(left).await {
                Read::Packet(Packet::Publish(p)) => {
                    subscriber
                        .try_puback(&p)
                        .await
                        .unwrap_or_else(|e| panic!("PUBACK a probe: {e}"));
                    if p.topic == probe_topic {
                        eprintln!(
                            "route from {from} to {} in place after {:?}",
                            subscriber.addr(),
                            started.elapsed()
                        );
                        return;
                    }
                }
                Read::Packet(_) => {}
                Read::Closed(why) => panic!("the subscriber's connection ended: {why}"),
                Read::Nothing => break,
            }
        }
        if Instant::now() > deadline {
            panic!(
                "a probe published at {from} on {probe_topic} never reached the subscriber at {} within {FAILOVER:?}",
                subscriber.addr()
            );
        }
    }
}

/// A client identifier unique in this test binary.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What a [`Subscriber`] has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// The sequence numbers received on the recorded topic, in arrival
    /// order, duplicates included.
    pub seqs: Vec<u64>,
    /// Messages on the recorded topic whose payload is not a number.
    pub garbled: Vec<String>,
    /// Every connection after the first: where, and whether the CONNACK
    /// said the session was present.
    pub reconnections: Vec<(SocketAddr, bool)>,
    /// Why connections ended and reconnections failed.
    pub errors: Vec<String>,
}

impl Received {
    /// The distinct sequence numbers received.
    pub fn distinct(&self) -> BTreeSet<u64> {
        self.seqs.iter().copied().collect()
    }
}

/// A subscriber reading in a task of its own: it acknowledges every QoS 1
/// message, records the sequence numbers received on one topic, and when
/// its connection ends reconnects with its CONNECT (Clean Session 0: the
/// session resumes) to the next of its fallback addresses, until stopped.
#[derive(Debug)]
pub struct Subscriber {
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Takes over `client` (connected with `connect` and subscribed) and
    /// records the messages on `topic`; reconnections go to `fallback` in
    /// turn.
    pub fn spawn(
        client: RawClient,
        connect: Connect,
        fallback: Vec<SocketAddr>,
        topic: &str,
    ) -> Subscriber {
        assert!(!fallback.is_empty(), "somewhere to reconnect to");
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(receive(
            client,
            connect,
            fallback,
            topic.to_owned(),
            Arc::clone(&received),
            Arc::clone(&stop),
        ));
        Subscriber {
            received,
            stop,
            task,
        }
    }

    /// A subscriber on the persistent 3.1.1 session `client_id` at `addr`,
    /// subscribed at QoS 1 to `{prefix}/#` and waited for until messages
    /// published at `from` reach it ([`await_route`] on `{prefix}/probe`);
    /// it records `topic` and reconnects to `fallback`. Also returns whether
    /// its first CONNACK found a session present.
    pub async fn persistent(
        addr: SocketAddr,
        client_id: &str,
        prefix: &str,
        from: SocketAddr,
        topic: &str,
        fallback: Vec<SocketAddr>,
    ) -> (Subscriber, bool) {
        let connect = persistent_v311(client_id);
        let (mut client, connack) = RawClient::connect_ok(addr, connect.clone()).await;
        let filter = format!("{prefix}/#");
        client
            .subscribe_amid_traffic(1, &filter, QoS::AtLeastOnce)
            .await;
        await_route(from, &mut client, &format!("{prefix}/probe")).await;
        let subscriber = Subscriber::spawn(client, connect, fallback, topic);
        (subscriber, connack.session_present)
    }

    /// Waits up to [`FAILOVER`] until `n` distinct sequence numbers have
    /// arrived; panics if they have not.
    pub async fn await_distinct(&self, n: usize) {
        let started = self.wait_until(FAILOVER, |r| r.distinct().len() >= n).await;
        assert!(
            started,
            "the subscriber received {} distinct messages in {FAILOVER:?}, not {n}",
            self.distinct_count()
        );
    }

    /// A copy of what has been received so far.
    pub fn received(&self) -> Received {
        self.received.lock().expect("received").clone()
    }

    /// The number of distinct sequence numbers received so far.
    pub fn distinct_count(&self) -> usize {
        self.received().distinct().len()
    }

    /// Waits until `done` holds for what has been received, for up to
    /// `limit`; returns whether it did.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&Received) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.received.lock().expect("received")) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to [`FAILOVER`] until every number of `expected` has
    /// arrived, stops the task and returns what it received; panics, with
    /// why its connections ended, if any of `expected` is missing.
    pub async fn stop_when_all_arrived(self, expected: &BTreeSet<u64>) -> Received {
        let complete = self
            .wait_until(FAILOVER, |r| expected.is_subset(&r.distinct()))
            .await;
        let received = self.stop().await;
        let distinct = received.distinct();
        let missing: BTreeSet<u64> = expected.difference(&distinct).copied().collect();
        eprintln!(
            "received {} messages ({} distinct, {} duplicates); reconnections {:?}",
            received.seqs.len(),
            distinct.len(),
            received.seqs.len() - distinct.len(),
            received.reconnections
        );
        assert!(
            complete && missing.is_empty(),
            "acknowledged messages never reached the subscriber: {}; \
             its connections ended or failed with: {:?}",
            ranges(&missing),
            received.errors
        );
        received
    }

    /// Stops the task (closing its connection) and returns what it received.
    pub async fn stop(self) -> Received {
        self.stop.store(true, Ordering::Release);
        match tokio::time::timeout(TIMEOUT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the subscriber's task failed: {e}"),
            Err(_) => panic!("the subscriber's task did not stop within {TIMEOUT:?}"),
        }
        self.received.lock().expect("received").clone()
    }
}

async fn receive(
    client: RawClient,
    connect: Connect,
    fallback: Vec<SocketAddr>,
    topic: String,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
) {
    let note = |error: String| received.lock().expect("received").errors.push(error);
    let mut client = Some(client);
    let mut next = 0;
    while !stop.load(Ordering::Acquire) {
        let Some(connection) = client.as_mut() else {
            let addr = fallback[next % fallback.len()];
            next += 1;
            match RawClient::try_connect(addr, connect.clone()).await {
                Ok((c, connack)) if connack.reason_code == ReasonCode::Success => {
                    received
                        .lock()
                        .expect("received")
                        .reconnections
                        .push((addr, connack.session_present));
                    client = Some(c);
                }
                Ok((_, connack)) => {
                    note(format!("{addr} refused the reconnection: {connack:?}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(why) => {
                    note(why.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        match connection.read(Duration::from_millis(100)).await {
            Read::Packet(Packet::Publish(publish)) => {
                if publish.topic == topic.as_str() {
                    let mut r = received.lock().expect("received");
                    match seq_of(&publish) {
                        Some(seq) => r.seqs.push(seq),
                        None => r
                            .garbled
                            .push(String::from_utf8_lossy(&publish.payload).into_owned()),
                    }
                }
                if let Err(why) = connection.try_puback(&publish).await {
                    note(why.to_string());
                    client = None;
                }
            }
            Read::Packet(_) | Read::Nothing => {}
            Read::Closed(why) => {
                note(why.to_string());
                client = None;
            }
        }
    }
}

/// What a [`Publisher`] did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Sequence numbers acknowledged with a success reason code, with when
    /// each PUBLISH was sent.
    pub acked: Vec<(u64, Instant)>,
    /// Sequence numbers the broker answered with an error reason code.
    pub refused: Vec<(u64, ReasonCode)>,
    /// Sequence numbers sent whose PUBACK never came (the connection ended
    /// or [`ACK_WAIT`] passed).
    pub unconfirmed: Vec<u64>,
    /// Why connections ended and reconnections failed.
    pub errors: Vec<String>,
    /// Connections made, the first included.
    pub connections: usize,
}

impl Published {
    /// The acknowledged sequence numbers.
    pub fn acked_seqs(&self) -> BTreeSet<u64> {
        self.acked.iter().map(|(seq, _)| *seq).collect()
    }
}

/// How a [`Publisher`] publishes.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The node's MQTT address.
    pub addr: SocketAddr,
    /// The topic of every message.
    pub topic: String,
    /// How many messages; `None`: until stopped.
    pub count: Option<u64>,
    /// The pause after each acknowledged message.
    pub pace: Duration,
    /// Whether to reconnect (with a clean start) when the connection ends;
    /// if not, the stream ends with it.
    pub reconnect: bool,
}

/// A 5.0 publisher in a task of its own: QoS 1 messages numbered from 0,
/// one at a time (each waits for its PUBACK), so that every number is
/// either acknowledged, refused with a reason code, or unconfirmed.
#[derive(Debug)]
pub struct Publisher {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Published>,
}

impl Publisher {
    /// Starts publishing.
    pub fn spawn(stream: Stream) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(publish_stream(stream, Arc::clone(&stop)));
        Publisher { stop, task }
    }

    /// Waits for a counted stream to end, for up to `limit`.
    pub async fn finish(self, limit: Duration) -> Published {
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(published)) => published,
            Ok(Err(e)) => panic!("the publisher's task failed: {e}"),
            Err(_) => panic!("the publisher did not finish within {limit:?}"),
        }
    }

    /// Stops publishing (after the message in flight) and returns what was
    /// published.
    pub async fn stop(self) -> Published {
        self.stop.store(true, Ordering::Release);
        self.finish(ACK_WAIT + TIMEOUT).await
    }
}

async fn publish_stream(stream: Stream, stop: Arc<AtomicBool>) -> Published {
    let mut out = Published::default();
    let mut client: Option<RawClient> = None;
    let mut seq = 0;
    while !stop.load(Ordering::Acquire) && stream.count.is_none_or(|count| seq < count) {
        let Some(connection) = client.as_mut() else {
            if out.connections > 0 && !stream.reconnect {
                break;
            }
            match RawClient::try_connect(stream.addr, rookery_testkit::clean_v5(&unique_id("pub")))
                .await
            {
                Ok((c, connack)) if connack.reason_code == ReasonCode::Success => {
                    out.connections += 1;
                    client = Some(c);
                }
                Ok((_, connack)) => {
                    out.errors.push(format!("CONNACK {connack:?}"));
                    if !stream.reconnect {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(why) => {
                    out.errors.push(why.to_string());
                    if !stream.reconnect {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let sent = Instant::now();
        let payload = seq.to_string();
        match connection
            .try_publish(
                QoS::AtLeastOnce,
                pid_for(seq),
                &stream.topic,
                payload.as_bytes(),
                ACK_WAIT,
            )
            .await
        {
            // 0x10 No matching subscribers is a success code too; a test
            // that expects a subscriber then finds the message missing.
            Ok(ack) if ack.reason_code.as_u8() < 0x80 => out.acked.push((seq, sent)),
            Ok(ack) => {
                out.refused.push((seq, ack.reason_code));
                // The broker could not take it now (no store quorum): give
                // the cluster a moment before the next one.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(why) => {
                out.unconfirmed.push(seq);
                out.errors.push(why.to_string());
                client = None;
            }
        }
        seq += 1;
        tokio::time::sleep(stream.pace).await;
    }
    out
}

/// A compact description of a set of numbers for assertion messages:
/// ranges, the first few only.
pub fn ranges(set: &BTreeSet<u64>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    let total = parts.len();
    parts.truncate(20);
    if total > parts.len() {
        parts.push(format!("... ({} more ranges)", total - parts.len()));
    }
    format!("{} numbers: {}", set.len(), parts.join(", "))
}

#[test]
fn ranges_are_compact() {
    let set: BTreeSet<u64> = [1, 2, 3, 5, 7, 8].into_iter().collect();
    assert_eq!(ranges(&set), "6 numbers: 1-3, 5, 7-8");
    assert_eq!(ranges(&BTreeSet::new()), "0 numbers: ");
}

#[test]
fn packet_ids_cycle_without_zero() {
    assert_eq!(pid_for(0), 1);
    assert_eq!(pid_for(65_534), 65_535);
    assert_eq!(pid_for(65_535), 1);
}
