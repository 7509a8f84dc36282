//! The same ACL decisions on every edge: a message another edge forwards is
//! checked against the subscriber's read permissions where the subscriber
//! is, so a wildcard subscription never carries a denied topic across edges.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::ProtocolVersion::V5;
use rookery_codec::{ByteString, Connect, QoS};
use rookery_testkit::{RawClient, connect_packet};

use crate::harness::{Cluster, Options, within};
use crate::traffic::await_route;

/// Without a password file a username is not checked, only kept for the
/// ACL (Mosquitto's behaviour); enough to tell two users apart here.
fn as_user(id: &str, user: &str) -> Connect {
    let mut connect = connect_packet(V5, id);
    connect.username = Some(ByteString::from(user));
    connect.password = Some(Bytes::from_static(b"unchecked"));
    connect
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_subscriber_may_not_read_is_not_forwarded_to_it_from_another_edge() {
    let dir = tempfile::tempdir().expect("a directory for the ACL");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite probe/#\n\
         user writer\ntopic write test/#\n\
         user reader\ntopic read test/#\ntopic read probe/#\ntopic deny test/secret\n",
    )
    .expect("write the ACL");
    let cluster = Cluster::start_with(
        2,
        Options {
            extra_toml: format!(
                "[broker.auth]\nallow_anonymous = true\nacl_file = {:?}\n",
                acl.display().to_string()
            ),
            ..Options::default()
        },
    );
    within(Duration::from_secs(60), async {
        let (mut reader, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), as_user("reader-1", "reader")).await;
        reader.subscribe_ok(1, "test/#", QoS::AtLeastOnce).await;
        reader.subscribe_ok(2, "probe/#", QoS::AtLeastOnce).await;
        await_route(cluster.node(1).mqtt_addr(), &mut reader, "probe/x").await;

        let (mut writer, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), as_user("writer-1", "writer")).await;
        for (id, topic) in [(1, "test/secret"), (2, "test/open")] {
            let ack = writer.publish1(id, topic, topic.as_bytes()).await;
            assert!(!ack.reason_code.is_error(), "{topic}: {ack:?}");
        }
        let publish = reader.receive().await;
        assert_eq!(&*publish.topic, "test/open", "the denied topic came first");
        reader.ack(&publish).await;
        reader.expect_nothing().await;
    })
    .await;
}
