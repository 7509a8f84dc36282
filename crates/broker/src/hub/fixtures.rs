//! What the hub's tests build their cases from.

use std::sync::Arc;

use rookery_codec::{QoS, SubscriptionOptions};
use rookery_store::proto;

use super::routing::Routes;
use super::{Hub, SubEntry};
use crate::config::BrokerConfig;
use crate::message::{Delivery, Message};
use crate::store::Store;

/// A subscription at `qos`, with a subscription identifier unless 0.
pub(super) fn entry(qos: QoS, subscription_id: u32) -> SubEntry {
    SubEntry {
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
        subscription_id,
    }
}

/// A message to `topic` at `qos`, published by `p`.
pub(super) fn message(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"m"),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at_ms: 0,
        origin: Arc::from("p"),
    })
}

/// A QoS 1 delivery of a message to `t`.
pub(super) fn delivery() -> Delivery {
    Delivery {
        message: message("t", QoS::AtLeastOnce),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        shared_group: None,
        receipt: 0,
    }
}

/// A route of the store's table (`edge` empty: a persistent session's).
pub(super) fn route(filter: &str, edge: &str, client: &str, qos: u32) -> proto::Route {
    proto::Route {
        filter: filter.into(),
        edge_id: edge.into(),
        client_id: client.into(),
        options: Some(proto::SubscriptionOptions {
            qos,
            ..Default::default()
        }),
    }
}

/// The (edge, client) pairs a publish is forwarded to.
pub(super) fn remote_clients(routes: &Routes) -> Vec<(String, String)> {
    routes
        .remote
        .iter()
        .flat_map(|(edge, deliveries)| {
            deliveries
                .iter()
                .map(move |d| (edge.to_string(), d.client_id.clone()))
        })
        .collect()
}

/// A hub on a single-voter store of its own, as edge `A`.
pub(super) async fn hub_on_a_store() -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rookery_store::StoreNode::start(rookery_store::StoreConfig::new(
        1,
        dir.path().to_path_buf(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .expect("store starts");
    node.initialize_single().await.expect("single voter");
    let store = Store::new(
        rookery_cluster::Access::Replica(Arc::new(node)),
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(1),
        crate::DEFAULT_MAX_WRITE_BYTES_IN_FLIGHT,
    );
    let hub = Hub::new(
        Arc::new(BrokerConfig::default()),
        "A".into(),
        String::new(),
        rookery_cluster::Forwarder::default(),
        store,
        Arc::new(crate::auth::Gatekeeper::with(
            rookery_auth::AuthPolicy::default(),
        )),
    );
    (hub, dir)
}
