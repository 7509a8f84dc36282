//! SUBSCRIBEs read from a socket whose filters are not in the index yet.
//!
//! Connections run in parallel: a SUBSCRIBE that this edge read first can
//! still be in the decoder while another connection matches a PUBLISH read
//! a moment later, and the new subscriber misses the message. MQTT orders
//! nothing between two connections, but clients count on a subscription
//! routing as soon as the server has read it (Mosquitto, one thread, does
//! that), so a connection holds a ticket from the read that brought a
//! SUBSCRIBE until its filters are in the index, and a publish is matched
//! once the tickets drawn before it are returned, waiting at most a bound.
//! A ticket is never held across a store write or any other wait: only the
//! decoding and checking of the packets read before it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The SUBSCRIBEs being read, as tickets in the order they were read. A leaf
/// in the hub's lock order.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Tickets held: publishers look here first, and usually stop here.
    held: AtomicUsize,
    /// The next ticket.
    next: AtomicU64,
    /// The tickets held, to tell those drawn before a publish.
    tickets: Mutex<BTreeSet<u64>>,
    returned: Notify,
    /// Whether a wait has run out before (logged once).
    timed_out_before: AtomicBool,
}

/// A SUBSCRIBE read and not yet in the index; returned when dropped.
#[derive(Debug)]
pub struct ArrivalTicket {
    arrivals: Arc<Arrivals>,
    ticket: u64,
}

impl Drop for ArrivalTicket {
    fn drop(&mut self) {
        self.arrivals.tickets.lock().remove(&self.ticket);
        self.arrivals.held.fetch_sub(1, Ordering::SeqCst);
        self.arrivals.returned.notify_waiters();
    }
}

impl Arrivals {
    /// A ticket for a SUBSCRIBE just read.
    pub fn draw(self: &Arc<Self>) -> ArrivalTicket {
        // Counted before it is drawn: a publisher that sees the ticket drawn
        // sees it counted too.
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut tickets = self.tickets.lock();
        let ticket = self.next.fetch_add(1, Ordering::SeqCst);
        tickets.insert(ticket);
        ArrivalTicket {
            arrivals: self.clone(),
            ticket,
        }
    }

    /// Waits until every ticket drawn before this call is returned, or
    /// `bound` has passed; whether they were all returned in time.
    pub async fn settled(&self, bound: Duration) -> bool {
        if self.held.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let drawn_before = self.next.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so that a return in between wakes it.
            returned.as_mut().enable();
            let oldest = self.tickets.lock().first().copied();
            if oldest.is_none_or(|oldest| oldest >= drawn_before) {
                return true;
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                self.timed_out();
                return false;
            }
        }
    }

    fn timed_out(&self) {
        metrics::counter!("rookery_subscribe_waits_timed_out_total").increment(1);
        if !self.timed_out_before.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a publish was matched before a SUBSCRIBE read earlier was in effect: \
                 its connection did not finish reading it within the bound (a starved \
                 thread?); counted in rookery_subscribe_waits_timed_out_total, logged once"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_publish_waits_for_a_subscribe_read_before_it() {
        let arrivals = Arc::new(Arrivals::default());
        let ticket = arrivals.draw();
        let waiting = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move { arrivals.settled(BOUND).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "matched before the filters are in");
        drop(ticket);
        assert!(waiting.await.unwrap(), "settled once the ticket came back");
    }

    #[tokio::test]
    async fn a_publish_does_not_wait_for_a_subscribe_read_after_it() {
        let arrivals = Arc::new(Arrivals::default());
        let earlier = arrivals.draw();
        let waiting = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move { arrivals.settled(BOUND).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = arrivals.draw();
        drop(earlier);
        assert!(waiting.await.unwrap(), "the later ticket is not waited for");
        drop(later);
        assert_eq!(arrivals.held.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_ticket_never_returned_holds_a_publish_only_for_the_bound() {
        let arrivals = Arc::new(Arrivals::default());
        let _stuck = arrivals.draw();
        assert!(!arrivals.settled(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn without_tickets_a_publish_does_not_wait() {
        let arrivals = Arc::new(Arrivals::default());
        drop(arrivals.draw());
        assert!(arrivals.settled(Duration::ZERO).await);
    }
}
