//! A siege: while a well-behaved client publishes and receives QoS 1
//! at a steady rate, hundreds of connections at once send garbage, stop
//! mid-packet, never send CONNECT, guess passwords, never read, flood
//! publishes, subscribe to `#` without permission and publish to `$SYS` and
//! to topics the ACL denies. The broker must stay up, the good client lose
//! nothing and keep its latency, nothing unauthorized be delivered, and the
//! broker's memory stay within what its caps allow.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rookery_codec::ProtocolVersion::V5;
use rookery_codec::{ByteString, Connect, Packet, QoS, ReasonCode};
use rookery_testkit::{RawClient, at, connect_packet, publish_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::harness::{Auth, Broker, Settings, skip_unless_rookery, unique};

/// alice (`wonderland`) is the good client, bob (`builder`) the attacker
/// with an account; `mosquitto_passwd` hashes, see `auth.rs`.
const PASSWORDS: &str = crate::auth::MOSQUITTO_PASSWORDS;
const ACL: &str = "user alice\ntopic readwrite good/#\nuser bob\ntopic readwrite bad/#\n";

/// How long the good client publishes while the attack runs.
const ATTACK: Duration = Duration::from_secs(10);
/// The good client's rate: one QoS 1 message every 20 ms.
const GOOD_INTERVAL: Duration = Duration::from_millis(20);
/// The stated latency bound: no PUBACK of the good client takes longer.
const LATENCY_BOUND: Duration = Duration::from_secs(2);
/// Connections of each kind of attack.
const SILENT: usize = 200;
const GARBAGE: usize = 100;
const STALLED: usize = 100;
const GUESSERS: usize = 20;
const FLOODERS: usize = 4;
const NON_READERS: usize = 8;
/// What one stuck subscriber may hold: its encoded output
/// (`max_output_buffer`, 1 MiB by default) plus its mailbox and queue, each
/// at most `max_queued_bytes`.
const QUEUED_BYTES_CAP: usize = 2 << 20;
const PER_STUCK_SESSION: u64 = (1 << 20) + 2 * QUEUED_BYTES_CAP as u64;

fn login(id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(V5, id);
    connect.username = Some(ByteString::from(user));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// A TCP connection from `source` (127.0.0.x), so that the attack's
/// per-address limits do not touch the good client on 127.0.0.1.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// Keeps a connection open until `stop`, reading (and dropping) whatever
/// comes, if `read`.
async fn hold(mut stream: TcpStream, stop: Arc<AtomicBool>, read: bool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if read {
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A small deterministic generator for garbage bytes.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn spawn_connection_attacks(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..SILENT + GARBAGE + STALLED {
        let stop = stop.clone();
        let source = Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8);
        tasks.push(tokio::spawn(async move {
            let Some(mut stream) = connect_from(source, addr).await else {
                return;
            };
            if i < SILENT {
                // Never sends CONNECT.
            } else if i < SILENT + GARBAGE {
                let _ = stream.write_all(&garbage(i as u64, 512)).await;
            } else {
                // A CONNECT that announces 200 bytes and sends 20.
                let mut head = vec![0x10, 200];
                head.extend_from_slice(&garbage(i as u64, 20));
                let _ = stream.write_all(&head).await;
            }
            hold(stream, stop, i >= SILENT).await;
        }));
    }
    for i in 0..GUESSERS {
        let stop = stop.clone();
        let source = Ipv4Addr::new(127, 0, 3, 1 + i as u8);
        tasks.push(tokio::spawn(async move {
            let mut attempt = 0u64;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let Some(stream) = connect_from(source, addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut client = RawClient::over(Box::new(stream), V5, addr);
                let guess = if i % 2 == 0 {
                    login(
                        &format!("g{i}-{attempt}"),
                        "alice",
                        &format!("guess{attempt}"),
                    )
                } else {
                    connect_packet(V5, &format!("g{i}-{attempt}"))
                };
                if client
                    .try_send(Packet::Connect(Box::new(guess)))
                    .await
                    .is_err()
                {
                    continue;
                }
                if let rookery_testkit::Read::Packet(Packet::ConnAck(connack)) =
                    client.read(Duration::from_secs(3)).await
                {
                    assert!(
                        connack.reason_code.is_error(),
                        "a guessed or missing password was let in"
                    );
                }
            }
        }));
    }
    tasks
}

/// bob, logged in from `source`.
async fn bob_from(source: Ipv4Addr, addr: SocketAddr, id: &str) -> Option<RawClient> {
    let stream = connect_from(source, addr).await?;
    let mut client = RawClient::over(Box::new(stream), V5, addr);
    client
        .send(Packet::Connect(Box::new(login(id, "bob", "builder"))))
        .await;
    client.expect_connack().await;
    Some(client)
}

/// bob: tries what the ACL forbids, then floods his own topic; and bob's
/// subscribers that never read.
fn spawn_account_attacks(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    refusals: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..NON_READERS {
        let stop = stop.clone();
        let source = Ipv4Addr::new(127, 0, 4, 1 + i as u8);
        tasks.push(tokio::spawn(async move {
            let Some(mut client) = bob_from(source, addr, &format!("bob-sink-{i}")).await else {
                return;
            };
            client.subscribe(1, "bad/#", at(QoS::AtMostOnce)).await;
            // Never reads again: the broker must not hold its output
            // without bound.
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(client);
        }));
    }
    for i in 0..FLOODERS {
        let stop = stop.clone();
        let refusals = refusals.clone();
        let source = Ipv4Addr::new(127, 0, 5, 1 + i as u8);
        tasks.push(tokio::spawn(async move {
            let Some(mut client) = bob_from(source, addr, &format!("bob-{i}")).await else {
                return;
            };
            for (id, filter) in [(1, "#"), (2, "good/#"), (3, "$SYS/#")] {
                let suback = client.subscribe(id, filter, at(QoS::AtLeastOnce)).await;
                if suback.reason_codes == [ReasonCode::UnspecifiedError] {
                    refusals.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (id, topic) in [(10, "$SYS/broker/forged"), (11, "good/data")] {
                let ack = client.publish1(id, topic, b"forged").await;
                if ack.reason_code == ReasonCode::NotAuthorized {
                    refusals.fetch_add(1, Ordering::Relaxed);
                }
            }
            let payload = vec![b'x'; 16 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let publish = publish_packet("bad/flood", QoS::AtMostOnce, 0, &payload);
                if client.try_send(Packet::Publish(publish)).await.is_err() {
                    break;
                }
            }
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_loses_nothing_and_keeps_its_latency_among_hostile_clients() {
    if skip_unless_rookery("Rookery's limits and memory caps") {
        return;
    }
    let broker = Broker::start_with(Settings {
        auth: Some(Auth {
            allow_anonymous: false,
            password_file: Some(PASSWORDS.into()),
            acl_file: Some(ACL.into()),
            ..Auth::default()
        }),
        max_connections_per_address: Some(8),
        max_queued_messages: Some(100),
        max_queued_bytes: Some(QUEUED_BYTES_CAP),
        // Flooders are slowed, not served at line rate.
        messages_rate: Some(2000),
        send_timeout_s: Some(2),
        ..Settings::default()
    });
    let addr = broker.addr();
    let rss_before = broker.rss_kib() * 1024;

    let (mut subscriber, _) =
        RawClient::connect_ok(addr, login(&unique("alice-sub"), "alice", "wonderland")).await;
    subscriber.subscribe_ok(1, "good/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) =
        RawClient::connect_ok(addr, login(&unique("alice-pub"), "alice", "wonderland")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let mut attacks = spawn_connection_attacks(addr, &stop);
    attacks.extend(spawn_account_attacks(addr, &stop, &refusals));

    let receiving = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut foreign = Vec::new();
        loop {
            match subscriber.read(Duration::from_secs(5)).await {
                rookery_testkit::Read::Packet(Packet::Publish(publish)) => {
                    match std::str::from_utf8(&publish.payload)
                        .ok()
                        .and_then(|text| text.strip_prefix("good-"))
                        .and_then(|seq| seq.parse::<u64>().ok())
                    {
                        Some(seq) => {
                            seen.insert(seq);
                        }
                        None => foreign.push(publish.topic.to_string()),
                    }
                    subscriber.ack(&publish).await;
                }
                rookery_testkit::Read::Packet(_) => {}
                _ => return (seen, foreign),
            }
        }
    });

    let mut sent = 0u64;
    let mut slowest = Duration::ZERO;
    let mut peak_rss = rss_before;
    let end = Instant::now() + ATTACK;
    while Instant::now() < end {
        let started = Instant::now();
        let id = u16::try_from(sent % 60_000 + 1).unwrap_or(1);
        let ack = publisher
            .publish1(id, "good/data", format!("good-{sent}").as_bytes())
            .await;
        assert!(
            !ack.reason_code.is_error(),
            "good publish {sent} refused: {ack:?}"
        );
        slowest = slowest.max(started.elapsed());
        sent += 1;
        peak_rss = peak_rss.max(broker.rss_kib() * 1024);
        tokio::time::sleep_until(started + GOOD_INTERVAL).await;
    }
    stop.store(true, Ordering::Relaxed);
    for attack in attacks {
        let _ = tokio::time::timeout(Duration::from_secs(10), attack).await;
    }
    let (seen, foreign) = receiving.await.expect("the subscriber task");

    // Still up and serving: a new good client gets in.
    let (late, _) =
        RawClient::connect_ok(addr, login(&unique("alice-late"), "alice", "wonderland")).await;
    late.disconnect().await;
    let missing: Vec<u64> = (0..sent).filter(|seq| !seen.contains(seq)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} lost: {missing:?}",
        missing.len()
    );
    assert!(
        foreign.is_empty(),
        "unauthorized messages delivered: {foreign:?}"
    );
    assert!(
        slowest <= LATENCY_BOUND,
        "the good client's slowest PUBACK took {slowest:?} (bound {LATENCY_BOUND:?})"
    );
    assert_eq!(
        refusals.load(Ordering::Relaxed),
        (FLOODERS * 5) as u64,
        "every forbidden subscribe and publish of bob is refused with 0x87"
    );
    // The caps: each never-reading subscriber holds at most
    // PER_STUCK_SESSION, each other connection a small read buffer (a few
    // KiB with its task); twice that, plus 64 MiB for the allocator and the
    // password checks, where unbounded queues would pass it by far.
    let attackers = (SILENT + GARBAGE + STALLED + GUESSERS + FLOODERS) as u64;
    let bound = rss_before
        + 2 * (NON_READERS as u64 * PER_STUCK_SESSION + attackers * 64 * 1024)
        + (64 << 20);
    assert!(
        peak_rss <= bound,
        "RSS peaked at {} MiB (started at {} MiB)",
        peak_rss >> 20,
        rss_before >> 20
    );
    eprintln!(
        "siege: {sent} good messages, slowest PUBACK {slowest:?}, RSS {} -> {} MiB",
        rss_before >> 20,
        peak_rss >> 20
    );
}
