//! The store commands a session writes, in the store's wire format: each
//! carries the session's client id and epoch, so that the store fences a
//! write from a connection that no longer owns the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rookery_codec::{Connect, PacketId, QoS};
use rookery_store::proto::{self, command::Kind};
use tokio::sync::Notify;

use super::negotiate::Granted;
use crate::config::Limits;
use crate::hub::{ClientId, SubEntry, sub_entry_to_proto};
use crate::message::{Message, expiry_at};

/// Wraps one command kind.
pub(super) fn command(kind: Kind) -> proto::Command {
    proto::Command { kind: Some(kind) }
}

/// Where a connection comes from, kept with its session for operators
/// (`rookery ctl clients show`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin<'a> {
    /// The client's address (from PROXY protocol where the listener takes it).
    pub address: std::net::SocketAddr,
    /// The listener's name.
    pub listener: &'a str,
    /// The user name it authenticated with, if any.
    pub username: Option<&'a str>,
}

/// Takes the client id over in the store: a new epoch, the session as
/// stored, and the will to keep; refused if it would make more persistent
/// sessions than `max_persistent_sessions` (0: no cap).
pub(super) fn connect(
    connect: &Connect,
    granted: &Granted,
    edge_id: &str,
    now_ms: u64,
    limits: &Limits,
    origin: &Origin<'_>,
) -> proto::Command {
    let will = connect.will.as_ref().map(|will| {
        let mut properties = will.properties.message.clone();
        let expires_at_ms = expiry_at(properties.message_expiry_interval.take(), now_ms);
        let message = Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at_ms,
            origin: Arc::from(granted.client_id.as_str()),
        };
        proto::Will {
            message: Some(message.to_proto()),
            delay_s: will.properties.will_delay_interval.unwrap_or(0),
        }
    });
    command(Kind::Connect(proto::Connect {
        client_id: granted.client_id.clone(),
        edge_id: edge_id.to_owned(),
        clean_start: connect.clean_start,
        expiry_interval_s: granted.expiry_s,
        will,
        protocol_version: u32::from(connect.protocol.level()),
        max_persistent_sessions: limits.max_persistent_sessions,
        client_address: origin.address.to_string(),
        listener: origin.listener.to_owned(),
        username: origin.username.unwrap_or_default().to_owned(),
        keep_alive_s: u32::from(granted.keep_alive),
        // At least 1 ms: 0 tells the store never to hand them on.
        shared_handoff_after_ms: (u64::from(limits.shared_handoff_delay_s) * 1000).max(1),
    }))
}

/// One session's identity in the store: its client id and the epoch its
/// connection holds.
#[derive(Debug, Clone)]
pub(super) struct SessionRecords {
    client_id: ClientId,
    epoch: u64,
}

impl SessionRecords {
    /// The records of `client_id` under `epoch`.
    pub fn new(client_id: ClientId, epoch: u64) -> Self {
        SessionRecords { client_id, epoch }
    }

    /// The store epoch this connection holds the session under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The session's client id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// A stored message is sent under `packet_id` (MQTT-4.4.0-1: a resend
    /// after any failure reuses it).
    pub fn mark_published(&self, seq: u64, packet_id: PacketId) -> proto::Command {
        command(Kind::MarkPublished(proto::MarkPublished {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            seq,
            packet_id: u32::from(packet_id.get()),
        }))
    }

    /// The client acknowledged the stored message at queue position `seq`,
    /// sent under `packet_id`, at `kind`'s step.
    pub fn acknowledge(
        &self,
        packet_id: PacketId,
        kind: proto::AckKind,
        seq: u64,
    ) -> proto::Command {
        command(Kind::Acknowledge(proto::Acknowledge {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            packet_id: u32::from(packet_id.get()),
            kind: kind as i32,
            seq,
        }))
    }

    /// The acknowledgements that complete a message of this QoS.
    pub fn completion(&self, packet_id: PacketId, qos: QoS, seq: u64) -> Vec<proto::Command> {
        match qos {
            QoS::ExactlyOnce => vec![
                self.acknowledge(packet_id, proto::AckKind::Pubrec, seq),
                self.acknowledge(packet_id, proto::AckKind::Pubcomp, seq),
            ],
            _ => vec![self.acknowledge(packet_id, proto::AckKind::Puback, seq)],
        }
    }

    /// The client's QoS 2 publish under `packet_id`, recorded so that a
    /// retry after a failure is not accepted twice.
    pub fn incoming_qos2(&self, packet_id: PacketId) -> proto::IncomingQos2 {
        proto::IncomingQos2 {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            packet_id: u32::from(packet_id.get()),
        }
    }

    /// PUBREL: the client's QoS 2 identifier may carry a new message now.
    pub fn release_incoming(&self, packet_id: PacketId) -> proto::Command {
        command(Kind::ReleaseIncoming(proto::ReleaseIncoming {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            packet_id: u32::from(packet_id.get()),
        }))
    }

    /// The session's new subscriptions.
    pub fn subscribe(&self, accepted: &[(rookery_codec::ByteString, SubEntry)]) -> proto::Command {
        command(Kind::Subscribe(proto::Subscribe {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            subscriptions: accepted
                .iter()
                .map(|(filter, entry)| proto::Subscription {
                    filter: filter.to_string(),
                    options: Some(sub_entry_to_proto(entry)),
                })
                .collect(),
        }))
    }

    /// Subscriptions the session drops.
    pub fn unsubscribe(&self, filters: &[rookery_codec::ByteString]) -> proto::Command {
        command(Kind::Unsubscribe(proto::Unsubscribe {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            filters: filters.iter().map(ToString::to_string).collect(),
        }))
    }

    /// The connection ended: the session expires after `expiry_s`, and the
    /// will is published (after its delay) when `publish_will`.
    pub fn disconnect(
        &self,
        expiry_s: u32,
        publish_will: bool,
        records_lost: bool,
    ) -> proto::Command {
        command(Kind::Disconnect(proto::Disconnect {
            client_id: self.client_id.to_string(),
            epoch: self.epoch,
            expiry_interval_s: expiry_s,
            publish_will,
            records_lost,
        }))
    }
}

/// The outcome of a connection's record writes that nothing waits for
/// (`submit_detached`): whether one failed, and when none is outstanding.
/// Its Disconnect is written only once they settled, so that it tells the
/// store whether the queue may hold as queued a message this connection
/// sent (`Disconnect.records_lost`).
#[derive(Default)]
pub(super) struct DetachedRecords {
    /// An awaited write failed.
    awaited_failed: bool,
    /// Shared with the outstanding writes; made at the first, since most
    /// connections (every idle one) never start one.
    shared: Option<Arc<Outstanding>>,
}

/// What the outstanding writes of one connection share.
#[derive(Default)]
struct Outstanding {
    lost: AtomicBool,
    count: AtomicUsize,
    /// Told when `count` falls to 0.
    settled: Notify,
}

/// Held by one outstanding write of [`DetachedRecords`].
pub(super) struct DetachedWrite {
    shared: Arc<Outstanding>,
}

impl DetachedWrite {
    /// The write failed: the store may not know what the connection sent.
    pub fn failed(&self) {
        self.shared.lost.store(true, Ordering::Relaxed);
    }
}

impl Drop for DetachedWrite {
    fn drop(&mut self) {
        if self.shared.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Kept as a permit if nothing waits yet.
            self.shared.settled.notify_one();
        }
    }
}

impl DetachedRecords {
    /// A write starts.
    pub fn start(&mut self) -> DetachedWrite {
        let shared = self.shared.get_or_insert_with(Arc::default).clone();
        shared.count.fetch_add(1, Ordering::AcqRel);
        DetachedWrite { shared }
    }

    /// An awaited write of the session's records failed.
    pub fn failed(&mut self) {
        self.awaited_failed = true;
    }

    /// Waits, at most `limit`, for every write started to finish; whether
    /// one failed (or is still outstanding, which may yet fail).
    pub async fn lost_when_settled(&mut self, limit: std::time::Duration) -> bool {
        let Some(shared) = &self.shared else {
            return self.awaited_failed;
        };
        let all_settled = async {
            while shared.count.load(Ordering::Acquire) > 0 {
                shared.settled.notified().await;
            }
        };
        let settled = tokio::time::timeout(limit, all_settled).await.is_ok();
        !settled || self.awaited_failed || shared.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod detached_records_tests {
    use std::time::Duration;

    use super::DetachedRecords;

    #[tokio::test]
    async fn the_disconnect_hears_of_a_record_write_that_failed_after_the_connection_ended() {
        let mut records = DetachedRecords::default();
        let ok = records.start();
        let failing = records.start();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(ok);
            tokio::time::sleep(Duration::from_millis(50)).await;
            failing.failed();
        });
        assert!(records.lost_when_settled(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn records_that_all_committed_are_not_lost() {
        let mut records = DetachedRecords::default();
        let write = records.start();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(write);
        });
        assert!(!records.lost_when_settled(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_write_still_outstanding_at_the_limit_counts_as_lost() {
        let mut records = DetachedRecords::default();
        let _stuck = records.start();
        assert!(records.lost_when_settled(Duration::from_millis(50)).await);
    }
}
