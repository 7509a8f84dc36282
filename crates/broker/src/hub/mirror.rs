//! The cluster route mirror: the store's routes of sessions this edge does
//! not hold (online on other edges, or persistent), kept from the store's
//! notifications, and where the other edges listen for forwarded publishes.
//! The registry follows the mirror for every session not online here.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rookery_store::proto;

use super::registry::{SubEntry, sub_entry_from_proto};
use super::{ClientId, Hub};
use crate::store::StoreUnavailable;

/// The routes of one session as the store's route table has them, without
/// this edge's own (its connections keep their subscriptions themselves).
#[derive(Debug, Default)]
struct ClusterRoutes {
    /// The other edge the session is online on, and its filters there.
    edge: Option<Arc<str>>,
    edge_filters: HashMap<String, SubEntry>,
    /// Filters whose QoS 1/2 messages queue in the store (persistent).
    queue_filters: HashMap<String, SubEntry>,
}

impl ClusterRoutes {
    fn is_empty(&self) -> bool {
        self.edge_filters.is_empty() && self.queue_filters.is_empty()
    }
}

/// What the mirror says of one session, for the registry to follow.
#[derive(Debug)]
pub(super) struct MirroredSession {
    /// Every filter routed to it, with its options.
    pub(super) filters: HashMap<String, SubEntry>,
    /// It has routes queuing in the store.
    pub(super) persistent: bool,
    /// The other edge it is online on.
    pub(super) edge: Option<Arc<str>>,
}

/// The mirror's two maps, each behind its own mutex. Both are leaves in the
/// lock order: no other lock is taken while one is held (the registry reads
/// the routes under its own lock, never the other way round).
#[derive(Debug, Default)]
pub(super) struct ClusterMirror {
    routes: Mutex<HashMap<ClientId, ClusterRoutes>>,
    edge_addresses: Mutex<HashMap<Arc<str>, String>>,
}

impl ClusterMirror {
    /// Adds a route; the session it belongs to, unless the route is
    /// `own_edge`'s.
    pub(super) fn add(&self, own_edge: &str, route: &proto::Route) -> Option<ClientId> {
        mirror_into(&mut self.routes.lock(), own_edge, route)
    }

    /// Removes a route; the session it belonged to, unless the route is
    /// `own_edge`'s or the session had no routes.
    pub(super) fn remove(&self, own_edge: &str, route: &proto::Route) -> Option<ClientId> {
        if route.edge_id == own_edge {
            return None;
        }
        let client: ClientId = Arc::from(route.client_id.as_str());
        let mut mirror = self.routes.lock();
        let routes = mirror.get_mut(&client)?;
        if route.edge_id.is_empty() {
            routes.queue_filters.remove(&route.filter);
        } else if routes.edge.as_deref() == Some(route.edge_id.as_str()) {
            routes.edge_filters.remove(&route.filter);
            if routes.edge_filters.is_empty() {
                routes.edge = None;
            }
        }
        if routes.is_empty() {
            mirror.remove(&client);
        }
        Some(client)
    }

    /// Replaces the whole mirror with the route table `routes`; the
    /// sessions it held before and holds now.
    pub(super) fn replace(&self, own_edge: &str, routes: &[proto::Route]) -> Vec<ClientId> {
        // Built aside and swapped in at once: a session leaving meanwhile
        // must not see an empty mirror.
        let mut mirror = HashMap::new();
        for route in routes {
            mirror_into(&mut mirror, own_edge, route);
        }
        let mut touched: Vec<ClientId> = mirror.keys().cloned().collect();
        let mut current = self.routes.lock();
        touched.extend(current.keys().cloned());
        *current = mirror;
        touched
    }

    /// What the mirror holds of a session, if anything.
    pub(super) fn session(&self, client: &ClientId) -> Option<MirroredSession> {
        let mirror = self.routes.lock();
        let routes = mirror.get(client)?;
        Some(MirroredSession {
            filters: routes
                .queue_filters
                .iter()
                .chain(routes.edge_filters.iter())
                .map(|(filter, entry)| (filter.clone(), *entry))
                .collect(),
            persistent: !routes.queue_filters.is_empty(),
            edge: routes.edge.clone(),
        })
    }

    /// Records where an edge listens (an empty address: nowhere).
    fn edge_registered(&self, edge: &proto::Edge) {
        let id: Arc<str> = Arc::from(edge.edge_id.as_str());
        let mut addresses = self.edge_addresses.lock();
        if edge.address.is_empty() {
            addresses.remove(&id);
        } else {
            addresses.insert(id, edge.address.clone());
        }
    }

    /// Replaces every known address with the edge table `edges` (read
    /// again after missed notifications: an edge that died meanwhile is
    /// forgotten).
    fn replace_edges(&self, edges: &[proto::Edge]) {
        let addresses = edges
            .iter()
            .filter(|edge| !edge.address.is_empty())
            .map(|edge| (Arc::from(edge.edge_id.as_str()), edge.address.clone()))
            .collect();
        *self.edge_addresses.lock() = addresses;
    }

    /// Where an edge's forwarding service listens, as it registered.
    pub(super) fn edge_address(&self, edge: &Arc<str>) -> Option<String> {
        self.edge_addresses.lock().get(edge).cloned()
    }
}

impl Hub {
    /// Reads the route table, the retained messages and the edges again,
    /// after notifications were missed.
    pub async fn reload(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        let routes = self.store.routes().await?;
        for client in self.mirror.replace(&self.edge_id, &routes) {
            self.follow_cluster_routes(&client);
        }
        self.load_retained(now_ms).await?;
        self.load_edges().await
    }

    /// Reads where the other edges listen.
    pub(super) async fn load_edges(&self) -> Result<(), StoreUnavailable> {
        let edges = self.store.edges().await?;
        self.mirror.replace_edges(&edges);
        Ok(())
    }

    /// Where another edge listens for forwarded publishes.
    pub fn edge_registered(&self, edge: &proto::Edge) {
        self.mirror.edge_registered(edge);
    }

    /// A route the store added: kept for sessions not online here.
    pub fn route_added(&self, route: &proto::Route) {
        if let Some(client) = self.mirror.add(&self.edge_id, route) {
            self.follow_cluster_routes(&client);
        }
    }

    /// A route the store removed.
    pub fn route_removed(&self, route: &proto::Route) {
        if let Some(client) = self.mirror.remove(&self.edge_id, route) {
            self.follow_cluster_routes(&client);
        }
    }

    /// The store no longer has the session of a connection that ended
    /// here (an operator deleted it): it is routed as the store's routes
    /// now say, which is not at all.
    pub fn session_ended(&self, client: &ClientId) {
        self.follow_cluster_routes(client);
    }

    /// Makes the registry hold what the store's routes say of a session
    /// that is not online here (one online here keeps its own).
    fn follow_cluster_routes(&self, client: &ClientId) {
        self.registry.follow(client, &self.mirror);
    }
}

/// Adds a route of another edge (or a persistent session's) to `mirror`;
/// the session it belongs to, unless the route is `own_edge`'s.
fn mirror_into(
    mirror: &mut HashMap<ClientId, ClusterRoutes>,
    own_edge: &str,
    route: &proto::Route,
) -> Option<ClientId> {
    if route.edge_id == own_edge {
        return None;
    }
    let client: ClientId = Arc::from(route.client_id.as_str());
    let entry = sub_entry_from_proto(route.options.as_ref());
    let routes = mirror.entry(client.clone()).or_default();
    if route.edge_id.is_empty() {
        routes.queue_filters.insert(route.filter.clone(), entry);
    } else {
        let edge: Arc<str> = Arc::from(route.edge_id.as_str());
        if routes.edge.as_ref() != Some(&edge) {
            // Online on a new edge: the old edge's routes are gone (their
            // removals may still be on their way).
            routes.edge_filters.clear();
            routes.edge = Some(edge);
        }
        routes.edge_filters.insert(route.filter.clone(), entry);
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::fixtures::{entry, hub_on_a_store, message, remote_clients, route};
    use crate::hub::{Mailbox, SessionEntry};
    use rookery_codec::QoS;

    /// Sessions online on other edges are routed there; a persistent
    /// session's QoS 1/2 copy goes to the store whichever edge holds it; a
    /// session that moved is routed to its new edge only.
    #[tokio::test]
    async fn routes_follow_the_store_route_table_of_other_edges() {
        let (hub, _dir) = hub_on_a_store().await;
        hub.route_added(&route("a/#", "B", "clean", 1));
        hub.route_added(&route("a/#", "B", "durable", 1));
        hub.route_added(&route("a/#", "", "durable", 1));
        // This edge's own routes are its connections' business.
        hub.route_added(&route("a/#", "A", "mine", 1));

        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert_eq!(
            remote_clients(&routes),
            vec![("B".to_owned(), "clean".to_owned())]
        );
        let durable: Vec<&str> = routes
            .durable
            .iter()
            .map(|t| t.client_id.as_str())
            .collect();
        assert_eq!(durable, vec!["durable"]);
        assert!(routes.local.is_empty());

        // QoS 0 to a persistent session online elsewhere: forwarded.
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        let mut remote = remote_clients(&routes);
        remote.sort();
        assert_eq!(
            remote,
            vec![
                ("B".to_owned(), "clean".to_owned()),
                ("B".to_owned(), "durable".to_owned())
            ]
        );

        // `clean` reconnects on edge C; the removal of B's route comes later.
        hub.route_added(&route("a/#", "C", "clean", 1));
        hub.route_removed(&route("a/#", "B", "clean", 1));
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        let mut remote = remote_clients(&routes);
        remote.sort();
        assert_eq!(
            remote,
            vec![
                ("B".to_owned(), "durable".to_owned()),
                ("C".to_owned(), "clean".to_owned())
            ]
        );

        // `durable`'s edge dies: it stays a persistent, offline session.
        hub.route_removed(&route("a/#", "B", "durable", 1));
        let routes = hub.route(&message("a/x", QoS::AtMostOnce));
        assert_eq!(
            remote_clients(&routes),
            vec![("C".to_owned(), "clean".to_owned())]
        );
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        let durable: Vec<&str> = routes
            .durable
            .iter()
            .map(|t| t.client_id.as_str())
            .collect();
        assert_eq!(durable, vec!["durable"]);

        // Its session ends: nothing is left of it.
        hub.route_removed(&route("a/#", "", "durable", 1));
        assert!(hub.session("durable").is_none());
        assert_eq!(hub.subscription_count(), 1);
    }

    /// An edge registered nowhere (dead, its record gone) is forgotten, and
    /// reading the edge table again keeps only the edges it holds: the
    /// address table does not grow with every edge restart.
    #[test]
    fn dead_edges_leave_the_address_table() {
        let mirror = ClusterMirror::default();
        let edge = |id: &str, address: &str| proto::Edge {
            edge_id: id.into(),
            address: address.into(),
            ..proto::Edge::default()
        };
        for incarnation in 0..5 {
            mirror.edge_registered(&edge(&format!("e2.{incarnation}"), "10.0.0.2:7884"));
            if incarnation > 0 {
                mirror.edge_registered(&edge(&format!("e2.{}", incarnation - 1), ""));
            }
        }
        assert_eq!(mirror.edge_addresses.lock().len(), 1);
        assert_eq!(
            mirror.edge_address(&Arc::from("e2.4")).as_deref(),
            Some("10.0.0.2:7884")
        );
        mirror.edge_registered(&edge("e3.0", "10.0.0.3:7884"));
        mirror.replace_edges(&[edge("e3.0", "10.0.0.3:7884"), edge("e4.0", "")]);
        let known: Vec<Arc<str>> = mirror.edge_addresses.lock().keys().cloned().collect();
        assert_eq!(known, vec![Arc::from("e3.0")]);
    }

    /// A session online here ignores the store's stale routes of it, and is
    /// routed by them again once its connection leaves this edge.
    #[tokio::test]
    async fn a_session_online_here_takes_over_from_its_mirrored_routes() {
        let (hub, _dir) = hub_on_a_store().await;
        let client: ClientId = Arc::from("c");
        let (mailbox, _receiver) = Mailbox::new(7, 100, 0);
        hub.attach(
            &client,
            SessionEntry {
                epoch: 2,
                persistent: false,
                mailbox: Some(mailbox),
                remote_edge: None,
            },
            [("a/#".to_owned(), entry(QoS::AtLeastOnce, 0))],
        )
        .unwrap();
        // The client's newer connection on B shows up before this one ends.
        hub.route_added(&route("a/#", "B", "c", 1));
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert_eq!(routes.local.len(), 1);
        assert!(routes.remote.is_empty());

        assert!(hub.detach(&client, 7, false));
        let routes = hub.route(&message("a/x", QoS::AtLeastOnce));
        assert!(routes.local.is_empty());
        assert_eq!(
            remote_clients(&routes),
            vec![("B".to_owned(), "c".to_owned())]
        );
    }
}
