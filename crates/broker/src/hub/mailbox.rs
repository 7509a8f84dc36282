//! The way into one connection's task, and the backpressure that pauses the
//! publishers of a session that does not drain: a publisher pauses at the
//! pause mark, resumes at half of it, and stops pausing for a session that
//! stalled (did not drain while it waited).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use rookery_cluster::room::Room;
use rookery_codec::ReasonCode;
use tokio::sync::Notify;

use crate::message::Delivery;

/// What a connection task is told by the rest of the broker.
#[derive(Debug)]
pub enum ToConnection {
    /// Send this message.
    Deliver(Delivery),
    /// The store queued messages for this (persistent) session: read them.
    Queued,
    /// Close the connection, telling a 5.0 client why.
    Close(ReasonCode),
    /// The store took this session offline on its own (this edge's lease
    /// lapsed): close, recording nothing more of it.
    Released,
}

/// The way into one connection's task: a queue and a wake-up. No channel
/// type: an idle connection's mailbox holds no buffer at all (a tokio channel
/// allocates a block of slots up front), which matters at a million idle
/// connections.
#[derive(Debug, Clone)]
pub struct Mailbox {
    shared: Arc<MailboxShared>,
    /// The connection this mailbox leads to (unique on this edge).
    pub connection_id: u64,
}

#[derive(Debug, Default)]
struct MailboxShared {
    queue: Mutex<VecDeque<ToConnection>>,
    /// Deliveries waiting: bounded by the session's queue limit.
    deliveries: AtomicUsize,
    /// Their bytes (`Delivery::queued_bytes`): bounded by `max_queued_bytes`.
    delivery_bytes: AtomicUsize,
    wake: Notify,
    /// The connection is gone: nothing more is queued.
    closed: AtomicBool,
    /// Deliveries the connection has taken and not yet written (its own
    /// queue), as it last reported them.
    taken: AtomicUsize,
    /// A persistent session's store queue length (in flight included), as
    /// its connection last knew it (having read the queue to its end). Only
    /// the connection sets it: a publisher's figure could arrive after a
    /// newer report and hold others paused on a session already drained.
    stored: AtomicUsize,
    /// Store writes queuing messages for this session whose results are
    /// not known yet (see `PendingEnqueue`).
    enqueuing: AtomicUsize,
    /// QoS 1/2 messages the connection has sent and not seen acknowledged,
    /// as it last reported them (for operators; no publisher waits on it).
    in_flight: AtomicUsize,
    /// Publishers pause while the backlog is at or above this; 0 never.
    pause_at: usize,
    /// The store queue's share that is the in-flight window (the store's
    /// limit adds it to the queue limit): not backlog.
    stored_in_flight: usize,
    /// Paused publishers wait here for the backlog to fall. Stalled when a
    /// publisher's pause ran out: the session is not draining, so nobody
    /// pauses for it (its overflow is dropped) until it does again.
    room: Room,
    /// A `Queued` notice waits in `queue`: one is enough.
    queued_notice: AtomicBool,
}

impl MailboxShared {
    fn push(&self, message: ToConnection) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let was_empty = {
            let mut queue = self.queue.lock();
            let was_empty = queue.is_empty();
            queue.push_back(message);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }
}

impl Mailbox {
    /// `pause_at`: the backlog at which publishers to this session pause
    /// (backpressure); 0 turns pausing off. `stored_in_flight`: the part of
    /// a store queue's length that is the in-flight window.
    pub fn new(
        connection_id: u64,
        pause_at: usize,
        stored_in_flight: usize,
    ) -> (Mailbox, MailboxReceiver) {
        let shared = Arc::new(MailboxShared {
            pause_at,
            stored_in_flight,
            ..MailboxShared::default()
        });
        (
            Mailbox {
                shared: shared.clone(),
                connection_id,
            },
            MailboxReceiver { shared },
        )
    }

    /// Tells the connection to close, with the reason a 5.0 client is sent.
    pub fn close(&self, reason: ReasonCode) {
        self.shared.push(ToConnection::Close(reason));
    }

    /// Tells the connection that the store took its session offline (see
    /// [`ToConnection::Released`]).
    pub fn release(&self) {
        self.shared.push(ToConnection::Released);
    }

    /// Tells a persistent session's connection that the store queued
    /// messages for it (once until it reads the notice).
    pub fn notify_queued(&self) {
        if !self.shared.queued_notice.swap(true, Ordering::AcqRel) {
            self.shared.push(ToConnection::Queued);
        }
    }

    /// Hands a delivery over unless the session's queue is full: `limit`
    /// deliveries waiting, or `byte_limit` bytes (one always fits in an
    /// empty mailbox).
    pub(super) fn deliver(&self, delivery: Delivery, limit: usize, byte_limit: usize) -> bool {
        let waiting = self.shared.deliveries.load(Ordering::Relaxed);
        let size = delivery.queued_bytes();
        let bytes = self.shared.delivery_bytes.load(Ordering::Relaxed);
        if waiting >= limit || (waiting > 0 && bytes.saturating_add(size) > byte_limit) {
            return false;
        }
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        self.shared
            .delivery_bytes
            .fetch_add(size, Ordering::Relaxed);
        self.shared.push(ToConnection::Deliver(delivery))
    }

    /// Whether a publisher to this session should pause: its backlog is at
    /// the pause threshold and it is still draining.
    pub fn is_full(&self) -> bool {
        self.shared.above(self.shared.pause_at)
    }

    /// Resolves once the backlog is down to half the pause threshold (or the
    /// connection is gone): resuming at once would pause again a message
    /// later, waking the publisher per message.
    pub async fn room(&self) {
        let shared = &self.shared;
        shared.room.wait(|| shared.above(shared.resume_at())).await;
    }

    /// The backlog's parts (mailbox, connection's queue, store queue), for
    /// logs.
    pub fn backlog_parts(&self) -> (usize, usize, usize) {
        let shared = &self.shared;
        (
            shared.deliveries.load(Ordering::SeqCst),
            shared.taken.load(Ordering::SeqCst),
            shared.stored.load(Ordering::SeqCst),
        )
    }

    /// What an operator sees of the session's flow: messages in flight,
    /// messages waiting (in the mailbox and the connection's own queue),
    /// and the store queue's length as the connection last read it.
    pub fn figures(&self) -> (usize, usize, usize) {
        let shared = &self.shared;
        (
            shared.in_flight.load(Ordering::Relaxed),
            shared.deliveries.load(Ordering::Relaxed) + shared.taken.load(Ordering::Relaxed),
            shared.stored.load(Ordering::Relaxed),
        )
    }

    /// A pause for this session ran out: if it is still full, it is
    /// stalled (counted in `rookery_sessions_stalled_total`); whether it was.
    pub fn stall_if_full(&self) -> bool {
        if !self.is_full() {
            return false;
        }
        self.stall();
        metrics::counter!("rookery_sessions_stalled_total").increment(1);
        true
    }

    /// A publisher waited for this session as long as it may: until the
    /// backlog falls below the threshold, publishers no longer pause for it.
    pub fn stall(&self) {
        // Other publishers paused for it stop waiting too.
        self.shared.room.stall();
    }
}

impl MailboxShared {
    /// Paused publishers resume when the backlog is below this.
    fn resume_at(&self) -> usize {
        self.pause_at.div_ceil(2)
    }

    /// Whether publishers should wait for this backlog to fall below `mark`.
    fn above(&self, mark: usize) -> bool {
        self.pause_at > 0
            && !self.closed.load(Ordering::Acquire)
            && !self.room.is_stalled()
            && self.backlog() >= mark
    }

    fn end_enqueue(&self) {
        self.enqueuing.fetch_sub(1, Ordering::SeqCst);
        self.wake_if_room();
    }

    /// Wakes paused publishers once the backlog is below the resume mark.
    fn wake_if_room(&self) {
        if self.pause_at == 0 || self.backlog() >= self.resume_at() {
            return;
        }
        self.room.drained();
    }

    fn backlog(&self) -> usize {
        self.deliveries.load(Ordering::SeqCst)
            + self.taken.load(Ordering::SeqCst)
            + self.enqueuing.load(Ordering::SeqCst)
            + self
                .stored
                .load(Ordering::SeqCst)
                .saturating_sub(self.stored_in_flight)
    }
}

/// The connection's end of its mailbox; dropping it closes the mailbox.
#[derive(Debug)]
pub struct MailboxReceiver {
    shared: Arc<MailboxShared>,
}

impl MailboxReceiver {
    /// The connection reports how many deliveries it holds unwritten, and
    /// the length of its store queue when it knows it (it has read the
    /// queue to its end); a backlog below the threshold wakes paused
    /// publishers.
    pub fn report_taken(&self, taken: usize, stored: Option<usize>) {
        let shared = &self.shared;
        shared.taken.store(taken, Ordering::SeqCst);
        if let Some(stored) = stored {
            shared.stored.store(stored, Ordering::SeqCst);
        }
        shared.wake_if_room();
    }

    /// The connection reports how many QoS 1/2 messages it has in flight.
    pub fn report_in_flight(&self, in_flight: usize) {
        self.shared.in_flight.store(in_flight, Ordering::Relaxed);
    }

    /// Waits for the next message to the connection.
    pub async fn recv(&mut self) -> Option<ToConnection> {
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            // notify_one keeps a permit when nobody waits, so a push between
            // the check above and this wait is not missed.
            self.shared.wake.notified().await;
        }
    }

    /// The next message to the connection, if one waits.
    pub fn try_recv(&mut self) -> Option<ToConnection> {
        let message = self.shared.queue.lock().pop_front()?;
        match message {
            ToConnection::Deliver(ref delivery) => {
                // Still the session's backlog, now in the connection's
                // hands, until its next `report_taken` says what is left:
                // uncounted meanwhile, a drain of many deliveries let
                // publishers overrun the connection's queue, which drops at
                // its limit (QoS 1 included).
                self.shared.taken.fetch_add(1, Ordering::SeqCst);
                self.shared.deliveries.fetch_sub(1, Ordering::Relaxed);
                self.shared
                    .delivery_bytes
                    .fetch_sub(delivery.queued_bytes(), Ordering::Relaxed);
            }
            // Cleared before the queue is read, so a later enqueue notifies
            // again.
            ToConnection::Queued => self.shared.queued_notice.store(false, Ordering::Release),
            ToConnection::Close(_) | ToConnection::Released => {}
        }
        Some(message)
    }
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.queue.lock().clear();
        self.shared.room.release();
    }
}

/// A store write queuing a message for persistent sessions, counted in the
/// backlog of those online here until its result is known (dropped), so
/// that a publisher pipelining its writes pauses before the store queue
/// overflows rather than after.
#[derive(Debug)]
pub struct PendingEnqueue {
    mailboxes: Vec<Option<Mailbox>>,
}

impl PendingEnqueue {
    /// Counts the write; sessions now nearly full are added to `full`.
    pub fn new(mailboxes: Vec<Option<Mailbox>>, full: &mut Vec<Mailbox>) -> Self {
        for mailbox in mailboxes.iter().flatten() {
            mailbox.shared.enqueuing.fetch_add(1, Ordering::SeqCst);
            add_if_full(full, mailbox);
        }
        PendingEnqueue { mailboxes }
    }
}

impl Drop for PendingEnqueue {
    fn drop(&mut self) {
        for mailbox in self.mailboxes.iter().flatten() {
            mailbox.shared.end_enqueue();
        }
    }
}

/// Waits until none of `mailboxes` is full.
pub async fn room_in(mailboxes: &[Mailbox]) {
    for mailbox in mailboxes {
        mailbox.room().await;
    }
}

/// Adds `mailbox` to `full` (once) if its publishers should pause.
pub(super) fn add_if_full(full: &mut Vec<Mailbox>, mailbox: &Mailbox) {
    if mailbox.is_full()
        && !full
            .iter()
            .any(|known| known.connection_id == mailbox.connection_id)
    {
        full.push(mailbox.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::fixtures::delivery;

    /// Whether `room` resolves at once.
    fn has_room(mailbox: &Mailbox) -> bool {
        futures::FutureExt::now_or_never(mailbox.room()).is_some()
    }

    /// A publisher pauses at the mark and resumes at half of it, whether the
    /// backlog waits in the mailbox or in the connection's own queue.
    #[test]
    fn publishers_pause_at_the_mark_and_resume_at_half_of_it() {
        let (mailbox, mut receiver) = Mailbox::new(1, 4, 0);
        for _ in 0..3 {
            assert!(mailbox.deliver(delivery(), 100, usize::MAX));
        }
        assert!(!mailbox.is_full());
        assert!(mailbox.deliver(delivery(), 100, usize::MAX));
        assert!(mailbox.is_full());
        assert!(!has_room(&mailbox));

        // The connection takes all four into its queue: still full.
        while receiver.try_recv().is_some() {}
        receiver.report_taken(4, Some(0));
        assert!(mailbox.is_full());
        // Three left: below the mark, not yet down to half of it.
        receiver.report_taken(3, Some(0));
        assert!(!mailbox.is_full());
        assert!(!has_room(&mailbox));
        receiver.report_taken(1, Some(0));
        assert!(has_room(&mailbox));
    }

    /// Found with mqttwrk (50 QoS 1 publishers, 100 in flight each, to one
    /// subscriber): deliveries the connection had taken from its mailbox
    /// but not yet reported counted nowhere, so publishers kept going while
    /// a drain of up to 1,024 filled the connection's queue past its limit,
    /// which dropped 26 acknowledged QoS 1 messages of 2,000,000.
    #[test]
    fn deliveries_taken_from_the_mailbox_count_until_the_connection_reports() {
        let (mailbox, mut receiver) = Mailbox::new(1, 4, 0);
        for _ in 0..4 {
            assert!(mailbox.deliver(delivery(), 100, usize::MAX));
        }
        assert!(mailbox.is_full());
        while receiver.try_recv().is_some() {}
        assert!(mailbox.is_full(), "taken, not yet written: still backlog");
        receiver.report_taken(0, Some(0));
        assert!(!mailbox.is_full());
        assert!(has_room(&mailbox));
    }

    /// `max_queued_bytes`: the mailbox takes deliveries up to the byte
    /// limit (one always, however large) and frees their bytes as the
    /// connection takes them.
    #[test]
    fn the_mailbox_holds_at_most_the_byte_limit() {
        let (mailbox, mut receiver) = Mailbox::new(1, 0, 0);
        let size = delivery().queued_bytes();
        assert!(
            mailbox.deliver(delivery(), 100, size / 2),
            "one always fits"
        );
        assert!(!mailbox.deliver(delivery(), 100, size / 2));
        assert!(receiver.try_recv().is_some());
        for _ in 0..3 {
            assert!(mailbox.deliver(delivery(), 100, size * 3));
        }
        assert!(
            !mailbox.deliver(delivery(), 100, size * 3),
            "a fourth is over"
        );
        assert!(receiver.try_recv().is_some());
        assert!(mailbox.deliver(delivery(), 100, size * 3), "room again");
    }

    /// A session that did not drain is stalled: nobody pauses for it until
    /// it drains; a closed one never holds anyone.
    #[test]
    fn stalled_and_closed_sessions_hold_no_publisher() {
        let (mailbox, receiver) = Mailbox::new(1, 2, 0);
        receiver.report_taken(5, Some(0));
        assert!(mailbox.is_full());
        mailbox.stall();
        assert!(!mailbox.is_full());
        assert!(has_room(&mailbox));
        receiver.report_taken(0, Some(0));
        receiver.report_taken(5, Some(0));
        assert!(mailbox.is_full(), "draining ends the stall");
        drop(receiver);
        assert!(!mailbox.is_full());
        assert!(has_room(&mailbox));
    }

    /// A persistent session's backlog is its store queue beyond the
    /// in-flight window, plus the writes still queuing for it.
    #[test]
    fn store_queue_and_writes_in_flight_count_in_the_backlog() {
        let (mailbox, receiver) = Mailbox::new(1, 4, 32);
        let mut full = Vec::new();
        receiver.report_taken(0, Some(34));
        assert!(!mailbox.is_full());
        let first = PendingEnqueue::new(vec![Some(mailbox.clone())], &mut full);
        assert!(full.is_empty());
        let second = PendingEnqueue::new(vec![Some(mailbox.clone()), None], &mut full);
        assert_eq!(full.len(), 1, "34 - 32 stored + 2 in flight reach the mark");
        drop(first);
        assert!(!mailbox.is_full(), "a failed write no longer counts");
        // Committed: the connection reads it and reports the longer queue.
        drop(second);
        receiver.report_taken(0, Some(36));
        assert!(mailbox.is_full(), "the store queue is now 36 long");
        receiver.report_taken(0, Some(32));
        assert!(has_room(&mailbox));
    }

    /// A publisher parked in `room` is woken by the connection's report, by
    /// a store write finishing, by a stall and by the connection ending.
    #[tokio::test]
    async fn parked_publishers_are_woken() {
        let wait = std::time::Duration::from_secs(5);
        let (mailbox, receiver) = Mailbox::new(1, 4, 0);
        receiver.report_taken(4, Some(0));
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        receiver.report_taken(1, Some(0));
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        let mut full = Vec::new();
        let pending: Vec<_> = (0..4)
            .map(|_| PendingEnqueue::new(vec![Some(mailbox.clone())], &mut full))
            .collect();
        receiver.report_taken(0, Some(0));
        assert!(mailbox.is_full());
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        drop(pending);
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        receiver.report_taken(9, Some(0));
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        mailbox.stall();
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();

        receiver.report_taken(0, Some(0));
        receiver.report_taken(9, Some(0));
        assert!(mailbox.is_full(), "draining ended the stall");
        let parked = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.room().await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        tokio::time::timeout(wait, parked).await.unwrap().unwrap();
    }
}
