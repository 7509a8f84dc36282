//! A node whose disk fills up (issue 16): the store's Raft core stops on the
//! write error, and the node must not stay up refusing every client. It
//! exits non-zero so that the orchestrator restarts it, and once space is
//! back a restart on the same data directory delivers every message it had
//! acknowledged. The data directory is a small tmpfs, so this needs root
//! (CI runs as root); elsewhere it is skipped with a message.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{
    Process, RawClient, Read, Watchdog, free_port, persistent_v5, publish_packet,
};

use crate::harness::{TIMEOUT, skip_unless_rookery};

/// The tmpfs: room for a few dozen of the messages below in the Raft log
/// and the state machine.
const SMALL_DISK: &str = "size=24m";
/// Each message, so that the disk fills after a few dozen.
const PAYLOAD: usize = 256 * 1024;
/// How long the node may take to notice and exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", SMALL_DISK, "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(path.to_owned()))
    }

    fn grow(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,size=512m"])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount the tmpfs larger");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn start(process: &mut Process, dir: &Path, http: SocketAddr) -> SocketAddr {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rookery"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--config")
        .arg(dir.join("rookery.toml"))
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    process.spawn(&mut command, dir, Watchdog::Kill);
    let deadline = Instant::now() + TIMEOUT;
    while !process.is_ready() {
        if let Err(why) = process.check_running() {
            panic!("the node did not start: {why}\n{}", process.log());
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    process.listener("tcp").expect("the tcp listener")
}

#[tokio::test]
async fn a_full_disk_stops_the_node_non_zero_and_a_restart_delivers_what_it_acknowledged() {
    if skip_unless_rookery("Rookery's store failure handling") {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    let Some(tmpfs) = Tmpfs::mount(&data) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    std::fs::write(
        dir.path().join("rookery.toml"),
        "[broker.limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 1073741824\n",
    )
    .expect("write the configuration");
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)));
    let mut node = Process::new();
    let mqtt = start(&mut node, dir.path(), http);

    // A persistent session that is offline: each message is queued for it
    // in the store, on the small disk.
    let (mut keeper, _) = RawClient::connect_ok(mqtt, persistent_v5("disk-keeper", 3600)).await;
    keeper.subscribe_ok(1, "disk/#", QoS::AtLeastOnce).await;
    drop(keeper);

    let (mut publisher, _) = RawClient::connect_ok(mqtt, persistent_v5("disk-filler", 0)).await;
    let payload = vec![b'x'; PAYLOAD];
    let mut acknowledged = Vec::new();
    for n in 0..2000u32 {
        let id = u16::try_from(n % 60_000 + 1).expect("a packet id");
        let topic = format!("disk/{n}");
        if publisher
            .try_send(Packet::Publish(publish_packet(
                &topic,
                QoS::AtLeastOnce,
                id,
                &payload,
            )))
            .await
            .is_err()
        {
            break;
        }
        match publisher.read(TIMEOUT).await {
            Read::Packet(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::Success => {
                acknowledged.push(topic);
            }
            // Refused, closed or no answer: the store can no longer write.
            _ => break,
        }
    }
    eprintln!(
        "{} messages of {PAYLOAD} bytes acknowledged before the disk filled",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > 3 && acknowledged.len() < 2000,
        "{} messages acknowledged before the disk filled",
        acknowledged.len()
    );

    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        match node.check_running() {
            Ok(()) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(()) => panic!(
                "the node still runs {EXIT_WAIT:?} after its disk filled:\n{}",
                node.log()
            ),
            Err(rookery_testkit::ProcessError::Exited(status)) => break status,
            Err(other) => panic!("{other}"),
        }
    };
    assert!(
        !status.success(),
        "the node exited with {status}:\n{}",
        node.log()
    );
    assert!(
        node.log().contains("the store's Raft core stopped"),
        "{}",
        node.log()
    );

    // Space is back: the restarted node delivers every acknowledged message.
    tmpfs.grow();
    let mqtt = start(&mut node, dir.path(), http);
    let (mut keeper, connack) =
        RawClient::connect_ok(mqtt, persistent_v5("disk-keeper", 3600)).await;
    assert!(connack.session_present, "the session survived");
    let mut missing: std::collections::BTreeSet<String> = acknowledged.into_iter().collect();
    let deadline = Instant::now() + TIMEOUT;
    while !missing.is_empty() && Instant::now() < deadline {
        match keeper.read(TIMEOUT).await {
            Read::Packet(Packet::Publish(message)) => {
                missing.remove(&*message.topic);
                keeper.ack(&message).await;
            }
            Read::Packet(_) => {}
            _ => break,
        }
    }
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    node.sigterm();
}
