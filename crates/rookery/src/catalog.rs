//! Every metric a Rookery node exports: its name, type, HELP text and
//! labels, in one table.
//!
//! The crates record through the `metrics` facade by name; this table is
//! what the exporter describes (HELP lines), what it registers at start (a
//! counter or histogram whose labels are all known is exported at 0 before
//! its first event, so dashboards and alerts find it), which buckets each
//! histogram gets, and what docs/operations.md documents. A test
//! below reads the workspace's sources and fails when a metric is recorded
//! that this table does not name, or named here and recorded nowhere.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Only goes up (reset by a restart); names end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into these bucket bounds (`le`).
    Histogram(&'static [f64]),
}

/// Which part of a node records a metric: a node exports only its roles'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Every node: its build, start, reloads.
    Node,
    /// Every node, read when `/metrics` is scraped (`process.rs`), never
    /// through the recorder: the process and its data directory.
    Process,
    /// Nodes with the edge role (MQTT listeners, forwarding).
    Edge,
    /// Nodes with the store role (a Raft replica).
    Store,
}

/// A label and the values it takes.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    /// The label's name.
    pub name: &'static str,
    /// Every value it takes, when they are fixed; empty when values come
    /// from the configuration or the cluster (listener names, node ids).
    pub values: &'static [&'static str],
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name as exported.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Who records it.
    pub owner: Owner,
    /// The HELP text.
    pub help: &'static str,
    /// Its labels.
    pub labels: &'static [Label],
}

/// Bucket bounds of latencies, in seconds: 0.5 ms to 10 s.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of sizes, in bytes: 256 B to 16 MiB.
pub const BYTES: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
/// Bucket bounds of counts (writes per entry, deliveries per batch).
pub const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

const QOS: Label = Label {
    name: "qos",
    values: &["0", "1", "2"],
};
const LISTENER: Label = Label {
    name: "listener",
    values: &[],
};
const PROTOCOL: Label = Label {
    name: "protocol",
    values: &["3.1", "3.1.1", "5.0"],
};

const fn counter(
    name: &'static str,
    owner: Owner,
    help: &'static str,
    labels: &'static [Label],
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        owner,
        help,
        labels,
    }
}

const fn gauge(
    name: &'static str,
    owner: Owner,
    help: &'static str,
    labels: &'static [Label],
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        owner,
        help,
        labels,
    }
}

const fn histogram(
    name: &'static str,
    owner: Owner,
    buckets: &'static [f64],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram(buckets),
        owner,
        help,
        labels: &[],
    }
}

use Owner::{Edge, Node, Process, Store};

/// Every metric, grouped as docs/operations.md groups them.
pub const METRICS: &[Metric] = &[
    // --- The node and its process.
    gauge(
        "rookery_build_info",
        Node,
        "Always 1; the version label says which build of Rookery runs",
        &[Label {
            name: "version",
            values: &[],
        }],
    ),
    gauge(
        "rookery_start_time_seconds",
        Node,
        "When this process started, in seconds since the Unix epoch",
        &[],
    ),
    gauge(
        "rookery_uptime_seconds",
        Node,
        "Seconds since this process started",
        &[],
    ),
    counter(
        "rookery_reloads_total",
        Node,
        "Configuration reloads on SIGHUP, by result (ok, failed: what was in force stays)",
        &[Label {
            name: "result",
            values: &["ok", "failed"],
        }],
    ),
    counter(
        "rookery_admin_api_refused_total",
        Node,
        "Admin API requests on a listener off loopback refused for want of a valid bearer token",
        &[],
    ),
    counter(
        "process_cpu_seconds_total",
        Process,
        "CPU time this process has used, user and system, in seconds",
        &[],
    ),
    gauge(
        "process_resident_memory_bytes",
        Process,
        "Resident memory of this process, in bytes",
        &[],
    ),
    gauge(
        "process_virtual_memory_bytes",
        Process,
        "Virtual memory of this process, in bytes",
        &[],
    ),
    gauge(
        "process_open_fds",
        Process,
        "File descriptors this process has open (sockets included)",
        &[],
    ),
    gauge(
        "process_max_fds",
        Process,
        "The most file descriptors this process may open (its soft limit)",
        &[],
    ),
    gauge("process_threads", Process, "Threads of this process", &[]),
    gauge(
        "process_start_time_seconds",
        Process,
        "When this process started, in seconds since the Unix epoch, as the kernel counts it",
        &[],
    ),
    gauge(
        "rookery_data_dir_filesystem_avail_bytes",
        Process,
        "Bytes free for this process on the filesystem holding the data directory",
        &[],
    ),
    gauge(
        "rookery_data_dir_filesystem_size_bytes",
        Process,
        "Size in bytes of the filesystem holding the data directory",
        &[],
    ),
    // --- Clients, connections and sessions (edge).
    counter(
        "rookery_connections_total",
        Edge,
        "Clients whose CONNECT was accepted, by listener and protocol version",
        &[LISTENER, PROTOCOL],
    ),
    gauge(
        "rookery_clients_connected",
        Edge,
        "Clients connected now (sessions online on this edge), by listener and protocol version",
        &[LISTENER, PROTOCOL],
    ),
    counter(
        "rookery_connections_refused_total",
        Edge,
        "CONNECTs answered with a refusal, by CONNACK reason",
        &[Label {
            name: "reason",
            values: &[
                "BadUserNameOrPassword",
                "NotAuthorized",
                "ServerUnavailable",
                "QuotaExceeded",
            ],
        }],
    ),
    counter(
        "rookery_auth_failures_total",
        Edge,
        "Clients refused at CONNECT by authentication, by reason",
        &[Label {
            name: "reason",
            values: &["bad_credentials", "not_authorized", "bad_method"],
        }],
    ),
    counter(
        "rookery_authorization_denied_total",
        Edge,
        "Actions the ACL denied, by access (publish, subscribe, read)",
        &[Label {
            name: "access",
            values: &["publish", "subscribe", "read"],
        }],
    ),
    counter(
        "rookery_persistent_sessions_refused_total",
        Edge,
        "CONNECTs refused because the store holds max_persistent_sessions already",
        &[],
    ),
    counter(
        "rookery_connect_timeouts_total",
        Edge,
        "Connections closed because no CONNECT arrived within connect_timeout_s",
        &[],
    ),
    counter(
        "rookery_keep_alive_timeouts_total",
        Edge,
        "Clients disconnected for sending nothing within 1.5 times their keep alive",
        &[],
    ),
    counter(
        "rookery_send_timeouts_total",
        Edge,
        "Clients disconnected because they took none of the data written to them for send_timeout_s",
        &[],
    ),
    counter(
        "rookery_protocol_errors_total",
        Edge,
        "Connections closed for a protocol violation, by kind",
        &[Label {
            name: "reason",
            values: &["malformed_packet"],
        }],
    ),
    counter(
        "rookery_accept_errors_total",
        Edge,
        "Errors accepting a socket, by listener",
        &[LISTENER],
    ),
    counter(
        "rookery_handshake_failures_total",
        Edge,
        "Connections that failed before MQTT began, by listener and reason (timeout, proxy, tls, websocket, limited)",
        &[
            LISTENER,
            Label {
                name: "reason",
                values: &["timeout", "proxy", "tls", "websocket", "limited"],
            },
        ],
    ),
    counter(
        "rookery_connections_limited_total",
        Edge,
        "Connections closed as soon as they were accepted because a connection limit was reached, by listener and limit",
        &[
            LISTENER,
            Label {
                name: "limit",
                values: &[
                    "max_connections",
                    "listener_max_connections",
                    "max_connections_per_address",
                ],
            },
        ],
    ),
    counter(
        "rookery_connection_rate_limited_total",
        Edge,
        "Times a listener stopped accepting for a moment because connections arrived faster than its max_connection_rate",
        &[LISTENER],
    ),
    counter(
        "rookery_client_limits_total",
        Edge,
        "Times a per-client limit acted, by limit",
        &[Label {
            name: "limit",
            values: &[
                "max_client_id_length",
                "max_subscriptions",
                "messages_rate",
                "bytes_rate",
                "max_output_buffer",
            ],
        }],
    ),
    gauge(
        "rookery_subscriptions",
        Edge,
        "Subscriptions in this edge's index (its own sessions' and those mirrored from other edges)",
        &[],
    ),
    // --- Messages (edge).
    counter(
        "rookery_messages_received_total",
        Edge,
        "PUBLISH packets received from clients, by QoS",
        &[QOS],
    ),
    counter(
        "rookery_messages_sent_total",
        Edge,
        "PUBLISH packets written to clients, by QoS",
        &[QOS],
    ),
    counter(
        "rookery_payload_bytes_received_total",
        Edge,
        "Payload bytes of the PUBLISH packets received from clients, by QoS",
        &[QOS],
    ),
    counter(
        "rookery_payload_bytes_sent_total",
        Edge,
        "Payload bytes of the PUBLISH packets written to clients, by QoS",
        &[QOS],
    ),
    counter(
        "rookery_bytes_received_total",
        Edge,
        "Bytes read from clients' connections (every packet)",
        &[],
    ),
    counter(
        "rookery_bytes_sent_total",
        Edge,
        "Bytes written to clients' connections (every packet)",
        &[],
    ),
    gauge(
        "rookery_messages_inflight",
        Edge,
        "QoS 1 and 2 messages written to clients of this edge and not yet acknowledged",
        &[],
    ),
    gauge(
        "rookery_messages_queued",
        Edge,
        "Messages waiting in this edge's connections for their client's in-flight window",
        &[],
    ),
    counter(
        "rookery_messages_dropped_total",
        Edge,
        "Messages not delivered to a session, by reason",
        &[Label {
            name: "reason",
            values: &[
                "queue_full",
                "store_unreachable",
                "refused",
                "not_authorized",
                "packet_too_large",
                "expired",
            ],
        }],
    ),
    counter(
        "rookery_messages_unrouted_total",
        Edge,
        "Publishes that matched no subscription anywhere",
        &[],
    ),
    counter(
        "rookery_publishes_unconfirmed_total",
        Edge,
        "QoS 1/2 publishes not acknowledged because their store write or forwards could not be confirmed",
        &[],
    ),
    counter(
        "rookery_publisher_pauses_total",
        Edge,
        "Times a publisher stopped being read because a session it publishes to did not drain",
        &[],
    ),
    counter(
        "rookery_sessions_stalled_total",
        Edge,
        "Sessions that did not drain within publisher_pause_ms: publishers stop waiting for them and their overflow is dropped",
        &[],
    ),
    counter(
        "rookery_subscribe_waits_timed_out_total",
        Edge,
        "Publishes matched before a SUBSCRIBE read earlier took effect, because the 10 ms bound ran out",
        &[],
    ),
    counter(
        "rookery_wills_published_total",
        Edge,
        "Will messages this edge published",
        &[],
    ),
    counter(
        "rookery_wills_published_again_total",
        Edge,
        "Wills handed to this edge that another edge had published already: not queued or delivered again",
        &[],
    ),
    counter(
        "rookery_wills_discarded_total",
        Edge,
        "Wills handed to this edge by a takeover that this edge discarded: their connections had ended here with a normal DISCONNECT",
        &[],
    ),
    counter(
        "rookery_shared_redistributed_total",
        Edge,
        "Unacknowledged shared-subscription messages of a departed member routed to another member",
        &[],
    ),
    counter(
        "rookery_shared_handed_off_total",
        Edge,
        "Shared-subscription copies moved from the store queue of a persistent member offline for shared_handoff_delay_s to an online member",
        &[],
    ),
    counter(
        "rookery_shared_redistribution_dropped_total",
        Edge,
        "Unacknowledged shared-subscription messages of a departed member that no other member could take",
        &[],
    ),
    // --- Retained messages (edge).
    gauge(
        "rookery_retained_messages",
        Edge,
        "Retained messages this edge holds in memory",
        &[],
    ),
    counter(
        "rookery_retained_refused_total",
        Edge,
        "Retained messages the store refused (max_retained_messages or max_retained_bytes reached)",
        &[],
    ),
    counter(
        "rookery_retained_paged_subscriptions_total",
        Edge,
        "Subscriptions whose matching retained messages were read from the store a page at a time",
        &[],
    ),
    // --- The edge and the store.
    counter(
        "rookery_store_writes_total",
        Edge,
        "Writes this edge sent to the store",
        &[],
    ),
    counter(
        "rookery_store_write_failures_total",
        Edge,
        "Writes of this edge that failed or timed out (their publishers were not acknowledged)",
        &[],
    ),
    counter(
        "rookery_store_writes_resent_total",
        Edge,
        "Writes of this edge that a store node gave back unproposed (it handed its leadership over, or did not lead), or sessions' records lost with a write stream that broke (the leader died), sent again to the next leader",
        &[],
    ),
    histogram(
        "rookery_store_write_duration_seconds",
        Edge,
        SECONDS,
        "Time from a write's submission by this edge to the store's answer (commit on a quorum, or failure)",
    ),
    gauge(
        "rookery_store_quorum_contact_age_seconds",
        Edge,
        "Seconds since this edge last heard from the store's majority (a write committed or a quorum check passed)",
        &[],
    ),
    counter(
        "rookery_store_write_budget_reached_total",
        Edge,
        "Times this edge's store write budget (max_write_bytes_in_flight) was spent and clients with writes outstanding were not read",
        &[],
    ),
    counter(
        "rookery_store_backpressure_pauses_total",
        Edge,
        "Times a client was not read because of its own outstanding store writes",
        &[],
    ),
    counter(
        "rookery_edge_lease_lapsed_total",
        Edge,
        "Times the store let this edge's lease lapse and took its sessions offline, and the edge closed their connections",
        &[],
    ),
    counter(
        "rookery_qos2_retries_delivered_again_total",
        Edge,
        "Retried QoS 2 publishes of persistent sessions that the store had taken already and that were delivered again, under the first attempt's receipt, to sessions the store does not serve",
        &[],
    ),
    counter(
        "rookery_qos2_retry_copies_dropped_total",
        Edge,
        "Copies of a retried QoS 2 publish dropped because the session had already taken its receipt (exactly once)",
        &[],
    ),
    counter(
        "rookery_disconnect_record_retries_total",
        Edge,
        "Attempts to record how a connection ended (its will published or discarded) that failed and were retried",
        &[],
    ),
    counter(
        "rookery_store_followed_node_behind_total",
        Edge,
        "Times this edge-only node left the store node it followed because that node stopped keeping up with the others",
        &[],
    ),
    counter(
        "rookery_store_events_lagged_total",
        Edge,
        "Times this edge fell behind the store's notifications and read its state again",
        &[],
    ),
    // --- Forwarding between edges.
    counter(
        "rookery_forward_sent_total",
        Edge,
        "Deliveries forwarded to other edges",
        &[],
    ),
    counter(
        "rookery_forward_received_total",
        Edge,
        "Deliveries forwarded here by other edges",
        &[],
    ),
    histogram(
        "rookery_forward_batch_deliveries",
        Edge,
        COUNTS,
        "Deliveries per batch forwarded to another edge",
    ),
    histogram(
        "rookery_forward_batch_duration_seconds",
        Edge,
        SECONDS,
        "Time from sending a forwarded batch to its acknowledgement by the receiving edge",
    ),
    counter(
        "rookery_forward_dropped_total",
        Edge,
        "Deliveries dropped because the link to their edge failed",
        &[],
    ),
    counter(
        "rookery_forward_unconfirmed_total",
        Edge,
        "Forwarded deliveries sent but never acknowledged (the link failed)",
        &[],
    ),
    counter(
        "rookery_forward_queue_full_total",
        Edge,
        "Deliveries not queued because the link to their edge held forward_queue_bytes, by outcome (refused: the QoS 1/2 publisher was not acknowledged; dropped)",
        &[Label {
            name: "outcome",
            values: &["refused", "dropped"],
        }],
    ),
    counter(
        "rookery_forward_unconfirmed_publishes_total",
        Edge,
        "QoS 1/2 publishes not acknowledged because a forward to another edge was not confirmed",
        &[],
    ),
    counter(
        "rookery_forward_rejected_total",
        Edge,
        "Forwarded messages this edge dropped on arrival, by reason",
        &[Label {
            name: "reason",
            values: &["topic_invalid", "sys_topic", "too_large"],
        }],
    ),
    counter(
        "rookery_forward_invalid_total",
        Edge,
        "Forwarded deliveries that named no message or an invalid QoS",
        &[],
    ),
    counter(
        "rookery_forward_unrouted_total",
        Edge,
        "Forwarded deliveries whose session was no longer online here",
        &[],
    ),
    // --- The store: Raft.
    gauge(
        "rookery_store_is_leader",
        Store,
        "1 while this node leads the store group and a quorum acknowledged it within the election timeout, else 0",
        &[],
    ),
    gauge(
        "rookery_store_leader_id",
        Store,
        "The node id of the store leader as this node knows it; 0 when it knows none",
        &[],
    ),
    gauge(
        "rookery_store_term",
        Store,
        "This node's current Raft term",
        &[],
    ),
    counter(
        "rookery_store_leader_changes_total",
        Store,
        "Leaders this node has seen elected (a new term with a known leader)",
        &[],
    ),
    gauge(
        "rookery_store_quorum_ack_age_seconds",
        Store,
        "On the leader: seconds since a quorum last acknowledged it; NaN on other nodes",
        &[],
    ),
    gauge(
        "rookery_store_raft_last_log_index",
        Store,
        "Index of the last entry in this node's Raft log",
        &[],
    ),
    gauge(
        "rookery_store_raft_committed_index",
        Store,
        "Index of the last entry this node knows to be committed",
        &[],
    ),
    gauge(
        "rookery_store_raft_applied_index",
        Store,
        "Index of the last entry applied to this node's state machine",
        &[],
    ),
    gauge(
        "rookery_store_raft_snapshot_index",
        Store,
        "Last log index included in this node's snapshot",
        &[],
    ),
    gauge(
        "rookery_store_raft_log_entries",
        Store,
        "Entries in this node's Raft log (after the last purge)",
        &[],
    ),
    gauge(
        "rookery_store_raft_replication_lag_entries",
        Store,
        "On the leader: entries its log is ahead of each follower's replicated log; NaN on other nodes",
        &[Label {
            name: "follower",
            values: &[],
        }],
    ),
    histogram(
        "rookery_store_raft_entry_bytes",
        Store,
        BYTES,
        "Size of each Raft entry appended to this node's log, in bytes",
    ),
    histogram(
        "rookery_store_writes_per_entry",
        Store,
        COUNTS,
        "Writes coalesced into one Raft entry by the leader's group commit",
    ),
    histogram(
        "rookery_store_log_writes_per_sync",
        Store,
        COUNTS,
        "Log writes made durable by one fsync",
    ),
    histogram(
        "rookery_store_log_sync_duration_seconds",
        Store,
        SECONDS,
        "Time to write and fsync one group of log writes",
    ),
    counter(
        "rookery_store_snapshots_installed_total",
        Store,
        "Snapshots received from a leader and installed",
        &[],
    ),
    // --- The store: sizes and totals.
    gauge(
        "rookery_store_raft_log_bytes",
        Store,
        "Bytes of the Raft log: its live SST files plus its memtable",
        &[],
    ),
    gauge(
        "rookery_store_sst_bytes",
        Store,
        "Bytes of the store's live SST files, every column family",
        &[],
    ),
    gauge(
        "rookery_store_snapshot_bytes",
        Store,
        "Size of the snapshot this node keeps on disk, in bytes",
        &[],
    ),
    gauge(
        "rookery_store_persistent_sessions",
        Store,
        "Persistent sessions (expiry above 0), online or offline, in the whole cluster",
        &[],
    ),
    gauge(
        "rookery_store_retained_messages",
        Store,
        "Retained messages in the whole cluster",
        &[],
    ),
    gauge(
        "rookery_store_retained_bytes",
        Store,
        "Topic and payload bytes of the retained messages in the whole cluster",
        &[],
    ),
    counter(
        "rookery_store_sessions_expired_total",
        Store,
        "Sessions ended at their expiry, by protocol (3: persistent_client_expiration, 5)",
        &[Label {
            name: "protocol",
            values: &["3", "5"],
        }],
    ),
    // --- The store: its API.
    counter(
        "rookery_store_forwarded_requests_total",
        Store,
        "Requests this follower forwarded to the leader",
        &[],
    ),
    counter(
        "rookery_store_submit_held_back_total",
        Store,
        "Times an edge's write stream was not read because max_submit_in_flight of its writes waited to commit",
        &[],
    ),
    histogram(
        "rookery_store_leader_handover_seconds",
        Store,
        SECONDS,
        "Time this node took to hand its store leadership to another voter (a drain, or TransferLeader), from the request to the new leader known",
    ),
    counter(
        "rookery_store_membership_refused_total",
        Store,
        "Membership changes refused, by reason",
        &[Label {
            name: "reason",
            values: &[
                "admin_token",
                "not_loopback",
                "no_majority",
                "learner_mismatch",
                "learner_unreachable",
            ],
        }],
    ),
];

/// The metric called `name`.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|metric| metric.name == name)
}

/// Every combination of a metric's label values, when each label's values
/// are fixed; none when some label's values are only known at run time.
pub fn label_sets(metric: &Metric) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut sets = vec![Vec::new()];
    for label in metric.labels {
        if label.values.is_empty() {
            return Vec::new();
        }
        sets = sets
            .into_iter()
            .flat_map(|set| {
                label.values.iter().map(move |value| {
                    let mut set = set.clone();
                    set.push((label.name, *value));
                    set
                })
            })
            .collect();
    }
    sets
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = BTreeSet::new();
        for metric in METRICS {
            assert!(seen.insert(metric.name), "{} twice", metric.name);
            assert!(
                metric.name.starts_with("rookery_") || metric.name.starts_with("process_"),
                "{}: not rookery_ (or the standard process_) prefixed",
                metric.name
            );
            assert!(
                metric
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}: not snake_case",
                metric.name
            );
            assert_eq!(
                metric.kind == Kind::Counter,
                metric.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                metric.name
            );
            if metric.name.contains("seconds") {
                assert!(
                    metric.name.ends_with("_seconds") || metric.name.ends_with("_seconds_total"),
                    "{}: the unit goes last",
                    metric.name
                );
            }
            for suffix in ["_bucket", "_count", "_sum"] {
                assert!(!metric.name.ends_with(suffix), "{}", metric.name);
            }
            assert!(!metric.help.is_empty() && !metric.help.contains('\n'));
        }
    }

    #[test]
    fn label_sets_are_every_combination_of_fixed_values() {
        let messages = find("rookery_messages_received_total").unwrap();
        assert_eq!(label_sets(messages).len(), 3);
        let uptime = find("rookery_uptime_seconds").unwrap();
        assert_eq!(label_sets(uptime), vec![Vec::new()]);
        let connected = find("rookery_clients_connected").unwrap();
        assert!(
            label_sets(connected).is_empty(),
            "listener names are configured"
        );
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }

    /// The metric names the sources record, by macro (`counter`, `gauge`,
    /// `histogram`): the string literal that opens each `metrics::counter!(`
    /// and its siblings.
    fn recorded() -> BTreeMap<String, (&'static str, PathBuf)> {
        let mut files = Vec::new();
        for krate in std::fs::read_dir(workspace().join("crates")).unwrap() {
            let src = krate.unwrap().path().join("src");
            if src.is_dir() {
                rust_files(&src, &mut files);
            }
        }
        let mut found = BTreeMap::new();
        for file in files {
            // This file's own tests mention the macros in text.
            if file.ends_with("catalog.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            // `process::sample(out, NAME, ..)` writes a figure read at
            // scrape time; its kind is the catalog's.
            let openers = [
                ("counter", "metrics::counter!("),
                ("gauge", "metrics::gauge!("),
                ("histogram", "metrics::histogram!("),
                ("scrape", "sample("),
            ];
            for (kind, opener) in openers {
                if kind == "scrape" && !file.ends_with("rookery/src/process.rs") {
                    continue;
                }
                let mut rest = text.as_str();
                while let Some(at) = rest.find(opener) {
                    rest = &rest[at + opener.len()..];
                    // A name passed in a variable is missed here: its
                    // helper's callers name it (`by_qos` in the broker's
                    // stats), or `indirect` below does.
                    let arguments = rest.trim_start();
                    let arguments = arguments
                        .strip_prefix("out,")
                        .map_or(arguments, str::trim_start);
                    if let Some((name, _)) = arguments
                        .strip_prefix('"')
                        .and_then(|quoted| quoted.split_once('"'))
                    {
                        found.insert(name.to_owned(), (kind, file.clone()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_metric_recorded_is_in_the_catalog_with_its_kind() {
        let recorded = recorded();
        assert!(recorded.len() > 40, "the scan found {}", recorded.len());
        for (name, (kind, file)) in &recorded {
            let metric = find(name)
                .unwrap_or_else(|| panic!("{name} ({}) is not in the catalog", file.display()));
            let expected = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            if *kind != "scrape" {
                assert_eq!(*kind, expected, "{name} ({})", file.display());
            }
        }
    }

    #[test]
    fn every_metric_in_the_catalog_is_recorded_somewhere() {
        let recorded = recorded();
        // Recorded through a helper taking the name as an argument.
        let indirect = [
            "rookery_messages_received_total",
            "rookery_messages_sent_total",
            "rookery_payload_bytes_received_total",
            "rookery_payload_bytes_sent_total",
        ];
        for metric in METRICS {
            assert!(
                recorded.contains_key(metric.name) || indirect.contains(&metric.name),
                "{} is in the catalog but nothing records it",
                metric.name
            );
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let docs = std::fs::read_to_string(workspace().join("docs/operations.md")).unwrap();
        for metric in METRICS {
            assert!(
                docs.contains(&format!("`{}`", metric.name)),
                "docs/operations.md does not describe {}",
                metric.name
            );
        }
    }
}
