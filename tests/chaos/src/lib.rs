//! The proof of Rookery's guarantees, Jepsen-style: clients record every
//! operation they perform and every message they receive into a
//! [`history::History`], and [`checker::check`] judges the whole history
//! afterwards: no acknowledged QoS 1/2 message lost, no QoS 2 message
//! delivered twice to a session, order kept per publisher and topic (apart
//! from the QoS 1 redelivery MQTT 4.6 allows), shared groups served, wills
//! published once, retained state converged, and nothing delivered that was
//! never sent.
//!
//! The checker knows nothing of how the history was made: a run against a
//! cluster under a nemesis, a saved history read back from JSON lines, or a
//! history written by hand in a test.

#![forbid(unsafe_code)]

pub mod checker;
pub mod history;
pub mod nemesis;
