//! What one forwarding link may hold, and the backpressure it puts on the
//! publishers feeding it: a publisher pauses once the link holds three
//! quarters of its budget and resumes at half of that, as a publisher to a
//! slow session on its own edge does (so QoS 0 reaches the cap, and is
//! dropped, only when a pause ran out).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::room::Room;

/// One link's byte budget: what it holds, queued or sent and not yet
/// acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct LinkBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    bytes: AtomicUsize,
    cap: usize,
    /// Publishers pause while the link holds this much or more.
    pause_at: usize,
    /// Paused publishers wait here for the link to drain. Stalled when the
    /// edge is not taking what is sent: beyond the cap publishes are then
    /// refused or dropped.
    room: Room,
    /// The link ended: nobody waits for it.
    closed: AtomicBool,
}

impl Shared {
    fn resume_at(&self) -> usize {
        self.pause_at / 2
    }

    fn above(&self, mark: usize) -> bool {
        !self.closed.load(Ordering::Acquire)
            && !self.room.is_stalled()
            && self.bytes.load(Ordering::SeqCst) >= mark
    }

    /// Wakes paused publishers once the link is below the resume mark.
    fn wake_if_room(&self) {
        if self.bytes.load(Ordering::SeqCst) < self.resume_at() {
            self.room.drained();
        }
    }
}

impl LinkBudget {
    /// A budget of `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        LinkBudget {
            shared: Arc::new(Shared {
                bytes: AtomicUsize::new(0),
                cap,
                pause_at: (cap - cap / 4).max(1),
                room: Room::default(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Takes `size` bytes of the budget, if they fit under the cap (or the
    /// link holds nothing).
    pub(crate) fn reserve(&self, size: usize) -> Option<Reserved> {
        let cap = self.shared.cap;
        self.shared
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(size) <= cap).then(|| held.saturating_add(size))
            })
            .ok()
            .map(|_| Reserved {
                budget: self.clone(),
                size,
            })
    }

    /// The link's publishers should pause: handed to each of them.
    pub(crate) fn congested(&self) -> Option<Congested> {
        self.shared.above(self.shared.pause_at).then(|| Congested {
            shared: self.shared.clone(),
        })
    }

    /// The link ended: paused publishers go on (their next publishes open a
    /// new link).
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.room.release();
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

/// A share of a link's budget, given back when dropped: when the edge
/// acknowledged its batch, or it was dropped.
#[derive(Debug)]
pub(crate) struct Reserved {
    budget: LinkBudget,
    size: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let shared = &self.budget.shared;
        shared.bytes.fetch_sub(self.size, Ordering::AcqRel);
        shared.wake_if_room();
    }
}

/// A link its publisher should pause for: it holds three quarters of its
/// budget. The publisher stops reading until [`Congested::room`] resolves,
/// or its pause runs out ([`Congested::stall`]).
#[derive(Debug, Clone)]
pub struct Congested {
    shared: Arc<Shared>,
}

impl Congested {
    /// Whether the link still holds its pause mark or more (and is neither
    /// stalled nor ended).
    pub fn is_full(&self) -> bool {
        self.shared.above(self.shared.pause_at)
    }

    /// Resolves once the link holds half its pause mark or less, or it
    /// stalled or ended: resuming at once would pause again a message
    /// later.
    pub async fn room(&self) {
        let shared = &self.shared;
        shared.room.wait(|| shared.above(shared.resume_at())).await;
    }

    /// A publisher waited for this link as long as it may: until it drains
    /// below the resume mark, publishers no longer pause for it.
    pub fn stall(&self) {
        self.shared.room.stall();
    }

    /// Whether both are the same link.
    pub fn same_link(&self, other: &Congested) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_room(congested: &Congested) -> bool {
        futures::FutureExt::now_or_never(congested.room()).is_some()
    }

    #[test]
    fn a_link_budget_admits_up_to_its_cap_and_anything_when_empty() {
        let budget = LinkBudget::new(100);
        let huge = budget
            .reserve(1_000_000)
            .expect("an empty link takes anything");
        assert!(budget.reserve(1).is_none(), "over the cap");
        drop(huge);
        let first = budget.reserve(60).expect("fits");
        assert!(budget.reserve(50).is_none(), "60 + 50 > 100");
        let second = budget.reserve(40).expect("60 + 40 = 100");
        assert_eq!(budget.held(), 100);
        drop((first, second));
        assert_eq!(budget.held(), 0, "given back");
    }

    /// Publishers pause at three quarters of the cap and resume at half of
    /// that.
    #[test]
    fn publishers_pause_at_three_quarters_and_resume_at_half_of_it() {
        let budget = LinkBudget::new(100);
        let low = budget.reserve(74).expect("fits");
        assert!(budget.congested().is_none(), "74 of 100: below the mark");
        let high = budget.reserve(1).expect("fits");
        let congested = budget.congested().expect("75 of 100: at the mark");
        assert!(congested.is_full());
        assert!(!has_room(&congested));
        drop(high);
        assert!(!has_room(&congested), "74 is above the resume mark (37)");
        drop(low);
        assert!(has_room(&congested), "empty");
        assert!(!congested.is_full());
    }

    /// A paused publisher is woken when the acknowledgements bring the link
    /// below the resume mark.
    #[tokio::test]
    async fn a_paused_publisher_is_woken_when_the_link_drains() {
        let budget = LinkBudget::new(100);
        let held = budget.reserve(90).expect("fits");
        let congested = budget.congested().expect("90 of 100");
        let waiting = tokio::spawn(async move { congested.room().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("the task");
    }

    /// A stalled link holds nobody until it has drained; an ended one never.
    #[test]
    fn a_stalled_or_ended_link_holds_nobody() {
        let budget = LinkBudget::new(100);
        let held = budget.reserve(90).expect("fits");
        let congested = budget.congested().expect("90 of 100");
        congested.stall();
        assert!(has_room(&congested));
        assert!(budget.congested().is_none(), "stalled");
        drop(held);
        let _again = budget.reserve(90).expect("fits");
        assert!(budget.congested().is_some(), "drained once: pauses again");
        budget.close();
        assert!(budget.congested().is_none(), "ended");
        assert!(has_room(&congested));
    }
}
