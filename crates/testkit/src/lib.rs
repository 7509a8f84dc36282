//! What Rookery's black-box tests and its load generator share: the end-to-end
//! tests (`tests/e2e`), the cluster tests (`tests/cluster`) and rookery-bench
//! (`benches/rookery_bench`) all start `rookery` processes or talk MQTT to
//! them, and this crate holds the one copy of each piece they need.
//!
//! - [`process`]: a child process under test — its output captured into a
//!   log, its `listener ready` lines read, signals, bounded waits, and a
//!   watchdog that ends it if the test binary dies first.
//! - [`metrics`]: a bounded HTTP GET and Prometheus series lookup.
//! - [`client`]: one raw MQTT client on `rookery_codec` with the packet
//!   builders: nothing automatic, every read bounded.
//! - [`ws`]: a WebSocket read and written as a byte stream, and the client
//!   side of the MQTT WebSocket handshake.
//! - [`pki`]: a CA and node certificates for TLS between cluster nodes.
//!
//! The kit depends on the codec and ordinary crates only, never on the broker
//! or the store: whatever uses it sees Rookery from outside, as a client or
//! an operator does. It reports failure the way tests do, by panicking with
//! what was expected, except where a caller must go on after a failure (a
//! failover test reconnecting, the load generator counting errors): those
//! operations return typed errors. Start reading at [`client::RawClient`].

// A test kit's assertions are panics that say what was expected.
#![allow(clippy::panic)]

/// The raw MQTT client and its packet builders.
pub mod client;
/// Prometheus scraping.
pub mod metrics;
/// Certificates for cluster TLS tests.
pub mod pki;
/// A child process under test.
pub mod process;
/// MQTT over WebSocket, client side.
pub mod ws;

use std::future::Future;
use std::time::Duration;

pub use client::{
    ClientError, Ended, Io, RawClient, Read, at, clean_v5, clean_v311, connect_packet,
    persistent_v5, persistent_v311, pid, pid_for, publish_packet, subscribe_packet,
};
pub use metrics::{HttpError, find_series, http_get, http_request, http_status, metric, scrape};
pub use pki::{CertFiles, TestCa, TestCert};
pub use process::{
    Process, ProcessError, Signal, Watchdog, free_port, parse_ready_line, signal, strip_ansi,
    wait_bounded,
};
pub use ws::{WsIo, ws_connect};

/// The bound on every wait for something that should happen: a connection,
/// an answer, a process's exit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RawClient::expect_nothing`] waits to be sure that nothing
/// arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// Runs `test` and panics if it has not finished within `limit`, so that a
/// test that waits for something that never comes fails instead of hanging.
pub async fn within<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, test).await {
        Ok(result) => result,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}
