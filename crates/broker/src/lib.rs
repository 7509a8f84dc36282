//! The edge of Rookery: listeners, each client connection's MQTT state
//! machine, the local route cache and delivery, over the session store.
//!
//! Follow a packet: `transport` turns a socket into a byte stream,
//! `connection` runs the protocol for one client (a core without I/O that
//! decides, and a loop that performs what it decides; start at
//! `connection/mod.rs`), `hub` matches a publish against every session this
//! edge knows and hands it to their mailboxes (`outgoing` paces each
//! session's sends), and `store` is the session store as the edge sees it.
//!
//! It never decides durability: what is committed is the store's, reached
//! only through `store`; the edge keeps nothing that must outlive it.

pub mod auth;
mod broker;
/// The edge's configuration: listeners and protocol limits.
pub mod config;
mod connection;
mod follow;
mod forwarded;
mod hub;
mod message;
mod outgoing;
mod rate;
mod shared_handoff;
mod stats;
mod store;
/// Listeners: TCP, TLS, WebSocket and PROXY protocol, as byte streams.
pub mod transport;
mod wills;
mod write_budget;

/// The entry points of the fuzz targets in `crates/broker/fuzz`; only with
/// the `fuzzing` feature, which nothing else enables.
#[cfg(feature = "fuzzing")]
pub mod fuzz {
    pub use crate::connection::fuzz::drive as drive_connection;
}

pub use broker::{
    Broker, BrokerError, ClusterOptions, DEFAULT_MAX_WRITE_BYTES_IN_FLIGHT, Drained, EdgeProbe,
    Inspector,
};
pub use config::{
    BrokerConfig, DEFAULT_SHUTDOWN_GRACE_S, Limits, ListenerConfig, ListenerKind, QueueOverflow,
    TlsConfig,
};
pub use store::StoreUnavailable;
