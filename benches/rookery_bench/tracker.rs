//! Loss, duplicate and reorder accounting: which sequence numbers one
//! receiver got from one publisher.
//!
//! A receiver is a subscriber, or a whole shared-subscription group: each
//! member keeps its own [`SeqTracker`] per publisher and the group's are merged
//! afterwards with [`union_len`], so a message that two members both got is a
//! duplicate of the group. The received numbers are kept as sorted, disjoint
//! ranges: in-order arrival only extends the last range, so a tracker is a
//! handful of words however many messages it saw.

use serde::{Deserialize, Serialize};

/// How one arrival relates to the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Not seen before and higher than everything seen so far.
    InOrder,
    /// Not seen before, but lower than a number already seen.
    Reordered,
    /// Seen before.
    Duplicate,
}

/// The sequence numbers one receiver got from one publisher: any `u64`
/// below `u64::MAX`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTracker {
    /// Received numbers as half-open ranges `[start, end)`, sorted, disjoint
    /// and not touching.
    ranges: Vec<(u64, u64)>,
    /// The highest number seen.
    max: Option<u64>,
    /// Every arrival, duplicates included.
    pub received: u64,
    /// Arrivals of a number already seen.
    pub duplicated: u64,
    /// First arrivals of a number lower than one already seen.
    pub reordered: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u64) -> Arrival {
        self.received += 1;
        // The common case: the next number after the last range.
        if let Some(last) = self.ranges.last_mut()
            && last.1 == seq
        {
            last.1 = seq.saturating_add(1);
            self.max = Some(seq);
            return Arrival::InOrder;
        }
        // The first range starting after `seq`; the one before it may hold it.
        let at = self.ranges.partition_point(|&(start, _)| start <= seq);
        if at > 0 && self.ranges[at - 1].1 > seq {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        let end = seq.saturating_add(1);
        let joins_before = at > 0 && self.ranges[at - 1].1 == seq;
        let joins_after = at < self.ranges.len() && self.ranges[at].0 == end;
        match (joins_before, joins_after) {
            (true, true) => {
                self.ranges[at - 1].1 = self.ranges[at].1;
                self.ranges.remove(at);
            }
            (true, false) => self.ranges[at - 1].1 = end,
            (false, true) => self.ranges[at].0 = seq,
            (false, false) => self.ranges.insert(at, (seq, end)),
        }
        match self.max {
            Some(max) if seq < max => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.max = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// How many different numbers arrived.
    pub fn distinct(&self) -> u64 {
        self.ranges.iter().map(|(start, end)| end - start).sum()
    }

    /// Numbers missing between the lowest and the highest that arrived: the
    /// loss a subscriber can see without knowing what was sent.
    pub fn gaps(&self) -> u64 {
        match (self.ranges.first(), self.ranges.last()) {
            (Some(first), Some(last)) => (last.1 - first.0) - self.distinct(),
            _ => 0,
        }
    }

    /// The received numbers as sorted half-open ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

/// The union of several trackers' ranges, sorted and merged: what a
/// shared-subscription group received from one publisher.
pub fn union_ranges<'a>(sets: impl IntoIterator<Item = &'a [(u64, u64)]>) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = sets.into_iter().flatten().copied().collect();
    all.sort_unstable();
    let mut union: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (start, end) in all {
        match union.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => union.push((start, end)),
        }
    }
    union
}

/// How many different numbers the union of several trackers' ranges holds.
#[cfg(test)]
pub fn union_len<'a>(sets: impl IntoIterator<Item = &'a [(u64, u64)]>) -> u64 {
    union_ranges(sets)
        .iter()
        .map(|(start, end)| end - start)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(seqs: &[u64]) -> SeqTracker {
        let mut tracker = SeqTracker::default();
        for seq in seqs {
            tracker.record(*seq);
        }
        tracker
    }

    #[test]
    fn in_order_arrivals_keep_one_range() {
        let tracker = tracker(&(0..1000).collect::<Vec<_>>());
        assert_eq!(tracker.ranges(), &[(0, 1000)]);
        assert_eq!(tracker.distinct(), 1000);
        assert_eq!(
            (tracker.duplicated, tracker.reordered, tracker.gaps()),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_lost_message_is_a_gap_and_not_a_reorder() {
        let tracker = tracker(&[0, 1, 2, 4, 5]);
        assert_eq!(tracker.distinct(), 5);
        assert_eq!(tracker.gaps(), 1);
        assert_eq!(tracker.reordered, 0);
        assert_eq!(tracker.ranges(), &[(0, 3), (4, 6)]);
    }

    #[test]
    fn a_late_message_is_reordered_and_fills_its_gap() {
        let mut tracker = tracker(&[0, 1, 3, 4]);
        assert_eq!(tracker.record(2), Arrival::Reordered);
        assert_eq!(tracker.ranges(), &[(0, 5)]);
        assert_eq!((tracker.reordered, tracker.gaps()), (1, 0));
    }

    #[test]
    fn a_repeat_is_a_duplicate_wherever_it_falls() {
        let mut tracker = tracker(&[0, 1, 2, 5, 6]);
        assert_eq!(tracker.record(6), Arrival::Duplicate);
        assert_eq!(tracker.record(1), Arrival::Duplicate);
        assert_eq!(tracker.record(5), Arrival::Duplicate);
        assert_eq!(tracker.record(3), Arrival::Reordered);
        assert_eq!(tracker.record(3), Arrival::Duplicate);
        assert_eq!(tracker.received, 10);
        assert_eq!(tracker.distinct(), 6);
        assert_eq!(tracker.duplicated, 4);
        assert_eq!(tracker.reordered, 1);
        assert_eq!(tracker.ranges(), &[(0, 4), (5, 7)]);
    }

    #[test]
    fn ranges_merge_on_both_sides_and_start_anywhere() {
        let mut tracker = tracker(&[10, 12]);
        assert_eq!(tracker.ranges(), &[(10, 11), (12, 13)]);
        assert_eq!(tracker.record(11), Arrival::Reordered);
        assert_eq!(tracker.ranges(), &[(10, 13)]);
        assert_eq!(tracker.record(9), Arrival::Reordered);
        assert_eq!(tracker.ranges(), &[(9, 13)]);
        assert_eq!(tracker.record(7), Arrival::Reordered);
        assert_eq!(tracker.ranges(), &[(7, 8), (9, 13)]);
        assert_eq!(tracker.gaps(), 1);
    }

    #[test]
    fn numbers_at_the_top_of_the_range_do_not_overflow() {
        // u64::MAX itself is outside the domain (subscribers count it as
        // foreign); recording it must still not panic.
        let mut tracker = tracker(&[u64::MAX - 2, u64::MAX - 1]);
        assert_eq!(tracker.ranges(), &[(u64::MAX - 2, u64::MAX)]);
        assert_eq!(tracker.record(u64::MAX - 2), Arrival::Duplicate);
        tracker.record(u64::MAX);
        assert_eq!(tracker.distinct(), 2);
    }

    #[test]
    fn a_shared_group_counts_a_message_once_across_members() {
        // Round-robin over two members, with 4 delivered to both and 6 lost.
        let a = tracker(&[0, 2, 4, 8]);
        let b = tracker(&[1, 3, 4, 5, 7, 9]);
        let union = union_len([a.ranges(), b.ranges()]);
        assert_eq!(union, 9);
        let member_distinct = a.distinct() + b.distinct();
        assert_eq!(member_distinct - union, 1, "4 is a duplicate of the group");
        assert_eq!(union_len([]), 0);
        assert_eq!(union_len([a.ranges()]), a.distinct());
        assert_eq!(
            union_ranges([a.ranges(), b.ranges()]),
            [(0, 6), (7, 10)],
            "touching ranges merge"
        );
    }
}
