//! Rookery's cluster layer, between the store and the edge: how an edge
//! reaches the store ([`access`]), its writes to the store leader in
//! submission order ([`writes`]), edge-to-edge forwarding of publishes
//! ([`forward`]), how a store node forms, joins or resumes its group
//! ([`membership`]), and has it record its new address when it moved
//! ([`moved`]).
//!
//! It knows nothing of MQTT: it carries the store's commands and the edge's
//! deliveries without reading them. It never retries a failed write (one
//! that may have committed must not be applied twice; [`WriteFailed`] tells
//! the caller which it is), never holds a caller past the write timeout,
//! and keeps no node's address as resolved once: peers are `host:port`
//! names, resolved again on every attempt.
//!
//! Start reading at [`LeaderWrites::submit`], the path of every write an edge
//! makes; then [`Forwarder::send`] for publishes to other edges.

#![warn(missing_docs)]

pub mod access;
pub mod forward;
mod link_budget;
pub mod membership;
pub mod moved;
pub mod room;
pub mod writes;

pub use access::{Access, BadStoreAddress, Peers};
pub use forward::{DeliverySink, ForwardSettings, Forwarder, Holdback, LinkFailed, Outbound};
pub use link_budget::Congested;
pub use membership::{Discovery, JoinFailed, Joined, MembershipError, form_or_join};
pub use moved::{OwnAddress, keep_address_current};
pub use writes::{
    LeaderWrites, MayHaveCommitted, NotProposed, StoreContact, WriteChain, WriteFailed,
};

/// Generated protobuf and gRPC code for `proto/rookery/cluster/v1`.
#[allow(
    missing_debug_implementations,
    missing_docs,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("rookery.cluster.v1");
}
