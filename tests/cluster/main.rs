//! Cluster tests: three real `rookery` processes, each a store replica and
//! an edge on its own loopback address (node `i` on `127.0.0.i`), forming
//! one cluster; MQTT clients on different nodes; nodes killed with SIGKILL
//! mid-stream. They check what a cluster adds to a single broker: routing
//! between edges, sessions and wills that outlive their edge, no
//! acknowledged message lost when the store leader dies, QoS 2 exactly once
//! across an edge's death, shared subscriptions balanced cluster-wide,
//! takeover across edges.
//!
//! Each test is named after the behaviour it checks. Start reading at
//! `harness.rs` (the processes), then the raw MQTT client of
//! `rookery_testkit::client` (its `try_` operations fail instead of
//! panicking, so that tests can reconnect) and `traffic.rs` (numbered message
//! streams and route probes).
//!
//! At most `ROOKERY_CLUSTER_PARALLEL` (default 1) clusters run at once;
//! `ROOKERY_CLUSTER_BIN` runs another build of the binary (e.g. release).

// The helpers of a test report failure the way tests do: by panicking with
// what was expected. (Clippy's allow-*-in-tests covers only `#[test]`
// functions, not the helpers of an integration test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod proxy;
mod traffic;

mod auth;
mod backpressure;
mod caps;
mod chaos;
mod ctl;
mod edges;
mod exactly_once;
mod failover;
mod membership;
mod metrics;
mod moved;
mod partition;
mod probes;
mod rolling;
mod routing;
mod security;
mod state;
mod takeover;
mod will;
