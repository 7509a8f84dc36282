//! The session API as an edge sees it over gRPC: sessions, fencing, queued
//! messages, and the watch streams (route table and per-edge notifications).

// Test helpers outside #[test] functions: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rookery_store::proto::{
    self, Command, CommandResult, admin_client::AdminClient, command::Kind,
    command_result::Kind as ResultKind, edge_event, store_client::StoreClient,
};
use rookery_store::{StoreConfig, StoreNode};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

async fn single_voter(
    dir: &std::path::Path,
    tick_interval: Option<Duration>,
) -> (StoreNode, StoreClient<Channel>) {
    let mut config = StoreConfig::new(1, dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.tick_interval = tick_interval;
    let node = StoreNode::start(config).await.unwrap();
    let endpoint = format!("http://{}", node.address());
    AdminClient::connect(endpoint.clone())
        .await
        .unwrap()
        .initialize(proto::InitializeRequest {})
        .await
        .unwrap();
    let mut store = StoreClient::connect(endpoint).await.unwrap();
    // The first write waits out the election of the single voter.
    tokio::time::timeout(WAIT, async {
        loop {
            let request = proto::WriteRequest {
                commands: vec![register_edge("e1")],
            };
            if store.write(request).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    (node, store)
}

fn command(kind: Kind) -> Command {
    Command { kind: Some(kind) }
}

fn register_edge(edge_id: &str) -> Command {
    command(Kind::RegisterEdge(proto::RegisterEdge {
        edge_id: edge_id.into(),
        address: "127.0.0.1:1".into(),
        lease_ms: 60_000,
        stats: None,
    }))
}

fn connect(client_id: &str, edge_id: &str, expiry_interval_s: u32) -> Command {
    command(Kind::Connect(proto::Connect {
        client_id: client_id.into(),
        edge_id: edge_id.into(),
        expiry_interval_s,
        protocol_version: 5,
        ..proto::Connect::default()
    }))
}

fn subscribe(client_id: &str, epoch: u64, filter: &str) -> Command {
    command(Kind::Subscribe(proto::Subscribe {
        client_id: client_id.into(),
        epoch,
        subscriptions: vec![proto::Subscription {
            filter: filter.into(),
            options: Some(proto::SubscriptionOptions {
                qos: 1,
                ..proto::SubscriptionOptions::default()
            }),
        }],
    }))
}

async fn write(store: &mut StoreClient<Channel>, commands: Vec<Command>) -> Vec<ResultKind> {
    store
        .write(proto::WriteRequest { commands })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|result: CommandResult| result.kind.unwrap())
        .collect()
}

/// The next item of a stream, which must come within `WAIT`.
async fn next_event<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// The events for edge `edge_id` from now on.
async fn watch_edge(
    store: &mut StoreClient<Channel>,
    edge_id: &str,
) -> tonic::Streaming<proto::EdgeEvent> {
    store
        .watch_edge(proto::WatchEdgeRequest {
            edge_id: edge_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Session `client_id` with its subscriptions and queue.
async fn get_session(
    store: &mut StoreClient<Channel>,
    client_id: &str,
) -> proto::GetSessionResponse {
    store
        .get_session(proto::GetSessionRequest {
            client_id: client_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn epoch_of(result: &ResultKind) -> u64 {
    match result {
        ResultKind::Connected(connected) => connected.epoch,
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_watch_starts_with_the_table_then_streams_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut store) = single_voter(dir.path(), None).await;
    let results = write(&mut store, vec![connect("c1", "e1", 3600)]).await;
    let epoch = epoch_of(&results[0]);
    write(&mut store, vec![subscribe("c1", epoch, "a/+")]).await;

    let mut watch = store
        .watch_routes(proto::WatchRoutesRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut watch).await;
    assert!(first.snapshot);
    // Online and persistent: a route to its edge and one to its store queue.
    let mut targets: Vec<(String, String)> = first
        .added
        .iter()
        .map(|route| (route.filter.clone(), route.edge_id.clone()))
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![("a/+".into(), String::new()), ("a/+".into(), "e1".into())]
    );

    write(&mut store, vec![subscribe("c1", epoch, "b/#")]).await;
    let change = next_event(&mut watch).await;
    assert!(!change.snapshot);
    assert!(change.applied_index > first.applied_index);
    assert_eq!(change.added.len(), 2);
    assert!(change.added.iter().all(|route| route.filter == "b/#"));

    // A normal disconnect keeps the persistent session's routes and drops the
    // edge's.
    write(
        &mut store,
        vec![command(Kind::Disconnect(proto::Disconnect {
            client_id: "c1".into(),
            epoch,
            expiry_interval_s: 3600,
            publish_will: false,
            records_lost: false,
        }))],
    )
    .await;
    let change = next_event(&mut watch).await;
    assert!(change.added.is_empty());
    assert_eq!(change.removed.len(), 2);
    assert!(change.removed.iter().all(|route| route.edge_id == "e1"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_notifies_the_old_edge_and_fences_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut store) = single_voter(dir.path(), None).await;
    write(&mut store, vec![register_edge("e2")]).await;
    let mut e1_events = watch_edge(&mut store, "e1").await;

    let old_epoch = epoch_of(&write(&mut store, vec![connect("c1", "e1", 3600)]).await[0]);
    write(&mut store, vec![subscribe("c1", old_epoch, "t")]).await;

    // A persistent session's queued message is announced to its edge.
    let enqueue = command(Kind::Enqueue(proto::Enqueue {
        message: Some(proto::Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"m1"),
            qos: 1,
            ..proto::Message::default()
        }),
        targets: vec![proto::EnqueueTarget {
            client_id: "c1".into(),
            qos: 1,
            ..proto::EnqueueTarget::default()
        }],
        incoming: None,
        ..proto::Enqueue::default()
    }));
    write(&mut store, vec![enqueue]).await;
    let event = next_event(&mut e1_events).await;
    assert!(matches!(
        event.kind,
        Some(edge_event::Kind::MessagesQueued(ref queued)) if queued.client_id == "c1"
    ));

    // MQTT-3.1.4-3: the client connects again through e2.
    let results = write(&mut store, vec![connect("c1", "e2", 3600)]).await;
    let ResultKind::Connected(connected) = &results[0] else {
        panic!("{results:?}")
    };
    assert!(connected.session_present);
    assert_eq!(connected.previous_edge_id, "e1");
    assert_eq!(connected.subscriptions.len(), 1);
    assert_eq!(
        connected.queue.len(),
        1,
        "the unacknowledged message is resent"
    );
    let event = next_event(&mut e1_events).await;
    assert_eq!(
        event.kind,
        Some(edge_event::Kind::SessionTakenOver(
            proto::SessionTakenOver {
                client_id: "c1".into(),
                epoch: old_epoch,
            }
        ))
    );

    // Whatever e1 still sends for the old connection changes nothing.
    let stale = write(&mut store, vec![subscribe("c1", old_epoch, "stale/#")]).await;
    assert!(matches!(stale[0], ResultKind::Fenced(_)));
    let session = get_session(&mut store, "c1").await;
    assert_eq!(session.subscriptions.len(), 1);
    assert_eq!(session.session.unwrap().edge_id, "e2");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_edges_clients_have_their_wills_published_by_a_live_edge() {
    let dir = tempfile::tempdir().unwrap();
    // The leader's own ticker drives time here, as in production.
    let (node, mut store) = single_voter(dir.path(), Some(Duration::from_millis(50))).await;
    let mut e1_events = watch_edge(&mut store, "e1").await;
    let short_lease = command(Kind::RegisterEdge(proto::RegisterEdge {
        edge_id: "e-dying".into(),
        address: "127.0.0.1:2".into(),
        lease_ms: 300,
        stats: None,
    }));
    let mut with_will = proto::Connect {
        client_id: "sensor".into(),
        edge_id: "e-dying".into(),
        expiry_interval_s: 3600,
        protocol_version: 5,
        ..proto::Connect::default()
    };
    with_will.will = Some(proto::Will {
        message: Some(proto::Message {
            topic: "sensors/offline".into(),
            payload: bytes::Bytes::from_static(b"sensor"),
            qos: 1,
            ..proto::Message::default()
        }),
        delay_s: 0,
    });
    write(
        &mut store,
        vec![short_lease, command(Kind::Connect(with_will))],
    )
    .await;

    // e-dying never renews; e1 (60 s lease) is asked to publish the will.
    let event = next_event(&mut e1_events).await;
    let Some(edge_event::Kind::WillDue(due)) = event.kind else {
        panic!("{event:?}")
    };
    assert_eq!(due.client_id, "sensor");
    assert_eq!(due.message.unwrap().topic, "sensors/offline");

    // The session went offline and its expiry started.
    let session = get_session(&mut store, "sensor").await.session.unwrap();
    assert!(session.edge_id.is_empty());
    assert!(session.expires_at_ms > 0);
    node.shutdown().await;
}

/// A leader reads an edge's write stream only while fewer than
/// `max_submit_in_flight` of its writes wait to commit (a flood is held back
/// at the sender instead of queued here): at a limit of 2, a stream of 300
/// writes and quorum checks is still answered in full, each write once,
/// and every one committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stream_at_its_in_flight_limit_answers_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(1, dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.tick_interval = None;
    config.max_submit_in_flight = 2;
    let node = StoreNode::start(config).await.unwrap();
    let endpoint = format!("http://{}", node.address());
    AdminClient::connect(endpoint.clone())
        .await
        .unwrap()
        .initialize(proto::InitializeRequest {})
        .await
        .unwrap();
    let mut store = StoreClient::connect(endpoint).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while store
            .write(proto::WriteRequest {
                commands: vec![register_edge("e0")],
            })
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();

    const WRITES: u64 = 300;
    let (requests, outgoing) = tokio::sync::mpsc::channel(WRITES as usize);
    for id in 1..=WRITES {
        // Every tenth request is a quorum check (no commands).
        let commands = if id % 10 == 0 {
            Vec::new()
        } else {
            vec![register_edge(&format!("e{id}"))]
        };
        requests
            .send(proto::SubmitRequest { id, commands })
            .await
            .unwrap();
    }
    drop(requests);
    let mut replies = store
        .submit(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let mut answered = std::collections::BTreeSet::new();
    while let Some(reply) = tokio::time::timeout(WAIT, replies.next()).await.unwrap() {
        let reply = reply.unwrap();
        assert!(reply.error.is_empty(), "{reply:?}");
        assert!(answered.insert(reply.id), "{} answered twice", reply.id);
    }
    assert_eq!(answered, (1..=WRITES).collect());
    let edges = store
        .list_edges(proto::ListEdgesRequest {})
        .await
        .unwrap()
        .into_inner()
        .edges;
    assert_eq!(edges.len() as u64, 1 + WRITES - WRITES / 10);
    node.shutdown().await;
}

/// A draining node takes no more writes, and says so in a way an edge can
/// act on: every write it took is answered, an open write stream then ends
/// with a status saying that whatever it did not answer was never
/// proposed, a new stream is refused alike, and an in-process write comes
/// back unproposed with its commands. Nothing it refused was applied.
#[tokio::test]
async fn a_draining_node_answers_what_it_took_and_gives_back_the_rest_unproposed() {
    use rookery_store::service::{Unproposed, unproposed};
    use rookery_store::writer::Refusal;

    let dir = tempfile::tempdir().unwrap();
    let (node, mut store) = single_voter(dir.path(), None).await;
    let (requests, outgoing) = tokio::sync::mpsc::channel(16);
    let mut replies = store
        .submit(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    requests
        .send(proto::SubmitRequest {
            id: 1,
            commands: vec![register_edge("before")],
        })
        .await
        .unwrap();
    let taken = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((taken.id, taken.error.as_str()), (1, ""));

    // Alone in its group: nobody to hand over to, nothing left to settle.
    assert_eq!(node.drain(WAIT).await, Ok(None));

    // The open stream ends, giving back what it had not answered.
    let _ = requests
        .send(proto::SubmitRequest {
            id: 2,
            commands: vec![register_edge("after")],
        })
        .await;
    let ended = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .expect("the stream ends with a status")
        .expect_err("no answer to a write sent after the drain");
    assert_eq!(unproposed(&ended), Some(Unproposed::HandingOver), "{ended}");
    let refused = store
        .submit(tokio_stream::iter(Vec::<proto::SubmitRequest>::new()))
        .await
        .expect_err("a new stream is refused");
    assert_eq!(
        unproposed(&refused),
        Some(Unproposed::HandingOver),
        "{refused}"
    );
    let back = node
        .try_submit(vec![register_edge("local")])
        .err()
        .expect("refused in process too");
    assert_eq!(back.refusal, Refusal::HandingOver);
    assert_eq!(back.commands, vec![register_edge("local")]);

    let edges: Vec<String> = store
        .list_edges(proto::ListEdgesRequest {})
        .await
        .unwrap()
        .into_inner()
        .edges
        .into_iter()
        .map(|edge| edge.edge_id)
        .collect();
    assert!(edges.contains(&"before".to_owned()), "{edges:?}");
    assert!(!edges.contains(&"after".to_owned()), "{edges:?}");
    assert!(!edges.contains(&"local".to_owned()), "{edges:?}");
    node.shutdown().await;
}
