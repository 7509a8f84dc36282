//! The nemesis's plan: a seeded random schedule of faults, one at a time.
//!
//! The schedule depends on the seed alone, never on a clock or on what the
//! cluster did: the same seed gives the same faults, targets, holds and
//! gaps, in the same order. A run takes as many of them as fit in its
//! duration. Targets that only the running cluster can name (the leader,
//! the store node an edge follows) are planned as a role and resolved when
//! the fault begins; the others are planned as a number that picks among
//! the candidates.
//!
//! One fault at a time, each undone (restart, SIGCONT, heal) before the
//! next: Rookery promises to survive any *single* failure, and the gap
//! after each fault lets the cluster recover before the next one.

use std::fmt;

/// What the nemesis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` of any node, restarted after the hold.
    Kill,
    /// `kill -9` of the store leader.
    KillLeader,
    /// `kill -9` of the store node the edge-only node follows (reads its
    /// queues from).
    KillFollowed,
    /// SIGSTOP of any node for longer than an edge's lease (10 s), then
    /// SIGCONT.
    PausePastLease,
    /// SIGSTOP of any node for longer than an election timeout, shorter
    /// than a lease.
    PausePastElection,
    /// One store voter cut off from the other voters, both ways (a minority
    /// partition; with three voters also the only symmetric split).
    IsolateVoter,
    /// The store leader cut off from the other voters, both ways; clients
    /// and edges still reach it.
    IsolateLeader,
    /// The edge-only node's calls to every store node dropped.
    CutEdge,
    /// One voter's calls to another dropped, the other way still open.
    OneWay,
}

impl FaultKind {
    /// Every kind, in the order the schedule draws from.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::KillFollowed,
        FaultKind::PausePastLease,
        FaultKind::PausePastElection,
        FaultKind::IsolateVoter,
        FaultKind::IsolateLeader,
        FaultKind::CutEdge,
        FaultKind::OneWay,
    ];

    /// Its name in a history's `fault` events and in a report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill leader",
            FaultKind::KillFollowed => "kill followed",
            FaultKind::PausePastLease => "pause past lease",
            FaultKind::PausePastElection => "pause past election",
            FaultKind::IsolateVoter => "isolate voter",
            FaultKind::IsolateLeader => "isolate leader",
            FaultKind::CutEdge => "cut edge",
            FaultKind::OneWay => "one-way",
        }
    }

    /// How long the fault lasts, in milliseconds: the lowest and highest.
    fn hold_range_ms(self) -> (u64, u64) {
        match self {
            FaultKind::Kill | FaultKind::KillLeader | FaultKind::KillFollowed => (500, 6_000),
            FaultKind::PausePastLease => (11_000, 15_000),
            FaultKind::PausePastElection => (1_500, 4_000),
            FaultKind::IsolateVoter | FaultKind::IsolateLeader | FaultKind::OneWay => {
                (3_000, 12_000)
            }
            FaultKind::CutEdge => (3_000, 14_000),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    /// What to do.
    pub kind: FaultKind,
    /// Picks the target among the candidates the kind allows
    /// ([`PlannedFault::choose`]).
    pub pick: u64,
    /// How long the fault lasts before it is undone, in milliseconds.
    pub hold_ms: u64,
    /// How long to wait, after the cluster has recovered, before the next.
    pub gap_ms: u64,
}

impl PlannedFault {
    /// The target among `candidates` that this fault's pick names.
    pub fn choose<T: Copy>(&self, candidates: &[T]) -> Option<T> {
        let len = u64::try_from(candidates.len()).ok().filter(|&n| n > 0)?;
        let i = usize::try_from(self.pick % len).ok()?;
        candidates.get(i).copied()
    }
}

/// The endless schedule a seed makes.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: fastrand::Rng,
}

impl Schedule {
    /// The schedule of `seed`.
    pub fn new(seed: u64) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Iterator for Schedule {
    type Item = PlannedFault;

    fn next(&mut self) -> Option<PlannedFault> {
        let kind = FaultKind::ALL[self.rng.usize(..FaultKind::ALL.len())];
        let (low, high) = kind.hold_range_ms();
        Some(PlannedFault {
            kind,
            pick: self.rng.u64(..),
            hold_ms: self.rng.u64(low..=high),
            gap_ms: self.rng.u64(1_000..=4_000),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_faults() {
        let first: Vec<PlannedFault> = Schedule::new(42).take(50).collect();
        let again: Vec<PlannedFault> = Schedule::new(42).take(50).collect();
        assert_eq!(first, again);
        let other: Vec<PlannedFault> = Schedule::new(43).take(50).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn a_schedule_uses_every_kind_with_holds_in_range() {
        let planned: Vec<PlannedFault> = Schedule::new(7).take(400).collect();
        for kind in FaultKind::ALL {
            assert!(
                planned.iter().any(|fault| fault.kind == kind),
                "{kind} never planned"
            );
        }
        for fault in &planned {
            let (low, high) = fault.kind.hold_range_ms();
            assert!((low..=high).contains(&fault.hold_ms), "{fault:?}");
            assert!((1_000..=4_000).contains(&fault.gap_ms), "{fault:?}");
        }
        // A pause past the lease outlasts an edge's 10 s lease; one past an
        // election stays inside it.
        assert!(FaultKind::PausePastLease.hold_range_ms().0 > 10_000);
        assert!(FaultKind::PausePastElection.hold_range_ms().1 < 10_000);
    }

    #[test]
    fn a_pick_chooses_among_the_candidates_and_none_from_none() {
        let fault = PlannedFault {
            kind: FaultKind::Kill,
            pick: 7,
            hold_ms: 1,
            gap_ms: 1,
        };
        assert_eq!(fault.choose(&[1, 2, 3]), Some(2));
        assert_eq!(fault.choose::<u8>(&[]), None);
    }
}
