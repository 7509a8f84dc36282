//! Where a publish goes, and handing it there: matched once against the
//! registry's index (under its read lock, the per-publish hot path), then
//! delivered to mailboxes here, forwarded to the edges holding the other
//! sessions, and queued in the store for persistent ones.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rookery_codec::QoS;
use rookery_store::proto;
use rookery_topic::{Match, SharedGroup};

use super::mailbox::{Mailbox, add_if_full};
use super::registry::{Registered, SubEntry};
use super::{ClientId, Hub};
use crate::message::{Delivery, Message};

/// Where one publish goes.
#[derive(Debug, Default)]
pub struct Routes {
    /// Online sessions served from memory (clean sessions, and QoS 0 to any).
    pub local: Vec<(Mailbox, Delivery)>,
    /// Persistent sessions whose copy is committed to the store first; the
    /// store notifies their connections (MessagesQueued).
    pub durable: Vec<proto::EnqueueTarget>,
    /// The mailboxes of `durable`'s sessions online here, in its order.
    pub durable_mailboxes: Vec<Option<Mailbox>>,
    /// Sessions online on other edges, by edge: forwarded there.
    pub remote: Vec<(Arc<str>, Vec<rookery_cluster::proto::Delivery>)>,
}

/// Round-robin position of each shared group, by its `$share/...` filter.
/// Also the group's name shared by its deliveries (no allocation per
/// message). Taken under the registry's read lock while matching, so a
/// leaf in the lock order.
#[derive(Debug, Default)]
pub(super) struct SharedCursors {
    cursors: Mutex<HashMap<Arc<str>, usize>>,
}

impl SharedCursors {
    /// The next round-robin position of a shared group. Each group keeps its
    /// own, so groups matched by the same messages do not skew each other.
    fn next(&self, filter: &str) -> (usize, Arc<str>) {
        let mut cursors = self.cursors.lock();
        if let Some((name, cursor)) = cursors.get_key_value(filter) {
            let (name, next) = (name.clone(), cursor.wrapping_add(1));
            cursors.insert(name.clone(), next);
            return (next, name);
        }
        let name: Arc<str> = Arc::from(filter);
        cursors.insert(name.clone(), 0);
        (0, name)
    }
}

impl Hub {
    /// Where a message goes: each matching session once, with the highest
    /// QoS and every subscription identifier of its matching subscriptions
    /// (MQTT-3.3.4-2, MQTT-3.3.4-3), and one member of each shared group.
    pub fn route(&self, message: &Arc<Message>) -> Routes {
        self.route_to(message, None, false)
    }

    /// Routes a message; with `only_group`, to one member of that shared
    /// group (`$share/...`) only.
    /// With `online_only`, a group whose members are all offline gets
    /// nothing.
    fn route_to(
        &self,
        message: &Arc<Message>,
        only_group: Option<&str>,
        online_only: bool,
    ) -> Routes {
        let mut targets = self.targets(message, only_group, online_only);
        if targets.is_empty() {
            return Routes::default();
        }
        merge_targets(&mut targets);
        self.routes_of(message, targets)
    }

    /// Every subscription the message matches, and one member of each
    /// shared group; with `only_group`, that group's member only.
    fn targets(
        &self,
        message: &Message,
        only_group: Option<&str>,
        online_only: bool,
    ) -> Vec<(ClientId, Target)> {
        let mut targets = Vec::new();
        let registered = self.registry.read();
        registered
            .index()
            .for_each_match(&message.topic, |matched| match matched {
                Match::Plain { .. } if only_group.is_some() => {}
                Match::Shared(group) if only_group.is_some_and(|only| only != group.filter()) => {}
                Match::Plain {
                    subscriber, value, ..
                } => {
                    // MQTT-3.8.3-3: No Local.
                    if value.options.no_local && **subscriber == *message.origin {
                        return;
                    }
                    targets.push(target(subscriber, value));
                }
                Match::Shared(group) => {
                    targets.extend(self.pick_member(&registered, group, message.qos, online_only));
                }
            });
        targets
    }

    /// The member of a shared group a message goes to: round robin among
    /// the online members whose queue is not full, else the online ones,
    /// else the offline persistent ones (which queue only QoS 1/2; offline
    /// clean sessions cannot exist). A member that went away thus gets
    /// nothing while another is online.
    fn pick_member(
        &self,
        registered: &Registered,
        group: SharedGroup<'_, ClientId, SubEntry>,
        qos: QoS,
        online_only: bool,
    ) -> Option<(ClientId, Target)> {
        let members = group.members();
        let count = members.len();
        let (start, group_name) = self.shared_cursors.next(group.filter());
        // Lower is better; None: cannot take this message.
        let rank = |client: &ClientId| {
            let session = registered.session(client)?;
            let online = session.mailbox.is_some() || session.remote_edge.is_some();
            match (
                online,
                session.mailbox.as_ref().is_some_and(Mailbox::is_full),
            ) {
                (true, false) => Some(0u8),
                (true, true) => Some(1),
                (false, _) => (qos != QoS::AtMostOnce && !online_only).then_some(2),
            }
        };
        let mut best: Option<(u8, _)> = None;
        for step in 0..count {
            let Some(member) = members.clone().nth((start + step) % count) else {
                continue;
            };
            if let Some(rank) = rank(member.0)
                && best.as_ref().is_none_or(|(known, _)| rank < *known)
            {
                best = Some((rank, member));
                if rank == 0 {
                    break;
                }
            }
        }
        let (_, (client, value)) = best?;
        let (client, mut picked) = target(client, value);
        picked.shared_group = Some(group_name);
        Some((client, picked))
    }

    /// Where a shared copy moved from an offline member's store queue goes:
    /// one online member of `group`, or nowhere while none is.
    pub fn route_handed_off(&self, message: &Arc<Message>, group: &str) -> Routes {
        self.route_to(message, Some(group), true)
    }

    /// Where each target's copy goes: the store for a persistent session's
    /// QoS 1/2, the edge holding a session online elsewhere, or the mailbox
    /// of one online here.
    fn routes_of(&self, message: &Arc<Message>, targets: Vec<(ClientId, Target)>) -> Routes {
        let registered = self.registry.read();
        let mut routes = Routes::default();
        for (client, target) in targets {
            let Some(session) = registered.session(&client) else {
                continue;
            };
            let qos = message.qos.min(target.qos);
            // MQTT-3.3.1-12/13: the RETAIN flag is cleared unless the
            // subscription asked for it as published.
            let retain = message.retain && target.retain_as_published;
            if session.persistent && qos != QoS::AtMostOnce {
                routes.durable.push(proto::EnqueueTarget {
                    client_id: client.to_string(),
                    qos: u32::from(qos as u8),
                    retain,
                    subscription_ids: target.subscription_ids,
                    shared_group: target
                        .shared_group
                        .as_deref()
                        .unwrap_or_default()
                        .to_owned(),
                });
                routes.durable_mailboxes.push(session.mailbox.clone());
            } else if let Some(edge) = &session.remote_edge
                && session.mailbox.is_none()
            {
                let delivery = rookery_cluster::proto::Delivery {
                    client_id: client.to_string(),
                    message: 0,
                    qos: u32::from(qos as u8),
                    retain,
                    subscription_ids: target.subscription_ids,
                    shared_group: target
                        .shared_group
                        .as_deref()
                        .unwrap_or_default()
                        .to_owned(),
                    // Set once the store has given one (QoS 2 of a
                    // persistent session).
                    receipt: 0,
                };
                match routes.remote.iter_mut().find(|(known, _)| known == edge) {
                    Some((_, deliveries)) => deliveries.push(delivery),
                    None => routes.remote.push((edge.clone(), vec![delivery])),
                }
            } else if let Some(mailbox) = &session.mailbox {
                routes.local.push((
                    mailbox.clone(),
                    Delivery {
                        message: message.clone(),
                        qos,
                        retain,
                        subscription_ids: target.subscription_ids,
                        shared_group: target.shared_group,
                        receipt: 0,
                    },
                ));
            }
        }
        routes
    }

    /// Hands in-memory deliveries to their sessions. A connection moves them
    /// into its own queue at once (where the overflow policy applies); this
    /// bound only catches a connection task that has stopped taking them.
    /// Sessions whose backlog reached the pause threshold are added to
    /// `full`: the publisher stops reading until they drain.
    pub fn deliver_local(&self, local: Vec<(Mailbox, Delivery)>, full: &mut Vec<Mailbox>) {
        let limits = &self.config.limits;
        let limit =
            (limits.max_queued_messages + usize::from(limits.max_inflight)).saturating_mul(2);
        let byte_limit = match limits.max_queued_bytes {
            0 => usize::MAX,
            bytes => bytes,
        };
        for (mailbox, delivery) in local {
            if !mailbox.deliver(delivery, limit, byte_limit) {
                self.stats.dropped("queue_full");
            }
            add_if_full(full, &mailbox);
        }
    }

    /// The store commands a publish needs: its retained copy, and its copies
    /// queued for persistent sessions (with the publisher's QoS 2 packet
    /// identifier, recorded even when nobody is to receive it).
    pub fn store_commands(
        &self,
        message: &Message,
        retain: bool,
        durable: Vec<proto::EnqueueTarget>,
        incoming: Option<proto::IncomingQos2>,
    ) -> Vec<proto::Command> {
        let stored = (retain || !durable.is_empty()).then(|| message.to_proto());
        let mut commands = Vec::new();
        if retain && let Some(stored) = &stored {
            commands.push(self.set_retained_command(stored.clone()));
        }
        if !durable.is_empty() || incoming.is_some() {
            let queued = if durable.is_empty() { None } else { stored };
            commands.push(self.enqueue_command(queued, durable, incoming));
        }
        commands
    }

    /// The store command that queues a message for persistent sessions, with
    /// this broker's queue limit and overflow policy.
    pub fn enqueue_command(
        &self,
        message: Option<proto::Message>,
        targets: Vec<proto::EnqueueTarget>,
        incoming: Option<proto::IncomingQos2>,
    ) -> proto::Command {
        let limits = &self.config.limits;
        proto::Command {
            kind: Some(proto::command::Kind::Enqueue(proto::Enqueue {
                message,
                targets,
                incoming,
                // The queue holds the in-flight window too.
                max_queued: u32::try_from(
                    limits.max_queued_messages + usize::from(limits.max_inflight),
                )
                .unwrap_or(u32::MAX),
                drop_oldest: limits.queue_overflow == crate::config::QueueOverflow::DropOldest,
                will: None,
                handoff: None,
            })),
        }
    }

    /// Counts what a store write's results report as dropped.
    pub fn count_store_drops(&self, results: &[proto::CommandResult]) {
        for result in results {
            if let Some(proto::command_result::Kind::Enqueued(enqueued)) = &result.kind {
                for _ in 0..enqueued.dropped {
                    self.stats.dropped("queue_full");
                }
            }
        }
    }

    /// Hands a publish to the other edges holding its sessions, on `lane`
    /// of each (the publisher's connection: its publishes keep their
    /// order). With `confirm`, one receiver per edge tells when that edge
    /// has them. Links whose publishers should pause are added to
    /// `congested`.
    pub fn forward(
        &self,
        message: &Message,
        remote: Vec<(Arc<str>, Vec<rookery_cluster::proto::Delivery>)>,
        confirm: bool,
        lane: u64,
        congested: &mut Vec<rookery_cluster::Congested>,
    ) -> Vec<tokio::sync::oneshot::Receiver<bool>> {
        let mut confirmations = Vec::new();
        if remote.is_empty() {
            return confirmations;
        }
        let mut stored = message.to_proto();
        let edges = remote.len();
        for (index, (edge, deliveries)) in remote.into_iter().enumerate() {
            let Some(address) = self.mirror.edge_address(&edge) else {
                metrics::counter!("rookery_forward_dropped_total")
                    .increment(deliveries.len() as u64);
                tracing::debug!(%edge, "no address for an edge; its deliveries are dropped");
                continue;
            };
            let done = confirm.then(|| {
                let (done, confirmed) = tokio::sync::oneshot::channel();
                confirmations.push(confirmed);
                done
            });
            let link = self.forwarder.send(
                &address,
                rookery_cluster::Outbound {
                    // The last edge takes the message itself: a copy of a
                    // message is a copy of its topic and client id.
                    message: if index + 1 == edges {
                        std::mem::take(&mut stored)
                    } else {
                        stored.clone()
                    },
                    deliveries,
                    done,
                    lane,
                },
            );
            // Backpressure off: nobody pauses (the cap still holds).
            if let Some(link) = link.filter(|_| self.config.limits.publisher_pause_ms > 0)
                && !congested.iter().any(|known| known.same_link(&link))
            {
                congested.push(link);
            }
        }
        confirmations
    }

    /// Delivers what another edge forwarded to sessions online here; with
    /// the wait for those that are now full, which the forwarding stream
    /// does before it reads on (the sending edge's publishers are paused
    /// as its link fills). A session that does not drain within
    /// `publisher_pause_ms` is stalled, as for a publisher here.
    pub fn deliver_forwarded(
        &self,
        messages: Vec<proto::Message>,
        deliveries: Vec<rookery_cluster::proto::Delivery>,
    ) -> Option<rookery_cluster::Holdback> {
        let messages: Vec<Option<Arc<Message>>> = messages
            .iter()
            .map(|message| Message::from_proto(message).map(Arc::new))
            .collect();
        let mut local = Vec::with_capacity(deliveries.len());
        {
            let registered = self.registry.read();
            for delivery in deliveries {
                let message = usize::try_from(delivery.message)
                    .ok()
                    .and_then(|index| messages.get(index))
                    .and_then(Option::as_ref);
                let (Some(message), Some(qos)) = (message, crate::message::qos_from(delivery.qos))
                else {
                    metrics::counter!("rookery_forward_invalid_total").increment(1);
                    continue;
                };
                let Some(mailbox) = registered
                    .session(delivery.client_id.as_str())
                    .and_then(|session| session.mailbox.clone())
                else {
                    // Gone from this edge since the sender routed it.
                    metrics::counter!("rookery_forward_unrouted_total").increment(1);
                    continue;
                };
                local.push((
                    mailbox,
                    Delivery {
                        message: message.clone(),
                        qos,
                        retain: delivery.retain,
                        subscription_ids: delivery.subscription_ids,
                        shared_group: (!delivery.shared_group.is_empty())
                            .then(|| Arc::from(delivery.shared_group.as_str())),
                        receipt: delivery.receipt,
                    },
                ));
            }
        }
        let mut full = Vec::new();
        self.deliver_local(local, &mut full);
        if full.is_empty() {
            return None;
        }
        let pause = std::time::Duration::from_millis(self.config.limits.publisher_pause_ms);
        Some(Box::pin(async move {
            if tokio::time::timeout(pause, super::room_in(&full))
                .await
                .is_err()
            {
                for mailbox in &full {
                    mailbox.stall_if_full();
                }
            }
        }))
    }

    /// Hands the shared-subscription messages a departed session had not
    /// acknowledged to other members of their groups (the session is
    /// already detached, so it is not picked again).
    pub fn redistribute(&self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            let Some(group) = delivery.shared_group.as_deref() else {
                continue;
            };
            let routes = self.route_to(&delivery.message, Some(group), false);
            if routes.local.is_empty() && routes.remote.is_empty() && routes.durable.is_empty() {
                metrics::counter!("rookery_shared_redistribution_dropped_total").increment(1);
                continue;
            }
            metrics::counter!("rookery_shared_redistributed_total").increment(1);
            self.deliver_local(routes.local, &mut Vec::new());
            self.forward(&delivery.message, routes.remote, false, 0, &mut Vec::new());
            if !routes.durable.is_empty() {
                let commands = self.store_commands(&delivery.message, false, routes.durable, None);
                let written = self.store.submit(commands);
                tokio::spawn(async move {
                    if let Err(error) = written.await {
                        tracing::warn!(%error, "queuing a redistributed message failed");
                    }
                });
            }
        }
    }
}

#[derive(Debug)]
struct Target {
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
    /// Picked as a member of this shared group.
    shared_group: Option<Arc<str>>,
}

fn target(client: &ClientId, value: &SubEntry) -> (ClientId, Target) {
    let options = &value.options;
    (
        client.clone(),
        Target {
            qos: options.qos,
            retain_as_published: options.retain_as_published,
            subscription_ids: if value.subscription_id != 0 {
                vec![value.subscription_id]
            } else {
                Vec::new()
            },
            shared_group: None,
        },
    )
}

/// One target per session: a session matched by several of its
/// subscriptions gets the message once, at the highest QoS, with every
/// subscription identifier. Sorting keeps this O(n log n) for a publish that
/// fans out to many sessions.
fn merge_targets(targets: &mut Vec<(ClientId, Target)>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    targets.dedup_by(|(client, later), (kept_client, kept)| {
        if client != kept_client {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        // Also matched otherwise: not the group's alone to hand on.
        if kept.shared_group != later.shared_group {
            kept.shared_group = None;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::fixtures::entry;

    /// MQTT-3.3.4-2/3: overlapping subscriptions of one session give one
    /// message, at the highest QoS, with every subscription identifier.
    #[test]
    fn overlapping_subscriptions_merge_into_one_target_per_session() {
        let a: ClientId = Arc::from("a");
        let b: ClientId = Arc::from("b");
        let mut targets = vec![
            target(&a, &entry(QoS::AtMostOnce, 1)),
            target(&b, &entry(QoS::AtLeastOnce, 0)),
            target(&a, &entry(QoS::ExactlyOnce, 2)),
        ];
        merge_targets(&mut targets);
        assert_eq!(targets.len(), 2);
        let (client, merged) = &targets[0];
        assert_eq!(&**client, "a");
        assert_eq!(merged.qos, QoS::ExactlyOnce);
        let mut ids = merged.subscription_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(targets[1].1.qos, QoS::AtLeastOnce);
    }
}
