//! Where paused publishers wait for a backlog to fall: a session's on one
//! edge (the broker's mailbox) or a forwarding link's to another edge. The
//! backlog and its marks belong to the owner; this is the wait, the wake-up
//! that cannot be missed, and the stall that ends waiting for a backlog that
//! does not drain.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The wait of the publishers paused for one backlog.
#[derive(Debug, Default)]
pub struct Room {
    notify: Notify,
    /// Some publisher waits: only then is a fall below the mark announced.
    awaited: AtomicBool,
    /// A publisher's pause ran out: nobody pauses for this backlog until it
    /// has drained.
    stalled: AtomicBool,
}

impl Room {
    /// Resolves once `full` says no (or the room is stalled or released,
    /// which the owner's `full` must say no to as well).
    pub async fn wait(&self, full: impl Fn() -> bool) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Paired with `drained`: either it sees this flag, or `full`
            // sees the lower backlog.
            self.awaited.store(true, Ordering::SeqCst);
            if !full() {
                return;
            }
            notified.await;
        }
    }

    /// The backlog is below its resume mark: no longer stalled, and the
    /// waiting publishers go on.
    pub fn drained(&self) {
        self.stalled.store(false, Ordering::Relaxed);
        if self.awaited.swap(false, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// A publisher waited as long as it may: until the backlog drains, no
    /// publisher pauses for it, and those waiting go on.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Relaxed);
        self.release();
    }

    /// Whether a pause ran out since the backlog last drained.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Wakes every waiting publisher (the backlog's owner is gone).
    pub fn release(&self) {
        self.awaited.store(false, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}
