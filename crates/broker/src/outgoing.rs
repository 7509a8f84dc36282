//! The server-to-client flow of one session: the queue, the in-flight window
//! bounded by the client's Receive Maximum (MQTT-4.9.0-2), packet
//! identifiers, and outgoing topic aliases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;

use rookery_codec::{ByteString, PacketId, Publish, QoS};
use rookery_store::proto::{self, DeliveryStage};

use crate::config::QueueOverflow;
use crate::message::{Delivery, Message, qos_from};

/// A PUBLISH ready to write.
#[derive(Debug)]
pub struct ReadyPublish {
    /// The packet, without its identifier yet.
    pub publish: Publish,
    /// The identifier it goes out under (QoS 1/2).
    pub packet_id: Option<PacketId>,
    /// The store queue position, for stored messages.
    pub seq: u64,
}

/// What to send again after a reconnect (MQTT-4.4.0-1).
#[derive(Debug)]
pub enum Resend {
    Publish(Box<ReadyPublish>),
    Release(PacketId),
}

#[derive(Debug, Clone)]
struct Inflight {
    qos: QoS,
    /// A stored message's position in the store queue (its
    /// acknowledgements name it); `None` for one from memory.
    stored: Option<u64>,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
    /// A shared-subscription message from memory, kept to hand to another
    /// member if the session ends before acknowledging it.
    shared: Option<Box<Delivery>>,
}

/// The in-memory queue, and the bytes its messages hold.
#[derive(Debug, Default)]
struct MemoryQueue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

impl MemoryQueue {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    fn push_back(&mut self, delivery: Delivery) {
        self.bytes += delivery.queued_bytes();
        self.items.push_back(delivery);
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let delivery = self.items.pop_front()?;
        self.bytes -= delivery.queued_bytes();
        Some(delivery)
    }

    /// Whether `size` more bytes fit: within the count and the bytes, or
    /// into an empty queue whatever their size.
    fn fits(&self, size: usize, max_queued: usize, max_bytes: usize) -> bool {
        self.items.len() < max_queued
            && (self.items.is_empty() || self.bytes.saturating_add(size) <= max_bytes)
    }

    fn take_all(&mut self) -> VecDeque<Delivery> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// A session's messages towards its client: queued, in flight, to resend.
#[derive(Debug)]
pub struct Outgoing {
    window: usize,
    max_queued: usize,
    /// `max_queued_bytes`; `usize::MAX` without a limit.
    max_queued_bytes: usize,
    overflow: QueueOverflow,
    memory: MemoryQueue,
    stored_waiting: VecDeque<proto::QueuedMessage>,
    resend: Vec<Resend>,
    /// The highest store queue position seen.
    known_seq: Option<u64>,
    /// The store queue may hold entries after `known_seq`.
    store_unread: bool,
    /// Store queue entries below this position may have gone out on an
    /// earlier connection (see [`Outgoing::may_have_sent`]).
    maybe_sent_below_seq: u64,
    inflight: HashMap<u16, Inflight>,
    next_packet_id: u16,
    alias_maximum: u16,
    aliases: HashMap<ByteString, NonZeroU16>,
    max_packet_size: u32,
    /// Receipts of persistent publishers' QoS 2 messages taken already;
    /// made at the first (most sessions never take one).
    receipts: Option<Box<RecentReceipts>>,
}

/// The receipts a session has taken lately: the last [`RECEIPTS_KEPT`].
/// A retry of a QoS 2 publish is delivered again within a few write
/// timeouts of the first attempt, long before so many others arrive.
#[derive(Debug, Default)]
struct RecentReceipts {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

const RECEIPTS_KEPT: usize = 4_096;

impl RecentReceipts {
    /// Whether `receipt` is new to the session (and remembers it).
    fn first_time(&mut self, receipt: u64) -> bool {
        if !self.seen.insert(receipt) {
            return false;
        }
        self.order.push_back(receipt);
        if self.order.len() > RECEIPTS_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

impl Outgoing {
    /// An empty flow: `window` messages in flight at once, `max_queued`
    /// waiting (`overflow` says what goes when full), the client's topic
    /// alias maximum and maximum packet size.
    pub fn new(
        window: usize,
        max_queued: usize,
        overflow: QueueOverflow,
        alias_maximum: u16,
        max_packet_size: u32,
    ) -> Self {
        Outgoing {
            window: window.max(1),
            max_queued,
            max_queued_bytes: usize::MAX,
            overflow,
            memory: MemoryQueue::default(),
            stored_waiting: VecDeque::new(),
            resend: Vec::new(),
            known_seq: None,
            store_unread: false,
            maybe_sent_below_seq: 0,
            inflight: HashMap::new(),
            next_packet_id: 1,
            alias_maximum,
            aliases: HashMap::new(),
            max_packet_size,
            receipts: None,
        }
    }

    /// Bounds the bytes of the in-memory queue (`max_queued_bytes`; 0: no
    /// bound).
    pub fn with_max_queued_bytes(mut self, max_queued_bytes: usize) -> Self {
        self.max_queued_bytes = match max_queued_bytes {
            0 => usize::MAX,
            bytes => bytes,
        };
        self
    }

    /// The shared-subscription messages from memory not acknowledged: queued,
    /// or in flight and not yet received (a QoS 2 message whose PUBREC came
    /// is the client's).
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken: Vec<Delivery> = Vec::new();
        for (_, inflight) in self.inflight.iter_mut() {
            if !inflight.released
                && let Some(delivery) = inflight.shared.take()
            {
                taken.push(*delivery);
            }
        }
        taken.extend(
            self.memory
                .take_all()
                .into_iter()
                .filter(|delivery| delivery.shared_group.is_some()),
        );
        taken
    }

    /// In-memory messages waiting for the window.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// QoS 1/2 messages sent and not yet acknowledged (or released).
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Messages this connection holds waiting for the window: in-memory
    /// ones and stored ones read from the store (not those still unread
    /// there).
    pub fn queued_len(&self) -> usize {
        self.memory.len() + self.stored_waiting.len() + self.resend.len()
    }

    /// The largest packet the client accepts.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Queues an in-memory message (clean sessions, QoS 0); false when the
    /// queue was full (`max_queued_messages` or `max_queued_bytes`) and a
    /// message was dropped: this one, or the oldest (as many as it takes to
    /// make room), by policy.
    ///
    /// A copy of a QoS 2 publish whose receipt the session has taken
    /// already is a retry's, delivered again in case the first attempt's
    /// copies never went out: it is dropped (MQTT-4.3.3, exactly once). So
    /// is a will's second publication (its receipt is the will's id).
    pub fn push(&mut self, delivery: Delivery) -> bool {
        if delivery.receipt != 0
            && !self
                .receipts
                .get_or_insert_with(Box::default)
                .first_time(delivery.receipt)
        {
            metrics::counter!("rookery_qos2_retry_copies_dropped_total").increment(1);
            return true;
        }
        let size = delivery.queued_bytes();
        let (max_queued, max_bytes) = (self.max_queued, self.max_queued_bytes);
        if self.memory.fits(size, max_queued, max_bytes) {
            self.memory.push_back(delivery);
            return true;
        }
        match self.overflow {
            QueueOverflow::DropNewest => {}
            QueueOverflow::DropOldest => {
                while !self.memory.fits(size, max_queued, max_bytes)
                    && self.memory.pop_front().is_some()
                {}
                self.memory.push_back(delivery);
            }
        }
        false
    }

    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..=u16::MAX {
            let candidate = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&candidate) {
                return PacketId::new(candidate);
            }
        }
        None
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < self.window
    }

    /// The next in-memory message the window allows; expired ones are
    /// dropped on the way (MQTT-3.3.2-5).
    pub fn next_memory(&mut self, now_ms: u64) -> Option<ReadyPublish> {
        loop {
            let front = self.memory.front()?;
            if front.message.expired(now_ms) {
                self.memory.pop_front();
                metrics::counter!("rookery_messages_dropped_total", "reason" => "expired")
                    .increment(1);
                continue;
            }
            if front.qos != QoS::AtMostOnce && !self.window_open() {
                return None;
            }
            let delivery = self.memory.pop_front()?;
            let packet_id = if delivery.qos == QoS::AtMostOnce {
                None
            } else {
                let id = self.allocate_packet_id()?;
                Some(id)
            };
            let publish = delivery.message.to_publish(
                delivery.qos,
                delivery.retain,
                &delivery.subscription_ids,
                now_ms,
            );
            if let Some(id) = packet_id {
                let shared = delivery.shared_group.is_some().then(|| Box::new(delivery));
                self.inflight.insert(
                    id.get(),
                    Inflight {
                        qos: publish.qos,
                        stored: None,
                        released: false,
                        shared,
                    },
                );
            }
            return Some(ReadyPublish {
                publish,
                packet_id,
                seq: 0,
            });
        }
    }

    /// Takes a resumed session's store queue, whole as of the connect, and
    /// the position its next entry gets (`next_seq`, 0 if not known): what
    /// was in flight is sent again (PUBLISH with DUP, or PUBREL), the rest
    /// waits its turn. No entry below `next_seq` is read from the store
    /// again: a replica behind the connect may still hold entries earlier
    /// connections had acknowledged, and read from it later (the edge
    /// follows another store node, say) they would go out a second time.
    pub fn resume(&mut self, queue: Vec<proto::QueuedMessage>, next_seq: u64) {
        self.known_seq = self.known_seq.max(next_seq.checked_sub(1));
        for entry in queue {
            self.known_seq = Some(self.known_seq.map_or(entry.seq, |seq| seq.max(entry.seq)));
            let stage = DeliveryStage::try_from(entry.stage).unwrap_or(DeliveryStage::Queued);
            let packet_id = u16::try_from(entry.packet_id).ok().and_then(PacketId::new);
            let qos = qos_from(entry.qos).unwrap_or(QoS::AtLeastOnce);
            match (stage, packet_id) {
                (DeliveryStage::Published, Some(id)) => {
                    let Some(message) = entry.message.as_ref().and_then(Message::from_proto) else {
                        continue;
                    };
                    self.inflight.insert(
                        id.get(),
                        Inflight {
                            qos,
                            stored: Some(entry.seq),
                            released: false,
                            shared: None,
                        },
                    );
                    let mut publish = message.to_publish(
                        qos,
                        entry.retain,
                        &entry.subscription_ids,
                        rookery_store::writer::now_ms(),
                    );
                    publish.dup = true;
                    self.resend.push(Resend::Publish(Box::new(ReadyPublish {
                        publish,
                        packet_id: Some(id),
                        seq: entry.seq,
                    })));
                }
                (DeliveryStage::Released, Some(id)) => {
                    self.inflight.insert(
                        id.get(),
                        Inflight {
                            qos: QoS::ExactlyOnce,
                            stored: Some(entry.seq),
                            released: true,
                            shared: None,
                        },
                    );
                    self.resend.push(Resend::Release(id));
                }
                _ => self.stored_waiting.push_back(entry),
            }
        }
    }

    /// After [`Outgoing::resume`]: the entries still queued below
    /// `below_seq` (those queued while the connection before lived) may
    /// have gone out on it: its record of sending a QoS 1 message is written
    /// without waiting, can lag behind by more than a window while the
    /// store elects a leader, and can be lost with its edge. They go out
    /// with DUP=1, "this might be a re-delivery" (MQTT-3.3.1-1); a QoS 2
    /// message is recorded before it is sent, so a queued one never went
    /// out. A store that did not say (`below_seq` 0) gets the first
    /// `window` entries so flagged.
    pub fn may_have_sent(&mut self, below_seq: u64, window: usize) {
        self.maybe_sent_below_seq = if below_seq > 0 {
            below_seq
        } else {
            self.stored_waiting
                .iter()
                .take(window)
                .last()
                .map_or(0, |entry| entry.seq + 1)
        };
    }

    /// The store queued more for this session.
    pub fn store_has_news(&mut self) {
        self.store_unread = true;
    }

    /// Where the next read of the store queue starts, if one is worth it:
    /// entries may be unread and fewer wait here than the window can take.
    pub fn store_read_from(&self) -> Option<Option<u64>> {
        (self.store_unread && self.stored_waiting.len() < self.window).then_some(self.known_seq)
    }

    /// Adds the store queue's entries not seen yet; `complete` when the read
    /// reached the end of the queue.
    pub fn merge_stored(&mut self, queue: Vec<proto::QueuedMessage>, complete: bool) {
        self.store_unread = !complete;
        for entry in queue {
            if self.known_seq.is_some_and(|known| entry.seq <= known) {
                continue;
            }
            self.known_seq = Some(entry.seq);
            if entry.stage == DeliveryStage::Queued as i32 {
                self.stored_waiting.push_back(entry);
            }
        }
    }

    /// Whether any stored message waits, is in flight or is to be resent.
    pub fn has_stored(&self) -> bool {
        !self.stored_waiting.is_empty()
            || !self.resend.is_empty()
            || self
                .inflight
                .values()
                .any(|inflight| inflight.stored.is_some())
    }

    /// The store queue's length (waiting and in flight), when known: the
    /// queue has been read to its end.
    pub fn stored_backlog(&self) -> Option<usize> {
        (!self.store_unread).then(|| {
            let in_flight = self
                .inflight
                .values()
                .filter(|i| i.stored.is_some())
                .count();
            self.stored_waiting.len() + in_flight
        })
    }

    /// Stored messages wait for the window, here or unread in the store.
    pub fn has_stored_waiting(&self) -> bool {
        !self.stored_waiting.is_empty() || self.store_unread
    }

    /// What to send from the store queue now: resends after a resume, fresh
    /// messages the window allows (their packet ids to be recorded first),
    /// and messages that expired while queued (to be acknowledged away).
    pub fn next_stored(&mut self, now_ms: u64) -> StoredBatch {
        let mut batch = StoredBatch {
            resend: std::mem::take(&mut self.resend),
            ..StoredBatch::default()
        };
        while self.window_open() {
            let Some(entry) = self.stored_waiting.pop_front() else {
                break;
            };
            let Some(packet_id) = self.allocate_packet_id() else {
                self.stored_waiting.push_front(entry);
                break;
            };
            let maybe_sent = entry.seq < self.maybe_sent_below_seq;
            let qos = qos_from(entry.qos).unwrap_or(QoS::AtLeastOnce);
            let message = entry.message.as_ref().and_then(Message::from_proto);
            match message {
                Some(message) if !message.expired(now_ms) => {
                    self.inflight.insert(
                        packet_id.get(),
                        Inflight {
                            qos,
                            stored: Some(entry.seq),
                            released: false,
                            shared: None,
                        },
                    );
                    let mut publish =
                        message.to_publish(qos, entry.retain, &entry.subscription_ids, now_ms);
                    publish.dup = maybe_sent && qos == QoS::AtLeastOnce;
                    batch.fresh.push(ReadyPublish {
                        publish,
                        packet_id: Some(packet_id),
                        seq: entry.seq,
                    });
                }
                _ => {
                    metrics::counter!("rookery_messages_dropped_total", "reason" => "expired")
                        .increment(1);
                    batch.expired.push((entry.seq, packet_id, qos));
                }
            }
        }
        batch
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is done. Returns its
    /// store queue position if it was a stored one (`Some(None)` for one
    /// from memory), or `None` if nothing matched.
    pub fn acknowledged(&mut self, packet_id: PacketId, kind: QoS) -> Option<Option<u64>> {
        let inflight = self.inflight.get(&packet_id.get())?;
        let matches = match kind {
            QoS::AtLeastOnce => inflight.qos == QoS::AtLeastOnce,
            _ => inflight.qos == QoS::ExactlyOnce && inflight.released,
        };
        if !matches {
            return None;
        }
        self.inflight
            .remove(&packet_id.get())
            .map(|inflight| inflight.stored)
    }

    /// PUBREC: returns (the store queue position of a stored message newly
    /// received, whether to send PUBREL). A PUBREC with an error reason ends
    /// the flow (MQTT-4.3.3).
    pub fn received(&mut self, packet_id: PacketId, is_error: bool) -> Option<(Option<u64>, bool)> {
        let inflight = self.inflight.get_mut(&packet_id.get())?;
        if inflight.qos != QoS::ExactlyOnce {
            return None;
        }
        if inflight.released {
            return Some((None, true));
        }
        let stored = inflight.stored;
        if is_error {
            self.inflight.remove(&packet_id.get());
            return Some((stored, false));
        }
        inflight.released = true;
        Some((stored, true))
    }

    /// Forgets a message that will never be sent; returns its store queue
    /// position if it was a stored one (`Some(None)` for one from memory).
    pub fn forget(&mut self, packet_id: PacketId) -> Option<Option<u64>> {
        self.inflight
            .remove(&packet_id.get())
            .map(|inflight| inflight.stored)
    }

    /// Replaces the topic by an alias the client allows (MQTT-3.3.2-17):
    /// the first message on a topic sets the alias, later ones use it alone.
    pub fn apply_alias(&mut self, publish: &mut Publish) {
        if self.alias_maximum == 0 {
            return;
        }
        if let Some(alias) = self.aliases.get(&publish.topic) {
            publish.properties.topic_alias = Some(*alias);
            publish.topic = ByteString::new();
            return;
        }
        let next = u16::try_from(self.aliases.len() + 1).ok();
        if let Some(alias) = next
            .filter(|n| *n <= self.alias_maximum)
            .and_then(NonZeroU16::new)
        {
            self.aliases.insert(publish.topic.clone(), alias);
            publish.properties.topic_alias = Some(alias);
        }
    }
}

/// See [`Outgoing::next_stored`].
#[derive(Debug, Default)]
pub struct StoredBatch {
    /// In flight before a reconnect: sent again first.
    pub resend: Vec<Resend>,
    /// Sent for the first time, once their packet identifiers are recorded.
    pub fresh: Vec<ReadyPublish>,
    /// Expired while queued: (queue position, identifier, QoS), to
    /// acknowledge away.
    pub expired: Vec<(u64, PacketId, QoS)>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use bytes::Bytes;
    use rookery_codec::MessageProperties;

    use super::*;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"p"),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                expires_at_ms: 0,
                origin: Arc::from("o"),
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            shared_group: None,
            receipt: 0,
        }
    }

    fn shared(qos: QoS, payload: &'static [u8]) -> Delivery {
        let mut delivery = delivery(qos);
        Arc::make_mut(&mut delivery.message).payload = Bytes::from_static(payload);
        delivery.shared_group = Some(Arc::from("$share/g/t"));
        delivery
    }

    /// What a departing shared-subscription member hands on: unacknowledged
    /// and queued group messages, not those acknowledged or received (QoS 2
    /// after PUBREC), nor messages of its ordinary subscriptions.
    #[test]
    fn a_departing_member_hands_on_only_what_it_has_not_acknowledged() {
        let mut outgoing = Outgoing::new(3, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        outgoing.push(shared(QoS::AtLeastOnce, b"acked"));
        outgoing.push(shared(QoS::ExactlyOnce, b"received"));
        outgoing.push(shared(QoS::AtLeastOnce, b"in flight"));
        outgoing.push(delivery(QoS::AtLeastOnce));
        outgoing.push(shared(QoS::AtLeastOnce, b"queued"));
        let acked = outgoing.next_memory(0).unwrap();
        let received = outgoing.next_memory(0).unwrap();
        let _in_flight = outgoing.next_memory(0).unwrap();
        outgoing.acknowledged(acked.packet_id.unwrap(), QoS::AtLeastOnce);
        outgoing.received(received.packet_id.unwrap(), false);
        let mut handed: Vec<Bytes> = outgoing
            .take_shared()
            .into_iter()
            .map(|d| d.message.payload.clone())
            .collect();
        handed.sort();
        assert_eq!(
            handed,
            vec![
                Bytes::from_static(b"in flight"),
                Bytes::from_static(b"queued")
            ]
        );
    }

    /// A retried QoS 2 publish is delivered again with the receipt of its
    /// first attempt: a session takes each receipt once, and messages
    /// without one (0) are never taken for retries.
    #[test]
    fn a_session_takes_each_qos2_receipt_once() {
        let mut outgoing = Outgoing::new(10, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        let with_receipt = |receipt| Delivery {
            receipt,
            ..delivery(QoS::ExactlyOnce)
        };
        assert!(outgoing.push(with_receipt(7)));
        assert!(
            outgoing.push(with_receipt(7)),
            "a retry's copy is no overflow"
        );
        assert!(outgoing.push(with_receipt(8)));
        assert!(outgoing.push(with_receipt(0)));
        assert!(outgoing.push(with_receipt(0)));
        let mut sent = 0;
        while outgoing.next_memory(0).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 4, "7 once, 8, and both without a receipt");
    }

    #[test]
    fn the_receipts_kept_are_bounded() {
        let mut receipts = RecentReceipts::default();
        for receipt in 1..=(RECEIPTS_KEPT as u64 + 10) {
            assert!(receipts.first_time(receipt));
        }
        assert_eq!(receipts.seen.len(), RECEIPTS_KEPT);
        assert!(!receipts.first_time(RECEIPTS_KEPT as u64 + 10));
        assert!(
            receipts.first_time(1),
            "forgotten after RECEIPTS_KEPT others"
        );
    }

    #[test]
    fn mqtt_4_9_0_2_no_more_in_flight_than_the_window() {
        let mut outgoing = Outgoing::new(2, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        for _ in 0..3 {
            assert!(outgoing.push(delivery(QoS::AtLeastOnce)));
        }
        let first = outgoing.next_memory(0).unwrap();
        let _second = outgoing.next_memory(0).unwrap();
        assert!(outgoing.next_memory(0).is_none());
        assert_eq!(
            outgoing.acknowledged(first.packet_id.unwrap(), QoS::AtLeastOnce),
            Some(None)
        );
        assert!(outgoing.next_memory(0).is_some());
    }

    #[test]
    fn qos_0_is_not_held_by_the_window_but_keeps_order() {
        let mut outgoing = Outgoing::new(1, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        outgoing.push(delivery(QoS::AtMostOnce));
        outgoing.push(delivery(QoS::AtLeastOnce));
        outgoing.push(delivery(QoS::AtLeastOnce));
        outgoing.push(delivery(QoS::AtMostOnce));
        assert!(outgoing.next_memory(0).unwrap().packet_id.is_none());
        assert!(outgoing.next_memory(0).unwrap().packet_id.is_some());
        assert!(outgoing.next_memory(0).is_none());
    }

    #[test]
    fn overflow_policies() {
        let mut newest = Outgoing::new(1, 2, QueueOverflow::DropNewest, 0, u32::MAX);
        let mut oldest = Outgoing::new(1, 2, QueueOverflow::DropOldest, 0, u32::MAX);
        for outgoing in [&mut newest, &mut oldest] {
            assert!(outgoing.push(delivery(QoS::AtMostOnce)));
            assert!(outgoing.push(delivery(QoS::AtLeastOnce)));
            assert!(!outgoing.push(delivery(QoS::ExactlyOnce)));
        }
        assert_eq!(newest.memory.items.back().unwrap().qos, QoS::AtLeastOnce);
        assert_eq!(oldest.memory.front().unwrap().qos, QoS::AtLeastOnce);
        assert_eq!(oldest.memory.items.back().unwrap().qos, QoS::ExactlyOnce);
    }

    /// `max_queued_bytes` bounds the queue as `max_queued_messages` does:
    /// by policy, the newest is dropped or the oldest make room; a message
    /// larger than the bound still passes an empty queue.
    #[test]
    fn the_queue_holds_at_most_max_queued_bytes() {
        let size = shared(QoS::AtMostOnce, b"0123456789").queued_bytes();
        let bounded =
            |overflow| Outgoing::new(1, 100, overflow, 0, u32::MAX).with_max_queued_bytes(size * 3);
        let mut newest = bounded(QueueOverflow::DropNewest);
        let mut oldest = bounded(QueueOverflow::DropOldest);
        for outgoing in [&mut newest, &mut oldest] {
            for payload in [b"first.....", b"second....", b"third....."] {
                assert!(outgoing.push(shared(QoS::AtMostOnce, payload)));
            }
            assert!(!outgoing.push(shared(QoS::AtMostOnce, b"fourth....")));
            assert_eq!(outgoing.memory.bytes, size * 3);
        }
        let payloads = |outgoing: &Outgoing| -> Vec<Vec<u8>> {
            outgoing
                .memory
                .items
                .iter()
                .map(|d| d.message.payload.to_vec())
                .collect()
        };
        assert_eq!(payloads(&newest)[2], b"third.....");
        assert_eq!(payloads(&oldest)[0], b"second....");
        assert_eq!(payloads(&oldest)[2], b"fourth....");

        // Sent messages free their bytes; one huge message fits alone.
        let mut outgoing = bounded(QueueOverflow::DropNewest);
        let huge: &'static [u8] = Box::leak(vec![0u8; size * 10].into_boxed_slice());
        assert!(outgoing.push(shared(QoS::AtMostOnce, huge)));
        assert!(!outgoing.push(shared(QoS::AtMostOnce, b"small.....")));
        assert!(outgoing.next_memory(0).is_some());
        assert_eq!(outgoing.memory.bytes, 0);
        assert!(outgoing.push(shared(QoS::AtMostOnce, b"small.....")));
    }

    #[test]
    fn qos_2_completes_only_after_pubrec_then_pubcomp() {
        let mut outgoing = Outgoing::new(4, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        outgoing.push(delivery(QoS::ExactlyOnce));
        let id = outgoing.next_memory(0).unwrap().packet_id.unwrap();
        assert_eq!(outgoing.acknowledged(id, QoS::ExactlyOnce), None);
        assert_eq!(outgoing.received(id, false), Some((None, true)));
        assert_eq!(outgoing.received(id, false), Some((None, true)));
        assert_eq!(outgoing.acknowledged(id, QoS::ExactlyOnce), Some(None));
        assert_eq!(outgoing.acknowledged(id, QoS::ExactlyOnce), None);
    }

    #[test]
    fn mqtt_3_3_2_17_aliases_set_once_then_used_alone() {
        let mut outgoing = Outgoing::new(4, 100, QueueOverflow::DropNewest, 1, u32::MAX);
        let mut first =
            delivery(QoS::AtMostOnce)
                .message
                .to_publish(QoS::AtMostOnce, false, &[], 0);
        outgoing.apply_alias(&mut first);
        assert_eq!(first.topic, "t");
        assert_eq!(first.properties.topic_alias.map(NonZeroU16::get), Some(1));
        let mut second = first.clone();
        second.topic = "t".into();
        second.properties.topic_alias = None;
        outgoing.apply_alias(&mut second);
        assert!(second.topic.is_empty());
        let mut other = first.clone();
        other.topic = "u".into();
        other.properties.topic_alias = None;
        outgoing.apply_alias(&mut other);
        assert_eq!(other.topic, "u");
        assert_eq!(other.properties.topic_alias, None);
    }

    fn queued(seq: u64) -> proto::QueuedMessage {
        proto::QueuedMessage {
            seq,
            qos: 1,
            stage: DeliveryStage::Queued as i32,
            message: Some(delivery(QoS::AtLeastOnce).message.to_proto()),
            ..proto::QueuedMessage::default()
        }
    }

    /// The store queue is read from where the last read ended, in pieces,
    /// only when fewer than a window's worth wait here; its length is known
    /// only once it has been read to its end.
    #[test]
    fn the_store_queue_is_read_incrementally_and_counted_when_known() {
        let mut outgoing = Outgoing::new(2, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        assert_eq!(outgoing.store_read_from(), None, "nothing queued yet");
        assert_eq!(outgoing.stored_backlog(), Some(0));

        outgoing.store_has_news();
        assert_eq!(outgoing.store_read_from(), Some(None), "from the start");
        assert_eq!(outgoing.stored_backlog(), None, "unread entries: unknown");
        // A read that filled its piece: more may follow.
        outgoing.merge_stored(vec![queued(1), queued(2), queued(3)], false);
        assert_eq!(outgoing.store_read_from(), None, "a window's worth waits");
        let batch = outgoing.next_stored(0);
        assert_eq!(batch.fresh.len(), 2, "the window");
        assert_eq!(outgoing.store_read_from(), Some(Some(3)), "after seq 3");
        // Entries already seen are not taken twice.
        outgoing.merge_stored(vec![queued(3), queued(4)], true);
        assert_eq!(outgoing.store_read_from(), None);
        assert_eq!(
            outgoing.stored_backlog(),
            Some(2 + 2),
            "2 waiting, 2 in flight"
        );
        let packet_id = batch.fresh[0].packet_id.unwrap();
        assert_eq!(
            outgoing.acknowledged(packet_id, QoS::AtLeastOnce),
            Some(Some(batch.fresh[0].seq))
        );
        assert_eq!(outgoing.stored_backlog(), Some(3));
        let seqs: Vec<u64> = outgoing
            .next_stored(0)
            .fresh
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(seqs, vec![3], "in order, once");
    }

    /// MQTT-3.3.1-1: after a resume, the first queued QoS 1 messages, a
    /// window's worth, may have gone out before the edge that sent them
    /// died with their "sent" records: they go out with DUP=1; the rest,
    /// and QoS 2 ones (recorded before sending), with DUP=0. Before, all
    /// went out with DUP=0 (seen after `kill -9` of an edge under load).
    #[test]
    fn mqtt_3_3_1_1_queued_messages_an_earlier_connection_may_have_sent_carry_dup() {
        let mut outgoing = Outgoing::new(8, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        let qos2 = |seq| proto::QueuedMessage {
            qos: 2,
            message: Some(delivery(QoS::ExactlyOnce).message.to_proto()),
            ..queued(seq)
        };
        outgoing.resume(vec![queued(1), qos2(2), queued(3), queued(4), queued(5)], 0);
        // A store that does not say how far: one window (3 here).
        outgoing.may_have_sent(0, 3);
        let dup: Vec<(u64, bool)> = outgoing
            .next_stored(0)
            .fresh
            .iter()
            .map(|ready| (ready.seq, ready.publish.dup))
            .collect();
        assert_eq!(
            dup,
            [(1, true), (2, false), (3, true), (4, false), (5, false)]
        );
    }

    /// MQTT-3.3.1-1: every queued QoS 1 message below the store's mark
    /// (queued while the connection before lived) goes out with DUP=1, also
    /// past the first window and in entries read from the store later: that
    /// connection's "sent" records may have lagged by more than a window.
    /// Before, only the first window did (the chaos run's will watcher got
    /// wills twice, the second time without DUP).
    #[test]
    fn mqtt_3_3_1_1_every_message_queued_while_the_connection_before_lived_carries_dup() {
        let mut outgoing = Outgoing::new(2, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        outgoing.resume(vec![queued(1), queued(2), queued(3)], 0);
        outgoing.store_has_news();
        outgoing.may_have_sent(5, 2);
        let mut dup = Vec::new();
        for _ in 0..3 {
            if outgoing.store_read_from().is_some() {
                outgoing.merge_stored(vec![queued(4), queued(5), queued(6)], true);
            }
            for ready in outgoing.next_stored(0).fresh {
                dup.push((ready.seq, ready.publish.dup));
                let packet_id = ready.packet_id.expect("a QoS 1 message has one");
                outgoing.acknowledged(packet_id, QoS::AtLeastOnce);
            }
        }
        assert_eq!(
            dup,
            [
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, false),
                (6, false)
            ]
        );
    }

    /// Entries that left the queue before the connect, still shown by a
    /// lagging replica, are not sent again (the chaos run's will watcher got
    /// wills a second time, without DUP, when its edge followed another
    /// store node).
    #[test]
    fn entries_that_left_the_queue_before_the_connect_are_not_read_again() {
        let mut outgoing = Outgoing::new(8, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        outgoing.resume(vec![queued(9)], 11);
        outgoing.store_has_news();
        assert_eq!(outgoing.store_read_from(), Some(Some(10)));
        outgoing.merge_stored((5..=12).map(queued).collect(), true);
        let seqs: Vec<u64> = outgoing
            .next_stored(0)
            .fresh
            .iter()
            .map(|ready| ready.seq)
            .collect();
        assert_eq!(seqs, [9, 11, 12]);
    }

    /// A resumed backlog longer than the packet identifier space (1 to
    /// 65,535) drains in order: identifiers wrap around, skip those still in
    /// flight (MQTT-2.2.1-3: a new PUBLISH takes one currently unused; here
    /// two resends left unacknowledged throughout), and the window keeps
    /// refilling.
    #[test]
    fn a_backlog_longer_than_the_packet_id_space_drains_past_the_wrap() {
        const BACKLOG: u64 = 70_000;
        let mut outgoing = Outgoing::new(32, 100, QueueOverflow::DropNewest, 0, u32::MAX);
        let resent = |seq: u64, packet_id: u32| proto::QueuedMessage {
            stage: DeliveryStage::Published as i32,
            packet_id,
            ..queued(seq)
        };
        let mut queue = vec![resent(1, 3), resent(2, 70)];
        queue.extend((3..3 + BACKLOG).map(queued));
        outgoing.resume(queue, 0);

        let (mut resends, mut seqs) = (0, Vec::new());
        loop {
            let batch = outgoing.next_stored(0);
            resends += batch.resend.len();
            if batch.fresh.is_empty() {
                break;
            }
            assert!(batch.expired.is_empty());
            // The whole window, beside the two resends, unless fewer remain.
            let remaining = BACKLOG as usize - seqs.len();
            assert_eq!(batch.fresh.len(), remaining.min(30));
            assert_eq!(outgoing.inflight_len(), 32.min(2 + remaining));
            for ready in batch.fresh {
                let packet_id = ready.packet_id.unwrap();
                assert!(
                    packet_id.get() != 3 && packet_id.get() != 70,
                    "{packet_id:?} is still in flight"
                );
                assert_eq!(
                    outgoing.acknowledged(packet_id, QoS::AtLeastOnce),
                    Some(Some(ready.seq)),
                    "acknowledged at its queue position"
                );
                seqs.push(ready.seq);
            }
        }
        assert_eq!(resends, 2);
        // Compared in summary: a failure's full listing would be 70,000 long.
        let in_order = seqs.iter().copied().eq(3..3 + BACKLOG);
        assert!(in_order, "{} sent, not seqs 3..{}", seqs.len(), 3 + BACKLOG);
        assert_eq!(outgoing.stored_backlog(), Some(2), "the two resends");
    }
}
