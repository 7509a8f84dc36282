//! Rookery's replicated session store.
//!
//! A Raft group (openraft) whose log and state machine live in one RocksDB
//! database, served over gRPC (tonic): Raft between store nodes, a session API
//! for edges, and membership administration. The same code runs embedded as a
//! single voter in `rookery serve` and as a 3- or 5-voter group.
//!
//! What it must never do: depend on the layers above it (it knows no MQTT
//! connection, broker or cluster code; edges reach it through its gRPC API in
//! `proto/` or, in process, through [`StoreNode`]); let applying an entry read
//! a replica's clock or randomness (every replica reaches the same state from
//! the same log); answer a write before its entry is committed on a quorum and
//! applied; change the key layout or the snapshot format in place (column
//! families and snapshot tags are only ever appended).
//!
//! Where to start reading: [`node`], which wires one store node together, then
//! [`machine`], what each command does to the session state. Layers, bottom
//! up: [`keys`] (the key layout), [`db`] (column families and per-entry
//! transactions), [`machine`] (the deterministic commands), [`log_store`] and
//! [`state_machine`] (openraft's storage traits), [`network`] (Raft RPC
//! client), [`writer`] (group commit), [`service`] (the gRPC services, one
//! file each) and [`node`]. [`security`] holds what every cluster port and
//! client shares: mutual TLS and the admin token. For operators:
//! [`inspect`] (paged reads of sessions, subscriptions and retained
//! messages) and [`backup`] (checkpoints, and restoring one into a new
//! group).

#![warn(missing_docs)]

pub mod backup;
pub mod db;
pub mod error;
pub mod handover;
pub mod inspect;
pub mod keys;
pub mod log_store;
pub mod machine;
pub mod network;
pub mod node;
pub mod once;
pub mod security;
pub mod service;
pub mod state_machine;
pub mod writer;

use std::io::Cursor;

pub use error::StoreError;
pub use node::{StoreConfig, StoreNode};
pub use security::{AdminToken, ClusterSecurity, ClusterTls, SecurityError};

/// Generated protobuf and gRPC code for `proto/rookery/store/v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("rookery.store.v1");
}

/// Node ids are small integers chosen by the operator, as in etcd or Consul.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Openraft's type configuration for the store: log entries carry a batch
    /// of commands and yield one result per command.
    pub TypeConfig:
        D = proto::CommandBatch,
        R = Vec<proto::CommandResult>,
);

/// A Raft handle of the store's type configuration.
pub type Raft = openraft::Raft<TypeConfig>;
