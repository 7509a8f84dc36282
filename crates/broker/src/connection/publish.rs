//! What a client's PUBLISH leads to, decided without doing it: whether the
//! server refuses it, where it goes (sessions here, other edges, the store),
//! what must be committed before it is acknowledged, and the answer the
//! client gets once that is known. The I/O side performs the plan.

use std::sync::Arc;

use rookery_codec::{PacketId, QoS, ReasonCode};
use rookery_store::proto::{self, command_result::Kind as ResultKind};

use super::topic_within_limits;
use crate::config::Limits;
use crate::hub::{Mailbox, Routes};
use crate::message::Delivery;

/// Deliveries for one other edge.
pub(super) type EdgeDeliveries = (Arc<str>, Vec<rookery_cluster::proto::Delivery>);

/// Why a well-formed publish is not taken (answered, not a violation).
pub(super) fn refusal(topic: &str, limits: &Limits) -> Option<ReasonCode> {
    if !topic_within_limits(topic, limits.max_topic_length, limits.max_topic_levels) {
        Some(ReasonCode::TopicNameInvalid)
    } else if is_sys_topic(topic) {
        // $SYS belongs to the broker.
        Some(ReasonCode::NotAuthorized)
    } else {
        None
    }
}

/// Whether `topic` is the broker's own (`$SYS` and below).
pub(super) fn is_sys_topic(topic: &str) -> bool {
    topic.starts_with("$SYS/") || topic == "$SYS"
}

/// Where a publish goes and what it waits for.
#[derive(Debug)]
pub(super) struct Plan {
    /// Sessions online here, served from memory.
    pub local: Vec<(Mailbox, Delivery)>,
    /// Persistent sessions: their copies are committed to the store.
    pub durable: Vec<proto::EnqueueTarget>,
    /// The mailboxes of `durable`'s sessions online here, in its order.
    pub durable_mailboxes: Vec<Option<Mailbox>>,
    /// Other edges holding matching sessions, forwarded to at once.
    pub forward_now: Vec<EdgeDeliveries>,
    /// Other edges forwarded to only once the store has said the message
    /// is new: a persistent session's QoS 2 publish may be a retry the
    /// store took already (after a failure, on another edge).
    pub forward_after_store: Vec<EdgeDeliveries>,
    /// The QoS 2 packet identifier to record in the store, so that a retry
    /// after a failure is not accepted twice (persistent sessions).
    pub record_qos2: Option<PacketId>,
    /// Whether the message matched nothing at all.
    pub unrouted: bool,
}

impl Plan {
    /// Splits `routes` for a publish at `qos` under `packet_id` from a
    /// session that is `persistent` or not.
    pub fn new(
        mut routes: Routes,
        qos: QoS,
        packet_id: Option<PacketId>,
        persistent: bool,
    ) -> Plan {
        let exactly_once_persistent = qos == QoS::ExactlyOnce && persistent;
        let unrouted =
            routes.local.is_empty() && routes.durable.is_empty() && routes.remote.is_empty();
        let (forward_now, forward_after_store) = if exactly_once_persistent {
            (Vec::new(), std::mem::take(&mut routes.remote))
        } else {
            (std::mem::take(&mut routes.remote), Vec::new())
        };
        Plan {
            local: routes.local,
            durable: routes.durable,
            durable_mailboxes: routes.durable_mailboxes,
            forward_now,
            forward_after_store,
            record_qos2: if exactly_once_persistent {
                packet_id
            } else {
                None
            },
            unrouted,
        }
    }

    /// Whether the store must commit something for this publish (a retained
    /// copy, queued copies, a QoS 2 record).
    pub fn needs_store(&self, retain: bool) -> bool {
        retain || !self.durable.is_empty() || self.record_qos2.is_some()
    }
}

/// How a QoS 1/2 publish's store write and forwards ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Committed and handed to every edge that holds a matching session.
    Done,
    /// A QoS 2 message the store had already accepted under this packet
    /// identifier: acknowledged again, delivered no second time.
    Duplicate,
    /// Certainly not taken (the session was taken over, the write was never
    /// proposed, ...).
    Refused(ReasonCode),
    /// The store or another edge did not answer: it may or may not have it.
    Unknown,
}

impl Outcome {
    /// What the store's results say of a publish's commands.
    pub fn of_results(results: &[proto::CommandResult]) -> Outcome {
        let mut outcome = Outcome::Done;
        for result in results {
            match &result.kind {
                Some(ResultKind::Fenced(_) | ResultKind::NoSession(_)) => {
                    return Outcome::Refused(ReasonCode::UnspecifiedError);
                }
                Some(ResultKind::Enqueued(enqueued)) if !enqueued.accepted => {
                    outcome = Outcome::Duplicate;
                }
                _ => {}
            }
        }
        outcome
    }

    /// A failed store write: refused when it was certainly never proposed
    /// and nothing was forwarded yet (the client may send it again at once);
    /// otherwise it may be held somewhere, so unknown.
    pub fn of_failed_write(may_have_committed: bool, forwarded: bool) -> Outcome {
        if may_have_committed || forwarded {
            Outcome::Unknown
        } else {
            Outcome::Refused(ReasonCode::ImplementationSpecificError)
        }
    }

    /// Whether the sessions served outside the store (online here, or on
    /// other edges) get the message: when it is new, and when it is a
    /// retried QoS 2 publish the store has a receipt for. The first attempt
    /// may have died between the store's commit and its deliveries, and a
    /// session drops a receipt it has had, so the retry delivers it again.
    pub fn delivers(self, receipt: u64) -> bool {
        match self {
            Outcome::Done => true,
            Outcome::Duplicate => receipt != 0,
            Outcome::Refused(_) | Outcome::Unknown => false,
        }
    }

    /// The outcome of a publish that forwards only after its store write,
    /// behind an earlier such publish of its connection that did not go out
    /// and will only when the client sends it again: it must not overtake
    /// that one (MQTT-4.6.0-6), so it is not delivered now and is unknown
    /// to the client, which sends it again too (the store answers with its
    /// receipt, and it goes out then, in order).
    pub fn behind(self, receipt: u64, earlier_went_out: bool) -> Outcome {
        if !earlier_went_out && self.delivers(receipt) {
            Outcome::Unknown
        } else {
            self
        }
    }

    /// Whether the client sends the publish again (on this connection's
    /// end): its outcome is unknown (the connection closes for a QoS 2
    /// publish), or it was refused to a 3.x client, which has no negative
    /// acknowledgement and whose connection closes instead.
    pub fn sent_again(self, v5: bool) -> bool {
        match self {
            Outcome::Unknown => true,
            Outcome::Refused(_) => !v5,
            Outcome::Done | Outcome::Duplicate => false,
        }
    }

    /// The outcome once the forwards are known: a message not confirmed by
    /// every edge it went to is not known to be delivered.
    pub fn with_forwards(self, confirmed: bool) -> Outcome {
        if self == Outcome::Done && !confirmed {
            Outcome::Unknown
        } else {
            self
        }
    }
}

/// The store's receipt of a persistent session's QoS 2 publish, from the
/// results of its commands; 0 if none.
pub(super) fn receipt_of(results: &[proto::CommandResult]) -> u64 {
    results
        .iter()
        .find_map(|result| match &result.kind {
            Some(ResultKind::Enqueued(enqueued)) if enqueued.receipt != 0 => Some(enqueued.receipt),
            _ => None,
        })
        .unwrap_or(0)
}

/// What the client is told of a QoS 1/2 publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// PUBACK or PUBREC with this reason code.
    Ack(ReasonCode),
    /// The connection closes (a 5.0 client is told this reason): 3.x has no
    /// way to say no, and an unknown QoS 2 outcome must keep its identifier.
    Close(ReasonCode),
}

impl Reply {
    /// A publish the server will not take, by rule: 3.x has no reason
    /// codes, so it is acknowledged and dropped there, as Mosquitto does.
    pub fn refused(reason: ReasonCode, v5: bool) -> Reply {
        Reply::Ack(if v5 { reason } else { ReasonCode::Success })
    }

    /// A publish the server could not take now: a reason code in 5.0; in
    /// 3.x acknowledging would claim what is not true, so the connection
    /// closes and the client sends it again.
    pub fn failed(reason: ReasonCode, v5: bool) -> Reply {
        if v5 {
            Reply::Ack(reason)
        } else {
            Reply::Close(reason)
        }
    }

    /// The answer to a publish whose store write and forwards ended so.
    pub fn to(outcome: Outcome, qos: QoS, v5: bool) -> Reply {
        match outcome {
            Outcome::Done | Outcome::Duplicate => Reply::Ack(ReasonCode::Success),
            Outcome::Refused(reason) => Reply::failed(reason, v5),
            // A refusal would free the packet identifier while the store may
            // hold the message under it: the client would reuse it for a new
            // message, which the store would then take for a retry. Closing
            // keeps the identifier: the client sends the same PUBLISH again
            // (DUP) and the store knows what it has.
            Outcome::Unknown if qos == QoS::ExactlyOnce => {
                Reply::Close(ReasonCode::ImplementationSpecificError)
            }
            Outcome::Unknown => Reply::failed(ReasonCode::ImplementationSpecificError, v5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(edge: &str) -> EdgeDeliveries {
        (
            Arc::from(edge),
            vec![rookery_cluster::proto::Delivery::default()],
        )
    }

    fn durable(client: &str) -> proto::EnqueueTarget {
        proto::EnqueueTarget {
            client_id: client.into(),
            ..proto::EnqueueTarget::default()
        }
    }

    fn pid(id: u16) -> Option<PacketId> {
        PacketId::new(id)
    }

    #[test]
    fn topics_beyond_the_limits_and_sys_topics_are_refused() {
        let limits = Limits {
            max_topic_length: 8,
            ..Limits::default()
        };
        assert_eq!(refusal("a/b", &limits), None);
        assert_eq!(
            refusal("a/very/long", &limits),
            Some(ReasonCode::TopicNameInvalid)
        );
        assert_eq!(refusal("$SYS/x", &limits), Some(ReasonCode::NotAuthorized));
        assert_eq!(refusal("$SYS", &limits), Some(ReasonCode::NotAuthorized));
        assert_eq!(refusal("$SYSTEM", &limits), None);
    }

    #[test]
    fn a_publish_that_matches_nothing_needs_no_store_unless_retained() {
        let plan = Plan::new(Routes::default(), QoS::AtLeastOnce, pid(1), false);
        assert!(plan.unrouted);
        assert!(!plan.needs_store(false));
        assert!(plan.needs_store(true), "a retained copy is committed");
    }

    #[test]
    fn persistent_subscribers_copies_are_committed_to_the_store() {
        let routes = Routes {
            durable: vec![durable("d")],
            durable_mailboxes: vec![None],
            ..Routes::default()
        };
        let plan = Plan::new(routes, QoS::AtLeastOnce, pid(1), false);
        assert!(!plan.unrouted);
        assert!(plan.needs_store(false));
        assert_eq!(plan.durable.len(), 1);
        assert_eq!(plan.record_qos2, None);
    }

    #[test]
    fn other_edges_get_a_publish_at_once_unless_it_is_a_persistent_sessions_qos2() {
        let routes = Routes {
            remote: vec![remote("B")],
            ..Routes::default()
        };
        let plan = Plan::new(routes, QoS::ExactlyOnce, pid(3), false);
        assert_eq!(plan.forward_now.len(), 1);
        assert!(plan.forward_after_store.is_empty());
        assert_eq!(
            plan.record_qos2, None,
            "a clean session keeps no QoS 2 record"
        );
        assert!(!plan.needs_store(false));

        // MQTT-4.3.3-9 across failover: the store decides whether a
        // persistent session's QoS 2 publish is new before anyone gets it.
        let routes = Routes {
            remote: vec![remote("B")],
            ..Routes::default()
        };
        let plan = Plan::new(routes, QoS::ExactlyOnce, pid(3), true);
        assert!(plan.forward_now.is_empty());
        assert_eq!(plan.forward_after_store.len(), 1);
        assert_eq!(plan.record_qos2, pid(3));
        assert!(plan.needs_store(false));
    }

    fn enqueued(accepted: bool) -> proto::CommandResult {
        proto::CommandResult {
            kind: Some(ResultKind::Enqueued(proto::Enqueued {
                accepted,
                ..proto::Enqueued::default()
            })),
        }
    }

    #[test]
    fn the_stores_results_decide_the_outcome() {
        assert_eq!(Outcome::of_results(&[]), Outcome::Done);
        assert_eq!(Outcome::of_results(&[enqueued(true)]), Outcome::Done);
        assert_eq!(Outcome::of_results(&[enqueued(false)]), Outcome::Duplicate);
        let fenced = proto::CommandResult {
            kind: Some(ResultKind::Fenced(proto::Fenced::default())),
        };
        assert_eq!(
            Outcome::of_results(&[enqueued(false), fenced]),
            Outcome::Refused(ReasonCode::UnspecifiedError)
        );
    }

    #[test]
    fn a_write_never_proposed_is_refused_and_one_that_may_have_committed_is_unknown() {
        assert_eq!(
            Outcome::of_failed_write(false, false),
            Outcome::Refused(ReasonCode::ImplementationSpecificError)
        );
        assert_eq!(Outcome::of_failed_write(true, false), Outcome::Unknown);
        assert_eq!(
            Outcome::of_failed_write(false, true),
            Outcome::Unknown,
            "already forwarded: another edge may deliver it"
        );
    }

    /// A retried QoS 2 publish the store has a receipt for is delivered
    /// again to the sessions the store does not serve; without a receipt
    /// (one accepted before receipts existed) it is not.
    #[test]
    fn a_retry_with_a_receipt_is_delivered_again() {
        let receipt = |accepted, receipt| proto::CommandResult {
            kind: Some(ResultKind::Enqueued(proto::Enqueued {
                accepted,
                receipt,
                ..proto::Enqueued::default()
            })),
        };
        assert_eq!(receipt_of(&[receipt(false, 42)]), 42);
        assert_eq!(receipt_of(&[receipt(true, 0)]), 0);
        assert_eq!(receipt_of(&[]), 0);
        assert!(Outcome::Done.delivers(0));
        assert!(Outcome::Duplicate.delivers(42));
        assert!(!Outcome::Duplicate.delivers(0));
        assert!(!Outcome::Unknown.delivers(42));
        assert!(!Outcome::Refused(ReasonCode::UnspecifiedError).delivers(42));
    }

    /// MQTT-4.6.0-6: behind an earlier publish the client will send again,
    /// a publish that would go out now waits to be sent again too.
    #[test]
    fn a_publish_behind_one_sent_again_is_held_back_with_it() {
        assert_eq!(Outcome::Done.behind(0, false), Outcome::Unknown);
        assert_eq!(Outcome::Duplicate.behind(7, false), Outcome::Unknown);
        assert_eq!(Outcome::Done.behind(0, true), Outcome::Done);
        let refused = Outcome::Refused(ReasonCode::QuotaExceeded);
        assert_eq!(refused.behind(0, false), refused, "nothing goes out anyway");
        assert!(Outcome::Unknown.sent_again(true));
        assert!(
            refused.sent_again(false),
            "a 3.x client's connection closes"
        );
        assert!(!refused.sent_again(true), "a 5.0 refusal is final");
        assert!(!Outcome::Done.sent_again(false));
        assert!(!Outcome::Duplicate.sent_again(true));
    }

    #[test]
    fn an_unconfirmed_forward_makes_a_done_publish_unknown() {
        assert_eq!(Outcome::Done.with_forwards(true), Outcome::Done);
        assert_eq!(Outcome::Done.with_forwards(false), Outcome::Unknown);
        assert_eq!(Outcome::Duplicate.with_forwards(false), Outcome::Duplicate);
    }

    #[test]
    fn refusals_are_told_in_5_0_and_acknowledged_in_3_x() {
        assert_eq!(
            Reply::refused(ReasonCode::NotAuthorized, true),
            Reply::Ack(ReasonCode::NotAuthorized)
        );
        assert_eq!(
            Reply::refused(ReasonCode::NotAuthorized, false),
            Reply::Ack(ReasonCode::Success)
        );
    }

    #[test]
    fn a_publish_not_taken_closes_a_3_x_connection_instead_of_acknowledging_it() {
        let reason = ReasonCode::ImplementationSpecificError;
        assert_eq!(Reply::failed(reason, true), Reply::Ack(reason));
        assert_eq!(Reply::failed(reason, false), Reply::Close(reason));
        let refused = Outcome::Refused(ReasonCode::UnspecifiedError);
        assert_eq!(
            Reply::to(refused, QoS::AtLeastOnce, true),
            Reply::Ack(ReasonCode::UnspecifiedError)
        );
        assert_eq!(
            Reply::to(refused, QoS::AtLeastOnce, false),
            Reply::Close(ReasonCode::UnspecifiedError)
        );
    }

    #[test]
    fn an_unknown_qos2_outcome_closes_the_connection_keeping_its_packet_identifier() {
        assert_eq!(
            Reply::to(Outcome::Unknown, QoS::ExactlyOnce, true),
            Reply::Close(ReasonCode::ImplementationSpecificError)
        );
        assert_eq!(
            Reply::to(Outcome::Unknown, QoS::AtLeastOnce, true),
            Reply::Ack(ReasonCode::ImplementationSpecificError)
        );
        assert_eq!(
            Reply::to(Outcome::Duplicate, QoS::ExactlyOnce, true),
            Reply::Ack(ReasonCode::Success)
        );
    }
}
