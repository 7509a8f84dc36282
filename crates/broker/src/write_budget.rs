//! How much this edge may have written to the store without an answer yet.
//!
//! Every store write is charged its size when it is submitted and credited
//! when its outcome is known (committed, failed or timed out). Writes are
//! never refused or delayed here, which would break their submission order;
//! instead, while the charge is over the budget, connections that have
//! writes of their own outstanding stop reading their sockets (TCP then
//! slows those clients) until it falls below again. A flood of retained or
//! persistent publishes is thereby held back at its source instead of
//! queuing in memory without bound, and clients whose traffic never touches
//! the store are not held back at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes counted for each write besides its commands: the write's own
/// bookkeeping (its entry in the queues, its reply channel).
const PER_WRITE: usize = 256;

/// The edge's budget of store writes in flight, in bytes.
#[derive(Debug)]
pub struct WriteBudget {
    /// 0: no budget (never congested).
    limit: usize,
    in_flight: AtomicUsize,
    room: Notify,
    /// Whether congestion was logged already (it is, once).
    logged: AtomicBool,
}

/// A write's charge, credited back when dropped.
#[derive(Debug)]
#[must_use = "the charge is credited back when dropped"]
pub struct Charge {
    budget: Arc<WriteBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let budget = &self.budget;
        let before = budget.in_flight.fetch_sub(self.bytes, Ordering::AcqRel);
        if before >= budget.limit && before - self.bytes < budget.limit {
            budget.room.notify_waiters();
        }
    }
}

impl WriteBudget {
    /// A budget of `limit` bytes; 0 turns it off.
    pub fn new(limit: usize) -> Arc<WriteBudget> {
        Arc::new(WriteBudget {
            limit,
            in_flight: AtomicUsize::new(0),
            room: Notify::new(),
            logged: AtomicBool::new(false),
        })
    }

    /// Charges a write of `bytes` (its encoded commands).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let bytes = bytes.saturating_add(PER_WRITE);
        let before = self.in_flight.fetch_add(bytes, Ordering::AcqRel);
        if self.limit != 0 && before < self.limit && before + bytes >= self.limit {
            self.congested_now();
        }
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    /// Whether writes in flight have reached the budget.
    pub fn is_congested(&self) -> bool {
        self.limit != 0 && self.in_flight.load(Ordering::Acquire) >= self.limit
    }

    /// Resolves once the writes in flight are below the budget.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    fn congested_now(&self) {
        metrics::counter!("rookery_store_write_budget_reached_total").increment(1);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = self.limit,
                "store writes in flight reached cluster.max_write_bytes_in_flight; clients with \
                 writes outstanding are not read until they fall below it (logged once; counted \
                 in rookery_store_write_budget_reached_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_room(budget: &WriteBudget) -> bool {
        futures::FutureExt::now_or_never(budget.room()).is_some()
    }

    #[test]
    fn the_budget_is_congested_at_its_limit_and_free_again_below_it() {
        let budget = WriteBudget::new(2 * PER_WRITE + 100);
        let first = budget.charge(50);
        assert!(!budget.is_congested());
        let second = budget.charge(50);
        assert!(budget.is_congested());
        assert!(!has_room(&budget));
        drop(first);
        assert!(!budget.is_congested());
        assert!(has_room(&budget));
        drop(second);
        assert_eq!(budget.in_flight.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_budget_of_zero_is_never_congested() {
        let budget = WriteBudget::new(0);
        let _charges: Vec<Charge> = (0..100).map(|_| budget.charge(1 << 20)).collect();
        assert!(!budget.is_congested());
        assert!(has_room(&budget));
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_a_write_is_credited() {
        let budget = WriteBudget::new(PER_WRITE);
        let charge = budget.charge(0);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(charge);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
