//! Broker-wide counters: exported to Prometheus through `metrics` and kept
//! here too for the `$SYS` topics, which need their current values.

use std::sync::atomic::{AtomicU64, Ordering};

/// The edge's counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_sent: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages not delivered to a session (any reason).
    pub publish_dropped: AtomicU64,
    /// Retained messages held now.
    pub retained_messages: AtomicU64,
}

impl Stats {
    /// A client's CONNECT was accepted.
    pub fn connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("rookery_connections_total").increment(1);
        metrics::gauge!("rookery_clients_connected").set(now as f64);
    }

    /// An accepted client's connection ended.
    pub fn disconnected(&self) {
        let now = self
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!("rookery_clients_connected").set(now as f64);
    }

    /// Bytes read from a client.
    pub fn received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("rookery_bytes_received_total").increment(bytes as u64);
    }

    /// Bytes written to a client.
    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("rookery_bytes_sent_total").increment(bytes as u64);
    }

    /// A PUBLISH read from a client.
    pub fn publish_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rookery_messages_received_total").increment(1);
    }

    /// A PUBLISH written to a client.
    pub fn publish_sent(&self) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rookery_messages_sent_total").increment(1);
    }

    /// A message not delivered to a session, and why.
    pub fn dropped(&self, reason: &'static str) {
        self.publish_dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rookery_messages_dropped_total", "reason" => reason).increment(1);
    }

    /// The number of retained messages held now.
    pub fn set_retained(&self, count: usize) {
        self.retained_messages
            .store(count as u64, Ordering::Relaxed);
        metrics::gauge!("rookery_retained_messages").set(count as f64);
    }
}
