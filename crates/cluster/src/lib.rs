//! Rookery's cluster layer, between the store and the edge: an edge's
//! ordered writes to the store leader ([`writes`]), edge-to-edge forwarding
//! of publishes ([`forward`]), and how a store node forms or joins its group
//! ([`membership`]).

pub mod access;
pub mod forward;
pub mod membership;
pub mod writes;

pub use access::{Access, BadStoreAddress, Peers};
pub use forward::{DeliverySink, Forwarder, LinkFailed, Outbound};
pub use membership::{Discovery, JoinFailed, Joined, MembershipError, form_or_join};
pub use writes::{LeaderWrites, MayHaveCommitted, NotProposed, StoreContact, WriteFailed};

/// Generated protobuf and gRPC code for `proto/rookery/cluster/v1`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("rookery.cluster.v1");
}
