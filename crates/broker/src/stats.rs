//! Broker-wide counters: exported to Prometheus through `metrics` and kept
//! here too for the `$SYS` topics, which need their current values.
//!
//! The per-message counters are handles looked up once, when the hub is
//! built (after the binary installed its recorder): counting a message is
//! then an atomic add, with no registry look-up and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};
use rookery_codec::{ProtocolVersion, QoS};

/// The edge's counters, shared by every connection.
#[derive(Debug)]
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
    handles: Handles,
}

/// The Prometheus handles of the per-message figures.
#[derive(Debug)]
struct Handles {
    /// By QoS (index 0, 1, 2).
    messages_received: [Counter; 3],
    messages_sent: [Counter; 3],
    payload_received: [Counter; 3],
    payload_sent: [Counter; 3],
    bytes_received: Counter,
    bytes_sent: Counter,
    dropped: Dropped,
    retained: Gauge,
    subscriptions: Gauge,
    inflight: Gauge,
    queued: Gauge,
}

/// `rookery_messages_dropped_total`, one handle per reason the broker has.
#[derive(Debug)]
struct Dropped {
    queue_full: Counter,
    store_unreachable: Counter,
    refused: Counter,
    not_authorized: Counter,
    packet_too_large: Counter,
    expired: Counter,
}

/// The `qos` label values.
const QOS_LABELS: [&str; 3] = ["0", "1", "2"];

/// The `protocol` label of a protocol version.
pub fn protocol_label(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// Every `protocol` label value.
pub const PROTOCOLS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn by_qos(name: &'static str) -> [Counter; 3] {
    QOS_LABELS.map(|qos| metrics::counter!(name, "qos" => qos))
}

impl Default for Stats {
    fn default() -> Self {
        let dropped = |reason: &'static str| metrics::counter!("rookery_messages_dropped_total", "reason" => reason);
        let handles = Handles {
            messages_received: by_qos("rookery_messages_received_total"),
            messages_sent: by_qos("rookery_messages_sent_total"),
            payload_received: by_qos("rookery_payload_bytes_received_total"),
            payload_sent: by_qos("rookery_payload_bytes_sent_total"),
            bytes_received: metrics::counter!("rookery_bytes_received_total"),
            bytes_sent: metrics::counter!("rookery_bytes_sent_total"),
            dropped: Dropped {
                queue_full: dropped("queue_full"),
                store_unreachable: dropped("store_unreachable"),
                refused: dropped("refused"),
                not_authorized: dropped("not_authorized"),
                packet_too_large: dropped("packet_too_large"),
                expired: dropped("expired"),
            },
            retained: metrics::gauge!("rookery_retained_messages"),
            subscriptions: metrics::gauge!("rookery_subscriptions"),
            inflight: metrics::gauge!("rookery_messages_inflight"),
            queued: metrics::gauge!("rookery_messages_queued"),
        };
        // Present from the start, so that a dashboard or an alert built on
        // them finds them before the first message.
        handles.retained.set(0.0);
        handles.subscriptions.set(0.0);
        handles.inflight.set(0.0);
        handles.queued.set(0.0);
        Stats {
            clients_connected: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            retained_messages: AtomicU64::new(0),
            handles,
        }
    }
}

impl Stats {
    /// Registers the connection series of a listener (every protocol at
    /// 0), so that they exist before the first client connects.
    pub fn register_listener(&self, listener: &str) {
        for protocol in PROTOCOLS {
            let _ = ClientGauge::handles(listener, protocol);
        }
    }

    /// A client's CONNECT was accepted on `listener`; the returned gauge
    /// counts it until [`Stats::disconnected`].
    pub fn connected(&self, listener: &str, protocol: ProtocolVersion) -> ClientGauge {
        self.clients_connected.fetch_add(1, Ordering::Relaxed);
        let (total, connected) = ClientGauge::handles(listener, protocol);
        total.increment(1);
        connected.increment(1.0);
        ClientGauge(connected)
    }

    /// An accepted client's connection ended.
    pub fn disconnected(&self, gauge: ClientGauge) {
        let _ = self
            .clients_connected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_sub(1))
            });
        gauge.0.decrement(1.0);
    }

    /// Bytes read from a client.
    pub fn received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.handles.bytes_received.increment(bytes as u64);
    }

    /// Bytes written to a client.
    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.handles.bytes_sent.increment(bytes as u64);
    }

    /// A PUBLISH read from a client, with its QoS and payload size.
    pub fn publish_received(&self, qos: QoS, payload: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        let qos = qos as usize;
        self.handles.messages_received[qos].increment(1);
        self.handles.payload_received[qos].increment(payload as u64);
    }

    /// A PUBLISH written to a client, with its QoS and payload size.
    pub fn publish_sent(&self, qos: QoS, payload: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        let qos = qos as usize;
        self.handles.messages_sent[qos].increment(1);
        self.handles.payload_sent[qos].increment(payload as u64);
    }

    /// A message not delivered to a session, and why.
    pub fn dropped(&self, reason: &'static str) {
        self.publish_dropped.fetch_add(1, Ordering::Relaxed);
        let dropped = &self.handles.dropped;
        match reason {
            "queue_full" => dropped.queue_full.increment(1),
            "store_unreachable" => dropped.store_unreachable.increment(1),
            "refused" => dropped.refused.increment(1),
            "not_authorized" => dropped.not_authorized.increment(1),
            "packet_too_large" => dropped.packet_too_large.increment(1),
            "expired" => dropped.expired.increment(1),
            other => {
                metrics::counter!("rookery_messages_dropped_total", "reason" => other).increment(1)
            }
        }
    }

    /// The number of retained messages held now.
    pub fn set_retained(&self, count: usize) {
        self.retained_messages
            .store(count as u64, Ordering::Relaxed);
        self.handles.retained.set(count as f64);
    }

    /// The number of subscriptions in the edge's index now.
    pub fn set_subscriptions(&self, count: usize) {
        self.handles.subscriptions.set(count as f64);
    }

    /// A connection's in-flight and queued messages changed by these
    /// amounts since its last report. (The gauges add atomically: every
    /// connection's changes add up, in whatever order they arrive.)
    fn outgoing_changed(&self, inflight: i64, queued: i64) {
        if inflight != 0 {
            self.handles.inflight.increment(inflight as f64);
        }
        if queued != 0 {
            self.handles.queued.increment(queued as f64);
        }
    }
}

/// A connected client's place in `rookery_clients_connected`.
#[derive(Debug)]
pub struct ClientGauge(Gauge);

impl ClientGauge {
    fn handles(listener: &str, protocol: ProtocolVersion) -> (Counter, Gauge) {
        let labels = [
            ("listener", listener.to_owned()),
            ("protocol", protocol_label(protocol).to_owned()),
        ];
        (
            metrics::counter!("rookery_connections_total", &labels),
            metrics::gauge!("rookery_clients_connected", &labels),
        )
    }
}

/// What one connection last reported of its outgoing messages, so that it
/// reports only changes (and takes them back when it ends).
#[derive(Debug, Default)]
pub struct OutgoingReport {
    inflight: usize,
    queued: usize,
}

impl OutgoingReport {
    /// Reports the connection's figures now, if they changed.
    pub fn update(&mut self, stats: &Stats, inflight: usize, queued: usize) {
        if inflight != self.inflight || queued != self.queued {
            stats.outgoing_changed(
                inflight as i64 - self.inflight as i64,
                queued as i64 - self.queued as i64,
            );
            self.inflight = inflight;
            self.queued = queued;
        }
    }

    /// The connection ended: its messages no longer count here.
    pub fn clear(&mut self, stats: &Stats) {
        self.update(stats, 0, 0);
    }
}
