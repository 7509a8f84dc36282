//! End-to-end tests: the real `rookery` binary, started as a child process on
//! loopback ports, talked to over TCP by an independent MQTT client library
//! (rumqttc, 3.1.1 and 5.0) and by a raw-packet client for the corner cases a
//! library hides.
//!
//! Each test is named after the behaviour it checks and, where there is one,
//! the spec's normative statement (`mqtt_3_1_4_3_...` is MQTT-3.1.4-3 of MQTT
//! 5.0 unless the test says 3.1.1). `ROOKERY_E2E_BROKER=mosquitto` runs the
//! same tests against Mosquitto as a reference; tests of what only Rookery
//! promises skip themselves there.
//!
//! Start reading at `harness.rs` (the broker process), then `clients.rs`
//! (rumqttc) and the raw-packet client of `rookery_testkit::client`.

// The helpers of a test report failure the way tests do: by panicking with
// what was expected. (Clippy's allow-*-in-tests covers only `#[test]`
// functions, not the helpers of an integration test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod clients;
mod harness;

mod auth;
mod backpressure;
mod connect;
mod disk_full;
mod hostile;
mod limits;
mod metrics;
mod passwd;
mod probes;
mod publish;
mod retain;
mod robustness;
mod session;
mod siege;
mod store_limits;
mod subscribe;
mod transports;
mod v5;
mod will;
