//! A secured cluster: its store and forwarding ports speak mutual TLS with
//! the cluster CA (`[cluster.tls]`), membership changes need the admin
//! token, and an edge checks what other edges forward to it like any
//! publish. Certificates are made in the test (rcgen, `rookery_testkit::pki`).
//!
//! The clients here play the attackers of issue #15: a host on the cluster
//! network that speaks gRPC with no certificate, or one from another CA; and
//! a peer that does reach the forwarding port and pushes `$SYS/forged` to a
//! client that never subscribed to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rookery_cluster::proto::{DeliverBatch, Delivery, forward_client::ForwardClient};
use rookery_codec::{Packet, QoS};
use rookery_store::proto::{
    AddLearnerRequest, Member, Message, StatusRequest, StatusResponse, admin_client::AdminClient,
};
use rookery_store::{AdminToken, ClusterSecurity, ClusterTls};
use rookery_testkit::{RawClient, TestCa, clean_v5, clean_v311};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::harness::{Cluster, Options, Roles, TIMEOUT, within};
use crate::traffic::await_route;

/// The admin token every node of the secured cluster reads.
const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The cluster's certificate material in a temporary directory: the CA,
/// one certificate every node uses (carrying `rookery-cluster`), the admin
/// token, and a certificate of another CA.
struct Pki {
    /// Holds the files until the test ends.
    _dir: tempfile::TempDir,
    ca: PathBuf,
    node: rookery_testkit::CertFiles,
    token: PathBuf,
    stranger: rookery_testkit::CertFiles,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("rookery-cluster-pki-")
            .tempdir()
            .expect("a directory for the certificates");
        let ca = TestCa::new("Rookery test cluster CA");
        let stranger_ca = TestCa::new("Some other CA");
        let token = dir.path().join("admin-token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("write the token");
        Pki {
            ca: ca.write(&dir.path().join("ca.pem")),
            node: ca.node(&["rookery-cluster"]).write(dir.path(), "node"),
            token,
            stranger: stranger_ca
                .node(&["rookery-cluster"])
                .write(dir.path(), "stranger"),
            _dir: dir,
        }
    }

    /// The `[cluster]` keys of every node: TLS and the admin token.
    fn cluster_toml(&self) -> String {
        format!(
            "admin_token_file = {:?}\ntls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?} }}",
            path(&self.token),
            path(&self.ca),
            path(&self.node.cert_file),
            path(&self.node.key_file),
        )
    }

    /// What a cluster member presents: the node certificate, and the
    /// token when `with_token`.
    fn member(&self, with_token: bool) -> ClusterSecurity {
        let tls = ClusterTls::load(
            &self.ca,
            &self.node.cert_file,
            &self.node.key_file,
            "rookery-cluster",
        )
        .expect("the node certificate loads");
        ClusterSecurity {
            tls: Some(Arc::new(tls)),
            admin_token: with_token.then(|| AdminToken::new(TOKEN).expect("a valid token")),
        }
    }

    fn pem(&self, file: &Path) -> Vec<u8> {
        std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// Asks a store for its status over `endpoint`; `Err` with
/// what went wrong when no answer comes within [`TIMEOUT`].
async fn status_over(endpoint: Endpoint) -> Result<StatusResponse, String> {
    let channel = endpoint.connect_timeout(TIMEOUT).connect_lazy();
    let asked =
        tokio::time::timeout(TIMEOUT, AdminClient::new(channel).status(StatusRequest {})).await;
    match asked {
        Ok(Ok(status)) => Ok(status.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// Runs `rookery cluster ARGS...`; its exit status and its output.
async fn rookery_cluster(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .arg("cluster")
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("ROOKERY_CONFIG")
            .output()
            .unwrap_or_else(|e| panic!("run rookery cluster {args:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .expect("the admin command's thread")
}

/// Two nodes whose store and forwarding ports use mutual TLS with the
/// cluster CA form a cluster, and a QoS 1 message published on node 1
/// reaches a subscriber on node 2 (through the TLS forwarding stream).
/// Their store port answers a cluster member, and `rookery cluster status`
/// given a node's configuration; it gives no answer to a client without a
/// certificate, to one with a certificate of another CA, or in plaintext.
/// A membership change with the node certificate but without the admin
/// token is refused; with it, adding a learner nobody answers for is
/// refused too, and the group stays as it was. A third node then joins
/// with the token, and the CLI removes it with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_mutual_tls_serves_its_members_and_no_one_else() {
    let pki = Pki::new();
    let mut cluster = Cluster::start_with(
        2,
        Options {
            cluster_toml: pki.cluster_toml(),
            ..Options::default()
        },
    );
    within(Duration::from_secs(120), async {
        // Routing across edges over the TLS forwarding stream.
        let (mut subscriber, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v311("tls-sub")).await;
        subscriber
            .subscribe_amid_traffic(1, "secure/#", QoS::AtLeastOnce)
            .await;
        await_route(cluster.node(1).mqtt_addr(), &mut subscriber, "secure/probe").await;
        let (mut publisher, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v5("tls-pub")).await;
        let ack = publisher.publish1(1, "secure/t", b"over mutual TLS").await;
        assert_eq!(ack.reason_code.as_u8(), 0, "PUBACK {ack:?}");
        let delivered = subscriber
            .read_until(TIMEOUT, "the message published on node 1", |p| match p {
                Packet::Publish(p) if p.topic == "secure/t" => Some(p.clone()),
                _ => None,
            })
            .await
            .expect("the subscriber on node 2 receives it");
        assert_eq!(delivered.payload.as_ref(), b"over mutual TLS");

        let store = cluster.node(1).store_addr();
        let member = pki.member(false);
        let status = status_over(member.endpoint(&store.to_string()).expect("endpoint"))
            .await
            .expect("a member's status call is answered");
        let voters: Vec<u64> = status.voters.iter().map(|m| m.node_id).collect();
        assert_eq!(voters, [1, 2], "{status:?}");

        strangers_get_no_answer(&pki, store).await;
        strangers_get_no_answer(&pki, cluster.node(2).listener("forward").expect("forward")).await;
        membership_needs_the_token(&pki, store).await;

        // The CLI reaches the store as a node does, given its configuration.
        let config = cluster.node(1).config_path().display().to_string();
        let (ok, text) = rookery_cluster(vec![
            "--config".into(),
            config,
            "--store".into(),
            store.to_string(),
            "status".into(),
        ])
        .await;
        assert!(ok, "rookery cluster --config ... status failed:\n{text}");
        assert!(text.contains("voter 2 at"), "{text}");
        let (ok, text) =
            rookery_cluster(vec!["--store".into(), store.to_string(), "status".into()]).await;
        assert!(
            !ok,
            "without the node's certificate the CLI got in:\n{text}"
        );
        eprintln!("rookery cluster without a certificate: {text}");

        joins_and_removals_carry_the_token(&mut cluster, &pki).await;
    })
    .await;
}

/// A third node joins the running TLS cluster (AddLearner, then a voter:
/// its token and certificate, and the leader's probes of it over TLS), and
/// `rookery cluster --config ... remove 3` takes it out again.
async fn joins_and_removals_carry_the_token(cluster: &mut Cluster, pki: &Pki) {
    let added = tokio::task::block_in_place(|| cluster.add_node(Roles::Both));
    let store = cluster.node(1).store_addr().to_string();
    let voters =
        |status: &StatusResponse| -> Vec<u64> { status.voters.iter().map(|m| m.node_id).collect() };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = status_over(pki.member(false).endpoint(&store).expect("endpoint")).await;
        if status
            .as_ref()
            .is_ok_and(|s| voters(s) == [1, 2, added as u64])
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {added} did not become a voter: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let config = cluster.node(1).config_path().display().to_string();
    let (ok, text) = rookery_cluster(vec![
        "--config".into(),
        config,
        "--store".into(),
        store.clone(),
        "remove".into(),
        added.to_string(),
    ])
    .await;
    assert!(
        ok,
        "rookery cluster --config ... remove {added} failed:\n{text}"
    );
    let status = status_over(pki.member(false).endpoint(&store).expect("endpoint"))
        .await
        .expect("status");
    assert_eq!(voters(&status), [1, 2], "{status:?}");
}

/// A client in plaintext, one with no certificate and one with a
/// certificate of another CA all get no answer from a TLS port at `address`
/// (refused in the handshake: no RPC runs).
async fn strangers_get_no_answer(pki: &Pki, address: SocketAddr) {
    let plaintext = Endpoint::from_shared(format!("http://{address}")).expect("endpoint");
    let refused = status_over(plaintext).await;
    assert!(refused.is_err(), "plaintext to {address}: {refused:?}");

    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.pem(&pki.ca)))
        .domain_name("rookery-cluster");
    let anonymous = Endpoint::from_shared(format!("https://{address}"))
        .and_then(|endpoint| endpoint.tls_config(anonymous))
        .expect("endpoint");
    let refused = status_over(anonymous).await;
    assert!(
        refused.is_err(),
        "no client certificate at {address}: {refused:?}"
    );

    // The stranger trusts the cluster's CA to verify the server, and
    // presents its own CA's certificate.
    let stranger = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.pem(&pki.ca)))
        .identity(tonic::transport::Identity::from_pem(
            pki.pem(&pki.stranger.cert_file),
            pki.pem(&pki.stranger.key_file),
        ))
        .domain_name("rookery-cluster");
    let stranger = Endpoint::from_shared(format!("https://{address}"))
        .and_then(|endpoint| endpoint.tls_config(stranger))
        .expect("endpoint");
    let refused = status_over(stranger).await;
    assert!(
        refused.is_err(),
        "a certificate of another CA at {address}: {refused:?}"
    );
    eprintln!("{address} refused strangers; the last said: {refused:?}");
}

/// With the node certificate but no admin token, AddLearner is refused
/// (Unauthenticated); with the token, adding a node nobody answers for is
/// refused (FailedPrecondition) and the group keeps its voters.
async fn membership_needs_the_token(pki: &Pki, store: SocketAddr) {
    let dead = Member {
        node_id: 9,
        address: "127.0.0.9:1".into(),
    };
    let add = |security: &ClusterSecurity| {
        let mut request = tonic::Request::new(AddLearnerRequest {
            member: Some(dead.clone()),
        });
        security.authorize(&mut request);
        let channel = security
            .endpoint(&store.to_string())
            .expect("endpoint")
            .connect_lazy();
        async move { AdminClient::new(channel).add_learner(request).await }
    };
    let refused = add(&pki.member(false)).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let refused = add(&pki.member(true))
        .await
        .expect_err("a learner nobody answers for");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("127.0.0.9:1"),
        "{}",
        refused.message()
    );

    let status = status_over(
        pki.member(false)
            .endpoint(&store.to_string())
            .expect("endpoint"),
    )
    .await
    .expect("status");
    let members: Vec<u64> = status
        .voters
        .iter()
        .chain(&status.learners)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(members, [1, 2], "the group changed: {status:?}");
}

/// A `Deliver` batch pushed straight to node 2's forwarding port names a
/// client online there that never subscribed to `$SYS/forged`: the forged
/// `$SYS` message is dropped (clients cannot publish there, and neither may
/// whoever reaches the forwarding port) and counted; a message on an
/// ordinary topic in the same batch still arrives, so the batch was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_sys_publish_is_not_delivered() {
    let cluster = Cluster::start(2);
    within(Duration::from_secs(90), async {
        let node = cluster.node(2);
        let (mut victim, _) = RawClient::connect_ok(node.mqtt_addr(), clean_v5("victim")).await;
        let forward = node.listener("forward").expect("node 2's forwarding port");
        let channel = Endpoint::from_shared(format!("http://{forward}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("the forwarding port accepts plaintext in this cluster");
        let message = |topic: &str| Message {
            topic: topic.to_owned(),
            payload: Bytes::from_static(b"forged"),
            qos: 1,
            ..Message::default()
        };
        let to_victim = |index: u32| Delivery {
            client_id: "victim".into(),
            message: index,
            qos: 1,
            ..Delivery::default()
        };
        let batch = DeliverBatch {
            seq: 1,
            messages: vec![message("$SYS/forged"), message("plain/topic")],
            deliveries: vec![to_victim(0), to_victim(1)],
        };
        let mut acks = ForwardClient::new(channel)
            .deliver(futures::stream::iter([batch]))
            .await
            .expect("the stream opens")
            .into_inner();
        let ack = tokio::time::timeout(TIMEOUT, acks.message())
            .await
            .expect("an acknowledgement in time")
            .expect("the stream")
            .expect("one acknowledgement");
        assert_eq!(ack.seq, 1);

        let mut topics = Vec::new();
        while let rookery_testkit::Read::Packet(packet) = victim.read(Duration::from_secs(1)).await
        {
            if let Packet::Publish(publish) = packet {
                victim.try_puback(&publish).await.expect("PUBACK");
                topics.push(publish.topic.to_string());
            }
        }
        assert_eq!(topics, ["plain/topic"], "what the victim received");
        let rejected = node
            .metric("rookery_forward_rejected_total{reason=\"sys_topic\"}")
            .await;
        assert_eq!(rejected, 1.0);
    })
    .await;
}
