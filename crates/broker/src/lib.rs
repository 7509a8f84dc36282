//! The edge of Rookery: listeners, each client connection's MQTT state
//! machine, the local route cache and delivery, over the session store.
//!
//! Follow a packet: `transport` turns a socket into a byte stream,
//! `connection` runs the protocol for one client, `hub` matches a publish
//! against every session this edge knows and hands it to their mailboxes
//! (`outgoing` paces each session's sends), and `store` is the session
//! store as the edge sees it.

mod broker;
pub mod config;
mod connection;
mod hub;
mod message;
mod outgoing;
mod stats;
mod store;
pub mod transport;

pub use broker::{Broker, BrokerError, ClusterOptions};
pub use config::{BrokerConfig, Limits, ListenerConfig, ListenerKind, QueueOverflow, TlsConfig};
pub use store::StoreUnavailable;
